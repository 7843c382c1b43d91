//! Owner passwords for signing in at the authorization endpoint: Argon2id PHC strings (default
//! parameters m=19456 KiB, t=2, p=1), hashed and verified off the async workers. The hash is
//! never logged or returned; unknown owners cost a verification too, so timing hides who exists.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use mandate_core::{AuditEvent, Name, OAuthError, Owner};
use mandate_store::Mutation;
use zeroize::Zeroizing;

use crate::registry::RegistryError;
use crate::{Authz, audit_failure, store_failure};

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted: Argon2 takes any length, but a megabyte "password" is an attack.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Salt length in bytes (the PHC recommendation is at least 16).
const SALT_BYTES: usize = 16;

/// Sets (or replaces) an owner's sign-in password. Audited as `registry.owner.password`; the
/// event names the owner only.
pub async fn set_owner_password(
    authz: &Authz,
    owner: &str,
    password: Zeroizing<String>,
    correlation_id: &str,
) -> Result<(), RegistryError> {
    let mut event = AuditEvent::allow("registry.owner.password", correlation_id);
    event.owner = Some(owner.to_owned());
    let prepared = match (Name::parse(owner), check_strength(&password)) {
        (Err(e), _) => Err(RegistryError::Invalid(e.to_string())),
        (_, Err(why)) => Err(RegistryError::Invalid(why)),
        (Ok(name), Ok(())) => hash_password(password)
            .await
            .map(|hash| Mutation::SetOwnerPassword { owner: name.to_string(), password_hash: Some(hash.to_string()) }),
    };
    let unavailable = |e| RegistryError::Unavailable(audit_failure(e).description);
    match prepared {
        Err(error) => {
            let reason =
                if matches!(error, RegistryError::Unavailable(_)) { "server_error" } else { "invalid_request" };
            authz.log.record(event.refused(reason, &error.to_string())).await.map_err(unavailable)?;
            Err(error)
        }
        Ok(mutation) => match authz.log.apply(mutation, event).await.map_err(unavailable)? {
            Ok(_) => Ok(()),
            Err(refused) => Err(RegistryError::Refused(refused)),
        },
    }
}

/// The owner named `owner` if `password` is theirs. Unknown owners and owners without a
/// password run a verification against a fixed dummy hash, so both cost the same time.
pub async fn verify_owner_password(
    authz: &Authz,
    owner: &str,
    password: Zeroizing<String>,
) -> Result<Option<Owner>, OAuthError> {
    let found = match Name::parse(owner) {
        Ok(name) => authz.store.owner(name.as_str()).await.map_err(store_failure)?,
        Err(_) => None,
    };
    let stored = found.as_ref().and_then(|o| o.password_hash.clone());
    let matches = tokio::task::spawn_blocking(move || {
        let hash = stored.as_deref().unwrap_or_else(|| dummy_hash());
        // A too-long password never matches, but still costs a verification of a bounded input.
        let candidate = if password.len() > MAX_PASSWORD_BYTES { "" } else { password.as_str() };
        verify(candidate, hash) && stored.is_some() && !candidate.is_empty()
    })
    .await
    .map_err(|e| OAuthError::server_error(format!("password check failed: {e}")))?;
    Ok(found.filter(|_| matches))
}

fn check_strength(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("a password needs at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("a password may have at most {MAX_PASSWORD_BYTES} bytes"));
    }
    if password.chars().any(char::is_control) {
        return Err("a password must not contain control characters (a stray newline?)".into());
    }
    Ok(())
}

/// Argon2id with a fresh random salt, on a blocking thread: one hash takes tens of milliseconds.
async fn hash_password(password: Zeroizing<String>) -> Result<String, RegistryError> {
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| RegistryError::Unavailable(format!("password hashing failed: {e}")))?
}

fn hash_blocking(password: &str) -> Result<String, RegistryError> {
    let mut salt = [0u8; SALT_BYTES];
    mandate_crypto::secret::fill_random(&mut salt);
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| RegistryError::Unavailable(format!("password hashing failed: {e}")))
}

/// Argon2's verification compares the derived output in constant time.
fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a stored password hash is not a valid PHC string");
            false
        }
    }
}

/// A hash of a random password nobody knows, with the same parameters as real ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let unknowable = mandate_crypto::random_token("");
        hash_blocking(&unknowable).unwrap_or_default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_and_verify() {
        let hash = hash_blocking("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify("correct horse battery", &hash));
        assert!(!verify("correct horse batterY", &hash));
        assert_ne!(hash, hash_blocking("correct horse battery").unwrap(), "salts differ");
    }

    #[test]
    fn garbage_hashes_never_verify() {
        assert!(!verify("anything", "not a phc string"));
        assert!(!verify("", ""));
    }

    #[test]
    fn strength_rules() {
        assert!(check_strength("elevenchars").is_err());
        assert!(check_strength("twelve chars").is_ok());
        assert!(check_strength("ünïcödé-pässwörd").is_ok());
        assert!(check_strength("twelve chars\n").is_err());
        assert!(check_strength(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn the_dummy_hash_is_real_work() {
        assert!(dummy_hash().starts_with("$argon2id$"));
        assert!(!verify("", dummy_hash()));
    }
}
