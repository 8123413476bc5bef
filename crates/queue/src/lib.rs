//! # steward-queue: the tenant job queue
//!
//! The job lifecycle over the store seam (`steward-store`), written once so it runs unchanged
//! on the embedded store and on FoundationDB: enqueue (batches, idempotency and supersede
//! keys, inside a caller's transaction too), claim with fencing leases, heartbeat, complete
//! (with the job's own store writes in the same transaction), retry with backoff, snooze,
//! cancel, dead jobs and replay, pause/resume, retention, and the read side (get, list, counts,
//! wait, why-is-it-waiting). Fairness between tenants, concurrency limits and cron are issue 5
//! and not here yet.
//!
//! ```
//! # async fn demo() -> steward_queue::Result<()> {
//! use std::time::Duration;
//! use steward_queue::{ClaimRequest, NewJob, Queue, QueueConfig};
//! let queue = Queue::new(steward_store::Database::memory(), QueueConfig::default())?;
//! let tenant = uuid::Uuid::now_v7();
//! let job = queue.enqueue(tenant, NewJob::new("summarize_session", serde_json::json!({}))).await?;
//! let leases = queue
//!     .claim(&ClaimRequest { worker: "w1".into(), kinds: None, max: 10, lease: Duration::from_secs(30) })
//!     .await?;
//! queue.complete(&leases[0], serde_json::json!({"ok": true})).await?;
//! assert!(queue.get(tenant, job.id).await?.unwrap().state.is_terminal());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`keys`](crate::keys) (private): the only place this crate packs tuple keys; its doc is the
//!   queue's keyspace, under `("t", tenant, "q", ...)` plus hints under `("g", ...)`.
//! - `job`: the record and the values around it ([`Job`], [`NewJob`], [`Lease`], [`Outcome`]).
//! - `queue`: every transition; `read`: the read side; `config`: settings and [`RetryPolicy`].
//!
//! Time comes from the store's injected clock and randomness from a seed ([`Queue::with_seed`]),
//! never from `SystemTime::now()` or `thread_rng()`.
//!
//! # Must not touch
//! No HTTP and no job handlers (those are `steward-api` and `steward-workers`); no records of
//! `steward-models`; no backend other than through `steward-store`'s `Database`.

mod config;
mod cron;
mod error;
mod job;
mod keys;
mod queue;
mod read;

pub use crate::config::{
    QueueConfig, RetryPolicy, TenantQueueConfig, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP,
    DEFAULT_DEAD_RETENTION, DEFAULT_FINISHED_RETENTION, DEFAULT_LEASE, DEFAULT_TENANTS_PER_CLAIM,
    DEFAULT_TENANT_WEIGHT, MAX_RUNNING_LIMIT, MAX_TENANT_WEIGHT,
};
pub use crate::cron::{
    parse_expression, CronSchedule, FanOut, MissedPolicy, OverlapPolicy, RefusedBy, ScheduleSpec,
    Scheduler, TickOutcome, TickRecord, DEFAULT_MISFIRE_GRACE, FANOUT_KIND, SYSTEM_TENANT,
};
pub use crate::error::{Error, Result};
pub use crate::job::{
    AttemptError, CancelReason, DeadReason, Enqueued, Heartbeat, Job, JobState, Lease, LeaseInfo,
    NewJob, Outcome, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_TIMEOUT, MAX_KEPT_ERRORS,
};
pub use crate::queue::{
    json_size, ClaimRequest, PruneStats, Queue, MAX_ARGS_BYTES, MAX_BATCH, MAX_KEY_LEN,
    MAX_KIND_LEN,
};
pub use crate::read::{ListFilter, Page, WaitReason, MAX_PAGE};
