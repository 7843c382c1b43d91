//! The Shared Signals Framework transmitter's HTTP surface: `/.well-known/ssf-configuration`,
//! stream management (`/ssf/streams`, `/ssf/status`, `/ssf/verify`) and RFC 8936 polling
//! (`/ssf/poll/{stream_id}`). Callers are the admin bearer credential or a client with
//! `client_secret_basic` credentials; everything else is in `mandate_authz::ssf`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mandate_authz::client_auth::{Presented, authenticate};
use mandate_authz::ssf::{self, SsfError, poll::PollRequest, streams};
use mandate_authz::{Caller, record_refusal};
use mandate_core::{AuditEvent, ClientAuthMethod, OAuthError};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::oauth::{basic_credentials, bearer, no_store};
use crate::reply::{correlation_id, with_request_id};

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/.well-known/ssf-configuration", get(configuration))
        .route(ssf::STREAMS_PATH, get(read_streams).post(create_stream).patch(update_stream).delete(delete_stream))
        .route(ssf::STATUS_PATH, get(get_status).post(set_status))
        .route(ssf::VERIFY_PATH, post(verify))
        .route(&format!("{}/{{stream_id}}", ssf::POLL_PATH), post(poll))
}

async fn configuration(State(state): State<AppState>) -> Response {
    let mut response = Json(ssf::configuration(&state.authz.config.issuer)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// A refusal as SSF answers it: its status and an OAuth-style error body.
struct Refusal(SsfError);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = no_store((status, Json(self.0.error)).into_response());
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mandate\""));
        }
        response
    }
}

/// Audits a refusal that happened before `authz` was reached.
async fn refuse(state: &AppState, action: &str, correlation: &str, error: SsfError) -> Refusal {
    let logged = record_refusal(&state.authz, AuditEvent::allow(action, correlation), error.error.clone()).await;
    Refusal(if logged == error.error { error } else { logged.into() })
}

/// The admin credential, or a client authenticated with HTTP Basic.
async fn caller(state: &AppState, headers: &HeaderMap, action: &str, correlation: &str) -> Result<Caller, Refusal> {
    if let Some(presented) = bearer(headers) {
        if state.is_admin_token(presented) {
            return Ok(Caller::Admin);
        }
        let error = OAuthError::invalid_client("the bearer credential is not valid here");
        return Err(refuse(state, action, correlation, error.into()).await);
    }
    let basic = match basic_credentials(headers) {
        Ok(Some(basic)) => basic,
        Ok(None) => {
            let error = OAuthError::invalid_client("the admin credential or client credentials (Basic) are required");
            return Err(refuse(state, action, correlation, error.into()).await);
        }
        Err(reply) => return Err(refuse(state, action, correlation, reply.error.into()).await),
    };
    let (client_id, secret) = basic;
    let presented = Presented::Secret { client_id, secret, method: ClientAuthMethod::ClientSecretBasic };
    match authenticate(&state.authz, presented, correlation).await {
        Ok(client) => Ok(Caller::Client(Box::new(client))),
        Err(error) => Err(refuse(state, action, correlation, error.into()).await),
    }
}

async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    action: &str,
    correlation: &str,
) -> Result<T, Refusal> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let parsed = if is_json {
        serde_json::from_slice(body).map_err(|e| SsfError::invalid(format!("malformed JSON body: {e}")))
    } else {
        Err(SsfError::invalid("the body must be application/json"))
    };
    match parsed {
        Ok(value) => Ok(value),
        Err(error) => Err(refuse(state, action, correlation, error).await),
    }
}

fn answer<T: serde::Serialize>(result: Result<T, SsfError>, success: StatusCode, correlation: &str) -> Response {
    let response = match result {
        Ok(body) => no_store((success, Json(body)).into_response()),
        Err(e) => Refusal(e).into_response(),
    };
    with_request_id(response, correlation)
}

fn empty(result: Result<(), SsfError>, correlation: &str) -> Response {
    let response = match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => Refusal(e).into_response(),
    };
    with_request_id(response, correlation)
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    stream_id: Option<String>,
}

/// Runs `$body` with the authenticated caller, or answers the authentication refusal.
macro_rules! with_caller {
    ($state:expr, $headers:expr, $action:expr, $correlation:expr, |$caller:ident| $body:expr) => {
        match caller(&$state, &$headers, $action, &$correlation).await {
            Ok($caller) => $body,
            Err(refusal) => with_request_id(refusal.into_response(), &$correlation),
        }
    };
}

