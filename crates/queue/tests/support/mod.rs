//! Small factories shared by the queue's integration tests, and [`backend_tests!`], which runs
//! every case on three backends:
//!
//! - `memory`: the in-memory store;
//! - `memory_faults`: the same store behind [`FaultConfig::chaos`] (conflicts,
//!   `commit_unknown_result` applied and not applied, `transaction_too_old`, latency) on every
//!   transaction the queue runs;
//! - `embedded`: the durable embedded store in a temporary directory.
//!
//! Every case gets its own database, its own [`ManualClock`] (shared with the database: the
//! queue reads time from `db.clock()`), and makes its own tenants. Nothing sleeps for an expiry:
//! cases move the clock.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use steward_queue::{
    ClaimRequest, Error, Job, JobState, Lease, ListFilter, NewJob, Queue, QueueConfig,
};
use steward_store::tuple::pack;
use steward_store::{
    Clock, Database, FaultConfig, ManualClock, OpenOptions, RangeOption, RunOptions,
};
use uuid::Uuid;

/// Where every clock starts (2023-11-14, in µs since the epoch).
pub(crate) const T0: i64 = 1_700_000_000_000_000;
/// The lease the factories claim with.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

/// The store a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    MemoryFaults,
    Embedded,
}

/// One case's world: a queue over its own store, on its own manual clock.
#[derive(Debug)]
pub(crate) struct Env {
    /// The queue under test (over `db`).
    pub(crate) queue: Arc<Queue>,
    /// The database the queue uses: faulty on `memory_faults`.
    pub(crate) db: Database,
    /// The same store without fault injection, to inspect raw keys.
    pub(crate) raw: Database,
    /// The clock the store and the queue read.
    pub(crate) clock: ManualClock,
    pub(crate) backend: Backend,
    pub(crate) seed: u64,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    /// A fresh store of `backend`; `name` (the case's name) seeds every random choice.
    pub(crate) fn new(backend: Backend, name: &str) -> Env {
        let seed = seed_of(name);
        eprintln!("{name}: seed {seed}");
        let clock = ManualClock::new(T0);
        let options = OpenOptions {
            clock: clock.shared(),
            seed: Some(seed),
            // Short retry backoffs: contention and injected faults are frequent here, and the
            // default 1 s ceiling would only make the suite slow.
            run: RunOptions {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(20),
                ..RunOptions::default()
            },
            ..OpenOptions::default()
        };
        let (raw, dir) = match backend {
            Backend::Memory | Backend::MemoryFaults => (Database::memory_with(options), None),
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("embedded:{}", dir.path().display());
                (
                    Database::open_with(&url, options).expect("open embedded"),
                    Some(dir),
                )
            }
        };
        let db = match backend {
            Backend::MemoryFaults => raw.with_faults(FaultConfig::chaos(seed)),
            _ => raw.clone(),
        };
        let queue = Queue::with_seed(db.clone(), QueueConfig::default(), seed).expect("queue");
        Env {
            queue: Arc::new(queue),
            db,
            raw,
            clock,
            backend,
            seed,
            _dir: dir,
        }
    }

    /// The same store and clock, with a queue of another configuration.
    pub(crate) fn configured(mut self, config: QueueConfig) -> Env {
        self.queue = Arc::new(Queue::with_seed(self.db.clone(), config, self.seed).expect("queue"));
        self
    }

    /// The same store and clock seen through `faults` (whatever the backend), with a queue
    /// over it.
    pub(crate) fn with_faults(mut self, faults: FaultConfig) -> Env {
        self.db = self.raw.with_faults(faults);
        let config = self.queue.config().clone();
        self.configured(config)
    }

    pub(crate) fn faulty(&self) -> bool {
        self.backend == Backend::MemoryFaults
    }

    /// A new tenant id (from the manual clock and the case's seed).
    pub(crate) fn tenant(&self) -> Uuid {
        self.queue.new_id()
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// Writes `value` under `key` directly (to damage a record, say), past the queue.
    pub(crate) async fn overwrite(&self, key: &[u8], value: &[u8]) {
        self.raw
            .run(|tx, _| async move {
                tx.set(key, value);
                Ok(())
            })
            .await
            .expect("overwrite");
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub(crate) async fn enqueue(&self, tenant: Uuid, job: NewJob) -> Uuid {
        let out = self.queue.enqueue(tenant, job).await.expect("enqueue");
        assert!(!out.duplicate, "a fresh enqueue must not be a duplicate");
        out.id
    }

    /// Claims up to `max` jobs of any kind under [`LEASE`].
    pub(crate) async fn claim(&self, worker: &str, max: usize) -> Vec<Lease> {
        self.queue.claim(&req(worker, max)).await.expect("claim")
    }

    /// Claims exactly one job.
    pub(crate) async fn claim_one(&self, worker: &str) -> Lease {
        let mut leases = self.claim(worker, 1).await;
        assert_eq!(leases.len(), 1, "expected one claimable job");
        leases.remove(0)
    }

    /// Asserts that nothing is claimable now.
    pub(crate) async fn assert_nothing_claimable(&self) {
        let leases = self.claim("probe", 100).await;
        assert!(
            leases.is_empty(),
            "expected nothing claimable, got {:?}",
            leases.iter().map(|l| l.job_id).collect::<Vec<_>>()
        );
    }

    pub(crate) async fn job(&self, tenant: Uuid, id: Uuid) -> Job {
        self.queue
            .get(tenant, id)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("job {id} of tenant {tenant} does not exist"))
    }

    /// Every job of the tenant matching `filter`, page by page, checking that no job appears
    /// twice.
    pub(crate) async fn list_all(
        &self,
        tenant: Uuid,
        filter: &ListFilter,
        page: usize,
    ) -> Vec<Job> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let p = self
                .queue
                .list(tenant, filter, cursor.as_deref(), page)
                .await
                .expect("list");
            assert!(p.jobs.len() <= page, "a page holds at most `limit` jobs");
            for j in p.jobs {
                assert!(seen.insert(j.id), "job {} listed twice", j.id);
                out.push(j);
            }
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
        panic!("listing did not end");
    }

    /// The per-state counters agree with the job records.
    pub(crate) async fn assert_counts_match(&self, tenant: Uuid) {
        let jobs = self.list_all(tenant, &ListFilter::default(), 50).await;
        let mut tally: BTreeMap<JobState, i64> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
        for j in &jobs {
            *tally.entry(j.state).or_default() += 1;
        }
        let counts = self.queue.counts(tenant).await.expect("counts");
        assert_eq!(counts, tally, "counters disagree with the records");
    }

    /// Every key and value under the tenant's root (`("t", tenant)`), read without faults.
    pub(crate) async fn tenant_kvs(&self, tenant: Uuid) -> Vec<(Vec<u8>, Vec<u8>)> {
        let tx = self.raw.create_transaction().expect("tx");
        tx.get_range_all(&RangeOption::prefix(&pack(&("t", tenant))))
            .await
            .expect("scan")
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }
}

