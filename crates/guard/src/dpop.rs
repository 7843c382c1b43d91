//! DPoP proof verification (RFC 9449 §4.3): checks one `DPoP` proof JWT against the request it
//! came with and returns the proof's key thumbprint (`jkt`) and claims. Replay protection is the
//! caller's job: consume [`replay_key`] once (e.g. `Mutation::ConsumeOnce`) until `iat + max_age`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_crypto::keys::thumbprint;
use mandate_crypto::{Alg, JwtError, PublicKey, sha256, verify_signature_only};
use serde_json::Value;
use url::Url;

/// How old a proof may be, unless the caller says otherwise.
pub const DEFAULT_MAX_AGE_SECS: i64 = 300;
/// Clock skew tolerated on `iat` in both directions, unless the caller says otherwise.
pub const DEFAULT_LEEWAY_SECS: i64 = 5;
/// Longest `jti` accepted; the replay cache stores it, so it must stay small.
pub const MAX_JTI_CHARS: usize = 256;
/// Proof algorithms accepted (`Alg::parse`), as advertised in challenges and metadata.
pub const SUPPORTED_ALGS: [&str; 2] = ["EdDSA", "ES256"];

/// A verified DPoP proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 SHA-256 thumbprint (base64url) of the proof's public key.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub htm: String,
    pub htu: String,
    pub ath: Option<String>,
    pub nonce: Option<String>,
}

/// The request a proof must match, and the verifier's policy.
#[derive(Debug, Clone)]
pub struct DpopCheck<'a> {
    /// HTTP method of the request, compared exactly (`POST`, `GET`).
    pub method: &'a str,
    /// Absolute URL of the request as this server is addressed; query and fragment are ignored.
    pub url: &'a str,
    /// Current time in Unix seconds, from the caller's clock.
    pub now: i64,
    pub max_age_secs: i64,
    pub leeway_secs: i64,
    /// At a resource server: the presented access token, which `ath` must hash to.
    pub access_token: Option<&'a str>,
    /// The nonce this server currently demands, if any.
    pub expected_nonce: Option<&'a str>,
}

impl<'a> DpopCheck<'a> {
    /// A check with the default age and leeway, no access token and no nonce.
    pub fn new(method: &'a str, url: &'a str, now: i64) -> Self {
        Self {
            method,
            url,
            now,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            access_token: None,
            expected_nonce: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("exactly one DPoP header is required, found {0}")]
    HeaderCount(usize),
    #[error("DPoP proof is not a single compact JWT")]
    NotSingleJwt,
    #[error("DPoP proof is malformed: {0}")]
    Malformed(String),
    #[error("DPoP proof typ {0:?} is not dpop+jwt")]
    WrongType(Option<String>),
    #[error("DPoP proof algorithm {0:?} is not accepted; use EdDSA or ES256")]
    AlgorithmNotAllowed(Option<String>),
    #[error("DPoP proof header has no jwk")]
    MissingJwk,
    #[error("DPoP proof jwk contains a private key")]
    PrivateKey,
    #[error("DPoP proof jwk is not usable: {0}")]
    BadJwk(String),
    #[error("DPoP proof jwk does not fit the proof's algorithm")]
    AlgorithmMismatch,
    #[error("DPoP proof signature is invalid")]
    BadSignature,
    #[error("DPoP proof claim {0:?} is missing or has the wrong type")]
    MissingClaim(&'static str),
    #[error("DPoP proof jti is longer than {MAX_JTI_CHARS} characters")]
    JtiTooLong,
    #[error("DPoP proof htm does not match the request method")]
    MethodMismatch,
    #[error("DPoP proof htu does not match the request URL")]
    UrlMismatch,
    #[error("DPoP proof is too old")]
    TooOld,
    #[error("DPoP proof is issued in the future")]
    IssuedInFuture,
    #[error("DPoP proof ath does not match the access token")]
    AthMismatch,
    #[error("{}", if *presented { "DPoP proof nonce is not the current one" } else { "DPoP proof must carry the server's nonce" })]
    UseNonce { presented: bool },
}

impl DpopError {
    /// The OAuth error code to answer with (RFC 9449 §7.1, §8, §12.2).
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::UseNonce { .. } => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// The one `DPoP` header value of a request; none or several are refused (RFC 9449 §4.3 item 1).
pub fn single_proof<'v>(values: impl IntoIterator<Item = &'v str>) -> Result<&'v str, DpopError> {
    let mut values = values.into_iter();
    match (values.next(), values.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(DpopError::HeaderCount(0)),
        (Some(_), Some(_)) => Err(DpopError::HeaderCount(2 + values.count())),
    }
}

/// Verifies `proof` against `check` (RFC 9449 §4.3 items 2–11, plus `ath` for resource servers).
pub fn verify_dpop_proof(proof: &str, check: &DpopCheck<'_>) -> Result<DpopProof, DpopError> {
    let header = proof_header(proof)?;
    let typ = header.get("typ").and_then(Value::as_str);
    if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(DpopError::WrongType(typ.map(str::to_owned)));
    }
    let alg = proof_alg(&header)?;
    let key = proof_key(&header, alg)?;
    let claims = verify_signature_only(proof, &key).map_err(|e| match e {
        JwtError::BadSignature => DpopError::BadSignature,
        JwtError::AlgorithmNotAllowed(alg) => DpopError::AlgorithmNotAllowed(Some(alg)),
        JwtError::AlgorithmMismatch => DpopError::AlgorithmMismatch,
        other => DpopError::Malformed(other.to_string()),
    })?;
    let verified = DpopProof {
        jkt: key_thumbprint(&key),
        jti: string_claim(&claims, "jti")?,
        iat: claims.get("iat").and_then(Value::as_i64).ok_or(DpopError::MissingClaim("iat"))?,
        htm: string_claim(&claims, "htm")?,
        htu: string_claim(&claims, "htu")?,
        ath: optional_string_claim(&claims, "ath")?,
        nonce: optional_string_claim(&claims, "nonce")?,
    };
    check_claims(&verified, check)?;
    Ok(verified)
}

