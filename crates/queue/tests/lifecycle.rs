//! Every transition of a job, fencing, lease expiry, cancel, supersede, pause, priority,
//! validation and tenant isolation, on every backend (see `support`).

// The cases are plain `async fn`s that `backend_tests!` wraps into `#[tokio::test]`s, so
// clippy's `allow-unwrap-in-tests` does not see them as tests.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use steward_queue::{
    CancelReason, ClaimRequest, DeadReason, Error, JobState, Lease, ListFilter, NewJob, Outcome,
    QueueConfig, RetryPolicy, TenantQueueConfig, WaitReason, MAX_ARGS_BYTES, MAX_BATCH,
    MAX_KEPT_ERRORS,
};
use steward_store::tuple::pack;
use steward_store::{decode_counter, FaultConfig, Transaction};
use support::{assert_lease_lost, invalid_field, job, req, us, Env, LEASE};

support::backend_tests! {
    current: [
        enqueue_now_is_queued_and_with_a_future_run_at_is_scheduled,
        claim_leases_with_attempt_one_and_a_fresh_token,
        heartbeat_extends_the_lease_past_its_first_expiry,
        complete_stores_the_result_and_a_repeated_complete_changes_nothing,
        retry_backs_off_then_is_claimable_and_dies_on_the_last_attempt,
        fail_permanently_is_dead_at_once,
        snooze_reschedules_without_counting_the_attempt,
        handler_cancel_ends_cancelled,
        release_gives_the_job_back_without_counting_the_attempt,
        stale_worker_after_takeover_is_refused_and_changes_nothing,
        expired_lease_requeues_and_counts_the_attempt,
        job_whose_workers_keep_dying_is_dead_after_exactly_max_attempts,
        cancel_of_a_waiting_job_is_immediate,
        cancel_during_a_run_is_reported_by_heartbeat_and_ends_cancelled,
        cancel_during_a_run_then_lease_expiry_ends_cancelled,
        complete_after_a_cancel_request_completes,
        cancel_session_cancels_waiting_flags_running_and_spares_the_rest,
        supersede_cancels_the_older_waiting_job,
        supersede_leaves_a_running_older_job_alone,
        pause_tenant_stops_its_claims_until_resumed,
        pause_kind_stops_only_that_kind,
        claim_with_kinds_returns_only_those_kinds,
        claim_follows_strict_priority_within_a_tenant,
        idempotent_enqueue_returns_the_first_job,
        enqueue_batch_is_all_or_nothing,
        a_record_that_does_not_decode_does_not_stop_claims,
        prune_passes_by_records_that_do_not_decode,
        a_batch_sees_its_own_keys_and_counts_its_own_jobs,
        enqueue_in_commits_with_the_callers_transaction,
        validation_errors_name_the_field,
        args_over_the_limit_are_refused_and_at_the_limit_survive_failures,
        complete_with_a_result_over_the_limit_is_refused_and_changes_nothing,
        complete_with_commits_effects_exactly_once,
        replay_gives_a_dead_job_fresh_attempts,
        replay_dead_replays_up_to_the_limit_of_a_kind,
        tenants_do_not_see_each_others_jobs,
        calls_retried_after_an_applied_commit_unknown_result_answer_once,
        complete_many_completes_each_held_lease_and_refuses_only_the_lost_one,
        complete_many_retried_after_an_applied_commit_unknown_result_completes_once,
    ],
    multi: [],
}

fn retry(error: &str) -> Outcome {
    Outcome::Retry {
        error: error.to_string(),
        delay: None,
    }
}

/// A key outside the queue's keyspace that a job's effects bump.
fn effect_key(job: uuid::Uuid) -> Vec<u8> {
    pack(&("test-effects", job))
}

async fn effect_count(env: &Env, job: uuid::Uuid) -> i64 {
    let tx = env.raw.create_transaction().unwrap();
    decode_counter(tx.get(&effect_key(job), false).await.unwrap().as_deref())
}

async fn enqueue_now_is_queued_and_with_a_future_run_at_is_scheduled(env: Env) {
    let t = env.tenant();
    let now = env.now();
    let q = env.enqueue(t, job("a")).await;
    let later = env
        .enqueue(t, job("a").run_at(now + us(Duration::from_secs(60))))
        .await;
    let past = env.enqueue(t, job("a").run_at(now - 1_000_000)).await;

    let jq = env.job(t, q).await;
    assert_eq!(jq.state, JobState::Queued);
    assert_eq!((jq.attempt, jq.run_at, jq.created_at), (0, now, now));
    assert_eq!((jq.tenant, jq.kind.as_str()), (t, "a"));
    assert_eq!(jq.args, json!({"kind": "a"}));
    assert!(jq.lease.is_none() && jq.finished_at.is_none() && jq.result.is_none());
    let js = env.job(t, later).await;
    assert_eq!(js.state, JobState::Scheduled);
    assert_eq!(js.run_at, now + 60_000_000);
    assert_eq!(env.job(t, past).await.state, JobState::Queued);
    assert_eq!(
        env.queue.why_waiting(t, later).await.unwrap(),
        WaitReason::Scheduled { run_at: js.run_at }
    );

    // Only the two runnable jobs come out, and the scheduled one not before its time.
    let leases = env.claim("w", 10).await;
    let mut got: Vec<_> = leases.iter().map(|l| l.job_id).collect();
    got.sort();
    let mut want = vec![q, past];
    want.sort();
    assert_eq!(got, want);
    for l in &leases {
        env.queue.complete(l, json!(null)).await.unwrap();
    }
    env.advance(Duration::from_secs(59));
    env.assert_nothing_claimable().await;
    env.advance(Duration::from_secs(1));
    assert_eq!(env.claim_one("w").await.job_id, later);
    env.assert_counts_match(t).await;
}

