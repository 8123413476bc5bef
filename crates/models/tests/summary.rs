//! Session summaries with their structured detail, the session memory items distilled from
//! them, and the LLM token counters: written together, replaced together, never counted twice.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::time::Duration;

use steward_models::{
    Error, FileChangeItem, MemoryKind, MessagePosition, MessageRole, NewConversation, NewMessage,
    NewWorkspaceSession, SessionSummary, StructuredSummary, SummaryDetail, SummaryItem,
    SummaryMethod, SummaryWrite, WorkspaceSession, MAX_MEMORY_SESSIONS, MAX_SUMMARY_ITEMS,
};
use support::{Backend, Env, T0};
use uuid::Uuid;

/// A tenant, an owner, a session with a conversation of `n` messages; the positions.
async fn session_with_messages(
    env: &Env,
    n: usize,
) -> (Uuid, WorkspaceSession, Vec<MessagePosition>) {
    let t = env.tenant("Acme").await.id;
    let owner = env.user(t, "ada@example.com").await.id;
    let conv = env
        .models
        .conversations()
        .create(t, NewConversation::default())
        .await
        .unwrap();
    let mut new = NewWorkspaceSession::new("s", owner, "/w");
    new.conversation_id = Some(conv.id);
    let s = env
        .models
        .workspace_sessions()
        .create(t, new)
        .await
        .unwrap();
    let msgs = (0..n)
        .map(|i| NewMessage::text(MessageRole::User, format!("message {i}")))
        .collect();
    let stored = env
        .models
        .conversations()
        .append_batch(t, conv.id, msgs)
        .await
        .unwrap();
    (t, s, stored.iter().map(|m| m.position).collect())
}

fn item(text: &str, sources: &[MessagePosition]) -> SummaryItem {
    SummaryItem {
        text: text.into(),
        sources: sources.to_vec(),
    }
}

fn structured(p: &[MessagePosition]) -> StructuredSummary {
    StructuredSummary {
        intent: Some(item("ship the login page", &p[..1])),
        decisions: vec![item("use argon2id", &p[1..2])],
        changes: vec![FileChangeItem {
            file: "src/login.rs".into(),
            what: "added the form handler".into(),
            sources: p[1..3].to_vec(),
        }],
        errors_fixed: vec![item("borrow error in handler: cloned the config", &p[2..3])],
        open_todos: vec![
            item("rate-limit logins", &p[2..3]),
            item("add tests", &p[..1]),
        ],
        current_state: Some(item("form works locally", &p[2..3])),
        next_step: Some(item("write the tests", &p[2..3])),
    }
}

fn write(
    through: Option<MessagePosition>,
    s: StructuredSummary,
    tokens: (u64, u64),
) -> (SessionSummary, SummaryDetail) {
    (
        SessionSummary {
            text: "summary".into(),
            through,
            message_count: 3,
            created_at: T0 + 5,
        },
        SummaryDetail {
            through,
            structured: s,
            method: SummaryMethod::Llm,
            provider: Some("openai".into()),
            model: Some("gpt-test".into()),
            input_hash: "abc".into(),
            terminal_through: None,
            input_tokens: tokens.0,
            output_tokens: tokens.1,
        },
    )
}

async fn put_summary_stores_detail_memory_and_usage_together(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, s, p) = session_with_messages(&env, 3).await;
    let ws = env.models.workspace_sessions();
    env.advance(Duration::from_secs(60));
    let (summary, detail) = write(Some(p[2]), structured(&p), (100, 20));
    let written = ws
        .put_summary(t, s.id, summary.clone(), detail.clone())
        .await
        .unwrap();
    let SummaryWrite::Written(after) = written else {
        panic!("{written:?}")
    };
    assert_eq!(after.summary.as_ref(), Some(&summary));
    assert_eq!(after.summary_detail.as_ref(), Some(&detail));
    // Summarizing is not activity: the session stays where the idle scan finds it.
    assert_eq!(after.last_activity_at, s.last_activity_at);
    assert_eq!(ws.get(t, s.id).await.unwrap(), Some(after));

    let items = ws.memory_items(t, s.id).await.unwrap();
    let kinds: Vec<_> = items.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        [
            MemoryKind::Decision,
            MemoryKind::Change,
            MemoryKind::Todo,
            MemoryKind::Todo,
            MemoryKind::Lesson
        ]
    );
    assert_eq!(items[1].file.as_deref(), Some("src/login.rs"));
    assert_eq!(items[1].sources, p[1..3].to_vec());
    assert!(items.iter().enumerate().all(|(i, m)| m.index as usize == i
        && m.session_id == s.id
        && m.method == SummaryMethod::Llm
        && m.created_at == T0 + 5));

    // Counted once, even when the commit's outcome was unknown and the write retried.
    let usage = ws.llm_usage(t).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (
            usage[0].provider.as_str(),
            usage[0].input_tokens,
            usage[0].output_tokens
        ),
        ("openai", 100, 20)
    );

    // A later summary replaces every item.
    let mut smaller = structured(&p);
    smaller.decisions.clear();
    smaller.open_todos.truncate(1);
    let (summary2, detail2) = write(Some(p[2]), smaller, (1, 2));
    ws.put_summary(t, s.id, summary2, detail2).await.unwrap();
    let kinds: Vec<_> = ws
        .memory_items(t, s.id)
        .await
        .unwrap()
        .iter()
        .map(|i| i.kind)
        .collect();
    assert_eq!(
        kinds,
        [MemoryKind::Change, MemoryKind::Todo, MemoryKind::Lesson]
    );
    let usage = ws.llm_usage(t).await.unwrap();
    assert_eq!((usage[0].input_tokens, usage[0].output_tokens), (101, 22));

    // A run that covers fewer messages than the stored summary writes nothing.
    let (old_summary, old_detail) = write(Some(p[0]), StructuredSummary::default(), (5, 5));
    let r = ws
        .put_summary(t, s.id, old_summary, old_detail)
        .await
        .unwrap();
    assert!(matches!(r, SummaryWrite::Superseded(_)), "{r:?}");
    assert_eq!(ws.memory_items(t, s.id).await.unwrap().len(), 3);
    assert_eq!(ws.llm_usage(t).await.unwrap()[0].input_tokens, 101);
}

