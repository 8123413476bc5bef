//! Concurrent producers and consumers on a two-thread runtime, on every backend (see
//! `support`): duplicate enqueues of one idempotency key, claimers racing an enqueuer, and
//! claimers whose leases expire under them.

// The cases are plain `async fn`s that `backend_tests!` wraps into `#[tokio::test]`s, so
// clippy's `allow-unwrap-in-tests` does not see them as tests.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use steward_queue::{Error, JobState, Lease, ListFilter, NewJob};
use steward_store::decode_counter;
use steward_store::tuple::pack;
use support::{job, req, Env, LEASE};
use uuid::Uuid;

support::backend_tests! {
    current: [],
    multi: [
        concurrent_duplicate_enqueues_make_exactly_one_job,
        claimers_and_an_enqueuer_complete_every_job_exactly_once,
        claimers_with_expiring_leases_never_complete_a_job_twice,
    ],
}

/// Fails the test instead of hanging if `f` does not finish within a generous bound.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within 30 s"),
    }
}

async fn concurrent_duplicate_enqueues_make_exactly_one_job(env: Env) {
    let t = env.tenant();
    for round in 0..8 {
        let key = format!("request-{round}");
        let mut tasks = Vec::new();
        for n in 0..12 {
            let queue = env.queue.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                queue
                    .enqueue(t, NewJob::new("a", json!({ "n": n })).idempotency_key(key))
                    .await
                    .unwrap()
            }));
        }
        let mut outs = Vec::new();
        for task in tasks {
            outs.push(bounded("enqueue", task).await.unwrap());
        }
        let ids: BTreeSet<Uuid> = outs.iter().map(|o| o.id).collect();
        assert_eq!(
            ids.len(),
            1,
            "round {round}: every caller gets the same job"
        );
        assert_eq!(
            outs.iter().filter(|o| !o.duplicate).count(),
            1,
            "round {round}: exactly one caller created it"
        );
        let id = outs[0].id;
        let j = env.job(t, id).await;
        assert_eq!(j.idempotency_key.as_deref(), Some(key.as_str()));
    }
    let all = env.list_all(t, &ListFilter::default(), 100).await;
    assert_eq!(all.len(), 8, "one job per key");
    env.assert_counts_match(t).await;
    if let Some(stats) = env.db.fault_stats() {
        assert!(stats.conflicts + stats.unknown_applied + stats.unknown_not_applied > 0);
    }
}

/// What the claimers saw, per job.
#[derive(Debug, Default)]
struct Ledger {
    /// Successful completions.
    completed: HashMap<Uuid, u32>,
    /// (job, attempt) pairs handed out by claims.
    claims: HashMap<(Uuid, u32), u32>,
    /// Reports refused with LeaseLost.
    lost: u32,
}

fn effect_key(id: Uuid) -> Vec<u8> {
    pack(&("test-effects", id))
}

async fn claimers_and_an_enqueuer_complete_every_job_exactly_once(env: Env) {
    let tenants: Vec<Uuid> = (0..3).map(|_| env.tenant()).collect();
    const JOBS: usize = 60;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let enqueuer = {
        let queue = env.queue.clone();
        let tenants = tenants.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..JOBS / 5 {
                let t = tenants[i % tenants.len()];
                let batch = (0..5)
                    .map(|k| job(["a", "b"][k % 2]).priority(u8::try_from(k * 10).unwrap()))
                    .collect();
                for e in queue.enqueue_batch(t, batch).await.unwrap() {
                    ids.push((t, e.id));
                }
                tokio::task::yield_now().await;
            }
            ids
        })
    };
    let mut claimers = Vec::new();
    for w in 0..4 {
        let queue = env.queue.clone();
        let ledger = ledger.clone();
        claimers.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            loop {
                if ledger.lock().unwrap().completed.len() >= JOBS {
                    return;
                }
                let leases = queue.claim(&req(&worker, 3)).await.unwrap();
                if leases.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                for lease in leases {
                    {
                        let mut l = ledger.lock().unwrap();
                        *l.claims.entry((lease.job_id, lease.attempt)).or_default() += 1;
                    }
                    let id = lease.job_id;
                    let r = queue
                        .complete_with(&lease, json!({ "by": worker }), |tx| async move {
                            tx.add(&effect_key(id), 1);
                            Ok(())
                        })
                        .await;
                    let mut l = ledger.lock().unwrap();
                    match r {
                        Ok(()) => {
                            let n = l.completed.entry(id).or_default();
                            *n += 1;
                            assert_eq!(*n, 1, "job {id} completed twice");
                        }
                        Err(Error::LeaseLost { .. }) => l.lost += 1,
                        Err(e) => panic!("complete failed: {e}"),
                    }
                }
            }
        }));
    }
    let ids = bounded("enqueuer", enqueuer).await.unwrap();
    for c in claimers {
        bounded("claimers", c).await.unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(ids.len(), JOBS);
    assert_eq!(ledger.completed.len(), JOBS);
    // The clock never moved, so no lease expired: every job was claimed once, at attempt 1.
    assert_eq!(ledger.lost, 0);
    assert_eq!(ledger.claims.len(), JOBS);
    assert!(ledger.claims.iter().all(|((_, a), n)| *a == 1 && *n == 1));
    let tx = env.raw.create_transaction().unwrap();
    for (t, id) in &ids {
        assert_eq!(ledger.completed.get(id), Some(&1));
        let j = env.job(*t, *id).await;
        assert_eq!((j.state, j.attempt), (JobState::Completed, 1));
        let effects = decode_counter(tx.get(&effect_key(*id), false).await.unwrap().as_deref());
        assert_eq!(effects, 1, "effects of job {id}");
    }
    for t in &tenants {
        env.assert_counts_match(*t).await;
    }
    if let Some(stats) = env.db.fault_stats() {
        assert!(stats.unknown_applied > 0, "{stats:?}");
    }
}

