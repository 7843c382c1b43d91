//! The SPIFFE certificate authority of the trust domain. Its key is the keyring's `x509-ca` key;
//! its certificate (self-signed, or an intermediate under an operator's upstream root) is made
//! on first use and kept in the store, so restarts and replicas serve the same one.

use std::path::Path;
use std::sync::Arc;

use mandate_authz::Authz;
use mandate_authz::keyring::{KeyringError, PURPOSE_X509_CA};
use mandate_core::{AuditEvent, TrustDomain};
use mandate_crypto::{Alg, JwtError, SigningKey, sha256};
use mandate_store::{Mutation, StoreError};
use parking_lot::RwLock;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;

use crate::bundle::{pem_decode, pem_encode};

/// Settings prefix under which each CA key's certificate (PEM) is stored: `x509_ca_cert:<kid>`.
pub const SETTING_CA_CERT_PREFIX: &str = "x509_ca_cert:";
pub const CA_COMMON_NAME: &str = "Mandate SPIFFE CA";
/// Setting with the JWT-SVID issuer the server last announced, so CLI commands on the same data
/// directory mint JWT-SVIDs with the `iss` relying parties discover.
pub const SETTING_JWT_ISSUER: &str = "spiffe_jwt_issuer";
const DAY_SECS: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum SpiffeError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit log is unavailable: {0}")]
    Audit(String),
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("stored CA certificate is unusable: {0}")]
    BadStoredCertificate(String),
    #[error("upstream CA: {0}")]
    Upstream(String),
    #[error("the CA certificate expired; renew the upstream root")]
    CaExpired,
    #[error("invalid SPIFFE ID: {0}")]
    InvalidSpiffeId(String),
    #[error("a JWT-SVID needs at least one audience")]
    AudienceRequired,
    #[error("invalid audience: {0}")]
    InvalidAudience(String),
    #[error("JWT-SVID signing failed: {0}")]
    Sign(String),
    #[error("JWT-SVID is invalid: {0}")]
    InvalidJwt(#[from] JwtError),
}

/// Applies a state change with its audit event; a refused change is an audit-layer failure here,
/// since the CA only writes settings, which are upserts.
pub(crate) async fn apply_audited(authz: &Authz, mutation: Mutation, event: AuditEvent) -> Result<(), SpiffeError> {
    authz
        .log
        .apply(mutation, event)
        .await
        .map_err(|e| SpiffeError::Audit(e.to_string()))?
        .map_err(|e| SpiffeError::Audit(e.to_string()))?;
    Ok(())
}

/// SVID lifetimes and bundle publication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeConfig {
    /// X.509-SVID lifetime (SPIRE's default is 1 h).
    pub x509_svid_ttl_secs: i64,
    /// JWT-SVID lifetime (SPIRE's default is 5 min).
    pub jwt_svid_ttl_secs: i64,
    /// Lifetime of a CA certificate Mandate makes.
    pub ca_ttl_secs: i64,
    /// A CA certificate with less than this left is replaced (same key, so SVIDs stay valid).
    pub ca_renew_before_secs: i64,
    /// `spiffe_refresh_hint` of the bundle: how often federated peers should poll.
    pub bundle_refresh_hint_secs: i64,
    /// The JWT-SVID `iss`; `<issuer>/spiffe` when unset.
    pub jwt_issuer: Option<String>,
}

impl Default for SpiffeConfig {
    fn default() -> Self {
        Self {
            x509_svid_ttl_secs: 3600,
            jwt_svid_ttl_secs: 300,
            ca_ttl_secs: 365 * DAY_SECS,
            ca_renew_before_secs: 30 * DAY_SECS,
            bundle_refresh_hint_secs: 300,
            jwt_issuer: None,
        }
    }
}

