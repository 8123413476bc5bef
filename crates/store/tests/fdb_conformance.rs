//! The FoundationDB backend against a real cluster (features `fdb` and `testing`).
//!
//! Runs only when `STEWARD_TEST_FDB_CLUSTER_FILE` names a cluster file; otherwise it prints
//! "skipped: STEWARD_TEST_FDB_CLUSTER_FILE not set" and passes.
//!
//! # DANGER: use a dedicated, disposable test cluster
//! Before every case this test CLEARS THE WHOLE USER KEYSPACE (`[b"", b"\xff")`) of the cluster
//! the variable names, because the cases (like the shared conformance suite) expect an empty
//! database. Never point `STEWARD_TEST_FDB_CLUSTER_FILE` at a cluster whose data you want to
//! keep. The cases run one after another in this one test, never in parallel; each also keeps
//! to its own key prefix.
//!
//! `steward_store::conformance::run_all` does not exist yet, so this is a smoke test of the
//! adapter (reads, ranges, atomic operations, versionstamps, conflicts, limits, watches,
//! versions). Once the shared suite lands, it should run here too, against the same wiped
//! cluster, case by case.

#![cfg(all(feature = "fdb", feature = "testing"))]
// The cases are test code outside `#[test]` functions, where clippy.toml allows unwrap.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use steward_store::conformance::{run_all, Backend, Guard};
use steward_store::tuple::{pack, pack_with_versionstamp, Versionstamp};
use steward_store::types::apply_atomic;
use steward_store::{
    decode_counter, key_after, Database, Error, ErrorClass, MutationType, RangeOption,
};

const CLUSTER_FILE_ENV: &str = "STEWARD_TEST_FDB_CLUSTER_FILE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fdb_backend_smoke() {
    let Some(cluster_file) = std::env::var_os(CLUSTER_FILE_ENV) else {
        println!("skipped: {CLUSTER_FILE_ENV} not set");
        return;
    };
    let url = format!("fdb:{}", std::path::Path::new(&cluster_file).display());
    let db = Database::open(&url).expect("open the test cluster");

    run_case(
        &db,
        "point reads, writes and versions",
        point_reads_writes_and_versions(&db),
    )
    .await;
    run_case(
        &db,
        "range reads page both ways",
        range_reads_page_both_ways(&db),
    )
    .await;
    run_case(
        &db,
        "atomic ops match the seam",
        atomic_ops_match_the_seam(&db),
    )
    .await;
    run_case(&db, "versionstamps", versionstamps(&db)).await;
    run_case(&db, "conflicts", conflicts(&db)).await;
    run_case(
        &db,
        "limits come back as seam errors",
        limits_are_seam_errors(&db),
    )
    .await;
    run_case(&db, "watches fire on change", watches_fire_on_change(&db)).await;
    // Opening again in the same process shares the one network.
    run_case(&db, "a second open shares the network", second_open(&url)).await;
}

/// The whole conformance suite, every case on a freshly wiped cluster, one after another (the
/// cases share the cluster, so they cannot run in parallel). FoundationDB keeps its own time,
/// so the cases that move the injected clock report themselves skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_fdb() {
    let Some(cluster_file) = std::env::var_os(CLUSTER_FILE_ENV) else {
        println!("skipped: {CLUSTER_FILE_ENV} not set");
        return;
    };
    let url = format!("fdb:{}", std::path::Path::new(&cluster_file).display());
    let backend = Backend::new("fdb", move |options| {
        let url = url.clone();
        async move {
            let db = Database::open_with(&url, options)?;
            db.run(|tx, _| async move {
                tx.clear_range(b"", b"\xff");
                Ok(())
            })
            .await?;
            Ok((db, Box::new(()) as Guard))
        }
    })
    .without_injected_clock();
    run_all(&backend).await;
}

/// Wipes the cluster (see the module doc), then runs one case.
async fn run_case(db: &Database, name: &str, case: impl Future<Output = ()>) {
    println!("case: {name}");
    db.run(|tx, _| async move {
        tx.clear_range(b"", b"\xff");
        Ok(())
    })
    .await
    .expect("wipe the test cluster");
    case.await;
}

fn key(case: &str, k: &str) -> Vec<u8> {
    pack(&("steward-test", case, k))
}

fn prefix(case: &str) -> Vec<u8> {
    pack(&("steward-test", case))
}

