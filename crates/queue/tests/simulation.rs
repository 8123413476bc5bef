//! Deterministic simulation of the queue (issue 5): many tenants, producers, workers that
//! crash, hang, report late or twice, cancellers, pruning, racing cron replicas and clock
//! jumps, on the `memory:` store with injected conflicts, `commit_unknown_result` (applied and
//! not) and `transaction_too_old`, single-threaded with paused time and every random choice
//! from one seed. `sim/mod.rs` describes the world and the phases of a run.
//!
//! # Invariants (the store is the truth, the oracle is what the simulation did)
//! - **No job lost**: every job an enqueue created exists, unless a prune removed it, and a
//!   prune removes exactly the jobs finished longer ago than their retention. No job exists
//!   that nobody enqueued; an enqueue answered "duplicate" created nothing.
//! - **Idempotency and supersession**: a key holds one job at a time (a new one only after the
//!   old was pruned); a duplicate names the job holding the key then; a job is superseded at
//!   most once, exactly when an enqueue said so.
//! - **Never completed twice; effects exactly once**: at most one `complete` per job succeeds
//!   (a resent one is answered from the job's marker); the job ends under that token, and
//!   the write it made in its completing transaction exists exactly once.
//! - **Fencing**: a report under a lease that was handed out again before is refused; a live
//!   lease (one ending after the highest wall time seen) is never lost nor handed out again;
//!   a hung worker's late report gets exactly the answer the job's state before it implies.
//! - **Attempts**: each lease's attempt follows from the previous one (a retry or an
//!   expiry counts, a snooze or a release does not), never above max; every outcome leaves
//!   the state it must; `dead` for max attempts or expired leases only at attempt == max.
//! - **Terminal is terminal**: nothing finished, superseded or flagged for cancellation is
//!   claimed again; a heartbeat passes a cancellation on.
//! - **Pending is legitimate**: a record's state agrees with its lease, reasons and times; the
//!   counters equal the records per state; every state index lists exactly its records. After
//!   a drain (healthy workers, the clock past every run time and lease) every job is
//!   terminal, and a job that waits is always found by a claim (no orphaned tenant).
//! - **Cron**: each schedule's tick records are exactly the expression's ticks since its
//!   creation, gap-free, up to the last tick round; each fired, skipped or coalesced as its
//!   overlap and missed-tick policies say; no replica returns a tick another returned; each
//!   fired tick's job exists once and no cron job lacks its tick; no tick fires while the
//!   previous job is unfinished (overlap `skip`).
//! - **Fairness bound**: with one tenant flooding 400 jobs, every small tenant gets its first
//!   claim within 20 claim rounds per tenant with runnable work (`sim/check.rs`).
//! - **Limits** (on unless `STEWARD_SIM_LIMITS=0`): never more running jobs than `max_running`,
//!   each in its own slot; a refused enqueue names a limit the tenant has and is at; unfinished
//!   jobs pass `max_queued` by no more than one round of concurrent enqueues.
//!
//! # Running
//! - `cargo test -p steward-queue --test simulation`: a short run (20 seeds × 300 rounds).
//! - `STEWARD_SIM_SEEDS=5000`: that many seeds (from `STEWARD_SIM_SEED_BASE`, default 0).
//! - `STEWARD_SIM_SEED=N`: only seed N (a failing run prints its seed, and the same seed
//!   replays the same run exactly: same trace hash, same store).
//! - `STEWARD_SIM_STEPS=R`: rounds of the chaos phase per seed.
//! - `STEWARD_SIM_TRACE=path`: write the whole trace of the (last) run there.
//! - `STEWARD_SIM_LIMITS=0`: tenants get only weights, no `max_running` or admission
//!   limits (on by default since the bugs the limits found were fixed).

mod sim;

use std::time::Instant;

use sim::{run_seed, RunFailure, Settings, Stats};

const DEFAULT_SEEDS: u64 = 20;
const DEFAULT_STEPS: usize = 300;
/// Failing seeds reported in detail (the rest are listed).
const SHOWN_FAILURES: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v} is not a number"),
    }
}

