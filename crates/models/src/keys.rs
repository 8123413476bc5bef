//! The records' keyspace: the only place in this crate that packs tuple keys. Every key of a
//! tenant's records lies under `("t", T, <area>)` with an area distinct from the queue's `"q"`;
//! the tenant directory under `("g", "tenants")` holds tenant ids only; the schema version is
//! `("meta", "schema")`.
//!
//! ```text
//! ("meta", "schema")                          -> u32 (JSON)      schema version
//! ("g", "tenants", T)                         -> ""              tenant directory
//!
//! ("t", T, "tenant")                          -> Tenant
//! ("t", T, "user", "rec",   U)                -> User
//! ("t", T, "user", "email", EMAIL)            -> U (16 bytes)   unique per tenant
//! ("t", T, "auth", "fam",   F)                -> AuthSession (a refresh-token family)
//! ("t", T, "auth", "tok",   F, GEN)           -> RefreshTokenRecord (HMAC only, never the secret)
//! ("t", T, "auth", "user",  U, F)             -> ""              families of a user
//! ("t", T, "auth", "exp",   ABS_EXPIRY, F)    -> ""              families by absolute expiry
//! ("t", T, "ws",   "rec",   S, I, N)          -> chunk I of N of a WorkspaceSession (JSON)
//! ("t", T, "ws",   "user",  U, S)             -> ""              sessions by owner
//! ("t", T, "ws",   "path",  WORKSPACE, S)     -> ""              sessions by workspace path
//! ("t", T, "ws",   "parent", P, S)            -> ""              forks of a session
//! ("t", T, "ws",   "act",   LAST_ACTIVITY, S) -> ""              sessions by last activity
//! ("t", T, "conv", "rec",   C)                -> Conversation
//! ("t", T, "conv", "msg",   C, VS, I, N)      -> chunk I of N of a Message (JSON), VS = commit order
//! ("t", T, "conv", "mid",   C, M)             -> VS (12 bytes)   message id -> position
//! ("t", T, "conv", "n",     C)                -> i64             message count (atomic add)
//! ("t", T, "conv", "last",  C)                -> u64             last append µs (atomic max)
//! ("t", T, "audit", "pend", VS)               -> AuditEvent      appended, not sealed yet
//! ("t", T, "audit", "id",   E)                -> 0 ‖ VS | 1 ‖ SEQ  event id -> where it is
//! ("t", T, "audit", "ev",   SEQ)              -> SealedEvent     the chain (binary, see audit)
//! ("t", T, "audit", "head")                   -> ChainHead       last sealed seq and hash
//! ("t", T, "audit", "seg",  FIRST_SEQ)        -> AuditSegment    compacted, summarised ranges
//! ("t", T, "file", "rec",   FILE)             -> File
//! ("t", T, "file", "path",  WORKSPACE, PATH)  -> FILE (16 bytes) unique per workspace
//! ("t", T, "file", "ver",   FILE, VERSION)    -> FileVersion
//! ("t", T, "mem",  S, I)                      -> MemoryItem      item I of session S's latest summary
//! ("t", T, "llm",  "use", PROVIDER, DIR, SHARD) -> i64           LLM tokens (DIR "in"/"out"; atomic add)
//! ```
//!
//! Times are i64 microseconds since the epoch; ids are UUIDv7 (tuple UUID type); `VS` is a
//! tuple versionstamp (10-byte commit stamp and a 2-byte order within the transaction).

use steward_store::tuple::{pack, unpack, Subspace, Versionstamp};
use steward_store::{strinc, RangeOption};
use uuid::Uuid;

/// The schema version key.
pub(crate) fn schema() -> Vec<u8> {
    pack(&("meta", "schema"))
}

/// A tenant's entry in the global tenant directory.
pub(crate) fn directory_entry(tenant: Uuid) -> Vec<u8> {
    pack(&("g", "tenants", tenant))
}

/// The tenant directory, from `after` (exclusive) on.
pub(crate) fn directory_after(after: Option<Uuid>) -> RangeOption {
    let all = pack(&("g", "tenants"));
    let begin = match after {
        Some(t) => steward_store::key_after(&directory_entry(t)),
        None => all.clone(),
    };
    RangeOption::new(begin, strinc(&all))
}

