//! Identity Assertion JWT Authorization Grants (draft-ietf-oauth-identity-assertion-authz-grant),
//! both sides: as the IdP, Mandate trades an ID token for an ID-JAG addressed to another
//! authorization server (token exchange, for an agent's delegation target); as the resource AS,
//! it redeems ID-JAGs of trusted IdPs with the jwt-bearer grant for access tokens.

use mandate_core::{AuditEvent, DelegationTarget, OAuthError, OAuthErrorCode, Resource, ScopeSet, TrustedIdp};
use mandate_crypto::VerifyOptions;
use mandate_crypto::jose::{peek_claims, peek_typ};
use mandate_store::{Mutation, MutationError};
use serde_json::{Value, json};

use crate::client_auth::AuthenticatedClient;
use crate::dpop::{DpopBinding, dpop_binding, jkt, merge};
use crate::token::{AccessToken, Granted, TokenRequest, TokenResponse, sign_access_token};
use crate::trust::{IssuerKeys, trusted_idp, verify_external};
use crate::{Authz, new_jti, store_failure};

/// JOSE `typ` of ID-JAGs (draft §3).
pub const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// RFC 8693 token type of ID-JAGs.
pub const TOKEN_TYPE_ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// AS metadata value announcing that ID-JAGs are redeemed here (draft §7).
pub const GRANT_PROFILE_ID_JAG: &str = "urn:ietf:params:oauth:grant-profile:id-jag";
/// How long an ID-JAG Mandate issues is valid: long enough to be redeemed, no longer.
pub const ID_JAG_TTL_SECS: i64 = 300;
/// Private access-token claim naming the IdP whose ID-JAG (or JWT) the token was issued for.
pub const IDP_CLAIM: &str = "mandate_idp";
/// ID tokens of trusted IdPs may carry `typ: JWT` or none; anything typed otherwise is refused.
const ID_TOKEN_TYPES: &[&str] = &["jwt"];
/// The replay-cache prefix of redeemed ID-JAGs (`id-jag:<iss>:<jti>`).
const REPLAY_PREFIX: &str = "id-jag:";
const MAX_JTI_LEN: usize = 256;

fn invalid_grant(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidGrant, description)
}

fn invalid_target(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidTarget, description)
}

fn invalid_scope(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidScope, description)
}

/// Whether a JOSE `typ` names an ID-JAG (case-insensitive, with or without `application/`).
pub fn is_id_jag_typ(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    lower.strip_prefix("application/").unwrap_or(&lower) == ID_JAG_TYP
}

/// The jwt-bearer grant: an assertion typed as an ID-JAG is redeemed here, any other goes to
/// workload identity federation (which refuses typed JWTs, so it never accepts an ID-JAG).
pub(crate) async fn jwt_bearer(
    authz: &Authz,
    request: &TokenRequest,
    client: Option<&AuthenticatedClient>,
    event: &mut AuditEvent,
) -> Result<Granted, OAuthError> {
    let assertion = crate::token::required(&request.assertion, "assertion (RFC 7523)")?;
    let dpop = dpop_binding(authz, &request.dpop_proofs)?;
    if peek_typ(assertion).ok().flatten().is_some_and(|typ| is_id_jag_typ(&typ)) {
        return redeem(authz, assertion, client, request, dpop, event).await;
    }
    let (resources, scope) = (&request.resources, request.scope.as_deref());
    let (issued, guard) =
        crate::federation::jwt_bearer(authz, assertion, client, resources, scope, jkt(dpop.as_ref()), event).await?;
    Ok((issued, merge(guard, dpop)))
}

/// The answer when the commit of a redemption was refused because the ID-JAG was redeemed
/// before; `None` when the refusal was about something else.
pub fn replayed(refused: &MutationError) -> Option<OAuthError> {
    let spent = format!("one-time identifier {REPLAY_PREFIX}");
    match refused {
        MutationError::Conflict(what) if what.starts_with(&spent) => Some(invalid_grant("the ID-JAG was already used")),
        _ => None,
    }
}

// ---- IdP side: issuing ID-JAGs ------------------------------------------------------------

