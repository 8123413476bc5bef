//! # steward-models: the tenant-scoped records and their repositories
//!
//! This crate owns the seven records the workers act on and the IDE's backend reads as a
//! library, each with a repository over the store seam (`steward-store`) that takes the tenant
//! on every call and cannot reach another tenant's keys, whatever ids it is given:
//!
//! | record | repository | what it is |
//! |---|---|---|
//! | [`Tenant`] | [`Tenants`] | a personal or organization account, its plan limits and feature flags; plus the global tenant directory, export and deletion |
//! | [`User`] | [`Users`] | a member of one tenant: unique email, roles, Argon2id password |
//! | [`AuthSession`] | [`AuthSessions`] | a login: a refresh-token family with rotation and reuse detection (RFC 9700) |
//! | [`WorkspaceSession`] | [`WorkspaceSessions`] | the persistent IDE session (editor, terminal, agent memory), indexed by owner, workspace, parent and activity |
//! | [`Conversation`], [`Message`] | [`Conversations`] | ordered, conflict-free, chunked messages |
//! | [`AuditEvent`] | [`Audit`] | an append-only, hash-chained audit log with a verifier and signed (Ed25519, RFC 6962 Merkle root) compaction segments |
//! | [`File`] | [`Files`] | workspace file metadata with version history |
//!
//! ```
//! # async fn demo() -> steward_models::Result<()> {
//! use steward_models::{Models, ModelsConfig, NewTenant, NewUser, Plan, Role, TenantKind};
//! let db = steward_store::Database::memory();
//! let models = Models::open(db, ModelsConfig::for_tests()).await?;
//! let tenant = models
//!     .tenants()
//!     .create(NewTenant::new("Acme", TenantKind::Organization, Plan::Pro))
//!     .await?;
//! let user = models
//!     .users()
//!     .create(tenant.id, NewUser::new("Ada@Example.com", [Role::Owner]).password("correct horse"))
//!     .await?;
//! let logged_in = models.users().login(tenant.id, "ada@example.com", "correct horse").await?;
//! assert_eq!(logged_in.id, user.id);
//! let issued = models.auth().login(tenant.id, user.id, "laptop").await?;
//! let rotated = models.auth().refresh(tenant.id, issued.token.expose()).await?;
//! assert_eq!(rotated.session.current_generation, 2);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `keys` (private): the only place this crate packs tuple keys; its doc draws the keyspace
//!   (also in `docs/models.md`): everything under `("t", tenant, <area>)` with areas `tenant`,
//!   `user`, `auth`, `ws`, `conv`, `audit`, `file` (the queue has `q`), the tenant directory
//!   under `("g", "tenants")`, the schema version at `("meta", "schema")` ([`ensure_schema`]).
//! - one module per record with its repository: `tenant`, `user`, `auth`, `workspace`,
//!   `conversation`, `audit`, `file`; `password` ([`PasswordHasher`]: Argon2id on the blocking
//!   pool behind a semaphore); `signing` ([`AuditSigningKey`], [`AuditVerifyingKey`]: the
//!   Ed25519 keys of audit segments and their loaders); [`merkle`] (RFC 6962 tree hashes);
//!   `config` ([`ModelsConfig`] and its `validate()`); `codec`
//!   (JSON with size checks, chunking); `error` ([`Error`], which keeps store errors retryable).
//!
//! Time comes from the store's injected clock (`Database::clock`), ids from an
//! [`steward_store::IdGenerator`] on that clock; secrets (refresh tokens, salts) from the OS
//! CSPRNG. Values that could outgrow the store's 100,000-byte limit are chunked, and anything
//! beyond a record's documented maximum is refused with [`Error::Invalid`] naming the field,
//! never truncated.
//!
//! Every write is safe under the store's retry loop, `commit_unknown_result` included: ids and
//! times are fixed before the loop, and a retry recognises its own earlier commit (the record
//! it wrote, an id marker, a token's HMAC) instead of applying twice. The one visible trace: a
//! delete retried that way may report `false` ("did not exist") for a record it deleted itself.
//!
//! # Must not touch
//! No HTTP, no job queue and no job logic (those are `steward-api`, `steward-queue` and
//! `steward-workers`); no key outside `("t", tenant, <its areas>)`, `("g", "tenants")` and
//! `("meta", "schema")` (deleting a tenant clears its whole prefix, queue included, by design);
//! no backend other than through `steward-store`'s `Database`.

