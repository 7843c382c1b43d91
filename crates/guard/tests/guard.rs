//! The guard in front of a real axum route, with tokens signed like Mandate's.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use mandate_core::ManualClock;
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use mandate_guard::*;
use serde_json::{Value, json};
use tower::ServiceExt;

const ISSUER: &str = "https://as.example";
const RESOURCE: &str = "https://api.example/mcp";
const NOW: i64 = 1_800_000_000;

struct Revoked(&'static str);

#[async_trait]
impl RevocationCheck for Revoked {
    async fn revoked(&self, p: &Principal) -> Result<Option<&'static str>, String> {
        Ok((p.jti == self.0).then_some("token was revoked"))
    }
}

fn app(key: &SigningKey) -> Router {
    let config = GuardConfig {
        resource: RESOURCE.into(),
        issuers: vec![ISSUER.into()],
        resource_metadata_url: metadata_url(RESOURCE).unwrap(),
        scopes_supported: vec!["read".into(), "write".into()],
        resource_name: None,
        leeway_secs: 0,
    };
    let guard = Guard::new(
        config,
        Arc::new(StaticKeys::new(ISSUER, vec![key.public().clone()])),
        Arc::new(ManualClock::at_ms(NOW * 1000)),
    )
    .with_revocation(Arc::new(Revoked("revoked-jti")));
    let guard = Arc::new(guard);
    let read = Required::new(Arc::clone(&guard), "read").unwrap();
    let write = Required::new(guard, "read write").unwrap();
    Router::new()
        .route("/read", get(|Extension(p): Extension<Principal>| async move { p.subject }))
        .route_layer(axum::middleware::from_fn_with_state(read, require_scopes))
        .merge(
            Router::new()
                .route("/write", get(|| async { "written" }))
                .route_layer(axum::middleware::from_fn_with_state(write, require_scopes)),
        )
}

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "spiffe://td/agent/bot", "aud": RESOURCE, "client_id": "c", "scope": "read",
           "iat": NOW - 10, "exp": NOW + 300, "jti": "j1", "mandate_owner": "alice"})
}

fn token_with(key: &SigningKey, typ: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    edit(&mut c);
    sign_jwt(key, typ, &c).unwrap()
}

async fn call(app: &Router, path: &str, authorization: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let challenge =
        response.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    (status, challenge, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let app = app(&key);
    let token = token_with(&key, "at+jwt", |_| {});
    let (status, _, body) = call(&app, "/read", Some(&format!("Bearer {token}"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "spiffe://td/agent/bot"));
}

#[tokio::test]
async fn missing_token_gets_a_challenge_pointing_at_the_metadata() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let (status, challenge, _) = call(&app(&key), "/read", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge,
        "Bearer resource_metadata=\"https://api.example/.well-known/oauth-protected-resource/mcp\", scope=\"read\""
    );
    let (status, challenge, _) = call(&app(&key), "/read", Some("Basic dXNlcjpwYXNz")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!challenge.contains("error="));
}

#[tokio::test]
async fn every_invalid_token_is_refused_with_invalid_token() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let stranger = SigningKey::generate(Alg::EdDSA).unwrap();
    let app = app(&key);
    let cases = [
        (
            "foreign audience (token passthrough)",
            token_with(&key, "at+jwt", |c| c["aud"] = json!("https://other.example")),
        ),
        ("untrusted issuer", token_with(&key, "at+jwt", |c| c["iss"] = json!("https://evil.example"))),
        ("expired", token_with(&key, "at+jwt", |c| c["exp"] = json!(NOW - 1))),
        ("not an access token", token_with(&key, "JWT", |_| {})),
        ("ID-JAG offered as access token", token_with(&key, "oauth-id-jag+jwt", |_| {})),
        ("signed by another key", token_with(&stranger, "at+jwt", |_| {})),
        (
            "missing client_id",
            token_with(&key, "at+jwt", |c| {
                c.as_object_mut().unwrap().remove("client_id");
            }),
        ),
        ("revoked", token_with(&key, "at+jwt", |c| c["jti"] = json!("revoked-jti"))),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in cases {
        let (status, challenge, body) = call(&app, "/read", Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(challenge.contains("error=\"invalid_token\""), "{name}: {challenge}");
        assert!(body.contains("invalid_token"), "{name}");
    }
}

#[tokio::test]
async fn too_narrow_a_token_gets_a_step_up_challenge() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let token = token_with(&key, "at+jwt", |_| {});
    let (status, challenge, _) = call(&app(&key), "/write", Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("scope=\"read write\""), "all scopes the operation needs: {challenge}");
    let wide = token_with(&key, "at+jwt", |c| c["scope"] = json!("read write"));
    let (status, _, _) = call(&app(&key), "/write", Some(&format!("Bearer {wide}"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_in_the_query_or_two_headers_are_malformed_requests() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let token = token_with(&key, "at+jwt", |_| {});
    let (status, _, _) = call(&app(&key), &format!("/read?access_token={token}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let request = Request::get("/read")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app(&key).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn protected_resource_metadata_names_the_resource_and_its_servers() {
    let config = GuardConfig {
        resource: RESOURCE.into(),
        issuers: vec![ISSUER.into()],
        resource_metadata_url: metadata_url(RESOURCE).unwrap(),
        scopes_supported: vec!["read".into()],
        resource_name: Some("Example MCP".into()),
        leeway_secs: 0,
    };
    let doc = protected_resource_metadata(&config);
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["resource_name"], "Example MCP");
}
