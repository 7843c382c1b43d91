//! OpenID Connect CIBA (Client-Initiated Backchannel Authentication) in poll and ping modes, as
//! step-up approval for agents: an agent asks for one described action (`binding_message`,
//! RFC 9396 `authorization_details`), the owner approves or denies it on Mandate's own page
//! (never in the agent's UI), and the agent collects a one-time token naming exactly that
//! action at the token endpoint, polling or when pinged (`notify`). See `docs/ciba.md`.

pub mod notify;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mandate_core::{AuditEvent, Client, Name, OAuthError, OAuthErrorCode, ScopeSet};
use mandate_crypto::{hash_secret, random_token};
use mandate_store::{CibaRequest, Mutation, MutationError};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::authorize::SCOPE_OPENID;
use crate::client_auth::{AuthenticatedClient, Presented, authenticate};
use crate::id_token::{SignIn, sign_id_token_with};
use crate::refresh::invalid_grant;
use crate::token::{AccessToken, TokenRequest, TokenResponse, actor_claim, describe_client, sign_access_token};
use crate::{Authz, conclude, store_failure};

pub const GRANT_CIBA: &str = "urn:openid:params:grant-type:ciba";
/// ID token claim naming the request it answers (CIBA Core §10.3.1).
pub const AUTH_REQ_ID_CLAIM: &str = "urn:openid:params:jwt:claim:auth_req_id";
/// Access token claim carrying the approved RFC 9396 `authorization_details`.
pub const AUTHORIZATION_DETAILS_CLAIM: &str = "authorization_details";
/// Where the owner decides: this path followed by the request's approval id.
pub const APPROVAL_PATH: &str = "/oauth2/ciba/approve/";
/// Minimum seconds between two polls (CIBA Core §7.3 `interval`).
pub const INTERVAL_SECS: i64 = 5;
pub const DEFAULT_EXPIRY_SECS: i64 = 300;
pub const MAX_EXPIRY_SECS: i64 = 600;
pub const MAX_BINDING_MESSAGE_CHARS: usize = 200;
/// Wrong passwords on an approval page before its request is denied (as the code flow's sign-in).
pub const MAX_FAILURES: i64 = crate::authorize::MAX_SIGN_IN_FAILURES as i64;

/// Client metadata (CIBA Core §4): `poll` (the default) or `ping`.
pub const DELIVERY_MODE_METADATA: &str = "backchannel_token_delivery_mode";
/// Client metadata (CIBA Core §4): where ping callbacks go.
pub const NOTIFICATION_ENDPOINT_METADATA: &str = "backchannel_client_notification_endpoint";
pub const MODE_POLL: &str = "poll";
pub const MODE_PING: &str = "ping";
/// CIBA Core §7.1: a `client_notification_token` has at most 1024 characters.
pub const MAX_NOTIFICATION_TOKEN_CHARS: usize = 1024;
const MAX_ENDPOINT_BYTES: usize = 2048;

const PENDING: &str = "pending";
const APPROVED: &str = "approved";
const DENIED: &str = "denied";
const REDEEMED: &str = "redeemed";

/// A parsed backchannel authentication request.
#[derive(Debug, Default)]
pub struct BcAuthorizeRequest {
    pub presented: Presented,
    pub scope: Option<String>,
    pub login_hint: Option<String>,
    pub id_token_hint: Option<String>,
    pub login_hint_token: Option<String>,
    pub binding_message: Option<String>,
    pub user_code: Option<String>,
    pub resources: Vec<String>,
    pub requested_expiry: Option<String>,
    pub authorization_details: Option<String>,
    /// Ping mode: the Bearer credential Mandate presents on the callback.
    pub client_notification_token: Option<String>,
}

/// How a client learns that the owner decided (CIBA Core §5), as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryMode {
    Poll,
    Ping { endpoint: String },
}

/// The client's registered delivery mode; clients registered without one poll.
pub fn delivery_mode(client: &Client) -> Result<DeliveryMode, OAuthError> {
    let metadata: Option<Value> = client.metadata.as_deref().and_then(|m| serde_json::from_str(m).ok());
    let field = |name: &str| metadata.as_ref().and_then(|m| m.get(name)).and_then(Value::as_str).map(str::to_owned);
    match (field(DELIVERY_MODE_METADATA).as_deref(), field(NOTIFICATION_ENDPOINT_METADATA)) {
        (None | Some(MODE_POLL), _) => Ok(DeliveryMode::Poll),
        (Some(MODE_PING), Some(endpoint)) => Ok(DeliveryMode::Ping { endpoint }),
        _ => Err(OAuthError::server_error("the client's CIBA delivery registration is incomplete")),
    }
}

