//! [`WorkspaceSession`]: the persistent IDE session, stored in chunks (it holds lists that can
//! grow: open files, terminal commands, agent memory), with indexes by owner, by workspace, by
//! parent and by last activity, each maintained in the same transaction as the record.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use steward_store::{decode_counter, RangeOption, Transaction};
use uuid::Uuid;

use crate::codec::{check_len, decode, encode, join_chunks, write_chunks, MAX_INLINE_VALUE};
use crate::conversation::MessagePosition;
use crate::error::{Error, Result};
use crate::file::MAX_PATH_BYTES;
use crate::keys::TenantKeys;
use crate::tenant::require_tenant;
use crate::user::require_active_user;
use crate::{check_limit, Models, Page};

/// Largest encoded session, in bytes (stored as chunks of [`crate::CHUNK_BYTES`]); a bigger one
/// is refused, never cut.
pub const MAX_SESSION_BYTES: usize = 1024 * 1024;
/// Longest workspace path, in bytes (it is part of an index key).
pub const MAX_WORKSPACE_BYTES: usize = 1024;
/// Longest session name, in bytes.
pub const MAX_SESSION_NAME_BYTES: usize = 256;
/// Longest terminal command line, in bytes.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Longest summary text, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 64 * 1024;
/// Most related sessions.
pub const MAX_RELATED: usize = 1000;

/// Who can see a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Only its owner.
    #[default]
    Private,
    /// Everyone in the tenant who can see the workspace.
    Shared,
}

/// One editor tab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditorTab {
    /// Workspace-relative path.
    pub path: String,
    /// Pinned tabs stay open.
    #[serde(default)]
    pub pinned: bool,
}

/// One cursor (and selection) in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Workspace-relative path.
    pub path: String,
    /// 0-based line.
    pub line: u32,
    /// 0-based column (UTF-16 code units, as editors count).
    pub column: u32,
    /// The other end of a selection (line, column).
    #[serde(default)]
    pub selection_end: Option<(u32, u32)>,
}

/// Tabs and cursors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EditorState {
    /// Open tabs in order.
    #[serde(default)]
    pub tabs: Vec<EditorTab>,
    /// Index of the active tab.
    #[serde(default)]
    pub active_tab: Option<u32>,
    /// Cursors.
    #[serde(default)]
    pub cursors: Vec<Cursor>,
}

/// One command run in the session's terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalCommand {
    /// The command line.
    pub command: String,
    /// Working directory.
    #[serde(default)]
    pub cwd: String,
    /// Exit code, once finished.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// µs since the epoch.
    pub started_at: i64,
    /// µs since the epoch.
    #[serde(default)]
    pub finished_at: Option<i64>,
}

/// The terminal's history (commands and exit codes; output is not kept here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TerminalState {
    /// Commands, oldest first.
    #[serde(default)]
    pub commands: Vec<TerminalCommand>,
}

/// One entry of the agent's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMemoryEntry {
    /// What it is about.
    pub key: String,
    /// What the agent remembers.
    pub value: String,
    /// µs since the epoch.
    pub updated_at: i64,
}

/// The latest summary of a session's conversation and the watermark it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The summary.
    pub text: String,
    /// The last message it covers (`None`: none yet).
    pub through: Option<MessagePosition>,
    /// Messages covered.
    pub message_count: u64,
    /// µs since the epoch.
    pub created_at: i64,
}

/// Most items in one list of a [`StructuredSummary`] (decisions, changes, ...).
pub const MAX_SUMMARY_ITEMS: usize = 64;
/// Longest text of one summary item (and of a change's file path: [`MAX_PATH_BYTES`]), in bytes.
pub const MAX_SUMMARY_ITEM_BYTES: usize = 2048;
/// Most message positions one summary item cites.
pub const MAX_ITEM_SOURCES: usize = 32;
/// Most sessions one [`WorkspaceSessions::memory_items_of`] call reads.
pub const MAX_MEMORY_SESSIONS: usize = 100;
/// Shards of each LLM token counter (summed on read).
const USAGE_SHARDS: u32 = 16;