async fn claim_leases_with_attempt_one_and_a_fresh_token(env: Env) {
    let t = env.tenant();
    let a = env
        .enqueue(t, job("a").max_attempts(7).timeout(Duration::from_secs(9)))
        .await;
    let b = env.enqueue(t, job("a")).await;
    let now = env.now();
    let leases = env.claim("worker-1", 10).await;
    assert_eq!(leases.len(), 2);
    assert_ne!(
        leases[0].token, leases[1].token,
        "tokens are unique per attempt"
    );
    let la = leases.iter().find(|l| l.job_id == a).unwrap();
    assert_eq!(la.tenant, t);
    assert_eq!(la.attempt, 1);
    assert_eq!(la.max_attempts, 7);
    assert_eq!(la.timeout_ms, 9_000);
    assert_eq!(la.kind, "a");
    assert_eq!(la.args, json!({"kind": "a"}));
    assert_eq!(la.expires_at, now + us(LEASE));
    let ja = env.job(t, a).await;
    assert_eq!(ja.state, JobState::Running);
    assert_eq!(ja.attempt, 1);
    let li = ja.lease.unwrap();
    assert_eq!(
        (li.token, li.expires_at, li.worker.as_str()),
        (la.token, la.expires_at, "worker-1")
    );
    assert!(leases.iter().any(|l| l.job_id == b));
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn heartbeat_extends_the_lease_past_its_first_expiry(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("a").await;
    env.advance(Duration::from_secs(20));
    let hb = env
        .queue
        .heartbeat(&lease, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.expires_at, env.now() + 30_000_000);
    assert!(!hb.cancel_requested);
    assert_eq!(
        env.job(t, id).await.lease.unwrap().expires_at,
        hb.expires_at
    );
    // 40 s after the claim: past the first lease, inside the extended one.
    env.advance(Duration::from_secs(20));
    env.assert_nothing_claimable().await;
    let j = env.job(t, id).await;
    assert_eq!((j.state, j.attempt), (JobState::Running, 1));
    env.queue.complete(&lease, json!("done")).await.unwrap();
    assert_eq!(env.job(t, id).await.state, JobState::Completed);
    env.assert_counts_match(t).await;
}

async fn complete_stores_the_result_and_a_repeated_complete_changes_nothing(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("w").await;
    env.advance(Duration::from_secs(3));
    env.queue
        .complete(&lease, json!({"summary": "ok"}))
        .await
        .unwrap();
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(j.result, Some(json!({"summary": "ok"})));
    assert_eq!(j.finished_at, Some(env.now()));
    assert_eq!(j.state_since, env.now());
    assert!(j.lease.is_none());
    assert_eq!(
        env.queue.why_waiting(t, id).await.unwrap(),
        WaitReason::NotWaiting {
            state: JobState::Completed
        }
    );
    // The same report again (as a retry after a lost reply would send it) is a no-op.
    env.advance(Duration::from_secs(1));
    env.queue
        .complete(&lease, json!({"summary": "other"}))
        .await
        .unwrap();
    assert_eq!(env.job(t, id).await, j);
    // Other reports under the finished lease change nothing either: a heartbeat is refused;
    // `fail` and `release` take the applied report as their own retried one (the token is the
    // idempotency marker) and `fail` answers with the job's real state.
    assert_lease_lost(env.queue.heartbeat(&lease, LEASE).await, id);
    assert_eq!(
        env.queue.fail(&lease, retry("late")).await.unwrap(),
        JobState::Completed
    );
    env.queue.release(&lease).await.unwrap();
    assert_eq!(env.job(t, id).await, j);
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn retry_backs_off_then_is_claimable_and_dies_on_the_last_attempt(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(3)).await;

    // Attempt 1: the queue's backoff, base 1 s with 25 % jitter.
    let l1 = env.claim_one("w").await;
    assert_eq!(l1.attempt, 1);
    let now = env.now();
    assert_eq!(
        env.queue.fail(&l1, retry("boom 1")).await.unwrap(),
        JobState::Scheduled
    );
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Scheduled);
    assert!(j.lease.is_none());
    let delay = j.run_at - now;
    assert!((750_000..=1_250_000).contains(&delay), "delay {delay} µs");
    assert_eq!(j.errors.len(), 1);
    assert_eq!(
        (j.errors[0].attempt, j.errors[0].message.as_str()),
        (1, "boom 1")
    );
    assert_eq!(
        env.queue.why_waiting(t, id).await.unwrap(),
        WaitReason::Scheduled { run_at: j.run_at }
    );
    env.assert_nothing_claimable().await;
    env.advance(Duration::from_millis(700));
    env.assert_nothing_claimable().await;
    env.advance(Duration::from_millis(600));

    // Attempt 2: the backoff doubles.
    let l2 = env.claim_one("w").await;
    assert_eq!(l2.attempt, 2);
    assert_ne!(l2.token, l1.token);
    let now = env.now();
    env.queue.fail(&l2, retry("boom 2")).await.unwrap();
    let delay = env.job(t, id).await.run_at - now;
    assert!((1_500_000..=2_500_000).contains(&delay), "delay {delay} µs");
    env.advance(Duration::from_millis(1400));
    env.assert_nothing_claimable().await;
    env.advance(Duration::from_millis(1200));

    // Attempt 3 of 3: a kind's own delay is honoured exactly, but this was the last attempt.
    let l3 = env.claim_one("w").await;
    assert_eq!(l3.attempt, 3);
    let state = env
        .queue
        .fail(
            &l3,
            Outcome::Retry {
                error: "boom 3".into(),
                delay: Some(Duration::from_secs(10)),
            },
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Dead);
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.dead_reason, Some(DeadReason::MaxAttempts));
    assert_eq!(j.finished_at, Some(env.now()));
    assert_eq!(
        j.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    env.advance(Duration::from_secs(3600));
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn fail_permanently_is_dead_at_once(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(5)).await;
    let lease = env.claim_one("w").await;
    let state = env
        .queue
        .fail(
            &lease,
            Outcome::Fail {
                error: "bad input".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Dead);
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.dead_reason, Some(DeadReason::FailedPermanently));
    assert_eq!(j.attempt, 1);
    assert_eq!(j.errors.last().unwrap().message, "bad input");
    env.advance(Duration::from_secs(3600));
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn snooze_reschedules_without_counting_the_attempt(env: Env) {
    let t = env.tenant();
    // One attempt allowed: three snoozes must not use it up.
    let id = env.enqueue(t, job("a").max_attempts(1)).await;
    for _ in 0..3 {
        let lease = env.claim_one("w").await;
        assert_eq!(lease.attempt, 1);
        let until = env.now() + 60_000_000;
        let state = env
            .queue
            .fail(&lease, Outcome::Snooze { until })
            .await
            .unwrap();
        assert_eq!(state, JobState::Scheduled);
        let j = env.job(t, id).await;
        assert_eq!(
            (j.state, j.attempt, j.run_at),
            (JobState::Scheduled, 0, until)
        );
        assert!(j.errors.is_empty());
        env.advance(Duration::from_secs(59));
        env.assert_nothing_claimable().await;
        env.advance(Duration::from_secs(1));
    }
    let lease = env.claim_one("w").await;
    assert_eq!(lease.attempt, 1);
    assert_eq!(
        env.queue
            .fail(&lease, retry("now it counts"))
            .await
            .unwrap(),
        JobState::Dead
    );
    env.assert_counts_match(t).await;
}

async fn handler_cancel_ends_cancelled(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("w").await;
    let state = env
        .queue
        .fail(
            &lease,
            Outcome::Cancel {
                reason: "session closed".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Cancelled);
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.cancel_reason, Some(CancelReason::Handler));
    assert_eq!(j.finished_at, Some(env.now()));
    assert!(j.lease.is_none());
    env.advance(Duration::from_secs(3600));
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn release_gives_the_job_back_without_counting_the_attempt(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(1)).await;
    let a = env.claim_one("a").await;
    env.queue.release(&a).await.unwrap();
    let j = env.job(t, id).await;
    assert_eq!((j.state, j.attempt), (JobState::Queued, 0));
    assert!(j.lease.is_none());
    // Claimable again at once, and its single attempt is still there.
    let b = env.claim_one("b").await;
    assert_eq!((b.job_id, b.attempt), (id, 1));
    assert_ne!(b.token, a.token);
    let before = env.job(t, id).await;
    assert_lease_lost(env.queue.complete(&a, json!("stale")).await, id);
    assert_lease_lost(env.queue.heartbeat(&a, LEASE).await, id);
    assert_eq!(env.job(t, id).await, before);
    env.queue.complete(&b, json!("fresh")).await.unwrap();
    let j = env.job(t, id).await;
    assert_eq!(
        (j.state, j.result),
        (JobState::Completed, Some(json!("fresh")))
    );
    env.assert_counts_match(t).await;
}

async fn stale_worker_after_takeover_is_refused_and_changes_nothing(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(5)).await;
    let a = env.claim_one("worker-a").await;
    env.advance(LEASE + Duration::from_secs(1));
    let b = env.claim_one("worker-b").await;
    assert_eq!(b.job_id, id);
    assert_eq!(b.attempt, 2);
    assert_ne!(b.token, a.token);

    let before = env.job(t, id).await;
    assert_eq!(before.state, JobState::Running);
    assert_eq!(before.lease.as_ref().unwrap().token, b.token);
    assert_lease_lost(env.queue.heartbeat(&a, LEASE).await, id);
    assert_lease_lost(env.queue.complete(&a, json!("stale")).await, id);
    let effects = |tx: Transaction| async move {
        tx.add(&effect_key(id), 1);
        Ok(())
    };
    assert_lease_lost(
        env.queue.complete_with(&a, json!("stale"), effects).await,
        id,
    );
    let now = env.now();
    for outcome in [
        retry("stale"),
        Outcome::Fail {
            error: "stale".into(),
        },
        Outcome::Snooze { until: now },
        Outcome::Cancel {
            reason: "stale".into(),
        },
    ] {
        assert_lease_lost(env.queue.fail(&a, outcome).await, id);
    }
    assert_lease_lost(env.queue.release(&a).await, id);
    assert_eq!(
        env.job(t, id).await,
        before,
        "a refused report wrote something"
    );
    assert_eq!(effect_count(&env, id).await, 0);

    // B is unaffected and finishes; A is still refused afterwards.
    let hb = env.queue.heartbeat(&b, LEASE).await.unwrap();
    assert!(!hb.cancel_requested);
    env.queue.complete(&b, json!("b")).await.unwrap();
    assert_lease_lost(env.queue.complete(&a, json!("stale")).await, id);
    assert_lease_lost(env.queue.release(&a).await, id);
    let j = env.job(t, id).await;
    assert_eq!((j.state, j.result), (JobState::Completed, Some(json!("b"))));
    env.assert_counts_match(t).await;
}

