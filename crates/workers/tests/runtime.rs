//! The worker runtime against a real queue on the memory store (with and without injected
//! faults): concurrency, panics, timeouts, cancellation, lost leases, graceful shutdown.
//!
//! Tokio's clock is paused (timers fire as soon as every task is idle), and the queue's clock
//! is a `ManualClock` moved by the cases, so nothing waits for real time.

// Helpers outside `#[test]` functions unwrap too; clippy's `allow-unwrap-in-tests` does not
// see them as tests.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_queue::{JobState, NewJob, Queue, QueueConfig};
use steward_store::{Database, FaultConfig, ManualClock, OpenOptions, Priority, RunOptions};
use steward_workers::{Handler, JobContext, JobError, Registry, Worker, WorkerConfig};
use tokio::sync::oneshot;
use uuid::Uuid;

const T0: i64 = 1_700_000_000_000_000;

struct Env {
    queue: Arc<Queue>,
    clock: ManualClock,
}

fn env(faults: Option<u64>) -> Env {
    let clock = ManualClock::new(T0);
    let options = OpenOptions {
        clock: clock.shared(),
        seed: Some(7),
        run: RunOptions {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
            ..RunOptions::default()
        },
        ..OpenOptions::default()
    };
    let raw = Database::memory_with(options);
    let db = match faults {
        Some(seed) => raw.with_faults(FaultConfig::chaos(seed)),
        None => raw,
    };
    let queue = Queue::with_seed(db, QueueConfig::default(), 11).unwrap();
    Env {
        queue: Arc::new(queue),
        clock,
    }
}

fn config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        lease_secs: 30,
        poll_interval_ms: 50,
        shutdown_grace_secs: 5,
        metrics_addr: String::new(),
        scheduler: false,
        name: Some("test-worker".into()),
        ..WorkerConfig::default()
    }
}

/// What the test handler is told to do, per job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
enum Script {
    /// Return the number after a short (virtual) sleep.
    Echo { n: u64, sleep_ms: u64 },
    /// Panic on the first `times` attempts, then succeed.
    PanicFirst { times: u32 },
    /// Sleep far past any timeout.
    Hang,
    /// Wait until cancelled, then say so.
    WaitForCancel,
    /// Fail permanently.
    Fail,
    /// Retry (with the kind's policy) on the first `times` attempts.
    RetryFirst { times: u32 },
    /// Return a result larger than a store value.
    Huge,
}

#[derive(Default)]
struct Probe {
    runs: AtomicUsize,
    per_job: Mutex<HashMap<Uuid, usize>>,
    started: Mutex<Option<oneshot::Sender<Uuid>>>,
}

struct Scripted(Arc<Probe>);

impl Handler for Scripted {
    type Args = Script;
    type Output = serde_json::Value;

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn retry_policy(&self) -> Option<steward_queue::RetryPolicy> {
        Some(steward_queue::RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(10),
            jitter: 0.0,
        })
    }

    async fn run(
        &self,
        mut ctx: JobContext,
        script: Script,
    ) -> Result<serde_json::Value, JobError> {
        self.0.runs.fetch_add(1, Ordering::SeqCst);
        *self
            .0
            .per_job
            .lock()
            .unwrap()
            .entry(ctx.job_id)
            .or_default() += 1;
        if let Some(tx) = self.0.started.lock().unwrap().take() {
            let _ = tx.send(ctx.job_id);
        }
        match script {
            Script::Echo { n, sleep_ms } => {
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                Ok(serde_json::json!({ "n": n }))
            }
            Script::PanicFirst { times } => {
                assert!(
                    ctx.attempt > times,
                    "planned panic on attempt {}",
                    ctx.attempt
                );
                Ok(serde_json::json!("recovered"))
            }
            Script::Hang => {
                tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
                Ok(serde_json::json!("woke up"))
            }
            Script::WaitForCancel => {
                ctx.cancelled().await;
                Err(JobError::Cancel {
                    reason: "saw the cancel".into(),
                })
            }
            Script::Fail => Err(JobError::fail("no way")),
            Script::Huge => Ok(serde_json::json!("x".repeat(200_000))),
            Script::RetryFirst { times } => {
                if ctx.attempt <= times {
                    Err(JobError::retry(format!("attempt {} failed", ctx.attempt)))
                } else {
                    Ok(serde_json::json!(ctx.attempt))
                }
            }
        }
    }
}

fn registry(probe: &Arc<Probe>) -> Arc<Registry> {
    let mut r = Registry::new();
    r.register(Scripted(probe.clone())).unwrap();
    Arc::new(r)
}

fn job(script: Script) -> NewJob {
    NewJob::new("scripted", serde_json::to_value(script).unwrap())
}

