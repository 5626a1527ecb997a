//! The job runner: runs the store's durable jobs through [`Gateway::invoke`].
//!
//! One runner per server with a runtime. Its loop claims pending jobs in
//! batches (woken at once when this server accepts a job, polling otherwise,
//! since another server may have accepted it), invokes each on its agent's
//! default instance in a task of its own, and hands the outcomes to a writer
//! that records them in batches. While jobs run it renews their leases; a job
//! missing from a renewal was cancelled (or lost its lease) and its request
//! to the agent is aborted. A cancel on this server aborts it at once.
//!
//! What ends a job:
//! - the agent's answer → `completed`;
//! - the agent's error status, an unreadable answer, or the job's timeout →
//!   `failed`, not retried (the agent did run; running it again is the
//!   caller's decision);
//! - no ready replica, an unreachable replica, no instance yet → retried
//!   with exponential backoff, `failed` after [`JobRunnerConfig::max_attempts`].
//!
//! Delivery is **at least once**: a job in flight on a server that dies is
//! run again once its lease runs out (at once when the same server restarts:
//! it releases its previous process's jobs at start). Every request carries
//! the job's ID as `Idempotency-Key` and `X-Hangar-Job-Id`, so agents can
//! dedupe a redelivery.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hangar_core::model::{Instance, Job};
use hangar_store::{job_error, JobOutcome, JobResult, Store};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Classify;
use crate::{Gateway, InvokeError, RouteKey};

/// Header that carries the job's ID to the agent, for dedupe.
pub const JOB_ID_HEADER: &str = "x-hangar-job-id";
/// The conventional idempotency header, also set to the job's ID.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct JobRunnerConfig {
    /// Most jobs of one agent running at once, across every server sharing
    /// the database.
    pub per_agent_concurrency: u32,
    /// Most jobs this server runs at once.
    pub max_in_flight: usize,
    /// Most jobs claimed per store call.
    pub claim_batch: u32,
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// How often to look for jobs when not woken (other servers' jobs, due
    /// retries).
    pub poll: Duration,
    /// Attempts before an infrastructure failure is final.
    pub max_attempts: u32,
    /// The first retry's backoff; doubled per attempt.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl Default for JobRunnerConfig {
    fn default() -> Self {
        Self {
            per_agent_concurrency: 32,
            max_in_flight: 512,
            claim_batch: 128,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The backoff before attempt `attempts + 1`: `base × 2^(attempts − 1)`,
/// at most `max`.
#[must_use]
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1 << exp).min(max)
}

/// See the module docs. Cheap to clone; one per server.
#[derive(Clone)]
pub struct JobRunner {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    gateway: Arc<Gateway>,
    config: JobRunnerConfig,
    /// This process's lease owner: `<node>/<boot>`.
    owner: String,
    /// `<node>/`: what this server's earlier processes' owners start with.
    node_prefix: String,
    wake: Notify,
    /// Jobs running here → what aborts them.
    running: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}

/// Where a job goes: its agent's default instance (none yet: retried), or
/// why it cannot run at all.
type Target = Result<Option<Arc<Instance>>, String>;

/// What a job's task reports: its ID and, unless it was aborted, how it ended.
type Finished = (String, Option<JobOutcome>);

