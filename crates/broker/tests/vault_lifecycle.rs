//! Token lifecycle against a real token endpoint on loopback (a small axum app written here that
//! checks client authentication, counts requests and rotates refresh tokens): caching, refresh
//! ahead of expiry on an injected clock, rotation persisted to the vault, single-flight under
//! concurrency, and failing closed.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use mandate_broker::credentials::{CredentialError, CredentialProvider};
use mandate_broker::lifecycle::{TokenClientOptions, VaultCredentials};
use mandate_broker::vault::{ClientAuth, EntryKind, KdfParams, Secret, SecretString, Vault, VaultKey, VaultOptions};
use mandate_core::ManualClock;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use zeroize::Zeroizing;

const PASSPHRASE: &str = "correct horse battery staple";
const CLIENT_ID: &str = "broker client";
const CLIENT_SECRET: &str = "s3cret:with/specials";
const FIRST_REFRESH: &str = "rt-0";
const START_MS: i64 = 1_800_000_000_000;

/// The token endpoint's state.
#[derive(Default)]
struct AsState {
    requests: AtomicUsize,
    /// The one refresh token currently valid (rotated on every use).
    current_refresh: Mutex<String>,
    fail: AtomicBool,
    /// When set, each request announces itself on `arrived` and waits for a permit.
    gate: Option<(Arc<Notify>, Arc<Semaphore>)>,
    /// Form fields of the last request.
    last_form: Mutex<HashMap<String, String>>,
}

fn issued(n: usize) -> String {
    format!("at-{n}")
}

async fn token(State(state): State<Arc<AsState>>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    *state.last_form.lock().unwrap() = form.clone();
    if let Some((arrived, release)) = &state.gate {
        arrived.notify_one();
        let _permit = release.acquire().await.unwrap();
    }
    let error = |code: &str| (StatusCode::BAD_REQUEST, axum::Json(json!({"error": code}))).into_response();
    if state.fail.load(Ordering::SeqCst) {
        return error("temporarily_unavailable");
    }
    let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "));
    let authenticated = match basic {
        Some(b64) => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            decoded == b"broker+client:s3cret%3Awith%2Fspecials"
        }
        None => {
            form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        }
    };
    if !authenticated {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            axum::Json(json!({"access_token": issued(n), "token_type": "Bearer", "expires_in": 100})).into_response()
        }
        Some("refresh_token") => {
            let mut current = state.current_refresh.lock().unwrap();
            if form.get("refresh_token") != Some(&*current) {
                return error("invalid_grant");
            }
            *current = format!("rt-{n}");
            axum::Json(json!({"access_token": issued(n), "token_type": "Bearer", "expires_in": 100, "refresh_token": *current}))
                .into_response()
        }
        _ => error("unsupported_grant_type"),
    }
}

struct Fixture {
    state: Arc<AsState>,
    clock: ManualClock,
    path: PathBuf,
    credentials: Arc<VaultCredentials>,
    _dir: tempfile::TempDir,
}

fn key() -> VaultKey {
    VaultKey::passphrase(Zeroizing::new(PASSPHRASE.into())).unwrap()
}

async fn serve(state: Arc<AsState>) -> String {
    let app = axum::Router::new().route("/oauth2/token", post(token)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/oauth2/token")
}

async fn fixture(state: AsState) -> Fixture {
    let state = Arc::new(state);
    *state.current_refresh.lock().unwrap() = FIRST_REFRESH.into();
    let endpoint = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.json");
    let clock = ManualClock::at_ms(START_MS);
    let options = VaultOptions { kdf: KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }, clock: Arc::new(clock.clone()) };
    let mut vault = Vault::create_with(&path, &key(), &options).unwrap();
    vault.add("github:work", Secret::api_key(SecretString::new("ghp_static"))).unwrap();
    for (name, auth) in [("as:basic", ClientAuth::ClientSecretBasic), ("as:post", ClientAuth::ClientSecretPost)] {
        let kind = EntryKind::OauthClient {
            token_endpoint: endpoint.clone(),
            client_id: CLIENT_ID.into(),
            scope: Some("read".into()),
            resource: Some("https://api.example".into()),
            auth,
        };
        vault.add(name, Secret::oauth_client(kind, SecretString::new(CLIENT_SECRET))).unwrap();
    }
    let kind = EntryKind::RefreshToken {
        token_endpoint: endpoint.clone(),
        client_id: CLIENT_ID.into(),
        scope: None,
        auth: ClientAuth::ClientSecretBasic,
    };
    let secret = Secret::refresh_token(kind, SecretString::new(FIRST_REFRESH), Some(SecretString::new(CLIENT_SECRET)));
    vault.add("as:user", secret).unwrap();
    let workload = EntryKind::MandateWorkload {
        token_endpoint: endpoint,
        resource: "https://api.example".into(),
        scope: None,
        audience: None,
        spiffe_id: None,
    };
    vault.add("mandate:self", Secret::mandate_workload(workload)).unwrap();
    let credentials =
        VaultCredentials::new(vault, TokenClientOptions::default(), Arc::new(clock.clone()), None).unwrap();
    Fixture { state, clock, path, credentials: Arc::new(credentials), _dir: dir }
}

