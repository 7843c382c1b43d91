//! Token verification for a resource server: trusted issuer, signature with that issuer's keys,
//! `typ: at+jwt`, this resource in `aud`, expiry, the RFC 9068 required claims, revocation,
//! sender constraint (DPoP, RFC 9449 §7) and scope. The result is a [`Principal`] handlers can trust.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use mandate_core::{Clock, ScopeSet};
use mandate_crypto::jose::peek_claims;
use mandate_crypto::{JwtError, PublicKey, VerifyOptions, verify_jwt};
use mandate_store::{EpochKind, Store};
use serde_json::Value;
use url::Url;

use crate::challenge::{Rejection, RejectionKind};
use crate::dpop::{DpopCheck, bound_token_matches, replay_key, single_proof, verify_dpop_proof};
use crate::prm::metadata_url;
use crate::replay::{MemoryReplayCache, ReplayCache};
use crate::verified::VerifiedCache;

/// The private claim naming an agent's responsible owner.
const OWNER_CLAIM: &str = "mandate_owner";
/// The private claim naming the authorization (refresh-token family) a token was issued under.
pub const GRANT_CLAIM: &str = "mandate_grant";

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
    /// `scheme://host[:port]` as clients address this server, which DPoP proofs' `htu` must
    /// name; `None` means the origin of `resource`. Set it when requests arrive under another
    /// name than the resource identifier's (behind a gateway).
    pub public_origin: Option<String>,
    /// Refuse `Bearer` tokens: only DPoP-bound tokens are accepted (advertised in the metadata).
    pub dpop_bound_access_tokens_required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {0:?} is not an absolute http(s) URL")]
pub struct BadResource(pub String);

impl GuardConfig {
    /// A resource trusting `issuers`, its metadata at the RFC 9728 well-known URL, no scopes
    /// listed, no leeway, Bearer and DPoP tokens both accepted.
    pub fn new(resource: &str, issuers: Vec<String>) -> Result<Self, BadResource> {
        origin_of(resource).ok_or_else(|| BadResource(resource.to_owned()))?;
        Ok(Self {
            resource: resource.to_owned(),
            issuers,
            resource_metadata_url: metadata_url(resource).ok_or_else(|| BadResource(resource.to_owned()))?,
            scopes_supported: Vec::new(),
            resource_name: None,
            leeway_secs: 0,
            public_origin: None,
            dpop_bound_access_tokens_required: false,
        })
    }

    /// The absolute URL a request for `path` was addressed to, as DPoP `htu` must name it.
    pub fn request_url(&self, path: &str) -> String {
        let origin = self.public_origin.clone().or_else(|| origin_of(&self.resource)).unwrap_or_default();
        format!("{}{path}", origin.trim_end_matches('/'))
    }
}

/// `scheme://host[:port]` of an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    let web = matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty());
    web.then(|| url.origin().ascii_serialization())
}

/// The parts of a request the guard judges. Tokens are read from the `Authorization` header
/// only, never from the query (OAuth 2.1).
#[derive(Debug, Clone, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a str>,
    /// Every `DPoP` header value, in order (more than one is refused).
    pub dpop: Vec<&'a str>,
    /// The HTTP method, as sent (`GET`, `POST`).
    pub method: &'a str,
    /// The request path as the client addressed it (a query is ignored).
    pub path: &'a str,
}

impl<'a> Presented<'a> {
    /// A request with only an `Authorization` header.
    pub fn bearer(authorization: Option<&'a str>, method: &'a str, path: &'a str) -> Self {
        Self { authorization, dpop: Vec::new(), method, path }
    }
}

/// Verification keys per issuer.
#[async_trait]
pub trait KeySource: Send + Sync {
    async fn keys(&self, issuer: &str) -> Result<Arc<Vec<PublicKey>>, String>;

