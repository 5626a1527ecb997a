//! A [`ReplicaSpec`] as the two objects that make a replica on a cluster —
//! a Secret (its record and its environment) and a Pod owned by it — and
//! those objects read back as a [`ReplicaInfo`].
//!
//! The Secret is the replica: it carries the replica's id, labels, port and
//! whether it takes stdin (annotations, since ids and label values need not
//! be valid Kubernetes label values), the environment's values (so none is
//! in the pod spec in clear), and, once the replica has stopped, its exit.
//! A replica whose pod is gone — stopped by Hangar, or deleted behind its
//! back — is still listed, exited, until [`crate::Driver::remove`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerState, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    LocalObjectReference, Pod, PodSecurityContext, PodSpec, ResourceRequirements, Secret,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;

use crate::driver::{now_ms, DriverError, Exit, ReplicaInfo, ReplicaSpec};

/// Label every object of this driver carries, with the owner's value.
pub(super) const OWNER_LABEL: &str = "hangar.owner";
/// Annotations on the Secret.
const REPLICA_ANNOTATION: &str = "hangar/replica";
const LABELS_ANNOTATION: &str = "hangar/labels";
const PORT_ANNOTATION: &str = "hangar/port";
const STDIN_ANNOTATION: &str = "hangar/stdin";
pub(super) const EXIT_ANNOTATION: &str = "hangar/exit";
/// Spec labels also put on the objects as Kubernetes labels (for
/// `kubectl get pods -l hangar.instance=…`), when their values fit.
const SELECTABLE: [&str; 5] = [
    "hangar.org",
    "hangar.agent",
    "hangar.instance",
    "hangar.cloud",
    "hangar.generation",
];
/// The one container of a replica's pod.
pub(super) const CONTAINER: &str = "replica";
/// Who a replica runs as when neither the spec nor the image says.
const NOBODY: i64 = 65_534;

/// The name of replica `id`'s Secret and Pod: the owner and a hash of the
/// id, since an id may hold characters object names cannot.
pub(super) fn object_name(owner: &str, id: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(id.as_bytes());
    format!("hangar-{owner}-{}", hex::encode(&digest[..8]))
}

/// Whether `value` may be a Kubernetes label value.
pub(super) fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric())
}

/// Where and how the cluster places pods (from the cloud's config).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// `runtimeClassName`.
    pub runtime_class: Option<String>,
    /// `nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// Image pull Secrets, by name.
    pub image_pull_secrets: Vec<String>,
}

/// Checks what this driver can run of `spec`: an image, no host paths.
pub(super) fn check(spec: &ReplicaSpec) -> Result<&str, DriverError> {
    let image = spec.image.as_deref().ok_or_else(|| {
        DriverError::Invalid(
            "the kubernetes driver runs images: the spec names none (a build for a kubernetes cloud pushes one)"
                .to_owned(),
        )
    })?;
    if spec.app.is_some() || spec.rootfs.is_some() {
        return Err(DriverError::Invalid(
            "a kubernetes replica cannot show a directory of this host: its files must be in its image"
                .to_owned(),
        ));
    }
    if spec.argv.first().is_some_and(String::is_empty) {
        return Err(DriverError::Invalid("the program name is empty".to_owned()));
    }
    if spec.argv.iter().any(|arg| arg.contains('\0')) {
        return Err(DriverError::Invalid(
            "an argument holds a NUL byte".to_owned(),
        ));
    }
    for (key, _) in &spec.env {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(DriverError::Invalid(format!(
                "environment variable name {key:?} cannot be passed to a pod"
            )));
        }
    }
    let network = &spec.network;
    if !matches!(network.egress, crate::network::Egress::Open)
        || !network.reach.is_empty()
        || !network.host_ports.is_empty()
        || network.trusted_ca.is_some()
    {
        return Err(DriverError::Invalid(
            "the kubernetes driver cannot enforce egress rules or reach yet: this instance's network settings need a sandbox cloud"
                .to_owned(),
        ));
    }
    Ok(image)
}

