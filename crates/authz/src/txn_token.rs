//! Transaction Token Service (draft-ietf-oauth-transaction-tokens; agents profile
//! draft-araut-oauth-transaction-tokens-for-agents): trades an access token this server issued,
//! or a Txn-Token to replace, for a short-lived `txntoken+jwt` carrying who (`sub`, `act`) and
//! what (`scope`, `tctx`, `rctx`) along one call chain inside the trust domain. [`mint`] is the
//! in-process entry (the gateway); the token endpoint's token exchange reaches [`token_exchange`].

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode, ScopeSet};
use mandate_crypto::{VerifyOptions, verify_jwt};
use serde_json::{Map, Value, json};

use crate::client_auth::authenticate_workload;
use crate::exchange::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, own_access_token};
use crate::token::{Granted, OWNER_CLAIM, TokenRequest, TokenResponse, describe_client, required};
use crate::{Authz, audit_failure};

pub const TOKEN_TYPE_TXN_TOKEN: &str = "urn:ietf:params:oauth:token-type:txn_token";
pub const TOKEN_TYPE_REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// JOSE `typ` of Txn-Tokens.
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";
/// The audit action of every Txn-Token request.
pub const ACTION: &str = "txn_token.issue";
pub const DEFAULT_TTL_SECS: i64 = 60;
pub const MAX_TTL_SECS: i64 = 300;
/// How often one transaction's token may be replaced (the draft says to cap it).
pub const MAX_REPLACEMENTS: i64 = 10;
/// Private claim: how many replacements led to this token.
pub const REPLACEMENTS_CLAIM: &str = "mandate_replacements";
/// Private claim: the earlier requesting workloads, oldest first, so replacement keeps the call
/// chain (`req_wl` names only the latest).
pub const WORKLOAD_CHAIN_CLAIM: &str = "mandate_req_wl_chain";

/// A Txn-Token request, from the gateway in process or parsed from the token endpoint.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    /// The inbound token the transaction starts from (an access token this server issued), or a Txn-Token to replace.
    pub subject_token: &'a str,
    /// [`TOKEN_TYPE_ACCESS_TOKEN`] or [`TOKEN_TYPE_TXN_TOKEN`].
    pub subject_token_type: &'a str,
    /// Requested purpose; None = the subject token's whole scope.
    pub scope: Option<&'a str>,
    /// → `rctx` (a JSON object).
    pub request_context: Option<Value>,
    /// → `tctx` (a JSON object).
    pub request_details: Option<Value>,
    /// SPIFFE ID of the requesting workload → `req_wl`.
    pub workload: &'a str,
    /// In process only: the access token's claims, already verified by a guard that trusts
    /// exactly this server's keys and revocation state (signature, `typ`, issuer, expiry,
    /// revocation, kill switch), so they are not verified again. The scope, `act` and expiry
    /// rules still apply. Never set from a request's own input.
    pub verified_claims: Option<&'a Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedTxnToken {
    pub token: String,
    pub txn: String,
    pub expires_in: i64,
}

/// Mints (and audits, action "txn_token.issue", with txn in the event) a Txn-Token.
pub async fn mint(
    authz: &Authz,
    request: &MintRequest<'_>,
    correlation_id: &str,
) -> Result<MintedTxnToken, OAuthError> {
    let Unrecorded { outcome, event } = mint_unrecorded(authz, request, correlation_id).await;
    authz.log.record(event).await.map_err(audit_failure)?;
    outcome
}

/// A mint's outcome with its `txn_token.issue` event (a refusal already marked as one), not yet
/// recorded.
#[derive(Debug)]
pub struct Unrecorded {
    pub outcome: Result<MintedTxnToken, OAuthError>,
    pub event: AuditEvent,
}

/// [`mint`] without recording: the caller must record `event` durably before the token is used
/// or the refusal answered. The gateway records it with its own `gateway.forward` event, so
/// both share one group commit instead of waiting for two in a row.
pub async fn mint_unrecorded(authz: &Authz, request: &MintRequest<'_>, correlation_id: &str) -> Unrecorded {
    let mut event = AuditEvent::allow(ACTION, correlation_id);
    match issue(authz, request, &mut event).await {
        Ok(issued) => Unrecorded { outcome: Ok(issued.minted), event },
        Err(error) => Unrecorded { event: event.refused(error.code.as_str(), &error.description), outcome: Err(error) },
    }
}

/// Whether a token request asks the Transaction Token Service.
pub(crate) fn requested(request: &TokenRequest) -> bool {
    request.grant_type.as_deref() == Some(GRANT_TOKEN_EXCHANGE)
        && request.requested_token_type.as_deref() == Some(TOKEN_TYPE_TXN_TOKEN)
}

