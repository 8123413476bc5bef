//! [`Database`]: opening a store from its URL, creating transactions, and the retry loop
//! [`Database::run`].

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::admission::Admission;
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, ErrorClass, Result, TransactError};
use crate::local::embedded::{Checkpoints, EmbeddedEngine};
use crate::local::memory::MemoryEngine;
use crate::local::{Engine, LocalTx};
use crate::transaction::{Transaction, TxBackend, TxInner};
use crate::url::StoreUrl;

#[cfg(feature = "testing")]
use crate::faults::{FaultConfig, FaultInjector, FaultStats};

/// Tells a transaction body whether an earlier attempt *may* have committed. Once true it
/// stays true for every later attempt of the same `run`, because an attempt that followed a
/// maybe-committed one and then conflicted does not undo the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaybeCommitted(pub bool);

impl From<MaybeCommitted> for bool {
    fn from(m: MaybeCommitted) -> bool {
        m.0
    }
}

/// The retry policy of [`Database::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Give up after this many attempts (`None`: never). The last error is returned.
    pub max_attempts: Option<u32>,
    /// Backoff after the first failure (FoundationDB's default: 10 ms).
    pub initial_backoff: Duration,
    /// Backoff ceiling (FoundationDB's default: 1 s).
    pub max_backoff: Duration,
    /// How the store ranks the transactions (default: [`Priority::Default`]).
    pub priority: Priority,
}

/// How the store ranks a transaction when it is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Interactive work.
    #[default]
    Default,
    /// Background work that yields to the rest when the store is busy: FoundationDB's
    /// `priority_batch` (its ratekeeper throttles such transactions first, and may stop them
    /// while the cluster recovers from a failure); on the embedded store, at most
    /// [`OpenOptions::embedded_batch_in_flight`] attempts run at once. A batch transaction must
    /// not wait on another batch transaction of the same store (with a limit of one, it would
    /// wait forever).
    Batch,
    /// Batch work that may also wait for other batch work: on FoundationDB the same
    /// `priority_batch`. On the embedded store it shares the batch limit, but background
    /// attempts hold at most one turn less than the limit (if it is above one), and a waiting
    /// [`Priority::Batch`] attempt takes the next turn before a waiting background one (unless
    /// that one has waited 20 ms and longer than the first batch waiter, so neither class is
    /// ever starved). The queue's batched completions run
    /// at this priority, its claims at [`Priority::Batch`]: behind a flood, the claim that finds
    /// a small tenant's fresh job neither waits behind the completions queued before it nor
    /// finds every turn held by completions. The same rule as for batch applies: it must not
    /// wait on another batch or background transaction.
    Background,
}

/// Default attempt limit of [`Database::run`]: generous enough for heavy contention, finite so
/// that a livelock surfaces as an error instead of a hang.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 100;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_attempts: Some(DEFAULT_MAX_ATTEMPTS),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            priority: Priority::Default,
        }
    }
}

/// How to open a store besides its URL.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The clock for transaction lifetimes and conflict history (default: the system clock).
    pub clock: SharedClock,
    /// Seed for backoff jitter (default: from the OS).
    pub seed: Option<u64>,
    /// Retry policy of [`Database::run`].
    pub run: RunOptions,
    /// `embedded:` only: once the current log segment holds this many bytes, the engine starts
    /// a new one and writes a checkpoint of the whole store in the background, after which the
    /// old segments are deleted (default 256 MiB, or twice the last checkpoint's size if that is
    /// more). Smaller means faster opens and more writing.
    pub embedded_checkpoint_bytes: u64,
    /// `embedded:` only: a checkpoint is written at most this fast, in bytes per second
    /// (default 32 MiB/s), syncing every MiB, so that it leaves the disk to the log's commits
    /// (written flat out, one of 60 MB held commits up for hundreds of milliseconds). At least
    /// 1 MiB/s (less is refused with [`Error::InvalidOption`], on every backend).
    pub embedded_checkpoint_bytes_per_sec: u64,
    /// `embedded:` only: at most this many [`Priority::Batch`] and [`Priority::Background`]
    /// attempts together run at once (from
    /// their first read to the end of their commit; default
    /// [`DEFAULT_EMBEDDED_BATCH_IN_FLIGHT`]). Background work then cannot fill the engine's
    /// queue and the CPU: interactive transactions keep their latency while it floods the
    /// store, as FoundationDB's ratekeeper does for batch priority. At least 1 (0 is refused
    /// with [`Error::InvalidOption`], on every backend).
    pub embedded_batch_in_flight: usize,
}