/// The replica's Secret: its record and environment.
pub(super) fn secret(owner: &str, spec: &ReplicaSpec) -> Secret {
    let name = object_name(owner, &spec.id);
    let mut annotations = BTreeMap::from([
        (REPLICA_ANNOTATION.to_owned(), spec.id.clone()),
        (
            LABELS_ANNOTATION.to_owned(),
            serde_json::to_string(&spec.labels).unwrap_or_default(),
        ),
        (STDIN_ANNOTATION.to_owned(), spec.stdin.to_string()),
    ]);
    if let Some(port) = spec.port {
        annotations.insert(PORT_ANNOTATION.to_owned(), port.to_string());
    }
    // Later values of one name win, as in a process's environment.
    let data: BTreeMap<String, ByteString> = spec
        .env
        .iter()
        .map(|(key, value)| (key.clone(), ByteString(value.clone().into_bytes())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels(owner, spec)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

fn labels(owner: &str, spec: &ReplicaSpec) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(OWNER_LABEL.to_owned(), owner.to_owned())]);
    for key in SELECTABLE {
        if let Some(value) = spec.labels.get(key).filter(|v| is_label_value(v)) {
            labels.insert(key.to_owned(), value.clone());
        }
    }
    if is_label_value(&spec.id) {
        labels.insert("hangar.replica".to_owned(), spec.id.clone());
    }
    labels
}

/// The name of the Secret holding the credentials replica `name`'s image
/// is pulled with.
pub(super) fn pull_secret_name(name: &str) -> String {
    format!("{name}-pull")
}

/// A `kubernetes.io/dockerconfigjson` Secret with the spec's pull
/// credentials, owned by the replica's Secret; `None` without credentials.
pub(super) fn pull_secret(owner: &str, spec: &ReplicaSpec, record: &Secret) -> Option<Secret> {
    use base64::Engine as _;
    let auth = spec.image_auth.as_ref()?;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", auth.username, auth.password));
    let config = serde_json::json!({"auths": {auth.server.clone(): {
        "username": auth.username, "password": auth.password, "auth": basic}}});
    let name = object_name(owner, &spec.id);
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(pull_secret_name(&name)),
            labels: Some(labels(owner, spec)),
            owner_references: Some(vec![owned_by(record, &name)]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(config.to_string().into_bytes()),
        )])),
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        ..Secret::default()
    })
}

fn owned_by(record: &Secret, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Secret".to_owned(),
        name: name.to_owned(),
        uid: record.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Where the init container puts its copy of the image's `/app`.
const APP_COPY: &str = "/hangar-app";

/// The replica's pod, owned by `secret` (deleting the Secret deletes it),
/// given `grace` to end after SIGTERM when something else deletes it.
pub(super) fn pod(
    owner: &str,
    spec: &ReplicaSpec,
    image: &str,
    secret: &Secret,
    placement: &Placement,
    grace: std::time::Duration,
) -> Pod {
    let name = object_name(owner, &spec.id);
    // Each name once, in the order of its last setting.
    let mut names: Vec<&str> = Vec::new();
    for (key, _) in spec.env.iter().rev() {
        if !names.contains(&key.as_str()) {
            names.push(key);
        }
    }
    names.reverse();
    let env = names
        .into_iter()
        .map(|key| EnvVar {
            name: key.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: key.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect();
    // Kubernetes wants a request no larger than its limit; a request over
    // the cap could never be used anyway.
    let cpu_request = spec
        .cpu_limit_millis
        .map_or(spec.cpu_millis, |cap| spec.cpu_millis.min(cap));
    let mut requests = BTreeMap::from([(
        "cpu".to_owned(),
        Quantity(format!("{}m", cpu_request.max(1))),
    )]);
    let mut limits = BTreeMap::new();
    if let Some(cpu) = spec.cpu_limit_millis {
        limits.insert("cpu".to_owned(), Quantity(format!("{}m", cpu.max(1))));
    }
    if let Some(memory) = spec.memory_limit_bytes {
        limits.insert("memory".to_owned(), Quantity(memory.to_string()));
        requests.insert("memory".to_owned(), Quantity(memory.to_string()));
    }
    let (uid, gid) = spec.user.map_or((NOBODY, NOBODY), |user| {
        (i64::from(user.uid), i64::from(user.gid))
    });
    let security = SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(gid),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    };
    let empty = |name: &str| Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let mut mounts = vec![mount("tmp", "/tmp")];
    let mut volumes = vec![empty("tmp")];
    // A writable /app over the read-only root: an emptyDir filled with a
    // copy of the image's /app before the program starts.
    let init = spec.app_writable.then(|| {
        mounts.push(mount("app", "/app"));
        volumes.push(empty("app"));
        Container {
            name: "app".to_owned(),
            image: Some(image.to_owned()),
            command: Some(vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("if [ -d /app ]; then cp -R /app/. {APP_COPY}/; fi"),
            ]),
            volume_mounts: Some(vec![mount("app", APP_COPY)]),
            security_context: Some(security.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            ..Container::default()
        }
    });
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        command: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
        working_dir: (!spec.cwd.is_empty()).then(|| spec.cwd.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(security),
        volume_mounts: Some(mounts),
        stdin: Some(spec.stdin),
        stdin_once: Some(false),
        tty: Some(false),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        ..Container::default()
    };
    let mut pull_secrets = placement.image_pull_secrets.clone();
    if spec.image_auth.is_some() {
        pull_secrets.push(pull_secret_name(&name));
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels(owner, spec)),
            owner_references: Some(vec![owned_by(secret, &name)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            init_containers: init.map(|init| vec![init]),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(
                i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
            ),
            // The pause container is PID 1, so the replica's program hears
            // SIGTERM even without a handler (a PID 1 ignores it).
            share_process_namespace: Some(true),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                fs_group: Some(gid),
                ..PodSecurityContext::default()
            }),
            volumes: Some(volumes),
            runtime_class_name: placement.runtime_class.clone(),
            node_selector: (!placement.node_selector.is_empty())
                .then(|| placement.node_selector.clone()),
            image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
                pull_secrets
                    .into_iter()
                    .map(|name| LocalObjectReference { name })
                    .collect()
            }),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The replica id a Secret records.
pub(super) fn replica_id(secret: &Secret) -> Option<&str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(REPLICA_ANNOTATION)
        .map(String::as_str)
}

