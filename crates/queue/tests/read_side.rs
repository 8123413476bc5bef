//! The read side (list with cursors, counts, wait, why-waiting) and retention, on every backend
//! (see `support`).

// The cases are plain `async fn`s that `backend_tests!` wraps into `#[tokio::test]`s, so
// clippy's `allow-unwrap-in-tests` does not see them as tests.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use steward_queue::{JobState, ListFilter, Outcome, QueueConfig, WaitReason};
use support::{invalid_field, job, Env, LEASE};
use uuid::Uuid;

support::backend_tests! {
    current: [
        list_pages_cover_every_job_exactly_once_under_every_filter,
        counts_per_state_match_the_records,
        wait_returns_when_a_spawned_worker_completes_the_job,
        wait_returns_the_unfinished_job_on_timeout,
        why_waiting_names_the_reason,
        prune_removes_finished_jobs_after_retention_and_dead_ones_after_theirs,
    ],
    multi: [],
}

async fn list_pages_cover_every_job_exactly_once_under_every_filter(env: Env) {
    let t = env.tenant();
    let s = env.queue.new_id();
    let mut all = Vec::new();
    for i in 0..23u32 {
        let kind = ["a", "b", "c"][i as usize % 3];
        let mut new = job(kind);
        if i % 2 == 0 {
            new = new.session(s);
        }
        if i % 5 == 0 {
            new = new.run_at(env.now() + 60_000_000);
        }
        all.push(env.enqueue(t, new).await);
        env.advance(Duration::from_millis(1));
    }
    // Some running and some completed.
    for l in env.claim("w", 6).await.iter().take(6) {
        if l.attempt == 1 && l.job_id.as_u128() % 2 == 0 {
            env.queue.complete(l, json!(null)).await.unwrap();
        }
    }
    let other = env.tenant();
    env.enqueue(other, job("a").session(s)).await;

    let records: HashMap<Uuid, _> = env
        .list_all(t, &ListFilter::default(), 100)
        .await
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    assert_eq!(
        records.keys().copied().collect::<BTreeSet<_>>(),
        all.iter().copied().collect::<BTreeSet<_>>()
    );
    let mut filters = vec![ListFilter::default()];
    for state in JobState::ALL {
        filters.push(ListFilter {
            state: Some(state),
            ..ListFilter::default()
        });
    }
    for kind in ["a", "b", "zzz"] {
        filters.push(ListFilter {
            kind: Some(kind.into()),
            ..ListFilter::default()
        });
    }
    filters.push(ListFilter {
        session: Some(s),
        ..ListFilter::default()
    });
    filters.push(ListFilter {
        session: Some(s),
        kind: Some("b".into()),
        state: Some(JobState::Queued),
    });
    filters.push(ListFilter {
        kind: Some("c".into()),
        state: Some(JobState::Scheduled),
        ..ListFilter::default()
    });
    for filter in &filters {
        let want: BTreeSet<Uuid> = records
            .values()
            .filter(|j| {
                filter.state.is_none_or(|st| st == j.state)
                    && filter.kind.as_ref().is_none_or(|k| *k == j.kind)
                    && filter.session.is_none_or(|se| Some(se) == j.session_id)
            })
            .map(|j| j.id)
            .collect();
        for page in [1, 2, 4, 7, 500] {
            let got = env.list_all(t, filter, page).await;
            let ids: BTreeSet<Uuid> = got.iter().map(|j| j.id).collect();
            assert_eq!(ids, want, "filter {filter:?}, page size {page}");
            for j in &got {
                assert_eq!(*j, records[&j.id], "listed record differs from get");
            }
        }
    }
    // Unfiltered and session listings come in enqueue (id) order.
    let ordered: Vec<Uuid> = env
        .list_all(t, &ListFilter::default(), 4)
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    let mut sorted = ordered.clone();
    sorted.sort();
    assert_eq!(ordered, sorted);
    // A cursor belongs to its own listing.
    let by_state = ListFilter {
        state: Some(JobState::Queued),
        ..ListFilter::default()
    };
    let page = env.queue.list(t, &by_state, None, 1).await.unwrap();
    let cursor = page.next_cursor.expect("more than one queued job");
    let r = env
        .queue
        .list(t, &ListFilter::default(), Some(&cursor), 5)
        .await;
    assert_eq!(invalid_field(r), "cursor");
    let r = env.queue.list(other, &by_state, Some(&cursor), 5).await;
    assert_eq!(invalid_field(r), "cursor");
}

