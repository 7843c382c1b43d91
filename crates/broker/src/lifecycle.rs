//! Token lifecycle: [`VaultCredentials`] turns vault entries into the credential an upstream
//! expects right now — a stored API key, an access token from the `client_credentials` or
//! refresh grant (cached, refreshed ahead of expiry, rotated refresh tokens persisted), one
//! redeemed from a freshly minted ID-JAG, or a Mandate access token obtained with the agent's
//! own JWT-SVID. Failures fail closed.

mod grant;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use mandate_core::Clock;
use zeroize::Zeroizing;

use crate::credentials::{CredentialError, CredentialProvider};
use crate::vault::{EntryKind, SecretString, Vault};

use grant::Expect;
pub use grant::TokenResponse;

/// How the broker reaches token endpoints.
#[derive(Debug, Clone)]
pub struct TokenClientOptions {
    /// Whole-request timeout (connect, send, read).
    pub timeout: Duration,
    /// Extra PEM root certificates to trust besides the platform's (a private AS, tests).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for TokenClientOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), extra_roots_pem: None }
    }
}

/// Token lifetime assumed when a token response has no `expires_in`.
const DEFAULT_LIFETIME_SECS: i64 = 60;
/// Longest lifetime believed (a day); a larger `expires_in` is capped.
const MAX_LIFETIME_SECS: i64 = 86_400;
/// An unknown connection re-reads the vault file at most this often (each read is file I/O and
/// a MAC check; requests naming unknown connections must not turn into a disk loop).
const RELOAD_INTERVAL_MS: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("invalid extra root certificates: {0}")]
    Roots(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// An access token in memory, and when to replace it.
struct CachedToken {
    access_token: SecretString,
    /// At 80% of its lifetime the next caller obtains a new one.
    refresh_at_ms: i64,
    expires_at_ms: i64,
}

/// Per-connection state; its async mutex makes concurrent callers share one token request.
#[derive(Default)]
struct Slot {
    token: Option<CachedToken>,
    /// A rotated refresh token the AS returned that could not be written to the vault: used for
    /// the next refresh so the token family is not lost.
    unsaved_refresh_token: Option<SecretString>,
}

/// [`CredentialProvider`] over an opened [`Vault`].
///
/// `mandate broker run` builds one with `VaultCredentials::new(vault, TokenClientOptions::default(),
/// Arc::new(SystemClock), workload_socket)` and hands it to the proxy as
/// `Arc<dyn CredentialProvider>`.
pub struct VaultCredentials {
    vault: Mutex<Vault>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    workload_socket: Option<PathBuf>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    last_reload_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for VaultCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultCredentials").field("workload_socket", &self.workload_socket).finish_non_exhaustive()
    }
}

