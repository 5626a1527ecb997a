//! Test harness: the real router over a real database (SQLite always, PostgreSQL
//! when configured), with two organizations so every test can check isolation.

#![allow(dead_code, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use hangar_api::{ApiConfig, AppState, Services};
use hangar_core::status::BuildStatus;
use hangar_store::testing::{backends, TestDb};
use hangar_store::Backend;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Tenant {
    pub org: String,
    pub user: String,
    pub key: String,
}

pub struct Harness {
    pub db: TestDb,
    pub app: Router,
    /// The operator organization (created at bootstrap).
    pub a: Tenant,
    /// A second, ordinary organization.
    pub b: Tenant,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn config() -> ApiConfig {
    ApiConfig {
        node_dead_after: Duration::from_secs(15),
        base_domain: "localhost".into(),
        public_port: 7070,
        public_url: "http://127.0.0.1:7070".into(),
        max_body_bytes: 64 * 1024,
        upload_ttl: Duration::from_secs(600),
        signing_key: b"test signing key".to_vec(),
        uploads_dir: Some(
            std::env::temp_dir().join(format!("hangar-api-uploads-{}", std::process::id())),
        ),
        blobs: None,
        max_upload_bytes: 1 << 20,
        cors_origins: vec!["http://console.test".into()],
        // Tests send requests as fast as they can; rate_limit.rs tests the limit.
        rate_limit: None,
    }
}

/// Runs `f` once per backend with a fresh harness.
pub async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Harness) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        f(Harness::new(backend).await).await;
    }
}

impl Harness {
    pub async fn new(backend: Backend) -> Self {
        Self::with_config(backend, config()).await
    }

    /// A harness whose API runs with `config`.
    pub async fn with_config(backend: Backend, config: ApiConfig) -> Self {
        let db = TestDb::new(backend).await;
        let store = db.store.clone();
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let a = Tenant {
            org: boot.organization.id,
            user: boot.admin.id,
            key: boot.generated_key.expect("generated key"),
        };
        let other = store
            .create_organization("other", 50, "b@example.com")
            .await
            .expect("org b");
        let b = Tenant {
            org: other.organization.id,
            user: other.admin.id,
            key: other.key.secret,
        };
        let app = hangar_api::app(AppState::from(Services {
            intake: hangar_store::JobIntake::start(store.clone(), Default::default()).0,
            kubernetes: None,
            store,
            config: Arc::new(config),
            runtime: None,
            builder: None,
            gateway: None,
            deliverer: None,
            jobs: None,
            hops: None,
            no_agents_reason: None,
        }));
        Harness { db, app, a, b }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            headers,
            text,
        }
    }

    /// A request with `key` and an optional raw body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .expect("request");
        self.send(req).await
    }

    pub async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Reply {
        let text = body.map(|b| b.to_string());
        self.raw(method, path, Some(key), text.as_deref()).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.call(Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.call(Method::POST, path, key, Some(body)).await
    }

    /// Creates an agent through the API in `t`'s organization and marks its build
    /// ready in the store (the builder's job). Returns (agent id, build id).
    pub async fn ready_agent(&self, t: &Tenant, name: &str) -> (String, String) {
        let r = self
            .post("/v1/agents", &t.key, json!({"name": name, "cloud_id": "local", "source": {"type": "github", "repo": "a/b"}}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let agent = r.body["data"]["id"].as_str().expect("id").to_owned();
        let build = r.body["data"]["latest_build_id"]
            .as_str()
            .expect("build")
            .to_owned();
        self.db
            .store
            .set_build_status(&build, BuildStatus::Ready, None, Some("sha256:test"))
            .await
            .expect("ready");
        (agent, build)
    }

    /// Creates an instance through the Instances API. Returns its id.
    pub async fn instance(&self, t: &Tenant, agent: &str, build: &str, name: &str) -> String {
        let r = self
            .post("/instances", &t.key, json!({"name": name, "agent_id": agent, "build_id": build, "organization_id": t.org}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().expect("id").to_owned()
    }
}
