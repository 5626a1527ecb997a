//! What a replica of an instance runs: the command found in its artifact,
//! its environment, its limits — a [`ReplicaSpec`] — and the generation hash
//! that tells when running replicas no longer match the instance.
//!
//! The command, in order of precedence (the agent contract in
//! `ARCHITECTURE.md`):
//!
//! 1. `hangar.toml` in the artifact with `[run] command = ["prog", "arg", …]`
//!    (or a string, split on whitespace);
//! 2. `main.py`, else `app.py` → `python3 -u /app/<file>` (the build's
//!    virtualenv's `/app/.venv/bin/python` when there is one, its `bin`
//!    then first on the replica's `PATH`);
//! 3. `package.json` with `scripts.start` → `npm start`; else `main` or
//!    `index.js` → `node /app/<file>`.
//!
//! Anything else cannot run, and says what it looked for.
//!
//! An image artifact (`artifacts/oci-<digest>/`, from a `docker` source) is
//! not looked into: its `image.json` ([`hangar_core::image::ImageRun`]) says
//! how it runs. The replica's root is the image's `rootfs/`; its command is
//! the entrypoint and cmd; its environment the image's, then the user's, then
//! Hangar's (`PORT`, `HANGAR_*`); its working directory the image's; its user
//! the image's when numeric and not root, else 65534.
//!
//! On a docker cloud ([`hangar_core::docker`]) the replica runs its build's
//! image ([`hangar_core::docker::image_tag`]) through the docker driver
//! (labelled [`labels::DRIVER`]` = docker`), with no host directory: the
//! `hangar.toml` `[run] command` when there is one; else, for an image built
//! from the tree's own Dockerfile (or pulled), the image's entrypoint, cmd
//! and working directory; else (a generated Dockerfile, the tree at `/app`)
//! the command above, in `/app`. Its user is the driver's choice (the
//! image's when not root). Every replica carries its cloud
//! ([`labels::CLOUD`]).
//!
//! The artifact a build recorded is a path on the server that built it.
//! With several servers on one database, the server starting a replica may
//! not have it: an [`ArtifactFetch`] (the builder's blob store, wired in by
//! the binary) gives the copy on this server, fetched first when missing,
//! and the replica is made from that. The generation still hashes the
//! recorded artifact, so every server agrees on which replicas are current.
//!
//! On a kubernetes cloud ([`hangar_core::kubernetes`]) the artifact is an
//! image artifact with no root filesystem: the replica is a pod of the
//! image the build pushed (or the `docker` source's), pinned to its digest,
//! with the image's own command, working directory and environment, then
//! the user's and Hangar's variables, as the image's user when numeric and
//! not root, else 65534.

use std::path::Path;

use hangar_core::contract;
use hangar_core::docker::{image_tag, DOCKERFILE};
use hangar_core::image::{ImageRun, IMAGE_CONFIG_FILE, ROOTFS_DIR};
use hangar_core::model::{DriverKind, Instance};
use hangar_core::network::{Egress, EgressRule};
use hangar_core::spec::DeploymentType;
use hangar_runtime::driver::{labels, ReplicaSpec, ReplicaUser};
use hangar_runtime::network::{self as runtime_network, NetworkPolicy};
use sha2::{Digest, Sha256};

/// Makes the artifact a build recorded readable on this server (see the
/// module docs).
#[async_trait::async_trait]
pub trait ArtifactFetch: Send + Sync + std::fmt::Debug {
    /// The artifact recorded as `recorded`, on this server: itself, or a
    /// copy fetched from where every server can read it. The error is a
    /// sentence for the instance's log.
    async fn local(&self, recorded: &str) -> Result<std::path::PathBuf, String>;
}

/// The artifact a replica is made from on this server: `recorded` itself
/// without an [`ArtifactFetch`].
pub async fn local_artifact(
    fetch: Option<&dyn ArtifactFetch>,
    recorded: &str,
) -> Result<String, String> {
    let Some(fetch) = fetch else {
        return Ok(recorded.to_owned());
    };
    let local = fetch.local(recorded).await?;
    local
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the artifact's copy {} is not UTF-8", local.display()))
}

/// Where the build step's virtualenv keeps its programs, in the artifact.
const VENV_BIN: &str = ".venv/bin";

