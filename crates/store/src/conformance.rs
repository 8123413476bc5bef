//! The conformance suite (feature `testing`): the one set of cases every backend of the seam
//! must pass. A change of semantics extends this suite, never one backend's private tests.
//!
//! # Running it
//! A [`Backend`] names a backend and opens a fresh, empty store for each case (the embedded
//! backend in a new temporary directory, kept alive by a [`Guard`]). [`conformance_tests!`]
//! expands to one `#[tokio::test]` per case, so `cargo test` names the failing case
//! (`memory::conflict_on_read_key_written_later`); the calling crate needs `tokio` with the
//! `macros` and `rt-multi-thread` features. [`run_all`] runs every case in turn.
//!
//! ```text
//! mod memory {
//!     steward_store::conformance_tests!(steward_store::conformance::Backend::memory());
//! }
//! mod memory_chaos {
//!     steward_store::conformance_tests!(
//!         steward_store::conformance::Backend::memory()
//!             .with_faults(steward_store::FaultConfig::chaos(1))
//!     );
//! }
//! ```
//! The macro also takes an `Option<Backend>`; `None` (a backend this machine cannot reach)
//! makes every case print that it was skipped.
//!
//! ```
//! # async fn demo() {
//! use steward_store::conformance::{run_all, Backend};
//! run_all(&Backend::memory()).await;
//! # }
//! ```
//!
//! # Under fault injection
//! [`Backend::with_faults`] wraps every store in [`crate::Database::with_faults`]. The cases
//! then check only what must still hold:
//! - cases built on [`crate::Database::run`] (concurrent counters, versionstamp logs, the
//!   retry loop) check exact final results: the retry loop with idempotent bodies must give
//!   them whatever the faults;
//! - cases that check single transactions run in *attempts*: an attempt that hits an error a
//!   fault can cause (conflict, too old, unknown result) starts again on an emptied store, and
//!   every check holds for the attempt the faults let through. A transaction that must fail
//!   must fail under faults too (with its own error or an injected one) and must never be
//!   applied; exact error expectations (`Conflict` and nothing else) are made without faults.
//!
//! Every store runs on a [`ManualClock`] that only the lifetime cases move, so a slow machine
//! never ages a transaction past 5 s, and no case sleeps to wait for an expiry.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, LocalBoxFuture};

use crate::limits::{MAX_KEY_SIZE, MAX_TRANSACTION_SIZE, MAX_VALUE_SIZE, MAX_WATCHES};
use crate::tuple::{self, Versionstamp};
use crate::{
    decode_counter, Committed, Database, Error, ErrorClass, FaultConfig, KeyValue, ManualClock,
    MutationType, OpenOptions, RangeOption, Result, RunOptions, TransactError, Transaction, Watch,
    DEFAULT_MAX_ATTEMPTS,
};

/// Keeps whatever a store needs alive (a temporary directory) until the case ends. It is
/// dropped after every handle on the store.
pub type Guard = Box<dyn Any + Send + Sync>;

type OpenFn = dyn Fn(OpenOptions) -> BoxFuture<'static, Result<(Database, Guard)>> + Send + Sync;

/// A backend under test: its name, how to open a fresh, empty store, and whether faults are
/// injected.
#[derive(Clone)]
pub struct Backend {
    name: String,
    open: Arc<OpenFn>,
    faults: Option<FaultConfig>,
    injected_clock: bool,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("faults", &self.faults)
            .field("injected_clock", &self.injected_clock)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A backend whose `open` gives a fresh, empty store (opened with the options it is given)
    /// and a guard to keep until the case ends.
    ///
    /// The tests [`conformance_tests!`] expands to run in parallel, so each store must be
    /// independent of the others; a backend whose stores share state (one FoundationDB
    /// cluster, wiped by `open`) must run the cases one after another with [`run_all`].
    pub fn new<F, Fut>(name: impl Into<String>, open: F) -> Backend
    where
        F: Fn(OpenOptions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(Database, Guard)>> + Send + 'static,
    {
        Backend {
            name: name.into(),
            open: Arc::new(move |options| open(options).boxed()),
            faults: None,
            injected_clock: true,
        }
    }

    /// The `memory:` backend.
    #[must_use]
    pub fn memory() -> Backend {
        Backend::new("memory", |options| async move {
            Ok((
                Database::open_with("memory:", options)?,
                Box::new(()) as Guard,
            ))
        })
    }

    /// This backend with faults injected into every transaction of the handle under test.
    #[must_use]
    pub fn with_faults(mut self, config: FaultConfig) -> Backend {
        self.name = format!("{}+faults(seed {})", self.name, config.seed);
        self.faults = Some(config);
        self
    }

    /// Marks a backend that ignores [`OpenOptions::clock`] (FoundationDB's servers keep their
    /// own time); the cases that move the clock then report themselves skipped.
    #[must_use]
    pub fn without_injected_clock(mut self) -> Backend {
        self.injected_clock = false;
        self
    }

    /// The backend's name, as the suite reports it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if faults are injected.
    #[must_use]
    pub fn injects_faults(&self) -> bool {
        self.faults.is_some()
    }

    async fn store(&self) -> Store {
        self.store_with(RunOptions {
            max_attempts: Some(DEFAULT_MAX_ATTEMPTS),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
            ..RunOptions::default()
        })
        .await
    }

    async fn store_with(&self, run: RunOptions) -> Store {
        let clock = ManualClock::new(START_WALL_MICROS);
        let options = OpenOptions {
            clock: clock.shared(),
            seed: Some(0x5eed),
            run,
            ..OpenOptions::default()
        };
        let (observer, guard) = (self.open)(options)
            .await
            .unwrap_or_else(|e| panic!("{}: opening a fresh store failed: {e}", self.name));
        let db = match &self.faults {
            Some(config) => observer.with_faults(config.clone()),
            None => observer.clone(),
        };
        Store {
            db,
            observer,
            clock,
            faults: self.faults.is_some(),
            injected_clock: self.injected_clock,
            _guard: guard,
        }
    }
}

/// One case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name (its function's name).
    pub name: &'static str,
    /// Runs the case on a backend; panics if the backend fails it.
    pub run: for<'a> fn(&'a Backend) -> LocalBoxFuture<'a, ()>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// The one list of cases. Calls `$callback! { $args case, case, ... }`.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    (($($callback:tt)*) $args:tt) => {
        $($callback)*! { $args
            committed_writes_are_visible_to_later_transactions,
            uncommitted_and_dropped_transactions_change_nothing,
            clear_range_removes_exactly_the_keys_in_range,
            reads_see_own_sets_clears_and_atomic_ops,
            range_reads_merge_pending_writes_in_order,
            cleared_range_hides_stored_keys_until_rewritten,
            range_reads_respect_limits_and_direction,
            empty_and_inverted_ranges_read_nothing,
            range_begin_is_inclusive_and_end_is_exclusive,
            paging_with_next_page_visits_every_key_once,
            conflict_on_read_key_written_later,
            reads_of_keys_written_before_the_read_version_do_not_conflict,
            snapshot_reads_add_no_conflict,
            serializable_range_read_conflicts_with_a_later_insert_into_the_range,
            limited_range_read_conflicts_only_up_to_the_last_returned_key,
            explicit_read_conflict_ranges_and_keys_conflict,
            every_kind_of_write_conflicts_with_a_serializable_reader,
            blind_writes_never_conflict,
            read_only_commit_has_no_version_and_never_conflicts,
            transactions_read_one_consistent_snapshot,
            concurrent_atomic_adds_sum_exactly,
            atomic_ops_follow_foundationdb_semantics_end_to_end,
            versionstamped_keys_are_unique_and_in_commit_order,
            concurrent_versionstamped_appends_never_collide,
            versionstamp_future_matches_the_stamp_in_keys_and_values,
            versionstamped_writes_are_unreadable_in_their_own_transaction,
            versionstamp_of_a_transaction_that_does_not_commit_is_an_error,
            invalid_versionstamp_offset_fails_the_commit,
            watch_fires_after_another_transaction_changes_the_key_not_before,
            watch_fires_when_the_key_is_cleared_or_changed_atomically,
            watch_of_a_transaction_that_does_not_commit_fails,
            watch_fires_at_once_when_the_key_changed_before_its_commit,
            watches_beyond_the_limit_fail_with_too_many_watches,
            key_size_limit_is_ten_thousand_bytes,
            value_size_limit_is_one_hundred_thousand_bytes,
            transaction_size_limit_is_ten_million_bytes,
            keys_at_or_above_xff_are_outside_the_legal_range,
            an_invalid_write_poisons_the_whole_transaction,
            transactions_expire_five_seconds_after_their_first_read,
            run_retries_retryable_errors_through_a_user_error_enum,
            run_returns_permanent_and_user_errors_at_once,
            run_gives_up_after_max_attempts,
            maybe_committed_flag_stays_set_for_later_attempts,
            idempotent_body_applies_once_despite_unknown_results,
            unknown_result_without_a_marker_check_can_apply_twice,
            commit_with_a_kept_clone_fails_with_reference_to_transaction_kept,
        }
    };
}

/// Expands to one `#[tokio::test]` per conformance case, each running the case on the backend
/// the expression gives (a [`Backend`], or an `Option<Backend>` where `None` skips). Invoke it
/// inside a module named after the backend.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::__store_conformance_cases!(($crate::__store_conformance_tests) { $backend });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_tests {
    ({ $backend:expr } $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend: ::std::option::Option<$crate::conformance::Backend> =
                    ::std::convert::From::from($backend);
                match backend {
                    ::std::option::Option::Some(backend) => {
                        $crate::conformance::$case(&backend).await;
                    }
                    ::std::option::Option::None => {
                        ::std::eprintln!("skipped: the backend is not available here");
                    }
                }
            }
        )*
    };
}

macro_rules! case_table {
    ({} $($case:ident),* $(,)?) => {
        /// Every case of the suite, in the order [`run_all`] runs them.
        pub const CASES: &[Case] = &[$(Case {
            name: stringify!($case),
            run: |backend| Box::pin($case(backend)),
        }),*];
    };
}
crate::__store_conformance_cases!((case_table) {});

