//! The built-in job kinds: their stable kind strings and typed arguments and results. The API
//! uses these to validate what it enqueues; the handlers in [`crate::handlers`] run them.
//!
//! | kind | arguments | result |
//! |---|---|---|
//! | `summarize_session` | [`SummarizeSessionArgs`] | the summarizer's outcome |
//! | `build_cross_session_context` | the context request | the context result |
//! | `expire_auth_tokens` | [`TenantMaintenanceArgs`] | [`ExpireAuthTokensResult`] |
//! | `compact_audit_log` | [`TenantMaintenanceArgs`] | [`CompactAuditLogResult`] |
//! | `summarize_idle_sessions` | [`SummarizeIdleArgs`] | [`SummarizeIdleResult`] |
//! | `prune_jobs` | [`TenantMaintenanceArgs`] | [`PruneJobsResult`] |
//! | `steward.cron_fanout` | (the queue's) | [`FanOutResult`] |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_queue::NewJob;
use uuid::Uuid;

/// Summarize one workspace session (incrementally).
pub const SUMMARIZE_SESSION: &str = "summarize_session";
/// Build a token-budgeted cross-session context ("session-to-session advice").
pub const BUILD_CROSS_SESSION_CONTEXT: &str = "build_cross_session_context";
/// Expire and delete a tenant's refresh-token families.
pub const EXPIRE_AUTH_TOKENS: &str = "expire_auth_tokens";
/// Compact a tenant's audit log into signed segments.
pub const COMPACT_AUDIT_LOG: &str = "compact_audit_log";
/// Enqueue `summarize_session` for a tenant's idle sessions.
pub const SUMMARIZE_IDLE_SESSIONS: &str = "summarize_idle_sessions";
/// Remove a tenant's finished jobs past retention.
pub const PRUNE_JOBS: &str = "prune_jobs";
/// The fan-out of system cron schedules (owned by the queue).
pub const CRON_FANOUT: &str = steward_queue::FANOUT_KIND;

/// Every built-in kind.
pub const BUILTIN: &[&str] = &[
    SUMMARIZE_SESSION,
    BUILD_CROSS_SESSION_CONTEXT,
    EXPIRE_AUTH_TOKENS,
    COMPACT_AUDIT_LOG,
    SUMMARIZE_IDLE_SESSIONS,
    PRUNE_JOBS,
    CRON_FANOUT,
];

/// Kinds an API caller may enqueue directly (the fan-out is the scheduler's own).
pub const ENQUEUEABLE: &[&str] = &[
    SUMMARIZE_SESSION,
    BUILD_CROSS_SESSION_CONTEXT,
    EXPIRE_AUTH_TOKENS,
    COMPACT_AUDIT_LOG,
    SUMMARIZE_IDLE_SESSIONS,
    PRUNE_JOBS,
];

/// A built-in kind's defaults for the jobs made of it: the per-attempt timeout and attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindDefaults {
    /// The per-attempt timeout.
    pub timeout: Duration,
    /// Attempts before the job is dead.
    pub max_attempts: u32,
}

/// The defaults of a built-in kind (`None` for any other kind). [`crate::Handler`]'s default
/// `timeout` and `max_attempts` read this table, and every built-in job is made through
/// [`new_job`], so a job enqueued by the API, the scheduler or another handler gets them.
#[must_use]
pub fn defaults(kind: &str) -> Option<KindDefaults> {
    let (secs, max_attempts) = match kind {
        // LLM calls with retries and Retry-After waits: the summarizer's LLM deadline (5 min by
        // default) plus reading and writing must fit.
        SUMMARIZE_SESSION => (600, 5),
        // An agent waits for it: fail fast and let it ask again.
        BUILD_CROSS_SESSION_CONTEXT => (60, 3),
        EXPIRE_AUTH_TOKENS | SUMMARIZE_IDLE_SESSIONS | PRUNE_JOBS => (300, 5),
        COMPACT_AUDIT_LOG => (1800, 5),
        CRON_FANOUT => (600, 5),
        _ => return None,
    };
    Some(KindDefaults {
        timeout: Duration::from_secs(secs),
        max_attempts,
    })
}

/// A job of `kind` with its [`defaults`] (a plain [`NewJob::new`] for other kinds).
#[must_use]
pub fn new_job(kind: &str, args: serde_json::Value) -> NewJob {
    let job = NewJob::new(kind, args);
    match defaults(kind) {
        Some(d) => job.timeout(d.timeout).max_attempts(d.max_attempts),
        None => job,
    }
}

/// Arguments of [`SUMMARIZE_SESSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummarizeSessionArgs {
    /// The workspace session (of the job's tenant).
    pub session_id: Uuid,
}

/// Arguments of the per-tenant maintenance kinds (the tenant is the job's own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantMaintenanceArgs {}

/// Arguments of [`SUMMARIZE_IDLE_SESSIONS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummarizeIdleArgs {
    /// Sessions without activity for this long are summarized.
    pub idle_after_minutes: u64,
}

/// Result of [`SUMMARIZE_IDLE_SESSIONS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummarizeIdleResult {
    /// Idle sessions looked at.
    pub examined: usize,
    /// `summarize_session` jobs enqueued (new ones; duplicates of a pending job not counted).
    pub enqueued: usize,
}

/// Result of [`PRUNE_JOBS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneJobsResult {
    /// Completed and cancelled jobs removed.
    pub finished: usize,
    /// Dead jobs removed.
    pub dead: usize,
}

/// Result of [`EXPIRE_AUTH_TOKENS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireAuthTokensResult {
    /// Families looked at.
    pub scanned: usize,
    /// Families newly marked expired.
    pub marked_expired: usize,
    /// Expired or revoked families deleted after the retention tail.
    pub deleted: usize,
    /// The `auth.tokens_expired` audit event with these counts.
    pub audit_event: Option<Uuid>,
}

/// Result of [`COMPACT_AUDIT_LOG`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactAuditLogResult {
    /// Events sealed into the chain (before and after compacting).
    pub sealed: usize,
    /// Signed segments written.
    pub segments: usize,
    /// Events those segments replaced.
    pub events_compacted: u64,
}

/// Result of [`CRON_FANOUT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOutResult {
    /// Tenants in the directory.
    pub tenants: usize,
    /// Jobs enqueued by this attempt (a retried fan-out enqueues only what is missing).
    pub enqueued: usize,
    /// Tenants whose job their queue limits refused (they lose this tick; the others do
    /// not). Each is also logged.
    #[serde(default)]
    pub refused: usize,
    /// Tenants skipped because their queue records did not decode. Each is also logged.
    #[serde(default)]
    pub unreadable: usize,
}
