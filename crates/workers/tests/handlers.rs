//! Built-in handlers run directly over the memory store: the summary handler stores a summary
//! and counts it in the metrics; the context handler refuses a request for another tenant.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use steward_models::{
    MessageRole, Models, ModelsConfig, NewConversation, NewMessage, NewTenant, NewUser,
    NewWorkspaceSession, Plan, Role, TenantKind, Visibility,
};
use steward_queue::{Queue, QueueConfig};
use steward_store::{Database, ManualClock, OpenOptions};
use steward_workers::handlers::{builtin_registry, Services};
use steward_workers::{kinds, JobContext, JobError};
use uuid::Uuid;

#[tokio::test]
async fn summarize_and_context_handlers_act_on_the_jobs_tenant_only() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let db = Database::memory_with(OpenOptions {
        clock: clock.shared(),
        seed: Some(9),
        ..OpenOptions::default()
    });
    let models = Arc::new(
        Models::open(db.clone(), ModelsConfig::for_tests())
            .await
            .unwrap(),
    );
    let queue = Arc::new(Queue::with_seed(db, QueueConfig::default(), 9).unwrap());
    let t = models
        .tenants()
        .create(NewTenant::new("t", TenantKind::Organization, Plan::Pro))
        .await
        .unwrap()
        .id;
    let user = models
        .users()
        .create(t, NewUser::new("a@example.com", [Role::Owner]))
        .await
        .unwrap()
        .id;
    let session_id = models.new_id();
    let conv = models
        .conversations()
        .create(
            t,
            NewConversation {
                id: None,
                title: "c".into(),
                created_by: Some(user),
                session_id: Some(session_id),
            },
        )
        .await
        .unwrap();
    let session = models
        .workspace_sessions()
        .create(
            t,
            NewWorkspaceSession {
                id: Some(session_id),
                name: "s".into(),
                owner_id: user,
                workspace: "/w".into(),
                visibility: Visibility::Shared,
                conversation_id: Some(conv.id),
            },
        )
        .await
        .unwrap();
    models
        .conversations()
        .append_batch(
            t,
            conv.id,
            vec![
                NewMessage::text(MessageRole::User, "Pick a queue backend."),
                NewMessage::text(
                    MessageRole::Assistant,
                    "Decision: the queue backend is FoundationDB.",
                ),
            ],
        )
        .await
        .unwrap();
    let registry = builtin_registry(&Services {
        queue,
        models: models.clone(),
        llm: None,
        summarize: Default::default(),
    })
    .unwrap();
    steward_workers::metrics::prometheus();

    let out = registry
        .run_direct(
            JobContext::detached(t, Uuid::now_v7()),
            kinds::SUMMARIZE_SESSION,
            serde_json::json!({ "session_id": session.id }),
        )
        .await
        .unwrap();
    assert_eq!(out["outcome"], "summarized", "{out}");
    assert_eq!(out["method"], "extractive", "{out}");
    let stored = models
        .workspace_sessions()
        .get(t, session.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.summary.unwrap().text.contains("FoundationDB"));
    let rendered = steward_workers::metrics::prometheus().render();
    assert!(
        rendered.contains("steward_summaries_total{method=\"extractive\"}"),
        "{rendered}"
    );

    // The same session asked for from another tenant's job: refused, nothing read.
    let other = Uuid::now_v7();
    let request = serde_json::json!({
        "tenant": t, "user_id": user, "session_id": session.id,
        "question": "What does the queue use as its backend?", "token_budget": 200, "model": "gpt-4o",
    });
    let e = registry
        .run_direct(
            JobContext::detached(other, Uuid::now_v7()),
            kinds::BUILD_CROSS_SESSION_CONTEXT,
            request.clone(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, JobError::Fail { .. }), "{e:?}");
    // From its own tenant it answers, within budget, citing the decision.
    let ok = registry
        .run_direct(
            JobContext::detached(t, Uuid::now_v7()),
            kinds::BUILD_CROSS_SESSION_CONTEXT,
            request,
        )
        .await
        .unwrap();
    assert!(ok["tokens_used"].as_u64().unwrap() <= 200, "{ok}");
    assert!(
        ok["context"].as_str().unwrap().contains("FoundationDB"),
        "{ok}"
    );
}