mod audit;
mod auth;
mod codec;
mod config;
mod conversation;
mod error;
mod file;
mod keys;
pub mod merkle;
mod password;
mod schema;
mod signing;
mod tenant;
mod user;
mod workspace;

use std::sync::Arc;

use steward_store::{Database, IdGenerator};
use uuid::Uuid;

pub use crate::audit::{
    hash_from_hex, hash_hex, Audit, AuditEvent, AuditLookup, AuditSegment, ChainHead, ChainReport,
    CompactionRun, Hash, NewAuditEvent, SealOutcome, SealedEvent, SegmentSeal, COMPACTED_ACTION,
    MAX_ACTION_BYTES, MAX_AUDIT_EVENT_BYTES, MAX_SEGMENT_EVENTS, MAX_TARGET_BYTES,
};
pub use crate::auth::{
    AuthSession, AuthSessionState, AuthSessions, ExpireBatch, ExpireStats, IssuedToken,
    RefreshToken, RevokeReason, MAX_CLIENT_BYTES, TOKENS_EXPIRED_ACTION, TOKEN_PREFIX,
};
pub use crate::codec::{CHUNK_BYTES, MAX_INLINE_VALUE};
pub use crate::config::{
    AuditConfig, AuthConfig, ModelsConfig, PasswordPolicy, SecretKey, DEFAULT_ABSOLUTE_TTL,
    DEFAULT_AUTH_RETENTION_TAIL, DEFAULT_IDLE_TTL, DEFAULT_MAX_CONCURRENT_HASHES,
    DEFAULT_MAX_PASSWORD_BYTES, DEFAULT_MIN_PASSWORD_CHARS, DEFAULT_REFRESH_GRACE,
    DEFAULT_SEAL_BATCH, MAX_AUTH_RETENTION_TAIL, MAX_REFRESH_GRACE, MIN_SECRET_KEY_BYTES,
    OWASP_ARGON2ID_PROFILES, OWASP_ITERATIONS, OWASP_MEMORY_KIB, OWASP_PARALLELISM,
};
pub use crate::conversation::{
    Conversation, ConversationStats, Conversations, Message, MessagePosition, MessageRole,
    NewConversation, NewMessage, StoredMessage, ToolCall, ToolResult, MAX_APPEND_BYTES,
    MAX_APPEND_MESSAGES, MAX_MESSAGE_BYTES, MAX_TITLE_BYTES,
};
pub use crate::error::{ChainBreak, ChainBreakKind, Error, RefreshRejection, Result};
pub use crate::file::{
    File, FileChange, FileChangeKind, FileVersion, Files, MAX_CONTENT_HASH_BYTES, MAX_PATH_BYTES,
};
pub use crate::merkle::{merkle_root, MerkleBuilder, EMPTY_ROOT};
pub use crate::password::{PasswordHasher, Verified};
pub use crate::schema::{ensure_schema, SCHEMA_VERSION};
pub use crate::signing::{
    key_fingerprint, AuditSigningKey, AuditVerifyingKey, MAX_KEY_ID_BYTES, SIGNATURE_BYTES,
};
pub use crate::tenant::{
    ExportPage, NewTenant, Plan, PlanLimits, Tenant, TenantKind, Tenants,
    HIPAA_MIN_AUDIT_RETENTION_DAYS, MAX_FEATURE_FLAGS, MAX_FEATURE_FLAG_BYTES,
    MAX_TENANT_NAME_BYTES, MIN_AUDIT_RETENTION_DAYS,
};
pub use crate::user::{
    NewUser, Role, User, UserUpdate, Users, MAX_DISPLAY_NAME_BYTES, MAX_EMAIL_BYTES,
};
pub use crate::workspace::{
    AgentMemoryEntry, Cursor, EditorState, EditorTab, NewWorkspaceSession, SessionSummary,
    TerminalCommand, TerminalState, Visibility, WorkspaceSession, WorkspaceSessions,
    MAX_COMMAND_BYTES, MAX_RELATED, MAX_SESSION_BYTES, MAX_SESSION_NAME_BYTES, MAX_SUMMARY_BYTES,
    MAX_WORKSPACE_BYTES,
};
pub use crate::workspace::{
    FileChangeItem, LlmUsage, MemoryItem, MemoryKind, StructuredSummary, SummaryDetail,
    SummaryItem, SummaryMethod, SummaryWrite, MAX_ITEM_SOURCES, MAX_MEMORY_SESSIONS,
    MAX_SUMMARY_ITEMS, MAX_SUMMARY_ITEM_BYTES,
};

