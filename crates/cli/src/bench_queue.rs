//! `steward bench queue`: the queue's end-to-end throughput beside the store's batched ceiling,
//! and how well small tenants are served while one tenant floods the queue.
//!
//! Every job is a no-op of kind [`KIND`]; workers claim only that kind, so on a store the user
//! named, other jobs are never touched. Times are the store's clock (`Database::clock`), as the
//! queue's own records use.
//!
//! # Throughput
//! [`Params::producers`] tasks enqueue batches of [`Params::enqueue_batch`] jobs, round-robin
//! over [`Params::tenants`] tenants, while [`Params::workers`] worker tasks loop: claim up to
//! [`Params::claim_max`], then complete the claimed jobs in one transaction
//! ([`Queue::complete_many`], as a worker that ran a batch of short jobs does). Producers pause while [`Params::max_backlog`] jobs are waiting,
//! so the run measures the queue, not an ever-growing index. After a warm-up, the jobs that
//! completed in the window are counted; nothing sleeps inside the window except idle workers,
//! and their sleeping shows as fewer completions.
//!
//! The ceiling is the store benchmark's batched scenario ([`bench::BATCHED`]: 100 keys per
//! transaction, one task), measured in the same run on a store of the same kind, in **keys/s**:
//! the most records per second the store persists when writes are batched. A job is at least
//! one record, so that bounds any queue on the store; issue 5's target is jobs/s at least half
//! of it. A queue that persists a job's enqueue, claim and completion writes its record at least
//! three times, so jobs/keys cannot pass 1/3 with durable claims; Steward writes about 12 keys
//! per job (record three times, ready, lease and by-state index moves, counters). The scenario's
//! txn/s is printed too, but it is no ceiling: it is one task waiting for each commit in turn.
//!
//! # Fairness
//! Two phases on fresh stores with the same arrivals: *with flood*, one tenant's
//! [`Params::flood`] jobs are fully enqueued first (not timed); *without flood*, none are. Then
//! the workers start and [`Params::small_tenants`] tenants enqueue
//! [`Params::jobs_per_small_tenant`] jobs each, a batch of [`Params::small_batch`] every
//! [`Params::pace`], round-robin over the tenants; each batch is sent at its scheduled time
//! whatever the store's latency, so the arrivals are the same in both phases. A phase ends when
//! every small tenant's job has completed. A job's wait is claim time (the store clock when the
//! claim returned it to the worker) minus `max(created_at, run_at)` of its record. The ratio of
//! the phases' p50 and p99 waits uses `max(wait, 1 ms)`; issue 5's target is at most 2.
//!
//! # Stores
//! `memory:` and the temporary embedded store (no `--store`) give every part a fresh store. A
//! named embedded or FoundationDB store is shared by the parts, one after another, each with new
//! tenants: the ceiling's keys are cleared, the throughput backlog is drained after the window,
//! and the flood's leftover jobs (enqueued under one session) are cancelled. Their finished jobs
//! stay until the queue's retention prunes them.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Serialize, Serializer};
use steward_queue::{ClaimRequest, NewJob, Queue, QueueConfig, Result};
use steward_store::{Database, OpenOptions, StoreUrl};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::bench::{self, Machine, ScenarioResult};

/// The kind of every benchmark job; workers claim only this kind.
pub(crate) const KIND: &str = "steward.bench.noop";
/// Throughput target: queue jobs/s at least this share of the store's batched keys/s.
pub(crate) const THROUGHPUT_TARGET: f64 = 0.5;
/// Fairness target: wait with the flood at most this many times the wait without it.
pub(crate) const FAIRNESS_TARGET: f64 = 2.0;
/// Waits shorter than this count as this much in the fairness ratio.
pub(crate) const WAIT_FLOOR: Duration = Duration::from_millis(1);

/// Worker tasks.
const WORKERS: usize = 16;
/// Most jobs one claim takes.
const CLAIM_MAX: usize = 32;
/// Lease of every claim (far longer than a no-op takes, so no lease expires).
const LEASE: Duration = Duration::from_secs(30);
/// How long an idle worker waits for an enqueue's wake-up before claiming again.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Producer tasks of the throughput part.
const PRODUCERS: usize = 2;
/// Jobs per enqueue of the throughput part.
const ENQUEUE_BATCH: usize = 100;
/// Tenants of the throughput part.
const TENANTS: usize = 10;
/// Producers pause while this many jobs wait.
const MAX_BACKLOG: u64 = 5_000;
/// Warm-up before the throughput window.
const WARMUP: Duration = Duration::from_millis(500);
/// One tenant's flood.
const FLOOD: usize = 100_000;
/// Jobs per enqueue of the flood.
const FLOOD_BATCH: usize = 500;
/// Tasks enqueueing the flood.
const FLOOD_PRODUCERS: usize = 4;
/// The small tenants and their jobs.
const SMALL_TENANTS: usize = 50;
const JOBS_PER_SMALL_TENANT: usize = 20;
const SMALL_BATCH: usize = 5;
/// One small tenant's batch every `PACE`: 200 batches over 2 s.
const PACE: Duration = Duration::from_millis(10);
/// `--quick`: the throughput window and warm-up, the flood, and the pace.
const QUICK_WINDOW: Duration = Duration::from_millis(300);
const QUICK_WARMUP: Duration = Duration::from_millis(100);
const QUICK_FLOOD: usize = 2_000;
const QUICK_PACE: Duration = Duration::from_millis(2);

