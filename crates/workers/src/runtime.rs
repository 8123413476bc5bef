//! The [`Worker`]: claims jobs of the kinds it can run in batches, runs up to
//! `concurrency` at once, heartbeats while they run, enforces each job's timeout, turns a
//! handler's panic into a recorded failure, and shuts down gracefully.
//!
//! # One attempt
//! ```text
//! claim ──► spawn handler task ─┬─ handler returns ──────────► complete / fail(outcome)
//!                               ├─ heartbeat: cancel asked ──► abort, fail(Cancel)
//!                               ├─ heartbeat: lease lost ────► abort, report nothing
//!                               ├─ timeout ──────────────────► abort, fail(Retry "timed out")
//!                               ├─ handler panicked ─────────► fail(Retry "panicked: ..")
//!                               └─ shutdown grace over ──────► abort, release (no attempt used)
//! ```
//! Every report is fenced by the lease's token, so a worker that lost its lease (a long GC
//! pause, a partition) can never overwrite the job's newer attempt. Completions go through one
//! task per worker that commits everything waiting with `Queue::complete_many`: short jobs
//! finishing together share a commit, and a lone completion is committed at once.
//!
//! # Shutdown
//! When the shutdown future resolves: `/readyz` turns 503, no more claims; running jobs get
//! `shutdown_grace` to finish; then the rest are aborted and their leases released, so another
//! worker takes them at once instead of after the lease expires.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_queue::{ClaimRequest, JobState, Lease, Outcome, Queue};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::completer::Completer;
use crate::config::WorkerConfig;
use crate::error::Result;
use crate::handler::{ErasedHandler, JobContext, JobError, Registry};
use crate::metrics::{self as m, Readiness};

/// Longest wait after a failed claim.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(5);

