//! The gateway between a real guard (over a real store and keyring) and a loopback upstream that
//! records what reaches it: credentials are verified and swapped for a Txn-Token, MCP calls are
//! described and audited, bodies and Server-Sent Events stream, failures are answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_audit::CheckpointPolicy;
use mandate_authz::{Authz, AuthzConfig};
use mandate_core::{AuditEvent, Clock, OAuthError, ScopeSet, SystemClock, TrustDomain};
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, Kek, SigningKey};
use mandate_gateway::{CoLocated, Gateway, GatewayConfig, MintInput, MintOutcome, Minted, TxnMinter};
use mandate_store::Mutation;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

const ISSUER: &str = "https://mandate.example";
const AGENT: &str = "spiffe://mandate.local/agent/bot";
const WORKLOAD: &str = "spiffe://mandate.local/gateway";

/// What one request looked like when it reached the upstream.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A loopback upstream: `/sse` streams two events, the second only once `release` is notified;
/// every other path answers `upstream says hi` after recording the request.
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
}

impl Upstream {
    /// Serves HTTP/1.1 and h2c (prior knowledge) alike.
    async fn start(&self) -> SocketAddr {
        let app = Router::new().fallback(record).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    fn last(&self) -> Seen {
        self.all().last().cloned().expect("the upstream saw a request")
    }
}

async fn record(State(upstream): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
    let path = parts.uri.path().to_owned();
    let seen = Seen { path: path.clone(), version: parts.version, headers: parts.headers, body };
    upstream.seen.lock().push(seen);
    if path != "/sse" {
        return ([("connection", "x-upstream-private"), ("x-upstream-private", "1")], "upstream says hi")
            .into_response();
    }
    let (events, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let release = Arc::clone(&upstream.release);
    tokio::spawn(async move {
        let _ = events.send(Ok(Bytes::from_static(b"data: one\n\n"))).await;
        release.notified().await;
        let _ = events.send(Ok(Bytes::from_static(b"data: two\n\n"))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
}

/// Stands in for the Transaction Token Service: records each request, answers as told.
#[derive(Default)]
struct FakeMinter {
    inputs: Mutex<Vec<(String, Value, Value, String)>>,
    refuse: Option<OAuthError>,
}

#[async_trait]
impl TxnMinter for FakeMinter {
    async fn mint(&self, input: &MintInput<'_>, _correlation: &str) -> MintOutcome {
        let recorded = (
            input.subject_token.to_owned(),
            input.request_context.clone(),
            input.request_details.clone(),
            input.workload.to_owned(),
        );
        self.inputs.lock().push(recorded);
        let result = match &self.refuse {
            Some(error) => Err(error.clone()),
            None => Ok(Minted { token: "minted.txn.token".into(), txn: "txn-1".into(), expires_in: 60 }),
        };
        result.into()
    }
}

struct Fixture {
    authz: Authz,
    upstream: Upstream,
    minter: Arc<FakeMinter>,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn authz() -> (Authz, tempfile::TempDir) {
    mandate_crypto::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = mandate_store::open(dir.path().join("m.db").to_str().unwrap()).await.unwrap();
    let config = AuthzConfig::new(ISSUER, TrustDomain::parse("mandate.local").unwrap());
    let policy = CheckpointPolicy::default();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let authz = Authz::start(store, Kek::generate().unwrap().0, clock, config, policy, "t/audit").await.unwrap();
    (authz, dir)
}

/// Binds the gateway, then builds it for its own address (the resource is its public URL).
async fn serve(build: impl FnOnce(String) -> Gateway) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Arc::new(build(format!("{url}/mcp"))).router();
    tokio::spawn(async move {
        axum::serve(mandate_gateway::listener(listener), app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    url
}

impl Fixture {
    async fn start() -> Self {
        Self::with(FakeMinter::default(), false, None).await
    }

    async fn with(minter: FakeMinter, http2: bool, upstream_url: Option<String>) -> Self {
        let (authz, dir) = authz().await;
        let upstream = Upstream::default();
        let upstream_url = match upstream_url {
            Some(url) => url,
            None => format!("http://{}", upstream.start().await),
        };
        let minter = Arc::new(minter);
        let mut config = GatewayConfig::new(&upstream_url, WORKLOAD, ScopeSet::parse("read").unwrap()).unwrap();
        config.upstream_http2 = http2;
        let (for_gateway, shared) = (authz.clone(), Arc::clone(&minter));
        let url = serve(move |resource| {
            let co_located = CoLocated { authz: &for_gateway, resource: &resource, config };
            let real = Gateway::co_located(co_located).unwrap();
            real.with_minter(shared)
        })
        .await;
        Self { authz, upstream, minter, url, http: reqwest::Client::new(), _dir: dir }
    }

    fn resource(&self) -> String {
        format!("{}/mcp", self.url)
    }

    /// An access token of this server for the gateway, as the token endpoint would issue it.
    fn token(&self, extra: Value) -> String {
        let now = SystemClock.now_secs();
        let mut claims = json!({"iss": ISSUER, "sub": AGENT, "aud": self.resource(), "client_id": "c1",
            "jti": random_id(), "iat": now, "exp": now + 300, "scope": "read", "mandate_owner": "alice"});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let key = self.authz.keys.signer(Alg::EdDSA).unwrap();
        sign_jwt(&key, "at+jwt", &claims).unwrap()
    }

    async fn post_mcp(&self, auth: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.resource())
            .header("authorization", auth)
            .header("cookie", "session=kept")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn audit(&self) -> Vec<Value> {
        let entries = self.authz.store.audit_entries(0, 10_000).await.unwrap();
        entries.into_iter().map(|e| serde_json::from_str(&e.canonical).unwrap()).collect()
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    mandate_crypto::secret::fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for `method url`, bound to `token` by `ath`.
fn dpop_proof(key: &SigningKey, method: &str, url: &str, token: &str) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public().jwk()});
    let ath = URL_SAFE_NO_PAD.encode(mandate_crypto::secret::sha256(token.as_bytes()));
    let claims = json!({"jti": random_id(), "htm": method, "htu": url, "iat": SystemClock.now_secs(), "ath": ath});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

const TOOL_CALL: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"hi"}}}"#;

#[tokio::test]
async fn a_tool_call_is_forwarded_with_a_txn_token_and_never_the_access_token() {
    let f = Fixture::start().await;
    let token = f.token(json!({}));
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();
    let response = f.post_mcp(&format!("Bearer {token}"), &body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-upstream-private").is_none(), "connection-listed headers are dropped");
    assert!(response.headers().get("x-request-id").is_some());
    assert_eq!(response.text().await.unwrap(), "upstream says hi");

    let seen = f.upstream.last();
    assert_eq!(seen.path, "/mcp");
    assert_eq!(seen.headers.get("txn-token").unwrap(), "minted.txn.token");
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("dpop").is_none());
    assert_eq!(seen.headers.get("cookie").unwrap(), "session=kept");
    assert_eq!(serde_json::from_slice::<Value>(&seen.body).unwrap(), body, "the body is forwarded unchanged");
    let raw = format!("{:?}{}", seen.headers, String::from_utf8_lossy(&seen.body));
    assert!(!raw.contains(&token), "the access token reached the upstream");

    let (subject, context, details, workload) = f.minter.inputs.lock()[0].clone();
    assert_eq!(subject, token);
    assert_eq!(workload, WORKLOAD);
    assert_eq!(details, json!({"method": "POST", "path": "/mcp", "mcp_method": "tools/call", "tool": "add_note"}));
    assert_eq!(context, json!({"method": "POST", "path": "/mcp", "req_ip": "127.0.0.1"}));

    let events = f.audit().await;
    let forward = events.iter().find(|e| e["action"] == "gateway.forward").expect("gateway.forward audited");
    assert_eq!(forward["decision"], "allow");
    assert_eq!(forward["agent"], AGENT);
    assert_eq!(forward["owner"], "alice");
    assert_eq!(forward["txn"], "txn-1");
    assert!(forward["detail"].as_str().unwrap().contains("mcp_method=tools/call tool=add_note"));
}

#[tokio::test]
async fn a_txn_token_sent_by_the_client_is_replaced() {
    let f = Fixture::start().await;
    let response = f
        .http
        .get(format!("{}/notes?x=1", f.url))
        .bearer_auth(f.token(json!({})))
        .header("txn-token", "forged-by-client")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = f.upstream.last();
    assert_eq!(seen.path, "/notes");
    let values: Vec<_> = seen.headers.get_all("txn-token").iter().collect();
    assert_eq!(values, ["minted.txn.token"]);
    assert_eq!(f.minter.inputs.lock()[0].2, json!({"method": "GET", "path": "/notes"}));
}

#[tokio::test]
async fn requests_without_a_good_token_never_reach_the_upstream() {
    let f = Fixture::start().await;
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();
    let missing = f.http.post(f.resource()).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", f.url);
    let challenge = missing.headers().get("www-authenticate").unwrap().to_str().unwrap().to_owned();
    assert!(challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")), "{challenge}");
    let metadata: Value = f.http.get(&metadata_url).send().await.unwrap().json().await.unwrap();
    assert_eq!((&metadata["resource"], &metadata["authorization_servers"]), (&json!(f.resource()), &json!([ISSUER])));

    let other_audience = f.token(json!({"aud": "https://elsewhere.example"}));
    assert_eq!(f.post_mcp(&format!("Bearer {other_audience}"), &body).await.status(), 401);
    let expired = f.token(json!({"exp": SystemClock.now_secs() - 600}));
    assert_eq!(f.post_mcp(&format!("Bearer {expired}"), &body).await.status(), 401);
    let narrow = f.token(json!({"scope": "write"}));
    assert_eq!(f.post_mcp(&format!("Bearer {narrow}"), &body).await.status(), 403);
    let in_query = f.http.get(format!("{}/x?access_token=abc", f.url)).send().await.unwrap();
    assert_eq!(in_query.status(), 400);

    assert!(f.upstream.all().is_empty(), "nothing was forwarded");
    assert!(f.minter.inputs.lock().is_empty(), "nothing was minted");
    let refusals = f.audit().await.into_iter().filter(|e| e["action"] == "gateway.forward").count();
    assert_eq!(refusals, 5, "every refusal is audited");
}

#[tokio::test]
async fn dpop_bound_tokens_need_their_proof() {
    let f = Fixture::start().await;
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let mut members = key.public().jwk().clone();
    for extra in ["kid", "alg", "use"] {
        members.as_object_mut().unwrap().remove(extra);
    }
    let jkt = mandate_crypto::keys::thumbprint(&members);
    let token = f.token(json!({"cnf": {"jkt": jkt}}));
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();

    let as_bearer = f.post_mcp(&format!("Bearer {token}"), &body).await;
    assert_eq!(as_bearer.status(), 401);
    let without_proof = f.post_mcp(&format!("DPoP {token}"), &body).await;
    assert_eq!(without_proof.status(), 401);
    let wrong_url = dpop_proof(&key, "POST", &format!("{}/other", f.url), &token);
    let refused = f.http.post(f.resource()).header("authorization", format!("DPoP {token}")).header("dpop", wrong_url);
    assert_eq!(refused.json(&body).send().await.unwrap().status(), 401);
    assert!(f.upstream.all().is_empty());

    let proof = dpop_proof(&key, "POST", &f.resource(), &token);
    let request = f.http.post(f.resource()).header("authorization", format!("DPoP {token}")).header("dpop", &proof);
    assert_eq!(request.json(&body).send().await.unwrap().status(), 200);
    let seen = f.upstream.last();
    assert!(seen.headers.get("dpop").is_none() && seen.headers.get("authorization").is_none());
    // The same proof again is a replay.
    let again = f.http.post(f.resource()).header("authorization", format!("DPoP {token}")).header("dpop", proof);
    assert_eq!(again.json(&body).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn server_sent_events_stream_through() {
    let f = Fixture::start().await;
    let mut response = f.http.get(format!("{}/sse", f.url)).bearer_auth(f.token(json!({}))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The upstream holds its second event until the first has arrived here: a buffering
    // gateway would never deliver the first one (the timeout only turns a hang into a failure).
    let first = tokio::time::timeout(Duration::from_secs(20), response.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    f.upstream.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: two\n\n");
}

#[tokio::test]
async fn oversized_json_bodies_are_refused_other_bodies_stream() {
    let f = Fixture::start().await;
    let token = f.token(json!({}));
    let big = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"pad\":\"{}\"}}", "a".repeat(1 << 20));
    let refused = f
        .http
        .post(f.resource())
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    assert!(f.upstream.all().is_empty());

    let streamed = f
        .http
        .post(format!("{}/upload", f.url))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(f.upstream.last().body, big.as_bytes());
    assert_eq!(f.minter.inputs.lock()[0].2, json!({"method": "POST", "path": "/upload"}), "not inspected");
}

#[tokio::test]
async fn a_refused_mint_is_403_and_a_failed_one_502() {
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();
    for (error, status) in [
        (OAuthError::new(mandate_core::OAuthErrorCode::InvalidScope, "no scope"), 403),
        (OAuthError::server_error("tts down"), 502),
    ] {
        let f = Fixture::with(FakeMinter { refuse: Some(error), ..Default::default() }, false, None).await;
        let response = f.post_mcp(&format!("Bearer {}", f.token(json!({}))), &body).await;
        assert_eq!(response.status(), status);
        assert!(response.json::<Value>().await.unwrap()["error"].is_string());
        assert!(f.upstream.all().is_empty());
        let events = f.audit().await;
        assert!(events.iter().any(|e| e["action"] == "gateway.forward" && e["decision"] == "deny"));
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let f = Fixture::with(FakeMinter::default(), false, Some(format!("http://{closed}"))).await;
    let response = f.http.get(format!("{}/x", f.url)).bearer_auth(f.token(json!({}))).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let events = f.audit().await;
    assert!(events.iter().any(|e| e["action"] == "gateway.upstream" && e["decision"] == "deny"));
}

#[tokio::test]
async fn the_upstream_can_be_spoken_to_over_h2c() {
    let f = Fixture::with(FakeMinter::default(), true, None).await;
    let response = f.http.get(format!("{}/x", f.url)).bearer_auth(f.token(json!({}))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(f.upstream.last().version, Version::HTTP_2);
    let f = Fixture::start().await;
    f.http.get(format!("{}/x", f.url)).bearer_auth(f.token(json!({}))).send().await.unwrap();
    assert_eq!(f.upstream.last().version, Version::HTTP_11);
}

/// A gateway exactly as `mandate gateway` builds it: the server's own TTS, in process.
async fn co_located() -> Fixture {
    let (authz, _dir) = authz().await;
    let upstream = Upstream::default();
    let upstream_url = format!("http://{}", upstream.start().await);
    let config = GatewayConfig::new(&upstream_url, WORKLOAD, ScopeSet::parse("read").unwrap()).unwrap();
    let for_gateway = authz.clone();
    let url = serve(move |resource| {
        Gateway::co_located(CoLocated { authz: &for_gateway, resource: &resource, config }).unwrap()
    })
    .await;
    Fixture { authz, upstream, minter: Default::default(), url, http: reqwest::Client::new(), _dir }
}

#[tokio::test]
async fn the_in_process_tts_mints_for_the_verified_token() {
    let f = co_located().await;
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();
    let response = f.post_mcp(&format!("Bearer {}", f.token(json!({}))), &body).await;
    assert_eq!(response.status(), 200);
    let txn_token = f.upstream.last().headers.get("txn-token").unwrap().to_str().unwrap().to_owned();
    let payload = txn_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sub"], AGENT);
    assert_eq!(claims["req_wl"], WORKLOAD);
    assert_eq!(claims["tctx"]["tool"], "add_note");
    let events = f.audit().await;
    let forward = events.iter().find(|e| e["action"] == "gateway.forward").unwrap();
    assert_eq!(forward["txn"], claims["txn"], "the forward event carries the transaction id");
    let issued = events.iter().find(|e| e["action"] == "txn_token.issue").expect("the mint is audited");
    assert_eq!((&issued["txn"], &issued["decision"]), (&claims["txn"], &json!("allow")));
}

#[tokio::test]
async fn a_token_revoked_after_use_is_refused_though_its_verification_is_remembered() {
    let f = co_located().await;
    let token = f.token(json!({"jti": "used-then-revoked"}));
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();
    for _ in 0..2 {
        assert_eq!(f.post_mcp(&format!("Bearer {token}"), &body).await.status(), 200);
    }
    let revoke =
        Mutation::RevokeToken { jti: "used-then-revoked".into(), expires_at_secs: SystemClock.now_secs() + 300 };
    f.authz.log.apply(revoke, AuditEvent::allow("token.revoke", "t")).await.unwrap().unwrap();
    let refused = f.post_mcp(&format!("Bearer {token}"), &body).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(f.upstream.all().len(), 2, "the revoked token's request never reached the upstream");
}

#[tokio::test]
async fn a_refused_in_process_mint_is_audited_with_the_refusal() {
    let f = co_located().await;
    // Within the guard's clock leeway, but the TTS mints nothing for an expired token.
    let now = SystemClock.now_secs();
    let token = f.token(json!({"iat": now - 100, "exp": now - 5}));
    let body: Value = serde_json::from_str(TOOL_CALL).unwrap();
    let refused = f.post_mcp(&format!("Bearer {token}"), &body).await;
    assert_eq!(refused.status(), 403);
    assert!(f.upstream.all().is_empty());
    let events = f.audit().await;
    for action in ["txn_token.issue", "gateway.forward"] {
        let event = events.iter().find(|e| e["action"] == action).expect(action);
        assert_eq!(event["decision"], "deny", "{action}");
        assert!(event["detail"].as_str().unwrap().contains("expired"), "{event}");
    }
}

#[tokio::test]
async fn clients_may_speak_h2c_to_the_gateway() {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let f = Fixture::start().await;
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Body>();
    let request = axum::http::Request::get(format!("{}/x", f.url))
        .header("authorization", format!("Bearer {}", f.token(json!({}))))
        .body(Body::empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, Version::HTTP_2));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"upstream says hi");
    assert!(f.upstream.last().headers.get("authorization").is_none());
}
