//! The `embedded:PATH` engine: one directory holding a redb file (`store.redb`, ordered keys,
//! MVCC readers, crash-safe copy-on-write commits) and a lock file (`LOCK`).
//!
//! # Commits
//! One committer thread owns the resolver and all writes. It takes every commit request waiting
//! in its queue (a *group*), resolves them in arrival order against each other and against recent
//! history, applies the survivors to one redb write transaction, and commits it with one disk
//! sync ([`redb::Durability::Immediate`]). Only then are the group's callers told they committed,
//! so nothing acknowledged can be lost, and a crash leaves either the whole group or none of it.
//!
//! # Versions
//! The last commit version is stored in the same write transaction as the data, so a snapshot's
//! version is exactly the state it shows, and versionstamps keep increasing across restarts.
//!
//! # Lock
//! `LOCK` is held with `flock` for the life of the engine; the kernel releases it when the
//! process dies, so a restart after `kill -9` opens the store, and a second live process gets
//! [`Error::Locked`] naming the holder's pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use futures::future::{BoxFuture, FutureExt};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::local::resolver::Resolver;
use crate::local::watch::WatchRegistry;
use crate::local::{
    apply_mutations, touched, versionstamp, CommitOutcome, CommitRequest, Engine, KeyRange,
    KvWrite, Mutation, Snapshot, Snapshots,
};

const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const META_VERSION: &str = "version";
const META_FORMAT: &str = "format";
/// The on-disk format this binary writes. A store with a newer format is refused.
const FORMAT: u64 = 1;
/// At most this many transactions share one disk sync.
const MAX_GROUP: usize = 1024;
/// At most this many mutation bytes share one disk sync.
const MAX_GROUP_BYTES: usize = 32 << 20;

struct Job {
    req: CommitRequest,
    reply: oneshot::Sender<Result<CommitOutcome>>,
}

/// What both the engine handle and the committer thread use.
struct Shared {
    db: redb::Database,
    watches: WatchRegistry,
}

impl Snapshots for Shared {
    fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        let txn = self.db.begin_read()?;
        let version = txn
            .open_table(META)?
            .get(META_VERSION)?
            .map_or(0, |g| g.value());
        let table = txn.open_table(KV)?;
        Ok(Box::new(EmbSnapshot {
            version,
            table,
            _txn: txn,
        }))
    }
}

/// The embedded engine.
pub(crate) struct EmbeddedEngine {
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<Job>>,
    committer: Option<JoinHandle<()>>,
    path: PathBuf,
    // Dropped last: the lock outlives the database file handle.
    _lock: File,
}

impl std::fmt::Debug for EmbeddedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEngine")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedEngine {
    /// Opens (creating if needed) the store in directory `dir`.
    pub(crate) fn open(dir: &Path, clock: SharedClock) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let lock = take_lock(&dir.join("LOCK"))?;
        let db = redb::Database::create(dir.join("store.redb"))?;
        let version = {
            let wtx = db.begin_write()?;
            let version;
            {
                let mut meta = wtx.open_table(META)?;
                let format = meta.get(META_FORMAT)?.map(|g| g.value());
                match format {
                    None => {
                        meta.insert(META_FORMAT, FORMAT)?;
                    }
                    Some(FORMAT) => {}
                    Some(other) => {
                        return Err(Error::IncompatibleStore {
                            path: dir.display().to_string(),
                            reason: format!(
                                "its format is {other}; this binary reads format {FORMAT}"
                            ),
                        })
                    }
                }
                version = meta.get(META_VERSION)?.map_or(0, |g| g.value());
                wtx.open_table(KV)?;
            }
            wtx.commit()?;
            version
        };
        let shared = Arc::new(Shared {
            db,
            watches: WatchRegistry::default(),
        });
        let (jobs, rx) = mpsc::channel();
        let committer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("steward-store-commit".into())
                .spawn(move || {
                    Committer {
                        shared,
                        clock,
                        resolver: Resolver::default(),
                        version,
                    }
                    .run(&rx);
                })?
        };
        Ok(Arc::new(EmbeddedEngine {
            shared,
            jobs: Some(jobs),
            committer: Some(committer),
            path: dir.to_path_buf(),
            _lock: lock,
        }))
    }
}

impl Drop for EmbeddedEngine {
    fn drop(&mut self) {
        // Closing the queue ends the committer after the commits already queued; joining it
        // closes the database before the lock is released.
        self.jobs = None;
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

impl Snapshots for EmbeddedEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        self.shared.snapshot()
    }
}

