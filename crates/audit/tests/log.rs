//! The audit writer against a real SQLite store, checked by the independent verifier crate.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mandate_audit::{AuditLog, CheckpointPolicy, CheckpointSigner, export};
use mandate_audit_verify::{VerifierKey, verify_export};
use mandate_core::{AuditEvent, ManualClock, Name, Owner};
use mandate_crypto::{Alg, SigningKey};
use mandate_store::{Mutation, MutationError, SqliteStore, Store};

fn start(dir: &tempfile::TempDir, every_events: u64) -> AuditLog {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
    let key = Arc::new(SigningKey::generate(Alg::EdDSA).unwrap());
    let signer = CheckpointSigner::new(key, "test.example/audit").unwrap();
    let policy = CheckpointPolicy { every_events, every: Duration::from_secs(3600) };
    AuditLog::start(store, signer, Arc::new(ManualClock::at_ms(1_795_424_400_000)), policy)
}

async fn export_text(log: &AuditLog) -> String {
    let mut out = Vec::new();
    export(log, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

fn verify(log: &AuditLog, text: &str) -> Result<mandate_audit_verify::Report, String> {
    let key = VerifierKey::from_str(&log.signer().verifier_key()).unwrap();
    verify_export(text.as_bytes(), &key).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_form_one_verifiable_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(&dir, 25);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(
            async move { log.record(AuditEvent::allow("test.event", format!("c{i}"))).await.unwrap() },
        ));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<u64>>());

    let text = export_text(&log).await;
    let report = verify(&log, &text).unwrap();
    assert_eq!(report.entries, 200);
    assert!(report.checkpoints >= 1);
    assert!(text.lines().next().unwrap().contains("test.example/audit"));
}

#[tokio::test]
async fn mutations_and_their_events_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(&dir, 1000);
    let alice =
        Owner { name: Name::parse("alice").unwrap(), display_name: None, password_hash: None, created_at_ms: 1 };
    let ok = log
        .apply(Mutation::CreateOwner(alice.clone()), AuditEvent::allow("registry.owner.create", "r1"))
        .await
        .unwrap();
    assert_eq!(ok, Ok(0));
    let dup = log.apply(Mutation::CreateOwner(alice), AuditEvent::allow("registry.owner.create", "r2")).await.unwrap();
    assert!(matches!(dup, Err(MutationError::Conflict(_))));

    let text = export_text(&log).await;
    let entries: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().get("entry").cloned())
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["decision"], "allow");
    assert_eq!(entries[1]["decision"], "deny");
    assert_eq!(entries[1]["reason"], "conflict");
    assert_eq!(entries[1]["correlation_id"], "r2");
    assert_eq!(entries[1]["ts"], "2026-11-23T09:00:00.000Z");
    verify(&log, &text).unwrap();
}

#[tokio::test]
async fn edited_deleted_or_reordered_lines_fail_verification() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(&dir, 4);
    for i in 0..10 {
        log.record(AuditEvent::allow("test.event", format!("c{i}"))).await.unwrap();
    }
    let text = export_text(&log).await;
    verify(&log, &text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let entry_lines: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("{\"entry\"")).collect();
    assert_eq!(entry_lines.len(), 10);

    let join = |ls: &[String]| ls.join("\n") + "\n";
    let owned: Vec<String> = lines.iter().map(|s| (*s).to_owned()).collect();

    let mut edited = owned.clone();
    let target = entry_lines[4];
    edited[target] = edited[target].replace("\"c4\"", "\"cX\"");
    assert_ne!(edited[target], owned[target]);
    let err = verify(&log, &join(&edited)).unwrap_err();
    assert!(err.contains("seq"), "{err}");

    let mut deleted = owned.clone();
    deleted.remove(entry_lines[3]);
    assert!(verify(&log, &join(&deleted)).is_err());

    let mut reordered = owned.clone();
    reordered.swap(entry_lines[1], entry_lines[2]);
    assert!(verify(&log, &join(&reordered)).is_err());

    let mut last_edited = owned.clone();
    let last = entry_lines[9];
    last_edited[last] = last_edited[last].replace("\"allow\"", "\"deny\"");
    assert!(verify(&log, &join(&last_edited)).is_err());

    let truncated: Vec<String> = owned[..owned.len() - 1].to_vec();
    assert!(verify(&log, &join(&truncated)).is_err());
}

/// On a current-thread runtime the writer task cannot run while the test polls by hand, so the
/// appends polled once stay queued and the depth is exact.
#[tokio::test(flavor = "current_thread")]
async fn queue_depth_counts_appends_the_writer_has_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(&dir, 1000);
    assert!(log.is_running());
    assert_eq!(log.queue_depth(), 0);
    let mut appends: Vec<_> =
        (0..3).map(|i| Box::pin(log.record(AuditEvent::allow("test.event", format!("q{i}"))))).collect();
    for append in &mut appends {
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(append.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "an append answers only after its commit");
    }
    assert_eq!(log.queue_depth(), 3);
    for append in appends {
        append.await.unwrap();
    }
    assert_eq!(log.queue_depth(), 0);
}
