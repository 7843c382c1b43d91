//! Delegation across and within trust domains against the real binary: two `mandate serve`
//! instances play identity provider (IdP) and resource authorization server for ID-JAGs; token
//! exchange builds `act` chains on one server; DPoP binds tokens at the token endpoint. ID
//! tokens come from an upstream IdP whose key the test holds (trusted by the IdP instance), and
//! hand-made ID-JAGs from that same upstream IdP exercise the resource-AS checks one by one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use serde_json::{Value, json};

use crate::harness::{RESOURCE, Server, claims, header, now, random_id};

const INSECURE: (&str, &str) = ("MANDATE_ALLOW_INSECURE_FEDERATION", "true");
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const UPSTREAM: &str = "https://upstream.example.test";
const ASSISTANT: &str = "spiffe://mandate.local/agent/assistant";

/// An identity provider outside Mandate whose signing key the test holds.
struct Upstream {
    key: SigningKey,
}

impl Upstream {
    fn new() -> Self {
        Self { key: SigningKey::generate(Alg::ES256).unwrap() }
    }

    /// Writes its JWK Set next to `server`'s data and trusts it there as `upstream`.
    fn trust_at(&self, server: &Server) {
        let path = server.dir.path().join("upstream-jwks.json");
        std::fs::write(&path, json!({"keys": [self.key.public().jwk()]}).to_string()).unwrap();
        server.cli(&["idp", "add", "upstream", "--issuer", UPSTREAM, "--jwks-file", path.to_str().unwrap()]);
    }

    fn sign(&self, typ: &str, claims: &Value) -> String {
        sign_jwt(&self.key, typ, claims).unwrap()
    }

    /// An OpenID Connect ID token for `sub`, issued to `client_id`.
    fn id_token(&self, sub: &str, client_id: &str) -> String {
        let now = now();
        let claims = json!({"iss": UPSTREAM, "sub": sub, "aud": client_id, "iat": now, "exp": now + 300,
            "auth_time": now - 30, "jti": random_id()});
        self.sign("JWT", &claims)
    }

    /// The claims of a well-formed ID-JAG for the resource AS `ras` and its client `client_id`.
    fn id_jag_claims(&self, ras: &Server, client_id: &str) -> Value {
        let now = now();
        json!({"iss": UPSTREAM, "sub": "alice", "aud": ras.base, "client_id": client_id, "jti": random_id(),
            "iat": now, "exp": now + 300, "resource": RESOURCE, "scope": "read write"})
    }
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for `POST htu`.
fn dpop_proof(key: &SigningKey, htu: &str, nonce: Option<&str>) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public().jwk()});
    let mut claims = json!({"jti": random_id(), "htm": "POST", "htu": htu, "iat": now()});
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// POSTs a form to `server`'s token endpoint with Basic client credentials and an optional
/// DPoP proof; returns status, body and the `DPoP-Nonce` header.
async fn post_token(
    server: &Server,
    client: &(String, String),
    form: &[(&str, &str)],
    dpop: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = server.http.post(server.url("/oauth2/token")).basic_auth(&client.0, Some(&client.1)).form(form);
    if let Some(proof) = dpop {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let nonce = response.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), nonce)
}

fn client_of(server: &Server, agent: &str) -> (String, String) {
    let made = server.cli_json(&["client", "create", "--agent", agent]);
    (made["client_id"].as_str().unwrap().to_owned(), made["client_secret"].as_str().unwrap().to_owned())
}

fn refused(status: u16, body: &Value, code: &str, needle: &str) {
    assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(needle), "{needle:?} not in {description:?}");
}

/// Mandate as IdP (`idp`) and as resource AS (`ras`): the IdP trusts the upstream IdP and lets
/// agent `assistant` obtain ID-JAGs for RESOURCE at `ras`; `ras` trusts the IdP (by its JWKS
/// URL) and the upstream IdP (for hand-made ID-JAGs), and registers `assistant`'s client there.
struct Pair {
    idp: Server,
    ras: Server,
    upstream: Upstream,
    /// The agent's client at the IdP and at the resource AS.
    idp_client: (String, String),
    ras_client: (String, String),
}

impl Pair {
    fn start() -> Self {
        let idp = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
        let ras = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
        let upstream = Upstream::new();
        idp.cli(&["owner", "create", "alice"]);
        idp.cli(&["agent", "create", "assistant", "--owner", "alice"]);
        let idp_client = client_of(&idp, "assistant");
        upstream.trust_at(&idp);
        ras.cli(&["owner", "create", "alice"]);
        ras.cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write", "--scope", "admin"]);
        ras.cli(&["agent", "create", "assistant", "--owner", "alice", "--scope", "read", "--scope", "write"]);
        let ras_client = client_of(&ras, "assistant");
        let jwks = idp.url("/.well-known/jwks.json");
        ras.cli_env(&[INSECURE], &["idp", "add", "mandate-idp", "--issuer", &idp.base, "--jwks-url", &jwks]);
        upstream.trust_at(&ras);
        idp.cli_env(
            &[INSECURE],
            &[
                "agent",
                "delegate",
                "assistant",
                "--audience",
                &ras.base,
                "--resource",
                RESOURCE,
                "--scope",
                "read",
                "--scope",
                "write",
                "--client-id",
                &ras_client.0,
            ],
        );
        Self { idp, ras, upstream, idp_client, ras_client }
    }

