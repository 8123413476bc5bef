//! The oracle: what the simulation did and saw, and the invariants checked as results come
//! back. The store is the truth for the final checks (`check.rs`); the oracle is what those
//! checks compare it with.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use steward_queue::{
    ClaimRequest, Enqueued, Error, Heartbeat, JobState, Lease, NewJob, Outcome, TickOutcome,
    TickRecord,
};
use uuid::Uuid;

use super::{micros, Report};

/// When something happened: the round, the wall clock then, and the highest wall clock seen
/// so far (a lease ending after it cannot have been rescued by anyone).
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    pub(super) round: u64,
    pub(super) now: i64,
    pub(super) max_wall: i64,
}

/// How a lease ended by its holder's own report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The attempt counts (a retry).
    Counted,
    /// The attempt does not count (a snooze, a release).
    NotCounted,
    /// The job finished (completed, dead, cancelled).
    Terminal,
}

#[derive(Debug, Clone)]
pub(super) struct LeaseRec {
    pub(super) token: Uuid,
    pub(super) attempt: u32,
    pub(super) round: u64,
    /// The latest end the holder was told (claim, then heartbeats).
    pub(super) expires_at: i64,
    pub(super) end: Option<End>,
}

#[derive(Debug, Clone)]
pub(super) struct JobRec {
    pub(super) tenant: Uuid,
    pub(super) kind: String,
    pub(super) max_attempts: u32,
    pub(super) created_round: u64,
    pub(super) idem: Option<String>,
    pub(super) sup: Option<String>,
    /// Enqueued by a cron tick (not by a producer).
    pub(super) cron: bool,
    pub(super) leases: Vec<LeaseRec>,
    /// Tokens whose `complete` succeeded.
    pub(super) completed: BTreeSet<Uuid>,
    /// The terminal state some call reported (or an audit saw), and the round.
    pub(super) terminal: Option<(JobState, u64)>,
    /// `terminal`'s round is when it happened (a call reported it), not when an audit saw it.
    pub(super) terminal_exact: bool,
    /// The round a cancel found it running and flagged it.
    pub(super) flagged: Option<u64>,
    /// The job an enqueue reported superseded this one.
    pub(super) superseded_by: Option<Uuid>,
}

impl JobRec {
    fn new(tenant: Uuid, kind: String, max_attempts: u32, round: u64) -> Self {
        JobRec {
            tenant,
            kind,
            max_attempts,
            created_round: round,
            idem: None,
            sup: None,
            cron: false,
            leases: Vec::new(),
            completed: BTreeSet::new(),
            terminal: None,
            terminal_exact: false,
            flagged: None,
            superseded_by: None,
        }
    }

    fn lease_pos(&self, token: Uuid) -> Option<usize> {
        self.leases.iter().rposition(|l| l.token == token)
    }

    /// A later lease of this job was handed out in an earlier round than `round`.
    fn taken_over_before(&self, token: Uuid, round: u64) -> Option<&LeaseRec> {
        let i = self.lease_pos(token)?;
        self.leases[i + 1..].iter().find(|l| l.round < round)
    }
}

/// A cron schedule as the oracle knows it.
#[derive(Debug, Clone)]
pub(super) struct ScheduleRec {
    pub(super) tenant: Uuid,
    pub(super) kind: String,
    pub(super) max_attempts: u32,
}

#[derive(Debug, Default)]
pub(super) struct Oracle {
    pub(super) jobs: BTreeMap<Uuid, JobRec>,
    /// Job ids in the order they became known (for random picks).
    pub(super) order: Vec<Uuid>,
    /// (tenant, id) of enqueues answered as duplicates: these ids must never exist.
    pub(super) never: Vec<(Uuid, Uuid)>,
    /// Jobs created per (tenant, idempotency key), in order.
    pub(super) idem: BTreeMap<(Uuid, String), Vec<Uuid>>,
    /// Duplicate answers: (tenant, key, the id answered, round).
    pub(super) dup_answers: Vec<(Uuid, String, Uuid, u64)>,
    tokens: BTreeSet<Uuid>,
    /// Jobs a prune removed, and the round.
    pub(super) pruned: BTreeMap<Uuid, u64>,
    pub(super) schedules: BTreeMap<String, ScheduleRec>,
    /// Tick records as the replicas returned them: (schedule, fire time) -> (record, round).
    pub(super) ticks: BTreeMap<(String, i64), (TickRecord, u64)>,
    pub(super) violations: Vec<String>,
}

