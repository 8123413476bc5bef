//! Runs the conformance suite (`steward_store::conformance`) against every local backend, with
//! and without fault injection. Each module is one backend; each test in it is one case, e.g.
//! `memory::conflict_on_read_key_written_later`.

use steward_store::conformance::{Backend, Guard};
use steward_store::{Database, FaultConfig};

/// The `embedded:` backend, each store in its own temporary directory.
fn embedded() -> Backend {
    Backend::new("embedded", |options| async move {
        let dir = tempfile::tempdir()?;
        let db = Database::open_with(&format!("embedded:{}", dir.path().display()), options)?;
        Ok((db, Box::new(dir) as Guard))
    })
}

mod memory {
    steward_store::conformance_tests!(super::Backend::memory());
}

mod embedded {
    steward_store::conformance_tests!(super::embedded());
}

mod memory_chaos_1 {
    steward_store::conformance_tests!(
        super::Backend::memory().with_faults(super::FaultConfig::chaos(1))
    );
}

mod memory_chaos_2 {
    steward_store::conformance_tests!(
        super::Backend::memory().with_faults(super::FaultConfig::chaos(2))
    );
}

mod memory_chaos_3 {
    steward_store::conformance_tests!(
        super::Backend::memory().with_faults(super::FaultConfig::chaos(3))
    );
}

mod embedded_chaos_1 {
    steward_store::conformance_tests!(super::embedded().with_faults(super::FaultConfig::chaos(1)));
}

mod embedded_chaos_2 {
    steward_store::conformance_tests!(super::embedded().with_faults(super::FaultConfig::chaos(2)));
}

/// `run_all` (the entry point for running the whole suite in one test) runs every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_memory() {
    let names: std::collections::HashSet<&str> = steward_store::conformance::CASES
        .iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names.len(),
        steward_store::conformance::CASES.len(),
        "case names are unique"
    );
    steward_store::conformance::run_all(&Backend::memory()).await;
}
