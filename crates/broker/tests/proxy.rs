//! The forward proxy against real TLS on loopback: a test upstream with its own CA, the broker
//! with its own local CA, and reqwest as the agent (trusting only the broker's CA, except where
//! a test proves a tunnel is not intercepted).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mandate_broker::credentials::{CredentialError, CredentialProvider};
use mandate_broker::proxy::ca::{LocalCa, generate, pem_certificates};
use mandate_broker::proxy::rules::Rules;
use mandate_broker::proxy::upstream::UpstreamTrust;
use mandate_broker::proxy::{AuditSink, Broker, BrokerLimits, BrokerParts};
use mandate_core::{AuditEvent, Clock, Decision, SystemClock};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

mod common;
use common::TestCa;

const WORK_SECRET: &str = "ghp_work_REAL_secret_0001";
const PERSONAL_SECRET: &str = "ghp_personal_REAL_secret_0002";
const WORK_PLACEHOLDER: &str = "MANDATE_PLACEHOLDER_GITHUB_WORK";

// ---------------------------------------------------------------- the broker's collaborators

/// Credentials from a map: a real provider over fixed values.
struct MapCredentials(HashMap<String, String>);

#[async_trait]
impl CredentialProvider for MapCredentials {
    async fn credential(&self, connection: &str) -> Result<Zeroizing<String>, CredentialError> {
        self.0
            .get(connection)
            .map(|s| Zeroizing::new(s.clone()))
            .ok_or_else(|| CredentialError::UnknownConnection(connection.to_owned()))
    }
}

/// Keeps every event; `failing` refuses them all, as a broken audit log would.
#[derive(Default)]
struct MemoryAudit {
    events: Mutex<Vec<AuditEvent>>,
    failing: bool,
}

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, event: AuditEvent) -> Result<(), String> {
        if self.failing {
            return Err("audit log down".into());
        }
        self.events.lock().push(event);
        Ok(())
    }
}

impl MemoryAudit {
    fn actions(&self) -> Vec<(String, Decision, Option<String>)> {
        self.events.lock().iter().map(|e| (e.action.clone(), e.decision, e.reason.clone())).collect()
    }

    fn assert_no_secret(&self) {
        let all = serde_json::to_string(&*self.events.lock()).unwrap();
        assert!(!all.contains(WORK_SECRET) && !all.contains(PERSONAL_SECRET), "a secret reached the audit log");
    }
}

// ---------------------------------------------------------------- the test upstream

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    /// The broker's end of the upstream connection the request came on.
    connection: SocketAddr,
    version: Version,
    path: String,
    headers: HeaderMap,
    body_len: usize,
}

/// The upstream's answer on `/large`: more than any single buffer on the way.
const LARGE_BODY_BYTES: usize = 1 << 20;

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn record_request(
    seen: Arc<Mutex<Vec<Seen>>>,
    connection: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map_or(0, |body| body.to_bytes().len());
    let path = parts.uri.path().to_owned();
    let large = path == "/large";
    seen.lock().push(Seen { connection, version: parts.version, path, headers: parts.headers, body_len });
    let body = if large { Bytes::from(vec![b'x'; LARGE_BODY_BYTES]) } else { Bytes::from_static(b"{\"ok\":true}") };
    Ok(Response::new(Full::new(body)))
}

/// A TLS upstream (certificate for localhost and 127.0.0.1 from `ca`) offering `alpn`.
async fn tls_upstream(ca: &TestCa, alpn: &[&[u8]]) -> Upstream {
    tls_upstream_with(ca, alpn, true).await
}

/// [`tls_upstream`]; without `keep_alive` it closes each HTTP/1.1 connection after one response.
async fn tls_upstream_with(ca: &TestCa, alpn: &[&[u8]], keep_alive: bool) -> Upstream {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(alpn)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |req| record_request(Arc::clone(&seen), peer, req));
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(keep_alive);
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    Upstream { addr, seen }
}

/// A plain-HTTP upstream.
async fn plain_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |req| record_request(Arc::clone(&seen), peer, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    Upstream { addr, seen }
}

// ---------------------------------------------------------------- the broker under test

struct Running {
    url: String,
    ca_pem: String,
    audit: Arc<MemoryAudit>,
}

