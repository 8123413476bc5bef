//! `/v1/cron` and `/v1/cron/{name}` (admin): the tenant's cron schedules.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use steward_queue::{CronSchedule, MissedPolicy, OverlapPolicy, ScheduleSpec, Scheduler};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Principal};
use crate::routes::jobs::{new_job, EnqueueRequest};
use crate::state::AppState;
use crate::times::{rfc3339, rfc3339_opt};

/// Path of a schedule.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct CronPath {
    /// The schedule's name (unique in the tenant).
    name: String,
}

/// A schedule to create or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleIn {
    /// A cron expression: five fields (`min hour dom month dow`), six or seven with seconds
    /// and year, or `@hourly`-style shortcuts.
    pub(crate) expression: String,
    /// IANA time zone (default `UTC`).
    pub(crate) time_zone: Option<String>,
    /// The job each tick enqueues (`run_at` and `idempotency_key` are not allowed).
    pub(crate) job: EnqueueRequest,
    /// `skip` (default) or `allow` a tick while the previous run is unfinished.
    pub(crate) overlap: Option<String>,
    /// `coalesce` (default) or `drop` ticks missed during downtime.
    pub(crate) missed: Option<String>,
}

/// A schedule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleView {
    /// Its name.
    pub(crate) name: String,
    /// The cron expression.
    pub(crate) expression: String,
    /// The time zone it is read in.
    pub(crate) time_zone: String,
    /// The job each tick enqueues.
    pub(crate) job: JobTemplateView,
    /// `skip` or `allow`.
    pub(crate) overlap: String,
    /// `coalesce` or `drop`.
    pub(crate) missed: String,
    /// The next tick.
    pub(crate) next_fire: String,
    /// The latest tick handled.
    pub(crate) last_fire: Option<String>,
    /// The job of the latest fired tick.
    pub(crate) last_job: Option<uuid::Uuid>,
    /// Paused.
    pub(crate) paused: bool,
}

/// The job a schedule enqueues.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobTemplateView {
    /// Kind.
    pub(crate) kind: String,
    /// Arguments.
    #[schema(value_type = Object)]
    pub(crate) args: serde_json::Value,
    /// Priority.
    pub(crate) priority: u8,
    /// Attempts.
    pub(crate) max_attempts: u32,
    /// Per-attempt timeout.
    pub(crate) timeout_ms: u64,
}

fn name_of<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn view(s: CronSchedule) -> ScheduleView {
    ScheduleView {
        overlap: name_of(&s.overlap),
        missed: name_of(&s.missed),
        job: JobTemplateView {
            kind: s.template.kind,
            args: s.template.args,
            priority: s.template.priority,
            max_attempts: s.template.max_attempts,
            timeout_ms: u64::try_from(s.template.timeout.as_millis()).unwrap_or(u64::MAX),
        },
        name: s.name,
        expression: s.expression,
        time_zone: s.time_zone,
        next_fire: rfc3339(s.next_fire),
        last_fire: rfc3339_opt(s.last_fire),
        last_job: s.last_job,
        paused: s.paused,
    }
}

/// Which page of schedules.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct CronListQuery {
    /// The last name of the previous page.
    after: Option<String>,
    /// 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// A page of schedules, by name.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleList {
    /// The schedules.
    schedules: Vec<ScheduleView>,
    /// Pass as `after` for the next page (absent on the last page).
    next_after: Option<String>,
}

/// The tenant's schedules, by name (admin).
#[utoipa::path(get, path = "/v1/cron", tag = "cron", params(CronListQuery),
    responses((status = 200, body = ScheduleList), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_schedules(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<CronListQuery>,
) -> ApiResult<Json<ScheduleList>> {
    p.require_admin()?;
    let limit = q.limit.unwrap_or(100);
    let list = Scheduler::new(state.queue())
        .list(Some(p.tenant), q.after.as_deref(), limit)
        .await?;
    let next_after = if list.len() == limit {
        list.last().map(|s| s.name.clone())
    } else {
        None
    };
    Ok(Json(ScheduleList {
        schedules: list.into_iter().map(view).collect(),
        next_after,
    }))
}

/// A schedule of the tenant (admin).
#[utoipa::path(get, path = "/v1/cron/{name}", tag = "cron", params(CronPath),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_schedule(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<CronPath>,
) -> ApiResult<Json<ScheduleView>> {
    p.require_admin()?;
    let s = Scheduler::new(state.queue())
        .get(Some(p.tenant), &path.name)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))?;
    Ok(Json(view(s)))
}

/// Creates or replaces a schedule of the tenant (admin).
#[utoipa::path(put, path = "/v1/cron/{name}", tag = "cron", params(CronPath),
    request_body = ScheduleIn,
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn put_schedule(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<CronPath>,
    ApiJson(req): ApiJson<ScheduleIn>,
) -> ApiResult<Json<ScheduleView>> {
    p.require_admin()?;
    if req.job.run_at.is_some() {
        return Err(ApiError::invalid(
            "job.run_at",
            "a schedule's ticks set the run time",
        ));
    }
    if req.job.idempotency_key.is_some() {
        return Err(ApiError::invalid(
            "job.idempotency_key",
            "each tick gets its own job id; an idempotency key would merge them",
        ));
    }
    let template = new_job(&state, req.job, "job.")?;
    let mut spec = ScheduleSpec::new(Some(p.tenant), path.name, req.expression, template);
    if let Some(tz) = req.time_zone {
        spec = spec.time_zone(tz);
    }
    spec = spec.overlap(match req.overlap.as_deref() {
        None | Some("skip") => OverlapPolicy::Skip,
        Some("allow") => OverlapPolicy::Allow,
        Some(o) => {
            return Err(ApiError::invalid(
                "overlap",
                format!("`{o}`: expected skip or allow"),
            ))
        }
    });
    spec = spec.missed(match req.missed.as_deref() {
        None | Some("coalesce") => MissedPolicy::Coalesce,
        Some("drop") => MissedPolicy::Drop,
        Some(m) => {
            return Err(ApiError::invalid(
                "missed",
                format!("`{m}`: expected coalesce or drop"),
            ))
        }
    });
    let s = Scheduler::new(state.queue()).upsert(spec).await?;
    Ok(Json(view(s)))
}

/// Deletes a schedule of the tenant (admin).
#[utoipa::path(delete, path = "/v1/cron/{name}", tag = "cron", params(CronPath),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete_schedule(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<CronPath>,
) -> ApiResult<StatusCode> {
    p.require_admin()?;
    if Scheduler::new(state.queue())
        .delete(Some(p.tenant), &path.name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("schedule"))
    }
}
