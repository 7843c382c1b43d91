//! The authorization endpoint (RFC 6749 §4.1 with OAuth 2.1, PKCE S256, RFC 8707 resources and
//! RFC 9207 `iss`): validating a request, the sign-in and consent steps a browser goes through,
//! and issuing the authorization code. No HTTP here: `server` renders the [`Step`]s.
//!
//! Until the client and its redirect URI are known to be genuine, nothing redirects (an
//! attacker could otherwise bounce errors anywhere); every later error goes back to the client.

use std::collections::HashMap;
use std::sync::Arc;

use mandate_core::{
    Agent, AuditEvent, AuthCode, Client, Consent, Name, OAuthError, OAuthErrorCode, Resource, ScopeSet,
};
use mandate_crypto::{constant_time_eq, hash_secret, random_token};
use mandate_store::Mutation;
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::code::{CodeGrant, GRANT_AUTHORIZATION_CODE};
use crate::{Authz, audit_failure, new_jti, store_failure};

/// How long an authorization code may wait for redemption.
pub const AUTH_CODE_TTL_MS: i64 = 60_000;
/// How long a browser has to sign in and decide.
pub const PENDING_TTL_MS: i64 = 10 * 60_000;
/// How long a sign-in lasts (per process: a restart signs everyone out).
pub const SESSION_TTL_MS: i64 = 8 * 3_600_000;
/// Bounds on what unauthenticated browsers can make this process hold.
const MAX_PENDING: usize = 10_000;
const MAX_SESSIONS: usize = 10_000;
/// Wrong passwords tolerated per pending request before it is dropped.
pub(crate) const MAX_SIGN_IN_FAILURES: u32 = 5;
/// Scopes about the sign-in itself rather than the resource; always grantable.
pub const SCOPE_OPENID: &str = "openid";
pub const SCOPE_OFFLINE_ACCESS: &str = "offline_access";
pub(crate) const IDENTITY_SCOPES: [&str; 2] = [SCOPE_OPENID, SCOPE_OFFLINE_ACCESS];

/// The query parameters of an authorization request, as received.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub response_mode: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub resources: Vec<String>,
    pub prompt: Option<String>,
    pub nonce: Option<String>,
    pub dpop_jkt: Option<String>,
    /// Names of parameters that appeared more than once (RFC 6749 §3.1 forbids it; `resource`
    /// may repeat, RFC 8707, and is then refused as more than one resource).
    pub repeated: Vec<String>,
}

/// OIDC `prompt`: what interaction the client allows or demands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptParam {
    /// No page may be shown: fail with `login_required` / `consent_required` instead.
    pub none: bool,
    /// Sign in again even with a live session.
    pub login: bool,
    /// Ask again even when a consent is remembered.
    pub consent: bool,
}

/// A validated authorization request, waiting for the owner.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client: Client,
    pub agent: Option<Agent>,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub resource: Resource,
    pub scope: ScopeSet,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub dpop_jkt: Option<String>,
    pub prompt: PromptParam,
}

/// Who signed in, and when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub owner: String,
    pub auth_time: i64,
}

/// What the browser is shown about a request: enough to decide, nothing secret.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub client_id: String,
    pub client_name: Option<String>,
    /// For a client identified by an https URL (metadata document), its host: what the
    /// owner can check.
    pub client_host: Option<String>,
    /// Where the browser goes afterwards (host, or the scheme of a native app).
    pub redirect_host: String,
    /// The agent the client acts as, if any, and its owner.
    pub agent: Option<(String, String)>,
    pub resource: String,
    pub scopes: Vec<String>,
    /// The signed-in owner, on the consent page.
    pub owner: Option<String>,
}

/// A page the browser must fill in, bound to its pending request.
#[derive(Debug, Clone)]
pub struct Interaction {
    pub request_id: String,
    pub csrf: String,
    pub view: RequestView,
    /// Why the previous attempt failed (a wrong password), for the page to say.
    pub notice: Option<String>,
}

/// What the endpoint does next.
#[derive(Debug, Clone)]
pub enum Step {
    /// 303 to this URL: the client's redirect URI with a code or an error.
    Redirect(String),
    SignIn(Interaction),
    Consent(Interaction),
    /// An error page; never a redirect.
    Error(OAuthError),
}

/// A step, plus a session cookie value to set when the owner just signed in.
#[derive(Debug, Clone)]
pub struct Decided {
    pub step: Step,
    pub new_session: Option<String>,
}

/// The fields of a sign-in or consent form.
#[derive(Debug, Default)]
pub struct DecisionForm {
    pub request_id: Option<String>,
    pub csrf: Option<String>,
    pub decision: Option<String>,
    pub owner: Option<String>,
    pub password: Option<Zeroizing<String>>,
}

