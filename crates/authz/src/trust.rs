//! Cross-domain trust configuration: identity providers whose ID-JAGs and ID tokens Mandate
//! accepts (trusted IdPs), and the per-agent delegation targets Mandate issues ID-JAGs for.
//! Changes are validated and audited like every registry change; verification of a token with
//! an external issuer's keys (fetched SSRF-safe, or inline) lives here for all callers.

use std::sync::Arc;

use mandate_core::{AuditEvent, DelegationTarget, Name, ResourceUri, ScopeSet, TrustedIdp};
use mandate_crypto::jwk_set::parse_jwk_set;
use mandate_crypto::{JwtError, PublicKey, VerifyOptions, verify_jwt};
use mandate_store::Mutation;
use serde_json::Value;

use crate::federation::{bounded, check_issuer};
use crate::registry::{RegistryError, change, invalid};
use crate::{Authz, jwks_fetch};

const MAX_FIELD_LEN: usize = 2048;

/// A trusted IdP as an operator describes it, before validation.
#[derive(Debug, Clone, Default)]
pub struct NewTrustedIdp {
    pub name: String,
    pub issuer: String,
    pub jwks_url: Option<String>,
    /// An inline JWK Set document.
    pub jwks: Option<String>,
}

/// An agent's delegation target as an operator describes it, before validation.
#[derive(Debug, Clone, Default)]
pub struct NewDelegationTarget {
    pub agent: String,
    /// The resource authorization server's issuer identifier (the ID-JAG's `aud`).
    pub audience: String,
    pub resource: String,
    pub scopes: Vec<String>,
    /// The agent's client id at that authorization server (the ID-JAG's `client_id`).
    pub remote_client_id: String,
}

pub async fn create_trusted_idp(
    authz: &Authz,
    new: NewTrustedIdp,
    correlation_id: &str,
) -> Result<TrustedIdp, RegistryError> {
    let mut event = AuditEvent::allow("trust.idp.create", correlation_id);
    event.subject = Some(new.issuer.clone());
    let prepared = validate_idp(authz, new).map(|idp| (Mutation::CreateTrustedIdp(idp.clone()), idp));
    if let Ok((_, idp)) = &prepared {
        let keys = idp.jwks_url.as_deref().unwrap_or("inline");
        event.detail = Some(format!("idp={} keys={keys}", idp.name));
    }
    change(authz, event, prepared).await
}

/// Stops trusting an IdP; access tokens already issued from its ID-JAGs live until they expire
/// (revoke the client or owner to end them at once).
pub async fn delete_trusted_idp(authz: &Authz, name: &str, correlation_id: &str) -> Result<(), RegistryError> {
    let mut event = AuditEvent::allow("trust.idp.delete", correlation_id);
    event.detail = Some(format!("idp={name}"));
    change(authz, event, Ok((Mutation::DeleteTrustedIdp(name.to_owned()), ()))).await
}

fn validate_idp(authz: &Authz, new: NewTrustedIdp) -> Result<TrustedIdp, RegistryError> {
    let name = Name::parse(&new.name).map_err(invalid)?;
    let insecure = authz.config.allow_insecure_federation;
    check_issuer(&new.issuer, insecure).map_err(invalid)?;
    if new.issuer.trim_end_matches('/') == authz.config.issuer.trim_end_matches('/') {
        // An IdP never redeems its own ID-JAGs (ID-JAG §4.3): Mandate does not trust itself.
        return Err(invalid("Mandate's own issuer cannot be a trusted IdP"));
    }
    match (&new.jwks_url, &new.jwks) {
        (Some(url), None) => {
            jwks_fetch::check_url(url, insecure).map_err(invalid)?;
        }
        (None, Some(jwks)) => {
            bounded("jwks", jwks, jwks_fetch::MAX_JWKS_BYTES).map_err(invalid)?;
            parse_jwk_set(jwks).map_err(|e| invalid(format!("inline JWKS: {e}")))?;
        }
        _ => return Err(invalid("give exactly one of jwks_url and jwks")),
    }
    Ok(TrustedIdp {
        name,
        issuer: new.issuer,
        jwks_url: new.jwks_url,
        jwks: new.jwks,
        created_at_ms: authz.clock.now_ms(),
    })
}

pub async fn create_delegation_target(
    authz: &Authz,
    new: NewDelegationTarget,
    correlation_id: &str,
) -> Result<DelegationTarget, RegistryError> {
    let mut event = AuditEvent::allow("trust.delegation.create", correlation_id);
    event.agent = Some(authz.config.trust_domain.agent_id_str(&new.agent));
    event.resource = Some(new.resource.clone());
    let prepared =
        validate_target(authz, new).await.map(|target| (Mutation::CreateDelegationTarget(target.clone()), target));
    if let Ok((_, target)) = &prepared {
        event.scope = Some(target.scopes.join(" "));
        event.detail = Some(format!("audience={} remote_client_id={}", target.audience, target.remote_client_id));
    }
    change(authz, event, prepared).await
}

