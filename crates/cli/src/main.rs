//! # `steward`: the command of the Steward job system
//!
//! Wires configuration, the store, the records, the queue, the API and the workers together.
//!
//! - `steward dev`: API, workers and scheduler in one process on the embedded store, with a
//!   development key and tenant, printing the URL and a ready-to-use token (`--demo` loads
//!   related sessions so summaries and advice work at once);
//! - `steward api`, `steward worker`, `steward scheduler`: the production roles;
//! - `steward token`: mint a development token with the dev key;
//! - `steward tenant|user|jobs|cron|audit ...`: operator commands, HTTP clients of a running
//!   server (`--url`/`STEWARD_URL`, `--token`/`STEWARD_TOKEN`); `steward audit verify --direct`
//!   reads a store directly;
//! - `steward bench store|queue`: the benchmarks.
//!
//! # Layout
//! - `main.rs`: the command line (clap), logging, the runtime, exit codes;
//! - [`config`]: settings from flag > environment > config file > default;
//! - [`keys`]: secrets from files (production) or generated into the data directory (dev);
//! - [`serve`]: the long-running roles and the shutdown signal;
//! - [`demo`]: the development tenant and the demo sessions;
//! - [`client`]: the HTTP operator commands;
//! - [`bench`], [`bench_queue`]: the benchmarks, generic over any store.
//!
//! Exit codes: 0 success; 1 a failure at run time; 2 bad usage or configuration (clap's own
//! errors, an invalid config file, setting or store URL, a backend missing from this build, an
//! HTTP 4xx answer to an operator command).

/// Prints on stdout, ignoring a closed stdout (`steward ... | head`): never a panic for it.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// [`out!`] without the newline.
macro_rules! out_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

mod bench;
mod bench_queue;
mod client;
mod config;
mod demo;
mod keys;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use steward_api::auth::{mint_token, Claims, KeySet, SigningKey};
use steward_api::{ApiConfig, AppState};
use steward_models::Models;
use steward_store::{Database, StoreUrl};
use steward_workers::metrics::Readiness;
use steward_workers::WorkerConfig;

use crate::config::{ConfigError, Settings};
use crate::keys::{AuthSection, ModelsSection};
use crate::serve::{Core, Shutdown};

/// Steward, the background job system of a multi-tenant AI IDE.
#[derive(Debug, Parser)]
#[command(name = "steward", version, arg_required_else_help = true)]
struct Cli {
    /// Store URL: `embedded:PATH`, `memory:`, `fdb:` or `fdb:CLUSTER_FILE`
    /// [default: embedded:./steward-data]
    #[arg(long, env = "STEWARD_STORE", global = true, value_name = "URL")]
    store: Option<String>,