/// The token endpoint's Txn-Token exchange (draft §7): an authenticated workload of this trust
/// domain, `audience` = the trust domain, no refresh token, `token_type` `N_A`.
pub(crate) async fn token_exchange(
    authz: &Authz,
    mut request: TokenRequest,
    event: &mut AuditEvent,
    correlation_id: &str,
) -> Result<Granted, OAuthError> {
    event.action = ACTION.into();
    let workload = authenticate_workload(authz, std::mem::take(&mut request.presented), correlation_id).await?;
    if let Some(client) = &workload.client {
        describe_client(event, client);
    }
    check_target(authz, &request)?;
    if request.actor_token.is_some() || request.actor_token_type.is_some() {
        return Err(OAuthError::invalid_request("actor_token is not used for Txn-Tokens"));
    }
    let mint = MintRequest {
        subject_token: required(&request.subject_token, "subject_token")?,
        subject_token_type: required(&request.subject_token_type, "subject_token_type")?,
        scope: request.scope.as_deref(),
        request_context: json_param(request.request_context.as_deref(), "request_context")?,
        request_details: json_param(request.request_details.as_deref(), "request_details")?,
        workload: &workload.spiffe_id,
        // Over HTTP the subject token is always verified here.
        verified_claims: None,
    };
    let issued = issue(authz, &mint, event).await?;
    let response = TokenResponse {
        access_token: issued.minted.token,
        token_type: "N_A",
        expires_in: issued.minted.expires_in,
        scope: issued.scope,
        issued_token_type: Some(TOKEN_TYPE_TXN_TOKEN),
        refresh_token: None,
        id_token: None,
    };
    Ok((response, None))
}

/// A Txn-Token is for the trust domain as a whole: `audience` names it, `resource` is not used.
fn check_target(authz: &Authz, request: &TokenRequest) -> Result<(), OAuthError> {
    let domain = authz.config.trust_domain.as_str();
    let invalid_target = |why: String| OAuthError::new(OAuthErrorCode::InvalidTarget, why);
    if !request.resources.is_empty() {
        return Err(invalid_target(format!("Txn-Tokens are for the trust domain {domain}, not a resource")));
    }
    match request.audiences.as_slice() {
        [] => Err(OAuthError::invalid_request(format!("audience is required: the trust domain {domain}"))),
        [one] if one == domain => Ok(()),
        _ => Err(invalid_target(format!("the audience must be exactly the trust domain {domain}"))),
    }
}

/// A form parameter holding a JSON object.
fn json_param(raw: Option<&str>, name: &str) -> Result<Option<Value>, OAuthError> {
    raw.map(|text| serde_json::from_str(text).map_err(|_| OAuthError::invalid_request(format!("{name} is not JSON"))))
        .transpose()
}

/// A context parameter must be a JSON object.
fn context_object(value: Option<&Value>, name: &str) -> Result<Option<Map<String, Value>>, OAuthError> {
    match value {
        None => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object.clone())),
        Some(_) => Err(OAuthError::invalid_request(format!("{name} must be a JSON object"))),
    }
}

/// What a new Txn-Token inherits from its subject token.
struct Origin {
    sub: String,
    act: Option<Value>,
    owner: Option<String>,
    scope: ScopeSet,
    exp: i64,
    /// Set when replacing a Txn-Token: what the replacement must keep.
    replaced: Option<Replaced>,
}

struct Replaced {
    txn: String,
    tctx: Option<Map<String, Value>>,
    rctx: Option<Map<String, Value>>,
    count: i64,
    /// Requesting workloads so far, the replaced token's `req_wl` last.
    workloads: Vec<Value>,
}

struct Issued {
    minted: MintedTxnToken,
    scope: String,
}

