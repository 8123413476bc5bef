//! The store's schema version, `("meta", "schema")`: written on first use; a newer binary
//! migrates, an older one refuses to start.
//!
//! # Versions
//! - 1: the first.
//! - 2: audit segments are signed records (`"v": 2`: count, Merkle root, key id, Ed25519
//!   signature) that a version-1 binary cannot decode, hence the bump: it must refuse to start
//!   rather than report a broken chain. Migrating 1 to 2 rewrites nothing: version-1 segments
//!   (sealed by a MAC) stay readable and verifiable as legacy segments, and their events are
//!   gone, so no Merkle root could be computed for them anyway.

use steward_store::Database;

use crate::codec::{decode, encode};
use crate::error::{Error, Result};
use crate::keys;

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = 2;

/// Makes sure the store's schema is one this binary can use: writes [`SCHEMA_VERSION`] if no
/// version is stored, accepts an equal one, and refuses a newer one. Returns the version now
/// stored. Idempotent; safe to call from every process at start-up.
///
/// # Errors
/// [`Error::SchemaTooNew`] if a newer binary wrote the store; [`Error::Corrupt`] if the stored
/// version is not a number; store errors.
pub async fn ensure_schema(db: &Database) -> Result<u32> {
    db.transact(|tx, _| async move {
        let key = keys::schema();
        match tx.get(&key, false).await? {
            Some(v) => {
                let stored: u32 = decode(|| "(\"meta\", \"schema\")".into(), &v)?;
                if stored > SCHEMA_VERSION {
                    return Err(Error::SchemaTooNew {
                        stored,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Older versions are migrated here, in steps, each in its own transaction,
                // before the new version is written. 1 -> 2 has nothing to rewrite.
                if stored < SCHEMA_VERSION {
                    tx.set(&key, &encode("schema", &SCHEMA_VERSION, 16)?);
                    tracing::info!(from = stored, to = SCHEMA_VERSION, "store schema migrated");
                    return Ok(SCHEMA_VERSION);
                }
                Ok(stored)
            }
            None => {
                tx.set(&key, &encode("schema", &SCHEMA_VERSION, 16)?);
                Ok(SCHEMA_VERSION)
            }
        }
    })
    .await
}
