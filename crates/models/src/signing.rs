//! Ed25519 keys that sign compacted audit segments ([`AuditSigningKey`]) and the public keys
//! that verify them ([`AuditVerifyingKey`]), each under a key id that segments record.
//!
//! A key id is, unless set with `with_id`, the key's fingerprint `ed25519:<16 hex digits>`
//! (the first 8 bytes of SHA-256 of the 32-byte public key), so a segment names exactly the key
//! that signed it. Rotation: sign with the new key and keep the old public key among
//! `audit.verifying_keys`, so segments it signed still verify.
//!
//! Accepted encodings (files are detected by content):
//! - private: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519`
//!   writes it), PKCS#8 DER, the raw 32-byte seed, or the seed as 64 hex digits;
//! - public: SPKI PEM (`-----BEGIN PUBLIC KEY-----`, `openssl pkey -pubout`), SPKI DER, the raw
//!   32 bytes, or 64 hex digits.

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::codec::{hex, os_random, unhex};
use crate::error::{Error, Result};

/// Longest key id, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 64;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// The fingerprint id of a public key: `ed25519:` and the first 8 bytes of its SHA-256, in hex.
#[must_use]
pub fn key_fingerprint(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    format!("ed25519:{}", hex(&digest[..8]))
}

fn check_key_id(field: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("a key id must be 1 to {MAX_KEY_ID_BYTES} bytes of [A-Za-z0-9._:-]"),
        ))
    }
}

fn read_key_file(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
}

/// Text that is exactly 64 hex digits (surrounding whitespace aside), as 32 bytes.
fn hex32(bytes: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    unhex(text).and_then(|b| <[u8; 32]>::try_from(b).ok())
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN")
}

/// The private key that signs compacted audit segments. Its `Debug` shows the id only; the
/// secret is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditSigningKey {
    id: String,
    key: SigningKey,
}

impl AuditSigningKey {
    /// A key from its 32-byte seed (the RFC 8032 private key), with its fingerprint id.
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        AuditSigningKey {
            id: key_fingerprint(key.verifying_key().as_bytes()),
            key,
        }
    }

    /// A key from raw bytes: exactly the 32-byte seed.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if `bytes` is not 32 bytes long.
    pub fn from_bytes(field: &'static str, bytes: &[u8]) -> Result<Self> {
        let seed = <[u8; 32]>::try_from(bytes).map_err(|_| {
            Error::invalid(
                field,
                format!("an Ed25519 seed is 32 bytes, not {}", bytes.len()),
            )
        })?;
        Ok(Self::from_seed(&seed))
    }

    /// A key from a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if it is not an Ed25519 PKCS#8 key (or its embedded
    /// public key does not match).
    pub fn from_pkcs8_pem(field: &'static str, pem: &str) -> Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| {
            Error::invalid(field, format!("not an Ed25519 PKCS#8 PEM private key: {e}"))
        })?;
        Ok(Self::from_seed(&key.to_bytes()))
    }

    /// A key from a PKCS#8 DER document.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if it is not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8_der(field: &'static str, der: &[u8]) -> Result<Self> {
        let key = SigningKey::from_pkcs8_der(der).map_err(|e| {
            Error::invalid(field, format!("not an Ed25519 PKCS#8 DER private key: {e}"))
        })?;
        Ok(Self::from_seed(&key.to_bytes()))
    }

    /// A key from file contents: PKCS#8 PEM, 64 hex digits, the raw 32-byte seed, or PKCS#8
    /// DER (detected in that order).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if it is none of those.
    pub fn parse(field: &'static str, bytes: &[u8]) -> Result<Self> {
        if is_pem(bytes) {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::invalid(field, "a PEM file must be UTF-8 text"))?;
            return Self::from_pkcs8_pem(field, text);
        }
        if let Some(seed) = hex32(bytes) {
            return Ok(Self::from_seed(&seed));
        }
        if bytes.len() == 32 {
            return Self::from_bytes(field, bytes);
        }
        Self::from_pkcs8_der(field, bytes).map_err(|_| {
            Error::invalid(
                field,
                "expected an Ed25519 private key as PKCS#8 PEM or DER, 64 hex digits, or the \
                 raw 32-byte seed",
            )
        })
    }

    /// Reads a key file (any form [`AuditSigningKey::parse`] accepts), e.g. the one
    /// `STEWARD_MODELS__AUDIT_SIGNING_KEY_FILE` names. Errors name
    /// `audit.signing_key_file`.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the file cannot be read or holds no such key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        const FIELD: &str = "audit.signing_key_file";
        Self::parse(FIELD, &read_key_file(FIELD, path.as_ref())?)
    }

    /// A fresh key from the OS CSPRNG.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the OS random source fails.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        os_random(&mut seed)?;
        let key = Self::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The same key under another id (instead of its fingerprint).
    ///
    /// # Errors
    /// [`Error::Invalid`] (`audit.signing_key_id`) unless the id is 1 to
    /// [`MAX_KEY_ID_BYTES`] bytes of `[A-Za-z0-9._:-]`.
    pub fn with_id(mut self, id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_key_id("audit.signing_key_id", &id)?;
        self.id = id;
        Ok(self)
    }

    /// The key id segments record.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public half, under the same id.
    #[must_use]
    pub fn verifying_key(&self) -> AuditVerifyingKey {
        AuditVerifyingKey {
            id: self.id.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The key as a PKCS#8 PEM document (for `steward` to write a new key file).
    ///
    /// # Errors
    /// [`Error::Crypto`] if encoding fails.
    pub fn to_pkcs8_pem(&self) -> Result<String> {
        self.key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|e| Error::Crypto(format!("pkcs8 encoding: {e}")))
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.key.sign(message).to_bytes()
    }

    pub(crate) fn public_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

impl fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditSigningKey({}, <secret redacted>)", self.id)
    }
}