    /// TOML configuration file (`store`, and the sections [worker], [api], [auth], [models],
    /// [llm]; every key also as STEWARD_<SECTION>__<KEY>)
    #[arg(long, env = "STEWARD_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log format on stderr (`STEWARD_LOG` filters, e.g. `info,steward_workers=debug`)
    #[arg(
        long,
        env = "STEWARD_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API, workers and scheduler in one process on the embedded store (development)
    Dev(DevArgs),
    /// The HTTP API (production role)
    Api(ApiArgs),
    /// A worker: runs jobs, and the cron scheduler unless --no-scheduler (production role)
    Worker(WorkerArgs),
    /// The cron scheduler alone (workers run it too; safe at any replica count)
    Scheduler(SchedulerArgs),
    /// Mint a development access token with the dev key (prints only the token)
    Token(TokenArgs),
    /// Tenants (operator; over HTTP)
    #[command(subcommand)]
    Tenant(client::TenantCmd),
    /// Users of a tenant (operator; over HTTP)
    #[command(subcommand)]
    User(client::UserCmd),
    /// Jobs of the token's tenant (over HTTP)
    #[command(subcommand)]
    Jobs(client::JobsCmd),
    /// Cron schedules of the token's tenant (over HTTP)
    #[command(subcommand)]
    Cron(client::CronCmd),
    /// The tamper-evident audit log
    #[command(subcommand)]
    Audit(client::AuditCmd),
    /// Benchmarks
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Listen address of the API
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Load a demo tenant with related sessions and conversations
    #[arg(long)]
    demo: bool,
    /// Jobs run at once
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// Listen address [default: 127.0.0.1:8080, or `api.listen`]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Jobs run at once [default: 8, or `worker.concurrency`]
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Do not run the cron scheduler in this worker
    #[arg(long)]
    no_scheduler: bool,
    /// Where /metrics, /healthz and /readyz are served [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
struct SchedulerArgs {
    /// Where /metrics, /healthz and /readyz are served [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The tenant (`tid`)
    #[arg(long, value_name = "UUID")]
    tenant: uuid::Uuid,
    /// The user (`sub`) [default: "steward-cli"]
    #[arg(long, value_name = "UUID")]
    user: Option<uuid::Uuid>,
    /// A role (repeatable): owner, admin, member, agent, operator
    #[arg(long = "role", value_name = "ROLE", default_values_t = vec!["admin".to_string()])]
    roles: Vec<String>,
    /// Lifetime, e.g. 30m, 1h, 7d
    #[arg(long, value_name = "TTL", default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// The signing key (PKCS#8 PEM) [default: the dev key in the store's data directory]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit, e.g. 30m, 1h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" | "" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit is one of s, m, h, d")),
    };
    if secs == 0 || secs > 366 * 86_400 {
        return Err(format!("`{s}`: must be more than 0 and at most 366d"));
    }
    Ok(Duration::from_secs(secs))
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
    /// them in one transaction; the store benchmark's batched scenario runs in the same run, and
    /// the ratio of jobs/s to its keys/s is reported (target: at least 0.5). Fairness: small tenants' waits for a
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
    Usage(String),
    #[error("{0}")]
    Store(#[from] steward_store::Error),
    #[error("{0}")]
    Queue(#[from] steward_queue::Error),
    #[error("{0}")]
    Models(#[from] steward_models::Error),
    #[error("{0}")]
    Workers(#[from] steward_workers::Error),
    #[error("{0}")]
    Runtime(String),
    /// An operator command's request was refused (4xx): exit code 2.
    #[error("{0}")]
    Refused(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Config(_)
            | Failure::Usage(_)
            | Failure::Refused(_)
            | Failure::Workers(steward_workers::Error::Invalid { .. })
            | Failure::Store(
                steward_store::Error::InvalidUrl { .. }
                | steward_store::Error::BackendUnavailable { .. },
            ) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// mimalloc instead of glibc's allocator: the store's commit path allocates a key and a value
/// per write, and glibc's malloc/free took a quarter of its time in `steward bench queue`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
    let result = runtime.block_on(run(cli.command, &settings));
    // Do not wait for blocking tasks (e.g. a stdin reader) at exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Failure) -> ExitCode {
    eprintln!("error: {e}");
    e.exit_code()
}

/// Logs go to stderr; `STEWARD_LOG` (or `RUST_LOG`) filters them (default: info for Steward's
/// crates, warnings for the rest).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STEWARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            EnvFilter::new("warn,steward=info,steward_workers=info,steward_api=info")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command, settings: &Settings) -> Result<(), Failure> {
    match command {
        Command::Dev(args) => dev(&args, settings).await,
        Command::Api(args) => api(&args, settings).await,
        Command::Worker(args) => worker(&args, settings).await,
        Command::Scheduler(args) => scheduler(&args, settings).await,
        Command::Token(args) => token(&args, settings),
        Command::Tenant(cmd) => client::tenant(cmd).await,
        Command::User(cmd) => client::user(cmd).await,
        Command::Jobs(cmd) => client::jobs(cmd).await,
        Command::Cron(cmd) => client::cron(cmd).await,
        Command::Audit(cmd) => client::audit(cmd, settings).await,
        Command::Bench(Bench::Store(args)) => bench_store(&args, settings).await,
        Command::Bench(Bench::Queue(args)) => bench_queue(&args, settings).await,
    }
}

/// The worker settings: `[worker]` overridden by the flags, validated.
fn worker_config(
    settings: &Settings,
    concurrency: Option<usize>,
    metrics_addr: Option<String>,
    no_scheduler: bool,
) -> Result<WorkerConfig, Failure> {
    let mut c: WorkerConfig = settings.section("worker")?;
    if let Some(n) = concurrency {
        c.concurrency = n;
        if c.claim_batch > n {
            c.claim_batch = 0;
        }
    }
    if let Some(a) = metrics_addr {
        c.metrics_addr = a;
    }
    if no_scheduler {
        c.scheduler = false;
    }
    c.validate().map_err(|e| match e {
        steward_workers::Error::Invalid { field, message } => {
            Failure::Config(ConfigError::setting(field, message))
        }
        other => Failure::Workers(other),
    })?;
    Ok(c)
}

/// `[api]` in the config file (the API's own struct holds durations; these are seconds).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ApiSection {
    listen: Option<SocketAddr>,
    body_limit: Option<usize>,
    request_timeout_secs: Option<u64>,
    rate_per_sec: Option<f64>,
    rate_burst: Option<u32>,
    advice_wait_secs: Option<u64>,
    external_kinds: Option<Vec<String>>,
    max_args_bytes: Option<usize>,
    ready_timeout_secs: Option<u64>,
    /// CIDRs of proxies whose `X-Forwarded-For` is believed (login throttling per address).
    trusted_proxies: Option<Vec<String>>,
    login_account_per_sec: Option<f64>,
    login_account_burst: Option<u32>,
    login_address_per_sec: Option<f64>,
    login_address_burst: Option<u32>,
}

fn api_config(settings: &Settings, listen: Option<SocketAddr>) -> Result<ApiConfig, Failure> {
    let s: ApiSection = settings.section("api")?;
    let auth: AuthSection = settings.section("auth")?;
    let mut c = ApiConfig::default();
    if let Some(v) = listen.or(s.listen) {
        c.listen = v;
    }
    if let Some(v) = s.body_limit {
        c.body_limit = v;
    }
    if let Some(v) = s.request_timeout_secs {
        c.request_timeout = Duration::from_secs(v);
    }
    if let Some(v) = s.rate_per_sec {
        c.tenant_rate.per_sec = v;
    }
    if let Some(v) = s.rate_burst {
        c.tenant_rate.burst = v;
    }
    if let Some(v) = s.advice_wait_secs {
        c.advice_wait = Duration::from_secs(v);
    }
    if let Some(v) = s.external_kinds {
        c.external_kinds = v;
    }
    if let Some(v) = s.max_args_bytes {
        c.max_args_bytes = v;
    }
    if let Some(v) = s.ready_timeout_secs {
        c.ready_timeout = Duration::from_secs(v);
    }
    if let Some(v) = s.trusted_proxies {
        c.trusted_proxies = v
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, steward_api::ConfigError>>()
            .map_err(|e| Failure::Config(ConfigError::setting("api.trusted_proxies", e.message)))?;
    }
    if let Some(v) = s.login_account_per_sec {
        c.login.per_account.per_sec = v;
    }
    if let Some(v) = s.login_account_burst {
        c.login.per_account.burst = v;
    }
    if let Some(v) = s.login_address_per_sec {
        c.login.per_address.per_sec = v;
    }
    if let Some(v) = s.login_address_burst {
        c.login.per_address.burst = v;
    }
    if let Some(v) = auth.issuer {
        c.issuer = v;
    }
    if let Some(v) = auth.audience {
        c.audience = v;
    }
    if let Some(v) = auth.access_ttl_secs {
        c.access_ttl = Duration::from_secs(v);
    }
    if let Some(v) = auth.leeway_secs {
        c.leeway = Duration::from_secs(v);
    }
    c.validate().map_err(|e| {
        Failure::Config(ConfigError::setting(
            format!("api.{}", e.field.trim_start_matches("api.")),
            e.message,
        ))
    })?;
    Ok(c)
}

fn open_store(settings: &Settings) -> Result<Database, Failure> {
    let options = settings.open_options().map_err(Failure::Config)?;
    Database::open_with(&settings.store, options).map_err(|e| match e {
        steward_store::Error::InvalidUrl { .. }
        | steward_store::Error::BackendUnavailable { .. } => Failure::Store(e),
        other => Failure::Runtime(format!("cannot open the store {}: {other}", settings.store)),
    })
}

/// The production keys and an opened core (store, records, queue).
async fn production_core(
    settings: &Settings,
    need_jwt: bool,
) -> Result<(Core, keys::Keys), Failure> {
    let auth: AuthSection = settings.section("auth")?;
    let models_section: ModelsSection = settings.section("models")?;
    let mut keys = keys::from_files(&auth, &models_section, need_jwt)?;
    let db = open_store(settings)?;
    let models = Models::open(db.clone(), keys.models.clone()).await?;
    keys.models = models.config().clone();
    let queue = serve::open_queue(&db)?;
    Ok((
        Core {
            db,
            models: Arc::new(models),
            queue,
        },
        keys,
    ))
}

async fn worker(args: &WorkerArgs, settings: &Settings) -> Result<(), Failure> {
    let config = worker_config(
        settings,
        args.concurrency,
        args.metrics_addr.clone(),
        args.no_scheduler,
    )?;
    let (core, _keys) = production_core(settings, false).await?;
    let shutdown = Shutdown::on_signals();
    let registry = serve::registry(&core, settings)?;
    steward_workers::metrics::prometheus();
    let stats = serve::run_worker(
        &core,
        config,
        registry,
        Readiness::default(),
        &shutdown,
        true,
    )
    .await?;
    eprintln!("steward worker: stopped after {} attempts", stats.total());
    Ok(())
}

async fn scheduler(args: &SchedulerArgs, settings: &Settings) -> Result<(), Failure> {
    let config = worker_config(settings, None, args.metrics_addr.clone(), false)?;
    let (core, _keys) = production_core(settings, false).await?;
    let shutdown = Shutdown::on_signals();
    serve::run_scheduler_only(&core, &config, &shutdown).await
}

async fn api(args: &ApiArgs, settings: &Settings) -> Result<(), Failure> {
    let config = api_config(settings, args.listen)?;
    let (core, keys) = production_core(settings, true).await?;
    let shutdown = Shutdown::on_signals();
    let listen = config.listen;
    let state = app_state(&core, keys.jwt_verify, keys.jwt_signing, config)?;
    let listener = bind(listen).await?;
    eprintln!("steward api: listening on http://{listen}");
    steward_api::serve(listener, steward_api::router(state), shutdown.wait())
        .await
        .map_err(|e| Failure::Runtime(format!("API listener: {e}")))
}

fn app_state(
    core: &Core,
    verify: KeySet,
    signing: Option<SigningKey>,
    config: ApiConfig,
) -> Result<AppState, Failure> {
    let state = AppState::new(
        core.queue.clone(),
        (*core.models).clone(),
        verify,
        config,
        core.db.clock().clone(),
    )
    .map_err(|e| Failure::Config(ConfigError::setting(e.field, e.message)))?
    .with_metrics(steward_workers::metrics::prometheus().clone());
    Ok(match signing {
        Some(k) => state.with_signing_key(k),
        None => state,
    })
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {addr}: {e}")))
}

/// The data directory of an embedded store URL.
fn data_dir(settings: &Settings) -> Option<PathBuf> {
    match settings.store.parse::<StoreUrl>() {
        Ok(StoreUrl::Embedded(path)) => Some(path),
        _ => None,
    }
}

async fn dev(args: &DevArgs, settings: &Settings) -> Result<(), Failure> {
    let worker_cfg = worker_config(settings, args.concurrency, Some(String::new()), false)?;
    let mut api_cfg = api_config(settings, Some(args.listen))?;
    // The development kind `dev.sleep` may be enqueued over HTTP.
    if !api_cfg.external_kinds.iter().any(|k| k == serve::DEV_SLEEP) {
        api_cfg.external_kinds.push(serve::DEV_SLEEP.to_string());
    }
    let db = open_store(settings)?;
    // The keys live beside the embedded store; on memory: in a directory for this process.
    let temp_keys;
    let dir = data_dir(settings);
    let keys_dir = match &dir {
        Some(d) => d.join("keys"),
        None => {
            temp_keys = tempfile::tempdir().map_err(|e| Failure::Runtime(e.to_string()))?;
            temp_keys.path().to_path_buf()
        }
    };
    let keys = keys::development(&keys_dir).map_err(Failure::Runtime)?;
    let models = Models::open(db.clone(), keys.models.clone()).await?;
    let queue = serve::open_queue(&db)?;
    let core = Core {
        db,
        models: Arc::new(models),
        queue,
    };
    let mut identity = demo::ensure_dev_tenant(&core.models, &core.queue, dir.as_deref()).await?;
    if args.demo {
        demo::load_demo(&core.models, &core.queue, dir.as_deref(), &mut identity).await?;
    }
    let signing = keys
        .jwt_signing
        .clone()
        .ok_or_else(|| Failure::Runtime("no development signing key".into()))?;
    let token = mint(
        &signing,
        &api_cfg,
        identity.user.to_string(),
        identity.tenant,
        vec!["owner".into(), "admin".into()],
        Duration::from_secs(24 * 3600),
    )?;
    let listener = bind(args.listen).await?;
    let shutdown = Shutdown::on_signals();
    let readiness = Readiness::default();
    let state = app_state(&core, keys.jwt_verify, keys.jwt_signing, api_cfg)?;
    let api_task = tokio::spawn(steward_api::serve(
        listener,
        steward_api::router(state),
        shutdown.wait(),
    ));
    let url = format!("http://{}", args.listen);
    out!("Steward is running at {url} (store {})", settings.store);
    out!("Tenant: {}", identity.tenant);
    if !identity.demo_sessions.is_empty() {
        let ids: Vec<String> = identity
            .demo_sessions
            .iter()
            .map(ToString::to_string)
            .collect();
        out!("Demo sessions: {}", ids.join(" "));
    }
    out!("Development token (24 h):\n{token}");
    out!("Try: curl -H \"Authorization: Bearer $TOKEN\" {url}/v1/queue/stats   (Ctrl-C stops)");
    let mut registry = serve::registry(&core, settings)?;
    registry.register(serve::DevSleep)?;
    let stats = serve::run_worker(&core, worker_cfg, registry, readiness, &shutdown, false).await?;
    match api_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::Runtime(format!("API listener: {e}"))),
        Err(e) => return Err(Failure::Runtime(format!("API task: {e}"))),
    }
    eprintln!("steward dev: stopped after {} job attempts", stats.total());
    Ok(())
}

fn mint(
    key: &SigningKey,
    config: &ApiConfig,
    sub: String,
    tenant: uuid::Uuid,
    roles: Vec<String>,
    ttl: Duration,
) -> Result<String, Failure> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims::new(
        &config.issuer,
        &config.audience,
        sub,
        tenant,
        roles,
        now,
        ttl,
    );
    mint_token(key, &claims).map_err(|e| Failure::Runtime(format!("cannot sign the token: {e}")))
}

