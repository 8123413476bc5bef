//! # Cross-session context ("session-to-session advice")
//!
//! [`build_context`] answers an agent's question with a block of notes taken from the sessions
//! the requesting user may read, cut to a token budget, with a manifest of what was included and
//! what was left out and why. It backs the `build_cross_session_context` job and the API's
//! advice endpoint, which share [`ContextResult`] as their JSON shape.
//!
//! ```text
//! ContextRequest ──validate──> gather (tenant-keyed reads; only sessions visible to the user)
//!   session, parent, ancestors (≤ MAX_ANCESTOR_DEPTH, cycle-safe), forks of the parent,
//!   forks of the session, linked (`related`), same workspace, same user
//!       │  each session ──session_candidates──> Candidate (summary paragraphs, agent memory,
//!       │                                       changed files; summarizer items: see gather.rs)
//!       ▼
//!   dedupe copies (forks copy memory) ─> supersession (same key: newest wins)
//!       ─> score (BM25 relevance × relation × recency × file overlap)
//!       ─> abstain if nothing reaches RELEVANCE_THRESHOLD
//!       ─> greedy fill with whole items, best first ─> exact count of the final block ≤ budget
//! ```
//!
//! # Layout
//! - `gather`: which sessions are read and what candidates each yields ([`Candidate`]).
//! - `score`: terms, BM25, relation weights, recency, file overlap ([`ScoreBreakdown`]).
//! - `budget`: supersession, the greedy fill and the assembled block.
//! - `tokens`: model → tokenizer, counting ([`TokenizerInfo`]).
//! - `eval`: the synthetic evaluation ([`eval::run`]) that `examples/context_eval.rs` and the
//!   tests run.
//!
//! `docs/context.md` documents the scoring formula and the block's format.

mod budget;
pub mod eval;
mod gather;
mod score;
mod tokens;

use serde::{Deserialize, Serialize};
use steward_models::Models;
use uuid::Uuid;

pub use gather::{
    session_candidates, Candidate, MAX_ANCESTOR_DEPTH, MAX_LINKED, MAX_SCAN_PER_SOURCE,
    MAX_SCOPE_SESSIONS,
};
pub use score::{
    file_overlap, recency, relation_weight, stem, terms, ScoreBreakdown, BM25_B, BM25_K1,
    FILE_OVERLAP_WEIGHT, RECENCY_HALF_LIFE_DAYS, RELEVANCE_THRESHOLD,
};
pub use tokens::{Encoding, TokenizerInfo, APPROX_SAFETY_FACTOR};

/// Smallest token budget accepted.
pub const MIN_TOKEN_BUDGET: u32 = 1;
/// Largest token budget accepted.
/// The result (block plus manifest) is stored as the job's result, which must fit one store
/// value (100,000 bytes): 12,000 tokens of about 4 bytes leave room for the ~25 KB manifest.
pub const MAX_TOKEN_BUDGET: u32 = 12_000;
/// Longest question, in bytes.
pub const MAX_QUESTION_BYTES: usize = 8 * 1024;
/// Longest model name, in bytes.
pub const MAX_MODEL_BYTES: usize = 128;
/// Most excluded items listed in a result (the best-scored ones); the rest are counted in
/// [`ContextResult::excluded_not_listed`]. Kept small so a result (stored as a job's result,
/// under the store's 100,000-byte value limit) stays around 25 KB plus the block itself.
pub const MAX_EXCLUDED_LISTED: usize = 50;

/// What the job and the advice endpoint are asked.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextRequest {
    /// The tenant; every read is keyed by it.
    pub tenant: Uuid,
    /// The user the context is built for: only sessions they may read are used.
    pub user_id: Uuid,
    /// The session asking (it must be visible to `user_id`).
    pub session_id: Uuid,
    /// The agent's question or task, 1 to [`MAX_QUESTION_BYTES`] bytes, not blank.
    pub question: String,
    /// Most tokens the block may have, [`MIN_TOKEN_BUDGET`] to [`MAX_TOKEN_BUDGET`].
    pub token_budget: u32,
    /// The model the block is for (chooses the tokenizer), 1 to [`MAX_MODEL_BYTES`] bytes of
    /// `[A-Za-z0-9._:/@-]`.
    pub model: String,
}

