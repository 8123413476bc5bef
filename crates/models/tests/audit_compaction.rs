//! `compact_audit_log` on the records side: sealed events older than the tenant's retention
//! become signed segments (RFC 6962 Merkle root, Ed25519), an `audit.compacted` event records
//! each, and the verifier proves the whole history, naming where and how it is broken: edited,
//! deleted or reordered events, forged segments (bad or unknown-key signatures, altered roots),
//! broken links. Plus the Merkle roots against a recursive reference, key rotation, the
//! schema-1 migration with legacy segments, and retries after `commit_unknown_result`.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use steward_models::{
    hash_hex, merkle_root, AuditSegment, AuditSigningKey, ChainBreakKind, ChainReport, Error, Hash,
    Models, ModelsConfig, NewAuditEvent, SealedEvent, SecretKey, SegmentSeal, COMPACTED_ACTION,
    EMPTY_ROOT, SCHEMA_VERSION,
};
use steward_store::tuple::pack;
use steward_store::Database;
use support::{Backend, Env};
use uuid::Uuid;

// ---- helpers ----

fn sealed_key(tenant: Uuid, seq: u64) -> Vec<u8> {
    pack(&("t", tenant, "audit", "ev", seq))
}

fn segment_key(tenant: Uuid, first_seq: u64) -> Vec<u8> {
    pack(&("t", tenant, "audit", "seg", first_seq))
}

async fn raw_get(db: &Database, key: &[u8]) -> Option<Vec<u8>> {
    let tx = db.create_transaction().unwrap();
    tx.get(key, false).await.unwrap()
}

async fn raw_set(db: &Database, key: &[u8], value: Option<&[u8]>) {
    let (key, value) = (key.to_vec(), value.map(<[u8]>::to_vec));
    db.run(|tx, _| {
        let (key, value) = (key.clone(), value.clone());
        async move {
            match value {
                Some(v) => tx.set(&key, &v),
                None => tx.clear(&key),
            }
            Ok(())
        }
    })
    .await
    .unwrap();
}

async fn segment_json(env: &Env, t: Uuid, first_seq: u64) -> Value {
    serde_json::from_slice(&raw_get(&env.raw, &segment_key(t, first_seq)).await.unwrap()).unwrap()
}

async fn put_segment_json(env: &Env, t: Uuid, first_seq: u64, v: &Value) {
    raw_set(
        &env.raw,
        &segment_key(t, first_seq),
        Some(&serde_json::to_vec(v).unwrap()),
    )
    .await;
}

/// Writes `segment`'s signed fields into its stored JSON (what an attacker who can sign
/// would store).
async fn store_signed(env: &Env, t: Uuid, segment: &AuditSegment) {
    let mut v = segment_json(env, t, segment.first_seq).await;
    let SegmentSeal::Signed { key_id, signature } = &segment.seal else {
        panic!("not signed")
    };
    v["key_id"] = json!(key_id);
    v["signature"] = json!(hex(signature));
    v["merkle_root"] = json!(hash_hex(&segment.merkle_root.unwrap()));
    v["prev_hash"] = json!(hash_hex(&segment.prev_hash));
    v["count"] = json!(segment.count);
    put_segment_json(env, t, segment.first_seq, &v).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn break_of(r: Result<ChainReport, Error>) -> (u64, Option<(u64, u64)>, ChainBreakKind) {
    match r {
        Err(Error::AuditChainBroken(b)) => (b.seq, b.segment, b.kind),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

async fn retention_days(env: &Env, t: Uuid) -> u64 {
    let tenant = env.models.tenants().get(t).await.unwrap().unwrap();
    u64::from(tenant.limits.audit_retention_days)
}

async fn append_n(env: &Env, t: Uuid, from: usize, n: usize) {
    for i in from..from + n {
        env.models
            .audit()
            .append(t, NewAuditEvent::new(format!("event.{i}")))
            .await
            .unwrap();
    }
    env.models.audit().seal_all(t).await.unwrap();
}

/// A tenant with `old` events older than its retention, then `young` recent ones, all sealed.
async fn aged_chain(env: &Env, old: usize, young: usize) -> Uuid {
    let t = env.tenant("acme").await.id;
    append_n(env, t, 1, old).await;
    env.advance(Duration::from_secs(
        retention_days(env, t).await * 86_400 + 3_600,
    ));
    append_n(env, t, old + 1, young).await;
    t
}

fn compacted_events(events: &[SealedEvent]) -> Vec<&SealedEvent> {
    events
        .iter()
        .filter(|e| e.event.action == COMPACTED_ACTION)
        .collect()
}

// ---- RFC 6962 Merkle roots ----

/// RFC 6962 §2.1, written as the definition reads (recursion, split at the largest power of
/// two smaller than n), independent of the crate's iterative builder.
fn reference_mth(leaves: &[Vec<u8>]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(&leaves[0]);
            h.finalize().into()
        }
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(reference_mth(&leaves[..k]));
            h.update(reference_mth(&leaves[k..]));
            h.finalize().into()
        }
    }
}