/// Runs every case on `backend`, each on a fresh store, and panics at the first that fails.
pub async fn run_all(backend: &Backend) {
    for case in CASES {
        eprintln!("conformance [{}]: {}", backend.name(), case.name);
        (case.run)(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The store a case works on, and its helpers.

/// The wall time the manual clock starts at (2026-01-01T00:00:00Z).
const START_WALL_MICROS: i64 = 1_767_225_600_000_000;
/// Upper bound for anything a case awaits (a watch, a versionstamp); never a sleep.
const WAIT: Duration = Duration::from_secs(10);
/// Attempts of a single-transaction check under fault injection.
const ATTEMPTS_UNDER_FAULTS: u32 = 60;

struct Store {
    /// The handle under test (faults injected, if the backend injects them).
    db: Database,
    /// A fault-free handle on the same store, to arrange and check its state.
    observer: Database,
    clock: ManualClock,
    faults: bool,
    injected_clock: bool,
    // Dropped last, after both handles.
    _guard: Guard,
}

/// The errors the fault layer injects.
fn injectable(e: &Error) -> bool {
    matches!(
        e,
        Error::Conflict | Error::TransactionTooOld | Error::CommitUnknownResult
    )
}

impl Store {
    fn tx(&self) -> Transaction {
        self.db
            .create_transaction()
            .expect("creating a transaction")
    }

    /// Runs `attempt` until it succeeds. Without faults it must succeed the first time. Under
    /// fault injection an attempt that ends with an error a fault can cause is run again on an
    /// emptied store, so each attempt arranges its own data.
    async fn attempts<F, Fut>(&self, mut attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        for n in 1..=ATTEMPTS_UNDER_FAULTS {
            if n > 1 {
                self.wipe().await;
            }
            match attempt().await {
                Ok(()) => return,
                Err(e) if self.faults && injectable(&e) => {}
                Err(e) => panic!("attempt {n} failed: {e} ({e:?})"),
            }
        }
        panic!("still failing after {ATTEMPTS_UNDER_FAULTS} attempts under fault injection");
    }

    /// `result` must be the error `expected` names. Under fault injection an injected error
    /// instead ends the attempt (see [`Store::attempts`]); any other outcome fails the case.
    #[track_caller]
    fn expect_err<T: fmt::Debug>(
        &self,
        result: Result<T>,
        expected: &str,
        is_expected: impl Fn(&Error) -> bool,
    ) -> Result<Error> {
        match result {
            Err(e) if is_expected(&e) => Ok(e),
            Err(e) if self.faults && injectable(&e) => Err(e),
            other => panic!("expected {expected}, got {other:?}"),
        }
    }

    /// `result` must be a conflict, which is retryable. Under fault injection an injected
    /// conflict counts too.
    #[track_caller]
    fn expect_conflict(&self, result: Result<Committed>) -> Result<()> {
        self.expect_conflict_after("", result)
    }

    /// [`Store::expect_conflict`], naming what caused it.
    #[track_caller]
    fn expect_conflict_after(&self, cause: &str, result: Result<Committed>) -> Result<()> {
        let expected = format!("a conflict (1020 not_committed) {cause}");
        let e = self.expect_err(result, &expected, |e| matches!(e, Error::Conflict))?;
        assert_eq!(e.class(), ErrorClass::Retryable, "a conflict is retryable");
        Ok(())
    }

    /// Commits through the fault-free handle whatever `write` does.
    async fn write(&self, write: impl Fn(&Transaction)) {
        self.observer
            .run(|tx, _| {
                write(&tx);
                drop(tx);
                std::future::ready(Ok::<(), Error>(()))
            })
            .await
            .expect("arranging the store (fault-free) failed");
    }

    async fn put(&self, pairs: &[(&[u8], &[u8])]) {
        self.write(|tx| {
            for (k, v) in pairs {
                tx.set(k, v);
            }
        })
        .await;
    }

    async fn wipe(&self) {
        self.write(|tx| tx.clear_range(b"", b"\xff")).await;
    }

    /// The committed value of `key`, read through the fault-free handle.
    async fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        let tx = self
            .observer
            .create_transaction()
            .expect("creating a transaction");
        tx.get(key, true).await.expect("fault-free read failed")
    }

    async fn read_counter(&self, key: &[u8]) -> i64 {
        decode_counter(self.read(key).await.as_deref())
    }

    /// The committed pairs of a range, read through the fault-free handle.
    async fn read_range(&self, opt: &RangeOption) -> Vec<KeyValue> {
        let tx = self
            .observer
            .create_transaction()
            .expect("creating a transaction");
        tx.get_range_all(opt).await.expect("fault-free read failed")
    }

    /// Skips a case that moves the clock on a backend that does not take an injected clock.
    fn skip_without_injected_clock(&self) -> bool {
        if !self.injected_clock {
            eprintln!("skipped: this backend does not take an injected clock");
        }
        !self.injected_clock
    }
}

/// A write a case applies to a transaction.
type Write = fn(&Transaction);
/// A write of a given key or value.
type WriteOf = fn(&Transaction, &[u8]);

fn kv(key: &[u8], value: &[u8]) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<Vec<u8>> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

fn le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// `k00`, `k01`, ...
fn k(i: usize) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn log_prefix() -> Vec<u8> {
    tuple::pack(&("log",))
}

/// A log key whose versionstamp is filled in at commit.
fn log_key(user_version: u16) -> Vec<u8> {
    tuple::pack_with_versionstamp(&("log", Versionstamp::incomplete(user_version)))
}

fn unpack_log_key(key: &[u8]) -> Versionstamp {
    let (name, stamp): (String, Versionstamp) =
        tuple::unpack(key).expect("a log key unpacks as (\"log\", versionstamp)");
    assert_eq!(name, "log");
    stamp
}

/// A raw versionstamped value: `prefix`, the 10-byte placeholder, its 4-byte offset.
fn raw_stamped(prefix: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(&[0; 10]);
    let offset = u32::try_from(prefix.len()).expect("short prefix");
    v.extend_from_slice(&offset.to_le_bytes());
    v
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task failed: {e}"),
        }
    }
    out
}

fn is_pending(watch: &mut Watch) -> bool {
    futures::FutureExt::now_or_never(watch).is_none()
}

/// A store error wrapped in a caller's own error enum, as layers above the store do.
#[derive(Debug)]
enum AppError {
    Store(Error),
    Rejected(&'static str),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Store(e)
    }
}

impl TransactError for AppError {
    fn store_error(&self) -> Option<&Error> {
        match self {
            AppError::Store(e) => Some(e),
            AppError::Rejected(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Basic reads and writes.

/// Committed writes (empty values, binary keys, the empty key) are visible to transactions
/// that start afterwards, which read at or after the commit's version.
pub async fn committed_writes_are_visible_to_later_transactions(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        let tx = s.tx();
        tx.set(b"a", b"1");
        tx.set(b"empty", b"");
        tx.set(b"bin\x00\xfe", b"\x00\xff");
        tx.set(b"", b"the empty key");
        let first = tx.commit().await?;
        let v1 = first
            .version
            .expect("a transaction that writes has a commit version");

        let tx = s.tx();
        let rv = tx.read_version().await?;
        assert!(rv >= v1, "read version {rv} is before the last commit {v1}");
        assert_eq!(tx.get(b"a", false).await?, Some(b"1".to_vec()));
        assert_eq!(
            tx.get(b"empty", false).await?,
            Some(vec![]),
            "an empty value is a value, not a missing key"
        );
        assert_eq!(
            tx.get(b"bin\x00\xfe", false).await?,
            Some(b"\x00\xff".to_vec())
        );
        assert_eq!(tx.get(b"", false).await?, Some(b"the empty key".to_vec()));
        assert_eq!(tx.get(b"missing", false).await?, None);
        tx.set(b"a", b"2");
        let second = tx.commit().await?;
        assert!(
            second.version > first.version,
            "commit versions increase: {second:?} after {first:?}"
        );
        assert_eq!(s.read(b"a").await, Some(b"2".to_vec()));
        Ok(())
    })
    .await;
}

/// Writes are invisible to others until commit; a dropped transaction applies nothing.
pub async fn uncommitted_and_dropped_transactions_change_nothing(backend: &Backend) {
    let s = &backend.store().await;
    s.put(&[(b"a", b"1")]).await;
    let tx = s.tx();
    tx.set(b"a", b"2");
    tx.set(b"b", b"2");
    tx.add(b"c", 1);
    tx.clear_range(b"", b"a\x00");
    assert_eq!(
        s.read(b"a").await,
        Some(b"1".to_vec()),
        "uncommitted set is visible"
    );
    assert_eq!(s.read(b"b").await, None, "uncommitted set is visible");
    drop(tx);
    assert_eq!(
        s.read(b"a").await,
        Some(b"1".to_vec()),
        "dropped transaction applied"
    );
    assert_eq!(s.read(b"b").await, None, "dropped transaction applied");
    assert_eq!(s.read(b"c").await, None, "dropped transaction applied");
}

/// `clear_range` clears `[begin, end)` and nothing else; an empty range is a no-op, an
/// inverted one fails the commit (FoundationDB 2005) without applying anything.
pub async fn clear_range_removes_exactly_the_keys_in_range(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[
            (b"a", b"1"),
            (b"b", b"1"),
            (b"c", b"1"),
            (b"d", b"1"),
            (b"e", b"1"),
        ])
        .await;
        let tx = s.tx();
        tx.clear_range(b"b", b"d");
        tx.clear_range(b"e", b"e");
        tx.commit().await?;
        let left = s
            .read_range(&RangeOption::new(b"".to_vec(), b"\xff".to_vec()))
            .await;
        assert_eq!(
            keys(&left),
            vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()]
        );

        let tx = s.tx();
        tx.set(b"z", b"1");
        tx.clear_range(b"d", b"b");
        let e = s.expect_err(tx.commit().await, "InvertedRange", |e| {
            matches!(e, Error::InvertedRange)
        })?;
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(s.read(b"z").await, None, "a failed commit applied a write");

        let tx = s.tx();
        tx.clear_range(b"", b"\xff");
        tx.commit().await?;
        assert!(s.read_range(&RangeOption::prefix(b"")).await.is_empty());
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Read your writes.

/// Point reads, serializable and snapshot, see the transaction's own sets, clears,
/// clear_ranges and atomic ops, and exactly that is committed.
pub async fn reads_see_own_sets_clears_and_atomic_ops(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[
            (b"a", b"old"),
            (b"b", b"old"),
            (b"c", &le(5)),
            (b"f", b"old"),
            (b"g", b"old"),
        ])
        .await;
        let tx = s.tx();
        tx.set(b"a", b"new");
        tx.clear(b"b");
        tx.add(b"c", 3);
        tx.add(b"d", 7);
        tx.set(b"e", b"x");
        tx.clear(b"e");
        tx.clear_range(b"f", b"h");
        tx.set(b"g", b"again");
        tx.atomic_op(b"f", &le(9), MutationType::Add);
        let expected: [(&[u8], Option<Vec<u8>>); 7] = [
            (b"a", Some(b"new".to_vec())),
            (b"b", None),
            (b"c", Some(le(8))),
            (b"d", Some(le(7))),
            (b"e", None),
            (b"f", Some(le(9))),
            (b"g", Some(b"again".to_vec())),
        ];
        for (key, want) in &expected {
            let key_str = String::from_utf8_lossy(key);
            assert_eq!(
                &tx.get(key, false).await?,
                want,
                "serializable read of {key_str}"
            );
            assert_eq!(
                &tx.get(key, true).await?,
                want,
                "snapshot read of {key_str}"
            );
        }
        tx.commit().await?;
        for (key, want) in &expected {
            let key_str = String::from_utf8_lossy(key);
            assert_eq!(&s.read(key).await, want, "committed value of {key_str}");
        }
        Ok(())
    })
    .await;
}

