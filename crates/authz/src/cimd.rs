//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, MCP): a
//! `client_id` that is an https URL names the JSON document at that URL, which describes the
//! client. Documents are fetched with the SSRF-safe fetcher, validated, and cached within bounds
//! as Cache-Control says; failures and invalid documents are never cached.

use std::collections::HashMap;

use mandate_core::{Client, ClientAuthMethod, OAuthError, OAuthErrorCode};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::Authz;
use crate::jwks_fetch::{FETCH_TIMEOUT, FetchSpec, check_url, fetch_json};
use crate::register::{Rules, parse_metadata};

/// Largest document read (the draft recommends about 5 KB).
pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
/// Longest client_id URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Documents kept at most; beyond that the entry closest to expiry goes first.
pub const MAX_CACHED_DOCUMENTS: usize = 1024;
/// Metadata documents fetched at the same time at most, so client ids cannot fan Mandate out.
pub const MAX_CONCURRENT_FETCHES: usize = 16;

const DOCUMENT_FETCH: FetchSpec = FetchSpec { max_bytes: MAX_DOCUMENT_BYTES, accept: "application/json" };

/// What a metadata document may say: a public client (`none`, the default) or `private_key_jwt`
/// with keys inline or by URL; never a shared secret.
const DOCUMENT_RULES: Rules = Rules {
    default_auth: ClientAuthMethod::None,
    allowed_auth: &[ClientAuthMethod::None, ClientAuthMethod::PrivateKeyJwt],
    jwks_uri_allowed: true,
    name_required: true,
};

const SHARED_SECRET_METHODS: &[&str] = &["client_secret_basic", "client_secret_post", "client_secret_jwt"];

/// Whether a `client_id` names a metadata document rather than a registered client. Registered
/// ids are plain names, so any `http(s)://` id is a document URL (and http is refused unless
/// insecure mode allows loopback).
pub fn is_document_url(client_id: &str) -> bool {
    let lower = client_id.get(..8).unwrap_or(client_id).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// The client the document at `url` describes: from the cache while fresh, else fetched and
/// validated. Every refusal is `invalid_client`.
pub async fn resolve(authz: &Authz, url: &str) -> Result<Client, OAuthError> {
    if !authz.config.client_id_metadata_documents {
        return Err(OAuthError::invalid_client("client ID metadata documents are not accepted by this server"));
    }
    let now = authz.clock.now_secs();
    let cached = authz.cimd_cache.get(url, now);
    let (entry, max_age) = match cached {
        Some(entry) => (entry, None),
        None => {
            let (entry, max_age) = fetch_document(authz, url).await?;
            (entry, Some(max_age))
        }
    };
    let client = with_keys(authz, &entry).await?;
    // Cached only once everything, keys included, is known to be good.
    if let Some(max_age) = max_age {
        authz.cimd_cache.put(url, entry, now + max_age, now);
    }
    Ok(client)
}

/// A validated document: the client it describes, and where its keys are fetched from.
#[derive(Debug, Clone)]
struct Entry {
    client: Client,
    jwks_uri: Option<String>,
}

async fn fetch_document(authz: &Authz, url: &str) -> Result<(Entry, i64), OAuthError> {
    let insecure = authz.config.allow_insecure_federation;
    check_document_url(url, insecure).map_err(|why| rejected(&format!("URL {why}")))?;
    let permit = tokio::time::timeout(FETCH_TIMEOUT, authz.cimd_cache.fetches.acquire()).await;
    let Ok(Ok(_permit)) = permit else {
        return Err(OAuthError::new(
            OAuthErrorCode::TemporarilyUnavailable,
            "too many client metadata documents are being fetched; try again",
        ));
    };
    let fetched = fetch_json(url, insecure, &DOCUMENT_FETCH)
        .await
        .map_err(|e| OAuthError::invalid_client(format!("client metadata document could not be fetched: {e}")))?;
    let entry = validate(url, &fetched.body, insecure, authz.clock.now_ms()).map_err(|why| rejected(&why))?;
    Ok((entry, fetched.max_age_secs))
}

fn rejected(why: &str) -> OAuthError {
    OAuthError::invalid_client(format!("client metadata document {why}"))
}

/// The draft's URL rules (§3): https (http only to loopback in insecure mode), a path, no dot
/// segments, no fragment, no credentials; and the URL in its canonical form, because the
/// document's `client_id` must equal it character for character.
pub fn check_document_url(raw: &str, insecure: bool) -> Result<(), String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("is longer than {MAX_URL_BYTES} bytes"));
    }
    if has_dot_segment(raw) {
        return Err("must not contain . or .. path segments".into());
    }
    let url = check_url(raw, insecure).map_err(|e| e.to_string())?;
    if url.path() == "/" {
        return Err("must have a path".into());
    }
    if url.as_str() != raw {
        return Err(format!("is not in canonical form (that would be {})", url.as_str()));
    }
    Ok(())
}

