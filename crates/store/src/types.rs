//! Records and write jobs the store persists.

use mandate_core::{
    Agent, AuditEvent, AuthCode, Client, Consent, DelegationTarget, FederationRule, JoinToken, Owner, RefreshToken,
    Resource, TrustedIdp,
};

/// Whose tokens a "not before" epoch invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochKind {
    Agent,
    Owner,
    Client,
    /// One authorization's tokens (a refresh-token family), named by the family id.
    Grant,
}

impl EpochKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Owner => "owner",
            Self::Client => "client",
            Self::Grant => "grant",
        }
    }
}

/// One token's revocation state: revoked by its `jti`, and the latest "not before" epoch of
/// the subjects that answer for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenRevocation {
    pub token_revoked: bool,
    pub not_before: Option<i64>,
}

/// A signing key as stored: the private key sealed with the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    /// `token` (access tokens and other JWTs) or `audit` (checkpoints).
    pub purpose: String,
    pub alg: String,
    pub sealed_private_key: Vec<u8>,
    pub created_at_ms: i64,
    /// The key is published from creation and signs from this time on.
    pub activate_at_ms: i64,
    /// After this time the key no longer signs; it stays published while its tokens may live.
    pub retire_at_ms: Option<i64>,
}

/// A state change that must happen together with its audit event.
#[derive(Debug, Clone)]
pub enum Mutation {
    CreateOwner(Owner),
    DeleteOwner(String),
    CreateAgent(Agent),
    DeleteAgent(String),
    CreateClient(Client),
    DeleteClient(String),
    CreateResource(Resource),
    DeleteResource(String),
    /// Raise (never lower) a subject's "not before" epoch.
    RevokeBefore {
        kind: EpochKind,
        name: String,
        not_before_secs: i64,
    },
    RevokeToken {
        jti: String,
        expires_at_secs: i64,
    },
    /// Record a one-time identifier (client assertion `jti`); fails if it was seen before.
    ConsumeOnce {
        id: String,
        expires_at_secs: i64,
    },
    InsertKey(StoredKey),
    RetireKey {
        kid: String,
        retire_at_ms: i64,
    },
    PutSetting {
        key: String,
        value: String,
    },
    /// Replace an agent's attestation selectors.
    SetSelectors {
        agent: String,
        selectors: Vec<String>,
    },
    CreateJoinToken(JoinToken),
    /// Mark a join token used; fails unless it exists, is unused and unexpired at `now_ms`.
    UseJoinToken {
        token_hash: String,
        now_ms: i64,
    },
    CreateFederationRule(FederationRule),
    DeleteFederationRule(String),
    SetOwnerPassword {
        owner: String,
        password_hash: Option<String>,
    },
    /// Record (or widen) an owner's consent for a client at a resource.
    PutConsent(Consent),
    CreateAuthCode(AuthCode),
    /// Spend an authorization code; fails unless it exists, is unused and unexpired at `now_ms`.
    RedeemAuthCode {
        code_hash: String,
        now_ms: i64,
    },
    CreateRefreshToken(RefreshToken),
    /// Spend a refresh token (rotation); fails unless it exists, is unused and unexpired.
    UseRefreshToken {
        token_hash: String,
        now_ms: i64,
    },
    CreateTrustedIdp(TrustedIdp),
    DeleteTrustedIdp(String),
    CreateDelegationTarget(DelegationTarget),
    DeleteDelegationTarget {
        agent: String,
        audience: String,
        resource: String,
    },
    CreateCibaRequest(CibaRequest),
    /// The owner's decision (`approved` / `denied`); fails unless the request is theirs, still
    /// pending and unexpired at `now_ms`.
    DecideCibaRequest {
        approval_id: String,
        owner: String,
        status: String,
        now_ms: i64,
    },
    /// Counts a wrong password on the approval page; the `max`-th denies the pending request
    /// at `now_ms` (and makes a ping client's callback due).
    FailCibaDecision {
        approval_id: String,
        max: i64,
        now_ms: i64,
    },
    /// Records a token-endpoint poll; fails (`slow_down`) when the request is still pending and
    /// the previous poll was less than `interval_ms` before `now_ms`.
    PollCibaRequest {
        req_hash: String,
        now_ms: i64,
        interval_ms: i64,
    },
    /// Spends an approved request; fails unless it is approved and unexpired at `now_ms`.
    RedeemCibaRequest {
        req_hash: String,
        now_ms: i64,
    },
    /// A ping callback was delivered or given up: its sealed secrets are erased and nothing more
    /// is due. Fails if the request is gone.
    EndCibaNotify {
        req_hash: String,
    },
    /// A ping callback failed and is tried again at `next_attempt_ms`; fails unless one is due.
    RetryCibaNotify {
        req_hash: String,
        attempts: i64,
        next_attempt_ms: i64,
    },
    /// Shared Signals Framework streams and outbox (`crate::ssf`).
    Ssf(crate::ssf::SsfMutation),
    /// Several mutations that succeed or fail together (e.g. spend a refresh token and store
    /// its successor); the first refusal undoes the others.
    All(Vec<Mutation>),
}

