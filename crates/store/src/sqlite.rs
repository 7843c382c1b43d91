//! The embedded default store: SQLite in WAL mode with `synchronous=FULL`, one writer
//! connection (all writes are batched through [`Store::commit`]) and a few reader connections
//! that never wait for the writer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use mandate_core::{
    Agent, AuthCode, Client, Consent, DelegationTarget, FederationRule, JoinToken, Owner, RefreshToken, Resource,
    TrustedIdp,
};
use parking_lot::Mutex;
use rusqlite::{Connection, Params, Row, ToSql, TransactionBehavior, ffi, params};

use crate::migrate::{CREATE_TABLE, CURRENT_VERSION, RECORD_VERSION, SQLITE};
use crate::read::{self, Columns, Decode};
use crate::types::*;
use crate::write::{self, Chain, Step, Value, Violation};
use crate::{EntryEncoder, Result, Store, StoreError};

const READERS: usize = 4;

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open(path)?;
                configure(&conn)?;
                conn.pragma_update(None, "query_only", "ON")?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { inner: Arc::new(Inner { writer: Mutex::new(writer), readers, next_reader: AtomicUsize::new(0) }) })
    }

    /// Runs a short read on a free reader connection. Reads are point lookups of a few
    /// microseconds, so they run inline rather than paying for a thread hop.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        for reader in &self.inner.readers {
            if let Some(conn) = reader.try_lock() {
                return f(&conn);
            }
        }
        let i = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) % self.inner.readers.len();
        f(&self.inner.readers[i].lock())
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute(CREATE_TABLE, [])?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(CURRENT_VERSION, [], |r| r.get(0))?;
    for migration in SQLITE.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql)?;
        tx.execute(RECORD_VERSION, [migration.version])?;
    }
    tx.commit()?;
    Ok(())
}

impl Columns for Row<'_> {
    fn text(&self, idx: usize) -> Result<String> {
        Ok(self.get(idx)?)
    }

    fn opt_text(&self, idx: usize) -> Result<Option<String>> {
        Ok(self.get(idx)?)
    }

    fn int(&self, idx: usize) -> Result<i64> {
        Ok(self.get(idx)?)
    }

    fn opt_int(&self, idx: usize) -> Result<Option<i64>> {
        Ok(self.get(idx)?)
    }

    fn boolean(&self, idx: usize) -> Result<bool> {
        Ok(self.get(idx)?)
    }

    fn bytes(&self, idx: usize) -> Result<Vec<u8>> {
        Ok(self.get(idx)?)
    }
}

fn query_all<T>(conn: &Connection, sql: &str, params: impl Params, decode: Decode<T>) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        all.push(decode(row)?);
    }
    Ok(all)
}

fn query_one<T>(conn: &Connection, sql: &str, params: impl Params, decode: Decode<T>) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(|row| decode(row)).transpose()
}

fn latest_epoch(conn: &Connection, subjects: &[(EpochKind, &str)]) -> Result<Option<i64>> {
    let mut latest = None;
    for (kind, subject) in subjects {
        latest = latest.max(query_one(conn, read::EPOCH, [kind.as_str(), *subject], read::int)?);
    }
    Ok(latest)
}

