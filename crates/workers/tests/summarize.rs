//! `summarize_session` end to end over an in-memory store and a local fake LLM provider:
//! LLM summaries with checked citations, incremental runs, skips, redaction, the plan's
//! third-party ban, and the extractive fallback on every kind of failure.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod llm_fake;

use llm_fake::{Fake, Reply};
use serde_json::json;
use steward_models::{
    MessagePosition, MessageRole, Models, ModelsConfig, NewConversation, NewMessage, NewTenant,
    NewUser, NewWorkspaceSession, Plan, Role, StructuredSummary, SummaryMethod, TenantKind,
    TerminalCommand, ToolCall, ToolResult, WorkspaceSession,
};
use steward_store::Database;
use steward_workers::llm::{http_client, ApiKey, LlmClient, LlmConfig, Provider};
use steward_workers::summarize::{
    summarize_session, summarize_session_with, SkipReason, SummarizeConfig, SummarizeOutcome,
    SummaryReport,
};
use uuid::Uuid;

const NOW: i64 = 1_700_000_000_000_000;

struct World {
    models: Models,
    tenant: Uuid,
    session: Uuid,
    conv: Uuid,
}

impl World {
    async fn new(third_party_llm: bool) -> World {
        let models = Models::open(Database::memory(), ModelsConfig::for_tests())
            .await
            .unwrap();
        let tenant = models
            .tenants()
            .create(NewTenant::new("Acme", TenantKind::Organization, Plan::Pro))
            .await
            .unwrap()
            .id;
        models
            .tenants()
            .update(tenant, |t| {
                t.limits.third_party_llm = third_party_llm;
                Ok(())
            })
            .await
            .unwrap();
        let owner = models
            .users()
            .create(tenant, NewUser::new("ada@example.com", [Role::Member]))
            .await
            .unwrap()
            .id;
        let conv = models
            .conversations()
            .create(tenant, NewConversation::default())
            .await
            .unwrap()
            .id;
        let mut new = NewWorkspaceSession::new("login work", owner, "/w/app");
        new.conversation_id = Some(conv);
        let session = models
            .workspace_sessions()
            .create(tenant, new)
            .await
            .unwrap()
            .id;
        World {
            models,
            tenant,
            session,
            conv,
        }
    }

    async fn say(&self, messages: Vec<NewMessage>) -> Vec<MessagePosition> {
        self.models
            .conversations()
            .append_batch(self.tenant, self.conv, messages)
            .await
            .unwrap()
            .iter()
            .map(|m| m.position)
            .collect()
    }

