//! Round trips of every record, their indexes, and the size limits (chunked or refused, never
//! truncated).

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use steward_models::{
    AgentMemoryEntry, Cursor, EditorTab, Error, FileChange, FileChangeKind, MessageRole,
    NewConversation, NewMessage, NewTenant, NewUser, NewWorkspaceSession, Plan, PlanLimits, Role,
    SessionSummary, TenantKind, TerminalCommand, ToolCall, ToolResult, UserUpdate, Visibility,
    CHUNK_BYTES, HIPAA_MIN_AUDIT_RETENTION_DAYS, MAX_MESSAGE_BYTES, MAX_SESSION_BYTES,
};
use steward_store::limits::MAX_VALUE_SIZE as MAX_VALUE_SIZE_FOR_TESTS;
use support::{Backend, Env, T0};
use uuid::Uuid;

async fn tenant_round_trips_with_limits_and_flags(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let tenants = env.models.tenants();
    let mut flags = BTreeMap::new();
    flags.insert("agent.beta".to_string(), true);
    let created = tenants
        .create(NewTenant {
            feature_flags: flags,
            ..NewTenant::new("Clinic", TenantKind::Organization, Plan::Enterprise).hipaa(true)
        })
        .await
        .unwrap();
    assert_eq!(created.created_at, T0);
    assert!(created.limits.audit_retention_days >= HIPAA_MIN_AUDIT_RETENTION_DAYS);
    assert!(!created.limits.third_party_llm);
    assert!(created.flag("agent.beta") && !created.flag("other"));
    assert_eq!(
        tenants.get(created.id).await.unwrap(),
        Some(created.clone())
    );

    env.advance(Duration::from_secs(5));
    let updated = tenants
        .update(created.id, |t| {
            t.name = "Clinic GmbH".into();
            t.plan = Plan::Pro;
            t.limits.max_running = 3;
            t.feature_flags.insert("agent.beta".into(), false);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(updated.updated_at, T0 + 5_000_000);
    assert_eq!(updated.created_at, T0);
    assert_eq!(tenants.get(created.id).await.unwrap(), Some(updated));

    // A HIPAA tenant cannot drop under six years of audit retention.
    let e = tenants
        .update(created.id, |t| {
            t.limits.audit_retention_days = 400;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "limits.audit_retention_days",
                ..
            }
        ),
        "{e}"
    );
    // Bad inputs name their field.
    for (new, field) in [
        (
            NewTenant::new(" ", TenantKind::Personal, Plan::Free),
            "name",
        ),
        (
            NewTenant {
                limits: Some(PlanLimits {
                    queue_weight: 0,
                    ..Plan::Free.default_limits(false)
                }),
                ..NewTenant::new("x", TenantKind::Personal, Plan::Free)
            },
            "limits.queue_weight",
        ),
        (
            NewTenant {
                feature_flags: [("Bad Flag".to_string(), true)].into_iter().collect(),
                ..NewTenant::new("x", TenantKind::Personal, Plan::Free)
            },
            "feature_flags",
        ),
    ] {
        match tenants.create(new).await {
            Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }
    // A chosen id is created once.
    let id = Uuid::from_u128(42);
    let chosen = NewTenant {
        id: Some(id),
        ..NewTenant::new("Once", TenantKind::Personal, Plan::Free)
    };
    tenants.create(chosen.clone()).await.unwrap();
    assert!(matches!(
        tenants.create(chosen).await,
        Err(Error::AlreadyExists { what: "tenant", .. })
    ));
}

async fn users_round_trip_with_a_unique_email_per_tenant(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let users = env.models.users();
    let t = env.tenant("acme").await.id;
    let other = env.tenant("other").await.id;
    let ada = users
        .create(
            t,
            NewUser::new(" Ada@Acme.Example ", [Role::Owner, Role::Admin])
                .display_name("Ada")
                .password(support::PASSWORD),
        )
        .await
        .unwrap();
    assert_eq!(ada.email, "ada@acme.example");
    assert!(ada.has_password);
    assert_eq!(users.get(t, ada.id).await.unwrap(), Some(ada.clone()));
    assert_eq!(
        users.get_by_email(t, "ADA@acme.example").await.unwrap(),
        Some(ada.clone())
    );
    // Unique in the tenant, whatever the case; free in another tenant.
    assert!(matches!(
        users
            .create(t, NewUser::new("ada@ACME.example", [Role::Member]))
            .await,
        Err(Error::AlreadyExists { field: "email", .. })
    ));
    users
        .create(other, NewUser::new("ada@acme.example", [Role::Member]))
        .await
        .unwrap();
    let bot = users
        .create(t, NewUser::new("bot@acme.example", [Role::Agent]))
        .await
        .unwrap();
    assert!(!bot.has_password);
    // An agent without a password cannot log in with one.
    assert!(matches!(
        users.login(t, "bot@acme.example", "").await,
        Err(Error::InvalidCredentials)
    ));

    // Email change moves the index; the old address is free again.
    assert!(matches!(
        users.change_email(t, bot.id, "ada@acme.example").await,
        Err(Error::AlreadyExists { field: "email", .. })
    ));
    let moved = users
        .change_email(t, ada.id, "ada.l@acme.example")
        .await
        .unwrap();
    assert_eq!(
        users.get_by_email(t, "ada@acme.example").await.unwrap(),
        None
    );
    assert_eq!(
        users.get_by_email(t, "ada.l@acme.example").await.unwrap(),
        Some(moved)
    );
    users
        .change_email(t, bot.id, "ada@acme.example")
        .await
        .unwrap();

    let updated = users
        .update(
            t,
            ada.id,
            UserUpdate {
                display_name: Some("Ada L.".into()),
                roles: Some([Role::Member].into_iter().collect()),
                disabled: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.display_name, "Ada L.");
    assert!(matches!(
        users
            .update(
                t,
                ada.id,
                UserUpdate {
                    roles: Some(Default::default()),
                    ..Default::default()
                }
            )
            .await,
        Err(Error::Invalid { field: "roles", .. })
    ));
    assert!(matches!(
        users.set_password(t, ada.id, "short").await,
        Err(Error::Invalid {
            field: "password",
            ..
        })
    ));

    let page1 = users.list(t, None, 1).await.unwrap();
    let page2 = users.list(t, page1.next, 1).await.unwrap();
    assert_eq!(page1.items.len() + page2.items.len(), 2);
    assert_ne!(page1.items[0].id, page2.items[0].id);

    support::assert_existed(&env, users.delete(t, bot.id).await.unwrap());
    assert_eq!(users.get(t, bot.id).await.unwrap(), None);
    assert_eq!(
        users.get_by_email(t, "ada@acme.example").await.unwrap(),
        None
    );
    // The address is free again after the delete.
    users
        .create(t, NewUser::new("ada@acme.example", [Role::Member]))
        .await
        .unwrap();
}

async fn concurrent_creations_with_one_email_let_exactly_one_win(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let t = env.tenant("acme").await.id;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let m = env.models.clone();
            tokio::spawn(async move {
                m.users()
                    .create(t, NewUser::new("race@acme.example", [Role::Member]))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(Error::AlreadyExists { field: "email", .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        env.models
            .users()
            .list(t, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

async fn workspace_sessions_round_trip_and_keep_their_indexes(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let ws = env.models.workspace_sessions();
    let t = env.tenant("acme").await.id;
    let ada = env.user(t, "ada@acme.example").await.id;
    let bob = env.user(t, "bob@acme.example").await.id;
    let conv = env
        .models
        .conversations()
        .create(t, NewConversation::default())
        .await
        .unwrap()
        .id;

    let s1 = ws
        .create(t, NewWorkspaceSession::new("main", ada, "/w/app"))
        .await
        .unwrap();
    env.advance(Duration::from_secs(1));
    let full = ws
        .update(t, s1.id, |s| {
            s.open_files = vec!["src/main.rs".into(), "Cargo.toml".into()];
            s.editor.tabs = vec![EditorTab {
                path: "src/main.rs".into(),
                pinned: true,
            }];
            s.editor.active_tab = Some(0);
            s.editor.cursors = vec![Cursor {
                path: "src/main.rs".into(),
                line: 10,
                column: 4,
                selection_end: Some((12, 0)),
            }];
            s.terminal.commands = vec![TerminalCommand {
                command: "cargo test".into(),
                cwd: "/w/app".into(),
                exit_code: Some(101),
                started_at: T0,
                finished_at: Some(T0 + 1),
            }];
            s.context_files = vec!["README.md".into()];
            s.agent_memory = vec![AgentMemoryEntry {
                key: "style".into(),
                value: "prefers small commits".into(),
                updated_at: T0,
            }];
            s.conversation_id = Some(conv);
            s.visibility = Visibility::Shared;
            s.summary = Some(SessionSummary {
                text: "fixing tests".into(),
                through: None,
                message_count: 0,
                created_at: T0,
            });
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(full.last_activity_at, T0 + 1_000_000);
    assert_eq!(ws.get(t, s1.id).await.unwrap(), Some(full.clone()));

    env.advance(Duration::from_secs(1));
    let private = ws
        .create(t, NewWorkspaceSession::new("scratch", bob, "/w/app"))
        .await
        .unwrap();
    env.advance(Duration::from_secs(1));
    let fork = ws.fork(t, s1.id, bob, "bob's fork").await.unwrap();
    assert_eq!(fork.parent_id, Some(s1.id));
    assert_eq!(fork.open_files, full.open_files);
    assert_eq!(fork.visibility, Visibility::Private);
    assert_eq!(fork.conversation_id, None);

    let ids = |p: steward_models::Page<steward_models::WorkspaceSession>| {
        p.items.iter().map(|s| s.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(ws.list_by_user(t, ada, None, 10).await.unwrap()),
        vec![s1.id]
    );
    let mut bobs = vec![private.id, fork.id];
    bobs.sort();
    assert_eq!(ids(ws.list_by_user(t, bob, None, 10).await.unwrap()), bobs);
    // Ada sees her own and the shared ones, not Bob's private sessions.
    assert_eq!(
        ids(ws
            .list_by_workspace(t, "/w/app", ada, None, 10)
            .await
            .unwrap()),
        vec![s1.id]
    );
    let mut bob_sees = vec![s1.id, private.id, fork.id];
    bob_sees.sort();
    assert_eq!(
        ids(ws
            .list_by_workspace(t, "/w/app", bob, None, 10)
            .await
            .unwrap()),
        bob_sees
    );
    assert_eq!(
        ids(ws.list_forks(t, s1.id, None, 10).await.unwrap()),
        vec![fork.id]
    );
    let recent = ws.list_by_activity(t, None, 2).await.unwrap();
    assert_eq!(
        recent.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![fork.id, private.id]
    );
    let rest = ws.list_by_activity(t, recent.next, 2).await.unwrap();
    assert_eq!(
        rest.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![s1.id]
    );

    // Touch moves the activity index (the old entry is gone), and moving to another
    // workspace moves the workspace index.
    env.advance(Duration::from_secs(60));
    ws.touch(t, s1.id).await.unwrap();
    let inactive = ws.inactive_since(t, T0 + 30_000_000, 10).await.unwrap();
    let mut idle: Vec<Uuid> = inactive.iter().map(|(_, id)| *id).collect();
    idle.sort();
    assert_eq!(idle, bobs);
    ws.update(t, private.id, |s| {
        s.workspace = "/w/other".into();
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        ids(ws
            .list_by_workspace(t, "/w/other", bob, None, 10)
            .await
            .unwrap()),
        vec![private.id]
    );
    assert!(!ids(ws
        .list_by_workspace(t, "/w/app", bob, None, 10)
        .await
        .unwrap())
    .contains(&private.id));

    // Delete removes the record and every index entry.
    support::assert_existed(&env, ws.delete(t, s1.id).await.unwrap());
    assert_eq!(ws.get(t, s1.id).await.unwrap(), None);
    assert!(ids(ws.list_by_user(t, ada, None, 10).await.unwrap()).is_empty());
    assert!(ids(ws.list_forks(t, s1.id, None, 10).await.unwrap()).contains(&fork.id));
    // Only the fork's own index entry under its parent still names the deleted session.
    let all = env.all_pairs().await;
    let has = |k: &[u8], id: Uuid| k.windows(16).any(|w| w == id.as_bytes());
    let left: Vec<_> = all.iter().filter(|kv| has(&kv.key, s1.id)).collect();
    assert_eq!(left.len(), 1, "keys of the deleted session are left");
    assert!(has(&left[0].key, fork.id));
}

async fn a_long_file_list_is_chunked_and_a_too_long_one_refused(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let ws = env.models.workspace_sessions();
    let t = env.tenant("acme").await.id;
    let ada = env.user(t, "ada@acme.example").await.id;
    let s = ws
        .create(t, NewWorkspaceSession::new("big", ada, "/w"))
        .await
        .unwrap();
    // ~600 KB of open files: many chunks, all back.
    let files: Vec<String> = (0..6000)
        .map(|i| format!("src/module_{i:05}/some/deeply/nested/path/file_{i}.rs"))
        .collect();
    let stored = ws
        .update(t, s.id, |s| {
            s.open_files.clone_from(&files);
            Ok(())
        })
        .await
        .unwrap();
    let back = ws.get(t, s.id).await.unwrap().unwrap();
    assert_eq!(back.open_files.len(), 6000);
    assert_eq!(back, stored);
    let chunks = env
        .all_pairs()
        .await
        .into_iter()
        .filter(|kv| kv.key.windows(16).any(|w| w == s.id.as_bytes()) && kv.value.len() > 100)
        .collect::<Vec<_>>();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|kv| kv.value.len() <= CHUNK_BYTES));

    // Past the maximum: refused, and the stored session is unchanged.
    let e = ws
        .update(t, s.id, |s| {
            s.context_files = (0..MAX_SESSION_BYTES / 40)
                .map(|i| format!("generated/file_number_{i:012}.txt"))
                .collect();
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "workspace_session",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(ws.get(t, s.id).await.unwrap().unwrap(), back);
    // A path longer than a key may hold: refused, naming the field.
    let e = ws
        .update(t, s.id, |s| {
            s.open_files.push("p".repeat(5000));
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "open_files",
                ..
            }
        ),
        "{e}"
    );
}

async fn conversations_keep_order_and_long_messages_whole(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let convs = env.models.conversations();
    let t = env.tenant("acme").await.id;
    let c = convs
        .create(
            t,
            NewConversation {
                title: "debugging".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(convs.get(t, c.id).await.unwrap(), Some(c.clone()));

    // A message of ~1 MB with multi-byte characters, tool calls and results.
    let long: String = "héllo wörld ✓ ".repeat(60_000);
    assert!(long.len() > 900_000);
    let mut tool = NewMessage::text(MessageRole::Assistant, long.clone());
    tool.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "run_tests".into(),
        arguments: json!({"path": "crates/models"}),
    }];
    tool.model = Some("some-model".into());
    let first = convs
        .append(
            t,
            c.id,
            NewMessage::text(MessageRole::User, "why does it fail?"),
        )
        .await
        .unwrap();
    let second = convs.append(t, c.id, tool).await.unwrap();
    let mut result = NewMessage::text(MessageRole::Tool, "");
    result.tool_results = vec![ToolResult {
        call_id: "call_1".into(),
        content: "1 failed".into(),
        is_error: true,
    }];
    let batch = convs
        .append_batch(
            t,
            c.id,
            vec![result, NewMessage::text(MessageRole::Assistant, "fixed")],
        )
        .await
        .unwrap();
    assert!(first.position < second.position);
    assert!(second.position < batch[0].position && batch[0].position < batch[1].position);

    let all = convs.messages(t, c.id, None, 100).await.unwrap();
    assert_eq!(all.next, None);
    let got: Vec<_> = all.items.iter().map(|m| m.message.id).collect();
    assert_eq!(
        got,
        vec![
            first.message.id,
            second.message.id,
            batch[0].message.id,
            batch[1].message.id
        ]
    );
    assert_eq!(all.items[1].message.content, long);
    assert_eq!(all.items[1], second);
    assert_eq!(all.items[2].message.tool_results[0].content, "1 failed");
    assert_eq!(
        convs
            .get_message(t, c.id, second.message.id)
            .await
            .unwrap()
            .unwrap(),
        second
    );
    // Paging by position.
    let p1 = convs.messages(t, c.id, None, 2).await.unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = convs.messages(t, c.id, p1.next, 2).await.unwrap();
    assert_eq!(p2.items[0].message.id, batch[0].message.id);
    let stats = convs.stats(t, c.id).await.unwrap();
    assert_eq!(stats.message_count, 4);
    assert_eq!(stats.last_message_at, Some(T0));
    // No stored value is anywhere near the store's value limit.
    assert!(env
        .all_pairs()
        .await
        .iter()
        .all(|kv| kv.value.len() <= CHUNK_BYTES && kv.value.len() < MAX_VALUE_SIZE_FOR_TESTS));

    // Too long: refused, naming the field; nothing appended.
    let e = convs
        .append(
            t,
            c.id,
            NewMessage::text(MessageRole::User, "x".repeat(MAX_MESSAGE_BYTES + 1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "content",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(convs.stats(t, c.id).await.unwrap().message_count, 4);

    // A client's message id makes its retry idempotent: the second append is refused.
    let mut keyed = NewMessage::text(MessageRole::User, "once");
    keyed.id = Some(Uuid::from_u128(99));
    convs.append(t, c.id, keyed.clone()).await.unwrap();
    assert!(matches!(
        convs.append(t, c.id, keyed).await,
        Err(Error::AlreadyExists {
            what: "message",
            ..
        })
    ));

    let renamed = convs.rename(t, c.id, "fixed it").await.unwrap();
    assert_eq!(renamed.title, "fixed it");
    support::assert_existed(&env, convs.delete(t, c.id).await.unwrap());
    assert_eq!(convs.get(t, c.id).await.unwrap(), None);
    assert!(convs
        .messages(t, c.id, None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
    let prefix = steward_store::tuple::pack(&("t", t, "conv"));
    assert!(env
        .all_pairs()
        .await
        .iter()
        .all(|kv| !kv.key.starts_with(&prefix)));
}

async fn concurrent_appends_never_conflict_and_all_land(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let t = env.tenant("acme").await.id;
    let c = env
        .models
        .conversations()
        .create(t, NewConversation::default())
        .await
        .unwrap()
        .id;
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let m = env.models.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    m.conversations()
                        .append(
                            t,
                            c,
                            NewMessage::text(MessageRole::User, format!("writer {w} message {i}")),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let all = env
        .models
        .conversations()
        .messages(t, c, None, 100)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 40, "every append exactly once");
    // Each writer's messages appear in its own order.
    for w in 0..4 {
        let mine: Vec<String> = all
            .items
            .iter()
            .map(|m| m.message.content.clone())
            .filter(|s| s.starts_with(&format!("writer {w} ")))
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("writer {w} message {i}")).collect();
        assert_eq!(mine, expected);
    }
    assert_eq!(
        env.models
            .conversations()
            .stats(t, c)
            .await
            .unwrap()
            .message_count,
        40
    );
}

async fn files_keep_versions_paths_and_the_last_session(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let files = env.models.files();
    let t = env.tenant("acme").await.id;
    let (s1, s2) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let change = |path: &str, size: u64, hash: &str, session: Uuid| FileChange {
        workspace: "/w".into(),
        path: path.into(),
        size,
        content_hash: hash.into(),
        session_id: Some(session),
        user_id: None,
    };
    let v1 = files
        .record_change(t, change("src/lib.rs", 10, "sha256:01", s1))
        .await
        .unwrap();
    assert_eq!((v1.version, v1.last_session_id), (1, Some(s1)));
    // The same content again: no new version.
    let same = files
        .record_change(t, change("src/lib.rs", 10, "sha256:01", s2))
        .await
        .unwrap();
    assert_eq!(same, v1);
    env.advance(Duration::from_secs(1));
    let v2 = files
        .record_change(t, change("src/lib.rs", 12, "sha256:02", s2))
        .await
        .unwrap();
    assert_eq!(
        (v2.id, v2.version, v2.last_session_id),
        (v1.id, 2, Some(s2))
    );
    let moved = files
        .rename(t, v1.id, "src/core.rs", Some(s2), None)
        .await
        .unwrap();
    assert_eq!(moved.path, "src/core.rs");
    assert_eq!(
        files.get_by_path(t, "/w", "src/lib.rs").await.unwrap(),
        None
    );
    assert_eq!(
        files.get_by_path(t, "/w", "src/core.rs").await.unwrap(),
        Some(moved.clone())
    );
    files
        .record_change(t, change("src/main.rs", 1, "sha256:03", s1))
        .await
        .unwrap();
    files
        .record_change(t, change("README.md", 1, "sha256:04", s1))
        .await
        .unwrap();
    assert!(matches!(
        files.rename(t, v1.id, "README.md", None, None).await,
        Err(Error::AlreadyExists { field: "path", .. })
    ));

    let deleted = files
        .delete(t, "/w", "src/core.rs", Some(s1), None)
        .await
        .unwrap()
        .unwrap();
    assert!(deleted.deleted);
    let listed: Vec<String> = files
        .list(t, "/w", "src/", None, 10, false)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(listed, vec!["src/main.rs"]);
    let with_deleted = files.list(t, "/w", "", None, 10, true).await.unwrap();
    assert_eq!(with_deleted.items.len(), 3);
    let page = files.list(t, "/w", "", None, 1, true).await.unwrap();
    let next = files
        .list(t, "/w", "", page.next.as_deref(), 1, true)
        .await
        .unwrap();
    assert!(page.items[0].path < next.items[0].path);

    // Re-created at its old path: the history goes on.
    let back = files
        .record_change(t, change("src/core.rs", 5, "sha256:05", s2))
        .await
        .unwrap();
    assert_eq!((back.id, back.version, back.deleted), (v1.id, 5, false));
    let history = files.history(t, v1.id, None, 100).await.unwrap();
    let kinds: Vec<FileChangeKind> = history.items.iter().map(|v| v.change.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            FileChangeKind::Created,
            FileChangeKind::Modified,
            FileChangeKind::Renamed {
                from: "src/lib.rs".into()
            },
            FileChangeKind::Deleted,
            FileChangeKind::Created,
        ]
    );
    assert_eq!(history.items[1].at, T0 + 1_000_000);
    let later = files.history(t, v1.id, Some(3), 100).await.unwrap();
    assert_eq!(later.items.len(), 2);

    assert!(matches!(
        files
            .record_change(t, change(&"d/".repeat(2100), 1, "sha256:06", s1))
            .await,
        Err(Error::Invalid { field: "path", .. })
    ));
    support::assert_existed(&env, files.purge(t, v1.id).await.unwrap());
    assert_eq!(files.get(t, v1.id).await.unwrap(), None);
    assert!(files
        .history(t, v1.id, None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
}

backend_tests!(
    tenant_round_trips_with_limits_and_flags,
    users_round_trip_with_a_unique_email_per_tenant,
    concurrent_creations_with_one_email_let_exactly_one_win,
    workspace_sessions_round_trip_and_keep_their_indexes,
    a_long_file_list_is_chunked_and_a_too_long_one_refused,
    conversations_keep_order_and_long_messages_whole,
    concurrent_appends_never_conflict_and_all_land,
    files_keep_versions_paths_and_the_last_session,
);

#[tokio::test]
async fn a_bad_page_limit_is_refused_naming_the_field() {
    let env = Env::new(Backend::Memory, "limit").await;
    let t = env.tenant("acme").await.id;
    for limit in [0, steward_models::MAX_PAGE + 1] {
        assert!(matches!(
            env.models.users().list(t, None, limit).await,
            Err(Error::Invalid { field: "limit", .. })
        ));
    }
}
