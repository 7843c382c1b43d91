//! OpenID Connect ID tokens Mandate issues as an identity provider (authorization code flow with
//! the `openid` scope), and their verification when one comes back as the subject of a token
//! exchange (ID-JAG requests, RFC 8693).

use mandate_core::OAuthError;
use mandate_crypto::{VerifyOptions, verify_jwt};
use serde_json::{Value, json};

use crate::{Authz, new_jti};

/// JOSE `typ` of ID tokens (OIDC Core leaves it open; `JWT` is what relying parties expect).
pub const ID_TOKEN_TYP: &str = "JWT";
/// How long an ID token is valid: it proves a sign-in, it is not a session.
pub const ID_TOKEN_TTL_SECS: i64 = 300;

/// Who signed in, for which client.
#[derive(Debug, Clone)]
pub struct SignIn<'a> {
    /// The person (owner name).
    pub subject: &'a str,
    pub client_id: &'a str,
    pub nonce: Option<&'a str>,
    /// When the person authenticated (Unix seconds).
    pub auth_time: i64,
}

pub fn sign_id_token(authz: &Authz, sign_in: &SignIn<'_>) -> Result<String, OAuthError> {
    sign_id_token_with(authz, sign_in, &[])
}

/// An ID token with further claims (e.g. CIBA's `urn:openid:params:jwt:claim:auth_req_id`).
pub fn sign_id_token_with(authz: &Authz, sign_in: &SignIn<'_>, extra: &[(&str, Value)]) -> Result<String, OAuthError> {
    let now = authz.clock.now_secs();
    let mut claims = json!({
        "iss": authz.config.issuer,
        "sub": sign_in.subject,
        "aud": sign_in.client_id,
        "azp": sign_in.client_id,
        "iat": now,
        "exp": now + ID_TOKEN_TTL_SECS,
        "auth_time": sign_in.auth_time,
        "jti": new_jti(),
    });
    if let (Some(nonce), Some(object)) = (sign_in.nonce, claims.as_object_mut()) {
        object.insert("nonce".into(), Value::String(nonce.to_owned()));
    }
    if let Some(object) = claims.as_object_mut() {
        for (name, value) in extra {
            object.insert((*name).to_owned(), value.clone());
        }
    }
    let key = authz.keys.signer(authz.config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    mandate_crypto::jose::sign_jwt(&key, ID_TOKEN_TYP, &claims).map_err(|e| OAuthError::server_error(e.to_string()))
}

/// Verifies an ID token this server issued: signature with a published token key, `iss`,
/// unexpired, and `aud` naming `client_id` (an ID token is only evidence for its own client).
/// Access tokens (`typ: at+jwt`) and other typed JWTs are refused by the `typ` check.
pub fn verify_own_id_token(authz: &Authz, token: &str, client_id: &str) -> Result<Value, String> {
    let keys = authz.keys.published();
    let options = VerifyOptions {
        typ: &[ID_TOKEN_TYP],
        typ_optional: true,
        issuer: Some(&authz.config.issuer),
        audience: &[client_id],
        now: authz.clock.now_secs(),
        leeway_secs: authz.config.leeway_secs,
    };
    verify_jwt(token, &keys, &options).map_err(|e| e.to_string())
}
