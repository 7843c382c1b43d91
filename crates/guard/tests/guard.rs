//! The guard in front of a real axum route, with tokens signed like Mandate's: Bearer and
//! DPoP-bound (RFC 9449 §7) presentation, one refusal per rule.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::get;
use mandate_core::{ManualClock, ScopeSet};
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey, random_token};
use mandate_guard::dpop::access_token_hash;
use mandate_guard::*;
use serde_json::{Value, json};
use tower::ServiceExt;

mod support;

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

fn config() -> GuardConfig {
    let mut config = GuardConfig::new(RESOURCE, vec![ISSUER.into()]).unwrap();
    config.scopes_supported = vec!["read".into(), "write".into()];
    config
}

fn guard_with(key: &SigningKey, config: GuardConfig) -> Arc<Guard> {
    let guard = Guard::new(
        config,
        Arc::new(StaticKeys::new(ISSUER, vec![key.public().clone()])),
        Arc::new(ManualClock::at_ms(NOW * 1000)),
    )
    .with_revocation(Arc::new(Revoked("revoked-jti")));
    Arc::new(guard)
}

fn app_with(guard: Arc<Guard>) -> Router {
    let read = Required::new(Arc::clone(&guard), "read").unwrap();
    let write = Required::new(Arc::clone(&guard), "read write").unwrap();
    let layer = |required: &Required| axum::middleware::from_fn_with_state(required.clone(), require_scopes);
    let whoami = |Extension(p): Extension<Principal>| async move {
        axum::Json(json!({"sub": p.subject, "jkt": p.jkt, "act": p.actor}))
    };
    let nested = Router::new().route("/inner", get(whoami)).route_layer(layer(&read));
    Router::new()
        .route("/read", get(|Extension(p): Extension<Principal>| async move { p.subject }))
        .route("/whoami", get(whoami))
        .route_layer(layer(&read))
        .merge(Router::new().route("/write", get(|| async { "written" })).route_layer(layer(&write)))
        .nest("/api", nested)
}

fn app(key: &SigningKey) -> Router {
    app_with(guard_with(key, config()))
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

/// An access token bound to `holder`'s key (`cnf.jkt`).
fn bound_token(issuer_key: &SigningKey, holder: &SigningKey) -> String {
    token_with(issuer_key, "at+jwt", |c| c["cnf"] = json!({"jkt": holder.kid()}))
}

/// A fresh proof by `holder` for `method url`, carrying `ath` for `token`.
fn proof_for(holder: &SigningKey, method: &str, url: &str, token: &str) -> String {
    let claims =
        json!({"jti": random_token(""), "htm": method, "htu": url, "iat": NOW, "ath": access_token_hash(token)});
    support::proof(holder, &claims)
}

fn dpop_key() -> SigningKey {
    mandate_crypto::init().unwrap();
    SigningKey::generate(Alg::ES256).unwrap()
}

struct Reply {
    status: StatusCode,
    challenges: Vec<String>,
    body: String,
}

impl Reply {
    fn bearer_challenge(&self) -> &str {
        self.challenges.iter().find(|c| c.starts_with("Bearer ")).map_or("", String::as_str)
    }

    fn dpop_challenge(&self) -> &str {
        self.challenges.iter().find(|c| c.starts_with("DPoP ")).map_or("", String::as_str)
    }
}

async fn send(app: &Router, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let challenges =
        response.headers().get_all(header::WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    Reply { status, challenges, body: String::from_utf8(body.to_vec()).unwrap() }
}

async fn call(app: &Router, path: &str, authorization: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = authorization.map(|a| ("authorization", a)).into_iter().collect();
    send(app, Method::GET, path, &headers).await
}

/// `GET path` with `Authorization: DPoP <token>` and the given DPoP header values.
async fn call_dpop(app: &Router, path: &str, token: &str, proofs: &[&str]) -> Reply {
    let authorization = format!("DPoP {token}");
    let mut headers = vec![("authorization", authorization.as_str())];
    headers.extend(proofs.iter().map(|p| ("dpop", *p)));
    send(app, Method::GET, path, &headers).await
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let app = app(&key);
    let token = token_with(&key, "at+jwt", |_| {});
    let reply = call(&app, "/read", Some(&format!("Bearer {token}"))).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "spiffe://td/agent/bot"));
}

