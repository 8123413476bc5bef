//! UUIDv7 ids (CONVENTIONS.md) from the injected clock and a seeded generator, so ids are
//! time-ordered like the keys they sit in, and a simulation with a fixed seed and a manual
//! clock produces the same ids every run.

use std::sync::Mutex;

use uuid::Uuid;

use crate::clock::SharedClock;

/// Makes UUIDv7 ids: 48 bits of milliseconds from the clock, 74 random bits from the seed.
#[derive(Debug)]
pub struct IdGenerator {
    clock: SharedClock,
    rng: Mutex<fastrand::Rng>,
}

impl IdGenerator {
    /// A generator on `clock`, seeded with `seed` (use a random seed outside simulations).
    #[must_use]
    pub fn new(clock: SharedClock, seed: u64) -> Self {
        IdGenerator {
            clock,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// A new id.
    pub fn next_id(&self) -> Uuid {
        let millis = u64::try_from(self.clock.now_micros().max(0) / 1000).unwrap_or(0);
        let mut random = [0u8; 10];
        {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rng.fill(&mut random);
        }
        uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    #[test]
    fn ids_are_v7_time_ordered_and_reproducible() {
        let clock = ManualClock::new(1_700_000_000_000_000);
        let a = IdGenerator::new(Arc::new(clock.clone()), 7);
        let b = IdGenerator::new(Arc::new(clock.clone()), 7);
        let first = a.next_id();
        assert_eq!(first, b.next_id());
        assert_eq!(first.get_version_num(), 7);
        clock.advance(std::time::Duration::from_millis(1));
        assert!(a.next_id() > first);
    }
}