#[test]
fn merkle_roots_match_the_recursive_definition_for_sizes_0_to_64() {
    let leaves: Vec<Vec<u8>> = (0u32..64)
        .map(|i| Sha256::digest(i.to_be_bytes()).to_vec())
        .collect();
    for n in 0..=64 {
        assert_eq!(
            merkle_root(&leaves[..n]),
            reference_mth(&leaves[..n]),
            "n = {n}"
        );
    }
    // Order matters, and so does every leaf.
    let mut swapped = leaves[..5].to_vec();
    swapped.swap(1, 2);
    assert_ne!(merkle_root(&swapped), merkle_root(&leaves[..5]));
}

#[test]
fn rfc6962_known_answers() {
    // The empty tree: SHA-256 of the empty string.
    assert_eq!(
        hash_hex(&EMPTY_ROOT),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // The leaf of empty data: SHA-256(0x00), as in the RFC 6962 test vectors.
    assert_eq!(
        hash_hex(&merkle_root(&[b""])),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
}

// ---- compaction ----

async fn compact_expired_signs_segments_and_the_history_verifies(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let audit = env.models.audit();
    let t = aged_chain(&env, 12, 3).await;
    let before = audit.events(t, 1, 100).await.unwrap();
    let head = audit.head(t).await.unwrap();

    let run = audit.compact_expired(t, 10).await.unwrap();
    assert_eq!((run.segments.len(), run.events, run.more), (1, 12, false));
    let seg = &run.segments[0];
    assert_eq!((seg.first_seq, seg.last_seq, seg.count), (1, 12, 12));
    assert_eq!(seg.prev_hash, [0; 32]);
    assert_eq!(seg.last_hash, before[11].hash);
    let hashes: Vec<Hash> = before[..12].iter().map(|e| e.hash).collect();
    assert_eq!(seg.merkle_root, Some(merkle_root(&hashes)));
    assert_eq!(
        (seg.first_at, seg.last_at),
        (before[0].event.at, before[11].event.at)
    );
    let signer = env.models.config().audit.signing_key.clone().unwrap();
    assert_eq!(seg.key_id(), Some(signer.id()));
    assert!(seg.verify_signature(t, &signer.verifying_key()));
    assert!(!seg.verify_signature(Uuid::from_u128(1), &signer.verifying_key()));
    // The archive of the compacted events proves against the segment.
    audit.verify_segment_events(t, seg, &before[..12]).unwrap();
    assert_eq!(audit.segments(t).await.unwrap(), run.segments);

    // The young events stay; the compacted ones are gone (lookups included).
    let left: Vec<u64> = audit
        .events(t, 1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![13, 14, 15]);
    assert_eq!(audit.lookup(t, before[0].event.id).await.unwrap(), None);
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!(
        (
            report.segments,
            report.compacted_events,
            report.events_checked
        ),
        (1, 12, 3)
    );
    assert_eq!((report.head, report.legacy_segments), (head, 0));

    // One `audit.compacted` record, chained by the next seal and checked by the verifier.
    let pending = audit.pending(t, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].action, COMPACTED_ACTION);
    assert_eq!(pending[0].details["first_seq"], json!(1));
    assert_eq!(pending[0].details["last_seq"], json!(12));
    assert_eq!(pending[0].details["count"], json!(12));
    assert_eq!(
        pending[0].details["merkle_root"],
        json!(hash_hex(&seg.merkle_root.unwrap()))
    );
    audit.seal_all(t).await.unwrap();
    assert_eq!(audit.verify_chain(t).await.unwrap().events_checked, 4);

    // Idempotent: nothing is old enough any more.
    let again = audit.compact_expired(t, 10).await.unwrap();
    assert_eq!((again.segments.len(), again.more), (0, false));
    assert!(audit.pending(t, 10).await.unwrap().is_empty());

    // Later, the rest ages out (the compaction record too) and joins a second segment.
    env.advance(Duration::from_secs(
        retention_days(&env, t).await * 86_400 + 3_600,
    ));
    let run = audit.compact_expired(t, 10).await.unwrap();
    assert_eq!(run.segments.len(), 1);
    let seg2 = &run.segments[0];
    assert_eq!((seg2.first_seq, seg2.last_seq), (13, 16));
    assert_eq!(seg2.prev_hash, seg.last_hash);
    audit.seal_all(t).await.unwrap();
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!(
        (
            report.segments,
            report.compacted_events,
            report.events_checked
        ),
        (2, 16, 1)
    );
    // Exactly one record per segment in the whole history, retries included.
    let records = compacted_events(&audit.events(t, 1, 100).await.unwrap()).len();
    assert_eq!(records, 1);
}

async fn compaction_is_bounded_and_resumes(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let audit = env.models.audit();
    let t = aged_chain(&env, 9, 2).await;
    // A first segment by hand, then the job's segments continue after it, one per call.
    let first = audit.compact(t, 4).await.unwrap();
    assert_eq!((first.first_seq, first.last_seq), (1, 4));
    let run = audit.compact_expired(t, 1).await.unwrap();
    assert_eq!((run.segments.len(), run.more), (1, true));
    assert_eq!(
        (run.segments[0].first_seq, run.segments[0].last_seq),
        (5, 9)
    );
    assert_eq!(run.segments[0].prev_hash, first.last_hash);
    let run = audit.compact_expired(t, 1).await.unwrap();
    assert_eq!((run.segments.len(), run.more), (0, false));
    assert!(matches!(
        audit.compact_expired(t, 0).await,
        Err(Error::Invalid {
            field: "max_segments",
            ..
        })
    ));
    audit.seal_all(t).await.unwrap();
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!((report.segments, report.events_checked), (2, 4));
}

backend_tests!(
    compact_expired_signs_segments_and_the_history_verifies,
    compaction_is_bounded_and_resumes,
);

#[tokio::test]
async fn compaction_without_a_signing_key_is_refused_naming_the_setting() {
    let mut config = ModelsConfig::for_tests();
    config.audit.signing_key = None;
    let env = Env::with_config(Backend::Memory, "no_signing_key", config).await;
    let t = aged_chain(&env, 2, 0).await;
    assert!(matches!(
        env.models.audit().compact_expired(t, 1).await,
        Err(Error::Invalid {
            field: "audit.signing_key_file",
            ..
        })
    ));
    assert_eq!(env.models.audit().events(t, 1, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_compaction_record_action_is_reserved() {
    let env = Env::new(Backend::Memory, "reserved").await;
    let t = env.tenant("acme").await.id;
    assert!(matches!(
        env.models
            .audit()
            .append(t, NewAuditEvent::new(COMPACTED_ACTION))
            .await,
        Err(Error::Invalid {
            field: "action",
            ..
        })
    ));
}

// ---- the verifier names the place and the kind ----

/// Two segments (1..=4 and 5..=8, records sealed as 11 and 12) and events 9..=12 left.
async fn two_segments(env: &Env) -> Uuid {
    let t = aged_chain(env, 8, 2).await;
    let audit = env.models.audit();
    audit.compact(t, 4).await.unwrap();
    audit.compact(t, 8).await.unwrap();
    audit.seal_all(t).await.unwrap();
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!((report.segments, report.events_checked), (2, 4));
    t
}

#[tokio::test]
async fn an_edited_event_after_the_segments_is_found() {
    let env = Env::new(Backend::Memory, "edited").await;
    let t = two_segments(&env).await;
    let key = sealed_key(t, 10);
    let original = raw_get(&env.raw, &key).await.unwrap();
    let text = String::from_utf8_lossy(&original[65..]).replace("event.10", "event.X!");
    let mut edited = original[..65].to_vec();
    edited.extend_from_slice(text.as_bytes());
    raw_set(&env.raw, &key, Some(&edited)).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (10, None, ChainBreakKind::HashMismatch)
    );
}

#[tokio::test]
async fn a_deleted_event_after_the_segments_is_found() {
    let env = Env::new(Backend::Memory, "deleted").await;
    let t = two_segments(&env).await;
    raw_set(&env.raw, &sealed_key(t, 9), None).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (9, None, ChainBreakKind::Gap)
    );
}

#[tokio::test]
async fn reordered_events_after_the_segments_are_found() {
    let env = Env::new(Backend::Memory, "reordered").await;
    let t = two_segments(&env).await;
    let (k1, k2) = (sealed_key(t, 10), sealed_key(t, 11));
    let (v1, v2) = (
        raw_get(&env.raw, &k1).await.unwrap(),
        raw_get(&env.raw, &k2).await.unwrap(),
    );
    raw_set(&env.raw, &k1, Some(&v2)).await;
    raw_set(&env.raw, &k2, Some(&v1)).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (10, None, ChainBreakKind::PrevHashMismatch)
    );
}

#[tokio::test]
async fn a_segment_with_an_altered_root_fails_its_signature() {
    let env = Env::new(Backend::Memory, "altered_root").await;
    let t = two_segments(&env).await;
    let mut v = segment_json(&env, t, 5).await;
    v["merkle_root"] = json!(hash_hex(&[7u8; 32]));
    put_segment_json(&env, t, 5, &v).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (5, Some((5, 8)), ChainBreakKind::SegmentSignature)
    );
}