async fn expired_lease_requeues_and_counts_the_attempt(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(3)).await;
    let first = env.claim_one("w").await;
    env.advance(LEASE);
    // Exactly at the lease end the job is rescued (expiry is inclusive) even by a claim that
    // cannot take it: it waits in the queue with its attempt spent.
    let other = ClaimRequest {
        kinds: Some(vec!["other".into()]),
        ..req("w", 10)
    };
    assert!(env.queue.claim(&other).await.unwrap().is_empty());
    let j = env.job(t, id).await;
    assert_eq!((j.state, j.attempt), (JobState::Queued, 1));
    assert!(j.lease.is_none());
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.errors[0].attempt, 1);
    let second = env.claim_one("w").await;
    assert_eq!((second.job_id, second.attempt), (id, 2));
    assert_ne!(second.token, first.token);
    assert_lease_lost(env.queue.complete(&first, json!(1)).await, id);
    env.queue.complete(&second, json!(2)).await.unwrap();
    env.assert_counts_match(t).await;
}

async fn job_whose_workers_keep_dying_is_dead_after_exactly_max_attempts(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("crashy").max_attempts(4)).await;
    let mut tokens = Vec::new();
    for round in 0..10 {
        let leases = env.claim("w", 10).await;
        if leases.is_empty() {
            break;
        }
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].attempt, round + 1);
        tokens.push(leases[0].token);
        // The worker dies: no heartbeat, no report.
        env.advance(LEASE + Duration::from_secs(1));
    }
    assert_eq!(tokens.len(), 4, "claimed exactly max_attempts times");
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 4, "every attempt had its own token");
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.dead_reason, Some(DeadReason::LeaseExpiredTooOften));
    assert_eq!(j.attempt, 4);
    assert_eq!(
        j.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(j.lease.is_none() && j.finished_at.is_some());
    env.advance(Duration::from_secs(3600));
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn cancel_of_a_waiting_job_is_immediate(env: Env) {
    let t = env.tenant();
    let queued = env.enqueue(t, job("a")).await;
    let scheduled = env
        .enqueue(t, job("a").run_at(env.now() + 60_000_000))
        .await;
    for id in [queued, scheduled] {
        assert_eq!(env.queue.cancel(t, id).await.unwrap(), JobState::Cancelled);
        let j = env.job(t, id).await;
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.cancel_reason, Some(CancelReason::Requested));
        assert_eq!(j.finished_at, Some(env.now()));
        // Cancelling again changes nothing.
        env.advance(Duration::from_secs(1));
        assert_eq!(env.queue.cancel(t, id).await.unwrap(), JobState::Cancelled);
        assert_eq!(env.job(t, id).await, j);
    }
    env.advance(Duration::from_secs(120));
    env.assert_nothing_claimable().await;
    let missing = env.queue.new_id();
    assert!(matches!(
        env.queue.cancel(t, missing).await,
        Err(Error::NotFound(m)) if m == missing
    ));
    env.assert_counts_match(t).await;
}

async fn cancel_during_a_run_is_reported_by_heartbeat_and_ends_cancelled(env: Env) {
    let t = env.tenant();
    // The worker answers the request with Cancel; another one keeps reporting Retry: both end
    // cancelled, neither is retried.
    for outcome in [
        Outcome::Cancel {
            reason: "asked to".into(),
        },
        retry("ignored the request"),
    ] {
        let id = env.enqueue(t, job("a").max_attempts(5)).await;
        let lease = env.claim_one("w").await;
        let hb = env.queue.heartbeat(&lease, LEASE).await.unwrap();
        assert!(!hb.cancel_requested);
        assert_eq!(env.queue.cancel(t, id).await.unwrap(), JobState::Running);
        let j = env.job(t, id).await;
        assert!(j.cancel_requested);
        assert_eq!(j.state, JobState::Running);
        let hb = env.queue.heartbeat(&lease, LEASE).await.unwrap();
        assert!(hb.cancel_requested);
        assert_eq!(
            env.queue.fail(&lease, outcome).await.unwrap(),
            JobState::Cancelled
        );
        let j = env.job(t, id).await;
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.cancel_reason, Some(CancelReason::Requested));
        env.advance(Duration::from_secs(3600));
        env.assert_nothing_claimable().await;
    }
    env.assert_counts_match(t).await;
}

async fn cancel_during_a_run_then_lease_expiry_ends_cancelled(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(5)).await;
    let lease = env.claim_one("w").await;
    env.queue.cancel(t, id).await.unwrap();
    // The worker died before learning it: the expiry ends the job instead of retrying it.
    env.advance(LEASE + Duration::from_secs(1));
    env.assert_nothing_claimable().await;
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.cancel_reason, Some(CancelReason::Requested));
    assert_eq!(j.attempt, 1);
    assert_lease_lost(env.queue.heartbeat(&lease, LEASE).await, id);
    env.assert_counts_match(t).await;
}

/// A cancel request is advisory while a job runs: a worker that finishes anyway completes it
/// (its work is done, and its effects committed with the completion).
async fn complete_after_a_cancel_request_completes(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("w").await;
    assert_eq!(env.queue.cancel(t, id).await.unwrap(), JobState::Running);
    env.queue.complete(&lease, json!("finished")).await.unwrap();
    let j = env.job(t, id).await;
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(j.result, Some(json!("finished")));
    assert_eq!(j.cancel_reason, None);
    // Cancelling a finished job leaves it as it is.
    assert_eq!(env.queue.cancel(t, id).await.unwrap(), JobState::Completed);
    assert_eq!(env.job(t, id).await, j);
    env.assert_counts_match(t).await;
}

