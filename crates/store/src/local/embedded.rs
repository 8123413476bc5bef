//! The `embedded:PATH` engine: the memory engine's persistent map, made durable by a
//! write-ahead log with group commit and checkpoints, in one directory with a lock file.
//!
//! # Commits: a two-stage pipeline
//! The **sequencer** thread owns the conflict resolver and the working map. Of the commits waiting
//! (up to 256) it takes the smallest next (unless one has waited 5 ms), resolves it against
//! everything sequenced before it, applies it to the working map and appends what it changed to
//! the open log record (physical: puts, deletes and range deletes with atomic operations and
//! versionstamps already resolved, so a replay recomputes nothing). Conflicts are answered at
//! once. The record is handed to the log thread whenever that thread is idle (or nothing else
//! waits, or it reaches 32 MiB), so a small commit is not queued behind a round of large ones.
//!
//! The **log** thread takes every record waiting for it, appends them with one `write` and makes
//! them durable with one `fdatasync`. Only then does it *publish* the map of the last record (the
//! state readers see) and answer the callers. So while one record waits for the disk, the next is
//! already being resolved and applied, and nothing a reader can see or a caller was told is
//! committed can be lost: a crash loses at most records that nobody was answered for.
//!
//! A failed write or sync stops the engine (as PostgreSQL does after a failed fsync): the
//! records in flight are answered `commit_unknown_result`, every later commit an I/O error, and
//! the *process* must be restarted (not the store reopened in it: after a failed sync the
//! kernel may keep pages it never wrote, and a reopen would replay them as if durable).
//!
//! # Files
//! ```text
//! PATH/LOCK                   flock(2) while a process has the store open; holds its pid
//! PATH/checkpoint             the whole map at one version (optional)
//! PATH/wal-<first version>.log  log segments, replayed in order on open
//! ```
//! When the current segment passes [`crate::OpenOptions::embedded_checkpoint_bytes`] (256 MiB)
//! and twice the size of the last checkpoint (so the work of checkpointing stays proportional to
//! the log written, about half of it while the store's size is steady, as Redis's
//! `auto-aof-rewrite-percentage 200`), the log thread starts a new segment and a background thread writes the map as of the old segment's end
//! to `checkpoint.tmp`, syncs it, renames it over `checkpoint`, and deletes the old segments. A
//! crash at any point leaves a checkpoint and the segments after it.
//!
//! # Recovery
//! Open loads the checkpoint, then replays each segment's records newer than it. A record that is
//! cut short or fails its checksum at the end of the last segment is a write the crash
//! interrupted (never acknowledged): it is cut off, with a warning. Damage anywhere else refuses
//! the store rather than silently dropping committed data.
//!
//! The whole store lives in memory (as in Redis): it suits one machine's development and small
//! deployments; production uses FoundationDB.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::limits::{MAX_KEY_SIZE, MAX_VALUE_SIZE};
use crate::local::memory::{Map, MapWriter, MemSnapshot};
use crate::local::resolver::{Pins, Resolver};
use crate::local::watch::WatchRegistry;
use crate::local::{
    apply_mutations, versionstamp, CommitOutcome, CommitRequest, Committed, Engine, KvWrite,
    Mutation, Snapshot, Snapshots,
};

/// The sequencer holds at most this many waiting commits to choose from.
const MAX_GROUP: usize = 256;
/// A record is handed to the log thread once it holds this many bytes.
const MAX_GROUP_BYTES: usize = 32 << 20;
/// A commit waiting this long is sequenced next, whatever its size.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// The first bytes of every log segment (then the segment's first version, 8 bytes).
const WAL_MAGIC: &[u8; 8] = b"STWAL\x00\x00\x02";
/// The first bytes of a checkpoint (then its version and entry count, 8 bytes each).
/// Bytes of a segment's header: the magic and the segment's first version.
const SEGMENT_HEADER: usize = WAL_MAGIC.len() + 8;
const CHECKPOINT_MAGIC: &[u8; 8] = b"STCKP\x00\x00\x02";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
/// The file an earlier development build's engine (redb) kept.
const OLD_FORMAT_FILE: &str = "store.redb";
/// Bytes of a record's header: payload length and CRC-32 of the payload.
const RECORD_HEADER: usize = 8;
/// Operation tags in a record.
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_DELETE_RANGE: u8 = 3;
/// At most this many bytes of records go to the disk in one write: a crash can leave at most
/// that much of the log's end unwritten.
const MAX_LOG_BATCH_BYTES: usize = 32 << 20;
/// The most a torn end of the log can be: one batch, whose last record may pass the batch
/// limit by a whole group (`MAX_GROUP_BYTES` of mutations, logged with their framing).
const MAX_TORN_BYTES: u64 = 128 << 20;
/// The default size of a log segment before a checkpoint is taken.
pub(crate) const DEFAULT_CHECKPOINT_BYTES: u64 = 256 << 20;
/// A segment grows to at least this many times the last checkpoint's size before the next.
const CHECKPOINT_GROWTH: u64 = 2;

struct Job {
    req: CommitRequest,
    reply: oneshot::Sender<Result<CommitOutcome>>,
}

/// A group's log record, on its way to the disk.
struct Record {
    bytes: Vec<u8>,
    version: u64,
    map: Map,
    /// Its commits' mutations, to wake watches with once it is published.
    committed: Vec<Committed>,
    replies: Vec<(oneshot::Sender<Result<CommitOutcome>>, CommitOutcome)>,
}

