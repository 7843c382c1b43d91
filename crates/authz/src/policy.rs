//! Cedar policy at the authorization server: the active set lives in the store (one validated
//! text, versioned), is replaced only through `replace` (validated first, audited either way),
//! and decides every access token and ID-JAG before it is signed.

use std::sync::Arc;
use std::time::Duration;

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use mandate_policy::{Action, Counters, PolicyEngine, PolicyRequest, PolicySummary};
use mandate_store::{Mutation, StoreError};
use serde_json::Value;

use crate::exchange::GRANT_TOKEN_EXCHANGE;
use crate::token::AccessToken;
use crate::{Authz, audit_failure, store_failure};

/// How often a running server looks for a policy set replaced elsewhere (CLI, another replica).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Settings keys of the stored set: its text, and its SHA-256 (what a reload compares).
const SOURCE_KEY: &str = "policy.source";
const VERSION_KEY: &str = "policy.sha256";

/// Why a policy set was not activated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyAdminError {
    /// The text does not parse or does not validate against the schema; nothing changed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The stored policy set: its text, version (SHA-256 of the text) and policy ids.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredPolicies {
    pub source: String,
    pub version: String,
    pub policies: Vec<String>,
}

/// Validates `source` against the schema, then stores it together with its `policy.replace`
/// event (one atomic write) and makes it the active set. A set that does not validate changes
/// nothing and is audited as refused with the validator's message.
pub async fn replace(authz: &Authz, source: &str, correlation_id: &str) -> Result<PolicySummary, PolicyAdminError> {
    let event = AuditEvent::allow("policy.replace", correlation_id);
    let unavailable = |e| PolicyAdminError::Unavailable(audit_failure(e).description);
    let summary = match mandate_policy::validate(source) {
        Ok(summary) if summary.policies == 0 => {
            // An empty set would silently turn policy off; that is never what a replacement means.
            let message = "the policy set holds no policy (to allow everything, activate \
                           `permit(principal, action, resource);`)";
            authz.log.record(event.refused("invalid_policy", message)).await.map_err(unavailable)?;
            return Err(PolicyAdminError::Invalid(message.to_owned()));
        }
        Ok(summary) => summary,
        Err(e) => {
            let message = e.to_string();
            authz.log.record(event.refused("invalid_policy", &message)).await.map_err(unavailable)?;
            return Err(PolicyAdminError::Invalid(message));
        }
    };
    let version = sha256_hex(source);
    let mut event = event;
    event.detail = Some(format!("version={version} policies={} ids={}", summary.policies, summary.ids.join(",")));
    let write = Mutation::All(vec![
        Mutation::PutSetting { key: SOURCE_KEY.into(), value: source.to_owned() },
        Mutation::PutSetting { key: VERSION_KEY.into(), value: version },
    ]);
    if let Err(refused) = authz.log.apply(write, event).await.map_err(unavailable)? {
        return Err(PolicyAdminError::Unavailable(refused.to_string()));
    }
    authz.policy.replace(source).map_err(|e| PolicyAdminError::Invalid(e.to_string()))?;
    Ok(summary)
}

/// The stored set, if one was ever set.
pub async fn stored(authz: &Authz) -> Result<Option<StoredPolicies>, PolicyAdminError> {
    let read = |e: StoreError| PolicyAdminError::Unavailable(store_failure(e).description);
    let Some(source) = authz.store.setting(SOURCE_KEY).await.map_err(read)? else { return Ok(None) };
    let policies = mandate_policy::validate(&source).map(|s| s.ids).unwrap_or_default();
    Ok(Some(StoredPolicies { version: sha256_hex(&source), source, policies }))
}

/// Loads the stored set into `engine` when its version differs from `loaded`, and returns the
/// version now loaded. A stored set that no longer validates (say, after a schema change) is an
/// error and leaves the engine as it was.
pub async fn sync(
    authz: &Authz,
    engine: &PolicyEngine,
    loaded: Option<String>,
) -> Result<Option<String>, PolicyAdminError> {
    let read = |e: StoreError| PolicyAdminError::Unavailable(store_failure(e).description);
    let version = authz.store.setting(VERSION_KEY).await.map_err(read)?;
    if version.is_none() || version == loaded {
        return Ok(loaded);
    }
    let source = authz.store.setting(SOURCE_KEY).await.map_err(read)?.unwrap_or_default();
    engine.replace(&source).map_err(|e| PolicyAdminError::Invalid(e.to_string()))?;
    Ok(Some(sha256_hex(&source)))
}