/// An operator's root CA that signs Mandate's CA as an intermediate. Only its certificate is
/// published in the bundle; its key is used when the intermediate is made or renewed.
pub struct UpstreamCa {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_after_secs: i64,
    /// Hex SHA-256 prefix of the certificate, part of the setting name of the intermediate, so
    /// changing the upstream root makes a new intermediate.
    fingerprint: String,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCa").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl UpstreamCa {
    /// Reads the upstream CA certificate and its private key (PEM files).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, SpiffeError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| SpiffeError::Upstream(format!("reading {}: {e}", path.display())))
        };
        let cert_pem = read(cert_path)?;
        let key_pem = zeroize::Zeroizing::new(read(key_path)?);
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// The certificate must be a CA allowed to sign certificates, and the key must be its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SpiffeError> {
        let certs = pem_decode(cert_pem, "CERTIFICATE");
        let [cert_der] = certs.as_slice() else {
            return Err(SpiffeError::Upstream(format!(
                "the certificate file must hold exactly one certificate, found {}",
                certs.len()
            )));
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| SpiffeError::Upstream(format!("private key: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| SpiffeError::Upstream(format!("certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(SpiffeError::Upstream("the private key does not belong to the certificate".into()));
        }
        check_signing_cert(&cert).map_err(SpiffeError::Upstream)?;
        let not_after_secs = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)?;
        Ok(Self {
            fingerprint: hex::encode(&sha256(cert_der)[..8]),
            cert_der: cert_der.clone(),
            issuer,
            not_after_secs,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
}

/// A CA certificate is usable for signing SVIDs when it is a CA with `keyCertSign`.
fn check_signing_cert(cert: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    let can_sign = cert.key_usage().ok().flatten().is_none_or(|ku| ku.value.key_cert_sign());
    if !is_ca || !can_sign {
        return Err("the certificate is not a CA certificate allowed to sign certificates (keyCertSign)".into());
    }
    Ok(())
}

/// The CA as it signs right now: the active `x509-ca` key and its certificate.
pub struct Authority {
    kid: String,
    cert_der: Vec<u8>,
    /// Set when `cert_der` is an intermediate under an upstream root.
    intermediate: bool,
    issuer: Issuer<'static, KeyPair>,
    not_after_secs: i64,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("kid", &self.kid)
            .field("intermediate", &self.intermediate)
            .field("not_after_secs", &self.not_after_secs)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Builds the authority from a CA certificate and the key it certifies.
    pub fn new(key: &SigningKey, cert_der: Vec<u8>, intermediate: bool) -> Result<Self, SpiffeError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| SpiffeError::BadStoredCertificate(e.to_string()))?;
        let key_pair = key_pair(key)?;
        if cert.public_key().subject_public_key.data.as_ref() != key_pair.der_bytes() {
            return Err(SpiffeError::BadStoredCertificate(format!("it does not certify key {}", key.kid())));
        }
        check_signing_cert(&cert).map_err(SpiffeError::BadStoredCertificate)?;
        let not_after_secs = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key_pair)?;
        Ok(Self { kid: key.kid().to_owned(), cert_der, intermediate, issuer, not_after_secs })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The CA certificate (DER): the bundle root, or the intermediate under an upstream root.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn is_intermediate(&self) -> bool {
        self.intermediate
    }

    pub fn not_after_secs(&self) -> i64 {
        self.not_after_secs
    }

    /// Certificates that follow an SVID's leaf in its chain.
    pub fn chain_tail(&self) -> Vec<Vec<u8>> {
        if self.intermediate { vec![self.cert_der.clone()] } else { Vec::new() }
    }

    /// Signs a certificate with `params` for `public_key`.
    pub fn sign(&self, params: &CertificateParams, public_key: &impl PublicKeyData) -> Result<Vec<u8>, SpiffeError> {
        Ok(params.signed_by(public_key, &self.issuer)?.der().to_vec())
    }
}

/// The keyring key as an rcgen key pair (PKCS#8; the keyring makes `x509-ca` keys ES256).
fn key_pair(key: &SigningKey) -> Result<KeyPair, SpiffeError> {
    Ok(KeyPair::try_from(key.pkcs8())?)
}

/// The trust domain's CA. Cheap to share (`Arc`); holds the current [`Authority`] in memory.
pub struct SpiffeCa {
    authz: Authz,
    config: SpiffeConfig,
    upstream: Option<UpstreamCa>,
    current: RwLock<Option<Arc<Authority>>>,
    /// Serialises making a certificate in this process (other replicas race benignly: every
    /// certificate for the same key and name verifies the same SVIDs).
    creating: tokio::sync::Mutex<()>,
    pub(crate) bundle_state: parking_lot::Mutex<Option<crate::bundle::SequenceState>>,
}

