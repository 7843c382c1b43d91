//! Compact JWS signing and strict JWT verification. Verification never trusts the header to pick
//! the algorithm: the key decides, the header must agree, and only EdDSA, ES256 and (to verify
//! federated issuers' tokens) RS256 exist here. Time checks use the caller's clock.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::keys::{Alg, KeyError, PublicKey, SigningKey};

/// Larger tokens are refused before any parsing.
pub const MAX_JWT_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token is larger than {MAX_JWT_BYTES} bytes")]
    TooLarge,
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("token type {found:?} is not {expected}")]
    WrongType { found: Option<String>, expected: String },
    #[error("unknown signing key {0:?}")]
    UnknownKey(Option<String>),
    #[error("the key's algorithm does not match the token's")]
    AlgorithmMismatch,
    #[error("signature is invalid")]
    BadSignature,
    #[error("required claim {0:?} is missing or has the wrong type")]
    MissingClaim(&'static str),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("issuer {0:?} is not accepted")]
    WrongIssuer(String),
    #[error("audience does not include {0:?}")]
    WrongAudience(String),
    #[error("critical header parameters are not supported")]
    CriticalHeader,
}

/// What a verifier requires beyond a good signature.
#[derive(Debug, Clone)]
pub struct VerifyOptions<'a> {
    /// Accepted `typ` values (compared case-insensitively, with or without `application/`).
    pub typ: &'a [&'a str],
    /// Whether a token without `typ` is acceptable.
    pub typ_optional: bool,
    pub issuer: Option<&'a str>,
    /// Audience the token must name (any of these).
    pub audience: &'a [&'a str],
    /// Current time in Unix seconds, from the caller's clock.
    pub now: i64,
    pub leeway_secs: i64,
}

/// Signs `claims` as a compact JWS with header `{alg, kid, typ}`.
pub fn sign_jwt<C: Serialize>(key: &SigningKey, typ: &str, claims: &C) -> Result<String, KeyError> {
    let header = json!({"alg": key.alg().as_str(), "kid": key.kid(), "typ": typ});
    let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
    let mut out = String::with_capacity(512);
    out.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = key.sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(out)
}

/// The unverified header and claims, for routing only (finding the client or issuer whose
/// keys must then verify the token). Never make a decision on these alone.
pub fn peek_claims(token: &str) -> Result<Value, JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("expected three dot-separated parts".into()));
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| JwtError::Malformed("payload is not base64url".into()))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("payload is not JSON".into()))?;
    if claims.is_object() { Ok(claims) } else { Err(JwtError::Malformed("payload is not a JSON object".into())) }
}

/// The unverified JOSE header's `typ`, for routing only (which verifier a token goes to); the
/// verifier then checks `typ` again on the signed token.
pub fn peek_typ(token: &str) -> Result<Option<String>, JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLarge);
    }
    let header = decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    Ok(header.typ)
}

/// Verifies a JWT against `keys` and `opts`; returns its claims.
pub fn verify_jwt(token: &str, keys: &[PublicKey], opts: &VerifyOptions<'_>) -> Result<Value, JwtError> {
    let claims = typed_signed_claims(token, keys, opts)?;
    check_claims(&claims, opts)?;
    Ok(claims)
}

/// Size, header (`crit`, `alg` allow-list, `typ`), key choice and signature: what every JWT of a
/// known signer must pass before its claims are judged.
fn typed_signed_claims(token: &str, keys: &[PublicKey], opts: &VerifyOptions<'_>) -> Result<Value, JwtError> {
    let (header, alg) = accepted_header(token)?;
    check_typ(header.typ.as_deref(), opts)?;
    let key = select_key(keys, header.kid.as_deref(), alg)?;
    signed_claims(token, key, alg)
}

