//! Batch priority on the embedded store: at most `embedded_batch_in_flight` batch and
//! background attempts run at once, interactive transactions never wait for them, an attempt
//! that fails gives its turn back before it backs off, batch attempts go before background ones,
//! and background attempts leave one turn to batch ones.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_store::{Database, Error, OpenOptions, Priority, RunOptions};
use tokio::sync::oneshot;

fn open(dir: &tempfile::TempDir, in_flight: usize) -> Database {
    Database::open_with(
        &format!("embedded:{}", dir.path().display()),
        OpenOptions {
            embedded_batch_in_flight: in_flight,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

fn batch(backoff: Duration) -> RunOptions {
    RunOptions {
        initial_backoff: backoff,
        max_backoff: backoff,
        priority: Priority::Batch,
        ..RunOptions::default()
    }
}

/// Starts a transaction at `priority` that records `name` in `events` once it runs, and, if
/// `hold`, then waits for the returned sender before it commits. Returns once it was spawned
/// (and, if it holds, once it runs).
async fn spawn_tx(
    db: &Database,
    priority: Priority,
    name: &'static str,
    events: &Arc<Mutex<Vec<&'static str>>>,
    hold: bool,
) -> (
    Option<oneshot::Sender<()>>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let (release, held) = oneshot::channel::<()>();
    let (started_tx, started) = oneshot::channel::<()>();
    let options = RunOptions {
        priority,
        ..batch(Duration::from_millis(1))
    };
    let task = tokio::spawn({
        let (db, events) = (db.clone(), Arc::clone(events));
        let mut once = Some((held, started_tx));
        async move {
            db.transact_with(&options, |tx, _| {
                let step = once.take();
                let events = Arc::clone(&events);
                async move {
                    events.lock().unwrap().push(name);
                    if let Some((held, started)) = step {
                        let _ = started.send(());
                        if hold {
                            held.await.unwrap();
                        }
                    }
                    tx.set(name.as_bytes(), b"1");
                    Ok::<_, Error>(())
                }
            })
            .await
        }
    });
    if hold {
        started.await.unwrap();
    } else {
        // Let it reach its place in the line.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (hold.then_some(release), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_attempts_leave_a_turn_to_batch_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, 2);
    let events = Arc::new(Mutex::new(Vec::new()));
    let (release, first) = spawn_tx(&db, Priority::Background, "first", &events, true).await;
    // A turn is free, but background attempts may hold only one of the two.
    let (_, second) = spawn_tx(&db, Priority::Background, "second", &events, false).await;
    assert_eq!(*events.lock().unwrap(), vec!["first"]);
    // The free turn serves a batch transaction at once.
    let (_, batch) = spawn_tx(&db, Priority::Batch, "batch", &events, false).await;
    tokio::time::timeout(Duration::from_secs(10), batch)
        .await
        .expect("the batch transaction did not wait for the background one")
        .unwrap()
        .unwrap();
    assert_eq!(*events.lock().unwrap(), vec!["first", "batch"]);
    release.unwrap().send(()).unwrap();
    for task in [first, second] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert_eq!(*events.lock().unwrap(), vec!["first", "batch", "second"]);
}

#[test]
fn a_limit_of_zero_is_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let zero_turns = OpenOptions {
        embedded_batch_in_flight: 0,
        ..OpenOptions::default()
    };
    let slow = OpenOptions {
        embedded_checkpoint_bytes_per_sec: (1 << 20) - 1,
        ..OpenOptions::default()
    };
    for url in [
        format!("embedded:{}", dir.path().display()),
        "memory:".to_string(),
    ] {
        for (options, option) in [
            (zero_turns.clone(), "embedded_batch_in_flight"),
            (slow.clone(), "embedded_checkpoint_bytes_per_sec"),
        ] {
            let err = Database::open_with(&url, options).unwrap_err();
            assert!(
                matches!(err, Error::InvalidOption { field, .. } if field == option),
                "{err:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_attempts_beyond_the_limit_wait_and_interactive_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, 1);
    let events = Arc::new(Mutex::new(Vec::new()));
    let (release, held) = oneshot::channel::<()>();
    let (started_tx, started) = oneshot::channel::<()>();

    // The first batch transaction holds the only turn until released.
    let first = tokio::spawn({
        let (db, events) = (db.clone(), Arc::clone(&events));
        async move {
            let mut once = Some((held, started_tx));
            db.transact_with(&batch(Duration::from_millis(1)), |tx, _| {
                let step = once.take();
                let events = Arc::clone(&events);
                async move {
                    if let Some((held, started)) = step {
                        started.send(()).unwrap();
                        held.await.unwrap();
                    }
                    events.lock().unwrap().push("first");
                    tx.set(b"first", b"1");
                    Ok::<_, Error>(())
                }
            })
            .await
        }
    });
    started.await.unwrap();
    let second = tokio::spawn({
        let (db, events) = (db.clone(), Arc::clone(&events));
        async move {
            db.transact_with(&batch(Duration::from_millis(1)), |tx, _| {
                let events = Arc::clone(&events);
                async move {
                    events.lock().unwrap().push("second");
                    tx.set(b"second", b"1");
                    Ok::<_, Error>(())
                }
            })
            .await
        }
    });
    // An interactive transaction commits while the batch one holds the turn.
    let interactive = db.run(|tx, _| async move {
        tx.set(b"interactive", b"1");
        Ok(())
    });
    tokio::time::timeout(Duration::from_secs(10), interactive)
        .await
        .expect("an interactive transaction never waits for batch ones")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        events.lock().unwrap().is_empty(),
        "the second batch transaction waits for the first: {:?}",
        events.lock().unwrap()
    );
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(*events.lock().unwrap(), vec!["first", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_attempt_gives_its_turn_back_before_backing_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, 1);
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut attempts = 0;
    // The first attempt conflicts (another transaction writes what it read), then it backs off
    // for 1 s (at least 500 ms with jitter); meanwhile another batch transaction gets the turn.
    let slow = batch(Duration::from_secs(1));
    let failed_at = Arc::new(Mutex::new(None));
    let other_at = Arc::new(Mutex::new(None));
    let result = db
        .transact_observed(
            &slow,
            |tx, _| {
                attempts += 1;
                let (db, events, attempt) = (db.clone(), Arc::clone(&events), attempts);
                async move {
                    events.lock().unwrap().push(format!("attempt {attempt}"));
                    tx.get(b"k", false).await?;
                    if attempt == 1 {
                        db.run(|w, _| async move {
                            w.set(b"k", b"changed");
                            Ok(())
                        })
                        .await?;
                    }
                    tx.set(b"out", b"1");
                    Ok::<_, Error>(())
                }
            },
            |_| {
                *failed_at.lock().unwrap() = Some(Instant::now());
                let (db, events, other_at) =
                    (db.clone(), Arc::clone(&events), Arc::clone(&other_at));
                tokio::spawn(async move {
                    db.transact_with(&batch(Duration::from_millis(1)), |tx, _| {
                        let (events, other_at) = (Arc::clone(&events), Arc::clone(&other_at));
                        async move {
                            tx.set(b"other", b"1");
                            events.lock().unwrap().push("other".to_string());
                            *other_at.lock().unwrap() = Some(Instant::now());
                            Ok::<_, Error>(())
                        }
                    })
                    .await
                    .unwrap();
                });
            },
        )
        .await;
    result.unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        vec!["attempt 1", "other", "attempt 2"],
        "the other batch transaction ran during the backoff"
    );
    let (failed, other) = (
        failed_at.lock().unwrap().unwrap(),
        other_at.lock().unwrap().unwrap(),
    );
    assert!(
        other.duration_since(failed) < Duration::from_millis(400),
        "not after the backoff: {:?}",
        other.duration_since(failed)
    );
}