/// A deterministic seed from a case's name (FNV-1a), mixed with `STEWARD_QUEUE_TEST_SEED` when
/// set, to run the suite under other fault sequences (`for s in $(seq 50); do ...`).
pub(crate) fn seed_of(name: &str) -> u64 {
    let extra = std::env::var("STEWARD_QUEUE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    name.bytes().fold(0xcbf2_9ce4_8422_2325 ^ extra, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A job of `kind` whose args name it.
pub(crate) fn job(kind: &str) -> NewJob {
    NewJob::new(kind, serde_json::json!({ "kind": kind }))
}

/// A claim of up to `max` jobs of any kind under [`LEASE`].
pub(crate) fn req(worker: &str, max: usize) -> ClaimRequest {
    ClaimRequest {
        worker: worker.to_string(),
        kinds: None,
        max,
        lease: LEASE,
    }
}

/// The field an [`Error::Invalid`] names; panics on any other result.
#[track_caller]
pub(crate) fn invalid_field<T: std::fmt::Debug>(r: Result<T, Error>) -> &'static str {
    match r {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

/// Asserts [`Error::LeaseLost`] for `job`.
#[track_caller]
pub(crate) fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, Error>, job: Uuid) {
    match r {
        Err(Error::LeaseLost { job: j }) => assert_eq!(j, job),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// Microseconds in `d`.
pub(crate) fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).expect("duration fits")
}

/// Runs each named case (an `async fn(Env)` of the including file) on every backend:
/// `current` cases on the default (current-thread) runtime, `multi` cases on a two-thread one.
#[allow(unused_macros)] // Not every test binary runs cases on every backend.
macro_rules! backend_tests {
    (current: [$($c:ident),* $(,)?], multi: [$($m:ident),* $(,)?] $(,)?) => {
        $crate::support::backend_tests!(@module memory, Memory, [$($c),*], [$($m),*]);
        $crate::support::backend_tests!(@module memory_faults, MemoryFaults, [$($c),*], [$($m),*]);
        $crate::support::backend_tests!(@module embedded, Embedded, [$($c),*], [$($m),*]);
    };
    (@module $module:ident, $backend:ident, [$($c:ident),*], [$($m:ident),*]) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $c() {
                    let env = super::support::Env::new(
                        super::support::Backend::$backend,
                        concat!(stringify!($module), "::", stringify!($c)),
                    );
                    super::$c(env).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $m() {
                    let env = super::support::Env::new(
                        super::support::Backend::$backend,
                        concat!(stringify!($module), "::", stringify!($m)),
                    );
                    super::$m(env).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;