/// Handles `GET /oauth2/authorize`. `session` is the browser's session cookie value, if any.
pub async fn authorize(
    authz: &Authz,
    browser: &Interactions,
    params: AuthorizeParams,
    session: Option<&str>,
    correlation_id: &str,
) -> Step {
    let mut event = AuditEvent::allow("authorize.request", correlation_id);
    event.client = params.client_id.clone();
    event.resource = params.resources.first().cloned();
    let (client, agent, redirect_uri) = match check_client(authz, &params).await {
        Ok(found) => found,
        Err(error) => return page_error(authz, event, error).await,
    };
    describe(&mut event, &client, agent.as_ref());
    let state = params.state.clone();
    let request = match check_request(authz, client, agent, redirect_uri.clone(), params).await {
        Ok(request) => request,
        Err(error) => return redirect_error(authz, event, &redirect_uri, state.as_deref(), error).await,
    };
    event.scope = Some(request.scope.to_string());
    let now_ms = authz.clock.now_ms();
    let signed_in = session.and_then(|cookie| browser.session(cookie, now_ms)).filter(|_| !request.prompt.login);
    let Some(signed_in) = signed_in else {
        if request.prompt.none {
            let error = OAuthError::new(OAuthErrorCode::InvalidRequest, "the owner must sign in");
            return redirect_error_as(authz, event, &request, "login_required", error).await;
        }
        return show(authz, browser, event, request, None, "sign-in required").await;
    };
    event.owner = Some(signed_in.owner.clone());
    event.subject = Some(signed_in.owner.clone());
    continue_signed_in(authz, browser, event, request, signed_in).await
}

/// Handles `POST /oauth2/authorize/decision`: a sign-in, an approval or a denial.
pub async fn decide(
    authz: &Authz,
    browser: &Interactions,
    form: DecisionForm,
    session: Option<&str>,
    correlation_id: &str,
) -> Decided {
    let event = AuditEvent::allow("authorize.decision", correlation_id);
    let now_ms = authz.clock.now_ms();
    let request_id = form.request_id.clone().unwrap_or_default();
    let request_id = request_id.as_str();
    let pending = match browser.pending(request_id, form.csrf.as_deref().unwrap_or_default(), now_ms) {
        Ok(pending) => pending,
        Err(error) => return Decided { step: page_error(authz, event, error).await, new_session: None },
    };
    let mut event = event;
    describe(&mut event, &pending.request.client, pending.request.agent.as_ref());
    event.resource = Some(pending.request.resource.uri.to_string());
    event.scope = Some(pending.request.scope.to_string());
    match form.decision.as_deref() {
        Some("login") => sign_in(authz, browser, event, request_id, pending, form).await,
        Some("approve") => {
            let step = approve(authz, browser, event, request_id, pending, session).await;
            Decided { step, new_session: None }
        }
        Some("deny") => {
            let step = deny(authz, browser, event, request_id, &pending).await;
            Decided { step, new_session: None }
        }
        _ => {
            let error = OAuthError::invalid_request("decision must be login, approve or deny");
            Decided { step: page_error(authz, event, error).await, new_session: None }
        }
    }
}

/// The client is registered (or resolvable), may use the code grant, and the redirect URI is
/// one of its own. Failures here are shown as a page, never redirected.
async fn check_client(authz: &Authz, params: &AuthorizeParams) -> Result<(Client, Option<Agent>, String), OAuthError> {
    if let Some(name) = params.repeated.iter().find(|n| matches!(n.as_str(), "client_id" | "redirect_uri")) {
        return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
    }
    let client_id = params.client_id.as_deref().ok_or_else(|| OAuthError::invalid_request("client_id is required"))?;
    let client = crate::clients::find_client(authz, client_id)
        .await?
        .ok_or_else(|| OAuthError::invalid_client(format!("unknown client {client_id:?}")))?;
    if !client.allows_grant(GRANT_AUTHORIZATION_CODE) {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "this client is not registered for the authorization code grant",
        ));
    }
    let redirect_uri = match (params.redirect_uri.as_deref(), client.redirect_uris.as_slice()) {
        (Some(presented), registered) => registered
            .iter()
            .any(|r| redirect_uri_matches(r, presented))
            .then(|| presented.to_owned())
            .ok_or_else(|| OAuthError::invalid_request("redirect_uri is not registered for this client"))?,
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(OAuthError::invalid_request("redirect_uri is required: the client registered several"));
        }
    };
    let agent = crate::client_auth::client_agent(authz, &client).await?;
    Ok((client, agent, redirect_uri))
}

/// Exact string match (OAuth 2.1 §2.3.1, RFC 9700 §4.1.3), except that a loopback IP redirect
/// URI may name any port at request time (RFC 8252 §7.3): native apps listen on a free port.
pub fn redirect_uri_matches(registered: &str, presented: &str) -> bool {
    if constant_time_eq(registered.as_bytes(), presented.as_bytes()) {
        return true;
    }
    let (Ok(mut registered), Ok(mut presented_url)) = (url::Url::parse(registered), url::Url::parse(presented)) else {
        return false;
    };
    let loopback_ip = |u: &url::Url| match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    // Only a presented URI already in normal form qualifies, so the comparison below is exact.
    if registered.scheme() != "http" || !loopback_ip(&registered) || presented_url.as_str() != presented {
        return false;
    }
    let ports_cleared = registered.set_port(None).is_ok() && presented_url.set_port(None).is_ok();
    ports_cleared && registered.as_str() == presented_url.as_str()
}

