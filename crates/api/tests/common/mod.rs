//! The test harness: a memory store on a manual clock, the queue and records over it, a
//! router with an Ed25519 key, and helpers to call it with `oneshot` (no socket).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use steward_api::auth::{mint_token, Claims, KeySet, SigningKey};
use steward_api::{router, ApiConfig, AppState};
use steward_models::{Models, ModelsConfig, NewTenant, NewUser, Plan, Role, TenantKind};
use steward_queue::{Queue, QueueConfig};
use steward_store::{Database, ManualClock, OpenOptions};
use tower::ServiceExt;
use uuid::Uuid;

/// 2026-01-01T00:00:00Z in µs.
pub const START: i64 = 1_767_225_600_000_000;
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Harness {
    pub router: Router,
    pub state: AppState,
    pub clock: ManualClock,
    pub db: Database,
    pub queue: Arc<Queue>,
    pub models: Models,
    pub key: SigningKey,
    pub config: ApiConfig,
}

pub fn test_config() -> ApiConfig {
    ApiConfig {
        advice_wait: Duration::from_millis(200),
        external_kinds: vec!["acme.export".into()],
        ..ApiConfig::default()
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Response {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    /// The field of an error body.
    pub fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_config(test_config()).await
    }

    pub async fn with_config(config: ApiConfig) -> Harness {
        Harness::with_keys(config, None).await
    }

    pub async fn with_keys(config: ApiConfig, keys: Option<KeySet>) -> Harness {
        let clock = ManualClock::new(START);
        let db = Database::memory_with(OpenOptions {
            clock: clock.shared(),
            seed: Some(1),
            ..OpenOptions::default()
        });
        let models = Models::open(db.clone(), ModelsConfig::for_tests())
            .await
            .unwrap();
        let queue = Arc::new(Queue::with_seed(db.clone(), QueueConfig::default(), 3).unwrap());
        let key = SigningKey::from_seed(&[42; 32]);
        let keys = keys.unwrap_or_else(|| KeySet::single(&key));
        let state = AppState::new(
            Arc::clone(&queue),
            models.clone(),
            keys,
            config.clone(),
            clock.shared(),
        )
        .unwrap()
        .with_signing_key(key.clone());
        Harness {
            router: router(state.clone()),
            state,
            clock,
            db,
            queue,
            models,
            key,
            config,
        }
    }

    pub fn claims(&self, tenant: Uuid, sub: &str, roles: &[&str]) -> Claims {
        Claims::new(
            &self.config.issuer,
            &self.config.audience,
            sub,
            tenant,
            roles.iter().map(|r| (*r).to_string()).collect(),
            START / 1_000_000,
            Duration::from_secs(3600),
        )
    }

    pub fn token(&self, tenant: Uuid, sub: &str, roles: &[&str]) -> String {
        mint_token(&self.key, &self.claims(tenant, sub, roles)).unwrap()
    }

    /// A tenant with one user of `roles`; returns (tenant, user, token).
    pub async fn tenant(&self, roles: &[Role]) -> (Uuid, Uuid, String) {
        let t = self
            .models
            .tenants()
            .create(NewTenant::new("Acme", TenantKind::Organization, Plan::Pro))
            .await
            .unwrap();
        let u = self.user(t.id, roles).await;
        let names: Vec<String> = roles
            .iter()
            .map(|r| {
                serde_json::to_value(r)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let token = self.token(t.id, &u.to_string(), &names);
        (t.id, u, token)
    }

    pub async fn user(&self, tenant: Uuid, roles: &[Role]) -> Uuid {
        let email = format!("u{}@example.com", Uuid::now_v7().simple());
        self.models
            .users()
            .create(
                tenant,
                NewUser::new(email, roles.iter().copied()).password(PASSWORD),
            )
            .await
            .unwrap()
            .id
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&b).unwrap())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> Response {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Response {
            status,
            headers,
            body,
        }
    }

    /// A request from a given client address (as `serve` would attach it).
    pub async fn call_from(&self, addr: SocketAddr, uri: &str, body: Value) -> Response {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
        self.send(req).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Response {
        self.call(Method::GET, uri, Some(token), None).await
    }

    pub async fn post(&self, uri: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, uri, Some(token), Some(body)).await
    }

    /// Creates a session owned by the token's user; returns its id.
    pub async fn session(&self, token: &str) -> Uuid {
        let r = self
            .post(
                "/v1/sessions",
                token,
                serde_json::json!({"name": "work", "workspace": "/src/app"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Enqueues a job; returns its id.
    pub async fn job(&self, token: &str) -> Uuid {
        let r = self
            .post(
                "/v1/jobs",
                token,
                serde_json::json!({"kind": "acme.export", "args": {"n": 1}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["id"].as_str().unwrap().parse().unwrap()
    }
}