/// `.` and `..` path segments, percent-encoded or not (URL parsers resolve them silently).
fn has_dot_segment(raw: &str) -> bool {
    let after_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |at| &after_scheme[at..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// Checks a fetched document and builds the client it describes.
fn validate(url: &str, body: &str, insecure: bool, now_ms: i64) -> Result<Entry, String> {
    let doc: Value = serde_json::from_str(body).map_err(|_| "is not JSON".to_owned())?;
    let doc = doc.as_object().ok_or("is not a JSON object")?;
    if doc.get("client_id").and_then(Value::as_str) != Some(url) {
        return Err("client_id differs from its URL".into());
    }
    refuse_shared_secrets(doc)?;
    let meta = parse_metadata(doc, &DOCUMENT_RULES).map_err(|e| format!("is not valid: {}", e.message()))?;
    if let Some(uri) = &meta.jwks_uri {
        check_url(uri, insecure).map_err(|e| format!("jwks_uri: {e}"))?;
    }
    let client = Client {
        client_id: url.to_owned(),
        agent: None,
        auth_method: meta.auth_method,
        secret_hash: None,
        jwks: meta.jwks,
        can_introspect: false,
        redirect_uris: meta.redirect_uris,
        grant_types: meta.grant_types,
        client_name: meta.client_name,
        metadata: Some(Value::Object(doc.clone()).to_string()),
        created_at_ms: now_ms,
    };
    Ok(Entry { client, jwks_uri: meta.jwks_uri })
}

/// Documents are public, so they may not carry or rely on a shared secret (draft §4.1).
fn refuse_shared_secrets(doc: &Map<String, Value>) -> Result<(), String> {
    if doc.contains_key("client_secret") || doc.contains_key("client_secret_expires_at") {
        return Err("must not contain client_secret".into());
    }
    match doc.get("token_endpoint_auth_method").and_then(Value::as_str) {
        Some(method) if SHARED_SECRET_METHODS.contains(&method) => {
            Err(format!("may not use shared-secret authentication ({method}); use none or private_key_jwt"))
        }
        _ => Ok(()),
    }
}

/// Keys named by `jwks_uri` come from the JWKS cache on every use (it follows their own
/// Cache-Control), so a key rotation does not wait for the document to expire.
async fn with_keys(authz: &Authz, entry: &Entry) -> Result<Client, OAuthError> {
    let mut client = entry.client.clone();
    if let Some(uri) = &entry.jwks_uri {
        let now = authz.clock.now_secs();
        let keys = authz
            .jwks_cache
            .keys(uri, now, authz.config.allow_insecure_federation)
            .await
            .map_err(|e| rejected(&format!("keys are unavailable: jwks_uri: {e}")))?;
        let jwks: Vec<&Value> = keys.iter().map(|k| k.jwk()).collect();
        client.jwks = Some(json!({ "keys": jwks }).to_string());
    }
    Ok(client)
}

struct Cached {
    entry: Entry,
    expires_at: i64,
}

/// Validated documents by URL, bounded in number, plus the limit on concurrent fetches.
pub struct MetadataCache {
    entries: Mutex<HashMap<String, Cached>>,
    fetches: Semaphore,
}

impl Default for MetadataCache {
    fn default() -> Self {
        Self { entries: Mutex::default(), fetches: Semaphore::new(MAX_CONCURRENT_FETCHES) }
    }
}

impl std::fmt::Debug for MetadataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataCache").field("documents", &self.entries.lock().len()).finish()
    }
}

impl MetadataCache {
    fn get(&self, url: &str, now: i64) -> Option<Entry> {
        let entries = self.entries.lock();
        entries.get(url).filter(|c| now < c.expires_at).map(|c| c.entry.clone())
    }

