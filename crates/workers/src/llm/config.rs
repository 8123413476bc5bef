//! [`LlmConfig`]: which provider, where, which model, and how patiently to talk to it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::llm::LlmError;

/// Default connect timeout, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default total timeout of one request (connect, send, wait, read), in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Default retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default first backoff, in milliseconds (doubled per retry, with jitter).
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 500;
/// Default longest backoff, in milliseconds.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Default longest wait honoured from a `Retry-After` header, in milliseconds.
pub const DEFAULT_MAX_RETRY_AFTER_MS: u64 = 60_000;
/// Default requests in flight at once to the provider (per process).
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default most output tokens per completion.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 2048;
/// Default base URL of the OpenAI API (OpenAI-compatible servers: `http://host:8000/v1` for
/// vLLM, `http://localhost:11434/v1` for Ollama).
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Default base URL of the Anthropic API.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Which LLM API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// No LLM: summaries are extractive.
    #[default]
    None,
    /// An OpenAI-compatible chat-completions API (`POST {base_url}/chat/completions`).
    #[serde(alias = "openai-compatible")]
    OpenAi,
    /// The Anthropic messages API (`POST {base_url}/v1/messages`).
    Anthropic,
}

impl Provider {
    /// `none`, `openai` or `anthropic`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::None => "none",
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret (an API key): never printed by `Debug`, and serialized as `"***"` (a dumped
/// configuration does not leak it).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl ApiKey {
    /// Wraps a key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for the request header.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ApiKey)
    }
}

/// The LLM client's settings (`[llm]` in the config file, `STEWARD_LLM__*` in the
/// environment). Durations are integers in milliseconds so every one maps to one variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// `none` (default), `openai` or `anthropic`.
    pub provider: Provider,
    /// The API's base URL; `None`: the provider's public API.
    pub base_url: Option<String>,
    /// The model name sent with each request (required unless `provider` is `none`).
    pub model: String,
    /// Key for `openai` (sent as `Authorization: Bearer`); optional for local servers.
    pub openai_api_key: Option<ApiKey>,
    /// Key for `anthropic` (sent as `x-api-key`); required for `anthropic`.
    pub anthropic_api_key: Option<ApiKey>,
    /// Connect timeout (100 to 60,000 ms).
    pub connect_timeout_ms: u64,
    /// Total timeout of one attempt (100 to 600,000 ms).
    pub request_timeout_ms: u64,
    /// Retries after the first attempt on 429, 529, 5xx, timeouts and connection errors (0 to 10).
    pub max_retries: u32,
    /// First backoff (1 to 60,000 ms); doubled per retry with full jitter.
    pub backoff_base_ms: u64,
    /// Longest backoff (at least `backoff_base_ms`, at most 600,000 ms).
    pub backoff_max_ms: u64,
    /// Longest wait honoured from `Retry-After` (0 to 600,000 ms); longer asks are capped.
    pub max_retry_after_ms: u64,
    /// Requests in flight at once to this provider (1 to 1024).
    pub concurrency: usize,
    /// Most output tokens per completion (16 to 100,000).
    pub max_output_tokens: u32,
    /// The endpoint runs on infrastructure the operator controls (a self-hosted vLLM or
    /// Ollama): tenants whose plan forbids third-party LLMs may use it. Default `false`.
    pub first_party: bool,
    /// Ask OpenAI-compatible servers for JSON output (`response_format: json_object`).
    /// Default `true`; turn off for servers that reject the field.
    pub json_mode: bool,
    /// Seed of the backoff jitter (`None`: from the OS).
    pub jitter_seed: Option<u64>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            provider: Provider::None,
            base_url: None,
            model: String::new(),
            openai_api_key: None,
            anthropic_api_key: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            max_retry_after_ms: DEFAULT_MAX_RETRY_AFTER_MS,
            concurrency: DEFAULT_CONCURRENCY,
            max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            first_party: false,
            json_mode: true,
            jitter_seed: None,
        }
    }
}

fn range_check(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), LlmError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LlmError::Config {
            field,
            message: format!("must be between {min} and {max}"),
        })
    }
}

