//! The read half both backends share: the SQL they run and the decoders that rebuild records
//! from rows through the validated constructors, so a row that no longer validates is reported
//! as corrupt the same way by either backend.
//!
//! The SQL is written in the subset both dialects accept. Placeholders are `$1`, `$2`, … in
//! order of first appearance: PostgreSQL binds them by number, SQLite numbers `$NAME`
//! parameters in the order they appear, and the two agree only while that order holds.

use mandate_core::{
    Agent, AuthCode, Client, ClientAuthMethod, Consent, DelegationTarget, FederationRule, JoinToken, Name, Owner,
    RefreshToken, Resource, ResourceUri, SpiffeId, SubjectMatch, TrustDomain, TrustedIdp,
};

use crate::types::*;
use crate::{Result, StoreError};

/// Typed access to one result row, whichever driver produced it.
pub(crate) trait Columns {
    fn text(&self, idx: usize) -> Result<String>;
    fn opt_text(&self, idx: usize) -> Result<Option<String>>;
    fn int(&self, idx: usize) -> Result<i64>;
    fn opt_int(&self, idx: usize) -> Result<Option<i64>>;
    fn boolean(&self, idx: usize) -> Result<bool>;
    fn bytes(&self, idx: usize) -> Result<Vec<u8>>;
}

/// Turns a row into a record.
pub(crate) type Decode<T> = fn(&dyn Columns) -> Result<T>;

macro_rules! select {
    (owners $tail:literal) => {
        concat!("SELECT name, display_name, created_at_ms, password_hash FROM owners ", $tail)
    };
    (agents $tail:literal) => {
        concat!("SELECT name, owner, spiffe_id, scopes, created_at_ms, selectors, may_impersonate FROM agents ", $tail)
    };
    (clients $tail:literal) => {
        concat!(
            "SELECT client_id, agent, auth_method, secret_hash, jwks, can_introspect, \
             created_at_ms, redirect_uris, grant_types, client_name, metadata FROM clients ",
            $tail
        )
    };
    (resources $tail:literal) => {
        concat!("SELECT uri, scopes, created_at_ms FROM resources ", $tail)
    };
    (federation_rules $tail:literal) => {
        concat!(
            "SELECT name, issuer, jwks_url, jwks, audience, subject, subject_match, claims, agent, \
             max_ttl_secs, created_at_ms FROM federation_rules ",
            $tail
        )
    };
    (trusted_idps $tail:literal) => {
        concat!("SELECT name, issuer, jwks_url, jwks, created_at_ms FROM trusted_idps ", $tail)
    };
    (delegation_targets $tail:literal) => {
        concat!(
            "SELECT agent, audience, resource, scopes, remote_client_id, created_at_ms FROM delegation_targets ",
            $tail
        )
    };
    (checkpoints $tail:literal) => {
        concat!("SELECT tree_size, root, note, frontier, created_at_ms FROM audit_checkpoints ", $tail)
    };
}

pub(crate) const OWNER: &str = select!(owners "WHERE name = $1");
pub(crate) const OWNERS: &str = select!(owners "ORDER BY name");
pub(crate) const AGENT: &str = select!(agents "WHERE name = $1");
pub(crate) const AGENTS: &str = select!(agents "ORDER BY name");
pub(crate) const CLIENT: &str = select!(clients "WHERE client_id = $1");
pub(crate) const CLIENTS: &str = select!(clients "ORDER BY client_id");
pub(crate) const RESOURCE: &str = select!(resources "WHERE uri = $1");
pub(crate) const RESOURCES: &str = select!(resources "ORDER BY uri");
pub(crate) const FEDERATION_RULES: &str = select!(federation_rules "ORDER BY name");
pub(crate) const TRUSTED_IDPS: &str = select!(trusted_idps "ORDER BY name");
pub(crate) const TRUSTED_IDP_BY_ISSUER: &str = select!(trusted_idps "WHERE issuer = $1");
pub(crate) const DELEGATION_TARGETS: &str = select!(delegation_targets "WHERE agent = $1 ORDER BY audience, resource");
pub(crate) const CONSENT: &str = "SELECT owner, client_id, resource, scopes, granted_at_ms FROM consents \
    WHERE owner = $1 AND client_id = $2 AND resource = $3";
