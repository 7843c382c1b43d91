//! Mandate's HTTP surface on one port: OAuth endpoints (`/oauth2/*`), discovery
//! (`/.well-known/*`), the admin API (`/admin/api/v1/*`) and health. Handlers only translate
//! HTTP to calls into `authz`; no business rule lives here.

mod admin;
mod admin_audit;
mod admin_policy;
mod admin_trust;
mod authorize;
mod ciba;
mod discovery;
mod health;
mod metrics;
mod oauth;
mod openapi;
mod register;
mod reply;
mod request_id;
mod spiffe;
mod ssf;
mod transparency;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use mandate_authz::Authz;
use mandate_crypto::{constant_time_eq, hash_secret};
use tower_http::timeout::TimeoutLayer;

pub use metrics::Metrics;
pub use reply::MAX_FORM_BYTES;
pub use ui::Console;

/// Largest JSON body the admin API reads.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// A request (body included) that takes longer is answered 408, so slow clients can't pin tasks.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared request state.
#[derive(Clone)]
pub struct AppState {
    pub authz: Authz,
    /// SHA-256 (hex) of the admin bearer credential.
    pub admin_token_hash: Arc<str>,
    /// The trust domain's SPIFFE CA (bundle, JWT-SVID discovery, join tokens).
    pub spiffe: Arc<mandate_workload::ca::SpiffeCa>,
    /// Browser sign-in sessions and pending authorization requests (per process).
    pub interactions: Arc<mandate_authz::authorize::Interactions>,
    /// Prometheus metrics served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The web console's sessions and verified audit prefix (per process).
    pub console: Arc<Console>,
}

impl AppState {
    pub(crate) fn is_admin_token(&self, presented: &str) -> bool {
        constant_time_eq(hash_secret(presented).as_bytes(), self.admin_token_hash.as_bytes())
    }
}

/// The complete router.
pub fn router(state: AppState) -> Router {
    let registration = register::routes(&state);
    let request_metrics = Arc::clone(&state.metrics);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::serve))
        .route("/admin/api/v1/openapi.json", get(openapi::document))
        .route("/.well-known/oauth-authorization-server", get(discovery::authorization_server))
        .route("/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/oauth2/authorize", get(authorize::authorize))
        .route("/oauth2/authorize/decision", post(authorize::decision))
        .route("/oauth2/bc-authorize", post(ciba::bc_authorize))
        .route("/oauth2/ciba/approve/{approval_id}", get(ciba::approval_page).post(ciba::approval_decision))
        .nest("/admin/api/v1", admin::routes())
        .nest("/ui", ui::routes())
        .merge(spiffe::routes())
        .merge(ssf::routes())
        .merge(transparency::routes())
        .merge(registration)
        .route_layer(axum::middleware::from_fn(request_id::remember_route))
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(axum::middleware::from_fn_with_state(request_metrics, request_id::track))
}
