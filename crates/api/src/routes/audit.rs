//! `/v1/audit` (admin): the tenant's audit events and a verification of its hash chain.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use steward_models::{hash_hex, AuditEvent};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiQuery, Principal};
use crate::state::AppState;
use crate::times::rfc3339;

/// An audit event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventView {
    /// Position in the chain; absent while not sealed yet.
    pub(crate) seq: Option<u64>,
    /// Its chain hash (hex); absent while not sealed yet.
    pub(crate) hash: Option<String>,
    /// UUIDv7.
    pub(crate) id: Uuid,
    /// When it happened.
    pub(crate) at: String,
    /// Who did it.
    pub(crate) actor_id: Option<Uuid>,
    /// What happened.
    pub(crate) action: String,
    /// What it happened to.
    pub(crate) target: Option<String>,
    /// Anything else (verbatim).
    #[schema(value_type = Object)]
    pub(crate) details: serde_json::Value,
}

fn view(seq: Option<u64>, hash: Option<String>, e: AuditEvent) -> EventView {
    EventView {
        seq,
        hash,
        id: e.id,
        at: rfc3339(e.at),
        actor_id: e.actor_id,
        action: e.action,
        target: e.target,
        details: e.details,
    }
}

/// Which events.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Sealed events from this seq on (default 1).
    from_seq: Option<u64>,
    /// 1 to 1000 (default 100).
    limit: Option<usize>,
    /// Also list events appended and not sealed yet (default false).
    pending: Option<bool>,
}

/// Audit events.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventsView {
    /// Sealed events, in chain order.
    pub(crate) events: Vec<EventView>,
    /// Not sealed yet, oldest first (only with `pending=true`).
    pub(crate) pending: Vec<EventView>,
}

/// Lists the tenant's audit events (admin).
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(EventsQuery),
    responses((status = 200, body = EventsView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventsView>> {
    p.require_admin()?;
    let audit = state.models().audit();
    let limit = q.limit.unwrap_or(100);
    let sealed = audit
        .events(p.tenant, q.from_seq.unwrap_or(1).max(1), limit)
        .await?;
    let pending = if q.pending.unwrap_or(false) {
        audit.pending(p.tenant, limit).await?
    } else {
        Vec::new()
    };
    Ok(Json(EventsView {
        events: sealed
            .into_iter()
            .map(|s| view(Some(s.seq), Some(hash_hex(&s.hash)), s.event))
            .collect(),
        pending: pending.into_iter().map(|e| view(None, None, e)).collect(),
    }))
}

/// The outcome of a verification.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerifyView {
    /// The chain verifies.
    pub(crate) ok: bool,
    /// The head verified up to (publish it elsewhere to detect a later rollback).
    pub(crate) head_seq: Option<u64>,
    /// Its hash (hex).
    pub(crate) head_hash: Option<String>,
    /// Compaction segments checked.
    pub(crate) segments: Option<usize>,
    /// Events checked one by one.
    pub(crate) events_checked: Option<u64>,
    /// Where it breaks, when it does.
    pub(crate) broken_at_seq: Option<u64>,
    /// What is wrong there.
    pub(crate) problem: Option<String>,
}

/// Verifies the tenant's audit hash chain (admin). A broken chain is a 200 with `ok: false`.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = VerifyView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<Json<VerifyView>> {
    p.require_admin()?;
    match state.models().audit().verify_chain(p.tenant).await {
        Ok(r) => Ok(Json(VerifyView {
            ok: true,
            head_seq: Some(r.head.seq),
            head_hash: Some(hash_hex(&r.head.hash)),
            segments: Some(r.segments),
            events_checked: Some(r.events_checked),
            broken_at_seq: None,
            problem: None,
        })),
        Err(steward_models::Error::AuditChainBroken(b)) => Ok(Json(VerifyView {
            ok: false,
            head_seq: None,
            head_hash: None,
            segments: None,
            events_checked: None,
            broken_at_seq: Some(b.seq),
            problem: Some(b.to_string()),
        })),
        Err(e) => Err(e.into()),
    }
}
