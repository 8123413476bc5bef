//! The crate's settings: named defaults and `validate()` methods that name the field and its
//! bound. Production refuses the weak test profiles.

use std::fmt;
use std::time::Duration;

use crate::codec::unhex;
use crate::error::{Error, Result};
use crate::signing::{AuditSigningKey, AuditVerifyingKey};

/// OWASP's Argon2id memory cost (KiB) for t = 2, p = 1.
pub const OWASP_MEMORY_KIB: u32 = 19_456;
/// OWASP's Argon2id iterations for m = 19 MiB.
pub const OWASP_ITERATIONS: u32 = 2;
/// OWASP's Argon2id parallelism.
pub const OWASP_PARALLELISM: u32 = 1;
/// OWASP's equivalent Argon2id (memory KiB, iterations) pairs, all with p = 1: a production
/// policy must be at least as strong as one of them in both numbers.
pub const OWASP_ARGON2ID_PROFILES: [(u32, u32); 5] = [
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];
/// Default shortest password, in characters (NIST SP 800-63B asks for at least 8, 15 without
/// a second factor; the IDE always offers one).
pub const DEFAULT_MIN_PASSWORD_CHARS: usize = 12;
/// Default longest password, in bytes (bounds the work an attacker can ask for).
pub const DEFAULT_MAX_PASSWORD_BYTES: usize = 1024;
/// Default number of Argon2id hashes computed at once (each holds `memory_kib` of RAM).
pub const DEFAULT_MAX_CONCURRENT_HASHES: usize = 4;

/// Default absolute lifetime of a login (a refresh-token family).
pub const DEFAULT_ABSOLUTE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default idle lifetime: a family unused this long expires.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default grace window for the immediately previous refresh token.
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(10);
/// Longest grace window accepted.
pub const MAX_REFRESH_GRACE: Duration = Duration::from_secs(60);
/// Default time an expired or revoked family is kept before the expiry job deletes it (so a
/// late token still reads as expired or revoked, and reuse forensics have its history).
pub const DEFAULT_AUTH_RETENTION_TAIL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest retention tail accepted.
pub const MAX_AUTH_RETENTION_TAIL: Duration = Duration::from_secs(400 * 24 * 3600);
/// Shortest secret key accepted (HMAC-SHA-256 keys), in bytes.
pub const MIN_SECRET_KEY_BYTES: usize = 32;
/// Default most events sealed into the audit chain per transaction.
pub const DEFAULT_SEAL_BATCH: usize = 256;

