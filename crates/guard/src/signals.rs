//! Revocation signals for resource servers away from Mandate's store: a Shared Signals
//! receiver that verifies CAEP security event tokens (pushed to [`receive_push`], or polled every
//! [`POLL_INTERVAL`]) and refuses tokens of revoked subjects issued at or before the event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::Clock;
use mandate_crypto::jose::verify_set;
use mandate_crypto::{JwtError, VerifyOptions, constant_time_eq};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::verify::{GRANT_CLAIM, KeySource, Principal, RevocationCheck};

pub const SET_TYP: &str = "secevent+jwt";
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// How often the poller asks the transmitter for events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A revocation is forgotten once every token it could refuse has expired anyway (Mandate's
/// longest token lifetime plus leeway).
pub const REMEMBER_SECS: i64 = 3600 + 120;
/// Revoked subjects kept at most; past it new signals are refused (and reported) rather than
/// growing memory without bound.
pub const MAX_REVOKED: usize = 1_000_000;
const LEEWAY_SECS: i64 = 60;
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a SET was not taken; `code` is the RFC 8935 §2.3 error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("{code}: {description}")]
    Invalid { code: &'static str, description: String },
    /// The transmitter's keys could not be had just now: try again later.
    #[error("temporarily unable to verify: {0}")]
    Transient(String),
}

impl SetError {
    fn invalid(code: &'static str, description: impl Into<String>) -> Self {
        Self::Invalid { code, description: description.into() }
    }

    /// The `setErrs` / push error body.
    pub fn body(&self) -> Value {
        match self {
            Self::Invalid { code, description } => json!({"err": code, "description": description}),
            Self::Transient(d) => json!({"err": "invalid_key", "description": d}),
        }
    }
}

/// The revocation state a stream has told this receiver, as a [`RevocationCheck`].
pub struct SignalRevocations {
    issuer: String,
    audience: String,
    keys: Arc<dyn KeySource>,
    clock: Arc<dyn Clock>,
    /// What a push must carry in `Authorization` (the stream's `authorization_header`).
    push_authorization: Option<String>,
    /// Subject key (see [`subject_key`]) → latest event time (Unix seconds).
    revoked: Mutex<HashMap<String, i64>>,
}

