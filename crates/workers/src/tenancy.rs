//! What a tenant's plan means for the queue: the one mapping from the records' plan limits to
//! the queue's per-tenant settings, used wherever a tenant is created or its plan changes (the
//! API's operator endpoints, `steward dev`).

use steward_models::PlanLimits;
use steward_queue::TenantQueueConfig;

/// The queue settings a tenant's plan limits imply: its fair-share weight, its most running
/// and queued jobs (no limit on queued bytes beyond the queue's own).
#[must_use]
pub fn queue_config(limits: &PlanLimits) -> TenantQueueConfig {
    TenantQueueConfig {
        weight: limits.queue_weight,
        max_running: Some(limits.max_running),
        max_queued: Some(u64::from(limits.max_queued)),
        max_queued_bytes: None,
    }
}
