//! Fault injection (feature `testing`): a layer over any backend, driven by one seed, that
//! makes commits fail the ways FoundationDB's do: retryable conflicts, `commit_unknown_result`
//! both after applying the transaction and without applying it, `transaction_too_old`, and added
//! latency. Wrap a database with [`crate::Database::with_faults`]; the retry loop and every
//! body above it must still give correct results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Probabilities (0.0 to 1.0) of each fault per commit of a transaction that writes, or per
/// transaction for `too_old_on_read`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// A commit fails with a retryable conflict, not applied.
    pub conflict: f64,
    /// A commit is applied, then reports `commit_unknown_result`.
    pub unknown_applied: f64,
    /// A commit is not applied and reports `commit_unknown_result`.
    pub unknown_not_applied: f64,
    /// A commit fails with `transaction_too_old`.
    pub too_old_on_commit: f64,
    /// A transaction grows too old while it reads: one of its first reads (chosen at random)
    /// fails with `transaction_too_old`. Per transaction, not per read, so a transaction that
    /// reads a lot is no likelier to fail than FoundationDB's 5 s window makes it.
    pub too_old_on_read: f64,
    /// Each commit waits up to this long first (uniformly random); zero for none.
    pub max_latency: Duration,
    /// Each read (`get`, one page of `get_range`) waits this long first: a network round trip,
    /// as every read on FoundationDB is. Concurrent reads wait together, sequential ones one
    /// after another, so under paused time (`tokio::time::pause`) the time an operation takes
    /// counts its round trips. Zero for none.
    pub read_latency: Duration,
}

impl FaultConfig {
    /// No faults, seeded.
    #[must_use]
    pub fn none(seed: u64) -> Self {
        FaultConfig {
            seed,
            conflict: 0.0,
            unknown_applied: 0.0,
            unknown_not_applied: 0.0,
            too_old_on_commit: 0.0,
            too_old_on_read: 0.0,
            max_latency: Duration::ZERO,
            read_latency: Duration::ZERO,
        }
    }

    /// A hostile mix: about one commit in three fails somehow, one transaction in twenty-five
    /// grows too old while reading.
    #[must_use]
    pub fn chaos(seed: u64) -> Self {
        FaultConfig {
            seed,
            conflict: 0.15,
            unknown_applied: 0.08,
            unknown_not_applied: 0.08,
            too_old_on_commit: 0.03,
            too_old_on_read: 0.04,
            max_latency: Duration::from_millis(2),
            read_latency: Duration::ZERO,
        }
    }
}

/// What happens to one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFault {
    None,
    Conflict,
    UnknownApplied,
    UnknownNotApplied,
    TooOld,
}

/// Counts of the faults injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Conflicts injected.
    pub conflicts: u64,
    /// `commit_unknown_result` after applying.
    pub unknown_applied: u64,
    /// `commit_unknown_result` without applying.
    pub unknown_not_applied: u64,
    /// `transaction_too_old` on commits and reads.
    pub too_old: u64,
}

/// The injector shared by a faulty database's transactions.
#[derive(Debug)]
pub(crate) struct FaultInjector {
    config: FaultConfig,
    rng: Mutex<fastrand::Rng>,
    counts: [AtomicU64; 4],
}

impl FaultInjector {
    pub(crate) fn new(config: FaultConfig) -> Self {
        FaultInjector {
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            config,
            counts: Default::default(),
        }
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn roll(&self) -> f64 {
        self.with_rng(fastrand::Rng::f64)
    }

    /// For a new transaction: the index of the read that will fail as too old, if any.
    pub(crate) fn too_old_read_index(&self) -> Option<u32> {
        let hit = self.config.too_old_on_read > 0.0 && self.roll() < self.config.too_old_on_read;
        hit.then(|| self.with_rng(|r| r.u32(0..8)))
    }

    /// Waits out a read's round trip, if the config has one.
    pub(crate) async fn before_read(&self) {
        if !self.config.read_latency.is_zero() {
            tokio::time::sleep(self.config.read_latency).await;
        }
    }

    /// Counts a too-old read that was injected.
    pub(crate) fn count_too_old_read(&self) {
        self.counts[3].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) async fn before_commit(&self) -> CommitFault {
        if !self.config.max_latency.is_zero() {
            let wait = self.config.max_latency.mul_f64(self.roll());
            tokio::time::sleep(wait).await;
        }
        let c = &self.config;
        let table = [
            (c.conflict, CommitFault::Conflict),
            (c.unknown_applied, CommitFault::UnknownApplied),
            (c.unknown_not_applied, CommitFault::UnknownNotApplied),
            (c.too_old_on_commit, CommitFault::TooOld),
        ];
        let r = self.roll();
        let mut edge = 0.0;
        for (slot, (p, fault)) in table.into_iter().enumerate() {
            edge += p;
            if r < edge {
                self.counts[slot].fetch_add(1, Ordering::Relaxed);
                return fault;
            }
        }
        CommitFault::None
    }

    pub(crate) fn stats(&self) -> FaultStats {
        FaultStats {
            conflicts: self.counts[0].load(Ordering::Relaxed),
            unknown_applied: self.counts[1].load(Ordering::Relaxed),
            unknown_not_applied: self.counts[2].load(Ordering::Relaxed),
            too_old: self.counts[3].load(Ordering::Relaxed),
        }
    }
}