async fn cancel_session_cancels_waiting_flags_running_and_spares_the_rest(env: Env) {
    let t = env.tenant();
    let s = env.queue.new_id();
    let s2 = env.queue.new_id();
    let done = env.enqueue(t, job("a").session(s).priority(0)).await;
    let done_lease = env.claim_one("w").await;
    assert_eq!(done_lease.job_id, done);
    env.queue.complete(&done_lease, json!(1)).await.unwrap();
    let running = env.enqueue(t, job("a").session(s).priority(0)).await;
    let run_lease = env.claim_one("w").await;
    assert_eq!(run_lease.job_id, running);
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(env.enqueue(t, job("b").session(s)).await);
    }
    waiting.push(
        env.enqueue(t, job("b").session(s).run_at(env.now() + 60_000_000))
            .await,
    );
    let other_session = env.enqueue(t, job("b").session(s2)).await;
    let no_session = env.enqueue(t, job("b")).await;
    let other_tenant = env.tenant();
    let foreign = env.enqueue(other_tenant, job("b").session(s)).await;

    let n = env.queue.cancel_session(t, s).await.unwrap();
    assert_eq!(n, 5, "4 waiting cancelled + 1 running flagged");
    for id in &waiting {
        let j = env.job(t, *id).await;
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.cancel_reason, Some(CancelReason::Requested));
    }
    let r = env.job(t, running).await;
    assert_eq!((r.state, r.cancel_requested), (JobState::Running, true));
    assert!(
        env.queue
            .heartbeat(&run_lease, LEASE)
            .await
            .unwrap()
            .cancel_requested
    );
    assert_eq!(env.job(t, done).await.state, JobState::Completed);
    assert_eq!(env.job(t, other_session).await.state, JobState::Queued);
    assert_eq!(env.job(t, no_session).await.state, JobState::Queued);
    assert_eq!(env.job(other_tenant, foreign).await.state, JobState::Queued);
    // Nothing is left to cancel.
    assert_eq!(env.queue.cancel_session(t, s).await.unwrap(), 0);
    env.assert_counts_match(t).await;
}

async fn supersede_cancels_the_older_waiting_job(env: Env) {
    let t = env.tenant();
    let first = env
        .enqueue(t, job("analyze").supersede_key("file.rs"))
        .await;
    let unrelated = env
        .enqueue(t, job("analyze").supersede_key("other.rs"))
        .await;
    let second = env
        .queue
        .enqueue(t, job("analyze").supersede_key("file.rs"))
        .await
        .unwrap();
    assert!(!second.duplicate);
    assert_eq!(second.superseded, Some(first));
    let old = env.job(t, first).await;
    assert_eq!(old.state, JobState::Cancelled);
    assert_eq!(old.cancel_reason, Some(CancelReason::Superseded));
    assert_eq!(old.superseded_by, Some(second.id));
    assert!(old.finished_at.is_some());
    // A scheduled (not yet due) job is superseded too.
    let third = env
        .queue
        .enqueue(
            t,
            job("analyze")
                .supersede_key("file.rs")
                .run_at(env.now() + 60_000_000),
        )
        .await
        .unwrap();
    assert_eq!(third.superseded, Some(second.id));
    assert_eq!(env.job(t, second.id).await.superseded_by, Some(third.id));
    // The same key in another tenant is another key.
    let other = env.tenant();
    let foreign = env
        .queue
        .enqueue(other, job("analyze").supersede_key("file.rs"))
        .await
        .unwrap();
    assert_eq!(foreign.superseded, None);
    assert_eq!(env.job(t, third.id).await.state, JobState::Scheduled);

    let mut got: Vec<_> = env.claim("w", 10).await.iter().map(|l| l.job_id).collect();
    got.sort();
    let mut want = vec![unrelated, foreign.id];
    want.sort();
    assert_eq!(got, want);
    env.assert_counts_match(t).await;
}

async fn supersede_leaves_a_running_older_job_alone(env: Env) {
    let t = env.tenant();
    let first = env.enqueue(t, job("analyze").supersede_key("k")).await;
    let lease = env.claim_one("w").await;
    let before = env.job(t, first).await;
    let second = env
        .queue
        .enqueue(t, job("analyze").supersede_key("k"))
        .await
        .unwrap();
    assert_eq!(second.superseded, None);
    assert_eq!(env.job(t, first).await, before);
    env.queue.complete(&lease, json!("old")).await.unwrap();
    assert_eq!(env.claim_one("w").await.job_id, second.id);
    // The newest job holds the key: a third supersedes neither the finished first job nor
    // the running second one.
    let third = env
        .queue
        .enqueue(t, job("analyze").supersede_key("k"))
        .await
        .unwrap();
    assert_eq!(third.superseded, None);
    assert_eq!(env.job(t, first).await.state, JobState::Completed);
    assert_eq!(env.job(t, second.id).await.state, JobState::Running);
    env.assert_counts_match(t).await;
}

async fn pause_tenant_stops_its_claims_until_resumed(env: Env) {
    let t = env.tenant();
    let other = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let theirs = env.enqueue(other, job("a")).await;
    env.queue.pause(t, None).await.unwrap();
    assert_eq!(
        env.queue.why_waiting(t, id).await.unwrap(),
        WaitReason::Paused { kind: None }
    );
    // The other tenant is not paused.
    assert_eq!(env.claim_one("w").await.job_id, theirs);
    env.assert_nothing_claimable().await;
    env.queue.resume(t, None).await.unwrap();
    assert_eq!(env.claim_one("w").await.job_id, id);
    env.assert_counts_match(t).await;
}

async fn pause_kind_stops_only_that_kind(env: Env) {
    let t = env.tenant();
    let a = env.enqueue(t, job("a").priority(0)).await;
    let b = env.enqueue(t, job("b").priority(200)).await;
    env.queue.pause(t, Some("a")).await.unwrap();
    assert_eq!(
        env.queue.why_waiting(t, a).await.unwrap(),
        WaitReason::Paused {
            kind: Some("a".into())
        }
    );
    assert!(matches!(
        env.queue.why_waiting(t, b).await.unwrap(),
        WaitReason::Queued { .. }
    ));
    let only = ClaimRequest {
        kinds: Some(vec!["a".into()]),
        ..req("w", 10)
    };
    assert!(env.queue.claim(&only).await.unwrap().is_empty());
    assert_eq!(env.claim_one("w").await.job_id, b);
    env.assert_nothing_claimable().await;
    env.queue.resume(t, Some("a")).await.unwrap();
    assert_eq!(env.queue.claim(&only).await.unwrap()[0].job_id, a);
    env.assert_counts_match(t).await;
}

async fn claim_with_kinds_returns_only_those_kinds(env: Env) {
    let t = env.tenant();
    let mut ids = std::collections::HashMap::new();
    for kind in ["a", "b", "c"] {
        for _ in 0..3 {
            ids.insert(env.enqueue(t, job(kind)).await, kind);
        }
    }
    let r = ClaimRequest {
        kinds: Some(vec!["a".into(), "c".into(), "nope".into()]),
        ..req("w", 100)
    };
    let leases = env.queue.claim(&r).await.unwrap();
    assert_eq!(leases.len(), 6);
    for l in &leases {
        assert!(l.kind == "a" || l.kind == "c", "claimed {}", l.kind);
        assert_eq!(ids[&l.job_id], l.kind.as_str());
    }
    assert!(env.queue.claim(&r).await.unwrap().is_empty());
    let rest = env.claim("w", 100).await;
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|l| l.kind == "b"));
    env.assert_counts_match(t).await;
}

async fn claim_follows_strict_priority_within_a_tenant(env: Env) {
    let t = env.tenant();
    // Enqueued worst first, across kinds; the clock moves so enqueue order is also run_at order.
    let mut want = Vec::new();
    for (kind, prio) in [
        ("a", 200),
        ("b", 50),
        ("c", 10),
        ("a", 10),
        ("b", 0),
        ("c", 255),
    ] {
        let id = env.enqueue(t, job(kind).priority(prio)).await;
        want.push((prio, id));
        env.advance(Duration::from_millis(1));
    }
    want.sort_by_key(|(p, _)| *p);
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let l = env.claim_one("w").await;
        got.push((env.job(t, l.job_id).await.priority, l.job_id));
    }
    let prios: Vec<u8> = got.iter().map(|(p, _)| *p).collect();
    assert_eq!(prios, vec![0, 10, 10, 50, 200, 255]);
    // Equal priorities: both 10s came out, before the 50.
    let mut ten: Vec<_> = got.iter().filter(|(p, _)| *p == 10).map(|x| x.1).collect();
    ten.sort();
    let mut want_ten: Vec<_> = want.iter().filter(|(p, _)| *p == 10).map(|x| x.1).collect();
    want_ten.sort();
    assert_eq!(ten, want_ten);

    // A batch claim takes the best ones: one priority-1 and one priority-5 of four 5s.
    let t2 = env.tenant();
    let mut fives = Vec::new();
    for _ in 0..4 {
        fives.push(env.enqueue(t2, job("x").priority(5)).await);
    }
    let best = env.enqueue(t2, job("y").priority(1)).await;
    let leases = env.claim("w", 2).await;
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().any(|l| l.job_id == best));
    assert!(leases.iter().any(|l| fives.contains(&l.job_id)));
    env.assert_counts_match(t).await;
    env.assert_counts_match(t2).await;
}