/// How attempts ended during one [`Worker::run`], by outcome label (see [`crate::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Counts by outcome (`completed`, `retry`, `dead`, `failed`, `snoozed`, `cancelled`,
    /// `timed_out`, `panicked`, `lease_lost`, `released`, `report_failed`).
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl WorkerStats {
    /// Attempts that ended with `outcome`.
    #[must_use]
    pub fn count(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }

    /// All attempts.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

/// A worker process's job loop.
#[derive(Debug)]
pub struct Worker {
    queue: Arc<Queue>,
    registry: Arc<Registry>,
    config: WorkerConfig,
    name: String,
    readiness: Readiness,
}

impl Worker {
    /// A worker running `registry`'s kinds from `queue`.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for a bad configuration or an empty registry.
    pub fn new(queue: Arc<Queue>, registry: Arc<Registry>, config: WorkerConfig) -> Result<Self> {
        config.validate()?;
        if registry.kinds().is_empty() {
            return Err(crate::Error::invalid(
                "worker.kinds",
                "the registry has no handlers",
            ));
        }
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()));
        Ok(Worker {
            queue,
            registry,
            config,
            name,
            readiness: Readiness::default(),
        })
    }

    /// Readiness shared with the metrics listener (turns false when shutdown starts).
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Uses `readiness` (e.g. one shared by every component of the process).
    #[must_use]
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The name on this worker's leases.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully (see the module doc).
    ///
    /// # Errors
    /// None today (claim and report errors are logged, counted and retried); the `Result`
    /// leaves room for fatal conditions.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<WorkerStats> {
        let mut stats = WorkerStats::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks: JoinSet<&'static str> = JoinSet::new();
        // Short jobs finishing together share a completion commit.
        let (completer, completions) = Completer::spawn(Arc::clone(&self.queue));
        let kinds = Some(self.registry.kinds());
        let concurrency = self.config.concurrency;
        let mut backoff = Duration::from_millis(50);
        tracing::info!(worker = %self.name, kinds = ?kinds, concurrency, "worker started");
        tokio::pin!(shutdown);
        'run: loop {
            while let Some(done) = tasks.try_join_next() {
                record(&mut stats, done);
            }
            let free = concurrency - tasks.len();
            let mut idle = false;
            if free > 0 {
                let req = ClaimRequest {
                    worker: self.name.clone(),
                    kinds: kinds.clone(),
                    max: free.min(self.config.batch()),
                    lease: self.config.lease(),
                };
                // A claim is never dropped half-way: its leases would be stranded until
                // they expire.
                match self.queue.claim(&req).await {
                    Ok(leases) => {
                        backoff = Duration::from_millis(50);
                        idle = leases.len() < req.max;
                        for lease in leases {
                            self.spawn_attempt(&mut tasks, lease, &stop_rx, &completer);
                        }
                    }
                    Err(e) => {
                        metrics::counter!(m::CLAIM_ERRORS).increment(1);
                        tracing::warn!(error = %e, retry_in = ?backoff, "claim failed");
                        tokio::select! {
                            () = &mut shutdown => break 'run,
                            () = tokio::time::sleep(jittered(backoff)) => {}
                        }
                        backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
                        continue;
                    }
                }
            }
            metrics::gauge!(m::JOBS_RUNNING).set(tasks.len() as f64);
            if tasks.len() < concurrency && !idle {
                continue;
            }
            let poll = self.config.poll_interval();
            tokio::select! {
                () = &mut shutdown => break 'run,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    record(&mut stats, done);
                }
                woke = self.queue.wait_for_work(poll), if idle && tasks.len() < concurrency => {
                    if let Err(e) = woke {
                        tracing::warn!(error = %e, "waiting for work failed");
                        tokio::time::sleep(poll).await;
                    }
                }
            }
        }
        self.readiness.shutting_down();
        let grace = self.config.shutdown_grace();
        tracing::info!(
            running = tasks.len(),
            grace = ?grace,
            "shutting down: no more claims; running jobs may finish"
        );
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = tasks.join_next() => match done {
                    Some(done) => record(&mut stats, done),
                    None => break,
                },
                () = &mut deadline => {
                    tracing::warn!(running = tasks.len(), "grace over: releasing leases");
                    // Ignored error: every receiver is gone, so nothing is running.
                    let _ = stop_tx.send(true);
                    break;
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            record(&mut stats, done);
        }
        // Every attempt has its answer; the completion task ends with the last handle.
        drop(completer);
        let _ = completions.await;
        metrics::gauge!(m::JOBS_RUNNING).set(0.0);
        tracing::info!(outcomes = ?stats.outcomes, "worker stopped");
        Ok(stats)
    }

    fn spawn_attempt(
        &self,
        tasks: &mut JoinSet<&'static str>,
        lease: Lease,
        stop: &watch::Receiver<bool>,
        completer: &Completer,
    ) {
        let span = tracing::info_span!(
            "job",
            tenant = %lease.tenant,
            kind = %lease.kind,
            job = %lease.job_id,
            attempt = lease.attempt,
        );
        let attempt = Attempt {
            queue: self.queue.clone(),
            handler: self.registry.get(&lease.kind),
            lease,
            lease_len: self.config.lease(),
            stop: stop.clone(),
            completer: completer.clone(),
        };
        tasks.spawn(attempt.run().instrument(span));
    }
}

fn record(
    stats: &mut WorkerStats,
    done: std::result::Result<&'static str, tokio::task::JoinError>,
) {
    // The attempt tasks catch their handler's panics; a panic here would be the runtime's
    // own, and is counted rather than taking the worker down.
    let outcome = done.unwrap_or("runtime_panicked");
    *stats.outcomes.entry(outcome).or_default() += 1;
}

/// How the handler's run ended, before it is reported.
enum Ending {
    Returned(std::result::Result<serde_json::Value, JobError>),
    Panicked(String),
    CancelRequested,
    LeaseLost,
    TimedOut(Duration),
    Stopped,
}

struct Attempt {
    queue: Arc<Queue>,
    handler: Option<Arc<dyn ErasedHandler>>,
    lease: Lease,
    lease_len: Duration,
    stop: watch::Receiver<bool>,
    completer: Completer,
}