impl ContextRequest {
    /// Checks every field.
    ///
    /// # Errors
    /// [`ContextError::Invalid`] naming the first bad field (`tenant`, `user_id`,
    /// `session_id`, `question`, `token_budget`, `model`).
    pub fn validate(&self) -> Result<(), ContextError> {
        for (field, id) in [
            ("tenant", self.tenant),
            ("user_id", self.user_id),
            ("session_id", self.session_id),
        ] {
            if id.is_nil() {
                return Err(ContextError::invalid(field, "must not be the nil UUID"));
            }
        }
        if self.question.trim().is_empty() {
            return Err(ContextError::invalid("question", "must not be blank"));
        }
        if self.question.len() > MAX_QUESTION_BYTES {
            return Err(ContextError::invalid(
                "question",
                format!("at most {MAX_QUESTION_BYTES} bytes"),
            ));
        }
        if !(MIN_TOKEN_BUDGET..=MAX_TOKEN_BUDGET).contains(&self.token_budget) {
            return Err(ContextError::invalid(
                "token_budget",
                format!("must be between {MIN_TOKEN_BUDGET} and {MAX_TOKEN_BUDGET}"),
            ));
        }
        let model_ok = !self.model.is_empty()
            && self.model.len() <= MAX_MODEL_BYTES
            && self
                .model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
        if !model_ok {
            return Err(ContextError::invalid(
                "model",
                format!("1 to {MAX_MODEL_BYTES} bytes of letters, digits and ._:/@-"),
            ));
        }
        Ok(())
    }
}

/// How a session relates to the requesting one (the closest relation wins).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Relation {
    /// The requesting session itself.
    Current,
    /// Its parent (it was forked from it).
    Parent,
    /// The parent's parent (depth 2) and further up.
    Ancestor {
        /// 2 for the grandparent, ...
        depth: u8,
    },
    /// Another fork of the same parent.
    SiblingFork,
    /// A fork of the requesting session.
    ChildFork,
    /// Listed in the session's `related`.
    Linked,
    /// Another session of the same workspace (the user's own, or shared).
    SameWorkspace,
    /// Another session of the same user, in another workspace.
    SameUser,
}

impl Relation {
    fn label(self) -> String {
        match self {
            Relation::Current => "this session".to_owned(),
            Relation::Parent => "parent".to_owned(),
            Relation::Ancestor { depth } => format!("ancestor, {depth} levels up"),
            Relation::SiblingFork => "sibling fork".to_owned(),
            Relation::ChildFork => "fork of this session".to_owned(),
            Relation::Linked => "linked session".to_owned(),
            Relation::SameWorkspace => "same workspace".to_owned(),
            Relation::SameUser => "your session in another workspace".to_owned(),
        }
    }
}

/// What an item is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A paragraph of a session summary.
    Summary,
    /// A decision taken.
    Decision,
    /// A change made (files, behaviour).
    Change,
    /// Something left to do.
    Todo,
    /// A lesson learned.
    Lesson,
    /// Any other agent memory entry.
    Memory,
}

impl ItemKind {
    fn label(self) -> &'static str {
        match self {
            ItemKind::Summary => "summary",
            ItemKind::Decision => "decision",
            ItemKind::Change => "change",
            ItemKind::Todo => "todo",
            ItemKind::Lesson => "lesson",
            ItemKind::Memory => "memory",
        }
    }
}

/// Why an item is where it is in the manifest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// In the block.
    Included,
    /// Its relevance is below [`RELEVANCE_THRESHOLD`].
    Irrelevant,
    /// A newer item on the same topic (or one that names it) replaces it.
    Superseded {
        /// The replacing item's id.
        by: String,
    },
    /// The same note reached through another session (forks copy their parent's memory).
    Duplicate {
        /// The id of the copy that was kept.
        of: String,
    },
    /// Relevant, but the block was full.
    OverBudget,
}

