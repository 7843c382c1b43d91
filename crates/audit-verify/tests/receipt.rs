//! Tests of `verify_receipt` over receipts built independently of the crate: leaf hashes and
//! audit paths from sha2 and the recursive RFC 6962 definitions, notes signed with ed25519-dalek.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use mandate_audit_verify::{NoteError, ReceiptError, VerifierKey, canonical_json, verify_receipt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ORIGIN: &str = "mandate.local/audit";

type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => sha256(&[&[1], &root(&leaves[..split(n)]), &root(&leaves[split(n)..])]),
    }
}

/// RFC 6962 §2.1.1 PATH(m, D[n]).
fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if leaves.len() <= 1 {
        return Vec::new();
    }
    let k = split(leaves.len());
    let (mut proof, sibling) = if m < k {
        (path(m, &leaves[..k]), root(&leaves[k..]))
    } else {
        (path(m - k, &leaves[k..]), root(&leaves[..k]))
    };
    proof.push(sibling);
    proof
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn key_id(name: &str, key: &SigningKey) -> [u8; 4] {
    let digest = sha256(&[name.as_bytes(), &[0x0a, 0x01], key.verifying_key().as_bytes()]);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn vkey_for(name: &str, key: &SigningKey) -> VerifierKey {
    let typed = [&[0x01], key.verifying_key().as_bytes().as_slice()].concat();
    format!("{name}+{}+{}", hex::encode(key_id(name, key)), STANDARD.encode(typed)).parse().unwrap()
}

fn vkey() -> VerifierKey {
    vkey_for(ORIGIN, &key())
}

fn note(size: usize, root: &Hash) -> String {
    let body = format!("{ORIGIN}\n{size}\n{}\n", STANDARD.encode(root));
    let blob = [key_id(ORIGIN, &key()).as_slice(), &key().sign(body.as_bytes()).to_bytes()].concat();
    format!("{body}\n\u{2014} {ORIGIN} {}\n", STANDARD.encode(blob))
}

/// A log of `size` chained events.
fn events(size: usize) -> Vec<Value> {
    let mut prev = [0u8; 32];
    (0..size)
        .map(|seq| {
            let event = json!({
                "v": 1, "seq": seq, "prev": hex::encode(prev), "ts": "2026-11-23T09:00:00.000Z",
                "action": "token.issue", "decision": "allow", "reason": null, "detail": "café",
                "agent": "spiffe://mandate.local/agent/bot", "owner": "alice", "subject": null,
                "client": "c1", "resource": "https://api.example.com/", "scope": "read",
                "jti": format!("jti-{seq}"), "txn": null, "correlation_id": format!("req-{seq}"),
            });
            prev = sha256(&[&[0], &canonical_json(&event).unwrap()]);
            event
        })
        .collect()
}

/// A receipt as value, before serialisation (written with `canonical_json`).
fn receipt_value(index: usize, size: usize) -> Value {
    let events = events(size);
    let leaves: Vec<Hash> = events.iter().map(|e| sha256(&[&[0], &canonical_json(e).unwrap()])).collect();
    let proof: Vec<String> = path(index, &leaves).iter().map(hex::encode).collect();
    json!({
        "format": "mandate-audit-receipt/v1", "origin": ORIGIN, "entry": events[index],
        "index": index, "tree_size": size, "inclusion": proof, "checkpoint": note(size, &root(&leaves)),
    })
}

fn bytes_of(value: &Value) -> Vec<u8> {
    let mut bytes = canonical_json(value).unwrap();
    bytes.push(b'\n');
    bytes
}

fn receipt(index: usize, size: usize) -> Vec<u8> {
    bytes_of(&receipt_value(index, size))
}

#[test]
fn receipts_verify_for_every_position() {
    for size in [1, 2, 3, 5, 8, 13] {
        for index in 0..size {
            let report =
                verify_receipt(&receipt(index, size), &vkey()).unwrap_or_else(|e| panic!("{index}/{size}: {e}"));
            assert_eq!((report.index, report.tree_size), (index as u64, size as u64));
            assert_eq!(report.event["jti"], format!("jti-{index}"));
        }
    }
    // The trailing newline is optional.
    let mut bytes = receipt(2, 5);
    bytes.pop();
    verify_receipt(&bytes, &vkey()).unwrap();
}

#[test]
fn changing_any_byte_fails() {
    let original = receipt(3, 7);
    let body_len = original.len() - 1;
    for position in 0..body_len {
        for replacement in [b' ', b'0', b'x'] {
            if original[position] == replacement {
                continue;
            }
            let mut bytes = original.clone();
            bytes[position] = replacement;
            assert!(verify_receipt(&bytes, &vkey()).is_err(), "byte {position} -> {:?} accepted", replacement as char);
        }
    }
    let mut extra = original.clone();
    extra.push(b'\n');
    assert!(matches!(verify_receipt(&extra, &vkey()), Err(ReceiptError::NotCanonical)));
}

fn edited(member: &str, value: Value) -> Result<(), ReceiptError> {
    let mut receipt = receipt_value(3, 7);
    receipt[member] = value;
    verify_receipt(&bytes_of(&receipt), &vkey()).map(|_| ())
}

#[test]
fn each_rule_has_its_own_error() {
    let mut entry = receipt_value(3, 7)["entry"].clone();
    entry["owner"] = json!("mallory");
    assert!(matches!(edited("entry", entry), Err(ReceiptError::NotIncluded { index: 3, tree_size: 7 })));
    assert!(matches!(edited("index", json!(4)), Err(ReceiptError::SeqMismatch { seq: Some(3), index: 4 })));
    assert!(matches!(edited("tree_size", json!(8)), Err(ReceiptError::TreeSizeMismatch { receipt: 8, checkpoint: 7 })));
    assert!(matches!(edited("format", json!("other/v1")), Err(ReceiptError::UnsupportedFormat(_))));
    assert!(matches!(edited("origin", json!("evil.example/audit")), Err(ReceiptError::OriginMismatch { .. })));
    assert!(matches!(edited("inclusion", json!(["AB"])), Err(ReceiptError::InvalidProofHash(0))));
    assert!(matches!(edited("inclusion", json!([])), Err(ReceiptError::NotIncluded { .. })));
    assert!(matches!(edited("index", json!("3")), Err(ReceiptError::Malformed(_))));
    assert!(matches!(edited("extra", json!(1)), Err(ReceiptError::Malformed(_))));
    let forged = note(7, &[1; 32]).replace("\n7\n", "\n6\n");
    assert!(matches!(edited("checkpoint", json!(forged)), Err(ReceiptError::Note(NoteError::InvalidSignature(_)))));
    let mut reformatted = serde_json::to_vec_pretty(&receipt_value(3, 7)).unwrap();
    reformatted.push(b'\n');
    assert!(matches!(verify_receipt(&reformatted, &vkey()), Err(ReceiptError::NotCanonical)));
    assert!(matches!(verify_receipt(b"{", &vkey()), Err(ReceiptError::InvalidJson(_))));
}

#[test]
fn a_receipt_needs_the_logs_own_key() {
    let other = vkey_for(ORIGIN, &SigningKey::from_bytes(&[10; 32]));
    assert!(matches!(verify_receipt(&receipt(0, 3), &other), Err(ReceiptError::Note(NoteError::NotSignedByKey(_)))));
    let renamed = vkey_for("other.example/audit", &key());
    assert!(matches!(verify_receipt(&receipt(0, 3), &renamed), Err(ReceiptError::OriginMismatch { .. })));
}
