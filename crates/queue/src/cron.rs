//! Cron without a leader. Schedules live in the store; any number of scheduler replicas call
//! [`Scheduler::tick`]. Each due tick is handled in one transaction that reads the schedule,
//! enqueues the job (or records why not), records the tick, and advances the schedule: racing
//! replicas conflict on the schedule record, and the loser's retry finds the tick already
//! handled. So every tick is recorded exactly once, as [`TickOutcome::Fired`],
//! [`TickOutcome::Skipped`] or [`TickOutcome::Coalesced`], and fires at most once.
//!
//! A system schedule (no tenant) enqueues one fan-out job ([`FANOUT_KIND`]) into the system
//! tenant; its handler pages through the tenant directory and calls [`Scheduler::fan_out`],
//! which enqueues one job per tenant under an id derived from (schedule, tick, tenant), so a
//! fan-out retried after a crash never enqueues a tenant's job twice.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use steward_store::{RangeOption, TransactError, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::job::{Job, NewJob};
use crate::keys::{self, CronScope, TenantKeys};
use crate::queue::{load, micros, Queue};

/// The reserved tenant that owns system jobs (the fan-out of system schedules).
pub const SYSTEM_TENANT: Uuid = Uuid::nil();
/// The kind of the job a system schedule enqueues; its handler fans out to every tenant.
pub const FANOUT_KIND: &str = "steward.cron_fanout";
/// Ticks handled per transaction when catching up after downtime.
const TICKS_PER_TRANSACTION: usize = 200;
/// Schedules looked at per [`Scheduler::tick`].
const SCHEDULES_PER_TICK: usize = 100;
/// Default lateness after which a tick counts as missed (not merely late).
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// What to do when a tick comes while the previous tick's job has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Record the tick as skipped (the default).
    #[default]
    Skip,
    /// Fire anyway.
    Allow,
}

/// What to do with ticks missed while no scheduler ran (later than the misfire grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Fire once for all of them: the latest fires, the others are recorded as coalesced.
    #[default]
    Coalesce,
    /// Fire none of them: all are recorded as coalesced and the schedule waits for the next.
    Drop,
}

/// What [`Scheduler::upsert`] creates. Build with [`ScheduleSpec::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// The tenant, or `None` for a system schedule.
    pub tenant: Option<Uuid>,
    /// Unique within its scope.
    pub name: String,
    /// See [`CronSchedule::expression`].
    pub expression: String,
    /// IANA time zone (default `UTC`).
    pub time_zone: String,
    /// The job each tick enqueues.
    pub template: NewJob,
    /// Default: skip while the previous run is unfinished.
    pub overlap: OverlapPolicy,
    /// Default: coalesce missed ticks into one.
    pub missed: MissedPolicy,
}

impl ScheduleSpec {
    /// A schedule in UTC with the default policies.
    #[must_use]
    pub fn new(
        tenant: Option<Uuid>,
        name: impl Into<String>,
        expression: impl Into<String>,
        template: NewJob,
    ) -> Self {
        ScheduleSpec {
            tenant,
            name: name.into(),
            expression: expression.into(),
            time_zone: "UTC".into(),
            template,
            overlap: OverlapPolicy::default(),
            missed: MissedPolicy::default(),
        }
    }

    /// Sets the time zone.
    #[must_use]
    pub fn time_zone(mut self, tz: impl Into<String>) -> Self {
        self.time_zone = tz.into();
        self
    }

    /// Sets the overlap policy.
    #[must_use]
    pub fn overlap(mut self, p: OverlapPolicy) -> Self {
        self.overlap = p;
        self
    }

