//! Group commit for accepted jobs.
//!
//! An async invoke is answered `202` only once its job is stored: that is the
//! promise that an accepted job is never lost. Stored one by one, every accept
//! is a write transaction of its own, and on SQLite every one takes the single
//! write lock in turn — the ceiling of the accept rate. [`JobIntake`] keeps the
//! promise with one transaction per *batch*: one task takes whatever accepts
//! are waiting, stores them in one transaction, then
//! answers each. Under no load a batch is one job and nothing waits for a
//! timer; under load a batch grows with the time the previous commit took.
//!
//! Jobs with an idempotency key skip the batch ([`Store::create_job`]): a
//! repeated key must find the first job, and a batch fails as a whole. When a
//! batch fails, its jobs are retried one by one, so one bad job fails only its
//! own request.

use hangar_core::model::Job;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::jobs::PreparedJob;
use crate::{NewJob, Result, Store, StoreError};

/// Most jobs stored in one transaction.
const MAX_BATCH: usize = 256;

/// A job waiting for its batch (its ID already fixed), and where its
/// answer goes.
type Pending = (PreparedJob, oneshot::Sender<Result<Job>>);

/// The handle that accepts jobs through the batching task. Cheap to clone.
#[derive(Clone)]
pub struct JobIntake {
    store: Store,
    tx: mpsc::Sender<Pending>,
}

impl JobIntake {
    /// Starts the batching task (on the current tokio runtime); it runs
    /// until `shutdown` (or until the last handle is dropped), and the
    /// handle returned ends once it has. At shutdown it takes no more jobs
    /// but stores and answers every one already handed to it; accepts that
    /// come later store their job themselves, one by one, so a request
    /// still draining never loses its job.
    #[must_use]
    pub fn start(store: Store, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let task = tokio::spawn(run(store.clone(), rx, shutdown));
        (Self { store, tx }, task)
    }

    /// Stores a job; `false` in the second field when its idempotency key
    /// was used before and this is that earlier job. Returns once the job is
    /// committed.
    pub async fn accept(&self, new: NewJob) -> Result<(Job, bool)> {
        if new.idempotency_key.is_some() || new.run_by.is_some() {
            return self.store.create_job(new).await;
        }
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError((prepared, _))) =
            self.tx.send((PreparedJob::new(new), answer)).await
        {
            // The intake is closed (the server is shutting down) or gone:
            // store it here.
            return self
                .store
                .insert_prepared_one(&prepared)
                .await
                .map(|job| (job, true));
        }
        match answered.await {
            Ok(result) => result.map(|job| (job, true)),
            Err(_) => Err(StoreError::Corrupt {
                what: "job intake",
                detail: "the batching task stopped before answering".into(),
            }),
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, MAX_BATCH) => received,
            () = shutdown.cancelled(), if !rx.is_closed() => {
                // Later sends fail (and store their job themselves); what
                // was sent before is still received below.
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let (prepared, answers): (Vec<PreparedJob>, Vec<_>) = batch.drain(..).unzip();
        match store.insert_prepared(&prepared).await {
            Ok(()) => {
                for (p, answer) in prepared.into_iter().zip(answers) {
                    let _ = answer.send(Ok(p.job));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = prepared.len(), "storing a batch of jobs failed; storing them one by one");
                for (p, answer) in prepared.iter().zip(answers) {
                    let _ = answer.send(store.insert_prepared_one(p).await);
                }
            }
        }
    }
}