/// What readers see: the state as of the last durable record.
struct Published {
    version: u64,
    map: Map,
}

/// What the engine handle and its threads share.
struct Shared {
    published: Mutex<Published>,
    /// Read versions of live snapshots, pinned under the `published` lock.
    pins: Arc<Pins>,
    watches: WatchRegistry,
    /// Set when a disk write failed: why. Nothing commits after it.
    failed: Mutex<Option<String>>,
    /// The log thread is waiting for records (the sequencer hands over what it has).
    log_idle: AtomicBool,
    /// The store is being closed: a checkpoint being written is abandoned (its log segments
    /// stay, so nothing is lost), rather than holding up the close for seconds.
    closing: AtomicBool,
    dir: PathBuf,
}

impl Shared {
    fn published(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failure(&self) -> Option<Error> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|why| {
                Error::Io(std::io::Error::other(format!(
                    "the embedded store at {} stopped accepting commits after a failed disk \
                     write ({why}); restart the process to recover what reached the disk",
                    self.dir.display()
                )))
            })
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "embedded store disk write failed; no further commits");
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failed.get_or_insert(why);
    }
}

impl Snapshots for Shared {
    fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        let p = self.published();
        Ok(Box::new(MemSnapshot {
            version: p.version,
            data: p.map.clone(),
            pin: Some(self.pins.pin(p.version)),
        }))
    }
}

/// The embedded engine.
pub(crate) struct EmbeddedEngine {
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    // Dropped last: the lock outlives every file handle.
    _lock: File,
}

impl std::fmt::Debug for EmbeddedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEngine")
            .field("path", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedEngine {
    /// Opens (creating if needed) the store in directory `dir`, replaying its log.
    pub(crate) fn open(
        dir: &Path,
        clock: SharedClock,
        checkpoints: Checkpoints,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let lock = take_lock(&dir.join("LOCK"))?;
        let recovered = recover(dir)?;
        let shared = Arc::new(Shared {
            published: Mutex::new(Published {
                version: recovered.version,
                map: recovered.map.clone(),
            }),
            pins: Arc::new(Pins::default()),
            watches: WatchRegistry::default(),
            failed: Mutex::new(None),
            log_idle: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            dir: dir.to_path_buf(),
        });
        let (jobs, job_rx) = mpsc::channel();
        let (records, record_rx) = mpsc::channel();
        let sequencer = Sequencer {
            shared: Arc::clone(&shared),
            clock,
            resolver: Resolver::default(),
            version: recovered.version,
            map: recovered.map,
            records,
        };
        let log = LogWriter {
            shared: Arc::clone(&shared),
            file: recovered.segment,
            segment_bytes: recovered.segment_bytes,
            checkpoints,
            last_checkpoint_bytes: Arc::new(AtomicU64::new(recovered.checkpoint_bytes)),
            checkpointing: None,
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("steward-store-seq".into())
                .spawn(move || sequencer.run(&job_rx))?,
            std::thread::Builder::new()
                .name("steward-store-log".into())
                .spawn(move || log.run(&record_rx))?,
        ];
        Ok(Arc::new(EmbeddedEngine {
            shared,
            jobs: Some(jobs),
            threads,
            _lock: lock,
        }))
    }
}

impl Drop for EmbeddedEngine {
    fn drop(&mut self) {
        // Closing the queue ends the sequencer after the commits already queued, which ends
        // the log thread after their records are durable and a checkpoint being written has
        // stopped (abandoned at its next MiB or pause slice: the segments it would have
        // replaced stay);
        // joining them closes every file before the lock is released.
        let started = std::time::Instant::now();
        self.shared.closing.store(true, Ordering::Release);
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::debug!(
            path = %self.shared.dir.display(),
            millis = started.elapsed().as_millis() as u64,
            "embedded store closed"
        );
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
            // A reply is dropped only if a thread died mid-group: the outcome is unknown.
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

// ------------------------------------------------------------------------------ sequencer

struct Sequencer {
    shared: Arc<Shared>,
    clock: SharedClock,
    resolver: Resolver,
    version: u64,
    map: Map,
    records: mpsc::Sender<Record>,
}

/// A log record being filled by the sequencer.
struct OpenRecord {
    bytes: Vec<u8>,
    replies: Vec<(oneshot::Sender<Result<CommitOutcome>>, CommitOutcome)>,
    committed: Vec<Committed>,
}

impl Sequencer {
    /// Takes waiting commits smallest first (unless one has waited [`MAX_WAIT`]), so a small
    /// transaction is not queued behind a round of large ones, and hands the record filled so
    /// far to the log thread whenever that thread is idle: the disk is kept busy, and while it
    /// syncs one record the next fills.
    fn run(mut self, rx: &mpsc::Receiver<Job>) {
        let mut waiting: Vec<(Instant, usize, Job)> = Vec::new();
        let mut open: Option<OpenRecord> = None;
        loop {
            if waiting.is_empty() {
                if let Some(record) = open.take() {
                    if !self.hand_over(record) {
                        return;
                    }
                }
                match rx.recv() {
                    Ok(job) => waiting.push(arrival(job)),
                    Err(_) => return,
                }
            }
            while waiting.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => waiting.push(arrival(job)),
                    Err(_) => break,
                }
            }
            if let Some(e) = self.shared.failure() {
                for (_, _, job) in waiting.drain(..) {
                    let _ = job.reply.send(Err(copy_failure(&e)));
                }
                // Replies of an unsent record are dropped: their outcome is unknown.
                open = None;
                continue;
            }
            let job = take_next(&mut waiting);
            let record = open.get_or_insert_with(|| self.open_record());
            self.sequence(record, job);
            let full = record.bytes.len() >= MAX_GROUP_BYTES;
            if full || self.shared.log_idle.load(Ordering::Acquire) {
                if let Some(record) = open.take() {
                    if !self.hand_over(record) {
                        return;
                    }
                }
            }
        }
    }

    /// A new record starting at the next version; refreshes the resolver's floor.
    fn open_record(&mut self) -> OpenRecord {
        {
            // Under the lock snapshots are pinned under: new ones read at the published version.
            let published = self.shared.published();
            self.resolver
                .set_floor(self.shared.pins.floor(published.version), published.version);
        }
        let mut bytes = Vec::with_capacity(64 << 10);
        bytes.resize(RECORD_HEADER, 0);
        bytes.extend_from_slice(&(self.version + 1).to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes()); // the last version, filled in at the end
        OpenRecord {
            bytes,
            replies: Vec::new(),
            committed: Vec::new(),
        }
    }

    /// Resolves one commit: a conflict is answered at once; otherwise it is applied to the
    /// map and to the record.
    fn sequence(&mut self, record: &mut OpenRecord, job: Job) {
        let Job { mut req, reply } = job;
        if let Some(rv) = req.read_version {
            if let Err(e) = self.resolver.check(rv, &req.reads) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        // Resolved: its read version no longer holds back the resolver's memory.
        drop(req.pin.take());
        record
            .bytes
            .reserve(request_bytes(&req) + req.mutations.len() * 9);
        self.version += 1;
        let stamp = versionstamp(self.version, 0);
        let mut writes = std::mem::take(&mut req.writes);
        let mut logged = Logged {
            map: MapWriter(&mut self.map),
            log: &mut record.bytes,
        };
        // Writing into the map and the buffer cannot fail (MapWriter never errors, nor does
        // appending to a Vec), so no commit is half applied.
        let applied = apply_mutations(&mut logged, &req.mutations, &stamp, &mut writes);
        debug_assert!(applied.is_ok(), "in-memory writes never fail");
        let now = self.clock.monotonic();
        self.resolver.record(self.version, writes, now);
        // Moved, not copied: the log thread finds the watched keys in them after publishing,
        // and frees them there, off this thread.
        record
            .committed
            .push((stamp, std::mem::take(&mut req.mutations)));
        record.replies.push((
            reply,
            CommitOutcome {
                version: self.version,
                stamp,
            },
        ));
    }

    /// Seals the record and sends it to the log thread (nothing if no commit is in it).
    /// False if the log thread is gone (it only ends when this thread does).
    fn hand_over(&mut self, mut record: OpenRecord) -> bool {
        if record.replies.is_empty() {
            return true;
        }
        record.bytes[RECORD_HEADER + 8..RECORD_HEADER + 16]
            .copy_from_slice(&self.version.to_be_bytes());
        seal_record(&mut record.bytes);
        self.records
            .send(Record {
                bytes: record.bytes,
                version: self.version,
                map: self.map.clone(),
                committed: record.committed,
                replies: record.replies,
            })
            .is_ok()
    }
}

fn arrival(job: Job) -> (Instant, usize, Job) {
    (Instant::now(), request_bytes(&job.req), job)
}

/// The smallest waiting commit, or the oldest if it has waited [`MAX_WAIT`] (no starvation).
fn take_next(waiting: &mut Vec<(Instant, usize, Job)>) -> Job {
    let oldest_overdue = waiting
        .first()
        .is_some_and(|(at, _, _)| at.elapsed() >= MAX_WAIT);
    let i = if oldest_overdue {
        0
    } else {
        waiting
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, size, _))| *size)
            .map_or(0, |(i, _)| i)
    };
    waiting.remove(i).2
}