#[tokio::test]
async fn missing_token_gets_challenges_pointing_at_the_metadata() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let reply = call(&app(&key), "/read", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.challenges,
        [
            "Bearer resource_metadata=\"https://api.example/.well-known/oauth-protected-resource/mcp\", scope=\"read\"",
            "DPoP algs=\"EdDSA ES256\", resource_metadata=\"https://api.example/.well-known/oauth-protected-resource/mcp\", scope=\"read\"",
        ]
    );
    let reply = call(&app(&key), "/read", Some("Basic dXNlcjpwYXNz")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.challenges.iter().all(|c| !c.contains("error=")));
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
        (
            "bound by mTLS, which is not checked here",
            token_with(&key, "at+jwt", |c| c["cnf"] = json!({"x5t#S256": "x"})),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in cases {
        let reply = call(&app, "/read", Some(&format!("Bearer {token}"))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(reply.bearer_challenge().contains("error=\"invalid_token\""), "{name}: {:?}", reply.challenges);
        assert!(reply.body.contains("invalid_token"), "{name}");
    }
}

#[tokio::test]
async fn too_narrow_a_token_gets_a_step_up_challenge() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let token = token_with(&key, "at+jwt", |_| {});
    let reply = call(&app(&key), "/write", Some(&format!("Bearer {token}"))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let challenge = reply.bearer_challenge();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("scope=\"read write\""), "all scopes the operation needs: {challenge}");
    let wide = token_with(&key, "at+jwt", |c| c["scope"] = json!("read write"));
    let reply = call(&app(&key), "/write", Some(&format!("Bearer {wide}"))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_in_the_query_or_two_headers_are_malformed_requests() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let token = token_with(&key, "at+jwt", |_| {});
    let reply = call(&app(&key), &format!("/read?access_token={token}"), None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let bearer = format!("Bearer {token}");
    let reply = send(&app(&key), Method::GET, "/read", &[("authorization", &bearer), ("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[test]
fn protected_resource_metadata_names_the_resource_its_servers_and_dpop() {
    let mut config = config();
    config.resource_name = Some("Example MCP".into());
    let doc = protected_resource_metadata(&config);
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["resource_name"], "Example MCP");
    assert_eq!(doc["dpop_signing_alg_values_supported"], json!(["EdDSA", "ES256"]));
    assert!(doc.get("dpop_bound_access_tokens_required").is_none());
    config.dpop_bound_access_tokens_required = true;
    assert_eq!(protected_resource_metadata(&config)["dpop_bound_access_tokens_required"], true);
}

#[test]
fn a_resource_must_be_an_absolute_web_url() {
    for bad in ["not a url", "/mcp", "urn:example:mcp", "ftp://files.example/"] {
        assert!(GuardConfig::new(bad, vec![ISSUER.into()]).is_err(), "{bad}");
    }
    let config = config();
    assert_eq!(config.request_url("/read"), "https://api.example/read");
    let behind_gateway = GuardConfig { public_origin: Some("https://gw.example:8443/".into()), ..config };
    assert_eq!(behind_gateway.request_url("/read"), "https://gw.example:8443/read");
}

// --- DPoP (RFC 9449 §7) ---

#[tokio::test]
async fn a_bound_token_with_a_good_proof_reaches_the_handler() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let token = token_with(&key, "at+jwt", |c| {
        c["cnf"] = json!({"jkt": holder.kid()});
        c["act"] = json!({"sub": "spiffe://td/agent/helper"});
    });
    let proof = proof_for(&holder, "GET", "https://api.example/whoami", &token);
    let reply = call_dpop(&app(&key), "/whoami", &token, &[&proof]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["jkt"], holder.kid());
    assert_eq!(body["act"], json!({"sub": "spiffe://td/agent/helper"}));
    // The scheme name is case-insensitive.
    let proof = proof_for(&holder, "GET", "https://api.example/whoami", &token);
    let reply =
        send(&app(&key), Method::GET, "/whoami", &[("authorization", &format!("dpop {token}")), ("dpop", &proof)])
            .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bound_token_presented_as_bearer_is_refused() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let token = bound_token(&key, &holder);
    // Even with a valid proof alongside: the scheme is what binds the token to the proof.
    let proof = proof_for(&holder, "GET", "https://api.example/read", &token);
    let bearer = format!("Bearer {token}");
    let reply = send(&app(&key), Method::GET, "/read", &[("authorization", &bearer), ("dpop", &proof)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.bearer_challenge().contains("error=\"invalid_token\""), "{:?}", reply.challenges);
    assert!(reply.body.contains("DPoP-bound token must be presented with DPoP"), "{}", reply.body);
}

#[tokio::test]
async fn the_dpop_scheme_with_an_unbound_token_is_refused() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let token = token_with(&key, "at+jwt", |_| {});
    let proof = proof_for(&holder, "GET", "https://api.example/read", &token);
    let reply = call_dpop(&app(&key), "/read", &token, &[&proof]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.dpop_challenge().contains("error=\"invalid_token\""), "{:?}", reply.challenges);
    assert!(reply.body.contains("not DPoP-bound"), "{}", reply.body);
}

/// Refusals of a bound token for its proof: 401 with the error in the DPoP challenge only.
fn assert_proof_refused(reply: &Reply, case: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}");
    let dpop = reply.dpop_challenge();
    assert!(dpop.starts_with("DPoP algs=\"EdDSA ES256\""), "{case}: {dpop}");
    assert!(dpop.contains("error=\"invalid_dpop_proof\""), "{case}: {dpop}");
    assert!(!reply.bearer_challenge().contains("error="), "{case}: {:?}", reply.challenges);
    assert!(reply.body.contains("invalid_dpop_proof"), "{case}");
}

#[tokio::test]
async fn proofs_for_another_request_token_or_key_are_refused() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let app = app(&key);
    let token = bound_token(&key, &holder);
    let other_token = token_with(&key, "at+jwt", |c| {
        c["cnf"] = json!({"jkt": holder.kid()});
        c["jti"] = json!("j2");
    });
    let here = "https://api.example/read";
    let cases = [
        ("no proof", vec![], "exactly one DPoP header"),
        ("proof for another URL", vec![proof_for(&holder, "GET", "https://api.example/write", &token)], "htu"),
        ("proof for another origin", vec![proof_for(&holder, "GET", "https://evil.example/read", &token)], "htu"),
        ("proof for another method", vec![proof_for(&holder, "POST", here, &token)], "htm"),
        ("ath of another token", vec![proof_for(&holder, "GET", here, &other_token)], "ath"),
        ("key other than cnf.jkt", vec![proof_for(&dpop_key(), "GET", here, &token)], "not signed by the key"),
        (
            "two DPoP headers",
            vec![proof_for(&holder, "GET", here, &token), proof_for(&holder, "GET", here, &token)],
            "exactly one DPoP header",
        ),
        ("not a JWT", vec!["garbage".to_owned()], "not a single compact JWT"),
    ];
    for (case, proofs, why) in cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let reply = call_dpop(&app, "/read", &token, &proofs).await;
        assert_proof_refused(&reply, case);
        assert!(reply.body.contains(why), "{case}: {}", reply.body);
    }
    let good = proof_for(&holder, "GET", here, &token);
    assert_eq!(call_dpop(&app, "/read", &token, &[&good]).await.status, StatusCode::OK, "the control case passes");
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let app = app(&key);
    let token = bound_token(&key, &holder);
    let proof = proof_for(&holder, "GET", "https://api.example/read", &token);
    assert_eq!(call_dpop(&app, "/read", &token, &[&proof]).await.status, StatusCode::OK);
    let again = call_dpop(&app, "/read", &token, &[&proof]).await;
    assert_proof_refused(&again, "replay");
    assert!(again.body.contains("already used"), "{}", again.body);
    let fresh = proof_for(&holder, "GET", "https://api.example/read", &token);
    assert_eq!(call_dpop(&app, "/read", &token, &[&fresh]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_stale_proof_is_refused() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let token = bound_token(&key, &holder);
    let claims = json!({"jti": "old", "htm": "GET", "htu": "https://api.example/read", "iat": NOW - 3600,
                        "ath": access_token_hash(&token)});
    let reply = call_dpop(&app(&key), "/read", &token, &[&support::proof(&holder, &claims)]).await;
    assert_proof_refused(&reply, "an hour old");
    assert!(reply.body.contains("too old"), "{}", reply.body);
}

#[tokio::test]
async fn htu_names_the_full_path_under_nested_routers_and_the_public_origin() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let token = bound_token(&key, &holder);
    let app = app(&key);
    let stripped = proof_for(&holder, "GET", "https://api.example/inner", &token);
    assert_proof_refused(&call_dpop(&app, "/api/inner", &token, &[&stripped]).await, "path without the nest prefix");
    let full = proof_for(&holder, "GET", "https://api.example/api/inner", &token);
    assert_eq!(call_dpop(&app, "/api/inner", &token, &[&full]).await.status, StatusCode::OK);

    let public = GuardConfig { public_origin: Some("https://gw.example".into()), ..config() };
    let app = app_with(guard_with(&key, public));
    let resource_origin = proof_for(&holder, "GET", "https://api.example/read", &token);
    assert_proof_refused(&call_dpop(&app, "/read", &token, &[&resource_origin]).await, "not the public origin");
    let via_gateway = proof_for(&holder, "GET", "https://gw.example/read", &token);
    assert_eq!(call_dpop(&app, "/read", &token, &[&via_gateway]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bearer_tokens_are_refused_where_dpop_is_required() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let strict = GuardConfig { dpop_bound_access_tokens_required: true, ..config() };
    let app = app_with(guard_with(&key, strict));
    let plain = token_with(&key, "at+jwt", |_| {});
    let reply = call(&app, "/read", Some(&format!("Bearer {plain}"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body.contains("only DPoP-bound"), "{}", reply.body);
    let token = bound_token(&key, &holder);
    let proof = proof_for(&holder, "GET", "https://api.example/read", &token);
    assert_eq!(call_dpop(&app, "/read", &token, &[&proof]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_plain_api_takes_the_request_view() {
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let holder = dpop_key();
    let guard = guard_with(&key, config());
    let token = bound_token(&key, &holder);
    let proof = proof_for(&holder, "POST", "https://api.example/mcp", &token);
    let authorization = format!("DPoP {token}");
    let request = Presented { authorization: Some(&authorization), dpop: vec![&proof], method: "POST", path: "/mcp" };
    let principal = guard.check(&request, &ScopeSet::parse("read").unwrap()).await.unwrap();
    assert_eq!(principal.jkt.as_deref(), Some(holder.kid()));
    assert_eq!(principal.actor, None);
    // The same proof a second time is a replay.
    let rejection = guard.check(&request, &ScopeSet::parse("read").unwrap()).await.unwrap_err();
    assert_eq!(rejection.kind, RejectionKind::InvalidDpopProof);
    let unbound = token_with(&key, "at+jwt", |_| {});
    let bearer = format!("Bearer {unbound}");
    let principal = guard.check(&Presented::bearer(Some(&bearer), "GET", "/x"), &ScopeSet::default()).await.unwrap();
    assert_eq!(principal.jkt, None);
}
