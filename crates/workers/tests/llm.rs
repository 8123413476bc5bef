//! The LLM clients against a local fake provider: request shapes, usage, retries honouring
//! `Retry-After`, no retry on other 4xx, timeouts, and the concurrency limit.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod llm_fake;

use std::time::{Duration, Instant};

use llm_fake::{Fake, Reply};
use steward_workers::llm::{
    http_client, ApiKey, ChatRequest, LlmClient, LlmConfig, LlmError, Provider,
};
use uuid::Uuid;

fn config(provider: Provider, fake: &Fake) -> LlmConfig {
    let base = match provider {
        Provider::Anthropic => fake.url(),
        _ => format!("{}/v1", fake.url()),
    };
    let mut c = LlmConfig::new(provider, base, "test-model");
    c.openai_api_key = Some(ApiKey::new("sk-test-openai-key-0123456789"));
    c.anthropic_api_key = Some(ApiKey::new("sk-ant-test-key-0123456789"));
    c.backoff_base_ms = 1;
    c.backoff_max_ms = 5;
    c.max_retries = 2;
    c.request_timeout_ms = 2_000;
    c.jitter_seed = Some(7);
    c
}

fn client(c: LlmConfig) -> LlmClient {
    let http = http_client(&c).unwrap();
    LlmClient::new(c, http).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "be brief".into(),
        user: "hello".into(),
        json: true,
    }
}

#[tokio::test]
async fn openai_request_shape_and_usage_per_tenant() {
    let fake = Fake::start(vec![Reply::openai("{\"ok\":true}", 11, 4)]).await;
    let c = client(config(Provider::OpenAi, &fake));
    let (t1, t2) = (Uuid::now_v7(), Uuid::now_v7());
    let out = c.complete(t1, &request()).await.unwrap();
    assert_eq!(out.text, "{\"ok\":true}");
    assert_eq!(
        (out.input_tokens, out.output_tokens, out.attempts),
        (11, 4, 1)
    );
    assert_eq!(out.model, "fake-gpt");
    c.complete(t1, &request()).await.unwrap();

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        r.header("authorization"),
        Some("Bearer sk-test-openai-key-0123456789")
    );
    let body = r.json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "hello");
    assert_eq!(body["response_format"]["type"], "json_object");

    let u = c.usage_of(t1);
    assert_eq!((u.requests, u.input_tokens, u.output_tokens), (2, 22, 8));
    assert_eq!(c.usage_of(t2).requests, 0);
    assert_eq!(c.usage().len(), 1);
}