/// Default of [`OpenOptions::embedded_batch_in_flight`].
pub const DEFAULT_EMBEDDED_BATCH_IN_FLIGHT: usize = 2;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            clock: SystemClock::shared(),
            seed: None,
            run: RunOptions::default(),
            embedded_checkpoint_bytes: crate::local::embedded::DEFAULT_CHECKPOINT_BYTES,
            embedded_checkpoint_bytes_per_sec:
                crate::local::embedded::DEFAULT_CHECKPOINT_BYTES_PER_SEC,
            embedded_batch_in_flight: DEFAULT_EMBEDDED_BATCH_IN_FLIGHT,
        }
    }
}

pub(crate) enum DbBackend {
    Local(Arc<dyn Engine>),
    #[cfg(feature = "fdb")]
    Fdb(crate::fdb::FdbDatabase),
}

struct DbInner {
    backend: DbBackend,
    url: StoreUrl,
    clock: SharedClock,
    rng: Mutex<fastrand::Rng>,
    run: RunOptions,
    /// Admission of batch and background attempts (embedded only).
    batch: Option<Arc<Admission>>,
    #[cfg(feature = "testing")]
    faults: Option<Arc<FaultInjector>>,
}

/// A store: the one handle every layer above uses. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<DbInner>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.inner.url.to_string())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens the store a URL names (see [`StoreUrl`]).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] naming the accepted forms; [`Error::Locked`] if another live
    /// process holds an embedded store; [`Error::BackendUnavailable`] for `fdb:` in a build
    /// without the `fdb` feature; I/O and engine errors.
    pub fn open(url: &str) -> Result<Database> {
        Database::open_with(url, OpenOptions::default())
    }

    /// Opens the store a URL names, with options.
    ///
    /// # Errors
    /// As [`Database::open`].
    pub fn open_with(url: &str, options: OpenOptions) -> Result<Database> {
        let url: StoreUrl = url.parse()?;
        if options.embedded_batch_in_flight == 0 {
            return Err(Error::InvalidOption {
                field: "embedded_batch_in_flight",
                reason: "must be at least 1",
            });
        }
        if options.embedded_checkpoint_bytes_per_sec < 1 << 20 {
            return Err(Error::InvalidOption {
                field: "embedded_checkpoint_bytes_per_sec",
                reason: "must be at least 1 MiB (1048576) per second",
            });
        }
        let backend =
            match &url {
                StoreUrl::Memory => DbBackend::Local(
                    MemoryEngine::new(Arc::clone(&options.clock)) as Arc<dyn Engine>
                ),
                StoreUrl::Embedded(path) => DbBackend::Local(EmbeddedEngine::open(
                    path,
                    Arc::clone(&options.clock),
                    Checkpoints {
                        every_bytes: options.embedded_checkpoint_bytes,
                        bytes_per_sec: options.embedded_checkpoint_bytes_per_sec,
                    },
                )? as Arc<dyn Engine>),
                #[cfg(feature = "fdb")]
                StoreUrl::Fdb(cluster_file) => {
                    DbBackend::Fdb(crate::fdb::FdbDatabase::open(cluster_file.as_deref())?)
                }
                #[cfg(not(feature = "fdb"))]
                StoreUrl::Fdb(_) => return Err(Error::BackendUnavailable {
                    backend: "fdb",
                    hint: "build with `--features fdb` (needs the FoundationDB 7.1 client library)",
                }),
            };
        let seed = options.seed.unwrap_or_else(|| fastrand::u64(..));
        let batch = matches!(url, StoreUrl::Embedded(_))
            .then(|| Admission::new(options.embedded_batch_in_flight));
        Ok(Database {
            inner: Arc::new(DbInner {
                backend,
                url,
                clock: options.clock,
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                run: options.run,
                batch,
                #[cfg(feature = "testing")]
                faults: None,
            }),
        })
    }

    /// A new, empty in-memory store on the system clock.
    #[must_use]
    pub fn memory() -> Database {
        Database::memory_with(OpenOptions::default())
    }

    /// A new, empty in-memory store with options (a manual clock, a seed).
    #[must_use]
    pub fn memory_with(options: OpenOptions) -> Database {
        match Database::open_with("memory:", options) {
            Ok(db) => db,
            // Opening memory cannot fail: no I/O, a constant URL.
            Err(e) => unreachable!("memory store failed to open: {e}"),
        }
    }

    /// The URL this store was opened from.
    #[must_use]
    pub fn url(&self) -> &StoreUrl {
        &self.inner.url
    }

    /// The clock this store measures transaction lifetimes with; layers above use it too.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The retry policy of [`Database::run`].
    #[must_use]
    pub fn run_options(&self) -> &RunOptions {
        &self.inner.run
    }

    /// This database with faults injected into every transaction (feature `testing`). The
    /// returned handle shares the store with `self`.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn with_faults(&self, config: FaultConfig) -> Database {
        let backend = match &self.inner.backend {
            DbBackend::Local(e) => DbBackend::Local(Arc::clone(e)),
            #[cfg(feature = "fdb")]
            DbBackend::Fdb(d) => DbBackend::Fdb(d.clone()),
        };
        Database {
            inner: Arc::new(DbInner {
                backend,
                url: self.inner.url.clone(),
                clock: Arc::clone(&self.inner.clock),
                rng: Mutex::new(fastrand::Rng::with_seed(config.seed ^ 0x5eed)),
                run: self.inner.run.clone(),
                batch: self.inner.batch.clone(),
                faults: Some(Arc::new(FaultInjector::new(config))),
            }),
        }
    }

    /// The faults injected so far, if this handle injects any (feature `testing`).
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn fault_stats(&self) -> Option<FaultStats> {
        self.inner.faults.as_ref().map(|f| f.stats())
    }

    /// A new transaction for a single attempt. Prefer [`Database::run`].
    ///
    /// # Errors
    /// Backend errors creating the transaction.
    pub fn create_transaction(&self) -> Result<Transaction> {
        self.create_transaction_at(Priority::Default)
    }

    #[cfg_attr(not(feature = "fdb"), allow(unused_variables))]
    fn create_transaction_at(&self, priority: Priority) -> Result<Transaction> {
        let backend = match &self.inner.backend {
            DbBackend::Local(engine) => TxBackend::Local(LocalTx::new(
                Arc::clone(engine),
                Arc::clone(&self.inner.clock),
            )),
            #[cfg(feature = "fdb")]
            DbBackend::Fdb(db) => TxBackend::Fdb(db.create_transaction(priority)?),
        };
        let nonce = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .u64(..);
        Ok(Transaction::new(TxInner {
            backend,
            nonce,
            #[cfg(feature = "testing")]
            too_old_at: self
                .inner
                .faults
                .as_ref()
                .and_then(|f| f.too_old_read_index()),
            #[cfg(feature = "testing")]
            reads: std::sync::atomic::AtomicU32::new(0),
            #[cfg(feature = "testing")]
            faults: self.inner.faults.clone(),
        }))
    }

    /// Runs `body` in a transaction and commits it, retrying retryable errors (from the body
    /// or the commit) with exponential backoff and jitter, under the database's [`RunOptions`].
    ///
    /// `body` gets a fresh transaction each attempt and [`MaybeCommitted`]: true if an earlier
    /// attempt may have committed, in which case a non-idempotent body must check for its own
    /// marker before writing again. Generate ids before calling `run`, not inside `body`.
    /// For a body with its own error type, use [`Database::transact`].
    ///
    /// # Errors
    /// The body's error, or the commit's, as soon as it is not retryable;
    /// [`Error::RetryLimitReached`] (permanent, holding the last error) once the attempt limit
    /// is reached.
    pub async fn run<F, Fut, T>(&self, body: F) -> Result<T>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.transact(body).await
    }

    /// [`Database::run`] for a body whose error type wraps the store's ([`TransactError`]): a
    /// retryable store error inside it is still retried.
    ///
    /// # Errors
    /// As [`Database::run`].
    pub async fn transact<F, Fut, T, E>(&self, body: F) -> Result<T, E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TransactError,
    {
        let options = self.inner.run.clone();
        self.transact_with(&options, body).await
    }

    /// [`Database::transact`] with its own retry policy.
    ///
    /// # Errors
    /// As [`Database::run`].
    pub async fn transact_with<F, Fut, T, E>(&self, options: &RunOptions, body: F) -> Result<T, E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TransactError,
    {
        self.transact_observed(options, body, |_| {}).await
    }

    /// [`Database::transact_with`] that calls `failed` after every attempt that did not commit
    /// (or may not have), at once: before the backoff and before the error is returned. A body
    /// that announces what it is about to write (so that others keep away from it) withdraws
    /// that there, rather than holding it through the backoff.
    ///
    /// # Errors
    /// As [`Database::run`].
    pub async fn transact_observed<F, Fut, T, E, H>(
        &self,
        options: &RunOptions,
        mut body: F,
        mut failed: H,
    ) -> Result<T, E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TransactError,
        H: FnMut(&E),
    {
        let mut maybe_committed = false;
        let mut backoff = options.initial_backoff;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            // A batch attempt waits for its turn before its first read, so that it reads the
            // state as of when it runs; the turn is given back before any backoff.
            let admitted = match (&self.inner.batch, options.priority) {
                (Some(admission), Priority::Batch | Priority::Background) => {
                    Some(admission.acquire(options.priority).await)
                }
                _ => None,
            };
            let tx = self.create_transaction_at(options.priority)?;
            let outcome = match body(tx.clone(), MaybeCommitted(maybe_committed)).await {
                Ok(value) => match tx.commit().await {
                    Ok(_) => return Ok(value),
                    Err(e) => E::from(e),
                },
                Err(e) => {
                    drop(tx);
                    e
                }
            };
            // The hook first: what it withdraws is gone before another batch attempt starts.
            failed(&outcome);
            drop(admitted);
            let class = outcome.store_error().map(Error::class);
            match class {
                Some(ErrorClass::Retryable) => {}
                Some(ErrorClass::MaybeCommitted) => maybe_committed = true,
                _ => return Err(outcome),
            }
            if options.max_attempts.is_some_and(|max| attempt >= max) {
                tracing::warn!(attempt, "transaction gave up after its attempt limit");
                // Reported as permanent, so a caller's own retry loop does not multiply the
                // attempts; the last error is kept inside. Every retryable or maybe-committed
                // store error has a FoundationDB code, so it can be rebuilt from it.
                let last = outcome
                    .store_error()
                    .and_then(|e| e.fdb_code().map(|code| Error::from_fdb_code(code, e)));
                return Err(match last {
                    Some(last) => E::from(Error::RetryLimitReached {
                        attempts: attempt,
                        last: Box::new(last),
                    }),
                    None => outcome,
                });
            }
            let jittered = {
                let mut rng = self
                    .inner
                    .rng
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                backoff.mul_f64(0.5 + rng.f64() / 2.0)
            };
            tracing::debug!(attempt, ?class, backoff = ?jittered, "retrying transaction");
            tokio::time::sleep(jittered).await;
            backoff = (backoff * 2).min(options.max_backoff);
        }
    }
}
