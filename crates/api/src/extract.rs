//! Extractors whose rejections answer in the API's error shape and name the field: JSON bodies
//! (size limit -> 413, unknown fields, wrong types), path parameters (bad UUIDs), query strings,
//! and the bearer token ([`Principal`]), which also applies the per-tenant rate limit.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::Expectations;
use crate::error::ApiError;
use crate::state::AppState;

/// Turns a serde error into the field it is about: the path, plus the unknown field's name.
fn field_of(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let mut field = path.to_string();
    if field == "." {
        field.clear();
    }
    // "unknown field `x`, expected ..." and "missing field `x`" name the field in the message.
    if let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
    {
        if let Some(name) = rest.split('`').next() {
            // serde_path_to_error already ends the path with an unknown field's name.
            if field == name || field.ends_with(&format!(".{name}")) {
                return Some(field);
            }
            field = if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
        }
    }
    (!field.is_empty()).then_some(field)
}

/// A JSON body of type `T`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| {
                let ct = ct.split(';').next().unwrap_or("").trim();
                ct == "application/json" || ct.ends_with("+json")
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json",
            )
            .field("content-type"));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than the limit",
                    )
                } else {
                    ApiError::new(e.status(), "bad_body", e.body_text())
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming the field at fault.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let message = e.inner().to_string();
            let syntax = e.inner().is_syntax() || e.inner().is_eof();
            let field = field_of(e.path(), &message);
            let mut err = ApiError::new(
                if syntax {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                },
                if syntax { "malformed_json" } else { "invalid" },
                message,
            );
            err.field = field;
            Err(err)
        }
    }
}

/// Path parameters of type `T`; a bad value answers 400 naming the parameter.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                use axum::extract::path::ErrorKind;
                let kind = e.into_kind();
                let field = match &kind {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
                    ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid", kind.to_string());
                err.field = field;
                Err(err)
            }
            Err(other) => Err(ApiError::new(other.status(), "invalid", other.body_text())),
        }
    }
}

/// A query string of type `T`; a bad value answers 400 naming the parameter.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize::<_, T>(de)
            .map(ApiQuery)
            .map_err(|e| {
                let message = e.inner().to_string();
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid", message.clone());
                err.field = field_of(e.path(), &message);
                err
            })
    }
}

/// The authenticated caller: tenant from the token's `tid`, roles from `roles`.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The tenant (from `tid`, nowhere else).
    pub tenant: Uuid,
    /// The token's `sub`.
    pub subject: String,
    /// `sub` as a user id, when it is one.
    pub user: Option<Uuid>,
    /// Roles.
    pub roles: BTreeSet<String>,
}

impl Principal {
    /// Owner or admin of its tenant.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.roles.contains("admin") || self.roles.contains("owner")
    }

    /// An operator: the `operator` role in the system tenant.
    #[must_use]
    pub fn is_operator(&self) -> bool {
        self.tenant == steward_queue::SYSTEM_TENANT && self.roles.contains("operator")
    }

    /// 403 unless admin.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the admin or owner role"))
        }
    }

    /// The user id in `sub`, or 403.
    pub(crate) fn require_user(&self) -> Result<Uuid, ApiError> {
        self.user
            .ok_or_else(|| ApiError::forbidden("this needs a token whose sub is a user id"))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let cfg = &state.inner.config;
        let claims = state.inner.keys.verify(
            token,
            state.now_micros().div_euclid(1_000_000),
            &Expectations {
                issuer: &cfg.issuer,
                audience: &cfg.audience,
                leeway: cfg.leeway,
            },
        )?;
        // The system tenant holds the scheduler's own jobs: its tokens serve the operator
        // endpoints only.
        if claims.tid == steward_queue::SYSTEM_TENANT
            && !parts.uri.path().starts_with("/v1/operator/")
        {
            return Err(ApiError::forbidden(
                "system tenant tokens may call the operator endpoints only",
            ));
        }
        state.inner.tenant_rate.take(&claims.tid).map_err(|wait| {
            ApiError::rate_limited("the tenant's request rate limit is exceeded", wait)
        })?;
        Ok(Principal {
            tenant: claims.tid,
            user: Uuid::try_parse(&claims.sub).ok(),
            subject: claims.sub,
            roles: claims.roles.into_iter().collect(),
        })
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("expected a Bearer token"));
    }
    Ok(token.trim())
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy
/// (`api.trusted_proxies`), the right-most `X-Forwarded-For` address that is not one. `None`
/// without a connection (e.g. in tests through `oneshot`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(peer.map(|peer| {
            client_ip(peer, &parts.headers, &state.inner.config.trusted_proxies)
        })))
    }
}

/// The client behind trusted proxies: walk `X-Forwarded-For` from the right while the hop is
/// trusted; the first untrusted hop is the client (a client cannot forge hops to its right).
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[crate::config::IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // An unparsable hop: stop at the last address we could trust the origin of.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// The `Idempotency-Key` header, if present.
pub(crate) fn idempotency_header(
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?
                .trim();
            if s.is_empty() || s.len() > steward_queue::MAX_KEY_LEN {
                return Err(ApiError::invalid(
                    "Idempotency-Key",
                    format!("must be 1 to {} bytes", steward_queue::MAX_KEY_LEN),
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<crate::config::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.5, 10.0.0.2".parse().unwrap(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Through two trusted hops: the first untrusted one from the right is the client; the
        // left-most (client-written) address is not believed.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.5"));
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // No trusted proxies configured: the peer.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
        // A trusted peer without the header is itself the client.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &axum::http::HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }
}
