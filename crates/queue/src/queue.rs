//! [`Queue`]: enqueue, claim, heartbeat, complete, fail, release, cancel, pause, replay, prune.
//!
//! # Design (after Apple's QuiCK and CouchDB's `couch_jobs`; see docs/queue.md)
//! - **Enqueue only writes** (blind sets and atomic adds) except for idempotency and supersede
//!   keys, so producers never conflict with consumers.
//! - **Claim** snapshot-reads the heads of the ready indexes, picks at random among the best
//!   candidates (few collisions between workers), and reads only the chosen jobs serializably.
//!   The same transaction rescues expired leases and promotes due scheduled jobs: there is no
//!   separate reaper that could race a completion, because every transition reads the job
//!   record serializably and writes it, so two of them on one job can never both commit.
//! - **Fencing**: each attempt gets a fresh token; heartbeat, complete, fail and release read the
//!   job and refuse a token that is not the current lease's ([`Error::LeaseLost`]).
//! - **Idempotent reporting**: the token of the last attempt its worker reported on is kept on
//!   the job, so a report retried after `commit_unknown_result` sees its own marker and succeeds
//!   once. A claim retried after `commit_unknown_result` first looks for the leases of its
//!   earlier attempts, so a commit that did apply does not strand them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::try_join_all;
use steward_store::limits::MAX_VALUE_SIZE;
use steward_store::{Database, IdGenerator, Priority, RangeOption, RunOptions, Transaction};
use uuid::Uuid;

use crate::config::{QueueConfig, TenantQueueConfig};
use crate::error::{Error, Result};
use crate::job::{
    AttemptError, CancelReason, DeadReason, Enqueued, Heartbeat, Job, JobState, Lease, LeaseInfo,
    NewJob, Outcome, MAX_KEPT_ERRORS,
};
use crate::keys::{self, parse_ready_in, TenantKeys, ALL_KINDS, COUNTER_SHARDS, WAKE_SHARDS};

/// Longest kind name.
pub const MAX_KIND_LEN: usize = 128;
/// Longest idempotency or supersede key.
pub const MAX_KEY_LEN: usize = 256;
/// Largest serialized arguments: the store's value limit less room for the rest of the record.
pub const MAX_ARGS_BYTES: usize = MAX_VALUE_SIZE - 16 * 1024;
/// Most jobs in one enqueue batch.
pub const MAX_BATCH: usize = 1000;
/// Jobs handled per transaction by bulk operations (cancel a session, replay, prune).
const BULK_CHUNK: usize = 100;
/// A claim reads `need * CLAIM_WINDOW_FACTOR` ready entries per kind (within the bounds
/// below) and takes a random block of them: the wider, the fewer collisions between workers.
const CLAIM_WINDOW_FACTOR: usize = 16;
const CLAIM_WINDOW_MIN: usize = 64;
const CLAIM_WINDOW_MAX: usize = 1024;
/// Claims retry conflicts quickly: a conflict only means another worker took a job first.
const CLAIM_RETRY: RunOptions = RunOptions {
    max_attempts: Some(steward_store::DEFAULT_MAX_ATTEMPTS),
    initial_backoff: Duration::from_millis(1),
    max_backoff: Duration::from_millis(100),
    // Claims are background work: on a busy store they yield to enqueues and reads (see
    // `Priority::Batch`), which keeps a small tenant's enqueue fast while a flood is claimed.
    priority: Priority::Batch,
};

/// `complete_many` refuses a batch whose results take more than this (the store's transaction
/// limit is 10 MB, and each record also holds its arguments).
const MAX_BATCH_RESULT_BYTES: usize = 4 << 20;

/// A claim reads up to this many times `tenants_per_claim` entries of the active index to find
/// that many tenants with work to hand out (each entry costs a few snapshot reads).
const SCAN_FACTOR: usize = 16;

/// What a tenant has for a claim, by the heads of its indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// A queued job, a due scheduled job or an expired lease.
    Claimable,
    /// Only running jobs (leases not expired), jobs scheduled later, or queued jobs of kinds
    /// the claim does not run.
    Later,
    /// Nothing queued, scheduled or running: its doorbell can go.
    None,
}

/// What a claim's visit to a tenant found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TenantVisit {
    /// It gave its whole quota and has more runnable jobs.
    Full,
    /// It has nothing more to give now.
    Drained,
    /// It gave nothing: another claim of this process is taking its runnable jobs.
    Hidden,
}

/// Expired leases rescued and due jobs promoted per tenant per claim.
const MAINTENANCE_PER_CLAIM: usize = 16;

/// What a worker asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    /// The worker's name (kept on the lease, for operators).
    pub worker: String,
    /// Only these kinds (the ones the worker can run); `None` for any.
    pub kinds: Option<Vec<String>>,
    /// At most this many jobs.
    pub max: usize,
    /// Lease length; heartbeats extend it.
    pub lease: Duration,
}

/// The tenant job queue over a store.
#[derive(Debug)]
pub struct Queue {
    db: Database,
    config: QueueConfig,
    ids: IdGenerator,
    rng: Mutex<fastrand::Rng>,
    recent: RecentClaims,
    /// Jobs (tenant, id) whose records this process could not decode (see
    /// [`Queue::readable`]).
    undecodable: Mutex<HashSet<(Uuid, Uuid)>>,
}

/// Most undecodable jobs a process remembers (and so keeps its claims away from); when full it
/// forgets them all and starts over.
const MAX_UNDECODABLE: usize = 10_000;

/// Jobs this process's claims are taking now or took lately, so that its other claims keep
/// away from them. Without it, the workers of one process (sharing one `Queue`) picked the same
/// jobs from the head of the ready index: a claim cannot see another's writes before that one
/// commits (on the embedded store, before its disk sync), and with 16 workers claiming 32 jobs
/// each from a window of 512, most claims ended in a conflict and backoff (2.2 attempts per
/// claim under a flood, measured). Purely an optimisation: the store's conflict check stays
/// the rule.
///
/// A job is marked [`Mark::Taking`] when an attempt chooses it, and hidden from every other
/// claim until the attempt ends: if it commits, the mark becomes [`Mark::Claimed`] with the
/// commit's version, hiding the job only from snapshots older than that; if it fails, the mark
/// goes at once, before the attempt backs off (holding it through the backoff kept a small
/// tenant's job from every other worker, which was measured to hurt more than it helped).
#[derive(Debug, Default)]
struct RecentClaims {
    marks: Mutex<HashMap<Uuid, Mark>>,
    attempts: AtomicU64,
}

/// How a claim of this process holds a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Chosen by the claim attempt with this number, which has not committed yet.
    Taking(u64),
    /// Claimed by a commit at this version.
    Claimed(u64),
}

impl RecentClaims {
    /// A number for a new claim attempt.
    fn next_attempt(&self) -> u64 {
        self.attempts.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops from `candidates` the jobs another attempt is taking and those claimed by a commit
    /// newer than `read_version`, lets `choose` pick from the rest, and marks the picked jobs
    /// as taken by `attempt`, all under one lock (so two attempts never pick the same job
    /// here). Returns the picked jobs and how many candidates were dropped.
    fn take(
        &self,
        candidates: &mut Vec<(u8, i64, Uuid)>,
        read_version: u64,
        attempt: u64,
        choose: impl FnOnce(&[(u8, i64, Uuid)]) -> Vec<Uuid>,
    ) -> (Vec<Uuid>, usize) {
        let mut marks = lock(&self.marks);
        let before = candidates.len();
        if !marks.is_empty() {
            candidates.retain(|c| match marks.get(&c.2) {
                None => true,
                Some(Mark::Taking(a)) => *a == attempt,
                Some(Mark::Claimed(v)) => *v <= read_version,
            });
        }
        let skipped = before - candidates.len();
        let chosen = choose(candidates);
        for id in &chosen {
            marks.insert(*id, Mark::Taking(attempt));
        }
        (chosen, skipped)
    }

    /// Jobs marked, taken or claimed.
    fn len(&self) -> usize {
        lock(&self.marks).len()
    }

    /// `attempt` ended: `claimed` (if it committed) are claimed at `version`; whatever else it
    /// was taking is free again.
    fn settle(&self, attempt: u64, claimed: Option<(&[Uuid], u64)>) {
        let mut marks = lock(&self.marks);
        marks.retain(|_, m| *m != Mark::Taking(attempt));
        if let Some((ids, version)) = claimed {
            for id in ids {
                marks.insert(*id, Mark::Claimed(version));
            }
        }
    }

    /// Forgets claims that every snapshot from `read_version` on sees.
    fn expire(&self, read_version: u64) {
        lock(&self.marks).retain(|_, m| match m {
            Mark::Taking(_) => true,
            Mark::Claimed(v) => *v > read_version,
        });
    }
}

/// Frees what a claim attempt is taking if the claim is dropped midway (its task aborted).
struct Attempt<'a> {
    recent: &'a RecentClaims,
    current: Mutex<Option<u64>>,
}

