//! The FoundationDB backend (feature `fdb`): a thin adapter from the seam to the `foundationdb`
//! crate (0.11, `fdb-7_1`). Every seam call is one client library call; what little is decided
//! in plain Rust (range modes, `more`, versions, mutation codes) lives in `fdb_logic.rs`, where
//! every build unit-tests it.
//!
//! # Boot once, API 710
//! The client library allows one API version selection and one network per process. The first
//! [`FdbDatabase::open`] selects API version 710 explicitly (FoundationDB 7.1, the production
//! cluster's version; not "the newest the crate knows") and starts the network thread; the
//! guard that would stop it lives in a process-wide `OnceLock` and is never dropped, so every
//! database and test in the process shares one network. If the selection fails (say a client
//! library older than 7.1), every later open returns the same error: it cannot be retried.
//! The network is not stopped before the process exits; see the `SAFETY` note on `boot_network`.
//!
//! # Errors
//! Every `FdbError` goes through [`Error::from_fdb_code`] with its code: 1020, 1007, 1021,
//! 2101-2103, 2004, ... become the seam's named variants, every other code stays an
//! [`Error::Fdb`] classified by [`crate::classify_fdb_code`]. No `FdbError` is ever boxed into
//! another error, so a retryable conflict stays retryable.
//!
//! The seam's limits hold because FoundationDB enforces them itself: key, value and transaction
//! sizes (2102, 2103, 2101) and keys at or above `\xff` (2004). Write calls cannot fail, so, as
//! in the local backends, FoundationDB defers a write's error to the next read, watch,
//! versionstamp or commit of the transaction (`ThreadSafeTransaction::deferredError`); the error
//! is sticky there. The adapter adds three errors of its own, deferred and sticky the same way:
//! [`Error::InvalidVersionstamp`] for a versionstamped key or value whose placeholder offset
//! does not fit (FoundationDB would say `client_invalid_operation`, 2000), the synchronous
//! error of a conflict range call, and [`Error::KeyTooLarge`]/[`Error::ValueTooLarge`] for
//! slices longer than a C `int` (the crate would panic). Sizes in FoundationDB's own limit
//! errors are 0 ("unknown").
//!
//! # Semantics worth knowing
//! - Range reads: first-greater-or-equal selectors on `begin` and `end`; `WANT_ALL` without a
//!   limit (one batch of about 80 kB, `more` set if the range goes on), `EXACT` with one (the
//!   whole page in one batch). FoundationDB's `more` is passed through, except that an empty
//!   page never claims more. A limit of 0 is answered here (the C API reads 0 as "no limit").
//! - Empty or inverted conflict ranges are dropped, as the local backends do.
//! - A transaction is read-only (for fault injection) until a write or a write conflict range
//!   call reaches FoundationDB; FoundationDB then reports commit version -1, the seam `None`.
//! - The versionstamp future of a read-only commit fails with `no_commit_version` (2021), and
//!   with `transaction_cancelled` (1025) if the transaction is dropped uncommitted.
//!
//! # What is tested, and where
//! `cargo lint-fdb` compiles this file and `tests/fdb_conformance.rs` against the real
//! bindings (bindgen needs libclang: `apt-get install libclang-dev`); nothing here links
//! without `libfdb_c`. The plain-Rust decisions are unit-tested in every build
//! (`fdb_logic.rs`). Behaviour against a real cluster is checked only by
//! `tests/fdb_conformance.rs`, which runs when `STEWARD_TEST_FDB_CLUSTER_FILE` names the
//! cluster file of a dedicated, disposable test cluster (it wipes the whole user keyspace) and
//! reports "skipped" otherwise.

/// Longest a transaction may take on FoundationDB, reads and commit included (the 5 s MVCC
/// window bounds reads; the rest leaves room for a slow commit during a recovery).
const TRANSACTION_TIMEOUT_MS: i32 = 10_000;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{self, ConflictRangeType};
use foundationdb::{FdbError, FdbResult, KeySelector};
use futures::future::{self, BoxFuture, FutureExt};

use crate::database::Priority;
use crate::error::{Error, Result};
use crate::fdb_logic::{self, RangePlan, StreamingMode, API_VERSION};
use crate::types::{
    split_versionstamp_offset, CommitVersionstamp, KeyValue, MutationType, RangeOption, RangeResult,
};