/// A public key that verifies segment signatures, under the key id segments name.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditVerifyingKey {
    id: String,
    key: VerifyingKey,
}

impl AuditVerifyingKey {
    /// A public key from its 32 bytes, with its fingerprint id.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if the bytes are not 32 long or not a valid Ed25519
    /// point.
    pub fn from_bytes(field: &'static str, bytes: &[u8]) -> Result<Self> {
        let raw = <[u8; 32]>::try_from(bytes).map_err(|_| {
            Error::invalid(
                field,
                format!("an Ed25519 public key is 32 bytes, not {}", bytes.len()),
            )
        })?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| Error::invalid(field, "not a valid Ed25519 public key"))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: VerifyingKey) -> Self {
        AuditVerifyingKey {
            id: key_fingerprint(key.as_bytes()),
            key,
        }
    }

    /// A public key from an SPKI PEM document (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if it is not an Ed25519 public key.
    pub fn from_public_key_pem(field: &'static str, pem: &str) -> Result<Self> {
        VerifyingKey::from_public_key_pem(pem)
            .map(Self::from_key)
            .map_err(|e| Error::invalid(field, format!("not an Ed25519 SPKI PEM public key: {e}")))
    }

    /// A public key from file contents: SPKI PEM, 64 hex digits, the raw 32 bytes, or SPKI
    /// DER.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if it is none of those.
    pub fn parse(field: &'static str, bytes: &[u8]) -> Result<Self> {
        if is_pem(bytes) {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::invalid(field, "a PEM file must be UTF-8 text"))?;
            return Self::from_public_key_pem(field, text);
        }
        if let Some(raw) = hex32(bytes) {
            return Self::from_bytes(field, &raw);
        }
        if bytes.len() == 32 {
            return Self::from_bytes(field, bytes);
        }
        VerifyingKey::from_public_key_der(bytes)
            .map(Self::from_key)
            .map_err(|_| {
                Error::invalid(
                    field,
                    "expected an Ed25519 public key as SPKI PEM or DER, 64 hex digits, or the \
                     raw 32 bytes",
                )
            })
    }

    /// Reads a public key file (any form [`AuditVerifyingKey::parse`] accepts). Errors name
    /// `audit.verifying_keys`.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the file cannot be read or holds no such key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        const FIELD: &str = "audit.verifying_keys";
        Self::parse(FIELD, &read_key_file(FIELD, path.as_ref())?)
    }

    /// The same key under another id (the one the signing key had).
    ///
    /// # Errors
    /// [`Error::Invalid`] (`audit.verifying_keys`) unless the id is 1 to
    /// [`MAX_KEY_ID_BYTES`] bytes of `[A-Za-z0-9._:-]`.
    pub fn with_id(mut self, id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_key_id("audit.verifying_keys", &id)?;
        self.id = id;
        Ok(self)
    }

    /// The key id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 32 public key bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key as an SPKI PEM document (to publish to auditors).
    ///
    /// # Errors
    /// [`Error::Crypto`] if encoding fails.
    pub fn to_public_key_pem(&self) -> Result<String> {
        self.key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| Error::Crypto(format!("spki encoding: {e}")))
    }

    /// Whether `signature` is this key's strict (RFC 8032, no malleability) Ed25519 signature
    /// of `message`.
    #[must_use]
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match Signature::from_slice(signature) {
            Ok(sig) => self.key.verify_strict(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Debug for AuditVerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AuditVerifyingKey({}, {})",
            self.id,
            hex(self.key.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032 §7.1, TEST 1.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    #[test]
    fn rfc8032_test_1_signs_and_verifies() {
        let key = AuditSigningKey::parse("k", SEED.as_bytes()).unwrap();
        assert_eq!(hex(&key.public_bytes()), PUBLIC);
        let sig = key.sign(b"");
        assert_eq!(hex(&sig), SIGNATURE);
        let public = AuditVerifyingKey::parse("k", PUBLIC.as_bytes()).unwrap();
        assert_eq!(public.id(), key.id());
        assert!(public.verify(b"", &sig));
        assert!(!public.verify(b"x", &sig));
        assert!(!public.verify(b"", &sig[..63]));
    }

    #[test]
    fn pem_der_raw_and_hex_forms_load_the_same_key() {
        let key = AuditSigningKey::parse("k", SEED.as_bytes()).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        assert_eq!(AuditSigningKey::parse("k", pem.as_bytes()).unwrap(), key);
        let raw = unhex(SEED).unwrap();
        assert_eq!(AuditSigningKey::parse("k", &raw).unwrap(), key);
        let der = key.key.to_pkcs8_der().unwrap();
        assert_eq!(AuditSigningKey::parse("k", der.as_bytes()).unwrap(), key);
        let public = key.verifying_key();
        let pub_pem = public.to_public_key_pem().unwrap();
        assert_eq!(
            AuditVerifyingKey::parse("k", pub_pem.as_bytes()).unwrap(),
            public
        );
    }

    #[test]
    fn bad_keys_and_ids_are_refused_naming_the_field() {
        for bad in [
            &b"short"[..],
            &[0u8; 33],
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
        ] {
            let e = AuditSigningKey::parse("audit.signing_key_file", bad).unwrap_err();
            assert!(e.to_string().contains("audit.signing_key_file"), "{e}");
        }
        let e = AuditSigningKey::from_seed(&[1; 32])
            .with_id("no spaces")
            .unwrap_err();
        assert!(e.to_string().contains("audit.signing_key_id"), "{e}");
        assert!(AuditVerifyingKey::from_bytes("v", &[0u8; 31]).is_err());
        let e = AuditSigningKey::from_file("/nonexistent/steward.key").unwrap_err();
        assert!(e.to_string().contains("audit.signing_key_file"), "{e}");
        let dbg = format!("{:?}", AuditSigningKey::from_seed(&[1; 32]));
        assert!(dbg.contains("redacted") && !dbg.contains("0101"), "{dbg}");
    }
}
