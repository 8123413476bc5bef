//! The document, limits, error shapes, health, metrics, audit and cron through the router.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{test_config, Harness};
use serde_json::json;
use steward_models::Role;

#[tokio::test]
async fn the_openapi_document_parses_and_lists_every_route() {
    let h = Harness::new().await;
    let r = h.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = r.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/batch", "post"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/jobs/{id}/cancel", "post"),
        ("/v1/jobs/{id}/retry", "post"),
        ("/v1/jobs/{id}/why", "get"),
        ("/v1/queue/stats", "get"),
        ("/v1/queue/pause", "post"),
        ("/v1/queue/resume", "post"),
        ("/v1/sessions", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "patch"),
        ("/v1/sessions/{id}/messages", "post"),
        ("/v1/sessions/{id}/files", "post"),
        ("/v1/sessions/{id}/summary", "get"),
        ("/v1/sessions/{id}/advice", "post"),
        ("/v1/sessions/{id}/jobs/cancel", "post"),
        ("/v1/audit/events", "get"),
        ("/v1/audit/verify", "get"),
        ("/v1/cron", "get"),
        ("/v1/cron/{name}", "get"),
        ("/v1/cron/{name}", "put"),
        ("/v1/cron/{name}", "delete"),
        ("/v1/operator/tenants", "post"),
        ("/v1/operator/tenants", "get"),
        ("/v1/operator/tenants/{id}", "get"),
        ("/v1/operator/tenants/{id}/users", "post"),
        ("/v1/operator/tenants/{id}/plan", "put"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the document"
        );
    }
    let schemas = r.body["components"]["schemas"].as_object().unwrap();
    for s in [
        "EnqueueRequest",
        "JobView",
        "ErrorBody",
        "AdviceRequest",
        "TokenResponse",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    assert_eq!(
        r.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_in_our_shape() {
    let mut cfg = test_config();
    cfg.body_limit = 2048;
    let h = Harness::with_config(cfg).await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "args": {"blob": "x".repeat(4096)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "body_too_large");
    // Without a Content-Length too (a streamed body).
    let stream = futures_stream(vec![vec![b' '; 1500], vec![b' '; 1500]]);
    let req = Request::post("/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(stream)
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

fn futures_stream(chunks: Vec<Vec<u8>>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(c.into())).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(ReceiverStream(rx))
}

struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn bad_json_wrong_types_and_unknown_fields_name_the_field() {
    let h = Harness::new().await;
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "bogus": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.field(), "bogus");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "priority": 1000}),
        )
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "priority")
    );
    let r = h
        .post(
            "/v1/jobs",
            &token,
            json!({"kind": "acme.export", "session_id": "nope"}),
        )
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "session_id")
    );
    let r = h.post("/v1/jobs", &token, json!({"args": {}})).await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "kind")
    );
    let req = Request::post("/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"kind\": "))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "malformed_json");
    let req = Request::post("/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for uri in ["/v1/jobs/123", "/v1/sessions/abc/summary"] {
        let r = h.get(uri, &token).await;
        assert_eq!(
            (r.status, r.field()),
            (StatusCode::BAD_REQUEST, "id"),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape_with_a_request_id() {
    let h = Harness::new().await;
    let r = h.call(Method::GET, "/v2/nothing", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
    assert!(r.headers.contains_key("x-request-id"));
    let r = h.call(Method::DELETE, "/v1/jobs", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "method_not_allowed");
    // A caller's request id is kept.
    let req = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::new().await;
    let r = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let r = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Without a recorder, /metrics says so.
    let r = h.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // This test binary's only recorder.
    metrics::set_global_recorder(recorder).unwrap();
    let h = Harness::new().await;
    let router = steward_api::router(h.state.clone().with_metrics(handle));
    let (_, _, token) = h.tenant(&[Role::Member]).await;
    let missing = uuid::Uuid::now_v7();
    for uri in ["/healthz".to_string(), format!("/v1/jobs/{missing}")] {
        let req = Request::get(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(router.clone(), req)
            .await
            .unwrap();
        assert!(resp.status() == StatusCode::OK || resp.status() == StatusCode::NOT_FOUND);
    }
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("steward_http_requests_total")
                && l.contains("route=\"/v1/jobs/{id}\"")
                && l.contains("status=\"404\"")),
        "{text}"
    );
    assert!(
        text.contains("steward_http_request_duration_seconds"),
        "{text}"
    );
}

#[tokio::test]
async fn audit_events_and_chain_verification() {
    let h = Harness::new().await;
    let (tenant, _, admin) = h.tenant(&[Role::Admin]).await;
    let member = h.token(tenant, &uuid::Uuid::now_v7().to_string(), &["member"]);
    assert_eq!(
        h.get("/v1/audit/events", &member).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.get("/v1/audit/verify", &member).await.status,
        StatusCode::FORBIDDEN
    );
    for action in ["a.one", "a.two"] {
        h.models
            .audit()
            .append(tenant, steward_models::NewAuditEvent::new(action))
            .await
            .unwrap();
    }
    let r = h.get("/v1/audit/events?pending=true", &admin).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["events"].as_array().unwrap().len(), 0);
    assert_eq!(r.body["pending"].as_array().unwrap().len(), 2);
    h.models.audit().seal_all(tenant).await.unwrap();
    let r = h.get("/v1/audit/events", &admin).await;
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[1]["action"], "a.two");
    assert_eq!(events[0]["at"], "2026-01-01T00:00:00.000000Z");
    let r = h.get("/v1/audit/events?from_seq=2", &admin).await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 1);
    let r = h.get("/v1/audit/verify", &admin).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["head_seq"], 2);
    assert_eq!(r.body["head_hash"], events[1]["hash"]);
}