    /// Called when a token names a `kid` the keys lack (a rotation): fresh keys, or `None`
    /// when there is nothing newer to be had (the default, and when refetching too often).
    async fn refresh(&self, _issuer: &str) -> Result<Option<Arc<Vec<PublicKey>>>, String> {
        Ok(None)
    }
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
/// agent/owner/client/grant "not before" epochs of the kill switch. For resource servers
/// running beside Mandate (the gateway); remote ones use introspection or revocation signals.
pub struct StoreRevocation {
    store: Arc<dyn Store>,
    agent_prefix: String,
}

/// How many nested `act` levels revocation follows.
const MAX_ACT_DEPTH: usize = 16;

/// The claims of one token that revocation looks at.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    pub jti: &'a str,
    pub iat: i64,
    pub client_id: &'a str,
    pub agent: Option<&'a str>,
    pub owner: Option<&'a str>,
    /// The refresh-token family the token was issued under ([`GRANT_CLAIM`]).
    pub grant: Option<&'a str>,
    /// The `act` claim: every agent in the delegation chain answers for the token too, so
    /// revoking an agent also ends tokens it holds on someone else's behalf.
    pub act: Option<&'a Value>,
}

impl StoreRevocation {
    pub fn new(store: Arc<dyn Store>, trust_domain: &str) -> Self {
        Self { store, agent_prefix: format!("spiffe://{trust_domain}/agent/") }
    }

    /// The agent name in a token subject of this trust domain.
    pub fn agent_name<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&self.agent_prefix)
    }

    /// This trust domain's agents named anywhere in an `act` chain (RFC 8693 §4.1 nesting).
    fn actor_agents<'v>(&self, mut act: Option<&'v Value>) -> impl Iterator<Item = &'v str> {
        let mut agents = Vec::new();
        // Chains are short; the bound stops a pathological token from costing more.
        for _ in 0..MAX_ACT_DEPTH {
            let Some(current) = act else { break };
            if let Some(agent) = current.get("sub").and_then(Value::as_str).and_then(|s| self.agent_name(s)) {
                agents.push(agent);
            }
            act = current.get("act");
        }
        agents.into_iter()
    }

    /// Checks one token's revocation state from its identifying claims.
    pub async fn check(&self, token: &TokenFacts<'_>) -> Result<Option<&'static str>, String> {
        let mut subjects = vec![(EpochKind::Client, token.client_id)];
        subjects.extend(token.agent.map(|a| (EpochKind::Agent, a)));
        subjects.extend(self.actor_agents(token.act).map(|a| (EpochKind::Agent, a)));
        subjects.extend(token.owner.map(|o| (EpochKind::Owner, o)));
        subjects.extend(token.grant.map(|g| (EpochKind::Grant, g)));
        let state = self.store.token_revocation(token.jti, &subjects).await.map_err(|e| e.to_string())?;
        if state.token_revoked {
            return Ok(Some("token was revoked"));
        }
        // Epochs are whole seconds and inclusive: a token issued in the same second as a kill
        // switch counts as issued before it.
        Ok(state
            .not_before
            .filter(|not_before| token.iat <= *not_before)
            .map(|_| "agent, owner, client or grant was revoked after issuance"))
    }
}

#[async_trait]
impl RevocationCheck for StoreRevocation {
    async fn revoked(&self, p: &Principal) -> Result<Option<&'static str>, String> {
        let facts = TokenFacts {
            jti: &p.jti,
            iat: p.iat,
            client_id: &p.client_id,
            agent: self.agent_name(&p.subject),
            owner: p.owner.as_deref(),
            grant: p.claims.get(GRANT_CLAIM).and_then(Value::as_str),
            act: p.actor.as_ref(),
        };
        self.check(&facts).await
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
    /// Thumbprint of the key the token is bound to (`cnf.jkt`, RFC 9449 §6.1); a bound token
    /// only gets this far with a valid proof by that key.
    pub jkt: Option<String>,
    /// The `act` claim (RFC 8693 §4.1): who acts on the subject's behalf, when delegated.
    pub actor: Option<Value>,
    pub claims: Value,
}

pub struct Guard {
    config: GuardConfig,
    keys: Arc<dyn KeySource>,
    revocation: Option<Arc<dyn RevocationCheck>>,
    replay: Arc<dyn ReplayCache>,
    clock: Arc<dyn Clock>,
    verified: Option<VerifiedCache>,
}

/// How the `Authorization` header presents the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

impl Guard {
    pub fn new(config: GuardConfig, keys: Arc<dyn KeySource>, clock: Arc<dyn Clock>) -> Self {
        Self { config, keys, revocation: None, replay: Arc::new(MemoryReplayCache::default()), clock, verified: None }
    }