fn bad(v: &mut Vec<String>, round: u64, msg: String) {
    v.push(format!("round {round}: {msg}"));
}

/// Records that the job is `state`. `exact`: a call made it so in `round` (not merely saw it).
fn set_terminal(
    v: &mut Vec<String>,
    round: u64,
    id: Uuid,
    rec: &mut JobRec,
    state: JobState,
    exact: bool,
) {
    match rec.terminal {
        Some((s, r)) if s != state => bad(
            v,
            round,
            format!("job {id} was {s} (seen in round {r}) and is now reported {state}"),
        ),
        Some(_) => {}
        None => {
            rec.terminal = Some((state, round));
            rec.terminal_exact = exact;
        }
    }
}

impl Oracle {
    pub(super) fn violation(&mut self, round: u64, msg: String) {
        bad(&mut self.violations, round, msg);
    }

    pub(super) fn add_schedule(&mut self, name: &str, tenant: Uuid, kind: &str, max_attempts: u32) {
        self.schedules.insert(
            name.to_string(),
            ScheduleRec {
                tenant,
                kind: kind.to_string(),
                max_attempts,
            },
        );
    }

    /// A cron job first seen in the store.
    pub(super) fn learn_cron_job(
        &mut self,
        tenant: Uuid,
        id: Uuid,
        kind: &str,
        max_attempts: u32,
        round: u64,
    ) {
        let mut rec = JobRec::new(tenant, kind.to_string(), max_attempts, round);
        rec.cron = true;
        self.jobs.insert(id, rec);
        self.order.push(id);
    }

    /// The jobs an enqueue created (first pass over a round's enqueues: a concurrent enqueue
    /// in the same round may have superseded or deduplicated against them, in either order).
    pub(super) fn enqueue_created(
        &mut self,
        at: Moment,
        tenant: Uuid,
        jobs: &[NewJob],
        outs: &[Enqueued],
        retry: bool,
    ) {
        let r = at.round;
        let Oracle {
            jobs: recs,
            order,
            idem,
            violations: v,
            ..
        } = self;
        if jobs.len() != outs.len() {
            bad(
                v,
                r,
                format!("enqueue of {} jobs answered {}", jobs.len(), outs.len()),
            );
            return;
        }
        for (job, e) in jobs.iter().zip(outs) {
            let mine = job.id.unwrap_or_default();
            if e.duplicate {
                continue;
            }
            if e.id != mine {
                bad(
                    v,
                    r,
                    format!("enqueue of {mine} created a job with another id {}", e.id),
                );
                continue;
            }
            if let Some(existing) = recs.get(&mine) {
                // A client's retry with the same ids finds the job its first call made.
                let same = existing.tenant == tenant
                    && existing.kind == job.kind
                    && existing.created_round == r;
                if !(retry || same) || existing.tenant != tenant {
                    bad(v, r, format!("job {mine} created twice"));
                }
                continue;
            }
            let mut rec = JobRec::new(tenant, job.kind.clone(), job.max_attempts, r);
            rec.idem = job.idempotency_key.clone();
            rec.sup = job.supersede_key.clone();
            recs.insert(mine, rec);
            order.push(mine);
            if let Some(key) = &job.idempotency_key {
                idem.entry((tenant, key.clone())).or_default().push(mine);
            }
        }
    }

