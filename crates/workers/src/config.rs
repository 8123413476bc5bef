//! [`WorkerConfig`]: how many jobs a worker runs, its lease and shutdown timing, its metrics
//! listener, and the default cron schedules it installs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default jobs run at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Most jobs run at once by one worker.
pub const MAX_CONCURRENCY: usize = 1024;
/// Default lease: heartbeats extend it every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default time running jobs get to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default longest idle wait between claims (a doorbell usually wakes the worker earlier).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default metrics listener.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9090";
/// Default: a session is summarized once it has been idle this long.
pub const DEFAULT_SUMMARIZE_IDLE_AFTER: Duration = Duration::from_secs(30 * 60);

/// A worker's settings (config section `[worker]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs run at once (1 to [`MAX_CONCURRENCY`]).
    pub concurrency: usize,
    /// Jobs claimed per claim transaction (1 to `concurrency`; 0 means `concurrency`).
    pub claim_batch: usize,
    /// Lease length in seconds (5 to 600); heartbeats renew it every third.
    pub lease_secs: u64,
    /// Longest idle wait between claims, in milliseconds (10 to 60,000).
    pub poll_interval_ms: u64,
    /// Seconds running jobs get to finish after SIGTERM before their leases are released
    /// (0 to 3,600).
    pub shutdown_grace_secs: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; empty: nowhere.
    pub metrics_addr: String,
    /// Whether this worker also runs the cron scheduler.
    pub scheduler: bool,
    /// The default system schedules.
    pub schedules: SchedulesConfig,
    /// The worker's name on its leases (default: host name and pid).
    pub name: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: DEFAULT_CONCURRENCY,
            claim_batch: 0,
            lease_secs: DEFAULT_LEASE.as_secs(),
            poll_interval_ms: u64::try_from(DEFAULT_POLL_INTERVAL.as_millis()).unwrap_or(1000),
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE.as_secs(),
            metrics_addr: DEFAULT_METRICS_ADDR.into(),
            scheduler: true,
            schedules: SchedulesConfig::default(),
            name: None,
        }
    }
}

impl WorkerConfig {
    /// Checks every bound.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the setting and its accepted range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(Error::invalid(
                "worker.concurrency",
                format!("{} is not in 1..={MAX_CONCURRENCY}", self.concurrency),
            ));
        }
        if self.claim_batch > self.concurrency {
            return Err(Error::invalid(
                "worker.claim_batch",
                format!(
                    "{} is not in 0..={} (worker.concurrency)",
                    self.claim_batch, self.concurrency
                ),
            ));
        }
        if !(5..=600).contains(&self.lease_secs) {
            return Err(Error::invalid(
                "worker.lease_secs",
                format!("{} is not in 5..=600", self.lease_secs),
            ));
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return Err(Error::invalid(
                "worker.poll_interval_ms",
                format!("{} is not in 10..=60000", self.poll_interval_ms),
            ));
        }
        if self.shutdown_grace_secs > 3600 {
            return Err(Error::invalid(
                "worker.shutdown_grace_secs",
                format!("{} is not in 0..=3600", self.shutdown_grace_secs),
            ));
        }
        if !self.metrics_addr.is_empty() && self.metrics_addr.parse::<SocketAddr>().is_err() {
            return Err(Error::invalid(
                "worker.metrics_addr",
                format!(
                    "{:?} is not an address like 127.0.0.1:9090 (empty: no listener)",
                    self.metrics_addr
                ),
            ));
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > 200 {
                return Err(Error::invalid("worker.name", "1 to 200 bytes"));
            }
        }
        self.schedules.validate()
    }

    /// Jobs per claim.
    #[must_use]
    pub fn batch(&self) -> usize {
        if self.claim_batch == 0 {
            self.concurrency
        } else {
            self.claim_batch
        }
    }

    /// The lease.
    #[must_use]
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// The idle wait.
    #[must_use]
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// The shutdown grace.
    #[must_use]
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The system schedules a scheduler installs at start-up (config section
/// `[worker.schedules]`). Each is a cron expression (see `steward_queue::CronSchedule`), or
/// `"off"` to remove it. They fan out one job per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulesConfig {
    /// `expire_auth_tokens` (default every 5 minutes).
    pub expire_auth_tokens: String,
    /// `compact_audit_log` (default daily at 03:00 UTC).
    pub compact_audit_log: String,
    /// `summarize_idle_sessions` (default every 10 minutes).
    pub summarize_idle_sessions: String,
    /// Minutes without activity after which a session is summarized (1 to 10,080).
    pub summarize_idle_after_minutes: u64,
    /// `prune_jobs` (default hourly).
    pub prune_jobs: String,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        SchedulesConfig {
            expire_auth_tokens: "0 */5 * * * *".into(),
            compact_audit_log: "0 0 3 * * *".into(),
            summarize_idle_sessions: "0 */10 * * * *".into(),
            summarize_idle_after_minutes: DEFAULT_SUMMARIZE_IDLE_AFTER.as_secs() / 60,
            prune_jobs: "0 0 * * * *".into(),
        }
    }
}

/// The value that turns a default schedule off.
pub const OFF: &str = "off";

impl SchedulesConfig {
    /// Checks every expression and bound.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        for (field, expr) in self.entries() {
            if expr != OFF {
                steward_queue::parse_expression(expr)
                    .map_err(|e| Error::invalid(field, format!("{expr:?}: {e} (or \"off\")")))?;
            }
        }
        if !(1..=10_080).contains(&self.summarize_idle_after_minutes) {
            return Err(Error::invalid(
                "worker.schedules.summarize_idle_after_minutes",
                format!("{} is not in 1..=10080", self.summarize_idle_after_minutes),
            ));
        }
        Ok(())
    }

    pub(crate) fn entries(&self) -> [(&'static str, &str); 4] {
        [
            (
                "worker.schedules.expire_auth_tokens",
                &self.expire_auth_tokens,
            ),
            (
                "worker.schedules.compact_audit_log",
                &self.compact_audit_log,
            ),
            (
                "worker.schedules.summarize_idle_sessions",
                &self.summarize_idle_sessions,
            ),
            ("worker.schedules.prune_jobs", &self.prune_jobs),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        WorkerConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_settings_name_the_field() {
        let cases: Vec<(WorkerConfig, &str)> = vec![
            (
                WorkerConfig {
                    concurrency: 0,
                    ..Default::default()
                },
                "worker.concurrency",
            ),
            (
                WorkerConfig {
                    claim_batch: 9,
                    ..Default::default()
                },
                "worker.claim_batch",
            ),
            (
                WorkerConfig {
                    lease_secs: 1,
                    ..Default::default()
                },
                "worker.lease_secs",
            ),
            (
                WorkerConfig {
                    metrics_addr: "localhost".into(),
                    ..Default::default()
                },
                "worker.metrics_addr",
            ),
            (
                WorkerConfig {
                    schedules: SchedulesConfig {
                        prune_jobs: "every hour".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "worker.schedules.prune_jobs",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn off_turns_a_schedule_off() {
        let c = SchedulesConfig {
            compact_audit_log: OFF.into(),
            ..Default::default()
        };
        c.validate().unwrap();
    }
}