fn token_revoked(conn: &Connection, jti: &str) -> Result<bool> {
    Ok(conn.prepare_cached(read::TOKEN_REVOKED)?.exists([jti])?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn owner(&self, key: &str) -> Result<Option<Owner>> {
        self.read(|c| query_one(c, read::OWNER, [key], read::owner))
    }

    async fn owners(&self) -> Result<Vec<Owner>> {
        self.read(|c| query_all(c, read::OWNERS, [], read::owner))
    }

    async fn agent(&self, key: &str) -> Result<Option<Agent>> {
        self.read(|c| query_one(c, read::AGENT, [key], read::agent))
    }

    async fn agents(&self) -> Result<Vec<Agent>> {
        self.read(|c| query_all(c, read::AGENTS, [], read::agent))
    }

    async fn client(&self, key: &str) -> Result<Option<Client>> {
        self.read(|c| query_one(c, read::CLIENT, [key], read::client))
    }

    async fn clients(&self) -> Result<Vec<Client>> {
        self.read(|c| query_all(c, read::CLIENTS, [], read::client))
    }

    async fn resource(&self, key: &str) -> Result<Option<Resource>> {
        self.read(|c| query_one(c, read::RESOURCE, [key], read::resource))
    }

    async fn resources(&self) -> Result<Vec<Resource>> {
        self.read(|c| query_all(c, read::RESOURCES, [], read::resource))
    }

    async fn federation_rules(&self) -> Result<Vec<FederationRule>> {
        self.read(|c| query_all(c, read::FEDERATION_RULES, [], read::federation_rule))
    }

    async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>> {
        self.read(|c| query_one(c, read::JOIN_TOKEN, [token_hash], read::join_token))
    }

    async fn trusted_idps(&self) -> Result<Vec<TrustedIdp>> {
        self.read(|c| query_all(c, read::TRUSTED_IDPS, [], read::trusted_idp))
    }

    async fn trusted_idp_by_issuer(&self, issuer: &str) -> Result<Option<TrustedIdp>> {
        self.read(|c| query_one(c, read::TRUSTED_IDP_BY_ISSUER, [issuer], read::trusted_idp))
    }

    async fn delegation_targets(&self, agent: &str) -> Result<Vec<DelegationTarget>> {
        self.read(|c| query_all(c, read::DELEGATION_TARGETS, [agent], read::delegation_target))
    }

    async fn consent(&self, owner: &str, client_id: &str, resource: &str) -> Result<Option<Consent>> {
        self.read(|c| query_one(c, read::CONSENT, [owner, client_id, resource], read::consent))
    }

    async fn auth_code(&self, code_hash: &str) -> Result<Option<AuthCode>> {
        self.read(|c| query_one(c, read::AUTH_CODE, [code_hash], read::auth_code))
    }

    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>> {
        self.read(|c| query_one(c, read::REFRESH_TOKEN, [token_hash], read::refresh_token))
    }

    async fn ciba_request(&self, req_hash: &str) -> Result<Option<CibaRequest>> {
        self.read(|c| query_one(c, read::CIBA_REQUEST, [req_hash], read::ciba_request))
    }

    async fn ciba_request_by_approval(&self, approval_id: &str) -> Result<Option<CibaRequest>> {
        self.read(|c| query_one(c, read::CIBA_BY_APPROVAL, [approval_id], read::ciba_request))
    }

    async fn ciba_pending(&self, owner: &str, now_ms: i64) -> Result<Vec<CibaRequest>> {
        self.read(|c| query_all(c, read::CIBA_PENDING, rusqlite::params![owner, now_ms], read::ciba_request))
    }

    async fn ciba_notifications_due(&self, now_ms: i64, limit: i64) -> Result<Vec<CibaNotification>> {
        let params = rusqlite::params![now_ms, limit];
        self.read(|c| query_all(c, read::CIBA_NOTIFICATIONS_DUE, params, read::ciba_notification))
    }

    async fn revoked_before(&self, subjects: &[(EpochKind, &str)]) -> Result<Option<i64>> {
        self.read(|c| latest_epoch(c, subjects))
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool> {
        self.read(|c| token_revoked(c, jti))
    }

    async fn token_revocation(&self, jti: &str, subjects: &[(EpochKind, &str)]) -> Result<TokenRevocation> {
        self.read(|c| {
            // One read transaction: WAL read locks are taken once instead of per statement.
            let tx = c.unchecked_transaction()?;
            let state =
                TokenRevocation { token_revoked: token_revoked(&tx, jti)?, not_before: latest_epoch(&tx, subjects)? };
            tx.commit()?;
            Ok(state)
        })
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>> {
        self.read(|c| query_all(c, read::SIGNING_KEYS, [], read::key))
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| query_one(c, read::SETTING, [key], read::text))
    }

    async fn commit(&self, jobs: Vec<WriteJob>, encoder: Arc<dyn EntryEncoder>) -> Result<Vec<JobOutcome>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || commit_sync(&mut inner.writer.lock(), jobs, encoder.as_ref()))
            .await
            .map_err(|e| StoreError::Database(format!("writer task failed: {e}")))?
    }

    async fn audit_len(&self) -> Result<u64> {
        self.read(|c| to_u64(c.query_row(read::AUDIT_LEN, [], |r| r.get(0))?))
    }

    async fn audit_entries(&self, from: u64, to: u64) -> Result<Vec<StoredEntry>> {
        let (from, to) = (to_i64(from)?, to_i64(to)?);
        self.read(|c| query_all(c, read::AUDIT_ENTRIES, [from, to], read::entry))
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        self.read(|c| query_one(c, read::LATEST_CHECKPOINT, [], read::checkpoint))
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>> {
        self.read(|c| query_all(c, read::CHECKPOINTS, [], read::checkpoint))
    }

    async fn insert_checkpoint(&self, cp: &StoredCheckpoint) -> Result<()> {
        let conn = self.inner.writer.lock();
        conn.prepare_cached(write::INSERT_CHECKPOINT)?.execute(params![
            to_i64(cp.tree_size)?,
            cp.root.as_slice(),
            cp.note,
            frontier_to_text(&cp.frontier),
            cp.created_at_ms
        ])?;
        Ok(())
    }

    async fn audit_leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>> {
        let (from, to) = (to_i64(from)?, to_i64(to)?);
        self.read(|c| query_all(c, read::AUDIT_LEAF_HASHES, [from, to], read::leaf_hash))
    }

    async fn audit_tiles(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, [u8; 32])>> {
        let (level, from, to) = (i64::from(level), to_i64(from)?, to_i64(to)?);
        self.read(|c| query_all(c, read::AUDIT_TILES, [level, from, to], read::tile))
    }

    async fn audit_tiles_len(&self, level: u32) -> Result<u64> {
        self.read(|c| to_u64(c.query_row(read::AUDIT_TILES_LEN, [i64::from(level)], |r| r.get(0))?))
    }

    async fn insert_audit_tiles(&self, level: u32, first: u64, hashes: &[[u8; 32]]) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let hashes = hashes.to_vec();
        // The fsync runs off the async threads, like a commit's.
        tokio::task::spawn_blocking(move || insert_tiles_sync(&mut inner.writer.lock(), level, first, &hashes))
            .await
            .map_err(|e| StoreError::Database(format!("writer task failed: {e}")))?
    }

    async fn ssf_streams(&self) -> Result<Vec<crate::SsfStream>> {
        self.read(|c| query_all(c, crate::ssf::STREAMS, [], crate::ssf::stream))
    }

    async fn ssf_events(&self, stream_id: &str, limit: i64) -> Result<Vec<crate::SsfEvent>> {
        self.read(|c| query_all(c, crate::ssf::EVENTS, params![stream_id, limit], crate::ssf::event))
    }

    async fn logout_events(&self, limit: i64) -> Result<Vec<crate::LogoutEvent>> {
        self.read(|c| query_all(c, crate::ssf::LOGOUTS, [limit], crate::ssf::logout))
    }

    async fn purge_expired(&self, now_secs: i64) -> Result<u64> {
        let conn = self.inner.writer.lock();
        let a = conn.prepare_cached(write::PURGE_REVOKED)?.execute([now_secs])?;
        let b = conn.prepare_cached(write::PURGE_USED_ONCE)?.execute([now_secs])?;
        let keep_until_ms = (now_secs - write::KEEP_SPENT_SECS) * 1000;
        let c = conn.prepare_cached(write::PURGE_AUTH_CODES)?.execute([keep_until_ms])?;
        let d = conn.prepare_cached(write::PURGE_REFRESH_TOKENS)?.execute([keep_until_ms])?;
        Ok((a + b + c + d) as u64)
    }
}

