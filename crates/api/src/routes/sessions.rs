//! `/v1/sessions`: workspace sessions, their conversation messages, file changes, summary,
//! the advice endpoint, and cancelling a session's jobs.
//!
//! A private session is visible to its owner and to the tenant's admins; to anyone else it is
//! a 404, like a session of another tenant.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use steward_models::{
    FileChange, MessageRole, NewConversation, NewMessage, NewWorkspaceSession, ToolCall,
    ToolResult, Visibility, WorkspaceSession,
};
use steward_queue::JobState;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_json, ApiJson, ApiPath, Principal};
use crate::kinds::{
    ContextError, ContextRequest, ContextResult, BUILD_CROSS_SESSION_CONTEXT, DEFAULT_MODEL,
};
use crate::state::AppState;
use crate::times::{json_times, parse_rfc3339};

/// Path of a session.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct SessionPath {
    /// The session id.
    id: Uuid,
}

/// Loads a session the caller may see, or 404.
pub(crate) async fn visible_session(
    state: &AppState,
    p: &Principal,
    id: Uuid,
) -> ApiResult<WorkspaceSession> {
    let s = state
        .models()
        .workspace_sessions()
        .get(p.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace session"))?;
    let visible = p.is_admin() || p.user.is_some_and(|u| s.visible_to(u));
    if visible {
        Ok(s)
    } else {
        Err(ApiError::not_found("workspace session"))
    }
}

fn visibility(field: &str, v: Option<&str>) -> ApiResult<Option<Visibility>> {
    match v {
        None => Ok(None),
        Some("private") => Ok(Some(Visibility::Private)),
        Some("shared") => Ok(Some(Visibility::Shared)),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("`{other}`: expected private or shared"),
        )),
    }
}

/// A new workspace session (it gets its own conversation).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSession {
    /// Display name.
    pub(crate) name: String,
    /// The workspace path.
    pub(crate) workspace: String,
    /// `private` (default) or `shared`.
    pub(crate) visibility: Option<String>,
    /// The owner; default the caller (`sub`). Only admins may name another user.
    pub(crate) owner_id: Option<Uuid>,
}

/// Creates a workspace session and its conversation.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, description = "the session", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateSession>,
) -> ApiResult<Response> {
    let owner = match req.owner_id {
        Some(o) if Some(o) != p.user => {
            p.require_admin()?;
            o
        }
        _ => p.require_user()?,
    };
    let models = state.models();
    let id = models.new_id();
    let conv = models
        .conversations()
        .create(
            p.tenant,
            NewConversation {
                id: None,
                title: req.name.clone(),
                created_by: Some(owner),
                session_id: Some(id),
            },
        )
        .await?;
    let mut new = NewWorkspaceSession::new(req.name, owner, req.workspace);
    new.id = Some(id);
    new.conversation_id = Some(conv.id);
    if let Some(v) = visibility("visibility", req.visibility.as_deref())? {
        new.visibility = v;
    }
    let s = models.workspace_sessions().create(p.tenant, new).await?;
    let mut resp = (StatusCode::CREATED, Json(json_times(&s)?)).into_response();
    if let Ok(v) = format!("/v1/sessions/{}", s.id).parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// A session.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(SessionPath),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_session(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = visible_session(&state, &p, path.id).await?;
    Ok(Json(json_times(&s)?))
}

/// A change of a session; absent fields stay as they are. Times inside `terminal` and
/// `agent_memory` are RFC 3339.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSession {
    /// Display name.
    pub(crate) name: Option<String>,
    /// `private` or `shared`.
    pub(crate) visibility: Option<String>,
    /// Open files.
    pub(crate) open_files: Option<Vec<String>>,
    /// Files the agent keeps in context.
    pub(crate) context_files: Option<Vec<String>>,
    /// Tabs and cursors (`{tabs, active_tab, cursors}`).
    #[schema(value_type = Option<Object>)]
    pub(crate) editor: Option<serde_json::Value>,
    /// Terminal history (`{commands: [{command, cwd, exit_code, started_at, finished_at}]}`).
    #[schema(value_type = Option<Object>)]
    pub(crate) terminal: Option<serde_json::Value>,
    /// Agent memory (`[{key, value, updated_at}]`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub(crate) agent_memory: Option<serde_json::Value>,
    /// Related sessions.
    pub(crate) related: Option<Vec<Uuid>>,
}

