//! The authorization code flow against the real binary, driven like a browser with manual cookie
//! handling: sign-in and consent pages, PKCE, codes, refresh-token rotation, and each way a
//! request is refused (pages for untrusted clients, redirects with `iss` for the rest).

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header;
use serde_json::{Value, json};

use mandate_crypto::{Alg, SigningKey};

use crate::harness::{RESOURCE, Server, bin, claims};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const PASSWORD: &str = "correct horse battery staple";
const STATE: &str = "st-123";

/// A PKCE verifier and its S256 challenge.
struct Pkce {
    verifier: String,
    challenge: String,
}

impl Pkce {
    fn new(seed: &str) -> Self {
        let verifier = format!("{seed}-{}", "v".repeat(50));
        let challenge = URL_SAFE_NO_PAD.encode(mandate_crypto::sha256(verifier.as_bytes()));
        Self { verifier, challenge }
    }
}

/// A browser: no automatic redirects, one cookie kept by hand.
struct Browser {
    http: reqwest::Client,
    session: Option<String>,
}

/// A response as a browser sees it.
struct Answer {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    headers: header::HeaderMap,
    body: String,
}

impl Answer {
    /// The query parameters of the redirect.
    fn redirect_params(&self) -> Vec<(String, String)> {
        let location = self.location.as_deref().expect("a redirect");
        reqwest::Url::parse(location).unwrap().query_pairs().into_owned().collect()
    }

    fn redirect_param(&self, name: &str) -> Option<String> {
        self.redirect_params().into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A hidden form field of the page.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start =
            self.body.find(&marker).unwrap_or_else(|| panic!("no field {name} in {}", self.body)) + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }

    fn is_sign_in(&self) -> bool {
        self.status == 200 && self.body.contains("value=\"login\"") && self.body.contains("name=\"password\"")
    }

    fn is_consent(&self) -> bool {
        self.status == 200 && self.body.contains("value=\"approve\"") && self.body.contains("value=\"deny\"")
    }
}

impl Browser {
    fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, session: None }
    }

    async fn answer(&mut self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.session {
            Some(cookie) => request.header(header::COOKIE, format!("mandate_session={cookie}")),
            None => request,
        };
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        let text = |name| headers.get(name).map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned());
        let (location, set_cookie) = (text(header::LOCATION), text(header::SET_COOKIE));
        if let Some(cookie) = &set_cookie {
            let value = cookie.split(';').next().unwrap().strip_prefix("mandate_session=").unwrap();
            self.session = Some(value.to_owned());
        }
        Answer {
            status: response.status().as_u16(),
            location,
            set_cookie,
            headers,
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&mut self, url: &str) -> Answer {
        let request = self.http.get(url);
        self.answer(request).await
    }

    async fn post(&mut self, server: &Server, fields: &[(&str, &str)]) -> Answer {
        let request = self.http.post(server.url("/oauth2/authorize/decision")).form(fields);
        self.answer(request).await
    }

    async fn sign_in(&mut self, server: &Server, page: &Answer, owner: &str, password: &str) -> Answer {
        let (id, csrf) = (page.field("request_id"), page.field("csrf"));
        let fields = [
            ("request_id", id.as_str()),
            ("csrf", &csrf),
            ("owner", owner),
            ("password", password),
            ("decision", "login"),
        ];
        self.post(server, &fields).await
    }

    async fn decide(&mut self, server: &Server, page: &Answer, decision: &str) -> Answer {
        let (id, csrf) = (page.field("request_id"), page.field("csrf"));
        self.post(server, &[("request_id", &id), ("csrf", &csrf), ("decision", decision)]).await
    }
}

/// Owner alice with a password, resource [`RESOURCE`] (read, write) and a public client.
fn setup(server: &Server) -> String {
    server.cli(&["owner", "create", "alice"]);
    set_password(server, "alice", PASSWORD);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write"]);
    public_client(server, "Notes app")
}

fn public_client(server: &Server, name: &str) -> String {
    let client = server.cli_json(&["client", "create", "--auth", "none", "--redirect-uri", REDIRECT, "--name", name]);
    client["client_id"].as_str().unwrap().to_owned()
}