/// The client network of this process: started by the first open, never stopped.
static NETWORK: OnceLock<FdbResult<NetworkAutoStop>> = OnceLock::new();

/// Selects API version 710 and starts the network thread, once per process.
fn ensure_network() -> Result<()> {
    match NETWORK.get_or_init(boot_network) {
        Ok(_) => Ok(()),
        Err(e) => Err(fdb_error(*e)),
    }
}

#[allow(unsafe_code)]
fn boot_network() -> FdbResult<NetworkAutoStop> {
    let builder = FdbApiBuilder::default()
        .set_runtime_version(API_VERSION)
        .build()?;
    // SAFETY: `NetworkBuilder::boot` is unsafe because its guard must be dropped (stopping the
    // network and joining its thread) before the process exits, and because the network may
    // be started only once per process. The second holds: this function is only called by
    // `NETWORK.get_or_init`, which runs it at most once to completion, and
    // `FdbApiBuilder::build` above panics rather than select an API version twice. The guard
    // goes into `NETWORK`, a static that is never dropped, so the network outlives every
    // database, transaction and future created on it: nothing can use a stopped network. The
    // first is deliberately given up: the process exits with the network thread running. The
    // C API calls that undefined; what can actually go wrong is confined to process teardown
    // (the client library's static destructors racing its own network thread after `main` or
    // the test harness has returned), when no Rust code uses FoundationDB any more, and it
    // cannot tear a transaction (the cluster commits all of one or none of it). A process
    // that needs a clean stop must add one (an `atexit` hook, or an explicit shutdown call
    // before `exit`).
    unsafe { builder.boot() }
}

/// Every `FdbError`, as the seam's error (never boxed, so its class survives).
fn fdb_error(e: FdbError) -> Error {
    Error::from_fdb_code(e.code(), e)
}

/// A handle on a FoundationDB database. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FdbDatabase {
    db: Arc<foundationdb::Database>,
}

impl FdbDatabase {
    /// Opens the database of `cluster_file`, or of the client library's default cluster file
    /// (`$FDB_CLUSTER_FILE`, then `/etc/foundationdb/fdb.cluster`), booting the network first
    /// if this is the process's first open.
    pub(crate) fn open(cluster_file: Option<&Path>) -> Result<Self> {
        let cluster_file = fdb_logic::cluster_file_arg(cluster_file)?;
        ensure_network()?;
        let db = foundationdb::Database::new(cluster_file).map_err(fdb_error)?;
        // Without a timeout, a transaction against an unreachable cluster waits forever. A
        // timed-out transaction fails with 1031 (permanent), which the caller sees.
        db.set_option(foundationdb::options::DatabaseOption::TransactionTimeout(
            TRANSACTION_TIMEOUT_MS,
        ))
        .map_err(fdb_error)?;
        Ok(FdbDatabase { db: Arc::new(db) })
    }

    pub(crate) fn create_transaction(&self, priority: Priority) -> Result<FdbTx> {
        let tx = self.db.create_trx().map_err(fdb_error)?;
        if priority != Priority::Default {
            tx.set_option(foundationdb::options::TransactionOption::PriorityBatch)
                .map_err(fdb_error)?;
        }
        Ok(FdbTx {
            tx,
            deferred: Mutex::new(None),
            wrote: AtomicBool::new(false),
            _db: Arc::clone(&self.db),
        })
    }
}

/// An error deferred by the adapter itself (see the module doc). `Copy`, so that it can be
/// reported again and again, as FoundationDB's deferred errors are.
#[derive(Debug, Clone, Copy)]
enum Deferred {
    InvalidVersionstamp(&'static str),
    KeyTooLarge(usize),
    ValueTooLarge(usize),
    Fdb(FdbError),
}

impl Deferred {
    /// The errors of `split_versionstamp_offset` and `check_ffi_lengths`, the only seam errors
    /// the adapter defers.
    fn from_error(e: &Error) -> Self {
        match *e {
            Error::InvalidVersionstamp(why) => Deferred::InvalidVersionstamp(why),
            Error::KeyTooLarge { size } => Deferred::KeyTooLarge(size),
            Error::ValueTooLarge { size } => Deferred::ValueTooLarge(size),
            _ => Deferred::Fdb(FdbError::from_code(
                e.fdb_code().unwrap_or(fdb_logic::INTERNAL_ERROR),
            )),
        }
    }