/// A secret key (HMAC key). Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// A key from raw bytes.
    #[must_use]
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretKey(bytes.into())
    }

    /// A key from hex (as it would appear in a config file or `STEWARD_*` variable).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field` if `hex` is not hex.
    pub fn from_hex(field: &'static str, hex: &str) -> Result<Self> {
        unhex(hex.trim())
            .map(SecretKey)
            .ok_or_else(|| Error::invalid(field, "must be hex digits"))
    }

    /// A fresh random key from the OS CSPRNG.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the OS random source fails.
    pub fn generate() -> Result<Self> {
        let mut k = vec![0u8; 32];
        crate::codec::os_random(&mut k)?;
        Ok(SecretKey(k))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn validate(&self, field: &'static str, production: bool) -> Result<()> {
        if self.0.len() < MIN_SECRET_KEY_BYTES {
            return Err(Error::invalid(
                field,
                format!("must be at least {MIN_SECRET_KEY_BYTES} bytes"),
            ));
        }
        if production && self.0 == TEST_KEY {
            return Err(Error::invalid(
                field,
                "the test key is refused in production",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(<{} bytes redacted>)", self.0.len())
    }
}

const TEST_KEY: &[u8] = b"steward-models-test-key-not-secret!!";
/// The seed of the fixed, public test signing key ([`ModelsConfig::for_tests`]).
const TEST_SIGNING_SEED: &[u8; 32] = b"steward-models-test-audit-sign!!";

/// The public test signing key: production refuses it as a signing and as a verifying key
/// (anyone can sign with it).
fn is_test_signing_key(public: &[u8; 32]) -> bool {
    *public
        == AuditSigningKey::from_seed(TEST_SIGNING_SEED)
            .verifying_key()
            .to_bytes()
}

/// Password hashing and acceptance: Argon2id parameters, lengths, and how many hashes may run
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Argon2id memory cost in KiB.
    pub memory_kib: u32,
    /// Argon2id iterations (time cost).
    pub iterations: u32,
    /// Argon2id lanes.
    pub parallelism: u32,
    /// Shortest password, in characters.
    pub min_chars: usize,
    /// Longest password, in bytes.
    pub max_bytes: usize,
    /// Hashes computed at once (on the blocking pool); more wait.
    pub max_concurrent_hashes: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy::owasp()
    }
}

impl PasswordPolicy {
    /// OWASP's Argon2id recommendation: m = 19456 KiB, t = 2, p = 1.
    #[must_use]
    pub fn owasp() -> Self {
        PasswordPolicy {
            memory_kib: OWASP_MEMORY_KIB,
            iterations: OWASP_ITERATIONS,
            parallelism: OWASP_PARALLELISM,
            min_chars: DEFAULT_MIN_PASSWORD_CHARS,
            max_bytes: DEFAULT_MAX_PASSWORD_BYTES,
            max_concurrent_hashes: DEFAULT_MAX_CONCURRENT_HASHES,
        }
    }

    /// A deliberately weak profile (m = 64 KiB, t = 1) so tests hash in microseconds.
    /// [`PasswordPolicy::validate`] refuses it in production.
    #[must_use]
    pub fn insecure_for_tests() -> Self {
        PasswordPolicy {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            min_chars: 8,
            max_bytes: DEFAULT_MAX_PASSWORD_BYTES,
            max_concurrent_hashes: DEFAULT_MAX_CONCURRENT_HASHES,
        }
    }

    /// True if the Argon2id parameters are at least one of OWASP's profiles.
    #[must_use]
    pub fn meets_owasp(&self) -> bool {
        self.parallelism >= 1
            && OWASP_ARGON2ID_PROFILES
                .iter()
                .any(|&(m, t)| self.memory_kib >= m && self.iterations >= t)
    }

    /// Checks the bounds; with `production`, also that the parameters meet OWASP's.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self, production: bool) -> Result<()> {
        if !(8 * self.parallelism.max(1)..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(Error::invalid(
                "password.memory_kib",
                "must be between 8 × parallelism and 4194304 (4 GiB)",
            ));
        }
        if !(1..=64).contains(&self.iterations) {
            return Err(Error::invalid(
                "password.iterations",
                "must be between 1 and 64",
            ));
        }
        if !(1..=64).contains(&self.parallelism) {
            return Err(Error::invalid(
                "password.parallelism",
                "must be between 1 and 64",
            ));
        }
        if !(1..=256).contains(&self.min_chars) {
            return Err(Error::invalid(
                "password.min_chars",
                "must be between 1 and 256",
            ));
        }
        if !(64..=4096).contains(&self.max_bytes) || self.max_bytes < self.min_chars * 4 {
            return Err(Error::invalid(
                "password.max_bytes",
                "must be between 64 and 4096 and at least 4 × password.min_chars",
            ));
        }
        if !(1..=256).contains(&self.max_concurrent_hashes) {
            return Err(Error::invalid(
                "password.max_concurrent_hashes",
                "must be between 1 and 256",
            ));
        }
        if production {
            if !self.meets_owasp() {
                return Err(Error::invalid(
                    "password.memory_kib",
                    "with password.iterations, must meet an OWASP Argon2id profile in \
                     production (at least m=19456 KiB with t=2, or m=47104/t=1, m=12288/t=3, \
                     m=9216/t=4, m=7168/t=5)",
                ));
            }
            if self.min_chars < 8 {
                return Err(Error::invalid(
                    "password.min_chars",
                    "must be at least 8 in production",
                ));
            }
        }
        Ok(())
    }
}

/// Refresh-token families (RFC 9700 rotation and reuse detection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// A login lasts at most this long, however often it is refreshed.
    pub absolute_ttl: Duration,
    /// A login not refreshed for this long expires.
    pub idle_ttl: Duration,
    /// How long after a rotation the immediately previous token is accepted once more (a
    /// client that lost the response); zero turns the grace off.
    pub grace: Duration,
    /// Key of the HMAC-SHA-256 that refresh secrets are stored as.
    pub token_key: SecretKey,
    /// How long an expired or revoked family is kept before
    /// [`crate::AuthSessions::expire`] deletes it (counted from when it ended).
    pub retention_tail: Duration,
}