/// Range reads merge pending writes with stored pairs, in both directions, with limits and
/// paging, and show exactly what the commit then stores.
pub async fn range_reads_merge_pending_writes_in_order(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[
            (b"a", &le(1)),
            (b"c", &le(3)),
            (b"e", &le(5)),
            (b"g", &le(7)),
            (b"i", &le(9)),
        ])
        .await;
        let tx = s.tx();
        tx.set(b"b", &le(2));
        tx.set(b"c", &le(30));
        tx.clear(b"e");
        tx.add(b"g", 1);
        tx.clear_range(b"i", b"j");
        tx.set(b"ia", &le(99));
        tx.add(b"k", 4);
        let want = vec![
            kv(b"a", &le(1)),
            kv(b"b", &le(2)),
            kv(b"c", &le(30)),
            kv(b"g", &le(8)),
            kv(b"ia", &le(99)),
            kv(b"k", &le(4)),
        ];
        let mut reversed = want.clone();
        reversed.reverse();
        let all = RangeOption::new(b"a".to_vec(), b"z".to_vec());

        let page = tx.get_range(&all).await?;
        assert_eq!(page.kvs, want, "forward");
        assert!(!page.more);
        assert_eq!(
            tx.get_range(&all.clone().snapshot()).await?.kvs,
            want,
            "snapshot"
        );
        assert_eq!(
            tx.get_range(&all.clone().reverse()).await?.kvs,
            reversed,
            "reverse"
        );
        let first3 = tx.get_range(&all.clone().limit(3)).await?;
        assert_eq!(first3.kvs, want[..3].to_vec(), "forward, limit 3");
        assert!(
            first3.more,
            "a page cut by its limit says there may be more"
        );
        let last3 = tx.get_range(&all.clone().limit(3).reverse()).await?;
        assert_eq!(last3.kvs, reversed[..3].to_vec(), "reverse, limit 3");
        let inner = RangeOption::new(b"b".to_vec(), b"h".to_vec());
        assert_eq!(
            tx.get_range(&inner).await?.kvs,
            want[1..4].to_vec(),
            "[b, h)"
        );
        assert_eq!(
            tx.get_range_all(&all.clone().limit(2)).await?,
            want,
            "pages of 2"
        );
        assert_eq!(
            tx.get_range_all(&all.clone().limit(2).reverse()).await?,
            reversed,
            "reverse pages of 2"
        );
        tx.commit().await?;
        assert_eq!(s.read_range(&all).await, want, "committed");
        Ok(())
    })
    .await;
}

/// A cleared range hides stored keys from point and range reads, in both directions; keys
/// written after the clear show; an atomic op on a cleared key starts from nothing.
pub async fn cleared_range_hides_stored_keys_until_rewritten(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.write(|tx| {
            for i in 0..10 {
                tx.set(&k(i), &le(100));
            }
        })
        .await;
        let tx = s.tx();
        tx.clear_range(&k(2), &k(7));
        tx.set(&k(4), b"back");
        tx.atomic_op(&k(5), &le(1), MutationType::Add);
        assert_eq!(tx.get(&k(3), false).await?, None);
        assert_eq!(tx.get(&k(6), true).await?, None);
        assert_eq!(
            tx.get(&k(5), false).await?,
            Some(le(1)),
            "add over a cleared key"
        );
        let want: Vec<Vec<u8>> = [0, 1, 4, 5, 7, 8, 9].iter().map(|&i| k(i)).collect();
        let all = RangeOption::new(k(0), k(99));
        assert_eq!(keys(&tx.get_range(&all).await?.kvs), want);
        let mut reversed = want.clone();
        reversed.reverse();
        assert_eq!(
            keys(&tx.get_range(&all.clone().reverse()).await?.kvs),
            reversed
        );
        let two = tx
            .get_range(&RangeOption::new(k(1), k(99)).limit(2))
            .await?;
        assert_eq!(
            keys(&two.kvs),
            vec![k(1), k(4)],
            "limit counts only visible pairs"
        );
        tx.commit().await?;
        assert_eq!(keys(&s.read_range(&all).await), want);
        assert_eq!(s.read(&k(5)).await, Some(le(1)));
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Range reads.

/// Limits cut a range from its start (or, reversed, from its end); `more` says when a limit
/// cut it; a limit of zero reads nothing.
pub async fn range_reads_respect_limits_and_direction(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.write(|tx| {
            for i in 0..10 {
                tx.set(&k(i), &le(i as u64));
            }
        })
        .await;
        let tx = s.tx();
        let range = RangeOption::new(k(2), k(7));
        let all = tx.get_range(&range).await?;
        assert_eq!(keys(&all.kvs), (2..7).map(k).collect::<Vec<_>>());
        assert_eq!(all.kvs[0].value, le(2));
        assert!(!all.more, "a range read to its end has no more");

        let head = tx.get_range(&range.clone().limit(2)).await?;
        assert_eq!(keys(&head.kvs), vec![k(2), k(3)]);
        assert!(head.more);
        let tail = tx.get_range(&range.clone().limit(2).reverse()).await?;
        assert_eq!(keys(&tail.kvs), vec![k(6), k(5)]);
        assert!(tail.more);
        let reversed = tx.get_range(&range.clone().reverse()).await?;
        assert_eq!(keys(&reversed.kvs), (2..7).rev().map(k).collect::<Vec<_>>());

        let roomy = tx.get_range(&range.clone().limit(6)).await?;
        assert_eq!(roomy.kvs.len(), 5);
        assert!(
            !roomy.more,
            "a limit the range did not reach leaves no more"
        );
        let zero = tx.get_range(&range.clone().limit(0)).await?;
        assert!(
            zero.kvs.is_empty(),
            "limit 0 reads nothing (not everything)"
        );
        assert!(!zero.more);
        assert!(tx.get_range_all(&range.clone().limit(0)).await?.is_empty());
        Ok(())
    })
    .await;
}

/// An empty range, a range with no keys and an inverted range (begin after end) read
/// nothing, in both directions, and are not errors.
pub async fn empty_and_inverted_ranges_read_nothing(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"b", b"1")]).await;
        let tx = s.tx();
        for (begin, end) in [
            (&b"b"[..], &b"b"[..]),
            (b"c", b"d"),
            (b"a", b"b"),
            (b"c", b"a"),
            (b"b\x00", b"b"),
        ] {
            for reverse in [false, true] {
                let mut opt = RangeOption::new(begin.to_vec(), end.to_vec());
                opt.reverse = reverse;
                let page = tx.get_range(&opt).await?;
                assert!(page.kvs.is_empty(), "{opt:?} read {:?}", page.kvs);
                assert!(!page.more, "{opt:?} says there is more");
                assert!(tx.get_range_all(&opt.clone().limit(1)).await?.is_empty());
            }
        }
        let just_b = tx
            .get_range(&RangeOption::new(b"b".to_vec(), b"b\x00".to_vec()))
            .await?;
        assert_eq!(just_b.kvs, vec![kv(b"b", b"1")]);
        Ok(())
    })
    .await;
}

/// `begin` is inclusive and `end` exclusive, in byte order, including the empty key, zero
/// bytes and prefixes.
pub async fn range_begin_is_inclusive_and_end_is_exclusive(backend: &Backend) {
    let s = &backend.store().await;
    let stored: [&[u8]; 7] = [b"", b"a", b"a\x00", b"a\x01", b"a\xff", b"b", b"b\x00"];
    s.attempts(|| async move {
        s.write(|tx| {
            for key in stored {
                tx.set(key, b"v");
            }
        })
        .await;
        let tx = s.tx();
        let read = |begin: &'static [u8], end: &'static [u8]| {
            let tx = tx.clone();
            async move {
                let kvs = tx
                    .get_range(&RangeOption::new(begin.to_vec(), end.to_vec()))
                    .await?;
                Ok::<_, Error>(keys(&kvs.kvs))
            }
        };
        let v = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            read(b"a", b"b").await?,
            v(&[b"a", b"a\x00", b"a\x01", b"a\xff"])
        );
        assert_eq!(
            read(b"a\x00", b"b\x00").await?,
            v(&[b"a\x00", b"a\x01", b"a\xff", b"b"])
        );
        assert_eq!(read(b"", b"a").await?, v(&[b""]));
        assert_eq!(read(b"a\x01", b"a\xff").await?, v(&[b"a\x01"]));
        assert_eq!(read(b"", b"\xff").await?, v(&stored));
        let prefix = tx.get_range(&RangeOption::prefix(b"a")).await?;
        assert_eq!(keys(&prefix.kvs), v(&[b"a", b"a\x00", b"a\x01", b"a\xff"]));
        let all = tx.get_range(&RangeOption::prefix(b"")).await?;
        assert_eq!(
            keys(&all.kvs),
            v(&stored),
            "the empty prefix is the whole keyspace"
        );
        Ok(())
    })
    .await;
}

/// Paging with [`crate::RangeResult::next_page`] (and `get_range_all`) visits every key once,
/// in order, forwards and backwards, with pending writes merged in.
pub async fn paging_with_next_page_visits_every_key_once(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.write(|tx| {
            for i in 0..25 {
                tx.set(&k(i), &le(i as u64));
            }
        })
        .await;
        let tx = s.tx();
        for reverse in [false, true] {
            let mut opt = RangeOption::new(k(0), k(99)).limit(10);
            opt.reverse = reverse;
            let mut next = Some(opt);
            let mut sizes = Vec::new();
            let mut seen = Vec::new();
            while let Some(o) = next {
                let page = tx.get_range(&o).await?;
                next = page.next_page(&o);
                sizes.push(page.kvs.len());
                seen.extend(keys(&page.kvs));
                assert!(sizes.len() <= 4, "paging does not end: {sizes:?}");
            }
            let mut want: Vec<Vec<u8>> = (0..25).map(k).collect();
            if reverse {
                want.reverse();
            }
            assert_eq!(sizes, vec![10, 10, 5], "page sizes (reverse: {reverse})");
            assert_eq!(seen, want, "keys seen (reverse: {reverse})");
        }
        // Five more keys, pending in the transaction: 30 in all, a multiple of the limit.
        for i in 25..30 {
            tx.set(&k(i), &le(i as u64));
        }
        let want: Vec<Vec<u8>> = (0..30).map(k).collect();
        let forward = tx
            .get_range_all(&RangeOption::new(k(0), k(99)).limit(10))
            .await?;
        assert_eq!(keys(&forward), want);
        let backward = tx
            .get_range_all(&RangeOption::new(k(0), k(99)).limit(7).reverse())
            .await?;
        let mut reversed = want.clone();
        reversed.reverse();
        assert_eq!(keys(&backward), reversed);
        assert_eq!(backward[0].value, le(29));
        assert_eq!(
            keys(&tx.get_range_all(&RangeOption::new(k(0), k(99))).await?),
            want
        );
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Conflicts.

/// A serializable read of a key that a later commit wrote makes the commit fail with a
/// retryable conflict (1020), and nothing of the transaction is applied.
pub async fn conflict_on_read_key_written_later(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"1")]).await;
        let tx = s.tx();
        assert_eq!(tx.get(b"k", false).await?, Some(b"1".to_vec()));
        s.put(&[(b"k", b"2")]).await;
        tx.set(b"x", b"1");
        s.expect_conflict(tx.commit().await)?;
        assert_eq!(
            s.read(b"x").await,
            None,
            "a conflicting transaction was applied"
        );
        Ok(())
    })
    .await;
}