    fn to_error(self) -> Error {
        match self {
            Deferred::InvalidVersionstamp(why) => Error::InvalidVersionstamp(why),
            Deferred::KeyTooLarge(size) => Error::KeyTooLarge { size },
            Deferred::ValueTooLarge(size) => Error::ValueTooLarge { size },
            Deferred::Fdb(e) => fdb_error(e),
        }
    }
}

/// One FoundationDB transaction.
pub(crate) struct FdbTx {
    tx: foundationdb::Transaction,
    /// The first error of the adapter's own, reported by every later read and by the commit.
    deferred: Mutex<Option<Deferred>>,
    /// A write or a write conflict range reached FoundationDB.
    wrote: AtomicBool,
    /// Keeps the database handle alive at least as long as the transaction (declared after
    /// `tx`, so dropped after it).
    _db: Arc<foundationdb::Database>,
}

impl FdbTx {
    /// Records the adapter's own error of a write call (the first one wins, as in FoundationDB).
    fn defer(&self, e: Deferred) {
        let mut slot = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(e);
    }

    /// The adapter's deferred error, if any (FoundationDB reports its own in the call).
    fn check_deferred(&self) -> Result<()> {
        let slot = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        match *slot {
            Some(d) => Err(d.to_error()),
            None => Ok(()),
        }
    }

    /// Checks a write call's slices for the C API; on failure defers the error and says no.
    fn writable(&self, key_lens: &[usize], value_len: usize) -> bool {
        match fdb_logic::check_ffi_lengths(key_lens, value_len) {
            Ok(()) => {
                self.wrote.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.defer(Deferred::from_error(&e));
                false
            }
        }
    }

    pub(crate) async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        self.check_deferred()?;
        fdb_logic::check_ffi_lengths(&[key.len()], 0)?;
        let value = self.tx.get(key, snapshot).await.map_err(fdb_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    pub(crate) async fn get_range(&self, opt: &RangeOption) -> Result<RangeResult> {
        self.check_deferred()?;
        fdb_logic::check_ffi_lengths(&[opt.begin.len(), opt.end.len()], 0)?;
        let (limit, mode) = match fdb_logic::plan_range(opt)? {
            RangePlan::Empty => return Ok(RangeResult::default()),
            RangePlan::Read { limit, mode } => (limit, mode),
        };
        let fdb_opt = foundationdb::RangeOption {
            begin: KeySelector::first_greater_or_equal(opt.begin.as_slice()),
            end: KeySelector::first_greater_or_equal(opt.end.as_slice()),
            limit,
            target_bytes: 0,
            mode: match mode {
                StreamingMode::WantAll => options::StreamingMode::WantAll,
                StreamingMode::Exact => options::StreamingMode::Exact,
            },
            reverse: opt.reverse,
            ..foundationdb::RangeOption::default()
        };
        // The iteration number only matters in `ITERATOR` mode, which is not used.
        let page = self
            .tx
            .get_range(&fdb_opt, 1, opt.snapshot)
            .await
            .map_err(fdb_error)?;
        let kvs: Vec<KeyValue> = page
            .iter()
            .map(|kv| KeyValue {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
            })
            .collect();
        let more = fdb_logic::page_more(page.more(), kvs.len());
        Ok(RangeResult { kvs, more })
    }

    pub(crate) fn set(&self, key: &[u8], value: &[u8]) {
        if self.writable(&[key.len()], value.len()) {
            self.tx.set(key, value);
        }
    }

    pub(crate) fn clear(&self, key: &[u8]) {
        if self.writable(&[key.len()], 0) {
            self.tx.clear(key);
        }
    }

    pub(crate) fn clear_range(&self, begin: &[u8], end: &[u8]) {
        // An inverted range is FoundationDB's deferred `inverted_range` (2005).
        if self.writable(&[begin.len(), end.len()], 0) {
            self.tx.clear_range(begin, end);
        }
    }

    pub(crate) fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType) {
        if self.writable(&[key.len()], param.len()) {
            self.tx.atomic_op(key, param, fdb_mutation(op));
        }
    }

