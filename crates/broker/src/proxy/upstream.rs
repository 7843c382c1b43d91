//! The broker's client towards real upstreams: TLS verified against the system's roots plus an
//! optional extra CA bundle; pooled keep-alive connections with ALPN h2 and http/1.1 for HTTP/2
//! agents and plain-HTTP requests (HTTP/1.1 tunnels have their own, see `tunnel`).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

const POOL_IDLE: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE_PER_HOST: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no trusted roots: neither system roots nor an upstream CA bundle")]
    NoRoots,
    #[error("TLS client configuration: {0}")]
    Tls(String),
}

/// Which certificates upstreams must chain to.
pub struct UpstreamTrust {
    /// Load the operating system's trust store.
    pub system_roots: bool,
    /// Extra roots (e.g. `--upstream-ca`), added to the system's.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// The TLS client configuration for upstreams (no ALPN: each client sets its own).
pub fn tls_config(trust: UpstreamTrust) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = RootCertStore::empty();
    if trust.system_roots {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "loading a system root certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system roots");
    }
    for cert in trust.extra_roots {
        roots.add(cert).map_err(|e| UpstreamError::Tls(format!("upstream CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(UpstreamError::NoRoots);
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the pooled client over `tls`. `http://` targets are allowed (rules decide whether a
/// credential may go there); `https://` ones are verified.
pub fn client(tls: rustls::ClientConfig, connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(https)
}