async fn issue(authz: &Authz, request: &MintRequest<'_>, event: &mut AuditEvent) -> Result<Issued, OAuthError> {
    event.detail = Some(format!("req_wl={}", request.workload));
    let rctx = context_object(request.request_context.as_ref(), "request_context")?;
    let tctx = context_object(request.request_details.as_ref(), "request_details")?;
    let origin = match request.subject_token_type {
        TOKEN_TYPE_ACCESS_TOKEN => match request.verified_claims {
            Some(claims) => access_token_origin(authz, claims)?,
            None => from_access_token(authz, request.subject_token).await?,
        },
        TOKEN_TYPE_TXN_TOKEN => from_txn_token(authz, request.subject_token)?,
        TOKEN_TYPE_REFRESH_TOKEN => {
            return Err(OAuthError::invalid_request("a refresh token cannot be the subject of a Txn-Token"));
        }
        other => return Err(OAuthError::invalid_request(format!("subject_token_type {other:?} is not supported"))),
    };
    event.subject = Some(origin.sub.clone());
    event.agent = origin.act.as_ref().and_then(|a| a.get("sub")).and_then(Value::as_str).map(str::to_owned);
    event.owner.clone_from(&origin.owner);
    if let Some(replaced) = &origin.replaced {
        event.txn = Some(replaced.txn.clone());
    }
    let scope = narrowed_scope(&origin.scope, request.scope)?;
    event.scope = Some(scope.to_string());
    let remaining = origin.exp - authz.clock.now_secs();
    if remaining <= 0 {
        return Err(OAuthError::invalid_request("the subject token has expired"));
    }
    let ttl = authz.config.txn_token_ttl_secs.clamp(1, MAX_TTL_SECS).min(remaining);
    let claims = claims(authz, &origin, request.workload, &scope, tctx, rctx, ttl)?;
    let txn = claims.get("txn").and_then(Value::as_str).unwrap_or_default().to_owned();
    event.txn = Some(txn.clone());
    if let Some(replaced) = &origin.replaced {
        event.detail = Some(format!("req_wl={} replacement={}", request.workload, replaced.count + 1));
    }
    let key = authz.keys.signer(authz.config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let token = mandate_crypto::jose::sign_jwt(&key, TXN_TOKEN_TYP, &claims)
        .map_err(|e| OAuthError::server_error(e.to_string()))?;
    Ok(Issued { minted: MintedTxnToken { token, txn, expires_in: ttl }, scope: scope.to_string() })
}

/// The Txn-Token's claims. A replacement keeps `txn`, `sub`, `act` and the owner, and may only
/// add context members; a first token starts a new transaction.
fn claims(
    authz: &Authz,
    origin: &Origin,
    workload: &str,
    scope: &ScopeSet,
    tctx: Option<Map<String, Value>>,
    rctx: Option<Map<String, Value>>,
    ttl: i64,
) -> Result<Value, OAuthError> {
    let now = authz.clock.now_secs();
    let (txn, tctx, rctx) = match &origin.replaced {
        None => (new_txn(authz), tctx, rctx),
        Some(old) => {
            if old.count >= MAX_REPLACEMENTS {
                return Err(OAuthError::invalid_request(format!(
                    "this transaction's token was replaced {MAX_REPLACEMENTS} times already"
                )));
            }
            let tctx = extended(old.tctx.as_ref(), tctx, "request_details")?;
            (old.txn.clone(), tctx, extended(old.rctx.as_ref(), rctx, "request_context")?)
        }
    };
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(authz.config.issuer));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + ttl));
    claims.insert("aud".into(), json!(authz.config.trust_domain.as_str()));
    claims.insert("txn".into(), json!(txn));
    claims.insert("sub".into(), json!(origin.sub));
    claims.insert("scope".into(), json!(scope.to_string()));
    claims.insert("req_wl".into(), json!(workload));
    let optional = [
        ("act", origin.act.clone()),
        ("tctx", tctx.map(Value::Object)),
        ("rctx", rctx.map(Value::Object)),
        (OWNER_CLAIM, origin.owner.clone().map(Value::String)),
        (REPLACEMENTS_CLAIM, origin.replaced.as_ref().map(|r| json!(r.count + 1))),
        (WORKLOAD_CHAIN_CLAIM, origin.replaced.as_ref().map(|r| Value::Array(r.workloads.clone()))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            claims.insert(name.to_owned(), value);
        }
    }
    Ok(Value::Object(claims))
}

/// A fresh transaction id: a UUIDv7 whose time part comes from the injected clock.
fn new_txn(authz: &Authz) -> String {
    let ms = u64::try_from(authz.clock.now_ms()).unwrap_or_default();
    let timestamp =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, u32::try_from(ms % 1000).unwrap_or(0) * 1_000_000);
    uuid::Uuid::new_v7(timestamp).to_string()
}

/// The replaced token's context with the new members added; changing one is refused.
fn extended(
    old: Option<&Map<String, Value>>,
    added: Option<Map<String, Value>>,
    name: &str,
) -> Result<Option<Map<String, Value>>, OAuthError> {
    let Some(added) = added else {
        return Ok(old.cloned());
    };
    let mut merged = old.cloned().unwrap_or_default();
    for (key, value) in added {
        match merged.get(&key) {
            Some(existing) if *existing != value => {
                return Err(OAuthError::invalid_request(format!(
                    "{name} may only add to the Txn-Token's context; {key:?} would change"
                )));
            }
            _ => {
                merged.insert(key, value);
            }
        }
    }
    Ok(Some(merged))
}