async fn broker_with(rules: &str, upstream_ca: &TestCa, audit: Arc<MemoryAudit>) -> Running {
    let (ca_pem, ca_key) = generate(SystemClock.now_secs()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ca = LocalCa::from_pem(&ca_pem, &ca_key, Arc::clone(&clock)).unwrap();
    let credentials = HashMap::from([
        ("github:work".to_owned(), WORK_SECRET.to_owned()),
        ("github:personal".to_owned(), PERSONAL_SECRET.to_owned()),
    ]);
    let broker = Broker::new(BrokerParts {
        rules: Rules::parse(rules).unwrap(),
        ca,
        credentials: Arc::new(MapCredentials(credentials)),
        audit: Arc::clone(&audit) as Arc<dyn AuditSink>,
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
    Running { url, ca_pem, audit }
}

async fn broker(rules: &str, upstream_ca: &TestCa) -> Running {
    broker_with(rules, upstream_ca, Arc::new(MemoryAudit::default())).await
}

/// The agent: reqwest through the broker, trusting `roots` only.
fn agent(proxy: &str, roots: &str, http1_only: bool) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(roots.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder().proxy(reqwest::Proxy::all(proxy).unwrap()).tls_certs_only(certs);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

fn github_rules(port_note: &str) -> String {
    format!(
        r#"
        # {port_note}
        unmatched = "refuse"
        [[rule]]
        host = "localhost"
        connection = "github:work"
        connections = ["github:personal"]
        deny_methods = ["DELETE"]
        deny_paths = ["/admin"]
        "#
    )
}

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn the_upstream_receives_the_real_credential_over_http2_on_both_legs() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let broker = broker(&github_rules("h2"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, false);

    let response = client
        .get(format!("https://localhost:{}/user?q=1", upstream.addr.port()))
        .header("Authorization", format!("Bearer {WORK_PLACEHOLDER}"))
        .header("X-Api-Key", WORK_PLACEHOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2, "agent leg");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2, "upstream leg");
    assert_eq!(seen[0].path, "/user");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {WORK_SECRET}").as_str());
    assert_eq!(seen[0].headers["x-api-key"], WORK_SECRET);

    let events = broker.audit.events.lock().clone();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!((event.action.as_str(), event.decision), ("broker.inject", Decision::Allow));
    assert_eq!(event.agent.as_deref(), Some("spiffe://example.org/agent/test"));
    assert_eq!(event.owner.as_deref(), Some("alice"));
    assert_eq!(event.resource, Some(format!("https://localhost:{}", upstream.addr.port())));
    assert_eq!(event.detail.as_deref(), Some("connection=github:work method=GET path=/user"));
    broker.audit.assert_no_secret();
}

#[tokio::test]
async fn http1_agents_and_http1_upstreams_work_too() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H1_ONLY).await;
    let broker = broker(&github_rules("h1"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, true);
    let url = format!("https://localhost:{}/user", upstream.addr.port());
    for _ in 0..3 {
        let response = client.get(&url).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_11);
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.version == Version::HTTP_11));
    assert!(seen.iter().all(|s| s.headers["authorization"] == format!("Bearer {WORK_SECRET}").as_str()));
}

#[tokio::test]
async fn an_http1_tunnel_keeps_one_upstream_connection_and_a_later_tunnel_takes_it_over() {
    let upstream_ca = TestCa::new();
    // The host offers h2 as well: an HTTP/1.1 agent's requests still go upstream as HTTP/1.1.
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let broker = broker(&github_rules("tunnel connection"), &upstream_ca).await;
    let port = upstream.addr.port();
    let url = format!("https://localhost:{port}/user");
    let first = agent(&broker.url, &broker.ca_pem, true);
    for _ in 0..3 {
        let response = first.get(&url).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.version, Version::HTTP_11);
        assert_eq!(request.headers["host"], format!("localhost:{port}").as_str());
        assert_eq!(request.headers["authorization"], format!("Bearer {WORK_SECRET}").as_str());
        assert_eq!(request.connection, seen[0].connection, "one upstream connection per tunnel");
    }

    // Closing the agent's connection ends the tunnel, whose upstream connection then waits in
    // the pool: a later tunnel to the same host sends on it instead of opening another. When
    // the broker has not yet seen the close, the new tunnel opens its own connection, so ask
    // again (each time on a new tunnel) until one lands on a connection used before.
    drop(first);
    let mut reused = false;
    for _ in 0..200 {
        let next = agent(&broker.url, &broker.ca_pem, true);
        let response = next.get(&url).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(next);
        let seen = upstream.seen();
        let (last, earlier) = seen.split_last().unwrap();
        if earlier.iter().any(|request| request.connection == last.connection) {
            reused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reused, "no tunnel ever reused a pooled upstream connection");
    broker.audit.assert_no_secret();
}

