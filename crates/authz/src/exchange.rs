//! RFC 8693 token exchange at the token endpoint: an agent's client trades a subject token (an
//! access token Mandate issued, or a JWT of a trusted IdP) for an access token that names the
//! agent as the current actor (`act`, nested over earlier actors) — or, for agents allowed to,
//! one that impersonates the subject. Requests for an ID-JAG go to `crate::idjag`.

use mandate_core::{Agent, AuditEvent, OAuthError, OAuthErrorCode, Resource, ScopeSet};
use mandate_crypto::jose::peek_claims;
use mandate_crypto::{VerifyOptions, verify_jwt};
use mandate_guard::GRANT_CLAIM;
use serde_json::Value;

use crate::Authz;
use crate::client_auth::AuthenticatedClient;
use crate::dpop::{DpopBinding, dpop_binding, jkt, merge};
use crate::federation::own_spiffe_issuer;
use crate::idjag::{IDP_CLAIM, TOKEN_TYPE_ID_JAG, verify_idp_token};
use crate::introspect::{Inactive, Liveness, check_active};
use crate::keyring::PURPOSE_JWT_SVID;
use crate::token::{
    ACCESS_TOKEN_TYP, AccessToken, Granted, OWNER_CLAIM, TokenRequest, actor_claim, sign_access_token, target_resource,
};
use crate::trust::trusted_idp;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Subject JWTs of trusted IdPs may be plain or typed access tokens; ID-JAGs are refused.
const SUBJECT_JWT_TYPES: &[&str] = &["jwt", ACCESS_TOKEN_TYP];
/// JWT-SVIDs carry `typ: JWT` or none.
const SVID_TYPES: &[&str] = &["jwt"];

/// Token exchange: an ID-JAG when `requested_token_type` asks for one, else an access token.
pub(crate) async fn token_exchange(
    authz: &Authz,
    request: &TokenRequest,
    client: &AuthenticatedClient,
    event: &mut AuditEvent,
) -> Result<Granted, OAuthError> {
    let dpop = dpop_binding(authz, &request.dpop_proofs)?;
    match request.requested_token_type.as_deref() {
        Some(TOKEN_TYPE_ID_JAG) => crate::idjag::issue(authz, request, client, dpop, event).await,
        None | Some(TOKEN_TYPE_ACCESS_TOKEN) => delegate(authz, request, client, dpop, event).await,
        Some(other) => Err(OAuthError::invalid_request(format!("requested_token_type {other:?} is not supported"))),
    }
}

/// A verified subject token, with what the new token inherits from it.
struct Subject {
    claims: Value,
    sub: String,
    owner: Option<String>,
    /// Its scopes; `None` for a trusted IdP's JWT without a `scope` claim (identity only).
    scope: Option<ScopeSet>,
    exp: i64,
    /// The trusted IdP's issuer, for JWTs of one.
    idp: Option<String>,
}

/// RFC 8693 §1.1: delegation when an actor token names the client's agent (the result's `act`
/// is the agent, nesting the subject token's `act`); impersonation without one, for agents an
/// operator allowed to impersonate.
async fn delegate(
    authz: &Authz,
    request: &TokenRequest,
    client: &AuthenticatedClient,
    dpop: Option<DpopBinding>,
    event: &mut AuditEvent,
) -> Result<Granted, OAuthError> {
    let agent = client.agent()?;
    if !client.is_confidential() {
        return Err(OAuthError::new(OAuthErrorCode::UnauthorizedClient, "token exchange is for confidential clients"));
    }
    let subject = subject_token(authz, request, client).await?;
    event.subject = Some(match &subject.idp {
        Some(idp) => format!("{idp}#{}", subject.sub),
        None => subject.sub.clone(),
    });
    if subject.owner.is_some() {
        event.owner.clone_from(&subject.owner);
    }
    check_may_act(&subject.claims, agent)?;
    // Using a sender-constrained token anywhere takes proof of its key, exchanging it included.
    if let Some(bound) = subject.claims.pointer("/cnf/jkt")
        && bound.as_str() != jkt(dpop.as_ref())
    {
        return Err(OAuthError::invalid_request("the subject token is DPoP-bound: send a DPoP proof with its key"));
    }
    let delegated = actor_token(authz, request, agent).await?;
    let prior = subject.claims.get("act").filter(|a| a.is_object()).cloned();
    let actor = if delegated {
        Some(actor_claim(agent, prior))
    } else if agent.may_impersonate {
        prior
    } else {
        return Err(OAuthError::invalid_request(format!(
            "impersonation is not allowed for agent {}: send an actor_token naming it",
            agent.name
        )));
    };
    let mode = if delegated { "delegation" } else { "impersonation" };
    event.detail = Some(format!("token-exchange {mode} actors={}", chain_depth(actor.as_ref())));
    let resource = exchange_target(authz, request).await?;
    event.resource = Some(resource.uri.to_string());
    let scope = exchanged_scope(&subject, agent, &resource, request.scope.as_deref())?;
    event.scope = Some(scope.to_string());
    let remaining = subject.exp - authz.clock.now_secs();
    if remaining <= 0 {
        return Err(OAuthError::invalid_request("the subject token has expired"));
    }
    let mut extra = Vec::new();
    if let Some(grant) = subject.claims.get(GRANT_CLAIM).filter(|g| g.is_string()) {
        extra.push((GRANT_CLAIM, grant.clone()));
    }
    match (&subject.idp, subject.claims.get(IDP_CLAIM).filter(|i| i.is_string())) {
        (Some(idp), _) => extra.push((IDP_CLAIM, Value::String(idp.clone()))),
        (None, Some(carried)) => extra.push((IDP_CLAIM, carried.clone())),
        (None, None) => {}
    }
    let token = AccessToken {
        subject: &subject.sub,
        owner: subject.owner.as_deref(),
        client_id: &client.client.client_id,
        resource: &resource,
        scope: &scope,
        ttl_secs: authz.config.access_token_ttl_secs.min(remaining),
        actor,
        jkt: jkt(dpop.as_ref()),
        extra,
        grant_type: GRANT_TOKEN_EXCHANGE,
    };
    let mut response = sign_access_token(authz, &token, event)?;
    response.issued_token_type = Some(TOKEN_TYPE_ACCESS_TOKEN);
    Ok((response, merge(None, dpop)))
}

