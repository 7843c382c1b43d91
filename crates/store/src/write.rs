//! The write half both backends share: each [`Mutation`] as one SQL statement (in the dialect
//! subset described in [`crate::read`]), how that statement's result becomes the job's result,
//! and the hash chain that places each job's event in the log. A backend only runs the
//! statements, in a savepoint per mutation, and says which constraint a failure violated.

use mandate_core::AuditEvent;

use crate::read::Columns;
use crate::types::*;
use crate::{EntryEncoder, Result, StoreError};

/// The last entry of the log, which the next one links to.
pub(crate) const HEAD: &str = "SELECT seq, leaf_hash FROM audit_log ORDER BY seq DESC LIMIT 1";
pub(crate) const APPEND: &str = "INSERT INTO audit_log (seq, leaf_hash, event) VALUES ($1, $2, $3)";

/// Writes outside [`Store::commit`](crate::Store::commit), which leave the log alone.
pub(crate) const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints \
    (tree_size, root, note, frontier, created_at_ms) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (tree_size) DO NOTHING";
pub(crate) const INSERT_TILE: &str =
    "INSERT INTO audit_tiles (level, idx, hash) VALUES ($1, $2, $3) ON CONFLICT (level, idx) DO NOTHING";
pub(crate) const PURGE_REVOKED: &str = "DELETE FROM revoked_tokens WHERE expires_at < $1";
pub(crate) const PURGE_USED_ONCE: &str = "DELETE FROM used_once WHERE expires_at < $1";
/// Codes and refresh tokens are kept this long past expiry so a late replay is still recognised.
pub(crate) const KEEP_SPENT_SECS: i64 = 86_400;
pub(crate) const PURGE_AUTH_CODES: &str = "DELETE FROM auth_codes WHERE expires_at_ms < $1";
pub(crate) const PURGE_REFRESH_TOKENS: &str = "DELETE FROM refresh_tokens WHERE expires_at_ms < $1";

/// A statement parameter; each backend binds it with its own driver's types.
pub(crate) enum Value<'a> {
    Text(&'a str),
    OwnedText(String),
    OwnedOptText(Option<String>),
    OptText(&'a Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Bytes(&'a [u8]),
}

/// The constraint a refused statement violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    Unique,
    ForeignKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Changing no row is fine: the statement's `ON CONFLICT` clause chose to leave it.
    Insert,
    /// Changing no row means the record was not there.
    Delete,
    Update,
}

/// One mutation as a statement, and what to call its record in a refusal.
pub(crate) struct Step<'a> {
    pub sql: &'static str,
    pub params: Vec<Value<'a>>,
    kind: Kind,
    what: String,
}

impl<'a> Step<'a> {
    /// The statements a mutation runs, in order; [`Mutation::All`] is flattened.
    pub fn all(mutation: &'a Mutation) -> Vec<Self> {
        let mut steps = Vec::new();
        Self::push(mutation, &mut steps);
        steps
    }

    fn push(mutation: &'a Mutation, steps: &mut Vec<Self>) {
        match mutation {
            Mutation::All(parts) => parts.iter().for_each(|part| Self::push(part, steps)),
            single => steps.push(Self::of(single)),
        }
    }

