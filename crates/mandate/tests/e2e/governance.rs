//! `mandate gateway --governance FILE` end to end: a recording MCP upstream behind the real
//! gateway. Budgets (the 301st call of a 300-call tool), loop guard and rate limit, content
//! checks (a secret refused and never forwarded or logged, an email redacted), and step-up
//! approval through CIBA: one approved call goes through once, and only that call.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

use crate::code_flow::set_password;
use crate::harness::{Server, bin, claims, free_address};

const CIBA: &str = "urn:openid:params:grant-type:ciba";
const PASSWORD: &str = "correct horse battery staple";
const AGENT: &str = "spiffe://mandate.local/agent/worker";
const FAKE_AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// Bodies of every request that reached the upstream.
type Seen = Arc<Mutex<Vec<String>>>;

/// A JSON-RPC upstream that records what it receives and answers each request with its id.
async fn upstream(seen: Seen) -> String {
    async fn answer(State(seen): State<Seen>, body: Bytes) -> axum::Json<Value> {
        let text = String::from_utf8_lossy(&body).into_owned();
        let id = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("id").cloned()).unwrap_or(Value::Null);
        seen.lock().unwrap().push(text);
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}))
    }
    let app = axum::Router::new().fallback(answer).with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct GatewayProcess {
    child: Child,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server, owner alice (with a password), agent `worker` with a client for client credentials
/// and CIBA, and a governed gateway in front of a recording upstream.
struct Setup {
    server: Server,
    _gateway: GatewayProcess,
    resource: String,
    seen: Seen,
    client: (String, String),
    http: reqwest::Client,
}

impl Setup {
    async fn start(governance: &str) -> Self {
        Self::start_with_policies(governance, None).await
    }

    /// [`Setup::start`] with a Cedar policy set activated (`mandate policy set`) before the
    /// gateway starts, so its first request is already decided by it.
    async fn start_with_policies(governance: &str, policies: Option<&str>) -> Self {
        let server = Server::start();
        let seen = Seen::default();
        let upstream = upstream(seen.clone()).await;
        let listen = free_address();
        let resource = format!("http://{listen}/mcp");
        server.cli(&["owner", "create", "alice"]);
        set_password(&server, "alice", PASSWORD);
        server.cli(&["resource", "create", &resource, "--scope", "read"]);
        server.cli(&["agent", "create", "worker", "--owner", "alice", "--scope", "read"]);
        let made = server.cli_json(&[
            "client",
            "create",
            "--agent",
            "worker",
            "--grant-type",
            "client_credentials",
            "--grant-type",
            CIBA,
        ]);
        let client =
            (made["client_id"].as_str().unwrap().to_owned(), made["client_secret"].as_str().unwrap().to_owned());
        if let Some(policies) = policies {
            let file = server.dir.path().join("policies.cedar");
            std::fs::write(&file, policies).unwrap();
            server.cli(&["policy", "set", file.to_str().unwrap()]);
        }
        let file = server.dir.path().join("governance.toml");
        std::fs::write(&file, governance).unwrap();
        let mut child = Command::new(bin())
            .arg("--data-dir")
            .arg(server.data_dir())
            .args(["gateway", "--listen", &listen, "--upstream", &upstream, "--resource", &resource])
            .args(["--scopes", "read", "--issuer", &server.base, "--governance"])
            .arg(&file)
            .env("MANDATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the gateway printed its address").unwrap();
        assert!(first.starts_with("Mandate gateway listening on "), "{first}");
        std::thread::spawn(move || for _ in lines {});
        let http = reqwest::Client::new();
        Self { server, _gateway: GatewayProcess { child }, resource, seen, client, http }
    }

    /// The agent's own token for the gateway.
    async fn agent_token(&self) -> String {
        let response = self
            .http
            .post(self.server.url("/oauth2/token"))
            .basic_auth(&self.client.0, Some(&self.client.1))
            .form(&[("grant_type", "client_credentials"), ("resource", &self.resource), ("scope", "read")])
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
    }

    /// One `tools/call` through the gateway: status, `Retry-After`/`WWW-Authenticate`, JSON body.
    async fn call(&self, token: &str, tool: &str, arguments: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let response = self
            .http
            .post(&self.resource)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap_or(Value::Null))
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The whole audit log as text, and its events.
    fn audit(&self) -> (String, Vec<Value>) {
        let events = self.server.audit_events();
        (serde_json::to_string(&events).unwrap(), events)
    }

    /// The CIBA flow for what an `approval_required` answer asks: request, alice approves on the
    /// approval page, the agent redeems. Returns the approval token.
    async fn approve(&self, required: &Value) -> String {
        let details = required["authorization_details"].to_string();
        let message = required["binding_message"].as_str().unwrap();
        let endpoint = required["backchannel_authentication_endpoint"].as_str().unwrap();
        assert_eq!(endpoint, self.server.url("/oauth2/bc-authorize"));
        let scope = required["scope"].as_str().unwrap();
        let form = [
            ("scope", scope),
            ("resource", required["resource"].as_str().unwrap()),
            ("login_hint", "alice"),
            ("binding_message", message),
            ("authorization_details", details.as_str()),
        ];
        let response =
            self.http.post(endpoint).basic_auth(&self.client.0, Some(&self.client.1)).form(&form).send().await.unwrap();
        let status = response.status();
        let asked: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{asked}");
        let auth_req_id = asked["auth_req_id"].as_str().unwrap();

        let pending = self.server.cli_json(&["ciba", "pending", "alice"]);
        let row = pending.as_array().unwrap().iter().find(|r| r["binding_message"] == message).unwrap();
        let approval_id = row["approval_id"].as_str().unwrap();
        let decided = self
            .http
            .post(self.server.url(&format!("/oauth2/ciba/approve/{approval_id}")))
            .form(&[("owner", "alice"), ("password", PASSWORD), ("decision", "approve")])
            .send()
            .await
            .unwrap();
        assert_eq!(decided.status(), 200);

        let response = self
            .http
            .post(self.server.url("/oauth2/token"))
            .basic_auth(&self.client.0, Some(&self.client.1))
            .form(&[("grant_type", CIBA), ("auth_req_id", auth_req_id)])
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
        assert_eq!(claims(&token)["authorization_details"], required["authorization_details"]);
        token
    }
}

fn denials<'e>(events: &'e [Value], reason: &str) -> Vec<&'e Value> {
    events.iter().filter(|e| e["action"] == "gateway.deny" && e["reason"] == reason).collect()
}

