//! Mandate as an OpenID Shared Signals Framework 1.0 transmitter: receivers' streams
//! (`streams`), CAEP security event tokens for revocations, queued in the revocation's own
//! transaction (`events`), and their delivery by push (RFC 8935, `push`) or poll (RFC 8936, `poll`).

pub mod events;
pub mod logout;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use mandate_core::{ManualClock, TrustDomain};
    use mandate_store::EpochKind;

    use super::streams::{self, StreamRequest};
    use super::*;
    use crate::{AuthzConfig, Caller};

    async fn authz() -> (Authz, tempfile::TempDir) {
        let config = AuthzConfig::new("https://as.mandate.example", TrustDomain::parse("mandate.local").unwrap());
        let (authz, dir) = crate::test_support::started(config, Arc::new(ManualClock::at_ms(1_800_000_000_000))).await;
        crate::registry::create_owner(&authz, "alice", None, "t").await.unwrap();
        (authz, dir)
    }

    async fn stream(authz: &Authz, events: &[&str], aud: &str) -> String {
        let request = StreamRequest {
            events_requested: Some(events.iter().map(|e| e.to_string()).collect()),
            aud: Some(aud.into()),
            ..Default::default()
        };
        let created = streams::create(authz, &Caller::Admin, request, "t").await.unwrap();
        created["stream_id"].as_str().unwrap().to_owned()
    }

    async fn queued(authz: &Authz, stream_id: &str) -> Vec<Value> {
        let events = authz.store.ssf_events(stream_id, 100).await.unwrap();
        events.iter().map(|e| serde_json::from_str(&e.claims).unwrap()).collect()
    }

    #[tokio::test]
    async fn each_revocation_queues_a_session_revoked_event_for_interested_streams() {
        let (authz, _dir) = authz().await;
        let wants = stream(&authz, &[SESSION_REVOKED], "rs-a").await;
        let other_events = stream(&authz, &[CREDENTIAL_CHANGE], "rs-b").await;
        let paused = stream(&authz, &[SESSION_REVOKED], "rs-c").await;
        let disabled = stream(&authz, &[SESSION_REVOKED], "rs-d").await;
        streams::set_status(&authz, &Caller::Admin, &paused, "paused", "t").await.unwrap();
        streams::set_status(&authz, &Caller::Admin, &disabled, "disabled", "t").await.unwrap();

        crate::refresh::revoke_family(&authz, "fam-1", "c1", "alice", "reuse", "corr-1").await.unwrap();
        crate::revoke::revoke_subject(&authz, EpochKind::Owner, "alice", "corr-2").await.unwrap();

        let sets = queued(&authz, &wants).await;
        assert_eq!(sets.len(), 2);
        let family = &sets.iter().find(|s| s["txn"] == "corr-1").unwrap();
        assert_eq!(family["sub_id"], json!({"format": "complex", "session": {"format": "opaque", "id": "fam-1"}}));
        assert_eq!(family["events"][SESSION_REVOKED]["initiating_entity"], "policy");
        assert_eq!(family["aud"], "rs-a");
        let owner = &sets.iter().find(|s| s["txn"] == "corr-2").unwrap();
        assert_eq!(owner["sub_id"], json!({"format": "complex", "user": {"format": "opaque", "id": "alice"}}));
        assert_eq!(owner["events"][SESSION_REVOKED]["event_timestamp"], 1_800_000_000);
        assert!(queued(&authz, &other_events).await.is_empty(), "not requested");
        assert_eq!(queued(&authz, &paused).await.len(), 2, "a paused stream keeps collecting");
        assert!(queued(&authz, &disabled).await.is_empty());

        let signed = events::sign_set(&authz, &serde_json::to_string(owner).unwrap()).unwrap();
        let keys = authz.keys.published();
        let options = mandate_crypto::VerifyOptions {
            typ: &[SET_TYP],
            typ_optional: false,
            issuer: Some("https://as.mandate.example"),
            audience: &["rs-a"],
            now: authz.clock.now_secs(),
            leeway_secs: 0,
        };
        mandate_crypto::jose::verify_set(&signed, &keys, &options).unwrap();
    }

    #[tokio::test]
    async fn a_refused_kill_switch_queues_nothing() {
        let (authz, _dir) = authz().await;
        let wants = stream(&authz, &[SESSION_REVOKED], "rs-a").await;
        assert!(crate::revoke::revoke_subject(&authz, EpochKind::Agent, "nobody", "t").await.is_err());
        assert!(queued(&authz, &wants).await.is_empty());
    }

    #[tokio::test]
    async fn configurations_are_validated() {
        let (authz, _dir) = authz().await;
        let push = |url: &str| StreamRequest {
            delivery: Some(streams::Delivery {
                method: PUSH.into(),
                endpoint_url: Some(url.into()),
                authorization_header: None,
            }),
            ..Default::default()
        };
        for bad in ["http://receiver.example/e", "https://10.0.0.1/e", "not a url"] {
            let refused = streams::create(&authz, &Caller::Admin, push(bad), "t").await.unwrap_err();
            assert_eq!(refused.status, 400, "{bad}");
        }
        let created = streams::create(&authz, &Caller::Admin, push("https://receiver.example/e"), "t").await.unwrap();
        assert_eq!(created["delivery"]["endpoint_url"], "https://receiver.example/e");
        let too_many = StreamRequest { events_requested: Some(vec!["x".into(); 33]), ..Default::default() };
        assert_eq!(streams::create(&authz, &Caller::Admin, too_many, "t").await.unwrap_err().status, 400);
        let missing = streams::read(&authz, &Caller::Admin, Some("nope"), "t").await.unwrap_err();
        assert_eq!(missing.status, 404);
    }

    /// A DCR client with a logout URI; consented to by alice when `consent`.
    async fn logout_client(authz: &Authz, uri: &str, consent: bool) -> String {
        let body = json!({"redirect_uris": ["https://app.example/cb"], "backchannel_logout_uri": uri,
            "token_endpoint_auth_method": "client_secret_basic"});
        let registered = crate::register::register(authz, body.to_string().as_bytes(), "t").await.unwrap();
        let client_id = registered["client_id"].as_str().unwrap().to_owned();
        if consent {
            let consent = mandate_core::Consent {
                owner: mandate_core::Name::parse("alice").unwrap(),
                client_id: client_id.clone(),
                resource: "https://api.example".into(),
                scopes: vec!["read".into()],
                granted_at_ms: 1,
            };
            let event = AuditEvent::allow("consent", "t");
            authz.log.apply(Mutation::PutConsent(consent), event).await.unwrap().unwrap();
        }
        client_id
    }

    /// A receiver answering `status` that keeps every form body it gets.
    async fn logout_receiver(status: u16) -> (String, Arc<parking_lot::Mutex<Vec<String>>>) {
        let seen: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let kept = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/logout",
            axum::routing::post(move |body: String| {
                kept.lock().push(body);
                async move { axum::http::StatusCode::from_u16(status).unwrap() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/logout", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn revoking_an_owner_sends_logout_tokens_to_consented_clients_only() {
        let (mut authz, _dir) = authz().await;
        let mut config = (*authz.config).clone();
        config.allow_insecure_federation = true;
        authz.config = Arc::new(config);
        crate::registry::create_resource(&authz, "https://api.example", &["read".into()], "t").await.unwrap();
        let (ok_url, seen) = logout_receiver(200).await;
        let (failing_url, _) = logout_receiver(500).await;
        let client = logout_client(&authz, &ok_url, true).await;
        logout_client(&authz, &ok_url, false).await;
        let failing = logout_client(&authz, &failing_url, true).await;

        crate::revoke::revoke_subject(&authz, EpochKind::Owner, "alice", "corr").await.unwrap();
        assert_eq!(authz.store.logout_events(10).await.unwrap().len(), 2, "consented clients only");
        assert_eq!(logout::deliver_due(&authz).await.unwrap(), 1);

        let body = seen.lock().pop().unwrap();
        let token = body.strip_prefix("logout_token=").unwrap();
        let keys = authz.keys.published();
        let options = mandate_crypto::VerifyOptions {
            typ: &[logout::LOGOUT_TYP],
            typ_optional: false,
            issuer: Some("https://as.mandate.example"),
            audience: &[&client],
            now: authz.clock.now_secs(),
            leeway_secs: 0,
        };
        let claims = mandate_crypto::verify_jwt(token, &keys, &options).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["events"], json!({logout::LOGOUT_EVENT: {}}));
        assert!(claims.get("nonce").is_none() && claims["jti"].is_string());

        let left = authz.store.logout_events(10).await.unwrap();
        assert_eq!(left.len(), 1, "the failing client's token waits for a retry");
        assert_eq!((left[0].client_id.as_str(), left[0].attempts), (failing.as_str(), 1));
        assert!(left[0].next_attempt_ms > authz.clock.now_ms());
        assert_eq!(logout::deliver_due(&authz).await.unwrap(), 0, "not due yet");
    }

    #[tokio::test]
    async fn a_registered_logout_uri_must_be_https_or_loopback() {
        let (authz, _dir) = authz().await;
        let agent = crate::registry::NewAgent { name: "bot".into(), owner: "alice".into(), ..Default::default() };
        crate::registry::create_agent(&authz, agent, "t").await.unwrap();
        let client = |uri: &str| crate::registry::NewClient {
            agent: Some("bot".into()),
            auth_method: "client_secret_basic".into(),
            backchannel_logout_uri: Some(uri.into()),
            ..Default::default()
        };
        let refused = crate::registry::create_client(&authz, client("http://app.example/logout"), "t").await;
        assert!(matches!(refused, Err(crate::registry::RegistryError::Invalid(_))));
        let made = crate::registry::create_client(&authz, client("https://app.example/logout"), "t").await.unwrap();
        assert_eq!(logout::logout_uri(&made.client).as_deref(), Some("https://app.example/logout"));
    }
}