/// Workers race while the clock jumps past every lease, and a fifth of the workers "crash"
/// (drop their lease without a report): jobs are taken over, stale workers are refused, and
/// every job still ends completed by exactly one worker.
async fn claimers_with_expiring_leases_never_complete_a_job_twice(env: Env) {
    let t = env.tenant();
    const JOBS: usize = 40;
    let mut ids = Vec::new();
    let batch: Vec<NewJob> = (0..JOBS).map(|_| job("a").max_attempts(1000)).collect();
    for e in env.queue.enqueue_batch(t, batch).await.unwrap() {
        ids.push(e.id);
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let ticker = {
        let clock = env.clock.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(3)).await;
                clock.advance(LEASE + Duration::from_secs(1));
            }
        })
    };
    let mut claimers = Vec::new();
    for w in 0..4u64 {
        let queue = env.queue.clone();
        let ledger = ledger.clone();
        let mut rng = fastrand::Rng::with_seed(env.seed ^ w);
        claimers.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut held: Vec<Lease> = Vec::new();
            loop {
                if ledger.lock().unwrap().completed.len() >= JOBS {
                    return held;
                }
                let leases = queue.claim(&req(&worker, 2)).await.unwrap();
                if leases.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                for lease in leases {
                    *ledger
                        .lock()
                        .unwrap()
                        .claims
                        .entry((lease.job_id, lease.attempt))
                        .or_default() += 1;
                    if rng.u8(..5) == 0 {
                        held.push(lease); // Crashed: a stale lease to report on later.
                        continue;
                    }
                    tokio::task::yield_now().await; // Let the clock jump under us.
                    let id = lease.job_id;
                    let r = queue
                        .complete_with(&lease, json!(null), |tx| async move {
                            tx.add(&effect_key(id), 1);
                            Ok(())
                        })
                        .await;
                    let mut l = ledger.lock().unwrap();
                    match r {
                        Ok(()) => {
                            let n = l.completed.entry(id).or_default();
                            *n += 1;
                            assert_eq!(*n, 1, "job {id} completed twice");
                        }
                        Err(Error::LeaseLost { .. }) => l.lost += 1,
                        Err(e) => panic!("complete failed: {e}"),
                    }
                }
            }
        }));
    }
    let mut stale = Vec::new();
    for c in claimers {
        stale.extend(bounded("claimers", c).await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    ticker.await.unwrap();

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(ledger.completed.len(), JOBS);
    assert!(
        ledger.claims.values().all(|n| *n == 1),
        "an attempt was handed out twice"
    );
    // Crashed workers' jobs were taken over after their leases expired.
    assert!(
        !stale.is_empty(),
        "no worker crashed: the case tested nothing"
    );
    assert!(ledger.claims.len() >= JOBS + stale.len());
    let tx = env.raw.create_transaction().unwrap();
    for id in &ids {
        let j = env.job(t, *id).await;
        assert_eq!(j.state, JobState::Completed, "job {id}");
        let effects = decode_counter(tx.get(&effect_key(*id), false).await.unwrap().as_deref());
        assert_eq!(effects, 1, "effects of job {id}");
    }
    // The crashed workers come back: every report is refused and nothing changes.
    for lease in &stale {
        let before = env.job(t, lease.job_id).await;
        let r = env.queue.complete(lease, json!("stale")).await;
        assert!(
            matches!(r, Err(Error::LeaseLost { .. })),
            "stale complete: {r:?}"
        );
        assert_eq!(env.job(t, lease.job_id).await, before);
    }
    env.assert_counts_match(t).await;
}
