//! [`Transaction`]: one FoundationDB-style transaction, whatever the backend.
//!
//! Reads see the transaction's own writes. Serializable reads add read conflict ranges; snapshot
//! reads do not. Writes are buffered and infallible (as in FoundationDB, an invalid write such as
//! an oversized key is reported by the next read or by the commit). Nothing is visible to others
//! until [`Transaction::commit`] succeeds.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};

use crate::error::{Error, Result};
use crate::local::LocalTx;
use crate::types::{
    key_after, CommitVersionstamp, KeyValue, MutationType, RangeOption, RangeResult,
};

#[cfg(feature = "testing")]
use crate::faults::{CommitFault, FaultInjector};

// One per transaction, inside its `Arc`: boxing the larger local variant would only add an
// allocation to the common case.
#[allow(clippy::large_enum_variant)]
pub(crate) enum TxBackend {
    Local(LocalTx),
    #[cfg(feature = "fdb")]
    Fdb(crate::fdb::FdbTx),
}

pub(crate) struct TxInner {
    pub(crate) backend: TxBackend,
    /// Drawn from the database's (seeded) generator when the transaction was created.
    pub(crate) nonce: u64,
    #[cfg(feature = "testing")]
    pub(crate) faults: Option<Arc<FaultInjector>>,
    /// The read at which this transaction is made too old (fault injection).
    #[cfg(feature = "testing")]
    pub(crate) too_old_at: Option<u32>,
    /// Reads so far (fault injection).
    #[cfg(feature = "testing")]
    pub(crate) reads: std::sync::atomic::AtomicU32,
}

/// A transaction. Cheap to clone (clones share it); every clone must be dropped before
/// [`Transaction::commit`], which the retry loop calls when the body returns.
#[derive(Clone)]
pub struct Transaction {
    inner: Arc<TxInner>,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner.backend {
            TxBackend::Local(_) => "local",
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(_) => "fdb",
        };
        f.debug_struct("Transaction")
            .field("backend", &kind)
            .finish()
    }
}

/// What a successful commit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The commit version; `None` for a read-only transaction (nothing was written).
    pub version: Option<u64>,
}

/// A watch: resolves when the watched key's value differs from what the transaction saw, after
/// the transaction committed. It is a hint; always re-read. It fails with the commit's error if
/// the transaction did not commit, and with [`Error::TooManyWatches`] past the limit.
pub struct Watch(BoxFuture<'static, Result<()>>);

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Watch")
    }
}

impl Future for Watch {
    type Output = Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_unpin(cx)
    }
}

/// The versionstamp of a transaction's commit; resolves once the transaction committed, and
/// fails if it did not (or wrote nothing).
pub struct VersionstampFuture(BoxFuture<'static, Result<CommitVersionstamp>>);

impl fmt::Debug for VersionstampFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VersionstampFuture")
    }
}

impl Future for VersionstampFuture {
    type Output = Result<CommitVersionstamp>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_unpin(cx)
    }
}

impl Transaction {
    pub(crate) fn new(inner: TxInner) -> Self {
        Transaction {
            inner: Arc::new(inner),
        }
    }

    /// A random number drawn when this transaction was created, the same for all its clones.
    /// For spreading hot keys across transactions while keeping one transaction on one key:
    /// a layer that shards a counter picks the shard from it, so every atomic add the
    /// transaction makes lands on one key (and the local backends merge them into one write).
    #[must_use]
    pub fn nonce(&self) -> u64 {
        self.inner.nonce
    }

    #[cfg(feature = "testing")]
    async fn inject_read_fault(&self) -> Result<()> {
        let Some(f) = &self.inner.faults else {
            return Ok(());
        };
        f.before_read().await;
        let Some(fail_at) = self.inner.too_old_at else {
            return Ok(());
        };
        let n = self
            .inner
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= fail_at {
            // Once too old, every later read fails too, as in FoundationDB.
            if n == fail_at {
                f.count_too_old_read();
            }
            return Err(Error::TransactionTooOld);
        }
        Ok(())
    }

    #[cfg(not(feature = "testing"))]
    #[allow(clippy::unused_self, clippy::unused_async)]
    async fn inject_read_fault(&self) -> Result<()> {
        Ok(())
    }

