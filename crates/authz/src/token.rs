//! The token endpoint's grants: `client_credentials`, and the RFC 7523 `jwt-bearer` grant of
//! workload identity federation (`crate::federation`). Both issue RFC 9068 JWT access tokens
//! bound to exactly one registered resource (RFC 8707) with the intersection of the requested,
//! the resource's and the agent's scopes.

use mandate_core::{Agent, AuditEvent, OAuthError, OAuthErrorCode, Resource, ResourceUri, ScopeSet};
use mandate_store::Mutation;
use serde::Serialize;
use serde_json::{Value, json};

use crate::client_auth::{AuthenticatedClient, Presented, authenticate};
use crate::federation::GRANT_JWT_BEARER;
use crate::{Authz, conclude, new_jti, store_failure};

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// JOSE `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Private claim naming the agent's responsible owner (documented in `docs/tokens.md`).
pub const OWNER_CLAIM: &str = "mandate_owner";

/// A parsed token request.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub resources: Vec<String>,
    pub scope: Option<String>,
    pub presented: Presented,
    /// The `assertion` parameter of the jwt-bearer grant (RFC 7523 §2.1).
    pub assertion: Option<String>,
    /// Authorization code grant (RFC 6749 §4.1.3, PKCE RFC 7636 §4.5).
    pub code: Option<String>,
    pub code_verifier: Option<String>,
    pub redirect_uri: Option<String>,
    pub refresh_token: Option<String>,
    /// Token exchange (RFC 8693 §2.1).
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub audiences: Vec<String>,
    /// Transaction Token Service (draft-ietf-oauth-transaction-tokens §7.1): JSON objects as text.
    pub request_context: Option<String>,
    pub request_details: Option<String>,
    /// Every `DPoP` header value the request carried (RFC 9449 §4.3 wants exactly one, if any).
    pub dpop_proofs: Vec<String>,
    /// CIBA (OpenID Connect CIBA Core §10.1).
    pub auth_req_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    /// `Bearer`, `DPoP` (RFC 9449), or `N_A` for tokens that are not access tokens (RFC 8693).
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
    /// RFC 8693 §2.2.1: what `access_token` holds, on token exchange responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// Handles a token request; every outcome is audited before it is returned. A grant may hand
/// back a one-time-use guard (a federated assertion's `jti`), committed with the issuance event;
/// if the store refuses it, the assertion was replayed and no token is returned.
pub async fn token(authz: &Authz, request: TokenRequest, correlation_id: &str) -> Result<TokenResponse, OAuthError> {
    let mut event = AuditEvent::allow("token.issue", correlation_id);
    event.client = request.presented.claimed_client_id();
    event.resource = request.resources.first().cloned();
    let outcome = grant(authz, request, &mut event, correlation_id).await;
    conclude(authz, event, outcome, |refused| {
        crate::dpop::replayed(&refused)
            .or_else(|| crate::idjag::replayed(&refused))
            .or_else(|| crate::refresh::spent(&refused))
            .or_else(|| crate::ciba::spent(&refused))
            .unwrap_or_else(crate::federation::assertion_replayed)
    })
    .await
}

pub(crate) type Granted = (TokenResponse, Option<Mutation>);

/// A request parameter that must be present and non-empty.
pub(crate) fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, OAuthError> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
}

