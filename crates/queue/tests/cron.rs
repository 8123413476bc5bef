//! Cron without a leader: racing replicas fire each tick at most once and record it exactly
//! once; overlap and missed-tick policies; system schedules fan out once per tenant. Time moves
//! only through the store's manual clock.

// Helpers outside #[test] functions are not covered by clippy's test exemption.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use steward_queue::{
    ClaimRequest, JobState, MissedPolicy, NewJob, OverlapPolicy, Queue, QueueConfig, RefusedBy,
    ScheduleSpec, Scheduler, TenantQueueConfig, TickOutcome, FANOUT_KIND, SYSTEM_TENANT,
};
use steward_store::tuple::pack;
use steward_store::{Database, FaultConfig, ManualClock, OpenOptions};
use uuid::Uuid;

/// 2026-03-02 10:00:30 UTC, half a minute past a minute boundary.
const START: i64 = 1_772_445_630_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn setup(faults: Option<u64>) -> (Queue, ManualClock) {
    let clock = ManualClock::new(START);
    let db = Database::memory_with(OpenOptions {
        clock: clock.shared(),
        seed: Some(1),
        ..OpenOptions::default()
    });
    let db = match faults {
        Some(seed) => db.with_faults(FaultConfig::chaos(seed)),
        None => db,
    };
    (
        Queue::with_seed(db, QueueConfig::default(), 7).unwrap(),
        clock,
    )
}

fn template() -> NewJob {
    NewJob::new("expire_auth_tokens", serde_json::json!({}))
}

async fn every_minute(
    s: &Scheduler<'_>,
    tenant: Option<Uuid>,
    overlap: OverlapPolicy,
    missed: MissedPolicy,
) {
    s.upsert(
        ScheduleSpec::new(tenant, "tokens", "* * * * *", template())
            .overlap(overlap)
            .missed(missed),
    )
    .await
    .unwrap();
}