fn copy_failure(e: &Error) -> Error {
    match e {
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        _ => Error::CommitUnknownResult,
    }
}

fn request_bytes(req: &CommitRequest) -> usize {
    req.mutations
        .iter()
        .map(|m| match m {
            Mutation::Set(k, v) => k.len() + v.len(),
            Mutation::Atomic(_, k, v) => k.len() + v.len(),
            Mutation::Clear(k) => k.len(),
            Mutation::ClearRange(b, e) => b.len() + e.len(),
            Mutation::VersionstampedKey { key, value, .. }
            | Mutation::VersionstampedValue { key, value, .. } => key.len() + value.len(),
        })
        .sum()
}

/// Applies writes to the map and appends them to a record.
struct Logged<'a> {
    map: MapWriter<'a>,
    log: &'a mut Vec<u8>,
}

impl Logged<'_> {
    fn log_put(&mut self, key: &[u8], value: &[u8]) {
        self.log.push(OP_PUT);
        self.bytes(key);
        self.bytes(value);
    }

    fn bytes(&mut self, b: &[u8]) {
        // Keys and values are far below 4 GiB (the store's limits are 10 kB and 100 kB).
        self.log
            .extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.log.extend_from_slice(b);
    }
}

impl KvWrite for Logged<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.map.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.log_put(key, value);
        self.map.put(key, value)
    }

    fn put_shared(&mut self, key: &Arc<[u8]>, value: &Arc<[u8]>) -> Result<()> {
        self.log_put(key, value);
        self.map.put_shared(key, value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.log.push(OP_DELETE);
        self.bytes(key);
        self.map.delete(key)
    }

    fn delete_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        self.log.push(OP_DELETE_RANGE);
        self.bytes(begin);
        self.bytes(end);
        self.map.delete_range(begin, end)
    }
}

