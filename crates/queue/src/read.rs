//! The read side: a job by id, lists with cursors, counts per state, waiting for a result,
//! why a job is still waiting, and waiting for work.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_store::{RangeOption, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::job::{Job, JobState};
use crate::keys::{self, TenantKeys, ALL_KINDS, WAKE_SHARDS};
use crate::queue::{load, read_tenant_config, sum_counters, Prefetched, Queue};

/// Most jobs in one page.
pub const MAX_PAGE: usize = 500;
/// Index entries examined per page before returning a short page with a cursor.
const SCAN_FACTOR: usize = 20;
/// Jobs counted ahead of a waiting job before answering "at least".
const MAX_AHEAD_COUNT: usize = 10_000;

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs of this session.
    pub session: Option<Uuid>,
}

/// One page of jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// Why a job is not running yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// It is not waiting: it runs or has finished.
    NotWaiting {
        /// Its state.
        state: JobState,
    },
    /// It is scheduled for later (a delayed job, a retry backoff or a snooze).
    Scheduled {
        /// When it becomes runnable (µs).
        run_at: i64,
    },
    /// Its tenant or its kind is paused.
    Paused {
        /// The paused kind, or `None` for the whole tenant.
        kind: Option<String>,
    },
    /// Its tenant already runs as many jobs as its `max_running` allows.
    AtConcurrencyLimit {
        /// Jobs of the tenant running now.
        running: i64,
        /// The tenant's limit.
        max: u32,
    },
    /// It is runnable and waits for a worker behind other jobs of its kind.
    Queued {
        /// Runnable jobs of its kind that run before it.
        ahead: usize,
        /// `ahead` stopped counting at its cap.
        ahead_capped: bool,
        /// Jobs of the tenant running now.
        running: i64,
    },
}

impl Queue {
    /// A job of `tenant`, or `None`.
    ///
    /// # Errors
    /// Store errors; [`Error::Corrupt`].
    pub async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<Job>> {
        let keys = &TenantKeys::new(tenant);
        // Reads run in the retry loop too: a read can fail with a retryable error
        // (`transaction_too_old`, `process_behind`), which must not reach the caller.
        self.db()
            .transact(|tx, _| async move { load(&tx, keys, id).await })
            .await
    }

    /// Lists jobs of `tenant`, newest index order per filter: by session (job id order), by
    /// state (oldest in the state first), or all (job id order, i.e. enqueue order).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit or cursor.
    pub async fn list(
        &self,
        tenant: Uuid,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::invalid("limit", format!("must be 1 to {MAX_PAGE}")));
        }
        let keys = TenantKeys::new(tenant);
        let mut range = match (filter.session, filter.state) {
            (Some(s), _) => keys.session_jobs(s),
            (None, Some(st)) => keys.state_index(st),
            (None, None) => keys.jobs(),
        };
        if let Some(c) = cursor {
            let after = decode_cursor(c)?;
            if after < range.begin || after >= range.end {
                return Err(Error::invalid("cursor", "does not belong to this listing"));
            }
            range.begin = steward_store::key_after(&after);
        }
        let (range, keys) = (&range, &keys);
        self.db()
            .transact(|tx, _| async move { list_in(&tx, keys, filter, range, limit).await })
            .await
    }

    /// Jobs of `tenant` per state (summed over counter shards).
    ///
    /// # Errors
    /// Store errors.
    pub async fn counts(&self, tenant: Uuid) -> Result<BTreeMap<JobState, i64>> {
        let keys = &TenantKeys::new(tenant);
        self.db()
            .transact(|tx, _| async move { counts_in(&tx, keys).await })
            .await
    }

    /// Waits until the job is finished (completed, cancelled or dead) or `timeout` passes, and
    /// returns it as it is then. Uses a watch on the job, re-reading after every change.
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub async fn wait(&self, tenant: Uuid, id: Uuid, timeout: Duration) -> Result<Job> {
        let keys = &TenantKeys::new(tenant);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The watch is set in the transaction that read the job, so no change after that
            // read can be missed.
            let (job, watch) = self
                .db()
                .transact(|tx, _| async move {
                    let job = load(&tx, keys, id).await?.ok_or(Error::NotFound(id))?;
                    let watch = (!job.state.is_terminal()).then(|| tx.watch(&keys.job(id)));
                    Ok::<_, Error>((job, watch))
                })
                .await?;
            let Some(watch) = watch else {
                return Ok(job);
            };
            match tokio::time::timeout_at(deadline, watch).await {
                Err(_) => return Ok(job),
                Ok(Ok(())) => {}
                // A failed watch (e.g. too many) degrades to polling.
                Ok(Err(_)) => {
                    let pause = Duration::from_millis(200);
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                        .await
                        .is_err()
                    {
                        return Ok(job);
                    }
                }
            }
        }
    }

    /// Why a job is not running yet.
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub async fn why_waiting(&self, tenant: Uuid, id: Uuid) -> Result<WaitReason> {
        let keys = &TenantKeys::new(tenant);
        let now = self.now();
        self.db()
            .transact(|tx, _| async move { why_waiting_in(&tx, keys, id, now).await })
            .await
    }

    /// Waits until an enqueue (or a resume or replay) may have made work available, or
    /// `timeout` passes. A hint for idle workers: claim after it returns either way.
    ///
    /// # Errors
    /// Store errors.
    pub async fn wait_for_work(&self, timeout: Duration) -> Result<()> {
        let tx = self.db().create_transaction()?;
        let watches: Vec<_> = (0..WAKE_SHARDS).map(|s| tx.watch(&keys::wake(s))).collect();
        tx.commit().await?;
        let any = futures::future::select_all(watches);
        let _ = tokio::time::timeout(timeout, any).await;
        Ok(())
    }
}

