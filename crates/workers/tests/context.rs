//! `build_context`: budget, abstention, tenant isolation, visibility, supersession,
//! determinism, validation, and a small run of the evaluation.

use std::collections::HashSet;

use steward_models::{
    AgentMemoryEntry, Models, ModelsConfig, NewTenant, NewUser, NewWorkspaceSession, Plan, Role,
    SessionSummary, TenantKind, Visibility, WorkspaceSession,
};
use steward_store::{Database, ManualClock, OpenOptions};
use steward_workers::context::{
    build_context, eval, ContextError, ContextRequest, ContextResult, ItemKind, Reason, Relation,
};
use uuid::Uuid;

const T0: i64 = 1_767_225_600_000_000;
const DAY: i64 = 86_400_000_000;
const NOW: i64 = T0 + 40 * DAY;

async fn models(seed: u64) -> Models {
    let clock = ManualClock::new(T0);
    let db = Database::memory_with(OpenOptions {
        clock: clock.shared(),
        seed: Some(seed),
        ..Default::default()
    });
    let config = ModelsConfig {
        id_seed: Some(seed),
        ..ModelsConfig::for_tests()
    };
    Models::open(db, config).await.expect("open models")
}

async fn tenant(m: &Models, name: &str) -> Uuid {
    m.tenants()
        .create(NewTenant::new(name, TenantKind::Organization, Plan::Pro))
        .await
        .expect("tenant")
        .id
}

async fn user(m: &Models, tenant: Uuid, email: &str) -> Uuid {
    m.users()
        .create(tenant, NewUser::new(email, [Role::Member]))
        .await
        .expect("user")
        .id
}

async fn session(m: &Models, tenant: Uuid, owner: Uuid, vis: Visibility) -> WorkspaceSession {
    let mut new = NewWorkspaceSession::new("s", owner, "/repo/app");
    new.visibility = vis;
    m.workspace_sessions()
        .create(tenant, new)
        .await
        .expect("session")
}

async fn remember(m: &Models, tenant: Uuid, id: Uuid, entries: &[(&str, &str, i64)]) {
    m.workspace_sessions()
        .update(tenant, id, |s| {
            for (k, v, day) in entries {
                s.agent_memory.retain(|e| e.key != *k);
                s.agent_memory.push(AgentMemoryEntry {
                    key: (*k).to_owned(),
                    value: (*v).to_owned(),
                    updated_at: T0 + day * DAY,
                });
            }
            Ok(())
        })
        .await
        .expect("remember");
}

fn req(tenant: Uuid, user: Uuid, session: Uuid, q: &str, budget: u32) -> ContextRequest {
    ContextRequest {
        tenant,
        user_id: user,
        session_id: session,
        question: q.to_owned(),
        token_budget: budget,
        model: "gpt-4o".to_owned(),
    }
}

/// A tenant with a root (shared) holding a lesson and a decision, a fork chain root -> c1 -> g
/// (g asks), a sibling fork f2 of bob reversing the decision, a private session of carol, and
/// a handful of shared sessions with summaries.
struct World {
    tenant: Uuid,
    alice: Uuid,
    root: Uuid,
    g: Uuid,
    f2: Uuid,
    private: Uuid,
}