/// Fills in a record's header: payload length and checksum.
fn seal_record(bytes: &mut [u8]) {
    let payload = &bytes[RECORD_HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    bytes[4..8].copy_from_slice(&crc.to_be_bytes());
}

// ---------------------------------------------------------------------------- log writer

struct LogWriter {
    shared: Arc<Shared>,
    file: File,
    segment_bytes: u64,
    checkpoints: Checkpoints,
    /// The size of the last checkpoint written (or found at open).
    last_checkpoint_bytes: Arc<AtomicU64>,
    checkpointing: Option<JoinHandle<()>>,
}

impl LogWriter {
    fn run(mut self, rx: &mpsc::Receiver<Record>) {
        let mut buf = Vec::new();
        loop {
            self.shared.log_idle.store(true, Ordering::Release);
            let Ok(first) = rx.recv() else { break };
            self.shared.log_idle.store(false, Ordering::Release);
            let mut bytes = first.bytes.len();
            let mut batch = vec![first];
            while bytes < MAX_LOG_BATCH_BYTES {
                let Ok(more) = rx.try_recv() else { break };
                bytes += more.bytes.len();
                batch.push(more);
            }
            if let Some(e) = self.shared.failure() {
                for record in batch {
                    for (reply, _) in record.replies {
                        let _ = reply.send(Err(copy_failure(&e)));
                    }
                }
                continue;
            }
            buf.clear();
            for record in &batch {
                buf.extend_from_slice(&record.bytes);
            }
            if let Err(e) = self
                .file
                .write_all(&buf)
                .and_then(|()| self.file.sync_data())
            {
                self.shared.fail(e.to_string());
                for record in batch {
                    for (reply, _) in record.replies {
                        let _ = reply.send(Err(Error::CommitUnknownResult));
                    }
                }
                continue;
            }
            self.segment_bytes += buf.len() as u64;
            self.publish(batch);
            let threshold = self.checkpoints.every_bytes.max(1).max(
                CHECKPOINT_GROWTH
                    .saturating_mul(self.last_checkpoint_bytes.load(Ordering::Relaxed)),
            );
            if self.segment_bytes >= threshold && !self.shared.closing.load(Ordering::Acquire) {
                if let Err(e) = self.rotate() {
                    // The current segment stays in use; the next record tries again.
                    tracing::warn!(error = %e, "embedded store: could not start a new log segment");
                }
            }
        }
        if let Some(t) = self.checkpointing.take() {
            let _ = t.join();
        }
    }

    /// Makes the batch's state visible and answers its callers.
    fn publish(&self, batch: Vec<Record>) {
        let mut committed = Vec::new();
        let mut replies = Vec::new();
        let mut last = None;
        for record in batch {
            committed.extend(record.committed);
            replies.extend(record.replies);
            last = Some((record.version, record.map));
        }
        if let Some((version, map)) = last {
            *self.shared.published() = Published { version, map };
        }
        // Callers first: waking watches is not on their path.
        for (reply, outcome) in replies {
            let _ = reply.send(Ok(outcome));
        }
        self.shared
            .watches
            .fire_committed(&*self.shared, &committed);
    }

    /// Starts a new segment and checkpoints the state as of the end of the old ones in the
    /// background (unless a checkpoint is still being written).
    fn rotate(&mut self) -> Result<()> {
        if self
            .checkpointing
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            return Ok(());
        }
        if let Some(t) = self.checkpointing.take() {
            let _ = t.join();
        }
        let (version, map) = {
            let p = self.shared.published();
            (p.version, p.map.clone())
        };
        let dir = self.shared.dir.clone();
        let path = dir.join(segment_name(version + 1));
        let created = create_segment(&path, version + 1).and_then(|file| {
            sync_dir(&dir)?;
            Ok(file)
        });
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // A half-made segment must not stay behind: recovery would find it in the
                // middle of the log. (If removing it fails too, recovery skips an empty one.)
                let _ = std::fs::remove_file(&path);
                let _ = sync_dir(&dir);
                return Err(e);
            }
        };
        self.file = file;
        self.segment_bytes = 0;
        let last_size = Arc::clone(&self.last_checkpoint_bytes);
        let shared = Arc::clone(&self.shared);
        let rate = self.checkpoints.bytes_per_sec;
        self.checkpointing = Some(
            std::thread::Builder::new()
                .name("steward-store-ckpt".into())
                .spawn(move || {
                    let started = std::time::Instant::now();
                    match write_checkpoint(&dir, version, &map, rate, &shared.closing) {
                        Ok(None) => {
                            tracing::debug!(
                                version,
                                "embedded store checkpoint abandoned: closing"
                            );
                        }
                        Ok(Some((entries, size))) => {
                            last_size.store(size, Ordering::Relaxed);
                            // Every segment that starts at or below the checkpoint's version is
                            // older than the current one (it starts at version + 1): covered.
                            // Listing them (not remembering them) also removes the segments a
                            // failed checkpoint left.
                            remove_segments_through(&dir, version);
                            tracing::debug!(
                                version,
                                entries,
                                millis = started.elapsed().as_millis() as u64,
                                "embedded store checkpoint written"
                            );
                        }
                        Err(e) => {
                            // The old segments stay: recovery replays them.
                            tracing::warn!(error = %e, "embedded store checkpoint failed");
                        }
                    }
                })?,
        );
        Ok(())
    }
}