    pub(crate) fn set_versionstamped_key(&self, raw_key: &[u8], value: &[u8]) {
        if let Err(e) = split_versionstamp_offset(raw_key) {
            return self.defer(Deferred::from_error(&e));
        }
        if self.writable(&[raw_key.len()], value.len()) {
            let op = options::MutationType::SetVersionstampedKey;
            debug_assert_eq!(op.code(), fdb_logic::SET_VERSIONSTAMPED_KEY_CODE);
            // FoundationDB takes the same form as the seam: the key, then the offset.
            self.tx.atomic_op(raw_key, value, op);
        }
    }

    pub(crate) fn set_versionstamped_value(&self, key: &[u8], raw_value: &[u8]) {
        if let Err(e) = split_versionstamp_offset(raw_value) {
            return self.defer(Deferred::from_error(&e));
        }
        if self.writable(&[key.len()], raw_value.len()) {
            let op = options::MutationType::SetVersionstampedValue;
            debug_assert_eq!(op.code(), fdb_logic::SET_VERSIONSTAMPED_VALUE_CODE);
            self.tx.atomic_op(key, raw_value, op);
        }
    }

    pub(crate) fn add_conflict_range(&self, begin: &[u8], end: &[u8], read: bool) {
        if fdb_logic::skip_conflict_range(begin, end) {
            return;
        }
        if let Err(e) = fdb_logic::check_ffi_lengths(&[begin.len(), end.len()], 0) {
            return self.defer(Deferred::from_error(&e));
        }
        let ty = if read {
            ConflictRangeType::Read
        } else {
            self.wrote.store(true, Ordering::Relaxed);
            ConflictRangeType::Write
        };
        // Only an inverted range (skipped above) fails here; the rest is deferred by
        // FoundationDB itself.
        if let Err(e) = self.tx.add_conflict_range(begin, end, ty) {
            self.defer(Deferred::Fdb(e));
        }
    }

    pub(crate) fn watch(&self, key: &[u8]) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = self
            .check_deferred()
            .and_then(|()| fdb_logic::check_ffi_lengths(&[key.len()], 0))
        {
            return future::ready(Err(e)).boxed();
        }
        self.tx.watch(key).map(|r| r.map_err(fdb_error)).boxed()
    }

    pub(crate) fn versionstamp(&self) -> BoxFuture<'static, Result<CommitVersionstamp>> {
        if let Err(e) = self.check_deferred() {
            return future::ready(Err(e)).boxed();
        }
        self.tx
            .get_versionstamp()
            .map(|r| {
                r.map_err(fdb_error)
                    .and_then(|s| fdb_logic::versionstamp(&s))
            })
            .boxed()
    }

    pub(crate) async fn read_version(&self) -> Result<u64> {
        self.check_deferred()?;
        let version = self.tx.get_read_version().await.map_err(fdb_error)?;
        fdb_logic::read_version(version)
    }

    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn is_read_only(&self) -> bool {
        !self.wrote.load(Ordering::Relaxed)
    }

    /// Commits. Returns the commit version, or `None` for a read-only transaction.
    pub(crate) async fn commit(self) -> Result<Option<u64>> {
        // On an error of our own the transaction is dropped uncommitted: its watches and
        // versionstamp fail with `transaction_cancelled`, as they would locally.
        self.check_deferred()?;
        match self.tx.commit().await {
            Ok(committed) => committed
                .committed_version()
                .map(fdb_logic::commit_version)
                .map_err(fdb_error),
            Err(e) => Err(fdb_error(*e)),
        }
    }
}

/// FoundationDB's mutation type for each of ours (codes cross-checked in debug builds).
fn fdb_mutation(op: MutationType) -> options::MutationType {
    let m = match op {
        MutationType::Add => options::MutationType::Add,
        MutationType::BitAnd => options::MutationType::BitAnd,
        MutationType::BitOr => options::MutationType::BitOr,
        MutationType::BitXor => options::MutationType::BitXor,
        MutationType::Max => options::MutationType::Max,
        MutationType::Min => options::MutationType::Min,
        MutationType::ByteMin => options::MutationType::ByteMin,
        MutationType::ByteMax => options::MutationType::ByteMax,
        MutationType::CompareAndClear => options::MutationType::CompareAndClear,
    };
    debug_assert_eq!(m.code(), fdb_logic::mutation_code(op), "{op:?}");
    m
}
