//! Round trips: on FoundationDB every read is a network round trip, so an operation over many
//! jobs that read their records one after another waited one round trip per job. Here every
//! read of the memory store waits 1 ms ([`FaultConfig::read_latency`]) under paused tokio time,
//! where concurrent reads wait together and sequential ones add up: an operation's virtual
//! duration in milliseconds is the number of reads it made one after another. Nothing here
//! depends on the machine's speed.
//!
//! Each case checks that an operation over many jobs makes no more round trips than the same
//! operation over one. Before the records were read together (session 7), on the same cases:
//! a claim of 32 jobs from one tenant took 44 round trips (one job: 13); `complete_many` of
//! 32 took 32 (one: 1); `enqueue_batch` of 100 took 201 (one: 3); a page of 100 queued jobs
//! by state took 101 (one: 2); cancelling a session of 100 jobs took 202 (one: 3). Now: 11
//! (11), 1, 1, 2 and 3. An `enqueue_batch` of 100 jobs with idempotency and supersede keys
//! under admission limits took 701 (one: 8) until session 8; now 3 (3).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use steward_queue::{
    JobState, ListFilter, NewJob, Outcome, Queue, QueueConfig, ScheduleSpec, Scheduler,
    TenantQueueConfig,
};
use steward_store::FaultConfig;
use support::{job, us, Backend, Env, LEASE};
use tokio::time::Instant;
use uuid::Uuid;

const ROUND_TRIP: Duration = Duration::from_millis(1);

/// A memory store whose every read takes [`ROUND_TRIP`], with `jobs` queued jobs of one tenant.
async fn tenant_with_jobs(name: &str, jobs: usize, session: Option<Uuid>) -> (Env, Uuid) {
    let env = Env::new(Backend::Memory, name);
    let seed = env.seed;
    // (A queue made again from the same seed would repeat the first one's job ids.)
    let env = env.with_faults(FaultConfig {
        read_latency: ROUND_TRIP,
        ..FaultConfig::none(seed)
    });
    let tenant = env.tenant();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(100) {
        let batch = chunk
            .iter()
            .map(|_| match session {
                Some(s) => job("a").session(s),
                None => job("a"),
            })
            .collect();
        env.queue
            .enqueue_batch(tenant, batch)
            .await
            .expect("enqueue");
    }
    (env, tenant)
}

/// Sequential round trips `op` makes.
async fn round_trips<T>(op: impl std::future::Future<Output = T>) -> (u128, T) {
    let start = Instant::now();
    let out = op.await;
    let trips = start.elapsed().as_millis();
    eprintln!("{trips} round trips");
    (trips, out)
}

#[tokio::test(start_paused = true)]
async fn a_claim_of_32_jobs_makes_as_many_round_trips_as_a_claim_of_one() {
    let (env, _) = tenant_with_jobs("round_trips::claim", 100, None).await;
    // The first claim serves the tenant as fresh (another path); then both take the sample's.
    assert_eq!(env.claim("w", 1).await.len(), 1);
    let (one, leases) = round_trips(env.claim("w", 1)).await;
    assert_eq!(leases.len(), 1);
    let (many, leases) = round_trips(env.claim("w", 32)).await;
    assert_eq!(leases.len(), 32);
    assert!(
        many <= one,
        "claiming 32 jobs took {many} round trips, one job {one}"
    );
    // The fresh index; the active index; the tenant's ready head; the tenants' settings; its
    // pauses, expired leases and due jobs; its kinds (two reads); the heads of those kinds;
    // the chosen records; the doorbell's check. 13 before the tenant's independent reads
    // went together.
    assert!(one <= 11, "claiming one job took {one} round trips");
}

#[tokio::test(start_paused = true)]
async fn complete_many_reads_the_records_together() {
    let (env, _) = tenant_with_jobs("round_trips::complete_many", 33, None).await;
    let leases = env.claim("w", 33).await;
    assert_eq!(leases.len(), 33);
    let done: Vec<_> = leases.into_iter().map(|l| (l, json!(null))).collect();
    let (one, results) = round_trips(env.queue.complete_many(&done[..1])).await;
    assert!(results.expect("complete_many").iter().all(Result::is_ok));
    let (many, results) = round_trips(env.queue.complete_many(&done[1..])).await;
    assert!(results.expect("complete_many").iter().all(Result::is_ok));
    assert!(
        many <= one,
        "completing 32 jobs took {many} round trips, one job {one}"
    );
}