async fn world(m: &Models, name: &str) -> World {
    let t = tenant(m, name).await;
    let alice = user(m, t, &format!("alice@{name}.test")).await;
    let bob = user(m, t, &format!("bob@{name}.test")).await;
    let carol = user(m, t, &format!("carol@{name}.test")).await;
    let ws = m.workspace_sessions();
    let root = session(m, t, alice, Visibility::Shared).await;
    remember(
        m,
        t,
        root.id,
        &[
            (
                "lesson:flaky-integration-tests",
                "The integration tests flake when the embedded store shares a temp dir; give each test its own.",
                3,
            ),
            ("decision:job-store", "Use PostgreSQL 16 as the job store.", 5),
        ],
    )
    .await;
    let c1 = ws.fork(t, root.id, alice, "c1").await.expect("fork c1");
    let g = ws.fork(t, c1.id, alice, "g").await.expect("fork g");
    let f2 = ws.fork(t, root.id, bob, "f2").await.expect("fork f2");
    remember(
        m,
        t,
        f2.id,
        &[(
            "decision:job-store",
            "Reversed: use FoundationDB 7.1 as the job store, not PostgreSQL.",
            12,
        )],
    )
    .await;
    ws.update(t, f2.id, |s| {
        s.visibility = Visibility::Shared;
        Ok(())
    })
    .await
    .expect("share f2");
    let private = session(m, t, carol, Visibility::Private).await;
    remember(
        m,
        t,
        private.id,
        &[(
            "decision:payroll-export",
            "Carol's secret: payroll export goes to vault bucket zebra-7.",
            8,
        )],
    )
    .await;
    for i in 0..6 {
        let s = session(
            m,
            t,
            if i % 2 == 0 { alice } else { bob },
            Visibility::Shared,
        )
        .await;
        let text = format!(
            "Session {i} tuned the thumbnail cache to {} entries.\n\nIt also moved the mailer to queue priority {}.",
            100 * (i + 1),
            10 * i
        );
        ws.update(t, s.id, |s| {
            s.summary = Some(SessionSummary {
                text: text.clone(),
                through: None,
                message_count: 4,
                created_at: T0 + i * DAY,
            });
            Ok(())
        })
        .await
        .expect("summary");
    }
    World {
        tenant: t,
        alice,
        root: root.id,
        g: g.id,
        f2: f2.id,
        private: private.id,
    }
}

fn ids(items: &[steward_workers::context::ManifestItem]) -> HashSet<String> {
    items.iter().map(|i| i.item_id.clone()).collect()
}

#[tokio::test]
async fn a_fact_two_levels_up_is_found_and_cited() {
    let m = models(1).await;
    let w = world(&m, "a").await;
    let r = build_context(
        &m,
        &req(
            w.tenant,
            w.alice,
            w.g,
            "Why do the integration tests flake?",
            1000,
        ),
        NOW,
    )
    .await
    .expect("context");
    assert!(!r.abstained);
    assert!(
        r.context.contains("give each test its own"),
        "{}",
        r.context
    );
    let item = &r.included[0];
    assert!(item
        .item_id
        .ends_with("/memory/lesson:flaky-integration-tests"));
    assert_eq!(item.kind, ItemKind::Lesson);
    // The kept copy is the requester's own (forks copy memory); the root's is a duplicate.
    assert_eq!(item.session_id, w.g);
    assert_eq!(item.relation, Relation::Current);
    let root_copy = format!("{}/memory/lesson:flaky-integration-tests", w.root);
    let dup = r
        .excluded
        .iter()
        .find(|e| e.item_id == root_copy)
        .expect("root copy listed");
    assert!(matches!(dup.reason, Reason::Duplicate { .. }), "{dup:?}");
    assert!(r.context.contains(&format!("session {}", w.g)));
}

#[tokio::test]
async fn a_decision_reversed_in_a_fork_supersedes_the_older_one() {
    let m = models(2).await;
    let w = world(&m, "a").await;
    let r = build_context(
        &m,
        &req(w.tenant, w.alice, w.g, "Which job store do we use?", 1000),
        NOW,
    )
    .await
    .expect("context");
    assert!(r.context.contains("FoundationDB 7.1"), "{}", r.context);
    assert!(!r.context.contains("Use PostgreSQL 16"), "{}", r.context);
    let new_id = format!("{}/memory/decision:job-store", w.f2);
    assert!(ids(&r.included).contains(&new_id));
    let old_id = format!("{}/memory/decision:job-store", w.g);
    let old = r
        .excluded
        .iter()
        .find(|e| e.item_id == old_id)
        .expect("old decision listed");
    assert_eq!(old.reason, Reason::Superseded { by: new_id });
}

#[tokio::test]
async fn nothing_relevant_abstains_with_an_empty_block() {
    let m = models(3).await;
    let w = world(&m, "a").await;
    let r = build_context(
        &m,
        &req(
            w.tenant,
            w.alice,
            w.g,
            "What is the capital of Mongolia?",
            4000,
        ),
        NOW,
    )
    .await
    .expect("context");
    assert!(r.abstained);
    assert!(r
        .abstain_reason
        .as_deref()
        .unwrap_or("")
        .contains("relevant"));
    assert_eq!(r.context, "");
    assert_eq!(r.tokens_used, 0);
    assert!(r.included.is_empty());
    assert!(r.excluded.iter().all(|e| e.reason != Reason::Included));
}

