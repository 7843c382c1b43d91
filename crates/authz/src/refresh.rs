//! Refresh tokens of the authorization code flow (OAuth 2.1 §4.3, RFC 9700 §4.14): opaque
//! `mrt_` tokens stored by hash, rotated on every use, and grouped in a family per
//! authorization. A spent token presented again revokes its whole family, access tokens
//! included (they carry the family in `mandate_grant`).

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode, RefreshToken, Resource, ResourceUri, ScopeSet};
use mandate_crypto::{hash_secret, random_token};
use mandate_guard::GRANT_CLAIM;
use mandate_store::{EpochKind, Mutation, MutationError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authorize::union;
use crate::client_auth::AuthenticatedClient;
use crate::token::{AccessToken, TokenRequest, TokenResponse, actor_claim, sign_access_token};
use crate::{Authz, audit_failure, store_failure};

pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// Prefix of refresh tokens, so they are recognisable (e.g. by secret scanners and revocation).
pub const REFRESH_TOKEN_PREFIX: &str = "mrt_";

/// What a refresh token carries (stored as `RefreshToken.grant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefreshGrant {
    pub owner: String,
    pub resource: String,
    /// The scope the owner granted; refreshes may ask for less, never more.
    pub scope: String,
    pub auth_time: i64,
    /// A public client's DPoP key: the token is usable only with proofs by it (RFC 9449 §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

/// Tokens acting for a person, about to be issued.
pub(crate) struct Person<'a> {
    pub owner: &'a str,
    pub auth_time: i64,
    pub resource: &'a Resource,
    /// What the authorization allows; the new refresh token keeps all of it.
    pub granted: &'a ScopeSet,
    /// What this access token gets (`granted`, or a narrower request).
    pub scope: &'a ScopeSet,
    pub family: &'a str,
    /// The DPoP key of this request's proof: binds the access token.
    pub jkt: Option<&'a str>,
    /// The key the refresh token stays bound to (public clients only).
    pub bind_refresh: Option<&'a str>,
    /// `authorization_code` or `refresh_token`.
    pub grant_type: &'static str,
}

/// The `refresh_token` grant: rotation with reuse detection.
pub(crate) async fn refresh(
    authz: &Authz,
    client: &AuthenticatedClient,
    request: &TokenRequest,
    event: &mut AuditEvent,
) -> Result<(TokenResponse, Option<Mutation>), OAuthError> {
    let presented = crate::token::required(&request.refresh_token, "refresh_token")?;
    let token_hash = hash_secret(presented);
    let stored = authz.store.refresh_token(&token_hash).await.map_err(store_failure)?;
    let stored = stored.ok_or_else(|| invalid_grant("unknown refresh token"))?;
    let grant: RefreshGrant = serde_json::from_str(&stored.grant)
        .map_err(|e| OAuthError::server_error(format!("stored refresh token is unreadable: {e}")))?;
    describe(event, &stored, &grant);
    if stored.used_at_ms.is_some() {
        let why = "spent refresh token presented again";
        revoke_family(authz, &stored.family, &stored.client_id, &grant.owner, why, &event.correlation_id).await?;
        return Err(invalid_grant("the refresh token was already used; its whole family is revoked"));
    }
    let now_ms = authz.clock.now_ms();
    if stored.expires_at_ms <= now_ms {
        return Err(invalid_grant("the refresh token has expired"));
    }
    if stored.client_id != client.client.client_id {
        return Err(invalid_grant("the refresh token was issued to another client"));
    }
    if is_revoked(authz, &stored, &grant, client).await? {
        return Err(invalid_grant("the refresh token has been revoked"));
    }
    check_resource(&request.resources, &grant.resource)?;
    let resource = authz.store.resource(&grant.resource).await.map_err(store_failure)?;
    let resource = resource.ok_or_else(|| invalid_grant("the resource no longer exists"))?;
    let granted = still_allowed(&grant, &resource, client)?;
    let scope = narrowed(&granted, request.scope.as_deref())?;
    let dpop = crate::dpop::dpop_binding(authz, &request.dpop_proofs)?;
    let jkt = dpop.as_ref().map(|b| b.jkt.clone());
    if grant.jkt.as_ref().is_some_and(|bound| jkt.as_ref() != Some(bound)) {
        return Err(invalid_grant("the refresh token is bound to a DPoP key: send a proof made with it"));
    }
    let bind_refresh = grant.jkt.clone().or_else(|| jkt.clone().filter(|_| !client.is_confidential()));
    let person = Person {
        owner: &grant.owner,
        auth_time: grant.auth_time,
        resource: &resource,
        granted: &granted,
        scope: &scope,
        family: &stored.family,
        jkt: jkt.as_deref(),
        bind_refresh: bind_refresh.as_deref(),
        grant_type: GRANT_REFRESH_TOKEN,
    };
    let (response, create_next) = issue_for_person(authz, client, &person, event)?;
    let mut mutations = vec![Mutation::UseRefreshToken { token_hash, now_ms }, create_next];
    mutations.extend(dpop.map(|b| b.replay));
    Ok((response, Some(Mutation::All(mutations))))
}

