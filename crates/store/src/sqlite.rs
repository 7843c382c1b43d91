//! The embedded default store: SQLite in WAL mode with `synchronous=FULL`, one writer
//! connection (all writes are batched through [`Store::commit`]) and a few reader connections
//! that never wait for the writer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use mandate_core::{Agent, Client, ClientAuthMethod, Name, Owner, Resource, ResourceUri, TrustDomain};
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

use crate::migrate::{CREATE_TABLE, SQLITE};
use crate::types::*;
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
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
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
    let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
    for migration in SQLITE.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, 0)",
            [migration.version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn corrupt(what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(what.to_string().into())
}

fn name(row: &Row<'_>, idx: usize) -> rusqlite::Result<Name> {
    let raw: String = row.get(idx)?;
    Name::parse(&raw).map_err(corrupt)
}

fn owner_row(row: &Row<'_>) -> rusqlite::Result<Owner> {
    Ok(Owner {
        name: name(row, 0)?,
        display_name: row.get(1)?,
        created_at_ms: row.get(2)?,
    })
}

fn agent_row(row: &Row<'_>) -> rusqlite::Result<Agent> {
    let spiffe: String = row.get(2)?;
    let agent_name = name(row, 0)?;
    let spiffe_id = spiffe_id_for(&spiffe, &agent_name).map_err(corrupt)?;
    Ok(Agent {
        name: agent_name,
        owner: name(row, 1)?,
        spiffe_id,
        scopes: scopes_from_text(&row.get::<_, String>(3)?),
        created_at_ms: row.get(4)?,
    })
}

/// Rebuilds a stored agent SPIFFE ID through the validated constructor.
pub(crate) fn spiffe_id_for(stored: &str, agent: &Name) -> std::result::Result<mandate_core::SpiffeId, String> {
    let trust_domain = stored
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_suffix(&format!("/agent/{agent}")))
        .ok_or_else(|| format!("stored SPIFFE ID {stored:?} does not belong to agent {agent}"))?;
    let td = TrustDomain::parse(trust_domain).map_err(|e| e.to_string())?;
    Ok(td.agent_id(agent))
}

