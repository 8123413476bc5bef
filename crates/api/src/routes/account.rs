//! `/v1/auth`: login (email + password), refresh (rotation with reuse detection), logout.
//! Login attempts are throttled per account and per client address before any password is
//! hashed.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use steward_models::{RefreshToken, RevokeReason, User};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{mint_token, Claims};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ClientAddr, Principal};
use crate::state::AppState;

/// Email and password in a tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// The tenant the account is in.
    pub(crate) tenant_id: Uuid,
    /// Email.
    pub(crate) email: String,
    /// Password.
    pub(crate) password: String,
    /// A label for the device (at most 256 bytes).
    pub(crate) client: Option<String>,
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The refresh token from login or the previous refresh.
    pub(crate) refresh_token: String,
}

/// An access token and the refresh token that renews it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The bearer token (a JWT).
    pub(crate) access_token: String,
    /// Always `Bearer`.
    pub(crate) token_type: &'static str,
    /// Seconds until the access token expires.
    pub(crate) expires_in: u64,
    /// Single use: present it once to `/v1/auth/refresh`.
    pub(crate) refresh_token: String,
    /// The user.
    pub(crate) user_id: Uuid,
    /// The tenant.
    pub(crate) tenant_id: Uuid,
}

fn role_names(user: &User) -> Vec<String> {
    user.roles
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn issue(state: &AppState, user: &User, refresh: &RefreshToken) -> ApiResult<TokenResponse> {
    let key = state.inner.signing_key.as_ref().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "login_disabled",
            "this server has no signing key; login and refresh are off",
        )
    })?;
    let cfg = state.config();
    let claims = Claims::new(
        &cfg.issuer,
        &cfg.audience,
        user.id.to_string(),
        user.tenant_id,
        role_names(user),
        state.now_micros().div_euclid(1_000_000),
        cfg.access_ttl,
    );
    let token = mint_token(key, &claims).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?;
    Ok(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: cfg.access_ttl.as_secs(),
        refresh_token: refresh.expose().to_string(),
        user_id: user.id,
        tenant_id: user.tenant_id,
    })
}

/// Logs in with email and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse),
        (status = 401, description = "invalid credentials", body = ErrorBody),
        (status = 429, description = "too many attempts", body = ErrorBody)))]
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if state.inner.signing_key.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "login_disabled",
            "this server has no signing key; login and refresh are off",
        ));
    }
    let email = req.email.trim().to_lowercase();
    let too_many = |wait| ApiError::rate_limited("too many login attempts; retry later", wait);
    if let Some(ip) = addr {
        state.inner.login_address.take(&ip).map_err(too_many)?;
    }
    state
        .inner
        .login_account
        .take(&(req.tenant_id, email.clone()))
        .map_err(too_many)?;
    let models = state.models();
    let user = models
        .users()
        .login(req.tenant_id, &email, &req.password)
        .await?;
    // Only failed attempts count against the account and the address.
    state
        .inner
        .login_account
        .refund(&(req.tenant_id, email.clone()));
    if let Some(ip) = addr {
        state.inner.login_address.refund(&ip);
    }
    let client = req.client.unwrap_or_default();
    let issued = models.auth().login(req.tenant_id, user.id, &client).await?;
    let mut event = steward_models::NewAuditEvent::new("user.login");
    event.actor_id = Some(user.id);
    event.target = Some(format!("user:{}", user.id));
    event.details = serde_json::json!({"family": issued.session.id, "client": client});
    models.audit().append(req.tenant_id, event).await?;
    Ok(Json(issue(&state, &user, &issued.token)?))
}

/// Rotates a refresh token. A token used twice (outside the short grace for a lost response)
/// revokes its whole family: 401 `refresh_reuse_detected`.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if state.inner.signing_key.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "login_disabled",
            "this server has no signing key; login and refresh are off",
        ));
    }
    let tenant = RefreshToken::tenant_of(&req.refresh_token).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "refresh_invalid",
            "invalid token",
        )
    })?;
    let models = state.models();
    let issued = models.auth().refresh(tenant, &req.refresh_token).await?;
    let user = models
        .users()
        .get(tenant, issued.session.user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "refresh_invalid",
                "the user is gone or disabled",
            )
        })?;
    Ok(Json(issue(&state, &user, &issued.token)?))
}

/// The family id inside a refresh token (`stw1.<tenant>.<family>.<generation>.<secret>`).
fn family_of(token: &str) -> Option<Uuid> {
    let mut parts = token.trim().split('.');
    if parts.next()? != steward_models::TOKEN_PREFIX {
        return None;
    }
    parts.next()?;
    Uuid::try_parse(parts.next()?).ok()
}

/// What logout did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogoutView {
    /// The family was active and is now revoked.
    pub(crate) revoked: bool,
}

/// Logs out: revokes the refresh token's family. Needs the access token of the same user.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = LogoutView), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<LogoutView>> {
    let invalid = || {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "refresh_invalid",
            "invalid token",
        )
    };
    if RefreshToken::tenant_of(&req.refresh_token) != Some(p.tenant) {
        return Err(invalid());
    }
    let family = family_of(&req.refresh_token).ok_or_else(invalid)?;
    let models = state.models();
    let session = models
        .auth()
        .get(p.tenant, family)
        .await?
        .filter(|s| Some(s.user_id) == p.user)
        .ok_or_else(invalid)?;
    let revoked = models
        .auth()
        .revoke(p.tenant, session.id, RevokeReason::Logout)
        .await?;
    Ok(Json(LogoutView { revoked }))
}