/// Runs `worker` until `done` says the tenant's jobs are where the case wants them.
async fn run_until(
    worker: Worker,
    queue: Arc<Queue>,
    tenant: Uuid,
    done: impl Fn(&HashMap<JobState, i64>) -> bool + Send + 'static,
) -> steward_workers::WorkerStats {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        for _ in 0..100_000 {
            let counts: HashMap<JobState, i64> =
                queue.counts(tenant).await.unwrap().into_iter().collect();
            if done(&counts) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(());
    });
    let stats = worker
        .run(async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    watcher.await.unwrap();
    stats
}

/// Moves the queue's clock along with tokio's (for retry delays), until aborted.
fn move_clock(clock: &ManualClock) -> tokio::task::JoinHandle<()> {
    let clock = clock.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            clock.advance(Duration::from_millis(50));
        }
    })
}

fn count(c: &HashMap<JobState, i64>, s: JobState) -> i64 {
    c.get(&s).copied().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn runs_every_job_once_with_bounded_concurrency() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    for n in 0..60 {
        e.queue
            .enqueue(tenant, job(Script::Echo { n, sleep_ms: 30 }))
            .await
            .unwrap();
    }
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(4)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Completed) == 60
    })
    .await;
    assert_eq!(stats.count("completed"), 60, "{stats:?}");
    assert_eq!(probe.runs.load(Ordering::SeqCst), 60);
    assert!(probe.per_job.lock().unwrap().values().all(|&n| n == 1));
    let page = e
        .queue
        .list(tenant, &steward_queue::ListFilter::default(), None, 100)
        .await
        .unwrap();
    for j in page.jobs {
        assert_eq!(j.state, JobState::Completed);
        assert_eq!(j.result.unwrap()["n"], j.args["n"]);
    }
}

#[tokio::test(start_paused = true)]
async fn jobs_finishing_together_share_completion_commits() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    for n in 0..40 {
        e.queue
            .enqueue(tenant, job(Script::Echo { n, sleep_ms: 30 }))
            .await
            .unwrap();
    }
    let version = || async {
        let tx = e.queue.db().create_transaction().unwrap();
        tx.read_version().await.unwrap()
    };
    let before = version().await;
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(40)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Completed) == 40
    })
    .await;
    assert_eq!(stats.count("completed"), 40, "{stats:?}");
    // Every commit takes one version. One commit per completion would be 40 plus the claims.
    let commits = version().await - before;
    assert!(commits < 20, "{commits} commits for 40 jobs");
    let page = e
        .queue
        .list(tenant, &steward_queue::ListFilter::default(), None, 100)
        .await
        .unwrap();
    for j in page.jobs {
        assert_eq!(j.result.unwrap()["n"], j.args["n"]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_recorded_failure_and_the_job_is_retried() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    let id = e
        .queue
        .enqueue(tenant, job(Script::PanicFirst { times: 1 }).max_attempts(3))
        .await
        .unwrap()
        .id;
    let mover = move_clock(&e.clock);
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(2)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Completed) == 1
    })
    .await;
    mover.abort();
    assert_eq!(stats.count("panicked"), 1, "{stats:?}");
    assert_eq!(stats.count("completed"), 1, "{stats:?}");
    let j = e.queue.get(tenant, id).await.unwrap().unwrap();
    assert_eq!(j.attempt, 2);
    assert!(
        j.errors[0].message.contains("panicked") && j.errors[0].message.contains("planned panic"),
        "{:?}",
        j.errors
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_past_its_timeout_is_stopped_and_retried_until_dead() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    let id = e
        .queue
        .enqueue(
            tenant,
            job(Script::Hang)
                .timeout(Duration::from_secs(2))
                .max_attempts(2),
        )
        .await
        .unwrap()
        .id;
    // The retry delay is 10 ms of the queue's clock: move it along while the worker runs.
    let mover = move_clock(&e.clock);
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(1)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Dead) == 1
    })
    .await;
    mover.abort();
    assert_eq!(stats.count("timed_out"), 2, "{stats:?}");
    let j = e.queue.get(tenant, id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Dead);
    assert!(
        j.errors.iter().all(|x| x.message.contains("timed out")),
        "{:?}",
        j.errors
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_job_stops_it_at_the_next_heartbeat() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let (tx, rx) = oneshot::channel();
    *probe.started.lock().unwrap() = Some(tx);
    let tenant = Uuid::now_v7();
    let id = e
        .queue
        .enqueue(tenant, job(Script::WaitForCancel))
        .await
        .unwrap()
        .id;
    let queue = e.queue.clone();
    tokio::spawn(async move {
        let started = rx.await.unwrap();
        assert_eq!(started, id);
        queue.cancel(tenant, id).await.unwrap();
    });
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(1)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Cancelled) == 1
    })
    .await;
    assert_eq!(stats.count("cancelled"), 1, "{stats:?}");
    assert_eq!(
        e.queue.get(tenant, id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_lost_its_lease_reports_nothing() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let (tx, rx) = oneshot::channel();
    *probe.started.lock().unwrap() = Some(tx);
    let tenant = Uuid::now_v7();
    let id = e.queue.enqueue(tenant, job(Script::Hang)).await.unwrap().id;
    let (queue, clock) = (e.queue.clone(), e.clock.clone());
    let thief = tokio::spawn(async move {
        rx.await.unwrap();
        // The worker stalls (say, a long pause) past its lease; another worker takes the job.
        clock.advance(Duration::from_secs(120));
        let req = steward_queue::ClaimRequest {
            worker: "thief".into(),
            kinds: None,
            max: 1,
            lease: Duration::from_secs(3600),
        };
        let mut leases = Vec::new();
        while leases.is_empty() {
            leases = queue.claim(&req).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(leases[0].job_id, id);
        leases.remove(0)
    });
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(1)).unwrap();
    let queue = e.queue.clone();
    let stats = run_until(worker, queue, tenant, move |_| thief.is_finished()).await;
    // Give the first worker's heartbeat a chance: it finds the lease gone and stops.
    let j = e.queue.get(tenant, id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.lease.unwrap().worker, "thief");
    assert_eq!(j.attempt, 2);
    // The stalled worker either saw the loss at a heartbeat or was stopped by the shutdown and
    // found its release refused: either way it wrote nothing.
    assert_eq!(
        stats.count("lease_lost"),
        1,
        "the stalled attempt must end as lease_lost: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_short_jobs_finish_and_releases_the_rest() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    let quick = e
        .queue
        .enqueue(
            tenant,
            job(Script::Echo {
                n: 1,
                sleep_ms: 1000,
            }),
        )
        .await
        .unwrap()
        .id;
    let stuck = e.queue.enqueue(tenant, job(Script::Hang)).await.unwrap().id;
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(2)).unwrap();
    let readiness = worker.readiness();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Running) == 2
    })
    .await;
    assert!(!readiness.is_ready());
    assert_eq!(stats.count("completed"), 1, "{stats:?}");
    assert_eq!(stats.count("released"), 1, "{stats:?}");
    let q = e.queue.get(tenant, quick).await.unwrap().unwrap();
    assert_eq!(q.state, JobState::Completed);
    let s = e.queue.get(tenant, stuck).await.unwrap().unwrap();
    assert_eq!(
        s.state,
        JobState::Queued,
        "released, ready for another worker at once"
    );
    assert!(s.lease.is_none());
}