#[tokio::test]
async fn a_segment_with_a_forged_signature_fails() {
    let env = Env::new(Backend::Memory, "forged_sig").await;
    let t = two_segments(&env).await;
    let mut v = segment_json(&env, t, 1).await;
    let mut sig = v["signature"].as_str().unwrap().to_owned();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    sig.replace_range(127.., flipped);
    v["signature"] = json!(sig);
    put_segment_json(&env, t, 1, &v).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (1, Some((1, 4)), ChainBreakKind::SegmentSignature)
    );
}

#[tokio::test]
async fn a_segment_resigned_with_an_unknown_key_is_refused() {
    let env = Env::new(Backend::Memory, "unknown_key").await;
    let t = two_segments(&env).await;
    let audit = env.models.audit();
    let attacker = AuditSigningKey::from_seed(&[66u8; 32]);
    let mut seg = audit.segments(t).await.unwrap()[1].clone();
    seg.merkle_root = Some([9u8; 32]);
    // Under its own key id: unknown.
    seg.sign(t, &attacker).unwrap();
    store_signed(&env, t, &seg).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (5, Some((5, 8)), ChainBreakKind::UnknownSigningKey)
    );
    // Claiming the real key's id: the signature does not verify.
    let real = env.models.config().audit.signing_key.clone().unwrap();
    let mut v = segment_json(&env, t, 5).await;
    v["key_id"] = json!(real.id());
    put_segment_json(&env, t, 5, &v).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (5, Some((5, 8)), ChainBreakKind::SegmentSignature)
    );
}

