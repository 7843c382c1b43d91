//! Agents: the list (with a search box) and one agent's page with its live tokens — access
//! tokens issued to it, per the audit log, unexpired and not revoked by the same check the
//! guard and introspection run.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use mandate_audit::query::QueryParams;
use mandate_core::{Agent, OAuthError};
use mandate_guard::{StoreRevocation, TokenFacts};
use serde::Deserialize;
use serde_json::Value;

use super::{Chrome, Viewer, not_found, page, unavailable};
use crate::AppState;

/// How far back (in audit events) an agent's page looks for tokens issued to it. Access
/// tokens live minutes, so the recent end of the log holds every one still alive unless the
/// log grows faster than this per token lifetime.
pub(crate) const TOKEN_SCAN_EVENTS: u64 = 20_000;
/// The audit action of every access token issuance (all grants go through `authz::token`).
const ISSUANCE: &str = "token.issue";

#[derive(Debug, Deserialize)]
pub(crate) struct Search {
    q: Option<String>,
}

pub(crate) struct AgentRow {
    pub name: String,
    pub owner: String,
    pub spiffe_id: String,
    pub selectors: String,
    pub scopes: String,
    pub clients: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/agents.html")]
struct ListPage {
    chrome: Chrome,
    query: String,
    agents: Vec<AgentRow>,
}

pub(crate) async fn list(State(state): State<AppState>, viewer: Viewer, Query(search): Query<Search>) -> Response {
    let query = search.q.unwrap_or_default();
    let rows = match visible_agents(&state, &viewer).await {
        Ok(agents) => agents,
        Err(error) => return unavailable(&viewer, &error),
    };
    let clients = match state.authz.store.clients().await {
        Ok(clients) => clients,
        Err(e) => return unavailable(&viewer, &store_error(e)),
    };
    let needle = query.trim().to_lowercase();
    let agents = rows
        .into_iter()
        .map(|agent| {
            let names: Vec<&str> = clients
                .iter()
                .filter(|c| c.agent.as_ref() == Some(&agent.name))
                .map(|c| c.client_id.as_str())
                .collect();
            row(&agent, &names)
        })
        .filter(|row| needle.is_empty() || matches(row, &needle))
        .collect();
    page(ListPage { chrome: viewer.chrome(), query, agents }.into_response())
}

fn matches(row: &AgentRow, needle: &str) -> bool {
    [&row.name, &row.owner, &row.spiffe_id, &row.selectors, &row.scopes, &row.clients]
        .iter()
        .any(|field| field.to_lowercase().contains(needle))
}

fn row(agent: &Agent, clients: &[&str]) -> AgentRow {
    AgentRow {
        name: agent.name.to_string(),
        owner: agent.owner.to_string(),
        spiffe_id: agent.spiffe_id.to_string(),
        selectors: agent.selectors.join(" "),
        scopes: agent.scopes.join(" "),
        clients: clients.join(" "),
    }
}

/// The agents the viewer may see: all for the administrator, their own for an owner.
pub(crate) async fn visible_agents(state: &AppState, viewer: &Viewer) -> Result<Vec<Agent>, OAuthError> {
    let agents = state.authz.store.agents().await.map_err(store_error)?;
    Ok(agents.into_iter().filter(|a| viewer.who.sees(a.owner.as_str())).collect())
}

pub(crate) fn store_error(e: mandate_store::StoreError) -> OAuthError {
    tracing::error!(error = %e, "store failure");
    OAuthError::server_error("storage is unavailable")
}

/// One live access token, as the issuance event recorded it.
pub(crate) struct LiveToken {
    pub jti: String,
    pub client: String,
    pub resource: String,
    pub scope: String,
    pub issued: String,
    pub expires_by: String,
}

pub(crate) struct TargetRow {
    pub audience: String,
    pub resource: String,
    pub scopes: String,
    pub remote_client_id: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/agent.html")]
struct DetailPage {
    chrome: Chrome,
    agent: AgentRow,
    may_impersonate: bool,
    targets: Vec<TargetRow>,
    tokens: Vec<LiveToken>,
    scanned: u64,
}

pub(crate) async fn detail(State(state): State<AppState>, viewer: Viewer, Path(name): Path<String>) -> Response {
    let agent = match state.authz.store.agent(&name).await {
        Ok(Some(agent)) if viewer.who.sees(agent.owner.as_str()) => agent,
        Ok(_) => return not_found(&viewer, "such agent"),
        Err(e) => return unavailable(&viewer, &store_error(e)),
    };
    let loaded = async {
        let clients = state.authz.store.clients().await.map_err(store_error)?;
        let targets = state.authz.store.delegation_targets(agent.name.as_str()).await.map_err(store_error)?;
        let (tokens, scanned) = live_tokens(&state, &agent).await?;
        Ok::<_, OAuthError>((clients, targets, tokens, scanned))
    };
    let (clients, targets, tokens, scanned) = match loaded.await {
        Ok(loaded) => loaded,
        Err(error) => return unavailable(&viewer, &error),
    };
    let names: Vec<&str> =
        clients.iter().filter(|c| c.agent.as_ref() == Some(&agent.name)).map(|c| c.client_id.as_str()).collect();
    let targets = targets
        .into_iter()
        .map(|t| TargetRow {
            audience: t.audience,
            resource: t.resource,
            scopes: t.scopes.join(" "),
            remote_client_id: t.remote_client_id,
        })
        .collect();
    let page_body = DetailPage {
        chrome: viewer.chrome(),
        agent: row(&agent, &names),
        may_impersonate: agent.may_impersonate,
        targets,
        tokens,
        scanned,
    };
    page(page_body.into_response())
}

/// Access tokens issued to `agent` among the last [`TOKEN_SCAN_EVENTS`] audit events that have
/// not expired and are not revoked (per-token or by an agent, owner or client epoch). The
/// issuance event's time stands for `iat`; `exp` is at most `iat` + the access token lifetime.
/// Returns the tokens and how many events were scanned.
pub(crate) async fn live_tokens(state: &AppState, agent: &Agent) -> Result<(Vec<LiveToken>, u64), OAuthError> {
    let authz = &state.authz;
    let len = authz.store.audit_len().await.map_err(store_error)?;
    let from = len.saturating_sub(TOKEN_SCAN_EVENTS);
    let params = QueryParams {
        agent: Some(agent.spiffe_id.to_string()),
        action: Some(ISSUANCE.into()),
        from: Some(from.to_string()),
        ..QueryParams::default()
    };
    let filter = params.into_filter(&authz.config.trust_domain).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let mut issued = Vec::new();
    filter
        .scan(authz.store.as_ref(), |event| {
            if event["action"] == ISSUANCE && event["decision"] == "allow" && event["jti"].is_string() {
                issued.push(event);
            }
        })
        .await
        .map_err(|e| OAuthError::server_error(e.to_string()))?;
    let now = authz.clock.now_secs();
    let revocation = StoreRevocation::new(Arc::clone(&authz.store), authz.config.trust_domain.as_str());
    let mut live = Vec::new();
    for event in issued.iter().rev() {
        let text = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let Some(iat) = event_secs(&text("ts")) else { continue };
        let exp = iat + authz.config.access_token_ttl_secs;
        if exp <= now {
            continue;
        }
        let (jti, client, owner) = (text("jti"), text("client"), event.get("owner").and_then(Value::as_str));
        let facts = TokenFacts {
            jti: &jti,
            iat,
            client_id: &client,
            agent: Some(agent.name.as_str()),
            owner,
            grant: None,
            act: None,
        };
        let revoked = revocation.check(&facts).await.map_err(|e| {
            tracing::error!(error = %e, "revocation check failed");
            OAuthError::server_error("storage is unavailable")
        })?;
        if revoked.is_none() {
            live.push(LiveToken {
                jti,
                client,
                resource: text("resource"),
                scope: text("scope"),
                issued: text("ts"),
                expires_by: mandate_core::clock::rfc3339_ms(exp * 1000),
            });
        }
    }
    Ok((live, len - from))
}

/// An event's `ts` (RFC 3339, milliseconds) in whole Unix seconds.
pub(crate) fn event_secs(ts: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(time.unix_timestamp())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_read_to_the_second() {
        assert_eq!(event_secs("2026-11-23T09:00:00.999Z"), Some(1_795_424_400));
        assert_eq!(event_secs("yesterday"), None);
    }

    #[test]
    fn the_list_escapes_what_registrants_control() {
        let agents = vec![AgentRow {
            name: "<script>alert(1)</script>".into(),
            owner: "alice".into(),
            spiffe_id: "spiffe://mandate.local/agent/x".into(),
            selectors: "unix:uid:1000".into(),
            scopes: "read".into(),
            clients: "c1".into(),
        }];
        let chrome = Chrome { signed_in_as: "alice".into(), admin: false, csrf: "tok\"en".into() };
        let html = ListPage { chrome, query: "\"><b>".into(), agents }.render().unwrap();
        assert!(!html.contains("<script>alert") && !html.contains("\"><b>"), "{html}");
        assert!(html.contains("alice") && html.contains("unix:uid:1000"));
    }
}
