//! SVID issuance rate: X.509-SVIDs (fresh P-256 key + leaf signature) and ES256 JWT-SVIDs,
//! as pure minting (one and all cores) and through the audited path (each issuance appended to
//! the SQLite audit log before it is returned). The crypto floor (one P-256 key generation plus
//! one ECDSA signature, no certificate) is measured in the same run for a ratio.
//!
//! Run with `bash bench/svid-issuance/run.sh` (release mode). Env: `BENCH_SECS` per measurement
//! (default 3), `BENCH_CONCURRENCY` in-flight audited issuances (default 64), `BENCH_OUT` JSON path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate_audit::CheckpointPolicy;
use mandate_authz::keyring::PURPOSE_JWT_SVID;
use mandate_authz::registry::{self, NewAgent};
use mandate_authz::{Authz, AuthzConfig};
use mandate_core::{Agent, Clock, SystemClock, TrustDomain};
use mandate_crypto::{Alg, Kek};
use mandate_store::{SqliteStore, Store};
use mandate_workload::ca::{SpiffeCa, SpiffeConfig};
use mandate_workload::svid::{self, mint_jwt, mint_x509};
use serde_json::json;

const AUDIENCE: &str = "https://api.example.com";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Calls `op` on `threads` threads for `secs`; returns operations per second.
fn rate(threads: usize, secs: u64, op: impl Fn() + Sync) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..32 {
                            op();
                        }
                        n += 32;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

async fn authz(dir: &std::path::Path) -> (Authz, Agent) {
    mandate_crypto::init().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("bench.db")).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let policy = CheckpointPolicy { every_events: 1000, every: Duration::from_secs(10) };
    let config = AuthzConfig {
        key_publish_lead_secs: 0,
        ..AuthzConfig::new("https://mandate.bench.example", TrustDomain::parse("bench.example").unwrap())
    };
    let kek = Kek::generate().unwrap().0;
    let authz = Authz::start(store, kek, clock, config, policy, "bench.example/audit").await.unwrap();
    registry::create_owner(&authz, "alice", None, "bench").await.unwrap();
    let new =
        NewAgent { name: "bot".into(), owner: "alice".into(), scopes: vec![], selectors: vec![], ..Default::default() };
    let agent = registry::create_agent(&authz, new, "bench").await.unwrap();
    (authz, agent)
}

/// Audited issuances per second with `concurrency` requests in flight.
async fn audited_rate(ca: &Arc<SpiffeCa>, agent: &Agent, secs: u64, concurrency: usize, jwt: bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ca, agent) = (Arc::clone(ca), agent.clone());
        tasks.push(tokio::spawn(async move {
            let audience = vec![AUDIENCE.to_owned()];
            let mut n = 0u64;
            while Instant::now() < deadline {
                if jwt {
                    svid::issue_jwt(&ca, &agent, &audience, "bench").await.unwrap();
                } else {
                    svid::issue_x509(&ca, &agent, "bench").await.unwrap();
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let secs = env_u64("BENCH_SECS", 3);
    let concurrency = env_u64("BENCH_CONCURRENCY", 64) as usize;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (authz, agent) = runtime.block_on(authz(dir.path()));
    let ca = Arc::new(SpiffeCa::new(authz.clone(), SpiffeConfig::default(), None));
    let authority = runtime.block_on(ca.authority()).unwrap();
    let jwt_key = authz.keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
    let issuer = ca.jwt_issuer();
    let audience = vec![AUDIENCE.to_owned()];
    let id = agent.spiffe_id.clone();
    let now_ms = || SystemClock.now_ms();

    // Sanity: what is measured is a real, parseable SVID.
    let sample = mint_x509(&authority, &id, now_ms(), 3600).unwrap();
    assert_eq!(sample.cert_chain_der.len(), 1);
    assert!(mint_jwt(&jwt_key, &issuer, &id, &audience, now_ms() / 1000, 300).unwrap().token.len() > 100);

    // The floor: what any X.509-SVID costs at least, a fresh key pair and one CA signature.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let crypto_floor = || {
        let fresh = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::SigningKey::sign(&ca_key, fresh.public_key_raw()).unwrap();
    };
    let x509 = || drop(mint_x509(&authority, &id, now_ms(), 3600).unwrap());
    let jwt = || drop(mint_jwt(&jwt_key, &issuer, &id, &audience, now_ms() / 1000, 300).unwrap());

    let floor_1 = rate(1, secs, crypto_floor);
    let x509_1 = rate(1, secs, x509);
    let x509_n = rate(cores, secs, x509);
    let jwt_1 = rate(1, secs, jwt);
    let jwt_n = rate(cores, secs, jwt);
    let x509_audited = runtime.block_on(audited_rate(&ca, &agent, secs, concurrency, false));
    let jwt_audited = runtime.block_on(audited_rate(&ca, &agent, secs, concurrency, true));

    println!("SVID issuance ({cores} cores, {secs} s per measurement, release build)");
    println!("  {:<52} {:>12}", "measurement", "per second");
    let rows = [
        ("crypto floor: P-256 keygen + 1 ECDSA sign, 1 thread".to_owned(), floor_1),
        ("X.509-SVID mint, 1 thread".to_owned(), x509_1),
        (format!("X.509-SVID mint, {cores} threads"), x509_n),
        (format!("X.509-SVID issue + audit append, {concurrency} in flight"), x509_audited),
        ("JWT-SVID mint, 1 thread".to_owned(), jwt_1),
        (format!("JWT-SVID mint, {cores} threads"), jwt_n),
        (format!("JWT-SVID issue + audit append, {concurrency} in flight"), jwt_audited),
    ];
    for (name, value) in rows {
        println!("  {name:<52} {value:>12.0}");
    }
    println!("  X.509 mint / crypto floor (1 thread): {:.2}", x509_1 / floor_1);
    let target = 3000.0;
    let verdict = if x509_n >= target { "met" } else { "MISSED" };
    println!("  target >= {target:.0} X.509-SVIDs/s (all cores, mint): {verdict}");

    let result = json!({
        "cores": cores,
        "secs_per_measurement": secs,
        "audited_concurrency": concurrency,
        "crypto_floor_per_sec_1_thread": floor_1.round(),
        "x509_mint_per_sec_1_thread": x509_1.round(),
        "x509_mint_per_sec_all_cores": x509_n.round(),
        "x509_issue_audited_per_sec": x509_audited.round(),
        "jwt_mint_per_sec_1_thread": jwt_1.round(),
        "jwt_mint_per_sec_all_cores": jwt_n.round(),
        "jwt_issue_audited_per_sec": jwt_audited.round(),
        "x509_target_per_sec": target,
        "x509_target_met": x509_n >= target,
    });
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
        println!("  wrote {path}");
    }
    runtime.block_on(async { authz.log.checkpoint().await.unwrap() });
}