async fn point_reads_writes_and_versions(db: &Database) {
    let (a, b) = (key("point", "a"), key("point", "b"));
    let tx = db.create_transaction().unwrap();
    let read_version = tx.read_version().await.unwrap();
    assert!(read_version > 0);
    tx.set(&a, b"1");
    tx.set(&b, b"2");
    // Reads see the transaction's own writes.
    assert_eq!(tx.get(&a, false).await.unwrap().as_deref(), Some(&b"1"[..]));
    let committed = tx.commit().await.unwrap();
    let version = committed.version.expect("a write commit has a version");
    assert!(version >= read_version);

    let tx = db.create_transaction().unwrap();
    assert_eq!(tx.get(&a, true).await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(tx.get(&key("point", "missing"), false).await.unwrap(), None);
    assert!(tx.read_version().await.unwrap() >= version);
    // Reads alone commit without a version.
    assert_eq!(tx.commit().await.unwrap().version, None);

    let tx = db.create_transaction().unwrap();
    tx.clear(&a);
    tx.clear_range(&b, &key_after(&b));
    assert_eq!(tx.get(&a, false).await.unwrap(), None);
    tx.commit().await.unwrap();
    let tx = db.create_transaction().unwrap();
    let left = tx
        .get_range_all(&RangeOption::prefix(&prefix("point")))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

async fn range_reads_page_both_ways(db: &Database) {
    let keys: Vec<Vec<u8>> = (0..5).map(|i| key("range", &format!("k{i}"))).collect();
    db.run(|tx, _| {
        let keys = keys.clone();
        async move {
            for (i, k) in keys.iter().enumerate() {
                tx.set(k, &[i as u8]);
            }
            Ok(())
        }
    })
    .await
    .unwrap();
    let all = RangeOption::prefix(&prefix("range"));
    let tx = db.create_transaction().unwrap();

    let forward = tx.get_range_all(&all).await.unwrap();
    assert_eq!(
        forward.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        keys
    );

    let first = tx.get_range(&all.clone().limit(2).reverse()).await.unwrap();
    assert_eq!(first.kvs.len(), 2);
    assert_eq!(first.kvs[0].key, keys[4]);
    assert_eq!(first.kvs[1].key, keys[3]);
    assert!(first.more, "a full page of a longer range has more");
    let next = first.next_page(&all.clone().limit(2).reverse()).unwrap();
    let second = tx.get_range(&next).await.unwrap();
    assert_eq!(second.kvs[0].key, keys[2]);

    let paged = tx.get_range_all(&all.clone().limit(2)).await.unwrap();
    assert_eq!(paged, forward);

    let none = tx.get_range(&all.clone().limit(0)).await.unwrap();
    assert!(none.kvs.is_empty() && !none.more);
    let inverted = tx
        .get_range(&RangeOption::new(keys[3].clone(), keys[1].clone()))
        .await
        .unwrap();
    assert!(inverted.kvs.is_empty() && !inverted.more);
}

async fn atomic_ops_match_the_seam(db: &Database) {
    let ops = [
        MutationType::Add,
        MutationType::BitAnd,
        MutationType::BitOr,
        MutationType::BitXor,
        MutationType::Max,
        MutationType::Min,
        MutationType::ByteMin,
        MutationType::ByteMax,
        MutationType::CompareAndClear,
    ];
    let existing: [Option<&[u8]>; 4] = [None, Some(&[0xff]), Some(&[1, 2, 3]), Some(&[7, 0])];
    let params: [&[u8]; 3] = [&[7, 0], &[2, 1], &[0xff, 0xff, 0xff]];
    let mut n = 0;
    for op in ops {
        for ex in existing {
            for param in params {
                n += 1;
                let k = key("atomic", &format!("{n}"));
                let tx = db.create_transaction().unwrap();
                if let Some(ex) = ex {
                    tx.set(&k, ex);
                }
                tx.commit().await.unwrap();
                let tx = db.create_transaction().unwrap();
                tx.atomic_op(&k, param, op);
                tx.commit().await.unwrap();
                let tx = db.create_transaction().unwrap();
                let got = tx.get(&k, true).await.unwrap();
                assert_eq!(
                    got,
                    apply_atomic(op, ex, param),
                    "{op:?} over {ex:?} with {param:?}"
                );
            }
        }
    }
    let counter = key("atomic", "counter");
    db.run(|tx, _| {
        let counter = counter.clone();
        async move {
            tx.add(&counter, 5);
            tx.add(&counter, -2);
            Ok(())
        }
    })
    .await
    .unwrap();
    let tx = db.create_transaction().unwrap();
    assert_eq!(
        decode_counter(tx.get(&counter, false).await.unwrap().as_deref()),
        3
    );
}

async fn versionstamps(db: &Database) {
    let raw_key =
        pack_with_versionstamp(&("steward-test", "vs", "log", Versionstamp::incomplete(7)));
    let value_key = key("vs", "value");
    let mut raw_value = b"v:".to_vec();
    raw_value.extend_from_slice(&[0; 10]);
    raw_value.extend_from_slice(&2u32.to_le_bytes());

    let tx = db.create_transaction().unwrap();
    tx.set_versionstamped_key(&raw_key, b"logged");
    tx.set_versionstamped_value(&value_key, &raw_value);
    // A versionstamped value is unreadable until the commit.
    assert!(matches!(
        tx.get(&value_key, false).await,
        Err(Error::AccessedUnreadable)
    ));
    drop(tx);

    let tx = db.create_transaction().unwrap();
    tx.set_versionstamped_key(&raw_key, b"logged");
    tx.set_versionstamped_value(&value_key, &raw_value);
    let stamp = tx.versionstamp();
    let version = tx.commit().await.unwrap().version.unwrap();
    let stamp = stamp.await.unwrap();
    assert_eq!(u64::from_be_bytes(stamp[..8].try_into().unwrap()), version);

    let tx = db.create_transaction().unwrap();
    let log = tx
        .get_range_all(&RangeOption::prefix(&pack(&("steward-test", "vs", "log"))))
        .await
        .unwrap();
    let expected = pack(&(
        "steward-test",
        "vs",
        "log",
        Versionstamp::complete(stamp, 7),
    ));
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].key, expected);
    assert_eq!(log[0].value, b"logged");
    let mut filled = b"v:".to_vec();
    filled.extend_from_slice(&stamp);
    assert_eq!(tx.get(&value_key, false).await.unwrap(), Some(filled));

    // A placeholder that does not fit is the seam's error, at the commit.
    let tx = db.create_transaction().unwrap();
    let mut bad = b"short".to_vec();
    bad.extend_from_slice(&3u32.to_le_bytes());
    tx.set_versionstamped_key(&bad, b"");
    assert!(matches!(
        tx.commit().await,
        Err(Error::InvalidVersionstamp(_))
    ));

    // A read-only transaction has no versionstamp.
    let tx = db.create_transaction().unwrap();
    let stamp = tx.versionstamp();
    tx.commit().await.unwrap();
    assert!(stamp.await.is_err());
}