/// A sandbox's `PATH` with the agent's virtualenv first.
const VENV_PATH: &str = "/app/.venv/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// The smallest memory limit a replica gets.
const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// Default pids limit of a replica.
pub const PIDS_LIMIT: i64 = 512;

/// `hangar.toml`'s `[run] command` in `artifact`, if it has one.
pub fn run_command(artifact: &Path) -> Result<Option<Vec<String>>, String> {
    contract::run_command(&Tree(artifact))
}

/// The command an artifact runs ([`hangar_core::contract`]).
pub fn command(artifact: &Path) -> Result<Vec<String>, String> {
    contract::command(&Tree(artifact))
}

/// An artifact's files, as the agent contract reads them.
struct Tree<'a>(&'a Path);

impl contract::TreeFiles for Tree<'_> {
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        let path = self.0.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|err| format!("cannot read {name}: {err}"))
    }

    fn is_file(&self, name: &str) -> bool {
        self.0.join(name).is_file()
    }

    fn exists(&self, name: &str) -> bool {
        self.0.join(name).symlink_metadata().is_ok()
    }
}

/// How the image artifact at `artifact` runs, when it is one (see the
/// module docs); `Ok(None)` for any other artifact.
pub fn image_run(artifact: &Path) -> Result<Option<ImageRun>, String> {
    let is_image = artifact
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(hangar_core::image::is_image_artifact_name);
    let config = artifact.join(IMAGE_CONFIG_FILE);
    if !is_image || !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config)
        .map_err(|err| format!("cannot read the image artifact's {IMAGE_CONFIG_FILE}: {err}"))?;
    let run: ImageRun = serde_json::from_str(&text)
        .map_err(|err| format!("the image artifact's {IMAGE_CONFIG_FILE} is not valid: {err}"))?;
    if run.argv().is_empty() {
        return Err(format!(
            "image {} names nothing to run (no Entrypoint, no Cmd)",
            run.image
        ));
    }
    Ok(Some(run))
}

/// The registry an image reference names (`host[:port]`): its first part
/// when that looks like a host, else Docker Hub's.
#[must_use]
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

/// `value` with each `${secrets.NAME}` replaced by that secret's value from
/// `secrets`; a name `secrets` lacks is the error, naming it.
pub fn resolve_secrets(
    value: &str,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    const OPEN: &str = "${secrets.";
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        let secret = secrets.get(name).ok_or_else(|| {
            format!(
                "the environment names the secret {name}, which this organization does not have"
            )
        })?;
        out.push_str(&rest[..start]);
        out.push_str(secret);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A hash of everything that shapes a replica: replicas made from another
/// generation are rolled.
pub fn generation(instance: &Instance, artifact: &str) -> String {
    let mut hash = Sha256::new();
    // Liveness settings are the controller's and the session timeout the
    // gateway's: changing them rolls nothing (and a replica made before
    // they existed keeps its generation).
    let config = hangar_core::spec::RuntimeConfig {
        liveness_failures: None,
        start_timeout_seconds: None,
        session_idle_timeout_seconds: None,
        ..instance.config.clone()
    };
    let parts = [
        serde_json::to_string(&config).unwrap_or_default(),
        serde_json::to_string(&instance.resources).unwrap_or_default(),
        serde_json::to_string(&instance.env_vars).unwrap_or_default(),
        instance.build_id.clone(),
        artifact.to_owned(),
    ];
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..8])
}

/// What `instance`'s replicas may reach ([`hangar_runtime::network`]): the
/// replicas of their own instance and of the instances its
/// `config.network.reach` names (one group per instance, named by
/// organization and instance name, so no name reaches across
/// organizations), and outside what its egress says, or `default_egress`.
pub fn network_policy(instance: &Instance, default_egress: &Egress) -> NetworkPolicy {
    let group = |name: &str| format!("{}/{name}", instance.organization_id);
    let network = instance.config.network.clone().unwrap_or_default();
    let egress = match network.egress.as_ref().unwrap_or(default_egress) {
        Egress::Open => runtime_network::Egress::Open,
        Egress::None => runtime_network::Egress::None,
        Egress::Allow(rules) => runtime_network::Egress::Allow(
            rules
                .iter()
                .filter_map(EgressRule::destination)
                .copied()
                .collect(),
        ),
    };
    NetworkPolicy {
        group: group(&instance.name),
        reach: network.reach.iter().map(|name| group(name)).collect(),
        egress,
        host_ports: Vec::new(),
        trusted_ca: None,
    }
}

