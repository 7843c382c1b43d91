//! The co-located server's own token keys as a guard [`KeySource`]: read from the shared
//! keyring, re-read from the store when a token names a key this process has not loaded yet
//! (a rotation done by the server process), at most once a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use mandate_authz::Authz;
use mandate_crypto::PublicKey;
use mandate_guard::KeySource;

/// How often an unknown `kid` may trigger a store read.
const MIN_REFRESH_INTERVAL_MS: i64 = 1000;

pub struct KeyringKeys {
    authz: Authz,
    last_refresh_ms: AtomicI64,
}

impl KeyringKeys {
    pub fn new(authz: Authz) -> Self {
        Self { authz, last_refresh_ms: AtomicI64::new(i64::MIN) }
    }
}

#[async_trait]
impl KeySource for KeyringKeys {
    async fn keys(&self, issuer: &str) -> Result<Arc<Vec<PublicKey>>, String> {
        if issuer != self.authz.config.issuer {
            return Err(format!("no keys for issuer {issuer}"));
        }
        Ok(self.authz.keys.published())
    }

    async fn refresh(&self, issuer: &str) -> Result<Option<Arc<Vec<PublicKey>>>, String> {
        let now = self.authz.clock.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= MIN_REFRESH_INTERVAL_MS;
        // Only the caller that wins the swap reads the store; the others wait for the next window.
        if issuer != self.authz.config.issuer
            || !due
            || self.last_refresh_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return Ok(None);
        }
        self.authz.keys.refresh(self.authz.store.as_ref(), now).await.map_err(|e| e.to_string())?;
        Ok(Some(self.authz.keys.published()))
    }
}
