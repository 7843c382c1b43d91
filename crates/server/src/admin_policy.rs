//! Admin API for Cedar policy: read the stored set, validate a candidate, replace the set. A
//! candidate that fails schema validation is refused with the validator's message and the
//! active set keeps deciding; every replacement attempt is audited by `authz::policy`.

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use mandate_authz::policy::{self, PolicyAdminError};
use serde_json::json;

use crate::AppState;
use crate::admin::{Admin, ApiError, ApiResult, error, found};

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/policies", get(show).put(replace))
        .route("/policies/validate", post(validate))
        .route("/policies/schema", get(schema))
        // A policy set is larger than the admin API's JSON bodies.
        .route_layer(DefaultBodyLimit::max(MAX_POLICY_BYTES))
}

/// The largest policy set the API accepts.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// The stored set (text, version, policy ids); 404 before any set was stored.
async fn show(_: Admin, State(s): State<AppState>) -> ApiResult {
    found(policy::stored(&s.authz).await.map_err(admin_error)?, "policy set")
}

/// Replaces the active set with the request body (Cedar text).
async fn replace(admin: Admin, State(s): State<AppState>, source: String) -> ApiResult {
    let summary = policy::replace(&s.authz, &source, &admin.correlation).await.map_err(admin_error)?;
    Ok(Json(json!({"policies": summary.policies, "ids": summary.ids})).into_response())
}

/// Checks a candidate set against the schema without activating it.
async fn validate(_: Admin, source: String) -> ApiResult {
    let summary = mandate_policy::validate(&source).map_err(|e| invalid(&e.to_string()))?;
    Ok(Json(json!({"valid": true, "policies": summary.policies, "ids": summary.ids})).into_response())
}

/// The published Cedar schema policies are validated against.
async fn schema(_: Admin) -> ApiResult {
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], mandate_policy::SCHEMA).into_response())
}

fn invalid(message: &str) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid_policy", message)
}

fn admin_error(e: PolicyAdminError) -> ApiError {
    match e {
        PolicyAdminError::Invalid(message) => invalid(&message),
        PolicyAdminError::Unavailable(why) => error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &why),
    }
}
