//! Times: i64 µs since the epoch inside, RFC 3339 UTC in JSON (CONVENTIONS.md).

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::ApiError;

/// Record fields that hold µs timestamps; [`json_times`] turns them into RFC 3339 strings.
const TIME_FIELDS: &[&str] = &[
    "created_at",
    "updated_at",
    "last_activity_at",
    "last_login_at",
    "absolute_expires_at",
    "idle_expires_at",
    "last_used_at",
    "revoked_at",
    "at",
    "started_at",
    "finished_at",
    "state_since",
    "run_at",
    "expires_at",
    "next_fire",
    "last_fire",
    "first_at",
    "last_at",
    "compacted_at",
    "handled_at",
    "fire_time",
    "terminal_through",
];

/// µs since the epoch as RFC 3339 UTC with microseconds.
#[must_use]
pub(crate) fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |d| d.to_rfc3339_opts(SecondsFormat::Micros, true),
    )
}

/// An optional timestamp.
pub(crate) fn rfc3339_opt(us: Option<i64>) -> Option<String> {
    us.map(rfc3339)
}

/// Parses an RFC 3339 time into µs, naming `field` when it is not one.
pub(crate) fn parse_rfc3339(field: &str, s: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc).timestamp_micros())
        .map_err(|e| ApiError::invalid(field, format!("not an RFC 3339 time: {e}")))
}

/// Serializes a record and turns its timestamp fields (at any depth) into RFC 3339 strings.
pub(crate) fn json_times<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    let mut v = serde_json::to_value(value).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode response: {e}"),
        )
    })?;
    convert(&mut v);
    Ok(v)
}

fn convert(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if TIME_FIELDS.contains(&k.as_str()) {
                    if let Some(us) = val.as_i64() {
                        *val = serde_json::Value::String(rfc3339(us));
                        continue;
                    }
                }
                convert(val);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(convert),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_nested_conversion() {
        let us = 1_767_225_600_123_456;
        let s = rfc3339(us);
        assert_eq!(s, "2026-01-01T00:00:00.123456Z");
        assert_eq!(parse_rfc3339("run_at", &s).unwrap(), us);
        assert_eq!(
            parse_rfc3339("run_at", "soon")
                .unwrap_err()
                .field
                .as_deref(),
            Some("run_at")
        );
        let v = json_times(&serde_json::json!({"a": [{"created_at": us, "size": 3}]})).unwrap();
        assert_eq!(v["a"][0]["created_at"], s);
        assert_eq!(v["a"][0]["size"], 3);
    }
}
