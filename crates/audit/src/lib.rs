//! The append-only audit log: events become canonical JSON leaves of an RFC 9162 Merkle tree,
//! hash-chained through `prev`, appended by one writer task with group commit, and committed
//! by Ed25519-signed C2SP checkpoints. The format is specified in `docs/audit.md`.

mod checkpoint;
mod encode;
mod export;
pub mod merkle;
pub mod proof;
pub mod query;
pub mod receipt;
pub mod tiles;
mod writer;

pub use checkpoint::{CheckpointError, CheckpointSigner, build_checkpoint};
pub use encode::{AuditEncoder, canonical_event};
pub use export::{ExportError, export};
pub use writer::{AuditError, AuditLog, CheckpointPolicy};

/// The first line of every export.
pub fn export_header(origin: &str) -> String {
    serde_json::json!({"log": {"format": "mandate-audit/v1", "origin": origin}}).to_string()
}
