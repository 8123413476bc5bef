//! The calls the simulation makes on the queue, what they return, and how both read in
//! the trace.

use std::time::Duration;

use serde_json::json;
use steward_queue::{
    ClaimRequest, Enqueued, Error, Heartbeat, JobState, Lease, NewJob, Outcome, PruneStats, Queue,
    ScheduleSpec, Scheduler, TickRecord,
};
use steward_store::Database;
use uuid::Uuid;

/// How a report relates to its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// While the worker believes it holds the lease.
    OnTime,
    /// After the lease expired (the worker hung).
    Late,
    /// The same report again, after it succeeded.
    Resend,
}

/// One call on the queue.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Enqueue {
        node: usize,
        tenant: Uuid,
        jobs: Vec<NewJob>,
        /// The same call again, with the same ids (a client retrying after a timeout).
        retry: bool,
    },
    Claim {
        node: usize,
        worker: usize,
        req: ClaimRequest,
    },
    Heartbeat {
        node: usize,
        worker: usize,
        lease: Lease,
        extend: Duration,
        report: Report,
    },
    Complete {
        node: usize,
        worker: usize,
        lease: Lease,
        report: Report,
    },
    Fail {
        node: usize,
        worker: usize,
        lease: Lease,
        outcome: Outcome,
        report: Report,
    },
    Release {
        node: usize,
        worker: usize,
        lease: Lease,
    },
    Cancel {
        node: usize,
        tenant: Uuid,
        id: Uuid,
    },
    Tick {
        replica: usize,
    },
    Prune {
        node: usize,
        tenant: Uuid,
    },
    /// A replica (re)registers a schedule, as at start-up.
    Upsert {
        replica: usize,
        spec: ScheduleSpec,
    },
}

impl Op {
    /// Results are checked in this order within a round: what removes jobs (a call in the
    /// same round may have found one gone), what creates jobs, what flags them,
    /// what ends leases, what fires cron jobs, and last what hands out new leases (a claim in
    /// the same round may have taken a job that one of the others made claimable).
    pub(super) fn phase(&self) -> u8 {
        match self {
            Op::Prune { .. } => 0,
            Op::Enqueue { .. } => 1,
            Op::Cancel { .. } => 2,
            Op::Heartbeat { .. } | Op::Complete { .. } | Op::Fail { .. } | Op::Release { .. } => 3,
            Op::Tick { .. } | Op::Upsert { .. } => 4,
            Op::Claim { .. } => 5,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Op::Enqueue {
                node,
                tenant,
                jobs,
                retry,
            } => {
                let jobs: Vec<String> = jobs
                    .iter()
                    .map(|j| {
                        format!(
                            "{}:{}:p{}:max{}{}{}{}",
                            j.id.map_or_else(|| "?".into(), short),
                            j.kind,
                            j.priority,
                            j.max_attempts,
                            j.run_at.map_or_else(String::new, |t| format!(":at{t}")),
                            j.idempotency_key
                                .as_ref()
                                .map_or_else(String::new, |k| format!(":idem={k}")),
                            j.supersede_key
                                .as_ref()
                                .map_or_else(String::new, |k| format!(":sup={k}")),
                        )
                    })
                    .collect();
                let retry = if *retry { " (retry)" } else { "" };
                format!(
                    "n{node} enqueue{retry} t={} [{}]",
                    short(*tenant),
                    jobs.join(" ")
                )
            }
            Op::Claim { node, req, .. } => format!(
                "n{node} {} claim max={} kinds={:?} lease={:?}",
                req.worker, req.max, req.kinds, req.lease
            ),
            Op::Heartbeat {
                node,
                worker,
                lease,
                extend,
                report,
            } => format!(
                "n{node} w{worker} heartbeat {} {report:?} extend={extend:?}",
                lease_tag(lease)
            ),
            Op::Complete {
                node,
                worker,
                lease,
                report,
            } => format!("n{node} w{worker} complete {} {report:?}", lease_tag(lease)),
            Op::Fail {
                node,
                worker,
                lease,
                outcome,
                report,
            } => format!(
                "n{node} w{worker} fail {} {report:?} {outcome:?}",
                lease_tag(lease)
            ),
            Op::Release {
                node,
                worker,
                lease,
            } => format!("n{node} w{worker} release {}", lease_tag(lease)),
            Op::Cancel { node, tenant, id } => {
                format!("n{node} cancel t={} job={}", short(*tenant), short(*id))
            }
            Op::Tick { replica } => format!("replica{replica} tick"),
            Op::Prune { node, tenant } => format!("n{node} prune t={}", short(*tenant)),
            Op::Upsert { replica, spec } => format!("replica{replica} upsert {}", spec.name),
        }
    }
}

/// What a call returned.
#[derive(Debug)]
pub(super) enum Res {
    Enqueue(Result<Vec<Enqueued>, Error>),
    Claim(Result<Vec<Lease>, Error>),
    Heartbeat(Result<Heartbeat, Error>),
    Unit(Result<(), Error>),
    State(Result<JobState, Error>),
    Tick(Result<Vec<(String, TickRecord)>, Error>),
    Prune(Result<PruneStats, Error>),
    Upsert(Result<i64, Error>),
}