pub(crate) const AUTH_CODE: &str =
    "SELECT code_hash, client_id, grant_json, expires_at_ms, used_at_ms FROM auth_codes WHERE code_hash = $1";
pub(crate) const REFRESH_TOKEN: &str = "SELECT token_hash, family, client_id, grant_json, issued_at_ms, \
    expires_at_ms, used_at_ms FROM refresh_tokens WHERE token_hash = $1";
pub(crate) const JOIN_TOKEN: &str =
    "SELECT token_hash, agent, expires_at_ms, used_at_ms, created_at_ms FROM join_tokens WHERE token_hash = $1";
pub(crate) const EPOCH: &str = "SELECT not_before FROM revocation_epochs WHERE kind = $1 AND name = $2";
pub(crate) const TOKEN_REVOKED: &str = "SELECT 1 FROM revoked_tokens WHERE jti = $1";
pub(crate) const SIGNING_KEYS: &str = "SELECT kid, purpose, alg, sealed, created_at_ms, \
    activate_at_ms, retire_at_ms FROM signing_keys ORDER BY activate_at_ms, kid";
pub(crate) const SETTING: &str = "SELECT value FROM settings WHERE key = $1";
pub(crate) const AUDIT_LEN: &str = "SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log";
pub(crate) const AUDIT_ENTRIES: &str =
    "SELECT seq, leaf_hash, event FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq";
pub(crate) const LATEST_CHECKPOINT: &str = select!(checkpoints "ORDER BY tree_size DESC LIMIT 1");
pub(crate) const AUDIT_LEAF_HASHES: &str = "SELECT leaf_hash FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq";
pub(crate) const AUDIT_TILES: &str =
    "SELECT idx, hash FROM audit_tiles WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx";
pub(crate) const AUDIT_TILES_LEN: &str = "SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_tiles WHERE level = $1";
pub(crate) const CHECKPOINTS: &str = select!(checkpoints "ORDER BY tree_size");

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn name(row: &dyn Columns, idx: usize) -> Result<Name> {
    Name::parse(&row.text(idx)?).map_err(corrupt)
}

fn hash(row: &dyn Columns, idx: usize, what: &str) -> Result<[u8; 32]> {
    hash_from_slice(&row.bytes(idx)?).ok_or_else(|| corrupt(format!("{what} is not 32 bytes")))
}

pub(crate) fn owner(row: &dyn Columns) -> Result<Owner> {
    Ok(Owner {
        name: name(row, 0)?,
        display_name: row.opt_text(1)?,
        created_at_ms: row.int(2)?,
        password_hash: row.opt_text(3)?,
    })
}

pub(crate) fn agent(row: &dyn Columns) -> Result<Agent> {
    let agent_name = name(row, 0)?;
    let spiffe_id = spiffe_id_for(&row.text(2)?, &agent_name).map_err(corrupt)?;
    Ok(Agent {
        name: agent_name,
        owner: name(row, 1)?,
        spiffe_id,
        scopes: scopes_from_text(&row.text(3)?),
        created_at_ms: row.int(4)?,
        selectors: json_list(&row.text(5)?, "agent selectors")?,
        may_impersonate: row.boolean(6)?,
    })
}

pub(crate) fn federation_rule(row: &dyn Columns) -> Result<FederationRule> {
    let matching = row.text(6)?;
    Ok(FederationRule {
        name: name(row, 0)?,
        issuer: row.text(1)?,
        jwks_url: row.opt_text(2)?,
        jwks: row.opt_text(3)?,
        audience: row.text(4)?,
        subject: row.text(5)?,
        subject_match: SubjectMatch::parse(&matching).ok_or_else(|| corrupt(format!("subject match {matching}")))?,
        claims: serde_json::from_str(&row.text(7)?).map_err(|e| corrupt(format!("rule claims: {e}")))?,
        agent: name(row, 8)?,
        max_ttl_secs: row.int(9)?,
        created_at_ms: row.int(10)?,
    })
}

