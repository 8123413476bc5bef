//! In-memory token buckets on the injected monotonic clock: the per-tenant request rate and
//! login throttling. Per process: several API replicas each allow the configured rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use steward_store::SharedClock;

use crate::config::RateLimit;

/// Buckets kept before full ones are dropped (a full bucket is the same as no bucket).
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

/// Token buckets by key.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    limit: RateLimit,
    clock: SharedClock,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub(crate) fn new(limit: RateLimit, clock: SharedClock) -> Self {
        Buckets {
            limit,
            clock,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Duration) {
        let elapsed = now.saturating_sub(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.limit.per_sec).min(f64::from(self.limit.burst));
        b.at = now;
    }

    /// Takes one token for `key`, or answers how long until one is there.
    pub(crate) fn take(&self, key: &K) -> Result<(), Duration> {
        let now = self.clock.monotonic();
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            let burst = f64::from(self.limit.burst);
            let per_sec = self.limit.per_sec;
            map.retain(|_, b| b.tokens + now.saturating_sub(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = map.entry(key.clone()).or_insert(Bucket {
            tokens: f64::from(self.limit.burst),
            at: now,
        });
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.limit.per_sec;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Gives back the token of an attempt that turned out fine (a successful login), so only
    /// failures use up the budget. Taken first and refunded after, so a burst of parallel
    /// attempts cannot all pass before any failure is counted.
    pub(crate) fn refund(&self, key: &K) {
        let now = self.clock.monotonic();
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = map.get_mut(key) {
            self.refill(b, now);
            b.tokens = (b.tokens + 1.0).min(f64::from(self.limit.burst));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_store::ManualClock;

    #[test]
    fn bucket_empties_and_refills_with_the_clock() {
        let clock = ManualClock::new(0);
        let b = Buckets::new(
            RateLimit {
                per_sec: 1.0,
                burst: 2,
            },
            clock.shared(),
        );
        assert!(b.take(&"a").is_ok());
        assert!(b.take(&"a").is_ok());
        let wait = b.take(&"a").unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(b.take(&"b").is_ok(), "keys are independent");
        clock.advance(Duration::from_secs(1));
        assert!(b.take(&"a").is_ok());
        assert!(b.take(&"a").is_err());
        b.refund(&"a");
        assert!(b.take(&"a").is_ok());
        assert!(b.take(&"a").is_err());
    }
}
