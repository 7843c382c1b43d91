//! The streaming RPCs' background tasks. Each message carries the caller's full current state;
//! a new one goes out when an SVID reaches half its lifetime, when the caller's registrations
//! change, or when the bundles change. The stream ends with `PermissionDenied` once the caller
//! is no longer entitled, and quietly when the client leaves or the server stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mandate_core::Agent;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::issue::{self, Bundles};
use crate::api::pb::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};
use crate::api::state::{Shared, correlation_id};
use crate::attest::Peer;
use crate::bundle::concat_der;
use crate::svid::X509Svid;

/// Messages a slow client may fall behind by before the task waits for it.
const STREAM_DEPTH: usize = 4;
/// Never renew more often than this, whatever the SVID lifetime.
const MIN_RENEW_WAIT: Duration = Duration::from_millis(500);

pub(crate) type Outgoing<T> = ReceiverStream<Result<T, Status>>;

/// A stream's view of registration and bundle changes. Taken before the caller is attested, so
/// a change that lands while the first message is being prepared is not missed.
pub(crate) struct Changes {
    agents: watch::Receiver<Arc<Vec<Agent>>>,
    bundles: watch::Receiver<Arc<Bundles>>,
}

impl Changes {
    pub fn watch(shared: &Shared) -> Self {
        Self { agents: shared.agents.subscribe(), bundles: shared.bundles.subscribe() }
    }
}

/// The X.509-SVIDs of one caller, as last sent.
pub(crate) struct X509State {
    agents: Vec<Agent>,
    svids: Vec<X509Svid>,
    bundles: Arc<Bundles>,
    renew_at_ms: i64,
}

impl X509State {
    /// Issues an X.509-SVID for each agent (audited by the CA) and notes when to renew them:
    /// at half the lifetime the earliest-expiring one has left.
    pub async fn issue(shared: &Shared, agents: Vec<Agent>, correlation: &str) -> Result<Self, Status> {
        let now = shared.authz().clock.now_ms();
        let mut svids = Vec::with_capacity(agents.len());
        for agent in &agents {
            svids.push(issue::x509_svid(&shared.ca, agent, correlation).await?);
        }
        let earliest = svids.iter().map(|s| s.expires_at_ms).min().unwrap_or(now);
        let renew_at_ms = now + (earliest - now).max(0) / 2;
        Ok(Self { agents, svids, bundles: shared.bundles.borrow().clone(), renew_at_ms })
    }

    pub fn response(&self) -> X509svidResponse {
        let svids = self
            .svids
            .iter()
            .zip(&self.agents)
            .map(|(svid, agent)| X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: concat_der(&svid.cert_chain_der),
                x509_svid_key: svid.private_key_pkcs8_der.to_vec(),
                bundle: self.bundles.x509_der.clone(),
                // Agent names are unique, so they are valid hints and let clients pick by name.
                hint: agent.name.to_string(),
            })
            .collect();
        X509svidResponse { svids, crl: Vec::new(), federated_bundles: HashMap::new() }
    }
}

/// Sends `first` now and keeps the caller's X.509-SVIDs current afterwards. Renewals and
/// refusals are audited under the stream's `correlation` id, which the opening
/// `workload.attest` event ties to the calling process.
pub(crate) fn x509_svids(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    changes: Changes,
    first: X509State,
    correlation: String,
) -> Outgoing<X509svidResponse> {
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    tokio::spawn(async move {
        let mut state = first;
        if tx.send(Ok(state.response())).await.is_err() {
            return;
        }
        let Changes { agents: mut agents_rx, bundles: mut bundles_rx } = changes;
        let mut stop = shared.stop.clone();
        loop {
            let left_ms = state.renew_at_ms - shared.authz().clock.now_ms();
            let wait = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)).max(MIN_RENEW_WAIT);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tx.closed() => return,
                changed = agents_rx.changed() => if changed.is_err() { return },
                changed = bundles_rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
            let agents = agents_rx.borrow_and_update().clone();
            let bundles = bundles_rx.borrow_and_update().clone();
            let next = match shared.entitled(&peer, &agents, "FetchX509SVID", &correlation).await {
                Ok(entitled) if entitled != state.agents || shared.authz().clock.now_ms() >= state.renew_at_ms => {
                    X509State::issue(&shared, entitled, &correlation).await
                }
                Ok(_) if bundles != state.bundles => Ok(X509State { bundles, ..state }),
                Ok(_) => continue,
                Err(status) => Err(status),
            };
            match next {
                Ok(next) => state = next,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            if tx.send(Ok(state.response())).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

pub(crate) fn x509_bundles_response(shared: &Shared, bundles: &Bundles) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: HashMap::from([(shared.trust_domain_id(), bundles.x509_der.clone())]),
    }
}

pub(crate) fn jwt_bundles_response(shared: &Shared, bundles: &Bundles) -> JwtBundlesResponse {
    JwtBundlesResponse { bundles: HashMap::from([(shared.trust_domain_id(), bundles.jwt_jwks.clone())]) }
}

/// Sends the bundles now and again whenever they change, while the caller stays entitled.
/// Only the part `render` puts in the message counts as a change.
pub(crate) fn bundles<T>(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    changes: Changes,
    rpc: &'static str,
    render: fn(&Shared, &Bundles) -> T,
) -> Outgoing<T>
where
    T: Clone + PartialEq + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    tokio::spawn(async move {
        let Changes { agents: mut agents_rx, bundles: mut bundles_rx } = changes;
        let mut stop = shared.stop.clone();
        let mut last = render(&shared, &bundles_rx.borrow_and_update());
        if tx.send(Ok(last.clone())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tx.closed() => return,
                changed = agents_rx.changed() => if changed.is_err() { return },
                changed = bundles_rx.changed() => if changed.is_err() { return },
            }
            let agents = agents_rx.borrow_and_update().clone();
            if let Err(status) = shared.entitled(&peer, &agents, rpc, &correlation_id()).await {
                let _ = tx.send(Err(status)).await;
                return;
            }
            let current = render(&shared, &bundles_rx.borrow_and_update());
            if current == last {
                continue;
            }
            last = current.clone();
            if tx.send(Ok(current)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
