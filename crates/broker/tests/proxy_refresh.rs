//! A transparent token refresh mid-run, end to end: the real `Broker` proxy over `VaultCredentials`
//! (a vault holding a `refresh_token` connection, a token endpoint on loopback that rotates refresh
//! tokens) in front of a TLS upstream, with one `ManualClock` moved past the refresh point.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::extract::State;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::post;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mandate_broker::lifecycle::{TokenClientOptions, VaultCredentials};
use mandate_broker::proxy::ca::{LocalCa, generate, pem_certificates};
use mandate_broker::proxy::rules::Rules;
use mandate_broker::proxy::upstream::UpstreamTrust;
use mandate_broker::proxy::{AuditSink, Broker, BrokerLimits, BrokerParts};
use mandate_broker::vault::{ClientAuth, EntryKind, KdfParams, Secret, SecretString, Vault, VaultKey, VaultOptions};
use mandate_core::{AuditEvent, Clock, Decision, ManualClock, SystemClock};
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

mod common;
use common::TestCa;

const CONNECTION: &str = "crm:user";
const PLACEHOLDER: &str = "MANDATE_PLACEHOLDER_CRM_USER";
const PASSPHRASE: &str = "correct horse battery staple";
const CLIENT_ID: &str = "broker-client";
const CLIENT_SECRET: &str = "broker-client-secret";
const FIRST_REFRESH: &str = "rt-0";
/// Access tokens live 100 s; the broker replaces them at 80% of that.
const EXPIRES_IN_SECS: i64 = 100;

// ---------------------------------------------------------------- the token endpoint

/// A token endpoint that accepts only the newest refresh token and rotates it on every use.
#[derive(Default)]
struct TokenEndpoint {
    calls: AtomicUsize,
    current_refresh: Mutex<String>,
    /// The refresh token each call presented, in order.
    presented: Mutex<Vec<String>>,
}

async fn token(State(state): State<Arc<TokenEndpoint>>, headers: HeaderMap, body: String) -> AxumResponse {
    let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let refuse = |status: StatusCode, code: &str| (status, axum::Json(json!({"error": code}))).into_response();
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Basic {expected}")) {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return refuse(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    state.presented.lock().push(presented.clone());
    let mut current = state.current_refresh.lock();
    if presented != *current {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    *current = format!("rt-{n}");
    axum::Json(json!({
        "access_token": format!("at-{n}"),
        "token_type": "Bearer",
        "expires_in": EXPIRES_IN_SECS,
        "refresh_token": *current,
    }))
    .into_response()
}

async fn token_endpoint() -> (Arc<TokenEndpoint>, String) {
    let state = Arc::new(TokenEndpoint { current_refresh: Mutex::new(FIRST_REFRESH.into()), ..Default::default() });
    let app = axum::Router::new().route("/oauth2/token", post(token)).with_state(Arc::clone(&state));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, format!("http://{address}/oauth2/token"))
}

// ---------------------------------------------------------------- the TLS upstream

/// A TLS upstream that records the Authorization header of every request it receives.
async fn tls_upstream(ca: &TestCa) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(&[b"h2", b"http/1.1"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                        seen.lock().push(authorization.unwrap_or("<none>").to_owned());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

// ---------------------------------------------------------------- the broker

#[derive(Default)]
struct MemoryAudit(Mutex<Vec<AuditEvent>>);

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, event: AuditEvent) -> Result<(), String> {
        self.0.lock().push(event);
        Ok(())
    }
}

fn key() -> VaultKey {
    VaultKey::passphrase(Zeroizing::new(PASSPHRASE.into())).unwrap()
}

fn stored_refresh_token(path: &Path) -> String {
    let vault = Vault::open(path, &key()).unwrap();
    vault.get(CONNECTION).unwrap().value().unwrap().expose().to_owned()
}

/// A vault at `path` holding one `refresh_token` connection against `endpoint`.
fn vault_with_refresh_token(path: &Path, endpoint: &str, clock: &ManualClock) -> Vault {
    let options = VaultOptions { kdf: KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }, clock: Arc::new(clock.clone()) };
    let mut vault = Vault::create_with(path, &key(), &options).unwrap();
    let kind = EntryKind::RefreshToken {
        token_endpoint: endpoint.to_owned(),
        client_id: CLIENT_ID.into(),
        scope: None,
        auth: ClientAuth::ClientSecretBasic,
    };
    let secret = Secret::refresh_token(kind, SecretString::new(FIRST_REFRESH), Some(SecretString::new(CLIENT_SECRET)));
    vault.add(CONNECTION, secret).unwrap();
    vault
}

