//! RFC 8936 poll delivery: a receiver acknowledges what it processed and collects what is
//! queued. Acknowledged (and error-reported) events leave the outbox; the rest are sent again.

use std::collections::BTreeMap;
use std::time::Duration;

use mandate_core::AuditEvent;
use mandate_store::{Mutation, SsfMutation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::streams::{self, Status, StreamConfig};
use super::{POLL, SsfError, finish};
use crate::{Authz, Caller, store_failure};

/// Events returned when `maxEvents` is absent.
pub const DEFAULT_MAX_EVENTS: i64 = 100;
/// Most events one poll returns, and most acknowledgements it takes.
pub const MAX_EVENTS: i64 = 1000;
/// How long a poll without `returnImmediately` waits for an event.
pub const LONG_POLL: Duration = Duration::from_secs(10);
const LONG_POLL_STEP: Duration = Duration::from_millis(100);

/// The request body (RFC 8936 §2.4).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PollRequest {
    #[serde(default, rename = "maxEvents")]
    pub max_events: Option<i64>,
    #[serde(default, rename = "returnImmediately")]
    pub return_immediately: Option<bool>,
    #[serde(default)]
    pub ack: Vec<String>,
    /// Events the receiver could not process: removed like acknowledged ones (and audited).
    #[serde(default, rename = "setErrs")]
    pub set_errs: BTreeMap<String, Value>,
}

/// The response body (RFC 8936 §2.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    pub sets: BTreeMap<String, String>,
    #[serde(rename = "moreAvailable")]
    pub more_available: bool,
}

/// One poll of a stream: applies the acknowledgements, then answers what is queued.
pub async fn poll(
    authz: &Authz,
    caller: &Caller,
    stream_id: &str,
    request: PollRequest,
    correlation_id: &str,
) -> Result<PollResponse, SsfError> {
    let mut event = AuditEvent::allow("ssf.poll", correlation_id);
    if let Caller::Client(c) = caller {
        event.client = Some(c.client.client_id.clone());
    }
    let detail = format!("stream={stream_id} acked={} errors={}", request.ack.len(), request.set_errs.len());
    let event = event.with_detail(detail);
    let acks = async {
        let max = check(&request)?;
        let stream = streams::find(authz, caller, stream_id).await?;
        let config = StreamConfig::parse(&stream.config)
            .map_err(|e| mandate_core::OAuthError::server_error(format!("stored stream is unreadable: {e}")))?;
        if config.delivery.method != POLL {
            return Err(SsfError::invalid("this stream is delivered by push, not poll"));
        }
        let drops: Vec<Mutation> = request
            .ack
            .iter()
            .chain(request.set_errs.keys())
            .map(|jti| Mutation::Ssf(SsfMutation::Drop { stream_id: stream_id.to_owned(), jti: jti.clone() }))
            .collect();
        let paused = Status::parse(&stream.status) != Some(Status::Enabled);
        Ok(((max, paused), (!drops.is_empty()).then_some(Mutation::All(drops))))
    }
    .await;
    let (max, paused) = finish(authz, event, acks).await?;
    if max == 0 || paused {
        return Ok(PollResponse::default());
    }
    collect(authz, stream_id, max, request.return_immediately.unwrap_or(false)).await
}

fn check(request: &PollRequest) -> Result<i64, SsfError> {
    let max = request.max_events.unwrap_or(DEFAULT_MAX_EVENTS);
    if !(0..=MAX_EVENTS).contains(&max) {
        return Err(SsfError::invalid(format!("maxEvents must be 0 to {MAX_EVENTS}")));
    }
    if request.ack.len() + request.set_errs.len() > MAX_EVENTS as usize {
        return Err(SsfError::invalid(format!("at most {MAX_EVENTS} acknowledgements per poll")));
    }
    if request.ack.iter().chain(request.set_errs.keys()).any(|jti| jti.is_empty() || jti.len() > 256) {
        return Err(SsfError::invalid("ack and setErrs name events by their jti"));
    }
    Ok(max)
}

/// Up to `max` queued events; without `return_immediately`, waits a while for the first.
async fn collect(authz: &Authz, stream_id: &str, max: i64, return_immediately: bool) -> Result<PollResponse, SsfError> {
    let mut waited = Duration::ZERO;
    loop {
        // One more than asked for tells whether more are available.
        let events = authz.store.ssf_events(stream_id, max + 1).await.map_err(store_failure)?;
        if !events.is_empty() || return_immediately || waited >= LONG_POLL {
            let more_available = events.len() as i64 > max;
            let mut sets = BTreeMap::new();
            for queued in events.into_iter().take(max as usize) {
                sets.insert(queued.jti, super::events::sign_set(authz, &queued.claims)?);
            }
            return Ok(PollResponse { sets, more_available });
        }
        tokio::time::sleep(LONG_POLL_STEP).await;
        waited += LONG_POLL_STEP;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert_eq!(check(&PollRequest::default()), Ok(DEFAULT_MAX_EVENTS));
        let too_many = PollRequest { max_events: Some(MAX_EVENTS + 1), ..Default::default() };
        assert!(check(&too_many).is_err());
        let negative = PollRequest { max_events: Some(-1), ..Default::default() };
        assert!(check(&negative).is_err());
        let empty_ack = PollRequest { ack: vec![String::new()], ..Default::default() };
        assert!(check(&empty_ack).is_err());
        let acks = PollRequest { ack: vec!["j".into(); MAX_EVENTS as usize + 1], ..Default::default() };
        assert!(check(&acks).is_err());
    }
}