    fn put(&self, url: &str, entry: Entry, expires_at: i64, now: i64) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_CACHED_DOCUMENTS && !entries.contains_key(url) {
            entries.retain(|_, c| c.expires_at > now);
        }
        if entries.len() >= MAX_CACHED_DOCUMENTS && !entries.contains_key(url) {
            let soonest = entries.iter().min_by_key(|(_, c)| c.expires_at).map(|(k, _)| k.clone());
            if let Some(key) = soonest {
                entries.remove(&key);
            }
        }
        entries.insert(url.to_owned(), Cached { entry, expires_at });
    }

    /// How many documents are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use mandate_core::{ManualClock, TrustDomain};
    use mandate_crypto::{Alg, SigningKey};

    use super::*;
    use crate::AuthzConfig;
    use crate::jwks_fetch::{MAX_MAX_AGE_SECS, MIN_MAX_AGE_SECS};

    const NOW: i64 = 1_800_000_000;

    async fn authz(clock: &ManualClock, insecure: bool, enabled: bool) -> (Authz, tempfile::TempDir) {
        let config = AuthzConfig {
            allow_insecure_federation: insecure,
            client_id_metadata_documents: enabled,
            ..AuthzConfig::new("https://mandate.example", TrustDomain::parse("mandate.local").unwrap())
        };
        crate::test_support::started(config, Arc::new(clock.clone())).await
    }

    /// A loopback server for documents: `/doc/<name>` answers what `route` says, counted.
    struct Docs {
        base: String,
        hits: Arc<AtomicUsize>,
        key: SigningKey,
    }

    impl Docs {
        async fn start() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let hits = Arc::new(AtomicUsize::new(0));
            let key = SigningKey::generate(Alg::ES256).unwrap();
            let (counter, at, jwk) = (Arc::clone(&hits), base.clone(), key.public().jwk().clone());
            let app = axum::Router::new()
                .route(
                    "/doc/{name}",
                    get(move |axum::extract::Path(name): axum::extract::Path<String>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (at, jwk) = (at.clone(), jwk.clone());
                        async move { route(&at, &name, jwk) }
                    }),
                )
                .route("/jwks", {
                    let jwk = key.public().jwk().clone();
                    get(move || async move { axum::Json(json!({"keys": [jwk]})) })
                });
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { base, hits, key }
        }

        fn url(&self, name: &str) -> String {
            format!("{}/doc/{name}", self.base)
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn doc(url: &str) -> Value {
        json!({"client_id": url, "client_name": "Notes", "redirect_uris": ["http://127.0.0.1:9/cb"]})
    }

    fn json_reply(value: Value, cache_control: &'static str) -> axum::response::Response {
        ([(header::CACHE_CONTROL, cache_control)], axum::Json(value)).into_response()
    }

    fn route(base: &str, name: &str, jwk: Value) -> axum::response::Response {
        let url = format!("{base}/doc/{name}");
        let with = |field: &str, value: Value| {
            let mut d = doc(&url);
            d[field] = value;
            json_reply(d, "max-age=600")
        };
        match name {
            "good" => json_reply(doc(&url), "max-age=600"),
            "short" => json_reply(doc(&url), "max-age=1"),
            "forever" => json_reply(doc(&url), "max-age=99999999"),
            "other-id" => json_reply(doc("https://elsewhere.example/client.json"), "max-age=600"),
            "secret-method" => with("token_endpoint_auth_method", json!("client_secret_post")),
            "secret" => with("client_secret", json!("s3cret")),
            "no-name" => {
                let mut d = doc(&url);
                d.as_object_mut().unwrap().remove("client_name");
                json_reply(d, "max-age=600")
            }
            "no-redirects" => with("redirect_uris", json!([])),
            "bad-redirect" => with("redirect_uris", json!(["http://app.example/cb"])),
            "implicit" => with("response_types", json!(["token"])),
            "cc" => with("grant_types", json!(["client_credentials"])),
            "pkj" => {
                let mut d = doc(&url);
                d["token_endpoint_auth_method"] = json!("private_key_jwt");
                d["jwks"] = json!({"keys": [jwk]});
                json_reply(d, "max-age=600")
            }
            "pkj-uri" => {
                let mut d = doc(&url);
                d["token_endpoint_auth_method"] = json!("private_key_jwt");
                d["jwks_uri"] = json!(format!("{base}/jwks"));
                json_reply(d, "max-age=600")
            }
            "big" => with("padding", json!("x".repeat(MAX_DOCUMENT_BYTES))),
            "missing" => StatusCode::NOT_FOUND.into_response(),
            "created" => (StatusCode::CREATED, axum::Json(doc(&url))).into_response(),
            "moved" => axum::response::Redirect::temporary("/doc/good").into_response(),
            "html" => ([(header::CONTENT_TYPE, "text/html")], doc(&url).to_string()).into_response(),
            "array" => json_reply(json!([doc(&url)]), "max-age=600"),
            _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }

    #[test]
    fn document_urls_follow_the_draft() {
        for ok in ["https://app.example/client.json", "https://app.example:8443/a/b?v=1"] {
            assert_eq!(check_document_url(ok, false), Ok(()), "{ok}");
        }
        let refused = |raw: &str, insecure: bool| check_document_url(raw, insecure).unwrap_err();
        assert!(refused("https://app.example", false).contains("path"));
        assert!(refused("https://app.example/", false).contains("path"));
        assert!(refused("https://app.example/a/../b.json", false).contains(".."));
        assert!(refused("https://app.example/./b.json", false).contains(". or .."));
        assert!(refused("https://app.example/a/%2E%2e/b.json", false).contains(".."));
        assert!(refused("https://app.example/c.json#frag", false).contains("fragment"));
        assert!(refused("https://user:pw@app.example/c.json", false).contains("credentials"));
        assert!(refused("https://APP.example/c.json", false).contains("canonical"));
        assert!(refused("https://app.example:443/c.json", false).contains("canonical"));
        assert!(refused("http://app.example/c.json", false).contains("https"));
        assert!(refused("http://127.0.0.1:8/c.json", false).contains("https"));
        assert!(refused(&format!("https://app.example/{}", "a".repeat(MAX_URL_BYTES)), false).contains("longer"));
        // Secure mode refuses internal addresses before any connection is made.
        assert!(refused("https://10.0.0.1/x", false).contains("private"));
        assert!(refused("https://127.0.0.1/x", false).contains("loopback"));
        assert_eq!(check_document_url("http://127.0.0.1:8/c.json", true), Ok(()));
        assert!(refused("http://10.0.0.1/c.json", true).contains("https"));
    }

    #[test]
    fn only_http_urls_are_documents() {
        assert!(is_document_url("https://app.example/c.json"));
        assert!(is_document_url("HTTPS://app.example/c.json"));
        assert!(is_document_url("http://localhost/c.json"));
        assert!(!is_document_url("app.1234"));
        assert!(!is_document_url("dyn.abc"));
        assert!(!is_document_url("https"));
    }

    #[tokio::test]
    async fn a_valid_document_is_a_public_client_and_is_cached_per_max_age() {
        let docs = Docs::start().await;
        let clock = ManualClock::at_ms(NOW * 1000);
        let (authz, _dir) = authz(&clock, true, true).await;
        let url = docs.url("good");
        let client = resolve(&authz, &url).await.unwrap();
        assert_eq!(client.client_id, url);
        assert_eq!(client.auth_method, ClientAuthMethod::None);
        assert_eq!(client.agent, None);
        assert_eq!(client.redirect_uris, ["http://127.0.0.1:9/cb"]);
        assert_eq!(client.grant_types, ["authorization_code"]);
        assert_eq!(client.client_name.as_deref(), Some("Notes"));
        let metadata: Value = serde_json::from_str(client.metadata.as_deref().unwrap()).unwrap();
        assert_eq!(metadata, doc(&url));
        clock.advance_ms(599_000);
        resolve(&authz, &url).await.unwrap();
        assert_eq!(docs.hits(), 1, "fresh for max-age");
        clock.advance_ms(1_000);
        resolve(&authz, &url).await.unwrap();
        assert_eq!(docs.hits(), 2, "fetched again once expired");
    }

    #[tokio::test]
    async fn max_age_is_clamped() {
        let docs = Docs::start().await;
        let clock = ManualClock::at_ms(NOW * 1000);
        let (authz, _dir) = authz(&clock, true, true).await;
        resolve(&authz, &docs.url("short")).await.unwrap();
        clock.advance_ms((MIN_MAX_AGE_SECS - 1) * 1000);
        resolve(&authz, &docs.url("short")).await.unwrap();
        assert_eq!(docs.hits(), 1, "max-age=1 counts as {MIN_MAX_AGE_SECS}");
        resolve(&authz, &docs.url("forever")).await.unwrap();
        clock.advance_ms(MAX_MAX_AGE_SECS * 1000);
        resolve(&authz, &docs.url("forever")).await.unwrap();
        assert_eq!(docs.hits(), 3, "a day at most");
    }

    #[tokio::test]
    async fn invalid_documents_are_refused_and_never_cached() {
        let docs = Docs::start().await;
        let clock = ManualClock::at_ms(NOW * 1000);
        let (authz, _dir) = authz(&clock, true, true).await;
        let cases = [
            ("other-id", "client_id differs from its URL"),
            ("secret-method", "shared-secret"),
            ("secret", "client_secret"),
            ("no-name", "client_name is required"),
            ("no-redirects", "redirect_uris must not be empty"),
            ("bad-redirect", "must use https"),
            ("implicit", "response type"),
            ("cc", "grant type"),
            ("big", "exceeds"),
            ("missing", "HTTP 404"),
            ("created", "HTTP 201"),
            ("moved", "redirect"),
            ("html", "not JSON"),
            ("array", "not a JSON object"),
        ];
        for (name, expected) in cases {
            for _ in 0..2 {
                let error = resolve(&authz, &docs.url(name)).await.unwrap_err();
                assert_eq!(error.code, OAuthErrorCode::InvalidClient, "{name}");
                assert!(error.description.contains(expected), "{name}: {}", error.description);
            }
        }
        assert_eq!(docs.hits(), 2 * cases.len(), "every refusal was fetched afresh; the redirect was not followed");
        assert!(authz.cimd_cache.is_empty());
    }

    #[tokio::test]
    async fn private_key_jwt_keys_inline_or_by_url() {
        let docs = Docs::start().await;
        let clock = ManualClock::at_ms(NOW * 1000);
        let (authz, _dir) = authz(&clock, true, true).await;
        for name in ["pkj", "pkj-uri"] {
            let client = resolve(&authz, &docs.url(name)).await.unwrap();
            assert_eq!(client.auth_method, ClientAuthMethod::PrivateKeyJwt);
            let keys = crate::client_auth::client_keys(&client).unwrap();
            assert_eq!(keys[0].kid(), docs.key.kid(), "{name}");
        }
    }

    #[tokio::test]
    async fn secure_mode_refuses_loopback_documents_without_fetching() {
        let docs = Docs::start().await;
        let clock = ManualClock::at_ms(NOW * 1000);
        let (authz, _dir) = authz(&clock, false, true).await;
        let port = docs.base.rsplit(':').next().unwrap().to_owned();
        for url in [docs.url("good"), format!("https://localhost:{port}/doc/good"), "https://10.0.0.1/x".into()] {
            let error = resolve(&authz, &url).await.unwrap_err();
            assert_eq!(error.code, OAuthErrorCode::InvalidClient, "{url}");
        }
        let localhost = resolve(&authz, &format!("https://localhost:{port}/doc/good")).await.unwrap_err();
        assert!(localhost.description.contains("loopback address"), "{}", localhost.description);
        assert_eq!(docs.hits(), 0);
    }

    #[tokio::test]
    async fn documents_can_be_turned_off() {
        let docs = Docs::start().await;
        let clock = ManualClock::at_ms(NOW * 1000);
        let (authz, _dir) = authz(&clock, true, false).await;
        let error = resolve(&authz, &docs.url("good")).await.unwrap_err();
        assert!(error.description.contains("not accepted"), "{}", error.description);
        assert_eq!(docs.hits(), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = MetadataCache::default();
        let client = |id: &str| Client {
            client_id: id.into(),
            agent: None,
            auth_method: ClientAuthMethod::None,
            secret_hash: None,
            jwks: None,
            can_introspect: false,
            redirect_uris: vec![],
            grant_types: vec![],
            client_name: None,
            metadata: None,
            created_at_ms: 0,
        };
        for i in 0..MAX_CACHED_DOCUMENTS {
            let url = format!("https://app.example/{i}");
            let expires = 1000 + i64::try_from(i).unwrap();
            cache.put(&url, Entry { client: client(&url), jwks_uri: None }, expires, 0);
        }
        assert_eq!(cache.len(), MAX_CACHED_DOCUMENTS);
        cache.put("https://app.example/new", Entry { client: client("new"), jwks_uri: None }, 5000, 0);
        assert_eq!(cache.len(), MAX_CACHED_DOCUMENTS);
        assert!(cache.get("https://app.example/0", 0).is_none(), "the entry closest to expiry went");
        assert!(cache.get("https://app.example/new", 0).is_some());
        // Expired entries go first, all of them.
        cache.put("https://app.example/later", Entry { client: client("later"), jwks_uri: None }, 9000, 4000);
        assert_eq!(cache.len(), 2);
    }
}
