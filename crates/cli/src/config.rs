//! Configuration of the `steward` binary (CONVENTIONS.md): a TOML file from `--config` /
//! `STEWARD_CONFIG`, overridden by `STEWARD_*` variables, overridden by flags. Precedence:
//! flag > environment > file > default. Validated at start-up; an error names the setting.
//!
//! Today the only setting is `store` (`--store`, `STEWARD_STORE`, `store = "..."`); later
//! commands add one section per component.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use steward_store::{StoreUrl, DEFAULT_STORE_URL};

/// A configuration error: bad usage, reported with exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The store setting is not a valid store URL.
    #[error("setting `store` (from {origin}): {source}")]
    Store {
        origin: Origin,
        #[source]
        source: steward_store::Error,
    },
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `--store` or `STEWARD_STORE` (clap merges the two; the flag wins).
    FlagOrEnv,
    /// `store =` in the config file.
    File(PathBuf),
    /// Nothing configured: [`DEFAULT_STORE_URL`].
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::FlagOrEnv => f.write_str("--store / STEWARD_STORE"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// The config file's keys. Unknown keys are refused, so a typo is reported, not ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<String>,
}

/// The resolved, validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The store URL, as configured (validated: it parses).
    pub(crate) store: String,
    /// Where it came from.
    pub(crate) store_origin: Origin,
}

impl Settings {
    /// True if the store was configured explicitly (flag, environment or file) rather than
    /// left at its default.
    pub(crate) fn store_is_explicit(&self) -> bool {
        self.store_origin != Origin::Default
    }
}

/// Resolves the settings from the flag-or-environment value clap gathered and the config file.
///
/// # Errors
/// [`ConfigError`] if the file cannot be read or parsed, or the store URL is invalid (its message
/// names the accepted forms).
pub(crate) fn resolve(
    store_flag_or_env: Option<&str>,
    config_file: Option<&Path>,
) -> Result<Settings, ConfigError> {
    let file = match config_file {
        Some(path) => Some((path, read_file(path)?)),
        None => None,
    };
    let (store, store_origin) = if let Some(s) = store_flag_or_env {
        (s.to_string(), Origin::FlagOrEnv)
    } else if let Some((path, FileConfig { store: Some(s) })) = &file {
        (s.clone(), Origin::File(path.to_path_buf()))
    } else {
        (DEFAULT_STORE_URL.to_string(), Origin::Default)
    };
    if let Err(source) = store.parse::<StoreUrl>() {
        return Err(ConfigError::Store {
            origin: store_origin,
            source,
        });
    }
    Ok(Settings {
        store,
        store_origin,
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_to_the_embedded_store() {
        let s = resolve(None, None).unwrap();
        assert_eq!(s.store, DEFAULT_STORE_URL);
        assert!(!s.store_is_explicit());
    }

    #[test]
    fn flag_or_env_beats_the_file_and_the_file_beats_the_default() {
        let f = config_file("store = \"embedded:/srv/steward\"\n");
        let s = resolve(Some("memory:"), Some(f.path())).unwrap();
        assert_eq!(
            (s.store.as_str(), s.store_origin),
            ("memory:", Origin::FlagOrEnv)
        );
        let s = resolve(None, Some(f.path())).unwrap();
        assert_eq!(s.store, "embedded:/srv/steward");
        assert_eq!(s.store_origin, Origin::File(f.path().to_path_buf()));
        let empty = config_file("");
        assert_eq!(
            resolve(None, Some(empty.path())).unwrap().store,
            DEFAULT_STORE_URL
        );
    }

    #[test]
    fn invalid_store_url_names_the_setting_and_the_accepted_forms() {
        let e = resolve(Some("nope"), None).unwrap_err().to_string();
        assert!(e.contains("`store`") && e.contains("embedded:PATH"), "{e}");
        let f = config_file("store = \"postgres://x\"\n");
        let e = resolve(None, Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("config file") && e.contains("memory:"), "{e}");
    }

    #[test]
    fn unknown_keys_and_missing_files_are_refused() {
        let f = config_file("stor = \"memory:\"\n");
        let e = resolve(None, Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("stor"), "{e}");
        let e = resolve(None, Some(Path::new("/nonexistent/steward.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read config file"), "{e}");
    }
}
