//! `mandate gateway`: the Txn-Token reverse proxy. Co-located, it opens the same data directory
//! (store, keys, audit log) as `serve` and mints Txn-Tokens in process; with `--tts-url` it runs
//! without a data directory and asks the server over HTTP (keys, signals, Txn-Tokens).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use mandate_core::{Clock, ScopeSet, SystemClock, TrustDomain};
use mandate_gateway::{CoLocated, Gateway, GatewayConfig, Governance, GovernanceConfig, Remote, TtsClient};
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
    /// Co-located only: a remote TTS names the gateway client's agent.
    #[arg(long, conflicts_with = "tts_url")]
    workload: Option<String>,
    /// Remote mode: the Transaction Token Service's token endpoint, e.g.
    /// https://as.example/oauth2/token. No data directory is opened.
    #[arg(long, requires = "client_id")]
    tts_url: Option<String>,
    /// Remote mode: the gateway's confidential client at the TTS (an agent's client allowed the
    /// token-exchange grant). Its secret comes from MANDATE_GATEWAY_CLIENT_SECRET or
    /// --client-secret-file.
    #[arg(long, requires = "tts_url")]
    client_id: Option<String>,
    /// Remote mode: a file holding the client secret (trailing whitespace ignored).
    #[arg(long, requires = "tts_url")]
    client_secret_file: Option<PathBuf>,
    /// Remote mode: the trust domain, the Txn-Tokens' audience (default: the configured one).
    #[arg(long, requires = "tts_url")]
    trust_domain: Option<String>,
    /// Governance file (TOML): session budgets, loop guard, content checks, tools needing the
    /// owner's approval (docs/governance.md). Without it every authenticated call is forwarded.
    #[arg(long)]
    governance: Option<PathBuf>,
    /// Remote mode: a Cedar policy file or directory deciding every call (co-located, the
    /// server's stored set decides and this is refused).
    #[arg(long, requires = "tts_url")]
    policy_file: Option<PathBuf>,
    /// Remote mode: the RFC 8936 poll endpoint of the gateway client's Shared Signals stream, so
    /// revoked tokens are refused before they expire.
    #[arg(long, requires = "tts_url")]
    ssf_poll: Option<String>,
}

/// Where remote mode reads the gateway client's secret (never from argv).
pub const CLIENT_SECRET_ENV: &str = "MANDATE_GATEWAY_CLIENT_SECRET";

pub async fn gateway(settings: &Settings, args: GatewayArgs) -> anyhow::Result<()> {
    if args.tts_url.is_some() {
        return remote(settings, args).await;
    }
    let scopes = ScopeSet::parse(&args.scopes).context("--scopes")?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let issuer =
        args.issuer.or_else(|| settings.issuer.clone()).unwrap_or_else(|| format!("http://{}", settings.listen()));
    let authz = setup::open(settings, issuer).await?;
    let workload = args.workload.unwrap_or_else(|| format!("spiffe://{}/gateway", authz.config.trust_domain));
    let mut config = GatewayConfig::new(&args.upstream, &workload, scopes)?;
    config.upstream_http2 = args.upstream_http2;
    let gateway = Gateway::co_located(CoLocated { authz: &authz, resource: &args.resource, config })?;
    // Co-located, the server's policy set decides every call, kept current like the server's.
    let policies = setup::watch_policies(&authz).await?;
    let governance = load_governance(args.governance.as_deref(), Arc::clone(&authz.clock))?;
    let gateway = gateway.with_governance(governance.with_policy(Arc::clone(&authz.policy)));

    let mut stdout = std::io::stdout();
    writeln!(stdout, "Mandate gateway listening on http://{}", listener.local_addr()?)?;
    writeln!(stdout, "  resource:    {}", args.resource)?;
    writeln!(stdout, "  upstream:    {}", args.upstream)?;
    writeln!(stdout, "  issuer:      {}", authz.config.issuer)?;
    writeln!(stdout, "  workload:    {workload}")?;
    if let Some(path) = &args.governance {
        writeln!(stdout, "  governance:  {}", path.display())?;
    }
    stdout.flush()?;

    serve(listener, gateway).await?;
    policies.abort();
    authz.log.checkpoint().await.context("final audit checkpoint")?;
    Ok(())
}

