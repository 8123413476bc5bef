//! Configuration of the `steward` binary (CONVENTIONS.md): a TOML file from `--config` /
//! `STEWARD_CONFIG`, overridden by `STEWARD_<SECTION>__<KEY>` variables, overridden by flags.
//! Precedence: flag > environment > file > default. Validated at start-up; an error names the
//! setting.
//!
//! The file has a top-level `store` and one table per component: `[worker]`, `[api]`,
//! `[auth]`, `[models]`, `[llm]`, `[summarize]`. A variable such as `STEWARD_WORKER__SCHEDULES__PRUNE_JOBS`
//! sets `worker.schedules.prune_jobs`; its value is read as a TOML value when it is one
//! (`8`, `true`, `1.5`, `["a"]`) and as a string otherwise.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use steward_store::{OpenOptions, StoreUrl, DEFAULT_STORE_URL};

/// The config file's top-level keys. Unknown keys are refused, so a typo is reported.
pub(crate) const SECTIONS: &[&str] = &[
    "worker",
    "api",
    "auth",
    "models",
    "llm",
    "summarize",
    "embedded",
];

/// Bounds of `[embedded] batch_in_flight`: batch attempts allowed at once.
const BATCH_IN_FLIGHT: std::ops::RangeInclusive<usize> = 1..=64;
/// Bounds of `[embedded] checkpoint_mib` and `checkpoint_mib_per_sec`.
const CHECKPOINT_MIB: std::ops::RangeInclusive<u64> = 1..=65_536;

/// `[embedded]`: tuning of the embedded store. The other backends ignore its values, but it is
/// validated whatever the store, so a typo is reported before it matters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EmbeddedSection {
    /// `OpenOptions::embedded_batch_in_flight`: batch and background attempts at once.
    batch_in_flight: Option<usize>,
    /// `OpenOptions::embedded_checkpoint_bytes`, in MiB.
    checkpoint_mib: Option<u64>,
    /// `OpenOptions::embedded_checkpoint_bytes_per_sec`, in MiB.
    checkpoint_mib_per_sec: Option<u64>,
}

/// `value` of setting `key` if it lies in `range`; else the error naming both.
fn bounded<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if !range.contains(&value) {
        return Err(ConfigError::setting(
            key,
            format!("must be {} to {}, not {value}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

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
    /// The config file is not valid TOML or has an unknown key.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The store setting is not a valid store URL.
    #[error("setting `store` (from {origin}): {source}")]
    Store {
        origin: Origin,
        #[source]
        source: steward_store::Error,
    },
    /// A setting has a wrong type, an unknown name, or is out of bounds.
    #[error("setting `{setting}`: {message}")]
    Setting { setting: String, message: String },
}

impl ConfigError {
    pub(crate) fn setting(setting: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ConfigError::Setting {
            setting: setting.into(),
            message: message.to_string(),
        }
    }
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

/// The resolved settings: the store, and the component tables (file overlaid with the
/// environment), read per component with [`Settings::section`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// The store URL, as configured (validated: it parses).
    pub(crate) store: String,
    /// Where it came from.
    pub(crate) store_origin: Origin,
    tables: toml::Table,
    /// The environment's values as given, by path: a value read as a number or a boolean
    /// (`STEWARD_LLM__OPENAI_API_KEY=123456`) is tried as the string it also is when the
    /// setting wants a string.
    env_raw: Vec<(Vec<String>, String)>,
}

impl Settings {
    /// True if the store was configured explicitly (flag, environment or file) rather than
    /// left at its default.
    pub(crate) fn store_is_explicit(&self) -> bool {
        self.store_origin != Origin::Default
    }

    /// How to open the store: `[embedded]` (`batch_in_flight`, 1 to 64, default 2;
    /// `checkpoint_mib`, 1 to 65,536, default 256; `checkpoint_mib_per_sec`, 1 to 65,536,
    /// default 32).
    ///
    /// # Errors
    /// [`ConfigError::Setting`] naming the key and its accepted range.
    pub(crate) fn open_options(&self) -> Result<OpenOptions, ConfigError> {
        let section: EmbeddedSection = self.section("embedded")?;
        let mut options = OpenOptions::default();
        if let Some(n) = section.batch_in_flight {
            options.embedded_batch_in_flight =
                bounded("embedded.batch_in_flight", n, &BATCH_IN_FLIGHT)?;
        }
        if let Some(mib) = section.checkpoint_mib {
            options.embedded_checkpoint_bytes =
                bounded("embedded.checkpoint_mib", mib, &CHECKPOINT_MIB)? << 20;
        }
        if let Some(mib) = section.checkpoint_mib_per_sec {
            options.embedded_checkpoint_bytes_per_sec =
                bounded("embedded.checkpoint_mib_per_sec", mib, &CHECKPOINT_MIB)? << 20;
        }
        Ok(options)
    }

    /// The `[name]` section as `T` (its defaults for what is not set).
    ///
    /// # Errors
    /// [`ConfigError::Setting`] naming the section and the offending key.
    pub(crate) fn section<T: DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        let mut table = match self.tables.get(name) {
            None => return Ok(T::default()),
            Some(toml::Value::Table(table)) => table.clone(),
            Some(other) => {
                return Err(ConfigError::setting(
                    name,
                    format!("must be a table, not {}", other.type_str()),
                ))
            }
        };
        // Each round turns at most one environment value back into its string.
        for _ in 0..=self.env_raw.len() {
            let (setting, message) = match deserialize_section::<T>(name, &table) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let env_value = self.env_raw.iter().find(|(path, _)| {
                path[0] == name
                    && setting.split('.').next_back() == path.last().map(String::as_str)
                    && !matches!(
                        lookup(&table, &path[1..]),
                        Some(toml::Value::String(_)) | None
                    )
            });
            match env_value {
                Some((path, raw)) => set(&mut table, &path[1..], toml::Value::String(raw.clone())),
                None => return Err(ConfigError::setting(setting, message)),
            }
        }
        deserialize_section::<T>(name, &table).map_err(|(s, m)| ConfigError::setting(s, m))
    }
}

fn lookup<'t>(table: &'t toml::Table, path: &[String]) -> Option<&'t toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(p)?.as_table()?;
    }
    t.get(last)
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(p).and_then(toml::Value::as_table_mut) {
            Some(next) => t = next,
            None => return,
        }
    }
    t.insert(last.clone(), value);
}

