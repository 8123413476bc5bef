//! Durability of the embedded store: reopen after drop, the OS lock, and `kill -9` of a child
//! process in the middle of a concurrent write load (this test binary re-runs itself as the
//! child). After the kill, every commit the child saw acknowledged must be present, and no
//! transaction may be visible in part. Also: log records cut short by a crash, damaged log
//! segments, and checkpoints.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use steward_store::tuple::{pack, pack_with_versionstamp, unpack, Versionstamp};
use steward_store::{Database, Error, MutationType, OpenOptions, RangeOption};

/// Keys written by each transaction of the load.
const KEYS_PER_TX: u64 = 8;
const CHILD_ENV: &str = "STEWARD_DURABILITY_CHILD_DIR";
/// The child's log segment size: a checkpoint every ~300 of its transactions.
const CHILD_CHECKPOINT_BYTES: u64 = 256 << 10;

fn url(dir: &std::path::Path) -> String {
    format!("embedded:{}", dir.display())
}

/// Opens the embedded store in `dir` with a checkpoint every `checkpoint_bytes` of log.
fn open_checkpointing(dir: &std::path::Path, checkpoint_bytes: u64) -> Database {
    let options = OpenOptions {
        embedded_checkpoint_bytes: checkpoint_bytes,
        ..OpenOptions::default()
    };
    Database::open_with(&url(dir), options).unwrap()
}

#[tokio::test]
async fn reopen_after_drop_keeps_every_commit_and_versionstamps_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let mut stamps = Vec::new();
    for round in 0..3u64 {
        let db = Database::open(&url(dir.path())).unwrap();
        for i in 0..20u64 {
            let stamp = db
                .run(|tx, _| async move {
                    tx.set(&pack(&("k", round, i)), &pack(&(round * 100 + i)));
                    tx.set_versionstamped_key(
                        &pack_with_versionstamp(&("log", Versionstamp::incomplete(0))),
                        b"",
                    );
                    Ok(tx.versionstamp())
                })
                .await
                .unwrap()
                .await
                .unwrap();
            stamps.push(stamp);
        }
        drop(db);
    }
    let db = Database::open(&url(dir.path())).unwrap();
    let tx = db.create_transaction().unwrap();
    let kvs = tx
        .get_range_all(&RangeOption::prefix(&pack(&("k",))))
        .await
        .unwrap();
    assert_eq!(kvs.len(), 60);
    let log = tx
        .get_range_all(&RangeOption::prefix(&pack(&("log",))))
        .await
        .unwrap();
    assert_eq!(log.len(), 60, "one versionstamped key per commit");
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "versionstamps must increase across reopen"
    );
}

#[tokio::test]
async fn a_second_open_of_a_live_store_names_the_holding_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Database::open(&url(dir.path())).unwrap();
    let err = Database::open(&url(dir.path())).unwrap_err();
    match &err {
        Error::Locked { pid, .. } => assert_eq!(*pid, std::process::id()),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err
        .to_string()
        .contains(&format!("store is locked by pid {}", std::process::id())));
}