/// How a summary was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SummaryMethod {
    /// By an LLM from the (redacted) conversation.
    Llm,
    /// Deterministically from the records (user requests, files changed, failed commands), when
    /// no LLM is configured, the tenant may not use one, or it failed.
    #[default]
    Extractive,
}

/// One statement of a summary and the messages it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryItem {
    /// The statement.
    pub text: String,
    /// The messages it cites (at most [`MAX_ITEM_SOURCES`]).
    #[serde(default)]
    pub sources: Vec<MessagePosition>,
}

/// A change to a file and the messages it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChangeItem {
    /// Workspace-relative path.
    pub file: String,
    /// What changed.
    pub what: String,
    /// The messages it cites.
    #[serde(default)]
    pub sources: Vec<MessagePosition>,
}

/// The structured part of a session summary: each item cites its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StructuredSummary {
    /// What the user is trying to achieve.
    #[serde(default)]
    pub intent: Option<SummaryItem>,
    /// Decisions taken.
    #[serde(default)]
    pub decisions: Vec<SummaryItem>,
    /// Files changed and how.
    #[serde(default)]
    pub changes: Vec<FileChangeItem>,
    /// Errors met and fixed (stored as lessons in memory).
    #[serde(default)]
    pub errors_fixed: Vec<SummaryItem>,
    /// What is still to do.
    #[serde(default)]
    pub open_todos: Vec<SummaryItem>,
    /// Where the work stands.
    #[serde(default)]
    pub current_state: Option<SummaryItem>,
    /// The next step.
    #[serde(default)]
    pub next_step: Option<SummaryItem>,
}

fn check_item(field: &'static str, text: &str, sources: &[MessagePosition]) -> Result<()> {
    check_len(field, text, MAX_SUMMARY_ITEM_BYTES, true)?;
    if sources.len() > MAX_ITEM_SOURCES {
        return Err(Error::invalid(
            field,
            format!("cites at most {MAX_ITEM_SOURCES} messages"),
        ));
    }
    Ok(())
}

impl StructuredSummary {
    /// Checks sizes: at most [`MAX_SUMMARY_ITEMS`] per list, item texts non-empty and at most
    /// [`MAX_SUMMARY_ITEM_BYTES`], paths at most [`MAX_PATH_BYTES`], at most
    /// [`MAX_ITEM_SOURCES`] citations per item.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the list (`summary.decisions`, ...).
    pub fn validate(&self) -> Result<()> {
        let singles = [
            ("summary.intent", &self.intent),
            ("summary.current_state", &self.current_state),
            ("summary.next_step", &self.next_step),
        ];
        for (field, item) in singles {
            if let Some(i) = item {
                check_item(field, &i.text, &i.sources)?;
            }
        }
        let lists = [
            ("summary.decisions", &self.decisions),
            ("summary.errors_fixed", &self.errors_fixed),
            ("summary.open_todos", &self.open_todos),
        ];
        for (field, list) in lists {
            if list.len() > MAX_SUMMARY_ITEMS {
                return Err(Error::invalid(
                    field,
                    format!("at most {MAX_SUMMARY_ITEMS} items"),
                ));
            }
            for i in list {
                check_item(field, &i.text, &i.sources)?;
            }
        }
        if self.changes.len() > MAX_SUMMARY_ITEMS {
            return Err(Error::invalid(
                "summary.changes",
                format!("at most {MAX_SUMMARY_ITEMS} items"),
            ));
        }
        for c in &self.changes {
            check_len("summary.changes", &c.file, MAX_PATH_BYTES, true)?;
            check_item("summary.changes", &c.what, &c.sources)?;
        }
        Ok(())
    }

