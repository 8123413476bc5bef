//! Store URLs (CONVENTIONS.md): `embedded:PATH`, `memory:`, `fdb:` and `fdb:CLUSTER_FILE`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// The store URL used when none is configured.
pub const DEFAULT_STORE_URL: &str = "embedded:./steward-data";

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `embedded:PATH`: the durable embedded store in directory `PATH` (relative to the working
    /// directory).
    Embedded(PathBuf),
    /// `memory:`: in memory, for the life of the process.
    Memory,
    /// `fdb:` (the client library's default cluster file) or `fdb:PATH` (that cluster file).
    Fdb(Option<PathBuf>),
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("it has no scheme"))?;
        match scheme {
            "embedded" if rest.is_empty() => Err(bad("`embedded:` needs a directory path")),
            "embedded" => Ok(StoreUrl::Embedded(PathBuf::from(rest))),
            "memory" if rest.is_empty() => Ok(StoreUrl::Memory),
            "memory" => Err(bad("`memory:` takes no path")),
            "fdb" if rest.is_empty() => Ok(StoreUrl::Fdb(None)),
            "fdb" => Ok(StoreUrl::Fdb(Some(PathBuf::from(rest)))),
            _ => Err(bad(&format!("unknown scheme `{scheme}`"))),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Embedded(p) => write!(f, "embedded:{}", p.display()),
            StoreUrl::Memory => f.write_str("memory:"),
            StoreUrl::Fdb(None) => f.write_str("fdb:"),
            StoreUrl::Fdb(Some(p)) => write!(f, "fdb:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        assert_eq!(
            "embedded:./data".parse::<StoreUrl>().unwrap(),
            StoreUrl::Embedded("./data".into())
        );
        assert_eq!("memory:".parse::<StoreUrl>().unwrap(), StoreUrl::Memory);
        assert_eq!("fdb:".parse::<StoreUrl>().unwrap(), StoreUrl::Fdb(None));
        assert_eq!(
            "fdb:/etc/foundationdb/fdb.cluster"
                .parse::<StoreUrl>()
                .unwrap(),
            StoreUrl::Fdb(Some("/etc/foundationdb/fdb.cluster".into()))
        );
        assert_eq!(
            DEFAULT_STORE_URL.parse::<StoreUrl>().unwrap().to_string(),
            DEFAULT_STORE_URL
        );
    }

    #[test]
    fn rejects_bad_urls_naming_the_accepted_forms() {
        for bad in [
            "",
            "memory",
            "memory:x",
            "embedded:",
            "postgres://x",
            "./data",
        ] {
            let e = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(
                e.contains("embedded:PATH") && e.contains("memory:"),
                "{bad}: {e}"
            );
        }
    }
}