/// Whether the replica was made with a stdin pipe.
pub(super) fn takes_stdin(secret: &Secret) -> bool {
    annotation(secret, STDIN_ANNOTATION) == Some("true")
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The exit recorded on the Secret when the replica was stopped.
pub(super) fn recorded_exit(secret: &Secret) -> Option<Exit> {
    serde_json::from_str(annotation(secret, EXIT_ANNOTATION)?).ok()
}

/// The state of the replica's container, if the pod has reported it.
pub(super) fn container_state(pod: &Pod) -> Option<&ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()
}

/// How the pod's container ended, if it has.
pub(super) fn pod_exit(pod: &Pod) -> Option<Exit> {
    if let Some(terminated) = container_state(pod).and_then(|s| s.terminated.as_ref()) {
        let at_ms = terminated
            .finished_at
            .as_ref()
            .map_or_else(now_ms, |t| t.0.as_millisecond());
        let oom_killed = terminated.reason.as_deref() == Some("OOMKilled");
        return Some(Exit::from_status(
            i64::from(terminated.exit_code),
            oom_killed,
            at_ms,
        ));
    }
    // Failed without a container status (evicted, its node lost): killed.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    (phase == Some("Failed")).then(|| Exit {
        code: None,
        signal: Some(9),
        oom_killed: false,
        at_ms: now_ms(),
    })
}

/// Why a pod cannot start, if it will not: an image that cannot be pulled,
/// a config the kubelet refuses, a pod no node takes.
pub(super) fn stuck(pod: &Pod) -> Option<String> {
    let copied = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "app"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref());
    if let Some(copy) = copied.filter(|t| t.exit_code != 0) {
        return Some(format!(
            "copying the image's /app to a writable volume failed (exit {}; the image needs /bin/sh and cp): {}",
            copy.exit_code,
            copy.message.as_deref().unwrap_or("no message")
        ));
    }
    if let Some(waiting) = container_state(pod).and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let message = waiting.message.as_deref().unwrap_or("no message");
        // The kubelet had not yet synced its cache of the pod's Secret (a busy
        // node): it tries again by itself, and the pod starts.
        if reason == "CreateContainerConfigError" && message.starts_with("failed to sync") {
            return None;
        }
        if matches!(
            reason,
            "ErrImagePull"
                | "ImagePullBackOff"
                | "InvalidImageName"
                | "ErrImageNeverPull"
                | "CreateContainerConfigError"
                | "CreateContainerError"
                | "RunContainerError"
        ) {
            return Some(format!("{reason}: {message}"));
        }
    }
    None
}

/// Whether the container runs now.
pub(super) fn running(pod: &Pod) -> bool {
    container_state(pod).is_some_and(|s| s.running.is_some())
}

