//! `/v1/jobs` and `/v1/queue` through the router.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::Harness;
use serde_json::json;
use steward_models::Role;
use steward_queue::{ClaimRequest, Outcome};
use uuid::Uuid;

#[tokio::test]
async fn enqueue_get_and_list_a_job() {
    let h = Harness::new().await;
    let (tenant, _, token) = h.tenant(&[Role::Member]).await;
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "summarize_session", "args": {"session_id": Uuid::now_v7()},
                   "priority": 5, "max_attempts": 2, "timeout_ms": 1000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers["location"], format!("/v1/jobs/{id}"));
    assert_eq!(r.body["duplicate"], false);

    let r = h.get(&format!("/v1/jobs/{id}"), &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "queued");
    assert_eq!(r.body["priority"], 5);
    assert_eq!(r.body["max_attempts"], 2);
    assert_eq!(r.body["created_at"], "2026-01-01T00:00:00.000000Z");
    assert!(r.body.get("lease").is_none(), "no fencing token leaks");
    // The queue stored it under the token's tenant.
    assert!(h
        .queue
        .get(tenant, id.parse().unwrap())
        .await
        .unwrap()
        .is_some());

    h.job(&token).await;
    let r = h.get("/v1/jobs?kind=acme.export", &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 1);
    let r = h.get("/v1/jobs?state=queued&limit=1", &token).await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 1);
    // Following the cursor visits both jobs once, then ends.
    let mut seen = vec![r.body["jobs"][0]["id"].clone()];
    let mut cursor = r.body["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let r = h
            .get(&format!("/v1/jobs?state=queued&limit=1&cursor={c}"), &token)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        seen.extend(
            r.body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].clone()),
        );
        cursor = r.body["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1]);
}

#[tokio::test]
async fn list_filters_are_validated_by_name() {
    let h = Harness::new().await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    for (q, field) in [
        ("state=sleeping", "state"),
        ("session=nope", "session"),
        ("limit=0", "limit"),
        ("limit=lots", "limit"),
        ("cursor=zz", "cursor"),
        ("colour=red", "colour"),
    ] {
        let r = h.get(&format!("/v1/jobs?{q}"), &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {:?}", r.body);
        assert_eq!(r.field(), field, "{q}: {:?}", r.body);
    }
}

#[tokio::test]
async fn idempotency_key_from_header_or_body_returns_the_first_job() {
    let h = Harness::new().await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let send = |key: &'static str| {
        let h = &h;
        let token = token.clone();
        async move {
            let req = Request::post("/v1/jobs")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(Body::from(json!({"kind": "acme.export"}).to_string()))
                .unwrap();
            h.send(req).await
        }
    };
    let first = send("order-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send("order-1").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["id"], first.body["id"]);
    // The same key in the body is the same job.
    let body = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "idempotency_key": "order-1"}),
        )
        .await;
    assert_eq!(body.body["id"], first.body["id"]);
    // Header and body disagreeing is an error naming the field.
    let req = Request::post("/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "a")
        .body(Body::from(
            json!({"kind": "acme.export", "idempotency_key": "b"}).to_string(),
        ))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field(), "idempotency_key");
}

