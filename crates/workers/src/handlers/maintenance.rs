//! Maintenance kinds: the cron fan-out, job pruning, and finding idle sessions to summarize.

use std::time::Duration;

use serde::Deserialize;
use steward_queue::{NewJob, Scheduler, SYSTEM_TENANT};
use uuid::Uuid;

use super::{models_error, queue_error, Services};
use crate::handler::{Handler, JobContext, JobError};
use crate::kinds::{
    self, CompactAuditLogResult, ExpireAuthTokensResult, FanOutResult, PruneJobsResult,
    SummarizeIdleArgs, SummarizeIdleResult, SummarizeSessionArgs, TenantMaintenanceArgs,
};

/// Tenants read per page of the directory.
const DIRECTORY_PAGE: usize = 500;
/// Sessions looked at per run of `summarize_idle_sessions`.
const IDLE_SCAN_LIMIT: usize = 2000;
/// Sessions idle for longer than this (beyond the idle threshold) are left alone: they were
/// summarized when they went idle.
const IDLE_LOOKBACK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The arguments the queue's cron gives a fan-out job.
#[derive(Debug, Deserialize)]
pub struct FanOutArgs {
    schedule: String,
    fire_time: i64,
    template: NewJob,
}

/// `steward.cron_fanout`: enqueues a system schedule's job once per tenant of the directory.
/// Each tenant's job id derives from (schedule, tick, tenant), so a retried fan-out enqueues
/// only what is missing.
#[derive(Debug)]
pub struct CronFanOut {
    s: Services,
}

impl CronFanOut {
    /// Over `s`.
    #[must_use]
    pub fn new(s: Services) -> Self {
        CronFanOut { s }
    }
}

impl Handler for CronFanOut {
    type Args = FanOutArgs;
    type Output = FanOutResult;

    fn kind(&self) -> &'static str {
        kinds::CRON_FANOUT
    }

    async fn run(&self, ctx: JobContext, a: FanOutArgs) -> Result<FanOutResult, JobError> {
        if ctx.tenant != SYSTEM_TENANT {
            return Err(JobError::fail("a fan-out runs only in the system tenant"));
        }
        let scheduler = Scheduler::new(&self.s.queue);
        let mut result = FanOutResult::default();
        let mut after = None;
        loop {
            let page = self
                .s
                .models
                .tenants()
                .list_ids(after, DIRECTORY_PAGE)
                .await
                .map_err(models_error)?;
            result.tenants += page.items.len();
            let done = scheduler
                .fan_out(&a.schedule, a.fire_time, &a.template, &page.items)
                .await
                .map_err(queue_error)?;
            result.enqueued += done.enqueued;
            result.refused += done.refused.len();
            result.unreadable += done.unreadable.len();
            for (tenant, error) in &done.unreadable {
                tracing::error!(
                    schedule = %a.schedule,
                    %tenant,
                    %error,
                    "a tenant's queue records do not decode; it misses a system schedule's tick"
                );
            }
            for (tenant, by) in &done.refused {
                tracing::warn!(
                    schedule = %a.schedule,
                    %tenant,
                    refused_by = ?by,
                    "a tenant's queue limits refused its job of a system schedule's tick"
                );
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(result)
    }
}

/// `prune_jobs`: removes the tenant's finished and dead jobs past the queue's retention.
#[derive(Debug)]
pub struct PruneJobs {
    s: Services,
}

impl PruneJobs {
    /// Over `s`.
    #[must_use]
    pub fn new(s: Services) -> Self {
        PruneJobs { s }
    }
}

impl Handler for PruneJobs {
    type Args = TenantMaintenanceArgs;
    type Output = PruneJobsResult;

    fn kind(&self) -> &'static str {
        kinds::PRUNE_JOBS
    }

    async fn run(
        &self,
        ctx: JobContext,
        _: TenantMaintenanceArgs,
    ) -> Result<PruneJobsResult, JobError> {
        let stats = self.s.queue.prune(ctx.tenant).await.map_err(queue_error)?;
        Ok(PruneJobsResult {
            finished: stats.finished,
            dead: stats.dead,
        })
    }
}

/// `summarize_idle_sessions`: enqueues `summarize_session` for each of the tenant's sessions
/// that has been idle for the threshold and has activity its summary does not cover yet. The
/// idempotency key names the session and its last activity, so running this again (every ten
/// minutes) enqueues nothing new for a session that did not change.
#[derive(Debug)]
pub struct SummarizeIdleSessions {
    s: Services,
}

impl SummarizeIdleSessions {
    /// Over `s`.
    #[must_use]
    pub fn new(s: Services) -> Self {
        SummarizeIdleSessions { s }
    }
}

impl Handler for SummarizeIdleSessions {
    type Args = SummarizeIdleArgs;
    type Output = SummarizeIdleResult;