/// Verifies a Security Event Token (RFC 8417): like [`verify_jwt`], but the token must NOT carry
/// `exp` (§2.2: a SET records that something happened; it grants nothing and does not expire).
pub fn verify_set(token: &str, keys: &[PublicKey], opts: &VerifyOptions<'_>) -> Result<Value, JwtError> {
    let claims = typed_signed_claims(token, keys, opts)?;
    if !claims.is_object() || claims.get("exp").is_some() || claims.get("sub").is_some() {
        return Err(JwtError::Malformed("a security event token is an object without exp and sub".into()));
    }
    check_claims_but_exp(&claims, opts)?;
    Ok(claims)
}

/// Verifies only the signature of a JWS whose signer is already known (such as a DPoP proof,
/// signed by the key in its own header) and returns its claims. The key decides the algorithm:
/// the header's `alg` must be one Mandate accepts and equal the key's. `typ`, time and all other
/// claims are the caller's to check, so never use this where [`verify_jwt`] fits.
pub fn verify_signature_only(token: &str, key: &PublicKey) -> Result<Value, JwtError> {
    let (_, alg) = accepted_header(token)?;
    if key.alg() != alg {
        return Err(JwtError::AlgorithmMismatch);
    }
    let claims = signed_claims(token, key, alg)?;
    if claims.is_object() { Ok(claims) } else { Err(JwtError::Malformed("payload is not a JSON object".into())) }
}

/// A token of acceptable size whose header has no `crit` and an allowed `alg`.
fn accepted_header(token: &str) -> Result<(jsonwebtoken::Header, Alg), JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLarge);
    }
    let header = decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    if header.crit.is_some() {
        return Err(JwtError::CriticalHeader);
    }
    let alg = allowed_alg(header.alg)?;
    Ok((header, alg))
}

/// The claims of `token` once its signature by `key` under `alg` checks out; no claim is judged.
fn signed_claims(token: &str, key: &PublicKey, alg: Alg) -> Result<Value, JwtError> {
    let mut validation = Validation::new(alg.jsonwebtoken());
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    decode::<Value>(token, key.decoding_key(), &validation).map(|data| data.claims).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::BadSignature,
        _ => JwtError::Malformed(e.to_string()),
    })
}

fn allowed_alg(alg: jsonwebtoken::Algorithm) -> Result<Alg, JwtError> {
    match alg {
        jsonwebtoken::Algorithm::EdDSA => Ok(Alg::EdDSA),
        jsonwebtoken::Algorithm::ES256 => Ok(Alg::ES256),
        jsonwebtoken::Algorithm::RS256 => Ok(Alg::RS256),
        other => Err(JwtError::AlgorithmNotAllowed(format!("{other:?}"))),
    }
}

fn check_typ(found: Option<&str>, opts: &VerifyOptions<'_>) -> Result<(), JwtError> {
    let wrong = || JwtError::WrongType { found: found.map(str::to_owned), expected: opts.typ.join(" or ") };
    let Some(found) = found else {
        return if opts.typ_optional { Ok(()) } else { Err(wrong()) };
    };
    let lower = found.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    if opts.typ.iter().any(|t| t.eq_ignore_ascii_case(bare)) { Ok(()) } else { Err(wrong()) }
}

