//! The session kinds: `summarize_session` and `build_cross_session_context`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{models_error, Services};
use crate::context::{build_context, ContextError, ContextRequest, ContextResult};
use crate::handler::{Handler, JobContext, JobError};
use crate::kinds::{self, SummarizeSessionArgs};
use crate::llm::LlmClient;
use crate::summarize::{summarize_session_with, SummarizeConfig, SummarizeError, SummarizeOutcome};

/// When a run stopped at its input budget with more messages waiting, the job runs again
/// after this pause (a snooze: the attempt does not count).
const MORE_INPUT_PAUSE: Duration = Duration::from_millis(100);

/// `summarize_session`: the incremental summary of one session (see `crate::summarize`).
#[derive(Debug)]
pub struct SummarizeSession {
    s: Services,
    llm: Option<Arc<LlmClient>>,
    config: SummarizeConfig,
}

impl SummarizeSession {
    /// Over `s`, with `llm` if one is configured.
    #[must_use]
    pub fn new(s: Services, llm: Option<Arc<LlmClient>>) -> Self {
        SummarizeSession {
            config: s.summarize,
            s,
            llm,
        }
    }
}

impl Handler for SummarizeSession {
    type Args = SummarizeSessionArgs;
    type Output = Value;

    fn kind(&self) -> &'static str {
        kinds::SUMMARIZE_SESSION
    }

    async fn run(&self, ctx: JobContext, a: SummarizeSessionArgs) -> Result<Value, JobError> {
        let now = self.s.queue.db().clock().now_micros();
        let outcome = summarize_session_with(
            &self.s.models,
            self.llm.as_deref(),
            &self.config,
            ctx.tenant,
            a.session_id,
            now,
        )
        .await
        .map_err(|e| match e {
            SummarizeError::Models(e) => models_error(e),
            other => JobError::fail(other),
        })?;
        Ok(match outcome {
            SummarizeOutcome::Skipped(reason) => {
                json!({"outcome": "skipped", "reason": format!("{reason:?}").to_lowercase()})
            }
            SummarizeOutcome::Superseded(_) => json!({"outcome": "superseded"}),
            SummarizeOutcome::Summarized(r) => {
                if let Some(llm) = &self.llm {
                    let provider = llm.provider().as_str();
                    metrics::counter!(crate::metrics::LLM_TOKENS, "provider" => provider, "direction" => "input")
                        .increment(r.input_tokens);
                    metrics::counter!(crate::metrics::LLM_TOKENS, "provider" => provider, "direction" => "output")
                        .increment(r.output_tokens);
                }
                metrics::counter!(crate::metrics::SUMMARIES, "method" => format!("{:?}", r.method).to_lowercase())
                    .increment(1);
                if r.more {
                    return Err(JobError::Snooze {
                        after: MORE_INPUT_PAUSE,
                    });
                }
                json!({
                    "outcome": "summarized",
                    "method": r.method,
                    "through": r.through.map(|t| t.to_string()),
                    "new_messages": r.new_messages,
                    "new_commands": r.new_commands,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "llm_requests": r.llm_requests,
                    "fallback": r.fallback,
                })
            }
        })
    }
}

/// `build_cross_session_context`: the token-budgeted context of related sessions (see
/// `crate::context`). The request's tenant must be the job's own.
#[derive(Debug)]
pub struct BuildCrossSessionContext {
    s: Services,
}

impl BuildCrossSessionContext {
    /// Over `s`.
    #[must_use]
    pub fn new(s: Services) -> Self {
        BuildCrossSessionContext { s }
    }
}

impl Handler for BuildCrossSessionContext {
    type Args = ContextRequest;
    type Output = ContextResult;

    fn kind(&self) -> &'static str {
        kinds::BUILD_CROSS_SESSION_CONTEXT
    }

    async fn run(&self, ctx: JobContext, req: ContextRequest) -> Result<ContextResult, JobError> {
        if req.tenant != ctx.tenant {
            // A job never reads another tenant, whatever its arguments say.
            return Err(JobError::fail(
                "the request's tenant is not the job's tenant",
            ));
        }
        let now = self.s.queue.db().clock().now_micros();
        build_context(&self.s.models, &req, now)
            .await
            .map_err(|e| match e {
                ContextError::Store(e) => models_error(e),
                other => JobError::fail(other),
            })
    }
}
