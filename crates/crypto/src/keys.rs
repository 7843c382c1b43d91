//! Signing keys (Ed25519 and ECDSA P-256) and public keys as JWKs, with RFC 7638 thumbprints
//! as `kid`. Key pairs are parsed once and kept, so signing is one aws-lc call. RSA public keys
//! exist for verification only (federated issuers such as Kubernetes and GitHub sign RS256).

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
    #[error("{0} is accepted for verification only; Mandate never signs with it")]
    VerifyOnly(&'static str),
}

/// The JWS algorithms Mandate accepts. There is deliberately no `none` and no HMAC: a verifier
/// can never be talked into a symmetric or unsigned check. Mandate signs with EdDSA and ES256
/// only; RS256 exists to verify tokens of federated issuers (Kubernetes, GitHub Actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    EdDSA,
    ES256,
    RS256,
}

/// Smallest and largest RSA modulus accepted, in bits (RFC 7518 §3.3 requires at least 2048).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    /// Whether Mandate may sign with this algorithm (RS256 is verification-only).
    pub fn can_sign(self) -> bool {
        matches!(self, Self::EdDSA | Self::ES256)
    }

    /// Parses an algorithm Mandate signs with. RS256 is deliberately not parsed here, so no
    /// configuration or rotation request can select a verification-only algorithm.
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
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
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
            Alg::RS256 => return Err(KeyError::VerifyOnly("RS256")),
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
            Alg::RS256 => return Err(KeyError::VerifyOnly("RS256")),
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
            Alg::ES256 | Alg::RS256 => None,
        }
    }
}

