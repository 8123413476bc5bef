//! The evaluation of [`build_context`]: synthetic session trees with
//! known facts, run through the real entry point over a real store.
//!
//! The world (made with a seeded RNG, so a seed gives the same world and the same numbers):
//!
//! ```text
//! tenant A, workspace /repo/app
//!   R  (alice, shared)   lesson L (only here)        decision D = v1 (day 10)
//!   ├─ C1 (alice)  fork of R (copies R's memory)
//!   │   └─ G (alice)  fork of C1: THE REQUESTING SESSION (L is two levels up)
//!   └─ F2 (bob, shared) fork of R; reverses D = v2 (day 20)
//!   P  (carol, private)  facts alice must never see
//!   distractors: shared sessions of alice and bob with facts (memory and summary paragraphs),
//!     private ones of bob (hidden from alice), some of alice's in /repo/infra (same user)
//! tenant B: the same shape with its own facts (never reachable from A)
//! ```
//!
//! Cases: facts to recall (L two levels up, the reversed D, facts of distractor sessions),
//! questions with no answer (must abstain), probes for hidden facts (other users' private
//! sessions, tenant B) and requests with ids of another tenant or of a private session of
//! another user (must be `NotFound`). Every case runs at every budget and model of the config.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use steward_models::{
    AgentMemoryEntry, Models, NewTenant, NewUser, NewWorkspaceSession, Plan, Role, SessionSummary,
    TenantKind, Visibility, WorkspaceSession,
};
use uuid::Uuid;

use super::tokens::TokenCounter;
use super::{build_context, ContextError, ContextRequest, Reason};

const DAY: i64 = 86_400_000_000;
/// The evaluation's epoch (2026-01-01); items are dated within 60 days after it.
const EPOCH: i64 = 1_767_225_600_000_000;
/// Recall counts runs with at least this budget (below it, a fact may simply not fit).
pub const RECALL_MIN_BUDGET: u32 = 256;
/// Most distractor sessions (each takes up to five of the 240 distinct facts).
pub const MAX_DISTRACTORS: usize = 45;

const COMPONENTS: &[&str] = &[
    "webhook",
    "billing",
    "search",
    "login",
    "cache",
    "upload",
    "export",
    "scheduler",
    "notification",
    "audit",
    "invoice",
    "gateway",
    "indexer",
    "mailer",
    "thumbnail",
    "backup",
    "metrics",
    "importer",
    "checkout",
    "sync",
];
const ASPECTS: &[&str] = &[
    "retry policy",
    "timeout",
    "storage backend",
    "rate limit",
    "serialization format",
    "log level",
    "batch size",
    "encryption scheme",
    "deployment region",
    "queue priority",
    "compression codec",
    "ownership team",
];
const VALUES: &[&str] = &[
    "exponential backoff capped at ten minutes",
    "thirty seconds",
    "PostgreSQL 16",
    "FoundationDB 7.1",
    "two hundred requests per minute",
    "protobuf with gzip",
    "warn in production, debug in staging",
    "500 items",
    "AES-256-GCM with per-tenant keys",
    "eu-west-1",
    "priority 40",
    "zstd level 3",
    "the platform team",
    "Redis streams",
    "JSON lines",
    "S3 with object lock",
    "ninety seconds",
    "1000 items",
    "us-east-2",
    "the payments team",
];
/// Questions no session answers.
const NO_ANSWER: &[&str] = &[
    "What is the capital of Mongolia?",
    "Which volcano erupted near the lagoon in the tapestry legend?",
    "How many strings does a harpsichord have?",
    "Who painted the giraffe on the saxophone album cover?",
    "What temperature should sourdough starter be kept at?",
    "Which meteor shower peaks in August?",
];

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Seeds the world and the questions.
    pub seed: u64,
    /// Distractor sessions per tenant.
    pub distractors: usize,
    /// Distractor facts asked about.
    pub distractor_questions: usize,
    /// Budgets every case runs at.
    pub budgets: Vec<u32>,
    /// Models every case runs for.
    pub models: Vec<String>,
}

impl EvalConfig {
    /// The full evaluation (`examples/context_eval.rs`).
    #[must_use]
    pub fn full(seed: u64) -> Self {
        EvalConfig {
            seed,
            distractors: 40,
            distractor_questions: 16,
            budgets: vec![8, 32, 128, 256, 512, 2048, 8192],
            models: vec![
                "gpt-4o".to_owned(),
                "gpt-4".to_owned(),
                "claude-sonnet-4-5".to_owned(),
            ],
        }
    }