    /// Step A at the IdP: an upstream ID token for alice traded for an ID-JAG.
    async fn request_id_jag(&self, subject_token: &str, scope: &str, dpop: Option<&str>) -> (u16, Value) {
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("requested_token_type", ID_JAG),
            ("subject_token", subject_token),
            ("subject_token_type", ID_TOKEN),
            ("audience", &self.ras.base),
            ("resource", RESOURCE),
            ("scope", scope),
        ];
        let (status, body, _) = post_token(&self.idp, &self.idp_client, &form, dpop).await;
        (status, body)
    }

    async fn id_jag(&self, scope: &str) -> String {
        let (status, body) =
            self.request_id_jag(&self.upstream.id_token("alice", &self.idp_client.0), scope, None).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Step B at the resource AS: the jwt-bearer grant with the ID-JAG.
    async fn redeem(&self, assertion: &str, scope: Option<&str>, dpop: Option<&str>) -> (u16, Value) {
        let mut form = vec![("grant_type", JWT_BEARER), ("assertion", assertion), ("resource", RESOURCE)];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let (status, body, _) = post_token(&self.ras, &self.ras_client, &form, dpop).await;
        (status, body)
    }
}

#[tokio::test]
async fn an_id_jag_from_one_mandate_is_redeemed_at_another() {
    let pair = Pair::start();
    let (status, issued) =
        pair.request_id_jag(&pair.upstream.id_token("alice", &pair.idp_client.0), "read admin", None).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["issued_token_type"], ID_JAG);
    assert_eq!(issued["token_type"], "N_A");
    assert_eq!(issued["scope"], "read", "requested ∩ the delegation target's scopes");
    assert!(issued.get("refresh_token").is_none());
    let id_jag = issued["access_token"].as_str().unwrap();
    assert_eq!(header(id_jag)["typ"], "oauth-id-jag+jwt");
    let jag = claims(id_jag);
    assert_eq!(jag["iss"], pair.idp.base);
    assert_eq!(jag["sub"], "alice");
    assert_eq!(jag["aud"], pair.ras.base);
    assert_eq!(jag["client_id"], pair.ras_client.0);
    assert_eq!(jag["resource"], RESOURCE);
    assert_eq!(jag["act"], json!({"sub": ASSISTANT}));
    assert!(jag["auth_time"].is_i64());
    assert_eq!(jag["exp"].as_i64().unwrap() - jag["iat"].as_i64().unwrap(), 300);

    let (status, token) = pair.redeem(id_jag, None, None).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["scope"], "read");
    assert!(token.get("refresh_token").is_none(), "no refresh token for an ID-JAG");
    let access = claims(token["access_token"].as_str().unwrap());
    assert_eq!(access["iss"], pair.ras.base);
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["mandate_owner"], "alice", "the subject names a local owner");
    assert_eq!(access["client_id"], pair.ras_client.0);
    assert_eq!(access["aud"], RESOURCE);
    assert_eq!(access["act"], json!({"sub": ASSISTANT}), "the IdP's actor is carried over");
    assert_eq!(access["mandate_idp"], pair.idp.base);
    let seen = pair.ras.introspect(token["access_token"].as_str().unwrap()).await;
    assert_eq!((seen["active"].as_bool(), &seen["act"]), (Some(true), &json!({"sub": ASSISTANT})));
    assert_eq!(seen["mandate_idp"], pair.idp.base);

    let idp_events = pair.idp.audit_events();
    let issue = idp_events.iter().find(|e| e["action"] == "token.issue" && e["decision"] == "allow").unwrap();
    assert_eq!(issue["agent"], ASSISTANT);
    assert_eq!(issue["subject"], format!("{UPSTREAM}#alice"));
    assert_eq!(issue["resource"], RESOURCE);
    assert_eq!(issue["scope"], "read");
    let ras_events = pair.ras.audit_events();
    let redeemed = ras_events.iter().find(|e| e["action"] == "token.issue" && e["decision"] == "allow").unwrap();
    assert_eq!(redeemed["subject"], format!("{}#alice", pair.idp.base));
    assert_eq!(redeemed["owner"], "alice");
    assert!(redeemed["detail"].as_str().unwrap().contains("idp=mandate-idp"), "{redeemed}");
    let everything = serde_json::to_string(&ras_events).unwrap() + &serde_json::to_string(&idp_events).unwrap();
    assert!(!everything.contains(id_jag), "an ID-JAG is never logged");

    for server in [&pair.idp, &pair.ras] {
        let meta: Value = server
            .http
            .get(server.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            meta["authorization_grant_profiles_supported"],
            json!(["urn:ietf:params:oauth:grant-profile:id-jag"])
        );
        assert_eq!(meta["identity_chaining_requested_token_types_supported"], json!([ID_JAG]));
        assert_eq!(meta["dpop_signing_alg_values_supported"], json!(["EdDSA", "ES256"]));
        let grants = meta["grant_types_supported"].as_array().unwrap();
        assert!(grants.contains(&json!(TOKEN_EXCHANGE)) && grants.contains(&json!(JWT_BEARER)), "{grants:?}");
    }
}

