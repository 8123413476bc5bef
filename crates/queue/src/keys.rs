//! The queue's keyspace: the only place in this crate that packs keys. Every key of a tenant's
//! queue lies under `("t", tenant, "q")`; the global hints under `("g", ...)` hold only tenant
//! ids and counters.
//!
//! ```text
//! ("t", T, "q", "job",   JOB)                         -> Job record (JSON)
//! ("t", T, "q", "rdy",   KIND, PRIO, SEQ, JOB)         -> ""    queued, runnable now (SEQ = run_at µs)
//! ("t", T, "q", "sched", RUN_AT, JOB)                  -> ""    scheduled: later, retry backoff, snooze
//! ("t", T, "q", "lease", EXPIRES_AT, JOB)              -> ""    running, until the lease expires
//! ("t", T, "q", "st",    STATE, SINCE, JOB)            -> ""    every job by state, oldest first
//! ("t", T, "q", "sess",  SESSION, JOB)                 -> ""    jobs of an IDE session
//! ("t", T, "q", "idem",  KEY)                          -> JOB   idempotent enqueue
//! ("t", T, "q", "sup",   KEY)                          -> JOB   newest job of a supersede key
//! ("t", T, "q", "cnt",   STATE, SHARD)                 -> i64   jobs per state (atomic add, sharded)
//! ("t", T, "q", "pause", KIND | "*")                   -> ""    paused kind / whole tenant
//! ("t", T, "q", "cfg")                                 -> TenantQueueConfig (weight, limits)
//! ("t", T, "q", "slot",  I)                            -> JOB   concurrency slot, I < max_running
//! ("t", T, "q", "bytes", SHARD)                        -> i64   argument bytes of unfinished jobs
//! ("g", "qactive", SPREAD(T), T)                       -> ""    tenant may have queued, scheduled or running jobs
//! ("g", "qwake", SHARD)                                -> i64   bumped by enqueues; idle workers watch it
//! ("g", "qnew", SPREAD(T), T)                          -> ""    a job arrived for a tenant in no index: claims serve it first
//! ("t", T, "q", "cron",  NAME)                         -> CronSchedule (JSON)
//! ("t", T, "q", "tick",  NAME, FIRE)                   -> TickRecord: fired / skipped / coalesced
//! ("g", "cron", NAME) / ("g", "crontick", NAME, FIRE)  -> the same for system schedules
//! ("g", "cronidx", FIRE, T | nil, NAME)                -> ""    schedules by next tick
//! ```
//!
//! Times are i64 microseconds since the epoch; ids are UUIDv7 (tuple UUID type).

use steward_store::tuple::{pack, unpack, Subspace};
use steward_store::{strinc, RangeOption};
use uuid::Uuid;

use crate::job::JobState;

/// Shards of the per-state counters (a counter key is written at most ~1/16 of the time).
pub(crate) const COUNTER_SHARDS: u8 = 16;
/// Shards of the global wake counter.
pub(crate) const WAKE_SHARDS: u8 = 8;
/// The pause key that pauses a whole tenant.
pub(crate) const ALL_KINDS: &str = "*";

/// The keys of one tenant's queue.
#[derive(Debug, Clone)]
pub(crate) struct TenantKeys {
    tenant: Uuid,
    q: Subspace,
}

impl TenantKeys {
    pub(crate) fn new(tenant: Uuid) -> Self {
        TenantKeys {
            tenant,
            q: Subspace::from_bytes(pack(&("t", tenant, "q"))),
        }
    }

    pub(crate) fn tenant(&self) -> Uuid {
        self.tenant
    }

    pub(crate) fn job(&self, id: Uuid) -> Vec<u8> {
        self.q.pack(&("job", id))
    }

    pub(crate) fn jobs(&self) -> RangeOption {
        prefix(&self.q.pack(&("job",)))
    }

    pub(crate) fn job_id_of(&self, key: &[u8]) -> Option<Uuid> {
        self.q.unpack::<(String, Uuid)>(key).ok().map(|(_, id)| id)
    }

    pub(crate) fn ready(&self, kind: &str, prio: u8, seq: i64, id: Uuid) -> Vec<u8> {
        self.q.pack(&("rdy", kind, u16::from(prio), seq, id))
    }

    /// Every runnable job of `kind`, best first (priority, then run_at, then id).
    pub(crate) fn ready_of_kind(&self, kind: &str) -> RangeOption {
        prefix(&self.ready_kind_prefix(kind))
    }

    /// The packed prefix of [`TenantKeys::ready_of_kind`], for [`parse_ready_in`].
    pub(crate) fn ready_kind_prefix(&self, kind: &str) -> Vec<u8> {
        self.q.pack(&("rdy", kind))
    }