#[tokio::test]
async fn anthropic_request_shape_and_usage() {
    let fake = Fake::start(vec![Reply::anthropic("summary", 30, 9)]).await;
    let c = client(config(Provider::Anthropic, &fake));
    let t = Uuid::now_v7();
    let out = c.complete(t, &request()).await.unwrap();
    assert_eq!(
        (out.text.as_str(), out.input_tokens, out.output_tokens),
        ("summary", 30, 9)
    );
    let r = &fake.requests()[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some("sk-ant-test-key-0123456789"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    let body = r.json();
    assert_eq!(body["system"], "be brief");
    assert_eq!(body["messages"][0]["role"], "user");
    assert!(body["max_tokens"].as_u64().unwrap() > 0);
    assert_eq!(c.usage_of(t).output_tokens, 9);
}

#[tokio::test]
async fn rate_limit_waits_as_long_as_retry_after_says() {
    let fake = Fake::start(vec![
        Reply::status(429, "{\"error\":\"slow down\"}").header("retry-after", "1"),
        Reply::openai("ok", 1, 1),
    ])
    .await;
    let c = client(config(Provider::OpenAi, &fake));
    let started = Instant::now();
    let out = c.complete(Uuid::now_v7(), &request()).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(out.attempts, 2);
    assert_eq!(fake.requests().len(), 2);
    // The backoff alone is at most 5 ms: only Retry-After explains a 1 s wait.
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn retry_after_is_capped_by_config() {
    let fake = Fake::start(vec![
        Reply::status(429, "{}").header("retry-after", "120"),
        Reply::openai("ok", 1, 1),
    ])
    .await;
    let mut cfg = config(Provider::OpenAi, &fake);
    cfg.max_retry_after_ms = 200;
    let c = client(cfg);
    let started = Instant::now();
    c.complete(Uuid::now_v7(), &request()).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn overloaded_529_and_server_errors_are_retried() {
    let fake = Fake::start(vec![
        Reply::status(529, "{\"type\":\"overloaded_error\"}"),
        Reply::status(500, "oops"),
        Reply::anthropic("fine", 2, 3),
    ])
    .await;
    let c = client(config(Provider::Anthropic, &fake));
    let out = c.complete(Uuid::now_v7(), &request()).await.unwrap();
    assert_eq!((out.text.as_str(), out.attempts), ("fine", 3));
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn server_errors_give_up_after_max_retries() {
    let fake = Fake::start(vec![Reply::status(503, "unavailable")]).await;
    let c = client(config(Provider::OpenAi, &fake));
    let e = c.complete(Uuid::now_v7(), &request()).await.unwrap_err();
    assert!(
        matches!(
            e,
            LlmError::Status {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(c.requests_sent(), 3);
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    for status in [400, 401, 404, 422] {
        let fake = Fake::start(vec![Reply::status(status, "{\"error\":\"bad\"}")]).await;
        let c = client(config(Provider::OpenAi, &fake));
        let e = c.complete(Uuid::now_v7(), &request()).await.unwrap_err();
        match e {
            LlmError::Status {
                status: s,
                attempts,
                ref body,
                ..
            } => {
                assert_eq!((s, attempts), (status, 1));
                assert!(body.contains("bad"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.requests().len(), 1, "status {status}");
    }
}

#[tokio::test]
async fn malformed_success_body_is_a_decode_error_without_retry() {
    let fake = Fake::start(vec![Reply::status(200, "{\"choices\": [ oops")]).await;
    let c = client(config(Provider::OpenAi, &fake));
    let e = c.complete(Uuid::now_v7(), &request()).await.unwrap_err();
    assert!(matches!(e, LlmError::Decode { .. }), "{e:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let fake = Fake::start(vec![
        Reply::openai("late", 1, 1).delay(Duration::from_secs(3))
    ])
    .await;
    let mut cfg = config(Provider::OpenAi, &fake);
    cfg.request_timeout_ms = 150;
    cfg.max_retries = 1;
    let c = client(cfg);
    let started = Instant::now();
    let e = c.complete(Uuid::now_v7(), &request()).await.unwrap_err();
    assert!(matches!(e, LlmError::Timeout { attempts: 2, .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn unreachable_provider_is_a_transport_error() {
    // Bind and drop: nothing listens on the port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = LlmConfig::new(Provider::OpenAi, format!("http://127.0.0.1:{port}/v1"), "m");
    cfg.max_retries = 1;
    cfg.backoff_base_ms = 1;
    cfg.backoff_max_ms = 1;
    let c = client(cfg);
    let e = c.complete(Uuid::now_v7(), &request()).await.unwrap_err();
    assert!(
        matches!(e, LlmError::Transport { attempts: 2, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn concurrency_is_limited_per_provider() {
    let fake = Fake::start(vec![
        Reply::openai("ok", 1, 1).delay(Duration::from_millis(150))
    ])
    .await;
    let mut cfg = config(Provider::OpenAi, &fake);
    cfg.concurrency = 2;
    let c = client(cfg);
    let t = Uuid::now_v7();
    let calls = (0..6).map(|_| {
        let c = c.clone();
        async move { c.complete(t, &request()).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(fake.requests().len(), 6);
    assert_eq!(fake.max_in_flight(), 2);
    assert_eq!(c.usage_of(t).requests, 6);
}

#[tokio::test]
async fn provider_none_builds_no_client() {
    let cfg = LlmConfig::default();
    let http = http_client(&cfg).unwrap();
    assert!(matches!(LlmClient::new(cfg, http), Err(LlmError::Disabled)));
}