    async fn commands(&self, cmds: &[(&str, Option<i32>, i64)]) {
        let cmds: Vec<TerminalCommand> = cmds
            .iter()
            .map(|(c, code, at)| TerminalCommand {
                command: (*c).to_owned(),
                cwd: "/w/app".into(),
                exit_code: *code,
                started_at: *at,
                finished_at: code.map(|_| at + 1),
            })
            .collect();
        self.models
            .workspace_sessions()
            .update(self.tenant, self.session, |s| {
                s.terminal.commands.clone_from(&cmds);
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn session(&self) -> WorkspaceSession {
        self.models
            .workspace_sessions()
            .get(self.tenant, self.session)
            .await
            .unwrap()
            .unwrap()
    }

    async fn structured(&self) -> StructuredSummary {
        self.session().await.summary_detail.unwrap().structured
    }

    async fn run(&self, llm: Option<&LlmClient>) -> SummarizeOutcome {
        summarize_session(&self.models, llm, self.tenant, self.session, NOW)
            .await
            .unwrap()
    }
}

fn user(text: &str) -> NewMessage {
    NewMessage::text(MessageRole::User, text)
}

fn assistant(text: &str) -> NewMessage {
    NewMessage::text(MessageRole::Assistant, text)
}

fn client(provider: Provider, fake: &Fake) -> LlmClient {
    let base = match provider {
        Provider::Anthropic => fake.url(),
        _ => format!("{}/v1", fake.url()),
    };
    let mut c = LlmConfig::new(provider, base, "test-model");
    c.openai_api_key = Some(ApiKey::new("sk-test-openai-key-0123456789"));
    c.anthropic_api_key = Some(ApiKey::new("sk-ant-test-key-0123456789"));
    c.backoff_base_ms = 1;
    c.backoff_max_ms = 5;
    c.max_retries = 1;
    c.request_timeout_ms = 1_000;
    c.jitter_seed = Some(3);
    let http = http_client(&c).unwrap();
    LlmClient::new(c, http).unwrap()
}

/// A valid answer for three messages m1..m3.
fn good_answer() -> String {
    json!({
        "intent": {"text": "Build the login page", "sources": ["m1"]},
        "decisions": [{"text": "Hash passwords with argon2id", "sources": ["m2"]}],
        "changes": [{"file": "src/login.rs", "what": "added the form handler", "sources": ["m2", "m3"]}],
        "errors_fixed": [],
        "open_todos": [{"text": "Add rate limiting", "sources": ["m3"]}],
        "current_state": {"text": "Form works locally", "sources": ["m3"]},
        "next_step": null
    })
    .to_string()
}

fn summarized(o: &SummarizeOutcome) -> &SummaryReport {
    match o {
        SummarizeOutcome::Summarized(r) => r,
        other => panic!("expected a summary, got {other:?}"),
    }
}

async fn three_messages(w: &World) -> Vec<MessagePosition> {
    w.say(vec![
        user("first-msg: please build the login page"),
        assistant("second-msg: I will use argon2id and edit src/login.rs"),
        assistant("third-msg: the form works locally now"),
    ])
    .await
}

#[tokio::test]
async fn openai_summary_is_stored_with_citations_memory_and_usage() {
    let w = World::new(true).await;
    let p = three_messages(&w).await;
    let fake = Fake::start(vec![Reply::openai(&good_answer(), 120, 40)]).await;
    let llm = client(Provider::OpenAi, &fake);
    let out = w.run(Some(&llm)).await;
    let r = summarized(&out);
    assert_eq!(r.method, SummaryMethod::Llm);
    assert_eq!((r.new_messages, r.llm_requests, r.more), (3, 1, false));
    assert_eq!((r.input_tokens, r.output_tokens), (120, 40));
    assert_eq!(r.fallback, None);

    let s = w.session().await;
    let summary = s.summary.unwrap();
    assert_eq!(summary.through, Some(p[2]));
    assert_eq!(summary.message_count, 3);
    assert!(summary.text.contains("Build the login page"));
    let d = s.summary_detail.unwrap();
    assert_eq!(d.method, SummaryMethod::Llm);
    assert_eq!(d.provider.as_deref(), Some("openai"));
    assert_eq!(d.model.as_deref(), Some("fake-gpt"));
    assert_eq!(d.structured.intent.unwrap().sources, vec![p[0]]);
    assert_eq!(d.structured.changes[0].sources, vec![p[1], p[2]]);

    // The prompt labels each message and carries its text.
    let body = fake.requests()[0].json();
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("[m1] user: first-msg"), "{prompt}");
    assert!(prompt.contains("[m3] assistant: third-msg"), "{prompt}");

    let mem = w
        .models
        .workspace_sessions()
        .memory_items(w.tenant, w.session)
        .await
        .unwrap();
    assert_eq!(mem.len(), 3); // a decision, a change, a todo
    let usage = w
        .models
        .workspace_sessions()
        .llm_usage(w.tenant)
        .await
        .unwrap();
    assert_eq!((usage[0].input_tokens, usage[0].output_tokens), (120, 40));
    assert_eq!(llm.usage_of(w.tenant).requests, 1);
}

#[tokio::test]
async fn anthropic_summary_uses_the_messages_api() {
    let w = World::new(true).await;
    three_messages(&w).await;
    let fake = Fake::start(vec![Reply::anthropic(&good_answer(), 50, 10)]).await;
    let llm = client(Provider::Anthropic, &fake);
    let out = w.run(Some(&llm)).await;
    assert_eq!(summarized(&out).method, SummaryMethod::Llm);
    let req = &fake.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert!(req.json()["system"].as_str().unwrap().contains("JSON"));
    let d = w.session().await.summary_detail.unwrap();
    assert_eq!(d.provider.as_deref(), Some("anthropic"));
}

#[tokio::test]
async fn second_run_sends_only_new_messages_and_unchanged_input_is_skipped() {
    let w = World::new(true).await;
    let p = three_messages(&w).await;
    let second = json!({
        "intent": {"text": "Build the login page", "sources": ["m1"]},
        "decisions": [{"text": "Hash passwords with argon2id", "sources": ["m2"]}],
        "changes": [{"file": "src/login.rs", "what": "added the form handler", "sources": ["m3"]},
                    {"file": "src/limit.rs", "what": "added a rate limiter", "sources": ["m4"]}],
        "errors_fixed": [{"text": "Fixed a borrow error in the limiter", "sources": ["m5"]}],
        "open_todos": [],
        "current_state": {"text": "Login is rate limited", "sources": ["m5"]},
        "next_step": {"text": "Deploy", "sources": ["m5"]}
    })
    .to_string();
    let fake = Fake::start(vec![
        Reply::openai(&good_answer(), 10, 10),
        Reply::openai(&second, 10, 10),
    ])
    .await;
    let llm = client(Provider::OpenAi, &fake);
    summarized(&w.run(Some(&llm)).await);

    let q = w
        .say(vec![
            user("fourth-msg: add rate limiting in src/limit.rs"),
            assistant("fifth-msg: fixed the borrow error; login is rate limited"),
        ])
        .await;
    let r2 = w.run(Some(&llm)).await;
    let r2 = summarized(&r2);
    assert_eq!((r2.method, r2.new_messages), (SummaryMethod::Llm, 2));

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let prompt = reqs[1].json()["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.contains("fourth-msg") && prompt.contains("fifth-msg"));
    for old in ["first-msg", "second-msg", "third-msg"] {
        assert!(!prompt.contains(old), "{old} sent again: {prompt}");
    }
    // The previous summary is in the prompt, its citations as labels.
    assert!(prompt.contains("Hash passwords with argon2id"));

    let s = w.session().await;
    assert_eq!(s.summary.as_ref().unwrap().through, Some(q[1]));
    assert_eq!(s.summary.as_ref().unwrap().message_count, 5);
    let d = s.summary_detail.unwrap();
    // Old labels still point at the old messages, new ones at the new.
    assert_eq!(d.structured.intent.unwrap().sources, vec![p[0]]);
    assert_eq!(d.structured.changes[1].sources, vec![q[0]]);
    assert_eq!(d.structured.errors_fixed[0].sources, vec![q[1]]);

    // Nothing new: skipped without asking the model.
    assert_eq!(
        w.run(Some(&llm)).await,
        SummarizeOutcome::Skipped(SkipReason::NoNewInput)
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn secrets_never_reach_the_provider_or_the_summary() {
    let w = World::new(true).await;
    let secrets = [
        "sk-ant-api03-SeCrEtSeCrEtSeCrEtSeCrEt0123",
        "hunter2hunter2",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ];
    let mut tool = NewMessage::text(MessageRole::Assistant, "running the deploy");
    tool.tool_calls = vec![ToolCall {
        id: "c1".into(),
        name: "edit_file".into(),
        arguments: json!({"path": ".env", "content": format!("GITHUB_TOKEN={}", secrets[3])}),
    }];
    let mut result = NewMessage::text(MessageRole::Tool, "");
    result.tool_results = vec![ToolResult {
        call_id: "c1".into(),
        content: format!("Authorization: Bearer {}", secrets[4]),
        is_error: false,
    }];
    w.say(vec![
        user(&format!(
            "my key is {} and the db password={}",
            secrets[0], secrets[1]
        )),
        tool,
        result,
    ])
    .await;
    w.commands(&[(
        &format!("aws configure set aws_access_key_id {}", secrets[2]),
        Some(0),
        10,
    )])
    .await;

    // An answer citing the messages, as a model would.
    let answer = json!({
        "intent": {"text": "Deploy", "sources": ["m1"]},
        "decisions": [], "changes": [], "errors_fixed": [], "open_todos": [],
        "current_state": null, "next_step": null
    })
    .to_string();
    let fake = Fake::start(vec![Reply::openai(&answer, 1, 1)]).await;
    let llm = client(Provider::OpenAi, &fake);
    summarized(&w.run(Some(&llm)).await);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    for s in secrets {
        assert!(!reqs[0].body.contains(s), "{s} reached the provider");
    }
    assert!(reqs[0].body.contains("[REDACTED:"));

    // The extractive summary (stored text) is made from redacted text too.
    let w2 = World::new(false).await;
    w2.say(vec![user(&format!("use password={} please", secrets[1]))])
        .await;
    w2.commands(&[(&format!("export AWS_KEY={}", secrets[2]), Some(1), 10)])
        .await;
    summarized(&w2.run(None).await);
    // (The session's own terminal history still holds the command: that is the IDE's record.)
    let session = w2.session().await;
    let memory = w2
        .models
        .workspace_sessions()
        .memory_items(w2.tenant, w2.session)
        .await
        .unwrap();
    assert!(!memory.is_empty());
    let stored = serde_json::to_string(&(session.summary, session.summary_detail, memory)).unwrap();
    assert!(stored.contains("[REDACTED:"), "{stored}");
    for s in secrets {
        assert!(!stored.contains(s), "{s} stored in the summary");
    }
}

#[tokio::test]
async fn a_tenant_that_forbids_third_party_llms_never_reaches_one() {
    let w = World::new(false).await;
    three_messages(&w).await;
    let fake = Fake::start(vec![Reply::openai(&good_answer(), 1, 1)]).await;
    let llm = client(Provider::OpenAi, &fake);
    let out = w.run(Some(&llm)).await;
    let r = summarized(&out);
    assert_eq!(r.method, SummaryMethod::Extractive);
    assert_eq!(r.llm_requests, 0);
    assert!(r.fallback.as_deref().unwrap().contains("forbids"));
    assert_eq!(fake.requests().len(), 0);
    assert_eq!(llm.requests_sent(), 0);
    assert!(w
        .models
        .workspace_sessions()
        .llm_usage(w.tenant)
        .await
        .unwrap()
        .is_empty());

    // A first-party endpoint (self-hosted) is allowed.
    let w = World::new(false).await;
    three_messages(&w).await;
    let mut cfg = llm.config().clone();
    cfg.first_party = true;
    let local = LlmClient::new(cfg.clone(), http_client(&cfg).unwrap()).unwrap();
    assert_eq!(
        summarized(&w.run(Some(&local)).await).method,
        SummaryMethod::Llm
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn malformed_answers_are_retried_once_then_fall_back() {
    let w = World::new(true).await;
    three_messages(&w).await;
    let fake = Fake::start(vec![Reply::openai("Sure! Here is the summary: {", 5, 5)]).await;
    let llm = client(Provider::OpenAi, &fake);
    let out = w.run(Some(&llm)).await;
    let r = summarized(&out);
    assert_eq!(r.method, SummaryMethod::Extractive);
    assert_eq!(r.llm_requests, 2);
    assert_eq!((r.input_tokens, r.output_tokens), (10, 10));
    assert!(r.fallback.as_deref().unwrap().contains("refused twice"));
    // The retry told the model what was wrong.
    let second = &fake.requests()[1].json()["messages"][1]["content"];
    assert!(second.as_str().unwrap().contains("not JSON"), "{second}");
    let d = w.session().await.summary_detail.unwrap();
    assert_eq!(d.method, SummaryMethod::Extractive);
    assert!(w
        .session()
        .await
        .summary
        .unwrap()
        .text
        .contains("extractive"));
}

#[tokio::test]
async fn schema_violations_are_refused() {
    let cases = [
        // A citation of a message that is not in the input.
        json!({"intent": {"text": "x", "sources": ["m9"]}, "decisions": [], "changes": [],
               "errors_fixed": [], "open_todos": [], "current_state": null, "next_step": null}),
        // A missing field.
        json!({"intent": null, "decisions": [], "changes": [], "errors_fixed": [],
               "open_todos": [], "current_state": null}),
        // An extra field.
        json!({"intent": null, "decisions": [], "changes": [], "errors_fixed": [],
               "open_todos": [], "current_state": null, "next_step": null, "mood": "good"}),
        // A wrong type.
        json!({"intent": null, "decisions": "none", "changes": [], "errors_fixed": [],
               "open_todos": [], "current_state": null, "next_step": null}),
        // An empty text.
        json!({"intent": {"text": " ", "sources": ["m1"]}, "decisions": [], "changes": [],
               "errors_fixed": [], "open_todos": [], "current_state": null, "next_step": null}),
        // A change without its file.
        json!({"intent": null, "decisions": [], "changes": [{"what": "x", "sources": ["m1"]}],
               "errors_fixed": [], "open_todos": [], "current_state": null, "next_step": null}),
        // Prose around the object.
        json!("Here you go: {}"),
        // A citation that is not a label.
        json!({"intent": {"text": "x", "sources": [1]}, "decisions": [], "changes": [],
               "errors_fixed": [], "open_todos": [], "current_state": null, "next_step": null}),
    ];
    for bad in cases {
        let w = World::new(true).await;
        three_messages(&w).await;
        let fake = Fake::start(vec![
            Reply::openai(&bad.to_string(), 1, 1),
            Reply::openai(&good_answer(), 1, 1),
        ])
        .await;
        let llm = client(Provider::OpenAi, &fake);
        let out = w.run(Some(&llm)).await;
        let r = summarized(&out);
        // Refused once, accepted on the retry.
        assert_eq!((r.method, r.llm_requests), (SummaryMethod::Llm, 2), "{bad}");
        let retry = fake.requests()[1].json()["messages"][1]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(retry.contains("refused"), "{bad}");
    }
}

#[tokio::test]
async fn provider_failures_fall_back_to_extractive() {
    let cases = [
        (
            "400",
            vec![Reply::status(400, "{\"error\":\"bad model\"}")],
            1,
        ),
        ("500s", vec![Reply::status(500, "down")], 2),
        ("529s", vec![Reply::status(529, "overloaded")], 2),
        (
            "timeout",
            vec![Reply::openai(&good_answer(), 1, 1).delay(std::time::Duration::from_secs(5))],
            2,
        ),
        (
            "not the API's JSON",
            vec![Reply::status(200, "<html>proxy</html>")],
            1,
        ),
    ];
    for (name, script, requests) in cases {
        let w = World::new(true).await;
        three_messages(&w).await;
        let fake = Fake::start(script).await;
        let llm = client(Provider::OpenAi, &fake);
        let out = w.run(Some(&llm)).await;
        let r = summarized(&out);
        assert_eq!(r.method, SummaryMethod::Extractive, "{name}");
        assert!(r.fallback.is_some(), "{name}");
        assert_eq!(fake.requests().len(), requests, "{name}");
        assert_eq!(r.llm_requests as usize, requests, "{name}");
        let s = w.session().await;
        assert_eq!(s.summary_detail.unwrap().method, SummaryMethod::Extractive);
    }
}

#[tokio::test]
async fn the_run_deadline_bounds_all_llm_retries() {
    let w = World::new(true).await;
    three_messages(&w).await;
    let fake = Fake::start(vec![
        Reply::openai(&good_answer(), 1, 1).delay(std::time::Duration::from_secs(5))
    ])
    .await;
    let llm = client(Provider::OpenAi, &fake); // 1 s per attempt, one retry
    let cfg = SummarizeConfig {
        llm_deadline_ms: 300,
        ..SummarizeConfig::default()
    };
    let started = std::time::Instant::now();
    let out = summarize_session_with(&w.models, Some(&llm), &cfg, w.tenant, w.session, NOW)
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    let r = summarized(&out);
    assert_eq!(r.method, SummaryMethod::Extractive);
    assert!(r.fallback.as_deref().unwrap().contains("deadline"), "{r:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn an_llm_summary_builds_on_an_extractive_one() {
    // First without an LLM: items from terminal commands cite no message.
    let w = World::new(true).await;
    let p = three_messages(&w).await;
    w.commands(&[("cargo test", Some(101), 10)]).await;
    summarized(&w.run(None).await);
    // Then only a new command: the model sees the previous summary and the command.
    w.commands(&[("cargo test", Some(101), 10), ("cargo test", Some(0), 20)])
        .await;
    let answer = json!({
        "intent": {"text": "Build the login page", "sources": ["m1"]},
        "decisions": [], "changes": [],
        "errors_fixed": [{"text": "cargo test passes again", "sources": []}],
        "open_todos": [], "current_state": {"text": "tests pass", "sources": []},
        "next_step": null
    })
    .to_string();
    let fake = Fake::start(vec![Reply::openai(&answer, 3, 3)]).await;
    let llm = client(Provider::OpenAi, &fake);
    let out = w.run(Some(&llm)).await;
    let r = summarized(&out);
    assert_eq!(
        (r.method, r.new_messages, r.new_commands),
        (SummaryMethod::Llm, 0, 1)
    );
    let prompt = fake.requests()[0].json()["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.contains("`cargo test` fails (exit 101)"), "{prompt}");
    assert!(prompt.contains("$ cargo test  -> 0"), "{prompt}");
    // The old messages are not sent again (only the previous summary's words about them).
    assert!(!prompt.contains("[m1] user:"), "{prompt}");
    assert!(!prompt.contains("third-msg"), "{prompt}");
    let s = w.session().await;
    assert_eq!(s.summary.as_ref().unwrap().through, Some(p[2]));
    let d = s.summary_detail.unwrap();
    assert_eq!(d.structured.intent.unwrap().sources, vec![p[0]]);
    assert_eq!(d.terminal_through, Some(20));
}

#[tokio::test]
async fn extractive_summary_lists_requests_files_and_failed_commands() {
    let w = World::new(true).await;
    let mut edit = NewMessage::text(MessageRole::Assistant, "Editing the handler.");
    edit.tool_calls = vec![
        ToolCall {
            id: "1".into(),
            name: "edit_file".into(),
            arguments: json!({"path": "src/login.rs", "old": "a", "new": "b"}),
        },
        ToolCall {
            id: "2".into(),
            name: "read_file".into(),
            arguments: json!({"path": "README.md"}),
        },
    ];
    let p = w
        .say(vec![
            user("Please build the login page\nwith a remember-me box"),
            edit,
            assistant("Tests are failing on the borrow checker."),
        ])
        .await;
    w.commands(&[
        ("cargo test", Some(101), 10),
        ("cargo clippy", Some(1), 20),
        ("cargo test", Some(0), 30),
        ("cargo run", None, 40),
    ])
    .await;
    let out = w.run(None).await;
    let r = summarized(&out);
    assert_eq!(
        (r.method, r.new_commands, r.fallback.as_deref()),
        (SummaryMethod::Extractive, 3, None)
    );

    let s = w.structured().await;
    let intent = s.intent.unwrap();
    assert_eq!(
        (intent.text.as_str(), intent.sources.as_slice()),
        ("Please build the login page", &p[..1])
    );
    // Only the editing tool counts as a change.
    assert_eq!(s.changes.len(), 1);
    assert_eq!(s.changes[0].file, "src/login.rs");
    assert_eq!(s.changes[0].sources, vec![p[1]]);
    let todos: Vec<_> = s.open_todos.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        todos,
        [
            "Requested: Please build the login page",
            "`cargo clippy` fails (exit 1)"
        ]
    );
    assert!(s.errors_fixed.is_empty()); // `cargo test` failed and passed within this run
                                        // The last command to finish passed; the last assistant message says where things stand.
    assert_eq!(
        s.current_state.unwrap().text,
        "Tests are failing on the borrow checker."
    );
    assert_eq!(s.next_step, None);

    // Later: clippy passes, the running command finishes with a failure.
    w.commands(&[
        ("cargo test", Some(101), 10),
        ("cargo clippy", Some(1), 20),
        ("cargo test", Some(0), 30),
        ("cargo run", Some(2), 40),
        ("cargo clippy", Some(0), 50),
    ])
    .await;
    let r = w.run(None).await;
    assert_eq!(summarized(&r).new_commands, 2);
    let s = w.structured().await;
    let todos: Vec<_> = s.open_todos.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        todos,
        [
            "Requested: Please build the login page",
            "`cargo run` fails (exit 2)"
        ]
    );
    assert_eq!(s.errors_fixed[0].text, "`cargo clippy` failed, then passed");
    let kinds: Vec<_> = w
        .models
        .workspace_sessions()
        .memory_items(w.tenant, w.session)
        .await
        .unwrap()
        .iter()
        .map(|m| m.kind)
        .collect();
    use steward_models::MemoryKind::{Change, Lesson, Todo};
    assert_eq!(kinds, [Change, Todo, Todo, Lesson]);
    assert_eq!(
        w.run(None).await,
        SummarizeOutcome::Skipped(SkipReason::NoNewInput)
    );
}

#[tokio::test]
async fn extractive_summaries_are_deterministic() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let w = World::new(true).await;
        three_messages(&w).await;
        w.commands(&[("make", Some(2), 5)]).await;
        summarized(&w.run(None).await);
        let s = w.session().await;
        let mut d = s.summary_detail.unwrap();
        // Positions differ between stores; compare what was said.
        let texts: Vec<String> = d.structured.open_todos.drain(..).map(|t| t.text).collect();
        seen.push((s.summary.unwrap().text, texts, d.input_hash));
    }
    assert_eq!(seen[0].0, seen[1].0);
    assert_eq!(seen[0].1, seen[1].1);
}

#[tokio::test]
async fn a_small_budget_summarizes_in_several_runs_without_losing_messages() {
    let w = World::new(true).await;
    let msgs: Vec<_> = (0..30)
        .map(|i| user(&format!("request {i}: {}", "x".repeat(400))))
        .collect();
    let p = w.say(msgs).await;
    let cfg = SummarizeConfig {
        page_size: 7,
        input_budget_bytes: 4096,
        message_excerpt_bytes: 256,
        ..SummarizeConfig::default()
    };
    let mut runs = 0;
    let mut covered = 0;
    loop {
        runs += 1;
        assert!(runs < 30, "no progress");
        let out = summarize_session_with(&w.models, None, &cfg, w.tenant, w.session, NOW)
            .await
            .unwrap();
        match out {
            SummarizeOutcome::Summarized(r) => {
                covered += r.new_messages;
                assert!(r.new_messages >= 1);
                if !r.more {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(runs > 1, "the budget should have split the work");
    assert_eq!(covered, 30);
    let s = w.session().await.summary.unwrap();
    assert_eq!((s.through, s.message_count), (Some(p[29]), 30));

    let e = summarize_session_with(
        &w.models,
        None,
        &SummarizeConfig {
            page_size: 0,
            ..cfg
        },
        w.tenant,
        w.session,
        NOW,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("summarize.page_size"), "{e}");
}

#[tokio::test]
async fn unknown_tenant_or_session_is_an_error() {
    let w = World::new(true).await;
    let e = summarize_session(&w.models, None, Uuid::now_v7(), w.session, NOW)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tenant"), "{e}");
    let e = summarize_session(&w.models, None, w.tenant, Uuid::now_v7(), NOW)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("session"), "{e}");
    // An empty session has nothing to summarize.
    assert_eq!(
        w.run(None).await,
        SummarizeOutcome::Skipped(SkipReason::NoNewInput)
    );
}