#[tokio::test]
async fn an_access_token_offered_as_an_id_jag_is_refused() {
    let pair = Pair::start();
    let at = pair.ras.token(&pair.ras_client.0, &pair.ras_client.1).await;
    let (status, body) = pair.redeem(&at, None, None).await;
    refused(status, &body, "invalid_grant", "");
    // An upstream ID token (typ JWT) is no ID-JAG either, even from a trusted IdP.
    let id_token = pair.upstream.id_token("alice", &pair.ras_client.0);
    let (status, body) = pair.redeem(&id_token, None, None).await;
    refused(status, &body, "invalid_grant", "");
    // Nor is an ID-JAG's claim set signed with another typ.
    let untyped = pair.upstream.sign("JWT", &pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0));
    let (status, body) = pair.redeem(&untyped, None, None).await;
    refused(status, &body, "invalid_grant", "");
}

#[tokio::test]
async fn an_id_jag_offered_as_the_subject_id_token_is_refused() {
    let pair = Pair::start();
    let id_jag = pair.id_jag("read").await;
    let (status, body) = pair.request_id_jag(&id_jag, "read", None).await;
    refused(status, &body, "invalid_grant", "not acceptable");
    // An ID token issued to another client is refused too.
    let (status, body) = pair.request_id_jag(&pair.upstream.id_token("alice", "someone-else"), "read", None).await;
    refused(status, &body, "invalid_grant", "audience");
}

#[tokio::test]
async fn a_replayed_id_jag_is_refused() {
    let pair = Pair::start();
    let id_jag = pair.id_jag("read").await;
    assert_eq!(pair.redeem(&id_jag, None, None).await.0, 200);
    let (status, body) = pair.redeem(&id_jag, None, None).await;
    refused(status, &body, "invalid_grant", "already used");
    let events = pair.ras.audit_events();
    let denied = events.iter().filter(|e| e["action"] == "token.issue" && e["decision"] == "deny").count();
    assert_eq!(denied, 1, "the replay is audited");
}

#[tokio::test]
async fn an_id_jag_with_two_audiences_is_refused() {
    let pair = Pair::start();
    let mut claims = pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0);
    claims["aud"] = json!([pair.ras.base, "https://other-as.example"]);
    let (status, body) = pair.redeem(&pair.upstream.sign("oauth-id-jag+jwt", &claims), None, None).await;
    refused(status, &body, "invalid_grant", "audience");
    // A one-element array is the same as the string.
    claims["aud"] = json!([pair.ras.base]);
    assert_eq!(pair.redeem(&pair.upstream.sign("oauth-id-jag+jwt", &claims), None, None).await.0, 200);
}

#[tokio::test]
async fn an_id_jag_for_another_client_is_refused() {
    let pair = Pair::start();
    let claims = pair.upstream.id_jag_claims(&pair.ras, "another-client");
    let (status, body) = pair.redeem(&pair.upstream.sign("oauth-id-jag+jwt", &claims), None, None).await;
    refused(status, &body, "invalid_grant", "another client");
}

#[tokio::test]
async fn an_id_jag_from_an_untrusted_issuer_is_refused() {
    let pair = Pair::start();
    let stranger = Upstream::new();
    let mut claims = pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0);
    claims["iss"] = json!("https://stranger.example");
    let (status, body) = pair.redeem(&stranger.sign("oauth-id-jag+jwt", &claims), None, None).await;
    refused(status, &body, "invalid_grant", "not trusted");
    // The trusted issuer's name with a key it does not publish.
    let forged = stranger.sign("oauth-id-jag+jwt", &pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0));
    let (status, body) = pair.redeem(&forged, None, None).await;
    refused(status, &body, "invalid_grant", "not valid");
}

