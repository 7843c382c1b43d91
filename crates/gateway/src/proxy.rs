//! The proxy itself: per request, verify the access token (the guard, DPoP included), read and
//! describe a JSON-RPC body, apply governance (content checks, approvals, budgets) when
//! configured, mint a Txn-Token, audit `gateway.forward`, and forward the request with the
//! Txn-Token instead of the inbound credentials; the response streams back unbuffered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{ListenerExt, TapIo};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mandate_audit::{AuditError, AuditLog};
use mandate_authz::Authz;
use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode, ScopeSet};
use mandate_guard::{
    BadResource, DEFAULT_VERIFIED_CAPACITY, Guard, GuardConfig, Presented, Principal, Rejection, StoreRevocation,
    TXN_TOKEN_HEADER, protected_resource_metadata,
};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use crate::budget::SessionKey;
use crate::governance::{self, Decision, Endpoints, Governance, Inbound};
use crate::headers::{strip_hop_by_hop, upstream_request_headers};
use crate::keys::KeyringKeys;
use crate::mcp::{self, Inspected, McpCall};
use crate::mint::{InProcessMinter, MintInput, MintOutcome, TxnMinter};

/// The largest JSON body the gateway reads to learn the MCP method (larger ones are refused).
pub const MAX_JSON_BODY: usize = 1 << 20;
const REQUEST_ID: &str = "x-request-id";
/// How long connecting to the upstream may take. There is no overall deadline: streams
/// (Server-Sent Events) may stay open as long as both ends want.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("upstream {0:?} must be an http:// URL without query or fragment (TLS upstreams are not supported yet)")]
    Upstream(String),
    #[error(transparent)]
    Resource(#[from] BadResource),
    #[error("workload {0:?} is not a spiffe:// ID")]
    Workload(String),
    #[error("Transaction Token Service: {0}")]
    Tts(String),
    #[error("issuer keys: {0}")]
    Keys(String),
    #[error("shared signals: {0}")]
    Signals(String),
}

/// What the gateway fronts and how it presents itself.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URL of the upstream; request paths are appended to its path.
    pub upstream: Url,
    /// Speak HTTP/2 with prior knowledge (h2c) to the upstream instead of HTTP/1.1.
    pub upstream_http2: bool,
    /// The gateway's own SPIFFE ID, the requesting workload (`req_wl`) of every Txn-Token.
    pub workload: String,
    /// Scopes every request's access token must grant.
    pub scopes: ScopeSet,
    /// Bound on the JSON bodies read for MCP awareness.
    pub max_json_body: usize,
}

impl GatewayConfig {
    pub fn new(upstream: &str, workload: &str, scopes: ScopeSet) -> Result<Self, GatewayError> {
        let bad = || GatewayError::Upstream(upstream.to_owned());
        let url = Url::parse(upstream).map_err(|_| bad())?;
        if url.scheme() != "http" || url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(bad());
        }
        if !workload.starts_with("spiffe://") {
            return Err(GatewayError::Workload(workload.to_owned()));
        }
        Ok(Self {
            upstream: url,
            upstream_http2: false,
            workload: workload.to_owned(),
            scopes,
            max_json_body: MAX_JSON_BODY,
        })
    }
}

/// The gateway's listener, for `axum::serve`: every accepted connection has Nagle's algorithm
/// off. The gateway relays a response as the upstream writes it (headers, then body frames or
/// SSE events), and with Nagle on each write after the first waits for the client's delayed
/// ACK, about 40 ms on Linux.
pub fn listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(no_delay)
}

fn no_delay(tcp: &mut TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY on an accepted connection");
    }
}

/// A gateway co-located with the server: its guard trusts the server's own keys and revocation
/// state, and its Txn-Tokens are minted in process.
pub struct CoLocated<'a> {
    pub authz: &'a Authz,
    /// The gateway's public URL: the resource its tokens must be issued for.
    pub resource: &'a str,
    pub config: GatewayConfig,
}

