//! The audit log: versionstamped appends sealed into a gapless HMAC chain; the verifier finds a
//! changed, removed or reordered event; compaction segments keep the chain verifiable.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::time::Duration;

use serde_json::json;
use steward_models::{
    AuditLookup, ChainBreakKind, Error, Models, ModelsConfig, NewAuditEvent, SecretKey,
};
use steward_store::tuple::pack;
use steward_store::Database;
use support::{Backend, Env};
use uuid::Uuid;

fn sealed_key(tenant: Uuid, seq: u64) -> Vec<u8> {
    pack(&("t", tenant, "audit", "ev", seq))
}

async fn raw_get(db: &Database, key: &[u8]) -> Vec<u8> {
    let tx = db.create_transaction().unwrap();
    tx.get(key, false).await.unwrap().expect("key present")
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

/// A tenant with `n` sealed events (`event 1` ... `event n`).
async fn chain_of(env: &Env, n: usize) -> Uuid {
    let t = env.tenant("acme").await.id;
    for i in 1..=n {
        env.models
            .audit()
            .append(t, NewAuditEvent::new(format!("event.{i}")))
            .await
            .unwrap();
    }
    env.models.audit().seal_all(t).await.unwrap();
    t
}

fn break_of(r: Result<steward_models::ChainReport, Error>) -> (u64, ChainBreakKind) {
    match r {
        Err(Error::AuditChainBroken(b)) => (b.seq, b.kind),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

async fn appends_seal_into_a_gapless_chain_that_verifies(backend: Backend, name: &str) {
    let mut config = ModelsConfig::for_tests();
    config.audit.seal_batch = 4;
    let env = Env::with_config(backend, name, config).await;
    let audit = env.models.audit();
    let t = env.tenant("acme").await.id;
    let actor = Uuid::from_u128(5);
    let first = audit
        .append(
            t,
            NewAuditEvent {
                actor_id: Some(actor),
                target: Some("user/1".into()),
                details: json!({"ip": "203.0.113.7"}),
                ..NewAuditEvent::new("user.login")
            },
        )
        .await
        .unwrap();
    // Concurrent appenders: no conflicts to lose, every event lands once.
    let tasks: Vec<_> = (0..3)
        .map(|w| {
            let m = env.models.clone();
            tokio::spawn(async move {
                for i in 0..3 {
                    m.audit()
                        .append(t, NewAuditEvent::new(format!("w{w}.e{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(audit.pending(t, 100).await.unwrap().len(), 10);
    assert_eq!(
        audit.lookup(t, first.id).await.unwrap(),
        Some(AuditLookup::Pending(first.clone()))
    );
    assert_eq!(audit.head(t).await.unwrap().seq, 0);

    // A batch of 4 per seal.
    let one = audit.seal(t).await.unwrap();
    assert_eq!((one.sealed, one.head.seq), (4, 4));
    let rest = audit.seal_all(t).await.unwrap();
    assert_eq!((rest.sealed, rest.head.seq), (6, 10));
    assert!(audit.pending(t, 100).await.unwrap().is_empty());

    let events = audit.events(t, 1, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(events[0].event, first);
    assert_eq!(events[0].prev_hash, [0; 32]);
    for pair in events.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert_eq!(events[9].hash, rest.head.hash);
    // Each writer's events keep their order in the chain (commit order).
    for w in 0..3 {
        let mine: Vec<String> = events
            .iter()
            .map(|e| e.event.action.clone())
            .filter(|a| a.starts_with(&format!("w{w}.")))
            .collect();
        assert_eq!(
            mine,
            vec![format!("w{w}.e0"), format!("w{w}.e1"), format!("w{w}.e2")]
        );
    }
    match audit.lookup(t, first.id).await.unwrap() {
        Some(AuditLookup::Sealed(e)) => assert_eq!(e.seq, 1),
        other => panic!("{other:?}"),
    }
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!((report.events_checked, report.head.seq), (10, 10));

    // Later appends extend the same chain.
    audit.append(t, NewAuditEvent::new("later")).await.unwrap();
    assert_eq!(audit.seal_all(t).await.unwrap().head.seq, 11);
    assert_eq!(audit.verify_chain(t).await.unwrap().events_checked, 11);
}

async fn the_verifier_finds_a_changed_event(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let t = chain_of(&env, 6).await;
    env.models.audit().verify_chain(t).await.unwrap();
    let key = sealed_key(t, 3);
    let original = raw_get(&env.raw, &key).await;
    let text = String::from_utf8_lossy(&original[65..]).replace("event.3", "event.X");
    let mut edited = original[..65].to_vec();
    edited.extend_from_slice(text.as_bytes());
    raw_set(&env.raw, &key, Some(&edited)).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (3, ChainBreakKind::HashMismatch)
    );
    // Put back, it verifies again: the verifier judged the content, nothing else.
    raw_set(&env.raw, &key, Some(&original)).await;
    env.models.audit().verify_chain(t).await.unwrap();
}

async fn the_verifier_finds_a_removed_event(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let t = chain_of(&env, 6).await;
    raw_set(&env.raw, &sealed_key(t, 4), None).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (4, ChainBreakKind::Gap)
    );
}

async fn the_verifier_finds_a_removed_last_event(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let t = chain_of(&env, 6).await;
    raw_set(&env.raw, &sealed_key(t, 6), None).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (6, ChainBreakKind::Gap)
    );
}

async fn the_verifier_finds_reordered_events(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let t = chain_of(&env, 6).await;
    let (k2, k3) = (sealed_key(t, 2), sealed_key(t, 3));
    let (v2, v3) = (raw_get(&env.raw, &k2).await, raw_get(&env.raw, &k3).await);
    raw_set(&env.raw, &k2, Some(&v3)).await;
    raw_set(&env.raw, &k3, Some(&v2)).await;
    assert_eq!(
        break_of(env.models.audit().verify_chain(t).await),
        (2, ChainBreakKind::PrevHashMismatch)
    );
}

#[tokio::test]
async fn a_chain_recomputed_without_the_key_does_not_verify() {
    let env = Env::new(Backend::Memory, "recomputed").await;
    let t = chain_of(&env, 3).await;
    // The same store read with another chain key: nothing verifies, so an attacker without
    // the key cannot rewrite the chain consistently.
    let mut other = ModelsConfig::for_tests();
    other.audit.chain_key = SecretKey::new([9u8; 32]);
    let m2 = Models::open(env.db.clone(), other).await.unwrap();
    assert_eq!(
        break_of(m2.audit().verify_chain(t).await),
        (1, ChainBreakKind::HashMismatch)
    );
}

#[tokio::test]
async fn a_too_large_event_is_refused_naming_the_field() {
    let env = Env::new(Backend::Memory, "too_large").await;
    let t = env.tenant("acme").await.id;
    let big = NewAuditEvent {
        details: json!({"blob": "x".repeat(steward_models::MAX_AUDIT_EVENT_BYTES)}),
        ..NewAuditEvent::new("file.upload")
    };
    assert!(matches!(
        env.models.audit().append(t, big).await,
        Err(Error::Invalid {
            field: "audit_event",
            ..
        })
    ));
    assert!(matches!(
        env.models.audit().append(t, NewAuditEvent::new("")).await,
        Err(Error::Invalid {
            field: "action",
            ..
        })
    ));
    assert!(env.models.audit().pending(t, 10).await.unwrap().is_empty());
}

async fn compaction_replaces_old_events_and_the_chain_still_verifies(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let audit = env.models.audit();
    let t = chain_of(&env, 5).await;
    let head = audit.head(t).await.unwrap();
    let retention = env
        .models
        .tenants()
        .get(t)
        .await
        .unwrap()
        .unwrap()
        .limits
        .audit_retention_days;
    // Within the retention: refused.
    assert!(matches!(
        audit.compact(t, 3).await,
        Err(Error::Invalid {
            field: "through_seq",
            ..
        })
    ));
    env.advance(Duration::from_secs(u64::from(retention) * 86_400 + 1));
    let seg = audit.compact(t, 3).await.unwrap();
    assert_eq!((seg.first_seq, seg.last_seq), (1, 3));
    assert_eq!(seg.prev_hash, [0; 32]);
    assert_eq!(
        audit
            .events(t, 1, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!(
        (
            report.segments,
            report.compacted_events,
            report.events_checked
        ),
        (1, 3, 2)
    );
    assert_eq!(report.head, head);
    assert!(matches!(
        audit.compact(t, 2).await,
        Err(Error::Invalid {
            field: "through_seq",
            ..
        })
    ));
    assert!(matches!(
        audit.compact(t, 9).await,
        Err(Error::Invalid {
            field: "through_seq",
            ..
        })
    ));
    let seg2 = audit.compact(t, 5).await.unwrap();
    assert_eq!((seg2.first_seq, seg2.prev_hash), (4, seg.last_hash));
    assert_eq!(seg2.last_hash, head.hash);
    let report = audit.verify_chain(t).await.unwrap();
    assert_eq!((report.segments, report.events_checked), (2, 0));
    // New events chain on after the segments: the two `audit.compacted` records, then ours.
    audit.append(t, NewAuditEvent::new("after")).await.unwrap();
    audit.seal_all(t).await.unwrap();
    let after = audit.events(t, 6, 10).await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|e| e.event.action.as_str())
            .collect::<Vec<_>>(),
        vec!["audit.compacted", "audit.compacted", "after"]
    );
    assert_eq!(audit.verify_chain(t).await.unwrap().events_checked, 3);

    // A forged segment (its range shortened) is caught: its count no longer matches.
    let key = pack(&("t", t, "audit", "seg", 1u64));
    let v = raw_get(&env.raw, &key).await;
    let mut seg_json: serde_json::Value = serde_json::from_slice(&v).unwrap();
    seg_json["last_seq"] = json!(2);
    raw_set(
        &env.raw,
        &key,
        Some(&serde_json::to_vec(&seg_json).unwrap()),
    )
    .await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (1, ChainBreakKind::SegmentMalformed)
    );
    // With the count shortened too, the signature no longer verifies.
    seg_json["count"] = json!(2);
    raw_set(
        &env.raw,
        &key,
        Some(&serde_json::to_vec(&seg_json).unwrap()),
    )
    .await;
    assert_eq!(
        break_of(audit.verify_chain(t).await),
        (1, ChainBreakKind::SegmentSignature)
    );
}

backend_tests!(
    appends_seal_into_a_gapless_chain_that_verifies,
    the_verifier_finds_a_changed_event,
    the_verifier_finds_a_removed_event,
    the_verifier_finds_a_removed_last_event,
    the_verifier_finds_reordered_events,
    compaction_replaces_old_events_and_the_chain_still_verifies,
);