    fn kind(&self) -> &'static str {
        kinds::SUMMARIZE_IDLE_SESSIONS
    }

    async fn run(
        &self,
        ctx: JobContext,
        a: SummarizeIdleArgs,
    ) -> Result<SummarizeIdleResult, JobError> {
        if a.idle_after_minutes == 0 {
            return Err(JobError::fail("idle_after_minutes must be at least 1"));
        }
        let now = self.s.queue.db().clock().now_micros();
        let idle_us =
            i64::try_from(a.idle_after_minutes.saturating_mul(60_000_000)).unwrap_or(i64::MAX);
        let newest = now.saturating_sub(idle_us);
        let oldest = newest.saturating_sub(i64::try_from(IDLE_LOOKBACK.as_micros()).unwrap_or(0));
        let sessions = self.s.models.workspace_sessions();
        let mut result = SummarizeIdleResult::default();
        let mut before = Some((newest, Uuid::max()));
        'pages: while result.examined < IDLE_SCAN_LIMIT {
            let page = sessions
                .list_by_activity(ctx.tenant, before, 100)
                .await
                .map_err(models_error)?;
            for session in &page.items {
                if session.last_activity_at < oldest || result.examined >= IDLE_SCAN_LIMIT {
                    break 'pages;
                }
                result.examined += 1;
                let covered = session
                    .summary
                    .as_ref()
                    .is_some_and(|s| s.created_at >= session.last_activity_at);
                if covered || session.conversation_id.is_none() {
                    continue;
                }
                let args = serde_json::to_value(SummarizeSessionArgs {
                    session_id: session.id,
                })
                .map_err(JobError::fail)?;
                let job = kinds::new_job(kinds::SUMMARIZE_SESSION, args)
                    .session(session.id)
                    .idempotency_key(format!(
                        "idle-summary:{}:{}",
                        session.id, session.last_activity_at
                    ));
                let enqueued = self
                    .s
                    .queue
                    .enqueue(ctx.tenant, job)
                    .await
                    .map_err(queue_error)?;
                if !enqueued.duplicate {
                    result.enqueued += 1;
                }
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        Ok(result)
    }
}

/// Families handled per transaction by `expire_auth_tokens`.
const EXPIRE_BATCH: usize = 500;
/// Segments written per call of `compact_expired` (each call is bounded transactions).
const COMPACT_SEGMENTS_PER_CALL: usize = 50;

/// `expire_auth_tokens`: marks the tenant's refresh-token families past their absolute or idle
/// expiry as expired, deletes expired and revoked ones past the retention tail (never the used
/// tokens of an active family), and appends one audit event with the counts.
#[derive(Debug)]
pub struct ExpireAuthTokens {
    s: Services,
}

impl ExpireAuthTokens {
    /// Over `s`.
    #[must_use]
    pub fn new(s: Services) -> Self {
        ExpireAuthTokens { s }
    }
}

impl Handler for ExpireAuthTokens {
    type Args = TenantMaintenanceArgs;
    type Output = ExpireAuthTokensResult;

    fn kind(&self) -> &'static str {
        kinds::EXPIRE_AUTH_TOKENS
    }

    async fn run(
        &self,
        ctx: JobContext,
        _: TenantMaintenanceArgs,
    ) -> Result<ExpireAuthTokensResult, JobError> {
        let stats = self
            .s
            .models
            .auth()
            .expire(ctx.tenant, EXPIRE_BATCH)
            .await
            .map_err(models_error)?;
        Ok(ExpireAuthTokensResult {
            scanned: stats.scanned,
            marked_expired: stats.marked_expired,
            deleted: stats.deleted,
            audit_event: stats.audit_event,
        })
    }
}

/// `compact_audit_log`: seals pending events, replaces sealed events older than the tenant's
/// retention by signed segments (RFC 6962 Merkle root, Ed25519), and seals the
/// `audit.compacted` events this appended.
#[derive(Debug)]
pub struct CompactAuditLog {
    s: Services,
}

impl CompactAuditLog {
    /// Over `s`.
    #[must_use]
    pub fn new(s: Services) -> Self {
        CompactAuditLog { s }
    }
}

impl Handler for CompactAuditLog {
    type Args = TenantMaintenanceArgs;
    type Output = CompactAuditLogResult;

    fn kind(&self) -> &'static str {
        kinds::COMPACT_AUDIT_LOG
    }

    async fn run(
        &self,
        ctx: JobContext,
        _: TenantMaintenanceArgs,
    ) -> Result<CompactAuditLogResult, JobError> {
        let audit = self.s.models.audit();
        let mut result = CompactAuditLogResult {
            sealed: audit
                .seal_all(ctx.tenant)
                .await
                .map_err(models_error)?
                .sealed,
            ..CompactAuditLogResult::default()
        };
        loop {
            if ctx.is_cancelled() {
                return Err(JobError::Cancel {
                    reason: "cancelled between segments".into(),
                });
            }
            let run = audit
                .compact_expired(ctx.tenant, COMPACT_SEGMENTS_PER_CALL)
                .await
                .map_err(models_error)?;
            result.segments += run.segments.len();
            result.events_compacted += run.events;
            if !run.more {
                break;
            }
        }
        result.sealed += audit
            .seal_all(ctx.tenant)
            .await
            .map_err(models_error)?
            .sealed;
        Ok(result)
    }
}