fn stored_refresh_token(path: &Path) -> String {
    let vault = Vault::open(path, &key()).unwrap();
    vault.get("as:user").unwrap().value().unwrap().expose().to_owned()
}

fn requests(f: &Fixture) -> usize {
    f.state.requests.load(Ordering::SeqCst)
}

#[tokio::test]
async fn an_api_key_is_returned_as_stored() {
    let f = fixture(AsState::default()).await;
    assert_eq!(f.credentials.credential("github:work").await.unwrap().as_str(), "ghp_static");
    assert_eq!(requests(&f), 0);
}

#[tokio::test]
async fn client_credentials_tokens_are_cached_then_refreshed_ahead_of_expiry() {
    let f = fixture(AsState::default()).await;
    let first = f.credentials.credential("as:basic").await.unwrap();
    assert_eq!(first.as_str(), issued(1));
    let form = f.state.last_form.lock().unwrap().clone();
    assert_eq!(form.get("scope").map(String::as_str), Some("read"));
    assert_eq!(form.get("resource").map(String::as_str), Some("https://api.example"));
    assert!(!form.contains_key("client_secret"), "basic auth keeps the secret out of the body");

    f.clock.advance_ms(79_000);
    assert_eq!(f.credentials.credential("as:basic").await.unwrap().as_str(), issued(1), "cache hit");
    assert_eq!(requests(&f), 1);

    // 80% of the 100 s lifetime: a new token before the old one expires.
    f.clock.advance_ms(1_000);
    assert_eq!(f.credentials.credential("as:basic").await.unwrap().as_str(), issued(2));
    assert_eq!(requests(&f), 2);
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let f = fixture(AsState::default()).await;
    assert_eq!(f.credentials.credential("as:post").await.unwrap().as_str(), issued(1));
    let form = f.state.last_form.lock().unwrap().clone();
    assert_eq!(form.get("client_secret").map(String::as_str), Some(CLIENT_SECRET));
}

#[tokio::test]
async fn a_rotated_refresh_token_is_persisted_before_use_and_used_next_time() {
    let f = fixture(AsState::default()).await;
    assert_eq!(f.credentials.credential("as:user").await.unwrap().as_str(), issued(1));
    assert_eq!(stored_refresh_token(&f.path), "rt-1", "the new refresh token reached the vault file");

    // The AS accepts only the newest refresh token: the second refresh must present rt-1.
    f.clock.advance_ms(90_000);
    assert_eq!(f.credentials.credential("as:user").await.unwrap().as_str(), issued(2));
    assert_eq!(stored_refresh_token(&f.path), "rt-2");
    let vault = Vault::open(&f.path, &key()).unwrap();
    assert_eq!(vault.get("as:user").unwrap().client_secret().unwrap().expose(), CLIENT_SECRET);
    assert!(vault.list().iter().find(|e| e.name == "as:user").unwrap().rotated.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_refresh() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let f = fixture(AsState { gate: Some((arrived.clone(), release.clone())), ..AsState::default() }).await;
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let credentials = f.credentials.clone();
            tokio::spawn(async move { credentials.credential("as:user").await })
        })
        .collect();
    // The first request is held at the AS while the other callers pile up behind it.
    arrived.notified().await;
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    // Enough permits for every caller, so a missing single-flight shows as a count, not a hang.
    release.add_permits(64);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().as_str(), issued(1));
    }
    assert_eq!(requests(&f), 1, "one refresh for sixteen callers");
    assert_eq!(stored_refresh_token(&f.path), "rt-1");
}

#[tokio::test]
async fn a_failed_refresh_fails_closed_once_the_token_has_expired() {
    let f = fixture(AsState::default()).await;
    assert_eq!(f.credentials.credential("as:basic").await.unwrap().as_str(), issued(1));
    f.state.fail.store(true, Ordering::SeqCst);

    // Past the refresh point but still valid: the current token is still served.
    f.clock.advance_ms(90_000);
    assert_eq!(f.credentials.credential("as:basic").await.unwrap().as_str(), issued(1));

    // Expired: no credential at all, and the reason carries the AS's code, never a secret.
    f.clock.advance_ms(10_000);
    match f.credentials.credential("as:basic").await {
        Err(CredentialError::Unavailable { connection, reason }) => {
            assert_eq!(connection, "as:basic");
            assert!(reason.contains("400 temporarily_unavailable"), "{reason}");
            assert!(!reason.contains(CLIENT_SECRET) && !reason.contains("at-1"));
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|_| "a credential")),
    }
    // Recovery once the AS answers again.
    f.state.fail.store(false, Ordering::SeqCst);
    assert_eq!(f.credentials.credential("as:basic").await.unwrap().as_str(), issued(4));
}