pub struct Gateway {
    config: GatewayConfig,
    guard: Arc<Guard>,
    minter: Arc<dyn TxnMinter>,
    /// The gateway's own audit log; `None` when remote (the TTS audits each mint instead).
    log: Option<AuditLog>,
    client: Client<HttpConnector, Body>,
    agent_prefix: String,
    /// Content checks, approvals, budgets; `None` forwards every authenticated request.
    governance: Option<Arc<Governance>>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        guard: Arc<Guard>,
        minter: Arc<dyn TxnMinter>,
        log: Option<AuditLog>,
        trust_domain: &str,
    ) -> Self {
        let mut connector = HttpConnector::new();
        // Small request/response writes (JSON-RPC, SSE events) must not wait for Nagle.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).http2_only(config.upstream_http2).build(connector);
        Self {
            config,
            guard,
            minter,
            log,
            client,
            agent_prefix: format!("spiffe://{trust_domain}/agent/"),
            governance: None,
        }
    }

    /// The gateway in front of `config.upstream`, trusting and minting with `authz`.
    pub fn co_located(setup: CoLocated<'_>) -> Result<Self, GatewayError> {
        let authz = setup.authz;
        let mut guard_config = GuardConfig::new(setup.resource, vec![authz.config.issuer.clone()])?;
        guard_config.scopes_supported = setup.config.scopes.to_vec();
        guard_config.leeway_secs = authz.config.leeway_secs;
        let trust_domain = authz.config.trust_domain.to_string();
        let revocation = StoreRevocation::new(Arc::clone(&authz.store), &trust_domain);
        let guard = Guard::new(guard_config, Arc::new(KeyringKeys::new(authz.clone())), Arc::clone(&authz.clock))
            .with_revocation(Arc::new(revocation))
            .with_verified_cache(DEFAULT_VERIFIED_CAPACITY);
        // This guard checks exactly what the TTS would (same issuer, keys and revocation state),
        // so the minter takes its verdict instead of verifying the token a second time.
        let minter = Arc::new(InProcessMinter::beside_own_guard(authz.clone()));
        Ok(Self::new(setup.config, Arc::new(guard), minter, Some(authz.log.clone()), &trust_domain))
    }

    /// The same gateway with another Txn-Token source (tests; a remote TTS).
    pub fn with_minter(mut self, minter: Arc<dyn TxnMinter>) -> Self {
        self.minter = minter;
        self
    }

    /// The same gateway governed by `governance`; approvals are asked for at the first trusted
    /// issuer's CIBA endpoint, for this gateway's resource.
    pub fn with_governance(mut self, governance: Governance) -> Self {
        let config = self.guard.config();
        let issuer = config.issuers.first().map(|i| i.trim_end_matches('/')).unwrap_or_default();
        let mut scope = vec!["openid".to_owned()];
        scope.extend(self.config.scopes.to_vec());
        let endpoints = Endpoints {
            resource: config.resource.clone(),
            backchannel_authentication_endpoint: format!("{issuer}/oauth2/bc-authorize"),
            scope: scope.join(" "),
        };
        self.governance = Some(Arc::new(governance.with_endpoints(endpoints)));
        self
    }

    /// Every path is proxied, except the gateway's own Protected Resource Metadata.
    pub fn router(self: Arc<Self>) -> Router {
        let metadata_path = Url::parse(&self.guard.config().resource_metadata_url).map(|u| u.path().to_owned());
        let mut router = Router::new();
        if let Ok(path) = metadata_path {
            router = router.route(&path, get(metadata));
        }
        router.fallback(forward).with_state(self)
    }

    async fn handle(&self, request: Request, correlation: &str) -> Response {
        let (mut parts, body) = request.into_parts();
        let (principal, token) = match self.authenticate(&parts).await {
            Ok(found) => found,
            Err(rejection) => {
                let event = self
                    .event(correlation, rejection.holder.as_deref(), &parts)
                    .refused(rejection.error_code().unwrap_or("invalid_token"), &rejection.description);
                return self.refuse(event, rejection.into_response()).await;
            }
        };
        let (mut body, read, inspected) = match self.read_body(&parts, body).await {
            Ok(read) => read,
            Err(refusal) => {
                let event = self.event(correlation, Some(&principal), &parts).refused(refusal.code, refusal.detail);
                return self.refuse(event, refusal.into_response()).await;
            }
        };
        let mut governed = None;
        if let Some(governance) = &self.governance {
            match self.govern(governance, &principal, &parts, &read, &inspected) {
                Decision::Admit(admitted) => {
                    if let Some(redacted) = admitted.body {
                        parts.headers.remove(header::CONTENT_LENGTH);
                        body = Body::from(redacted);
                    }
                    governed = admitted.detail;
                }
                Decision::Refuse(refusal) => {
                    let mut event = self.event(correlation, Some(&principal), &parts);
                    let detail = format!("{} {}", detail(&parts, &inspected.calls), refusal.audit_detail);
                    event = event.refused(refusal.code, &detail);
                    event.action = "gateway.deny".into();
                    return self.refuse(event, refusal.into_response()).await;
                }
            }
        }
        let input = MintInput {
            subject_token: &token,
            subject_claims: &principal.claims,
            request_context: request_context(&parts),
            request_details: request_details(&parts, &inspected.calls),
            workload: &self.config.workload,
        };
        let MintOutcome { result, audit: mint_event } = self.minter.mint(&input, correlation).await;
        let minted = match result {
            Ok(minted) => minted,
            Err(error) => {
                let event =
                    self.event(correlation, Some(&principal), &parts).refused(error.code.as_str(), &error.description);
                if let Err(e) = self.record(mint_event, event).await {
                    tracing::error!(error = %e, "audit failure");
                }
                return mint_failure(&error);
            }
        };
        let mut event = self.event(correlation, Some(&principal), &parts);
        event.detail = Some(match governed {
            Some(noted) => format!("{} {noted}", detail(&parts, &inspected.calls)),
            None => detail(&parts, &inspected.calls),
        });
        event.txn = Some(minted.txn.clone());
        // Durable audit first: a call the log cannot record is not forwarded.
        if let Err(e) = self.record(mint_event, event.clone()).await {
            tracing::error!(error = %e, "audit failure");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the audit log is unavailable",
            );
        }
        match self.send(parts, body, &minted.token).await {
            Ok(response) => response,
            Err(why) => {
                let mut failed = event.refused("upstream_unavailable", &why);
                failed.action = "gateway.upstream".into();
                self.refuse(failed, json_error(StatusCode::BAD_GATEWAY, "bad_gateway", "the upstream is unavailable"))
                    .await
            }
        }
    }

    /// The guard's verdict on the request's token, and the token itself (the Txn-Token's subject).
    async fn authenticate(&self, parts: &Parts) -> Result<(Principal, String), Rejection> {
        let headers = &parts.headers;
        self.guard.refuse_ambiguous(headers, &parts.uri)?;
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let presented = Presented {
            authorization,
            // A value that is not visible ASCII still counts, and fails, as a proof.
            dpop: headers.get_all("dpop").iter().map(|v| v.to_str().unwrap_or_default()).collect(),
            method: parts.method.as_str(),
            path: parts.uri.path(),
        };
        let principal = self.guard.check(&presented, &self.config.scopes).await?;
        // The guard accepted the header, so it is `<scheme> <token>`.
        let token = authorization.and_then(|a| a.split_once(' ')).map(|(_, t)| t.trim().to_owned()).unwrap_or_default();
        Ok((principal, token))
    }

    /// A JSON POST body is read (bounded) to learn its MCP calls; with content checks, JSON,
    /// text and form bodies of any method are read too. Any other body streams through.
    async fn read_body(&self, parts: &Parts, body: Body) -> Result<(Body, ReadBody, Inspected), BodyRefusal> {
        let scanning = self.governance.as_ref().is_some_and(|g| g.scans_content());
        let kind = match scanning {
            false => ReadBody::Streamed,
            // The body itself says whether it is empty (HTTP/2 bodies need no Content-Length).
            true if body.is_end_stream() => ReadBody::Empty,
            true => body_kind(parts),
        };
        let kind = match kind {
            ReadBody::Streamed | ReadBody::Unscannable if is_json_post(parts) => ReadBody::Json(Bytes::new()),
            other => other,
        };
        if matches!(kind, ReadBody::Streamed | ReadBody::Unscannable | ReadBody::Empty) {
            return Ok((body, kind, Inspected::default()));
        }
        let bytes: Bytes = match Limited::new(body, self.config.max_json_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(BodyRefusal::too_large()),
            Err(_) => return Err(BodyRefusal::unreadable()),
        };
        // Parsed once: the MCP calls of a JSON POST, and every JSON body's batch length.
        let mut inspected = match kind {
            ReadBody::Json(_) => mcp::inspect(&bytes),
            _ => Inspected::default(),
        };
        if !is_json_post(parts) {
            inspected.calls.clear();
        }
        let read = match kind {
            ReadBody::Json(_) => ReadBody::Json(bytes.clone()),
            ReadBody::Text(_) => ReadBody::Text(bytes.clone()),
            ReadBody::Form(_) => ReadBody::Form(bytes.clone()),
            other => other,
        };
        Ok((Body::from(bytes), read, inspected))
    }

    /// Governance's decision on an authenticated request.
    fn govern(
        &self,
        governance: &Governance,
        principal: &Principal,
        parts: &Parts,
        read: &ReadBody,
        inspected: &Inspected,
    ) -> Decision {
        let mcp_session = match governance::mcp_session_id(&parts.headers) {
            Ok(id) => id,
            Err(refusal) => return Decision::Refuse(refusal),
        };
        // Sessions are per agent (or client, for tokens without one) and subject; see
        // docs/governance.md for why the MCP session id is only an extra, narrower counter.
        let agent = self.agent_of(principal);
        let session = SessionKey {
            agent: agent.unwrap_or(principal.client_id.as_str()).to_owned(),
            subject: principal.subject.clone(),
        };
        let body = match read {
            ReadBody::Json(bytes) => governance::Body::Json(bytes),
            ReadBody::Text(bytes) => governance::Body::Text(bytes),
            ReadBody::Form(bytes) => governance::Body::Form(bytes),
            ReadBody::Unscannable => governance::Body::Unscannable,
            ReadBody::Empty | ReadBody::Streamed => governance::Body::Empty,
        };
        let (http_method, path) = (parts.method.as_str(), parts.uri.path());
        let (calls, messages) = (inspected.calls.as_slice(), inspected.messages);
        let inbound = Inbound { principal, agent, http_method, path, session, mcp_session, body, calls, messages };
        governance.evaluate(&inbound)
    }

    /// Forwards to the upstream with the Txn-Token in place of the inbound credentials.
    async fn send(&self, mut parts: Parts, body: Body, txn_token: &str) -> Result<Response, String> {
        parts.uri = self.upstream_uri(&parts.uri)?;
        upstream_request_headers(&mut parts.headers);
        let value = HeaderValue::from_str(txn_token).map_err(|_| "the Txn-Token is not a header value".to_owned())?;
        parts.headers.insert(TXN_TOKEN_HEADER, value);
        // The client chooses the upstream's protocol version.
        parts.version = axum::http::Version::default();
        let upstream = self.client.request(Request::from_parts(parts, body)).await.map_err(|e| e.to_string())?;
        let (mut parts, incoming) = upstream.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(incoming)))
    }

    fn upstream_uri(&self, inbound: &Uri) -> Result<Uri, String> {
        let base = &self.config.upstream;
        let origin = &base[..url::Position::BeforePath];
        let prefix = base.path().trim_end_matches('/');
        let path_and_query = inbound.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{origin}{prefix}{path_and_query}").parse().map_err(|_| "the upstream URL is invalid".to_owned())
    }

    /// `gateway.forward` for this request: who (agent, owner, subject, client), for what resource.
    fn event(&self, correlation: &str, principal: Option<&Principal>, parts: &Parts) -> AuditEvent {
        let mut event = AuditEvent::allow("gateway.forward", correlation);
        event.resource = Some(self.guard.config().resource.clone());
        event.detail = Some(format!("method={} path={}", parts.method, parts.uri.path()));
        if let Some(p) = principal {
            event.agent = self.agent_of(p).map(str::to_owned);
            event.owner = p.owner.clone();
            event.subject = Some(p.subject.clone());
            event.client = Some(p.client_id.clone());
            event.scope = Some(p.scopes.to_string());
            event.jti = Some(p.jti.clone());
        }
        event
    }

    /// The agent (SPIFFE ID) answering for the call: the subject itself, or the acting agent.
    fn agent_of<'p>(&self, p: &'p Principal) -> Option<&'p str> {
        let is_agent = |id: &&str| id.starts_with(&self.agent_prefix);
        let acting = p.actor.as_ref().and_then(|a| a.get("sub")).and_then(Value::as_str);
        Some(p.subject.as_str()).filter(is_agent).or_else(|| acting.filter(is_agent))
    }

    /// Records the mint's event, when the minter left it to the gateway, and the request's own.
    /// Both are submitted before either is awaited, so one group commit (one fsync) usually
    /// makes both durable instead of two in a row; the mint's is submitted first.
    /// Without a local log (remote mode) there is nothing to record.
    async fn record(&self, mint_event: Option<AuditEvent>, event: AuditEvent) -> Result<(), AuditError> {
        let Some(log) = &self.log else { return Ok(()) };
        let Some(mint_event) = mint_event else {
            return log.record(event).await.map(drop);
        };
        let (minted, forwarded) = tokio::join!(log.record(mint_event), log.record(event));
        minted.and(forwarded).map(drop)
    }

    /// Records a refusal, then answers it (an unrecordable refusal is still refused).
    async fn refuse(&self, event: AuditEvent, response: Response) -> Response {
        if let Err(e) = self.record(None, event).await {
            tracing::error!(error = %e, "audit failure");
        }
        response
    }
}

