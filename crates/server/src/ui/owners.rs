//! Owners and what they delegated: their agents and those agents' clients, their consents
//! (which client may act for them at which resource with which scopes) and their agents'
//! delegation targets at other authorization servers.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mandate_core::{Client, Consent, OAuthError, Resource};

use super::agents::store_error;
use super::{Chrome, Viewer, unavailable};
use crate::AppState;

/// Consent lookups per page (clients × resources); beyond it the page says the list is cut.
const MAX_CONSENT_LOOKUPS: usize = 5_000;

pub(crate) struct OwnerView {
    pub name: String,
    pub display_name: String,
    pub agents: Vec<AgentLine>,
    pub consents: Vec<ConsentLine>,
    pub targets: Vec<TargetLine>,
}

pub(crate) struct AgentLine {
    pub name: String,
    pub scopes: String,
    pub clients: String,
}

pub(crate) struct ConsentLine {
    pub client: String,
    pub resource: String,
    pub scopes: String,
    pub granted: String,
}

pub(crate) struct TargetLine {
    pub agent: String,
    pub audience: String,
    pub resource: String,
    pub scopes: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/owners.html")]
struct OwnersPage {
    chrome: Chrome,
    owners: Vec<OwnerView>,
    consents_cut: bool,
}

pub(crate) async fn page_handler(state: &AppState, viewer: &Viewer) -> Result<(Vec<OwnerView>, bool), OAuthError> {
    let store = &state.authz.store;
    let owners = store.owners().await.map_err(store_error)?;
    let agents = store.agents().await.map_err(store_error)?;
    let clients = store.clients().await.map_err(store_error)?;
    let resources = store.resources().await.map_err(store_error)?;
    let mut budget = MAX_CONSENT_LOOKUPS;
    let mut views = Vec::new();
    for owner in owners.into_iter().filter(|o| viewer.who.sees(o.name.as_str())) {
        let name = owner.name.to_string();
        let mut view = OwnerView {
            display_name: owner.display_name.unwrap_or_default(),
            agents: Vec::new(),
            consents: Vec::new(),
            targets: Vec::new(),
            name: name.clone(),
        };
        for agent in agents.iter().filter(|a| a.owner.as_str() == name) {
            let own: Vec<&str> = clients
                .iter()
                .filter(|c| c.agent.as_ref() == Some(&agent.name))
                .map(|c| c.client_id.as_str())
                .collect();
            view.agents.push(AgentLine {
                name: agent.name.to_string(),
                scopes: agent.scopes.join(" "),
                clients: own.join(" "),
            });
            for target in store.delegation_targets(agent.name.as_str()).await.map_err(store_error)? {
                view.targets.push(TargetLine {
                    agent: agent.name.to_string(),
                    audience: target.audience,
                    resource: target.resource,
                    scopes: target.scopes.join(" "),
                });
            }
        }
        for consent in consents(state, &name, &clients, &resources, &mut budget).await? {
            view.consents.push(ConsentLine {
                client: consent.client_id,
                resource: consent.resource,
                scopes: consent.scopes.join(" "),
                granted: mandate_core::clock::rfc3339_ms(consent.granted_at_ms),
            });
        }
        views.push(view);
    }
    Ok((views, budget == 0))
}

/// An owner's consents. The store answers point lookups only, so this asks for every client
/// that can run the code flow (the only way consent is given) at every resource, within `budget`.
pub(crate) async fn consents(
    state: &AppState,
    owner: &str,
    clients: &[Client],
    resources: &[Resource],
    budget: &mut usize,
) -> Result<Vec<Consent>, OAuthError> {
    let mut found = Vec::new();
    for client in clients.iter().filter(|c| !c.redirect_uris.is_empty()) {
        for resource in resources {
            if *budget == 0 {
                return Ok(found);
            }
            *budget -= 1;
            let consent = state.authz.store.consent(owner, &client.client_id, resource.uri.as_str());
            found.extend(consent.await.map_err(store_error)?);
        }
    }
    Ok(found)
}

pub(crate) async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    match page_handler(&state, &viewer).await {
        Ok((owners, consents_cut)) => {
            super::page(OwnersPage { chrome: viewer.chrome(), owners, consents_cut }.into_response())
        }
        Err(error) => unavailable(&viewer, &error),
    }
}
