//! Console sessions: a 256-bit random cookie, kept server-side only as its SHA-256, with idle
//! and absolute expiry, a per-session CSRF token, and a per-name sign-in lockout. Bounded maps:
//! a flood of sign-ins evicts the least recently used session, never grows memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use mandate_crypto::{constant_time_eq, hash_secret, random_token};

/// A session unused this long is gone.
pub(crate) const IDLE_MS: i64 = 30 * 60 * 1000;
/// A session older than this is gone, used or not (also the cookie's `Max-Age`).
pub(crate) const ABSOLUTE_MS: i64 = 8 * 60 * 60 * 1000;
/// Live sessions kept per process.
const MAX_SESSIONS: usize = 10_000;
/// Names whose failed sign-ins are remembered per process.
const MAX_FAILURE_RECORDS: usize = 10_000;
/// Consecutive failed sign-ins for one name before that name is locked out (as the code flow).
pub(crate) const MAX_FAILURES: u32 = 5;
/// How long a locked-out name stays locked after its last failure.
pub(crate) const LOCKOUT_MS: i64 = 15 * 60 * 1000;

/// Who a console session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Who {
    /// The holder of the admin credential: sees everything, decides no owner's approvals.
    Admin,
    /// A signed-in owner: sees and acts on their own agents, clients and approvals only.
    Owner(String),
}

impl Who {
    pub(crate) fn label(&self) -> String {
        match self {
            Who::Admin => "the administrator".to_owned(),
            Who::Owner(name) => name.clone(),
        }
    }

    /// Whether this viewer may see things belonging to `owner`.
    pub(crate) fn sees(&self, owner: &str) -> bool {
        match self {
            Who::Admin => true,
            Who::Owner(name) => name == owner,
        }
    }
}

/// What a request learns from its session cookie.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub who: Who,
    pub csrf: String,
}

impl Session {
    /// The form's CSRF token is this session's (constant-time compare).
    pub(crate) fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|token| constant_time_eq(token.as_bytes(), self.csrf.as_bytes()))
    }
}

struct Entry {
    session: Session,
    created_ms: i64,
    seen_ms: i64,
}

impl Entry {
    fn live(&self, now_ms: i64) -> bool {
        now_ms - self.seen_ms < IDLE_MS && now_ms - self.created_ms < ABSOLUTE_MS
    }
}

struct Failures {
    count: u32,
    last_ms: i64,
}

#[derive(Default)]
struct Maps {
    /// Keyed by the SHA-256 (hex) of the cookie value.
    sessions: HashMap<String, Entry>,
    /// Keyed by sign-in name (`owner:<name>` or `admin`).
    failures: HashMap<String, Failures>,
}

/// The console's sessions and sign-in lockouts (per process).
#[derive(Default)]
pub struct Sessions {
    maps: Mutex<Maps>,
}