/// Registration rules for the CIBA client metadata (CIBA Core §4): the mode is `poll` or
/// `ping` (`push` is not offered) and only for clients with the CIBA grant; `ping` needs a
/// notification endpoint and only `ping` may have one. The endpoint must be https (http only
/// to loopback when `insecure`, as for every outbound call). Returns the metadata to store.
pub fn registered_delivery(
    mode: Option<&str>,
    endpoint: Option<&str>,
    grant_types: &[String],
    insecure: bool,
) -> Result<serde_json::Map<String, Value>, String> {
    let mut stored = serde_json::Map::new();
    let Some(mode) = mode else {
        if endpoint.is_some() {
            return Err(format!("{NOTIFICATION_ENDPOINT_METADATA} needs {DELIVERY_MODE_METADATA} ping"));
        }
        return Ok(stored);
    };
    if !grant_types.iter().any(|g| g == GRANT_CIBA) {
        return Err(format!("{DELIVERY_MODE_METADATA} is only for clients registered for the {GRANT_CIBA} grant"));
    }
    match (mode, endpoint) {
        (MODE_POLL, None) => {}
        (MODE_POLL, Some(_)) => return Err(format!("{NOTIFICATION_ENDPOINT_METADATA} is only for ping mode")),
        (MODE_PING, None) => return Err(format!("ping mode needs a {NOTIFICATION_ENDPOINT_METADATA}")),
        (MODE_PING, Some(url)) => {
            if url.len() > MAX_ENDPOINT_BYTES {
                return Err(format!("{NOTIFICATION_ENDPOINT_METADATA} may have at most {MAX_ENDPOINT_BYTES} bytes"));
            }
            crate::jwks_fetch::check_url(url, insecure)
                .map_err(|e| format!("{NOTIFICATION_ENDPOINT_METADATA} is not usable: {e}"))?;
            stored.insert(NOTIFICATION_ENDPOINT_METADATA.into(), Value::String(url.to_owned()));
        }
        (other, _) => return Err(format!("{DELIVERY_MODE_METADATA} {other:?} is not supported; use poll or ping")),
    }
    stored.insert(DELIVERY_MODE_METADATA.into(), Value::String(mode.to_owned()));
    Ok(stored)
}

