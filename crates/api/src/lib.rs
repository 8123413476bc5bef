//! # steward-api: the thin HTTP layer
//!
//! An axum router under `/v1`, built apart from serving so that handlers are tested without a
//! socket (`tower::ServiceExt::oneshot`). It authenticates bearer tokens (the tenant comes from
//! the token's `tid` only), validates input, calls `steward-queue` and `steward-models`, and
//! maps their errors to statuses and `{"error": {"code", "message", "field"}}` bodies. It holds
//! no business logic of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use steward_api::{auth::{KeySet, SigningKey}, router, serve, ApiConfig, AppState};
//! let db = steward_store::Database::memory();
//! let models = steward_models::Models::open(db.clone(), steward_models::ModelsConfig::for_tests()).await?;
//! let queue = Arc::new(steward_queue::Queue::new(db.clone(), Default::default())?);
//! let key = SigningKey::generate()?;
//! let state = AppState::new(queue, models, KeySet::single(&key), ApiConfig::default(), db.clock().clone())?
//!     .with_signing_key(key);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, router(state), std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`auth`]: compact JWS (EdDSA; HS256 only in a development key set), [`auth::KeySet`] by
//!   `kid`, [`auth::SigningKey`] (PKCS#8 PEM), [`auth::mint_token`].
//! - [`config`]: [`ApiConfig`] and its `validate()`.
//! - `state`: [`AppState`]; `extract`: extractors whose rejections name the field, and the
//!   [`Principal`] (bearer token + per-tenant rate limit); `error`: [`ApiError`] and the
//!   mapping of queue and records errors; `limit`: token buckets on the injected clock;
//!   `times`: RFC 3339 in JSON.
//! - `routes/`: `jobs` (and `/v1/queue`), `sessions` (and advice), `account` (login, refresh,
//!   logout), `operator` (the system tenant's cross-tenant endpoints), `audit`, `cron`,
//!   `health` (`/healthz`, `/readyz`, `/metrics`).
//! - `openapi`: the document served at `/openapi.json`, generated from the handlers.
//!
//! # Must not touch
//! No raw keys and no store transactions of its own design: everything goes through the crates
//! below it.

pub mod auth;
pub mod config;
mod error;
mod extract;
mod kinds;
mod limit;
mod openapi;
mod routes;
mod state;
mod times;

use std::future::Future;
use std::net::SocketAddr;

use axum::http::{HeaderName, StatusCode};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use crate::config::{ApiConfig, ConfigError, LoginThrottle, RateLimit};
pub use crate::error::{ApiError, ErrorBody, ErrorDetail};
pub use crate::extract::{ApiJson, ApiPath, ApiQuery, ClientAddr, Principal};
pub use crate::openapi::ApiDoc;
pub use crate::state::AppState;

/// The router: every endpoint with its layers (request id, tracing, timeout, body limit,
/// metrics). Serve it with [`serve`], or call it with `tower::ServiceExt::oneshot` in tests.
pub fn router(state: AppState) -> Router {
    use routes::{account, audit, cron, health, jobs, operator, sessions};
    let cfg = state.config().clone();
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/auth/login", post(account::login))
        .route("/v1/auth/refresh", post(account::refresh))
        .route("/v1/auth/logout", post(account::logout))
        .route("/v1/jobs", post(jobs::enqueue).get(jobs::list_jobs))
        .route("/v1/jobs/batch", post(jobs::enqueue_batch))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/retry", post(jobs::retry_job))
        .route("/v1/jobs/{id}/why", get(jobs::why_waiting))
        .route("/v1/queue/stats", get(jobs::stats))
        .route("/v1/queue/pause", post(jobs::pause))
        .route("/v1/queue/resume", post(jobs::resume))
        .route("/v1/sessions", post(sessions::create_session))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session).patch(sessions::update_session),
        )
        .route(
            "/v1/sessions/{id}/messages",
            post(sessions::append_messages),
        )
        .route("/v1/sessions/{id}/files", post(sessions::record_file))
        .route("/v1/sessions/{id}/summary", get(sessions::summary))
        .route("/v1/sessions/{id}/advice", post(sessions::advice))
        .route(
            "/v1/sessions/{id}/jobs/cancel",
            post(sessions::cancel_session_jobs),
        )
        .route("/v1/audit/events", get(audit::events))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/cron", get(cron::list_schedules))
        .route(
            "/v1/cron/{name}",
            get(cron::get_schedule)
                .put(cron::put_schedule)
                .delete(cron::delete_schedule),
        )
        .route(
            "/v1/operator/tenants",
            post(operator::create_tenant).get(operator::list_tenants),
        )
        .route("/v1/operator/tenants/{id}", get(operator::get_tenant))
        .route(
            "/v1/operator/tenants/{id}/users",
            post(operator::create_user),
        )
        .route("/v1/operator/tenants/{id}/plan", put(operator::set_plan))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            health::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            cfg.request_timeout,
        ))
        .layer(axum::middleware::map_response(timeout_body))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Gives the timeout layer's bare 504 the API's error body.
async fn timeout_body(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if resp.status() == StatusCode::GATEWAY_TIMEOUT
        && !resp
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than api.request_timeout",
        )
        .into_response();
    }
    resp
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests in
/// flight (graceful shutdown). Handlers see the peer address (login throttling uses it).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bare_timeout_gets_the_error_body_and_others_are_left_alone() {
        let bare = axum::response::Response::builder()
            .status(StatusCode::GATEWAY_TIMEOUT)
            .body(axum::body::Body::empty())
            .unwrap_or_default();
        let resp = timeout_body(bare).await;
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], "timeout");
        let ok = axum::response::Response::new(axum::body::Body::from("fine"));
        assert_eq!(timeout_body(ok).await.status(), StatusCode::OK);
    }
}
