//! The broker's local CA: created once by `mandate broker ca` in the broker directory (`ca.pem`,
//! `ca.key` 0600), trusted by the agent, and used to mint short-lived per-host leaf certificates
//! for intercepted CONNECT tunnels, cached in a bounded map.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mandate_core::Clock;
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
const CA_COMMON_NAME: &str = "Mandate broker local CA";
const CA_VALIDITY_SECS: i64 = 10 * 365 * 86_400;
/// Leaf lifetime; a cached leaf is re-minted once less than [`LEAF_RENEW_SECS`] remain.
const LEAF_VALIDITY_SECS: i64 = 24 * 3600;
const LEAF_RENEW_SECS: i64 = 3600;
/// Backdating absorbs small clock differences between the broker and the agent.
const BACKDATE_SECS: i64 = 300;
const MAX_CACHED_LEAVES: usize = 1024;
const MAX_PEM_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the broker CA is missing ({0}); create it with `mandate broker ca`")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is readable by other users; run `chmod 600` on it")]
    KeyTooOpen(PathBuf),
    #[error("the CA files are invalid: {0}")]
    Invalid(String),
    #[error("cannot issue a certificate for {host:?}: {reason}")]
    Leaf { host: String, reason: String },
}

/// The CA as files: what `mandate broker ca` creates and exports.
pub struct CaFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    /// Whether this call created the CA (false: it existed already).
    pub created: bool,
}

/// Creates the CA in `dir` unless both files exist; never overwrites an existing key.
pub fn create_or_load(dir: &Path, now_secs: i64) -> Result<CaFiles, CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Io { path, source }
    };
    if key_path.exists() {
        let cert_pem = read_bounded(&cert_path)?;
        return Ok(CaFiles { cert_path, key_path, cert_pem, created: false });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_pem, key_pem) = generate(now_secs)?;
    write_private(&key_path, key_pem.as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, &cert_pem).map_err(io(&cert_path))?;
    Ok(CaFiles { cert_path, key_path, cert_pem, created: true })
}

/// A fresh self-signed CA: ECDSA P-256, path length 0 (it signs only leaves), 10 years.
pub fn generate(now_secs: i64) -> Result<(String, Zeroizing<String>), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(invalid)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Mandate");
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = datetime(now_secs - BACKDATE_SECS)?;
    params.not_after = datetime(now_secs + CA_VALIDITY_SECS)?;
    let cert = params.self_signed(&key).map_err(invalid)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// The loaded CA, minting and caching leaf certificates per host.
pub struct LocalCa {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    clock: Arc<dyn Clock>,
    leaves: Mutex<HashMap<String, CachedLeaf>>,
}

struct CachedLeaf {
    config: Arc<ServerConfig>,
    not_after_secs: i64,
}

impl LocalCa {
    /// Loads `ca.pem` and `ca.key` from the broker directory; refuses a key others can read.
    pub fn load(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if !path.exists() {
                return Err(CaError::Missing(path.clone()));
            }
        }
        check_private(&key_path)?;
        let cert_pem = read_bounded(&cert_path)?;
        let key_pem = Zeroizing::new(read_bounded(&key_path)?);
        Self::from_pem(&cert_pem, &key_pem, clock)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str, clock: Arc<dyn Clock>) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(invalid)?;
        let cert_der = pem_certificates(cert_pem)?.into_iter().next().ok_or_else(|| invalid("no certificate"))?;
        // A key from another CA would sign leaves no agent can verify: refuse the pair at start.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).map_err(invalid)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid("ca.key does not belong to ca.pem"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(invalid)?;
        Ok(Self { cert_der, issuer, clock, leaves: Mutex::new(HashMap::new()) })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The TLS server configuration presenting a leaf for `host` (ALPN h2 and http/1.1),
    /// minted on first use and re-minted when close to expiry.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let now = self.clock.now_secs();
        let host = host.to_ascii_lowercase();
        if let Some(leaf) = self.leaves.lock().get(&host)
            && leaf.not_after_secs - now > LEAF_RENEW_SECS
        {
            return Ok(Arc::clone(&leaf.config));
        }
        let not_after_secs = now + LEAF_VALIDITY_SECS;
        let config = Arc::new(self.mint(&host, now, not_after_secs)?);
        let mut leaves = self.leaves.lock();
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.retain(|_, leaf| leaf.not_after_secs - now > LEAF_RENEW_SECS);
            if leaves.len() >= MAX_CACHED_LEAVES {
                // Still full of live leaves: start over rather than grow; they are re-minted on use.
                leaves.clear();
            }
        }
        leaves.insert(host, CachedLeaf { config: Arc::clone(&config), not_after_secs });
        Ok(config)
    }

    fn mint(&self, host: &str, now: i64, not_after: i64) -> Result<ServerConfig, CaError> {
        let leaf_error = |reason: String| CaError::Leaf { host: host.to_owned(), reason };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // rcgen takes any IA5 string; a leaf must name a syntactically valid DNS name.
                rustls::pki_types::DnsName::try_from(host).map_err(|e| leaf_error(e.to_string()))?;
                SanType::DnsName(host.try_into().map_err(|e: rcgen::Error| leaf_error(e.to_string()))?)
            }
        };
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = datetime(now - BACKDATE_SECS)?;
        params.not_after = datetime(not_after)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| leaf_error(e.to_string()))?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(|e| leaf_error(e.to_string()))?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| leaf_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| leaf_error(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Every `CERTIFICATE` block of a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(invalid)
}

