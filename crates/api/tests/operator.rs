//! `/v1/operator`: the system tenant's operators manage tenants, users and plans.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, PASSWORD};
use serde_json::json;
use steward_queue::SYSTEM_TENANT;
use uuid::Uuid;

fn operator(h: &Harness) -> String {
    h.token(SYSTEM_TENANT, "ops@example.com", &["operator"])
}

#[tokio::test]
async fn operators_create_tenants_users_and_plans_with_audit_in_the_target_tenant() {
    let h = Harness::new().await;
    let op = operator(&h);
    let r = h
        .post(
            "/v1/operator/tenants",
            &op,
            json!({"name": "Initech", "kind": "organization", "plan": "pro",
                   "feature_flags": {"beta": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let tenant: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.body["limits"]["queue_weight"], 4);
    // The plan's limits became the tenant's queue configuration.
    let qc = h.queue.tenant_config(tenant).await.unwrap();
    assert_eq!(
        (qc.weight, qc.max_running, qc.max_queued),
        (4, Some(16), Some(5000))
    );

    let r = h
        .post(
            &format!("/v1/operator/tenants/{tenant}/users"),
            &op,
            json!({"email": "Boss@Initech.com", "roles": ["owner"], "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["email"], "boss@initech.com");
    assert!(r.body.get("password_hash").is_none());
    let r = h
        .post(
            &format!("/v1/operator/tenants/{tenant}/users"),
            &op,
            json!({"email": "boss@initech.com", "roles": ["member"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.field(), "email");

    let r = h
        .call(
            Method::PUT,
            &format!("/v1/operator/tenants/{tenant}/plan"),
            Some(&op),
            Some(
                json!({"plan": "enterprise", "limits": {"queue_weight": 50, "max_running": 7,
                "max_queued": 900, "audit_retention_days": 400, "third_party_llm": false}}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["plan"], "enterprise");
    let qc = h.queue.tenant_config(tenant).await.unwrap();
    assert_eq!(
        (qc.weight, qc.max_running, qc.max_queued),
        (50, Some(7), Some(900))
    );
    let r = h
        .call(
            Method::PUT,
            &format!("/v1/operator/tenants/{tenant}/plan"),
            Some(&op),
            Some(
                json!({"plan": "free", "limits": {"queue_weight": 0, "max_running": 7,
                "max_queued": 900, "audit_retention_days": 400, "third_party_llm": false}}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field(), "limits.queue_weight");

    let r = h.get(&format!("/v1/operator/tenants/{tenant}"), &op).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "Initech");
    let r = h.get("/v1/operator/tenants?limit=10", &op).await;
    assert!(r.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == tenant.to_string()));
    let r = h
        .get(&format!("/v1/operator/tenants/{}", Uuid::now_v7()), &op)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Every action is in the target tenant's audit log, none in the system tenant's.
    let actions: Vec<String> = h
        .models
        .audit()
        .pending(tenant, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        vec![
            "operator.tenant.create",
            "operator.user.create",
            "operator.tenant.plan"
        ]
    );
    assert!(h
        .models
        .audit()
        .pending(SYSTEM_TENANT, 10)
        .await
        .unwrap()
        .is_empty());

    // The new owner can log in.
    let r = h
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"tenant_id": tenant, "email": "boss@initech.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn operator_input_errors_name_the_field() {
    let h = Harness::new().await;
    let op = operator(&h);
    for (body, field) in [
        (
            json!({"name": "x", "kind": "galaxy", "plan": "free"}),
            "kind",
        ),
        (
            json!({"name": "", "kind": "personal", "plan": "free"}),
            "name",
        ),
        (
            json!({"name": "x", "kind": "personal", "plan": "free", "hipaa": "yes"}),
            "hipaa",
        ),
        (
            json!({"name": "x", "kind": "personal", "plan": "free", "owner": "me"}),
            "owner",
        ),
    ] {
        let r = h.post("/v1/operator/tenants", &op, body).await;
        assert!(r.status.is_client_error(), "{:?}", r.body);
        assert_eq!(r.field(), field, "{:?}", r.body);
    }
    let r = h
        .post(
            &format!("/v1/operator/tenants/{}/users", Uuid::now_v7()),
            &op,
            json!({"email": "a@b.c", "roles": ["member"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .post(
            "/v1/operator/tenants/xyz/users",
            &op,
            json!({"email": "a@b.c", "roles": ["member"]}),
        )
        .await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "id"));
}