#[tokio::test]
async fn a_root_altered_and_resigned_with_the_real_key_contradicts_the_chain() {
    // Even with the signing key (stolen), a segment cannot be rewritten unnoticed while its
    // `audit.compacted` record is in the HMAC chain.
    let env = Env::new(Backend::Memory, "resigned_real").await;
    let t = two_segments(&env).await;
    let audit = env.models.audit();
    let real = env.models.config().audit.signing_key.clone().unwrap();
    let mut seg = audit.segments(t).await.unwrap()[0].clone();
    seg.merkle_root = Some([9u8; 32]);
    seg.sign(t, &real).unwrap();
    store_signed(&env, t, &seg).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (1, Some((1, 4)), ChainBreakKind::MerkleRootMismatch)
    );
}

#[tokio::test]
async fn a_broken_link_between_segments_is_found() {
    let env = Env::new(Backend::Memory, "broken_link").await;
    let t = two_segments(&env).await;
    let audit = env.models.audit();
    let real = env.models.config().audit.signing_key.clone().unwrap();
    let mut seg = audit.segments(t).await.unwrap()[1].clone();
    seg.prev_hash = [1u8; 32];
    seg.sign(t, &real).unwrap();
    store_signed(&env, t, &seg).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (5, Some((5, 8)), ChainBreakKind::PrevHashMismatch)
    );
}