fn client_row(row: &Row<'_>) -> rusqlite::Result<Client> {
    let method: String = row.get(2)?;
    Ok(Client {
        client_id: row.get(0)?,
        agent: name(row, 1)?,
        auth_method: ClientAuthMethod::parse(&method).ok_or_else(|| corrupt(format!("auth method {method}")))?,
        secret_hash: row.get(3)?,
        jwks: row.get(4)?,
        can_introspect: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

fn resource_row(row: &Row<'_>) -> rusqlite::Result<Resource> {
    let uri: String = row.get(0)?;
    Ok(Resource {
        uri: ResourceUri::parse(&uri).map_err(corrupt)?,
        scopes: scopes_from_text(&row.get::<_, String>(1)?),
        created_at_ms: row.get(2)?,
    })
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        kid: row.get(0)?,
        purpose: row.get(1)?,
        alg: row.get(2)?,
        sealed_private_key: row.get(3)?,
        created_at_ms: row.get(4)?,
        activate_at_ms: row.get(5)?,
        retire_at_ms: row.get(6)?,
    })
}

fn checkpoint_row(row: &Row<'_>) -> rusqlite::Result<StoredCheckpoint> {
    let root: Vec<u8> = row.get(1)?;
    let frontier: String = row.get(3)?;
    Ok(StoredCheckpoint {
        tree_size: row.get::<_, i64>(0)?.try_into().map_err(corrupt)?,
        root: hash_from_slice(&root).ok_or_else(|| corrupt("checkpoint root"))?,
        note: row.get(2)?,
        frontier: frontier_from_text(&frontier).ok_or_else(|| corrupt("checkpoint frontier"))?,
        created_at_ms: row.get(4)?,
    })
}

fn query_all<T>(conn: &Connection, sql: &str, map: fn(&Row<'_>) -> rusqlite::Result<T>) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], map)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn query_one<T>(
    conn: &Connection,
    sql: &str,
    key: &str,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.query_row([key], map).optional()?)
}

const OWNER_COLS: &str = "SELECT name, display_name, created_at_ms FROM owners";
const AGENT_COLS: &str = "SELECT name, owner, spiffe_id, scopes, created_at_ms FROM agents";
const CLIENT_COLS: &str =
    "SELECT client_id, agent, auth_method, secret_hash, jwks, can_introspect, created_at_ms FROM clients";
const RESOURCE_COLS: &str = "SELECT uri, scopes, created_at_ms FROM resources";

#[async_trait]
impl Store for SqliteStore {
    async fn owner(&self, key: &str) -> Result<Option<Owner>> {
        self.read(|c| query_one(c, &format!("{OWNER_COLS} WHERE name = ?1"), key, owner_row))
    }

    async fn owners(&self) -> Result<Vec<Owner>> {
        self.read(|c| query_all(c, &format!("{OWNER_COLS} ORDER BY name"), owner_row))
    }

    async fn agent(&self, key: &str) -> Result<Option<Agent>> {
        self.read(|c| query_one(c, &format!("{AGENT_COLS} WHERE name = ?1"), key, agent_row))
    }

    async fn agents(&self) -> Result<Vec<Agent>> {
        self.read(|c| query_all(c, &format!("{AGENT_COLS} ORDER BY name"), agent_row))
    }

    async fn client(&self, key: &str) -> Result<Option<Client>> {
        self.read(|c| query_one(c, &format!("{CLIENT_COLS} WHERE client_id = ?1"), key, client_row))
    }

    async fn clients(&self) -> Result<Vec<Client>> {
        self.read(|c| query_all(c, &format!("{CLIENT_COLS} ORDER BY client_id"), client_row))
    }

    async fn resource(&self, key: &str) -> Result<Option<Resource>> {
        self.read(|c| query_one(c, &format!("{RESOURCE_COLS} WHERE uri = ?1"), key, resource_row))
    }

    async fn resources(&self) -> Result<Vec<Resource>> {
        self.read(|c| query_all(c, &format!("{RESOURCE_COLS} ORDER BY uri"), resource_row))
    }

    async fn revoked_before(&self, subjects: &[(EpochKind, &str)]) -> Result<Option<i64>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT not_before FROM revocation_epochs WHERE kind = ?1 AND name = ?2")?;
            let mut latest = None;
            for (kind, subject) in subjects {
                let epoch: Option<i64> = stmt.query_row(params![kind.as_str(), subject], |r| r.get(0)).optional()?;
                latest = latest.max(epoch);
            }
            Ok(latest)
        })
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM revoked_tokens WHERE jti = ?1")?;
            Ok(stmt.exists([jti])?)
        })
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>> {
        self.read(|c| {
            query_all(
                c,
                "SELECT kid, purpose, alg, sealed, created_at_ms, activate_at_ms, retire_at_ms \
                 FROM signing_keys ORDER BY activate_at_ms, kid",
                key_row,
            )
        })
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| query_one(c, "SELECT value FROM settings WHERE key = ?1", key, |r| r.get(0)))
    }

    async fn commit(&self, jobs: Vec<WriteJob>, encoder: Arc<dyn EntryEncoder>) -> Result<Vec<JobOutcome>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || commit_sync(&mut inner.writer.lock(), jobs, encoder.as_ref()))
            .await
            .map_err(|e| StoreError::Database(format!("writer task failed: {e}")))?
    }

    async fn audit_len(&self) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log", [], |r| r.get(0))?;
            u64::try_from(n).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
    }

    async fn audit_entries(&self, from: u64, to: u64) -> Result<Vec<StoredEntry>> {
        let (from, to) = (to_i64(from)?, to_i64(to)?);
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT seq, leaf_hash, event FROM audit_log WHERE seq >= ?1 AND seq < ?2 ORDER BY seq")?;
            let rows = stmt.query_map([from, to], |r| {
                let hash: Vec<u8> = r.get(1)?;
                Ok(StoredEntry {
                    seq: r.get::<_, i64>(0)?.try_into().map_err(corrupt)?,
                    leaf_hash: hash_from_slice(&hash).ok_or_else(|| corrupt("leaf hash"))?,
                    canonical: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT tree_size, root, note, frontier, created_at_ms FROM audit_checkpoints \
                 ORDER BY tree_size DESC LIMIT 1",
            )?;
            Ok(stmt.query_row([], checkpoint_row).optional()?)
        })
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>> {
        self.read(|c| {
            query_all(
                c,
                "SELECT tree_size, root, note, frontier, created_at_ms FROM audit_checkpoints ORDER BY tree_size",
                checkpoint_row,
            )
        })
    }

    async fn insert_checkpoint(&self, cp: &StoredCheckpoint) -> Result<()> {
        let conn = self.inner.writer.lock();
        conn.execute(
            "INSERT INTO audit_checkpoints (tree_size, root, note, frontier, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tree_size) DO NOTHING",
            params![to_i64(cp.tree_size)?, cp.root.as_slice(), cp.note, frontier_to_text(&cp.frontier), cp.created_at_ms],
        )?;
        Ok(())
    }

    async fn purge_expired(&self, now_secs: i64) -> Result<u64> {
        let conn = self.inner.writer.lock();
        let a = conn.execute("DELETE FROM revoked_tokens WHERE expires_at < ?1", [now_secs])?;
        let b = conn.execute("DELETE FROM used_once WHERE expires_at < ?1", [now_secs])?;
        Ok((a + b) as u64)
    }
}

fn to_i64(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn commit_sync(conn: &mut Connection, jobs: Vec<WriteJob>, encoder: &dyn EntryEncoder) -> Result<Vec<JobOutcome>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let head: Option<(i64, Vec<u8>)> = tx
        .query_row("SELECT seq, leaf_hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (mut next_seq, mut prev) = match head {
        None => (0u64, [0u8; 32]),
        Some((seq, hash)) => (
            u64::try_from(seq).map_err(|e| StoreError::Corrupt(e.to_string()))? + 1,
            hash_from_slice(&hash).ok_or_else(|| StoreError::AuditChain("head hash is not 32 bytes".into()))?,
        ),
    };
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result = match &job.mutation {
            None => Ok(()),
            Some(mutation) => {
                let savepoint = tx.savepoint()?;
                match apply(&savepoint, mutation) {
                    Ok(()) => {
                        savepoint.commit()?;
                        Ok(())
                    }
                    Err(Applied::Refused(e)) => Err(e),
                    Err(Applied::Db(e)) => return Err(e.into()),
                }
            }
        };
        let event = match &result {
            Ok(()) => job.event,
            Err(e) => job.event.refused(e.reason(), &e.to_string()),
        };
        let position = EntryPosition { seq: next_seq, prev, ts_ms: job.ts_ms };
        let entry = encoder.encode(&position, &event);
        tx.prepare_cached("INSERT INTO audit_log (seq, leaf_hash, event) VALUES (?1, ?2, ?3)")?
            .execute(params![to_i64(next_seq)?, entry.leaf_hash.as_slice(), entry.canonical])?;
        outcomes.push(JobOutcome { seq: next_seq, result });
        prev = entry.leaf_hash;
        next_seq += 1;
    }
    tx.commit()?;
    Ok(outcomes)
}

