//! The plain-Rust decisions of the FoundationDB adapter (`fdb.rs`): how a range read is asked
//! for, what its `more` means, how versions and versionstamps come back, how our atomic
//! operations are numbered in FoundationDB's API. They live outside the `fdb` feature so that
//! they compile and are unit-tested in every build; the adapter itself only makes the calls and
//! cannot run without the FoundationDB client library.

use std::path::Path;

use crate::error::{Error, Result};
use crate::types::{CommitVersionstamp, MutationType, RangeOption, VERSIONSTAMP_LEN};

/// The API version the adapter selects: FoundationDB 7.1's, to match the production cluster
/// (and the `fdb-7_1` feature of the `foundationdb` crate, whose header version it must not
/// exceed).
pub(crate) const API_VERSION: i32 = 710;

/// FoundationDB's `internal_error`, for an answer of the client library that breaks its own
/// contract (a negative read version, a versionstamp that is not 10 bytes).
pub(crate) const INTERNAL_ERROR: i32 = 4100;

/// The longest slice the C API can take: lengths are C `int`s, and the `foundationdb` crate
/// panics on anything longer.
pub(crate) const MAX_FFI_LEN: usize = i32::MAX as usize;

/// The end of the user keyspace.
const USER_KEYSPACE_END: &[u8] = b"\xff";

/// The streaming modes the adapter uses (a subset of `foundationdb::options::StreamingMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamingMode {
    /// No row limit: one batch of whatever size the client library picks (`WANT_ALL` is
    /// `SERIAL`, about 80 kB), with `more` set when the range goes on.
    WantAll,
    /// A row limit: exactly that many rows in one batch if the range holds them (no byte limit).
    Exact,
}

/// How one page of a range read is asked of FoundationDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangePlan {
    /// Answer with an empty, final page without calling FoundationDB: a limit of 0, which the C
    /// API would read as "no limit".
    Empty,
    /// One `fdb_transaction_get_range` call with first-greater-or-equal selectors on the
    /// range's begin and end.
    Read {
        /// The row limit (`None`: no limit, passed as 0).
        limit: Option<usize>,
        /// The streaming mode.
        mode: StreamingMode,
    },
}

/// Plans one page of a range read.
///
/// # Errors
/// [`Error::KeyOutsideLegalRange`] for a zero-limit read of a range reaching past `\xff`, which
/// FoundationDB checks before it looks at the limit (`ReadYourWritesTransaction::getRange`).
pub(crate) fn plan_range(opt: &RangeOption) -> Result<RangePlan> {
    match opt.limit {
        None => Ok(RangePlan::Read {
            limit: None,
            mode: StreamingMode::WantAll,
        }),
        Some(0) => {
            if opt.begin.as_slice() > USER_KEYSPACE_END || opt.end.as_slice() > USER_KEYSPACE_END {
                Err(Error::KeyOutsideLegalRange)
            } else {
                Ok(RangePlan::Empty)
            }
        }
        Some(n) => Ok(RangePlan::Read {
            // The C API's limit is an `int`; nothing near it fits in a 5 s transaction.
            limit: Some(n.min(MAX_FFI_LEN)),
            mode: StreamingMode::Exact,
        }),
    }
}

/// The seam's `more` for a page FoundationDB returned with `fdb_more` and `returned` pairs.
/// FoundationDB's flag is passed through (it may be true although nothing follows, as the seam
/// allows), except that an empty page never claims more: the seam continues after the last pair
/// of a page, and an empty page has none (the `foundationdb` crate's own paging stops there too).
pub(crate) fn page_more(fdb_more: bool, returned: usize) -> bool {
    fdb_more && returned > 0
}

/// A commit's version as the seam reports it: FoundationDB reports -1 for a read-only
/// transaction (nothing was written), which becomes `None`.
pub(crate) fn commit_version(version: i64) -> Option<u64> {
    u64::try_from(version).ok()
}

/// A read version as the seam reports it.
///
/// # Errors
/// `internal_error` (4100) for a negative version, which FoundationDB never hands out.
pub(crate) fn read_version(version: i64) -> Result<u64> {
    u64::try_from(version).map_err(|_| {
        Error::from_fdb_code(INTERNAL_ERROR, format!("negative read version {version}"))
    })
}

/// The 10-byte versionstamp from the bytes of FoundationDB's `get_versionstamp` future.
///
/// # Errors
/// `internal_error` (4100) if it is not 10 bytes long.
pub(crate) fn versionstamp(bytes: &[u8]) -> Result<CommitVersionstamp> {
    CommitVersionstamp::try_from(bytes).map_err(|_| {
        Error::from_fdb_code(
            INTERNAL_ERROR,
            format!(
                "versionstamp of {} bytes, expected {VERSIONSTAMP_LEN}",
                bytes.len()
            ),
        )
    })
}