/// `mandate owner set-password NAME` with the password on standard input; must succeed.
pub(crate) fn set_password(server: &Server, owner: &str, password: &str) {
    let out = try_set_password(server, owner, password);
    assert!(out.status.success(), "set-password failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn try_set_password(server: &Server, owner: &str, password: &str) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(["owner", "set-password", owner])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn authorize_url(server: &Server, client_id: &str, pkce: &Pkce, extra: &[(&str, &str)]) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("code_challenge", &pkce.challenge),
        ("code_challenge_method", "S256"),
        ("resource", RESOURCE),
        ("state", STATE),
    ];
    for (name, value) in extra {
        params.retain(|(n, _)| n != name);
        if !value.is_empty() {
            params.push((name, value));
        }
    }
    reqwest::Url::parse_with_params(&server.url("/oauth2/authorize"), &params).unwrap().to_string()
}

/// Sign-in and approval for alice; returns the code.
async fn code_for(
    server: &Server,
    browser: &mut Browser,
    client_id: &str,
    pkce: &Pkce,
    extra: &[(&str, &str)],
) -> String {
    let page = browser.get(&authorize_url(server, client_id, pkce, extra)).await;
    let page = if page.is_sign_in() { browser.sign_in(server, &page, "alice", PASSWORD).await } else { page };
    let done = if page.is_consent() { browser.decide(server, &page, "approve").await } else { page };
    assert_eq!(done.status, 303, "{}", done.body);
    done.redirect_param("code").expect("a code")
}

async fn token(server: &Server, fields: &[(&str, &str)]) -> (u16, Value) {
    let response = server.http.post(server.url("/oauth2/token")).form(fields).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn redeem(server: &Server, client_id: &str, code: &str, verifier: &str) -> (u16, Value) {
    let fields = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code),
        ("code_verifier", verifier),
        ("redirect_uri", REDIRECT),
        ("resource", RESOURCE),
    ];
    token(server, &fields).await
}

async fn refresh(server: &Server, client_id: &str, refresh_token: &str) -> (u16, Value) {
    token(server, &[("grant_type", "refresh_token"), ("client_id", client_id), ("refresh_token", refresh_token)]).await
}

fn text<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name].as_str().unwrap_or_else(|| panic!("no {name} in {body}"))
}

fn events<'a>(all: &'a [Value], action: &str) -> Vec<&'a Value> {
    all.iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test]
async fn sign_in_consent_code_tokens_and_refresh_rotation() {
    let server = Server::start();
    let client_id = setup(&server);
    let pkce = Pkce::new("full");
    let mut browser = Browser::new();

    let page =
        browser.get(&authorize_url(&server, &client_id, &pkce, &[("scope", "openid read"), ("nonce", "n-1")])).await;
    assert!(page.is_sign_in(), "{}", page.body);
    assert!(page.body.contains("Notes app") && page.body.contains(RESOURCE));
    for (name, value) in [
        ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "same-origin"),
    ] {
        assert_eq!(page.headers.get(name).unwrap(), value, "{name}");
    }
    assert!(page.set_cookie.is_none());

    let consent = browser.sign_in(&server, &page, "alice", PASSWORD).await;
    assert!(consent.is_consent(), "{}", consent.body);
    let cookie = consent.set_cookie.clone().expect("the sign-in sets the session cookie");
    for attribute in ["mandate_session=", "HttpOnly", "SameSite=Lax", "Path=/oauth2"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "the issuer is http");
    assert_ne!(consent.field("request_id"), page.field("request_id"), "a fresh step after signing in");
    assert!(consent.body.contains("127.0.0.1") && consent.body.contains("openid") && consent.body.contains("read"));

    let approved = browser.decide(&server, &consent, "approve").await;
    assert_eq!(approved.status, 303);
    assert!(approved.location.as_deref().unwrap().starts_with(&format!("{REDIRECT}?")));
    assert_eq!(approved.redirect_param("state").as_deref(), Some(STATE));
    assert_eq!(approved.redirect_param("iss").as_deref(), Some(server.base.as_str()));
    let code = approved.redirect_param("code").unwrap();

    let (status, issued) = redeem(&server, &client_id, &code, &pkce.verifier).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!((text(&issued, "token_type"), text(&issued, "scope")), ("Bearer", "openid read"));
    let access = claims(text(&issued, "access_token"));
    assert_eq!((access["sub"].as_str(), access["mandate_owner"].as_str()), (Some("alice"), Some("alice")));
    assert_eq!((access["aud"].as_str(), access["client_id"].as_str()), (Some(RESOURCE), Some(client_id.as_str())));
    assert!(access.get("act").is_none(), "an application without an agent acts as nobody else");
    let family = access["mandate_grant"].as_str().expect("the grant family").to_owned();
    let id_token = claims(text(&issued, "id_token"));
    assert_eq!((id_token["sub"].as_str(), id_token["aud"].as_str()), (Some("alice"), Some(client_id.as_str())));
    assert_eq!(id_token["nonce"], "n-1");
    let first_refresh = text(&issued, "refresh_token").to_owned();
    assert!(first_refresh.starts_with("mrt_"));

    // Rotation: each refresh token works once and gives the next one of the same family.
    let (status, rotated) = refresh(&server, &client_id, &first_refresh).await;
    assert_eq!(status, 200, "{rotated}");
    let second_refresh = text(&rotated, "refresh_token").to_owned();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(claims(text(&rotated, "access_token"))["mandate_grant"], family.as_str());
    let narrowed = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &second_refresh),
            ("scope", "read"),
        ],
    )
    .await;
    assert_eq!((narrowed.0, text(&narrowed.1, "scope")), (200, "read"), "a refresh may narrow");
    let third_refresh = text(&narrowed.1, "refresh_token").to_owned();
    let (status, wider) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &third_refresh),
            ("scope", "write"),
        ],
    )
    .await;
    assert_eq!((status, text(&wider, "error")), (400, "invalid_scope"), "never widen");
    let (status, again) = refresh(&server, &client_id, &third_refresh).await;
    assert_eq!((status, text(&again, "scope")), (200, "openid read"), "the grant keeps its full scope");
    assert_eq!(server.introspect(text(&again, "access_token")).await["active"], true);

    let all = server.audit_events();
    let approve = events(&all, "authorize.approve");
    assert_eq!(approve.len(), 1);
    assert_eq!((approve[0]["decision"].as_str(), approve[0]["owner"].as_str()), (Some("allow"), Some("alice")));
    assert_eq!(events(&all, "authorize.login")[0]["decision"], "allow");
    assert!(events(&all, "token.issue").iter().all(|e| e["decision"] == "allow" || e["reason"] == "invalid_scope"));
}

