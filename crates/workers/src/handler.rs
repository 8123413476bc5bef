//! The [`Handler`] trait every job kind implements, the [`Registry`] of kinds a worker runs,
//! and the typed outcome of an attempt ([`JobError`]).
//!
//! A handler declares what it is: a stable kind string (never a Rust type name), typed
//! arguments and output, a default timeout, attempt count and retry policy. Built-in kinds and
//! custom ones register the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_queue::{NewJob, RetryPolicy, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};

/// What a handler sees of the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The tenant.
    pub tenant: Uuid,
    /// The job.
    pub job_id: Uuid,
    /// This attempt (1-based).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The IDE session the job belongs to, if any.
    pub session_id: Option<Uuid>,
    cancel: watch::Receiver<bool>,
}

impl JobContext {
    pub(crate) fn new(lease: &steward_queue::Lease, cancel: watch::Receiver<bool>) -> Self {
        JobContext {
            tenant: lease.tenant,
            job_id: lease.job_id,
            attempt: lease.attempt,
            max_attempts: lease.max_attempts,
            session_id: lease.session_id,
            cancel,
        }
    }

    /// A context for calling a handler directly (tests, tools): never cancelled.
    #[must_use]
    pub fn detached(tenant: Uuid, job_id: Uuid) -> Self {
        let (tx, cancel) = watch::channel(false);
        // Keep the sender alive for the receiver's lifetime: a dropped sender would make
        // `cancelled()` resolve at once.
        std::mem::forget(tx);
        JobContext {
            tenant,
            job_id,
            attempt: 1,
            max_attempts: 1,
            session_id: None,
            cancel,
        }
    }

    /// Whether someone asked to cancel the job (the runtime stops the handler shortly after).
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the job is cancelled; long handlers may `select!` on it to stop cleanly.
    pub async fn cancelled(&mut self) {
        // An error means the runtime dropped the sender: the attempt is over either way.
        let _ = self.cancel.wait_for(|c| *c).await;
    }
}

/// How an attempt ended, other than success. Maps onto [`steward_queue::Outcome`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Try again: after `delay`, or the kind's retry policy when `None`.
    #[error("{error}")]
    Retry {
        /// What went wrong.
        error: String,
        /// An explicit delay.
        delay: Option<Duration>,
    },
    /// Retrying cannot help: the job goes to `dead`.
    #[error("failed permanently: {error}")]
    Fail {
        /// What went wrong.
        error: String,
    },
    /// Not now: run again after `after`; the attempt does not count.
    #[error("snoozed for {after:?}")]
    Snooze {
        /// How long to wait.
        after: Duration,
    },
    /// The handler cancels its own job.
    #[error("cancelled: {reason}")]
    Cancel {
        /// Why.
        reason: String,
    },
}

impl JobError {
    /// A retryable failure with the kind's backoff.
    pub fn retry(error: impl fmt::Display) -> Self {
        JobError::Retry {
            error: error.to_string(),
            delay: None,
        }
    }

    /// A permanent failure.
    pub fn fail(error: impl fmt::Display) -> Self {
        JobError::Fail {
            error: error.to_string(),
        }
    }
}

