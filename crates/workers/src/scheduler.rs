//! The cron scheduler loop and the default system schedules.
//!
//! Any number of replicas may run [`run_scheduler`]: `steward_queue::Scheduler::tick` records
//! every tick exactly once (fired, skipped or coalesced) and fires it at most once, whoever
//! calls it. System schedules fan out one job per tenant (see
//! [`crate::handlers::CronFanOut`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use steward_queue::{NewJob, Queue, ScheduleSpec, Scheduler, TickOutcome};

use crate::config::{SchedulesConfig, OFF};
use crate::error::Result;
use crate::kinds::{self, SummarizeIdleArgs, TenantMaintenanceArgs};
use crate::metrics as m;

/// How often the scheduler looks for due ticks.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// The default system schedules as configured: `(name, expression or "off", job template)`.
#[must_use]
pub fn default_schedules(config: &SchedulesConfig) -> Vec<(&'static str, String, NewJob)> {
    let maintenance = || serde_json::json!(TenantMaintenanceArgs {});
    let idle = serde_json::json!(SummarizeIdleArgs {
        idle_after_minutes: config.summarize_idle_after_minutes,
    });
    vec![
        (
            kinds::EXPIRE_AUTH_TOKENS,
            config.expire_auth_tokens.clone(),
            kinds::new_job(kinds::EXPIRE_AUTH_TOKENS, maintenance()),
        ),
        (
            kinds::COMPACT_AUDIT_LOG,
            config.compact_audit_log.clone(),
            kinds::new_job(kinds::COMPACT_AUDIT_LOG, maintenance()),
        ),
        (
            kinds::SUMMARIZE_IDLE_SESSIONS,
            config.summarize_idle_sessions.clone(),
            kinds::new_job(kinds::SUMMARIZE_IDLE_SESSIONS, idle),
        ),
        (
            kinds::PRUNE_JOBS,
            config.prune_jobs.clone(),
            kinds::new_job(kinds::PRUNE_JOBS, maintenance()),
        ),
    ]
}

/// Creates or updates the default system schedules (and deletes those set to `"off"`).
/// An unchanged schedule is not written at all (its next tick stays), so every
/// replica may do it at start-up.
///
/// # Errors
/// Store errors; [`crate::Error::Invalid`] for a bad expression.
pub async fn install_default_schedules(queue: &Queue, config: &SchedulesConfig) -> Result<()> {
    let scheduler = Scheduler::new(queue);
    for (name, expression, template) in default_schedules(config) {
        if expression == OFF {
            if scheduler.delete(None, name).await? {
                tracing::info!(schedule = name, "default schedule turned off");
            }
            continue;
        }
        // An unchanged schedule is not written: replicas starting together do not conflict.
        if let Some(existing) = scheduler.get(None, name).await? {
            if existing.expression == expression
                && existing.time_zone == "UTC"
                && existing.template == template
            {
                continue;
            }
        }
        scheduler
            .upsert(ScheduleSpec::new(None, name, expression, template))
            .await?;
    }
    Ok(())
}

/// Handles due ticks every [`TICK_INTERVAL`] until `shutdown` resolves. Errors are logged and
/// retried at the next interval (a tick is never lost: it stays due until handled).
pub async fn run_scheduler(queue: Arc<Queue>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("scheduler started");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        match Scheduler::new(&queue).tick().await {
            Ok(recorded) => {
                for (name, record) in recorded {
                    let outcome = match record.outcome {
                        TickOutcome::Fired { .. } => "fired",
                        TickOutcome::Skipped { .. } => "skipped",
                        TickOutcome::Coalesced => "coalesced",
                    };
                    metrics::counter!(m::CRON_TICKS, "outcome" => outcome).increment(1);
                    tracing::info!(schedule = %name, outcome, fire_time = record.fire_time, "cron tick");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cron tick failed; retrying"),
        }
    }
    tracing::info!("scheduler stopped");
}
