//! Values: JSON records with their size checked before they reach the store, and large values
//! split into chunks (each well under the store's 100,000-byte value limit) and put back
//! together, never truncated.

use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_store::{KeyValue, Transaction};

use crate::error::{Error, Result};

/// Largest single (unchunked) record value. The store's hard limit is 100,000 bytes;
/// FoundationDB advises staying under 10 KB, so anything that may grow is chunked instead.
pub const MAX_INLINE_VALUE: usize = 64 * 1024;

/// Size of one chunk of a chunked value.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// Encodes a record as JSON, refusing one larger than `max` bytes.
pub(crate) fn encode<T: Serialize>(field: &'static str, value: &T, max: usize) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::invalid(field, format!("unencodable: {e}")))?;
    if bytes.len() > max {
        return Err(Error::invalid(
            field,
            format!("{} bytes encoded; at most {max} are accepted", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Decodes a JSON record read from `what`.
pub(crate) fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what(), e))
}

/// Splits `bytes` into chunks of at most [`CHUNK_BYTES`] (at least one, even if empty).
pub(crate) fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(CHUNK_BYTES).collect()
}

/// Writes `bytes` as chunks under keys `key(index, count)`.
pub(crate) fn write_chunks(tx: &Transaction, bytes: &[u8], key: impl Fn(u32, u32) -> Vec<u8>) {
    let parts = chunks(bytes);
    let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    for (i, part) in parts.into_iter().enumerate() {
        tx.set(&key(u32::try_from(i).unwrap_or(u32::MAX), count), part);
    }
}

/// Puts one value back together from its chunk pairs (in key order), given a parser of
/// `(index, count)` from a key. Every chunk `0..count` must be present exactly once.
pub(crate) fn join_chunks(
    what: impl Fn() -> String,
    kvs: &[KeyValue],
    parse: impl Fn(&[u8]) -> Option<(u32, u32)>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut expected_count = None;
    for (i, kv) in kvs.iter().enumerate() {
        let (index, count) =
            parse(&kv.key).ok_or_else(|| Error::corrupt(what(), "undecodable chunk key"))?;
        if *expected_count.get_or_insert(count) != count || index as usize != i {
            return Err(Error::corrupt(what(), "chunks are missing or inconsistent"));
        }
        out.extend_from_slice(&kv.value);
    }
    match expected_count {
        Some(n) if n as usize == kvs.len() => Ok(out),
        _ => Err(Error::corrupt(what(), "chunks are missing")),
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Parses lowercase or uppercase hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Checks that a string field is at most `max` bytes (and, if `required`, not blank).
pub(crate) fn check_len(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::invalid(
            field,
            format!("{} bytes; at most {max} are accepted", value.len()),
        ));
    }
    Ok(())
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Crypto(format!("OS random source failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex("0001ABff").as_deref(), Some(&b[..]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn chunks_cover_everything_and_join_detects_gaps() {
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 5)).map(|i| i as u8).collect();
        let parts = chunks(&data);
        assert_eq!(parts.len(), 3);
        let n = parts.len() as u32;
        let kvs: Vec<KeyValue> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| KeyValue {
                key: vec![i as u8, n as u8],
                value: p.to_vec(),
            })
            .collect();
        let parse = |k: &[u8]| Some((u32::from(k[0]), u32::from(k[1])));
        assert_eq!(join_chunks(String::new, &kvs, parse).unwrap(), data);
        let mut missing = kvs.clone();
        missing.remove(1);
        assert!(join_chunks(String::new, &missing, parse).is_err());
        missing.truncate(1);
        assert!(join_chunks(String::new, &missing, parse).is_err());
        assert_eq!(chunks(b"").len(), 1);
    }
}
