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
//! - **Verify** ([`Audit::verify_chain`]) walks segments and events page by page (each page
//!   its own transaction) and reports the first [`ChainBreak`]: a changed event (hash), a
//!   removed one (gap), a reordered or replaced one (previous hash), or a head that does not
//!   match. The key is secret, so an edit cannot be hidden by recomputing the chain. Removing
//!   the newest events *and* rolling the head back together is only detectable against a head
//!   kept elsewhere: publish [`ChainReport::head`] periodically.
//! - **Compaction** ([`Audit::compact`]) replaces a verified range of events older than the
//!   tenant's retention by an [`AuditSegment`]: first/last seq, the hash before and the last
//!   hash, and a MAC of its own, so the chain still verifies across it.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use steward_store::tuple::Versionstamp;
use steward_store::{key_after, Transaction};
use uuid::Uuid;

use crate::codec::{check_len, decode, encode, hex, unhex, MAX_INLINE_VALUE};
use crate::error::{ChainBreak, ChainBreakKind, Error, Result};
use crate::keys::TenantKeys;
use crate::tenant::require_tenant;
use crate::{check_limit, Models};

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
const SEGMENT_DOMAIN: &[u8] = b"steward.audit.segment.v1\0";
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

/// A compacted range of the chain: what later compaction jobs leave in place of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSegment {
    /// First seq it covers.
    pub first_seq: u64,
    /// Last seq it covers.
    pub last_seq: u64,
    /// The hash before `first_seq` (zeros if it is 1).
    #[serde(with = "hex32")]
    pub prev_hash: Hash,
    /// The hash of `last_seq`.
    #[serde(with = "hex32")]
    pub last_hash: Hash,
    /// Time of the first event, µs.
    pub first_at: i64,
    /// Time of the last event, µs.
    pub last_at: i64,
    /// When it was compacted, µs.
    pub compacted_at: i64,
    /// MAC over the fields above (except times) under the chain key.
    #[serde(with = "hex32")]
    pub mac: Hash,
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::codec::hex(h))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        crate::codec::unhex(&s)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
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