#[tokio::test]
async fn id_jag_scopes_are_intersected() {
    let pair = Pair::start();
    let mut claims = pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0);
    claims["scope"] = json!("read admin");
    // ID-JAG (read admin) ∩ requested (read write admin) ∩ resource ∩ the client's agent (read write).
    let (status, body) =
        pair.redeem(&pair.upstream.sign("oauth-id-jag+jwt", &claims), Some("read write admin"), None).await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("read")), "{body}");
    claims["jti"] = json!(random_id());
    let (status, body) = pair.redeem(&pair.upstream.sign("oauth-id-jag+jwt", &claims), Some("write"), None).await;
    refused(status, &body, "invalid_scope", "");
}

#[tokio::test]
async fn a_dpop_bound_id_jag_needs_a_proof_by_its_key() {
    let pair = Pair::start();
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let id_token = pair.upstream.id_token("alice", &pair.idp_client.0);
    let proof = dpop_proof(&key, &pair.idp.url("/oauth2/token"), None);
    let (status, issued) = pair.request_id_jag(&id_token, "read", Some(&proof)).await;
    assert_eq!((status, issued["token_type"].as_str()), (200, Some("N_A")), "{issued}");
    let id_jag = issued["access_token"].as_str().unwrap();
    let jkt = claims(id_jag)["cnf"]["jkt"].as_str().unwrap().to_owned();
    // cnf without a proof.
    let (status, body) = pair.redeem(id_jag, None, None).await;
    refused(status, &body, "invalid_grant", "proof of possession");
    // A proof by another key.
    let other = SigningKey::generate(Alg::ES256).unwrap();
    let wrong = dpop_proof(&other, &pair.ras.url("/oauth2/token"), None);
    let (status, body) = pair.redeem(id_jag, None, Some(&wrong)).await;
    refused(status, &body, "invalid_grant", "not the one");
    // The right key: a DPoP-bound access token for the same key.
    let right = dpop_proof(&key, &pair.ras.url("/oauth2/token"), None);
    let (status, token) = pair.redeem(id_jag, None, Some(&right)).await;
    assert_eq!((status, token["token_type"].as_str()), (200, Some("DPoP")), "{token}");
    assert_eq!(claims(token["access_token"].as_str().unwrap())["cnf"]["jkt"], jkt);
}

/// One server with owner alice, RESOURCE (read write), agents `svc` (read write: the subject),
/// `helper` (read write), `second` (read) and `imp` (read write, may impersonate), a client for
/// each, and the upstream IdP trusted.
struct Exchange {
    server: Server,
    upstream: Upstream,
    svc: (String, String),
    helper: (String, String),
    second: (String, String),
    imp: (String, String),
}

impl Exchange {
    fn start() -> Self {
        let server = Server::start();
        server.cli(&["owner", "create", "alice"]);
        server.cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write"]);
        let agent = |name: &str, extra: &[&str]| {
            let mut args = vec!["agent", "create", name, "--owner", "alice", "--scope", "read"];
            args.extend_from_slice(extra);
            server.cli(&args);
            client_of(&server, name)
        };
        let svc = agent("svc", &["--scope", "write"]);
        let helper = agent("helper", &["--scope", "write"]);
        let second = agent("second", &[]);
        let imp = agent("imp", &["--scope", "write", "--may-impersonate"]);
        let upstream = Upstream::new();
        upstream.trust_at(&server);
        Self { server, upstream, svc, helper, second, imp }
    }

    async fn access_token(&self, client: &(String, String), scope: &str) -> String {
        let form = [("grant_type", "client_credentials"), ("resource", RESOURCE), ("scope", scope)];
        let (status, body, _) = post_token(&self.server, client, &form, None).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn exchange(
        &self,
        client: &(String, String),
        subject: (&str, &str),
        actor: Option<(&str, &str)>,
        scope: Option<&str>,
    ) -> (u16, Value) {
        let mut form =
            vec![("grant_type", TOKEN_EXCHANGE), ("subject_token", subject.0), ("subject_token_type", subject.1)];
        form.push(("resource", RESOURCE));
        if let Some((token, kind)) = actor {
            form.extend([("actor_token", token), ("actor_token_type", kind)]);
        }
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let (status, body, _) = post_token(&self.server, client, &form, None).await;
        (status, body)
    }

    fn spiffe(name: &str) -> String {
        format!("spiffe://mandate.local/agent/{name}")
    }
}

#[tokio::test]
async fn impersonation_is_refused_unless_the_agent_may_impersonate() {
    let x = Exchange::start();
    let subject = x.access_token(&x.svc, "read write").await;
    let (status, body) = x.exchange(&x.helper, (&subject, ACCESS_TOKEN), None, None).await;
    refused(status, &body, "invalid_request", "impersonation is not allowed for agent helper");
    let (status, body) = x.exchange(&x.imp, (&subject, ACCESS_TOKEN), None, None).await;
    assert_eq!(status, 200, "{body}");
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], Exchange::spiffe("svc"));
    assert!(token.get("act").is_none(), "impersonation names no actor");
    assert_eq!(token["client_id"], x.imp.0);
}