impl JobRunner {
    /// A runner for this server. `node_id` names the server across restarts
    /// (kept in its data dir), so a restart can release what the previous
    /// process held.
    #[must_use]
    pub fn new(
        store: Store,
        gateway: Arc<Gateway>,
        node_id: &str,
        config: JobRunnerConfig,
    ) -> Self {
        let boot = hangar_core::id::new_id(hangar_core::id::IdKind::Request);
        Self {
            shared: Arc::new(Shared {
                store,
                gateway,
                config,
                owner: format!("{node_id}/{boot}"),
                node_prefix: format!("{node_id}/"),
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The lease owner this process claims jobs as.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// A job was accepted (or a slot freed): look for work now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// A job was cancelled: if it runs here, abort its request now.
    pub fn cancel(&self, job_id: &str) {
        if let Some(abort) = self.shared.running().remove(job_id) {
            let _ = abort.send(());
        }
    }

    /// Runs the loop until `shutdown`; then it stops claiming, lets running
    /// jobs finish (up to `drain`), records them, releases what is left
    /// (another server, or this one's next start, runs it again) and
    /// returns.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) {
        let shared = &self.shared;
        match shared
            .store
            .release_jobs(&shared.node_prefix, &shared.owner)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                jobs = n,
                "released jobs held by this server's previous process"
            ),
            Err(err) => tracing::warn!(%err, "could not release the previous process's jobs"),
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let writer = tokio::spawn(write_outcomes(self.clone(), done_rx));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut renew = tokio::time::interval(shared.config.lease / 3);
        let mut reclaim = tokio::time::interval(shared.config.lease / 2);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = shared.config.max_in_flight.saturating_sub(tasks.len());
            let mut more = false;
            if free > 0 {
                let want = u32::try_from(free)
                    .unwrap_or(u32::MAX)
                    .min(shared.config.claim_batch);
                match shared
                    .store
                    .claim_jobs(
                        &shared.owner,
                        want,
                        shared.config.per_agent_concurrency,
                        shared.config.lease,
                    )
                    .await
                {
                    Ok(jobs) => {
                        more = u32::try_from(jobs.len()).unwrap_or(u32::MAX) == want;
                        self.start_jobs(jobs, &mut tasks, &done_tx).await;
                    }
                    Err(err) => tracing::warn!(%err, "claiming jobs failed"),
                }
            }
            if more && tasks.len() < shared.config.max_in_flight {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = shared.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    while tasks.try_join_next().is_some() {}
                }
                _ = renew.tick() => self.renew().await,
                _ = reclaim.tick() => {
                    match shared.store.reclaim_expired_jobs().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(jobs = n, "reclaimed jobs whose lease ran out"),
                        Err(err) => tracing::warn!(%err, "reclaiming expired jobs failed"),
                    }
                }
                () = tokio::time::sleep(shared.config.poll) => {}
            }
        }
        // Stopping: let running jobs end within `drain`, record them, and
        // release whatever is still running so another server takes it now.
        let drained =
            tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(done_tx);
        let _ = writer.await;
        match shared.store.release_jobs(&shared.owner, "").await {
            Ok(n) if n > 0 => tracing::info!(jobs = n, "released unfinished jobs"),
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "could not release unfinished jobs"),
        }
    }

    /// Starts a task per claimed job, resolving each agent's default
    /// instance once per batch ([`Gateway::resolve`], as invokes do).
    async fn start_jobs(
        &self,
        jobs: Vec<Job>,
        tasks: &mut JoinSet<()>,
        done: &mpsc::UnboundedSender<Finished>,
    ) {
        let mut instances: HashMap<String, Target> = HashMap::new();
        for job in jobs {
            if !instances.contains_key(&job.agent_id) {
                let key = RouteKey::Agent(job.agent_id.clone());
                let entry = match self
                    .shared
                    .gateway
                    .resolve(&key, Some(&job.organization_id))
                    .await
                {
                    Ok(Some(resolved)) => Ok(resolved.instance),
                    Ok(None) => Err("the agent was deleted".to_owned()),
                    Err(err) => {
                        tracing::warn!(%err, job = %job.id, "looking the job's agent up failed");
                        Ok(None)
                    }
                };
                instances.insert(job.agent_id.clone(), entry);
            }
            let target = instances.get(&job.agent_id).cloned().unwrap_or(Ok(None));
            let (abort_tx, abort_rx) = oneshot::channel();
            self.shared.running().insert(job.id.clone(), abort_tx);
            let runner = self.clone();
            let done = done.clone();
            tasks.spawn(async move {
                let id = job.id.clone();
                let outcome = runner.run_job(job, target, abort_rx).await;
                runner.shared.running().remove(&id);
                let _ = done.send((id, outcome));
            });
        }
    }

    /// One attempt; `None` when aborted (cancelled or lost).
    async fn run_job(
        &self,
        job: Job,
        target: Target,
        abort: oneshot::Receiver<()>,
    ) -> Option<JobOutcome> {
        let config = &self.shared.config;
        if job.attempts > config.max_attempts {
            return Some(JobOutcome::Failed {
                error: job.error.clone().unwrap_or_else(|| {
                    job_error("JOB_ATTEMPTS_EXHAUSTED", "the job's attempts are used up")
                }),
                instance_id: None,
            });
        }
        let instance = match target {
            Ok(Some(instance)) => instance,
            Ok(None) => {
                return Some(self.retry_or_fail(
                    &job,
                    job_error("AGENT_UNAVAILABLE", "the agent has no running instance"),
                    None,
                ))
            }
            Err(why) => {
                return Some(JobOutcome::Failed {
                    error: job_error("AGENT_NOT_FOUND", why),
                    instance_id: None,
                })
            }
        };
        let headers = delivery_headers(&job.headers, &job.id);
        let timeout = Duration::from_millis(job.timeout_ms.max(1));
        let invoked = tokio::select! {
            invoked = self.shared.gateway.invoke(&instance, &job.input, timeout, &headers) => invoked,
            // Dropping the invocation closes its connection: the agent's
            // request is aborted.
            _ = abort => return None,
        };
        Some(match invoked {
            Ok(done) => JobOutcome::Completed {
                output: done.output,
                usage: done.usage,
                instance_id: instance.id.clone(),
                replica_id: done.replica_id,
                latency: done.latency,
            },
            Err(err) => {
                let (error, retry) = invoke_failure(&err);
                if retry {
                    self.retry_or_fail(&job, error, Some(instance.id.clone()))
                } else {
                    JobOutcome::Failed {
                        error,
                        instance_id: Some(instance.id.clone()),
                    }
                }
            }
        })
    }

    fn retry_or_fail(&self, job: &Job, error: Value, instance_id: Option<String>) -> JobOutcome {
        let config = &self.shared.config;
        if job.attempts >= config.max_attempts {
            JobOutcome::Failed { error, instance_id }
        } else {
            JobOutcome::Retry {
                error,
                after: backoff(job.attempts, config.backoff, config.max_backoff),
            }
        }
    }

    /// Renews the leases of this server's jobs; aborts those no longer ours.
    async fn renew(&self) {
        let held = match self
            .shared
            .store
            .renew_job_leases(&self.shared.owner, self.shared.config.lease)
            .await
        {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(%err, "renewing job leases failed");
                return;
            }
        };
        let held: std::collections::HashSet<String> = held.into_iter().collect();
        // Claims happen on this same loop, so every job in `running` was
        // claimed before this renewal: one it did not renew is not ours.
        let lost: Vec<String> = self
            .shared
            .running()
            .keys()
            .filter(|id| !held.contains(*id))
            .cloned()
            .collect();
        for id in lost {
            tracing::info!(job = %id, "job cancelled or lost its lease: aborting it");
            self.cancel(&id);
        }
    }
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records finished attempts in batches: one transaction for whatever has
/// arrived since the last one. A freed slot may let another job of the same
/// agent in, so the loop is woken after each batch.
async fn write_outcomes(runner: JobRunner, mut done: mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::new();
    while done.recv_many(&mut batch, 512).await > 0 {
        let results: Vec<JobResult> = batch
            .drain(..)
            .filter_map(|(job_id, outcome)| outcome.map(|outcome| JobResult { job_id, outcome }))
            .collect();
        if results.is_empty() {
            continue;
        }
        let mut attempt = 0;
        loop {
            match runner
                .shared
                .store
                .finish_jobs(&runner.shared.owner, &results)
                .await
            {
                Ok(_) => break,
                // Leases outlive a short database outage; after that the jobs
                // are reclaimed and run again.
                Err(err) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(%err, attempt, "recording finished jobs failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => {
                    tracing::error!(%err, jobs = results.len(), "recording finished jobs failed; they will run again when their leases run out");
                    break;
                }
            }
        }
        runner.wake();
    }
}