fn segment_mac(key: &[u8], tenant: Uuid, s: &AuditSegment) -> Result<Hash> {
    use hmac::Mac;
    let mut m = new_mac(key)?;
    m.update(SEGMENT_DOMAIN);
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
    Error::AuditChainBroken(ChainBreak { seq, kind })
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

    /// Verifies the whole chain: segments (contiguous, MACs valid), then every event after
    /// them up to the head (seq gapless, previous hash, own hash), page by page.
    ///
    /// # Errors
    /// [`Error::AuditChainBroken`] with the first break found; [`Error::Corrupt`] for an
    /// undecodable head; store errors.
    pub async fn verify_chain(&self, tenant: Uuid) -> Result<ChainReport> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let key = self.key();
        let (head, segments) = self
            .m
            .db()
            .transact(|tx, _| async move {
                Ok::<_, Error>((read_head(&tx, keys).await?, read_segments(&tx, keys).await?))
            })
            .await?;
        let mut next = 1u64;
        let mut prev: Hash = [0; 32];
        let mut compacted = 0;
        for s in &segments {
            if s.first_seq != next || s.last_seq < s.first_seq {
                return Err(broken(next, ChainBreakKind::Gap));
            }
            if s.prev_hash != prev {
                return Err(broken(s.first_seq, ChainBreakKind::PrevHashMismatch));
            }
            if segment_mac(key, tenant, s)? != s.mac {
                return Err(broken(s.first_seq, ChainBreakKind::HashMismatch));
            }
            compacted += s.last_seq - s.first_seq + 1;
            next = s.last_seq + 1;
            prev = s.last_hash;
        }
        let mut checked = 0;
        while next <= head.seq {
            let from = next;
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
            if page.is_empty() {
                return Err(broken(next, ChainBreakKind::Gap));
            }
            for kv in &page {
                let seq = keys
                    .parse_audit_sealed(&kv.key)
                    .ok_or_else(|| broken(next, ChainBreakKind::Undecodable))?;
                if seq != next {
                    return Err(broken(next, ChainBreakKind::Gap));
                }
                let (stored_prev, stored_hash, event) = split_sealed(&kv.value)
                    .ok_or_else(|| broken(seq, ChainBreakKind::Undecodable))?;
                if stored_prev != prev {
                    return Err(broken(seq, ChainBreakKind::PrevHashMismatch));
                }
                if event_hash(key, tenant, seq, &prev, event)? != stored_hash {
                    return Err(broken(seq, ChainBreakKind::HashMismatch));
                }
                prev = stored_hash;
                next += 1;
                checked += 1;
            }
        }
        if prev != head.hash || next != head.seq + 1 {
            return Err(broken(head.seq, ChainBreakKind::HeadMismatch));
        }
        Ok(ChainReport {
            head,
            segments: segments.len(),
            compacted_events: compacted,
            events_checked: checked,
        })
    }

    /// Compacts the oldest sealed events, up to `through_seq` and at most
    /// [`MAX_SEGMENT_EVENTS`], into one [`AuditSegment`] after verifying them; refuses events
    /// younger than the tenant's audit retention. Call again to compact further.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`through_seq`) if nothing is left to compact there, it is not sealed
    /// yet, or an event is within the retention period; [`Error::AuditChainBroken`] if the
    /// range does not verify; [`Error::NotFound`] for the tenant; store errors.
    pub async fn compact(&self, tenant: Uuid, through_seq: u64) -> Result<AuditSegment> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let key = self.key();
        let now = self.m.now();
        // The segments earlier attempts wrote. After `commit_unknown_result` the retry finds
        // its own segment stored (and would compact the next range, or refuse). Its timestamp
        // alone does not tell it apart: an earlier call at the same `now` leaves one too.
        let tried: Mutex<Vec<AuditSegment>> = Mutex::new(Vec::new());
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let t = require_tenant(&tx, keys, tenant).await?;
                let head = read_head(&tx, keys).await?;
                let segments = read_segments(&tx, keys).await?;
                if maybe_committed.0 {
                    let tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(s) = segments.iter().find(|s| tried.contains(s)) {
                        return Ok(s.clone());
                    }
                }
                let (first, mut prev) = segments
                    .last()
                    .map_or((1, [0u8; 32]), |s| (s.last_seq + 1, s.last_hash));
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
                let last = through_seq.min(first + MAX_SEGMENT_EVENTS - 1);
                let retention = i64::from(t.limits.audit_retention_days) * 86_400_000_000;
                let kvs = tx
                    .get_range_all(&keys.audit_sealed_range(first, last))
                    .await?;
                let mut expected = first;
                let (mut first_at, mut last_at) = (None, 0);
                for kv in &kvs {
                    let seq = keys.parse_audit_sealed(&kv.key);
                    if seq != Some(expected) {
                        return Err(broken(expected, ChainBreakKind::Gap));
                    }
                    let (p, h, bytes) = split_sealed(&kv.value)
                        .ok_or_else(|| broken(expected, ChainBreakKind::Undecodable))?;
                    if p != prev {
                        return Err(broken(expected, ChainBreakKind::PrevHashMismatch));
                    }
                    if event_hash(key, tenant, expected, &prev, bytes)? != h {
                        return Err(broken(expected, ChainBreakKind::HashMismatch));
                    }
                    let event: AuditEvent = decode(|| format!("audit event {expected}"), bytes)?;
                    if now.saturating_sub(event.at) < retention {
                        return Err(Error::invalid(
                            "through_seq",
                            format!(
                                "event {expected} is younger than the tenant's audit retention \
                                 of {} days",
                                t.limits.audit_retention_days
                            ),
                        ));
                    }
                    first_at.get_or_insert(event.at);
                    last_at = event.at;
                    tx.clear(&keys.audit_event_id(event.id));
                    prev = h;
                    expected += 1;
                }
                if expected != last + 1 {
                    return Err(broken(expected, ChainBreakKind::Gap));
                }
                let mut segment = AuditSegment {
                    first_seq: first,
                    last_seq: last,
                    prev_hash: segments.last().map_or([0u8; 32], |s| s.last_hash),
                    last_hash: prev,
                    first_at: first_at.unwrap_or(last_at),
                    last_at,
                    compacted_at: now,
                    mac: [0; 32],
                };
                segment.mac = segment_mac(key, tenant, &segment)?;
                let r = keys.audit_sealed_range(first, last);
                tx.clear_range(&r.begin, &r.end);
                tx.set(
                    &keys.audit_segment(first),
                    &encode("audit_segment", &segment, MAX_INLINE_VALUE)?,
                );
                tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(segment.clone());
                Ok(segment)
            })
            .await
    }
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
        .map(|kv| decode(|| "audit segment".into(), &kv.value))
        .collect()
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