    fn of(mutation: &'a Mutation) -> Self {
        use Value::*;
        match mutation {
            Mutation::CreateOwner(o) => Self::insert(
                "INSERT INTO owners (name, display_name, created_at_ms, password_hash) VALUES ($1, $2, $3, $4)",
                format!("owner {}", o.name),
                vec![Text(o.name.as_str()), OptText(&o.display_name), Int(o.created_at_ms), OptText(&o.password_hash)],
            ),
            Mutation::DeleteOwner(n) => Self::delete("DELETE FROM owners WHERE name = $1", format!("owner {n}"), n),
            Mutation::CreateAgent(a) => Self::insert(
                "INSERT INTO agents (name, owner, spiffe_id, scopes, created_at_ms, selectors, may_impersonate) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                format!("agent {}", a.name),
                vec![
                    Text(a.name.as_str()),
                    Text(a.owner.as_str()),
                    Text(a.spiffe_id.as_str()),
                    OwnedText(scopes_to_text(&a.scopes)),
                    Int(a.created_at_ms),
                    OwnedText(json_text(&a.selectors)),
                    Bool(a.may_impersonate),
                ],
            ),
            Mutation::DeleteAgent(n) => Self::delete("DELETE FROM agents WHERE name = $1", format!("agent {n}"), n),
            Mutation::CreateClient(c) => Self::insert(
                "INSERT INTO clients (client_id, agent, auth_method, secret_hash, jwks, can_introspect, \
                 created_at_ms, redirect_uris, grant_types, client_name, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                format!("client {}", c.client_id),
                vec![
                    Text(&c.client_id),
                    OwnedOptText(c.agent.as_ref().map(|a| a.to_string())),
                    Text(c.auth_method.as_str()),
                    OptText(&c.secret_hash),
                    OptText(&c.jwks),
                    Bool(c.can_introspect),
                    Int(c.created_at_ms),
                    OwnedText(json_text(&c.redirect_uris)),
                    OwnedText(json_text(&c.grant_types)),
                    OptText(&c.client_name),
                    OptText(&c.metadata),
                ],
            ),
            Mutation::DeleteClient(id) => {
                Self::delete("DELETE FROM clients WHERE client_id = $1", format!("client {id}"), id)
            }
            Mutation::CreateResource(r) => Self::insert(
                "INSERT INTO resources (uri, scopes, created_at_ms) VALUES ($1, $2, $3)",
                format!("resource {}", r.uri),
                vec![Text(r.uri.as_str()), OwnedText(scopes_to_text(&r.scopes)), Int(r.created_at_ms)],
            ),
            Mutation::DeleteResource(u) => {
                Self::delete("DELETE FROM resources WHERE uri = $1", format!("resource {u}"), u)
            }
            // Raises the epoch only: a lower one leaves the row as it is.
            Mutation::RevokeBefore { kind, name, not_before_secs } => Self::insert(
                "INSERT INTO revocation_epochs (kind, name, not_before) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, name) DO UPDATE SET not_before = excluded.not_before \
                 WHERE excluded.not_before > revocation_epochs.not_before",
                "revocation epoch".into(),
                vec![Text(kind.as_str()), Text(name), Int(*not_before_secs)],
            ),
            Mutation::RevokeToken { jti, expires_at_secs } => Self::insert(
                "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (jti) DO NOTHING",
                "revoked token".into(),
                vec![Text(jti), Int(*expires_at_secs)],
            ),
            Mutation::ConsumeOnce { id, expires_at_secs } => Self::insert(
                "INSERT INTO used_once (id, expires_at) VALUES ($1, $2)",
                // Names the entry, so a caller that commits several can tell which was spent.
                format!("one-time identifier {id} was already used"),
                vec![Text(id), Int(*expires_at_secs)],
            ),
            Mutation::InsertKey(k) => Self::insert(
                "INSERT INTO signing_keys \
                 (kid, purpose, alg, sealed, created_at_ms, activate_at_ms, retire_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                format!("key {}", k.kid),
                vec![
                    Text(&k.kid),
                    Text(&k.purpose),
                    Text(&k.alg),
                    Bytes(&k.sealed_private_key),
                    Int(k.created_at_ms),
                    Int(k.activate_at_ms),
                    OptInt(k.retire_at_ms),
                ],
            ),
            Mutation::RetireKey { kid, retire_at_ms } => Self::update(
                "UPDATE signing_keys SET retire_at_ms = $1 WHERE kid = $2",
                format!("key {kid}"),
                vec![Int(*retire_at_ms), Text(kid)],
            ),
            Mutation::SetSelectors { agent, selectors } => Self::update(
                "UPDATE agents SET selectors = $1 WHERE name = $2",
                format!("agent {agent}"),
                vec![OwnedText(json_text(selectors)), Text(agent)],
            ),
            Mutation::CreateJoinToken(t) => Self::insert(
                "INSERT INTO join_tokens (token_hash, agent, expires_at_ms, used_at_ms, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
                format!("join token for agent {}", t.agent),
                vec![
                    Text(&t.token_hash),
                    Text(t.agent.as_str()),
                    Int(t.expires_at_ms),
                    OptInt(t.used_at_ms),
                    Int(t.created_at_ms),
                ],
            ),
            // Single use: only an unused, unexpired token changes a row.
            Mutation::UseJoinToken { token_hash, now_ms } => Self::update(
                "UPDATE join_tokens SET used_at_ms = $1 \
                 WHERE token_hash = $2 AND used_at_ms IS NULL AND expires_at_ms > $1",
                "join token (unknown, used or expired)".into(),
                vec![Int(*now_ms), Text(token_hash)],
            ),
            Mutation::CreateFederationRule(r) => Self::insert(
                "INSERT INTO federation_rules (name, issuer, jwks_url, jwks, audience, subject, subject_match, \
                 claims, agent, max_ttl_secs, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                format!("federation rule {}", r.name),
                vec![
                    Text(r.name.as_str()),
                    Text(&r.issuer),
                    OptText(&r.jwks_url),
                    OptText(&r.jwks),
                    Text(&r.audience),
                    Text(&r.subject),
                    Text(r.subject_match.as_str()),
                    OwnedText(json_text(&r.claims)),
                    Text(r.agent.as_str()),
                    Int(r.max_ttl_secs),
                    Int(r.created_at_ms),
                ],
            ),
            Mutation::DeleteFederationRule(n) => {
                Self::delete("DELETE FROM federation_rules WHERE name = $1", format!("federation rule {n}"), n)
            }
            Mutation::SetOwnerPassword { owner, password_hash } => Self::update(
                "UPDATE owners SET password_hash = $1 WHERE name = $2",
                format!("owner {owner}"),
                vec![OptText(password_hash), Text(owner)],
            ),
            // Consent only grows: a repeated approval replaces the scopes with the (wider) union
            // the caller computed.
            Mutation::PutConsent(c) => Self::insert(
                "INSERT INTO consents (owner, client_id, resource, scopes, granted_at_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (owner, client_id, resource) DO UPDATE SET scopes = excluded.scopes, \
                 granted_at_ms = excluded.granted_at_ms",
                format!("consent of {} for {}", c.owner, c.client_id),
                vec![
                    Text(c.owner.as_str()),
                    Text(&c.client_id),
                    Text(&c.resource),
                    OwnedText(scopes_to_text(&c.scopes)),
                    Int(c.granted_at_ms),
                ],
            ),
            Mutation::CreateAuthCode(c) => Self::insert(
                "INSERT INTO auth_codes (code_hash, client_id, grant_json, expires_at_ms, used_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
                "authorization code".into(),
                vec![
                    Text(&c.code_hash),
                    Text(&c.client_id),
                    Text(&c.grant),
                    Int(c.expires_at_ms),
                    OptInt(c.used_at_ms),
                ],
            ),
            Mutation::RedeemAuthCode { code_hash, now_ms } => Self::update(
                "UPDATE auth_codes SET used_at_ms = $1 \
                 WHERE code_hash = $2 AND used_at_ms IS NULL AND expires_at_ms > $1",
                "authorization code (unknown, used or expired)".into(),
                vec![Int(*now_ms), Text(code_hash)],
            ),
            Mutation::CreateRefreshToken(t) => Self::insert(
                "INSERT INTO refresh_tokens (token_hash, family, client_id, grant_json, issued_at_ms, expires_at_ms, \
                 used_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                "refresh token".into(),
                vec![
                    Text(&t.token_hash),
                    Text(&t.family),
                    Text(&t.client_id),
                    Text(&t.grant),
                    Int(t.issued_at_ms),
                    Int(t.expires_at_ms),
                    OptInt(t.used_at_ms),
                ],
            ),
            Mutation::UseRefreshToken { token_hash, now_ms } => Self::update(
                "UPDATE refresh_tokens SET used_at_ms = $1 \
                 WHERE token_hash = $2 AND used_at_ms IS NULL AND expires_at_ms > $1",
                "refresh token (unknown, used or expired)".into(),
                vec![Int(*now_ms), Text(token_hash)],
            ),
            Mutation::CreateTrustedIdp(i) => Self::insert(
                "INSERT INTO trusted_idps (name, issuer, jwks_url, jwks, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
                format!("trusted IdP {} (or its issuer)", i.name),
                vec![
                    Text(i.name.as_str()),
                    Text(&i.issuer),
                    OptText(&i.jwks_url),
                    OptText(&i.jwks),
                    Int(i.created_at_ms),
                ],
            ),
            Mutation::DeleteTrustedIdp(n) => {
                Self::delete("DELETE FROM trusted_idps WHERE name = $1", format!("trusted IdP {n}"), n)
            }
            Mutation::CreateDelegationTarget(d) => Self::insert(
                "INSERT INTO delegation_targets (agent, audience, resource, scopes, remote_client_id, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                format!("delegation target of agent {} at {} for {}", d.agent, d.audience, d.resource),
                vec![
                    Text(d.agent.as_str()),
                    Text(&d.audience),
                    Text(&d.resource),
                    OwnedText(scopes_to_text(&d.scopes)),
                    Text(&d.remote_client_id),
                    Int(d.created_at_ms),
                ],
            ),
            Mutation::DeleteDelegationTarget { agent, audience, resource } => Self::update(
                "DELETE FROM delegation_targets WHERE agent = $1 AND audience = $2 AND resource = $3",
                format!("delegation target of agent {agent} at {audience} for {resource}"),
                vec![Text(agent), Text(audience), Text(resource)],
            ),
            Mutation::CreateCibaRequest(r) => Self::insert(
                "INSERT INTO ciba_requests (req_hash, approval_id, client_id, owner, resource, scope, binding_message, \
                 authorization_details, status, expires_at_ms, last_poll_ms, decided_at_ms, created_at_ms, \
                 notify_endpoint, notify_sealed) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                "CIBA request".into(),
                vec![
                    Text(&r.req_hash),
                    Text(&r.approval_id),
                    Text(&r.client_id),
                    Text(&r.owner),
                    Text(&r.resource),
                    Text(&r.scope),
                    Text(&r.binding_message),
                    OptText(&r.authorization_details),
                    Text(&r.status),
                    Int(r.expires_at_ms),
                    OptInt(r.last_poll_ms),
                    OptInt(r.decided_at_ms),
                    Int(r.created_at_ms),
                    OptText(&r.notify_endpoint),
                    OptText(&r.notify_sealed),
                ],
            ),
            // A decision makes a ping client's callback due at once (in the same transaction).
            Mutation::DecideCibaRequest { approval_id, owner, status, now_ms } => Self::update(
                "UPDATE ciba_requests SET status = $1, decided_at_ms = $2, \
                 notify_next_ms = CASE WHEN notify_sealed IS NULL THEN NULL ELSE $2 END \
                 WHERE approval_id = $3 AND owner = $4 AND status = 'pending' AND expires_at_ms > $2",
                "CIBA request (unknown, another owner's, decided or expired)".into(),
                vec![Text(status), Int(*now_ms), Text(approval_id), Text(owner)],
            ),
            Mutation::FailCibaDecision { approval_id, max, now_ms } => Self::update(
                "UPDATE ciba_requests SET failures = failures + 1, \
                 status = CASE WHEN failures + 1 >= $1 THEN 'denied' ELSE status END, \
                 decided_at_ms = CASE WHEN failures + 1 >= $1 THEN $2 ELSE decided_at_ms END, \
                 notify_next_ms = CASE WHEN failures + 1 >= $1 AND notify_sealed IS NOT NULL THEN $2 \
                 ELSE notify_next_ms END \
                 WHERE approval_id = $3 AND status = 'pending'",
                "CIBA request (unknown or decided)".into(),
                vec![Int(*max), Int(*now_ms), Text(approval_id)],
            ),
            // Atomic, so two concurrent polls cannot both pass the interval check. Only pending
            // requests are throttled: a ping client asks right after its callback, whenever it
            // last polled, and a decided request's answer no longer changes.
            Mutation::PollCibaRequest { req_hash, now_ms, interval_ms } => Self::update(
                "UPDATE ciba_requests SET last_poll_ms = $1 \
                 WHERE req_hash = $2 AND (status <> 'pending' OR last_poll_ms IS NULL OR last_poll_ms + $3 <= $1)",
                "CIBA poll (too soon)".into(),
                vec![Int(*now_ms), Text(req_hash), Int(*interval_ms)],
            ),
            Mutation::RedeemCibaRequest { req_hash, now_ms } => Self::update(
                "UPDATE ciba_requests SET status = 'redeemed' \
                 WHERE req_hash = $1 AND status = 'approved' AND expires_at_ms > $2",
                "CIBA request (unknown, not approved, spent or expired)".into(),
                vec![Text(req_hash), Int(*now_ms)],
            ),
            Mutation::EndCibaNotify { req_hash } => Self::update(
                "UPDATE ciba_requests SET notify_sealed = NULL, notify_next_ms = NULL WHERE req_hash = $1",
                "CIBA request".into(),
                vec![Text(req_hash)],
            ),
            Mutation::RetryCibaNotify { req_hash, attempts, next_attempt_ms } => Self::update(
                "UPDATE ciba_requests SET notify_attempts = $1, notify_next_ms = $2 \
                 WHERE req_hash = $3 AND notify_sealed IS NOT NULL AND notify_next_ms IS NOT NULL",
                "CIBA ping callback (none due)".into(),
                vec![Int(*attempts), Int(*next_attempt_ms), Text(req_hash)],
            ),
            // Flattened by `all`; a nested batch never reaches here, and would change nothing.
            Mutation::All(_) => Self::insert("SELECT 1 WHERE 1 = 0", "batch".into(), vec![]),
            Mutation::Ssf(m) => crate::ssf::step(m),
            Mutation::PutSetting { key, value } => Self::insert(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                "setting".into(),
                vec![Text(key), Text(value)],
            ),
        }
    }