fn encode_cursor(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Result<Vec<u8>> {
    let bad = || Error::invalid("cursor", "is not a cursor returned by a previous page");
    if !c.len().is_multiple_of(2) || c.len() > 2048 {
        return Err(bad());
    }
    (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// One page of [`Queue::list`], in one transaction.
async fn list_in(
    tx: &Transaction,
    keys: &TenantKeys,
    filter: &ListFilter,
    range: &RangeOption,
    limit: usize,
) -> Result<Page> {
    let page = tx
        .get_range(&range.clone().limit(limit * SCAN_FACTOR).snapshot())
        .await?;
    let mut jobs = Vec::new();
    let mut last_key = None;
    // Index entries (session or state) name jobs whose records are read, as many at once as
    // could still fit the page (on FoundationDB one round trip each time, not one per job).
    let by_index = filter.session.is_some() || filter.state.is_some();
    let mut rest = page.kvs.as_slice();
    'page: while !rest.is_empty() && jobs.len() < limit {
        let (chunk, after) = rest.split_at((limit - jobs.len()).min(rest.len()));
        rest = after;
        let ids: Vec<Option<Uuid>> = chunk
            .iter()
            .map(|kv| match (filter.session, filter.state) {
                (Some(_), _) => keys.parse_session(&kv.key),
                (None, Some(_)) => keys.parse_state_index(&kv.key).map(|(_, id)| id),
                (None, None) => keys.job_id_of(&kv.key),
            })
            .collect();
        let mut records = if by_index {
            Prefetched::read(tx, ids.iter().flatten().map(|&id| keys.job(id))).await?
        } else {
            Prefetched::none()
        };
        for (kv, id) in chunk.iter().zip(ids) {
            last_key = Some(kv.key.clone());
            let job = match (by_index, id) {
                (false, _) => serde_json::from_slice::<Job>(&kv.value).ok(),
                (true, Some(id)) => records.load(tx, keys, id).await?,
                (true, None) => None,
            };
            let Some(job) = job else { continue };
            if filter.state.is_some_and(|s| s != job.state)
                || filter.kind.as_ref().is_some_and(|k| *k != job.kind)
            {
                continue;
            }
            jobs.push(job);
            if jobs.len() == limit {
                break 'page;
            }
        }
    }
    let exhausted = !page.more && jobs.len() < limit;
    let next_cursor = if exhausted {
        None
    } else {
        last_key.map(|k| encode_cursor(&k))
    };
    Ok(Page { jobs, next_cursor })
}

async fn counts_in(tx: &Transaction, keys: &TenantKeys) -> Result<BTreeMap<JobState, i64>> {
    let mut out = BTreeMap::new();
    for state in JobState::ALL {
        out.insert(state, sum_counters(tx, &keys.counters(state)).await?);
    }
    Ok(out)
}

async fn why_waiting_in(
    tx: &Transaction,
    keys: &TenantKeys,
    id: Uuid,
    now: i64,
) -> Result<WaitReason> {
    let job = load(tx, keys, id).await?.ok_or(Error::NotFound(id))?;
    let paused: Vec<String> = tx
        .get_range_all(&keys.pauses().snapshot())
        .await?
        .iter()
        .filter_map(|kv| keys.parse_pause(&kv.key))
        .collect();
    let waiting = matches!(job.state, JobState::Queued | JobState::Scheduled);
    if !waiting {
        return Ok(WaitReason::NotWaiting { state: job.state });
    }
    if paused.iter().any(|k| k == ALL_KINDS) {
        return Ok(WaitReason::Paused { kind: None });
    }
    if paused.contains(&job.kind) {
        return Ok(WaitReason::Paused {
            kind: Some(job.kind),
        });
    }
    if job.state == JobState::Scheduled && job.run_at > now {
        return Ok(WaitReason::Scheduled { run_at: job.run_at });
    }
    let mine = keys.ready(&job.kind, job.priority, job.run_at, job.id);
    let ahead_range = RangeOption::new(keys.ready_of_kind(&job.kind).begin, mine)
        .limit(MAX_AHEAD_COUNT)
        .snapshot();
    let ahead = tx.get_range(&ahead_range).await?;
    let running = counts_in(tx, keys)
        .await?
        .get(&JobState::Running)
        .copied()
        .unwrap_or(0);
    let cfg = read_tenant_config(tx, keys, true).await?;
    if let Some(max) = cfg.max_running {
        let taken = tx.get_range(&keys.slots(max).snapshot()).await?.kvs.len();
        if taken >= max as usize {
            return Ok(WaitReason::AtConcurrencyLimit { running, max });
        }
    }
    Ok(WaitReason::Queued {
        ahead: ahead.kvs.len(),
        ahead_capped: ahead.more,
        running,
    })
}
