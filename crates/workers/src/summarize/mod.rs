//! `summarize_session`: the incremental, structured summary of a workspace session.
//!
//! One run ([`summarize_session`]):
//! 1. loads the tenant and the session, its previous summary and watermarks;
//! 2. reads only the messages after the summary's watermark (`through`, a message position)
//!    and the finished terminal commands after its terminal watermark, page by page, up to
//!    [`SummarizeConfig::max_messages`] and a byte budget (each text redacted
//!    ([`redact::redact`]) and excerpted first); what does not fit waits for the next run
//!    ([`SummaryReport::more`]);
//! 3. skips when there is nothing new, or the input hashes like the one the stored summary
//!    was made from;
//! 4. asks the LLM, if one is configured and the tenant's plan allows third-party LLMs (or the
//!    endpoint is first-party), to update the previous structured summary with the new input,
//!    and checks the answer against the schema and the input's message labels (refused: one
//!    more try with the reason, then the fallback);
//! 5. otherwise, or when the LLM fails after its retries, builds the extractive summary
//!    ([`SummaryMethod::Extractive`]);
//! 6. writes the summary, its structured detail, the session's memory items and the token
//!    usage in one transaction (`WorkspaceSessions::put_summary`), which a retry after
//!    `commit_unknown_result` recognises.

mod extractive;
mod input;
mod prompt;
pub mod redact;

use std::fmt::Write as _;

use steward_models::{
    MessagePosition, Models, SessionSummary, StructuredSummary, SummaryDetail, SummaryMethod,
    SummaryWrite, MAX_PAGE, MAX_SUMMARY_BYTES,
};
use uuid::Uuid;

use crate::llm::{LlmClient, LlmError, Provider};
use crate::summarize::input::{clip, Input};

/// Default messages read per page.
pub const DEFAULT_PAGE_SIZE: usize = 200;
/// Default most messages one run covers.
pub const DEFAULT_MAX_MESSAGES: usize = 2000;
/// Default input budget of one run (rendered, redacted text), in bytes (~16k tokens).
pub const DEFAULT_INPUT_BUDGET_BYTES: usize = 64 * 1024;
/// Default longest excerpt of one message, in bytes.
pub const DEFAULT_MESSAGE_EXCERPT_BYTES: usize = 4 * 1024;
/// Default time the LLM gets per run (all requests, retries and waits), in milliseconds;
/// past it the run falls back to the extractive summary.
pub const DEFAULT_LLM_DEADLINE_MS: u64 = 300_000;

/// How much one run reads (`[summarize]` in the config file, `STEWARD_SUMMARIZE__*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummarizeConfig {
    /// Messages per page read (1 to 1000).
    pub page_size: usize,
    /// Most messages one run covers (1 to 100,000).
    pub max_messages: usize,
    /// Most bytes of rendered input per run (4 KiB to 1 MiB); at least one message always fits.
    pub input_budget_bytes: usize,
    /// Longest excerpt of one message (256 B to the budget); longer ones keep head and tail.
    pub message_excerpt_bytes: usize,
    /// Time the LLM gets per run, retries, `Retry-After` waits and the second try included
    /// (100 ms to 1 hour); then the extractive fallback. Keep it under the job's timeout.
    pub llm_deadline_ms: u64,
}

impl Default for SummarizeConfig {
    fn default() -> Self {
        SummarizeConfig {
            page_size: DEFAULT_PAGE_SIZE,
            max_messages: DEFAULT_MAX_MESSAGES,
            input_budget_bytes: DEFAULT_INPUT_BUDGET_BYTES,
            message_excerpt_bytes: DEFAULT_MESSAGE_EXCERPT_BYTES,
            llm_deadline_ms: DEFAULT_LLM_DEADLINE_MS,
        }
    }
}