    pub(crate) fn insert(sql: &'static str, what: String, params: Vec<Value<'a>>) -> Self {
        Self { sql, params, kind: Kind::Insert, what }
    }

    pub(crate) fn update(sql: &'static str, what: String, params: Vec<Value<'a>>) -> Self {
        Self { sql, params, kind: Kind::Update, what }
    }

    pub(crate) fn delete(sql: &'static str, what: String, key: &'a str) -> Self {
        Self { sql, params: vec![Value::Text(key)], kind: Kind::Delete, what }
    }

    /// The job's result once its statement ran: whether it changed any row, or the error it
    /// failed with. A violated constraint is a refusal; any other error is returned as the
    /// backend's own failure.
    pub fn outcome<E>(
        &self,
        ran: std::result::Result<bool, E>,
        violation: fn(&E) -> Option<Violation>,
    ) -> std::result::Result<std::result::Result<(), MutationError>, E> {
        match ran {
            Ok(changed_any) => Ok(self.changed(changed_any)),
            Err(e) => match violation(&e) {
                Some(v) => Ok(Err(self.violated(v))),
                None => Err(e),
            },
        }
    }

    fn changed(&self, any_row: bool) -> std::result::Result<(), MutationError> {
        match self.kind {
            Kind::Delete | Kind::Update if !any_row => Err(MutationError::NotFound(self.what.clone())),
            _ => Ok(()),
        }
    }