#[tokio::test]
async fn a_remembered_consent_skips_the_page() {
    let server = Server::start();
    let client_id = setup(&server);
    let mut browser = Browser::new();
    code_for(&server, &mut browser, &client_id, &Pkce::new("one"), &[("scope", "read write")]).await;

    // Signed in and covered (a subset of what was approved): straight back with a code.
    let pkce = Pkce::new("two");
    let answer = browser.get(&authorize_url(&server, &client_id, &pkce, &[("scope", "read")])).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.redirect_param("iss").as_deref(), Some(server.base.as_str()));
    let code = answer.redirect_param("code").unwrap();
    assert_eq!(redeem(&server, &client_id, &code, &pkce.verifier).await.0, 200);

    // Asking for more than was approved asks again; so does prompt=consent.
    let wider = browser.get(&authorize_url(&server, &client_id, &pkce, &[("scope", "openid read")])).await;
    assert!(wider.is_consent(), "{}", wider.body);
    let forced = browser.get(&authorize_url(&server, &client_id, &pkce, &[("prompt", "consent")])).await;
    assert!(forced.is_consent());
    // prompt=none cannot show the page: consent_required, with state and iss.
    let silent =
        browser.get(&authorize_url(&server, &client_id, &pkce, &[("scope", "openid"), ("prompt", "none")])).await;
    assert_eq!(silent.redirect_param("error").as_deref(), Some("consent_required"));
    assert_eq!(silent.redirect_param("state").as_deref(), Some(STATE));

    let mut stranger = Browser::new();
    let none = stranger.get(&authorize_url(&server, &client_id, &pkce, &[("prompt", "none")])).await;
    assert_eq!(none.redirect_param("error").as_deref(), Some("login_required"));
    assert_eq!(none.redirect_param("iss").as_deref(), Some(server.base.as_str()));

    let approvals = events(&server.audit_events(), "authorize.approve").len();
    assert_eq!(approvals, 2, "one approval, one code from the remembered consent");
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_invalid_grant_and_leaves_the_code() {
    let server = Server::start();
    let client_id = setup(&server);
    let pkce = Pkce::new("pkce");
    let code = code_for(&server, &mut Browser::new(), &client_id, &pkce, &[]).await;
    let (status, body) = redeem(&server, &client_id, &code, &Pkce::new("other").verifier).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"), "{body}");
    let (status, body) =
        token(&server, &[("grant_type", "authorization_code"), ("client_id", &client_id), ("code", &code)]).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_request"), "the verifier is required");
    assert_eq!(redeem(&server, &client_id, &code, &pkce.verifier).await.0, 200);
}

