//! Conflict detection for the local backends, as FoundationDB's resolvers do it: a transaction
//! that read at version `rv` may commit only if no key in its read conflict ranges was written by
//! a transaction that committed after `rv`. The resolver remembers the writes of the last
//! [`crate::limits::TRANSACTION_LIFETIME`] (plus a margin); a transaction older than what it
//! remembers gets `transaction_too_old`, which is retryable.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::TRANSACTION_LIFETIME;
use crate::local::KeyRange;

/// How long after the transaction lifetime writes are still remembered.
const MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Resolver {
    /// Last commit version that wrote each single key.
    points: BTreeMap<Vec<u8>, u64>,
    /// Ranges written (clear_range, explicit write conflict ranges) and their versions.
    ranges: Vec<(Vec<u8>, Vec<u8>, u64)>,
    /// (commit version, monotonic commit time, single keys written), oldest first, for pruning.
    log: VecDeque<(u64, Duration, Vec<Vec<u8>>)>,
    /// Versions at or below this are forgotten; older readers are too old.
    horizon: u64,
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
                if self.points.get(b).is_some_and(|&v| v > read_version) {
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

    /// Records the write conflict ranges of a commit at `version`, made at monotonic `now`.
    pub(crate) fn record(&mut self, version: u64, writes: Vec<KeyRange>, now: Duration) {
        let mut keys = Vec::with_capacity(writes.len());
        for (b, e) in writes {
            if is_point(&b, &e) {
                self.points.insert(b.clone(), version);
                keys.push(b);
            } else if b < e {
                self.ranges.push((b, e, version));
            }
        }
        self.log.push_back((version, now, keys));
        self.prune(now);
    }

    /// Forgets writes older than the transaction lifetime, in time proportional to what it
    /// forgets: each log entry knows its keys, and a key is dropped only if no later commit
    /// wrote it again.
    fn prune(&mut self, now: Duration) {
        if now.saturating_sub(self.last_prune) < Duration::from_millis(50) {
            return;
        }
        self.last_prune = now;
        let keep_after = now.saturating_sub(TRANSACTION_LIFETIME + MARGIN);
        let mut horizon = self.horizon;
        while let Some((v, t, _)) = self.log.front() {
            if *t >= keep_after {
                break;
            }
            horizon = *v;
            if let Some((v, _, keys)) = self.log.pop_front() {
                for k in keys {
                    if self.points.get(&k) == Some(&v) {
                        self.points.remove(&k);
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
    fn forgets_old_writes_and_calls_older_readers_too_old() {
        let mut r = Resolver::default();
        r.record(1, vec![point(b"a")], Duration::ZERO);
        r.record(2, vec![point(b"b")], Duration::from_secs(10));
        assert_eq!(r.remembered(), 1);
        assert!(matches!(r.check(0, &[]), Err(Error::TransactionTooOld)));
        assert!(r.check(1, &[point(b"a")]).is_ok());
        assert!(matches!(r.check(1, &[point(b"b")]), Err(Error::Conflict)));
    }
}