/// CIBA Core §7.1: required from ping clients, at most 1024 characters of RFC 6750 §2.1
/// `b64token` syntax (so it fits an `Authorization: Bearer` header as it is).
fn notification_token(raw: Option<&str>) -> Result<Zeroizing<String>, OAuthError> {
    let token = raw.filter(|t| !t.is_empty()).ok_or_else(|| {
        OAuthError::invalid_request("client_notification_token is required: the client is registered for ping mode")
    })?;
    if token.len() > MAX_NOTIFICATION_TOKEN_CHARS {
        return Err(OAuthError::invalid_request(format!(
            "client_notification_token may have at most {MAX_NOTIFICATION_TOKEN_CHARS} characters"
        )));
    }
    let body = token.trim_end_matches('=');
    let b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/');
    if body.is_empty() || !body.chars().all(b64) {
        return Err(OAuthError::invalid_request(
            "client_notification_token must be a Bearer token (RFC 6750 b64token)",
        ));
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// The KEK record id that binds a request's sealed callback secrets to that request.
pub(crate) fn notify_record_id(req_hash: &str) -> String {
    format!("ciba-notify:{req_hash}")
}

/// Seals what a ping callback needs and Mandate otherwise never keeps in clear: the
/// `auth_req_id` (stored as a hash) and the client's notification token.
fn seal_callback(authz: &Authz, req_hash: &str, auth_req_id: &str, token: &str) -> Result<String, OAuthError> {
    let plain = Zeroizing::new(serde_json::json!({"auth_req_id": auth_req_id, "token": token}).to_string());
    let sealed = authz.keys.seal_secret(&notify_record_id(req_hash), plain.as_bytes());
    let sealed = sealed.map_err(|e| OAuthError::server_error(format!("the callback could not be sealed: {e}")))?;
    Ok(STANDARD.encode(sealed))
}

/// CIBA Core §7.3.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BcAuthorizeResponse {
    pub auth_req_id: String,
    pub expires_in: i64,
    pub interval: i64,
}

/// Handles `POST /oauth2/bc-authorize`; every outcome is audited as `ciba.request`.
pub async fn backchannel_authorize(
    authz: &Authz,
    request: BcAuthorizeRequest,
    correlation_id: &str,
) -> Result<BcAuthorizeResponse, OAuthError> {
    let mut event = AuditEvent::allow("ciba.request", correlation_id);
    event.client = request.presented.claimed_client_id();
    let outcome = start(authz, request, &mut event, correlation_id).await;
    conclude(authz, event, outcome, |refused| {
        OAuthError::server_error(format!("the request was not stored: {refused}"))
    })
    .await
}

async fn start(
    authz: &Authz,
    mut request: BcAuthorizeRequest,
    event: &mut AuditEvent,
    correlation_id: &str,
) -> Result<(BcAuthorizeResponse, Option<Mutation>), OAuthError> {
    let client = authenticate(authz, std::mem::take(&mut request.presented), correlation_id).await?;
    describe_client(event, &client);
    if !client.client.allows_grant(GRANT_CIBA) || !client.is_confidential() {
        let why = "this client is not registered for the CIBA grant";
        return Err(OAuthError::new(OAuthErrorCode::UnauthorizedClient, why));
    }
    let agent = client.agent()?;
    let mode = delivery_mode(&client.client)?;
    // Poll clients' tokens are ignored (CIBA Core §7.1 asks for one only in ping and push mode).
    let notify_token = match &mode {
        DeliveryMode::Ping { .. } => Some(notification_token(request.client_notification_token.as_deref())?),
        DeliveryMode::Poll => None,
    };
    if request.user_code.is_some() {
        return Err(OAuthError::invalid_request("user_code is not supported"));
    }
    let owner = hinted_owner(authz, &request, &client.client.client_id).await?;
    let binding_message = binding_message(request.binding_message.as_deref())?;
    let resource = crate::token::target_resource(authz, &request.resources).await?;
    let scope = requested_scope(request.scope.as_deref())?;
    let granted = crate::token::granted_scope(agent, &resource, Some(&scope.to_string()))?;
    let expires_in = requested_expiry(request.requested_expiry.as_deref())?;
    let details = authorization_details(request.authorization_details.as_deref())?;
    let auth_req_id = random_token("");
    let req_hash = hash_secret(&auth_req_id);
    let (notify_endpoint, notify_sealed) = match (mode, notify_token) {
        (DeliveryMode::Ping { endpoint }, Some(token)) => {
            (Some(endpoint), Some(seal_callback(authz, &req_hash, &auth_req_id, &token)?))
        }
        _ => (None, None),
    };
    let now_ms = authz.clock.now_ms();
    let stored = CibaRequest {
        req_hash,
        approval_id: random_token(""),
        client_id: client.client.client_id.clone(),
        owner: owner.clone(),
        resource: resource.uri.to_string(),
        scope: granted.to_string(),
        binding_message,
        authorization_details: details,
        status: PENDING.into(),
        expires_at_ms: now_ms + expires_in * 1000,
        last_poll_ms: None,
        decided_at_ms: None,
        created_at_ms: now_ms,
        notify_endpoint,
        notify_sealed,
    };
    describe(event, &stored);
    let response = BcAuthorizeResponse { auth_req_id, expires_in, interval: INTERVAL_SECS };
    Ok((response, Some(Mutation::CreateCibaRequest(stored))))
}

/// Exactly one of `login_hint` (an owner name) and `id_token_hint` (an ID token Mandate issued
/// to this client); `login_hint_token` is not supported.
async fn hinted_owner(authz: &Authz, request: &BcAuthorizeRequest, client_id: &str) -> Result<String, OAuthError> {
    if request.login_hint_token.is_some() {
        return Err(OAuthError::invalid_request("login_hint_token is not supported; use login_hint or id_token_hint"));
    }
    let name = match (request.login_hint.as_deref(), request.id_token_hint.as_deref()) {
        (Some(hint), None) => hint.to_owned(),
        (None, Some(token)) => {
            let claims = crate::id_token::verify_own_id_token(authz, token, client_id)
                .map_err(|e| OAuthError::invalid_request(format!("id_token_hint is not valid: {e}")))?;
            claims["sub"].as_str().unwrap_or_default().to_owned()
        }
        _ => return Err(OAuthError::invalid_request("exactly one of login_hint and id_token_hint is required")),
    };
    let unknown = || OAuthError::new(OAuthErrorCode::UnknownUserId, "the hint names no known owner");
    let name = Name::parse(&name).map_err(|_| unknown())?;
    let owner = authz.store.owner(name.as_str()).await.map_err(store_failure)?;
    owner.map(|o| o.name.to_string()).ok_or_else(unknown)
}

/// Required here: it tells the owner exactly which action they approve.
fn binding_message(raw: Option<&str>) -> Result<String, OAuthError> {
    let message = raw.map(str::trim).filter(|m| !m.is_empty());
    let message = message.ok_or_else(|| OAuthError::invalid_request("binding_message is required"))?;
    let invalid = |why: &str| OAuthError::new(OAuthErrorCode::InvalidBindingMessage, why);
    if message.chars().count() > MAX_BINDING_MESSAGE_CHARS {
        return Err(invalid("binding_message may have at most 200 characters"));
    }
    if message.chars().any(char::is_control) {
        return Err(invalid("binding_message must be printable text"));
    }
    Ok(message.to_owned())
}

/// `openid` plus at least one resource scope; returns the resource scopes.
fn requested_scope(raw: Option<&str>) -> Result<ScopeSet, OAuthError> {
    let invalid_scope = |why: String| OAuthError::new(OAuthErrorCode::InvalidScope, why);
    let raw = raw.ok_or_else(|| OAuthError::invalid_request("scope is required"))?;
    let scope = ScopeSet::parse(raw).map_err(|e| invalid_scope(e.to_string()))?;
    if !scope.contains(SCOPE_OPENID) {
        return Err(invalid_scope("scope must include openid".into()));
    }
    let rest: Vec<String> = scope.iter().filter(|s| *s != SCOPE_OPENID).map(str::to_owned).collect();
    let rest = ScopeSet::from_tokens(&rest).map_err(|e| invalid_scope(e.to_string()))?;
    if rest.is_empty() {
        return Err(invalid_scope("scope must name at least one scope of the resource".into()));
    }
    Ok(rest)
}

fn requested_expiry(raw: Option<&str>) -> Result<i64, OAuthError> {
    let Some(raw) = raw else { return Ok(DEFAULT_EXPIRY_SECS) };
    raw.parse::<i64>().ok().filter(|secs| (1..=MAX_EXPIRY_SECS).contains(secs)).ok_or_else(|| {
        OAuthError::invalid_request(format!("requested_expiry must be a number of seconds from 1 to {MAX_EXPIRY_SECS}"))
    })
}

/// RFC 9396 §2: a JSON array of objects, each with a string `type`. Recorded verbatim; the
/// issued token carries exactly this JSON value.
fn authorization_details(raw: Option<&str>) -> Result<Option<String>, OAuthError> {
    let Some(raw) = raw else { return Ok(None) };
    let invalid = |why: &str| OAuthError::new(OAuthErrorCode::InvalidAuthorizationDetails, why);
    let value: Value = serde_json::from_str(raw).map_err(|_| invalid("authorization_details is not JSON"))?;
    let items = value.as_array().filter(|a| !a.is_empty());
    let items = items.ok_or_else(|| invalid("authorization_details must be a non-empty JSON array"))?;
    let typed = |item: &Value| item.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
    if !items.iter().all(|item| item.is_object() && typed(item)) {
        return Err(invalid("each authorization_details entry must be an object with a string type"));
    }
    Ok(Some(raw.to_owned()))
}

fn describe(event: &mut AuditEvent, request: &CibaRequest) {
    event.owner = Some(request.owner.clone());
    event.subject = Some(request.owner.clone());
    event.resource = Some(request.resource.clone());
    event.scope = Some(request.scope.clone());
    let mode = if request.notify_endpoint.is_some() { MODE_PING } else { MODE_POLL };
    event.detail = Some(format!("ciba={} mode={mode}", short_hash(&request.req_hash)));
}

/// The prefix of a request hash that names it in audit details.
pub(crate) fn short_hash(req_hash: &str) -> &str {
    req_hash.get(..16).unwrap_or(req_hash)
}

/// The token endpoint's CIBA grant (CIBA Core §10, §11): the same client only; pending,
/// too-fast, expired and denied requests answer with their errors; an approved one is spent
/// in the same transaction that records the issuance.
pub(crate) async fn redeem(
    authz: &Authz,
    client: &AuthenticatedClient,
    request: &TokenRequest,
    event: &mut AuditEvent,
) -> Result<crate::token::Granted, OAuthError> {
    let auth_req_id = crate::token::required(&request.auth_req_id, "auth_req_id")?;
    let req_hash = hash_secret(auth_req_id);
    let stored = authz.store.ciba_request(&req_hash).await.map_err(store_failure)?;
    let stored = stored.ok_or_else(|| invalid_grant("unknown auth_req_id"))?;
    if stored.client_id != client.client.client_id {
        return Err(invalid_grant("the auth_req_id was issued to another client"));
    }
    describe(event, &stored);
    if stored.status == REDEEMED {
        return Err(invalid_grant("the auth_req_id was already used"));
    }
    let now_ms = authz.clock.now_ms();
    if stored.expires_at_ms <= now_ms {
        return Err(OAuthError::new(OAuthErrorCode::ExpiredToken, "the request expired before it was approved"));
    }
    record_poll(authz, &req_hash, now_ms, event).await?;
    match stored.status.as_str() {
        DENIED => Err(OAuthError::new(OAuthErrorCode::AccessDenied, "the owner denied the request")),
        APPROVED => issue(authz, client, &stored, auth_req_id, now_ms, event).await,
        _ => Err(OAuthError::new(OAuthErrorCode::AuthorizationPending, "the owner has not decided yet")),
    }
}

/// Polls closer together than the interval are refused with `slow_down` (CIBA Core §11); the
/// poll itself is audited as `ciba.poll`.
async fn record_poll(authz: &Authz, req_hash: &str, now_ms: i64, event: &AuditEvent) -> Result<(), OAuthError> {
    let poll = Mutation::PollCibaRequest { req_hash: req_hash.to_owned(), now_ms, interval_ms: INTERVAL_SECS * 1000 };
    let mut poll_event = event.clone();
    poll_event.action = "ciba.poll".into();
    match authz.log.apply(poll, poll_event).await.map_err(crate::audit_failure)? {
        Ok(_) => Ok(()),
        Err(_) => Err(OAuthError::new(OAuthErrorCode::SlowDown, format!("poll at most every {INTERVAL_SECS} seconds"))),
    }
}

async fn issue(
    authz: &Authz,
    client: &AuthenticatedClient,
    stored: &CibaRequest,
    auth_req_id: &str,
    now_ms: i64,
    event: &mut AuditEvent,
) -> Result<crate::token::Granted, OAuthError> {
    let resource = authz.store.resource(&stored.resource).await.map_err(store_failure)?;
    let resource = resource.ok_or_else(|| invalid_grant("the resource no longer exists"))?;
    let scope = ScopeSet::parse(&stored.scope).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let details = match &stored.authorization_details {
        Some(text) => Some(serde_json::from_str::<Value>(text).map_err(|e| OAuthError::server_error(e.to_string()))?),
        None => None,
    };
    let token = AccessToken {
        subject: &stored.owner,
        owner: Some(&stored.owner),
        client_id: &client.client.client_id,
        resource: &resource,
        scope: &scope,
        ttl_secs: authz.config.access_token_ttl_secs,
        actor: client.agent.as_ref().map(|agent| actor_claim(agent, None)),
        jkt: None,
        extra: details.into_iter().map(|d| (AUTHORIZATION_DETAILS_CLAIM, d)).collect(),
        grant_type: GRANT_CIBA,
    };
    let mut response: TokenResponse = sign_access_token(authz, &token, event)?;
    let sign_in = SignIn {
        subject: &stored.owner,
        client_id: &client.client.client_id,
        nonce: None,
        auth_time: stored.decided_at_ms.unwrap_or(now_ms) / 1000,
    };
    let claim = [(AUTH_REQ_ID_CLAIM, Value::String(auth_req_id.to_owned()))];
    response.id_token = Some(sign_id_token_with(authz, &sign_in, &claim)?);
    let spend = Mutation::RedeemCibaRequest { req_hash: stored.req_hash.clone(), now_ms };
    Ok((response, Some(spend)))
}

/// A refused `RedeemCibaRequest`: a concurrent redemption won.
pub(crate) fn spent(refused: &MutationError) -> Option<OAuthError> {
    match refused {
        MutationError::NotFound(what) if what.starts_with("CIBA request") => {
            Some(invalid_grant("the auth_req_id was already used"))
        }
        _ => None,
    }
}

/// What the approval page shows.
#[derive(Debug, Clone)]
pub struct ApprovalView {
    pub approval_id: String,
    pub client_id: String,
    pub client_name: Option<String>,
    /// The agent acting, and its owner.
    pub agent: Option<(String, String)>,
    pub owner: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub binding_message: String,
    /// Pretty-printed RFC 9396 details, if any.
    pub authorization_details: Option<String>,
}

/// The pending, unexpired request behind an approval id.
pub async fn approval_view(authz: &Authz, approval_id: &str) -> Result<ApprovalView, OAuthError> {
    let stored = pending_by_approval(authz, approval_id).await?;
    let client = crate::clients::find_client(authz, &stored.client_id).await?;
    let agent = match &client {
        Some(client) => crate::client_auth::client_agent(authz, client).await?,
        None => None,
    };
    let details = stored.authorization_details.as_deref().map(|text| {
        serde_json::from_str::<Value>(text).and_then(|v| serde_json::to_string_pretty(&v)).unwrap_or_default()
    });
    Ok(ApprovalView {
        approval_id: stored.approval_id.clone(),
        client_id: stored.client_id.clone(),
        client_name: client.and_then(|c| c.client_name),
        agent: agent.map(|a| (a.name.to_string(), a.owner.to_string())),
        owner: stored.owner.clone(),
        resource: stored.resource.clone(),
        scopes: stored.scope.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        binding_message: stored.binding_message.clone(),
        authorization_details: details,
    })
}

async fn pending_by_approval(authz: &Authz, approval_id: &str) -> Result<CibaRequest, OAuthError> {
    let gone = || OAuthError::invalid_request("this approval request is unknown, already decided or expired");
    let stored = authz.store.ciba_request_by_approval(approval_id).await.map_err(store_failure)?;
    let now_ms = authz.clock.now_ms();
    stored.filter(|r| r.status == PENDING && r.expires_at_ms > now_ms).ok_or_else(gone)
}

/// The approval form: the owner signs in and decides in one step.
#[derive(Debug, Default)]
pub struct ApprovalForm {
    pub approval_id: String,
    pub owner: Option<String>,
    pub password: Option<Zeroizing<String>>,
    pub decision: Option<String>,
}

/// The owner's decision was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Denied,
}

