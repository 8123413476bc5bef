//! What every handler shares: the queue, the records, the key set, the settings, the clock, the
//! rate limiters, and the optional signing key for login and refresh.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use steward_models::Models;
use steward_queue::Queue;
use steward_store::SharedClock;
use uuid::Uuid;

use crate::auth::{KeySet, SigningKey};
use crate::config::{ApiConfig, ConfigError};
use crate::limit::Buckets;

/// The handlers' shared state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) queue: Arc<Queue>,
    pub(crate) models: Models,
    pub(crate) keys: KeySet,
    pub(crate) config: ApiConfig,
    pub(crate) clock: SharedClock,
    pub(crate) signing_key: Option<SigningKey>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) tenant_rate: Buckets<Uuid>,
    pub(crate) login_account: Buckets<(Uuid, String)>,
    pub(crate) login_address: Buckets<IpAddr>,
    pub(crate) allowed_kinds: BTreeSet<String>,
}

impl AppState {
    /// The state over `queue` and `models` (the same store), verifying tokens with `keys`.
    /// `clock` drives token expiry and the rate limiters (use the store's clock).
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting out of bounds; `auth.keys` if `keys` is empty.
    pub fn new(
        queue: Arc<Queue>,
        models: Models,
        keys: KeySet,
        config: ApiConfig,
        clock: SharedClock,
    ) -> Result<AppState, ConfigError> {
        config.validate()?;
        if keys.is_empty() {
            return Err(ConfigError {
                field: "auth.keys",
                message: "at least one verification key is needed".into(),
            });
        }
        let allowed_kinds = crate::kinds::builtin()
            .iter()
            .map(|k| (*k).to_string())
            .chain(config.external_kinds.iter().cloned())
            .collect();
        Ok(AppState {
            inner: Arc::new(Inner {
                tenant_rate: Buckets::new(config.tenant_rate, Arc::clone(&clock)),
                login_account: Buckets::new(config.login.per_account, Arc::clone(&clock)),
                login_address: Buckets::new(config.login.per_address, Arc::clone(&clock)),
                queue,
                models,
                keys,
                config,
                clock,
                signing_key: None,
                metrics: None,
                allowed_kinds,
            }),
        })
    }

    fn map_inner(self, f: impl FnOnce(&mut Inner)) -> AppState {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                f(&mut inner);
                AppState {
                    inner: Arc::new(inner),
                }
            }
            // Shared already (a router was built): rebuild a copy with the change.
            Err(shared) => {
                let mut inner = Inner {
                    queue: Arc::clone(&shared.queue),
                    models: shared.models.clone(),
                    keys: shared.keys.clone(),
                    config: shared.config.clone(),
                    clock: Arc::clone(&shared.clock),
                    signing_key: shared.signing_key.clone(),
                    metrics: shared.metrics.clone(),
                    tenant_rate: Buckets::new(shared.config.tenant_rate, Arc::clone(&shared.clock)),
                    login_account: Buckets::new(
                        shared.config.login.per_account,
                        Arc::clone(&shared.clock),
                    ),
                    login_address: Buckets::new(
                        shared.config.login.per_address,
                        Arc::clone(&shared.clock),
                    ),
                    allowed_kinds: shared.allowed_kinds.clone(),
                };
                f(&mut inner);
                AppState {
                    inner: Arc::new(inner),
                }
            }
        }
    }

    /// Enables login and refresh: access tokens are signed with `key` (whose public half must
    /// be in the key set for them to be accepted).
    #[must_use]
    pub fn with_signing_key(self, key: SigningKey) -> AppState {
        self.map_inner(|i| i.signing_key = Some(key))
    }

    /// Serves `/metrics` from this handle of the process's Prometheus recorder (the `metrics`
    /// facade's global recorder, which the workers record into as well); without one
    /// `/metrics` answers 404.
    #[must_use]
    pub fn with_metrics(self, handle: PrometheusHandle) -> AppState {
        self.map_inner(|i| i.metrics = Some(handle))
    }

    /// The queue.
    #[must_use]
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// The records.
    #[must_use]
    pub fn models(&self) -> &Models {
        &self.inner.models
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    pub(crate) fn now_micros(&self) -> i64 {
        self.inner.clock.now_micros()
    }
}
