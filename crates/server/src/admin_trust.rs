//! Admin API for cross-domain trust: trusted identity providers (`/trusted-idps`), whose ID-JAGs
//! and ID tokens Mandate accepts, and each agent's ID-JAG delegation targets
//! (`/agents/{name}/delegations`). Changes go through the audited `authz::trust` functions.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use mandate_authz::trust::{self, NewDelegationTarget, NewTrustedIdp};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::admin::{Admin, ApiResult, created, found, registry_error, store_error};

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/trusted-idps", get(list_idps).post(create_idp))
        .route("/trusted-idps/{name}", get(get_idp).delete(delete_idp))
        .route("/agents/{name}/delegations", get(list_delegations).post(create_delegation).delete(delete_delegation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedIdpBody {
    name: String,
    issuer: String,
    jwks_url: Option<String>,
    /// A JWK Set object, instead of `jwks_url`.
    jwks: Option<Value>,
}

async fn list_idps(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(Json(s.authz.store.trusted_idps().await.map_err(store_error)?).into_response())
}

async fn get_idp(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let idps = s.authz.store.trusted_idps().await.map_err(store_error)?;
    found(idps.into_iter().find(|i| i.name.as_str() == name), "trusted IdP")
}

async fn create_idp(admin: Admin, State(s): State<AppState>, Json(body): Json<TrustedIdpBody>) -> ApiResult {
    let new = NewTrustedIdp {
        name: body.name,
        issuer: body.issuer,
        jwks_url: body.jwks_url,
        jwks: body.jwks.map(|j| j.to_string()),
    };
    let idp = trust::create_trusted_idp(&s.authz, new, &admin.correlation).await.map_err(registry_error)?;
    Ok(created(idp))
}

async fn delete_idp(admin: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    trust::delete_trusted_idp(&s.authz, &name, &admin.correlation).await.map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DelegationBody {
    audience: String,
    resource: String,
    scopes: Vec<String>,
    /// The agent's client id at the `audience` authorization server.
    client_id: String,
}

#[derive(Deserialize)]
pub(crate) struct DelegationQuery {
    audience: String,
    resource: String,
}

async fn list_delegations(_: Admin, State(s): State<AppState>, Path(agent): Path<String>) -> ApiResult {
    if s.authz.store.agent(&agent).await.map_err(store_error)?.is_none() {
        return found(None::<()>, "agent");
    }
    Ok(Json(s.authz.store.delegation_targets(&agent).await.map_err(store_error)?).into_response())
}

async fn create_delegation(
    admin: Admin,
    State(s): State<AppState>,
    Path(agent): Path<String>,
    Json(body): Json<DelegationBody>,
) -> ApiResult {
    let new = NewDelegationTarget {
        agent,
        audience: body.audience,
        resource: body.resource,
        scopes: body.scopes,
        remote_client_id: body.client_id,
    };
    let target = trust::create_delegation_target(&s.authz, new, &admin.correlation).await.map_err(registry_error)?;
    Ok(created(target))
}

async fn delete_delegation(
    admin: Admin,
    State(s): State<AppState>,
    Path(agent): Path<String>,
    Query(q): Query<DelegationQuery>,
) -> ApiResult {
    trust::delete_delegation_target(&s.authz, &agent, &q.audience, &q.resource, &admin.correlation)
        .await
        .map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