/// The spec of a new replica `replica_id` of `instance` running `artifact`
/// in `cloud` (its id and driver; `None`: unknown, run as on the sandbox).
pub fn replica_spec(
    instance: &Instance,
    artifact: &str,
    replica_id: &str,
    generation: &str,
    cloud: Option<(&str, DriverKind)>,
) -> Result<ReplicaSpec, String> {
    let app = Path::new(artifact);
    let mut spec = match cloud {
        Some((_, DriverKind::Docker)) => docker_spec(instance, app, replica_id, generation)?,
        Some((_, DriverKind::Kubernetes)) => {
            kubernetes_spec(instance, app, replica_id, generation)?
        }
        Some((_, DriverKind::Sandbox)) | None => {
            sandbox_spec(instance, app, replica_id, generation)?
        }
    };
    if let Some((cloud_id, _)) = cloud {
        spec.labels
            .insert(labels::CLOUD.to_owned(), cloud_id.to_owned());
    }
    Ok(spec)
}

/// The variables Hangar sets on every replica, after the user's (which
/// come after `base`, the image's own), each name once.
fn environment(
    instance: &Instance,
    replica_id: &str,
    base: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut env = base;
    let mut set = |key: &str, value: String| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value));
    };
    for (key, value) in &instance.env_vars {
        set(key, value.clone());
    }
    set("PORT", instance.config.port.to_string());
    set("HANGAR_AGENT_ID", instance.agent_id.clone());
    set("HANGAR_INSTANCE_ID", instance.id.clone());
    set("HANGAR_REPLICA_ID", replica_id.to_owned());
    env
}

/// A source tree's replica gets a writable home (`/tmp`) and unbuffered
/// Python output, whatever the user set.
fn set_tree_defaults(env: &mut Vec<(String, String)>) {
    for (key, value) in [("HOME", "/tmp"), ("PYTHONUNBUFFERED", "1")] {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }
}

/// A replica of a docker cloud's build image (see the module docs).
fn docker_spec(
    instance: &Instance,
    app: &Path,
    replica_id: &str,
    generation: &str,
) -> Result<ReplicaSpec, String> {
    // As the builder decides: a regular file, not a link to one.
    let own_image = app
        .join(DOCKERFILE)
        .symlink_metadata()
        .is_ok_and(|m| m.is_file());
    let (argv, cwd) = match run_command(app)? {
        Some(argv) => (
            argv,
            if own_image {
                String::new()
            } else {
                "/app".to_owned()
            },
        ),
        None if own_image => (Vec::new(), String::new()),
        None => (command(app)?, "/app".to_owned()),
    };
    let mut env = environment(instance, replica_id, Vec::new());
    if own_image {
        // The image's own HOME stands; its Python's output is not buffered.
        if !env.iter().any(|(k, _)| k == "PYTHONUNBUFFERED") {
            env.push(("PYTHONUNBUFFERED".to_owned(), "1".to_owned()));
        }
    } else {
        // The tree at /app, as on a sandbox.
        set_tree_defaults(&mut env);
    }
    let mut spec = common_spec(instance, replica_id, generation, argv, env, cwd);
    spec.labels
        .insert(labels::DRIVER.to_owned(), DriverKind::Docker.to_string());
    spec.image = Some(image_tag(&instance.build_id));
    Ok(spec)
}

/// A pod of a kubernetes cloud's build: the image the build pushed (or the
/// `docker` source's), pinned to its digest, running its own entrypoint,
/// working directory and environment, as its (non-root) user.
fn kubernetes_spec(
    instance: &Instance,
    app: &Path,
    replica_id: &str,
    generation: &str,
) -> Result<ReplicaSpec, String> {
    let run = image_run(app)?.ok_or_else(|| {
        "this build was not made for a kubernetes cloud (it has no image to pull): build the agent again"
            .to_owned()
    })?;
    let env = environment(instance, replica_id, Vec::new());
    let (uid, gid) = run.uid_gid();
    let mut spec = common_spec(
        instance,
        replica_id,
        generation,
        Vec::new(),
        env,
        String::new(),
    );
    spec.labels.insert(
        labels::DRIVER.to_owned(),
        DriverKind::Kubernetes.to_string(),
    );
    spec.image = Some(hangar_core::kubernetes::pinned_reference(&run));
    spec.user = Some(ReplicaUser { uid, gid });
    // An agent at /app (an image Hangar built) may write there, as on a
    // sandbox; the rest of the image stays read-only.
    spec.app_writable = run.cwd() == "/app";
    Ok(spec)
}

