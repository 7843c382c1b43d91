//! CIBA step-up approval against the real binary: an agent asks for one described action, the
//! owner approves or denies it on Mandate's page, and the agent polls the token endpoint. Each
//! refusal (pending, slow_down, expired, denied, another client, wrong owner, spent) is checked.

use serde_json::{Value, json};

use crate::code_flow::set_password;
use crate::harness::{RESOURCE, Server, claims};

const GRANT: &str = "urn:openid:params:grant-type:ciba";
const PASSWORD: &str = "correct horse battery staple";
const BOB_PASSWORD: &str = "bob's own long password";

/// A confidential agent client registered for the CIBA grant.
struct Agent {
    id: String,
    secret: String,
}

/// Owners alice and bob (with passwords), resource [`RESOURCE`] (read, write), and agent
/// `helper` of alice with a CIBA client.
fn setup(server: &Server) -> Agent {
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["owner", "create", "bob"]);
    set_password(server, "alice", PASSWORD);
    set_password(server, "bob", BOB_PASSWORD);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write"]);
    agent(server, "helper")
}

fn agent(server: &Server, name: &str) -> Agent {
    server.cli(&["agent", "create", name, "--owner", "alice", "--scope", "read", "--scope", "write"]);
    let client =
        server.cli_json(&["client", "create", "--agent", name, "--auth", "client_secret_basic", "--grant-type", GRANT]);
    Agent {
        id: client["client_id"].as_str().unwrap().to_owned(),
        secret: client["client_secret"].as_str().unwrap().to_owned(),
    }
}

fn details(action: &str) -> String {
    json!([{ "type": "db_action", "actions": [action], "locations": [RESOURCE] }]).to_string()
}

async fn bc_authorize(server: &Server, agent: &Agent, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![("scope", "openid write"), ("resource", RESOURCE)];
    form.extend_from_slice(extra);
    let response = server
        .http
        .post(server.url("/oauth2/bc-authorize"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A valid request by alice's agent for `action`; returns its `auth_req_id`.
async fn ask(server: &Server, agent: &Agent, action: &str, extra: &[(&str, &str)]) -> String {
    let message = format!("Run {action} on the customer table");
    let details = details(action);
    let mut form = vec![("login_hint", "alice"), ("binding_message", message.as_str())];
    form.push(("authorization_details", details.as_str()));
    form.extend_from_slice(extra);
    let (status, body) = bc_authorize(server, agent, &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["interval"], 5);
    assert_eq!(body["expires_in"], 300);
    body["auth_req_id"].as_str().unwrap().to_owned()
}

async fn poll(server: &Server, agent: &Agent, auth_req_id: &str) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&[("grant_type", GRANT), ("auth_req_id", auth_req_id)])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn poll_error(server: &Server, agent: &Agent, auth_req_id: &str) -> String {
    let (status, body) = poll(server, agent, auth_req_id).await;
    assert_ne!(status, 200, "{body}");
    assert!(body.get("access_token").is_none());
    body["error"].as_str().unwrap().to_owned()
}

/// The approval id of alice's pending request about `action`, as `mandate ciba pending` lists it.
fn approval_id(server: &Server, action: &str) -> String {
    let pending = server.cli_json(&["ciba", "pending", "alice"]);
    let row = pending.as_array().unwrap().iter().find(|r| r["binding_message"].as_str().unwrap().contains(action));
    let row = row.unwrap_or_else(|| panic!("no pending request for {action}: {pending}"));
    assert!(row["approval_url"].as_str().unwrap().contains("/oauth2/ciba/approve/"));
    row["approval_id"].as_str().unwrap().to_owned()
}

async fn decide(server: &Server, approval_id: &str, owner: &str, password: &str, decision: &str) -> (u16, String) {
    let response = server
        .http
        .post(server.url(&format!("/oauth2/ciba/approve/{approval_id}")))
        .form(&[("owner", owner), ("password", password), ("decision", decision)])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn an_approval_yields_one_token_for_that_action_only() {
    let server = Server::start();
    let agent = setup(&server);
    let a = ask(&server, &agent, "DELETE-7", &[]).await;
    let b = ask(&server, &agent, "EXPORT-ALL", &[]).await;
    let approval_a = approval_id(&server, "DELETE-7");

    let page = server.http.get(server.url(&format!("/oauth2/ciba/approve/{approval_a}"))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("Run DELETE-7 on the customer table") && !html.contains("EXPORT-ALL"), "{html}");
    assert!(html.contains("helper (owned by alice)"));

    let (status, html) = decide(&server, &approval_a, "alice", PASSWORD, "approve").await;
    assert_eq!(status, 200, "{html}");
    let (status, body) = poll(&server, &agent, &a).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none(), "no refresh token from CIBA");
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["act"]["sub"], "spiffe://mandate.local/agent/helper");
    assert_eq!(access["aud"], RESOURCE);
    assert_eq!(access["scope"], "write");
    let approved: Value = serde_json::from_str(&details("DELETE-7")).unwrap();
    assert_eq!(access["authorization_details"], approved, "exactly action A");
    let id_token = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id_token["sub"], "alice");
    assert_eq!(id_token["aud"], agent.id.as_str());
    assert_eq!(id_token["urn:openid:params:jwt:claim:auth_req_id"], a.as_str());

    assert_eq!(poll_error(&server, &agent, &a).await, "invalid_grant", "a second redemption");
    // Action B was never approved: approving A authorises nothing for it.
    assert_eq!(poll_error(&server, &agent, &b).await, "authorization_pending");
    assert_eq!(poll_error(&server, &agent, &b).await, "slow_down", "polled again at once");
    // A decided request cannot be decided again.
    let (status, _) = decide(&server, &approval_a, "alice", PASSWORD, "deny").await;
    assert_eq!(status, 400);

    let events = server.audit_events();
    for action in ["ciba.request", "ciba.approve", "ciba.poll"] {
        assert!(events.iter().any(|e| e["action"] == action && e["decision"] == "allow"), "{action}");
    }
    let issued = events.iter().filter(|e| e["action"] == "token.issue" && e["decision"] == "allow").count();
    assert_eq!(issued, 1);
}

