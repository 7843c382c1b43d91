//! Governance inside the real proxy (real guard, store, keyring and in-process TTS; a loopback
//! upstream that records bodies): which bodies are read and scanned (JSON of any method, text,
//! forms, HTTP/2 bodies without a length), redaction on the wire, unscannable bodies, the
//! `Mcp-Session-Id` rule, and the `gateway.deny` audit event without the matched text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mandate_audit::CheckpointPolicy;
use mandate_authz::{Authz, AuthzConfig};
use mandate_core::{Clock, ScopeSet, SystemClock, TrustDomain};
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, Kek};
use mandate_gateway::{CoLocated, Gateway, GatewayConfig, Governance, GovernanceConfig};
use parking_lot::Mutex;
use serde_json::{Value, json};

const ISSUER: &str = "https://mandate.example";
const AGENT: &str = "spiffe://mandate.local/agent/bot";
const FAKE_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

async fn record(State(seen): State<Seen>, request: Request) -> &'static str {
    let body = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap().to_vec();
    seen.lock().push(body);
    "ok"
}

struct Fixture {
    authz: Authz,
    seen: Seen,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(governance: &str) -> Self {
        mandate_crypto::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = mandate_store::open(dir.path().join("m.db").to_str().unwrap()).await.unwrap();
        let config = AuthzConfig::new(ISSUER, TrustDomain::parse("mandate.local").unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let authz = Authz::start(
            store,
            Kek::generate().unwrap().0,
            Arc::clone(&clock),
            config,
            CheckpointPolicy::default(),
            "t/a",
        )
        .await
        .unwrap();
        let seen = Seen::default();
        let app = Router::new().fallback(record).with_state(seen.clone());
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(upstream, app).await.unwrap() });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config =
            GatewayConfig::new(&upstream_url, "spiffe://mandate.local/gateway", ScopeSet::parse("read").unwrap())
                .unwrap();
        let resource = format!("{url}/mcp");
        let governance = Governance::new(GovernanceConfig::parse(governance).unwrap(), clock).unwrap();
        let gateway = Gateway::co_located(CoLocated { authz: &authz, resource: &resource, config })
            .unwrap()
            .with_governance(governance);
        let app = Arc::new(gateway).router();
        tokio::spawn(async move {
            axum::serve(mandate_gateway::listener(listener), app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap();
        });
        Self { authz, seen, url, http: reqwest::Client::new(), _dir: dir }
    }

    fn bearer(&self) -> String {
        let now = SystemClock.now_secs();
        let claims = json!({"iss": ISSUER, "sub": AGENT, "aud": format!("{}/mcp", self.url), "client_id": "c1",
            "jti": uuid::Uuid::now_v7().to_string(), "iat": now, "exp": now + 300, "scope": "read", "mandate_owner": "alice"});
        format!("Bearer {}", sign_jwt(&self.authz.keys.signer(Alg::EdDSA).unwrap(), "at+jwt", &claims).unwrap())
    }

    async fn send(&self, method: reqwest::Method, content_type: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}/mcp", self.url))
            .header("authorization", self.bearer())
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    async fn audit(&self) -> String {
        let entries = self.authz.store.audit_entries(0, 10_000).await.unwrap();
        entries.into_iter().map(|e| e.canonical).collect::<Vec<_>>().join("\n")
    }
}

#[tokio::test]
async fn text_form_and_non_post_json_bodies_are_scanned() {
    let f = Fixture::start("[content]").await;
    let (status, _) = f.send(reqwest::Method::POST, "text/plain; charset=utf-8", "mail dan@example.com now").await;
    assert_eq!(status, 200);
    let (status, _) = f.send(reqwest::Method::POST, "application/x-www-form-urlencoded", "to=erin%40example.com").await;
    assert_eq!(status, 200);
    let (status, body) = f.send(reqwest::Method::PUT, "application/json", &json!({"k": FAKE_KEY}).to_string()).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("content_rejected")));
    let (status, body) = f.send(reqwest::Method::POST, "text/plain", &format!("key {FAKE_KEY}")).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("content_rejected")));
    assert_eq!(f.seen(), ["mail [REDACTED:email] now", "to=%5BREDACTED%3Aemail%5D"]);

    let audit = f.audit().await;
    assert!(!audit.contains(FAKE_KEY) && !audit.contains("dan@example.com") && !audit.contains("erin"));
    assert_eq!(audit.matches("\"gateway.deny\"").count(), 2, "{audit}");
    assert!(audit.contains("aws_access_key_id@text(len=20,deny)"));
}

#[tokio::test]
async fn an_http2_body_without_a_length_is_still_scanned() {
    let f = Fixture::start("[content]").await;
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Body>();
    let chunks = vec![Ok::<_, std::io::Error>(format!("{{\"k\":\"{FAKE_KEY}\"}}"))];
    let request = axum::http::Request::post(format!("{}/mcp", f.url))
        .header("authorization", f.bearer())
        .header("content-type", "application/json")
        .body(Body::from_stream(tokio_stream::iter(chunks)))
        .unwrap();
    assert!(request.headers().get("content-length").is_none());
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"], "content_rejected");
    assert!(f.seen().is_empty());
}

#[tokio::test]
async fn unscannable_bodies_follow_the_configuration() {
    let lenient = Fixture::start("[content]").await;
    let (status, _) = lenient.send(reqwest::Method::POST, "application/octet-stream", FAKE_KEY).await;
    assert_eq!(status, 200, "not scanned, forwarded (unscanned = allow)");
    let strict = Fixture::start("[content]\nunscanned = \"deny\"").await;
    let (status, body) = strict.send(reqwest::Method::POST, "application/octet-stream", FAKE_KEY).await;
    assert_eq!((status, body["error"].as_str()), (415, Some("content_unscannable")));
    let (status, _) = strict.send(reqwest::Method::GET, "application/octet-stream", "").await;
    assert_eq!(status, 200, "an empty body is not refused");
    assert_eq!(strict.seen().len(), 1);
}

#[tokio::test]
async fn an_unusable_mcp_session_id_is_refused() {
    let f = Fixture::start("[budget]\nmax_calls_per_mcp_session = 1").await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{}}}"#;
    let send = |session: String| {
        f.http
            .post(format!("{}/mcp", f.url))
            .header("authorization", f.bearer())
            .header("content-type", "application/json")
            .header("mcp-session-id", session)
            .body(call)
            .send()
    };
    assert_eq!(send("s-1".into()).await.unwrap().status(), 200);
    let refused = send("s-1".into()).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error_description"], "budget.max_calls_per_mcp_session=1 count=1");
    assert_eq!(send("s-2".into()).await.unwrap().status(), 200, "another MCP session has its own count");
    assert_eq!(send("x".repeat(200)).await.unwrap().status(), 400);
}
