//! `expire_auth_tokens` on the records side ([`steward_models::AuthSessions::expire`]):
//! families past their absolute or idle expiry are marked expired, expired or revoked ones are
//! deleted after the retention tail, active ones are never touched (so reuse detection keeps
//! working), runs page with a cursor, are idempotent, exact under injected
//! `commit_unknown_result`, and each run leaves one `auth.tokens_expired` audit event.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::time::Duration;

use serde_json::json;
use steward_models::{
    AuthSessionState, Error, ExpireBatch, ExpireStats, IssuedToken, ModelsConfig, RefreshRejection,
    RevokeReason, DEFAULT_AUTH_RETENTION_TAIL, DEFAULT_REFRESH_GRACE, TOKENS_EXPIRED_ACTION,
};
use support::{Backend, Env};
use uuid::Uuid;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn rejected(r: Result<IssuedToken, Error>) -> RefreshRejection {
    match r {
        Err(Error::RefreshRejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn setup(env: &Env) -> (Uuid, Uuid) {
    let t = env.tenant("acme").await.id;
    let u = env.user(t, "ada@acme.example").await.id;
    (t, u)
}

/// Keys in the store that mention `family` (its record, tokens and index entries).
async fn keys_of(env: &Env, family: Uuid) -> usize {
    env.all_pairs()
        .await
        .iter()
        .filter(|kv| {
            kv.key
                .windows(16)
                .any(|w| w == family.as_bytes().as_slice())
        })
        .count()
}

async fn expiry_marks_then_deletes_after_the_tail(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let a = auth.login(t, u, "a").await.unwrap();
    let b = auth.login(t, u, "b").await.unwrap();
    let c = auth.login(t, u, "c").await.unwrap();
    let d = auth.login(t, u, "d").await.unwrap();
    auth.revoke(t, c.session.id, RevokeReason::Logout)
        .await
        .unwrap();
    env.advance(6 * DAY);
    let a2 = auth.refresh(t, a.token.expose()).await.unwrap();
    let d2 = auth.refresh(t, d.token.expose()).await.unwrap();
    env.advance(2 * DAY);
    // b has been idle 8 days (idle TTL 7): expired. c is revoked, a and d active.
    assert_eq!(
        auth.get(t, b.session.id)
            .await
            .unwrap()
            .unwrap()
            .state(env.models.now()),
        AuthSessionState::Expired
    );

    let stats = auth.expire(t, 3).await.unwrap();
    assert_eq!(
        (
            stats.batches,
            stats.scanned,
            stats.marked_expired,
            stats.deleted
        ),
        (2, 4, 1, 0),
        "{stats:?}"
    );
    let marked = auth.get(t, b.session.id).await.unwrap().unwrap();
    assert_eq!(marked.expired_at, Some(b.session.idle_expires_at));
    assert_eq!(marked.revoked_at, None);
    assert_eq!(
        rejected(auth.refresh(t, b.token.expose()).await),
        RefreshRejection::Expired
    );
    // Within the tail the revoked family still answers "revoked".
    assert_eq!(
        rejected(auth.refresh(t, c.token.expose()).await),
        RefreshRejection::Revoked
    );
    for active in [&a, &d] {
        let fam = auth.get(t, active.session.id).await.unwrap().unwrap();
        assert_eq!(
            (fam.state(env.models.now()), fam.expired_at),
            (AuthSessionState::Active, None)
        );
    }

    // Idempotent: a second run changes nothing.
    let again = auth.expire(t, 100).await.unwrap();
    assert_eq!(
        (again.marked_expired, again.deleted, again.scanned),
        (0, 0, 4)
    );

    // 30 days later: b (ended day 7) and c (day 0) are past the tail and go, tokens and
    // indexes included; a and d, idle since day 6, expired on day 13: marked, kept.
    env.advance(DEFAULT_AUTH_RETENTION_TAIL);
    let stats = auth.expire(t, 100).await.unwrap();
    assert_eq!((stats.marked_expired, stats.deleted), (2, 2), "{stats:?}");
    for gone in [&b, &c] {
        assert_eq!(auth.get(t, gone.session.id).await.unwrap(), None);
        assert_eq!(keys_of(&env, gone.session.id).await, 0);
        assert_eq!(
            rejected(auth.refresh(t, gone.token.expose()).await),
            RefreshRejection::Invalid
        );
    }
    for kept in [&a2, &d2] {
        let fam = auth.get(t, kept.session.id).await.unwrap().unwrap();
        assert_eq!(fam.expired_at, Some(fam.idle_expires_at));
        assert!(keys_of(&env, kept.session.id).await >= 4);
    }
    let listed: Vec<Uuid> = auth
        .list_for_user(t, u)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed.len(), 2);

    // One audit event per run, with that run's counts.
    let events: Vec<_> = env
        .models
        .audit()
        .pending(t, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == TOKENS_EXPIRED_ACTION)
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].details["marked_expired"], json!(1));
    assert_eq!(events[0].details["deleted"], json!(0));
    assert_eq!(events[0].details["scanned"], json!(4));
    assert_eq!(events[2].details["marked_expired"], json!(2));
    assert_eq!(events[2].details["deleted"], json!(2));
    assert_eq!(
        events[2].details["retention_tail_secs"],
        json!(30 * 24 * 3600)
    );
    assert_eq!(Some(events[2].id), stats.audit_event);
}