/// The key under which single use of `proof` is recorded in the replay cache.
pub fn replay_key(proof: &DpopProof) -> String {
    format!("dpop:{}:{}", proof.jkt, proof.jti)
}

/// Whether an access token's claims bind it (`cnf.jkt`, RFC 9449 §6.1) to the proof's key.
pub fn bound_token_matches(token_claims: &Value, proof: &DpopProof) -> bool {
    token_claims.pointer("/cnf/jkt").and_then(Value::as_str).is_some_and(|jkt| jkt == proof.jkt)
}

/// `base64url(SHA-256(access_token))`, the `ath` a proof sent with that token must carry.
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(access_token.as_bytes()))
}

/// The decoded JOSE header, once the value is shown to be exactly one compact JWS.
fn proof_header(proof: &str) -> Result<Value, DpopError> {
    let is_b64url = |part: &str| part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let parts: Vec<&str> = proof.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !is_b64url(p)) {
        return Err(DpopError::NotSingleJwt);
    }
    let bytes = URL_SAFE_NO_PAD.decode(parts[0]).map_err(|_| DpopError::Malformed("header is not base64url".into()))?;
    let header: Value =
        serde_json::from_slice(&bytes).map_err(|_| DpopError::Malformed("header is not JSON".into()))?;
    if header.is_object() { Ok(header) } else { Err(DpopError::Malformed("header is not a JSON object".into())) }
}

/// Only the asymmetric algorithms Mandate signs with; `none`, HMAC and RSA are refused.
fn proof_alg(header: &Value) -> Result<Alg, DpopError> {
    let raw = header.get("alg").and_then(Value::as_str);
    raw.and_then(Alg::parse).ok_or_else(|| DpopError::AlgorithmNotAllowed(raw.map(str::to_owned)))
}

/// The header's public key, which must be of the type `alg` needs.
fn proof_key(header: &Value, alg: Alg) -> Result<PublicKey, DpopError> {
    let jwk = header.get("jwk").filter(|j| j.is_object()).ok_or(DpopError::MissingJwk)?;
    if jwk.get("d").is_some() {
        return Err(DpopError::PrivateKey);
    }
    let key = PublicKey::from_jwk(jwk).map_err(|e| DpopError::BadJwk(e.to_string()))?;
    if key.alg() == alg { Ok(key) } else { Err(DpopError::AlgorithmMismatch) }
}

