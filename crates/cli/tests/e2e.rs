//! End-to-end tests of the real `steward` binary: `steward dev` on a free port and a fresh
//! embedded store, driven over HTTP. A crash (`kill -9` under an enqueue load) loses no
//! acknowledged job; SIGTERM lets short jobs finish and releases the rest; summaries and advice
//! work on the demo sessions.

// Helpers outside `#[test]` functions unwrap too; clippy's `allow-unwrap-in-tests` does not
// see them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Dev {
    child: Child,
    url: String,
    token: String,
    tenant: String,
    demo_sessions: Vec<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `steward dev` on `dir` and waits until it printed its token and answers `/readyz`.
fn start_dev(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Dev {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let store = format!("embedded:{}", dir.display());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward"));
    cmd.args(["dev", "--store", &store, "--listen", &listen])
        .args(extra)
        .env_remove("STEWARD_CONFIG")
        .env_remove("STEWARD_STORE")
        .env("STEWARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut token = None;
    let mut demo_sessions = Vec::new();
    let mut tenant = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut expect_token = false;
    while token.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!(
                "steward dev printed no token ({e}); see {}.log",
                dir.display()
            )
        });
        if expect_token {
            token = Some(line.trim().to_string());
        } else if line.starts_with("Development token") {
            expect_token = true;
        } else if let Some(t) = line.strip_prefix("Tenant: ") {
            tenant = t.trim().to_string();
        } else if let Some(ids) = line.strip_prefix("Demo sessions: ") {
            demo_sessions = ids.split_whitespace().map(str::to_string).collect();
        }
    }
    Dev {
        child,
        url: format!("http://{listen}"),
        token: token.unwrap(),
        tenant,
        demo_sessions,
    }
}

