//! Fetching JSON documents named by others (federated issuers' JWK Sets, Client ID Metadata
//! Documents) without becoming an SSRF proxy: https only, the host is resolved here and refused if
//! any address is internal (loopback, private, link-local, CGNAT, unique-local, multicast, …), the
//! connection is pinned to the vetted addresses, no redirects or proxies, a 5 s deadline and a
//! bounded body ([`fetch_json`]). JWK Sets are cached per URL as Cache-Control says ([`JwksCache`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mandate_crypto::PublicKey;
use mandate_crypto::jwk_set::parse_jwk_set;
use parking_lot::Mutex;
use url::{Host, Url};

/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// How JWK Sets are fetched.
pub const JWKS_FETCH: FetchSpec =
    FetchSpec { max_bytes: MAX_JWKS_BYTES, accept: "application/jwk-set+json, application/json" };
/// Deadline for one fetch, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Cache lifetime without a usable `Cache-Control: max-age`.
pub const DEFAULT_MAX_AGE_SECS: i64 = 300;
pub const MIN_MAX_AGE_SECS: i64 = 60;
pub const MAX_MAX_AGE_SECS: i64 = 24 * 3600;
/// A URL is fetched at most this often outside its cache lifetime: after an unknown `kid`, or
/// after a failed fetch (so a dead issuer does not cost every request a timeout).
pub const MIN_REFETCH_SECS: i64 = 30;
/// Key sets kept at most. Federation names a few URLs, but metadata documents (`crate::cimd`)
/// let any client name a `jwks_uri`, so the cache must not grow without bound.
pub const MAX_KEY_SETS: usize = 1024;

/// Why a fetch failed. Callers say what was fetched ("issuer keys are unavailable: …"), so the
/// messages do not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("URL is not valid: {0}")]
    BadUrl(String),
    #[error("URL must use https (http only for loopback with allow_insecure_federation)")]
    InsecureScheme,
    #[error("host {host} resolves to {addr}, a {class} address; it is not fetched")]
    ForbiddenAddress { host: String, addr: IpAddr, class: AddrClass },
    #[error("host {0} does not resolve")]
    Resolve(String),
    #[error("request timed out after {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    #[error("request failed: {0}")]
    Request(String),
    #[error("the server answered with a redirect; redirects are not followed")]
    Redirect,
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("response is not JSON (Content-Type {0:?})")]
    ContentType(Option<String>),
    #[error("response exceeds {0} bytes")]
    TooLarge(usize),
    #[error("document is not usable: {0}")]
    Invalid(String),
}

/// What one kind of document may be: the largest body read, and the media types asked for.
#[derive(Debug, Clone, Copy)]
pub struct FetchSpec {
    pub max_bytes: usize,
    pub accept: &'static str,
}

/// A fetched JSON document (UTF-8, not yet parsed) and how long it may be cached.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: String,
    pub max_age_secs: i64,
}

/// What kind of address an IP is, as far as outbound fetches care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Unspecified,
    Loopback,
    /// RFC 1918.
    Private,
    /// 100.64.0.0/10 (RFC 6598 carrier-grade NAT).
    SharedCgnat,
    LinkLocal,
    /// fc00::/7 (RFC 4193).
    UniqueLocal,
    Multicast,
    Broadcast,
    /// TEST-NET and 2001:db8::/32 ranges.
    Documentation,
    /// Benchmarking, IETF protocol assignments, reserved, discard, site-local, tunnels.
    Reserved,
}

impl AddrClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
        }
    }
}

