//! Checks that read the store as the truth: the audit of every tenant's jobs against the
//! oracle, the cron tick records against the cron expressions, and the fairness phase.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use steward_queue::{
    parse_expression, CancelReason, ClaimRequest, DeadReason, Job, JobState, ListFilter,
    MissedPolicy, NewJob, OverlapPolicy, RefusedBy, Scheduler, TickOutcome, DEFAULT_MISFIRE_GRACE,
};
use uuid::Uuid;

use super::oracle::End;
use super::{list_all, list_filtered, micros, random_uuid, short, Op, World, NODES};

/// Claim rounds a small tenant may wait for its first claim, per tenant with runnable work:
/// with equal weights a fair claim picks each such tenant with probability about 1/T, so the
/// chance of waiting more than 20·T rounds is about e^-20. A queue that serves the flood in
/// order makes small tenants wait for the whole flood (`FLOOD` rounds).
const FAIRNESS_ROUNDS_PER_TENANT: usize = 20;
/// Jobs the flooding tenant enqueues (more than any bound, so it floods throughout).
const FLOOD: usize = 400;
/// Jobs one round can enqueue to one tenant: two producers, five jobs each, each sent twice.
/// Admission control counts without a conflict, so this many can pass a limit at once.
const ROUND_OVERSHOOT: u64 = 20;
/// Rounds of the trickle phase.
const TRICKLE_ROUNDS: usize = 40;