impl Engine for EmbeddedEngine {
    fn commit(&self, req: CommitRequest) -> BoxFuture<'static, Result<CommitOutcome>> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job { req, reply }).is_ok());
        async move {
            if !sent {
                return Err(Error::TransactionCancelled);
            }
            // The committer only drops a reply if it died mid-group: the outcome is unknown.
            rx.await.unwrap_or(Err(Error::CommitUnknownResult))
        }
        .boxed()
    }

    fn watches(&self) -> &WatchRegistry {
        &self.shared.watches
    }

    fn as_snapshots(&self) -> &dyn Snapshots {
        self
    }
}

fn take_lock(path: &Path) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            return Err(Error::Locked {
                pid: s.trim().parse().unwrap_or(0),
                path: path.display().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(file)
}

struct Committer {
    shared: Arc<Shared>,
    clock: SharedClock,
    resolver: Resolver,
    version: u64,
}

impl Committer {
    fn run(mut self, rx: &mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut bytes = request_bytes(&first.req);
            let mut group = vec![first];
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(job) => {
                        bytes += request_bytes(&job.req);
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, mut group: Vec<Job>) {
        let mut outcomes: Vec<Result<CommitOutcome>> = Vec::with_capacity(group.len());
        let mut all_touched: Vec<KeyRange> = Vec::new();
        let written = self.write_group(&mut group, &mut outcomes, &mut all_touched);
        match written {
            Ok(()) => {
                if !all_touched.is_empty() {
                    self.shared.watches.fire(&*self.shared, &all_touched);
                }
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(e) => {
                // Nothing of the group was applied. The resolver may remember writes that never
                // happened: that can only cause spurious (retryable) conflicts.
                tracing::error!(error = %e, "embedded store commit failed");
                let kind = match &e {
                    Error::Io(io) => io.kind(),
                    _ => std::io::ErrorKind::Other,
                };
                let mut first = Some(e);
                for job in group {
                    let err = first.take().unwrap_or_else(|| {
                        Error::Io(std::io::Error::new(
                            kind,
                            "embedded store commit failed (see the first error of this group)",
                        ))
                    });
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }

    fn write_group(
        &mut self,
        group: &mut [Job],
        outcomes: &mut Vec<Result<CommitOutcome>>,
        all_touched: &mut Vec<KeyRange>,
    ) -> Result<()> {
        let wtx = self.shared.db.begin_write()?;
        let now = self.clock.monotonic();
        {
            let mut table = wtx.open_table(KV)?;
            for job in group.iter_mut() {
                let req = &mut job.req;
                if let Some(rv) = req.read_version {
                    if let Err(e) = self.resolver.check(rv, &req.reads) {
                        outcomes.push(Err(e));
                        continue;
                    }
                }
                self.version += 1;
                let stamp = versionstamp(self.version, 0);
                let mut writes = std::mem::take(&mut req.writes);
                apply_mutations(
                    &mut TableWriter(&mut table),
                    &req.mutations,
                    &stamp,
                    &mut writes,
                )?;
                self.resolver.record(self.version, writes, now);
                all_touched.extend(touched(&req.mutations, &stamp));
                outcomes.push(Ok(CommitOutcome {
                    version: self.version,
                    stamp,
                }));
            }
            wtx.open_table(META)?.insert(META_VERSION, self.version)?;
        }
        wtx.commit()?;
        Ok(())
    }
}

fn request_bytes(req: &CommitRequest) -> usize {
    req.mutations
        .iter()
        .map(|m| match m {
            Mutation::Set(k, v) | Mutation::Atomic(_, k, v) => k.len() + v.len(),
            Mutation::Clear(k) => k.len(),
            Mutation::ClearRange(b, e) => b.len() + e.len(),
            Mutation::VersionstampedKey { key, value, .. }
            | Mutation::VersionstampedValue { key, value, .. } => key.len() + value.len(),
        })
        .sum()
}

struct EmbSnapshot {
    version: u64,
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    _txn: redb::ReadTransaction,
}

impl Snapshot for EmbSnapshot {
    fn version(&self) -> u64 {
        self.version
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.table.get(key)?.map(|g| g.value().to_vec()))
    }

    fn scan(
        &self,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let range = self.table.range::<&[u8]>(begin..end)?;
        if reverse {
            for item in range.rev() {
                let (k, v) = item?;
                if !visit(k.value(), v.value()) {
                    break;
                }
            }
        } else {
            for item in range {
                let (k, v) = item?;
                if !visit(k.value(), v.value()) {
                    break;
                }
            }
        }
        Ok(())
    }
}

struct TableWriter<'a, 't>(&'a mut redb::Table<'t, &'static [u8], &'static [u8]>);

impl KvWrite for TableWriter<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?.map(|g| g.value().to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.insert(key, value)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.0.remove(key)?;
        Ok(())
    }

    fn delete_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        self.0.retain_in::<&[u8], _>(begin..end, |_, _| false)?;
        Ok(())
    }
}
