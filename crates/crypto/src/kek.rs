//! The key-encryption key (KEK) that keeps private keys encrypted at rest: AES-256-GCM with a
//! random 96-bit nonce per record and the record's identity as associated data, so a sealed
//! blob cannot be moved to another record.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("key-encryption key must be 32 bytes of standard base64")]
    BadEncoding,
    #[error("cannot decrypt a stored key: wrong key-encryption key, or the record was altered")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

pub struct Kek {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// A fresh random KEK and its base64 form (to write to the KEK file).
    pub fn generate() -> Result<(Self, Zeroizing<String>), KekError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        crate::secret::fill_random(raw.as_mut());
        let encoded = Zeroizing::new(STANDARD.encode(raw.as_ref()));
        Ok((Self::from_bytes(raw.as_ref())?, encoded))
    }

    pub fn from_base64(encoded: &str) -> Result<Self, KekError> {
        let raw = Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| KekError::BadEncoding)?);
        Self::from_bytes(&raw)
    }

    fn from_bytes(raw: &[u8]) -> Result<Self, KekError> {
        if raw.len() != 32 {
            return Err(KekError::BadEncoding);
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, raw).map_err(|_| KekError::BadEncoding)?;
        Ok(Self { key })
    }

    /// Encrypts `plaintext` bound to `record_id`; output is `nonce || ciphertext || tag`.
    pub fn seal(&self, record_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut buf = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(record_id.as_bytes()), &mut buf)
            .map_err(|_| KekError::Encrypt)?;
        let mut out = nonce.as_ref().to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, record_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if sealed.len() < 12 + 16 {
            return Err(KekError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Decrypt)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(record_id.as_bytes()), &mut buf)
            .map_err(|_| KekError::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_is_bound_to_the_record() {
        let (kek, encoded) = Kek::generate().expect("kek");
        let sealed = kek.seal("key-1", b"private").expect("seal");
        assert_eq!(kek.open("key-1", &sealed).expect("open").as_slice(), b"private");
        assert!(kek.open("key-2", &sealed).is_err(), "AAD must bind the record id");

        let same = Kek::from_base64(&encoded).expect("decode");
        assert_eq!(same.open("key-1", &sealed).expect("open").as_slice(), b"private");
        let (other, _) = Kek::generate().expect("kek");
        assert!(other.open("key-1", &sealed).is_err());
    }

    #[test]
    fn tampering_and_bad_keys_are_rejected() {
        let (kek, _) = Kek::generate().expect("kek");
        let mut sealed = kek.seal("id", b"secret").expect("seal");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(kek.open("id", &sealed).is_err());
        assert!(kek.open("id", &[0u8; 5]).is_err());
        assert!(Kek::from_base64("c2hvcnQ=").is_err());
        assert!(Kek::from_base64("not base64!").is_err());
    }
}