async fn serve(listener: TcpListener, gateway: Gateway) -> anyhow::Result<()> {
    let app = Arc::new(gateway).router().into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(mandate_gateway::listener(listener), app)
        .with_graceful_shutdown(crate::serve::shutdown_signal())
        .await;
    served.context("serving HTTP")
}

/// Remote mode: no data directory, no local audit (the TTS audits each mint with its `txn`).
async fn remote(settings: &Settings, args: GatewayArgs) -> anyhow::Result<()> {
    mandate_crypto::init().context("crypto self-test")?;
    let scopes = ScopeSet::parse(&args.scopes).context("--scopes")?;
    let issuer = args.issuer.or_else(|| settings.issuer.clone()).context("remote mode needs --issuer")?;
    let trust_domain = args.trust_domain.as_deref().unwrap_or_else(|| settings.trust_domain());
    let trust_domain = TrustDomain::parse(trust_domain).context("--trust-domain")?.to_string();
    let (Some(token_url), Some(client_id)) = (args.tts_url, args.client_id) else {
        bail!("remote mode needs --tts-url and --client-id");
    };
    let client_secret = client_secret(args.client_secret_file.as_deref())?;
    // The workload is named by the TTS (the client's agent); this one only fills the config.
    let workload = format!("spiffe://{trust_domain}/gateway");
    let mut config = GatewayConfig::new(&args.upstream, &workload, scopes)?;
    config.upstream_http2 = args.upstream_http2;
    let governance = load_governance(args.governance.as_deref(), Arc::new(SystemClock))?;
    // Remote, the gateway has no store to read the server's set from: its own file decides.
    let engine = mandate_policy::PolicyEngine::empty();
    if let Some(path) = &args.policy_file {
        engine.load_file(path).map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
    }
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let (gateway, _poller) = Gateway::remote(Remote {
        issuer: issuer.trim_end_matches('/'),
        trust_domain: &trust_domain,
        resource: &args.resource,
        tts: TtsClient { token_url: token_url.clone(), client_id, client_secret },
        ssf_poll: args.ssf_poll.as_deref(),
        clock: Arc::new(SystemClock),
        config,
    })?;
    let gateway = gateway.with_governance(governance.with_policy(Arc::new(engine)));

    let mut stdout = std::io::stdout();
    writeln!(stdout, "Mandate gateway listening on http://{}", listener.local_addr()?)?;
    writeln!(stdout, "  resource:    {}", args.resource)?;
    writeln!(stdout, "  upstream:    {}", args.upstream)?;
    writeln!(stdout, "  issuer:      {issuer}")?;
    writeln!(stdout, "  tts:         {token_url}")?;
    stdout.flush()?;
    if args.ssf_poll.is_none() {
        eprintln!(
            "warning: no --ssf-poll: only signatures and expiry are checked, so a revoked token is accepted \
             until it expires"
        );
    }
    serve(listener, gateway).await
}

/// The governance file, compiled; without `--governance` nothing but policy governs.
fn load_governance(path: Option<&Path>, clock: Arc<dyn Clock>) -> anyhow::Result<Governance> {
    let config = match path {
        Some(path) => GovernanceConfig::load(path).context("--governance")?,
        None => GovernanceConfig::default(),
    };
    Governance::new(config, clock).context("--governance")
}

/// The client secret from `--client-secret-file`, else from [`CLIENT_SECRET_ENV`].
fn client_secret(file: Option<&Path>) -> anyhow::Result<String> {
    let secret = match file {
        Some(path) => crate::commands::read_text(path)?,
        None => std::env::var(CLIENT_SECRET_ENV)
            .with_context(|| format!("remote mode needs {CLIENT_SECRET_ENV} or --client-secret-file"))?,
    };
    let secret = secret.trim_end().to_owned();
    if secret.is_empty() {
        bail!("the gateway's client secret is empty");
    }
    Ok(secret)
}