/// Deserializes one section; an error names `section.key` and hides the value.
fn deserialize_section<T: DeserializeOwned>(
    name: &str,
    table: &toml::Table,
) -> Result<T, (String, String)> {
    // Through text, so the error's span points at the offending key.
    let text = toml::to_string(table).map_err(|e| (name.to_string(), e.to_string()))?;
    toml::from_str(&text).map_err(|e: toml::de::Error| {
        // Name the key, never show the value: it may be a secret.
        let key = e
            .span()
            .and_then(|span| text[..span.start].rsplit('\n').next())
            .and_then(|line| line.split('=').next())
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let setting = match key {
            Some(k) => format!("{name}.{k}"),
            None => name.to_string(),
        };
        (setting, hide_quoted(e.message()))
    })
}

/// `message` with the text between double quotes replaced by `…` (serde quotes the value).
fn hide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.trim_end().split('"').enumerate() {
        if i % 2 == 1 {
            out.push_str("\"…\"");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Resolves the settings from the flag-or-environment store value clap gathered, the config
/// file, and the process environment.
///
/// # Errors
/// [`ConfigError`] if the file cannot be read or parsed, a section or key is unknown, or the
/// store URL is invalid (its message names the accepted forms).
pub(crate) fn resolve(
    store_flag_or_env: Option<&str>,
    config_file: Option<&Path>,
) -> Result<Settings, ConfigError> {
    resolve_with_env(store_flag_or_env, config_file, std::env::vars())
}

pub(crate) fn resolve_with_env(
    store_flag_or_env: Option<&str>,
    config_file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let mut tables = match config_file {
        Some(path) => read_file(path)?,
        None => toml::Table::new(),
    };
    let file_store = match tables.remove("store") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            return Err(ConfigError::setting(
                "store",
                format!("must be a string, not {}", other.type_str()),
            ))
        }
    };
    if let Some(path) = config_file {
        if let Some(unknown) = tables.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "unknown key `{unknown}` (expected `store` or one of the sections {})",
                    SECTIONS.join(", ")
                ),
            });
        }
    }
    let env_raw = overlay_env(&mut tables, env)?;
    let (store, store_origin) = if let Some(s) = store_flag_or_env {
        (s.to_string(), Origin::FlagOrEnv)
    } else if let (Some(s), Some(path)) = (file_store, config_file) {
        (s, Origin::File(path.to_path_buf()))
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
        tables,
        env_raw,
    })
}

/// Sets `section.key[.key...]` from each `STEWARD_SECTION__KEY[__KEY...]` variable.
fn overlay_env(
    tables: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(Vec<String>, String)>, ConfigError> {
    let mut raw_values = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("STEWARD_") && k.contains("__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name["STEWARD_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::setting(name, "empty key between `__`"));
        }
        if !SECTIONS.contains(&path[0].as_str()) {
            return Err(ConfigError::setting(
                name,
                format!(
                    "unknown section `{}` (one of {})",
                    path[0],
                    SECTIONS.join(", ")
                ),
            ));
        }
        let value = parse_env_value(&raw);
        let mut table = &mut *tables;
        for key in &path[..path.len() - 1] {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::setting(
                        name,
                        format!("`{key}` is not a table in the config file"),
                    ))
                }
            };
        }
        table.insert(path[path.len() - 1].clone(), value);
        raw_values.push((path, raw));
    }
    Ok(raw_values)
}

