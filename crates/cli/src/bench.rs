//! `steward bench store`: the storage ceiling the queue is measured against.
//!
//! Each [`Scenario`] runs for a fixed time against any [`Database`] and counts only what
//! committed: transactions per second, written keys per second, and the latency of each
//! transaction from its start to its acknowledged commit (one [`Database::run`]). The writes are
//! blind sets of [`VALUE_BYTES`]-byte values under unique keys `("bench", scenario, n)`, so no
//! transaction conflicts with another: this measures the engine's commit path, not contention.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use steward_store::{strinc, tuple, Database, Result};

/// Size of every value written.
pub(crate) const VALUE_BYTES: usize = 100;

/// Top-level key prefix of everything the benchmark writes (outside the tenant, global and
/// meta areas of CONVENTIONS.md), cleared after each scenario on a store the user named.
const KEY_ROOT: &str = "bench";

/// One workload: `tasks` tokio tasks, each committing transactions of `keys_per_txn` keys one
/// after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scenario {
    /// Short stable name (JSON and keys).
    pub(crate) name: &'static str,
    /// Keys written by each transaction.
    pub(crate) keys_per_txn: usize,
    /// Concurrent tasks.
    pub(crate) tasks: usize,
}

/// The scenarios, in the order they run.
pub(crate) const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "single",
        keys_per_txn: 1,
        tasks: 1,
    },
    Scenario {
        name: "batch",
        keys_per_txn: 100,
        tasks: 1,
    },
    Scenario {
        name: "concurrent",
        keys_per_txn: 1,
        tasks: 64,
    },
];

impl Scenario {
    pub(crate) fn describe(&self) -> String {
        let keys = if self.keys_per_txn == 1 {
            "1 key/txn".to_string()
        } else {
            format!("{} keys/txn", self.keys_per_txn)
        };
        let tasks = if self.tasks == 1 {
            "sequential".to_string()
        } else {
            format!("{} tasks", self.tasks)
        };
        format!("{} ({keys}, {tasks})", self.name)
    }
}

/// The machine the benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// `std::thread::available_parallelism`.
    pub(crate) cores: usize,
    /// `std::env::consts::OS`.
    pub(crate) os: &'static str,
    /// `std::env::consts::ARCH`.
    pub(crate) arch: &'static str,
    /// The CPU model, where the OS tells it (Linux `/proc/cpuinfo`).
    pub(crate) cpu: Option<String>,
}

impl Machine {
    pub(crate) fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            });
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            cpu,
        }
    }
}

/// Commit latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

/// What one scenario measured on one store.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScenarioResult {
    pub(crate) store: String,
    pub(crate) scenario: &'static str,
    pub(crate) keys_per_txn: usize,
    pub(crate) tasks: usize,
    /// Transactions that committed.
    pub(crate) txns: u64,
    /// Keys written by the transactions that committed.
    pub(crate) keys: u64,
    pub(crate) elapsed_secs: f64,
    pub(crate) txn_per_sec: f64,
    pub(crate) keys_per_sec: f64,
    pub(crate) latency: Latency,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) duration_secs: f64,
    pub(crate) value_bytes: usize,
    pub(crate) results: Vec<ScenarioResult>,
}

/// A store to measure.
#[derive(Debug)]
pub(crate) struct Target {
    /// How the report names it (its URL).
    pub(crate) label: String,
    pub(crate) db: Database,
    /// Clear the benchmark's keys before and after each scenario (a store the user named, which
    /// outlives the run).
    pub(crate) clean_up: bool,
}

/// How to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// How long each scenario runs.
    pub(crate) duration: Duration,
    /// Show a progress bar per scenario on stderr (indicatif hides it when stderr is not a
    /// terminal).
    pub(crate) progress: bool,
}

/// Runs every scenario on every target, in order.
///
/// # Errors
/// The first store error that is not retried away (the retry loop retries conflicts itself).
pub(crate) async fn run(targets: &[Target], options: Options) -> Result<Report> {
    let mut results = Vec::new();
    for target in targets {
        for scenario in SCENARIOS {
            if target.clean_up {
                clear(&target.db, scenario).await?;
            }
            let result = run_scenario(&target.db, &target.label, scenario, options).await?;
            if target.clean_up {
                clear(&target.db, scenario).await?;
            }
            results.push(result);
        }
    }
    Ok(Report {
        machine: Machine::detect(),
        duration_secs: options.duration.as_secs_f64(),
        value_bytes: VALUE_BYTES,
        results,
    })
}