/// A sandbox replica of a source tree or an unpacked image artifact.
fn sandbox_spec(
    instance: &Instance,
    app: &Path,
    replica_id: &str,
    generation: &str,
) -> Result<ReplicaSpec, String> {
    let image = image_run(app)?;
    let argv = match &image {
        Some(run) => run.argv(),
        None => command(app)?,
    };
    // The image's environment first: the user's and Hangar's win.
    let mut env = environment(
        instance,
        replica_id,
        image.as_ref().map(ImageRun::env_pairs).unwrap_or_default(),
    );
    if image.is_none() {
        set_tree_defaults(&mut env);
        // A Python agent built into a virtualenv runs from it, and so does
        // what an exec names: `python`, `pip`, the dependencies' commands (the
        // host's `/usr` has `python3` at most). A generated Dockerfile does the
        // same on docker clouds; the user's own `PATH` wins.
        if app.join(VENV_BIN).is_dir() && !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".to_owned(), VENV_PATH.to_owned()));
        }
    } else if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".to_owned(), "/".to_owned()));
    }
    let (cwd, app, rootfs, user) = match &image {
        Some(run) => {
            let (uid, gid) = run.uid_gid();
            (
                run.cwd(),
                None,
                Some(app.join(ROOTFS_DIR)),
                Some(ReplicaUser { uid, gid }),
            )
        }
        None => ("/app".to_owned(), Some(app.to_path_buf()), None, None),
    };
    Ok(ReplicaSpec {
        app,
        rootfs,
        user,
        ..common_spec(instance, replica_id, generation, argv, env, cwd)
    })
}

