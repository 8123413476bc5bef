//! The small value types of the seam: key-value pairs, range options and results, atomic
//! mutation types, versionstamps and key helpers.

use crate::error::{Error, Result};

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// What a range read asks for: keys in `[begin, end)`, at most `limit` of them (`None` for no
/// limit), in ascending or (`reverse`) descending order, with or without a read conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeOption {
    /// First key of the range (inclusive).
    pub begin: Vec<u8>,
    /// End of the range (exclusive).
    pub end: Vec<u8>,
    /// At most this many pairs; `None` reads the whole range.
    pub limit: Option<usize>,
    /// Descending order, starting at the end of the range.
    pub reverse: bool,
    /// A snapshot read: adds no read conflict range.
    pub snapshot: bool,
}

impl RangeOption {
    /// All keys in `[begin, end)`, ascending, serializable.
    #[must_use]
    pub fn new(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        RangeOption {
            begin: begin.into(),
            end: end.into(),
            limit: None,
            reverse: false,
            snapshot: false,
        }
    }

    /// All keys that start with `prefix`.
    #[must_use]
    pub fn prefix(prefix: &[u8]) -> Self {
        RangeOption::new(prefix.to_vec(), strinc(prefix))
    }

    /// At most `limit` pairs.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Descending order.
    #[must_use]
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// Snapshot read (no read conflict).
    #[must_use]
    pub fn snapshot(mut self) -> Self {
        self.snapshot = true;
        self
    }
}

/// One page of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// The pairs, in the order asked for.
    pub kvs: Vec<KeyValue>,
    /// The range may hold more pairs after this page (the limit was reached, or a backend
    /// returned a short page). Use [`RangeResult::next_page`] to continue.
    pub more: bool,
}

impl RangeResult {
    /// The option that reads the page after this one, or `None` when the range is exhausted.
    /// The limit of `opt` is not reduced: each page asks for the same number of pairs.
    #[must_use]
    pub fn next_page(&self, opt: &RangeOption) -> Option<RangeOption> {
        if !self.more {
            return None;
        }
        let last = self.kvs.last()?;
        let mut next = opt.clone();
        if opt.reverse {
            next.end = last.key.clone();
        } else {
            next.begin = key_after(&last.key);
        }
        Some(next)
    }
}

/// Atomic read-modify-write operations, applied at commit without a read conflict, with
/// FoundationDB's semantics (integers are little-endian and unsigned; the result has the
/// parameter's length; a missing value behaves as described on each variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MutationType {
    /// Little-endian addition with wrap-around. A missing value counts as zero.
    Add,
    /// Bitwise and. A missing value yields the parameter.
    BitAnd,
    /// Bitwise or. A missing value yields the parameter.
    BitOr,
    /// Bitwise xor. A missing value yields the parameter.
    BitXor,
    /// The larger, comparing unsigned little-endian integers. A missing value yields the parameter.
    Max,
    /// The smaller, comparing unsigned little-endian integers. A missing value yields the parameter.
    Min,
    /// The lexicographically smaller. A missing value yields the parameter.
    ByteMin,
    /// The lexicographically larger. A missing value yields the parameter.
    ByteMax,
    /// Clears the key if its value equals the parameter.
    CompareAndClear,
}

/// A commit's 10-byte versionstamp: the 8-byte big-endian commit version followed by the 2-byte
/// big-endian order of the transaction within its commit batch. Unique and increasing per
/// database, across restarts.
pub type CommitVersionstamp = [u8; 10];

/// The size of a versionstamp placeholder in a key or value.
pub const VERSIONSTAMP_LEN: usize = 10;

/// Splits a versionstamped key or value as FoundationDB's `SetVersionstampedKey`/`Value` take
/// it: the bytes, ending with a 4-byte little-endian offset of the 10-byte placeholder (the form
/// `foundationdb_tuple::pack_with_versionstamp` produces). Returns the bytes and the offset.
///
/// # Errors
/// [`Error::InvalidVersionstamp`] if the offset is missing or the placeholder does not fit.
pub fn split_versionstamp_offset(raw: &[u8]) -> Result<(&[u8], usize)> {
    if raw.len() < 4 {
        return Err(Error::InvalidVersionstamp(
            "missing the 4-byte placeholder offset",
        ));
    }
    let (bytes, off) = raw.split_at(raw.len() - 4);
    let offset = u32::from_le_bytes([off[0], off[1], off[2], off[3]]) as usize;
    if offset + VERSIONSTAMP_LEN > bytes.len() {
        return Err(Error::InvalidVersionstamp(
            "placeholder extends past the end",
        ));
    }
    Ok((bytes, offset))
}