fn segment_name(first_version: u64) -> String {
    format!("wal-{first_version:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Removes the log segments whose first version is at most `version` (best effort: recovery
/// skips what a checkpoint covers anyway).
fn remove_segments_through(dir: &Path, version: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if parse_segment_name(&name.to_string_lossy()).is_some_and(|first| first <= version) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(error = %e, segment = %entry.path().display(),
                    "embedded store: could not remove a checkpointed log segment");
            }
        }
    }
}

fn create_segment(path: &Path, first_version: u64) -> Result<File> {
    // Truncating: a file of this name can only be what a failed rotation left (no records).
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(WAL_MAGIC)?;
    file.write_all(&first_version.to_be_bytes())?;
    file.sync_all()?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// A checkpoint being written is synced every this many bytes.
const CHECKPOINT_SYNC_BYTES: usize = 1 << 20;
/// A checkpoint is written at most this fast by default. It shares the disk (and the file system's
/// journal) with the log, whose every commit waits for a sync: written flat out, a 60 MB
/// checkpoint held commits up for hundreds of milliseconds at a time (measured by the queue
/// benchmark). Paced, it takes longer, and nothing waits for it: the log segments it covers
/// are removed when it is done.
pub(crate) const DEFAULT_CHECKPOINT_BYTES_PER_SEC: u64 = 32 << 20;

/// When checkpoints are taken, and how fast they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoints {
    /// [`crate::OpenOptions::embedded_checkpoint_bytes`].
    pub(crate) every_bytes: u64,
    /// [`crate::OpenOptions::embedded_checkpoint_bytes_per_sec`].
    pub(crate) bytes_per_sec: u64,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            every_bytes: DEFAULT_CHECKPOINT_BYTES,
            bytes_per_sec: DEFAULT_CHECKPOINT_BYTES_PER_SEC,
        }
    }
}

/// A checkpoint's pause is slept in slices of at most this, checking for a close between them.
const CHECKPOINT_PAUSE_SLICE: Duration = Duration::from_millis(20);

/// How long a checkpoint that has written `written` bytes in `elapsed` pauses before its next
/// chunk, to stay within `per_sec` bytes per second on average.
fn checkpoint_pause(written: u64, elapsed: Duration, per_sec: u64) -> Duration {
    #[allow(clippy::cast_precision_loss)] // bytes and rates far below 2^52
    let due = Duration::from_secs_f64(written as f64 / per_sec.max(1) as f64);
    due.saturating_sub(elapsed)
}

/// Writes `map` at `version` to `checkpoint.tmp` at most `per_sec` bytes per second, syncs it
/// and renames it over `checkpoint`.
/// Returns the number of entries and the file's size, or `None` if `stop` was set before it
/// was done (the temporary file is removed; the last checkpoint stays).
fn write_checkpoint(
    dir: &Path,
    version: u64,
    map: &Map,
    per_sec: u64,
    stop: &AtomicBool,
) -> Result<Option<(u64, u64)>> {
    let tmp = dir.join(CHECKPOINT_TMP);
    let file = File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let mut put = |out: &mut BufWriter<File>, b: &[u8]| -> std::io::Result<()> {
        crc.update(b);
        out.write_all(b)
    };
    let count = map.len() as u64;
    put(&mut out, CHECKPOINT_MAGIC)?;
    put(&mut out, &version.to_be_bytes())?;
    put(&mut out, &count.to_be_bytes())?;
    let mut unsynced = 0usize;
    let (started, mut written) = (Instant::now(), 0u64);
    for (k, v) in map {
        for b in [k, v] {
            let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
            put(&mut out, &len.to_be_bytes())?;
            put(&mut out, b)?;
            unsynced += 4 + b.len();
        }
        // Sync as it goes, so that the dirty pages never pile up: with hundreds of megabytes
        // of them, the log's own syncs (same disk, same file system journal) waited longer.
        if unsynced >= CHECKPOINT_SYNC_BYTES {
            if stop.load(Ordering::Acquire) {
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                return Ok(None);
            }
            out.flush()?;
            out.get_ref().sync_data()?;
            written += unsynced as u64;
            unsynced = 0;
            // In slices, so that a close does not wait out a long pause.
            loop {
                let pause = checkpoint_pause(written, started.elapsed(), per_sec);
                if pause.is_zero() || stop.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(pause.min(CHECKPOINT_PAUSE_SLICE));
            }
        }
    }
    let sum = crc.finalize();
    out.write_all(&sum.to_be_bytes())?;
    let file = out
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, dir.join(CHECKPOINT))?;
    sync_dir(dir)?;
    Ok(Some((count, size)))
}

// ------------------------------------------------------------------------------ recovery

struct Recovered {
    version: u64,
    map: Map,
    /// The last segment, open for appending at its last good record.
    segment: File,
    /// The bytes of log since the checkpoint (every segment, the last one to its good end).
    segment_bytes: u64,
    /// The size of the checkpoint file (0 without one).
    checkpoint_bytes: u64,
}

fn damaged(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::IncompatibleStore {
        path: dir.display().to_string(),
        reason: format!("{what}; restore the directory from a backup"),
    }
}