async fn memory_items_of_reads_several_sessions_in_order(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, s1, p) = session_with_messages(&env, 3).await;
    let ws = env.models.workspace_sessions();
    let s2 = ws
        .create(t, NewWorkspaceSession::new("other", s1.owner_id, "/w"))
        .await
        .unwrap();
    let (a, b) = write(Some(p[2]), structured(&p), (0, 0));
    ws.put_summary(t, s1.id, a, b).await.unwrap();
    let mut only_todo = StructuredSummary::default();
    only_todo.open_todos.push(item("deploy", &p[..1]));
    let (a, b) = write(Some(p[0]), only_todo, (0, 0));
    ws.put_summary(t, s2.id, a, b).await.unwrap();

    let both = ws.memory_items_of(t, &[s2.id, s1.id]).await.unwrap();
    assert_eq!(both.len(), 6);
    assert_eq!(both[0].session_id, s2.id);
    assert_eq!(both[0].text, "deploy");
    assert!(both[1..].iter().all(|i| i.session_id == s1.id));
    // No token counters without tokens.
    assert!(ws.llm_usage(t).await.unwrap().is_empty());
    // Another tenant sees nothing.
    let other = env.tenant("Other").await.id;
    assert!(ws
        .memory_items_of(other, &[s1.id, s2.id])
        .await
        .unwrap()
        .is_empty());

    // Deleting a session deletes its memory.
    ws.delete(t, s1.id).await.unwrap();
    assert!(ws.memory_items(t, s1.id).await.unwrap().is_empty());
    assert_eq!(ws.memory_items(t, s2.id).await.unwrap().len(), 1);
}

async fn bad_summaries_are_refused_naming_the_field(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, s, p) = session_with_messages(&env, 3).await;
    let ws = env.models.workspace_sessions();
    let field = |e: Error| match e {
        Error::Invalid { field, .. } => field,
        other => panic!("{other:?}"),
    };

    let (summary, mut detail) = write(Some(p[2]), structured(&p), (0, 0));
    detail.through = Some(p[1]);
    let e = ws.put_summary(t, s.id, summary, detail).await.unwrap_err();
    assert_eq!(field(e), "summary.through");

    let mut too_many = structured(&p);
    too_many.decisions = vec![item("d", &p[..1]); MAX_SUMMARY_ITEMS + 1];
    let (summary, detail) = write(Some(p[2]), too_many, (0, 0));
    let e = ws.put_summary(t, s.id, summary, detail).await.unwrap_err();
    assert_eq!(field(e), "summary.decisions");

    let mut blank = structured(&p);
    blank.changes[0].file = " ".into();
    let (summary, detail) = write(Some(p[2]), blank, (0, 0));
    let e = ws.put_summary(t, s.id, summary, detail).await.unwrap_err();
    assert_eq!(field(e), "summary.changes");

    let e = ws
        .memory_items_of(t, &vec![s.id; MAX_MEMORY_SESSIONS + 1])
        .await
        .unwrap_err();
    assert_eq!(field(e), "sessions");

    let (summary, detail) = write(Some(p[2]), structured(&p), (0, 0));
    let e = ws
        .put_summary(t, Uuid::now_v7(), summary, detail)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    // Nothing was written by the refused calls.
    assert_eq!(ws.get(t, s.id).await.unwrap().unwrap().summary, None);
    assert!(ws.memory_items(t, s.id).await.unwrap().is_empty());
}

backend_tests!(
    put_summary_stores_detail_memory_and_usage_together,
    memory_items_of_reads_several_sessions_in_order,
    bad_summaries_are_refused_naming_the_field,
);
