//! Refresh-token families (rotation, reuse detection, the grace window, expiry, revocation) on
//! a manual clock, and Argon2id passwords (verify, re-hash on login, OWASP parameters).

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::time::{Duration, Instant};

use steward_models::{
    Error, Models, ModelsConfig, PasswordHasher, PasswordPolicy, RefreshRejection, RevokeReason,
    UserUpdate, DEFAULT_IDLE_TTL, DEFAULT_REFRESH_GRACE,
};
use support::{Backend, Env, PASSWORD};
use uuid::Uuid;

fn rejected(r: Result<steward_models::IssuedToken, Error>) -> RefreshRejection {
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

async fn refresh_rotates_to_a_new_generation_each_time(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let first = auth.login(t, u, "laptop").await.unwrap();
    assert_eq!(first.session.current_generation, 1);
    assert!(first.session.is_active(env.models.now()));
    let mut token = first.token;
    for generation in 2..=5 {
        env.advance(Duration::from_secs(60));
        let next = auth.refresh(t, token.expose()).await.unwrap();
        assert_eq!(next.session.current_generation, generation);
        assert_eq!(next.session.id, first.session.id);
        assert_eq!(next.session.last_used_at, env.models.now());
        assert_ne!(next.token, token);
        token = next.token;
    }
    let stored = auth.get(t, first.session.id).await.unwrap().unwrap();
    assert_eq!(stored.current_generation, 5);
    assert_eq!(
        stored.absolute_expires_at,
        first.session.absolute_expires_at
    );
    // Nothing in the store holds the secret: only its HMAC.
    let secret = token.expose().rsplit('.').next().unwrap().to_owned();
    assert!(env
        .all_pairs()
        .await
        .iter()
        .all(|kv| !String::from_utf8_lossy(&kv.value).contains(&secret)));
}

async fn a_used_token_outside_the_grace_revokes_the_whole_family(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    let t2 = auth.refresh(t, t1.token.expose()).await.unwrap();
    env.advance(DEFAULT_REFRESH_GRACE + Duration::from_secs(1));
    // The attacker (or a confused client) replays t1 after the grace: the family dies.
    assert_eq!(
        rejected(auth.refresh(t, t1.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
    // The legitimate holder of t2 is logged out too.
    assert_eq!(
        rejected(auth.refresh(t, t2.token.expose()).await),
        RefreshRejection::Revoked
    );
    let fam = auth.get(t, t1.session.id).await.unwrap().unwrap();
    assert_eq!(fam.revoke_reason, Some(RevokeReason::ReuseDetected));
    assert!(!fam.is_active(env.models.now()));
    // Other logins of the user are untouched.
    let other = auth.login(t, u, "phone").await.unwrap();
    auth.refresh(t, other.token.expose()).await.unwrap();
}

async fn an_older_generation_is_reuse_even_inside_the_grace(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    let t2 = auth.refresh(t, t1.token.expose()).await.unwrap();
    let _t3 = auth.refresh(t, t2.token.expose()).await.unwrap();
    // t1 is two generations back: no grace, although no time passed.
    assert_eq!(
        rejected(auth.refresh(t, t1.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
}

async fn the_previous_token_is_accepted_once_within_the_grace(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    let lost = auth.refresh(t, t1.token.expose()).await.unwrap();
    // The response carrying `lost` never reached the client; it retries with t1.
    env.advance(DEFAULT_REFRESH_GRACE - Duration::from_secs(1));
    let t3 = auth.refresh(t, t1.token.expose()).await.unwrap();
    assert_eq!(t3.session.current_generation, 3);
    // The chain goes on from the new token.
    env.advance(Duration::from_secs(1));
    let t4 = auth.refresh(t, t3.token.expose()).await.unwrap();
    assert_eq!(t4.session.current_generation, 4);
    // The token the grace replaced was superseded: presenting it is reuse.
    assert_eq!(
        rejected(auth.refresh(t, lost.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
    assert_eq!(
        rejected(auth.refresh(t, t4.token.expose()).await),
        RefreshRejection::Revoked
    );
}

async fn the_grace_is_spent_after_one_replay(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    auth.refresh(t, t1.token.expose()).await.unwrap();
    auth.refresh(t, t1.token.expose()).await.unwrap();
    assert_eq!(
        rejected(auth.refresh(t, t1.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
}

async fn the_grace_ends_when_the_child_token_was_used(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    let t2 = auth.refresh(t, t1.token.expose()).await.unwrap();
    auth.refresh(t, t2.token.expose()).await.unwrap();
    // t1's child (t2) was used: the client clearly got t2, so t1 now is theft.
    assert_eq!(
        rejected(auth.refresh(t, t1.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
}

async fn families_expire_when_idle_and_at_their_absolute_end(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    // Idle: not refreshed for the idle TTL.
    let idle = auth.login(t, u, "idle").await.unwrap();
    env.advance(DEFAULT_IDLE_TTL);
    assert_eq!(
        rejected(auth.refresh(t, idle.token.expose()).await),
        RefreshRejection::Expired
    );
    // Absolute: refreshed every 6 days, it still ends 30 days after the login.
    let busy = auth.login(t, u, "busy").await.unwrap();
    let end = busy.session.absolute_expires_at;
    let mut token = busy.token;
    loop {
        env.advance(Duration::from_secs(6 * 24 * 3600));
        let now = env.models.now();
        let r = auth.refresh(t, token.expose()).await;
        if now >= end {
            assert_eq!(rejected(r), RefreshRejection::Expired);
            break;
        }
        let next = r.unwrap();
        assert!(next.session.idle_expires_at <= end);
        token = next.token;
    }
    // Expiry revoked nothing: it is simply over.
    assert_eq!(
        auth.get(t, busy.session.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    // Pruning removes the expired family with its tokens and index entries.
    let pruned = auth.prune_expired(t, 100).await.unwrap();
    assert!(pruned >= 1, "{pruned}");
    assert_eq!(auth.get(t, busy.session.id).await.unwrap(), None);
    assert!(auth
        .list_for_user(t, u)
        .await
        .unwrap()
        .iter()
        .all(|s| s.id != busy.session.id));
}

async fn a_forged_token_is_invalid_and_revokes_nothing(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    let real = t1.token.expose();
    let last = real.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &real[..real.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    assert_eq!(
        rejected(auth.refresh(t, &forged).await),
        RefreshRejection::Invalid
    );
    for junk in ["", "stw1", "stw1.x.y.1.z", "Bearer abc"] {
        assert_eq!(
            rejected(auth.refresh(t, junk).await),
            RefreshRejection::Invalid
        );
    }
    // A different generation number with the real secret is not a match either.
    let wrong_gen = real.replacen(".1.", ".2.", 1);
    assert_eq!(
        rejected(auth.refresh(t, &wrong_gen).await),
        RefreshRejection::Invalid
    );
    auth.refresh(t, real).await.unwrap();
}

async fn password_change_disable_and_logout_revoke_logins(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let m = &env.models;
    let a = m.auth().login(t, u, "a").await.unwrap();
    let b = m.auth().login(t, u, "b").await.unwrap();
    // A revocation is not a delete: its retry after `commit_unknown_result` recognises its
    // own revocation, so every backend answers true.
    let revoked = m.auth().revoke(t, a.session.id, RevokeReason::Logout).await;
    assert!(revoked.unwrap(), "the family was not revoked by this call");
    assert!(!m
        .auth()
        .revoke(t, a.session.id, RevokeReason::Logout)
        .await
        .unwrap());
    assert_eq!(
        rejected(m.auth().refresh(t, a.token.expose()).await),
        RefreshRejection::Revoked
    );
    m.users()
        .set_password(t, u, "a brand new password")
        .await
        .unwrap();
    assert_eq!(
        rejected(m.auth().refresh(t, b.token.expose()).await),
        RefreshRejection::Revoked
    );
    assert_eq!(
        m.auth()
            .get(t, b.session.id)
            .await
            .unwrap()
            .unwrap()
            .revoke_reason,
        Some(RevokeReason::PasswordChanged)
    );
    let c = m.auth().login(t, u, "c").await.unwrap();
    m.users()
        .update(
            t,
            u,
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rejected(m.auth().refresh(t, c.token.expose()).await),
        RefreshRejection::Revoked
    );
    assert!(matches!(
        m.auth().login(t, u, "d").await,
        Err(Error::Invalid {
            field: "user_id",
            ..
        })
    ));
}

async fn two_racing_refreshes_of_one_token_both_get_a_token(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let m = env.models.clone();
    let t1 = m.auth().login(t, u, "laptop").await.unwrap();
    let (m1, m2) = (m.clone(), m.clone());
    let (s1, s2) = (t1.token.expose().to_owned(), t1.token.expose().to_owned());
    let a = tokio::spawn(async move { m1.auth().refresh(t, &s1).await });
    let b = tokio::spawn(async move { m2.auth().refresh(t, &s2).await });
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let mut gens = [a.session.current_generation, b.session.current_generation];
    gens.sort_unstable();
    // One rotation and one grace replay: generations 2 and 3, the later one current.
    assert_eq!(gens, [2, 3]);
    let newest = if a.session.current_generation == 3 {
        a
    } else {
        b
    };
    m.auth().refresh(t, newest.token.expose()).await.unwrap();
}

backend_tests!(
    refresh_rotates_to_a_new_generation_each_time,
    a_used_token_outside_the_grace_revokes_the_whole_family,
    an_older_generation_is_reuse_even_inside_the_grace,
    the_previous_token_is_accepted_once_within_the_grace,
    the_grace_is_spent_after_one_replay,
    the_grace_ends_when_the_child_token_was_used,
    families_expire_when_idle_and_at_their_absolute_end,
    a_forged_token_is_invalid_and_revokes_nothing,
    password_change_disable_and_logout_revoke_logins,
    two_racing_refreshes_of_one_token_both_get_a_token,
    login_verifies_and_rehashes_when_the_policy_changes,
);

#[tokio::test]
async fn with_no_grace_the_previous_token_is_reuse_at_once() {
    let mut config = ModelsConfig::for_tests();
    config.auth.grace = Duration::ZERO;
    let env = Env::with_config(Backend::Memory, "no_grace", config).await;
    let (t, u) = setup(&env).await;
    let auth = env.models.auth();
    let t1 = auth.login(t, u, "laptop").await.unwrap();
    auth.refresh(t, t1.token.expose()).await.unwrap();
    assert_eq!(
        rejected(auth.refresh(t, t1.token.expose()).await),
        RefreshRejection::ReuseDetected
    );
}

async fn login_verifies_and_rehashes_when_the_policy_changes(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let (t, u) = setup(&env).await;
    let m = &env.models;
    let before = m.users().password_hash(t, u).await.unwrap().unwrap();
    assert!(
        before.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
        "{before}"
    );
    assert_eq!(
        m.users()
            .login(t, "ADA@acme.example ", PASSWORD)
            .await
            .unwrap()
            .id,
        u
    );
    assert_eq!(
        m.users().password_hash(t, u).await.unwrap().unwrap(),
        before
    );

    // A new binary with a stronger policy (and a longer minimum this password does not meet:
    // logging in must still work and upgrade the hash).
    let stronger = ModelsConfig {
        password: PasswordPolicy {
            memory_kib: 256,
            iterations: 2,
            min_chars: 40,
            ..PasswordPolicy::insecure_for_tests()
        },
        ..ModelsConfig::for_tests()
    };
    let m2 = Models::open(env.db.clone(), stronger).await.unwrap();
    let user = m2
        .users()
        .login(t, "ada@acme.example", PASSWORD)
        .await
        .unwrap();
    assert_eq!(user.last_login_at, Some(m2.now()));
    let after = m2.users().password_hash(t, u).await.unwrap().unwrap();
    assert!(
        after.starts_with("$argon2id$v=19$m=256,t=2,p=1$"),
        "{after}"
    );
    assert!(!m2.hasher().needs_rehash(&after));
    // Still the same password, under the new hash.
    m2.users()
        .login(t, "ada@acme.example", PASSWORD)
        .await
        .unwrap();

    for (email, password) in [
        ("ada@acme.example", "wrong password!!"),
        ("nobody@acme.example", PASSWORD),
        ("not an email", PASSWORD),
    ] {
        assert!(matches!(
            m2.users().login(t, email, password).await,
            Err(Error::InvalidCredentials)
        ));
    }
    m2.users()
        .update(
            t,
            u,
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        m2.users().login(t, "ada@acme.example", PASSWORD).await,
        Err(Error::InvalidCredentials)
    ));
}

/// The real OWASP parameters (m = 19 MiB, t = 2, p = 1): hash and verify once, and report the
/// time on this machine (run with `--nocapture` to see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owasp_parameters_hash_and_verify() {
    let hasher = PasswordHasher::new(PasswordPolicy::owasp());
    let start = Instant::now();
    let phc = hasher.hash("a reasonably long passphrase").await.unwrap();
    let hashed = start.elapsed();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    let start = Instant::now();
    let v = hasher
        .verify(&phc, "a reasonably long passphrase")
        .await
        .unwrap();
    let verified = start.elapsed();
    assert!(v.matches && !v.needs_rehash);
    assert!(
        !hasher
            .verify(&phc, "a reasonably long passphrasE")
            .await
            .unwrap()
            .matches
    );
    eprintln!("argon2id m=19456 t=2 p=1: hash {hashed:?}, verify {verified:?}");
    // The weak test profile's hash needs an upgrade under this policy.
    let weak = PasswordHasher::new(PasswordPolicy::insecure_for_tests())
        .hash("a reasonably long passphrase")
        .await
        .unwrap();
    assert!(hasher.needs_rehash(&weak));
}

/// Hashing runs on the blocking pool behind the semaphore: with one permit, eight concurrent
/// hashes all complete (queued, not refused), each with its own salt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_queue_behind_the_permit_bound_without_blocking_the_runtime() {
    let hasher = PasswordHasher::new(PasswordPolicy {
        memory_kib: 8 * 1024,
        iterations: 1,
        max_concurrent_hashes: 1,
        ..PasswordPolicy::insecure_for_tests()
    });
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let h = hasher.clone();
            tokio::spawn(async move { h.hash(&format!("password number {i}")).await })
        })
        .collect();
    let mut salts = std::collections::BTreeSet::new();
    for t in tasks {
        let phc = t.await.unwrap().unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{phc}");
        salts.insert(phc.split('$').nth(4).unwrap().to_owned());
    }
    assert_eq!(salts.len(), 8);
}