/// How the benchmark runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Params {
    /// The throughput window, and the ceiling scenario's duration.
    #[serde(rename = "window_secs", serialize_with = "secs")]
    pub(crate) window: Duration,
    #[serde(rename = "warmup_secs", serialize_with = "secs")]
    pub(crate) warmup: Duration,
    pub(crate) workers: usize,
    pub(crate) claim_max: usize,
    pub(crate) producers: usize,
    pub(crate) enqueue_batch: usize,
    pub(crate) tenants: usize,
    pub(crate) max_backlog: u64,
    pub(crate) flood: usize,
    pub(crate) small_tenants: usize,
    pub(crate) jobs_per_small_tenant: usize,
    pub(crate) small_batch: usize,
    #[serde(rename = "pace_secs", serialize_with = "secs")]
    pub(crate) pace: Duration,
}

impl Params {
    /// The full benchmark with a throughput window of `window`.
    pub(crate) fn standard(window: Duration) -> Params {
        Params {
            window,
            warmup: WARMUP,
            workers: WORKERS,
            claim_max: CLAIM_MAX,
            producers: PRODUCERS,
            enqueue_batch: ENQUEUE_BATCH,
            tenants: TENANTS,
            max_backlog: MAX_BACKLOG,
            flood: FLOOD,
            small_tenants: SMALL_TENANTS,
            jobs_per_small_tenant: JOBS_PER_SMALL_TENANT,
            small_batch: SMALL_BATCH,
            pace: PACE,
        }
    }

    /// A run of a few seconds, for CI: a short window, a small flood, a faster pace.
    pub(crate) fn quick() -> Params {
        Params {
            warmup: QUICK_WARMUP,
            flood: QUICK_FLOOD,
            pace: QUICK_PACE,
            ..Params::standard(QUICK_WINDOW)
        }
    }

    fn small_jobs(&self) -> usize {
        self.small_tenants * self.jobs_per_small_tenant
    }

    fn claim_request(&self, worker: usize) -> ClaimRequest {
        ClaimRequest {
            worker: format!("bench-{worker}"),
            kinds: Some(vec![KIND.to_string()]),
            max: self.claim_max,
            lease: LEASE,
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Where each part gets its store.
#[derive(Debug)]
enum Source {
    /// A new `memory:` store per part.
    Memory,
    /// A new embedded store per part, in a subdirectory of this temporary directory.
    TempEmbedded(tempfile::TempDir),
    /// The one store the user named, shared by the parts.
    Named(Database),
}

/// A store to measure.
#[derive(Debug)]
pub(crate) struct Target {
    /// How the report names it.
    label: String,
    source: Source,
    /// How every store of the target is opened (`[embedded]` tuning).
    options: OpenOptions,
}

impl Target {
    /// Fresh `memory:` stores.
    pub(crate) fn memory() -> Target {
        Target {
            label: StoreUrl::Memory.to_string(),
            source: Source::Memory,
            options: OpenOptions::default(),
        }
    }

    /// Fresh embedded stores (disk sync on, as always) in a new temporary directory, removed
    /// when the target is dropped.
    ///
    /// # Errors
    /// The temporary directory cannot be created.
    pub(crate) fn temp_embedded(options: OpenOptions) -> steward_store::Result<Target> {
        let dir = tempfile::Builder::new()
            .prefix("steward-bench-queue-")
            .tempdir()
            .map_err(steward_store::Error::Io)?;
        Ok(Target {
            label: StoreUrl::Embedded(dir.path().to_path_buf()).to_string(),
            source: Source::TempEmbedded(dir),
            options,
        })
    }

    /// The store `url` names; `memory:` gives fresh stores, as it is new at every open anyway.
    ///
    /// # Errors
    /// As [`Database::open`].
    pub(crate) fn named(url: &str, options: OpenOptions) -> steward_store::Result<Target> {
        let parsed: StoreUrl = url.parse()?;
        if parsed == StoreUrl::Memory {
            return Ok(Target::memory());
        }
        Ok(Target {
            label: url.to_string(),
            source: Source::Named(Database::open_with(url, options.clone())?),
            options,
        })
    }

    /// The store for one part, and the directory to remove after it.
    fn open(&self, part: &str) -> steward_store::Result<(Database, Option<PathBuf>)> {
        match &self.source {
            Source::Memory => Ok((Database::memory(), None)),
            Source::TempEmbedded(dir) => {
                let path = dir.path().join(part);
                let db = Database::open_with(
                    &StoreUrl::Embedded(path.clone()).to_string(),
                    self.options.clone(),
                )?;
                Ok((db, Some(path)))
            }
            Source::Named(db) => Ok((db.clone(), None)),
        }
    }

    /// True if the parts share the store, which must be left as found (as far as it can be).
    fn shared(&self) -> bool {
        matches!(self.source, Source::Named(_))
    }

    fn durability(&self) -> &'static str {
        let url = match &self.source {
            Source::Memory => return "none: in memory, nothing persisted",
            Source::TempEmbedded(_) => return EMBEDDED_DURABILITY,
            Source::Named(db) => db.url(),
        };
        match url {
            StoreUrl::Memory => "none: in memory, nothing persisted",
            StoreUrl::Embedded(_) => EMBEDDED_DURABILITY,
            StoreUrl::Fdb(_) => "the cluster's: a commit is acknowledged once durable on its logs",
        }
    }
}

const EMBEDDED_DURABILITY: &str =
    "disk sync on every commit (fsync before acknowledging; concurrent commits share one sync)";

/// Runs a part on a store `target` opens for it, then closes the store and removes its
/// directory (a fresh store's).
async fn on_store<T, F, Fut>(target: &Target, part: &str, f: F) -> Result<T>
where
    F: FnOnce(Database) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (db, dir) = target.open(part)?;
    let out = f(db).await;
    if let Some(dir) = dir {
        // The part's store is closed (every handle dropped with its tasks); best effort.
        let _ = std::fs::remove_dir_all(dir);
    }
    out
}

/// What the throughput part measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    /// Jobs completed in the window.
    pub(crate) jobs: u64,
    pub(crate) elapsed_secs: f64,
    pub(crate) jobs_per_sec: f64,
    /// Jobs enqueued per second in the window (producers pause at the backlog cap).
    pub(crate) enqueued_per_sec: f64,
}

