//! Bearer tokens, login, refresh and logout through the router.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{test_config, Harness, PASSWORD, START};
use hmac::{KeyInit, Mac};
use serde_json::json;
use steward_api::auth::{mint_token, mint_token_hs256, Hs256Secret, KeySet, SigningKey};
use steward_models::Role;
use uuid::Uuid;

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn hs256(key: &[u8], header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

async fn status_with(h: &Harness, token: &str) -> (StatusCode, String) {
    let r = h.get("/v1/queue/stats", token).await;
    (
        r.status,
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

#[tokio::test]
async fn a_valid_token_is_accepted_and_a_missing_one_is_401() {
    let h = Harness::new().await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    assert_eq!(status_with(&h, &token).await.0, StatusCode::OK);
    let r = h.call(Method::GET, "/v1/queue/stats", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthorized");
    assert!(r.headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let h = Harness::new().await;
    let tenant = Uuid::now_v7();
    let good = h.token(tenant, "u1", &["member"]);
    let claims = serde_json::to_value(h.claims(tenant, "u1", &["member"])).unwrap();
    let kid = h.key.kid().to_string();

    // A tampered signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    sig[0] ^= 1;
    parts[2] = URL_SAFE_NO_PAD.encode(sig);
    let tampered_sig = parts.join(".");
    // A tampered payload under the original signature (another tenant).
    let mut other = claims.clone();
    other["tid"] = json!(Uuid::now_v7());
    let g: Vec<&str> = good.split('.').collect();
    let tampered_payload = format!("{}.{}.{}", g[0], b64(&other), g[2]);
    // alg: none, with and without a signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": kid})),
        b64(&claims)
    );
    let none_sig = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "none", "kid": kid})),
        b64(&claims),
        g[2]
    );
    // HS256 "signed" with the Ed25519 public key (raw bytes and PEM): the key confusion attack.
    let public_raw = h.key.verification_key();
    let steward_api::auth::VerificationKey::Ed25519(vk) = public_raw else {
        panic!("expected an Ed25519 key")
    };
    let hs_raw = hs256(
        vk.as_bytes(),
        &json!({"alg": "HS256", "kid": kid, "typ": "JWT"}),
        &claims,
    );
    let hs_pem = hs256(
        h.key.public_pem().unwrap().as_bytes(),
        &json!({"alg": "HS256", "kid": kid, "typ": "JWT"}),
        &claims,
    );
    // Claims problems, correctly signed.
    let signed = |mutate: &dyn Fn(&mut serde_json::Value)| {
        let mut v = claims.clone();
        mutate(&mut v);
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let input = format!("{}.{}", b64(&header), b64(&v));
        format!("{input}.{}", ed_sign(HARNESS_SEED, input.as_bytes()))
    };
    let expired = signed(&|v| v["exp"] = json!(START / 1_000_000 - 3600));
    let no_tid = signed(&|v| {
        v.as_object_mut().unwrap().remove("tid");
    });
    let no_sub = signed(&|v| {
        v.as_object_mut().unwrap().remove("sub");
    });
    let no_exp = signed(&|v| {
        v.as_object_mut().unwrap().remove("exp");
    });
    let wrong_aud = signed(&|v| v["aud"] = json!("someone-else"));
    let wrong_iss = signed(&|v| v["iss"] = json!("evil"));
    let bad_tid = signed(&|v| v["tid"] = json!("not-a-uuid"));
    let future_nbf = signed(&|v| v["nbf"] = json!(START / 1_000_000 + 3600));
    // Another key's token, and an unknown kid.
    let stranger = mint_token(
        &SigningKey::from_seed(&[9; 32]),
        &h.claims(tenant, "u1", &[]),
    )
    .unwrap();

    for (name, token, why) in [
        ("tampered signature", tampered_sig, "bad signature"),
        ("tampered payload", tampered_payload, "bad signature"),
        ("alg none", none, "algorithm"),
        ("alg none with signature", none_sig, "algorithm"),
        ("HS256 with the public key bytes", hs_raw, "algorithm"),
        ("HS256 with the public key PEM", hs_pem, "algorithm"),
        ("expired", expired, "expired"),
        ("missing tid", no_tid, "`tid`"),
        ("missing sub", no_sub, "`sub`"),
        ("missing exp", no_exp, "`exp`"),
        ("wrong audience", wrong_aud, "audience"),
        ("wrong issuer", wrong_iss, "issuer"),
        ("bad tid", bad_tid, "`tid`"),
        ("not yet valid", future_nbf, "not valid yet"),
        ("unknown key", stranger, "unknown signing key"),
        ("garbage", "abc".to_string(), "malformed"),
        ("two parts", "a.b".to_string(), "malformed"),
    ] {
        let (status, message) = status_with(&h, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {message}");
        assert!(message.contains(why), "{name}: {message}");
    }
    assert_eq!(status_with(&h, &good).await.0, StatusCode::OK);
}

/// The seed of the harness's signing key.
const HARNESS_SEED: [u8; 32] = [42; 32];

/// An Ed25519 signature (base64url) over `input` with the key of `seed`.
fn ed_sign(seed: [u8; 32], input: &[u8]) -> String {
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    URL_SAFE_NO_PAD.encode(key.sign(input).to_bytes())
}

#[tokio::test]
async fn two_keys_are_valid_at_once_for_rotation() {
    let old = SigningKey::from_seed(&[1; 32]);
    let new = SigningKey::from_seed(&[2; 32]);
    let mut keys = KeySet::single(&old);
    keys.insert(new.kid(), new.verification_key()).unwrap();
    let h = Harness::with_keys(test_config(), Some(keys)).await;
    let t = Uuid::now_v7();
    for k in [&old, &new] {
        let token = mint_token(k, &h.claims(t, "svc", &[])).unwrap();
        assert_eq!(status_with(&h, &token).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn hs256_works_only_in_a_development_key_set() {
    let secret = Hs256Secret::new("dev", vec![7u8; 32]).unwrap();
    assert!(KeySet::new().insert_hs256(&secret).is_err());
    let mut dev = KeySet::development();
    dev.insert_hs256(&secret).unwrap();
    let h = Harness::with_keys(test_config(), Some(dev)).await;
    let token = mint_token_hs256(&secret, &h.claims(Uuid::now_v7(), "svc", &[])).unwrap();
    assert_eq!(status_with(&h, &token).await.0, StatusCode::OK);
    // The same claims signed with EdDSA under the HS256 kid: wrong algorithm for that key.
    let claims = serde_json::to_value(h.claims(Uuid::now_v7(), "svc", &[])).unwrap();
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "EdDSA", "kid": "dev"})),
        b64(&claims)
    );
    let forged = format!("{input}.{}", ed_sign([3; 32], input.as_bytes()));
    assert_eq!(status_with(&h, &forged).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn key_directory_loads_public_and_private_pems() {
    let dir = std::env::temp_dir().join(format!("steward-keys-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = SigningKey::from_seed(&[5; 32]);
    let b = SigningKey::from_seed(&[6; 32]);
    std::fs::write(dir.join("a.pem"), a.public_pem().unwrap()).unwrap();
    std::fs::write(dir.join("b.pem"), b.to_pem().unwrap()).unwrap();
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let set = KeySet::from_dir(&dir).unwrap();
    assert_eq!(set.kids().collect::<Vec<_>>(), vec!["a", "b"]);
    std::fs::write(dir.join("c.pem"), "not a key").unwrap();
    let err = KeySet::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("c.pem"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn login(h: &Harness, tenant: Uuid, email: &str, password: &str) -> common::Response {
    h.call(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(
            json!({"tenant_id": tenant, "email": email, "password": password, "client": "laptop"}),
        ),
    )
    .await
}

async fn email_of(h: &Harness, tenant: Uuid, user: Uuid) -> String {
    h.models
        .users()
        .get(tenant, user)
        .await
        .unwrap()
        .unwrap()
        .email
}

#[tokio::test]
async fn login_issues_a_working_access_token_and_refresh_rotates() {
    let h = Harness::new().await;
    let (tenant, user, _) = h.tenant(&[Role::Admin]).await;
    let email = email_of(&h, tenant, user).await;
    let r = login(&h, tenant, &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let access = r.body["access_token"].as_str().unwrap().to_string();
    let refresh1 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(r.body["token_type"], "Bearer");
    // The access token carries the user's roles: admin-only endpoints work.
    let r = h.get("/v1/audit/events?pending=true", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["pending"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "user.login"));

    let r = h
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let refresh2 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh2);
    assert_eq!(
        status_with(&h, r.body["access_token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn wrong_password_is_401_without_saying_which_part_was_wrong() {
    let h = Harness::new().await;
    let (tenant, user, _) = h.tenant(&[Role::Member]).await;
    let email = email_of(&h, tenant, user).await;
    let wrong = login(&h, tenant, &email, "not the password").await;
    let unknown = login(&h, tenant, "nobody@example.com", PASSWORD).await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.code(), "invalid_credentials");
    }
    assert_eq!(wrong.body, unknown.body);
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_family() {
    let h = Harness::new().await;
    let (tenant, user, _) = h.tenant(&[Role::Member]).await;
    let email = email_of(&h, tenant, user).await;
    let r = login(&h, tenant, &email, PASSWORD).await;
    let first = r.body["refresh_token"].as_str().unwrap().to_string();
    let refresh = |t: String| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": t})),
            )
            .await
        }
    };
    let r = refresh(first.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    let second = r.body["refresh_token"].as_str().unwrap().to_string();
    // Past the grace for lost responses, the first token shows up again: reuse.
    h.clock.advance(Duration::from_secs(60));
    let r = refresh(first).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "refresh_reuse_detected");
    // The whole family is revoked: the legitimate newer token is refused too.
    let r = refresh(second).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "refresh_revoked");
    // Garbage is invalid, not a server error.
    let r = refresh("stw1.nonsense".into()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "refresh_invalid");
}

#[tokio::test]
async fn logout_revokes_the_family_and_needs_the_same_user() {
    let h = Harness::new().await;
    let (tenant, user, _) = h.tenant(&[Role::Member]).await;
    let email = email_of(&h, tenant, user).await;
    let r = login(&h, tenant, &email, PASSWORD).await;
    let access = r.body["access_token"].as_str().unwrap().to_string();
    let refresh_token = r.body["refresh_token"].as_str().unwrap().to_string();
    // Another user of the tenant cannot log this one out.
    let other = h.user(tenant, &[Role::Member]).await;
    let other_token = h.token(tenant, &other.to_string(), &["member"]);
    let r = h
        .post(
            "/v1/auth/logout",
            &other_token,
            json!({"refresh_token": refresh_token}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h
        .post(
            "/v1/auth/logout",
            &access,
            json!({"refresh_token": refresh_token}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["revoked"], true);
    let r = h
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_token})),
        )
        .await;
    assert_eq!(r.code(), "refresh_revoked");
}

#[tokio::test]
async fn login_is_throttled_per_account_then_recovers_with_time() {
    let h = Harness::new().await;
    let (tenant, user, _) = h.tenant(&[Role::Member]).await;
    let email = email_of(&h, tenant, user).await;
    let burst = h.config.login.per_account.burst;
    // Successful logins do not use up the budget.
    for _ in 0..burst + 2 {
        assert_eq!(
            login(&h, tenant, &email, PASSWORD).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..burst {
        let r = login(&h, tenant, &email, "wrong").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused now, before any hashing.
    let r = login(&h, tenant, &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Emails are matched normalized: the same account in other case is throttled too.
    let r = login(&h, tenant, &email.to_uppercase(), PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    h.clock.advance(Duration::from_secs(retry));
    let r = login(&h, tenant, &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn login_is_throttled_per_address_across_accounts() {
    let h = Harness::new().await;
    let (tenant, _, _) = h.tenant(&[Role::Member]).await;
    let addr: SocketAddr = "203.0.113.9:5000".parse().unwrap();
    let burst = h.config.login.per_address.burst;
    for i in 0..burst {
        let r = h
            .call_from(
                addr,
                "/v1/auth/login",
                json!({"tenant_id": tenant, "email": format!("x{i}@example.com"), "password": "p"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = h
        .call_from(
            addr,
            "/v1/auth/login",
            json!({"tenant_id": tenant, "email": "fresh@example.com", "password": "p"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected.
    let r = h
        .call_from(
            "198.51.100.1:1".parse().unwrap(),
            "/v1/auth/login",
            json!({"tenant_id": tenant, "email": "fresh@example.com", "password": "p"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn per_tenant_rate_limit_answers_429_with_retry_after() {
    let mut cfg = test_config();
    cfg.tenant_rate = steward_api::RateLimit {
        per_sec: 1.0,
        burst: 3,
    };
    let h = Harness::with_config(cfg).await;
    let (tenant, _, token) = h.tenant(&[Role::Member]).await;
    for _ in 0..3 {
        assert_eq!(status_with(&h, &token).await.0, StatusCode::OK);
    }
    let r = h.get("/v1/queue/stats", &token).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "1");
    // Another tenant has its own bucket.
    let (_, _, other) = h.tenant(&[Role::Member]).await;
    assert_eq!(status_with(&h, &other).await.0, StatusCode::OK);
    // A second token of the same tenant shares the bucket.
    let again = h.token(tenant, "svc", &[]);
    assert_eq!(
        status_with(&h, &again).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(status_with(&h, &token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn login_without_a_signing_key_is_refused_clearly() {
    let h = Harness::new().await;
    let state = steward_api::AppState::new(
        std::sync::Arc::clone(&h.queue),
        h.models.clone(),
        KeySet::single(&h.key),
        test_config(),
        h.clock.shared(),
    )
    .unwrap();
    let router = steward_api::router(state);
    let req = axum::http::Request::post("/v1/auth/login")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"tenant_id": Uuid::now_v7(), "email": "a@b.c", "password": "x"}).to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_login_budget() {
    let mut cfg = test_config();
    cfg.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let h = Harness::with_config(cfg).await;
    let (tenant, _, _) = h.tenant(&[Role::Member]).await;
    let attempt = |client: &'static str, email: String| {
        let h = &h;
        async move {
            let mut req = axum::http::Request::post("/v1/auth/login")
                .header("content-type", "application/json")
                .header("x-forwarded-for", client)
                .body(axum::body::Body::from(
                    json!({"tenant_id": tenant, "email": email, "password": "p"}).to_string(),
                ))
                .unwrap();
            let proxy: SocketAddr = "10.0.0.1:443".parse().unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(proxy));
            h.send(req).await.status
        }
    };
    let burst = h.config.login.per_address.burst;
    for i in 0..burst {
        assert_eq!(
            attempt("203.0.113.1", format!("a{i}@example.com")).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        attempt("203.0.113.1", "z@example.com".into()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy is not throttled.
    assert_eq!(
        attempt("203.0.113.2", "z@example.com".into()).await,
        StatusCode::UNAUTHORIZED
    );
}
