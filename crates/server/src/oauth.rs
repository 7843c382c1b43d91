//! `/oauth2/token`, `/oauth2/introspect` and `/oauth2/revoke`: form parsing, client credential
//! extraction and the mapping of `authz` results to RFC 6749 responses. Refusals that happen
//! before `authz` is reached (bad media type, oversize body, repeated or conflicting
//! parameters) are audited here.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mandate_authz::client_auth::{ASSERTION_TYPE_JWT_BEARER, Presented, authenticate};
use mandate_authz::token::TokenRequest;
use mandate_authz::{Caller, record_refusal};
use mandate_core::{AuditEvent, ClientAuthMethod, OAuthError};
use zeroize::Zeroizing;

use crate::AppState;
use crate::reply::{Form, OAuthReply, correlation_id, with_request_id};

pub(crate) async fn token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let mut grant_type = None;
    let result = token_flow(&state, &headers, body, &correlation, &mut grant_type).await;
    state.metrics.token_outcome(grant_type.as_deref(), result.as_ref().map(drop).map_err(|r| r.error.code));
    let response = match result {
        Ok(issued) => no_store(Json(issued).into_response()),
        Err(reply) => reply.into_response(),
    };
    with_request_id(with_dpop_nonce(&state, &headers, response), &correlation)
}

/// RFC 9449 §8: when nonces are required, every answer to a request with a DPoP proof carries
/// the current one (a `use_dpop_nonce` refusal, and successes, so the next proof is ready).
fn with_dpop_nonce(state: &AppState, headers: &HeaderMap, mut response: Response) -> Response {
    let nonce = mandate_authz::dpop::nonce_to_send(&state.authz).filter(|_| headers.contains_key("dpop"));
    if let Some(value) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
}

async fn token_flow(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    correlation: &str,
    grant_type: &mut Option<String>,
) -> Result<mandate_authz::token::TokenResponse, OAuthReply> {
    let action = "token.issue";
    let mut form = audited(state, action, correlation, Form::read(headers, body).await).await?;
    // For the metrics only: read before anything else can refuse the request.
    *grant_type = form.all("grant_type").into_iter().next();
    let presented = audited(state, action, correlation, presented_credentials(headers, &mut form)).await?;
    let basic = matches!(presented, Presented::Secret { method: ClientAuthMethod::ClientSecretBasic, .. });
    let request = TokenRequest {
        grant_type: form.take("grant_type"),
        resources: form.all("resource"),
        scope: form.take("scope"),
        presented,
        assertion: form.take("assertion"),
        code: form.take("code"),
        code_verifier: form.take("code_verifier"),
        redirect_uri: form.take("redirect_uri"),
        refresh_token: form.take("refresh_token"),
        subject_token: form.take("subject_token"),
        subject_token_type: form.take("subject_token_type"),
        actor_token: form.take("actor_token"),
        actor_token_type: form.take("actor_token_type"),
        requested_token_type: form.take("requested_token_type"),
        audiences: form.all("audience"),
        request_context: form.take("request_context"),
        request_details: form.take("request_details"),
        auth_req_id: form.take("auth_req_id"),
        dpop_proofs: headers.get_all("dpop").iter().map(|v| v.to_str().unwrap_or_default().to_owned()).collect(),
    };
    mandate_authz::token::token(&state.authz, request, correlation).await.map_err(|e| token_error(e, basic))
}

/// The token endpoint answers every error RFC 6749 §5.2 lists with 400 (401 for a failed
/// client authentication). `access_denied` is not among them, but CIBA (Core §11) and other
/// grants return it here, and as a token error response it is 400 too, not the 403 the shared
/// mapping gives it elsewhere (pages, admin API).
fn token_error(error: OAuthError, basic: bool) -> OAuthReply {
    let mut reply = challenge(error, basic);
    if reply.error.code == mandate_core::OAuthErrorCode::AccessDenied {
        reply.status = StatusCode::BAD_REQUEST;
    }
    reply
}

pub(crate) async fn introspect(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let result = async {
        let (caller, token) = caller_and_token(&state, &headers, body, "token.introspect", &correlation).await?;
        mandate_authz::introspect::introspect(&state.authz, &caller, &token, &correlation)
            .await
            .map_err(OAuthReply::from)
    }
    .await;
    let response = match result {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(reply) => reply.into_response(),
    };
    with_request_id(response, &correlation)
}

pub(crate) async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let result = async {
        let (caller, token) = caller_and_token(&state, &headers, body, "token.revoke", &correlation).await?;
        mandate_authz::revoke::revoke_token(&state.authz, &caller, &token, &correlation).await.map_err(OAuthReply::from)
    }
    .await;
    let response = match result {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(reply) => reply.into_response(),
    };
    with_request_id(response, &correlation)
}

