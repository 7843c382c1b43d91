//! Security event tokens (RFC 8417) for revocations: who was revoked as an SSF subject
//! identifier, the CAEP event, and one signed SET per interested stream, returned as outbox
//! mutations so the caller commits them with the revocation itself.

use mandate_core::OAuthError;
use mandate_store::{Mutation, SsfEvent, SsfMutation};
use serde_json::{Value, json};

use super::streams::{Status, StreamConfig};
use super::{CREDENTIAL_CHANGE, SESSION_REVOKED, SET_TYP};
use crate::registry::RecordKind;
use crate::{Authz, new_jti, store_failure};

/// Whose tokens an event is about. Agents are named by their SPIFFE ID (a simple `uri`
/// subject); owners, clients and refresh-token families by complex subjects (`user`,
/// `application`, `session`), so equal names of different kinds cannot be confused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalSubject<'a> {
    Agent(&'a str),
    Owner(&'a str),
    Client(&'a str),
    Grant(&'a str),
    /// One token, by `jti` (SSF `jwt_id` format).
    Token(&'a str),
}

impl SignalSubject<'_> {
    /// The `sub_id` claim (RFC 9493 / SSF 1.0 §3).
    pub fn sub_id(&self, issuer: &str) -> Value {
        let opaque = |id: &str| json!({"format": "opaque", "id": id});
        match self {
            Self::Agent(spiffe_id) => json!({"format": "uri", "uri": spiffe_id}),
            Self::Owner(name) => json!({"format": "complex", "user": opaque(name)}),
            Self::Client(client_id) => json!({"format": "complex", "application": opaque(client_id)}),
            Self::Grant(family) => json!({"format": "complex", "session": opaque(family)}),
            Self::Token(jti) => json!({"format": "jwt_id", "iss": issuer, "jti": jti}),
        }
    }
}

/// One thing that happened, to be told to every stream that asked for its event type.
#[derive(Debug, Clone)]
pub struct Signal<'a> {
    pub subject: SignalSubject<'a>,
    pub event_type: &'static str,
    /// The event's own fields (`event_timestamp` is added).
    pub fields: Value,
    /// When it happened (Unix seconds): tokens of the subject issued until then are dead.
    pub event_timestamp: i64,
    /// The correlation id of the request that caused it (the SET `txn`).
    pub txn: &'a str,
}

impl<'a> Signal<'a> {
    /// CAEP `session-revoked` by an administrator or by policy (`initiating_entity`).
    pub fn session_revoked(subject: SignalSubject<'a>, at: i64, initiator: &str, reason: &str, txn: &'a str) -> Self {
        Self {
            subject,
            event_type: SESSION_REVOKED,
            fields: json!({"initiating_entity": initiator, "reason_admin": {"en": reason}}),
            event_timestamp: at,
            txn,
        }
    }
}

/// What deleting a registry record tells receivers: its tokens' sessions are revoked, and a
/// deleted client's credential is gone (CAEP `credential-change`, `change_type: delete`; the
/// closest CAEP `credential_type` for an application's own credential is `app`).
/// `spiffe_id` names the agent when `kind` is one.
pub fn deletion_signals<'a>(
    kind: RecordKind,
    key: &'a str,
    spiffe_id: &'a str,
    at: i64,
    txn: &'a str,
) -> Vec<Signal<'a>> {
    let why = format!("{} {key} was deleted", kind.as_str());
    let subject = match kind {
        RecordKind::Owner => SignalSubject::Owner(key),
        RecordKind::Agent => SignalSubject::Agent(spiffe_id),
        RecordKind::Client => SignalSubject::Client(key),
        RecordKind::Resource => return Vec::new(),
    };
    let mut signals = vec![Signal::session_revoked(subject, at, "admin", &why, txn)];
    if kind == RecordKind::Client {
        signals.push(Signal {
            subject,
            event_type: CREDENTIAL_CHANGE,
            fields: json!({"credential_type": "app", "change_type": "delete", "friendly_name": key,
                "initiating_entity": "admin", "reason_admin": {"en": why}}),
            event_timestamp: at,
            txn,
        });
    }
    signals
}