#[tokio::test(start_paused = true)]
async fn typed_outcomes_map_onto_the_queue() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    let fail = e.queue.enqueue(tenant, job(Script::Fail)).await.unwrap().id;
    let retry = e
        .queue
        .enqueue(tenant, job(Script::RetryFirst { times: 2 }).max_attempts(5))
        .await
        .unwrap()
        .id;
    let bad = e
        .queue
        .enqueue(
            tenant,
            NewJob::new("scripted", serde_json::json!({"do": "dance"})),
        )
        .await
        .unwrap()
        .id;
    let mover = move_clock(&e.clock);
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(2)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Dead) == 2 && count(c, JobState::Completed) == 1
    })
    .await;
    mover.abort();
    assert_eq!(stats.count("retry"), 2, "{stats:?}");
    let f = e.queue.get(tenant, fail).await.unwrap().unwrap();
    assert_eq!((f.state, f.attempt), (JobState::Dead, 1));
    let r = e.queue.get(tenant, retry).await.unwrap().unwrap();
    assert_eq!(r.result, Some(serde_json::json!(3)));
    let b = e.queue.get(tenant, bad).await.unwrap().unwrap();
    assert_eq!(b.state, JobState::Dead);
    assert!(
        b.errors[0].message.contains("bad arguments"),
        "{:?}",
        b.errors
    );
}