    /// The memory items this summary yields for `session`: its decisions, changes, open todos
    /// and fixed errors (as lessons), numbered in that order.
    #[must_use]
    pub fn memory_items(
        &self,
        session: Uuid,
        method: SummaryMethod,
        created_at: i64,
    ) -> Vec<MemoryItem> {
        let mut out = Vec::new();
        let mut push = |kind, text: &str, file: Option<&str>, sources: &[MessagePosition]| {
            out.push(MemoryItem {
                session_id: session,
                index: u32::try_from(out.len()).unwrap_or(u32::MAX),
                kind,
                text: text.to_owned(),
                file: file.map(str::to_owned),
                sources: sources.to_vec(),
                method,
                created_at,
            });
        };
        for d in &self.decisions {
            push(MemoryKind::Decision, &d.text, None, &d.sources);
        }
        for c in &self.changes {
            push(MemoryKind::Change, &c.what, Some(&c.file), &c.sources);
        }
        for t in &self.open_todos {
            push(MemoryKind::Todo, &t.text, None, &t.sources);
        }
        for e in &self.errors_fixed {
            push(MemoryKind::Lesson, &e.text, None, &e.sources);
        }
        out
    }
}

/// What a summary run knows beyond [`SessionSummary`]: the structured summary, how it was
/// made, and what it covered. Written together with `summary` by
/// [`WorkspaceSessions::put_summary`]; it belongs to that summary while `through` equals
/// `summary.through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDetail {
    /// The watermark (a copy of `SessionSummary::through`).
    pub through: Option<MessagePosition>,
    /// The structured summary.
    pub structured: StructuredSummary,
    /// LLM or extractive.
    pub method: SummaryMethod,
    /// The LLM provider (`openai`, `anthropic`), for LLM summaries.
    #[serde(default)]
    pub provider: Option<String>,
    /// The model, for LLM summaries.
    #[serde(default)]
    pub model: Option<String>,
    /// A hash of the input this summary was made from (to skip an unchanged input).
    #[serde(default)]
    pub input_hash: String,
    /// `started_at` of the last terminal command covered.
    #[serde(default)]
    pub terminal_through: Option<i64>,
    /// LLM input tokens spent on this run.
    #[serde(default)]
    pub input_tokens: u64,
    /// LLM output tokens spent on this run.
    #[serde(default)]
    pub output_tokens: u64,
}

/// What kind of memory item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// A decision taken.
    Decision,
    /// A change to a file.
    Change,
    /// Something still to do.
    Todo,
    /// An error met and how it was fixed.
    Lesson,
}

/// One item of a session's memory, distilled from its latest summary; what the cross-session
/// context builder reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryItem {
    /// The session it comes from.
    pub session_id: Uuid,
    /// Its number within the session (0-based, in the summary's order).
    pub index: u32,
    /// Decision, change, todo or lesson.
    pub kind: MemoryKind,
    /// The statement (for a change: what changed).
    pub text: String,
    /// The file, for a change.
    #[serde(default)]
    pub file: Option<String>,
    /// The messages it cites.
    #[serde(default)]
    pub sources: Vec<MessagePosition>,
    /// How the summary it comes from was made.
    pub method: SummaryMethod,
    /// When that summary was made (µs).
    pub created_at: i64,
}

/// What [`WorkspaceSessions::put_summary`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SummaryWrite {
    /// The summary, its detail and memory items were written (or had been, by this call's
    /// earlier attempt).
    Written(WorkspaceSession),
    /// Nothing written: the stored summary already covers later messages.
    Superseded(WorkspaceSession),
}

/// Tokens a tenant spent on one LLM provider (summed over the counter's shards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmUsage {
    /// `openai`, `anthropic`, ...
    pub provider: String,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
}

