//! SSF 1.0 stream management (§8.1): receivers create, read, update and delete their streams,
//! read and set their status, and ask for a verification event. The admin credential manages
//! every stream; a client only the one it created.

use mandate_core::AuditEvent;
use mandate_store::{Mutation, SsfMutation, SsfStream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{EVENTS_SUPPORTED, POLL, POLL_PATH, PUSH, SsfError, VERIFICATION, finish};
use crate::{Authz, Caller, new_jti, store_failure};

/// Streams a single client may hold (SSF 1.0 §8.1.1.1 allows answering 409 past one).
pub const STREAMS_PER_CLIENT: usize = 1;
/// Streams in total, so stream creation cannot grow the outbox fan-out without bound.
pub const MAX_STREAMS: usize = 64;
const MAX_TEXT: usize = 512;
const MAX_EVENTS_REQUESTED: usize = 32;

/// A stream's status (SSF 1.0 §8.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Enabled,
    Paused,
    Disabled,
}

impl Status {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "enabled" => Some(Self::Enabled),
            "paused" => Some(Self::Paused),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }
}

/// How events reach the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Sent as `Authorization` with each push. Stored, never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_header: Option<String>,
}

/// A stream configuration (SSF 1.0 §8.1.1), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    pub stream_id: String,
    pub iss: String,
    pub aud: String,
    pub events_supported: Vec<String>,
    pub events_requested: Vec<String>,
    pub events_delivered: Vec<String>,
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl StreamConfig {
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// What a receiver is shown: everything but the push credential, with this server's
    /// issuer and poll endpoint (so a restart on another address keeps streams usable).
    pub fn public(&self, issuer: &str) -> Value {
        let mut shown = self.clone();
        shown.delivery.authorization_header = None;
        shown.iss = issuer.to_owned();
        if shown.delivery.method == POLL {
            shown.delivery.endpoint_url = Some(format!("{issuer}{POLL_PATH}/{}", shown.stream_id));
        }
        serde_json::to_value(shown).unwrap_or(Value::Null)
    }
}

/// What a receiver may send on create or update; transmitter-supplied members are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamRequest {
    #[serde(default)]
    pub stream_id: Option<String>,
    #[serde(default)]
    pub events_requested: Option<Vec<String>>,
    #[serde(default)]
    pub delivery: Option<Delivery>,
    #[serde(default)]
    pub description: Option<String>,
    /// Mandate extension, admin only and at creation: the audience of the stream's SETs
    /// (a client's stream is always addressed to its client id).
    #[serde(default)]
    pub aud: Option<String>,
}

fn event(action: &str, caller: &Caller, correlation_id: &str) -> AuditEvent {
    let mut event = AuditEvent::allow(action, correlation_id);
    if let Caller::Client(c) = caller {
        event.client = Some(c.client.client_id.clone());
    }
    event
}

fn owner_of(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Admin => None,
        Caller::Client(c) => Some(c.client.client_id.clone()),
    }
}

/// The caller's stream `stream_id` (404 for another client's, so ids are not probed).
pub(crate) async fn find(authz: &Authz, caller: &Caller, stream_id: &str) -> Result<SsfStream, SsfError> {
    let streams = authz.store.ssf_streams().await.map_err(store_failure)?;
    streams
        .into_iter()
        .find(|s| s.stream_id == stream_id && visible(caller, s))
        .ok_or_else(|| SsfError::not_found(format!("no stream {stream_id:?}")))
}

fn visible(caller: &Caller, stream: &SsfStream) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Client(c) => stream.client_id.as_deref() == Some(c.client.client_id.as_str()),
    }
}

fn parse_config(stream: &SsfStream) -> Result<StreamConfig, SsfError> {
    StreamConfig::parse(&stream.config)
        .map_err(|e| mandate_core::OAuthError::server_error(format!("stored stream is unreadable: {e}")).into())
}

fn text(value: Option<String>, what: &str) -> Result<Option<String>, SsfError> {
    match value {
        Some(t) if t.is_empty() || t.len() > MAX_TEXT || t.chars().any(char::is_control) => {
            Err(SsfError::invalid(format!("{what} must be 1 to {MAX_TEXT} printable characters")))
        }
        other => Ok(other),
    }
}

