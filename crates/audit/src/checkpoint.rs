//! Signed tree heads in the C2SP signed-note checkpoint format, built incrementally from the
//! previous checkpoint's frontier and the entries appended since.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mandate_crypto::{KeyError, SigningKey, sha256};
use mandate_store::{Store, StoreError, StoredCheckpoint};

use crate::merkle::{Hash, extend_frontier, root_from_frontier};

/// Entries read per store round trip while catching a checkpoint up.
const CATCH_UP_CHUNK: u64 = 10_000;

/// Signs checkpoints for one log origin with an Ed25519 key.
#[derive(Debug, Clone)]
pub struct CheckpointSigner {
    key: Arc<SigningKey>,
    origin: String,
    public: [u8; 32],
    key_id: [u8; 4],
}

impl CheckpointSigner {
    /// `origin` doubles as the signed-note key name, so it must be non-empty with no spaces or `+`.
    pub fn new(key: Arc<SigningKey>, origin: &str) -> Result<Self, KeyError> {
        let public: [u8; 32] = key
            .ed25519_public_bytes()
            .and_then(|raw| raw.try_into().ok())
            .ok_or_else(|| KeyError::BadJwk("checkpoint keys must be Ed25519".into()))?;
        if origin.is_empty() || origin.contains([' ', '+', '\n']) {
            return Err(KeyError::BadJwk(format!("invalid log origin {origin:?}")));
        }
        let mut id_input = origin.as_bytes().to_vec();
        id_input.extend_from_slice(&[0x0a, 0x01]);
        id_input.extend_from_slice(&public);
        let digest = sha256(&id_input);
        let key_id = [digest[0], digest[1], digest[2], digest[3]];
        Ok(Self { key, origin: origin.to_owned(), public, key_id })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The C2SP verifier key: `<name>+<hex key id>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut typed = vec![0x01];
        typed.extend_from_slice(&self.public);
        format!("{}+{}+{}", self.origin, hex::encode(self.key_id), STANDARD.encode(typed))
    }

    /// The signed note for a tree head.
    pub fn sign(&self, tree_size: u64, root: &Hash) -> Result<String, KeyError> {
        let body = format!("{}\n{}\n{}\n", self.origin, tree_size, STANDARD.encode(root));
        let signature = self.key.sign(body.as_bytes())?;
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(&signature);
        Ok(format!("{body}\n\u{2014} {} {}\n", self.origin, STANDARD.encode(blob)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sign(#[from] KeyError),
}

/// Signs and stores a checkpoint covering every entry currently in the log (or returns the
/// latest one if nothing was appended since).
pub async fn build_checkpoint(
    store: &dyn Store,
    signer: &CheckpointSigner,
    now_ms: i64,
) -> Result<StoredCheckpoint, CheckpointError> {
    let latest = store.latest_checkpoint().await?;
    let target = store.audit_len().await?;
    // Tiles first, so every signed size can be proven from them (and a log from before tiles
    // existed catches up here).
    crate::tiles::update_tiles(store, target).await?;
    if let Some(cp) = &latest
        && cp.tree_size == target
    {
        return Ok(cp.clone());
    }
    let (mut size, mut frontier) = latest.map_or((0, Vec::new()), |cp| (cp.tree_size, cp.frontier));
    while size < target {
        let end = (size + CATCH_UP_CHUNK).min(target);
        let leaves: Vec<Hash> = store.audit_entries(size, end).await?.iter().map(|e| e.leaf_hash).collect();
        if leaves.len() as u64 != end - size {
            return Err(StoreError::AuditChain(format!("entries {size}..{end} are not all present")).into());
        }
        frontier = extend_frontier(frontier, size, &leaves);
        size = end;
    }
    let root = root_from_frontier(&frontier);
    let checkpoint =
        StoredCheckpoint { tree_size: size, root, note: signer.sign(size, &root)?, frontier, created_at_ms: now_ms };
    store.insert_checkpoint(&checkpoint).await?;
    Ok(checkpoint)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mandate_crypto::Alg;

    use super::*;

    #[test]
    fn note_has_c2sp_shape_and_key_id() {
        let key = Arc::new(SigningKey::generate(Alg::EdDSA).unwrap());
        let signer = CheckpointSigner::new(key, "example.org/audit").unwrap();
        let note = signer.sign(3, &[7u8; 32]).unwrap();
        let (body, sig_line) = note.split_once("\n\n").unwrap();
        assert_eq!(body, format!("example.org/audit\n3\n{}", STANDARD.encode([7u8; 32])));
        let blob = sig_line.strip_prefix("\u{2014} example.org/audit ").unwrap().trim_end();
        let blob = STANDARD.decode(blob).unwrap();
        assert_eq!(blob.len(), 68);
        let vkey = signer.verifier_key();
        let parts: Vec<&str> = vkey.split('+').collect();
        assert_eq!(parts[0], "example.org/audit");
        assert_eq!(hex::decode(parts[1]).unwrap(), blob[..4]);
        assert!(CheckpointSigner::new(Arc::new(SigningKey::generate(Alg::ES256).unwrap()), "o").is_err());
        let ed = Arc::new(SigningKey::generate(Alg::EdDSA).unwrap());
        assert!(CheckpointSigner::new(ed, "has space").is_err());
    }
}
