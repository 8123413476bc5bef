//! Durability of the embedded store: reopen after drop, the OS lock, and `kill -9` of a child
//! process in the middle of a concurrent write load (this test binary re-runs itself as the
//! child). After the kill, every commit the child saw acknowledged must be present, and no
//! transaction may be visible in part.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use steward_store::tuple::{pack, pack_with_versionstamp, unpack, Versionstamp};
use steward_store::{Database, Error, RangeOption};

/// Keys written by each transaction of the load.
const KEYS_PER_TX: u64 = 8;
const CHILD_ENV: &str = "STEWARD_DURABILITY_CHILD_DIR";

fn url(dir: &std::path::Path) -> String {
    format!("embedded:{}", dir.display())
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
        let db = Database::open(&format!("embedded:{dir}")).unwrap();
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
        if acked.len() >= 300 || started.elapsed() > Duration::from_secs(60) {
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
        acked.len() >= 300,
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
