//! The seam between the proxy and where credentials come from (the vault, refreshed OAuth
//! tokens, Mandate tokens minted with the agent's workload identity).

use async_trait::async_trait;
use zeroize::Zeroizing;

/// Why a named connection has no usable credential; the proxy fails closed on any of these.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("connection {connection:?}: {reason}")]
    Unavailable { connection: String, reason: String },
}

/// Resolves a named connection (`github:work`) to the secret the upstream expects right now.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    async fn credential(&self, connection: &str) -> Result<Zeroizing<String>, CredentialError>;
}