/// A public verification key, usable as a JWK and by `jsonwebtoken`.
#[derive(Clone)]
pub struct PublicKey {
    kid: String,
    alg: Alg,
    /// Ed25519: the 32-byte key; P-256: the uncompressed point; RSA: the big-endian modulus.
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
    /// From raw public bytes: 32-byte Ed25519 key, or 65-byte uncompressed P-256 point (RSA keys
    /// come from [`Self::from_rsa_components`]).
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
            Alg::RS256 => {
                return Err(KeyError::BadJwk("an RSA key is built from its modulus and exponent".into()));
            }
            _ => return Err(KeyError::BadJwk(format!("bad {} public key length", alg.as_str()))),
        };
        let decoding = match alg {
            Alg::EdDSA => DecodingKey::from_ed_der(raw),
            Alg::ES256 | Alg::RS256 => DecodingKey::from_ec_der(raw),
        };
        Ok(Self::with_members(alg, raw.to_vec(), members, decoding))
    }

    /// An RSA public key from its big-endian modulus and exponent; verification only (RS256).
    /// The modulus must be 2048 to 8192 bits.
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = n.first().map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(KeyError::BadJwk(format!(
                "RSA modulus has {bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} are accepted"
            )));
        }
        // Public exponents are small odd numbers (65537 in practice); anything else is not a real key.
        if e.is_empty() || e.len() > 4 || e.last().is_some_and(|low| low & 1 == 0) || e == [1] {
            return Err(KeyError::BadJwk("RSA public exponent is not valid".into()));
        }
        let members = json!({"e": URL_SAFE_NO_PAD.encode(e), "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(n)});
        let decoding = DecodingKey::from_rsa_raw_components(n, e);
        Ok(Self::with_members(Alg::RS256, n.to_vec(), members, decoding))
    }

    fn with_members(alg: Alg, raw: Vec<u8>, members: Value, decoding: DecodingKey) -> Self {
        let kid = thumbprint(&members);
        let mut jwk = members;
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), Value::String(kid.clone()));
            obj.insert("alg".into(), Value::String(alg.as_str().into()));
            obj.insert("use".into(), Value::String("sig".into()));
        }
        Self { kid, alg, raw, jwk, decoding }
    }

    /// From a JWK. Public Ed25519 (`OKP`), P-256 (`EC`) and RSA (`RSA`, verification only, at
    /// least 2048 bits) keys are accepted; a JWK carrying private material (`d`) is refused so a
    /// secret never enters the registry. The `kid` is the JWK's own `kid` when present, else its
    /// RFC 7638 thumbprint.
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
        let mut key = match (field("kty"), field("crv")) {
            (Some("RSA"), _) => {
                if ["p", "q", "dp", "dq", "qi"].iter().any(|member| jwk.get(member).is_some()) {
                    return Err(KeyError::BadJwk("JWK contains RSA private key members".into()));
                }
                Self::from_rsa_components(&decode("n")?, &decode("e")?)?
            }
            (Some("OKP"), Some("Ed25519")) => Self::from_raw(Alg::EdDSA, &decode("x")?)?,
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (decode("x")?, decode("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::BadJwk("P-256 coordinates must be 32 bytes".into()));
                }
                Self::from_raw(Alg::ES256, &[&[4u8][..], &x, &y].concat())?
            }
            (kty, crv) => {
                return Err(KeyError::BadJwk(format!(
                    "unsupported key type {kty:?}/{crv:?}; use OKP/Ed25519, EC/P-256 or RSA"
                )));
            }
        };
        // The key type decides the algorithm; a declared `alg` may only confirm it.
        if let Some(declared) = field("alg")
            && declared != key.alg.as_str()
        {
            return Err(KeyError::BadJwk(format!("\"alg\" {declared} does not fit the key type")));
        }
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

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members, which `members`
/// must hold exactly. The members are sorted here: `serde_json`'s map keeps insertion order
/// whenever any crate in the build enables its `preserve_order` feature (Cedar does).
pub fn thumbprint(members: &Value) -> String {
    let sorted: std::collections::BTreeMap<&String, &Value> =
        members.as_object().map(|object| object.iter().collect()).unwrap_or_default();
    let canonical = serde_json::to_string(&sorted).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_do_not_depend_on_member_order() {
        let mut members = serde_json::Map::new();
        members.insert("x".into(), json!("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"));
        members.insert("kty".into(), json!("OKP"));
        members.insert("crv".into(), json!("Ed25519"));
        assert_eq!(thumbprint(&Value::Object(members)), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

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
        // A 17-bit "modulus" is not an RSA key.
        assert!(PublicKey::from_jwk(&json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})).is_err());
        let mut wrong_alg = key.public().jwk().clone();
        wrong_alg["alg"] = json!("ES256");
        assert!(PublicKey::from_jwk(&wrong_alg).is_err());
        assert!(SigningKey::from_pkcs8(Alg::ES256, key.pkcs8()).is_err());
    }

    #[test]
    fn rsa_keys_are_verification_only_and_at_least_2048_bits() {
        assert!(matches!(SigningKey::generate(Alg::RS256), Err(KeyError::VerifyOnly(_))));
        assert!(Alg::parse("RS256").is_none());
        assert!(!Alg::RS256.can_sign());
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let modulus = |bits: usize| {
            let mut n = vec![0xA5u8; bits / 8];
            n[0] = 0xC5;
            n
        };
        let e = [1u8, 0, 1];
        let ok =
            PublicKey::from_jwk(&json!({"kty": "RSA", "n": b64(&modulus(2048)), "e": b64(&e)})).expect("valid RSA JWK");
        assert_eq!(ok.alg(), Alg::RS256);
        assert_eq!(ok.raw().len(), 256);
        // The kid defaults to the RFC 7638 thumbprint over e, kty, n.
        assert_eq!(ok.kid(), thumbprint(&json!({"e": "AQAB", "kty": "RSA", "n": b64(&modulus(2048))})));
        // A leading zero byte does not count towards the size.
        let padded = [&[0u8][..], &modulus(2048)].concat();
        assert_eq!(
            PublicKey::from_jwk(&json!({"kty": "RSA", "n": b64(&padded), "e": b64(&e)})).expect("valid RSA JWK").kid(),
            ok.kid()
        );
        for bits in [1024, 2040, 8200] {
            let n = b64(&modulus(bits));
            assert!(PublicKey::from_jwk(&json!({"kty": "RSA", "n": n, "e": b64(&e)})).is_err(), "{bits} bits");
        }
        for bad_e in [&[][..], &[1u8][..], &[1, 0, 0][..], &[1, 0, 0, 0, 1][..]] {
            let jwk = json!({"kty": "RSA", "n": b64(&modulus(2048)), "e": b64(bad_e)});
            assert!(PublicKey::from_jwk(&jwk).is_err(), "e = {bad_e:?}");
        }
        let private = json!({"kty": "RSA", "n": b64(&modulus(2048)), "e": b64(&e), "p": "AQAB"});
        assert!(PublicKey::from_jwk(&private).is_err());
        let wrong_alg = json!({"kty": "RSA", "n": b64(&modulus(2048)), "e": b64(&e), "alg": "ES256"});
        assert!(PublicKey::from_jwk(&wrong_alg).is_err());
        let declared = json!({"kty": "RSA", "n": b64(&modulus(2048)), "e": b64(&e), "alg": "RS256", "kid": "k"});
        assert_eq!(PublicKey::from_jwk(&declared).expect("valid RSA JWK").kid(), "k");
        assert!(PublicKey::from_raw(Alg::RS256, &modulus(2048)).is_err());
    }
}