impl Sessions {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        // The maps hold no invariant a panicking holder could break halfway.
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session; returns the cookie value (never stored in clear) and the session.
    pub(crate) fn create(&self, who: Who, now_ms: i64) -> (String, Session) {
        let cookie = random_token("");
        let session = Session { who, csrf: random_token("") };
        let mut maps = self.maps();
        if maps.sessions.len() >= MAX_SESSIONS {
            maps.sessions.retain(|_, entry| entry.live(now_ms));
        }
        if maps.sessions.len() >= MAX_SESSIONS {
            let oldest = maps.sessions.iter().min_by_key(|(_, entry)| entry.seen_ms).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                maps.sessions.remove(&oldest);
            }
        }
        let entry = Entry { session: session.clone(), created_ms: now_ms, seen_ms: now_ms };
        maps.sessions.insert(hash_secret(&cookie), entry);
        (cookie, session)
    }

    /// The live session behind a cookie value; refreshes its idle timer, forgets it if expired.
    pub(crate) fn get(&self, cookie: &str, now_ms: i64) -> Option<Session> {
        let key = hash_secret(cookie);
        let mut maps = self.maps();
        let live = maps.sessions.get(&key).map(|entry| entry.live(now_ms))?;
        if !live {
            maps.sessions.remove(&key);
            return None;
        }
        let entry = maps.sessions.get_mut(&key)?;
        entry.seen_ms = now_ms;
        Some(entry.session.clone())
    }

    /// Ends the session behind a cookie value.
    pub(crate) fn remove(&self, cookie: &str) {
        self.maps().sessions.remove(&hash_secret(cookie));
    }

    /// Whether `name` has failed too often, too recently.
    pub(crate) fn locked_out(&self, name: &str, now_ms: i64) -> bool {
        self.maps().failures.get(name).is_some_and(|f| f.count >= MAX_FAILURES && now_ms - f.last_ms < LOCKOUT_MS)
    }

    /// Counts a failed sign-in for `name`; returns the consecutive failures so far.
    pub(crate) fn record_failure(&self, name: &str, now_ms: i64) -> u32 {
        let mut maps = self.maps();
        if maps.failures.len() >= MAX_FAILURE_RECORDS && !maps.failures.contains_key(name) {
            maps.failures.retain(|_, f| now_ms - f.last_ms < LOCKOUT_MS);
            if maps.failures.len() >= MAX_FAILURE_RECORDS {
                let oldest = maps.failures.iter().min_by_key(|(_, f)| f.last_ms).map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    maps.failures.remove(&oldest);
                }
            }
        }
        let failures = maps.failures.entry(name.to_owned()).or_insert(Failures { count: 0, last_ms: now_ms });
        // A lockout that has run out starts the count afresh.
        if now_ms - failures.last_ms >= LOCKOUT_MS {
            failures.count = 0;
        }
        failures.count += 1;
        failures.last_ms = now_ms;
        failures.count
    }

    /// A successful sign-in clears the name's failures.
    pub(crate) fn clear_failures(&self, name: &str) {
        self.maps().failures.remove(name);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_absolutely() {
        let sessions = Sessions::default();
        let (cookie, session) = sessions.create(Who::Owner("alice".into()), 0);
        assert_eq!(cookie.len(), 43, "256 bits, base64url");
        assert!(!sessions.maps().sessions.contains_key(&cookie), "only the hash is kept");
        assert_eq!(sessions.get(&cookie, IDLE_MS - 1).unwrap().who, session.who);
        // Kept alive by use, until the absolute limit.
        let mut now = IDLE_MS - 1;
        while now + IDLE_MS / 2 < ABSOLUTE_MS {
            now += IDLE_MS / 2;
            assert!(sessions.get(&cookie, now).is_some(), "{now}");
        }
        assert!(sessions.get(&cookie, ABSOLUTE_MS).is_none());
        let (idle, _) = sessions.create(Who::Admin, 0);
        assert!(sessions.get(&idle, IDLE_MS).is_none());
        assert!(sessions.get("not a session", 0).is_none());
    }

    #[test]
    fn logout_forgets_the_session() {
        let sessions = Sessions::default();
        let (cookie, _) = sessions.create(Who::Admin, 0);
        sessions.remove(&cookie);
        assert!(sessions.get(&cookie, 1).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let sessions = Sessions::default();
        let (_, session) = sessions.create(Who::Admin, 0);
        assert!(session.csrf_matches(Some(&session.csrf.clone())));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&session.csrf[1..])));
    }

    #[test]
    fn five_failures_lock_a_name_for_a_while() {
        let sessions = Sessions::default();
        for attempt in 1..MAX_FAILURES {
            assert_eq!(sessions.record_failure("owner:alice", 0), attempt);
            assert!(!sessions.locked_out("owner:alice", 0));
        }
        sessions.record_failure("owner:alice", 0);
        assert!(sessions.locked_out("owner:alice", LOCKOUT_MS - 1));
        assert!(!sessions.locked_out("owner:bob", 0), "per name");
        assert!(!sessions.locked_out("owner:alice", LOCKOUT_MS));
        assert_eq!(sessions.record_failure("owner:alice", LOCKOUT_MS), 1, "the count starts afresh");
        sessions.clear_failures("owner:alice");
        assert!(!sessions.maps().failures.contains_key("owner:alice"));
    }

    #[test]
    fn the_session_map_is_bounded() {
        let sessions = Sessions::default();
        let (first, _) = sessions.create(Who::Admin, 0);
        for i in 1..=MAX_SESSIONS as i64 {
            sessions.create(Who::Admin, i);
        }
        assert_eq!(sessions.maps().sessions.len(), MAX_SESSIONS);
        assert!(sessions.get(&first, MAX_SESSIONS as i64).is_none(), "the least recently used went first");
    }
}
