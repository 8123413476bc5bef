//! The long-running roles: `steward worker`, `steward scheduler` (and the worker half of
//! `steward dev`). Opens the store, the records and the queue, builds the registry of built-in
//! kinds, and runs until SIGTERM or Ctrl-C.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use steward_models::Models;
use steward_queue::{Queue, QueueConfig};
use steward_store::Database;
use steward_workers::handlers::{builtin_registry, Services};
use steward_workers::metrics::{run_depth_reporter, spawn_probes, Readiness};
use steward_workers::scheduler::{install_default_schedules, run_scheduler};
use steward_workers::{Worker, WorkerConfig};
use tokio::sync::watch;

use steward_workers::llm::{LlmClient, LlmConfig, Provider};

use crate::config::{ConfigError, Settings};
use crate::Failure;

/// How often queue depth per tenant is exported, and for at most how many tenants.
const DEPTH_EVERY: Duration = Duration::from_secs(15);
const DEPTH_MAX_TENANTS: usize = 1000;

/// A shutdown signal shared by every task of the process: SIGTERM or Ctrl-C flips it once.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Listens for SIGTERM and Ctrl-C.
    pub(crate) fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            // Ignored error: nobody listens any more, so nobody needs telling.
            let _ = tx.send(true);
        });
        Shutdown { rx }
    }

    /// Resolves when shutdown was requested.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means the signal task is gone: treat it as a shutdown.
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What the worker side of a process needs.
pub(crate) struct Core {
    pub(crate) db: Database,
    pub(crate) models: Arc<Models>,
    pub(crate) queue: Arc<Queue>,
}

impl Core {
    pub(crate) fn services(&self, llm: Option<Arc<LlmClient>>) -> Services {
        Services {
            queue: self.queue.clone(),
            models: self.models.clone(),
            llm,
            summarize: steward_workers::summarize::SummarizeConfig::default(),
        }
    }
}

/// The LLM client of `[llm]` (`None` when `provider` is `none`: extractive summaries only).
pub(crate) fn llm_client(settings: &Settings) -> Result<Option<Arc<LlmClient>>, Failure> {
    let config: LlmConfig = settings.section("llm")?;
    if config.provider == Provider::None {
        return Ok(None);
    }
    let setting = |e: steward_workers::llm::LlmError| match e {
        steward_workers::llm::LlmError::Config { field, message } => {
            let field = field.trim_start_matches("llm.");
            Failure::Config(ConfigError::setting(format!("llm.{field}"), message))
        }
        other => Failure::Runtime(format!("LLM client: {other}")),
    };
    let http = steward_workers::llm::http_client(&config).map_err(setting)?;
    let client = LlmClient::new(config, http).map_err(setting)?;
    Ok(Some(Arc::new(client)))
}

/// Opens the queue over `db` (the records are opened by the caller, with their keys).
pub(crate) fn open_queue(db: &Database) -> Result<Arc<Queue>, Failure> {
    Ok(Arc::new(Queue::new(db.clone(), QueueConfig::default())?))
}

/// Runs the worker (and, unless turned off, the scheduler and the depth reporter) until
/// `shutdown`; serves the probes on `config.metrics_addr` unless it is empty or `probes` is
/// false (`steward dev` serves them on the API's listener).
pub(crate) async fn run_worker(
    core: &Core,
    config: WorkerConfig,
    registry: steward_workers::Registry,
    readiness: Readiness,
    shutdown: &Shutdown,
    probes: bool,
) -> Result<steward_workers::WorkerStats, Failure> {
    let scheduler = config.scheduler;
    if scheduler {
        install_default_schedules(&core.queue, &config.schedules).await?;
    }
    let metrics_addr = config.metrics_addr.clone();
    let worker = Worker::new(core.queue.clone(), Arc::new(registry), config)?
        .with_readiness(readiness.clone());
    let mut background = tokio::task::JoinSet::new();
    // The probes outlive the drain: /readyz answers 503 and /metrics keeps being scraped until
    // the worker has stopped, then the listener closes.
    let probes = if probes {
        Probes::open(core, &metrics_addr, &readiness).await?
    } else {
        None
    };
    if scheduler {
        background.spawn(run_scheduler(core.queue.clone(), shutdown.wait()));
    }
    background.spawn(run_depth_reporter(
        core.queue.clone(),
        core.models.clone(),
        DEPTH_EVERY,
        DEPTH_MAX_TENANTS,
        shutdown.wait(),
    ));
    let stats = worker.run(shutdown.wait()).await?;
    // The background loops stop on the same signal.
    while background.join_next().await.is_some() {}
    if let Some(p) = probes {
        p.close().await;
    }
    Ok(stats)
}