/// Everything after the client: response type, PKCE, resource, scope, prompt, binding. Failures
/// here go back to the client's redirect URI.
async fn check_request(
    authz: &Authz,
    client: Client,
    agent: Option<Agent>,
    redirect_uri: String,
    params: AuthorizeParams,
) -> Result<AuthorizationRequest, OAuthError> {
    if let Some(name) = params.repeated.iter().find(|n| n.as_str() != "resource") {
        return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
    }
    match params.response_type.as_deref() {
        Some("code") => {}
        None => return Err(OAuthError::invalid_request("response_type is required")),
        Some(other) => {
            return Err(OAuthError::new(
                OAuthErrorCode::UnsupportedResponseType,
                format!("response_type {other:?} is not supported; use code"),
            ));
        }
    }
    if params.response_mode.as_deref().is_some_and(|m| m != "query") {
        return Err(OAuthError::invalid_request("response_mode must be query"));
    }
    let code_challenge = check_pkce(params.code_challenge, params.code_challenge_method.as_deref())?;
    let resource = requested_resource(authz, &params.resources).await?;
    let scope = requested_scope(params.scope.as_deref(), &resource, agent.as_ref())?;
    let prompt = parse_prompt(params.prompt.as_deref())?;
    if params.nonce.as_deref().is_some_and(|n| n.is_empty() || n.len() > 512) {
        return Err(OAuthError::invalid_request("nonce must have 1 to 512 characters"));
    }
    if params.dpop_jkt.as_deref().is_some_and(|j| !is_sha256_b64url(j)) {
        return Err(OAuthError::invalid_request("dpop_jkt must be a base64url SHA-256 JWK thumbprint"));
    }
    Ok(AuthorizationRequest {
        client,
        agent,
        redirect_uri,
        state: params.state,
        resource,
        scope,
        code_challenge,
        nonce: params.nonce,
        dpop_jkt: params.dpop_jkt,
        prompt,
    })
}

/// PKCE (RFC 7636, OAuth 2.1 §4.1.1): a challenge is required and only S256 is accepted;
/// `plain` (and a missing method, which means plain) would put the verifier in the browser.
pub fn check_pkce(challenge: Option<String>, method: Option<&str>) -> Result<String, OAuthError> {
    let challenge = challenge.ok_or_else(|| OAuthError::invalid_request("code_challenge is required (PKCE, S256)"))?;
    match method {
        Some("S256") => {}
        Some(other) => {
            return Err(OAuthError::invalid_request(format!("code_challenge_method {other:?} is refused; use S256")));
        }
        None => return Err(OAuthError::invalid_request("code_challenge_method is required and must be S256")),
    }
    if !is_sha256_b64url(&challenge) {
        return Err(OAuthError::invalid_request("code_challenge must be 43 base64url characters (S256)"));
    }
    Ok(challenge)
}

/// Whether `verifier` is a valid RFC 7636 §4.1 code verifier whose S256 is `challenge`;
/// compared in constant time.
pub fn pkce_verifies(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let computed = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        mandate_crypto::sha256(verifier.as_bytes()),
    );
    well_formed & constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// 43 base64url characters: an unpadded SHA-256 digest.
