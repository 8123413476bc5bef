//! `steward dev`'s development tenant (created once, remembered in `<data dir>/dev.json`) and
//! `--demo`'s related sessions, so summaries and advice have something to work on at once.

use std::path::Path;

use serde::{Deserialize, Serialize};
use steward_models::{
    FileChange, MessageRole, Models, NewConversation, NewMessage, NewTenant, NewUser,
    NewWorkspaceSession, Plan, Role, TenantKind, Visibility,
};
use steward_queue::Queue;
use steward_workers::kinds::{SummarizeSessionArgs, SUMMARIZE_SESSION};
use uuid::Uuid;

use crate::Failure;

/// What `steward dev` remembers between starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DevIdentity {
    /// The development tenant.
    pub(crate) tenant: Uuid,
    /// Its owner.
    pub(crate) user: Uuid,
    /// The demo sessions, once loaded.
    #[serde(default)]
    pub(crate) demo_sessions: Vec<Uuid>,
}

const DEV_FILE: &str = "dev.json";
const DEV_EMAIL: &str = "dev@steward.local";

/// The development tenant and user: read from `dir/dev.json`, or created (with the tenant's
/// queue configuration from its plan) and written there.
///
/// # Errors
/// Store errors; a message if `dev.json` is unreadable.
pub(crate) async fn ensure_dev_tenant(
    models: &Models,
    queue: &Queue,
    dir: Option<&Path>,
) -> Result<DevIdentity, Failure> {
    if let Some(dir) = dir {
        let path = dir.join(DEV_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
            let id: DevIdentity = serde_json::from_str(&text)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
            if models.tenants().get(id.tenant).await?.is_some() {
                return Ok(id);
            }
        }
    }
    let tenant = models
        .tenants()
        .create(NewTenant::new(
            "Development",
            TenantKind::Organization,
            Plan::Pro,
        ))
        .await?;
    queue
        .set_tenant_config(
            tenant.id,
            &steward_workers::tenancy::queue_config(&tenant.limits),
        )
        .await?;
    let user = models
        .users()
        .create(
            tenant.id,
            NewUser::new(DEV_EMAIL, [Role::Owner, Role::Admin]).display_name("Developer"),
        )
        .await?;
    let id = DevIdentity {
        tenant: tenant.id,
        user: user.id,
        demo_sessions: Vec::new(),
    };
    save(dir, &id)?;
    Ok(id)
}

fn save(dir: Option<&Path>, id: &DevIdentity) -> Result<(), Failure> {
    if let Some(dir) = dir {
        let path = dir.join(DEV_FILE);
        let text = serde_json::to_string_pretty(id)
            .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
        // All or nothing: a crash leaves the old file or the new one, never half of one.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// One demo session: name, parent (index into the list), visibility, and its conversation.
struct DemoSession {
    name: &'static str,
    parent: Option<usize>,
    messages: &'static [(MessageRole, &'static str)],
    files: &'static [&'static str],
}

const WORKSPACE: &str = "/home/dev/payments-service";