    /// All runnable jobs of every kind.
    pub(crate) fn ready_all(&self) -> RangeOption {
        prefix(&self.q.pack(&("rdy",)))
    }

    pub(crate) fn parse_ready(&self, key: &[u8]) -> Option<(String, u8, i64, Uuid)> {
        self.q
            .unpack::<(String, String, u16, i64, Uuid)>(key)
            .ok()
            .and_then(|(_, k, p, s, id)| Some((k, u8::try_from(p).ok()?, s, id)))
    }

    pub(crate) fn scheduled(&self, run_at: i64, id: Uuid) -> Vec<u8> {
        self.q.pack(&("sched", run_at, id))
    }

    /// Scheduled jobs due at or before `now`.
    pub(crate) fn scheduled_due(&self, now: i64) -> RangeOption {
        RangeOption::new(
            self.q.pack(&("sched",)),
            self.q.pack(&("sched", now.saturating_add(1))),
        )
    }

    pub(crate) fn scheduled_all(&self) -> RangeOption {
        prefix(&self.q.pack(&("sched",)))
    }

    /// An entry of a time-ordered index, scheduled jobs or leases: (run at or expiry, job).
    pub(crate) fn parse_timed(&self, key: &[u8]) -> Option<(i64, Uuid)> {
        self.q
            .unpack::<(String, i64, Uuid)>(key)
            .ok()
            .map(|(_, t, id)| (t, id))
    }

    pub(crate) fn lease(&self, expires_at: i64, id: Uuid) -> Vec<u8> {
        self.q.pack(&("lease", expires_at, id))
    }

    /// Leases that expired at or before `now`.
    pub(crate) fn leases_expired(&self, now: i64) -> RangeOption {
        RangeOption::new(
            self.q.pack(&("lease",)),
            self.q.pack(&("lease", now.saturating_add(1))),
        )
    }

    pub(crate) fn leases_all(&self) -> RangeOption {
        prefix(&self.q.pack(&("lease",)))
    }

    pub(crate) fn by_state(&self, state: JobState, since: i64, id: Uuid) -> Vec<u8> {
        self.q.pack(&("st", state.as_str(), since, id))
    }

    pub(crate) fn state_index(&self, state: JobState) -> RangeOption {
        prefix(&self.q.pack(&("st", state.as_str())))
    }

    /// Jobs that entered `state` before `before`.
    pub(crate) fn state_index_before(&self, state: JobState, before: i64) -> RangeOption {
        RangeOption::new(
            self.q.pack(&("st", state.as_str())),
            self.q.pack(&("st", state.as_str(), before)),
        )
    }

    pub(crate) fn parse_state_index(&self, key: &[u8]) -> Option<(i64, Uuid)> {
        self.q
            .unpack::<(String, String, i64, Uuid)>(key)
            .ok()
            .map(|(_, _, t, id)| (t, id))
    }

    pub(crate) fn session(&self, session: Uuid, id: Uuid) -> Vec<u8> {
        self.q.pack(&("sess", session, id))
    }

    pub(crate) fn session_jobs(&self, session: Uuid) -> RangeOption {
        prefix(&self.q.pack(&("sess", session)))
    }

    pub(crate) fn parse_session(&self, key: &[u8]) -> Option<Uuid> {
        self.q
            .unpack::<(String, Uuid, Uuid)>(key)
            .ok()
            .map(|(_, _, id)| id)
    }

    pub(crate) fn idempotency(&self, key: &str) -> Vec<u8> {
        self.q.pack(&("idem", key))
    }

    pub(crate) fn supersede(&self, key: &str) -> Vec<u8> {
        self.q.pack(&("sup", key))
    }

    pub(crate) fn counter(&self, state: JobState, shard: u8) -> Vec<u8> {
        self.q.pack(&("cnt", state.as_str(), u16::from(shard)))
    }

    pub(crate) fn counters(&self, state: JobState) -> RangeOption {
        prefix(&self.q.pack(&("cnt", state.as_str())))
    }

    /// The tenant's queue settings (weight, limits).
    pub(crate) fn config(&self) -> Vec<u8> {
        self.q.pack(&("cfg",))
    }

    /// A concurrency slot: `("t", T, "q", "slot", I) -> JOB`, `0 <= I < max_running`.
    pub(crate) fn slot(&self, i: u32) -> Vec<u8> {
        self.q.pack(&("slot", i))
    }

    /// Slots `0 .. max`.
    pub(crate) fn slots(&self, max: u32) -> RangeOption {
        RangeOption::new(self.q.pack(&("slot", 0u32)), self.q.pack(&("slot", max)))
    }

