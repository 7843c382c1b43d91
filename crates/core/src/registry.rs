//! Registry records: owners, agents, OAuth clients and protected resources.

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