impl SignalRevocations {
    /// A receiver of the stream whose SETs `issuer` signs for `audience` (the stream's `aud`).
    pub fn new(issuer: &str, audience: &str, keys: Arc<dyn KeySource>, clock: Arc<dyn Clock>) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys,
            clock,
            push_authorization: None,
            revoked: Mutex::default(),
        }
    }

    pub fn with_push_authorization(mut self, value: impl Into<String>) -> Self {
        self.push_authorization = Some(value.into());
        self
    }

    /// Verifies a SET (typ, signature, iss, aud, no exp/sub) and records what it revokes.
    /// Returns its `jti`.
    pub async fn receive(&self, set: &str) -> Result<String, SetError> {
        let keys = self.keys.keys(&self.issuer).await.map_err(SetError::Transient)?;
        let claims = match self.verify(set, &keys) {
            Err(JwtError::UnknownKey(_)) => match self.keys.refresh(&self.issuer).await {
                Ok(Some(fresh)) => self.verify(set, &fresh),
                Ok(None) => Err(JwtError::UnknownKey(None)),
                Err(e) => return Err(SetError::Transient(e)),
            },
            other => other,
        }
        .map_err(refusal)?;
        let jti =
            claims.get("jti").and_then(Value::as_str).ok_or_else(|| SetError::invalid("invalid_request", "no jti"))?;
        self.record(&claims)?;
        Ok(jti.to_owned())
    }

    fn verify(&self, set: &str, keys: &[mandate_crypto::PublicKey]) -> Result<Value, JwtError> {
        let options = VerifyOptions {
            typ: &[SET_TYP],
            typ_optional: false,
            issuer: Some(&self.issuer),
            audience: &[&self.audience],
            now: self.clock.now_secs(),
            leeway_secs: LEEWAY_SECS,
        };
        verify_set(set, keys, &options)
    }

    /// Takes the revocation a verified SET carries; other events are accepted and ignored.
    fn record(&self, claims: &Value) -> Result<(), SetError> {
        let Some(events) = claims.get("events").and_then(Value::as_object) else {
            return Err(SetError::invalid("invalid_request", "events is missing"));
        };
        let revoking = events.iter().find(|(kind, fields)| revokes(kind, fields));
        let Some((_, fields)) = revoking else { return Ok(()) };
        let key = claims.get("sub_id").and_then(|s| subject_key(s, &self.issuer));
        let key =
            key.ok_or_else(|| SetError::invalid("invalid_request", "sub_id names no subject this receiver knows"))?;
        let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or_default();
        let at = fields.get("event_timestamp").and_then(Value::as_i64).unwrap_or(iat);
        let now = self.clock.now_secs();
        let mut revoked = self.revoked.lock();
        revoked.retain(|_, t| *t > now - REMEMBER_SECS);
        if revoked.len() >= MAX_REVOKED && !revoked.contains_key(&key) {
            tracing::error!("too many revoked subjects remembered; refusing a signal");
            return Err(SetError::Transient("this receiver is full".into()));
        }
        let entry = revoked.entry(key).or_insert(at);
        *entry = (*entry).max(at);
        Ok(())
    }

    /// Polls forever (every [`POLL_INTERVAL`]) at the stream's RFC 8936 endpoint, sending
    /// `authorization` (e.g. `Bearer …` or `Basic …`) with each request.
    pub fn spawn_poller(
        self: &Arc<Self>,
        endpoint_url: &str,
        authorization: &str,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(POLL_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let (this, url, auth) = (Arc::clone(self), endpoint_url.to_owned(), authorization.to_owned());
        Ok(tokio::spawn(async move {
            let mut pending = Replies::default();
            loop {
                match this.poll_once(&client, &url, &auth, &pending).await {
                    Ok((next, more)) => {
                        pending = next;
                        if more {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "polling shared signals failed"),
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }))
    }

    /// One poll: sends the previous round's acknowledgements and errors, takes the new SETs.
    /// Returns what to acknowledge next time and whether more events are waiting.
    pub async fn poll_once(
        &self,
        client: &reqwest::Client,
        url: &str,
        authorization: &str,
        replies: &Replies,
    ) -> Result<(Replies, bool), String> {
        let body = json!({"ack": replies.ack, "setErrs": replies.errors, "returnImmediately": true, "maxEvents": 100});
        let response = client
            .post(url)
            .header(header::AUTHORIZATION, authorization)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("the transmitter answered HTTP {}", response.status()));
        }
        let answer: Value = response.json().await.map_err(|e| e.without_url().to_string())?;
        let more = answer.get("moreAvailable").and_then(Value::as_bool).unwrap_or(false);
        let mut next = Replies::default();
        for (jti, set) in answer.get("sets").and_then(Value::as_object).into_iter().flatten() {
            let Some(set) = set.as_str() else { continue };
            match self.receive(set).await {
                Ok(_) => next.ack.push(jti.clone()),
                // Not acknowledged: it comes again and is tried again.
                Err(SetError::Transient(e)) => tracing::warn!(error = %e, "a signal could not be verified yet"),
                Err(e) => {
                    tracing::warn!(error = %e, "refused a security event token");
                    next.errors.insert(jti.clone(), e.body());
                }
            }
        }
        Ok((next, more))
    }
}

/// What the next poll reports back about the last one's events.
#[derive(Debug, Clone, Default)]
pub struct Replies {
    pub ack: Vec<String>,
    pub errors: BTreeMap<String, Value>,
}

fn revokes(kind: &str, fields: &Value) -> bool {
    match kind {
        SESSION_REVOKED => true,
        CREDENTIAL_CHANGE => {
            matches!(fields.get("change_type").and_then(Value::as_str), Some("revoke" | "delete"))
        }
        _ => false,
    }
}

/// The subject a `sub_id` names, as a key [`RevocationCheck`] looks up: Mandate's agents by
/// SPIFFE ID (`uri`), owners (`user`), clients (`application`) and grants (`session`) as
/// single-member complex subjects, and single tokens by `jwt_id` of this issuer.
pub fn subject_key(sub_id: &Value, issuer: &str) -> Option<String> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    match sub_id.get("format").and_then(Value::as_str)? {
        "uri" => Some(format!("agent:{}", text(sub_id, "uri")?)),
        "jwt_id" if text(sub_id, "iss").as_deref() == Some(issuer) => Some(format!("jti:{}", text(sub_id, "jti")?)),
        "complex" => {
            let members: Vec<(&String, &Value)> =
                sub_id.as_object()?.iter().filter(|(k, _)| k.as_str() != "format").collect();
            // Members of a complex subject all apply at once; only single ones map to a key.
            let [(member, simple)] = members.as_slice() else { return None };
            let kind = match member.as_str() {
                "user" | "application" | "session" => member.as_str(),
                _ => return None,
            };
            (text(simple, "format").as_deref() == Some("opaque")).then_some(())?;
            Some(format!("{kind}:{}", text(simple, "id")?))
        }
        _ => None,
    }
}

