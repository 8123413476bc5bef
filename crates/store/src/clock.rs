//! Injected time. Everything above the store takes a [`Clock`] instead of calling
//! `SystemTime::now()`: wall time to persist (microseconds since the Unix epoch, as in keys and
//! records) and monotonic time to measure. [`ManualClock`] lets tests move time by hand, jump the
//! wall clock backwards, and expire leases or transactions without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Wall-clock time in microseconds since the Unix epoch. May jump (NTP, operator, tests).
    fn now_micros(&self) -> i64;
    /// Monotonic time since an arbitrary origin; never goes backwards.
    fn monotonic(&self) -> Duration;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    #[must_use]
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }

    /// A shared system clock.
    #[must_use]
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        }
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock moved by hand. Wall and monotonic time advance together with [`ManualClock::advance`];
/// [`ManualClock::set_wall_micros`] jumps only the wall clock (either direction), as NTP would.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    wall: AtomicI64,
    mono_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock at the given wall time (microseconds since the epoch) and monotonic zero.
    #[must_use]
    pub fn new(wall_micros: i64) -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                wall: AtomicI64::new(wall_micros),
                mono_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.inner.wall.fetch_add(micros, Ordering::SeqCst);
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.mono_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Sets the wall clock only (a jump; monotonic time is unchanged).
    pub fn set_wall_micros(&self, wall_micros: i64) {
        self.inner.wall.store(wall_micros, Ordering::SeqCst);
    }

    /// This clock as a [`SharedClock`].
    #[must_use]
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.inner.wall.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.inner.mono_nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_micros(), 1_000);
        c.advance(Duration::from_millis(2));
        assert_eq!(c.now_micros(), 3_000);
        assert_eq!(c.monotonic(), Duration::from_millis(2));
        c.set_wall_micros(0);
        assert_eq!(c.now_micros(), 0);
        assert_eq!(c.monotonic(), Duration::from_millis(2));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock::new().now_micros() > 1_577_836_800_000_000);
    }
}
