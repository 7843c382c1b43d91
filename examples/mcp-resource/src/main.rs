//! `mcp-resource`: runs the example MCP server, trusting the given issuers' published keys
//! (discovered from their RFC 8414 metadata). Prints `listening on http://ADDR` once ready.
//! With `--ssf-poll`, it also polls a Shared Signals stream of the first issuer and refuses
//! tokens of revoked agents, owners, clients and grants before they expire.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mandate_core::SystemClock;
use mandate_example_mcp_resource::{guard_config, router};
use mandate_guard::{Guard, RemoteKeys, SignalRevocations};

#[derive(Debug, Parser)]
#[command(name = "mcp-resource", about = "Example MCP server protected by Mandate's guard")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9000.
    #[arg(long)]
    listen: SocketAddr,
    /// This server's resource identifier: the URL of its MCP endpoint, e.g. http://127.0.0.1:9000/mcp.
    #[arg(long)]
    resource: String,
    /// A trusted authorization server's issuer URL (repeat for several).
    #[arg(long = "issuer", required = true)]
    issuers: Vec<String>,
    /// Scopes listed in the Protected Resource Metadata.
    #[arg(long, default_value = "notes:read notes:write")]
    scopes: String,
    /// Accept only DPoP-bound access tokens.
    #[arg(long)]
    require_dpop: bool,
    /// The RFC 8936 poll endpoint of this server's SSF stream at the first issuer. The
    /// `Authorization` value to poll with is read from `MCP_RESOURCE_SSF_AUTHORIZATION`.
    #[arg(long, requires = "ssf_audience")]
    ssf_poll: Option<String>,
    /// The stream's `aud`: the audience its security event tokens are addressed to.
    #[arg(long)]
    ssf_audience: Option<String>,
}

/// Subscribes `guard` to the issuer's revocation signals when `--ssf-poll` is given.
fn subscribe(guard: Guard, args: &Args, keys: Arc<RemoteKeys>) -> anyhow::Result<Guard> {
    let (Some(url), Some(audience)) = (&args.ssf_poll, &args.ssf_audience) else { return Ok(guard) };
    let authorization = std::env::var("MCP_RESOURCE_SSF_AUTHORIZATION")
        .context("--ssf-poll needs MCP_RESOURCE_SSF_AUTHORIZATION (e.g. \"Basic …\")")?;
    let issuer = args.issuers.first().context("an issuer is required")?;
    let receiver = Arc::new(SignalRevocations::new(issuer, audience, keys, Arc::new(SystemClock)));
    receiver.spawn_poller(url, &authorization).map_err(anyhow::Error::msg)?;
    Ok(guard.with_revocation(receiver))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mandate_crypto::init().context("crypto self-test failed")?;
    let mut config = guard_config(&args.resource, args.issuers.clone(), &args.scopes)?;
    config.dpop_bound_access_tokens_required = args.require_dpop;
    let keys = Arc::new(RemoteKeys::new(Arc::new(SystemClock))?);
    let guard = Guard::new(config, keys.clone(), Arc::new(SystemClock));
    let guard = Arc::new(subscribe(guard, &args, keys)?);
    let app = router(guard)?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // Without a signal handler the server simply runs until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await?;
    Ok(())
}
