//! The two providers' request and response shapes.

use serde::Deserialize;
use serde_json::json;

use crate::llm::{ChatRequest, Completion, LlmConfig, Provider, ANTHROPIC_VERSION};

/// `POST {base_url}/chat/completions`, OpenAI's shape (also vLLM, Ollama, llama.cpp, ...).
pub(crate) fn openai_request(
    http: &reqwest::Client,
    cfg: &LlmConfig,
    req: &ChatRequest,
) -> reqwest::RequestBuilder {
    let mut body = json!({
        "model": cfg.model,
        "messages": [
            {"role": "system", "content": req.system},
            {"role": "user", "content": req.user},
        ],
        "max_tokens": cfg.max_output_tokens,
        "temperature": 0,
    });
    if req.json && cfg.json_mode {
        body["response_format"] = json!({"type": "json_object"});
    }
    let mut b = http
        .post(format!("{}/chat/completions", cfg.base_url()))
        .json(&body);
    if let Some(k) = &cfg.openai_api_key {
        b = b.bearer_auth(k.expose());
    }
    b
}

/// `POST {base_url}/v1/messages`, Anthropic's shape.
pub(crate) fn anthropic_request(
    http: &reqwest::Client,
    cfg: &LlmConfig,
    req: &ChatRequest,
) -> reqwest::RequestBuilder {
    let body = json!({
        "model": cfg.model,
        "system": req.system,
        "messages": [{"role": "user", "content": req.user}],
        "max_tokens": cfg.max_output_tokens,
        "temperature": 0,
    });
    let mut b = http
        .post(format!("{}/v1/messages", cfg.base_url()))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&body);
    if let Some(k) = &cfg.anthropic_api_key {
        b = b.header("x-api-key", k.expose());
    }
    b
}

#[derive(Deserialize)]
struct OpenAiResponse {
    #[serde(default)]
    model: String,
    choices: Vec<OpenAiChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct OpenAiChoice {
    message: OpenAiMessage,
}

#[derive(Deserialize)]
struct OpenAiMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct AnthropicResponse {
    #[serde(default)]
    model: String,
    content: Vec<AnthropicBlock>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// The text and usage of a successful response body.
pub(crate) fn parse(provider: Provider, body: &[u8]) -> Result<Completion, String> {
    match provider {
        Provider::Anthropic => {
            let r: AnthropicResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let text: String = r
                .content
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect();
            if text.is_empty() {
                return Err("no text content block".into());
            }
            let u = r.usage.unwrap_or(AnthropicUsage {
                input_tokens: 0,
                output_tokens: 0,
            });
            Ok(Completion {
                text,
                model: r.model,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                attempts: 1,
            })
        }
        _ => {
            let r: OpenAiResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let text = r
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
                .filter(|t| !t.is_empty())
                .ok_or("no choice with content")?;
            let u = r.usage.unwrap_or(OpenAiUsage {
                prompt_tokens: 0,
                completion_tokens: 0,
            });
            Ok(Completion {
                text,
                model: r.model,
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                attempts: 1,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_refuses_others() {
        let o = br#"{"model":"gpt","choices":[{"message":{"role":"assistant","content":"hi"}}],
                     "usage":{"prompt_tokens":12,"completion_tokens":3}}"#;
        let c = parse(Provider::OpenAi, o).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.text.as_str(), c.input_tokens, c.output_tokens),
            ("hi", 12, 3)
        );
        let a = br#"{"model":"claude","content":[{"type":"text","text":"he"},{"type":"text","text":"llo"}],
                     "usage":{"input_tokens":7,"output_tokens":2}}"#;
        let c = parse(Provider::Anthropic, a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.text.as_str(), c.input_tokens, c.output_tokens),
            ("hello", 7, 2)
        );
        assert!(parse(Provider::OpenAi, b"{not json").is_err());
        assert!(parse(Provider::OpenAi, br#"{"choices":[]}"#).is_err());
        assert!(parse(Provider::Anthropic, o).is_err());
    }
}