impl SummarizeConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`SummarizeError::Config`] naming the field (`summarize.page_size`, ...).
    pub fn validate(&self) -> Result<(), SummarizeError> {
        let check = |field, v: usize, min: usize, max: usize| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(SummarizeError::Config {
                    field,
                    message: format!("must be between {min} and {max}"),
                })
            }
        };
        check("summarize.page_size", self.page_size, 1, MAX_PAGE)?;
        check("summarize.max_messages", self.max_messages, 1, 100_000)?;
        check(
            "summarize.input_budget_bytes",
            self.input_budget_bytes,
            4096,
            1024 * 1024,
        )?;
        check(
            "summarize.message_excerpt_bytes",
            self.message_excerpt_bytes,
            256,
            self.input_budget_bytes,
        )?;
        check(
            "summarize.llm_deadline_ms",
            usize::try_from(self.llm_deadline_ms).unwrap_or(usize::MAX),
            100,
            3_600_000,
        )
    }
}

/// Why a run wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// No message and no finished terminal command after the watermarks.
    NoNewInput,
    /// The input hashes like the one the stored summary was made from.
    Unchanged,
}

/// What a run that wrote a summary did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryReport {
    /// LLM or extractive.
    pub method: SummaryMethod,
    /// The new watermark.
    pub through: Option<MessagePosition>,
    /// Messages this run read.
    pub new_messages: usize,
    /// Terminal commands this run read.
    pub new_commands: usize,
    /// More messages wait after the watermark (the budget or `max_messages` stopped the run):
    /// run again.
    pub more: bool,
    /// LLM input tokens spent (including refused answers).
    pub input_tokens: u64,
    /// LLM output tokens spent.
    pub output_tokens: u64,
    /// HTTP requests made to the LLM.
    pub llm_requests: u32,
    /// Why an extractive summary was made although an LLM is configured (`None` for LLM
    /// summaries and when no LLM is configured).
    pub fallback: Option<String>,
}

/// What [`summarize_session`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SummarizeOutcome {
    /// Nothing to do.
    Skipped(SkipReason),
    /// A new summary is stored.
    Summarized(SummaryReport),
    /// Nothing written: a concurrent run stored a summary covering later messages.
    Superseded(SummaryReport),
}

/// Why a run failed (the LLM failing is not an error: it falls back).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SummarizeError {
    /// The records failed (store errors keep their retryable class inside).
    #[error(transparent)]
    Models(#[from] steward_models::Error),
    /// No such tenant.
    #[error("tenant {0} not found")]
    TenantNotFound(Uuid),
    /// No such session in the tenant.
    #[error("workspace session {0} not found")]
    SessionNotFound(Uuid),
    /// A setting is out of range.
    #[error("invalid {field}: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is accepted.
        message: String,
    },
}

/// Summarizes a session with the default [`SummarizeConfig`]; see
/// [`summarize_session_with`].
///
/// # Errors
/// As [`summarize_session_with`].
pub async fn summarize_session(
    models: &Models,
    llm: Option<&LlmClient>,
    tenant: Uuid,
    session_id: Uuid,
    now_micros: i64,
) -> Result<SummarizeOutcome, SummarizeError> {
    summarize_session_with(
        models,
        llm,
        &SummarizeConfig::default(),
        tenant,
        session_id,
        now_micros,
    )
    .await
}

