//! Token verification for a resource server: trusted issuer, signature with that issuer's keys,
//! `typ: at+jwt`, this resource in `aud`, expiry, the RFC 9068 required claims, revocation, and
//! scope. The result is a [`Principal`] handlers can trust.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use mandate_core::{Clock, ScopeSet};
use mandate_crypto::jose::peek_claims;
use mandate_crypto::{PublicKey, VerifyOptions, verify_jwt};
use mandate_store::{EpochKind, Store};
use serde_json::Value;

use crate::challenge::{Rejection, RejectionKind};

/// The private claim naming an agent's responsible owner.
const OWNER_CLAIM: &str = "mandate_owner";

/// What this resource is and whom it trusts.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// This resource's identifier; tokens must carry it in `aud` (RFC 8707).
    pub resource: String,
    /// Authorization servers (issuer identifiers) whose tokens are accepted.
    pub issuers: Vec<String>,
    /// Where this resource's Protected Resource Metadata is served.
    pub resource_metadata_url: String,
    pub scopes_supported: Vec<String>,
    pub resource_name: Option<String>,
    /// Tolerated clock difference with the issuers.
    pub leeway_secs: i64,
}

/// Verification keys per issuer.
#[async_trait]
pub trait KeySource: Send + Sync {
    async fn keys(&self, issuer: &str) -> Result<Arc<Vec<PublicKey>>, String>;
}

/// Fixed keys, for tests and for resource servers configured with a JWKS file.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(BTreeMap<String, Arc<Vec<PublicKey>>>);

impl StaticKeys {
    pub fn new(issuer: impl Into<String>, keys: Vec<PublicKey>) -> Self {
        Self(BTreeMap::from([(issuer.into(), Arc::new(keys))]))
    }
}

#[async_trait]
impl KeySource for StaticKeys {
    async fn keys(&self, issuer: &str) -> Result<Arc<Vec<PublicKey>>, String> {
        self.0.get(issuer).cloned().ok_or_else(|| format!("no keys for issuer {issuer}"))
    }
}

/// Whether a verified token has since been revoked.
#[async_trait]
pub trait RevocationCheck: Send + Sync {
    /// `Some(reason)` if the token is revoked.
    async fn revoked(&self, principal: &Principal) -> Result<Option<&'static str>, String>;
}

/// Revocation state read from Mandate's own store: per-token revocations and the
/// agent/owner/client "not before" epochs of the kill switch. For resource servers running
/// beside Mandate (the gateway); remote ones use introspection or revocation signals.
pub struct StoreRevocation {
    store: Arc<dyn Store>,
    agent_prefix: String,
}

impl StoreRevocation {
    pub fn new(store: Arc<dyn Store>, trust_domain: &str) -> Self {
        Self { store, agent_prefix: format!("spiffe://{trust_domain}/agent/") }
    }

    /// The agent name in a token subject of this trust domain.
    pub fn agent_name<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&self.agent_prefix)
    }

    /// Checks one token's revocation state from its identifying claims.
    pub async fn check(
        &self,
        jti: &str,
        iat: i64,
        client_id: &str,
        agent: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Option<&'static str>, String> {
        if self.store.is_token_revoked(jti).await.map_err(|e| e.to_string())? {
            return Ok(Some("token was revoked"));
        }
        let mut subjects = vec![(EpochKind::Client, client_id)];
        subjects.extend(agent.map(|a| (EpochKind::Agent, a)));
        subjects.extend(owner.map(|o| (EpochKind::Owner, o)));
        let epoch = self.store.revoked_before(&subjects).await.map_err(|e| e.to_string())?;
        // Epochs are whole seconds and inclusive: a token issued in the same second as a kill
        // switch counts as issued before it.
        Ok(epoch.filter(|not_before| iat <= *not_before).map(|_| "agent, owner or client was revoked after issuance"))
    }
}

#[async_trait]
impl RevocationCheck for StoreRevocation {
    async fn revoked(&self, p: &Principal) -> Result<Option<&'static str>, String> {
        self.check(&p.jti, p.iat, &p.client_id, self.agent_name(&p.subject), p.owner.as_deref()).await
    }
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    pub scopes: ScopeSet,
    pub owner: Option<String>,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub claims: Value,
}

