//! DPoP (RFC 9449) at the token endpoint, for every grant: the request's one `DPoP` proof is
//! verified against `POST <token endpoint>`, its `jti` is spent in the same commit as the
//! issuance, and the issued token is bound to the proof's key (`cnf.jkt`). Also the server
//! nonces of RFC 9449 §8, which are random, per process and rotated every five minutes.

use mandate_core::{OAuthError, OAuthErrorCode};
use mandate_guard::dpop::{DEFAULT_LEEWAY_SECS, DEFAULT_MAX_AGE_SECS, DpopCheck, DpopError, replay_key};
use mandate_store::{Mutation, MutationError};
use parking_lot::Mutex;

use crate::Authz;

/// Proof algorithms accepted (AS metadata `dpop_signing_alg_values_supported`).
pub const SIGNING_ALGS: [&str; 2] = mandate_guard::dpop::SUPPORTED_ALGS;
/// How long one server nonce is current; the one before it is still accepted for as long.
pub const NONCE_PERIOD_SECS: i64 = 300;
/// How the store names a spent proof's entry when it refuses it again (`replay_key` gives
/// `dpop:<jkt>:<jti>`).
const REPLAYED_ENTRY: &str = "one-time identifier dpop:";

/// A verified proof's key and the one-time entry that spends it.
#[derive(Debug, Clone)]
pub struct DpopBinding {
    /// RFC 7638 thumbprint of the proof's key: the issued token's `cnf.jkt`.
    pub jkt: String,
    /// Commit this together with the issuance (see [`merge`]); it fails if the proof was used.
    pub replay: Mutation,
}

/// The DPoP binding of a token request: `None` without a proof (the token is a Bearer token),
/// the proof's key when exactly one valid proof came, `invalid_dpop_proof` otherwise (or
/// `use_dpop_nonce` when a nonce is required and the proof lacks the current one).
pub fn dpop_binding(authz: &Authz, proofs: &[String]) -> Result<Option<DpopBinding>, OAuthError> {
    let proof = match proofs {
        [] => return Ok(None),
        [one] => one,
        more => return Err(refusal(&DpopError::HeaderCount(more.len()))),
    };
    let now = authz.clock.now_secs();
    let htu = authz.config.token_endpoint();
    let mut check = DpopCheck::new("POST", &htu, now);
    (check.max_age_secs, check.leeway_secs) = (DEFAULT_MAX_AGE_SECS, DEFAULT_LEEWAY_SECS);
    // The nonce is checked here, not by the library: the previous nonce is still accepted.
    let verified = mandate_guard::dpop::verify_dpop_proof(proof, &check).map_err(|e| refusal(&e))?;
    if authz.config.dpop_nonce_required && !authz.dpop_nonces.accepts(verified.nonce.as_deref(), now) {
        return Err(refusal(&DpopError::UseNonce { presented: verified.nonce.is_some() }));
    }
    let replay = Mutation::ConsumeOnce {
        id: replay_key(&verified),
        expires_at_secs: verified.iat + DEFAULT_MAX_AGE_SECS + 2 * DEFAULT_LEEWAY_SECS,
    };
    Ok(Some(DpopBinding { jkt: verified.jkt, replay }))
}

/// The binding's thumbprint, for `AccessToken::jkt`.
pub fn jkt(binding: Option<&DpopBinding>) -> Option<&str> {
    binding.map(|b| b.jkt.as_str())
}

/// One mutation out of a grant's own (if any) and the proof's replay entry (if any): both are
/// committed with the issuance event, or neither.
pub fn merge(grant: Option<Mutation>, binding: Option<DpopBinding>) -> Option<Mutation> {
    match (grant, binding.map(|b| b.replay)) {
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => Some(one),
        (Some(Mutation::All(mut parts)), Some(replay)) => {
            parts.push(replay);
            Some(Mutation::All(parts))
        }
        (Some(grant), Some(replay)) => Some(Mutation::All(vec![grant, replay])),
    }
}

/// The answer when a commit with a DPoP replay entry was refused because the proof was spent
/// before; `None` when the refusal was about something else.
pub fn replayed(refused: &MutationError) -> Option<OAuthError> {
    match refused {
        MutationError::Conflict(what) if what.starts_with(REPLAYED_ENTRY) => {
            Some(OAuthError::new(OAuthErrorCode::InvalidDpopProof, "the DPoP proof was already used"))
        }
        _ => None,
    }
}

