//! Where the gateway's Txn-Tokens come from. [`TxnMinter`] is the seam: co-located with the
//! server it calls the Transaction Token Service in process ([`InProcessMinter`]); tests plug in
//! their own; away from the server, [`crate::HttpMinter`] asks a remote TTS over HTTP.

use async_trait::async_trait;
use mandate_authz::Authz;
use mandate_authz::exchange::TOKEN_TYPE_ACCESS_TOKEN;
use mandate_authz::txn_token::{self, MintRequest, Unrecorded};
use mandate_core::{AuditEvent, OAuthError};
use serde_json::Value;

/// What the gateway asks the TTS for: a Txn-Token for the inbound access token.
#[derive(Debug, Clone)]
pub struct MintInput<'a> {
    /// The verified inbound access token (the TTS never embeds it).
    pub subject_token: &'a str,
    /// The claims the gateway's guard verified in `subject_token`.
    pub subject_claims: &'a Value,
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

/// A mint's result and, when the minter leaves recording it to the gateway, its audit event:
/// the gateway records that with its own event, both durable before it forwards or answers.
#[derive(Debug)]
pub struct MintOutcome {
    pub result: Result<Minted, OAuthError>,
    pub audit: Option<AuditEvent>,
}

impl From<Result<Minted, OAuthError>> for MintOutcome {
    /// A minter that records its own audit (a remote TTS).
    fn from(result: Result<Minted, OAuthError>) -> Self {
        Self { result, audit: None }
    }
}

#[async_trait]
pub trait TxnMinter: Send + Sync {
    async fn mint(&self, input: &MintInput<'_>, correlation_id: &str) -> MintOutcome;
}

/// The Transaction Token Service of the server this gateway runs beside, called directly.
pub struct InProcessMinter {
    authz: Authz,
    trust_guard: bool,
}

impl InProcessMinter {
    /// Verifies the subject token again before minting.
    pub fn new(authz: Authz) -> Self {
        Self { authz, trust_guard: false }
    }

    /// For a gateway whose guard trusts exactly `authz`'s issuer, keys and revocation state:
    /// the guard's verdict stands, so the token's signature and revocation state are not
    /// checked a second time. Only [`crate::Gateway::co_located`] builds such a guard.
    pub(crate) fn beside_own_guard(authz: Authz) -> Self {
        Self { authz, trust_guard: true }
    }
}

#[async_trait]
impl TxnMinter for InProcessMinter {
    async fn mint(&self, input: &MintInput<'_>, correlation_id: &str) -> MintOutcome {
        let request = MintRequest {
            subject_token: input.subject_token,
            subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
            // The TTS derives the scope from the access token (never wider).
            scope: None,
            request_context: Some(input.request_context.clone()),
            request_details: Some(input.request_details.clone()),
            workload: input.workload,
            verified_claims: self.trust_guard.then_some(input.subject_claims),
        };
        let Unrecorded { outcome, event } = txn_token::mint_unrecorded(&self.authz, &request, correlation_id).await;
        let result = outcome.map(|m| Minted { token: m.token, txn: m.txn, expires_in: m.expires_in });
        MintOutcome { result, audit: Some(event) }
    }
}