/// One fairness phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Phase {
    /// The flood enqueued before the phase (0 without).
    pub(crate) flood_jobs: usize,
    /// Small tenants' jobs, all completed.
    pub(crate) small_jobs: usize,
    /// Their waits, in milliseconds.
    pub(crate) wait_p50_ms: f64,
    pub(crate) wait_p99_ms: f64,
    pub(crate) wait_max_ms: f64,
    /// Flood jobs the workers completed during the phase.
    pub(crate) flood_jobs_completed: u64,
    /// From the first small enqueue to the last small completion.
    pub(crate) elapsed_secs: f64,
}

/// Both fairness phases and their ratios.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fairness {
    pub(crate) without_flood: Phase,
    pub(crate) with_flood: Phase,
    /// `max(p50 with, 1 ms) / max(p50 without, 1 ms)`.
    pub(crate) p50_ratio: f64,
    /// The same for p99.
    pub(crate) p99_ratio: f64,
    pub(crate) target_max_ratio: f64,
    pub(crate) target_met: bool,
}

/// Everything measured on one store.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoreResult {
    pub(crate) store: String,
    pub(crate) durability: &'static str,
    pub(crate) throughput: Throughput,
    /// The store benchmark's batched scenario on a store of the same kind.
    pub(crate) ceiling: ScenarioResult,
    /// Queue jobs/s over the ceiling's keys/s.
    pub(crate) ratio_to_ceiling: f64,
    pub(crate) target_min_ratio: f64,
    pub(crate) throughput_target_met: bool,
    pub(crate) fairness: Fairness,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) params: Params,
    pub(crate) kind: &'static str,
    /// Which ceiling the throughput is compared with, and why.
    pub(crate) ceiling_basis: &'static str,
    pub(crate) results: Vec<StoreResult>,
}

const CEILING_BASIS: &str = "keys/s of the store benchmark's batched scenario (100 keys per \
transaction, one task): the most records/s the store persists with batching; a job is at least \
one record, so this bounds any queue on the store (and a queue that persists a job when it is \
enqueued, claimed and completed writes it three times: jobs/keys of at most 0.33)";

/// Runs every part on every target, in order.
///
/// # Errors
/// The first store or queue error that is not retried away.
pub(crate) async fn run(targets: &[Target], params: &Params, progress: bool) -> Result<Report> {
    let mut results = Vec::new();
    for target in targets {
        results.push(run_target(target, params, progress).await?);
    }
    Ok(Report {
        machine: Machine::detect(),
        params: params.clone(),
        kind: KIND,
        ceiling_basis: CEILING_BASIS,
        results,
    })
}