/// Errors after the client and redirect URI are trusted go back to the client with `iss`.
async fn redirected_error(server: &Server, client_id: &str, extra: &[(&str, &str)]) -> (String, String) {
    let answer = Browser::new().get(&authorize_url(server, client_id, &Pkce::new("x"), extra)).await;
    assert_eq!(answer.status, 303, "{:?} {}", extra, answer.body);
    assert!(answer.location.as_deref().unwrap().starts_with(REDIRECT));
    assert_eq!(answer.redirect_param("iss").as_deref(), Some(server.base.as_str()));
    assert_eq!(answer.redirect_param("state").as_deref(), Some(STATE));
    assert!(answer.redirect_param("code").is_none());
    (answer.redirect_param("error").unwrap(), answer.redirect_param("error_description").unwrap_or_default())
}

#[tokio::test]
async fn the_plain_pkce_method_is_refused() {
    let server = Server::start();
    let client_id = setup(&server);
    let (error, description) = redirected_error(&server, &client_id, &[("code_challenge_method", "plain")]).await;
    assert_eq!(error, "invalid_request");
    assert!(description.contains("S256"), "{description}");
    let (error, _) = redirected_error(&server, &client_id, &[("code_challenge_method", "")]).await;
    assert_eq!(error, "invalid_request", "an absent method means plain");
}

#[tokio::test]
async fn a_missing_code_challenge_is_refused() {
    let server = Server::start();
    let client_id = setup(&server);
    let (error, description) = redirected_error(&server, &client_id, &[("code_challenge", "")]).await;
    assert_eq!(error, "invalid_request");
    assert!(description.contains("code_challenge"), "{description}");
    let (error, _) = redirected_error(&server, &client_id, &[("code_challenge", "too-short")]).await;
    assert_eq!(error, "invalid_request");
}

#[tokio::test]
async fn a_missing_or_unknown_resource_is_invalid_target() {
    let server = Server::start();
    let client_id = setup(&server);
    for resource in ["", "https://unknown.example.test"] {
        let (error, _) = redirected_error(&server, &client_id, &[("resource", resource)]).await;
        assert_eq!(error, "invalid_target", "resource {resource:?}");
    }
    let (error, _) = redirected_error(&server, &client_id, &[("scope", "read admin")]).await;
    assert_eq!(error, "invalid_scope");
    let (error, _) = redirected_error(&server, &client_id, &[("response_type", "token")]).await;
    assert_eq!(error, "unsupported_response_type");
    let all = server.audit_events();
    let refusals = events(&all, "authorize.request");
    assert_eq!(refusals.iter().filter(|e| e["decision"] == "deny").count(), 4);
}

/// Errors before the client and redirect URI are trusted: a page, never a redirect.
async fn error_page(url: &str) -> Answer {
    let answer = Browser::new().get(url).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.location.is_none());
    assert!(answer.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    assert_eq!(answer.headers.get("x-frame-options").unwrap(), "DENY");
    answer
}

#[tokio::test]
async fn a_redirect_uri_mismatch_shows_an_error_page() {
    let server = Server::start();
    let client_id = setup(&server);
    let pkce = Pkce::new("x");
    for other in
        ["https://evil.example/callback", "http://127.0.0.1:9/callback/extra", "http://127.0.0.1:9/callback?x=1"]
    {
        let page = error_page(&authorize_url(&server, &client_id, &pkce, &[("redirect_uri", other)])).await;
        assert!(page.body.contains("redirect_uri"), "{}", page.body);
    }
    // Even a broken rest of the request is not redirected to an unregistered URI.
    let url =
        authorize_url(&server, &client_id, &pkce, &[("redirect_uri", "https://evil.example/cb"), ("resource", "")]);
    error_page(&url).await;
    let all = server.audit_events();
    let refused = events(&all, "authorize.request");
    assert_eq!(refused.len(), 4);
    assert!(refused.iter().all(|e| e["decision"] == "deny" && e["reason"] == "invalid_request"));
}

#[tokio::test]
async fn an_unregistered_client_shows_an_error_page() {
    let server = Server::start();
    setup(&server);
    let page = error_page(&authorize_url(&server, "no-such-client", &Pkce::new("x"), &[])).await;
    assert!(page.body.contains("unknown client"), "{}", page.body);
    let (id, _) = server.agent_with_client("bot", "client_secret_basic");
    let page = error_page(&authorize_url(&server, &id, &Pkce::new("x"), &[])).await;
    assert!(page.body.contains("unauthorized_client"), "a client without the code grant: {}", page.body);
    error_page(&authorize_url(&server, "", &Pkce::new("x"), &[])).await;
}

