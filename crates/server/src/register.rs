//! `POST /oauth2/register` (RFC 7591 dynamic client registration): a bounded JSON body handed to
//! `authz::register`. The route and its metadata exist only while registration is enabled;
//! metadata also says whether Client ID Metadata Documents are accepted.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Limited};
use mandate_authz::AuthzConfig;
use mandate_authz::register::MAX_REGISTRATION_BYTES;
use mandate_core::OAuthError;
use serde_json::Value;

use crate::AppState;
use crate::oauth::{no_store, refuse};
use crate::reply::{OAuthReply, correlation_id, with_request_id};

const ACTION: &str = "registry.client.register";

/// The registration route, or nothing (a 404) when registration is turned off.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    if state.authz.config.dynamic_registration {
        Router::new().route("/oauth2/register", post(register))
    } else {
        Router::new()
    }
}

/// The discovery fields for client identification (RFC 8414 `registration_endpoint`, CIMD).
pub(crate) fn advertise(config: &AuthzConfig, metadata: &mut Value) {
    let Some(doc) = metadata.as_object_mut() else {
        return;
    };
    if config.dynamic_registration {
        doc.insert("registration_endpoint".into(), Value::String(format!("{}/oauth2/register", config.issuer)));
    }
    doc.insert("client_id_metadata_document_supported".into(), Value::Bool(config.client_id_metadata_documents));
}

async fn register(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let result = match read_json(&headers, body).await {
        Err(reply) => Err(refuse(&state, ACTION, &correlation, reply).await),
        Ok(bytes) => {
            mandate_authz::register::register(&state.authz, &bytes, &correlation).await.map_err(OAuthReply::from)
        }
    };
    let response = match result {
        Ok(created) => no_store((StatusCode::CREATED, Json(created)).into_response()),
        Err(reply) => reply.into_response(),
    };
    with_request_id(response, &correlation)
}

/// An `application/json` body of at most [`MAX_REGISTRATION_BYTES`].
async fn read_json(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, OAuthReply> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media_type.as_deref() != Some("application/json") {
        return Err(OAuthError::invalid_request("Content-Type must be application/json").into());
    }
    match Limited::new(body, MAX_REGISTRATION_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(_) => Err(OAuthReply {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: OAuthError::invalid_request(format!("request body exceeds {MAX_REGISTRATION_BYTES} bytes")),
            basic_challenge: false,
        }),
    }
}