async fn run_target(target: &Target, params: &Params, progress: bool) -> Result<StoreResult> {
    let label = target.label.as_str();
    let options = bench::Options {
        duration: params.window,
        progress,
    };
    let shared = target.shared();
    let ceiling = on_store(target, "ceiling", |db| async move {
        Ok(bench::batched_ceiling(&db, label, options, shared).await?)
    })
    .await?;
    let throughput = on_store(target, "throughput", |db| async move {
        let queue = Arc::new(Queue::new(db, QueueConfig::default())?);
        throughput(&queue, label, params, progress, shared).await
    })
    .await?;
    let mut phases = Vec::new();
    for (part, flood) in [
        ("fairness-without-flood", false),
        ("fairness-with-flood", true),
    ] {
        let phase = on_store(target, part, |db| async move {
            let queue = Arc::new(Queue::new(db, QueueConfig::default())?);
            let flood = if flood { params.flood } else { 0 };
            fairness_phase(&queue, label, params, flood, progress, shared).await
        })
        .await?;
        phases.push(phase);
    }
    let (without_flood, with_flood) = (phases.remove(0), phases.remove(0));
    let floor = WAIT_FLOOR.as_secs_f64() * 1_000.0;
    let ratio = |with: f64, without: f64| with.max(floor) / without.max(floor);
    let p50_ratio = ratio(with_flood.wait_p50_ms, without_flood.wait_p50_ms);
    let p99_ratio = ratio(with_flood.wait_p99_ms, without_flood.wait_p99_ms);
    let ratio_to_ceiling = if ceiling.keys_per_sec > 0.0 {
        throughput.jobs_per_sec / ceiling.keys_per_sec
    } else {
        0.0
    };
    Ok(StoreResult {
        store: target.label.clone(),
        durability: target.durability(),
        throughput_target_met: ratio_to_ceiling >= THROUGHPUT_TARGET,
        ratio_to_ceiling,
        target_min_ratio: THROUGHPUT_TARGET,
        throughput,
        ceiling,
        fairness: Fairness {
            target_met: p50_ratio <= FAIRNESS_TARGET && p99_ratio <= FAIRNESS_TARGET,
            without_flood,
            with_flood,
            p50_ratio,
            p99_ratio,
            target_max_ratio: FAIRNESS_TARGET,
        },
    })
}

// ------------------------------------------------------------------------------ throughput

/// Counters shared by producers, workers and the clock-keeper.
#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    completed: AtomicU64,
}

impl Counters {
    fn backlog(&self) -> u64 {
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        enqueued.saturating_sub(self.completed.load(Ordering::Relaxed))
    }
}

async fn throughput(
    queue: &Arc<Queue>,
    label: &str,
    p: &Params,
    progress: bool,
    drain: bool,
) -> Result<Throughput> {
    let bar = bar(progress, bench::millis(p.warmup + p.window));
    bar.set_prefix(format!("{label} queue throughput"));
    let tenants: Arc<[Uuid]> = (0..p.tenants.max(1)).map(|_| queue.new_id()).collect();
    let counters = Arc::new(Counters::default());
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_working = Arc::new(AtomicBool::new(false));
    let producers: Vec<JoinHandle<Result<()>>> = (0..p.producers.max(1))
        .map(|i| {
            tokio::spawn(produce(
                Arc::clone(queue),
                Arc::clone(&tenants),
                (i, p.producers.max(1)),
                p.clone(),
                Arc::clone(&counters),
                Arc::clone(&stop_producing),
            ))
        })
        .collect();
    let workers = spawn_workers(queue, p, &stop_working, &counters, None);
    let started = Instant::now();

    let mut failed = false;
    let mut window_start = None;
    let window_end = started + p.warmup + p.window;
    while Instant::now() < window_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if window_start.is_none() && started.elapsed() >= p.warmup {
            window_start = Some((
                Instant::now(),
                counters.completed.load(Ordering::Relaxed),
                counters.enqueued.load(Ordering::Relaxed),
            ));
        }
        bar.set_position(bench::millis(started.elapsed()));
        bar.set_message(format!(
            "{} jobs done{}",
            counters.completed.load(Ordering::Relaxed),
            if window_start.is_none() {
                " (warming up)"
            } else {
                ""
            }
        ));
        if any_finished(&producers) || any_finished(&workers) {
            failed = true;
            break;
        }
    }
    let window_stop = Instant::now();
    let completed = counters.completed.load(Ordering::Relaxed);
    let enqueued = counters.enqueued.load(Ordering::Relaxed);
    stop_producing.store(true, Ordering::Relaxed);
    let produced = join_tasks(producers).await;
    if drain && !failed && produced.is_ok() {
        bar.set_message("draining the backlog");
        while counters.backlog() > 0 && !any_finished(&workers) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_working.store(true, Ordering::Relaxed);
    let worked = join_tasks(workers).await;
    if let Err(e) = produced.and(worked.map(|_| ())) {
        bar.abandon_with_message(format!("failed: {e}"));
        return Err(e);
    }
    let (start, completed_before, enqueued_before) = window_start.unwrap_or((started, 0, 0));
    let secs = (window_stop - start).as_secs_f64();
    let jobs = completed - completed_before;
    let result = Throughput {
        jobs,
        elapsed_secs: secs,
        jobs_per_sec: jobs as f64 / secs,
        enqueued_per_sec: (enqueued - enqueued_before) as f64 / secs,
    };
    bar.finish_with_message(format!("{:.0} jobs/s", result.jobs_per_sec));
    Ok(result)
}

