//! The job kinds the API knows.
//!
//! TODO(workers): `steward_workers::kinds` (`ENQUEUEABLE`, `BUILD_CROSS_SESSION_CONTEXT`) and
//! `steward_workers::context::ContextRequest` are being written; until they are committed these
//! local copies (same strings, same JSON shape) stand in. Switch to the workers' items then.

use serde::Serialize;
use uuid::Uuid;

/// Build a token-budgeted cross-session context.
pub(crate) const BUILD_CROSS_SESSION_CONTEXT: &str = "build_cross_session_context";

/// Kinds an API caller may enqueue without configuring them (the scheduler's fan-out is not
/// one of them).
pub(crate) fn builtin() -> &'static [&'static str] {
    &[
        "summarize_session",
        BUILD_CROSS_SESSION_CONTEXT,
        "expire_auth_tokens",
        "compact_audit_log",
        "summarize_idle_sessions",
        "prune_jobs",
    ]
}

/// Arguments of `build_cross_session_context` (the workers' `ContextRequest`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ContextRequest {
    pub(crate) tenant: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) session_id: Uuid,
    pub(crate) question: String,
    pub(crate) token_budget: u32,
    pub(crate) model: String,
}

/// Longest question (the workers' `MAX_QUESTION_BYTES`).
pub(crate) const MAX_QUESTION_BYTES: usize = 8 * 1024;
/// Largest token budget (the workers' `MAX_TOKEN_BUDGET`).
pub(crate) const MAX_TOKEN_BUDGET: u32 = 1_000_000;
/// Longest model name (the workers' `MAX_MODEL_BYTES`).
pub(crate) const MAX_MODEL_BYTES: usize = 128;
/// The model assumed when an advice request names none (chooses the tokenizer).
pub(crate) const DEFAULT_MODEL: &str = "gpt-4o";