fn token(args: &TokenArgs, settings: &Settings) -> Result<(), Failure> {
    const ROLES: &[&str] = &["owner", "admin", "member", "agent", "operator"];
    if let Some(bad) = args.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
        return Err(Failure::Usage(format!(
            "--role {bad}: one of {}",
            ROLES.join(", ")
        )));
    }
    let key = match &args.key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("--key {}: {e}", path.display())))?;
            SigningKey::from_pem(&pem)
                .map_err(|e| Failure::Usage(format!("--key {}: {e}", path.display())))?
        }
        None => {
            let dir = data_dir(settings).ok_or_else(|| {
                Failure::Usage(
                    "without --key the dev key is read from the embedded store's directory; \
                     this store is not embedded"
                        .into(),
                )
            })?;
            keys::existing_dev_signing_key(&dir.join("keys")).map_err(Failure::Usage)?
        }
    };
    let config = api_config(settings, None)?;
    let sub = args
        .user
        .map_or_else(|| "steward-cli".to_string(), |u| u.to_string());
    out!(
        "{}",
        mint(
            &key,
            &config,
            sub,
            args.tenant,
            args.roles.clone(),
            args.ttl
        )?
    );
    Ok(())
}

async fn bench_queue(args: &BenchQueueArgs, settings: &Settings) -> Result<(), Failure> {
    let params = if args.quick {
        bench_queue::Params::quick()
    } else {
        bench_queue::Params::standard(args.duration)
    };
    let options = settings.open_options().map_err(Failure::Config)?;
    // Without an explicit store, measure both local backends, each part on a fresh store (the
    // embedded ones in a temporary directory, removed afterwards).
    let targets = if settings.store_is_explicit() {
        vec![bench_queue::Target::named(&settings.store, options)?]
    } else {
        vec![
            bench_queue::Target::memory(),
            bench_queue::Target::temp_embedded(options)?,
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
        out!("{json}");
    } else {
        out_raw!("{}", bench_queue::render_table(&report));
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
    let options = settings.open_options().map_err(Failure::Config)?;
    let mut temp_dir = None;
    let targets = if settings.store_is_explicit() {
        vec![bench::Target {
            label: settings.store.clone(),
            db: Database::open_with(&settings.store, options)?,
            clean_up: true,
        }]
    } else {
        let dir = tempfile::Builder::new()
            .prefix("steward-bench-")
            .tempdir()
            .map_err(steward_store::Error::Io)?;
        let url = StoreUrl::Embedded(dir.path().to_path_buf()).to_string();
        let embedded = Database::open_with(&url, options)?;
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
        out!("{json}");
    } else {
        out_raw!("{}", bench::render_table(&report));
    }
    Ok(())
}