#[tokio::test]
async fn an_act_chain_nests_two_levels() {
    let x = Exchange::start();
    let subject = x.access_token(&x.svc, "read write").await;
    let helper_actor = x.access_token(&x.helper, "read").await;
    let (status, first) =
        x.exchange(&x.helper, (&subject, ACCESS_TOKEN), Some((&helper_actor, ACCESS_TOKEN)), None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["issued_token_type"], ACCESS_TOKEN);
    let first_token = first["access_token"].as_str().unwrap();
    let one = claims(first_token);
    assert_eq!(one["sub"], Exchange::spiffe("svc"));
    assert_eq!(one["mandate_owner"], "alice");
    assert_eq!(one["act"], json!({"sub": Exchange::spiffe("helper")}));
    assert_eq!(first["scope"], "read write");
    // The second hop proves its agent with a JWT-SVID addressed to this server.
    let svid = x.server.cli_json(&["agent", "svid", "second", "--jwt", "--audience", &x.server.base]);
    let svid = svid["token"].as_str().unwrap();
    let (status, second) = x.exchange(&x.second, (first_token, ACCESS_TOKEN), Some((svid, JWT)), None).await;
    assert_eq!(status, 200, "{second}");
    let two = claims(second["access_token"].as_str().unwrap());
    assert_eq!(two["sub"], Exchange::spiffe("svc"));
    assert_eq!(two["act"], json!({"sub": Exchange::spiffe("second"), "act": {"sub": Exchange::spiffe("helper")}}));
    assert_eq!(second["scope"], "read", "narrowed to what agent second may have");
    let seen = x.server.introspect(second["access_token"].as_str().unwrap()).await;
    assert_eq!(seen["act"], two["act"]);
    // An actor token about another agent than the client's is refused.
    let (status, body) =
        x.exchange(&x.second, (&subject, ACCESS_TOKEN), Some((&helper_actor, ACCESS_TOKEN)), None).await;
    refused(status, &body, "invalid_request", "not this client's agent");
    let events = x.server.audit_events();
    assert!(events.iter().any(
        |e| e["action"] == "token.issue" && e["detail"].as_str().is_some_and(|d| d.contains("delegation actors=2"))
    ));
}

#[tokio::test]
async fn a_may_act_that_names_another_agent_is_refused() {
    let x = Exchange::start();
    let helper_actor = x.access_token(&x.helper, "read").await;
    let now = now();
    let mut subject = json!({"iss": UPSTREAM, "sub": "carol", "aud": x.server.base, "iat": now, "exp": now + 120,
        "scope": "read", "may_act": {"sub": Exchange::spiffe("second")}});
    let token = x.upstream.sign("JWT", &subject);
    let (status, body) = x.exchange(&x.helper, (&token, JWT), Some((&helper_actor, ACCESS_TOKEN)), None).await;
    refused(status, &body, "invalid_grant", "may_act");
    // may_act naming the actor: accepted, with the IdP's subject.
    subject["may_act"] = json!({"sub": Exchange::spiffe("helper")});
    let token = x.upstream.sign("JWT", &subject);
    let (status, body) = x.exchange(&x.helper, (&token, JWT), Some((&helper_actor, ACCESS_TOKEN)), None).await;
    assert_eq!(status, 200, "{body}");
    let issued = claims(body["access_token"].as_str().unwrap());
    assert_eq!((&issued["sub"], &issued["mandate_idp"]), (&json!("carol"), &json!(UPSTREAM)));
    assert!(issued.get("mandate_owner").is_none(), "an external subject is no local owner");
}

#[tokio::test]
async fn widening_the_scope_is_refused() {
    let x = Exchange::start();
    let subject = x.access_token(&x.svc, "read").await;
    let actor = x.access_token(&x.helper, "read").await;
    let (status, body) =
        x.exchange(&x.helper, (&subject, ACCESS_TOKEN), Some((&actor, ACCESS_TOKEN)), Some("read write")).await;
    refused(status, &body, "invalid_scope", "write");
    let (status, body) =
        x.exchange(&x.helper, (&subject, ACCESS_TOKEN), Some((&actor, ACCESS_TOKEN)), Some("read")).await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("read")), "{body}");
}