/// Writes committed before a transaction's read version, and later writes to keys it did not
/// read, do not conflict.
pub async fn reads_of_keys_written_before_the_read_version_do_not_conflict(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"1")]).await;
        let tx = s.tx();
        assert_eq!(tx.get(b"k", false).await?, Some(b"1".to_vec()));
        s.put(&[(b"other", b"1"), (b"k\x00", b"1"), (b"j\xff", b"1")])
            .await;
        tx.set(b"x", b"1");
        tx.commit().await?;
        assert_eq!(s.read(b"x").await, Some(b"1".to_vec()));
        Ok(())
    })
    .await;
}

/// Snapshot reads (point and range) add no read conflict.
pub async fn snapshot_reads_add_no_conflict(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"1"), (b"r/1", b"1")]).await;
        let tx = s.tx();
        assert_eq!(tx.get(b"k", true).await?, Some(b"1".to_vec()));
        assert_eq!(tx.get(b"missing", true).await?, None);
        let r = tx.get_range(&RangeOption::prefix(b"r/").snapshot()).await?;
        assert_eq!(r.kvs.len(), 1);
        s.put(&[(b"k", b"2"), (b"missing", b"2"), (b"r/2", b"2")])
            .await;
        s.write(|w| w.clear(b"r/1")).await;
        tx.set(b"x", b"1");
        tx.commit().await?;
        assert_eq!(s.read(b"x").await, Some(b"1".to_vec()));
        Ok(())
    })
    .await;
}

/// A serializable range read conflicts with a later insert anywhere in the range (a phantom),
/// but not with writes just outside it.
pub async fn serializable_range_read_conflicts_with_a_later_insert_into_the_range(
    backend: &Backend,
) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"r/1", b"1")]).await;
        let tx = s.tx();
        assert_eq!(
            tx.get_range(&RangeOption::prefix(b"r/")).await?.kvs.len(),
            1
        );
        s.put(&[(b"r/5", b"1")]).await;
        tx.set(b"x", b"1");
        s.expect_conflict(tx.commit().await)?;
        assert_eq!(s.read(b"x").await, None);

        let tx = s.tx();
        assert_eq!(
            tx.get_range(&RangeOption::prefix(b"r/")).await?.kvs.len(),
            2
        );
        s.put(&[(b"r0", b"1"), (b"r.", b"1")]).await;
        tx.set(b"y", b"1");
        tx.commit().await?;
        assert_eq!(s.read(b"y").await, Some(b"1".to_vec()));
        Ok(())
    })
    .await;
}

/// A range read cut by its limit conflicts only up to the last key it returned (from the
/// start, or reversed, from the end), that key included.
pub async fn limited_range_read_conflicts_only_up_to_the_last_returned_key(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"a", b"1"), (b"b", b"1"), (b"c", b"1"), (b"d", b"1")])
            .await;
        let range = RangeOption::new(b"a".to_vec(), b"z".to_vec());
        // (reverse, key written by another transaction, expect a conflict)
        let cases: [(bool, &[u8], bool); 6] = [
            (false, b"c", false),
            (false, b"b\x00", false),
            (false, b"b", true),
            (false, b"ab", true),
            (true, b"b", false),
            (true, b"c", true),
        ];
        for (reverse, written, conflicts) in cases {
            let mut opt = range.clone().limit(2);
            opt.reverse = reverse;
            let tx = s.tx();
            let page = tx.get_range(&opt).await?;
            let want: Vec<Vec<u8>> = if reverse {
                vec![b"d".to_vec(), b"c".to_vec()]
            } else {
                vec![b"a".to_vec(), b"b".to_vec()]
            };
            assert_eq!(keys(&page.kvs), want);
            // Overwrite (or insert) the key, then restore the set of keys for the next case.
            s.put(&[(written, b"2")]).await;
            tx.set(b"x", b"1");
            let result = tx.commit().await;
            let what = format!(
                "reverse {reverse}, write to {:?}",
                String::from_utf8_lossy(written)
            );
            if conflicts {
                s.expect_conflict(result)?;
                assert_eq!(
                    s.read(b"x").await,
                    None,
                    "{what}: applied despite the conflict"
                );
            } else {
                result?;
                s.write(|w| w.clear(b"x")).await;
            }
            if !matches!(written, b"a" | b"b" | b"c" | b"d") {
                s.write(|w| w.clear(written)).await;
            }
        }
        Ok(())
    })
    .await;
}

/// `add_read_conflict_key` and `add_read_conflict_range` conflict as reads would, with the
/// range's end exclusive.
pub async fn explicit_read_conflict_ranges_and_keys_conflict(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        // (conflict key or range, key written later, expect a conflict)
        type Case = (&'static [u8], Option<&'static [u8]>, &'static [u8], bool);
        let cases: [Case; 4] = [
            (b"k", None, b"k", true),
            (b"m", Some(b"p"), b"n", true),
            (b"m", Some(b"p"), b"m", true),
            (b"m", Some(b"p"), b"p", false),
        ];
        for (begin, end, written, conflicts) in cases {
            let tx = s.tx();
            tx.read_version().await?;
            match end {
                None => tx.add_read_conflict_key(begin),
                Some(end) => tx.add_read_conflict_range(begin, end),
            }
            s.put(&[(written, b"1")]).await;
            tx.set(b"x", b"1");
            let result = tx.commit().await;
            if conflicts {
                s.expect_conflict(result)?;
                assert_eq!(s.read(b"x").await, None);
            } else {
                result?;
                assert_eq!(s.read(b"x").await, Some(b"1".to_vec()));
            }
        }
        Ok(())
    })
    .await;
}

/// Every kind of write (set, clear, clear_range, atomic op, versionstamped key or value, an
/// explicit write conflict range without any mutation) conflicts with a transaction that read
/// what it touched.
pub async fn every_kind_of_write_conflicts_with_a_serializable_reader(backend: &Backend) {
    let s = &backend.store().await;
    let writers: [(&str, Write); 8] = [
        ("set", |w| w.set(b"k", b"2")),
        ("clear", |w| w.clear(b"k")),
        ("clear_range", |w| w.clear_range(b"j", b"l")),
        ("atomic add", |w| w.add(b"k", 1)),
        ("compare_and_clear", |w| {
            w.atomic_op(b"k", &le(1), MutationType::CompareAndClear);
        }),
        ("versionstamped value", |w| {
            w.set_versionstamped_value(b"k", &raw_stamped(b""));
        }),
        ("versionstamped key", |w| {
            w.set_versionstamped_key(&log_key(0), b"")
        }),
        ("write conflict range", |w| {
            w.add_write_conflict_range(b"j", b"l")
        }),
    ];
    for (what, write) in writers {
        s.attempts(|| async move {
            s.put(&[(b"k", &le(1))]).await;
            let tx = s.tx();
            tx.get(b"k", false).await?;
            tx.get_range(&RangeOption::prefix(&log_prefix())).await?;
            s.write(write).await;
            tx.set(b"x", b"1");
            s.expect_conflict_after(&format!("after a {what}"), tx.commit().await)?;
            assert_eq!(
                s.read(b"x").await,
                None,
                "{what}: applied despite the conflict"
            );
            if what == "write conflict range" {
                assert_eq!(
                    s.read(b"k").await,
                    Some(le(1)),
                    "a conflict range wrote data"
                );
            }
            s.wipe().await;
            Ok(())
        })
        .await;
    }
}

/// Writes without reads never conflict: the last commit wins for sets, atomic ops combine,
/// and a clear_range applies at its own commit.
pub async fn blind_writes_never_conflict(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"old"), (b"c", &le(10))]).await;
        let tx = s.tx();
        tx.get(b"unrelated", false).await?;
        tx.set(b"k", b"mine");
        tx.add(b"c", 5);
        tx.clear_range(b"r/", b"r0");
        tx.set_versionstamped_key(&log_key(0), b"mine");
        s.put(&[(b"k", b"theirs"), (b"r/1", b"theirs")]).await;
        s.write(|w| {
            w.add(b"c", 100);
            w.set_versionstamped_key(&log_key(0), b"theirs");
        })
        .await;
        tx.commit().await?;
        assert_eq!(
            s.read(b"k").await,
            Some(b"mine".to_vec()),
            "the last commit wins"
        );
        assert_eq!(s.read_counter(b"c").await, 115, "atomic adds combine");
        assert_eq!(s.read(b"r/1").await, None, "the later clear_range wins");
        assert_eq!(
            s.read_range(&RangeOption::prefix(&log_prefix()))
                .await
                .len(),
            2
        );
        Ok(())
    })
    .await;
}

/// A transaction that wrote nothing commits without a version, even when what it read has
/// changed; one that wrote gets a version after its read version.
pub async fn read_only_commit_has_no_version_and_never_conflicts(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"1")]).await;
        let tx = s.tx();
        tx.get(b"k", false).await?;
        tx.get_range(&RangeOption::prefix(b"")).await?;
        tx.add_read_conflict_range(b"a", b"z");
        s.put(&[(b"k", b"2")]).await;
        assert_eq!(tx.commit().await?, Committed { version: None });

        let untouched = s.tx();
        assert_eq!(untouched.commit().await?, Committed { version: None });

        let tx = s.tx();
        let rv = tx.read_version().await?;
        tx.set(b"x", b"1");
        let version = tx
            .commit()
            .await?
            .version
            .expect("a write commit has a version");
        assert!(
            version > rv,
            "commit version {version} not after read version {rv}"
        );
        Ok(())
    })
    .await;
}

/// All reads of a transaction see one snapshot: commits after its first read are invisible
/// to it (point and range), and visible to the next transaction.
pub async fn transactions_read_one_consistent_snapshot(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"1"), (b"r/1", b"1")]).await;
        let tx = s.tx();
        assert_eq!(tx.get(b"k", true).await?, Some(b"1".to_vec()));
        s.put(&[(b"k", b"2"), (b"r/2", b"2")]).await;
        s.write(|w| w.clear(b"r/1")).await;
        assert_eq!(tx.get(b"k", false).await?, Some(b"1".to_vec()));
        assert_eq!(tx.get(b"k", true).await?, Some(b"1".to_vec()));
        let r = tx.get_range(&RangeOption::prefix(b"r/")).await?;
        assert_eq!(r.kvs, vec![kv(b"r/1", b"1")]);
        drop(tx);
        let next = s.tx();
        assert_eq!(next.get(b"k", false).await?, Some(b"2".to_vec()));
        let r = next.get_range(&RangeOption::prefix(b"r/")).await?;
        assert_eq!(r.kvs, vec![kv(b"r/2", b"2")]);
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Atomic operations.

/// Many tasks adding to the same counters through `Database::run` (idempotently, with a
/// marker checked when the commit may have happened) give exact totals.
pub async fn concurrent_atomic_adds_sum_exactly(backend: &Backend) {
    const TASKS: i64 = 16;
    const ADDS: i64 = 8;
    let s = &backend.store().await;
    let handles = (0..TASKS)
        .map(|task| {
            let db = s.db.clone();
            tokio::spawn(async move {
                for i in 0..ADDS {
                    let marker = tuple::pack(&("add-marker", task, i));
                    db.run(|tx, maybe_committed| {
                        let marker = &marker;
                        async move {
                            if maybe_committed.0 && tx.get(marker, false).await?.is_some() {
                                return Ok(());
                            }
                            tx.set(marker, b"");
                            tx.add(b"sum", task + 1);
                            tx.add(b"count", 1);
                            tx.add(b"negative", -(task + 1));
                            Ok::<(), Error>(())
                        }
                    })
                    .await
                    .expect("an add commits within the retry limit");
                }
            })
        })
        .collect();
    join_all(handles).await;
    let sum: i64 = ADDS * (1..=TASKS).sum::<i64>();
    assert_eq!(s.read_counter(b"sum").await, sum);
    assert_eq!(s.read_counter(b"count").await, TASKS * ADDS);
    assert_eq!(s.read_counter(b"negative").await, -sum);
    if let Some(stats) = s.db.fault_stats() {
        assert!(
            stats.unknown_applied > 0,
            "no unknown-but-applied commit was injected, so the marker check was not exercised: {stats:?}"
        );
    }
}

