//! The web console at `/ui` against the real binary: owner and admin sign-in, sessions, CSRF
//! and cross-site refusals, owner isolation, approving a CIBA request (the client then gets
//! its token), the kill switch (the agent's token then fails introspection), audit filters and
//! the "verified up to checkpoint" status, and the delegation graph's SVG.

use mandate_audit_verify::{VerifierKey, verify_note};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};

use crate::code_flow::set_password;
use crate::harness::{RESOURCE, Server};

const ALICE_PASSWORD: &str = "alice's console password";
const BOB_PASSWORD: &str = "bob's console password!";
const CIBA: &str = "urn:openid:params:grant-type:ciba";

/// A browser without JavaScript: keeps the console cookie by hand and follows no redirects.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The first hidden CSRF field's value.
    fn csrf(&self) -> String {
        let start = self.body.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

impl Browser {
    fn new(server: &Server) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { base: server.base.clone(), http, cookie: None }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", format!("mandate_ui={cookie}")),
            None => request,
        };
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        for value in headers.get_all(SET_COOKIE) {
            let value = value.to_str().unwrap();
            if let Some(rest) = value.strip_prefix("mandate_ui=") {
                let cookie = rest.split(';').next().unwrap();
                self.cookie = Some(cookie.to_owned()).filter(|c| !c.is_empty());
            }
        }
        Page { status: response.status(), headers, body: response.text().await.unwrap() }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    async fn post_from(&mut self, origin: &str, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).header("origin", origin).form(form);
        self.send(request).await
    }

    async fn login_owner(&mut self, owner: &str, password: &str) -> Page {
        self.post("/ui/login", &[("kind", "owner"), ("owner", owner), ("password", password)]).await
    }

    /// Signs in and checks that the session works; returns the session's CSRF token.
    async fn signed_in_owner(server: &Server, owner: &str, password: &str) -> (Self, String) {
        let mut browser = Self::new(server);
        let page = browser.login_owner(owner, password).await;
        assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/ui/agents"), "{}", page.body);
        let agents = browser.get("/ui/agents").await;
        assert_eq!(agents.status, StatusCode::OK);
        let csrf = agents.csrf();
        (browser, csrf)
    }

    async fn signed_in_admin(server: &Server) -> (Self, String) {
        let mut browser = Self::new(server);
        let page = browser.post("/ui/login", &[("kind", "admin"), ("credential", server.admin.as_str())]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let agents = browser.get("/ui/agents").await;
        assert_eq!(agents.status, StatusCode::OK);
        let csrf = agents.csrf();
        (browser, csrf)
    }
}

/// Owners alice and bob with passwords, resource [`RESOURCE`] (read, write), agent `helper` of
/// alice and `bobbot` of bob, each with a client allowed client credentials and CIBA.
fn setup(server: &Server) -> (Value, Value) {
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["owner", "create", "bob"]);
    set_password(server, "alice", ALICE_PASSWORD);
    set_password(server, "bob", BOB_PASSWORD);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write"]);
    let client = |agent: &str, owner: &str| {
        server.cli(&["agent", "create", agent, "--owner", owner, "--scope", "read", "--scope", "write"]);
        server.cli_json(&[
            "client",
            "create",
            "--agent",
            agent,
            "--auth",
            "client_secret_basic",
            "--grant-type",
            "client_credentials",
            "--grant-type",
            CIBA,
        ])
    };
    (client("helper", "alice"), client("bobbot", "bob"))
}

fn id_secret(client: &Value) -> (&str, &str) {
    (client["client_id"].as_str().unwrap(), client["client_secret"].as_str().unwrap())
}

fn events(server: &Server, action: &str) -> Vec<Value> {
    server.audit_events().into_iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test]
