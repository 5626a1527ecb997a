//! Kubernetes clouds for real: `hangar serve` as a process beside the
//! cluster of `$KUBECONFIG` and its registry (`.ci/run` brings both up). A
//! cloud is added only once its cluster, namespace and registry answer;
//! agents on it run as pods, reached at their pod IPs (this host is the
//! node), and leave nothing in the namespace once deleted.
//!
//! Needs root, a cluster and a registry (`cargo test -p hangar --test
//! kubernetes_cloud`); without them a test skips, saying why, except with
//! `CI=true`, where it fails.

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{json, Value};

mod common;

use common::kubernetes::{cluster_or_skip, registry};
use common::*;

/// A namespace of this test run's own, deleted when dropped.
struct TestNamespace {
    name: String,
}

impl TestNamespace {
    fn new(test: &str) -> Self {
        Self {
            name: format!("hangar-{}-{}", test, std::process::id()),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

async fn client() -> kube::Client {
    kube::Client::try_default().await.expect("a client")
}

/// What is in `namespace` besides what the cluster puts in every one.
async fn objects_in(namespace: &str) -> Vec<String> {
    let client = client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let mut left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name.map(|n| format!("pod/{n}")))
        .collect();
    left.extend(
        secrets
            .list(&ListParams::default())
            .await
            .expect("secrets")
            .items
            .into_iter()
            .filter(|s| s.type_.as_deref() != Some("kubernetes.io/service-account-token"))
            .filter_map(|s| s.metadata.name.map(|n| format!("secret/{n}"))),
    );
    left
}

async fn add_cloud(server: &Server, name: &str, config: Value) -> (u16, Value, String) {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/clouds",
            Some(json!({"name": name, "driver": "kubernetes", "config": config})),
        )
        .await;
    (status, body, text)
}

#[tokio::test]
async fn a_cloud_is_added_only_once_its_cluster_namespace_and_registry_answer() {
    let test = "k8s-cloud-checks";
    if !root_or_skip(test) || cluster_or_skip(test).await.is_none() {
        return;
    }
    let namespace = TestNamespace::new("checks");
    let dir = temp(test);
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&dir);

    // A typo is a bad request, naming the setting.
    let (status, body, text) = add_cloud(&server, "typo", json!({"namespce": "x"})).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{text}");
    assert!(text.contains("config.namespce"), "{text}");

    // A kubeconfig that is not there.
    let (status, body, text) = add_cloud(
        &server,
        "nofile",
        json!({"kubeconfig": "/nonexistent/kubeconfig"}),
    )
    .await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(body["error"]["code"], "CLOUD_UNREACHABLE", "{text}");
    assert!(text.contains("kubeconfig"), "{text}");

    // A cluster that does not answer.
    let unreachable = dir.join("unreachable.kubeconfig");
    std::fs::write(
        &unreachable,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: \"t\"}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .expect("kubeconfig");
    let (status, body, text) = add_cloud(
        &server,
        "down",
        json!({"kubeconfig": unreachable.to_str().expect("utf-8")}),
    )
    .await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(body["error"]["code"], "CLOUD_UNREACHABLE", "{text}");
    assert!(text.contains("API server does not answer"), "{text}");

    // A registry that does not answer.
    let (status, body, text) = add_cloud(
        &server,
        "noregistry",
        json!({"namespace": namespace.name, "registry": "127.0.0.1:1/hangar", "insecure_registry": true}),
    )
    .await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(body["error"]["code"], "CLOUD_UNREACHABLE", "{text}");
    assert!(text.contains("registry 127.0.0.1:1"), "{text}");
    let (_, clouds, _, _) = server.call(reqwest::Method::GET, "/v1/clouds", None).await;
    assert!(
        clouds["data"]
            .as_array()
            .expect("clouds")
            .iter()
            .all(|c| c["driver"] != "kubernetes"),
        "no refused cloud was added: {clouds}"
    );

    // The real cluster and registry: added, its namespace made.
    let (status, body, text) = add_cloud(
        &server,
        "cluster",
        json!({"namespace": namespace.name, "registry": format!("{}/hangar", registry()), "insecure_registry": true}),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(body["data"]["driver"], "kubernetes");
    let namespaces: Api<Namespace> = Api::all(client().await);
    assert!(
        namespaces
            .get_opt(&namespace.name)
            .await
            .expect("namespaces")
            .is_some(),
        "the namespace was made"
    );
    assert!(objects_in(&namespace.name).await.is_empty());
    drop(server);
    let _ = namespaces
        .delete(&namespace.name, &DeleteParams::default())
        .await;
}