fn recover(dir: &Path) -> Result<Recovered> {
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    let mut has_checkpoint = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = parse_segment_name(&name) {
            segments.push((first, entry.path()));
        } else if name == CHECKPOINT {
            has_checkpoint = true;
        } else if name == CHECKPOINT_TMP {
            // A checkpoint the last process did not finish; its log segments are all here.
            std::fs::remove_file(entry.path())?;
        }
    }
    if !has_checkpoint && segments.is_empty() && dir.join(OLD_FORMAT_FILE).exists() {
        return Err(Error::IncompatibleStore {
            path: dir.display().to_string(),
            reason: format!(
                "it holds `{OLD_FORMAT_FILE}`, the format of an earlier development build, \
                 which this binary does not read; move the directory away to start afresh"
            ),
        });
    }
    segments.sort();
    let (mut version, mut map) = if has_checkpoint {
        read_checkpoint(dir)?
    } else {
        (0, Map::new())
    };
    let checkpoint_version = version;
    // Segments holding no record (what a crash or a failed rotation left right after creating
    // one) are dropped, wherever they are: the version check of the records after them still
    // catches any gap.
    let mut kept = Vec::with_capacity(segments.len());
    for (first, path) in segments {
        if segment_is_empty(&path)? {
            tracing::warn!(segment = %path.display(), "embedded store: removing an empty log segment");
            std::fs::remove_file(&path)?;
        } else {
            kept.push((first, path));
        }
    }
    let count = kept.len();
    let mut last_good = 0u64;
    for (i, (first, path)) in kept.iter().enumerate() {
        let is_last = i + 1 == count;
        let end = replay_segment(
            dir,
            path,
            *first,
            is_last,
            checkpoint_version,
            &mut version,
            &mut map,
        )?;
        if is_last {
            last_good = end;
        }
    }
    // The log since the checkpoint: the segments before the last one count too (those of a
    // checkpoint abandoned at close), so the next checkpoint comes when it is due.
    let mut earlier = 0u64;
    for (_, path) in kept.iter().take(count.saturating_sub(1)) {
        earlier = earlier.saturating_add(std::fs::metadata(path)?.len());
    }
    let (segment, segment_bytes) = match kept.last() {
        Some((_, path)) => {
            let mut file = OpenOptions::new().read(true).write(true).open(path)?;
            let len = file.metadata()?.len();
            if len > last_good {
                cut_torn_tail(dir, path, &mut file, last_good, len)?;
            }
            file.seek(SeekFrom::Start(last_good))?;
            (file, last_good)
        }
        None => {
            let path = dir.join(segment_name(version + 1));
            let file = create_segment(&path, version + 1)?;
            sync_dir(dir)?;
            (file, SEGMENT_HEADER as u64)
        }
    };
    let checkpoint_bytes = if has_checkpoint {
        std::fs::metadata(dir.join(CHECKPOINT))?.len()
    } else {
        0
    };
    Ok(Recovered {
        version,
        map,
        segment,
        segment_bytes: earlier.saturating_add(segment_bytes),
        checkpoint_bytes,
    })
}

/// True if a segment holds no record: shorter than its header plus one record header, with a
/// header that is missing, partial or all zeros (the file was created, its header not yet on
/// the disk). A segment with a good header and nothing after it is empty too.
fn segment_is_empty(path: &Path) -> Result<bool> {
    // Decided by the size first: a segment with records is not read twice on open.
    if std::fs::metadata(path)?.len() > SEGMENT_HEADER as u64 {
        return Ok(false);
    }
    let data = std::fs::read(path)?;
    Ok(data.len() < SEGMENT_HEADER || data.starts_with(WAL_MAGIC) || data.iter().all(|&b| b == 0))
}

/// Cuts the end of the last segment off at `good` (a record a crash interrupted: written, never
/// synced, so never acknowledged), keeping the cut bytes beside it as evidence. More than one
/// log batch can hold is no torn write: the store is refused instead.
fn cut_torn_tail(dir: &Path, path: &Path, file: &mut File, good: u64, len: u64) -> Result<()> {
    let cut = len - good;
    if cut > MAX_TORN_BYTES {
        return Err(damaged(
            dir,
            format!(
                "log segment {} is damaged at byte {good} with {cut} bytes after it, more than \
                 a crash can leave unwritten",
                path.display()
            ),
        ));
    }
    let mut tail = Vec::with_capacity(usize::try_from(cut).unwrap_or(0));
    file.seek(SeekFrom::Start(good))?;
    file.read_to_end(&mut tail)?;
    let kept = path.with_extension(format!("log.torn-{good}"));
    std::fs::write(&kept, &tail)?;
    File::open(&kept)?.sync_all()?;
    tracing::warn!(
        segment = %path.display(),
        bytes = cut,
        kept = %kept.display(),
        "embedded store: cutting off a log record a crash interrupted (never acknowledged)"
    );
    file.set_len(good)?;
    file.sync_all()?;
    sync_dir(dir)
}

