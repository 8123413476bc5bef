//! The `memory:` engine: a persistent (structurally shared) ordered map, so a snapshot is an
//! O(1) clone and readers never block writers. Lives as long as the process.

use std::sync::{Arc, Mutex};

use futures::future::{self, BoxFuture, FutureExt};
use imbl::OrdMap;

use crate::clock::SharedClock;
use crate::error::Result;
use crate::local::resolver::{Pin, Pins, Resolver};
use crate::local::watch::WatchRegistry;
use crate::local::{
    apply_mutations, versionstamp, CommitOutcome, CommitRequest, Engine, KvWrite, Snapshot,
    Snapshots,
};

/// Keys and values are reference-counted: a commit copies the tree nodes on its paths that
/// live snapshots still share, and copying an entry is then a count increment, not a heap copy.
pub(crate) type Map = OrdMap<Arc<[u8]>, Arc<[u8]>>;

#[derive(Debug)]
struct State {
    version: u64,
    data: Map,
    resolver: Resolver,
}

/// The in-memory engine.
#[derive(Debug)]
pub(crate) struct MemoryEngine {
    state: Mutex<State>,
    pins: Arc<Pins>,
    watches: WatchRegistry,
    clock: SharedClock,
}

impl MemoryEngine {
    pub(crate) fn new(clock: SharedClock) -> Arc<Self> {
        Arc::new(MemoryEngine {
            state: Mutex::new(State {
                version: 0,
                data: Map::new(),
                resolver: Resolver::default(),
            }),
            pins: Arc::new(Pins::default()),
            watches: WatchRegistry::default(),
            clock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn commit_now(&self, req: CommitRequest) -> Result<CommitOutcome> {
        let (outcome, committed) = {
            let mut st = self.lock();
            if let Some(rv) = req.read_version {
                st.resolver.check(rv, &req.reads)?;
            }
            // Resolved: its read version no longer holds back the resolver's memory.
            drop(req.pin);
            let version = st.version + 1;
            let stamp = versionstamp(version, 0);
            let mut writes = req.writes;
            // Applied in place: only nodes that snapshots share are copied. Applying to the
            // in-memory map cannot fail (MapWriter never errors), so no commit is half-applied.
            apply_mutations(
                &mut MapWriter(&mut st.data),
                &req.mutations,
                &stamp,
                &mut writes,
            )?;
            st.version = version;
            // Under the state lock, as snapshots are taken: a new one reads at `version`.
            let floor = self.pins.floor(version);
            st.resolver.set_floor(floor, version);
            st.resolver.record(version, writes, self.clock.monotonic());
            (CommitOutcome { version, stamp }, [(stamp, req.mutations)])
        };
        self.watches.fire_committed(self, &committed);
        Ok(outcome)
    }
}

impl Snapshots for MemoryEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        let st = self.lock();
        Ok(Box::new(MemSnapshot {
            version: st.version,
            data: st.data.clone(),
            pin: Some(self.pins.pin(st.version)),
        }))
    }
}

impl Engine for MemoryEngine {
    fn commit(&self, req: CommitRequest) -> BoxFuture<'static, Result<CommitOutcome>> {
        future::ready(self.commit_now(req)).boxed()
    }

    fn watches(&self) -> &WatchRegistry {
        &self.watches
    }

    fn as_snapshots(&self) -> &dyn Snapshots {
        self
    }
}

/// A snapshot of a map at one version (an O(1) clone of it); the embedded engine uses it too.
pub(crate) struct MemSnapshot {
    pub(crate) version: u64,
    pub(crate) data: Map,
    pub(crate) pin: Option<Pin>,
}

impl Snapshot for MemSnapshot {
    fn version(&self) -> u64 {
        self.version
    }

    fn take_pin(&mut self) -> Option<Pin> {
        self.pin.take()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.get(key).map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let range = self.data.range::<_, [u8]>((
            std::ops::Bound::Included(begin),
            std::ops::Bound::Excluded(end),
        ));
        if reverse {
            for (k, v) in range.rev() {
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            for (k, v) in range {
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Writes into a map; never fails.
pub(crate) struct MapWriter<'a>(pub(crate) &'a mut Map);

impl KvWrite for MapWriter<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.insert(Arc::from(key), Arc::from(value));
        Ok(())
    }

    fn put_shared(&mut self, key: &Arc<[u8]>, value: &Arc<[u8]>) -> Result<()> {
        self.0.insert(Arc::clone(key), Arc::clone(value));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.0.remove(key);
        Ok(())
    }

    fn delete_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        let doomed: Vec<Arc<[u8]>> = self
            .0
            .range::<_, [u8]>((
                std::ops::Bound::Included(begin),
                std::ops::Bound::Excluded(end),
            ))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for k in doomed {
            self.0.remove(&k);
        }
        Ok(())
    }
}