#[tokio::test(start_paused = true)]
async fn enqueue_batch_reads_what_its_jobs_need_together() {
    let (env, tenant) = tenant_with_jobs("round_trips::enqueue_batch", 0, None).await;
    let (one, out) = round_trips(env.queue.enqueue_batch(tenant, vec![job("a")])).await;
    assert_eq!(out.expect("enqueue").len(), 1);
    let batch: Vec<NewJob> = (0..100).map(|_| job("a")).collect();
    let (many, out) = round_trips(env.queue.enqueue_batch(tenant, batch)).await;
    assert_eq!(out.expect("enqueue").len(), 100);
    assert!(
        many <= one,
        "enqueueing 100 jobs took {many} round trips, one job {one}"
    );
    assert!(one <= 2, "enqueueing one job took {one} round trips");
}

/// With idempotency and supersede keys and a tenant under admission limits, each job's
/// enqueue read its idempotency entry, the four counters one after another, its supersede
/// entry and the job it replaces: 701 round trips for 100 jobs (one job: 8) before those
/// were read ahead for the batch.
#[tokio::test(start_paused = true)]
async fn enqueue_batch_with_keys_and_limits_reads_them_together() {
    let (env, tenant) = tenant_with_jobs("round_trips::enqueue_keys", 0, None).await;
    env.queue
        .set_tenant_config(
            tenant,
            &TenantQueueConfig {
                max_queued: Some(10_000),
                max_queued_bytes: Some(10_000_000),
                ..TenantQueueConfig::default()
            },
        )
        .await
        .expect("config");
    let keyed = |i: usize| {
        job("a")
            .idempotency_key(format!("request-{i}"))
            .supersede_key(format!("file-{i}"))
    };
    let replaced = (0..101).map(|i| job("a").supersede_key(format!("file-{i}")));
    env.queue
        .enqueue_batch(tenant, replaced.collect())
        .await
        .expect("enqueue");
    let (one, out) = round_trips(env.queue.enqueue_batch(tenant, vec![keyed(0)])).await;
    assert!(out.expect("enqueue")[0].superseded.is_some());
    let batch: Vec<NewJob> = (1..101).map(keyed).collect();
    let (many, out) = round_trips(env.queue.enqueue_batch(tenant, batch)).await;
    assert!(out.expect("enqueue").iter().all(|e| e.superseded.is_some()));
    assert!(
        many <= one,
        "enqueueing 100 keyed jobs took {many} round trips, one job {one}"
    );
    // The records, keys, settings and active entry; the jobs the keys name; the counters.
    assert!(one <= 3, "enqueueing one keyed job took {one} round trips");
}