#[tokio::test]
async fn the_301st_call_of_a_300_call_tool_is_refused() {
    let s = Setup::start("[budget.tools.search]\nmax_calls = 300\n").await;
    let token = s.agent_token().await;
    for n in 0..300 {
        let (status, _, body) = s.call(&token, "search", json!({"q": n})).await;
        assert_eq!(status, 200, "call {n}: {body}");
    }
    let (status, _, body) = s.call(&token, "search", json!({"q": 300})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("budget_exceeded")), "{body}");
    assert_eq!(body["error_description"], "budget.tools.search.max_calls=300 count=300");
    // Another tool has no budget of its own.
    let (status, _, _) = s.call(&token, "fetch", json!({})).await;
    assert_eq!(status, 200);

    let seen = s.seen();
    assert_eq!(seen.iter().filter(|b| b.contains("\"search\"")).count(), 300, "the upstream never saw call 301");
    let (_, events) = s.audit();
    let refused = denials(&events, "budget_exceeded");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["agent"], AGENT);
    assert!(refused[0]["detail"].as_str().unwrap().contains("tool=search"));
    assert!(refused[0]["detail"].as_str().unwrap().contains("count=300"));
    let forwarded = events.iter().filter(|e| e["action"] == "gateway.forward" && e["decision"] == "allow").count();
    assert_eq!(forwarded, 301);
}