pub async fn delete_delegation_target(
    authz: &Authz,
    agent: &str,
    audience: &str,
    resource: &str,
    correlation_id: &str,
) -> Result<(), RegistryError> {
    let mut event = AuditEvent::allow("trust.delegation.delete", correlation_id);
    event.agent = Some(authz.config.trust_domain.agent_id_str(agent));
    event.resource = Some(resource.to_owned());
    event.detail = Some(format!("audience={audience}"));
    let mutation = Mutation::DeleteDelegationTarget {
        agent: agent.to_owned(),
        audience: audience.to_owned(),
        resource: resource.to_owned(),
    };
    change(authz, event, Ok((mutation, ()))).await
}

async fn validate_target(authz: &Authz, new: NewDelegationTarget) -> Result<DelegationTarget, RegistryError> {
    let agent = Name::parse(&new.agent).map_err(invalid)?;
    check_issuer(&new.audience, authz.config.allow_insecure_federation).map_err(invalid)?;
    if new.audience.trim_end_matches('/') == authz.config.issuer.trim_end_matches('/') {
        return Err(invalid("the audience is Mandate itself, which never redeems its own ID-JAGs"));
    }
    let resource = ResourceUri::parse(&new.resource).map_err(invalid)?;
    let scopes = ScopeSet::from_tokens(&new.scopes).map_err(invalid)?;
    if scopes.is_empty() {
        return Err(invalid("a delegation target needs at least one scope"));
    }
    bounded("remote client id", &new.remote_client_id, MAX_FIELD_LEN).map_err(invalid)?;
    if new.remote_client_id.chars().any(char::is_control) {
        return Err(invalid("the remote client id must not contain control characters"));
    }
    let known = authz.store.agent(agent.as_str()).await.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    if known.is_none() {
        return Err(invalid(format!("agent {agent} does not exist")));
    }
    Ok(DelegationTarget {
        agent,
        audience: new.audience,
        resource: resource.as_str().to_owned(),
        scopes: scopes.to_vec(),
        remote_client_id: new.remote_client_id,
        created_at_ms: authz.clock.now_ms(),
    })
}

