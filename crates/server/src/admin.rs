//! The admin API (`/admin/api/v1`), bearer-protected by the admin credential created at first
//! start: registry CRUD, the kill switch, key rotation and audit export. Failed admin
//! authentication is audited like any other refusal.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use mandate_authz::registry::{self, NewAgent, NewClient, RecordKind, RegistryError};
use mandate_authz::{record_refusal, revoke};
use mandate_core::{AuditEvent, ClientAuthMethod, OAuthError};
use mandate_crypto::Alg;
use mandate_store::{EpochKind, MutationError, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::reply::correlation_id;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/owners", get(list_owners).post(create_owner))
        .route("/owners/{name}", get(get_owner).delete(delete_owner))
        .route("/owners/{name}/password", axum::routing::put(set_owner_password))
        .route("/agents", get(list_agents).post(create_agent))
        .route("/agents/{name}", get(get_agent).delete(delete_agent))
        .route("/clients", get(list_clients).post(create_client))
        .route("/clients/{id}", get(get_client).delete(delete_client))
        .route("/resources", get(list_resources).post(create_resource))
        .route("/resources", delete(delete_resource))
        .route("/federation-rules", get(list_federation_rules).post(create_federation_rule))
        .route("/federation-rules/{name}", get(get_federation_rule).delete(delete_federation_rule))
        .route("/revocations", post(revoke_subject))
        .route("/keys/rotate", post(rotate_key))
        .route("/audit/export", get(export_audit))
        .route("/audit/key", get(audit_key))
        .merge(crate::admin_trust::routes())
        .merge(crate::admin_policy::routes())
        .merge(crate::admin_audit::routes())
}

/// Proof that the request carried the admin credential, plus its correlation id.
pub(crate) struct Admin {
    pub(crate) correlation: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let correlation = correlation_id(&parts.headers);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if presented.is_some_and(|t| state.is_admin_token(t)) {
            return Ok(Self { correlation });
        }
        let event = AuditEvent::allow("admin.authenticate", &correlation);
        record_refusal(&state.authz, event, OAuthError::invalid_client("missing or wrong admin credential")).await;
        let mut response =
            error(StatusCode::UNAUTHORIZED, "unauthorized", "admin bearer credential required").into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mandate-admin\""));
        Err(response)
    }
}

/// An admin API error body: `{"error": code, "error_description": …}`.
pub(crate) struct ApiError {
    status: StatusCode,
    code: String,
    description: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.code, "error_description": self.description}))).into_response()
    }
}

pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> ApiError {
    ApiError { status, code: code.to_owned(), description: description.to_owned() }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn registry_error(e: RegistryError) -> ApiError {
    match &e {
        RegistryError::Invalid(why) => error(StatusCode::BAD_REQUEST, "invalid_request", why),
        RegistryError::Refused(MutationError::NotFound(_)) => error(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        RegistryError::Refused(refused) => error(StatusCode::CONFLICT, refused.reason(), &e.to_string()),
        RegistryError::Unavailable(why) => error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", why),
    }
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "storage is unavailable")
}

pub(crate) fn found<T: serde::Serialize>(value: Option<T>, what: &str) -> ApiResult {
    value
        .map(|v| Json(v).into_response())
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found", &format!("no such {what}")))
}

pub(crate) fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OwnerBody {
    name: String,
    display_name: Option<String>,
}

async fn list_owners(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(Json(s.authz.store.owners().await.map_err(store_error)?).into_response())
}

async fn get_owner(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    found(s.authz.store.owner(&name).await.map_err(store_error)?, "owner")
}

async fn create_owner(admin: Admin, State(s): State<AppState>, Json(body): Json<OwnerBody>) -> ApiResult {
    let owner = registry::create_owner(&s.authz, &body.name, body.display_name, &admin.correlation)
        .await
        .map_err(registry_error)?;
    Ok(created(owner))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordBody {
    password: String,
}

/// Sets the password the owner signs in with at the authorization endpoint; 204 on success.
async fn set_owner_password(
    admin: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<PasswordBody>,
) -> ApiResult {
    let password = zeroize::Zeroizing::new(body.password);
    mandate_authz::password::set_owner_password(&s.authz, &name, password, &admin.correlation)
        .await
        .map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_owner(admin: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    remove(&s, RecordKind::Owner, &name, &admin).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentBody {
    name: String,
    owner: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    selectors: Vec<String>,
    #[serde(default)]
    may_impersonate: bool,
}

async fn list_agents(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(Json(s.authz.store.agents().await.map_err(store_error)?).into_response())
}

async fn get_agent(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    found(s.authz.store.agent(&name).await.map_err(store_error)?, "agent")
}

async fn create_agent(admin: Admin, State(s): State<AppState>, Json(body): Json<AgentBody>) -> ApiResult {
    let new = NewAgent {
        name: body.name,
        owner: body.owner,
        scopes: body.scopes,
        selectors: body.selectors,
        may_impersonate: body.may_impersonate,
    };
    let agent = registry::create_agent(&s.authz, new, &admin.correlation).await.map_err(registry_error)?;
    Ok(created(agent))
}

async fn delete_agent(admin: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    remove(&s, RecordKind::Agent, &name, &admin).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientBody {
    agent: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    grant_types: Vec<String>,
    client_name: Option<String>,
    #[serde(default = "default_auth_method")]
    token_endpoint_auth_method: String,
    /// A JWK Set object, for `private_key_jwt`.
    jwks: Option<Value>,
    #[serde(default)]
    can_introspect: bool,
    backchannel_logout_uri: Option<String>,
    /// CIBA: `poll` (default) or `ping`.
    backchannel_token_delivery_mode: Option<String>,
    /// CIBA ping mode: where callbacks are posted.
    backchannel_client_notification_endpoint: Option<String>,
}

fn default_auth_method() -> String {
    ClientAuthMethod::ClientSecretBasic.as_str().to_owned()
}

async fn list_clients(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(Json(s.authz.store.clients().await.map_err(store_error)?).into_response())
}

async fn get_client(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    found(s.authz.store.client(&id).await.map_err(store_error)?, "client")
}

async fn create_client(admin: Admin, State(s): State<AppState>, Json(body): Json<ClientBody>) -> ApiResult {
    let new = NewClient {
        agent: body.agent,
        auth_method: body.token_endpoint_auth_method,
        jwks: body.jwks.map(|j| j.to_string()),
        client_id: body.client_id,
        can_introspect: body.can_introspect,
        redirect_uris: body.redirect_uris,
        grant_types: body.grant_types,
        client_name: body.client_name,
        backchannel_logout_uri: body.backchannel_logout_uri,
        backchannel_token_delivery_mode: body.backchannel_token_delivery_mode,
        backchannel_client_notification_endpoint: body.backchannel_client_notification_endpoint,
    };
    let made = registry::create_client(&s.authz, new, &admin.correlation).await.map_err(registry_error)?;
    let mut out = serde_json::to_value(&made.client).unwrap_or_default();
    if let (Some(secret), Some(obj)) = (made.secret, out.as_object_mut()) {
        obj.insert("client_secret".into(), Value::String(secret));
    }
    Ok(created(out))
}

async fn delete_client(admin: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    remove(&s, RecordKind::Client, &id, &admin).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceBody {
    uri: String,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct ResourceQuery {
    uri: String,
}

async fn list_resources(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(Json(s.authz.store.resources().await.map_err(store_error)?).into_response())
}

async fn create_resource(admin: Admin, State(s): State<AppState>, Json(body): Json<ResourceBody>) -> ApiResult {
    let resource = registry::create_resource(&s.authz, &body.uri, &body.scopes, &admin.correlation)
        .await
        .map_err(registry_error)?;
    Ok(created(resource))
}

async fn delete_resource(admin: Admin, State(s): State<AppState>, Query(q): Query<ResourceQuery>) -> ApiResult {
    remove(&s, RecordKind::Resource, &q.uri, &admin).await
}

async fn remove(s: &AppState, kind: RecordKind, key: &str, admin: &Admin) -> ApiResult {
    registry::delete(&s.authz, kind, key, &admin.correlation).await.map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FederationRuleBody {
    name: String,
    issuer: String,
    jwks_url: Option<String>,
    /// A JWK Set object, instead of `jwks_url`.
    jwks: Option<Value>,
    audience: String,
    subject: String,
    /// `exact` (default) or `prefix`.
    subject_match: Option<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, String>,
    agent: String,
    max_ttl_secs: Option<i64>,
}

async fn list_federation_rules(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(Json(s.authz.store.federation_rules().await.map_err(store_error)?).into_response())
}

async fn get_federation_rule(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let rules = s.authz.store.federation_rules().await.map_err(store_error)?;
    found(rules.into_iter().find(|r| r.name.as_str() == name), "federation rule")
}

async fn create_federation_rule(
    admin: Admin,
    State(s): State<AppState>,
    Json(body): Json<FederationRuleBody>,
) -> ApiResult {
    let new = mandate_authz::federation::NewFederationRule {
        name: body.name,
        issuer: body.issuer,
        jwks_url: body.jwks_url,
        jwks: body.jwks.map(|j| j.to_string()),
        audience: body.audience,
        subject: body.subject,
        subject_match: body.subject_match,
        claims: body.claims,
        agent: body.agent,
        max_ttl_secs: body.max_ttl_secs,
    };
    let rule = registry::create_federation_rule(&s.authz, new, &admin.correlation).await.map_err(registry_error)?;
    Ok(created(rule))
}

async fn delete_federation_rule(admin: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    registry::delete_federation_rule(&s.authz, &name, &admin.correlation).await.map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevocationBody {
    agent: Option<String>,
    owner: Option<String>,
    client: Option<String>,
}

async fn revoke_subject(admin: Admin, State(s): State<AppState>, Json(body): Json<RevocationBody>) -> ApiResult {
    let (kind, name) = match (body.agent, body.owner, body.client) {
        (Some(a), None, None) => (EpochKind::Agent, a),
        (None, Some(o), None) => (EpochKind::Owner, o),
        (None, None, Some(c)) => (EpochKind::Client, c),
        _ => {
            let refusal = OAuthError::invalid_request("name exactly one of agent, owner, client");
            let event = AuditEvent::allow("revoke", &admin.correlation);
            let refusal = record_refusal(&s.authz, event, refusal).await;
            return Err(error(StatusCode::BAD_REQUEST, refusal.code.as_str(), &refusal.description));
        }
    };
    match revoke::revoke_subject(&s.authz, kind, &name, &admin.correlation).await {
        Ok(not_before) => Ok(Json(json!({ kind.as_str(): name, "revoked_before": not_before })).into_response()),
        Err(e) => Err(error(
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            e.code.as_str(),
            &e.description,
        )),
    }
}

/// The longest publish lead a rotation may ask for (30 days).
const MAX_ACTIVATE_IN_SECS: i64 = 30 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    alg: String,
    #[serde(default)]
    activate_in_secs: Option<i64>,
}

async fn rotate_key(admin: Admin, State(s): State<AppState>, Json(body): Json<RotateBody>) -> ApiResult {
    let lead_secs = body.activate_in_secs.unwrap_or(s.authz.config.key_publish_lead_secs);
    let alg = match Alg::parse(&body.alg) {
        // Bounded so the millisecond arithmetic below cannot overflow.
        Some(alg) if (0..=MAX_ACTIVATE_IN_SECS).contains(&lead_secs) => alg,
        parsed => {
            let why = if parsed.is_none() {
                "alg must be EdDSA or ES256".to_owned()
            } else {
                format!("activate_in_secs must be between 0 and {MAX_ACTIVATE_IN_SECS}")
            };
            let event = AuditEvent::allow("key.rotate", &admin.correlation);
            let refusal = record_refusal(&s.authz, event, OAuthError::invalid_request(why)).await;
            return Err(error(StatusCode::BAD_REQUEST, refusal.code.as_str(), &refusal.description));
        }
    };
    let now = s.authz.clock.now_ms();
    let kid = s
        .authz
        .keys
        .rotate(&s.authz.log, mandate_authz::keyring::PURPOSE_TOKEN, alg, lead_secs * 1000, now, &admin.correlation)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &e.to_string()))?;
    Ok(Json(json!({"kid": kid, "alg": alg.as_str(), "activates_at_ms": now + lead_secs * 1000})).into_response())
}

async fn export_audit(_: Admin, State(s): State<AppState>) -> ApiResult {
    let mut out = Vec::new();
    mandate_audit::export(&s.authz.log, &mut out)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

async fn audit_key(_: Admin, State(s): State<AppState>) -> ApiResult {
    Ok(s.authz.log.signer().verifier_key().into_response())
}
