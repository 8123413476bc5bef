//! [`AuditEvent`]: the tenant's append-only audit log.
//!
//! # Design
//! - **Append** writes the event under a versionstamped key in `("audit", "pend")`: blind
//!   writes only, so appends never conflict and no key is hot. An id marker (a versionstamped
//!   value) makes a retried append idempotent and finds the event by id.
//! - **Seal** ([`Audit::seal`], run by a periodic job) moves a batch of pending events, in commit
//!   order, into the chain: each gets the next gapless sequence number and
//!   `hash = HMAC-SHA-256(audit.chain_key, "steward.audit.v1" ‖ tenant ‖ seq ‖ prev_hash ‖
//!   event bytes)`, and the head (last seq and hash) moves. Only sealers contend, on the head.
//! - **Compaction** ([`Audit::compact_expired`], run by a periodic job) replaces sealed events
//!   older than the tenant's retention, a bounded range per transaction, by a signed
//!   [`AuditSegment`]: first/last seq, count, the hash before the range and its last hash, the
//!   RFC 6962 Merkle root of its chain hashes ([`crate::merkle`]), its time span, and an Ed25519
//!   signature by `audit.signing_key` (key id recorded) over all of those. The same transaction
//!   appends an `audit.compacted` event recording the segment, so the chain itself witnesses
//!   every compaction.
//! - **Verify** ([`Audit::verify_chain`]) walks segments and events page by page (each page
//!   its own transaction) and reports the first [`ChainBreak`], with its seq and segment: a
//!   changed event (hash), a removed one (gap), a reordered or replaced one (previous hash), a
//!   segment whose signature fails or whose key is unknown, a segment that disagrees with its
//!   `audit.compacted` record (Merkle root), or a head that does not match. The chain key is
//!   secret, so an edit cannot be hidden by recomputing the chain, and the signing key is
//!   needed to forge a segment. Removing the newest events *and* rolling the head back
//!   together is only detectable against a head kept elsewhere: publish [`ChainReport::head`]
//!   periodically.
//! - Segments written before signing (schema 1) carry a MAC under the chain key instead; they
//!   still verify by it and are counted in [`ChainReport::legacy_segments`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use steward_store::tuple::Versionstamp;
use steward_store::{key_after, RangeOption, Transaction};
use uuid::Uuid;

use crate::codec::{check_len, decode, encode, hex, unhex, MAX_INLINE_VALUE};
use crate::config::AuditConfig;
use crate::error::{ChainBreak, ChainBreakKind, Error, Result};
use crate::keys::TenantKeys;
use crate::merkle::MerkleBuilder;
use crate::signing::{AuditSigningKey, AuditVerifyingKey};
use crate::tenant::require_tenant;
use crate::{check_limit, Models, MAX_PAGE};

/// Largest encoded audit event, in bytes (it is one value, never chunked).
pub const MAX_AUDIT_EVENT_BYTES: usize = 32 * 1024;
/// Longest action name, in bytes.
pub const MAX_ACTION_BYTES: usize = 128;
/// Longest target, in bytes.
pub const MAX_TARGET_BYTES: usize = 1024;
/// Most events in one compaction segment.
pub const MAX_SEGMENT_EVENTS: u64 = 1000;
/// Bytes of events sealed per transaction at most (well inside the 10 MB limit).
const SEAL_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Events verified per transaction.
const VERIFY_PAGE: usize = 500;
const HASH_DOMAIN: &[u8] = b"steward.audit.v1\0";
const LEGACY_SEGMENT_DOMAIN: &[u8] = b"steward.audit.segment.v1\0";
const SIGNED_DOMAIN: &[u8] = b"steward.audit.segment.v2\0";
const SEGMENT_FORMAT_SIGNED: u8 = 2;
/// Events read per page while compacting.
const COMPACT_PAGE: usize = 200;
/// Bytes of events one segment covers at most (the transaction reads them all).
const COMPACT_MAX_BYTES: usize = 2 * 1024 * 1024;
/// The action of the event that records a compaction in the chain (reserved).
pub const COMPACTED_ACTION: &str = "audit.compacted";
const COMPACTED_NEEDLE: &[u8] = b"\"action\":\"audit.compacted\"";
const SEALED_FORMAT: u8 = 1;
const MARKER_PENDING: u8 = 0;
const MARKER_SEALED: u8 = 1;

/// A SHA-256-sized hash.
pub type Hash = [u8; 32];

/// An audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UUIDv7.
    pub id: Uuid,
    /// When it happened, µs since the epoch.
    pub at: i64,
    /// Who did it (a user), if anyone.
    #[serde(default)]
    pub actor_id: Option<Uuid>,
    /// What happened, e.g. `user.login`, `session.fork`.
    pub action: String,
    /// What it happened to, e.g. a record id or path.
    #[serde(default)]
    pub target: Option<String>,
    /// Anything else.
    #[serde(default)]
    pub details: serde_json::Value,
}

/// What [`Audit::append`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// A chosen id, or `None` for a new UUIDv7.
    pub id: Option<Uuid>,
    /// Who did it.
    pub actor_id: Option<Uuid>,
    /// What happened.
    pub action: String,
    /// What it happened to.
    pub target: Option<String>,
    /// Anything else.
    pub details: serde_json::Value,
}

impl NewAuditEvent {
    /// An event with an action only.
    #[must_use]
    pub fn new(action: impl Into<String>) -> Self {
        NewAuditEvent {
            id: None,
            actor_id: None,
            action: action.into(),
            target: None,
            details: serde_json::Value::Null,
        }
    }
}

/// An event in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedEvent {
    /// Gapless, from 1.
    pub seq: u64,
    /// The previous event's hash (zeros for seq 1).
    pub prev_hash: Hash,
    /// This event's hash.
    pub hash: Hash,
    /// The event.
    pub event: AuditEvent,
}

/// The end of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The last sealed seq (0: none yet).
    pub seq: u64,
    /// Its hash (zeros: none yet).
    pub hash: Hash,
}

impl ChainHead {
    const GENESIS: ChainHead = ChainHead {
        seq: 0,
        hash: [0; 32],
    };

    fn encode(&self) -> Vec<u8> {
        let mut v = self.seq.to_be_bytes().to_vec();
        v.extend_from_slice(&self.hash);
        v
    }