    /// Reads one key. A serializable read (`snapshot == false`) adds a read conflict on it.
    ///
    /// # Errors
    /// Retryable errors (too old), [`Error::KeyOutsideLegalRange`] for keys at or above
    /// `\xff`, [`Error::AccessedUnreadable`], or an error deferred from an earlier write call.
    pub async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        self.inject_read_fault().await?;
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.get(key, snapshot),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.get(key, snapshot).await,
        }
    }

    /// Reads one page of a range (see [`RangeOption`]). A serializable read adds a read conflict
    /// on the part of the range it examined: all of it, or up to the last pair returned when the
    /// limit was reached. `more` may be true although nothing follows.
    ///
    /// # Errors
    /// As [`Transaction::get`].
    pub async fn get_range(&self, opt: &RangeOption) -> Result<RangeResult> {
        self.inject_read_fault().await?;
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.get_range(opt),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.get_range(opt).await,
        }
    }

    /// Reads pages of `opt.limit` pairs (or everything, without a limit) until the range is
    /// exhausted, and returns them all. Keep ranges small: a transaction lives 5 s.
    ///
    /// # Errors
    /// As [`Transaction::get`].
    pub async fn get_range_all(&self, opt: &RangeOption) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        let mut page_opt = opt.clone();
        loop {
            let page = self.get_range(&page_opt).await?;
            let next = page.next_page(&page_opt);
            out.extend(page.kvs);
            match next {
                Some(n) => page_opt = n,
                None => return Ok(out),
            }
        }
    }

    /// Sets a key to a value.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.set(key, value),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.set(key, value),
        }
    }

    /// Clears a key.
    pub fn clear(&self, key: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.clear(key),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.clear(key),
        }
    }

    /// Clears every key in `[begin, end)`.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.clear_range(begin, end),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.clear_range(begin, end),
        }
    }

    /// Applies an atomic operation at commit, with no read conflict (see [`MutationType`]).
    pub fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.atomic_op(key, param, op),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.atomic_op(key, param, op),
        }
    }

    /// Adds `delta` to the 8-byte little-endian counter at `key` (two's complement, so negative
    /// deltas subtract). Read it back with [`decode_counter`].
    pub fn add(&self, key: &[u8], delta: i64) {
        self.atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
    }

    /// Sets the key `raw_key` with its versionstamp placeholder filled in at commit. `raw_key`
    /// ends with the 4-byte little-endian offset of a 10-byte placeholder, the form
    /// `foundationdb_tuple::pack_with_versionstamp` produces. Such keys cannot be read back in
    /// the same transaction.
    pub fn set_versionstamped_key(&self, raw_key: &[u8], value: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.set_versionstamped_key(raw_key, value),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.set_versionstamped_key(raw_key, value),
        }
    }

    /// Sets `key` to `raw_value` with its versionstamp placeholder filled in at commit (same
    /// offset convention as [`Transaction::set_versionstamped_key`]).
    pub fn set_versionstamped_value(&self, key: &[u8], raw_value: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.set_versionstamped_value(key, raw_value),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.set_versionstamped_value(key, raw_value),
        }
    }

    /// Adds a read conflict on `[begin, end)` as if it had been read (serializably).
    pub fn add_read_conflict_range(&self, begin: &[u8], end: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.add_conflict_range(begin, end, true),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.add_conflict_range(begin, end, true),
        }
    }

    /// Adds a read conflict on one key.
    pub fn add_read_conflict_key(&self, key: &[u8]) {
        self.add_read_conflict_range(key, &key_after(key));
    }

    /// Adds a write conflict on `[begin, end)` as if it had been written.
    pub fn add_write_conflict_range(&self, begin: &[u8], end: &[u8]) {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.add_conflict_range(begin, end, false),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.add_conflict_range(begin, end, false),
        }
    }

    /// Watches `key`; the watch becomes active when this transaction commits.
    pub fn watch(&self, key: &[u8]) -> Watch {
        match &self.inner.backend {
            TxBackend::Local(tx) => match tx.watch(key) {
                Ok(rx) => Watch(
                    async move { rx.await.unwrap_or(Err(Error::TransactionCancelled)) }.boxed(),
                ),
                Err(e) => Watch(futures::future::ready(Err(e)).boxed()),
            },
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => Watch(tx.watch(key)),
        }
    }

    /// The versionstamp this transaction's commit will get.
    pub fn versionstamp(&self) -> VersionstampFuture {
        match &self.inner.backend {
            TxBackend::Local(tx) => {
                let rx = tx.versionstamp();
                VersionstampFuture(
                    async move { rx.await.map_err(|_| Error::TransactionCancelled) }.boxed(),
                )
            }
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => VersionstampFuture(tx.versionstamp()),
        }
    }

    /// The version this transaction reads at (taking it now if it has not read yet).
    ///
    /// # Errors
    /// Retryable errors from the backend.
    pub async fn read_version(&self) -> Result<u64> {
        match &self.inner.backend {
            TxBackend::Local(tx) => tx.read_version(),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.read_version().await,
        }
    }

    /// Commits. Use [`crate::Database::run`] instead unless you need a single attempt.
    ///
    /// # Errors
    /// [`Error::ReferenceToTransactionKept`] if a clone is still alive; otherwise the commit's
    /// error, whose [`Error::class`] says whether to retry.
    pub async fn commit(self) -> Result<Committed> {
        let inner = Arc::try_unwrap(self.inner).map_err(|_| Error::ReferenceToTransactionKept)?;
        #[cfg(feature = "testing")]
        let read_only = match &inner.backend {
            TxBackend::Local(tx) => tx.is_read_only(),
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.is_read_only(),
        };
        // Read-only commits never conflict in FoundationDB, so no fault is injected there.
        #[cfg(feature = "testing")]
        let fault = match &inner.faults {
            Some(f) if !read_only => f.before_commit().await,
            _ => CommitFault::None,
        };
        #[cfg(feature = "testing")]
        match fault {
            CommitFault::Conflict => return Err(Error::Conflict),
            CommitFault::UnknownNotApplied => return Err(Error::CommitUnknownResult),
            CommitFault::TooOld => return Err(Error::TransactionTooOld),
            CommitFault::None | CommitFault::UnknownApplied => {}
        }
        let version = match inner.backend {
            TxBackend::Local(tx) => tx.commit().await?,
            #[cfg(feature = "fdb")]
            TxBackend::Fdb(tx) => tx.commit().await?,
        };
        #[cfg(feature = "testing")]
        if fault == CommitFault::UnknownApplied && version.is_some() {
            return Err(Error::CommitUnknownResult);
        }
        Ok(Committed { version })
    }
}

/// Decodes a counter written with [`Transaction::add`] (missing counts as 0).
#[must_use]
pub fn decode_counter(value: Option<&[u8]>) -> i64 {
    let mut buf = [0u8; 8];
    if let Some(v) = value {
        let n = v.len().min(8);
        buf[..n].copy_from_slice(&v[..n]);
    }
    i64::from_le_bytes(buf)
}
