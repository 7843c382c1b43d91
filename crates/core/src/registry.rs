//! Registry records: owners, agents, OAuth clients and protected resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{Name, ResourceUri, SpiffeId};

/// The responsible human or organisation behind agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub name: Name,
    pub display_name: Option<String>,
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
    pub created_at_ms: i64,
}

/// How a client authenticates at the token, introspection and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
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

/// An OAuth client acting as an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub agent: Name,
    pub auth_method: ClientAuthMethod,
    /// Hex SHA-256 of the client secret (secrets are 256-bit random, so a fast hash suffices).
    #[serde(skip_serializing)]
    pub secret_hash: Option<String>,
    /// The registered JWK Set (JSON) for `private_key_jwt`.
    pub jwks: Option<String>,
    /// Whether this client may introspect tokens issued to other clients (resource servers).
    pub can_introspect: bool,
    pub created_at_ms: i64,
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