    pub(crate) fn parse_slot(&self, key: &[u8]) -> Option<u32> {
        self.q.unpack::<(String, u32)>(key).ok().map(|(_, i)| i)
    }

    /// One shard of the bytes of arguments of unfinished jobs.
    pub(crate) fn bytes_counter(&self, shard: u8) -> Vec<u8> {
        self.q.pack(&("bytes", u16::from(shard)))
    }

    pub(crate) fn bytes_counters(&self) -> RangeOption {
        prefix(&self.q.pack(&("bytes",)))
    }

    pub(crate) fn pause(&self, kind: &str) -> Vec<u8> {
        self.q.pack(&("pause", kind))
    }

    pub(crate) fn pauses(&self) -> RangeOption {
        prefix(&self.q.pack(&("pause",)))
    }

    pub(crate) fn parse_pause(&self, key: &[u8]) -> Option<String> {
        self.q.unpack::<(String, String)>(key).ok().map(|(_, k)| k)
    }
}

/// Where a tenant sits in the active index: a uniform 64-bit mix of its id, so a random point
/// of the index is a uniformly random tenant even though UUIDv7 ids cluster by time.
pub(crate) fn spread(tenant: Uuid) -> u64 {
    let (hi, lo) = tenant.as_u64_pair();
    let mut z = hi ^ lo.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64's finalizer.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The two indexes of tenants, each ordered by [`spread`]: tenants that may have work, and
/// fresh tenants (a job arrived while the tenant was in no index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TenantIndex {
    Active,
    Fresh,
}

impl TenantIndex {
    fn name(self) -> &'static str {
        match self {
            TenantIndex::Active => "qactive",
            TenantIndex::Fresh => "qnew",
        }
    }

    /// The tenant's entry.
    pub(crate) fn entry(self, tenant: Uuid) -> Vec<u8> {
        pack(&("g", self.name(), spread(tenant), tenant))
    }

    /// Entries from the point `start` of the index (wrapping is the caller's).
    pub(crate) fn from(self, start: u64) -> RangeOption {
        RangeOption::new(
            pack(&("g", self.name(), start)),
            strinc(&pack(&("g", self.name()))),
        )
    }

    /// Entries before the point `end` of the index.
    pub(crate) fn before(self, end: u64) -> RangeOption {
        RangeOption::new(pack(&("g", self.name())), pack(&("g", self.name(), end)))
    }
}

/// The tenant of an entry of either [`TenantIndex`].
pub(crate) fn parse_tenant_entry(key: &[u8]) -> Option<Uuid> {
    unpack::<(String, String, u64, Uuid)>(key)
        .ok()
        .map(|(_, _, _, t)| t)
}

/// One shard of the wake counter.
pub(crate) fn wake(shard: u8) -> Vec<u8> {
    pack(&("g", "qwake", u16::from(shard)))
}

/// Where a cron schedule lives: in a tenant, or system-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CronScope {
    Tenant(Uuid),
    System,
}

impl CronScope {
    pub(crate) fn of(tenant: Option<Uuid>) -> Self {
        tenant.map_or(CronScope::System, CronScope::Tenant)
    }

    /// The scope as it appears in the global index (the nil UUID for system schedules).
    fn index_id(&self) -> Uuid {
        match self {
            CronScope::Tenant(t) => *t,
            CronScope::System => Uuid::nil(),
        }
    }

    /// A stable text tag, for derived ids.
    pub(crate) fn tag(&self) -> String {
        match self {
            CronScope::Tenant(t) => t.to_string(),
            CronScope::System => "system".to_string(),
        }
    }
}

/// A schedule: `("t", T, "q", "cron", NAME)` or `("g", "cron", NAME)`.
pub(crate) fn cron_schedule(scope: &CronScope, name: &str) -> Vec<u8> {
    match scope {
        CronScope::Tenant(t) => pack(&("t", *t, "q", "cron", name)),
        CronScope::System => pack(&("g", "cron", name)),
    }
}

/// Every schedule of a scope, by name.
pub(crate) fn cron_schedules(scope: &CronScope) -> RangeOption {
    match scope {
        CronScope::Tenant(t) => prefix(&pack(&("t", *t, "q", "cron"))),
        CronScope::System => prefix(&pack(&("g", "cron"))),
    }
}

/// A tick record: `("t", T, "q", "tick", NAME, FIRE)` or `("g", "crontick", NAME, FIRE)`.
pub(crate) fn cron_tick(scope: &CronScope, name: &str, fire: i64) -> Vec<u8> {
    match scope {
        CronScope::Tenant(t) => pack(&("t", *t, "q", "tick", name, fire)),
        CronScope::System => pack(&("g", "crontick", name, fire)),
    }
}