const DEMO: &[DemoSession] = &[
    DemoSession {
        name: "Set up the payments service",
        parent: None,
        messages: &[
            (MessageRole::User, "We need a ledger for the payments service. Which database should we use?"),
            (MessageRole::Assistant, "Decision: use PostgreSQL for the ledger, with SERIALIZABLE transactions for balance updates. I created migrations/001_ledger.sql."),
            (MessageRole::User, "Add retries to the Stripe webhook handler."),
            (MessageRole::Assistant, "Changed src/webhooks.rs: webhook deliveries are retried 5 times with exponential backoff. TODO: make the handler idempotent on the event id."),
        ],
        files: &["migrations/001_ledger.sql", "src/webhooks.rs"],
    },
    DemoSession {
        name: "Try SQLite for local development",
        parent: Some(0),
        messages: &[
            (MessageRole::User, "PostgreSQL is heavy for local development. Can we use SQLite locally?"),
            (MessageRole::Assistant, "Decision reversed for local development: use SQLite instead of PostgreSQL when STEWARD_ENV=dev; production keeps PostgreSQL. Changed src/db.rs."),
            (MessageRole::User, "cargo test fails with 'database is locked'."),
            (MessageRole::Assistant, "Fixed: enabled WAL mode and a busy timeout of 5 s in src/db.rs; the tests pass now."),
        ],
        files: &["src/db.rs"],
    },
    DemoSession {
        name: "Fix flaky webhook tests",
        parent: None,
        messages: &[
            (MessageRole::User, "The webhook integration tests time out about one run in ten."),
            (MessageRole::Assistant, "The fake Stripe server answered after the 5 s client timeout. Raised the webhook client timeout to 30 s in src/webhooks.rs and made retries idempotent with the event id as idempotency key."),
            (MessageRole::User, "Great. What is left?"),
            (MessageRole::Assistant, "Next step: add a dead-letter table for webhook events that fail 5 times."),
        ],
        files: &["src/webhooks.rs", "tests/webhooks.rs"],
    },
];

/// Loads the demo sessions into the development tenant (once) and enqueues a summary of each.
///
/// # Errors
/// Store errors.
pub(crate) async fn load_demo(
    models: &Models,
    queue: &Queue,
    dir: Option<&Path>,
    id: &mut DevIdentity,
) -> Result<(), Failure> {
    if !id.demo_sessions.is_empty() {
        return Ok(());
    }
    let (tenant, user) = (id.tenant, id.user);
    let mut created: Vec<Uuid> = Vec::new();
    for demo in DEMO {
        let session_id = models.new_id();
        let conversation = models
            .conversations()
            .create(
                tenant,
                NewConversation {
                    id: None,
                    title: demo.name.to_string(),
                    created_by: Some(user),
                    session_id: Some(session_id),
                },
            )
            .await?;
        let session = match demo.parent {
            Some(p) => {
                let forked = models
                    .workspace_sessions()
                    .fork(tenant, created[p], user, demo.name)
                    .await?;
                models
                    .workspace_sessions()
                    .update(tenant, forked.id, |s| {
                        s.conversation_id = Some(conversation.id);
                        s.visibility = Visibility::Shared;
                        Ok(())
                    })
                    .await?
            }
            None => {
                models
                    .workspace_sessions()
                    .create(
                        tenant,
                        NewWorkspaceSession {
                            id: Some(session_id),
                            name: demo.name.to_string(),
                            owner_id: user,
                            workspace: WORKSPACE.to_string(),
                            visibility: Visibility::Shared,
                            conversation_id: Some(conversation.id),
                        },
                    )
                    .await?
            }
        };
        let messages = demo
            .messages
            .iter()
            .map(|(role, text)| {
                let mut m = NewMessage::text(*role, *text);
                if *role == MessageRole::User {
                    m.author_id = Some(user);
                }
                m
            })
            .collect();
        models
            .conversations()
            .append_batch(tenant, conversation.id, messages)
            .await?;
        for path in demo.files {
            models
                .files()
                .record_change(
                    tenant,
                    FileChange {
                        workspace: WORKSPACE.to_string(),
                        path: (*path).to_string(),
                        size: 1024,
                        content_hash: format!("demo-{}", path.len()),
                        session_id: Some(session.id),
                        user_id: Some(user),
                    },
                )
                .await?;
        }
        created.push(session.id);
    }
    for session in &created {
        let args = serde_json::to_value(SummarizeSessionArgs {
            session_id: *session,
        })
        .map_err(|e| Failure::Runtime(e.to_string()))?;
        queue
            .enqueue(
                tenant,
                steward_workers::kinds::new_job(SUMMARIZE_SESSION, args)
                    .session(*session)
                    .idempotency_key(format!("demo-summary:{session}")),
            )
            .await?;
    }
    id.demo_sessions = created;
    save(dir, id)?;
    Ok(())
}