    fn decode(v: &[u8]) -> Result<Self> {
        if v.len() != 40 {
            return Err(Error::corrupt("audit head", "not 40 bytes"));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&v[..8]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&v[8..]);
        Ok(ChainHead {
            seq: u64::from_be_bytes(seq),
            hash,
        })
    }
}

/// A compacted range of the chain: what compaction leaves in place of the events it removed.
///
/// Every field but the seal is covered by the seal: for a [`SegmentSeal::Signed`] segment, an
/// Ed25519 signature over [`AuditSegment::signed_message`], verifiable by anyone holding the
/// public key (no chain key needed), so a segment cannot be forged, altered or moved to another
/// tenant or place in the chain without the signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSegment {
    /// First seq it covers.
    pub first_seq: u64,
    /// Last seq it covers.
    pub last_seq: u64,
    /// Events it covers: `last_seq - first_seq + 1`.
    pub count: u64,
    /// The chain hash before `first_seq` (zeros if it is 1).
    pub prev_hash: Hash,
    /// The chain hash of `last_seq`: the next event's (or segment's) previous hash.
    pub last_hash: Hash,
    /// RFC 6962 Merkle root of the range's chain hashes in seq order ([`crate::merkle_root`]);
    /// `None` only for a [`SegmentSeal::LegacyMac`] segment.
    pub merkle_root: Option<Hash>,
    /// Earliest event time in the range, µs.
    pub first_at: i64,
    /// Latest event time in the range, µs.
    pub last_at: i64,
    /// When it was compacted, µs.
    pub compacted_at: i64,
    /// What vouches for it.
    pub seal: SegmentSeal,
}

/// What vouches for an [`AuditSegment`].
#[derive(Clone, PartialEq, Eq)]
pub enum SegmentSeal {
    /// Ed25519 over [`AuditSegment::signed_message`] by the key named `key_id` (every segment
    /// this version compacts).
    Signed {
        /// The signing key's id (`audit.signing_key_file`'s fingerprint or chosen id).
        key_id: String,
        /// The 64-byte signature.
        signature: [u8; 64],
    },
    /// HMAC-SHA-256 under the chain key over the tenant, the range and its two hashes: segments
    /// compacted before signed segments (schema 1). They have no Merkle root and no signature;
    /// they still verify, by their MAC, and are counted in [`ChainReport::legacy_segments`].
    LegacyMac {
        /// The MAC.
        mac: Hash,
    },
}

impl std::fmt::Debug for SegmentSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentSeal::Signed { key_id, signature } => f
                .debug_struct("Signed")
                .field("key_id", key_id)
                .field("signature", &hex(signature))
                .finish(),
            SegmentSeal::LegacyMac { mac } => {
                f.debug_struct("LegacyMac").field("mac", &hex(mac)).finish()
            }
        }
    }
}

impl AuditSegment {
    /// The exact bytes a signed segment's signature covers (`None` for a legacy one), for
    /// auditors verifying segments with the public key alone. All integers big-endian:
    ///
    /// ```text
    /// "steward.audit.segment.v2\0" ‖ tenant (16 bytes) ‖ first_seq u64 ‖ last_seq u64 ‖
    /// count u64 ‖ prev_hash (32) ‖ last_hash (32) ‖ merkle_root (32) ‖ first_at i64 ‖
    /// last_at i64 ‖ compacted_at i64 ‖ len(key_id) u16 ‖ key_id (UTF-8)
    /// ```
    #[must_use]
    pub fn signed_message(&self, tenant: Uuid) -> Option<Vec<u8>> {
        let (SegmentSeal::Signed { key_id, .. }, Some(root)) = (&self.seal, &self.merkle_root)
        else {
            return None;
        };
        let id = key_id.as_bytes();
        let mut m = Vec::with_capacity(SIGNED_DOMAIN.len() + 16 + 24 + 96 + 24 + 2 + id.len());
        m.extend_from_slice(SIGNED_DOMAIN);
        m.extend_from_slice(tenant.as_bytes());
        m.extend_from_slice(&self.first_seq.to_be_bytes());
        m.extend_from_slice(&self.last_seq.to_be_bytes());
        m.extend_from_slice(&self.count.to_be_bytes());
        m.extend_from_slice(&self.prev_hash);
        m.extend_from_slice(&self.last_hash);
        m.extend_from_slice(root);
        m.extend_from_slice(&self.first_at.to_be_bytes());
        m.extend_from_slice(&self.last_at.to_be_bytes());
        m.extend_from_slice(&self.compacted_at.to_be_bytes());
        m.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
        m.extend_from_slice(id);
        Some(m)
    }

    /// Signs the segment with `key`: its seal becomes `key`'s id and the Ed25519 signature
    /// over [`AuditSegment::signed_message`] (which covers that id). Compaction does this; it is
    /// public so tools (and tests) can produce segments the verifier judges.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`merkle_root`) if the segment has no Merkle root.
    pub fn sign(&mut self, tenant: Uuid, key: &AuditSigningKey) -> Result<()> {
        self.seal = SegmentSeal::Signed {
            key_id: key.id().to_owned(),
            signature: [0; 64],
        };
        let message = self
            .signed_message(tenant)
            .ok_or_else(|| Error::invalid("merkle_root", "a signed segment needs a Merkle root"))?;
        self.seal = SegmentSeal::Signed {
            key_id: key.id().to_owned(),
            signature: key.sign(&message),
        };
        Ok(())
    }

    /// Whether the segment is signed, under `key`'s id, with a valid signature by `key`.
    #[must_use]
    pub fn verify_signature(&self, tenant: Uuid, key: &AuditVerifyingKey) -> bool {
        match (&self.seal, self.signed_message(tenant)) {
            (SegmentSeal::Signed { key_id, signature }, Some(message)) => {
                key_id == key.id() && key.verify(&message, signature)
            }
            _ => false,
        }
    }

    /// The key id of a signed segment.
    #[must_use]
    pub fn key_id(&self) -> Option<&str> {
        match &self.seal {
            SegmentSeal::Signed { key_id, .. } => Some(key_id),
            SegmentSeal::LegacyMac { .. } => None,
        }
    }

    fn span(&self) -> Option<(u64, u64)> {
        Some((self.first_seq, self.last_seq))
    }
}

