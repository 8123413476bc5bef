//! [`WorkspaceSession`]: the persistent IDE session, stored in chunks (it holds lists that can
//! grow: open files, terminal commands, agent memory), with indexes by owner, by workspace, by
//! parent and by last activity, each maintained in the same transaction as the record.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use steward_store::{RangeOption, Transaction};
use uuid::Uuid;

use crate::codec::{check_len, decode, encode, join_chunks, write_chunks};
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
                let r = keys.ws_chunks(id);
                tx.clear_range(&r.begin, &r.end);
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