fn read_checkpoint(dir: &Path) -> Result<(u64, Map)> {
    let path = dir.join(CHECKPOINT);
    let mut input = BufReader::with_capacity(1 << 20, File::open(&path)?);
    let mut crc = crc32fast::Hasher::new();
    let bad = |what: &str| damaged(dir, format!("its checkpoint is damaged ({what})"));
    let mut read = |input: &mut BufReader<File>, n: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        input.read_exact(&mut b).map_err(|_| bad("cut short"))?;
        crc.update(&b);
        Ok(b)
    };
    let magic = read(&mut input, 8)?;
    if magic != CHECKPOINT_MAGIC {
        return Err(Error::IncompatibleStore {
            path: dir.display().to_string(),
            reason: "its checkpoint is not in a format this binary reads".into(),
        });
    }
    let version = be_u64(&read(&mut input, 8)?);
    let count = be_u64(&read(&mut input, 8)?);
    let mut map = Map::new();
    for _ in 0..count {
        // Lengths are checked before anything is allocated for them: a damaged length must be
        // an error, not an allocation of gigabytes.
        let klen = be_u32(&read(&mut input, 4)?) as usize;
        if klen > MAX_KEY_SIZE {
            return Err(bad("a key longer than the store allows"));
        }
        let key = read(&mut input, klen)?;
        let vlen = be_u32(&read(&mut input, 4)?) as usize;
        if vlen > MAX_VALUE_SIZE {
            return Err(bad("a value longer than the store allows"));
        }
        let value = read(&mut input, vlen)?;
        map.insert(Arc::from(key), Arc::from(value));
    }
    let expected = crc.finalize();
    let mut sum = [0u8; 4];
    input.read_exact(&mut sum).map_err(|_| bad("cut short"))?;
    if u32::from_be_bytes(sum) != expected {
        return Err(bad("checksum mismatch"));
    }
    Ok((version, map))
}

/// Replays one segment's records newer than `skip_through` into `map`. Returns the offset
/// after its last good record.
fn replay_segment(
    dir: &Path,
    path: &Path,
    first: u64,
    is_last: bool,
    skip_through: u64,
    version: &mut u64,
    map: &mut Map,
) -> Result<u64> {
    let data = std::fs::read(path)?;
    let name = path.display();
    let header = SEGMENT_HEADER;
    if data.len() < header || &data[..8] != WAL_MAGIC || be_u64(&data[8..16]) != first {
        return Err(damaged(dir, format!("log segment {name} has a bad header")));
    }
    let mut at = header;
    while at < data.len() {
        let torn = || -> Result<u64> {
            if is_last {
                Ok(at as u64)
            } else {
                Err(damaged(
                    dir,
                    format!("log segment {name} is damaged at byte {at}"),
                ))
            }
        };
        if data.len() - at < RECORD_HEADER {
            return torn();
        }
        let len = be_u32(&data[at..at + 4]) as usize;
        let crc = be_u32(&data[at + 4..at + 8]);
        let start = at + RECORD_HEADER;
        let Some(payload) = data.get(start..start + len) else {
            return torn();
        };
        if crc32fast::hash(payload) != crc || len < 16 {
            return torn();
        }
        let first_version = be_u64(&payload[..8]);
        let last_version = be_u64(&payload[8..16]);
        if last_version > skip_through {
            if first_version != *version + 1 || last_version < first_version {
                return Err(damaged(
                    dir,
                    format!(
                        "log segment {name} jumps from version {} to {first_version}",
                        *version
                    ),
                ));
            }
            apply_record(&payload[16..], map).ok_or_else(|| {
                damaged(
                    dir,
                    format!("log segment {name} has a bad record at byte {at}"),
                )
            })?;
            *version = last_version;
        }
        at = start + len;
    }
    Ok(at as u64)
}