pub(crate) fn parse_directory_entry(key: &[u8]) -> Option<Uuid> {
    unpack::<(String, String, Uuid)>(key)
        .ok()
        .map(|(_, _, t)| t)
}

/// Every key of a tenant: `("t", T)` and everything under it.
pub(crate) fn tenant_prefix(tenant: Uuid) -> Vec<u8> {
    pack(&("t", tenant))
}

/// The keys of one tenant's records. Every method's key starts with [`tenant_prefix`].
#[derive(Debug, Clone)]
pub(crate) struct TenantKeys {
    t: Subspace,
}

fn prefix(p: &[u8]) -> RangeOption {
    // Tuple-packed prefixes never end in 0xff, so strinc is the exact end of the subspace.
    RangeOption::prefix(p)
}

impl TenantKeys {
    pub(crate) fn new(tenant: Uuid) -> Self {
        TenantKeys {
            t: Subspace::from_bytes(tenant_prefix(tenant)),
        }
    }

    /// All of the tenant's keys (its records and its queue).
    pub(crate) fn everything(&self) -> RangeOption {
        prefix(self.t.bytes())
    }

    // ---- tenant ----

    pub(crate) fn tenant(&self) -> Vec<u8> {
        self.t.pack(&("tenant",))
    }

    // ---- users ----

    pub(crate) fn user(&self, user: Uuid) -> Vec<u8> {
        self.t.pack(&("user", "rec", user))
    }

    pub(crate) fn users_after(&self, after: Option<Uuid>) -> RangeOption {
        let all = self.t.pack(&("user", "rec"));
        let begin = match after {
            Some(u) => steward_store::key_after(&self.user(u)),
            None => all.clone(),
        };
        RangeOption::new(begin, strinc(&all))
    }

    pub(crate) fn user_email(&self, email: &str) -> Vec<u8> {
        self.t.pack(&("user", "email", email))
    }

    // ---- auth sessions (refresh-token families) ----

    pub(crate) fn auth_family(&self, family: Uuid) -> Vec<u8> {
        self.t.pack(&("auth", "fam", family))
    }

    pub(crate) fn auth_token(&self, family: Uuid, generation: u32) -> Vec<u8> {
        self.t.pack(&("auth", "tok", family, generation))
    }