/// Checks a requested delivery; a poll stream's endpoint is the transmitter's own.
fn check_delivery(authz: &Authz, delivery: Option<Delivery>, stream_id: &str) -> Result<Delivery, SsfError> {
    // SSF 1.0 §8.1.1: no delivery member means poll.
    let delivery = delivery.unwrap_or(Delivery { method: POLL.into(), endpoint_url: None, authorization_header: None });
    let authorization_header = text(delivery.authorization_header, "delivery.authorization_header")?;
    match delivery.method.as_str() {
        PUSH => {
            let url = delivery.endpoint_url.ok_or_else(|| SsfError::invalid("push delivery needs an endpoint_url"))?;
            let url = text(Some(url), "delivery.endpoint_url")?.unwrap_or_default();
            crate::jwks_fetch::check_url(&url, authz.config.allow_insecure_federation)
                .map_err(|e| SsfError::invalid(format!("delivery.endpoint_url: {e}")))?;
            Ok(Delivery { method: PUSH.into(), endpoint_url: Some(url), authorization_header })
        }
        POLL => {
            if delivery.endpoint_url.is_some() {
                return Err(SsfError::invalid("a poll stream's endpoint_url is supplied by the transmitter"));
            }
            if authorization_header.is_some() {
                return Err(SsfError::invalid("authorization_header applies to push delivery only"));
            }
            let url = format!("{}{POLL_PATH}/{stream_id}", authz.config.issuer);
            Ok(Delivery { method: POLL.into(), endpoint_url: Some(url), authorization_header: None })
        }
        other => Err(SsfError::invalid(format!("delivery method {other:?} is not supported"))),
    }
}

/// `events_requested`, bounded, and what of it is delivered (∩ supported).
fn check_events(requested: Vec<String>) -> Result<(Vec<String>, Vec<String>), SsfError> {
    if requested.len() > MAX_EVENTS_REQUESTED || requested.iter().any(|e| e.len() > MAX_TEXT) {
        return Err(SsfError::invalid("events_requested is too long"));
    }
    let delivered = EVENTS_SUPPORTED.iter().filter(|s| requested.iter().any(|r| r == *s)).map(|s| s.to_string());
    Ok((requested.clone(), delivered.collect()))
}

/// Creates a stream (SSF 1.0 §8.1.1.1); answers its configuration.
pub async fn create(
    authz: &Authz,
    caller: &Caller,
    request: StreamRequest,
    correlation_id: &str,
) -> Result<Value, SsfError> {
    let event = event("ssf.stream.create", caller, correlation_id);
    let outcome = new_stream(authz, caller, request).await.map(|(config, stream)| {
        let public = config.public(&authz.config.issuer);
        (public, Some(Mutation::Ssf(SsfMutation::CreateStream(stream))))
    });
    let event = match &outcome {
        Ok((public, _)) => event.with_detail(format!("stream={}", public["stream_id"].as_str().unwrap_or_default())),
        Err(_) => event,
    };
    finish(authz, event, outcome).await
}

async fn new_stream(
    authz: &Authz,
    caller: &Caller,
    request: StreamRequest,
) -> Result<(StreamConfig, SsfStream), SsfError> {
    let existing = authz.store.ssf_streams().await.map_err(store_failure)?;
    let client_id = owner_of(caller);
    if client_id.is_some() && existing.iter().filter(|s| s.client_id == client_id).count() >= STREAMS_PER_CLIENT {
        return Err(SsfError::conflict("this client already has a stream; update or delete it"));
    }
    if existing.len() >= MAX_STREAMS {
        return Err(SsfError::invalid(format!("at most {MAX_STREAMS} streams are kept")));
    }
    let stream_id = new_jti();
    let aud = match (&client_id, text(request.aud, "aud")?) {
        (Some(_), Some(_)) => return Err(SsfError::invalid("aud is chosen by the transmitter")),
        (Some(id), None) => id.clone(),
        (None, Some(aud)) => aud,
        (None, None) => format!("{}{}/{stream_id}", authz.config.issuer, super::STREAMS_PATH),
    };
    let (events_requested, events_delivered) = check_events(request.events_requested.unwrap_or_default())?;
    let config = StreamConfig {
        delivery: check_delivery(authz, request.delivery, &stream_id)?,
        stream_id: stream_id.clone(),
        iss: authz.config.issuer.clone(),
        aud,
        events_supported: EVENTS_SUPPORTED.iter().map(|s| s.to_string()).collect(),
        events_requested,
        events_delivered,
        description: text(request.description, "description")?,
    };
    let stream = SsfStream {
        stream_id,
        client_id,
        config: serde_json::to_string(&config).map_err(|e| mandate_core::OAuthError::server_error(e.to_string()))?,
        status: Status::Enabled.as_str().into(),
        created_at_ms: authz.clock.now_ms(),
    };
    Ok((config, stream))
}

/// Reads one stream, or all the caller's (SSF 1.0 §8.1.1.2).
pub async fn read(
    authz: &Authz,
    caller: &Caller,
    stream_id: Option<&str>,
    correlation_id: &str,
) -> Result<Value, SsfError> {
    let event = event("ssf.stream.read", caller, correlation_id);
    let outcome = async {
        if let Some(id) = stream_id {
            return Ok((parse_config(&find(authz, caller, id).await?)?.public(&authz.config.issuer), None));
        }
        let streams = authz.store.ssf_streams().await.map_err(store_failure)?;
        let shown: Result<Vec<Value>, SsfError> = streams
            .iter()
            .filter(|s| visible(caller, s))
            .map(|s| parse_config(s).map(|c| c.public(&authz.config.issuer)))
            .collect();
        Ok((Value::Array(shown?), None))
    }
    .await;
    finish(authz, event, outcome).await
}

