//! `mandate gateway`: a reverse proxy in front of one upstream HTTP or MCP service. It verifies
//! each request's access token with the guard (DPoP included), swaps it for a Transaction Token
//! minted in process (co-located) or over HTTP by a remote Transaction Token Service, strips the
//! inbound credentials and streams the exchange both ways.

pub mod approval;
pub mod budget;
pub mod content;
pub mod governance;
mod headers;
mod keys;
pub mod mcp;
mod mint;
mod proxy;
mod remote;

pub use governance::{CallFacts, Governance, GovernanceConfig, GovernanceError, Verdict};
pub use keys::KeyringKeys;
pub use mcp::McpCall;
pub use mint::{InProcessMinter, MintInput, MintOutcome, Minted, TxnMinter};
pub use proxy::{CoLocated, Gateway, GatewayConfig, GatewayError, MAX_JSON_BODY, listener};
pub use remote::{HttpMinter, Remote, TTS_TIMEOUT, TtsClient};