fn is_sha256_b64url(value: &str) -> bool {
    value.len() == 43 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Exactly one registered resource (RFC 8707); a missing one is `invalid_target` too, since
/// every token Mandate issues is for exactly one resource.
async fn requested_resource(authz: &Authz, requested: &[String]) -> Result<Resource, OAuthError> {
    if requested.is_empty() {
        return Err(OAuthError::new(OAuthErrorCode::InvalidTarget, "resource is required (RFC 8707)"));
    }
    crate::token::target_resource(authz, requested).await
}

/// The scope to ask the owner for: what was requested (all of the resource's scopes if
/// nothing was), each offered by the resource or an identity scope, and for an agent's client
/// no more than the agent may have.
pub fn requested_scope(raw: Option<&str>, resource: &Resource, agent: Option<&Agent>) -> Result<ScopeSet, OAuthError> {
    let invalid_scope = |why: String| OAuthError::new(OAuthErrorCode::InvalidScope, why);
    let offered = ScopeSet::from_tokens(&resource.scopes).map_err(|e| invalid_scope(e.to_string()))?;
    let identity = ScopeSet::from_tokens(IDENTITY_SCOPES).map_err(|e| invalid_scope(e.to_string()))?;
    let wanted = match raw.map(ScopeSet::parse).transpose().map_err(|e| invalid_scope(e.to_string()))? {
        Some(set) if !set.is_empty() => set,
        _ => offered.clone(),
    };
    let known = union(&offered, &identity);
    if let Some(unknown) = wanted.not_in(&known).next() {
        return Err(invalid_scope(format!("scope {unknown:?} is not offered by {}", resource.uri)));
    }
    let mut at_resource = wanted.intersection(&offered);
    if let Some(agent) = agent {
        let allowed = ScopeSet::from_tokens(&agent.scopes).map_err(|e| invalid_scope(e.to_string()))?;
        let asked = !at_resource.is_empty();
        at_resource = at_resource.intersection(&allowed);
        if asked && at_resource.is_empty() {
            return Err(invalid_scope(format!(
                "agent {} may not have any of the requested scopes at {}",
                agent.name, resource.uri
            )));
        }
    }
    Ok(union(&at_resource, &wanted.intersection(&identity)))
}

pub(crate) fn union(a: &ScopeSet, b: &ScopeSet) -> ScopeSet {
    // Both sides hold validated tokens, so rebuilding cannot fail; fall back to `a` regardless.
    ScopeSet::from_tokens(a.iter().chain(b.iter())).unwrap_or_else(|_| a.clone())
}

fn parse_prompt(raw: Option<&str>) -> Result<PromptParam, OAuthError> {
    let mut prompt = PromptParam::default();
    for value in raw.unwrap_or_default().split(' ').filter(|v| !v.is_empty()) {
        match value {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            "select_account" => {}
            other => return Err(OAuthError::invalid_request(format!("prompt {other:?} is not supported"))),
        }
    }
    if prompt.none && (prompt.login || prompt.consent) {
        return Err(OAuthError::invalid_request("prompt=none cannot be combined with other values"));
    }
    Ok(prompt)
}

/// A signed-in owner: issue a code at once if a remembered consent covers the request, else ask.
async fn continue_signed_in(
    authz: &Authz,
    browser: &Interactions,
    mut event: AuditEvent,
    request: AuthorizationRequest,
    signed_in: SignedIn,
) -> Step {
    let remembered = match remembered_consent(authz, &request, &signed_in.owner).await {
        Ok(consent) => consent,
        Err(error) => return page_error(authz, event, error).await,
    };
    if remembered.as_ref().is_some_and(|c| covers(c, &request.scope)) && !request.prompt.consent {
        event.action = "authorize.approve".into();
        event.detail = Some("remembered consent".into());
        return issue_code(authz, event, &request, &signed_in, None).await;
    }
    if request.prompt.none {
        let error = OAuthError::new(OAuthErrorCode::InvalidRequest, "the owner has not consented");
        return redirect_error_as(authz, event, &request, "consent_required", error).await;
    }
    show(authz, browser, event, request, Some(signed_in), "consent required").await
}

async fn remembered_consent(
    authz: &Authz,
    request: &AuthorizationRequest,
    owner: &str,
) -> Result<Option<Consent>, OAuthError> {
    authz.store.consent(owner, &request.client.client_id, request.resource.uri.as_str()).await.map_err(store_failure)
}

fn covers(consent: &Consent, scope: &ScopeSet) -> bool {
    scope.iter().all(|s| consent.scopes.iter().any(|c| c == s))
}

/// Opens a pending request and shows its sign-in form (no owner yet) or consent page.
async fn show(
    authz: &Authz,
    browser: &Interactions,
    event: AuditEvent,
    request: AuthorizationRequest,
    signed_in: Option<SignedIn>,
    why: &str,
) -> Step {
    let event = event.with_detail(why);
    if let Err(e) = authz.log.record(event).await {
        return Step::Error(audit_failure(e));
    }
    let consent = signed_in.is_some();
    let view = view(&request, signed_in.as_ref());
    let (request_id, csrf) = browser.open(request, signed_in, authz.clock.now_ms());
    let interaction = Interaction { request_id, csrf, view, notice: None };
    if consent { Step::Consent(interaction) } else { Step::SignIn(interaction) }
}

fn view(request: &AuthorizationRequest, signed_in: Option<&SignedIn>) -> RequestView {
    let client_id = &request.client.client_id;
    let client_host = client_id
        .starts_with("https://")
        .then(|| url::Url::parse(client_id).ok().and_then(|u| u.host_str().map(str::to_owned)))
        .flatten();
    let redirect_host = url::Url::parse(&request.redirect_uri)
        .ok()
        .map(|u| u.host_str().map_or_else(|| format!("{}:", u.scheme()), str::to_owned))
        .unwrap_or_default();
    RequestView {
        client_id: client_id.clone(),
        client_name: request.client.client_name.clone(),
        client_host,
        redirect_host,
        agent: request.agent.as_ref().map(|a| (a.name.to_string(), a.owner.to_string())),
        resource: request.resource.uri.to_string(),
        scopes: request.scope.to_vec(),
        owner: signed_in.map(|s| s.owner.clone()),
    }
}

async fn sign_in(
    authz: &Authz,
    browser: &Interactions,
    mut event: AuditEvent,
    request_id: &str,
    pending: PendingView,
    form: DecisionForm,
) -> Decided {
    event.action = "authorize.login".into();
    let owner = form.owner.unwrap_or_default();
    // Only a well-formed name is logged: a password typed into the wrong field stays out.
    event.owner = Name::parse(&owner).ok().map(|n| n.to_string());
    let password = form.password.unwrap_or_default();
    let verified = match crate::password::verify_owner_password(authz, &owner, password).await {
        Ok(verified) => verified,
        Err(error) => return Decided { step: page_error(authz, event, error).await, new_session: None },
    };
    let Some(owner) = verified else {
        return refused_sign_in(authz, browser, event, request_id, pending).await;
    };
    let signed_in = SignedIn { owner: owner.name.to_string(), auth_time: authz.clock.now_secs() };
    event.subject = Some(signed_in.owner.clone());
    if let Err(e) = authz.log.record(event.clone().with_detail("signed in")).await {
        return Decided { step: Step::Error(audit_failure(e)), new_session: None };
    }
    let now_ms = authz.clock.now_ms();
    let cookie = browser.sign_in(signed_in.clone(), now_ms);
    // The sign-in page is done with; what follows is a fresh step for the same request.
    let Some(request) = browser.close(request_id) else {
        return Decided { step: Step::Error(expired()), new_session: Some(cookie) };
    };
    let mut event = AuditEvent::allow("authorize.request", &event.correlation_id);
    describe(&mut event, &request.client, request.agent.as_ref());
    event.owner = Some(signed_in.owner.clone());
    event.subject = Some(signed_in.owner.clone());
    event.resource = Some(request.resource.uri.to_string());
    event.scope = Some(request.scope.to_string());
    let request = AuthorizationRequest { prompt: PromptParam { login: false, ..request.prompt }, ..request };
    let step = continue_signed_in(authz, browser, event, request, signed_in).await;
    Decided { step, new_session: Some(cookie) }
}

/// A wrong owner or password: audited (never with the password), the form shown again, and
/// after too many failures the request is dropped.
async fn refused_sign_in(
    authz: &Authz,
    browser: &Interactions,
    event: AuditEvent,
    request_id: &str,
    pending: PendingView,
) -> Decided {
    let failures = browser.record_failure(request_id);
    let error = OAuthError::new(OAuthErrorCode::AccessDenied, "wrong owner name or password");
    let event = event.refused(error.code.as_str(), &format!("{} (attempt {failures})", error.description));
    if let Err(e) = authz.log.record(event).await {
        return Decided { step: Step::Error(audit_failure(e)), new_session: None };
    }
    if failures >= MAX_SIGN_IN_FAILURES {
        browser.close(request_id);
        let error = OAuthError::new(OAuthErrorCode::AccessDenied, "too many failed sign-ins; start again");
        return Decided { step: Step::Error(error), new_session: None };
    }
    let interaction = Interaction {
        request_id: request_id.to_owned(),
        csrf: pending.csrf,
        view: view(&pending.request, None),
        notice: Some("Wrong owner name or password.".into()),
    };
    Decided { step: Step::SignIn(interaction), new_session: None }
}

/// The owner approved: remember the consent (widened to the union with any earlier one) and
/// issue the code, in one transaction with the audit event.
async fn approve(
    authz: &Authz,
    browser: &Interactions,
    mut event: AuditEvent,
    request_id: &str,
    pending: PendingView,
    session: Option<&str>,
) -> Step {
    event.action = "authorize.approve".into();
    let now_ms = authz.clock.now_ms();
    let session_owner = session.and_then(|cookie| browser.session(cookie, now_ms));
    let signed_in = match (pending.signed_in, session_owner) {
        (Some(pending_owner), Some(current)) if pending_owner.owner == current.owner => pending_owner,
        _ => {
            let error = OAuthError::new(OAuthErrorCode::AccessDenied, "sign in first: no session for this request");
            return page_error(authz, event, error).await;
        }
    };
    event.owner = Some(signed_in.owner.clone());
    event.subject = Some(signed_in.owner.clone());
    let Some(request) = browser.close(request_id) else {
        return page_error(authz, event, expired()).await;
    };
    let earlier = match remembered_consent(authz, &request, &signed_in.owner).await {
        Ok(earlier) => earlier,
        Err(error) => return page_error(authz, event, error).await,
    };
    let consent = widened_consent(&request, &signed_in, earlier, now_ms);
    issue_code(authz, event, &request, &signed_in, consent).await
}

fn widened_consent(
    request: &AuthorizationRequest,
    signed_in: &SignedIn,
    earlier: Option<Consent>,
    now_ms: i64,
) -> Option<Consent> {
    let owner = Name::parse(&signed_in.owner).ok()?;
    let earlier_scopes = earlier.map(|c| c.scopes).unwrap_or_default();
    let earlier_set = ScopeSet::from_tokens(&earlier_scopes).unwrap_or_default();
    Some(Consent {
        owner,
        client_id: request.client.client_id.clone(),
        resource: request.resource.uri.to_string(),
        scopes: union(&earlier_set, &request.scope).to_vec(),
        granted_at_ms: now_ms,
    })
}

async fn deny(
    authz: &Authz,
    browser: &Interactions,
    mut event: AuditEvent,
    request_id: &str,
    pending: &PendingView,
) -> Step {
    event.action = "authorize.deny".into();
    if let Some(signed_in) = &pending.signed_in {
        event.owner = Some(signed_in.owner.clone());
        event.subject = Some(signed_in.owner.clone());
    }
    let Some(request) = browser.close(request_id) else {
        return page_error(authz, event, expired()).await;
    };
    let error = OAuthError::new(OAuthErrorCode::AccessDenied, "the owner denied the request");
    redirect_error(authz, event, &request.redirect_uri, request.state.as_deref(), error).await
}

/// Creates the code (256 random bits, stored as its SHA-256, single use, 60 s) with the
/// consent to remember, and answers with the redirect that carries it.
async fn issue_code(
    authz: &Authz,
    mut event: AuditEvent,
    request: &AuthorizationRequest,
    signed_in: &SignedIn,
    consent: Option<Consent>,
) -> Step {
    let code = random_token("");
    let now_ms = authz.clock.now_ms();
    let family = new_jti();
    let grant = CodeGrant {
        owner: signed_in.owner.clone(),
        client_id: request.client.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        resource: request.resource.uri.to_string(),
        scope: request.scope.to_string(),
        nonce: request.nonce.clone(),
        auth_time: signed_in.auth_time,
        dpop_jkt: request.dpop_jkt.clone(),
        family: family.clone(),
    };
    let grant = match serde_json::to_string(&grant) {
        Ok(json) => json,
        Err(e) => return Step::Error(OAuthError::server_error(e.to_string())),
    };
    let stored = AuthCode {
        code_hash: hash_secret(&code),
        client_id: request.client.client_id.clone(),
        grant,
        expires_at_ms: now_ms + AUTH_CODE_TTL_MS,
        used_at_ms: None,
    };
    let mut mutations: Vec<Mutation> = consent.map(Mutation::PutConsent).into_iter().collect();
    mutations.push(Mutation::CreateAuthCode(stored));
    let detail = event.detail.take().map_or_else(String::new, |d| format!("{d}; "));
    event.detail = Some(format!("{detail}grant={family}"));
    match authz.log.apply(Mutation::All(mutations), event).await {
        Err(e) => Step::Error(audit_failure(e)),
        Ok(Err(refused)) => Step::Error(OAuthError::server_error(format!("the code was not stored: {refused}"))),
        Ok(Ok(_)) => Step::Redirect(success_redirect(authz, request, &code)),
    }
}

fn success_redirect(authz: &Authz, request: &AuthorizationRequest, code: &str) -> String {
    let mut pairs = vec![("code", code)];
    if let Some(state) = &request.state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", &authz.config.issuer));
    with_query(&request.redirect_uri, &pairs)
}

/// `uri` with `pairs` appended to its query (RFC 6749 §4.1.2 keeps an existing query).
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(pairs);
            url.to_string()
        }
        // Registered redirect URIs are absolute, so this is unreachable; refuse to improvise.
        Err(_) => String::new(),
    }
}

