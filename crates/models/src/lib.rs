//! # steward-models: the tenant-scoped records and their repositories
//!
//! **Not implemented yet** (issue 6). This crate will own the seven records the workers act on
//! and the IDE's backend reads as a library: `Tenant`, `User`, `AuthSession`,
//! `WorkspaceSession`, `Conversation`, `AuditEvent` and `File`, each with a repository over the
//! store seam (`steward-store`) that takes the tenant on every call and cannot cross it.
//!
//! # Layout (planned)
//! - one module per record, with its repository;
//! - `keys`: the only place this crate packs tuple keys, all under `("t", tenant, <area>, ...)`
//!   (the tenant directory under `("g", ...)`), as drawn in `docs/keyspace.md`;
//! - `error`: one `#[non_exhaustive]` error enum that keeps store errors retryable.
//!
//! # Must not touch
//! No HTTP, no job queue and no job logic (those are `steward-api`, `steward-queue` and
//! `steward-workers`); no backend other than through `steward-store`'s `Database`.