/// One producer: batches round-robin over the tenants (producer `i` of `n` takes every n-th),
/// pausing while the backlog is at its cap.
async fn produce(
    queue: Arc<Queue>,
    tenants: Arc<[Uuid]>,
    (i, n): (usize, usize),
    p: Params,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut next = i;
    while !stop.load(Ordering::Relaxed) {
        tokio::task::yield_now().await;
        if counters.backlog() >= p.max_backlog {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let tenant = tenants[next % tenants.len()];
        next += n;
        let jobs = (0..p.enqueue_batch).map(|_| noop_job()).collect();
        queue.enqueue_batch(tenant, jobs).await?;
        counters
            .enqueued
            .fetch_add(p.enqueue_batch as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn noop_job() -> NewJob {
    NewJob::new(KIND, serde_json::json!({}))
}

// ------------------------------------------------------------------------------- workers

/// A small tenant's job as its worker claimed it.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    tenant: Uuid,
    job: Uuid,
    /// The store clock when the claim returned it (µs).
    claimed_at: i64,
}

/// The tenants whose claims a fairness phase records.
#[derive(Debug)]
struct Watched {
    tenants: HashSet<Uuid>,
    completed: AtomicU64,
}

fn spawn_workers(
    queue: &Arc<Queue>,
    p: &Params,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
    watched: Option<&Arc<Watched>>,
) -> Vec<JoinHandle<Result<Vec<Claimed>>>> {
    (0..p.workers.max(1))
        .map(|w| {
            tokio::spawn(work(
                Arc::clone(queue),
                p.claim_request(w),
                Arc::clone(stop),
                Arc::clone(counters),
                watched.cloned(),
            ))
        })
        .collect()
}

/// One worker: claim, then complete the claimed jobs in one transaction; when there is nothing
/// to claim, wait for an enqueue's wake-up (at most [`IDLE_WAIT`]). Returns the claims of
/// watched tenants' jobs.
async fn work(
    queue: Arc<Queue>,
    req: ClaimRequest,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    watched: Option<Arc<Watched>>,
) -> Result<Vec<Claimed>> {
    let mut claims = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // The memory store's futures are ready at once: without a yield, a loop of claims could
        // hold its runtime thread and starve the timers (the clock-keeper, the pacer).
        tokio::task::yield_now().await;
        let leases = queue.claim(&req).await?;
        if leases.is_empty() {
            queue.wait_for_work(IDLE_WAIT).await?;
            continue;
        }
        let claimed_at = queue.db().clock().now_micros();
        let mut mine = 0;
        if let Some(w) = &watched {
            for lease in leases.iter().filter(|l| w.tenants.contains(&l.tenant)) {
                claims.push(Claimed {
                    tenant: lease.tenant,
                    job: lease.job_id,
                    claimed_at,
                });
                mine += 1;
            }
        }
        let done: Vec<_> = leases
            .iter()
            .map(|l| (l.clone(), serde_json::Value::Null))
            .collect();
        for r in queue.complete_many(&done).await? {
            r?;
        }
        counters
            .completed
            .fetch_add(leases.len() as u64, Ordering::Relaxed);
        if let Some(w) = &watched {
            w.completed.fetch_add(mine, Ordering::Relaxed);
        }
    }
    Ok(claims)
}

// ------------------------------------------------------------------------------ fairness

async fn fairness_phase(
    queue: &Arc<Queue>,
    label: &str,
    p: &Params,
    flood: usize,
    progress: bool,
    clean_up: bool,
) -> Result<Phase> {
    let name = if flood > 0 {
        "with flood"
    } else {
        "without flood"
    };
    let flood_tenant = queue.new_id();
    // The flood's jobs share a session, so what is left of it can be cancelled in bulk.
    let flood_session = queue.new_id();
    if flood > 0 {
        enqueue_flood(queue, label, flood_tenant, flood_session, flood, progress).await?;
    }

    let total = p.small_jobs() as u64;
    let bar = bar(progress, total);
    bar.set_prefix(format!("{label} fairness {name}"));
    let small: Vec<Uuid> = (0..p.small_tenants).map(|_| queue.new_id()).collect();
    let watched = Arc::new(Watched {
        tenants: small.iter().copied().collect(),
        completed: AtomicU64::new(0),
    });
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(queue, p, &stop, &counters, Some(&watched));
    let started = Instant::now();
    let mut pacer = Some(tokio::spawn(pace_small_tenants(
        Arc::clone(queue),
        small,
        p.clone(),
        started,
    )));
    let mut paced = Ok(());
    while watched.completed.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(10)).await;
        bar.set_position(watched.completed.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{} flood jobs done",
            counters
                .completed
                .load(Ordering::Relaxed)
                .saturating_sub(watched.completed.load(Ordering::Relaxed))
        ));
        if let Some(h) = pacer.take_if(|h| h.is_finished()) {
            paced = join_tasks(vec![h]).await.map(|_| ());
            if paced.is_err() {
                break;
            }
        }
        if any_finished(&workers) {
            break;
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let worked = join_tasks(workers).await;
    if let Some(h) = pacer {
        h.abort();
    }
    let claims = match (paced, worked) {
        (Ok(()), Ok(claims)) => claims.into_iter().flatten().collect::<Vec<_>>(),
        (Err(e), _) | (_, Err(e)) => {
            bar.abandon_with_message(format!("failed: {e}"));
            return Err(e);
        }
    };
    let small_done = watched.completed.load(Ordering::Relaxed);
    let flood_completed = counters
        .completed
        .load(Ordering::Relaxed)
        .saturating_sub(small_done);
    let mut waits = waits(queue, &claims).await?;
    if clean_up && flood > 0 {
        bar.set_message("cancelling the rest of the flood");
        queue.cancel_session(flood_tenant, flood_session).await?;
    }
    waits.sort_unstable();
    let ms = |p: f64| bench::percentile(&waits, p) / 1_000.0;
    let phase = Phase {
        flood_jobs: flood,
        small_jobs: waits.len(),
        wait_p50_ms: ms(0.50),
        wait_p99_ms: ms(0.99),
        wait_max_ms: ms(1.0),
        flood_jobs_completed: flood_completed,
        elapsed_secs: elapsed.as_secs_f64(),
    };
    bar.finish_with_message(format!(
        "wait p50 {:.1} ms, p99 {:.1} ms",
        phase.wait_p50_ms, phase.wait_p99_ms
    ));
    Ok(phase)
}

/// Enqueues the flood before the phase starts: [`FLOOD_PRODUCERS`] tasks, batches of
/// [`FLOOD_BATCH`].
async fn enqueue_flood(
    queue: &Arc<Queue>,
    label: &str,
    tenant: Uuid,
    session: Uuid,
    flood: usize,
    progress: bool,
) -> Result<()> {
    let bar = bar(progress, flood as u64);
    bar.set_prefix(format!("{label} enqueueing the flood"));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<JoinHandle<Result<()>>> = (0..FLOOD_PRODUCERS)
        .map(|_| {
            let (queue, next, done) = (Arc::clone(queue), Arc::clone(&next), Arc::clone(&done));
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(FLOOD_BATCH as u64, Ordering::Relaxed) as usize;
                    if first >= flood {
                        return Ok(());
                    }
                    let n = FLOOD_BATCH.min(flood - first);
                    let jobs = (0..n).map(|_| noop_job().session(session)).collect();
                    queue.enqueue_batch(tenant, jobs).await?;
                    done.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while !tasks.iter().all(JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bar.set_position(done.load(Ordering::Relaxed));
    }
    join_tasks(tasks).await?;
    bar.finish_and_clear();
    Ok(())
}

/// Sends the small tenants' jobs: batch `i` (round `i / tenants`, tenant `i % tenants`) at
/// `start + i * pace`, each in its own task so a slow enqueue never delays the next batch.
async fn pace_small_tenants(
    queue: Arc<Queue>,
    tenants: Vec<Uuid>,
    p: Params,
    start: Instant,
) -> Result<()> {
    let batch = p.small_batch.max(1);
    let rounds = p.jobs_per_small_tenant.div_ceil(batch);
    let mut sends = Vec::new();
    let mut i = 0u32;
    for round in 0..rounds {
        let n = batch.min(p.jobs_per_small_tenant - round * batch);
        for &tenant in &tenants {
            let at = start + p.pace * i;
            i += 1;
            let queue = Arc::clone(&queue);
            sends.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let jobs = (0..n).map(|_| noop_job()).collect();
                queue.enqueue_batch(tenant, jobs).await.map(|_| ())
            }));
        }
    }
    join_tasks(sends).await.map(|_| ())
}

