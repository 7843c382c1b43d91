//! Registering workloads: attestation selectors, and join tokens, which bootstrap an agent on a
//! host that has no other credential. A join token is shown once (only its SHA-256 is stored),
//! and redeeming it certifies the public key of a CSR as the agent's X.509-SVID, exactly once.

use mandate_authz::Authz;
use mandate_core::{AuditEvent, JoinToken, Name, SpiffeId};
use mandate_crypto::{hash_secret, random_token};
use mandate_store::{Mutation, MutationError};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::bundle::pem_decode;
use crate::ca::SpiffeCa;
use crate::svid::certify_key;

pub const DEFAULT_JOIN_TOKEN_TTL_SECS: i64 = 900;
/// One second is useless in practice but lets tests watch a token expire.
pub const MIN_JOIN_TOKEN_TTL_SECS: i64 = 1;
pub const MAX_JOIN_TOKEN_TTL_SECS: i64 = 7 * 86_400;
/// Join tokens look like `mjt_<43 base64url characters>`.
pub const JOIN_TOKEN_PREFIX: &str = "mjt_";
const MAX_SELECTORS: usize = 32;
const MAX_SELECTOR_BYTES: usize = 512;
const MAX_CSR_PEM_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The request is malformed (bad CSR, bad TTL): HTTP 400.
    #[error("{0}")]
    InvalidRequest(String),
    /// The join token is unknown, used or expired, or its agent is gone: HTTP 401.
    #[error("{0}")]
    InvalidToken(String),
    /// The named agent does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Storage, audit or CA failure; nothing was done: HTTP 503.
    #[error("{0}")]
    Unavailable(String),
}

impl JoinError {
    /// The OAuth-style error code used in JSON answers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(_) => "invalid_token",
            Self::NotFound(_) => "not_found",
            Self::Unavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) => 400,
            Self::InvalidToken(_) => 401,
            Self::NotFound(_) => 404,
            Self::Unavailable(_) => 503,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> JoinError {
    tracing::error!(error = %e, "join token operation failed");
    JoinError::Unavailable(format!("the service is unavailable; nothing was done ({e})"))
}

/// A new join token. `token` is the secret, to be shown once.
#[derive(Debug, Clone)]
pub struct CreatedJoinToken {
    pub token: String,
    pub record: JoinToken,
}

/// Creates a single-use join token for `agent`, valid for `ttl_secs`; audited as `join_token.create`.
pub async fn create_join_token(
    authz: &Authz,
    agent: &str,
    ttl_secs: i64,
    correlation_id: &str,
) -> Result<CreatedJoinToken, JoinError> {
    let mut event = AuditEvent::allow("join_token.create", correlation_id);
    event.agent = Some(authz.config.trust_domain.agent_id_str(agent));
    let prepared = prepare_token(authz, agent, ttl_secs).await;
    let (created, owner) = match prepared {
        Ok(ready) => ready,
        Err(e) => return Err(refuse(authz, event, e).await),
    };
    event.owner = Some(owner.to_string());
    event.detail = Some(format!(
        "token_sha256_prefix={} expires_at_ms={}",
        &created.record.token_hash[..12],
        created.record.expires_at_ms
    ));
    match authz.log.apply(Mutation::CreateJoinToken(created.record.clone()), event).await.map_err(unavailable)? {
        Ok(_) => Ok(created),
        Err(MutationError::Conflict(what)) => Err(JoinError::Unavailable(format!("token collision: {what}"))),
        Err(e) => Err(JoinError::NotFound(e.to_string())),
    }
}

