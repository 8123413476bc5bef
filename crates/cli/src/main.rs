//! # `steward`: the command of the Steward job system
//!
//! Wires configuration, the store, and (in later issues) the API and the workers together.
//! Today it has the benchmarks: `steward bench store` (the storage ceiling) and `steward bench
//! queue` (the queue's throughput beside that ceiling, and fairness between tenants).
//!
//! # Layout
//! - `main.rs`: the command line (clap), logging, the runtime, exit codes;
//! - [`config`]: settings from flag > environment > config file > default;
//! - [`bench`]: the storage benchmark, generic over any store;
//! - [`bench_queue`]: the queue benchmark, generic over any store.
//!
//! Exit codes: 0 success; 1 a failure at run time; 2 bad usage or configuration (clap's own
//! errors, an invalid config file or store URL, a backend missing from this build).

mod bench;
mod bench_queue;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use steward_store::{Database, StoreUrl};

use crate::config::Settings;

/// Steward, the background job system of a multi-tenant AI IDE.
#[derive(Debug, Parser)]
#[command(name = "steward", version, arg_required_else_help = true)]
struct Cli {
    /// Store URL: `embedded:PATH`, `memory:`, `fdb:` or `fdb:CLUSTER_FILE`
    /// [default: embedded:./steward-data]
    #[arg(long, env = "STEWARD_STORE", global = true, value_name = "URL")]
    store: Option<String>,

    /// TOML configuration file (keys: `store`)
    #[arg(long, env = "STEWARD_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Measure the store's committed transactions/s and written keys/s
    ///
    /// Three scenarios: single-key transactions, 100-key batches, and 64 concurrent tasks
    /// committing single-key transactions. Without --store (or STEWARD_STORE, or `store` in the
    /// config file) it measures both `memory:` and a fresh embedded store in a temporary
    /// directory (disk sync on, as always); on a named store it writes under the key prefix
    /// ("bench",) and clears it afterwards.
    Store(BenchStoreArgs),

    /// Measure the queue's no-op jobs/s beside the store's batched ceiling, and fairness
    ///
    /// Throughput: producers enqueue batches of 100 while 16 workers claim up to 32 and complete
    /// each; the store benchmark's batched scenario runs in the same run, and the ratio of jobs/s
    /// to its keys/s is reported (target: at least 0.5). Fairness: small tenants' waits for a
    /// worker with one tenant's 100,000-job flood enqueued first and without it (target: p50
    /// and p99 ratios at most 2). Without --store it measures both `memory:` and fresh embedded
    /// stores in a temporary directory (disk sync on every commit, as always).
    Queue(BenchQueueArgs),
}

#[derive(Debug, Args)]
struct BenchStoreArgs {
    /// Print one JSON document instead of a table (and no progress)
    #[arg(long)]
    json: bool,

    /// Seconds each scenario runs
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_duration)]
    duration: Duration,

    /// A tiny run (0.2 s per scenario), for CI
    #[arg(long, conflicts_with = "duration")]
    quick: bool,
}

#[derive(Debug, Args)]
struct BenchQueueArgs {
    /// Print one JSON document instead of tables (and no progress)
    #[arg(long)]
    json: bool,

    /// Seconds of the throughput window (and of the store's ceiling scenario)
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_duration)]
    duration: Duration,

    /// A run of a few seconds, for CI: a 0.3 s window, a 2,000-job flood, a faster pace
    #[arg(long, conflicts_with = "duration")]
    quick: bool,
}

/// Each scenario's duration in quick mode.
const QUICK_DURATION: Duration = Duration::from_millis(200);
/// The longest scenario duration accepted.
const MAX_DURATION_SECS: f64 = 3600.0;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs > 0.0 && secs <= MAX_DURATION_SECS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "must be more than 0 and at most {MAX_DURATION_SECS} seconds"
        ))
    }
}

/// Why the command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Store(#[from] steward_store::Error),
    #[error("{0}")]
    Queue(#[from] steward_queue::Error),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Config(_)
            | Failure::Store(
                steward_store::Error::InvalidUrl { .. }
                | steward_store::Error::BackendUnavailable { .. },
            ) => ExitCode::from(2),
            Failure::Store(_) | Failure::Queue(_) => ExitCode::FAILURE,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let settings = match config::resolve(cli.store.as_deref(), cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&Failure::Config(e)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::Store(e.into())),
    };
    match runtime.block_on(run(cli.command, &settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Failure) -> ExitCode {
    eprintln!("error: {e}");
    e.exit_code()
}

/// Logs go to stderr; `RUST_LOG` filters them (default: warnings and errors).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(command: Command, settings: &Settings) -> Result<(), Failure> {
    match command {
        Command::Bench(Bench::Store(args)) => bench_store(&args, settings).await,
        Command::Bench(Bench::Queue(args)) => bench_queue(&args, settings).await,
    }
}

async fn bench_queue(args: &BenchQueueArgs, settings: &Settings) -> Result<(), Failure> {
    let params = if args.quick {
        bench_queue::Params::quick()
    } else {
        bench_queue::Params::standard(args.duration)
    };
    // Without an explicit store, measure both local backends, each part on a fresh store (the
    // embedded ones in a temporary directory, removed afterwards).
    let targets = if settings.store_is_explicit() {
        vec![bench_queue::Target::named(&settings.store)?]
    } else {
        vec![
            bench_queue::Target::memory(),
            bench_queue::Target::temp_embedded()?,
        ]
    };
    if !args.json {
        eprintln!(
            "steward bench queue: throughput and fairness on {} store(s)",
            targets.len()
        );
    }
    let report = bench_queue::run(&targets, &params, !args.json).await;
    drop(targets);
    let report = report?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::from)
            .map_err(steward_store::Error::Io)?;
        println!("{json}");
    } else {
        print!("{}", bench_queue::render_table(&report));
    }
    Ok(())
}

async fn bench_store(args: &BenchStoreArgs, settings: &Settings) -> Result<(), Failure> {
    let duration = if args.quick {
        QUICK_DURATION
    } else {
        args.duration
    };
    // Without an explicit store, measure both local backends; the embedded one in a fresh
    // temporary directory (removed afterwards), not in the default data directory.
    let mut temp_dir = None;
    let targets = if settings.store_is_explicit() {
        vec![bench::Target {
            label: settings.store.clone(),
            db: Database::open(&settings.store)?,
            clean_up: true,
        }]
    } else {
        let dir = tempfile::Builder::new()
            .prefix("steward-bench-")
            .tempdir()
            .map_err(steward_store::Error::Io)?;
        let url = StoreUrl::Embedded(dir.path().to_path_buf()).to_string();
        let embedded = Database::open(&url)?;
        temp_dir = Some(dir);
        vec![
            bench::Target {
                label: "memory:".to_string(),
                db: Database::memory(),
                clean_up: false,
            },
            bench::Target {
                label: url,
                db: embedded,
                clean_up: false,
            },
        ]
    };
    if !args.json {
        eprintln!(
            "steward bench store: {} scenario(s) x {} store(s), {:.1} s each",
            bench::SCENARIOS.len(),
            targets.len(),
            duration.as_secs_f64()
        );
    }
    let options = bench::Options {
        duration,
        progress: !args.json,
    };
    let report = bench::run(&targets, options).await;
    // Close the stores before their temporary directory goes.
    drop(targets);
    drop(temp_dir);
    let report = report?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::from)
            .map_err(steward_store::Error::Io)?;
        println!("{json}");
    } else {
        print!("{}", bench::render_table(&report));
    }
    Ok(())
}