/// A segment as stored (JSON). Format 2 (`"v": 2`) is signed; a record without `v` is a
/// schema-1 segment sealed by a MAC.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSegment {
    #[serde(default)]
    v: u8,
    first_seq: u64,
    last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    prev_hash: String,
    last_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    merkle_root: Option<String>,
    first_at: i64,
    last_at: i64,
    compacted_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

fn encode_segment(s: &AuditSegment) -> Result<Vec<u8>> {
    let (v, key_id, signature, mac) = match &s.seal {
        SegmentSeal::Signed { key_id, signature } => (
            SEGMENT_FORMAT_SIGNED,
            Some(key_id.clone()),
            Some(hex(signature)),
            None,
        ),
        SegmentSeal::LegacyMac { mac } => (0, None, None, Some(hex(mac))),
    };
    let stored = StoredSegment {
        v,
        first_seq: s.first_seq,
        last_seq: s.last_seq,
        count: (v != 0).then_some(s.count),
        prev_hash: hex(&s.prev_hash),
        last_hash: hex(&s.last_hash),
        merkle_root: s.merkle_root.as_ref().map(|r| hex(r)),
        first_at: s.first_at,
        last_at: s.last_at,
        compacted_at: s.compacted_at,
        key_id,
        signature,
        mac,
    };
    encode("audit_segment", &stored, MAX_INLINE_VALUE)
}

/// `None` for anything that is not a well-formed segment of a known format.
fn decode_segment(v: &[u8]) -> Option<AuditSegment> {
    let s: StoredSegment = serde_json::from_slice(v).ok()?;
    let seal = match s.v {
        0 => SegmentSeal::LegacyMac {
            mac: hash_from_hex(s.mac.as_deref()?)?,
        },
        SEGMENT_FORMAT_SIGNED => SegmentSeal::Signed {
            key_id: s.key_id?,
            signature: unhex(s.signature.as_deref()?)?.try_into().ok()?,
        },
        _ => return None,
    };
    let merkle_root = match &seal {
        SegmentSeal::Signed { .. } => Some(hash_from_hex(s.merkle_root.as_deref()?)?),
        SegmentSeal::LegacyMac { .. } => None,
    };
    let count = match s.count {
        Some(n) => n,
        None => s.last_seq.checked_sub(s.first_seq)?.checked_add(1)?,
    };
    Some(AuditSegment {
        first_seq: s.first_seq,
        last_seq: s.last_seq,
        count,
        prev_hash: hash_from_hex(&s.prev_hash)?,
        last_hash: hash_from_hex(&s.last_hash)?,
        merkle_root,
        first_at: s.first_at,
        last_at: s.last_at,
        compacted_at: s.compacted_at,
        seal,
    })
}

/// What a seal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealOutcome {
    /// Events sealed.
    pub sealed: usize,
    /// The head after it.
    pub head: ChainHead,
}

/// What a verification covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainReport {
    /// The head verified up to (keep it elsewhere to detect a later rollback).
    pub head: ChainHead,
    /// Compaction segments checked.
    pub segments: usize,
    /// Of those, schema-1 segments verified by their MAC only (no signature, no Merkle root).
    pub legacy_segments: usize,
    /// Events covered by those segments.
    pub compacted_events: u64,
    /// Events checked one by one.
    pub events_checked: u64,
}

/// Where an event is.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditLookup {
    /// Appended, not sealed yet.
    Pending(AuditEvent),
    /// In the chain.
    Sealed(SealedEvent),
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn new_mac(key: &[u8]) -> Result<HmacSha256> {
    <HmacSha256 as hmac::KeyInit>::new_from_slice(key)
        .map_err(|e| Error::Crypto(format!("hmac key: {e}")))
}

fn finish(m: HmacSha256) -> Hash {
    use hmac::Mac;
    let out = m.finalize().into_bytes();
    let mut h = [0u8; 32];
    h.copy_from_slice(&out);
    h
}

fn event_hash(key: &[u8], tenant: Uuid, seq: u64, prev: &Hash, event: &[u8]) -> Result<Hash> {
    use hmac::Mac;
    let mut m = new_mac(key)?;
    m.update(HASH_DOMAIN);
    m.update(tenant.as_bytes());
    m.update(&seq.to_be_bytes());
    m.update(prev);
    m.update(event);
    Ok(finish(m))
}

/// The MAC of a schema-1 segment ([`SegmentSeal::LegacyMac`]).
fn legacy_segment_mac(key: &[u8], tenant: Uuid, s: &AuditSegment) -> Result<Hash> {
    use hmac::Mac;
    let mut m = new_mac(key)?;
    m.update(LEGACY_SEGMENT_DOMAIN);
    m.update(tenant.as_bytes());
    m.update(&s.first_seq.to_be_bytes());
    m.update(&s.last_seq.to_be_bytes());
    m.update(&s.prev_hash);
    m.update(&s.last_hash);
    Ok(finish(m))
}

/// A sealed event as stored: format, prev hash, hash, then the exact event bytes hashed.
fn encode_sealed(prev: &Hash, hash: &Hash, event: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(65 + event.len());
    v.push(SEALED_FORMAT);
    v.extend_from_slice(prev);
    v.extend_from_slice(hash);
    v.extend_from_slice(event);
    v
}

fn split_sealed(v: &[u8]) -> Option<(Hash, Hash, &[u8])> {
    if v.len() < 65 || v[0] != SEALED_FORMAT {
        return None;
    }
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&v[1..33]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&v[33..65]);
    Some((prev, hash, &v[65..]))
}

fn broken(seq: u64, kind: ChainBreakKind) -> Error {
    Error::AuditChainBroken(ChainBreak {
        seq,
        segment: None,
        kind,
    })
}

/// The audit repository.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    m: &'a Models,
}