impl Attempt<'_> {
    /// Starts a new attempt, freeing the previous one's jobs if they were not settled.
    fn start(&self) -> u64 {
        let attempt = self.recent.next_attempt();
        if let Some(previous) = lock(&self.current).replace(attempt) {
            self.recent.settle(previous, None);
        }
        attempt
    }

    /// The current attempt ended, with its claimed jobs and commit version if it committed.
    fn end(&self, claimed: Option<(&[Uuid], u64)>) {
        if let Some(attempt) = lock(&self.current).take() {
            self.recent.settle(attempt, claimed);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Completed and cancelled jobs removed.
    pub finished: usize,
    /// Dead jobs removed.
    pub dead: usize,
}

impl Queue {
    /// A queue over `db` with a random seed.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the configuration is out of bounds.
    pub fn new(db: Database, config: QueueConfig) -> Result<Self> {
        Self::with_seed(db, config, fastrand::u64(..))
    }

    /// A queue whose random choices (tokens, jitter, claim order) come from `seed`.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the configuration is out of bounds.
    pub fn with_seed(db: Database, config: QueueConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Queue {
            ids: IdGenerator::new(db.clock().clone(), seed),
            rng: Mutex::new(fastrand::Rng::with_seed(seed.rotate_left(17))),
            recent: RecentClaims::default(),
            undecodable: Mutex::new(HashSet::new()),
            db,
            config,
        })
    }

    /// The store.
    #[must_use]
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The store's retry policy at background priority: the workers' bulk reports (a batch of
    /// completions) yield to enqueues and reads on a busy store, as claims do, and to claims
    /// too: a claim is how a fresh job leaves the queue, a report only records what already ran
    /// (its worker keeps the leases alive meanwhile).
    fn background(&self) -> RunOptions {
        RunOptions {
            priority: Priority::Background,
            ..self.db.run_options().clone()
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub(crate) fn now(&self) -> i64 {
        self.db.clock().now_micros()
    }

    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A record a claim reads (to take, rescue or promote its job), or `None` to pass the job
    /// by. A record that does not decode (written by a newer version during a rolling
    /// deploy, or damaged) must not fail the claim: that would stop every claim that samples
    /// its tenant, all tenants' jobs with it. Its job is left as it is, for a binary that can
    /// read it ([`Queue::note_undecodable`]).
    async fn readable(
        &self,
        records: &mut Prefetched,
        tx: &Transaction,
        keys: &TenantKeys,
        id: Uuid,
    ) -> Result<Option<Job>> {
        match records.load(tx, keys, id).await {
            Err(e @ Error::Corrupt { .. }) => {
                self.note_undecodable(keys, id, &e);
                Ok(None)
            }
            other => other,
        }
    }

    /// A job whose record does not decode, passed by (by a claim or a prune): logged once,
    /// and kept away from this process's claims.
    fn note_undecodable(&self, keys: &TenantKeys, id: Uuid, error: &Error) {
        let mut known = lock(&self.undecodable);
        if known.len() >= MAX_UNDECODABLE {
            known.clear();
        }
        if known.insert((keys.tenant(), id)) {
            tracing::error!(job = %id, %error, "job record does not decode; it is passed by");
        }
    }

    /// A new UUIDv7 job id from the queue's clock and seed.
    pub fn new_id(&self) -> Uuid {
        self.ids.next_id()
    }

    // ----------------------------------------------------------------------------- enqueue

    /// Enqueues one job.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad field; store errors.
    pub async fn enqueue(&self, tenant: Uuid, job: NewJob) -> Result<Enqueued> {
        let mut out = self.enqueue_batch(tenant, vec![job]).await?;
        Ok(out.remove(0))
    }

    /// Enqueues jobs atomically: all or none.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad field (of the first bad job); store errors.
    pub async fn enqueue_batch(
        &self,
        tenant: Uuid,
        mut jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() || jobs.len() > MAX_BATCH {
            return Err(Error::invalid(
                "jobs",
                format!("a batch holds 1 to {MAX_BATCH} jobs"),
            ));
        }
        for job in &mut jobs {
            validate_new_job(job)?;
            // Ids are fixed before the retry loop so a retried attempt finds its own job.
            job.id.get_or_insert_with(|| self.ids.next_id());
        }
        let jobs = &jobs;
        self.db
            .transact(|tx, maybe_committed| async move {
                let mut out = Vec::with_capacity(jobs.len());
                let keys = TenantKeys::new(tenant);
                // What every job's enqueue reads, read at once (on FoundationDB one round trip
                // instead of one per job): its record, its idempotency and supersede entries,
                // the tenant's settings and active-index entry.
                let entries: Vec<Vec<u8>> = jobs
                    .iter()
                    .flat_map(|j| {
                        let ik = j.idempotency_key.as_deref().map(|k| keys.idempotency(k));
                        let sk = j.supersede_key.as_deref().map(|k| keys.supersede(k));
                        ik.into_iter().chain(sk)
                    })
                    .collect();
                let lookups = jobs
                    .iter()
                    .filter_map(|j| j.id.map(|id| keys.job(id)))
                    .chain(entries.iter().cloned());
                let (mut records, config, active) = futures::try_join!(
                    Prefetched::read(&tx, lookups),
                    read_tenant_config(&tx, &keys, true),
                    async {
                        let entry = keys::TenantIndex::Active.entry(tenant);
                        Ok::<_, Error>(tx.get(&entry, true).await?.is_some())
                    },
                )?;
                // Then the records those entries name, also at once (a second round trip,
                // only when some entry exists).
                let named: Vec<Vec<u8>> = entries
                    .iter()
                    .filter_map(|k| records.peek(k))
                    .filter_map(|v| Uuid::from_slice(v).ok())
                    .map(|id| keys.job(id))
                    .collect();
                records.read_more(&tx, named).await?;
                let mut shared = EnqueueShared {
                    queued: false,
                    records,
                    config: Some(config),
                    active: Some(active),
                    usage: None,
                };
                for job in jobs {
                    out.push(
                        self.enqueue_one(&tx, tenant, job, maybe_committed.0, &mut shared)
                            .await?,
                    );
                }
                Ok(out)
            })
            .await
    }

    /// Enqueues inside the caller's own transaction: the job exists if and only if the
    /// caller's transaction commits. Set `job.id` before the caller's retry loop (or give an
    /// idempotency key); otherwise each attempt makes a new id and an attempt that
    /// maybe-committed could enqueue twice.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad field; store errors.
    pub async fn enqueue_in(
        &self,
        tx: &Transaction,
        tenant: Uuid,
        job: &NewJob,
    ) -> Result<Enqueued> {
        let mut shared = EnqueueShared {
            queued: false,
            records: Prefetched::none(),
            config: None,
            active: None,
            usage: None,
        };
        self.enqueue_one(tx, tenant, job, false, &mut shared).await
    }

    /// [`Queue::enqueue_in`]. `maybe_ours`: an earlier attempt of this very call may have
    /// committed, so a job already stored under `job.id` is taken as this call's own.
    async fn enqueue_one(
        &self,
        tx: &Transaction,
        tenant: Uuid,
        job: &NewJob,
        maybe_ours: bool,
        shared: &mut EnqueueShared,
    ) -> Result<Enqueued> {
        validate_new_job(job)?;
        let id = job.id.unwrap_or_else(|| self.ids.next_id());
        let keys = TenantKeys::new(tenant);
        // Serializable: two enqueues of one id in flight at once conflict, so the job is
        // written (and counted) once.
        if let Some(existing) = shared.records.load(tx, &keys, id).await? {
            // Either an earlier attempt of this call committed (`commit_unknown_result`), and
            // the record tells what it superseded; or another call with the same id did, and
            // this one is a duplicate of it.
            return Ok(if maybe_ours {
                Enqueued {
                    id,
                    duplicate: false,
                    superseded: existing.supersedes,
                }
            } else {
                Enqueued {
                    id,
                    duplicate: true,
                    superseded: None,
                }
            });
        }
        let now = self.now();
        if let Some(key) = &job.idempotency_key {
            let ik = keys.idempotency(key);
            if let Some(existing) = shared.records.get(tx, &ik).await? {
                let existing = decode_id(&existing, "idempotency key")?;
                if shared.records.get(tx, &keys.job(existing)).await?.is_some() {
                    return Ok(Enqueued {
                        id: existing,
                        duplicate: true,
                        superseded: None,
                    });
                }
            }
        }
        // Before anything of the job is written: a refusal leaves the transaction clean (the
        // scheduler records a refused tick and commits the rest).
        let config = match &shared.config {
            Some(c) => c.clone(),
            None => read_tenant_config(tx, &keys, true).await?,
        };
        self.admit(tx, &keys, &config, job, &mut shared.usage)
            .await?;
        // A runnable job of a tenant in neither index (nothing queued, scheduled or running
        // since a claim last saw it idle) makes it fresh: the next claim serves it ahead of the
        // others (see `Queue::claim_fresh`; FQ-CoDel's rule for a new flow). Read before this
        // call writes the tenant's entry, once per transaction, and as a snapshot: enqueues
        // never conflict with claims.
        let runnable = job.run_at.is_none_or(|at| at <= now);
        let fresh = runnable
            && !std::mem::replace(&mut shared.queued, true)
            && !match shared.active {
                Some(active) => active,
                None => tx
                    .get(&keys::TenantIndex::Active.entry(tenant), true)
                    .await?
                    .is_some(),
            };
        let mut superseded = None;
        if let Some(key) = &job.supersede_key {
            let sk = keys.supersede(key);
            if let Some(old_id) = shared.records.get(tx, &sk).await? {
                let old_id = decode_id(&old_id, "supersede key")?;
                // (Taken from what was read ahead, so a later take reads it again.)
                if let Some(old) = shared.records.load(tx, &keys, old_id).await? {
                    if matches!(old.state, JobState::Queued | JobState::Scheduled) {
                        let mut next = old.clone();
                        next.superseded_by = Some(id);
                        next.cancel_reason = Some(CancelReason::Superseded);
                        finish(&mut next, JobState::Cancelled, now, None);
                        self.save(tx, &keys, Some(&old), &next)?;
                        if let Some(usage) = &mut shared.usage {
                            usage.jobs -= 1;
                            usage.bytes -= i64::try_from(old.args_bytes).unwrap_or(i64::MAX);
                        }
                        superseded = Some(old_id);
                    }
                }
            }
            tx.set(&sk, id.as_bytes());
        }
        // After every read that can fail to decode (the superseded job's): a caller that
        // passes a tenant by on such an error (`Scheduler::fan_out`) has nothing to undo.
        if let Some(key) = &job.idempotency_key {
            tx.set(&keys.idempotency(key), id.as_bytes());
        }
        let run_at = job.run_at.unwrap_or(now).max(0);
        let record = Job {
            id,
            tenant,
            kind: job.kind.clone(),
            args: job.args.clone(),
            state: if run_at <= now {
                JobState::Queued
            } else {
                JobState::Scheduled
            },
            state_since: now,
            priority: job.priority,
            run_at,
            attempt: 0,
            max_attempts: job.max_attempts,
            timeout_ms: u64::try_from(job.timeout.as_millis()).unwrap_or(u64::MAX),
            created_at: now,
            updated_at: now,
            finished_at: None,
            lease: None,
            ended_token: None,
            ended_state: None,
            cancel_requested: false,
            errors: Vec::new(),
            result: None,
            dead_reason: None,
            cancel_reason: None,
            session_id: job.session_id,
            idempotency_key: job.idempotency_key.clone(),
            supersede_key: job.supersede_key.clone(),
            superseded_by: None,
            slot: None,
            args_bytes: args_len(&job.args),
            supersedes: superseded,
        };
        if fresh {
            tx.set(&keys::TenantIndex::Fresh.entry(tenant), b"");
        }
        self.save(tx, &keys, None, &record)?;
        if let Some(usage) = &mut shared.usage {
            usage.jobs += 1;
            usage.bytes += i64::try_from(record.args_bytes).unwrap_or(i64::MAX);
        }
        if let Some(session) = job.session_id {
            tx.set(&keys.session(session, id), b"");
        }
        // Doorbell and wake-up: blind writes, so enqueues never conflict with claims.
        tx.set(&keys::TenantIndex::Active.entry(tenant), b"");
        // What a read of the entry would now return (the transaction reads its own writes).
        shared.active = shared.active.map(|_| true);
        tx.add(&keys::wake(wake_shard(tenant)), 1);
        Ok(Enqueued {
            id,
            duplicate: false,
            superseded,
        })
    }

    // ------------------------------------------------------------------------------- claim

    /// Claims up to `req.max` jobs across tenants, each under a new lease.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad request; store errors.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Lease>> {
        if req.max == 0 || req.max > MAX_BATCH {
            return Err(Error::invalid("max", format!("must be 1 to {MAX_BATCH}")));
        }
        if req.lease < Duration::from_millis(100) {
            return Err(Error::invalid("lease", "must be at least 100 ms"));
        }
        // The name is kept on the job record, which must stay within the store's value limit.
        if req.worker.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                "worker",
                format!("must be at most {MAX_KEY_LEN} bytes"),
            ));
        }
        if req.kinds.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid(
                "kinds",
                "must not be empty (omit it for any kind)",
            ));
        }
        // The leases every attempt of this call handed out. A claim's transaction is not
        // idempotent by itself: when a commit reports `commit_unknown_result` but did apply,
        // a plain retry would claim other jobs and strand the first ones under tokens no worker
        // holds, until their leases expire and cost them an attempt. So a retry that may follow
        // a commit first looks for the earlier leases (tokens are unique per attempt).
        let earlier: Mutex<Vec<Lease>> = Mutex::new(Vec::new());
        let earlier = &earlier;
        // The attempt's number, for the jobs it marks as being taken.
        let attempt = &Attempt {
            recent: &self.recent,
            current: Mutex::new(None),
        };
        // The latest attempt's commit versionstamp, if it claimed anything.
        let stamp = Mutex::new(None);
        let stamp = &stamp;
        let leases: Vec<Lease> = self
            .db
            .transact_observed(
                &CLAIM_RETRY,
                |tx, maybe_committed| async move {
                    let number = attempt.start();
                    *lock(stamp) = None;
                    if maybe_committed.0 {
                        let tried = lock(earlier).clone();
                        let held = still_held(&tx, tried).await?;
                        if !held.is_empty() {
                            return Ok(held);
                        }
                    }
                    let leases = self.claim_in(&tx, req, number).await?;
                    lock(earlier).extend(leases.iter().cloned());
                    if !leases.is_empty() {
                        *lock(stamp) = Some(tx.versionstamp());
                    }
                    Ok::<_, Error>(leases)
                },
                // Free the jobs at once, not after the backoff.
                |_| attempt.end(None),
            )
            .await?;
        let pending = lock(stamp).take();
        let version = match pending {
            Some(committed) => committed.await.ok().map(|s| {
                let mut version = [0u8; 8];
                version.copy_from_slice(&s[..8]);
                u64::from_be_bytes(version)
            }),
            None => None,
        };
        // Claimed from the commit's version on; older snapshots must skip them.
        let ids: Vec<Uuid> = leases.iter().map(|l| l.job_id).collect();
        attempt.end(version.map(|v| (ids.as_slice(), v)));
        Ok(leases)
    }

    async fn claim_in(
        &self,
        tx: &Transaction,
        req: &ClaimRequest,
        attempt: u64,
    ) -> Result<Vec<Lease>> {
        let now = self.now();
        let read_version = tx.read_version().await?;
        self.recent.expire(read_version);
        let mut leases = Vec::new();
        let fresh = self.claim_fresh(tx, req, now, attempt, &mut leases).await?;
        if leases.len() >= req.max {
            return Ok(leases);
        }
        let (mut tenants, idle) = self.pick_tenants(tx, now, req.kinds.as_deref()).await?;
        // Fresh tenants with nothing more need no second look (those with more may be sampled).
        tenants.retain(|t| !fresh.contains(t));
        // Together: each reads its own tenant's indexes and clears its own entry of the active
        // index, which nothing in this claim reads afterwards.
        let idle: Vec<TenantKeys> = idle.into_iter().map(TenantKeys::new).collect();
        try_join_all(idle.iter().map(|keys| self.maybe_retire_doorbell(tx, keys))).await?;
        self.with_rng(|r| r.shuffle(&mut tenants));
        let configs = read_tenant_configs(tx, &tenants).await?;
        let budget = req.max - leases.len();
        self.claim_shares(
            tx,
            req,
            now,
            attempt,
            (&tenants, &configs),
            (budget, true),
            &mut leases,
        )
        .await?;
        Ok(leases)
    }

    /// Weighted fair shares of `budget` more jobs: each tenant first gets at most its share, so
    /// a tenant with a million jobs takes no more than its weight's part while others wait;
    /// with `refill`, what the others leave is then offered in a second round.
    #[allow(clippy::too_many_arguments)]
    async fn claim_shares(
        &self,
        tx: &Transaction,
        req: &ClaimRequest,
        now: i64,
        attempt: u64,
        (tenants, configs): (&[Uuid], &[TenantQueueConfig]),
        (budget, refill): (usize, bool),
        leases: &mut Vec<Lease>,
    ) -> Result<Vec<Option<TenantVisit>>> {
        let total_weight: u64 = configs
            .iter()
            .map(|c| u64::from(c.weight))
            .sum::<u64>()
            .max(1);
        let end = req.max.min(leases.len() + budget);
        let share = |cfg: &TenantQueueConfig| {
            usize::try_from((budget as u64 * u64::from(cfg.weight)).div_ceil(total_weight))
                .unwrap_or(budget)
        };
        // What each visit reads before it writes, read for every tenant at once (on
        // FoundationDB one round trip or two for all of them, not a few per tenant in turn). A
        // visit writes only its own tenant's keys (and may clear its own entry of the active
        // index, which no visit reads), so each finds these as it would have read them
        // itself; the heads are read for the most the tenant can get (its share), and a
        // tenant the claim does not reach costs snapshot reads only.
        let mut heads = try_join_all(tenants.iter().zip(configs).map(|(&t, cfg)| async move {
            let keys = TenantKeys::new(t);
            let quota = share(cfg).clamp(1, budget.max(1));
            self.tenant_head(tx, &keys, cfg, req, now, quota)
                .await
                .map(Some)
        }))
        .await?;
        // Then the visits, in turn. Each chooses its jobs from its head; the records of the
        // chosen jobs of all the visits are then read together and taken in the same order.
        // Each visit's quota counts the jobs the earlier ones chose. The records are read at the
        // snapshot's version, so every chosen job is taken (one claimed elsewhere since then
        // makes this claim conflict), unless its index entry has no queued record; then the
        // claim returns fewer jobs than it could have.
        let mut visits = vec![None; tenants.len()];
        let mut pending = Vec::new();
        let mut planned = 0;
        let mut visited = HashSet::new();
        for (i, ((t, cfg), head)) in tenants.iter().zip(configs).zip(&mut heads).enumerate() {
            // A head read ahead is only what the tenant's first visit would read (the callers
            // pass each tenant once; a repeat reads its own, after the earlier visits' writes).
            if !visited.insert(*t) {
                *head = None;
                for (j, visit) in self.take_visits(tx, req, now, pending, leases).await? {
                    visits[j] = Some(visit);
                }
                (pending, planned) = (Vec::new(), 0);
            }
            if leases.len() + planned >= end {
                break;
            }
            let quota = share(cfg).clamp(1, end - leases.len() - planned);
            match self
                .plan_visit(tx, *t, cfg, req, now, quota, attempt, head.take())
                .await?
            {
                Planned::Done(visit) => visits[i] = Some(visit),
                Planned::Take(plan) => {
                    planned += plan.chosen.len();
                    pending.push((i, plan));
                }
            }
        }
        for (j, visit) in self.take_visits(tx, req, now, pending, leases).await? {
            visits[j] = Some(visit);
        }
        if refill {
            for ((t, cfg), visit) in tenants.iter().zip(configs).zip(&visits) {
                if *visit != Some(TenantVisit::Full) {
                    continue;
                }
                let need = end - leases.len();
                if need == 0 {
                    break;
                }
                // Its head again, after its first visit's writes.
                let plan = self
                    .plan_visit(tx, *t, cfg, req, now, need, attempt, None)
                    .await?;
                if let Planned::Take(plan) = plan {
                    self.take_visits(tx, req, now, vec![((), plan)], leases)
                        .await?;
                }
            }
        }
        Ok(visits)
    }

    /// Takes the planned visits' jobs (each plan tagged by the caller): their records read
    /// together, then each visit in order, then the doorbells of the tenants they emptied,
    /// checked together. Returns each tag with how its visit ended.
    async fn take_visits<T>(
        &self,
        tx: &Transaction,
        req: &ClaimRequest,
        now: i64,
        pending: Vec<(T, VisitPlan)>,
        leases: &mut Vec<Lease>,
    ) -> Result<Vec<(T, TenantVisit)>> {
        let mut chosen = Vec::new();
        for (_, plan) in &pending {
            chosen.extend(plan.chosen.iter().map(|&id| plan.keys.job(id)));
        }
        let mut records = Prefetched::read(tx, chosen).await?;
        let mut out = Vec::with_capacity(pending.len());
        let mut emptied = Vec::new();
        for (tag, plan) in pending {
            let keys = plan.keys.clone();
            let (visit, empty) = self
                .take_visit(tx, req, now, plan, &mut records, leases)
                .await?;
            out.push((tag, visit));
            if empty {
                emptied.push(keys);
            }
        }
        // Together: each reads its own tenant's indexes and clears its own entry of the active
        // index, which nothing in this claim reads afterwards.
        try_join_all(
            emptied
                .iter()
                .map(|keys| self.maybe_retire_doorbell(tx, keys)),
        )
        .await?;
        Ok(out)
    }

    /// Serves the fresh tenants (those that were in no index when a job arrived; FQ-CoDel's
    /// "new flows"): up to `tenants_per_claim` of them, from a random point of the fresh
    /// index, each up to its weighted share of half the claim, before any other tenant. A
    /// visited tenant's entry goes unless another claim of this process is taking its jobs (a
    /// tenant with more work keeps its place in the active index, and takes its turn there).
    /// So a tenant with a few jobs does not wait for the random sample of a busy queue to
    /// include it, and a tenant cannot stay first: it is fresh again only once a claim has
    /// seen it idle. Returns the tenants it visited that have nothing more for this claim.
    ///
    /// The entries are read as a snapshot and cleared blindly: an enqueue that re-adds one
    /// while this claim runs may lose it to this clear, and its job then waits for the active
    /// index, as every job did before the fresh index existed.
    async fn claim_fresh(
        &self,
        tx: &Transaction,
        req: &ClaimRequest,
        now: i64,
        attempt: u64,
        leases: &mut Vec<Lease>,
    ) -> Result<Vec<Uuid>> {
        let want = self.config.tenants_per_claim;
        let start = self.with_rng(|r| r.u64(..));
        let mut fresh = Vec::new();
        for range in [
            keys::TenantIndex::Fresh.from(start),
            keys::TenantIndex::Fresh.before(start),
        ] {
            let page = tx
                .get_range(&range.limit(want - fresh.len()).snapshot())
                .await?;
            fresh.extend(page.kvs.into_iter().map(|kv| kv.key));
            if fresh.len() >= want {
                break;
            }
        }
        let mut tenants = Vec::with_capacity(fresh.len());
        for entry in &fresh {
            match keys::parse_tenant_entry(entry) {
                Some(tenant) => tenants.push(tenant),
                // Not an entry this version writes: it must not be read by every claim.
                None => tx.clear(entry),
            }
        }
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let configs = read_tenant_configs(tx, &tenants).await?;
        // Each its share of at most half the claim, and no more: the rest goes to the active
        // tenants' sample, so fresh tenants never take whole claims from those with a backlog
        // (unless a claim is for one job).
        let budget = req.max.div_ceil(2);
        let visits = self
            .claim_shares(
                tx,
                req,
                now,
                attempt,
                (&tenants, &configs),
                (budget, false),
                leases,
            )
            .await?;
        // An entry stays for the next claim if this one did not get to its tenant (it was
        // full) or another claim of this process is taking the tenant's jobs (that claim
        // clears it, or the next one finds the tenant empty and does): so of the workers woken
        // together by an enqueue, one writes, not every one.
        let mut done = Vec::with_capacity(tenants.len());
        for (&tenant, visit) in tenants.iter().zip(&visits) {
            if matches!(visit, Some(TenantVisit::Full | TenantVisit::Drained)) {
                tx.clear(&keys::TenantIndex::Fresh.entry(tenant));
            }
            if visit.is_some_and(|v| v != TenantVisit::Full) {
                done.push(tenant);
            }
        }
        Ok(done)
    }

    /// Up to `tenants_per_claim` tenants with work to hand out now, from a uniformly random
    /// point of the active index (snapshot reads: no conflicts). The index also lists tenants
    /// whose jobs are all running or scheduled later (their doorbell stays until a claim sees
    /// them empty); reading up to [`SCAN_FACTOR`] times as many entries and skipping those keeps
    /// them from filling the sample, so a small tenant's fresh job is found by the next claim
    /// even while a flood keeps every worker busy. Tenants with nothing queued, scheduled or
    /// running are returned apart, to retire their doorbell.
    async fn pick_tenants(
        &self,
        tx: &Transaction,
        now: i64,
        kinds: Option<&[String]>,
    ) -> Result<(Vec<Uuid>, Vec<Uuid>)> {
        let want = self.config.tenants_per_claim;
        let mut budget = want.saturating_mul(SCAN_FACTOR);
        let start = self.with_rng(|r| r.u64(..));
        let (mut busy, mut idle) = (Vec::new(), Vec::new());
        // Pages from the random point to the end of the index, then from its beginning to the point.
        for range in [
            keys::TenantIndex::Active.from(start),
            keys::TenantIndex::Active.before(start),
        ] {
            let mut next = Some(range.limit(want).snapshot());
            while let Some(opt) = next.take() {
                if busy.len() >= want || budget == 0 {
                    break;
                }
                let page = tx.get_range(&opt).await?;
                budget -= page.kvs.len().min(budget);
                // The page's tenants are looked at concurrently (on FoundationDB each look is a
                // few round trips), then taken in index order as before.
                let tenants: Vec<Uuid> = page
                    .kvs
                    .iter()
                    .filter_map(|kv| keys::parse_tenant_entry(&kv.key))
                    .collect();
                let tenant_keys: Vec<TenantKeys> =
                    tenants.iter().map(|&t| TenantKeys::new(t)).collect();
                let work = try_join_all(
                    tenant_keys
                        .iter()
                        .map(|k| self.tenant_work(tx, k, now, kinds)),
                )
                .await?;
                for (tenant, work) in tenants.into_iter().zip(work) {
                    if busy.len() >= want {
                        break;
                    }
                    match work {
                        Work::Claimable => busy.push(tenant),
                        Work::Later => {}
                        Work::None => idle.push(tenant),
                    }
                }
                next = page.next_page(&opt);
            }
        }
        Ok((busy, idle))
    }

    /// Whether a tenant has a job to claim (or an expired lease or due job to move) now, from
    /// snapshot reads of the heads of its indexes.
    async fn tenant_work(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        now: i64,
        kinds: Option<&[String]>,
    ) -> Result<Work> {
        let first = |range: RangeOption| async move {
            let page = tx.get_range(&range.snapshot().limit(1)).await?;
            Ok::<_, Error>(page.kvs.into_iter().next().map(|kv| kv.key))
        };
        // Queued jobs count only if they are of a kind this claim runs (the kinds' heads read
        // together).
        let ready = match kinds {
            None => first(keys.ready_all()).await?.is_some(),
            Some(kinds) => try_join_all(kinds.iter().map(|k| first(keys.ready_of_kind(k))))
                .await?
                .iter()
                .any(Option::is_some),
        };
        if ready {
            return Ok(Work::Claimable);
        }
        // The scheduled jobs and the leases are ordered by time: the first entry of each tells
        // both whether one is due (or expired) now and whether any is waiting. Read together.
        let (scheduled, leased, other_kinds) = futures::try_join!(
            first(keys.scheduled_all()),
            first(keys.leases_all()),
            async {
                match kinds {
                    // Queued jobs of other kinds: not for this claim, but the doorbell stays.
                    Some(_) => first(keys.ready_all()).await,
                    None => Ok(None),
                }
            },
        )?;
        let due = |key: &Option<Vec<u8>>| {
            key.as_ref()
                .is_some_and(|k| keys.parse_timed(k).is_none_or(|(at, _)| at <= now))
        };
        if due(&scheduled) || due(&leased) {
            return Ok(Work::Claimable);
        }
        if scheduled.is_some() || leased.is_some() || other_kinds.is_some() {
            return Ok(Work::Later);
        }
        Ok(Work::None)
    }

    /// What a tenant's visit reads before it writes: its pauses (as a snapshot: the visit
    /// adds their read conflict), its expired leases and due jobs, and, unless some of those
    /// must be moved first, its taken slots and the heads of its ready kinds for `quota` jobs.
    /// All snapshot reads, made together.
    async fn tenant_head(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        cfg: &TenantQueueConfig,
        req: &ClaimRequest,
        now: i64,
        quota: usize,
    ) -> Result<TenantHead> {
        let (pauses, expired, due) = futures::try_join!(
            async { Ok::<_, Error>(tx.get_range_all(&keys.pauses().snapshot()).await?) },
            time_index_head(tx, keys, keys.leases_expired(now)),
            time_index_head(tx, keys, keys.scheduled_due(now)),
        )?;
        let paused: BTreeSet<String> = pauses
            .iter()
            .filter_map(|kv| keys.parse_pause(&kv.key))
            .collect();
        let rest = if paused.contains(ALL_KINDS) || !expired.is_empty() || !due.is_empty() {
            None
        } else {
            Some(self.head_rest(tx, keys, cfg, req, quota, &paused).await?)
        };
        Ok(TenantHead {
            paused,
            expired,
            due,
            rest,
        })
    }

    /// The taken concurrency slots and the heads of the ready kinds (not paused) for `quota`
    /// jobs: snapshot reads, made together.
    async fn head_rest(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        cfg: &TenantQueueConfig,
        req: &ClaimRequest,
        quota: usize,
        paused: &BTreeSet<String>,
    ) -> Result<HeadRest> {
        let (taken, kinds) = futures::try_join!(
            async {
                let Some(max) = cfg.max_running else {
                    return Ok::<_, Error>(None);
                };
                let page = tx.get_range(&keys.slots(max).snapshot()).await?;
                let taken: BTreeSet<u32> = page
                    .kvs
                    .iter()
                    .filter_map(|kv| keys.parse_slot(&kv.key))
                    .collect();
                Ok(Some((max, taken)))
            },
            async {
                match &req.kinds {
                    Some(k) => Ok(k.clone()),
                    None => ready_kinds(tx, keys).await,
                }
            },
        )?;
        let free = taken
            .as_ref()
            .map(|(max, taken)| (*max as usize).saturating_sub(taken.len()));
        let need = match free {
            Some(0) => {
                return Ok(HeadRest {
                    taken,
                    heads: Vec::new(),
                })
            }
            Some(free) => quota.min(free),
            None => quota,
        };
        // Jobs this process claimed lately may fill the head of the snapshot: read past them.
        let window = (need * CLAIM_WINDOW_FACTOR).clamp(CLAIM_WINDOW_MIN, CLAIM_WINDOW_MAX)
            + self.recent.len().min(CLAIM_WINDOW_MAX);
        let heads = try_join_all(kinds.iter().filter(|k| !paused.contains(*k)).map(
            |kind| async move {
                let head = tx
                    .get_range(&keys.ready_of_kind(kind).limit(window).snapshot())
                    .await?;
                Ok::<_, Error>((keys.ready_kind_prefix(kind), head.kvs))
            },
        ))
        .await?;
        Ok(HeadRest { taken, heads })
    }

    /// The first half of a tenant's visit: moves its expired leases and due jobs (if any), then
    /// chooses up to `quota` of its ready jobs from the heads of its kinds. Reads no job that
    /// it does not move, so the chosen jobs of several tenants can be read together.
    #[allow(clippy::too_many_arguments)]
    async fn plan_visit(
        &self,
        tx: &Transaction,
        tenant: Uuid,
        cfg: &TenantQueueConfig,
        req: &ClaimRequest,
        now: i64,
        quota: usize,
        attempt: u64,
        head: Option<TenantHead>,
    ) -> Result<Planned> {
        let keys = TenantKeys::new(tenant);
        let TenantHead {
            paused,
            expired,
            due,
            rest,
        } = match head {
            Some(head) => head,
            None => self.tenant_head(tx, &keys, cfg, req, now, quota).await?,
        };
        // The pauses were read as a snapshot; this conflict makes that a serializable read: a
        // pause that commits first is seen, one that commits later conflicts.
        let pauses = keys.pauses();
        tx.add_read_conflict_range(&pauses.begin, &pauses.end);
        if paused.contains(ALL_KINDS) {
            return Ok(Planned::Done(TenantVisit::Drained));
        }
        let HeadRest { taken, heads } = match rest {
            Some(rest) => rest,
            None => {
                let mut records =
                    Prefetched::read(tx, expired.iter().chain(&due).map(|&(_, id)| keys.job(id)))
                        .await?;
                self.rescue_expired(tx, &keys, now, expired, &mut records)
                    .await?;
                self.promote_due(tx, &keys, now, due, &mut records).await?;
                // After the moves (a rescued job frees its slot and may be ready again).
                self.head_rest(tx, &keys, cfg, req, quota, &paused).await?
            }
        };
        // Concurrency limit: a job runs only while it holds one of `max_running` slot keys.
        let free_slots = taken.map(|(max, taken)| {
            let mut free: Vec<u32> = (0..max).filter(|i| !taken.contains(i)).collect();
            self.with_rng(|r| r.shuffle(&mut free));
            free
        });
        let need = match &free_slots {
            Some(free) if free.is_empty() => return Ok(Planned::Done(TenantVisit::Drained)),
            Some(free) => quota.min(free.len()),
            None => quota,
        };
        let mut candidates: Vec<(u8, i64, Uuid)> = heads
            .iter()
            .flat_map(|(prefix, kvs)| {
                kvs.iter()
                    .filter_map(move |kv| parse_ready_in(prefix, &kv.key))
            })
            .collect();
        candidates.sort_unstable();
        {
            let undecodable = lock(&self.undecodable);
            if !undecodable.is_empty() {
                candidates.retain(|c| !undecodable.contains(&(tenant, c.2)));
            }
        }
        // Not the jobs other claims of this process are taking, or claimed at versions this
        // snapshot does not show.
        let read_version = tx.read_version().await?;
        let (chosen, skipped) = self
            .recent
            .take(&mut candidates, read_version, attempt, |c| {
                self.choose(c, need)
            });
        Ok(Planned::Take(VisitPlan {
            keys,
            chosen,
            free_slots,
            need,
            candidates: candidates.len(),
            skipped,
        }))
    }

    /// The second half of a visit: claims the chosen jobs that are still queued, reading their
    /// records from `records`. Says how the visit ended, and whether the tenant may have
    /// nothing left (then the caller checks its doorbell).
    async fn take_visit(
        &self,
        tx: &Transaction,
        req: &ClaimRequest,
        now: i64,
        plan: VisitPlan,
        records: &mut Prefetched,
        leases: &mut Vec<Lease>,
    ) -> Result<(TenantVisit, bool)> {
        let VisitPlan {
            keys,
            chosen,
            mut free_slots,
            need,
            candidates,
            skipped,
        } = plan;
        let mut claimed = 0;
        for id in chosen {
            let Some(job) = self.readable(records, tx, &keys, id).await? else {
                continue;
            };
            if job.state != JobState::Queued {
                continue;
            }
            let slot = match free_slots.as_mut() {
                Some(free) => {
                    // (Never short: no more are chosen than there are free slots.)
                    let Some(i) = free.pop() else { break };
                    // Two claims that pick the same free slot conflict here.
                    let slot_key = keys.slot(i);
                    tx.add_read_conflict_key(&slot_key);
                    tx.set(&slot_key, id.as_bytes());
                    Some(i)
                }
                None => None,
            };
            let mut next = job.clone();
            let token = self.ids.next_id();
            let lease_end = now.saturating_add(micros(req.lease));
            next.attempt += 1;
            next.lease = Some(LeaseInfo {
                token,
                expires_at: lease_end,
                worker: req.worker.clone(),
            });
            next.slot = slot;
            next.cancel_requested = false;
            transition(&mut next, JobState::Running, now);
            self.save(tx, &keys, Some(&job), &next)?;
            claimed += 1;
            leases.push(Lease {
                tenant: keys.tenant(),
                job_id: id,
                kind: next.kind.clone(),
                args: next.args.clone(),
                attempt: next.attempt,
                max_attempts: next.max_attempts,
                token,
                expires_at: lease_end,
                timeout_ms: next.timeout_ms,
                session_id: next.session_id,
                ready_at: job.run_at.max(job.created_at),
            });
        }
        if claimed == 0 && candidates == 0 && skipped > 0 {
            return Ok((TenantVisit::Hidden, false));
        }
        if candidates + skipped > claimed {
            // More is waiting: the tenant stays active, and may give more in a second round
            // (unless its concurrency slots ran out).
            let slots_left = free_slots.as_ref().is_none_or(|f| !f.is_empty());
            return Ok(if claimed == need && slots_left {
                (TenantVisit::Full, false)
            } else {
                (TenantVisit::Drained, false)
            });
        }
        Ok((TenantVisit::Drained, true))
    }

    /// Picks up to `need` ids, strictly by priority. Within one priority it takes a contiguous
    /// block at a random offset of the window read (after CouchDB's `couch_jobs`), so that
    /// concurrent claimers rarely pick the same job: two blocks of `need` in a window of `w`
    /// overlap with probability about `2 * need / w`. Order within a priority is therefore
    /// first-in-first-out only up to the window.
    fn choose(&self, sorted: &[(u8, i64, Uuid)], need: usize) -> Vec<Uuid> {
        let mut out = Vec::with_capacity(need);
        let mut i = 0;
        while i < sorted.len() && out.len() < need {
            let prio = sorted[i].0;
            let group_end = sorted[i..]
                .iter()
                .position(|c| c.0 != prio)
                .map_or(sorted.len(), |n| i + n);
            let want = need - out.len();
            let group = &sorted[i..group_end];
            let slack = group.len().saturating_sub(want);
            let offset = if slack == 0 {
                0
            } else {
                self.with_rng(|r| r.usize(0..=slack))
            };
            out.extend(group.iter().skip(offset).take(want).map(|c| c.2));
            i = group_end;
        }
        out
    }

    /// Jobs whose lease expired (`expired`, from [`time_index_head`]): back to the queue, or
    /// dead when no attempts are left.
    async fn rescue_expired(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        now: i64,
        expired: Vec<(i64, Uuid)>,
        records: &mut Prefetched,
    ) -> Result<()> {
        for (expires_at, id) in expired {
            let Some(job) = self.readable(records, tx, keys, id).await? else {
                continue;
            };
            let still_expired = job.state == JobState::Running
                && job
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.expires_at == expires_at);
            if !still_expired {
                continue;
            }
            let mut next = job.clone();
            // `ended_token` is not set: it marks a *report* of the worker as applied, and an
            // expiry is no report. Setting it here made the expired worker's late `fail` or
            // `release` look like its own retried report and succeed instead of LeaseLost.
            next.lease = None;
            if job.cancel_requested {
                next.cancel_reason = Some(CancelReason::Requested);
                finish(&mut next, JobState::Cancelled, now, None);
            } else {
                push_error(
                    &mut next,
                    now,
                    "lease expired: the worker stopped heartbeating",
                );
                if job.attempt >= job.max_attempts {
                    next.dead_reason = Some(DeadReason::LeaseExpiredTooOften);
                    finish(&mut next, JobState::Dead, now, None);
                } else {
                    next.run_at = now;
                    transition(&mut next, JobState::Queued, now);
                }
            }
            tracing::info!(job = %id, attempt = job.attempt, state = %next.state, "lease expired");
            self.save(tx, keys, Some(&job), &next)?;
        }
        Ok(())
    }

    /// Scheduled jobs whose time has come (`due`, from [`time_index_head`]): into the ready index.
    async fn promote_due(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        now: i64,
        due: Vec<(i64, Uuid)>,
        records: &mut Prefetched,
    ) -> Result<()> {
        for (run_at, id) in due {
            let Some(job) = self.readable(records, tx, keys, id).await? else {
                continue;
            };
            if job.state != JobState::Scheduled || job.run_at != run_at {
                continue;
            }
            let mut next = job.clone();
            transition(&mut next, JobState::Queued, now);
            self.save(tx, keys, Some(&job), &next)?;
        }
        Ok(())
    }

    /// Removes the tenant from the active index if it has no queued, scheduled or running job.
    /// The emptiness is read serializably, so an enqueue racing this claim makes the claim
    /// retry instead of leaving a job no worker will look for.
    async fn maybe_retire_doorbell(&self, tx: &Transaction, keys: &TenantKeys) -> Result<()> {
        // Each step's three reads go together (one round trip on FoundationDB, not three).
        let any = |range: RangeOption| async move {
            Ok::<bool, Error>(!tx.get_range(&range.limit(1)).await?.kvs.is_empty())
        };
        let indexes = || [keys.ready_all(), keys.scheduled_all(), keys.leases_all()];
        // First as a snapshot (no conflicts for a tenant that still has work) ...
        let found = try_join_all(indexes().map(|r| any(r.snapshot()))).await?;
        if found.contains(&true) {
            return Ok(());
        }
        // ... then serializably, so an enqueue racing the removal makes this claim retry.
        let found = try_join_all(indexes().map(any)).await?;
        if !found.contains(&true) {
            tx.clear(&keys::TenantIndex::Active.entry(keys.tenant()));
        }
        Ok(())
    }

    // ------------------------------------------------------------- reports from the worker

    /// Extends the lease and says whether a cancellation was asked for.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the lease is no longer this worker's; [`Error::NotFound`].
    pub async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Heartbeat> {
        if extend < Duration::from_millis(100) {
            return Err(Error::invalid("extend", "must be at least 100 ms"));
        }
        self.db
            .transact(|tx, _| async move {
                let keys = TenantKeys::new(lease.tenant);
                let job = load_required(&tx, &keys, lease.job_id).await?;
                check_fence(&job, lease)?;
                let now = self.now();
                let mut next = job.clone();
                let expires_at = now.saturating_add(micros(extend));
                if let Some(l) = next.lease.as_mut() {
                    l.expires_at = expires_at;
                }
                next.updated_at = now;
                self.save(&tx, &keys, Some(&job), &next)?;
                Ok(Heartbeat {
                    expires_at,
                    cancel_requested: job.cancel_requested,
                })
            })
            .await
    }

    /// Completes the job with `result`.
    ///
    /// # Errors
    /// As [`Queue::complete_with`].
    pub async fn complete(&self, lease: &Lease, result: serde_json::Value) -> Result<()> {
        self.complete_with(lease, result, |_tx| async { Ok(()) })
            .await
    }

    /// Completes the job with `result` and commits `effects` (the job's own store writes) in
    /// the same transaction: the effects happen exactly once, together with the completion, or
    /// not at all. `effects` may run more than once (retries) and must drop its transaction
    /// before returning.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the lease is no longer this worker's (nothing is written);
    /// [`Error::Invalid`] for a result over the size limit; the effects' errors.
    pub async fn complete_with<F, Fut>(
        &self,
        lease: &Lease,
        result: serde_json::Value,
        effects: F,
    ) -> Result<()>
    where
        F: Fn(Transaction) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let result = &result;
        let effects = &effects;
        self.db
            .transact(|tx, _| async move {
                let keys = TenantKeys::new(lease.tenant);
                let job = load_required(&tx, &keys, lease.job_id).await?;
                if completed_by(&job, lease) {
                    return Ok(()); // An earlier attempt of this call committed.
                }
                check_fence(&job, lease)?;
                effects(tx.clone()).await?;
                self.mark_completed(&tx, &keys, &job, lease, result)
            })
            .await
    }

    /// Completes many jobs in one transaction: a worker that ran a batch of short jobs commits
    /// once instead of once per job, and the store resolves and logs one transaction. Each entry
    /// gets the answer [`Queue::complete`] would give it: a lost lease, a missing job or a result
    /// over the size limit fails only its own entry, and the others complete.
    ///
    /// # Errors
    /// [`Error::Invalid`] for more than [`MAX_BATCH`] entries; store errors (then none of them
    /// completed).
    pub async fn complete_many(
        &self,
        done: &[(Lease, serde_json::Value)],
    ) -> Result<Vec<Result<()>>> {
        if done.len() > MAX_BATCH {
            return Err(Error::invalid(
                "done",
                format!("at most {MAX_BATCH} completions at once"),
            ));
        }
        // One transaction carries every record: keep it well inside the store's limit.
        let result_bytes = done
            .iter()
            .fold(0usize, |sum, (_, r)| sum.saturating_add(json_size(r)));
        if result_bytes > MAX_BATCH_RESULT_BYTES {
            return Err(Error::invalid(
                "done",
                format!(
                    "the results take {result_bytes} bytes; at most {MAX_BATCH_RESULT_BYTES} \
                     complete in one batch (complete them in smaller batches)"
                ),
            ));
        }
        self.db
            .transact_with(&self.background(), |tx, _| async move {
                let mut out = Vec::with_capacity(done.len());
                let mut records = Prefetched::read(
                    &tx,
                    done.iter()
                        .map(|(l, _)| TenantKeys::new(l.tenant).job(l.job_id)),
                )
                .await?;
                for (lease, result) in done {
                    let keys = TenantKeys::new(lease.tenant);
                    let job = match records.load(&tx, &keys, lease.job_id).await {
                        Ok(Some(job)) => job,
                        Ok(None) => {
                            out.push(Err(Error::NotFound(lease.job_id)));
                            continue;
                        }
                        // A record that does not decode fails its own entry, not the batch.
                        Err(e @ Error::Corrupt { .. }) => {
                            out.push(Err(e));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if completed_by(&job, lease) {
                        out.push(Ok(())); // An earlier attempt of this call committed.
                        continue;
                    }
                    out.push(
                        check_fence(&job, lease)
                            .and_then(|()| self.mark_completed(&tx, &keys, &job, lease, result)),
                    );
                }
                Ok(out)
            })
            .await
    }

    /// Writes `job` as completed by `lease` with `result` (fence already checked). Fails with
    /// [`Error::Invalid`], writing nothing, if the record would be too large.
    fn mark_completed(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        job: &Job,
        lease: &Lease,
        result: &serde_json::Value,
    ) -> Result<()> {
        let now = self.now();
        let mut next = job.clone();
        next.result = Some(result.clone());
        next.ended_token = Some(lease.token);
        next.lease = None;
        finish(&mut next, JobState::Completed, now, None);
        self.save(tx, keys, Some(job), &next)
    }

    /// Reports an attempt that did not succeed. Returns the job's new state.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the lease is no longer this worker's; [`Error::Invalid`] for a
    /// bad outcome.
    pub async fn fail(&self, lease: &Lease, outcome: Outcome) -> Result<JobState> {
        let outcome = &outcome;
        self.db
            .transact(|tx, _| async move {
                let keys = TenantKeys::new(lease.tenant);
                let job = load_required(&tx, &keys, lease.job_id).await?;
                if job.ended_token == Some(lease.token) {
                    // An earlier attempt of this call committed: answer the state that report
                    // produced, not the job's state now (another worker or a cancel may have
                    // moved it since).
                    return Ok(job.ended_state.unwrap_or(job.state));
                }
                check_fence(&job, lease)?;
                let now = self.now();
                let mut next = job.clone();
                next.lease = None;
                next.ended_token = Some(lease.token);
                match outcome {
                    _ if job.cancel_requested => {
                        next.cancel_reason = Some(CancelReason::Requested);
                        finish(&mut next, JobState::Cancelled, now, None);
                    }
                    Outcome::Retry { error, delay } => {
                        push_error(&mut next, now, error);
                        if job.attempt >= job.max_attempts {
                            next.dead_reason = Some(DeadReason::MaxAttempts);
                            finish(&mut next, JobState::Dead, now, None);
                        } else {
                            let delay = delay.unwrap_or_else(|| {
                                let unit = self.with_rng(fastrand::Rng::f64);
                                self.config.retry.delay(job.attempt, unit)
                            });
                            schedule(&mut next, now.saturating_add(micros(delay)), now);
                        }
                    }
                    Outcome::Fail { error } => {
                        push_error(&mut next, now, error);
                        next.dead_reason = Some(DeadReason::FailedPermanently);
                        finish(&mut next, JobState::Dead, now, None);
                    }
                    Outcome::Snooze { until } => {
                        next.attempt = next.attempt.saturating_sub(1);
                        schedule(&mut next, *until, now);
                    }
                    Outcome::Cancel { reason } => {
                        push_error(&mut next, now, reason);
                        next.cancel_reason = Some(CancelReason::Handler);
                        finish(&mut next, JobState::Cancelled, now, None);
                    }
                }
                next.ended_state = Some(next.state);
                self.save(&tx, &keys, Some(&job), &next)?;
                Ok(next.state)
            })
            .await
    }

    /// Gives the lease back without counting the attempt (graceful shutdown): the job is
    /// claimable again at once.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the lease is no longer this worker's.
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        self.db
            .transact(|tx, _| async move {
                let keys = TenantKeys::new(lease.tenant);
                let job = load_required(&tx, &keys, lease.job_id).await?;
                if job.ended_token == Some(lease.token) {
                    return Ok(());
                }
                check_fence(&job, lease)?;
                let now = self.now();
                let mut next = job.clone();
                next.lease = None;
                next.ended_token = Some(lease.token);
                next.attempt = next.attempt.saturating_sub(1);
                if job.cancel_requested {
                    next.cancel_reason = Some(CancelReason::Requested);
                    finish(&mut next, JobState::Cancelled, now, None);
                } else {
                    // Keeps its original run_at: it goes back to the head of its priority.
                    transition(&mut next, JobState::Queued, now);
                }
                self.save(&tx, &keys, Some(&job), &next)?;
                tx.set(&keys::TenantIndex::Active.entry(lease.tenant), b"");
                Ok(())
            })
            .await
    }

    // --------------------------------------------------------------------- administration

    /// Cancels a job: a waiting job at once; a running one is flagged, its worker learns it at
    /// the next heartbeat (and if its lease expires, it ends cancelled). Finished jobs are left
    /// as they are. Returns the job's state afterwards.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn cancel(&self, tenant: Uuid, id: Uuid) -> Result<JobState> {
        self.db
            .transact(|tx, _| async move { self.cancel_in(&tx, tenant, id).await })
            .await
    }

    async fn cancel_in(&self, tx: &Transaction, tenant: Uuid, id: Uuid) -> Result<JobState> {
        let keys = TenantKeys::new(tenant);
        let job = load_required(tx, &keys, id).await?;
        self.cancel_job(tx, &keys, &job)
    }

    /// Cancels `job` (as just read): a waiting job at once, a running one by flagging it for
    /// its worker's next heartbeat. Returns its state after.
    fn cancel_job(&self, tx: &Transaction, keys: &TenantKeys, job: &Job) -> Result<JobState> {
        let now = self.now();
        let mut next = job.clone();
        match job.state {
            JobState::Queued | JobState::Scheduled => {
                next.cancel_reason = Some(CancelReason::Requested);
                finish(&mut next, JobState::Cancelled, now, None);
            }
            JobState::Running if !job.cancel_requested => {
                next.cancel_requested = true;
                next.updated_at = now;
            }
            _ => return Ok(job.state),
        }
        self.save(tx, keys, Some(job), &next)?;
        Ok(next.state)
    }

    /// Cancels every unfinished job of a session. Returns how many were cancelled or flagged.
    ///
    /// # Errors
    /// Store errors (jobs handled before the error stay cancelled).
    pub async fn cancel_session(&self, tenant: Uuid, session: Uuid) -> Result<usize> {
        let keys = TenantKeys::new(tenant);
        let mut cursor = keys.session_jobs(session);
        let mut total = 0;
        loop {
            let page_opt = cursor.clone().limit(BULK_CHUNK);
            // Jobs an earlier attempt of this chunk cancelled: after `commit_unknown_result`
            // the retry finds them cancelled already and still counts them.
            let changed: Mutex<BTreeSet<Uuid>> = Mutex::new(BTreeSet::new());
            let changed = &changed;
            let (count, next) = self
                .db
                .transact(|tx, maybe_committed| {
                    let page_opt = page_opt.clone();
                    let keys = keys.clone();
                    async move {
                        let page = tx.get_range(&page_opt).await?;
                        let mut count = 0;
                        let mut mine = Vec::new();
                        let ids: Vec<Uuid> = page
                            .kvs
                            .iter()
                            .filter_map(|kv| keys.parse_session(&kv.key))
                            .collect();
                        let mut records =
                            Prefetched::read(&tx, ids.iter().map(|&id| keys.job(id))).await?;
                        for id in ids {
                            let Some(job) = records.load(&tx, &keys, id).await? else {
                                continue;
                            };
                            if job.state.is_terminal() || job.cancel_requested {
                                if maybe_committed.0 && lock(changed).contains(&id) {
                                    count += 1;
                                }
                                continue;
                            }
                            self.cancel_job(&tx, &keys, &job)?;
                            count += 1;
                            mine.push(id);
                        }
                        lock(changed).extend(mine);
                        Ok::<_, Error>((count, page.next_page(&page_opt)))
                    }
                })
                .await?;
            total += count;
            match next {
                Some(n) => cursor = n,
                None => return Ok(total),
            }
        }
    }

    /// Puts a dead job back in the queue with a fresh set of attempts.
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless the job is dead; [`Error::NotFound`].
    pub async fn replay(&self, tenant: Uuid, id: Uuid) -> Result<()> {
        self.db
            .transact(|tx, maybe_committed| async move {
                let keys = TenantKeys::new(tenant);
                let job = load_required(&tx, &keys, id).await?;
                if job.state != JobState::Dead {
                    // An earlier attempt may have replayed it (`commit_unknown_result`): the job
                    // is no longer dead, which is what was asked, so that is not an error.
                    if maybe_committed.0 {
                        return Ok(());
                    }
                    return Err(Error::InvalidState {
                        job: id,
                        state: job.state,
                        action: "replay (only dead jobs can be replayed)",
                    });
                }
                self.replay_in(&tx, &keys, &job)
            })
            .await
    }

    fn replay_in(&self, tx: &Transaction, keys: &TenantKeys, job: &Job) -> Result<()> {
        let now = self.now();
        let mut next = job.clone();
        next.attempt = 0;
        next.dead_reason = None;
        next.finished_at = None;
        next.run_at = now;
        transition(&mut next, JobState::Queued, now);
        self.save(tx, keys, Some(job), &next)?;
        tx.set(&keys::TenantIndex::Active.entry(job.tenant), b"");
        tx.add(&keys::wake(wake_shard(job.tenant)), 1);
        Ok(())
    }

    /// Replays up to `limit` dead jobs, oldest first, optionally of one kind. Returns how many.
    ///
    /// # Errors
    /// Store errors (jobs replayed before the error stay replayed).
    pub async fn replay_dead(
        &self,
        tenant: Uuid,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<usize> {
        let keys = TenantKeys::new(tenant);
        let mut total = 0;
        let mut cursor = keys.state_index(JobState::Dead);
        while total < limit {
            let page_opt = cursor.clone().limit(BULK_CHUNK);
            let remaining = limit - total;
            // Jobs an earlier attempt of this chunk replayed. After `commit_unknown_result` they
            // have left the dead index, so the retry would replay as many others (past
            // `limit`) and not count them: it counts those no longer dead instead.
            let replayed: Mutex<BTreeSet<Uuid>> = Mutex::new(BTreeSet::new());
            let replayed = &replayed;
            let (count, next) = self
                .db
                .transact(|tx, maybe_committed| {
                    let page_opt = page_opt.clone();
                    let keys = keys.clone();
                    async move {
                        let mut count = 0;
                        if maybe_committed.0 {
                            let tried = lock(replayed).clone();
                            let jobs =
                                try_join_all(tried.iter().map(|&id| load(&tx, &keys, id))).await?;
                            count += jobs
                                .iter()
                                .flatten()
                                .filter(|j| j.state != JobState::Dead)
                                .count();
                        }
                        let page = tx.get_range(&page_opt).await?;
                        let ids: Vec<Uuid> = page
                            .kvs
                            .iter()
                            .filter_map(|kv| keys.parse_state_index(&kv.key))
                            .map(|(_, id)| id)
                            .collect();
                        // Without a kind every dead job of the page is replayed until the
                        // limit, so only that many are read ahead; with one, all of them.
                        let ahead = match kind {
                            None => remaining.saturating_sub(count),
                            Some(_) => ids.len(),
                        };
                        let mut records =
                            Prefetched::read(&tx, ids.iter().take(ahead).map(|&id| keys.job(id)))
                                .await?;
                        let mut mine = Vec::new();
                        for id in ids {
                            if count >= remaining {
                                break;
                            }
                            let Some(job) = records.load(&tx, &keys, id).await? else {
                                continue;
                            };
                            if job.state != JobState::Dead || kind.is_some_and(|k| k != job.kind) {
                                continue;
                            }
                            self.replay_in(&tx, &keys, &job)?;
                            count += 1;
                            mine.push(id);
                        }
                        lock(replayed).extend(mine);
                        Ok::<_, Error>((count, page.next_page(&page_opt)))
                    }
                })
                .await?;
            total += count;
            match next {
                // Replayed jobs left the dead index, so continue after the page just read.
                Some(n) => cursor = n,
                None => break,
            }
        }
        Ok(total)
    }

    /// Pauses a kind, or the whole tenant with `None`: nothing more is claimed until resumed
    /// (running jobs finish).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad kind; store errors.
    pub async fn pause(&self, tenant: Uuid, kind: Option<&str>) -> Result<()> {
        self.set_paused(tenant, kind, true).await
    }

    /// Resumes what [`Queue::pause`] paused.
    ///
    /// # Errors
    /// As [`Queue::pause`].
    pub async fn resume(&self, tenant: Uuid, kind: Option<&str>) -> Result<()> {
        self.set_paused(tenant, kind, false).await
    }

    async fn set_paused(&self, tenant: Uuid, kind: Option<&str>, paused: bool) -> Result<()> {
        if let Some(k) = kind {
            validate_kind(k)?;
        }
        let key = TenantKeys::new(tenant).pause(kind.unwrap_or(ALL_KINDS));
        let key = &key;
        self.db
            .run(|tx, _| async move {
                if paused {
                    tx.set(key, b"");
                } else {
                    tx.clear(key);
                    tx.add(&keys::wake(wake_shard(tenant)), 1);
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Deletes jobs finished longer ago than the retention (completed and cancelled after
    /// `finished_retention`, dead after `dead_retention`), with their results, indexes and
    /// idempotency keys.
    ///
    /// # Errors
    /// Store errors (what was pruned before stays pruned).
    pub async fn prune(&self, tenant: Uuid) -> Result<PruneStats> {
        let now = self.now();
        let mut stats = PruneStats::default();
        for (state, keep) in [
            (JobState::Completed, self.config.finished_retention),
            (JobState::Cancelled, self.config.finished_retention),
            (JobState::Dead, self.config.dead_retention),
        ] {
            let before = now.saturating_sub(micros(keep));
            let mut after = None;
            loop {
                let (n, next) = self.prune_chunk(tenant, state, before, after).await?;
                if state == JobState::Dead {
                    stats.dead += n;
                } else {
                    stats.finished += n;
                }
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(stats)
    }

    /// Prunes one chunk of the `state` index before `before`, from after the key `after`.
    /// Returns how many jobs went, and where the next chunk starts if there may be more.
    async fn prune_chunk(
        &self,
        tenant: Uuid,
        state: JobState,
        before: i64,
        after: Option<Vec<u8>>,
    ) -> Result<(usize, Option<Vec<u8>>)> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let mut range = keys.state_index_before(state, before).limit(BULK_CHUNK);
        if let Some(after) = after {
            range.begin = [after.as_slice(), &[0]].concat();
        }
        let range = &range;
        // Jobs an earlier attempt deleted: after `commit_unknown_result` they are gone from the
        // index the retry reads, so it counts those whose record is gone instead.
        let deleted: Mutex<BTreeSet<Uuid>> = Mutex::new(BTreeSet::new());
        let deleted = &deleted;
        self.db
            .transact(|tx, maybe_committed| async move {
                let mut n = 0;
                if maybe_committed.0 {
                    let tried = lock(deleted).clone();
                    for id in tried {
                        if load(&tx, keys, id).await?.is_none() {
                            n += 1;
                        }
                    }
                }
                let page = tx.get_range(range).await?;
                let mut mine = Vec::new();
                let mut records = Prefetched::read(
                    &tx,
                    page.kvs
                        .iter()
                        .filter_map(|kv| keys.parse_state_index(&kv.key))
                        .map(|(_, id)| keys.job(id)),
                )
                .await?;
                for kv in &page.kvs {
                    let Some((_, id)) = keys.parse_state_index(&kv.key) else {
                        continue;
                    };
                    let job = match records.load(&tx, keys, id).await {
                        // Left as it is (entry and record), for a binary that can read it.
                        Err(e @ Error::Corrupt { .. }) => {
                            self.note_undecodable(keys, id, &e);
                            continue;
                        }
                        other => other?,
                    };
                    tx.clear(&kv.key);
                    n += 1;
                    let Some(job) = job else { continue };
                    if job.state != state {
                        continue;
                    }
                    self.delete_job(&tx, keys, &job).await?;
                    mine.push(id);
                }
                lock(deleted).extend(mine);
                // Entries before the last one read are gone or passed by.
                let next = (page.kvs.len() >= BULK_CHUNK)
                    .then(|| page.kvs.last().map(|kv| kv.key.clone()))
                    .flatten();
                Ok((n, next))
            })
            .await
    }

    async fn delete_job(&self, tx: &Transaction, keys: &TenantKeys, job: &Job) -> Result<()> {
        tx.clear(&keys.job(job.id));
        tx.clear(&keys.by_state(job.state, job.state_since, job.id));
        tx.add(&keys.counter(job.state, Self::shard(tx)), -1);
        if let Some(s) = job.session_id {
            tx.clear(&keys.session(s, job.id));
        }
        for (key, name) in [
            (
                job.idempotency_key.as_deref().map(|k| keys.idempotency(k)),
                "idempotency key",
            ),
            (
                job.supersede_key.as_deref().map(|k| keys.supersede(k)),
                "supersede key",
            ),
        ] {
            let Some(key) = key else { continue };
            if let Some(v) = tx.get(&key, false).await? {
                if decode_id(&v, name)? == job.id {
                    tx.clear(&key);
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ tenant settings

    /// Sets a tenant's queue settings (weight, concurrency and admission limits).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field; store errors.
    pub async fn set_tenant_config(&self, tenant: Uuid, config: &TenantQueueConfig) -> Result<()> {
        config.validate()?;
        let value = serde_json::to_vec(config).map_err(|e| Error::Corrupt {
            what: "tenant queue config".into(),
            source: e,
        })?;
        let key = TenantKeys::new(tenant).config();
        let (key, value) = (&key, &value);
        self.db
            .run(|tx, _| async move {
                tx.set(key, value);
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// A tenant's queue settings (the defaults if none were set).
    ///
    /// # Errors
    /// Store errors; [`Error::Corrupt`].
    pub async fn tenant_config(&self, tenant: Uuid) -> Result<TenantQueueConfig> {
        let keys = &TenantKeys::new(tenant);
        self.db
            .transact(|tx, _| async move { read_tenant_config(&tx, keys, true).await })
            .await
    }

    /// Admission control: refuses a new job beyond the tenant's `max_queued` or
    /// `max_queued_bytes`. The counts are read without a conflict (enqueues must not conflict
    /// with each other), so concurrent enqueues can overshoot a limit by the jobs in flight.
    async fn admit(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        cfg: &TenantQueueConfig,
        job: &NewJob,
        usage: &mut Option<Usage>,
    ) -> Result<()> {
        if cfg.max_queued.is_none() && cfg.max_queued_bytes.is_none() {
            return Ok(());
        }
        let usage = match usage {
            Some(usage) => *usage,
            None => *usage.insert(Usage::read(tx, keys).await?),
        };
        if let Some(max) = cfg.max_queued {
            let current = u64::try_from(usage.jobs).unwrap_or(0);
            if current >= max {
                return Err(Error::Refused {
                    limit: "max_queued",
                    max,
                    current,
                });
            }
        }
        if let Some(max) = cfg.max_queued_bytes {
            let current = u64::try_from(usage.bytes).unwrap_or(0);
            if current.saturating_add(args_len(&job.args)) > max {
                return Err(Error::Refused {
                    limit: "max_queued_bytes",
                    max,
                    current,
                });
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------------- internals

    /// The counter shard of a transaction: one per transaction, so all its adds to a counter
    /// land on one key (the local stores merge them into one write), while concurrent
    /// transactions spread over the shards.
    fn shard(tx: &Transaction) -> u8 {
        u8::try_from(tx.nonce() % u64::from(COUNTER_SHARDS)).unwrap_or(0)
    }

    /// Writes `next` and moves every index entry and counter from `old`'s state to `next`'s.
    pub(crate) fn save(
        &self,
        tx: &Transaction,
        keys: &TenantKeys,
        old: Option<&Job>,
        next: &Job,
    ) -> Result<()> {
        let value = serde_json::to_vec(next).map_err(|e| Error::Corrupt {
            what: format!("job {}", next.id),
            source: e,
        })?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::invalid(
                "result",
                format!(
                    "the job record would be {} bytes; the store's limit is {MAX_VALUE_SIZE}",
                    value.len()
                ),
            ));
        }
        if let Some(old) = old {
            if let Some(k) = placement_key(keys, old) {
                tx.clear(&k);
            }
            if old.state != next.state || old.state_since != next.state_since {
                tx.clear(&keys.by_state(old.state, old.state_since, old.id));
            }
            if old.state != next.state {
                tx.add(&keys.counter(old.state, Self::shard(tx)), -1);
            }
        }
        if let Some(k) = placement_key(keys, next) {
            tx.set(&k, b"");
        }
        // A job leaving `running` gives its concurrency slot back (if it still holds it).
        if let Some(old) = old {
            // Only a job that was running holds its slot; `slot` on a record that ran
            // before is stale, and that slot may belong to another job by now.
            let leaving = old.state == JobState::Running && next.state != JobState::Running;
            if let (Some(i), true) = (old.slot, leaving) {
                tx.clear(&keys.slot(i));
            }
        }
        // Argument bytes of unfinished jobs, for admission control.
        let unfinished = |j: &Job| !j.state.is_terminal();
        let delta = match (old.map(unfinished), unfinished(next)) {
            (None | Some(false), true) => Some(1i64),
            (Some(true), false) => Some(-1i64),
            _ => None,
        };
        if let Some(sign) = delta {
            let bytes = i64::try_from(next.args_bytes).unwrap_or(i64::MAX);
            tx.add(&keys.bytes_counter(Self::shard(tx)), sign * bytes);
        }
        if old.is_none_or(|o| o.state != next.state || o.state_since != next.state_since) {
            tx.set(&keys.by_state(next.state, next.state_since, next.id), b"");
        }
        if old.is_none_or(|o| o.state != next.state) {
            tx.add(&keys.counter(next.state, Self::shard(tx)), 1);
        }
        tx.set(&keys.job(next.id), &value);
        Ok(())
    }
}

/// The size of a job's arguments as JSON.
fn args_len(args: &serde_json::Value) -> u64 {
    json_size(args) as u64
}

/// The size of `value` as compact JSON, counted without building it (`usize::MAX` if it does
/// not serialize). The one measure of arguments and results against the queue's limits.
#[must_use]
pub fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

/// Sums the shards of a counter (snapshot: no conflicts; this transaction's own adds count).
pub(crate) async fn sum_counters(tx: &Transaction, range: &RangeOption) -> Result<i64> {
    Ok(tx
        .get_range(&range.clone().snapshot())
        .await?
        .kvs
        .iter()
        .map(|kv| steward_store::decode_counter(Some(&kv.value)))
        .sum())
}

/// A tenant's queue settings, or the defaults.
pub(crate) async fn read_tenant_config(
    tx: &Transaction,
    keys: &TenantKeys,
    snapshot: bool,
) -> Result<TenantQueueConfig> {
    match tx.get(&keys.config(), snapshot).await? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
            what: "tenant queue config".into(),
            source: e,
        }),
        None => Ok(TenantQueueConfig::default()),
    }
}

/// The tenants' queue configs, as snapshot reads, concurrently.
async fn read_tenant_configs(tx: &Transaction, tenants: &[Uuid]) -> Result<Vec<TenantQueueConfig>> {
    let keys: Vec<TenantKeys> = tenants.iter().map(|&t| TenantKeys::new(t)).collect();
    try_join_all(keys.iter().map(|k| read_tenant_config(tx, k, true))).await
}

/// Where a job sits in the scheduling indexes, by state.
fn placement_key(keys: &TenantKeys, job: &Job) -> Option<Vec<u8>> {
    match job.state {
        JobState::Queued => Some(keys.ready(&job.kind, job.priority, job.run_at, job.id)),
        JobState::Scheduled => Some(keys.scheduled(job.run_at, job.id)),
        JobState::Running => job.lease.as_ref().map(|l| keys.lease(l.expires_at, job.id)),
        _ => None,
    }
}

fn transition(job: &mut Job, state: JobState, now: i64) {
    if job.state != state {
        job.state = state;
        job.state_since = now;
    }
    job.updated_at = now;
}

fn finish(job: &mut Job, state: JobState, now: i64, _why: Option<&str>) {
    job.lease = None;
    job.finished_at = Some(now);
    transition(job, state, now);
}

fn schedule(job: &mut Job, run_at: i64, now: i64) {
    job.run_at = run_at;
    if run_at <= now {
        transition(job, JobState::Queued, now);
    } else {
        transition(job, JobState::Scheduled, now);
    }
}

/// Longest error message kept, in bytes of its JSON form. [`MAX_KEPT_ERRORS`] of them must fit,
/// with every other field, in the room [`MAX_ARGS_BYTES`] leaves in a record: a record that
/// cannot be saved would make the worker's report fail and, worse, abort every claim that
/// tries to rescue its expired lease.
const MAX_ERROR_JSON_BYTES: usize = 1024;

/// `message` cut to [`MAX_ERROR_JSON_BYTES`] of JSON, counting what serde_json escapes (quotes,
/// backslashes, control characters) at its escaped size.
fn truncate_error(message: &str) -> String {
    const MARK: &str = "…";
    let json_len = |c: char| match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    };
    if message.chars().map(json_len).sum::<usize>() <= MAX_ERROR_JSON_BYTES {
        return message.to_string();
    }
    let mut out = String::new();
    let mut used = MARK.len();
    for c in message.chars() {
        used += json_len(c);
        if used > MAX_ERROR_JSON_BYTES {
            break;
        }
        out.push(c);
    }
    out.push_str(MARK);
    out
}

fn push_error(job: &mut Job, now: i64, message: &str) {
    let message = truncate_error(message);
    job.errors.push(AttemptError {
        attempt: job.attempt,
        at: now,
        message,
    });
    if job.errors.len() > MAX_KEPT_ERRORS {
        let extra = job.errors.len() - MAX_KEPT_ERRORS;
        job.errors.drain(..extra);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The leases of `leases` that are still the current lease of their job (read serializably):
/// those of an earlier attempt of a claim that did commit.
async fn still_held(tx: &Transaction, leases: Vec<Lease>) -> Result<Vec<Lease>> {
    let mut held = Vec::new();
    let mut records = Prefetched::read(
        tx,
        leases
            .iter()
            .map(|l| TenantKeys::new(l.tenant).job(l.job_id)),
    )
    .await?;
    for lease in leases {
        let keys = TenantKeys::new(lease.tenant);
        if let Some(job) = records.load(tx, &keys, lease.job_id).await? {
            if check_fence(&job, &lease).is_ok() {
                held.push(lease);
            }
        }
    }
    Ok(held)
}

/// True if `lease`'s own completion is already applied (a retried report finds it).
fn completed_by(job: &Job, lease: &Lease) -> bool {
    job.ended_token == Some(lease.token) && job.state == JobState::Completed
}

fn check_fence(job: &Job, lease: &Lease) -> Result<()> {
    let held = job.state == JobState::Running
        && job.lease.as_ref().is_some_and(|l| l.token == lease.token);
    if held {
        Ok(())
    } else {
        Err(Error::LeaseLost { job: job.id })
    }
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn wake_shard(tenant: Uuid) -> u8 {
    (tenant.as_u128() % u128::from(WAKE_SHARDS)) as u8
}

fn decode_id(bytes: &[u8], what: &str) -> Result<Uuid> {
    Uuid::from_slice(bytes).map_err(|_| Error::Corrupt {
        what: what.to_string(),
        source: serde::de::Error::custom("not a 16-byte uuid"),
    })
}

/// Reads a job serializably.
pub(crate) async fn load(tx: &Transaction, keys: &TenantKeys, id: Uuid) -> Result<Option<Job>> {
    decode_job(tx.get(&keys.job(id), false).await?, id)
}

fn decode_job(value: Option<Vec<u8>>, id: Uuid) -> Result<Option<Job>> {
    match value {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                what: format!("job {id}"),
                source: e,
            }),
        None => Ok(None),
    }
}

/// A visit's choice, made before the chosen jobs' records are read (`Queue::plan_visit`).
struct VisitPlan {
    keys: TenantKeys,
    chosen: Vec<Uuid>,
    /// The free concurrency slots, shuffled (with `max_running`).
    free_slots: Option<Vec<u32>>,
    need: usize,
    /// Ready jobs seen, less those skipped.
    candidates: usize,
    /// Ready jobs seen that other claims of this process are taking, or that this process
    /// claimed at versions newer than the snapshot.
    skipped: usize,
}

/// What planning a visit came to.
enum Planned {
    /// The visit ended without taking anything (a paused tenant, or no free slot).
    Done(TenantVisit),
    Take(VisitPlan),
}

/// What a tenant's visit in a claim reads before it writes (see `Queue::tenant_head`).
struct TenantHead {
    paused: BTreeSet<String>,
    expired: Vec<(i64, Uuid)>,
    due: Vec<(i64, Uuid)>,
    /// `None` when jobs must be moved first (or the tenant is paused): the visit reads it
    /// after the moves.
    rest: Option<HeadRest>,
}

/// A tenant's taken slots (with `max_running`) and the heads of its ready kinds, as
/// (the kind's key prefix, entries).
struct HeadRest {
    taken: Option<(u32, BTreeSet<u32>)>,
    heads: Vec<(Vec<u8>, Vec<steward_store::KeyValue>)>,
}

/// What the enqueues of one transaction share.
struct EnqueueShared {
    /// A runnable job of the tenant was enqueued already: the tenant is not fresh, and its
    /// index entry need not be read again.
    queued: bool,
    /// The batch's job records, read ahead.
    records: Prefetched,
    /// The tenant's queue settings, if read ahead (enqueues do not change them).
    config: Option<TenantQueueConfig>,
    /// Whether the tenant's active-index entry exists, if read ahead: kept as a read of it
    /// would answer (set once an enqueue of the transaction writes it).
    active: Option<bool>,
    /// The tenant's unfinished jobs and their bytes, once admission control has read them:
    /// kept as a read of the counters would answer, as the enqueues write jobs.
    usage: Option<Usage>,
}

/// What admission control counts of a tenant: its unfinished jobs (queued, scheduled or
/// running) and their argument bytes. Snapshot reads, like every counter read: concurrent
/// enqueues do not conflict over them, so a burst of concurrent batches can overshoot a limit
/// by at most its own size.
#[derive(Debug, Clone, Copy)]
struct Usage {
    jobs: i64,
    bytes: i64,
}

impl Usage {
    /// Reads the four counters at once (this transaction's own adds count).
    async fn read(tx: &Transaction, keys: &TenantKeys) -> Result<Usage> {
        let ranges = [
            keys.bytes_counters(),
            keys.counters(JobState::Queued),
            keys.counters(JobState::Scheduled),
            keys.counters(JobState::Running),
        ];
        let sums = try_join_all(ranges.iter().map(|r| sum_counters(tx, r))).await?;
        Ok(Usage {
            bytes: sums[0],
            jobs: sums[1..].iter().sum(),
        })
    }
}

/// Job records (and the entries an enqueue looks up) read together, ahead of the loop that
/// takes them one by one. On FoundationDB every read is a network round trip: a loop that
/// loaded each job in turn waited one round trip per job (32 for a claim of 32, 100 for an
/// enqueue of 100); reading them concurrently waits about one for all (the client sends the
/// reads at once). They are snapshot reads, and a take adds the key's read conflict: so the
/// transaction's conflicts are exactly those of the reads the loop would have made one by one
/// (a key read ahead but never taken, say an idempotent duplicate's supersede entry, adds
/// none).
///
/// A take ([`Prefetched::load`], [`Prefetched::get`]) returns what a read would return at that
/// point of the loop, provided the loop writes a key only after taking it (then a value read
/// ahead cannot be stale). A key taken again (a repeated id, or two jobs of a batch with one
/// idempotency key) is read again, so it sees the loop's own write.
pub(crate) struct Prefetched(HashMap<Vec<u8>, Option<Vec<u8>>>);

impl Prefetched {
    /// Reads the records under `job_keys` ([`TenantKeys::job`]) concurrently.
    pub(crate) async fn read(
        tx: &Transaction,
        job_keys: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Prefetched> {
        let mut keys: Vec<Vec<u8>> = job_keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let values = try_join_all(keys.iter().map(|k| tx.get(k, true))).await?;
        Ok(Prefetched(keys.into_iter().zip(values).collect()))
    }

    /// Nothing read ahead: every [`Prefetched::load`] reads.
    pub(crate) fn none() -> Prefetched {
        Prefetched(HashMap::new())
    }

    /// Also reads `more` keys (those not read ahead yet) concurrently.
    pub(crate) async fn read_more(
        &mut self,
        tx: &Transaction,
        more: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<()> {
        let mut more: Vec<Vec<u8>> = more
            .into_iter()
            .filter(|k| !self.0.contains_key(k))
            .collect();
        more.sort_unstable();
        more.dedup();
        let values = try_join_all(more.iter().map(|k| tx.get(k, true))).await?;
        self.0.extend(more.into_iter().zip(values));
        Ok(())
    }

    /// The value read ahead under `key`, if it was read and not taken yet; not taken by this.
    pub(crate) fn peek(&self, key: &[u8]) -> Option<&[u8]> {
        self.0.get(key)?.as_deref()
    }

    /// The value under `key` as a serializable get reads it now: the first time from what
    /// was read ahead, afterwards (or if it was not read ahead) from the transaction.
    pub(crate) async fn get(&mut self, tx: &Transaction, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.0.remove(key) {
            Some(value) => {
                tx.add_read_conflict_key(key);
                Ok(value)
            }
            None => tx.get(key, false).await.map_err(Error::from),
        }
    }

    /// The job's record as [`load`] reads it now: the first time from what was read ahead,
    /// afterwards (or if it was not read ahead) from the transaction.
    pub(crate) async fn load(
        &mut self,
        tx: &Transaction,
        keys: &TenantKeys,
        id: Uuid,
    ) -> Result<Option<Job>> {
        let key = keys.job(id);
        match self.0.remove(&key) {
            Some(value) => {
                tx.add_read_conflict_key(&key);
                decode_job(value, id)
            }
            None => load(tx, keys, id).await,
        }
    }
}

async fn load_required(tx: &Transaction, keys: &TenantKeys, id: Uuid) -> Result<Job> {
    load(tx, keys, id).await?.ok_or(Error::NotFound(id))
}

/// The first entries of `range` of a time-ordered index (the leases that expired, or the
/// scheduled jobs due, by some time), as (time, job): a snapshot read.
async fn time_index_head(
    tx: &Transaction,
    keys: &TenantKeys,
    range: RangeOption,
) -> Result<Vec<(i64, Uuid)>> {
    let page = tx
        .get_range(&range.limit(MAINTENANCE_PER_CLAIM).snapshot())
        .await?;
    Ok(page
        .kvs
        .iter()
        .filter_map(|kv| keys.parse_timed(&kv.key))
        .collect())
}

/// The kinds that have runnable jobs, found by skipping from kind to kind (snapshot reads).
async fn ready_kinds(tx: &Transaction, keys: &TenantKeys) -> Result<Vec<String>> {
    let all = keys.ready_all();
    let mut begin = all.begin.clone();
    let mut kinds = Vec::new();
    while kinds.len() < 64 {
        let page = tx
            .get_range(
                &RangeOption::new(begin.clone(), all.end.clone())
                    .limit(1)
                    .snapshot(),
            )
            .await?;
        let Some(kv) = page.kvs.first() else { break };
        let Some((kind, ..)) = keys.parse_ready(&kv.key) else {
            break;
        };
        begin = keys.ready_of_kind(&kind).end;
        kinds.push(kind);
    }
    Ok(kinds)
}

fn validate_kind(kind: &str) -> Result<()> {
    if kind.is_empty() || kind.len() > MAX_KIND_LEN {
        return Err(Error::invalid(
            "kind",
            format!("must be 1 to {MAX_KIND_LEN} bytes"),
        ));
    }
    if kind == ALL_KINDS
        || !kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
    {
        return Err(Error::invalid(
            "kind",
            "may hold only ASCII letters, digits and _ - . : /",
        ));
    }
    Ok(())
}

pub(crate) fn validate_new_job(job: &NewJob) -> Result<()> {
    validate_kind(&job.kind)?;
    if job.max_attempts == 0 || job.max_attempts > 1000 {
        return Err(Error::invalid("max_attempts", "must be 1 to 1000"));
    }
    if job.timeout < Duration::from_millis(100) || job.timeout > Duration::from_secs(24 * 3600) {
        return Err(Error::invalid("timeout", "must be 100 ms to 24 h"));
    }
    for (field, key) in [
        ("idempotency_key", &job.idempotency_key),
        ("supersede_key", &job.supersede_key),
    ] {
        if key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN)
        {
            return Err(Error::invalid(
                field,
                format!("must be 1 to {MAX_KEY_LEN} bytes"),
            ));
        }
    }
    let args_len = json_size(&job.args);
    if args_len > MAX_ARGS_BYTES {
        return Err(Error::invalid(
            "args",
            format!("{args_len} bytes of JSON; at most {MAX_ARGS_BYTES} (the store's value limit less the job record)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_size_is_the_length_of_the_serialized_json() {
        for v in [
            serde_json::json!(null),
            serde_json::json!({"a": [1, 2.5, "x\"y"], "b": {"c": true}}),
            serde_json::json!("é".repeat(1000)),
        ] {
            assert_eq!(json_size(&v), serde_json::to_vec(&v).unwrap().len());
        }
    }

    fn ids(c: &[(u8, i64, Uuid)]) -> Vec<Uuid> {
        c.iter().map(|c| c.2).collect()
    }

    #[test]
    fn jobs_being_taken_are_hidden_from_other_attempts_until_the_attempt_ends() {
        let recent = RecentClaims::default();
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let all = vec![(0, 0, a), (0, 1, b), (0, 2, c)];
        let (first, second) = (recent.next_attempt(), recent.next_attempt());
        let (chosen, skipped) = recent.take(&mut all.clone(), 5, first, |c| ids(&c[..2]));
        assert_eq!((chosen, skipped), (vec![a, b], 0));
        recent.expire(u64::MAX);
        assert_eq!(
            recent.len(),
            2,
            "marks being taken do not expire with snapshots"
        );
        // Another attempt sees only c; the taking attempt still sees its own jobs.
        let mut seen = all.clone();
        let (chosen, skipped) = recent.take(&mut seen, 5, second, ids);
        assert_eq!((chosen, skipped), (vec![c], 2));
        let mut own = all.clone();
        assert_eq!(
            recent.take(&mut own, 5, first, |_| Vec::new()).1,
            1,
            "c is taken"
        );
        // The second attempt failed: c is free at once.
        recent.settle(second, None);
        let mut seen = all.clone();
        assert_eq!(
            recent.take(&mut seen, 5, recent.next_attempt(), |_| Vec::new()),
            (Vec::new(), 2)
        );
        assert_eq!(ids(&seen), vec![c]);
    }

    #[test]
    fn claimed_jobs_are_hidden_only_from_snapshots_older_than_their_claim() {
        let recent = RecentClaims::default();
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let all = vec![(0, 0, a), (0, 1, b), (0, 2, c)];
        let attempt = recent.next_attempt();
        recent.take(&mut all.clone(), 5, attempt, ids);
        // It committed at version 10 with a and b (c was no longer queued in its snapshot).
        recent.settle(attempt, Some((&[a, b], 10)));
        let other = recent.next_attempt();
        let mut seen_at_9 = all.clone();
        assert_eq!(recent.take(&mut seen_at_9, 9, other, |_| Vec::new()).1, 2);
        assert_eq!(ids(&seen_at_9), vec![c]);
        // A snapshot at the claim's version or later shows the jobs as running: nothing to hide.
        let mut seen_at_10 = all.clone();
        assert_eq!(recent.take(&mut seen_at_10, 10, other, |_| Vec::new()).1, 0);
        recent.expire(10);
        assert_eq!(recent.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_claim_attempt_frees_its_jobs_before_it_backs_off() {
        let db = Database::memory();
        let queue = Queue::with_seed(db.clone(), QueueConfig::default(), 1).unwrap();
        let tenant = queue.new_id();
        for _ in 0..3 {
            queue
                .enqueue(tenant, NewJob::new("k", serde_json::json!({})))
                .await
                .unwrap();
        }
        // Every commit of this handle conflicts, so its claim keeps failing and backing off.
        let failing = std::sync::Arc::new(
            Queue::with_seed(
                db.with_faults(steward_store::FaultConfig {
                    conflict: 1.0,
                    ..steward_store::FaultConfig::none(3)
                }),
                QueueConfig::default(),
                2,
            )
            .unwrap(),
        );
        let claiming = tokio::spawn({
            let failing = std::sync::Arc::clone(&failing);
            async move {
                failing
                    .claim(&ClaimRequest {
                        worker: "w".into(),
                        kinds: None,
                        max: 3,
                        lease: Duration::from_secs(30),
                    })
                    .await
            }
        });
        // The memory store answers at once: one yield runs the first attempt into its backoff.
        tokio::task::yield_now().await;
        let conflicts = failing.db().fault_stats().unwrap().conflicts;
        assert!(conflicts >= 1, "the first attempt has failed");
        assert_eq!(
            failing.recent.len(),
            0,
            "nothing stays marked as taken while the claim backs off"
        );
        claiming.abort();
    }

    #[test]
    fn a_dropped_claim_frees_what_its_attempt_was_taking() {
        let recent = RecentClaims::default();
        let a = Uuid::from_u128(1);
        {
            let attempt = Attempt {
                recent: &recent,
                current: Mutex::new(None),
            };
            let n = attempt.start();
            recent.take(&mut vec![(0, 0, a)], 1, n, ids);
            assert_eq!(recent.len(), 1);
            // A retry frees the first attempt's jobs before taking again.
            let m = attempt.start();
            assert_eq!(recent.len(), 0);
            recent.take(&mut vec![(0, 0, a)], 1, m, ids);
            assert_eq!(recent.len(), 1);
        }
        assert_eq!(recent.len(), 0, "dropped midway: nothing stays hidden");
    }

    #[test]
    fn new_job_validation_names_the_field() {
        let bad = [
            (NewJob::new("", serde_json::json!({})), "kind"),
            (NewJob::new("*", serde_json::json!({})), "kind"),
            (NewJob::new("a b", serde_json::json!({})), "kind"),
            (
                NewJob::new("k", serde_json::json!({})).max_attempts(0),
                "max_attempts",
            ),
            (
                NewJob::new("k", serde_json::json!({})).timeout(Duration::ZERO),
                "timeout",
            ),
            (
                NewJob::new("k", serde_json::json!({})).idempotency_key(""),
                "idempotency_key",
            ),
            (
                NewJob::new("k", serde_json::json!("x".repeat(MAX_ARGS_BYTES))),
                "args",
            ),
        ];
        for (job, field) in bad {
            match validate_new_job(&job) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(validate_new_job(&NewJob::new("summarize_session", serde_json::json!({}))).is_ok());
    }
}