/// A verified subject ID token.
struct IdentityAssertion {
    claims: Value,
    subject: String,
    /// Issued by Mandate itself: `subject` is then a local owner's name.
    own: bool,
}

/// Token exchange for an ID-JAG (draft §4.3): the authenticated agent's client presents an ID
/// token issued for it; the agent's delegation target for the requested audience and resource
/// decides the ID-JAG's `client_id` and the most it may carry.
pub(crate) async fn issue(
    authz: &Authz,
    request: &TokenRequest,
    client: &AuthenticatedClient,
    dpop: Option<DpopBinding>,
    event: &mut AuditEvent,
) -> Result<Granted, OAuthError> {
    let agent = client.agent()?;
    if !client.is_confidential() {
        return Err(OAuthError::new(OAuthErrorCode::UnauthorizedClient, "ID-JAGs are for confidential clients"));
    }
    if request.actor_token.is_some() || request.actor_token_type.is_some() {
        return Err(OAuthError::invalid_request("actor_token is not used when requesting an ID-JAG"));
    }
    let assertion = subject_id_token(authz, request, &client.client.client_id).await?;
    event.subject = Some(if assertion.own {
        assertion.subject.clone()
    } else {
        format!("{}#{}", claim_str(&assertion.claims, "iss").unwrap_or_default(), assertion.subject)
    });
    if assertion.own && authz.store.owner(&assertion.subject).await.map_err(store_failure)?.is_some() {
        event.owner = Some(assertion.subject.clone());
    }
    let target = delegation_target(authz, agent.name.as_str(), request).await?;
    event.resource = Some(target.resource.clone());
    let scope = target_scope(&target, request.scope.as_deref())?;
    event.scope = Some(scope.to_string());
    let scopes: Vec<String> = scope.iter().map(str::to_owned).collect();
    let decided = crate::policy::IdJagDecision {
        agent: agent.spiffe_id.as_str(),
        client_id: &client.client.client_id,
        owner: agent.owner.as_str(),
        subject: &assertion.subject,
        resource: &target.resource,
        scopes: &scopes,
    };
    crate::policy::check_id_jag(authz, &decided, event)?;
    let act = crate::token::actor_claim(agent, None);
    let (id_jag, jti) = sign_id_jag(authz, &assertion, &target, &scope, act, jkt(dpop.as_ref()))?;
    event.jti = Some(jti);
    event.detail = Some(format!("id-jag audience={} client_id={}", target.audience, target.remote_client_id));
    let response = TokenResponse {
        access_token: id_jag,
        token_type: "N_A",
        expires_in: ID_JAG_TTL_SECS,
        scope: scope.to_string(),
        issued_token_type: Some(TOKEN_TYPE_ID_JAG),
        refresh_token: None,
        id_token: None,
    };
    Ok((response, merge(None, dpop)))
}

/// The subject ID token: one Mandate issued, or one of a trusted IdP; either way its `aud`
/// must be the authenticated client (an ID token is evidence for its own client only).
async fn subject_id_token(
    authz: &Authz,
    request: &TokenRequest,
    client_id: &str,
) -> Result<IdentityAssertion, OAuthError> {
    let token = crate::token::required(&request.subject_token, "subject_token")?;
    match request.subject_token_type.as_deref() {
        Some(TOKEN_TYPE_ID_TOKEN) => {}
        Some(other) => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type {other:?} is not accepted for an ID-JAG; send an ID token ({TOKEN_TYPE_ID_TOKEN})"
            )));
        }
        None => return Err(OAuthError::invalid_request("subject_token_type is required")),
    }
    let unverified = peek_claims(token).map_err(|e| invalid_grant(format!("the subject token is not a JWT: {e}")))?;
    let issuer = claim_str(&unverified, "iss").ok_or_else(|| invalid_grant("the subject token has no \"iss\""))?;
    let own = issuer == authz.config.issuer;
    let claims = if own {
        crate::id_token::verify_own_id_token(authz, token, client_id)
    } else {
        let idp = trusted_idp(authz, issuer)
            .await?
            .ok_or_else(|| invalid_grant("the subject token's issuer is not a trusted IdP"))?;
        verify_idp_token(authz, &idp, token, ID_TOKEN_TYPES, &[client_id]).await
    }
    .map_err(|why| invalid_grant(format!("the subject ID token is not acceptable: {why}")))?;
    let subject = claim_str(&claims, "sub").ok_or_else(|| invalid_grant("the subject ID token has no \"sub\""))?;
    Ok(IdentityAssertion { subject: subject.to_owned(), claims, own })
}