/// `mutation` together with the outbox entries of `signals`, to commit as one.
pub async fn with_signals(authz: &Authz, mutation: Mutation, signals: &[Signal<'_>]) -> Result<Mutation, OAuthError> {
    let mut all = vec![mutation];
    for signal in signals {
        all.extend(enqueue(authz, signal).await?);
        // An owner's sessions ending is also an OpenID Connect back-channel logout.
        if let (SignalSubject::Owner(owner), SESSION_REVOKED) = (signal.subject, signal.event_type) {
            all.extend(super::logout::enqueue(authz, owner).await?);
        }
    }
    Ok(if all.len() == 1 { all.remove(0) } else { Mutation::All(all) })
}

/// One outbox entry per live stream that asked for the signal's event type.
pub async fn enqueue(authz: &Authz, signal: &Signal<'_>) -> Result<Vec<Mutation>, OAuthError> {
    let streams = authz.store.ssf_streams().await.map_err(store_failure)?;
    let mut entries = Vec::new();
    for stored in streams {
        let Ok(config) = StreamConfig::parse(&stored.config) else {
            tracing::error!(stream = %stored.stream_id, "stored stream configuration is unreadable");
            continue;
        };
        // Paused streams keep collecting (SSF 1.0 §8.1.2.1); disabled ones do not.
        if Status::parse(&stored.status) == Some(Status::Disabled)
            || !config.events_delivered.iter().any(|e| e == signal.event_type)
        {
            continue;
        }
        let mut fields = signal.fields.clone();
        if let Some(object) = fields.as_object_mut() {
            object.insert("event_timestamp".into(), signal.event_timestamp.into());
        }
        let sub_id = signal.subject.sub_id(&authz.config.issuer);
        entries.push(outbox_entry(authz, &config, signal.txn, sub_id, signal.event_type, fields)?);
    }
    Ok(entries)
}

/// A SET for `config`'s receiver as an outbox insert. Its claims are stored unsigned and
/// without `iss`: [`sign_set`] completes them when the server delivers them.
pub(crate) fn outbox_entry(
    authz: &Authz,
    config: &StreamConfig,
    txn: &str,
    sub_id: Value,
    event_type: &str,
    fields: Value,
) -> Result<Mutation, OAuthError> {
    let jti = new_jti();
    let claims = json!({
        "jti": jti,
        "iat": authz.clock.now_secs(),
        "aud": config.aud,
        "txn": txn,
        "sub_id": sub_id,
        "events": { event_type: fields },
    });
    let now_ms = authz.clock.now_ms();
    Ok(Mutation::Ssf(SsfMutation::Enqueue(SsfEvent {
        stream_id: config.stream_id.clone(),
        jti,
        claims: claims.to_string(),
        created_at_ms: now_ms,
        attempts: 0,
        next_attempt_ms: now_ms,
    })))
}

/// Signs queued claims as this server's SET (`typ: secevent+jwt`, `iss` = this issuer).
pub fn sign_set(authz: &Authz, claims: &str) -> Result<String, OAuthError> {
    let mut claims: Value = serde_json::from_str(claims)
        .map_err(|e| OAuthError::server_error(format!("queued event is unreadable: {e}")))?;
    let object = claims.as_object_mut().ok_or_else(|| OAuthError::server_error("queued event is not an object"))?;
    object.insert("iss".into(), Value::String(authz.config.issuer.clone()));
    let key = authz.keys.signer(authz.config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    mandate_crypto::jose::sign_jwt(&key, SET_TYP, &claims).map_err(|e| OAuthError::server_error(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subjects_of_different_kinds_never_collide() {
        let same = "alice";
        let ids = [
            SignalSubject::Agent(same).sub_id("https://as"),
            SignalSubject::Owner(same).sub_id("https://as"),
            SignalSubject::Client(same).sub_id("https://as"),
            SignalSubject::Grant(same).sub_id("https://as"),
            SignalSubject::Token(same).sub_id("https://as"),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(ids[1], json!({"format": "complex", "user": {"format": "opaque", "id": "alice"}}));
    }
}
