//! The credential-injecting forward proxy (`mandate broker run`): plain HTTP absolute-form
//! requests and CONNECT tunnels, TLS-intercepted with the local CA for hosts that have a rule,
//! where placeholders in header values are swapped for the chosen connection's credential and
//! every use or refusal is audited. Hosts without a rule are tunnelled untouched or refused.

pub mod ca;
pub mod inject;
pub mod rules;
pub mod tunnel;
pub mod upstream;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mandate_core::{AuditEvent, Clock};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::credentials::CredentialProvider;
use ca::LocalCa;
use inject::{CONNECTION_HEADER, has_unknown_placeholder, needs_credential, strip_hop_by_hop, substitute};
use rules::{HostRules, RateLimiter, Rule, Rules, Unmatched, is_ambiguous_path};
use tunnel::{IdlePool, TunnelUpstream};
use upstream::{UpstreamClient, UpstreamError, UpstreamTrust};

/// Response bodies: the upstream's, streamed, or the broker's own small JSON answers.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Longest path kept in an audit event's detail.
const MAX_AUDITED_PATH: usize = 256;
const MAX_CONNECTION_HEADER_BYTES: usize = 128;

/// Where the broker's audit events go: the Mandate audit log in `mandate broker run`.
/// An event that cannot be recorded stops the credential use it describes.
#[async_trait]
pub trait AuditSink: Send + Sync {
    async fn record(&self, event: AuditEvent) -> Result<(), String>;
}

/// The Mandate audit log as the broker's sink: each event is durable before the request goes on.
pub struct AuditLogSink(pub mandate_audit::AuditLog);

#[async_trait]
impl AuditSink for AuditLogSink {
    async fn record(&self, event: AuditEvent) -> Result<(), String> {
        self.0.record(event).await.map(drop).map_err(|e| e.to_string())
    }
}

/// Resource bounds for the proxy's listener and its tunnels.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// Agent connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list) accepted from the agent.
    pub max_header_bytes: usize,
    /// Time to read a request head from the agent.
    pub header_read_timeout: Duration,
    /// TCP connect to an upstream (intercepted and tunnelled).
    pub connect_timeout: Duration,
    /// TLS handshake with the agent inside a CONNECT tunnel.
    pub handshake_timeout: Duration,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a broker is built from.
pub struct BrokerParts {
    pub rules: Rules,
    pub ca: LocalCa,
    pub credentials: Arc<dyn CredentialProvider>,
    pub audit: Arc<dyn AuditSink>,
    pub clock: Arc<dyn Clock>,
    /// The agent's SPIFFE ID, in every audit event.
    pub agent: Option<String>,
    /// The agent's owner, in every audit event.
    pub owner: Option<String>,
    pub upstream: UpstreamTrust,
    pub limits: BrokerLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("accepting connections: {0}")]
    Accept(std::io::Error),
}

/// The running proxy; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    rules: Rules,
    ca: LocalCa,
    credentials: Arc<dyn CredentialProvider>,
    audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
    agent: Option<String>,
    owner: Option<String>,
    limits: BrokerLimits,
    /// Plain-HTTP requests and HTTP/2 agents: pooled, h2 or http/1.1 by the host's ALPN.
    client: UpstreamClient,
    /// HTTP/1.1 tunnels' own upstream connections: http/1.1 only.
    tunnel_tls: Arc<ClientConfig>,
    tunnel_pool: Arc<IdlePool>,
    limiter: RateLimiter,
    ids: EventIds,
}

impl Broker {
    pub fn new(parts: BrokerParts) -> Result<Self, BrokerError> {
        let tls = upstream::tls_config(parts.upstream)?;
        let mut tunnel_tls = tls.clone();
        tunnel_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = upstream::client(tls, parts.limits.connect_timeout);
        Ok(Self {
            inner: Arc::new(Inner {
                rules: parts.rules,
                ca: parts.ca,
                credentials: parts.credentials,
                audit: parts.audit,
                clock: parts.clock,
                agent: parts.agent,
                owner: parts.owner,
                limits: parts.limits,
                client,
                tunnel_tls: Arc::new(tunnel_tls),
                tunnel_pool: Arc::default(),
                limiter: RateLimiter::new(),
                ids: EventIds::new(),
            }),
        })
    }