/// Verifies a JWT of a trusted IdP: signature with its keys, `typ`, issuer, time and audience.
pub(crate) async fn verify_idp_token(
    authz: &Authz,
    idp: &TrustedIdp,
    token: &str,
    types: &[&str],
    audience: &[&str],
) -> Result<Value, String> {
    let opts = VerifyOptions {
        typ: types,
        typ_optional: types.contains(&"jwt"),
        issuer: Some(&idp.issuer),
        audience,
        now: authz.clock.now_secs(),
        leeway_secs: authz.config.leeway_secs,
    };
    verify_external(authz, IssuerKeys::of_idp(idp), token, &opts).await
}

/// The agent's delegation target for the one `audience` and at most one `resource` asked for
/// (without `resource`, the agent's only target at that audience).
async fn delegation_target(authz: &Authz, agent: &str, request: &TokenRequest) -> Result<DelegationTarget, OAuthError> {
    let audience = match request.audiences.as_slice() {
        [] => return Err(OAuthError::invalid_request("audience (the authorization server's issuer) is required")),
        [one] => one,
        _ => return Err(invalid_target("an ID-JAG is for exactly one audience")),
    };
    let resource = match request.resources.as_slice() {
        [] => None,
        [one] => Some(one),
        _ => return Err(invalid_target("an ID-JAG is for at most one resource")),
    };
    let targets = authz.store.delegation_targets(agent).await.map_err(store_failure)?;
    let mut matching = targets.into_iter().filter(|t| &t.audience == audience);
    let found = match resource {
        Some(resource) => matching.find(|t| &t.resource == resource),
        None => match (matching.next(), matching.next()) {
            (Some(only), None) => Some(only),
            (Some(_), Some(_)) => return Err(invalid_target(format!("name the resource at {audience}"))),
            (None, _) => None,
        },
    };
    found.ok_or_else(|| {
        invalid_target(format!(
            "agent {agent} may not obtain ID-JAGs for {audience}{}",
            resource.map(|r| format!(" and {r}")).unwrap_or_default()
        ))
    })
}

/// Requested ∩ the target's scopes; all of the target's when none are requested.
fn target_scope(target: &DelegationTarget, requested: Option<&str>) -> Result<ScopeSet, OAuthError> {
    let allowed = ScopeSet::from_tokens(&target.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let granted = match requested {
        Some(raw) => ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()))?.intersection(&allowed),
        None => allowed,
    };
    if granted.is_empty() {
        return Err(invalid_scope(format!("none of the requested scopes may be delegated to {}", target.resource)));
    }
    Ok(granted)
}