    pub fn with_revocation(mut self, check: Arc<dyn RevocationCheck>) -> Self {
        self.revocation = Some(check);
        self
    }

    /// Replaces the in-memory DPoP replay cache (e.g. with a shared one for replicas).
    pub fn with_replay_cache(mut self, cache: Arc<dyn ReplayCache>) -> Self {
        self.replay = cache;
        self
    }

    /// Remembers up to `capacity` verified tokens so a token presented again skips the
    /// signature check (its `typ`, issuer, audience and signature cannot change) until it
    /// expires; revocation, the DPoP proof and scope are still checked on every request.
    pub fn with_verified_cache(mut self, capacity: usize) -> Self {
        self.verified = Some(VerifiedCache::new(capacity));
        self
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Verifies the request's token (and DPoP proof, for bound tokens) and that the token grants
    /// every scope in `needed`.
    pub async fn check(&self, request: &Presented<'_>, needed: &ScopeSet) -> Result<Principal, Rejection> {
        let (scheme, token) = credentials(request.authorization)
            .ok_or_else(|| self.rejection(RejectionKind::MissingToken, "an access token is required", needed))?;
        let invalid = |why: String| self.rejection(RejectionKind::InvalidToken, &why, needed);
        let principal = self.verified_principal(token).await.map_err(invalid)?;
        let refused_holder =
            |rejection: Rejection| Rejection { holder: Some(Box::new(principal.clone())), ..rejection };
        if let Some(reason) = self.revocation_of(&principal).await.map_err(invalid)? {
            return Err(refused_holder(invalid(reason.to_owned())));
        }
        self.check_binding(scheme, token, &principal, request, needed).await.map_err(refused_holder)?;
        self.authorize(&principal, needed).map_err(refused_holder)?;
        Ok(principal)
    }

    /// Scope check alone, for handlers that decide what they need after reading the request.
    pub fn authorize(&self, principal: &Principal, needed: &ScopeSet) -> Result<(), Rejection> {
        match needed.not_in(&principal.scopes).next() {
            None => Ok(()),
            Some(missing) => Err(self.rejection(
                RejectionKind::InsufficientScope,
                &format!("the token lacks scope {missing:?}"),
                needed,
            )),
        }
    }

    /// A refusal pointing at this resource's metadata, naming the scopes the operation needs.
    pub fn rejection(&self, kind: RejectionKind, description: &str, needed: &ScopeSet) -> Rejection {
        Rejection {
            kind,
            description: description.to_owned(),
            scope: (!needed.is_empty()).then(|| needed.to_string()),
            resource_metadata: self.config.resource_metadata_url.clone(),
            holder: None,
        }
    }

    /// Why an authentic token is no longer good, if it is revoked.
    async fn revocation_of(&self, principal: &Principal) -> Result<Option<&'static str>, String> {
        match &self.revocation {
            Some(check) => check.revoked(principal).await,
            None => Ok(None),
        }
    }

    /// The token's signature and claims checked, or remembered as checked.
    async fn verified_principal(&self, token: &str) -> Result<Principal, String> {
        let now = self.clock.now_secs();
        if let Some(principal) = self.verified.as_ref().and_then(|cache| cache.get(token, now)) {
            return Ok(principal);
        }
        let unverified = peek_claims(token).map_err(|e| e.to_string())?;
        let issuer = unverified.get("iss").and_then(Value::as_str).ok_or("the token names no issuer")?;
        if !self.config.issuers.iter().any(|trusted| trusted == issuer) {
            return Err(format!("issuer {issuer:?} is not trusted here"));
        }
        let opts = VerifyOptions {
            typ: &["at+jwt"],
            typ_optional: false,
            issuer: Some(issuer),
            audience: &[self.config.resource.as_str()],
            now,
            leeway_secs: self.config.leeway_secs,
        };
        let claims = self.verify_signed(token, issuer, &opts).await?;
        let principal = principal_from(issuer, claims)?;
        if let Some(cache) = &self.verified {
            cache.insert(token, &principal, principal.exp.saturating_add(self.config.leeway_secs), now);
        }
        Ok(principal)
    }

    async fn verify_signed(&self, token: &str, issuer: &str, opts: &VerifyOptions<'_>) -> Result<Value, String> {
        verify_signed(self.keys.as_ref(), token, issuer, opts).await
    }