    /// Serves agents on `listener` until `shutdown` completes. Connections already accepted
    /// are left to finish on their own tasks.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), BrokerError> {
        let permits = Arc::new(Semaphore::new(self.inner.limits.max_connections.max(1)));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => return Ok(()),
                permit = Arc::clone(&permits).acquire_owned() => permit.map_err(|e| {
                    BrokerError::Accept(std::io::Error::other(e))
                })?,
            };
            let stream = tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                inner.serve_agent(stream).await;
                drop(permit);
            });
        }
    }
}

/// Whether the upstream leg is TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// The upstream a request goes to: the CONNECT target, or the absolute-form URI's origin, with
/// the rules that name its host (looked up once per tunnel).
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    /// Lower-case, IPv6 without brackets.
    host: String,
    port: u16,
    /// `https://host:port`, the audit events' resource.
    origin: String,
    rules: HostRules,
}

impl Target {
    fn new(scheme: Scheme, host: &str, port: u16, rules: &Rules) -> Self {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let scheme_text = match scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let origin = if host.contains(':') {
            format!("{scheme_text}://[{host}]:{port}")
        } else {
            format!("{scheme_text}://{host}:{port}")
        };
        let rules = rules.for_host(&host);
        Self { scheme, host, port, origin, rules }
    }
}

/// What one request's audit event says: where, what, with which connection.
struct Attempt<'a> {
    target: &'a Target,
    method: Method,
    /// Without the query, cut at [`MAX_AUDITED_PATH`] bytes.
    path: Cow<'a, str>,
    connection: Option<Cow<'a, str>>,
}

impl Attempt<'_> {
    fn detail(&self) -> String {
        let connection = self.connection.as_deref().unwrap_or("-");
        let method = self.method.as_str();
        let mut detail = String::with_capacity(30 + connection.len() + method.len() + self.path.len());
        for part in ["connection=", connection, " method=", method, " path=", &self.path] {
            detail.push_str(part);
        }
        detail
    }
}

/// Audit event ids: UUIDv7 at the injected clock's millisecond, the other 74 bits a counter
/// started at a random value (RFC 9562 §6.2, method 1), so ids are unique within the broker
/// and not guessable across brokers without a random-number call per request.
struct EventIds {
    counter: AtomicU64,
    /// Random high bits of the 74, fixed for this broker.
    high: u16,
}

impl EventIds {
    fn new() -> Self {
        let mut seed = [0u8; 10];
        if aws_lc_rs::rand::fill(&mut seed).is_err() {
            // uuid's own random bits (a system RNG call) instead.
            seed.copy_from_slice(&uuid::Uuid::now_v7().as_bytes()[6..]);
        }
        let [a, b, rest @ ..] = seed;
        Self { counter: AtomicU64::new(u64::from_le_bytes(rest)), high: u16::from_le_bytes([a, b]) }
    }

    /// The id for an event at `ms` (Unix milliseconds).
    fn next(&self, ms: i64) -> String {
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 10];
        random[..2].copy_from_slice(&self.high.to_be_bytes());
        random[2..].copy_from_slice(&count.to_be_bytes());
        let ms = u64::try_from(ms).unwrap_or(0);
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Builder::from_unix_timestamp_millis(ms, &random)
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut text)
            .to_owned()
    }
}

/// A refused request: its status, error code (also the audit reason) and a description.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    description: String,
}

fn refusal(status: StatusCode, code: &'static str, description: impl Into<String>) -> Refusal {
    Refusal { status, code, description: description.into() }
}

