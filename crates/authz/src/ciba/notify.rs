//! CIBA ping callbacks (CIBA Core 1.0 §10.2): once the owner approves or denies a ping client's
//! request, the background delivery task POSTs `{"auth_req_id": …}` to the client's registered
//! notification endpoint with `Authorization: Bearer <client_notification_token>`, through the
//! same SSRF-vetted, redirect-free client as every outbound call. Any 2xx ends it; otherwise it is
//! retried with backoff a bounded number of times. Every attempt is audited as `ciba.notify`;
//! the sealed secrets are erased once the callback is delivered or given up.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mandate_core::AuditEvent;
use mandate_store::{CibaNotification, Mutation};
use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{notify_record_id, short_hash};
use crate::Authz;
use crate::jwks_fetch::post_vetted;

/// Attempts before a callback is given up (the client can still poll).
pub const MAX_ATTEMPTS: i64 = 5;
const MAX_BACKOFF_MS: i64 = 60_000;
/// Callbacks per round.
const BATCH: i64 = 50;

/// What was sealed with the request; zeroized when dropped.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct CallbackSecrets {
    auth_req_id: String,
    token: String,
}

/// One round over the callbacks due now; returns how many the clients accepted.
pub async fn deliver_due(authz: &Authz) -> Result<usize, String> {
    let now_ms = authz.clock.now_ms();
    let due = authz.store.ciba_notifications_due(now_ms, BATCH).await.map_err(|e| e.to_string())?;
    let mut delivered = 0;
    for callback in due {
        if deliver(authz, callback).await? {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// Tries one callback and records what happened; `true` once the client accepted it.
async fn deliver(authz: &Authz, callback: CibaNotification) -> Result<bool, String> {
    let attempt = callback.attempts + 1;
    let detail = format!("ciba={} attempt={attempt}", short_hash(&callback.req_hash));
    let mut event = AuditEvent::allow("ciba.notify", uuid::Uuid::now_v7().to_string()).with_detail(&detail);
    event.client = Some(callback.client_id.clone());
    let end = Mutation::EndCibaNotify { req_hash: callback.req_hash.clone() };
    let secrets = match open(authz, &callback) {
        Ok(secrets) => secrets,
        Err(why) => {
            // Nothing to retry: a blob that does not open now never will (another KEK, or altered).
            let event = event.refused("undeliverable", &format!("{detail}: {why}"));
            let _ended = authz.log.apply(end, event).await.map_err(|e| e.to_string())?;
            return Ok(false);
        }
    };
    let body = serde_json::json!({"auth_req_id": secrets.auth_req_id}).to_string();
    let bearer = Zeroizing::new(format!("Bearer {}", secrets.token));
    let insecure = authz.config.allow_insecure_federation;
    let answer = post_vetted(&callback.endpoint, insecure, "application/json", Some(bearer.as_str()), body).await;
    let (mutation, event, accepted) = match answer {
        // §10.2: 204 is expected, 200 accepted; redirects are never followed (and fail here).
        Ok(status) if (200..300).contains(&status) => (end, event, true),
        failed if attempt >= MAX_ATTEMPTS => {
            let why = format!("{detail}: giving up: {}", crate::ssf::push::describe(&failed));
            (end, event.refused("undeliverable", &why), false)
        }
        failed => {
            let retry = Mutation::RetryCibaNotify {
                req_hash: callback.req_hash.clone(),
                attempts: attempt,
                next_attempt_ms: authz.clock.now_ms() + backoff_ms(attempt),
            };
            (retry, event.refused("retry", &format!("{detail}: {}", crate::ssf::push::describe(&failed))), false)
        }
    };
    // A refused mutation (the callback ended meanwhile, in another replica) is logged as such.
    let applied = authz.log.apply(mutation, event).await.map_err(|e| e.to_string())?;
    Ok(accepted && applied.is_ok())
}

fn open(authz: &Authz, callback: &CibaNotification) -> Result<CallbackSecrets, String> {
    let sealed = STANDARD.decode(&callback.sealed).map_err(|_| "the sealed callback is not base64".to_owned())?;
    let plain = authz
        .keys
        .open_secret(&notify_record_id(&callback.req_hash), &sealed)
        .map_err(|_| "the sealed callback does not open under this KEK".to_owned())?;
    serde_json::from_slice(&plain).map_err(|_| "the sealed callback is unreadable".to_owned())
}

/// 1 s, 2 s, 4 s, 8 s, … capped at a minute (a request lives at most ten).
pub fn backoff_ms(attempts: i64) -> i64 {
    crate::ssf::push::doubling_backoff_ms(attempts, MAX_BACKOFF_MS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use mandate_core::{ClientAuthMethod, ManualClock, TrustDomain};
    use parking_lot::Mutex;
    use serde_json::Value;

    use super::*;
    use crate::AuthzConfig;
    use crate::ciba::{ApprovalForm, BcAuthorizeRequest, backchannel_authorize, decide};
    use crate::client_auth::Presented;

    const PASSWORD: &str = "correct horse battery staple";
    const RESOURCE: &str = "https://api.example";

    /// What a receiver saw: the Authorization header and the body of each callback.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    async fn receiver(status: u16) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let kept = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                kept.lock().push((auth, body));
                async move { axum::http::StatusCode::from_u16(status).unwrap() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    struct Fixture {
        authz: Authz,
        clock: Arc<ManualClock>,
        client_id: String,
        secret: String,
        _dir: tempfile::TempDir,
    }

    /// Owner alice (with a password), agent `helper` and its CIBA client in `mode`.
    async fn fixture(mode: &str, endpoint: Option<&str>) -> Fixture {
        let config = AuthzConfig {
            allow_insecure_federation: true,
            ..AuthzConfig::new("https://as.mandate.example", TrustDomain::parse("mandate.local").unwrap())
        };
        let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
        let (authz, dir) = crate::test_support::started(config, clock.clone()).await;
        crate::registry::create_owner(&authz, "alice", None, "t").await.unwrap();
        crate::password::set_owner_password(&authz, "alice", Zeroizing::new(PASSWORD.into()), "t").await.unwrap();
        crate::registry::create_resource(&authz, RESOURCE, &["write".into()], "t").await.unwrap();
        let agent = crate::registry::NewAgent {
            name: "helper".into(),
            owner: "alice".into(),
            scopes: vec!["write".into()],
            ..Default::default()
        };
        crate::registry::create_agent(&authz, agent, "t").await.unwrap();
        let client = crate::registry::NewClient {
            agent: Some("helper".into()),
            auth_method: "client_secret_basic".into(),
            grant_types: vec![crate::ciba::GRANT_CIBA.into()],
            backchannel_token_delivery_mode: Some(mode.into()),
            backchannel_client_notification_endpoint: endpoint.map(str::to_owned),
            ..Default::default()
        };
        let made = crate::registry::create_client(&authz, client, "t").await.unwrap();
        Fixture { authz, clock, client_id: made.client.client_id, secret: made.secret.unwrap(), _dir: dir }
    }

    async fn ask(f: &Fixture, token: Option<&str>) -> Result<String, mandate_core::OAuthError> {
        let request = BcAuthorizeRequest {
            presented: Presented::Secret {
                client_id: f.client_id.clone(),
                secret: Zeroizing::new(f.secret.clone()),
                method: ClientAuthMethod::ClientSecretBasic,
            },
            scope: Some("openid write".into()),
            login_hint: Some("alice".into()),
            binding_message: Some("Delete row 7".into()),
            resources: vec![RESOURCE.into()],
            client_notification_token: token.map(str::to_owned),
            ..Default::default()
        };
        backchannel_authorize(&f.authz, request, "t").await.map(|r| r.auth_req_id)
    }

    async fn decide_pending(f: &Fixture, decision: &str) {
        let pending = crate::ciba::pending(&f.authz, "alice").await.unwrap();
        let form = ApprovalForm {
            approval_id: pending[0].0.approval_id.clone(),
            owner: Some("alice".into()),
            password: Some(Zeroizing::new(PASSWORD.into())),
            decision: Some(decision.into()),
        };
        decide(&f.authz, form, "t").await.unwrap();
    }

    async fn notify_events(authz: &Authz) -> Vec<Value> {
        let len = authz.store.audit_len().await.unwrap();
        let entries = authz.store.audit_entries(0, len).await.unwrap();
        let events = entries.iter().map(|e| serde_json::from_str::<Value>(&e.canonical).unwrap());
        events.filter(|e| e["action"] == "ciba.notify").collect()
    }

    #[tokio::test]
    async fn a_console_decision_takes_the_same_path_as_the_password_form() {
        let (url, seen) = receiver(204).await;
        let f = fixture("ping", Some(&url)).await;
        ask(&f, Some("client-notification-token-console")).await.unwrap();
        let approval = crate::ciba::pending(&f.authz, "alice").await.unwrap()[0].0.approval_id.clone();
        crate::registry::create_owner(&f.authz, "bob", None, "t").await.unwrap();
        let decide = |owner: &'static str, decision: &'static str| {
            crate::ciba::decide_as_owner(&f.authz, &approval, owner, Some(decision), "t")
        };
        let refused = decide("bob", "approve").await.unwrap_err();
        assert_eq!(refused.code, mandate_core::OAuthErrorCode::AccessDenied, "only the named owner decides");
        assert!(decide("alice", "maybe").await.is_err());
        assert_eq!(deliver_due(&f.authz).await.unwrap(), 0, "refusals decide nothing");

        assert_eq!(decide("alice", "approve").await.unwrap(), crate::ciba::Decision::Approved);
        assert_eq!(deliver_due(&f.authz).await.unwrap(), 1, "the ping is due, as after the password form");
        assert_eq!(seen.lock().len(), 1);
        assert!(decide("alice", "deny").await.is_err(), "a decided request stays decided");
    }

    #[tokio::test]
    async fn a_decision_pings_the_client_with_its_token_and_the_secrets_are_then_erased() {
        let (url, seen) = receiver(204).await;
        let f = fixture("ping", Some(&url)).await;
        let token = "client-notification-token-0123456789abcdef";
        let auth_req_id = ask(&f, Some(token)).await.unwrap();
        let stored = f.authz.store.ciba_request(&mandate_crypto::hash_secret(&auth_req_id)).await.unwrap().unwrap();
        let sealed = stored.notify_sealed.clone().unwrap();
        assert!(!sealed.contains(token) && !sealed.contains(&auth_req_id), "sealed, not in clear");
        assert_eq!(deliver_due(&f.authz).await.unwrap(), 0, "nothing before the decision");

        decide_pending(&f, "approve").await;
        assert_eq!(deliver_due(&f.authz).await.unwrap(), 1);
        let calls = seen.lock().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, format!("Bearer {token}"));
        let body: Value = serde_json::from_str(&calls[0].1).unwrap();
        assert_eq!(body, serde_json::json!({"auth_req_id": auth_req_id}));

        assert_eq!(deliver_due(&f.authz).await.unwrap(), 0, "sent once");
        let ended = f.authz.store.ciba_request(&stored.req_hash).await.unwrap().unwrap();
        assert_eq!(ended.notify_sealed, None);
        let events = notify_events(&f.authz).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["decision"], "allow");
        let text = serde_json::to_string(&events).unwrap();
        assert!(!text.contains(token) && !text.contains(&auth_req_id), "no secrets in the log");
    }

    #[tokio::test]
    async fn a_failing_endpoint_is_retried_with_backoff_then_given_up() {
        let (url, seen) = receiver(500).await;
        let f = fixture("ping", Some(&url)).await;
        ask(&f, Some("tok")).await.unwrap();
        decide_pending(&f, "deny").await;
        for attempt in 1..=MAX_ATTEMPTS {
            assert_eq!(deliver_due(&f.authz).await.unwrap(), 0);
            assert_eq!(seen.lock().len() as i64, attempt);
            assert_eq!(deliver_due(&f.authz).await.unwrap(), 0);
            assert_eq!(seen.lock().len() as i64, attempt, "not due again before the backoff");
            f.clock.advance_ms(backoff_ms(attempt));
        }
        assert_eq!(deliver_due(&f.authz).await.unwrap(), 0);
        assert_eq!(seen.lock().len() as i64, MAX_ATTEMPTS, "given up");
        let events = notify_events(&f.authz).await;
        let reasons: Vec<&str> = events.iter().map(|e| e["reason"].as_str().unwrap_or_default()).collect();
        assert_eq!(reasons.len() as i64, MAX_ATTEMPTS);
        assert!(reasons[..reasons.len() - 1].iter().all(|r| *r == "retry"), "{reasons:?}");
        assert_eq!(reasons[reasons.len() - 1], "undeliverable");
    }

    #[tokio::test]
    async fn ping_clients_must_send_a_token_and_poll_clients_are_never_called() {
        let (url, seen) = receiver(204).await;
        let ping = fixture("ping", Some(&url)).await;
        let refused = ask(&ping, None).await.unwrap_err();
        assert_eq!(refused.code, mandate_core::OAuthErrorCode::InvalidRequest);
        assert!(crate::ciba::pending(&ping.authz, "alice").await.unwrap().is_empty(), "nothing stored");

        let poll = fixture("poll", None).await;
        // A poll client's token is ignored, not kept.
        let id = ask(&poll, Some("ignored-token")).await.unwrap();
        let stored = poll.authz.store.ciba_request(&mandate_crypto::hash_secret(&id)).await.unwrap().unwrap();
        assert_eq!((stored.notify_endpoint, stored.notify_sealed), (None, None));
        decide_pending(&poll, "approve").await;
        assert_eq!(deliver_due(&poll.authz).await.unwrap(), 0);
        assert!(seen.lock().is_empty());
        assert!(notify_events(&poll.authz).await.is_empty());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(3), 4000);
        assert_eq!(backoff_ms(30), MAX_BACKOFF_MS);
    }
}