fn refusal(e: JwtError) -> SetError {
    let code = match &e {
        JwtError::WrongIssuer(_) => "invalid_issuer",
        JwtError::WrongAudience(_) => "invalid_audience",
        JwtError::BadSignature | JwtError::UnknownKey(_) | JwtError::AlgorithmMismatch => "invalid_key",
        _ => "invalid_request",
    };
    SetError::invalid(code, e.to_string())
}

#[async_trait]
impl RevocationCheck for SignalRevocations {
    async fn revoked(&self, p: &Principal) -> Result<Option<&'static str>, String> {
        let revoked = self.revoked.lock();
        if revoked.contains_key(&format!("jti:{}", p.jti)) {
            return Ok(Some("token was revoked (shared signal)"));
        }
        let mut keys = vec![format!("application:{}", p.client_id), format!("agent:{}", p.subject)];
        keys.extend(p.owner.as_ref().map(|o| format!("user:{o}")));
        keys.extend(p.claims.get(GRANT_CLAIM).and_then(Value::as_str).map(|g| format!("session:{g}")));
        let mut act = p.actor.as_ref();
        // Everyone in the delegation chain answers for the token (bounded like StoreRevocation).
        for _ in 0..16 {
            let Some(current) = act else { break };
            keys.extend(current.get("sub").and_then(Value::as_str).map(|s| format!("agent:{s}")));
            act = current.get("act");
        }
        let hit = keys.iter().filter_map(|k| revoked.get(k)).any(|at| p.iat <= *at);
        Ok(hit.then_some("agent, owner, client or grant was revoked after issuance (shared signal)"))
    }
}