    /// Sets the missed-tick policy.
    #[must_use]
    pub fn missed(mut self, p: MissedPolicy) -> Self {
        self.missed = p;
        self
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronSchedule {
    /// Unique within its scope.
    pub name: String,
    /// The tenant, or `None` for a system schedule that fans out to every tenant.
    pub tenant: Option<Uuid>,
    /// A cron expression: `sec min hour day-of-month month day-of-week [year]`, or the usual
    /// five fields (`min hour dom month dow`), or `@hourly`-style shortcuts.
    pub expression: String,
    /// IANA time zone the expression is read in (e.g. `Europe/Berlin`).
    pub time_zone: String,
    /// The job each tick enqueues (its id is derived per tick).
    pub template: NewJob,
    /// While a previous run is unfinished.
    pub overlap: OverlapPolicy,
    /// For ticks missed during downtime.
    pub missed: MissedPolicy,
    /// Lateness after which a tick is missed rather than late (µs).
    pub misfire_grace_us: i64,
    /// The next tick (µs since the epoch).
    pub next_fire: i64,
    /// The job of the latest fired tick.
    pub last_job: Option<Uuid>,
    /// The latest tick handled (fired, skipped or coalesced); the next is always after it,
    /// even if the wall clock goes back.
    #[serde(default)]
    pub last_fire: Option<i64>,
    /// Paused schedules record nothing and fire nothing until resumed.
    pub paused: bool,
}

/// How one tick ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TickOutcome {
    /// A job was enqueued.
    Fired {
        /// The job (in the system tenant for a system schedule).
        job: Uuid,
    },
    /// Not fired: the previous run was still unfinished (`previous`), or the tenant's
    /// admission control refused the job (`refused` names the limit).
    Skipped {
        /// The unfinished job.
        previous: Option<Uuid>,
        /// The admission limit that refused the job.
        refused: Option<RefusedBy>,
    },
    /// Missed during downtime; folded into a later tick (or dropped by policy).
    Coalesced,
}

/// The admission limit that refused a tick's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedBy {
    /// The tenant's `max_queued`.
    MaxQueued,
    /// The tenant's `max_queued_bytes`.
    MaxQueuedBytes,
}

impl RefusedBy {
    /// The limit an [`Error::Refused`] names.
    fn of(limit: &str) -> RefusedBy {
        if limit == "max_queued_bytes" {
            RefusedBy::MaxQueuedBytes
        } else {
            RefusedBy::MaxQueued
        }
    }
}

/// What a fan-out did for one tenant.
enum Placed {
    /// Its job was there already (an earlier call enqueued it).
    Already,
    New,
    Refused(RefusedBy),
    Unreadable(String),
}

/// What one page of a system schedule's fan-out did ([`Scheduler::fan_out`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Jobs enqueued by this call (a repeated call enqueues only what is missing).
    pub enqueued: usize,
    /// Tenants whose job their admission limits refused: they lose this tick, and the other
    /// tenants get theirs.
    pub refused: Vec<(Uuid, RefusedBy)>,
    /// Tenants whose queue records did not decode (settings, or the job an idempotency or
    /// supersede key names), with the error: skipped, so the others still get their jobs.
    pub unreadable: Vec<(Uuid, String)>,
}

/// A recorded tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRecord {
    /// The tick's time (µs).
    pub fire_time: i64,
    /// What happened.
    pub outcome: TickOutcome,
    /// When it was handled (µs).
    pub handled_at: i64,
}

/// Parses a cron expression as [`CronSchedule::expression`] accepts it.
///
/// # Errors
/// [`Error::Invalid`] for `expression`.
pub fn parse_expression(expression: &str) -> Result<cron::Schedule> {
    let trimmed = expression.trim();
    let fields = trimmed.split_whitespace().count();
    let full = if !trimmed.starts_with('@') && fields == 5 {
        format!("0 {trimmed}")
    } else {
        trimmed.to_string()
    };
    cron::Schedule::from_str(&full)
        .map_err(|e| Error::invalid("expression", format!("not a cron expression: {e}")))
}

fn parse_zone(zone: &str) -> Result<chrono_tz::Tz> {
    zone.parse::<chrono_tz::Tz>()
        .map_err(|_| Error::invalid("time_zone", format!("`{zone}` is not an IANA time zone")))
}

/// The first tick strictly after `after_us`.
fn next_after(schedule: &cron::Schedule, tz: chrono_tz::Tz, after_us: i64) -> Option<i64> {
    let after = Utc.timestamp_micros(after_us).single()?.with_timezone(&tz);
    schedule
        .after(&after)
        .next()
        .map(|t: DateTime<chrono_tz::Tz>| t.timestamp_micros())
}

