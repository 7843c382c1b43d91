//! `RemoteKeys` against a real local authorization server: discovery through RFC 8414 metadata,
//! caching, rate-limited refetch on an unknown `kid`, and refusal of bad answers.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use mandate_core::{Clock, ManualClock, ScopeSet};
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use mandate_guard::*;
use serde_json::{Value, json};

const RESOURCE: &str = "https://api.example/mcp";
const NOW_MS: i64 = 1_800_000_000_000;

/// What the fake authorization server answers.
#[derive(Default)]
struct Served {
    /// The `issuer` its metadata claims; `None` means its own base URL.
    claimed_issuer: Option<String>,
    jwks: Vec<Value>,
    /// `/jwks` answers with this instead of the key set.
    jwks_fault: Option<Fault>,
}

#[derive(Clone, Copy)]
enum Fault {
    Redirect,
    Missing,
    TooLarge,
}

struct Issuer {
    base: String,
    served: Arc<Mutex<Served>>,
    metadata_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct AppState {
    base: String,
    served: Arc<Mutex<Served>>,
    metadata_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
}

async fn metadata(State(s): State<AppState>) -> Json<Value> {
    s.metadata_hits.fetch_add(1, Ordering::SeqCst);
    let issuer = s.served.lock().unwrap().claimed_issuer.clone().unwrap_or_else(|| s.base.clone());
    Json(json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", s.base)}))
}

async fn jwks(State(s): State<AppState>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let served = s.served.lock().unwrap();
    match served.jwks_fault {
        Some(Fault::Redirect) => Redirect::temporary("/elsewhere").into_response(),
        Some(Fault::Missing) => StatusCode::NOT_FOUND.into_response(),
        Some(Fault::TooLarge) => {
            let pad = "x".repeat(70 * 1024);
            ([(header::CONTENT_TYPE, "application/json")], format!("{{\"keys\": [], \"pad\": \"{pad}\"}}"))
                .into_response()
        }
        None => Json(json!({"keys": served.jwks})).into_response(),
    }
}

async fn issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState {
        base: base.clone(),
        served: Arc::default(),
        metadata_hits: Arc::default(),
        jwks_hits: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/jwks", get(jwks))
        .route("/elsewhere", get(|| async { "redirect target" }))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer { base, served: state.served, metadata_hits: state.metadata_hits, jwks_hits: state.jwks_hits }
}

impl Issuer {
    fn publish(&self, keys: &[&SigningKey]) {
        self.served.lock().unwrap().jwks = keys.iter().map(|k| k.public().jwk().clone()).collect();
    }

    fn fetches(&self) -> (usize, usize) {
        (self.metadata_hits.load(Ordering::SeqCst), self.jwks_hits.load(Ordering::SeqCst))
    }

    /// A token by `key`, fresh at the clock's current time.
    fn token(&self, key: &SigningKey, clock: &ManualClock) -> String {
        let now = clock.now_secs();
        let claims = json!({"iss": self.base, "sub": "spiffe://td/agent/bot", "aud": RESOURCE, "client_id": "c",
                            "iat": now - 10, "exp": now + 300, "jti": "j1"});
        sign_jwt(key, "at+jwt", &claims).unwrap()
    }
}

fn key() -> SigningKey {
    mandate_crypto::init().unwrap();
    SigningKey::generate(Alg::ES256).unwrap()
}

fn guard(issuer: &Issuer, clock: &ManualClock) -> Guard {
    let config = GuardConfig::new(RESOURCE, vec![issuer.base.clone()]).unwrap();
    let keys = RemoteKeys::new(Arc::new(clock.clone())).unwrap();
    Guard::new(config, Arc::new(keys), Arc::new(clock.clone()))
}

async fn check(guard: &Guard, token: &str) -> Result<Principal, String> {
    let authorization = format!("Bearer {token}");
    let request = Presented::bearer(Some(&authorization), "GET", "/mcp");
    guard.check(&request, &ScopeSet::default()).await.map_err(|r| r.description)
}

#[tokio::test]
async fn keys_are_discovered_cached_and_refetched_for_a_new_kid_at_most_every_30_s() {
    let issuer = issuer().await;
    let (old, new) = (key(), key());
    issuer.publish(&[&old]);
    let clock = ManualClock::at_ms(NOW_MS);
    let guard = guard(&issuer, &clock);
    assert!(check(&guard, &issuer.token(&old, &clock)).await.is_ok());
    assert_eq!(issuer.fetches(), (1, 1));
    assert!(check(&guard, &issuer.token(&old, &clock)).await.is_ok());
    assert_eq!(issuer.fetches(), (1, 1), "served from the cache");

    // Rotation: the new kid is fetched for, but not sooner than 30 s after the last fetch.
    issuer.publish(&[&old, &new]);
    let refused = check(&guard, &issuer.token(&new, &clock)).await.unwrap_err();
    assert!(refused.contains("unknown signing key"), "{refused}");
    assert_eq!(issuer.fetches(), (1, 1));
    clock.advance_ms(30_000);
    assert!(check(&guard, &issuer.token(&new, &clock)).await.is_ok());
    assert_eq!(issuer.fetches(), (2, 2));
    // A made-up kid costs no fetch within the window.
    let stranger = key();
    assert!(check(&guard, &issuer.token(&stranger, &clock)).await.is_err());
    assert_eq!(issuer.fetches(), (2, 2));

    // Without an unknown kid, keys are fetched again once the cache lifetime is over, so a
    // withdrawn key stops verifying.
    issuer.publish(&[&new]);
    clock.advance_ms(3_600_000);
    assert!(check(&guard, &issuer.token(&old, &clock)).await.is_err());
    assert_eq!(issuer.fetches(), (3, 3));
    assert!(check(&guard, &issuer.token(&new, &clock)).await.is_ok());
}

#[tokio::test]
async fn metadata_for_another_issuer_is_refused() {
    let issuer = issuer().await;
    let signer = key();
    issuer.publish(&[&signer]);
    issuer.served.lock().unwrap().claimed_issuer = Some("https://as.example".into());
    let keys = RemoteKeys::new(Arc::new(ManualClock::at_ms(NOW_MS))).unwrap();
    let error = keys.issuer_keys(&issuer.base).await.unwrap_err();
    assert!(matches!(error, RemoteKeyError::IssuerMismatch { .. }), "{error}");
    assert_eq!(issuer.fetches(), (1, 0), "the key set of a mismatched issuer is never fetched");
}

#[tokio::test]
async fn redirects_errors_and_oversize_documents_are_refused_and_remembered() {
    let issuer = issuer().await;
    let signer = key();
    issuer.publish(&[&signer]);
    let clock = ManualClock::at_ms(NOW_MS);
    let keys = RemoteKeys::new(Arc::new(clock.clone())).unwrap();
    type Expected = fn(&RemoteKeyError) -> bool;
    let cases: [(Fault, Expected); 3] = [
        (Fault::Redirect, |e| matches!(e, RemoteKeyError::Redirect { .. })),
        (Fault::Missing, |e| matches!(e, RemoteKeyError::Status { status: 404, .. })),
        (Fault::TooLarge, |e| matches!(e, RemoteKeyError::TooLarge { .. })),
    ];
    for (fault, expected) in cases {
        issuer.served.lock().unwrap().jwks_fault = Some(fault);
        clock.advance_ms(30_000);
        let error = keys.issuer_keys(&issuer.base).await.unwrap_err();
        assert!(expected(&error), "{error}");
        // Within 30 s the failure is answered from memory.
        let hits = issuer.fetches();
        assert_eq!(keys.issuer_keys(&issuer.base).await.unwrap_err(), error);
        assert_eq!(issuer.fetches(), hits);
    }
    issuer.served.lock().unwrap().jwks_fault = None;
    clock.advance_ms(30_000);
    assert_eq!(keys.issuer_keys(&issuer.base).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_issuer_is_an_invalid_token_not_a_panic() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let clock = ManualClock::at_ms(NOW_MS);
    let config = GuardConfig::new(RESOURCE, vec![base.clone()]).unwrap();
    let guard = Guard::new(config, Arc::new(RemoteKeys::new(Arc::new(clock.clone())).unwrap()), Arc::new(clock));
    let claims = json!({"iss": base, "sub": "s", "aud": RESOURCE, "client_id": "c", "iat": NOW_MS / 1000,
                        "exp": NOW_MS / 1000 + 60, "jti": "j"});
    let token = sign_jwt(&key(), "at+jwt", &claims).unwrap();
    let refused = check(&guard, &token).await.unwrap_err();
    assert!(refused.contains("request failed"), "{refused}");
}