async fn counts_per_state_match_the_records(env: Env) {
    let t = env.tenant();
    let zero = env.queue.counts(t).await.unwrap();
    assert_eq!(zero.len(), JobState::ALL.len());
    assert!(zero.values().all(|n| *n == 0));

    for _ in 0..3 {
        env.enqueue(t, job("a").priority(0).max_attempts(1)).await;
    }
    let completed = env.claim("w", 1).await;
    env.queue.complete(&completed[0], json!(1)).await.unwrap();
    let dead = env.claim("w", 1).await;
    env.queue
        .fail(&dead[0], Outcome::Fail { error: "x".into() })
        .await
        .unwrap();
    let _running = env.claim("w", 1).await;
    for _ in 0..4 {
        env.enqueue(t, job("b")).await;
    }
    let c = env.enqueue(t, job("b")).await;
    env.queue.cancel(t, c).await.unwrap();
    for _ in 0..2 {
        env.enqueue(t, job("b").run_at(env.now() + 60_000_000))
            .await;
    }
    let counts = env.queue.counts(t).await.unwrap();
    let want: Vec<(JobState, i64)> = vec![
        (JobState::Scheduled, 2),
        (JobState::Queued, 4),
        (JobState::Running, 1),
        (JobState::Completed, 1),
        (JobState::Cancelled, 1),
        (JobState::Dead, 1),
    ];
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), want);
    env.assert_counts_match(t).await;
    // The scheduled ones come due, everything runs out its lease: still consistent.
    env.advance(LEASE + Duration::from_secs(60));
    let leases = env.claim("w", 100).await;
    assert_eq!(leases.len(), 6, "4 queued + 2 due");
    env.assert_counts_match(t).await;
}

async fn wait_returns_when_a_spawned_worker_completes_the_job(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("w").await;
    let queue = env.queue.clone();
    // On this current-thread runtime the completer runs once `wait` yields: normally when it
    // has read the running job and parks on its watch (with injected faults, possibly during a
    // retry backoff before that). Either way `wait` must come back with the completed job.
    let completer = tokio::spawn(async move {
        queue.complete(&lease, json!({"answer": 42})).await.unwrap();
    });
    let started = std::time::Instant::now();
    let j = env
        .queue
        .wait(t, id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "wait hung");
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(j.result, Some(json!({"answer": 42})));
    completer.await.unwrap();
    // A finished job is returned at once.
    assert_eq!(
        env.queue
            .wait(t, id, Duration::from_secs(20))
            .await
            .unwrap(),
        j
    );
}

async fn wait_returns_the_unfinished_job_on_timeout(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let started = std::time::Instant::now();
    let j = env
        .queue
        .wait(t, id, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j, env.job(t, id).await);
    let missing = env.queue.new_id();
    assert!(env
        .queue
        .wait(t, missing, Duration::from_millis(10))
        .await
        .is_err());
}

async fn why_waiting_names_the_reason(env: Env) {
    let t = env.tenant();
    let later = env.now() + 60_000_000;
    let scheduled = env.enqueue(t, job("a").run_at(later)).await;
    assert_eq!(
        env.queue.why_waiting(t, scheduled).await.unwrap(),
        WaitReason::Scheduled { run_at: later }
    );
    // Three of kind a, one at a better priority enqueued last, and one of another kind.
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(env.enqueue(t, job("a")).await);
        env.advance(Duration::from_millis(1));
    }
    let urgent = env.enqueue(t, job("a").priority(1)).await;
    let other_kind = env.enqueue(t, job("b").priority(0)).await;
    let ahead = |r: WaitReason| match r {
        WaitReason::Queued {
            ahead,
            ahead_capped,
            running,
        } => {
            assert!(!ahead_capped);
            (ahead, running)
        }
        other => panic!("expected Queued, got {other:?}"),
    };
    assert_eq!(
        ahead(env.queue.why_waiting(t, urgent).await.unwrap()),
        (0, 0)
    );
    assert_eq!(ahead(env.queue.why_waiting(t, a[0]).await.unwrap()), (1, 0));
    assert_eq!(ahead(env.queue.why_waiting(t, a[2]).await.unwrap()), (3, 0));
    assert_eq!(
        ahead(env.queue.why_waiting(t, other_kind).await.unwrap()),
        (0, 0)
    );
    // The best job (kind b, priority 0) runs: one running, nobody moved ahead.
    let lease = env.claim_one("w").await;
    assert_eq!(lease.job_id, other_kind);
    assert_eq!(ahead(env.queue.why_waiting(t, a[2]).await.unwrap()), (3, 1));
    assert_eq!(
        env.queue.why_waiting(t, other_kind).await.unwrap(),
        WaitReason::NotWaiting {
            state: JobState::Running
        }
    );
    env.queue.pause(t, Some("a")).await.unwrap();
    assert_eq!(
        env.queue.why_waiting(t, a[1]).await.unwrap(),
        WaitReason::Paused {
            kind: Some("a".into())
        }
    );
    env.queue.pause(t, None).await.unwrap();
    assert_eq!(
        env.queue.why_waiting(t, scheduled).await.unwrap(),
        WaitReason::Paused { kind: None }
    );
    env.queue.resume(t, None).await.unwrap();
    env.queue.resume(t, Some("a")).await.unwrap();
    assert_eq!(ahead(env.queue.why_waiting(t, a[1]).await.unwrap()), (2, 1));
    env.queue.complete(&lease, json!(0)).await.unwrap();
    assert_eq!(
        env.queue.why_waiting(t, other_kind).await.unwrap(),
        WaitReason::NotWaiting {
            state: JobState::Completed
        }
    );
}

