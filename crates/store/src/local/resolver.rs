//! Conflict detection for the local backends, as FoundationDB's resolvers do it: a transaction
//! that read at version `rv` may commit only if no key in its read conflict ranges was written by
//! a transaction that committed after `rv`. The resolver remembers the writes of the last
//! [`crate::limits::TRANSACTION_LIFETIME`] (plus a margin); a transaction older than what it
//! remembers gets `transaction_too_old`, which is retryable.
//!
//! It forgets sooner what no transaction can still conflict with: every snapshot *pins* its read
//! version ([`Pins`]) until its commit is resolved or it is dropped, and writes at or below the
//! oldest pinned version (or the latest version, when nothing older is pinned) are forgotten.
//! Transactions last milliseconds, so the resolver holds milliseconds of writes, not seconds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::TRANSACTION_LIFETIME;
use crate::local::{KeyRange, WriteConflict};

/// How long after the transaction lifetime writes are still remembered.
const MARGIN: Duration = Duration::from_secs(1);

/// One commit in the resolver's log: version, monotonic commit time, the single keys it wrote.
type Written = (u64, Duration, Vec<Arc<[u8]>>);

#[derive(Debug, Default)]
pub(crate) struct Resolver {
    /// Last commit version that wrote each single key (shared with the commit's mutations).
    points: BTreeMap<Arc<[u8]>, u64>,
    /// Ranges written (clear_range, explicit write conflict ranges) and their versions.
    ranges: Vec<(Vec<u8>, Vec<u8>, u64)>,
    /// (commit version, monotonic commit time, single keys written), oldest first, for pruning.
    log: VecDeque<Written>,
    /// Versions at or below this are forgotten; older readers are too old.
    horizon: u64,
    /// No live or future reader reads below this version (see [`Pins::floor`]).
    floor: u64,
    /// The latest version readers can see: time-based pruning (for snapshots never released)
    /// never goes past it, so a disk sync that stalls for seconds does not make every new
    /// transaction too old.
    latest: u64,
    last_prune: Duration,
}

impl Resolver {
    /// Fails with a conflict if any read range saw a write newer than `read_version`.
    pub(crate) fn check(&self, read_version: u64, reads: &[KeyRange]) -> Result<()> {
        if read_version < self.horizon {
            return Err(Error::TransactionTooOld);
        }
        for (b, e) in reads {
            if is_point(b, e) {
                if self
                    .points
                    .get(b.as_slice())
                    .is_some_and(|&v| v > read_version)
                {
                    return Err(Error::Conflict);
                }
            } else if b < e
                && self
                    .points
                    .range::<[u8], _>((
                        std::ops::Bound::Included(b.as_slice()),
                        std::ops::Bound::Excluded(e.as_slice()),
                    ))
                    .any(|(_, &v)| v > read_version)
            {
                return Err(Error::Conflict);
            }
            if self
                .ranges
                .iter()
                .any(|(wb, we, v)| *v > read_version && wb < e && b < we)
            {
                return Err(Error::Conflict);
            }
        }
        Ok(())
    }

    /// Tells the resolver that no live or future transaction reads below `floor`: writes at or
    /// below it can no longer conflict with anything and are forgotten at the next prune; and
    /// that readers see versions up to `latest`.
    pub(crate) fn set_floor(&mut self, floor: u64, latest: u64) {
        self.floor = self.floor.max(floor);
        self.latest = self.latest.max(latest);
    }

    /// Records the write conflict ranges of a commit at `version`, made at monotonic `now`.
    pub(crate) fn record<W: Into<WriteConflict>>(
        &mut self,
        version: u64,
        writes: impl IntoIterator<Item = W>,
        now: Duration,
    ) {
        let writes = writes.into_iter();
        let mut keys = Vec::with_capacity(writes.size_hint().0);
        for w in writes {
            let key = match w.into() {
                WriteConflict::Key(k) => k,
                WriteConflict::Range(b, e) if is_point(&b, &e) => Arc::from(b),
                WriteConflict::Range(b, e) => {
                    if b < e {
                        self.ranges.push((b, e, version));
                    }
                    continue;
                }
            };
            self.points.insert(Arc::clone(&key), version);
            keys.push(key);
        }
        self.log.push_back((version, now, keys));
        self.prune(now);
    }

    /// Forgets writes older than the transaction lifetime or at or below the floor, in time
    /// proportional to what it forgets: each log entry knows its keys, and a key is dropped
    /// only if no later commit wrote it again.
    fn prune(&mut self, now: Duration) {
        if now.saturating_sub(self.last_prune) < Duration::from_millis(1) {
            return;
        }
        self.last_prune = now;
        let keep_after = now.saturating_sub(TRANSACTION_LIFETIME + MARGIN);
        let mut horizon = self.horizon;
        while let Some((v, t, _)) = self.log.front() {
            let expired = *t < keep_after && *v <= self.latest;
            if !expired && *v > self.floor {
                break;
            }
            horizon = *v;
            if let Some((v, _, keys)) = self.log.pop_front() {
                for k in keys {
                    if self.points.get(&*k) == Some(&v) {
                        self.points.remove(&*k);
                    }
                }
            }
        }
        if horizon > self.horizon {
            self.horizon = horizon;
            if !self.ranges.is_empty() {
                self.ranges.retain(|(_, _, v)| *v > horizon);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.points.len() + self.ranges.len()
    }
}

/// The read versions of live transactions. A snapshot pins its version (taken under the same
/// lock as the state it reads, so no prune can slip between the two) and keeps the pin until its
/// commit is resolved or it is dropped.
#[derive(Debug, Default)]
pub(crate) struct Pins(Mutex<BTreeMap<u64, usize>>);

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pins `version` until the returned guard is dropped.
    pub(crate) fn pin(self: &Arc<Self>, version: u64) -> Pin {
        *self.lock().entry(version).or_insert(0) += 1;
        Pin {
            pins: Arc::clone(self),
            version,
        }
    }

    /// The resolver's floor: the oldest pinned version, or `latest` (the version new snapshots
    /// get) if none is older. Call it under the lock that snapshots are taken under.
    pub(crate) fn floor(&self, latest: u64) -> u64 {
        self.lock()
            .first_key_value()
            .map_or(latest, |(&v, _)| v.min(latest))
    }
}

/// A pinned read version; unpinned on drop.
#[derive(Debug)]
pub(crate) struct Pin {
    pins: Arc<Pins>,
    version: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.version) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.version);
            }
        }
    }
}