async fn create_stream(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation = correlation_id(&headers);
    let action = "ssf.stream.create";
    with_caller!(state, headers, action, correlation, |caller| {
        match json_body(&state, &headers, &body, action, &correlation).await {
            Ok(request) => {
                let created = streams::create(&state.authz, &caller, request, &correlation).await;
                answer(created, StatusCode::CREATED, &correlation)
            }
            Err(refusal) => with_request_id(refusal.into_response(), &correlation),
        }
    })
}

async fn read_streams(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<StreamQuery>) -> Response {
    let correlation = correlation_id(&headers);
    with_caller!(state, headers, "ssf.stream.read", correlation, |caller| {
        let read = streams::read(&state.authz, &caller, q.stream_id.as_deref(), &correlation).await;
        answer(read, StatusCode::OK, &correlation)
    })
}

async fn update_stream(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation = correlation_id(&headers);
    let action = "ssf.stream.update";
    with_caller!(state, headers, action, correlation, |caller| {
        match json_body(&state, &headers, &body, action, &correlation).await {
            Ok(request) => answer(
                streams::update(&state.authz, &caller, request, &correlation).await,
                StatusCode::OK,
                &correlation,
            ),
            Err(refusal) => with_request_id(refusal.into_response(), &correlation),
        }
    })
}

async fn delete_stream(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<StreamQuery>) -> Response {
    let correlation = correlation_id(&headers);
    with_caller!(state, headers, "ssf.stream.delete", correlation, |caller| {
        let deleted = match q.stream_id.as_deref() {
            Some(id) => streams::delete(&state.authz, &caller, id, &correlation).await,
            None => Err(refuse(&state, "ssf.stream.delete", &correlation, SsfError::invalid("stream_id is required"))
                .await
                .0),
        };
        empty(deleted, &correlation)
    })
}

async fn get_status(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<StreamQuery>) -> Response {
    let correlation = correlation_id(&headers);
    with_caller!(state, headers, "ssf.stream.status", correlation, |caller| {
        let status = match q.stream_id.as_deref() {
            Some(id) => streams::status(&state.authz, &caller, id, &correlation).await,
            None => Err(refuse(&state, "ssf.stream.status", &correlation, SsfError::invalid("stream_id is required"))
                .await
                .0),
        };
        answer(status, StatusCode::OK, &correlation)
    })
}

#[derive(Debug, Deserialize)]
struct StatusRequest {
    stream_id: String,
    status: String,
}

async fn set_status(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation = correlation_id(&headers);
    let action = "ssf.stream.status.update";
    with_caller!(state, headers, action, correlation, |caller| {
        match json_body::<StatusRequest>(&state, &headers, &body, action, &correlation).await {
            Ok(r) => {
                let set = streams::set_status(&state.authz, &caller, &r.stream_id, &r.status, &correlation).await;
                answer(set, StatusCode::OK, &correlation)
            }
            Err(refusal) => with_request_id(refusal.into_response(), &correlation),
        }
    })
}

#[derive(Debug, Deserialize)]
struct VerifyRequest {
    stream_id: String,
    #[serde(default)]
    state: Option<String>,
}

async fn verify(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation = correlation_id(&headers);
    let action = "ssf.stream.verify";
    with_caller!(state, headers, action, correlation, |caller| {
        match json_body::<VerifyRequest>(&state, &headers, &body, action, &correlation).await {
            Ok(r) => {
                empty(streams::verify(&state.authz, &caller, &r.stream_id, r.state, &correlation).await, &correlation)
            }
            Err(refusal) => with_request_id(refusal.into_response(), &correlation),
        }
    })
}

async fn poll(
    State(state): State<AppState>,
    Path(stream_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let correlation = correlation_id(&headers);
    let action = "ssf.poll";
    with_caller!(state, headers, action, correlation, |caller| {
        match json_body::<PollRequest>(&state, &headers, &body, action, &correlation).await {
            Ok(request) => {
                let polled = ssf::poll::poll(&state.authz, &caller, &stream_id, request, &correlation).await;
                answer(polled, StatusCode::OK, &correlation)
            }
            Err(refusal) => with_request_id(refusal.into_response(), &correlation),
        }
    })
}