/// Every atomic op has FoundationDB's semantics end to end: what the transaction reads back
/// before commit is what the commit stores, and both are what FoundationDB would store.
pub async fn atomic_ops_follow_foundationdb_semantics_end_to_end(backend: &Backend) {
    use MutationType::*;
    type Row = (
        &'static str,
        Option<Vec<u8>>,
        MutationType,
        Vec<u8>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = vec![
        ("add/missing", None, Add, le(5), Some(le(5))),
        ("add/carry", Some(le(255)), Add, le(1), Some(le(256))),
        ("add/wrap", Some(le(u64::MAX)), Add, le(2), Some(le(1))),
        (
            "add/negative",
            Some(le(10)),
            Add,
            (-3i64).to_le_bytes().to_vec(),
            Some(le(7)),
        ),
        (
            "add/short existing",
            Some(vec![0xff]),
            Add,
            vec![1, 0, 0],
            Some(vec![0, 1, 0]),
        ),
        (
            "add/long existing",
            Some(vec![1, 1]),
            Add,
            vec![1],
            Some(vec![2]),
        ),
        (
            "and",
            Some(vec![0b1100]),
            BitAnd,
            vec![0b1010, 0xff],
            Some(vec![0b1000, 0]),
        ),
        (
            "and/missing",
            None,
            BitAnd,
            vec![0b1010],
            Some(vec![0b1010]),
        ),
        (
            "or",
            Some(vec![0b1100]),
            BitOr,
            vec![0b1010, 1],
            Some(vec![0b1110, 1]),
        ),
        (
            "xor",
            Some(vec![0b1100]),
            BitXor,
            vec![0b1010],
            Some(vec![0b0110]),
        ),
        ("xor/missing", None, BitXor, vec![7], Some(vec![7])),
        ("max/keeps", Some(le(7)), Max, le(3), Some(le(7))),
        ("max/takes", Some(le(3)), Max, le(7), Some(le(7))),
        (
            "max/little endian",
            Some(vec![0, 1]),
            Max,
            vec![0xff, 0],
            Some(vec![0, 1]),
        ),
        (
            "max/truncates",
            Some(vec![5, 0, 9]),
            Max,
            vec![3, 0],
            Some(vec![5, 0]),
        ),
        ("max/missing", None, Max, le(3), Some(le(3))),
        ("min/keeps", Some(le(3)), Min, le(7), Some(le(3))),
        ("min/takes", Some(le(7)), Min, le(3), Some(le(3))),
        (
            "min/unsigned",
            Some(vec![0, 0x80]),
            Min,
            vec![0, 0x7f],
            Some(vec![0, 0x7f]),
        ),
        ("min/missing", None, Min, le(9), Some(le(9))),
        (
            "byte_max/keeps",
            Some(b"b".to_vec()),
            ByteMax,
            b"ab".to_vec(),
            Some(b"b".to_vec()),
        ),
        (
            "byte_max/takes",
            Some(b"ab".to_vec()),
            ByteMax,
            b"b".to_vec(),
            Some(b"b".to_vec()),
        ),
        (
            "byte_max/missing",
            None,
            ByteMax,
            b"q".to_vec(),
            Some(b"q".to_vec()),
        ),
        (
            "byte_min/takes",
            Some(b"b".to_vec()),
            ByteMin,
            b"ab".to_vec(),
            Some(b"ab".to_vec()),
        ),
        (
            "byte_min/prefix",
            Some(b"ab".to_vec()),
            ByteMin,
            b"a".to_vec(),
            Some(b"a".to_vec()),
        ),
        (
            "byte_min/missing",
            None,
            ByteMin,
            b"z".to_vec(),
            Some(b"z".to_vec()),
        ),
        (
            "cac/equal",
            Some(b"x".to_vec()),
            CompareAndClear,
            b"x".to_vec(),
            None,
        ),
        (
            "cac/different",
            Some(b"y".to_vec()),
            CompareAndClear,
            b"x".to_vec(),
            Some(b"y".to_vec()),
        ),
        ("cac/missing", None, CompareAndClear, b"x".to_vec(), None),
    ];
    let rows = &rows;
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.write(|tx| {
            for (name, initial, ..) in rows {
                if let Some(v) = initial {
                    tx.set(name.as_bytes(), v);
                }
            }
            tx.set(b"chain", &le(10));
            tx.set(b"clear then max", &le(9));
        })
        .await;
        let tx = s.tx();
        for (name, _, op, param, _) in rows {
            tx.atomic_op(name.as_bytes(), param, *op);
        }
        // Several ops on one key apply in order, over a stored value, a set, and a clear.
        tx.add(b"chain", 5);
        tx.atomic_op(b"chain", &le(12), Max);
        tx.atomic_op(b"chain", &le(13), Min);
        tx.add(b"chain", -1);
        tx.set(b"set then add", &le(1));
        tx.add(b"set then add", 2);
        tx.clear(b"clear then max");
        tx.atomic_op(b"clear then max", &le(3), Max);
        let extra: [(&str, Option<Vec<u8>>); 3] = [
            ("chain", Some(le(12))),
            ("set then add", Some(le(3))),
            ("clear then max", Some(le(3))),
        ];
        let expected: Vec<(&str, Option<Vec<u8>>)> = rows
            .iter()
            .map(|(name, _, _, _, want)| (*name, want.clone()))
            .chain(extra)
            .collect();
        for (name, want) in &expected {
            let got = tx.get(name.as_bytes(), false).await?;
            assert_eq!(&got, want, "{name}, read back in the transaction");
        }
        tx.commit().await?;
        for (name, want) in &expected {
            assert_eq!(&s.read(name.as_bytes()).await, want, "{name}, committed");
        }
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Versionstamps.

/// Versionstamped keys written by many concurrent transactions are unique and sort in commit
/// order: each transaction also takes the next number of a serial counter, and the log read
/// in key order holds 0, 1, 2, ... exactly once each.
pub async fn versionstamped_keys_are_unique_and_in_commit_order(backend: &Backend) {
    const TASKS: i64 = 12;
    let s = &backend.store().await;
    let handles = (0..TASKS)
        .map(|task| {
            let db = s.db.clone();
            tokio::spawn(async move {
                let marker = tuple::pack(&("vs-marker", task));
                db.run(|tx, maybe_committed| {
                    let marker = &marker;
                    async move {
                        if maybe_committed.0 && tx.get(marker, false).await?.is_some() {
                            return Ok(());
                        }
                        let seq = decode_counter(tx.get(b"seq", false).await?.as_deref());
                        tx.set(b"seq", &(seq + 1).to_le_bytes());
                        tx.set_versionstamped_key(&log_key(0), &seq.to_le_bytes());
                        tx.set(marker, b"");
                        Ok::<(), Error>(())
                    }
                })
                .await
                .expect("an append commits within the retry limit");
            })
        })
        .collect();
    join_all(handles).await;
    let log = s.read_range(&RangeOption::prefix(&log_prefix())).await;
    let numbers: Vec<i64> = log
        .iter()
        .map(|kv| decode_counter(Some(&kv.value)))
        .collect();
    assert_eq!(
        numbers,
        (0..TASKS).collect::<Vec<_>>(),
        "the log in versionstamp order is not the commit order"
    );
    let stamps: Vec<Versionstamp> = log.iter().map(|kv| unpack_log_key(&kv.key)).collect();
    for stamp in &stamps {
        assert!(stamp.is_complete(), "placeholder left in a key: {stamp:?}");
        assert_eq!(stamp.user_version(), 0);
    }
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "stamps not strictly increasing"
    );
}

/// Many concurrent blind appends with versionstamped keys never collide: every append is in
/// the log exactly once, under the stamp its transaction's `versionstamp()` reported.
pub async fn concurrent_versionstamped_appends_never_collide(backend: &Backend) {
    const TASKS: i64 = 16;
    const APPENDS: i64 = 6;
    let s = &backend.store().await;
    let handles = (0..TASKS)
        .map(|task| {
            let db = s.db.clone();
            tokio::spawn(async move {
                let mut stamps = Vec::new();
                for i in 0..APPENDS {
                    let marker = tuple::pack(&("append-marker", task, i));
                    let future = db
                        .run(|tx, maybe_committed| {
                            let marker = &marker;
                            async move {
                                if maybe_committed.0 && tx.get(marker, false).await?.is_some() {
                                    return Ok(None);
                                }
                                tx.set_versionstamped_key(&log_key(0), &tuple::pack(&(task, i)));
                                tx.set(marker, b"");
                                Ok::<_, Error>(Some(tx.versionstamp()))
                            }
                        })
                        .await
                        .expect("an append commits within the retry limit");
                    if let Some(future) = future {
                        let stamp = within("the versionstamp of a commit", future)
                            .await
                            .expect("a committed transaction has a versionstamp");
                        stamps.push((stamp, (task, i)));
                    }
                }
                stamps
            })
        })
        .collect();
    let stamps: Vec<_> = join_all(handles).await.into_iter().flatten().collect();
    let log = s.read_range(&RangeOption::prefix(&log_prefix())).await;
    let entries: BTreeMap<Vec<u8>, (i64, i64)> = log
        .iter()
        .map(|kv| (kv.key.clone(), tuple::unpack(&kv.value).expect("(task, i)")))
        .collect();
    assert_eq!(log.len() as i64, TASKS * APPENDS, "appends lost or doubled");
    let distinct: HashSet<(i64, i64)> = entries.values().copied().collect();
    assert_eq!(
        distinct.len() as i64,
        TASKS * APPENDS,
        "an append is in the log twice"
    );
    if !s.faults {
        assert_eq!(stamps.len() as i64, TASKS * APPENDS);
    }
    let distinct_stamps: HashSet<[u8; 10]> = stamps.iter().map(|(stamp, _)| *stamp).collect();
    assert_eq!(
        distinct_stamps.len(),
        stamps.len(),
        "two commits got the same versionstamp"
    );
    for (stamp, append) in &stamps {
        let key = tuple::pack(&("log", Versionstamp::complete(*stamp, 0)));
        assert_eq!(
            entries.get(&key),
            Some(append),
            "the append is not under the stamp versionstamp() reported"
        );
    }
}

/// `versionstamp()` resolves after commit to the stamp filled into versionstamped keys (with
/// their user versions) and values: the commit version, big-endian, then the batch order.
pub async fn versionstamp_future_matches_the_stamp_in_keys_and_values(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        let mut previous: Option<[u8; 10]> = None;
        for round in 0..2 {
            let tx = s.tx();
            tx.set_versionstamped_key(&log_key(1), b"second");
            tx.set_versionstamped_key(&log_key(0), b"first");
            tx.set_versionstamped_value(
                b"latest",
                &tuple::pack_with_versionstamp(&("at", Versionstamp::incomplete(7))),
            );
            tx.set_versionstamped_value(b"raw", &raw_stamped(b"raw:"));
            let future = tx.versionstamp();
            let committed = tx.commit().await?;
            let stamp = within("the versionstamp of a commit", future).await?;
            let version = committed.version.expect("a write commit has a version");
            assert_eq!(
                stamp[..8],
                version.to_be_bytes(),
                "the stamp starts with the commit version"
            );
            if let Some(previous) = previous {
                assert!(stamp > previous, "stamps increase from commit to commit");
            }
            previous = Some(stamp);

            let log = s.read_range(&RangeOption::prefix(&log_prefix())).await;
            let ours: Vec<_> = log
                .iter()
                .filter(|kv| unpack_log_key(&kv.key).transaction_version() == stamp)
                .collect();
            assert_eq!(ours.len(), 2, "round {round}: {log:?}");
            assert_eq!(
                unpack_log_key(&ours[0].key),
                Versionstamp::complete(stamp, 0)
            );
            assert_eq!(ours[0].value, b"first");
            assert_eq!(
                unpack_log_key(&ours[1].key),
                Versionstamp::complete(stamp, 1)
            );
            assert_eq!(ours[1].value, b"second");
            let latest = s
                .read(b"latest")
                .await
                .expect("versionstamped value written");
            let (at, value_stamp): (String, Versionstamp) =
                tuple::unpack(&latest).expect("a packed (\"at\", versionstamp)");
            assert_eq!(at, "at");
            assert_eq!(value_stamp, Versionstamp::complete(stamp, 7));
            let mut raw = b"raw:".to_vec();
            raw.extend_from_slice(&stamp);
            assert_eq!(s.read(b"raw").await, Some(raw));
        }
        Ok(())
    })
    .await;
}