/// A job id derived from `parts`: the same inputs always give the same id, so a retried or
/// racing enqueue of one tick finds the job already there. Time-ordered like UUIDv7.
pub(crate) fn derived_id(fire_time_us: i64, parts: &[&[u8]]) -> Uuid {
    // FNV-1a, 128-bit: stable across Rust versions and platforms (replicas of different
    // versions must derive the same id during a rolling deploy).
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for part in parts {
        for &b in *part {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    let millis = u64::try_from(fire_time_us.max(0) / 1000).unwrap_or(0);
    let bytes = h.to_be_bytes();
    let mut random = [0u8; 10];
    random.copy_from_slice(&bytes[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// Registers and fires schedules.
#[derive(Debug)]
pub struct Scheduler<'q> {
    queue: &'q Queue,
}

impl<'q> Scheduler<'q> {
    /// A scheduler over `queue`.
    #[must_use]
    pub fn new(queue: &'q Queue) -> Self {
        Scheduler { queue }
    }

    /// Creates or replaces a schedule. Its first tick is the first after now; a replaced
    /// schedule keeps its last job (for the overlap policy).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad field.
    pub async fn upsert(&self, spec: ScheduleSpec) -> Result<CronSchedule> {
        let ScheduleSpec {
            tenant,
            name,
            expression,
            time_zone,
            template,
            overlap,
            missed,
        } = spec;
        let (name, expression, time_zone) =
            (name.as_str(), expression.as_str(), time_zone.as_str());
        if name.is_empty() || name.len() > 128 {
            return Err(Error::invalid("name", "must be 1 to 128 bytes"));
        }
        let parsed = parse_expression(expression)?;
        let tz = parse_zone(time_zone)?;
        crate::queue::validate_new_job(&template)?;
        let now = self.queue.now();
        // Checked here so a schedule that can never fire is refused at once.
        next_after(&parsed, tz, now)
            .ok_or_else(|| Error::invalid("expression", "never fires after now"))?;
        let scope = &CronScope::of(tenant);
        let template = NewJob {
            id: None,
            ..template
        };
        let schedule = &CronSchedule {
            name: name.to_string(),
            tenant,
            expression: expression.to_string(),
            time_zone: time_zone.to_string(),
            template,
            overlap,
            missed,
            misfire_grace_us: micros(DEFAULT_MISFIRE_GRACE),
            next_fire: 0,
            last_job: None,
            last_fire: None,
            paused: false,
        };
        let (parsed, tz) = (&parsed, tz);
        self.queue
            .db()
            .transact(|tx, _| async move {
                let old = load_schedule(&tx, scope, name).await?;
                let mut next = schedule.clone();
                // The first tick after now, and never one at or before a tick already handled
                // (the wall clock may have gone back).
                let after = old
                    .as_ref()
                    .and_then(|o| o.last_fire)
                    .map_or(now, |l| l.max(now));
                next.next_fire = next_after(parsed, tz, after).unwrap_or(i64::MAX);
                if let Some(old) = &old {
                    next.last_job = old.last_job;
                    next.last_fire = old.last_fire;
                    let unchanged =
                        old.expression == next.expression && old.time_zone == next.time_zone;
                    // Re-registering an unchanged schedule (every deploy does it for
                    // schedules defined in code) keeps its next tick: a due tick is not
                    // skipped, and a replica whose clock lags adds no earlier tick. A tick of
                    // a changed schedule that is already due stays due as well.
                    if unchanged || (old.next_fire <= now && old.next_fire < next.next_fire) {
                        next.next_fire = old.next_fire;
                    }
                    tx.clear(&keys::cron_index(old.next_fire, scope, name));
                }
                save_schedule(&tx, scope, &next)?;
                Ok(next)
            })
            .await
    }

    /// Deletes a schedule (its tick records stay until pruned with the tenant).
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, tenant: Option<Uuid>, name: &str) -> Result<bool> {
        let scope = CronScope::of(tenant);
        let scope = &scope;
        self.queue
            .db()
            .transact(|tx, _| async move {
                let Some(old) = load_schedule(&tx, scope, name).await? else {
                    return Ok(false);
                };
                tx.clear(&keys::cron_index(old.next_fire, scope, name));
                tx.clear(&keys::cron_schedule(scope, name));
                Ok(true)
            })
            .await
    }

    /// A schedule, or `None`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn get(&self, tenant: Option<Uuid>, name: &str) -> Result<Option<CronSchedule>> {
        let scope = &CronScope::of(tenant);
        self.queue
            .db()
            .transact(|tx, _| async move { load_schedule(&tx, scope, name).await })
            .await
    }

    /// The schedules of a tenant (or the system ones), by name: at most `limit` (1 to 1000)
    /// after the name `after`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for `limit`; store errors.
    pub async fn list(
        &self,
        tenant: Option<Uuid>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CronSchedule>> {
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("limit", "must be 1 to 1000"));
        }
        let scope = CronScope::of(tenant);
        let mut range = keys::cron_schedules(&scope);
        if let Some(after) = after {
            let mut begin = keys::cron_schedule(&scope, after);
            begin.push(0);
            range.begin = begin;
        }
        let range = &range.limit(limit).snapshot();
        let kvs = self
            .queue
            .db()
            .run(|tx, _| async move { Ok(tx.get_range(range).await?.kvs) })
            .await?;
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
                    what: "schedule".into(),
                    source: e,
                })
            })
            .collect()
    }

    /// The recorded ticks of a schedule, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub async fn ticks(&self, tenant: Option<Uuid>, name: &str) -> Result<Vec<TickRecord>> {
        let range = &keys::cron_ticks(&CronScope::of(tenant), name).snapshot();
        let kvs = self
            .queue
            .db()
            .run(|tx, _| async move { tx.get_range_all(range).await })
            .await?;
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
                    what: format!("tick of {name}"),
                    source: e,
                })
            })
            .collect()
    }

    /// Handles every tick due by now. Safe to call from any number of replicas at once.
    /// Returns the ticks this call recorded.
    ///
    /// The due schedules are read a page at a time, and each replica handles a page in its
    /// own random order, so replicas that tick together mostly take different schedules
    /// instead of racing for the same ones. A schedule that cannot be handled is skipped (and
    /// logged), so however many of them there are, the ones after them still fire.
    ///
    /// # Errors
    /// Store errors (ticks handled before the error stay handled).
    pub async fn tick(&self) -> Result<Vec<(String, TickRecord)>> {
        let now = self.queue.now();
        let due = keys::cron_due(now);
        let mut recorded = Vec::new();
        let mut begin = due.begin.clone();
        loop {
            let page_opt = RangeOption::new(begin, due.end.clone())
                .limit(SCHEDULES_PER_TICK)
                .snapshot();
            let page_opt = &page_opt;
            let page = self
                .queue
                .db()
                .run(|tx, _| async move { tx.get_range(page_opt).await })
                .await?;
            let Some(last) = page.kvs.last() else {
                break;
            };
            // A handled schedule's entry moves past `now`; one that could not be handled stays,
            // so the next page starts after this one.
            begin = [last.key.as_slice(), &[0]].concat();
            let full = page.kvs.len() >= SCHEDULES_PER_TICK;
            let mut entries: Vec<_> = page
                .kvs
                .iter()
                .filter_map(|kv| keys::parse_cron_index(&kv.key))
                .collect();
            self.queue.with_rng(|r| r.shuffle(&mut entries));
            for (fire, scope, name) in entries {
                loop {
                    // One schedule that cannot be handled (a corrupt record, a template the
                    // current binary refuses) must not stop every other schedule.
                    let (records, more) = match self.handle(&scope, &name, fire, now).await {
                        Ok(r) => r,
                        Err(e) if e.store_error().is_some() => return Err(e),
                        Err(e) => {
                            tracing::warn!(schedule = %name, error = %e, "cron schedule not handled");
                            break;
                        }
                    };
                    recorded.extend(records.into_iter().map(|r| (name.clone(), r)));
                    if !more {
                        break;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(recorded)
    }

    /// Handles up to [`TICKS_PER_TRANSACTION`] ticks of one schedule in one transaction.
    /// Returns the records and whether due ticks remain.
    async fn handle(
        &self,
        scope: &CronScope,
        name: &str,
        _seen_fire: i64,
        now: i64,
    ) -> Result<(Vec<TickRecord>, bool)> {
        self.queue
            .db()
            .transact(|tx, _| async move {
                // Serializable: a racing replica that handles the same tick conflicts here.
                let Some(schedule) = load_schedule(&tx, scope, name).await? else {
                    return Ok((Vec::new(), false));
                };
                if schedule.paused || schedule.next_fire > now {
                    return Ok((Vec::new(), false));
                }
                let parsed = parse_expression(&schedule.expression)?;
                let tz = parse_zone(&schedule.time_zone)?;
                // The due ticks: next_fire and every later one up to now.
                let mut due = vec![schedule.next_fire];
                while due.len() < TICKS_PER_TRANSACTION {
                    match next_after(&parsed, tz, *due.last().unwrap_or(&now)) {
                        Some(t) if t <= now => due.push(t),
                        _ => break,
                    }
                }
                let last_due = *due.last().unwrap_or(&schedule.next_fire);
                let following = next_after(&parsed, tz, last_due);
                let more = following.is_some_and(|t| t <= now);
                let mut next = schedule.clone();
                let mut records = Vec::with_capacity(due.len());
                for (i, &fire) in due.iter().enumerate() {
                    let is_latest = i + 1 == due.len() && !more;
                    let late = now - fire > schedule.misfire_grace_us;
                    let dropped = late && schedule.missed == MissedPolicy::Drop;
                    let outcome = if !is_latest || dropped {
                        TickOutcome::Coalesced
                    } else {
                        self.fire(&tx, &mut next, fire).await?
                    };
                    let record = TickRecord {
                        fire_time: fire,
                        outcome,
                        handled_at: now,
                    };
                    let value = serde_json::to_vec(&record).map_err(|e| Error::Corrupt {
                        what: "tick record".into(),
                        source: e,
                    })?;
                    tx.set(&keys::cron_tick(scope, name, fire), &value);
                    records.push(record);
                }
                tx.clear(&keys::cron_index(schedule.next_fire, scope, name));
                next.next_fire = following.unwrap_or(i64::MAX);
                next.last_fire = Some(last_due);
                save_schedule(&tx, scope, &next)?;
                Ok((records, more))
            })
            .await
    }

    async fn fire(
        &self,
        tx: &Transaction,
        schedule: &mut CronSchedule,
        fire: i64,
    ) -> Result<TickOutcome> {
        let (tenant, job) = match schedule.tenant {
            Some(t) => (t, schedule.template.clone()),
            None => (
                SYSTEM_TENANT,
                NewJob::new(
                    FANOUT_KIND,
                    serde_json::json!({
                        "schedule": schedule.name,
                        "fire_time": fire,
                        "template": schedule.template,
                    }),
                ),
            ),
        };
        if schedule.overlap == OverlapPolicy::Skip {
            if let Some(previous) = schedule.last_job {
                let keys = TenantKeys::new(tenant);
                let unfinished = load(tx, &keys, previous)
                    .await?
                    .is_some_and(|j: Job| !j.state.is_terminal());
                if unfinished {
                    return Ok(TickOutcome::Skipped {
                        previous: Some(previous),
                        refused: None,
                    });
                }
            }
        }
        let scope = CronScope::of(schedule.tenant);
        let id = derived_id(
            fire,
            &[
                scope.tag().as_bytes(),
                schedule.name.as_bytes(),
                &fire.to_be_bytes(),
            ],
        );
        let job = NewJob {
            run_at: None,
            ..job.id(id)
        };
        let enqueued = match self.queue.enqueue_in(tx, tenant, &job).await {
            Ok(e) => e,
            // A tenant at its queue limit loses this tick, recorded as such; the schedule
            // advances, and other schedules are not held up. Admission is checked before
            // anything of the job is written, so nothing of it is left in the transaction.
            Err(Error::Refused { limit, .. }) => {
                return Ok(TickOutcome::Skipped {
                    previous: None,
                    refused: Some(RefusedBy::of(limit)),
                });
            }
            Err(e) => return Err(e),
        };
        schedule.last_job = Some(enqueued.id);
        Ok(TickOutcome::Fired { job: enqueued.id })
    }

    /// Enqueues a system schedule's job for each of `tenants` (one page of the tenant
    /// directory), each under an id derived from (schedule, tick, tenant): calling it again for
    /// the same page, after a crash or a retry, enqueues nothing new. A tenant whose admission
    /// limits refuse its job is skipped and reported, so that one full tenant does not hold up
    /// the others' maintenance. The tenants' reads and enqueues run together (one page costs
    /// a few FoundationDB round trips, not a few per tenant).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad template; store errors.
    pub async fn fan_out(
        &self,
        schedule: &str,
        fire_time: i64,
        template: &NewJob,
        tenants: &[Uuid],
    ) -> Result<FanOut> {
        crate::queue::validate_new_job(template)?;
        // Each tenant once: concurrent enqueues of one job would both find it missing.
        let mut seen = HashSet::new();
        let tenants: Vec<Uuid> = tenants
            .iter()
            .copied()
            .filter(|&t| t != SYSTEM_TENANT && seen.insert(t))
            .collect();
        let tenants = &tenants;
        self.queue
            .db()
            .transact(|tx, _| async move {
                let tx = &tx;
                // Each enqueue reads and writes only its own tenant's keys (and its own entries
                // of the tenant indexes).
                let placed = try_join_all(tenants.iter().map(|&tenant| async move {
                    let id = derived_id(
                        fire_time,
                        &[
                            b"fanout",
                            schedule.as_bytes(),
                            &fire_time.to_be_bytes(),
                            tenant.as_bytes(),
                        ],
                    );
                    let job = NewJob {
                        run_at: None,
                        ..template.clone().id(id)
                    };
                    // A job already under its id (an earlier call's) is reported a duplicate,
                    // before anything is written. Admission is checked, and every record the
                    // enqueue reads decoded, before anything of the job is written too: a
                    // tenant skipped here leaves nothing.
                    match self.queue.enqueue_in(tx, tenant, &job).await {
                        Ok(e) if e.duplicate => Ok(Placed::Already),
                        Ok(_) => Ok(Placed::New),
                        Err(Error::Refused { limit, .. }) => {
                            Ok(Placed::Refused(RefusedBy::of(limit)))
                        }
                        Err(e @ Error::Corrupt { .. }) => Ok(Placed::Unreadable(e.to_string())),
                        Err(e) => Err(e),
                    }
                }))
                .await?;
                let mut out = FanOut::default();
                for (&tenant, placed) in tenants.iter().zip(placed) {
                    match placed {
                        Placed::New => out.enqueued += 1,
                        Placed::Refused(by) => out.refused.push((tenant, by)),
                        Placed::Unreadable(e) => out.unreadable.push((tenant, e)),
                        Placed::Already => {}
                    }
                }
                Ok(out)
            })
            .await
    }
}

async fn load_schedule(
    tx: &Transaction,
    scope: &CronScope,
    name: &str,
) -> Result<Option<CronSchedule>> {
    match tx.get(&keys::cron_schedule(scope, name), false).await? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                what: format!("schedule {name}"),
                source: e,
            }),
        None => Ok(None),
    }
}

