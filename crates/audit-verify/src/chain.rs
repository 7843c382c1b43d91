//! Checks 1 and 2 of `docs/audit.md`, entry by entry: an event's `seq` is its position and its
//! `prev` the leaf hash of the event before; the Merkle frontier grows with each leaf. Shared by
//! the export verifier and by readers that verify a live log incrementally (the console).

use serde_json::Value;

use crate::canonical::{CanonicalError, canonical_json};
use crate::merkle::{Frontier, Hash, leaf_hash};

/// `prev` of event 0: the all-zero hash.
const GENESIS_PREV: Hash = [0u8; 32];

/// Why an event does not continue the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry is not a JSON object")]
    NotObject,
    #[error("entry has no integer \"seq\"")]
    MissingSeq,
    #[error("seq {found} is not its position {expected}")]
    SeqMismatch { found: u64, expected: u64 },
    #[error("entry {seq} has no string \"prev\"")]
    MissingPrev { seq: u64 },
    #[error("entry {seq}: \"prev\" is not the leaf hash of the previous entry")]
    PrevMismatch { seq: u64 },
    #[error("entry {seq}: {error}")]
    Canonical { seq: u64, error: CanonicalError },
}

/// The verified prefix of a log: its Merkle frontier and the last leaf (the next `prev`).
#[derive(Debug, Clone)]
pub struct Chain {
    frontier: Frontier,
    last_leaf: Hash,
}

impl Default for Chain {
    fn default() -> Self {
        Self { frontier: Frontier::default(), last_leaf: GENESIS_PREV }
    }
}

impl Chain {
    /// Number of events chained so far (the `seq` the next one must carry).
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// RFC 9162 root over every leaf chained so far.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Checks one event's `seq` and `prev`, then appends its leaf (hashed over this crate's
    /// canonical form of the event) and returns it. On error nothing is appended.
    pub fn append(&mut self, event: &Value) -> Result<Hash, ChainError> {
        let Value::Object(members) = event else {
            return Err(ChainError::NotObject);
        };
        let seq = members.get("seq").and_then(Value::as_u64).ok_or(ChainError::MissingSeq)?;
        let expected = self.size();
        if seq != expected {
            return Err(ChainError::SeqMismatch { found: seq, expected });
        }
        let prev = members.get("prev").and_then(Value::as_str).ok_or(ChainError::MissingPrev { seq })?;
        if !self.is_last_leaf(prev) {
            return Err(ChainError::PrevMismatch { seq });
        }
        let canonical = canonical_json(event).map_err(|error| ChainError::Canonical { seq, error })?;
        let leaf = leaf_hash(&canonical);
        self.frontier.push(leaf);
        self.last_leaf = leaf;
        Ok(leaf)
    }

    /// Compares the text, not decoded bytes: the format fixes lowercase hex, so anything else
    /// is an altered entry.
    fn is_last_leaf(&self, prev: &str) -> bool {
        let mut expected_hex = [0u8; 64];
        // Encoding into a 64-byte buffer cannot fail for a 32-byte input.
        let encoded = hex::encode_to_slice(self.last_leaf, &mut expected_hex).is_ok();
        encoded && prev.as_bytes() == expected_hex.as_slice()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(seq: u64, prev: &Hash) -> Value {
        json!({"seq": seq, "prev": hex::encode(prev), "action": "token.issue"})
    }

    #[test]
    fn a_chain_grows_only_by_the_next_event() {
        let mut chain = Chain::default();
        let first = chain.append(&event(0, &GENESIS_PREV)).unwrap();
        assert_eq!(chain.append(&event(2, &first)), Err(ChainError::SeqMismatch { found: 2, expected: 1 }));
        assert_eq!(chain.append(&event(1, &GENESIS_PREV)), Err(ChainError::PrevMismatch { seq: 1 }));
        let upper = json!({"seq": 1, "prev": hex::encode_upper(first)});
        assert_eq!(chain.append(&upper), Err(ChainError::PrevMismatch { seq: 1 }));
        assert_eq!(chain.append(&json!({"seq": 1})), Err(ChainError::MissingPrev { seq: 1 }));
        assert_eq!(chain.append(&json!({"prev": hex::encode(first)})), Err(ChainError::MissingSeq));
        assert_eq!(chain.append(&json!([1])), Err(ChainError::NotObject));
        assert_eq!(chain.size(), 1, "refused events are not appended");
        let second = chain.append(&event(1, &first)).unwrap();
        assert_eq!(chain.root(), crate::merkle::merkle_root(&[first, second]));
    }
}
