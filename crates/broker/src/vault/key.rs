//! Where the vault's key-encryption key (KEK) comes from — Argon2id over a passphrase, or a
//! 32-byte key file — and the subkeys derived from it with HKDF (DEK wrapping, document MAC,
//! key check), so one KEK never serves two purposes.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::{hkdf, hmac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::VaultError;
use super::secret::SecretString;

/// Shortest passphrase accepted when creating or rekeying a vault.
pub const MIN_PASSPHRASE_LEN: usize = 8;
/// Longest passphrase accepted (Argon2 takes any length; a megabyte is an attack).
pub const MAX_PASSPHRASE_LEN: usize = 4096;
const KEY_FILE_LEN: usize = 32;

/// Argon2id cost bounds accepted when opening a vault: a tampered header must neither make us
/// allocate gigabytes nor weaken the derivation to nothing.
pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_ITERATIONS: u32 = 16;
pub const MAX_PARALLELISM: u32 = 8;
const SALT_LEN: usize = 16;

/// The secret that unlocks a vault.
pub enum VaultKey {
    /// Stretched with Argon2id (parameters and salt in the vault header).
    Passphrase(SecretString),
    /// 32 random bytes from a key file (`mandate broker vault init --key-file`).
    KeyFile(Zeroizing<[u8; KEY_FILE_LEN]>),
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passphrase(_) => f.write_str("VaultKey::Passphrase(..)"),
            Self::KeyFile(_) => f.write_str("VaultKey::KeyFile(..)"),
        }
    }
}

impl VaultKey {
    /// A passphrase; one trailing newline (from a file or a pipe) is not part of it.
    pub fn passphrase(text: Zeroizing<String>) -> Result<Self, VaultError> {
        let trimmed = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if trimmed.is_empty() || trimmed.len() > MAX_PASSPHRASE_LEN {
            return Err(VaultError::InvalidKey(format!("a passphrase has 1 to {MAX_PASSPHRASE_LEN} bytes")));
        }
        Ok(Self::Passphrase(SecretString::new(trimmed)))
    }

    /// Reads a key file: exactly 32 bytes.
    pub fn read_key_file(path: &Path) -> Result<Self, VaultError> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| VaultError::InvalidKey(format!("cannot read key file {}: {e}", path.display())))?,
        );
        let raw: [u8; KEY_FILE_LEN] = bytes.as_slice().try_into().map_err(|_| {
            VaultError::InvalidKey(format!("key file {} must hold exactly {KEY_FILE_LEN} bytes", path.display()))
        })?;
        Ok(Self::KeyFile(Zeroizing::new(raw)))
    }

    /// Creates a new key file (mode 0600, refusing to overwrite one) with 32 random bytes.
    pub fn create_key_file(path: &Path) -> Result<Self, VaultError> {
        let mut raw = Zeroizing::new([0u8; KEY_FILE_LEN]);
        fill_random(raw.as_mut());
        super::file::write_new(path, raw.as_ref())?;
        Ok(Self::KeyFile(raw))
    }

    /// Creation and rekeying demand a passphrase of at least [`MIN_PASSPHRASE_LEN`] bytes.
    pub(crate) fn check_strength(&self) -> Result<(), VaultError> {
        match self {
            Self::Passphrase(p) if p.expose().len() < MIN_PASSPHRASE_LEN => Err(VaultError::InvalidKey(format!(
                "a new vault passphrase needs at least {MIN_PASSPHRASE_LEN} characters"
            ))),
            _ => Ok(()),
        }
    }
}

/// How the KEK is derived; stored in the vault header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alg", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kdf {
    Argon2id {
        /// Memory in KiB.
        m_kib: u32,
        /// Iterations.
        t: u32,
        /// Lanes.
        p: u32,
        /// Standard base64.
        salt: String,
    },
    Keyfile,
}