#[tokio::test]
async fn a_reused_code_revokes_what_it_gave() {
    let server = Server::start();
    let client_id = setup(&server);
    let pkce = Pkce::new("reuse");
    let code = code_for(&server, &mut Browser::new(), &client_id, &pkce, &[]).await;
    let (status, first) = redeem(&server, &client_id, &code, &pkce.verifier).await;
    assert_eq!(status, 200);
    let access = text(&first, "access_token");
    assert_eq!(server.introspect(access).await["active"], true);

    let (status, again) = redeem(&server, &client_id, &code, &pkce.verifier).await;
    assert_eq!((status, text(&again, "error")), (400, "invalid_grant"));
    assert_eq!(server.introspect(access).await, json!({"active": false}), "the family is revoked");
    let (status, body) = refresh(&server, &client_id, text(&first, "refresh_token")).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));
    let all = server.audit_events();
    let revoked = events(&all, "revoke.grant");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["owner"], "alice");
    let (status, body) = redeem(&server, &client_id, "made-up-code", &pkce.verifier).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_family() {
    let server = Server::start();
    let client_id = setup(&server);
    let pkce = Pkce::new("rotate");
    let code = code_for(&server, &mut Browser::new(), &client_id, &pkce, &[]).await;
    let (_, issued) = redeem(&server, &client_id, &code, &pkce.verifier).await;
    let stolen = text(&issued, "refresh_token").to_owned();
    let (status, rotated) = refresh(&server, &client_id, &stolen).await;
    assert_eq!(status, 200);
    let current_access = text(&rotated, "access_token").to_owned();
    let current_refresh = text(&rotated, "refresh_token").to_owned();

    let (status, body) = refresh(&server, &client_id, &stolen).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));
    let (status, body) = refresh(&server, &client_id, &current_refresh).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"), "the legitimate holder loses it too");
    assert_eq!(server.introspect(&current_access).await["active"], false);
    assert_eq!(server.introspect(text(&issued, "access_token")).await["active"], false);
    assert_eq!(events(&server.audit_events(), "revoke.grant").len(), 1);
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_family() {
    let server = Server::start();
    let client_id = setup(&server);
    let other = public_client(&server, "Other app");
    let pkce = Pkce::new("revoke");
    let code = code_for(&server, &mut Browser::new(), &client_id, &pkce, &[]).await;
    let (_, issued) = redeem(&server, &client_id, &code, &pkce.verifier).await;
    let (access, refresh_token) = (text(&issued, "access_token"), text(&issued, "refresh_token"));
    let revoke = |client: String| {
        let form = [("client_id", client), ("token", refresh_token.to_owned())];
        server.http.post(server.url("/oauth2/revoke")).form(&form).send()
    };

    assert_eq!(revoke(other.clone()).await.unwrap().status(), 200, "RFC 7009: 200 even when not yours");
    assert_eq!(server.introspect(access).await["active"], true, "another client's revocation changes nothing");
    assert_eq!(revoke(client_id.clone()).await.unwrap().status(), 200);
    assert_eq!(server.introspect(access).await["active"], false);
    assert_eq!(refresh(&server, &client_id, refresh_token).await.0, 400);
}

#[tokio::test]
async fn another_client_cannot_redeem_the_code() {
    let server = Server::start();
    let client_id = setup(&server);
    let other = public_client(&server, "Other app");
    let pkce = Pkce::new("swap");
    let code = code_for(&server, &mut Browser::new(), &client_id, &pkce, &[]).await;
    let (status, body) = redeem(&server, &other, &code, &pkce.verifier).await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));
    let (status, body) = redeem(&server, "no-such-client", &code, &pkce.verifier).await;
    assert_eq!((status, text(&body, "error")), (401, "invalid_client"));
    let mismatched = token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &code),
            ("code_verifier", &pkce.verifier),
            ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
        ],
    )
    .await;
    assert_eq!(text(&mismatched.1, "error"), "invalid_grant", "redirect_uri must repeat the request's");
    assert_eq!(redeem(&server, &client_id, &code, &pkce.verifier).await.0, 200, "the code was not spent");
}

