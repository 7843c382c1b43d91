//! The token endpoint's grants. Foundation: `client_credentials`, issuing RFC 9068 JWT access
//! tokens bound to exactly one registered resource (RFC 8707) with the intersection of the
//! requested, the resource's and the agent's scopes.

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode, Resource, ResourceUri, ScopeSet};
use serde::Serialize;
use serde_json::json;

use crate::client_auth::{AuthenticatedClient, Presented, authenticate};
use crate::{Authz, conclude, new_jti, store_failure};

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// JOSE `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Private claim naming the agent's responsible owner (documented in `docs/tokens.md`).
pub const OWNER_CLAIM: &str = "mandate_owner";

/// A parsed token request.
#[derive(Debug)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub resources: Vec<String>,
    pub scope: Option<String>,
    pub presented: Presented,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
}

/// Handles a token request; every outcome is audited before it is returned.
pub async fn token(authz: &Authz, request: TokenRequest, correlation_id: &str) -> Result<TokenResponse, OAuthError> {
    let mut event = AuditEvent::allow("token.issue", correlation_id);
    event.client = request.presented.claimed_client_id();
    event.resource = request.resources.first().cloned();
    let outcome = grant(authz, request, &mut event, correlation_id).await.map(|response| (response, None));
    conclude(authz, event, outcome, |e| OAuthError::server_error(e.to_string())).await
}

async fn grant(
    authz: &Authz,
    request: TokenRequest,
    event: &mut AuditEvent,
    correlation_id: &str,
) -> Result<TokenResponse, OAuthError> {
    let client = authenticate(authz, request.presented, correlation_id).await?;
    describe_client(event, &client);
    match request.grant_type.as_deref() {
        None => return Err(OAuthError::invalid_request("grant_type is required")),
        Some(GRANT_CLIENT_CREDENTIALS) => {}
        Some(other) => {
            return Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                format!("grant_type {other:?} is not supported"),
            ));
        }
    }
    let resource = target_resource(authz, &request.resources).await?;
    let scope = granted_scope(&client, &resource, request.scope.as_deref())?;
    event.scope = Some(scope.to_string());
    sign_access_token(authz, &client, &resource, &scope, event)
}

pub(crate) fn describe_client(event: &mut AuditEvent, client: &AuthenticatedClient) {
    event.client = Some(client.client.client_id.clone());
    event.agent = Some(client.agent.spiffe_id.to_string());
    event.owner = Some(client.agent.owner.to_string());
}

/// Exactly one registered resource: the token's audience.
async fn target_resource(authz: &Authz, requested: &[String]) -> Result<Resource, OAuthError> {
    let invalid_target = |why: String| OAuthError::new(OAuthErrorCode::InvalidTarget, why);
    let raw = match requested {
        [] => return Err(OAuthError::invalid_request("resource is required (RFC 8707)")),
        [one] => one,
        _ => return Err(invalid_target("exactly one resource per access token".into())),
    };
    let uri = ResourceUri::parse(raw).map_err(|e| invalid_target(e.to_string()))?;
    authz
        .store
        .resource(uri.as_str())
        .await
        .map_err(store_failure)?
        .ok_or_else(|| invalid_target(format!("resource {uri} is not registered")))
}

/// Requested scopes must all exist at the resource; the grant is what the agent may also have.
fn granted_scope(
    client: &AuthenticatedClient,
    resource: &Resource,
    requested: Option<&str>,
) -> Result<ScopeSet, OAuthError> {
    let invalid_scope = |why: String| OAuthError::new(OAuthErrorCode::InvalidScope, why);
    let offered = ScopeSet::from_tokens(&resource.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let wanted = match requested {
        Some(raw) => ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()))?,
        None => offered.clone(),
    };
    if let Some(unknown) = wanted.not_in(&offered).next() {
        return Err(invalid_scope(format!("scope {unknown:?} is not offered by {}", resource.uri)));
    }
    let allowed = ScopeSet::from_tokens(&client.agent.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let granted = wanted.intersection(&allowed);
    if granted.is_empty() {
        return Err(invalid_scope(format!(
            "agent {} may not have any of the requested scopes at {}",
            client.agent.name, resource.uri
        )));
    }
    Ok(granted)
}

fn sign_access_token(
    authz: &Authz,
    client: &AuthenticatedClient,
    resource: &Resource,
    scope: &ScopeSet,
    event: &mut AuditEvent,
) -> Result<TokenResponse, OAuthError> {
    let config = &authz.config;
    let now = authz.clock.now_secs();
    let jti = new_jti();
    let claims = json!({
        "iss": config.issuer,
        "sub": client.agent.spiffe_id.as_str(),
        "aud": resource.uri.as_str(),
        "client_id": client.client.client_id,
        "scope": scope.to_string(),
        "iat": now,
        "exp": now + config.access_token_ttl_secs,
        "jti": jti,
        OWNER_CLAIM: client.agent.owner.as_str(),
    });
    let key = authz.keys.signer(config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let access_token = mandate_crypto::jose::sign_jwt(&key, ACCESS_TOKEN_TYP, &claims)
        .map_err(|e| OAuthError::server_error(e.to_string()))?;
    event.jti = Some(jti);
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: config.access_token_ttl_secs,
        scope: scope.to_string(),
    })
}