/// How many actors an `act` chain names.
fn chain_depth(mut act: Option<&Value>) -> usize {
    let mut depth = 0;
    while let Some(current) = act {
        depth += 1;
        act = current.get("act");
    }
    depth
}

/// The subject token: a live access token of this server, or a JWT of a trusted IdP addressed
/// to this server or to the client. Invalid or unacceptable subject tokens are `invalid_request`
/// (RFC 8693 §2.2.2).
async fn subject_token(
    authz: &Authz,
    request: &TokenRequest,
    client: &AuthenticatedClient,
) -> Result<Subject, OAuthError> {
    let token = crate::token::required(&request.subject_token, "subject_token")?;
    let bad = |why: String| OAuthError::invalid_request(format!("the subject token is not acceptable: {why}"));
    let claims = match request.subject_token_type.as_deref() {
        Some(TOKEN_TYPE_ACCESS_TOKEN) => own_access_token(authz, token).await?.map_err(bad)?,
        Some(TOKEN_TYPE_JWT) => idp_jwt(authz, token, &client.client.client_id).await?.map_err(bad)?,
        Some(other) => {
            return Err(OAuthError::invalid_request(format!("subject_token_type {other:?} is not supported")));
        }
        None => return Err(OAuthError::invalid_request("subject_token_type is required")),
    };
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let sub = text("sub").ok_or_else(|| bad("it has no \"sub\"".into()))?;
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or_else(|| bad("it has no \"exp\"".into()))?;
    let scope = match claims.get("scope") {
        None => None,
        Some(Value::String(raw)) => Some(ScopeSet::parse(raw).map_err(|e| bad(e.to_string()))?),
        Some(_) => return Err(bad("its \"scope\" is not a string".into())),
    };
    let own = text("iss").as_deref() == Some(authz.config.issuer.as_str());
    let (owner, idp) = if own { (text(OWNER_CLAIM), None) } else { (None, text("iss")) };
    Ok(Subject { sub, owner, scope, exp, idp, claims })
}

/// A live (signed, unexpired, unrevoked) access token of this server; the inner error says why not.
pub(crate) async fn own_access_token(authz: &Authz, token: &str) -> Result<Result<Value, String>, OAuthError> {
    Ok(match check_active(authz, token).await? {
        Liveness::Active(issued) => Ok(issued.claims),
        Liveness::Inactive(_, Inactive::Invalid(why)) => Err(why),
        Liveness::Inactive(_, Inactive::Revoked(why)) => Err(why.to_owned()),
    })
}