fn sign_id_jag(
    authz: &Authz,
    assertion: &IdentityAssertion,
    target: &DelegationTarget,
    scope: &ScopeSet,
    act: Value,
    dpop_jkt: Option<&str>,
) -> Result<(String, String), OAuthError> {
    let now = authz.clock.now_secs();
    let jti = new_jti();
    let mut claims = json!({
        "iss": authz.config.issuer,
        "sub": assertion.subject,
        "aud": target.audience,
        "client_id": target.remote_client_id,
        "jti": jti,
        "iat": now,
        "exp": now + ID_JAG_TTL_SECS,
        "resource": target.resource,
        "scope": scope.to_string(),
        "act": act,
    });
    if let Some(object) = claims.as_object_mut() {
        if let Some(auth_time) = assertion.claims.get("auth_time").filter(|t| t.is_i64()) {
            object.insert("auth_time".into(), auth_time.clone());
        }
        if let Some(jkt) = dpop_jkt {
            object.insert("cnf".into(), json!({ "jkt": jkt }));
        }
    }
    let key = authz.keys.signer(authz.config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let token = mandate_crypto::jose::sign_jwt(&key, ID_JAG_TYP, &claims)
        .map_err(|e| OAuthError::server_error(e.to_string()))?;
    Ok((token, jti))
}

// ---- Resource-AS side: redeeming ID-JAGs --------------------------------------------------

/// A verified ID-JAG addressed to this server.
struct IdJag {
    idp: TrustedIdp,
    claims: Value,
    subject: String,
    jti: String,
    exp: i64,
}

/// Redeems an ID-JAG (draft §4.4): every check failure is `invalid_grant`; its `jti` is spent
/// in the same commit as the issuance.
async fn redeem(
    authz: &Authz,
    assertion: &str,
    client: Option<&AuthenticatedClient>,
    request: &TokenRequest,
    dpop: Option<DpopBinding>,
    event: &mut AuditEvent,
) -> Result<Granted, OAuthError> {
    let client = client.ok_or_else(|| OAuthError::invalid_client("client authentication is required for an ID-JAG"))?;
    if !client.is_confidential() {
        return Err(OAuthError::new(OAuthErrorCode::UnauthorizedClient, "ID-JAGs are for confidential clients"));
    }
    let id_jag = verify_id_jag(authz, assertion, &client.client.client_id).await?;
    event.subject = Some(format!("{}#{}", id_jag.idp.issuer, id_jag.subject));
    event.detail = Some(format!("id-jag idp={} id_jag_jti={}", id_jag.idp.name, id_jag.jti));
    let bound = dpop_match(&id_jag.claims, dpop.as_ref())?;
    let resource = redeemed_resource(authz, &id_jag.claims, &request.resources).await?;
    event.resource = Some(resource.uri.to_string());
    let scope = redeemed_scope(&id_jag.claims, client, &resource, request.scope.as_deref())?;
    event.scope = Some(scope.to_string());
    let owner = authz.store.owner(&id_jag.subject).await.map_err(store_failure)?.map(|o| o.name.to_string());
    if owner.is_some() {
        event.owner.clone_from(&owner);
    }
    let token = AccessToken {
        subject: &id_jag.subject,
        owner: owner.as_deref(),
        client_id: &client.client.client_id,
        resource: &resource,
        scope: &scope,
        ttl_secs: authz.config.access_token_ttl_secs,
        actor: id_jag.claims.get("act").filter(|a| a.is_object()).cloned(),
        jkt: bound,
        extra: vec![(IDP_CLAIM, Value::String(id_jag.idp.issuer.clone()))],
        grant_type: crate::federation::GRANT_JWT_BEARER,
    };
    let response = sign_access_token(authz, &token, event)?;
    let spent = Mutation::ConsumeOnce {
        id: format!("{REPLAY_PREFIX}{}:{}", id_jag.idp.issuer, id_jag.jti),
        expires_at_secs: id_jag.exp + authz.config.leeway_secs,
    };
    Ok((response, merge(Some(spent), dpop)))
}

/// Issuer, signature, `typ`, audience, lifetime, `jti`, `sub` and `client_id` of an ID-JAG.
async fn verify_id_jag(authz: &Authz, assertion: &str, client_id: &str) -> Result<IdJag, OAuthError> {
    let config = &authz.config;
    let unverified = peek_claims(assertion).map_err(|e| invalid_grant(format!("the ID-JAG is not a JWT: {e}")))?;
    let issuer = claim_str(&unverified, "iss").ok_or_else(|| invalid_grant("the ID-JAG has no \"iss\""))?;
    if issuer == config.issuer {
        return Err(invalid_grant("an identity provider does not redeem ID-JAGs it issued"));
    }
    let idp = trusted_idp(authz, issuer).await?.ok_or_else(|| invalid_grant("the ID-JAG's issuer is not trusted"))?;
    let claims = verify_idp_token(authz, &idp, assertion, &[ID_JAG_TYP], &[])
        .await
        .map_err(|why| invalid_grant(format!("the ID-JAG is not valid: {why}")))?;
    let single_audience = match claims.get("aud") {
        Some(Value::String(aud)) => Some(aud.as_str()),
        Some(Value::Array(auds)) if auds.len() == 1 => auds[0].as_str(),
        _ => None,
    };
    if single_audience != Some(config.issuer.as_str()) {
        return Err(invalid_grant("the ID-JAG's audience must be exactly this authorization server"));
    }
    let (iat, exp) = (claims.get("iat").and_then(Value::as_i64), claims.get("exp").and_then(Value::as_i64));
    let (Some(iat), Some(exp)) = (iat, exp) else {
        return Err(invalid_grant("the ID-JAG needs numeric \"iat\" and \"exp\""));
    };
    if iat > exp || exp - iat > config.max_assertion_lifetime_secs {
        return Err(invalid_grant(format!(
            "the ID-JAG's lifetime must be at most {} seconds",
            config.max_assertion_lifetime_secs
        )));
    }
    let jti = claim_str(&claims, "jti")
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or_else(|| invalid_grant(format!("the ID-JAG needs a \"jti\" of 1 to {MAX_JTI_LEN} characters")))?
        .to_owned();
    let subject = claim_str(&claims, "sub").ok_or_else(|| invalid_grant("the ID-JAG has no \"sub\""))?.to_owned();
    if claim_str(&claims, "client_id") != Some(client_id) {
        return Err(invalid_grant("the ID-JAG was issued for another client"));
    }
    Ok(IdJag { idp, claims, subject, jti, exp })
}

/// RFC 9449 with ID-JAG (draft §6): a bound ID-JAG needs a proof by its key; an unbound one
/// with a proof yields a token bound to the proof's key.
fn dpop_match<'b>(claims: &Value, dpop: Option<&'b DpopBinding>) -> Result<Option<&'b str>, OAuthError> {
    let bound_to = claims.pointer("/cnf/jkt");
    match (bound_to, dpop) {
        (None, proof) => Ok(jkt(proof)),
        (Some(_), None) => Err(invalid_grant("the ID-JAG is bound to a DPoP key: proof of possession is required")),
        (Some(expected), Some(proof)) if expected.as_str() == Some(proof.jkt.as_str()) => Ok(Some(&proof.jkt)),
        (Some(_), Some(_)) => Err(invalid_grant("the DPoP proof's key is not the one the ID-JAG is bound to")),
    }
}