/// The code of FoundationDB's mutation type for each of ours (`FDB_MUTATION_TYPE_*` in
/// `fdb_c_options.g.h`, API 710). With an API version of 510 or more the client library turns
/// `MIN` and `BIT_AND` into their "V2" forms, where a missing value yields the parameter, as
/// [`MutationType`] documents.
pub(crate) fn mutation_code(op: MutationType) -> u32 {
    match op {
        MutationType::Add => 2,
        MutationType::BitAnd => 6,
        MutationType::BitOr => 7,
        MutationType::BitXor => 8,
        MutationType::Max => 12,
        MutationType::Min => 13,
        MutationType::ByteMin => 16,
        MutationType::ByteMax => 17,
        MutationType::CompareAndClear => 20,
    }
}

/// FoundationDB's code for `SET_VERSIONSTAMPED_KEY`.
pub(crate) const SET_VERSIONSTAMPED_KEY_CODE: u32 = 14;
/// FoundationDB's code for `SET_VERSIONSTAMPED_VALUE`.
pub(crate) const SET_VERSIONSTAMPED_VALUE_CODE: u32 = 15;

/// True if a conflict range call is dropped without reaching FoundationDB: an empty or inverted
/// range. The local backends ignore both; FoundationDB would return `inverted_range` at once
/// for the second, which the seam's infallible call could not report where it happened.
pub(crate) fn skip_conflict_range(begin: &[u8], end: &[u8]) -> bool {
    begin >= end
}

/// Checks the lengths of keys and a value against the C API's `int` lengths, so that an
/// absurdly long slice becomes the limit error it deserves instead of a panic in the
/// `foundationdb` crate.
///
/// # Errors
/// [`Error::KeyTooLarge`] or [`Error::ValueTooLarge`] with the offending length.
pub(crate) fn check_ffi_lengths(key_lens: &[usize], value_len: usize) -> Result<()> {
    if let Some(&size) = key_lens.iter().find(|&&len| len > MAX_FFI_LEN) {
        return Err(Error::KeyTooLarge { size });
    }
    if value_len > MAX_FFI_LEN {
        return Err(Error::ValueTooLarge { size: value_len });
    }
    Ok(())
}

