//! Grants, exchanges and token lifecycle as plain async functions over the store, the audit log
//! and the keyring: client authentication, the client_credentials grant, introspection,
//! revocation and the kill switch, and the registry. No HTTP here; `server` maps requests in.

pub mod authorize;
pub mod ciba;
pub mod cimd;
pub mod client_auth;
pub mod clients;
pub mod code;
pub mod dpop;
pub mod exchange;
pub mod federation;
pub mod id_token;
pub mod idjag;
pub mod introspect;
pub mod jwks_fetch;
pub mod keyring;
pub mod password;
pub mod policy;
pub mod refresh;
pub mod register;
pub mod registry;
pub mod revoke;
pub mod ssf;
#[cfg(test)]
mod test_support;
pub mod token;
pub mod trust;
pub mod txn_token;

use std::sync::Arc;

use mandate_audit::{AuditError, AuditLog, CheckpointPolicy, CheckpointSigner};
use mandate_core::{AuditEvent, Clock, OAuthError, TrustDomain};
use mandate_crypto::{Alg, Kek};
use mandate_store::{Mutation, MutationError, Store, StoreError};

pub use keyring::{Keyring, KeyringError};

/// Issuance settings.
#[derive(Debug, Clone)]
pub struct AuthzConfig {
    /// The issuer identifier (`iss`), e.g. `http://127.0.0.1:8080`.
    pub issuer: String,
    pub trust_domain: TrustDomain,
    pub access_token_ttl_secs: i64,
    pub access_token_alg: Alg,
    /// Tolerated clock difference when checking foreign JWTs (client assertions).
    pub leeway_secs: i64,
    /// Client assertions may not be valid for longer than this, which also bounds the replay cache.
    pub max_assertion_lifetime_secs: i64,
    /// How long a rotated-in key is published before it signs (default rotation lead).
    pub key_publish_lead_secs: i64,
    /// Lets federation rules name http:// issuers and JWKS URLs on loopback and fetch from
    /// internal addresses; likewise `http://` loopback Client ID Metadata Documents. For tests on
    /// one host only; off in any real deployment.
    pub allow_insecure_federation: bool,
    /// Whether `POST /oauth2/register` (RFC 7591 dynamic client registration) is served.
    pub dynamic_registration: bool,
    /// Whether `https://` client ids are fetched as Client ID Metadata Documents.
    pub client_id_metadata_documents: bool,
    /// How long a refresh token lives; each rotation starts a new one.
    pub refresh_token_ttl_secs: i64,
    /// RFC 9449 §8: DPoP proofs at the token endpoint must carry a server-issued nonce.
    pub dpop_nonce_required: bool,
    /// How long a Txn-Token lives (never beyond its subject token); see `txn_token`.
    pub txn_token_ttl_secs: i64,
}

impl AuthzConfig {
    /// Defaults for everything but the issuer and the trust domain.
    pub fn new(issuer: impl Into<String>, trust_domain: TrustDomain) -> Self {
        Self {
            issuer: issuer.into(),
            trust_domain,
            access_token_ttl_secs: 300,
            access_token_alg: Alg::EdDSA,
            leeway_secs: 60,
            max_assertion_lifetime_secs: 600,
            key_publish_lead_secs: 120,
            allow_insecure_federation: false,
            dynamic_registration: true,
            client_id_metadata_documents: true,
            refresh_token_ttl_secs: 14 * 86_400,
            dpop_nonce_required: false,
            txn_token_ttl_secs: txn_token::DEFAULT_TTL_SECS,
        }
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer)
    }
}

/// Everything a grant needs; cheap to clone.
#[derive(Clone)]
pub struct Authz {
    pub store: Arc<dyn Store>,
    pub log: AuditLog,
    pub keys: Arc<Keyring>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<AuthzConfig>,
    /// Federated issuers' fetched JWK Sets.
    pub jwks_cache: Arc<jwks_fetch::JwksCache>,
    /// Validated Client ID Metadata Documents.
    pub cimd_cache: Arc<cimd::MetadataCache>,
    /// This process's DPoP nonces (RFC 9449 §8), used when `dpop_nonce_required`.
    pub dpop_nonces: Arc<dpop::NonceSource>,
    /// The active Cedar policy set (empty until one is stored; see `policy`).
    pub policy: Arc<mandate_policy::PolicyEngine>,
}

/// The longest an access token may live; retired keys stay published this long.
pub const MAX_ACCESS_TOKEN_TTL_SECS: i64 = 3600;

impl Authz {
    /// Assembles the grant context over an opened store: loads the signing keys sealed with
    /// `kek` (creating them on first use) and starts the audit writer for the log `origin`.
    pub async fn start(
        store: Arc<dyn Store>,
        kek: Kek,
        clock: Arc<dyn Clock>,
        config: AuthzConfig,
        policy: CheckpointPolicy,
        origin: &str,
    ) -> Result<Self, KeyringError> {
        let keys = Keyring::open(&store, kek, clock.now_ms(), MAX_ACCESS_TOKEN_TTL_SECS).await?;
        let signer = CheckpointSigner::new(keys.audit_key()?, origin)?;
        let log = AuditLog::start(Arc::clone(&store), signer, Arc::clone(&clock), policy);
        Ok(Self {
            store,
            log,
            keys: Arc::new(keys),
            clock,
            config: Arc::new(config),
            jwks_cache: Default::default(),
            cimd_cache: Default::default(),
            dpop_nonces: Default::default(),
            policy: Arc::new(mandate_policy::PolicyEngine::empty()),
        })
    }
}

/// Who called an endpoint, once authenticated, for audit and authorisation decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Client(Box<client_auth::AuthenticatedClient>),
}

pub(crate) fn store_failure(e: StoreError) -> OAuthError {
    tracing::error!(error = %e, "store failure");
    OAuthError::server_error("storage is unavailable")
}

pub(crate) fn audit_failure(e: AuditError) -> OAuthError {
    tracing::error!(error = %e, "audit failure");
    OAuthError::new(
        mandate_core::OAuthErrorCode::TemporarilyUnavailable,
        "the audit log is unavailable; nothing was done",
    )
}

/// A fresh token id: 128 random bits, base64url.
pub(crate) fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    mandate_crypto::secret::fill_random(&mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// Records the outcome of a request in the audit log and only then answers: a refusal is logged
/// with its OAuth error; a success is logged together with its state change (if any), and a
/// refused state change (e.g. a replayed assertion `jti`) turns the success into `on_refused`.
pub(crate) async fn conclude<T>(
    authz: &Authz,
    event: AuditEvent,
    outcome: Result<(T, Option<Mutation>), OAuthError>,
    on_refused: impl FnOnce(MutationError) -> OAuthError,
) -> Result<T, OAuthError> {
    match outcome {
        Err(error) => {
            let event = event.refused(error.code.as_str(), &error.description);
            authz.log.record(event).await.map_err(audit_failure)?;
            Err(error)
        }
        Ok((value, None)) => {
            authz.log.record(event).await.map_err(audit_failure)?;
            Ok(value)
        }
        Ok((value, Some(mutation))) => match authz.log.apply(mutation, event).await.map_err(audit_failure)? {
            Ok(_) => Ok(value),
            Err(refused) => Err(on_refused(refused)),
        },
    }
}

/// Logs a refusal that happened before any grant logic ran (malformed request, bad content type).
pub async fn record_refusal(authz: &Authz, event: AuditEvent, error: OAuthError) -> OAuthError {
    let event = event.refused(error.code.as_str(), &error.description);
    match authz.log.record(event).await {
        Ok(_) => error,
        Err(e) => audit_failure(e),
    }
}