/// What the gateway read of a request body.
enum ReadBody {
    /// Not read: no content checks, and not a JSON POST.
    Streamed,
    /// No body at all.
    Empty,
    Json(Bytes),
    Text(Bytes),
    Form(Bytes),
    /// A body content checks cannot read (another type, or a `Content-Encoding`).
    Unscannable,
}

/// How content checks treat a non-empty request body, from its headers (the bytes are read later).
fn body_kind(parts: &Parts) -> ReadBody {
    let headers = &parts.headers;
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.to_str().is_ok_and(|e| e.trim().eq_ignore_ascii_case("identity")));
    if encoded {
        return ReadBody::Unscannable;
    }
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence == "application/json" || essence.ends_with("+json") {
        ReadBody::Json(Bytes::new())
    } else if essence.starts_with("text/") {
        ReadBody::Text(Bytes::new())
    } else if essence == "application/x-www-form-urlencoded" {
        ReadBody::Form(Bytes::new())
    } else {
        ReadBody::Unscannable
    }
}

/// A body the gateway will not forward.
struct BodyRefusal {
    status: StatusCode,
    code: &'static str,
    detail: &'static str,
}

impl BodyRefusal {
    fn too_large() -> Self {
        Self { status: StatusCode::PAYLOAD_TOO_LARGE, code: "invalid_request", detail: "the JSON body is too large" }
    }