#[tokio::test(start_paused = true)]
async fn a_page_of_jobs_by_state_reads_their_records_together() {
    let (env, tenant) = tenant_with_jobs("round_trips::list", 100, None).await;
    let filter = ListFilter {
        state: Some(JobState::Queued),
        ..ListFilter::default()
    };
    let (one, page) = round_trips(env.queue.list(tenant, &filter, None, 1)).await;
    assert_eq!(page.expect("list").jobs.len(), 1);
    let (many, page) = round_trips(env.queue.list(tenant, &filter, None, 100)).await;
    assert_eq!(page.expect("list").jobs.len(), 100);
    assert!(
        many <= one,
        "a page of 100 jobs took {many} round trips, of one job {one}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_session_reads_its_jobs_together() {
    let (small, big) = (Uuid::from_u128(7), Uuid::from_u128(8));
    let (env, tenant) = tenant_with_jobs("round_trips::cancel_session", 1, Some(small)).await;
    let batch: Vec<NewJob> = (0..100).map(|_| job("a").session(big)).collect();
    env.queue
        .enqueue_batch(tenant, batch)
        .await
        .expect("enqueue");
    let (one, n) = round_trips(env.queue.cancel_session(tenant, small)).await;
    assert_eq!(n.expect("cancel"), 1);
    let (many, n) = round_trips(env.queue.cancel_session(tenant, big)).await;
    assert_eq!(n.expect("cancel"), 100);
    // A full chunk reads the next page to learn that it was the last.
    assert!(
        many <= one + 1,
        "cancelling 100 jobs took {many} round trips, one job {one}"
    );
}

#[tokio::test(start_paused = true)]
async fn replaying_dead_jobs_reads_them_together() {
    let (env, tenant) = tenant_with_jobs("round_trips::replay_dead", 0, None).await;
    let batch: Vec<NewJob> = (0..33).map(|_| job("a").max_attempts(1)).collect();
    env.queue
        .enqueue_batch(tenant, batch)
        .await
        .expect("enqueue");
    for lease in env.claim("w", 33).await {
        let fail = Outcome::Fail { error: "x".into() };
        env.queue.fail(&lease, fail).await.expect("fail");
    }
    let (one, n) = round_trips(env.queue.replay_dead(tenant, None, 1)).await;
    assert_eq!(n.expect("replay"), 1);
    let (many, n) = round_trips(env.queue.replay_dead(tenant, Some("a"), 32)).await;
    assert_eq!(n.expect("replay"), 32);
    // 33 before the page's records were read together.
    assert!(
        many <= one,
        "replaying 32 dead jobs took {many} round trips, one job {one}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fan_out_enqueues_a_page_of_tenants_together() {
    let (env, _) = tenant_with_jobs("round_trips::fan_out", 0, None).await;
    let scheduler = Scheduler::new(&env.queue);
    let fire = env.now();
    let page: Vec<Uuid> = (0..50).map(|_| env.tenant()).collect();
    let (one, done) = round_trips(scheduler.fan_out("s", fire, &job("a"), &page[..1])).await;
    assert_eq!(done.expect("fan out").enqueued, 1);
    let (many, done) = round_trips(scheduler.fan_out("s", fire, &job("a"), &page)).await;
    assert_eq!(done.expect("fan out").enqueued, 49);
    // 197 before the tenants went together (four reads per tenant, one after another); 4
    // while the fan-out also checked for the job itself before enqueueing it.
    assert!(
        many <= one,
        "a fan-out to 50 tenants took {many} round trips, to one {one}"
    );
}

/// A store whose reads take a round trip, with `n` tenants' schedules due now.
async fn due_schedules(name: &str, n: usize) -> Env {
    let (env, _) = tenant_with_jobs(name, 0, None).await;
    let scheduler = Scheduler::new(&env.queue);
    for _ in 0..n {
        let spec = ScheduleSpec::new(Some(env.tenant()), "s", "* * * * *", job("a"));
        scheduler.upsert(spec).await.expect("upsert");
    }
    env.advance(Duration::from_secs(60));
    env
}

/// Replicas that tick together take a page of due schedules in different orders, so two of
/// them handle them in well under the time one takes (in the same order they would conflict
/// over each schedule in turn).
#[tokio::test(start_paused = true)]
async fn two_scheduler_replicas_split_the_due_schedules() {
    let env = due_schedules("round_trips::tick_alone", 100).await;
    let (alone, fired) = round_trips(Scheduler::new(&env.queue).tick()).await;
    assert_eq!(fired.expect("tick").len(), 100);
    let env = due_schedules("round_trips::tick_together", 100).await;
    let other =
        Queue::with_seed(env.db.clone(), QueueConfig::default(), env.seed ^ 1).expect("queue");
    let (a, b) = (Scheduler::new(&env.queue), Scheduler::new(&other));
    let (together, (x, y)) = round_trips(futures::future::join(a.tick(), b.tick())).await;
    let (x, y) = (x.expect("tick"), y.expect("tick"));
    assert_eq!(x.len() + y.len(), 100, "each tick recorded once");
    assert!(
        together * 4 <= alone * 3,
        "two replicas took {together} round trips for 100 schedules, one alone {alone}"
    );
}

/// A tenant with `n` jobs whose leases expired and `n` scheduled jobs that are due.
async fn tenant_with_moves(name: &str, n: usize) -> (Env, Uuid) {
    let (env, tenant) = tenant_with_jobs(name, n, None).await;
    assert_eq!(env.claim("gone", n).await.len(), n);
    let later = env.now() + us(Duration::from_secs(1));
    let batch: Vec<NewJob> = (0..n).map(|_| job("a").run_at(later)).collect();
    env.queue
        .enqueue_batch(tenant, batch)
        .await
        .expect("enqueue");
    env.advance(LEASE + Duration::from_secs(1));
    (env, tenant)
}

#[tokio::test(start_paused = true)]
async fn a_claim_reads_the_jobs_it_rescues_and_promotes_together() {
    let (env, _) = tenant_with_moves("round_trips::moves_one", 1).await;
    let (one, leases) = round_trips(env.claim("w", 1)).await;
    assert_eq!(leases.len(), 1);
    let (env, _) = tenant_with_moves("round_trips::moves_many", 10).await;
    let (many, leases) = round_trips(env.claim("w", 1)).await;
    assert_eq!(leases.len(), 1);
    assert!(
        many <= one,
        "a claim moving 20 jobs took {many} round trips, moving 2 jobs {one}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_across_16_tenants_reads_their_heads_together() {
    let (env, _) = tenant_with_jobs("round_trips::tenants", 0, None).await;
    for _ in 0..16 {
        let t = env.tenant();
        let batch: Vec<NewJob> = (0..10).map(|_| job("a")).collect();
        env.queue.enqueue_batch(t, batch).await.expect("enqueue");
    }
    // Two claims serve the 16 as fresh tenants (half a claim each time); then the next one
    // takes the active index's sample.
    assert_eq!(env.claim("w", 16).await.len(), 16);
    assert_eq!(env.claim("w", 16).await.len(), 16);
    let (trips, leases) = round_trips(env.claim("w", 32)).await;
    assert_eq!(leases.len(), 32);
    let tenants: HashSet<Uuid> = leases.iter().map(|l| l.tenant).collect();
    assert_eq!(tenants.len(), 16, "two jobs of each tenant");
    // The fresh index, the active index and each tenant's work, the tenants' settings; each
    // tenant's pauses, expiries, kinds and ready heads, read for all tenants together; then
    // the records of the jobs all of them chose, together. 135 round trips on 55fe0fa, 87
    // before the tenants' heads were read together, 27 before their chosen records were
    // (one round trip per tenant), 12 now.
    assert!(
        trips <= 12,
        "claiming from 16 tenants took {trips} round trips"
    );
}

/// `n` tenants whose one job ran and completed: still in the active index, with nothing left.
async fn idle_tenants(name: &str, n: usize) -> Env {
    let (env, _) = tenant_with_jobs(name, 0, None).await;
    for _ in 0..n {
        let t = env.tenant();
        env.queue.enqueue(t, job("a")).await.expect("enqueue");
    }
    // (Twice as many, so that the fresh tenants' half of the claim takes them all and none is
    // left in the fresh index: `n` is at most the default `tenants_per_claim`, 16.)
    let leases = env.claim("w", 2 * n).await;
    assert_eq!(leases.len(), n);
    let done: Vec<_> = leases.into_iter().map(|l| (l, json!(null))).collect();
    env.queue.complete_many(&done).await.expect("complete");
    env
}

#[tokio::test(start_paused = true)]
async fn a_claim_retires_the_doorbells_of_idle_tenants_together() {
    let env = idle_tenants("round_trips::retire_one", 1).await;
    let (one, leases) = round_trips(env.claim("w", 1)).await;
    assert!(leases.is_empty());
    let env = idle_tenants("round_trips::retire_many", 8).await;
    let (many, leases) = round_trips(env.claim("w", 1)).await;
    assert!(leases.is_empty());
    // The active index is read from a random point, so the idle tenants may lie on both sides
    // of it: a second page's tenants are checked after the first's (2 round trips). Before
    // the checks of a tenant's indexes and the retirements went together: 30 round trips
    // here, one tenant 11; now 10 and 8.
    assert!(
        many <= one + 2,
        "retiring 8 idle tenants took {many} round trips, one {one}"
    );
    // They were retired: the next claim finds no tenant to look at.
    let (after, _) = round_trips(env.claim("w", 1)).await;
    assert!(
        after < many,
        "{after} round trips after retiring, {many} before"
    );
}

/// The claim reads a tenant's pauses ahead (as a snapshot, with every other tenant's) and adds
/// their read conflict when it visits: a pause that commits while the claim runs must make it
/// conflict and retry, so no job of the paused tenant is handed out.
#[tokio::test(start_paused = true)]
async fn a_pause_committed_while_a_claim_reads_stops_it_taking_the_tenants_jobs() {
    let (env, tenant) = tenant_with_jobs("round_trips::pause_race", 10, None).await;
    // Served once as fresh, so the next claim visits it from the sample.
    assert_eq!(env.claim("w", 1).await.len(), 1);
    let queue = env.queue.clone();
    let claim = tokio::spawn(async move { queue.claim(&support::req("w", 4)).await });
    // Past the claim's read of the pauses (about the sixth round trip of eleven), before it
    // commits.
    tokio::time::sleep(ROUND_TRIP * 8).await;
    assert!(!claim.is_finished());
    env.queue.pause(tenant, None).await.expect("pause");
    let leases = claim.await.expect("join").expect("claim");
    assert!(leases.is_empty(), "claimed after the pause: {leases:?}");
}