/// Updates the session's summary with what happened since its watermark (see the module
/// doc). Idempotent: a second run with nothing new is [`SummarizeOutcome::Skipped`], and a
/// run after `commit_unknown_result` finds its own write. An LLM failure is not an error: the
/// summary falls back to the extractive one.
///
/// # Errors
/// [`SummarizeError::TenantNotFound`], [`SummarizeError::SessionNotFound`],
/// [`SummarizeError::Config`], [`SummarizeError::Models`] (store errors: retry the job).
pub async fn summarize_session_with(
    models: &Models,
    llm: Option<&LlmClient>,
    config: &SummarizeConfig,
    tenant: Uuid,
    session_id: Uuid,
    now_micros: i64,
) -> Result<SummarizeOutcome, SummarizeError> {
    config.validate()?;
    let t = models
        .tenants()
        .get(tenant)
        .await?
        .ok_or(SummarizeError::TenantNotFound(tenant))?;
    let session = models
        .workspace_sessions()
        .get(tenant, session_id)
        .await?
        .ok_or(SummarizeError::SessionNotFound(session_id))?;
    let prev = session.summary.as_ref();
    let prev_through = prev.and_then(|s| s.through);
    // The detail belongs to the summary only while their watermarks agree.
    let prev_detail = session
        .summary_detail
        .as_ref()
        .filter(|d| prev.is_some() && d.through == prev_through);
    let prev_structured = prev_detail.map(|d| &d.structured);
    let prev_terminal = prev_detail.and_then(|d| d.terminal_through);

    let mut input = Input::default();
    if let Some(p) = prev_structured {
        input.label_previous(p);
    }
    let mut more = false;
    let mut through = prev_through;
    if let Some(conv) = session.conversation_id {
        let mut after = prev_through;
        'pages: loop {
            let room = config.max_messages - input.messages.len();
            let page = models
                .conversations()
                .messages(tenant, conv, after, config.page_size.min(room))
                .await?;
            for m in &page.items {
                if input.messages.len() >= config.max_messages
                    || !input.push_message(
                        m,
                        config.message_excerpt_bytes,
                        config.input_budget_bytes,
                    )
                {
                    more = true;
                    break 'pages;
                }
                through = Some(m.position);
            }
            match page.next {
                Some(n) if !page.items.is_empty() => after = Some(n),
                _ => break,
            }
            if input.messages.len() >= config.max_messages {
                more = true;
                break;
            }
        }
    }
    let mut terminal_through = prev_terminal;
    for c in &session.terminal.commands {
        if prev_terminal.is_some_and(|w| c.started_at <= w) {
            continue;
        }
        // Stop at the first unfinished command: it is read once it has an exit code.
        let Some(code) = c.exit_code else { break };
        input.push_command(c, code);
        terminal_through = Some(c.started_at);
    }

    if input.messages.is_empty() && input.commands.is_empty() {
        return Ok(SummarizeOutcome::Skipped(SkipReason::NoNewInput));
    }
    let input_hash = input.hash(prev_through, prev_terminal);
    if prev_detail.is_some_and(|d| d.input_hash == input_hash) {
        return Ok(SummarizeOutcome::Skipped(SkipReason::Unchanged));
    }

    let mut report = SummaryReport {
        method: SummaryMethod::Extractive,
        through,
        new_messages: input.messages.len(),
        new_commands: input.commands.len(),
        more,
        input_tokens: 0,
        output_tokens: 0,
        llm_requests: 0,
        fallback: None,
    };
    let llm = llm.filter(|c| c.provider() != Provider::None);
    let mut produced: Option<(StructuredSummary, String)> = None;
    if let Some(client) = llm {
        if t.limits.third_party_llm || client.first_party() {
            let deadline = std::time::Duration::from_millis(config.llm_deadline_ms);
            let asked = tokio::time::timeout(
                deadline,
                ask(client, tenant, prev_structured, &input, &mut report),
            )
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the LLM did not answer within the run's deadline of {} ms",
                    config.llm_deadline_ms
                ))
            });
            match asked {
                Ok((s, model)) => produced = Some((s, model)),
                Err(why) => {
                    tracing::warn!(%tenant, session = %session_id, reason = %why, "LLM summary failed; extractive fallback");
                    report.fallback = Some(why);
                }
            }
        } else {
            report.fallback = Some("the tenant's plan forbids third-party LLMs".into());
        }
    }
    let (structured, model) = match produced {
        Some((s, model)) => {
            report.method = SummaryMethod::Llm;
            (s, Some(model))
        }
        None => (extractive::summarize(prev_structured, &input), None),
    };
    let text = render(&structured, report.method);
    let summary = SessionSummary {
        text,
        through,
        message_count: prev
            .map_or(0, |s| s.message_count)
            .saturating_add(u64::try_from(input.messages.len()).unwrap_or(u64::MAX)),
        created_at: now_micros,
    };
    let detail = SummaryDetail {
        through,
        structured,
        method: report.method,
        provider: llm
            .filter(|_| report.input_tokens + report.output_tokens > 0)
            .map(|c| c.provider().as_str().to_owned()),
        model,
        input_hash,
        terminal_through,
        input_tokens: report.input_tokens,
        output_tokens: report.output_tokens,
    };
    match models
        .workspace_sessions()
        .put_summary(tenant, session_id, summary, detail)
        .await?
    {
        SummaryWrite::Written(_) => Ok(SummarizeOutcome::Summarized(report)),
        SummaryWrite::Superseded(_) => Ok(SummarizeOutcome::Superseded(report)),
    }
}