pub(crate) fn join_token(row: &dyn Columns) -> Result<JoinToken> {
    Ok(JoinToken {
        token_hash: row.text(0)?,
        agent: name(row, 1)?,
        expires_at_ms: row.int(2)?,
        used_at_ms: row.opt_int(3)?,
        created_at_ms: row.int(4)?,
    })
}

/// Rebuilds a stored agent SPIFFE ID through the validated constructor.
pub(crate) fn spiffe_id_for(stored: &str, agent: &Name) -> std::result::Result<SpiffeId, String> {
    let trust_domain = stored
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_suffix(&format!("/agent/{agent}")))
        .ok_or_else(|| format!("stored SPIFFE ID {stored:?} does not belong to agent {agent}"))?;
    let td = TrustDomain::parse(trust_domain).map_err(|e| e.to_string())?;
    Ok(td.agent_id(agent))
}

pub(crate) fn client(row: &dyn Columns) -> Result<Client> {
    let method = row.text(2)?;
    Ok(Client {
        client_id: row.text(0)?,
        agent: row.opt_text(1)?.map(|a| Name::parse(&a).map_err(corrupt)).transpose()?,
        auth_method: ClientAuthMethod::parse(&method).ok_or_else(|| corrupt(format!("auth method {method}")))?,
        secret_hash: row.opt_text(3)?,
        jwks: row.opt_text(4)?,
        can_introspect: row.boolean(5)?,
        created_at_ms: row.int(6)?,
        redirect_uris: json_list(&row.text(7)?, "client redirect_uris")?,
        grant_types: json_list(&row.text(8)?, "client grant_types")?,
        client_name: row.opt_text(9)?,
        metadata: row.opt_text(10)?,
    })
}

