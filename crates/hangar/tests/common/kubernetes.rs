//! Kubernetes for the tests: a cluster that answers (or a skip, or with
//! `CI=true` a failure, saying why) and a registry beside it, found through
//! `$KUBECONFIG` and `$HANGAR_TEST_REGISTRY` (default `127.0.0.1:5000`), as
//! `.ci/run` sets them up; and an image of the test agents (the Python
//! base image of [`super::docker`] with `tests/agents/` at `/agents`),
//! pushed there once per content, since the cluster pulls what it runs.

use std::process::Command;

use hangar_runtime::kubernetes::{Cluster, ClusterConfig};
use hangar_runtime::KubernetesDriver;
use tokio::sync::OnceCell;

/// The namespace the tests' replicas run in.
pub const NAMESPACE: &str = "hangar-test";

/// The registry the tests push to and the cluster pulls from.
#[allow(
    clippy::disallowed_methods,
    reason = "the tests' own setting, as .ci/run sets it"
)]
pub fn registry() -> String {
    std::env::var("HANGAR_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".to_owned())
}

/// Skips (or, with `CI=true`, fails) saying why.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI=true"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// The test cluster, connected and checked, or why there is none.
pub async fn cluster_or_skip(test: &str) -> Option<Cluster> {
    cluster_or_skip_with(test, None).await
}

/// The test cluster, its replicas reached as `reach` says (`None`: as the
/// first pod tells), or why there is none.
#[allow(
    clippy::disallowed_methods,
    reason = "the cluster the tests use is the one .ci/run points KUBECONFIG at"
)]
pub async fn cluster_or_skip_with(
    test: &str,
    reach: Option<hangar_runtime::kubernetes::Reach>,
) -> Option<Cluster> {
    if std::env::var_os("KUBECONFIG").is_none() {
        skip(test, "no Kubernetes cluster: KUBECONFIG is not set");
        return None;
    }
    let config = ClusterConfig {
        namespace: NAMESPACE.to_owned(),
        reach,
        ..ClusterConfig::default()
    };
    match Cluster::connect(&config).await {
        Ok(cluster) => Some(cluster),
        Err(err) => {
            skip(test, &format!("no Kubernetes cluster: {err}"));
            None
        }
    }
}

/// A kubernetes driver with `owner` whose cloud `cloud` is the test
/// cluster, or why there is none.
pub async fn driver_or_skip(test: &str, owner: &str, cloud: &str) -> Option<KubernetesDriver> {
    let cluster = cluster_or_skip(test).await?;
    let driver = KubernetesDriver::new(owner).expect("owner");
    driver.add_cloud(cloud, cluster);
    Some(driver)
}

static AGENTS: OnceCell<String> = OnceCell::const_new();

/// The image of the test agents in the registry (built and pushed once per
/// content), by digest-free tag.
pub async fn agents_image(test: &str) -> String {
    AGENTS
        .get_or_init(|| async {
            // The base image comes from the local engine.
            super::docker::driver_or_skip(test, &super::docker::owner(test))
                .await
                .expect("the agents image is built on the local Docker engine");
            let agents = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents");
            let tag = format!(
                "{}/hangar-test-agents:{}",
                registry(),
                content_hash(&agents)
            );
            let present = Command::new("docker")
                .args(["manifest", "inspect", "--insecure", &tag])
                .output()
                .is_ok_and(|out| out.status.success());
            if !present {
                let context =
                    std::env::temp_dir().join(format!("hangar-test-agents-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&context);
                copy_tree(&agents, &context.join("agents"));
                std::fs::write(
                    context.join("Dockerfile"),
                    format!(
                        "FROM {}\nCOPY agents/ /agents/\n",
                        super::docker::BASE_IMAGE
                    ),
                )
                .expect("Dockerfile");
                run(Command::new("docker")
                    .args(["build", "-q", "-t", &tag])
                    .arg(&context));
                run(Command::new("docker").args(["push", &tag]));
                let _ = std::fs::remove_dir_all(&context);
            }
            tag
        })
        .await
        .clone()
}

fn run(command: &mut Command) {
    let out = command.output().expect("docker runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hash of every file's path and bytes under `dir`.
fn content_hash(dir: &std::path::Path) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    for file in files {
        hash.update(
            file.strip_prefix(dir)
                .expect("under")
                .as_os_str()
                .as_encoded_bytes(),
        );
        hash.update(std::fs::read(&file).expect("read"));
    }
    hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Deletes every pod and Secret labelled with `owner` in the test
/// namespace, with kubectl when it is on `PATH` (for `Drop`, where nothing
/// async runs).
pub fn remove_owned(owner: &str) {
    let _ = Command::new("kubectl")
        .args([
            "delete",
            "pods,secrets",
            "-n",
            NAMESPACE,
            "-l",
            &format!("hangar.owner={owner}"),
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .output();
}

/// The pods and Secrets labelled with `owner` left in the test namespace.
pub async fn leftovers(cluster_test: &str, owner: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::api::{Api, ListParams};
    let client = kube::Client::try_default().await.unwrap_or_else(|err| {
        panic!("{cluster_test}: a client: {err}");
    });
    let params = ListParams::default().labels(&format!("hangar.owner={owner}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    let mut left: Vec<String> = pods
        .list(&params)
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name.map(|n| format!("pod/{n}")))
        .collect();
    left.extend(
        secrets
            .list(&params)
            .await
            .expect("secrets")
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name.map(|n| format!("secret/{n}"))),
    );
    left
}