/// A key holding this transaction's versionstamped value cannot be read (1036), nor can the
/// range a versionstamped key of this transaction may land in, until something known is
/// written over it; keys outside stay readable.
pub async fn versionstamped_writes_are_unreadable_in_their_own_transaction(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        s.put(&[(b"k", b"old"), (b"a", b"1"), (b"z", b"1")]).await;
        let tx = s.tx();
        tx.get(b"a", false).await?;
        tx.set_versionstamped_value(b"k", &raw_stamped(b""));
        let unreadable = |e: &Error| matches!(e, Error::AccessedUnreadable);
        s.expect_err(tx.get(b"k", false).await, "AccessedUnreadable", unreadable)?;
        s.expect_err(tx.get(b"k", true).await, "AccessedUnreadable", unreadable)?;
        let over_k = RangeOption::new(b"j".to_vec(), b"l".to_vec());
        s.expect_err(
            tx.get_range(&over_k).await,
            "AccessedUnreadable",
            unreadable,
        )?;
        let before_k = RangeOption::new(b"a".to_vec(), b"k".to_vec());
        assert_eq!(tx.get_range(&before_k).await?.kvs, vec![kv(b"a", b"1")]);

        tx.set_versionstamped_key(&log_key(0), b"entry");
        let log = RangeOption::prefix(&log_prefix());
        s.expect_err(tx.get_range(&log).await, "AccessedUnreadable", unreadable)?;
        s.expect_err(
            tx.get_range(&log.clone().snapshot().reverse()).await,
            "AccessedUnreadable",
            unreadable,
        )?;
        assert_eq!(
            tx.get(b"z", false).await?,
            Some(b"1".to_vec()),
            "unrelated key"
        );

        tx.set(b"k", b"plain");
        assert_eq!(
            tx.get(b"k", false).await?,
            Some(b"plain".to_vec()),
            "set over it"
        );
        tx.commit().await?;
        assert_eq!(s.read(b"k").await, Some(b"plain".to_vec()));
        assert_eq!(s.read_range(&log).await.len(), 1);

        // Clearing the range makes it readable again (and empty): the clear applies last.
        let tx = s.tx();
        tx.set_versionstamped_key(&log_key(0), b"entry");
        tx.clear_range(&log.begin, &log.end);
        assert!(tx.get_range(&log).await?.kvs.is_empty());
        tx.commit().await?;
        assert!(
            s.read_range(&log).await.is_empty(),
            "the clear applies after the append"
        );
        Ok(())
    })
    .await;
}

/// The versionstamp of a transaction that wrote nothing, was dropped, or failed to commit
/// resolves to an error instead of hanging.
pub async fn versionstamp_of_a_transaction_that_does_not_commit_is_an_error(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        let read_only = s.tx();
        let future = read_only.versionstamp();
        read_only.get(b"k", false).await?;
        assert_eq!(read_only.commit().await?.version, None);
        assert!(within("a read-only versionstamp", future).await.is_err());

        let dropped = s.tx();
        dropped.set(b"x", b"1");
        let future = dropped.versionstamp();
        drop(dropped);
        assert!(within("a dropped transaction's versionstamp", future)
            .await
            .is_err());

        let conflicted = s.tx();
        conflicted.get(b"k", false).await?;
        conflicted.set(b"x", b"1");
        let future = conflicted.versionstamp();
        s.put(&[(b"k", b"1")]).await;
        s.expect_conflict(conflicted.commit().await)?;
        assert!(within("a conflicted transaction's versionstamp", future)
            .await
            .is_err());
        Ok(())
    })
    .await;
}