    /// An enqueue's duplicates and supersessions (second pass). Returns (duplicates,
    /// superseded).
    pub(super) fn enqueue_links(
        &mut self,
        at: Moment,
        tenant: Uuid,
        jobs: &[NewJob],
        outs: &[Enqueued],
        retry: bool,
    ) -> (u64, u64) {
        let r = at.round;
        let Oracle {
            jobs: recs,
            never,
            dup_answers,
            pruned,
            violations: v,
            ..
        } = self;
        let mut counts = (0, 0);
        for (job, e) in jobs.iter().zip(outs) {
            let mine = job.id.unwrap_or_default();
            if e.duplicate && e.id == mine {
                // A client's retry with the same ids, answered as a duplicate of the job its
                // other call made.
                if !retry || recs.get(&mine).is_none_or(|o| o.tenant != tenant) {
                    bad(
                        v,
                        r,
                        format!("enqueue of {mine} answered as a duplicate of itself"),
                    );
                }
                counts.0 += 1;
                continue;
            }
            if e.duplicate {
                counts.0 += 1;
                if !retry {
                    never.push((tenant, mine));
                }
                let Some(key) = &job.idempotency_key else {
                    bad(
                        v,
                        r,
                        format!("job {mine} without an idempotency key answered as duplicate"),
                    );
                    continue;
                };
                let same = recs
                    .get(&e.id)
                    .is_some_and(|o| o.tenant == tenant && o.idem.as_ref() == Some(key));
                if e.id == mine || !same {
                    bad(
                        v,
                        r,
                        format!(
                            "enqueue of {mine} (key {key}) answered duplicate of {}, which is not a job of this tenant with that key",
                            e.id
                        ),
                    );
                }
                if let Some(p) = pruned.get(&e.id).filter(|p| **p < r) {
                    bad(
                        v,
                        r,
                        format!(
                            "enqueue of {mine} answered duplicate of {}, pruned in round {p}",
                            e.id
                        ),
                    );
                }
                dup_answers.push((tenant, key.clone(), e.id, r));
                continue;
            }
            let Some(old) = e.superseded else {
                continue;
            };
            counts.1 += 1;
            let Some(o) = recs.get_mut(&old) else {
                bad(
                    v,
                    r,
                    format!("job {mine} superseded {old}, which nobody enqueued"),
                );
                continue;
            };
            if o.tenant != tenant || o.sup != job.supersede_key {
                bad(
                    v,
                    r,
                    format!("job {mine} superseded {old} of another tenant or key"),
                );
            }
            // Two calls of one logical request (same job id) may both say so.
            if let Some(first) = o.superseded_by.filter(|f| *f != mine) {
                bad(
                    v,
                    r,
                    format!("job {old} superseded twice (by {first} and {mine})"),
                );
            }
            o.superseded_by = Some(mine);
            set_terminal(v, r, old, o, JobState::Cancelled, true);
        }
        counts
    }