/// Asks the model (and once more if its answer is refused). Returns the summary and the
/// model's name, or why it failed.
async fn ask(
    client: &LlmClient,
    tenant: Uuid,
    prev: Option<&StructuredSummary>,
    input: &Input,
    report: &mut SummaryReport,
) -> Result<(StructuredSummary, String), String> {
    let mut complaint: Option<String> = None;
    for _ in 0..2 {
        let request = prompt::request(prev, input, complaint.as_deref());
        let before = client.requests_sent();
        let result = client.complete(tenant, &request).await;
        report.llm_requests = report
            .llm_requests
            .saturating_add(u32::try_from(client.requests_sent() - before).unwrap_or(u32::MAX));
        let completion = result.map_err(|e: LlmError| e.to_string())?;
        report.input_tokens = report.input_tokens.saturating_add(completion.input_tokens);
        report.output_tokens = report
            .output_tokens
            .saturating_add(completion.output_tokens);
        match prompt::parse(&completion.text, input) {
            Ok(s) => {
                let model = if completion.model.is_empty() {
                    client.model().to_owned()
                } else {
                    completion.model
                };
                return Ok((s, clip(&model, 256)));
            }
            Err(why) => {
                tracing::debug!(%tenant, reason = %why, "LLM summary refused");
                complaint = Some(why);
            }
        }
    }
    Err(format!(
        "the model's answer was refused twice: {}",
        complaint.unwrap_or_default()
    ))
}

/// The summary as text (what `SessionSummary::text` holds), at most
/// [`MAX_SUMMARY_BYTES`].
fn render(s: &StructuredSummary, method: SummaryMethod) -> String {
    let mut out = String::new();
    let one = |out: &mut String, title: &str, i: &Option<steward_models::SummaryItem>| {
        if let Some(i) = i {
            let _ = writeln!(out, "{title}: {}", i.text);
        }
    };
    let many = |out: &mut String, title: &str, v: &[steward_models::SummaryItem]| {
        if !v.is_empty() {
            let _ = writeln!(out, "{title}:");
            for i in v {
                let _ = writeln!(out, "- {}", i.text);
            }
        }
    };
    one(&mut out, "Intent", &s.intent);
    many(&mut out, "Decisions", &s.decisions);
    if !s.changes.is_empty() {
        out.push_str("Changes:\n");
        for c in &s.changes {
            let _ = writeln!(out, "- {}: {}", c.file, c.what);
        }
    }
    many(&mut out, "Errors fixed", &s.errors_fixed);
    many(&mut out, "Open todos", &s.open_todos);
    one(&mut out, "Current state", &s.current_state);
    one(&mut out, "Next step", &s.next_step);
    if method == SummaryMethod::Extractive {
        out.push_str("(extractive summary)\n");
    }
    clip(&out, MAX_SUMMARY_BYTES)
}
