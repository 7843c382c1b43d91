//! Reading a JWK Set published by an issuer (RFC 7517 §5) into the keys this crate can verify
//! with. Shared by the authorization server (federated issuers) and the resource-server guard.

use serde_json::Value;

use crate::keys::PublicKey;

/// Keys beyond this many in one set are ignored.
pub const MAX_KEYS: usize = 100;

/// A JWK Set from a federated issuer or an operator. Keys this verifier cannot use are skipped
/// rather than failing the set, as JWKS consumers must: unsupported types or curves, RSA below
/// 2048 bits, keys for another `use` (SPIFFE bundles also list `x509-svid` CA keys), and any
/// key published with private members. At least one usable key must remain.
pub fn parse_jwk_set(text: &str) -> Result<Vec<PublicKey>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
    let usable: Vec<PublicKey> = entries
        .iter()
        .take(MAX_KEYS)
        .filter(|jwk| matches!(jwk.get("use").and_then(Value::as_str), None | Some("sig" | "jwt-svid")))
        .filter_map(|jwk| PublicKey::from_jwk(jwk).ok())
        .collect();
    if usable.is_empty() {
        return Err("no usable signature key (RSA of 2048 bits or more, EC P-256 or Ed25519)".into());
    }
    Ok(usable)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::keys::{Alg, SigningKey};

    #[test]
    fn unusable_keys_are_skipped_but_one_must_remain() {
        let ec = SigningKey::generate(Alg::ES256).unwrap();
        let jwk = ec.public().jwk().clone();
        let mut x509 = jwk.clone();
        x509["use"] = json!("x509-svid");
        let mut enc = jwk.clone();
        enc["use"] = json!("enc");
        let p384 = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"});
        let doc = json!({"keys": [p384, x509, enc, jwk]}).to_string();
        assert_eq!(parse_jwk_set(&doc).unwrap().len(), 1);
        let none = json!({"keys": [p384]}).to_string();
        assert!(parse_jwk_set(&none).is_err());
        assert!(parse_jwk_set("[]").is_err());
        assert!(parse_jwk_set("{\"keys\": []}").is_err());
    }
}
