//! The default system schedules: installed once, left alone when unchanged, updated or removed
//! by configuration; and a tick fans out one job per tenant through the fan-out handler.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use steward_models::{Models, ModelsConfig, NewTenant, Plan, TenantKind};
use steward_queue::{
    JobState, NewJob, Queue, QueueConfig, Scheduler, TenantQueueConfig, TickOutcome, SYSTEM_TENANT,
};
use steward_store::{Database, ManualClock, OpenOptions};
use steward_workers::config::{SchedulesConfig, OFF};
use steward_workers::handlers::{builtin_registry, Services};
use steward_workers::scheduler::install_default_schedules;
use steward_workers::JobContext;

const T0: i64 = 1_700_000_000_000_000;

async fn setup() -> (Arc<Queue>, Arc<Models>, ManualClock) {
    let clock = ManualClock::new(T0);
    let db = Database::memory_with(OpenOptions {
        clock: clock.shared(),
        seed: Some(3),
        ..OpenOptions::default()
    });
    let models = Models::open(db.clone(), ModelsConfig::for_tests())
        .await
        .unwrap();
    let queue = Queue::with_seed(db, QueueConfig::default(), 5).unwrap();
    (Arc::new(queue), Arc::new(models), clock)
}

#[tokio::test]
async fn defaults_are_installed_once_and_follow_the_configuration() {
    let (queue, _models, clock) = setup().await;
    let s = Scheduler::new(&queue);
    install_default_schedules(&queue, &SchedulesConfig::default())
        .await
        .unwrap();
    let first = s.list(None, None, 100).await.unwrap();
    let names: Vec<_> = first.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "compact_audit_log",
            "expire_auth_tokens",
            "prune_jobs",
            "summarize_idle_sessions"
        ]
    );
    // Each schedule's jobs carry their kind's timeout and attempts, not the queue's defaults.
    for c in &first {
        let d = steward_workers::kinds::defaults(&c.template.kind).unwrap();
        assert_eq!(
            (c.template.timeout, c.template.max_attempts),
            (d.timeout, d.max_attempts),
            "{}",
            c.name
        );
    }
    let compact = first
        .iter()
        .find(|c| c.name == "compact_audit_log")
        .unwrap();
    assert_eq!(compact.template.timeout, Duration::from_secs(1800));
    // A restart later (same configuration) changes nothing, not even the next ticks.
    clock.advance(Duration::from_secs(3600 * 5));
    install_default_schedules(&queue, &SchedulesConfig::default())
        .await
        .unwrap();
    assert_eq!(s.list(None, None, 100).await.unwrap(), first);
    // Turned off: removed; a new expression: replaced.
    let changed = SchedulesConfig {
        prune_jobs: OFF.into(),
        expire_auth_tokens: "0 */15 * * * *".into(),
        ..SchedulesConfig::default()
    };
    install_default_schedules(&queue, &changed).await.unwrap();
    assert!(s.get(None, "prune_jobs").await.unwrap().is_none());
    assert_eq!(
        s.get(None, "expire_auth_tokens")
            .await
            .unwrap()
            .unwrap()
            .expression,
        "0 */15 * * * *"
    );
}

#[tokio::test]
async fn a_system_tick_fans_out_one_job_per_tenant() {
    let (queue, models, clock) = setup().await;
    let mut tenants = Vec::new();
    for n in 0..3 {
        tenants.push(
            models
                .tenants()
                .create(NewTenant::new(
                    format!("t{n}"),
                    TenantKind::Organization,
                    Plan::Pro,
                ))
                .await
                .unwrap()
                .id,
        );
    }
    // The last tenant is at its queue limit: it loses this tick, the others do not.
    let full = tenants[2];
    let limit = TenantQueueConfig {
        max_queued: Some(1),
        ..TenantQueueConfig::default()
    };
    queue.set_tenant_config(full, &limit).await.unwrap();
    queue
        .enqueue(full, NewJob::new("other", serde_json::json!({})))
        .await
        .unwrap();
    install_default_schedules(&queue, &SchedulesConfig::default())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(301));
    let ticks = Scheduler::new(&queue).tick().await.unwrap();
    let (_, record) = ticks
        .iter()
        .find(|(name, _)| name == "expire_auth_tokens")
        .unwrap();
    let TickOutcome::Fired { job } = record.outcome else {
        panic!("{ticks:?}");
    };
    let fanout = queue.get(SYSTEM_TENANT, job).await.unwrap().unwrap();
    let registry = builtin_registry(&Services {
        queue: queue.clone(),
        models: models.clone(),
        llm: None,
        summarize: Default::default(),
    })
    .unwrap();
    let ctx = JobContext::detached(SYSTEM_TENANT, job);
    let out = registry
        .run_direct(ctx.clone(), &fanout.kind, fanout.args.clone())
        .await
        .unwrap();
    assert_eq!(out["tenants"], 3);
    assert_eq!(out["enqueued"], 2);
    assert_eq!(out["refused"], 1);
    // A retried fan-out (the worker died after enqueueing) adds nothing.
    let again = registry
        .run_direct(ctx, &fanout.kind, fanout.args)
        .await
        .unwrap();
    assert_eq!(again["enqueued"], 0);
    for t in tenants {
        assert_eq!(queue.counts(t).await.unwrap()[&JobState::Queued], 1);
    }
}
