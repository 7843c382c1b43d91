//! The single audit writer. Callers hand it a state change and the event recording it, and get
//! an answer once both are durable. Requests that arrive while a commit is in flight form the
//! next batch (group commit), so one fsync serves many requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mandate_core::{AuditEvent, Clock};
use mandate_store::{EntryEncoder, JobOutcome, Mutation, MutationError, Store, StoredCheckpoint, WriteJob};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::checkpoint::{CheckpointError, CheckpointSigner, build_checkpoint};
use crate::encode::AuditEncoder;

/// Most jobs per transaction; bounds the latency one batch can add.
const MAX_BATCH: usize = 1024;
/// Requests allowed to wait for the writer before callers feel back-pressure.
const QUEUE_DEPTH: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// When the writer signs a checkpoint on its own.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_events: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self { every_events: 1000, every: Duration::from_secs(10) }
    }
}

struct Pending {
    mutation: Option<Mutation>,
    event: AuditEvent,
    reply: oneshot::Sender<Result<JobOutcome, AuditError>>,
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    signer: CheckpointSigner,
    clock: Arc<dyn Clock>,
    checkpoint_running: AtomicBool,
}

impl AuditLog {
    /// Starts the writer task on the current Tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        signer: CheckpointSigner,
        clock: Arc<dyn Clock>,
        policy: CheckpointPolicy,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let shared = Arc::new(Shared { store, signer, clock, checkpoint_running: AtomicBool::new(false) });
        tokio::spawn(run_writer(rx, Arc::clone(&shared), policy));
        Self { tx, shared }
    }

    /// Appends an event that records no state change; returns its sequence number.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        Ok(self.submit(None, event).await?.seq)
    }

    /// Applies `mutation` and appends `event` atomically. A refused mutation changes nothing and
    /// its event is logged as a refusal; the refusal is returned as the inner error.
    pub async fn apply(&self, mutation: Mutation, event: AuditEvent) -> Result<Result<u64, MutationError>, AuditError> {
        let outcome = self.submit(Some(mutation), event).await?;
        Ok(outcome.result.map(|()| outcome.seq))
    }

    async fn submit(&self, mutation: Option<Mutation>, event: AuditEvent) -> Result<JobOutcome, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { mutation, event, reply })
            .await
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        answer.await.map_err(|_| AuditError::Unavailable("the audit writer dropped the request".into()))?
    }

    /// Signs a checkpoint covering everything appended so far.
    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, AuditError> {
        let shared = &self.shared;
        Ok(build_checkpoint(shared.store.as_ref(), &shared.signer, shared.clock.now_ms()).await?)
    }

    /// Appends waiting for the writer to pick them up (the batch being committed is not
    /// counted); a queue that stays deep means the store cannot keep up.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }

    /// False once the writer task has stopped: every append would then fail.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    pub fn signer(&self) -> &CheckpointSigner {
        &self.shared.signer
    }

    pub fn store(&self) -> &dyn Store {
        self.shared.store.as_ref()
    }
}

async fn run_writer(mut rx: mpsc::Receiver<Pending>, shared: Arc<Shared>, policy: CheckpointPolicy) {
    let encoder: Arc<dyn EntryEncoder> = Arc::new(AuditEncoder);
    let mut since_checkpoint = 0u64;
    let mut next_timed = Instant::now() + policy.every;
    loop {
        let first = tokio::select! {
            received = rx.recv() => match received {
                Some(p) => p,
                None => break,
            },
            () = tokio::time::sleep_until(next_timed) => {
                if since_checkpoint > 0 {
                    spawn_checkpoint(&shared);
                    since_checkpoint = 0;
                }
                next_timed = Instant::now() + policy.every;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        since_checkpoint += batch.len() as u64;
        commit_batch(&shared, &encoder, batch).await;
        if since_checkpoint >= policy.every_events {
            spawn_checkpoint(&shared);
            since_checkpoint = 0;
            next_timed = Instant::now() + policy.every;
        }
    }
    if since_checkpoint > 0
        && let Err(e) = build_checkpoint(shared.store.as_ref(), &shared.signer, shared.clock.now_ms()).await
    {
        tracing::warn!(error = %e, "final audit checkpoint failed");
    }
}

async fn commit_batch(shared: &Shared, encoder: &Arc<dyn EntryEncoder>, batch: Vec<Pending>) {
    let ts_ms = shared.clock.now_ms();
    let mut replies = Vec::with_capacity(batch.len());
    let jobs = batch
        .into_iter()
        .map(|p| {
            replies.push(p.reply);
            WriteJob { mutation: p.mutation, event: p.event, ts_ms }
        })
        .collect();
    match shared.store.commit(jobs, Arc::clone(encoder)).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up waiting still has its event durably logged.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "audit commit failed; requests in this batch are refused");
            for reply in replies {
                let _ = reply.send(Err(AuditError::Unavailable(e.to_string())));
            }
        }
    }
}

/// Checkpoints run beside the writer so catching up never stalls appends.
fn spawn_checkpoint(shared: &Arc<Shared>) {
    if shared.checkpoint_running.swap(true, Ordering::AcqRel) {
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(e) = build_checkpoint(shared.store.as_ref(), &shared.signer, shared.clock.now_ms()).await {
            tracing::warn!(error = %e, "audit checkpoint failed");
        }
        shared.checkpoint_running.store(false, Ordering::Release);
    });
}