/// Each claimed job's wait in nanoseconds (for [`bench::percentile`]): claim time minus
/// `max(created_at, run_at)` of its record, never negative. Each job counts once (its first
/// claim).
async fn waits(queue: &Queue, claims: &[Claimed]) -> Result<Vec<u64>> {
    let mut first: HashMap<Uuid, Claimed> = HashMap::new();
    for c in claims {
        first
            .entry(c.job)
            .and_modify(|e| {
                if c.claimed_at < e.claimed_at {
                    *e = *c;
                }
            })
            .or_insert(*c);
    }
    let claims: Vec<Claimed> = first.into_values().collect();
    let mut out = Vec::with_capacity(claims.len());
    for chunk in claims.chunks(64) {
        let jobs = join_all(chunk.iter().map(|c| queue.get(c.tenant, c.job))).await;
        for (c, job) in chunk.iter().zip(jobs) {
            let job = job?.ok_or(steward_queue::Error::NotFound(c.job))?;
            let ready = job.created_at.max(job.run_at);
            let wait_us = u64::try_from(c.claimed_at - ready).unwrap_or(0);
            out.push(wait_us.saturating_mul(1_000));
        }
    }
    Ok(out)
}

// -------------------------------------------------------------------------------- helpers

fn any_finished<T>(tasks: &[JoinHandle<T>]) -> bool {
    tasks.iter().any(JoinHandle::is_finished)
}

