//! DPoP proof signing shared by the guard's test binaries.
#![allow(dead_code, clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_crypto::SigningKey;
use serde_json::{Value, json};

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The public JWK of `key` as a DPoP header carries it: required members only.
pub fn bare_jwk(key: &SigningKey) -> Value {
    let mut jwk = key.public().jwk().clone();
    for extra in ["kid", "alg", "use"] {
        jwk.as_object_mut().unwrap().remove(extra);
    }
    jwk
}

pub fn header(key: &SigningKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": bare_jwk(key)})
}

/// A compact JWS of `claims` under `header`, signed by `key` (whatever the header says).
pub fn sign_with(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// A DPoP proof by `key` with these claims.
pub fn proof(key: &SigningKey, claims: &Value) -> String {
    sign_with(key, &header(key), claims)
}
