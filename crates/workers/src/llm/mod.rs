//! LLM clients: an OpenAI-compatible chat-completions client and an Anthropic messages client
//! behind one type, [`LlmClient`], over one shared `reqwest` client (rustls with ring; no
//! OpenSSL).
//!
//! Each request gets a connect and a total timeout; 429, 529, other 5xx, timeouts and
//! connection errors are retried with full-jitter exponential backoff, honouring `Retry-After`
//! (seconds or an HTTP date, capped by `max_retry_after_ms`); any other 4xx is final. A
//! semaphore bounds the requests in flight to the provider, and token usage is counted per
//! tenant ([`LlmClient::usage`]).
//!
//! Callers send only redacted text ([`crate::summarize::redact`]); this module does not look
//! at what it sends.

mod config;
mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use steward_store::{SharedClock, SystemClock};
use tokio::sync::Semaphore;
use uuid::Uuid;

pub use self::config::{
    ApiKey, LlmConfig, Provider, ANTHROPIC_VERSION, DEFAULT_ANTHROPIC_BASE_URL,
    DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS, DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_OUTPUT_TOKENS, DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER_MS, DEFAULT_OPENAI_BASE_URL, DEFAULT_REQUEST_TIMEOUT_MS,
};

/// Most bytes of an error response body kept in an error.
const ERROR_BODY_BYTES: usize = 512;

/// An LLM call's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// A setting is out of range or missing.
    #[error("invalid {field}: {message}")]
    Config {
        /// The setting (`llm.model`, ...).
        field: &'static str,
        /// What is accepted.
        message: String,
    },
    /// No provider is configured.
    #[error("no LLM provider is configured")]
    Disabled,
    /// The provider answered with an error status (after `attempts` attempts).
    #[error("{provider} answered HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The provider.
        provider: Provider,
        /// The last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The start of the response body.
        body: String,
    },
    /// Every attempt timed out.
    #[error("{provider} timed out after {attempts} attempt(s)")]
    Timeout {
        /// The provider.
        provider: Provider,
        /// Attempts made.
        attempts: u32,
    },
    /// The provider could not be reached (connection refused, TLS, DNS...).
    #[error("{provider} unreachable after {attempts} attempt(s): {message}")]
    Transport {
        /// The provider.
        provider: Provider,
        /// Attempts made.
        attempts: u32,
        /// The transport error.
        message: String,
    },
    /// The response was not the provider's JSON shape (no retry: the server answered).
    #[error("{provider} sent an undecodable response: {message}")]
    Decode {
        /// The provider.
        provider: Provider,
        /// What was wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// What to ask: a system prompt and one user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    /// The instructions.
    pub system: String,
    /// The input.
    pub user: String,
    /// Ask for a JSON object (OpenAI `response_format`, when `json_mode` is on).
    pub json: bool,
}

/// A completion and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The text the model produced.
    pub text: String,
    /// The model that answered (as the server names it).
    pub model: String,
    /// Input (prompt) tokens, as reported by the server (0 if it did not say).
    pub input_tokens: u64,
    /// Output tokens, as reported.
    pub output_tokens: u64,
    /// Attempts it took (1 = no retry).
    pub attempts: u32,
}

/// Token usage of one tenant at one provider since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// Successful completions.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// Builds the one `reqwest` client the process shares between providers (connection pools,
/// TLS roots): rustls with ring, the connect timeout of `config`.
///
/// # Errors
/// [`LlmError::Client`] if the TLS backend cannot be initialised.
pub fn http_client(config: &LlmConfig) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout())
        .user_agent(concat!("steward/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::Client(e.to_string()))
}

/// A client of one LLM provider. Cheap to clone (shared state: the HTTP client, the
/// concurrency limit, the usage counters).
#[derive(Debug, Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LlmConfig,
    http: reqwest::Client,
    clock: SharedClock,
    permits: Semaphore,
    rng: Mutex<fastrand::Rng>,
    usage: Mutex<BTreeMap<Uuid, TokenUsage>>,
    requests_sent: AtomicU64,
}

