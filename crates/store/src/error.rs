//! The store's one error type. Every error keeps its class (retryable, maybe committed,
//! permanent) so that a caller's retry loop can never lose it; see [`ErrorClass`].

use std::fmt;

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a caller must treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The transaction did not commit; running it again is safe.
    Retryable,
    /// The transaction may or may not have committed; running it again may apply it twice,
    /// so the body must be idempotent (the retry loop tells it via `MaybeCommitted`).
    MaybeCommitted,
    /// Retrying cannot help (a limit was exceeded, the store is broken or misused).
    Permanent,
}

/// FoundationDB's error codes that the seam names (from `fdb_c` 7.1 `error_definitions.h`).
pub mod code {
    /// `transaction_too_old`: the read version is older than the 5 s MVCC window.
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    /// `future_version`: the storage server is behind the requested version.
    pub const FUTURE_VERSION: i32 = 1009;
    /// `not_committed`: a read-write conflict.
    pub const NOT_COMMITTED: i32 = 1020;
    /// `commit_unknown_result`: the commit may have been applied.
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    /// `transaction_cancelled`.
    pub const TRANSACTION_CANCELLED: i32 = 1025;
    /// `accessed_unreadable`: read of a key holding this transaction's versionstamped value.
    pub const ACCESSED_UNREADABLE: i32 = 1036;
    /// `too_many_watches`: more than 10,000 outstanding watches on one connection.
    pub const TOO_MANY_WATCHES: i32 = 1032;
    /// `process_behind`.
    pub const PROCESS_BEHIND: i32 = 1037;
    /// `database_locked`.
    pub const DATABASE_LOCKED: i32 = 1038;
    /// `cluster_version_changed`: maybe committed.
    pub const CLUSTER_VERSION_CHANGED: i32 = 1039;
    /// `proxy_memory_limit_exceeded`.
    pub const PROXY_MEMORY_LIMIT_EXCEEDED: i32 = 1042;
    /// `batch_transaction_throttled`.
    pub const BATCH_TRANSACTION_THROTTLED: i32 = 1051;
    /// `tag_throttled`.
    pub const TAG_THROTTLED: i32 = 1213;
    /// `key_outside_legal_range`.
    pub const KEY_OUTSIDE_LEGAL_RANGE: i32 = 2004;
    /// `inverted_range`: a range whose begin is after its end.
    pub const INVERTED_RANGE: i32 = 2005;
    /// `transaction_too_large`: more than 10,000,000 bytes.
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    /// `key_too_large`: a key over 10,000 bytes.
    pub const KEY_TOO_LARGE: i32 = 2102;
    /// `value_too_large`: a value over 100,000 bytes.
    pub const VALUE_TOO_LARGE: i32 = 2103;
}

/// Classifies a FoundationDB error code exactly as the seam promises: the codes FoundationDB's
/// own `on_error` retries are [`ErrorClass::Retryable`], the two "maybe committed" codes are
/// [`ErrorClass::MaybeCommitted`], everything else is [`ErrorClass::Permanent`].
#[must_use]
pub fn classify_fdb_code(code: i32) -> ErrorClass {
    use self::code::*;
    match code {
        TRANSACTION_TOO_OLD
        | FUTURE_VERSION
        | NOT_COMMITTED
        | DATABASE_LOCKED
        | PROCESS_BEHIND
        | PROXY_MEMORY_LIMIT_EXCEEDED
        | BATCH_TRANSACTION_THROTTLED
        | TAG_THROTTLED => ErrorClass::Retryable,
        COMMIT_UNKNOWN_RESULT | CLUSTER_VERSION_CHANGED => ErrorClass::MaybeCommitted,
        _ => ErrorClass::Permanent,
    }
}