/// A persistent IDE session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSession {
    /// UUIDv7.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The owning user.
    pub owner_id: Uuid,
    /// The workspace path (the root the IDE opened).
    pub workspace: String,
    /// Private or shared.
    pub visibility: Visibility,
    /// Open files (workspace-relative paths).
    #[serde(default)]
    pub open_files: Vec<String>,
    /// Tabs and cursors.
    #[serde(default)]
    pub editor: EditorState,
    /// Terminal history.
    #[serde(default)]
    pub terminal: TerminalState,
    /// Files the agent keeps in context.
    #[serde(default)]
    pub context_files: Vec<String>,
    /// The agent's memory.
    #[serde(default)]
    pub agent_memory: Vec<AgentMemoryEntry>,
    /// The session's conversation.
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
    /// The session this one was forked from.
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// Other related sessions.
    #[serde(default)]
    pub related: Vec<Uuid>,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch.
    pub updated_at: i64,
    /// µs since the epoch; indexed.
    pub last_activity_at: i64,
    /// Latest summary.
    #[serde(default)]
    pub summary: Option<SessionSummary>,
    /// The latest summary's structured form and provenance (see [`SummaryDetail`]).
    #[serde(default)]
    pub summary_detail: Option<SummaryDetail>,
}

impl WorkspaceSession {
    /// Whether `user` may see it: its owner, or anyone if shared.
    #[must_use]
    pub fn visible_to(&self, user: Uuid) -> bool {
        self.owner_id == user || self.visibility == Visibility::Shared
    }

    fn validate(&self) -> Result<Vec<u8>> {
        check_len("name", &self.name, MAX_SESSION_NAME_BYTES, true)?;
        check_len("workspace", &self.workspace, MAX_WORKSPACE_BYTES, true)?;
        let paths = self
            .open_files
            .iter()
            .map(|p| ("open_files", p))
            .chain(self.context_files.iter().map(|p| ("context_files", p)))
            .chain(self.editor.tabs.iter().map(|t| ("editor.tabs", &t.path)))
            .chain(
                self.editor
                    .cursors
                    .iter()
                    .map(|c| ("editor.cursors", &c.path)),
            );
        for (field, p) in paths {
            check_len(field, p, MAX_PATH_BYTES, true)?;
        }
        for c in &self.terminal.commands {
            check_len("terminal.commands", &c.command, MAX_COMMAND_BYTES, false)?;
        }
        if self.related.len() > MAX_RELATED {
            return Err(Error::invalid(
                "related",
                format!("at most {MAX_RELATED} sessions"),
            ));
        }
        if let Some(s) = &self.summary {
            check_len("summary.text", &s.text, MAX_SUMMARY_BYTES, false)?;
        }
        if let Some(d) = &self.summary_detail {
            d.structured.validate()?;
            if let Some(m) = &d.model {
                check_len("summary.model", m, 256, false)?;
            }
            if let Some(p) = &d.provider {
                check_len("summary.provider", p, 64, false)?;
            }
            check_len("summary.input_hash", &d.input_hash, 256, false)?;
        }
        encode("workspace_session", self, MAX_SESSION_BYTES)
    }

    fn index_keys(&self, keys: &TenantKeys) -> Vec<Vec<u8>> {
        let mut out = vec![
            keys.ws_by_user(self.owner_id, self.id),
            keys.ws_by_workspace(&self.workspace, self.id),
            keys.ws_by_activity(self.last_activity_at, self.id),
        ];
        if let Some(p) = self.parent_id {
            out.push(keys.ws_by_parent(p, self.id));
        }
        out
    }
}

/// What [`WorkspaceSessions::create`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkspaceSession {
    /// A chosen id, or `None` for a new UUIDv7.
    pub id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// The owning user (must exist and be enabled).
    pub owner_id: Uuid,
    /// The workspace path.
    pub workspace: String,
    /// Private or shared.
    pub visibility: Visibility,
    /// The session's conversation, if it has one already.
    pub conversation_id: Option<Uuid>,
}

impl NewWorkspaceSession {
    /// A private session.
    #[must_use]
    pub fn new(name: impl Into<String>, owner_id: Uuid, workspace: impl Into<String>) -> Self {
        NewWorkspaceSession {
            id: None,
            name: name.into(),
            owner_id,
            workspace: workspace.into(),
            visibility: Visibility::Private,
            conversation_id: None,
        }
    }
}

/// The workspace sessions repository.
#[derive(Debug, Clone, Copy)]
pub struct WorkspaceSessions<'a> {
    m: &'a Models,
}