/// What the driver tells of a replica from its Secret and its pod (if any).
pub(super) fn info(secret: &Secret, pod: Option<&Pod>) -> Option<ReplicaInfo> {
    let id = replica_id(secret)?.to_owned();
    let labels: BTreeMap<String, String> = annotation(secret, LABELS_ANNOTATION)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let port: Option<u16> = annotation(secret, PORT_ANNOTATION).and_then(|p| p.parse().ok());
    let created_ms = secret
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond());
    let Some(pod) = pod else {
        // Gone: stopped by Hangar (its exit recorded), or deleted behind
        // its back, which ends it as a kill would.
        let exit = recorded_exit(secret).unwrap_or(Exit {
            code: None,
            signal: Some(9),
            oom_killed: false,
            at_ms: now_ms(),
        });
        return Some(ReplicaInfo {
            id,
            labels,
            address: None,
            pid: 0,
            started_at_ms: created_ms,
            exit: Some(exit),
            output_seq: 0,
        });
    };
    let started_at_ms = container_state(pod)
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .map_or(created_ms, |t| t.0.as_millisecond());
    let exit = recorded_exit(secret).or_else(|| pod_exit(pod));
    let address = match (exit, port, pod_ip(pod)) {
        (None, Some(port), Some(ip)) => Some(SocketAddr::new(ip, port)),
        _ => None,
    };
    Some(ReplicaInfo {
        id,
        labels,
        address,
        pid: 0,
        started_at_ms,
        exit,
        output_seq: 0,
    })
}

