//! Keys of remote authorization servers: the `jwks_uri` is discovered from the issuer's RFC 8414
//! metadata, the JWK Set fetched and cached per issuer, and fetched again (at most every
//! [`MIN_REFETCH_SECS`]) when a token names a `kid` the cached set lacks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mandate_core::Clock;
use mandate_crypto::PublicKey;
use mandate_crypto::jwk_set::parse_jwk_set;
use parking_lot::Mutex;
use serde_json::Value;

use crate::prm::well_known_url;
use crate::verify::KeySource;

/// Deadline for one document fetch, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest metadata or JWKS document read.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// An issuer is fetched at most this often after an unknown `kid` or a failure, so neither a
/// stream of made-up `kid`s nor a dead issuer costs a fetch per request.
pub const MIN_REFETCH_SECS: i64 = 30;
/// Keys are fetched again after this long even without an unknown `kid`, so a key the issuer
/// withdrew stops verifying.
pub const MAX_CACHE_SECS: i64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteKeyError {
    #[error("{url}: request failed: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: answered with a redirect, which is not followed")]
    Redirect { url: String },
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: document exceeds {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("metadata at {url} is for issuer {found:?}, not {expected:?}")]
    IssuerMismatch { url: String, found: Option<String>, expected: String },
}

#[derive(Default)]
struct Entry {
    keys: Option<Arc<Vec<PublicKey>>>,
    fetched_at: i64,
    attempted_at: Option<i64>,
    error: Option<RemoteKeyError>,
}

/// A [`KeySource`] that fetches each issuer's published keys. Issuer URLs come from the resource
/// server's operator (and the guard asks only for trusted issuers), never from requests, so
/// unlike the authorization server's federation fetcher this does no SSRF vetting of addresses.
pub struct RemoteKeys {
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Entry>>,
    /// One fetch per issuer at a time, so a burst of requests after expiry costs one fetch.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys").field("issuers", &self.entries.lock().len()).finish()
    }
}

impl RemoteKeys {
    pub fn new(clock: Arc<dyn Clock>) -> Result<Self, RemoteKeyError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| RemoteKeyError::Request { url: String::new(), reason: e.to_string() })?;
        Ok(Self { client, clock, entries: Mutex::default(), gates: Mutex::default() })
    }

    /// The issuer's keys: cached while younger than [`MAX_CACHE_SECS`], else fetched (a failure
    /// is remembered for [`MIN_REFETCH_SECS`]).
    pub async fn issuer_keys(&self, issuer: &str) -> Result<Arc<Vec<PublicKey>>, RemoteKeyError> {
        let now = self.clock.now_secs();
        if let Some(answer) = self.cached(issuer, now) {
            return answer;
        }
        let gate = self.gate(issuer);
        let _turn = gate.lock().await;
        if let Some(answer) = self.cached(issuer, now) {
            return answer;
        }
        self.refetch(issuer, now).await
    }

    /// Fetches again unless the last attempt was under [`MIN_REFETCH_SECS`] ago (`None`).
    pub async fn refresh_issuer(&self, issuer: &str) -> Result<Option<Arc<Vec<PublicKey>>>, RemoteKeyError> {
        let now = self.clock.now_secs();
        let gate = self.gate(issuer);
        let _turn = gate.lock().await;
        let attempted = self.entries.lock().get(issuer).and_then(|e| e.attempted_at);
        if attempted.is_some_and(|at| now - at < MIN_REFETCH_SECS) {
            return Ok(None);
        }
        self.refetch(issuer, now).await.map(Some)
    }

    fn cached(&self, issuer: &str, now: i64) -> Option<Result<Arc<Vec<PublicKey>>, RemoteKeyError>> {
        let entries = self.entries.lock();
        let entry = entries.get(issuer)?;
        match (&entry.keys, &entry.error, entry.attempted_at) {
            (Some(keys), _, _) if now - entry.fetched_at < MAX_CACHE_SECS => Some(Ok(Arc::clone(keys))),
            (_, Some(error), Some(at)) if now - at < MIN_REFETCH_SECS => Some(Err(error.clone())),
            _ => None,
        }
    }

    fn gate(&self, issuer: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.gates.lock().entry(issuer.to_owned()).or_default())
    }

    async fn refetch(&self, issuer: &str, now: i64) -> Result<Arc<Vec<PublicKey>>, RemoteKeyError> {
        let result = self.fetch(issuer).await;
        let mut entries = self.entries.lock();
        let entry = entries.entry(issuer.to_owned()).or_default();
        entry.attempted_at = Some(now);
        match result {
            Ok(keys) => {
                let keys = Arc::new(keys);
                entry.keys = Some(Arc::clone(&keys));
                entry.fetched_at = now;
                entry.error = None;
                Ok(keys)
            }
            Err(error) => {
                tracing::warn!(%issuer, %error, "fetching the issuer's keys failed");
                // A failed refresh leaves fresh keys usable; expired ones are not served.
                entry.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Metadata (whose `issuer` must be the one asked for, RFC 8414 §3.3), then its `jwks_uri`.
    async fn fetch(&self, issuer: &str) -> Result<Vec<PublicKey>, RemoteKeyError> {
        let invalid =
            |url: &str, reason: &str| RemoteKeyError::Invalid { url: url.to_owned(), reason: reason.to_owned() };
        let metadata_url =
            well_known_url(issuer, "oauth-authorization-server").ok_or_else(|| invalid(issuer, "not a URL"))?;
        let metadata: Value = serde_json::from_str(&self.get(&metadata_url).await?)
            .map_err(|_| invalid(&metadata_url, "metadata is not JSON"))?;
        let found = metadata.get("issuer").and_then(Value::as_str);
        if found != Some(issuer) {
            return Err(RemoteKeyError::IssuerMismatch {
                url: metadata_url,
                found: found.map(str::to_owned),
                expected: issuer.to_owned(),
            });
        }
        let jwks_uri = metadata
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|uri| uri.starts_with("https://") || uri.starts_with("http://"))
            .ok_or_else(|| invalid(&metadata_url, "metadata has no http(s) jwks_uri"))?;
        parse_jwk_set(&self.get(jwks_uri).await?).map_err(|reason| invalid(jwks_uri, &reason))
    }

    /// One GET: 200 only, no redirects, a bounded UTF-8 body.
    async fn get(&self, url: &str) -> Result<String, RemoteKeyError> {
        let failed =
            |e: reqwest::Error| RemoteKeyError::Request { url: url.to_owned(), reason: e.without_url().to_string() };
        let mut response =
            self.client.get(url).header(reqwest::header::ACCEPT, "application/json").send().await.map_err(failed)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(RemoteKeyError::Redirect { url: url.to_owned() });
        }
        if status != reqwest::StatusCode::OK {
            return Err(RemoteKeyError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let too_large = || RemoteKeyError::TooLarge { url: url.to_owned() };
        if response.content_length().is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body)
            .map_err(|_| RemoteKeyError::Invalid { url: url.to_owned(), reason: "body is not UTF-8".into() })
    }
}

#[async_trait]
impl KeySource for RemoteKeys {
    async fn keys(&self, issuer: &str) -> Result<Arc<Vec<PublicKey>>, String> {
        self.issuer_keys(issuer).await.map_err(|e| e.to_string())
    }

    async fn refresh(&self, issuer: &str) -> Result<Option<Arc<Vec<PublicKey>>>, String> {
        self.refresh_issuer(issuer).await.map_err(|e| e.to_string())
    }
}