impl SpiffeCa {
    pub fn new(authz: Authz, config: SpiffeConfig, upstream: Option<UpstreamCa>) -> Self {
        Self {
            authz,
            config,
            upstream,
            current: RwLock::new(None),
            creating: tokio::sync::Mutex::new(()),
            bundle_state: parking_lot::Mutex::new(None),
        }
    }

    pub fn authz(&self) -> &Authz {
        &self.authz
    }

    pub fn config(&self) -> &SpiffeConfig {
        &self.config
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.authz.config.trust_domain
    }

    pub fn upstream(&self) -> Option<&UpstreamCa> {
        self.upstream.as_ref()
    }

    /// The `iss` of JWT-SVIDs, which is also their OIDC discovery issuer: `<issuer>/spiffe`.
    pub fn jwt_issuer(&self) -> String {
        match &self.config.jwt_issuer {
            Some(issuer) => issuer.clone(),
            None => format!("{}/spiffe", self.authz.config.issuer),
        }
    }

    /// Stores this server's JWT-SVID issuer (audited when it changes) for other processes on
    /// the same data directory: see [`SETTING_JWT_ISSUER`].
    pub async fn announce_jwt_issuer(&self) -> Result<(), SpiffeError> {
        let issuer = self.jwt_issuer();
        if self.authz.store.setting(SETTING_JWT_ISSUER).await?.as_deref() == Some(issuer.as_str()) {
            return Ok(());
        }
        let event = AuditEvent::allow("spiffe.issuer.set", "startup").with_detail(format!("jwt_svid_issuer={issuer}"));
        let put = Mutation::PutSetting { key: SETTING_JWT_ISSUER.into(), value: issuer };
        apply_audited(&self.authz, put, event).await?;
        Ok(())
    }

    /// The authority for the active CA key, making (and auditing) its certificate if none is
    /// stored yet or the stored one is due for renewal.
    pub async fn authority(&self) -> Result<Arc<Authority>, SpiffeError> {
        let key = self.authz.keys.signer_for(PURPOSE_X509_CA, Alg::ES256)?;
        let now = self.authz.clock.now_secs();
        if let Some(current) = self.usable(&key, now) {
            return Ok(current);
        }
        let _guard = self.creating.lock().await;
        if let Some(current) = self.usable(&key, now) {
            return Ok(current);
        }
        let authority = Arc::new(self.load_or_create(&key, now).await?);
        *self.current.write() = Some(Arc::clone(&authority));
        Ok(authority)
    }

    fn usable(&self, key: &SigningKey, now: i64) -> Option<Arc<Authority>> {
        let current = self.current.read().clone()?;
        (current.kid == key.kid() && !self.due_for_renewal(&current, now)).then_some(current)
    }

    /// Renewal only helps when a new certificate would last longer, which an intermediate
    /// bounded by its upstream root's expiry would not.
    fn due_for_renewal(&self, authority: &Authority, now: i64) -> bool {
        let ends_soon = authority.not_after_secs - now < self.config.ca_renew_before_secs;
        let can_extend = self.upstream.as_ref().is_none_or(|up| up.not_after_secs > authority.not_after_secs);
        ends_soon && can_extend
    }

    fn setting_key(&self, kid: &str) -> String {
        match &self.upstream {
            None => format!("{SETTING_CA_CERT_PREFIX}{kid}"),
            Some(up) => format!("{SETTING_CA_CERT_PREFIX}{kid}:upstream:{}", up.fingerprint),
        }
    }

