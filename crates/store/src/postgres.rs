//! The store for several replicas: PostgreSQL behind a small `deadpool-postgres` pool.
//!
//! Connections are made without TLS (`NoTls`), so the database must be on loopback or a
//! private network for now. Replicas serialize their appends to the audit log with a
//! transaction-scoped advisory lock, so the log stays one chain however many of them write;
//! reads never take it. The lock is keyed by the schema, so deployments in different schemas
//! of one database don't wait on each other.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use mandate_core::{
    Agent, AuthCode, Client, Consent, DelegationTarget, FederationRule, JoinToken, Owner, RefreshToken, Resource,
    TrustedIdp,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};

use crate::migrate::{CREATE_TABLE, CURRENT_VERSION, POSTGRES, RECORD_VERSION};
use crate::read::{self, Columns, Decode};
use crate::types::*;
use crate::write::{self, Chain, Step, Value, Violation};
use crate::{EntryEncoder, Result, Store, StoreError};

const POOL_SIZE: usize = 8;
/// Used when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock classes: the first key of `pg_advisory_xact_lock(int, int)`; the second is
/// the schema's `hashtext`.
const MIGRATE_LOCK: i32 = 0x4d44_0001;
const COMMIT_LOCK: i32 = 0x4d44_0002;
const LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";
/// The latest epoch over all subjects in one round trip.
/// The latest revocation epoch of the subjects whose kinds and names are the two array
/// parameters `$kinds` and `$names`.
macro_rules! latest_epoch {
    ($kinds:literal, $names:literal) => {
        concat!(
            "SELECT MAX(e.not_before) FROM revocation_epochs e JOIN unnest(",
            $kinds,
            "::text[], ",
            $names,
            "::text[]) AS s(kind, name) ON e.kind = s.kind AND e.name = s.name"
        )
    };
}

const EPOCHS: &str = latest_epoch!("$1", "$2");
const TOKEN_REVOCATION: &str =
    concat!("SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1), (", latest_epoch!("$2", "$3"), ")");

type Param<'a> = &'a (dyn ToSql + Sync);

/// Revocation subjects as the two text arrays [`latest_epoch!`] queries take.
fn subject_arrays<'a>(subjects: &[(EpochKind, &'a str)]) -> (Vec<&'a str>, Vec<&'a str>) {
    subjects.iter().map(|(kind, name)| (kind.as_str(), *name)).unzip()
}

pub struct PostgresStore {
    pool: Pool,
    /// The second advisory-lock key: `hashtext` of the schema the store lives in.
    schema_key: i32,
}

impl PostgresStore {
    /// Connects to the database at `url` and brings its schema up to date. With `schema`, every
    /// connection works in that schema, which is created if missing.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let mut config =
            Config::from_str(url).map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        if let Some(schema) = schema {
            check_schema(schema)?;
            let options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
            config.options(format!("{options}-c search_path={schema}"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool =
            Pool::builder(manager).max_size(POOL_SIZE).build().map_err(|e| StoreError::Database(e.to_string()))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let schema_key = migrate(&mut client, schema).await?;
        Ok(Self { pool, schema_key })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.query(&stmt, params).await?)
    }

    async fn query_all<T>(&self, sql: &str, params: &[Param<'_>], decode: Decode<T>) -> Result<Vec<T>> {
        self.rows(sql, params).await?.iter().map(|row| decode(row)).collect()
    }

    async fn query_one<T>(&self, sql: &str, params: &[Param<'_>], decode: Decode<T>) -> Result<Option<T>> {
        self.rows(sql, params).await?.first().map(|row| decode(row)).transpose()
    }

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.execute(&stmt, params).await?)
    }

    /// Takes this schema's append lock for the rest of the transaction and reads where the
    /// log continues.
    async fn lock_log(&self, tx: &Transaction<'_>) -> Result<Chain> {
        let lock = tx.prepare_cached(LOCK).await?;
        tx.execute(&lock, &[&COMMIT_LOCK, &self.schema_key]).await?;
        let head = tx.prepare_cached(write::HEAD).await?;
        Ok(tx.query_opt(&head, &[]).await?.map(|row| Chain::after(&row)).transpose()?.unwrap_or_default())
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => e.into(),
        e => StoreError::Database(e.to_string()),
    }
}

/// Schema names go into SQL and connection options unquoted, so only plain lowercase
/// identifiers are accepted.
fn check_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let valid = schema.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Config(format!("invalid schema name {schema:?}: use [a-z_][a-z0-9_]*, at most 63 characters")))
    }
}