/// A JWT of a trusted IdP whose audience is this server or the client.
async fn idp_jwt(authz: &Authz, token: &str, client_id: &str) -> Result<Result<Value, String>, OAuthError> {
    let issuer = match peek_claims(token) {
        Ok(claims) => claims.get("iss").and_then(Value::as_str).map(str::to_owned),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some(issuer) = issuer.filter(|i| *i != authz.config.issuer) else {
        return Ok(Err("its issuer is not a trusted IdP (send tokens of this server as access_token)".into()));
    };
    let Some(idp) = trusted_idp(authz, &issuer).await? else {
        return Ok(Err("its issuer is not a trusted IdP".into()));
    };
    let audience = [authz.config.issuer.as_str(), client_id];
    Ok(verify_idp_token(authz, &idp, token, SUBJECT_JWT_TYPES, &audience).await)
}

/// RFC 8693 §4.4 `may_act`: when the subject token names who may act for its subject, the agent
/// must be that actor. A mismatch is `invalid_grant` (the grant itself forbids this client).
fn check_may_act(claims: &Value, agent: &Agent) -> Result<(), OAuthError> {
    let Some(may_act) = claims.get("may_act") else {
        return Ok(());
    };
    if may_act.get("sub").and_then(Value::as_str) == Some(agent.spiffe_id.as_str()) {
        Ok(())
    } else {
        Err(OAuthError::new(
            OAuthErrorCode::InvalidGrant,
            format!("the subject token's may_act does not name agent {}", agent.spiffe_id),
        ))
    }
}

/// Whether an actor token came; if so it must prove the client's own agent: a live access token
/// of this server about the agent, or a JWT-SVID of this trust domain addressed to this server.
async fn actor_token(authz: &Authz, request: &TokenRequest, agent: &Agent) -> Result<bool, OAuthError> {
    let (token, kind) = match (request.actor_token.as_deref(), request.actor_token_type.as_deref()) {
        (None, None) => return Ok(false),
        (Some(token), Some(kind)) if !token.is_empty() => (token, kind),
        (Some(_), None) => return Err(OAuthError::invalid_request("actor_token_type is required with actor_token")),
        _ => return Err(OAuthError::invalid_request("actor_token_type needs a non-empty actor_token")),
    };
    let bad = |why: String| OAuthError::invalid_request(format!("the actor token is not acceptable: {why}"));
    let claims = match kind {
        TOKEN_TYPE_ACCESS_TOKEN => own_access_token(authz, token).await?.map_err(bad)?,
        TOKEN_TYPE_JWT => jwt_svid(authz, token).map_err(bad)?,
        other => return Err(OAuthError::invalid_request(format!("actor_token_type {other:?} is not supported"))),
    };
    let actor = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    if actor != agent.spiffe_id.as_str() {
        return Err(OAuthError::invalid_request(format!(
            "the actor token names {actor:?}, not this client's agent {}",
            agent.spiffe_id
        )));
    }
    Ok(true)
}

/// A JWT-SVID Mandate issued (its JWT-SVID keys, `<issuer>/spiffe`), addressed to this server.
pub(crate) fn jwt_svid(authz: &Authz, token: &str) -> Result<Value, String> {
    let issuer = own_spiffe_issuer(authz);
    let endpoint = authz.config.token_endpoint();
    let audience = [authz.config.issuer.as_str(), endpoint.as_str()];
    let opts = VerifyOptions {
        typ: SVID_TYPES,
        typ_optional: true,
        issuer: Some(&issuer),
        audience: &audience,
        now: authz.clock.now_secs(),
        leeway_secs: authz.config.leeway_secs,
    };
    verify_jwt(token, &authz.keys.published_for(PURPOSE_JWT_SVID), &opts).map_err(|e| e.to_string())
}

/// The one registered resource the new token is for: `resource`, or an `audience` naming it.
async fn exchange_target(authz: &Authz, request: &TokenRequest) -> Result<Resource, OAuthError> {
    let invalid_target = |why: String| OAuthError::new(OAuthErrorCode::InvalidTarget, why);
    let (resources, audiences) = (&request.resources, &request.audiences);
    let resource = match (resources.is_empty(), audiences.as_slice()) {
        (false, _) => target_resource(authz, resources).await?,
        (true, []) => return Err(OAuthError::invalid_request("resource or audience is required")),
        (true, [audience]) => crate::token::registered_resource(authz, audience).await?,
        (true, _) => return Err(invalid_target("exactly one audience per access token".into())),
    };
    if audiences.iter().any(|a| a != resource.uri.as_str()) {
        return Err(invalid_target("audience and resource name different targets".into()));
    }
    Ok(resource)
}

/// At most subject ∩ resource ∩ agent scopes; asking for anything beyond is `invalid_scope`.
fn exchanged_scope(
    subject: &Subject,
    agent: &Agent,
    resource: &Resource,
    requested: Option<&str>,
) -> Result<ScopeSet, OAuthError> {
    let invalid_scope = |why: String| OAuthError::new(OAuthErrorCode::InvalidScope, why);
    let offered = ScopeSet::from_tokens(&resource.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let allowed = ScopeSet::from_tokens(&agent.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let mut ceiling = offered.intersection(&allowed);
    if let Some(held) = &subject.scope {
        ceiling = ceiling.intersection(held);
    }
    let granted = match requested {
        None => ceiling,
        Some(raw) => {
            let wanted = ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()))?;
            if let Some(beyond) = wanted.not_in(&ceiling).next() {
                return Err(invalid_scope(format!(
                    "scope {beyond:?} is beyond what the subject token, {} and agent {} allow",
                    resource.uri, agent.name
                )));
            }
            wanted
        }
    };
    if granted.is_empty() {
        return Err(invalid_scope("the subject token, the resource and the agent share no scope".into()));
    }
    Ok(granted)
}