#[tokio::test]
async fn a_refused_refresh_token_is_unavailable_and_the_vault_keeps_it() {
    let f = fixture(AsState::default()).await;
    *f.state.current_refresh.lock().unwrap() = "rt-other".into();
    let result = f.credentials.credential("as:user").await;
    assert!(matches!(result, Err(CredentialError::Unavailable { ref reason, .. }) if reason.contains("invalid_grant")));
    assert_eq!(stored_refresh_token(&f.path), FIRST_REFRESH);
}

#[tokio::test]
async fn unknown_connections_and_missing_workload_api_are_refused() {
    let f = fixture(AsState::default()).await;
    assert!(matches!(
        f.credentials.credential("github:personal").await,
        Err(CredentialError::UnknownConnection(name)) if name == "github:personal"
    ));
    assert!(matches!(
        f.credentials.credential("mandate:self").await,
        Err(CredentialError::Unavailable { ref reason, .. }) if reason.contains("Workload API")
    ));
    assert_eq!(requests(&f), 0);
}

#[tokio::test]
async fn entries_added_by_another_process_are_found() {
    let f = fixture(AsState::default()).await;
    let mut other = Vault::open(&f.path, &key()).unwrap();
    other.add("github:personal", Secret::api_key(SecretString::new("ghp_personal"))).unwrap();
    assert_eq!(f.credentials.credential("github:personal").await.unwrap().as_str(), "ghp_personal");
}

#[tokio::test]
async fn unknown_connections_reread_the_vault_at_most_once_a_second() {
    let f = fixture(AsState::default()).await;
    assert!(matches!(f.credentials.credential("slack:team").await, Err(CredentialError::UnknownConnection(_))));
    let mut other = Vault::open(&f.path, &key()).unwrap();
    other.add("slack:team", Secret::api_key(SecretString::new("xoxb-team"))).unwrap();
    // Within the interval the file is not read again.
    f.clock.advance_ms(999);
    assert!(matches!(f.credentials.credential("slack:team").await, Err(CredentialError::UnknownConnection(_))));
    f.clock.advance_ms(1);
    assert_eq!(f.credentials.credential("slack:team").await.unwrap().as_str(), "xoxb-team");
}

#[tokio::test]
async fn a_rotation_that_cannot_be_stored_fails_closed_but_keeps_the_new_refresh_token() {
    let f = fixture(AsState::default()).await;
    // Another process rekeys the vault: this broker can no longer write it.
    let mut other = Vault::open(&f.path, &key()).unwrap();
    other.rekey(&VaultKey::Passphrase(SecretString::new("the operator's new passphrase")), fast_kdf()).unwrap();

    let first = f.credentials.credential("as:user").await;
    assert!(
        matches!(first, Err(CredentialError::Unavailable { ref reason, .. }) if reason.contains("cannot store the rotated refresh token")),
        "{:?}",
        first.map(|_| "a credential")
    );
    // The AS already spent rt-0; the next refresh presents the rt-1 it returned, from memory.
    let _ = f.credentials.credential("as:user").await;
    assert_eq!(f.state.last_form.lock().unwrap().get("refresh_token").map(String::as_str), Some("rt-1"));
    assert_eq!(requests(&f), 2);
}

fn fast_kdf() -> KdfParams {
    KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }
}

const ID_TOKEN: &str = "eyJ.person-id-token.sig";
const AS_ISSUER: &str = "https://as.example";

/// An IdP (token exchange to ID-JAG) and a resource AS (JWT bearer grant redeeming it).
#[derive(Default)]
struct IdJagState {
    minted: AtomicUsize,
    redeemed: AtomicUsize,
    last_id_jag: Mutex<String>,
    idp_form: Mutex<HashMap<String, String>>,
    as_form: Mutex<HashMap<String, String>>,
}

fn basic_is(headers: &HeaderMap, id: &str, secret: &str) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Basic {expected}"))
}

fn refuse(status: StatusCode, code: &str) -> Response {
    (status, axum::Json(json!({"error": code}))).into_response()
}

