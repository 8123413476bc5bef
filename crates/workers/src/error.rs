//! The crate's error type.

/// What can go wrong in the worker runtime and the built-in handlers' plumbing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad setting or registration, naming the field.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The setting (as in the config file, e.g. `worker.concurrency`).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The queue failed (a retryable store error stays retryable inside).
    #[error(transparent)]
    Queue(#[from] steward_queue::Error),
    /// The records failed.
    #[error(transparent)]
    Models(#[from] steward_models::Error),
    /// The metrics listener could not bind or serve.
    #[error("metrics listener on {addr}: {source}")]
    Listener {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