impl<'a> Audit<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        Audit { m }
    }

    fn key(&self) -> &[u8] {
        self.m.config().audit.chain_key.bytes()
    }

    /// Validates an event and gives it its id and time (call before a retry loop, then
    /// [`Audit::append_in`] inside it).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field; the whole event is limited to
    /// [`MAX_AUDIT_EVENT_BYTES`].
    pub fn prepare(&self, new: NewAuditEvent) -> Result<AuditEvent> {
        check_len("action", &new.action, MAX_ACTION_BYTES, true)?;
        if new.action == COMPACTED_ACTION {
            return Err(Error::invalid(
                "action",
                format!("{COMPACTED_ACTION} is reserved for compaction records"),
            ));
        }
        if let Some(t) = &new.target {
            check_len("target", t, MAX_TARGET_BYTES, false)?;
        }
        let event = AuditEvent {
            id: new.id.unwrap_or_else(|| self.m.new_id()),
            at: self.m.now(),
            actor_id: new.actor_id,
            action: new.action,
            target: new.target,
            details: new.details,
        };
        encode("audit_event", &event, MAX_AUDIT_EVENT_BYTES)?;
        Ok(event)
    }

    /// Appends a prepared event inside the caller's transaction, so the audited change and
    /// its event commit together. Blind writes only. `user_version` orders several events of
    /// one transaction (0, 1, ...).
    ///
    /// # Errors
    /// [`Error::Invalid`] if the event is too large.
    pub fn append_in(
        &self,
        tx: &Transaction,
        tenant: Uuid,
        event: &AuditEvent,
        user_version: u16,
    ) -> Result<()> {
        let keys = TenantKeys::new(tenant);
        let bytes = encode("audit_event", event, MAX_AUDIT_EVENT_BYTES)?;
        tx.set_versionstamped_key(&keys.audit_pending_stamped(user_version), &bytes);
        let mut marker = vec![MARKER_PENDING];
        marker.extend_from_slice(&[0u8; 10]);
        marker.extend_from_slice(&user_version.to_be_bytes());
        marker.extend_from_slice(&1u32.to_le_bytes());
        tx.set_versionstamped_value(&keys.audit_event_id(event.id), &marker);
        Ok(())
    }

    /// Appends an event to an existing tenant's log (never conflicts with other appends).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field; [`Error::NotFound`] for the tenant; store errors.
    pub async fn append(&self, tenant: Uuid, new: NewAuditEvent) -> Result<AuditEvent> {
        let event = self.prepare(new)?;
        let keys = TenantKeys::new(tenant);
        let (keys, event) = (&keys, &event);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                if maybe_committed.0
                    && tx
                        .get(&keys.audit_event_id(event.id), false)
                        .await?
                        .is_some()
                {
                    return Ok(());
                }
                // A snapshot read: no conflict with tenant updates, but nothing is written
                // under a tenant that does not exist.
                if tx.get(&keys.tenant(), true).await?.is_none() {
                    return Err(Error::not_found("tenant", tenant));
                }
                self.append_in(&tx, tenant, event, 0)
            })
            .await?;
        Ok(event.clone())
    }

    /// Seals up to `audit.seal_batch` pending events (oldest commit first) into the chain.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an undecodable pending event or head; store errors.
    pub async fn seal(&self, tenant: Uuid) -> Result<SealOutcome> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let batch = self.m.config().audit.seal_batch;
        let key = self.key();
        // What earlier attempts sealed: after `commit_unknown_result` the retry would find
        // those events already in the chain and seal the next batch (or nothing), answering
        // for work it did not do. The chain hash at an attempt's last seq binds everything
        // before it, so finding it stored means that attempt committed.
        let tried: Mutex<Vec<SealOutcome>> = Mutex::new(Vec::new());
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                if maybe_committed.0 {
                    let tried = tried.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    for outcome in tried {
                        if let Some(v) = tx.get(&keys.audit_sealed(outcome.head.seq), false).await?
                        {
                            if split_sealed(&v).is_some_and(|(_, h, _)| h == outcome.head.hash) {
                                return Ok(outcome);
                            }
                        }
                    }
                }
                let mut head = match tx.get(&keys.audit_head(), false).await? {
                    Some(v) => ChainHead::decode(&v)?,
                    None => ChainHead::GENESIS,
                };
                let page = tx
                    .get_range(&keys.audit_pending_all().limit(batch).snapshot())
                    .await?;
                let (Some(first), Some(last)) = (page.kvs.first(), page.kvs.last()) else {
                    return Ok(SealOutcome { sealed: 0, head });
                };
                // Guard only what is sealed: later appends land after it and do not conflict.
                tx.add_read_conflict_range(&first.key, &key_after(&last.key));
                let mut bytes = 0;
                let mut sealed = 0;
                for kv in &page.kvs {
                    if sealed > 0 && bytes + kv.value.len() > SEAL_MAX_BYTES {
                        break;
                    }
                    let event: AuditEvent = decode(|| "pending audit event".into(), &kv.value)?;
                    let seq = head.seq + 1;
                    let hash = event_hash(key, tenant, seq, &head.hash, &kv.value)?;
                    tx.set(
                        &keys.audit_sealed(seq),
                        &encode_sealed(&head.hash, &hash, &kv.value),
                    );
                    tx.clear(&kv.key);
                    let mut marker = vec![MARKER_SEALED];
                    marker.extend_from_slice(&seq.to_be_bytes());
                    tx.set(&keys.audit_event_id(event.id), &marker);
                    head = ChainHead { seq, hash };
                    bytes += kv.value.len();
                    sealed += 1;
                }
                tx.set(&keys.audit_head(), &head.encode());
                let outcome = SealOutcome { sealed, head };
                tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(outcome);
                Ok(outcome)
            })
            .await
    }

    /// Seals until nothing is pending. Returns the number sealed and the head.
    ///
    /// # Errors
    /// As [`Audit::seal`].
    pub async fn seal_all(&self, tenant: Uuid) -> Result<SealOutcome> {
        let mut total = 0;
        loop {
            let o = self.seal(tenant).await?;
            total += o.sealed;
            if o.sealed == 0 {
                return Ok(SealOutcome {
                    sealed: total,
                    head: o.head,
                });
            }
        }
    }

    /// The head of the chain.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn head(&self, tenant: Uuid) -> Result<ChainHead> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { read_head(&tx, keys).await })
            .await
    }

    /// Sealed events from `from_seq` on, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; [`Error::Corrupt`]; store errors.
    pub async fn events(
        &self,
        tenant: Uuid,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<SealedEvent>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let range = keys
                    .audit_sealed_range(from_seq, u64::MAX - 1)
                    .limit(limit)
                    .snapshot();
                tx.get_range(&range)
                    .await?
                    .kvs
                    .iter()
                    .map(|kv| {
                        let seq = keys
                            .parse_audit_sealed(&kv.key)
                            .ok_or_else(|| Error::corrupt("audit event key", "undecodable"))?;
                        decode_sealed(seq, &kv.value)
                    })
                    .collect()
            })
            .await
    }

    /// Events appended and not sealed yet, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; [`Error::Corrupt`]; store errors.
    pub async fn pending(&self, tenant: Uuid, limit: usize) -> Result<Vec<AuditEvent>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                tx.get_range(&keys.audit_pending_all().limit(limit).snapshot())
                    .await?
                    .kvs
                    .iter()
                    .map(|kv| decode(|| "pending audit event".into(), &kv.value))
                    .collect()
            })
            .await
    }

    /// Finds an event by id, pending or sealed (`None` once compacted away).
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn lookup(&self, tenant: Uuid, id: Uuid) -> Result<Option<AuditLookup>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(marker) = tx.get(&keys.audit_event_id(id), false).await? else {
                    return Ok(None);
                };
                match marker.split_first() {
                    Some((&MARKER_PENDING, vs)) if vs.len() == 12 => {
                        let mut b = [0u8; 12];
                        b.copy_from_slice(vs);
                        let key = keys.audit_pending_at(&Versionstamp::from(b));
                        match tx.get(&key, false).await? {
                            Some(v) => Ok(Some(AuditLookup::Pending(decode(
                                || "pending audit event".into(),
                                &v,
                            )?))),
                            None => Ok(None),
                        }
                    }
                    Some((&MARKER_SEALED, seq)) if seq.len() == 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(seq);
                        let seq = u64::from_be_bytes(b);
                        match tx.get(&keys.audit_sealed(seq), false).await? {
                            Some(v) => Ok(Some(AuditLookup::Sealed(decode_sealed(seq, &v)?))),
                            None => Ok(None),
                        }
                    }
                    _ => Err(Error::corrupt("audit id marker", "unknown form")),
                }
            })
            .await
    }

    /// Compaction segments, in order.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn segments(&self, tenant: Uuid) -> Result<Vec<AuditSegment>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { read_segments(&tx, keys).await })
            .await
    }

    /// Verifies the whole history: the compacted segments (contiguous from seq 1, each linked
    /// to the previous by its hashes, its count matching its range, its Ed25519 signature valid
    /// under a configured key, or its MAC for a legacy one), then every event after them up to
    /// the head (seq gapless, previous hash, own HMAC), page by page, and each
    /// `audit.compacted` event against the segment it records (range, count, Merkle root).
    ///
    /// Safe to run while compaction runs: events compacted between two pages are picked up
    /// from their new segment.
    ///
    /// # Errors
    /// [`Error::AuditChainBroken`] with the first break found: its seq, the segment (if the
    /// break is in one) and the kind ([`ChainBreakKind`]); [`Error::Corrupt`] for an
    /// undecodable head; store errors.
    pub async fn verify_chain(&self, tenant: Uuid) -> Result<ChainReport> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let mut head = self
            .m
            .db()
            .transact(|tx, _| async move { read_head(&tx, keys).await })
            .await?;
        let mut walk = Walk::new(tenant, self.key(), &self.m.config().audit, head);
        self.walk_segments(keys, &mut walk).await?;
        loop {
            while walk.next <= head.seq {
                let from = walk.next;
                let page = self
                    .m
                    .db()
                    .transact(|tx, _| async move {
                        Ok::<_, Error>(
                            tx.get_range(
                                &keys
                                    .audit_sealed_range(from, head.seq)
                                    .limit(VERIFY_PAGE)
                                    .snapshot(),
                            )
                            .await?
                            .kvs,
                        )
                    })
                    .await?;
                let starts_here =
                    page.first().and_then(|kv| keys.parse_audit_sealed(&kv.key)) == Some(from);
                if !starts_here {
                    // Compacted since the segments were read? Go on from the segments that
                    // start here; otherwise the event is missing.
                    if self.walk_segments(keys, &mut walk).await? == 0 {
                        return Err(broken(from, ChainBreakKind::Gap));
                    }
                    continue;
                }
                for kv in &page {
                    let seq = keys
                        .parse_audit_sealed(&kv.key)
                        .ok_or_else(|| broken(walk.next, ChainBreakKind::Undecodable))?;
                    walk.event(seq, &kv.value)?;
                }
            }
            if walk.next > head.seq.saturating_add(1) {
                // A segment compacted meanwhile reaches past the head read at the start.
                head = self
                    .m
                    .db()
                    .transact(|tx, _| async move { read_head(&tx, keys).await })
                    .await?;
                if walk.next <= head.seq.saturating_add(1) {
                    continue;
                }
            }
            break;
        }
        if walk.prev != head.hash || walk.next != head.seq.saturating_add(1) {
            return Err(broken(head.seq, ChainBreakKind::HeadMismatch));
        }
        walk.report.head = head;
        Ok(walk.report)
    }

    /// Walks the stored segments from the walk's position on, a page per transaction, until
    /// one does not continue the history (an error) or none is left. Returns how many it
    /// walked.
    async fn walk_segments(&self, keys: &TenantKeys, walk: &mut Walk<'_>) -> Result<usize> {
        let mut walked = 0;
        loop {
            let from = walk.next;
            let page = self
                .m
                .db()
                .transact(
                    |tx, _| async move { read_segment_pairs(&tx, keys, from, VERIFY_PAGE).await },
                )
                .await?;
            for (in_place, s) in &page {
                walk.segment(*in_place, s.as_ref())?;
            }
            walked += page.len();
            if page.len() < VERIFY_PAGE {
                return Ok(walked);
            }
        }
    }

    /// Checks events kept elsewhere (an export taken before compaction) against the segment
    /// that replaced them: exactly its range, linked from its previous hash, each HMAC valid,
    /// ending at its last hash, and their Merkle root equal to its root. Proves that archive
    /// is the history the signed segment vouches for.
    ///
    /// # Errors
    /// [`Error::AuditChainBroken`] naming the segment: `Gap` (an event missing or extra),
    /// `PrevHashMismatch`, `HashMismatch` (an edited event), `MerkleRootMismatch`, or
    /// `SegmentMalformed` for a legacy segment (it has no root); crypto errors.
    pub fn verify_segment_events(
        &self,
        tenant: Uuid,
        segment: &AuditSegment,
        events: &[SealedEvent],
    ) -> Result<()> {
        let at = |seq, kind| {
            Error::AuditChainBroken(ChainBreak {
                seq,
                segment: segment.span(),
                kind,
            })
        };
        let Some(root) = segment.merkle_root else {
            return Err(at(segment.first_seq, ChainBreakKind::SegmentMalformed));
        };
        let mut prev = segment.prev_hash;
        let mut merkle = MerkleBuilder::default();
        let mut next = segment.first_seq;
        for e in events {
            if e.seq != next || e.seq > segment.last_seq {
                return Err(at(next, ChainBreakKind::Gap));
            }
            if e.prev_hash != prev {
                return Err(at(e.seq, ChainBreakKind::PrevHashMismatch));
            }
            let bytes = encode("audit_event", &e.event, MAX_AUDIT_EVENT_BYTES)?;
            if event_hash(self.key(), tenant, e.seq, &prev, &bytes)? != e.hash {
                return Err(at(e.seq, ChainBreakKind::HashMismatch));
            }
            merkle.push(&e.hash);
            prev = e.hash;
            next += 1;
        }
        if next != segment.last_seq.saturating_add(1) || prev != segment.last_hash {
            return Err(at(next, ChainBreakKind::Gap));
        }
        if merkle.root() != root {
            return Err(at(segment.first_seq, ChainBreakKind::MerkleRootMismatch));
        }
        Ok(())
    }

    /// Compacts the oldest sealed events, up to `through_seq` and at most
    /// [`MAX_SEGMENT_EVENTS`] (and about 2 MiB of events), into one signed [`AuditSegment`]
    /// after verifying them, and appends an `audit.compacted` event recording it in the same
    /// transaction; refuses events younger than the tenant's audit retention. Call again to
    /// compact further. (The periodic job uses [`Audit::compact_expired`].)
    ///
    /// # Errors
    /// [`Error::Invalid`] (`through_seq`) if nothing is left to compact there, it is not sealed
    /// yet, or an event is within the retention period; [`Error::Invalid`]
    /// (`audit.signing_key_file`) without a signing key; [`Error::AuditChainBroken`] if the
    /// range does not verify; [`Error::NotFound`] for the tenant; store errors.
    pub async fn compact(&self, tenant: Uuid, through_seq: u64) -> Result<AuditSegment> {
        match self
            .compact_next(tenant, Bound::Through(through_seq))
            .await?
        {
            Some(segment) => Ok(segment),
            None => Err(Error::invalid("through_seq", "nothing to compact")),
        }
    }

    /// The compaction job's step: replaces sealed events older than the tenant's
    /// `limits.audit_retention_days` (read from its record) by signed segments, oldest first,
    /// one bounded transaction per segment (at most [`MAX_SEGMENT_EVENTS`] events, about
    /// 2 MiB), until none is old enough or `max_segments` were written. Each transaction also
    /// appends the `audit.compacted` event recording its segment (range, count, Merkle root,
    /// key id, time span), so the chain records every compaction exactly once; it is sealed
    /// into the chain by the next seal. Idempotent and re-runnable: an interrupted run leaves
    /// whole segments only, and the next run goes on after them.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`max_segments`: 1 to 1000; `audit.signing_key_file` without a
    /// signing key); [`Error::AuditChainBroken`] if an event to compact does not verify
    /// (nothing is compacted past a break); [`Error::NotFound`] for the tenant; store errors.
    pub async fn compact_expired(
        &self,
        tenant: Uuid,
        max_segments: usize,
    ) -> Result<CompactionRun> {
        if !(1..=MAX_PAGE).contains(&max_segments) {
            return Err(Error::invalid(
                "max_segments",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        let mut run = CompactionRun {
            segments: Vec::new(),
            events: 0,
            more: false,
        };
        while run.segments.len() < max_segments {
            match self.compact_next(tenant, Bound::Expired).await? {
                Some(s) => {
                    run.events += s.count;
                    run.segments.push(s);
                }
                None => return Ok(run),
            }
        }
        run.more = true;
        Ok(run)
    }

    /// One compaction transaction: the next segment, or `None` if no event qualifies.
    async fn compact_next(&self, tenant: Uuid, bound: Bound) -> Result<Option<AuditSegment>> {
        let signer = self.m.config().audit.signing_key.as_ref().ok_or_else(|| {
            Error::invalid(
                "audit.signing_key_file",
                "no audit signing key is configured; compaction needs one",
            )
        })?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let key = self.key();
        let now = self.m.now();
        // The id and time of the `audit.compacted` event, fixed before the retry loop.
        let event_id = self.m.new_id();
        // The segments earlier attempts wrote. After `commit_unknown_result` the retry finds
        // its own segment stored (and would compact the next range, or refuse). Its timestamp
        // alone does not tell it apart: an earlier call at the same `now` leaves one too; the
        // whole segment does (Ed25519 signatures are deterministic, the event id is ours).
        let tried: Mutex<Vec<AuditSegment>> = Mutex::new(Vec::new());
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let t = require_tenant(&tx, keys, tenant).await?;
                // Serializable: two compactions of one tenant conflict here.
                let last_segment = tx
                    .get_range(&keys.audit_segments().reverse().limit(1))
                    .await?
                    .kvs
                    .first()
                    .map(|kv| {
                        decode_segment(&kv.value)
                            .ok_or_else(|| Error::corrupt("audit segment", "undecodable"))
                    })
                    .transpose()?;
                if maybe_committed.0 {
                    let tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(s) = last_segment.as_ref().filter(|s| tried.contains(s)) {
                        return Ok(Some(s.clone()));
                    }
                }
                let (first, mut prev) = last_segment
                    .as_ref()
                    .map_or((1, [0u8; 32]), |s| (s.last_seq + 1, s.last_hash));
                // A snapshot read: sealing moves the head all the time and must not conflict.
                let head = match tx.get(&keys.audit_head(), true).await? {
                    Some(v) => ChainHead::decode(&v)?,
                    None => ChainHead::GENESIS,
                };
                let mut last = head.seq.min(first.saturating_add(MAX_SEGMENT_EVENTS - 1));
                if let Bound::Through(through_seq) = bound {
                    if through_seq < first {
                        return Err(Error::invalid(
                            "through_seq",
                            format!("events up to {} are already compacted", first - 1),
                        ));
                    }
                    if through_seq > head.seq {
                        return Err(Error::invalid(
                            "through_seq",
                            format!("only events up to {} are sealed", head.seq),
                        ));
                    }
                    last = last.min(through_seq);
                }
                if last < first {
                    return Ok(None);
                }
                let retention = i64::from(t.limits.audit_retention_days) * 86_400_000_000;
                let mut expected = first;
                let (mut first_at, mut last_at) = (i64::MAX, i64::MIN);
                let mut merkle = MerkleBuilder::default();
                let mut ids = Vec::new();
                let mut bytes = 0usize;
                'pages: while expected <= last {
                    let page = tx
                        .get_range(
                            &keys
                                .audit_sealed_range(expected, last)
                                .limit(COMPACT_PAGE)
                                .snapshot(),
                        )
                        .await?;
                    if page.kvs.is_empty() {
                        return Err(broken(expected, ChainBreakKind::Gap));
                    }
                    for kv in &page.kvs {
                        if keys.parse_audit_sealed(&kv.key) != Some(expected) {
                            return Err(broken(expected, ChainBreakKind::Gap));
                        }
                        let (p, h, raw) = split_sealed(&kv.value)
                            .ok_or_else(|| broken(expected, ChainBreakKind::Undecodable))?;
                        if p != prev {
                            return Err(broken(expected, ChainBreakKind::PrevHashMismatch));
                        }
                        if event_hash(key, tenant, expected, &prev, raw)? != h {
                            return Err(broken(expected, ChainBreakKind::HashMismatch));
                        }
                        let event: AuditEvent = decode(|| format!("audit event {expected}"), raw)?;
                        if now.saturating_sub(event.at) < retention {
                            if let Bound::Through(_) = bound {
                                return Err(Error::invalid(
                                    "through_seq",
                                    format!(
                                        "event {expected} is younger than the tenant's audit \
                                         retention of {} days",
                                        t.limits.audit_retention_days
                                    ),
                                ));
                            }
                            break 'pages;
                        }
                        if expected > first && bytes + raw.len() > COMPACT_MAX_BYTES {
                            break 'pages;
                        }
                        bytes += raw.len();
                        first_at = first_at.min(event.at);
                        last_at = last_at.max(event.at);
                        merkle.push(&h);
                        ids.push(event.id);
                        prev = h;
                        expected += 1;
                    }
                }
                let Some(last) = expected.checked_sub(1).filter(|&l| l >= first) else {
                    return Ok(None);
                };
                // Only the compacted range needs guarding: seals append past it.
                tx.add_read_conflict_range(
                    &keys.audit_sealed(first),
                    &keys.audit_sealed(last.saturating_add(1)),
                );
                let mut segment = AuditSegment {
                    first_seq: first,
                    last_seq: last,
                    count: last - first + 1,
                    prev_hash: last_segment.as_ref().map_or([0u8; 32], |s| s.last_hash),
                    last_hash: prev,
                    merkle_root: Some(merkle.root()),
                    first_at,
                    last_at,
                    compacted_at: now,
                    seal: SegmentSeal::LegacyMac { mac: [0; 32] },
                };
                segment.sign(tenant, signer)?;
                for id in ids {
                    tx.clear(&keys.audit_event_id(id));
                }
                let r = keys.audit_sealed_range(first, last);
                tx.clear_range(&r.begin, &r.end);
                tx.set(&keys.audit_segment(first), &encode_segment(&segment)?);
                let recorded = AuditEvent {
                    id: event_id,
                    at: now,
                    actor_id: None,
                    action: COMPACTED_ACTION.to_owned(),
                    target: Some(format!("audit/segment/{first}")),
                    details: serde_json::to_value(CompactedDetails::of(&segment))
                        .map_err(|e| Error::invalid("audit_event", e.to_string()))?,
                };
                self.append_in(&tx, tenant, &recorded, 0)?;
                tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(segment.clone());
                Ok(Some(segment))
            })
            .await
    }
}