#[tokio::test]
async fn a_wrong_password_signs_nobody_in() {
    let server = Server::start();
    let client_id = setup(&server);
    let mut browser = Browser::new();
    let page = browser.get(&authorize_url(&server, &client_id, &Pkce::new("pw"), &[])).await;
    let wrong_password = "correct horse battery stapler";
    let again = browser.sign_in(&server, &page, "alice", wrong_password).await;
    assert!(again.is_sign_in(), "the form again: {}", again.body);
    assert!(again.body.contains("Wrong owner name or password"));
    assert!(again.set_cookie.is_none() && again.location.is_none());
    let unknown = browser.sign_in(&server, &again, "mallory", PASSWORD).await;
    assert!(unknown.is_sign_in() && unknown.set_cookie.is_none());

    let all = server.audit_events();
    let logins = events(&all, "authorize.login");
    assert_eq!(logins.len(), 2);
    assert!(logins.iter().all(|e| e["decision"] == "deny" && e["reason"] == "access_denied"));
    assert!(events(&all, "authorize.approve").is_empty());
    let exported = serde_json::to_string(&all).unwrap();
    assert!(!exported.contains(wrong_password) && !exported.contains(PASSWORD), "never a password in the log");
}

#[tokio::test]
async fn a_csrf_token_mismatch_is_refused() {
    let server = Server::start();
    let client_id = setup(&server);
    let mut browser = Browser::new();
    let page = browser.get(&authorize_url(&server, &client_id, &Pkce::new("csrf"), &[])).await;
    let id = page.field("request_id");
    let forged = [
        ("request_id", id.as_str()),
        ("csrf", "forged"),
        ("owner", "alice"),
        ("password", PASSWORD),
        ("decision", "login"),
    ];
    let refused = browser.post(&server, &forged).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.set_cookie.is_none() && refused.location.is_none());
    assert!(refused.body.contains("CSRF"));
    let no_csrf = browser.post(&server, &[("request_id", id.as_str()), ("decision", "deny")]).await;
    assert_eq!((no_csrf.status, no_csrf.location.is_none()), (400, true));
    // A form posted from another site is refused before anything else.
    let csrf = page.field("csrf");
    let from_elsewhere = browser
        .http
        .post(server.url("/oauth2/authorize/decision"))
        .header("origin", "https://evil.example")
        .form(&[("request_id", id.as_str()), ("csrf", csrf.as_str()), ("decision", "deny")]);
    let cross = browser.answer(from_elsewhere).await;
    assert_eq!(cross.status, 403);
    // The genuine form still works.
    assert!(browser.sign_in(&server, &page, "alice", PASSWORD).await.is_consent());
    let all = server.audit_events();
    let decisions = events(&all, "authorize.decision");
    assert_eq!(decisions.len(), 3);
    assert!(decisions.iter().all(|e| e["decision"] == "deny"));
}

#[tokio::test]
async fn approving_needs_the_signed_in_session() {
    let server = Server::start();
    let client_id = setup(&server);
    let mut browser = Browser::new();
    let page = browser.get(&authorize_url(&server, &client_id, &Pkce::new("s"), &[])).await;
    let consent = browser.sign_in(&server, &page, "alice", PASSWORD).await;
    browser.session = None;
    let refused = browser.decide(&server, &consent, "approve").await;
    assert_eq!((refused.status, refused.location.is_none()), (403, true), "{}", refused.body);
}

#[tokio::test]
async fn denying_redirects_with_access_denied() {
    let server = Server::start();
    let client_id = setup(&server);
    let mut browser = Browser::new();
    let page = browser.get(&authorize_url(&server, &client_id, &Pkce::new("deny"), &[])).await;
    let consent = browser.sign_in(&server, &page, "alice", PASSWORD).await;
    let denied = browser.decide(&server, &consent, "deny").await;
    assert_eq!(denied.status, 303);
    assert_eq!(denied.redirect_param("error").as_deref(), Some("access_denied"));
    assert_eq!(denied.redirect_param("state").as_deref(), Some(STATE));
    assert_eq!(denied.redirect_param("iss").as_deref(), Some(server.base.as_str()));
    assert!(denied.redirect_param("code").is_none());
    // The request is gone: deciding again is an error page.
    assert_eq!(browser.decide(&server, &consent, "approve").await.status, 400);
    let all = server.audit_events();
    assert_eq!(events(&all, "authorize.deny").len(), 1);
}

