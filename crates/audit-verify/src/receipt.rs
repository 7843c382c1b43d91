//! Self-contained receipts: one audit event, its RFC 9162 inclusion proof and the signed
//! checkpoint the proof leads to. Checking one needs only the receipt and the log's verifier key;
//! the format is specified in `docs/audit.md` ("Receipts").

use serde_json::{Map, Value};

use crate::canonical::{CanonicalError, canonical_json};
use crate::merkle::{Hash, leaf_hash, verify_inclusion};
use crate::note::{NoteError, VerifierKey, verify_note};
use crate::strict_json;

/// The only receipt format this verifier understands.
pub const RECEIPT_FORMAT: &str = "mandate-audit-receipt/v1";

/// Every member a receipt has; any other member is rejected rather than silently ignored.
const MEMBERS: [&str; 7] = ["checkpoint", "entry", "format", "inclusion", "index", "origin", "tree_size"];

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptReport {
    /// The event, exactly as logged.
    pub event: Value,
    /// Its position in the log (`seq`, the Merkle leaf index).
    pub index: u64,
    /// Size of the signed tree that includes it.
    pub tree_size: u64,
    /// Root hash of that tree.
    pub root: Hash,
}

/// Why a receipt failed verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The receipt is not one JSON value, or has duplicate object keys.
    #[error("receipt is not valid JSON: {0}")]
    InvalidJson(String),
    /// The bytes are not the canonical (JCS) form of the receipt plus one newline.
    #[error("receipt is not in canonical form: a byte was changed, added or removed")]
    NotCanonical,
    /// The receipt has no canonical form (e.g. a float).
    #[error("receipt cannot be canonicalised: {0}")]
    Canonical(CanonicalError),
    /// A member is missing, has the wrong type, or is unknown.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The receipt names a format other than [`RECEIPT_FORMAT`].
    #[error("unsupported receipt format {0:?}, expected {RECEIPT_FORMAT:?}")]
    UnsupportedFormat(String),
    /// The receipt's or its checkpoint's origin is not the verifier key's name.
    #[error("origin {found:?} does not match the key name {expected:?}")]
    OriginMismatch {
        /// The origin in the receipt.
        found: String,
        /// The verifier key's name.
        expected: String,
    },
    /// The checkpoint's signature or body is invalid.
    #[error("checkpoint rejected: {0}")]
    Note(NoteError),
    /// `tree_size` differs from the size the checkpoint signs.
    #[error("receipt claims tree size {receipt} but its checkpoint signs size {checkpoint}")]
    TreeSizeMismatch {
        /// The receipt's `tree_size`.
        receipt: u64,
        /// The checkpoint's size.
        checkpoint: u64,
    },
    /// The entry's `seq` is not the receipt's `index`.
    #[error("entry has seq {seq:?} but the receipt proves index {index}")]
    SeqMismatch {
        /// The entry's `seq`, if it has an integer one.
        seq: Option<u64>,
        /// The receipt's `index`.
        index: u64,
    },
    /// An inclusion proof hash is not 64 lowercase hex digits.
    #[error("inclusion proof hash {0} is not 64 lowercase hex digits")]
    InvalidProofHash(usize),
    /// The proof does not lead from the entry's leaf hash to the checkpoint's root.
    #[error(
        "entry seq {index} is not proven included: its inclusion proof does not lead to the root of tree size {tree_size}"
    )]
    NotIncluded {
        /// The entry's index.
        index: u64,
        /// The checkpoint's tree size.
        tree_size: u64,
    },
}

