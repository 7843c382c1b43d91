//! Where the gateway's Txn-Tokens come from. [`TxnMinter`] is the seam: co-located with the
//! server it calls the Transaction Token Service in process ([`InProcessMinter`]); tests plug in
//! their own. (Minting over HTTP from a remote TTS is not built yet.)

use async_trait::async_trait;
use mandate_authz::Authz;
use mandate_authz::exchange::TOKEN_TYPE_ACCESS_TOKEN;
use mandate_authz::txn_token::{self, MintRequest};
use mandate_core::OAuthError;
use serde_json::Value;

/// What the gateway asks the TTS for: a Txn-Token for the inbound access token.
#[derive(Debug, Clone)]
pub struct MintInput<'a> {
    /// The verified inbound access token (the TTS never embeds it).
    pub subject_token: &'a str,
    /// Becomes `rctx`: the caller's address, method and path.
    pub request_context: Value,
    /// Becomes `tctx`: what the request does (MCP method and tool, or method and path).
    pub request_details: Value,
    /// The gateway's own SPIFFE ID (`req_wl`).
    pub workload: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub token: String,
    pub txn: String,
    pub expires_in: i64,
}

#[async_trait]
pub trait TxnMinter: Send + Sync {
    async fn mint(&self, input: &MintInput<'_>, correlation_id: &str) -> Result<Minted, OAuthError>;
}

/// The Transaction Token Service of the server this gateway runs beside, called directly.
pub struct InProcessMinter {
    authz: Authz,
}

impl InProcessMinter {
    pub fn new(authz: Authz) -> Self {
        Self { authz }
    }
}

#[async_trait]
impl TxnMinter for InProcessMinter {
    async fn mint(&self, input: &MintInput<'_>, correlation_id: &str) -> Result<Minted, OAuthError> {
        let request = MintRequest {
            subject_token: input.subject_token,
            subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
            // The TTS derives the scope from the access token (never wider).
            scope: None,
            request_context: Some(input.request_context.clone()),
            request_details: Some(input.request_details.clone()),
            workload: input.workload,
        };
        let minted = txn_token::mint(&self.authz, &request, correlation_id).await?;
        Ok(Minted { token: minted.token, txn: minted.txn, expires_in: minted.expires_in })
    }
}
