//! The deterministic simulation's world: the store, the clock, the actors and the step loop.
//!
//! # Determinism
//! One seed drives everything: a [`fastrand::Rng`] makes every choice of the step loop (which
//! actors act, what they do, how the clock moves), and seeds derived from it seed the store
//! (`OpenOptions::seed`), each node's fault injector ([`FaultConfig`]) and each node's queue
//! ([`Queue::with_seed`]). Time is a [`ManualClock`] that only the step loop moves. The runtime
//! is tokio's current-thread runtime with paused time, so the retry loop's backoff sleeps and
//! the injected commit latency advance tokio's clock by themselves, in a fixed order.
//!
//! # Shape of a run
//! 1. Setup: 5 to 20 tenants; three nodes, each a queue over its own faulty handle of one
//!    `memory:` store (node 0 `FaultConfig::chaos`, the others a random mix of conflicts,
//!    `commit_unknown_result` applied and not applied, `transaction_too_old` on commit and on
//!    read, and commit latency); 3 to 8 workers (some with a kinds filter); three cron
//!    schedules with different overlap and missed-tick policies; the nodes are the replicas.
//! 2. Chaos: `steps` rounds. Each round moves the clock (mostly forward a little, sometimes
//!    past leases, sometimes the wall clock alone jumps forward, or back a few seconds), then
//!    either runs one call alone (an audit, or a hung worker's late report, whose expected
//!    answer is then known exactly) or starts many calls at once on the runtime
//!    (`join_all`: their transactions interleave at every await): producers (batches,
//!    priorities, run times, idempotency and supersede keys, twin submissions), every worker
//!    with some probability ([`worker`]), a canceller, a prune (its tenant read before and
//!    after), and all cron replicas ticking at the same instant. Results are checked against
//!    the oracle ([`oracle`]) as they come back.
//! 3. Every worker stops. Audit: every job terminal or legitimately pending. Drain: a healthy
//!    worker runs everything, the clock moves past every run time, backoff and lease. Audit:
//!    every job terminal.
//! 4. Fairness: one tenant floods, a few small tenants enqueue a little; claim rounds count
//!    how long each small tenant waits for its first claim. Drain again.
//! 5. Trickle: nearly empty tenants, an enqueue racing a claim that may retire the tenant's
//!    doorbell, then a probe: no waiting job may be orphaned.
//! 6. Final audit and the cron checks ([`check`]).

mod check;
mod ops;
mod oracle;
mod worker;

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use steward_queue::{
    ClaimRequest, Error, Job, JobState, Lease, ListFilter, MissedPolicy, NewJob, Outcome,
    OverlapPolicy, PruneStats, Queue, QueueConfig, RetryPolicy, ScheduleSpec, Scheduler,
    TenantQueueConfig,
};
use steward_store::{Clock, Database, FaultConfig, ManualClock, OpenOptions, RunOptions};
use uuid::Uuid;

use self::ops::{effects, exec, short, Op, Report, Res};
use self::oracle::{Moment, Oracle};
use self::worker::{Action, Held, Plan, Worker};

/// Where the simulated wall clock starts (2023-11-14), plus up to a day chosen by the seed.
const T0: i64 = 1_700_000_000_000_000;
/// The kinds producers enqueue (cron jobs have kinds starting with `cron.`).
const KINDS: [&str; 3] = ["email", "report", "sync"];
/// Nodes: each a queue over its own faulty handle of the one store; also the cron replicas.
const NODES: usize = 3;
/// Completed and cancelled jobs are pruned after this (the queue's minimum is 60 s).
const FINISHED_RETENTION: Duration = Duration::from_secs(120);
/// Dead jobs are pruned after this.
const DEAD_RETENTION: Duration = Duration::from_secs(300);
/// The longest lease a worker asks for (and the longest heartbeat extension).
const MAX_LEASE_SECS: u64 = 60;
/// Rounds between two audits during the chaos phase.
const AUDIT_EVERY: u64 = 60;

/// How a run is sized.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Rounds of the chaos phase.
    pub(crate) steps: usize,
    /// Write the whole trace of the run here.
    pub(crate) dump_trace: Option<std::path::PathBuf>,
    /// Tenants also get `max_running` and admission limits (weights always). Off by default
    /// while the two ignored cases in `found` (simulation.rs) fail: with them most seeds do.
    pub(crate) limits: bool,
}

/// Counts over one run (or summed over many).
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub(crate) rounds: u64,
    pub(crate) ops: u64,
    pub(crate) jobs: u64,
    pub(crate) leases: u64,
    pub(crate) completes: u64,
    pub(crate) retries: u64,
    pub(crate) dead: u64,
    pub(crate) lease_lost: u64,
    pub(crate) late_ok: u64,
    pub(crate) late_lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) superseded: u64,
    pub(crate) cancel_flags: u64,
    pub(crate) refused: u64,
    pub(crate) pruned: u64,
    pub(crate) ticks_fired: u64,
    pub(crate) ticks_skipped: u64,
    pub(crate) ticks_coalesced: u64,
    pub(crate) clock_jumps_back: u64,
    pub(crate) faults_conflict: u64,
    pub(crate) faults_unknown_applied: u64,
    pub(crate) faults_unknown_not_applied: u64,
    pub(crate) faults_too_old: u64,
    /// Claim rounds until the slowest small tenant got its first claim, over the bound's
    /// tenant count (worst run, when summed).
    pub(crate) fairness_worst: f64,
}