    /// A small one for the test suite.
    #[must_use]
    pub fn small(seed: u64) -> Self {
        EvalConfig {
            seed,
            distractors: 10,
            distractor_questions: 5,
            budgets: vec![16, 256, 2048],
            models: vec!["gpt-4o".to_owned(), "claude-sonnet-4-5".to_owned()],
        }
    }
}

/// The numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// `build_context` calls made.
    pub runs: u32,
    /// Answerable runs with budget ≥ [`RECALL_MIN_BUDGET`].
    pub recall_runs: u32,
    /// Of those, runs whose block holds the expected fact.
    pub recall_hits: u32,
    /// `recall_hits / recall_runs`.
    pub recall: f64,
    /// Recall at each budget: (budget, hits, runs).
    pub recall_by_budget: Vec<(u32, u32, u32)>,
    /// Reversed-decision runs (budget ≥ [`RECALL_MIN_BUDGET`]).
    pub supersession_runs: u32,
    /// Of those, runs with the new decision in the block, the old one not, and the old one
    /// marked superseded by the new one in the manifest.
    pub supersession_correct: u32,
    /// Of those, runs whose manifest marks the old decision superseded by the new one (the
    /// rest of "correct" is the new one fitting in the block).
    pub supersession_marked: u32,
    /// Runs that should abstain (no-answer questions) or answer (answerable ones).
    pub abstention_runs: u32,
    /// Of those, runs that did what they should.
    pub abstention_correct: u32,
    /// `abstention_correct / abstention_runs`.
    pub abstention_accuracy: f64,
    /// Answerable runs that abstained.
    pub false_abstentions: u32,
    /// No-answer runs that did not abstain.
    pub missed_abstentions: u32,
    /// Largest `tokens_used / token_budget` over all runs (must be ≤ 1).
    pub max_budget_ratio: f64,
    /// Runs whose recount of the block differs from `tokens_used` or exceeds the budget.
    pub budget_violations: u32,
    /// Hidden facts or ids (other users' private sessions, another tenant) found in a result,
    /// plus cross-tenant or private-session requests that were not refused (must be 0).
    pub leakage: u32,
    /// Probes for hidden data run.
    pub leakage_probes: u32,
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "runs                 {}", self.runs)?;
        writeln!(
            f,
            "recall (budget>={RECALL_MIN_BUDGET})  {:.3} ({}/{})",
            self.recall, self.recall_hits, self.recall_runs
        )?;
        for (b, h, n) in &self.recall_by_budget {
            let r = if *n == 0 {
                0.0
            } else {
                f64::from(*h) / f64::from(*n)
            };
            writeln!(f, "  recall @ {b:>5} tokens  {r:.3} ({h}/{n})")?;
        }
        writeln!(
            f,
            "supersession         {}/{} reversed decisions resolved to the newer one \
             ({} marked superseded)",
            self.supersession_correct, self.supersession_runs, self.supersession_marked
        )?;
        writeln!(
            f,
            "abstention accuracy  {:.3} ({}/{}; false abstentions {}, missed {})",
            self.abstention_accuracy,
            self.abstention_correct,
            self.abstention_runs,
            self.false_abstentions,
            self.missed_abstentions
        )?;
        writeln!(
            f,
            "budget adherence     max tokens_used/budget {:.3}, violations {}",
            self.max_budget_ratio, self.budget_violations
        )?;
        write!(
            f,
            "leakage              {} (over {} probes)",
            self.leakage, self.leakage_probes
        )
    }
}

enum Expect {
    /// The block must hold `text`; with `old`, it must not hold it and the manifest must mark
    /// the item `old_id` superseded by `new_id`.
    Fact {
        text: String,
        old: Option<(String, String)>,
        new_id: Option<String>,
    },
    Abstain,
    /// Only checked for leakage.
    Probe,
}

struct Case {
    tenant: Uuid,
    user: Uuid,
    session: Uuid,
    question: String,
    expect: Expect,
}

struct Fact {
    key: String,
    text: String,
    question: String,
}

/// Hands out (component, aspect) pairs without replacement, so every fact is unique.
struct Facts {
    rng: fastrand::Rng,
    pairs: Vec<(usize, usize)>,
}

impl Facts {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut pairs: Vec<(usize, usize)> = (0..COMPONENTS.len())
            .flat_map(|c| (0..ASPECTS.len()).map(move |a| (c, a)))
            .collect();
        rng.shuffle(&mut pairs);
        Facts { rng, pairs }
    }

    fn next(&mut self, marker: &str) -> Option<Fact> {
        let (c, a) = self.pairs.pop()?;
        let (c, a) = (COMPONENTS[c], ASPECTS[a]);
        let value = VALUES[self.rng.usize(..VALUES.len())];
        Some(Fact {
            key: format!("decision:{c}-{}", a.replace(' ', "-")),
            text: format!("The {c} {a} is {value}{marker}."),
            question: format!("Which {a} does the {c} have?"),
        })
    }
}