/// A versionstamp placeholder that does not fit its key or value fails the commit with a
/// permanent error, and nothing of the transaction is applied.
pub async fn invalid_versionstamp_offset_fails_the_commit(backend: &Backend) {
    let s = &backend.store().await;
    let invalid = |e: &Error| {
        matches!(e, Error::InvalidVersionstamp(_)) || matches!(e, Error::Fdb { code: 2000, .. })
    };
    s.attempts(|| async move {
        let mut past_the_end = b"0123456789ab".to_vec();
        past_the_end.extend_from_slice(&3u32.to_le_bytes());
        type BoxedWrite = Box<dyn Fn(&Transaction)>;
        let writes: [(&str, BoxedWrite); 3] = [
            (
                "key, placeholder past the end",
                Box::new(move |tx| {
                    tx.set_versionstamped_key(&past_the_end, b"v");
                }),
            ),
            (
                "key without an offset",
                Box::new(|tx| tx.set_versionstamped_key(b"\x01\x02", b"v")),
            ),
            (
                "value without an offset",
                Box::new(|tx| tx.set_versionstamped_value(b"k", b"\x01")),
            ),
        ];
        for (what, write) in &writes {
            let tx = s.tx();
            tx.set(b"good", b"1");
            write(&tx);
            let e = s.expect_err(tx.commit().await, "an invalid versionstamp error", invalid)?;
            assert_eq!(e.class(), ErrorClass::Permanent, "{what}");
            assert_eq!(
                s.read(b"good").await,
                None,
                "{what}: a failed commit applied a write"
            );
        }
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Watches.

/// A watch stays pending while other keys change and fires once another transaction changes
/// its key.
pub async fn watch_fires_after_another_transaction_changes_the_key_not_before(backend: &Backend) {
    let s = &backend.store().await;
    s.put(&[(b"k", b"1")]).await;
    let tx = s.tx();
    let mut watch = tx.watch(b"k");
    tx.commit().await.expect("a watch-only commit");
    assert!(is_pending(&mut watch), "fired before any change");
    s.put(&[(b"k0", b"2"), (b"k\x00", b"2"), (b"other", b"2")])
        .await;
    assert!(is_pending(&mut watch), "fired when other keys changed");
    s.put(&[(b"k", b"2")]).await;
    within("the watch", watch)
        .await
        .expect("a watch of a changed key resolves Ok");
}

/// Watches fire when their key is cleared, cleared by a range, changed by an atomic op, or
/// created.
pub async fn watch_fires_when_the_key_is_cleared_or_changed_atomically(backend: &Backend) {
    let s = &backend.store().await;
    s.put(&[(b"a", b"1"), (b"b", b"1"), (b"c", &le(1))]).await;
    let tx = s.tx();
    let mut watches: Vec<(&str, Watch)> = vec![
        ("clear", tx.watch(b"a")),
        ("clear_range", tx.watch(b"b")),
        ("atomic add", tx.watch(b"c")),
        ("create", tx.watch(b"d")),
        ("versionstamped value", tx.watch(b"e")),
    ];
    tx.commit().await.expect("a watch-only commit");
    let changes: [Write; 5] = [
        |w| w.clear(b"a"),
        |w| w.clear_range(b"ab", b"bb"),
        |w| w.add(b"c", 1),
        |w| w.set(b"d", b""),
        // A 10-byte placeholder at offset 0.
        |w| w.set_versionstamped_value(b"e", &[0; 14]),
    ];
    for (i, change) in changes.into_iter().enumerate() {
        for (what, watch) in &mut watches[i..] {
            assert!(is_pending(watch), "{what}: fired before its change");
        }
        s.write(change).await;
        let (what, watch) = &mut watches[i];
        let what = *what;
        within(what, watch)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// A watch whose transaction is dropped, or fails to commit, resolves to an error (the
/// commit's error, without fault injection) instead of hanging.
pub async fn watch_of_a_transaction_that_does_not_commit_fails(backend: &Backend) {
    let s = &backend.store().await;
    s.attempts(|| async move {
        let tx = s.tx();
        let watch = tx.watch(b"w");
        drop(tx);
        assert!(within("a dropped watch", watch).await.is_err());

        let tx = s.tx();
        tx.get(b"k", false).await?;
        let watch = tx.watch(b"w");
        tx.set(b"x", b"1");
        s.put(&[(b"k", b"1")]).await;
        s.expect_conflict(tx.commit().await)?;
        s.put(&[(b"w", b"changed")]).await;
        let e = within("a failed transaction's watch", watch)
            .await
            .expect_err("the watch of a transaction that did not commit must fail");
        if !s.faults {
            assert!(
                matches!(e, Error::Conflict),
                "the watch fails with the commit's error, got {e:?}"
            );
        }
        Ok(())
    })
    .await;
}

/// A watch whose key changed between the watching transaction's read and its commit fires as
/// soon as that transaction commits.
pub async fn watch_fires_at_once_when_the_key_changed_before_its_commit(backend: &Backend) {
    let s = &backend.store().await;
    s.put(&[(b"k", b"1")]).await;
    let tx = s.tx();
    let watch = tx.watch(b"k");
    let missing = tx.watch(b"m");
    s.put(&[(b"k", b"2"), (b"m", b"new")]).await;
    tx.commit().await.expect("a watch-only commit");
    within("the watch of a key changed before commit", watch)
        .await
        .expect("it resolves Ok");
    within("the watch of a key created before commit", missing)
        .await
        .expect("it resolves Ok");
}

/// At most 10,000 watches are outstanding: the next fails with `TooManyWatches` (1032), and
/// dropping watches makes room again.
pub async fn watches_beyond_the_limit_fail_with_too_many_watches(backend: &Backend) {
    let s = &backend.store().await;
    let tx = s.tx();
    let mut watches: Vec<Watch> = (0..=MAX_WATCHES)
        .map(|i| tx.watch(format!("w{i:05}").as_bytes()))
        .collect();
    tx.commit().await.expect("a watch-only commit");
    let over = watches.pop().expect("10,001 watches");
    let e = within("the watch over the limit", over)
        .await
        .expect_err("the 10,001st outstanding watch must fail");
    assert!(matches!(e, Error::TooManyWatches), "got {e:?}");
    assert!(
        is_pending(&mut watches[0]),
        "a watch within the limit failed"
    );
    drop(watches);

    let tx = s.tx();
    let watch = tx.watch(b"after");
    tx.commit().await.expect("a watch-only commit");
    s.put(&[(b"after", b"1")]).await;
    within("a watch after dropping the others", watch)
        .await
        .expect("dropped watches no longer count");
}

// ---------------------------------------------------------------------------------------------
// Limits.

/// Keys of 10,000 bytes are fine; 10,001 bytes fail the commit with `KeyTooLarge` (2102,
/// permanent) and nothing is applied; an over-long key reads as missing.
pub async fn key_size_limit_is_ten_thousand_bytes(backend: &Backend) {
    let s = &backend.store().await;
    let longest = vec![b'k'; MAX_KEY_SIZE];
    let over = vec![b'k'; MAX_KEY_SIZE + 1];
    let (longest, over) = (&longest, &over);
    let too_large = |e: &Error| matches!(e, Error::KeyTooLarge { .. });
    s.attempts(|| async move {
        let tx = s.tx();
        tx.set(longest, b"v");
        tx.commit().await?;
        assert_eq!(s.read(longest).await, Some(b"v".to_vec()));
        assert_eq!(
            s.tx().get(over, false).await?,
            None,
            "an over-long key cannot exist"
        );

        let writes: [(&str, WriteOf); 3] = [
            ("set", |tx, key| tx.set(key, b"v")),
            ("atomic add", |tx, key| tx.add(key, 1)),
            ("versionstamped value", |tx, key| {
                tx.set_versionstamped_value(key, &raw_stamped(b""));
            }),
        ];
        for (what, write) in writes {
            let tx = s.tx();
            tx.set(b"good", b"1");
            write(&tx, over);
            let e = s.expect_err(tx.commit().await, "KeyTooLarge", too_large)?;
            assert_eq!(e.class(), ErrorClass::Permanent, "{what}");
            assert_eq!(
                s.read(b"good").await,
                None,
                "{what}: a failed commit applied a write"
            );
        }
        Ok(())
    })
    .await;
}

/// Values of 100,000 bytes are fine; 100,001 bytes fail the commit with `ValueTooLarge`
/// (2103, permanent) and nothing is applied.
pub async fn value_size_limit_is_one_hundred_thousand_bytes(backend: &Backend) {
    let s = &backend.store().await;
    let largest = vec![7u8; MAX_VALUE_SIZE];
    let over = vec![7u8; MAX_VALUE_SIZE + 1];
    let (largest, over) = (&largest, &over);
    let too_large = |e: &Error| matches!(e, Error::ValueTooLarge { .. });
    s.attempts(|| async move {
        let tx = s.tx();
        tx.set(b"largest", largest);
        tx.commit().await?;
        assert_eq!(s.read(b"largest").await.as_ref(), Some(largest));

        let writes: [(&str, WriteOf); 3] = [
            ("set", |tx, value| tx.set(b"v", value)),
            ("atomic op", |tx, value| {
                tx.atomic_op(b"v", value, MutationType::BitOr)
            }),
            ("versionstamped key", |tx, value| {
                tx.set_versionstamped_key(&log_key(0), value)
            }),
        ];
        for (what, write) in writes {
            let tx = s.tx();
            tx.set(b"good", b"1");
            write(&tx, over);
            let e = s.expect_err(tx.commit().await, "ValueTooLarge", too_large)?;
            assert_eq!(e.class(), ErrorClass::Permanent, "{what}");
            assert_eq!(
                s.read(b"good").await,
                None,
                "{what}: a failed commit applied a write"
            );
        }
        Ok(())
    })
    .await;
}

/// A transaction of 9.5 MB commits; one over 10,000,000 bytes fails with
/// `TransactionTooLarge` (2101, permanent) and nothing is applied.
pub async fn transaction_size_limit_is_ten_million_bytes(backend: &Backend) {
    let s = &backend.store().await;
    let value = vec![1u8; MAX_VALUE_SIZE];
    let value = &value;
    s.attempts(|| async move {
        let tx = s.tx();
        let fits = MAX_TRANSACTION_SIZE / MAX_VALUE_SIZE * 95 / 100;
        for i in 0..fits {
            tx.set(format!("fits/{i:03}").as_bytes(), value);
        }
        tx.commit().await?;
        assert_eq!(s.read(b"fits/000").await.as_ref(), Some(value));

        let tx = s.tx();
        let over = MAX_TRANSACTION_SIZE / MAX_VALUE_SIZE + 1;
        for i in 0..over {
            tx.set(format!("over/{i:03}").as_bytes(), value);
        }
        let e = s.expect_err(tx.commit().await, "TransactionTooLarge", |e| {
            matches!(e, Error::TransactionTooLarge { .. })
        })?;
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(
            s.read(b"over/000").await,
            None,
            "a failed commit applied a write"
        );
        Ok(())
    })
    .await;
}

/// Keys at or above `\xff` (the system keyspace) cannot be written, read or watched
/// (`KeyOutsideLegalRange`, 2004); ranges may end exactly at `\xff`.
pub async fn keys_at_or_above_xff_are_outside_the_legal_range(backend: &Backend) {
    let s = &backend.store().await;
    let outside = |e: &Error| matches!(e, Error::KeyOutsideLegalRange);
    s.attempts(|| async move {
        let writes: [(&str, Write); 5] = [
            ("set", |tx| tx.set(b"\xff", b"v")),
            ("set system key", |tx| tx.set(b"\xff/x", b"v")),
            ("clear", |tx| tx.clear(b"\xffa")),
            ("atomic add", |tx| tx.add(b"\xff\xff", 1)),
            ("clear_range past \\xff", |tx| {
                tx.clear_range(b"a", b"\xff\x00")
            }),
        ];
        for (what, write) in writes {
            let tx = s.tx();
            tx.set(b"good", b"1");
            write(&tx);
            let e = s.expect_err(tx.commit().await, "KeyOutsideLegalRange", outside)?;
            assert_eq!(e.class(), ErrorClass::Permanent, "{what}");
            assert_eq!(
                s.read(b"good").await,
                None,
                "{what}: a failed commit applied a write"
            );
        }

        s.put(&[(b"user", b"1")]).await;
        let tx = s.tx();
        s.expect_err(
            tx.get(b"\xff", false).await,
            "KeyOutsideLegalRange",
            outside,
        )?;
        s.expect_err(
            tx.get(b"\xff\xff/status", true).await,
            "KeyOutsideLegalRange",
            outside,
        )?;
        let past = RangeOption::new(b"a".to_vec(), b"\xff\x00".to_vec());
        s.expect_err(tx.get_range(&past).await, "KeyOutsideLegalRange", outside)?;
        let to_end = RangeOption::new(b"".to_vec(), b"\xff".to_vec());
        assert_eq!(
            keys(&tx.get_range(&to_end).await?.kvs),
            vec![b"user".to_vec()]
        );
        let e = within("a watch of a system key", tx.watch(b"\xff/x"))
            .await
            .expect_err("watching a system key must fail");
        assert!(outside(&e), "got {e:?}");

        let tx = s.tx();
        tx.clear_range(b"", b"\xff");
        tx.commit().await?;
        assert!(s.read_range(&to_end).await.is_empty());
        Ok(())
    })
    .await;
}

/// An invalid write (here an over-long key) fails every later read of its transaction, not
/// only the first, and the commit; none of the transaction's writes are applied.
pub async fn an_invalid_write_poisons_the_whole_transaction(backend: &Backend) {
    let s = &backend.store().await;
    let over = vec![b'k'; MAX_KEY_SIZE + 1];
    let over = &over;
    let too_large = |e: &Error| matches!(e, Error::KeyTooLarge { .. });
    s.attempts(|| async move {
        let tx = s.tx();
        tx.set(b"good", b"1");
        tx.set(over, b"v");
        tx.set(b"after", b"1");
        s.expect_err(tx.get(b"other", false).await, "KeyTooLarge", too_large)?;
        s.expect_err(
            tx.get(b"other", true).await,
            "KeyTooLarge (again)",
            too_large,
        )?;
        s.expect_err(
            tx.get(b"good", false).await,
            "KeyTooLarge (own write)",
            too_large,
        )?;
        s.expect_err(
            tx.get_range(&RangeOption::prefix(b"")).await,
            "KeyTooLarge (range)",
            too_large,
        )?;
        s.expect_err(tx.commit().await, "KeyTooLarge (commit)", too_large)?;
        assert_eq!(
            s.read(b"good").await,
            None,
            "a poisoned transaction applied a write"
        );
        assert_eq!(
            s.read(b"after").await,
            None,
            "a poisoned transaction applied a write"
        );
        Ok(())
    })
    .await;
}

/// A transaction may read for 5 s after its first read: past that, reads and the commit fail
/// with the retryable `TransactionTooOld` (1007) and nothing is applied. A transaction that has
/// not read yet does not age. (Moves the injected clock; never sleeps.)
pub async fn transactions_expire_five_seconds_after_their_first_read(backend: &Backend) {
    let s = &backend.store().await;
    if s.skip_without_injected_clock() {
        return;
    }
    let too_old = |e: &Error| matches!(e, Error::TransactionTooOld);
    s.attempts(|| async move {
        s.put(&[(b"k", b"1")]).await;
        let tx = s.tx();
        tx.get(b"k", false).await?;
        s.clock.advance(Duration::from_secs(4));
        assert_eq!(
            tx.get(b"k", false).await?,
            Some(b"1".to_vec()),
            "4 s is within the limit"
        );
        s.clock.advance(Duration::from_millis(1_500));
        let e = s.expect_err(tx.get(b"other", false).await, "TransactionTooOld", too_old)?;
        assert_eq!(e.class(), ErrorClass::Retryable, "too old is retryable");
        s.expect_err(
            tx.get_range(&RangeOption::prefix(b"")).await,
            "TransactionTooOld",
            too_old,
        )?;

        let tx = s.tx();
        tx.get(b"k", false).await?;
        tx.set(b"x", b"1");
        s.clock.advance(Duration::from_secs(6));
        s.expect_err(tx.commit().await, "TransactionTooOld", too_old)?;
        assert_eq!(s.read(b"x").await, None, "a too-old commit applied a write");

        let tx = s.tx();
        tx.set(b"y", b"1");
        s.clock.advance(Duration::from_secs(10));
        assert_eq!(
            tx.get(b"k", false).await?,
            Some(b"1".to_vec()),
            "aged before its first read"
        );
        tx.commit().await?;
        assert_eq!(s.read(b"y").await, Some(b"1".to_vec()));
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The retry loop and errors.

/// A store error inside a caller's error enum keeps its class: `transact` retries a retryable one
/// (from `?` on a real read, or returned by the body), and only the successful attempt's
/// writes are applied.
pub async fn run_retries_retryable_errors_through_a_user_error_enum(backend: &Backend) {
    let s = &backend.store().await;
    assert_eq!(
        AppError::from(Error::TransactionTooOld)
            .store_error()
            .map(Error::class),
        Some(ErrorClass::Retryable)
    );

    // A real `TransactionTooOld` from a read, through `?` into the caller's enum.
    if !s.skip_without_injected_clock() {
        let mut attempts = 0u32;
        let result: Result<u32, AppError> =
            s.db.transact(|tx, _| {
                attempts += 1;
                let n = attempts;
                async move {
                    tx.set(format!("attempt/{n}").as_bytes(), b"");
                    tx.get(b"k", false).await?;
                    if n == 1 {
                        s.clock.advance(Duration::from_secs(6));
                    }
                    tx.get(b"k2", false).await?;
                    Ok(n)
                }
            })
            .await;
        let n = result.expect("run retries a too-old read");
        assert!(n >= 2, "the first attempt must have failed too old");
        if !s.faults {
            assert_eq!(attempts, 2);
        }
        assert_eq!(
            s.read(b"attempt/1").await,
            None,
            "a failed attempt was applied"
        );
        assert_eq!(
            s.read(format!("attempt/{n}").as_bytes()).await,
            Some(vec![])
        );
    }

    // Retryable errors the body returns itself, wrapped.
    let mut attempts = 0u32;
    let result: Result<(), AppError> =
        s.db.transact(|tx, _| {
            attempts += 1;
            let n = attempts;
            async move {
                tx.set(format!("body/{n}").as_bytes(), b"");
                match n {
                    1 => Err(AppError::Store(Error::Conflict)),
                    2 => Err(AppError::Store(Error::TransactionTooOld)),
                    _ => Ok(()),
                }
            }
        })
        .await;
    result.expect("run retries retryable errors in the caller's enum");
    if !s.faults {
        assert_eq!(attempts, 3);
    }
    assert!(attempts >= 3);
    assert_eq!(
        s.read(b"body/1").await,
        None,
        "a failed attempt was applied"
    );
    assert_eq!(
        s.read(b"body/2").await,
        None,
        "a failed attempt was applied"
    );
}

/// `run` and `transact` return a permanent store error or the caller's own error after one attempt, applying
/// nothing.
pub async fn run_returns_permanent_and_user_errors_at_once(backend: &Backend) {
    let s = &backend.store().await;
    let mut attempts = 0u32;
    let result: Result<(), AppError> =
        s.db.transact(|tx, _| {
            attempts += 1;
            async move {
                tx.set(b"x", b"1");
                Err(AppError::Rejected("invalid input"))
            }
        })
        .await;
    assert!(
        matches!(result, Err(AppError::Rejected("invalid input"))),
        "{result:?}"
    );
    assert_eq!(attempts, 1, "a caller's own error is not retried");

    let mut attempts = 0u32;
    let result: Result<(), AppError> =
        s.db.transact(|_, _| {
            attempts += 1;
            async move { Err(AppError::Store(Error::KeyOutsideLegalRange)) }
        })
        .await;
    assert!(matches!(
        result,
        Err(AppError::Store(Error::KeyOutsideLegalRange))
    ));
    assert_eq!(attempts, 1, "a permanent error is not retried");

    let mut attempts = 0u32;
    let over = vec![b'k'; MAX_KEY_SIZE + 1];
    let result =
        s.db.run(|tx, _| {
            attempts += 1;
            tx.set(b"x", b"1");
            tx.set(&over, b"v");
            async move { Ok::<(), Error>(()) }
        })
        .await;
    assert!(
        matches!(result, Err(Error::KeyTooLarge { .. })),
        "{result:?}"
    );
    if !s.faults {
        assert_eq!(attempts, 1, "a permanent commit error is not retried");
    }
    assert_eq!(s.read(b"x").await, None);
}

/// `run` gives up after `RunOptions::max_attempts` (the database's, or `transact_with`'s) with
/// a permanent `RetryLimitReached` that keeps the last error.
pub async fn run_gives_up_after_max_attempts(backend: &Backend) {
    let s = &backend
        .store_with(RunOptions {
            max_attempts: Some(3),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..RunOptions::default()
        })
        .await;
    let always_conflicts = |attempts: &mut u32, tx: Transaction| {
        *attempts += 1;
        async move {
            tx.get(b"k", false).await?;
            s.write(|w| w.add(b"k", 1)).await;
            tx.set(b"x", b"1");
            Ok::<(), Error>(())
        }
    };
    let mut attempts = 0u32;
    let result = s.db.run(|tx, _| always_conflicts(&mut attempts, tx)).await;
    let e = result.expect_err("a transaction that always conflicts cannot succeed");
    assert_eq!(attempts, 3, "the database's max_attempts");
    assert_eq!(
        e.class(),
        ErrorClass::Permanent,
        "giving up is final for the caller: {e:?}"
    );
    let Error::RetryLimitReached { attempts: n, last } = &e else {
        panic!("expected RetryLimitReached, got {e:?}");
    };
    assert_eq!(*n, 3);
    if s.faults {
        assert!(injectable(last), "{last:?}");
    } else {
        assert!(
            matches!(**last, Error::Conflict),
            "the last error is kept: {last:?}"
        );
    }
    assert_eq!(s.read(b"x").await, None);

    let five = RunOptions {
        max_attempts: Some(5),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        ..RunOptions::default()
    };
    let mut attempts = 0u32;
    let result =
        s.db.transact_with(&five, |tx, _| always_conflicts(&mut attempts, tx))
            .await;
    assert!(result.is_err());
    assert_eq!(attempts, 5, "transact_with's max_attempts");

    // `transact_observed` hears of each failed attempt once, before the next attempt starts.
    let started = std::cell::Cell::new(0u32);
    let mut heard = Vec::new();
    let result =
        s.db.transact_observed(
            &five,
            |tx, _| {
                started.set(started.get() + 1);
                let mut n = 0;
                always_conflicts(&mut n, tx)
            },
            |e: &Error| heard.push((started.get(), e.class())),
        )
        .await;
    assert!(result.is_err());
    let expected: Vec<u32> = (1..=5).collect();
    assert_eq!(
        heard.iter().map(|h| h.0).collect::<Vec<_>>(),
        expected,
        "one call per failed attempt, the last included: {heard:?}"
    );
    assert!(
        heard.iter().all(|h| h.1 != ErrorClass::Permanent),
        "{heard:?}"
    );

    // The limit does not get in the way of a transaction that can succeed (fault-free here:
    // three attempts under fault injection may all fail).
    s.observer
        .run(|tx, _| async move {
            tx.set(b"y", b"1");
            Ok::<(), Error>(())
        })
        .await
        .expect("an ordinary transaction commits");
}

/// Once an attempt may have committed, every later attempt of the same `run` is told so,
/// even after an attempt that failed for another reason.
pub async fn maybe_committed_flag_stays_set_for_later_attempts(backend: &Backend) {
    let s = &backend.store().await;
    let mut flags = Vec::new();
    s.db.run(|tx, maybe_committed| {
        flags.push(maybe_committed.0);
        let n = flags.len();
        async move {
            match n {
                1 => Err(Error::CommitUnknownResult),
                2 => Err(Error::Conflict),
                _ => {
                    tx.set(b"done", b"");
                    Ok(())
                }
            }
        }
    })
    .await
    .expect("the third attempt succeeds");
    assert_eq!(flags[..3], [false, true, true], "{flags:?}");
    assert!(flags[3..].iter().all(|&f| f), "{flags:?}");
    if !s.faults {
        assert_eq!(flags.len(), 3);
    }
}

/// A body that writes a unique marker and checks it when the commit may have happened applies
/// exactly once per logical operation, even when half the commits report an unknown result
/// after applying.
pub async fn idempotent_body_applies_once_despite_unknown_results(backend: &Backend) {
    const OPS: i64 = 24;
    let s = &backend.store().await;
    let hostile = s.observer.with_faults(FaultConfig {
        unknown_applied: 0.5,
        ..FaultConfig::none(11)
    });
    for (name, db) in [("the handle under test", &s.db), ("hostile", &hostile)] {
        let counter = format!("counter/{name}").into_bytes();
        let counter = &counter;
        for op in 0..OPS {
            let marker = tuple::pack(&("marker", name, op));
            let marker = &marker;
            db.run(|tx, maybe_committed| async move {
                if maybe_committed.0 && tx.get(marker, false).await?.is_some() {
                    return Ok(());
                }
                tx.set(marker, b"");
                tx.add(counter, 1);
                Ok::<(), Error>(())
            })
            .await
            .expect("an idempotent operation commits");
        }
        assert_eq!(
            s.read_counter(counter).await,
            OPS,
            "{name}: applied more than once"
        );
    }
    let stats = hostile.fault_stats().expect("a faulty handle");
    assert!(
        stats.unknown_applied > 0,
        "no unknown result was injected: {stats:?}"
    );
}

/// Without a marker check, a commit that was applied but reported an unknown result is
/// applied again by the retry: the fault layer really does apply those commits, so the
/// marker check is needed.
pub async fn unknown_result_without_a_marker_check_can_apply_twice(backend: &Backend) {
    const OPS: i64 = 24;
    let s = &backend.store().await;
    let hostile = s.observer.with_faults(FaultConfig {
        unknown_applied: 0.5,
        ..FaultConfig::none(11)
    });
    for _ in 0..OPS {
        hostile
            .run(|tx, _| async move {
                tx.add(b"counter", 1);
                Ok::<(), Error>(())
            })
            .await
            .expect("the add commits");
    }
    let stats = hostile.fault_stats().expect("a faulty handle");
    assert!(
        stats.unknown_applied > 0,
        "no unknown result was injected: {stats:?}"
    );
    let applied = i64::try_from(stats.unknown_applied).expect("small");
    assert_eq!(
        s.read_counter(b"counter").await,
        OPS + applied,
        "each unknown-but-applied commit applies once more"
    );
}

/// Committing while a clone of the transaction is alive fails with the permanent
/// `ReferenceToTransactionKept` and applies nothing, by hand or in `run`.
pub async fn commit_with_a_kept_clone_fails_with_reference_to_transaction_kept(backend: &Backend) {
    let s = &backend.store().await;
    let tx = s.tx();
    tx.set(b"x", b"1");
    let kept = tx.clone();
    let e = tx
        .commit()
        .await
        .expect_err("a kept clone must fail the commit");
    assert!(matches!(e, Error::ReferenceToTransactionKept), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Permanent);
    drop(kept);
    assert_eq!(s.read(b"x").await, None);

    let mut stash = None;
    let mut attempts = 0u32;
    let result =
        s.db.run(|tx, _| {
            attempts += 1;
            stash = Some(tx.clone());
            async move {
                tx.set(b"y", b"1");
                Ok::<(), Error>(())
            }
        })
        .await;
    assert!(
        matches!(result, Err(Error::ReferenceToTransactionKept)),
        "{result:?}"
    );
    assert_eq!(attempts, 1, "a kept reference is not retried");
    drop(stash);
    assert_eq!(s.read(b"y").await, None);
}
