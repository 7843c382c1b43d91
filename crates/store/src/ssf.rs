//! Shared Signals Framework state: receivers' streams and the outbox of signed security event
//! tokens. The transmitter logic lives in `mandate_authz::ssf`; here are only the records, the
//! SQL both backends share and the statements of [`SsfMutation`].

use crate::Result;
use crate::read::Columns;
use crate::write::{Step, Value};

/// One receiver's stream; `config` is the SSF stream configuration as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsfStream {
    pub stream_id: String,
    /// The client that created the stream (`None`: created with the admin credential).
    pub client_id: Option<String>,
    pub config: String,
    /// `enabled`, `paused` or `disabled`.
    pub status: String,
    pub created_at_ms: i64,
}

/// A security event token waiting in a stream's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsfEvent {
    pub stream_id: String,
    pub jti: String,
    /// The SET's claims as JSON, without `iss`: the server that delivers it signs it as its
    /// own issuer (a CLI process writing the outbox does not know the public issuer URL).
    pub claims: String,
    pub created_at_ms: i64,
    /// Push deliveries tried so far.
    pub attempts: i64,
    /// No push delivery before this time (backoff).
    pub next_attempt_ms: i64,
}

/// An OpenID Connect Back-Channel Logout token waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutEvent {
    pub jti: String,
    pub client_id: String,
    /// The client's `backchannel_logout_uri` when the token was queued.
    pub endpoint_url: String,
    /// The logout token's claims as JSON; `iss`, `iat` and `exp` are set when it is signed.
    pub claims: String,
    pub created_at_ms: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
}

/// State changes of the transmitter; each is a [`crate::Mutation::Ssf`].
#[derive(Debug, Clone)]
pub enum SsfMutation {
    CreateStream(SsfStream),
    /// Replace a stream's configuration and status; fails if it is gone.
    UpdateStream(SsfStream),
    /// Delete a stream and (by cascade) its outbox.
    DeleteStream(String),
    Enqueue(SsfEvent),
    /// Remove an event once delivered or acknowledged; an unknown one is no error (acks repeat).
    Drop {
        stream_id: String,
        jti: String,
    },
    /// Record a failed push attempt and when to try again; fails if the event is gone.
    Retry {
        stream_id: String,
        jti: String,
        attempts: i64,
        next_attempt_ms: i64,
    },
    EnqueueLogout(LogoutEvent),
    /// Remove a delivered (or abandoned) logout token; an unknown one is no error.
    DropLogout(String),
    RetryLogout {
        jti: String,
        attempts: i64,
        next_attempt_ms: i64,
    },
}

pub(crate) const STREAMS: &str =
    "SELECT stream_id, client_id, config, status, created_at_ms FROM ssf_streams ORDER BY created_at_ms, stream_id";
pub(crate) const EVENTS: &str = "SELECT stream_id, jti, claims, created_at_ms, attempts, next_attempt_ms \
    FROM ssf_events WHERE stream_id = $1 ORDER BY created_at_ms, jti LIMIT $2";

pub(crate) const LOGOUTS: &str = "SELECT jti, client_id, endpoint_url, claims, created_at_ms, attempts, \
    next_attempt_ms FROM logout_outbox ORDER BY created_at_ms, jti LIMIT $1";

pub(crate) fn logout(row: &dyn Columns) -> Result<LogoutEvent> {
    Ok(LogoutEvent {
        jti: row.text(0)?,
        client_id: row.text(1)?,
        endpoint_url: row.text(2)?,
        claims: row.text(3)?,
        created_at_ms: row.int(4)?,
        attempts: row.int(5)?,
        next_attempt_ms: row.int(6)?,
    })
}

pub(crate) fn stream(row: &dyn Columns) -> Result<SsfStream> {
    Ok(SsfStream {
        stream_id: row.text(0)?,
        client_id: row.opt_text(1)?,
        config: row.text(2)?,
        status: row.text(3)?,
        created_at_ms: row.int(4)?,
    })
}

pub(crate) fn event(row: &dyn Columns) -> Result<SsfEvent> {
    Ok(SsfEvent {
        stream_id: row.text(0)?,
        jti: row.text(1)?,
        claims: row.text(2)?,
        created_at_ms: row.int(3)?,
        attempts: row.int(4)?,
        next_attempt_ms: row.int(5)?,
    })
}

pub(crate) fn step(mutation: &SsfMutation) -> Step<'_> {
    use Value::*;
    match mutation {
        SsfMutation::CreateStream(s) => Step::insert(
            "INSERT INTO ssf_streams (stream_id, client_id, config, status, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
            format!("stream {}", s.stream_id),
            vec![Text(&s.stream_id), OptText(&s.client_id), Text(&s.config), Text(&s.status), Int(s.created_at_ms)],
        ),
        SsfMutation::UpdateStream(s) => Step::update(
            "UPDATE ssf_streams SET config = $1, status = $2 WHERE stream_id = $3",
            format!("stream {}", s.stream_id),
            vec![Text(&s.config), Text(&s.status), Text(&s.stream_id)],
        ),
        SsfMutation::DeleteStream(id) => {
            Step::delete("DELETE FROM ssf_streams WHERE stream_id = $1", format!("stream {id}"), id)
        }
        SsfMutation::Enqueue(e) => Step::insert(
            "INSERT INTO ssf_events (stream_id, jti, claims, created_at_ms, attempts, next_attempt_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            format!("event {} of stream {}", e.jti, e.stream_id),
            vec![
                Text(&e.stream_id),
                Text(&e.jti),
                Text(&e.claims),
                Int(e.created_at_ms),
                Int(e.attempts),
                Int(e.next_attempt_ms),
            ],
        ),
        // An insert-kind step: deleting nothing (an event acknowledged twice) is not a refusal.
        SsfMutation::Drop { stream_id, jti } => Step::insert(
            "DELETE FROM ssf_events WHERE stream_id = $1 AND jti = $2",
            format!("event {jti} of stream {stream_id}"),
            vec![Text(stream_id), Text(jti)],
        ),
        SsfMutation::Retry { stream_id, jti, attempts, next_attempt_ms } => Step::update(
            "UPDATE ssf_events SET attempts = $1, next_attempt_ms = $2 WHERE stream_id = $3 AND jti = $4",
            format!("event {jti} of stream {stream_id}"),
            vec![Int(*attempts), Int(*next_attempt_ms), Text(stream_id), Text(jti)],
        ),
        SsfMutation::EnqueueLogout(l) => Step::insert(
            "INSERT INTO logout_outbox (jti, client_id, endpoint_url, claims, created_at_ms, attempts, \
             next_attempt_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            format!("logout token {}", l.jti),
            vec![
                Text(&l.jti),
                Text(&l.client_id),
                Text(&l.endpoint_url),
                Text(&l.claims),
                Int(l.created_at_ms),
                Int(l.attempts),
                Int(l.next_attempt_ms),
            ],
        ),
        // Insert-kind, like `Drop`: a token already gone is not a refusal.
        SsfMutation::DropLogout(jti) => {
            Step::insert("DELETE FROM logout_outbox WHERE jti = $1", format!("logout token {jti}"), vec![Text(jti)])
        }
        SsfMutation::RetryLogout { jti, attempts, next_attempt_ms } => Step::update(
            "UPDATE logout_outbox SET attempts = $1, next_attempt_ms = $2 WHERE jti = $3",
            format!("logout token {jti}"),
            vec![Int(*attempts), Int(*next_attempt_ms), Text(jti)],
        ),
    }
}
