//! JSONL export: header, every entry in order, each stored checkpoint after the entries it
//! covers, and a fresh checkpoint over everything exported.

use std::io::Write;

use crate::export_header;
use crate::writer::{AuditError, AuditLog};

const EXPORT_CHUNK: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] mandate_store::StoreError),
    #[error("writing the export failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the whole log to `out`; returns the number of entries written.
pub async fn export(log: &AuditLog, out: &mut (dyn Write + Send)) -> Result<u64, ExportError> {
    let last = log.checkpoint().await?;
    let store = log.store();
    let mut stored = store.checkpoints().await?.into_iter().filter(|cp| cp.tree_size < last.tree_size).peekable();
    writeln!(out, "{}", export_header(log.signer().origin()))?;
    let mut next = 0u64;
    while next < last.tree_size {
        let end = (next + EXPORT_CHUNK).min(last.tree_size);
        for entry in store.audit_entries(next, end).await? {
            writeln!(out, "{{\"entry\":{}}}", entry.canonical)?;
            next = entry.seq + 1;
            while let Some(cp) = stored.next_if(|cp| cp.tree_size == next) {
                write_checkpoint(out, &cp.note)?;
            }
        }
        if next < end {
            return Err(mandate_store::StoreError::AuditChain(format!("entry {next} is missing")).into());
        }
    }
    write_checkpoint(out, &last.note)?;
    Ok(last.tree_size)
}

fn write_checkpoint(out: &mut (dyn Write + Send), note: &str) -> std::io::Result<()> {
    writeln!(out, "{}", serde_json::json!({ "checkpoint": note }))
}
