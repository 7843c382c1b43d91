//! SPIFFE over HTTP: the trust bundle endpoint (federation, `https_web` profile; TLS is the front
//! proxy's job), OIDC discovery and the JWK Set for JWT-SVIDs (what cloud workload identity
//! federation reads), and join-token bootstrap of an agent's first X.509-SVID.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::AuditEvent;
use mandate_workload::bundle::{TrustBundle, jwt_bundle_json, pem_encode};
use mandate_workload::svid::join::{self, JoinError};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::reply::{correlation_id, with_request_id};

/// Relying parties poll these documents; a minute of caching bounds how late they see a new key.
const CACHE_SECS: u32 = 60;

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/.well-known/spiffe-bundle", get(bundle))
        .route("/spiffe/.well-known/openid-configuration", get(openid_configuration))
        .route("/spiffe/jwks.json", get(jwks))
        .route("/spiffe/v1/join", post(join_endpoint))
}

/// `GET /.well-known/spiffe-bundle`: the SPIFFE bundle of our trust domain.
async fn bundle(State(state): State<AppState>) -> Response {
    match TrustBundle::current(&state.spiffe).await {
        Ok(bundle) => public_json(Json(bundle.to_json()).into_response()),
        Err(e) => {
            tracing::error!(error = %e, "building the SPIFFE bundle failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the bundle is unavailable")
        }
    }
}

/// `GET /spiffe/.well-known/openid-configuration`: OIDC discovery for JWT-SVIDs, whose `iss` is
/// `<issuer>/spiffe`, so this document sits at `<iss>/.well-known/openid-configuration`.
async fn openid_configuration(State(state): State<AppState>) -> Response {
    let issuer = state.spiffe.jwt_issuer();
    let doc = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti"],
    });
    public_json(Json(doc).into_response())
}

/// `GET /spiffe/jwks.json`: the JWT-SVID keys only (never the access-token keys).
async fn jwks(State(state): State<AppState>) -> Response {
    public_json(Json(jwt_bundle_json(&state.spiffe)).into_response())
}

fn public_json(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={CACHE_SECS}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    // Browsers and JS relying parties may read public trust material from anywhere.
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

#[derive(Debug, Deserialize)]
struct JoinBody {
    token: String,
    csr: String,
}

/// `POST /spiffe/v1/join` with `{"token": "mjt_…", "csr": "<PEM PKCS#10>"}`.
async fn join_endpoint(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation = correlation_id(&headers);
    let response = match parse_join(&headers, &body) {
        Ok(request) => match join::redeem(&state.spiffe, &request.token, &request.csr, &correlation).await {
            Ok(joined) => {
                let svid: String = joined.chain_der.iter().map(|der| pem_encode("CERTIFICATE", der)).collect();
                let bundle: String = joined.bundle_der.iter().map(|der| pem_encode("CERTIFICATE", der)).collect();
                let body = json!({
                    "spiffe_id": joined.spiffe_id,
                    "svid": svid,
                    "bundle": bundle,
                    "expires_at": joined.expires_at_ms.div_euclid(1000),
                });
                no_store((StatusCode::OK, Json(body)).into_response())
            }
            Err(e) => join_error(&e),
        },
        Err(e) => {
            // Refused before the token was looked at; still an attempt, so still audited.
            let event = AuditEvent::allow("spiffe.join", &correlation).refused(e.code(), &e.to_string());
            match state.authz.log.record(event).await {
                Ok(_) => join_error(&e),
                Err(_) => join_error(&JoinError::Unavailable("the audit log is unavailable".into())),
            }
        }
    };
    with_request_id(response, &correlation)
}

fn parse_join(headers: &HeaderMap, body: &[u8]) -> Result<JoinBody, JoinError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(JoinError::InvalidRequest("Content-Type must be application/json".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| JoinError::InvalidRequest(format!("body must be {{\"token\": string, \"csr\": PEM string}}: {e}")))
}

fn join_error(e: &JoinError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, e.code(), &e.to_string())
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    no_store((status, Json(json!({"error": code, "error_description": description}))).into_response())
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