/// Creates the schema if asked and applies pending migrations, holding an advisory lock so
/// replicas starting together do this once. Returns the schema's lock key.
async fn migrate(client: &mut deadpool_postgres::Client, schema: Option<&str>) -> Result<i32> {
    let tx = client.transaction().await?;
    let key: Option<i32> =
        tx.query_one("SELECT hashtext(COALESCE($1::text, current_schema()::text))", &[&schema]).await?.try_get(0)?;
    let key = key.ok_or_else(|| StoreError::Config("the search_path names no existing schema".into()))?;
    tx.execute(LOCK, &[&MIGRATE_LOCK, &key]).await?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
    }
    tx.batch_execute(CREATE_TABLE).await?;
    let current: i64 = tx.query_one(CURRENT_VERSION, &[]).await?.try_get(0)?;
    for migration in POSTGRES.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(RECORD_VERSION, &[&migration.version]).await?;
    }
    tx.commit().await?;
    Ok(key)
}

impl Columns for Row {
    fn text(&self, idx: usize) -> Result<String> {
        Ok(self.try_get(idx)?)
    }

    fn opt_text(&self, idx: usize) -> Result<Option<String>> {
        Ok(self.try_get(idx)?)
    }

    fn int(&self, idx: usize) -> Result<i64> {
        Ok(self.try_get(idx)?)
    }

    fn opt_int(&self, idx: usize) -> Result<Option<i64>> {
        Ok(self.try_get(idx)?)
    }

    fn boolean(&self, idx: usize) -> Result<bool> {
        Ok(self.try_get(idx)?)
    }