#[tokio::test]
async fn an_exchanged_token_lives_no_longer_than_its_subject() {
    let x = Exchange::start();
    let actor = x.access_token(&x.helper, "read").await;
    let now = now();
    let subject = json!({"iss": UPSTREAM, "sub": "carol", "aud": x.server.base, "iat": now, "exp": now + 40,
        "scope": "read"});
    let token = x.upstream.sign("JWT", &subject);
    let (status, body) = x.exchange(&x.helper, (&token, JWT), Some((&actor, ACCESS_TOKEN)), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_in"].as_i64().unwrap() <= 40, "{body}");
    let issued = claims(body["access_token"].as_str().unwrap());
    assert!(issued["exp"].as_i64().unwrap() <= now + 40);
    // The same holds for a subject token of this server (here with the configured 300 s).
    let own = x.access_token(&x.svc, "read").await;
    let (status, body) = x.exchange(&x.helper, (&own, ACCESS_TOKEN), Some((&actor, ACCESS_TOKEN)), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(claims(body["access_token"].as_str().unwrap())["exp"].as_i64() <= claims(&own)["exp"].as_i64());
}

#[tokio::test]
async fn a_dpop_proof_for_another_url_is_refused() {
    let x = Exchange::start();
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE)];
    let proof = dpop_proof(&key, "https://elsewhere.example/oauth2/token", None);
    let (status, body, _) = post_token(&x.server, &x.svc, &form, Some(&proof)).await;
    refused(status, &body, "invalid_dpop_proof", "htu");
}

#[tokio::test]
async fn a_replayed_dpop_proof_is_refused() {
    let x = Exchange::start();
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE)];
    let proof = dpop_proof(&key, &x.server.url("/oauth2/token"), None);
    let (status, body, nonce) = post_token(&x.server, &x.svc, &form, Some(&proof)).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    assert!(nonce.is_none(), "no nonce unless dpop_nonce_required");
    let token = body["access_token"].as_str().unwrap();
    let jkt = claims(token)["cnf"]["jkt"].as_str().unwrap().to_owned();
    let seen = x.server.introspect(token).await;
    assert_eq!((seen["token_type"].as_str(), &seen["cnf"]), (Some("DPoP"), &json!({"jkt": jkt})));
    let (status, body, _) = post_token(&x.server, &x.svc, &form, Some(&proof)).await;
    refused(status, &body, "invalid_dpop_proof", "already used");
    // Two DPoP headers are refused as well.
    let response = x
        .server
        .http
        .post(x.server.url("/oauth2/token"))
        .basic_auth(&x.svc.0, Some(&x.svc.1))
        .header("DPoP", dpop_proof(&key, &x.server.url("/oauth2/token"), None))
        .header("DPoP", dpop_proof(&key, &x.server.url("/oauth2/token"), None))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_dpop_proof");
}

#[tokio::test]
async fn a_required_nonce_is_handed_out_and_then_accepted() {
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[("MANDATE_DPOP_NONCE_REQUIRED", "true")]);
    let client = server.agent_with_client("nonce-bot", "client_secret_basic");
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE)];
    let htu = server.url("/oauth2/token");
    let (status, body, nonce) = post_token(&server, &client, &form, Some(&dpop_proof(&key, &htu, None))).await;
    refused(status, &body, "use_dpop_nonce", "nonce");
    let nonce = nonce.expect("a DPoP-Nonce header with the refusal");
    let (status, body, _) = post_token(&server, &client, &form, Some(&dpop_proof(&key, &htu, Some("stale")))).await;
    refused(status, &body, "use_dpop_nonce", "current");
    let (status, body, next) = post_token(&server, &client, &form, Some(&dpop_proof(&key, &htu, Some(&nonce)))).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    assert!(next.is_some(), "successes carry the nonce too");
    // Bearer requests are not affected.
    let (status, body, none) = post_token(&server, &client, &form, None).await;
    assert_eq!((status, body["token_type"].as_str(), none), (200, Some("Bearer"), None), "{body}");
}