#[tokio::test]
async fn a_denied_request_never_yields_a_token() {
    let server = Server::start();
    let agent = setup(&server);
    let id = ask(&server, &agent, "DROP", &[]).await;
    let approval = approval_id(&server, "DROP");
    let (status, html) = decide(&server, &approval, "alice", PASSWORD, "deny").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Denied"));
    assert_eq!(poll_error(&server, &agent, &id).await, "access_denied");
    let (status, _) = decide(&server, &approval, "alice", PASSWORD, "approve").await;
    assert_eq!(status, 400, "a denial is final");
    let events = server.audit_events();
    assert!(events.iter().any(|e| e["action"] == "ciba.deny" && e["decision"] == "allow"));
    assert!(!events.iter().any(|e| e["action"] == "token.issue" && e["decision"] == "allow"));
}

#[tokio::test]
async fn an_expired_request_never_yields_a_token() {
    let server = Server::start();
    let agent = setup(&server);
    let message = "Run PURGE on the customer table";
    let form = [("login_hint", "alice"), ("binding_message", message), ("requested_expiry", "1")];
    let (status, body) = bc_authorize(&server, &agent, &form).await;
    assert_eq!((status, body["expires_in"].as_i64()), (200, Some(1)), "{body}");
    let id = body["auth_req_id"].as_str().unwrap().to_owned();
    let approval = approval_id(&server, "PURGE");
    // Waits past the expiry (no timing is asserted: any later moment gives the same answer).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, _) = decide(&server, &approval, "alice", PASSWORD, "approve").await;
    assert_eq!(status, 400, "too late to approve");
    assert_eq!(poll_error(&server, &agent, &id).await, "expired_token");
    assert!(server.cli_json(&["ciba", "pending", "alice"]).as_array().unwrap().is_empty());
}