/// The batched scenario (100 keys per transaction, one task): the store's ceiling for writes
/// grouped into transactions, which `steward bench queue` compares the queue against.
pub(crate) const BATCHED: Scenario = SCENARIOS[1];

/// Measures [`BATCHED`] on one store: the ceiling `steward bench queue` prints beside the
/// queue's throughput. With `clean_up` (a store the user named), its keys are cleared before
/// and after.
///
/// # Errors
/// As [`run`].
pub(crate) async fn batched_ceiling(
    db: &Database,
    label: &str,
    options: Options,
    clean_up: bool,
) -> Result<ScenarioResult> {
    if clean_up {
        clear(db, BATCHED).await?;
    }
    let result = run_scenario(db, label, BATCHED, options).await;
    if clean_up {
        clear(db, BATCHED).await?;
    }
    result
}

/// Runs one scenario on one store for `options.duration`.
///
/// # Errors
/// As [`run`].
pub(crate) async fn run_scenario(
    db: &Database,
    label: &str,
    scenario: Scenario,
    options: Options,
) -> Result<ScenarioResult> {
    let committed = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(label, scenario, options);
    let started = Instant::now();
    let deadline = started + options.duration;
    let ticker = (!bar.is_hidden()).then(|| {
        let (bar, committed) = (bar.clone(), Arc::clone(&committed));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                bar.set_position(millis(started.elapsed()));
                bar.set_message(format!("{} txns", committed.load(Ordering::Relaxed)));
            }
        })
    });

    let workers: Vec<_> = (0..scenario.tasks as u64)
        .map(|task| {
            let (db, committed) = (db.clone(), Arc::clone(&committed));
            tokio::spawn(worker(db, scenario, task, deadline, committed))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    let elapsed = started.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(e) = first_error {
        bar.abandon_with_message(format!("failed: {e}"));
        return Err(e);
    }

    let txns = latencies.len() as u64;
    let keys = txns * scenario.keys_per_txn as u64;
    let secs = elapsed.as_secs_f64();
    latencies.sort_unstable();
    let result = ScenarioResult {
        store: label.to_string(),
        scenario: scenario.name,
        keys_per_txn: scenario.keys_per_txn,
        tasks: scenario.tasks,
        txns,
        keys,
        elapsed_secs: secs,
        txn_per_sec: txns as f64 / secs,
        keys_per_sec: keys as f64 / secs,
        latency: Latency {
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
            max_us: percentile(&latencies, 1.0),
        },
    };
    bar.set_position(millis(options.duration));
    bar.finish_with_message(format!(
        "{:.0} txn/s, {:.0} keys/s",
        result.txn_per_sec, result.keys_per_sec
    ));
    Ok(result)
}

/// One task: commits transactions until the deadline; returns the latency of each, in
/// nanoseconds. Keys are `("bench", scenario, task << 40 | seq)`: unique across tasks and runs
/// of the same scenario on a cleared store, generated before each transaction (not inside its
/// body, which the retry loop may run more than once).
async fn worker(
    db: Database,
    scenario: Scenario,
    task: u64,
    deadline: Instant,
    committed: Arc<AtomicU64>,
) -> Result<Vec<u64>> {
    let value = vec![0x5a_u8; VALUE_BYTES];
    let mut latencies = Vec::new();
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        let keys: Vec<Vec<u8>> = (0..scenario.keys_per_txn)
            .map(|_| {
                seq += 1;
                tuple::pack(&(KEY_ROOT, scenario.name, task << 40 | seq))
            })
            .collect();
        let (keys, value) = (&keys, &value);
        let started = Instant::now();
        db.run(|tx, _maybe_committed| async move {
            for key in keys {
                tx.set(key, value);
            }
            Ok(())
        })
        .await?;
        latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        committed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(latencies)
}

/// Clears everything a scenario wrote.
async fn clear(db: &Database, scenario: Scenario) -> Result<()> {
    let begin = tuple::pack(&(KEY_ROOT, scenario.name));
    let end = strinc(&begin);
    db.run(|tx, _| {
        let (begin, end) = (&begin, &end);
        async move {
            tx.clear_range(begin, end);
            Ok(())
        }
    })
    .await
}

/// The nearest-rank percentile `p` (0..=1) of sorted nanoseconds, in microseconds.
pub(crate) fn percentile(sorted_nanos: &[u64], p: f64) -> f64 {
    if sorted_nanos.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted_nanos.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_nanos.len()) - 1;
    sorted_nanos[i] as f64 / 1_000.0
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn progress_bar(label: &str, scenario: Scenario, options: Options) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(millis(options.duration));
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{label} {}", scenario.describe()));
    bar
}