    /// A lease a claim handed out.
    pub(super) fn leased(&mut self, at: Moment, lease: &Lease, req: &ClaimRequest) {
        let r = at.round;
        let Oracle {
            jobs,
            order,
            tokens,
            pruned,
            violations: v,
            ..
        } = self;
        let id = lease.job_id;
        if !tokens.insert(lease.token) {
            bad(v, r, format!("token {} handed out twice", lease.token));
        }
        if lease.expires_at != at.now + micros(req.lease) {
            bad(
                v,
                r,
                format!(
                    "lease of job {id} ends at {} but was claimed at {} for {:?}",
                    lease.expires_at, at.now, req.lease
                ),
            );
        }
        if let Some(kinds) = &req.kinds {
            if !kinds.contains(&lease.kind) {
                bad(
                    v,
                    r,
                    format!(
                        "claim for kinds {kinds:?} got job {id} of kind {}",
                        lease.kind
                    ),
                );
            }
        }
        if let Some(p) = pruned.get(&id) {
            bad(
                v,
                r,
                format!("job {id} claimed after it was pruned in round {p}"),
            );
        }
        let rec = match jobs.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if !lease.kind.starts_with("cron.") {
                    bad(v, r, format!("claimed job {id} that nobody enqueued"));
                }
                order.push(id);
                let mut rec = JobRec::new(lease.tenant, lease.kind.clone(), lease.max_attempts, r);
                rec.cron = true;
                e.insert(rec)
            }
        };
        if rec.tenant != lease.tenant
            || rec.kind != lease.kind
            || rec.max_attempts != lease.max_attempts
        {
            bad(
                v,
                r,
                format!(
                    "lease of job {id} says tenant {} kind {} max {}, enqueued as {} {} {}",
                    lease.tenant,
                    lease.kind,
                    lease.max_attempts,
                    rec.tenant,
                    rec.kind,
                    rec.max_attempts
                ),
            );
        }
        if lease.attempt == 0 || lease.attempt > lease.max_attempts {
            bad(
                v,
                r,
                format!(
                    "job {id} leased for attempt {} of {}",
                    lease.attempt, lease.max_attempts
                ),
            );
        }
        if let Some((s, tr)) = rec.terminal {
            if tr <= r {
                bad(
                    v,
                    r,
                    format!("job {id} claimed again after it was {s} (round {tr})"),
                );
            }
        }
        if let Some(f) = rec.flagged {
            if f < r {
                bad(
                    v,
                    r,
                    format!("job {id} claimed again after a cancel flagged it in round {f}"),
                );
            }
        }
        let expected = match rec.leases.last() {
            None => 1,
            Some(prev) => {
                if prev.end.is_none() && prev.expires_at > at.max_wall {
                    bad(
                        v,
                        r,
                        format!(
                            "job {id} leased again while its lease {} was live until {} (the wall clock never passed {})",
                            prev.token, prev.expires_at, at.max_wall
                        ),
                    );
                }
                prev.attempt + u32::from(prev.end != Some(End::NotCounted))
            }
        };
        if lease.attempt != expected {
            bad(
                v,
                r,
                format!(
                    "job {id} leased for attempt {} but its history gives {expected} (leases: {:?})",
                    lease.attempt,
                    rec.leases
                        .iter()
                        .map(|l| (l.attempt, l.end))
                        .collect::<Vec<_>>()
                ),
            );
        }
        rec.leases.push(LeaseRec {
            token: lease.token,
            attempt: lease.attempt,
            round: r,
            expires_at: lease.expires_at,
            end: None,
        });
    }

    /// The lease record of a report, or a violation.
    fn lease_rec<'a>(
        jobs: &'a mut BTreeMap<Uuid, JobRec>,
        v: &mut Vec<String>,
        r: u64,
        lease: &Lease,
    ) -> Option<(&'a mut JobRec, usize)> {
        let Some(rec) = jobs.get_mut(&lease.job_id) else {
            bad(v, r, format!("report on unknown job {}", lease.job_id));
            return None;
        };
        let Some(i) = rec.lease_pos(lease.token) else {
            bad(
                v,
                r,
                format!(
                    "report on job {} with a token no claim handed out",
                    lease.job_id
                ),
            );
            return None;
        };
        Some((rec, i))
    }

    /// A report accepted (not a resend): its lease must not have been taken over before.
    fn accepted(v: &mut Vec<String>, r: u64, rec: &JobRec, lease: &Lease, what: &str) {
        if let Some(newer) = rec.taken_over_before(lease.token, r) {
            bad(
                v,
                r,
                format!(
                    "{what} of job {} under token {} (attempt {}) accepted although the job was leased again to token {} (attempt {}) in round {}",
                    lease.job_id, lease.token, lease.attempt, newer.token, newer.attempt, newer.round
                ),
            );
        }
    }

    pub(super) fn heartbeat_ok(
        &mut self,
        at: Moment,
        lease: &Lease,
        hb: &Heartbeat,
        extend: Duration,
        report: Report,
    ) {
        let r = at.round;
        let Oracle {
            jobs,
            violations: v,
            ..
        } = self;
        let Some((rec, i)) = Self::lease_rec(jobs, v, r, lease) else {
            return;
        };
        Self::accepted(v, r, rec, lease, "heartbeat");
        if hb.expires_at != at.now + micros(extend) {
            bad(
                v,
                r,
                format!(
                    "heartbeat of job {} extended to {} instead of now + {extend:?}",
                    lease.job_id, hb.expires_at
                ),
            );
        }
        if rec.leases[i].end.is_some() {
            bad(
                v,
                r,
                format!(
                    "heartbeat ({report:?}) of job {} accepted after its worker had reported",
                    lease.job_id
                ),
            );
        }
        rec.leases[i].expires_at = hb.expires_at;
        let flagged_before = rec.flagged.is_some_and(|f| f < r);
        let flagged = rec.flagged.is_some_and(|f| f <= r);
        if flagged_before && !hb.cancel_requested {
            bad(
                v,
                r,
                format!(
                    "heartbeat of job {} did not pass on the cancellation asked for in round {:?}",
                    lease.job_id, rec.flagged
                ),
            );
        }
        if hb.cancel_requested && !flagged {
            bad(
                v,
                r,
                format!(
                    "heartbeat of job {} reports a cancellation nobody asked for",
                    lease.job_id
                ),
            );
        }
    }

    pub(super) fn completed(&mut self, at: Moment, lease: &Lease, report: Report) {
        let r = at.round;
        let Oracle {
            jobs,
            violations: v,
            ..
        } = self;
        let Some((rec, i)) = Self::lease_rec(jobs, v, r, lease) else {
            return;
        };
        if report == Report::Resend {
            if !rec.completed.contains(&lease.token) {
                bad(
                    v,
                    r,
                    format!(
                        "resent complete of job {} succeeded but the first did not",
                        lease.job_id
                    ),
                );
            }
            return;
        }
        Self::accepted(v, r, rec, lease, "complete");
        if rec.leases[i].end.is_some() {
            bad(
                v,
                r,
                format!(
                    "complete of job {} accepted after the worker had already reported {:?}",
                    lease.job_id, rec.leases[i].end
                ),
            );
        }
        rec.leases[i].end = Some(End::Terminal);
        rec.completed.insert(lease.token);
        if rec.completed.len() > 1 {
            bad(
                v,
                r,
                format!(
                    "job {} completed twice, under tokens {:?}",
                    lease.job_id, rec.completed
                ),
            );
        }
        set_terminal(v, r, lease.job_id, rec, JobState::Completed, true);
    }

    pub(super) fn failed(
        &mut self,
        at: Moment,
        lease: &Lease,
        outcome: &Outcome,
        state: JobState,
        report: Report,
    ) {
        let r = at.round;
        let Oracle {
            jobs,
            violations: v,
            ..
        } = self;
        let Some((rec, i)) = Self::lease_rec(jobs, v, r, lease) else {
            return;
        };
        if report == Report::Resend {
            // Answered from the job's marker: nothing is written, the state is today's.
            if state.is_terminal() {
                set_terminal(v, r, lease.job_id, rec, state, false);
            }
            return;
        }
        Self::accepted(v, r, rec, lease, "fail");
        if rec.leases[i].end.is_some() {
            bad(
                v,
                r,
                format!(
                    "fail of job {} accepted after the worker had already reported",
                    lease.job_id
                ),
            );
        }
        let expected = match outcome {
            Outcome::Retry { delay, .. } => {
                if lease.attempt >= lease.max_attempts {
                    JobState::Dead
                } else if *delay == Some(Duration::ZERO) {
                    JobState::Queued
                } else {
                    JobState::Scheduled
                }
            }
            Outcome::Fail { .. } => JobState::Dead,
            Outcome::Snooze { until } => {
                if *until <= at.now {
                    JobState::Queued
                } else {
                    JobState::Scheduled
                }
            }
            Outcome::Cancel { .. } => JobState::Cancelled,
        };
        let flagged_before = rec.flagged.is_some_and(|f| f < r);
        let flagged = rec.flagged.is_some_and(|f| f <= r);
        let fine = if flagged_before {
            state == JobState::Cancelled
        } else {
            state == expected || (flagged && state == JobState::Cancelled)
        };
        if !fine {
            bad(
                v,
                r,
                format!(
                    "fail of job {} (attempt {} of {}) with {outcome:?} left it {state}, expected {expected}{}",
                    lease.job_id,
                    lease.attempt,
                    lease.max_attempts,
                    if flagged { " or cancelled" } else { "" }
                ),
            );
        }
        rec.leases[i].end = Some(if state.is_terminal() {
            End::Terminal
        } else if matches!(outcome, Outcome::Snooze { .. }) {
            End::NotCounted
        } else {
            End::Counted
        });
        if state.is_terminal() {
            set_terminal(v, r, lease.job_id, rec, state, true);
        }
    }

    pub(super) fn released(&mut self, at: Moment, lease: &Lease) {
        let r = at.round;
        let Oracle {
            jobs,
            violations: v,
            ..
        } = self;
        let Some((rec, i)) = Self::lease_rec(jobs, v, r, lease) else {
            return;
        };
        Self::accepted(v, r, rec, lease, "release");
        rec.leases[i].end = Some(End::NotCounted);
        if rec.flagged.is_some_and(|f| f < r) {
            rec.leases[i].end = Some(End::Terminal);
            set_terminal(v, r, lease.job_id, rec, JobState::Cancelled, true);
        }
    }

    /// A report refused with `LeaseLost`: only a lease that may have expired and been rescued,
    /// or was taken over, can be lost.
    pub(super) fn lease_lost(&mut self, at: Moment, lease: &Lease, what: &str, report: Report) {
        let r = at.round;
        let Oracle {
            jobs,
            violations: v,
            ..
        } = self;
        let Some((rec, i)) = Self::lease_rec(jobs, v, r, lease) else {
            return;
        };
        if report == Report::Resend && what == "complete" {
            bad(
                v,
                r,
                format!(
                    "a resent complete of job {} (it succeeded before) got LeaseLost: completion is not idempotent",
                    lease.job_id
                ),
            );
            return;
        }
        let l = &rec.leases[i];
        if l.end.is_none() && l.expires_at > at.max_wall {
            bad(
                v,
                r,
                format!(
                    "{what} of job {} got LeaseLost although its lease was live: it ends at {} and the wall clock never passed {}",
                    lease.job_id, l.expires_at, at.max_wall
                ),
            );
        }
    }

    pub(super) fn not_found(&mut self, at: Moment, id: Uuid, what: &str) {
        let r = at.round;
        match self.pruned.get(&id) {
            // A prune in the same round may have committed first.
            Some(p) if *p <= r => {}
            _ => self.violation(
                r,
                format!("{what} of job {id} got NotFound but the job was never pruned"),
            ),
        }
    }

    pub(super) fn cancelled(
        &mut self,
        at: Moment,
        _tenant: Uuid,
        id: Uuid,
        res: &Result<JobState, Error>,
    ) {
        let r = at.round;
        let Oracle {
            jobs,
            pruned,
            violations: v,
            ..
        } = self;
        match res {
            Ok(state) => {
                let Some(rec) = jobs.get_mut(&id) else {
                    bad(v, r, format!("cancelled unknown job {id}"));
                    return;
                };
                match state {
                    JobState::Running => {
                        rec.flagged = Some(rec.flagged.map_or(r, |f| f.min(r)));
                    }
                    JobState::Cancelled | JobState::Completed | JobState::Dead => {
                        // Maybe it already was: not necessarily this call's doing.
                        set_terminal(v, r, id, rec, *state, false);
                        // After `commit_unknown_result` the call answers the job's state when
                        // it retried: an attempt that flagged a running job, whose worker then
                        // reported (and so ended it cancelled), answers `cancelled`.
                        if *state == JobState::Cancelled
                            && rec.leases.iter().any(|l| l.end.is_none())
                        {
                            rec.flagged = Some(rec.flagged.map_or(r, |f| f.min(r)));
                        }
                    }
                    s => bad(v, r, format!("cancel of job {id} left it {s}")),
                }
            }
            Err(Error::NotFound(i)) if *i == id && pruned.get(&id).is_some_and(|p| *p <= r) => {}
            Err(e) => bad(v, r, format!("cancel of job {id} failed: {e}")),
        }
    }

    /// Tick records a replica returned: no tick may be returned twice (by one replica or by
    /// two), and each fired job becomes known.
    pub(super) fn ticked(&mut self, at: Moment, records: &[(String, TickRecord)]) {
        let r = at.round;
        for (name, rec) in records {
            match self.ticks.entry((name.clone(), rec.fire_time)) {
                Entry::Occupied(e) => {
                    let (first, round) = e.get();
                    let msg = format!(
                        "tick {name}@{} handled twice: {:?} in round {round}, then {:?}",
                        rec.fire_time, first.outcome, rec.outcome
                    );
                    self.violation(r, msg);
                    continue;
                }
                Entry::Vacant(e) => {
                    e.insert((*rec, r));
                }
            }
            let TickOutcome::Fired { job } = rec.outcome else {
                continue;
            };
            let Some(s) = self.schedules.get(name).cloned() else {
                self.violation(r, format!("tick of unknown schedule {name}"));
                continue;
            };
            match self.jobs.entry(job) {
                Entry::Occupied(e) => {
                    let msg = format!(
                        "tick {name}@{} fired job {job}, which existed since round {}",
                        rec.fire_time,
                        e.get().created_round
                    );
                    self.violation(r, msg);
                }
                Entry::Vacant(e) => {
                    let mut j = JobRec::new(s.tenant, s.kind.clone(), s.max_attempts, r);
                    j.cron = true;
                    e.insert(j);
                    self.order.push(job);
                }
            }
        }
    }
}