/// The resource the ID-JAG names (string or array), narrowed by the request's `resource`; it
/// must be registered here.
async fn redeemed_resource(authz: &Authz, claims: &Value, requested: &[String]) -> Result<Resource, OAuthError> {
    let named: Option<Vec<&str>> = match claims.get("resource") {
        None => None,
        Some(Value::String(one)) => Some(vec![one.as_str()]),
        Some(Value::Array(many)) => Some(many.iter().filter_map(Value::as_str).collect()),
        Some(_) => return Err(invalid_grant("the ID-JAG's \"resource\" must be a string or an array of strings")),
    };
    let uri = match (named, requested) {
        (_, [_, _, ..]) => return Err(invalid_target("exactly one resource per access token")),
        (None, []) => return Err(OAuthError::invalid_request("resource is required (RFC 8707)")),
        (None, [asked]) => asked.as_str(),
        (Some(named), []) => match named.as_slice() {
            [one] => *one,
            _ => return Err(invalid_grant("the ID-JAG names several resources: request one")),
        },
        (Some(named), [asked]) => named
            .into_iter()
            .find(|n| n == asked)
            .ok_or_else(|| invalid_grant("the requested resource is not the ID-JAG's"))?,
    };
    authz
        .store
        .resource(uri)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| invalid_grant(format!("resource {uri} is not registered here")))
}

