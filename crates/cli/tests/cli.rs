//! End-to-end tests of the real `steward` binary.

use std::process::{Command, Output, Stdio};

fn steward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(args)
        // The tests decide the store; the caller's environment must not.
        .env_remove("STEWARD_STORE")
        .env_remove("STEWARD_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("the steward binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_bench_command_and_the_store_setting() {
    let out = steward(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    assert!(help.contains("bench") && help.contains("--store"), "{help}");
    assert!(help.contains("STEWARD_STORE"), "{help}");
}

#[test]
fn version_prints_the_package_version() {
    let out = steward(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("steward {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn quick_store_bench_on_memory_prints_json_with_positive_rates() {
    let out = steward(&["bench", "store", "--quick", "--json", "--store", "memory:"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert!(
        report["machine"]["cores"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let results = report["results"].as_array().expect("results");
    let scenarios: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["single", "batch", "concurrent"]);
    for r in results {
        assert_eq!(r["store"], "memory:", "{r}");
        assert!(r["txns"].as_u64().unwrap() > 0, "{r}");
        assert!(r["txn_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["keys_per_sec"].as_f64().unwrap() >= r["txn_per_sec"].as_f64().unwrap());
    }
}

#[test]
fn quick_store_bench_on_a_named_embedded_store_leaves_it_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("data").display());
    for _ in 0..2 {
        let out = steward(&["bench", "store", "--quick", "--store", &url]);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        let table = text(&out.stdout);
        assert!(table.contains("txn/s") && table.contains(&url), "{table}");
        assert!(table.contains("cores"), "{table}");
    }
    let data = dir.path().join("data");
    assert!(data.join("LOCK").exists());
    assert!(std::fs::read_dir(&data).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("wal-")));
}

#[test]
fn invalid_store_url_exits_2_naming_the_accepted_forms() {
    let out = steward(&["bench", "store", "--quick", "--store", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("embedded:PATH") && err.contains("memory:"),
        "{err}"
    );
}

#[test]
fn store_from_the_config_file_is_used_and_the_flag_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(&config, "store = \"bogus:x\"\n").unwrap();
    let config = config.to_str().unwrap();
    let out = steward(&["--config", config, "bench", "store", "--quick"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("config file"), "{out:?}");
    let out = steward(&[
        "--config", config, "bench", "store", "--quick", "--json", "--store", "memory:",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
}

#[test]
fn unknown_command_exits_2() {
    let out = steward(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn quick_store_bench_without_a_store_measures_memory_and_a_temporary_embedded_store() {
    let work = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["bench", "store", "--quick", "--json"])
        .env_remove("STEWARD_STORE")
        .env_remove("STEWARD_CONFIG")
        .env("TMPDIR", tmp.path())
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stores: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["store"].as_str().unwrap())
        .collect();
    assert_eq!(stores.len(), 6, "{stores:?}");
    assert!(stores[..3].iter().all(|s| *s == "memory:"), "{stores:?}");
    assert!(
        stores[3..]
            .iter()
            .all(|s| s.starts_with("embedded:") && s.contains(tmp.path().to_str().unwrap())),
        "{stores:?}"
    );
    // The temporary store is removed, and the default data directory is never touched.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert!(!work.path().join("steward-data").exists());
}

#[test]
fn quick_queue_bench_on_memory_reports_throughput_and_both_fairness_phases() {
    let out = steward(&["bench", "queue", "--quick", "--json", "--store", "memory:"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert!(
        report["machine"]["cores"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{report}");
    let r = &results[0];
    assert_eq!(r["store"], "memory:", "{r}");
    assert!(r["durability"].as_str().unwrap().contains("none"), "{r}");
    assert!(r["throughput"]["jobs"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["throughput"]["jobs_per_sec"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert_eq!(r["ceiling"]["scenario"], "batch", "{r}");
    assert!(r["ceiling"]["keys_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["ratio_to_ceiling"].as_f64().unwrap() > 0.0, "{r}");
    let small_jobs = report["params"]["small_tenants"].as_u64().unwrap()
        * report["params"]["jobs_per_small_tenant"].as_u64().unwrap();
    let fairness = &r["fairness"];
    for (phase, flood) in [
        ("without_flood", 0),
        ("with_flood", report["params"]["flood"].as_u64().unwrap()),
    ] {
        let p = &fairness[phase];
        assert_eq!(p["small_jobs"].as_u64(), Some(small_jobs), "{phase}: {p}");
        assert_eq!(p["flood_jobs"].as_u64(), Some(flood), "{phase}: {p}");
        let (p50, p99) = (
            p["wait_p50_ms"].as_f64().unwrap(),
            p["wait_p99_ms"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p99, "{phase}: {p}");
    }
    assert!(report["params"]["flood"].as_u64().unwrap() > 0, "{report}");
    for ratio in ["p50_ratio", "p99_ratio"] {
        assert!(fairness[ratio].as_f64().unwrap() > 0.0, "{fairness}");
    }
    assert!(fairness["target_met"].is_boolean(), "{fairness}");
}

#[test]
fn queue_bench_table_names_the_durability_and_both_targets() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("data").display());
    let out = steward(&["bench", "queue", "--quick", "--store", &url]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let table = text(&out.stdout);
    for want in [
        "cores",
        "disk sync on every commit",
        "queue jobs/s",
        "ceiling keys/s",
        "without flood",
        "with flood",
        "p50 ratio",
    ] {
        assert!(table.contains(want), "{want} missing from:\n{table}");
    }
    assert!(table.contains(&url), "{table}");
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["bench", "store", "--quick", "--store", "memory:", "--json"])
        .env_remove("STEWARD_CONFIG")
        .env_remove("STEWARD_STORE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command prints (as `steward ... | head -0` would).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}