/// Who decides an approval request: the owner signing in on the approval page, or an owner
/// already signed in to the console.
enum Decider {
    Password { owner: String, password: Zeroizing<String> },
    SignedIn(String),
}

/// Handles the approval form: only the owner named in the request, with their password, may
/// approve or deny it. Audited as `ciba.approve` / `ciba.deny` (refusals included).
pub async fn decide(authz: &Authz, form: ApprovalForm, correlation_id: &str) -> Result<Decision, OAuthError> {
    let decider =
        Decider::Password { owner: form.owner.unwrap_or_default(), password: form.password.unwrap_or_default() };
    record_decision(authz, &form.approval_id, form.decision.as_deref(), decider, correlation_id).await
}

/// The console's decision: `owner` has already signed in there, so their session stands in for
/// the password. Same rules and audit events as [`decide`]; only the request's owner may decide.
pub async fn decide_as_owner(
    authz: &Authz,
    approval_id: &str,
    owner: &str,
    decision: Option<&str>,
    correlation_id: &str,
) -> Result<Decision, OAuthError> {
    record_decision(authz, approval_id, decision, Decider::SignedIn(owner.to_owned()), correlation_id).await
}

async fn record_decision(
    authz: &Authz,
    approval_id: &str,
    decision: Option<&str>,
    decider: Decider,
    correlation_id: &str,
) -> Result<Decision, OAuthError> {
    let (action, decision) = match decision {
        Some("approve") => ("ciba.approve", Some(Decision::Approved)),
        Some("deny") => ("ciba.deny", Some(Decision::Denied)),
        _ => ("ciba.decision", None),
    };
    let mut event = AuditEvent::allow(action, correlation_id);
    match decide_inner(authz, approval_id, decider, decision, &mut event).await {
        Err(error) if error.description == WRONG_PASSWORD => {
            // Counted with its audit event, so guessing ends with a denied request.
            let failed = Mutation::FailCibaDecision {
                approval_id: approval_id.to_owned(),
                max: MAX_FAILURES,
                now_ms: authz.clock.now_ms(),
            };
            let event = event.refused(error.code.as_str(), &error.description);
            // A refused count means the request was decided meanwhile: nothing left to guard.
            let _counted = authz.log.apply(failed, event).await.map_err(crate::audit_failure)?;
            Err(error)
        }
        outcome => {
            conclude(authz, event, outcome, |_| {
                OAuthError::invalid_request("this approval request is unknown, already decided or expired")
            })
            .await
        }
    }
}

