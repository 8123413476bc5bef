//! Runs the cross-session context evaluation on a fresh in-memory store and prints its numbers
//! (`docs/context.md` explains them):
//!
//! ```text
//! cargo run -p steward-workers --example context_eval --release [-- SEED [--json]]
//! ```
//!
//! Exits non-zero when leakage is not 0 or a result went over its budget.

use std::process::ExitCode;

use steward_models::{Models, ModelsConfig};
use steward_store::{Database, ManualClock, OpenOptions};
use steward_workers::context::eval::{run, EvalConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut seed = 7u64;
    let mut json = false;
    for arg in std::env::args().skip(1) {
        if arg == "--json" {
            json = true;
        } else if let Ok(s) = arg.parse() {
            seed = s;
        } else {
            eprintln!("usage: context_eval [SEED] [--json]");
            return ExitCode::from(2);
        }
    }
    let clock = ManualClock::new(1_767_225_600_000_000);
    let db = Database::memory_with(OpenOptions {
        clock: clock.shared(),
        seed: Some(seed),
        ..Default::default()
    });
    let config = ModelsConfig {
        id_seed: Some(seed),
        ..ModelsConfig::for_tests()
    };
    let models = match Models::open(db, config).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("open models: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let report = match run(&models, &EvalConfig::full(seed)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("evaluation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("json: {e}"),
        }
    } else {
        println!("cross-session context evaluation (seed {seed})");
        println!("{report}");
        println!("elapsed              {:.2?}", started.elapsed());
    }
    if report.leakage > 0 || report.budget_violations > 0 || report.max_budget_ratio > 1.0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