impl std::fmt::Display for AddrClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an address; only [`AddrClass::Public`] is ever fetched in secure mode.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_broadcast() => AddrClass::Broadcast,
        (0, _, _) => AddrClass::Unspecified,
        (127, _, _) => AddrClass::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => AddrClass::Private,
        (100, 64..=127, _) => AddrClass::SharedCgnat,
        (169, 254, _) => AddrClass::LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddrClass::Documentation,
        (192, 0, 0) | (198, 18..=19, _) | (240..=255, _, _) => AddrClass::Reserved,
        (224..=239, _, _) => AddrClass::Multicast,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    // Addresses that carry an IPv4 address are judged by it: mapped, compatible, NAT64, 6to4.
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    match s[0] {
        0xff00..=0xffff => AddrClass::Multicast,
        0xfc00..=0xfdff => AddrClass::UniqueLocal,
        0xfe80..=0xfebf => AddrClass::LinkLocal,
        0xfec0..=0xfeff => AddrClass::Reserved,
        0x2001 if s[1] == 0x0db8 => AddrClass::Documentation,
        // 2001::/23 holds Teredo and other IETF protocol assignments.
        0x2001 if s[1] < 0x0200 => AddrClass::Reserved,
        // Outside 2000::/3 nothing is globally routed unicast (100::/64 discard, 64:ff9b:1::/48
        // local NAT64, and the unassigned rest).
        0x2000..=0x3fff => AddrClass::Public,
        _ => AddrClass::Reserved,
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        // 64:ff9b::/96 (well-known NAT64 prefix)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // 2002:AABB:CCDD::/48 (6to4)
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// Checks what can be checked without the network: a parsable absolute URL without
/// credentials or fragment; https, or http to a loopback host in insecure mode; an IP-literal
/// host must be public unless insecure mode is on.
pub fn check_url(raw: &str, insecure: bool) -> Result<Url, FetchError> {
    let url = Url::parse(raw).map_err(|e| FetchError::BadUrl(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::BadUrl("credentials in the URL are not allowed".into()));
    }
    if url.fragment().is_some() {
        return Err(FetchError::BadUrl("a fragment is not allowed".into()));
    }
    let host = url.host().ok_or_else(|| FetchError::BadUrl("the URL has no host".into()))?;
    let literal = match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(_) => None,
    };
    match url.scheme() {
        "https" => {}
        "http" if insecure && is_loopback_host(&host) => {}
        "http" => return Err(FetchError::InsecureScheme),
        other => return Err(FetchError::BadUrl(format!("scheme {other:?} is not fetched"))),
    }
    if let Some(addr) = literal {
        vet(&host_name(&url), &[addr], insecure)?;
    }
    Ok(url)
}

fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    }
}

fn host_name(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
}

/// Refuses the whole host if any of its addresses is not public (secure mode), so a name that
/// mixes public and internal records cannot be used to reach the internal one.
fn vet(host: &str, addrs: &[IpAddr], insecure: bool) -> Result<(), FetchError> {
    if insecure {
        return Ok(());
    }
    for &addr in addrs {
        let class = classify(addr);
        if class != AddrClass::Public {
            return Err(FetchError::ForbiddenAddress { host: host.to_owned(), addr, class });
        }
    }
    Ok(())
}

/// Resolves the URL's host to the addresses the connection will be pinned to.
async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, FetchError> {
    let port = url.port_or_known_default().ok_or_else(|| FetchError::BadUrl("no port".into()))?;
    match url.host() {
        Some(Host::Ipv4(ip)) => Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]),
        Some(Host::Ipv6(ip)) => Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]),
        Some(Host::Domain(domain)) => {
            let found = tokio::time::timeout(FETCH_TIMEOUT, tokio::net::lookup_host((domain, port)))
                .await
                .map_err(|_| FetchError::Timeout)?
                .map_err(|_| FetchError::Resolve(domain.to_owned()))?;
            let addrs: Vec<SocketAddr> = found.collect();
            if addrs.is_empty() { Err(FetchError::Resolve(domain.to_owned())) } else { Ok(addrs) }
        }
        None => Err(FetchError::BadUrl("the URL has no host".into())),
    }
}

/// One JWK Set fetch.
async fn fetch(raw_url: &str, insecure: bool) -> Result<(Vec<PublicKey>, i64), FetchError> {
    let fetched = fetch_json(raw_url, insecure, &JWKS_FETCH).await?;
    let keys = parse_jwk_set(&fetched.body).map_err(FetchError::Invalid)?;
    Ok((keys, fetched.max_age_secs))
}