#[tokio::test]
async fn unknown_kinds_and_oversized_args_are_refused_naming_the_field() {
    let mut cfg = common::test_config();
    cfg.max_args_bytes = 100;
    let h = Harness::with_config(cfg).await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let r = h.post("/v1/jobs", &token, json!({"kind": "rm_rf"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "unknown_kind");
    assert_eq!(r.field(), "kind");
    // The scheduler's own fan-out kind is not enqueueable either.
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": steward_queue::FANOUT_KIND}),
        )
        .await;
    assert_eq!(r.code(), "unknown_kind");
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "args": {"blob": "x".repeat(200)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.field(), "args");
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "run_at": "tomorrow"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field(), "run_at");
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "max_attempts": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.field(), "max_attempts");
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_and_names_the_bad_job() {
    let h = Harness::new().await;
    let (tenant, _, token) = h.tenant(&[Role::Member]).await;
    let r = h
        .post(
            "/v1/jobs/batch",
            &token,
            json!({"jobs": [{"kind": "acme.export"}, {"kind": "nope"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field(), "jobs[1].kind");
    let r = h
        .post(
            "/v1/jobs/batch",
            &token,
            json!({"jobs": [{"kind": "acme.export"}, {"kind": "acme.export", "priority": "high"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.field(), "jobs[1].priority");
    assert_eq!(
        h.queue.counts(tenant).await.unwrap().values().sum::<i64>(),
        0
    );
    let r = h
        .post(
            "/v1/jobs/batch",
            &token,
            json!({"jobs": [{"kind": "acme.export"}, {"kind": "prune_jobs"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 2);
    let r = h.post("/v1/jobs/batch", &token, json!({"jobs": []})).await;
    assert_eq!(r.field(), "jobs");
}

#[tokio::test]
async fn cancel_retry_and_why_waiting() {
    let h = Harness::new().await;
    let (tenant, _, token) = h.tenant(&[Role::Member]).await;
    let waiting = h.job(&token).await;
    let r = h.get(&format!("/v1/jobs/{waiting}/why"), &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["reason"], "queued");
    let r = h
        .post(&format!("/v1/jobs/{waiting}/cancel"), &token, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "cancelled");
    // Retrying a job that is not dead is a conflict.
    let r = h
        .post(&format!("/v1/jobs/{waiting}/retry"), &token, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "invalid_state");

    // A job that fails permanently is dead; retry puts it back.
    let dead = h.job(&token).await;
    let lease = h
        .queue
        .claim(&ClaimRequest {
            worker: "t".into(),
            kinds: None,
            max: 1,
            lease: Duration::from_secs(30),
        })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(lease.job_id, dead);
    h.queue
        .fail(
            &lease,
            Outcome::Fail {
                error: "boom".into(),
            },
        )
        .await
        .unwrap();
    let r = h.get(&format!("/v1/jobs/{dead}"), &token).await;
    assert_eq!(r.body["state"], "dead");
    assert_eq!(r.body["dead_reason"], "failed_permanently");
    assert_eq!(r.body["errors"][0]["message"], "boom");
    let r = h
        .post(&format!("/v1/jobs/{dead}/retry"), &token, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "queued");
    assert_eq!(h.queue.get(tenant, dead).await.unwrap().unwrap().attempt, 0);

    let missing = Uuid::now_v7();
    for uri in [
        format!("/v1/jobs/{missing}"),
        format!("/v1/jobs/{missing}/why"),
    ] {
        assert_eq!(h.get(&uri, &token).await.status, StatusCode::NOT_FOUND);
    }
    let r = h.get("/v1/jobs/not-a-uuid", &token).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field(), "id");
}

#[tokio::test]
async fn stats_pause_and_resume() {
    let h = Harness::new().await;
    let (tenant, _, admin) = h.tenant(&[Role::Admin]).await;
    let member = h.token(tenant, &Uuid::now_v7().to_string(), &["member"]);
    let job = h.job(&member).await;
    let r = h.get("/v1/queue/stats", &member).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["counts"]["queued"], 1);
    assert_eq!(r.body["counts"]["dead"], 0);

    let r = h.post("/v1/queue/pause", &member, json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h.post("/v1/queue/pause", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["paused"], true);
    let r = h.get(&format!("/v1/jobs/{job}/why"), &member).await;
    assert_eq!(r.body["reason"], "paused");
    let r = h.post("/v1/queue/resume", &admin, json!({})).await;
    assert_eq!(r.body["paused"], false);
    let r = h.get(&format!("/v1/jobs/{job}/why"), &member).await;
    assert_eq!(r.body["reason"], "queued");
    // One kind only.
    let r = h
        .call(
            Method::POST,
            "/v1/queue/pause?kind=acme.export",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["kind"], "acme.export");
    let r = h.get(&format!("/v1/jobs/{job}/why"), &member).await;
    assert_eq!(r.body["reason"], "paused");
    assert_eq!(r.body["kind"], "acme.export");
}

#[tokio::test]
async fn queue_full_is_429_naming_the_limit() {
    let h = Harness::new().await;
    let (tenant, _, token) = h.tenant(&[Role::Member]).await;
    h.queue
        .set_tenant_config(
            tenant,
            &steward_queue::TenantQueueConfig {
                max_queued: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.job(&token).await;
    let r = h
        .post("/v1/jobs", &token, json!({"kind": "acme.export"}))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.code(), "queue_full");
    assert_eq!(r.field(), "max_queued");
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn cancel_all_jobs_of_a_session() {
    let h = Harness::new().await;
    let (tenant, _, token) = h.tenant(&[Role::Member]).await;
    let session = h.session(&token).await;
    for _ in 0..3 {
        let r = h
            .post(
                "/v1/jobs",
                &token,
                json!({"kind": "acme.export", "session_id": session}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let other = h.job(&token).await;
    let r = h
        .post(
            &format!("/v1/sessions/{session}/jobs/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["cancelled"], 3);
    let job = h.queue.get(tenant, other).await.unwrap().unwrap();
    assert_eq!(job.state, steward_queue::JobState::Queued);
    let r = h
        .get(
            &format!("/v1/jobs?session={session}&state=cancelled"),
            &token,
        )
        .await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 3);
}