    async fn load_or_create(&self, key: &SigningKey, now: i64) -> Result<Authority, SpiffeError> {
        let setting = self.setting_key(key.kid());
        let intermediate = self.upstream.is_some();
        let stored = self.authz.store.setting(&setting).await?;
        if let Some(pem) = &stored {
            match self.stored_authority(key, pem) {
                Ok(authority) if !self.due_for_renewal(&authority, now) => return Ok(authority),
                Ok(_) => tracing::info!(kid = key.kid(), "SPIFFE CA certificate is due for renewal"),
                Err(e) => tracing::warn!(kid = key.kid(), error = %e, "stored SPIFFE CA certificate replaced"),
            }
        }
        let cert_der = self.make_certificate(key, now)?;
        let authority = Authority::new(key, cert_der, intermediate)?;
        let action = if stored.is_some() { "spiffe.ca.renew" } else { "spiffe.ca.create" };
        let event = AuditEvent::allow(action, "spiffe-ca").with_detail(format!(
            "kid={} trust_domain={} not_after={} upstream={}",
            key.kid(),
            self.trust_domain(),
            authority.not_after_secs,
            self.upstream.as_ref().map_or("none", |u| u.fingerprint.as_str()),
        ));
        let put = Mutation::PutSetting { key: setting.clone(), value: pem_encode("CERTIFICATE", authority.cert_der()) };
        apply_audited(&self.authz, put, event).await?;
        // Another replica may have written its own certificate at the same moment; serve what
        // the store now holds so every replica converges on one.
        match self.authz.store.setting(&setting).await? {
            Some(pem) => self.stored_authority(key, &pem),
            None => Ok(authority),
        }
    }

    fn stored_authority(&self, key: &SigningKey, pem: &str) -> Result<Authority, SpiffeError> {
        let der = pem_decode(pem, "CERTIFICATE")
            .into_iter()
            .next()
            .ok_or_else(|| SpiffeError::BadStoredCertificate("no PEM certificate".into()))?;
        let authority = Authority::new(key, der, self.upstream.is_some())?;
        if let Some(up) = &self.upstream {
            verify_signed_by(authority.cert_der(), up.cert_der()).map_err(SpiffeError::BadStoredCertificate)?;
        }
        Ok(authority)
    }

    fn make_certificate(&self, key: &SigningKey, now: i64) -> Result<Vec<u8>, SpiffeError> {
        let key_pair = key_pair(key)?;
        let mut not_after = now + self.config.ca_ttl_secs;
        if let Some(up) = &self.upstream {
            not_after = not_after.min(up.not_after_secs);
            if not_after <= now {
                return Err(SpiffeError::Upstream("the upstream CA certificate has expired".into()));
            }
        }
        let params = ca_params(self.trust_domain(), now, not_after)?;
        let cert = match &self.upstream {
            None => params.self_signed(&key_pair)?,
            Some(up) => params.signed_by(&key_pair, &up.issuer)?,
        };
        Ok(cert.der().to_vec())
    }

    /// DER certificates a relying party trusts for this trust domain: the upstream root, or the
    /// CA certificate of every published `x509-ca` key that has one.
    pub async fn x509_authorities(&self) -> Result<Vec<Vec<u8>>, SpiffeError> {
        let current = self.authority().await?;
        if let Some(up) = &self.upstream {
            return Ok(vec![up.cert_der.clone()]);
        }
        let mut roots = vec![current.cert_der.clone()];
        for public in self.authz.keys.published_for(PURPOSE_X509_CA).iter() {
            if public.kid() == current.kid {
                continue;
            }
            // Older or scheduled CA keys: their certificates stay trusted while published.
            if let Some(pem) = self.authz.store.setting(&self.setting_key(public.kid())).await?
                && let Some(der) = pem_decode(&pem, "CERTIFICATE").into_iter().next()
            {
                roots.push(der);
            }
        }
        Ok(roots)
    }
}

/// The CA certificate profile (X.509-SVID §4.1, §4.3): SPIFFE ID of the trust domain, CA with
/// path length 0 (it signs only SVID leaves), keyCertSign + cRLSign.
fn ca_params(trust_domain: &TrustDomain, not_before: i64, not_after: i64) -> Result<CertificateParams, SpiffeError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Mandate");
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = datetime(not_before - 60)?;
    params.not_after = datetime(not_after)?;
    Ok(params)
}

/// A positive 128-bit random serial number (RFC 5280 §4.1.2.2).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    mandate_crypto::secret::fill_random(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn datetime(unix_secs: i64) -> Result<time::OffsetDateTime, SpiffeError> {
    time::OffsetDateTime::from_unix_timestamp(unix_secs).map_err(|_| SpiffeError::Certificate(rcgen::Error::Time))
}

/// Whether `cert_der` carries a valid signature by the key of `issuer_der`.
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der).map_err(|e| e.to_string())?;
    cert.verify_signature(Some(issuer.public_key())).map_err(|e| format!("signature does not verify: {e}"))
}
