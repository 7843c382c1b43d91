//! Keys and JOSE for Mandate: signing keys (Ed25519, ES256) with RFC 7638 `kid`s, JWKS,
//! compact JWS signing and strict JWT verification, secrets and key encryption at rest.
//! One crypto backend (aws-lc-rs) serves all of it; this crate is the only place that touches it.

pub mod jose;
pub mod jwk_set;
pub mod kek;
pub mod keys;
pub mod secret;

pub use jose::{JwtError, VerifyOptions, verify_jwt, verify_signature_only};
pub use kek::{Kek, KekError};
pub use keys::{Alg, KeyError, PublicKey, SigningKey};
pub use secret::{constant_time_eq, hash_secret, random_token, sha256};

/// Installs the aws-lc-rs provider for `jsonwebtoken` and checks it with a sign/verify round
/// trip, so a feature-unification mistake fails at start-up instead of at the first request.
pub fn init() -> Result<(), KeyError> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err only means another part of the process installed it first; either way a provider is set.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
    jose::self_test()
}