/// Argon2id costs for a new vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    /// m = 64 MiB, t = 3, p = 1.
    fn default() -> Self {
        Self { m_kib: 64 * 1024, t: 3, p: 1 }
    }
}

impl KdfParams {
    fn check(&self) -> Result<(), &'static str> {
        if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&self.m_kib) {
            return Err("argon2id memory outside 8 MiB to 1 GiB");
        }
        if !(1..=MAX_ITERATIONS).contains(&self.t) {
            return Err("argon2id iterations outside 1 to 16");
        }
        if !(1..=MAX_PARALLELISM).contains(&self.p) {
            return Err("argon2id parallelism outside 1 to 8");
        }
        Ok(())
    }
}

impl Kdf {
    /// The header for a new vault (or a rekey): fresh salt for a passphrase.
    pub(crate) fn new_for(key: &VaultKey, params: KdfParams) -> Result<Self, VaultError> {
        params.check().map_err(|why| VaultError::InvalidParams(why.to_owned()))?;
        Ok(match key {
            VaultKey::Passphrase(_) => {
                let mut salt = [0u8; SALT_LEN];
                fill_random(&mut salt);
                Self::Argon2id { m_kib: params.m_kib, t: params.t, p: params.p, salt: b64(&salt) }
            }
            VaultKey::KeyFile(_) => Self::Keyfile,
        })
    }

    /// Costs of the stored header, refused outside sane bounds before any work is done.
    pub(crate) fn check_bounds(&self) -> Result<(), VaultError> {
        if let Self::Argon2id { m_kib, t, p, salt } = self {
            KdfParams { m_kib: *m_kib, t: *t, p: *p }.check().map_err(VaultError::Tampered)?;
            let salt = unb64(salt).map_err(|_| VaultError::Tampered("salt is not base64"))?;
            if !(SALT_LEN..=64).contains(&salt.len()) {
                return Err(VaultError::Tampered("salt length out of bounds"));
            }
        }
        Ok(())
    }

    /// Derives the KEK (CPU- and memory-heavy for a passphrase: run it off async threads).
    pub(crate) fn derive(&self, key: &VaultKey) -> Result<Keys, VaultError> {
        let mut kek = Zeroizing::new([0u8; 32]);
        match (self, key) {
            (Self::Argon2id { m_kib, t, p, salt }, VaultKey::Passphrase(passphrase)) => {
                let salt = unb64(salt).map_err(|_| VaultError::Tampered("salt is not base64"))?;
                let params = argon2::Params::new(*m_kib, *t, *p, Some(32))
                    .map_err(|_| VaultError::Tampered("argon2id parameters rejected"))?;
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password_into(passphrase.expose().as_bytes(), &salt, kek.as_mut())
                    .map_err(|_| VaultError::Crypto)?;
            }
            (Self::Keyfile, VaultKey::KeyFile(raw)) => kek.copy_from_slice(raw.as_ref()),
            (Self::Argon2id { .. }, VaultKey::KeyFile(_)) => {
                return Err(VaultError::KeyMismatch("this vault is locked with a passphrase, not a key file"));
            }
            (Self::Keyfile, VaultKey::Passphrase(_)) => {
                return Err(VaultError::KeyMismatch("this vault is locked with a key file, not a passphrase"));
            }
        }
        Keys::from_kek(&kek)
    }
}

