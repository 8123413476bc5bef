//! Which sessions a request reads, and what candidate items each yields.
//!
//! Every read goes through a `steward-models` repository with the request's tenant, so another
//! tenant's ids are simply not found. A session enters the scope only if
//! [`WorkspaceSession::visible_to`] the requesting user (their own, or shared); ancestors that
//! are not are walked through (their own parents may be visible) but yield nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use steward_models::{MemoryKind, Models, WorkspaceSession};
use uuid::Uuid;

use super::score::relation_weight;
use super::{ContextError, ContextRequest, ItemKind, Relation};

/// How far up the parent chain the walk goes.
pub const MAX_ANCESTOR_DEPTH: u8 = 16;
/// Most sessions of `related` read.
pub const MAX_LINKED: usize = 100;
/// Most sessions read from one listing (forks, workspace, user), in pages of 1000.
pub const MAX_SCAN_PER_SOURCE: usize = 2000;
/// Most sessions kept in scope: the closest relations first, then the most recently active.
pub const MAX_SCOPE_SESSIONS: usize = 300;
/// Most file records read per workspace to learn which session changed what.
const MAX_FILES_SCANNED: usize = 5000;
const PAGE: usize = 1000;

/// One piece of advice a session offers: the unit that is scored, cited and included whole.
///
/// [`session_candidates`] makes them from a session's structured summary (its memory items:
/// decisions, changes, todos, lessons, each citing message positions; plus intent, current
/// state and next step) or, for a plain summary, its paragraphs; its agent memory entries; and
/// the files it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Stable and unique within the request (e.g. `<session>/memory/<key>`).
    pub item_id: String,
    /// The session it comes from.
    pub session_id: Uuid,
    /// What it is.
    pub kind: ItemKind,
    /// The text put in the block.
    pub text: String,
    /// Workspace-relative paths it is about (for file overlap).
    pub files: Vec<String>,
    /// The messages it cites, as its source records them: message ids (UUIDs) or message
    /// positions (24 hex digits, what summaries cite).
    pub messages: Vec<String>,
    /// µs since the epoch: when it was written (later replaces earlier on the same key).
    pub created_at: i64,
    /// The topic it decides: among items with the same key (compared trimmed, lowercase), the
    /// newest wins and the others are superseded.
    pub supersedes_key: Option<String>,
    /// Item ids this one explicitly replaces.
    pub supersedes: Vec<String>,
}

/// The sessions a request may draw on, with their relation, and what they say about files.
#[derive(Debug)]
pub(crate) struct Scope {
    /// Visible sessions in scope (the requesting one first).
    pub(crate) sessions: Vec<(WorkspaceSession, Relation)>,
    /// Sessions met and skipped because the user may not read them.
    pub(crate) not_visible: u32,
    /// Paths the requesting session has open, in context, in tabs, or changed.
    pub(crate) requester_files: HashSet<String>,
    /// Candidates of all sessions in scope.
    pub(crate) candidates: Vec<(Candidate, Relation)>,
}

