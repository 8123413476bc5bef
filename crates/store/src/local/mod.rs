//! The local backends (`memory` and `embedded`) share everything but the storage engine:
//! the read-your-writes transaction ([`LocalTx`]), conflict detection ([`resolver`]), watches
//! ([`watch`]) and the application of mutations at commit. An [`Engine`] only provides
//! consistent snapshots at a version and an ordered commit of requests.

pub(crate) mod embedded;
pub(crate) mod memory;
pub(crate) mod resolver;
pub(crate) mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use self::watch::WatchRegistry;
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::limits::{MAX_KEY_SIZE, MAX_TRANSACTION_SIZE, MAX_VALUE_SIZE, TRANSACTION_LIFETIME};
use crate::types::{
    apply_atomic, fill_versionstamp, key_after, split_versionstamp_offset, CommitVersionstamp,
    KeyValue, MutationType, RangeOption, RangeResult, VERSIONSTAMP_LEN,
};

/// A half-open key range `[begin, end)`.
pub(crate) type KeyRange = (Vec<u8>, Vec<u8>);

/// The end of the user keyspace.
const SYSTEM_PREFIX: u8 = 0xff;

/// One write, in the order the transaction issued it.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// Shared, so the engine's map takes the key and value without copying them.
    Set(Arc<[u8]>, Arc<[u8]>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Atomic(MutationType, Vec<u8>, Vec<u8>),
    VersionstampedKey {
        key: Vec<u8>,
        offset: usize,
        value: Vec<u8>,
    },
    VersionstampedValue {
        key: Vec<u8>,
        value: Vec<u8>,
        offset: usize,
    },
}

/// A write conflict: one key, shared with the mutation that wrote it (so the resolver keeps it
/// without a copy), or a range.
#[derive(Debug, Clone)]
pub(crate) enum WriteConflict {
    Key(Arc<[u8]>),
    Range(Vec<u8>, Vec<u8>),
}

impl WriteConflict {
    /// Its size as FoundationDB counts a conflict range (a key's range ends at key + `\0`).
    fn counted_bytes(&self) -> usize {
        match self {
            WriteConflict::Key(k) => 2 * k.len() + 1,
            WriteConflict::Range(b, e) => b.len() + e.len(),
        }
    }
}

impl From<KeyRange> for WriteConflict {
    fn from((b, e): KeyRange) -> Self {
        WriteConflict::Range(b, e)
    }
}

/// What a local transaction hands its engine at commit.
#[derive(Debug)]
pub(crate) struct CommitRequest {
    /// The version the transaction read at; `None` if it never read (no conflicts possible).
    pub(crate) read_version: Option<u64>,
    pub(crate) reads: Vec<KeyRange>,
    pub(crate) writes: Vec<WriteConflict>,
    pub(crate) mutations: Vec<Mutation>,
    /// Keeps the read version pinned until the engine has resolved the request.
    pub(crate) pin: Option<resolver::Pin>,
}

/// What an engine reports for a successful commit.
#[derive(Debug, Clone)]
pub(crate) struct CommitOutcome {
    pub(crate) version: u64,
    pub(crate) stamp: CommitVersionstamp,
}

