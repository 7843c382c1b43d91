//! The trust domain's SPIFFE bundle (SPIFFE Trust Domain and Bundle §4): X.509 authorities and
//! JWT-SVID keys as one JWK Set with `spiffe_sequence` and `spiffe_refresh_hint`, plus the two
//! halves in the forms the Workload API sends (DER certificates, a plain JWKS).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mandate_authz::keyring::PURPOSE_JWT_SVID;
use mandate_core::AuditEvent;
use mandate_crypto::PublicKey;
use mandate_store::Mutation;
use serde_json::{Map, Value, json};
use x509_parser::public_key::PublicKey as SpkiKey;

use crate::ca::{SpiffeCa, SpiffeError, apply_audited};

/// Setting that holds `<sequence> <hex SHA-256 of the bundle content>`.
pub const SETTING_BUNDLE_SEQUENCE: &str = "spiffe_bundle_sequence";
/// OID 1.3.101.112 (id-Ed25519), DER content bytes.
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The last sequence number handed out and the content it numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceState {
    pub sequence: u64,
    pub digest: [u8; 32],
}

/// The trust bundle of our own trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// CA certificates (DER) that X.509-SVIDs chain to.
    pub x509_authorities: Vec<Vec<u8>>,
    /// Keys that verify JWT-SVIDs (each with its `kid`).
    pub jwt_authorities: Vec<PublicKey>,
    pub sequence: u64,
    pub refresh_hint_secs: i64,
}

impl TrustBundle {
    /// The current bundle. Its sequence number goes up (and the change is audited) whenever its
    /// content differs from the content last numbered.
    pub async fn current(ca: &SpiffeCa) -> Result<Self, SpiffeError> {
        let x509_authorities = ca.x509_authorities().await?;
        let jwt_authorities = ca.authz().keys.published_for(PURPOSE_JWT_SVID).as_ref().clone();
        let digest = content_digest(&x509_authorities, &jwt_authorities);
        let sequence = sequence_for(ca, digest).await?;
        Ok(Self {
            x509_authorities,
            jwt_authorities,
            sequence,
            refresh_hint_secs: ca.config().bundle_refresh_hint_secs,
        })
    }

    /// The SPIFFE bundle document (a JWK Set with the SPIFFE members).
    pub fn to_json(&self) -> Value {
        let mut keys: Vec<Value> = Vec::new();
        for der in &self.x509_authorities {
            match x509_authority_jwk(der) {
                Ok(jwk) => keys.push(jwk),
                // A key type JWK cannot express must not hide the rest of the bundle.
                Err(e) => tracing::warn!(error = %e, "X.509 authority left out of the SPIFFE bundle"),
            }
        }
        keys.extend(self.jwt_authorities.iter().map(jwt_authority_jwk));
        json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint_secs,
        })
    }

    /// The X.509 authorities as PEM, one certificate after another.
    pub fn x509_pem(&self) -> String {
        self.x509_authorities.iter().map(|der| pem_encode("CERTIFICATE", der)).collect()
    }
}

/// The JWT-SVID keys as a standard JWK Set (what `/spiffe/jwks.json` and the Workload API's
/// `FetchJWTBundles` serve): every key carries its `kid`.
pub fn jwt_bundle_json(ca: &SpiffeCa) -> Value {
    ca.authz().keys.jwks_for(PURPOSE_JWT_SVID).as_ref().clone()
}

/// [`jwt_bundle_json`] as bytes, the Workload API encoding.
pub fn jwt_bundle_bytes(ca: &SpiffeCa) -> Vec<u8> {
    jwt_bundle_json(ca).to_string().into_bytes()
}

/// DER certificates concatenated, the Workload API encoding of X.509 bundles and chains.
pub fn concat_der(certs: &[Vec<u8>]) -> Vec<u8> {
    certs.concat()
}

/// An X.509 authority as a JWK: the CA's public key, `use: x509-svid`, and the certificate in
/// `x5c` (standard base64). No `kid` (the spec forbids one for X.509 authorities).
pub fn x509_authority_jwk(cert_der: &[u8]) -> Result<Value, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    let mut jwk = public_key_members(cert.public_key())?;
    jwk.insert("use".into(), json!("x509-svid"));
    jwk.insert("x5c".into(), json!([STANDARD.encode(cert_der)]));
    Ok(Value::Object(jwk))
}

/// A JWT-SVID key as a bundle JWK: `use: jwt-svid` and its `kid`.
pub fn jwt_authority_jwk(key: &PublicKey) -> Value {
    let mut jwk = key.jwk().clone();
    if let Some(obj) = jwk.as_object_mut() {
        obj.insert("use".into(), json!("jwt-svid"));
        obj.insert("kid".into(), json!(key.kid()));
    }
    jwk
}