#[tokio::test]
async fn cron_schedules_are_admin_only_and_validated() {
    let h = Harness::new().await;
    let (tenant, _, admin) = h.tenant(&[Role::Admin]).await;
    let member = h.token(tenant, "m", &["member"]);
    let body = json!({"expression": "0 3 * * *", "time_zone": "Europe/Berlin",
                      "job": {"kind": "prune_jobs", "priority": 200}, "overlap": "allow"});
    let r = h
        .call(
            Method::PUT,
            "/v1/cron/nightly",
            Some(&member),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h
        .call(Method::PUT, "/v1/cron/nightly", Some(&admin), Some(body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["overlap"], "allow");
    assert_eq!(r.body["job"]["kind"], "prune_jobs");
    // 03:00 in Berlin on 2026-01-01 is 02:00 UTC.
    assert_eq!(r.body["next_fire"], "2026-01-01T02:00:00.000000Z");
    let r = h.get("/v1/cron/nightly", &admin).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.get("/v1/cron?limit=1", &admin).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["schedules"][0]["name"], "nightly");
    assert_eq!(r.body["next_after"], "nightly");
    let r = h.get("/v1/cron?after=nightly", &admin).await;
    assert_eq!(r.body["schedules"], json!([]));
    let r = h.get("/v1/cron?limit=0", &admin).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let stored = steward_queue::Scheduler::new(&h.queue)
        .get(Some(tenant), "nightly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.template.priority, 200);

    for (body, field) in [
        (
            json!({"expression": "every day", "job": {"kind": "prune_jobs"}}),
            "expression",
        ),
        (
            json!({"expression": "0 3 * * *", "time_zone": "Mars/Olympus", "job": {"kind": "prune_jobs"}}),
            "time_zone",
        ),
        (
            json!({"expression": "0 3 * * *", "job": {"kind": "nope"}}),
            "job.kind",
        ),
        (
            json!({"expression": "0 3 * * *", "job": {"kind": "prune_jobs"}, "missed": "panic"}),
            "missed",
        ),
        (
            json!({"expression": "0 3 * * *", "job": {"kind": "prune_jobs", "run_at": "2026-01-02T00:00:00Z"}}),
            "job.run_at",
        ),
    ] {
        let r = h
            .call(Method::PUT, "/v1/cron/bad", Some(&admin), Some(body))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
        assert_eq!(r.field(), field, "{:?}", r.body);
    }
    let r = h
        .call(Method::DELETE, "/v1/cron/nightly", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .call(Method::DELETE, "/v1/cron/nightly", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("/v1/cron/nightly", &admin).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn state_refuses_bad_config_and_an_empty_key_set() {
    let h = Harness::new().await;
    let mut cfg = test_config();
    cfg.advice_wait = std::time::Duration::from_secs(60);
    let e = steward_api::AppState::new(
        Arc::clone(&h.queue),
        h.models.clone(),
        steward_api::auth::KeySet::single(&h.key),
        cfg,
        h.clock.shared(),
    )
    .unwrap_err();
    assert_eq!(e.field, "api.request_timeout");
    let e = steward_api::AppState::new(
        Arc::clone(&h.queue),
        h.models.clone(),
        steward_api::auth::KeySet::new(),
        test_config(),
        h.clock.shared(),
    )
    .unwrap_err();
    assert_eq!(e.field, "auth.keys");
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(steward_api::serve(listener, h.router.clone(), async {
        let _ = stopped.await;
    }));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ok\""), "{answer}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