/// Whether any key or value of the tenant still holds the job's id (its record, an index entry,
/// an idempotency or supersede key, a session entry).
async fn leaves_a_trace(env: &Env, tenant: Uuid, id: Uuid) -> bool {
    let needle = id.as_bytes();
    env.tenant_kvs(tenant)
        .await
        .iter()
        .any(|(k, v)| k.windows(16).any(|w| w == needle) || v.windows(16).any(|w| w == needle))
}

async fn prune_removes_finished_jobs_after_retention_and_dead_ones_after_theirs(env: Env) {
    let env = env.configured(QueueConfig {
        finished_retention: Duration::from_secs(3600),
        dead_retention: Duration::from_secs(2 * 3600),
        ..QueueConfig::default()
    });
    let t = env.tenant();
    let s = env.queue.new_id();
    let completed = env
        .enqueue(
            t,
            job("a")
                .priority(0)
                .idempotency_key("req-1")
                .session(s)
                .supersede_key("sup"),
        )
        .await;
    let dead = env
        .enqueue(t, job("a").priority(1).max_attempts(1).session(s))
        .await;
    let running = env.enqueue(t, job("a").priority(2)).await;
    let leases = env.claim("w", 3).await;
    let by_id = |id| leases.iter().find(|l| l.job_id == id).unwrap();
    env.queue
        .complete(by_id(completed), json!("r"))
        .await
        .unwrap();
    env.queue
        .fail(by_id(dead), Outcome::Fail { error: "x".into() })
        .await
        .unwrap();
    let cancelled = env.enqueue(t, job("a").idempotency_key("req-2")).await;
    env.queue.cancel(t, cancelled).await.unwrap();
    let queued = env
        .enqueue(t, job("b").run_at(env.now() + 10 * 3_600_000_000))
        .await;
    let running_lease = by_id(running).clone();

    // Before the retention: nothing goes, and the keys still deduplicate.
    env.advance(Duration::from_secs(3599));
    let stats = env.queue.prune(t).await.unwrap();
    assert_eq!((stats.finished, stats.dead), (0, 0));
    let dup = env
        .queue
        .enqueue(t, job("a").idempotency_key("req-1"))
        .await
        .unwrap();
    assert_eq!((dup.id, dup.duplicate), (completed, true));

    // Past it: finished jobs go with everything that names them; dead ones stay.
    env.advance(Duration::from_secs(2));
    let hb = env.queue.heartbeat(&running_lease, LEASE).await.unwrap();
    assert!(!hb.cancel_requested);
    let stats = env.queue.prune(t).await.unwrap();
    assert_eq!((stats.finished, stats.dead), (2, 0));
    for id in [completed, cancelled] {
        assert!(env.queue.get(t, id).await.unwrap().is_none());
        assert!(!leaves_a_trace(&env, t, id).await, "job {id} left a key");
    }
    assert_eq!(env.job(t, dead).await.state, JobState::Dead);
    assert_eq!(env.job(t, running).await.state, JobState::Running);
    assert_eq!(env.job(t, queued).await.state, JobState::Scheduled);
    let session: Vec<Uuid> = env
        .list_all(
            t,
            &ListFilter {
                session: Some(s),
                ..ListFilter::default()
            },
            10,
        )
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(session, vec![dead]);
    // The keys can be used again.
    let reused = env
        .queue
        .enqueue(t, job("a").idempotency_key("req-1").supersede_key("sup"))
        .await
        .unwrap();
    assert!(!reused.duplicate);
    assert_ne!(reused.id, completed);
    assert_eq!(reused.superseded, None);
    env.assert_counts_match(t).await;

    // Past the dead retention: the dead job goes too.
    env.advance(Duration::from_secs(3600));
    let stats = env.queue.prune(t).await.unwrap();
    assert_eq!((stats.finished, stats.dead), (0, 1));
    assert!(env.queue.get(t, dead).await.unwrap().is_none());
    assert!(!leaves_a_trace(&env, t, dead).await);
    let counts = env.queue.counts(t).await.unwrap();
    assert_eq!(
        (
            counts[&JobState::Completed],
            counts[&JobState::Cancelled],
            counts[&JobState::Dead]
        ),
        (0, 0, 0)
    );
    // A second prune finds nothing.
    let stats = env.queue.prune(t).await.unwrap();
    assert_eq!((stats.finished, stats.dead), (0, 0));
    env.assert_counts_match(t).await;
}
