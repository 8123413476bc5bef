//! The job kinds the API knows: the workers' kind strings, and the advice job's arguments.
//!
//! TODO(workers): `steward_workers::context::ContextRequest` (and its limits) is being written;
//! until it is committed the local copy below (same JSON shape, same limits) stands in. Switch
//! to the workers' type then, and validate with its `validate()`.

use serde::Serialize;
use uuid::Uuid;

pub(crate) use steward_workers::kinds::BUILD_CROSS_SESSION_CONTEXT;

/// Kinds an API caller may enqueue without configuring them (the scheduler's fan-out is not
/// one of them).
pub(crate) fn builtin() -> &'static [&'static str] {
    steward_workers::kinds::ENQUEUEABLE
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