/// The caller's headers plus the job's ID under [`IDEMPOTENCY_HEADER`] and
/// [`JOB_ID_HEADER`] (replacing any the caller set, whatever their case).
#[must_use]
pub fn delivery_headers(
    headers: &BTreeMap<String, String>,
    job_id: &str,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = headers
        .iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case(JOB_ID_HEADER) && !k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(IDEMPOTENCY_HEADER.to_owned(), job_id.to_owned());
    out.insert(JOB_ID_HEADER.to_owned(), job_id.to_owned());
    out
}

/// A failed invocation as a job's error, and whether it is worth retrying
/// (the infrastructure's failures, not the agent's): its row of the one
/// table ([`crate::error`]), so a stored failure answers as a live one.
#[must_use]
pub fn invoke_failure(err: &InvokeError) -> (Value, bool) {
    let class = err.class();
    if let Some(cause) = err.internal_cause() {
        tracing::warn!(error = %cause, code = class.code, "an invocation failed");
    }
    let mut error = job_error(class.code, err.public_message());
    if let InvokeError::AgentStatus { status, body } = err {
        error["details"] = serde_json::json!({"agent_status": status, "agent_body": body});
    }
    (error, class.retryable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=8).map(|a| backoff(a, base, max).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX, base, max), max);
        assert_eq!(backoff(0, base, max), base);
    }

    #[test]
    fn delivery_headers_carry_the_job_id_whatever_the_caller_sent() {
        let caller = BTreeMap::from([
            ("Idempotency-Key".to_owned(), "mine".to_owned()),
            ("X-Hangar-Job-Id".to_owned(), "forged".to_owned()),
            ("x-trace".to_owned(), "t".to_owned()),
        ]);
        let out = delivery_headers(&caller, "job_1");
        assert_eq!(
            out,
            BTreeMap::from([
                ("idempotency-key".to_owned(), "job_1".to_owned()),
                ("x-hangar-job-id".to_owned(), "job_1".to_owned()),
                ("x-trace".to_owned(), "t".to_owned()),
            ])
        );
    }

    #[test]
    fn only_infrastructure_failures_are_retried() {
        let retried = |e: InvokeError| invoke_failure(&e).1;
        assert!(retried(InvokeError::NoReplica));
        assert!(retried(InvokeError::Unreachable("refused".into())));
        assert!(!retried(InvokeError::Timeout(Duration::from_secs(1))));
        assert!(!retried(InvokeError::BadResponse("x".into())));
        let (error, retry) = invoke_failure(&InvokeError::AgentStatus {
            status: 500,
            body: "boom".into(),
        });
        assert!(!retry);
        assert_eq!(error["code"], "AGENT_ERROR");
        assert_eq!(error["details"]["agent_status"], 500);
    }
}