#[tokio::test]
async fn large_bodies_stream_both_ways_through_an_http1_tunnel() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H1_ONLY).await;
    let broker = broker(&github_rules("bodies"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, true);
    let port = upstream.addr.port();
    let upload = vec![b'u'; 3 * LARGE_BODY_BYTES / 2];
    for round in 0..2 {
        let posted = client
            .post(format!("https://localhost:{port}/upload"))
            .bearer_auth(WORK_PLACEHOLDER)
            .body(upload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), StatusCode::OK, "round {round}");
        let large = client.get(format!("https://localhost:{port}/large")).bearer_auth(WORK_PLACEHOLDER).send().await;
        let body = large.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), LARGE_BODY_BYTES, "round {round}");
    }
    let seen = upstream.seen();
    let uploads: Vec<usize> = seen.iter().filter(|s| s.path == "/upload").map(|s| s.body_len).collect();
    assert_eq!(uploads, [upload.len(), upload.len()]);
    assert!(seen.iter().all(|s| s.connection == seen[0].connection), "bodies left the connection reusable");
}

#[tokio::test]
async fn a_tunnel_opens_a_new_upstream_connection_when_the_host_closes_its_own() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream_with(&upstream_ca, H1_ONLY, false).await;
    let broker = broker(&github_rules("host closes"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, true);
    let url = format!("https://localhost:{}/user", upstream.addr.port());
    for _ in 0..3 {
        let response = client.get(&url).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // The host's `Connection: close` is about its hop, not the agent's.
        assert!(response.headers().get("connection").is_none());
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].connection != seen[1].connection && seen[1].connection != seen[2].connection);
    let allowed = broker.audit.actions().iter().filter(|(action, _, _)| action == "broker.inject").count();
    assert_eq!(allowed, 3);
}

#[tokio::test]
async fn an_unreachable_host_answers_502_on_an_http1_tunnel() {
    let upstream_ca = TestCa::new();
    // A port nothing listens on any more.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let broker = broker(&github_rules("unreachable"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, true);
    let response =
        client.get(format!("https://localhost:{port}/user")).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
}

#[tokio::test]
async fn the_connection_header_chooses_the_account_and_is_not_forwarded() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let broker = broker(&github_rules("accounts"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, false);
    let url = format!("https://localhost:{}/user", upstream.addr.port());

    let work = client.get(&url).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
    let personal = client
        .get(&url)
        .bearer_auth(WORK_PLACEHOLDER)
        .header("Mandate-Connection", "github:personal")
        .send()
        .await
        .unwrap();
    assert_eq!((work.status(), personal.status()), (StatusCode::OK, StatusCode::OK));
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {WORK_SECRET}").as_str());
    assert_eq!(seen[1].headers["authorization"], format!("Bearer {PERSONAL_SECRET}").as_str());
    assert!(seen.iter().all(|s| !s.headers.contains_key("mandate-connection")));
    let details: Vec<_> = broker.audit.events.lock().iter().map(|e| e.detail.clone().unwrap_or_default()).collect();
    assert!(details[0].starts_with("connection=github:work "));
    assert!(details[1].starts_with("connection=github:personal "));

    // A connection the rule does not allow is refused, and nothing is forwarded.
    let other = client
        .get(&url)
        .bearer_auth(WORK_PLACEHOLDER)
        .header("Mandate-Connection", "github:someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = other.json().await.unwrap();
    assert_eq!(body["error"], "connection_not_allowed");
    assert_eq!(upstream.seen().len(), 2);
    broker.audit.assert_no_secret();
}

#[tokio::test]
async fn unknown_placeholders_and_missing_credentials_fail_closed() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let rules = r#"
        [[rule]]
        host = "localhost"
        connection = "github:work"
        [[rule]]
        host = "localhost"
        path_prefix = "/vaultless"
        connection = "nowhere:none"
    "#;
    let broker = broker(rules, &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, false);
    let base = format!("https://localhost:{}", upstream.addr.port());

    let unknown =
        client.get(format!("{base}/user")).bearer_auth("MANDATE_PLACEHOLDER_GITHUB_PERSONAL").send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);
    assert_eq!(unknown.json::<serde_json::Value>().await.unwrap()["error"], "unknown_placeholder");

    let missing =
        client.get(format!("{base}/vaultless/x")).bearer_auth("MANDATE_PLACEHOLDER_NOWHERE_NONE").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(missing.json::<serde_json::Value>().await.unwrap()["error"], "credential_unavailable");

    assert!(upstream.seen().is_empty(), "a refused request reached the upstream");
    let actions = broker.audit.actions();
    assert_eq!(
        actions,
        [
            ("broker.deny".into(), Decision::Deny, Some("unknown_placeholder".into())),
            ("broker.deny".into(), Decision::Deny, Some("credential_unavailable".into())),
        ]
    );
}

