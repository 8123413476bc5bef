//! The process's secrets: where they come from in production (files named by the `[auth]` and
//! `[models]` settings, mounted from Kubernetes Secrets) and in development (generated once
//! into `<data dir>/keys/` by `steward dev`, so tokens survive a restart).
//!
//! | setting | file | used for |
//! |---|---|---|
//! | `auth.jwt_signing_key_file` | Ed25519 private key, PKCS#8 PEM | signing access tokens (login, refresh) |
//! | `auth.jwt_verify_keys_dir` | `<kid>.pem` public keys | verifying access tokens (two during a rotation) |
//! | `models.refresh_token_key_file` | >= 32 random bytes | the HMAC of refresh tokens |
//! | `models.audit_chain_key_file` | >= 32 random bytes | the HMAC chain of audit events |
//! | `models.audit_signing_key_file` | Ed25519 private key, PKCS#8 PEM | signing compacted audit segments |
//! | `models.audit_verifying_key_files` | Ed25519 public keys (SPKI PEM) | verifying segments of retired signing keys |

use std::path::{Path, PathBuf};

use serde::Deserialize;
use steward_api::auth::{KeySet, SigningKey};
use steward_models::{ModelsConfig, SecretKey};

use crate::config::ConfigError;

/// Files under `<data dir>/keys/` in development.
const DEV_JWT: &str = "jwt-signing-key.pem";
const DEV_REFRESH: &str = "refresh-token-key";
const DEV_CHAIN: &str = "audit-chain-key";
const DEV_AUDIT_SIGNING: &str = "audit-signing-key.pem";
/// The shortest secret accepted for an HMAC key.
const MIN_SECRET_BYTES: usize = 32;

/// `[auth]`: token settings and key files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// Ed25519 private key (PKCS#8 PEM) for signing access tokens.
    pub(crate) jwt_signing_key_file: Option<PathBuf>,
    /// Directory of `<kid>.pem` public keys accepted when verifying.
    pub(crate) jwt_verify_keys_dir: Option<PathBuf>,
    /// `iss` of tokens.
    pub(crate) issuer: Option<String>,
    /// `aud` of tokens.
    pub(crate) audience: Option<String>,
    /// Lifetime of access tokens issued by login and refresh, in seconds.
    pub(crate) access_ttl_secs: Option<u64>,
    /// Clock skew allowed on `exp`, in seconds.
    pub(crate) leeway_secs: Option<u64>,
}

/// `[models]`: the records' key files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ModelsSection {
    /// HMAC key of refresh tokens (raw bytes, >= 32).
    pub(crate) refresh_token_key_file: Option<PathBuf>,
    /// HMAC key of the audit chain (raw bytes, >= 32).
    pub(crate) audit_chain_key_file: Option<PathBuf>,
    /// Ed25519 private key (PKCS#8 PEM) signing compacted audit segments.
    pub(crate) audit_signing_key_file: Option<PathBuf>,
    /// Public keys (SPKI PEM, raw or hex) of retired audit signing keys, so segments they
    /// signed still verify after a rotation.
    pub(crate) audit_verifying_key_files: Vec<PathBuf>,
}

/// Every secret a process needs.
pub(crate) struct Keys {
    pub(crate) jwt_signing: Option<SigningKey>,
    pub(crate) jwt_verify: KeySet,
    pub(crate) models: ModelsConfig,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

pub(crate) fn read_secret(setting: &str, path: &Path) -> Result<SecretKey, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::setting(setting, format!("{}: {e}", path.display())))?;
    // A trailing newline from `echo`/editors is not part of the key.
    let trimmed = bytes
        .strip_suffix(b"\n")
        .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
        .unwrap_or(&bytes);
    if trimmed.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::setting(
            setting,
            format!(
                "{}: {} bytes; at least {MIN_SECRET_BYTES} random bytes are needed",
                path.display(),
                trimmed.len()
            ),
        ));
    }
    Ok(SecretKey::new(trimmed.to_vec()))
}

fn read_text(setting: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::setting(setting, format!("{}: {e}", path.display())))
}

fn audit_signing_key(path: &Path) -> Result<steward_models::AuditSigningKey, ConfigError> {
    steward_models::AuditSigningKey::from_file(path)
        .map_err(|e| ConfigError::setting("models.audit_signing_key_file", e))
}