async fn redirect_error(
    authz: &Authz,
    event: AuditEvent,
    redirect_uri: &str,
    state: Option<&str>,
    error: OAuthError,
) -> Step {
    let code = error.code.as_str();
    redirect_with_error(authz, event, redirect_uri, state, code, error).await
}

/// An OIDC error code (`login_required`, `consent_required`) that OAuthErrorCode does not list.
async fn redirect_error_as(
    authz: &Authz,
    event: AuditEvent,
    request: &AuthorizationRequest,
    code: &'static str,
    error: OAuthError,
) -> Step {
    redirect_with_error(authz, event, &request.redirect_uri, request.state.as_deref(), code, error).await
}

async fn redirect_with_error(
    authz: &Authz,
    event: AuditEvent,
    redirect_uri: &str,
    state: Option<&str>,
    code: &str,
    error: OAuthError,
) -> Step {
    let event = event.refused(code, &error.description);
    if let Err(e) = authz.log.record(event).await {
        return Step::Error(audit_failure(e));
    }
    let mut pairs = vec![("error", code), ("error_description", error.description.as_str())];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", &authz.config.issuer));
    Step::Redirect(with_query(redirect_uri, &pairs))
}

async fn page_error(authz: &Authz, event: AuditEvent, error: OAuthError) -> Step {
    Step::Error(crate::record_refusal(authz, event, error).await)
}