#[tokio::test]
async fn private_sessions_of_other_users_are_never_used_or_named() {
    let m = models(4).await;
    let w = world(&m, "a").await;
    let r = build_context(
        &m,
        &req(
            w.tenant,
            w.alice,
            w.g,
            "Where does the payroll export go?",
            4000,
        ),
        NOW,
    )
    .await
    .expect("context");
    let json = serde_json::to_string(&r).expect("json");
    assert!(!json.contains("zebra-7"), "{json}");
    assert!(!json.contains(&w.private.to_string()), "{json}");
    assert!(r.abstained, "only carol's private session knows: {json}");
    // Asking from carol's private session is refused as not found.
    let err = build_context(&m, &req(w.tenant, w.alice, w.private, "payroll?", 100), NOW)
        .await
        .expect_err("not visible");
    assert!(
        matches!(err, ContextError::NotFound { what: "workspace session", id } if id == w.private),
        "{err:?}"
    );
}

#[tokio::test]
async fn another_tenants_ids_are_not_found() {
    let m = models(5).await;
    let a = world(&m, "a").await;
    let b = world(&m, "b").await;
    let cross_session = build_context(&m, &req(a.tenant, a.alice, b.g, "job store?", 500), NOW)
        .await
        .expect_err("other tenant's session");
    assert!(matches!(
        cross_session,
        ContextError::NotFound {
            what: "workspace session",
            ..
        }
    ));
    let cross_user = build_context(&m, &req(a.tenant, b.alice, a.g, "job store?", 500), NOW)
        .await
        .expect_err("other tenant's user");
    assert!(matches!(
        cross_user,
        ContextError::NotFound { what: "user", .. }
    ));
    // And tenant A's answer names nothing of tenant B.
    let r = build_context(
        &m,
        &req(a.tenant, a.alice, a.g, "Which job store?", 4000),
        NOW,
    )
    .await
    .expect("context");
    let json = serde_json::to_string(&r).expect("json");
    for id in [b.root, b.g, b.f2, b.private, b.tenant] {
        assert!(!json.contains(&id.to_string()));
    }
}

#[tokio::test]
async fn the_budget_is_never_exceeded_for_random_budgets_and_models() {
    let m = models(6).await;
    let w = world(&m, "a").await;
    let o200k = tiktoken_rs::o200k_base().expect("o200k");
    let cl100k = tiktoken_rs::cl100k_base().expect("cl100k");
    let mut rng = fastrand::Rng::with_seed(0xb0d9e7);
    let questions = [
        "Which job store do we use?",
        "thumbnail cache entries and mailer queue priority",
        "Why do the integration tests flake? What did session 3 tune?",
    ];
    let models_ = ["gpt-4o", "gpt-4", "claude-sonnet-4-5"];
    let mut filled = 0;
    for i in 0..150 {
        let budget = match i % 3 {
            0 => rng.u32(1..=40), // tiny: below the header's size too
            1 => rng.u32(40..=300),
            _ => rng.u32(300..=3000),
        };
        let model = models_[rng.usize(..models_.len())];
        let mut request = req(
            w.tenant,
            w.alice,
            w.g,
            questions[i % questions.len()],
            budget,
        );
        request.model = model.to_owned();
        let r = build_context(&m, &request, NOW).await.expect("context");
        assert!(
            r.tokens_used <= budget,
            "{} > {budget} ({model})",
            r.tokens_used
        );
        let raw = match model {
            "gpt-4" => cl100k.encode_ordinary(&r.context).len(),
            _ => o200k.encode_ordinary(&r.context).len(),
        } as u64;
        let counted = if model.starts_with("claude") {
            assert!(r.tokenizer.approximate);
            assert!((r.tokenizer.safety_factor - 1.25).abs() < f64::EPSILON);
            (raw * 5).div_ceil(4)
        } else {
            assert!(!r.tokenizer.approximate);
            raw
        };
        assert_eq!(
            counted,
            u64::from(r.tokens_used),
            "recount of the block ({model})"
        );
        assert!(counted <= u64::from(budget));
        if r.included.is_empty() {
            assert_eq!(r.context, "");
        } else {
            filled += 1;
            // Whole items only: one numbered section per included item, in manifest order.
            for (n, item) in r.included.iter().enumerate() {
                assert!(item.tokens.is_some());
                let kind = serde_json::to_value(item.kind).expect("kind");
                let head = format!(
                    "[{}] {} from session {}",
                    n + 1,
                    kind.as_str().unwrap_or_default(),
                    item.session_id
                );
                assert!(r.context.contains(&head), "{head} in {}", r.context);
            }
            let sections =
                r.context.matches("\n[").count() + usize::from(r.context.starts_with('['));
            assert_eq!(sections, r.included.len(), "{}", r.context);
        }
        assert!(r
            .excluded
            .iter()
            .all(|e| !matches!(e.reason, Reason::Included)));
    }
    assert!(filled > 50, "most budgets fit something ({filled})");
}