impl AuthConfig {
    /// Default lifetimes with `token_key`.
    #[must_use]
    pub fn new(token_key: SecretKey) -> Self {
        AuthConfig {
            absolute_ttl: DEFAULT_ABSOLUTE_TTL,
            idle_ttl: DEFAULT_IDLE_TTL,
            grace: DEFAULT_REFRESH_GRACE,
            token_key,
            retention_tail: DEFAULT_AUTH_RETENTION_TAIL,
        }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self, production: bool) -> Result<()> {
        if !(Duration::from_secs(60)..=Duration::from_secs(400 * 24 * 3600))
            .contains(&self.absolute_ttl)
        {
            return Err(Error::invalid(
                "auth.absolute_ttl",
                "must be between 60 s and 400 days",
            ));
        }
        if self.idle_ttl < Duration::from_secs(60) || self.idle_ttl > self.absolute_ttl {
            return Err(Error::invalid(
                "auth.idle_ttl",
                "must be between 60 s and auth.absolute_ttl",
            ));
        }
        if self.grace > MAX_REFRESH_GRACE {
            return Err(Error::invalid("auth.grace", "must be between 0 and 60 s"));
        }
        if self.retention_tail > MAX_AUTH_RETENTION_TAIL {
            return Err(Error::invalid(
                "auth.retention_tail",
                "must be between 0 and 400 days",
            ));
        }
        self.token_key.validate("auth.token_key", production)
    }
}

/// The audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Key of the HMAC-SHA-256 chaining sealed events: without it, nobody can recompute a
    /// chain after editing it.
    pub chain_key: SecretKey,
    /// Most events sealed per transaction.
    pub seal_batch: usize,
    /// The Ed25519 key that signs compacted segments (from `audit.signing_key_file`);
    /// compaction refuses to run without one.
    pub signing_key: Option<AuditSigningKey>,
    /// Public keys of earlier signing keys (by key id), so segments they signed still verify
    /// after a rotation. The signing key's own public key need not be listed.
    pub verifying_keys: Vec<AuditVerifyingKey>,
}

impl AuditConfig {
    /// Defaults with `chain_key`.
    #[must_use]
    pub fn new(chain_key: SecretKey) -> Self {
        AuditConfig {
            chain_key,
            seal_batch: DEFAULT_SEAL_BATCH,
            signing_key: None,
            verifying_keys: Vec::new(),
        }
    }

    /// The same settings signing with `key`.
    #[must_use]
    pub fn with_signing_key(mut self, key: AuditSigningKey) -> Self {
        self.signing_key = Some(key);
        self
    }

    /// The public key a segment's key id names: the signing key's, else one of
    /// `verifying_keys`.
    #[must_use]
    pub fn verifying_key(&self, key_id: &str) -> Option<AuditVerifyingKey> {
        if let Some(k) = self.signing_key.as_ref().filter(|k| k.id() == key_id) {
            return Some(k.verifying_key());
        }
        self.verifying_keys
            .iter()
            .find(|k| k.id() == key_id)
            .cloned()
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self, production: bool) -> Result<()> {
        if !(1..=1000).contains(&self.seal_batch) {
            return Err(Error::invalid(
                "audit.seal_batch",
                "must be between 1 and 1000",
            ));
        }
        self.chain_key.validate("audit.chain_key", production)?;
        if let Some(k) = &self.signing_key {
            if production && is_test_signing_key(&k.public_bytes()) {
                return Err(Error::invalid(
                    "audit.signing_key_file",
                    "the test signing key is refused in production",
                ));
            }
        }
        let mut all: Vec<AuditVerifyingKey> = self.verifying_keys.clone();
        all.extend(
            self.signing_key
                .as_ref()
                .map(AuditSigningKey::verifying_key),
        );
        for (i, k) in all.iter().enumerate() {
            if production && is_test_signing_key(&k.to_bytes()) {
                return Err(Error::invalid(
                    "audit.verifying_keys",
                    "the public test key is refused in production (anyone can sign with it)",
                ));
            }
            if all[..i]
                .iter()
                .any(|o| o.id() == k.id() && o.to_bytes() != k.to_bytes())
            {
                return Err(Error::invalid(
                    "audit.verifying_keys",
                    format!("key id {} names two different keys", k.id()),
                ));
            }
        }
        Ok(())
    }
}

/// Everything [`crate::Models`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelsConfig {
    /// Password hashing.
    pub password: PasswordPolicy,
    /// Refresh tokens.
    pub auth: AuthConfig,
    /// The audit chain.
    pub audit: AuditConfig,
    /// Production: refuse the weak test profiles and test keys.
    pub production: bool,
    /// Seed of the id generator (`None`: from the OS). Fix it only in simulations.
    pub id_seed: Option<u64>,
}

impl ModelsConfig {
    /// Production defaults (OWASP Argon2id, 30-day logins) with the two secret keys.
    #[must_use]
    pub fn new(token_key: SecretKey, audit_key: SecretKey) -> Self {
        ModelsConfig {
            password: PasswordPolicy::owasp(),
            auth: AuthConfig::new(token_key),
            audit: AuditConfig::new(audit_key),
            production: true,
            id_seed: None,
        }
    }