impl<'a> WorkspaceSessions<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        WorkspaceSessions { m }
    }

    /// Creates a session for an existing, enabled owner.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a field; [`Error::NotFound`] for the tenant or owner;
    /// [`Error::AlreadyExists`] for a chosen id in use; store errors.
    pub async fn create(&self, tenant: Uuid, new: NewWorkspaceSession) -> Result<WorkspaceSession> {
        let now = self.m.now();
        let session = WorkspaceSession {
            id: new.id.unwrap_or_else(|| self.m.new_id()),
            name: new.name.trim().to_owned(),
            owner_id: new.owner_id,
            workspace: new.workspace,
            visibility: new.visibility,
            open_files: Vec::new(),
            editor: EditorState::default(),
            terminal: TerminalState::default(),
            context_files: Vec::new(),
            agent_memory: Vec::new(),
            conversation_id: new.conversation_id,
            parent_id: None,
            related: Vec::new(),
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            summary: None,
            summary_detail: None,
        };
        self.insert(tenant, session).await
    }

    async fn insert(&self, tenant: Uuid, session: WorkspaceSession) -> Result<WorkspaceSession> {
        let bytes = session.validate()?;
        let keys = TenantKeys::new(tenant);
        let (keys, session, bytes) = (&keys, &session, &bytes);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                if let Some(existing) = read_session(&tx, keys, session.id).await? {
                    if maybe_committed.0 && existing == *session {
                        return Ok(existing);
                    }
                    return Err(Error::AlreadyExists {
                        what: "workspace session",
                        field: "id",
                    });
                }
                require_tenant(&tx, keys, tenant).await?;
                require_active_user(&tx, keys, session.owner_id).await?;
                if let Some(p) = session.parent_id {
                    if read_session(&tx, keys, p).await?.is_none() {
                        return Err(Error::not_found("workspace session", p));
                    }
                }
                write_session(&tx, keys, session, bytes, None);
                Ok(session.clone())
            })
            .await
    }

    /// The session, if it exists in this tenant.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<WorkspaceSession>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { read_session(&tx, keys, id).await })
            .await
    }

    /// Changes a session with `change` (run again on every retry, so it must only edit the
    /// record; never on top of its own committed result, so it need not be idempotent),
    /// validates it and writes it with its indexes. Bumps `updated_at` and
    /// `last_activity_at`; `id` and `created_at` cannot change.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`] naming a field (or `workspace_session` when
    /// the whole session would exceed [`MAX_SESSION_BYTES`]); store errors.
    pub async fn update(
        &self,
        tenant: Uuid,
        id: Uuid,
        change: impl Fn(&mut WorkspaceSession) -> Result<()>,
    ) -> Result<WorkspaceSession> {
        let keys = TenantKeys::new(tenant);
        let (keys, change) = (&keys, &change);
        let now = self.m.now();
        // The sessions earlier attempts wrote: after `commit_unknown_result` the retry must not
        // apply `change` a second time on top of its own committed result (a pushed terminal
        // command would land twice), so it answers the session it finds if it is one of them.
        let tried: Mutex<Vec<WorkspaceSession>> = Mutex::new(Vec::new());
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let old = read_session(&tx, keys, id)
                    .await?
                    .ok_or_else(|| Error::not_found("workspace session", id))?;
                if maybe_committed.0
                    && tried
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&old)
                {
                    return Ok(old);
                }
                let mut new = old.clone();
                change(&mut new)?;
                new.id = old.id;
                new.created_at = old.created_at;
                new.updated_at = now.max(old.updated_at);
                new.last_activity_at = now.max(old.last_activity_at);
                if new.owner_id != old.owner_id {
                    require_active_user(&tx, keys, new.owner_id).await?;
                }
                let bytes = new.validate()?;
                write_session(&tx, keys, &new, &bytes, Some(&old));
                tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(new.clone());
                Ok(new)
            })
            .await
    }

    /// Records activity now (moves the session in the activity index).
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub async fn touch(&self, tenant: Uuid, id: Uuid) -> Result<WorkspaceSession> {
        self.update(tenant, id, |_| Ok(())).await
    }

    /// Forks a session: a new private session of `owner` with the parent's editor, terminal,
    /// context, memory and summary, `parent_id` set, and no conversation of its own yet.
    ///
    /// # Errors
    /// [`Error::NotFound`] for the parent or owner; [`Error::Invalid`]; store errors.
    pub async fn fork(
        &self,
        tenant: Uuid,
        parent: Uuid,
        owner: Uuid,
        name: &str,
    ) -> Result<WorkspaceSession> {
        let Some(p) = self.get(tenant, parent).await? else {
            return Err(Error::not_found("workspace session", parent));
        };
        let now = self.m.now();
        let session = WorkspaceSession {
            id: self.m.new_id(),
            name: name.trim().to_owned(),
            owner_id: owner,
            visibility: Visibility::Private,
            conversation_id: None,
            parent_id: Some(parent),
            related: Vec::new(),
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            ..p
        };
        self.insert(tenant, session).await
    }

    /// Deletes a session and its index entries. Its forks keep their `parent_id`. Returns
    /// whether it existed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, tenant: Uuid, id: Uuid) -> Result<bool> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(old) = read_session(&tx, keys, id).await? else {
                    return Ok(false);
                };
                for r in [keys.ws_chunks(id), keys.memory_of(id)] {
                    tx.clear_range(&r.begin, &r.end);
                }
                for k in old.index_keys(keys) {
                    tx.clear(&k);
                }
                Ok(true)
            })
            .await
    }

    /// Sessions owned by `user`, in id order.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn list_by_user(
        &self,
        tenant: Uuid,
        user: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<WorkspaceSession>> {
        let keys = TenantKeys::new(tenant);
        let range = keys.ws_of_user(user);
        let after_key = after.map(|a| keys.ws_by_user(user, a));
        self.list_index(keys, range, after_key, limit, |_| true)
            .await
    }

    /// Sessions of a workspace that `viewer` may see (its own and shared ones), in id order.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn list_by_workspace(
        &self,
        tenant: Uuid,
        workspace: &str,
        viewer: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<WorkspaceSession>> {
        check_len("workspace", workspace, MAX_WORKSPACE_BYTES, true)?;
        let keys = TenantKeys::new(tenant);
        let range = keys.ws_of_workspace(workspace);
        let after_key = after.map(|a| keys.ws_by_workspace(workspace, a));
        self.list_index(keys, range, after_key, limit, move |s| s.visible_to(viewer))
            .await
    }

    /// Forks of `parent`, in id order.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn list_forks(
        &self,
        tenant: Uuid,
        parent: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<WorkspaceSession>> {
        let keys = TenantKeys::new(tenant);
        let range = keys.ws_of_parent(parent);
        let after_key = after.map(|a| keys.ws_by_parent(parent, a));
        self.list_index(keys, range, after_key, limit, |_| true)
            .await
    }

    /// Sessions by last activity, most recent first, before the cursor `(last_activity_at,
    /// id)` of the previous page.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn list_by_activity(
        &self,
        tenant: Uuid,
        before: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Page<WorkspaceSession, (i64, Uuid)>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let mut range = keys.ws_activity_all();
        if let Some((at, id)) = before {
            range.end = keys.ws_by_activity(at, id);
        }
        let range = range.reverse().limit(limit).snapshot();
        let (keys, range) = (&keys, &range);
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx.get_range(range).await?;
                let mut items = Vec::new();
                for kv in &page.kvs {
                    if let Some(id) = keys.parse_ws_index(&kv.key) {
                        if let Some(s) = read_session(&tx, keys, id).await? {
                            items.push(s);
                        }
                    }
                }
                let next = if page.more {
                    items.last().map(|s| (s.last_activity_at, s.id))
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }

    /// Ids of sessions with no activity since `older_than` (µs), least recent first: what a
    /// summarizing or archiving job picks up.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn inactive_since(
        &self,
        tenant: Uuid,
        older_than: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Uuid)>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let all = keys.ws_activity_all();
        let range = RangeOption::new(all.begin, keys.ws_by_activity(older_than, Uuid::nil()))
            .limit(limit)
            .snapshot();
        let (keys, range) = (&keys, &range);
        self.m
            .db()
            .transact(|tx, _| async move {
                Ok(tx
                    .get_range(range)
                    .await?
                    .kvs
                    .iter()
                    .filter_map(|kv| keys.parse_ws_activity(&kv.key))
                    .collect())
            })
            .await
    }

    /// Writes a summary run's result: `summary` and `detail` on the session and the memory
    /// items of `detail.structured` (replacing the session's previous items), plus the run's
    /// token usage for `detail.provider` (sharded counters), all in one transaction.
    /// `last_activity_at` does not move (summarizing is not activity). Refused as
    /// [`SummaryWrite::Superseded`] when the stored summary covers later messages than
    /// `summary.through`. Safe to retry after `commit_unknown_result`: an attempt that finds
    /// its own result stored answers it without writing (or counting tokens) again.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`] naming a field (`summary.through` when
    /// `detail.through` differs from it, `summary.decisions`, ...); store errors.
    pub async fn put_summary(
        &self,
        tenant: Uuid,
        id: Uuid,
        summary: SessionSummary,
        detail: SummaryDetail,
    ) -> Result<SummaryWrite> {
        if detail.through != summary.through {
            return Err(Error::invalid(
                "summary.through",
                "the detail's watermark must equal the summary's",
            ));
        }
        detail.structured.validate()?;
        let items = detail
            .structured
            .memory_items(id, detail.method, summary.created_at);
        let values = items
            .iter()
            .map(|i| encode("memory_item", i, MAX_INLINE_VALUE))
            .collect::<Result<Vec<_>>>()?;
        let keys = TenantKeys::new(tenant);
        let now = self.m.now();
        let (keys, summary, detail, values) = (&keys, &summary, &detail, &values);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let old = read_session(&tx, keys, id)
                    .await?
                    .ok_or_else(|| Error::not_found("workspace session", id))?;
                if maybe_committed.0
                    && old.summary.as_ref() == Some(summary)
                    && old.summary_detail.as_ref() == Some(detail)
                {
                    return Ok(SummaryWrite::Written(old));
                }
                if old.summary.as_ref().and_then(|s| s.through) > summary.through {
                    return Ok(SummaryWrite::Superseded(old));
                }
                let mut new = old.clone();
                new.summary = Some(summary.clone());
                new.summary_detail = Some(detail.clone());
                new.updated_at = now.max(old.updated_at);
                let bytes = new.validate()?;
                write_session(&tx, keys, &new, &bytes, Some(&old));
                let r = keys.memory_of(id);
                tx.clear_range(&r.begin, &r.end);
                for (i, v) in values.iter().enumerate() {
                    tx.set(
                        &keys.memory_item(id, u32::try_from(i).unwrap_or(u32::MAX)),
                        v,
                    );
                }
                if let Some(p) = &detail.provider {
                    let shard = u32::from(id.as_bytes()[15]) % USAGE_SHARDS;
                    for (dir, n) in [("in", detail.input_tokens), ("out", detail.output_tokens)] {
                        if n > 0 {
                            tx.add(
                                &keys.llm_usage(p, dir, shard),
                                i64::try_from(n).unwrap_or(i64::MAX),
                            );
                        }
                    }
                }
                Ok(SummaryWrite::Written(new))
            })
            .await
    }

    /// The memory items of a session's latest summary, in order (empty if it has none).
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn memory_items(&self, tenant: Uuid, session: Uuid) -> Result<Vec<MemoryItem>> {
        self.memory_items_of(tenant, &[session]).await
    }

    /// The memory items of several sessions (at most [`MAX_MEMORY_SESSIONS`]), session by
    /// session in the order given, each in its own order; one consistent read.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`sessions`) for too many sessions; [`Error::Corrupt`]; store errors.
    pub async fn memory_items_of(
        &self,
        tenant: Uuid,
        sessions: &[Uuid],
    ) -> Result<Vec<MemoryItem>> {
        if sessions.len() > MAX_MEMORY_SESSIONS {
            return Err(Error::invalid(
                "sessions",
                format!("at most {MAX_MEMORY_SESSIONS} per call"),
            ));
        }
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut out = Vec::new();
                for &s in sessions {
                    for kv in tx.get_range_all(&keys.memory_of(s).snapshot()).await? {
                        out.push(decode::<MemoryItem>(
                            || format!("memory item of session {s}"),
                            &kv.value,
                        )?);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Tokens the tenant's summaries spent, per LLM provider (sorted by provider).
    ///
    /// # Errors
    /// Store errors.
    pub async fn llm_usage(&self, tenant: Uuid) -> Result<Vec<LlmUsage>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut sums: std::collections::BTreeMap<String, LlmUsage> =
                    std::collections::BTreeMap::new();
                for kv in tx.get_range_all(&keys.llm_usage_all().snapshot()).await? {
                    let Some((provider, dir)) = keys.parse_llm_usage(&kv.key) else {
                        continue;
                    };
                    let n = u64::try_from(decode_counter(Some(&kv.value))).unwrap_or(0);
                    let e = sums.entry(provider.clone()).or_insert(LlmUsage {
                        provider,
                        input_tokens: 0,
                        output_tokens: 0,
                    });
                    if dir == "in" {
                        e.input_tokens = e.input_tokens.saturating_add(n);
                    } else {
                        e.output_tokens = e.output_tokens.saturating_add(n);
                    }
                }
                Ok(sums.into_values().collect())
            })
            .await
    }

    async fn list_index(
        &self,
        keys: TenantKeys,
        range: RangeOption,
        after_key: Option<Vec<u8>>,
        limit: usize,
        keep: impl Fn(&WorkspaceSession) -> bool,
    ) -> Result<Page<WorkspaceSession>> {
        let limit = check_limit(limit)?;
        let mut range = range.limit(limit).snapshot();
        if let Some(a) = after_key {
            range.begin = steward_store::key_after(&a);
        }
        let (keys, range, keep) = (&keys, &range, &keep);
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx.get_range(range).await?;
                let mut items = Vec::new();
                let mut last = None;
                for kv in &page.kvs {
                    let Some(id) = keys.parse_ws_index(&kv.key) else {
                        continue;
                    };
                    last = Some(id);
                    if let Some(s) = read_session(&tx, keys, id).await? {
                        if keep(&s) {
                            items.push(s);
                        }
                    }
                }
                Ok(Page {
                    items,
                    next: if page.more { last } else { None },
                })
            })
            .await
    }
}

async fn read_session(
    tx: &Transaction,
    keys: &TenantKeys,
    id: Uuid,
) -> Result<Option<WorkspaceSession>> {
    let kvs = tx.get_range_all(&keys.ws_chunks(id)).await?;
    if kvs.is_empty() {
        return Ok(None);
    }
    let what = || format!("workspace session {id}");
    let bytes = join_chunks(what, &kvs, |k| keys.parse_ws_chunk(k))?;
    decode(what, &bytes).map(Some)
}

fn write_session(
    tx: &Transaction,
    keys: &TenantKeys,
    session: &WorkspaceSession,
    bytes: &[u8],
    old: Option<&WorkspaceSession>,
) {
    let r = keys.ws_chunks(session.id);
    tx.clear_range(&r.begin, &r.end);
    write_chunks(tx, bytes, |i, n| keys.ws_chunk(session.id, i, n));
    let new_idx = session.index_keys(keys);
    if let Some(old) = old {
        for k in old.index_keys(keys) {
            if !new_idx.contains(&k) {
                tx.clear(&k);
            }
        }
    }
    for k in &new_idx {
        tx.set(k, b"");
    }
}