/// A process's probe listener (`/healthz`, `/readyz`, `/metrics`): bound at start-up (a taken
/// port is an error then), closed by [`Probes::close`] once the process has drained.
struct Probes {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Probes {
    /// Serves the probes on `addr`; `None` if it is empty.
    async fn open(
        core: &Core,
        addr: &str,
        readiness: &Readiness,
    ) -> Result<Option<Probes>, Failure> {
        if addr.is_empty() {
            return Ok(None);
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = spawn_probes(addr, core.db.clone(), readiness.clone(), async {
            // An error means the sender is gone: close as well.
            let _ = stopped.await;
        })
        .await
        .map_err(|e| Failure::Usage(format!("--metrics-addr: {e}")))?;
        eprintln!("steward: metrics, /healthz and /readyz on http://{addr}");
        Ok(Some(Probes { stop, task }))
    }

    async fn close(self) {
        // Ignored errors: the listener already stopped (and logged why).
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// `steward scheduler`: the cron loop only (and its probes).
pub(crate) async fn run_scheduler_only(
    core: &Core,
    config: &WorkerConfig,
    shutdown: &Shutdown,
) -> Result<(), Failure> {
    install_default_schedules(&core.queue, &config.schedules).await?;
    let readiness = Readiness::default();
    let probes = Probes::open(core, &config.metrics_addr, &readiness).await?;
    run_scheduler(core.queue.clone(), shutdown.wait()).await;
    readiness.shutting_down();
    if let Some(p) = probes {
        p.close().await;
    }
    Ok(())
}

/// The registry of built-in kinds over `core`, with the LLM of `[llm]`.
pub(crate) fn registry(
    core: &Core,
    settings: &Settings,
) -> Result<steward_workers::Registry, Failure> {
    let summarize: steward_workers::summarize::SummarizeConfig = settings.section("summarize")?;
    summarize.validate().map_err(|e| match e {
        steward_workers::summarize::SummarizeError::Config { field, message } => {
            let field = field.trim_start_matches("summarize.");
            Failure::Config(ConfigError::setting(format!("summarize.{field}"), message))
        }
        other => Failure::Runtime(other.to_string()),
    })?;
    let mut services = core.services(llm_client(settings)?);
    services.summarize = summarize;
    Ok(builtin_registry(&services)?)
}

/// `dev.sleep`, registered only by `steward dev`: sleeps `ms` milliseconds (at most ten
/// minutes) and returns them. For trying the queue by hand and for the end-to-end tests of
/// graceful shutdown and crashes.
#[derive(Debug)]
pub(crate) struct DevSleep;

/// The kind string of [`DevSleep`].
pub(crate) const DEV_SLEEP: &str = "dev.sleep";

/// Arguments of [`DevSleep`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DevSleepArgs {
    #[serde(default)]
    ms: u64,
}

impl steward_workers::Handler for DevSleep {
    type Args = DevSleepArgs;
    type Output = serde_json::Value;

    fn kind(&self) -> &'static str {
        DEV_SLEEP
    }

    async fn run(
        &self,
        _ctx: steward_workers::JobContext,
        args: DevSleepArgs,
    ) -> Result<serde_json::Value, steward_workers::JobError> {
        let ms = args.ms.min(600_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(serde_json::json!({ "slept_ms": ms }))
    }
}