    /// A fast, insecure profile for tests: the weak password profile, fixed public keys (the
    /// audit signing key too), `production = false`, and a fixed id seed.
    #[must_use]
    pub fn for_tests() -> Self {
        ModelsConfig {
            password: PasswordPolicy::insecure_for_tests(),
            auth: AuthConfig::new(SecretKey::new(TEST_KEY)),
            audit: AuditConfig::new(SecretKey::new(TEST_KEY))
                .with_signing_key(AuditSigningKey::from_seed(TEST_SIGNING_SEED)),
            production: false,
            id_seed: Some(7),
        }
    }

    /// Checks every bound.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self) -> Result<()> {
        self.password.validate(self.production)?;
        self.auth.validate(self.production)?;
        self.audit.validate(self.production)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_the_test_profile_and_keys() {
        let mut c = ModelsConfig::for_tests();
        assert!(c.validate().is_ok());
        c.production = true;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("password.memory_kib"), "{e}");
        c.password = PasswordPolicy::owasp();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.token_key"), "{e}");
        c.auth.token_key = SecretKey::new([1u8; 32]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("audit.chain_key"), "{e}");
        c.audit.chain_key = SecretKey::new([2u8; 32]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("audit.signing_key_file"), "{e}");
        let test_public = c.audit.signing_key.as_ref().unwrap().verifying_key();
        c.audit.signing_key = Some(AuditSigningKey::from_seed(&[3u8; 32]));
        assert!(c.validate().is_ok());
        // Nor may the public test key verify anything in production.
        c.audit.verifying_keys.push(test_public);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("audit.verifying_keys"), "{e}");
        c.audit.verifying_keys.clear();
        // Without a signing key the crate opens (compaction then refuses to run).
        c.audit.signing_key = None;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn audit_keys_are_found_by_id_and_ids_must_not_collide() {
        let old = AuditSigningKey::from_seed(&[4u8; 32]);
        let new = AuditSigningKey::from_seed(&[5u8; 32]);
        let mut a = AuditConfig::new(SecretKey::new([1u8; 32])).with_signing_key(new.clone());
        a.verifying_keys.push(old.verifying_key());
        assert!(a.validate(true).is_ok());
        assert_eq!(a.verifying_key(new.id()), Some(new.verifying_key()));
        assert_eq!(a.verifying_key(old.id()), Some(old.verifying_key()));
        assert_eq!(a.verifying_key("ed25519:0000000000000000"), None);
        a.verifying_keys.push(
            AuditSigningKey::from_seed(&[6u8; 32])
                .verifying_key()
                .with_id(new.id())
                .unwrap(),
        );
        let e = a.validate(true).unwrap_err().to_string();
        assert!(
            e.contains("audit.verifying_keys") && e.contains("two different"),
            "{e}"
        );
    }

    #[test]
    fn the_retention_tail_is_bounded() {
        let mut a = AuthConfig::new(SecretKey::new([1u8; 32]));
        assert_eq!(a.retention_tail, DEFAULT_AUTH_RETENTION_TAIL);
        a.retention_tail = Duration::ZERO;
        assert!(a.validate(true).is_ok());
        a.retention_tail = MAX_AUTH_RETENTION_TAIL + Duration::from_secs(1);
        let e = a.validate(true).unwrap_err().to_string();
        assert!(e.contains("auth.retention_tail"), "{e}");
    }

    #[test]
    fn owasp_equivalents_pass_and_weaker_fail() {
        let mut p = PasswordPolicy::owasp();
        assert!(p.validate(true).is_ok());
        p.memory_kib = 12_288;
        p.iterations = 3;
        assert!(p.validate(true).is_ok());
        p.iterations = 2;
        assert!(p.validate(true).is_err());
        assert!(p.validate(false).is_ok());
    }

    #[test]
    fn auth_bounds_name_the_field() {
        let mut a = AuthConfig::new(SecretKey::new([1u8; 32]));
        assert!(a.validate(true).is_ok());
        a.idle_ttl = a.absolute_ttl + Duration::from_secs(1);
        assert!(a
            .validate(true)
            .unwrap_err()
            .to_string()
            .contains("auth.idle_ttl"));
        a.idle_ttl = DEFAULT_IDLE_TTL;
        a.grace = Duration::from_secs(61);
        assert!(a
            .validate(true)
            .unwrap_err()
            .to_string()
            .contains("auth.grace"));
        a.grace = Duration::ZERO;
        a.token_key = SecretKey::new([1u8; 31]);
        assert!(a
            .validate(false)
            .unwrap_err()
            .to_string()
            .contains("auth.token_key"));
        assert_eq!(
            format!("{:?}", a.token_key),
            "SecretKey(<31 bytes redacted>)"
        );
    }
}