#[tokio::test]
async fn trust_configuration_through_the_cli_and_the_admin_api() {
    let server = Server::start();
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["agent", "create", "assistant", "--owner", "alice"]);
    let upstream = Upstream::new();
    upstream.trust_at(&server);
    let listed = server.cli_json(&["idp", "list"]);
    assert_eq!(listed[0]["issuer"], UPSTREAM);
    // http issuers need the insecure (test-only) mode.
    let out = server.cli_raw(&[
        "idp",
        "add",
        "plain",
        "--issuer",
        "http://idp.example",
        "--jwks-url",
        "https://idp.example/j",
    ]);
    assert!(!out.status.success());
    let admin = |method: reqwest::Method, path: &str| {
        server.http.request(method, server.url(&format!("/admin/api/v1{path}"))).bearer_auth(&server.admin)
    };
    let jwks = json!({"keys": [SigningKey::generate(Alg::EdDSA).unwrap().public().jwk()]});
    let made = admin(reqwest::Method::POST, "/trusted-idps")
        .json(&json!({"name": "corp", "issuer": "https://idp.corp.example", "jwks": jwks}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let got: Value = admin(reqwest::Method::GET, "/trusted-idps/corp").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["issuer"], "https://idp.corp.example");
    let delegate = json!({"audience": "https://as.partner.example", "resource": "https://api.partner.example/",
        "scopes": ["files.read"], "client_id": "partner-client"});
    let made = admin(reqwest::Method::POST, "/agents/assistant/delegations").json(&delegate).send().await.unwrap();
    assert_eq!(made.status(), 201);
    let bad = json!({"audience": "https://as.partner.example", "resource": "https://api.partner.example/",
        "scopes": [], "client_id": "partner-client"});
    let refused = admin(reqwest::Method::POST, "/agents/assistant/delegations").json(&bad).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    server.cli(&[
        "agent",
        "delegate",
        "assistant",
        "--audience",
        "https://as.other.example",
        "--resource",
        "https://api.other.example/",
        "--scope",
        "x.read",
        "--client-id",
        "other-client",
    ]);
    let targets = server.cli_json(&["agent", "delegations", "assistant"]);
    assert_eq!(targets.as_array().unwrap().len(), 2, "{targets}");
    server.cli(&[
        "agent",
        "undelegate",
        "assistant",
        "--audience",
        "https://as.other.example",
        "--resource",
        "https://api.other.example/",
    ]);
    let listed: Value =
        admin(reqwest::Method::GET, "/agents/assistant/delegations").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["remote_client_id"], "partner-client");
    let query = "?audience=https%3A%2F%2Fas.partner.example&resource=https%3A%2F%2Fapi.partner.example%2F";
    let gone = admin(reqwest::Method::DELETE, &format!("/agents/assistant/delegations{query}")).send().await.unwrap();
    assert_eq!(gone.status(), 204);
    let gone = admin(reqwest::Method::DELETE, "/trusted-idps/corp").send().await.unwrap();
    assert_eq!(gone.status(), 204);
    server.cli(&["idp", "delete", "upstream"]);
    assert_eq!(server.cli_json(&["idp", "list"]), json!([]));
    let events = server.audit_events();
    for action in ["trust.idp.create", "trust.idp.delete", "trust.delegation.create", "trust.delegation.delete"] {
        assert!(events.iter().any(|e| e["action"] == action && e["decision"] == "allow"), "{action}");
    }
    assert!(events.iter().any(|e| e["action"] == "trust.delegation.create" && e["decision"] == "deny"));
}

#[tokio::test]
async fn an_id_jag_needs_an_authenticated_confidential_client() {
    let pair = Pair::start();
    let id_jag = pair.upstream.sign("oauth-id-jag+jwt", &pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0));
    let form = [("grant_type", JWT_BEARER), ("assertion", id_jag.as_str()), ("resource", RESOURCE)];
    let anonymous = pair.ras.http.post(pair.ras.url("/oauth2/token")).form(&form).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.json::<Value>().await.unwrap()["error"], "invalid_client");
    let public = pair.ras.cli_json(&["client", "create", "--auth", "none", "--redirect-uri", "http://127.0.0.1:9/cb"]);
    let public_id = public["client_id"].as_str().unwrap();
    let form =
        [("grant_type", JWT_BEARER), ("assertion", id_jag.as_str()), ("resource", RESOURCE), ("client_id", public_id)];
    let response = pair.ras.http.post(pair.ras.url("/oauth2/token")).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "unauthorized_client");
}

#[tokio::test]
async fn each_id_jag_claim_rule_is_enforced() {
    let pair = Pair::start();
    let good = || pair.upstream.id_jag_claims(&pair.ras, &pair.ras_client.0);
    let sign = |claims: &Value| pair.upstream.sign("oauth-id-jag+jwt", claims);
    let mut long_lived = good();
    long_lived["exp"] = json!(now() + 3600);
    let (status, body) = pair.redeem(&sign(&long_lived), None, None).await;
    refused(status, &body, "invalid_grant", "lifetime");
    let mut no_jti = good();
    no_jti.as_object_mut().unwrap().remove("jti");
    let (status, body) = pair.redeem(&sign(&no_jti), None, None).await;
    refused(status, &body, "invalid_grant", "jti");
    let mut expired = good();
    (expired["iat"], expired["exp"]) = (json!(now() - 900), json!(now() - 600));
    let (status, body) = pair.redeem(&sign(&expired), None, None).await;
    refused(status, &body, "invalid_grant", "expired");
    let mut elsewhere = good();
    elsewhere["resource"] = json!("https://unregistered.example.test");
    let form = [("grant_type", JWT_BEARER), ("assertion", &sign(&elsewhere) as &str)];
    let (status, body, _) = post_token(&pair.ras, &pair.ras_client, &form, None).await;
    refused(status, &body, "invalid_grant", "not registered");
    // The request's resource must be the ID-JAG's.
    pair.ras.cli(&["resource", "create", "https://second.example.test", "--scope", "read"]);
    let form = [
        ("grant_type", JWT_BEARER),
        ("assertion", &sign(&good()) as &str),
        ("resource", "https://second.example.test"),
    ];
    let (status, body, _) = post_token(&pair.ras, &pair.ras_client, &form, None).await;
    refused(status, &body, "invalid_grant", "not the ID-JAG's");
}

