//! CIBA step-up approval against the real binary: an agent asks for one described action, the
//! owner approves or denies it on Mandate's page, and the agent polls the token endpoint (or is
//! pinged at its notification endpoint first). Each refusal (pending, slow_down, expired,
//! denied, another client, wrong owner, spent, a ping client without its token) is checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    // Not no-referrer: browsers would then post the form with `Origin: null`, refused as cross-site.
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
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
    let (status, body) = poll(&server, &agent, &id).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "RFC 6749 §5.2: 400");
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
    // An opaque origin (a sandboxed frame, a data: URL) is not this site either.
    let opaque = server
        .http
        .post(server.url(&format!("/oauth2/ciba/approve/{approval}")))
        .header("origin", "null")
        .form(&[("owner", "alice"), ("password", PASSWORD), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(opaque.status(), 403);
    // What a browser sends from the page itself is accepted further down.
    let own_origin = server.base.clone();

    assert_eq!(poll_error(&server, &agent, &id).await, "authorization_pending", "nobody decided");
    let same_site = server
        .http
        .post(server.url(&format!("/oauth2/ciba/approve/{approval}")))
        .header("origin", own_origin)
        .header("sec-fetch-site", "same-origin")
        .form(&[("owner", "alice"), ("password", PASSWORD), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(same_site.status(), 200);
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
async fn discovery_advertises_poll_and_ping_modes() {
    let server = Server::start();
    let doc: Value =
        server.http.get(server.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["backchannel_authentication_endpoint"], server.url("/oauth2/bc-authorize"));
    assert_eq!(doc["backchannel_token_delivery_modes_supported"], json!(["poll", "ping"]));
    assert_eq!(doc["backchannel_user_code_parameter_supported"], false);
    assert!(doc["grant_types_supported"].as_array().unwrap().contains(&json!(GRANT)));
}

const INSECURE: (&str, &str) = ("MANDATE_ALLOW_INSECURE_FEDERATION", "true");

/// Callbacks a notification endpoint received: the Authorization header and the JSON body.
type Pings = Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// A loopback notification endpoint answering 204, as CIBA Core §10.2 asks.
async fn notification_endpoint() -> (String, Pings) {
    let seen: Pings = Arc::default();
    let kept = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/ciba/cb",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            kept.lock().unwrap().push((auth, serde_json::from_str(&body).unwrap_or(Value::Null)));
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ciba/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Waits until `count` callbacks arrived (delivery runs in the background); a bound on the
/// wait only, so a slow machine passes and a missing callback fails.
async fn pings(seen: &Pings, count: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= count {
            return got;
        }
        assert!(Instant::now() < deadline, "only {} of {count} callbacks arrived: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ping_agent(server: &Server, name: &str, endpoint: &str) -> Agent {
    server.cli(&["agent", "create", name, "--owner", "alice", "--scope", "read", "--scope", "write"]);
    let args = [
        "--json",
        "client",
        "create",
        "--agent",
        name,
        "--grant-type",
        GRANT,
        "--backchannel-token-delivery-mode",
        "ping",
        "--backchannel-client-notification-endpoint",
        endpoint,
    ];
    let client: Value = serde_json::from_str(&server.cli_env(&[INSECURE], &args)).unwrap();
    Agent {
        id: client["client_id"].as_str().unwrap().to_owned(),
        secret: client["client_secret"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn ping_mode_calls_the_client_back_after_approval_and_after_denial() {
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
    let poller = setup(&server);
    let (endpoint, seen) = notification_endpoint().await;
    let pinged = ping_agent(&server, "pinged", &endpoint);

    // A ping client must send the token its endpoint expects.
    let form = [("login_hint", "alice"), ("binding_message", "Run NO-TOKEN")];
    let (status, body) = bc_authorize(&server, &pinged, &form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    let long = "t".repeat(1025);
    let form = [("login_hint", "alice"), ("binding_message", "Run LONG"), ("client_notification_token", &long)];
    assert_eq!(bc_authorize(&server, &pinged, &form).await.0, 400, "at most 1024 characters");

    // A poll client's decided request is never called back, even if it sent a token.
    let polled = ask(&server, &poller, "POLLED", &[("client_notification_token", "poll-client-token")]).await;
    let (status, _) = decide(&server, &approval_id(&server, "POLLED"), "alice", PASSWORD, "approve").await;
    assert_eq!(status, 200);

    let token_a = "ping-token-A-3q2+7w==";
    let approved = ask(&server, &pinged, "APPROVED", &[("client_notification_token", token_a)]).await;
    let token_b = "ping-token-B-kU9_x~.";
    let denied = ask(&server, &pinged, "DENIED", &[("client_notification_token", token_b)]).await;
    assert!(seen.lock().unwrap().is_empty(), "nothing is sent before a decision");

    let (status, _) = decide(&server, &approval_id(&server, "APPROVED"), "alice", PASSWORD, "approve").await;
    assert_eq!(status, 200);
    let got = pings(&seen, 1).await;
    assert_eq!(got[0], (format!("Bearer {token_a}"), json!({"auth_req_id": approved})), "only the ping client's");
    let (status, body) = poll(&server, &pinged, &approved).await;
    assert_eq!(status, 200, "{body}");
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(access["authorization_details"], serde_json::from_str::<Value>(&details("APPROVED")).unwrap());

    let (status, _) = decide(&server, &approval_id(&server, "DENIED"), "alice", PASSWORD, "deny").await;
    assert_eq!(status, 200);
    let got = pings(&seen, 2).await;
    assert_eq!(got[1], (format!("Bearer {token_b}"), json!({"auth_req_id": denied})));
    let (status, body) = poll(&server, &pinged, &denied).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    assert_eq!(poll(&server, &poller, &polled).await.0, 200, "the poll client still polls");
    assert_eq!(seen.lock().unwrap().len(), 2, "one callback per decision, none for the poll client");

    let events = server.audit_events();
    let notified: Vec<&Value> = events.iter().filter(|e| e["action"] == "ciba.notify").collect();
    assert_eq!(notified.len(), 2, "each attempt is audited");
    assert!(notified.iter().all(|e| e["decision"] == "allow" && e["client"] == pinged.id.as_str()));
    let refused = events.iter().filter(|e| e["action"] == "ciba.request" && e["decision"] == "deny").count();
    assert_eq!(refused, 2, "the refused requests are audited");
    let exported = serde_json::to_string(&events).unwrap();
    for secret in [token_a, token_b, approved.as_str(), denied.as_str()] {
        assert!(!exported.contains(secret), "no callback secret in the log");
    }
}

#[tokio::test]
async fn ping_registration_is_validated() {
    let server = Server::start();
    setup(&server);
    server.cli(&["agent", "create", "pinger", "--owner", "alice", "--scope", "write"]);
    // `insecure`: the CLI runs with MANDATE_ALLOW_INSECURE_FEDERATION=true.
    let create = |insecure: bool, extra: &[&str]| {
        let mut args = vec!["client", "create", "--agent", "pinger", "--grant-type", GRANT];
        args.extend_from_slice(extra);
        let mut command = std::process::Command::new(crate::harness::bin());
        if insecure {
            command.env(INSECURE.0, INSECURE.1);
        }
        command.arg("--data-dir").arg(server.data_dir()).args(&args);
        command.output().unwrap()
    };
    let mode = "--backchannel-token-delivery-mode";
    let endpoint = "--backchannel-client-notification-endpoint";
    let refused = [
        (false, vec![mode, "ping"]),
        (false, vec![mode, "ping", endpoint, "http://127.0.0.1:9/cb"]),
        (true, vec![mode, "ping", endpoint, "http://agent.example/cb"]),
        (false, vec![mode, "push", endpoint, "https://agent.example/cb"]),
        (false, vec![mode, "poll", endpoint, "https://agent.example/cb"]),
    ];
    for (insecure, extra) in refused {
        let out = create(insecure, &extra);
        assert!(!out.status.success(), "{extra:?} was accepted");
    }
    let out = create(false, &[mode, "ping", endpoint, "https://agent.example/cb"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let clients = server.cli_json(&["client", "list"]);
    let pinger = clients.as_array().unwrap().iter().find(|c| c["agent"] == "pinger").unwrap();
    let metadata: Value = serde_json::from_str(pinger["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["backchannel_token_delivery_mode"], "ping");
    assert_eq!(metadata["backchannel_client_notification_endpoint"], "https://agent.example/cb");

    // The admin API applies the same rules.
    let admin_create = |extra: Value| {
        let mut body = json!({"agent": "pinger", "grant_types": [GRANT]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        server.http.post(server.url("/admin/api/v1/clients")).bearer_auth(&server.admin).json(&body).send()
    };
    let refused = admin_create(json!({"backchannel_token_delivery_mode": "ping"})).await.unwrap();
    assert_eq!(refused.status(), 400);
    let made = admin_create(json!({"backchannel_token_delivery_mode": "ping",
        "backchannel_client_notification_endpoint": "https://agent.example/other"}))
    .await
    .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let metadata: Value = serde_json::from_str(made["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["backchannel_client_notification_endpoint"], "https://agent.example/other");
}