    fn unreadable() -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_request", detail: "the request body could not be read" }
    }
}

impl IntoResponse for BodyRefusal {
    fn into_response(self) -> Response {
        json_error(self.status, self.code, self.detail)
    }
}

async fn forward(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let correlation = uuid::Uuid::now_v7().to_string();
    let mut response = gateway.handle(request, &correlation).await;
    if let Ok(value) = HeaderValue::from_str(&correlation) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn metadata(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(protected_resource_metadata(gateway.guard.config())).into_response()
}

fn is_json_post(parts: &Parts) -> bool {
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    parts.method == Method::POST && json
}

/// `rctx`: where the request came from and what it was.
fn request_context(parts: &Parts) -> Value {
    let mut context = json!({"method": parts.method.as_str(), "path": parts.uri.path()});
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        context["req_ip"] = json!(peer.ip().to_string());
    }
    context
}

/// `tctx`: the method and path, plus the MCP method and tool when the body is JSON-RPC.
fn request_details(parts: &Parts, calls: &[McpCall]) -> Value {
    let mut details = Map::new();
    details.insert("method".into(), json!(parts.method.as_str()));
    details.insert("path".into(), json!(parts.uri.path()));
    mcp::details(calls, &mut details);
    Value::Object(details)
}

/// The audit detail of a forwarded call: its request line and MCP calls.
fn detail(parts: &Parts, calls: &[McpCall]) -> String {
    let mut detail = format!("method={} path={}", parts.method, parts.uri.path());
    for call in calls {
        detail.push_str(&format!(" mcp_method={}", call.method));
        if let Some(tool) = &call.tool {
            detail.push_str(&format!(" tool={tool}"));
        }
    }
    detail
}

/// A refused mint is the caller's problem (403) unless the TTS itself failed (502).
fn mint_failure(error: &OAuthError) -> Response {
    let status = match error.code {
        OAuthErrorCode::ServerError | OAuthErrorCode::TemporarilyUnavailable => StatusCode::BAD_GATEWAY,
        _ => StatusCode::FORBIDDEN,
    };
    json_error(status, error.code.as_str(), &error.description)
}

fn json_error(status: StatusCode, code: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": code, "error_description": description}))).into_response()
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let bound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = bound.local_addr().expect("address");
        let mut gateway_listener = listener(bound);
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = gateway_listener.accept().await;
        assert!(accepted.nodelay().expect("TCP_NODELAY"), "an accepted connection kept Nagle's algorithm on");
        // The plain listener would not have turned it off: the test sees the helper's work.
        assert!(!client.nodelay().expect("TCP_NODELAY"));
    }
}