async fn prepare_token(authz: &Authz, agent: &str, ttl_secs: i64) -> Result<(CreatedJoinToken, Name), JoinError> {
    let name = Name::parse(agent).map_err(|e| JoinError::InvalidRequest(e.to_string()))?;
    if !(MIN_JOIN_TOKEN_TTL_SECS..=MAX_JOIN_TOKEN_TTL_SECS).contains(&ttl_secs) {
        return Err(JoinError::InvalidRequest(format!(
            "ttl must be between {MIN_JOIN_TOKEN_TTL_SECS} and {MAX_JOIN_TOKEN_TTL_SECS} seconds"
        )));
    }
    let Some(found) = authz.store.agent(agent).await.map_err(unavailable)? else {
        return Err(JoinError::NotFound(format!("agent {agent} does not exist")));
    };
    let token = random_token(JOIN_TOKEN_PREFIX);
    let now_ms = authz.clock.now_ms();
    let record = JoinToken {
        token_hash: hash_secret(&token),
        agent: name,
        expires_at_ms: now_ms + ttl_secs * 1000,
        used_at_ms: None,
        created_at_ms: now_ms,
    };
    Ok((CreatedJoinToken { token, record }, found.owner))
}

/// Replaces `agent`'s workload attestation selectors; audited as `agent.selectors.set`.
pub async fn set_selectors(
    authz: &Authz,
    agent: &str,
    selectors: &[String],
    correlation_id: &str,
) -> Result<Vec<String>, JoinError> {
    let mut event = AuditEvent::allow("agent.selectors.set", correlation_id);
    event.agent = Some(authz.config.trust_domain.agent_id_str(agent));
    let checked = Name::parse(agent)
        .map_err(|e| JoinError::InvalidRequest(e.to_string()))
        .and_then(|_| normalise_selectors(selectors));
    let selectors = match checked {
        Ok(s) => s,
        Err(e) => return Err(refuse(authz, event, e).await),
    };
    event.detail = Some(format!("selectors={}", selectors.join(",")));
    let mutation = Mutation::SetSelectors { agent: agent.to_owned(), selectors: selectors.clone() };
    match authz.log.apply(mutation, event).await.map_err(unavailable)? {
        Ok(_) => Ok(selectors),
        Err(e) => Err(JoinError::NotFound(e.to_string())),
    }
}

/// Selectors are `type:value` (e.g. `unix:uid:1000`); duplicates are dropped, order is kept.
pub fn normalise_selectors(selectors: &[String]) -> Result<Vec<String>, JoinError> {
    if selectors.len() > MAX_SELECTORS {
        return Err(JoinError::InvalidRequest(format!("at most {MAX_SELECTORS} selectors")));
    }
    let mut out: Vec<String> = Vec::with_capacity(selectors.len());
    for selector in selectors {
        let well_formed = selector.split_once(':').is_some_and(|(kind, value)| {
            !kind.is_empty()
                && !value.is_empty()
                && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        });
        let clean = selector.len() <= MAX_SELECTOR_BYTES && !selector.chars().any(|c| c.is_control() || c == ' ');
        if !well_formed || !clean {
            return Err(JoinError::InvalidRequest(format!(
                "selector {selector:?} must be type:value (e.g. unix:uid:1000), without spaces, at most \
                 {MAX_SELECTOR_BYTES} bytes"
            )));
        }
        if !out.contains(selector) {
            out.push(selector.clone());
        }
    }
    Ok(out)
}

/// What a redeemed join token yields.
#[derive(Debug, Clone)]
pub struct Joined {
    pub spiffe_id: SpiffeId,
    pub agent: Name,
    /// Leaf first (then the intermediate under an upstream root), DER.
    pub chain_der: Vec<Vec<u8>>,
    /// The trust bundle's CA certificates, DER.
    pub bundle_der: Vec<Vec<u8>>,
    pub expires_at_ms: i64,
}

