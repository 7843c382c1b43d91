//! RFC 8935 push delivery: a background task POSTs each queued SET of an enabled push stream
//! to the receiver (SSRF-vetted like every outbound fetch), drops it on `202 Accepted`, and
//! otherwise retries with exponential backoff, a bounded number of times. Every attempt is audited.

use std::time::Duration;

use mandate_core::AuditEvent;
use mandate_store::{Mutation, SsfEvent, SsfMutation};

use super::streams::{Status, StreamConfig};
use super::{PUSH, SET_MEDIA_TYPE};
use crate::Authz;
use crate::jwks_fetch::post_vetted;

/// How often the outbox is looked at.
pub const PUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Attempts before an event is given up (and the give-up audited).
pub const MAX_ATTEMPTS: i64 = 8;
const FIRST_BACKOFF_MS: i64 = 1000;
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// Events per stream per round.
const BATCH: i64 = 50;

/// Delivers forever (SETs, logout tokens and CIBA ping callbacks); run it as a task beside the server.
pub async fn run(authz: Authz) {
    loop {
        if let Err(e) = deliver_due(&authz).await {
            tracing::warn!(error = %e, "shared signals push delivery failed");
        }
        if let Err(e) = super::logout::deliver_due(&authz).await {
            tracing::warn!(error = %e, "back-channel logout delivery failed");
        }
        if let Err(e) = crate::ciba::notify::deliver_due(&authz).await {
            tracing::warn!(error = %e, "CIBA ping callback delivery failed");
        }
        tokio::time::sleep(PUSH_INTERVAL).await;
    }
}

/// One round over every enabled push stream; returns how many events were delivered.
pub async fn deliver_due(authz: &Authz) -> Result<usize, String> {
    let mut delivered = 0;
    for stream in authz.store.ssf_streams().await.map_err(|e| e.to_string())? {
        let Ok(config) = StreamConfig::parse(&stream.config) else { continue };
        if config.delivery.method != PUSH || Status::parse(&stream.status) != Some(Status::Enabled) {
            continue;
        }
        let now_ms = authz.clock.now_ms();
        let events = authz.store.ssf_events(&stream.stream_id, BATCH).await.map_err(|e| e.to_string())?;
        for queued in events.into_iter().filter(|e| e.next_attempt_ms <= now_ms) {
            if deliver(authz, &config, queued).await? {
                delivered += 1;
            }
        }
    }
    Ok(delivered)
}

/// Tries one event and records what happened; `true` once the receiver accepted it.
async fn deliver(authz: &Authz, config: &StreamConfig, queued: SsfEvent) -> Result<bool, String> {
    let url = config.delivery.endpoint_url.as_deref().unwrap_or_default();
    let insecure = authz.config.allow_insecure_federation;
    let auth = config.delivery.authorization_header.as_deref();
    let set = super::events::sign_set(authz, &queued.claims).map_err(|e| e.description)?;
    let answer = post_vetted(url, insecure, SET_MEDIA_TYPE, auth, set).await;
    let detail = format!("stream={} set={} attempt={}", queued.stream_id, queued.jti, queued.attempts + 1);
    let event = AuditEvent::allow("ssf.push", uuid::Uuid::now_v7().to_string()).with_detail(detail.clone());
    let drop = Mutation::Ssf(SsfMutation::Drop { stream_id: queued.stream_id.clone(), jti: queued.jti.clone() });
    let attempts = queued.attempts + 1;
    let (mutation, event, accepted) = match answer {
        Ok(202) => (drop, event, true),
        // RFC 8935 §2.3: 400 means the receiver refuses this SET; sending it again won't help.
        Ok(400) => (drop, event.refused("rejected", &format!("{detail}: the receiver refused the event (400)")), false),
        failed if attempts >= MAX_ATTEMPTS => {
            (drop, event.refused("undeliverable", &format!("{detail}: giving up: {}", describe(&failed))), false)
        }
        failed => {
            let retry = Mutation::Ssf(SsfMutation::Retry {
                stream_id: queued.stream_id.clone(),
                jti: queued.jti.clone(),
                attempts,
                next_attempt_ms: authz.clock.now_ms() + backoff_ms(attempts),
            });
            (retry, event.refused("retry", &format!("{detail}: {}", describe(&failed))), false)
        }
    };
    // A refused mutation (the stream was deleted meanwhile) is logged by the store as such;
    // it is no reason to stop delivering to the other streams.
    let applied = authz.log.apply(mutation, event).await.map_err(|e| e.to_string())?;
    Ok(accepted && applied.is_ok())
}

pub(crate) fn describe(answer: &Result<u16, crate::jwks_fetch::FetchError>) -> String {
    match answer {
        Ok(status) => format!("the receiver answered HTTP {status}"),
        Err(e) => format!("delivery failed: {e}"),
    }
}

/// 1 s, 2 s, 4 s, … capped at five minutes.
pub fn backoff_ms(attempts: i64) -> i64 {
    doubling_backoff_ms(attempts, MAX_BACKOFF_MS)
}

/// The wait before retry number `attempts` of an outbound delivery: 1 s, doubling, at most
/// `max_ms` (SSF pushes and CIBA ping callbacks).
pub(crate) fn doubling_backoff_ms(attempts: i64, max_ms: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF_MS.saturating_mul(1 << doublings).min(max_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(4), 8000);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    }
}
