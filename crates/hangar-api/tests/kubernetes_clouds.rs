//! A `kubernetes` cloud never runs local sandboxes: until the Kubernetes
//! driver lands, creating such a cloud, an agent on one, or an Instances-API
//! instance of such an agent answers 501 `DRIVER_UNAVAILABLE` naming the
//! driver, and nothing is created. Clouds and agents that an earlier Hangar
//! stored are made here through the store, as it would have.

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::{each_backend, Harness, Reply};
use hangar_core::model::DriverKind;
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::BuildStatus;
use hangar_store::NewAgent;
use serde_json::json;

fn assert_refused(r: &Reply) {
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text);
    assert_eq!(r.code(), "DRIVER_UNAVAILABLE", "{}", r.text);
    assert_eq!(r.body["error"]["driver"], "kubernetes", "{}", r.text);
    assert_eq!(r.body["success"], false);
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("kubernetes driver"), "{message}");
}

/// A kubernetes cloud as an earlier Hangar stored it.
async fn stored_kubernetes_cloud(h: &Harness) -> String {
    h.db.store
        .create_cloud(
            &h.a.org,
            "cluster",
            DriverKind::Kubernetes,
            &json!({}),
            None,
        )
        .await
        .expect("cloud")
        .id
}

#[tokio::test]
async fn a_kubernetes_cloud_is_refused_naming_the_missing_driver() {
    each_backend(|h| async move {
        let r = h
            .post(
                "/v1/clouds",
                &h.a.key,
                json!({"name": "cluster", "driver": "kubernetes"}),
            )
            .await;
        assert_refused(&r);
        let clouds = h.db.store.list_clouds(&h.a.org).await.expect("clouds");
        assert!(
            clouds.iter().all(|c| c.driver != DriverKind::Kubernetes),
            "nothing created: {clouds:?}"
        );
        // The drivers this Hangar has are still taken.
        let r = h
            .post(
                "/v1/clouds",
                &h.a.key,
                json!({"name": "boxes", "driver": "sandbox"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    })
    .await;
}

#[tokio::test]
async fn an_agent_on_a_stored_kubernetes_cloud_is_refused() {
    each_backend(|h| async move {
        let cloud = stored_kubernetes_cloud(&h).await;
        for cloud_ref in [cloud.as_str(), "cluster"] {
            let r = h
                .post(
                    "/v1/agents",
                    &h.a.key,
                    json!({"name": "remote", "cloud_id": cloud_ref,
                           "source": {"type": "github", "repo": "a/b"}}),
                )
                .await;
            assert_refused(&r);
        }
        let agents =
            h.db.store
                .list_agents(&h.a.org, None, None, 10)
                .await
                .expect("agents");
        assert!(agents.items.is_empty(), "nothing created");
    })
    .await;
}

#[tokio::test]
async fn an_instance_of_an_agent_on_a_kubernetes_cloud_is_refused() {
    each_backend(|h| async move {
        let cloud = stored_kubernetes_cloud(&h).await;
        let (agent, build) =
            h.db.store
                .create_agent(NewAgent {
                    organization_id: h.a.org.clone(),
                    user_id: h.a.user.clone(),
                    cloud_id: cloud,
                    url_base: None,
                    name: "remote".into(),
                    display_name: None,
                    version: None,
                    runtime: Default::default(),
                    resources: Resources::default(),
                    scaling: Scaling::default(),
                    config: RuntimeConfig::default(),
                    environment: BTreeMap::new(),
                    source: Source::Github {
                        repo: "a/b".into(),
                        branch: None,
                        path: None,
                        commit: None,
                    },
                    metadata: BTreeMap::new(),
                })
                .await
                .expect("agent");
        h.db.store
            .set_build_status(&build.id, BuildStatus::Ready, None, Some("sha256:test"))
            .await
            .expect("ready");
        let r = h
            .post(
                "/instances",
                &h.a.key,
                json!({"name": "remote-1", "agent_id": agent.agent.id,
                       "build_id": build.id, "organization_id": h.a.org}),
            )
            .await;
        assert_refused(&r);
        let count = h.db.store.instance_count(&h.a.org).await.expect("count");
        assert_eq!(count, 0, "nothing created");
    })
    .await;
}
