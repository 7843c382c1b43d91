//! A bounded memory of tokens whose signature and fixed claims (`typ`, issuer, audience) were
//! verified, keyed by the token's SHA-256, so a token presented again skips the signature check
//! until it expires. Revocation, the DPoP proof and scope are still judged on every request.

use std::collections::HashMap;

use mandate_crypto::secret::sha256;
use parking_lot::Mutex;

use crate::verify::Principal;

/// The guard's default bound on remembered tokens.
pub const DEFAULT_VERIFIED_CAPACITY: usize = 10_000;
/// How long a verification is reused at most, even for a longer-lived token: a verification key
/// withdrawn from the issuer's set stops counting within this time.
const MAX_REUSE_SECS: i64 = 60;

struct Entry {
    principal: Principal,
    /// The last second (inclusive) the verification may be reused.
    until: i64,
}

pub(crate) struct VerifiedCache {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// The verified caller for `token`, if it was verified and is still within its lifetime.
    pub(crate) fn get(&self, token: &str, now: i64) -> Option<Principal> {
        let key = sha256(token.as_bytes());
        let mut entries = self.entries.lock();
        match entries.get(&key) {
            Some(entry) if now <= entry.until => Some(entry.principal.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verification valid through `valid_until` (the token's `exp` plus leeway).
    pub(crate) fn insert(&self, token: &str, principal: &Principal, valid_until: i64, now: i64) {
        if self.capacity == 0 {
            return;
        }
        let until = valid_until.min(now + MAX_REUSE_SECS);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, entry| now <= entry.until);
            // Still mostly full: start over rather than sweep again on every insert.
            if entries.len() >= self.capacity / 4 * 3 {
                entries.clear();
            }
        }
        entries.insert(sha256(token.as_bytes()), Entry { principal: principal.clone(), until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use mandate_core::ScopeSet;
    use serde_json::json;

    use super::*;

    fn principal() -> Principal {
        Principal {
            issuer: "https://as.example".into(),
            subject: "s".into(),
            client_id: "c".into(),
            scopes: ScopeSet::default(),
            owner: None,
            jti: "j".into(),
            iat: 100,
            exp: 200,
            jkt: None,
            actor: None,
            claims: json!({}),
        }
    }

    #[test]
    fn a_verification_is_reused_only_within_its_lifetime() {
        let cache = VerifiedCache::new(4);
        cache.insert("t", &principal(), 200, 100);
        assert_eq!(cache.get("t", 150), Some(principal()));
        assert_eq!(cache.get("t", 161), None, "reused past the bound on reuse");
        cache.insert("t", &principal(), 200, 190);
        assert_eq!(cache.get("t", 200), Some(principal()));
        assert_eq!(cache.get("t", 201), None, "reused past the token's expiry");
        assert_eq!(cache.get("other", 150), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = VerifiedCache::new(8);
        for i in 0..100 {
            cache.insert(&format!("t{i}"), &principal(), 200, 100);
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.get("t99", 100), Some(principal()));
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let cache = VerifiedCache::new(0);
        cache.insert("t", &principal(), 200, 100);
        assert_eq!(cache.get("t", 100), None);
    }
}