async fn idp_token(State(state): State<Arc<IdJagState>>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    *state.idp_form.lock().unwrap() = form.clone();
    if !basic_is(&headers, "idp-client", "idp-secret") {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let field = |k: &str| form.get(k).map(String::as_str);
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:token-exchange")
        || field("requested_token_type") != Some("urn:ietf:params:oauth:token-type:id-jag")
        || field("subject_token_type") != Some("urn:ietf:params:oauth:token-type:id_token")
        || field("subject_token") != Some(ID_TOKEN)
        || field("audience") != Some(AS_ISSUER)
    {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let n = state.minted.fetch_add(1, Ordering::SeqCst) + 1;
    let id_jag = format!("idjag-{n}");
    *state.last_id_jag.lock().unwrap() = id_jag.clone();
    axum::Json(json!({
        "access_token": id_jag,
        "issued_token_type": "urn:ietf:params:oauth:token-type:id-jag",
        "token_type": "N_A",
        "expires_in": 300
    }))
    .into_response()
}

async fn as_token(State(state): State<Arc<IdJagState>>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    *state.as_form.lock().unwrap() = form.clone();
    if !basic_is(&headers, "as-client", "as-secret") {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let last = state.last_id_jag.lock().unwrap().clone();
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        || form.get("assertion") != Some(&last)
    {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let n = state.redeemed.fetch_add(1, Ordering::SeqCst) + 1;
    axum::Json(json!({"access_token": format!("as-at-{n}"), "token_type": "Bearer", "expires_in": 100})).into_response()
}

async fn id_jag_fixture(id_token: &str) -> (Arc<IdJagState>, ManualClock, VaultCredentials, tempfile::TempDir) {
    let state = Arc::new(IdJagState::default());
    let app = axum::Router::new()
        .route("/idp/token", post(idp_token))
        .route("/as/token", post(as_token))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(START_MS);
    let options = VaultOptions { kdf: fast_kdf(), clock: Arc::new(clock.clone()) };
    let mut vault = Vault::create_with(&dir.path().join("vault.json"), &key(), &options).unwrap();
    let kind = EntryKind::IdJag {
        idp_token_endpoint: format!("{base}/idp/token"),
        idp_client_id: "idp-client".into(),
        idp_auth: ClientAuth::ClientSecretBasic,
        audience: AS_ISSUER.into(),
        resource: Some("https://api.example".into()),
        scope: Some("read".into()),
        token_endpoint: format!("{base}/as/token"),
        client_id: "as-client".into(),
        auth: ClientAuth::ClientSecretBasic,
    };
    let secret = Secret::id_jag(
        kind,
        SecretString::new(id_token),
        SecretString::new("as-secret"),
        SecretString::new("idp-secret"),
    );
    vault.add("crm:alice", secret).unwrap();
    let credentials =
        VaultCredentials::new(vault, TokenClientOptions::default(), Arc::new(clock.clone()), None).unwrap();
    (state, clock, credentials, dir)
}

#[tokio::test]
async fn an_id_jag_is_minted_redeemed_and_minted_again_when_the_token_runs_out() {
    let (state, clock, credentials, _dir) = id_jag_fixture(ID_TOKEN).await;
    assert_eq!(credentials.credential("crm:alice").await.unwrap().as_str(), "as-at-1");
    let idp_form = state.idp_form.lock().unwrap().clone();
    assert_eq!(idp_form.get("resource").map(String::as_str), Some("https://api.example"));
    assert_eq!(idp_form.get("scope").map(String::as_str), Some("read"));
    assert_eq!(state.as_form.lock().unwrap().get("assertion").map(String::as_str), Some("idjag-1"));

    clock.advance_ms(79_000);
    assert_eq!(credentials.credential("crm:alice").await.unwrap().as_str(), "as-at-1");
    assert_eq!((state.minted.load(Ordering::SeqCst), state.redeemed.load(Ordering::SeqCst)), (1, 1));

    // No refresh token: at 80% of the lifetime a fresh ID-JAG is minted and redeemed.
    clock.advance_ms(1_000);
    assert_eq!(credentials.credential("crm:alice").await.unwrap().as_str(), "as-at-2");
    assert_eq!(state.as_form.lock().unwrap().get("assertion").map(String::as_str), Some("idjag-2"));
    assert_eq!((state.minted.load(Ordering::SeqCst), state.redeemed.load(Ordering::SeqCst)), (2, 2));
}

#[tokio::test]
async fn an_id_jag_the_idp_refuses_fails_closed_before_the_resource_as() {
    let (state, _clock, credentials, _dir) = id_jag_fixture("eyJ.expired-id-token.sig").await;
    match credentials.credential("crm:alice").await {
        Err(CredentialError::Unavailable { reason, .. }) => {
            assert!(reason.starts_with("IdP: ") && reason.contains("invalid_grant"), "{reason}");
            assert!(!reason.contains("expired-id-token"));
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|_| "a credential")),
    }
    assert_eq!(state.redeemed.load(Ordering::SeqCst), 0);
    assert!(state.as_form.lock().unwrap().is_empty(), "nothing reached the resource AS");
}
