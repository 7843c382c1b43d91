//! Pending CIBA approvals: an owner approves or denies their own in the console (the session
//! stands in for the password prompt, through `authz::ciba::decide_as_owner`); the
//! administrator sees every owner's pending requests, read-only.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mandate_authz::ciba::{Decision, approval_view, decide_as_owner, pending};
use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};

use super::agents::store_error;
use super::session::Who;
use super::{Chrome, Viewer, message, read_post, refuse, unavailable};
use crate::AppState;

pub(crate) struct PendingRow {
    pub approval_id: String,
    pub owner: String,
    pub binding_message: String,
    pub client: String,
    pub agent: String,
    pub resource: String,
    pub scopes: String,
    pub details: Option<String>,
    pub expires: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/approvals.html")]
pub(crate) struct ApprovalsPage {
    pub chrome: Chrome,
    /// Only an owner decides, and only their own requests.
    pub may_decide: bool,
    pub rows: Vec<PendingRow>,
}

async fn pending_rows(state: &AppState, viewer: &Viewer) -> Result<Vec<PendingRow>, OAuthError> {
    let owners = match &viewer.who {
        Who::Owner(name) => vec![name.clone()],
        Who::Admin => {
            let owners = state.authz.store.owners().await.map_err(store_error)?;
            owners.into_iter().map(|o| o.name.to_string()).collect()
        }
    };
    let mut rows = Vec::new();
    for owner in owners {
        for (request, _url) in pending(&state.authz, &owner).await? {
            // Decided or expired since the list was read: nothing left to show.
            let Ok(view) = approval_view(&state.authz, &request.approval_id).await else { continue };
            rows.push(PendingRow {
                approval_id: view.approval_id,
                owner: view.owner,
                binding_message: view.binding_message,
                client: match view.client_name {
                    Some(name) => format!("{name} ({})", view.client_id),
                    None => view.client_id,
                },
                agent: view.agent.map(|(agent, _)| agent).unwrap_or_default(),
                resource: view.resource,
                scopes: view.scopes.join(" "),
                details: view.authorization_details,
                expires: mandate_core::clock::rfc3339_ms(request.expires_at_ms),
            });
        }
    }
    Ok(rows)
}

pub(crate) async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    match pending_rows(&state, &viewer).await {
        Ok(rows) => {
            let body = ApprovalsPage { chrome: viewer.chrome(), may_decide: viewer.owner().is_some(), rows };
            super::page(body.into_response())
        }
        Err(error) => unavailable(&viewer, &error),
    }
}

/// Approve or Deny: the signed-in owner's own decision, audited as `ciba.approve` / `ciba.deny`
/// by `authz`. The administrator may not decide for an owner (refused and audited).
pub(crate) async fn decide(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(approval_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut form = match read_post(&state, &viewer, &headers, body, "ciba.decision").await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let Some(owner) = viewer.owner() else {
        let mut event = AuditEvent::allow("ciba.decision", &viewer.correlation);
        super::describe_viewer(&mut event, &viewer.who);
        return refuse(&state, &viewer, event, "only the owner named in a request may decide it").await;
    };
    let decision = form.take("decision");
    match decide_as_owner(&state.authz, &approval_id, owner, decision.as_deref(), &viewer.correlation).await {
        Ok(decided) => {
            let (title, text) = match decided {
                Decision::Approved => ("Approved", "The agent may now collect one token for this action."),
                Decision::Denied => ("Denied", "The agent will not get access for this action."),
            };
            message(Some(&viewer), StatusCode::OK, title, text)
        }
        Err(error) => {
            let status = match error.code {
                OAuthErrorCode::AccessDenied => StatusCode::FORBIDDEN,
                OAuthErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
                _ => StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            };
            message(Some(&viewer), status, "Not decided", &error.description)
        }
    }
}
