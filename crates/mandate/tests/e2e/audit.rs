//! The audit log through the CLI: export, offline verification, and tamper detection.

use std::process::Command;

use crate::harness::{Server, bin, free_address};

fn verify(server: &Server, export: &std::path::Path) -> (bool, String) {
    let key = server.cli(&["audit", "key"]);
    let out = Command::new(bin()).args(["audit", "verify"]).arg(export).args(["--key", key.trim()]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn exports_verify_and_any_tampering_is_detected() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    for _ in 0..5 {
        server.token(&id, &secret).await;
    }
    let export = server.dir.path().join("audit.jsonl");
    server.cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    let (ok, message) = verify(&server, &export);
    assert!(ok, "{message}");
    assert!(message.starts_with("OK: "), "{message}");

    let text = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let entries: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("{\"entry\"")).collect();
    assert!(entries.len() >= 10);
    let write = |name: &str, lines: &[String]| {
        let path = server.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();

    let mut edited = owned.clone();
    let victim = entries[entries.len() / 2];
    edited[victim] = edited[victim].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    assert_ne!(edited[victim], owned[victim]);
    let mut deleted = owned.clone();
    deleted.remove(entries[3]);
    let mut reordered = owned.clone();
    reordered.swap(entries[4], entries[5]);
    let mut tail_edit = owned.clone();
    let last = *entries.last().unwrap();
    tail_edit[last] = tail_edit[last].replace("\"v\":1", "\"v\":1,\"note\":\"x\"");

    for (name, lines) in [("edited", edited), ("deleted", deleted), ("reordered", reordered), ("tail", tail_edit)] {
        let (ok, message) = verify(&server, &write(name, &lines));
        assert!(!ok, "{name} verified");
        assert!(message.starts_with("FAIL: line "), "{name}: {message}");
    }

    let other = Server::start();
    let (ok, _) = verify(&other, &export);
    assert!(!ok, "another log's key must not verify this export");
}

#[tokio::test]
async fn the_log_survives_restarts_as_one_chain() {
    // The issuer URL includes the port, so a restart must keep it for old tokens to stay valid.
    let address = free_address();
    let server = Server::start_at(tempfile::tempdir().unwrap(), &[], &address);
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let token = server.token(&id, &secret).await;
    let key_before = server.cli(&["audit", "key"]);
    let dir = server.stop();

    let server = Server::start_at(dir, &[], &address);
    assert_eq!(server.cli(&["audit", "key"]), key_before, "same audit key after restart");
    assert_eq!(server.introspect(&token).await["active"], true, "tokens survive restarts");
    assert!(!server.data_dir().join("admin-token.new").exists());
    server.token(&id, &secret).await;
    let export = server.dir.path().join("audit.jsonl");
    server.cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    let (ok, message) = verify(&server, &export);
    assert!(ok, "{message}");
}