/// What every replica of `instance` shares, whatever runs it: labels,
/// port, stdin, limits. No artifact, root filesystem, user or image.
fn common_spec(
    instance: &Instance,
    replica_id: &str,
    generation: &str,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
) -> ReplicaSpec {
    let config = &instance.config;
    let http = config.deployment_type() != DeploymentType::Stdin;
    let resources = &instance.resources;
    ReplicaSpec {
        id: replica_id.to_owned(),
        labels: [
            (labels::ORG.to_owned(), instance.organization_id.clone()),
            (labels::AGENT.to_owned(), instance.agent_id.clone()),
            (labels::INSTANCE.to_owned(), instance.id.clone()),
            (labels::GENERATION.to_owned(), generation.to_owned()),
        ]
        .into(),
        argv,
        env,
        cwd,
        app: None,
        app_writable: false,
        port: http.then_some(config.port),
        stdin: config.stdin_enabled,
        cpu_millis: resources.cpu_millis.max(1),
        cpu_limit_millis: resources.cpu_limit_millis,
        // No explicit limit: the request is the limit (as on Cloud Run), so
        // no replica can take the host's memory.
        memory_limit_bytes: Some(
            resources
                .memory_limit_bytes
                .unwrap_or(resources.memory_bytes)
                .max(MIN_MEMORY_BYTES),
        ),
        pids_limit: PIDS_LIMIT,
        rootfs: None,
        user: None,
        image: None,
        image_auth: None,
        network: network_policy(instance, &Egress::Open),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_put_in_place_and_a_missing_one_is_named() {
        let secrets: std::collections::BTreeMap<String, String> = [
            ("A".to_owned(), "1".to_owned()),
            ("B_2".to_owned(), "two".to_owned()),
        ]
        .into();
        assert_eq!(
            resolve_secrets("x-${secrets.A}-${secrets.B_2}${secrets.A}", &secrets).as_deref(),
            Ok("x-1-two1")
        );
        assert_eq!(
            resolve_secrets("plain $HOME {}", &secrets).as_deref(),
            Ok("plain $HOME {}")
        );
        let err = resolve_secrets("${secrets.MISSING}", &secrets).expect_err("missing");
        assert!(err.contains("MISSING"), "{err}");
    }

    fn dir(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hangar-launch-{}-{}",
            std::process::id(),
            hangar_core::id::new_id(hangar_core::id::IdKind::Build)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn command_follows_the_agent_contract() {
        type Files<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Files, Result<Vec<&str>, ()>)] = &[
            (
                &[("main.py", "")],
                Ok(vec!["python3", "-u", "/app/main.py"]),
            ),
            (&[("app.py", "")], Ok(vec!["python3", "-u", "/app/app.py"])),
            (
                &[
                    ("main.py", ""),
                    (
                        "hangar.toml",
                        "[run]\ncommand = [\"./serve\", \"--fast\"]\n",
                    ),
                ],
                Ok(vec!["./serve", "--fast"]),
            ),
            (
                &[("hangar.toml", "[run]\ncommand = \"bin/run -v\"\n")],
                Ok(vec!["bin/run", "-v"]),
            ),
            (
                &[("package.json", "{\"scripts\":{\"start\":\"node x\"}}")],
                Ok(vec!["npm", "start"]),
            ),
            (
                &[("package.json", "{\"main\":\"./srv.js\"}"), ("srv.js", "")],
                Ok(vec!["node", "/app/srv.js"]),
            ),
            (
                &[("package.json", "{}"), ("index.js", "")],
                Ok(vec!["node", "/app/index.js"]),
            ),
            (&[("package.json", "{\"main\":\"../x.js\"}")], Err(())),
            (&[("README", "")], Err(())),
            (&[("hangar.toml", "[run]\ncommand = 3\n")], Err(())),
        ];
        for (files, want) in cases {
            let dir = dir(files);
            let got = command(&dir);
            match want {
                Ok(argv) => assert_eq!(
                    got.as_deref().ok(),
                    Some(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]),
                    "{files:?}"
                ),
                Err(()) => assert!(got.is_err(), "{files:?}: {got:?}"),
            }
            std::fs::remove_dir_all(dir).expect("cleanup");
        }
    }

    fn instance(env: &[(&str, &str)]) -> Instance {
        Instance {
            id: "inst_1".into(),
            organization_id: "org_1".into(),
            agent_id: "agent_1".into(),
            build_id: "build_1".into(),
            user_id: "user_1".into(),
            name: "web".into(),
            resource_name: "web".into(),
            config: hangar_core::spec::RuntimeConfig::default(),
            resources: hangar_core::resources::Resources::default(),
            env_vars: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            replicas: 1,
            desired_state: hangar_core::status::DesiredState::Running,
            status: hangar_core::status::InstanceStatus::Starting,
            status_reason: None,
            ready_replicas: 0,
            restart_count: 0,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn image_artifacts_run_their_image_config() {
        let parent = dir(&[]);
        let artifact = parent.join("oci-sha256-ab12");
        std::fs::create_dir_all(artifact.join(ROOTFS_DIR)).expect("rootfs");
        let run = ImageRun {
            image: "127.0.0.1:5000/agent:1".into(),
            digest: "sha256:ab12".into(),
            entrypoint: vec!["/bin/busybox".into(), "httpd".into()],
            cmd: vec!["-f".into()],
            env: vec!["PATH=/bin".into(), "PORT=1".into(), "MODE=image".into()],
            working_dir: "/www".into(),
            user: "1000:1000".into(),
            exposed_port: Some(8080),
        };
        std::fs::write(
            artifact.join(IMAGE_CONFIG_FILE),
            serde_json::to_vec(&run).expect("json"),
        )
        .expect("write");
        let path = artifact.to_str().expect("utf-8");
        let spec =
            replica_spec(&instance(&[("MODE", "user")]), path, "r1", "g1", None).expect("spec");
        assert_eq!(spec.argv, ["/bin/busybox", "httpd", "-f"]);
        assert_eq!(spec.cwd, "/www");
        assert_eq!(spec.app, None);
        assert_eq!(spec.rootfs, Some(artifact.join(ROOTFS_DIR)));
        assert_eq!(
            spec.user,
            Some(ReplicaUser {
                uid: 1000,
                gid: 1000
            })
        );
        let get = |key: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("/bin"), "the image's environment");
        assert_eq!(get("MODE"), Some("user"), "the user's beats the image's");
        assert_eq!(get("PORT"), Some("8080"), "Hangar's beats both");
        assert_eq!(get("HANGAR_REPLICA_ID"), Some("r1"));
        // The image's variables come first, Hangar's last.
        assert_eq!(spec.env.first().map(|(k, _)| k.as_str()), Some("PATH"));

        // The same files in a directory not named as an image artifact are a
        // source tree like any other (here: one with nothing to run).
        let tree = parent.join("0123abcd");
        std::fs::create_dir_all(&tree).expect("tree");
        std::fs::copy(
            artifact.join(IMAGE_CONFIG_FILE),
            tree.join(IMAGE_CONFIG_FILE),
        )
        .expect("copy");
        assert_eq!(image_run(&tree), Ok(None));
        assert!(replica_spec(
            &instance(&[]),
            tree.to_str().expect("utf-8"),
            "r1",
            "g1",
            None
        )
        .is_err());
        std::fs::remove_dir_all(parent).expect("cleanup");
    }

    fn get<'a>(spec: &'a ReplicaSpec, key: &str) -> Option<&'a str> {
        spec.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn sandbox_clouds_run_the_tree_as_before_and_name_their_cloud() {
        let tree = dir(&[("main.py", "")]);
        let path = tree.to_str().expect("utf-8");
        let bare = replica_spec(&instance(&[]), path, "r1", "g1", None).expect("spec");
        let spec = replica_spec(
            &instance(&[]),
            path,
            "r1",
            "g1",
            Some(("cloud_1", DriverKind::Sandbox)),
        )
        .expect("spec");
        assert_eq!(
            spec.labels.get(labels::CLOUD).map(String::as_str),
            Some("cloud_1")
        );
        assert_eq!(spec.labels.get(labels::DRIVER), None, "the set's default");
        let mut unlabelled = spec.clone();
        unlabelled.labels.remove(labels::CLOUD);
        assert_eq!(unlabelled, bare, "nothing else differs");
        assert_eq!(spec.app.as_deref(), Some(tree.as_path()));
        assert_eq!(spec.image, None);
        assert_eq!(spec.argv, ["python3", "-u", "/app/main.py"]);
        std::fs::remove_dir_all(tree).expect("cleanup");
    }

    #[test]
    fn a_tree_with_a_virtualenv_runs_with_it_first_on_its_path() {
        let tree = dir(&[("main.py", "")]);
        let path = tree.to_str().expect("utf-8");
        let bare = replica_spec(&instance(&[]), path, "r1", "g1", None).expect("spec");
        assert_eq!(get(&bare, "PATH"), None, "the sandbox's own");

        std::fs::create_dir_all(tree.join(".venv/bin")).expect("venv");
        let venv = replica_spec(&instance(&[]), path, "r1", "g1", None).expect("spec");
        assert_eq!(
            get(&venv, "PATH"),
            Some("/app/.venv/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        );
        let own =
            replica_spec(&instance(&[("PATH", "/opt/bin")]), path, "r1", "g1", None).expect("spec");
        assert_eq!(get(&own, "PATH"), Some("/opt/bin"), "the user's wins");
        std::fs::remove_dir_all(tree).expect("cleanup");
    }

    #[test]
    fn registries_are_read_from_references() {
        assert_eq!(
            registry_of("127.0.0.1:5000/a/b@sha256:00"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("ghcr.io/u/a:v1"), "ghcr.io");
        assert_eq!(registry_of("localhost/a"), "localhost");
        assert_eq!(registry_of("library/python:3"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }

    #[test]
    fn kubernetes_clouds_run_the_pushed_image_and_never_a_tree() {
        let tree = dir(&[("main.py", "")]);
        let err = replica_spec(
            &instance(&[]),
            tree.to_str().expect("utf-8"),
            "r1",
            "g1",
            Some(("cloud_k", DriverKind::Kubernetes)),
        )
        .expect_err("a tree is not an image");
        assert!(err.contains("no image to pull"), "{err}");
        std::fs::remove_dir_all(tree).expect("cleanup");

        let run = ImageRun {
            image: "127.0.0.1:5000/hangar/agent_1:k1".to_owned(),
            digest: "sha256:ab".to_owned(),
            user: "1000:1000".to_owned(),
            entrypoint: vec!["/app/.venv/bin/python".to_owned()],
            working_dir: "/app".to_owned(),
            ..ImageRun::default()
        };
        let parent = dir(&[]);
        let image = parent.join("oci-sha256-ab");
        std::fs::create_dir(&image).expect("dir");
        std::fs::write(
            image.join(IMAGE_CONFIG_FILE),
            serde_json::to_string(&run).expect("json"),
        )
        .expect("write");
        let spec = replica_spec(
            &instance(&[("MODE", "user")]),
            image.to_str().expect("utf-8"),
            "r1",
            "g1",
            Some(("cloud_k", DriverKind::Kubernetes)),
        )
        .expect("spec");
        assert_eq!(
            spec.image.as_deref(),
            Some("127.0.0.1:5000/hangar/agent_1@sha256:ab")
        );
        assert_eq!(
            spec.labels.get(labels::DRIVER).map(String::as_str),
            Some("kubernetes")
        );
        assert_eq!(
            spec.labels.get(labels::CLOUD).map(String::as_str),
            Some("cloud_k")
        );
        assert!(
            spec.argv.is_empty() && spec.cwd.is_empty(),
            "the image's own"
        );
        assert_eq!((&spec.app, &spec.rootfs), (&None, &None));
        assert_eq!(
            spec.user,
            Some(ReplicaUser {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(get(&spec, "MODE"), Some("user"));
        assert_eq!(get(&spec, "HANGAR_REPLICA_ID"), Some("r1"));
        assert!(spec.app_writable, "an agent at /app writes there");
        std::fs::remove_dir_all(parent).expect("cleanup");
    }

    fn docker(files: &[(&str, &str)], env: &[(&str, &str)]) -> ReplicaSpec {
        let tree = dir(files);
        let spec = replica_spec(
            &instance(env),
            tree.to_str().expect("utf-8"),
            "r1",
            "g1",
            Some(("cloud_d", DriverKind::Docker)),
        );
        std::fs::remove_dir_all(tree).expect("cleanup");
        spec.expect("spec")
    }

    #[test]
    fn docker_clouds_run_the_builds_image() {
        // A generated Dockerfile: the tree at /app, its command as on a sandbox.
        let spec = docker(&[("main.py", "")], &[("HOME", "/home/x")]);
        assert_eq!(spec.image.as_deref(), Some("hangar-build:build_1"));
        assert_eq!(
            spec.labels.get(labels::DRIVER).map(String::as_str),
            Some("docker")
        );
        assert_eq!(
            spec.labels.get(labels::CLOUD).map(String::as_str),
            Some("cloud_d")
        );
        assert_eq!(
            spec.labels.get(labels::INSTANCE).map(String::as_str),
            Some("inst_1")
        );
        assert_eq!(spec.argv, ["python3", "-u", "/app/main.py"]);
        assert_eq!(spec.cwd, "/app");
        assert_eq!((&spec.app, &spec.rootfs, &spec.user), (&None, &None, &None));
        assert_eq!(get(&spec, "PORT"), Some("8080"));
        assert_eq!(get(&spec, "HANGAR_REPLICA_ID"), Some("r1"));
        assert_eq!(get(&spec, "HOME"), Some("/tmp"), "as on a sandbox");
        assert_eq!(spec.port, Some(8080));

        // The tree's own Dockerfile: the image's entrypoint, cmd and workdir.
        let spec = docker(
            &[("Dockerfile", "FROM x\n"), ("main.py", "")],
            &[("HOME", "/home/x")],
        );
        assert!(spec.argv.is_empty(), "{:?}", spec.argv);
        assert_eq!(spec.cwd, "");
        assert_eq!(get(&spec, "HOME"), Some("/home/x"), "the user's stands");
        assert_eq!(get(&spec, "PYTHONUNBUFFERED"), Some("1"));

        // hangar.toml's run command wins either way.
        let toml = ("hangar.toml", "[run]\ncommand = \"/srv/run --port 1\"\n");
        let spec = docker(&[("Dockerfile", "FROM x\n"), toml], &[]);
        assert_eq!(spec.argv, ["/srv/run", "--port", "1"]);
        assert_eq!(spec.cwd, "", "the image's workdir");
        let spec = docker(&[toml], &[]);
        assert_eq!(spec.argv, ["/srv/run", "--port", "1"]);
        assert_eq!(spec.cwd, "/app");

        // A generated Dockerfile needs something to run.
        let tree = dir(&[("README", "")]);
        let err = replica_spec(
            &instance(&[]),
            tree.to_str().expect("utf-8"),
            "r1",
            "g1",
            Some(("cloud_d", DriverKind::Docker)),
        )
        .expect_err("nothing to run");
        assert!(err.contains("nothing to run"), "{err}");
        std::fs::remove_dir_all(tree).expect("cleanup");
    }
}
