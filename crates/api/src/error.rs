//! The one error type of the HTTP edge: a status, a stable `code`, a message, the field at
//! fault, and the body `{"error": {"code", "message", "field"}}` (CONVENTIONS.md). Errors of
//! the queue and the records map here by meaning.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::TokenError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`invalid`, `not_found`, `rate_limited`, ...).
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault (JSON path, query or path parameter, or header), if any.
    pub field: Option<String>,
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Field at fault.
    pub field: Option<String>,
    /// `Retry-After`, for 429 and 503.
    pub retry_after: Option<Duration>,
}

/// `Result` with [`ApiError`].
pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error without a field.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Names the field at fault.
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Adds `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// 400 `invalid` naming `field`.
    #[must_use]
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).field(field)
    }

    /// 404 `not_found`: the same for a missing record and another tenant's.
    #[must_use]
    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 401 `unauthorized`.
    #[must_use]
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 `rate_limited` with `Retry-After`.
    #[must_use]
    pub fn rate_limited(message: impl Into<String>, wait: Duration) -> Self {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(wait)
    }

    fn internal(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }

    fn store(e: &steward_store::Error) -> Self {
        tracing::warn!(error = %e, "store error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store is unavailable or overloaded; retry later",
        )
        .retry_after(Duration::from_secs(1))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::unauthorized(e.to_string())
    }
}

impl From<steward_queue::Error> for ApiError {
    fn from(e: steward_queue::Error) -> Self {
        use steward_queue::Error as E;
        match e {
            E::Store(s) => ApiError::store(&s),
            E::Invalid { field, message } => ApiError::invalid(field, message),
            E::Refused {
                limit,
                max,
                current,
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("the tenant's queue is at its {limit} limit of {max} ({current} now)"),
            )
            .field(limit)
            .retry_after(Duration::from_secs(5)),
            E::NotFound(_) => ApiError::not_found("job"),
            E::InvalidState { state, action, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_state",
                format!("the job is {state}; cannot {action}"),
            ),
            E::LeaseLost { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "lease_lost",
                "the job is no longer held under this lease",
            ),
            other => ApiError::internal("internal", other.to_string()),
        }
    }
}

impl From<steward_models::Error> for ApiError {
    fn from(e: steward_models::Error) -> Self {
        use steward_models::{Error as E, RefreshRejection as R};
        match e {
            E::Store(s) => ApiError::store(&s),
            E::Invalid { field, message } => ApiError::invalid(field, message),
            E::NotFound { what, .. } => ApiError::not_found(what),
            E::AlreadyExists { what, field } => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("a {what} with this {field} already exists"),
            )
            .field(field),
            E::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid credentials",
            ),
            E::RefreshRejected(r) => {
                let code = match r {
                    R::Expired => "refresh_expired",
                    R::Revoked => "refresh_revoked",
                    R::ReuseDetected => "refresh_reuse_detected",
                    _ => "refresh_invalid",
                };
                ApiError::new(StatusCode::UNAUTHORIZED, code, r.to_string())
            }
            E::SchemaTooNew { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
            other => ApiError::internal("internal", other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_and_records_errors_map_by_meaning() {
        use steward_queue::Error as Q;
        let store = ApiError::from(Q::Store(steward_store::Error::Conflict));
        assert_eq!(store.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(store.retry_after.is_some());
        let refused = ApiError::from(Q::Refused {
            limit: "max_queued_bytes",
            max: 10,
            current: 10,
        });
        assert_eq!(
            (refused.status, refused.code, refused.field.as_deref()),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                Some("max_queued_bytes")
            )
        );
        let invalid = ApiError::from(Q::Invalid {
            field: "priority",
            message: "x".into(),
        });
        assert_eq!(
            (invalid.status, invalid.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("priority"))
        );
        assert_eq!(
            ApiError::from(Q::NotFound(uuid::Uuid::nil())).status,
            StatusCode::NOT_FOUND
        );

        use steward_models::Error as M;
        let exists = ApiError::from(M::AlreadyExists {
            what: "user",
            field: "email",
        });
        assert_eq!(
            (exists.status, exists.field.as_deref()),
            (StatusCode::CONFLICT, Some("email"))
        );
        let retry_limit = ApiError::from(M::Store(steward_store::Error::RetryLimitReached {
            attempts: 3,
            last: Box::new(steward_store::Error::TransactionTooOld),
        }));
        assert_eq!(retry_limit.status, StatusCode::SERVICE_UNAVAILABLE);
        let reuse = ApiError::from(M::RefreshRejected(
            steward_models::RefreshRejection::ReuseDetected,
        ));
        assert_eq!(
            (reuse.status, reuse.code),
            (StatusCode::UNAUTHORIZED, "refresh_reuse_detected")
        );
    }

    #[test]
    fn the_body_has_the_conventions_shape_and_retry_after_rounds_up() {
        let resp = ApiError::rate_limited("slow down", Duration::from_millis(1500)).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }
}
