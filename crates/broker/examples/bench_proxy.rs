//! Benchmark for bench/broker/run.sh: keep-alive HTTPS requests to one local TLS upstream,
//! directly and through the broker (CONNECT + interception + placeholder substitution), in the
//! same process and run. Prints p50/p99 per mode, the added latency and the throughput ratio,
//! and writes JSON. `--audit memory|sqlite`: the broker's events go to memory, or to a real
//! durable Mandate audit log on SQLite (group commit, fsync), as in `mandate broker run`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mandate_audit::{AuditLog, CheckpointPolicy, CheckpointSigner};
use mandate_broker::credentials::{CredentialError, CredentialProvider};
use mandate_broker::proxy::ca::{LocalCa, generate, pem_certificates};
use mandate_broker::proxy::rules::Rules;
use mandate_broker::proxy::upstream::UpstreamTrust;
use mandate_broker::proxy::{AuditLogSink, AuditSink, Broker, BrokerLimits, BrokerParts};
use mandate_core::{AuditEvent, Clock, SystemClock};
use mandate_crypto::{Alg, SigningKey};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

const SECRET: &str = "bench_REAL_secret";
const PLACEHOLDER: &str = "MANDATE_PLACEHOLDER_BENCH";

struct OneCredential;

#[async_trait]
impl CredentialProvider for OneCredential {
    async fn credential(&self, _connection: &str) -> Result<Zeroizing<String>, CredentialError> {
        Ok(Zeroizing::new(SECRET.to_owned()))
    }
}

struct Discard;

#[async_trait]
impl AuditSink for Discard {
    async fn record(&self, event: AuditEvent) -> Result<(), String> {
        drop(event);
        Ok(())
    }
}

struct Options {
    concurrency: usize,
    seconds: u64,
    audit: String,
    /// What the upstream offers by ALPN: `h2` (h2 + http/1.1) or `h1` (http/1.1 only).
    upstream_alpn: String,
    /// The upstream's CA certificate and key (PEM files), so a peer proxy can be told to trust
    /// it; generated per run without them.
    upstream_ca: Option<(String, String)>,
    /// A peer TLS-intercepting proxy (`http://host:port`) and the CA (PEM file) it signs its
    /// leaves with: a third arm, through the peer with the real credential.
    peer: Option<(String, String)>,
    /// The peer's process id: its CPU (with its children's, e.g. Squid's workers) is added to
    /// the peer arm's CPU per request.
    peer_pid: Option<u32>,
    out: Option<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut map = HashMap::new();
    for pair in args.chunks(2) {
        if let [key, value] = pair {
            map.insert(key.trim_start_matches("--").to_owned(), value.clone());
        }
    }
    Options {
        concurrency: map.get("concurrency").map_or(16, |v| v.parse().unwrap()),
        seconds: map.get("seconds").map_or(10, |v| v.parse().unwrap()),
        audit: map.get("audit").cloned().unwrap_or_else(|| "memory".into()),
        upstream_alpn: map.get("upstream-alpn").cloned().unwrap_or_else(|| "h2".into()),
        upstream_ca: map.get("upstream-ca-cert").cloned().zip(map.get("upstream-ca-key").cloned()),
        peer: map.get("peer").cloned().zip(map.get("peer-ca").cloned()),
        peer_pid: map.get("peer-pid").map(|v| v.parse().unwrap()),
        out: map.get("out").cloned(),
    }
}

/// The upstream's CA: loaded from PEM files when given, else a fresh one.
fn upstream_ca(files: Option<&(String, String)>) -> (String, Issuer<'static, KeyPair>) {
    if let Some((cert, key)) = files {
        let pem = std::fs::read_to_string(cert).expect("--upstream-ca-cert");
        let key = KeyPair::from_pem(&std::fs::read_to_string(key).expect("--upstream-ca-key")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&pem, key).unwrap();
        return (pem, issuer);
    }
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = ca_params.self_signed(&ca_key).unwrap().pem();
    (pem, Issuer::new(ca_params, ca_key))
}

/// A TLS upstream (h1 + h2) answering a small fixed JSON body; checks the credential arrived.
async fn upstream(issuer: &Issuer<'static, KeyPair>, h2: bool) -> u16 {
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, issuer).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
    config.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(|req: Request<Incoming>| async move {
                    let auth = req.headers().get("authorization").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
                    let status =
                        if auth == format!("Bearer {SECRET}").as_bytes() || auth.is_empty() { 200 } else { 400 };
                    let mut response = Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true,\"pad\":\"0123456789abcdef0123456789abcdef\"}",
                    )));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

