//! Persistence behind one trait, [`Store`], with an embedded SQLite implementation (default)
//! and a PostgreSQL one for several replicas. Every write goes through [`Store::commit`], which
//! applies state changes and appends their audit events in one transaction, so the log and the
//! state it describes can never disagree.

mod migrate;
pub mod postgres;
mod read;
pub mod sqlite;
mod ssf;
mod types;
mod write;

use async_trait::async_trait;
use mandate_core::{
    Agent, AuditEvent, AuthCode, Client, Consent, DelegationTarget, FederationRule, JoinToken, Owner, RefreshToken,
    Resource, TrustedIdp,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use ssf::{LogoutEvent, SsfEvent, SsfMutation, SsfStream};
pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("the audit log is inconsistent: {0}")]
    AuditChain(String),
    #[error("unsupported database URL {0:?}: use a file path, sqlite://PATH or postgres://…")]
    BadUrl(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Keeps the cause, which holds the server's message: the error alone says only "db error".
    fn from(e: tokio_postgres::Error) -> Self {
        match std::error::Error::source(&e) {
            Some(cause) => Self::Database(format!("{e}: {cause}")),
            None => Self::Database(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Turns an event into its log entry once the log has assigned its position. Implemented by the
/// audit crate, which owns the canonical form and hashing; the store only persists the result.
pub trait EntryEncoder: Send + Sync {
    fn encode(&self, position: &EntryPosition, event: &AuditEvent) -> EncodedEntry;
}

/// Mandate's persistent state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn owner(&self, name: &str) -> Result<Option<Owner>>;
    async fn owners(&self) -> Result<Vec<Owner>>;
    async fn agent(&self, name: &str) -> Result<Option<Agent>>;
    async fn agents(&self) -> Result<Vec<Agent>>;
    async fn client(&self, client_id: &str) -> Result<Option<Client>>;
    async fn clients(&self) -> Result<Vec<Client>>;
    async fn resource(&self, uri: &str) -> Result<Option<Resource>>;
    async fn resources(&self) -> Result<Vec<Resource>>;

    /// The latest "not before" epoch (Unix seconds) over the given subjects, if any was set.
    async fn federation_rules(&self) -> Result<Vec<FederationRule>>;
    async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>>;
    async fn trusted_idps(&self) -> Result<Vec<TrustedIdp>>;
    async fn trusted_idp_by_issuer(&self, issuer: &str) -> Result<Option<TrustedIdp>>;
    /// An agent's ID-JAG delegation targets.
    async fn delegation_targets(&self, agent: &str) -> Result<Vec<DelegationTarget>>;
    async fn consent(&self, owner: &str, client_id: &str, resource: &str) -> Result<Option<Consent>>;
    async fn auth_code(&self, code_hash: &str) -> Result<Option<AuthCode>>;
    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>>;
    /// A CIBA request by the SHA-256 of its `auth_req_id`.
    async fn ciba_request(&self, req_hash: &str) -> Result<Option<CibaRequest>>;
    /// A CIBA request by its approval-page id.
    async fn ciba_request_by_approval(&self, approval_id: &str) -> Result<Option<CibaRequest>>;
    /// An owner's CIBA requests still pending and unexpired at `now_ms`, oldest first.
    async fn ciba_pending(&self, owner: &str, now_ms: i64) -> Result<Vec<CibaRequest>>;
    /// Up to `limit` CIBA ping callbacks due at `now_ms`, soonest first.
    async fn ciba_notifications_due(&self, now_ms: i64, limit: i64) -> Result<Vec<CibaNotification>>;

    async fn revoked_before(&self, subjects: &[(EpochKind, &str)]) -> Result<Option<i64>>;
    async fn is_token_revoked(&self, jti: &str) -> Result<bool>;
    /// [`Store::is_token_revoked`] and [`Store::revoked_before`] read together, as every
    /// verified request does: one read transaction (SQLite) or one round trip (PostgreSQL).
    async fn token_revocation(&self, jti: &str, subjects: &[(EpochKind, &str)]) -> Result<TokenRevocation>;

    async fn signing_keys(&self) -> Result<Vec<StoredKey>>;
    async fn setting(&self, key: &str) -> Result<Option<String>>;

    /// Applies each job's mutation and appends its event, all in one durable transaction.
    /// A job whose mutation fails is rolled back alone and its event is logged as a refusal.
    async fn commit(&self, jobs: Vec<WriteJob>, encoder: std::sync::Arc<dyn EntryEncoder>) -> Result<Vec<JobOutcome>>;

    /// Number of entries in the audit log.
    async fn audit_len(&self) -> Result<u64>;
    /// Entries with `from <= seq < to`, in order.
    async fn audit_entries(&self, from: u64, to: u64) -> Result<Vec<StoredEntry>>;
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>>;
    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>>;
    /// Stores a checkpoint; one that already exists for the same size is left as it is.
    async fn insert_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<()>;
    /// Leaf hashes of the entries with `from <= seq < to`, in order (proofs need no event text).
    async fn audit_leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>>;
    /// Stored Merkle subtree hashes at `level` with `from <= idx < to`, as `(idx, hash)` in order.
    async fn audit_tiles(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, [u8; 32])>>;
    /// One past the highest subtree index stored at `level` (tiles are stored in order).
    async fn audit_tiles_len(&self, level: u32) -> Result<u64>;
    /// Stores the subtree hashes at `level` for indexes `first, first + 1, …` in one
    /// transaction; hashes already stored are left as they are.
    async fn insert_audit_tiles(&self, level: u32, first: u64, hashes: &[[u8; 32]]) -> Result<()>;

    /// All Shared Signals streams, oldest first.
    async fn ssf_streams(&self) -> Result<Vec<SsfStream>>;
    /// Up to `limit` queued events of a stream, oldest first.
    async fn ssf_events(&self, stream_id: &str, limit: i64) -> Result<Vec<SsfEvent>>;
    /// Up to `limit` queued back-channel logout tokens, oldest first.
    async fn logout_events(&self, limit: i64) -> Result<Vec<LogoutEvent>>;

    /// Drops revocation and replay entries whose tokens expired before `now_secs`.
    async fn purge_expired(&self, now_secs: i64) -> Result<u64>;
}

/// Opens the store a database URL names: `postgres://…` / `postgresql://…`, or SQLite at
/// `sqlite://PATH` or a plain path. Migrations run on open.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresStore::connect(url, None).await?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if path.is_empty() || url.contains("://") && !url.starts_with("sqlite://") {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        Ok(std::sync::Arc::new(SqliteStore::open(std::path::Path::new(path))?))
    }
}