#[tokio::test]
async fn a_deleted_or_moved_segment_is_found() {
    let env = Env::new(Backend::Memory, "deleted_segment").await;
    let t = two_segments(&env).await;
    let audit = env.models.audit();
    let second = raw_get(&env.raw, &segment_key(t, 5)).await.unwrap();
    raw_set(&env.raw, &segment_key(t, 5), None).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (5, None, ChainBreakKind::Gap)
    );
    // Stored under another key (moved): out of place.
    raw_set(&env.raw, &segment_key(t, 6), Some(&second)).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (5, Some((5, 8)), ChainBreakKind::Gap)
    );
    raw_set(&env.raw, &segment_key(t, 6), None).await;
    raw_set(&env.raw, &segment_key(t, 5), Some(&second)).await;
    audit.verify_chain(t).await.unwrap();
    // The first one gone: the history does not start at 1.
    raw_set(&env.raw, &segment_key(t, 1), None).await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (1, Some((5, 8)), ChainBreakKind::Gap)
    );
}

#[tokio::test]
async fn an_archive_is_checked_against_its_segment() {
    let env = Env::new(Backend::Memory, "archive").await;
    let t = aged_chain(&env, 6, 0).await;
    let audit = env.models.audit();
    let archive = audit.events(t, 1, 10).await.unwrap();
    let seg = audit.compact(t, 6).await.unwrap();
    audit.verify_segment_events(t, &seg, &archive).unwrap();
    let kind = |r: Result<(), Error>| match r {
        Err(Error::AuditChainBroken(b)) => (b.seq, b.kind),
        other => panic!("{other:?}"),
    };
    let mut edited = archive.clone();
    edited[2].event.action = "event.forged".into();
    assert_eq!(
        kind(audit.verify_segment_events(t, &seg, &edited)),
        (3, ChainBreakKind::HashMismatch)
    );
    let mut missing = archive.clone();
    missing.remove(3);
    assert_eq!(
        kind(audit.verify_segment_events(t, &seg, &missing)),
        (4, ChainBreakKind::Gap)
    );
    let mut other_root = seg.clone();
    other_root.merkle_root = Some([3u8; 32]);
    assert_eq!(
        kind(audit.verify_segment_events(t, &other_root, &archive)),
        (1, ChainBreakKind::MerkleRootMismatch)
    );
}

#[tokio::test]
async fn rotated_keys_keep_old_segments_verifiable() {
    let old = AuditSigningKey::from_seed(&[11u8; 32]);
    let new = AuditSigningKey::from_seed(&[12u8; 32])
        .with_id("2026-q4")
        .unwrap();
    let mut config = ModelsConfig::for_tests();
    config.audit.signing_key = Some(old.clone());
    let env = Env::with_config(Backend::Memory, "rotation", config.clone()).await;
    let t = aged_chain(&env, 4, 0).await;
    let first = env.models.audit().compact(t, 2).await.unwrap();
    assert_eq!(first.key_id(), Some(old.id()));

    // Rotate: sign with the new key, keep the old public key.
    let mut rotated = config.clone();
    rotated.id_seed = Some(99);
    rotated.audit.signing_key = Some(new.clone());
    rotated.audit.verifying_keys = vec![old.verifying_key()];
    let m = Models::open(env.db.clone(), rotated.clone()).await.unwrap();
    let second = m.audit().compact(t, 4).await.unwrap();
    assert_eq!(second.key_id(), Some("2026-q4"));
    m.audit().seal_all(t).await.unwrap();
    assert_eq!(m.audit().verify_chain(t).await.unwrap().segments, 2);

    // A reader with public keys only (the API in production) verifies the whole history.
    let mut public_only = rotated.clone();
    public_only.audit.signing_key = None;
    public_only.audit.verifying_keys = vec![old.verifying_key(), new.verifying_key()];
    let m = Models::open(env.db.clone(), public_only).await.unwrap();
    assert_eq!(m.audit().verify_chain(t).await.unwrap().segments, 2);

    // Forget the old public key and its segments no longer verify.
    let mut forgetful = rotated;
    forgetful.audit.verifying_keys.clear();
    let m = Models::open(env.db.clone(), forgetful).await.unwrap();
    assert_eq!(
        break_of(m.audit().verify_chain(t).await),
        (1, Some((1, 2)), ChainBreakKind::UnknownSigningKey)
    );
}

// ---- schema 1 stores and their MAC-sealed segments ----

fn legacy_mac(
    key: &[u8],
    tenant: Uuid,
    first: u64,
    last: u64,
    prev: &Hash,
    last_hash: &Hash,
) -> Hash {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(b"steward.audit.segment.v1\0");
    m.update(tenant.as_bytes());
    m.update(&first.to_be_bytes());
    m.update(&last.to_be_bytes());
    m.update(prev);
    m.update(last_hash);
    m.finalize().into_bytes().into()
}

