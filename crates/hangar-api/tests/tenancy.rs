//! Organizations, users, API keys, roles and clouds.

mod common;

use axum::http::{Method, StatusCode};
use common::each_backend;
use serde_json::json;

#[tokio::test]
async fn operators_create_organizations_and_members_are_limited() {
    each_backend(|h| async move {
        // The operator creates an organization; its admin key is shown once and works.
        let r = h.post("/v1/organizations", &h.a.key, json!({"name": "Acme", "admin_email": "ops@acme.test", "max_instances": 5})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let acme = r.body["data"]["organization"]["id"].as_str().expect("org").to_owned();
        assert_eq!(r.body["data"]["organization"]["quotas"]["max_instances"], 5);
        let acme_key = r.body["data"]["api_key"]["key"].as_str().expect("key").to_owned();
        let me = h.get("/v1/me", &acme_key).await;
        assert_eq!(me.body["organization_id"], acme.as_str());
        assert_eq!(me.body["role"], "admin");
        assert_eq!(h.get("/v1/clouds/local", &acme_key).await.status, StatusCode::OK, "every org gets a local cloud");

        // A non-operator admin cannot create organizations or change quotas.
        let r = h.post("/v1/organizations", &h.b.key, json!({"name": "X", "admin_email": "x@x.test"})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.code(), "FORBIDDEN");
        let r = h.call(Method::PATCH, &format!("/v1/organizations/{}", h.b.org), &h.b.key, Some(json!({"max_instances": 1000}))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = h.call(Method::PATCH, &format!("/v1/organizations/{}", h.b.org), &h.b.key, Some(json!({"name": "Renamed"}))).await;
        assert_eq!(r.body["data"]["name"], "Renamed");
        let r = h.call(Method::PATCH, &format!("/v1/organizations/{acme}"), &h.a.key, Some(json!({"max_instances": 7}))).await;
        assert_eq!(r.body["data"]["quotas"]["max_instances"], 7, "{}", r.text);
        let all = h.get("/v1/organizations", &h.a.key).await;
        assert_eq!(all.body["data"].as_array().expect("orgs").len(), 3);
        let own = h.get("/v1/organizations", &h.b.key).await;
        assert_eq!(own.body["data"].as_array().expect("orgs").len(), 1);
        for bad in [json!({"name": "", "admin_email": "a@b"}), json!({"name": "n", "admin_email": "nope"}), json!({"name": "n", "admin_email": "a@b", "max_instances": 0})] {
            assert_eq!(h.post("/v1/organizations", &h.a.key, bad.clone()).await.status, StatusCode::BAD_REQUEST, "{bad}");
        }

        // Users: admins add them; emails are unique; members cannot manage others.
        let r = h.post("/v1/users", &h.b.key, json!({"email": "dev@b.test", "name": "Dev"})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["data"]["role"], "member");
        let dev = r.body["data"]["id"].as_str().expect("user").to_owned();
        let r = h.post("/v1/users", &h.b.key, json!({"email": "dev@b.test"})).await;
        assert_eq!(r.code(), "USER_NAME_TAKEN");
        let r = h.post("/v1/api_keys", &h.b.key, json!({"name": "dev laptop", "user_id": dev})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let dev_key = r.body["data"]["key"].as_str().expect("key").to_owned();
        assert!(dev_key.starts_with("hgr_"));
        assert_eq!(h.post("/v1/users", &dev_key, json!({"email": "z@b.test"})).await.status, StatusCode::FORBIDDEN);
        assert_eq!(h.post("/v1/clouds", &dev_key, json!({"name": "c", "driver": "docker"})).await.status, StatusCode::FORBIDDEN);
        let r = h.post("/v1/api_keys", &dev_key, json!({"name": "for admin", "user_id": h.b.user})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let mine = h.post("/v1/api_keys", &dev_key, json!({"name": "second"})).await;
        assert_eq!(mine.status, StatusCode::CREATED);
        let listed = h.get("/v1/api_keys", &dev_key).await;
        assert_eq!(listed.body["data"].as_array().expect("keys").len(), 2, "members see their own keys");
        let admin_keys = h.get("/v1/api_keys", &h.b.key).await;
        let admin_key_id = admin_keys.body["data"].as_array().expect("keys").iter().find(|k| k["user_id"] == h.b.user.as_str()).expect("admin key")["id"].as_str().expect("id").to_owned();
        let r = h.call(Method::DELETE, &format!("/v1/api_keys/{admin_key_id}"), &dev_key, None).await;
        assert_eq!(r.code(), "API_KEY_NOT_FOUND", "members cannot revoke others' keys");
        // Members still deploy agents.
        let r = h.post("/v1/agents", &dev_key, json!({"name": "by-dev", "cloud_id": "local", "source": {"type": "github", "repo": "a/b"}})).await;
        assert_eq!(r.status, StatusCode::CREATED);

        // Clouds.
        let r = h.post("/v1/clouds", &h.b.key, json!({"name": "docker-local", "driver": "docker", "config": {"base_image": "python:3.12-slim"}})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["data"]["driver"], "docker");
        // A docker cloud's settings are checked: unknown ones and unusable images are refused.
        for (config, field) in [
            (json!({"network": "hangar"}), "config.network"),
            (json!({"base_image": "python 3"}), "config.base_image"),
            (json!({"base_image": ""}), "config.base_image"),
            (json!({"base_image": 3}), "config.base_image"),
        ] {
            let r = h.post("/v1/clouds", &h.b.key, json!({"name": "bad-docker", "driver": "docker", "config": config})).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{config}: {}", r.text);
            assert_eq!(r.code(), "INVALID_REQUEST");
            assert_eq!(r.body["error"]["field"], field, "{}", r.text);
        }
        assert_eq!(h.post("/v1/clouds", &h.b.key, json!({"name": "docker-local", "driver": "docker"})).await.code(), "CLOUD_NAME_TAKEN");
        assert_eq!(h.post("/v1/clouds", &h.b.key, json!({"name": "x", "driver": "vm"})).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(h.get("/v1/clouds", &h.b.key).await.body["data"].as_array().expect("clouds").len(), 2);
    })
    .await;
}