impl Inner {
    async fn serve_agent(self: Arc<Self>, stream: TcpStream) {
        // Small request/response exchanges: don't wait for Nagle.
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&self);
        let service = service_fn(move |req| {
            let inner = Arc::clone(&inner);
            async move { Ok::<_, Infallible>(inner.proxy_request(req).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
        if let Err(error) = served {
            tracing::debug!(%error, "agent connection ended");
        }
    }

    /// One request on the proxy listener: CONNECT, or an absolute-form `http://` request.
    async fn proxy_request(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req).await;
        }
        let uri = req.uri();
        match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => {
                let target = Target::new(Scheme::Http, host, uri.port_u16().unwrap_or(80), &self.rules);
                self.forward(req, &target, Route::Pooled).await
            }
            _ => json_error(&refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this is a forward proxy: send CONNECT host:port, or an absolute http:// URI",
            )),
        }
    }

    async fn connect(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(authority) = req.uri().authority() else {
            return json_error(&refusal(StatusCode::BAD_REQUEST, "invalid_request", "CONNECT needs host:port"));
        };
        let target = Target::new(Scheme::Https, authority.host(), authority.port_u16().unwrap_or(443), &self.rules);
        let attempt = Attempt { target: &target, method: Method::CONNECT, path: Cow::Borrowed(""), connection: None };
        if !target.rules.is_empty() {
            // Mint (or fetch) the leaf before answering, so a host that cannot have one is
            // refused instead of failing the agent's handshake.
            let tls = match self.ca.server_config(&target.host) {
                Ok(tls) => tls,
                Err(e) => {
                    return self
                        .refuse(&attempt, refusal(StatusCode::BAD_REQUEST, "invalid_host", e.to_string()))
                        .await;
                }
            };
            drop(attempt);
            tokio::spawn(Arc::clone(&self).intercept(req, target, tls));
            return Response::new(empty());
        }
        match self.rules.unmatched {
            Unmatched::Refuse => {
                let no_rule = refusal(StatusCode::FORBIDDEN, "no_rule", format!("no broker rule for {}", target.host));
                self.refuse(&attempt, no_rule).await
            }
            Unmatched::Pass => self.tunnel(req, attempt).await,
        }
    }

    /// Relays the tunnel's bytes to the host unchanged: no rule, nothing to inject.
    async fn tunnel(&self, req: Request<Incoming>, attempt: Attempt<'_>) -> Response<ProxyBody> {
        let target = attempt.target;
        let connect = TcpStream::connect((target.host.as_str(), target.port));
        let mut upstream = match tokio::time::timeout(self.limits.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let failed = refusal(StatusCode::BAD_GATEWAY, "upstream_unavailable", e.to_string());
                return self.refuse(&attempt, failed).await;
            }
            Err(_) => {
                let failed = refusal(StatusCode::GATEWAY_TIMEOUT, "upstream_unavailable", "connect timed out");
                return self.refuse(&attempt, failed).await;
            }
        };
        if let Err(e) = self.audit.record(self.event("broker.tunnel", &attempt)).await {
            tracing::error!(error = %e, "audit failure");
            return json_error(&audit_unavailable());
        }
        let _ = upstream.set_nodelay(true);
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut agent = TokioIo::new(upgraded);
                    if let Err(error) = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await {
                        tracing::debug!(%error, "tunnel ended");
                    }
                }
                Err(error) => tracing::debug!(%error, "CONNECT upgrade failed"),
            }
        });
        Response::new(empty())
    }

    /// Terminates the agent's TLS with a leaf for the CONNECT host and serves the requests
    /// inside, each forwarded to that host: HTTP/2 (by ALPN) through the pooled client,
    /// HTTP/1.1 over the tunnel's own upstream connection.
    async fn intercept(self: Arc<Self>, req: Request<Incoming>, target: Target, tls: Arc<ServerConfig>) {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "CONNECT upgrade failed"),
        };
        let accept = TlsAcceptor::from(tls).accept(TokioIo::new(upgraded));
        let stream = match tokio::time::timeout(self.limits.handshake_timeout, accept).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return tracing::debug!(%error, host = %target.host, "agent TLS handshake failed"),
            Err(_) => return tracing::debug!(host = %target.host, "agent TLS handshake timed out"),
        };
        let target = Arc::new(target);
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return self.serve_http1_tunnel(stream, target).await;
        }
        let inner = Arc::clone(&self);
        let service = service_fn(move |req| {
            let inner = Arc::clone(&inner);
            let target = Arc::clone(&target);
            async move { Ok::<_, Infallible>(inner.forward(req, &target, Route::Pooled).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(%error, "intercepted connection ended");
        }
    }

    /// An HTTP/1.1 agent inside a tunnel: its requests come one at a time, so one keep-alive
    /// upstream connection, driven on this task, carries them all.
    async fn serve_http1_tunnel(
        self: Arc<Self>,
        stream: tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>,
        target: Arc<Target>,
    ) {
        let tls = Arc::clone(&self.tunnel_tls);
        let pool = Arc::clone(&self.tunnel_pool);
        let Some((upstream, drivers)) =
            TunnelUpstream::new(&target.host, target.port, tls, self.limits.connect_timeout, pool)
        else {
            return tracing::debug!(host = %target.host, "the CONNECT target is not a valid Host header");
        };
        let upstream = Arc::new(upstream);
        let inner = Arc::clone(&self);
        let shared = Arc::clone(&upstream);
        let service = service_fn(move |req| {
            let inner = Arc::clone(&inner);
            let target = Arc::clone(&target);
            let upstream = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(inner.forward(req, &target, Route::Tunnel(&upstream)).await) }
        });
        let agent = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_header_size(self.limits.max_header_bytes)
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(stream), service);
        let (served, open) = tunnel::drive(agent, drivers).await;
        if let Err(error) = served {
            tracing::debug!(%error, "intercepted connection ended");
        }
        upstream.release(open);
    }

    /// Applies the rules to one request and forwards it, with the credential in place of the
    /// placeholder when a rule calls for it.
    async fn forward(&self, req: Request<Incoming>, target: &Target, route: Route<'_>) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        // A cheap copy (shared bytes), so the path can be read while `parts` is rewritten.
        let uri = parts.uri.clone();
        let path = uri.path();
        let mut attempt =
            Attempt { target, method: parts.method.clone(), path: truncate(path, MAX_AUDITED_PATH), connection: None };
        let requested = match requested_connection(&parts.headers) {
            Ok(requested) => requested,
            Err(refused) => return self.refuse(&attempt, refused).await,
        };
        strip_hop_by_hop(&mut parts.headers);
        if is_ambiguous_path(path) {
            let ambiguous = "paths with dot segments or encoded slashes are refused";
            return self.refuse(&attempt, refusal(StatusCode::BAD_REQUEST, "ambiguous_path", ambiguous)).await;
        }
        let Some(rule) = self.rules.find_for(&target.rules, path) else {
            attempt.connection = requested.map(Cow::Owned);
            return match self.check_unmatched(&parts.headers, attempt.connection.as_deref()) {
                Err(refused) => self.refuse(&attempt, refused).await,
                Ok(()) => self.audited_send(parts, body, &attempt, "broker.forward", route).await,
            };
        };
        attempt.connection = Some(requested.map_or(Cow::Borrowed(rule.connection.as_str()), Cow::Owned));
        let connection = attempt.connection.as_deref().unwrap_or(rule.connection.as_str());
        if let Err(refused) = self.check_rule(rule, &parts, &attempt, connection) {
            return self.refuse(&attempt, refused).await;
        }
        if !needs_credential(&parts.headers, rule) {
            return self.audited_send(parts, body, &attempt, "broker.forward", route).await;
        }
        let credential = match self.credentials.credential(connection).await {
            Ok(credential) => credential,
            Err(e) => {
                return self
                    .refuse(&attempt, refusal(StatusCode::BAD_GATEWAY, "credential_unavailable", e.to_string()))
                    .await;
            }
        };
        let substituted = substitute(&mut parts.headers, rule, connection, &credential);
        drop(credential);
        if let Err(e) = substituted {
            return self.refuse(&attempt, refusal(StatusCode::BAD_GATEWAY, "credential_unusable", e.to_string())).await;
        }
        self.audited_send(parts, body, &attempt, "broker.inject", route).await
    }

    /// A request no rule covers: refused, or forwarded untouched if it carries no placeholder
    /// and names no connection (there is nothing to resolve them with).
    fn check_unmatched(&self, headers: &HeaderMap, requested: Option<&str>) -> Result<(), Refusal> {
        if self.rules.unmatched == Unmatched::Refuse {
            return Err(refusal(StatusCode::FORBIDDEN, "no_rule", "no broker rule for this host and path"));
        }
        if requested.is_some() {
            return Err(refusal(StatusCode::FORBIDDEN, "connection_not_allowed", "no rule here allows a connection"));
        }
        if has_unknown_placeholder(headers, None) {
            return Err(unknown_placeholder());
        }
        Ok(())
    }

    /// The rule's policy, in order: method, path, connection, scheme, placeholders, rate.
    fn check_rule(
        &self,
        rule: &Rule,
        parts: &http::request::Parts,
        attempt: &Attempt<'_>,
        connection: &str,
    ) -> Result<(), Refusal> {
        if rule.denies_method(parts.method.as_str()) {
            return Err(refusal(StatusCode::FORBIDDEN, "denied_by_rule", format!("{} is denied here", parts.method)));
        }
        if rule.denies_path(parts.uri.path()) {
            return Err(refusal(StatusCode::FORBIDDEN, "denied_by_rule", "this path is denied"));
        }
        if !rule.allows_connection(connection) {
            let message = format!("connection {connection:?} is not allowed for this host");
            return Err(refusal(StatusCode::FORBIDDEN, "connection_not_allowed", message));
        }
        if attempt.target.scheme == Scheme::Http && !rule.allow_http {
            let message = "this rule's credential is only sent over https (set allow_http to permit http)";
            return Err(refusal(StatusCode::FORBIDDEN, "insecure_upstream", message));
        }
        if has_unknown_placeholder(&parts.headers, Some(&rule.placeholder)) {
            return Err(unknown_placeholder());
        }
        if !self.limiter.try_acquire(rule, connection, self.clock.as_ref()) {
            let message = format!("connection {connection:?} is over its rate limit");
            return Err(refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message));
        }
        Ok(())
    }

    /// Records the allow event, then forwards; a request whose event cannot be recorded is
    /// not forwarded.
    async fn audited_send(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        attempt: &Attempt<'_>,
        action: &str,
        route: Route<'_>,
    ) -> Response<ProxyBody> {
        if let Err(e) = self.audit.record(self.event(action, attempt)).await {
            tracing::error!(error = %e, "audit failure");
            return json_error(&audit_unavailable());
        }
        match route {
            Route::Pooled => self.send(parts, body, attempt.target).await,
            Route::Tunnel(upstream) => {
                // Origin-form, as the agent sent it; the tunnel sets Host to the CONNECT target
                // (replacing the agent's).
                parts.version = Version::HTTP_11;
                match upstream.send(Request::from_parts(parts, body)).await {
                    Ok(response) => agent_response(response),
                    Err(error) => {
                        tracing::warn!(%error, upstream = %attempt.target.origin, "upstream request failed");
                        json_error(&upstream_failed())
                    }
                }
            }
        }
    }

    async fn send(&self, mut parts: http::request::Parts, body: Incoming, target: &Target) -> Response<ProxyBody> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let Ok(uri) = format!("{}{path_and_query}", target.origin).parse::<Uri>() else {
            return json_error(&refusal(StatusCode::BAD_REQUEST, "invalid_request", "the request URI is invalid"));
        };
        parts.uri = uri;
        // The upstream's protocol is negotiated by ALPN; the client sets Host (HTTP/1.1) or
        // :authority (HTTP/2) from the URI, which is the CONNECT target, not the agent's Host.
        parts.version = Version::HTTP_11;
        parts.headers.remove(HOST);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => agent_response(response),
            Err(error) => {
                tracing::warn!(%error, upstream = %target.origin, "upstream request failed");
                json_error(&upstream_failed())
            }
        }
    }

    fn event(&self, action: &str, attempt: &Attempt<'_>) -> AuditEvent {
        let mut event = AuditEvent::allow(action, self.ids.next(self.clock.now_ms()));
        event.agent.clone_from(&self.agent);
        event.owner.clone_from(&self.owner);
        event.resource = Some(attempt.target.origin.clone());
        event.detail = Some(attempt.detail());
        event
    }

    /// Records the refusal as `broker.deny`, then answers it (an unrecordable refusal is still
    /// refused).
    async fn refuse(&self, attempt: &Attempt<'_>, refused: Refusal) -> Response<ProxyBody> {
        let event = self.event("broker.deny", attempt).refused(refused.code, &attempt.detail());
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "audit failure");
        }
        json_error(&refused)
    }
}

