//! "Verified up to checkpoint N": the stored log checked with the independent verifier
//! (`mandate-audit-verify`) — hash chain, Merkle root, signed note — remembering the verified
//! prefix so each page view only checks the entries added since.

use std::str::FromStr;

use mandate_audit_verify::{Chain, VerifierKey, verify_note};
use mandate_store::Store;
use serde_json::Value;

/// Entries read per store round trip.
const PAGE: u64 = 1000;

/// What the audit page says about the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogStatus {
    /// Every entry up to the latest signed checkpoint of this size verified.
    Verified(u64),
    /// No checkpoint has been signed yet.
    NoCheckpoint,
    /// Verification failed: why.
    Failed(String),
}

/// The log's verified prefix, shared by every page view of this process.
#[derive(Default)]
pub(crate) struct VerifiedLog {
    prefix: tokio::sync::Mutex<Chain>,
}

impl VerifiedLog {
    /// Verifies the entries up to the latest checkpoint against `verifier_key` (the audit key's
    /// C2SP verifier key). A failure keeps the last good prefix, so it is found again next time.
    pub(crate) async fn check(&self, store: &dyn Store, verifier_key: &str) -> LogStatus {
        match self.extend(store, verifier_key).await {
            Ok(Some(size)) => LogStatus::Verified(size),
            Ok(None) => LogStatus::NoCheckpoint,
            Err(why) => {
                tracing::error!(why, "the audit log failed verification");
                LogStatus::Failed(why)
            }
        }
    }

    async fn extend(&self, store: &dyn Store, verifier_key: &str) -> Result<Option<u64>, String> {
        let key = VerifierKey::from_str(verifier_key).map_err(|e| format!("the audit verifier key is invalid: {e}"))?;
        let Some(latest) = store.latest_checkpoint().await.map_err(|e| format!("reading the checkpoint: {e}"))? else {
            return Ok(None);
        };
        let checkpoint = verify_note(&latest.note, &key).map_err(|e| format!("the latest checkpoint: {e}"))?;
        if checkpoint.origin != key.name() {
            return Err(format!("the latest checkpoint names origin {:?}, not this log", checkpoint.origin));
        }
        let mut verified = self.prefix.lock().await;
        let done = verified.size();
        if checkpoint.size < done {
            return Err(format!(
                "the latest checkpoint covers {} entries, fewer than the {done} already verified: entries were removed",
                checkpoint.size
            ));
        }
        let mut next = verified.clone();
        let mut seq = done;
        while seq < checkpoint.size {
            let to = checkpoint.size.min(seq.saturating_add(PAGE));
            let entries = store.audit_entries(seq, to).await.map_err(|e| format!("reading entries: {e}"))?;
            if entries.is_empty() {
                return Err(format!("entry {seq} is missing"));
            }
            for entry in entries {
                let event: Value = serde_json::from_str(&entry.canonical)
                    .map_err(|_| format!("entry {seq} is not valid JSON: the log was altered"))?;
                next.append(&event).map_err(|e| format!("{e}: the log was altered"))?;
                seq += 1;
            }
        }
        if next.root() != checkpoint.root {
            return Err(format!(
                "the Merkle root of the first {} entries does not match the signed checkpoint: the log was altered",
                checkpoint.size
            ));
        }
        *verified = next;
        Ok(Some(checkpoint.size))
    }
}