#[tokio::test]
async fn a_schema_1_store_migrates_and_its_legacy_segments_still_verify() {
    let chain_key = [7u8; 32];
    let mut config = ModelsConfig::for_tests();
    config.audit.chain_key = SecretKey::new(chain_key);
    let env = Env::with_config(Backend::Memory, "legacy", config.clone()).await;
    let t = aged_chain(&env, 5, 0).await;
    let events = env.models.audit().events(t, 1, 10).await.unwrap();

    // What a version-1 binary left: events 1..=3 compacted into a MAC-sealed segment.
    let mac = legacy_mac(&chain_key, t, 1, 3, &[0; 32], &events[2].hash);
    let legacy = json!({
        "first_seq": 1, "last_seq": 3,
        "prev_hash": hash_hex(&[0; 32]), "last_hash": hash_hex(&events[2].hash),
        "first_at": events[0].event.at, "last_at": events[2].event.at,
        "compacted_at": events[2].event.at, "mac": hash_hex(&mac),
    });
    for seq in 1..=3 {
        raw_set(&env.raw, &sealed_key(t, seq), None).await;
    }
    put_segment_json(&env, t, 1, &legacy).await;
    raw_set(&env.raw, &pack(&("meta", "schema")), Some(b"1")).await;

    let m = Models::open(env.db.clone(), config).await.unwrap();
    assert_eq!(
        raw_get(&env.raw, &pack(&("meta", "schema"))).await,
        Some(SCHEMA_VERSION.to_string().into_bytes())
    );
    let report = m.audit().verify_chain(t).await.unwrap();
    assert_eq!(
        (
            report.segments,
            report.legacy_segments,
            report.events_checked
        ),
        (1, 1, 2)
    );
    let segs = m.audit().segments(t).await.unwrap();
    assert!(matches!(segs[0].seal, SegmentSeal::LegacyMac { .. }));
    assert_eq!((segs[0].count, segs[0].merkle_root), (3, None));

    // Compaction goes on after it with signed segments.
    let run = m.audit().compact_expired(t, 5).await.unwrap();
    assert_eq!(
        (run.segments[0].first_seq, run.segments[0].prev_hash),
        (4, events[2].hash)
    );
    m.audit().seal_all(t).await.unwrap();
    let report = m.audit().verify_chain(t).await.unwrap();
    assert_eq!((report.segments, report.legacy_segments), (2, 1));

    // Its MAC still binds it.
    let mut v = legacy.clone();
    v["last_seq"] = json!(2);
    put_segment_json(&env, t, 1, &v).await;
    let (_, segment, kind) = break_of(m.audit().verify_chain(t).await);
    assert_eq!(
        (segment, kind),
        (Some((1, 2)), ChainBreakKind::HashMismatch)
    );
    // A segment of an unknown format is reported, not skipped.
    v["v"] = json!(9);
    put_segment_json(&env, t, 1, &v).await;
    assert_eq!(
        break_of(m.audit().verify_chain(t).await),
        (1, None, ChainBreakKind::Undecodable)
    );
}

// ---- retries ----

#[tokio::test]
async fn compaction_under_injected_faults_writes_each_segment_and_record_once() {
    for round in 0..4 {
        let env = Env::new(Backend::MemoryFaults, &format!("faults_{round}")).await;
        let audit = env.models.audit();
        let t = aged_chain(&env, 30, 1).await;
        for first in [5, 11, 20] {
            audit.compact(t, first).await.unwrap();
        }
        let run = audit.compact_expired(t, 10).await.unwrap();
        assert_eq!(run.events, 10, "round {round}");
        audit.seal_all(t).await.unwrap();
        let report = audit.verify_chain(t).await.unwrap();
        assert_eq!((report.segments, report.compacted_events), (4, 30));
        let events = audit.events(t, 1, 100).await.unwrap();
        assert_eq!(compacted_events(&events).len(), 4, "round {round}");
        let (seg, ev) = (
            pack(&("t", t, "audit", "seg")),
            pack(&("t", t, "audit", "ev")),
        );
        let all = env
            .all_pairs()
            .await
            .into_iter()
            .filter(|kv| kv.key.starts_with(&seg) || kv.key.starts_with(&ev))
            .count();
        assert_eq!(all, 4 + 1 + 4, "4 segments, 1 young event, 4 records");
    }
}