#[tokio::test]
async fn denied_methods_paths_and_ambiguous_paths_get_403_or_400() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let broker = broker(&github_rules("deny"), &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, false);
    let base = format!("https://localhost:{}", upstream.addr.port());

    let delete = client.delete(format!("{base}/repos/x")).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    let admin = client.get(format!("{base}/admin/users")).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
    assert_eq!(admin.status(), StatusCode::FORBIDDEN);
    // An encoded slash would let `/x%2fadmin` slip past the prefix check at some upstreams.
    let encoded = client.get(format!("{base}/x%2Fadmin")).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap();
    assert_eq!(encoded.status(), StatusCode::BAD_REQUEST);
    assert!(upstream.seen().is_empty());

    let reasons: Vec<_> = broker.audit.actions().into_iter().map(|(_, _, reason)| reason.unwrap_or_default()).collect();
    assert_eq!(reasons, ["denied_by_rule", "denied_by_rule", "ambiguous_path"]);
    let details: Vec<_> = broker.audit.events.lock().iter().map(|e| e.detail.clone().unwrap_or_default()).collect();
    assert_eq!(details[0], "connection=github:work method=DELETE path=/repos/x");
}

#[tokio::test]
async fn the_rate_limit_answers_429_per_connection() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let rules = r#"
        [[rule]]
        host = "localhost"
        connection = "github:work"
        connections = ["github:personal"]
        rate_limit = { requests = 2, per_secs = 3600 }
    "#;
    let broker = broker(rules, &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, false);
    let url = format!("https://localhost:{}/user", upstream.addr.port());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.get(&url).bearer_auth(WORK_PLACEHOLDER).send().await.unwrap().status());
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    // The other account has its own budget.
    let personal = client
        .get(&url)
        .bearer_auth(WORK_PLACEHOLDER)
        .header("Mandate-Connection", "github:personal")
        .send()
        .await
        .unwrap();
    assert_eq!(personal.status(), StatusCode::OK);
    assert_eq!(upstream.seen().len(), 3);
    assert!(broker.audit.actions().contains(&("broker.deny".into(), Decision::Deny, Some("rate_limited".into()))));
}

#[tokio::test]
async fn hosts_without_rules_are_tunnelled_untouched_when_unmatched_is_pass() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let rules = "unmatched = \"pass\"\n[[rule]]\nhost = \"api.github.com\"\nconnection = \"github:work\"";
    let broker = broker(rules, &upstream_ca).await;
    // This agent trusts only the upstream's CA: the request succeeds only if the broker did not
    // intercept the tunnel (an intercepted one would present the broker's leaf).
    let client = agent(&broker.url, &upstream_ca.cert_pem, false);
    let response = client
        .get(format!("https://localhost:{}/raw", upstream.addr.port()))
        .bearer_auth("agent-own-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["authorization"], "Bearer agent-own-token");
    assert_eq!(broker.audit.actions(), [("broker.tunnel".into(), Decision::Allow, None)]);

    // And an agent trusting only the broker's CA fails: nothing was intercepted.
    let intercepting_only = agent(&broker.url, &broker.ca_pem, false);
    assert!(intercepting_only.get(format!("https://localhost:{}/raw", upstream.addr.port())).send().await.is_err());
}

#[tokio::test]
async fn hosts_without_rules_are_refused_when_unmatched_is_refuse() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let rules = "unmatched = \"refuse\"\n[[rule]]\nhost = \"api.github.com\"\nconnection = \"github:work\"";
    let broker = broker(rules, &upstream_ca).await;
    let client = agent(&broker.url, &upstream_ca.cert_pem, false);
    let result = client.get(format!("https://localhost:{}/raw", upstream.addr.port())).send().await;
    assert!(result.is_err(), "CONNECT to a host without a rule must fail");
    assert!(upstream.seen().is_empty());
    assert_eq!(broker.audit.actions(), [("broker.deny".into(), Decision::Deny, Some("no_rule".into()))]);
}

