//! `/v1/jobs` and `/v1/queue`: enqueue (one or a batch), get, list, cancel, retry, why it
//! waits, the tenant's counts, pause and resume.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use steward_queue::{Enqueued, Job, JobState, ListFilter, NewJob};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{idempotency_header, ApiJson, ApiPath, ApiQuery, Principal};
use crate::state::AppState;
use crate::times::{json_times, parse_rfc3339, rfc3339, rfc3339_opt};

/// Default page size of `GET /v1/jobs`.
const DEFAULT_LIMIT: usize = 50;

/// A job to enqueue.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnqueueRequest {
    /// A built-in kind or one of the configured external kinds.
    pub(crate) kind: String,
    /// Handler arguments (JSON; size-limited).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(crate) args: Option<serde_json::Value>,
    /// Lower runs first (default 100).
    pub(crate) priority: Option<u8>,
    /// Run no earlier than this (RFC 3339).
    pub(crate) run_at: Option<String>,
    /// Attempts allowed (default 5).
    pub(crate) max_attempts: Option<u32>,
    /// Per-attempt timeout in milliseconds (default 300000).
    pub(crate) timeout_ms: Option<u64>,
    /// A second enqueue with the same key returns the first job (also from `Idempotency-Key`).
    pub(crate) idempotency_key: Option<String>,
    /// The workspace session it belongs to.
    pub(crate) session_id: Option<Uuid>,
    /// A newer job with the same key replaces a still-waiting older one.
    pub(crate) supersede_key: Option<String>,
}

/// Jobs to enqueue atomically.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// 1 to 1000 jobs.
    pub(crate) jobs: Vec<EnqueueRequest>,
}

/// What an enqueue did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct EnqueuedView {
    /// The job (the earlier one, for a duplicate).
    pub(crate) id: Uuid,
    /// An earlier job with the same idempotency key was returned.
    pub(crate) duplicate: bool,
    /// The older job this one superseded.
    pub(crate) superseded: Option<Uuid>,
}

impl From<Enqueued> for EnqueuedView {
    fn from(e: Enqueued) -> Self {
        EnqueuedView {
            id: e.id,
            duplicate: e.duplicate,
            superseded: e.superseded,
        }
    }
}

/// What a batch enqueue did, in request order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct BatchView {
    /// One per job.
    pub(crate) jobs: Vec<EnqueuedView>,
}

/// A failed attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct AttemptErrorView {
    /// 1-based.
    pub(crate) attempt: u32,
    /// RFC 3339.
    pub(crate) at: String,
    /// What went wrong.
    pub(crate) message: String,
}

/// A job. The lease's fencing token is never shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct JobView {
    /// UUIDv7.
    pub(crate) id: Uuid,
    /// Kind.
    pub(crate) kind: String,
    /// Arguments.
    #[schema(value_type = Object)]
    pub(crate) args: serde_json::Value,
    /// `scheduled`, `queued`, `running`, `completed`, `cancelled` or `dead`.
    pub(crate) state: String,
    /// When it entered its state.
    pub(crate) state_since: String,
    /// Lower runs first.
    pub(crate) priority: u8,
    /// When it may run.
    pub(crate) run_at: String,
    /// Attempts started.
    pub(crate) attempt: u32,
    /// Attempts allowed.
    pub(crate) max_attempts: u32,
    /// Per-attempt timeout.
    pub(crate) timeout_ms: u64,
    /// Enqueued.
    pub(crate) created_at: String,
    /// Last change.
    pub(crate) updated_at: String,
    /// Reached a final state.
    pub(crate) finished_at: Option<String>,
    /// While running: when the lease ends.
    pub(crate) lease_expires_at: Option<String>,
    /// While running: the worker.
    pub(crate) worker: Option<String>,
    /// A cancellation was asked for while it ran.
    pub(crate) cancel_requested: bool,
    /// Latest failed attempts.
    pub(crate) errors: Vec<AttemptErrorView>,
    /// The handler's result, once completed.
    #[schema(value_type = Option<Object>)]
    pub(crate) result: Option<serde_json::Value>,
    /// `max_attempts`, `failed_permanently` or `lease_expired_too_often`.
    pub(crate) dead_reason: Option<String>,
    /// `requested`, `superseded` or `handler`.
    pub(crate) cancel_reason: Option<String>,
    /// Its workspace session.
    pub(crate) session_id: Option<Uuid>,
    /// Its idempotency key.
    pub(crate) idempotency_key: Option<String>,
    /// Its supersede key.
    pub(crate) supersede_key: Option<String>,
    /// The job that superseded it.
    pub(crate) superseded_by: Option<Uuid>,
}