fn settings() -> Settings {
    Settings {
        steps: env_u64("STEWARD_SIM_STEPS")
            .map_or(DEFAULT_STEPS, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        dump_trace: std::env::var_os("STEWARD_SIM_TRACE").map(Into::into),
        limits: env_u64("STEWARD_SIM_LIMITS").is_none_or(|n| n != 0),
    }
}

fn report(seed: u64, f: &RunFailure) -> String {
    format!(
        "simulation failed with seed {seed}: {}\n  trace hash {:016x}; last actions:\n    {}\n  reproduce: STEWARD_SIM_SEED={seed} cargo test -p steward-queue --test simulation",
        f.message,
        f.trace_hash,
        f.trace_tail.join("\n    ")
    )
}

#[test]
fn simulated_runs_hold_every_invariant() {
    let settings = settings();
    let seeds: Vec<u64> = match env_u64("STEWARD_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("STEWARD_SIM_SEED_BASE").unwrap_or(0);
            let n = env_u64("STEWARD_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (base..base + n).collect()
        }
    };
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failures: Vec<(u64, RunFailure)> = Vec::new();
    for &seed in &seeds {
        match run_seed(seed, &settings) {
            Ok(out) => {
                total.add(&out.stats);
                if seeds.len() == 1 {
                    eprintln!(
                        "seed {seed}: trace hash {:016x}, store digest {:016x}",
                        out.trace_hash, out.store_digest
                    );
                }
            }
            Err(f) => {
                eprintln!("seed {seed} FAILED: {}", f.message);
                failures.push((seed, f));
            }
        }
    }
    eprintln!(
        "simulation: {} seeds x {} rounds in {:.1?}, {} failed\n  {total:?}",
        seeds.len(),
        settings.steps,
        started.elapsed(),
        failures.len()
    );
    if let Some((seed, first)) = failures.first() {
        let others: Vec<String> = failures
            .iter()
            .skip(1)
            .take(SHOWN_FAILURES - 1)
            .map(|(s, f)| report(*s, f))
            .collect();
        let all: Vec<u64> = failures.iter().map(|(s, _)| *s).collect();
        panic!(
            "{}\n{}\nfailing seeds: {all:?}",
            report(*seed, first),
            others.join("\n")
        );
    }
    // The run must have exercised what it claims to check.
    assert!(total.leases > 0 && total.completes > 0, "{total:?}");
    if seeds.len() >= 10 {
        assert!(
            total.lease_lost > 0
                && total.late_lost > 0
                && total.late_ok > 0
                && total.retries > 0
                && total.dead > 0
                && total.duplicates > 0
                && total.superseded > 0
                && total.cancel_flags > 0
                && total.pruned > 0
                && total.ticks_fired > 0
                && total.ticks_skipped > 0
                && total.ticks_coalesced > 0
                && total.faults_conflict > 0
                && total.faults_unknown_applied > 0
                && total.faults_unknown_not_applied > 0
                && total.faults_too_old > 0
                && total.clock_jumps_back > 0,
            "the simulation no longer exercises everything: {total:?}"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let settings = Settings {
        steps: 120,
        dump_trace: None,
        limits: false,
    };
    let seed = env_u64("STEWARD_SIM_SEED").unwrap_or(0x5eed_0001);
    let a = run_seed(seed, &settings).unwrap_or_else(|f| panic!("{}", report(seed, &f)));
    let b = run_seed(seed, &settings).unwrap_or_else(|f| panic!("{}", report(seed, &f)));
    assert_eq!(
        (a.trace_hash, a.store_digest),
        (b.trace_hash, b.store_digest),
        "seed {seed} ran differently twice"
    );
    let c = run_seed(seed + 1, &settings).unwrap_or_else(|f| panic!("{}", report(seed + 1, &f)));
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "different seeds gave the same trace: the seed does not drive the run"
    );
}

// ------------------------------------------------------------------- bugs the simulation found

/// Minimal cases of the bugs the simulation found, kept as regression tests. The first five
/// failed before `df77626`, the next three before `8d93485`; the ignored last one still fails.
mod found {
    use std::time::Duration;

    use serde_json::json;
    use steward_queue::{
        ClaimRequest, JobState, ListFilter, NewJob, Outcome, Queue, QueueConfig, ScheduleSpec,
        Scheduler, TenantQueueConfig, TickOutcome, TickRecord,
    };
    use steward_store::{Clock, Database, FaultConfig, ManualClock, OpenOptions};
    use uuid::Uuid;

    /// Two queue handles over one `memory:` store whose commits wait up to 2 ms (no faults),
    /// so two calls started together both read before either commits. Paused time: the
    /// interleaving is the same every run.
    fn two_nodes() -> (Queue, Queue) {
        let clock = ManualClock::new(1_700_000_000_000_000);
        let db = Database::memory_with(OpenOptions {
            clock: clock.shared(),
            seed: Some(1),
            ..OpenOptions::default()
        });
        let slow = |seed| {
            db.with_faults(FaultConfig {
                max_latency: Duration::from_millis(2),
                ..FaultConfig::none(seed)
            })
        };
        let a = Queue::with_seed(slow(1), QueueConfig::default(), 1).expect("queue");
        let b = Queue::with_seed(slow(2), QueueConfig::default(), 2).expect("queue");
        (a, b)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    /// Found by the simulation (seeds 8, 11, 16 with same-id retries on). `enqueue_one` looks
    /// for "our own job already there" with a snapshot read, which adds no read conflict: two
    /// enqueues of one job id in flight at once (a client retrying with the id it set, as
    /// `enqueue_in`'s doc recommends) both write the record and both add 1 to the queued
    /// counter. The counter stays 1 too high for good.
    #[test]
    fn concurrent_enqueues_of_one_id_count_the_job_once() {
        runtime().block_on(async {
            let (a, b) = two_nodes();
            let tenant = Uuid::from_u128(7);
            let id = a.new_id();
            let job = NewJob::new("email", json!({})).id(id);
            let (ra, rb) = tokio::join!(a.enqueue(tenant, job.clone()), b.enqueue(tenant, job));
            let (ra, rb) = (ra.expect("enqueue"), rb.expect("enqueue"));
            assert_eq!((ra.id, rb.id), (id, id));
            let jobs = a
                .list(tenant, &ListFilter::default(), None, 10)
                .await
                .expect("list")
                .jobs;
            assert_eq!(jobs.len(), 1);
            let counts = a.counts(tenant).await.expect("counts");
            assert_eq!(
                counts.get(&JobState::Queued),
                Some(&1),
                "one queued job, counted {counts:?}"
            );
        });
    }

    /// Found by the simulation (seed 1 with same-id retries on, round 93). Two enqueues of
    /// one job id with a supersede key, in flight at once: the first commits and supersedes
    /// the waiting job; the second conflicts, and its retry finds the job and reports the
    /// `superseded` answer its own failed attempt computed. Both callers are told they
    /// superseded the old job. `enqueue_batch` keeps answers of attempts whose commit failed
    /// with a plain conflict, not only of attempts that may have committed.
    #[test]
    fn only_one_of_two_concurrent_enqueues_reports_the_supersession() {
        runtime().block_on(async {
            let (a, b) = two_nodes();
            let tenant = Uuid::from_u128(8);
            let old = a
                .enqueue(tenant, NewJob::new("sync", json!({})).supersede_key("k"))
                .await
                .expect("enqueue");
            let job = NewJob::new("sync", json!({}))
                .supersede_key("k")
                .id(a.new_id());
            let (ra, rb) = tokio::join!(a.enqueue(tenant, job.clone()), b.enqueue(tenant, job));
            let (ra, rb) = (ra.expect("enqueue"), rb.expect("enqueue"));
            let reported = [ra.superseded, rb.superseded]
                .iter()
                .filter(|s| **s == Some(old.id))
                .count();
            assert_eq!(
                reported, 1,
                "the old job was superseded once, reported by {reported} calls: {ra:?} {rb:?}"
            );
        });
    }

    /// Registers (creates or replaces) the same schedule every 10 s.
    async fn ten_second_schedule(queue: &Queue) -> steward_queue::Result<()> {
        Scheduler::new(queue)
            .upsert(ScheduleSpec::new(
                Some(Uuid::from_u128(9)),
                "every10",
                "*/10 * * * * *",
                NewJob::new("cron.every10", json!({})),
            ))
            .await?;
        Ok(())
    }

    fn cron_world() -> (ManualClock, Queue) {
        // 22:13:05 UTC.
        let clock = ManualClock::new(1_700_000_000_000_000 - 15_000_000);
        let db = Database::memory_with(OpenOptions {
            clock: clock.shared(),
            seed: Some(1),
            ..OpenOptions::default()
        });
        let queue = Queue::with_seed(db, QueueConfig::default(), 1).expect("queue");
        (clock, queue)
    }

    /// Found while extending the simulation with replicas that register their schedules at
    /// start-up (as a deploy does for schedules defined in code). `upsert` of an unchanged
    /// schedule resets its next tick to the first after now: a tick that was due but not yet
    /// handled by any replica is never recorded, so the tick records have a gap.
    #[test]
    fn re_registering_a_schedule_keeps_its_due_tick() {
        runtime().block_on(async {
            let (clock, queue) = cron_world();
            ten_second_schedule(&queue).await.expect("upsert");
            let tenant = Some(Uuid::from_u128(9));
            clock.advance(Duration::from_secs(10)); // :15, the :10 tick is due.
            ten_second_schedule(&queue).await.expect("upsert again");
            clock.advance(Duration::from_secs(10)); // :25
            Scheduler::new(&queue).tick().await.expect("tick");
            let fires: Vec<i64> = Scheduler::new(&queue)
                .ticks(tenant, "every10")
                .await
                .expect("ticks")
                .iter()
                .map(|t| (t.fire_time - 1_700_000_000_000_000) / 1_000_000)
                .collect();
            // Relative to 22:13:20: the :10 tick is -10, the :20 tick 0.
            assert_eq!(
                fires,
                vec![-10, 0],
                "the :10 tick was due before the upsert"
            );
        });
    }

    /// The same with a wall clock a few seconds behind (an NTP step back, or simply the
    /// registering replica's clock being behind the one that ticked): the reset next tick
    /// is one already handled, which is then handled again. Its record is overwritten (here
    /// `Fired` becomes `Skipped` because the job it fired still runs), so a tick that fired is
    /// recorded as not fired.
    #[test]
    fn re_registering_a_schedule_behind_the_clock_never_handles_a_tick_twice() {
        runtime().block_on(async {
            let (clock, queue) = cron_world();
            let tenant = Some(Uuid::from_u128(9));
            ten_second_schedule(&queue).await.expect("upsert");
            clock.advance(Duration::from_secs(6)); // :11
            let first = Scheduler::new(&queue).tick().await.expect("tick");
            assert!(
                matches!(
                    first[..],
                    [(
                        _,
                        TickRecord {
                            outcome: TickOutcome::Fired { .. },
                            ..
                        }
                    )]
                ),
                "{first:?}"
            );
            let now = clock.now_micros();
            clock.set_wall_micros(now - 3_000_000); // :08
            ten_second_schedule(&queue).await.expect("upsert again");
            clock.set_wall_micros(now + 1_000_000); // :12
            let second = Scheduler::new(&queue).tick().await.expect("tick");
            let records = Scheduler::new(&queue)
                .ticks(tenant, "every10")
                .await
                .expect("ticks");
            assert!(
                second.is_empty(),
                "the :10 tick was handled again: {second:?}; records now {records:?}"
            );
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].outcome, first[0].1.outcome);
        });
    }

    /// Found by the simulation (seed 1135, round 243). A batch holds a job with an
    /// idempotency key and a supersede key, then another job with the same idempotency key
    /// (answered as a duplicate of the first). `enqueue_batch` records each answer's
    /// `superseded` under the answer's id, and a duplicate's id is the job it duplicates: the
    /// duplicate's `None` overwrites the first job's entry. When the commit reports
    /// `commit_unknown_result` after applying, the retry finds its jobs and answers from that
    /// map: the caller is told nothing was superseded, while the store has the old job
    /// cancelled as superseded by the first one.
    #[test]
    fn a_retried_batch_reports_what_it_superseded() {
        runtime().block_on(async {
            let clock = ManualClock::new(1_700_000_000_000_000);
            let db = Database::memory_with(OpenOptions {
                clock: clock.shared(),
                seed: Some(1),
                ..OpenOptions::default()
            });
            // Every commit that writes applies, then reports commit_unknown_result.
            let faulty = db.with_faults(FaultConfig {
                unknown_applied: 1.0,
                ..FaultConfig::none(1)
            });
            let queue = Queue::with_seed(faulty, QueueConfig::default(), 1).expect("queue");
            let tenant = Uuid::from_u128(10);
            let old = queue
                .enqueue(tenant, NewJob::new("sync", json!({})).supersede_key("s"))
                .await
                .expect("enqueue");
            let out = queue
                .enqueue_batch(
                    tenant,
                    vec![
                        NewJob::new("sync", json!({}))
                            .idempotency_key("k")
                            .supersede_key("s"),
                        NewJob::new("sync", json!({})).idempotency_key("k"),
                    ],
                )
                .await
                .expect("enqueue batch");
            let stored = queue
                .get(tenant, old.id)
                .await
                .expect("get")
                .expect("old job");
            assert_eq!(
                stored.superseded_by,
                Some(out[0].id),
                "the store: superseded"
            );
            assert!(out[1].duplicate && out[1].id == out[0].id, "{out:?}");
            assert_eq!(
                out[0].superseded,
                Some(old.id),
                "the answer must say what the batch superseded: {out:?}"
            );
        });
    }

    /// Found while adding tenant limits to the simulation. A cron tick enqueues through
    /// admission control; when the schedule's tenant is at its `max_queued` limit the tick's
    /// transaction fails with `Refused`, the schedule does not advance, and `tick` returns
    /// the error at once. The stuck schedule has the oldest due tick, so it comes first in
    /// every later `tick` call: no tick of any other schedule, of any tenant, is recorded
    /// again until that tenant's queue shrinks.
    #[test]
    fn a_tenant_at_its_queue_limit_does_not_stop_other_tenants_cron() {
        runtime().block_on(async {
            let (clock, queue) = cron_world();
            let full = Uuid::from_u128(11);
            let other = Uuid::from_u128(12);
            queue
                .set_tenant_config(
                    full,
                    &TenantQueueConfig {
                        max_queued: Some(1),
                        ..TenantQueueConfig::default()
                    },
                )
                .await
                .expect("config");
            queue
                .enqueue(full, NewJob::new("sync", json!({})))
                .await
                .expect("enqueue");
            let s = Scheduler::new(&queue);
            for (tenant, name, expression) in [
                (full, "full", "*/10 * * * * *"),
                (other, "other", "*/30 * * * * *"),
            ] {
                s.upsert(ScheduleSpec::new(
                    Some(tenant),
                    name,
                    expression,
                    NewJob::new("cron.job", json!({})),
                ))
                .await
                .expect("upsert");
            }
            clock.advance(Duration::from_secs(60));
            let first = s.tick().await;
            clock.advance(Duration::from_secs(60));
            let second = s.tick().await;
            let other_ticks = s.ticks(Some(other), "other").await.expect("ticks");
            assert!(
                !other_ticks.is_empty(),
                "two minutes of ticks and tenant {other}'s schedule recorded none; tick said {first:?} then {second:?}"
            );
        });
    }

    /// Found while adding tenant limits to the simulation. A job keeps its `slot` number in
    /// its record after it stops running, and `save` frees `slot(i)` whenever the old record
    /// names slot `i` and the new state is not running. So a job that ran once, failed and
    /// was rescheduled frees its old slot again when it is promoted back to the queue, even
    /// though another job holds that slot by then: the tenant runs more jobs than its
    /// `max_running`.
    #[test]
    fn a_rescheduled_job_does_not_free_a_slot_another_job_holds() {
        runtime().block_on(async {
            let (clock, queue) = cron_world();
            let tenant = Uuid::from_u128(13);
            queue
                .set_tenant_config(
                    tenant,
                    &TenantQueueConfig {
                        max_running: Some(1),
                        ..TenantQueueConfig::default()
                    },
                )
                .await
                .expect("config");
            for n in 0..2 {
                queue
                    .enqueue(tenant, NewJob::new("sync", json!({ "n": n })))
                    .await
                    .expect("enqueue");
            }
            let claim = |max| ClaimRequest {
                worker: "w".into(),
                kinds: None,
                max,
                lease: Duration::from_secs(60),
            };
            let a = queue.claim(&claim(1)).await.expect("claim").remove(0);
            let retry = Outcome::Retry {
                error: "again".into(),
                delay: Some(Duration::from_secs(1)),
            };
            assert_eq!(
                queue.fail(&a, retry).await.expect("fail"),
                JobState::Scheduled
            );
            let b = queue.claim(&claim(1)).await.expect("claim");
            assert_eq!(b.len(), 1, "the slot is free again");
            clock.advance(Duration::from_secs(2)); // a is due again
            let more = queue.claim(&claim(5)).await.expect("claim");
            let running = queue
                .list(
                    tenant,
                    &ListFilter {
                        state: Some(JobState::Running),
                        ..ListFilter::default()
                    },
                    None,
                    10,
                )
                .await
                .expect("list")
                .jobs;
            assert!(
                more.is_empty() && running.len() == 1,
                "max_running is 1 but {} jobs run (slots {:?})",
                running.len(),
                running.iter().map(|j| j.slot).collect::<Vec<_>>()
            );
        });
    }

    /// Found by the simulation (seed 11296, after `df77626`): the remaining edge of the
    /// re-registration fix. A replica whose wall clock is a few seconds behind re-registers a
    /// schedule that another replica created moments before, when no tick was handled yet
    /// (`last_fire` is `None`): the next tick becomes the first after the lagging clock, a
    /// tick before the schedule was created, and it fires. An unchanged schedule's next tick
    /// should never move earlier than it was unless that tick is already due.
    #[test]
    fn re_registering_behind_the_clock_adds_no_tick_before_creation() {
        runtime().block_on(async {
            let (clock, queue) = cron_world(); // 22:13:05
            let tenant = Some(Uuid::from_u128(9));
            clock.advance(Duration::from_millis(5_500)); // :10.5, first tick :20
            ten_second_schedule(&queue).await.expect("upsert");
            let created = clock.now_micros();
            clock.set_wall_micros(created - 2_500_000); // another replica, at :08
            ten_second_schedule(&queue).await.expect("upsert again");
            clock.set_wall_micros(created + 500_000); // :11
            let fired = Scheduler::new(&queue).tick().await.expect("tick");
            let records = Scheduler::new(&queue)
                .ticks(tenant, "every10")
                .await
                .expect("ticks");
            assert!(
                records.iter().all(|r| r.fire_time > created),
                "the schedule was created at {created}, yet these ticks were handled: {fired:?}"
            );
        });
    }

    /// Found by the simulation (seeds 20475 and 20501, at 8d93485). `fail` answers a call
    /// retried after `commit_unknown_result` from the job's marker (`ended_token`) with the
    /// job's state *now*, not the state the report produced: when another call changed the
    /// job in between (here a claim took the re-queued job; in seed 20475 a cancel cancelled
    /// the snoozed one), the worker is told a state that is someone else's doing (`running`,
    /// `cancelled`, or `dead` when another worker's attempt failed for good). Keeping the
    /// state the report produced next to `ended_token` would answer it exactly.
    #[test]
    fn a_retried_fail_answers_the_state_it_produced() {
        runtime().block_on(async {
            let clock = ManualClock::new(1_700_000_000_000_000);
            let db = Database::memory_with(OpenOptions {
                clock: clock.shared(),
                seed: Some(1),
                ..OpenOptions::default()
            });
            // The worker's node: every commit that writes applies, then reports
            // commit_unknown_result (its retry comes after a backoff of 5 to 10 ms).
            let flaky = Queue::with_seed(
                db.with_faults(FaultConfig {
                    unknown_applied: 1.0,
                    ..FaultConfig::none(1)
                }),
                QueueConfig::default(),
                1,
            )
            .expect("queue");
            let other = Queue::with_seed(db, QueueConfig::default(), 2).expect("queue");
            let tenant = Uuid::from_u128(14);
            other
                .enqueue(tenant, NewJob::new("sync", json!({})))
                .await
                .expect("enqueue");
            let claim = ClaimRequest {
                worker: "w".into(),
                kinds: None,
                max: 1,
                lease: Duration::from_secs(60),
            };
            let lease = other.claim(&claim).await.expect("claim").remove(0);
            let retry = Outcome::Retry {
                error: "transient".into(),
                delay: Some(Duration::ZERO),
            };
            let (state, taken) = tokio::join!(flaky.fail(&lease, retry), async {
                // While the worker's call backs off, another worker claims the job.
                tokio::time::sleep(Duration::from_millis(2)).await;
                other.claim(&claim).await
            });
            assert_eq!(
                taken.expect("claim").len(),
                1,
                "the retry re-queued the job"
            );
            assert_eq!(
                state.expect("fail"),
                JobState::Queued,
                "the retry left the job queued; what happened after is not this call's answer"
            );
        });
    }
}