async fn user(models: &Models, tenant: Uuid, email: &str) -> Result<Uuid, ContextError> {
    Ok(models
        .users()
        .create(tenant, NewUser::new(email, [Role::Member]))
        .await?
        .id)
}

async fn session(
    models: &Models,
    tenant: Uuid,
    owner: Uuid,
    workspace: &str,
    visibility: Visibility,
) -> Result<WorkspaceSession, ContextError> {
    let mut new = NewWorkspaceSession::new("eval", owner, workspace);
    new.visibility = visibility;
    Ok(models.workspace_sessions().create(tenant, new).await?)
}

async fn remember(
    models: &Models,
    tenant: Uuid,
    id: Uuid,
    entries: Vec<AgentMemoryEntry>,
    summary: Option<SessionSummary>,
    visibility: Option<Visibility>,
) -> Result<WorkspaceSession, ContextError> {
    Ok(models
        .workspace_sessions()
        .update(tenant, id, |s| {
            for e in &entries {
                s.agent_memory.retain(|m| m.key != e.key);
                s.agent_memory.push(e.clone());
            }
            if summary.is_some() {
                s.summary.clone_from(&summary);
            }
            if let Some(v) = visibility {
                s.visibility = v;
            }
            Ok(())
        })
        .await?)
}

fn entry(fact: &Fact, day: i64) -> AgentMemoryEntry {
    AgentMemoryEntry {
        key: fact.key.clone(),
        value: fact.text.clone(),
        updated_at: EPOCH + day * DAY,
    }
}

/// One tenant's world; returns its cases and the facts nobody else may see.
struct World {
    tenant: Uuid,
    requester: Uuid,
    requester_session: Uuid,
    /// Ids of sessions the requester may not read (private of others).
    hidden_sessions: Vec<Uuid>,
    /// Texts of facts in those sessions.
    hidden_facts: Vec<Fact>,
    /// Facts the requester should be able to recall (text, question).
    visible_facts: Vec<Fact>,
    lesson: Fact,
    reversal: (Fact, Fact, String, String),
    all_session_ids: Vec<Uuid>,
}

async fn build_world(
    models: &Models,
    name: &str,
    cfg: &EvalConfig,
    seed: u64,
) -> Result<World, ContextError> {
    let tenant = models
        .tenants()
        .create(NewTenant::new(name, TenantKind::Organization, Plan::Pro))
        .await?
        .id;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut facts = Facts::new(seed ^ 0x5eed);
    let marker = format!(" (ref {name})");
    let mut take = || facts.next(&marker);
    let alice = user(models, tenant, &format!("alice@{name}.example")).await?;
    let bob = user(models, tenant, &format!("bob@{name}.example")).await?;
    let carol = user(models, tenant, &format!("carol@{name}.example")).await?;
    let app = "/repo/app";
    let ws = models.workspace_sessions();
    let mut all = Vec::new();

    let (Some(lesson), Some(d1)) = (take(), take()) else {
        return Err(ContextError::Invalid {
            field: "distractors",
            message: "the evaluation's vocabulary is exhausted".to_owned(),
        });
    };
    let lesson = Fact {
        key: lesson.key.replace("decision:", "lesson:"),
        ..lesson
    };
    let root = session(models, tenant, alice, app, Visibility::Shared).await?;
    remember(
        models,
        tenant,
        root.id,
        vec![entry(&lesson, 5), entry(&d1, 10)],
        None,
        None,
    )
    .await?;
    let c1 = ws.fork(tenant, root.id, alice, "c1").await?;
    let g = ws.fork(tenant, c1.id, alice, "g").await?;
    let f2 = ws.fork(tenant, root.id, bob, "f2").await?;
    let value2 = VALUES
        .iter()
        .find(|v| !d1.text.contains(**v))
        .copied()
        .unwrap_or("none");
    let d2 = Fact {
        key: d1.key.clone(),
        text: format!(
            "Reversed: {} now uses {value2} instead{marker}.",
            d1.key.trim_start_matches("decision:").replace('-', " ")
        ),
        question: d1.question.clone(),
    };
    remember(
        models,
        tenant,
        f2.id,
        vec![entry(&d2, 20)],
        None,
        Some(Visibility::Shared),
    )
    .await?;
    all.extend([root.id, c1.id, g.id, f2.id]);
    let old_id = format!("{}/memory/{}", g.id, d1.key);
    let new_id = format!("{}/memory/{}", f2.id, d2.key);

    let mut hidden_sessions = Vec::new();
    let mut hidden_facts = Vec::new();
    let mut visible_facts = Vec::new();
    let private = session(models, tenant, carol, app, Visibility::Private).await?;
    all.push(private.id);
    hidden_sessions.push(private.id);
    if let Some(f) = take() {
        remember(models, tenant, private.id, vec![entry(&f, 30)], None, None).await?;
        hidden_facts.push(f);
    }

    for i in 0..cfg.distractors {
        let (owner, workspace, visibility) = match rng.u8(..10) {
            0..=3 => (alice, app, Visibility::Shared),
            4..=6 => (bob, app, Visibility::Shared),
            7 => (bob, app, Visibility::Private),
            8 => (alice, "/repo/infra", Visibility::Private),
            _ => (alice, app, Visibility::Private),
        };
        let s = session(models, tenant, owner, workspace, visibility).await?;
        let mut entries = Vec::new();
        let mut made = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            if let Some(f) = take() {
                entries.push(entry(&f, rng.i64(0..60)));
                made.push(f);
            }
        }
        let paragraphs: Vec<Fact> = (0..2).filter_map(|_| take()).collect();
        let summary = SessionSummary {
            text: paragraphs
                .iter()
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
            through: None,
            message_count: 2,
            created_at: EPOCH + rng.i64(0..60) * DAY,
        };
        remember(models, tenant, s.id, entries, Some(summary), None).await?;
        made.extend(paragraphs);
        all.push(s.id);
        let hidden = owner != alice && visibility == Visibility::Private;
        if hidden {
            hidden_sessions.push(s.id);
            hidden_facts.extend(made);
        } else if i % 2 == 0 || visible_facts.len() < cfg.distractor_questions {
            visible_facts.extend(made);
        }
    }
    Ok(World {
        tenant,
        requester: alice,
        requester_session: g.id,
        hidden_sessions,
        hidden_facts,
        visible_facts,
        lesson,
        reversal: (d1, d2, old_id, new_id),
        all_session_ids: all,
    })
}