/// RFC 8935 push receiver: `POST` with `Content-Type: application/secevent+jwt`; answers 202,
/// or 400 with `{"err", "description"}`.
pub async fn receive_push(State(receiver): State<Arc<SignalRevocations>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(expected) = &receiver.push_authorization {
        let presented = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
        if !constant_time_eq(presented, expected.as_bytes()) {
            let body = json!({"err": "authentication_failed", "description": "wrong or missing Authorization"});
            return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        }
    }
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let outcome =
        if !media.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/secevent+jwt") {
            Err(SetError::invalid("invalid_request", "Content-Type must be application/secevent+jwt"))
        } else {
            match std::str::from_utf8(&body) {
                Ok(set) => receiver.receive(set.trim()).await,
                Err(_) => Err(SetError::invalid("invalid_request", "the body is not UTF-8")),
            }
        };
    match outcome {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e @ SetError::Transient(_)) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(e.body())).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(e.body())).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mandate_core::{ManualClock, ScopeSet};
    use mandate_crypto::jose::sign_jwt;
    use mandate_crypto::{Alg, SigningKey};

    use super::*;
    use crate::StaticKeys;

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://mandate.example";
    const AUD: &str = "https://rs.example";
    const AGENT: &str = "spiffe://mandate.local/agent/bot";

    fn setup() -> (SigningKey, SignalRevocations) {
        mandate_crypto::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let keys = Arc::new(StaticKeys::new(ISSUER, vec![key.public().clone()]));
        let clock = Arc::new(ManualClock::at_ms(NOW * 1000));
        (key, SignalRevocations::new(ISSUER, AUD, keys, clock))
    }

    fn set_claims(sub_id: Value, at: i64) -> Value {
        json!({"iss": ISSUER, "jti": "j1", "iat": NOW, "aud": AUD, "txn": "t", "sub_id": sub_id,
            "events": {SESSION_REVOKED: {"event_timestamp": at, "initiating_entity": "admin"}}})
    }

    fn principal(subject: &str, iat: i64) -> Principal {
        Principal {
            issuer: ISSUER.into(),
            subject: subject.into(),
            client_id: "c1".into(),
            scopes: ScopeSet::default(),
            owner: Some("alice".into()),
            jti: "t1".into(),
            iat,
            exp: iat + 300,
            jkt: None,
            actor: None,
            claims: json!({}),
        }
    }

    #[tokio::test]
    async fn an_agent_revocation_refuses_tokens_issued_until_the_event_only() {
        let (key, receiver) = setup();
        let set = sign_jwt(&key, SET_TYP, &set_claims(json!({"format": "uri", "uri": AGENT}), NOW - 10)).unwrap();
        assert_eq!(receiver.receive(&set).await.unwrap(), "j1");
        assert!(receiver.revoked(&principal(AGENT, NOW - 10)).await.unwrap().is_some());
        assert!(receiver.revoked(&principal(AGENT, NOW - 9)).await.unwrap().is_none());
        assert!(receiver.revoked(&principal("spiffe://mandate.local/agent/other", NOW - 20)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn owner_client_grant_and_token_subjects_are_honoured() {
        let (key, receiver) = setup();
        let owner = json!({"format": "complex", "user": {"format": "opaque", "id": "alice"}});
        let set = sign_jwt(&key, SET_TYP, &set_claims(owner, NOW)).unwrap();
        receiver.receive(&set).await.unwrap();
        assert!(receiver.revoked(&principal("someone", NOW)).await.unwrap().is_some());

        let (key, receiver) = setup();
        let token = json!({"format": "jwt_id", "iss": ISSUER, "jti": "t1"});
        receiver.receive(&sign_jwt(&key, SET_TYP, &set_claims(token, NOW - 100)).unwrap()).await.unwrap();
        // A single token is dead whatever its issuance time.
        assert!(receiver.revoked(&principal("someone", NOW)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sets_failing_any_check_are_refused_with_the_rfc_8935_code() {
        let (key, receiver) = setup();
        let agent = json!({"format": "uri", "uri": AGENT});
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!({"iss": "https://evil.example"}), SET_TYP, "invalid_issuer"),
            (json!({"aud": "https://other.example"}), SET_TYP, "invalid_audience"),
            (json!({"exp": NOW + 60}), SET_TYP, "invalid_request"),
            (json!({"sub": "bot"}), SET_TYP, "invalid_request"),
            (json!({}), "JWT", "invalid_request"),
        ];
        for (patch, typ, code) in cases {
            let mut claims = set_claims(agent.clone(), NOW);
            for (k, v) in patch.as_object().unwrap() {
                claims[k] = v.clone();
            }
            let set = sign_jwt(&key, typ, &claims).unwrap();
            match receiver.receive(&set).await {
                Err(SetError::Invalid { code: found, .. }) => assert_eq!(found, code, "{patch}"),
                other => panic!("{patch} was not refused: {other:?}"),
            }
        }
        let other_key = SigningKey::generate(Alg::EdDSA).unwrap();
        let forged = sign_jwt(&other_key, SET_TYP, &set_claims(agent, NOW)).unwrap();
        assert!(matches!(receiver.receive(&forged).await, Err(SetError::Invalid { code: "invalid_key", .. })));
        // Nothing refused was recorded.
        assert!(receiver.revoked(&principal(AGENT, NOW)).await.unwrap().is_none());
    }

    #[test]
    fn subject_keys() {
        assert_eq!(subject_key(&json!({"format": "uri", "uri": AGENT}), ISSUER), Some(format!("agent:{AGENT}")));
        let other_issuer = json!({"format": "jwt_id", "iss": "https://other", "jti": "x"});
        assert_eq!(subject_key(&other_issuer, ISSUER), None);
        let two = json!({"format": "complex", "user": {"format": "opaque", "id": "a"},
            "session": {"format": "opaque", "id": "s"}});
        assert_eq!(subject_key(&two, ISSUER), None);
        let email = json!({"format": "complex", "user": {"format": "email", "email": "a@b"}});
        assert_eq!(subject_key(&email, ISSUER), None);
        assert_eq!(subject_key(&json!({"format": "opaque", "id": "stream"}), ISSUER), None);
    }
}