fn select_key<'k>(keys: &'k [PublicKey], kid: Option<&str>, alg: Alg) -> Result<&'k PublicKey, JwtError> {
    let key = match kid {
        Some(kid) => keys.iter().find(|k| k.kid() == kid),
        None => {
            let mut same_alg = keys.iter().filter(|k| k.alg() == alg);
            match (same_alg.next(), same_alg.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }
    .ok_or_else(|| JwtError::UnknownKey(kid.map(str::to_owned)))?;
    if key.alg() == alg { Ok(key) } else { Err(JwtError::AlgorithmMismatch) }
}

fn check_claims(claims: &Value, opts: &VerifyOptions<'_>) -> Result<(), JwtError> {
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or(JwtError::MissingClaim("exp"))?;
    if opts.now > exp + opts.leeway_secs {
        return Err(JwtError::Expired);
    }
    check_claims_but_exp(claims, opts)
}

fn check_claims_but_exp(claims: &Value, opts: &VerifyOptions<'_>) -> Result<(), JwtError> {
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(JwtError::MissingClaim("nbf"))?;
        if opts.now + opts.leeway_secs < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_i64().ok_or(JwtError::MissingClaim("iat"))?;
        if opts.now + opts.leeway_secs < iat {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(expected) = opts.issuer {
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(JwtError::MissingClaim("iss"))?;
        if iss != expected {
            return Err(JwtError::WrongIssuer(iss.to_owned()));
        }
    }
    if !opts.audience.is_empty() && !audience_matches(claims.get("aud"), opts.audience) {
        return Err(JwtError::WrongAudience(opts.audience.join(" or ")));
    }
    Ok(())
}

fn audience_matches(aud: Option<&Value>, accepted: &[&str]) -> bool {
    match aud {
        Some(Value::String(one)) => accepted.contains(&one.as_str()),
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).any(|a| accepted.contains(&a)),
        _ => false,
    }
}

/// Signs and verifies once with a throwaway key.
pub(crate) fn self_test() -> Result<(), KeyError> {
    let key = SigningKey::generate(Alg::EdDSA)?;
    let token = sign_jwt(&key, "at+jwt", &json!({"exp": 2, "iss": "self-test"}))?;
    let opts = VerifyOptions {
        typ: &["at+jwt"],
        typ_optional: false,
        issuer: Some("self-test"),
        audience: &[],
        now: 1,
        leeway_secs: 0,
    };
    verify_jwt(&token, &[key.public().clone()], &opts).map(|_| ()).map_err(|e| KeyError::SelfTest(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opts(now: i64) -> VerifyOptions<'static> {
        VerifyOptions {
            typ: &["at+jwt"],
            typ_optional: false,
            issuer: Some("https://as.example"),
            audience: &["https://api.example"],
            now,
            leeway_secs: 0,
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://as.example", "aud": "https://api.example", "exp": 200, "iat": 100, "sub": "s"})
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn round_trip_for_both_algorithms() {
        crate::init().unwrap();
        for alg in [Alg::EdDSA, Alg::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let token = sign_jwt(&key, "at+jwt", &claims()).unwrap();
            let got = verify_jwt(&token, &[key.public().clone()], &opts(150)).unwrap();
            assert_eq!(got["sub"], "s");
        }
    }

    #[test]
    fn rejects_time_issuer_audience_and_type_violations() {
        crate::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let keys = [key.public().clone()];
        let token = sign_jwt(&key, "at+jwt", &claims()).unwrap();
        assert_eq!(verify_jwt(&token, &keys, &opts(201)), Err(JwtError::Expired));
        assert_eq!(verify_jwt(&token, &keys, &opts(99)), Err(JwtError::NotYetValid));
        let mut o = opts(150);
        o.issuer = Some("https://other");
        assert!(matches!(verify_jwt(&token, &keys, &o), Err(JwtError::WrongIssuer(_))));
        let mut o = opts(150);
        o.audience = &["https://elsewhere"];
        assert!(matches!(verify_jwt(&token, &keys, &o), Err(JwtError::WrongAudience(_))));
        let wrong_typ = sign_jwt(&key, "JWT", &claims()).unwrap();
        assert!(matches!(verify_jwt(&wrong_typ, &keys, &opts(150)), Err(JwtError::WrongType { .. })));
        let app_typ = sign_jwt(&key, "application/at+jwt", &claims()).unwrap();
        assert!(verify_jwt(&app_typ, &keys, &opts(150)).is_ok());
        let no_exp =
            sign_jwt(&key, "at+jwt", &json!({"iss": "https://as.example", "aud": "https://api.example"})).unwrap();
        assert_eq!(verify_jwt(&no_exp, &keys, &opts(150)), Err(JwtError::MissingClaim("exp")));
    }

    #[test]
    fn rejects_none_hmac_and_algorithm_confusion() {
        crate::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let keys = [key.public().clone()];
        let body = b64(&claims());
        let none = format!("{}.{body}.", b64(&json!({"alg": "none", "typ": "at+jwt"})));
        assert!(verify_jwt(&none, &keys, &opts(150)).is_err());
        let hs = format!("{}.{body}.c2ln", b64(&json!({"alg": "HS256", "typ": "at+jwt", "kid": key.kid()})));
        assert!(matches!(verify_jwt(&hs, &keys, &opts(150)), Err(JwtError::AlgorithmNotAllowed(_))));
        // An EdDSA key named by kid, but the header claims ES256: the key decides, so refuse.
        let es = SigningKey::generate(Alg::ES256).unwrap();
        let header = b64(&json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid()}));
        let signing_input = format!("{header}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(es.sign(signing_input.as_bytes()).unwrap());
        let confused = format!("{signing_input}.{sig}");
        assert_eq!(verify_jwt(&confused, &keys, &opts(150)), Err(JwtError::AlgorithmMismatch));
        let crit = format!("{}.{body}.AA", b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "crit": ["x"], "x": 1})));
        assert_eq!(verify_jwt(&crit, &keys, &opts(150)), Err(JwtError::CriticalHeader));
    }

    #[test]
    fn rejects_forged_signatures_unknown_keys_and_oversize() {
        crate::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let other = SigningKey::generate(Alg::EdDSA).unwrap();
        let token = sign_jwt(&key, "at+jwt", &claims()).unwrap();
        assert!(matches!(verify_jwt(&token, &[other.public().clone()], &opts(150)), Err(JwtError::UnknownKey(_))));
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(other.sign(head.as_bytes()).unwrap()));
        assert_eq!(verify_jwt(&forged, &[key.public().clone()], &opts(150)), Err(JwtError::BadSignature));
        let huge = "a".repeat(MAX_JWT_BYTES + 1);
        assert_eq!(verify_jwt(&huge, &[key.public().clone()], &opts(150)), Err(JwtError::TooLarge));
        assert!(peek_claims("a.b").is_err());
    }

    #[test]
    fn signature_only_checks_signature_and_algorithm_but_no_claims() {
        crate::init().unwrap();
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let other = SigningKey::generate(Alg::ES256).unwrap();
        // No exp, no iss: fine here, since only the signature is judged.
        let token = sign_jwt(&key, "dpop+jwt", &json!({"jti": "j"})).unwrap();
        assert_eq!(verify_signature_only(&token, key.public()).unwrap()["jti"], "j");
        assert_eq!(verify_signature_only(&token, other.public()), Err(JwtError::BadSignature));
        let ed = SigningKey::generate(Alg::EdDSA).unwrap();
        assert_eq!(verify_signature_only(&token, ed.public()), Err(JwtError::AlgorithmMismatch));
        let body = b64(&json!({"jti": "j"}));
        let none = format!("{}.{body}.", b64(&json!({"alg": "none"})));
        assert!(verify_signature_only(&none, key.public()).is_err());
        let hs = format!("{}.{body}.c2ln", b64(&json!({"alg": "HS256"})));
        assert!(matches!(verify_signature_only(&hs, key.public()), Err(JwtError::AlgorithmNotAllowed(_))));
        let crit = format!("{}.{body}.AA", b64(&json!({"alg": "ES256", "crit": ["x"], "x": 1})));
        assert_eq!(verify_signature_only(&crit, key.public()), Err(JwtError::CriticalHeader));
        let array = sign_jwt(&key, "dpop+jwt", &json!([1])).unwrap();
        assert!(matches!(verify_signature_only(&array, key.public()), Err(JwtError::Malformed(_))));
    }

    /// Signs `header.claims` with a fresh RSA-2048 key, as a federated issuer would.
    fn rsa_signed(pair: &aws_lc_rs::rsa::KeyPair, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let mut sig = vec![0u8; pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn rsa_public(pair: &aws_lc_rs::rsa::KeyPair) -> PublicKey {
        use aws_lc_rs::signature::KeyPair as _;
        let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let jwk = json!({"kty": "RSA", "kid": "rsa-1", "n": URL_SAFE_NO_PAD.encode(&parts.n), "e": URL_SAFE_NO_PAD.encode(&parts.e)});
        PublicKey::from_jwk(&jwk).unwrap()
    }

    #[test]
    fn rs256_verifies_and_the_rsa_key_decides_the_algorithm() {
        crate::init().unwrap();
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa = rsa_public(&pair);
        assert_eq!(rsa.alg(), Alg::RS256);
        let keys = [rsa.clone()];
        let good = rsa_signed(&pair, &json!({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}), &claims());
        assert_eq!(verify_jwt(&good, &keys, &opts(150)).unwrap()["sub"], "s");
        // Without a kid, the only RS256 key is chosen.
        let no_kid = rsa_signed(&pair, &json!({"alg": "RS256", "typ": "at+jwt"}), &claims());
        assert!(verify_jwt(&no_kid, &keys, &opts(150)).is_ok());
        // Forged: signed by another RSA key under the same kid.
        let other = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let forged = rsa_signed(&other, &json!({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}), &claims());
        assert_eq!(verify_jwt(&forged, &keys, &opts(150)), Err(JwtError::BadSignature));
        // The RSA key named by kid, but the header claims ES256 (signed by an EC key) or HS256
        // (keyed with the public modulus): both refused before any signature check.
        let es = SigningKey::generate(Alg::ES256).unwrap();
        let header = b64(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"}));
        let input = format!("{header}.{}", b64(&claims()));
        let confused = format!("{input}.{}", URL_SAFE_NO_PAD.encode(es.sign(input.as_bytes()).unwrap()));
        assert_eq!(verify_jwt(&confused, &keys, &opts(150)), Err(JwtError::AlgorithmMismatch));
        let hs = format!("{}.{}.c2ln", b64(&json!({"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"})), b64(&claims()));
        assert!(matches!(verify_jwt(&hs, &keys, &opts(150)), Err(JwtError::AlgorithmNotAllowed(_))));
        for unsupported in ["RS384", "RS512", "PS256"] {
            let t = rsa_signed(&pair, &json!({"alg": unsupported, "kid": "rsa-1", "typ": "at+jwt"}), &claims());
            assert!(
                matches!(verify_jwt(&t, &keys, &opts(150)), Err(JwtError::AlgorithmNotAllowed(_))),
                "{unsupported}"
            );
        }
        // An EC key named by kid cannot verify an RS256 header either.
        let ec_keys = [es.public().clone()];
        let rs_header = rsa_signed(&pair, &json!({"alg": "RS256", "kid": es.kid(), "typ": "at+jwt"}), &claims());
        assert_eq!(verify_jwt(&rs_header, &ec_keys, &opts(150)), Err(JwtError::AlgorithmMismatch));
    }

    #[test]
    fn security_event_tokens_carry_no_exp_or_sub_and_are_otherwise_checked_like_jwts() {
        crate::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let keys = [key.public().clone()];
        let mut o = opts(150);
        o.typ = &["secevent+jwt"];
        let set = json!({"iss": "https://as.example", "aud": "https://api.example", "iat": 100, "jti": "j",
            "sub_id": {"format": "opaque", "id": "x"}, "events": {}});
        let token = sign_jwt(&key, "secevent+jwt", &set).unwrap();
        assert_eq!(verify_set(&token, &keys, &o).unwrap()["jti"], "j");
        for (member, value) in [("exp", json!(200)), ("sub", json!("s"))] {
            let mut bad = set.clone();
            bad[member] = value;
            let token = sign_jwt(&key, "secevent+jwt", &bad).unwrap();
            assert!(matches!(verify_set(&token, &keys, &o), Err(JwtError::Malformed(_))), "{member}");
        }
        let typed_jwt = sign_jwt(&key, "JWT", &set).unwrap();
        assert!(matches!(verify_set(&typed_jwt, &keys, &o), Err(JwtError::WrongType { .. })));
        let mut o2 = o.clone();
        o2.audience = &["https://elsewhere"];
        assert!(matches!(verify_set(&token, &keys, &o2), Err(JwtError::WrongAudience(_))));
    }
}
