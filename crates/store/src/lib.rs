//! # steward-store: the ordered key-value transaction seam
//!
//! Everything Steward keeps (jobs, tenants, sessions, audit logs) lives in an ordered key-value
//! store with FoundationDB's transaction model. This crate owns that seam and its backends, and
//! nothing else: no key layout of other crates, no job logic.
//!
//! ```
//! # async fn demo() -> steward_store::Result<()> {
//! use steward_store::{Database, RangeOption};
//! let db = Database::open("memory:")?;
//! db.run(|tx, _maybe_committed| async move {
//!     tx.set(b"greeting", b"hello");
//!     tx.add(b"counter", 1);
//!     Ok(())
//! })
//! .await?;
//! let tx = db.create_transaction()?;
//! let all = tx.get_range_all(&RangeOption::new(b"a".to_vec(), b"z".to_vec())).await?;
//! assert_eq!(all.len(), 2);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Database`] (`database.rs`): open from a URL ([`StoreUrl`]), create transactions, and the
//!   retry loop [`Database::run`] with [`MaybeCommitted`].
//! - [`Transaction`] (`transaction.rs`): reads (point, range, snapshot or serializable), buffered
//!   writes, atomic ops, versionstamps, conflict ranges, watches, commit.
//! - [`Error`] (`error.rs`): one error type whose [`ErrorClass`] (retryable, maybe committed,
//!   permanent) survives every conversion; FoundationDB codes map onto it exactly.
//! - [`clock`]: the injected [`Clock`]; [`types`]: ranges, atomic semantics, key helpers.
//! - `local/`: the `memory:` and `embedded:` backends. They share a read-your-writes
//!   transaction, a FoundationDB-style resolver (optimistic concurrency at versions) and
//!   watches; they differ only in the engine (a persistent map, or the same map made durable by
//!   a pipelined write-ahead log with group commit and checkpoints).
//! - `fdb.rs` (feature `fdb`): a thin adapter over the `foundationdb` crate, API 710; its
//!   plain-Rust decisions are in `fdb_logic.rs`, built and unit-tested without the feature.
//! - `faults.rs` and [`conformance`] (feature `testing`): fault injection over any backend, and
//!   the one suite every backend must pass.
//!
//! Keys are FoundationDB tuples ([`tuple`] re-exports `foundationdb-tuple`), so every backend
//! stores byte-identical keys. Only the `keys` modules of the crates above pack them.
//!
//! # Limits
//! Every backend enforces FoundationDB's limits ([`limits`]): keys 10,000 B, values 100,000 B,
//! transactions 10,000,000 B, and a 5 s lifetime from the first read.

mod admission;
pub mod clock;
#[cfg(feature = "testing")]
pub mod conformance;
mod database;
mod error;
#[cfg(feature = "testing")]
mod faults;
#[cfg(feature = "fdb")]
mod fdb;
#[cfg_attr(not(feature = "fdb"), allow(dead_code))]
mod fdb_logic;
pub mod ids;
mod local;
mod transaction;
pub mod types;
mod url;

pub use foundationdb_tuple as tuple;

pub use crate::clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use crate::database::{
    Database, MaybeCommitted, OpenOptions, Priority, RunOptions, DEFAULT_EMBEDDED_BATCH_IN_FLIGHT,
    DEFAULT_MAX_ATTEMPTS,
};
pub use crate::error::{classify_fdb_code, code, Error, ErrorClass, Result, TransactError};
#[cfg(feature = "testing")]
pub use crate::faults::{FaultConfig, FaultStats};
pub use crate::ids::IdGenerator;
pub use crate::transaction::{decode_counter, Committed, Transaction, VersionstampFuture, Watch};
pub use crate::types::{
    key_after, strinc, CommitVersionstamp, KeyValue, MutationType, RangeOption, RangeResult,
};
pub use crate::url::{StoreUrl, DEFAULT_STORE_URL};

/// FoundationDB's limits, enforced by every backend.
pub mod limits {
    use std::time::Duration;

    /// Largest key, in bytes.
    pub const MAX_KEY_SIZE: usize = 10_000;
    /// Largest value, in bytes.
    pub const MAX_VALUE_SIZE: usize = 100_000;
    /// Largest transaction (written keys and values, cleared ranges, conflict ranges), in bytes.
    pub const MAX_TRANSACTION_SIZE: usize = 10_000_000;
    /// How long a transaction may live after its first read.
    pub const TRANSACTION_LIFETIME: Duration = Duration::from_secs(5);
    /// Most outstanding watches per database handle.
    pub const MAX_WATCHES: usize = 10_000;
}
