//! A tiny MCP server (streamable HTTP transport, plain JSON responses) protected by Mandate's
//! guard: Protected Resource Metadata at its RFC 9728 well-known URL, and `POST /mcp` requiring
//! `notes:read`, with a `notes:write` step-up for the `add_note` tool. A sample, not a product.

mod mcp;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use mandate_guard::{BadResource, Guard, GuardConfig, Required, protected_resource_metadata, require_scopes};
use parking_lot::Mutex;

/// Scope every MCP request needs.
pub const READ_SCOPE: &str = "notes:read";
/// Scope the `add_note` tool needs on top.
pub const WRITE_SCOPE: &str = "notes:write";

/// The guard configuration for this server: `resource` is the MCP endpoint's URL (e.g.
/// `https://notes.example/mcp`), `issuers` the authorization servers it trusts.
pub fn guard_config(resource: &str, issuers: Vec<String>, scopes: &str) -> Result<GuardConfig, BadResource> {
    let mut config = GuardConfig::new(resource, issuers)?;
    config.scopes_supported = scopes.split_whitespace().map(str::to_owned).collect();
    config.resource_name = Some("Mandate example notes (MCP)".into());
    Ok(config)
}

/// Shared by the handlers: the guard (for the step-up check) and the notes kept in memory.
pub struct App {
    guard: Arc<Guard>,
    notes: Mutex<Vec<mcp::Note>>,
}

/// The whole server: metadata routes and the guarded `/mcp` endpoint.
pub fn router(guard: Arc<Guard>) -> Result<Router, BadResource> {
    let metadata_path = well_known_path(&guard.config().resource_metadata_url)
        .ok_or_else(|| BadResource(guard.config().resource.clone()))?;
    let required = Required::new(Arc::clone(&guard), READ_SCOPE)
        .map_err(|_| BadResource(format!("scope {READ_SCOPE} is not a valid scope")))?;
    let app = Arc::new(App { guard, notes: Mutex::default() });
    let mcp = Router::new()
        .route("/mcp", post(mcp::handle))
        .route_layer(axum::middleware::from_fn_with_state(required, require_scopes));
    let mut router = Router::new().route("/.well-known/oauth-protected-resource", get(metadata));
    if metadata_path != "/.well-known/oauth-protected-resource" {
        router = router.route(&metadata_path, get(metadata));
    }
    Ok(router.merge(mcp).with_state(app))
}

/// The path part of the metadata URL, where this server answers it.
fn well_known_path(metadata_url: &str) -> Option<String> {
    url::Url::parse(metadata_url).ok().map(|u| u.path().to_owned())
}

async fn metadata(State(app): State<Arc<App>>) -> impl IntoResponse {
    Json(protected_resource_metadata(app.guard.config()))
}