/// The bytes of the log segments in `dir`.
fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[tokio::test]
async fn an_atomic_op_that_keeps_a_large_value_logs_nothing_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&url(dir.path())).unwrap();
    let big = vec![0xffu8; 90_000];
    db.run(|tx, _| {
        let big = big.clone();
        async move {
            for i in 0..20u8 {
                tx.set(&[b'k', i], &big);
            }
            Ok(())
        }
    })
    .await
    .unwrap();
    let before = log_bytes(dir.path());
    // Each op's parameter is one byte and every op keeps the stored value: 40 ops counted at a
    // few bytes each. Logging their results would add 40 x 90 KB.
    db.run(|tx, _| async move {
        for i in 0..20u8 {
            tx.atomic_op(&[b'k', i], b"\x01", MutationType::ByteMax);
            tx.atomic_op(&[b'k', i], b"\x02", MutationType::CompareAndClear);
        }
        tx.set(b"marker", b"1");
        Ok(())
    })
    .await
    .unwrap();
    let grew = log_bytes(dir.path()) - before;
    assert!(grew < 4_096, "the log grew by {grew} bytes");
    // A changing op is still logged, and the unchanged values survive a reopen.
    db.run(|tx, _| async move {
        tx.atomic_op(b"k\x00", b"", MutationType::CompareAndClear);
        tx.atomic_op(b"k\x01", &[0xffu8; 90_000], MutationType::CompareAndClear);
        Ok(())
    })
    .await
    .unwrap();
    drop(db);
    let db = Database::open(&url(dir.path())).unwrap();
    let (first, second, third) = db
        .run(|tx, _| async move {
            Ok((
                tx.get(b"k\x00", false).await?,
                tx.get(b"k\x01", false).await?,
                tx.get(b"k\x02", false).await?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some(big.as_slice()), "no match: kept");
    assert_eq!(second, None, "equal: cleared");
    assert_eq!(third.as_deref(), Some(big.as_slice()));
}

/// The child side of `kill_9_during_concurrent_writes_loses_no_acknowledged_commit`: writes
/// transactions of `KEYS_PER_TX` keys from many tasks and prints `ACK <id>` after each commit.
#[test]
#[ignore = "run only as the child process of the kill -9 test"]
fn durability_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Small segments: log rotations and background checkpoints happen during the load, so
        // the kill can land in the middle of one.
        let db = open_checkpointing(std::path::Path::new(&dir), CHILD_CHECKPOINT_BYTES);
        println!("READY");
        let mut tasks = Vec::new();
        for worker in 0..16u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = worker * 1_000_000 + n;
                    db.run(|tx, _| async move {
                        for k in 0..KEYS_PER_TX {
                            tx.set(&pack(&("tx", id, k)), &[7u8; 64]);
                        }
                        tx.add(&pack(&("count",)), 1);
                        Ok(())
                    })
                    .await
                    .unwrap();
                    println!("ACK {id}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn kill_9_during_concurrent_writes_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durability_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let started = Instant::now();
    // Let the load run until a good number of commits were acknowledged, then kill -9.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse::<u64>().unwrap());
        }
        if acked.len() >= 3_000 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // Acknowledgements printed before the kill are still in the pipe.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse::<u64>().unwrap());
        }
    }
    assert!(
        acked.len() >= 3_000,
        "the child acknowledged only {} commits",
        acked.len()
    );

    // The kernel released the lock with the process: the store opens again.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Database::open(&url(dir.path())).unwrap();
        let tx = db.create_transaction().unwrap();
        let kvs = tx
            .get_range_all(&RangeOption::prefix(&pack(&("tx",))))
            .await
            .unwrap();
        let mut per_tx = std::collections::BTreeMap::<u64, u64>::new();
        for kv in &kvs {
            let (_, id, _): (String, u64, u64) = unpack(&kv.key).unwrap();
            *per_tx.entry(id).or_default() += 1;
        }
        for (id, n) in &per_tx {
            assert_eq!(*n, KEYS_PER_TX, "transaction {id} is visible in part");
        }
        for id in &acked {
            assert!(
                per_tx.contains_key(id),
                "acknowledged transaction {id} was lost"
            );
        }
        let count = steward_store::decode_counter(
            tx.get(&pack(&("count",)), false).await.unwrap().as_deref(),
        );
        assert_eq!(
            count as usize,
            per_tx.len(),
            "the counter must match the transactions present"
        );
    });
}

fn wal_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-"))
        })
        .collect();
    v.sort();
    v
}

async fn write_keys(db: &Database, from: u64, to: u64) {
    for i in from..to {
        db.run(|tx, _| async move {
            tx.set(&pack(&("k", i)), &[i as u8; 100]);
            tx.add(&pack(&("n",)), 1);
            Ok(())
        })
        .await
        .unwrap();
    }
}

async fn assert_keys(db: &Database, n: u64) {
    let tx = db.create_transaction().unwrap();
    let kvs = tx
        .get_range_all(&RangeOption::prefix(&pack(&("k",))))
        .await
        .unwrap();
    assert_eq!(kvs.len() as u64, n);
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.value, vec![i as u8; 100]);
    }
    let count =
        steward_store::decode_counter(tx.get(&pack(&("n",)), false).await.unwrap().as_deref());
    assert_eq!(count as u64, n);
}