enum Applied {
    Refused(MutationError),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for Applied {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

/// Maps constraint violations to refusals; anything else is a database failure.
fn constraint(e: rusqlite::Error, what: &str, deleting: bool) -> Applied {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            // 787 = SQLITE_CONSTRAINT_FOREIGNKEY
            if f.extended_code == 787 {
                if deleting {
                    Applied::Refused(MutationError::InUse(what.to_owned()))
                } else {
                    Applied::Refused(MutationError::NotFound(format!("{what}: referenced record does not exist")))
                }
            } else {
                Applied::Refused(MutationError::Conflict(what.to_owned()))
            }
        }
        _ => Applied::Db(e),
    }
}

fn insert(conn: &Connection, sql: &str, what: &str, values: &[&dyn rusqlite::ToSql]) -> std::result::Result<(), Applied> {
    conn.prepare_cached(sql)?
        .execute(values)
        .map(|_| ())
        .map_err(|e| constraint(e, what, false))
}

fn delete(conn: &Connection, sql: &str, what: &str, key: &str) -> std::result::Result<(), Applied> {
    match conn.prepare_cached(sql)?.execute([key]) {
        Ok(0) => Err(Applied::Refused(MutationError::NotFound(what.to_owned()))),
        Ok(_) => Ok(()),
        Err(e) => Err(constraint(e, what, true)),
    }
}

