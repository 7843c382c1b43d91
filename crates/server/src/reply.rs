//! Uniform HTTP answers: OAuth error bodies (RFC 6749 §5.2) with `Cache-Control: no-store`,
//! correlation ids, and bounded form parsing.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use mandate_core::OAuthError;

/// Largest form body the OAuth endpoints read.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

pub(crate) const REQUEST_ID: &str = "x-request-id";

/// An OAuth error with the HTTP status to send it with.
#[derive(Debug)]
pub(crate) struct OAuthReply {
    pub status: StatusCode,
    pub error: OAuthError,
    pub basic_challenge: bool,
}

impl From<OAuthError> for OAuthReply {
    fn from(error: OAuthError) -> Self {
        Self {
            status: StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            error,
            basic_challenge: false,
        }
    }
}

impl IntoResponse for OAuthReply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(&self.error)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED && self.basic_challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mandate\""));
        }
        response
    }
}

/// The caller's `X-Request-Id` if it is short and plain, else a fresh UUIDv7.
pub(crate) fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

pub(crate) fn with_request_id(mut response: Response, correlation_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Form parameters of a request, with the rules of RFC 6749 §3.2: the media type must be
/// `application/x-www-form-urlencoded` and no parameter may repeat (except `resource` and
/// `audience`, which RFC 8707 and RFC 8693 allow to repeat).
#[derive(Debug, Default)]
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub async fn read(headers: &HeaderMap, body: Body) -> Result<Self, OAuthReply> {
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media_type.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request("Content-Type must be application/x-www-form-urlencoded").into());
        }
        let bytes = match Limited::new(body, MAX_FORM_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return Err(OAuthReply {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    error: OAuthError::invalid_request(format!("request body exceeds {MAX_FORM_BYTES} bytes")),
                    basic_challenge: false,
                });
            }
        };
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        let form = Self { pairs };
        form.reject_repeats()?;
        Ok(form)
    }

    fn reject_repeats(&self) -> Result<(), OAuthReply> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &self.pairs {
            // RFC 8707 and RFC 8693 §2.1 let `resource` and `audience` repeat.
            if name != "resource" && name != "audience" && !seen.insert(name.as_str()) {
                return Err(OAuthError::invalid_request(format!("parameter {name:?} is repeated")).into());
            }
        }
        Ok(())
    }

    pub fn take(&mut self, name: &str) -> Option<String> {
        let index = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.remove(index).1)
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
    }
}