/// Keeps `engine` equal to the stored set, so a change made by the CLI or another replica takes
/// effect within `RELOAD_INTERVAL`.
pub fn spawn_reload(
    authz: Authz,
    engine: Arc<PolicyEngine>,
    mut loaded: Option<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match sync(&authz, &engine, loaded.clone()).await {
                Ok(version) => loaded = version,
                Err(e) => tracing::error!(error = %e, "policy reload failed; the previous set stays active"),
            }
        }
    })
}

fn sha256_hex(text: &str) -> String {
    hex::encode(mandate_crypto::sha256(text.as_bytes()))
}

/// The policy decision on an access token about to be signed (`issue`, or `exchange` for RFC 8693).
/// Without an active set there is nothing to decide. The decision and the ids of the policies
/// that made it go into the issuance event.
pub(crate) fn check_access_token(
    authz: &Authz,
    token: &AccessToken<'_>,
    event: &mut AuditEvent,
) -> Result<(), OAuthError> {
    let action = if token.grant_type == GRANT_TOKEN_EXCHANGE { Action::Exchange } else { Action::Issue };
    let scopes: Vec<String> = token.scope.iter().map(str::to_owned).collect();
    let agent = acting_agent(authz, token.subject, token.actor.as_ref());
    let request = PolicyRequest {
        subject: Some(token.subject),
        owner: token.owner,
        ..issuance_request(action, agent, token.client_id, token.resource.uri.as_str(), &scopes, token.grant_type)
    };
    enforce(authz, &request, event)
}

/// What the IdP side is about to delegate with an ID-JAG.
pub(crate) struct IdJagDecision<'a> {
    pub agent: &'a str,
    pub client_id: &'a str,
    pub owner: &'a str,
    pub subject: &'a str,
    pub resource: &'a str,
    pub scopes: &'a [String],
}

/// The decision on an ID-JAG the IdP side is about to issue (`exchange`: it delegates a person's
/// identity to an agent's client at another authorization server).
pub(crate) fn check_id_jag(
    authz: &Authz,
    id_jag: &IdJagDecision<'_>,
    event: &mut AuditEvent,
) -> Result<(), OAuthError> {
    let request = PolicyRequest {
        subject: Some(id_jag.subject),
        owner: Some(id_jag.owner),
        ..issuance_request(
            Action::Exchange,
            Some(id_jag.agent),
            id_jag.client_id,
            id_jag.resource,
            id_jag.scopes,
            GRANT_TOKEN_EXCHANGE,
        )
    };
    enforce(authz, &request, event)
}

fn issuance_request<'a>(
    action: Action,
    agent: Option<&'a str>,
    client_id: &'a str,
    resource: &'a str,
    scopes: &'a [String],
    grant_type: &'a str,
) -> PolicyRequest<'a> {
    PolicyRequest {
        action,
        agent,
        client_id,
        owner: None,
        subject: None,
        resource,
        tool: None,
        scopes,
        grant_type,
        mcp_method: None,
        http_method: "",
        path: "",
        arguments: None,
        counters: Counters::default(),
        findings: &[],
        approved: false,
    }
}

fn enforce(authz: &Authz, request: &PolicyRequest<'_>, event: &mut AuditEvent) -> Result<(), OAuthError> {
    if !authz.policy.is_active() {
        return Ok(());
    }
    let decision = authz.policy.decide(request);
    append_detail(event, &decision.audit_note());
    if decision.allowed {
        return Ok(());
    }
    Err(OAuthError::new(OAuthErrorCode::AccessDenied, decision.refusal()))
}

fn append_detail(event: &mut AuditEvent, text: &str) {
    event.detail = Some(match event.detail.take() {
        Some(existing) => format!("{existing} {text}"),
        None => text.to_owned(),
    });
}

/// The agent answering for a token: its subject when that is an agent of this trust domain,
/// else the current actor (`act.sub`).
fn acting_agent<'t>(authz: &Authz, subject: &'t str, actor: Option<&'t Value>) -> Option<&'t str> {
    let is_agent = |id: &&str| authz.config.trust_domain.agent_name(id).is_some();
    let acting = actor.and_then(|a| a.get("sub")).and_then(Value::as_str);
    Some(subject).filter(is_agent).or_else(|| acting.filter(is_agent))
}