/// RFC 7638 thumbprint over the key's required members only (not `kid`, `alg`, `use`).
fn key_thumbprint(key: &PublicKey) -> String {
    let mut members = key.jwk().clone();
    if let Some(obj) = members.as_object_mut() {
        for extra in ["kid", "alg", "use"] {
            obj.remove(extra);
        }
    }
    thumbprint(&members)
}

fn string_claim(claims: &Value, name: &'static str) -> Result<String, DpopError> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or(DpopError::MissingClaim(name))
}

fn optional_string_claim(claims: &Value, name: &'static str) -> Result<Option<String>, DpopError> {
    match claims.get(name) {
        None => Ok(None),
        Some(_) => string_claim(claims, name).map(Some),
    }
}

/// The request-bound checks, in RFC 9449 §4.3 order: htm, htu, nonce, iat, then ath.
fn check_claims(proof: &DpopProof, check: &DpopCheck<'_>) -> Result<(), DpopError> {
    if proof.jti.chars().count() > MAX_JTI_CHARS {
        return Err(DpopError::JtiTooLong);
    }
    if proof.htm != check.method {
        return Err(DpopError::MethodMismatch);
    }
    match (normalised_url(&proof.htu), normalised_url(check.url)) {
        (Some(presented), Some(expected)) if presented == expected => {}
        _ => return Err(DpopError::UrlMismatch),
    }
    if let Some(expected) = check.expected_nonce
        && proof.nonce.as_deref() != Some(expected)
    {
        return Err(DpopError::UseNonce { presented: proof.nonce.is_some() });
    }
    if proof.iat < check.now - check.max_age_secs - check.leeway_secs {
        return Err(DpopError::TooOld);
    }
    if proof.iat > check.now + check.leeway_secs {
        return Err(DpopError::IssuedInFuture);
    }
    if let Some(token) = check.access_token {
        let ath = proof.ath.as_deref().ok_or(DpopError::MissingClaim("ath"))?;
        if ath != access_token_hash(token) {
            return Err(DpopError::AthMismatch);
        }
    }
    Ok(())
}

/// An http(s) URL without query and fragment, normalised as RFC 3986 §6.2.2–6.2.3 ask (lowercase
/// scheme and host, no default port, empty path as `/`, no dot segments, uppercase
/// percent-encoding, unreserved characters decoded), so equal URLs compare equal as strings.
fn normalised_url(raw: &str) -> Option<String> {
    let mut url = Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    Some(normalise_percent_encoding(url.as_str()))
}

fn normalise_percent_encoding(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match decoded {
            Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => out.push(b),
            Some(b) => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
            None => {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
        }
        i += 3;
    }
    // Only whole characters are copied and only ASCII is decoded, so the bytes stay UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_normalisation() {
        let n = |u: &str| normalised_url(u);
        assert_eq!(n("HTTPS://API.Example.COM:443/a/./b/../c?x=1#f").as_deref(), Some("https://api.example.com/a/c"));
        assert_eq!(n("http://example.com").as_deref(), Some("http://example.com/"));
        assert_eq!(n("http://example.com:80/").as_deref(), Some("http://example.com/"));
        assert_eq!(n("http://example.com:8080/").as_deref(), Some("http://example.com:8080/"));
        assert_eq!(n("https://e.com/%7euser/%2f%41").as_deref(), Some("https://e.com/~user/%2FA"));
        assert_eq!(n("ftp://e.com/"), None);
        assert_eq!(n("/relative"), None);
        assert_eq!(n("mailto:a@b"), None);
    }

    #[test]
    fn advertised_algorithms_are_exactly_the_accepted_ones() {
        for alg in SUPPORTED_ALGS {
            assert_eq!(Alg::parse(alg).map(Alg::as_str), Some(alg));
        }
        assert_eq!(Alg::parse("RS256"), None, "verification-only algorithms are not advertised");
    }

    #[test]
    fn percent_encoding_leaves_stray_percent_signs_alone() {
        assert_eq!(normalise_percent_encoding("a%zz%4"), "a%zz%4");
        assert_eq!(normalise_percent_encoding("%e2%82%ac"), "%E2%82%AC");
    }
}