/// A consistent, immutable view of the store at one version.
pub(crate) trait Snapshot: Send {
    fn version(&self) -> u64;
    /// Hands over the pin of the snapshot's read version (see [`resolver::Pins`]).
    fn take_pin(&mut self) -> Option<resolver::Pin>;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `visit` for each pair in `[begin, end)` in order until it returns `false`.
    fn scan(
        &self,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

/// Something that gives snapshots of the latest committed state.
pub(crate) trait Snapshots {
    /// A snapshot of the latest committed state.
    fn snapshot(&self) -> Result<Box<dyn Snapshot>>;
}

/// A storage engine for the local backends.
pub(crate) trait Engine: Snapshots + Send + Sync + fmt::Debug {
    /// Checks the request for conflicts and, if there are none, applies it atomically and
    /// durably (as durable as the engine is) before resolving.
    fn commit(&self, req: CommitRequest) -> BoxFuture<'static, Result<CommitOutcome>>;
    /// The engine's watch registry.
    fn watches(&self) -> &WatchRegistry;
    /// This engine as a snapshot source.
    fn as_snapshots(&self) -> &dyn Snapshots;
}

/// The versionstamp of a commit at `version`, `order`-th in its batch.
pub(crate) fn versionstamp(version: u64, order: u16) -> CommitVersionstamp {
    let mut s = [0u8; VERSIONSTAMP_LEN];
    s[..8].copy_from_slice(&version.to_be_bytes());
    s[8..].copy_from_slice(&order.to_be_bytes());
    s
}

/// Write access to an engine's state during a commit.
pub(crate) trait KvWrite {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// [`KvWrite::put`] of shared bytes, which a map keeps without copying.
    fn put_shared(&mut self, key: &Arc<[u8]>, value: &Arc<[u8]>) -> Result<()> {
        self.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<()>;
    fn delete_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()>;
}

/// Applies `mutations` in order; the resolved keys of versionstamped keys are added to
/// `writes` (their write conflict ranges are only known now).
pub(crate) fn apply_mutations(
    kv: &mut dyn KvWrite,
    mutations: &[Mutation],
    stamp: &CommitVersionstamp,
    writes: &mut Vec<WriteConflict>,
) -> Result<()> {
    for m in mutations {
        match m {
            Mutation::Set(k, v) => kv.put_shared(k, v)?,
            Mutation::Clear(k) => kv.delete(k)?,
            Mutation::ClearRange(b, e) => kv.delete_range(b, e)?,
            Mutation::Atomic(op, k, p) => {
                let old = kv.get(k)?;
                // An op that leaves the value as it was writes (and logs) nothing. So what an
                // atomic op logs is never longer than its parameter: the transaction's counted
                // size bounds its log record (`ByteMax` or `CompareAndClear` keeping a large
                // value would otherwise log the whole value for a parameter of one byte).
                match apply_atomic(*op, old.as_deref(), p) {
                    Some(v) if old.as_deref() == Some(v.as_slice()) => {}
                    Some(v) => kv.put(k, &v)?,
                    None if old.is_none() => {}
                    None => kv.delete(k)?,
                }
            }
            Mutation::VersionstampedKey { key, offset, value } => {
                let k = fill_versionstamp(key, *offset, stamp);
                writes.push(WriteConflict::Key(Arc::from(k.as_slice())));
                kv.put(&k, value)?;
            }
            Mutation::VersionstampedValue { key, value, offset } => {
                kv.put(key, &fill_versionstamp(value, *offset, stamp))?;
            }
        }
    }
    Ok(())
}

/// A committed transaction's mutations, kept (not copied) until its watches are woken.
pub(crate) type Committed = (CommitVersionstamp, Vec<Mutation>);

/// A write the transaction holds for a key, as its own reads see it.
#[derive(Debug, Clone)]
enum Pending {
    /// The value is known (set, cleared, or atomics over a known value).
    Known(Option<Vec<u8>>),
    /// Atomic operations over the stored value, which is not read yet.
    Ops(Vec<(MutationType, Vec<u8>)>),
    /// A versionstamped value: unknown until commit.
    Unreadable,
}

impl Pending {
    fn resolve(&self, stored: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        match self {
            Pending::Known(v) => Ok(v.clone()),
            Pending::Ops(ops) => {
                let mut v = stored.map(<[u8]>::to_vec);
                for (op, p) in ops {
                    v = apply_atomic(*op, v.as_deref(), p);
                }
                Ok(v)
            }
            Pending::Unreadable => Err(Error::AccessedUnreadable),
        }
    }
}

/// A pending watch: the key, the value the transaction saw, and where to report the change.
type WatchRequest = (Vec<u8>, Option<Vec<u8>>, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct State {
    snapshot: Option<Box<dyn Snapshot>>,
    started: Duration,
    pending: BTreeMap<Vec<u8>, Pending>,
    /// Ranges cleared by this transaction, sorted and disjoint.
    cleared: Vec<KeyRange>,
    /// Where this transaction's versionstamped keys may land: unreadable until commit, as in
    /// FoundationDB (1036), except where a later clear_range made them known.
    unreadable: Vec<KeyRange>,
    mutations: Vec<Mutation>,
    reads: Vec<KeyRange>,
    writes: Vec<WriteConflict>,
    mutation_bytes: usize,
    /// The first error of an infallible write call, reported by the next read or the commit.
    deferred: Option<Error>,
    watches: Vec<WatchRequest>,
    stamps: Vec<oneshot::Sender<CommitVersionstamp>>,
}

/// A read-your-writes transaction over an [`Engine`].
pub(crate) struct LocalTx {
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    state: Mutex<State>,
}

impl fmt::Debug for LocalTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTx").finish_non_exhaustive()
    }
}

impl LocalTx {
    pub(crate) fn new(engine: Arc<dyn Engine>, clock: SharedClock) -> Self {
        LocalTx {
            engine,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only this transaction's buffers behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the read snapshot on first use and enforces the 5 s lifetime.
    fn ensure_snapshot<'s>(&self, st: &'s mut State) -> Result<&'s dyn Snapshot> {
        if let Some(e) = &st.deferred {
            return Err(sticky_copy(e));
        }
        if st.snapshot.is_none() {
            st.snapshot = Some(self.engine.snapshot()?);
            st.started = self.clock.monotonic();
        } else if self.clock.monotonic().saturating_sub(st.started) > TRANSACTION_LIFETIME {
            return Err(Error::TransactionTooOld);
        }
        Ok(st.snapshot.as_deref().expect("snapshot was just set"))
    }

    pub(crate) fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        let mut st = self.lock();
        check_readable_key(key)?;
        if key.len() > MAX_KEY_SIZE {
            // No such key can exist.
            return Ok(None);
        }
        if let Some(Pending::Known(v)) = st.pending.get(key) {
            let v = v.clone();
            if let Some(e) = &st.deferred {
                return Err(sticky_copy(e));
            }
            return Ok(v);
        }
        let stored = self.ensure_snapshot(&mut st)?.get(key)?;
        if overlaps(&st.unreadable, key, &key_after(key)) {
            return Err(Error::AccessedUnreadable);
        }
        let value = match st.pending.get(key) {
            Some(p) => p.resolve(stored.as_deref())?,
            None if is_cleared(&st.cleared, key) => None,
            None => stored,
        };
        if !snapshot {
            st.reads.push((key.to_vec(), key_after(key)));
        }
        Ok(value)
    }

    pub(crate) fn get_range(&self, opt: &RangeOption) -> Result<RangeResult> {
        let mut st = self.lock();
        if opt.end.as_slice() > [SYSTEM_PREFIX].as_slice() {
            return Err(Error::KeyOutsideLegalRange);
        }
        let limit = opt.limit.unwrap_or(usize::MAX);
        if opt.begin >= opt.end || limit == 0 {
            return Ok(RangeResult::default());
        }
        // The pending writes in the range, in the order of the read.
        let mut pending: Vec<(Vec<u8>, Pending)> = st
            .pending
            .range::<[u8], _>((
                Bound::Included(opt.begin.as_slice()),
                Bound::Excluded(opt.end.as_slice()),
            ))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        if opt.reverse {
            pending.reverse();
        }
        let cleared = st.cleared.clone();
        let snap = self.ensure_snapshot(&mut st)?;

        let before = |a: &[u8], b: &[u8]| if opt.reverse { a > b } else { a < b };
        let mut out: Vec<KeyValue> = Vec::new();
        let mut failed: Option<Error> = None;
        let mut next_pending = pending.into_iter().peekable();
        let emit = |out: &mut Vec<KeyValue>, key: &[u8], value: Option<Vec<u8>>| {
            if let Some(value) = value {
                out.push(KeyValue {
                    key: key.to_vec(),
                    value,
                });
            }
        };
        snap.scan(&opt.begin, &opt.end, opt.reverse, &mut |k, v| {
            while out.len() < limit {
                let Some((pk, _)) = next_pending.peek() else {
                    break;
                };
                if !before(pk, k) {
                    break;
                }
                let (pk, p) = next_pending.next().expect("peeked");
                match p.resolve(None) {
                    Ok(val) => emit(&mut out, &pk, val),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            if out.len() >= limit {
                return false;
            }
            if next_pending
                .peek()
                .is_some_and(|(pk, _)| pk.as_slice() == k)
            {
                let (pk, p) = next_pending.next().expect("peeked");
                match p.resolve(Some(v)) {
                    Ok(val) => emit(&mut out, &pk, val),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            } else if !is_cleared(&cleared, k) {
                emit(&mut out, k, Some(v.to_vec()));
            }
            out.len() < limit
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        for (pk, p) in next_pending {
            if out.len() >= limit {
                break;
            }
            let val = p.resolve(None)?;
            emit(&mut out, &pk, val);
        }
        let more = out.len() >= limit;
        // The part of the range the read examined: all of it, or up to the last pair returned
        // when the limit was reached.
        let examined = match (more, out.last()) {
            (true, Some(last)) if opt.reverse => (last.key.clone(), opt.end.clone()),
            (true, Some(last)) => (opt.begin.clone(), key_after(&last.key)),
            _ => (opt.begin.clone(), opt.end.clone()),
        };
        if overlaps(&st.unreadable, &examined.0, &examined.1) {
            return Err(Error::AccessedUnreadable);
        }
        if !opt.snapshot {
            st.reads.push(examined);
        }
        Ok(RangeResult { kvs: out, more })
    }

    /// Records a write call's error for the next read or the commit, as FoundationDB does.
    fn defer(st: &mut State, e: Error) {
        if st.deferred.is_none() {
            st.deferred = Some(e);
        }
    }

    fn check_write(st: &mut State, key: &[u8], value_len: usize) -> bool {
        let e = if key.first() == Some(&SYSTEM_PREFIX) {
            Error::KeyOutsideLegalRange
        } else if key.len() > MAX_KEY_SIZE {
            Error::KeyTooLarge { size: key.len() }
        } else if value_len > MAX_VALUE_SIZE {
            Error::ValueTooLarge { size: value_len }
        } else {
            return true;
        };
        Self::defer(st, e);
        false
    }

    pub(crate) fn set(&self, key: &[u8], value: &[u8]) {
        let mut st = self.lock();
        if !Self::check_write(&mut st, key, value.len()) {
            return;
        }
        st.pending
            .insert(key.to_vec(), Pending::Known(Some(value.to_vec())));
        let key: Arc<[u8]> = Arc::from(key);
        st.writes.push(WriteConflict::Key(Arc::clone(&key)));
        st.mutation_bytes += key.len() + value.len();
        st.mutations.push(Mutation::Set(key, Arc::from(value)));
    }

    pub(crate) fn clear(&self, key: &[u8]) {
        let mut st = self.lock();
        if key.len() > MAX_KEY_SIZE {
            return; // No such key can exist.
        }
        if !Self::check_write(&mut st, key, 0) {
            return;
        }
        st.pending.insert(key.to_vec(), Pending::Known(None));
        st.writes.push(WriteConflict::Key(Arc::from(key)));
        st.mutation_bytes += key.len();
        st.mutations.push(Mutation::Clear(key.to_vec()));
    }

    pub(crate) fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let mut st = self.lock();
        if end > [SYSTEM_PREFIX].as_slice() {
            Self::defer(&mut st, Error::KeyOutsideLegalRange);
            return;
        }
        if begin > end {
            Self::defer(&mut st, Error::InvertedRange);
            return;
        }
        if begin == end {
            return;
        }
        let doomed: Vec<Vec<u8>> = st
            .pending
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            st.pending.remove(&k);
        }
        add_cleared(&mut st.cleared, begin, end);
        subtract_range(&mut st.unreadable, begin, end);
        st.writes
            .push(WriteConflict::Range(begin.to_vec(), end.to_vec()));
        st.mutation_bytes += begin.len() + end.len();
        st.mutations
            .push(Mutation::ClearRange(begin.to_vec(), end.to_vec()));
    }

    pub(crate) fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType) {
        let mut st = self.lock();
        if !Self::check_write(&mut st, key, param.len()) {
            return;
        }
        let cleared = is_cleared(&st.cleared, key);
        let earlier = st.pending.remove(key);
        // A key this transaction wrote before already has its write conflict range.
        if earlier.is_none() {
            st.writes.push(WriteConflict::Key(Arc::from(key)));
        }
        let next = match earlier {
            Some(Pending::Known(v)) => Pending::Known(apply_atomic(op, v.as_deref(), param)),
            Some(Pending::Ops(mut ops)) => {
                ops.push((op, param.to_vec()));
                Pending::Ops(ops)
            }
            Some(Pending::Unreadable) => Pending::Unreadable,
            None if cleared => Pending::Known(apply_atomic(op, None, param)),
            None => Pending::Ops(vec![(op, param.to_vec())]),
        };
        st.pending.insert(key.to_vec(), next);
        st.mutation_bytes += key.len() + param.len();
        st.mutations
            .push(Mutation::Atomic(op, key.to_vec(), param.to_vec()));
    }

    pub(crate) fn set_versionstamped_key(&self, raw_key: &[u8], value: &[u8]) {
        let mut st = self.lock();
        let (key, offset) = match split_versionstamp_offset(raw_key) {
            Ok(v) => v,
            Err(e) => return Self::defer(&mut st, e),
        };
        if !Self::check_write(&mut st, key, value.len()) {
            return;
        }
        // The key is known only at commit, so every key it may become is unreadable until then
        // (FoundationDB's `getVersionstampKeyRange`): from the stamp of the read version, the
        // lowest a commit can get, to the placeholder filled with `\xff`.
        let lowest = versionstamp(st.snapshot.as_ref().map_or(0, |s| s.version()), 0);
        let begin = fill_versionstamp(key, offset, &lowest);
        let end = key_after(&fill_versionstamp(key, offset, &[0xff; VERSIONSTAMP_LEN]));
        let end = end.min(vec![SYSTEM_PREFIX]);
        st.unreadable.push((begin, end));
        st.mutation_bytes += key.len() + value.len();
        st.mutations.push(Mutation::VersionstampedKey {
            key: key.to_vec(),
            offset,
            value: value.to_vec(),
        });
    }

    pub(crate) fn set_versionstamped_value(&self, key: &[u8], raw_value: &[u8]) {
        let mut st = self.lock();
        let (value, offset) = match split_versionstamp_offset(raw_value) {
            Ok(v) => v,
            Err(e) => return Self::defer(&mut st, e),
        };
        if !Self::check_write(&mut st, key, value.len()) {
            return;
        }
        st.pending.insert(key.to_vec(), Pending::Unreadable);
        st.writes.push(WriteConflict::Key(Arc::from(key)));
        st.mutation_bytes += key.len() + value.len();
        st.mutations.push(Mutation::VersionstampedValue {
            key: key.to_vec(),
            value: value.to_vec(),
            offset,
        });
    }

    pub(crate) fn add_conflict_range(&self, begin: &[u8], end: &[u8], read: bool) {
        let mut st = self.lock();
        if begin >= end {
            return;
        }
        let r = (begin.to_vec(), end.to_vec());
        if read {
            st.reads.push(r);
        } else {
            st.writes.push(r.into());
        }
    }

    pub(crate) fn watch(&self, key: &[u8]) -> Result<oneshot::Receiver<Result<()>>> {
        check_readable_key(key)?;
        if key.len() > MAX_KEY_SIZE {
            return Err(Error::KeyTooLarge { size: key.len() });
        }
        let seen = self.get(key, true)?;
        let (tx, rx) = oneshot::channel();
        self.lock().watches.push((key.to_vec(), seen, tx));
        Ok(rx)
    }

    pub(crate) fn versionstamp(&self) -> oneshot::Receiver<CommitVersionstamp> {
        let (tx, rx) = oneshot::channel();
        self.lock().stamps.push(tx);
        rx
    }

    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn is_read_only(&self) -> bool {
        let st = self.lock();
        st.mutations.is_empty() && st.writes.is_empty()
    }

    pub(crate) fn read_version(&self) -> Result<u64> {
        let mut st = self.lock();
        Ok(self.ensure_snapshot(&mut st)?.version())
    }

    /// Commits. Returns the commit version, or `None` for a read-only transaction.
    pub(crate) async fn commit(mut self) -> Result<Option<u64>> {
        let mut st = std::mem::take(
            self.state
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let watches = std::mem::take(&mut st.watches);
        match self.commit_state(&mut st).await {
            Ok(version) => {
                self.engine
                    .watches()
                    .register(self.engine.as_snapshots(), watches)?;
                Ok(version)
            }
            Err(e) => {
                // As in FoundationDB, the watches of a transaction that did not commit fail
                // with the commit's error (not as if the transaction had been dropped).
                for (_, _, notify) in watches {
                    let _ = notify.send(Err(sticky_copy(&e)));
                }
                Err(e)
            }
        }
    }

    /// Checks and commits the buffered state; watches are left to the caller.
    async fn commit_state(&self, st: &mut State) -> Result<Option<u64>> {
        if let Some(e) = st.deferred.take() {
            return Err(e);
        }
        if st.mutations.is_empty() && st.writes.is_empty() {
            // Read-only: nothing to resolve. FoundationDB gives it no commit version.
            return Ok(None);
        }
        let read_version = match &st.snapshot {
            Some(s) => {
                if self.clock.monotonic().saturating_sub(st.started) > TRANSACTION_LIFETIME {
                    return Err(Error::TransactionTooOld);
                }
                Some(s.version())
            }
            None => None,
        };
        let conflict_bytes: usize = st
            .reads
            .iter()
            .map(|(b, e)| b.len() + e.len())
            .sum::<usize>()
            + st.writes
                .iter()
                .map(WriteConflict::counted_bytes)
                .sum::<usize>();
        let size = st.mutation_bytes + conflict_bytes;
        if size > MAX_TRANSACTION_SIZE {
            return Err(Error::TransactionTooLarge { size });
        }
        // Release the snapshot before waiting on the commit; its read version stays pinned
        // until the engine has resolved the request.
        let pin = st.snapshot.as_mut().and_then(|s| s.take_pin());
        st.snapshot = None;
        let req = CommitRequest {
            read_version,
            reads: std::mem::take(&mut st.reads),
            writes: std::mem::take(&mut st.writes),
            mutations: merge_adds(std::mem::take(&mut st.mutations)),
            pin,
        };
        let outcome = self.engine.commit(req).await?;
        for s in st.stamps.drain(..) {
            let _ = s.send(outcome.stamp);
        }
        Ok(Some(outcome.version))
    }
}

/// Merges repeated atomic adds of the same width to one key into one add (their parameters
/// summed, as little-endian integers of that width wrap), as long as no other write to the key
/// came between them. The result is the same value; the engine writes the key once. A
/// transaction that counts a hundred jobs into one counter shard thus commits one write.
fn merge_adds(mutations: Vec<Mutation>) -> Vec<Mutation> {
    let adds = mutations
        .iter()
        .filter(|m| matches!(m, Mutation::Atomic(MutationType::Add, ..)))
        .count();
    if adds < 2 {
        return mutations;
    }
    let mut out: Vec<Mutation> = Vec::with_capacity(mutations.len());
    // Keys whose latest write is the add at this index of `out`.
    let mut open: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for m in mutations {
        match m {
            Mutation::Atomic(MutationType::Add, key, param) => {
                if let Some(&i) = open.get(&key) {
                    if let Mutation::Atomic(_, _, prev) = &mut out[i] {
                        if prev.len() == param.len() && !param.is_empty() {
                            if let Some(sum) = apply_atomic(MutationType::Add, Some(prev), &param) {
                                *prev = sum;
                                continue;
                            }
                        }
                    }
                }
                open.insert(key.clone(), out.len());
                out.push(Mutation::Atomic(MutationType::Add, key, param));
            }
            Mutation::Set(ref k, _) => {
                open.remove(&**k);
                out.push(m);
            }
            Mutation::Clear(ref k)
            | Mutation::Atomic(_, ref k, _)
            | Mutation::VersionstampedValue { key: ref k, .. } => {
                open.remove(k);
                out.push(m);
            }
            Mutation::ClearRange(ref b, ref e) => {
                open.retain(|k, _| k < b || k >= e);
                out.push(m);
            }
            Mutation::VersionstampedKey { .. } => {
                // Its key is known only at commit: it could be any of them.
                open.clear();
                out.push(m);
            }
        }
    }
    out
}

/// The error of an invalid write stays with the transaction, as in FoundationDB: every later
/// read reports it and the commit fails with it, even if a body ignored one read's error.
/// A failed commit's error also goes to each of its watches. Errors are not `Clone`, so each
/// report gets its own copy, of the same class.
fn sticky_copy(e: &Error) -> Error {
    match e {
        Error::KeyTooLarge { size } => Error::KeyTooLarge { size: *size },
        Error::ValueTooLarge { size } => Error::ValueTooLarge { size: *size },
        Error::TransactionTooLarge { size } => Error::TransactionTooLarge { size: *size },
        Error::KeyOutsideLegalRange => Error::KeyOutsideLegalRange,
        Error::InvertedRange => Error::InvertedRange,
        Error::InvalidVersionstamp(why) => Error::InvalidVersionstamp(why),
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => match other.fdb_code() {
            Some(code) => Error::from_fdb_code(code, other),
            // Engine and I/O errors without a code: permanent, as the original, message kept.
            None => Error::Io(std::io::Error::other(other.to_string())),
        },
    }
}

fn check_readable_key(key: &[u8]) -> Result<()> {
    if key.first() == Some(&SYSTEM_PREFIX) {
        return Err(Error::KeyOutsideLegalRange);
    }
    Ok(())
}

/// True if `[begin, end)` intersects one of `ranges`.
fn overlaps(ranges: &[KeyRange], begin: &[u8], end: &[u8]) -> bool {
    ranges
        .iter()
        .any(|(b, e)| b.as_slice() < end && begin < e.as_slice())
}

/// Removes `[begin, end)` from `ranges`, splitting those it cuts.
fn subtract_range(ranges: &mut Vec<KeyRange>, begin: &[u8], end: &[u8]) {
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for (b, e) in ranges.drain(..) {
        if e.as_slice() <= begin || end <= b.as_slice() {
            kept.push((b, e));
            continue;
        }
        if b.as_slice() < begin {
            kept.push((b, begin.to_vec()));
        }
        if end < e.as_slice() {
            kept.push((end.to_vec(), e));
        }
    }
    *ranges = kept;
}

/// True if `key` lies in one of the sorted, disjoint `ranges`.
fn is_cleared(ranges: &[KeyRange], key: &[u8]) -> bool {
    let i = ranges.partition_point(|(b, _)| b.as_slice() <= key);
    i > 0 && key < ranges[i - 1].1.as_slice()
}

/// Adds `[begin, end)` to sorted, disjoint `ranges`, merging overlaps.
fn add_cleared(ranges: &mut Vec<KeyRange>, begin: &[u8], end: &[u8]) {
    let mut b = begin.to_vec();
    let mut e = end.to_vec();
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for (rb, re) in ranges.drain(..) {
        if re.as_slice() < b.as_slice() || rb.as_slice() > e.as_slice() {
            kept.push((rb, re));
        } else {
            if rb < b {
                b = rb;
            }
            if re > e {
                e = re;
            }
        }
    }
    kept.push((b, e));
    kept.sort();
    *ranges = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalid_write_fails_every_later_read_and_the_commit() {
        let db = crate::Database::memory();
        let tx = db.create_transaction().unwrap();
        tx.set(b"ok", b"1");
        tx.set(&[1u8; MAX_KEY_SIZE + 1], b"x");
        for _ in 0..2 {
            assert!(matches!(
                tx.get(b"ok", false).await,
                Err(Error::KeyTooLarge { .. })
            ));
        }
        assert!(matches!(tx.commit().await, Err(Error::KeyTooLarge { .. })));
        let tx = db.create_transaction().unwrap();
        assert_eq!(tx.get(b"ok", false).await.unwrap(), None, "nothing applied");
    }

    #[test]
    fn subtracting_a_range_trims_and_splits_the_ranges_it_cuts() {
        let r = |b: &[u8], e: &[u8]| (b.to_vec(), e.to_vec());
        let mut ranges = vec![r(b"a", b"c"), r(b"d", b"h"), r(b"x", b"z")];
        subtract_range(&mut ranges, b"b", b"e");
        subtract_range(&mut ranges, b"f", b"g");
        subtract_range(&mut ranges, b"x", b"z");
        assert_eq!(ranges, vec![r(b"a", b"b"), r(b"e", b"f"), r(b"g", b"h")]);
        assert!(overlaps(&ranges, b"a\x00", b"a\x01"));
        assert!(!overlaps(&ranges, b"b", b"e"), "end is exclusive");
        assert!(!overlaps(&ranges, b"f", b"g"));
        assert!(overlaps(&ranges, b"0", b"z"));
    }

    #[test]
    fn merged_adds_leave_the_same_state_as_the_mutations_one_by_one() {
        use crate::local::memory::{Map, MapWriter};
        let stamp = versionstamp(7, 0);
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let keys: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
            let mut mutations = Vec::new();
            for _ in 0..rng.usize(1..40) {
                let k = keys[rng.usize(..keys.len())].to_vec();
                let width = if rng.bool() { 8 } else { 4 };
                let param: Vec<u8> = (0..width).map(|_| rng.u8(..)).collect();
                mutations.push(match rng.u8(..10) {
                    0 => Mutation::Set(k.into(), param.into()),
                    1 => Mutation::Clear(k),
                    2 => Mutation::ClearRange(b"b".to_vec(), b"d".to_vec()),
                    3 => Mutation::Atomic(MutationType::Max, k, param),
                    _ => Mutation::Atomic(MutationType::Add, k, param),
                });
            }
            let merged = merge_adds(mutations.clone());
            assert!(merged.len() <= mutations.len());
            let run = |ms: &[Mutation]| {
                let mut map = Map::new();
                map.insert(Arc::from(&b"a"[..]), Arc::from(&[250u8, 255, 1][..]));
                apply_mutations(&mut MapWriter(&mut map), ms, &stamp, &mut Vec::new()).unwrap();
                map
            };
            assert_eq!(run(&merged), run(&mutations), "seed {seed}: {mutations:?}");
        }
        let hundred: Vec<Mutation> = (0..100)
            .map(|_| {
                Mutation::Atomic(
                    MutationType::Add,
                    b"n".to_vec(),
                    1i64.to_le_bytes().to_vec(),
                )
            })
            .collect();
        let merged = merge_adds(hundred);
        assert_eq!(merged.len(), 1);
        assert!(
            matches!(&merged[0], Mutation::Atomic(MutationType::Add, _, p) if p == &100i64.to_le_bytes())
        );
    }

    #[test]
    fn cleared_ranges_merge_and_answer_membership() {
        let mut r = Vec::new();
        add_cleared(&mut r, b"c", b"e");
        add_cleared(&mut r, b"a", b"b");
        add_cleared(&mut r, b"d", b"g");
        assert_eq!(
            r,
            vec![
                (b"a".to_vec(), b"b".to_vec()),
                (b"c".to_vec(), b"g".to_vec())
            ]
        );
        assert!(is_cleared(&r, b"a"));
        assert!(!is_cleared(&r, b"b"));
        assert!(is_cleared(&r, b"f"));
        assert!(!is_cleared(&r, b"g"));
        assert!(!is_cleared(&r, b"0"));
    }
}