/// The report as a readable table, with the machine in the header.
pub(crate) fn render_table(report: &Report) -> String {
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {} cores, {} {}{}",
        m.cores,
        m.os,
        m.arch,
        m.cpu
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "each scenario {:.1} s, {} B values, latency = one transaction from start to committed\n",
        report.duration_secs, report.value_bytes
    );
    let rows: Vec<[String; 6]> = report
        .results
        .iter()
        .map(|r| {
            let scenario = SCENARIOS
                .iter()
                .find(|s| s.name == r.scenario)
                .map_or_else(|| r.scenario.to_string(), Scenario::describe);
            [
                r.store.clone(),
                scenario,
                format!("{:.0}", r.txn_per_sec),
                format!("{:.0}", r.keys_per_sec),
                format!("{:.3}", r.latency.p50_us / 1_000.0),
                format!("{:.3}", r.latency.p99_us / 1_000.0),
            ]
        })
        .collect();
    let header = ["store", "scenario", "txn/s", "keys/s", "p50 ms", "p99 ms"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Text columns align left, numbers right.
            if i < 2 {
                let _ = write!(l, "{cell:<w$}  ");
            } else {
                let _ = write!(l, "{cell:>w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let nanos: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
        assert_eq!(percentile(&nanos, 0.50), 50.0);
        assert_eq!(percentile(&nanos, 0.99), 99.0);
        assert_eq!(percentile(&nanos, 1.0), 100.0);
        assert_eq!(percentile(&[7_000], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scenario_commits_and_counts_only_what_it_wrote() {
        let db = Database::memory();
        let options = Options {
            duration: Duration::from_millis(50),
            progress: false,
        };
        for scenario in SCENARIOS {
            let r = run_scenario(&db, "memory:", scenario, options)
                .await
                .unwrap();
            assert!(r.txns > 0 && r.txn_per_sec > 0.0, "{r:?}");
            assert_eq!(r.keys, r.txns * scenario.keys_per_txn as u64);
            assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
            // The store holds exactly the keys the scenario counted.
            let prefix = tuple::pack(&(KEY_ROOT, scenario.name));
            let tx = db.create_transaction().unwrap();
            let stored = tx
                .get_range_all(&steward_store::RangeOption::prefix(&prefix))
                .await
                .unwrap();
            assert_eq!(stored.len() as u64, r.keys, "{}", scenario.name);
        }
    }

    #[tokio::test]
    async fn clean_up_clears_only_the_benchmark_keys() {
        let db = Database::memory();
        let targets = [Target {
            label: "memory:".into(),
            db: db.clone(),
            clean_up: true,
        }];
        db.run(|tx, _| async move {
            tx.set(b"keep", b"1");
            Ok(())
        })
        .await
        .unwrap();
        let options = Options {
            duration: Duration::from_millis(10),
            progress: false,
        };
        let report = run(&targets, options).await.unwrap();
        assert_eq!(report.results.len(), SCENARIOS.len());
        let tx = db.create_transaction().unwrap();
        let all = tx
            .get_range_all(&steward_store::RangeOption::new(vec![0u8], vec![0xffu8]))
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].key, b"keep");
        let table = render_table(&report);
        assert!(
            table.contains("concurrent (1 key/txn, 64 tasks)"),
            "{table}"
        );
        assert!(table.contains("cores"), "{table}");
    }
}