async fn grant(
    authz: &Authz,
    mut request: TokenRequest,
    event: &mut AuditEvent,
    correlation_id: &str,
) -> Result<Granted, OAuthError> {
    // The Transaction Token Service authenticates workloads (JWT-SVIDs too), not only clients.
    if crate::txn_token::requested(&request) {
        return crate::txn_token::token_exchange(authz, request, event, correlation_id).await;
    }
    // The jwt-bearer assertion is itself the credential (RFC 7523 §3.1): client authentication
    // is optional there, but whatever credentials a request carries must be valid.
    let optional_client = request.grant_type.as_deref() == Some(GRANT_JWT_BEARER);
    let client = match std::mem::take(&mut request.presented) {
        Presented::None if optional_client => None,
        presented => Some(authenticate(authz, presented, correlation_id).await?),
    };
    if let Some(client) = &client {
        describe_client(event, client);
    }
    let grant_type = request.grant_type.as_deref();
    let (resources, scope) = (&request.resources, request.scope.as_deref());
    match (grant_type, client) {
        (None, _) => Err(OAuthError::invalid_request("grant_type is required")),
        (Some(grant), _) if !crate::registry::KNOWN_GRANTS.contains(&grant) => {
            Err(OAuthError::new(OAuthErrorCode::UnsupportedGrantType, format!("grant_type {grant:?} is not supported")))
        }
        (Some(grant), Some(client)) if !client.client.allows_grant(grant) => Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            format!("client is not registered for grant_type {grant}"),
        )),
        (Some(GRANT_CLIENT_CREDENTIALS), Some(client)) => {
            let dpop = crate::dpop::dpop_binding(authz, &request.dpop_proofs)?;
            let issued = client_credentials(authz, &client, resources, scope, crate::dpop::jkt(dpop.as_ref()), event);
            Ok((issued.await?, crate::dpop::merge(None, dpop)))
        }
        (Some(GRANT_JWT_BEARER), client) => crate::idjag::jwt_bearer(authz, &request, client.as_ref(), event).await,
        (Some(crate::code::GRANT_AUTHORIZATION_CODE), Some(client)) => {
            crate::code::redeem(authz, &client, &request, event).await
        }
        (Some(crate::refresh::GRANT_REFRESH_TOKEN), Some(client)) => {
            crate::refresh::refresh(authz, &client, &request, event).await
        }
        (Some(crate::exchange::GRANT_TOKEN_EXCHANGE), Some(client)) => {
            crate::exchange::token_exchange(authz, &request, &client, event).await
        }
        (Some(crate::ciba::GRANT_CIBA), Some(client)) => crate::ciba::redeem(authz, &client, &request, event).await,
        // A known grant without the client authentication it needs.
        (Some(_), None) => Err(OAuthError::invalid_client("client authentication is required")),
        (Some(other), Some(_)) => {
            Err(OAuthError::new(OAuthErrorCode::UnsupportedGrantType, format!("grant_type {other:?} is not supported")))
        }
    }
}

async fn client_credentials(
    authz: &Authz,
    client: &AuthenticatedClient,
    resources: &[String],
    requested_scope: Option<&str>,
    dpop_jkt: Option<&str>,
    event: &mut AuditEvent,
) -> Result<TokenResponse, OAuthError> {
    let resource = target_resource(authz, resources).await?;
    let agent = client.agent()?;
    let scope = granted_scope(agent, &resource, requested_scope)?;
    event.scope = Some(scope.to_string());
    let mut token =
        AccessToken::for_agent(agent, &client.client.client_id, &resource, &scope, GRANT_CLIENT_CREDENTIALS);
    token.jkt = dpop_jkt;
    sign_access_token(authz, &token.ttl(authz.config.access_token_ttl_secs), event)
}

pub(crate) fn describe_client(event: &mut AuditEvent, client: &AuthenticatedClient) {
    event.client = Some(client.client.client_id.clone());
    if let Some(agent) = &client.agent {
        event.agent = Some(agent.spiffe_id.to_string());
        event.owner = Some(agent.owner.to_string());
    }
}

/// Exactly one registered resource: the token's audience.
pub(crate) async fn target_resource(authz: &Authz, requested: &[String]) -> Result<Resource, OAuthError> {
    let invalid_target = |why: String| OAuthError::new(OAuthErrorCode::InvalidTarget, why);
    let raw = match requested {
        [] => return Err(OAuthError::invalid_request("resource is required (RFC 8707)")),
        [one] => one,
        _ => return Err(invalid_target("exactly one resource per access token".into())),
    };
    registered_resource(authz, raw).await
}

/// The registered resource a `resource` or `audience` value names; anything else is
/// `invalid_target`.
pub(crate) async fn registered_resource(authz: &Authz, raw: &str) -> Result<Resource, OAuthError> {
    let invalid_target = |why: String| OAuthError::new(OAuthErrorCode::InvalidTarget, why);
    let uri = ResourceUri::parse(raw).map_err(|e| invalid_target(e.to_string()))?;
    authz
        .store
        .resource(uri.as_str())
        .await
        .map_err(store_failure)?
        .ok_or_else(|| invalid_target(format!("{uri} is not a registered resource")))
}