pub struct Guard {
    config: GuardConfig,
    keys: Arc<dyn KeySource>,
    revocation: Option<Arc<dyn RevocationCheck>>,
    clock: Arc<dyn Clock>,
}

impl Guard {
    pub fn new(config: GuardConfig, keys: Arc<dyn KeySource>, clock: Arc<dyn Clock>) -> Self {
        Self { config, keys, revocation: None, clock }
    }

    pub fn with_revocation(mut self, check: Arc<dyn RevocationCheck>) -> Self {
        self.revocation = Some(check);
        self
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Verifies the `Authorization` header value and that the token grants every scope in
    /// `needed`. Tokens are read from the header only, never from the query (OAuth 2.1).
    pub async fn check(&self, authorization: Option<&str>, needed: &ScopeSet) -> Result<Principal, Rejection> {
        let token = bearer_token(authorization)
            .ok_or_else(|| self.reject(RejectionKind::MissingToken, "a bearer access token is required", needed))?;
        let principal =
            self.verify(token).await.map_err(|why| self.reject(RejectionKind::InvalidToken, &why, needed))?;
        self.authorize(&principal, needed)?;
        Ok(principal)
    }

    /// Scope check alone, for handlers that decide what they need after reading the request.
    pub fn authorize(&self, principal: &Principal, needed: &ScopeSet) -> Result<(), Rejection> {
        match needed.not_in(&principal.scopes).next() {
            None => Ok(()),
            Some(missing) => Err(self.reject(
                RejectionKind::InsufficientScope,
                &format!("the token lacks scope {missing:?}"),
                needed,
            )),
        }
    }

    async fn verify(&self, token: &str) -> Result<Principal, String> {
        let unverified = peek_claims(token).map_err(|e| e.to_string())?;
        let issuer = unverified.get("iss").and_then(Value::as_str).ok_or("the token names no issuer")?;
        if !self.config.issuers.iter().any(|trusted| trusted == issuer) {
            return Err(format!("issuer {issuer:?} is not trusted here"));
        }
        let keys = self.keys.keys(issuer).await?;
        let opts = VerifyOptions {
            typ: &["at+jwt"],
            typ_optional: false,
            issuer: Some(issuer),
            audience: &[self.config.resource.as_str()],
            now: self.clock.now_secs(),
            leeway_secs: self.config.leeway_secs,
        };
        let claims = verify_jwt(token, &keys, &opts).map_err(|e| e.to_string())?;
        let principal = principal_from(issuer, claims)?;
        if let Some(check) = &self.revocation
            && let Some(reason) = check.revoked(&principal).await?
        {
            return Err(reason.to_owned());
        }
        Ok(principal)
    }

    fn reject(&self, kind: RejectionKind, description: &str, needed: &ScopeSet) -> Rejection {
        Rejection {
            kind,
            description: description.to_owned(),
            scope: (!needed.is_empty()).then(|| needed.to_string()),
            resource_metadata: self.config.resource_metadata_url.clone(),
        }
    }
}

fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The RFC 9068 required claims, typed.
fn principal_from(issuer: &str, claims: Value) -> Result<Principal, String> {
    let text = |name: &str| {
        claims.get(name).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("claim {name:?} is missing"))
    };
    let number =
        |name: &str| claims.get(name).and_then(Value::as_i64).ok_or_else(|| format!("claim {name:?} is missing"));
    let scopes = match claims.get("scope").and_then(Value::as_str) {
        Some(raw) => ScopeSet::parse(raw).map_err(|e| e.to_string())?,
        None => ScopeSet::default(),
    };
    Ok(Principal {
        issuer: issuer.to_owned(),
        subject: text("sub")?,
        client_id: text("client_id")?,
        jti: text("jti")?,
        iat: number("iat")?,
        exp: number("exp")?,
        owner: claims.get(OWNER_CLAIM).and_then(Value::as_str).map(str::to_owned),
        scopes,
        claims,
    })
}
