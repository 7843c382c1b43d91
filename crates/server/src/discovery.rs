//! Discovery documents: RFC 8414 authorization server metadata, the OpenID Connect discovery
//! variant, and the JWK Set of every key that may have signed a live token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;

const SIGNING_ALGS: [&str; 2] = ["EdDSA", "ES256"];
const CLIENT_AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "private_key_jwt"];
/// Where public clients (`none`, authorization code grant) may also call: token and revocation.
const PUBLIC_CLIENT_AUTH_METHODS: [&str; 4] = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"];
/// Claims of Mandate's ID tokens (`crate::authz::id_token`).
const ID_TOKEN_CLAIMS: [&str; 9] = ["iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "jti"];

fn metadata(state: &AppState) -> Value {
    let issuer = &state.authz.config.issuer;
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": false,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": [
            "client_credentials",
            mandate_authz::federation::GRANT_JWT_BEARER,
            mandate_authz::exchange::GRANT_TOKEN_EXCHANGE,
            mandate_authz::code::GRANT_AUTHORIZATION_CODE,
            mandate_authz::refresh::GRANT_REFRESH_TOKEN,
            mandate_authz::ciba::GRANT_CIBA,
        ],
        // CIBA (poll mode): the owner approves on Mandate's own page.
        "backchannel_authentication_endpoint": format!("{issuer}/oauth2/bc-authorize"),
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_user_code_parameter_supported": false,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": [mandate_authz::authorize::SCOPE_OPENID, mandate_authz::authorize::SCOPE_OFFLINE_ACCESS],
        "token_endpoint_auth_methods_supported": PUBLIC_CLIENT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "revocation_endpoint_auth_methods_supported": PUBLIC_CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "access_token_signing_alg_values_supported": [state.authz.config.access_token_alg.as_str()],
        // ID-JAGs: redeemed here (resource-AS role) and issued here (IdP role).
        "authorization_grant_profiles_supported": [mandate_authz::idjag::GRANT_PROFILE_ID_JAG],
        "identity_chaining_requested_token_types_supported": [mandate_authz::idjag::TOKEN_TYPE_ID_JAG],
        "dpop_signing_alg_values_supported": mandate_authz::dpop::SIGNING_ALGS,
    });
    crate::register::advertise(&state.authz.config, &mut doc);
    doc
}

pub(crate) async fn authorization_server(State(state): State<AppState>) -> Response {
    cacheable(Json(metadata(&state)).into_response(), 300)
}

pub(crate) async fn openid_configuration(State(state): State<AppState>) -> Response {
    let mut doc = metadata(&state);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("subject_types_supported".into(), json!(["public"]));
        // ID tokens are signed like access tokens, with the configured algorithm.
        obj.insert(
            "id_token_signing_alg_values_supported".into(),
            json!([state.authz.config.access_token_alg.as_str()]),
        );
        obj.insert("claims_supported".into(), json!(ID_TOKEN_CLAIMS));
    }
    cacheable(Json(doc).into_response(), 300)
}

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    let body = state.authz.keys.jwks();
    let mut response = cacheable(Json(body.as_ref()).into_response(), 60);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
    response
}

fn cacheable(mut response: Response, max_age_secs: u32) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age_secs}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}
