//! The crate's one error type. Store errors stay inside unchanged, so the retry loop still sees
//! a retryable conflict as retryable ([`steward_store::TransactError`]).

use std::fmt;

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of a repository call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed; see [`steward_store::Error::class`].
    #[error(transparent)]
    Store(#[from] steward_store::Error),
    /// A bad input, naming the field (as in the API's JSON) and what is accepted. Also used for
    /// anything too large to store: nothing is ever truncated silently.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// No such record in this tenant.
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of record (`"tenant"`, `"user"`, ...).
        what: &'static str,
        /// Its id (or path) as given.
        id: String,
    },
    /// A unique field is already taken in this tenant (an email, a file path, a tenant id).
    #[error("{what} with this {field} already exists")]
    AlreadyExists {
        /// The kind of record.
        what: &'static str,
        /// The unique field.
        field: &'static str,
    },
    /// Unknown email, wrong password or a disabled user: deliberately not told apart.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A refresh token was refused; see [`RefreshRejection`].
    #[error("refresh token rejected: {0}")]
    RefreshRejected(RefreshRejection),
    /// The audit chain does not verify; see [`ChainBreak`].
    #[error("audit chain broken: {0}")]
    AuditChainBroken(ChainBreak),
    /// The store was written by a newer binary whose schema this one does not know.
    #[error(
        "store schema version {stored} is newer than this binary's {supported}: upgrade steward"
    )]
    SchemaTooNew {
        /// The version in `("meta", "schema")`.
        stored: u32,
        /// The newest version this binary knows.
        supported: u32,
    },
    /// A stored record could not be decoded (a bug, a newer binary's data, or tampering).
    #[error("corrupt record at {what}: {message}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// Hashing failed or the OS random source was unavailable; not retryable.
    #[error("crypto failure: {0}")]
    Crypto(String),
}

/// Why a refresh token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshRejection {
    /// Not a token of this format or tenant, no such family or generation, or its secret does
    /// not match: nothing is revoked (a forged token proves nothing about the real one).
    Invalid,
    /// The family's absolute or idle expiry has passed.
    Expired,
    /// The family was revoked earlier (logout, password change, or reuse).
    Revoked,
    /// An already-used (or superseded) token was presented outside the grace rule: the whole
    /// family has just been revoked.
    ReuseDetected,
}

impl fmt::Display for RefreshRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefreshRejection::Invalid => "invalid token",
            RefreshRejection::Expired => "session expired",
            RefreshRejection::Revoked => "session revoked",
            RefreshRejection::ReuseDetected => "token reuse detected; session revoked",
        })
    }
}

/// Where and how the audit chain fails to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The sequence number at which verification failed (for a segment: its first seq).
    pub seq: u64,
    /// The compacted segment at fault, as its `(first_seq, last_seq)`; `None` when the break
    /// is at an event (or the head).
    pub segment: Option<(u64, u64)>,
    /// What was found there.
    pub kind: ChainBreakKind,
}

/// The kinds of audit chain failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChainBreakKind {
    /// A sequence number is missing (an event was removed) or out of place.
    Gap,
    /// An event's `prev_hash` is not the previous event's hash (reordered or replaced).
    PrevHashMismatch,
    /// An event's hash does not match its content (the event was changed).
    HashMismatch,
    /// The head (last sequence and hash) does not match the last event (events removed at the
    /// end, or the head was changed).
    HeadMismatch,
    /// A stored event or segment could not be decoded.
    Undecodable,
    /// A segment's Ed25519 signature does not verify: a forged or altered segment.
    SegmentSignature,
    /// A segment is signed under a key id none of the configured verifying keys has (forged
    /// with another key, or a retired key missing from `audit.verifying_keys`).
    UnknownSigningKey,
    /// A segment's Merkle root differs from the one recorded for it (by the `audit.compacted`
    /// event in the chain, or computed from the events it claims to summarise).
    MerkleRootMismatch,
    /// A segment's own fields disagree (its count is not its range's length, or its range is
    /// empty).
    SegmentMalformed,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ChainBreakKind::Gap => "sequence gap (an event is missing or out of place)",
            ChainBreakKind::PrevHashMismatch => "previous-hash mismatch (reordered or replaced)",
            ChainBreakKind::HashMismatch => "hash mismatch (the event was changed)",
            ChainBreakKind::HeadMismatch => "the head does not match the last event",
            ChainBreakKind::Undecodable => "undecodable event or segment",
            ChainBreakKind::SegmentSignature => "segment signature does not verify (forged)",
            ChainBreakKind::UnknownSigningKey => "segment signed by an unknown key",
            ChainBreakKind::MerkleRootMismatch => "segment Merkle root does not match",
            ChainBreakKind::SegmentMalformed => "segment count does not match its range",
        };
        match self.segment {
            Some((first, last)) => write!(f, "in segment {first}..={last}: {what}"),
            None => write!(f, "at seq {}: {what}", self.seq),
        }
    }
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

    pub(crate) fn not_found(what: &'static str, id: impl fmt::Display) -> Self {
        Error::NotFound {
            what,
            id: id.to_string(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Corrupt {
            what: what.into(),
            message: message.to_string(),
        }
    }
}