fn enum_name<T: Serialize>(v: &T) -> Option<String> {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            id: j.id,
            kind: j.kind,
            args: j.args,
            state: j.state.as_str().to_string(),
            state_since: rfc3339(j.state_since),
            priority: j.priority,
            run_at: rfc3339(j.run_at),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
            finished_at: rfc3339_opt(j.finished_at),
            lease_expires_at: j.lease.as_ref().map(|l| rfc3339(l.expires_at)),
            worker: j.lease.map(|l| l.worker),
            cancel_requested: j.cancel_requested,
            errors: j
                .errors
                .into_iter()
                .map(|e| AttemptErrorView {
                    attempt: e.attempt,
                    at: rfc3339(e.at),
                    message: e.message,
                })
                .collect(),
            result: j.result,
            dead_reason: j.dead_reason.as_ref().and_then(enum_name),
            cancel_reason: j.cancel_reason.as_ref().and_then(enum_name),
            session_id: j.session_id,
            idempotency_key: j.idempotency_key,
            supersede_key: j.supersede_key,
            superseded_by: j.superseded_by,
        }
    }
}

/// Builds the queue's job from a request, checking the kind and the arguments' size.
/// `prefix` is prepended to field names (`jobs[3].` in a batch).
pub(crate) fn new_job(state: &AppState, req: EnqueueRequest, prefix: &str) -> ApiResult<NewJob> {
    let f = |name: &str| format!("{prefix}{name}");
    if !state.inner.allowed_kinds.contains(&req.kind) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_kind",
            format!(
                "kind `{}` is neither built in nor configured as external (api.external_kinds)",
                req.kind
            ),
        )
        .field(f("kind")));
    }
    let args = req
        .args
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    let size = steward_queue::json_size(&args);
    let max = state.inner.config.max_args_bytes;
    if size > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "args_too_large",
            format!("args are {size} bytes; at most {max}"),
        )
        .field(f("args")));
    }
    // A built-in kind gets its own timeout and attempts unless the request sets them.
    let mut job = steward_workers::kinds::new_job(&req.kind, args);
    if let Some(p) = req.priority {
        job = job.priority(p);
    }
    if let Some(at) = &req.run_at {
        job = job.run_at(parse_rfc3339(&f("run_at"), at)?);
    }
    if let Some(n) = req.max_attempts {
        job = job.max_attempts(n);
    }
    if let Some(ms) = req.timeout_ms {
        job = job.timeout(Duration::from_millis(ms));
    }
    if let Some(k) = req.idempotency_key {
        job = job.idempotency_key(k);
    }
    if let Some(s) = req.session_id {
        job = job.session(s);
    }
    if let Some(k) = req.supersede_key {
        job = job.supersede_key(k);
    }
    Ok(job)
}

fn created(id: Uuid, duplicate: bool, body: impl Serialize) -> Response {
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = format!("/v1/jobs/{id}").parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Enqueues one job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = EnqueueRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "idempotency key")),
    responses(
        (status = 201, description = "enqueued", body = EnqueuedView),
        (status = 200, description = "duplicate of an earlier job", body = EnqueuedView),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "rate limited or queue full", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn enqueue(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    ApiJson(mut req): ApiJson<EnqueueRequest>,
) -> ApiResult<Response> {
    if let Some(key) = idempotency_header(&headers)? {
        match &req.idempotency_key {
            Some(body) if *body != key => {
                return Err(ApiError::invalid(
                    "idempotency_key",
                    "differs from the Idempotency-Key header",
                ))
            }
            _ => req.idempotency_key = Some(key),
        }
    }
    let job = new_job(&state, req, "")?;
    let e = state.queue().enqueue(p.tenant, job).await?;
    Ok(created(e.id, e.duplicate, EnqueuedView::from(e)))
}

/// Enqueues jobs atomically: all or none.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "applied to jobs without their own key as `<key>:<index>`")),
    responses((status = 201, body = BatchView), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn enqueue_batch(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BatchRequest>,
) -> ApiResult<Response> {
    if req.jobs.is_empty() || req.jobs.len() > steward_queue::MAX_BATCH {
        return Err(ApiError::invalid(
            "jobs",
            format!("a batch holds 1 to {} jobs", steward_queue::MAX_BATCH),
        ));
    }
    let header_key = idempotency_header(&headers)?;
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (i, mut j) in req.jobs.into_iter().enumerate() {
        if let (Some(k), None) = (&header_key, &j.idempotency_key) {
            j.idempotency_key = Some(format!("{k}:{i}"));
        }
        jobs.push(new_job(&state, j, &format!("jobs[{i}]."))?);
    }
    let out = state.queue().enqueue_batch(p.tenant, jobs).await?;
    let all_duplicates = out.iter().all(|e| e.duplicate);
    let status = if all_duplicates {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(BatchView {
            jobs: out.into_iter().map(EnqueuedView::from).collect(),
        }),
    )
        .into_response())
}

/// Path of a job.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct JobPath {
    /// The job id.
    id: Uuid,
}