impl Res {
    pub(super) fn describe(&self) -> String {
        fn err(e: &Error) -> String {
            match e {
                Error::LeaseLost { .. } => "LeaseLost".into(),
                Error::NotFound(_) => "NotFound".into(),
                e => format!("error: {e}"),
            }
        }
        match self {
            Res::Enqueue(Ok(v)) => {
                let v: Vec<String> = v
                    .iter()
                    .map(|e| {
                        format!(
                            "{}{}{}",
                            short(e.id),
                            if e.duplicate { ":dup" } else { "" },
                            e.superseded
                                .map_or_else(String::new, |s| format!(":sup>{}", short(s)))
                        )
                    })
                    .collect();
                format!("[{}]", v.join(" "))
            }
            Res::Claim(Ok(v)) => {
                let v: Vec<String> = v.iter().map(lease_tag).collect();
                format!("[{}]", v.join(" "))
            }
            Res::Heartbeat(Ok(h)) => {
                format!("until {} cancel={}", h.expires_at, h.cancel_requested)
            }
            Res::Unit(Ok(())) => "ok".into(),
            Res::Prune(Ok(p)) => format!("{p:?}"),
            Res::Upsert(Ok(next)) => format!("next fire {next}"),
            Res::State(Ok(s)) => format!("{s}"),
            Res::Tick(Ok(v)) => {
                let v: Vec<String> = v
                    .iter()
                    .map(|(n, r)| format!("{n}@{}:{:?}", r.fire_time, r.outcome))
                    .collect();
                format!("[{}]", v.join(" "))
            }
            Res::Enqueue(Err(e))
            | Res::Claim(Err(e))
            | Res::Heartbeat(Err(e))
            | Res::Unit(Err(e))
            | Res::State(Err(e))
            | Res::Tick(Err(e))
            | Res::Prune(Err(e))
            | Res::Upsert(Err(e)) => err(e),
        }
    }
}

/// The last 6 hex digits of an id, for the trace.
pub(super) fn short(id: Uuid) -> String {
    let s = id.simple().to_string();
    s[s.len() - 6..].to_string()
}

pub(super) fn lease_tag(l: &Lease) -> String {
    format!(
        "{}/{}#{}of{}@{}",
        short(l.job_id),
        short(l.token),
        l.attempt,
        l.max_attempts,
        l.expires_at
    )
}

pub(super) async fn exec(nodes: &[Queue], op: &Op) -> Res {
    match op {
        Op::Enqueue {
            node, tenant, jobs, ..
        } => {
            let q = &nodes[*node];
            if jobs.len() == 1 {
                Res::Enqueue(q.enqueue(*tenant, jobs[0].clone()).await.map(|e| vec![e]))
            } else {
                Res::Enqueue(q.enqueue_batch(*tenant, jobs.clone()).await)
            }
        }
        Op::Claim { node, req, .. } => Res::Claim(nodes[*node].claim(req).await),
        Op::Heartbeat {
            node,
            lease,
            extend,
            ..
        } => Res::Heartbeat(nodes[*node].heartbeat(lease, *extend).await),
        Op::Complete { node, lease, .. } => {
            // The job's own write, in the completing transaction: it must happen exactly once.
            let key = effect_key(lease.job_id);
            let key = &key;
            Res::Unit(
                nodes[*node]
                    .complete_with(lease, json!({ "token": lease.token }), |tx| async move {
                        tx.add(key, 1);
                        Ok(())
                    })
                    .await,
            )
        }
        Op::Fail {
            node,
            lease,
            outcome,
            ..
        } => Res::State(nodes[*node].fail(lease, outcome.clone()).await),
        Op::Release { node, lease, .. } => Res::Unit(nodes[*node].release(lease).await),
        Op::Cancel { node, tenant, id } => Res::State(nodes[*node].cancel(*tenant, *id).await),
        Op::Tick { replica } => Res::Tick(Scheduler::new(&nodes[*replica]).tick().await),
        Op::Prune { node, tenant } => Res::Prune(nodes[*node].prune(*tenant).await),
        Op::Upsert { replica, spec } => Res::Upsert(
            Scheduler::new(&nodes[*replica])
                .upsert(spec.clone())
                .await
                .map(|s| s.next_fire),
        ),
    }
}

/// Where a job's completion effect is counted (outside the queue's keyspace).
pub(super) fn effect_key(job: Uuid) -> Vec<u8> {
    steward_store::tuple::pack(&("sim", "effect", job))
}

/// Every job's completion effects.
pub(super) async fn effects(
    db: &Database,
) -> Result<std::collections::BTreeMap<Uuid, i64>, String> {
    let range = steward_store::RangeOption::prefix(&steward_store::tuple::pack(&("sim", "effect")));
    let range = &range;
    let kvs = db
        .run(|tx, _| async move { tx.get_range_all(range).await })
        .await
        .map_err(|e| format!("reading effects failed: {e}"))?;
    let mut out = std::collections::BTreeMap::new();
    for kv in kvs {
        let (_, _, id): (String, String, Uuid) =
            steward_store::tuple::unpack(&kv.key).map_err(|e| format!("bad effect key: {e}"))?;
        out.insert(id, steward_store::decode_counter(Some(&kv.value)));
    }
    Ok(out)
}