/// How far one compaction transaction may go.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Up to this seq, refusing events within the retention ([`Audit::compact`]).
    Through(u64),
    /// As far as events are older than the retention ([`Audit::compact_expired`]).
    Expired,
}

/// What [`Audit::compact_expired`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionRun {
    /// The segments written, oldest first.
    pub segments: Vec<AuditSegment>,
    /// Events they replaced.
    pub events: u64,
    /// The `max_segments` budget ran out: more events may be old enough; call again.
    pub more: bool,
}

/// The details of an `audit.compacted` event: what the chain records about a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CompactedDetails {
    first_seq: u64,
    last_seq: u64,
    count: u64,
    merkle_root: String,
    key_id: String,
    first_at: i64,
    last_at: i64,
}

impl CompactedDetails {
    fn of(s: &AuditSegment) -> Self {
        CompactedDetails {
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            count: s.count,
            merkle_root: s.merkle_root.as_ref().map(|r| hex(r)).unwrap_or_default(),
            key_id: s.key_id().unwrap_or_default().to_owned(),
            first_at: s.first_at,
            last_at: s.last_at,
        }
    }
}

/// The verifier's position in the history.
struct Walk<'a> {
    tenant: Uuid,
    chain_key: &'a [u8],
    config: &'a AuditConfig,
    next: u64,
    prev: Hash,
    report: ChainReport,
    /// Segments walked, by first seq: what `audit.compacted` events are checked against.
    walked: HashMap<u64, CompactedDetails>,
}

