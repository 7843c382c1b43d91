//! The OAuth error vocabulary (RFC 6749 §5.2, RFC 8707, RFC 7009) and its HTTP status mapping,
//! kept in one place so every endpoint answers the same way.

use serde::Serialize;

/// Error codes Mandate returns from its OAuth endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    UnsupportedTokenType,
    AccessDenied,
    ServerError,
    TemporarilyUnavailable,
    /// Authorization endpoint (RFC 6749 §4.1.2.1).
    UnsupportedResponseType,
    /// DPoP (RFC 9449 §5, §8).
    InvalidDpopProof,
    UseDpopNonce,
    /// Dynamic client registration (RFC 7591 §3.2.2).
    InvalidRedirectUri,
    InvalidClientMetadata,
    /// OpenID Connect CIBA Core 1.0 §11, §13.
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    UnknownUserId,
    InvalidBindingMessage,
    /// RFC 9396 §5.
    InvalidAuthorizationDetails,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::AccessDenied => "access_denied",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::InvalidRedirectUri => "invalid_redirect_uri",
            Self::InvalidClientMetadata => "invalid_client_metadata",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::ExpiredToken => "expired_token",
            Self::UnknownUserId => "unknown_user_id",
            Self::InvalidBindingMessage => "invalid_binding_message",
            Self::InvalidAuthorizationDetails => "invalid_authorization_details",
        }
    }

    /// HTTP status per RFC 6749 §5.2: 401 for failed client authentication, 5xx for server
    /// trouble, 400 for everything the client got wrong.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidClient => 401,
            Self::AccessDenied => 403,
            Self::ServerError => 500,
            Self::TemporarilyUnavailable => 503,
            _ => 400,
        }
    }
}

/// An OAuth error response: code plus a human-readable description (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    #[serde(rename = "error")]
    pub code: OAuthErrorCode,
    #[serde(rename = "error_description")]
    pub description: String,
}

impl OAuthError {
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self { code, description: description.into() }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, description)
    }

    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::ServerError, description)
    }
}
