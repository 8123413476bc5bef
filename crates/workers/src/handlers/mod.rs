//! The built-in handlers. Each acts on the job's own tenant only (the fan-out, in the system
//! tenant, only reads the tenant directory and enqueues).
//!
//! [`builtin_registry`] registers all of them over one [`Services`].

use std::sync::Arc;

use steward_models::Models;
use steward_queue::Queue;

use crate::error::Result;
use crate::handler::{JobError, Registry};

mod maintenance;
mod sessions;

pub use maintenance::{
    CompactAuditLog, CronFanOut, ExpireAuthTokens, PruneJobs, SummarizeIdleSessions,
};
pub use sessions::{BuildCrossSessionContext, SummarizeSession};

/// What the built-in handlers work on.
#[derive(Debug, Clone)]
pub struct Services {
    /// The job queue.
    pub queue: Arc<Queue>,
    /// The records.
    pub models: Arc<Models>,
    /// The LLM for summaries (`None`: extractive summaries only).
    pub llm: Option<Arc<crate::llm::LlmClient>>,
    /// The summarizer's settings (`[summarize]`).
    pub summarize: crate::summarize::SummarizeConfig,
}

/// A registry with every built-in kind.
///
/// # Errors
/// [`crate::Error::Invalid`] if two handlers claim one kind (a bug).
pub fn builtin_registry(services: &Services) -> Result<Registry> {
    let mut r = Registry::new();
    r.register(CronFanOut::new(services.clone()))?
        .register(PruneJobs::new(services.clone()))?
        .register(SummarizeIdleSessions::new(services.clone()))?
        .register(SummarizeSession::new(
            services.clone(),
            services.llm.clone(),
        ))?
        .register(BuildCrossSessionContext::new(services.clone()))?
        .register(ExpireAuthTokens::new(services.clone()))?
        .register(CompactAuditLog::new(services.clone()))?;
    Ok(r)
}

/// A queue error as a job outcome: retryable unless it is a bad input.
pub(crate) fn queue_error(e: steward_queue::Error) -> JobError {
    match e {
        steward_queue::Error::Invalid { .. } => JobError::fail(e),
        other => JobError::retry(other),
    }
}

/// A records error as a job outcome: retryable unless it is a bad input or a missing record.
pub(crate) fn models_error(e: steward_models::Error) -> JobError {
    match e {
        steward_models::Error::Invalid { .. } | steward_models::Error::NotFound { .. } => {
            JobError::fail(e)
        }
        other => JobError::retry(other),
    }
}