/// The nonce to send in a `DPoP-Nonce` header, when nonces are required.
pub fn nonce_to_send(authz: &Authz) -> Option<String> {
    authz.config.dpop_nonce_required.then(|| authz.dpop_nonces.current(authz.clock.now_secs()))
}

fn refusal(error: &DpopError) -> OAuthError {
    let code = match error {
        DpopError::UseNonce { .. } => OAuthErrorCode::UseDpopNonce,
        _ => OAuthErrorCode::InvalidDpopProof,
    };
    OAuthError::new(code, error.to_string())
}

/// Server nonces: 128 random bits each, a new one every [`NONCE_PERIOD_SECS`], the current and
/// the previous one accepted. Kept in memory: replicas each have their own, so a client that
/// talks to several replicas may be asked for a nonce again (it then simply retries).
#[derive(Debug, Default)]
pub struct NonceSource {
    state: Mutex<Option<NonceState>>,
}

#[derive(Debug)]
struct NonceState {
    period: i64,
    current: String,
    previous: Option<String>,
}

impl NonceSource {
    /// The nonce current at `now` (Unix seconds).
    pub fn current(&self, now: i64) -> String {
        let mut state = self.state.lock();
        Self::rotated(&mut state, now).current.clone()
    }

    /// Whether `presented` is the current or the previous nonce at `now`.
    pub fn accepts(&self, presented: Option<&str>, now: i64) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let mut state = self.state.lock();
        let state = Self::rotated(&mut state, now);
        let equal = |n: &str| mandate_crypto::constant_time_eq(n.as_bytes(), presented.as_bytes());
        equal(&state.current) || state.previous.as_deref().is_some_and(equal)
    }

    fn rotated(state: &mut Option<NonceState>, now: i64) -> &mut NonceState {
        let period = now.div_euclid(NONCE_PERIOD_SECS);
        let previous = match state.take() {
            // A clock that steps back keeps the nonce it has.
            Some(kept) if kept.period >= period => return state.insert(kept),
            Some(last) if last.period + 1 == period => Some(last.current),
            _ => None,
        };
        state.insert(NonceState { period, current: crate::new_jti(), previous })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_rotate_and_the_previous_one_is_still_accepted() {
        let period = |n: i64| n * NONCE_PERIOD_SECS;
        let nonces = NonceSource::default();
        let first = nonces.current(period(4));
        assert_eq!(nonces.current(period(4) + 1), first, "stable within a period");
        assert!(nonces.accepts(Some(&first), period(4) + 2));
        let second = nonces.current(period(5));
        assert_ne!(second, first);
        assert!(nonces.accepts(Some(&first), period(5)), "the previous period's nonce");
        assert!(nonces.accepts(Some(&second), period(5)));
        assert!(!nonces.accepts(Some(&first), period(6)), "two periods later");
        assert!(nonces.accepts(Some(&second), period(6)));
        assert!(!nonces.accepts(Some("made-up"), period(6)));
        assert!(!nonces.accepts(None, period(6)));
        let later = nonces.current(period(20));
        assert!(!nonces.accepts(Some(&second), period(20)), "a gap forgets both");
        assert!(nonces.accepts(Some(&later), period(20)));
    }

    #[test]
    fn merged_mutations_keep_every_part() {
        let once = |id: &str| Mutation::ConsumeOnce { id: id.into(), expires_at_secs: 1 };
        let binding = || Some(DpopBinding { jkt: "k".into(), replay: once("dpop:k:j") });
        assert!(merge(None, None).is_none());
        assert!(matches!(merge(Some(once("a")), None), Some(Mutation::ConsumeOnce { .. })));
        assert!(matches!(merge(None, binding()), Some(Mutation::ConsumeOnce { .. })));
        let Some(Mutation::All(parts)) = merge(Some(Mutation::All(vec![once("a"), once("b")])), binding()) else {
            panic!("expected a batch");
        };
        assert_eq!(parts.len(), 3);
        let Some(Mutation::All(parts)) = merge(Some(once("a")), binding()) else {
            panic!("expected a batch");
        };
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn only_a_spent_proof_is_a_dpop_replay() {
        let spent = MutationError::Conflict("one-time identifier dpop:abc:j1 was already used".into());
        assert_eq!(replayed(&spent).map(|e| e.code), Some(OAuthErrorCode::InvalidDpopProof));
        assert!(replayed(&MutationError::Conflict("one-time identifier id-jag:x:y".into())).is_none());
        assert!(replayed(&MutationError::NotFound("refresh token".into())).is_none());
    }
}
