//! SVIDs: X.509-SVID leaves (fresh P-256 key, one URI SAN, leaf profile of X.509-SVID §4) and
//! ES256 JWT-SVIDs, their validation, and audited issuance. The `mint_*` functions are pure (no
//! I/O, for benchmarks and tests); `issue_*` add the audit event before answering.

pub mod join;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_authz::keyring::PURPOSE_JWT_SVID;
use mandate_core::{Agent, AuditEvent, SpiffeId, TrustDomain};
use mandate_crypto::jose::{VerifyOptions, sign_jwt, verify_jwt};
use mandate_crypto::{Alg, JwtError, PublicKey, SigningKey};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::ca::{Authority, SpiffeCa, SpiffeError, datetime, random_serial};

/// Leaves start this much in the past, so a relying party whose clock is a little behind
/// accepts a certificate the moment it is issued.
pub const X509_BACKDATE_SECS: i64 = 30;
/// Most audiences one JWT-SVID may carry (the `spiffe` crate refuses more than 32).
pub const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_BYTES: usize = 1024;
/// SPIFFE IDs longer than this are refused (SPIFFE-ID §2.3: accept at least 2048 bytes).
const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// An X.509-SVID with its private key.
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then the intermediate when the CA sits under an upstream root.
    pub cert_chain_der: Vec<Vec<u8>>,
    /// Unencrypted PKCS#8, the Workload API encoding.
    pub private_key_pkcs8_der: Zeroizing<Vec<u8>>,
    pub expires_at_ms: i64,
    /// Hex serial number of the leaf (the audit event's `jti`).
    pub serial: String,
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// A signed JWT-SVID.
#[derive(Debug, Clone)]
pub struct JwtSvid {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub audience: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    pub jti: String,
}

#[derive(Serialize)]
struct JwtSvidClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Audience<'a>,
    exp: i64,
    iat: i64,
    jti: &'a str,
}

/// One audience is sent as a string (what OIDC relying parties expect most), several as an array.
#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [String]),
}

/// The leaf profile (X.509-SVID §4.3, §5): empty subject (so the URI SAN is critical), exactly
/// one URI SAN, CA:false, digitalSignature only, EKU serverAuth + clientAuth.
pub fn leaf_params(spiffe_id: &SpiffeId, not_before: i64, not_after: i64) -> Result<CertificateParams, SpiffeError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = spiffe_id
        .as_str()
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| SpiffeError::InvalidSpiffeId(format!("{spiffe_id} cannot be a URI SAN: {e}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    Ok(params)
}

/// A certificate chain for `public_key` naming `spiffe_id`, valid from slightly before
/// `now_ms` for `ttl_secs` but never past the CA certificate. Returns (chain, expiry ms, serial).
pub fn certify_key(
    authority: &Authority,
    spiffe_id: &SpiffeId,
    public_key: &impl PublicKeyData,
    now_ms: i64,
    ttl_secs: i64,
) -> Result<(Vec<Vec<u8>>, i64, String), SpiffeError> {
    let now = now_ms.div_euclid(1000);
    let not_after = (now + ttl_secs).min(authority.not_after_secs());
    if not_after <= now {
        return Err(SpiffeError::CaExpired);
    }
    let params = leaf_params(spiffe_id, now - X509_BACKDATE_SECS, not_after)?;
    let serial = params.serial_number.as_ref().map(|s| hex::encode(s.to_bytes())).unwrap_or_default();
    let leaf = authority.sign(&params, public_key)?;
    let mut chain = Vec::with_capacity(2);
    chain.push(leaf);
    chain.extend(authority.chain_tail());
    Ok((chain, not_after * 1000, serial))
}

/// Mints an X.509-SVID with a fresh ECDSA P-256 key. Pure: no I/O, no audit.
pub fn mint_x509(
    authority: &Authority,
    spiffe_id: &SpiffeId,
    now_ms: i64,
    ttl_secs: i64,
) -> Result<X509Svid, SpiffeError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (cert_chain_der, expires_at_ms, serial) = certify_key(authority, spiffe_id, &key, now_ms, ttl_secs)?;
    Ok(X509Svid {
        spiffe_id: spiffe_id.clone(),
        cert_chain_der,
        private_key_pkcs8_der: Zeroizing::new(key.serialize_der()),
        expires_at_ms,
        serial,
    })
}