/// One fetch of a JSON document: resolve, vet, connect only to the vetted addresses, accept only
/// a `200` with a JSON media type, read at most `spec.max_bytes`. Nothing is cached here.
pub async fn fetch_json(raw_url: &str, insecure: bool, spec: &FetchSpec) -> Result<Fetched, FetchError> {
    let (url, client, ips) = vetted_client(raw_url, insecure).await?;
    let request = client.get(url).header(reqwest::header::ACCEPT, spec.accept);
    let response = request.send().await.map_err(request_error)?;
    if response.remote_addr().is_some_and(|peer| !ips.contains(&peer.ip())) {
        return Err(FetchError::Request("connected to an address that was not vetted".into()));
    }
    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::Redirect);
    }
    if status != reqwest::StatusCode::OK {
        return Err(FetchError::Status(status.as_u16()));
    }
    check_content_type(response.headers().get(reqwest::header::CONTENT_TYPE))?;
    let max_age_secs = max_age_secs(response.headers().get(reqwest::header::CACHE_CONTROL));
    let body = read_bounded(response, spec.max_bytes).await?;
    let body = String::from_utf8(body).map_err(|_| FetchError::Invalid("body is not UTF-8".into()))?;
    Ok(Fetched { body, max_age_secs })
}

/// An HTTP client that can only reach the URL's vetted addresses (resolved once, checked, and
/// pinned), with no redirects, proxies or unbounded waits. Also used for outbound POSTs
/// (Shared Signals push delivery).
pub async fn vetted_client(raw_url: &str, insecure: bool) -> Result<(Url, reqwest::Client, Vec<IpAddr>), FetchError> {
    let url = check_url(raw_url, insecure)?;
    let host = host_name(&url);
    let addrs = resolve(&url).await?;
    let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    vet(&host, &ips, insecure)?;
    if url.scheme() == "http" && !ips.iter().all(IpAddr::is_loopback) {
        return Err(FetchError::InsecureScheme);
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .https_only(url.scheme() == "https");
    if let Some(Host::Domain(domain)) = url.host() {
        // Pinning: the connection goes to what was vetted, whatever DNS answers next.
        builder = builder.resolve_to_addrs(domain, &addrs);
    }
    let client = builder.build().map_err(|e| FetchError::Request(e.to_string()))?;
    Ok((url, client, ips))
}

/// POSTs `body` to a vetted URL and returns the answer's status; the body is not read.
pub async fn post_vetted(
    raw_url: &str,
    insecure: bool,
    content_type: &'static str,
    authorization: Option<&str>,
    body: String,
) -> Result<u16, FetchError> {
    let (url, client, ips) = vetted_client(raw_url, insecure).await?;
    let mut request = client.post(url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
    if let Some(value) = authorization {
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let response = request.send().await.map_err(request_error)?;
    if response.remote_addr().is_some_and(|peer| !ips.contains(&peer.ip())) {
        return Err(FetchError::Request("connected to an address that was not vetted".into()));
    }
    Ok(response.status().as_u16())
}

fn request_error(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_redirect() {
        FetchError::Redirect
    } else {
        // Without the URL: the rule names it already, and the message stays short.
        FetchError::Request(e.without_url().to_string())
    }
}

/// `application/json`, `application/jwk-set+json` or any other `application/*+json`.
fn check_content_type(value: Option<&reqwest::header::HeaderValue>) -> Result<(), FetchError> {
    let text = value.and_then(|v| v.to_str().ok()).map(str::to_owned);
    let essence = text.as_deref().and_then(|t| t.split(';').next()).map(|t| t.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        Some(t) if t.starts_with("application/") && t.ends_with("+json") => Ok(()),
        _ => Err(FetchError::ContentType(text)),
    }
}

async fn read_bounded(mut response: reqwest::Response, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    if response.content_length().is_some_and(|len| len > max_bytes as u64) {
        return Err(FetchError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `max-age` from Cache-Control, clamped to [`MIN_MAX_AGE_SECS`]..=[`MAX_MAX_AGE_SECS`];
/// `no-cache`/`no-store` count as the minimum, anything else as the default.
pub fn max_age_secs(value: Option<&reqwest::header::HeaderValue>) -> i64 {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return DEFAULT_MAX_AGE_SECS;
    };
    let mut age = None;
    for directive in text.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-cache" || directive == "no-store" {
            return MIN_MAX_AGE_SECS;
        }
        if let Some(n) = directive.strip_prefix("max-age=") {
            age = n.trim_matches('"').parse::<i64>().ok();
        }
    }
    age.unwrap_or(DEFAULT_MAX_AGE_SECS).clamp(MIN_MAX_AGE_SECS, MAX_MAX_AGE_SECS)
}

#[derive(Default)]
struct Entry {
    keys: Option<Arc<Vec<PublicKey>>>,
    expires_at: i64,
    attempted_at: Option<i64>,
    error: Option<FetchError>,
}

/// Fetched key sets per URL. Fetches of one URL are serialised, so a burst of requests after
/// expiry costs one fetch.
#[derive(Default)]
pub struct JwksCache {
    entries: Mutex<HashMap<String, Entry>>,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").field("urls", &self.entries.lock().len()).finish()
    }
}

impl JwksCache {
    /// The key set at `url`: cached while fresh, else fetched (a failure is remembered for
    /// [`MIN_REFETCH_SECS`]).
    pub async fn keys(&self, url: &str, now: i64, insecure: bool) -> Result<Arc<Vec<PublicKey>>, FetchError> {
        if let Some(answer) = self.cached(url, now) {
            return answer;
        }
        let gate = self.gate(url);
        let _turn = gate.lock().await;
        if let Some(answer) = self.cached(url, now) {
            return answer;
        }
        self.refetch(url, now, insecure).await
    }

    /// After a token named a `kid` the cached set lacks: fetch again unless the last attempt
    /// was under [`MIN_REFETCH_SECS`] ago. `None` means no fetch was made.
    pub async fn refresh(
        &self,
        url: &str,
        now: i64,
        insecure: bool,
    ) -> Result<Option<Arc<Vec<PublicKey>>>, FetchError> {
        let gate = self.gate(url);
        let _turn = gate.lock().await;
        let recent =
            self.entries.lock().get(url).and_then(|e| e.attempted_at).is_some_and(|at| now - at < MIN_REFETCH_SECS);
        if recent {
            return Ok(None);
        }
        self.refetch(url, now, insecure).await.map(Some)
    }

    fn cached(&self, url: &str, now: i64) -> Option<Result<Arc<Vec<PublicKey>>, FetchError>> {
        let entries = self.entries.lock();
        let entry = entries.get(url)?;
        // Fresh keys win even over a failed refresh; a failure after expiry is remembered briefly.
        match (&entry.keys, &entry.error, entry.attempted_at) {
            (Some(keys), _, _) if now < entry.expires_at => Some(Ok(Arc::clone(keys))),
            (_, Some(error), Some(at)) if now - at < MIN_REFETCH_SECS => Some(Err(error.clone())),
            _ => None,
        }
    }

    fn gate(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.in_flight.lock();
        if gates.len() >= MAX_KEY_SETS {
            // A gate matters only while a fetch holds it.
            gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        Arc::clone(gates.entry(url.to_owned()).or_default())
    }

    async fn refetch(&self, url: &str, now: i64, insecure: bool) -> Result<Arc<Vec<PublicKey>>, FetchError> {
        let result = fetch(url, insecure).await;
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_KEY_SETS && !entries.contains_key(url) {
            make_room(&mut entries, now);
        }
        let entry = entries.entry(url.to_owned()).or_default();
        entry.attempted_at = Some(now);
        match result {
            Ok((keys, max_age)) => {
                let keys = Arc::new(keys);
                entry.keys = Some(Arc::clone(&keys));
                entry.expires_at = now + max_age;
                entry.error = None;
                Ok(keys)
            }
            Err(error) => {
                tracing::warn!(%url, %error, "JWKS fetch failed");
                entry.error = Some(error.clone());
                Err(error)
            }
        }
    }
}

/// Drops every entry that no longer answers anything (keys expired, failure forgotten); if that
/// frees nothing, the one that would stop answering first.
fn make_room(entries: &mut HashMap<String, Entry>, now: i64) {
    let useful_until = |e: &Entry| e.expires_at.max(e.attempted_at.map_or(0, |at| at + MIN_REFETCH_SECS));
    entries.retain(|_, e| useful_until(e) > now);
    if entries.len() >= MAX_KEY_SETS {
        let first = entries.iter().min_by_key(|(_, e)| useful_until(e)).map(|(url, _)| url.clone());
        if let Some(url) = first {
            entries.remove(&url);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use mandate_crypto::{Alg, SigningKey};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn every_internal_range_is_classified() {
        let cases: &[(&str, AddrClass)] = &[
            ("8.8.8.8", AddrClass::Public),
            ("1.1.1.1", AddrClass::Public),
            ("140.82.112.3", AddrClass::Public),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.255.254", AddrClass::Loopback),
            ("10.0.0.1", AddrClass::Private),
            ("10.255.255.255", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.15.255.255", AddrClass::Public),
            ("172.32.0.0", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("100.63.255.255", AddrClass::Public),
            ("100.128.0.0", AddrClass::Public),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("192.0.2.1", AddrClass::Documentation),
            ("198.51.100.7", AddrClass::Documentation),
            ("203.0.113.9", AddrClass::Documentation),
            ("192.0.0.8", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
            ("198.19.255.255", AddrClass::Reserved),
            ("240.0.0.1", AddrClass::Reserved),
            ("224.0.0.1", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Broadcast),
            ("2606:4700:4700::1111", AddrClass::Public),
            ("2a00:1450:4001::200e", AddrClass::Public),
            ("::", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("fc00::1", AddrClass::UniqueLocal),
            ("fd12:3456::1", AddrClass::UniqueLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("febf::1", AddrClass::LinkLocal),
            ("fec0::1", AddrClass::Reserved),
            ("ff02::1", AddrClass::Multicast),
            ("2001:db8::1", AddrClass::Documentation),
            ("2001::1", AddrClass::Reserved),
            ("100::1", AddrClass::Reserved),
            ("64:ff9b:1::1", AddrClass::Reserved),
            ("4000::1", AddrClass::Reserved),
            // IPv4 inside IPv6 is judged by the IPv4 address.
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.1.2.3", AddrClass::Private),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::127.0.0.1", AddrClass::Loopback),
            ("64:ff9b::10.0.0.1", AddrClass::Private),
            ("64:ff9b::8.8.8.8", AddrClass::Public),
            ("2002:7f00:1::", AddrClass::Loopback),
            ("2002:a9fe:a9fe::1", AddrClass::LinkLocal),
            ("2002:808:808::1", AddrClass::Public),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_network_use() {
        assert!(check_url("https://issuer.example/jwks", false).is_ok());
        assert!(check_url("https://8.8.8.8/jwks", false).is_ok());
        assert_eq!(check_url("http://issuer.example/jwks", false), Err(FetchError::InsecureScheme));
        assert_eq!(check_url("http://localhost:8080/jwks", false), Err(FetchError::InsecureScheme));
        assert!(check_url("http://localhost:8080/jwks", true).is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", true).is_ok());
        assert!(check_url("http://[::1]:8080/jwks", true).is_ok());
        // Insecure mode allows http only to loopback.
        assert_eq!(check_url("http://10.0.0.1/jwks", true), Err(FetchError::InsecureScheme));
        assert_eq!(check_url("http://issuer.example/jwks", true), Err(FetchError::InsecureScheme));
        for internal in ["https://127.0.0.1/jwks", "https://10.1.2.3/", "https://[::1]/", "https://169.254.169.254/"] {
            assert!(matches!(check_url(internal, false), Err(FetchError::ForbiddenAddress { .. })), "{internal}");
            assert!(check_url(internal, true).is_ok(), "{internal} in insecure mode");
        }
        for bad in ["https://u:p@issuer.example/", "https://issuer.example/#k", "file:///etc/passwd", "not a url"] {
            assert!(matches!(check_url(bad, false), Err(FetchError::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn cache_lifetime_follows_cache_control_within_bounds() {
        let age = |v: &str| max_age_secs(Some(&header::HeaderValue::from_str(v).unwrap()));
        assert_eq!(max_age_secs(None), DEFAULT_MAX_AGE_SECS);
        assert_eq!(age("public, max-age=600"), 600);
        assert_eq!(age("max-age=1"), MIN_MAX_AGE_SECS);
        assert_eq!(age("max-age=999999999"), MAX_MAX_AGE_SECS);
        assert_eq!(age("no-store"), MIN_MAX_AGE_SECS);
        assert_eq!(age("max-age=soon"), DEFAULT_MAX_AGE_SECS);
        assert_eq!(age("private"), DEFAULT_MAX_AGE_SECS);
    }

    /// A JWKS server on loopback, counting hits on `/jwks`.
    struct Issuer {
        base: String,
        hits: Arc<AtomicUsize>,
        kid: String,
    }

    async fn issuer(cache_control: &'static str) -> Issuer {
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let kid = key.kid().to_owned();
        let body = json!({"keys": [key.public().jwk()]}).to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let big = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_JWKS_BYTES));
        let app = axum::Router::new()
            .route(
                "/jwks",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = body.clone();
                    async move {
                        (
                            [
                                (header::CONTENT_TYPE, "application/jwk-set+json"),
                                (header::CACHE_CONTROL, cache_control),
                            ],
                            body,
                        )
                    }
                }),
            )
            .route("/big", get(move || async move { ([(header::CONTENT_TYPE, "application/json")], big) }))
            .route("/redirect", get(|| async { axum::response::Redirect::temporary("/jwks") }))
            .route("/html", get(|| async { ([(header::CONTENT_TYPE, "text/html")], "{\"keys\": []}") }))
            .route("/missing", get(|| async { axum::http::StatusCode::NOT_FOUND.into_response() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer { base, hits, kid }
    }

    /// A raw server: answers each connection with `response` after `delay`.
    async fn raw_server(response: Vec<u8>, delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = socket.write_all(&response).await;
                });
            }
        });
        base
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut entries: HashMap<String, Entry> = (0..MAX_KEY_SETS)
            .map(|i| {
                let at = i64::try_from(i).unwrap();
                (format!("https://issuer.example/{i}"), Entry { expires_at: 1000 + at, ..Entry::default() })
            })
            .collect();
        make_room(&mut entries, 0);
        assert_eq!(entries.len(), MAX_KEY_SETS - 1, "the entry useful for the shortest time went");
        assert!(!entries.contains_key("https://issuer.example/0"));
        make_room(&mut entries, 1500);
        assert_eq!(entries.len(), MAX_KEY_SETS - 501, "everything no longer useful went");

        let cache = JwksCache::default();
        let held = cache.gate("https://issuer.example/held");
        for i in 0..MAX_KEY_SETS {
            cache.gate(&format!("https://issuer.example/{i}"));
        }
        assert_eq!(cache.in_flight.lock().len(), 2, "gates nobody holds are dropped, a held one stays");
        assert!(Arc::ptr_eq(&held, &cache.gate("https://issuer.example/held")));
    }

    #[tokio::test]
    async fn fetches_and_caches_per_max_age() {
        let issuer = issuer("max-age=120").await;
        let cache = JwksCache::default();
        let url = format!("{}/jwks", issuer.base);
        let keys = cache.keys(&url, 1000, true).await.unwrap();
        assert_eq!(keys[0].kid(), issuer.kid);
        cache.keys(&url, 1119, true).await.unwrap();
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 1, "fresh for max-age");
        cache.keys(&url, 1120, true).await.unwrap();
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 2, "refetched once expired");
        // Unknown kid: at most one refetch per MIN_REFETCH_SECS.
        assert!(cache.refresh(&url, 1125, true).await.unwrap().is_none());
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 2);
        assert!(cache.refresh(&url, 1120 + MIN_REFETCH_SECS, true).await.unwrap().is_some());
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn max_age_is_clamped_and_failures_are_remembered() {
        let issuer = issuer("max-age=5").await;
        let cache = JwksCache::default();
        let url = format!("{}/jwks", issuer.base);
        cache.keys(&url, 0, true).await.unwrap();
        cache.keys(&url, MIN_MAX_AGE_SECS - 1, true).await.unwrap();
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 1, "max-age=5 counts as {MIN_MAX_AGE_SECS}");
        let missing = format!("{}/missing", issuer.base);
        assert_eq!(cache.keys(&missing, 0, true).await.unwrap_err(), FetchError::Status(404));
        // Within MIN_REFETCH_SECS the failure is answered from memory (no request: a stopped
        // server would not change the answer); afterwards it is tried again.
        assert_eq!(cache.keys(&missing, 10, true).await.unwrap_err(), FetchError::Status(404));
        assert_eq!(cache.keys(&missing, MIN_REFETCH_SECS, true).await.unwrap_err(), FetchError::Status(404));
    }

    #[tokio::test]
    async fn refuses_redirects_wrong_types_and_oversize_bodies() {
        let issuer = issuer("max-age=300").await;
        let cache = JwksCache::default();
        let at = |path: &str| format!("{}{path}", issuer.base);
        assert_eq!(cache.keys(&at("/redirect"), 0, true).await.unwrap_err(), FetchError::Redirect);
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 0, "the redirect target was never fetched");
        assert!(matches!(cache.keys(&at("/html"), 0, true).await.unwrap_err(), FetchError::ContentType(_)));
        assert_eq!(cache.keys(&at("/big"), 0, true).await.unwrap_err(), FetchError::TooLarge(MAX_JWKS_BYTES));

        // Without Content-Length (chunked), the limit is enforced while reading.
        let chunk = "x".repeat(16 * 1024);
        let mut chunked =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            chunked.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let base = raw_server(chunked, Duration::ZERO).await;
        assert_eq!(
            cache.keys(&format!("{base}/jwks"), 0, true).await.unwrap_err(),
            FetchError::TooLarge(MAX_JWKS_BYTES)
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let base = raw_server(Vec::new(), Duration::from_secs(30)).await;
        let started = std::time::Instant::now();
        let error = JwksCache::default().keys(&format!("{base}/jwks"), 0, true).await.unwrap_err();
        assert_eq!(error, FetchError::Timeout);
        // Only the lower bound: a timeout can never fire early, while an upper bound would make
        // the test depend on how busy the machine is.
        let took = started.elapsed();
        assert!(took >= FETCH_TIMEOUT, "gave up after {took:?}, before the timeout");
    }

    #[tokio::test]
    async fn https_goes_through_tls_verification() {
        // A plain-HTTP server spoken to over https: the rustls client is built (provider and
        // platform roots present) and the handshake fails cleanly instead of falling back.
        let issuer = issuer("max-age=300").await;
        let https = issuer.base.replace("http://", "https://") + "/jwks";
        let error = JwksCache::default().keys(&https, 0, true).await.unwrap_err();
        assert!(matches!(error, FetchError::Request(_)), "{error}");
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn secure_mode_never_connects_to_internal_addresses() {
        let issuer = issuer("max-age=300").await;
        let port = issuer.base.rsplit(':').next().unwrap().to_owned();
        let cache = JwksCache::default();
        for url in [format!("https://127.0.0.1:{port}/jwks"), format!("https://localhost:{port}/jwks")] {
            let error = cache.keys(&url, 0, false).await.unwrap_err();
            assert!(matches!(error, FetchError::ForbiddenAddress { class: AddrClass::Loopback, .. }), "{url}: {error}");
        }
        let plain = format!("http://localhost:{port}/jwks");
        assert_eq!(cache.keys(&plain, 0, false).await.unwrap_err(), FetchError::InsecureScheme);
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 0);
        // The same host in insecure mode is fetched, pinned to the resolved loopback address.
        let insecure = JwksCache::default();
        let fetched = insecure.keys(&plain, 0, true).await;
        assert!(fetched.is_ok(), "{fetched:?}");
        assert_eq!(issuer.hits.load(Ordering::SeqCst), 1);
    }
}
