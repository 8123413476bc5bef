//! Tenant isolation: with tenant A's token, every endpoint that takes an id answers 404 for
//! tenant B's job, session and schedule, exactly as for an id that does not exist, and
//! changes nothing of B's.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};
use steward_models::Role;
use uuid::Uuid;

/// Every id-taking endpoint, as (method, uri, body), for a job, a session and a schedule.
fn probes(job: Uuid, session: Uuid, schedule: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/v1/jobs/{job}"), None),
        (
            Method::POST,
            format!("/v1/jobs/{job}/cancel"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/jobs/{job}/retry"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/jobs/{job}/why"), None),
        (Method::GET, format!("/v1/sessions/{session}"), None),
        (
            Method::PATCH,
            format!("/v1/sessions/{session}"),
            Some(json!({"name": "hijacked"})),
        ),
        (
            Method::POST,
            format!("/v1/sessions/{session}/messages"),
            Some(json!({"messages": [{"role": "user", "content": "hi"}]})),
        ),
        (
            Method::POST,
            format!("/v1/sessions/{session}/files"),
            Some(json!({"path": "a.rs", "size": 1, "content_hash": "sha256:00"})),
        ),
        (Method::GET, format!("/v1/sessions/{session}/summary"), None),
        (
            Method::POST,
            format!("/v1/sessions/{session}/advice"),
            Some(json!({"question": "q", "token_budget": 10})),
        ),
        (
            Method::POST,
            format!("/v1/sessions/{session}/jobs/cancel"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/cron/{schedule}"), None),
        (Method::DELETE, format!("/v1/cron/{schedule}"), None),
    ]
}

#[tokio::test]
async fn another_tenants_ids_are_404_like_missing_ones() {
    let h = Harness::new().await;
    let (tenant_a, _, token_a) = h.tenant(&[Role::Admin]).await;
    let (tenant_b, _, token_b) = h.tenant(&[Role::Admin]).await;
    let job_b = h.job(&token_b).await;
    let session_b = h.session(&token_b).await;
    let r = h
        .call(
            Method::PUT,
            "/v1/cron/nightly",
            Some(&token_b),
            Some(json!({"expression": "0 3 * * *", "job": {"kind": "prune_jobs"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let before_b = h.queue.get(tenant_b, job_b).await.unwrap().unwrap();

    let foreign = probes(job_b, session_b, "nightly");
    let missing = probes(Uuid::now_v7(), Uuid::now_v7(), "no-such-schedule");
    for ((method, uri, body), (m2, missing_uri, body2)) in foreign.into_iter().zip(missing) {
        let r = h.call(method.clone(), &uri, Some(&token_a), body).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {:?}",
            r.body
        );
        let m = h.call(m2, &missing_uri, Some(&token_a), body2).await;
        assert_eq!(m.status, StatusCode::NOT_FOUND, "{method} {missing_uri}");
        assert_eq!(
            r.body, m.body,
            "{method} {uri}: indistinguishable from a missing id"
        );
    }

    // Nothing of B changed, and B still sees its records.
    assert_eq!(
        h.queue.get(tenant_b, job_b).await.unwrap().unwrap(),
        before_b
    );
    let s = h.get(&format!("/v1/sessions/{session_b}"), &token_b).await;
    assert_eq!(s.body["name"], "work");
    assert_eq!(
        h.get("/v1/cron/nightly", &token_b).await.status,
        StatusCode::OK
    );
    // A's listings show none of B's schedules or jobs.
    let r = h.get("/v1/cron", &token_a).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(!r.body.to_string().contains("nightly"), "{:?}", r.body);
    let r = h.get("/v1/cron", &token_b).await;
    assert_eq!(r.body["schedules"][0]["name"], "nightly", "{:?}", r.body);
    let r = h.get("/v1/jobs", &token_a).await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 0);
    let r = h
        .get(&format!("/v1/jobs?session={session_b}"), &token_a)
        .await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 0);
    // A's own enqueues land in A, whatever the body says.
    let r = h
        .post(
            "/v1/jobs",
            &token_a,
            json!({"kind": "acme.export", "session_id": session_b}),
        )
        .await;
    let id: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    assert!(h.queue.get(tenant_a, id).await.unwrap().is_some());
    assert!(h.queue.get(tenant_b, id).await.unwrap().is_none());
}

#[tokio::test]
async fn operator_endpoints_are_refused_to_tenant_admins_and_foreign_operators() {
    let h = Harness::new().await;
    let (tenant, _, admin) = h.tenant(&[Role::Owner]).await;
    // An `operator` role claimed in an ordinary tenant is not an operator.
    let fake = h.token(tenant, "x", &["operator", "admin"]);
    for token in [&admin, &fake] {
        let r = h.get("/v1/operator/tenants", token).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = h
            .get(&format!("/v1/operator/tenants/{tenant}"), token)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = h
            .post(
                "/v1/operator/tenants",
                token,
                json!({"name": "x", "kind": "personal", "plan": "free"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn system_tenant_tokens_serve_only_the_operator_endpoints() {
    let h = Harness::new().await;
    let op = h.token(steward_queue::SYSTEM_TENANT, "ops", &["operator", "admin"]);
    let r = h
        .post("/v1/jobs", &op, json!({"kind": "acme.export"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h.get("/v1/queue/stats", &op).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.get("/v1/operator/tenants", &op).await.status,
        StatusCode::OK
    );
}
