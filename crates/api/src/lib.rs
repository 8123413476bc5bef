//! # steward-api: the thin HTTP layer
//!
//! **Not implemented yet** (issue 9). This crate will own an axum router under `/v1`, built apart
//! from serving so that handlers are tested without a socket: bearer-token auth (the tenant comes
//! from the token only), request validation, and the mapping of errors to statuses and
//! `{"error": {"code", "message", "field"}}` bodies. It calls `steward-workers` (job kinds),
//! `steward-queue` and `steward-models`; it holds no business logic of its own.
//!
//! # Must not touch
//! No raw keys and no store transactions of its own design: everything goes through the crates
//! below it. `anyhow`, if used, stays at this edge.
