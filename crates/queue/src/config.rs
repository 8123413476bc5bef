//! The queue's configuration: named defaults and a `validate()` that names the field and its
//! bound.

use std::time::Duration;

use crate::error::{Error, Result};

/// Default first retry delay.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Default longest retry delay.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// Default retention of completed and cancelled jobs (their results and idempotency keys too).
pub const DEFAULT_FINISHED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default retention of dead jobs.
pub const DEFAULT_DEAD_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default lease of a claim.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default number of tenants a claim looks at.
pub const DEFAULT_TENANTS_PER_CLAIM: usize = 16;

/// Exponential backoff with jitter: `min(base * 2^(attempt-1), cap)`, then scaled by a random
/// factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
    /// Relative jitter, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
            jitter: 0.25,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based), with `unit` a uniform random number
    /// in `[0, 1)`.
    #[must_use]
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let raw = self
            .base
            .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        raw.mul_f64(factor.max(0.0))
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.base.is_zero() {
            return Err(Error::invalid("retry.base", "must be greater than 0"));
        }
        if self.cap < self.base {
            return Err(Error::invalid("retry.cap", "must be at least retry.base"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::invalid(
                "retry.jitter",
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(())
    }
}

/// The queue's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Backoff when an outcome does not give its own delay.
    pub retry: RetryPolicy,
    /// How long completed and cancelled jobs are kept.
    pub finished_retention: Duration,
    /// How long dead jobs are kept.
    pub dead_retention: Duration,
    /// Tenants a claim looks at before giving up.
    pub tenants_per_claim: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry: RetryPolicy::default(),
            finished_retention: DEFAULT_FINISHED_RETENTION,
            dead_retention: DEFAULT_DEAD_RETENTION,
            tenants_per_claim: DEFAULT_TENANTS_PER_CLAIM,
        }
    }
}

impl QueueConfig {
    /// Checks every bound.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self) -> Result<()> {
        self.retry.validate()?;
        if self.finished_retention < Duration::from_secs(60) {
            return Err(Error::invalid(
                "queue.finished_retention",
                "must be at least 60 s",
            ));
        }
        if self.dead_retention < self.finished_retention {
            return Err(Error::invalid(
                "queue.dead_retention",
                "must be at least queue.finished_retention",
            ));
        }
        if !(1..=1000).contains(&self.tenants_per_claim) {
            return Err(Error::invalid(
                "queue.tenants_per_claim",
                "must be between 1 and 1000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_bounds() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
            jitter: 0.0,
        };
        assert_eq!(p.delay(1, 0.3), Duration::from_secs(1));
        assert_eq!(p.delay(2, 0.3), Duration::from_secs(2));
        assert_eq!(p.delay(4, 0.3), Duration::from_secs(8));
        assert_eq!(p.delay(5, 0.3), Duration::from_secs(10));
        assert_eq!(p.delay(500, 0.3), Duration::from_secs(10));
        let j = RetryPolicy { jitter: 0.5, ..p };
        assert_eq!(j.delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(j.delay(2, 1.0), Duration::from_secs(3));
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = QueueConfig::default();
        assert!(c.validate().is_ok());
        c.dead_retention = Duration::from_secs(61);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("queue.dead_retention"), "{e}");
    }
}

/// Default weight of a tenant in the fair share of claims.
pub const DEFAULT_TENANT_WEIGHT: u32 = 1;
/// Largest tenant weight.
pub const MAX_TENANT_WEIGHT: u32 = 1000;
/// Largest per-tenant maximum of running jobs (each running job holds one slot key).
pub const MAX_RUNNING_LIMIT: u32 = 10_000;

/// A tenant's queue settings, stored with its queue. The records crate's plans set them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantQueueConfig {
    /// Share of claims relative to other tenants with work (1 to 1000).
    pub weight: u32,
    /// Most jobs running at once, across all workers; `None` for no limit.
    pub max_running: Option<u32>,
    /// Most unfinished (queued, scheduled, running) jobs; beyond it enqueue is refused.
    pub max_queued: Option<u64>,
    /// Most bytes of arguments of unfinished jobs; beyond it enqueue is refused.
    pub max_queued_bytes: Option<u64>,
}

impl Default for TenantQueueConfig {
    fn default() -> Self {
        TenantQueueConfig {
            weight: DEFAULT_TENANT_WEIGHT,
            max_running: None,
            max_queued: None,
            max_queued_bytes: None,
        }
    }
}

impl TenantQueueConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_TENANT_WEIGHT).contains(&self.weight) {
            return Err(Error::invalid(
                "weight",
                format!("must be 1 to {MAX_TENANT_WEIGHT}"),
            ));
        }
        if self
            .max_running
            .is_some_and(|m| !(1..=MAX_RUNNING_LIMIT).contains(&m))
        {
            return Err(Error::invalid(
                "max_running",
                format!("must be 1 to {MAX_RUNNING_LIMIT}"),
            ));
        }
        if self.max_queued == Some(0) {
            return Err(Error::invalid("max_queued", "must be at least 1"));
        }
        if self.max_queued_bytes == Some(0) {
            return Err(Error::invalid("max_queued_bytes", "must be at least 1"));
        }
        Ok(())
    }
}
