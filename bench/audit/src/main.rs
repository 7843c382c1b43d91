//! `bench-audit`: the audit log's performance targets, measured on real code paths.
//!
//! - `appends N TASKS`: N durable `AuditLog::record` calls from TASKS concurrent tasks on SQLite
//!   (WAL, `synchronous=FULL`, group commit, checkpoints and tiles as in production).
//! - `verify N`: writes N events with the real writer, exports them, and times `audit-verify`.
//! - `proofs N SAMPLES`: synthesizes N leaf hashes directly in a SQLite store, builds the tiles
//!   with the real catch-up code, and times inclusion and consistency proof generation.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mandate_audit::proof::{consistency_proof, inclusion_proof, root_at};
use mandate_audit::tiles::update_tiles;
use mandate_audit::{AuditLog, CheckpointPolicy, CheckpointSigner, export};
use mandate_audit_verify::{VerifierKey, verify_consistency, verify_export, verify_inclusion};
use mandate_core::{AuditEvent, SystemClock};
use mandate_crypto::{Alg, SigningKey};
use mandate_store::{SqliteStore, Store};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| -> Result<u64> {
        args.get(i).map_or(Ok(default), |s| s.replace('_', "").parse().context("arguments are integers"))
    };
    let dir = tempfile::Builder::new().prefix("bench-audit").tempdir_in(scratch_dir())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("appends") => runtime.block_on(appends(dir.path(), num(1, 200_000)?, num(2, 512)?)),
        Some("verify") => runtime.block_on(verify(dir.path(), num(1, 1_000_000)?)),
        Some("proofs") => runtime.block_on(proofs(dir.path(), num(1, 10_000_000)?, num(2, 1000)?)),
        _ => bail!("usage: bench-audit appends [N] [TASKS] | verify [N] | proofs [N] [SAMPLES]"),
    }
}

/// `BENCH_SCRATCH` or the system temp dir: where the databases go.
fn scratch_dir() -> std::path::PathBuf {
    std::env::var_os("BENCH_SCRATCH").map_or_else(std::env::temp_dir, Into::into)
}

fn start_log(dir: &Path) -> Result<(AuditLog, Arc<dyn Store>)> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("audit.db"))?);
    let signer = CheckpointSigner::new(Arc::new(SigningKey::generate(Alg::EdDSA)?), "bench.example/audit")?;
    let log = AuditLog::start(Arc::clone(&store), signer, Arc::new(SystemClock), CheckpointPolicy::default());
    Ok((log, store))
}

/// Appends `n` events from `tasks` concurrent tasks; returns the elapsed time.
async fn append_events(log: &AuditLog, n: u64, tasks: u64) -> Result<Duration> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        let mine = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..mine {
                let event = AuditEvent::allow("token.issue", format!("bench-{t}-{i}"));
                log.record(event).await?;
            }
            Ok::<_, mandate_audit::AuditError>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(started.elapsed())
}

async fn appends(dir: &Path, n: u64, tasks: u64) -> Result<()> {
    let (log, store) = start_log(dir)?;
    let elapsed = append_events(&log, n, tasks).await?;
    let appended = store.audit_len().await?;
    if appended != n {
        bail!("expected {n} entries, found {appended}");
    }
    let rate = n as f64 / elapsed.as_secs_f64();
    println!("appends: {n} durable events from {tasks} tasks in {:.2} s = {rate:.0} events/s", elapsed.as_secs_f64());
    println!("RESULT appends_per_sec={rate:.0}");
    Ok(())
}

async fn verify(dir: &Path, n: u64) -> Result<()> {
    let (log, _store) = start_log(dir)?;
    let generated = append_events(&log, n, 512).await?;
    println!("verify: generated {n} events with the real writer in {:.1} s", generated.as_secs_f64());
    let path = dir.join("export.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    export(&log, &mut file).await?;
    drop(file);
    let bytes = std::fs::metadata(&path)?.len();
    let key = VerifierKey::from_str(&log.signer().verifier_key()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
    let report = verify_export(reader, &key)?;
    let elapsed = started.elapsed().as_secs_f64();
    if report.entries != n {
        bail!("verified {} entries, expected {n}", report.entries);
    }
    println!(
        "verify: {} entries, {} checkpoints, {:.0} MB export verified in {elapsed:.2} s ({:.0} entries/s)",
        report.entries,
        report.checkpoints,
        bytes as f64 / 1e6,
        report.entries as f64 / elapsed
    );
    println!("RESULT verify_secs={elapsed:.2} verify_entries={n}");
    Ok(())
}

/// Leaf hashes are synthesized straight into `audit_log` (one transaction, no fsync): only the
/// proof path is under test here, and writing 10M events through the writer would take minutes.
fn synthesize_leaves(db: &Path, n: u64) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO audit_log (seq, leaf_hash, event) VALUES (?1, ?2, '{}')")?;
        for seq in 0..n {
            let leaf = mandate_audit::merkle::leaf_hash(&seq.to_be_bytes());
            insert.execute(rusqlite::params![i64::try_from(seq)?, leaf.as_slice()])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A small deterministic generator, so runs pick the same positions.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    *state >> 11
}

fn summary(name: &str, mut micros: Vec<f64>) {
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        "{name}: mean {mean:.0} µs, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs over {} proofs",
        at(0.5),
        at(0.99),
        at(1.0),
        micros.len()
    );
    println!("RESULT {name}_p50_us={:.0} {name}_p99_us={:.0}", at(0.5), at(0.99));
}

async fn proofs(dir: &Path, n: u64, samples: u64) -> Result<()> {
    let db = dir.join("proofs.db");
    let store = SqliteStore::open(&db)?;
    let started = Instant::now();
    synthesize_leaves(&db, n)?;
    println!("proofs: synthesized {n} leaf hashes in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    update_tiles(&store, n).await?;
    println!("proofs: built tiles (levels 8, 16, …) for {n} leaves in {:.1} s", started.elapsed().as_secs_f64());

    let root = root_at(&store, n).await?;
    let mut rng = 0x5eed_u64;
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for sample in 0..samples {
        // Half at the full size, half at an arbitrary older size (never tile-aligned by design).
        let size = if sample % 2 == 0 { n } else { n / 2 + next(&mut rng) % (n / 2) + 1 };
        let index = next(&mut rng) % size;
        let started = Instant::now();
        let proof = inclusion_proof(&store, index, size).await?;
        inclusion.push(started.elapsed().as_secs_f64() * 1e6);
        let from = 1 + next(&mut rng) % (n - 1);
        let started = Instant::now();
        let cons = consistency_proof(&store, from, n).await?;
        consistency.push(started.elapsed().as_secs_f64() * 1e6);
        if size == n && !verify_inclusion(index, n, &proof.leaf_hash, &proof.hashes, &root) {
            bail!("inclusion proof for {index} in {n} does not verify");
        }
        if sample < 20 {
            let first_root = root_at(&store, from).await?;
            if !verify_consistency(from, n, &first_root, &root, &cons.hashes) {
                bail!("consistency proof {from} -> {n} does not verify");
            }
        }
    }
    println!("proofs: every full-size inclusion proof and 20 consistency proofs verified with audit-verify");
    summary("inclusion", inclusion);
    summary("consistency", consistency);
    Ok(())
}
