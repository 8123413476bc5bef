//! The job record and the values that describe jobs: what to enqueue, states, leases, outcomes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's state (CONVENTIONS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its run time (later, a retry backoff, or a snooze).
    Scheduled,
    /// Runnable now; waiting for a worker.
    Queued,
    /// Leased by a worker.
    Running,
    /// Finished successfully.
    Completed,
    /// Cancelled (by a caller, a supersede, or the handler).
    Cancelled,
    /// Gave up; see [`DeadReason`]. Can be replayed.
    Dead,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// The state's name in keys and JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// True for states a job never leaves by itself (`dead` leaves only by replay).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Dead
        )
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown job state `{s}`; expected one of scheduled, queued, running, completed, cancelled, dead")
            })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// Its last allowed attempt failed.
    MaxAttempts,
    /// Its handler said retrying cannot help.
    FailedPermanently,
    /// Its workers kept losing the lease (crashing or hanging) until no attempts were left.
    LeaseExpiredTooOften,
}

/// Why a job was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A caller cancelled it (or its session).
    Requested,
    /// A newer job with the same supersede key replaced it before it ran.
    Superseded,
    /// Its handler decided to cancel it.
    Handler,
}

/// The lease a running job is held under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The fencing token of this attempt; every worker call must present it.
    pub token: Uuid,
    /// When the lease ends unless extended (µs since the epoch).
    pub expires_at: i64,
    /// Who holds it (free-form worker name).
    pub worker: String,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt number (1-based).
    pub attempt: u32,
    /// When it failed (µs since the epoch).
    pub at: i64,
    /// What went wrong.
    pub message: String,
}

/// Failed attempts kept on a job record (the oldest are dropped).
pub const MAX_KEPT_ERRORS: usize = 5;

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id (UUIDv7).
    pub id: Uuid,
    /// The tenant it belongs to.
    pub tenant: Uuid,
    /// Its kind (a stable string naming the handler).
    pub kind: String,
    /// Handler arguments.
    pub args: serde_json::Value,
    /// Current state.
    pub state: JobState,
    /// When it entered its current state (µs).
    pub state_since: i64,
    /// Lower runs first.
    pub priority: u8,
    /// When it may run next (µs).
    pub run_at: i64,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout_ms: u64,
    /// When it was enqueued (µs).
    pub created_at: i64,
    /// When it last changed (µs).
    pub updated_at: i64,
    /// When it reached a terminal state (µs).
    pub finished_at: Option<i64>,
    /// The current lease, while running.
    pub lease: Option<LeaseInfo>,
    /// The token of the latest attempt its worker reported on (completed, failed, released):
    /// the marker that makes a worker's report idempotent when it is retried after
    /// `commit_unknown_result`. A lease that expires does not set it.
    pub ended_token: Option<Uuid>,
    /// The state the report under `ended_token` produced (its answer, if it is retried).
    #[serde(default)]
    pub ended_state: Option<JobState>,
    /// A cancellation was asked for while it ran; the worker learns it at its next heartbeat.
    pub cancel_requested: bool,
    /// The latest failed attempts.
    pub errors: Vec<AttemptError>,
    /// The handler's result, once completed.
    pub result: Option<serde_json::Value>,
    /// Why it is dead.
    pub dead_reason: Option<DeadReason>,
    /// Why it was cancelled.
    pub cancel_reason: Option<CancelReason>,
    /// The IDE session it belongs to.
    pub session_id: Option<Uuid>,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
    /// Its supersede key.
    pub supersede_key: Option<String>,
    /// The job that superseded it.
    pub superseded_by: Option<Uuid>,
    /// The concurrency slot held while running, when the tenant has a `max_running` limit.
    #[serde(default)]
    pub slot: Option<u32>,
    /// Bytes of the JSON arguments (counted against the tenant's `max_queued_bytes`).
    #[serde(default)]
    pub args_bytes: u64,
    /// The older job this one superseded when it was enqueued.
    #[serde(default)]
    pub supersedes: Option<Uuid>,
}

/// Defaults of a new job.
pub const DEFAULT_PRIORITY: u8 = 100;
/// Default attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A job to enqueue. Build with [`NewJob::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// A caller-chosen id (UUIDv7); generated at enqueue when `None`. Set it before a caller's
    /// own retry loop when using [`crate::Queue::enqueue_in`], so a retried attempt reuses it.
    pub id: Option<Uuid>,
    /// The kind.
    pub kind: String,
    /// Handler arguments.
    pub args: serde_json::Value,
    /// Priority (lower first).
    pub priority: u8,
    /// Run no earlier than this (µs); `None` = now.
    pub run_at: Option<i64>,
    /// Attempts allowed (at least 1).
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// A second enqueue with the same key returns the first job.
    pub idempotency_key: Option<String>,
    /// The IDE session it belongs to.
    pub session_id: Option<Uuid>,
    /// A newer job with the same key replaces a still-waiting older one.
    pub supersede_key: Option<String>,
}

impl NewJob {
    /// A job of `kind` with `args` and every default.
    #[must_use]
    pub fn new(kind: impl Into<String>, args: serde_json::Value) -> Self {
        NewJob {
            id: None,
            kind: kind.into(),
            args,
            priority: DEFAULT_PRIORITY,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            idempotency_key: None,
            session_id: None,
            supersede_key: None,
        }
    }

    /// Sets the id.
    #[must_use]
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }

    /// Runs no earlier than `at` (µs since the epoch).
    #[must_use]
    pub fn run_at(mut self, at: i64) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets the attempts allowed.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }

    /// Sets the session.
    #[must_use]
    pub fn session(mut self, s: Uuid) -> Self {
        self.session_id = Some(s);
        self
    }

    /// Sets the supersede key.
    #[must_use]
    pub fn supersede_key(mut self, k: impl Into<String>) -> Self {
        self.supersede_key = Some(k.into());
        self
    }
}

/// What enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job's id (the existing job's, for a duplicate).
    pub id: Uuid,
    /// An earlier job with the same idempotency key was returned instead of a new one.
    pub duplicate: bool,
    /// The older job this one superseded.
    pub superseded: Option<Uuid>,
}

/// A claimed job: everything a worker needs to run it and to report back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The tenant.
    pub tenant: Uuid,
    /// The job.
    pub job_id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its arguments.
    pub args: serde_json::Value,
    /// This attempt (1-based).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The fencing token of this attempt.
    pub token: Uuid,
    /// When the lease ends unless extended (µs).
    pub expires_at: i64,
    /// The per-attempt timeout.
    pub timeout_ms: u64,
    /// The IDE session, if any.
    pub session_id: Option<Uuid>,
    /// When the job became runnable (µs): the later of its creation and its `run_at`. The
    /// wait before this claim is the claim time minus this.
    #[serde(default)]
    pub ready_at: i64,
}

/// How an attempt ended, other than success.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Try again later: after `delay`, or the queue's backoff for this attempt when `None`.
    Retry {
        /// What went wrong.
        error: String,
        /// The kind's own delay (see [`crate::RetryPolicy`]).
        delay: Option<Duration>,
    },
    /// Retrying cannot help: the job goes to `dead`.
    Fail {
        /// What went wrong.
        error: String,
    },
    /// Not now: run again at `until` (µs); the attempt does not count.
    Snooze {
        /// When to run again.
        until: i64,
    },
    /// The handler cancels the job.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The new lease end (µs).
    pub expires_at: i64,
    /// Someone asked to cancel the job: stop and report [`Outcome::Cancel`].
    pub cancel_requested: bool,
}
