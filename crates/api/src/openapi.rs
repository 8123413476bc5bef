//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! request/response types' `ToSchema` derives; served at `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{account, audit, cron, health, jobs, operator, sessions};

/// Adds the bearer scheme the paths refer to.
#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API's OpenAPI document (`ApiDoc::openapi()`).
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Steward API", description = "Tenant job queue, workspace sessions and advice for LLM agents."),
    modifiers(&Bearer),
    paths(
        health::healthz, health::readyz, health::metrics,
        account::login, account::refresh, account::logout,
        jobs::enqueue, jobs::enqueue_batch, jobs::get_job, jobs::list_jobs, jobs::cancel_job,
        jobs::retry_job, jobs::why_waiting, jobs::stats, jobs::pause, jobs::resume,
        sessions::create_session, sessions::get_session, sessions::update_session,
        sessions::append_messages, sessions::record_file, sessions::summary,
        sessions::cancel_session_jobs, sessions::advice,
        audit::events, audit::verify,
        cron::list_schedules, cron::get_schedule, cron::put_schedule, cron::delete_schedule,
        operator::create_tenant, operator::list_tenants, operator::get_tenant,
        operator::create_user, operator::set_plan,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