const WRONG_PASSWORD: &str = "wrong owner name or password";

async fn decide_inner(
    authz: &Authz,
    approval_id: &str,
    decider: Decider,
    decision: Option<Decision>,
    event: &mut AuditEvent,
) -> Result<(Decision, Option<Mutation>), OAuthError> {
    let decision = decision.ok_or_else(|| OAuthError::invalid_request("decision must be approve or deny"))?;
    let stored = pending_by_approval(authz, approval_id).await?;
    describe(event, &stored);
    event.client = Some(stored.client_id.clone());
    let owner = match decider {
        Decider::Password { owner, password } => {
            let verified = crate::password::verify_owner_password(authz, &owner, password).await?;
            let verified = verified.ok_or_else(|| OAuthError::new(OAuthErrorCode::AccessDenied, WRONG_PASSWORD))?;
            verified.name.to_string()
        }
        Decider::SignedIn(owner) => {
            let described = event.detail.take().unwrap_or_default();
            event.detail = Some(format!("{described} decided in the console by {owner}"));
            owner
        }
    };
    if owner != stored.owner {
        let why = "only the owner named in the request may decide it";
        return Err(OAuthError::new(OAuthErrorCode::AccessDenied, why));
    }
    let status = if decision == Decision::Approved { APPROVED } else { DENIED };
    let mutation = Mutation::DecideCibaRequest {
        approval_id: stored.approval_id.clone(),
        owner: stored.owner.clone(),
        status: status.into(),
        now_ms: authz.clock.now_ms(),
    };
    Ok((decision, Some(mutation)))
}