async fn idempotent_enqueue_returns_the_first_job(env: Env) {
    let t = env.tenant();
    let first = env
        .queue
        .enqueue(t, job("a").idempotency_key("req-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let again = env
        .queue
        .enqueue(
            t,
            NewJob::new("a", json!({"different": true})).idempotency_key("req-1"),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, first.id);
    assert_eq!(env.job(t, first.id).await.args, json!({"kind": "a"}));
    // Still a duplicate once the first job has finished (until it is pruned).
    let lease = env.claim_one("w").await;
    env.queue.complete(&lease, json!(null)).await.unwrap();
    let later = env
        .queue
        .enqueue(t, job("a").idempotency_key("req-1"))
        .await
        .unwrap();
    assert_eq!((later.id, later.duplicate), (first.id, true));
    let all = env.list_all(t, &ListFilter::default(), 10).await;
    assert_eq!(all.len(), 1);
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn enqueue_batch_is_all_or_nothing(env: Env) {
    let t = env.tenant();
    let out = env
        .queue
        .enqueue_batch(t, vec![job("a"), job("b"), job("c").idempotency_key("k")])
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    for e in &out {
        assert!(!e.duplicate);
        assert_eq!(env.job(t, e.id).await.state, JobState::Queued);
    }
    let bad = env
        .queue
        .enqueue_batch(t, vec![job("d"), job("e").max_attempts(0)])
        .await;
    assert_eq!(invalid_field(bad), "max_attempts");
    assert_eq!(env.list_all(t, &ListFilter::default(), 10).await.len(), 3);
    // A batch repeating an idempotency key returns the existing job for it.
    let again = env
        .queue
        .enqueue_batch(t, vec![job("f"), job("c").idempotency_key("k")])
        .await
        .unwrap();
    assert!(!again[0].duplicate);
    assert_eq!((again[1].id, again[1].duplicate), (out[2].id, true));
    assert_eq!(env.list_all(t, &ListFilter::default(), 10).await.len(), 4);
    env.assert_counts_match(t).await;
}

/// A batch reads its jobs' idempotency and supersede entries, and admission control's counts,
/// ahead of its loop: a later job of the batch must still see what an earlier one wrote.
async fn a_batch_sees_its_own_keys_and_counts_its_own_jobs(env: Env) {
    let t = env.tenant();
    let stored = env.enqueue(t, job("a").idempotency_key("old")).await;
    let waiting = env.enqueue(t, job("a").supersede_key("s2")).await;
    let out = env
        .queue
        .enqueue_batch(
            t,
            vec![
                job("a").idempotency_key("k1"),
                job("b").idempotency_key("k1"),
                job("c").supersede_key("s1"),
                job("d").supersede_key("s1"),
                job("e").supersede_key("s2"),
                job("f").idempotency_key("old"),
                job("g").supersede_key("s1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!((out[1].id, out[1].duplicate), (out[0].id, true));
    assert_eq!(out[3].superseded, Some(out[2].id));
    assert_eq!(out[4].superseded, Some(waiting));
    assert_eq!((out[5].id, out[5].duplicate), (stored, true));
    assert_eq!(out[6].superseded, Some(out[3].id));
    assert_eq!(env.job(t, out[2].id).await.state, JobState::Cancelled);
    assert_eq!(env.job(t, out[3].id).await.state, JobState::Cancelled);
    assert_eq!(env.job(t, out[3].id).await.superseded_by, Some(out[6].id));
    assert_eq!(env.job(t, waiting).await.state, JobState::Cancelled);
    env.assert_counts_match(t).await;

    // Admission counts what the batch itself enqueues and supersedes.
    let u = limited_tenant(&env, Some(4), Some(1_000)).await;
    env.enqueue(u, job("a").supersede_key("x")).await;
    env.enqueue(u, job("a")).await;
    // 2 unfinished; the first job of the batch replaces one of them: 2 + 3 - 1 = 4.
    let fits = vec![job("a").supersede_key("x"), job("a"), job("a")];
    env.queue.enqueue_batch(u, fits).await.unwrap();
    let over = env.queue.enqueue_batch(u, vec![job("a")]).await;
    assert!(
        matches!(
            over,
            Err(Error::Refused {
                limit: "max_queued",
                max: 4,
                current: 4
            })
        ),
        "{over:?}"
    );
    // A batch is refused at the job that crosses the limit, counting the jobs before it.
    let w = limited_tenant(&env, Some(2), None).await;
    let over = env
        .queue
        .enqueue_batch(w, vec![job("a"), job("a"), job("a")])
        .await;
    assert!(
        matches!(
            over,
            Err(Error::Refused {
                limit: "max_queued",
                max: 2,
                current: 2
            })
        ),
        "{over:?}"
    );
    let v = limited_tenant(&env, None, Some(1_000)).await;
    let big = || NewJob::new("a", json!("x".repeat(400)));
    let over = env.queue.enqueue_batch(v, vec![big(), big(), big()]).await;
    assert!(
        matches!(
            over,
            Err(Error::Refused {
                limit: "max_queued_bytes",
                max: 1_000,
                current: 804
            })
        ),
        "{over:?}"
    );
    env.queue
        .enqueue_batch(v, vec![big(), big()])
        .await
        .unwrap();
    env.assert_counts_match(u).await;
    env.assert_counts_match(v).await;
}

/// A new tenant under admission limits.
async fn limited_tenant(
    env: &Env,
    max_queued: Option<u64>,
    max_queued_bytes: Option<u64>,
) -> uuid::Uuid {
    let t = env.tenant();
    let config = TenantQueueConfig {
        max_queued,
        max_queued_bytes,
        ..TenantQueueConfig::default()
    };
    env.queue.set_tenant_config(t, &config).await.unwrap();
    t
}

/// A job record that does not decode (a newer version's, during a rolling deploy) is passed by:
/// it failed every claim that chose it, and so every claim that sampled its tenant.
async fn a_record_that_does_not_decode_does_not_stop_claims(env: Env) {
    let t = env.tenant();
    let bad = env.enqueue(t, job("a")).await;
    let other = env.tenant();
    let good = env.enqueue(other, job("a")).await;
    let mine = env.enqueue(t, job("a")).await;
    let key = pack(&("t", t, "q", "job", bad));
    env.overwrite(&key, b"{\"written by\": \"a newer version\"}")
        .await;
    // Every other job is claimed, the other tenant's and its own tenant's.
    let leases = env.claim("w", 10).await;
    let mut got: Vec<_> = leases.iter().map(|l| l.job_id).collect();
    got.sort();
    let mut want = vec![good, mine];
    want.sort();
    assert_eq!(got, want);
    for lease in &leases {
        env.queue.complete(lease, json!(null)).await.unwrap();
    }
    let later = env.enqueue(t, job("a")).await;
    assert_eq!(env.claim_one("w").await.job_id, later);
    // So is a running one whose lease expires (the claim that rescues expired leases reads it).
    let running = pack(&("t", t, "q", "job", later));
    env.overwrite(&running, b"[]").await;
    env.advance(LEASE + Duration::from_secs(1));
    let last = env.enqueue(t, job("a")).await;
    assert_eq!(env.claim_one("w").await.job_id, last);
    // The record is left as it was, for a binary that can read it.
    let tx = env.raw.create_transaction().unwrap();
    let value = tx.get(&key, false).await.unwrap();
    assert_eq!(
        value.as_deref(),
        Some(&b"{\"written by\": \"a newer version\"}"[..])
    );
}

/// A full chunk of finished jobs whose records do not decode, ahead of others in the index:
/// prune leaves them as they are and still removes the others (it used to fail at the first).
async fn prune_passes_by_records_that_do_not_decode(env: Env) {
    let t = env.tenant();
    let ids = enqueue_n(&env, t, 105).await;
    let mut done = 0;
    while done < ids.len() {
        let leases = env.claim("w", 50).await;
        assert!(!leases.is_empty());
        for lease in &leases {
            env.queue.complete(lease, json!(null)).await.unwrap();
        }
        done += leases.len();
    }
    // Finished at one time, so the index orders them by id: the first 100 are damaged.
    let mut sorted = ids.clone();
    sorted.sort();
    for id in &sorted[..100] {
        env.overwrite(&pack(&("t", t, "q", "job", *id)), b"{}")
            .await;
    }
    env.advance(steward_queue::DEFAULT_FINISHED_RETENTION + Duration::from_secs(1));
    let stats = env.queue.prune(t).await.unwrap();
    assert_eq!(stats.finished, 5);
    for id in &sorted[100..] {
        assert!(env.queue.get(t, *id).await.unwrap().is_none());
    }
    let tx = env.raw.create_transaction().unwrap();
    for id in &sorted[..100] {
        let value = tx
            .get(&pack(&("t", t, "q", "job", *id)), false)
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some(&b"{}"[..]));
    }
}

async fn enqueue_in_commits_with_the_callers_transaction(env: Env) {
    let t = env.tenant();
    let id = env.queue.new_id();
    let new = job("a").id(id);
    let (queue, new_ref) = (&env.queue, &new);
    let marker = pack(&("test-caller-write", id));
    let marker_ref = &marker;
    let out = env
        .db
        .transact(|tx, _| async move {
            tx.set(marker_ref, b"mine");
            queue.enqueue_in(&tx, t, new_ref).await
        })
        .await
        .unwrap();
    assert_eq!(out.id, id);
    assert_eq!(env.job(t, id).await.state, JobState::Queued);
    let tx = env.raw.create_transaction().unwrap();
    assert_eq!(
        tx.get(&marker, false).await.unwrap(),
        Some(b"mine".to_vec())
    );
    drop(tx);

    // The caller's transaction fails after the enqueue: no job.
    let gone = env.queue.new_id();
    let new = job("a").id(gone);
    let new_ref = &new;
    let r: Result<(), Error> = env
        .db
        .transact(|tx, _| async move {
            queue.enqueue_in(&tx, t, new_ref).await?;
            Err(Error::NotFound(gone))
        })
        .await;
    assert!(matches!(r, Err(Error::NotFound(_))));
    assert!(env.queue.get(t, gone).await.unwrap().is_none());
    assert_eq!(env.list_all(t, &ListFilter::default(), 10).await.len(), 1);
    env.assert_counts_match(t).await;
}

async fn validation_errors_name_the_field(env: Env) {
    let t = env.tenant();
    let q = &env.queue;
    let long = "k".repeat(300);
    for (bad, field) in [
        (job(""), "kind"),
        (job("has space"), "kind"),
        (job("*"), "kind"),
        (job(&"k".repeat(200)), "kind"),
        (job("a").max_attempts(0), "max_attempts"),
        (job("a").max_attempts(1001), "max_attempts"),
        (job("a").timeout(Duration::from_millis(1)), "timeout"),
        (
            job("a").timeout(Duration::from_secs(2 * 24 * 3600)),
            "timeout",
        ),
        (job("a").idempotency_key(""), "idempotency_key"),
        (job("a").idempotency_key(long.as_str()), "idempotency_key"),
        (job("a").supersede_key(""), "supersede_key"),
        (job("a").supersede_key(long.as_str()), "supersede_key"),
    ] {
        assert_eq!(
            invalid_field(q.enqueue(t, bad.clone()).await),
            field,
            "{bad:?}"
        );
    }
    assert_eq!(invalid_field(q.enqueue_batch(t, vec![]).await), "jobs");
    assert_eq!(
        invalid_field(q.enqueue_batch(t, vec![job("a"); MAX_BATCH + 1]).await),
        "jobs"
    );
    assert_eq!(invalid_field(q.claim(&req("w", 0)).await), "max");
    assert_eq!(
        invalid_field(q.claim(&req("w", MAX_BATCH + 1)).await),
        "max"
    );
    let short = ClaimRequest {
        lease: Duration::from_millis(10),
        ..req("w", 1)
    };
    assert_eq!(invalid_field(q.claim(&short).await), "lease");
    let none = ClaimRequest {
        kinds: Some(vec![]),
        ..req("w", 1)
    };
    assert_eq!(invalid_field(q.claim(&none).await), "kinds");
    let long_name = req(&"w".repeat(300), 1);
    assert_eq!(invalid_field(q.claim(&long_name).await), "worker");
    assert_eq!(
        invalid_field(q.list(t, &ListFilter::default(), None, 0).await),
        "limit"
    );
    assert_eq!(
        invalid_field(q.list(t, &ListFilter::default(), Some("zz"), 10).await),
        "cursor"
    );
    assert_eq!(invalid_field(q.pause(t, Some("*")).await), "kind");
    assert_eq!(invalid_field(q.pause(t, Some("")).await), "kind");

    // Nothing was written by any refused call.
    assert!(env.list_all(t, &ListFilter::default(), 10).await.is_empty());
    env.assert_nothing_claimable().await;

    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("w").await;
    assert_eq!(
        invalid_field(q.heartbeat(&lease, Duration::from_millis(1)).await),
        "extend"
    );
    assert_eq!(
        env.job(t, id).await.lease.unwrap().expires_at,
        lease.expires_at
    );

    // Configuration bounds name their field too.
    let bad_config = QueueConfig {
        retry: RetryPolicy {
            jitter: 2.0,
            ..RetryPolicy::default()
        },
        ..QueueConfig::default()
    };
    let r = steward_queue::Queue::new(env.db.clone(), bad_config);
    assert_eq!(invalid_field(r), "retry.jitter");
    let bad_config = QueueConfig {
        finished_retention: Duration::from_secs(1),
        ..QueueConfig::default()
    };
    let r = steward_queue::Queue::new(env.db.clone(), bad_config);
    assert_eq!(invalid_field(r), "queue.finished_retention");
    env.assert_counts_match(t).await;
}

async fn args_over_the_limit_are_refused_and_at_the_limit_survive_failures(env: Env) {
    let t = env.tenant();
    // A JSON string of n chars serializes to n + 2 bytes.
    let at_limit = json!("x".repeat(MAX_ARGS_BYTES - 2));
    let over = json!("x".repeat(MAX_ARGS_BYTES - 1));
    assert_eq!(
        invalid_field(env.queue.enqueue(t, NewJob::new("big", over)).await),
        "args"
    );
    assert!(env.list_all(t, &ListFilter::default(), 10).await.is_empty());

    // Every other field as large as allowed, of characters JSON escapes to six bytes.
    let worst = "\u{1}".repeat(steward_queue::MAX_KEY_LEN);
    let new = NewJob::new("k".repeat(steward_queue::MAX_KIND_LEN), at_limit.clone())
        .max_attempts(8)
        .idempotency_key(worst.as_str())
        .supersede_key(worst.as_str())
        .session(env.queue.new_id());
    let id = env.enqueue(t, new).await;
    let worker = req(&worst, 1);
    // Its worker fails with huge error messages (multi-byte characters, quotes and control
    // characters, which JSON escapes), again and again, then dies: every report and the rescue
    // of its lease must still fit the record.
    let huge = "é\"\u{1}".repeat(40_000);
    for attempt in 1..=7u32 {
        let lease = env.queue.claim(&worker).await.unwrap().remove(0);
        assert_eq!((lease.job_id, lease.attempt), (id, attempt));
        assert_eq!(lease.args, at_limit);
        if attempt == 7 {
            env.advance(LEASE + Duration::from_secs(1));
            continue;
        }
        let r = env
            .queue
            .fail(
                &lease,
                Outcome::Retry {
                    error: huge.clone(),
                    delay: Some(Duration::from_secs(1)),
                },
            )
            .await;
        assert_eq!(r.unwrap(), JobState::Scheduled, "attempt {attempt}");
        env.advance(Duration::from_secs(1));
    }
    // Other tenants' jobs are not blocked by it.
    let other = env.tenant();
    let small = env.enqueue(other, job("small")).await;
    let worker = req(&worst, 10);
    let leases = env.queue.claim(&worker).await.unwrap();
    let mut got: Vec<_> = leases.iter().map(|l| l.job_id).collect();
    got.sort();
    let mut want = vec![id, small];
    want.sort();
    assert_eq!(got, want);
    let j = env.job(t, id).await;
    assert_eq!(j.attempt, 8);
    assert_eq!(j.errors.len(), MAX_KEPT_ERRORS);
    assert_eq!(j.errors.last().unwrap().attempt, 7);
    assert!(
        j.errors[0].message.len() < huge.len(),
        "messages are truncated"
    );
    let lease = leases.iter().find(|l| l.job_id == id).unwrap();
    env.queue.complete(lease, json!("done")).await.unwrap();
    assert_eq!(env.job(t, id).await.state, JobState::Completed);
    env.assert_counts_match(t).await;
}

async fn complete_with_a_result_over_the_limit_is_refused_and_changes_nothing(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a")).await;
    let lease = env.claim_one("w").await;
    let before = env.job(t, id).await;
    let r = env
        .queue
        .complete(
            &lease,
            json!("r".repeat(steward_store::limits::MAX_VALUE_SIZE)),
        )
        .await;
    assert_eq!(invalid_field(r), "result");
    assert_eq!(env.job(t, id).await, before);
    env.queue.complete(&lease, json!("small")).await.unwrap();
    assert_eq!(env.job(t, id).await.state, JobState::Completed);
    env.assert_counts_match(t).await;
}

async fn complete_with_commits_effects_exactly_once(env: Env) {
    let t = env.tenant();
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(env.enqueue(t, job("effect")).await);
    }
    let total = pack(&("test-effects-total", t));
    let total_ref = &total;
    let mut leases: Vec<Lease> = Vec::new();
    while leases.len() < ids.len() {
        let got = env.claim("w", 7).await;
        assert!(!got.is_empty(), "jobs left unclaimed");
        leases.extend(got);
    }
    for lease in &leases {
        let id = lease.job_id;
        env.queue
            .complete_with(lease, json!({"id": id}), |tx| async move {
                tx.add(&effect_key(id), 1);
                tx.add(total_ref, 1);
                Ok(())
            })
            .await
            .unwrap();
    }
    for id in &ids {
        assert_eq!(effect_count(&env, *id).await, 1, "job {id}");
        assert_eq!(env.job(t, *id).await.state, JobState::Completed);
    }
    let tx = env.raw.create_transaction().unwrap();
    assert_eq!(
        decode_counter(tx.get(&total, false).await.unwrap().as_deref()),
        40
    );
    if let Some(stats) = env.db.fault_stats() {
        assert!(
            stats.unknown_applied > 0,
            "the fault backend must report commits that did apply: {stats:?}"
        );
    }
    env.assert_counts_match(t).await;
}

async fn replay_gives_a_dead_job_fresh_attempts(env: Env) {
    let t = env.tenant();
    let id = env.enqueue(t, job("a").max_attempts(2)).await;
    let queued = env.enqueue(t, job("b").priority(255)).await;
    let lease = env.claim_one("w").await;
    assert_eq!(lease.job_id, id);
    env.queue
        .fail(&lease, Outcome::Fail { error: "x".into() })
        .await
        .unwrap();
    env.advance(Duration::from_secs(5));
    env.queue.replay(t, id).await.unwrap();
    let j = env.job(t, id).await;
    assert_eq!((j.state, j.attempt), (JobState::Queued, 0));
    assert_eq!((j.dead_reason, j.finished_at), (None, None));
    assert_eq!(j.run_at, env.now());
    let again = env.claim_one("w").await;
    assert_eq!((again.job_id, again.attempt), (id, 1));
    assert_lease_lost(env.queue.complete(&lease, json!(0)).await, id);
    // Only dead jobs replay.
    for not_dead in [id, queued] {
        assert!(matches!(
            env.queue.replay(t, not_dead).await,
            Err(Error::InvalidState { job, .. }) if job == not_dead
        ));
    }
    let missing = env.queue.new_id();
    assert!(matches!(
        env.queue.replay(t, missing).await,
        Err(Error::NotFound(_))
    ));
    env.assert_counts_match(t).await;
}

async fn replay_dead_replays_up_to_the_limit_of_a_kind(env: Env) {
    let t = env.tenant();
    let mut dead = Vec::new();
    for kind in ["a", "a", "a", "a", "a", "b", "b"] {
        dead.push(env.enqueue(t, job(kind).max_attempts(1)).await);
    }
    let alive = env
        .enqueue(t, job("a").run_at(env.now() + 3_600_000_000))
        .await;
    for l in env.claim("w", 100).await {
        env.queue
            .fail(&l, Outcome::Fail { error: "x".into() })
            .await
            .unwrap();
    }
    let dead_count = |c: &std::collections::BTreeMap<JobState, i64>| c[&JobState::Dead];
    assert_eq!(dead_count(&env.queue.counts(t).await.unwrap()), 7);
    assert_eq!(env.queue.replay_dead(t, Some("a"), 3).await.unwrap(), 3);
    let counts = env.queue.counts(t).await.unwrap();
    assert_eq!((counts[&JobState::Dead], counts[&JobState::Queued]), (4, 3));
    let replayed = env.claim("w", 100).await;
    assert_eq!(replayed.len(), 3);
    assert!(replayed.iter().all(|l| l.kind == "a"));
    assert_eq!(env.queue.replay_dead(t, None, 100).await.unwrap(), 4);
    assert_eq!(env.queue.replay_dead(t, None, 100).await.unwrap(), 0);
    let counts = env.queue.counts(t).await.unwrap();
    assert_eq!(
        (
            counts[&JobState::Dead],
            counts[&JobState::Queued],
            counts[&JobState::Running]
        ),
        (0, 4, 3)
    );
    assert_eq!(env.job(t, alive).await.state, JobState::Scheduled);
    env.assert_counts_match(t).await;
}

async fn tenants_do_not_see_each_others_jobs(env: Env) {
    let a = env.tenant();
    let b = env.tenant();
    let id = env.enqueue(a, job("a").idempotency_key("same")).await;
    let before = env.job(a, id).await;
    assert!(env.queue.get(b, id).await.unwrap().is_none());
    assert!(matches!(env.queue.cancel(b, id).await, Err(Error::NotFound(x)) if x == id));
    assert!(matches!(
        env.queue.replay(b, id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        env.queue.why_waiting(b, id).await,
        Err(Error::NotFound(_))
    ));
    assert!(env.list_all(b, &ListFilter::default(), 10).await.is_empty());
    assert!(env
        .list_all(
            b,
            &ListFilter {
                state: Some(JobState::Queued),
                ..ListFilter::default()
            },
            10
        )
        .await
        .is_empty());
    assert!(env.queue.counts(b).await.unwrap().values().all(|n| *n == 0));
    // Cancelling B's whole "session" or pausing B does not reach A's job.
    env.queue.pause(b, None).await.unwrap();
    // The same idempotency key in B is B's own.
    let theirs = env
        .queue
        .enqueue(b, job("a").idempotency_key("same"))
        .await
        .unwrap();
    assert!(!theirs.duplicate);
    assert_ne!(theirs.id, id);
    assert_eq!(env.job(a, id).await, before);
    // A lease forged with B's tenant for A's job is refused.
    let lease = env.claim_one("w").await;
    assert_eq!(lease.job_id, id);
    let forged = Lease {
        tenant: b,
        ..lease.clone()
    };
    assert!(matches!(
        env.queue.complete(&forged, json!(0)).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(env.job(a, id).await.state, JobState::Running);
    env.assert_counts_match(a).await;
    env.assert_counts_match(b).await;
}

/// Half the commits apply and then report `commit_unknown_result`, so most calls run their body
/// again after their own commit: each must still do its work once and answer as if it had
/// run once (same leases, same counts, no error for what it did itself).
async fn calls_retried_after_an_applied_commit_unknown_result_answer_once(env: Env) {
    let seed = env.seed;
    let env = env.with_faults(FaultConfig {
        unknown_applied: 0.5,
        ..FaultConfig::none(seed)
    });
    let t = env.tenant();
    for round in 0..8 {
        let key = format!("file-{round}");
        let first = env.enqueue(t, job("a").supersede_key(key.as_str())).await;
        let second = env
            .queue
            .enqueue(t, job("a").supersede_key(key.as_str()))
            .await
            .unwrap();
        assert_eq!(second.superseded, Some(first), "round {round}");

        // The claim's leases are not stranded by a retry.
        let lease = env.claim_one("w").await;
        assert_eq!(lease.job_id, second.id);
        assert_eq!(
            env.job(t, second.id).await.lease.unwrap().token,
            lease.token
        );
        env.queue
            .fail(&lease, Outcome::Fail { error: "x".into() })
            .await
            .unwrap();
        env.queue.replay(t, second.id).await.unwrap();
        assert_eq!(env.job(t, second.id).await.state, JobState::Queued);
        let lease = env.claim_one("w").await;
        assert_eq!((lease.job_id, lease.attempt), (second.id, 1));
        env.queue.complete(&lease, json!(round)).await.unwrap();

        let session = env.queue.new_id();
        for _ in 0..3 {
            env.enqueue(t, job("s").session(session)).await;
        }
        assert_eq!(env.queue.cancel_session(t, session).await.unwrap(), 3);

        for _ in 0..3 {
            env.enqueue(t, job("d").max_attempts(1)).await;
        }
        for l in env.claim("w", 10).await {
            assert_eq!(l.kind, "d");
            env.queue
                .fail(&l, Outcome::Fail { error: "x".into() })
                .await
                .unwrap();
        }
        assert_eq!(env.queue.replay_dead(t, Some("d"), 2).await.unwrap(), 2);
        let counts = env.queue.counts(t).await.unwrap();
        assert_eq!((counts[&JobState::Dead], counts[&JobState::Queued]), (1, 2));
        assert_eq!(env.queue.replay_dead(t, None, 10).await.unwrap(), 1);
        for l in env.claim("w", 10).await {
            env.queue
                .fail(&l, Outcome::Cancel { reason: "x".into() })
                .await
                .unwrap();
        }
        env.assert_nothing_claimable().await;
    }
    // 8 completed + 8 superseded + 24 session + 24 handler-cancelled jobs.
    env.advance(steward_queue::DEFAULT_FINISHED_RETENTION + Duration::from_secs(1));
    let stats = env.queue.prune(t).await.unwrap();
    assert_eq!((stats.finished, stats.dead), (64, 0));
    assert!(env
        .list_all(t, &ListFilter::default(), 100)
        .await
        .is_empty());
    env.assert_counts_match(t).await;
    let stats = env.db.fault_stats().unwrap();
    assert!(stats.unknown_applied > 50, "{stats:?}");
}

async fn complete_many_completes_each_held_lease_and_refuses_only_the_lost_one(env: Env) {
    let t = env.tenant();
    let ids: Vec<_> = enqueue_n(&env, t, 4).await;
    let mut leases = env.claim("a", 4).await;
    assert_eq!(leases.len(), 4);
    leases.sort_by_key(|l| l.job_id);
    // The first job's lease is taken over by worker b after it expired.
    env.advance(LEASE + Duration::from_secs(1));
    let stolen = leases[0].clone();
    for l in &leases[1..] {
        env.queue.heartbeat(l, LEASE * 10).await.unwrap();
    }
    let b = env.claim_one("b").await;
    assert_eq!(b.job_id, stolen.job_id);
    let before = env.job(t, stolen.job_id).await;

    let done: Vec<_> = leases
        .iter()
        .map(|l| (l.clone(), json!(l.job_id)))
        .collect();
    let out = env.queue.complete_many(&done).await.unwrap();
    assert_eq!(out.len(), 4);
    assert_lease_lost(
        out[0].as_ref().map_err(clone_err).map(|_| ()),
        stolen.job_id,
    );
    for (l, r) in leases.iter().zip(&out).skip(1) {
        assert!(r.is_ok(), "{r:?}");
        let j = env.job(t, l.job_id).await;
        assert_eq!(j.state, JobState::Completed);
        assert_eq!(j.result, Some(json!(l.job_id)));
    }
    assert_eq!(
        env.job(t, stolen.job_id).await,
        before,
        "the lost lease wrote nothing"
    );
    // The same call again answers the same, and changes nothing.
    let again = env.queue.complete_many(&done).await.unwrap();
    assert!(again[0].is_err() && again[1..].iter().all(Result::is_ok));
    env.queue.complete(&b, json!("b")).await.unwrap();
    assert!(ids.contains(&b.job_id));
    let many = vec![(b.clone(), json!(1)); MAX_BATCH + 1];
    assert_eq!(invalid_field(env.queue.complete_many(&many).await), "done");
    let big = vec![(b.clone(), json!("x".repeat(100_000))); 50];
    assert_eq!(invalid_field(env.queue.complete_many(&big).await), "done");
    env.assert_nothing_claimable().await;
    env.assert_counts_match(t).await;
}

async fn complete_many_retried_after_an_applied_commit_unknown_result_completes_once(env: Env) {
    let seed = env.seed;
    let env = env.with_faults(FaultConfig {
        unknown_applied: 0.5,
        ..FaultConfig::none(seed)
    });
    let t = env.tenant();
    for round in 0..6 {
        enqueue_n(&env, t, 10).await;
        let leases = env.claim("w", 10).await;
        assert_eq!(leases.len(), 10, "round {round}");
        let done: Vec<_> = leases.iter().map(|l| (l.clone(), json!(round))).collect();
        let out = env.queue.complete_many(&done).await.unwrap();
        assert!(out.iter().all(Result::is_ok), "round {round}: {out:?}");
        env.assert_nothing_claimable().await;
    }
    let counts = env.queue.counts(t).await.unwrap();
    assert_eq!(counts[&JobState::Completed], 60);
    env.assert_counts_match(t).await;
    assert!(env.db.fault_stats().unwrap().unknown_applied > 5);
}

async fn enqueue_n(env: &Env, t: uuid::Uuid, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(env.enqueue(t, job("a")).await);
    }
    ids
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::LeaseLost { job } => Error::LeaseLost { job: *job },
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}