#[tokio::test]
async fn an_agents_client_acts_for_the_owner_with_act() {
    let server = Server::start();
    setup(&server);
    server.cli(&["agent", "create", "helper", "--owner", "alice", "--scope", "read"]);
    let client = server.cli_json(&[
        "client",
        "create",
        "--agent",
        "helper",
        "--auth",
        "client_secret_basic",
        "--redirect-uri",
        REDIRECT,
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
    ]);
    let (id, secret) = (client["client_id"].as_str().unwrap(), client["client_secret"].as_str().unwrap());
    let pkce = Pkce::new("agent");
    let code = code_for(&server, &mut Browser::new(), id, &pkce, &[("scope", "read write")]).await;
    let form = [("grant_type", "authorization_code"), ("code", &code), ("code_verifier", &pkce.verifier)];
    let response =
        server.http.post(server.url("/oauth2/token")).basic_auth(id, Some(secret)).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(text(&body, "scope"), "read", "no more than the agent may have");
    let access = claims(text(&body, "access_token"));
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["act"]["sub"], "spiffe://mandate.local/agent/helper");
    // A confidential client must authenticate to redeem (and to refresh).
    let (status, body) = refresh(&server, id, text(&body, "refresh_token")).await;
    assert_eq!((status, text(&body, "error")), (401, "invalid_client"));
}

#[tokio::test]
async fn owner_passwords_via_cli_and_admin_api() {
    let server = Server::start();
    server.cli(&["owner", "create", "bob"]);
    let short = try_set_password(&server, "bob", "too-short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12"));
    assert!(!try_set_password(&server, "nobody", PASSWORD).status.success(), "unknown owner");

    let put = |name: &str, body: Value| {
        server
            .http
            .put(server.url(&format!("/admin/api/v1/owners/{name}/password")))
            .bearer_auth(&server.admin)
            .json(&body)
            .send()
    };
    assert_eq!(put("bob", json!({"password": PASSWORD})).await.unwrap().status(), 204);
    assert_eq!(put("bob", json!({"password": "short"})).await.unwrap().status(), 400);
    assert_eq!(put("carol", json!({"password": PASSWORD})).await.unwrap().status(), 404);
    let unauthenticated = server
        .http
        .put(server.url("/admin/api/v1/owners/bob/password"))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let owner =
        server.http.get(server.url("/admin/api/v1/owners/bob")).bearer_auth(&server.admin).send().await.unwrap();
    let owner: Value = owner.json().await.unwrap();
    assert!(owner.get("password_hash").is_none(), "the hash is never returned: {owner}");

    let all = server.audit_events();
    let changes = events(&all, "registry.owner.password");
    let decisions: Vec<&str> = changes.iter().map(|e| e["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["deny", "deny", "allow", "deny", "deny"]);
    assert!(!serde_json::to_string(&all).unwrap().contains("argon2"), "the hash is never logged");
}

#[tokio::test]
async fn metadata_advertises_the_code_flow() {
    let server = Server::start();
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"] {
        let meta: Value = server.http.get(server.url(path)).send().await.unwrap().json().await.unwrap();
        assert_eq!(meta["authorization_endpoint"], server.url("/oauth2/authorize"));
        assert_eq!(meta["response_types_supported"], json!(["code"]));
        assert_eq!(meta["response_modes_supported"], json!(["query"]));
        assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
        let grants = meta["grant_types_supported"].as_array().unwrap();
        assert!(grants.contains(&json!("authorization_code")) && grants.contains(&json!("refresh_token")));
        assert!(meta["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("none")));
        let scopes = meta["scopes_supported"].as_array().unwrap();
        assert!(scopes.contains(&json!("openid")) && scopes.contains(&json!("offline_access")));
    }
    let oidc: Value =
        server.http.get(server.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(oidc["subject_types_supported"], json!(["public"]));
    assert_eq!(oidc["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    assert!(oidc["claims_supported"].as_array().unwrap().contains(&json!("nonce")));
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for the token endpoint.
fn dpop_proof(server: &Server, key: &SigningKey) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public().jwk()});
    let mut jti = [0u8; 16];
    mandate_crypto::secret::fill_random(&mut jti);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims =
        json!({"jti": URL_SAFE_NO_PAD.encode(jti), "htm": "POST", "htu": server.url("/oauth2/token"), "iat": now});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).unwrap()))
}

/// RFC 7638 thumbprint of an EC P-256 key.
fn jkt(key: &SigningKey) -> String {
    let jwk = key.public().jwk();
    let members = json!({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]});
    mandate_crypto::keys::thumbprint(&members)
}