/// A delegation request (both tokens are access tokens) naming its target by `target`.
fn delegation_form<'a>(subject: &'a str, actor: &'a str, target: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
        ("actor_token", actor),
        ("actor_token_type", ACCESS_TOKEN),
        target,
    ]
}

#[tokio::test]
async fn the_exchange_target_is_one_registered_resource() {
    let x = Exchange::start();
    let subject = x.access_token(&x.svc, "read").await;
    let actor = x.access_token(&x.helper, "read").await;
    let form = |target| delegation_form(&subject, &actor, target);
    let (status, body, _) = post_token(&x.server, &x.helper, &form(("audience", RESOURCE)), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], RESOURCE);
    let nowhere = "https://nowhere.example";
    let (status, body, _) = post_token(&x.server, &x.helper, &form(("audience", nowhere)), None).await;
    refused(status, &body, "invalid_target", "not a registered resource");
    let (status, body, _) = post_token(&x.server, &x.helper, &form(("resource", nowhere)), None).await;
    refused(status, &body, "invalid_target", "not a registered resource");
}

#[tokio::test]
async fn a_dpop_bound_subject_token_is_exchanged_only_with_its_key() {
    let x = Exchange::start();
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let htu = x.server.url("/oauth2/token");
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE), ("scope", "read")];
    let (status, body, _) = post_token(&x.server, &x.svc, &form, Some(&dpop_proof(&key, &htu, None))).await;
    assert_eq!(status, 200, "{body}");
    let bound = body["access_token"].as_str().unwrap().to_owned();
    let actor = x.access_token(&x.helper, "read").await;
    let exchange = delegation_form(&bound, &actor, ("resource", RESOURCE));
    let (status, body, _) = post_token(&x.server, &x.helper, &exchange, None).await;
    refused(status, &body, "invalid_request", "DPoP-bound");
    let other = SigningKey::generate(Alg::ES256).unwrap();
    let (status, body, _) = post_token(&x.server, &x.helper, &exchange, Some(&dpop_proof(&other, &htu, None))).await;
    refused(status, &body, "invalid_request", "DPoP-bound");
    let (status, body, _) = post_token(&x.server, &x.helper, &exchange, Some(&dpop_proof(&key, &htu, None))).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["cnf"], claims(&bound)["cnf"]);
}

#[tokio::test]
async fn malformed_token_exchange_requests_are_refused() {
    let x = Exchange::start();
    let subject = x.access_token(&x.svc, "read").await;
    let actor = x.access_token(&x.helper, "read").await;
    let base = delegation_form(&subject, &actor, ("resource", RESOURCE));
    let without = |name: &str| base.iter().copied().filter(|(n, _)| *n != name).collect::<Vec<_>>();
    let with = |extra: (&'static str, &'static str)| {
        let mut form = base.clone();
        form.push(extra);
        form
    };
    let cases = [
        (without("subject_token_type"), "invalid_request", "subject_token_type is required"),
        (without("actor_token_type"), "invalid_request", "actor_token_type is required"),
        (
            with(("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")),
            "invalid_request",
            "not supported",
        ),
        (without("resource"), "invalid_request", "resource or audience"),
    ];
    for (form, code, needle) in cases {
        let (status, body, _) = post_token(&x.server, &x.helper, &form, None).await;
        refused(status, &body, code, needle);
    }
    let mut saml = base.clone();
    saml[2] = ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2");
    let (status, body, _) = post_token(&x.server, &x.helper, &saml, None).await;
    refused(status, &body, "invalid_request", "not supported");
    // A trusted IdP's JWT addressed to someone else, and a garbage subject token.
    let now = now();
    let foreign = x.upstream.sign(
        "JWT",
        &json!({"iss": UPSTREAM, "sub": "carol", "aud": "https://elsewhere.example",
        "iat": now, "exp": now + 60}),
    );
    let (status, body) = x.exchange(&x.helper, (&foreign, JWT), Some((&actor, ACCESS_TOKEN)), None).await;
    refused(status, &body, "invalid_request", "audience");
    let (status, body) = x.exchange(&x.helper, ("not-a-token", ACCESS_TOKEN), Some((&actor, ACCESS_TOKEN)), None).await;
    refused(status, &body, "invalid_request", "subject token");
    // A revoked subject token (kill switch on its agent) is not exchanged.
    x.server.cli(&["revoke", "--agent", "svc"]);
    let (status, body) = x.exchange(&x.helper, (&subject, ACCESS_TOKEN), Some((&actor, ACCESS_TOKEN)), None).await;
    refused(status, &body, "invalid_request", "revoked");
}