/// The subkeys of one KEK.
pub(crate) struct Keys {
    wrap: RandomizedNonceKey,
    mac: hmac::Key,
    check: hmac::Key,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

const KEY_CHECK_MESSAGE: &[u8] = b"mandate-vault/v1 key check";

impl Keys {
    fn from_kek(kek: &[u8; 32]) -> Result<Self, VaultError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mandate-vault/v1").extract(kek);
        let sub = |info: &'static [u8]| -> Result<Zeroizing<[u8; 32]>, VaultError> {
            let mut out = Zeroizing::new([0u8; 32]);
            let infos = [info];
            prk.expand(&infos, Len(32)).and_then(|okm| okm.fill(out.as_mut())).map_err(|_| VaultError::Crypto)?;
            Ok(out)
        };
        let wrap = RandomizedNonceKey::new(&AES_256_GCM, sub(b"dek-wrap")?.as_ref()).map_err(|_| VaultError::Crypto)?;
        let mac = hmac::Key::new(hmac::HMAC_SHA256, sub(b"document-mac")?.as_ref());
        let check = hmac::Key::new(hmac::HMAC_SHA256, sub(b"key-check")?.as_ref());
        Ok(Self { wrap, mac, check })
    }

    /// The value stored in the header that tells a wrong key from a tampered document.
    pub(crate) fn key_check(&self) -> String {
        b64(hmac::sign(&self.check, KEY_CHECK_MESSAGE).as_ref())
    }

    pub(crate) fn verify_key_check(&self, stored: &str) -> bool {
        unb64(stored).is_ok_and(|tag| hmac::verify(&self.check, KEY_CHECK_MESSAGE, &tag).is_ok())
    }

    pub(crate) fn mac(&self, document: &[u8]) -> String {
        b64(hmac::sign(&self.mac, document).as_ref())
    }

    pub(crate) fn verify_mac(&self, document: &[u8], stored: &str) -> bool {
        unb64(stored).is_ok_and(|tag| hmac::verify(&self.mac, document, &tag).is_ok())
    }

    pub(crate) fn wrap_dek(&self, entry_id: &str, dek: &[u8; 32]) -> Result<String, VaultError> {
        seal(&self.wrap, &dek_aad(entry_id), dek)
    }

    pub(crate) fn unwrap_dek(&self, entry_id: &str, wrapped: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let plain = open(&self.wrap, &dek_aad(entry_id), wrapped)?;
        let mut dek = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(VaultError::Tampered("a wrapped data key has the wrong length"));
        }
        dek.copy_from_slice(&plain);
        Ok(dek)
    }
}

fn dek_aad(entry_id: &str) -> Vec<u8> {
    format!("mandate-vault/v1 dek {entry_id}").into_bytes()
}

/// A fresh random data-encryption key.
pub(crate) fn new_dek() -> Zeroizing<[u8; 32]> {
    let mut dek = Zeroizing::new([0u8; 32]);
    fill_random(dek.as_mut());
    dek
}

pub(crate) fn dek_key(dek: &[u8; 32]) -> Result<RandomizedNonceKey, VaultError> {
    RandomizedNonceKey::new(&AES_256_GCM, dek).map_err(|_| VaultError::Crypto)
}

/// AES-256-GCM with a random 96-bit nonce: base64 of `nonce || ciphertext || tag`.
pub(crate) fn seal(key: &RandomizedNonceKey, aad: &[u8], plaintext: &[u8]) -> Result<String, VaultError> {
    let mut buf = Zeroizing::new(plaintext.to_vec());
    let nonce = key.seal_in_place_append_tag(Aad::from(aad), &mut *buf).map_err(|_| VaultError::Crypto)?;
    let mut out = nonce.as_ref().to_vec();
    out.extend_from_slice(&buf);
    Ok(b64(&out))
}

/// Opens what [`seal`] made; any failure is tampering (the key was already checked).
pub(crate) fn open(key: &RandomizedNonceKey, aad: &[u8], sealed: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let tampered = VaultError::Tampered("an entry does not decrypt");
    let sealed = unb64(sealed).map_err(|_| VaultError::Tampered("an entry is not base64"))?;
    if sealed.len() < 12 + 16 {
        return Err(tampered);
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Tampered("bad nonce"))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| tampered)?.len();
    buf.truncate(len);
    Ok(buf)
}

fn fill_random(buf: &mut [u8]) {
    use aws_lc_rs::rand::SecureRandom;
    // SystemRandom only fails without an OS entropy source; no key can be made safely then.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::SystemRandom::new().fill(buf).expect("the operating system's random number generator failed");
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text)
}
