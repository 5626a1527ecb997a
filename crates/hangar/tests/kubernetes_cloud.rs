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

/// Waits (a minute at most) for `namespace` to hold nothing of Hangar's.
async fn nothing_left_in(namespace: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = objects_in(namespace).await;
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
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

/// `docker` with `args`, which must succeed.
fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python base image, in the registry beside the cluster.
async fn base_image(test: &str) -> String {
    common::docker::driver_or_skip(test, &common::docker::owner(test))
        .await
        .expect("the base image is made on the local Docker engine");
    let image = format!("{}/{}", registry(), common::docker::BASE_IMAGE);
    docker(&["tag", common::docker::BASE_IMAGE, &image]);
    docker(&["push", &image]);
    image
}

/// The streaming test agent with a dependency it carries as a wheel
/// (`hangar-greeting`, installed by pip from there: no package index).
fn agent_with_a_dependency(dir: &std::path::Path) {
    with_greeting_dependency(dir);
    std::fs::copy(
        std::path::Path::new(&agent_dir("stream")).join("main.py"),
        dir.join("main.py"),
    )
    .expect("main.py");
}

/// Opens an upload and PUTs the tree at `dir` to it, as a `.tar.gz`.
async fn upload(server: &Server, dir: &std::path::Path) -> String {
    let archive = std::process::Command::new("tar")
        .args(["czf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(archive.status.success());
    let (status, created, _, text) = server
        .call(reqwest::Method::POST, "/v1/uploads", None)
        .await;
    assert_eq!(status, 201, "{text}");
    let url = created["data"]["upload_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let put = reqwest::Client::new()
        .put(&url)
        .body(archive.stdout)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    url
}

/// Waits until `check` holds for the agent's view.
async fn wait_agent(
    server: &Server,
    agent: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let view = server.get(&format!("/v1/agents/{agent}")).await["data"].clone();
        if check(&view) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never got {what}: {view}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn invoke(server: &Server, agent: &str, body: Value) -> (u16, Value, String) {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(body),
        )
        .await;
    (status, body, text)
}

/// The pods of instance `instance` in `namespace`, by phase.
async fn pods_of(namespace: &str, instance: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client().await, namespace);
    pods.list(&ListParams::default().labels(&format!("hangar.instance={instance}")))
        .await
        .expect("pods")
        .items
}

async fn running_pods(namespace: &str, instance: &str) -> usize {
    pods_of(namespace, instance)
        .await
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .count()
}

#[tokio::test]
async fn an_uploaded_python_agent_runs_as_pods_through_its_whole_life() {
    let test = "k8s-e2e-upload";
    if !root_or_skip(test) || cluster_or_skip(test).await.is_none() {
        return;
    }
    let namespace = TestNamespace::new("e2e");
    let base = base_image(test).await;
    let dir = temp(test);
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start_with(&dir, &["--scale-to-zero-after", "2"]);
    let (status, _, text) = add_cloud(
        &server,
        "k8s",
        json!({"namespace": namespace.name, "registry": format!("{}/hangar-e2e", registry()),
               "insecure_registry": true, "base_image": {"python": base}}),
    )
    .await;
    assert_eq!(status, 201, "{text}");

    // Uploaded, built on the base image without Docker, pushed, pulled.
    let tree = dir.join("agent");
    agent_with_a_dependency(&tree);
    let archive_url = upload(&server, &tree).await;
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": "k8s-agent", "cloud_id": "k8s",
                "source": {"type": "upload", "archive_url": archive_url},
                "scaling": {"min_instances": 1, "max_instances": 3}})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let view = wait_agent(&server, &agent, "running", |a| a["status"] == "running").await;
    let instance = view["instance_id"].as_str().expect("instance").to_owned();
    let builds = server.get(&format!("/v1/agents/{agent}/builds")).await;
    let build = &builds["data"][0];
    assert!(
        build["artifact"]
            .as_str()
            .is_some_and(|a| a.contains("oci-sha256-")),
        "the build's artifact is its image's digest: {build}"
    );
    assert_eq!(running_pods(&namespace.name, &instance).await, 1);

    // Sync, streaming and async invokes through the gateway.
    let (status, answer, text) = invoke(
        &server,
        &agent,
        json!({"input": {"mode": "json", "text": "on kubernetes"}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(answer.to_string().contains("on kubernetes"), "{answer}");
    let res = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/invoke", server.url))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"mode": "sse", "text": "one two three"}}))
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    let streamed = res.text().await.expect("body");
    assert!(
        streamed.contains(r#""content":"three"#)
            && streamed.contains(r#"{"type":"done","usage":{"words":3}}"#),
        "{streamed}"
    );
    let (status, job, text) = invoke(
        &server,
        &agent,
        json!({"input": {"mode": "json", "text": "later"}, "async": true}),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let job = job["data"]["job_id"].as_str().expect("job").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let seen = server.get(&format!("/v1/jobs/{job}")).await["data"].clone();
        if seen["status"] == "completed" {
            assert!(seen.to_string().contains("later"), "{seen}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job never ended: {seen}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Exec through the API server; the dependency is in the image.
    let org = server.org().await;
    let (status, out, code) = server
        .exec(&org, &instance, &["python3", "-c", "print(6*7)"])
        .await;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("42"), "{out}");
    assert_eq!(code.as_deref(), Some("0"));
    let (status, out, _) = server
        .exec(
            &org,
            &instance,
            &[
                "/app/.venv/bin/python",
                "-c",
                "import hangar_greeting; print(hangar_greeting.hello('pods'))",
            ],
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("Hello, pods, from a dependency!"), "{out}");
    // /app is the agent's to write; the rest of the image is read-only.
    let (status, out, _) = server
        .exec(
            &org,
            &instance,
            &["/bin/sh", "-c", "echo kept > /app/note && cat /app/note && ! touch /etc/x 2>/dev/null && echo read-only"],
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("kept") && out.contains("read-only"), "{out}");

    // Logs follow live.
    let mut follow = reqwest::Client::new()
        .get(format!("{}/v1/agents/{agent}/logs?follow=true", server.url))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("follow");
    assert_eq!(follow.status(), 200);
    // A request through the instance's own URL: the agent logs its path.
    let marker = format!("marker-{}", std::process::id());
    let url = server.instance(&instance).await["deployment"]["url"]
        .as_str()
        .expect("the instance's URL")
        .to_owned();
    let host = url
        .strip_prefix("http://")
        .expect("http")
        .trim_end_matches('/');
    let res = reqwest::Client::new()
        .get(format!("{}/{marker}", server.url))
        .header("host", host)
        .send()
        .await
        .expect("through the instance URL");
    assert_eq!(
        res.status(),
        404,
        "the agent's own answer to an unknown path"
    );
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !seen.contains(&marker) {
        match tokio::time::timeout_at(deadline, follow.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the follower never saw {marker}: {other:?}; saw {seen}"),
        }
    }
    drop(follow);

    // New env rolls the instance with no failed request under load.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, agent, stop) = (server.url.clone(), agent.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failed = Vec::new();
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let res = client
                    .post(format!("{url}/v1/agents/{agent}/invoke"))
                    .bearer_auth(KEY)
                    .json(&json!({"input": {"mode": "json", "text": "load"}}))
                    .timeout(std::time::Duration::from_secs(60))
                    .send()
                    .await
                    .expect("request");
                if res.status() == 200 {
                    ok += 1;
                } else {
                    failed.push(res.text().await.unwrap_or_default());
                }
            }
            (ok, failed)
        })
    };
    let before: Vec<String> = pods_of(&namespace.name, &instance)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let (status, _, _, text) = server
        .call(
            reqwest::Method::PUT,
            &format!("/instances/{instance}"),
            Some(json!({"env_vars": {"ROLLED": "1"}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let now: Vec<Pod> = pods_of(&namespace.name, &instance).await;
        let fresh = now.iter().any(|p| {
            p.metadata
                .name
                .as_ref()
                .is_some_and(|n| !before.contains(n))
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        let old_gone = now.iter().all(|p| {
            p.metadata
                .name
                .as_ref()
                .is_some_and(|n| !before.contains(n))
        });
        if fresh && old_gone {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load");
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "requests failed during the roll: {failed:?}"
    );
    let (status, out, _) = server
        .exec(&org, &instance, &["/bin/sh", "-c", "echo $ROLLED"])
        .await;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains('1'), "the new env is in: {out}");

    // Scale 1 → 3 → 0 (idle for the server's 2 s), then a cold start.
    for (min, max, want) in [(3, 3, 3), (0, 3, 0)] {
        let (status, _, _, text) = server
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/agents/{agent}"),
                Some(json!({"scaling": {"min_instances": min, "max_instances": max}})),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        while running_pods(&namespace.name, &instance).await != want {
            assert!(
                std::time::Instant::now() < deadline,
                "never {want} pods: {:?}",
                pods_of(&namespace.name, &instance).await.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    let (status, answer, text) = invoke(
        &server,
        &agent,
        json!({"input": {"mode": "json", "text": "cold"}, "options": {"timeout": 120}}),
    )
    .await;
    assert_eq!(status, 200, "a cold start answers: {text}");
    assert!(answer.to_string().contains("cold"), "{answer}");
    assert_eq!(running_pods(&namespace.name, &instance).await, 1);

    // Deleted: nothing left in the namespace.
    server.delete(&instance, true).await;
    nothing_left_in(&namespace.name).await;
}

/// Logs the local engine in to `registry` for the life of the value.
struct DockerLogin(String);

impl DockerLogin {
    fn new(registry: &str) -> Self {
        use std::io::Write as _;
        let mut login = std::process::Command::new("docker")
            .args([
                "login",
                registry,
                "-u",
                common::registry::USER,
                "--password-stdin",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("docker login");
        login
            .stdin
            .take()
            .expect("stdin")
            .write_all(common::registry::PASSWORD.as_bytes())
            .expect("password");
        assert!(login.wait().expect("docker login").success());
        Self(registry.to_owned())
    }
}

impl Drop for DockerLogin {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["logout", &self.0])
            .output();
    }
}

#[tokio::test]
async fn a_private_image_runs_as_a_pod_that_is_replaced_adopted_and_cleaned_up() {
    let test = "k8s-e2e-docker";
    if !root_or_skip(test) || cluster_or_skip(test).await.is_none() {
        return;
    }
    common::docker::driver_or_skip(test, &common::docker::owner(test))
        .await
        .expect("the base image is made on the local Docker engine");
    let namespace = TestNamespace::new("private");
    let dir = temp(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");

    // A registry that wants credentials, and the test agent's image in it.
    let private = common::registry::Registry::start(&dir.join("registry")).await;
    let image = format!("{}/agents/http:1", private.host);
    let context = dir.join("context");
    std::fs::create_dir_all(&context).expect("context");
    std::fs::copy(
        std::path::Path::new(&agent_dir("http")).join("main.py"),
        context.join("main.py"),
    )
    .expect("main.py");
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY main.py /app/main.py\nWORKDIR /app\nCMD [\"python3\", \"-u\", \"/app/main.py\"]\n",
            common::docker::BASE_IMAGE
        ),
    )
    .expect("Dockerfile");
    docker(&[
        "build",
        "-q",
        "-t",
        &image,
        context.to_str().expect("utf-8"),
    ]);
    {
        let _login = DockerLogin::new(&private.host);
        docker(&["push", &image]);
    }
    docker(&["image", "rm", &image]);

    let server = Server::start(&dir.join("server"));
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/secrets",
            Some(json!({"name": "REGISTRY_PASSWORD", "value": common::registry::PASSWORD})),
        )
        .await;
    assert!(status == 201 || status == 200, "{text}");
    let (status, _, text) = add_cloud(&server, "k8s", json!({"namespace": namespace.name})).await;
    assert_eq!(status, 201, "{text}");
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": "private", "cloud_id": "k8s",
                "source": {"type": "docker", "image": image,
                    "credentials": {"username": common::registry::USER, "password": "${secrets.REGISTRY_PASSWORD}"}}})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let view = wait_agent(&server, &agent, "running", |a| a["status"] == "running").await;
    let instance = view["instance_id"].as_str().expect("instance").to_owned();
    let (status, answer, text) = invoke(&server, &agent, json!({"input": {"private": true}})).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        answer["data"]["output"]["echo"]["private"], true,
        "{answer}"
    );
    // The kubelet pulled it with the source's credentials, which are in a
    // Secret, not in the pod.
    let pods = pods_of(&namespace.name, &instance).await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let pod_text = serde_json::to_string(pod).expect("json");
    assert!(!pod_text.contains(common::registry::PASSWORD), "{pod_text}");
    let first = pod.metadata.name.clone().expect("name");

    // A pod deleted behind Hangar's back is replaced, and counted.
    let pod_api: Api<Pod> = Api::namespaced(client().await, &namespace.name);
    pod_api
        .delete(&first, &DeleteParams::default())
        .await
        .expect("delete the pod");
    server
        .wait_instance(&instance, "a restart", |i| {
            i["deployment"]["restart_count"] == 1 && i["status"] == "running"
        })
        .await;
    let pods = pods_of(&namespace.name, &instance).await;
    let second: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0], first);
    let (status, _, text) = invoke(&server, &agent, json!({"input": {"again": 1}})).await;
    assert_eq!(status, 200, "{text}");

    // A restarted server adopts its pod: the same one serves.
    let data = dir.join("server");
    server.kill9();
    let server = Server::start(&data);
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let (status, _, text) = invoke(&server, &agent, json!({"input": {"adopted": 1}})).await;
    assert_eq!(status, 200, "{text}");
    let now: Vec<String> = pods_of(&namespace.name, &instance)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(now, second, "adopted, not replaced");

    // Deleted: nothing left in the namespace.
    server.delete(&instance, true).await;
    nothing_left_in(&namespace.name).await;
}