impl Stats {
    /// Adds `other` into `self` (the fairness figure keeps the worst).
    pub(crate) fn add(&mut self, o: &Stats) {
        self.rounds += o.rounds;
        self.ops += o.ops;
        self.jobs += o.jobs;
        self.leases += o.leases;
        self.completes += o.completes;
        self.retries += o.retries;
        self.dead += o.dead;
        self.lease_lost += o.lease_lost;
        self.late_ok += o.late_ok;
        self.late_lost += o.late_lost;
        self.duplicates += o.duplicates;
        self.superseded += o.superseded;
        self.cancel_flags += o.cancel_flags;
        self.refused += o.refused;
        self.pruned += o.pruned;
        self.ticks_fired += o.ticks_fired;
        self.ticks_skipped += o.ticks_skipped;
        self.ticks_coalesced += o.ticks_coalesced;
        self.clock_jumps_back += o.clock_jumps_back;
        self.faults_conflict += o.faults_conflict;
        self.faults_unknown_applied += o.faults_unknown_applied;
        self.faults_unknown_not_applied += o.faults_unknown_not_applied;
        self.faults_too_old += o.faults_too_old;
        self.fairness_worst = self.fairness_worst.max(o.fairness_worst);
    }
}

/// A run that held every invariant.
#[derive(Debug, Clone)]
pub(crate) struct RunOutcome {
    /// FNV-1a of every action and result, in order.
    pub(crate) trace_hash: u64,
    /// FNV-1a of every job record and tick record at the end.
    pub(crate) store_digest: u64,
    pub(crate) stats: Stats,
}

/// A run that broke an invariant (or panicked).
#[derive(Debug, Clone)]
pub(crate) struct RunFailure {
    pub(crate) message: String,
    pub(crate) trace_hash: u64,
    /// The last lines of the trace.
    pub(crate) trace_tail: Vec<String>,
}

/// Every action and result, as text, and their running hash.
#[derive(Debug)]
struct Trace {
    lines: Vec<String>,
    hash: u64,
}

impl Trace {
    fn new() -> Self {
        Trace {
            lines: Vec::new(),
            hash: FNV_OFFSET,
        }
    }

    fn push(&mut self, line: String) {
        self.hash = fnv(self.hash, line.as_bytes());
        self.hash = fnv(self.hash, b"\n");
        self.lines.push(line);
    }