/// Signs the access token (`sub` = the owner, `act` = the client's agent, `mandate_grant` =
/// the family) and mints the family's next refresh token; the caller commits its mutation.
pub(crate) fn issue_for_person(
    authz: &Authz,
    client: &AuthenticatedClient,
    person: &Person<'_>,
    event: &mut AuditEvent,
) -> Result<(TokenResponse, Mutation), OAuthError> {
    let token = AccessToken {
        subject: person.owner,
        owner: Some(person.owner),
        client_id: &client.client.client_id,
        resource: person.resource,
        scope: person.scope,
        ttl_secs: authz.config.access_token_ttl_secs,
        actor: client.agent.as_ref().map(|agent| actor_claim(agent, None)),
        jkt: person.jkt,
        extra: vec![(GRANT_CLAIM, Value::String(person.family.to_owned()))],
        grant_type: person.grant_type,
    };
    let mut response = sign_access_token(authz, &token, event)?;
    event.owner = Some(person.owner.to_owned());
    event.subject = Some(person.owner.to_owned());
    event.scope = Some(person.scope.to_string());
    let (refresh_token, create) = mint(authz, client, person)?;
    response.refresh_token = Some(refresh_token);
    Ok((response, create))
}

/// A new refresh token of `person.family`: 256 random bits, stored as their SHA-256.
fn mint(authz: &Authz, client: &AuthenticatedClient, person: &Person<'_>) -> Result<(String, Mutation), OAuthError> {
    let token = random_token(REFRESH_TOKEN_PREFIX);
    let grant = RefreshGrant {
        owner: person.owner.to_owned(),
        resource: person.resource.uri.to_string(),
        scope: person.granted.to_string(),
        auth_time: person.auth_time,
        jkt: person.bind_refresh.map(str::to_owned),
    };
    let grant = serde_json::to_string(&grant).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let now_ms = authz.clock.now_ms();
    let stored = RefreshToken {
        token_hash: hash_secret(&token),
        family: person.family.to_owned(),
        client_id: client.client.client_id.clone(),
        grant,
        issued_at_ms: now_ms,
        expires_at_ms: now_ms + authz.config.refresh_token_ttl_secs * 1000,
        used_at_ms: None,
    };
    Ok((token, Mutation::CreateRefreshToken(stored)))
}

/// Whether the family, the owner, the client or its agent was revoked after this token was
/// issued (the kill switch and RFC 7009 revocation both raise these epochs).
async fn is_revoked(
    authz: &Authz,
    stored: &RefreshToken,
    grant: &RefreshGrant,
    client: &AuthenticatedClient,
) -> Result<bool, OAuthError> {
    let mut subjects = vec![
        (EpochKind::Grant, stored.family.as_str()),
        (EpochKind::Owner, grant.owner.as_str()),
        (EpochKind::Client, stored.client_id.as_str()),
    ];
    if let Some(agent) = &client.agent {
        subjects.push((EpochKind::Agent, agent.name.as_str()));
    }
    let epoch = authz.store.revoked_before(&subjects).await.map_err(store_failure)?;
    Ok(epoch.is_some_and(|not_before| stored.issued_at_ms.div_euclid(1000) <= not_before))
}

/// The granted scope as far as the resource still offers it and the client's agent may still
/// have it (registry changes since the owner consented apply at once).
fn still_allowed(
    grant: &RefreshGrant,
    resource: &Resource,
    client: &AuthenticatedClient,
) -> Result<ScopeSet, OAuthError> {
    let corrupt = |e: mandate_core::ValidationError| OAuthError::server_error(e.to_string());
    let identity = ScopeSet::from_tokens(crate::authorize::IDENTITY_SCOPES).map_err(corrupt)?;
    let granted = ScopeSet::parse(&grant.scope).map_err(corrupt)?;
    let offered = ScopeSet::from_tokens(&resource.scopes).map_err(corrupt)?;
    let mut allowed = granted.intersection(&union(&offered, &identity));
    if let Some(agent) = &client.agent {
        let agent_scopes = ScopeSet::from_tokens(&agent.scopes).map_err(corrupt)?;
        allowed = allowed.intersection(&union(&agent_scopes, &identity));
    }
    Ok(allowed)
}

/// RFC 6749 §6: a refresh may ask for the granted scope or less.
fn narrowed(granted: &ScopeSet, requested: Option<&str>) -> Result<ScopeSet, OAuthError> {
    let invalid_scope = |why: String| OAuthError::new(OAuthErrorCode::InvalidScope, why);
    let scope = match requested {
        None => granted.clone(),
        Some(raw) => ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()))?,
    };
    if let Some(wider) = scope.not_in(granted).next() {
        return Err(invalid_scope(format!("scope {wider:?} was not granted; a refresh may only narrow")));
    }
    if scope.is_empty() {
        return Err(invalid_scope("nothing left to grant".into()));
    }
    Ok(scope)
}

