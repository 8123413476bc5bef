//! The queue's error type. Store errors stay inside unchanged, so the retry loop still sees a
//! retryable conflict as retryable ([`steward_store::TransactError`]).

use uuid::Uuid;

use crate::job::JobState;

/// `Result` with the queue's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A queue error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed; see [`steward_store::Error::class`].
    #[error(transparent)]
    Store(#[from] steward_store::Error),
    /// A bad input, naming the field.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field (as in the API's JSON).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// Admission control: the tenant is at a limit of its queue configuration.
    #[error("refused: the tenant is at its {limit} limit of {max} ({current} now)")]
    Refused {
        /// The limit (`max_queued` or `max_queued_bytes`).
        limit: &'static str,
        /// Its value.
        max: u64,
        /// The tenant's current amount.
        current: u64,
    },
    /// No such job in this tenant.
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// The caller's lease is no longer the job's lease (it expired and was taken over, or the
    /// job was cancelled or finished): the caller must stop and write nothing.
    #[error("lease lost: job {job} is no longer held under this token")]
    LeaseLost {
        /// The job.
        job: Uuid,
    },
    /// The job is in a state that does not allow the action.
    #[error("job {job} is {state}; cannot {action}")]
    InvalidState {
        /// The job.
        job: Uuid,
        /// Its state.
        state: JobState,
        /// What was asked.
        action: &'static str,
    },
    /// A stored record could not be decoded (a bug or a newer binary's data).
    #[error("corrupt record at {what}: {source}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl steward_store::TransactError for Error {
    fn store_error(&self) -> Option<&steward_store::Error> {
        match self {
            Error::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            message: message.into(),
        }
    }
}
