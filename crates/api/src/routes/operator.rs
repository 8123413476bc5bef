//! `/v1/operator`: the only cross-tenant endpoints, for the `operator` role of the system tenant
//! (`steward_queue::SYSTEM_TENANT`, the nil UUID). Each action is written to the audit log of
//! the tenant it acts on. A plan's limits also set the tenant's queue configuration.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use steward_models::{NewAuditEvent, NewTenant, NewUser, Plan, PlanLimits, Role, TenantKind};
use steward_workers::tenancy::queue_config;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Principal};
use crate::state::AppState;
use crate::times::json_times;

fn require_operator(p: &Principal) -> ApiResult<()> {
    if p.is_operator() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this needs the operator role of the system tenant",
        ))
    }
}

async fn audit(
    state: &AppState,
    p: &Principal,
    tenant: Uuid,
    action: &str,
    details: serde_json::Value,
) -> ApiResult<()> {
    let mut e = NewAuditEvent::new(action);
    e.actor_id = p.user;
    e.target = Some(format!("tenant:{tenant}"));
    e.details = serde_json::json!({"operator": p.subject, "details": details});
    state.models().audit().append(tenant, e).await?;
    Ok(())
}

/// Plan limits (every field required when given).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsIn {
    /// 1 to 1000.
    pub(crate) queue_weight: u32,
    /// 1 to 10000.
    pub(crate) max_running: u32,
    /// 1 to 10000000.
    pub(crate) max_queued: u32,
    /// At least 366 (2192 for HIPAA tenants).
    pub(crate) audit_retention_days: u32,
    /// May data go to third-party LLMs.
    pub(crate) third_party_llm: bool,
}

impl From<LimitsIn> for PlanLimits {
    fn from(l: LimitsIn) -> Self {
        PlanLimits {
            queue_weight: l.queue_weight,
            max_running: l.max_running,
            max_queued: l.max_queued,
            audit_retention_days: l.audit_retention_days,
            third_party_llm: l.third_party_llm,
        }
    }
}

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTenant {
    /// Display name.
    pub(crate) name: String,
    /// `personal` or `organization`.
    #[schema(value_type = String)]
    pub(crate) kind: TenantKind,
    /// `free`, `pro` or `enterprise`.
    #[schema(value_type = String)]
    pub(crate) plan: Plan,
    /// Subject to HIPAA.
    #[serde(default)]
    pub(crate) hipaa: bool,
    /// Overrides of the plan's limits.
    pub(crate) limits: Option<LimitsIn>,
    /// Feature flags.
    #[serde(default)]
    pub(crate) feature_flags: BTreeMap<String, bool>,
}

/// Creates a tenant and sets its queue configuration from its limits.
#[utoipa::path(post, path = "/v1/operator/tenants", tag = "operator", request_body = CreateTenant,
    responses((status = 201, description = "the tenant", body = Object),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_tenant(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_operator(&p)?;
    let mut new = NewTenant::new(req.name, req.kind, req.plan).hipaa(req.hipaa);
    new.limits = req.limits.map(PlanLimits::from);
    new.feature_flags = req.feature_flags;
    let t = state.models().tenants().create(new).await?;
    state
        .queue()
        .set_tenant_config(t.id, &queue_config(&t.limits))
        .await?;
    audit(
        &state,
        &p,
        t.id,
        "operator.tenant.create",
        serde_json::json!({"plan": t.plan, "limits": t.limits}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json_times(&t)?)))
}

/// Page of tenants.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantListQuery {
    /// The last id of the previous page.
    after: Option<Uuid>,
    /// 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TenantPage {
    /// Tenants in id order.
    #[schema(value_type = Vec<Object>)]
    pub(crate) tenants: Vec<serde_json::Value>,
    /// Pass as `after` for the next page.
    pub(crate) next: Option<Uuid>,
}

/// Lists tenants.
#[utoipa::path(get, path = "/v1/operator/tenants", tag = "operator", params(TenantListQuery),
    responses((status = 200, body = TenantPage), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_tenants(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<TenantListQuery>,
) -> ApiResult<Json<TenantPage>> {
    require_operator(&p)?;
    let tenants = state.models().tenants();
    let page = tenants.list_ids(q.after, q.limit.unwrap_or(100)).await?;
    let mut out = Vec::with_capacity(page.items.len());
    for id in page.items {
        if let Some(t) = tenants.get(id).await? {
            out.push(json_times(&t)?);
        }
    }
    Ok(Json(TenantPage {
        tenants: out,
        next: page.next,
    }))
}

/// Path of a tenant.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct TenantPath {
    /// The tenant id.
    id: Uuid,
}

/// A tenant.
#[utoipa::path(get, path = "/v1/operator/tenants/{id}", tag = "operator", params(TenantPath),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<TenantPath>,
) -> ApiResult<Json<serde_json::Value>> {
    require_operator(&p)?;
    let t = state
        .models()
        .tenants()
        .get(path.id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(json_times(&t)?))
}

/// A new user of a tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    /// Email (unique in the tenant).
    pub(crate) email: String,
    /// `owner`, `admin`, `member`, `agent` (at least one).
    #[schema(value_type = Vec<String>)]
    pub(crate) roles: Vec<Role>,
    /// Initial password.
    pub(crate) password: Option<String>,
    /// Display name.
    pub(crate) display_name: Option<String>,
}

/// Creates a user in a tenant.
#[utoipa::path(post, path = "/v1/operator/tenants/{id}/users", tag = "operator",
    params(TenantPath), request_body = CreateUser,
    responses((status = 201, description = "the user", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<TenantPath>,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_operator(&p)?;
    let mut new = NewUser::new(req.email, req.roles);
    if let Some(pw) = req.password {
        new = new.password(pw);
    }
    if let Some(n) = req.display_name {
        new = new.display_name(n);
    }
    let u = state.models().users().create(path.id, new).await?;
    audit(
        &state,
        &p,
        path.id,
        "operator.user.create",
        serde_json::json!({"user": u.id, "email": u.email, "roles": u.roles}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json_times(&u)?)))
}

/// A plan change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetPlan {
    /// `free`, `pro` or `enterprise`.
    #[schema(value_type = String)]
    pub(crate) plan: Plan,
    /// Limits; default the plan's.
    pub(crate) limits: Option<LimitsIn>,
}

/// Sets a tenant's plan and limits, and its queue configuration from them.
#[utoipa::path(put, path = "/v1/operator/tenants/{id}/plan", tag = "operator",
    params(TenantPath), request_body = SetPlan,
    responses((status = 200, description = "the tenant", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set_plan(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(path): ApiPath<TenantPath>,
    ApiJson(req): ApiJson<SetPlan>,
) -> ApiResult<Json<serde_json::Value>> {
    require_operator(&p)?;
    let t = state
        .models()
        .tenants()
        .update(path.id, |t| {
            t.plan = req.plan;
            t.limits = req
                .limits
                .map_or_else(|| req.plan.default_limits(t.hipaa), PlanLimits::from);
            Ok(())
        })
        .await?;
    state
        .queue()
        .set_tenant_config(t.id, &queue_config(&t.limits))
        .await?;
    audit(
        &state,
        &p,
        t.id,
        "operator.tenant.plan",
        serde_json::json!({"plan": t.plan, "limits": t.limits}),
    )
    .await?;
    Ok(Json(json_times(&t)?))
}
