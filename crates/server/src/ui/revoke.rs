//! The kill switch: a confirmation page that says exactly what will stop working, then (with
//! the name typed again and the session's CSRF token) `authz::revoke::revoke_subject`, the same
//! call as the admin API. Owners may revoke their agents, their agents' clients and everything
//! issued for themselves; the administrator any agent, owner or client.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mandate_core::{AuditEvent, OAuthError};
use mandate_store::EpochKind;
use serde::Deserialize;

use super::agents::{live_tokens, store_error};
use super::session::Who;
use super::{Chrome, Viewer, describe_viewer, message, not_found, read_post, refuse, unavailable};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(crate) struct Subject {
    kind: Option<String>,
    name: Option<String>,
}

/// What one kill switch would end, in words.
pub(crate) struct Consequences {
    pub kind: &'static str,
    pub name: String,
    pub summary: String,
    pub lines: Vec<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/revoke.html")]
struct ConfirmPage {
    chrome: Chrome,
    what: Consequences,
}

fn kind(raw: Option<&str>) -> Option<EpochKind> {
    match raw? {
        "agent" => Some(EpochKind::Agent),
        "owner" => Some(EpochKind::Owner),
        "client" => Some(EpochKind::Client),
        _ => None,
    }
}

/// What revoking `name` would end, if it exists and is the viewer's to revoke.
async fn consequences(
    state: &AppState,
    who: &Who,
    kind: EpochKind,
    name: &str,
) -> Result<Option<Consequences>, OAuthError> {
    let store = &state.authz.store;
    let what = |summary: String, lines: Vec<String>| {
        Some(Consequences { kind: kind.as_str(), name: name.to_owned(), summary, lines })
    };
    Ok(match kind {
        EpochKind::Agent => match store.agent(name).await.map_err(store_error)? {
            Some(agent) if who.sees(agent.owner.as_str()) => {
                let (live, _) = live_tokens(state, &agent).await?;
                what(
                    format!("Every access token issued to agent {name} until now stops working."),
                    vec![
                        format!("Agent {} ({}), owned by {}.", agent.name, agent.spiffe_id, agent.owner),
                        format!("{} live token(s) listed on its page end now.", live.len()),
                        "Tokens naming it in an act chain (acting for someone) end too.".to_owned(),
                        "The agent stays registered: tokens issued after this moment work again.".to_owned(),
                    ],
                )
            }
            _ => None,
        },
        EpochKind::Owner => match store.owner(name).await.map_err(store_error)? {
            Some(owner) if who.sees(owner.name.as_str()) => {
                let agents = store.agents().await.map_err(store_error)?;
                let theirs: Vec<String> =
                    agents.iter().filter(|a| a.owner.as_str() == name).map(|a| a.name.to_string()).collect();
                what(
                    format!("Everything issued for {name} until now stops working."),
                    vec![
                        format!(
                            "Tokens of their agents: {}.",
                            if theirs.is_empty() { "none".to_owned() } else { theirs.join(", ") }
                        ),
                        "Tokens applications and agents hold on their behalf (consents, approvals, exchanges)."
                            .to_owned(),
                        "Registrations and consents stay: tokens issued after this moment work again.".to_owned(),
                    ],
                )
            }
            _ => None,
        },
        EpochKind::Client => {
            let Some(client) = store.client(name).await.map_err(store_error)? else { return Ok(None) };
            let owner = match &client.agent {
                Some(agent) => store.agent(agent.as_str()).await.map_err(store_error)?.map(|a| a.owner.to_string()),
                None => None,
            };
            let visible = match who {
                Who::Admin => true,
                Who::Owner(_) => owner.as_deref().is_some_and(|o| who.sees(o)),
            };
            if !visible {
                return Ok(None);
            }
            let agent = client.agent.as_ref().map_or_else(|| "no agent".to_owned(), |a| format!("agent {a}"));
            what(
                format!("Every access token issued to client {name} until now stops working."),
                vec![
                    format!("Client {name} ({agent})."),
                    "The client stays registered: tokens issued after this moment work again.".to_owned(),
                ],
            )
        }
        EpochKind::Grant => None,
    })
}

pub(crate) async fn confirm(State(state): State<AppState>, viewer: Viewer, Query(subject): Query<Subject>) -> Response {
    let (Some(kind), Some(name)) = (kind(subject.kind.as_deref()), subject.name) else {
        return message(
            Some(&viewer),
            StatusCode::BAD_REQUEST,
            "Nothing to revoke",
            "kind must be agent, owner or client",
        );
    };
    match consequences(&state, &viewer.who, kind, &name).await {
        Ok(Some(what)) => super::page(ConfirmPage { chrome: viewer.chrome(), what }.into_response()),
        Ok(None) => not_found(&viewer, &format!("{} named {name:?}", kind.as_str())),
        Err(error) => unavailable(&viewer, &error),
    }
}

pub(crate) async fn revoke(State(state): State<AppState>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    let mut form = match read_post(&state, &viewer, &headers, body, "ui.revoke").await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let mut event = AuditEvent::allow("ui.revoke", &viewer.correlation);
    describe_viewer(&mut event, &viewer.who);
    let (raw_kind, name, typed) = (form.take("kind"), form.take("name").unwrap_or_default(), form.take("confirm"));
    let Some(kind) = kind(raw_kind.as_deref()) else {
        return refuse(&state, &viewer, event, "kind must be agent, owner or client").await;
    };
    let by = match &viewer.who {
        Who::Admin => "the administrator".to_owned(),
        Who::Owner(owner) => format!("owner {owner}"),
    };
    let detail = format!("kill switch on {} {name:?} by {by} in the console", kind.as_str());
    event.detail = Some(detail);
    match consequences(&state, &viewer.who, kind, &name).await {
        Err(error) => return unavailable(&viewer, &error),
        Ok(None) => {
            return refuse(
                &state,
                &viewer,
                event,
                &format!("there is no {} named {name:?} you may revoke", kind.as_str()),
            )
            .await;
        }
        Ok(Some(_)) => {}
    }
    if typed.as_deref().map(str::trim) != Some(name.as_str()) {
        let why = format!("type the name {name:?} exactly to confirm; nothing was revoked");
        let error = mandate_authz::record_refusal(&state.authz, event, OAuthError::invalid_request(why)).await;
        return message(Some(&viewer), StatusCode::BAD_REQUEST, "Not confirmed", &error.description);
    }
    if let Err(e) = state.authz.log.record(event).await {
        tracing::error!(error = %e, "audit append failed");
        return message(Some(&viewer), StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the audit log is unavailable");
    }
    match mandate_authz::revoke::revoke_subject(&state.authz, kind, &name, &viewer.correlation).await {
        Ok(not_before) => {
            let when = mandate_core::clock::rfc3339_ms(not_before * 1000);
            let text = format!("Every token issued to {} {name} at or before {when} is revoked.", kind.as_str());
            message(Some(&viewer), StatusCode::OK, "Revoked", &text)
        }
        Err(error) => unavailable(&viewer, &error),
    }
}
