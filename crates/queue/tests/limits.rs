//! Fairness between tenants, per-tenant concurrency limits and admission control.

// Helpers outside #[test] functions are not covered by clippy's test exemption.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use steward_queue::{
    ClaimRequest, Error, JobState, NewJob, Queue, QueueConfig, TenantQueueConfig, WaitReason,
};
use steward_store::{Database, FaultConfig, ManualClock, OpenOptions};
use uuid::Uuid;

fn queue(faults: Option<u64>) -> Queue {
    queue_with(QueueConfig::default(), faults)
}

fn queue_with(config: QueueConfig, faults: Option<u64>) -> Queue {
    let clock = ManualClock::new(1_772_445_600_000_000);
    let db = Database::memory_with(OpenOptions {
        clock: clock.shared(),
        seed: Some(3),
        ..OpenOptions::default()
    });
    let db = match faults {
        Some(seed) => db.with_faults(FaultConfig::chaos(seed)),
        None => db,
    };
    Queue::with_seed(db, config, 5).unwrap()
}

fn claim_of(max: usize) -> ClaimRequest {
    ClaimRequest {
        worker: "w".into(),
        kinds: None,
        max,
        lease: Duration::from_secs(60),
    }
}

async fn enqueue_n(q: &Queue, tenant: Uuid, n: usize) {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new("noop", serde_json::json!({ "i": i })))
        .collect();
    for chunk in jobs.chunks(500) {
        q.enqueue_batch(tenant, chunk.to_vec()).await.unwrap();
    }
}

#[tokio::test]
async fn a_flooding_tenant_cannot_crowd_out_small_ones_within_a_claim() {
    let q = queue(None);
    let flood = Uuid::from_u128(1);
    enqueue_n(&q, flood, 2000).await;
    let small: Vec<Uuid> = (100..110).map(Uuid::from_u128).collect();
    for t in &small {
        enqueue_n(&q, *t, 2).await;
    }
    let leases = q.claim(&claim_of(32)).await.unwrap();
    assert_eq!(leases.len(), 32);
    let mut per_tenant: HashMap<Uuid, usize> = HashMap::new();
    for l in &leases {
        *per_tenant.entry(l.tenant).or_default() += 1;
    }
    for t in &small {
        assert_eq!(
            per_tenant.get(t),
            Some(&2),
            "every small tenant's jobs in the first claim"
        );
    }
    assert_eq!(
        per_tenant[&flood], 12,
        "the flood gets what the others left"
    );
}