/// Parses a nested record, turning its RFC 3339 times into µs and naming `field` on errors.
fn nested<T: serde::de::DeserializeOwned>(field: &str, mut v: serde_json::Value) -> ApiResult<T> {
    untime(field, &mut v)?;
    let bytes = serde_json::to_vec(&v).map_err(|e| ApiError::invalid(field, e.to_string()))?;
    parse_json::<T>(&bytes).map_err(|mut e| {
        e.field = Some(match e.field {
            Some(inner) => format!("{field}.{inner}"),
            None => field.to_string(),
        });
        e
    })
}

fn untime(field: &str, v: &mut serde_json::Value) -> ApiResult<()> {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if matches!(k.as_str(), "started_at" | "finished_at" | "updated_at") {
                    if let Some(s) = val.as_str() {
                        *val = serde_json::Value::from(parse_rfc3339(&format!("{field}.{k}"), s)?);
                        continue;
                    }
                }
                untime(field, val)?;
            }
        }
        serde_json::Value::Array(items) => {
            for i in items {
                untime(field, i)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Updates a session.
#[utoipa::path(patch, path = "/v1/sessions/{id}", tag = "sessions", params(SessionPath),
    request_body = UpdateSession,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_session(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
    ApiJson(req): ApiJson<UpdateSession>,
) -> ApiResult<Json<serde_json::Value>> {
    visible_session(&state, &p, path.id).await?;
    let vis = visibility("visibility", req.visibility.as_deref())?;
    let editor = req
        .editor
        .map(|v| nested::<steward_models::EditorState>("editor", v))
        .transpose()?;
    let terminal = req
        .terminal
        .map(|v| nested::<steward_models::TerminalState>("terminal", v))
        .transpose()?;
    let memory = req
        .agent_memory
        .map(|v| nested::<Vec<steward_models::AgentMemoryEntry>>("agent_memory", v))
        .transpose()?;
    let s = state
        .models()
        .workspace_sessions()
        .update(p.tenant, path.id, |s| {
            if let Some(n) = &req.name {
                s.name.clone_from(n);
            }
            if let Some(v) = vis {
                s.visibility = v;
            }
            if let Some(f) = &req.open_files {
                s.open_files.clone_from(f);
            }
            if let Some(f) = &req.context_files {
                s.context_files.clone_from(f);
            }
            if let Some(e) = &editor {
                s.editor = e.clone();
            }
            if let Some(t) = &terminal {
                s.terminal = t.clone();
            }
            if let Some(m) = &memory {
                s.agent_memory.clone_from(m);
            }
            if let Some(r) = &req.related {
                s.related.clone_from(r);
            }
            Ok(())
        })
        .await?;
    Ok(Json(json_times(&s)?))
}

/// One message to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageIn {
    /// A client-chosen id makes retries idempotent (an id already appended is refused, 409).
    pub(crate) id: Option<Uuid>,
    /// `system`, `user`, `assistant` or `tool`.
    #[schema(value_type = String)]
    pub(crate) role: MessageRole,
    /// The text.
    pub(crate) content: String,
    /// Tool calls (`[{id, name, arguments}]`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub(crate) tool_calls: Vec<ToolCall>,
    /// Tool results (`[{call_id, content, is_error}]`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub(crate) tool_results: Vec<ToolResult>,
    /// The model, for assistant messages.
    pub(crate) model: Option<String>,
}

/// Messages to append, in order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendMessages {
    /// 1 to 1000 messages.
    pub(crate) messages: Vec<MessageIn>,
}

