//! Refusals and their `WWW-Authenticate: Bearer …` challenges (RFC 6750 §3, RFC 9728 §5.1):
//! 401 `invalid_token` for a missing or bad token, 403 `insufficient_scope` naming every scope
//! the operation needs (the step-up signal MCP clients act on), 400 `invalid_request`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// No credentials at all: the challenge carries no error code (RFC 6750 §3.1).
    MissingToken,
    InvalidToken,
    InsufficientScope,
    InvalidRequest,
}

/// Why a request was refused, ready to become a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub description: String,
    /// Scopes the operation needs (sent in the challenge's `scope`).
    pub scope: Option<String>,
    /// URL of this resource's Protected Resource Metadata.
    pub resource_metadata: String,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::MissingToken | RejectionKind::InvalidToken => StatusCode::UNAUTHORIZED,
            RejectionKind::InsufficientScope => StatusCode::FORBIDDEN,
            RejectionKind::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    fn error_code(&self) -> Option<&'static str> {
        match self.kind {
            RejectionKind::MissingToken => None,
            RejectionKind::InvalidToken => Some("invalid_token"),
            RejectionKind::InsufficientScope => Some("insufficient_scope"),
            RejectionKind::InvalidRequest => Some("invalid_request"),
        }
    }

    /// The `WWW-Authenticate` value: `Bearer resource_metadata="…", scope="…", error="…", error_description="…"`.
    pub fn challenge(&self) -> String {
        let mut params = vec![format!("resource_metadata=\"{}\"", quote(&self.resource_metadata))];
        if let Some(scope) = &self.scope {
            params.push(format!("scope=\"{}\"", quote(scope)));
        }
        if let Some(code) = self.error_code() {
            params.push(format!("error=\"{code}\""));
            params.push(format!("error_description=\"{}\"", quote(&self.description)));
        }
        format!("Bearer {}", params.join(", "))
    }
}

/// Makes a value safe inside a quoted-string: no quotes, backslashes or control characters.
fn quote(value: &str) -> String {
    value.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = match self.error_code() {
            Some(code) => json!({"error": code, "error_description": self.description}),
            None => json!({"error": "unauthorized", "error_description": self.description}),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&self.challenge()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(kind: RejectionKind, scope: Option<&str>) -> Rejection {
        Rejection {
            kind,
            description: "token \"expired\"".into(),
            scope: scope.map(str::to_owned),
            resource_metadata: "https://api.example/.well-known/oauth-protected-resource".into(),
        }
    }

    #[test]
    fn challenges_follow_rfc6750_and_rfc9728() {
        let missing = rejection(RejectionKind::MissingToken, Some("read"));
        assert_eq!(
            missing.challenge(),
            "Bearer resource_metadata=\"https://api.example/.well-known/oauth-protected-resource\", scope=\"read\""
        );
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        let step_up = rejection(RejectionKind::InsufficientScope, Some("read write"));
        assert_eq!(step_up.status(), StatusCode::FORBIDDEN);
        assert!(step_up.challenge().contains("error=\"insufficient_scope\""));
        assert!(step_up.challenge().contains("scope=\"read write\""));
        assert!(step_up.challenge().contains("error_description=\"token expired\""), "quotes are dropped");
        assert_eq!(rejection(RejectionKind::InvalidRequest, None).status(), StatusCode::BAD_REQUEST);
    }
}