/// The requested scope, within what the subject token holds; none asked means all of it.
fn narrowed_scope(held: &ScopeSet, requested: Option<&str>) -> Result<ScopeSet, OAuthError> {
    let invalid_scope = |why: String| OAuthError::new(OAuthErrorCode::InvalidScope, why);
    let Some(raw) = requested else {
        return Ok(held.clone());
    };
    let wanted = ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()))?;
    if let Some(beyond) = wanted.not_in(held).next() {
        return Err(invalid_scope(format!("scope {beyond:?} is beyond the subject token's scope")));
    }
    if wanted.is_empty() {
        return Err(invalid_scope("the scope is empty".into()));
    }
    Ok(wanted)
}

fn unacceptable(why: impl std::fmt::Display) -> OAuthError {
    OAuthError::invalid_request(format!("the subject token is not acceptable: {why}"))
}

/// A live access token of this server (signature, expiry, revocation and kill switch checked).
async fn from_access_token(authz: &Authz, token: &str) -> Result<Origin, OAuthError> {
    let claims = own_access_token(authz, token).await?.map_err(unacceptable)?;
    access_token_origin(authz, &claims)
}

/// What a Txn-Token inherits from a verified access token's claims.
fn access_token_origin(authz: &Authz, claims: &Value) -> Result<Origin, OAuthError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let sub = text("sub").ok_or_else(|| unacceptable("it has no \"sub\""))?;
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or_else(|| unacceptable("it has no \"exp\""))?;
    // Never treat a token without a readable scope as unlimited (draft §7.1).
    let scope =
        text("scope").and_then(|raw| ScopeSet::parse(&raw).ok()).filter(|s| !s.is_empty()).ok_or_else(|| {
            OAuthError::new(OAuthErrorCode::InvalidScope, "the subject token's scope cannot be determined")
        })?;
    let act = actor(authz, claims, &sub);
    Ok(Origin { sub, act, owner: text(OWNER_CLAIM), scope, exp, replaced: None })
}

/// `act` per the agents profile: the token's own `act` when delegated; for an agent acting on
/// its own account (`sub` is an agent of this trust domain) that agent; else the client.
fn actor(authz: &Authz, claims: &Value, sub: &str) -> Option<Value> {
    if let Some(act) = claims.get("act").filter(|a| a.is_object()) {
        return Some(act.clone());
    }
    if authz.config.trust_domain.agent_name(sub).is_some() {
        return Some(json!({ "sub": sub }));
    }
    claims.get("client_id").and_then(Value::as_str).map(|client| json!({ "sub": client }))
}

/// A Txn-Token of this server, unexpired (an expired one is never replaced).
fn from_txn_token(authz: &Authz, token: &str) -> Result<Origin, OAuthError> {
    let domain = authz.config.trust_domain.as_str();
    let opts = VerifyOptions {
        typ: &[TXN_TOKEN_TYP],
        typ_optional: false,
        issuer: Some(&authz.config.issuer),
        audience: &[domain],
        now: authz.clock.now_secs(),
        leeway_secs: 0,
    };
    let claims = verify_jwt(token, &authz.keys.published(), &opts).map_err(unacceptable)?;
    let text = |name: &str| {
        claims.get(name).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| unacceptable(format!("no {name:?}")))
    };
    let object = |name: &str| claims.get(name).and_then(Value::as_object).cloned();
    let scope = ScopeSet::parse(&text("scope")?).map_err(unacceptable)?;
    let mut workloads = claims.get(WORKLOAD_CHAIN_CLAIM).and_then(Value::as_array).cloned().unwrap_or_default();
    workloads.push(Value::String(text("req_wl")?));
    let replaced = Replaced {
        txn: text("txn")?,
        tctx: object("tctx"),
        rctx: object("rctx"),
        count: claims.get(REPLACEMENTS_CLAIM).and_then(Value::as_i64).unwrap_or(0),
        workloads,
    };
    Ok(Origin {
        sub: text("sub")?,
        act: claims.get("act").filter(|a| a.is_object()).cloned(),
        owner: claims.get(OWNER_CLAIM).and_then(Value::as_str).map(str::to_owned),
        scope,
        exp: claims.get("exp").and_then(Value::as_i64).ok_or_else(|| unacceptable("no \"exp\""))?,
        replaced: Some(replaced),
    })
}

#[cfg(test)]
mod tests;