/// True if `[b, e)` holds exactly the key `b` (`e == b + \0`).
fn is_point(b: &[u8], e: &[u8]) -> bool {
    e.len() == b.len() + 1 && e.starts_with(b) && e[b.len()] == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::key_after;

    fn point(k: &[u8]) -> KeyRange {
        (k.to_vec(), key_after(k))
    }

    #[test]
    fn conflicts_only_with_newer_writes_that_intersect() {
        let mut r = Resolver::default();
        r.record(
            5,
            vec![point(b"a"), (b"m".to_vec(), b"p".to_vec())],
            Duration::ZERO,
        );
        assert!(r.check(5, &[point(b"a")]).is_ok());
        assert!(matches!(r.check(4, &[point(b"a")]), Err(Error::Conflict)));
        assert!(r.check(4, &[point(b"b")]).is_ok());
        assert!(matches!(
            r.check(4, &[(b"0".to_vec(), b"b".to_vec())]),
            Err(Error::Conflict)
        ));
        assert!(matches!(r.check(4, &[point(b"n")]), Err(Error::Conflict)));
        assert!(r.check(4, &[(b"p".to_vec(), b"z".to_vec())]).is_ok());
    }

    #[test]
    fn pruning_an_old_write_keeps_a_newer_write_of_the_same_key() {
        let mut r = Resolver::default();
        r.record(1, vec![point(b"a")], Duration::ZERO);
        r.record(2, vec![point(b"a")], Duration::from_secs(4));
        r.record(3, vec![point(b"z")], Duration::from_secs(7));
        assert!(matches!(r.check(1, &[point(b"a")]), Err(Error::Conflict)));
        assert!(r.check(2, &[point(b"a")]).is_ok());
    }

    #[test]
    fn writes_no_pinned_reader_can_see_are_forgotten_at_once() {
        let pins = Arc::new(Pins::default());
        let mut r = Resolver::default();
        let old = pins.pin(1);
        r.record(2, vec![point(b"a")], Duration::ZERO);
        r.set_floor(pins.floor(2), 2);
        r.record(3, vec![point(b"b")], Duration::from_millis(5));
        // The reader at 1 still sees both writes as conflicts.
        assert_eq!(r.remembered(), 2);
        assert!(matches!(r.check(1, &[point(b"a")]), Err(Error::Conflict)));
        drop(old);
        let now = pins.pin(3);
        r.set_floor(pins.floor(3), 3);
        r.record(4, vec![point(b"c")], Duration::from_millis(10));
        // Versions 2 and 3 are at or below every reader's version: forgotten.
        assert_eq!(r.remembered(), 1);
        assert!(r.check(3, &[point(b"a"), point(b"b")]).is_ok());
        assert!(matches!(r.check(3, &[point(b"c")]), Err(Error::Conflict)));
        assert!(matches!(r.check(1, &[]), Err(Error::TransactionTooOld)));
        drop(now);
        assert_eq!(pins.floor(9), 9);
    }

    #[test]
    fn forgets_old_writes_and_calls_older_readers_too_old() {
        let mut r = Resolver::default();
        r.record(1, vec![point(b"a")], Duration::ZERO);
        // A snapshot at version 0 is still pinned (never released), readers see version 1.
        r.set_floor(0, 1);
        r.record(2, vec![point(b"b")], Duration::from_secs(10));
        assert_eq!(r.remembered(), 1);
        assert!(matches!(r.check(0, &[]), Err(Error::TransactionTooOld)));
        assert!(r.check(1, &[point(b"a")]).is_ok());
        assert!(matches!(r.check(1, &[point(b"b")]), Err(Error::Conflict)));
    }

    #[test]
    fn a_stalled_disk_sync_does_not_age_out_writes_readers_cannot_see_yet() {
        let mut r = Resolver::default();
        // Versions 1 and 2 are resolved but not yet durable: readers still see version 0.
        r.set_floor(0, 0);
        r.record(1, vec![point(b"a")], Duration::ZERO);
        r.record(2, vec![point(b"b")], Duration::from_secs(10));
        assert_eq!(r.remembered(), 2);
        assert!(
            r.check(0, &[]).is_ok(),
            "a reader at the visible version is not too old"
        );
        assert!(matches!(r.check(0, &[point(b"a")]), Err(Error::Conflict)));
    }
}
