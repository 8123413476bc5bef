//! The API's settings: named defaults and a `validate()` naming the field and its bound.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default largest request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default per-tenant request rate (requests per second).
pub const DEFAULT_RATE_PER_SEC: f64 = 50.0;
/// Default per-tenant burst.
pub const DEFAULT_RATE_BURST: u32 = 100;
/// Default wait for an advice result before answering 202.
pub const DEFAULT_ADVICE_WAIT: Duration = Duration::from_secs(10);
/// Default whole-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest job arguments (JSON bytes).
pub const DEFAULT_MAX_ARGS_BYTES: usize = 64 * 1024;
/// Default access-token lifetime (login and refresh).
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Default issuer.
pub const DEFAULT_ISSUER: &str = "steward";
/// Default audience.
pub const DEFAULT_AUDIENCE: &str = "steward-api";
/// Default clock skew allowed on `exp`/`nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default `/readyz` store probe timeout.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A token bucket's settings: `burst` requests at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained rate, requests per second (> 0).
    pub per_sec: f64,
    /// Bucket size (>= 1).
    pub burst: u32,
}

/// Login throttling (in memory, per process).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoginThrottle {
    /// Attempts per account (tenant + email).
    pub per_account: RateLimit,
    /// Attempts per client address.
    pub per_address: RateLimit,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            per_account: RateLimit {
                per_sec: 1.0 / 30.0,
                burst: 5,
            },
            per_address: RateLimit {
                per_sec: 0.5,
                burst: 20,
            },
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this network.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            let shift = u32::from(width - prefix.min(width));
            if shift >= 128 {
                0
            } else {
                (bits >> shift) << shift
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), self.prefix, 32)
                    == masked(u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => net.to_ipv4_mapped().is_some_and(|n| {
                IpNet {
                    addr: IpAddr::V4(n),
                    prefix: self.prefix.saturating_sub(96),
                }
                .contains(IpAddr::V4(ip))
            }),
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| self.contains(IpAddr::V4(ip))),
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            err(
                "api.trusted_proxies",
                format!("`{s}` is not an IP address or CIDR network"),
            )
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(bad)?,
            None => width,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// A setting out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid api setting {field}: {message}")]
pub struct ConfigError {
    /// The setting (`api.body_limit`, ...).
    pub field: &'static str,
    /// The bound.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

/// The API's settings (`[api]` in the config file; `STEWARD_API__<FIELD>`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Listen address (`STEWARD_API__LISTEN`).
    pub listen: SocketAddr,
    /// Largest request body in bytes (`STEWARD_API__BODY_LIMIT`); larger answers 413.
    pub body_limit: usize,
    /// Whole-request timeout (`STEWARD_API__REQUEST_TIMEOUT`); must exceed `advice_wait`.
    pub request_timeout: Duration,
    /// Per-tenant request rate (`STEWARD_API__RATE_PER_SEC`, `STEWARD_API__RATE_BURST`).
    pub tenant_rate: RateLimit,
    /// How long `POST /v1/sessions/{id}/advice` waits before answering 202
    /// (`STEWARD_API__ADVICE_WAIT`).
    pub advice_wait: Duration,
    /// Login throttling (`STEWARD_API__LOGIN_ACCOUNT_PER_SEC`, `..._BURST`,
    /// `STEWARD_API__LOGIN_ADDRESS_PER_SEC`, `..._BURST`).
    pub login: LoginThrottle,
    /// Job kinds clients may enqueue besides the built-in ones (`STEWARD_API__EXTERNAL_KINDS`,
    /// comma-separated).
    pub external_kinds: Vec<String>,
    /// Largest job arguments in JSON bytes (`STEWARD_API__MAX_ARGS_BYTES`).
    pub max_args_bytes: usize,
    /// `iss` of tokens (`STEWARD_AUTH__ISSUER`).
    pub issuer: String,
    /// `aud` of tokens (`STEWARD_AUTH__AUDIENCE`).
    pub audience: String,
    /// Lifetime of access tokens issued by login/refresh (`STEWARD_AUTH__ACCESS_TTL`).
    pub access_ttl: Duration,
    /// Clock skew allowed on `exp`/`nbf` (`STEWARD_AUTH__LEEWAY`).
    pub leeway: Duration,
    /// Timeout of the `/readyz` store probe (`STEWARD_API__READY_TIMEOUT`).
    pub ready_timeout: Duration,
    /// Proxies (load balancers, ingress) whose `X-Forwarded-For` is believed
    /// (`STEWARD_API__TRUSTED_PROXIES`, comma-separated CIDRs). A request from one of them is
    /// attributed to the right-most address of the header that is not itself a trusted proxy;
    /// from anyone else the header is ignored. Empty (the default): the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tenant_rate: RateLimit {
                per_sec: DEFAULT_RATE_PER_SEC,
                burst: DEFAULT_RATE_BURST,
            },
            advice_wait: DEFAULT_ADVICE_WAIT,
            login: LoginThrottle::default(),
            external_kinds: Vec::new(),
            max_args_bytes: DEFAULT_MAX_ARGS_BYTES,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            access_ttl: DEFAULT_ACCESS_TTL,
            leeway: DEFAULT_LEEWAY,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            trusted_proxies: Vec::new(),
        }
    }
}

