//! Starting the demo's services on ephemeral loopback ports: two Mandate servers through the
//! `serve` code path, the co-located gateway, and the services behind it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mandate_authz::Authz;
use mandate_core::{ScopeSet, SystemClock};
use mandate_gateway::{CoLocated, Gateway, GatewayConfig, Governance, GovernanceConfig};
use mandate_guard::{RemoteKeys, TxnTokenVerifier};
use tokio::net::TcpListener;

use super::Tasks;
use super::services;
use crate::config::Settings;
use crate::serve::{Banner, serve_on};
use crate::setup;

/// How long a server may take to answer `/readyz` after its start.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// What the story talks to.
pub struct Stack {
    /// Alice's identity provider (a Mandate server).
    pub idp: Authz,
    pub idp_base: String,
    /// The authorization server of the protected resource (another Mandate server), with the
    /// Workload API and the gateway beside it.
    pub mandate: Authz,
    pub base: String,
    pub socket: PathBuf,
    /// The gateway's public URL: the resource its tokens are issued for.
    pub resource: String,
}

/// Starts everything and waits until both servers answer.
pub async fn start(dir: &Path, user: &Settings, tasks: &Tasks) -> anyhow::Result<Stack> {
    let idp_listener = bind().await?;
    let mandate_listener = bind().await?;
    let gateway_listener = bind().await?;
    let idp_base = format!("http://{}", idp_listener.local_addr()?);
    let base = format!("http://{}", mandate_listener.local_addr()?);
    let resource = format!("http://{}", gateway_listener.local_addr()?);
    let socket = dir.join("workload.sock");

    let idp_settings = server_settings(user, dir.join("idp"), &idp_base, None);
    let idp = setup::open(&idp_settings, idp_base.clone()).await.context("opening the IdP's data directory")?;
    let mandate_settings = server_settings(user, dir.join("mandate"), &base, Some(socket.clone()));
    let mandate = setup::open(&mandate_settings, base.clone()).await.context("opening Mandate's data directory")?;

    let (authz, stop) = (idp.clone(), tasks.shutdown());
    tasks.spawn("idp server", async move { serve_on(&idp_settings, authz, idp_listener, stop, Banner::Quiet).await });
    let (authz, stop) = (mandate.clone(), tasks.shutdown());
    tasks.spawn("mandate server", async move {
        serve_on(&mandate_settings, authz, mandate_listener, stop, Banner::Quiet).await
    });
    wait_ready(&idp_base, tasks).await?;
    wait_ready(&base, tasks).await?;

    // The services behind the gateway verify Txn-Tokens with the keys Mandate publishes.
    let verifier = || -> anyhow::Result<Arc<TxnTokenVerifier>> {
        let keys = Arc::new(RemoteKeys::new(Arc::new(SystemClock)).context("an HTTP client for the key fetcher")?);
        let domain = mandate.config.trust_domain.to_string();
        Ok(Arc::new(TxnTokenVerifier::new(base.clone(), domain, keys, Arc::new(SystemClock))))
    };
    let payment = serve_router(tasks, "payment service", services::chain_hop("payment", verifier()?, None)).await?;
    let risk = serve_router(tasks, "risk service", services::chain_hop("risk", verifier()?, Some(payment))).await?;
    let upstream = serve_router(tasks, "tools and order service", services::upstream(verifier()?, risk)).await?;

    let workload = format!("spiffe://{}/gateway", mandate.config.trust_domain);
    let config = GatewayConfig::new(&upstream, &workload, ScopeSet::parse("read")?)?;
    let gateway = Gateway::co_located(CoLocated { authz: &mandate, resource: &resource, config })?;
    // No budgets or content rules: the server's Cedar policy set governs every call.
    let governance = Governance::new(GovernanceConfig::default(), Arc::clone(&mandate.clock))?
        .with_policy(Arc::clone(&mandate.policy));
    let app =
        Arc::new(gateway.with_governance(governance)).router().into_make_service_with_connect_info::<SocketAddr>();
    let stop = tasks.shutdown();
    tasks.spawn("gateway", async move {
        axum::serve(mandate_gateway::listener(gateway_listener), app)
            .with_graceful_shutdown(stop)
            .await
            .context("the gateway")
    });
    Ok(Stack { idp, idp_base, mandate, base, socket, resource })
}

async fn bind() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")
}

/// The user's logging settings, and nothing else of theirs: the demo brings its own data,
/// issuer and Workload API socket. Federation and IdP trust over loopback `http` needs the
/// insecure (test-only) switch, which is safe here because nothing leaves 127.0.0.1.
fn server_settings(user: &Settings, data_dir: PathBuf, issuer: &str, workload_socket: Option<PathBuf>) -> Settings {
    Settings {
        data_dir: Some(data_dir),
        issuer: Some(issuer.to_owned()),
        workload_socket,
        allow_insecure_federation: Some(true),
        log: user.log.clone(),
        log_format: user.log_format,
        ..Settings::default()
    }
}

/// Serves `router` on a fresh loopback port until the demo stops; returns its base URL.
async fn serve_router(tasks: &Tasks, name: &'static str, router: axum::Router) -> anyhow::Result<String> {
    let listener = bind().await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = tasks.shutdown();
    tasks.spawn(name, async move { axum::serve(listener, router).with_graceful_shutdown(stop).await.context(name) });
    Ok(url)
}

/// Polls `/readyz` until the server answers 200.
async fn wait_ready(base: &str, tasks: &Tasks) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        if let Some(name) = tasks.ended() {
            bail!("the {name} stopped while starting (its error is printed below)");
        }
        if let Ok(answer) = http.get(&url).send().await
            && answer.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{base} did not become ready within {} s", READY_WITHIN.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