/// What one attempt produced.
enum Attempt {
    Done(Completion),
    Retry {
        error: LlmError,
        retry_after: Option<Duration>,
    },
    Fail(LlmError),
}

impl LlmClient {
    /// A client for `config` over `http` (share one [`http_client`] between providers), on the
    /// system clock.
    ///
    /// # Errors
    /// [`LlmError::Config`] from [`LlmConfig::validate`]; [`LlmError::Disabled`] for provider
    /// `none`.
    pub fn new(config: LlmConfig, http: reqwest::Client) -> Result<Self, LlmError> {
        Self::with_clock(config, http, SystemClock::shared())
    }

    /// As [`LlmClient::new`] with an injected clock (used to read `Retry-After` dates).
    ///
    /// # Errors
    /// As [`LlmClient::new`].
    pub fn with_clock(
        config: LlmConfig,
        http: reqwest::Client,
        clock: SharedClock,
    ) -> Result<Self, LlmError> {
        config.validate()?;
        if config.provider == Provider::None {
            return Err(LlmError::Disabled);
        }
        // Jitter need not be secret: fastrand's process seed will do when none is given.
        let seed = config.jitter_seed.unwrap_or_else(|| fastrand::u64(..));
        Ok(LlmClient {
            inner: Arc::new(Inner {
                permits: Semaphore::new(config.concurrency),
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                usage: Mutex::new(BTreeMap::new()),
                requests_sent: AtomicU64::new(0),
                config,
                http,
                clock,
            }),
        })
    }

    /// The provider.
    #[must_use]
    pub fn provider(&self) -> Provider {
        self.inner.config.provider
    }

    /// The configured model.
    #[must_use]
    pub fn model(&self) -> &str {
        &self.inner.config.model
    }

    /// Whether the endpoint is first-party (allowed for tenants that forbid third-party LLMs).
    #[must_use]
    pub fn first_party(&self) -> bool {
        self.inner.config.first_party
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }

    /// HTTP requests sent so far (every attempt counts).
    #[must_use]
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests_sent.load(Ordering::Relaxed)
    }

    /// Token usage per tenant at this provider since the client was built (for metrics).
    #[must_use]
    pub fn usage(&self) -> BTreeMap<Uuid, TokenUsage> {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Token usage of one tenant.
    #[must_use]
    pub fn usage_of(&self, tenant: Uuid) -> TokenUsage {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Asks for a completion on behalf of `tenant` (its usage is counted), retrying as the
    /// config says. `request` must already be redacted.
    ///
    /// # Errors
    /// [`LlmError::Status`] (a final 4xx, or 429/529/5xx after the last retry),
    /// [`LlmError::Timeout`], [`LlmError::Transport`], [`LlmError::Decode`].
    pub async fn complete(
        &self,
        tenant: Uuid,
        request: &ChatRequest,
    ) -> Result<Completion, LlmError> {
        let cfg = &self.inner.config;
        let total = cfg.max_retries.saturating_add(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                // Held for the request only, never while backing off.
                let _permit = self
                    .inner
                    .permits
                    .acquire()
                    .await
                    .map_err(|e| LlmError::Client(e.to_string()))?;
                self.attempt(request, attempt).await
            };
            match outcome {
                Attempt::Done(c) => {
                    let mut usage = self
                        .inner
                        .usage
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let u = usage.entry(tenant).or_default();
                    u.requests += 1;
                    u.input_tokens = u.input_tokens.saturating_add(c.input_tokens);
                    u.output_tokens = u.output_tokens.saturating_add(c.output_tokens);
                    return Ok(c);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { error, retry_after } => {
                    if attempt >= total {
                        return Err(error);
                    }
                    let wait = match retry_after {
                        Some(d) => d.min(Duration::from_millis(cfg.max_retry_after_ms)),
                        None => self.backoff(attempt),
                    };
                    tracing::debug!(
                        provider = %cfg.provider,
                        attempt,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        error = %error,
                        "retrying LLM request"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Full jitter: uniform in `[0, min(max, base * 2^(attempt-1))]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let cfg = &self.inner.config;
        let exp = cfg
            .backoff_base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
            .min(cfg.backoff_max_ms);
        let ms = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .u64(0..=exp);
        Duration::from_millis(ms)
    }

    async fn attempt(&self, request: &ChatRequest, attempt: u32) -> Attempt {
        let cfg = &self.inner.config;
        let provider = cfg.provider;
        let builder = match provider {
            Provider::Anthropic => wire::anthropic_request(&self.inner.http, cfg, request),
            _ => wire::openai_request(&self.inner.http, cfg, request),
        }
        .timeout(cfg.request_timeout());
        self.inner.requests_sent.fetch_add(1, Ordering::Relaxed);
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    error: transport_error(provider, attempt, &e),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), self.inner.clock.now_micros());
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry {
                    error: transport_error(provider, attempt, &e),
                    retry_after: None,
                }
            }
        };
        if status.is_success() {
            return match wire::parse(provider, &body) {
                Ok(mut c) => {
                    c.attempts = attempt;
                    Attempt::Done(c)
                }
                Err(message) => Attempt::Fail(LlmError::Decode { provider, message }),
            };
        }
        let error = LlmError::Status {
            provider,
            status: status.as_u16(),
            attempts: attempt,
            body: body_excerpt(&body),
        };
        if retryable(status) {
            Attempt::Retry { error, retry_after }
        } else {
            Attempt::Fail(error)
        }
    }
}

/// 429 (rate limited), 529 (Anthropic: overloaded) and any 5xx are worth another try.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 529 || status.is_server_error()
}

fn transport_error(provider: Provider, attempts: u32, e: &reqwest::Error) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout { provider, attempts }
    } else {
        // The chain's innermost cause says what happened (refused, reset, TLS...).
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message = s.to_string();
            source = s.source();
        }
        LlmError::Transport {
            provider,
            attempts,
            message,
        }
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let mut end = s.len().min(ERROR_BODY_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `Retry-After` as a wait: delta-seconds, or an HTTP date (RFC 9110) relative to `now_micros`
/// (a date in the past: no wait). `None` if absent or unparsable.
pub(crate) fn retry_after(headers: &HeaderMap, now_micros: i64) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(v, now_micros)
}

/// See [`retry_after`].
#[must_use]
pub fn parse_retry_after(value: &str, now_micros: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        // Not in the RFC, but some servers send fractions.
        if secs.is_finite() && secs >= 0.0 {
            return Duration::try_from_secs_f64(secs).ok();
        }
        return None;
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.timestamp_micros().saturating_sub(now_micros);
    Some(Duration::from_micros(u64::try_from(delta).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        // 2015-10-21T07:28:00Z
        let now = 1_445_412_480_000_000;
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retryable_statuses() {
        for s in [429, 500, 502, 503, 529] {
            assert!(
                retryable(StatusCode::from_u16(s).unwrap_or(StatusCode::OK)),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(
                !retryable(StatusCode::from_u16(s).unwrap_or(StatusCode::OK)),
                "{s}"
            );
        }
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let mut cfg = LlmConfig::new(Provider::OpenAi, "http://127.0.0.1:9/v1", "m");
        cfg.backoff_base_ms = 100;
        cfg.backoff_max_ms = 1000;
        cfg.jitter_seed = Some(1);
        let http = http_client(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let c = LlmClient::new(cfg, http).unwrap_or_else(|e| panic!("{e}"));
        for attempt in 1..20 {
            let cap = (100u64 << (attempt - 1).min(30)).min(1000);
            for _ in 0..50 {
                assert!(c.backoff(attempt) <= Duration::from_millis(cap));
            }
        }
        // Jitter spreads the waits.
        let waits: std::collections::BTreeSet<_> = (0..50).map(|_| c.backoff(5)).collect();
        assert!(waits.len() > 10);
    }
}