/// An appended message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppendedMessage {
    /// Its id.
    pub(crate) id: Uuid,
    /// Its position in the conversation (24 hex digits).
    pub(crate) position: String,
}

/// What an append did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppendedView {
    /// The session's conversation.
    pub(crate) conversation_id: Uuid,
    /// In request order.
    pub(crate) messages: Vec<AppendedMessage>,
}

/// Appends messages to the session's conversation.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "sessions", params(SessionPath),
    request_body = AppendMessages,
    responses((status = 201, body = AppendedView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn append_messages(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
    ApiJson(req): ApiJson<AppendMessages>,
) -> ApiResult<(StatusCode, Json<AppendedView>)> {
    let s = visible_session(&state, &p, path.id).await?;
    let models = state.models();
    let conversation = match s.conversation_id {
        Some(c) => c,
        None => {
            let conv = models
                .conversations()
                .create(
                    p.tenant,
                    NewConversation {
                        id: None,
                        title: s.name.clone(),
                        created_by: Some(s.owner_id),
                        session_id: Some(s.id),
                    },
                )
                .await?;
            let s = models
                .workspace_sessions()
                .update(p.tenant, s.id, |s| {
                    if s.conversation_id.is_none() {
                        s.conversation_id = Some(conv.id);
                    }
                    Ok(())
                })
                .await?;
            s.conversation_id.unwrap_or(conv.id)
        }
    };
    let messages = req
        .messages
        .into_iter()
        .map(|m| NewMessage {
            id: m.id,
            author_id: (m.role == MessageRole::User).then_some(p.user).flatten(),
            role: m.role,
            content: m.content,
            tool_calls: m.tool_calls,
            tool_results: m.tool_results,
            model: m.model,
        })
        .collect();
    let stored = models
        .conversations()
        .append_batch(p.tenant, conversation, messages)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AppendedView {
            conversation_id: conversation,
            messages: stored
                .into_iter()
                .map(|m| AppendedMessage {
                    id: m.message.id,
                    position: m.position.to_string(),
                })
                .collect(),
        }),
    ))
}

/// A file's content as seen now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileChangeIn {
    /// Workspace-relative path.
    pub(crate) path: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Content hash, e.g. `sha256:<hex>`.
    pub(crate) content_hash: String,
    /// The workspace; default the session's.
    pub(crate) workspace: Option<String>,
}

