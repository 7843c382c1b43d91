//! Offline verifier for Mandate audit log exports.
//!
//! An auditor needs only this crate and the log's public verifier key: it shares no code with
//! the Mandate server, so a bug there cannot hide in the check. The format it verifies is
//! specified in `docs/audit.md`:
//!
//! - each event's canonical bytes are its RFC 8785 (JCS) serialisation ([`canonical_json`]);
//! - events form a hash chain through `prev` and the leaves of an RFC 9162 Merkle tree
//!   ([`leaf_hash`], [`merkle_root`]);
//! - tree heads are published as Ed25519-signed C2SP checkpoints ([`verify_note`]).
//!
//! [`verify_export`] runs every check over a JSONL export; [`verify_export_extending`] also
//! detects a history forked after a checkpoint the auditor saved; [`verify_receipt`] checks one
//! event's self-contained receipt. The proof verifiers
//! ([`verify_inclusion`], [`verify_consistency`]) check RFC 9162 proofs against checkpoints.
//!
//! ```no_run
//! use mandate_audit_verify::{VerifierKey, verify_export};
//!
//! let key: VerifierKey = "mandate.local/audit+1a2b3c4d+AQ...".parse()?;
//! let file = std::io::BufReader::new(std::fs::File::open("audit.jsonl")?);
//! let report = verify_export(file, &key)?;
//! println!("OK: {} entries, {} checkpoints verified", report.entries, report.checkpoints);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod canonical;
mod chain;
mod export;
mod merkle;
mod note;
mod receipt;
mod strict_json;

pub use canonical::{CanonicalError, canonical_json};
pub use chain::{Chain, ChainError};
pub use export::{EXPORT_FORMAT, Reason, Report, VerifyError, verify_export, verify_export_extending};
pub use merkle::{
    Hash, consistency_proof, inclusion_proof, leaf_hash, merkle_root, node_hash, verify_consistency, verify_inclusion,
};
pub use note::{Checkpoint, KeyParseError, NoteError, VerifierKey, parse_checkpoint, verify_note, verify_signed_note};
pub use receipt::{RECEIPT_FORMAT, ReceiptError, ReceiptReport, verify_receipt};