#[tokio::test]
async fn loops_and_rates_are_refused_with_their_own_errors() {
    let governance = "[loop_guard]\nmax_repeats = 3\n\n[budget.tools.slow]\nrate = { calls = 2, per_secs = 3600 }\n";
    let s = Setup::start(governance).await;
    let token = s.agent_token().await;
    for _ in 0..3 {
        assert_eq!(s.call(&token, "poll", json!({"job": 1})).await.0, 200);
    }
    let (status, _, body) = s.call(&token, "poll", json!({"job": 1})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("loop_detected")), "{body}");
    assert_eq!(s.call(&token, "poll", json!({"job": 2})).await.0, 200, "other arguments break the loop");

    assert_eq!(s.call(&token, "slow", json!({"n": 1})).await.0, 200);
    assert_eq!(s.call(&token, "slow", json!({"n": 2})).await.0, 200);
    let (status, headers, body) = s.call(&token, "slow", json!({"n": 3})).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    let (_, events) = s.audit();
    assert_eq!(denials(&events, "loop_detected").len(), 1);
    assert_eq!(denials(&events, "rate_limited").len(), 1);
    assert_eq!(s.seen().len(), 6);
}

#[tokio::test]
async fn secrets_are_refused_and_emails_redacted_without_reaching_the_log() {
    let s = Setup::start("[content]\n").await;
    let token = s.agent_token().await;
    let (status, _, body) = s.call(&token, "store", json!({"note": format!("my key is {FAKE_AWS_KEY}")})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("content_rejected")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("aws_access_key_id at /params/arguments/note"));
    assert!(s.seen().is_empty(), "the upstream never saw the secret");

    let (status, _, body) = s.call(&token, "mail", json!({"to": "carol@example.com", "text": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    let forwarded: Value = serde_json::from_str(&seen[0]).unwrap();
    assert_eq!(forwarded["params"]["arguments"]["to"], "[REDACTED:email]");
    assert_eq!(forwarded["params"]["arguments"]["text"], "hi");

    let (log, events) = s.audit();
    assert!(!log.contains(FAKE_AWS_KEY) && !log.contains("carol@example.com"), "matched text in the audit log");
    let refused = denials(&events, "content_rejected");
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["detail"].as_str().unwrap().contains("aws_access_key_id@/params/arguments/note(len=20,deny)"));
    let forward = events.iter().find(|e| e["action"] == "gateway.forward" && e["decision"] == "allow").unwrap();
    assert!(forward["detail"].as_str().unwrap().contains("findings=email@/params/arguments/to(len=17,redact)"));
}

#[tokio::test]
async fn an_owner_approval_authorises_exactly_one_call() {
    let governance =
        "[approval]\nrequire_for = [\"transfer\"]\n\n[budget.tools.search]\nmax_calls = 1\non_exceed = \"step_up\"\n";
    let s = Setup::start(governance).await;
    let token = s.agent_token().await;
    let transfer = json!({"to": "bob", "amount": 5});

    let (status, headers, required) = s.call(&token, "transfer", transfer.clone()).await;
    assert_eq!((status, required["error"].as_str()), (403, Some("approval_required")), "{required}");
    assert!(headers["www-authenticate"].to_str().unwrap().contains("insufficient_authorization"));
    let detail = &required["authorization_details"][0];
    assert_eq!((detail["type"].as_str(), detail["tool"].as_str()), (Some("mandate_tool_call"), Some("transfer")));
    assert_eq!(detail["locations"], json!([s.resource]));
    assert!(s.seen().is_empty());

    // A click in the agent's own UI is not enough: only the owner's approval yields a token.
    let approval = s.approve(&required).await;
    assert_eq!(claims(&approval)["act"]["sub"], AGENT);
    let (status, _, body) = s.call(&approval, "transfer", transfer.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.seen().len(), 1);
    let (status, _, body) = s.call(&approval, "transfer", transfer.clone()).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invalid_approval")), "reused: {body}");

    // A fresh approval for transfer A authorises neither A with other arguments nor tool B.
    let second = s.approve(&required).await;
    let (status, _, body) = s.call(&second, "transfer", json!({"to": "bob", "amount": 500})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invalid_approval")), "{body}");
    let (status, _, body) = s.call(&second, "search", json!({"q": "x"})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invalid_approval")), "{body}");
    assert_eq!(s.seen().len(), 1, "nothing else was forwarded");

    // A step-up budget: the second search asks for approval of that search.
    assert_eq!(s.call(&token, "search", json!({"q": 1})).await.0, 200);
    let (status, _, required) = s.call(&token, "search", json!({"q": 2})).await;
    assert_eq!((status, required["error"].as_str()), (403, Some("approval_required")), "{required}");
    assert_eq!(required["authorization_details"][0]["tool"], "search");
    let approval = s.approve(&required).await;
    assert_eq!(s.call(&approval, "search", json!({"q": 2})).await.0, 200);

    let (_, events) = s.audit();
    assert_eq!(denials(&events, "approval_required").len(), 2);
    assert_eq!(denials(&events, "invalid_approval").len(), 3);
    let approved = events
        .iter()
        .filter(|e| e["action"] == "gateway.forward" && e["detail"].as_str().unwrap_or("").contains("approved=true"))
        .count();
    assert_eq!(approved, 2);
}

#[tokio::test]
async fn a_bad_governance_file_stops_the_gateway() {
    let server = Server::start();
    let file = server.dir.path().join("bad.toml");
    std::fs::write(&file, "[budget]\nmax_calls = \"many\"\n").unwrap();
    let listen = free_address();
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(["gateway", "--listen", &listen, "--upstream", "http://127.0.0.1:9", "--resource"])
        .arg(format!("http://{listen}/mcp"))
        .args(["--issuer", &server.base, "--governance"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--governance"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A policy set where agents may read and query, never delete, never run DDL.
const READ_NOT_DELETE: &str = r#"
@id("tokens") permit(principal, action == Mandate::Action::"issue", resource);
@id("read") permit(principal is Mandate::Agent, action == Mandate::Action::"call", resource == Mandate::Tool::"read_records");
@id("query") permit(principal is Mandate::Agent, action == Mandate::Action::"call", resource == Mandate::Tool::"query");
@id("no-ddl") forbid(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"query")
  when { context.arguments_lower like "*drop table*" || context.arguments_lower like "*delete from*" };
"#;

#[tokio::test]
async fn cedar_at_the_gateway_allows_read_refuses_delete_and_drop_table_and_audits_the_policy_ids() {
    let s = Setup::start_with_policies("", Some(READ_NOT_DELETE)).await;
    let token = s.agent_token().await;
    let (status, _, body) = s.call(&token, "delete_records", json!({"table": "customers"})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("policy_denied")), "{body}");

    let (status, _, _) = s.call(&token, "read_records", json!({"table": "customers"})).await;
    assert_eq!(status, 200);
    let (status, _, _) = s.call(&token, "query", json!({"sql": "SELECT name FROM customers"})).await;
    assert_eq!(status, 200);
    let (status, _, body) = s.call(&token, "query", json!({"sql": "DROP TABLE customers; --"})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("policy_denied")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("no-ddl"), "{body}");

    assert!(s.seen().iter().all(|b| !b.contains("DROP TABLE") && !b.contains("delete_records")));
    let (log, events) = s.audit();
    let refused = denials(&events, "policy_denied");
    assert!(refused.iter().any(|e| e["detail"].as_str().unwrap().contains("policy=deny ids=no-ddl")));
    let allowed: Vec<_> =
        events.iter().filter(|e| e["action"] == "gateway.forward" && e["decision"] == "allow").collect();
    assert!(allowed.iter().any(|e| e["detail"].as_str().unwrap().contains("policy=allow ids=read")));
    assert!(!log.contains("DROP TABLE"), "arguments are not audited");
}