/// Records a file change made in the session (creates, adds a version, or does nothing if
/// unchanged).
#[utoipa::path(post, path = "/v1/sessions/{id}/files", tag = "sessions", params(SessionPath),
    request_body = FileChangeIn,
    responses((status = 200, description = "the file", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn record_file(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
    ApiJson(req): ApiJson<FileChangeIn>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = visible_session(&state, &p, path.id).await?;
    let file = state
        .models()
        .files()
        .record_change(
            p.tenant,
            FileChange {
                workspace: req.workspace.unwrap_or(s.workspace),
                path: req.path,
                size: req.size,
                content_hash: req.content_hash,
                session_id: Some(s.id),
                user_id: p.user,
            },
        )
        .await?;
    Ok(Json(json_times(&file)?))
}

/// A session's latest summary.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SummaryView {
    /// The session.
    pub(crate) session_id: Uuid,
    /// `{text, through, message_count, created_at}`, or null before the first summary.
    #[schema(value_type = Option<Object>)]
    pub(crate) summary: Option<serde_json::Value>,
    /// The structured summary behind it (intent, decisions, changes, errors fixed, open todos,
    /// current state, next step; items cite message positions) and how it was made, or null.
    #[schema(value_type = Option<Object>)]
    pub(crate) detail: Option<serde_json::Value>,
}

/// Reads a session's summary.
#[utoipa::path(get, path = "/v1/sessions/{id}/summary", tag = "sessions", params(SessionPath),
    responses((status = 200, body = SummaryView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn summary(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
) -> ApiResult<Json<SummaryView>> {
    let s = visible_session(&state, &p, path.id).await?;
    Ok(Json(SummaryView {
        session_id: s.id,
        summary: s.summary.as_ref().map(json_times).transpose()?,
        detail: s.summary_detail.as_ref().map(json_times).transpose()?,
    }))
}

/// How many jobs a cancel reached.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelledView {
    /// Jobs cancelled or flagged.
    pub(crate) cancelled: usize,
}

/// Cancels every unfinished job of a session.
#[utoipa::path(post, path = "/v1/sessions/{id}/jobs/cancel", tag = "jobs", params(SessionPath),
    responses((status = 200, body = CancelledView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn cancel_session_jobs(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
) -> ApiResult<Json<CancelledView>> {
    visible_session(&state, &p, path.id).await?;
    let n = state.queue().cancel_session(p.tenant, path.id).await?;
    Ok(Json(CancelledView { cancelled: n }))
}

/// A question for the cross-session context builder.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdviceRequest {
    /// The agent's question or task (not blank, at most 8 KiB).
    pub(crate) question: String,
    /// Most tokens the context may have (1 to 12000).
    pub(crate) token_budget: u32,
    /// The model the context is for (chooses the tokenizer); default `gpt-4o`.
    pub(crate) model: Option<String>,
}

/// The advice is still being computed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdvicePending {
    /// The job computing it; poll `GET /v1/jobs/{job_id}` (its `result` is the advice).
    pub(crate) job_id: Uuid,
    /// The job's state now.
    pub(crate) state: String,
}

fn context_error(e: ContextError) -> ApiError {
    match e {
        ContextError::Invalid { field, message } => ApiError::invalid(field, message),
        other => ApiError::invalid("question", other.to_string()),
    }
}

/// Cross-session context for an agent: enqueues `build_cross_session_context` and waits up to
/// `api.advice_wait` for it. 200 with the result (the workers' `ContextResult`), or 202 with the
/// job to poll.
#[utoipa::path(post, path = "/v1/sessions/{id}/advice", tag = "sessions", params(SessionPath),
    request_body = AdviceRequest,
    responses((status = 200, description = "the context", body = ContextResult),
        (status = 202, description = "still computing; poll the Location", body = AdvicePending),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, description = "the job failed", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn advice(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<SessionPath>,
    ApiJson(req): ApiJson<AdviceRequest>,
) -> ApiResult<Response> {
    let user = p.require_user()?;
    let s = visible_session(&state, &p, path.id).await?;
    let args = ContextRequest {
        tenant: p.tenant,
        user_id: user,
        session_id: s.id,
        question: req.question,
        token_budget: req.token_budget,
        model: req.model.unwrap_or_else(|| DEFAULT_MODEL.to_string()),
    };
    args.validate().map_err(context_error)?;
    let args = serde_json::to_value(&args).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode the advice request: {e}"),
        )
    })?;
    let queue = state.queue();
    let e = queue
        .enqueue(
            p.tenant,
            steward_workers::kinds::new_job(BUILD_CROSS_SESSION_CONTEXT, args).session(s.id),
        )
        .await?;
    let job = queue
        .wait(p.tenant, e.id, state.config().advice_wait)
        .await?;
    match job.state {
        JobState::Completed => {
            Ok(Json(job.result.unwrap_or(serde_json::Value::Null)).into_response())
        }
        JobState::Dead | JobState::Cancelled => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "advice_failed",
            format!(
                "the context job {} ended {}: {}",
                job.id,
                job.state,
                job.errors
                    .last()
                    .map_or("no error recorded", |e| e.message.as_str())
            ),
        )),
        other => {
            let mut resp = (
                StatusCode::ACCEPTED,
                Json(AdvicePending {
                    job_id: job.id,
                    state: other.as_str().to_string(),
                }),
            )
                .into_response();
            if let Ok(v) = format!("/v1/jobs/{}", job.id).parse() {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
    }
}
