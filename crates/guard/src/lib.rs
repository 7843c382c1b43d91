//! Resource-server side of Mandate: verifies that a request's access token was issued by a
//! trusted authorization server *for this resource* (RFC 9068 + RFC 8707), is presented as its
//! binding demands (Bearer, or DPoP with a valid proof, RFC 9449), checks scope and revocation,
//! and answers refusals with RFC 6750/9728/9449 `WWW-Authenticate` challenges that point clients
//! at this resource's Protected Resource Metadata. Plain API plus an axum middleware. Inside a
//! trust domain it also verifies Transaction Tokens (`Txn-Token` header, `txn` module).

mod challenge;
pub mod dpop;
mod layer;
mod prm;
mod remote;
mod replay;
mod signals;
mod txn;
mod verified;
mod verify;

pub use challenge::{Rejection, RejectionKind};
pub use dpop::{DpopCheck, DpopError, DpopProof, bound_token_matches, replay_key, verify_dpop_proof};
pub use layer::{Required, require_scopes};
pub use prm::{metadata_url, protected_resource_metadata, well_known_url};
pub use remote::{RemoteKeyError, RemoteKeys};
pub use replay::{DEFAULT_REPLAY_CAPACITY, MemoryReplayCache, ReplayCache};
pub use signals::{Replies, SetError, SignalRevocations, receive_push, subject_key};
pub use txn::{TXN_TOKEN_HEADER, TxnContext, TxnTokenVerifier, require_txn_token};
pub use verified::DEFAULT_VERIFIED_CAPACITY;
pub use verify::{
    BadResource, GRANT_CLAIM, Guard, GuardConfig, KeySource, Presented, Principal, RevocationCheck, StaticKeys,
    StoreRevocation, TokenFacts,
};
