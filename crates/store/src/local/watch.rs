//! Watches for the local backends. A watch is registered when its transaction commits, with
//! the value that transaction saw; it fires once the stored value differs from it. As in
//! FoundationDB, a watch is a hint: the reader must re-read (A -> B -> A between two checks may
//! go unseen, and a firing does not say what the value is now).
//!
//! Ordering argument: registration reads the current value *under the registry lock*, and a
//! commit checks watchers under the same lock *after* its data is visible. So a commit that
//! registration did not see is checked against the new watcher, and no change is missed.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::limits::MAX_WATCHES;
use crate::local::{fill_versionstamp, Committed, KeyRange, Mutation, Snapshots, WatchRequest};
use crate::types::key_after;

struct Watcher {
    seen: Option<Vec<u8>>,
    notify: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct Inner {
    by_key: BTreeMap<Vec<u8>, Vec<Watcher>>,
    len: usize,
}

impl Inner {
    /// Adds `key` to `out` if someone watches it.
    fn if_watched(&self, key: &[u8], out: &mut Vec<KeyRange>) {
        if self.by_key.contains_key(key) {
            out.push((key.to_vec(), key_after(key)));
        }
    }

    fn sweep_dropped(&mut self) {
        let mut len = 0;
        self.by_key.retain(|_, ws| {
            ws.retain(|w| !w.notify.is_closed());
            len += ws.len();
            !ws.is_empty()
        });
        self.len = len;
    }
}

/// The outstanding watches of one local database.
#[derive(Default)]
pub(crate) struct WatchRegistry {
    inner: Mutex<Inner>,
}

impl fmt::Debug for WatchRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchRegistry").finish_non_exhaustive()
    }
}

impl WatchRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Activates the watches of a committed transaction.
    pub(crate) fn register(
        &self,
        source: &dyn Snapshots,
        requests: Vec<WatchRequest>,
    ) -> Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let snap = source.snapshot()?;
        for (key, seen, notify) in requests {
            if snap.get(&key)? != seen {
                let _ = notify.send(Ok(()));
                continue;
            }
            if inner.len >= MAX_WATCHES {
                inner.sweep_dropped();
                if inner.len >= MAX_WATCHES {
                    let _ = notify.send(Err(Error::TooManyWatches));
                    continue;
                }
            }
            inner.len += 1;
            inner
                .by_key
                .entry(key)
                .or_default()
                .push(Watcher { seen, notify });
        }
        Ok(())
    }

    /// [`WatchRegistry::fire`] for the keys that committed transactions wrote. Only watched
    /// keys are copied out of the mutations; with no watch at all nothing is done.
    pub(crate) fn fire_committed(&self, source: &dyn Snapshots, committed: &[Committed]) {
        let touched = {
            let inner = self.lock();
            if inner.len == 0 {
                return;
            }
            let mut out = Vec::new();
            for (stamp, mutations) in committed {
                for m in mutations {
                    match m {
                        Mutation::Set(k, _) => inner.if_watched(k, &mut out),
                        Mutation::Clear(k)
                        | Mutation::Atomic(_, k, _)
                        | Mutation::VersionstampedValue { key: k, .. } => {
                            inner.if_watched(k, &mut out);
                        }
                        Mutation::ClearRange(b, e) => {
                            let range =
                                (Bound::Included(b.as_slice()), Bound::Excluded(e.as_slice()));
                            if inner.by_key.range::<[u8], _>(range).next().is_some() {
                                out.push((b.clone(), e.clone()));
                            }
                        }
                        Mutation::VersionstampedKey { key, offset, .. } => {
                            inner.if_watched(&fill_versionstamp(key, *offset, stamp), &mut out);
                        }
                    }
                }
            }
            out
        };
        // A watch registered in between read the published state, which already holds these
        // commits: it has nothing to miss.
        if !touched.is_empty() {
            self.fire(source, &touched);
        }
    }

    /// Fires the watches on keys in `touched` whose value now differs from what they saw.
    /// Must be called after the commit's data is visible to new snapshots.
    pub(crate) fn fire(&self, source: &dyn Snapshots, touched: &[KeyRange]) {
        let mut inner = self.lock();
        if inner.len == 0 {
            return;
        }
        let Ok(snap) = source.snapshot() else {
            // Cannot read: wake everyone touched; watchers re-read anyway.
            return Self::fire_all(&mut inner, touched);
        };
        let mut removed = 0;
        for (b, e) in touched {
            let range = (Bound::Included(b.as_slice()), Bound::Excluded(e.as_slice()));
            for (key, ws) in inner.by_key.range_mut::<[u8], _>(range) {
                let current = snap.get(key).ok();
                for w in std::mem::take(ws) {
                    let changed = current.as_ref().is_none_or(|c| *c != w.seen);
                    if w.notify.is_closed() {
                        removed += 1;
                    } else if changed {
                        let _ = w.notify.send(Ok(()));
                        removed += 1;
                    } else {
                        ws.push(w);
                    }
                }
            }
        }
        Self::notify_removed(&mut inner, removed);
    }

    fn fire_all(inner: &mut Inner, touched: &[KeyRange]) {
        let mut removed = 0;
        for (b, e) in touched {
            let range = (Bound::Included(b.as_slice()), Bound::Excluded(e.as_slice()));
            for (_, ws) in inner.by_key.range_mut::<[u8], _>(range) {
                removed += ws.len();
                for w in ws.drain(..) {
                    let _ = w.notify.send(Ok(()));
                }
            }
        }
        Self::notify_removed(inner, removed);
    }

    fn notify_removed(inner: &mut Inner, removed: usize) {
        inner.len = inner.len.saturating_sub(removed);
        inner.by_key.retain(|_, ws| !ws.is_empty());
    }
}
