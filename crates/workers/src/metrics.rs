//! Prometheus metrics of the worker (through the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`), and the small listener that serves them with `/healthz` and
//! `/readyz`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `steward_jobs_total` | counter | `kind`, `outcome` (completed, retry, failed, snoozed, cancelled, timed_out, panicked, lease_lost, released) |
//! | `steward_job_run_seconds` | histogram | `kind` |
//! | `steward_job_wait_seconds` | histogram | `kind` (claim time - max(enqueue, run_at)) |
//! | `steward_jobs_running` | gauge | |
//! | `steward_leases_lost_total` | counter | `kind` |
//! | `steward_queue_depth` | gauge | `tenant`, `state` (queued, scheduled, running) |
//! | `steward_claim_errors_total` | counter | |
//! | `steward_cron_ticks_total` | counter | `outcome` |
//! | `steward_llm_tokens_total` | counter | `provider`, `direction` (input, output); per tenant in the store (`WorkspaceSessions::llm_usage`) |
//! | `steward_summaries_total` | counter | `method` (llm, extractive) |

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use steward_store::Database;

use crate::error::{Error, Result};

pub(crate) const JOBS_TOTAL: &str = "steward_jobs_total";
pub(crate) const JOB_RUN_SECONDS: &str = "steward_job_run_seconds";
pub(crate) const JOB_WAIT_SECONDS: &str = "steward_job_wait_seconds";
pub(crate) const JOBS_RUNNING: &str = "steward_jobs_running";
pub(crate) const LEASES_LOST: &str = "steward_leases_lost_total";
pub(crate) const QUEUE_DEPTH: &str = "steward_queue_depth";
pub(crate) const CLAIM_ERRORS: &str = "steward_claim_errors_total";
pub(crate) const CRON_TICKS: &str = "steward_cron_ticks_total";
pub(crate) const LLM_TOKENS: &str = "steward_llm_tokens_total";
pub(crate) const SUMMARIES: &str = "steward_summaries_total";

/// Histogram buckets in seconds: 1 ms to 15 min.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use; every crate's `metrics` calls
/// (the worker's and the API's) are rendered by it.
///
/// If another recorder was installed first, this one still renders, but only what is
/// recorded through it (nothing): install Steward's first.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        let upkeep = handle.clone();
        // Histograms are drained into their buckets on render and by this upkeep.
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .ok();
        handle
    })
}

/// Whether the process is ready for work (cleared when a graceful shutdown starts).
#[derive(Debug, Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            ready: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Readiness {
    /// Marks the process as shutting down: `/readyz` answers 503 from now on.
    pub fn shutting_down(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Whether the process accepts work.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct ProbeState {
    db: Database,
    readiness: Readiness,
}

/// `/healthz` (the process answers), `/readyz` (not shutting down and the store answers a read
/// within 2 s) and `/metrics` (Prometheus text).
pub fn probe_router(db: Database, readiness: Readiness) -> Router {
    prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(ProbeState { db, readiness })
}

async fn readyz(State(s): State<ProbeState>) -> impl IntoResponse {
    if !s.readiness.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        );
    }
    match store_answers(&s.db).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}

/// Whether the store hands out a read version within 2 s (for FoundationDB: the cluster is
/// reachable and has a quorum).
///
/// # Errors
/// The store's error, or a timeout message.
pub async fn store_answers(db: &Database) -> std::result::Result<(), String> {
    let read = async {
        let tx = db.create_transaction().map_err(|e| e.to_string())?;
        tx.read_version()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 2 s".into()),
    }
}

async fn render() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus().render(),
    )
}

/// Binds `addr` now (so a taken port is an error at start-up) and serves [`probe_router`] on
/// it in a task until `shutdown` resolves.
///
/// # Errors
/// [`Error::Listener`] if the address cannot be bound.
pub async fn spawn_probes(
    addr: &str,
    db: Database,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listener {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(addr = %addr, "metrics listener");
    let router = probe_router(db, readiness);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics listener failed");
        }
    }))
}

/// Sets `steward_queue_depth{tenant, state}` for up to `max_tenants` tenants of the directory
/// every `every`, until `shutdown` resolves. One replica doing it is enough; more only repeat
/// the same reads.
pub async fn run_depth_reporter(
    queue: Arc<steward_queue::Queue>,
    models: Arc<steward_models::Models>,
    every: Duration,
    max_tenants: usize,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        if let Err(e) = report_depth_once(&queue, &models, max_tenants).await {
            tracing::debug!(error = %e, "queue depth not reported");
        }
    }
}

async fn report_depth_once(
    queue: &steward_queue::Queue,
    models: &steward_models::Models,
    max_tenants: usize,
) -> Result<()> {
    use steward_queue::JobState;
    let mut after = None;
    let mut seen = 0;
    while seen < max_tenants {
        let page = models
            .tenants()
            .list_ids(after, 100.min(max_tenants - seen))
            .await?;
        for tenant in &page.items {
            let counts = queue.counts(*tenant).await?;
            for state in [JobState::Queued, JobState::Scheduled, JobState::Running] {
                let n = counts.get(&state).copied().unwrap_or(0);
                metrics::gauge!(QUEUE_DEPTH, "tenant" => tenant.to_string(), "state" => state.as_str())
                    .set(n as f64);
            }
        }
        seen += page.items.len();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(())
}
