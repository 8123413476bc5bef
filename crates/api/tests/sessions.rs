//! `/v1/sessions` (and advice) through the router.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::json;
use steward_models::Role;
use steward_queue::{ClaimRequest, Outcome};
use uuid::Uuid;

#[tokio::test]
async fn create_read_and_update_a_session() {
    let h = Harness::new().await;
    let (tenant, user, token) = h.tenant(&[Role::Member]).await;
    let r = h
        .post(
            "/v1/sessions",
            &token,
            json!({"name": "fix login", "workspace": "/src/app", "visibility": "shared"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["owner_id"], user.to_string());
    assert_eq!(r.body["visibility"], "shared");
    assert!(
        r.body["conversation_id"].is_string(),
        "a conversation is made with it"
    );
    assert_eq!(r.body["created_at"], "2026-01-01T00:00:00.000000Z");

    let r = h
        .call(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(&token),
            Some(json!({
                "name": "fix login (2)",
                "open_files": ["src/auth.rs"],
                "terminal": {"commands": [{"command": "cargo test", "cwd": "/src/app",
                    "exit_code": 101, "started_at": "2026-01-01T00:00:01Z"}]},
                "agent_memory": [{"key": "db", "value": "uses redb", "updated_at": "2026-01-01T00:00:02Z"}]
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["name"], "fix login (2)");
    assert_eq!(
        r.body["terminal"]["commands"][0]["started_at"],
        "2026-01-01T00:00:01.000000Z"
    );
    let stored = h
        .models
        .workspace_sessions()
        .get(tenant, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.open_files, vec!["src/auth.rs".to_string()]);
    assert_eq!(stored.agent_memory[0].updated_at, common::START + 2_000_000);

    let r = h.get(&format!("/v1/sessions/{id}"), &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "fix login (2)");
}

#[tokio::test]
async fn session_input_errors_name_the_field() {
    let h = Harness::new().await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let id = h.session(&token).await;
    let patch = |body: serde_json::Value| {
        let h = &h;
        let token = token.clone();
        async move {
            h.call(
                Method::PATCH,
                &format!("/v1/sessions/{id}"),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let r = patch(json!({"visibility": "public"})).await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "visibility")
    );
    let r =
        patch(json!({"terminal": {"commands": [{"command": "ls", "started_at": "yesterday"}]}}))
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.field(), "terminal.started_at");
    let r = patch(json!({"editor": {"tabs": [{"path": 7}]}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.field(), "editor.tabs[0].path");
    let r = patch(json!({"open_files": [""]})).await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "open_files")
    );
    let r = patch(json!({"title": "x"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.field(), "title");
    let r = h.post("/v1/sessions", &token, json!({"name": "x"})).await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "workspace")
    );
    // A service token (sub is not a user id) cannot own a session.
    let svc = h.token(Uuid::now_v7(), "ci-bot", &["member"]);
    let r = h
        .post(
            "/v1/sessions",
            &svc,
            json!({"name": "x", "workspace": "/w"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn private_sessions_are_404_to_other_members_but_not_to_admins() {
    let h = Harness::new().await;
    let (tenant, _, owner) = h.tenant(&[Role::Member]).await;
    let id = h.session(&owner).await;
    let other = h.user(tenant, &[Role::Member]).await;
    let other = h.token(tenant, &other.to_string(), &["member"]);
    let r = h.get(&format!("/v1/sessions/{id}"), &other).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let admin = h.user(tenant, &[Role::Admin]).await;
    let admin = h.token(tenant, &admin.to_string(), &["admin"]);
    let r = h.get(&format!("/v1/sessions/{id}"), &admin).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn messages_files_and_summary() {
    let h = Harness::new().await;
    let (tenant, user, token) = h.tenant(&[Role::Member]).await;
    let id = h.session(&token).await;
    let msg_id = Uuid::now_v7();
    let r = h
        .post(
            &format!("/v1/sessions/{id}/messages"),
            &token,
            json!({"messages": [
                {"id": msg_id, "role": "user", "content": "why does login fail?"},
                {"role": "assistant", "content": "let me look", "model": "gpt-4o",
                 "tool_calls": [{"id": "c1", "name": "grep", "arguments": {"q": "login"}}]}
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let msgs = r.body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["id"], msg_id.to_string());
    assert!(msgs[0]["position"].as_str().unwrap() < msgs[1]["position"].as_str().unwrap());
    let conv: Uuid = r.body["conversation_id"].as_str().unwrap().parse().unwrap();
    let stored = h
        .models
        .conversations()
        .messages(tenant, conv, None, 10)
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 2);
    assert_eq!(stored.items[0].message.author_id, Some(user));
    // The same message id again is a conflict, not a second copy.
    let r = h
        .post(
            &format!("/v1/sessions/{id}/messages"),
            &token,
            json!({"messages": [{"id": msg_id, "role": "user", "content": "again"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = h
        .post(
            &format!("/v1/sessions/{id}/messages"),
            &token,
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.field(), "messages[0].role");

    let r = h
        .post(
            &format!("/v1/sessions/{id}/files"),
            &token,
            json!({"path": "src/auth.rs", "size": 120, "content_hash": "sha256:ab"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["workspace"], "/src/app");
    assert_eq!(r.body["last_session_id"], id.to_string());
    let r = h
        .post(
            &format!("/v1/sessions/{id}/files"),
            &token,
            json!({"path": "src/auth.rs", "size": 130, "content_hash": "sha256:cd"}),
        )
        .await;
    assert_eq!(r.body["version"], 2);
    let r = h
        .post(
            &format!("/v1/sessions/{id}/files"),
            &token,
            json!({"path": "src/auth.rs", "size": -1, "content_hash": "sha256:cd"}),
        )
        .await;
    assert_eq!(r.field(), "size");

    let r = h.get(&format!("/v1/sessions/{id}/summary"), &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["summary"].is_null());
    assert!(r.body["detail"].is_null());
    h.models
        .workspace_sessions()
        .update(tenant, id, |s| {
            s.summary = Some(steward_models::SessionSummary {
                text: "login fails on expired tokens".into(),
                through: None,
                message_count: 2,
                created_at: common::START,
            });
            s.summary_detail = Some(
                serde_json::from_value(json!({
                    "through": null, "method": "extractive",
                    "structured": {"intent": {"text": "fix login"}, "next_step": {"text": "add a test"}},
                    "terminal_through": common::START
                }))
                .unwrap(),
            );
            Ok(())
        })
        .await
        .unwrap();
    let r = h.get(&format!("/v1/sessions/{id}/summary"), &token).await;
    assert_eq!(r.body["summary"]["text"], "login fails on expired tokens");
    assert_eq!(
        r.body["summary"]["created_at"],
        "2026-01-01T00:00:00.000000Z"
    );
    assert_eq!(
        r.body["detail"]["structured"]["intent"]["text"],
        "fix login"
    );
    assert_eq!(r.body["detail"]["method"], "extractive");
    assert_eq!(
        r.body["detail"]["terminal_through"],
        "2026-01-01T00:00:00.000000Z"
    );
}

#[tokio::test]
async fn advice_without_a_worker_answers_202_with_the_job_to_poll() {
    let h = Harness::new().await;
    let (tenant, user, token) = h.tenant(&[Role::Member]).await;
    let id = h.session(&token).await;
    let r = h
        .post(
            &format!("/v1/sessions/{id}/advice"),
            &token,
            json!({"question": "how did we fix the login bug?", "token_budget": 2000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let job: Uuid = r.body["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.headers["location"], format!("/v1/jobs/{job}"));
    assert_eq!(r.body["state"], "queued");
    let stored = h.queue.get(tenant, job).await.unwrap().unwrap();
    assert_eq!(stored.kind, "build_cross_session_context");
    assert_eq!(stored.session_id, Some(id));
    assert_eq!(stored.args["user_id"], user.to_string());
    assert_eq!(stored.args["tenant"], tenant.to_string());
    assert_eq!(stored.args["session_id"], id.to_string());
    assert_eq!(stored.args["token_budget"], 2000);
    assert_eq!(stored.args["model"], "gpt-4o");
}

#[tokio::test]
async fn advice_answers_200_with_the_result_when_the_job_finishes_in_time() {
    let mut cfg = common::test_config();
    cfg.advice_wait = Duration::from_secs(20);
    let h = Harness::with_config(cfg).await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let id = h.session(&token).await;
    let result = json!({"context": "use refresh rotation", "tokens_used": 4, "token_budget": 100,
                        "abstained": false, "included": [], "excluded": []});
    let worker = async {
        loop {
            let leases = h
                .queue
                .claim(&ClaimRequest {
                    worker: "test".into(),
                    kinds: Some(vec!["build_cross_session_context".into()]),
                    max: 1,
                    lease: Duration::from_secs(30),
                })
                .await
                .unwrap();
            if let Some(lease) = leases.into_iter().next() {
                assert_eq!(lease.args["question"], "what did we learn?");
                h.queue.complete(&lease, result.clone()).await.unwrap();
                return;
            }
            h.queue
                .wait_for_work(Duration::from_millis(50))
                .await
                .unwrap();
        }
    };
    let uri = format!("/v1/sessions/{id}/advice");
    let request = h.post(
        &uri,
        &token,
        json!({"question": "what did we learn?", "token_budget": 100, "model": "claude-3"}),
    );
    let (r, ()) = tokio::join!(request, worker);
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, result);
}

#[tokio::test]
async fn advice_that_fails_is_502_and_bad_input_names_the_field() {
    let mut cfg = common::test_config();
    cfg.advice_wait = Duration::from_secs(20);
    let h = Harness::with_config(cfg).await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let id = h.session(&token).await;
    for (body, field) in [
        (json!({"question": "  ", "token_budget": 10}), "question"),
        (json!({"question": "q", "token_budget": 0}), "token_budget"),
        (
            json!({"question": "q", "token_budget": 10, "model": "a b"}),
            "model",
        ),
        (json!({"question": "q"}), "token_budget"),
        (
            json!({"question": "q", "token_budget": 10, "temperature": 1}),
            "temperature",
        ),
    ] {
        let r = h
            .post(&format!("/v1/sessions/{id}/advice"), &token, body)
            .await;
        assert!(r.status.is_client_error(), "{:?}", r.body);
        assert_eq!(r.field(), field, "{:?}", r.body);
    }
    let worker = async {
        loop {
            let leases = h
                .queue
                .claim(&ClaimRequest {
                    worker: "test".into(),
                    kinds: None,
                    max: 1,
                    lease: Duration::from_secs(30),
                })
                .await
                .unwrap();
            if let Some(lease) = leases.into_iter().next() {
                h.queue
                    .fail(
                        &lease,
                        Outcome::Fail {
                            error: "no model".into(),
                        },
                    )
                    .await
                    .unwrap();
                return;
            }
            h.queue
                .wait_for_work(Duration::from_millis(50))
                .await
                .unwrap();
        }
    };
    let uri = format!("/v1/sessions/{id}/advice");
    let request = h.post(&uri, &token, json!({"question": "q", "token_budget": 10}));
    let (r, ()) = tokio::join!(request, worker);
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{:?}", r.body);
    assert_eq!(r.code(), "advice_failed");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no model"));
}