async fn reuse_detection_still_works_after_the_expiry_job_ran(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    // Something for the job to do: a family that ended long ago.
    let old = auth.login(t, u, "old").await.unwrap();
    env.advance(DEFAULT_AUTH_RETENTION_TAIL + 8 * DAY);
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    let t2 = auth.refresh(t, t1.token.expose()).await.unwrap();
    let t3 = auth.refresh(t, t2.token.expose()).await.unwrap();
    env.advance(DEFAULT_REFRESH_GRACE + Duration::from_secs(1));

    let stats = auth.expire(t, 10).await.unwrap();
    assert_eq!((stats.deleted, stats.marked_expired), (1, 0), "{stats:?}");
    assert_eq!(auth.get(t, old.session.id).await.unwrap(), None);
    // The active family kept its used tokens: generations 1 and 2 are still there.
    assert!(keys_of(&env, t1.session.id).await >= 3 + 2);

    // The old token comes back: reuse, and the whole family dies.
    assert_eq!(
        rejected(auth.refresh(t, t2.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
    assert_eq!(
        rejected(auth.refresh(t, t3.token.expose()).await),
        RefreshRejection::Revoked
    );
    let fam = auth.get(t, t1.session.id).await.unwrap().unwrap();
    assert_eq!(fam.revoke_reason, Some(RevokeReason::ReuseDetected));
    assert_eq!(fam.state(env.models.now()), AuthSessionState::Revoked);
    // Generation 1 now meets a revoked family.
    assert_eq!(
        rejected(auth.refresh(t, t1.token.expose()).await),
        RefreshRejection::Revoked
    );
}

async fn batches_page_with_a_cursor_until_done(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(auth.login(t, u, &format!("c{i}")).await.unwrap().session.id);
    }
    env.advance(8 * DAY);
    let mut stats = ExpireStats::default();
    let mut after = None;
    let mut cursors = Vec::new();
    loop {
        let b: ExpireBatch = auth.expire_batch(t, after, 2).await.unwrap();
        assert!(b.scanned <= 2, "{b:?}");
        stats.add(&b);
        match b.next {
            Some(next) => {
                cursors.push(next);
                after = Some(next);
            }
            None => break,
        }
    }
    // Families in id order, two per batch; the last batch is short.
    ids.sort();
    assert_eq!(cursors, vec![ids[1], ids[3]]);
    assert_eq!(
        (stats.batches, stats.scanned, stats.marked_expired),
        (3, 5, 5)
    );
    // Batches do not append audit events; the caller records the run once.
    assert!(env.models.audit().pending(t, 10).await.unwrap().is_empty());
    let id = auth.record_expiry(t, &stats).await.unwrap();
    let events = env.models.audit().pending(t, 10).await.unwrap();
    assert_eq!((events.len(), events[0].id), (1, id));
    assert_eq!(events[0].details["marked_expired"], json!(5));
}

backend_tests!(
    expiry_marks_then_deletes_after_the_tail,
    reuse_detection_still_works_after_the_expiry_job_ran,
    batches_page_with_a_cursor_until_done,
);

#[tokio::test]
async fn expiry_counts_stay_exact_under_injected_faults() {
    // Many families and small batches, so that several commits hit `commit_unknown_result`
    // (applied and not) and the retries must count what their committed attempt did.
    for round in 0..3 {
        let env = Env::new(Backend::MemoryFaults, &format!("expiry_faults_{round}")).await;
        let (t, u) = setup(&env).await;
        let auth = env.models.auth();
        let mut revoked = 0;
        for i in 0..24 {
            let s = auth.login(t, u, &format!("c{i}")).await.unwrap();
            if i % 3 == 0 {
                auth.revoke(t, s.session.id, RevokeReason::Admin)
                    .await
                    .unwrap();
                revoked += 1;
            }
        }
        env.advance(8 * DAY);
        let first = auth.expire(t, 5).await.unwrap();
        assert_eq!(
            (first.scanned, first.marked_expired, first.deleted),
            (24, 24 - revoked, 0),
            "round {round}"
        );
        env.advance(DEFAULT_AUTH_RETENTION_TAIL);
        let second = auth.expire(t, 5).await.unwrap();
        assert_eq!(
            (second.scanned, second.marked_expired, second.deleted),
            (24, 0, 24),
            "round {round}"
        );
        assert!(auth.list_for_user(t, u).await.unwrap().is_empty());
        let third = auth.expire(t, 5).await.unwrap();
        assert_eq!((third.scanned, third.batches), (0, 1));
        let stats = env.db.fault_stats().unwrap();
        assert!(
            stats.unknown_applied + stats.unknown_not_applied > 0,
            "{stats:?}"
        );
    }
}

#[tokio::test]
async fn a_zero_tail_deletes_as_soon_as_a_family_ends_and_bad_limits_are_refused() {
    let mut config = ModelsConfig::for_tests();
    config.auth.retention_tail = Duration::ZERO;
    let env = Env::with_config(Backend::Memory, "zero_tail", config).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let s = auth.login(t, u, "x").await.unwrap();
    let keep = auth.login(t, u, "y").await.unwrap();
    auth.revoke(t, s.session.id, RevokeReason::Logout)
        .await
        .unwrap();
    let stats = auth.expire(t, 10).await.unwrap();
    assert_eq!((stats.deleted, stats.marked_expired), (1, 0));
    assert!(auth.get(t, keep.session.id).await.unwrap().is_some());
    for bad in [0, 1001] {
        assert!(matches!(
            auth.expire_batch(t, None, bad).await,
            Err(Error::Invalid { field: "limit", .. })
        ));
    }
}