#[tokio::test]
async fn a_record_cut_short_by_a_crash_is_dropped_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&url(dir.path())).unwrap();
    write_keys(&db, 0, 50).await;
    drop(db);
    // A crash in the middle of appending a record: a header promising more than is there.
    let last = wal_segments(dir.path()).pop().unwrap();
    let good_len = std::fs::metadata(&last).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0, 0, 1, 0, 9, 9, 9, 9, 1, 2, 3]).unwrap();
    drop(f);

    let db = Database::open(&url(dir.path())).unwrap();
    assert_keys(&db, 50).await;
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        good_len,
        "the torn record is cut off"
    );
    let kept = last.with_extension(format!("log.torn-{good_len}"));
    assert_eq!(
        std::fs::read(&kept).unwrap().len(),
        11,
        "the cut bytes are kept beside it"
    );
    write_keys(&db, 50, 80).await;
    drop(db);
    let db = Database::open(&url(dir.path())).unwrap();
    assert_keys(&db, 80).await;
}

#[tokio::test]
async fn checkpoints_replace_old_segments_and_a_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_checkpointing(dir.path(), 8 << 10);
    write_keys(&db, 0, 600).await;
    drop(db); // waits for a running checkpoint
    assert!(dir.path().join("checkpoint").exists());
    let segments = wal_segments(dir.path());
    assert!(
        segments.len() <= 2,
        "checkpointed segments are deleted: {segments:?}"
    );
    let db = open_checkpointing(dir.path(), 8 << 10);
    assert_keys(&db, 600).await;
    write_keys(&db, 600, 700).await;
    drop(db);
    let db = Database::open(&url(dir.path())).unwrap();
    assert_keys(&db, 700).await;
}

#[tokio::test]
async fn damage_before_the_end_of_the_log_refuses_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_checkpointing(dir.path(), 4 << 10);
    write_keys(&db, 0, 100).await;
    drop(db);
    // Without the checkpoint, recovery must replay every segment; damage one before the last.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let segments = wal_segments(dir.path());
    assert!(
        !segments[0].ends_with("wal-00000000000000000001.log"),
        "{segments:?}"
    );
    // The oldest segments were deleted by checkpoints, so replay now starts past version 1:
    // that alone must be refused as a gap, not read as an empty store.
    let err = Database::open(&url(dir.path())).unwrap_err();
    assert!(err.to_string().contains("jumps from version 0"), "{err}");

    // A flipped bit in the middle of a segment that is not the last cannot be a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&url(dir.path())).unwrap();
    write_keys(&db, 0, 20).await;
    drop(db);
    let seg = wal_segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    // A later segment with a header and a record: the damaged one is not the log's end.
    let mut later = b"STWAL\x00\x00\x02".to_vec();
    later.extend_from_slice(&99_999u64.to_be_bytes());
    later.extend_from_slice(&[0, 0, 0, 20, 1, 2, 3, 4]);
    later.extend_from_slice(&[9; 20]);
    std::fs::write(dir.path().join("wal-00000000000000099999.log"), later).unwrap();
    let err = Database::open(&url(dir.path())).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[tokio::test]
async fn segments_a_crash_or_failed_rotation_left_empty_are_dropped_wherever_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&url(dir.path())).unwrap();
    write_keys(&db, 0, 30).await;
    drop(db);
    // In the middle: a segment created (its name sorts between) whose header never reached the
    // disk; at the end: one whose 16 header bytes are zeros.
    let first = wal_segments(dir.path()).pop().unwrap();
    let middle = dir.path().join("wal-00000000000000000005.log");
    std::fs::write(&middle, b"STW").unwrap();
    let end = dir.path().join("wal-00000000000000099999.log");
    std::fs::write(&end, [0u8; 16]).unwrap();

    let db = Database::open(&url(dir.path())).unwrap();
    assert_keys(&db, 30).await;
    assert!(!middle.exists() && !end.exists());
    write_keys(&db, 30, 40).await;
    drop(db);
    let db = Database::open(&url(dir.path())).unwrap();
    assert_keys(&db, 40).await;
    assert!(first.exists());
}