    fn tail(&self, n: usize) -> Vec<String> {
        self.lines[self.lines.len().saturating_sub(n)..].to_vec()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: stable across processes, so a trace hash can be compared between runs.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one seed to the end on its own current-thread runtime with paused time.
pub(crate) fn run_seed(seed: u64, settings: &Settings) -> Result<RunOutcome, RunFailure> {
    let trace = Arc::new(Mutex::new(Trace::new()));
    let result = {
        let trace = Arc::clone(&trace);
        std::panic::catch_unwind(AssertUnwindSafe(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .map_err(|e| format!("cannot build the runtime: {e}"))?;
            rt.block_on(async move {
                let mut world = World::new(seed, settings.clone(), trace);
                Box::pin(world.run()).await
            })
        }))
    };
    let (trace_hash, trace_tail) = {
        let t = lock(&trace);
        if let Some(path) = &settings.dump_trace {
            if let Err(e) = std::fs::write(path, t.lines.join("\n")) {
                eprintln!("cannot write the trace to {}: {e}", path.display());
            }
        }
        (t.hash, t.tail(80))
    };
    match result {
        Ok(Ok(mut out)) => {
            out.trace_hash = trace_hash;
            Ok(out)
        }
        Ok(Err(message)) => Err(RunFailure {
            message,
            trace_hash,
            trace_tail,
        }),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a non-string panic".into());
            Err(RunFailure {
                message: format!("panicked: {what}"),
                trace_hash,
                trace_tail,
            })
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Mixes the run's seed with a component number (SplitMix64), for the derived seeds.
fn derive(seed: u64, part: u64) -> u64 {
    let mut z = seed ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A cron schedule of the simulation.
#[derive(Debug, Clone)]
struct SimSchedule {
    tenant: Uuid,
    name: String,
    expression: String,
    kind: String,
    overlap: OverlapPolicy,
    missed: MissedPolicy,
    /// The wall time of the upsert: its first tick is the first after this.
    created_at: i64,
    spec: ScheduleSpec,
}

pub(crate) struct World {
    seed: u64,
    settings: Settings,
    rng: fastrand::Rng,
    clock: ManualClock,
    /// Each node: a queue over its own faulty handle of the store.
    nodes: Vec<Queue>,
    /// A queue over the store without faults, used only to read the truth.
    truth: Queue,
    /// Tenants producers enqueue for.
    tenants: Vec<Uuid>,
    /// Every tenant that ever had a job (the fairness phase adds some).
    all_tenants: Vec<Uuid>,
    workers: Vec<Worker>,
    /// Workers that act in the chaos phase (the rest serve the drain and fairness phases).
    sim_workers: usize,
    schedules: Vec<SimSchedule>,
    /// Each tenant's queue settings (absent: the defaults).
    tenant_cfg: std::collections::BTreeMap<Uuid, TenantQueueConfig>,
    oracle: Oracle,
    trace: Arc<Mutex<Trace>>,
    round: u64,
    /// The highest wall time seen so far: a lease ending later cannot have been rescued.
    max_wall: i64,
    /// The wall time of the latest round in which every cron replica ticked successfully.
    last_tick_wall: Option<i64>,
    next_arg: u64,
    stats: Stats,
}

impl World {
    fn new(seed: u64, settings: Settings, trace: Arc<Mutex<Trace>>) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let clock = ManualClock::new(T0 + rng.i64(0..86_400_000_000));
        let raw = Database::memory_with(OpenOptions {
            clock: clock.shared(),
            seed: Some(derive(seed, 1)),
            run: RunOptions {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(50),
                ..RunOptions::default()
            },
            ..OpenOptions::default()
        });
        let config = QueueConfig {
            retry: RetryPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
                jitter: 0.25,
            },
            finished_retention: FINISHED_RETENTION,
            dead_retention: DEAD_RETENTION,
            ..QueueConfig::default()
        };
        let mut nodes = Vec::new();
        for n in 0..NODES as u64 {
            // Every node gets its own mix: node 0 is FaultConfig::chaos, the others vary.
            let fault_seed = derive(seed, 10 + n);
            let faults = if n == 0 {
                FaultConfig::chaos(fault_seed)
            } else {
                FaultConfig {
                    seed: fault_seed,
                    conflict: rng.f64() * 0.2,
                    unknown_applied: rng.f64() * 0.12,
                    unknown_not_applied: rng.f64() * 0.12,
                    too_old_on_commit: rng.f64() * 0.05,
                    too_old_on_read: rng.f64() * 0.05,
                    max_latency: Duration::from_millis(rng.u64(1..=3)),
                    // Reads take time, as on FoundationDB: commits of other nodes land between
                    // a transaction's reads (and between the reads a claim makes together).
                    read_latency: Duration::from_micros(rng.u64(0..=400)),
                }
            };
            let queue = Queue::with_seed(
                raw.with_faults(faults),
                config.clone(),
                derive(seed, 20 + n),
            );
            nodes.push(queue.unwrap_or_else(|e| panic!("queue config: {e}")));
        }
        let truth = Queue::with_seed(raw, config, derive(seed, 30))
            .unwrap_or_else(|e| panic!("queue config: {e}"));
        let tenant_count = rng.usize(5..=20);
        let tenants: Vec<Uuid> = (0..tenant_count).map(|_| random_uuid(&mut rng)).collect();
        let worker_count = rng.usize(3..=8);
        let mut workers = Vec::new();
        for i in 0..worker_count {
            // The first two take any kind, so every job has a worker; the others may filter.
            let kinds = if i < 2 || rng.bool() {
                None
            } else {
                let mut k: Vec<String> = KINDS
                    .iter()
                    .filter(|_| rng.bool())
                    .map(|s| (*s).to_string())
                    .collect();
                if rng.bool() {
                    k.push("cron.tick10".into());
                }
                if k.is_empty() {
                    k.push(KINDS[rng.usize(0..KINDS.len())].to_string());
                }
                Some(k)
            };
            workers.push(Worker {
                name: format!("w{i}"),
                node: i % NODES,
                kinds,
                held: Vec::new(),
                resend: None,
            });
        }
        let sim_workers = workers.len();
        workers.push(Worker {
            name: "healthy".into(),
            node: 0,
            kinds: None,
            held: Vec::new(),
            resend: None,
        });
        let now = clock.now_micros();
        World {
            seed,
            settings,
            rng,
            clock,
            nodes,
            truth,
            all_tenants: tenants.clone(),
            tenants,
            workers,
            sim_workers,
            schedules: Vec::new(),
            tenant_cfg: std::collections::BTreeMap::new(),
            oracle: Oracle::default(),
            trace,
            round: 0,
            max_wall: now,
            last_tick_wall: None,
            next_arg: 0,
            stats: Stats::default(),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    fn moment(&self) -> Moment {
        Moment {
            round: self.round,
            now: self.now(),
            max_wall: self.max_wall,
        }
    }

    fn trace(&self, line: impl Into<String>) {
        lock(&self.trace).push(line.into());
    }

    fn violation(&mut self, msg: impl Into<String>) {
        self.oracle.violation(self.round, msg.into());
    }

    /// Fails the run with every violation found so far.
    fn checkpoint(&self) -> Result<(), String> {
        if self.oracle.violations.is_empty() {
            return Ok(());
        }
        let shown: Vec<&String> = self.oracle.violations.iter().take(8).collect();
        let more = self.oracle.violations.len().saturating_sub(shown.len());
        let mut msg = shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ");
        if more > 0 {
            msg.push_str(&format!("\n  ... and {more} more"));
        }
        Err(msg)
    }

    async fn run(&mut self) -> Result<RunOutcome, String> {
        self.trace(format!(
            "seed {} tenants={} workers={} start={}",
            self.seed,
            self.tenants.len(),
            self.sim_workers,
            self.now()
        ));
        self.setup_cron().await;
        self.setup_tenants().await;
        self.checkpoint()?;
        for _ in 0..self.settings.steps {
            self.step().await;
            self.checkpoint()?;
        }
        self.trace("phase: chaos over, every worker stops");
        for w in &mut self.workers {
            w.held.clear();
            w.resend = None;
        }
        self.round += 1;
        self.audit(false).await;
        self.checkpoint()?;
        self.drain().await;
        self.audit(true).await;
        self.checkpoint()?;
        self.fairness().await;
        self.checkpoint()?;
        self.drain().await;
        self.audit(true).await;
        self.checkpoint()?;
        self.trickle().await;
        self.checkpoint()?;
        self.audit(true).await;
        self.check_cron().await;
        self.checkpoint()?;
        for node in &self.nodes {
            if let Some(f) = node.db().fault_stats() {
                self.stats.faults_conflict += f.conflicts;
                self.stats.faults_unknown_applied += f.unknown_applied;
                self.stats.faults_unknown_not_applied += f.unknown_not_applied;
                self.stats.faults_too_old += f.too_old;
            }
        }
        self.stats.rounds = self.round;
        self.stats.jobs = self.oracle.jobs.len() as u64;
        let store_digest = self.digest().await?;
        Ok(RunOutcome {
            trace_hash: 0,
            store_digest,
            stats: self.stats.clone(),
        })
    }

    // --------------------------------------------------------------------------- setup

    /// Tenant settings: weights for the fair share of claims; with `limits`, also concurrency
    /// limits (`max_running`) and admission limits (`max_queued`, `max_queued_bytes`).
    async fn setup_tenants(&mut self) {
        for tenant in self.tenants.clone() {
            let mut cfg = TenantQueueConfig {
                weight: self.rng.u32(1..=5),
                ..TenantQueueConfig::default()
            };
            if self.settings.limits {
                if self.rng.u32(0..100) < 40 {
                    cfg.max_running = Some(self.rng.u32(1..=3));
                }
                if self.rng.u32(0..100) < 20 {
                    cfg.max_queued = Some(self.rng.u64(15..=40));
                }
                if self.rng.u32(0..100) < 10 {
                    cfg.max_queued_bytes = Some(self.rng.u64(200..=800));
                }
            }
            let node = self.rng.usize(0..NODES);
            let res = self.nodes[node].set_tenant_config(tenant, &cfg).await;
            self.trace(format!(
                "n{node} tenant {} config {cfg:?} -> {res:?}",
                short(tenant)
            ));
            match res {
                Ok(()) => {
                    self.tenant_cfg.insert(tenant, cfg);
                }
                Err(e) => self.violation(format!("set_tenant_config failed: {e}")),
            }
        }
    }

    async fn setup_cron(&mut self) {
        let specs = [
            (
                "tick10",
                "*/10 * * * * *",
                "cron.tick10",
                2,
                OverlapPolicy::Skip,
                MissedPolicy::Coalesce,
            ),
            (
                "tick30",
                "*/30 * * * * *",
                "cron.tick30",
                3,
                OverlapPolicy::Allow,
                MissedPolicy::Drop,
            ),
            (
                "minutely",
                "* * * * *",
                "cron.minutely",
                1,
                OverlapPolicy::Skip,
                MissedPolicy::Drop,
            ),
        ];
        for (name, expression, kind, max_attempts, overlap, missed) in specs {
            let tenant = self.tenants[self.rng.usize(0..self.tenants.len())];
            let node = self.rng.usize(0..NODES);
            let created_at = self.now();
            let spec = ScheduleSpec::new(
                Some(tenant),
                name,
                expression,
                NewJob::new(kind, json!({ "schedule": name })).max_attempts(max_attempts),
            )
            .overlap(overlap)
            .missed(missed);
            let res = Scheduler::new(&self.nodes[node]).upsert(spec.clone()).await;
            self.trace(format!(
                "n{node} upsert {name} t={} at {created_at} -> {:?}",
                short(tenant),
                res.as_ref().map(|s| s.next_fire)
            ));
            if let Err(e) = res {
                self.violation(format!("upserting schedule {name} failed: {e}"));
                continue;
            }
            self.oracle.add_schedule(name, tenant, kind, max_attempts);
            self.schedules.push(SimSchedule {
                tenant,
                name: name.into(),
                expression: expression.into(),
                kind: kind.into(),
                overlap,
                missed,
                created_at,
                spec,
            });
        }
        // Sometimes another replica, whose wall clock lags by a few seconds, registers the
        // same schedules right away (as every replica does at start-up): it must add no tick
        // from before their creation.
        if self.rng.u32(0..100) < 30 {
            let now = self.now();
            let lag = self.rng.i64(500_000..5_000_000);
            let node = self.rng.usize(0..NODES);
            self.clock.set_wall_micros(now - lag);
            for s in self.schedules.clone() {
                let res = Scheduler::new(&self.nodes[node]).upsert(s.spec).await;
                self.trace(format!(
                    "n{node} (clock {lag} us behind) upsert {} -> {:?}",
                    s.name,
                    res.as_ref().map(|s| s.next_fire)
                ));
                if let Err(e) = res {
                    self.violation(format!("upserting schedule {} failed: {e}", s.name));
                }
            }
            self.clock.set_wall_micros(now);
        }
    }

    // ---------------------------------------------------------------------- chaos phase

    /// Moves the clock. Returns whether the wall clock jumped back.
    fn move_clock(&mut self) -> bool {
        let r = self.rng.u32(0..1000);
        let wall = self.now();
        let what = match r {
            0..700 => {
                let d = Duration::from_millis(self.rng.u64(0..1500));
                self.clock.advance(d);
                format!("advance {d:?}")
            }
            700..900 => {
                let d = Duration::from_millis(self.rng.u64(1000..10_000));
                self.clock.advance(d);
                format!("advance {d:?}")
            }
            900..960 => {
                let d = Duration::from_secs(self.rng.u64(20..90));
                self.clock.advance(d);
                format!("advance {d:?}")
            }
            960..980 => {
                let d = self.rng.i64(10_000_000..120_000_000);
                self.clock.set_wall_micros(wall + d);
                format!("wall clock jumps forward {d} us")
            }
            _ => {
                let d = self.rng.i64(1_000_000..5_000_000);
                self.clock.set_wall_micros(wall - d);
                self.stats.clock_jumps_back += 1;
                format!("wall clock jumps back {d} us")
            }
        };
        self.max_wall = self.max_wall.max(self.now());
        self.trace(format!("r{} clock: {what} -> {}", self.round, self.now()));
        r >= 980
    }

    async fn step(&mut self) {
        self.round += 1;
        let jumped_back = self.move_clock();
        if self.round.is_multiple_of(AUDIT_EVERY) {
            self.audit(false).await;
            return;
        }
        // Sometimes a hung worker wakes up and reports, alone in its round.
        if self.rng.u32(0..100) < 30 {
            let now = self.now();
            let ready = (0..self.sim_workers).find(|&w| {
                self.workers[w].resend.is_none()
                    && self.workers[w].held.iter().any(|h| {
                        matches!(h.plan, Plan::Hang(_)) && now > h.expires_at && h.hang_extra == 0
                    })
            });
            if let Some(w) = ready {
                if let Action::Late(op) = self.worker_action(w, true) {
                    self.late_report(op).await;
                    return;
                }
            }
        }
        let mut ops = Vec::new();
        let mut prune: Option<(Uuid, Vec<Job>)> = None;
        if self.rng.u32(0..100) < 3 {
            let tenant = self.tenants[self.rng.usize(0..self.tenants.len())];
            // The tenant's jobs before the round; read after the round too.
            match list_all(&self.truth, tenant).await {
                Ok(jobs) => prune = Some((tenant, jobs)),
                Err(e) => return self.violation(e),
            }
            ops.push(Op::Prune {
                node: self.rng.usize(0..NODES),
                tenant,
            });
        }
        let producers = match self.rng.u32(0..100) {
            0..50 => 0,
            50..90 => 1,
            _ => 2,
        };
        for _ in 0..producers {
            let op = self.produce();
            // Sometimes the same request twice at once: two submissions of one logical
            // request (same keys, new ids), or one client retrying its call (same ids); both
            // calls of a retry are marked, either may be the one answered "duplicate".
            let Op::Enqueue {
                node, tenant, jobs, ..
            } = op
            else {
                continue;
            };
            let keyed = jobs
                .iter()
                .any(|j| j.idempotency_key.is_some() || j.supersede_key.is_some());
            let twin_chance = if keyed { 40 } else { 15 };
            let mut retry = false;
            if self.rng.u32(0..100) < twin_chance {
                retry = self.rng.bool();
                let mut twin = jobs.clone();
                if !retry {
                    for j in &mut twin {
                        j.id = Some(self.new_job_id());
                    }
                }
                ops.push(Op::Enqueue {
                    node: self.rng.usize(0..NODES),
                    tenant,
                    jobs: twin,
                    retry,
                });
            }
            ops.push(Op::Enqueue {
                node,
                tenant,
                jobs,
                retry,
            });
        }
        for w in 0..self.sim_workers {
            if self.rng.u32(0..100) < 70 {
                if let Action::Op(op) = self.worker_action(w, false) {
                    ops.push(op);
                }
            }
        }
        if self.rng.u32(0..100) < 10 {
            if let Some(op) = self.cancel_op() {
                ops.push(op);
            }
        }
        if self.rng.u32(0..100) < 25 {
            ops.extend((0..NODES).map(|replica| Op::Tick { replica }));
        }
        // A replica restarts and registers its schedules again (more often just after an
        // NTP step back: then its clock lags the time the schedules were last handled at).
        if self.rng.u32(0..100) < if jumped_back { 50 } else { 2 } {
            let replica = self.rng.usize(0..NODES);
            for s in &self.schedules {
                ops.push(Op::Upsert {
                    replica,
                    spec: s.spec.clone(),
                });
            }
        }
        // The order in which the calls start (and so interleave) is part of the seed too.
        self.rng.shuffle(&mut ops);
        let mut pairs = self.run_ops(ops).await;
        if let Some((tenant, before)) = prune {
            let i = pairs
                .iter()
                .position(|(op, _)| matches!(op, Op::Prune { .. }));
            if let Some(i) = i {
                let (op, res) = pairs.remove(i);
                self.trace(format!(
                    "r{} < {} -> {}",
                    self.round,
                    op.describe(),
                    res.describe()
                ));
                if let Res::Prune(r) = res {
                    self.check_prune(tenant, &before, r).await;
                }
            }
        }
        self.apply_all(pairs);
    }

    fn new_job_id(&mut self) -> Uuid {
        let millis = u64::try_from(self.now().max(0) / 1000).unwrap_or(0);
        let mut random = [0u8; 10];
        self.rng.fill(&mut random);
        uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
    }

    fn produce(&mut self) -> Op {
        let tenant = self.tenants[self.rng.usize(0..self.tenants.len())];
        let n = if self.rng.u32(0..100) < 70 {
            1
        } else {
            self.rng.usize(2..=5)
        };
        let now = self.now();
        let mut jobs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.new_job_id();
            self.next_arg += 1;
            let kind = KINDS[self.rng.usize(0..KINDS.len())];
            let mut job = NewJob::new(kind, json!({ "n": self.next_arg }))
                .id(id)
                .priority([0, 10, 100, 200][self.rng.usize(0..4)])
                .max_attempts(self.rng.u32(1..=5));
            match self.rng.u32(0..100) {
                0..25 => job = job.run_at(now + self.rng.i64(1_000_000..120_000_000)),
                25..30 => job = job.run_at(now - self.rng.i64(0..10_000_000)),
                _ => {}
            }
            if self.rng.u32(0..100) < 15 {
                job = job.idempotency_key(format!("idem-{}", self.rng.u8(0..4)));
            }
            if self.rng.u32(0..100) < 12 {
                job = job.supersede_key(format!("sup-{}", self.rng.u8(0..3)));
            }
            jobs.push(job);
        }
        Op::Enqueue {
            node: self.rng.usize(0..NODES),
            tenant,
            jobs,
            retry: false,
        }
    }

    fn cancel_op(&mut self) -> Option<Op> {
        if self.oracle.order.is_empty() {
            return None;
        }
        // Mostly recent jobs: those are the ones still waiting or running.
        let len = self.oracle.order.len();
        let i = if self.rng.bool() {
            len - 1 - self.rng.usize(0..len.min(20))
        } else {
            self.rng.usize(0..len)
        };
        let id = self.oracle.order[i];
        let tenant = self.oracle.jobs.get(&id)?.tenant;
        Some(Op::Cancel {
            node: self.rng.usize(0..NODES),
            tenant,
            id,
        })
    }

    /// Runs `ops` concurrently on the runtime (their transactions interleave at every await:
    /// injected commit latency and retry backoffs).
    async fn run_ops(&mut self, ops: Vec<Op>) -> Vec<(Op, Res)> {
        if ops.is_empty() {
            return Vec::new();
        }
        for op in &ops {
            self.trace(format!("r{} > {}", self.round, op.describe()));
        }
        self.stats.ops += ops.len() as u64;
        let results = {
            let nodes = &self.nodes;
            futures::future::join_all(ops.iter().map(|op| exec(nodes, op))).await
        };
        ops.into_iter().zip(results).collect()
    }

    fn apply_all(&mut self, pairs: Vec<(Op, Res)>) {
        let mut pairs = pairs;
        pairs.sort_by_key(|(op, _)| op.phase());
        let at = self.moment();
        for (op, res) in &pairs {
            if let (
                Op::Enqueue {
                    tenant,
                    jobs,
                    retry,
                    ..
                },
                Res::Enqueue(Ok(outs)),
            ) = (op, res)
            {
                self.oracle.enqueue_created(at, *tenant, jobs, outs, *retry);
            }
        }
        for (op, res) in pairs {
            self.trace(format!(
                "r{} < {} -> {}",
                self.round,
                op.describe(),
                res.describe()
            ));
            self.apply(op, res);
        }
    }

    /// A hung worker's report after its lease expired, alone in its round: the job is read
    /// first, so the expected answer is known exactly. Still held under this token (nobody
    /// rescued it yet): accepted. Taken over, rescued or finished: `LeaseLost`. Pruned:
    /// `NotFound`.
    async fn late_report(&mut self, op: Op) {
        let lease = match &op {
            Op::Complete { lease, .. } | Op::Fail { lease, .. } | Op::Heartbeat { lease, .. } => {
                lease.clone()
            }
            _ => return,
        };
        let pre = self.truth.get(lease.tenant, lease.job_id).await;
        let pre = match pre {
            Ok(p) => p,
            Err(e) => {
                self.violation(format!("reading job {} failed: {e}", lease.job_id));
                return;
            }
        };
        let pairs = self.run_ops(vec![op]).await;
        let res = &pairs[0].1;
        let (held, state) = match &pre {
            None => (false, None),
            Some(j) => (
                j.state == JobState::Running
                    && j.lease.as_ref().is_some_and(|l| l.token == lease.token),
                Some(j.state),
            ),
        };
        let outcome = match res {
            Res::Unit(r) => r.as_ref().map(|_| ()),
            Res::State(r) => r.as_ref().map(|_| ()),
            Res::Heartbeat(r) => r.as_ref().map(|_| ()),
            _ => return,
        };
        match (&pre, held, outcome) {
            (None, _, Err(Error::NotFound(_))) => {}
            (Some(_), true, Ok(())) => self.stats.late_ok += 1,
            (Some(_), false, Err(Error::LeaseLost { .. })) => self.stats.late_lost += 1,
            (_, _, got) => {
                let expected = match (&pre, held) {
                    (None, _) => "NotFound (the job was pruned)",
                    (Some(_), true) => "success (the job was still held under this token)",
                    (Some(_), false) => "LeaseLost (the lease had been taken over or ended)",
                };
                let got = match got {
                    Ok(()) => "success".to_string(),
                    Err(e) => format!("{e}"),
                };
                self.violation(format!(
                    "late report {} on job {} (state before: {:?}, lease before: {:?}): expected {expected}, got {got}",
                    pairs[0].0.describe(),
                    lease.job_id,
                    state,
                    pre.as_ref().and_then(|j| j.lease.clone()),
                ));
            }
        }
        self.apply_all(pairs);
    }

    // ------------------------------------------------------------- applying the results

    fn apply(&mut self, op: Op, res: Res) {
        let at = self.moment();
        match (op, res) {
            (
                Op::Enqueue {
                    tenant,
                    jobs,
                    retry,
                    ..
                },
                Res::Enqueue(r),
            ) => match r {
                Ok(outs) => {
                    let counts = self.oracle.enqueue_links(at, tenant, &jobs, &outs, retry);
                    self.stats.duplicates += counts.0;
                    self.stats.superseded += counts.1;
                }
                Err(Error::Refused {
                    limit,
                    max,
                    current,
                }) => {
                    self.stats.refused += 1;
                    let cfg = self.tenant_cfg.get(&tenant).cloned().unwrap_or_default();
                    let biggest = jobs
                        .iter()
                        .map(|j| serde_json::to_vec(&j.args).map_or(0, |v| v.len() as u64))
                        .max()
                        .unwrap_or(0);
                    let fair = match limit {
                        "max_queued" => cfg.max_queued == Some(max) && current >= max,
                        "max_queued_bytes" => {
                            cfg.max_queued_bytes == Some(max) && current + biggest > max
                        }
                        _ => false,
                    };
                    if !fair {
                        self.violation(format!(
                            "enqueue refused at {limit} {max} (current {current}) but the tenant's settings are {cfg:?}"
                        ));
                    }
                    // All or none: nothing of the batch exists (unless a retry's other call
                    // made the same jobs).
                    if !retry {
                        self.oracle
                            .never
                            .extend(jobs.iter().filter_map(|j| j.id).map(|id| (tenant, id)));
                    }
                }
                Err(e) => self.violation(format!("enqueue failed: {e}")),
            },
            (Op::Claim { worker, req, .. }, Res::Claim(r)) => match r {
                Ok(leases) => {
                    for lease in leases {
                        self.oracle.leased(at, &lease, &req);
                        self.stats.leases += 1;
                        let (plan, work) = if worker >= self.sim_workers {
                            (Plan::Complete, 0)
                        } else {
                            (self.choose_plan(), self.rng.u32(0..3))
                        };
                        let hang_extra = self.rng.u32(0..10);
                        self.workers[worker].held.push(Held {
                            expires_at: lease.expires_at,
                            lease,
                            len: req.lease,
                            plan,
                            work,
                            hang_extra,
                        });
                    }
                }
                Err(e) => self.violation(format!("claim by {} failed: {e}", req.worker)),
            },
            (
                Op::Heartbeat {
                    worker,
                    lease,
                    extend,
                    report,
                    ..
                },
                Res::Heartbeat(r),
            ) => {
                let pos = self.workers[worker]
                    .held
                    .iter()
                    .position(|h| h.lease.token == lease.token);
                match r {
                    Ok(hb) => {
                        self.oracle.heartbeat_ok(at, &lease, &hb, extend, report);
                        match pos {
                            Some(i) => {
                                let h = &mut self.workers[worker].held[i];
                                h.expires_at = hb.expires_at;
                                if hb.cancel_requested {
                                    h.plan = Plan::Cancel;
                                    h.work = 0;
                                }
                            }
                            // A hung worker that woke up and still holds its lease resumes.
                            None => self.workers[worker].held.push(Held {
                                lease,
                                len: extend,
                                expires_at: hb.expires_at,
                                plan: if hb.cancel_requested {
                                    Plan::Cancel
                                } else {
                                    Plan::Complete
                                },
                                work: 0,
                                hang_extra: 0,
                            }),
                        }
                    }
                    Err(e) => {
                        if let Some(i) = pos {
                            self.workers[worker].held.remove(i);
                        }
                        self.report_error(at, &lease, "heartbeat", report, &e);
                    }
                }
            }
            (
                Op::Complete {
                    node,
                    worker,
                    lease,
                    report,
                },
                Res::Unit(r),
            ) => match r {
                Ok(()) => {
                    self.oracle.completed(at, &lease, report);
                    self.stats.completes += u64::from(report != Report::Resend);
                    if report != Report::Resend && self.rng.u32(0..10) == 0 {
                        self.workers[worker].resend = Some(Op::Complete {
                            node,
                            worker,
                            lease,
                            report: Report::Resend,
                        });
                    }
                }
                Err(e) => self.report_error(at, &lease, "complete", report, &e),
            },
            (
                Op::Fail {
                    node,
                    worker,
                    lease,
                    outcome,
                    report,
                },
                Res::State(r),
            ) => match r {
                Ok(state) => {
                    self.oracle.failed(at, &lease, &outcome, state, report);
                    self.stats.retries +=
                        u64::from(matches!(outcome, Outcome::Retry { .. }) && !state.is_terminal());
                    self.stats.dead += u64::from(state == JobState::Dead);
                    if report != Report::Resend && self.rng.u32(0..12) == 0 {
                        self.workers[worker].resend = Some(Op::Fail {
                            node,
                            worker,
                            lease,
                            outcome,
                            report: Report::Resend,
                        });
                    }
                }
                Err(e) => self.report_error(at, &lease, "fail", report, &e),
            },
            (Op::Release { lease, .. }, Res::Unit(r)) => match r {
                Ok(()) => self.oracle.released(at, &lease),
                Err(e) => self.report_error(at, &lease, "release", Report::OnTime, &e),
            },
            (Op::Cancel { tenant, id, .. }, Res::State(r)) => {
                if matches!(r, Ok(JobState::Running)) {
                    self.stats.cancel_flags += 1;
                }
                self.oracle.cancelled(at, tenant, id, &r);
            }
            (Op::Upsert { spec, .. }, Res::Upsert(r)) => {
                if let Err(e) = r {
                    self.violation(format!("upsert of {} failed: {e}", spec.name));
                }
            }
            (Op::Tick { replica }, Res::Tick(r)) => match r {
                Ok(records) => {
                    for (_, rec) in &records {
                        match rec.outcome {
                            steward_queue::TickOutcome::Fired { .. } => self.stats.ticks_fired += 1,
                            steward_queue::TickOutcome::Skipped { .. } => {
                                self.stats.ticks_skipped += 1;
                            }
                            steward_queue::TickOutcome::Coalesced => {
                                self.stats.ticks_coalesced += 1;
                            }
                        }
                    }
                    self.oracle.ticked(at, &records);
                    if replica == NODES - 1 {
                        self.last_tick_wall = Some(at.now);
                    }
                }
                Err(e) => self.violation(format!("replica {replica} tick failed: {e}")),
            },
            (op, res) => self.violation(format!(
                "internal: result {} does not match {}",
                res.describe(),
                op.describe()
            )),
        }
    }

    fn report_error(&mut self, at: Moment, lease: &Lease, what: &str, report: Report, e: &Error) {
        match e {
            Error::LeaseLost { job } if *job == lease.job_id => {
                self.stats.lease_lost += 1;
                self.oracle.lease_lost(at, lease, what, report);
            }
            Error::NotFound(id) if *id == lease.job_id => {
                self.oracle.not_found(at, lease.job_id, what);
            }
            e => self.violation(format!(
                "{what} of job {} ({report:?}) failed unexpectedly: {e}",
                lease.job_id
            )),
        }
    }

    // -------------------------------------------------------------------- solo rounds

    /// A prune of `tenant`, given its jobs before the round and read again now: what
    /// disappeared must have been finished longer ago than its retention, and nothing that was
    /// may remain. (Calls running beside the prune cannot change that: a finished job stays
    /// finished, and a job that finishes during the round is not old enough.)
    async fn check_prune(
        &mut self,
        tenant: Uuid,
        before: &[Job],
        result: Result<PruneStats, Error>,
    ) {
        let now = self.now();
        let stats = match result {
            Ok(s) => s,
            Err(e) => return self.violation(format!("prune failed: {e}")),
        };
        let after = match list_all(&self.truth, tenant).await {
            Ok(j) => j,
            Err(e) => return self.violation(e),
        };
        let kept: BTreeSet<Uuid> = after.iter().map(|j| j.id).collect();
        let cutoff = |state: JobState| {
            now - micros(if state == JobState::Dead {
                DEAD_RETENTION
            } else {
                FINISHED_RETENTION
            })
        };
        let mut removed = (0, 0);
        for j in before {
            let expired = j.state.is_terminal() && j.state_since < cutoff(j.state);
            if kept.contains(&j.id) {
                if expired {
                    self.violation(format!(
                        "prune kept job {} ({}, since {}, cutoff {})",
                        j.id,
                        j.state,
                        j.state_since,
                        cutoff(j.state)
                    ));
                }
                continue;
            }
            if !expired {
                self.violation(format!(
                    "prune removed job {} that was {} since {} (cutoff {})",
                    j.id,
                    j.state,
                    j.state_since,
                    cutoff(j.state)
                ));
            }
            if j.state == JobState::Dead {
                removed.1 += 1;
            } else {
                removed.0 += 1;
            }
            self.oracle.pruned.insert(j.id, self.round);
            self.stats.pruned += 1;
        }
        if (stats.finished, stats.dead) != removed {
            self.violation(format!(
                "prune reported {stats:?} but removed {} finished and {} dead jobs",
                removed.0, removed.1
            ));
        }
    }

    // ------------------------------------------------------------ drain and fairness

    /// A healthy worker claims and completes everything, with the clock moved past every
    /// run time, backoff and lease, until no job is queued, scheduled or running.
    async fn drain(&mut self) {
        self.trace("phase: drain");
        let healthy = self.sim_workers;
        for _ in 0..40 {
            self.round += 1;
            self.clock.advance(Duration::from_secs(MAX_LEASE_SECS + 1));
            self.max_wall = self.max_wall.max(self.now());
            self.trace(format!(
                "r{} clock: drain advance -> {}",
                self.round,
                self.now()
            ));
            let mut empty = 0;
            while empty < 3 {
                self.round += 1;
                let claim = Op::Claim {
                    node: self.rng.usize(0..NODES),
                    worker: healthy,
                    req: ClaimRequest {
                        worker: "healthy".into(),
                        kinds: None,
                        max: 50,
                        lease: Duration::from_secs(MAX_LEASE_SECS),
                    },
                };
                let pairs = self.run_ops(vec![claim]).await;
                self.apply_all(pairs);
                let held = std::mem::take(&mut self.workers[healthy].held);
                if held.is_empty() {
                    empty += 1;
                    continue;
                }
                empty = 0;
                self.round += 1;
                let ops = held
                    .into_iter()
                    .map(|h| Op::Complete {
                        node: self.rng.usize(0..NODES),
                        worker: healthy,
                        lease: h.lease,
                        report: Report::OnTime,
                    })
                    .collect();
                let pairs = self.run_ops(ops).await;
                self.apply_all(pairs);
                self.workers[healthy].resend = None;
                if !self.oracle.violations.is_empty() {
                    return;
                }
            }
            match self.pending().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => return self.violation(e),
            }
        }
        let mut stuck = Vec::new();
        for &t in &self.all_tenants {
            if let Ok(jobs) = list_all(&self.truth, t).await {
                stuck.extend(
                    jobs.into_iter()
                        .filter(|j| !j.state.is_terminal())
                        .map(|j| format!("{} {} run_at={} {:?}", j.id, j.state, j.run_at, j.lease)),
                );
            }
        }
        self.violation(format!(
            "drain did not finish: {} jobs never reached a terminal state (now {}): {:?}",
            stuck.len(),
            self.now(),
            stuck.iter().take(5).collect::<Vec<_>>()
        ));
    }

    /// Jobs queued, scheduled or running, over every tenant (from the counters).
    async fn pending(&self) -> Result<i64, String> {
        let mut n = 0;
        for &t in &self.all_tenants {
            let counts = self
                .truth
                .counts(t)
                .await
                .map_err(|e| format!("counts failed: {e}"))?;
            n += [JobState::Queued, JobState::Scheduled, JobState::Running]
                .iter()
                .map(|s| counts.get(s).copied().unwrap_or(0))
                .sum::<i64>();
        }
        Ok(n)
    }

    /// Every job record and tick record, hashed (for the determinism check).
    async fn digest(&self) -> Result<u64, String> {
        let mut h = FNV_OFFSET;
        for &t in &self.all_tenants {
            for j in list_all(&self.truth, t).await? {
                h = fnv(h, format!("{j:?}").as_bytes());
            }
        }
        for s in &self.schedules {
            let ticks = Scheduler::new(&self.truth)
                .ticks(Some(s.tenant), &s.name)
                .await
                .map_err(|e| format!("ticks failed: {e}"))?;
            h = fnv(h, format!("{ticks:?}").as_bytes());
        }
        Ok(h)
    }
}

fn random_uuid(rng: &mut fastrand::Rng) -> Uuid {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// Every job of the tenant, page by page.
async fn list_all(q: &Queue, tenant: Uuid) -> Result<Vec<Job>, String> {
    list_filtered(q, tenant, &ListFilter::default()).await
}

async fn list_filtered(q: &Queue, tenant: Uuid, filter: &ListFilter) -> Result<Vec<Job>, String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = q
            .list(tenant, filter, cursor.as_deref(), 500)
            .await
            .map_err(|e| format!("list failed: {e}"))?;
        out.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}