#[tokio::test]
async fn a_rule_can_inject_a_header_the_agent_never_sent() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let rules = r#"
        [[rule]]
        host = "localhost"
        connection = "github:work"
        inject = { header = "Authorization", format = "token {credential}" }
    "#;
    let broker = broker(rules, &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, false);
    let response = client.get(format!("https://localhost:{}/user", upstream.addr.port())).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.seen()[0].headers["authorization"], format!("token {WORK_SECRET}").as_str());
    assert_eq!(broker.audit.actions()[0].0, "broker.inject");
}

#[tokio::test]
async fn nothing_is_forwarded_when_the_audit_log_is_down() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let audit = Arc::new(MemoryAudit { failing: true, ..MemoryAudit::default() });
    let broker = broker_with(&github_rules("audit"), &upstream_ca, audit).await;
    let client = agent(&broker.url, &broker.ca_pem, false);
    let response = client
        .get(format!("https://localhost:{}/user", upstream.addr.port()))
        .bearer_auth(WORK_PLACEHOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(upstream.seen().is_empty());
}

/// A TCP relay between the agent and the broker that keeps every byte the agent sent.
async fn recording_relay(broker: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let target = broker.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&captured);
    tokio::spawn(async move {
        while let Ok((agent, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(&target).await else { return };
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let (mut agent_read, mut agent_write) = agent.into_split();
                let (mut broker_read, mut broker_write) = upstream.into_split();
                let to_broker = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = agent_read.read(&mut buf).await {
                        if n == 0 || broker_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sink.lock().extend_from_slice(&buf[..n]);
                    }
                    let _ = broker_write.shutdown().await;
                };
                let to_agent = tokio::io::copy(&mut broker_read, &mut agent_write);
                let _ = tokio::join!(to_broker, to_agent);
            });
        }
    });
    (url, captured)
}

#[tokio::test]
async fn the_agents_own_bytes_hold_only_the_placeholder() {
    let upstream_ca = TestCa::new();
    let upstream = plain_upstream().await;
    let rules = r#"
        [[rule]]
        host = "127.0.0.1"
        connection = "github:work"
        allow_http = true
    "#;
    let broker = broker(rules, &upstream_ca).await;
    let (relay, captured) = recording_relay(&broker.url).await;
    let client = agent(&relay, &broker.ca_pem, true);
    let response = client
        .get(format!("http://127.0.0.1:{}/user", upstream.addr.port()))
        .bearer_auth(WORK_PLACEHOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.seen()[0].headers["authorization"], format!("Bearer {WORK_SECRET}").as_str());
    let sent = String::from_utf8_lossy(&captured.lock()).into_owned();
    assert!(sent.contains(WORK_PLACEHOLDER), "the capture saw the request: {sent}");
    assert!(!sent.contains(WORK_SECRET));
}

#[tokio::test]
async fn credentials_are_not_sent_over_plain_http_unless_the_rule_allows_it() {
    let upstream_ca = TestCa::new();
    let upstream = plain_upstream().await;
    let rules = "[[rule]]\nhost = \"127.0.0.1\"\nconnection = \"github:work\"";
    let broker = broker(rules, &upstream_ca).await;
    let client = agent(&broker.url, &broker.ca_pem, true);
    let response = client
        .get(format!("http://127.0.0.1:{}/user", upstream.addr.port()))
        .bearer_auth(WORK_PLACEHOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"], "insecure_upstream");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn oversized_heads_and_ambiguous_connection_headers_are_refused() {
    let upstream_ca = TestCa::new();
    let upstream = tls_upstream(&upstream_ca, H2_AND_H1).await;
    let broker = broker(&github_rules("bounds"), &upstream_ca).await;
    let url = format!("https://localhost:{}/user", upstream.addr.port());
    let huge = "x".repeat(BrokerLimits::default().max_header_bytes + 1);
    for http1_only in [true, false] {
        let client = agent(&broker.url, &broker.ca_pem, http1_only);
        let result = client.get(&url).bearer_auth(WORK_PLACEHOLDER).header("X-Huge", &huge).send().await;
        // HTTP/1.1 answers 431; HTTP/2 resets the stream or the connection.
        assert!(result.map_or(true, |r| r.status().is_client_error()), "http1_only={http1_only}");
    }
    let client = agent(&broker.url, &broker.ca_pem, false);
    let twice = client
        .get(&url)
        .bearer_auth(WORK_PLACEHOLDER)
        .header("Mandate-Connection", "github:work")
        .header("Mandate-Connection", "github:personal")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    assert!(upstream.seen().is_empty());
}