/// A TOML value if the text is one (`8`, `true`, `[1, 2]`), else the text as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
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
    fn embedded_options_come_from_the_section_and_are_bounded() {
        let s = resolve_with_env(None, None, Vec::new()).unwrap();
        let o = s.open_options().unwrap();
        assert_eq!(
            o.embedded_batch_in_flight,
            steward_store::DEFAULT_EMBEDDED_BATCH_IN_FLIGHT
        );
        assert_eq!(o.embedded_checkpoint_bytes_per_sec, 32 << 20);
        let f = config_file(
            "[embedded]\nbatch_in_flight = 4\ncheckpoint_mib = 64\ncheckpoint_mib_per_sec = 100\n",
        );
        let o = resolve_with_env(None, Some(f.path()), Vec::new())
            .unwrap()
            .open_options()
            .unwrap();
        assert_eq!(o.embedded_batch_in_flight, 4);
        assert_eq!(o.embedded_checkpoint_bytes, 64 << 20);
        assert_eq!(o.embedded_checkpoint_bytes_per_sec, 100 << 20);
        let env = vec![(
            "STEWARD_EMBEDDED__BATCH_IN_FLIGHT".to_string(),
            "3".to_string(),
        )];
        let o = resolve_with_env(None, Some(f.path()), env)
            .unwrap()
            .open_options()
            .unwrap();
        assert_eq!(o.embedded_batch_in_flight, 3, "the environment wins");
        for (text, setting) in [
            (
                "[embedded]\nbatch_in_flight = 0\n",
                "embedded.batch_in_flight",
            ),
            (
                "[embedded]\nbatch_in_flight = 65\n",
                "embedded.batch_in_flight",
            ),
            (
                "[embedded]\ncheckpoint_mib = 0\n",
                "embedded.checkpoint_mib",
            ),
            (
                "[embedded]\ncheckpoint_mib_per_sec = 70000\n",
                "embedded.checkpoint_mib_per_sec",
            ),
            (
                "[embedded]\nbatch_in_flight = \"two\"\n",
                "embedded.batch_in_flight",
            ),
            ("[embedded]\nbatch = 2\n", "embedded"),
        ] {
            let f = config_file(text);
            let e = resolve_with_env(None, Some(f.path()), Vec::new())
                .unwrap()
                .open_options()
                .unwrap_err();
            assert!(
                matches!(&e, ConfigError::Setting { setting: s, .. } if s.starts_with(setting)),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn defaults_to_the_embedded_store() {
        let s = resolve_with_env(None, None, vec![]).unwrap();
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
    fn sections_come_from_the_file_and_the_environment_wins() {
        let f = config_file("[worker]\nconcurrency = 3\nlease_secs = 20\n");
        let env = vec![
            ("STEWARD_WORKER__CONCURRENCY".to_string(), "12".to_string()),
            (
                "STEWARD_WORKER__SCHEDULES__PRUNE_JOBS".to_string(),
                "off".to_string(),
            ),
            ("STEWARD_STORE".to_string(), "ignored-here".to_string()),
        ];
        let s = resolve_with_env(None, Some(f.path()), env).unwrap();
        let w: steward_workers::WorkerConfig = s.section("worker").unwrap();
        assert_eq!((w.concurrency, w.lease_secs), (12, 20));
        assert_eq!(w.schedules.prune_jobs, "off");
    }

    #[test]
    fn a_number_looking_secret_from_the_environment_stays_a_string() {
        let env = vec![
            ("STEWARD_WORKER__NAME".to_string(), "12345".to_string()),
            ("STEWARD_WORKER__CONCURRENCY".to_string(), "3".to_string()),
        ];
        let s = resolve_with_env(None, None, env).unwrap();
        let w: steward_workers::WorkerConfig = s.section("worker").unwrap();
        assert_eq!((w.name.as_deref(), w.concurrency), (Some("12345"), 3));
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let env = vec![("STEWARD_WORKER__LEASE_SECS".to_string(), "soon".to_string())];
        let s = resolve_with_env(None, None, env).unwrap();
        let e = s
            .section::<steward_workers::WorkerConfig>("worker")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`worker.lease_secs`"), "{e}");
        assert!(!e.contains("soon"), "the value may be a secret: {e}");
    }

    #[test]
    fn a_wrong_type_or_unknown_key_names_the_setting() {
        let env = vec![("STEWARD_WORKER__CONCURENCY".to_string(), "4".to_string())];
        let s = resolve_with_env(None, None, env).unwrap();
        let e = s
            .section::<steward_workers::WorkerConfig>("worker")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker") && e.contains("concurency"), "{e}");
        let env = vec![("STEWARD_WORKR__X".to_string(), "4".to_string())];
        let e = resolve_with_env(None, None, env).unwrap_err().to_string();
        assert!(
            e.contains("STEWARD_WORKR__X") && e.contains("unknown section"),
            "{e}"
        );
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