/// A CIBA backchannel authentication request (`ciba_requests`, see `mandate_authz::ciba`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaRequest {
    /// SHA-256 of the `auth_req_id` the client holds.
    pub req_hash: String,
    /// Names the request on the owner's approval page.
    pub approval_id: String,
    pub client_id: String,
    pub owner: String,
    pub resource: String,
    pub scope: String,
    pub binding_message: String,
    /// RFC 9396 `authorization_details` exactly as requested (JSON text).
    pub authorization_details: Option<String>,
    /// `pending`, `approved`, `denied` or `redeemed`.
    pub status: String,
    pub expires_at_ms: i64,
    pub last_poll_ms: Option<i64>,
    /// When the owner approved or denied (the ID token's `auth_time`).
    pub decided_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Ping mode: the client's `backchannel_client_notification_endpoint` when it asked.
    pub notify_endpoint: Option<String>,
    /// Ping mode: the `auth_req_id` and `client_notification_token`, sealed under the KEK
    /// (base64), until the callback is delivered or given up.
    pub notify_sealed: Option<String>,
}

/// A ping callback that is due (`Store::ciba_notifications_due`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaNotification {
    pub req_hash: String,
    pub client_id: String,
    pub endpoint: String,
    pub sealed: String,
    /// Failed attempts so far.
    pub attempts: i64,
    pub next_attempt_ms: i64,
}

/// One unit of the write path: an optional mutation and the event that records it.
#[derive(Debug, Clone)]
pub struct WriteJob {
    pub mutation: Option<Mutation>,
    pub event: AuditEvent,
    pub ts_ms: i64,
}

/// Why a mutation was refused; the job's event is then logged as a refusal with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationError {
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("still referenced: {0}")]
    InUse(String),
}

impl MutationError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Conflict(_) => "conflict",
            Self::NotFound(_) => "not_found",
            Self::InUse(_) => "in_use",
        }
    }
}

/// What happened to one job: the sequence number of its event, and the mutation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub seq: u64,
    pub result: Result<(), MutationError>,
}

/// Where an entry lands in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPosition {
    pub seq: u64,
    pub prev: [u8; 32],
    pub ts_ms: i64,
}

/// An entry ready to persist: canonical JSON and its leaf hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry {
    pub canonical: String,
    pub leaf_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: u64,
    pub leaf_hash: [u8; 32],
    pub canonical: String,
}

/// A signed tree head and the compact Merkle frontier that lets the next one be computed from
/// the entries after it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: u64,
    pub root: [u8; 32],
    pub note: String,
    /// Roots of the perfect subtrees covering `0..tree_size`, largest first.
    pub frontier: Vec<[u8; 32]>,
    pub created_at_ms: i64,
}

pub(crate) fn scopes_to_text(scopes: &[String]) -> String {
    scopes.join(" ")
}

pub(crate) fn scopes_from_text(text: &str) -> Vec<String> {
    text.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

pub(crate) fn frontier_to_text(frontier: &[[u8; 32]]) -> String {
    frontier.iter().map(hex::encode).collect::<Vec<_>>().join(",")
}

pub(crate) fn frontier_from_text(text: &str) -> Option<Vec<[u8; 32]>> {
    text.split(',').filter(|s| !s.is_empty()).map(hash_from_hex).collect()
}

pub(crate) fn hash_from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

pub(crate) fn hash_from_slice(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

pub(crate) fn to_i64(n: u64) -> crate::Result<i64> {
    i64::try_from(n).map_err(|e| crate::StoreError::Corrupt(e.to_string()))
}

pub(crate) fn to_u64(n: i64) -> crate::Result<u64> {
    u64::try_from(n).map_err(|e| crate::StoreError::Corrupt(e.to_string()))
}
