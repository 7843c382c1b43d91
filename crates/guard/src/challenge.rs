//! Refusals and their `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9728 §5.1, RFC 9449 §7.1):
//! 401 `invalid_token` for a missing or bad token, 401 `invalid_dpop_proof` for a bad proof, 403
//! `insufficient_scope` naming every scope the operation needs (the step-up signal MCP clients
//! act on), 400 `invalid_request`. Every refusal offers both the `Bearer` and `DPoP` schemes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::dpop::SUPPORTED_ALGS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// No credentials at all: the challenge carries no error code (RFC 6750 §3.1).
    MissingToken,
    InvalidToken,
    /// The `DPoP` proof is missing, malformed, for another request, replayed or for another key.
    InvalidDpopProof,
    InsufficientScope,
    InvalidRequest,
}

/// Why a request was refused, ready to become a response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{description}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub description: String,
    /// Scopes the operation needs (sent in the challenge's `scope`).
    pub scope: Option<String>,
    /// URL of this resource's Protected Resource Metadata.
    pub resource_metadata: String,
    /// Whose authentic token was refused (revoked, unbound proof, missing scope), so an audit
    /// record can name them; `None` when no token, or no authentic one, was presented.
    pub holder: Option<Box<crate::Principal>>,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::MissingToken | RejectionKind::InvalidToken | RejectionKind::InvalidDpopProof => {
                StatusCode::UNAUTHORIZED
            }
            RejectionKind::InsufficientScope => StatusCode::FORBIDDEN,
            RejectionKind::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    pub fn error_code(&self) -> Option<&'static str> {
        match self.kind {
            RejectionKind::MissingToken => None,
            RejectionKind::InvalidToken => Some("invalid_token"),
            RejectionKind::InvalidDpopProof => Some("invalid_dpop_proof"),
            RejectionKind::InsufficientScope => Some("insufficient_scope"),
            RejectionKind::InvalidRequest => Some("invalid_request"),
        }
    }

    /// The `Bearer` challenge: `Bearer resource_metadata="…", scope="…", error="…", error_description="…"`.
    /// A proof error means nothing to a Bearer client, so it is reported in the DPoP challenge only.
    pub fn challenge(&self) -> String {
        let with_error = self.kind != RejectionKind::InvalidDpopProof;
        format!("Bearer {}", self.params(with_error).join(", "))
    }

    /// The `DPoP` challenge (RFC 9449 §7.1): `DPoP algs="EdDSA ES256", resource_metadata="…", …`.
    pub fn dpop_challenge(&self) -> String {
        let mut params = vec![format!("algs=\"{}\"", SUPPORTED_ALGS.join(" "))];
        params.extend(self.params(true));
        format!("DPoP {}", params.join(", "))
    }

    fn params(&self, with_error: bool) -> Vec<String> {
        let mut params = vec![format!("resource_metadata=\"{}\"", quote(&self.resource_metadata))];
        if let Some(scope) = &self.scope {
            params.push(format!("scope=\"{}\"", quote(scope)));
        }
        if let Some(code) = self.error_code().filter(|_| with_error) {
            params.push(format!("error=\"{code}\""));
            params.push(format!("error_description=\"{}\"", quote(&self.description)));
        }
        params
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
        for challenge in [self.challenge(), self.dpop_challenge()] {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response.headers_mut().append(header::WWW_AUTHENTICATE, value);
            }
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
            holder: None,
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

    #[test]
    fn dpop_challenges_follow_rfc9449() {
        let missing = rejection(RejectionKind::MissingToken, None);
        assert_eq!(
            missing.dpop_challenge(),
            "DPoP algs=\"EdDSA ES256\", resource_metadata=\"https://api.example/.well-known/oauth-protected-resource\""
        );
        let proof = rejection(RejectionKind::InvalidDpopProof, None);
        assert_eq!(proof.status(), StatusCode::UNAUTHORIZED);
        assert!(proof.dpop_challenge().contains("error=\"invalid_dpop_proof\""));
        assert!(!proof.challenge().contains("error="), "Bearer clients get no proof error");
    }

    #[test]
    fn a_response_carries_both_challenges() {
        let response = rejection(RejectionKind::InvalidToken, Some("read")).into_response();
        let values: Vec<_> = response.headers().get_all(header::WWW_AUTHENTICATE).iter().collect();
        assert_eq!(values.len(), 2);
        assert!(values[0].to_str().is_ok_and(|v| v.starts_with("Bearer ") && v.contains("invalid_token")));
        assert!(values[1].to_str().is_ok_and(|v| v.starts_with("DPoP algs=") && v.contains("invalid_token")));
    }
}