#[tokio::test]
async fn only_the_requesting_client_redeems_and_only_the_named_owner_decides() {
    let server = Server::start();
    let agent = setup(&server);
    let other = self::agent(&server, "other");
    let id = ask(&server, &agent, "CHARGE", &[]).await;
    let approval = approval_id(&server, "CHARGE");

    let (status, html) = decide(&server, &approval, "bob", BOB_PASSWORD, "approve").await;
    assert_eq!(status, 403);
    assert!(html.contains("only the owner named in the request"), "{html}");
    let (status, html) = decide(&server, &approval, "alice", "not alice's password", "approve").await;
    assert_eq!(status, 403);
    assert!(html.contains("wrong owner name or password"), "{html}");
    // A form posted from another site is refused before any password is checked.
    let cross = server
        .http
        .post(server.url(&format!("/oauth2/ciba/approve/{approval}")))
        .header("origin", "https://evil.example")
        .form(&[("owner", "alice"), ("password", PASSWORD), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);

    assert_eq!(poll_error(&server, &agent, &id).await, "authorization_pending", "nobody decided");
    let (status, _) = decide(&server, &approval, "alice", PASSWORD, "approve").await;
    assert_eq!(status, 200);
    assert_eq!(poll_error(&server, &other, &id).await, "invalid_grant", "another client");
    let unknown = server.http.get(server.url("/oauth2/ciba/approve/not-an-id")).send().await.unwrap();
    assert_eq!(unknown.status(), 400);

    let events = server.audit_events();
    let refused = events.iter().filter(|e| e["action"] == "ciba.approve" && e["decision"] == "deny").count();
    assert!(refused >= 2, "wrong owner and wrong password are audited");
    let exported = serde_json::to_string(&events).unwrap();
    assert!(!exported.contains(PASSWORD) && !exported.contains(&id), "no secrets in the log");
}

#[tokio::test]
async fn guessing_passwords_denies_the_request() {
    let server = Server::start();
    let agent = setup(&server);
    let id = ask(&server, &agent, "WIRE", &[]).await;
    let approval = approval_id(&server, "WIRE");
    for attempt in 1..=5 {
        let (status, _) = decide(&server, &approval, "alice", &format!("guess number {attempt}"), "approve").await;
        assert_ne!(status, 200);
    }
    let (status, _) = decide(&server, &approval, "alice", PASSWORD, "approve").await;
    assert_eq!(status, 400, "the request was denied after five wrong passwords");
    assert_eq!(poll_error(&server, &agent, &id).await, "access_denied");
}

#[tokio::test]
async fn malformed_requests_get_the_right_errors() {
    let server = Server::start();
    let agent = setup(&server);
    let message = ("binding_message", "Run X");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("login_hint", "alice")], "invalid_request"),
        (vec![("login_hint", "alice"), ("binding_message", "a\u{1}b")], "invalid_binding_message"),
        (vec![("login_hint", "alice"), ("id_token_hint", "x.y.z"), message], "invalid_request"),
        (vec![message], "invalid_request"),
        (vec![("login_hint_token", "t"), message], "invalid_request"),
        (vec![("login_hint", "mallory"), message], "unknown_user_id"),
        (vec![("login_hint", "alice"), ("requested_expiry", "86400"), message], "invalid_request"),
        (vec![("login_hint", "alice"), ("authorization_details", "[{}]"), message], "invalid_authorization_details"),
        (vec![("login_hint", "alice"), ("id_token_hint", "x.y.z")], "invalid_request"),
    ];
    for (form, error) in cases {
        let (status, body) = bc_authorize(&server, &agent, &form).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{form:?}: {body}");
    }
    let no_openid = server
        .http
        .post(server.url("/oauth2/bc-authorize"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&[("scope", "write"), ("resource", RESOURCE), ("login_hint", "alice"), message])
        .send()
        .await
        .unwrap();
    let body: Value = no_openid.json().await.unwrap();
    assert_eq!(body["error"], "invalid_scope");

    // A client not registered for the grant may not ask.
    server.cli(&["agent", "create", "plain", "--owner", "alice", "--scope", "write"]);
    let plain = server.cli_json(&["client", "create", "--agent", "plain", "--auth", "client_secret_basic"]);
    let plain = Agent {
        id: plain["client_id"].as_str().unwrap().into(),
        secret: plain["client_secret"].as_str().unwrap().into(),
    };
    let (status, body) = bc_authorize(&server, &plain, &[("login_hint", "alice"), message]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");
    assert!(server.cli_json(&["ciba", "pending", "alice"]).as_array().unwrap().is_empty(), "nothing stored");

    let events = server.audit_events();
    let refused = events.iter().filter(|e| e["action"] == "ciba.request" && e["decision"] == "deny").count();
    assert_eq!(refused, 11, "every refusal is audited");
}

#[tokio::test]
async fn discovery_advertises_poll_mode() {
    let server = Server::start();
    let doc: Value =
        server.http.get(server.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["backchannel_authentication_endpoint"], server.url("/oauth2/bc-authorize"));
    assert_eq!(doc["backchannel_token_delivery_modes_supported"], json!(["poll"]));
    assert_eq!(doc["backchannel_user_code_parameter_supported"], false);
    assert!(doc["grant_types_supported"].as_array().unwrap().contains(&json!(GRANT)));
}