async fn token_with_proof(server: &Server, fields: &[(&str, &str)], proof: Option<String>) -> (u16, Value) {
    let mut request = server.http.post(server.url("/oauth2/token")).form(fields);
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn dpop_jkt_binds_the_code_and_a_public_clients_refresh_tokens() {
    let server = Server::start();
    let client_id = setup(&server);
    let (key, other) = (SigningKey::generate(Alg::ES256).unwrap(), SigningKey::generate(Alg::ES256).unwrap());
    let (_, bad) = redirected_error(&server, &client_id, &[("dpop_jkt", "not-a-thumbprint")]).await;
    assert!(bad.contains("dpop_jkt"), "{bad}");

    let pkce = Pkce::new("dpop");
    let code = code_for(&server, &mut Browser::new(), &client_id, &pkce, &[("dpop_jkt", &jkt(&key))]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id.as_str()),
        ("code", code.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    for proof in [None, Some(dpop_proof(&server, &other))] {
        let (status, body) = token_with_proof(&server, &form, proof).await;
        assert_eq!((status, text(&body, "error")), (400, "invalid_grant"), "{body}");
    }
    let (status, issued) = token_with_proof(&server, &form, Some(dpop_proof(&server, &key))).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(text(&issued, "token_type"), "DPoP");
    assert_eq!(claims(text(&issued, "access_token"))["cnf"]["jkt"], jkt(&key).as_str());

    // The public client's refresh token stays bound to the key.
    let refresh_token = text(&issued, "refresh_token");
    let form = [("grant_type", "refresh_token"), ("client_id", client_id.as_str()), ("refresh_token", refresh_token)];
    for proof in [None, Some(dpop_proof(&server, &other))] {
        let (status, body) = token_with_proof(&server, &form, proof).await;
        assert_eq!((status, text(&body, "error")), (400, "invalid_grant"), "{body}");
    }
    let (status, rotated) = token_with_proof(&server, &form, Some(dpop_proof(&server, &key))).await;
    assert_eq!((status, text(&rotated, "token_type")), (200, "DPoP"), "{rotated}");
}

/// Mandate as the enterprise IdP end to end: alice signs in at an agent's client with `openid`,
/// and the ID token of that sign-in is traded for an ID-JAG addressed to another authorization
/// server, as the agent's delegation target allows.
#[tokio::test]
async fn the_id_token_of_a_sign_in_becomes_an_id_jag() {
    let server = Server::start();
    setup(&server);
    server.cli(&["agent", "create", "helper", "--owner", "alice", "--scope", "read"]);
    let (partner_as, partner_api) = ("https://as.partner.example", "https://api.partner.example/mcp");
    server.cli(&[
        "agent",
        "delegate",
        "helper",
        "--audience",
        partner_as,
        "--resource",
        partner_api,
        "--scope",
        "read",
        "--client-id",
        "helper-at-partner",
    ]);
    let client = server.cli_json(&[
        "client",
        "create",
        "--agent",
        "helper",
        "--redirect-uri",
        REDIRECT,
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]);
    let (id, secret) = (client["client_id"].as_str().unwrap(), client["client_secret"].as_str().unwrap());
    let pkce = Pkce::new("idjag");
    let code = code_for(&server, &mut Browser::new(), id, &pkce, &[("scope", "openid read")]).await;
    let form = [("grant_type", "authorization_code"), ("code", &code), ("code_verifier", &pkce.verifier)];
    let post = |form: Vec<(&'static str, String)>| {
        server.http.post(server.url("/oauth2/token")).basic_auth(id, Some(secret)).form(&form).send()
    };
    let form: Vec<(&'static str, String)> = form.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let body: Value = post(form).await.unwrap().json().await.unwrap();
    let id_token = text(&body, "id_token").to_owned();
    assert_eq!(claims(&id_token)["aud"], id);

    let exchange = |subject: String, audience: &str| {
        vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("requested_token_type", "urn:ietf:params:oauth:token-type:id-jag".to_owned()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token".to_owned()),
            ("subject_token", subject),
            ("audience", audience.to_owned()),
            ("resource", partner_api.to_owned()),
            ("scope", "read".to_owned()),
        ]
    };
    let response = post(exchange(id_token.clone(), partner_as)).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:id-jag");
    assert_eq!(body["token_type"], "N_A");
    let id_jag = text(&body, "access_token");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(id_jag.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["typ"], "oauth-id-jag+jwt");
    let jag = claims(id_jag);
    assert_eq!((jag["sub"].as_str(), jag["aud"].as_str()), (Some("alice"), Some(partner_as)));
    assert_eq!((jag["client_id"].as_str(), jag["resource"].as_str()), (Some("helper-at-partner"), Some(partner_api)));
    assert_eq!(jag["act"]["sub"], "spiffe://mandate.local/agent/helper");

    // The policy names one audience/resource pair: another audience is not delegable.
    let response = post(exchange(id_token, "https://as.elsewhere.example")).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_target");
}