/// Replaces the placeholder at `offset` with `stamp`.
pub(crate) fn fill_versionstamp(
    bytes: &[u8],
    offset: usize,
    stamp: &CommitVersionstamp,
) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[offset..offset + VERSIONSTAMP_LEN].copy_from_slice(stamp);
    out
}

/// The first key after `key` in key order (`key` followed by a zero byte).
#[must_use]
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// The first key that does not start with `prefix` (FoundationDB's `strinc`): trailing `0xff`
/// bytes are dropped and the last byte incremented. An empty or all-`0xff` prefix gives `\xff`,
/// the end of the user keyspace.
#[must_use]
pub fn strinc(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    while let Some(&last) = k.last() {
        if last == 0xff {
            k.pop();
        } else {
            let n = k.len();
            k[n - 1] = last + 1;
            return k;
        }
    }
    vec![0xff]
}

/// Applies an atomic operation to an existing value with FoundationDB's semantics
/// (`fdbclient/Atomic.h`, API version 710). Returns the new value, or `None` to clear the key.
#[must_use]
pub fn apply_atomic(op: MutationType, existing: Option<&[u8]>, param: &[u8]) -> Option<Vec<u8>> {
    match op {
        MutationType::Add => {
            let ex = existing.unwrap_or(&[]);
            if ex.is_empty() || param.is_empty() {
                return Some(param.to_vec());
            }
            let mut out = Vec::with_capacity(param.len());
            let mut carry = 0u16;
            for (i, &p) in param.iter().enumerate() {
                let sum = u16::from(p) + u16::from(ex.get(i).copied().unwrap_or(0)) + carry;
                out.push(sum as u8);
                carry = sum >> 8;
            }
            Some(out)
        }
        MutationType::BitAnd | MutationType::BitOr | MutationType::BitXor => {
            let Some(ex) = existing else {
                return Some(param.to_vec());
            };
            let out = param
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let e = ex.get(i).copied();
                    match op {
                        MutationType::BitAnd => e.map_or(0, |e| e & p),
                        MutationType::BitOr => e.map_or(p, |e| e | p),
                        _ => e.map_or(p, |e| e ^ p),
                    }
                })
                .collect();
            Some(out)
        }
        MutationType::Max | MutationType::Min => {
            let Some(ex) = existing else {
                return Some(param.to_vec());
            };
            if param.is_empty() {
                return Some(Vec::new());
            }
            // The existing value, truncated or zero-extended to the parameter's length.
            let fitted: Vec<u8> = (0..param.len())
                .map(|i| ex.get(i).copied().unwrap_or(0))
                .collect();
            let ordering = fitted.iter().rev().cmp(param.iter().rev());
            let keep_existing = match op {
                MutationType::Max => ordering.is_gt(),
                _ => ordering.is_lt(),
            };
            Some(if keep_existing {
                fitted
            } else {
                param.to_vec()
            })
        }
        MutationType::ByteMin | MutationType::ByteMax => {
            let Some(ex) = existing else {
                return Some(param.to_vec());
            };
            let keep_existing = match op {
                MutationType::ByteMin => ex < param,
                _ => ex > param,
            };
            Some(if keep_existing {
                ex.to_vec()
            } else {
                param.to_vec()
            })
        }
        MutationType::CompareAndClear => match existing {
            Some(ex) if ex == param => None,
            other => other.map(<[u8]>::to_vec),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    #[test]
    fn add_is_little_endian_with_carry_and_wraps() {
        assert_eq!(apply_atomic(MutationType::Add, None, &le(5)), Some(le(5)));
        assert_eq!(
            apply_atomic(MutationType::Add, Some(&le(255)), &le(1)),
            Some(le(256))
        );
        assert_eq!(
            apply_atomic(MutationType::Add, Some(&le(u64::MAX)), &le(2)),
            Some(le(1))
        );
        // Shorter existing value is zero-extended; result has the parameter's length.
        assert_eq!(
            apply_atomic(MutationType::Add, Some(&[0xff]), &[1, 0, 0]),
            Some(vec![0, 1, 0])
        );
        // Longer existing value is truncated to the parameter's length.
        assert_eq!(
            apply_atomic(MutationType::Add, Some(&[1, 1]), &[1]),
            Some(vec![2])
        );
    }

    #[test]
    fn max_and_min_compare_unsigned_little_endian() {
        assert_eq!(
            apply_atomic(MutationType::Max, Some(&le(7)), &le(3)),
            Some(le(7))
        );
        assert_eq!(
            apply_atomic(MutationType::Max, Some(&le(3)), &le(7)),
            Some(le(7))
        );
        assert_eq!(
            apply_atomic(MutationType::Min, Some(&le(7)), &le(3)),
            Some(le(3))
        );
        assert_eq!(
            apply_atomic(MutationType::Min, Some(&le(3)), &le(7)),
            Some(le(3))
        );
        // 0x0100 (256) > 0x00ff (255) although its first byte is smaller.
        assert_eq!(
            apply_atomic(MutationType::Max, Some(&[0x00, 0x01]), &[0xff, 0x00]),
            Some(vec![0x00, 0x01])
        );
        // Missing values yield the parameter for both.
        assert_eq!(apply_atomic(MutationType::Max, None, &le(3)), Some(le(3)));
        assert_eq!(apply_atomic(MutationType::Min, None, &le(3)), Some(le(3)));
        // Unsigned: 0x80.. is large, not negative.
        assert_eq!(
            apply_atomic(MutationType::Max, Some(&[0, 0x80]), &[0, 0x7f]),
            Some(vec![0, 0x80])
        );
    }

    #[test]
    fn byte_min_max_and_bitwise_and_compare_and_clear() {
        assert_eq!(
            apply_atomic(MutationType::ByteMax, Some(b"b"), b"ab"),
            Some(b"b".to_vec())
        );
        assert_eq!(
            apply_atomic(MutationType::ByteMin, Some(b"b"), b"ab"),
            Some(b"ab".to_vec())
        );
        assert_eq!(
            apply_atomic(MutationType::BitAnd, Some(&[0b1100]), &[0b1010, 0xff]),
            Some(vec![0b1000, 0])
        );
        assert_eq!(
            apply_atomic(MutationType::BitOr, Some(&[0b1100]), &[0b1010, 1]),
            Some(vec![0b1110, 1])
        );
        assert_eq!(
            apply_atomic(MutationType::BitXor, Some(&[0b1100]), &[0b1010]),
            Some(vec![0b0110])
        );
        assert_eq!(
            apply_atomic(MutationType::CompareAndClear, Some(b"x"), b"x"),
            None
        );
        assert_eq!(
            apply_atomic(MutationType::CompareAndClear, Some(b"y"), b"x"),
            Some(b"y".to_vec())
        );
        assert_eq!(
            apply_atomic(MutationType::CompareAndClear, None, b"x"),
            None
        );
    }

    #[test]
    fn strinc_and_key_after() {
        assert_eq!(strinc(b"ab"), b"ac");
        assert_eq!(strinc(b"a\xff\xff"), b"b");
        assert_eq!(strinc(b""), b"\xff");
        assert_eq!(key_after(b"a"), b"a\x00");
    }

    #[test]
    fn versionstamp_offsets_are_checked() {
        let mut raw = vec![1u8; 12];
        raw.extend_from_slice(&2u32.to_le_bytes());
        let (bytes, off) = split_versionstamp_offset(&raw).unwrap();
        assert_eq!((bytes.len(), off), (12, 2));
        let mut bad = vec![1u8; 12];
        bad.extend_from_slice(&3u32.to_le_bytes());
        assert!(split_versionstamp_offset(&bad).is_err());
        assert!(split_versionstamp_offset(&[1, 2]).is_err());
    }
}