#[tokio::test]
async fn claims_are_shared_in_proportion_to_tenant_weights() {
    let q = queue(None);
    let heavy = Uuid::from_u128(7);
    let light = Uuid::from_u128(8);
    q.set_tenant_config(
        heavy,
        &TenantQueueConfig {
            weight: 3,
            ..TenantQueueConfig::default()
        },
    )
    .await
    .unwrap();
    enqueue_n(&q, heavy, 500).await;
    enqueue_n(&q, light, 500).await;
    let mut got: HashMap<Uuid, usize> = HashMap::new();
    for _ in 0..20 {
        for l in q.claim(&claim_of(8)).await.unwrap() {
            *got.entry(l.tenant).or_default() += 1;
        }
    }
    assert_eq!((got[&heavy], got[&light]), (120, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_running_holds_across_concurrent_workers() {
    for faults in [None, Some(21)] {
        let q = Arc::new(queue(faults));
        let tenant = Uuid::from_u128(9);
        q.set_tenant_config(
            tenant,
            &TenantQueueConfig {
                max_running: Some(3),
                ..TenantQueueConfig::default()
            },
        )
        .await
        .unwrap();
        enqueue_n(&q, tenant, 40).await;
        let mut completed = 0;
        while completed < 40 {
            // Six workers claim at once; the limit must hold whatever they race.
            let claims = futures::future::join_all((0..6).map(|_| {
                let q = Arc::clone(&q);
                async move { q.claim(&claim_of(4)).await.unwrap() }
            }))
            .await;
            let leases: Vec<_> = claims.into_iter().flatten().collect();
            let running = q.counts(tenant).await.unwrap()[&JobState::Running];
            assert!(
                running <= 3,
                "{running} running with max_running = 3 ({faults:?})"
            );
            assert!(leases.len() <= 3);
            assert!(!leases.is_empty(), "free slots are used ({faults:?})");
            for l in &leases {
                q.complete(l, serde_json::json!(null)).await.unwrap();
                completed += 1;
            }
        }
        let counts = q.counts(tenant).await.unwrap();
        assert_eq!(counts[&JobState::Completed], 40);
        assert_eq!(counts[&JobState::Running], 0);
    }
}

#[tokio::test]
async fn a_job_waiting_on_the_concurrency_limit_says_so() {
    let q = queue(None);
    let tenant = Uuid::from_u128(10);
    q.set_tenant_config(
        tenant,
        &TenantQueueConfig {
            max_running: Some(1),
            ..TenantQueueConfig::default()
        },
    )
    .await
    .unwrap();
    enqueue_n(&q, tenant, 2).await;
    let first = q.claim(&claim_of(5)).await.unwrap();
    assert_eq!(first.len(), 1);
    let page = q
        .list(
            tenant,
            &steward_queue::ListFilter {
                state: Some(JobState::Queued),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    let waiting = page.jobs[0].id;
    assert_eq!(
        q.why_waiting(tenant, waiting).await.unwrap(),
        WaitReason::AtConcurrencyLimit { running: 1, max: 1 }
    );
    // A lease that expires gives its slot back.
    q.release(&first[0]).await.unwrap();
    assert_eq!(q.claim(&claim_of(5)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn enqueue_beyond_max_queued_or_bytes_is_refused_clearly() {
    let q = queue(None);
    let tenant = Uuid::from_u128(11);
    q.set_tenant_config(
        tenant,
        &TenantQueueConfig {
            max_queued: Some(3),
            ..TenantQueueConfig::default()
        },
    )
    .await
    .unwrap();
    enqueue_n(&q, tenant, 3).await;
    let e = q
        .enqueue(tenant, NewJob::new("noop", serde_json::json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                limit: "max_queued",
                max: 3,
                current: 3
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_queued"));
    // A batch that would cross the limit is refused whole.
    let other = Uuid::from_u128(12);
    q.set_tenant_config(
        other,
        &TenantQueueConfig {
            max_queued: Some(3),
            ..TenantQueueConfig::default()
        },
    )
    .await
    .unwrap();
    let batch = (0..4)
        .map(|_| NewJob::new("noop", serde_json::json!({})))
        .collect();
    assert!(matches!(
        q.enqueue_batch(other, batch).await,
        Err(Error::Refused { .. })
    ));
    assert_eq!(q.counts(other).await.unwrap()[&JobState::Queued], 0);
    // Finishing a job makes room.
    let lease = q.claim(&claim_of(1)).await.unwrap().remove(0);
    q.complete(&lease, serde_json::json!(null)).await.unwrap();
    q.enqueue(tenant, NewJob::new("noop", serde_json::json!({})))
        .await
        .unwrap();

    let bytes = Uuid::from_u128(13);
    q.set_tenant_config(
        bytes,
        &TenantQueueConfig {
            max_queued_bytes: Some(1000),
            ..TenantQueueConfig::default()
        },
    )
    .await
    .unwrap();
    let big = serde_json::json!("x".repeat(600));
    q.enqueue(bytes, NewJob::new("noop", big.clone()))
        .await
        .unwrap();
    let e = q
        .enqueue(bytes, NewJob::new("noop", big))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                limit: "max_queued_bytes",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn tenant_config_is_validated_naming_the_field() {
    let q = queue(None);
    for (cfg, field) in [
        (
            TenantQueueConfig {
                weight: 0,
                ..TenantQueueConfig::default()
            },
            "weight",
        ),
        (
            TenantQueueConfig {
                max_running: Some(0),
                ..TenantQueueConfig::default()
            },
            "max_running",
        ),
        (
            TenantQueueConfig {
                max_queued: Some(0),
                ..TenantQueueConfig::default()
            },
            "max_queued",
        ),
    ] {
        let e = q
            .set_tenant_config(Uuid::from_u128(1), &cfg)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Invalid { field: f, .. } if f == field),
            "{e:?}"
        );
    }
    assert_eq!(
        q.tenant_config(Uuid::from_u128(99)).await.unwrap(),
        TenantQueueConfig::default()
    );
}

#[tokio::test]
async fn tenants_whose_jobs_all_run_do_not_take_a_claims_sample() {
    // Two tenants per claim; twenty-five tenants each have one job running (their doorbells
    // stay in the active index until a claim finds them empty) and one tenant has a job queued.
    // Every claim must find that job, whatever point of the index it starts from (a claim
    // looks at up to 16 x tenants_per_claim = 32 entries).
    let config = QueueConfig {
        tenants_per_claim: 2,
        ..QueueConfig::default()
    };
    let q = queue_with(config, None);
    let busy: Vec<Uuid> = (1..=25).map(Uuid::from_u128).collect();
    for t in &busy {
        enqueue_n(&q, *t, 1).await;
    }
    let mut running = Vec::new();
    while running.len() < busy.len() {
        let got = q.claim(&claim_of(8)).await.unwrap();
        assert!(!got.is_empty(), "the busy tenants' jobs are claimable");
        running.extend(got);
    }
    for round in 0..30 {
        let waiting = Uuid::from_u128(1_000 + round);
        enqueue_n(&q, waiting, 1).await;
        let got = q.claim(&claim_of(1)).await.unwrap();
        assert_eq!(
            got.iter().map(|l| l.tenant).collect::<Vec<_>>(),
            vec![waiting],
            "round {round}"
        );
        q.complete(&got[0], serde_json::Value::Null).await.unwrap();
    }
    // Once their jobs are done, a claim retires the idle tenants' doorbells as it passes.
    for l in &running {
        q.complete(l, serde_json::Value::Null).await.unwrap();
    }
    for _ in 0..10 {
        assert!(q.claim(&claim_of(1)).await.unwrap().is_empty());
    }
    let tx = q.db().create_transaction().unwrap();
    let active = tx
        .get_range_all(&steward_store::RangeOption::prefix(
            &steward_store::tuple::pack(&("g", "qactive")),
        ))
        .await
        .unwrap();
    assert!(active.is_empty(), "{} doorbells left", active.len());
}

/// The jobs of `tenant` among `leases`.
fn of(tenant: Uuid, leases: &[steward_queue::Lease]) -> usize {
    leases.iter().filter(|l| l.tenant == tenant).count()
}

/// Enqueues 3 jobs in each of 300 tenants (far more than a claim samples), then claims until
/// every tenant's fresh entry has been served (about 260 jobs stay queued).
async fn busy_queue() -> Queue {
    let q = queue(None);
    for t in 1000..1300 {
        enqueue_n(&q, Uuid::from_u128(t), 3).await;
    }
    // A claim of 32 serves 16 fresh entries (its `tenants_per_claim`), one job each, in half
    // of the claim; the sample of busy tenants gets the other half.
    // One claim more for the last few, whose shares are larger.
    let per_claim = QueueConfig::default().tenants_per_claim;
    let claims = 300_usize.div_ceil(per_claim) + 1;
    for _ in 0..claims {
        q.claim(&claim_of(2 * per_claim)).await.unwrap();
    }
    q
}

#[tokio::test]
async fn a_tenant_whose_queue_was_empty_is_served_by_the_next_claim() {
    let q = busy_queue().await;
    let fresh = Uuid::from_u128(7);
    enqueue_n(&q, fresh, 3).await;
    // A random sample of 16 of 301 tenants would hold it about once in 19 claims.
    let first = q.claim(&claim_of(1)).await.unwrap();
    assert_eq!(of(fresh, &first), 1, "{first:?}");
    // Once served it waits its turn like the others: only an enqueue into its empty queue
    // puts it first again.
    let mut next = Vec::new();
    for _ in 0..10 {
        next.extend(q.claim(&claim_of(1)).await.unwrap());
    }
    assert!(of(fresh, &next) <= 1, "served first again: {next:?}");
}

#[tokio::test]
async fn a_fresh_tenant_still_obeys_its_pause_and_concurrency_limit() {
    let q = busy_queue().await;
    let (paused, limited) = (Uuid::from_u128(7), Uuid::from_u128(8));
    q.pause(paused, None).await.unwrap();
    q.set_tenant_config(
        limited,
        &TenantQueueConfig {
            max_running: Some(1),
            ..TenantQueueConfig::default()
        },
    )
    .await
    .unwrap();
    enqueue_n(&q, paused, 2).await;
    enqueue_n(&q, limited, 5).await;
    let first = q.claim(&claim_of(10)).await.unwrap();
    assert_eq!(of(paused, &first), 0, "{first:?}");
    assert_eq!(of(limited, &first), 1, "{first:?}");
    // Draining everything else runs no more of them while the first runs and the pause holds.
    let mut rest = Vec::new();
    loop {
        let got = q.claim(&claim_of(100)).await.unwrap();
        if got.is_empty() {
            break;
        }
        rest.extend(got);
    }
    assert_eq!((of(paused, &rest), of(limited, &rest)), (0, 0));
    q.resume(paused, None).await.unwrap();
    let after = q.claim(&claim_of(100)).await.unwrap();
    assert_eq!(of(paused, &after), 2, "{after:?}");
}

#[tokio::test]
async fn a_fresh_tenant_with_many_jobs_does_not_take_a_whole_claim() {
    let q = queue(None);
    let (flood, fresh) = (Uuid::from_u128(1), Uuid::from_u128(2));
    enqueue_n(&q, flood, 1000).await;
    // The flood's own fresh entry goes with the first claim.
    assert_eq!(of(flood, &q.claim(&claim_of(16)).await.unwrap()), 16);
    enqueue_n(&q, fresh, 100).await;
    let got = q.claim(&claim_of(16)).await.unwrap();
    // Half the claim as fresh, then the other half shared equally between the two.
    assert_eq!((of(fresh, &got), of(flood, &got)), (12, 4), "{got:?}");
}