fn apply(conn: &Connection, mutation: &Mutation) -> std::result::Result<(), Applied> {
    match mutation {
        Mutation::CreateOwner(o) => insert(
            conn,
            "INSERT INTO owners (name, display_name, created_at_ms) VALUES (?1, ?2, ?3)",
            &format!("owner {}", o.name),
            &[&o.name.as_str(), &o.display_name, &o.created_at_ms],
        ),
        Mutation::DeleteOwner(n) => delete(conn, "DELETE FROM owners WHERE name = ?1", &format!("owner {n}"), n),
        Mutation::CreateAgent(a) => insert(
            conn,
            "INSERT INTO agents (name, owner, spiffe_id, scopes, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            &format!("agent {}", a.name),
            &[&a.name.as_str(), &a.owner.as_str(), &a.spiffe_id.as_str(), &scopes_to_text(&a.scopes), &a.created_at_ms],
        ),
        Mutation::DeleteAgent(n) => delete(conn, "DELETE FROM agents WHERE name = ?1", &format!("agent {n}"), n),
        Mutation::CreateClient(c) => insert(
            conn,
            "INSERT INTO clients (client_id, agent, auth_method, secret_hash, jwks, can_introspect, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &format!("client {}", c.client_id),
            &[
                &c.client_id,
                &c.agent.as_str(),
                &c.auth_method.as_str(),
                &c.secret_hash,
                &c.jwks,
                &c.can_introspect,
                &c.created_at_ms,
            ],
        ),
        Mutation::DeleteClient(id) => delete(conn, "DELETE FROM clients WHERE client_id = ?1", &format!("client {id}"), id),
        Mutation::CreateResource(r) => insert(
            conn,
            "INSERT INTO resources (uri, scopes, created_at_ms) VALUES (?1, ?2, ?3)",
            &format!("resource {}", r.uri),
            &[&r.uri.as_str(), &scopes_to_text(&r.scopes), &r.created_at_ms],
        ),
        Mutation::DeleteResource(u) => delete(conn, "DELETE FROM resources WHERE uri = ?1", &format!("resource {u}"), u),
        Mutation::RevokeBefore { kind, name, not_before_secs } => insert(
            conn,
            "INSERT INTO revocation_epochs (kind, name, not_before) VALUES (?1, ?2, ?3) \
             ON CONFLICT (kind, name) DO UPDATE SET not_before = MAX(not_before, excluded.not_before)",
            "revocation epoch",
            &[&kind.as_str(), name, not_before_secs],
        ),
        Mutation::RevokeToken { jti, expires_at_secs } => insert(
            conn,
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2) ON CONFLICT (jti) DO NOTHING",
            "revoked token",
            &[jti, expires_at_secs],
        ),
        Mutation::ConsumeOnce { id, expires_at_secs } => insert(
            conn,
            "INSERT INTO used_once (id, expires_at) VALUES (?1, ?2)",
            "one-time identifier was already used",
            &[id, expires_at_secs],
        ),
        Mutation::InsertKey(k) => insert(
            conn,
            "INSERT INTO signing_keys (kid, purpose, alg, sealed, created_at_ms, activate_at_ms, retire_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &format!("key {}", k.kid),
            &[&k.kid, &k.purpose, &k.alg, &k.sealed_private_key, &k.created_at_ms, &k.activate_at_ms, &k.retire_at_ms],
        ),
        Mutation::RetireKey { kid, retire_at_ms } => {
            let changed = conn
                .prepare_cached("UPDATE signing_keys SET retire_at_ms = ?2 WHERE kid = ?1")?
                .execute(params![kid, retire_at_ms])?;
            if changed == 0 {
                Err(Applied::Refused(MutationError::NotFound(format!("key {kid}"))))
            } else {
                Ok(())
            }
        }
        Mutation::PutSetting { key, value } => insert(
            conn,
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            "setting",
            &[key, value],
        ),
    }
}