#[tokio::test(start_paused = true)]
async fn under_injected_faults_every_job_completes_exactly_once() {
    for seed in [1, 2, 3] {
        let e = env(Some(seed));
        let probe = Arc::new(Probe::default());
        let tenant = Uuid::now_v7();
        let mut ids = Vec::new();
        for n in 0..40 {
            ids.push(
                e.queue
                    .enqueue(tenant, job(Script::Echo { n, sleep_ms: 5 }))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let worker = Worker::new(e.queue.clone(), registry(&probe), config(4)).unwrap();
        let stats = run_until(worker, e.queue.clone(), tenant, |c| {
            count(c, JobState::Completed) == 40
        })
        .await;
        for id in ids {
            let j = e.queue.get(tenant, id).await.unwrap().unwrap();
            assert_eq!(j.state, JobState::Completed, "seed {seed}: {j:?}");
            assert_eq!(j.result.unwrap()["n"], j.args["n"]);
        }
        // Completions recorded by this worker never exceed the jobs (a report retried after
        // commit_unknown_result is recognised as its own).
        assert_eq!(stats.count("completed"), 40, "seed {seed}: {stats:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_the_queue_refuses_fails_the_job_once_instead_of_looping() {
    let e = env(None);
    let probe = Arc::new(Probe::default());
    let tenant = Uuid::now_v7();
    let id = e.queue.enqueue(tenant, job(Script::Huge)).await.unwrap().id;
    let worker = Worker::new(e.queue.clone(), registry(&probe), config(1)).unwrap();
    let stats = run_until(worker, e.queue.clone(), tenant, |c| {
        count(c, JobState::Dead) == 1
    })
    .await;
    assert_eq!(stats.count("failed"), 1, "{stats:?}");
    assert_eq!(probe.runs.load(Ordering::SeqCst), 1, "not retried");
    let j = e.queue.get(tenant, id).await.unwrap().unwrap();
    assert!(
        j.errors[0].message.contains("result was refused"),
        "{:?}",
        j.errors
    );
}

#[test]
fn a_registry_refuses_a_kind_twice_and_fills_defaults() {
    let probe = Arc::new(Probe::default());
    let mut r = Registry::new();
    r.register(Scripted(probe.clone())).unwrap();
    assert!(r.register(Scripted(probe)).is_err());
    assert_eq!(r.kinds(), vec!["scripted".to_string()]);
    let j = r.new_job("scripted", serde_json::json!({}));
    assert_eq!(j.max_attempts, steward_queue::DEFAULT_MAX_ATTEMPTS);
}

#[tokio::test]
async fn probes_answer_health_readiness_and_metrics() {
    let e = env(None);
    let readiness = steward_workers::metrics::Readiness::default();
    let router = steward_workers::metrics::probe_router(e.queue.db().clone(), readiness.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    metrics::counter!("steward_jobs_total", "kind" => "probe", "outcome" => "completed")
        .increment(1);
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("steward_jobs_total"), "{text}");
    readiness.shutting_down();
    let (status, text) = get("/readyz").await;
    assert_eq!((status, text.as_str()), (503, "shutting down\n"));
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The batched completion runs at batch priority, which a busy store may hold back: the worker
/// keeps heartbeating while it waits, so the finished job's lease does not run out and nobody
/// runs it again. Real time on the embedded store, with the one batch turn held by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_keeps_its_lease_while_its_completion_waits_for_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_with(
        &format!("embedded:{}", dir.path().display()),
        OpenOptions {
            embedded_batch_in_flight: 1,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let queue = Arc::new(Queue::with_seed(db.clone(), QueueConfig::default(), 3).unwrap());
    let probe = Arc::new(Probe::default());
    let (started_tx, started) = oneshot::channel();
    *probe.started.lock().unwrap() = Some(started_tx);
    let tenant = queue.new_id();
    let id = queue
        .enqueue(
            tenant,
            job(Script::Echo {
                n: 1,
                sleep_ms: 500,
            }),
        )
        .await
        .unwrap()
        .id;
    let worker = Worker::new(
        Arc::clone(&queue),
        registry(&probe),
        WorkerConfig {
            lease_secs: 5,
            ..config(1)
        },
    )
    .unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stop_rx.await;
            })
            .await
    });
    assert_eq!(started.await.unwrap(), id);
    let claimed_at = queue.db().clock().now_micros();

    // The handler is still sleeping: take the only batch turn and hold it past the lease.
    let (release, held) = oneshot::channel::<()>();
    let (holding_tx, holding) = oneshot::channel::<()>();
    let holder = tokio::spawn({
        let db = db.clone();
        async move {
            let mut once = Some((held, holding_tx));
            let batch = RunOptions {
                priority: Priority::Batch,
                ..RunOptions::default()
            };
            db.transact_with(&batch, |tx, _| {
                let step = once.take();
                async move {
                    if let Some((held, holding)) = step {
                        holding.send(()).unwrap();
                        held.await.unwrap();
                    }
                    tx.set(b"held", b"1");
                    Ok::<_, steward_store::Error>(())
                }
            })
            .await
        }
    });
    holding.await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let now = queue.db().clock().now_micros();
    let job = queue.get(tenant, id).await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "the completion is still waiting"
    );
    let expires_at = job.lease.as_ref().unwrap().expires_at;
    assert!(
        expires_at > now,
        "the lease ran out {} ms ago (claimed {} ms ago)",
        (now - expires_at) / 1000,
        (now - claimed_at) / 1000
    );

    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    for _ in 0..500 {
        if queue.get(tenant, id).await.unwrap().unwrap().state == JobState::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = queue.get(tenant, id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempt, 1, "run once");
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(probe.runs.load(Ordering::SeqCst), 1);
}