/// One item of the manifest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestItem {
    /// Stable id: `<session>/summary/<n>`, `<session>/memory/<key>`, `<session>/changes`, or
    /// what a summarizer item carries.
    pub item_id: String,
    /// The session it comes from.
    pub session_id: Uuid,
    /// That session's relation to the requesting one.
    pub relation: Relation,
    /// What it is.
    pub kind: ItemKind,
    /// The messages it cites: message ids or positions (24 hex digits), as its source records
    /// them (empty when it has none, e.g. a plain-text summary paragraph).
    pub messages: Vec<String>,
    /// µs since the epoch.
    pub created_at: i64,
    /// How it was scored.
    pub score: ScoreBreakdown,
    /// Included, or why not.
    pub reason: Reason,
    /// Tokens its section takes in the block (counted for included and over-budget items).
    pub tokens: Option<u32>,
}

/// The answer: one JSON shape for the job's result and the advice endpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextResult {
    /// The block to put in the agent's prompt (empty when abstaining or nothing fits).
    pub context: String,
    /// Tokens of `context` as counted by `tokenizer`; never more than `token_budget`.
    pub tokens_used: u32,
    /// The budget asked for.
    pub token_budget: u32,
    /// How tokens were counted.
    pub tokenizer: TokenizerInfo,
    /// Nothing relevant was found: `context` is empty on purpose.
    pub abstained: bool,
    /// Why it abstained.
    pub abstain_reason: Option<String>,
    /// The items in the block, in block order (best first).
    pub included: Vec<ManifestItem>,
    /// Items left out, best-scored first, at most [`MAX_EXCLUDED_LISTED`].
    pub excluded: Vec<ManifestItem>,
    /// Excluded items not listed.
    pub excluded_not_listed: u32,
    /// Sessions read and visible to the user (including the requesting one).
    pub sessions_considered: u32,
    /// Related sessions skipped because the user may not read them. Counted only: the
    /// manifest goes to the requester and names nothing they cannot read.
    pub sessions_not_visible: u32,
}

/// Why [`build_context`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// A bad request field.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field, as in the request's JSON.
        field: &'static str,
        /// What is accepted.
        message: String,
    },
    /// The session or user does not exist in this tenant, or the session is not visible to the
    /// user (not told apart, so a session id of another user or tenant reveals nothing).
    #[error("{what} {id} not found")]
    NotFound {
        /// `"workspace session"` or `"user"`.
        what: &'static str,
        /// The id asked for.
        id: Uuid,
    },
    /// A repository call failed (store errors stay typed inside, retryable or not).
    #[error(transparent)]
    Store(#[from] steward_models::Error),
    /// The embedded BPE table could not be built (a broken build; not retryable).
    #[error("tokenizer unavailable: {0}")]
    Tokenizer(String),
}

impl ContextError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ContextError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Builds the context block for `req`: validates it, reads the sessions the user may read,
/// scores their items against the question, and fills `token_budget` with whole items, best
/// first. `now_micros` (µs since the epoch) is the time recency is measured from: pass the
/// store clock's `now_micros()` (injected, so tests and the evaluation are deterministic). The
/// same inputs over the same records give the same result, byte for byte.
///
/// # Errors
/// [`ContextError::Invalid`] naming a request field; [`ContextError::NotFound`] for a session
/// or user that does not exist in the tenant (another tenant's ids included) or a session the
/// user may not read; [`ContextError::Store`] for repository errors (retry when the store
/// error is retryable); [`ContextError::Tokenizer`].
pub async fn build_context(
    models: &Models,
    req: &ContextRequest,
    now_micros: i64,
) -> Result<ContextResult, ContextError> {
    req.validate()?;
    let counter = tokens::TokenCounter::for_model(&req.model)?;
    let scope = gather::gather(models, req).await?;
    Ok(budget::select(req, &scope, &counter, now_micros))
}