/// The cluster file argument of `fdb_create_database`: `None` for the client library's default
/// (`$FDB_CLUSTER_FILE`, then `/etc/foundationdb/fdb.cluster`).
///
/// # Errors
/// [`Error::InvalidUrl`] for a path that is not UTF-8 or holds a NUL byte (the C API takes a C
/// string; the `foundationdb` crate would panic on a NUL).
pub(crate) fn cluster_file_arg(path: Option<&Path>) -> Result<Option<&str>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bad = |reason: &str| Error::InvalidUrl {
        url: format!("fdb:{}", path.display()),
        reason: reason.to_string(),
    };
    let s = path
        .to_str()
        .ok_or_else(|| bad("the cluster file path is not valid UTF-8"))?;
    if s.contains('\0') {
        return Err(bad("the cluster file path contains a NUL byte"));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn unlimited_reads_want_all_and_limited_reads_are_exact() {
        let opt = RangeOption::new(b"a".to_vec(), b"z".to_vec());
        assert_eq!(
            plan_range(&opt).unwrap(),
            RangePlan::Read {
                limit: None,
                mode: StreamingMode::WantAll
            }
        );
        assert_eq!(
            plan_range(&opt.clone().limit(3).reverse().snapshot()).unwrap(),
            RangePlan::Read {
                limit: Some(3),
                mode: StreamingMode::Exact
            }
        );
        assert_eq!(
            plan_range(&opt.limit(usize::MAX)).unwrap(),
            RangePlan::Read {
                limit: Some(MAX_FFI_LEN),
                mode: StreamingMode::Exact
            }
        );
    }

    #[test]
    fn a_zero_limit_never_reaches_the_c_api_which_would_read_it_as_unlimited() {
        let opt = RangeOption::new(b"a".to_vec(), b"z".to_vec()).limit(0);
        assert_eq!(plan_range(&opt).unwrap(), RangePlan::Empty);
        // Up to the end of the user keyspace is legal ...
        let to_end = RangeOption::new(b"a".to_vec(), b"\xff".to_vec()).limit(0);
        assert_eq!(plan_range(&to_end).unwrap(), RangePlan::Empty);
        // ... past it is not, whatever the limit (FoundationDB checks the keys first).
        for (b, e) in [(&b"a"[..], &b"\xff\x00"[..]), (b"\xff\x01", b"\xff\x02")] {
            let past = RangeOption::new(b.to_vec(), e.to_vec()).limit(0);
            assert!(matches!(
                plan_range(&past),
                Err(Error::KeyOutsideLegalRange)
            ));
        }
    }

    #[test]
    fn more_is_passed_through_but_never_claimed_by_an_empty_page() {
        assert!(page_more(true, 2));
        assert!(!page_more(false, 2));
        assert!(!page_more(true, 0));
        assert!(!page_more(false, 0));
    }

    #[test]
    fn read_only_commits_have_no_version() {
        assert_eq!(commit_version(-1), None);
        assert_eq!(commit_version(0), Some(0));
        assert_eq!(commit_version(1_234_567), Some(1_234_567));
        assert_eq!(commit_version(i64::MAX), Some(i64::MAX as u64));
    }

    #[test]
    fn negative_read_versions_are_internal_errors() {
        assert_eq!(read_version(42).unwrap(), 42);
        let e = read_version(-5).unwrap_err();
        assert_eq!(e.fdb_code(), Some(INTERNAL_ERROR));
        assert_eq!(e.class(), ErrorClass::Permanent);
    }

    #[test]
    fn versionstamps_must_be_ten_bytes() {
        let stamp = [0, 0, 0, 0, 0, 0, 1, 2, 0, 3];
        assert_eq!(versionstamp(&stamp).unwrap(), stamp);
        for len in [0, 9, 11, 12] {
            let e = versionstamp(&vec![0; len]).unwrap_err();
            assert_eq!(e.fdb_code(), Some(INTERNAL_ERROR), "{len}");
        }
    }

    #[test]
    fn mutation_codes_are_fdb_c_options_and_distinct() {
        // FDB_MUTATION_TYPE_* of fdb_c_options.g.h (API 710).
        let expected = [
            (MutationType::Add, 2),
            (MutationType::BitAnd, 6),
            (MutationType::BitOr, 7),
            (MutationType::BitXor, 8),
            (MutationType::Max, 12),
            (MutationType::Min, 13),
            (MutationType::ByteMin, 16),
            (MutationType::ByteMax, 17),
            (MutationType::CompareAndClear, 20),
        ];
        let mut seen = std::collections::HashSet::new();
        for (op, code) in expected {
            assert_eq!(mutation_code(op), code, "{op:?}");
            assert!(seen.insert(code), "{op:?} shares code {code}");
        }
        assert!(!seen.contains(&SET_VERSIONSTAMPED_KEY_CODE));
        assert!(!seen.contains(&SET_VERSIONSTAMPED_VALUE_CODE));
        // Never the deprecated APPEND_IF_FITS (9), nor the V2 codes the client picks itself.
        for code in [9, 18, 19] {
            assert!(!seen.contains(&code), "{code}");
        }
    }

    #[test]
    fn empty_and_inverted_conflict_ranges_are_skipped() {
        assert!(skip_conflict_range(b"b", b"a"));
        assert!(skip_conflict_range(b"a", b"a"));
        assert!(!skip_conflict_range(b"a", b"a\x00"));
        assert!(!skip_conflict_range(b"", b"\xff"));
    }

    #[test]
    fn lengths_past_the_c_int_become_limit_errors_not_panics() {
        assert!(check_ffi_lengths(&[1, 0], 100_001).is_ok());
        assert!(check_ffi_lengths(&[MAX_FFI_LEN], MAX_FFI_LEN).is_ok());
        let big = MAX_FFI_LEN + 1;
        assert!(matches!(
            check_ffi_lengths(&[1, big], 0),
            Err(Error::KeyTooLarge { size }) if size == big
        ));
        assert!(matches!(
            check_ffi_lengths(&[1], big),
            Err(Error::ValueTooLarge { size }) if size == big
        ));
    }

    #[test]
    fn cluster_file_paths_must_be_c_strings() {
        assert_eq!(cluster_file_arg(None).unwrap(), None);
        assert_eq!(
            cluster_file_arg(Some(Path::new("/etc/foundationdb/fdb.cluster"))).unwrap(),
            Some("/etc/foundationdb/fdb.cluster")
        );
        let e = cluster_file_arg(Some(Path::new("/tmp/a\0b"))).unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_cluster_file_paths_are_invalid_urls() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(OsStr::from_bytes(b"/tmp/\xff.cluster"));
        let e = cluster_file_arg(Some(path)).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}