    /// RFC 9449 §7: a bound token only with the `DPoP` scheme and a proof by its key; an
    /// unbound one only as `Bearer`, and not at all when bound tokens are required.
    async fn check_binding(
        &self,
        scheme: Scheme,
        token: &str,
        principal: &Principal,
        request: &Presented<'_>,
        needed: &ScopeSet,
    ) -> Result<(), Rejection> {
        let invalid = |why: &str| self.rejection(RejectionKind::InvalidToken, why, needed);
        match (scheme, principal.jkt.is_some()) {
            (Scheme::Bearer, true) => Err(invalid("DPoP-bound token must be presented with DPoP")),
            (Scheme::Bearer, false) if self.config.dpop_bound_access_tokens_required => {
                Err(invalid("this resource accepts only DPoP-bound access tokens"))
            }
            (Scheme::Bearer, false) => Ok(()),
            (Scheme::Dpop, false) => Err(invalid("the token is not DPoP-bound; present it as Bearer")),
            (Scheme::Dpop, true) => self
                .check_proof(token, principal, request)
                .await
                .map_err(|why| self.rejection(RejectionKind::InvalidDpopProof, &why, needed)),
        }
    }

    /// The request's one proof: valid for this method, URL and token, by the token's key, unused.
    async fn check_proof(&self, token: &str, principal: &Principal, request: &Presented<'_>) -> Result<(), String> {
        let proof = single_proof(request.dpop.iter().copied()).map_err(|e| e.to_string())?;
        let url = self.config.request_url(request.path);
        let now = self.clock.now_secs();
        let check = DpopCheck { access_token: Some(token), ..DpopCheck::new(request.method, &url, now) };
        let proof = verify_dpop_proof(proof, &check).map_err(|e| e.to_string())?;
        if !bound_token_matches(&principal.claims, &proof) {
            return Err("the DPoP proof is not signed by the key the token is bound to".into());
        }
        // The proof stays acceptable until iat + max_age + leeway, so it is remembered that long.
        let until = proof.iat + check.max_age_secs + check.leeway_secs;
        if self.replay.first_use(&replay_key(&proof), until, now).await? {
            Ok(())
        } else {
            Err("the DPoP proof was already used".into())
        }
    }
}

/// Verifies with the issuer's keys, refreshing them once if the token names an unknown `kid`.
pub(crate) async fn verify_signed(
    keys: &dyn KeySource,
    token: &str,
    issuer: &str,
    opts: &VerifyOptions<'_>,
) -> Result<Value, String> {
    let current = keys.keys(issuer).await?;
    let verified = match verify_jwt(token, &current, opts) {
        Err(JwtError::UnknownKey(kid)) => match keys.refresh(issuer).await? {
            Some(fresh) => verify_jwt(token, &fresh, opts),
            None => Err(JwtError::UnknownKey(kid)),
        },
        other => other,
    };
    verified.map_err(|e| e.to_string())
}

/// The token and how it is presented: `Bearer <token>` or `DPoP <token>` (schemes are
/// case-insensitive). Anything else counts as no token.
fn credentials(authorization: Option<&str>) -> Option<(Scheme, &str)> {
    let (scheme, token) = authorization?.split_once(' ')?;
    let token = token.trim();
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return None;
    };
    (!token.is_empty()).then_some((scheme, token))
}

/// The RFC 9068 required claims, typed, plus the confirmation key and actor.
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
        jkt: confirmation_key(&claims)?,
        actor: claims.get("act").filter(|a| a.is_object()).cloned(),
        scopes,
        claims,
    })
}

/// `cnf.jkt`. A token confirmed by any other means (an mTLS certificate, RFC 8705) cannot be
/// checked here, and accepting it as a plain bearer token would defeat its binding.
fn confirmation_key(claims: &Value) -> Result<Option<String>, String> {
    let Some(cnf) = claims.get("cnf") else {
        return Ok(None);
    };
    match cnf.get("jkt").and_then(Value::as_str) {
        Some(jkt) if !jkt.is_empty() => Ok(Some(jkt.to_owned())),
        _ => Err("the token is bound by a confirmation method other than DPoP".into()),
    }
}
