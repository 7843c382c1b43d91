//! Registered resources with their scopes, and the active Cedar policy set (ids and text,
//! read-only; it is replaced only through the admin API or the CLI).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::agents::store_error;
use super::{Chrome, Viewer, unavailable};
use crate::AppState;

pub(crate) struct ResourceRow {
    pub uri: String,
    pub scopes: String,
    /// Whether the policy text names this resource (a hint, not a decision).
    pub in_policy: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/resources.html")]
struct ResourcesPage {
    chrome: Chrome,
    resources: Vec<ResourceRow>,
    policy_ids: Vec<String>,
    policy_source: Option<String>,
}

pub(crate) async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let resources = match state.authz.store.resources().await {
        Ok(resources) => resources,
        Err(e) => return unavailable(&viewer, &store_error(e)),
    };
    let policy_source = state.authz.policy.source();
    let resources = resources
        .into_iter()
        .map(|r| ResourceRow {
            in_policy: policy_source.as_deref().is_some_and(|text| text.contains(r.uri.as_str())),
            uri: r.uri.to_string(),
            scopes: r.scopes.join(" "),
        })
        .collect();
    let body = ResourcesPage {
        chrome: viewer.chrome(),
        resources,
        policy_ids: state.authz.policy.policy_ids(),
        policy_source,
    };
    super::page(body.into_response())
}