fn expired() -> OAuthError {
    OAuthError::invalid_request("this sign-in request is unknown or expired; start again from the application")
}

fn describe(event: &mut AuditEvent, client: &Client, agent: Option<&Agent>) {
    event.client = Some(client.client_id.clone());
    event.agent = agent.map(|a| a.spiffe_id.to_string());
}

/// A pending request as [`Interactions::pending`] hands it out.
#[derive(Debug, Clone)]
struct PendingView {
    request: Arc<AuthorizationRequest>,
    csrf: String,
    signed_in: Option<SignedIn>,
}

struct Pending {
    request: Arc<AuthorizationRequest>,
    csrf: String,
    signed_in: Option<SignedIn>,
    failures: u32,
    expires_ms: i64,
}

struct Session {
    signed_in: SignedIn,
    expires_ms: i64,
}

/// Browser state held in this process: pending authorization requests (keyed by the SHA-256 of
/// a random id, with a CSRF token bound to each) and sign-in sessions (keyed by the SHA-256 of
/// the cookie). Both expire and are bounded; a restart forgets them (people sign in again).
#[derive(Default)]
pub struct Interactions {
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Interactions {
    /// Stores a validated request; returns its id and CSRF token.
    fn open(&self, request: AuthorizationRequest, signed_in: Option<SignedIn>, now_ms: i64) -> (String, String) {
        let (id, csrf) = (random_token(""), random_token(""));
        let entry = Pending {
            request: Arc::new(request),
            csrf: csrf.clone(),
            signed_in,
            failures: 0,
            expires_ms: now_ms + PENDING_TTL_MS,
        };
        let mut pending = self.pending.lock();
        make_room(&mut pending, MAX_PENDING, now_ms, |p| p.expires_ms);
        pending.insert(hash_secret(&id), entry);
        (id, csrf)
    }

    /// The pending request `id`, if it is live and `csrf` is the token bound to it.
    fn pending(&self, id: &str, csrf: &str, now_ms: i64) -> Result<PendingView, OAuthError> {
        let pending = self.pending.lock();
        let entry = pending.get(&hash_secret(id)).filter(|p| p.expires_ms > now_ms).ok_or_else(expired)?;
        if !constant_time_eq(entry.csrf.as_bytes(), csrf.as_bytes()) {
            return Err(OAuthError::invalid_request("the form's CSRF token does not match this request"));
        }
        Ok(PendingView {
            request: Arc::clone(&entry.request),
            csrf: entry.csrf.clone(),
            signed_in: entry.signed_in.clone(),
        })
    }

    fn record_failure(&self, id: &str) -> u32 {
        let mut pending = self.pending.lock();
        pending.get_mut(&hash_secret(id)).map_or(MAX_SIGN_IN_FAILURES, |p| {
            p.failures += 1;
            p.failures
        })
    }

    /// Removes a pending request, so it can be decided only once.
    fn close(&self, id: &str) -> Option<AuthorizationRequest> {
        let entry = self.pending.lock().remove(&hash_secret(id))?;
        Some(Arc::unwrap_or_clone(entry.request))
    }

    /// Starts a session; returns the cookie value (256 random bits).
    fn sign_in(&self, signed_in: SignedIn, now_ms: i64) -> String {
        let cookie = random_token("");
        let mut sessions = self.sessions.lock();
        make_room(&mut sessions, MAX_SESSIONS, now_ms, |s| s.expires_ms);
        sessions.insert(hash_secret(&cookie), Session { signed_in, expires_ms: now_ms + SESSION_TTL_MS });
        cookie
    }

    /// Who the session cookie belongs to, while it lasts.
    pub fn session(&self, cookie: &str, now_ms: i64) -> Option<SignedIn> {
        let sessions = self.sessions.lock();
        sessions.get(&hash_secret(cookie)).filter(|s| s.expires_ms > now_ms).map(|s| s.signed_in.clone())
    }
}

/// Drops expired entries when the map is full, then the one closest to expiry if still full.
fn make_room<V>(map: &mut HashMap<String, V>, max: usize, now_ms: i64, expires: impl Fn(&V) -> i64) {
    if map.len() < max {
        return;
    }
    map.retain(|_, v| expires(v) > now_ms);
    if map.len() >= max
        && let Some(oldest) = map.iter().min_by_key(|(_, v)| expires(v)).map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mandate_core::ResourceUri;

    /// RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn pkce_s256_matches_the_rfc_example() {
        assert!(pkce_verifies(VERIFIER, CHALLENGE));
        assert!(!pkce_verifies("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK", CHALLENGE));
        assert!(!pkce_verifies(CHALLENGE, CHALLENGE), "the challenge is not its own verifier");
    }