fn json_list(text: &str, what: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(crate) fn trusted_idp(row: &dyn Columns) -> Result<TrustedIdp> {
    Ok(TrustedIdp {
        name: name(row, 0)?,
        issuer: row.text(1)?,
        jwks_url: row.opt_text(2)?,
        jwks: row.opt_text(3)?,
        created_at_ms: row.int(4)?,
    })
}

pub(crate) fn delegation_target(row: &dyn Columns) -> Result<DelegationTarget> {
    Ok(DelegationTarget {
        agent: name(row, 0)?,
        audience: row.text(1)?,
        resource: row.text(2)?,
        scopes: scopes_from_text(&row.text(3)?),
        remote_client_id: row.text(4)?,
        created_at_ms: row.int(5)?,
    })
}

pub(crate) fn consent(row: &dyn Columns) -> Result<Consent> {
    Ok(Consent {
        owner: name(row, 0)?,
        client_id: row.text(1)?,
        resource: row.text(2)?,
        scopes: scopes_from_text(&row.text(3)?),
        granted_at_ms: row.int(4)?,
    })
}

pub(crate) fn auth_code(row: &dyn Columns) -> Result<AuthCode> {
    Ok(AuthCode {
        code_hash: row.text(0)?,
        client_id: row.text(1)?,
        grant: row.text(2)?,
        expires_at_ms: row.int(3)?,
        used_at_ms: row.opt_int(4)?,
    })
}

macro_rules! select_ciba {
    ($tail:literal) => {
        concat!(
            "SELECT req_hash, approval_id, client_id, owner, resource, scope, binding_message, \
             authorization_details, status, expires_at_ms, last_poll_ms, decided_at_ms, created_at_ms, \
             notify_endpoint, notify_sealed FROM ciba_requests ",
            $tail
        )
    };
}
pub(crate) const CIBA_REQUEST: &str = select_ciba!("WHERE req_hash = $1");
pub(crate) const CIBA_BY_APPROVAL: &str = select_ciba!("WHERE approval_id = $1");
pub(crate) const CIBA_PENDING: &str =
    select_ciba!("WHERE owner = $1 AND status = 'pending' AND expires_at_ms > $2 ORDER BY created_at_ms");

pub(crate) fn ciba_request(row: &dyn Columns) -> Result<CibaRequest> {
    Ok(CibaRequest {
        req_hash: row.text(0)?,
        approval_id: row.text(1)?,
        client_id: row.text(2)?,
        owner: row.text(3)?,
        resource: row.text(4)?,
        scope: row.text(5)?,
        binding_message: row.text(6)?,
        authorization_details: row.opt_text(7)?,
        status: row.text(8)?,
        expires_at_ms: row.int(9)?,
        last_poll_ms: row.opt_int(10)?,
        decided_at_ms: row.opt_int(11)?,
        created_at_ms: row.int(12)?,
        notify_endpoint: row.opt_text(13)?,
        notify_sealed: row.opt_text(14)?,
    })
}

/// Ping callbacks due at `$1`, soonest first, at most `$2`. A row without an endpoint or
/// sealed secrets is never due (the decision sets `notify_next_ms` only when both exist).
pub(crate) const CIBA_NOTIFICATIONS_DUE: &str = "SELECT req_hash, client_id, notify_endpoint, notify_sealed, \
    notify_attempts, notify_next_ms FROM ciba_requests \
    WHERE notify_next_ms IS NOT NULL AND notify_next_ms <= $1 \
    AND notify_endpoint IS NOT NULL AND notify_sealed IS NOT NULL \
    ORDER BY notify_next_ms, req_hash LIMIT $2";

pub(crate) fn ciba_notification(row: &dyn Columns) -> Result<CibaNotification> {
    Ok(CibaNotification {
        req_hash: row.text(0)?,
        client_id: row.text(1)?,
        endpoint: row.text(2)?,
        sealed: row.text(3)?,
        attempts: row.int(4)?,
        next_attempt_ms: row.int(5)?,
    })
}

pub(crate) fn refresh_token(row: &dyn Columns) -> Result<RefreshToken> {
    Ok(RefreshToken {
        token_hash: row.text(0)?,
        family: row.text(1)?,
        client_id: row.text(2)?,
        grant: row.text(3)?,
        issued_at_ms: row.int(4)?,
        expires_at_ms: row.int(5)?,
        used_at_ms: row.opt_int(6)?,
    })
}

pub(crate) fn resource(row: &dyn Columns) -> Result<Resource> {
    Ok(Resource {
        uri: ResourceUri::parse(&row.text(0)?).map_err(corrupt)?,
        scopes: scopes_from_text(&row.text(1)?),
        created_at_ms: row.int(2)?,
    })
}

pub(crate) fn key(row: &dyn Columns) -> Result<StoredKey> {
    Ok(StoredKey {
        kid: row.text(0)?,
        purpose: row.text(1)?,
        alg: row.text(2)?,
        sealed_private_key: row.bytes(3)?,
        created_at_ms: row.int(4)?,
        activate_at_ms: row.int(5)?,
        retire_at_ms: row.opt_int(6)?,
    })
}

pub(crate) fn checkpoint(row: &dyn Columns) -> Result<StoredCheckpoint> {
    Ok(StoredCheckpoint {
        tree_size: to_u64(row.int(0)?)?,
        root: hash(row, 1, "checkpoint root")?,
        note: row.text(2)?,
        frontier: frontier_from_text(&row.text(3)?).ok_or_else(|| corrupt("checkpoint frontier"))?,
        created_at_ms: row.int(4)?,
    })
}

pub(crate) fn entry(row: &dyn Columns) -> Result<StoredEntry> {
    Ok(StoredEntry { seq: to_u64(row.int(0)?)?, leaf_hash: hash(row, 1, "leaf hash")?, canonical: row.text(2)? })
}

pub(crate) fn leaf_hash(row: &dyn Columns) -> Result<[u8; 32]> {
    hash(row, 0, "leaf hash")
}

pub(crate) fn tile(row: &dyn Columns) -> Result<(u64, [u8; 32])> {
    Ok((to_u64(row.int(0)?)?, hash(row, 1, "tile hash")?))
}

pub(crate) fn text(row: &dyn Columns) -> Result<String> {
    row.text(0)
}

pub(crate) fn int(row: &dyn Columns) -> Result<i64> {
    row.int(0)
}