fn save_schedule(tx: &Transaction, scope: &CronScope, s: &CronSchedule) -> Result<()> {
    let value = serde_json::to_vec(s).map_err(|e| Error::Corrupt {
        what: format!("schedule {}", s.name),
        source: e,
    })?;
    tx.set(&keys::cron_schedule(scope, &s.name), &value);
    if s.next_fire != i64::MAX && !s.paused {
        tx.set(&keys::cron_index(s.next_fire, scope, &s.name), b"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_and_zones_parse() {
        assert!(parse_expression("*/5 * * * *").is_ok());
        assert!(parse_expression("0 */5 * * * *").is_ok());
        assert!(parse_expression("@hourly").is_ok());
        assert!(matches!(
            parse_expression("every tuesday"),
            Err(Error::Invalid {
                field: "expression",
                ..
            })
        ));
        assert!(parse_zone("Europe/Berlin").is_ok());
        assert!(matches!(
            parse_zone("Mars/Olympus"),
            Err(Error::Invalid {
                field: "time_zone",
                ..
            })
        ));
    }

    #[test]
    fn ticks_follow_the_time_zone() {
        let s = parse_expression("0 9 * * *").unwrap();
        // 2026-01-15 00:00 UTC; 09:00 in Berlin (UTC+1 in winter) is 08:00 UTC.
        let start = Utc
            .with_ymd_and_hms(2026, 1, 15, 0, 0, 0)
            .unwrap()
            .timestamp_micros();
        let next = next_after(&s, parse_zone("Europe/Berlin").unwrap(), start).unwrap();
        assert_eq!(
            next,
            Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0)
                .unwrap()
                .timestamp_micros()
        );
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_id(1_000_000, &[b"s", b"1"]);
        assert_eq!(a, derived_id(1_000_000, &[b"s", b"1"]));
        assert_ne!(a, derived_id(1_000_000, &[b"s", b"2"]));
        assert_ne!(a, derived_id(1_000_000, &[b"s1", b""]));
        assert_eq!(a.get_version_num(), 7);
    }
}
