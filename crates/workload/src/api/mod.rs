//! The SPIFFE Workload API served with tonic over a unix socket: callers are attested from the
//! kernel's credentials for their connection ([`socket`], [`crate::attest`]), every request must
//! carry the `workload.spiffe.io: true` header, and SVIDs come from the CA with every issuance
//! and refusal audited. See `docs/workload-identity.md`.

mod authority;
mod claims;
mod issue;
mod service;
pub mod socket;
mod state;
mod stream;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

pub use service::{SECURITY_HEADER, require_security_header};
pub use socket::{PeerInfo, SOCKET_MODE, SocketError};

use crate::api::pb::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::api::service::WorkloadService;
use crate::api::socket::BoundSocket;
use crate::api::state::Shared;
use crate::ca::SpiffeCa;

/// Code generated from `proto/workload.proto` (which has no package, hence `_`).
#[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
pub mod pb {
    tonic::include_proto!("_");
}

/// How long shutdown waits for connections to finish before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WorkloadApiConfig {
    pub socket_path: PathBuf,
    /// How often open streams are checked against changed registrations and bundles (a fetch
    /// also triggers that check at once).
    pub refresh: Duration,
}

impl WorkloadApiConfig {
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self { socket_path: socket_path.into(), refresh: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("workload API server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("workload API server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running Workload API server. Stop it with [`WorkloadApiServer::shutdown`], which also
/// removes its socket file.
pub struct WorkloadApiServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    path: PathBuf,
    identity: (u64, u64),
}

impl WorkloadApiServer {
    /// Binds the socket (replacing a stale one) and starts serving on the current runtime.
    pub async fn start(ca: Arc<SpiffeCa>, config: WorkloadApiConfig) -> Result<Self, WorkloadApiError> {
        let (listener, path, identity) = BoundSocket::bind(&config.socket_path).await?.into_parts();
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Shared::new(ca, stop_rx.clone());
        tokio::spawn(Arc::clone(&shared).poll(config.refresh));
        let incoming = ReceiverStream::new(socket::accept_loop(listener, stop_rx.clone()));
        let service = SpiffeWorkloadApiServer::with_interceptor(WorkloadService { shared }, require_security_header);
        let mut stopped = stop_rx;
        let task = tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        tracing::info!(path = %path.display(), "workload API listening");
        Ok(Self { stop: stop_tx, task, path, identity })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends open streams, waits (briefly) for connections to close, and
    /// removes the socket file.
    pub async fn shutdown(self) -> Result<(), WorkloadApiError> {
        let _ = self.stop.send(true);
        let mut task = self.task;
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(joined) => joined.map_err(WorkloadApiError::from).and_then(|r| r.map_err(WorkloadApiError::from)),
            Err(_) => {
                tracing::warn!("workload API: connections still open after the grace period; closing them");
                task.abort();
                Ok(())
            }
        };
        BoundSocket::remove_file(&self.path, self.identity);
        result
    }
}