impl<'a> Walk<'a> {
    fn new(tenant: Uuid, chain_key: &'a [u8], config: &'a AuditConfig, head: ChainHead) -> Self {
        Walk {
            tenant,
            chain_key,
            config,
            next: 1,
            prev: [0; 32],
            report: ChainReport {
                head,
                segments: 0,
                legacy_segments: 0,
                compacted_events: 0,
                events_checked: 0,
            },
            walked: HashMap::new(),
        }
    }

    /// The next stored segment (`None`: undecodable); `in_place`: stored under the key of
    /// its own first seq.
    fn segment(&mut self, in_place: bool, s: Option<&AuditSegment>) -> Result<()> {
        let Some(s) = s else {
            return Err(broken(self.next, ChainBreakKind::Undecodable));
        };
        let at = |seq, kind| {
            Error::AuditChainBroken(ChainBreak {
                seq,
                segment: s.span(),
                kind,
            })
        };
        if s.first_seq != self.next || !in_place {
            return Err(at(self.next, ChainBreakKind::Gap));
        }
        if s.last_seq < s.first_seq || s.count != s.last_seq - s.first_seq + 1 {
            return Err(at(s.first_seq, ChainBreakKind::SegmentMalformed));
        }
        if s.prev_hash != self.prev {
            return Err(at(s.first_seq, ChainBreakKind::PrevHashMismatch));
        }
        match &s.seal {
            SegmentSeal::Signed { key_id, signature } => {
                let Some(public) = self.config.verifying_key(key_id) else {
                    return Err(at(s.first_seq, ChainBreakKind::UnknownSigningKey));
                };
                let message = s
                    .signed_message(self.tenant)
                    .ok_or_else(|| at(s.first_seq, ChainBreakKind::SegmentMalformed))?;
                if !public.verify(&message, signature) {
                    return Err(at(s.first_seq, ChainBreakKind::SegmentSignature));
                }
            }
            SegmentSeal::LegacyMac { mac } => {
                if legacy_segment_mac(self.chain_key, self.tenant, s)? != *mac {
                    return Err(at(s.first_seq, ChainBreakKind::HashMismatch));
                }
                self.report.legacy_segments += 1;
            }
        }
        self.walked.insert(s.first_seq, CompactedDetails::of(s));
        self.report.segments += 1;
        self.report.compacted_events += s.count;
        self.next = s.last_seq + 1;
        self.prev = s.last_hash;
        Ok(())
    }