/// A job kind: its stable name, typed arguments and output, and defaults.
///
/// ```ignore
/// struct Echo;
/// impl Handler for Echo {
///     type Args = serde_json::Value;
///     type Output = serde_json::Value;
///     fn kind(&self) -> &'static str { "echo" }
///     async fn run(&self, _ctx: JobContext, args: Self::Args) -> Result<Self::Output, JobError> {
///         Ok(args)
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The job's arguments (the JSON the job was enqueued with).
    type Args: DeserializeOwned + Send + 'static;
    /// What a successful attempt stores as the job's result.
    type Output: Serialize + Send + 'static;

    /// The stable kind string (the queue's `kind`); never a Rust type name.
    fn kind(&self) -> &'static str;

    /// The per-attempt timeout for jobs enqueued through [`Registry::new_job`]: a built-in
    /// kind's from [`crate::kinds::defaults`], else the queue's default.
    fn timeout(&self) -> Duration {
        crate::kinds::defaults(self.kind()).map_or(DEFAULT_TIMEOUT, |d| d.timeout)
    }

    /// Attempts for jobs enqueued through [`Registry::new_job`]: a built-in kind's from
    /// [`crate::kinds::defaults`], else the queue's default.
    fn max_attempts(&self) -> u32 {
        crate::kinds::defaults(self.kind()).map_or(DEFAULT_MAX_ATTEMPTS, |d| d.max_attempts)
    }

    /// The backoff between attempts; `None`: the queue's policy.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        None
    }

    /// Runs one attempt.
    fn run(
        &self,
        ctx: JobContext,
        args: Self::Args,
    ) -> impl Future<Output = std::result::Result<Self::Output, JobError>> + Send;
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A handler with its types erased, as the runtime holds it.
pub(crate) trait ErasedHandler: Send + Sync {
    fn call(
        self: Arc<Self>,
        ctx: JobContext,
        args: serde_json::Value,
    ) -> BoxFuture<std::result::Result<serde_json::Value, JobError>>;
    fn retry_policy(&self) -> Option<RetryPolicy>;
    fn timeout(&self) -> Duration;
    fn max_attempts(&self) -> u32;
}

struct Erased<H>(H);

impl<H: Handler> ErasedHandler for Erased<H> {
    fn call(
        self: Arc<Self>,
        ctx: JobContext,
        args: serde_json::Value,
    ) -> BoxFuture<std::result::Result<serde_json::Value, JobError>> {
        Box::pin(async move {
            // Arguments the handler cannot read will never become readable: fail at once.
            let args: H::Args = serde_json::from_value(args)
                .map_err(|e| JobError::fail(format!("bad arguments for {}: {e}", self.0.kind())))?;
            let out = self.0.run(ctx, args).await?;
            serde_json::to_value(out)
                .map_err(|e| JobError::fail(format!("result is not JSON-serializable: {e}")))
        })
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        self.0.retry_policy()
    }

    fn timeout(&self) -> Duration {
        self.0.timeout()
    }

    fn max_attempts(&self) -> u32 {
        self.0.max_attempts()
    }
}

/// The kinds a worker runs, by kind string.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<&'static str, Arc<dyn ErasedHandler>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a handler.
    ///
    /// # Errors
    /// [`Error::Invalid`] if its kind is empty, too long, or already registered.
    pub fn register<H: Handler>(&mut self, handler: H) -> Result<&mut Self> {
        let kind = handler.kind();
        if kind.is_empty() || kind.len() > steward_queue::MAX_KIND_LEN {
            return Err(Error::invalid(
                "kind",
                format!("{kind:?}: 1 to {} bytes", steward_queue::MAX_KIND_LEN),
            ));
        }
        if self.handlers.contains_key(kind) {
            return Err(Error::invalid(
                "kind",
                format!("{kind:?} is registered twice"),
            ));
        }
        self.handlers.insert(kind, Arc::new(Erased(handler)));
        Ok(self)
    }

    /// The registered kinds, sorted.
    #[must_use]
    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().map(|k| (*k).to_string()).collect()
    }

    /// Whether `kind` is registered.
    #[must_use]
    pub fn contains(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    /// A job of `kind` with the handler's default timeout and attempts (a plain
    /// [`NewJob::new`] for an unregistered kind).
    #[must_use]
    pub fn new_job(&self, kind: &str, args: serde_json::Value) -> NewJob {
        let job = NewJob::new(kind, args);
        match self.handlers.get(kind) {
            Some(h) => job.timeout(h.timeout()).max_attempts(h.max_attempts()),
            None => job,
        }
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn ErasedHandler>> {
        self.handlers.get(kind).cloned()
    }

    /// Runs a handler once, directly (tests and tools); no queue involved.
    ///
    /// # Errors
    /// [`JobError::Fail`] for an unknown kind or bad arguments; whatever the handler returns.
    pub async fn run_direct(
        &self,
        ctx: JobContext,
        kind: &str,
        args: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, JobError> {
        match self.get(kind) {
            Some(h) => h.call(ctx, args).await,
            None => Err(JobError::fail(format!("no handler for kind {kind:?}"))),
        }
    }
}
