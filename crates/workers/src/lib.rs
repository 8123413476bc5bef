//! # steward-workers: the worker runtime, job kinds and their handlers
//!
//! **Not implemented yet** (issues 7 and 8). This crate will own the runtime that claims jobs
//! from `steward-queue` and runs them (concurrency, heartbeats, timeouts, graceful shutdown,
//! metrics), the cron scheduler wiring, and the job kinds: `kinds` holds each kind's stable
//! string and its typed arguments and result (the API uses them), and one module per handler
//! (`summarize_session`, `build_cross_session_context`, `expire_auth_tokens`,
//! `compact_audit_log`, ...) acting on the records of `steward-models`.
//!
//! # Must not touch
//! No HTTP (that is `steward-api`); no raw keys: queue state goes through `steward-queue`, records
//! through `steward-models`.
