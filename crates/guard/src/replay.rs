//! Single use of DPoP proofs at a resource server (RFC 9449 §11.1): each proof's `jti` is
//! remembered for as long as the proof could still be accepted, and a second use is refused.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

/// Default bound on remembered proofs. At the default proof lifetime (about 5 minutes) this
/// sustains roughly 300 DPoP requests a second; beyond it new proofs are refused, never let through.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;
/// How often, at most, an insert sweeps out expired entries when the cache is not full.
const PURGE_INTERVAL_SECS: i64 = 30;

/// Where used proofs are recorded. The default is in memory, which suits one resource-server
/// process; replicas behind one URL need a shared implementation.
#[async_trait]
pub trait ReplayCache: Send + Sync {
    /// Records `key` as used until `expires_at` (Unix seconds). `Ok(false)` if it is already
    /// recorded and not yet expired; `Err` if it cannot be recorded (the proof is then refused).
    async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, String>;
}

/// A bounded in-memory [`ReplayCache`].
#[derive(Debug)]
pub struct MemoryReplayCache {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Replay key → the last second at which its proof could be accepted.
    entries: HashMap<String, i64>,
    next_purge: i64,
}

impl MemoryReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, state: Mutex::new(State::default()) }
    }

    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

#[async_trait]
impl ReplayCache for MemoryReplayCache {
    async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, String> {
        let mut state = self.state.lock();
        // Sweeping on every insert would cost a full scan per request; sweeping when full or
        // every few seconds keeps the map bounded at the same cost as the inserts.
        if state.entries.len() >= self.capacity || now >= state.next_purge {
            state.entries.retain(|_, until| *until >= now);
            state.next_purge = now + PURGE_INTERVAL_SECS;
        }
        if state.entries.get(key).is_some_and(|until| *until >= now) {
            return Ok(false);
        }
        if state.entries.len() >= self.capacity {
            return Err("too many recent DPoP proofs to remember another; try again shortly".into());
        }
        state.entries.insert(key.to_owned(), expires_at);
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_refused_until_it_expires() {
        let cache = MemoryReplayCache::default();
        assert!(cache.first_use("a", 100, 10).await.unwrap());
        assert!(!cache.first_use("a", 100, 50).await.unwrap());
        assert!(!cache.first_use("a", 100, 100).await.unwrap(), "still acceptable at its last second");
        assert!(cache.first_use("a", 300, 101).await.unwrap(), "expired entries do not block");
        assert!(cache.first_use("b", 100, 101).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_cache_purges_then_refuses_rather_than_forgets() {
        let cache = MemoryReplayCache::new(2);
        assert!(cache.first_use("a", 20, 0).await.unwrap());
        assert!(cache.first_use("b", 100, 0).await.unwrap());
        assert!(cache.first_use("c", 100, 1).await.is_err(), "full of live entries");
        assert!(!cache.first_use("a", 20, 1).await.unwrap(), "nothing was evicted");
        assert!(cache.first_use("c", 100, 21).await.unwrap(), "the expired entry made room");
        assert_eq!(cache.len(), 2);
    }
}