/// The public keys of `models.audit_verifying_key_files` (retired audit signing keys).
fn retired_audit_keys(
    models: &ModelsSection,
) -> Result<Vec<steward_models::AuditVerifyingKey>, ConfigError> {
    models
        .audit_verifying_key_files
        .iter()
        .map(|path| {
            steward_models::AuditVerifyingKey::from_file(path).map_err(|e| {
                ConfigError::setting(
                    "models.audit_verifying_key_files",
                    format!("{}: {e}", path.display()),
                )
            })
        })
        .collect()
}

fn required<'a>(setting: &str, value: &'a Option<PathBuf>) -> Result<&'a Path, ConfigError> {
    value.as_deref().ok_or_else(|| {
        let env = format!(
            "STEWARD_{}",
            setting.to_ascii_uppercase().replacen('.', "__", 1)
        );
        ConfigError::setting(
            setting,
            format!("is required by this command (set it in the config file or {env})"),
        )
    })
}

/// The production keys, from files. `need_signing`: the API signs tokens at login/refresh.
///
/// # Errors
/// [`ConfigError::Setting`] naming the missing or unreadable setting.
pub(crate) fn from_files(
    auth: &AuthSection,
    models: &ModelsSection,
    need_jwt: bool,
) -> Result<Keys, ConfigError> {
    let refresh = read_secret(
        "models.refresh_token_key_file",
        required(
            "models.refresh_token_key_file",
            &models.refresh_token_key_file,
        )?,
    )?;
    let chain = read_secret(
        "models.audit_chain_key_file",
        required("models.audit_chain_key_file", &models.audit_chain_key_file)?,
    )?;
    let mut config = ModelsConfig::new(refresh, chain);
    if let Some(path) = &models.audit_signing_key_file {
        config.audit = config.audit.with_signing_key(audit_signing_key(path)?);
    }
    config
        .audit
        .verifying_keys
        .extend(retired_audit_keys(models)?);
    let (jwt_signing, jwt_verify) = if need_jwt {
        let signing = match &auth.jwt_signing_key_file {
            Some(path) => Some(
                SigningKey::from_pem(&read_text("auth.jwt_signing_key_file", path)?)
                    .map_err(|e| ConfigError::setting("auth.jwt_signing_key_file", e))?,
            ),
            None => None,
        };
        let verify = match (&auth.jwt_verify_keys_dir, &signing) {
            (Some(dir), _) => KeySet::from_dir(dir)
                .map_err(|e| ConfigError::setting("auth.jwt_verify_keys_dir", e))?,
            (None, Some(key)) => KeySet::single(key),
            (None, None) => {
                return Err(ConfigError::setting(
                    "auth.jwt_verify_keys_dir",
                    "is required (or auth.jwt_signing_key_file, whose public key is then the \
                     only one accepted)",
                ))
            }
        };
        (signing, verify)
    } else {
        (None, KeySet::new())
    };
    Ok(Keys {
        jwt_signing,
        jwt_verify,
        models: config,
    })
}

/// What verifying a store's audit chain needs, and nothing more: the chain key (from
/// `models.audit_chain_key_file`, else the development key in `dev_dir` if `steward dev`
/// made one) and the segments' public keys. Nothing is created.
///
/// # Errors
/// [`ConfigError::Setting`] naming what is missing or unreadable.
pub(crate) fn for_verification(
    models: &ModelsSection,
    dev_dir: Option<&Path>,
) -> Result<ModelsConfig, ConfigError> {
    const CHAIN: &str = "models.audit_chain_key_file";
    let dev = |file: &str| dev_dir.map(|d| d.join(file)).filter(|p| p.exists());
    let chain = match (&models.audit_chain_key_file, dev(DEV_CHAIN)) {
        (Some(p), _) => read_secret(CHAIN, p)?,
        // Read as `steward dev` reads it: raw random bytes, a last byte of b'\n' included.
        (None, Some(p)) => dev_secret(&p).map_err(|e| ConfigError::setting(CHAIN, e))?,
        (None, None) => {
            return Err(ConfigError::setting(
                CHAIN,
                "is needed to verify the chain (and this store has no development key)",
            ))
        }
    };
    // Refresh tokens play no part in verification: a random key that is never stored.
    let unused = SecretKey::generate().map_err(|e| ConfigError::setting(CHAIN, e))?;
    let mut config = ModelsConfig::new(unused, chain);
    let signing = models
        .audit_signing_key_file
        .clone()
        .or_else(|| dev(DEV_AUDIT_SIGNING));
    if let Some(path) = signing {
        config
            .audit
            .verifying_keys
            .push(audit_signing_key(&path)?.verifying_key());
    }
    config
        .audit
        .verifying_keys
        .extend(retired_audit_keys(models)?);
    Ok(config)
}