    fn violated(&self, violation: Violation) -> MutationError {
        match (violation, self.kind) {
            (Violation::Unique, _) => MutationError::Conflict(self.what.clone()),
            (Violation::ForeignKey, Kind::Delete) => MutationError::InUse(self.what.clone()),
            (Violation::ForeignKey, _) => {
                MutationError::NotFound(format!("{}: referenced record does not exist", self.what))
            }
        }
    }
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Where the next entry goes: its sequence number and the leaf hash it links to. The default
/// starts an empty log.
#[derive(Default)]
pub(crate) struct Chain {
    next_seq: u64,
    prev: [u8; 32],
}

impl Chain {
    /// Continues the log after its [`HEAD`] row.
    pub fn after(head: &dyn Columns) -> Result<Self> {
        Ok(Self {
            next_seq: to_u64(head.int(0)?)? + 1,
            prev: hash_from_slice(&head.bytes(1)?)
                .ok_or_else(|| StoreError::AuditChain("head hash is not 32 bytes".into()))?,
        })
    }

    /// Places a job's event at the next position, logged as a refusal if its mutation was
    /// refused, and returns the entry to store and the job's outcome.
    pub fn append(
        &mut self,
        event: AuditEvent,
        ts_ms: i64,
        result: std::result::Result<(), MutationError>,
        encoder: &dyn EntryEncoder,
    ) -> (EncodedEntry, JobOutcome) {
        let event = match &result {
            Ok(()) => event,
            Err(e) => event.refused(e.reason(), &e.to_string()),
        };
        let seq = self.next_seq;
        let entry = encoder.encode(&EntryPosition { seq, prev: self.prev, ts_ms }, &event);
        self.prev = entry.leaf_hash;
        self.next_seq += 1;
        (entry, JobOutcome { seq, result })
    }
}