/// An owner's pending requests with the URLs of their approval pages (for `mandate ciba pending`).
pub async fn pending(authz: &Authz, owner: &str) -> Result<Vec<(CibaRequest, String)>, OAuthError> {
    let requests = authz.store.ciba_pending(owner, authz.clock.now_ms()).await.map_err(store_failure)?;
    let url = |r: &CibaRequest| format!("{}{APPROVAL_PATH}{}", authz.config.issuer, r.approval_id);
    Ok(requests.into_iter().map(|r| (r.clone(), url(&r))).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binding_messages_are_required_bounded_and_printable() {
        assert_eq!(binding_message(Some(" Delete row 7 ")).unwrap(), "Delete row 7");
        assert_eq!(binding_message(None).unwrap_err().code, OAuthErrorCode::InvalidRequest);
        assert_eq!(binding_message(Some("  ")).unwrap_err().code, OAuthErrorCode::InvalidRequest);
        let long = "x".repeat(MAX_BINDING_MESSAGE_CHARS + 1);
        assert_eq!(binding_message(Some(&long)).unwrap_err().code, OAuthErrorCode::InvalidBindingMessage);
        assert_eq!(binding_message(Some("a\u{7}b")).unwrap_err().code, OAuthErrorCode::InvalidBindingMessage);
    }

    #[test]
    fn scope_needs_openid_and_a_resource_scope() {
        assert_eq!(requested_scope(Some("openid read")).unwrap().to_string(), "read");
        assert_eq!(requested_scope(Some("read")).unwrap_err().code, OAuthErrorCode::InvalidScope);
        assert_eq!(requested_scope(Some("openid")).unwrap_err().code, OAuthErrorCode::InvalidScope);
        assert_eq!(requested_scope(None).unwrap_err().code, OAuthErrorCode::InvalidRequest);
    }

    #[test]
    fn notification_tokens_are_required_bounded_bearer_tokens() {
        assert_eq!(notification_token(Some("abc-._~+/DEF==")).unwrap().as_str(), "abc-._~+/DEF==");
        let max = "t".repeat(MAX_NOTIFICATION_TOKEN_CHARS);
        assert!(notification_token(Some(&max)).is_ok());
        let too_long = "t".repeat(MAX_NOTIFICATION_TOKEN_CHARS + 1);
        for bad in [None, Some(""), Some("has space"), Some("a=b"), Some("=="), Some("é"), Some(too_long.as_str())] {
            assert_eq!(notification_token(bad).unwrap_err().code, OAuthErrorCode::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn delivery_registration_rules() {
        let ciba = vec![GRANT_CIBA.to_owned()];
        let other = vec!["client_credentials".to_owned()];
        let ping = registered_delivery(Some("ping"), Some("https://agent.example/cb"), &ciba, false).unwrap();
        assert_eq!(
            Value::Object(ping),
            serde_json::json!({
                "backchannel_token_delivery_mode": "ping",
                "backchannel_client_notification_endpoint": "https://agent.example/cb",
            })
        );
        assert_eq!(registered_delivery(Some("poll"), None, &ciba, false).unwrap().len(), 1);
        assert!(registered_delivery(None, None, &other, false).unwrap().is_empty());
        let loopback = "http://127.0.0.1:9/cb";
        assert!(registered_delivery(Some("ping"), Some(loopback), &ciba, true).is_ok(), "tests on one host");
        let refused = [
            (Some("ping"), None, &ciba, false),
            (Some("ping"), Some(loopback), &ciba, false),
            (Some("ping"), Some("http://agent.example/cb"), &ciba, true),
            (Some("ping"), Some("https://agent.example/cb#f"), &ciba, false),
            (Some("poll"), Some("https://agent.example/cb"), &ciba, false),
            (None, Some("https://agent.example/cb"), &ciba, false),
            (Some("push"), Some("https://agent.example/cb"), &ciba, false),
            (Some("ping"), Some("https://agent.example/cb"), &other, false),
        ];
        for (mode, endpoint, grants, insecure) in refused {
            assert!(registered_delivery(mode, endpoint, grants, insecure).is_err(), "{mode:?} {endpoint:?}");
        }
    }

    #[test]
    fn a_clients_delivery_mode_comes_from_its_metadata() {
        let client = |metadata: Option<&str>| Client {
            client_id: "c".into(),
            agent: None,
            auth_method: mandate_core::ClientAuthMethod::ClientSecretBasic,
            secret_hash: None,
            jwks: None,
            can_introspect: false,
            redirect_uris: vec![],
            grant_types: vec![GRANT_CIBA.into()],
            client_name: None,
            metadata: metadata.map(str::to_owned),
            created_at_ms: 0,
        };
        assert_eq!(delivery_mode(&client(None)).unwrap(), DeliveryMode::Poll);
        assert_eq!(delivery_mode(&client(Some(r#"{"backchannel_logout_uri":"x"}"#))).unwrap(), DeliveryMode::Poll);
        let ping =
            r#"{"backchannel_token_delivery_mode":"ping","backchannel_client_notification_endpoint":"https://a/cb"}"#;
        assert_eq!(delivery_mode(&client(Some(ping))).unwrap(), DeliveryMode::Ping { endpoint: "https://a/cb".into() });
        assert!(delivery_mode(&client(Some(r#"{"backchannel_token_delivery_mode":"ping"}"#))).is_err());
    }

    #[test]
    fn requested_expiry_is_bounded() {
        assert_eq!(requested_expiry(None).unwrap(), DEFAULT_EXPIRY_SECS);
        assert_eq!(requested_expiry(Some("60")).unwrap(), 60);
        for bad in ["0", "-5", "601", "ten", ""] {
            assert!(requested_expiry(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorization_details_must_be_typed_objects() {
        let ok = authorization_details(Some(r#"[{"type":"db","actions":["delete"]}]"#)).unwrap().unwrap();
        assert_eq!(ok, r#"[{"type":"db","actions":["delete"]}]"#);
        assert_eq!(authorization_details(None).unwrap(), None);
        for bad in ["{}", "[]", "[1]", r#"[{"actions":[]}]"#, r#"[{"type":""}]"#, "not json"] {
            let error = authorization_details(Some(bad)).unwrap_err();
            assert_eq!(error.code, OAuthErrorCode::InvalidAuthorizationDetails, "{bad}");
        }
    }
}
