//! `mandate gateway` end to end: `mandate serve` and `mandate gateway` share one data directory;
//! the example chain (order → risk → payment, in this process) sits behind the gateway. An
//! agent's delegated token for Alice goes in; the last hop sees `sub` = Alice, `act` = the agent
//! and the gateway's `txn`; the access token never reaches the chain. In remote mode the
//! gateway shares nothing with the server but HTTP: keys, signals and Txn-Tokens.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::SystemClock;
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use mandate_example_txn_chain::{Role, router};
use mandate_guard::{RemoteKeys, TxnTokenVerifier};
use serde_json::{Value, json};

use crate::harness::{Server, bin, claims, free_address, now, random_id};

const TOOL_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{}}}"#;
const UPSTREAM_IDP: &str = "https://idp.example.test";
const AGENT: &str = "spiffe://mandate.local/agent/shopper";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const GATEWAY_AGENT: &str = "spiffe://mandate.local/agent/gateway-bot";

/// A running `mandate gateway` on the server's data directory.
struct GatewayProcess {
    child: Child,
    base: String,
}

impl GatewayProcess {
    fn start(server: &Server, listen: &str, upstream: &str) -> Self {
        let mut command = Command::new(bin());
        command.arg("--data-dir").arg(server.data_dir());
        Self::spawn(command.args(gateway_args(server, listen, upstream)))
    }

    /// Remote mode: run in the empty `workdir`, no data directory, the secret from the env.
    fn start_remote(server: &Server, listen: &str, upstream: &str, remote: &RemoteArgs) -> Self {
        let mut command = Command::new(bin());
        command.current_dir(remote.workdir.path()).args(gateway_args(server, listen, upstream));
        command.args(["--tts-url", &server.url("/oauth2/token"), "--client-id", &remote.client.0]);
        command.args(["--trust-domain", "mandate.local"]);
        match &remote.secret_file {
            Some(file) => command.arg("--client-secret-file").arg(file),
            None => command.env("MANDATE_GATEWAY_CLIENT_SECRET", &remote.client.1),
        };
        if let Some(url) = &remote.ssf_poll {
            command.args(["--ssf-poll", url]);
        }
        if let Some(file) = &remote.policy_file {
            command.arg("--policy-file").arg(file);
        }
        Self::spawn(&mut command)
    }

