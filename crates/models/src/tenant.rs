//! [`Tenant`]: an account, its plan limits and feature flags; the global tenant directory kept
//! in the same transaction; export and deletion of a whole tenant.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use steward_store::{key_after, KeyValue, RangeOption};
use uuid::Uuid;

use crate::codec::{check_len, decode, encode, MAX_INLINE_VALUE};
use crate::error::{Error, Result};
use crate::keys::{self, TenantKeys};
use crate::{check_limit, Models, Page};

/// Shortest audit retention of any tenant (one year).
pub const MIN_AUDIT_RETENTION_DAYS: u32 = 366;
/// Shortest audit retention of a HIPAA tenant (six years, 45 CFR 164.316(b)(2)), leap days
/// included.
pub const HIPAA_MIN_AUDIT_RETENTION_DAYS: u32 = 6 * 365 + 2;
/// Longest tenant name, in bytes.
pub const MAX_TENANT_NAME_BYTES: usize = 256;
/// Most feature flags per tenant.
pub const MAX_FEATURE_FLAGS: usize = 256;
/// Longest feature flag name, in bytes.
pub const MAX_FEATURE_FLAG_BYTES: usize = 64;

/// A personal account or an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantKind {
    /// One person.
    Personal,
    /// A team or company.
    Organization,
}

/// The plan a tenant pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Free.
    Free,
    /// Pro.
    Pro,
    /// Enterprise.
    Enterprise,
}

/// What a plan allows; each tenant keeps its own copy, so a contract can override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlanLimits {
    /// The tenant's share when workers pick among tenants with due jobs (1 to 1000).
    pub queue_weight: u32,
    /// Most jobs running at once (1 to 10,000).
    pub max_running: u32,
    /// Most jobs queued or scheduled at once (1 to 10,000,000).
    pub max_queued: u32,
    /// Days audit events are kept before compaction may drop them (at least
    /// [`MIN_AUDIT_RETENTION_DAYS`], [`HIPAA_MIN_AUDIT_RETENTION_DAYS`] for HIPAA tenants).
    pub audit_retention_days: u32,
    /// Whether the tenant's data may be sent to third-party LLM providers.
    pub third_party_llm: bool,
}

impl Plan {
    /// The plan's default limits; a HIPAA tenant keeps audit events six years and does not send
    /// data to third-party LLMs unless its contract says otherwise.
    #[must_use]
    pub fn default_limits(self, hipaa: bool) -> PlanLimits {
        let mut l = match self {
            Plan::Free => PlanLimits {
                queue_weight: 1,
                max_running: 2,
                max_queued: 200,
                audit_retention_days: MIN_AUDIT_RETENTION_DAYS,
                third_party_llm: true,
            },
            Plan::Pro => PlanLimits {
                queue_weight: 4,
                max_running: 16,
                max_queued: 5_000,
                audit_retention_days: MIN_AUDIT_RETENTION_DAYS,
                third_party_llm: true,
            },
            Plan::Enterprise => PlanLimits {
                queue_weight: 16,
                max_running: 128,
                max_queued: 100_000,
                audit_retention_days: 2 * 366,
                third_party_llm: true,
            },
        };
        if hipaa {
            l.audit_retention_days = l.audit_retention_days.max(HIPAA_MIN_AUDIT_RETENTION_DAYS);
            l.third_party_llm = false;
        }
        l
    }
}

