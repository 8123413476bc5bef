//! [`File`]: metadata of a workspace file (path, size, content hash, the session that last
//! changed it) with its version history and a unique path index per workspace. Contents live
//! elsewhere (the workspace itself or a blob store); this is what jobs and the IDE query.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use steward_store::Transaction;
use uuid::Uuid;

use crate::codec::{check_len, decode, encode, MAX_INLINE_VALUE};
use crate::error::{Error, Result};
use crate::keys::TenantKeys;
use crate::tenant::require_tenant;
use crate::workspace::MAX_WORKSPACE_BYTES;
use crate::{check_limit, Models, Page};

/// Longest file path, in bytes (it is part of an index key; keys stay under 10,000 bytes).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest content hash string (e.g. `sha256:` and 64 hex digits), in bytes.
pub const MAX_CONTENT_HASH_BYTES: usize = 160;

/// What a version changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileChangeKind {
    /// First seen, or re-created after a deletion.
    Created,
    /// Content changed.
    Modified,
    /// Moved from another path.
    Renamed {
        /// The old path.
        from: String,
    },
    /// Deleted (the record stays, as a tombstone, with its history).
    Deleted,
}

/// One version of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// 1, 2, ...
    pub version: u64,
    /// What changed.
    pub change: FileChangeKind,
    /// Path at this version.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Content hash.
    pub content_hash: String,
    /// The session that made the change.
    pub session_id: Option<Uuid>,
    /// The user that made the change.
    pub user_id: Option<Uuid>,
    /// µs since the epoch.
    pub at: i64,
}

/// A file's current metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// UUIDv7 (stable across renames).
    pub id: Uuid,
    /// The workspace path.
    pub workspace: String,
    /// Workspace-relative path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Content hash, e.g. `sha256:<hex>`.
    pub content_hash: String,
    /// Current version.
    pub version: u64,
    /// Deleted (a tombstone).
    pub deleted: bool,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch.
    pub updated_at: i64,
    /// The session that last changed it.
    pub last_session_id: Option<Uuid>,
    /// The user that last changed it.
    pub last_user_id: Option<Uuid>,
}

/// A change seen in a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The workspace path.
    pub workspace: String,
    /// Workspace-relative path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Content hash.
    pub content_hash: String,
    /// The session that made it.
    pub session_id: Option<Uuid>,
    /// The user that made it.
    pub user_id: Option<Uuid>,
}

fn check_location(workspace: &str, path: &str) -> Result<()> {
    check_len("workspace", workspace, MAX_WORKSPACE_BYTES, true)?;
    check_len("path", path, MAX_PATH_BYTES, true)
}

fn check_hash(hash: &str) -> Result<()> {
    check_len("content_hash", hash, MAX_CONTENT_HASH_BYTES, true)?;
    if !hash.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid("content_hash", "printable ASCII only"));
    }
    Ok(())
}

/// The files repository.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    m: &'a Models,
}