fn pod_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(reason: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{
                "name": CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}}
            }]}
        }))
        .expect("a pod")
    }

    #[test]
    fn a_kubelet_whose_secret_cache_lags_is_waited_for_and_a_missing_secret_is_not() {
        assert_eq!(
            stuck(&waiting(
                "CreateContainerConfigError",
                "failed to sync secret cache: timed out waiting for the condition"
            )),
            None
        );
        assert_eq!(
            stuck(&waiting(
                "CreateContainerConfigError",
                "secret \"x\" not found"
            ))
            .as_deref(),
            Some("CreateContainerConfigError: secret \"x\" not found")
        );
        assert!(stuck(&waiting("ContainerCreating", "")).is_none());
    }

    const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

    fn spec() -> ReplicaSpec {
        ReplicaSpec {
            id: "rep_01abc".to_owned(),
            labels: BTreeMap::from([
                ("hangar.instance".to_owned(), "inst_1".to_owned()),
                ("odd key".to_owned(), "a value with spaces".to_owned()),
            ]),
            argv: vec!["python3".to_owned(), "main.py".to_owned()],
            env: vec![
                ("A".to_owned(), "1".to_owned()),
                ("TOKEN".to_owned(), "s3cret".to_owned()),
                ("A".to_owned(), "2".to_owned()),
            ],
            cwd: "/app".to_owned(),
            app: None,
            app_writable: false,
            port: Some(8080),
            stdin: false,
            cpu_millis: 250,
            cpu_limit_millis: Some(1000),
            memory_limit_bytes: Some(256 << 20),
            pids_limit: 64,
            rootfs: None,
            user: None,
            image: Some("registry:5000/a@sha256:00".to_owned()),
            image_auth: None,
            network: Default::default(),
        }
    }

    #[test]
    fn secrets_stay_out_of_the_pod_spec() {
        let spec = spec();
        let secret = secret("own", &spec);
        let pod = pod("own", &spec, "img", &secret, &Placement::default(), GRACE);
        let text = serde_json::to_string(&pod).expect("json");
        assert!(!text.contains("s3cret"), "{text}");
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let env = container.env.as_ref().expect("env");
        assert_eq!(
            env.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["TOKEN", "A"]
        );
        let data = secret.data.as_ref().expect("data");
        assert_eq!(data["A"].0, b"2");
        assert_eq!(data["TOKEN"].0, b"s3cret");
    }

    #[test]
    fn limits_and_hardening_map_one_to_one() {
        let spec = spec();
        let secret = secret("own", &spec);
        let pod = pod("own", &spec, "img", &secret, &Placement::default(), GRACE);
        let pod_spec = pod.spec.as_ref().expect("spec");
        let container = &pod_spec.containers[0];
        let resources = container.resources.as_ref().expect("resources");
        assert_eq!(resources.requests.as_ref().expect("r")["cpu"].0, "250m");
        assert_eq!(resources.limits.as_ref().expect("l")["cpu"].0, "1000m");
        assert_eq!(
            resources.limits.as_ref().expect("l")["memory"].0,
            (256u64 << 20).to_string()
        );
        let security = container.security_context.as_ref().expect("security");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(pod_spec.automount_service_account_token, Some(false));
        assert_eq!(pod_spec.restart_policy.as_deref(), Some("Never"));
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["hangar.instance"], "inst_1");
        assert_eq!(labels["hangar.replica"], "rep_01abc");
        assert!(!labels.contains_key("odd key"));
        let mut capped = spec.clone();
        capped.cpu_limit_millis = Some(200);
        let capped = super::pod("own", &capped, "img", &secret, &Placement::default(), GRACE);
        let capped_resources = capped.spec.as_ref().expect("spec").containers[0]
            .resources
            .clone()
            .expect("resources");
        assert_eq!(
            capped_resources.requests.as_ref().expect("r")["cpu"].0,
            "200m",
            "no more than its cap"
        );
    }

    #[test]
    fn a_writable_app_is_a_copy_over_the_read_only_root() {
        let mut spec = spec();
        let secret = secret("own", &spec);
        let plain = pod("own", &spec, "img", &secret, &Placement::default(), GRACE);
        let plain_spec = plain.spec.as_ref().expect("spec");
        assert!(plain_spec.init_containers.is_none());
        assert_eq!(plain_spec.termination_grace_period_seconds, Some(10));
        spec.app_writable = true;
        let writable = pod("own", &spec, "img", &secret, &Placement::default(), GRACE);
        let pod_spec = writable.spec.as_ref().expect("spec");
        let init = &pod_spec
            .init_containers
            .as_ref()
            .expect("an init container")[0];
        assert_eq!(init.image.as_deref(), Some("img"));
        let mounts = pod_spec.containers[0]
            .volume_mounts
            .as_ref()
            .expect("mounts");
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/app" && m.name == "app"));
        let security = pod_spec.containers[0]
            .security_context
            .as_ref()
            .expect("security");
        assert_eq!(security.read_only_root_filesystem, Some(true));
    }

    #[test]
    fn pull_credentials_go_in_a_secret_of_their_own() {
        let mut spec = spec();
        assert!(pull_secret("own", &spec, &secret("own", &spec)).is_none());
        spec.image_auth = Some(crate::driver::RegistryAuth {
            server: "registry:5000".to_owned(),
            username: "u".to_owned(),
            password: "p4ss".to_owned(),
        });
        let record = secret("own", &spec);
        let pull = pull_secret("own", &spec, &record).expect("a pull secret");
        assert_eq!(
            pull.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        let config: serde_json::Value =
            serde_json::from_slice(&pull.data.as_ref().expect("data")[".dockerconfigjson"].0)
                .expect("json");
        assert_eq!(config["auths"]["registry:5000"]["auth"], "dTpwNHNz");
        let pod = pod("own", &spec, "img", &record, &Placement::default(), GRACE);
        let names: Vec<_> = pod
            .spec
            .as_ref()
            .expect("spec")
            .image_pull_secrets
            .as_ref()
            .expect("pull")
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, [pull.metadata.name.clone().expect("name")]);
        assert!(!serde_json::to_string(&pod).expect("json").contains("p4ss"));
        // The pull Secret is no replica of its own.
        assert!(info(&pull, None).is_none());
    }

    #[test]
    fn a_secret_reads_back_as_the_replica() {
        let spec = spec();
        let secret = secret("own", &spec);
        let info = info(&secret, None).expect("info");
        assert_eq!(info.id, "rep_01abc");
        assert_eq!(info.labels, spec.labels);
        // No pod: gone behind Hangar's back, ended as by a kill.
        assert_eq!(info.exit.expect("exited").signal, Some(9));
    }

    #[test]
    fn what_cannot_run_on_a_cluster_is_refused() {
        let mut bare = spec();
        bare.image = None;
        assert!(matches!(check(&bare), Err(DriverError::Invalid(_))));
        let mut host = spec();
        host.app = Some("/srv/app".into());
        assert!(matches!(check(&host), Err(DriverError::Invalid(_))));
        let mut closed = spec();
        closed.network.egress = crate::network::Egress::None;
        assert!(matches!(check(&closed), Err(DriverError::Invalid(_))));
        let mut weird = spec();
        weird.env.push(("BAD NAME".to_owned(), String::new()));
        assert!(matches!(check(&weird), Err(DriverError::Invalid(_))));
    }
}
