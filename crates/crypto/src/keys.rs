//! Signing keys (Ed25519 and ECDSA P-256) and public keys as JWKs, with RFC 7638 thumbprints
//! as `kid`. Key pairs are parsed once and kept, so signing is one aws-lc call.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::secret::sha256;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("stored private key is not a valid {0} PKCS#8 document")]
    BadPrivateKey(&'static str),
    #[error("unsupported or malformed JWK: {0}")]
    BadJwk(String),
    #[error("signing failed")]
    Sign,
    #[error("crypto self-test failed: {0}")]
    SelfTest(String),
}

/// The JWS algorithms Mandate signs with and accepts. There is deliberately no `none` and no
/// HMAC: a verifier can never be talked into a symmetric or unsigned check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    EdDSA,
    ES256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            _ => None,
        }
    }

    pub fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
}

/// A private signing key with its public half.
pub struct SigningKey {
    signer: Signer,
    pkcs8: Zeroizing<Vec<u8>>,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .field("alg", &self.public.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate(alg: Alg) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let document = match alg {
            Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?,
            Alg::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| KeyError::Generate)?
            }
        };
        Self::from_pkcs8(alg, document.as_ref())
    }

    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Self, KeyError> {
        let (signer, raw_public) = match alg {
            Alg::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| KeyError::BadPrivateKey("Ed25519"))?;
                let public = pair.public_key().as_ref().to_vec();
                (Signer::Ed(pair), public)
            }
            Alg::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| KeyError::BadPrivateKey("P-256"))?;
                let public = pair.public_key().as_ref().to_vec();
                (Signer::Ec(pair), public)
            }
        };
        Ok(Self { signer, pkcs8: Zeroizing::new(der.to_vec()), public: PublicKey::from_raw(alg, &raw_public)? })
    }

    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    pub fn alg(&self) -> Alg {
        self.public.alg
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The PKCS#8 document, to be sealed with the KEK before it is stored.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Signs `message`; ES256 signatures are the fixed `r || s` form JWS uses.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Signer::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Signer::Ec(pair) => {
                pair.sign(&SystemRandom::new(), message).map(|sig| sig.as_ref().to_vec()).map_err(|_| KeyError::Sign)
            }
        }
    }

    /// The raw 32-byte Ed25519 public key (for signed-note key ids); `None` for other algorithms.
    pub fn ed25519_public_bytes(&self) -> Option<&[u8]> {
        match self.public.alg {
            Alg::EdDSA => Some(&self.public.raw),
            Alg::ES256 => None,
        }
    }
}

/// A public verification key, usable as a JWK and by `jsonwebtoken`.
#[derive(Clone)]
pub struct PublicKey {
    kid: String,
    alg: Alg,
    raw: Vec<u8>,
    jwk: Value,
    decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl PublicKey {
    /// From raw public bytes: 32-byte Ed25519 key, or 65-byte uncompressed P-256 point.
    pub fn from_raw(alg: Alg, raw: &[u8]) -> Result<Self, KeyError> {
        let members = match alg {
            Alg::EdDSA if raw.len() == 32 => {
                json!({"crv": "Ed25519", "kty": "OKP", "x": URL_SAFE_NO_PAD.encode(raw)})
            }
            Alg::ES256 if raw.len() == 65 && raw[0] == 4 => json!({
                "crv": "P-256",
                "kty": "EC",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
            }),
            _ => return Err(KeyError::BadJwk(format!("bad {} public key length", alg.as_str()))),
        };
        let kid = thumbprint(&members);
        let mut jwk = members;
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), Value::String(kid.clone()));
            obj.insert("alg".into(), Value::String(alg.as_str().into()));
            obj.insert("use".into(), Value::String("sig".into()));
        }
        let decoding = match alg {
            Alg::EdDSA => DecodingKey::from_ed_der(raw),
            Alg::ES256 => DecodingKey::from_ec_der(raw),
        };
        Ok(Self { kid, alg, raw: raw.to_vec(), jwk, decoding })
    }

    /// From a client's JWK. Only public Ed25519 (`OKP`) and P-256 (`EC`) keys are accepted; a JWK
    /// carrying private material (`d`) is refused so a client's secret never enters the registry.
    /// The `kid` is the JWK's own `kid` when present, else its RFC 7638 thumbprint.
    pub fn from_jwk(jwk: &Value) -> Result<Self, KeyError> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        if jwk.get("d").is_some() {
            return Err(KeyError::BadJwk("JWK contains a private key (\"d\")".into()));
        }
        let decode = |name: &str| {
            field(name)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .ok_or_else(|| KeyError::BadJwk(format!("missing or invalid \"{name}\"")))
        };
        let (alg, raw) = match (field("kty"), field("crv")) {
            (Some("OKP"), Some("Ed25519")) => (Alg::EdDSA, decode("x")?),
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (decode("x")?, decode("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::BadJwk("P-256 coordinates must be 32 bytes".into()));
                }
                (Alg::ES256, [&[4u8][..], &x, &y].concat())
            }
            (kty, crv) => {
                return Err(KeyError::BadJwk(format!(
                    "unsupported key type {kty:?}/{crv:?}; use OKP/Ed25519 or EC/P-256"
                )));
            }
        };
        if let Some(declared) = field("alg")
            && declared != alg.as_str()
        {
            return Err(KeyError::BadJwk(format!("\"alg\" {declared} does not fit the key type")));
        }
        let mut key = Self::from_raw(alg, &raw)?;
        if let Some(kid) = field("kid") {
            key.kid = kid.to_owned();
            if let Some(obj) = key.jwk.as_object_mut() {
                obj.insert("kid".into(), Value::String(kid.to_owned()));
            }
        }
        Ok(key)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members, which `members`
/// must hold exactly; `serde_json`'s map is sorted, giving the lexicographic order RFC 7638 needs.
pub fn thumbprint(members: &Value) -> String {
    let canonical = members.to_string();
    URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn okp_thumbprint_matches_rfc8037_vector() {
        // RFC 8037 appendix A.3.
        let members = json!({"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(thumbprint(&members), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn generated_keys_round_trip_through_pkcs8_and_jwk() {
        for alg in [Alg::EdDSA, Alg::ES256] {
            let key = SigningKey::generate(alg).expect("generate");
            let again = SigningKey::from_pkcs8(alg, key.pkcs8()).expect("reload");
            assert_eq!(key.kid(), again.kid());
            let from_jwk = PublicKey::from_jwk(key.public().jwk()).expect("jwk");
            assert_eq!(from_jwk.kid(), key.kid());
            assert_eq!(from_jwk.raw(), key.public().raw());
        }
    }

    #[test]
    fn refuses_private_and_unsupported_jwks() {
        let key = SigningKey::generate(Alg::EdDSA).expect("generate");
        let mut private = key.public().jwk().clone();
        private["d"] = json!("AAAA");
        assert!(PublicKey::from_jwk(&private).is_err());
        assert!(PublicKey::from_jwk(&json!({"kty": "oct", "k": "c2VjcmV0"})).is_err());
        assert!(PublicKey::from_jwk(&json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})).is_err());
        let mut wrong_alg = key.public().jwk().clone();
        wrong_alg["alg"] = json!("ES256");
        assert!(PublicKey::from_jwk(&wrong_alg).is_err());
        assert!(SigningKey::from_pkcs8(Alg::ES256, key.pkcs8()).is_err());
    }
}
