//! `mandate serve`: bind, open the data directory, start background upkeep, serve until
//! SIGINT/SIGTERM, then sign a final audit checkpoint.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mandate_authz::Authz;
use mandate_server::{AppState, router};
use mandate_workload::api::{WorkloadApiConfig, WorkloadApiServer};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::setup;

const KEY_REFRESH: Duration = Duration::from_secs(5);
const PURGE_EVERY: Duration = Duration::from_secs(60);

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(settings.listen()).await.with_context(|| format!("binding {}", settings.listen()))?;
    let bound = listener.local_addr()?;
    let issuer = settings.issuer.clone().unwrap_or_else(|| format!("http://{bound}"));
    let authz = setup::open(&settings, issuer).await?;
    serve_on(&settings, authz, listener, shutdown_signal(), Banner::Print).await
}

/// Whether [`serve_on`] prints the start banner (`mandate demo` tells its own story instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Banner {
    Print,
    Quiet,
}

/// Everything `serve` does once the listener is bound and `authz` is open, until `shutdown`
/// resolves: also the embedded server of `mandate demo`.
pub async fn serve_on(
    settings: &Settings,
    authz: Authz,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    banner: Banner,
) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    let data_dir = settings.data_dir();
    let (admin_hash, created) = setup::ensure_admin_credential(&authz, &data_dir).await?;
    let spiffe_ca = crate::cmd_workload::spiffe_ca(settings, &authz)?;
    spiffe_ca.announce_jwt_issuer().await.context("recording the JWT-SVID issuer")?;
    let workload = match &settings.workload_socket {
        Some(path) => Some(
            WorkloadApiServer::start(Arc::clone(&spiffe_ca), WorkloadApiConfig::new(path))
                .await
                .with_context(|| format!("starting the workload API on {}", path.display()))?,
        ),
        None => None,
    };

    if banner == Banner::Print {
        println!("Mandate {} listening on {bound}", env!("CARGO_PKG_VERSION"));
        println!("  issuer:      {}", authz.config.issuer);
        println!("  data dir:    {}", data_dir.display());
        println!("  database:    {}", setup::redact_url(&settings.database_url()));
        let credential_path = data_dir.join("admin-token");
        match created {
            Some(_) => println!("  admin token: created in {} (shown nowhere else)", credential_path.display()),
            None => println!("  admin token: {}", credential_path.display()),
        }
        if let Some(workload) = &workload {
            println!("  workload:    unix://{}", workload.socket_path().display());
        }
        println!("  audit key:   {}", authz.log.signer().verifier_key());
    }

    let policies = setup::start_policies(settings, &authz).await?;
    let upkeep = tokio::spawn(upkeep(authz.clone()));
    // Shared Signals push delivery (RFC 8935); its outbox is in the store, so nothing is lost
    // across restarts.
    let signals = tokio::spawn(mandate_authz::ssf::push::run(authz.clone()));
    let state = AppState {
        authz: authz.clone(),
        admin_token_hash: admin_hash.into(),
        spiffe: Arc::clone(&spiffe_ca),
        interactions: Default::default(),
        metrics: Arc::new(mandate_server::Metrics::new(
            authz.store.audit_len().await.context("reading the audit log length")?,
        )),
        console: Default::default(),
    };
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    if let Some(workload) = workload {
        workload.shutdown().await.context("stopping the workload API")?;
    }
    served.context("serving HTTP")?;
    upkeep.abort();
    signals.abort();
    policies.abort();
    authz.log.checkpoint().await.context("final audit checkpoint")?;
    tracing::info!("stopped");
    Ok(())
}

/// Picks up keys rotated by other processes and drops expired revocation/replay entries.
async fn upkeep(authz: Authz) {
    let mut refresh = tokio::time::interval(KEY_REFRESH);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                if let Err(e) = authz.keys.refresh(authz.store.as_ref(), authz.clock.now_ms()).await {
                    tracing::warn!(error = %e, "key refresh failed");
                }
            }
            _ = purge.tick() => {
                if let Err(e) = authz.store.purge_expired(authz.clock.now_secs()).await {
                    tracing::warn!(error = %e, "purging expired entries failed");
                }
            }
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
