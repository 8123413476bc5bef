//! # steward-workers: the worker runtime, job kinds and their handlers
//!
//! Stateless worker processes claim jobs from `steward-queue` and run them.
//!
//! # Layout
//! - [`handler`]: the [`Handler`] trait (stable kind string, typed arguments and output,
//!   default timeout, attempts and retry policy; typed outcomes in [`JobError`]) and the
//!   [`Registry`] of kinds a worker runs. Custom kinds register exactly like the built-in ones.
//! - [`runtime`]: the [`Worker`] loop: batched claims of its own kinds, up to `concurrency`
//!   jobs at once, heartbeats, per-job timeouts, panics recorded as failures, graceful
//!   shutdown that releases leases.
//! - [`scheduler`]: the cron scheduler loop and the default system schedules.
//! - [`kinds`]: the built-in kind strings and their argument and result types (the API uses
//!   them); [`handlers`]: the built-in handlers over `steward-models`.
//! - [`metrics`]: Prometheus metrics and the `/healthz`, `/readyz`, `/metrics` listener.
//! - [`config`]: [`WorkerConfig`] with its defaults and `validate()`.
//! - [`tenancy`]: the queue settings a tenant's plan implies (used by the API and the CLI).
//!
//! # Must not touch
//! No HTTP API (that is `steward-api`; the only listener here is the metrics one); no raw
//! keys: queue state goes through `steward-queue`, records through `steward-models`.

mod completer;
pub mod config;
pub mod context;
pub mod error;
pub mod handler;
pub mod handlers;
pub mod kinds;
pub mod llm;
pub mod metrics;
pub mod runtime;
pub mod scheduler;
pub mod summarize;
pub mod tenancy;

pub use crate::config::{SchedulesConfig, WorkerConfig};
pub use crate::error::{Error, Result};
pub use crate::handler::{Handler, JobContext, JobError, Registry};
pub use crate::runtime::{Worker, WorkerStats};