/// Small async HTTP helpers over one client.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    fn new(dev: &Dev) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            url: dev.url.clone(),
            token: dev.token.clone(),
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until every job in `ids` is in one of `states`.
    async fn wait_states(&self, ids: &[String], states: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        for id in ids {
            loop {
                let j = self.job(id).await;
                if states.contains(&j["state"].as_str().unwrap_or("")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "job {id} still {} after {within:?}: {j}",
                    j["state"]
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn sleep_job(ms: u64, key: &str) -> Value {
    json!({"kind": "dev.sleep", "args": {"ms": ms}, "idempotency_key": key})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_enqueue_load_loses_no_acknowledged_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let env = [
        ("STEWARD_WORKER__LEASE_SECS", "5"),
        ("STEWARD_API__RATE_PER_SEC", "100000"),
        ("STEWARD_API__RATE_BURST", "100000"),
    ];
    let mut dev = start_dev(&dir, &["--concurrency", "4"], &env);
    let api = Api::new(&dev);
    api.wait_ready().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..6 {
        let (api, acked) = (api.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            for n in 0.. {
                let key = format!("load-{p}-{n}");
                match api.post("/v1/jobs", sleep_job(20, &key)).await {
                    Ok((201 | 200, body)) => {
                        acked
                            .lock()
                            .unwrap()
                            .push(body["id"].as_str().unwrap().to_string());
                    }
                    Ok((status, body)) => panic!("enqueue answered {status}: {body}"),
                    // The server died: stop producing.
                    Err(_) => break,
                }
            }
        }));
    }
    // Let the load and the workers run, then kill the process without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    for p in producers {
        p.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too little load to mean anything: {}",
        acked.len()
    );
    drop(dev);

    // Restart on the same store: the lock is free again, every acknowledged job is there and
    // ends completed (running ones after their lease expires).
    let dev = start_dev(&dir, &["--concurrency", "4"], &env);
    let api = Api::new(&dev);
    api.wait_ready().await;
    api.wait_states(&acked, &["completed"], Duration::from_secs(90))
        .await;
    // Every dev.sleep job the store holds ends completed (those enqueued as the process died,
    // never acknowledged, too), and every acknowledged one is among them.
    let mut cursor: Option<String> = None;
    let mut listed: BTreeSet<String> = BTreeSet::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?kind=dev.sleep&limit=500&cursor={c}"),
            None => "/v1/jobs?kind=dev.sleep&limit=500".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for j in page["jobs"].as_array().unwrap() {
            if j["state"] != "completed" {
                // Enqueued when the process died, never acknowledged: it must still run.
                api.wait_states(
                    &[j["id"].as_str().unwrap().to_string()],
                    &["completed"],
                    Duration::from_secs(60),
                )
                .await;
            }
            listed.insert(j["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !listed.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not listed: {missing:?}"
    );
    for id in &listed {
        let j = api.job(id).await;
        assert_eq!(j["state"], "completed", "{j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_short_jobs_and_releases_long_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let env = [("STEWARD_WORKER__SHUTDOWN_GRACE_SECS", "2")];
    let mut dev = start_dev(&dir, &["--concurrency", "6"], &env);
    let api = Api::new(&dev);
    api.wait_ready().await;
    let mut short = Vec::new();
    let mut long = Vec::new();
    for n in 0..4 {
        let (_, body) = api
            .post("/v1/jobs", sleep_job(800, &format!("short-{n}")))
            .await
            .unwrap();
        short.push(body["id"].as_str().unwrap().to_string());
    }
    for n in 0..2 {
        let (_, body) = api
            .post("/v1/jobs", sleep_job(600_000, &format!("long-{n}")))
            .await
            .unwrap();
        long.push(body["id"].as_str().unwrap().to_string());
    }
    let all: Vec<String> = short.iter().chain(&long).cloned().collect();
    api.wait_states(&all, &["running"], Duration::from_secs(30))
        .await;
    let pid = dev.child.id().to_string();
    let old_worker_suffix = format!("-{pid}");
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = dev.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "steward dev did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    drop(dev);

    let dev = start_dev(&dir, &["--concurrency", "1"], &[]);
    let api = Api::new(&dev);
    api.wait_ready().await;
    for id in &short {
        let j = api.job(id).await;
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(j["attempt"], 1, "{j}");
    }
    for id in &long {
        let j = api.job(id).await;
        // Released, not failed: no error recorded, and claimable at once: queued, or running
        // again on the restarted worker, never still under the stopped worker's lease.
        assert!(j["state"] == "queued" || j["state"] == "running", "{j}");
        if j["state"] == "running" {
            let holder = j["worker"].as_str().unwrap_or("");
            assert!(
                !holder.ends_with(&old_worker_suffix),
                "lease not released: {j}"
            );
        }
        assert_eq!(j["errors"], json!([]), "{j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sessions_get_summaries_and_advice_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let dev = start_dev(&dir, &["--demo"], &[]);
    let api = Api::new(&dev);
    api.wait_ready().await;
    assert_eq!(dev.demo_sessions.len(), 3, "the demo prints its sessions");
    // `--demo` enqueued one summary per session; wait for them.
    let (status, page) = api.get("/v1/jobs?kind=summarize_session").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<String> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{page}");
    api.wait_states(&ids, &["completed"], Duration::from_secs(60))
        .await;
    // A summary enqueued over HTTP for the fork, then read back.
    let fork = &dev.demo_sessions[1];
    let (status, body) = api
        .post(
            "/v1/jobs",
            json!({"kind": "summarize_session", "args": {"session_id": fork}}),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "{status} {body}");
    let id = body["id"].as_str().unwrap().to_string();
    api.wait_states(
        std::slice::from_ref(&id),
        &["completed"],
        Duration::from_secs(60),
    )
    .await;
    let (status, summary) = api.get(&format!("/v1/sessions/{fork}/summary")).await;
    assert_eq!(status, 200, "{summary}");
    let text = summary.to_string();
    assert!(
        text.contains("SQLite"),
        "the fork's summary mentions its decision: {text}"
    );
    // Advice for the third session about the database: the fork's reversed decision counts.
    let (status, advice) = api
        .post(
            &format!("/v1/sessions/{}/advice", dev.demo_sessions[2]),
            json!({"question": "Which database do we use for local development?", "token_budget": 400}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{advice}");
    let used = advice["tokens_used"].as_u64().unwrap();
    assert!(used <= 400, "over budget: {advice}");
    assert!(
        advice["context"].as_str().unwrap().contains("SQLite"),
        "{advice}"
    );
    // A kind nobody registered is refused, naming the field.
    let (status, _) = api
        .post("/v1/jobs", json!({"kind": "nope.unknown", "args": {}}))
        .await
        .unwrap();
    assert_eq!(status, 400, "unknown kinds are refused");
}

/// Runs the `steward` binary as an operator client of `dev`.
fn steward_client(dev: &Dev, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(args)
        .env("STEWARD_URL", &dev.url)
        .env("STEWARD_TOKEN", &dev.token)
        .env_remove("STEWARD_CONFIG")
        .env_remove("STEWARD_STORE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_talk_http_while_the_server_holds_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let dev = start_dev(&dir, &[], &[]);
    Api::new(&dev).wait_ready().await;
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = steward_client(
        &dev,
        &["jobs", "enqueue", "dev.sleep", "--args", r#"{"ms": 1}"#],
    );
    assert!(out.status.success(), "{}", text(&out));
    let enqueued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = enqueued["id"].as_str().unwrap().to_string();
    let out = steward_client(&dev, &["jobs", "show", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = steward_client(
        &dev,
        &[
            "cron",
            "set",
            "nightly",
            "--expression",
            "0 3 * * *",
            "--kind",
            "prune_jobs",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = steward_client(&dev, &["cron", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nightly"), "{}", text(&out));
    // A 4xx answer exits 2 with the server's message naming the field.
    let out = steward_client(&dev, &["jobs", "enqueue", "no.such.kind"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("kind"), "{}", text(&out));
    // Bad usage exits 2 before any request.
    let out = steward_client(&dev, &["jobs", "show", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = steward_client(&dev, &["jobs", "enqueue", "dev.sleep", "--args", "{oops"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The store is held by the server: a second server is refused, naming the holder.
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args([
            "worker",
            "--store",
            &format!("embedded:{}", dir.display()),
            "--metrics-addr",
            "",
        ])
        .env(
            "STEWARD_MODELS__REFRESH_TOKEN_KEY_FILE",
            dir.join("keys/refresh-token-key"),
        )
        .env(
            "STEWARD_MODELS__AUDIT_CHAIN_KEY_FILE",
            dir.join("keys/audit-chain-key"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("locked by pid"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_direct_reads_a_stopped_store_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut dev = start_dev(&dir, &[], &[]);
    let api = Api::new(&dev);
    api.wait_ready().await;
    let tenant = dev.tenant.clone();
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    let store = format!("embedded:{}", dir.display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_steward"))
            .args(args)
            .env_remove("STEWARD_CONFIG")
            .env_remove("STEWARD_STORE")
            .output()
            .unwrap()
    };
    let out = run(&[
        "audit", "verify", "--direct", "--tenant", &tenant, "--store", &store,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"intact\": true"), "{text}");
    // An unknown tenant and a missing store are bad usage, and nothing gets created.
    let other = uuid::Uuid::now_v7().to_string();
    let out = run(&[
        "audit", "verify", "--direct", "--tenant", &other, "--store", &store,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let missing = tmp.path().join("nope");
    let out = run(&[
        "audit",
        "verify",
        "--direct",
        "--tenant",
        &tenant,
        "--store",
        &format!("embedded:{}", missing.display()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!missing.exists(), "verification must not create a store");
}