/// Which upstream connection a request takes.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// The shared pool (plain HTTP, HTTP/2 agents).
    Pooled,
    /// The HTTP/1.1 tunnel's own connection.
    Tunnel(&'a TunnelUpstream),
}

/// The upstream's response as the agent gets it: hop-by-hop headers dropped, body streamed.
fn agent_response(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body.boxed())
}

fn upstream_failed() -> Refusal {
    refusal(StatusCode::BAD_GATEWAY, "upstream_unavailable", "the upstream request failed")
}

/// The `Mandate-Connection` header, if any: one short visible-ASCII value.
fn requested_connection(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(CONNECTION_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let bad = || {
        refusal(StatusCode::BAD_REQUEST, "invalid_request", "send one Mandate-Connection header naming a connection")
    };
    if values.next().is_some() || value.len() > MAX_CONNECTION_HEADER_BYTES {
        return Err(bad());
    }
    let name = value.to_str().map_err(|_| bad())?.trim();
    if name.is_empty() {
        return Err(bad());
    }
    Ok(Some(name.to_owned()))
}

fn unknown_placeholder() -> Refusal {
    refusal(
        StatusCode::FORBIDDEN,
        "unknown_placeholder",
        "a header carries a placeholder no rule for this host and path resolves; nothing was forwarded",
    )
}

fn audit_unavailable() -> Refusal {
    refusal(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", "the audit log is unavailable; nothing was forwarded")
}

fn json_error(refused: &Refusal) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": refused.code, "error_description": refused.description });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = refused.status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_distinct_uuidv7_at_the_given_time() {
        let ids = EventIds::new();
        let ms = 1_765_000_000_123;
        let parsed: Vec<uuid::Uuid> = (0..1000).map(|_| ids.next(ms).parse().unwrap()).collect();
        let distinct: std::collections::HashSet<_> = parsed.iter().collect();
        assert_eq!(distinct.len(), parsed.len());
        for id in &parsed {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, 1_765_000_000_123);
        }
        // Another broker starts elsewhere in the space.
        assert_ne!(EventIds::new().next(ms), ids.next(ms));
    }

    #[test]
    fn audit_details_name_connection_method_and_path() {
        let target = Target::new(Scheme::Https, "[::1]", 8443, &Rules::default());
        assert_eq!(target.origin, "https://[::1]:8443");
        let long = format!("/{}", "é".repeat(200));
        let attempt = Attempt {
            target: &target,
            method: Method::GET,
            path: truncate(&long, MAX_AUDITED_PATH),
            connection: Some(Cow::Borrowed("github:work")),
        };
        let detail = attempt.detail();
        assert!(detail.starts_with("connection=github:work method=GET path=/é"), "{detail}");
        assert!(detail.ends_with('…') && detail.len() <= 60 + MAX_AUDITED_PATH, "{detail}");
        let none = Attempt { target: &target, method: Method::CONNECT, path: Cow::Borrowed(""), connection: None };
        assert_eq!(none.detail(), "connection=- method=CONNECT path=");
    }
}