async fn conflicts(db: &Database) {
    let k = key("conflict", "k");
    let other = key("conflict", "other");
    for (how, snapshot, guard) in [
        ("serializable read", false, false),
        ("snapshot read", true, false),
        ("snapshot read + read conflict key", true, true),
    ] {
        let tx1 = db.create_transaction().unwrap();
        tx1.get(&k, snapshot).await.unwrap();
        if guard {
            tx1.add_read_conflict_key(&k);
        }
        let tx2 = db.create_transaction().unwrap();
        tx2.set(&k, how.as_bytes());
        tx2.commit().await.unwrap();
        tx1.set(&other, b"x");
        let result = tx1.commit().await;
        if snapshot && !guard {
            result.unwrap_or_else(|e| panic!("{how}: {e}"));
        } else {
            let e = result.expect_err(how);
            assert!(matches!(e, Error::Conflict), "{how}: {e}");
            assert_eq!(e.class(), ErrorClass::Retryable);
        }
    }
    // A write conflict range alone makes a transaction a writer, and conflicts with readers.
    let reader = db.create_transaction().unwrap();
    reader.get(&k, false).await.unwrap();
    let writer = db.create_transaction().unwrap();
    writer.add_write_conflict_range(&k, &key_after(&k));
    assert!(writer.commit().await.unwrap().version.is_some());
    reader.set(&other, b"y");
    assert!(matches!(reader.commit().await, Err(Error::Conflict)));
}

async fn limits_are_seam_errors(db: &Database) {
    let k = key("limits", "k");
    let tx = db.create_transaction().unwrap();
    tx.set(&vec![b'k'; 10_001], b"");
    // Deferred to the next read, and sticky: the commit fails too.
    assert!(matches!(
        tx.get(&k, false).await,
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(tx.commit().await, Err(Error::KeyTooLarge { .. })));

    let tx = db.create_transaction().unwrap();
    tx.set(&k, &vec![0; 100_001]);
    assert!(matches!(
        tx.commit().await,
        Err(Error::ValueTooLarge { .. })
    ));

    let tx = db.create_transaction().unwrap();
    tx.set(b"\xff/not-ours", b"");
    assert!(matches!(
        tx.commit().await,
        Err(Error::KeyOutsideLegalRange)
    ));

    let tx = db.create_transaction().unwrap();
    assert!(matches!(
        tx.get(b"\xff/not-ours", false).await,
        Err(Error::KeyOutsideLegalRange)
    ));
    assert!(matches!(
        tx.get_range(&RangeOption::new(b"a".to_vec(), b"\xff\x01".to_vec()))
            .await,
        Err(Error::KeyOutsideLegalRange)
    ));

    let tx = db.create_transaction().unwrap();
    tx.clear_range(b"b", b"a");
    assert!(matches!(tx.commit().await, Err(Error::InvertedRange)));

    let tx = db.create_transaction().unwrap();
    let value = vec![0; 95_000];
    for i in 0..120 {
        tx.set(&key("limits", &format!("big{i}")), &value);
    }
    let e = tx.commit().await.unwrap_err();
    assert!(matches!(e, Error::TransactionTooLarge { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Permanent);
}

async fn watches_fire_on_change(db: &Database) {
    let k = key("watch", "k");
    let tx = db.create_transaction().unwrap();
    let watch = tx.watch(&k);
    tx.commit().await.unwrap();
    let tx = db.create_transaction().unwrap();
    tx.set(&k, b"changed");
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch fires within 10 s")
        .unwrap();

    // A watch of a transaction dropped uncommitted is cancelled.
    let tx = db.create_transaction().unwrap();
    let watch = tx.watch(&k);
    drop(tx);
    assert!(matches!(watch.await, Err(Error::TransactionCancelled)));
}

async fn second_open(url: &str) {
    let db = Database::open(url).unwrap();
    let tx = db.create_transaction().unwrap();
    assert!(tx.read_version().await.unwrap() > 0);
}