    /// The sealed event stored at `seq`.
    fn event(&mut self, seq: u64, value: &[u8]) -> Result<()> {
        if seq != self.next {
            return Err(broken(self.next, ChainBreakKind::Gap));
        }
        let (stored_prev, stored_hash, raw) =
            split_sealed(value).ok_or_else(|| broken(seq, ChainBreakKind::Undecodable))?;
        if stored_prev != self.prev {
            return Err(broken(seq, ChainBreakKind::PrevHashMismatch));
        }
        if event_hash(self.chain_key, self.tenant, seq, &self.prev, raw)? != stored_hash {
            return Err(broken(seq, ChainBreakKind::HashMismatch));
        }
        // Cheap filter before decoding: only compaction records are cross-checked.
        if contains(raw, COMPACTED_NEEDLE) {
            let event: AuditEvent = decode(|| format!("audit event {seq}"), raw)
                .map_err(|_| broken(seq, ChainBreakKind::Undecodable))?;
            if event.action == COMPACTED_ACTION && event.actor_id.is_none() {
                self.compaction_record(seq, &event)?;
            }
        }
        self.prev = stored_hash;
        self.next += 1;
        self.report.events_checked += 1;
        Ok(())
    }

    /// An `audit.compacted` event (its HMAC verified): the segment it records must be the
    /// one in place.
    fn compaction_record(&self, seq: u64, event: &AuditEvent) -> Result<()> {
        let recorded: CompactedDetails = serde_json::from_value(event.details.clone())
            .map_err(|_| broken(seq, ChainBreakKind::Undecodable))?;
        let span = Some((recorded.first_seq, recorded.last_seq));
        let at = |kind| {
            Error::AuditChainBroken(ChainBreak {
                seq: recorded.first_seq,
                segment: span,
                kind,
            })
        };
        let Some(walked) = self.walked.get(&recorded.first_seq) else {
            // The chain says this range was compacted, yet no segment starts there.
            return Err(at(ChainBreakKind::Gap));
        };
        if walked.merkle_root != recorded.merkle_root {
            return Err(at(ChainBreakKind::MerkleRootMismatch));
        }
        if *walked != recorded {
            return Err(at(ChainBreakKind::SegmentMalformed));
        }
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn read_head(tx: &Transaction, keys: &TenantKeys) -> Result<ChainHead> {
    match tx.get(&keys.audit_head(), false).await? {
        Some(v) => ChainHead::decode(&v),
        None => Ok(ChainHead::GENESIS),
    }
}

async fn read_segments(tx: &Transaction, keys: &TenantKeys) -> Result<Vec<AuditSegment>> {
    tx.get_range_all(&keys.audit_segments())
        .await?
        .iter()
        .map(|kv| {
            decode_segment(&kv.value).ok_or_else(|| Error::corrupt("audit segment", "undecodable"))
        })
        .collect()
}

/// Up to `limit` segments from the one starting at `from` on, each with whether it is stored
/// under its own first seq, and `None` for an undecodable one (the verifier reports where).
async fn read_segment_pairs(
    tx: &Transaction,
    keys: &TenantKeys,
    from: u64,
    limit: usize,
) -> Result<Vec<(bool, Option<AuditSegment>)>> {
    let range = RangeOption::new(keys.audit_segment(from), keys.audit_segments().end)
        .limit(limit)
        .snapshot();
    Ok(tx
        .get_range(&range)
        .await?
        .kvs
        .iter()
        .map(|kv| {
            let s = decode_segment(&kv.value);
            let in_place = s
                .as_ref()
                .is_some_and(|s| kv.key == keys.audit_segment(s.first_seq));
            (in_place, s)
        })
        .collect())
}

fn decode_sealed(seq: u64, v: &[u8]) -> Result<SealedEvent> {
    let (prev_hash, hash, event) = split_sealed(v)
        .ok_or_else(|| Error::corrupt(format!("audit event {seq}"), "bad format"))?;
    Ok(SealedEvent {
        seq,
        prev_hash,
        hash,
        event: decode(|| format!("audit event {seq}"), event)?,
    })
}

/// Hex of a hash, for logs and anchors.
#[must_use]
pub fn hash_hex(h: &Hash) -> String {
    hex(h)
}

/// A hash from hex.
#[must_use]
pub fn hash_from_hex(s: &str) -> Option<Hash> {
    unhex(s).and_then(|b| <[u8; 32]>::try_from(b).ok())
}