/// Checks a requested audience list: one to [`MAX_AUDIENCES`] non-empty values.
pub fn check_audience(audience: &[String]) -> Result<(), SpiffeError> {
    if audience.is_empty() {
        return Err(SpiffeError::AudienceRequired);
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(SpiffeError::InvalidAudience(format!("at most {MAX_AUDIENCES} audiences")));
    }
    if audience.iter().any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_BYTES || a.chars().any(char::is_control)) {
        return Err(SpiffeError::InvalidAudience(format!(
            "every audience must be 1-{MAX_AUDIENCE_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// Mints a JWT-SVID (header `{alg: ES256, kid, typ: JWT}`). Pure: no I/O, no audit.
pub fn mint_jwt(
    key: &SigningKey,
    issuer: &str,
    spiffe_id: &SpiffeId,
    audience: &[String],
    now_secs: i64,
    ttl_secs: i64,
) -> Result<JwtSvid, SpiffeError> {
    check_audience(audience)?;
    if key.alg() != Alg::ES256 {
        // SPIFFE verifiers accept RSA/ECDSA/PSS only; EdDSA would be refused by every client.
        return Err(SpiffeError::Sign("JWT-SVIDs are signed with ES256 only".into()));
    }
    let jti = new_jti();
    let exp = now_secs + ttl_secs;
    let aud = match audience {
        [one] => Audience::One(one),
        many => Audience::Many(many),
    };
    let claims = JwtSvidClaims { iss: issuer, sub: spiffe_id.as_str(), aud, exp, iat: now_secs, jti: &jti };
    let token = sign_jwt(key, "JWT", &claims).map_err(|e| SpiffeError::Sign(e.to_string()))?;
    Ok(JwtSvid { spiffe_id: spiffe_id.clone(), token, audience: audience.to_vec(), expires_at: exp, jti })
}

fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    mandate_crypto::secret::fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Issues `agent` an X.509-SVID and records `svid.x509.issue` (or its refusal) first.
pub async fn issue_x509(ca: &SpiffeCa, agent: &Agent, correlation_id: &str) -> Result<X509Svid, SpiffeError> {
    let event = agent_event("svid.x509.issue", agent, correlation_id);
    let minted = match ca.authority().await {
        Ok(authority) => {
            let now_ms = ca.authz().clock.now_ms();
            mint_x509(&authority, &agent.spiffe_id, now_ms, ca.config().x509_svid_ttl_secs)
                .map(|svid| (svid, authority.kid().to_owned()))
        }
        Err(e) => Err(e),
    };
    match minted {
        Ok((svid, ca_kid)) => {
            let mut event = event.with_detail(format!("expires_at_ms={} ca_kid={ca_kid}", svid.expires_at_ms));
            event.jti = Some(svid.serial.clone());
            record(ca, event).await?;
            Ok(svid)
        }
        Err(e) => {
            record(ca, event.refused("server_error", &e.to_string())).await?;
            Err(e)
        }
    }
}

/// Issues `agent` a JWT-SVID for `audience` and records `svid.jwt.issue` (or its refusal) first.
pub async fn issue_jwt(
    ca: &SpiffeCa,
    agent: &Agent,
    audience: &[String],
    correlation_id: &str,
) -> Result<JwtSvid, SpiffeError> {
    let mut event = agent_event("svid.jwt.issue", agent, correlation_id);
    event.resource = Some(audience.join(" "));
    let minted = ca.authz().keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).map_err(SpiffeError::from).and_then(|key| {
        let now = ca.authz().clock.now_secs();
        mint_jwt(&key, &ca.jwt_issuer(), &agent.spiffe_id, audience, now, ca.config().jwt_svid_ttl_secs)
    });
    match minted {
        Ok(svid) => {
            let mut event = event.with_detail(format!("exp={}", svid.expires_at));
            event.jti = Some(svid.jti.clone());
            record(ca, event).await?;
            Ok(svid)
        }
        Err(e) => {
            let code = match e {
                SpiffeError::AudienceRequired | SpiffeError::InvalidAudience(_) => "invalid_request",
                _ => "server_error",
            };
            record(ca, event.refused(code, &e.to_string())).await?;
            Err(e)
        }
    }
}

fn agent_event(action: &str, agent: &Agent, correlation_id: &str) -> AuditEvent {
    let mut event = AuditEvent::allow(action, correlation_id);
    event.agent = Some(agent.spiffe_id.to_string());
    event.owner = Some(agent.owner.to_string());
    event
}

async fn record(ca: &SpiffeCa, event: AuditEvent) -> Result<(), SpiffeError> {
    ca.authz().log.record(event).await.map(|_| ()).map_err(|e| SpiffeError::Audit(e.to_string()))
}

/// Validates a JWT-SVID of this trust domain for `audience` against the published JWT-SVID
/// keys and the injected clock. Returns the SPIFFE ID and all claims.
pub fn validate_jwt(ca: &SpiffeCa, token: &str, audience: &str) -> Result<(SpiffeId, Value), SpiffeError> {
    let authz = ca.authz();
    let keys = authz.keys.published_for(PURPOSE_JWT_SVID);
    validate_jwt_with(&keys, ca.trust_domain(), token, audience, authz.clock.now_secs(), authz.config.leeway_secs)
}

/// [`validate_jwt`] over explicit keys and time: ES256 only, `kid` required, `typ` absent or
/// `JWT`/`JOSE`, signature, `exp` (with `leeway_secs`), `aud` contains `audience`, and `sub` a
/// SPIFFE ID with a path in `trust_domain`.
pub fn validate_jwt_with(
    keys: &[PublicKey],
    trust_domain: &TrustDomain,
    token: &str,
    audience: &str,
    now_secs: i64,
    leeway_secs: i64,
) -> Result<(SpiffeId, Value), SpiffeError> {
    if audience.is_empty() {
        return Err(SpiffeError::AudienceRequired);
    }
    let header = peek_header(token)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        other => return Err(JwtError::AlgorithmNotAllowed(other.unwrap_or("(none)").to_owned()).into()),
    }
    if header.get("kid").and_then(Value::as_str).is_none() {
        return Err(JwtError::UnknownKey(None).into());
    }
    let opts = VerifyOptions {
        typ: &["JWT", "JOSE"],
        typ_optional: true,
        issuer: None,
        audience: &[audience],
        now: now_secs,
        leeway_secs,
    };
    let claims = verify_jwt(token, keys, &opts)?;
    let sub = claims.get("sub").and_then(Value::as_str).ok_or(JwtError::MissingClaim("sub"))?;
    let spiffe_id = parse_spiffe_id(sub)?;
    if !in_trust_domain(&spiffe_id, trust_domain) || spiffe_path(&spiffe_id).is_empty() {
        return Err(SpiffeError::InvalidSpiffeId(format!("{sub} is not a workload of {trust_domain}")));
    }
    Ok((spiffe_id, claims))
}

fn peek_header(token: &str) -> Result<Value, JwtError> {
    let head = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(head).map_err(|_| JwtError::Malformed("header is not base64url".into()))?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("header is not JSON".into()))?;
    if header.is_object() { Ok(header) } else { Err(JwtError::Malformed("header is not a JSON object".into())) }
}

/// Parses a SPIFFE ID by the rules of SPIFFE-ID §2: lowercase `spiffe://`, a trust domain of
/// `[a-z0-9.-_]`, and a path of non-empty segments of `[a-zA-Z0-9.-_]` other than `.`/`..`,
/// without a trailing slash, query, fragment, port or userinfo.
pub fn parse_spiffe_id(raw: &str) -> Result<SpiffeId, SpiffeError> {
    let bad = |why: &str| SpiffeError::InvalidSpiffeId(format!("{raw:?}: {why}"));
    if raw.len() > MAX_SPIFFE_ID_BYTES {
        return Err(bad("longer than 2048 bytes"));
    }
    let rest = raw.strip_prefix("spiffe://").ok_or_else(|| bad("must start with spiffe://"))?;
    let (domain, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    TrustDomain::parse(domain).map_err(|e| bad(&e.reason))?;
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            let chars_ok = segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if segment.is_empty() || segment == "." || segment == ".." || !chars_ok {
                return Err(bad("path segments must be non-empty [a-zA-Z0-9._-], not '.' or '..'"));
            }
        }
    }
    serde_json::from_value(Value::String(raw.to_owned())).map_err(|e| bad(&e.to_string()))
}

/// The trust domain part of a (valid) SPIFFE ID.
pub fn spiffe_trust_domain(id: &SpiffeId) -> &str {
    let rest = id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str());
    rest.split('/').next().unwrap_or(rest)
}

fn spiffe_path(id: &SpiffeId) -> &str {
    let rest = id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str());
    rest.find('/').map_or("", |i| &rest[i..])
}

fn in_trust_domain(id: &SpiffeId, trust_domain: &TrustDomain) -> bool {
    spiffe_trust_domain(id) == trust_domain.as_str()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