async fn start_broker(upstream_ca_pem: &str, audit: Arc<dyn AuditSink>) -> (String, String) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (ca_pem, ca_key) = generate(clock.now_secs()).unwrap();
    let broker = Broker::new(BrokerParts {
        rules: Rules::parse("[[rule]]\nhost = \"localhost\"\nconnection = \"bench\"").unwrap(),
        ca: LocalCa::from_pem(&ca_pem, &ca_key, Arc::clone(&clock)).unwrap(),
        credentials: Arc::new(OneCredential),
        audit,
        clock,
        agent: Some("spiffe://bench.example/agent/bench".into()),
        owner: Some("bench".into()),
        upstream: UpstreamTrust { system_roots: false, extra_roots: pem_certificates(upstream_ca_pem).unwrap() },
        limits: BrokerLimits::default(),
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(broker.serve(listener, std::future::pending()));
    (url, ca_pem)
}

fn client(roots_pem: &str, proxy: Option<&str>) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(roots_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder().tls_certs_only(certs).http1_only().tcp_nodelay(true).no_proxy();
    if let Some(proxy) = proxy {
        builder = builder.proxy(reqwest::Proxy::https(proxy).unwrap());
    }
    builder.build().unwrap()
}

struct Run {
    latencies_us: Vec<u64>,
    elapsed: Duration,
    errors: u64,
    /// CPU time the whole process (load client, upstream and broker) used during the run.
    cpu: Option<Duration>,
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`, in USER_HZ = 100
/// ticks), including threads that have exited; `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    cpu_of("self")
}

fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time of `pid` and all its live descendants.
fn tree_cpu(pid: u32) -> Duration {
    let mut total = cpu_of(&pid.to_string()).unwrap_or_default();
    let children = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().flat_map(|task| {
        std::fs::read_to_string(task.path().join("children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    for child in children.collect::<Vec<_>>() {
        if let Ok(child) = child.parse() {
            total += tree_cpu(child);
        }
    }
    total
}

/// `concurrency` loops, each with its own client (its own keep-alive connection).
async fn load(clients: Vec<reqwest::Client>, url: &str, token: &'static str, seconds: u64) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let mut tasks = Vec::new();
    for client in clients {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match client.get(&url).bearer_auth(token).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut run = Run { latencies_us: Vec::new(), elapsed: Duration::ZERO, errors: 0, cpu: None };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        run.latencies_us.extend(latencies);
        run.errors += errors;
    }
    run.elapsed = started.elapsed();
    run.cpu = process_cpu().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    run.latencies_us.sort_unstable();
    run
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

#[allow(clippy::cast_precision_loss)]
fn rps(run: &Run) -> f64 {
    run.latencies_us.len() as f64 / run.elapsed.as_secs_f64()
}

/// Process CPU per completed request (load client + upstream, and the broker in the proxied run):
/// the cost of a request independently of how much CPU other processes left this one.
#[allow(clippy::cast_precision_loss)]
fn cpu_us_per_request(run: &Run) -> Option<f64> {
    let requests = run.latencies_us.len();
    run.cpu.filter(|_| requests > 0).map(|cpu| cpu.as_secs_f64() * 1e6 / requests as f64)
}

async fn warm(clients: &[reqwest::Client], url: &str, token: &str) {
    for client in clients {
        let r = client.get(url).bearer_auth(token).send().await.expect("warm-up request");
        assert!(r.status().is_success(), "warm-up: {}", r.status());
    }
}

#[tokio::main]
async fn main() {
    let opts = options();
    let (upstream_ca_pem, issuer) = upstream_ca(opts.upstream_ca.as_ref());
    let port = upstream(&issuer, opts.upstream_alpn != "h1").await;
    let url = format!("https://localhost:{port}/bench");

    let scratch = tempfile::tempdir().unwrap();
    let audit: Arc<dyn AuditSink> = match opts.audit.as_str() {
        "memory" => Arc::new(Discard),
        "sqlite" => {
            let store: Arc<dyn mandate_store::Store> =
                Arc::new(mandate_store::SqliteStore::open(&scratch.path().join("audit.db")).unwrap());
            let signer =
                CheckpointSigner::new(Arc::new(SigningKey::generate(Alg::EdDSA).unwrap()), "bench.example/audit")
                    .unwrap();
            let log = AuditLog::start(store, signer, Arc::new(SystemClock), CheckpointPolicy::default());
            Arc::new(AuditLogSink(log))
        }
        other => panic!("--audit memory|sqlite, not {other}"),
    };
    let (proxy, broker_ca) = start_broker(&upstream_ca_pem, audit).await;

    let mut report = serde_json::Map::new();
    println!(
        "broker bench: {} loops x {} s, keep-alive HTTPS (agent HTTP/1.1), upstream ALPN {}, audit={}",
        opts.concurrency, opts.seconds, opts.upstream_alpn, opts.audit
    );
    println!("{:<16} {:>10} {:>9} {:>9} {:>8} {:>12}", "run", "req/s", "p50 us", "p99 us", "errors", "cpu us/req");
    for (label, concurrency) in [("c1", 1), ("cN", opts.concurrency)] {
        let direct_clients: Vec<_> = (0..concurrency).map(|_| client(&upstream_ca_pem, None)).collect();
        let proxy_clients: Vec<_> = (0..concurrency).map(|_| client(&broker_ca, Some(&proxy))).collect();
        // Direct, the agent would hold the real credential; through the broker, the placeholder.
        warm(&direct_clients, &url, SECRET).await;
        warm(&proxy_clients, &url, PLACEHOLDER).await;
        let direct = load(direct_clients, &url, SECRET, opts.seconds).await;
        let proxied = load(proxy_clients, &url, PLACEHOLDER, opts.seconds).await;
        let peer = match &opts.peer {
            Some((peer_url, peer_ca)) => {
                let peer_ca = std::fs::read_to_string(peer_ca).expect("--peer-ca");
                let peer_clients: Vec<_> = (0..concurrency).map(|_| client(&peer_ca, Some(peer_url))).collect();
                warm(&peer_clients, &url, SECRET).await;
                let before = opts.peer_pid.map(tree_cpu);
                let mut run = load(peer_clients, &url, SECRET, opts.seconds).await;
                if let (Some(pid), Some(before), Some(cpu)) = (opts.peer_pid, before, run.cpu) {
                    run.cpu = Some(cpu + tree_cpu(pid).saturating_sub(before));
                }
                Some(run)
            }
            None => None,
        };
        for (name, run) in [("direct", Some(&direct)), ("broker", Some(&proxied)), ("peer", peer.as_ref())] {
            let Some(run) = run else { continue };
            println!(
                "{:<16} {:>10.0} {:>9} {:>9} {:>8} {:>12}",
                format!("{label}-{name}"),
                rps(run),
                percentile(&run.latencies_us, 0.5),
                percentile(&run.latencies_us, 0.99),
                run.errors,
                cpu_us_per_request(run).map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.1}"))
            );
        }
        let added_p50 = percentile(&proxied.latencies_us, 0.5).saturating_sub(percentile(&direct.latencies_us, 0.5));
        let added_p99 = percentile(&proxied.latencies_us, 0.99).saturating_sub(percentile(&direct.latencies_us, 0.99));
        let ratio = rps(&proxied) / rps(&direct);
        // What the throughput ratio would be if CPU were the only limit: direct CPU per request
        // over proxied CPU per request.
        let cpu_ratio = cpu_us_per_request(&direct).zip(cpu_us_per_request(&proxied)).map(|(d, p)| d / p);
        let cpu_text = cpu_ratio.map_or_else(String::new, |r| format!(", CPU-per-request ratio {r:.2}"));
        println!("{label}: added p50 {added_p50} us, added p99 {added_p99} us, throughput ratio {ratio:.2}{cpu_text}");
        let peer_report = peer.as_ref().map(|run| {
            let peer_ratio = rps(run) / rps(&direct);
            let peer_cpu_ratio = cpu_us_per_request(&direct).zip(cpu_us_per_request(run)).map(|(d, p)| d / p);
            let added_p50 = percentile(&run.latencies_us, 0.5).saturating_sub(percentile(&direct.latencies_us, 0.5));
            println!(
                "{label} peer: added p50 {added_p50} us, throughput ratio {peer_ratio:.2}, CPU-per-request ratio {}",
                peer_cpu_ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
            );
            serde_json::json!({"rps": rps(run), "p50_us": percentile(&run.latencies_us, 0.5), "p99_us": percentile(&run.latencies_us, 0.99), "errors": run.errors, "cpu_us_per_request": cpu_us_per_request(run), "added_p50_us": added_p50, "throughput_ratio": peer_ratio, "cpu_per_request_ratio": peer_cpu_ratio})
        });
        report.insert(
            label.to_owned(),
            serde_json::json!({
                "concurrency": concurrency,
                "direct": {"rps": rps(&direct), "p50_us": percentile(&direct.latencies_us, 0.5), "p99_us": percentile(&direct.latencies_us, 0.99), "errors": direct.errors, "cpu_us_per_request": cpu_us_per_request(&direct)},
                "broker": {"rps": rps(&proxied), "p50_us": percentile(&proxied.latencies_us, 0.5), "p99_us": percentile(&proxied.latencies_us, 0.99), "errors": proxied.errors, "cpu_us_per_request": cpu_us_per_request(&proxied)},
                "added_p50_us": added_p50,
                "added_p99_us": added_p99,
                "throughput_ratio": ratio,
                "cpu_per_request_ratio": cpu_ratio,
                "peer": peer_report,
            }),
        );
    }
    report.insert("audit".into(), opts.audit.clone().into());
    report.insert("upstream_alpn".into(), opts.upstream_alpn.clone().into());
    if let Some(out) = opts.out {
        std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!("written {out}");
    }
}