/// Awaits every task; the first error wins, a panic is resumed.
async fn join_tasks<T>(tasks: Vec<JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            // Cancelled: only tasks this module aborted, whose result is not wanted.
            Err(_) => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn bar(progress: bool, len: u64) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

// --------------------------------------------------------------------------------- output

/// The report as readable tables, with the machine and the settings in the header.
pub(crate) fn render_table(report: &Report) -> String {
    let m = &report.machine;
    let p = &report.params;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {} cores, {} {}{}",
        m.cores,
        m.os,
        m.arch,
        m.cpu
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    );
    for r in &report.results {
        let _ = writeln!(out, "durability of {}: {}", r.store, r.durability);
    }
    let _ = writeln!(
        out,
        "\nthroughput: no-op jobs; {} producers enqueue batches of {} over {} tenants, {} workers \
         claim up to {} and complete them in one transaction; {:.1} s window after {:.1} s warm-up",
        p.producers,
        p.enqueue_batch,
        p.tenants,
        p.workers,
        p.claim_max,
        p.window.as_secs_f64(),
        p.warmup.as_secs_f64()
    );
    let _ = writeln!(out, "ceiling: {}\n", report.ceiling_basis);
    let header = [
        "store",
        "queue jobs/s",
        "ceiling keys/s",
        "ceiling txn/s",
        "jobs/keys",
        "target",
    ];
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.store.clone(),
                format!("{:.0}", r.throughput.jobs_per_sec),
                format!("{:.0}", r.ceiling.keys_per_sec),
                format!("{:.0}", r.ceiling.txn_per_sec),
                format!("{:.3}", r.ratio_to_ceiling),
                met(
                    r.throughput_target_met,
                    format!(">= {:.2}", r.target_min_ratio),
                ),
            ]
        })
        .collect();
    table(&mut out, &header, &rows, 1);

    let _ = writeln!(
        out,
        "\nfairness: one tenant's flood of {} jobs enqueued first (or none); then {} tenants x {} \
         jobs, a batch of {} every {} ms round-robin; wait = claim - max(created_at, run_at)\n",
        p.flood,
        p.small_tenants,
        p.jobs_per_small_tenant,
        p.small_batch,
        p.pace.as_secs_f64() * 1_000.0
    );
    let header = [
        "store",
        "phase",
        "small jobs",
        "p50 ms",
        "p99 ms",
        "max ms",
        "flood jobs run",
        "secs",
    ];
    let mut rows = Vec::new();
    for r in &report.results {
        for (name, ph) in [
            ("without flood", &r.fairness.without_flood),
            ("with flood", &r.fairness.with_flood),
        ] {
            rows.push(vec![
                r.store.clone(),
                name.to_string(),
                ph.small_jobs.to_string(),
                format!("{:.2}", ph.wait_p50_ms),
                format!("{:.2}", ph.wait_p99_ms),
                format!("{:.2}", ph.wait_max_ms),
                ph.flood_jobs_completed.to_string(),
                format!("{:.2}", ph.elapsed_secs),
            ]);
        }
    }
    table(&mut out, &header, &rows, 2);
    let _ = writeln!(
        out,
        "\nratio with/without flood, waits floored at {} ms:\n",
        WAIT_FLOOR.as_millis()
    );
    let header = ["store", "p50 ratio", "p99 ratio", "target"];
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            let f = &r.fairness;
            vec![
                r.store.clone(),
                format!("{:.2}", f.p50_ratio),
                format!("{:.2}", f.p99_ratio),
                met(f.target_met, format!("<= {:.0}", f.target_max_ratio)),
            ]
        })
        .collect();
    table(&mut out, &header, &rows, 1);
    out
}

fn met(ok: bool, target: String) -> String {
    format!("{target}: {}", if ok { "met" } else { "NOT met" })
}

