//! `mandate gateway`: the Txn-Token reverse proxy, co-located with the server: it opens the same
//! data directory (store, keys, audit log) as `serve` and mints Txn-Tokens in process. Minting
//! from a remote Transaction Token Service over HTTP is not supported yet.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use mandate_core::ScopeSet;
use mandate_gateway::{CoLocated, Gateway, GatewayConfig};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::setup;

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on, e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: SocketAddr,
    /// Base URL of the upstream service (http:// only), e.g. http://127.0.0.1:9000.
    #[arg(long)]
    upstream: String,
    /// The gateway's public URL: the resource access tokens must be issued for.
    #[arg(long)]
    resource: String,
    /// Scopes every request's access token must grant (space-separated).
    #[arg(long, default_value = "")]
    scopes: String,
    /// The server's issuer URL, as in its tokens (default: the configured issuer).
    #[arg(long)]
    issuer: Option<String>,
    /// Speak HTTP/2 with prior knowledge (h2c) to the upstream.
    #[arg(long)]
    upstream_http2: bool,
    /// The gateway's SPIFFE ID in Txn-Tokens (`req_wl`); default spiffe://<trust domain>/gateway.
    #[arg(long)]
    workload: Option<String>,
}

pub async fn gateway(settings: &Settings, args: GatewayArgs) -> anyhow::Result<()> {
    let scopes = ScopeSet::parse(&args.scopes).context("--scopes")?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let issuer =
        args.issuer.or_else(|| settings.issuer.clone()).unwrap_or_else(|| format!("http://{}", settings.listen()));
    let authz = setup::open(settings, issuer).await?;
    let workload = args.workload.unwrap_or_else(|| format!("spiffe://{}/gateway", authz.config.trust_domain));
    let mut config = GatewayConfig::new(&args.upstream, &workload, scopes)?;
    config.upstream_http2 = args.upstream_http2;
    let gateway = Gateway::co_located(CoLocated { authz: &authz, resource: &args.resource, config })?;

    let mut stdout = std::io::stdout();
    writeln!(stdout, "Mandate gateway listening on http://{}", listener.local_addr()?)?;
    writeln!(stdout, "  resource:    {}", args.resource)?;
    writeln!(stdout, "  upstream:    {}", args.upstream)?;
    writeln!(stdout, "  issuer:      {}", authz.config.issuer)?;
    writeln!(stdout, "  workload:    {workload}")?;
    stdout.flush()?;

    let app = Arc::new(gateway).router().into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app).with_graceful_shutdown(crate::serve::shutdown_signal()).await;
    served.context("serving HTTP")?;
    authz.log.checkpoint().await.context("final audit checkpoint")?;
    Ok(())
}