/// Verifies a receipt file's bytes against the log's verifier key.
///
/// Checks, in order: the bytes are the receipt's canonical JSON plus a newline (so any changed
/// byte fails, not only those that change a value); the members and format; the origin; the
/// checkpoint's signature; that the checkpoint signs `tree_size`; that the entry's `seq` is
/// `index`; and that the inclusion proof leads from the entry's leaf hash to the signed root.
pub fn verify_receipt(bytes: &[u8], key: &VerifierKey) -> Result<ReceiptReport, ReceiptError> {
    let value = strict_json::parse(bytes).map_err(|e| ReceiptError::InvalidJson(e.to_string()))?;
    check_canonical(bytes, &value)?;
    let receipt = Receipt::from_value(&value)?;
    if receipt.format != RECEIPT_FORMAT {
        return Err(ReceiptError::UnsupportedFormat(receipt.format.to_owned()));
    }
    check_origin(receipt.origin, key)?;
    let checkpoint = verify_note(receipt.checkpoint, key).map_err(ReceiptError::Note)?;
    check_origin(&checkpoint.origin, key)?;
    if checkpoint.size != receipt.tree_size {
        return Err(ReceiptError::TreeSizeMismatch { receipt: receipt.tree_size, checkpoint: checkpoint.size });
    }
    let seq = receipt.entry.get("seq").and_then(Value::as_u64);
    if seq != Some(receipt.index) {
        return Err(ReceiptError::SeqMismatch { seq, index: receipt.index });
    }
    let entry = Value::Object(receipt.entry.clone());
    let leaf = leaf_hash(&canonical_json(&entry).map_err(ReceiptError::Canonical)?);
    let proof = receipt.proof()?;
    if !verify_inclusion(receipt.index, receipt.tree_size, &leaf, &proof, &checkpoint.root) {
        return Err(ReceiptError::NotIncluded { index: receipt.index, tree_size: receipt.tree_size });
    }
    Ok(ReceiptReport { event: entry, index: receipt.index, tree_size: checkpoint.size, root: checkpoint.root })
}

/// The receipt must be exactly its JCS form, optionally followed by one newline.
fn check_canonical(bytes: &[u8], value: &Value) -> Result<(), ReceiptError> {
    let canonical = canonical_json(value).map_err(ReceiptError::Canonical)?;
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body == canonical.as_slice() { Ok(()) } else { Err(ReceiptError::NotCanonical) }
}

fn check_origin(origin: &str, key: &VerifierKey) -> Result<(), ReceiptError> {
    if origin == key.name() {
        return Ok(());
    }
    Err(ReceiptError::OriginMismatch { found: origin.to_owned(), expected: key.name().to_owned() })
}

/// The members of a receipt, borrowed from the parsed JSON.
struct Receipt<'a> {
    format: &'a str,
    origin: &'a str,
    entry: &'a Map<String, Value>,
    index: u64,
    tree_size: u64,
    inclusion: &'a [Value],
    checkpoint: &'a str,
}

impl<'a> Receipt<'a> {
    fn from_value(value: &'a Value) -> Result<Self, ReceiptError> {
        let members = value.as_object().ok_or_else(|| malformed("the receipt is not a JSON object"))?;
        if let Some(unknown) = members.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
            return Err(malformed(&format!("unknown member {unknown:?}")));
        }
        let string = |name: &str| members.get(name).and_then(Value::as_str).ok_or_else(|| missing(name, "a string"));
        let integer = |name: &str| members.get(name).and_then(Value::as_u64).ok_or_else(|| missing(name, "an integer"));
        Ok(Self {
            format: string("format")?,
            origin: string("origin")?,
            entry: members.get("entry").and_then(Value::as_object).ok_or_else(|| missing("entry", "an object"))?,
            index: integer("index")?,
            tree_size: integer("tree_size")?,
            inclusion: members
                .get("inclusion")
                .and_then(Value::as_array)
                .ok_or_else(|| missing("inclusion", "an array"))?,
            checkpoint: string("checkpoint")?,
        })
    }

    /// The inclusion proof hashes; like `prev`, they must be lowercase hex.
    fn proof(&self) -> Result<Vec<Hash>, ReceiptError> {
        self.inclusion
            .iter()
            .enumerate()
            .map(|(i, value)| parse_hash(value).ok_or(ReceiptError::InvalidProofHash(i)))
            .collect()
    }
}

fn parse_hash(value: &Value) -> Option<Hash> {
    let text = value.as_str()?;
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

fn malformed(what: &str) -> ReceiptError {
    ReceiptError::Malformed(what.to_owned())
}

fn missing(name: &str, kind: &str) -> ReceiptError {
    ReceiptError::Malformed(format!("member {name:?} must be {kind}"))
}
