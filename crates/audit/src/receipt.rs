//! Receipts: one event, its inclusion proof and the signed checkpoint the proof leads to, as one
//! JSON document anyone can check offline with the log's verifier key (`docs/audit.md`,
//! "Receipts"; verified by `mandate_audit_verify::verify_receipt`).

use serde_json::{Value, json};

use crate::proof::{ProofError, inclusion_proof};
use crate::writer::{AuditError, AuditLog};

/// The receipt format written here.
pub const RECEIPT_FORMAT: &str = "mandate-audit-receipt/v1";

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("no audit event has seq {0}")]
    NoSuchEvent(u64),
    #[error("audit entry {0} is not valid JSON")]
    Corrupt(u64),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Store(#[from] mandate_store::StoreError),
    #[error("the receipt cannot be written canonically: {0}")]
    Canonical(String),
}

/// The receipt of event `seq`, proven against a checkpoint covering the whole log (signed now if
/// the latest one does not cover it). Serialise it with [`receipt_text`].
pub async fn receipt(log: &AuditLog, seq: u64) -> Result<Value, ReceiptError> {
    let entry =
        log.store().audit_entries(seq, seq + 1).await?.into_iter().next().ok_or(ReceiptError::NoSuchEvent(seq))?;
    let checkpoint = log.checkpoint().await?;
    let proof = inclusion_proof(log.store(), seq, checkpoint.tree_size).await?;
    let event: Value = serde_json::from_str(&entry.canonical).map_err(|_| ReceiptError::Corrupt(seq))?;
    let hashes: Vec<String> = proof.hashes.iter().map(hex::encode).collect();
    Ok(json!({
        "format": RECEIPT_FORMAT,
        "origin": log.signer().origin(),
        "entry": event,
        "index": seq,
        "tree_size": checkpoint.tree_size,
        "inclusion": hashes,
        "checkpoint": checkpoint.note,
    }))
}

/// The receipt's file form: its canonical JSON (JCS, written by the verifier's canonicaliser, so
/// it never depends on `serde_json`'s map order) and a newline. Verifiers require exactly this,
/// so any changed byte is detected.
pub fn receipt_text(receipt: &Value) -> Result<String, ReceiptError> {
    let bytes = mandate_audit_verify::canonical_json(receipt).map_err(|e| ReceiptError::Canonical(e.to_string()))?;
    let mut text = String::from_utf8(bytes).map_err(|e| ReceiptError::Canonical(e.to_string()))?;
    text.push('\n');
    Ok(text)
}