    fn spawn(command: &mut Command) -> Self {
        let mut child =
            command.env("MANDATE_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the gateway printed its address").unwrap();
        let base = first.strip_prefix("Mandate gateway listening on ").expect("the listening line").to_owned();
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    fn resource(&self) -> String {
        format!("{}/mcp", self.base)
    }
}

fn gateway_args(server: &Server, listen: &str, upstream: &str) -> Vec<String> {
    let resource = format!("http://{listen}/mcp");
    ["gateway", "--listen", listen, "--upstream", upstream, "--resource", &resource]
        .into_iter()
        .chain(["--scopes", "read", "--issuer", &server.base])
        .map(str::to_owned)
        .collect()
}

/// How a remote gateway reaches the server: its client credentials and optional SSF stream.
struct RemoteArgs {
    workdir: tempfile::TempDir,
    client: (String, String),
    ssf_poll: Option<String>,
    /// Where the secret is read from instead of the environment.
    secret_file: Option<std::path::PathBuf>,
    /// The gateway's own Cedar policy file (`--policy-file`).
    policy_file: Option<std::path::PathBuf>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headers of every request that reached the first hop (the gateway's upstream).
type Seen = Arc<std::sync::Mutex<Vec<HeaderMap>>>;

async fn record(State(seen): State<Seen>, request: Request, next: Next) -> Response {
    seen.lock().unwrap().push(request.headers().clone());
    next.run(request).await
}

async fn bind(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The three hops, trusting the server's Txn-Tokens (keys discovered from its metadata).
async fn start_chain(server: &Server, seen: &Seen) -> Vec<String> {
    let verifier = || {
        let keys = Arc::new(RemoteKeys::new(Arc::new(SystemClock)).unwrap());
        Arc::new(TxnTokenVerifier::new(server.base.clone(), "mandate.local", keys, Arc::new(SystemClock)))
    };
    let payment = bind(router(Role::Payment, verifier(), None)).await;
    let risk = bind(router(Role::Risk, verifier(), Some(payment.clone()))).await;
    let order = router(Role::Order, verifier(), Some(risk.clone())).layer(from_fn_with_state(seen.clone(), record));
    vec![bind(order).await, risk, payment]
}

struct Setup {
    server: Server,
    gateway: GatewayProcess,
    hops: Vec<String>,
    seen: Seen,
    client: (String, String),
    idp: SigningKey,
}

impl Setup {
    async fn start() -> Self {
        let server = Server::start();
        let seen = Seen::default();
        let hops = start_chain(&server, &seen).await;
        let listen = free_address();
        server.cli(&["owner", "create", "alice"]);
        server.cli(&["resource", "create", &format!("http://{listen}/mcp"), "--scope", "read"]);
        server.cli(&["resource", "create", "https://other.example.test", "--scope", "read"]);
        server.cli(&["agent", "create", "shopper", "--owner", "alice", "--scope", "read"]);
        let made = server.cli_json(&["client", "create", "--agent", "shopper"]);
        let client =
            (made["client_id"].as_str().unwrap().to_owned(), made["client_secret"].as_str().unwrap().to_owned());
        // Alice's identity provider, whose ID tokens the agent trades for delegated tokens.
        let idp = SigningKey::generate(Alg::ES256).unwrap();
        let jwks = server.dir.path().join("idp-jwks.json");
        std::fs::write(&jwks, json!({"keys": [idp.public().jwk()]}).to_string()).unwrap();
        server.cli(&["idp", "add", "alice-idp", "--issuer", UPSTREAM_IDP, "--jwks-file", jwks.to_str().unwrap()]);
        let gateway = GatewayProcess::start(&server, &listen, &hops[0]);
        Self { server, gateway, hops, seen, client, idp }
    }

    async fn token_request(&self, form: &[(&str, &str)], dpop: Option<String>) -> String {
        let mut request =
            self.server.http.post(self.server.url("/oauth2/token")).basic_auth(&self.client.0, Some(&self.client.1));
        if let Some(proof) = dpop {
            request = request.header("DPoP", proof);
        }
        let response = request.form(form).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The agent's own token for `resource`.
    async fn agent_token(&self, resource: &str) -> String {
        let form = [("grant_type", "client_credentials"), ("resource", resource), ("scope", "read")];
        self.token_request(&form, None).await
    }

    /// A token for Alice with the agent as actor (RFC 8693 delegation), for the gateway.
    async fn delegated_token(&self) -> String {
        let now = now();
        let id_token = sign_jwt(
            &self.idp,
            "JWT",
            &json!({"iss": UPSTREAM_IDP, "sub": "alice", "aud": self.server.base, "iat": now, "exp": now + 120,
                "scope": "read"}),
        )
        .unwrap();
        let actor = self.agent_token(&self.gateway.resource()).await;
        let resource = self.gateway.resource();
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", id_token.as_str()),
            ("subject_token_type", JWT),
            ("actor_token", actor.as_str()),
            ("actor_token_type", ACCESS_TOKEN),
            ("resource", resource.as_str()),
        ];
        self.token_request(&form, None).await
    }

    async fn call_gateway(&self, authorization: Option<&str>) -> (u16, Value) {
        let mut request =
            self.server.http.post(self.gateway.resource()).header("content-type", "application/json").body(TOOL_CALL);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_delegated_call_crosses_three_hops_with_one_txn() {
    let s = Setup::start().await;
    let token = s.delegated_token().await;
    assert_eq!(claims(&token)["act"], json!({"sub": AGENT}));
    let (status, body) = s.call_gateway(Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 200, "{body}");
    let payment = &body["next"]["next"];
    assert_eq!(payment["service"], "payment");
    assert_eq!(payment["sub"], "alice");
    assert_eq!(payment["act"]["sub"], AGENT);
    assert_eq!(payment["req_wl"], "spiffe://mandate.local/gateway");
    assert_eq!(payment["tctx"]["tool"], "pay");
    let txn = payment["txn"].as_str().unwrap().to_owned();
    assert_eq!((body["txn"].as_str(), body["next"]["txn"].as_str()), (Some(txn.as_str()), Some(txn.as_str())));

    // What the first hop received: a Txn-Token, never the access token or any Authorization.
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].get("authorization").is_none());
    assert!(seen[0].get("txn-token").is_some());
    assert!(!format!("{:?}", seen[0]).contains(&token), "the access token reached the upstream");

    // One audit trail: the gateway's forward and the token service's issue share the txn.
    let query = s.server.cli(&["--json", "audit", "query", "--txn", &txn]);
    let with_txn: Vec<Value> = query.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let forward = with_txn.iter().find(|e| e["action"] == "gateway.forward").expect("gateway.forward has the txn");
    assert_eq!(
        (&forward["decision"], &forward["agent"], &forward["subject"]),
        (&json!("allow"), &json!(AGENT), &json!("alice"))
    );
    assert!(forward["detail"].as_str().unwrap().contains("tool=pay"));
    assert!(with_txn.iter().any(|e| e["action"] == "txn_token.issue" && e["decision"] == "allow"));
}

#[tokio::test]
async fn the_gateway_refuses_what_the_guard_refuses() {
    let s = Setup::start().await;
    assert_eq!(s.call_gateway(None).await.0, 401);
    let elsewhere = s.agent_token("https://other.example.test").await;
    assert_eq!(s.call_gateway(Some(&format!("Bearer {elsewhere}"))).await.0, 401);
    // A DPoP-bound token presented as a plain Bearer token.
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let proof = dpop_proof(&key, &s.server.url("/oauth2/token"));
    let resource = s.gateway.resource();
    let form = [("grant_type", "client_credentials"), ("resource", resource.as_str()), ("scope", "read")];
    let bound = s.token_request(&form, Some(proof)).await;
    assert!(claims(&bound)["cnf"]["jkt"].is_string());
    assert_eq!(s.call_gateway(Some(&format!("Bearer {bound}"))).await.0, 401);
    assert!(s.seen.lock().unwrap().is_empty(), "nothing reached the upstream");
    // The agent's own token works (sub = act = the agent).
    let own = s.agent_token(&resource).await;
    let (status, body) = s.call_gateway(Some(&format!("Bearer {own}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["next"]["next"]["sub"], &body["next"]["next"]["act"]["sub"]), (&json!(AGENT), &json!(AGENT)));
    // The kill switch, thrown by another process on the shared store, stops the agent at the gateway.
    // Epochs are whole seconds and inclusive, so the token issued above counts as before it.
    s.server.cli(&["revoke", "--agent", "shopper"]);
    let (status, body) = s.call_gateway(Some(&format!("Bearer {own}"))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_token")), "{body}");
    assert_eq!(s.seen.lock().unwrap().len(), 1, "only the call before the revocation reached the upstream");
    // The refusal names whose authentic token it was; a token that is not authentic names nobody.
    let (status, _) = s.call_gateway(Some("Bearer not.a.token")).await;
    assert_eq!(status, 401);
    let events = s.server.audit_events();
    let denied: Vec<&Value> =
        events.iter().filter(|e| e["action"] == "gateway.forward" && e["decision"] == "deny").collect();
    let revoked = denied.iter().find(|e| e["reason"] == "invalid_token" && e["jti"] == claims(&own)["jti"]);
    let revoked = revoked.unwrap_or_else(|| panic!("no refusal names the revoked token: {denied:?}"));
    assert_eq!(revoked["agent"], json!(AGENT), "{revoked}");
    let anonymous = denied.last().unwrap();
    assert!(anonymous["jti"].is_null() && anonymous["agent"].is_null(), "{anonymous}");
}

#[tokio::test]
async fn a_hop_refuses_forged_and_passed_through_tokens() {
    let s = Setup::start().await;
    let now = now();
    let forged_claims = json!({"iss": s.server.base, "aud": "mandate.local", "iat": now, "exp": now + 60,
        "txn": "forged", "sub": "alice", "scope": "read", "req_wl": "spiffe://mandate.local/gateway"});
    let forged = sign_jwt(&SigningKey::generate(Alg::EdDSA).unwrap(), "txntoken+jwt", &forged_claims).unwrap();
    let access = s.agent_token(&s.gateway.resource()).await;
    for hop in &s.hops {
        let call = |header: &'static str, value: String| s.server.http.post(hop).header(header, value).send();
        assert_eq!(call("txn-token", forged.clone()).await.unwrap().status(), 401, "forged at {hop}");
        assert_eq!(call("txn-token", access.clone()).await.unwrap().status(), 401, "access token at {hop}");
        assert_eq!(call("authorization", format!("Bearer {access}")).await.unwrap().status(), 401, "{hop}");
    }
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for `POST htu`.
fn dpop_proof(key: &SigningKey, htu: &str) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public().jwk()});
    let claims = json!({"jti": random_id(), "htm": "POST", "htu": htu, "iat": now()});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A server, the example chain, and a remote gateway in front of it that shares no data
/// directory with the server.
struct RemoteSetup {
    server: Server,
    gateway: GatewayProcess,
    seen: Seen,
    remote: RemoteArgs,
    caller: (String, String),
}

impl RemoteSetup {
    /// `ssf`: subscribe the gateway to revocations; `file_secret`: a secret for the gateway to
    /// read from a file instead of its own from the environment.
    async fn start(ssf: bool, file_secret: Option<&str>) -> Self {
        Self::start_with(ssf, file_secret, None).await
    }

    /// [`RemoteSetup::start`], the gateway deciding calls with the Cedar `policies` given.
    async fn start_with(ssf: bool, file_secret: Option<&str>, policies: Option<&str>) -> Self {
        let server = Server::start();
        let seen = Seen::default();
        let hops = start_chain(&server, &seen).await;
        let listen = free_address();
        server.cli(&["owner", "create", "alice"]);
        server.cli(&["resource", "create", &format!("http://{listen}/mcp"), "--scope", "read"]);
        let caller = agent_client(&server, "shopper");
        // The gateway's own identity at the TTS: an agent's confidential client (token exchange).
        let client = agent_client(&server, "gateway-bot");
        let ssf_poll = if ssf { Some(client_stream(&server, &client).await) } else { None };
        let secret_file = file_secret.map(|secret| {
            let path = server.dir.path().join("gateway-secret");
            std::fs::write(&path, format!("{secret}\n")).unwrap();
            path
        });
        let policy_file = policies.map(|text| {
            let path = server.dir.path().join("gateway-policies.cedar");
            std::fs::write(&path, text).unwrap();
            path
        });
        let workdir = tempfile::tempdir().unwrap();
        let remote = RemoteArgs { workdir, client, ssf_poll, secret_file, policy_file };
        let gateway = GatewayProcess::start_remote(&server, &listen, &hops[0], &remote);
        Self { server, gateway, seen, remote, caller }
    }

    async fn caller_token(&self) -> String {
        let resource = self.gateway.resource();
        let form = [("grant_type", "client_credentials"), ("resource", resource.as_str()), ("scope", "read")];
        let request =
            self.server.http.post(self.server.url("/oauth2/token")).basic_auth(&self.caller.0, Some(&self.caller.1));
        let body: Value = request.form(&form).send().await.unwrap().json().await.unwrap();
        body["access_token"].as_str().expect("a token").to_owned()
    }

    async fn call(&self, token: &str) -> (u16, Value) {
        let (status, body, _) = self.call_with_id(token).await;
        (status, body)
    }

    /// Also returns the gateway's `x-request-id`.
    async fn call_with_id(&self, token: &str) -> (u16, Value, String) {
        let request = self.server.http.post(self.gateway.resource()).header("content-type", "application/json");
        let response = request.bearer_auth(token).body(TOOL_CALL).send().await.unwrap();
        let status = response.status().as_u16();
        let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        (status, response.json().await.unwrap_or(Value::Null), id)
    }
}

fn agent_client(server: &Server, agent: &str) -> (String, String) {
    server.cli(&["agent", "create", agent, "--owner", "alice", "--scope", "read"]);
    let made = server.cli_json(&["client", "create", "--agent", agent]);
    (made["client_id"].as_str().unwrap().to_owned(), made["client_secret"].as_str().unwrap().to_owned())
}

/// The gateway client's own SSF stream (poll delivery); returns its poll endpoint.
async fn client_stream(server: &Server, client: &(String, String)) -> String {
    let request = server.http.post(server.url("/ssf/streams")).basic_auth(&client.0, Some(&client.1));
    let response = request.json(&json!({"events_requested": [SESSION_REVOKED]})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let stream: Value = response.json().await.unwrap();
    stream["delivery"]["endpoint_url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_remote_gateway_mints_txn_tokens_at_the_tts_over_http() {
    let s = RemoteSetup::start(false, None).await;
    let token = s.caller_token().await;
    let (status, body, request_id) = s.call_with_id(&token).await;
    assert_eq!(status, 200, "{body}");
    let payment = &body["next"]["next"];
    assert_eq!((&payment["sub"], &payment["act"]["sub"]), (&json!(AGENT), &json!(AGENT)));
    // The TTS names the authenticated gateway client's agent as the requesting workload.
    assert_eq!(payment["req_wl"], GATEWAY_AGENT);
    assert_eq!(payment["tctx"]["tool"], "pay");

    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].get("authorization").is_none());
    assert!(seen[0].get("txn-token").is_some());
    assert!(!format!("{:?}", seen[0]).contains(&token), "the access token reached the upstream");

    // The TTS audited the mint for the gateway's client; the gateway itself kept no files.
    let txn = payment["txn"].as_str().unwrap();
    let query = s.server.cli(&["--json", "audit", "query", "--txn", txn]);
    let events: Vec<Value> = query.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let issue = events.iter().find(|e| e["action"] == "txn_token.issue").expect("the TTS audited the mint");
    assert_eq!((&issue["decision"], &issue["client"]), (&json!("allow"), &json!(s.remote.client.0)));
    assert_eq!(issue["correlation_id"], request_id, "the TTS's event carries the gateway's request id");
    let left = std::fs::read_dir(s.remote.workdir.path()).unwrap().count();
    assert_eq!(left, 0, "remote mode opened no data directory");
}

#[tokio::test]
async fn a_remote_gateway_decides_calls_with_its_own_policy_file() {
    let policies = r#"
@id("no-pay") forbid(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"pay");
@id("rest") permit(principal, action == Mandate::Action::"call", resource);
"#;
    let s = RemoteSetup::start_with(false, None, Some(policies)).await;
    let token = s.caller_token().await;
    let (status, body) = s.call(&token).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("policy_denied")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("no-pay"), "{body}");
    assert!(s.seen.lock().unwrap().is_empty(), "a refused call never reaches the upstream");
}

#[tokio::test]
async fn a_remote_gateway_polling_signals_refuses_a_revoked_token() {
    let s = RemoteSetup::start(true, None).await;
    let token = s.caller_token().await;
    assert_eq!(s.call(&token).await.0, 200);
    s.server.cli(&["revoke", "--agent", "shopper"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    let body = loop {
        let (status, body) = s.call(&token).await;
        if status == 401 {
            break body;
        }
        // Until the signal arrives, the TTS (which reads the revocation state) refuses the mint.
        assert!(status == 200 || status == 403, "{status} {body}");
        assert!(Instant::now() < deadline, "the guard still accepted the revoked token after 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["error"], "invalid_token", "{body}");
}

#[tokio::test]
async fn a_remote_gateway_without_signals_leaves_revocation_to_the_tts() {
    let s = RemoteSetup::start(false, None).await;
    let token = s.caller_token().await;
    s.server.cli(&["revoke", "--agent", "shopper"]);
    // The guard checks only signature and expiry; the TTS, which reads the revocation state,
    // refuses the mint instead (403), so nothing reaches the upstream.
    let (status, body) = s.call(&token).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("revoked"), "{body}");
    assert!(s.seen.lock().unwrap().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn a_remote_gateway_with_a_wrong_client_secret_answers_502() {
    let s = RemoteSetup::start(false, Some("not-the-secret")).await;
    let token = s.caller_token().await;
    let (status, body) = s.call(&token).await;
    assert_eq!((status, body["error"].as_str()), (502, Some("server_error")), "{body}");
    assert!(s.seen.lock().unwrap().is_empty(), "nothing reached the upstream");
}

#[test]
fn remote_mode_needs_a_secret_outside_argv_and_no_co_located_flags() {
    let workdir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let base = ["gateway", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--resource"];
        let remote = ["http://127.0.0.1:9/mcp", "--issuer", "http://127.0.0.1:9", "--tts-url", "http://127.0.0.1:9/t"];
        let output = Command::new(bin())
            .current_dir(workdir.path())
            .args(base)
            .args(remote)
            .args(extra)
            .env_remove("MANDATE_GATEWAY_CLIENT_SECRET")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(&["--client-id", "gw"]).contains("MANDATE_GATEWAY_CLIENT_SECRET"));
    assert!(run(&[]).contains("--client-id"), "--tts-url needs --client-id");
    assert!(run(&["--client-id", "gw", "--workload", "spiffe://mandate.local/gw"]).contains("cannot be used with"));
    assert!(run(&["--client-id", "gw", "--client-secret", "s"]).contains("unexpected argument"));
    assert_eq!(std::fs::read_dir(workdir.path()).unwrap().count(), 0, "no data directory was created");
}