/// Updates the receiver-supplied members present in `request` (PATCH, SSF 1.0 §8.1.1.3).
pub async fn update(
    authz: &Authz,
    caller: &Caller,
    request: StreamRequest,
    correlation_id: &str,
) -> Result<Value, SsfError> {
    let mut event = event("ssf.stream.update", caller, correlation_id);
    if let Some(id) = &request.stream_id {
        event.detail = Some(format!("stream={id}"));
    }
    let outcome = async {
        let id = request.stream_id.clone().ok_or_else(|| SsfError::invalid("stream_id is required"))?;
        let mut stream = find(authz, caller, &id).await?;
        let mut config = parse_config(&stream)?;
        if request.aud.as_ref().is_some_and(|a| *a != config.aud) {
            return Err(SsfError::invalid("aud cannot be changed"));
        }
        if let Some(requested) = request.events_requested {
            (config.events_requested, config.events_delivered) = check_events(requested)?;
        }
        if request.delivery.is_some() {
            config.delivery = check_delivery(authz, request.delivery, &id)?;
        }
        if request.description.is_some() {
            config.description = text(request.description, "description")?;
        }
        stream.config =
            serde_json::to_string(&config).map_err(|e| mandate_core::OAuthError::server_error(e.to_string()))?;
        Ok((config.public(&authz.config.issuer), Some(Mutation::Ssf(SsfMutation::UpdateStream(stream)))))
    }
    .await;
    finish(authz, event, outcome).await
}

/// Deletes a stream and its undelivered events (SSF 1.0 §8.1.1.5).
pub async fn delete(authz: &Authz, caller: &Caller, stream_id: &str, correlation_id: &str) -> Result<(), SsfError> {
    let event = event("ssf.stream.delete", caller, correlation_id).with_detail(format!("stream={stream_id}"));
    let outcome = async {
        let stream = find(authz, caller, stream_id).await?;
        Ok(((), Some(Mutation::Ssf(SsfMutation::DeleteStream(stream.stream_id)))))
    }
    .await;
    finish(authz, event, outcome).await
}

/// A stream's status (SSF 1.0 §8.1.2.1).
pub async fn status(authz: &Authz, caller: &Caller, stream_id: &str, correlation_id: &str) -> Result<Value, SsfError> {
    let event = event("ssf.stream.status", caller, correlation_id).with_detail(format!("stream={stream_id}"));
    let outcome = async {
        let stream = find(authz, caller, stream_id).await?;
        Ok((json!({"stream_id": stream.stream_id, "status": stream.status}), None))
    }
    .await;
    finish(authz, event, outcome).await
}

/// Sets a stream's status (SSF 1.0 §8.1.2.2): paused streams keep their events for later,
/// disabled ones receive none.
pub async fn set_status(
    authz: &Authz,
    caller: &Caller,
    stream_id: &str,
    status: &str,
    correlation_id: &str,
) -> Result<Value, SsfError> {
    let event = event("ssf.stream.status.update", caller, correlation_id)
        .with_detail(format!("stream={stream_id} status={status}"));
    let outcome = async {
        let wanted =
            Status::parse(status).ok_or_else(|| SsfError::invalid("status must be enabled, paused or disabled"))?;
        let mut stream = find(authz, caller, stream_id).await?;
        stream.status = wanted.as_str().into();
        let answer = json!({"stream_id": stream.stream_id, "status": stream.status});
        Ok((answer, Some(Mutation::Ssf(SsfMutation::UpdateStream(stream)))))
    }
    .await;
    finish(authz, event, outcome).await
}

/// Queues a verification event echoing `state` (SSF 1.0 §8.1.4.2).
pub async fn verify(
    authz: &Authz,
    caller: &Caller,
    stream_id: &str,
    state: Option<String>,
    correlation_id: &str,
) -> Result<(), SsfError> {
    let event = event("ssf.stream.verify", caller, correlation_id).with_detail(format!("stream={stream_id}"));
    let outcome = async {
        let state = text(state, "state")?;
        let stream = find(authz, caller, stream_id).await?;
        let config = parse_config(&stream)?;
        let fields = state.map_or_else(|| json!({}), |s| json!({"state": s}));
        let sub_id = json!({"format": "opaque", "id": stream.stream_id});
        let entry = super::events::outbox_entry(authz, &config, correlation_id, sub_id, VERIFICATION, fields)?;
        Ok(((), Some(entry)))
    }
    .await;
    finish(authz, event, outcome).await
}