#[tokio::test]
async fn the_same_inputs_give_the_same_result() {
    let run = |seed| async move {
        let m = models(seed).await;
        let w = world(&m, "a").await;
        let r = build_context(
            &m,
            &req(
                w.tenant,
                w.alice,
                w.g,
                "thumbnail cache entries and the job store",
                700,
            ),
            NOW,
        )
        .await
        .expect("context");
        serde_json::to_string(&r).expect("json")
    };
    let first = run(7).await;
    assert_eq!(first, run(7).await);
    let parsed: ContextResult = serde_json::from_str(&first).expect("round trip");
    assert_eq!(serde_json::to_string(&parsed).expect("json"), first);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let m = models(8).await;
    let w = world(&m, "a").await;
    let ok = req(w.tenant, w.alice, w.g, "job store?", 100);
    let cases: Vec<(&str, ContextRequest)> = vec![
        (
            "question",
            ContextRequest {
                question: "   ".into(),
                ..ok.clone()
            },
        ),
        (
            "question",
            ContextRequest {
                question: "x".repeat(9000),
                ..ok.clone()
            },
        ),
        (
            "token_budget",
            ContextRequest {
                token_budget: 0,
                ..ok.clone()
            },
        ),
        (
            "token_budget",
            ContextRequest {
                token_budget: 1_000_001,
                ..ok.clone()
            },
        ),
        (
            "model",
            ContextRequest {
                model: String::new(),
                ..ok.clone()
            },
        ),
        (
            "model",
            ContextRequest {
                model: "gpt 4o; drop".into(),
                ..ok.clone()
            },
        ),
        (
            "session_id",
            ContextRequest {
                session_id: Uuid::nil(),
                ..ok.clone()
            },
        ),
        (
            "tenant",
            ContextRequest {
                tenant: Uuid::nil(),
                ..ok.clone()
            },
        ),
    ];
    for (field, bad) in cases {
        match build_context(&m, &bad, NOW).await {
            Err(ContextError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(build_context(&m, &ok, NOW).await.is_ok());
    // Unknown fields in the JSON are refused too.
    let json = r#"{"tenant":"00000000-0000-0000-0000-000000000001","user_id":"00000000-0000-0000-0000-000000000001","session_id":"00000000-0000-0000-0000-000000000001","question":"q","token_budget":5,"model":"gpt-4o","extra":1}"#;
    assert!(serde_json::from_str::<ContextRequest>(json).is_err());
}

#[tokio::test]
async fn the_evaluation_finds_facts_abstains_and_leaks_nothing() {
    let m = models(9).await;
    let report = eval::run(&m, &eval::EvalConfig::small(42))
        .await
        .expect("evaluation");
    println!("{report}");
    assert_eq!(report.leakage, 0, "{report}");
    assert!(report.leakage_probes > 10);
    assert!(report.max_budget_ratio <= 1.0, "{report}");
    assert_eq!(report.budget_violations, 0, "{report}");
    assert!(report.recall >= 0.8, "{report}");
    assert!(report.abstention_accuracy >= 0.9, "{report}");
    assert_eq!(
        report.supersession_correct, report.supersession_runs,
        "{report}"
    );
    assert!(report.supersession_runs > 0);
}

#[tokio::test]
async fn structured_summary_items_are_cited_and_a_newer_decision_replaces_the_older() {
    use steward_models::{
        MessagePosition, StructuredSummary, SummaryDetail, SummaryItem, SummaryMethod,
    };
    let m = models(10).await;
    let t = tenant(&m, "s").await;
    let alice = user(&m, t, "alice@s.test").await;
    let ws = m.workspace_sessions();
    let root = session(&m, t, alice, Visibility::Private).await;
    let pos = |n: u8| MessagePosition::parse("position", &format!("{n:024x}")).expect("pos");
    let put = |id: Uuid, day: i64, decision: &'static str, at: u8| {
        let ws = m.workspace_sessions();
        async move {
            let through = Some(pos(at));
            let structured = StructuredSummary {
                decisions: vec![SummaryItem {
                    text: decision.to_owned(),
                    sources: vec![pos(at)],
                }],
                next_step: Some(SummaryItem {
                    text: "Wire the webhook signer into the delivery worker.".to_owned(),
                    sources: vec![pos(at)],
                }),
                ..StructuredSummary::default()
            };
            ws.put_summary(
                t,
                id,
                SessionSummary {
                    text: "rendered".to_owned(),
                    through,
                    message_count: 1,
                    created_at: T0 + day * DAY,
                },
                SummaryDetail {
                    through,
                    structured,
                    method: SummaryMethod::Extractive,
                    provider: None,
                    model: None,
                    input_hash: String::new(),
                    terminal_through: None,
                    input_tokens: 0,
                    output_tokens: 0,
                },
            )
            .await
            .expect("put summary");
        }
    };
    put(root.id, 2, "Sign webhook payloads with HMAC-SHA-256.", 1).await;
    let fork = ws.fork(t, root.id, alice, "fork").await.expect("fork");
    put(
        fork.id,
        9,
        "Sign webhook payloads with Ed25519 instead of HMAC-SHA-256.",
        7,
    )
    .await;
    let r = build_context(
        &m,
        &req(t, alice, root.id, "How are webhook payloads signed?", 2000),
        NOW,
    )
    .await
    .expect("context");
    assert!(
        r.context.contains("Ed25519 instead"),
        "{}",
        serde_json::to_string_pretty(&r).unwrap_or_default()
    );
    assert!(
        !r.context
            .contains("Sign webhook payloads with HMAC-SHA-256."),
        "{}",
        r.context
    );
    let new_id = format!("{}/item/0", fork.id);
    let first = &r.included[0];
    assert_eq!(first.item_id, new_id);
    assert_eq!(first.kind, ItemKind::Decision);
    assert_eq!(first.relation, Relation::ChildFork);
    assert_eq!(first.messages, vec![pos(7).to_string()]);
    assert!(
        r.context.contains(&format!("messages {}", pos(7))),
        "{}",
        r.context
    );
    let old = r
        .excluded
        .iter()
        .find(|e| e.item_id == format!("{}/item/0", root.id))
        .expect("old decision listed");
    assert_eq!(old.reason, Reason::Superseded { by: new_id });
    // The rendered text of a structured summary is not used: its items are.
    assert!(!r.context.contains("rendered"));
}

#[tokio::test]
async fn an_item_too_big_for_the_budget_is_skipped_whole_and_a_smaller_one_still_fits() {
    let m = models(11).await;
    let t = tenant(&m, "b").await;
    let alice = user(&m, t, "alice@b.test").await;
    let s = session(&m, t, alice, Visibility::Private).await;
    let long = format!(
        "The deploy pipeline runs canary checks: {}",
        "latency, error rate, saturation; ".repeat(80)
    );
    remember(
        &m,
        t,
        s.id,
        &[
            ("decision:deploy-pipeline", long.as_str(), 9),
            (
                "lesson:deploy-pipeline-rollback",
                "Roll the deploy pipeline back with one command.",
                2,
            ),
        ],
    )
    .await;
    let r = build_context(&m, &req(t, alice, s.id, "deploy pipeline", 120), NOW)
        .await
        .expect("context");
    assert!(r.tokens_used <= 120);
    assert_eq!(r.included.len(), 1, "{r:?}");
    assert!(r.included[0]
        .item_id
        .ends_with("lesson:deploy-pipeline-rollback"));
    let big = r
        .excluded
        .iter()
        .find(|e| e.item_id.ends_with("decision:deploy-pipeline"))
        .expect("big item listed");
    assert_eq!(big.reason, Reason::OverBudget);
    assert!(
        !r.context.contains("canary"),
        "never a partial item: {}",
        r.context
    );
    // With room for both, both are in, whole.
    let r = build_context(&m, &req(t, alice, s.id, "deploy pipeline", 2000), NOW)
        .await
        .expect("context");
    assert_eq!(r.included.len(), 2);
    assert!(r.context.contains(long.trim()));
}