fn check_rate(field: &'static str, r: &RateLimit) -> Result<(), ConfigError> {
    if !(r.per_sec.is_finite() && r.per_sec > 0.0 && r.per_sec <= 1_000_000.0) {
        return Err(err(field, "per_sec must be > 0 and <= 1000000"));
    }
    if !(1..=1_000_000).contains(&r.burst) {
        return Err(err(field, "burst must be 1 to 1000000"));
    }
    Ok(())
}

impl ApiConfig {
    /// Checks every bound.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting and its bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=64 * 1024 * 1024).contains(&self.body_limit) {
            return Err(err("api.body_limit", "must be 1024 B to 64 MiB"));
        }
        if self.advice_wait > Duration::from_secs(300) {
            return Err(err("api.advice_wait", "must be at most 300 s"));
        }
        if self.request_timeout <= self.advice_wait
            || self.request_timeout > Duration::from_secs(600)
        {
            return Err(err(
                "api.request_timeout",
                "must be longer than api.advice_wait and at most 600 s",
            ));
        }
        check_rate("api.rate", &self.tenant_rate)?;
        check_rate("api.login_account", &self.login.per_account)?;
        check_rate("api.login_address", &self.login.per_address)?;
        for k in &self.external_kinds {
            if k.is_empty() || k.len() > steward_queue::MAX_KIND_LEN {
                return Err(err(
                    "api.external_kinds",
                    format!(
                        "each kind must be 1 to {} bytes",
                        steward_queue::MAX_KIND_LEN
                    ),
                ));
            }
        }
        if !(1..=steward_queue::MAX_ARGS_BYTES).contains(&self.max_args_bytes) {
            return Err(err(
                "api.max_args_bytes",
                format!("must be 1 to {}", steward_queue::MAX_ARGS_BYTES),
            ));
        }
        if self.issuer.is_empty() {
            return Err(err("auth.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(err("auth.audience", "must not be empty"));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600)).contains(&self.access_ttl) {
            return Err(err("auth.access_ttl", "must be 60 s to 24 h"));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(err("auth.leeway", "must be at most 300 s"));
        }
        if self.ready_timeout.is_zero() || self.ready_timeout > Duration::from_secs(60) {
            return Err(err("api.ready_timeout", "must be > 0 and at most 60 s"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_contain() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert_eq!(
                bad.parse::<IpNet>().unwrap_err().field,
                "api.trusted_proxies"
            );
        }
    }

    #[test]
    fn default_is_valid_and_errors_name_the_field() {
        assert!(ApiConfig::default().validate().is_ok());
        let c = ApiConfig {
            body_limit: 10,
            ..ApiConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "api.body_limit");
        let c = ApiConfig {
            request_timeout: Duration::from_secs(5),
            ..ApiConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "api.request_timeout");
    }
}