/// Introspection and revocation callers: the admin bearer credential, or an authenticated client.
async fn caller_and_token(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    action: &str,
    correlation: &str,
) -> Result<(Caller, String), OAuthReply> {
    let mut form = audited(state, action, correlation, Form::read(headers, body).await).await?;
    let caller = match bearer(headers) {
        Some(presented) if state.is_admin_token(presented) => Caller::Admin,
        Some(_) => {
            let error = OAuthError::invalid_client("the bearer credential is not valid here");
            return Err(refuse(state, action, correlation, error.into()).await);
        }
        None => {
            let presented = audited(state, action, correlation, presented_credentials(headers, &mut form)).await?;
            let basic = matches!(presented, Presented::Secret { method: ClientAuthMethod::ClientSecretBasic, .. });
            let client = match authenticate(&state.authz, presented, correlation).await {
                Ok(client) => client,
                Err(e) => return Err(refuse(state, action, correlation, challenge(e, basic)).await),
            };
            Caller::Client(Box::new(client))
        }
    };
    let token = form.take("token").filter(|t| !t.is_empty());
    let token = audited(
        state,
        action,
        correlation,
        token.ok_or_else(|| OAuthError::invalid_request("token is required").into()),
    )
    .await?;
    Ok((caller, token))
}

/// Which client authentication the request used; more than one is an error (RFC 6749 §2.3).
pub(crate) fn presented_credentials(headers: &HeaderMap, form: &mut Form) -> Result<Presented, OAuthReply> {
    let basic = basic_credentials(headers)?;
    let secret = form.take("client_secret");
    let assertion = form.take("client_assertion");
    let assertion_type = form.take("client_assertion_type");
    let client_id = form.take("client_id");
    let methods = usize::from(basic.is_some()) + usize::from(secret.is_some()) + usize::from(assertion.is_some());
    if methods > 1 {
        return Err(OAuthError::invalid_request("use exactly one client authentication method").into());
    }
    if let Some((id, secret)) = basic {
        if client_id.as_deref().is_some_and(|body_id| body_id != id) {
            return Err(OAuthError::invalid_request("client_id differs from the Authorization header").into());
        }
        return Ok(Presented::Secret { client_id: id, secret, method: ClientAuthMethod::ClientSecretBasic });
    }
    if let Some(secret) = secret {
        let client_id =
            client_id.ok_or_else(|| OAuthError::invalid_request("client_id is required with client_secret"))?;
        return Ok(Presented::Secret {
            client_id,
            secret: Zeroizing::new(secret),
            method: ClientAuthMethod::ClientSecretPost,
        });
    }
    if let Some(assertion) = assertion {
        if assertion_type.as_deref() != Some(ASSERTION_TYPE_JWT_BEARER) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {ASSERTION_TYPE_JWT_BEARER}"
            ))
            .into());
        }
        return Ok(Presented::Assertion { client_id, assertion });
    }
    Ok(client_id.map_or(Presented::None, |client_id| Presented::Public { client_id }))
}

/// `Authorization: Basic` credentials, form-urldecoded as RFC 6749 §2.3.1 requires.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, Zeroizing<String>)>, OAuthReply> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || -> OAuthReply {
        let mut reply = OAuthReply::from(OAuthError::invalid_client("malformed Basic credentials"));
        reply.basic_challenge = true;
        reply
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| malformed())?);
    let text = std::str::from_utf8(&decoded).map_err(|_| malformed())?;
    let (id, secret) = text.split_once(':').ok_or_else(malformed)?;
    let (id, secret) = (form_decode(id).ok_or_else(malformed)?, form_decode(secret).ok_or_else(malformed)?);
    if id.is_empty() {
        return Err(malformed());
    }
    Ok(Some((id, Zeroizing::new(secret))))
}

fn form_decode(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|s| s.into_owned())
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn challenge(error: OAuthError, basic: bool) -> OAuthReply {
    let mut reply = OAuthReply::from(error);
    reply.basic_challenge = basic;
    reply
}

/// Passes a value through, or audits the refusal and returns it.
pub(crate) async fn audited<T>(
    state: &AppState,
    action: &str,
    correlation: &str,
    result: Result<T, OAuthReply>,
) -> Result<T, OAuthReply> {
    match result {
        Ok(value) => Ok(value),
        Err(reply) => Err(refuse(state, action, correlation, reply).await),
    }
}

pub(crate) async fn refuse(state: &AppState, action: &str, correlation: &str, reply: OAuthReply) -> OAuthReply {
    let event = AuditEvent::allow(action, correlation);
    let logged = record_refusal(&state.authz, event, reply.error.clone()).await;
    if logged == reply.error { reply } else { OAuthReply::from(logged) }
}

pub(crate) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use mandate_core::OAuthErrorCode;

    use super::*;

    #[test]
    fn access_denied_is_400_at_the_token_endpoint_and_403_elsewhere() {
        let denied = OAuthError::new(OAuthErrorCode::AccessDenied, "the owner denied the request");
        assert_eq!(token_error(denied.clone(), false).status, StatusCode::BAD_REQUEST);
        assert_eq!(OAuthReply::from(denied).status, StatusCode::FORBIDDEN, "pages and the admin API keep 403");
        let unauthenticated = token_error(OAuthError::invalid_client("wrong secret"), true);
        assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
        assert!(unauthenticated.basic_challenge);
        let pending = OAuthError::new(OAuthErrorCode::AuthorizationPending, "wait");
        assert_eq!(token_error(pending, false).status, StatusCode::BAD_REQUEST);
    }
}