/// The development keys in `dir` (created on first use, 0600).
///
/// # Errors
/// A message if the directory cannot be created or a key file is unreadable.
pub(crate) fn development(dir: &Path) -> Result<Keys, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let jwt = dev_signing_key(dir)?;
    let refresh = dev_secret(&dir.join(DEV_REFRESH))?;
    let chain = dev_secret(&dir.join(DEV_CHAIN))?;
    let audit_path = dir.join(DEV_AUDIT_SIGNING);
    let audit_key = if audit_path.exists() {
        steward_models::AuditSigningKey::from_file(&audit_path)
            .map_err(|e| format!("{}: {e}", audit_path.display()))?
    } else {
        let key = steward_models::AuditSigningKey::generate()
            .map_err(|e| format!("cannot generate the audit key: {e}"))?;
        let pem = key
            .to_pkcs8_pem()
            .map_err(|e| format!("cannot encode the audit key: {e}"))?;
        write_private(&audit_path, pem.as_bytes())?;
        key
    };
    let mut models = ModelsConfig::new(refresh, chain);
    models.audit = models.audit.with_signing_key(audit_key);
    // Development: the fast password profile is not allowed to slip into production, but the
    // production profile is fine here too; keep it (logins then cost what they will cost).
    Ok(Keys {
        jwt_verify: KeySet::single(&jwt),
        jwt_signing: Some(jwt),
        models,
    })
}

/// The development token signing key in `dir`, if `steward dev` created one.
///
/// # Errors
/// A message if it is missing or unreadable.
pub(crate) fn dev_signing_key(dir: &Path) -> Result<SigningKey, String> {
    let path = dir.join(DEV_JWT);
    if path.exists() {
        let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return SigningKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()));
    }
    let key = SigningKey::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let pem = key
        .to_pem()
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    write_private(&path, pem.as_bytes())?;
    Ok(key)
}

/// An existing development signing key (for `steward token`), never creating one.
///
/// # Errors
/// A message naming the file if it is missing or unreadable.
pub(crate) fn existing_dev_signing_key(dir: &Path) -> Result<SigningKey, String> {
    let path = dir.join(DEV_JWT);
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no development key at {} ({e}); run `steward dev` first, or pass --key",
            path.display()
        )
    })?;
    SigningKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

fn dev_secret(path: &Path) -> Result<SecretKey, String> {
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() >= MIN_SECRET_BYTES {
            return Ok(SecretKey::new(bytes));
        }
        return Err(format!(
            "{}: shorter than {MIN_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    let mut bytes = vec![0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    write_private(path, &bytes)?;
    Ok(SecretKey::new(bytes))
}

/// Writes a new secret file, 0600, all or nothing: the bytes go to a temporary file first,
/// which is then linked under its name (failing if the name exists) and removed, so a crash
/// never leaves an empty or half-written key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_development_chain_key_ending_in_a_newline_is_read_whole_for_verification() {
        // 32 random bytes end in b'\n' once in 256 development stores: `steward dev` uses all
        // 32, so verification must too (it once trimmed the newline and refused the key).
        let dir = tempfile::tempdir().unwrap();
        let mut key = vec![7u8; 31];
        key.push(b'\n');
        write_private(&dir.path().join(DEV_CHAIN), &key).unwrap();
        let config = for_verification(&ModelsSection::default(), Some(dir.path())).unwrap();
        assert!(
            config.audit.chain_key == SecretKey::new(key),
            "the whole key"
        );
    }

    #[test]
    fn development_keys_are_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = development(dir.path()).unwrap();
        let again = development(dir.path()).unwrap();
        let (a, b) = (
            first.jwt_signing.as_ref().unwrap().kid().to_string(),
            again.jwt_signing.as_ref().unwrap().kid().to_string(),
        );
        assert_eq!(a, b, "the second start reuses the key");
        for name in [DEV_JWT, DEV_REFRESH, DEV_CHAIN, DEV_AUDIT_SIGNING] {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
            }
            assert!(meta.len() >= 32, "{name}");
        }
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        // A key file that exists is never overwritten.
        assert!(write_private(&dir.path().join(DEV_REFRESH), b"x").is_err());
    }

    #[test]
    fn a_short_secret_file_is_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, b"short\n").unwrap();
        let e = read_secret("models.refresh_token_key_file", &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models.refresh_token_key_file") && e.contains("32"),
            "{e}"
        );
    }
}