/// A store error. Match on [`Error::class`] to decide what to do; the variants say why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another transaction wrote something this one read (FoundationDB 1020 `not_committed`).
    #[error(
        "transaction conflict: a key it read was written by a later commit (1020 not_committed)"
    )]
    Conflict,
    /// The transaction ran longer than the 5 s limit (FoundationDB 1007).
    #[error("transaction is older than the 5 s limit (1007 transaction_too_old)")]
    TransactionTooOld,
    /// The commit may or may not have been applied (FoundationDB 1021).
    #[error(
        "commit result unknown: the transaction may have been applied (1021 commit_unknown_result)"
    )]
    CommitUnknownResult,
    /// A key longer than [`crate::limits::MAX_KEY_SIZE`] (FoundationDB 2102).
    #[error(
        "key of {size} bytes exceeds the {} byte limit (2102 key_too_large)",
        crate::limits::MAX_KEY_SIZE
    )]
    KeyTooLarge {
        /// The key's length.
        size: usize,
    },
    /// A value longer than [`crate::limits::MAX_VALUE_SIZE`] (FoundationDB 2103).
    #[error(
        "value of {size} bytes exceeds the {} byte limit (2103 value_too_large)",
        crate::limits::MAX_VALUE_SIZE
    )]
    ValueTooLarge {
        /// The value's length.
        size: usize,
    },
    /// A transaction larger than [`crate::limits::MAX_TRANSACTION_SIZE`] (FoundationDB 2101).
    #[error(
        "transaction of {size} bytes exceeds the {} byte limit (2101 transaction_too_large)",
        crate::limits::MAX_TRANSACTION_SIZE
    )]
    TransactionTooLarge {
        /// The transaction's estimated size.
        size: usize,
    },
    /// A write to a key at or above `\xff` (the system keyspace) (FoundationDB 2004).
    #[error(
        "key is outside the legal range: keys must be below \\xff (2004 key_outside_legal_range)"
    )]
    KeyOutsideLegalRange,
    /// More than [`crate::limits::MAX_WATCHES`] outstanding watches (FoundationDB 1032).
    #[error("too many outstanding watches (1032 too_many_watches)")]
    TooManyWatches,
    /// A read of a key this transaction wrote with a versionstamped value (FoundationDB 1036).
    #[error("read of a key whose versionstamped value is unknown until commit (1036 accessed_unreadable)")]
    AccessedUnreadable,
    /// A range whose begin is after its end (FoundationDB 2005).
    #[error("range begin is after its end (2005 inverted_range)")]
    InvertedRange,
    /// A versionstamped key or value whose placeholder offset does not fit it.
    #[error("invalid versionstamp placeholder: {0}")]
    InvalidVersionstamp(&'static str),
    /// The transaction was cancelled or dropped before it committed (FoundationDB 1025).
    #[error("transaction was cancelled before it committed (1025 transaction_cancelled)")]
    TransactionCancelled,
    /// A clone of the transaction was still alive when it had to commit. Every clone handed to
    /// a body must be dropped by the time the body returns.
    #[error("a reference to the transaction was kept past the end of its body")]
    ReferenceToTransactionKept,
    /// The retry loop gave up after its retry limit; the last error is kept.
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetryLimitReached {
        /// How many times the body ran.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },
    /// Any other FoundationDB error, with its code (classified by [`classify_fdb_code`]).
    #[error("foundationdb error {code}: {message}")]
    Fdb {
        /// The FoundationDB error code.
        code: i32,
        /// FoundationDB's description of the code.
        message: String,
    },
    /// The embedded store is held by another live process.
    #[error("store is locked by pid {pid} ({path})")]
    Locked {
        /// The process holding the lock, as written in the lock file (0 if unknown).
        pid: u32,
        /// The lock file.
        path: String,
    },
    /// A store URL that none of the accepted forms match.
    #[error("invalid store URL {url:?}: {reason}; accepted forms: `embedded:PATH`, `memory:`, `fdb:` or `fdb:CLUSTER_FILE`")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An open option outside its bounds.
    #[error("invalid store option {field}: {reason}")]
    InvalidOption {
        /// The option (`OpenOptions` field).
        field: &'static str,
        /// Its bounds.
        reason: &'static str,
    },
    /// The requested backend is not part of this build.
    #[error("the {backend} backend is not in this build: {hint}")]
    BackendUnavailable {
        /// The backend's URL scheme.
        backend: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// The embedded store's files are from a newer or unknown format.
    #[error("embedded store at {path} is not usable: {reason}")]
    IncompatibleStore {
        /// The store directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// An operating system I/O error.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The class of this error: what a retry loop must do with it.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Conflict | Error::TransactionTooOld => ErrorClass::Retryable,
            Error::CommitUnknownResult => ErrorClass::MaybeCommitted,
            Error::Fdb { code, .. } => classify_fdb_code(*code),
            Error::RetryLimitReached { .. } => ErrorClass::Permanent,
            _ => ErrorClass::Permanent,
        }
    }

    /// True if running the transaction again is safe and may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// True if the transaction may have committed.
    #[must_use]
    pub fn is_maybe_committed(&self) -> bool {
        self.class() == ErrorClass::MaybeCommitted
    }

    /// The FoundationDB error code this error corresponds to, if any.
    #[must_use]
    pub fn fdb_code(&self) -> Option<i32> {
        Some(match self {
            Error::Conflict => code::NOT_COMMITTED,
            Error::TransactionTooOld => code::TRANSACTION_TOO_OLD,
            Error::CommitUnknownResult => code::COMMIT_UNKNOWN_RESULT,
            Error::KeyTooLarge { .. } => code::KEY_TOO_LARGE,
            Error::ValueTooLarge { .. } => code::VALUE_TOO_LARGE,
            Error::TransactionTooLarge { .. } => code::TRANSACTION_TOO_LARGE,
            Error::KeyOutsideLegalRange => code::KEY_OUTSIDE_LEGAL_RANGE,
            Error::TooManyWatches => code::TOO_MANY_WATCHES,
            Error::AccessedUnreadable => code::ACCESSED_UNREADABLE,
            Error::InvertedRange => code::INVERTED_RANGE,
            Error::TransactionCancelled => code::TRANSACTION_CANCELLED,
            Error::Fdb { code, .. } => *code,
            _ => return None,
        })
    }

    /// Builds the seam's error for a FoundationDB error code: the codes the seam names become
    /// their own variants, any other code is kept as [`Error::Fdb`].
    #[must_use]
    pub fn from_fdb_code(code: i32, message: impl fmt::Display) -> Error {
        match code {
            code::NOT_COMMITTED => Error::Conflict,
            code::TRANSACTION_TOO_OLD => Error::TransactionTooOld,
            code::COMMIT_UNKNOWN_RESULT => Error::CommitUnknownResult,
            code::KEY_OUTSIDE_LEGAL_RANGE => Error::KeyOutsideLegalRange,
            code::TOO_MANY_WATCHES => Error::TooManyWatches,
            code::ACCESSED_UNREADABLE => Error::AccessedUnreadable,
            code::INVERTED_RANGE => Error::InvertedRange,
            code::TRANSACTION_CANCELLED => Error::TransactionCancelled,
            // Sizes are not reported by FoundationDB; 0 means "unknown".
            code::TRANSACTION_TOO_LARGE => Error::TransactionTooLarge { size: 0 },
            code::KEY_TOO_LARGE => Error::KeyTooLarge { size: 0 },
            code::VALUE_TOO_LARGE => Error::ValueTooLarge { size: 0 },
            _ => Error::Fdb {
                code,
                message: message.to_string(),
            },
        }
    }
}

/// Implemented by error types that a transaction body may return: they must convert from the
/// store's error and give it back, so the retry loop can see whether it is retryable. A body
/// that wraps a store error in its own enum keeps it retryable this way.
pub trait TransactError: From<Error> {
    /// The store error inside, if this error is one.
    fn store_error(&self) -> Option<&Error>;
}

impl TransactError for Error {
    fn store_error(&self) -> Option<&Error> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_codes_are_classified_as_the_seam_promises() {
        for code in [1020, 1007, 1009, 1037, 1038, 1042, 1051, 1213] {
            assert_eq!(classify_fdb_code(code), ErrorClass::Retryable, "{code}");
        }
        for code in [1021, 1039] {
            assert_eq!(
                classify_fdb_code(code),
                ErrorClass::MaybeCommitted,
                "{code}"
            );
        }
        for code in [2101, 2102, 2103, 2004, 1025, 1032, 4000, 1] {
            assert_eq!(classify_fdb_code(code), ErrorClass::Permanent, "{code}");
        }
    }

    #[test]
    fn named_codes_round_trip_through_the_variants() {
        for code in [
            1020, 1007, 1021, 2101, 2102, 2103, 2004, 1032, 1025, 1009, 1213,
        ] {
            let e = Error::from_fdb_code(code, "x");
            assert_eq!(e.fdb_code(), Some(code));
            assert_eq!(e.class(), classify_fdb_code(code), "{code}");
        }
    }
}
