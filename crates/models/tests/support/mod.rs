//! Small factories shared by the models' integration tests, and [`backend_tests!`], which runs
//! a case on three backends:
//!
//! - `memory`: the in-memory store;
//! - `memory_faults`: the same store behind [`FaultConfig::chaos`] (conflicts,
//!   `commit_unknown_result` applied and not applied, `transaction_too_old`, latency) on every
//!   transaction the repositories run;
//! - `embedded`: the durable embedded store in a temporary directory.
//!
//! Every case gets its own database and its own [`ManualClock`] (shared with the database: the
//! repositories read time from `db.clock()`), and makes its own tenants. Nothing sleeps for an
//! expiry: cases move the clock.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::time::Duration;

use steward_models::{
    Models, ModelsConfig, NewTenant, NewUser, Plan, Role, Tenant, TenantKind, User,
};
use steward_store::{Database, FaultConfig, KeyValue, ManualClock, OpenOptions, RangeOption};
use uuid::Uuid;

/// Where every clock starts (2023-11-14, in µs since the epoch).
pub(crate) const T0: i64 = 1_700_000_000_000_000;
/// A password the weak test profile accepts.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// The store a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    MemoryFaults,
    Embedded,
}

/// One case's world.
#[derive(Debug)]
pub(crate) struct Env {
    /// The repositories under test (over `db`).
    pub(crate) models: Models,
    /// The database they use: faulty on `memory_faults`.
    pub(crate) db: Database,
    /// The same store without fault injection, to inspect raw keys.
    pub(crate) raw: Database,
    /// The clock the store and the repositories read.
    pub(crate) clock: ManualClock,
    pub(crate) backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

/// A stable seed from a case's name.
/// The seed of a test: from its name, mixed with `STEWARD_TEST_SEED` when set (to soak the
/// fault-injected cases with other sequences of faults).
pub(crate) fn seed_of(name: &str) -> u64 {
    let extra: u64 = std::env::var("STEWARD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ extra, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Env {
    /// A fresh store of `backend` with the test configuration.
    pub(crate) async fn new(backend: Backend, name: &str) -> Env {
        Env::with_config(backend, name, ModelsConfig::for_tests()).await
    }

    /// A fresh store of `backend` with `config`.
    pub(crate) async fn with_config(backend: Backend, name: &str, config: ModelsConfig) -> Env {
        let seed = seed_of(name);
        let clock = ManualClock::new(T0);
        let options = OpenOptions {
            clock: clock.shared(),
            seed: Some(seed),
            ..Default::default()
        };
        let (raw, dir) = match backend {
            Backend::Memory | Backend::MemoryFaults => (Database::memory_with(options), None),
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("embedded:{}", dir.path().display());
                (
                    Database::open_with(&url, options).expect("open embedded"),
                    Some(dir),
                )
            }
        };
        let db = match backend {
            Backend::MemoryFaults => raw.with_faults(FaultConfig::chaos(seed)),
            _ => raw.clone(),
        };
        let config = ModelsConfig {
            id_seed: Some(seed),
            ..config
        };
        let models = Models::open(db.clone(), config).await.expect("open models");
        Env {
            models,
            db,
            raw,
            clock,
            backend,
            _dir: dir,
        }
    }

    /// A new tenant named `name`.
    pub(crate) async fn tenant(&self, name: &str) -> Tenant {
        self.models
            .tenants()
            .create(NewTenant::new(name, TenantKind::Organization, Plan::Pro))
            .await
            .expect("create tenant")
    }

    /// A new member of `tenant` with [`PASSWORD`].
    pub(crate) async fn user(&self, tenant: Uuid, email: &str) -> User {
        self.models
            .users()
            .create(
                tenant,
                NewUser::new(email, [Role::Member])
                    .display_name("Test User")
                    .password(PASSWORD),
            )
            .await
            .expect("create user")
    }

    /// Every key-value pair in the store (user keyspace), read without faults.
    pub(crate) async fn all_pairs(&self) -> Vec<KeyValue> {
        let tx = self.raw.create_transaction().expect("tx");
        tx.get_range_all(&RangeOption::new(b"".to_vec(), b"\xff".to_vec()))
            .await
            .expect("scan")
    }

    /// Moves time forward.
    pub(crate) fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// Runs each listed `async fn name(backend: Backend)` on memory, memory with faults, and
/// embedded.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Memory, stringify!($name)).await;
                }
            )*
        }
        mod memory_faults {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::MemoryFaults, stringify!($name)).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Embedded, stringify!($name)).await;
                }
            )*
        }
    };
}

/// A delete reported whether the record existed. Under injected `commit_unknown_result` its
/// retry may find it already gone (deleted by the attempt that did commit), so only the other
/// backends must say true.
pub(crate) fn assert_existed(env: &Env, existed: bool) {
    assert!(
        existed || env.backend == Backend::MemoryFaults,
        "the record did not exist"
    );
}