impl<'a> Files<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        Files { m }
    }

    /// Records a file's content as seen now: creates it (version 1), adds a version if the
    /// size or hash changed (or it was deleted), or does nothing if it is unchanged (so a
    /// repeated report is harmless).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a field; [`Error::NotFound`] for the tenant; store errors.
    pub async fn record_change(&self, tenant: Uuid, change: FileChange) -> Result<File> {
        check_location(&change.workspace, &change.path)?;
        check_hash(&change.content_hash)?;
        let new_id = self.m.new_id();
        let now = self.m.now();
        let keys = TenantKeys::new(tenant);
        let (keys, change) = (&keys, &change);
        self.m
            .db()
            .transact(|tx, _| async move {
                let existing = match tx
                    .get(&keys.file_path(&change.workspace, &change.path), false)
                    .await?
                {
                    Some(id) => {
                        let id = Uuid::from_slice(&id)
                            .map_err(|e| Error::corrupt("file path index", e))?;
                        Some(require_file(&tx, keys, id).await?)
                    }
                    None => None,
                };
                let (mut file, kind) = match existing {
                    Some(f)
                        if !f.deleted
                            && f.size == change.size
                            && f.content_hash == change.content_hash =>
                    {
                        return Ok(f);
                    }
                    Some(f) => {
                        let kind = if f.deleted {
                            FileChangeKind::Created
                        } else {
                            FileChangeKind::Modified
                        };
                        (f, kind)
                    }
                    None => {
                        require_tenant(&tx, keys, tenant).await?;
                        let f = File {
                            id: new_id,
                            workspace: change.workspace.clone(),
                            path: change.path.clone(),
                            size: 0,
                            content_hash: String::new(),
                            version: 0,
                            deleted: false,
                            created_at: now,
                            updated_at: now,
                            last_session_id: None,
                            last_user_id: None,
                        };
                        tx.set(&keys.file_path(&f.workspace, &f.path), f.id.as_bytes());
                        (f, FileChangeKind::Created)
                    }
                };
                file.size = change.size;
                file.content_hash.clone_from(&change.content_hash);
                file.deleted = false;
                new_version(
                    &tx,
                    keys,
                    &mut file,
                    kind,
                    change.session_id,
                    change.user_id,
                    now,
                )?;
                Ok(file)
            })
            .await
    }

    /// Moves a file to a new path in its workspace (history kept: same id). The new path must
    /// be free, or hold a deleted file.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`]; [`Error::AlreadyExists`] (`path`); store errors.
    pub async fn rename(
        &self,
        tenant: Uuid,
        id: Uuid,
        new_path: &str,
        session_id: Option<Uuid>,
        user_id: Option<Uuid>,
    ) -> Result<File> {
        check_len("path", new_path, MAX_PATH_BYTES, true)?;
        let now = self.m.now();
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut file = require_file(&tx, keys, id).await?;
                if file.path == new_path {
                    return Ok(file);
                }
                if file.deleted {
                    return Err(Error::not_found("file", id));
                }
                let target = keys.file_path(&file.workspace, new_path);
                if let Some(other) = tx.get(&target, false).await? {
                    let other = Uuid::from_slice(&other)
                        .map_err(|e| Error::corrupt("file path index", e))?;
                    let other = require_file(&tx, keys, other).await?;
                    if !other.deleted {
                        return Err(Error::AlreadyExists {
                            what: "file",
                            field: "path",
                        });
                    }
                    // The tombstone at the target is purged: its path now belongs to this file.
                    purge_in(&tx, keys, &other);
                }
                tx.clear(&keys.file_path(&file.workspace, &file.path));
                tx.set(&target, id.as_bytes());
                let from = std::mem::replace(&mut file.path, new_path.to_owned());
                new_version(
                    &tx,
                    keys,
                    &mut file,
                    FileChangeKind::Renamed { from },
                    session_id,
                    user_id,
                    now,
                )?;
                Ok(file)
            })
            .await
    }

    /// Marks the file at a path deleted (a tombstone version; history and path index kept, so
    /// a re-creation continues the history). Returns `None` if there is no live file there.
    ///
    /// # Errors
    /// [`Error::Invalid`]; store errors.
    pub async fn delete(
        &self,
        tenant: Uuid,
        workspace: &str,
        path: &str,
        session_id: Option<Uuid>,
        user_id: Option<Uuid>,
    ) -> Result<Option<File>> {
        check_location(workspace, path)?;
        let now = self.m.now();
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        // The tombstone versions earlier attempts wrote (file id, version): after
        // `commit_unknown_result` the retry finds the file already deleted, and must tell its
        // own tombstone (answer: the deleted file) from one that was there before (`None`).
        let tried: Mutex<Vec<(Uuid, FileVersion)>> = Mutex::new(Vec::new());
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let Some(id) = tx.get(&keys.file_path(workspace, path), false).await? else {
                    return Ok(None);
                };
                let id = Uuid::from_slice(&id).map_err(|e| Error::corrupt("file path index", e))?;
                let mut file = require_file(&tx, keys, id).await?;
                if file.deleted {
                    if maybe_committed.0 {
                        let tried = tried.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        for (tried_id, v) in tried {
                            if tried_id == file.id
                                && v.version == file.version
                                && read_version(&tx, keys, file.id, v.version).await?.as_ref()
                                    == Some(&v)
                            {
                                return Ok(Some(file));
                            }
                        }
                    }
                    return Ok(None);
                }
                file.deleted = true;
                let v = new_version(
                    &tx,
                    keys,
                    &mut file,
                    FileChangeKind::Deleted,
                    session_id,
                    user_id,
                    now,
                )?;
                tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((file.id, v));
                Ok(Some(file))
            })
            .await
    }

    /// Removes a file entirely: record, history and path index. Returns whether it existed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn purge(&self, tenant: Uuid, id: Uuid) -> Result<bool> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(file) = read_file(&tx, keys, id).await? else {
                    return Ok(false);
                };
                purge_in(&tx, keys, &file);
                Ok(true)
            })
            .await
    }

    /// The file, if it exists in this tenant.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<File>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { read_file(&tx, keys, id).await })
            .await
    }

    /// The file at a path (a tombstone too, with `deleted` set).
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::Corrupt`]; store errors.
    pub async fn get_by_path(
        &self,
        tenant: Uuid,
        workspace: &str,
        path: &str,
    ) -> Result<Option<File>> {
        check_location(workspace, path)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(id) = tx.get(&keys.file_path(workspace, path), false).await? else {
                    return Ok(None);
                };
                let id = Uuid::from_slice(&id).map_err(|e| Error::corrupt("file path index", e))?;
                read_file(&tx, keys, id).await
            })
            .await
    }

    /// Files of a workspace whose path starts with `path_prefix` (`""` for all), in path
    /// order, after the path `after`; tombstones only with `include_deleted`.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::Corrupt`]; store errors.
    pub async fn list(
        &self,
        tenant: Uuid,
        workspace: &str,
        path_prefix: &str,
        after: Option<&str>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Page<File, String>> {
        check_len("workspace", workspace, MAX_WORKSPACE_BYTES, true)?;
        check_len("path_prefix", path_prefix, MAX_PATH_BYTES, false)?;
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let range = keys
            .file_paths(workspace, path_prefix, after)
            .limit(limit)
            .snapshot();
        let (keys, range) = (&keys, &range);
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx.get_range(range).await?;
                let mut items = Vec::new();
                let mut last = None;
                for kv in &page.kvs {
                    last = keys.parse_file_path(&kv.key);
                    let id = Uuid::from_slice(&kv.value)
                        .map_err(|e| Error::corrupt("file path index", e))?;
                    if let Some(f) = read_file(&tx, keys, id).await? {
                        if include_deleted || !f.deleted {
                            items.push(f);
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

    /// A file's versions, oldest first, after `after_version`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; [`Error::Corrupt`]; store errors.
    pub async fn history(
        &self,
        tenant: Uuid,
        id: Uuid,
        after_version: Option<u64>,
        limit: usize,
    ) -> Result<Page<FileVersion, u64>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let mut range = keys.file_versions(id).limit(limit).snapshot();
        if let Some(v) = after_version {
            range.begin = steward_store::key_after(&keys.file_version(id, v));
        }
        let range = &range;
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx.get_range(range).await?;
                let items = page
                    .kvs
                    .iter()
                    .map(|kv| decode::<FileVersion>(|| format!("file {id} version"), &kv.value))
                    .collect::<Result<Vec<_>>>()?;
                let next = if page.more {
                    items.last().map(|v| v.version)
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }
}

fn new_version(
    tx: &Transaction,
    keys: &TenantKeys,
    file: &mut File,
    change: FileChangeKind,
    session_id: Option<Uuid>,
    user_id: Option<Uuid>,
    now: i64,
) -> Result<FileVersion> {
    file.version += 1;
    file.updated_at = now.max(file.updated_at);
    file.last_session_id = session_id;
    file.last_user_id = user_id;
    let v = FileVersion {
        version: file.version,
        change,
        path: file.path.clone(),
        size: file.size,
        content_hash: file.content_hash.clone(),
        session_id,
        user_id,
        at: now,
    };
    tx.set(
        &keys.file_version(file.id, v.version),
        &encode("file_version", &v, MAX_INLINE_VALUE)?,
    );
    tx.set(
        &keys.file(file.id),
        &encode("file", file, MAX_INLINE_VALUE)?,
    );
    Ok(v)
}

async fn read_version(
    tx: &Transaction,
    keys: &TenantKeys,
    id: Uuid,
    version: u64,
) -> Result<Option<FileVersion>> {
    tx.get(&keys.file_version(id, version), false)
        .await?
        .map(|v| decode(|| format!("file {id} version"), &v))
        .transpose()
}

fn purge_in(tx: &Transaction, keys: &TenantKeys, file: &File) {
    tx.clear(&keys.file(file.id));
    let r = keys.file_versions(file.id);
    tx.clear_range(&r.begin, &r.end);
    tx.clear(&keys.file_path(&file.workspace, &file.path));
}

async fn read_file(tx: &Transaction, keys: &TenantKeys, id: Uuid) -> Result<Option<File>> {
    tx.get(&keys.file(id), false)
        .await?
        .map(|v| decode(|| format!("file {id}"), &v))
        .transpose()
}

async fn require_file(tx: &Transaction, keys: &TenantKeys, id: Uuid) -> Result<File> {
    read_file(tx, keys, id)
        .await?
        .ok_or_else(|| Error::not_found("file", id))
}