/// Requested scopes must all exist at the resource; the grant is what the agent may also have.
pub(crate) fn granted_scope(
    agent: &Agent,
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
    let allowed = ScopeSet::from_tokens(&agent.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let granted = wanted.intersection(&allowed);
    if granted.is_empty() {
        return Err(invalid_scope(format!(
            "agent {} may not have any of the requested scopes at {}",
            agent.name, resource.uri
        )));
    }
    Ok(granted)
}

/// What an access token says: about whom, issued to which client, for which resource, and who
/// acts.
pub(crate) struct AccessToken<'a> {
    /// `sub`: an agent's SPIFFE ID when the agent acts on its own account, or the person (owner
    /// name, or an external IdP's subject) it acts for.
    pub subject: &'a str,
    /// `mandate_owner`: the responsible owner, when there is one.
    pub owner: Option<&'a str>,
    /// The `client_id` claim: a registered client, or `federation:<rule>` for federated tokens.
    pub client_id: &'a str,
    pub resource: &'a Resource,
    pub scope: &'a ScopeSet,
    pub ttl_secs: i64,
    /// RFC 8693 §4.1 `act`: the current actor, with earlier actors nested inside.
    pub actor: Option<Value>,
    /// RFC 9449 key thumbprint: the token is DPoP-bound (`cnf.jkt`, `token_type: DPoP`).
    pub jkt: Option<&'a str>,
    /// Further private claims (e.g. `mandate_federated`, `mandate_grant`).
    pub extra: Vec<(&'static str, Value)>,
    /// The grant issuing it (policy decides `exchange` for RFC 8693, `issue` for the rest).
    pub grant_type: &'static str,
}

impl<'a> AccessToken<'a> {
    /// A token for an agent acting on its own account.
    pub fn for_agent(
        agent: &'a Agent,
        client_id: &'a str,
        resource: &'a Resource,
        scope: &'a ScopeSet,
        grant_type: &'static str,
    ) -> Self {
        Self {
            subject: agent.spiffe_id.as_str(),
            owner: Some(agent.owner.as_str()),
            client_id,
            resource,
            scope,
            ttl_secs: 0,
            actor: None,
            jkt: None,
            extra: Vec::new(),
            grant_type,
        }
    }

    pub fn ttl(mut self, ttl_secs: i64) -> Self {
        self.ttl_secs = ttl_secs;
        self
    }
}

/// The `act` claim naming an agent as the current actor, with `prior` (an earlier `act`) nested.
pub(crate) fn actor_claim(agent: &Agent, prior: Option<Value>) -> Value {
    let mut act = json!({ "sub": agent.spiffe_id.as_str() });
    if let (Some(prior), Some(object)) = (prior, act.as_object_mut()) {
        object.insert("act".into(), prior);
    }
    act
}

pub(crate) fn sign_access_token(
    authz: &Authz,
    token: &AccessToken<'_>,
    event: &mut AuditEvent,
) -> Result<TokenResponse, OAuthError> {
    crate::policy::check_access_token(authz, token, event)?;
    let config = &authz.config;
    let now = authz.clock.now_secs();
    let jti = new_jti();
    let mut claims = json!({
        "iss": config.issuer,
        "sub": token.subject,
        "aud": token.resource.uri.as_str(),
        "client_id": token.client_id,
        "scope": token.scope.to_string(),
        "iat": now,
        "exp": now + token.ttl_secs,
        "jti": jti,
    });
    if let Some(object) = claims.as_object_mut() {
        if let Some(owner) = token.owner {
            object.insert(OWNER_CLAIM.into(), Value::String(owner.to_owned()));
        }
        if let Some(actor) = &token.actor {
            object.insert("act".into(), actor.clone());
        }
        if let Some(jkt) = token.jkt {
            object.insert("cnf".into(), json!({ "jkt": jkt }));
        }
        for (name, value) in &token.extra {
            object.insert((*name).to_owned(), value.clone());
        }
    }
    let key = authz.keys.signer(config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let access_token = mandate_crypto::jose::sign_jwt(&key, ACCESS_TOKEN_TYP, &claims)
        .map_err(|e| OAuthError::server_error(e.to_string()))?;
    event.jti = Some(jti);
    Ok(TokenResponse {
        access_token,
        token_type: if token.jkt.is_some() { "DPoP" } else { "Bearer" },
        expires_in: token.ttl_secs,
        scope: token.scope.to_string(),
        issued_token_type: None,
        refresh_token: None,
        id_token: None,
    })
}