/// Redeems a join token: the CSR's signature must verify; its public key (P-256 or P-384) is
/// certified for the agent the token names, whatever subject or SANs the CSR asks for. The
/// token is spent in the same transaction as the `spiffe.join` event; every attempt is audited.
pub async fn redeem(ca: &SpiffeCa, token: &str, csr_pem: &str, correlation_id: &str) -> Result<Joined, JoinError> {
    let authz = ca.authz();
    let token_hash = hash_secret(token);
    let mut event = AuditEvent::allow("spiffe.join", correlation_id);
    event.detail = Some(format!("token_sha256_prefix={}", &token_hash[..12]));
    let prepared = prepare_join(ca, token, &token_hash, csr_pem, &mut event).await;
    let joined = match prepared {
        Ok(joined) => joined,
        Err(e) => return Err(refuse(authz, event, e).await),
    };
    let now_ms = authz.clock.now_ms();
    let mutation = Mutation::UseJoinToken { token_hash, now_ms };
    match authz.log.apply(mutation, event).await.map_err(unavailable)? {
        Ok(_) => Ok(joined),
        // Spent or expired between the check and the write: the store logged the refusal.
        Err(_) => Err(JoinError::InvalidToken("the join token was already used or has expired".into())),
    }
}

async fn prepare_join(
    ca: &SpiffeCa,
    token: &str,
    token_hash: &str,
    csr_pem: &str,
    event: &mut AuditEvent,
) -> Result<Joined, JoinError> {
    let authz = ca.authz();
    if token.is_empty() {
        return Err(JoinError::InvalidRequest("\"token\" is required".into()));
    }
    let public_key = csr_public_key(csr_pem)?;
    let record = authz
        .store
        .join_token(token_hash)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| JoinError::InvalidToken("unknown join token".into()))?;
    event.agent = Some(authz.config.trust_domain.agent_id_str(record.agent.as_str()));
    let now_ms = authz.clock.now_ms();
    if record.used_at_ms.is_some() {
        return Err(JoinError::InvalidToken("the join token was already used".into()));
    }
    if record.expires_at_ms <= now_ms {
        return Err(JoinError::InvalidToken("the join token has expired".into()));
    }
    let agent = authz
        .store
        .agent(record.agent.as_str())
        .await
        .map_err(unavailable)?
        .ok_or_else(|| JoinError::InvalidToken(format!("agent {} no longer exists", record.agent)))?;
    event.owner = Some(agent.owner.to_string());
    let authority = ca.authority().await.map_err(unavailable)?;
    let ttl = ca.config().x509_svid_ttl_secs;
    let (chain_der, expires_at_ms, serial) =
        certify_key(&authority, &agent.spiffe_id, &public_key, now_ms, ttl).map_err(unavailable)?;
    let bundle_der = ca.x509_authorities().await.map_err(unavailable)?;
    event.jti = Some(serial);
    if let Some(detail) = &mut event.detail {
        detail.push_str(&format!(" expires_at_ms={expires_at_ms}"));
    }
    Ok(Joined { spiffe_id: agent.spiffe_id, agent: agent.name, chain_der, bundle_der, expires_at_ms })
}

/// The public key of a PEM PKCS#10 request whose self-signature verifies. Only the key is
/// taken: subject, SANs and requested extensions are ignored.
pub fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, JoinError> {
    let bad = |why: String| JoinError::InvalidRequest(format!("csr: {why}"));
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(bad(format!("larger than {MAX_CSR_PEM_BYTES} bytes")));
    }
    let mut blocks = pem_decode(csr_pem, "CERTIFICATE REQUEST");
    blocks.extend(pem_decode(csr_pem, "NEW CERTIFICATE REQUEST"));
    let [der] = blocks.as_slice() else {
        return Err(bad("expected exactly one PEM \"CERTIFICATE REQUEST\" block".into()));
    };
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| bad(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request".into()));
    }
    csr.verify_signature().map_err(|_| bad("the signature does not verify".into()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let point_len = spki.subject_public_key.data.len();
    let is_ec = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY;
    if !is_ec || !matches!(point_len, 65 | 97) {
        return Err(bad("the key must be ECDSA P-256 or P-384".into()));
    }
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| bad(format!("unsupported key: {e}")))
}

/// Logs `error` as the refusal of `event`, then returns it (or the audit failure).
async fn refuse(authz: &Authz, event: AuditEvent, error: JoinError) -> JoinError {
    let event = event.refused(error.code(), &error.to_string());
    match authz.log.record(event).await {
        Ok(_) => error,
        Err(e) => unavailable(e),
    }
}
