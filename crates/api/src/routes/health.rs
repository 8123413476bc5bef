//! `/healthz`, `/readyz`, `/metrics`, and the request-metrics middleware.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    pub(crate) status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The store answers a read transaction within `api.ready_timeout`.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let models = state.models();
    let tenants = models.tenants();
    let probe = tenants.get(steward_queue::SYSTEM_TENANT);
    match tokio::time::timeout(state.config().ready_timeout, probe).await {
        Ok(Ok(_)) => Ok(Json(Health { status: "ok" })),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store is not usable: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store did not answer in time",
        )),
    }
}

/// Prometheus text: `steward_http_requests_total` and `steward_http_request_duration_seconds`
/// by method, route and status, plus whatever else the process records.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    match &state.inner.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics recorder").into_response(),
    }
}

/// Counts requests and their latency by method, matched route and status.
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = state.inner.clock.monotonic();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", resp.status().as_u16().to_string()),
    ];
    metrics::counter!("steward_http_requests_total", &labels).increment(1);
    metrics::histogram!("steward_http_request_duration_seconds", &labels).record(
        state
            .inner
            .clock
            .monotonic()
            .saturating_sub(start)
            .as_secs_f64(),
    );
    resp
}