/// Where an external issuer's verification keys come from.
pub(crate) enum IssuerKeys<'a> {
    /// A JWK Set URL, fetched SSRF-safe and cached.
    Fetched(&'a str),
    /// An inline JWK Set document.
    Inline(&'a str),
    /// Keys Mandate holds itself (its JWT-SVID keys).
    Local(Arc<Vec<PublicKey>>),
}

impl<'a> IssuerKeys<'a> {
    /// A trusted IdP's keys.
    pub(crate) fn of_idp(idp: &'a TrustedIdp) -> Self {
        match (&idp.jwks_url, &idp.jwks) {
            (Some(url), _) => Self::Fetched(url),
            (None, Some(jwks)) => Self::Inline(jwks),
            (None, None) => Self::Inline(""),
        }
    }
}

/// Verifies `token` with an external issuer's keys. A `kid` the cached set lacks may be a key
/// rotation: the set is then fetched again, once (rate-limited by the cache).
pub(crate) async fn verify_external(
    authz: &Authz,
    keys: IssuerKeys<'_>,
    token: &str,
    opts: &VerifyOptions<'_>,
) -> Result<Value, String> {
    let insecure = authz.config.allow_insecure_federation;
    let unavailable = |e: jwks_fetch::FetchError| format!("issuer keys are unavailable: {e}");
    let (set, url) = match keys {
        IssuerKeys::Fetched(url) => (authz.jwks_cache.keys(url, opts.now, insecure).await.map_err(unavailable)?, url),
        IssuerKeys::Inline(jwks) => {
            let set = parse_jwk_set(jwks).map_err(|e| format!("inline JWKS: {e}"))?;
            return verify_jwt(token, &set, opts).map_err(|e| e.to_string());
        }
        IssuerKeys::Local(set) => return verify_jwt(token, &set, opts).map_err(|e| e.to_string()),
    };
    match verify_jwt(token, &set, opts) {
        Err(JwtError::UnknownKey(kid)) => match authz.jwks_cache.refresh(url, opts.now, insecure).await {
            Ok(Some(fresh)) => verify_jwt(token, &fresh, opts).map_err(|e| e.to_string()),
            Ok(None) => Err(JwtError::UnknownKey(kid).to_string()),
            Err(e) => Err(unavailable(e)),
        },
        other => other.map_err(|e| e.to_string()),
    }
}

/// The trusted IdP with this issuer, if any.
pub(crate) async fn trusted_idp(authz: &Authz, issuer: &str) -> Result<Option<TrustedIdp>, mandate_core::OAuthError> {
    authz.store.trusted_idp_by_issuer(issuer).await.map_err(crate::store_failure)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mandate_core::{ManualClock, TrustDomain};
    use mandate_crypto::{Alg, SigningKey};
    use serde_json::json;

    use super::*;
    use crate::AuthzConfig;
    use crate::registry::{self, NewAgent};

    async fn authz() -> (Authz, tempfile::TempDir) {
        let config = AuthzConfig::new("https://idp.mandate.example", TrustDomain::parse("mandate.local").unwrap());
        let (authz, dir) = crate::test_support::started(config, Arc::new(ManualClock::at_ms(1_800_000_000_000))).await;
        registry::create_owner(&authz, "alice", None, "t").await.unwrap();
        let agent = NewAgent { name: "assistant".into(), owner: "alice".into(), ..Default::default() };
        registry::create_agent(&authz, agent, "t").await.unwrap();
        (authz, dir)
    }

    fn jwks() -> String {
        json!({"keys": [SigningKey::generate(Alg::ES256).unwrap().public().jwk()]}).to_string()
    }

    #[tokio::test]
    async fn trusted_idps_are_validated() {
        let (authz, _dir) = authz().await;
        let good = NewTrustedIdp {
            name: "corp".into(),
            issuer: "https://idp.corp.example".into(),
            jwks: Some(jwks()),
            ..Default::default()
        };
        let cases = [
            (NewTrustedIdp { name: "bad name!".into(), ..good.clone() }, "name"),
            (NewTrustedIdp { issuer: "http://idp.corp.example".into(), ..good.clone() }, "https"),
            (NewTrustedIdp { issuer: "https://idp.mandate.example/".into(), ..good.clone() }, "own issuer"),
            (NewTrustedIdp { jwks: None, ..good.clone() }, "exactly one"),
            (NewTrustedIdp { jwks_url: Some("https://10.1.2.3/jwks".into()), jwks: None, ..good.clone() }, "private"),
            (NewTrustedIdp { jwks: Some("{\"keys\": []}".into()), ..good.clone() }, "inline JWKS"),
        ];
        for (new, expected) in cases {
            match create_trusted_idp(&authz, new, "t").await {
                Err(RegistryError::Invalid(why)) => assert!(why.contains(expected), "{expected:?} not in {why:?}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        let idp = create_trusted_idp(&authz, good.clone(), "t").await.unwrap();
        assert_eq!(trusted_idp(&authz, "https://idp.corp.example").await.unwrap(), Some(idp));
        assert!(matches!(create_trusted_idp(&authz, good, "t").await, Err(RegistryError::Refused(_))));
        delete_trusted_idp(&authz, "corp", "t").await.unwrap();
        assert!(matches!(delete_trusted_idp(&authz, "corp", "t").await, Err(RegistryError::Refused(_))));
    }

    #[tokio::test]
    async fn delegation_targets_are_validated() {
        let (authz, _dir) = authz().await;
        let good = NewDelegationTarget {
            agent: "assistant".into(),
            audience: "https://as.chat.example".into(),
            resource: "https://api.chat.example/".into(),
            scopes: vec!["chat.read".into(), "chat.history".into()],
            remote_client_id: "f53f191f9311af35".into(),
        };
        let cases = [
            (NewDelegationTarget { agent: "ghost".into(), ..good.clone() }, "does not exist"),
            (NewDelegationTarget { audience: "not a url".into(), ..good.clone() }, "not a URL"),
            (NewDelegationTarget { audience: "https://idp.mandate.example".into(), ..good.clone() }, "Mandate itself"),
            (NewDelegationTarget { resource: "api.chat.example".into(), ..good.clone() }, "absolute"),
            (NewDelegationTarget { scopes: vec![], ..good.clone() }, "at least one scope"),
            (NewDelegationTarget { scopes: vec!["bad scope\"".into()], ..good.clone() }, "scope"),
            (NewDelegationTarget { remote_client_id: String::new(), ..good.clone() }, "remote client id"),
            (NewDelegationTarget { remote_client_id: "a\nb".into(), ..good.clone() }, "control"),
        ];
        for (new, expected) in cases {
            match create_delegation_target(&authz, new, "t").await {
                Err(RegistryError::Invalid(why)) => assert!(why.contains(expected), "{expected:?} not in {why:?}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        let target = create_delegation_target(&authz, good.clone(), "t").await.unwrap();
        assert_eq!(authz.store.delegation_targets("assistant").await.unwrap(), vec![target]);
        assert!(matches!(create_delegation_target(&authz, good.clone(), "t").await, Err(RegistryError::Refused(_))));
        delete_delegation_target(&authz, "assistant", &good.audience, &good.resource, "t").await.unwrap();
        assert!(authz.store.delegation_targets("assistant").await.unwrap().is_empty());
    }
}