impl Attempt {
    async fn run(mut self) -> &'static str {
        let kind = self.lease.kind.clone();
        let now = self.queue.db().clock().now_micros();
        if self.lease.ready_at > 0 {
            let waited = now.saturating_sub(self.lease.ready_at).max(0) as f64 / 1e6;
            metrics::histogram!(m::JOB_WAIT_SECONDS, "kind" => kind.clone()).record(waited);
        }
        let started = Instant::now();
        let ending = self.execute().await;
        metrics::histogram!(m::JOB_RUN_SECONDS, "kind" => kind.clone())
            .record(started.elapsed().as_secs_f64());
        let outcome = self.report(ending).await;
        metrics::counter!(m::JOBS_TOTAL, "kind" => kind.clone(), "outcome" => outcome).increment(1);
        if outcome == "lease_lost" {
            metrics::counter!(m::LEASES_LOST, "kind" => kind).increment(1);
        }
        outcome
    }

    async fn execute(&mut self) -> Ending {
        let Some(handler) = self.handler.clone() else {
            // Only registered kinds are claimed; this is a registry changed under us.
            return Ending::Returned(Err(JobError::Retry {
                error: format!("this worker has no handler for {:?}", self.lease.kind),
                delay: None,
            }));
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let ctx = JobContext::new(&self.lease, cancel_rx);
        let mut handle = tokio::spawn(handler.call(ctx, self.lease.args.clone()).in_current_span());
        let timeout = Duration::from_millis(self.lease.timeout_ms.max(1));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut heartbeat = heartbeats(self.lease_len);
        let mut stop = self.stop.clone();
        let ending = loop {
            tokio::select! {
                // A result that is ready wins over a deadline, a heartbeat or a stop that is
                // ready at the same time: it must not be thrown away and run again.
                biased;
                joined = &mut handle => break match joined {
                    Ok(result) => Ending::Returned(result),
                    Err(e) if e.is_panic() => Ending::Panicked(panic_message(e.into_panic())),
                    Err(_) => Ending::Returned(Err(JobError::retry("the handler task was aborted"))),
                },
                _ = heartbeat.tick() => {
                    match self.queue.heartbeat(&self.lease, self.lease_len).await {
                        Ok(hb) if hb.cancel_requested => break Ending::CancelRequested,
                        Ok(hb) => self.lease.expires_at = hb.expires_at,
                        Err(steward_queue::Error::LeaseLost { .. }) => break Ending::LeaseLost,
                        Err(e) => {
                            // Past the lease end another worker may have taken the job: stop
                            // rather than run beside it.
                            if self.queue.db().clock().now_micros() >= self.lease.expires_at {
                                tracing::warn!(error = %e, "heartbeats failed until the lease ended; stopping");
                                break Ending::LeaseLost;
                            }
                            tracing::warn!(error = %e, "heartbeat failed; retrying at the next beat");
                        }
                    }
                }
                () = &mut deadline => break Ending::TimedOut(timeout),
                () = stopped(&mut stop) => break Ending::Stopped,
            }
        };
        if !handle.is_finished() {
            // Ignored error: the handler may already have dropped its context.
            let _ = cancel_tx.send(true);
            handle.abort();
        }
        ending
    }

    /// Waits for `report` while heartbeating the lease. The batched completion runs at the
    /// store's batch priority, which a busy store may hold back (FoundationDB's ratekeeper, for
    /// as long as the cluster is unhealthy): the lease of a finished job must not expire
    /// meanwhile, or another worker would run the job again.
    async fn keep_lease_while<T>(&self, report: impl Future<Output = T>) -> T {
        tokio::pin!(report);
        let mut heartbeat = heartbeats(self.lease_len);
        loop {
            tokio::select! {
                biased;
                out = &mut report => return out,
                _ = heartbeat.tick() => {
                    // Errors are left to the report: it fails with `LeaseLost` if the lease
                    // is gone, and a cancel asked now comes too late to matter.
                    if let Err(e) = self.queue.heartbeat(&self.lease, self.lease_len).await {
                        tracing::debug!(error = %e, "heartbeat while reporting failed");
                    }
                }
            }
        }
    }

    async fn report(&self, ending: Ending) -> &'static str {
        let lease = &self.lease;
        let result = match ending {
            Ending::Returned(Ok(value)) => {
                let completed = self
                    .keep_lease_while(self.completer.complete(lease, value))
                    .await;
                return match completed {
                    Ok(()) => "completed",
                    // A result the queue refuses (too large) will be refused every time.
                    Err(steward_queue::Error::Invalid { field, message }) => {
                        let error = format!("the result was refused: {field}: {message}");
                        tracing::error!(error = %error, "failing the job");
                        match self.queue.fail(lease, Outcome::Fail { error }).await {
                            Ok(_) => "failed",
                            Err(e) => self.report_error(&e),
                        }
                    }
                    Err(e) => self.report_error(&e),
                };
            }
            Ending::Returned(Err(e)) => self.outcome_of(e),
            Ending::Panicked(message) => {
                tracing::error!(panic = %message, "handler panicked");
                (
                    "panicked",
                    Outcome::Retry {
                        error: format!("handler panicked: {message}"),
                        delay: self.backoff(),
                    },
                )
            }
            Ending::TimedOut(after) => (
                "timed_out",
                Outcome::Retry {
                    error: format!("timed out after {after:?}"),
                    delay: self.backoff(),
                },
            ),
            Ending::CancelRequested => (
                "cancelled",
                Outcome::Cancel {
                    reason: "cancel requested while running".into(),
                },
            ),
            Ending::LeaseLost => {
                tracing::warn!("lease lost: another worker owns the job now; nothing reported");
                return "lease_lost";
            }
            Ending::Stopped => {
                return match self.queue.release(lease).await {
                    Ok(()) => "released",
                    Err(e) => self.report_error(&e),
                };
            }
        };
        let (label, outcome) = result;
        match self.queue.fail(lease, outcome).await {
            Ok(JobState::Dead) if label == "retry" => "dead",
            Ok(_) => label,
            Err(e) => self.report_error(&e),
        }
    }

    fn outcome_of(&self, e: JobError) -> (&'static str, Outcome) {
        match e {
            JobError::Retry { error, delay } => {
                tracing::warn!(error = %error, "attempt failed; will retry");
                (
                    "retry",
                    Outcome::Retry {
                        error,
                        delay: delay.or_else(|| self.backoff()),
                    },
                )
            }
            JobError::Fail { error } => {
                tracing::warn!(error = %error, "failed permanently");
                ("failed", Outcome::Fail { error })
            }
            JobError::Snooze { after } => {
                let now = self.queue.db().clock().now_micros();
                let after = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
                (
                    "snoozed",
                    Outcome::Snooze {
                        until: now.saturating_add(after),
                    },
                )
            }
            JobError::Cancel { reason } => ("cancelled", Outcome::Cancel { reason }),
        }
    }

    /// The kind's own backoff for this attempt (`None`: the queue's).
    fn backoff(&self) -> Option<Duration> {
        let policy = self.handler.as_ref()?.retry_policy()?;
        Some(policy.delay(self.lease.attempt, fastrand::f64()))
    }

    fn report_error(&self, e: &steward_queue::Error) -> &'static str {
        if matches!(e, steward_queue::Error::LeaseLost { .. }) {
            tracing::warn!("lease lost before the report: another attempt owns the job");
            "lease_lost"
        } else {
            // The lease expires and another worker retries the job: at-least-once.
            tracing::error!(error = %e, "could not report the attempt; the lease will expire");
            "report_failed"
        }
    }
}

/// Resolves once the worker asks running attempts to stop (or is gone).
/// A heartbeat every third of the lease (at least every 100 ms), the first one a period from now.
fn heartbeats(lease: Duration) -> tokio::time::Interval {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beats
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the worker dropped the sender: stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".into()
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "worker".into())
}
