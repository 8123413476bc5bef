//! Argon2id password hashing as PHC strings, off the async runtime (`spawn_blocking`) and
//! bounded by a semaphore, with the check that tells a login to re-hash.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OnceCell, Semaphore};

use crate::codec::os_random;
use crate::config::PasswordPolicy;
use crate::error::{Error, Result};

/// Largest stored memory cost this binary agrees to verify (1 GiB): a stored hash is data, and
/// a tampered one must not make a login allocate without bound.
const MAX_VERIFY_MEMORY_KIB: u32 = 1024 * 1024;
/// Largest stored iteration count or parallelism this binary agrees to verify.
const MAX_VERIFY_COST: u32 = 64;

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches.
    pub matches: bool,
    /// The hash's algorithm or parameters differ from the policy's: re-hash the (correct)
    /// password and store the new hash.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords under a [`PasswordPolicy`]. Cheap to clone (clones share the
/// bound on concurrent hashes).
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    policy: PasswordPolicy,
    permits: Arc<Semaphore>,
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher under `policy` (validate the policy first).
    #[must_use]
    pub fn new(policy: PasswordPolicy) -> Self {
        PasswordHasher {
            permits: Arc::new(Semaphore::new(policy.max_concurrent_hashes.max(1))),
            policy,
            dummy: Arc::new(OnceCell::new()),
        }
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    /// Checks a new password against the policy's lengths.
    ///
    /// # Errors
    /// [`Error::Invalid`] on `password`.
    pub fn check_acceptable(&self, password: &str) -> Result<()> {
        let chars = password.chars().count();
        if chars < self.policy.min_chars {
            return Err(Error::invalid(
                "password",
                format!("must be at least {} characters", self.policy.min_chars),
            ));
        }
        if password.len() > self.policy.max_bytes {
            return Err(Error::invalid(
                "password",
                format!("must be at most {} bytes", self.policy.max_bytes),
            ));
        }
        Ok(())
    }

    /// Hashes an acceptable password to an Argon2id PHC string with a fresh 16-byte salt from
    /// the OS CSPRNG, on the blocking pool, waiting for a permit first.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the password is not acceptable; [`Error::Crypto`] if hashing or
    /// the random source fails.
    pub async fn hash(&self, password: &str) -> Result<String> {
        self.check_acceptable(password)?;
        self.hash_unchecked(password).await
    }

    /// Hashes a password that was just verified against an older hash, under the current
    /// policy, without the length rules (the policy's lengths may have changed since it was
    /// set; a login must not lock the user out).
    pub(crate) async fn hash_for_rehash(&self, password: &str) -> Result<String> {
        self.hash_unchecked(password).await
    }

    async fn hash_unchecked(&self, password: &str) -> Result<String> {
        let mut salt = [0u8; 16];
        os_random(&mut salt)?;
        let params = Params::new(
            self.policy.memory_kib,
            self.policy.iterations,
            self.policy.parallelism,
            None,
        )
        .map_err(|e| Error::Crypto(format!("argon2 parameters: {e}")))?;
        let password = password.as_bytes().to_vec();
        self.blocking(move || {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_with_salt(&password, &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Crypto(format!("argon2: {e}")))
        })
        .await
    }

    /// Verifies `password` against a stored PHC string (with the parameters stored in it), on
    /// the blocking pool, and says whether it should be re-hashed under the current policy.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the stored string is not an Argon2 PHC string this binary agrees
    /// to verify; [`Error::Crypto`] if the blocking task fails.
    pub async fn verify(&self, stored: &str, password: &str) -> Result<Verified> {
        let parsed = parse_stored(stored)?;
        let needs_rehash = self.differs_from_policy(&parsed);
        if password.len() > self.policy.max_bytes {
            // Could never have been set; refuse without spending a hash on it.
            return Ok(Verified {
                matches: false,
                needs_rehash,
            });
        }
        let stored = stored.to_owned();
        let password = password.as_bytes().to_vec();
        let matches = self
            .blocking(move || {
                let hash =
                    PasswordHash::new(&stored).map_err(|e| Error::corrupt("password hash", e))?;
                Ok(Argon2::default().verify_password(&password, &hash).is_ok())
            })
            .await?;
        Ok(Verified {
            matches,
            needs_rehash,
        })
    }

    /// Spends the same work as a real verification against a hash of the current policy, so
    /// that a login for an unknown email takes as long as one with a wrong password.
    ///
    /// # Errors
    /// As [`PasswordHasher::verify`].
    pub async fn verify_dummy(&self, password: &str) -> Result<()> {
        let dummy = self
            .dummy
            .get_or_try_init(|| self.hash_unchecked("steward dummy password"))
            .await?
            .clone();
        self.verify(&dummy, password).await.map(|_| ())
    }

    /// True if a stored PHC string's algorithm or parameters differ from the policy's.
    #[must_use]
    pub fn needs_rehash(&self, stored: &str) -> bool {
        parse_stored(stored).map_or(true, |p| self.differs_from_policy(&p))
    }

    fn differs_from_policy(&self, p: &StoredParams) -> bool {
        !p.argon2id
            || p.version != Some(u32::from(Version::V0x13))
            || p.m != self.policy.memory_kib
            || p.t != self.policy.iterations
            || p.p != self.policy.parallelism
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| Error::Crypto(format!("hash permits closed: {e}")))?;
        tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the caller stopped waiting.
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| Error::Crypto(format!("hashing task failed: {e}")))?
    }
}

struct StoredParams {
    argon2id: bool,
    version: Option<u32>,
    m: u32,
    t: u32,
    p: u32,
}

fn parse_stored(stored: &str) -> Result<StoredParams> {
    let hash = PasswordHash::new(stored).map_err(|e| Error::corrupt("password hash", e))?;
    let alg = hash.algorithm.as_str();
    if !alg.starts_with("argon2") {
        return Err(Error::corrupt(
            "password hash",
            format!("unsupported algorithm {alg}"),
        ));
    }
    let params = Params::try_from(&hash).map_err(|e| Error::corrupt("password hash", e))?;
    let out = StoredParams {
        argon2id: alg == "argon2id",
        version: hash.version,
        m: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    };
    if out.m > MAX_VERIFY_MEMORY_KIB || out.t > MAX_VERIFY_COST || out.p > MAX_VERIFY_COST {
        return Err(Error::corrupt(
            "password hash",
            "parameters beyond what this binary verifies",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_phc_and_verify() {
        let h = PasswordHasher::new(PasswordPolicy::insecure_for_tests());
        let phc = h.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let ok = h.verify(&phc, "correct horse").await.unwrap();
        assert_eq!(
            ok,
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(!h.verify(&phc, "correct horsE").await.unwrap().matches);
        let other = h.hash("correct horse").await.unwrap();
        assert_ne!(phc, other, "salts must differ");
        assert!(h.hash("short").await.is_err());
    }

    #[tokio::test]
    async fn a_changed_policy_asks_for_a_rehash_and_tampered_costs_are_refused() {
        let weak = PasswordHasher::new(PasswordPolicy::insecure_for_tests());
        let phc = weak.hash("correct horse").await.unwrap();
        let stronger = PasswordHasher::new(PasswordPolicy {
            memory_kib: 128,
            ..PasswordPolicy::insecure_for_tests()
        });
        let v = stronger.verify(&phc, "correct horse").await.unwrap();
        assert!(v.matches && v.needs_rehash);
        let huge = phc.replace("m=64", "m=4000000");
        assert!(matches!(
            weak.verify(&huge, "correct horse").await,
            Err(Error::Corrupt { .. })
        ));
        assert!(weak.needs_rehash("not a phc string"));
    }
}