/// Reads a PEM file of at most 64 KiB.
pub fn read_bounded(path: &Path) -> Result<String, CaError> {
    let io = |source| CaError::Io { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_PEM_BYTES {
        return Err(invalid(format!("{} is larger than {MAX_PEM_BYTES} bytes", path.display())));
    }
    std::fs::read_to_string(path).map_err(io)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(path).map_err(|source| CaError::Io { path: path.to_owned(), source })?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CaError::KeyTooOpen(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes = uuid::Uuid::new_v4().into_bytes();
    // Positive and without a leading zero byte (RFC 5280 §4.1.2.2).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn datetime(unix_secs: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix_secs).map_err(invalid)
}

fn invalid(e: impl std::fmt::Display) -> CaError {
    CaError::Invalid(e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mandate_core::ManualClock;

    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn ca(clock: &ManualClock) -> LocalCa {
        let (cert, key) = generate(NOW).unwrap();
        LocalCa::from_pem(&cert, &key, Arc::new(clock.clone())).unwrap()
    }

    #[test]
    fn leaves_are_cached_per_host_and_renewed_near_expiry() {
        let clock = ManualClock::at_ms(NOW * 1000);
        let ca = ca(&clock);
        let first = ca.server_config("api.example.com").unwrap();
        let again = ca.server_config("API.example.com").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = ca.server_config("127.0.0.1").unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        clock.advance_ms((LEAF_VALIDITY_SECS - LEAF_RENEW_SECS + 1) * 1000);
        let renewed = ca.server_config("api.example.com").unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_eq!(renewed.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn hosts_that_are_not_names_get_no_leaf() {
        let clock = ManualClock::at_ms(NOW * 1000);
        let ca = ca(&clock);
        assert!(matches!(ca.server_config("bad host"), Err(CaError::Leaf { .. })));
    }

    #[test]
    fn files_are_created_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = create_or_load(dir.path(), NOW).unwrap();
        assert!(made.created);
        let again = create_or_load(dir.path(), NOW).unwrap();
        assert!(!again.created);
        assert_eq!(made.cert_pem, again.cert_pem);
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at_ms(NOW * 1000));
        assert!(LocalCa::load(dir.path(), Arc::clone(&clock)).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join(CA_KEY_FILE);
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(LocalCa::load(dir.path(), Arc::clone(&clock)), Err(CaError::KeyTooOpen(_))));
        }
    }

    #[test]
    fn a_missing_or_garbled_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at_ms(NOW * 1000));
        assert!(matches!(LocalCa::load(dir.path(), Arc::clone(&clock)), Err(CaError::Missing(_))));
        let (cert, _) = generate(NOW).unwrap();
        assert!(LocalCa::from_pem(&cert, "not a key", Arc::clone(&clock)).is_err());
        let (_, key) = generate(NOW).unwrap();
        assert!(LocalCa::from_pem("no pem here", &key, Arc::clone(&clock)).is_err());
        // Both valid, but not a pair.
        assert!(matches!(LocalCa::from_pem(&cert, &key, clock), Err(CaError::Invalid(_))));
    }
}