/// A `resource` sent at the token endpoint must name the resource the grant is for.
pub(crate) fn check_resource(requested: &[String], granted: &str) -> Result<(), OAuthError> {
    let same = |raw: &String| ResourceUri::parse(raw).is_ok_and(|uri| uri.as_str() == granted);
    match requested {
        [] => Ok(()),
        [one] if same(one) => Ok(()),
        _ => Err(OAuthError::new(
            OAuthErrorCode::InvalidTarget,
            format!("this grant is for exactly one resource: {granted}"),
        )),
    }
}

/// Revokes every token of a family (its refresh tokens and the access tokens naming it in
/// `mandate_grant`), audited as `revoke.grant`.
pub(crate) async fn revoke_family(
    authz: &Authz,
    family: &str,
    client_id: &str,
    owner: &str,
    why: &str,
    correlation_id: &str,
) -> Result<(), OAuthError> {
    let mut event = AuditEvent::allow("revoke.grant", correlation_id).with_detail(format!("grant={family}: {why}"));
    event.client = Some(client_id.to_owned());
    event.owner = Some(owner.to_owned());
    event.subject = Some(owner.to_owned());
    let not_before_secs = authz.clock.now_secs();
    let revoke = Mutation::RevokeBefore { kind: EpochKind::Grant, name: family.to_owned(), not_before_secs };
    let subject = crate::ssf::SignalSubject::Grant(family);
    let signal = crate::ssf::Signal::session_revoked(subject, not_before_secs, "policy", why, correlation_id);
    let revoke = crate::ssf::with_signals(authz, revoke, &[signal]).await?;
    match authz.log.apply(revoke, event).await.map_err(audit_failure)? {
        Ok(_) => Ok(()),
        Err(refused) => Err(OAuthError::server_error(format!("revoking the grant failed: {refused}"))),
    }
}

/// The stored refresh token `token` names, for RFC 7009 revocation; `None` for anything else.
pub(crate) async fn find(authz: &Authz, token: &str) -> Result<Option<RefreshToken>, OAuthError> {
    if !token.starts_with(REFRESH_TOKEN_PREFIX) {
        return Ok(None);
    }
    authz.store.refresh_token(&hash_secret(token)).await.map_err(store_failure)
}

fn describe(event: &mut AuditEvent, stored: &RefreshToken, grant: &RefreshGrant) {
    event.owner = Some(grant.owner.clone());
    event.subject = Some(grant.owner.clone());
    event.resource = Some(grant.resource.clone());
    event.scope = Some(grant.scope.clone());
    event.detail = Some(format!("grant={}", stored.family));
}

pub(crate) fn invalid_grant(why: &str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidGrant, why)
}

/// The answer when an issuing transaction was refused because the code or refresh token it
/// spends was spent concurrently (the store reports it not found); `None` for other refusals.
pub(crate) fn spent(refused: &MutationError) -> Option<OAuthError> {
    match refused {
        MutationError::NotFound(what) if what.starts_with("authorization code") => {
            Some(invalid_grant("the authorization code was already used"))
        }
        MutationError::NotFound(what) if what.starts_with("refresh token") => {
            Some(invalid_grant("the refresh token was already used"))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_may_only_narrow() {
        let granted = ScopeSet::parse("openid read write").unwrap();
        assert_eq!(narrowed(&granted, None).unwrap(), granted);
        assert_eq!(narrowed(&granted, Some("read")).unwrap().to_string(), "read");
        assert_eq!(narrowed(&granted, Some("read admin")).unwrap_err().code, OAuthErrorCode::InvalidScope);
        assert_eq!(narrowed(&granted, Some("")).unwrap_err().code, OAuthErrorCode::InvalidScope);
    }

    #[test]
    fn resource_must_repeat_the_grant() {
        let granted = "https://api.example";
        assert!(check_resource(&[], granted).is_ok());
        assert!(check_resource(&[granted.to_owned()], granted).is_ok());
        let other = check_resource(&["https://other.example".to_owned()], granted).unwrap_err();
        assert_eq!(other.code, OAuthErrorCode::InvalidTarget);
        assert!(check_resource(&[granted.to_owned(), granted.to_owned()], granted).is_err());
    }

    #[test]
    fn a_concurrently_spent_code_or_token_is_invalid_grant() {
        let code = MutationError::NotFound("authorization code (unknown, used or expired)".into());
        assert_eq!(spent(&code).map(|e| e.code), Some(OAuthErrorCode::InvalidGrant));
        let token = MutationError::NotFound("refresh token (unknown, used or expired)".into());
        assert_eq!(spent(&token).map(|e| e.code), Some(OAuthErrorCode::InvalidGrant));
        assert!(spent(&MutationError::Conflict("one-time identifier dpop:x".into())).is_none());
    }
}
