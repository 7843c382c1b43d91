//! Mandate as an OpenID Shared Signals Framework 1.0 transmitter: receivers' streams
//! (`streams`), CAEP security event tokens for revocations, queued in the revocation's own
//! transaction (`events`), and their delivery by push (RFC 8935, `push`) or poll (RFC 8936, `poll`).

pub mod events;
pub mod poll;
pub mod push;
pub mod streams;

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use mandate_store::{Mutation, MutationError};
use serde_json::{Value, json};

use crate::{Authz, conclude};

pub use events::{Signal, SignalSubject, with_signals};

pub const SPEC_VERSION: &str = "1_0";
/// RFC 8935 push delivery.
pub const PUSH: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery.
pub const POLL: &str = "urn:ietf:rfc:8936";
/// JOSE `typ` of security event tokens (RFC 8417 §2.3).
pub const SET_TYP: &str = "secevent+jwt";
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// The CAEP events this transmitter emits.
pub const EVENTS_SUPPORTED: [&str; 2] = [SESSION_REVOKED, CREDENTIAL_CHANGE];
/// Complex-subject members receivers must understand: owners are `user`, clients
/// `application`, refresh-token families `session` (see `events::SignalSubject`).
pub const CRITICAL_SUBJECT_MEMBERS: [&str; 3] = ["user", "application", "session"];

pub const STREAMS_PATH: &str = "/ssf/streams";
pub const STATUS_PATH: &str = "/ssf/status";
pub const VERIFY_PATH: &str = "/ssf/verify";
pub const POLL_PATH: &str = "/ssf/poll";

/// The transmitter configuration metadata (`/.well-known/ssf-configuration`).
pub fn configuration(issuer: &str) -> Value {
    json!({
        "spec_version": SPEC_VERSION,
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "delivery_methods_supported": [PUSH, POLL],
        "configuration_endpoint": format!("{issuer}{STREAMS_PATH}"),
        "status_endpoint": format!("{issuer}{STATUS_PATH}"),
        "verification_endpoint": format!("{issuer}{VERIFY_PATH}"),
        "critical_subject_members": CRITICAL_SUBJECT_MEMBERS,
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    })
}

/// A refused stream-management or poll request: the OAuth-style error and the HTTP status
/// SSF 1.0 §8.1 asks for (400, 401, 403, 404, 409).
#[derive(Debug, Clone, PartialEq)]
pub struct SsfError {
    pub status: u16,
    pub error: OAuthError,
}

impl From<OAuthError> for SsfError {
    fn from(error: OAuthError) -> Self {
        Self { status: error.code.http_status(), error }
    }
}

impl SsfError {
    pub fn not_found(description: impl Into<String>) -> Self {
        Self { status: 404, error: OAuthError::new(OAuthErrorCode::InvalidRequest, description) }
    }

    pub fn conflict(description: impl Into<String>) -> Self {
        Self { status: 409, error: OAuthError::new(OAuthErrorCode::InvalidRequest, description) }
    }

    pub fn invalid(description: impl Into<String>) -> Self {
        OAuthError::invalid_request(description).into()
    }
}

/// [`conclude`] for SSF outcomes: audits them and keeps each refusal's HTTP status (unless the
/// audit log itself failed, which then is the answer).
pub(crate) async fn finish<T>(
    authz: &Authz,
    event: AuditEvent,
    outcome: Result<(T, Option<Mutation>), SsfError>,
) -> Result<T, SsfError> {
    match outcome {
        Err(refusal) => {
            let logged = conclude::<T>(authz, event, Err(refusal.error.clone()), |e| refused(&e).error).await;
            match logged {
                Err(error) if error == refusal.error => Err(refusal),
                Err(error) => Err(error.into()),
                Ok(_) => Err(refusal),
            }
        }
        Ok(done) => {
            let mut status = None;
            let result = conclude(authz, event, Ok(done), |e| {
                let r = refused(&e);
                status = Some(r.status);
                r.error
            })
            .await;
            result.map_err(|error| SsfError { status: status.unwrap_or(error.code.http_status()), error })
        }
    }
}

fn refused(e: &MutationError) -> SsfError {
    match e {
        MutationError::NotFound(what) => SsfError::not_found(format!("{what} does not exist")),
        MutationError::Conflict(what) => SsfError::conflict(format!("{what} already exists")),
        MutationError::InUse(what) => SsfError::conflict(format!("{what} is still in use")),
    }
}