/// Starts the broker on loopback; returns its URL and its CA (PEM) for the agent to trust.
async fn start_broker(
    credentials: VaultCredentials,
    clock: &ManualClock,
    upstream_ca: &TestCa,
    audit: Arc<MemoryAudit>,
) -> (String, String) {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let (ca_pem, ca_key) = generate(clock.now_secs()).unwrap();
    let ca = LocalCa::from_pem(&ca_pem, &ca_key, Arc::clone(&clock)).unwrap();
    let rules = format!("unmatched = \"refuse\"\n[[rule]]\nhost = \"localhost\"\nconnection = \"{CONNECTION}\"");
    let broker = Broker::new(BrokerParts {
        rules: Rules::parse(&rules).unwrap(),
        ca,
        credentials: Arc::new(credentials),
        audit: audit as Arc<dyn AuditSink>,
        clock,
        agent: Some("spiffe://example.org/agent/test".into()),
        owner: Some("alice".into()),
        upstream: UpstreamTrust { system_roots: false, extra_roots: pem_certificates(&upstream_ca.cert_pem).unwrap() },
        limits: BrokerLimits::default(),
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(broker.serve(listener, std::future::pending()));
    (url, ca_pem)
}

// ---------------------------------------------------------------- the test

#[tokio::test]
async fn an_access_token_is_refreshed_transparently_between_proxied_requests() {
    let (endpoint_state, endpoint) = token_endpoint().await;
    let upstream_ca = TestCa::new();
    let (upstream_addr, upstream_seen) = tls_upstream(&upstream_ca).await;
    // One clock for the broker, its CA and the token cache. It starts at the real time because the
    // agent checks the broker's leaf certificates against the real time.
    let clock = ManualClock::at_ms(SystemClock.now_ms());
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let vault = vault_with_refresh_token(&vault_path, &endpoint, &clock);
    let credentials =
        VaultCredentials::new(vault, TokenClientOptions::default(), Arc::new(clock.clone()), None).unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let (broker_url, broker_ca_pem) = start_broker(credentials, &clock, &upstream_ca, Arc::clone(&audit)).await;

    // The agent: trusts only the broker's CA and holds only the placeholder.
    let roots = reqwest::Certificate::from_pem_bundle(broker_ca_pem.as_bytes()).unwrap();
    let agent = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(&broker_url).unwrap())
        .tls_certs_only(roots)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/records", upstream_addr.port());
    let mut agent_sent = Vec::new();
    let mut send = async || {
        let request = agent.get(&url).bearer_auth(PLACEHOLDER).build().unwrap();
        agent_sent.push(request.headers()["authorization"].to_str().unwrap().to_owned());
        agent.execute(request).await.unwrap().status()
    };

    // First request: the broker redeems rt-0 and injects at-1; the rotated rt-1 is on disk.
    assert_eq!(send().await, StatusCode::OK);
    assert_eq!(*upstream_seen.lock(), ["Bearer at-1"]);
    assert_eq!(endpoint_state.calls.load(Ordering::SeqCst), 1);
    assert_eq!(stored_refresh_token(&vault_path), "rt-1");

    // Before the refresh point (80 s of 100 s) the cached token is reused, no token request.
    clock.advance_ms(79_000);
    assert_eq!(send().await, StatusCode::OK);
    assert_eq!(endpoint_state.calls.load(Ordering::SeqCst), 1);

    // Past the refresh point, mid-run on the same agent: the broker refreshes with rt-1 and
    // injects at-2; the agent did nothing different.
    clock.advance_ms(11_000);
    assert_eq!(send().await, StatusCode::OK);
    assert_eq!(*upstream_seen.lock(), ["Bearer at-1", "Bearer at-1", "Bearer at-2"]);

    let placeholder_header = format!("Bearer {PLACEHOLDER}");
    assert_eq!(agent_sent, [placeholder_header.as_str(); 3], "the agent only ever sent the placeholder");
    assert_eq!(endpoint_state.calls.load(Ordering::SeqCst), 2, "the token endpoint was called exactly twice");
    assert_eq!(*endpoint_state.presented.lock(), ["rt-0", "rt-1"], "each refresh presented the newest token");
    assert_eq!(stored_refresh_token(&vault_path), "rt-2", "the reopened vault holds the rotated refresh token");

    // Every injection was audited, naming the connection and never a token.
    let events = audit.0.lock().clone();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| (e.action.as_str(), e.decision) == ("broker.inject", Decision::Allow)));
    let all = serde_json::to_string(&events).unwrap();
    assert!(all.contains(CONNECTION));
    for secret in ["at-1", "at-2", "rt-0", "rt-1", "rt-2", CLIENT_SECRET] {
        assert!(!all.contains(secret), "{secret} reached the audit log");
    }
}