/// Every tick record of a schedule.
pub(crate) fn cron_ticks(scope: &CronScope, name: &str) -> RangeOption {
    match scope {
        CronScope::Tenant(t) => prefix(&pack(&("t", *t, "q", "tick", name))),
        CronScope::System => prefix(&pack(&("g", "crontick", name))),
    }
}

/// The global index of schedules by next tick: `("g", "cronidx", FIRE, SCOPE, NAME)`.
pub(crate) fn cron_index(fire: i64, scope: &CronScope, name: &str) -> Vec<u8> {
    pack(&("g", "cronidx", fire, scope.index_id(), name))
}

/// Index entries due at or before `now`.
pub(crate) fn cron_due(now: i64) -> RangeOption {
    RangeOption::new(
        pack(&("g", "cronidx")),
        pack(&("g", "cronidx", now.saturating_add(1))),
    )
}

pub(crate) fn parse_cron_index(key: &[u8]) -> Option<(i64, CronScope, String)> {
    let (_, _, fire, scope, name): (String, String, i64, Uuid, String) = unpack(key).ok()?;
    let scope = if scope.is_nil() {
        CronScope::System
    } else {
        CronScope::Tenant(scope)
    };
    Some((fire, scope, name))
}

/// `(priority, seq, id)` of a ready key under `kind_prefix` ([`TenantKeys::ready_kind_prefix`]):
/// only the tail is decoded, without the two strings [`TenantKeys::parse_ready`] allocates. A
/// claim reads up to a thousand of these per tenant and kind.
pub(crate) fn parse_ready_in(kind_prefix: &[u8], key: &[u8]) -> Option<(u8, i64, Uuid)> {
    let tail = key.strip_prefix(kind_prefix)?;
    let (p, s, id) = unpack::<(u16, i64, Uuid)>(tail).ok()?;
    Some((u8::try_from(p).ok()?, s, id))
}

fn prefix(p: &[u8]) -> RangeOption {
    // Tuple-packed prefixes never end in 0xff, so strinc is the exact end of the subspace.
    RangeOption::prefix(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_key_lies_under_its_tenant_prefix() {
        let t = Uuid::from_u128(7);
        let k = TenantKeys::new(t);
        let id = Uuid::from_u128(9);
        let root = pack(&("t", t));
        for key in [
            k.job(id),
            k.ready("summarize", 3, 10, id),
            k.scheduled(5, id),
            k.lease(5, id),
            k.by_state(JobState::Queued, 1, id),
            k.session(id, id),
            k.idempotency("x"),
            k.supersede("x"),
            k.counter(JobState::Dead, 3),
            k.pause("*"),
        ] {
            assert!(key.starts_with(&root));
        }
        assert_eq!(k.job_id_of(&k.job(id)), Some(id));
        assert_eq!(
            parse_ready_in(&k.ready_kind_prefix("a"), &k.ready("a", 1, 2, id)),
            Some((1, 2, id))
        );
        // Another kind that merely starts with the same letters is not under the prefix.
        assert_eq!(
            parse_ready_in(&k.ready_kind_prefix("a"), &k.ready("ab", 1, 2, id)),
            None
        );
        assert_eq!(
            k.parse_ready(&k.ready("a", 1, 2, id)),
            Some(("a".to_string(), 1, 2, id))
        );
        for index in [TenantIndex::Active, TenantIndex::Fresh] {
            let entry = index.entry(t);
            assert_eq!(parse_tenant_entry(&entry), Some(t));
            let (from, before) = (index.from(spread(t)), index.before(spread(t)));
            assert!(from.begin <= entry && entry < from.end, "{index:?}");
            assert!(before.end <= entry, "{index:?}");
        }
        // The indexes do not overlap.
        let fresh = TenantIndex::Fresh.from(0);
        let active = TenantIndex::Active.entry(t);
        assert!(!(fresh.begin <= active && active < fresh.end));
    }

    #[test]
    fn ready_keys_order_by_priority_then_time() {
        let k = TenantKeys::new(Uuid::from_u128(1));
        let id = Uuid::from_u128(2);
        assert!(k.ready("a", 0, 100, id) < k.ready("a", 1, 0, id));
        assert!(k.ready("a", 1, 5, id) < k.ready("a", 1, 6, id));
        let due = k.scheduled_due(10);
        assert!(k.scheduled(10, id) >= due.begin && k.scheduled(10, id) < due.end);
        assert!(k.scheduled(11, id) >= due.end);
    }
}