/// A job of the caller's tenant.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<JobPath>,
) -> ApiResult<Json<JobView>> {
    let job = state
        .queue()
        .get(p.tenant, path.id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(job.into()))
}

/// Filters and cursor of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this state.
    state: Option<String>,
    /// Only this kind.
    kind: Option<String>,
    /// Only this workspace session.
    session: Option<Uuid>,
    /// From a previous page's `next_cursor`.
    cursor: Option<String>,
    /// 1 to 500 (default 50).
    limit: Option<usize>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    /// The jobs.
    pub(crate) jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub(crate) next_cursor: Option<String>,
}

/// Lists the tenant's jobs.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<JobPage>> {
    let job_state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| ApiError::invalid("state", e))
        })
        .transpose()?;
    let filter = ListFilter {
        state: job_state,
        kind: q.kind,
        session: q.session,
    };
    let page = state
        .queue()
        .list(
            p.tenant,
            &filter,
            q.cursor.as_deref(),
            q.limit.unwrap_or(DEFAULT_LIMIT),
        )
        .await?;
    Ok(Json(JobPage {
        jobs: page.jobs.into_iter().map(JobView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A job's state after a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelView {
    /// The job.
    pub(crate) id: Uuid,
    /// `cancelled`, or `running` (flagged: its worker stops at the next heartbeat), or the
    /// final state it already had.
    pub(crate) state: String,
}

/// Cancels a job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(JobPath),
    responses((status = 200, body = CancelView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<JobPath>,
) -> ApiResult<Json<CancelView>> {
    let st = state.queue().cancel(p.tenant, path.id).await?;
    Ok(Json(CancelView {
        id: path.id,
        state: st.as_str().to_string(),
    }))
}

/// Puts a dead job back in the queue with fresh attempts.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not dead", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn retry_job(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<JobPath>,
) -> ApiResult<Json<JobView>> {
    state.queue().replay(p.tenant, path.id).await?;
    let job = state
        .queue()
        .get(p.tenant, path.id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(job.into()))
}

/// Why a job is not running yet (`reason`: `not_waiting`, `scheduled`, `paused`,
/// `at_concurrency_limit`, `queued`).
#[utoipa::path(get, path = "/v1/jobs/{id}/why", tag = "jobs", params(JobPath),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn why_waiting(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<JobPath>,
) -> ApiResult<Json<serde_json::Value>> {
    let why = state.queue().why_waiting(p.tenant, path.id).await?;
    Ok(Json(json_times(&why)?))
}

/// The tenant's jobs per state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueStats {
    /// Jobs per state (every state listed).
    pub(crate) counts: BTreeMap<String, i64>,
}

/// Jobs of the tenant per state.
#[utoipa::path(get, path = "/v1/queue/stats", tag = "jobs",
    responses((status = 200, body = QueueStats)), security(("bearer" = [])))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<Json<QueueStats>> {
    let counts = state.queue().counts(p.tenant).await?;
    let mut out: BTreeMap<String, i64> = JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for (s, n) in counts {
        out.insert(s.as_str().to_string(), n);
    }
    Ok(Json(QueueStats { counts: out }))
}

/// Which kind to pause or resume.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PauseQuery {
    /// One kind; absent for the whole tenant.
    kind: Option<String>,
}

/// Whether the tenant (or a kind) is paused now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PauseView {
    /// The kind, or absent for the whole tenant.
    pub(crate) kind: Option<String>,
    /// Paused after the call.
    pub(crate) paused: bool,
}

/// Pauses the tenant's queue, or one kind (admin).
#[utoipa::path(post, path = "/v1/queue/pause", tag = "jobs", params(PauseQuery),
    responses((status = 200, body = PauseView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<PauseQuery>,
) -> ApiResult<Json<PauseView>> {
    p.require_admin()?;
    state.queue().pause(p.tenant, q.kind.as_deref()).await?;
    Ok(Json(PauseView {
        kind: q.kind,
        paused: true,
    }))
}

/// Resumes what pause paused (admin).
#[utoipa::path(post, path = "/v1/queue/resume", tag = "jobs", params(PauseQuery),
    responses((status = 200, body = PauseView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<PauseQuery>,
) -> ApiResult<Json<PauseView>> {
    p.require_admin()?;
    state.queue().resume(p.tenant, q.kind.as_deref()).await?;
    Ok(Json(PauseView {
        kind: q.kind,
        paused: false,
    }))
}