fn cases(world: &World, other: &World, cfg: &EvalConfig, rng: &mut fastrand::Rng) -> Vec<Case> {
    let mk = |question: &str, expect| Case {
        tenant: world.tenant,
        user: world.requester,
        session: world.requester_session,
        question: question.to_owned(),
        expect,
    };
    let mut out = vec![mk(
        &world.lesson.question,
        Expect::Fact {
            text: world.lesson.text.clone(),
            old: None,
            new_id: None,
        },
    )];
    let (d1, d2, old_id, new_id) = &world.reversal;
    out.push(mk(
        &d2.question,
        Expect::Fact {
            text: d2.text.clone(),
            old: Some((d1.text.clone(), old_id.clone())),
            new_id: Some(new_id.clone()),
        },
    ));
    let mut visible: Vec<&Fact> = world.visible_facts.iter().collect();
    rng.shuffle(&mut visible);
    for f in visible.into_iter().take(cfg.distractor_questions) {
        out.push(mk(
            &f.question,
            Expect::Fact {
                text: f.text.clone(),
                old: None,
                new_id: None,
            },
        ));
    }
    for q in NO_ANSWER {
        out.push(mk(q, Expect::Abstain));
    }
    for f in world.hidden_facts.iter().chain(&other.hidden_facts) {
        out.push(mk(&f.question, Expect::Probe));
    }
    for f in other.visible_facts.iter().take(3) {
        out.push(mk(&f.question, Expect::Probe));
    }
    out
}

