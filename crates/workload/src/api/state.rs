//! What every Workload API call shares: the CA, the latest registrations and bundles (published
//! to open streams through watch channels, so one store poll serves them all), and caller
//! attestation with its audit events.

use std::sync::Arc;
use std::time::Duration;

use mandate_authz::Authz;
use mandate_core::{Agent, AuditEvent};
use tokio::sync::watch;
use tonic::Status;

use crate::api::issue::{self, Bundles};
use crate::attest::{Peer, matching_agents};
use crate::ca::SpiffeCa;

pub(crate) struct Shared {
    pub ca: Arc<SpiffeCa>,
    pub agents: watch::Sender<Arc<Vec<Agent>>>,
    pub bundles: watch::Sender<Arc<Bundles>>,
    /// Turns true when the server stops; open streams end then.
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(ca: Arc<SpiffeCa>, stop: watch::Receiver<bool>) -> Arc<Self> {
        let (agents, _) = watch::channel(Arc::new(Vec::new()));
        let (bundles, _) = watch::channel(Arc::new(Bundles::default()));
        Arc::new(Self { ca, agents, bundles, stop })
    }

    pub fn authz(&self) -> &Authz {
        self.ca.authz()
    }

    /// The `spiffe://<trust domain>` key of bundle maps.
    pub fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.ca.trust_domain())
    }

    /// Reads the registrations from the store and tells open streams if they changed.
    pub async fn refresh_agents(&self) -> Result<Arc<Vec<Agent>>, Status> {
        let agents = Arc::new(self.authz().store.agents().await.map_err(|e| {
            tracing::error!(error = %e, "workload API: reading agents failed");
            Status::unavailable("storage is unavailable")
        })?);
        self.agents.send_if_modified(|current| replace_if_changed(current, &agents));
        Ok(agents)
    }

    /// Recomputes the bundles (the keyring may have rotated) and tells open streams if they changed.
    pub async fn refresh_bundles(&self) -> Result<Arc<Bundles>, Status> {
        let bundles = Arc::new(issue::bundles(&self.ca).await?);
        self.bundles.send_if_modified(|current| replace_if_changed(current, &bundles));
        Ok(bundles)
    }

    /// The agents the caller is, from fresh registrations. A caller that matches none, or whose
    /// process has exited, is refused with `PermissionDenied`, and the refusal is audited.
    pub async fn attest(&self, peer: &Peer, rpc: &str, correlation: &str) -> Result<Vec<Agent>, Status> {
        let agents = self.refresh_agents().await?;
        self.entitled(peer, &agents, rpc, correlation).await
    }

    /// Like [`Shared::attest`], against registrations already read.
    pub async fn entitled(
        &self,
        peer: &Peer,
        agents: &[Agent],
        rpc: &str,
        correlation: &str,
    ) -> Result<Vec<Agent>, Status> {
        if !peer.is_alive() {
            return Err(self.refuse(peer, rpc, correlation, "the calling process has exited").await);
        }
        let matched = matching_agents(agents, &peer.selectors());
        if matched.is_empty() {
            return Err(self.refuse(peer, rpc, correlation, "no registered agent matches the caller").await);
        }
        Ok(matched)
    }

    /// Records a refused attestation (`workload.attest`, deny) and returns the status to answer.
    pub async fn refuse(&self, peer: &Peer, rpc: &str, correlation: &str, why: &str) -> Status {
        let detail = format!("{why}; rpc={rpc} {} selectors={}", peer.describe(), peer.selectors().join(","));
        let event = AuditEvent::allow("workload.attest", correlation).refused("permission_denied", &detail);
        match self.authz().log.record(event).await {
            Ok(_) => Status::permission_denied(format!("{why}: no identity issued")),
            Err(e) => audit_unavailable(&e),
        }
    }

    /// Records a request refused for a missing required field (`reason: invalid_request`) and
    /// returns the `InvalidArgument` to answer.
    pub async fn invalid(&self, peer: &Peer, action: &str, rpc: &str, correlation: &str, why: &str) -> Status {
        let detail = format!("{why}; rpc={rpc} {}", peer.describe());
        let event = AuditEvent::allow(action, correlation).refused("invalid_request", &detail);
        match self.authz().log.record(event).await {
            Ok(_) => Status::invalid_argument(why),
            Err(e) => audit_unavailable(&e),
        }
    }

    /// Records which process an issuance is for (`workload.attest`, allow), sharing the
    /// correlation id of the issuance events, so the log ties each SVID to a uid, pid and path.
    pub async fn record_attested(
        &self,
        peer: &Peer,
        agents: &[Agent],
        rpc: &str,
        correlation: &str,
    ) -> Result<(), Status> {
        let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
        let mut event = AuditEvent::allow("workload.attest", correlation).with_detail(format!(
            "rpc={rpc} {} agents={}",
            peer.describe(),
            names.join(",")
        ));
        if let Some(first) = agents.first() {
            event.agent = Some(first.spiffe_id.to_string());
            event.owner = Some(first.owner.to_string());
        }
        self.authz().log.record(event).await.map(|_| ()).map_err(|e| audit_unavailable(&e))
    }

    /// Keeps registrations and bundles current for open streams until the server stops.
    pub async fn poll(self: Arc<Self>, every: Duration) {
        let mut stop = self.stop.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            // Failures are logged where they happen; streams keep what they have until the next poll.
            let _ = self.refresh_agents().await;
            let _ = self.refresh_bundles().await;
        }
    }
}

fn replace_if_changed<T: PartialEq>(current: &mut Arc<T>, fresh: &Arc<T>) -> bool {
    if **current == **fresh {
        return false;
    }
    *current = Arc::clone(fresh);
    true
}

pub(crate) fn audit_unavailable(e: &impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "workload API: audit log unavailable");
    Status::unavailable("the audit log is unavailable; nothing was issued")
}

/// A fresh id tying together the audit events of one call (or one stream).
pub(crate) fn correlation_id() -> String {
    let mut bytes = [0u8; 12];
    mandate_crypto::secret::fill_random(&mut bytes);
    format!("wl-{}", hex::encode(bytes))
}