/// Reads the scope of `req` (already validated).
pub(crate) async fn gather(models: &Models, req: &ContextRequest) -> Result<Scope, ContextError> {
    let tenant = req.tenant;
    let user = models
        .users()
        .get(tenant, req.user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or(ContextError::NotFound {
            what: "user",
            id: req.user_id,
        })?;
    let ws = models.workspace_sessions();
    let me = ws
        .get(tenant, req.session_id)
        .await?
        .filter(|s| s.visible_to(user.id))
        .ok_or(ContextError::NotFound {
            what: "workspace session",
            id: req.session_id,
        })?;

    // id -> (session, best relation); BTreeMap so iteration order is deterministic.
    let mut found: BTreeMap<Uuid, (WorkspaceSession, Relation)> = BTreeMap::new();
    let mut hidden: HashSet<Uuid> = HashSet::new();
    let mut offer = |s: WorkspaceSession, rel: Relation| {
        if !s.visible_to(user.id) {
            hidden.insert(s.id);
            return;
        }
        match found.get_mut(&s.id) {
            Some(entry) => {
                if relation_weight(rel) > relation_weight(entry.1) {
                    entry.1 = rel;
                }
            }
            None => {
                found.insert(s.id, (s, rel));
            }
        }
    };
    offer(me.clone(), Relation::Current);

    // Parent and ancestors: bounded, cycle-safe (a corrupt chain that loops stops).
    let mut seen = HashSet::from([me.id]);
    let mut next = me.parent_id;
    let mut depth: u8 = 1;
    while let Some(id) = next {
        if depth > MAX_ANCESTOR_DEPTH || !seen.insert(id) {
            break;
        }
        let Some(s) = ws.get(tenant, id).await? else {
            break; // deleted: its forks keep the id, the chain ends here
        };
        next = s.parent_id;
        let rel = if depth == 1 {
            Relation::Parent
        } else {
            Relation::Ancestor { depth }
        };
        offer(s, rel);
        depth += 1;
    }

    if let Some(parent) = me.parent_id {
        for s in list_forks(models, tenant, parent).await? {
            if s.id != me.id {
                offer(s, Relation::SiblingFork);
            }
        }
    }
    for s in list_forks(models, tenant, me.id).await? {
        offer(s, Relation::ChildFork);
    }
    for id in me.related.iter().take(MAX_LINKED) {
        if let Some(s) = ws.get(tenant, *id).await? {
            offer(s, Relation::Linked);
        }
    }
    let mut after = None;
    let mut scanned = 0;
    while scanned < MAX_SCAN_PER_SOURCE {
        let page = ws
            .list_by_workspace(tenant, &me.workspace, user.id, after, PAGE)
            .await?;
        scanned += PAGE;
        for s in page.items {
            offer(s, Relation::SameWorkspace);
        }
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    let mut after = None;
    let mut scanned = 0;
    while scanned < MAX_SCAN_PER_SOURCE {
        let page = ws.list_by_user(tenant, user.id, after, PAGE).await?;
        scanned += PAGE;
        for s in page.items {
            offer(s, Relation::SameUser);
        }
        after = page.next;
        if after.is_none() {
            break;
        }
    }

    // Keep the closest relations, then the most recently active; the requesting one first.
    let mut sessions: Vec<(WorkspaceSession, Relation)> = found.into_values().collect();
    sessions.sort_by(|(a, ra), (b, rb)| {
        let key = |r: &Relation| u8::from(*r != Relation::Current);
        key(ra)
            .cmp(&key(rb))
            .then(relation_weight(*rb).total_cmp(&relation_weight(*ra)))
            .then(b.last_activity_at.cmp(&a.last_activity_at))
            .then(a.id.cmp(&b.id))
    });
    sessions.truncate(MAX_SCOPE_SESSIONS);

    let changed = changed_files(models, tenant, &sessions).await?;
    let mut requester_files: HashSet<String> = me
        .open_files
        .iter()
        .chain(&me.context_files)
        .chain(me.editor.tabs.iter().map(|t| &t.path))
        .chain(me.editor.cursors.iter().map(|c| &c.path))
        .cloned()
        .collect();
    if let Some(files) = changed.get(&me.id) {
        requester_files.extend(files.iter().cloned());
    }

    let mut candidates = Vec::new();
    for (s, rel) in &sessions {
        let files = changed.get(&s.id).map_or(&[][..], Vec::as_slice);
        for c in session_candidates(s, files) {
            candidates.push((c, *rel));
        }
    }
    Ok(Scope {
        not_visible: u32::try_from(hidden.len()).unwrap_or(u32::MAX),
        sessions,
        requester_files,
        candidates,
    })
}

async fn list_forks(
    models: &Models,
    tenant: Uuid,
    parent: Uuid,
) -> Result<Vec<WorkspaceSession>, ContextError> {
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < MAX_SCAN_PER_SOURCE {
        let page = models
            .workspace_sessions()
            .list_forks(tenant, parent, after, PAGE)
            .await?;
        out.extend(page.items);
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    Ok(out)
}

/// For each session in scope, the paths of its workspace's files it was the last to change.
async fn changed_files(
    models: &Models,
    tenant: Uuid,
    sessions: &[(WorkspaceSession, Relation)],
) -> Result<HashMap<Uuid, Vec<String>>, ContextError> {
    let ids: HashSet<Uuid> = sessions.iter().map(|(s, _)| s.id).collect();
    let workspaces: std::collections::BTreeSet<&str> =
        sessions.iter().map(|(s, _)| s.workspace.as_str()).collect();
    let mut out: HashMap<Uuid, Vec<String>> = HashMap::new();
    for w in workspaces {
        let mut after: Option<String> = None;
        let mut scanned = 0;
        while scanned < MAX_FILES_SCANNED {
            let page = models
                .files()
                .list(tenant, w, "", after.as_deref(), PAGE, false)
                .await?;
            scanned += PAGE;
            for f in page.items {
                if let Some(sid) = f.last_session_id.filter(|id| ids.contains(id)) {
                    out.entry(sid).or_default().push(f.path);
                }
            }
            after = page.next;
            if after.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

/// The kind an agent memory key announces: `decision:…`, `change:…`, `todo:…`, `lesson:…`
/// (also with `/` or `.` after the word); anything else is [`ItemKind::Memory`].
fn kind_from_key(key: &str) -> ItemKind {
    let lower = key.trim().to_ascii_lowercase();
    let word = lower
        .split([':', '/', '.'])
        .next()
        .filter(|w| w.len() < lower.len())
        .unwrap_or("");
    match word {
        "decision" | "decided" => ItemKind::Decision,
        "change" | "changed" => ItemKind::Change,
        "todo" => ItemKind::Todo,
        "lesson" | "learned" => ItemKind::Lesson,
        _ => ItemKind::Memory,
    }
}

/// The candidates one session offers:
///
/// - a structured summary (`summary_detail`, while its watermark equals `summary.through`):
///   its memory items as `<session>/item/<index>` (decision, change, todo, lesson; a change's
///   file joins its files) and its intent, current state and next step as
///   `<session>/summary/{intent,current-state,next-step}`, each citing its message positions;
/// - otherwise a plain summary, one item per paragraph (split on blank lines),
///   `<session>/summary/<n>`;
/// - each agent memory entry as `<session>/memory/<key>`, of the kind its key announces
///   (`decision:…` and so on), superseding by its key;
/// - `<session>/changes`: the files it was the last to change (`changed_files`).
///
/// Every item carries the session's open and context files plus the changed ones, for the
/// file-overlap score.
#[must_use]
pub fn session_candidates(session: &WorkspaceSession, changed_files: &[String]) -> Vec<Candidate> {
    let sid = session.id;
    let mut files: Vec<String> = session
        .open_files
        .iter()
        .chain(&session.context_files)
        .chain(changed_files)
        .cloned()
        .collect();
    files.sort();
    files.dedup();
    let mut out = Vec::new();

    // A structured summary (written by `summarize_session` together with `summary`, and
    // current while their watermarks agree) gives cited items; a plain one gives paragraphs.
    let detail = session
        .summary_detail
        .as_ref()
        .filter(|d| session.summary.as_ref().map(|s| s.through) == Some(d.through));
    if let Some(d) = detail {
        let created = session
            .summary
            .as_ref()
            .map_or(session.updated_at, |s| s.created_at);
        let st = &d.structured;
        let framing = [
            ("intent", "Intent", &st.intent),
            ("current-state", "Current state", &st.current_state),
            ("next-step", "Next step", &st.next_step),
        ];
        for (id, title, item) in framing {
            if let Some(i) = item {
                out.push(Candidate {
                    item_id: format!("{sid}/summary/{id}"),
                    session_id: sid,
                    kind: ItemKind::Summary,
                    text: format!("{title}: {}", i.text),
                    files: files.clone(),
                    messages: i.sources.iter().map(ToString::to_string).collect(),
                    created_at: created,
                    supersedes_key: None,
                    supersedes: Vec::new(),
                });
            }
        }
        // HOOK (structured summarizer): its memory items, one candidate each. Decisions carry
        // no key: a newer decision on the same topic supersedes by term overlap (budget.rs).
        for item in st.memory_items(sid, d.method, created) {
            let kind = match item.kind {
                MemoryKind::Decision => ItemKind::Decision,
                MemoryKind::Change => ItemKind::Change,
                MemoryKind::Todo => ItemKind::Todo,
                MemoryKind::Lesson => ItemKind::Lesson,
            };
            let text = match &item.file {
                Some(f) => format!("{f}: {}", item.text),
                None => item.text.clone(),
            };
            let mut item_files = files.clone();
            if let Some(f) = &item.file {
                if !item_files.contains(f) {
                    item_files.push(f.clone());
                }
            }
            out.push(Candidate {
                item_id: format!("{sid}/item/{}", item.index),
                session_id: sid,
                kind,
                text,
                files: item_files,
                messages: item.sources.iter().map(ToString::to_string).collect(),
                created_at: item.created_at,
                supersedes_key: None,
                supersedes: Vec::new(),
            });
        }
    } else if let Some(summary) = &session.summary {
        let paragraphs = summary
            .text
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty());
        for (n, p) in paragraphs.enumerate() {
            out.push(Candidate {
                item_id: format!("{sid}/summary/{}", n + 1),
                session_id: sid,
                kind: ItemKind::Summary,
                text: p.to_owned(),
                files: files.clone(),
                messages: Vec::new(),
                created_at: summary.created_at,
                supersedes_key: None,
                supersedes: Vec::new(),
            });
        }
    }
    // Other sources of candidates (e.g. a future per-session memory store read with
    // `memory_items_of`) push here the same way.

    for entry in &session.agent_memory {
        let key = entry.key.trim();
        let text = if key.is_empty() {
            entry.value.clone()
        } else {
            format!("{key}: {}", entry.value)
        };
        out.push(Candidate {
            item_id: format!("{sid}/memory/{key}"),
            session_id: sid,
            kind: kind_from_key(key),
            text,
            files: files.clone(),
            messages: Vec::new(),
            created_at: entry.updated_at,
            supersedes_key: (!key.is_empty()).then(|| key.to_owned()),
            supersedes: Vec::new(),
        });
    }

    if !changed_files.is_empty() {
        let mut changed = changed_files.to_vec();
        changed.sort();
        changed.dedup();
        out.push(Candidate {
            item_id: format!("{sid}/changes"),
            session_id: sid,
            kind: ItemKind::Change,
            text: format!(
                "Session \"{}\" last changed: {}",
                session.name,
                changed.join(", ")
            ),
            files: changed,
            messages: Vec::new(),
            created_at: session.updated_at,
            supersedes_key: None,
            supersedes: Vec::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_keys_announce_their_kind() {
        assert_eq!(kind_from_key("decision:db"), ItemKind::Decision);
        assert_eq!(kind_from_key("Lesson/flaky"), ItemKind::Lesson);
        assert_eq!(kind_from_key("todo.release"), ItemKind::Todo);
        assert_eq!(kind_from_key("decision"), ItemKind::Memory);
        assert_eq!(kind_from_key("style"), ItemKind::Memory);
    }
}