fn public_key_members(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<Map<String, Value>, String> {
    let mut jwk = Map::new();
    match spki.parsed().map_err(|e| e.to_string())? {
        SpkiKey::EC(point) => {
            let data = point.data();
            let (crv, size) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                133 => ("P-521", 66),
                n => return Err(format!("unsupported EC point of {n} bytes")),
            };
            if data.first() != Some(&4) {
                return Err("compressed EC points are not supported".into());
            }
            jwk.insert("kty".into(), json!("EC"));
            jwk.insert("crv".into(), json!(crv));
            jwk.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(&data[1..=size])));
            jwk.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(&data[1 + size..])));
        }
        SpkiKey::RSA(rsa) => {
            jwk.insert("kty".into(), json!("RSA"));
            jwk.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus))));
            jwk.insert("e".into(), json!(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent))));
        }
        SpkiKey::Unknown(raw) if spki.algorithm.algorithm.as_bytes() == OID_ED25519 => {
            jwk.insert("kty".into(), json!("OKP"));
            jwk.insert("crv".into(), json!("Ed25519"));
            jwk.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(raw)));
        }
        _ => return Err(format!("unsupported key algorithm {}", spki.algorithm.algorithm)),
    }
    Ok(jwk)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

fn content_digest(x509: &[Vec<u8>], jwt: &[PublicKey]) -> [u8; 32] {
    let mut material = Vec::new();
    for der in x509 {
        material.extend_from_slice(&(der.len() as u64).to_be_bytes());
        material.extend_from_slice(der);
    }
    for key in jwt {
        let jwk = jwt_authority_jwk(key).to_string();
        material.extend_from_slice(&(jwk.len() as u64).to_be_bytes());
        material.extend_from_slice(jwk.as_bytes());
    }
    mandate_crypto::sha256(&material)
}

/// The sequence number for bundle content `digest`: the stored one if the content is the one
/// it numbered, else the next one, stored with an audit event. Replicas share the setting.
async fn sequence_for(ca: &SpiffeCa, digest: [u8; 32]) -> Result<u64, SpiffeError> {
    let cached = *ca.bundle_state.lock();
    if let Some(state) = cached
        && state.digest == digest
    {
        return Ok(state.sequence);
    }
    let authz = ca.authz();
    let stored = authz.store.setting(SETTING_BUNDLE_SEQUENCE).await?.and_then(|v| parse_sequence(&v));
    let sequence = match stored {
        Some(state) if state.digest == digest => state.sequence,
        other => {
            let next = other.map_or(1, |s| s.sequence + 1);
            let value = format!("{next} {}", hex::encode(digest));
            let event = AuditEvent::allow("spiffe.bundle.update", "spiffe-bundle")
                .with_detail(format!("trust_domain={} spiffe_sequence={next}", ca.trust_domain()));
            apply_audited(authz, Mutation::PutSetting { key: SETTING_BUNDLE_SEQUENCE.into(), value }, event).await?;
            next
        }
    };
    *ca.bundle_state.lock() = Some(SequenceState { sequence, digest });
    Ok(sequence)
}

fn parse_sequence(value: &str) -> Option<SequenceState> {
    let (sequence, digest) = value.split_once(' ')?;
    let digest: [u8; 32] = hex::decode(digest).ok()?.try_into().ok()?;
    Some(SequenceState { sequence: sequence.parse().ok()?, digest })
}

/// PEM armour with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The contents of every `label` block in `text`, in order; other blocks are skipped and
/// parsing stops at the first malformed block.
pub fn pem_decode(text: &str, label: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .map_while(Result::ok)
        .filter(|pem| pem.label == label)
        .map(|pem| pem.contents)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_several_blocks() {
        let a = vec![1u8; 100];
        let b = vec![2u8; 3];
        let text = format!("{}junk\n{}", pem_encode("CERTIFICATE", &a), pem_encode("CERTIFICATE", &b));
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_decode(&text, "CERTIFICATE"), vec![a, b]);
        assert!(pem_decode(&text, "PRIVATE KEY").is_empty());
    }

    #[test]
    fn sequence_setting_parses_and_refuses_garbage() {
        let digest = [7u8; 32];
        let state = parse_sequence(&format!("12 {}", hex::encode(digest))).unwrap();
        assert_eq!(state, SequenceState { sequence: 12, digest });
        assert!(parse_sequence("12").is_none());
        assert!(parse_sequence("x 00").is_none());
    }

    #[test]
    fn rsa_integers_lose_leading_zeros_only() {
        assert_eq!(strip_leading_zeros(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(strip_leading_zeros(&[0]), &[0]);
    }
}