/// Builds two tenants' worlds in `models` (a fresh store: `memory:` is meant) and runs every
/// case at every budget and model of `cfg`.
///
/// # Errors
/// [`ContextError`] from building the world or from a run that should have succeeded.
pub async fn run(models: &Models, cfg: &EvalConfig) -> Result<EvalReport, ContextError> {
    if cfg.distractors > MAX_DISTRACTORS {
        return Err(ContextError::Invalid {
            field: "distractors",
            message: format!("at most {MAX_DISTRACTORS}"),
        });
    }
    let a = build_world(models, "tenant-a", cfg, cfg.seed).await?;
    let b = build_world(models, "tenant-b", cfg, cfg.seed.wrapping_add(1)).await?;
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ 0xca5e);
    let now = EPOCH + 60 * DAY;

    let mut r = EvalReport {
        runs: 0,
        recall_runs: 0,
        recall_hits: 0,
        recall: 0.0,
        recall_by_budget: cfg.budgets.iter().map(|b| (*b, 0, 0)).collect(),
        supersession_runs: 0,
        supersession_correct: 0,
        supersession_marked: 0,
        abstention_runs: 0,
        abstention_correct: 0,
        abstention_accuracy: 0.0,
        false_abstentions: 0,
        missed_abstentions: 0,
        max_budget_ratio: 0.0,
        budget_violations: 0,
        leakage: 0,
        leakage_probes: 0,
    };

    // Requests that must be refused: another tenant's session, another user's private one.
    let refused = [
        (a.tenant, a.requester, b.requester_session),
        (b.tenant, b.requester, a.requester_session),
        (a.tenant, b.requester, a.requester_session),
        (a.tenant, a.requester, a.hidden_sessions[0]),
    ];
    for (tenant, user, session) in refused {
        r.leakage_probes += 1;
        let req = ContextRequest {
            tenant,
            user_id: user,
            session_id: session,
            question: a.lesson.question.clone(),
            token_budget: 1024,
            model: "gpt-4o".to_owned(),
        };
        if !matches!(
            build_context(models, &req, now).await,
            Err(ContextError::NotFound { .. })
        ) {
            r.leakage += 1;
        }
    }

    // What must never show up in tenant A's results.
    let mut forbidden: Vec<String> = a
        .hidden_facts
        .iter()
        .chain(&b.hidden_facts)
        .chain(&b.visible_facts)
        .map(|f| f.text.clone())
        .collect();
    forbidden.extend(a.hidden_sessions.iter().map(ToString::to_string));
    forbidden.extend(b.all_session_ids.iter().map(ToString::to_string));
    forbidden.push(b.tenant.to_string());
    forbidden.push("(ref tenant-b)".to_owned());
    let forbidden: HashSet<String> = forbidden.into_iter().collect();

    for case in cases(&a, &b, cfg, &mut rng) {
        for (bi, &budget) in cfg.budgets.iter().enumerate() {
            for model in &cfg.models {
                let req = ContextRequest {
                    tenant: case.tenant,
                    user_id: case.user,
                    session_id: case.session,
                    question: case.question.clone(),
                    token_budget: budget,
                    model: model.clone(),
                };
                let res = build_context(models, &req, now).await?;
                r.runs += 1;
                let ratio = f64::from(res.tokens_used) / f64::from(budget);
                r.max_budget_ratio = r.max_budget_ratio.max(ratio);
                let recount = TokenCounter::for_model(model)?.count(&res.context);
                if recount != u64::from(res.tokens_used) || recount > u64::from(budget) {
                    r.budget_violations += 1;
                }
                let json = serde_json::to_string(&res).unwrap_or_default();
                r.leakage_probes += 1;
                if forbidden.iter().any(|f| json.contains(f.as_str())) {
                    r.leakage += 1;
                }
                match &case.expect {
                    Expect::Fact { text, old, new_id } => {
                        r.abstention_runs += 1;
                        if res.abstained {
                            r.false_abstentions += 1;
                        } else {
                            r.abstention_correct += 1;
                        }
                        if budget >= RECALL_MIN_BUDGET {
                            r.recall_runs += 1;
                            if res.context.contains(text.as_str()) {
                                r.recall_hits += 1;
                            }
                        }
                        if let Some(slot) = r.recall_by_budget.get_mut(bi) {
                            slot.2 += 1;
                            if res.context.contains(text.as_str()) {
                                slot.1 += 1;
                            }
                        }
                        if let (Some((old_text, old_id)), Some(new_id), true) =
                            (old, new_id, budget >= RECALL_MIN_BUDGET)
                        {
                            r.supersession_runs += 1;
                            let marked = res.excluded.iter().any(|m| {
                                m.item_id == *old_id
                                    && m.reason == Reason::Superseded { by: new_id.clone() }
                            });
                            r.supersession_marked += u32::from(marked);
                            if marked
                                && res.context.contains(text.as_str())
                                && !res.context.contains(old_text.as_str())
                            {
                                r.supersession_correct += 1;
                            }
                        }
                    }
                    Expect::Abstain => {
                        r.abstention_runs += 1;
                        if res.abstained && res.context.is_empty() {
                            r.abstention_correct += 1;
                        } else {
                            r.missed_abstentions += 1;
                        }
                    }
                    Expect::Probe => {}
                }
            }
        }
    }
    r.recall = ratio(r.recall_hits, r.recall_runs);
    r.abstention_accuracy = ratio(r.abstention_correct, r.abstention_runs);
    Ok(r)
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        0.0
    } else {
        f64::from(a) / f64::from(b)
    }
}