    pub(crate) fn auth_tokens(&self, family: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("auth", "tok", family)))
    }

    pub(crate) fn auth_by_user(&self, user: Uuid, family: Uuid) -> Vec<u8> {
        self.t.pack(&("auth", "user", user, family))
    }

    pub(crate) fn auth_of_user(&self, user: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("auth", "user", user)))
    }

    pub(crate) fn parse_auth_by_user(&self, key: &[u8]) -> Option<Uuid> {
        self.t
            .unpack::<(String, String, Uuid, Uuid)>(key)
            .ok()
            .map(|(_, _, _, f)| f)
    }

    pub(crate) fn auth_by_expiry(&self, absolute_expiry: i64, family: Uuid) -> Vec<u8> {
        self.t.pack(&("auth", "exp", absolute_expiry, family))
    }

    /// Families whose absolute expiry is at or before `now`.
    pub(crate) fn auth_expired(&self, now: i64) -> RangeOption {
        RangeOption::new(
            self.t.pack(&("auth", "exp")),
            self.t.pack(&("auth", "exp", now.saturating_add(1))),
        )
    }

    pub(crate) fn parse_auth_by_expiry(&self, key: &[u8]) -> Option<(i64, Uuid)> {
        self.t
            .unpack::<(String, String, i64, Uuid)>(key)
            .ok()
            .map(|(_, _, at, f)| (at, f))
    }

    // ---- workspace sessions ----

    pub(crate) fn ws_chunk(&self, session: Uuid, index: u32, count: u32) -> Vec<u8> {
        self.t.pack(&("ws", "rec", session, index, count))
    }

    pub(crate) fn ws_chunks(&self, session: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("ws", "rec", session)))
    }

    pub(crate) fn parse_ws_chunk(&self, key: &[u8]) -> Option<(u32, u32)> {
        self.t
            .unpack::<(String, String, Uuid, u32, u32)>(key)
            .ok()
            .map(|(_, _, _, i, n)| (i, n))
    }

    pub(crate) fn ws_by_user(&self, user: Uuid, session: Uuid) -> Vec<u8> {
        self.t.pack(&("ws", "user", user, session))
    }

    pub(crate) fn ws_of_user(&self, user: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("ws", "user", user)))
    }

    pub(crate) fn ws_by_workspace(&self, workspace: &str, session: Uuid) -> Vec<u8> {
        self.t.pack(&("ws", "path", workspace, session))
    }

    pub(crate) fn ws_of_workspace(&self, workspace: &str) -> RangeOption {
        prefix(&self.t.pack(&("ws", "path", workspace)))
    }

    pub(crate) fn ws_by_parent(&self, parent: Uuid, session: Uuid) -> Vec<u8> {
        self.t.pack(&("ws", "parent", parent, session))
    }

    pub(crate) fn ws_of_parent(&self, parent: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("ws", "parent", parent)))
    }

    pub(crate) fn ws_by_activity(&self, last_activity: i64, session: Uuid) -> Vec<u8> {
        self.t.pack(&("ws", "act", last_activity, session))
    }

    pub(crate) fn ws_activity_all(&self) -> RangeOption {
        prefix(&self.t.pack(&("ws", "act")))
    }

    pub(crate) fn parse_ws_activity(&self, key: &[u8]) -> Option<(i64, Uuid)> {
        self.t
            .unpack::<(String, String, i64, Uuid)>(key)
            .ok()
            .map(|(_, _, at, id)| (at, id))
    }

    /// The session id at the end of any `ws` index key (user, path, parent, activity).
    pub(crate) fn parse_ws_index(&self, key: &[u8]) -> Option<Uuid> {
        // Every index key ends with the session's UUID: 0x30 and 16 bytes.
        let tail = key.len().checked_sub(17)?;
        unpack::<Uuid>(&key[tail..]).ok()
    }

    // ---- session memory (items distilled from a session's summary) ----

    /// Memory item `index` of a session: `("t", T, "mem", S, I)`.
    pub(crate) fn memory_item(&self, session: Uuid, index: u32) -> Vec<u8> {
        self.t.pack(&("mem", session, index))
    }

    /// Every memory item of a session, in index order.
    pub(crate) fn memory_of(&self, session: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("mem", session)))
    }

    // ---- LLM token usage (sharded counters, summed on read) ----

    /// One shard of a token counter: `("t", T, "llm", "use", PROVIDER, DIR, SHARD)`.
    pub(crate) fn llm_usage(&self, provider: &str, direction: &str, shard: u32) -> Vec<u8> {
        self.t.pack(&("llm", "use", provider, direction, shard))
    }

    /// Every token counter shard of the tenant.
    pub(crate) fn llm_usage_all(&self) -> RangeOption {
        prefix(&self.t.pack(&("llm", "use")))
    }

    /// `(provider, direction)` of a counter shard key.
    pub(crate) fn parse_llm_usage(&self, key: &[u8]) -> Option<(String, String)> {
        self.t
            .unpack::<(String, String, String, String, u32)>(key)
            .ok()
            .map(|(_, _, p, d, _)| (p, d))
    }

    // ---- conversations ----

    pub(crate) fn conversation(&self, conv: Uuid) -> Vec<u8> {
        self.t.pack(&("conv", "rec", conv))
    }

    pub(crate) fn conversations_after(&self, after: Option<Uuid>) -> RangeOption {
        let all = self.t.pack(&("conv", "rec"));
        let begin = match after {
            Some(c) => steward_store::key_after(&self.conversation(c)),
            None => all.clone(),
        };
        RangeOption::new(begin, strinc(&all))
    }

    /// A message chunk key with an incomplete versionstamp (for `set_versionstamped_key`).
    pub(crate) fn message_chunk_stamped(
        &self,
        conv: Uuid,
        user_version: u16,
        index: u32,
        count: u32,
    ) -> Vec<u8> {
        self.t.pack_with_versionstamp(&(
            "conv",
            "msg",
            conv,
            Versionstamp::incomplete(user_version),
            index,
            count,
        ))
    }

    /// Every message chunk of a conversation at or after position `from` (exclusive when
    /// `after`), in commit order.
    pub(crate) fn messages_from(&self, conv: Uuid, from: Option<&Versionstamp>) -> RangeOption {
        let all = self.t.pack(&("conv", "msg", conv));
        let begin = match from {
            // Past every chunk of the message at `from`.
            Some(vs) => strinc(&self.t.pack(&("conv", "msg", conv, vs))),
            None => all.clone(),
        };
        RangeOption::new(begin, strinc(&all))
    }

    /// Every chunk of the message at position `vs`.
    pub(crate) fn message_chunks_at(&self, conv: Uuid, vs: &Versionstamp) -> RangeOption {
        prefix(&self.t.pack(&("conv", "msg", conv, vs)))
    }

    pub(crate) fn messages_all(&self, conv: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("conv", "msg", conv)))
    }

    pub(crate) fn parse_message_chunk(&self, key: &[u8]) -> Option<(Versionstamp, u32, u32)> {
        self.t
            .unpack::<(String, String, Uuid, Versionstamp, u32, u32)>(key)
            .ok()
            .map(|(_, _, _, vs, i, n)| (vs, i, n))
    }

    pub(crate) fn message_id(&self, conv: Uuid, message: Uuid) -> Vec<u8> {
        self.t.pack(&("conv", "mid", conv, message))
    }

    pub(crate) fn message_ids(&self, conv: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("conv", "mid", conv)))
    }

    pub(crate) fn message_count(&self, conv: Uuid) -> Vec<u8> {
        self.t.pack(&("conv", "n", conv))
    }

    pub(crate) fn message_last_at(&self, conv: Uuid) -> Vec<u8> {
        self.t.pack(&("conv", "last", conv))
    }

    // ---- audit ----

    /// A pending audit event key with an incomplete versionstamp.
    pub(crate) fn audit_pending_stamped(&self, user_version: u16) -> Vec<u8> {
        self.t
            .pack_with_versionstamp(&("audit", "pend", Versionstamp::incomplete(user_version)))
    }

    pub(crate) fn audit_pending_at(&self, vs: &Versionstamp) -> Vec<u8> {
        self.t.pack(&("audit", "pend", vs))
    }

    pub(crate) fn audit_pending_all(&self) -> RangeOption {
        prefix(&self.t.pack(&("audit", "pend")))
    }

    pub(crate) fn audit_event_id(&self, event: Uuid) -> Vec<u8> {
        self.t.pack(&("audit", "id", event))
    }

    pub(crate) fn audit_sealed(&self, seq: u64) -> Vec<u8> {
        self.t.pack(&("audit", "ev", seq))
    }

    /// Sealed events with `first <= seq <= last`.
    pub(crate) fn audit_sealed_range(&self, first: u64, last: u64) -> RangeOption {
        RangeOption::new(
            self.t.pack(&("audit", "ev", first)),
            self.t.pack(&("audit", "ev", last.saturating_add(1))),
        )
    }

    pub(crate) fn parse_audit_sealed(&self, key: &[u8]) -> Option<u64> {
        self.t
            .unpack::<(String, String, u64)>(key)
            .ok()
            .map(|(_, _, s)| s)
    }

    pub(crate) fn audit_head(&self) -> Vec<u8> {
        self.t.pack(&("audit", "head"))
    }

    pub(crate) fn audit_segment(&self, first_seq: u64) -> Vec<u8> {
        self.t.pack(&("audit", "seg", first_seq))
    }

    pub(crate) fn audit_segments(&self) -> RangeOption {
        prefix(&self.t.pack(&("audit", "seg")))
    }

    // ---- files ----

    pub(crate) fn file(&self, file: Uuid) -> Vec<u8> {
        self.t.pack(&("file", "rec", file))
    }

    pub(crate) fn file_path(&self, workspace: &str, path: &str) -> Vec<u8> {
        self.t.pack(&("file", "path", workspace, path))
    }

    /// Paths of a workspace that start with `path_prefix`, after `after` (exclusive).
    pub(crate) fn file_paths(
        &self,
        workspace: &str,
        path_prefix: &str,
        after: Option<&str>,
    ) -> RangeOption {
        // A tuple string is 0x02, the bytes (0x00 escaped) and 0x00: strip the terminator to
        // get a prefix of every longer path.
        let mut p = self.t.pack(&("file", "path", workspace, path_prefix));
        p.pop();
        let end = strinc(&p);
        let begin = match after {
            Some(a) => steward_store::key_after(&self.file_path(workspace, a)),
            None => p,
        };
        RangeOption::new(begin, end)
    }

    pub(crate) fn parse_file_path(&self, key: &[u8]) -> Option<String> {
        self.t
            .unpack::<(String, String, String, String)>(key)
            .ok()
            .map(|(_, _, _, p)| p)
    }

    pub(crate) fn file_version(&self, file: Uuid, version: u64) -> Vec<u8> {
        self.t.pack(&("file", "ver", file, version))
    }

    pub(crate) fn file_versions(&self, file: Uuid) -> RangeOption {
        prefix(&self.t.pack(&("file", "ver", file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_key_lies_under_its_tenant_prefix_and_not_the_queue() {
        let t = Uuid::from_u128(7);
        let k = TenantKeys::new(t);
        let id = Uuid::from_u128(9);
        let root = tenant_prefix(t);
        let queue = pack(&("t", t, "q"));
        for key in [
            k.tenant(),
            k.user(id),
            k.user_email("a@b.c"),
            k.auth_family(id),
            k.auth_token(id, 3),
            k.auth_by_user(id, id),
            k.auth_by_expiry(5, id),
            k.ws_chunk(id, 0, 1),
            k.ws_by_user(id, id),
            k.ws_by_workspace("/w", id),
            k.ws_by_parent(id, id),
            k.ws_by_activity(5, id),
            k.conversation(id),
            k.message_chunk_stamped(id, 0, 0, 1),
            k.message_id(id, id),
            k.message_count(id),
            k.message_last_at(id),
            k.audit_pending_stamped(0),
            k.audit_event_id(id),
            k.audit_sealed(1),
            k.audit_head(),
            k.audit_segment(1),
            k.file(id),
            k.file_path("/w", "src/a.rs"),
            k.file_version(id, 1),
            k.memory_item(id, 0),
            k.llm_usage("openai", "in", 3),
        ] {
            assert!(key.starts_with(&root), "{key:?}");
            assert!(!key.starts_with(&queue), "{key:?}");
        }
        assert_eq!(parse_directory_entry(&directory_entry(t)), Some(t));
        assert_eq!(k.parse_ws_index(&k.ws_by_workspace("/w", id)), Some(id));
        assert_eq!(k.parse_ws_index(&k.ws_by_activity(-3, id)), Some(id));
        assert_eq!(k.parse_auth_by_user(&k.auth_by_user(t, id)), Some(id));
        assert_eq!(k.parse_audit_sealed(&k.audit_sealed(42)), Some(42));
        assert_eq!(
            k.parse_file_path(&k.file_path("/w", "src/a.rs")).as_deref(),
            Some("src/a.rs")
        );
    }

    #[test]
    fn file_path_prefix_ranges_cover_longer_paths_only() {
        let k = TenantKeys::new(Uuid::from_u128(1));
        let r = k.file_paths("/w", "src/", None);
        let inside = k.file_path("/w", "src/deep/x.rs");
        let outside = k.file_path("/w", "srd");
        let other_ws = k.file_path("/w2", "src/a");
        assert!(inside >= r.begin && inside < r.end);
        assert!(!(outside >= r.begin && outside < r.end));
        assert!(!(other_ws >= r.begin && other_ws < r.end));
        let after = k.file_paths("/w", "src/", Some("src/deep/x.rs"));
        assert!(inside < after.begin);
    }

    #[test]
    fn sealed_ranges_are_inclusive() {
        let k = TenantKeys::new(Uuid::from_u128(1));
        let r = k.audit_sealed_range(2, 4);
        for s in 2..=4 {
            assert!(k.audit_sealed(s) >= r.begin && k.audit_sealed(s) < r.end);
        }
        assert!(k.audit_sealed(1) < r.begin && k.audit_sealed(5) >= r.end);
    }

    #[test]
    fn memory_ranges_hold_one_session_only() {
        let k = TenantKeys::new(Uuid::from_u128(1));
        let (s1, s2) = (Uuid::from_u128(2), Uuid::from_u128(3));
        let r = k.memory_of(s1);
        for i in [0, 1, u32::MAX] {
            let key = k.memory_item(s1, i);
            assert!(key >= r.begin && key < r.end);
            assert!(!(k.memory_item(s2, i) >= r.begin && k.memory_item(s2, i) < r.end));
        }
        assert_eq!(
            k.parse_llm_usage(&k.llm_usage("anthropic", "out", 7)),
            Some(("anthropic".to_owned(), "out".to_owned()))
        );
    }
}