impl LlmConfig {
    /// A config for `provider` at `base_url` with `model`, other settings default.
    #[must_use]
    pub fn new(provider: Provider, base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            provider,
            base_url: Some(base_url.into()),
            model: model.into(),
            ..LlmConfig::default()
        }
    }

    /// Checks every setting; errors name the field (`llm.<field>`) and its accepted range.
    ///
    /// # Errors
    /// [`LlmError::Config`].
    pub fn validate(&self) -> Result<(), LlmError> {
        range_check(
            "llm.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            60_000,
        )?;
        range_check(
            "llm.request_timeout_ms",
            self.request_timeout_ms,
            100,
            600_000,
        )?;
        range_check("llm.max_retries", u64::from(self.max_retries), 0, 10)?;
        range_check("llm.backoff_base_ms", self.backoff_base_ms, 1, 60_000)?;
        range_check(
            "llm.backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_base_ms,
            600_000,
        )?;
        range_check(
            "llm.max_retry_after_ms",
            self.max_retry_after_ms,
            0,
            600_000,
        )?;
        range_check(
            "llm.concurrency",
            u64::try_from(self.concurrency).unwrap_or(u64::MAX),
            1,
            1024,
        )?;
        range_check(
            "llm.max_output_tokens",
            u64::from(self.max_output_tokens),
            16,
            100_000,
        )?;
        if self.provider == Provider::None {
            return Ok(());
        }
        if self.model.trim().is_empty() || self.model.len() > 256 {
            return Err(LlmError::Config {
                field: "llm.model",
                message: "required (1 to 256 bytes) when a provider is set".into(),
            });
        }
        let url = self.base_url();
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && reqwest::Url::parse(url).is_ok();
        if !ok {
            return Err(LlmError::Config {
                field: "llm.base_url",
                message: format!("{url:?} is not an http:// or https:// URL"),
            });
        }
        if self.provider == Provider::Anthropic
            && self
                .anthropic_api_key
                .as_ref()
                .is_none_or(|k| k.expose().trim().is_empty())
        {
            return Err(LlmError::Config {
                field: "llm.anthropic_api_key",
                message: "required for provider anthropic".into(),
            });
        }
        Ok(())
    }

    /// The base URL in use (the configured one, or the provider's public API), without a
    /// trailing slash.
    #[must_use]
    pub fn base_url(&self) -> &str {
        let url = match (&self.base_url, self.provider) {
            (Some(u), _) => u.as_str(),
            (None, Provider::Anthropic) => DEFAULT_ANTHROPIC_BASE_URL,
            (None, _) => DEFAULT_OPENAI_BASE_URL,
        };
        url.trim_end_matches('/')
    }

    /// The key for the configured provider, if any.
    #[must_use]
    pub fn api_key(&self) -> Option<&ApiKey> {
        match self.provider {
            Provider::None => None,
            Provider::OpenAi => self.openai_api_key.as_ref(),
            Provider::Anthropic => self.anthropic_api_key.as_ref(),
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_keys_never_print() {
        LlmConfig::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = LlmConfig::new(Provider::OpenAi, "http://127.0.0.1:1/v1/", "m");
        c.openai_api_key = Some(ApiKey::new("sk-secret-value"));
        c.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.base_url(), "http://127.0.0.1:1/v1");
        assert!(!format!("{c:?}").contains("sk-secret-value"));
        let dumped = serde_json::to_string(&c).unwrap_or_default();
        assert!(dumped.contains("\"openai_api_key\":\"***\""), "{dumped}");
        assert!(!dumped.contains("sk-secret-value"));
    }

    #[test]
    fn validate_names_the_field() {
        let field = |c: &LlmConfig| match c.validate() {
            Err(LlmError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = LlmConfig::new(Provider::OpenAi, "http://127.0.0.1:1/v1", "m");
        let mut c = base.clone();
        c.model = " ".into();
        assert_eq!(field(&c), "llm.model");
        let mut c = base.clone();
        c.base_url = Some("ftp://x".into());
        assert_eq!(field(&c), "llm.base_url");
        let mut c = base.clone();
        c.concurrency = 0;
        assert_eq!(field(&c), "llm.concurrency");
        let mut c = base.clone();
        c.backoff_max_ms = c.backoff_base_ms - 1;
        assert_eq!(field(&c), "llm.backoff_max_ms");
        let mut c = base.clone();
        c.request_timeout_ms = 10;
        assert_eq!(field(&c), "llm.request_timeout_ms");
        let mut c = base;
        c.provider = Provider::Anthropic;
        assert_eq!(field(&c), "llm.anthropic_api_key");
    }

    #[test]
    fn provider_parses_from_config_strings() {
        let c: LlmConfig = serde_json::from_str(
            r#"{"provider":"anthropic","model":"claude","anthropic_api_key":"k"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.provider, Provider::Anthropic);
        assert_eq!(c.base_url(), DEFAULT_ANTHROPIC_BASE_URL);
        assert!(serde_json::from_str::<LlmConfig>(r#"{"provider":"gpt"}"#).is_err());
        assert!(serde_json::from_str::<LlmConfig>(r#"{"bogus":1}"#).is_err());
    }
}