/// Applies a record's operations; `None` if they do not parse.
fn apply_record(mut ops: &[u8], map: &mut Map) -> Option<()> {
    fn take<'a>(ops: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = be_u32(ops.get(..4)?) as usize;
        let b = ops.get(4..4 + len)?;
        *ops = &ops[4 + len..];
        Some(b)
    }
    let mut w = MapWriter(map);
    while let Some((&tag, rest)) = ops.split_first() {
        ops = rest;
        match tag {
            OP_PUT => {
                let k = take(&mut ops)?;
                let v = take(&mut ops)?;
                w.put(k, v).ok()?;
            }
            OP_DELETE => {
                let k = take(&mut ops)?;
                w.delete(k).ok()?;
            }
            OP_DELETE_RANGE => {
                let b = take(&mut ops)?;
                let e = take(&mut ops)?;
                w.delete_range(b, e).ok()?;
            }
            _ => return None,
        }
    }
    Some(())
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn put(map: &mut Map, k: &[u8], v: &[u8]) {
        map.insert(Arc::from(k), Arc::from(v));
    }

    /// About 4 MiB: 1,024 values of 4 KiB.
    fn four_mib() -> Map {
        let mut map = Map::new();
        for i in 0..1_024u32 {
            put(&mut map, &i.to_be_bytes(), &[5u8; 4096]);
        }
        map
    }

    #[test]
    fn a_checkpoint_round_trips_and_a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = Map::new();
        for i in 0..500u32 {
            put(&mut map, &i.to_be_bytes(), &vec![7u8; (i % 40) as usize]);
        }
        let go = AtomicBool::new(false);
        let (entries, _) = write_checkpoint(dir.path(), 42, &map, u64::MAX, &go)
            .unwrap()
            .unwrap();
        assert_eq!(entries, 500);
        let (version, back) = read_checkpoint(dir.path()).unwrap();
        assert_eq!(version, 42);
        assert_eq!(back, map);

        let path = dir.path().join(CHECKPOINT);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_checkpoint(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checkpoint is damaged"), "{err}");
    }

    #[test]
    fn a_checkpoint_abandoned_on_close_leaves_the_last_one_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut small, mut big) = (Map::new(), Map::new());
        put(&mut small, b"a", b"1");
        for i in 0..2_000u32 {
            put(&mut big, &i.to_be_bytes(), &[9u8; 4096]);
        }
        let go = AtomicBool::new(false);
        write_checkpoint(dir.path(), 7, &small, u64::MAX, &go)
            .unwrap()
            .unwrap();
        let closing = AtomicBool::new(true);
        assert_eq!(
            write_checkpoint(dir.path(), 9, &big, u64::MAX, &closing).unwrap(),
            None,
            "8 MB: stopped at the first 1 MiB"
        );
        assert!(!dir.path().join(CHECKPOINT_TMP).exists());
        assert_eq!(read_checkpoint(dir.path()).unwrap(), (7, small));
    }

    #[test]
    fn a_checkpoint_pauses_to_keep_to_its_rate() {
        let mib = 1u64 << 20;
        let s = Duration::from_secs;
        // 8 MiB at 4 MiB/s are due at 2 s: written in 0.5 s, it waits 1.5 s; late, not at all.
        assert_eq!(
            checkpoint_pause(8 * mib, Duration::from_millis(500), 4 * mib),
            Duration::from_millis(1500)
        );
        assert_eq!(checkpoint_pause(8 * mib, s(3), 4 * mib), Duration::ZERO);
        assert_eq!(checkpoint_pause(0, s(0), 4 * mib), Duration::ZERO);
        // A rate of 0 is refused at open; here it is taken as 1 byte per second.
        assert_eq!(checkpoint_pause(2, s(0), 0), s(2));
    }

    #[test]
    fn a_checkpoint_is_written_no_faster_than_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let map = four_mib();
        let go = AtomicBool::new(false);
        let started = Instant::now();
        // 4 MiB at 16 MiB/s: at least the 3 MiB before the last sync take 3/16 s.
        write_checkpoint(dir.path(), 3, &map, 16 << 20, &go)
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(180),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(read_checkpoint(dir.path()).unwrap(), (3, map));
    }

    #[test]
    fn a_close_does_not_wait_out_a_checkpoint_pause() {
        let dir = tempfile::tempdir().unwrap();
        let map = four_mib();
        let closing = Arc::new(AtomicBool::new(false));
        let close = {
            let closing = Arc::clone(&closing);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                closing.store(true, Ordering::Release);
            })
        };
        let started = Instant::now();
        // At 1 MiB/s the first pause alone is about a second.
        let outcome = write_checkpoint(dir.path(), 3, &map, 1 << 20, &closing).unwrap();
        close.join().unwrap();
        assert_eq!(outcome, None, "abandoned");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert!(!dir.path().join(CHECKPOINT_TMP).exists());
    }

    #[test]
    fn records_replay_puts_deletes_and_range_deletes() {
        let mut bytes = vec![0u8; RECORD_HEADER];
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        let mut map = Map::new();
        {
            let mut l = Logged {
                map: MapWriter(&mut map),
                log: &mut bytes,
            };
            for k in [b"a", b"b", b"c", b"d"] {
                l.put(k, b"1").unwrap();
            }
            l.delete(b"a").unwrap();
            l.delete_range(b"b", b"d").unwrap();
        }
        seal_record(&mut bytes);
        let mut replayed = Map::new();
        apply_record(&bytes[RECORD_HEADER + 16..], &mut replayed).unwrap();
        assert_eq!(replayed, map);
        assert_eq!(
            replayed.keys().map(|k| k.to_vec()).collect::<Vec<_>>(),
            vec![b"d".to_vec()]
        );
        assert!(apply_record(&[OP_PUT, 0, 0, 0, 9, 1], &mut replayed).is_none());
    }

    fn job_of(size: usize) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            req: CommitRequest {
                read_version: None,
                reads: Vec::new(),
                writes: Vec::new(),
                mutations: vec![Mutation::Set(
                    Arc::from([1u8].as_slice()),
                    Arc::from(vec![0; size]),
                )],
                pin: None,
            },
            reply,
        }
    }

    fn size_of(job: &Job) -> usize {
        request_bytes(&job.req)
    }

    #[test]
    fn the_smallest_waiting_commit_goes_first_unless_the_oldest_waited_too_long() {
        let now = Instant::now();
        let mut waiting: Vec<(Instant, usize, Job)> = [300, 20, 5000, 7]
            .into_iter()
            .map(|n| {
                let job = job_of(n);
                (now, size_of(&job), job)
            })
            .collect();
        let order: Vec<usize> = (0..4).map(|_| size_of(&take_next(&mut waiting))).collect();
        assert_eq!(order, vec![8, 21, 301, 5001]);

        // A big commit that has waited past MAX_WAIT goes before a smaller fresh one.
        let Some(long_ago) = now.checked_sub(MAX_WAIT * 2) else {
            return; // a clock this close to its origin cannot say "long ago"
        };
        let big = job_of(5000);
        let small = job_of(7);
        let mut waiting = vec![
            (long_ago, size_of(&big), big),
            (now, size_of(&small), small),
        ];
        assert_eq!(size_of(&take_next(&mut waiting)), 5001);
        assert_eq!(size_of(&take_next(&mut waiting)), 8);
    }

    #[test]
    fn an_old_format_store_is_refused_with_a_clear_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OLD_FORMAT_FILE), b"x").unwrap();
        let err = EmbeddedEngine::open(dir.path(), SystemClock::shared(), Checkpoints::default())
            .unwrap_err();
        assert!(
            err.to_string().contains("earlier development build"),
            "{err}"
        );
    }
}
