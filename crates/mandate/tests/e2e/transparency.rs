//! The public transparency-log endpoints, checked with the independent `audit-verify` crate:
//! signed checkpoints, entries, inclusion and consistency proofs, and refusal of bad requests.

use mandate_audit_verify::{Checkpoint, VerifierKey, leaf_hash, verify_consistency, verify_inclusion, verify_note};
use serde_json::Value;

use crate::harness::Server;

fn hash(value: &Value) -> [u8; 32] {
    hex::decode(value.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn hashes(value: &Value) -> Vec<[u8; 32]> {
    value.as_array().unwrap().iter().map(hash).collect()
}

/// Signs a fresh checkpoint (an export does), then fetches and verifies the served one.
async fn signed_checkpoint(server: &Server, key: &VerifierKey) -> Checkpoint {
    let export = server.dir.path().join("export.jsonl");
    server.cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    let response = server.http.get(server.url("/audit/checkpoint")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    verify_note(&response.text().await.unwrap(), key).unwrap()
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = server.http.get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn entries_and_proofs_verify_against_signed_checkpoints() {
    let server = Server::start();
    let key: VerifierKey = server.cli(&["audit", "key"]).trim().parse().unwrap();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    for _ in 0..3 {
        server.token(&id, &secret).await;
    }
    let first = signed_checkpoint(&server, &key).await;
    assert!(first.size >= 5, "{}", first.size);

    let (status, body) = get(&server, &format!("/audit/entries?start=0&end={}", first.size)).await;
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, first.size);
    let leaves: Vec<[u8; 32]> = entries.iter().map(|e| leaf_hash(e["entry"].as_str().unwrap().as_bytes())).collect();
    for (entry, leaf) in entries.iter().zip(&leaves) {
        assert_eq!(hash(&entry["leaf_hash"]), *leaf);
    }
    assert_eq!(mandate_audit_verify::merkle_root(&leaves), first.root);

    for index in [0, first.size / 2, first.size - 1] {
        let (status, proof) = get(&server, &format!("/audit/proof/inclusion?index={index}&size={}", first.size)).await;
        assert_eq!(status, 200, "{proof}");
        assert_eq!(hash(&proof["leaf_hash"]), leaves[index as usize]);
        let path = hashes(&proof["hashes"]);
        assert!(verify_inclusion(index, first.size, &leaves[index as usize], &path, &first.root), "{index}");
        assert!(!verify_inclusion(index, first.size, &leaf_hash(b"forged"), &path, &first.root));
    }

    for _ in 0..4 {
        server.token(&id, &secret).await;
    }
    let second = signed_checkpoint(&server, &key).await;
    assert!(second.size > first.size);
    let (status, body) =
        get(&server, &format!("/audit/proof/consistency?from={}&to={}", first.size, second.size)).await;
    assert_eq!(status, 200, "{body}");
    let proof = hashes(&body["hashes"]);
    assert!(verify_consistency(first.size, second.size, &first.root, &second.root, &proof));
    assert!(!verify_consistency(first.size, second.size, &leaf_hash(b"forged"), &second.root, &proof));

    // Defaults: the latest signed head.
    let (status, body) = get(&server, "/audit/proof/inclusion?index=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tree_size"], second.size);
}

#[tokio::test]
async fn bad_parameters_are_refused_with_json_errors() {
    let server = Server::start();
    let key: VerifierKey = server.cli(&["audit", "key"]).trim().parse().unwrap();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    server.token(&id, &secret).await;
    let size = signed_checkpoint(&server, &key).await.size;
    let over = size + 1;
    for path in [
        format!("/audit/proof/inclusion?index={size}&size={size}"),
        format!("/audit/proof/inclusion?index=0&size={over}"),
        "/audit/proof/inclusion?index=abc".to_owned(),
        "/audit/proof/inclusion?index=-1".to_owned(),
        "/audit/proof/inclusion?size=1".to_owned(),
        "/audit/proof/inclusion?index=0&index=1".to_owned(),
        "/audit/proof/inclusion?index=0&bogus=1".to_owned(),
        format!("/audit/proof/consistency?from={over}&to={size}"),
        format!("/audit/proof/consistency?from=1&to={over}"),
        "/audit/proof/consistency?to=1".to_owned(),
        "/audit/entries?start=3&end=2".to_owned(),
        format!("/audit/entries?start=0&end={over}"),
        "/audit/entries".to_owned(),
        "/audit/entries?start=99999999999999999999999".to_owned(),
    ] {
        let (status, body) = get(&server, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}");
    }
    let (status, body) = get(&server, &format!("/audit/entries?start={size}")).await;
    assert_eq!(status, 200, "an empty page at the end is fine: {body}");
    assert_eq!(body["entries"].as_array().unwrap().len(), 0);
}