    #[test]
    fn pkce_verifiers_must_be_well_formed() {
        let short = "a".repeat(42);
        let short_challenge = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            mandate_crypto::sha256(short.as_bytes()),
        );
        assert!(!pkce_verifies(&short, &short_challenge), "43 characters at least");
        let long = "a".repeat(129);
        let long_challenge = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            mandate_crypto::sha256(long.as_bytes()),
        );
        assert!(!pkce_verifies(&long, &long_challenge), "128 characters at most");
    }

    #[test]
    fn only_s256_challenges_are_accepted() {
        assert_eq!(check_pkce(Some(CHALLENGE.into()), Some("S256")).unwrap(), CHALLENGE);
        assert!(check_pkce(Some(CHALLENGE.into()), Some("plain")).is_err());
        assert!(check_pkce(Some(CHALLENGE.into()), None).is_err(), "absent method means plain");
        assert!(check_pkce(None, Some("S256")).is_err());
        assert!(check_pkce(Some("short".into()), Some("S256")).is_err());
        assert!(check_pkce(Some(format!("{}=", &CHALLENGE[..42])), Some("S256")).is_err());
    }

    #[test]
    fn redirect_uris_match_exactly() {
        let registered = "https://app.example/cb";
        assert!(redirect_uri_matches(registered, "https://app.example/cb"));
        for other in [
            "https://app.example/cb/",
            "https://app.example/cb?x=1",
            "https://APP.example/cb",
            "https://app.example:443/cb",
            "https://app.example/c%62",
            "http://app.example/cb",
            "https://app.example.evil/cb",
            "https://app.example:8443/cb",
        ] {
            assert!(!redirect_uri_matches(registered, other), "{other}");
        }
        assert!(!redirect_uri_matches("http://localhost/cb", "http://localhost:5000/cb"), "only IP literals");
        assert!(!redirect_uri_matches("com.example.app:/cb", "com.example.app:/cb2"));
        assert!(redirect_uri_matches("com.example.app:/cb", "com.example.app:/cb"));
    }

    #[test]
    fn loopback_ip_redirects_may_use_any_port() {
        assert!(redirect_uri_matches("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb"));
        assert!(redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:51234/cb"));
        assert!(redirect_uri_matches("http://[::1]/cb", "http://[::1]:8080/cb"));
        assert!(!redirect_uri_matches("http://127.0.0.1/cb", "http://127.0.0.1:51234/other"));
        assert!(!redirect_uri_matches("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb?x=1"));
        assert!(!redirect_uri_matches("http://127.0.0.1/cb", "http://127.0.0.2:51234/cb"));
        assert!(!redirect_uri_matches("http://127.0.0.1/cb", "http://127.0.0.1:51234/a/../cb"));
        assert!(!redirect_uri_matches("https://127.0.0.1/cb", "https://127.0.0.1:8443/cb"), "http only");
    }

    fn resource() -> Resource {
        Resource {
            uri: ResourceUri::parse("https://api.example").unwrap(),
            scopes: vec!["read".into(), "write".into()],
            created_at_ms: 0,
        }
    }

    #[test]
    fn scope_defaults_to_the_resource_and_allows_identity_scopes() {
        assert_eq!(requested_scope(None, &resource(), None).unwrap().to_string(), "read write");
        assert_eq!(requested_scope(Some(""), &resource(), None).unwrap().to_string(), "read write");
        let asked = requested_scope(Some("openid read offline_access"), &resource(), None).unwrap();
        assert_eq!(asked.to_string(), "offline_access openid read");
        let error = requested_scope(Some("read admin"), &resource(), None).unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::InvalidScope);
    }

    #[test]
    fn an_agents_client_gets_no_more_than_the_agent() {
        let agent = Agent {
            name: Name::parse("bot").unwrap(),
            owner: Name::parse("alice").unwrap(),
            spiffe_id: mandate_core::TrustDomain::parse("t.example").unwrap().agent_id(&Name::parse("bot").unwrap()),
            scopes: vec!["read".into()],
            selectors: vec![],
            may_impersonate: false,
            created_at_ms: 0,
        };
        let scope = requested_scope(Some("openid read write"), &resource(), Some(&agent)).unwrap();
        assert_eq!(scope.to_string(), "openid read");
        let error = requested_scope(Some("write"), &resource(), Some(&agent)).unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::InvalidScope);
    }

    #[test]
    fn prompt_values() {
        assert_eq!(parse_prompt(None).unwrap(), PromptParam::default());
        assert!(parse_prompt(Some("none")).unwrap().none);
        assert!(parse_prompt(Some("none login")).is_err());
        assert!(parse_prompt(Some("sometimes")).is_err());
        let both = parse_prompt(Some("login consent")).unwrap();
        assert!(both.login && both.consent);
    }

    #[test]
    fn query_parameters_are_appended() {
        let uri = with_query("https://app.example/cb?tenant=a", &[("code", "x y"), ("iss", "https://as")]);
        assert_eq!(uri, "https://app.example/cb?tenant=a&code=x+y&iss=https%3A%2F%2Fas");
    }

    #[test]
    fn pending_requests_and_sessions_are_bounded() {
        let mut map: HashMap<String, i64> = (0..3).map(|i| (i.to_string(), 100 + i)).collect();
        make_room(&mut map, 3, 0, |v| *v);
        assert_eq!(map.len(), 2);
        assert!(!map.contains_key("0"), "the entry closest to expiry goes first");
        map.insert("late".into(), 500);
        make_room(&mut map, 3, 150, |v| *v);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["late"]);
    }
}