/// The ID-JAG's scopes ∩ requested ∩ offered by the resource (∩ the client's agent's, if the
/// client acts for an agent).
fn redeemed_scope(
    claims: &Value,
    client: &AuthenticatedClient,
    resource: &Resource,
    requested: Option<&str>,
) -> Result<ScopeSet, OAuthError> {
    let parse = |raw: &str| ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()));
    let mut granted = ScopeSet::from_tokens(&resource.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    match claims.get("scope") {
        None => {}
        Some(Value::String(raw)) => granted = granted.intersection(&parse(raw)?),
        Some(_) => return Err(invalid_grant("the ID-JAG's \"scope\" must be a string")),
    }
    if let Some(raw) = requested {
        granted = granted.intersection(&parse(raw)?);
    }
    if let Some(agent) = &client.agent {
        let allowed = ScopeSet::from_tokens(&agent.scopes).map_err(|e| invalid_scope(e.to_string()))?;
        granted = granted.intersection(&allowed);
    }
    if granted.is_empty() {
        return Err(invalid_scope(format!("the ID-JAG grants none of the requested scopes at {}", resource.uri)));
    }
    Ok(granted)
}

fn claim_str<'v>(claims: &'v Value, name: &str) -> Option<&'v str> {
    claims.get(name).and_then(Value::as_str)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use mandate_core::{ClientAuthMethod, ManualClock, TrustDomain};
    use zeroize::Zeroizing;

    use super::*;
    use crate::AuthzConfig;
    use crate::client_auth::Presented;
    use crate::exchange::GRANT_TOKEN_EXCHANGE;
    use crate::federation::GRANT_JWT_BEARER;
    use crate::id_token::{SignIn, sign_id_token};
    use crate::registry::{self, NewAgent, NewClient};
    use crate::token::token;
    use crate::trust::{NewDelegationTarget, create_delegation_target};

    const NOW: i64 = 1_800_000_000;
    const AUDIENCE: &str = "https://as.chat.example";
    const REMOTE_RESOURCE: &str = "https://api.chat.example/";

    struct Fixture {
        authz: Authz,
        client_id: String,
        secret: String,
        _dir: tempfile::TempDir,
    }

    /// Mandate as an IdP: owner alice, agent assistant with a client_secret_basic client and a
    /// delegation target at AUDIENCE for REMOTE_RESOURCE (chat.read chat.history).
    async fn fixture() -> Fixture {
        let config = AuthzConfig {
            key_publish_lead_secs: 0,
            ..AuthzConfig::new("https://idp.mandate.example", TrustDomain::parse("mandate.local").unwrap())
        };
        let (authz, dir) = crate::test_support::started(config, Arc::new(ManualClock::at_ms(NOW * 1000))).await;
        registry::create_owner(&authz, "alice", None, "t").await.unwrap();
        let agent = NewAgent { name: "assistant".into(), owner: "alice".into(), ..Default::default() };
        registry::create_agent(&authz, agent, "t").await.unwrap();
        let new_client = NewClient {
            agent: Some("assistant".into()),
            auth_method: "client_secret_basic".into(),
            ..Default::default()
        };
        let made = registry::create_client(&authz, new_client, "t").await.unwrap();
        let target = NewDelegationTarget {
            agent: "assistant".into(),
            audience: AUDIENCE.into(),
            resource: REMOTE_RESOURCE.into(),
            scopes: vec!["chat.read".into(), "chat.history".into()],
            remote_client_id: "remote-1".into(),
        };
        create_delegation_target(&authz, target, "t").await.unwrap();
        Fixture { authz, client_id: made.client.client_id, secret: made.secret.unwrap(), _dir: dir }
    }

    impl Fixture {
        fn presented(&self) -> Presented {
            Presented::Secret {
                client_id: self.client_id.clone(),
                secret: Zeroizing::new(self.secret.clone()),
                method: ClientAuthMethod::ClientSecretBasic,
            }
        }

        fn id_token(&self, client_id: &str) -> String {
            let sign_in = SignIn { subject: "alice", client_id, nonce: None, auth_time: NOW - 5 };
            sign_id_token(&self.authz, &sign_in).unwrap()
        }

        async fn request_id_jag(
            &self,
            subject_token: String,
            scope: Option<&str>,
        ) -> Result<TokenResponse, OAuthError> {
            let request = TokenRequest {
                grant_type: Some(GRANT_TOKEN_EXCHANGE.into()),
                presented: self.presented(),
                requested_token_type: Some(TOKEN_TYPE_ID_JAG.into()),
                subject_token: Some(subject_token),
                subject_token_type: Some(TOKEN_TYPE_ID_TOKEN.into()),
                audiences: vec![AUDIENCE.into()],
                resources: vec![REMOTE_RESOURCE.into()],
                scope: scope.map(str::to_owned),
                ..TokenRequest::default()
            };
            token(&self.authz, request, "t").await
        }
    }

    #[tokio::test]
    async fn an_own_id_token_becomes_an_id_jag_for_the_delegation_target() {
        let f = fixture().await;
        let issued = f.request_id_jag(f.id_token(&f.client_id), Some("chat.read admin")).await.unwrap();
        assert_eq!((issued.token_type, issued.issued_token_type), ("N_A", Some(TOKEN_TYPE_ID_JAG)));
        assert_eq!((issued.expires_in, issued.scope.as_str()), (ID_JAG_TTL_SECS, "chat.read"));
        assert!(issued.refresh_token.is_none());
        assert_eq!(peek_typ(&issued.access_token).unwrap().as_deref(), Some(ID_JAG_TYP));
        let claims = peek_claims(&issued.access_token).unwrap();
        assert_eq!(claims["iss"], "https://idp.mandate.example");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], AUDIENCE);
        assert_eq!(claims["client_id"], "remote-1");
        assert_eq!(claims["resource"], REMOTE_RESOURCE);
        assert_eq!(claims["scope"], "chat.read");
        assert_eq!(claims["auth_time"], NOW - 5);
        assert_eq!(claims["act"], json!({"sub": "spiffe://mandate.local/agent/assistant"}));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), ID_JAG_TTL_SECS);
        assert!(claims.get("cnf").is_none(), "no DPoP proof, no binding");
        // Without a scope parameter the ID-JAG carries all the target's scopes.
        let all = f.request_id_jag(f.id_token(&f.client_id), None).await.unwrap();
        assert_eq!(all.scope, "chat.history chat.read");

        let mut out = Vec::new();
        mandate_audit::export(&f.authz.log, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let event: Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok()?.get("entry").cloned())
            .find(|e| e["action"] == "token.issue")
            .unwrap();
        assert_eq!(event["decision"], "allow");
        assert_eq!(event["owner"], "alice");
        assert_eq!(event["agent"], "spiffe://mandate.local/agent/assistant");
        assert_eq!(event["resource"], REMOTE_RESOURCE);
        assert_eq!(event["scope"], "chat.read");
        assert!(!text.contains(&issued.access_token), "the ID-JAG itself is never logged");
    }

    #[tokio::test]
    async fn the_subject_must_be_an_id_token_for_this_client_and_the_target_must_exist() {
        let f = fixture().await;
        let code = |r: Result<TokenResponse, OAuthError>| r.unwrap_err().code;
        // An ID token issued for another client.
        assert_eq!(code(f.request_id_jag(f.id_token("someone-else"), None).await), OAuthErrorCode::InvalidGrant);
        // An access token offered as the ID token (typ at+jwt).
        let key = f.authz.keys.signer(f.authz.config.access_token_alg).unwrap();
        let at = json!({"iss": f.authz.config.issuer, "sub": "alice", "aud": f.client_id, "exp": NOW + 60, "iat": NOW});
        let access_token = mandate_crypto::jose::sign_jwt(&key, "at+jwt", &at).unwrap();
        assert_eq!(code(f.request_id_jag(access_token, None).await), OAuthErrorCode::InvalidGrant);
        // An ID-JAG offered as the ID token.
        let id_jag = f.request_id_jag(f.id_token(&f.client_id), None).await.unwrap().access_token;
        assert_eq!(code(f.request_id_jag(id_jag, None).await), OAuthErrorCode::InvalidGrant);
        // Scopes outside the target.
        assert_eq!(code(f.request_id_jag(f.id_token(&f.client_id), Some("admin")).await), OAuthErrorCode::InvalidScope);
        // No target for another resource.
        let mut request = TokenRequest {
            grant_type: Some(GRANT_TOKEN_EXCHANGE.into()),
            presented: f.presented(),
            requested_token_type: Some(TOKEN_TYPE_ID_JAG.into()),
            subject_token: Some(f.id_token(&f.client_id)),
            subject_token_type: Some(TOKEN_TYPE_ID_TOKEN.into()),
            audiences: vec![AUDIENCE.into()],
            resources: vec!["https://other.chat.example/".into()],
            ..TokenRequest::default()
        };
        assert_eq!(code(token(&f.authz, request, "t").await), OAuthErrorCode::InvalidTarget);
        request = TokenRequest {
            grant_type: Some(GRANT_TOKEN_EXCHANGE.into()),
            presented: f.presented(),
            requested_token_type: Some(TOKEN_TYPE_ID_JAG.into()),
            subject_token: Some(f.id_token(&f.client_id)),
            subject_token_type: Some(TOKEN_TYPE_ID_TOKEN.into()),
            audiences: vec![AUDIENCE.into(), "https://second.example".into()],
            ..TokenRequest::default()
        };
        assert_eq!(code(token(&f.authz, request, "t").await), OAuthErrorCode::InvalidTarget);
        // Malformed requests: an actor token, another subject token type, two resources.
        let base = || TokenRequest {
            grant_type: Some(GRANT_TOKEN_EXCHANGE.into()),
            presented: f.presented(),
            requested_token_type: Some(TOKEN_TYPE_ID_JAG.into()),
            subject_token: Some(f.id_token(&f.client_id)),
            subject_token_type: Some(TOKEN_TYPE_ID_TOKEN.into()),
            audiences: vec![AUDIENCE.into()],
            ..TokenRequest::default()
        };
        let cases = [
            (
                TokenRequest { actor_token: Some("x".into()), actor_token_type: Some("y".into()), ..base() },
                "actor_token",
            ),
            (
                TokenRequest { subject_token_type: Some("urn:ietf:params:oauth:token-type:jwt".into()), ..base() },
                "not accepted",
            ),
            (TokenRequest { audiences: vec![], ..base() }, "audience"),
        ];
        for (request, needle) in cases {
            let refused = token(&f.authz, request, "t").await.unwrap_err();
            assert_eq!(refused.code, OAuthErrorCode::InvalidRequest);
            assert!(refused.description.contains(needle), "{needle:?} not in {}", refused.description);
        }
        let two = TokenRequest { resources: vec![REMOTE_RESOURCE.into(), "https://b.example/".into()], ..base() };
        assert_eq!(code(token(&f.authz, two, "t").await), OAuthErrorCode::InvalidTarget);
        // Without a resource, the agent's only target at that audience.
        assert_eq!(token(&f.authz, base(), "t").await.unwrap().scope, "chat.history chat.read");
    }

    #[tokio::test]
    async fn an_idp_never_redeems_its_own_id_jag() {
        let f = fixture().await;
        let id_jag = f.request_id_jag(f.id_token(&f.client_id), None).await.unwrap().access_token;
        let request = TokenRequest {
            grant_type: Some(GRANT_JWT_BEARER.into()),
            presented: f.presented(),
            assertion: Some(id_jag),
            resources: vec![REMOTE_RESOURCE.into()],
            ..TokenRequest::default()
        };
        let refused = token(&f.authz, request, "t").await.unwrap_err();
        assert_eq!(refused.code, OAuthErrorCode::InvalidGrant);
        assert!(refused.description.contains("does not redeem"), "{}", refused.description);
    }

    #[test]
    fn id_jag_typ_is_matched_as_jose_media_types_are() {
        assert!(is_id_jag_typ("oauth-id-jag+jwt"));
        assert!(is_id_jag_typ("application/OAuth-ID-JAG+JWT"));
        assert!(!is_id_jag_typ("at+jwt"));
        assert!(!is_id_jag_typ("JWT"));
    }

    #[test]
    fn only_a_redeemed_id_jag_is_an_id_jag_replay() {
        let spent = MutationError::Conflict("one-time identifier id-jag:https://idp:j was already used".into());
        assert_eq!(replayed(&spent).map(|e| e.code), Some(OAuthErrorCode::InvalidGrant));
        let other = MutationError::Conflict("one-time identifier federation:https://idp:j was already used".into());
        assert!(replayed(&other).is_none());
    }
}