    fn bytes(&self, idx: usize) -> Result<Vec<u8>> {
        Ok(self.try_get(idx)?)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn owner(&self, key: &str) -> Result<Option<Owner>> {
        self.query_one(read::OWNER, &[&key], read::owner).await
    }

    async fn owners(&self) -> Result<Vec<Owner>> {
        self.query_all(read::OWNERS, &[], read::owner).await
    }

    async fn agent(&self, key: &str) -> Result<Option<Agent>> {
        self.query_one(read::AGENT, &[&key], read::agent).await
    }

    async fn agents(&self) -> Result<Vec<Agent>> {
        self.query_all(read::AGENTS, &[], read::agent).await
    }

    async fn client(&self, key: &str) -> Result<Option<Client>> {
        self.query_one(read::CLIENT, &[&key], read::client).await
    }

    async fn clients(&self) -> Result<Vec<Client>> {
        self.query_all(read::CLIENTS, &[], read::client).await
    }

    async fn resource(&self, key: &str) -> Result<Option<Resource>> {
        self.query_one(read::RESOURCE, &[&key], read::resource).await
    }

    async fn resources(&self) -> Result<Vec<Resource>> {
        self.query_all(read::RESOURCES, &[], read::resource).await
    }

    async fn federation_rules(&self) -> Result<Vec<FederationRule>> {
        self.query_all(read::FEDERATION_RULES, &[], read::federation_rule).await
    }

    async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>> {
        self.query_one(read::JOIN_TOKEN, &[&token_hash], read::join_token).await
    }

    async fn trusted_idps(&self) -> Result<Vec<TrustedIdp>> {
        self.query_all(read::TRUSTED_IDPS, &[], read::trusted_idp).await
    }

    async fn trusted_idp_by_issuer(&self, issuer: &str) -> Result<Option<TrustedIdp>> {
        self.query_one(read::TRUSTED_IDP_BY_ISSUER, &[&issuer], read::trusted_idp).await
    }

    async fn delegation_targets(&self, agent: &str) -> Result<Vec<DelegationTarget>> {
        self.query_all(read::DELEGATION_TARGETS, &[&agent], read::delegation_target).await
    }

    async fn consent(&self, owner: &str, client_id: &str, resource: &str) -> Result<Option<Consent>> {
        self.query_one(read::CONSENT, &[&owner, &client_id, &resource], read::consent).await
    }

    async fn auth_code(&self, code_hash: &str) -> Result<Option<AuthCode>> {
        self.query_one(read::AUTH_CODE, &[&code_hash], read::auth_code).await
    }

    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>> {
        self.query_one(read::REFRESH_TOKEN, &[&token_hash], read::refresh_token).await
    }

    async fn ciba_request(&self, req_hash: &str) -> Result<Option<CibaRequest>> {
        self.query_one(read::CIBA_REQUEST, &[&req_hash], read::ciba_request).await
    }

    async fn ciba_request_by_approval(&self, approval_id: &str) -> Result<Option<CibaRequest>> {
        self.query_one(read::CIBA_BY_APPROVAL, &[&approval_id], read::ciba_request).await
    }

    async fn ciba_pending(&self, owner: &str, now_ms: i64) -> Result<Vec<CibaRequest>> {
        self.query_all(read::CIBA_PENDING, &[&owner, &now_ms], read::ciba_request).await
    }

    async fn ciba_notifications_due(&self, now_ms: i64, limit: i64) -> Result<Vec<CibaNotification>> {
        self.query_all(read::CIBA_NOTIFICATIONS_DUE, &[&now_ms, &limit], read::ciba_notification).await
    }

    async fn revoked_before(&self, subjects: &[(EpochKind, &str)]) -> Result<Option<i64>> {
        let (kinds, names) = subject_arrays(subjects);
        Ok(self.query_one(EPOCHS, &[&kinds, &names], |row| row.opt_int(0)).await?.flatten())
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool> {
        Ok(!self.rows(read::TOKEN_REVOKED, &[&jti]).await?.is_empty())
    }

    async fn token_revocation(&self, jti: &str, subjects: &[(EpochKind, &str)]) -> Result<TokenRevocation> {
        let (kinds, names) = subject_arrays(subjects);
        let decode: Decode<(bool, Option<i64>)> = |row| Ok((row.boolean(0)?, row.opt_int(1)?));
        let row = self.query_one(TOKEN_REVOCATION, &[&jti, &kinds, &names], decode).await?;
        let (token_revoked, not_before) = row.unwrap_or_default();
        Ok(TokenRevocation { token_revoked, not_before })
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>> {
        self.query_all(read::SIGNING_KEYS, &[], read::key).await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        self.query_one(read::SETTING, &[&key], read::text).await
    }

    async fn commit(&self, jobs: Vec<WriteJob>, encoder: Arc<dyn EntryEncoder>) -> Result<Vec<JobOutcome>> {
        let mut client = self.client().await?;
        let mut tx = client.transaction().await?;
        let mut chain = self.lock_log(&tx).await?;
        let append = tx.prepare_cached(write::APPEND).await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let result = match &job.mutation {
                None => Ok(()),
                Some(mutation) => apply(&mut tx, mutation).await?,
            };
            let (entry, outcome) = chain.append(job.event, job.ts_ms, result, encoder.as_ref());
            tx.execute(&append, &[&to_i64(outcome.seq)?, &entry.leaf_hash.as_slice(), &entry.canonical]).await?;
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn audit_len(&self) -> Result<u64> {
        let len = self.query_one(read::AUDIT_LEN, &[], read::int).await?;
        to_u64(len.unwrap_or_default())
    }

    async fn audit_entries(&self, from: u64, to: u64) -> Result<Vec<StoredEntry>> {
        self.query_all(read::AUDIT_ENTRIES, &[&to_i64(from)?, &to_i64(to)?], read::entry).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        self.query_one(read::LATEST_CHECKPOINT, &[], read::checkpoint).await
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>> {
        self.query_all(read::CHECKPOINTS, &[], read::checkpoint).await
    }

    async fn insert_checkpoint(&self, cp: &StoredCheckpoint) -> Result<()> {
        let params: [Param<'_>; 5] =
            [&to_i64(cp.tree_size)?, &cp.root.as_slice(), &cp.note, &frontier_to_text(&cp.frontier), &cp.created_at_ms];
        self.execute(write::INSERT_CHECKPOINT, &params).await?;
        Ok(())
    }

    async fn audit_leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>> {
        self.query_all(read::AUDIT_LEAF_HASHES, &[&to_i64(from)?, &to_i64(to)?], read::leaf_hash).await
    }

    async fn audit_tiles(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, [u8; 32])>> {
        self.query_all(read::AUDIT_TILES, &[&i64::from(level), &to_i64(from)?, &to_i64(to)?], read::tile).await
    }

    async fn audit_tiles_len(&self, level: u32) -> Result<u64> {
        let len = self.query_one(read::AUDIT_TILES_LEN, &[&i64::from(level)], read::int).await?;
        to_u64(len.unwrap_or_default())
    }

    async fn insert_audit_tiles(&self, level: u32, first: u64, hashes: &[[u8; 32]]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let insert = tx.prepare_cached(write::INSERT_TILE).await?;
        for (idx, hash) in (first..).zip(hashes) {
            tx.execute(&insert, &[&i64::from(level), &to_i64(idx)?, &hash.as_slice()]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ssf_streams(&self) -> Result<Vec<crate::SsfStream>> {
        self.query_all(crate::ssf::STREAMS, &[], crate::ssf::stream).await
    }

    async fn ssf_events(&self, stream_id: &str, limit: i64) -> Result<Vec<crate::SsfEvent>> {
        self.query_all(crate::ssf::EVENTS, &[&stream_id, &limit], crate::ssf::event).await
    }

    async fn logout_events(&self, limit: i64) -> Result<Vec<crate::LogoutEvent>> {
        self.query_all(crate::ssf::LOGOUTS, &[&limit], crate::ssf::logout).await
    }

    async fn purge_expired(&self, now_secs: i64) -> Result<u64> {
        let tokens = self.execute(write::PURGE_REVOKED, &[&now_secs]).await?;
        let once = self.execute(write::PURGE_USED_ONCE, &[&now_secs]).await?;
        let keep_until_ms = (now_secs - write::KEEP_SPENT_SECS) * 1000;
        let codes = self.execute(write::PURGE_AUTH_CODES, &[&keep_until_ms]).await?;
        let refresh = self.execute(write::PURGE_REFRESH_TOKENS, &[&keep_until_ms]).await?;
        Ok(tokens + once + codes + refresh)
    }
}

/// Runs one mutation's statements in a savepoint. A refusal (`Ok(Err(_))`) leaves nothing
/// behind; any other failure fails the whole commit.
async fn apply(tx: &mut Transaction<'_>, mutation: &Mutation) -> Result<std::result::Result<(), MutationError>> {
    let steps = Step::all(mutation);
    let mut statements = Vec::with_capacity(steps.len());
    for step in &steps {
        statements.push(tx.prepare_cached(step.sql).await?);
    }
    let savepoint = tx.savepoint("m").await?;
    for (step, stmt) in steps.iter().zip(&statements) {
        let params: Vec<Param<'_>> = step.params.iter().map(bind).collect();
        let ran = savepoint.execute(stmt, &params).await;
        let result = step.outcome(ran.map(|rows| rows > 0), violation)?;
        if result.is_err() {
            savepoint.rollback().await?;
            return Ok(result);
        }
    }
    savepoint.commit().await?;
    Ok(Ok(()))
}

fn bind<'v>(value: &'v Value<'_>) -> Param<'v> {
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

fn violation(e: &tokio_postgres::Error) -> Option<Violation> {
    let code = e.code()?;
    if *code == SqlState::UNIQUE_VIOLATION {
        Some(Violation::Unique)
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        Some(Violation::ForeignKey)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::check_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["mandate", "_x", "mt_0a9f", &"a".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "Mandate", "9lives", "a-b", "a;drop schema public", "a b", "é", &"a".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