/// Claims and completes every queued job of the tenant.
async fn drain(q: &Queue) -> usize {
    let mut n = 0;
    loop {
        let leases = q
            .claim(&ClaimRequest {
                worker: "w".into(),
                kinds: None,
                max: 50,
                lease: Duration::from_secs(30),
            })
            .await
            .unwrap();
        if leases.is_empty() {
            return n;
        }
        for l in &leases {
            q.complete(l, serde_json::json!(null)).await.unwrap();
            n += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_fire_each_tick_once_and_record_it_once() {
    for faults in [None, Some(11), Some(12)] {
        let (q, clock) = setup(faults);
        let tenant = Uuid::from_u128(0xA);
        let s = Scheduler::new(&q);
        every_minute(
            &s,
            Some(tenant),
            OverlapPolicy::Allow,
            MissedPolicy::Coalesce,
        )
        .await;
        let mut fired = Vec::new();
        for _ in 0..5 {
            clock.advance(MINUTE);
            // Four replicas tick at the same moment.
            let results = futures::future::join_all((0..4).map(|_| {
                let s = Scheduler::new(&q);
                async move { s.tick().await.unwrap() }
            }))
            .await;
            let this_minute: Vec<_> = results.into_iter().flatten().collect();
            // A replica whose commit reported an unknown result may not learn that it handled
            // the tick; the store's records below are the truth.
            if faults.is_none() {
                assert_eq!(
                    this_minute.len(),
                    1,
                    "one replica handles it: {this_minute:?}"
                );
            } else {
                assert!(this_minute.len() <= 1, "{this_minute:?}");
            }
            fired.extend(this_minute.into_iter().map(|(_, r)| r));
        }
        let ticks = s.ticks(Some(tenant), "tokens").await.unwrap();
        assert_eq!(ticks.len(), 5, "each tick recorded exactly once");
        assert!(
            fired.iter().all(|r| ticks.contains(r)),
            "reported ticks are recorded"
        );
        assert!(ticks
            .windows(2)
            .all(|w| w[1].fire_time - w[0].fire_time == 60_000_000));
        for t in &ticks {
            let TickOutcome::Fired { job } = t.outcome else {
                panic!("expected fired: {t:?}");
            };
            assert!(q.get(tenant, job).await.unwrap().is_some());
        }
        let jobs = q.counts(tenant).await.unwrap();
        assert_eq!(
            jobs[&JobState::Queued],
            5,
            "five jobs, no duplicates ({faults:?})"
        );
    }
}

#[tokio::test]
async fn a_tick_is_skipped_while_the_previous_run_is_unfinished() {
    let (q, clock) = setup(None);
    let tenant = Uuid::from_u128(0xB);
    let s = Scheduler::new(&q);
    every_minute(
        &s,
        Some(tenant),
        OverlapPolicy::Skip,
        MissedPolicy::Coalesce,
    )
    .await;
    clock.advance(MINUTE);
    let first = s.tick().await.unwrap();
    assert!(matches!(first[0].1.outcome, TickOutcome::Fired { .. }));
    clock.advance(MINUTE);
    let second = s.tick().await.unwrap();
    let TickOutcome::Fired { job } = first[0].1.outcome else {
        unreachable!()
    };
    assert_eq!(
        second[0].1.outcome,
        TickOutcome::Skipped {
            previous: Some(job),
            refused: None
        }
    );
    assert_eq!(drain(&q).await, 1);
    clock.advance(MINUTE);
    let third = s.tick().await.unwrap();
    assert!(
        matches!(third[0].1.outcome, TickOutcome::Fired { .. }),
        "fires again once the previous run finished"
    );
}

#[tokio::test]
async fn ticks_missed_during_downtime_fire_once_or_not_at_all() {
    for (policy, expect_fired) in [(MissedPolicy::Coalesce, 1), (MissedPolicy::Drop, 0)] {
        let (q, clock) = setup(None);
        let tenant = Uuid::from_u128(0xC);
        let s = Scheduler::new(&q);
        s.upsert(
            ScheduleSpec::new(Some(tenant), "tokens", "*/5 * * * *", template())
                .overlap(OverlapPolicy::Allow)
                .missed(policy),
        )
        .await
        .unwrap();
        // From 10:00:30 to 10:52:30 without any scheduler: ticks 10:05 ... 10:50 were missed
        // (the latest is 2.5 min late, past the one-minute misfire grace).
        clock.advance(MINUTE * 52);
        let handled = s.tick().await.unwrap();
        assert_eq!(handled.len(), 10, "{policy:?}");
        let fired = handled
            .iter()
            .filter(|(_, r)| matches!(r.outcome, TickOutcome::Fired { .. }))
            .count();
        let coalesced = handled
            .iter()
            .filter(|(_, r)| r.outcome == TickOutcome::Coalesced)
            .count();
        assert_eq!(
            (fired, coalesced),
            (expect_fired, 10 - expect_fired),
            "{policy:?}"
        );
        assert_eq!(s.ticks(Some(tenant), "tokens").await.unwrap().len(), 10);
        // The schedule continues with the next tick (10:55), which is on time and fires.
        assert!(s.tick().await.unwrap().is_empty());
        clock.advance(Duration::from_secs(151));
        let next = s.tick().await.unwrap();
        assert_eq!(next.len(), 1);
        assert!(
            matches!(next[0].1.outcome, TickOutcome::Fired { .. }),
            "{policy:?}"
        );
    }
}

#[tokio::test]
async fn a_long_downtime_is_caught_up_in_bounded_transactions() {
    let (q, clock) = setup(None);
    let tenant = Uuid::from_u128(0xD);
    let s = Scheduler::new(&q);
    every_minute(
        &s,
        Some(tenant),
        OverlapPolicy::Allow,
        MissedPolicy::Coalesce,
    )
    .await;
    clock.advance(MINUTE * 1000);
    let handled = s.tick().await.unwrap();
    assert_eq!(handled.len(), 1000);
    let fires: Vec<i64> = handled.iter().map(|(_, r)| r.fire_time).collect();
    assert!(
        fires.windows(2).all(|w| w[1] - w[0] == 60_000_000),
        "no gap, no repeat"
    );
    let fired = handled
        .iter()
        .filter(|(_, r)| matches!(r.outcome, TickOutcome::Fired { .. }))
        .count();
    assert_eq!(fired, 1);
}

#[tokio::test]
async fn a_system_schedule_fans_out_once_per_tenant() {
    let (q, clock) = setup(None);
    let s = Scheduler::new(&q);
    every_minute(&s, None, OverlapPolicy::Skip, MissedPolicy::Coalesce).await;
    clock.advance(MINUTE);
    let handled = s.tick().await.unwrap();
    let TickOutcome::Fired { job } = handled[0].1.outcome else {
        panic!("{handled:?}");
    };
    let fanout = q.get(SYSTEM_TENANT, job).await.unwrap().unwrap();
    assert_eq!(fanout.kind, FANOUT_KIND);
    let fire = fanout.args["fire_time"].as_i64().unwrap();
    let template: NewJob = serde_json::from_value(fanout.args["template"].clone()).unwrap();
    let tenants: Vec<Uuid> = (1..=5).map(Uuid::from_u128).collect();
    // A tenant at its queue limit loses its job; the others get theirs.
    let full = Uuid::from_u128(6);
    let limited = TenantQueueConfig {
        max_queued: Some(1),
        ..TenantQueueConfig::default()
    };
    q.set_tenant_config(full, &limited).await.unwrap();
    q.enqueue(full, NewJob::new("other", serde_json::json!({})))
        .await
        .unwrap();
    // So does one whose queue settings do not decode.
    let broken = Uuid::from_u128(7);
    let settings = pack(&("t", broken, "q", "cfg"));
    let settings = &settings;
    q.db()
        .run(|tx, _| async move {
            tx.set(settings, b"not settings");
            Ok(())
        })
        .await
        .unwrap();
    // (A repeated tenant and the system tenant are skipped.)
    let page: Vec<Uuid> = [&tenants[..], &[full, broken, tenants[0], SYSTEM_TENANT]].concat();
    let done = s.fan_out("tokens", fire, &template, &page).await.unwrap();
    assert_eq!(done.enqueued, 5);
    assert_eq!(done.refused, vec![(full, RefusedBy::MaxQueued)]);
    assert_eq!(done.unreadable.len(), 1);
    assert_eq!(done.unreadable[0].0, broken);
    // A retried fan-out (the worker crashed after the first page) adds nothing.
    let again = s.fan_out("tokens", fire, &template, &page).await.unwrap();
    assert_eq!((again.enqueued, again.refused.len()), (0, 1));
    assert_eq!(q.counts(broken).await.unwrap()[&JobState::Queued], 0);
    for t in &tenants {
        assert_eq!(q.counts(*t).await.unwrap()[&JobState::Queued], 1);
    }
    assert_eq!(q.counts(full).await.unwrap()[&JobState::Queued], 1);
    // Only the fan-out job itself.
    assert_eq!(q.counts(SYSTEM_TENANT).await.unwrap()[&JobState::Queued], 1);
}

/// More schedules are due than one page holds, and the first page's records cannot be read:
/// one tick still fires every schedule that can fire.
#[tokio::test]
async fn a_tick_pages_past_a_full_page_of_schedules_it_cannot_handle() {
    let (q, clock) = setup(None);
    let s = Scheduler::new(&q);
    // The due index orders schedules of one fire time by tenant: the broken ones come first.
    let broken: Vec<Uuid> = (1..=100).map(Uuid::from_u128).collect();
    let healthy: Vec<Uuid> = (1001..=1050).map(Uuid::from_u128).collect();
    for t in broken.iter().chain(&healthy) {
        every_minute(&s, Some(*t), OverlapPolicy::Skip, MissedPolicy::Coalesce).await;
    }
    for t in &broken {
        let key = pack(&("t", *t, "q", "cron", "tokens"));
        q.db()
            .run(|tx, _| {
                let key = key.clone();
                async move {
                    tx.set(&key, b"not a schedule");
                    Ok(())
                }
            })
            .await
            .unwrap();
    }
    clock.advance(MINUTE);
    let handled = s.tick().await.unwrap();
    assert_eq!(handled.len(), healthy.len(), "{handled:?}");
    assert!(handled
        .iter()
        .all(|(_, r)| matches!(r.outcome, TickOutcome::Fired { .. })));
    for t in &healthy {
        assert_eq!(q.counts(*t).await.unwrap()[&JobState::Queued], 1);
    }
    // Nothing is left to handle but the broken ones.
    assert!(s.tick().await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() {
    let (q, _clock) = setup(None);
    let s = Scheduler::new(&q);
    for (expr, zone, field) in [
        ("not cron", "UTC", "expression"),
        ("* * * * *", "Nowhere/Else", "time_zone"),
    ] {
        let e = s
            .upsert(ScheduleSpec::new(None, "x", expr, template()).time_zone(zone))
            .await
            .unwrap_err();
        assert!(
            matches!(e, steward_queue::Error::Invalid { field: f, .. } if f == field),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn list_pages_a_tenants_schedules_by_name_and_never_another_tenants() {
    let (q, _clock) = setup(None);
    let s = Scheduler::new(&q);
    let (a, b) = (Uuid::from_u128(11), Uuid::from_u128(12));
    for name in ["c", "a", "b"] {
        s.upsert(ScheduleSpec::new(Some(a), name, "* * * * *", template()))
            .await
            .unwrap();
    }
    s.upsert(ScheduleSpec::new(
        Some(b),
        "theirs",
        "* * * * *",
        template(),
    ))
    .await
    .unwrap();
    s.upsert(ScheduleSpec::new(None, "system", "* * * * *", template()))
        .await
        .unwrap();
    let names = |v: Vec<steward_queue::CronSchedule>| -> Vec<String> {
        v.into_iter().map(|c| c.name).collect()
    };
    assert_eq!(
        names(s.list(Some(a), None, 10).await.unwrap()),
        ["a", "b", "c"]
    );
    assert_eq!(names(s.list(Some(a), None, 2).await.unwrap()), ["a", "b"]);
    assert_eq!(names(s.list(Some(a), Some("b"), 2).await.unwrap()), ["c"]);
    assert_eq!(names(s.list(Some(b), None, 10).await.unwrap()), ["theirs"]);
    assert_eq!(names(s.list(None, None, 10).await.unwrap()), ["system"]);
    assert!(matches!(
        s.list(Some(a), None, 0).await,
        Err(steward_queue::Error::Invalid { field: "limit", .. })
    ));
}