async fn sign_in_sessions_headers_lockout_and_sign_out() {
    let server = Server::start();
    setup(&server);
    let mut anonymous = Browser::new(&server);
    let page = anonymous.get("/ui/agents").await;
    assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/ui/login"));
    let login = anonymous.get("/ui/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("name=\"password\"") && !login.body.contains("<script"));

    // Wrong password, unknown owner, wrong admin credential: refused, audited, no session.
    let wrong = anonymous.login_owner("alice", "not alice's password").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(anonymous.cookie.is_none());
    assert_eq!(anonymous.login_owner("nobody", ALICE_PASSWORD).await.status, StatusCode::FORBIDDEN);
    let admin = anonymous.post("/ui/login", &[("kind", "admin"), ("credential", "not-the-admin-token")]).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    // A sign-in form posted from another site is refused even with the right password.
    let forged = anonymous
        .post_from(
            "https://evil.example",
            "/ui/login",
            &[("kind", "owner"), ("owner", "alice"), ("password", ALICE_PASSWORD)],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(anonymous.cookie.is_none());

    // A good sign-in: the cookie's attributes, and the strict headers on every page.
    let mut alice = Browser::new(&server);
    let page = alice.login_owner("alice", ALICE_PASSWORD).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let cookie = page.headers[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert_eq!(alice.cookie.as_ref().unwrap().len(), 43, "256 random bits");
    for path in
        ["/ui/agents", "/ui/owners", "/ui/resources", "/ui/approvals", "/ui/audit", "/ui/graph", "/ui/graph.svg"]
    {
        let page = alice.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("style-src 'self'") && !csp.contains("script"),
            "{csp}"
        );
        assert_eq!(page.headers["x-frame-options"], "DENY");
        assert_eq!(page.headers["referrer-policy"], "same-origin");
        assert_eq!(page.headers["cache-control"], "no-store");
        assert!(!page.body.contains("<script"), "{path}");
    }
    let css = alice.get("/ui/ui.css").await;
    assert!(css.headers["content-type"].to_str().unwrap().starts_with("text/css"));

    // Five failures for bob lock his name, even against the right password; alice is unaffected.
    let mut guesser = Browser::new(&server);
    for _ in 0..5 {
        assert_eq!(guesser.login_owner("bob", "guess guess guess").await.status, StatusCode::FORBIDDEN);
    }
    let locked = guesser.login_owner("bob", BOB_PASSWORD).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{}", locked.body);
    assert!(guesser.cookie.is_none());
    assert_eq!(Browser::new(&server).login_owner("alice", ALICE_PASSWORD).await.status, StatusCode::SEE_OTHER);

    // Sign-out needs the CSRF token; with it, the session is gone for good.
    let csrf = alice.get("/ui/agents").await.csrf();
    assert_eq!(alice.post("/ui/logout", &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(alice.post("/ui/logout", &[("csrf", "wrong")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(alice.get("/ui/agents").await.status, StatusCode::OK, "refused sign-outs changed nothing");
    let stolen = alice.cookie.clone();
    let out = alice.post("/ui/logout", &[("csrf", csrf.as_str())]).await;
    assert_eq!((out.status, out.location()), (StatusCode::SEE_OTHER, "/ui/login"));
    assert!(out.headers[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    alice.cookie = stolen;
    assert_eq!(alice.get("/ui/agents").await.status, StatusCode::SEE_OTHER, "the old cookie is dead");

    let logins = events(&server, "ui.login");
    let refused = logins.iter().filter(|e| e["decision"] == "deny").count();
    assert!(refused >= 10, "{logins:?}");
    assert!(logins.iter().any(|e| e["decision"] == "allow" && e["owner"] == "alice"));
    assert!(logins.iter().any(|e| e["decision"] == "deny" && e["detail"].as_str().unwrap().contains("too many")));
    let all = serde_json::to_string(&server.audit_events()).unwrap();
    assert!(!all.contains(ALICE_PASSWORD) && !all.contains(BOB_PASSWORD) && !all.contains(&server.admin));
    let logouts = events(&server, "ui.logout");
    assert_eq!(logouts.iter().filter(|e| e["decision"] == "allow" && e["owner"] == "alice").count(), 1);
    assert_eq!(logouts.iter().filter(|e| e["decision"] == "deny").count(), 2, "CSRF refusals are audited");
}

#[tokio::test]
async fn owners_see_and_act_on_only_their_own() {
    let server = Server::start();
    let (_, bobs) = setup(&server);
    let (bob_id, bob_secret) = id_secret(&bobs);
    let bob_token = server.token(bob_id, bob_secret).await;
    let (mut alice, csrf) = Browser::signed_in_owner(&server, "alice", ALICE_PASSWORD).await;

    let agents = alice.get("/ui/agents").await.body;
    assert!(agents.contains("spiffe://mandate.local/agent/helper") && !agents.contains("bobbot"), "{agents}");
    let found = alice.get("/ui/agents?q=HELP").await.body;
    assert!(found.contains("/ui/agents/helper"));
    let none = alice.get("/ui/agents?q=bobbot").await.body;
    assert!(!none.contains("/ui/agents/") && none.contains("No agents"), "{none}");
    assert_eq!(alice.get("/ui/agents/bobbot").await.status, StatusCode::NOT_FOUND);
    assert_eq!(alice.get("/ui/agents/helper").await.status, StatusCode::OK);
    let owners = alice.get("/ui/owners").await.body;
    assert!(owners.contains("helper") && !owners.contains("bobbot") && !owners.contains(">bob<"), "{owners}");
    assert_eq!(alice.get("/ui/audit?owner=bob").await.status, StatusCode::FORBIDDEN);
    assert!(!alice.get("/ui/graph.svg").await.body.contains("bobbot"));
    assert_eq!(alice.get("/ui/revoke?kind=agent&name=bobbot").await.status, StatusCode::NOT_FOUND);
    assert_eq!(alice.get(&format!("/ui/revoke?kind=client&name={bob_id}")).await.status, StatusCode::NOT_FOUND);

    // Pulling the kill switch on bob's agent or bob himself is refused and audited.
    for (kind, name) in [("agent", "bobbot"), ("owner", "bob"), ("client", bob_id)] {
        let form = [("csrf", csrf.as_str()), ("kind", kind), ("name", name), ("confirm", name)];
        let page = alice.post("/ui/revoke", &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{kind} {name}: {}", page.body);
    }
    assert_eq!(server.introspect(&bob_token).await["active"], true, "bob's token still works");
    let refusals = events(&server, "ui.revoke");
    assert_eq!(refusals.iter().filter(|e| e["decision"] == "deny" && e["owner"] == "alice").count(), 3);
    assert!(events(&server, "revoke.agent").is_empty() && events(&server, "revoke.owner").is_empty());

    // The administrator sees everyone.
    let (mut admin, _) = Browser::signed_in_admin(&server).await;
    let agents = admin.get("/ui/agents").await.body;
    assert!(agents.contains("helper") && agents.contains("bobbot"));
    assert_eq!(admin.get("/ui/agents/bobbot").await.status, StatusCode::OK);
    assert!(admin.get("/ui/graph.svg").await.body.contains("bobbot"));
}

async fn bc_authorize(server: &Server, client: &Value, message: &str) -> String {
    let (id, secret) = id_secret(client);
    let details = json!([{ "type": "db_action", "actions": ["delete"], "locations": [RESOURCE] }]).to_string();
    let response = server
        .http
        .post(server.url("/oauth2/bc-authorize"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("scope", "openid write"),
            ("resource", RESOURCE),
            ("login_hint", "alice"),
            ("binding_message", message),
            ("authorization_details", details.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["auth_req_id"].as_str().unwrap().to_owned()
}

async fn redeem(server: &Server, client: &Value, auth_req_id: &str) -> (u16, Value) {
    let (id, secret) = id_secret(client);
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", CIBA), ("auth_req_id", auth_req_id)])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The approval id behind the console's Approve form for the request showing `marker`.
fn approval_path(page: &str, marker: &str) -> String {
    let at = page.find(marker).expect("the request is listed");
    let start = page[at..].find("action=\"/ui/approvals/").expect("a decision form") + at + 8;
    page[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_owner_approves_in_the_console_and_the_client_gets_its_token() {
    let server = Server::start();
    let (helper, _) = setup(&server);
    let message = "Delete <script>alert(1)</script> row 7";
    let auth_req_id = bc_authorize(&server, &helper, message).await;
    assert_eq!(redeem(&server, &helper, &auth_req_id).await.1["error"], "authorization_pending");

    // The administrator sees it read-only and may not decide it.
    let (mut admin, admin_csrf) = Browser::signed_in_admin(&server).await;
    let listed = admin.get("/ui/approvals").await.body;
    assert!(listed.contains("row 7") && !listed.contains("value=\"approve\""), "{listed}");

    let (mut alice, csrf) = Browser::signed_in_owner(&server, "alice", ALICE_PASSWORD).await;
    let page = alice.get("/ui/approvals").await.body;
    assert!(!page.contains("<script>alert"), "the binding message is escaped: {page}");
    assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;") || page.contains("&lt;script&gt;"), "{page}");
    assert!(page.contains("db_action") && page.contains("helper"), "{page}");
    let path = approval_path(&page, "row 7");

    let refused = admin.post(&path, &[("csrf", admin_csrf.as_str()), ("decision", "approve")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let (mut bob, bob_csrf) = Browser::signed_in_owner(&server, "bob", BOB_PASSWORD).await;
    let refused = bob.post(&path, &[("csrf", bob_csrf.as_str()), ("decision", "approve")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(alice.post(&path, &[("decision", "approve")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        alice.post(&path, &[("csrf", bob_csrf.as_str()), ("decision", "approve")]).await.status,
        StatusCode::FORBIDDEN
    );
    let cross =
        alice.post_from("https://evil.example", &path, &[("csrf", csrf.as_str()), ("decision", "approve")]).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(alice.get("/ui/approvals").await.body.contains("row 7"), "still undecided");

    let approved = alice.post(&path, &[("csrf", csrf.as_str()), ("decision", "approve")]).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    assert!(approved.body.contains("<h1>Approved</h1>"));
    assert!(!alice.get("/ui/approvals").await.body.contains("row 7"), "no longer pending");
    let again = alice.post(&path, &[("csrf", csrf.as_str()), ("decision", "deny")]).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "a decided request stays decided");

    // The client's next poll (after the interval) gets the token for exactly this action.
    let (status, body) = loop {
        let (status, body) = redeem(&server, &helper, &auth_req_id).await;
        if body["error"] != "slow_down" {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    assert_eq!(status, 200, "{body}");
    let claims = crate::harness::claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["authorization_details"][0]["type"], "db_action");
    assert_eq!(claims["sub"], "alice");

    let decisions: Vec<Value> = server.audit_events().into_iter().filter(|e| e["action"] == "ciba.approve").collect();
    let allowed: Vec<&Value> = decisions.iter().filter(|e| e["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1, "{decisions:?}");
    assert!(allowed[0]["detail"].as_str().unwrap().contains("decided in the console by alice"));
    assert!(decisions.iter().any(|e| e["decision"] == "deny" && e["owner"] == "alice"), "bob's attempt is audited");
    let refusals = events(&server, "ciba.decision");
    assert!(
        refusals.iter().filter(|e| e["decision"] == "deny").count() >= 4,
        "admin, CSRF and cross-site: {refusals:?}"
    );
}

#[tokio::test]
async fn the_kill_switch_confirms_then_ends_the_agents_tokens() {
    let server = Server::start();
    let (helper, _) = setup(&server);
    let (id, secret) = id_secret(&helper);
    let token = server.token(id, secret).await;
    let jti = crate::harness::claims(&token)["jti"].as_str().unwrap().to_owned();
    let (mut alice, csrf) = Browser::signed_in_owner(&server, "alice", ALICE_PASSWORD).await;

    let detail = alice.get("/ui/agents/helper").await.body;
    assert!(detail.contains(&jti), "the live token is listed: {detail}");
    let confirm = alice.get("/ui/revoke?kind=agent&name=helper").await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("Every access token issued to agent helper until now stops working"));
    assert!(confirm.body.contains("1 live token(s)"), "{}", confirm.body);
    assert!(confirm.body.contains("name=\"confirm\""));

    // Without the typed name, the CSRF token, or from another site: nothing happens.
    let typo = [("kind", "agent"), ("name", "helper"), ("confirm", "helpr"), ("csrf", csrf.as_str())];
    assert_eq!(alice.post("/ui/revoke", &typo).await.status, StatusCode::BAD_REQUEST);
    let no_csrf = [("kind", "agent"), ("name", "helper"), ("confirm", "helper")];
    assert_eq!(alice.post("/ui/revoke", &no_csrf).await.status, StatusCode::FORBIDDEN);
    let good = [("kind", "agent"), ("name", "helper"), ("confirm", "helper"), ("csrf", csrf.as_str())];
    assert_eq!(alice.post_from("https://evil.example", "/ui/revoke", &good).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.introspect(&token).await["active"], true);
    assert!(events(&server, "revoke.agent").is_empty());

    // Whole seconds: a token issued in the revocation's second counts as before it.
    let revoked = alice.post("/ui/revoke", &good).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(revoked.body.contains("<h1>Revoked</h1>"));
    assert_eq!(server.introspect(&token).await["active"], false, "the agent's token is dead");
    assert!(!alice.get("/ui/agents/helper").await.body.contains(&jti), "no longer listed as live");

    let trail = alice.get("/ui/audit?agent=helper").await.body;
    assert!(trail.contains("revoke.agent"), "{trail}");
    let revocations = events(&server, "revoke.agent");
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0]["decision"], "allow");
    let by = events(&server, "ui.revoke");
    assert!(
        by.iter().any(|e| e["decision"] == "allow"
            && e["owner"] == "alice"
            && e["correlation_id"] == revocations[0]["correlation_id"]),
        "{by:?}"
    );

    // An owner's "revoke everything I delegated".
    let fresh = loop {
        let fresh = server.token(id, secret).await;
        if server.introspect(&fresh).await["active"] == true {
            break fresh;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let page = alice.get("/ui/revoke?kind=owner&name=alice").await.body;
    assert!(page.contains("Everything issued for alice until now stops working") && page.contains("helper"));
    let everything = alice
        .post("/ui/revoke", &[("csrf", csrf.as_str()), ("kind", "owner"), ("name", "alice"), ("confirm", "alice")])
        .await;
    assert_eq!(everything.status, StatusCode::OK, "{}", everything.body);
    assert_eq!(server.introspect(&fresh).await["active"], false);
    assert_eq!(events(&server, "revoke.owner").len(), 1);
}

/// The latest checkpoint's tree size, as served (and verified here with the audit key).
async fn served_checkpoint(server: &Server, key: &VerifierKey) -> u64 {
    let note = server.http.get(server.url("/audit/checkpoint")).send().await.unwrap().text().await.unwrap();
    verify_note(&note, key).unwrap().size
}

fn verified_size(page: &str) -> u64 {
    let marker = "verified up to checkpoint ";
    let start = page.find(marker).unwrap_or_else(|| panic!("no verified status: {page}")) + marker.len();
    page[start..].split(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_audit_trail_filters_pages_and_verifies_the_log() {
    let address = crate::harness::free_address();
    let server = Server::start_at(tempfile::tempdir().unwrap(), &[], &address);
    let (helper, bobs) = setup(&server);
    let (id, secret) = id_secret(&helper);
    for _ in 0..3 {
        server.token(id, secret).await;
    }
    // Enough events for more than one page of 50.
    for _ in 0..50 {
        server.introspect("not-a-token").await;
    }
    let (bob_id, bob_secret) = id_secret(&bobs);
    server.token(bob_id, bob_secret).await;
    let key: VerifierKey = server.cli(&["audit", "key"]).trim().parse().unwrap();
    let export = server.dir.path().join("signed.jsonl");
    server.cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    let signed = served_checkpoint(&server, &key).await;

    let (mut admin, _) = Browser::signed_in_admin(&server).await;
    let page = admin.get("/ui/audit").await.body;
    let verified = verified_size(&page);
    assert!(verified >= signed, "{verified} < {signed}");
    assert!(!page.contains("FAILED"));
    // Unchanged log: the cached prefix answers again (and agrees).
    assert!(verified_size(&admin.get("/ui/audit").await.body) >= verified);

    let helper_only = admin.get("/ui/audit?agent=helper").await.body;
    assert_eq!(helper_only.matches("<td>token.issue</td>").count(), 3, "{helper_only}");
    assert!(!helper_only.contains("spiffe://mandate.local/agent/bobbot"));
    let bobs_trail = admin.get("/ui/audit?owner=bob").await.body;
    assert!(bobs_trail.contains("bobbot") && !bobs_trail.contains("agent/helper"), "{bobs_trail}");
    assert!(admin.get("/ui/audit?txn=no-such-txn").await.body.contains("No events match"));
    assert!(admin.get("/ui/audit?since=2999-01-01T00:00").await.body.contains("No events match"));
    let past = admin.get("/ui/audit?until=2000-01-01T00:00:00Z").await.body;
    assert!(past.contains("No events match"));
    let bad = admin.get("/ui/audit?since=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Paging: more than one page of events, the second starting where the first stopped.
    let first = admin.get("/ui/audit").await.body;
    let next =
        first.split("href=\"/ui/audit?").nth(1).map(|rest| rest.split('"').next().unwrap().replace("&amp;", "&"));
    let next = next.unwrap_or_else(|| panic!("a second page: {first}"));
    let second = admin.get(&format!("/ui/audit?{next}")).await.body;
    let seq_cell = |seq: u32| format!("<td class=\"nowrap\">{seq}</td>");
    assert!(second.contains(&seq_cell(50)), "{second}");
    assert!(!second.contains(&seq_cell(49)));

    // An owner's trail holds only events bound to them.
    let (mut bob, _) = Browser::signed_in_owner(&server, "bob", BOB_PASSWORD).await;
    let mine = bob.get("/ui/audit").await.body;
    assert!(mine.contains("bobbot") && !mine.contains("agent/helper"), "{mine}");

    // Altering one stored entry is caught by the next server's first page view.
    let dir = server.stop();
    let db = rusqlite::Connection::open(dir.path().join("data/mandate.db")).unwrap();
    let event: String = db.query_row("SELECT event FROM audit_log WHERE seq = 3", [], |row| row.get(0)).unwrap();
    assert!(event.contains("\"decision\":\"allow\""), "{event}");
    let altered = event.replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    db.execute("UPDATE audit_log SET event = ?1 WHERE seq = 3", [&altered]).unwrap();
    drop(db);
    let server = Server::start_at(dir, &[], &address);
    let (mut admin, _) = Browser::signed_in_admin(&server).await;
    let page = admin.get("/ui/audit").await.body;
    assert!(page.contains("Verification FAILED") && page.contains("class=\"failed\""), "{page}");
    assert!(!page.contains("verified up to checkpoint"));
}

#[tokio::test]
async fn the_delegation_graph_is_a_well_formed_escaped_svg() {
    let server = Server::start();
    setup(&server);
    let (mut admin, _) = Browser::signed_in_admin(&server).await;
    let svg = admin.get("/ui/graph.svg").await;
    assert_eq!(svg.status, StatusCode::OK);
    assert_eq!(svg.headers["content-type"], "image/svg+xml; charset=utf-8");
    let body = svg.body;
    assert!(body.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && body.trim_end().ends_with("</svg>"));
    assert!(!body.contains("<script") && !body.contains(" onload"), "no script");
    for name in ["alice", "bob", "helper", "bobbot", RESOURCE] {
        assert!(body.contains(&format!(">{name}</text>")), "{name}: {body}");
    }
    assert_well_formed(&body);
    let page = admin.get("/ui/graph").await.body;
    assert!(page.contains("src=\"/ui/graph.svg\"") && page.contains("owns") && page.contains("may use"));
}

/// Every tag is closed in order and no raw `&` or `<` appears in text: enough of XML's
/// well-formedness to catch unescaped labels without an XML parser.
fn assert_well_formed(xml: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        for (at, _) in text.match_indices('&') {
            let entity = &text[at..];
            let end = entity.find(';').unwrap_or_else(|| panic!("raw & in {text:?}"));
            assert!(entity[1..end].chars().all(|c| c.is_ascii_alphanumeric() || c == '#'), "{entity}");
        }
        let end = rest[start..].find('>').unwrap() + start;
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "a raw < inside {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().unwrap().to_owned());
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
}