/// Most items one list call returns.
pub const MAX_PAGE: usize = 1000;

/// One page of a list, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C = Uuid> {
    /// The items, in the index's order.
    pub items: Vec<T>,
    /// Pass this as the `after` of the next call.
    pub next: Option<C>,
}

pub(crate) fn check_limit(limit: usize) -> Result<usize> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Error::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ))
    }
}

/// The records over one store: the entry point. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Models {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    ids: IdGenerator,
    config: ModelsConfig,
    hasher: PasswordHasher,
}

impl Models {
    /// Validates `config`, makes sure the store's schema is usable ([`ensure_schema`]), and
    /// returns the repositories' entry point.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a setting out of bounds (in production, also the weak test
    /// profiles); [`Error::SchemaTooNew`]; store errors.
    pub async fn open(db: Database, config: ModelsConfig) -> Result<Models> {
        config.validate()?;
        ensure_schema(&db).await?;
        let seed = match config.id_seed {
            Some(seed) => seed,
            None => {
                let mut b = [0u8; 8];
                codec::os_random(&mut b)?;
                u64::from_le_bytes(b)
            }
        };
        Ok(Models {
            inner: Arc::new(Inner {
                ids: IdGenerator::new(db.clock().clone(), seed),
                hasher: PasswordHasher::new(config.password.clone()),
                db,
                config,
            }),
        })
    }

    /// The store.
    #[must_use]
    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ModelsConfig {
        &self.inner.config
    }

    /// The password hasher (shared by every repository: one bound on concurrent hashes).
    #[must_use]
    pub fn hasher(&self) -> &PasswordHasher {
        &self.inner.hasher
    }

    /// A new UUIDv7 from the injected clock and seed.
    #[must_use]
    pub fn new_id(&self) -> Uuid {
        self.inner.ids.next_id()
    }

    /// Wall-clock time from the store's clock, µs since the epoch.
    #[must_use]
    pub fn now(&self) -> i64 {
        self.inner.db.clock().now_micros()
    }

    /// Tenants, the tenant directory, export and deletion.
    #[must_use]
    pub fn tenants(&self) -> Tenants<'_> {
        Tenants::new(self)
    }

    /// Users.
    #[must_use]
    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }

    /// Logins (refresh-token families).
    #[must_use]
    pub fn auth(&self) -> AuthSessions<'_> {
        AuthSessions::new(self)
    }

    /// Workspace sessions.
    #[must_use]
    pub fn workspace_sessions(&self) -> WorkspaceSessions<'_> {
        WorkspaceSessions::new(self)
    }

    /// Conversations and their messages.
    #[must_use]
    pub fn conversations(&self) -> Conversations<'_> {
        Conversations::new(self)
    }

    /// The audit log.
    #[must_use]
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(self)
    }

    /// Workspace file metadata.
    #[must_use]
    pub fn files(&self) -> Files<'_> {
        Files::new(self)
    }
}