impl PlanLimits {
    /// Checks the bounds for a tenant with or without the HIPAA flag.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and its bound.
    pub fn validate(&self, hipaa: bool) -> Result<()> {
        if !(1..=1000).contains(&self.queue_weight) {
            return Err(Error::invalid(
                "limits.queue_weight",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=10_000).contains(&self.max_running) {
            return Err(Error::invalid(
                "limits.max_running",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_queued) {
            return Err(Error::invalid(
                "limits.max_queued",
                "must be between 1 and 10000000",
            ));
        }
        let min = if hipaa {
            HIPAA_MIN_AUDIT_RETENTION_DAYS
        } else {
            MIN_AUDIT_RETENTION_DAYS
        };
        if !(min..=36_600).contains(&self.audit_retention_days) {
            return Err(Error::invalid(
                "limits.audit_retention_days",
                format!(
                    "must be between {min} and 36600{}",
                    if hipaa { " for a HIPAA tenant" } else { "" }
                ),
            ));
        }
        Ok(())
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// UUIDv7.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Personal or organization.
    pub kind: TenantKind,
    /// The plan.
    pub plan: Plan,
    /// The limits in force (the plan's defaults unless overridden).
    pub limits: PlanLimits,
    /// Subject to HIPAA: six-year audit retention.
    pub hipaa: bool,
    /// Feature flags by name.
    pub feature_flags: BTreeMap<String, bool>,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch.
    pub updated_at: i64,
}

impl Tenant {
    /// Whether a feature flag is on (absent flags are off).
    #[must_use]
    pub fn flag(&self, name: &str) -> bool {
        self.feature_flags.get(name).copied().unwrap_or(false)
    }

    fn validate(&self) -> Result<()> {
        check_len("name", &self.name, MAX_TENANT_NAME_BYTES, true)?;
        self.limits.validate(self.hipaa)?;
        if self.feature_flags.len() > MAX_FEATURE_FLAGS {
            return Err(Error::invalid(
                "feature_flags",
                format!("at most {MAX_FEATURE_FLAGS} flags"),
            ));
        }
        for name in self.feature_flags.keys() {
            let ok = !name.is_empty()
                && name.len() <= MAX_FEATURE_FLAG_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !ok {
                return Err(Error::invalid(
                    "feature_flags",
                    format!(
                        "flag {name:?}: names are 1 to {MAX_FEATURE_FLAG_BYTES} bytes of a-z, \
                         0-9, '_', '.', '-'"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What [`Tenants::create`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    /// A chosen id (idempotent creation), or `None` for a new UUIDv7.
    pub id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// Personal or organization.
    pub kind: TenantKind,
    /// The plan.
    pub plan: Plan,
    /// Subject to HIPAA.
    pub hipaa: bool,
    /// Overrides of the plan's limits.
    pub limits: Option<PlanLimits>,
    /// Initial feature flags.
    pub feature_flags: BTreeMap<String, bool>,
}

impl NewTenant {
    /// A tenant with the plan's default limits and no flags.
    #[must_use]
    pub fn new(name: impl Into<String>, kind: TenantKind, plan: Plan) -> Self {
        NewTenant {
            id: None,
            name: name.into(),
            kind,
            plan,
            hipaa: false,
            limits: None,
            feature_flags: BTreeMap::new(),
        }
    }

    /// Flags the tenant as subject to HIPAA.
    #[must_use]
    pub fn hipaa(mut self, hipaa: bool) -> Self {
        self.hipaa = hipaa;
        self
    }
}

/// One page of a tenant export: raw key-value pairs under the tenant's prefix, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPage {
    /// The pairs (keys are tuple-encoded, see `docs/models.md`).
    pub kvs: Vec<KeyValue>,
    /// Pass to the next [`Tenants::export_page`] call; `None` when done.
    pub next: Option<Vec<u8>>,
}

/// Pairs per export page: small enough that a page reads well inside 5 s.
const EXPORT_PAGE_PAIRS: usize = 500;

/// The tenants repository.
#[derive(Debug, Clone, Copy)]
pub struct Tenants<'a> {
    m: &'a Models,
}

impl<'a> Tenants<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        Tenants { m }
    }

    /// Creates a tenant and its directory entry in one transaction. With a chosen `id`,
    /// creating it again returns [`Error::AlreadyExists`].
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a field; [`Error::AlreadyExists`]; store errors.
    pub async fn create(&self, new: NewTenant) -> Result<Tenant> {
        let now = self.m.now();
        let tenant = Tenant {
            id: new.id.unwrap_or_else(|| self.m.new_id()),
            name: new.name.trim().to_owned(),
            kind: new.kind,
            plan: new.plan,
            limits: new
                .limits
                .unwrap_or_else(|| new.plan.default_limits(new.hipaa)),
            hipaa: new.hipaa,
            feature_flags: new.feature_flags,
            created_at: now,
            updated_at: now,
        };
        tenant.validate()?;
        let value = encode("tenant", &tenant, MAX_INLINE_VALUE)?;
        let keys = TenantKeys::new(tenant.id);
        let (tenant, value, keys) = (&tenant, &value, &keys);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                if let Some(existing) = tx.get(&keys.tenant(), false).await? {
                    // Our own earlier attempt, if it may have committed: done.
                    if maybe_committed.0 && existing == *value {
                        return Ok(tenant.clone());
                    }
                    return Err(Error::AlreadyExists {
                        what: "tenant",
                        field: "id",
                    });
                }
                tx.set(&keys.tenant(), value);
                tx.set(&keys::directory_entry(tenant.id), b"");
                Ok(tenant.clone())
            })
            .await
    }

    /// The tenant, if it exists.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get(&self, tenant: Uuid) -> Result<Option<Tenant>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                tx.get(&keys.tenant(), false)
                    .await?
                    .map(|v| decode(|| format!("tenant {tenant}"), &v))
                    .transpose()
            })
            .await
    }

    /// Changes a tenant with `change` (run again on every retry, so it must only edit the
    /// record; never on top of its own committed result, so it need not be idempotent), then
    /// validates and writes it. `id` and `created_at` cannot change.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`] from `change` or validation; store errors.
    pub async fn update(
        &self,
        tenant: Uuid,
        change: impl Fn(&mut Tenant) -> Result<()>,
    ) -> Result<Tenant> {
        let keys = TenantKeys::new(tenant);
        let (keys, change) = (&keys, &change);
        let now = self.m.now();
        // The records earlier attempts wrote: after `commit_unknown_result` the retry must not
        // apply `change` a second time on top of its own committed result (a `push` or an
        // increment would land twice), so it answers the record it finds if it is one of them.
        let tried: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let old: Tenant = match tx.get(&keys.tenant(), false).await? {
                    Some(v) => {
                        if maybe_committed.0
                            && tried
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .contains(&v)
                        {
                            return decode(|| format!("tenant {tenant}"), &v);
                        }
                        decode(|| format!("tenant {tenant}"), &v)?
                    }
                    None => return Err(Error::not_found("tenant", tenant)),
                };
                let mut new = old.clone();
                change(&mut new)?;
                new.id = old.id;
                new.created_at = old.created_at;
                new.updated_at = now.max(old.updated_at);
                new.validate()?;
                let value = encode("tenant", &new, MAX_INLINE_VALUE)?;
                tx.set(&keys.tenant(), &value);
                tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(value);
                Ok(new)
            })
            .await
    }

    /// Tenant ids from the global directory, in id order, after `after`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a limit outside 1..=[`crate::MAX_PAGE`]; store errors.
    pub async fn list_ids(&self, after: Option<Uuid>, limit: usize) -> Result<Page<Uuid>> {
        let limit = check_limit(limit)?;
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx
                    .get_range(&keys::directory_after(after).limit(limit).snapshot())
                    .await?;
                let items: Vec<Uuid> = page
                    .kvs
                    .iter()
                    .filter_map(|kv| keys::parse_directory_entry(&kv.key))
                    .collect();
                let next = if page.more {
                    items.last().copied()
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }

    /// One page of the tenant's keys (its records and its queue), after `cursor` (`None` to
    /// start). Each page is its own transaction, so a big tenant never hits the 5 s limit; for a
    /// consistent copy, stop writers (or export again until two exports agree).
    ///
    /// # Errors
    /// Store errors.
    pub async fn export_page(&self, tenant: Uuid, cursor: Option<Vec<u8>>) -> Result<ExportPage> {
        let all = TenantKeys::new(tenant).everything();
        let opt = RangeOption {
            begin: cursor.map_or(all.begin.clone(), |c| key_after(&c)),
            ..all.clone()
        }
        .limit(EXPORT_PAGE_PAIRS)
        .snapshot();
        let (opt, all) = (&opt, &all);
        self.m
            .db()
            .transact(|tx, _| async move {
                if opt.begin < all.begin || opt.begin >= all.end {
                    return Ok(ExportPage {
                        kvs: Vec::new(),
                        next: None,
                    });
                }
                let page = tx.get_range(opt).await?;
                let next = if page.more {
                    page.kvs.last().map(|kv| kv.key.clone())
                } else {
                    None
                };
                Ok(ExportPage {
                    kvs: page.kvs,
                    next,
                })
            })
            .await
    }

    /// Every key of the tenant, page by page (see [`Tenants::export_page`]), handed to `sink`.
    /// Returns the number of pairs.
    ///
    /// # Errors
    /// Store errors, or the first error of `sink`.
    pub async fn export(
        &self,
        tenant: Uuid,
        mut sink: impl FnMut(Vec<KeyValue>) -> Result<()>,
    ) -> Result<usize> {
        let mut cursor = None;
        let mut total = 0;
        loop {
            let page = self.export_page(tenant, cursor).await?;
            total += page.kvs.len();
            if !page.kvs.is_empty() {
                sink(page.kvs)?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(total),
            }
        }
    }

    /// Deletes the tenant: every key under its prefix (records and queue alike; one range
    /// clear, whatever the size) and its directory entry, in one transaction. Returns whether
    /// the tenant existed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, tenant: Uuid) -> Result<bool> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let existed = tx.get(&keys.tenant(), false).await?.is_some();
                let all = keys.everything();
                tx.clear_range(&all.begin, &all.end);
                tx.clear(&keys::directory_entry(tenant));
                Ok(existed)
            })
            .await
    }
}

/// Reads a tenant's record inside a transaction, serializably (other repositories check that
/// the tenant exists before writing under it).
pub(crate) async fn require_tenant(
    tx: &steward_store::Transaction,
    keys: &TenantKeys,
    tenant: Uuid,
) -> Result<Tenant> {
    match tx.get(&keys.tenant(), false).await? {
        Some(v) => decode(|| format!("tenant {tenant}"), &v),
        None => Err(Error::not_found("tenant", tenant)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hipaa_defaults_keep_six_years_and_no_third_party_llm() {
        for plan in [Plan::Free, Plan::Pro, Plan::Enterprise] {
            let l = plan.default_limits(true);
            assert!(l.audit_retention_days >= HIPAA_MIN_AUDIT_RETENTION_DAYS);
            assert!(!l.third_party_llm);
            assert!(l.validate(true).is_ok());
            let plain = plan.default_limits(false);
            assert!(plain.validate(false).is_ok());
            assert!(plain.audit_retention_days >= MIN_AUDIT_RETENTION_DAYS);
        }
        let one_year = Plan::Pro.default_limits(false);
        let e = one_year.validate(true).unwrap_err().to_string();
        assert!(e.contains("limits.audit_retention_days"), "{e}");
    }
}