impl VaultCredentials {
    /// `workload_socket`: the SPIFFE Workload API socket for `mandate_workload` entries (they
    /// are unavailable without it).
    pub fn new(
        vault: Vault,
        options: TokenClientOptions,
        clock: Arc<dyn Clock>,
        workload_socket: Option<PathBuf>,
    ) -> Result<Self, LifecycleError> {
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // A token endpoint that redirects is misconfigured; never resend credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &options.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| LifecycleError::Roots(e.to_string()))?;
            if certs.is_empty() {
                return Err(LifecycleError::Roots("no certificate in the bundle".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| LifecycleError::Client(e.to_string()))?;
        Ok(Self {
            vault: Mutex::new(vault),
            http,
            clock,
            workload_socket,
            slots: Mutex::new(HashMap::new()),
            last_reload_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    fn vault(&self) -> MutexGuard<'_, Vault> {
        // A panic while holding the lock cannot leave the vault half-written (writes are atomic
        // renames), so a poisoned lock is still safe to use.
        self.vault.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, connection: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(connection.to_owned()).or_default().clone()
    }

    /// The entry's kind; an unknown name re-reads the vault (added by the CLI since), at most
    /// once per [`RELOAD_INTERVAL_MS`].
    fn kind(&self, connection: &str) -> Result<EntryKind, CredentialError> {
        let mut vault = self.vault();
        if let Some(kind) = vault.kind(connection) {
            return Ok(kind.clone());
        }
        let now = self.clock.now_ms();
        let last = self.last_reload_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) < RELOAD_INTERVAL_MS {
            return Err(CredentialError::UnknownConnection(connection.to_owned()));
        }
        self.last_reload_ms.store(now, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = vault.reload() {
            tracing::warn!(error = %e, "cannot re-read the vault");
        }
        vault.kind(connection).cloned().ok_or_else(|| CredentialError::UnknownConnection(connection.to_owned()))
    }

    async fn token(&self, connection: &str, kind: &EntryKind) -> Result<Zeroizing<String>, CredentialError> {
        let slot = self.slot(connection);
        let mut slot = slot.lock().await;
        let now = self.clock.now_ms();
        if let Some(cached) = slot.token.as_ref().filter(|t| now < t.refresh_at_ms) {
            return Ok(cached.access_token.to_zeroizing());
        }
        match self.obtain(connection, kind, &mut slot).await {
            Ok(response) => {
                let obtained = self.clock.now_ms();
                let lifetime_ms =
                    response.expires_in.unwrap_or(DEFAULT_LIFETIME_SECS).clamp(1, MAX_LIFETIME_SECS) * 1000;
                let value = response.access_token.to_zeroizing();
                slot.token = Some(CachedToken {
                    access_token: response.access_token,
                    refresh_at_ms: obtained + lifetime_ms * 4 / 5,
                    expires_at_ms: obtained + lifetime_ms,
                });
                Ok(value)
            }
            Err(reason) => {
                // A token that is still valid is still good to use; the next call tries again.
                if let Some(cached) = slot.token.as_ref().filter(|t| self.clock.now_ms() < t.expires_at_ms) {
                    tracing::warn!(connection, %reason, "token refresh failed; the current token is still valid");
                    return Ok(cached.access_token.to_zeroizing());
                }
                slot.token = None;
                tracing::warn!(connection, %reason, "no credential for the connection");
                Err(CredentialError::Unavailable { connection: connection.to_owned(), reason })
            }
        }
    }

    /// One token request for the entry; the error is a reason safe to log (never a secret).
    async fn obtain(&self, connection: &str, kind: &EntryKind, slot: &mut Slot) -> Result<TokenResponse, String> {
        match kind {
            EntryKind::ApiKey => Err("an api_key entry has no token to obtain".into()),
            EntryKind::OauthClient { token_endpoint, client_id, scope, resource, auth } => {
                let secret = self.secret(connection)?;
                let client_secret = secret.value().ok_or("the entry has no client secret")?;
                let mut form = vec![("grant_type", "client_credentials")];
                form.extend(scope.as_deref().map(|s| ("scope", s)));
                form.extend(resource.as_deref().map(|r| ("resource", r)));
                let client = grant::ClientCredentials { client_id, secret: Some(client_secret), auth: *auth };
                grant::request(&self.http, token_endpoint, &form, Some(&client), Expect::Bearer).await
            }
            EntryKind::RefreshToken { token_endpoint, client_id, scope, auth } => {
                let secret = self.secret(connection)?;
                let refresh_token = match &slot.unsaved_refresh_token {
                    Some(unsaved) => unsaved.clone(),
                    None => secret.value().ok_or("the entry has no refresh token")?.clone(),
                };
                let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose())];
                form.extend(scope.as_deref().map(|s| ("scope", s)));
                let client = grant::ClientCredentials { client_id, secret: secret.client_secret(), auth: *auth };
                let response = grant::request(&self.http, token_endpoint, &form, Some(&client), Expect::Bearer).await?;
                if let Some(rotated) = &response.refresh_token
                    && rotated.expose() != refresh_token.expose()
                {
                    self.persist_rotation(connection, rotated, slot)?;
                }
                Ok(response)
            }
            EntryKind::IdJag {
                idp_token_endpoint,
                idp_client_id,
                idp_auth,
                audience,
                resource,
                scope,
                token_endpoint,
                client_id,
                auth,
            } => {
                let secret = self.secret(connection)?;
                let id_token = secret.value().ok_or("the entry has no ID token")?;
                // 1. The IdP trades the person's ID token for an ID-JAG for this AS and resource.
                let mut form = vec![
                    ("grant_type", grant::GRANT_TOKEN_EXCHANGE),
                    ("requested_token_type", grant::TOKEN_TYPE_ID_JAG),
                    ("subject_token", id_token.expose()),
                    ("subject_token_type", grant::TOKEN_TYPE_ID_TOKEN),
                    ("audience", audience.as_str()),
                ];
                form.extend(resource.as_deref().map(|r| ("resource", r)));
                form.extend(scope.as_deref().map(|s| ("scope", s)));
                let idp_client = grant::ClientCredentials {
                    client_id: idp_client_id,
                    secret: secret.idp_client_secret(),
                    auth: *idp_auth,
                };
                let id_jag = grant::request(&self.http, idp_token_endpoint, &form, Some(&idp_client), Expect::IdJag)
                    .await
                    .map_err(|e| format!("IdP: {e}"))?;
                // 2. The resource AS redeems it (no refresh token: the next one is a new ID-JAG).
                let mut form =
                    vec![("grant_type", grant::GRANT_JWT_BEARER), ("assertion", id_jag.access_token.expose())];
                form.extend(resource.as_deref().map(|r| ("resource", r)));
                form.extend(scope.as_deref().map(|s| ("scope", s)));
                let client = grant::ClientCredentials { client_id, secret: secret.client_secret(), auth: *auth };
                grant::request(&self.http, token_endpoint, &form, Some(&client), Expect::Bearer)
                    .await
                    .map_err(|e| format!("resource AS: {e}"))
            }
            EntryKind::MandateWorkload { token_endpoint, resource, scope, audience, spiffe_id } => {
                let socket = self.workload_socket.as_ref().ok_or("no SPIFFE Workload API socket is configured")?;
                let audience = audience.clone().unwrap_or_else(|| grant::issuer_of(token_endpoint));
                let svid = grant::fetch_jwt_svid(socket, &audience, spiffe_id.as_deref()).await?;
                let mut form =
                    vec![("grant_type", grant::GRANT_JWT_BEARER), ("assertion", svid.expose()), ("resource", resource)];
                form.extend(scope.as_deref().map(|s| ("scope", s)));
                grant::request(&self.http, token_endpoint, &form, None, Expect::Bearer).await
            }
        }
    }

    fn secret(&self, connection: &str) -> Result<crate::vault::Secret, String> {
        self.vault().get(connection).map_err(|e| e.to_string())
    }

    /// The AS rotated the refresh token: the old one is spent, so the new one must reach the
    /// vault before its access token is used. If it cannot be written it is kept in memory for
    /// the next refresh, and this call fails closed.
    fn persist_rotation(&self, connection: &str, rotated: &SecretString, slot: &mut Slot) -> Result<(), String> {
        match self.vault().rotate(connection, rotated.clone()) {
            Ok(_) => {
                slot.unsaved_refresh_token = None;
                tracing::info!(connection, "stored the rotated refresh token");
                Ok(())
            }
            Err(e) => {
                slot.unsaved_refresh_token = Some(rotated.clone());
                Err(format!("cannot store the rotated refresh token: {e}"))
            }
        }
    }
}

#[async_trait]
impl CredentialProvider for VaultCredentials {
    async fn credential(&self, connection: &str) -> Result<Zeroizing<String>, CredentialError> {
        let kind = self.kind(connection)?;
        match kind {
            EntryKind::ApiKey => {
                let unavailable =
                    |reason: String| CredentialError::Unavailable { connection: connection.to_owned(), reason };
                let secret = self.vault().get(connection).map_err(|e| unavailable(e.to_string()))?;
                secret.value().map(SecretString::to_zeroizing).ok_or_else(|| unavailable("no stored value".into()))
            }
            kind => self.token(connection, &kind).await,
        }
    }
}
