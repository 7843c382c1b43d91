//! Registry records: owners, agents, OAuth clients and protected resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{Name, ResourceUri, SpiffeId};

/// The responsible human or organisation behind agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub name: Name,
    pub display_name: Option<String>,
    /// Argon2id PHC string for signing in at the authorization endpoint; `None` = cannot sign in.
    #[serde(skip_serializing, default)]
    pub password_hash: Option<String>,
    pub created_at_ms: i64,
}

/// A workload with exactly one SPIFFE ID and exactly one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub name: Name,
    pub owner: Name,
    pub spiffe_id: SpiffeId,
    /// The most this agent may ever be granted; tokens carry the intersection with the request
    /// and with the resource's scopes.
    pub scopes: Vec<String>,
    /// Workload attestation selectors (`unix:uid:1000`, `unix:path:/usr/bin/agent`, …); a caller
    /// on the Workload API is this agent when it matches all of them.
    #[serde(default)]
    pub selectors: Vec<String>,
    /// Whether token exchange may hand this agent a token *as* its subject, with no `act` naming
    /// the agent (RFC 8693 impersonation). Off unless an operator turns it on.
    #[serde(default)]
    pub may_impersonate: bool,
    pub created_at_ms: i64,
}

/// How a client authenticates at the token, introspection and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// A public client (RFC 7591 `none`): no credentials; only the authorization code grant.
    None,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            "private_key_jwt" => Some(Self::PrivateKeyJwt),
            _ => None,
        }
    }

    pub fn uses_secret(self) -> bool {
        matches!(self, Self::ClientSecretBasic | Self::ClientSecretPost)
    }
}

/// An OAuth client: an agent's credentials (client_credentials, token exchange), or an
/// application a person signs in to (authorization code), or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    /// The agent this client authenticates as; `None` for applications registered without one
    /// (dynamic registration, Client ID Metadata Documents), which act only for a signed-in owner.
    pub agent: Option<Name>,
    pub auth_method: ClientAuthMethod,
    /// Hex SHA-256 of the client secret (secrets are 256-bit random, so a fast hash suffices).
    #[serde(skip_serializing)]
    pub secret_hash: Option<String>,
    /// The registered JWK Set (JSON) for `private_key_jwt`.
    pub jwks: Option<String>,
    /// Whether this client may introspect tokens issued to other clients (resource servers).
    pub can_introspect: bool,
    /// Registered redirect URIs, matched exactly (OAuth 2.1).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Grant types this client may use (RFC 7591 `grant_types`).
    #[serde(default)]
    pub grant_types: Vec<String>,
    pub client_name: Option<String>,
    /// Further RFC 7591 metadata as registered (JSON object), echoed back on registration.
    #[serde(default)]
    pub metadata: Option<String>,
    pub created_at_ms: i64,
}

impl Client {
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }
}

/// A protected API or MCP server, identified by the URI that becomes its tokens' `aud`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub uri: ResourceUri,
    pub scopes: Vec<String>,
    pub created_at_ms: i64,
}

/// How a federation rule matches the external token's `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectMatch {
    Exact,
    Prefix,
}

impl SubjectMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Prefix => "prefix",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "exact" => Some(Self::Exact),
            "prefix" => Some(Self::Prefix),
            _ => None,
        }
    }
}

/// Workload identity federation (RFC 7523 jwt-bearer): which external JWTs an agent may
/// trade for a Mandate access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRule {
    pub name: Name,
    /// The external issuer (`iss`), compared exactly.
    pub issuer: String,
    /// Where the issuer's JWKS is fetched from (SSRF-checked); or `jwks` inline.
    pub jwks_url: Option<String>,
    pub jwks: Option<String>,
    /// The audience the external token must carry.
    pub audience: String,
    pub subject: String,
    pub subject_match: SubjectMatch,
    /// Further claims that must equal these string values.
    pub claims: BTreeMap<String, String>,
    /// The agent the external workload becomes.
    pub agent: Name,
    pub max_ttl_secs: i64,
    pub created_at_ms: i64,
}

/// A one-time token that bootstraps an agent on another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Hex SHA-256 of the token; the token itself is shown once.
    pub token_hash: String,
    pub agent: Name,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// An owner's remembered approval: this client may act for the owner at this resource with
/// these scopes without asking again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub owner: Name,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub granted_at_ms: i64,
}

/// An issued authorization code, stored by hash; `grant` is the authorization it stands for
/// (JSON, owned by the authorization code grant), redeemable once before `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCode {
    pub code_hash: String,
    pub client_id: String,
    pub grant: String,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
}

/// A refresh token, stored by hash. Rotation spends it once; all tokens descended from one
/// authorization share a `family`, revoked together when a spent token comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub family: String,
    pub client_id: String,
    /// The authorization it carries (JSON, owned by the refresh grant).
    pub grant: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
}

/// An external identity provider whose assertions Mandate accepts: ID-JAGs at the
/// resource-AS side, and ID tokens as token-exchange subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedIdp {
    pub name: Name,
    /// The IdP's issuer identifier (`iss`), compared exactly.
    pub issuer: String,
    /// Where its JWK Set is fetched (SSRF-checked); or `jwks` inline.
    pub jwks_url: Option<String>,
    pub jwks: Option<String>,
    pub created_at_ms: i64,
}

/// Per-agent ID-JAG policy at Mandate's IdP side: the agent may obtain ID-JAGs for `resource`
/// at the authorization server `audience`, for at most `scopes`, where it is `remote_client_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationTarget {
    pub agent: Name,
    /// The resource authorization server's issuer identifier.
    pub audience: String,
    pub resource: String,
    pub scopes: Vec<String>,
    /// The agent's client's `client_id` at that authorization server.
    pub remote_client_id: String,
    pub created_at_ms: i64,
}
