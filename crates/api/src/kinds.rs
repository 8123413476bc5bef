//! The job kinds the API knows, from `steward-workers`: the kind strings a caller may enqueue,
//! and the advice job's request type.

pub(crate) use steward_workers::context::{ContextError, ContextRequest, ContextResult};
pub(crate) use steward_workers::kinds::BUILD_CROSS_SESSION_CONTEXT;

/// Kinds an API caller may enqueue without configuring them (the scheduler's fan-out is not
/// one of them).
pub(crate) fn builtin() -> &'static [&'static str] {
    steward_workers::kinds::ENQUEUEABLE
}

/// The model assumed when an advice request names none (chooses the tokenizer).
pub(crate) const DEFAULT_MODEL: &str = "gpt-4o";