fn insert_tiles_sync(conn: &mut Connection, level: u32, first: u64, hashes: &[[u8; 32]]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (idx, hash) in (first..).zip(hashes) {
        tx.prepare_cached(write::INSERT_TILE)?.execute(params![i64::from(level), to_i64(idx)?, hash.as_slice()])?;
    }
    tx.commit()?;
    Ok(())
}

fn commit_sync(conn: &mut Connection, jobs: Vec<WriteJob>, encoder: &dyn EntryEncoder) -> Result<Vec<JobOutcome>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut chain = query_one(&tx, write::HEAD, [], Chain::after)?.unwrap_or_default();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result = match &job.mutation {
            None => Ok(()),
            Some(mutation) => apply(&mut tx, mutation)?,
        };
        let (entry, outcome) = chain.append(job.event, job.ts_ms, result, encoder);
        tx.prepare_cached(write::APPEND)?.execute(params![
            to_i64(outcome.seq)?,
            entry.leaf_hash.as_slice(),
            entry.canonical
        ])?;
        outcomes.push(outcome);
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Runs one mutation's statements in a savepoint. A refusal (`Ok(Err(_))`) leaves nothing
/// behind; any other failure fails the whole commit.
fn apply(tx: &mut rusqlite::Transaction<'_>, mutation: &Mutation) -> Result<std::result::Result<(), MutationError>> {
    let savepoint = tx.savepoint()?;
    for step in Step::all(mutation) {
        let params: Vec<&dyn ToSql> = step.params.iter().map(bind).collect();
        let ran = savepoint.prepare_cached(step.sql)?.execute(params.as_slice());
        let result = step.outcome(ran.map(|rows| rows > 0), violation)?;
        if result.is_err() {
            return Ok(result);
        }
    }
    savepoint.commit()?;
    Ok(Ok(()))
}

fn bind<'v>(value: &'v Value<'_>) -> &'v dyn ToSql {
    match value {
        Value::Text(v) => v,
        Value::OwnedText(v) => v,
        Value::OwnedOptText(v) => v,
        Value::OptText(v) => v,
        Value::Int(v) => v,
        Value::OptInt(v) => v,
        Value::Bool(v) => v,
        Value::Bytes(v) => v,
    }
}

fn violation(e: &rusqlite::Error) -> Option<Violation> {
    match e.sqlite_error()?.extended_code {
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => Some(Violation::Unique),
        _ => None,
    }
}
