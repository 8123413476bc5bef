//! The store's schema version, `("meta", "schema")`: written on first use; a newer binary
//! migrates (none needed yet: version 1 is the first), an older one refuses to start.

use steward_store::Database;

use crate::codec::{decode, encode};
use crate::error::{Error, Result};
use crate::keys;

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

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
                // Older versions would be migrated here, in steps, each in its own
                // transaction, before the new version is written.
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