/// Appends an aligned table: the first `text_cols` columns align left, the rest right.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>], text_cols: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, &w)) in cells.zip(&widths).enumerate() {
            if i < text_cols {
                let _ = write!(l, "{cell:<w$}  ");
            } else {
                let _ = write!(l, "{cell:>w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&mut header.iter().copied()));
    for row in rows {
        let _ = writeln!(out, "{}", line(&mut row.iter().map(String::as_str)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Params {
        Params {
            window: Duration::from_millis(100),
            warmup: Duration::from_millis(20),
            workers: 4,
            claim_max: 8,
            producers: 1,
            enqueue_batch: 20,
            tenants: 3,
            max_backlog: 200,
            flood: 300,
            small_tenants: 5,
            jobs_per_small_tenant: 4,
            small_batch: 3,
            pace: Duration::from_millis(1),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_counts_jobs_that_completed_and_draining_empties_the_queue() {
        let queue = Arc::new(Queue::new(Database::memory(), QueueConfig::default()).unwrap());
        let t = throughput(&queue, "memory:", &tiny(), false, true)
            .await
            .unwrap();
        assert!(t.jobs > 0 && t.jobs_per_sec > 0.0, "{t:?}");
        // Drained: one more claim finds nothing of the benchmark's kind.
        let left = queue.claim(&tiny().claim_request(0)).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fairness_phase_waits_for_every_small_job_and_cancels_the_flood_left() {
        let p = tiny();
        let queue = Arc::new(Queue::new(Database::memory(), QueueConfig::default()).unwrap());
        let phase = fairness_phase(&queue, "memory:", &p, p.flood, false, true)
            .await
            .unwrap();
        // 5 tenants x 4 jobs, in batches of 3 then 1: every one claimed once and measured.
        assert_eq!(phase.small_jobs, 20, "{phase:?}");
        assert_eq!(phase.flood_jobs, 300);
        assert!(phase.wait_p50_ms <= phase.wait_p99_ms && phase.wait_p99_ms <= phase.wait_max_ms);
        assert!(phase.flood_jobs_completed <= 300);
        // The flood's rest was cancelled: nothing of the kind is left to claim.
        let left = queue.claim(&p.claim_request(0)).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn waits_use_the_later_of_creation_and_run_at_and_the_first_claim() {
        let queue = Queue::new(Database::memory(), QueueConfig::default()).unwrap();
        let tenant = queue.new_id();
        let now = queue.db().clock().now_micros();
        let later = now + 5_000_000;
        let a = queue.enqueue(tenant, noop_job()).await.unwrap().id;
        let b = queue
            .enqueue(tenant, noop_job().run_at(later))
            .await
            .unwrap()
            .id;
        let created = queue.get(tenant, a).await.unwrap().unwrap().created_at;
        let claims = [
            Claimed {
                tenant,
                job: a,
                claimed_at: created + 2_000,
            },
            // A later claim of the same job is ignored.
            Claimed {
                tenant,
                job: a,
                claimed_at: created + 9_000,
            },
            Claimed {
                tenant,
                job: b,
                claimed_at: later + 3_000,
            },
        ];
        let mut w = waits(&queue, &claims).await.unwrap();
        w.sort_unstable();
        assert_eq!(w, [2_000_000, 3_000_000]);
    }

    #[test]
    fn table_shows_targets_and_ratios() {
        let phase = |p50: f64| Phase {
            flood_jobs: 0,
            small_jobs: 1000,
            wait_p50_ms: p50,
            wait_p99_ms: p50 * 2.0,
            wait_max_ms: p50 * 3.0,
            flood_jobs_completed: 0,
            elapsed_secs: 2.0,
        };
        let ceiling = ScenarioResult {
            store: "memory:".into(),
            scenario: bench::BATCHED.name,
            keys_per_txn: 100,
            tasks: 1,
            txns: 10,
            keys: 1000,
            elapsed_secs: 1.0,
            txn_per_sec: 10.0,
            keys_per_sec: 1000.0,
            latency: bench::Latency {
                p50_us: 1.0,
                p99_us: 2.0,
                max_us: 3.0,
            },
        };
        let report = Report {
            machine: Machine::detect(),
            params: Params::quick(),
            kind: KIND,
            ceiling_basis: CEILING_BASIS,
            results: vec![StoreResult {
                store: "memory:".into(),
                durability: "none",
                throughput: Throughput {
                    jobs: 600,
                    elapsed_secs: 1.0,
                    jobs_per_sec: 600.0,
                    enqueued_per_sec: 600.0,
                },
                ceiling,
                ratio_to_ceiling: 0.6,
                target_min_ratio: THROUGHPUT_TARGET,
                throughput_target_met: true,
                fairness: Fairness {
                    without_flood: phase(0.5),
                    with_flood: phase(3.0),
                    p50_ratio: 3.0,
                    p99_ratio: 6.0,
                    target_max_ratio: FAIRNESS_TARGET,
                    target_met: false,
                },
            }],
        };
        let t = render_table(&report);
        for want in [
            "cores",
            "durability of memory:",
            ">= 0.50: met",
            "<= 2: NOT met",
            "with flood",
            "without flood",
        ] {
            assert!(t.contains(want), "{want} missing from:\n{t}");
        }
    }
}