impl World {
    /// Every tenant's jobs against the counters, the state index and the oracle. `settled`:
    /// after a drain, every job must be terminal.
    pub(super) async fn audit(&mut self, settled: bool) {
        self.trace(format!("r{} audit settled={settled}", self.round));
        let round = self.round;
        for tenant in self.all_tenants.clone() {
            let jobs = match list_all(&self.truth, tenant).await {
                Ok(j) => j,
                Err(e) => return self.violation(e),
            };
            let mut tally: BTreeMap<JobState, i64> =
                JobState::ALL.iter().map(|s| (*s, 0)).collect();
            for j in &jobs {
                *tally.entry(j.state).or_default() += 1;
            }
            match self.truth.counts(tenant).await {
                Ok(counts) if counts == tally => {}
                Ok(counts) => self.violation(format!(
                    "tenant {tenant}: counters {counts:?} disagree with the records {tally:?}"
                )),
                Err(e) => self.violation(format!("counts failed: {e}")),
            }
            for state in JobState::ALL {
                let filter = ListFilter {
                    state: Some(state),
                    ..ListFilter::default()
                };
                let listed: BTreeSet<Uuid> = match list_filtered(&self.truth, tenant, &filter).await
                {
                    Ok(j) => j.into_iter().map(|j| j.id).collect(),
                    Err(e) => return self.violation(e),
                };
                let records: BTreeSet<Uuid> = jobs
                    .iter()
                    .filter(|j| j.state == state)
                    .map(|j| j.id)
                    .collect();
                if listed != records {
                    self.violation(format!(
                        "tenant {tenant}: the {state} index lists {:?}, the records say {:?}",
                        listed.difference(&records).collect::<Vec<_>>(),
                        records.difference(&listed).collect::<Vec<_>>()
                    ));
                }
            }
            self.audit_limits(tenant, &jobs);
            let present: BTreeSet<Uuid> = jobs.iter().map(|j| j.id).collect();
            for job in &jobs {
                self.audit_job(job, settled);
            }
            // No job lost: everything enqueued exists, unless a prune removed it.
            let lost: Vec<Uuid> = self
                .oracle
                .jobs
                .iter()
                .filter(|(id, rec)| {
                    rec.tenant == tenant
                        && !present.contains(id)
                        && !self.oracle.pruned.contains_key(id)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                let rec = &self.oracle.jobs[&id];
                let msg = format!(
                    "job {id} (tenant {tenant}, kind {}, enqueued in round {}) is lost: not in the store and never pruned",
                    rec.kind, rec.created_round
                );
                self.violation(msg);
            }
            let ghosts: Vec<Uuid> = self
                .oracle
                .never
                .iter()
                .filter(|(t, id)| *t == tenant && present.contains(id))
                .map(|(_, id)| *id)
                .collect();
            for id in ghosts {
                self.violation(format!(
                    "job {id} exists although its enqueue was answered as a duplicate"
                ));
            }
        }
        // Exactly-once effects: each job's write, made in its completing transaction, happened
        // once for a completed job and never for any other (pruned jobs too).
        match super::effects(self.truth.db()).await {
            Ok(effects) => {
                let mut msgs = Vec::new();
                for (id, rec) in &self.oracle.jobs {
                    let n = effects.get(id).copied().unwrap_or(0);
                    if n != rec.completed.len() as i64 {
                        msgs.push(format!(
                            "job {id}: its completion effect happened {n} times; completes that succeeded: {}",
                            rec.completed.len()
                        ));
                    }
                }
                for id in effects
                    .keys()
                    .filter(|id| !self.oracle.jobs.contains_key(id))
                {
                    msgs.push(format!("an effect for job {id}, which nobody enqueued"));
                }
                for m in msgs {
                    self.violation(m);
                }
            }
            Err(e) => self.violation(e),
        }
        // Idempotency: a key holds one job at a time; a later job may reuse it only after the
        // earlier one was pruned.
        let mut msgs = Vec::new();
        for ((tenant, key), ids) in &self.oracle.idem {
            for pair in ids.windows(2) {
                let later = &self.oracle.jobs[&pair[1]];
                // A prune and an enqueue in one round are serialized by the store: the
                // enqueue saw the key free only if the prune committed first.
                match self.oracle.pruned.get(&pair[0]) {
                    Some(p) if *p <= later.created_round => {}
                    _ => msgs.push(format!(
                        "tenant {tenant}: idempotency key {key} made two jobs, {} and {} (round {}), while the first existed",
                        pair[0], pair[1], later.created_round
                    )),
                }
            }
        }
        // A duplicate answer names the job that held the key at some moment of its round:
        // enqueued by then, not pruned before, and not replaced before (a prune and a new
        // enqueue in the same round may commit before or after the duplicate's).
        for (tenant, key, answered, r) in &self.oracle.dup_answers {
            let ids = self
                .oracle
                .idem
                .get(&(*tenant, key.clone()))
                .map_or(&[][..], Vec::as_slice);
            let pos = ids.iter().position(|id| id == answered);
            let held_then = pos.is_some_and(|i| {
                let created = self.oracle.jobs[&ids[i]].created_round;
                let pruned = self.oracle.pruned.get(&ids[i]).copied();
                let replaced = ids
                    .get(i + 1)
                    .map(|next| self.oracle.jobs[next].created_round);
                created <= *r && pruned.is_none_or(|p| p >= *r) && replaced.is_none_or(|n| n >= *r)
            });
            if !held_then {
                msgs.push(format!(
                    "round {r}: duplicate enqueue of key {key} answered {answered}, which did not hold the key then (the key's jobs: {ids:?})"
                ));
            }
        }
        for m in msgs {
            self.violation(m);
        }
        self.trace(format!("r{round} audit done"));
    }

    /// A tenant's limits: never more running jobs than `max_running`, each holding its own
    /// slot; unfinished jobs above `max_queued` (or their bytes above `max_queued_bytes`) by
    /// no more than one round of concurrent enqueues can overshoot (admission reads the
    /// counts without a conflict, by design).
    fn audit_limits(&mut self, tenant: Uuid, jobs: &[Job]) {
        let Some(cfg) = self.tenant_cfg.get(&tenant).cloned() else {
            return;
        };
        let mut msgs = Vec::new();
        let running: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .collect();
        if let Some(max) = cfg.max_running {
            let slots: BTreeSet<Option<u32>> = running.iter().map(|j| j.slot).collect();
            let bad_slot = running.iter().any(|j| j.slot.is_none_or(|s| s >= max));
            if running.len() > max as usize || slots.len() != running.len() || bad_slot {
                msgs.push(format!(
                    "tenant {tenant}: max_running {max} but {} jobs run, in slots {:?}",
                    running.len(),
                    running.iter().map(|j| (j.id, j.slot)).collect::<Vec<_>>()
                ));
            }
        }
        let unfinished: Vec<&Job> = jobs.iter().filter(|j| !j.state.is_terminal()).collect();
        if let Some(max) = cfg.max_queued {
            if unfinished.len() as u64 > max + ROUND_OVERSHOOT {
                msgs.push(format!(
                    "tenant {tenant}: max_queued {max} but {} jobs are unfinished",
                    unfinished.len()
                ));
            }
        }
        if let Some(max) = cfg.max_queued_bytes {
            let bytes: u64 = unfinished.iter().map(|j| j.args_bytes).sum();
            if bytes > max + ROUND_OVERSHOOT * 64 {
                msgs.push(format!(
                    "tenant {tenant}: max_queued_bytes {max} but unfinished jobs hold {bytes}"
                ));
            }
        }
        for m in msgs {
            self.violation(m);
        }
    }

    fn audit_job(&mut self, j: &Job, settled: bool) {
        let id = j.id;
        let mut msgs = Vec::new();
        // The record's own consistency.
        if (j.state == JobState::Running) != j.lease.is_some() {
            msgs.push(format!("job {id} is {} with lease {:?}", j.state, j.lease));
        }
        if j.state.is_terminal() != j.finished_at.is_some() {
            msgs.push(format!(
                "job {id} is {} with finished_at {:?}",
                j.state, j.finished_at
            ));
        }
        if (j.state == JobState::Dead) != j.dead_reason.is_some() {
            msgs.push(format!(
                "job {id} is {} with dead_reason {:?}",
                j.state, j.dead_reason
            ));
        }
        if j.state == JobState::Cancelled && j.cancel_reason.is_none() {
            msgs.push(format!("job {id} is cancelled without a reason"));
        }
        if j.attempt > j.max_attempts {
            msgs.push(format!(
                "job {id} ran {} attempts of {}",
                j.attempt, j.max_attempts
            ));
        }
        if settled && !j.state.is_terminal() {
            msgs.push(format!(
                "job {id} is still {} after the drain (run_at {}, lease {:?})",
                j.state, j.run_at, j.lease
            ));
        }
        // `dead` only after max attempts.
        match j.dead_reason {
            Some(DeadReason::MaxAttempts | DeadReason::LeaseExpiredTooOften)
                if j.attempt != j.max_attempts =>
            {
                msgs.push(format!(
                    "job {id} is dead ({:?}) after attempt {} of {}",
                    j.dead_reason, j.attempt, j.max_attempts
                ));
            }
            Some(DeadReason::FailedPermanently) if j.attempt == 0 => {
                msgs.push(format!("job {id} failed permanently without running"));
            }
            _ => {}
        }
        if j.kind.starts_with("cron.") && !self.oracle.jobs.contains_key(&id) {
            // A tick whose commit reported `commit_unknown_result` after applying: its retry
            // found the tick handled and returned nothing, so no replica told us about this
            // job. `check_cron` holds it against the tick records.
            self.oracle
                .learn_cron_job(j.tenant, id, &j.kind, j.max_attempts, self.round);
        }
        let Some(rec) = self.oracle.jobs.get_mut(&id) else {
            msgs.push(format!(
                "job {id} (kind {}) is in the store but nobody enqueued it",
                j.kind
            ));
            for m in msgs {
                self.violation(m);
            }
            return;
        };
        if rec.tenant != j.tenant || rec.kind != j.kind || rec.max_attempts != j.max_attempts {
            msgs.push(format!("job {id} is not the job that was enqueued: {j:?}"));
        }
        match rec.terminal {
            Some((s, r)) if s != j.state => msgs.push(format!(
                "job {id} was reported {s} in round {r} but is {} now",
                j.state
            )),
            None if j.state.is_terminal() => rec.terminal = Some((j.state, self.round)),
            _ => {}
        }
        // Completed exactly once, under the token whose `complete` succeeded.
        if j.state == JobState::Completed {
            let ok = rec.completed.len() == 1
                && j.ended_token.is_some_and(|t| rec.completed.contains(&t));
            if !ok {
                msgs.push(format!(
                    "job {id} is completed under token {:?}, but the completes that succeeded were {:?}",
                    j.ended_token, rec.completed
                ));
            }
            let by = rec.leases.iter().find(|l| Some(l.token) == j.ended_token);
            if by.is_some_and(|l| l.attempt != j.attempt) {
                msgs.push(format!(
                    "job {id} completed by attempt {:?} but records attempt {}",
                    by.map(|l| l.attempt),
                    j.attempt
                ));
            }
        } else if !rec.completed.is_empty() {
            msgs.push(format!(
                "job {id} is {} although complete succeeded under {:?}",
                j.state, rec.completed
            ));
        }
        // Running: under the latest lease handed out.
        if let Some(l) = &j.lease {
            if rec.leases.last().map(|x| x.token) != Some(l.token) {
                msgs.push(format!(
                    "job {id} runs under token {} but the latest claim handed out {:?}",
                    l.token,
                    rec.leases.last().map(|x| x.token)
                ));
            }
        }
        // Dead from a lost lease: its last lease ended without a report.
        if j.dead_reason == Some(DeadReason::LeaseExpiredTooOften)
            && rec.leases.last().is_some_and(|l| l.end.is_some())
        {
            msgs.push(format!(
                "job {id} is dead of expired leases but its last worker reported {:?}",
                rec.leases.last().map(|l| l.end)
            ));
        }
        if j.dead_reason == Some(DeadReason::MaxAttempts)
            && rec
                .leases
                .last()
                .is_none_or(|l| l.end != Some(End::Terminal))
        {
            msgs.push(format!(
                "job {id} is dead of max attempts but no worker's retry ended it"
            ));
        }
        // Superseded exactly when an enqueue said so.
        let superseded = j.cancel_reason == Some(CancelReason::Superseded);
        if superseded != rec.superseded_by.is_some()
            || (superseded && j.superseded_by != rec.superseded_by)
        {
            msgs.push(format!(
                "job {id}: superseded_by {:?} (reason {:?}) but the enqueue answers said {:?}",
                j.superseded_by, j.cancel_reason, rec.superseded_by
            ));
        }
        for m in msgs {
            self.violation(m);
        }
    }

    /// Every schedule's tick records: exactly the cron expression's ticks from its creation,
    /// gap-free, each recorded once as fired, skipped or coalesced by its policies; each fired
    /// tick's job exists once.
    pub(super) async fn check_cron(&mut self) {
        let now = self.now();
        for s in self.schedules.clone() {
            let scheduler = Scheduler::new(&self.truth);
            let records = match scheduler.ticks(Some(s.tenant), &s.name).await {
                Ok(r) => r,
                Err(e) => return self.violation(format!("ticks failed: {e}")),
            };
            let stored = match scheduler.get(Some(s.tenant), &s.name).await {
                Ok(Some(x)) => x,
                Ok(None) => return self.violation(format!("schedule {} is gone", s.name)),
                Err(e) => return self.violation(format!("schedule get failed: {e}")),
            };
            let parsed = match parse_expression(&s.expression) {
                Ok(p) => p,
                Err(e) => return self.violation(format!("bad expression: {e}")),
            };
            let Some(start) = Utc.timestamp_micros(s.created_at).single() else {
                return self.violation("bad creation time".to_string());
            };
            let mut expected = parsed.after(&start).map(|t| t.timestamp_micros());
            let mut msgs = Vec::new();
            for (i, rec) in records.iter().enumerate() {
                let e = expected.next();
                if e != Some(rec.fire_time) {
                    msgs.push(format!(
                        "schedule {}: tick record #{i} is for {} but the expression's next tick is {e:?}: ticks were skipped or recorded twice",
                        s.name, rec.fire_time
                    ));
                    break;
                }
            }
            let next = expected.next();
            if next != Some(stored.next_fire) {
                msgs.push(format!(
                    "schedule {}: next fire {} but the tick after the last record is {next:?}",
                    s.name, stored.next_fire
                ));
            }
            if let (Some(n), Some(w)) = (next, self.last_tick_wall) {
                if n <= w {
                    msgs.push(format!(
                        "schedule {}: tick {n} was due at the last tick round ({w}) but was not recorded",
                        s.name
                    ));
                }
            }
            // Each record against the policies, the replicas' answers and the jobs.
            let jobs = match list_all(&self.truth, s.tenant).await {
                Ok(j) => j,
                Err(e) => return self.violation(e),
            };
            let by_id: BTreeMap<Uuid, &Job> = jobs.iter().map(|j| (j.id, j)).collect();
            let mut fired: Vec<Uuid> = Vec::new();
            let grace = micros(DEFAULT_MISFIRE_GRACE);
            for (i, rec) in records.iter().enumerate() {
                let last_of_batch = records
                    .get(i + 1)
                    .is_none_or(|n| n.handled_at != rec.handled_at);
                let late = rec.handled_at - rec.fire_time > grace;
                if rec.handled_at < rec.fire_time {
                    msgs.push(format!(
                        "schedule {}: tick {} handled early, at {}",
                        s.name, rec.fire_time, rec.handled_at
                    ));
                }
                let coalesced = rec.outcome == TickOutcome::Coalesced;
                let should_coalesce = !last_of_batch || (late && s.missed == MissedPolicy::Drop);
                if coalesced != should_coalesce {
                    msgs.push(format!(
                        "schedule {} ({:?}): tick {} handled at {} is {:?}, but it was {}the latest due then{}",
                        s.name,
                        s.missed,
                        rec.fire_time,
                        rec.handled_at,
                        rec.outcome,
                        if last_of_batch { "" } else { "not " },
                        if late { " and late" } else { "" }
                    ));
                }
                if let Some((returned, r)) = self.oracle.ticks.get(&(s.name.clone(), rec.fire_time))
                {
                    if returned != rec {
                        msgs.push(format!(
                            "schedule {}: replica returned {returned:?} in round {r} but the store has {rec:?}",
                            s.name
                        ));
                    }
                }
                match rec.outcome {
                    TickOutcome::Fired { job } => {
                        if fired.contains(&job) {
                            msgs.push(format!("schedule {}: job {job} fired twice", s.name));
                        }
                        self.check_overlap(
                            &s.name,
                            s.overlap,
                            rec.fire_time,
                            fired.last(),
                            &mut msgs,
                        );
                        fired.push(job);
                        match by_id.get(&job) {
                            Some(j) => {
                                if j.kind != s.kind || j.created_at != rec.handled_at {
                                    msgs.push(format!(
                                        "schedule {}: tick {} fired job {job} of kind {} created at {}, expected kind {} at {}",
                                        s.name, rec.fire_time, j.kind, j.created_at, s.kind, rec.handled_at
                                    ));
                                }
                            }
                            None if self.oracle.pruned.contains_key(&job) => {}
                            None => msgs.push(format!(
                                "schedule {}: tick {} fired job {job}, which does not exist",
                                s.name, rec.fire_time
                            )),
                        }
                    }
                    TickOutcome::Skipped {
                        previous: None,
                        refused,
                    } => {
                        // Refused by admission control: only for a limit the tenant has.
                        let cfg = self.tenant_cfg.get(&s.tenant).cloned().unwrap_or_default();
                        let has_limit = match refused {
                            Some(RefusedBy::MaxQueued) => cfg.max_queued.is_some(),
                            Some(RefusedBy::MaxQueuedBytes) => cfg.max_queued_bytes.is_some(),
                            None => false,
                        };
                        if !has_limit {
                            msgs.push(format!(
                                "schedule {}: tick {} skipped as refused by {refused:?}, but the tenant's settings are {cfg:?}",
                                s.name, rec.fire_time
                            ));
                        }
                    }
                    TickOutcome::Skipped {
                        previous: Some(previous),
                        ..
                    } => {
                        if s.overlap != OverlapPolicy::Skip || fired.last() != Some(&previous) {
                            msgs.push(format!(
                                "schedule {} ({:?}): tick {} skipped for {previous}, the last fired job is {:?}",
                                s.name, s.overlap, rec.fire_time, fired.last()
                            ));
                        }
                        self.check_skip(&s.name, rec.fire_time, previous, &mut msgs);
                    }
                    TickOutcome::Coalesced => {}
                }
            }
            // No cron job without its tick.
            let fired_set: BTreeSet<Uuid> = fired.iter().copied().collect();
            for j in jobs.iter().filter(|j| j.kind == s.kind) {
                if !fired_set.contains(&j.id) {
                    msgs.push(format!(
                        "schedule {}: job {} of its kind has no fired tick",
                        s.name, j.id
                    ));
                }
            }
            self.trace(format!(
                "cron {}: {} records, {} fired, next {} (now {now})",
                s.name,
                records.len(),
                fired.len(),
                stored.next_fire
            ));
            for m in msgs {
                self.violation(m);
            }
        }
    }

    /// Overlap `Skip`: a tick may fire only if the previous fired job had finished. Known for
    /// sure when the previous job was leased, or reported finished, in a later round than the
    /// one in which a replica returned this tick.
    fn check_overlap(
        &self,
        name: &str,
        overlap: OverlapPolicy,
        fire_time: i64,
        previous: Option<&Uuid>,
        msgs: &mut Vec<String>,
    ) {
        if overlap != OverlapPolicy::Skip {
            return;
        }
        let (Some(prev), Some((_, r))) = (
            previous,
            self.oracle.ticks.get(&(name.to_string(), fire_time)),
        ) else {
            return;
        };
        let Some(p) = self.oracle.jobs.get(prev) else {
            return;
        };
        let leased_later = p.leases.iter().any(|l| l.round > *r);
        let finished_later = p.terminal_exact && p.terminal.is_some_and(|(_, t)| t > *r);
        if leased_later || finished_later {
            msgs.push(format!(
                "schedule {name}: tick {fire_time} fired in round {r} while the previous job {prev} was unfinished (it ran or finished later)"
            ));
        }
    }

    /// A skipped tick's previous job must have been unfinished: known for sure when a call
    /// reported it finished in an earlier round than the one that returned the tick.
    fn check_skip(&self, name: &str, fire_time: i64, previous: Uuid, msgs: &mut Vec<String>) {
        let Some((_, r)) = self.oracle.ticks.get(&(name.to_string(), fire_time)) else {
            return;
        };
        let Some(p) = self.oracle.jobs.get(&previous) else {
            return;
        };
        if let Some((s, t)) = p.terminal {
            // A terminal state learned by an audit carries the audit's round, never earlier
            // than the truth, so this cannot accuse a correct skip.
            if t < *r {
                msgs.push(format!(
                    "schedule {name}: tick {fire_time} skipped in round {r} for job {previous}, which was {s} since round {t}"
                ));
            }
        }
    }

    /// One tenant floods (priority 0), a few small tenants enqueue two jobs each (priority
    /// 200); single-job claims follow. Every small tenant must get its first claim within
    /// `FAIRNESS_ROUNDS_PER_TENANT` claim rounds per tenant with runnable work, and, being
    /// fresh (its queue was empty), within one round per tenant with runnable work.
    pub(super) async fn fairness(&mut self) {
        self.trace("phase: fairness");
        let flood = random_uuid(&mut self.rng);
        let small: Vec<Uuid> = (0..self.rng.usize(3..=6))
            .map(|_| random_uuid(&mut self.rng))
            .collect();
        self.all_tenants.push(flood);
        self.all_tenants.extend(small.iter().copied());
        let mut ops = Vec::new();
        for chunk in 0..FLOOD / 100 {
            let jobs = (0..100)
                .map(|i| {
                    NewJob::new("flood", json!({ "i": chunk * 100 + i }))
                        .id(self.new_job_id())
                        .priority(0)
                })
                .collect();
            ops.push(Op::Enqueue {
                node: 0,
                tenant: flood,
                jobs,
                retry: false,
            });
        }
        for op in ops {
            self.round += 1;
            let pairs = self.run_ops(vec![op]).await;
            self.apply_all(pairs);
        }
        self.round += 1;
        let ops: Vec<Op> = small
            .iter()
            .map(|&t| Op::Enqueue {
                node: self.rng.usize(0..NODES),
                tenant: t,
                jobs: (0..2)
                    .map(|i| {
                        NewJob::new("small", json!({ "i": i }))
                            .id(self.new_job_id())
                            .priority(200)
                    })
                    .collect(),
                retry: false,
            })
            .collect();
        let pairs = self.run_ops(ops).await;
        self.apply_all(pairs);
        if !self.oracle.violations.is_empty() {
            return;
        }
        let runnable = small.len() + 1;
        let bound = FAIRNESS_ROUNDS_PER_TENANT * runnable;
        let healthy = self.sim_workers;
        let mut first: BTreeMap<Uuid, usize> = BTreeMap::new();
        let mut rounds = 0;
        while rounds < bound && first.len() < small.len() {
            rounds += 1;
            self.round += 1;
            self.clock.advance(Duration::from_millis(10));
            self.max_wall = self.max_wall.max(self.now());
            let claim = Op::Claim {
                node: self.rng.usize(0..NODES),
                worker: healthy,
                req: ClaimRequest {
                    worker: "fairness".into(),
                    kinds: None,
                    max: 1,
                    lease: Duration::from_secs(30),
                },
            };
            let pairs = self.run_ops(vec![claim]).await;
            self.apply_all(pairs);
            let held = std::mem::take(&mut self.workers[healthy].held);
            for h in &held {
                if small.contains(&h.lease.tenant) {
                    first.entry(h.lease.tenant).or_insert(rounds);
                }
            }
            self.round += 1;
            let ops = held
                .into_iter()
                .map(|h| Op::Complete {
                    node: 0,
                    worker: healthy,
                    lease: h.lease,
                    report: super::Report::OnTime,
                })
                .collect();
            let pairs = self.run_ops(ops).await;
            self.apply_all(pairs);
            self.workers[healthy].resend = None;
        }
        let worst = small
            .iter()
            .map(|t| first.get(t).copied().unwrap_or(usize::MAX))
            .max()
            .unwrap_or(0);
        self.trace(format!(
            "fairness: first claims {:?} (bound {bound})",
            first
                .iter()
                .map(|(t, r)| (short(*t), *r))
                .collect::<Vec<_>>()
        ));
        if worst == usize::MAX {
            let starved: Vec<Uuid> = small
                .iter()
                .filter(|t| !first.contains_key(t))
                .copied()
                .collect();
            self.violation(format!(
                "FAIRNESS bound: small tenants {starved:?} got no job claimed within {bound} claim rounds ({FAIRNESS_ROUNDS_PER_TENANT} per tenant with runnable work, {runnable} such tenants) while tenant {flood} flooded {FLOOD} jobs"
            ));
        } else if worst > runnable {
            // Each small tenant's queue was empty when its jobs arrived, so each is fresh, and
            // a claim serves fresh tenants first: one-job claims reach all of them (and the
            // flood's own entry, if no claim took it yet) within `runnable` rounds.
            self.violation(format!(
                "FRESH tenants first: the last small tenant's first claim came in round {worst}, after more than {runnable} one-job claims (first claims {first:?})"
            ));
        } else {
            let ratio = worst as f64 / runnable as f64;
            self.stats.fairness_worst = self.stats.fairness_worst.max(ratio);
        }
    }

    /// Doorbells under races. A few fresh tenants; each round empties one of them the
    /// ordinary way (a job enqueued, claimed, completed: its doorbell stays up), then races an
    /// enqueue to it against a claim that may find it empty and retire its doorbell; then a
    /// probe claims until a claim comes back empty. After that no job may still wait: a
    /// waiting job that no claim finds is orphaned.
    pub(super) async fn trickle(&mut self) {
        self.trace("phase: trickle");
        let tenants: Vec<Uuid> = (0..4).map(|_| random_uuid(&mut self.rng)).collect();
        self.all_tenants.extend(tenants.iter().copied());
        for _ in 0..TRICKLE_ROUNDS {
            self.round += 1;
            self.clock.advance(Duration::from_millis(100));
            self.max_wall = self.max_wall.max(self.now());
            let tenant = tenants[self.rng.usize(0..tenants.len())];
            let enqueue = |w: &mut World| Op::Enqueue {
                node: w.rng.usize(0..NODES),
                tenant,
                jobs: vec![NewJob::new(super::KINDS[0], json!({})).id(w.new_job_id())],
                retry: false,
            };
            let op = enqueue(self);
            let pairs = self.run_ops(vec![op]).await;
            self.apply_all(pairs);
            // One claim takes it (its tenant keeps its doorbell: a job was running).
            self.round += 1;
            let claim = self.healthy_claim("trickle", 10);
            let pairs = self.run_ops(vec![claim]).await;
            self.apply_all(pairs);
            self.complete_held().await;
            self.round += 1;
            let mut ops = vec![enqueue(self), self.healthy_claim("trickle", 2)];
            self.rng.shuffle(&mut ops);
            let pairs = self.run_ops(ops).await;
            self.apply_all(pairs);
            self.complete_held().await;
            self.probe().await;
            if !self.oracle.violations.is_empty() {
                return;
            }
            match self.pending().await {
                Ok(0) => {}
                Ok(n) => {
                    let mut waiting = Vec::new();
                    for &t in &tenants {
                        if let Ok(jobs) = list_all(&self.truth, t).await {
                            waiting.extend(
                                jobs.into_iter()
                                    .filter(|j| !j.state.is_terminal())
                                    .map(|j| format!("{} of tenant {t}: {}", j.id, j.state)),
                            );
                        }
                    }
                    return self.violation(format!(
                        "{n} jobs wait but a claim found nothing (orphaned: the tenant's doorbell was retired under an enqueue?): {waiting:?}"
                    ));
                }
                Err(e) => return self.violation(e),
            }
        }
    }

    fn healthy_claim(&mut self, name: &str, max: usize) -> Op {
        Op::Claim {
            node: self.rng.usize(0..NODES),
            worker: self.sim_workers,
            req: ClaimRequest {
                worker: name.into(),
                kinds: None,
                max,
                lease: Duration::from_secs(30),
            },
        }
    }

    /// The healthy worker claims and completes until a claim comes back empty.
    async fn probe(&mut self) {
        loop {
            self.round += 1;
            let claim = self.healthy_claim("probe", 10);
            let pairs = self.run_ops(vec![claim]).await;
            self.apply_all(pairs);
            if self.workers[self.sim_workers].held.is_empty() {
                return;
            }
            self.complete_held().await;
        }
    }

    /// The healthy worker completes what it holds.
    async fn complete_held(&mut self) {
        let healthy = self.sim_workers;
        let held = std::mem::take(&mut self.workers[healthy].held);
        if held.is_empty() {
            return;
        }
        self.round += 1;
        let ops = held
            .into_iter()
            .map(|h| Op::Complete {
                node: self.rng.usize(0..NODES),
                worker: healthy,
                lease: h.lease,
                report: super::Report::OnTime,
            })
            .collect();
        let pairs = self.run_ops(ops).await;
        self.apply_all(pairs);
        self.workers[healthy].resend = None;
    }
}
