//! Builds for kubernetes clouds, for real and without a Docker engine: a
//! registry of Debian's `docker-registry` with basic auth on a loopback port
//! (see `common::registry`), a Python base image made here from the host's
//! own `python3` (with `venv` and its bundled pip) and busybox and pushed
//! with `oci-client`, the builder over a real store with the real sandbox
//! driver. An uploaded agent whose dependency is a wheel it carries (so no
//! package index is needed) is built on the base image in a sandbox and
//! pushed; the registry then holds its image, whose config runs the agent
//! and whose new layer is `/app` with the virtualenv; the image runs (pulled
//! and unpacked again, as a sandbox cloud's `docker` source, and started) and
//! prints what its dependency says. A second build of the same source sends
//! no write to the registry. A `docker` source is resolved to its digest
//! without any layer being fetched, a registry on a non-loopback address is
//! spoken to over plain HTTP only when the cloud says `insecure_registry`,
//! and the failures a user can fix (no base image set, an unreachable
//! registry, wrong credentials, a registry refusing pushes) say so. Needs
//! root, `docker-registry`, `busybox-static` and `python3-venv`:
//! `cargo test -p hangar --test k8s_builds`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hangar_build::{BuildConfig, Builder};
use hangar_core::image::{ImageRun, IMAGE_CONFIG_FILE, ROOTFS_DIR};
use hangar_core::model::{Build, DriverKind};
use hangar_core::resources::Resources;
use hangar_core::spec::{RegistryCredentials, RuntimeConfig, Scaling, Source};
use hangar_core::status::BuildStatus;
use hangar_runtime::driver::{Driver, OutputEvent, ReplicaSpec, ReplicaUser};
use hangar_runtime::{SandboxDriver, SandboxDriverConfig};
use hangar_store::testing::TestDb;
use hangar_store::{Backend, NewAgent, Store};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};

mod common;

use common::registry::{Registry, PASSWORD, REGISTRY, USER};
use common::*;

const PYTHON: &str = "/usr/bin/python3";
const BUSYBOX: &str = "/bin/busybox";
/// Debian's pip and setuptools wheels, which its `ensurepip` installs from.
const PYTHON_WHEELS: &str = "/usr/share/python-wheels";

/// Whether everything these tests run is here; with `CI=true` its absence
/// fails the test instead of skipping it.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn tools_or_skip(name: &str) -> bool {
    if !root_or_skip(name) {
        return false;
    }
    let missing: Vec<&str> = [REGISTRY, BUSYBOX, PYTHON, PYTHON_WHEELS]
        .into_iter()
        .filter(|tool| !Path::new(tool).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{missing:?} missing (apt-get install docker-registry busybox-static python3-venv)"
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI=true"
    );
    eprintln!("SKIPPED {name}: {why}");
    false
}

// ------------------------------------------------------------ the base image

/// The base image's one layer: the host's python3 with its standard
/// library (`venv` and `ensurepip` included), Debian's pip wheels, the
/// libraries they link, and busybox as `/bin/sh`. Returns the gzip and the
/// tar's digest.
fn base_layer() -> (Vec<u8>, String) {
    let python = std::fs::canonicalize(PYTHON).expect("python3 on the host");
    let stdlib = Path::new("/usr/lib").join(python.file_name().expect("a name"));
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut linked = vec![python.clone()];
    for entry in common::docker::walk(&stdlib)
        .into_iter()
        .chain(common::docker::walk(Path::new(PYTHON_WHEELS)))
    {
        let skip = entry.components().any(|c| {
            matches!(
                c.as_os_str().to_str(),
                Some("test" | "__pycache__" | "idlelib" | "tkinter" | "turtledemo")
            )
        });
        if skip {
            continue;
        }
        if entry.extension().is_some_and(|e| e == "so") {
            linked.push(entry.clone());
        }
        files.insert(entry);
    }
    files.insert(python.clone());
    files.insert(PathBuf::from(BUSYBOX));
    for binary in linked {
        files.extend(common::docker::libraries(&binary));
    }
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for file in &files {
        let mut parent = file.parent();
        while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
            dirs.insert(dir.to_path_buf());
            parent = dir.parent();
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    let rel = |path: &Path| path.strip_prefix("/").expect("absolute").to_path_buf();
    for dir in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, rel(dir), std::io::empty())
            .expect("dir");
    }
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, rel(file), &data[..])
            .expect("file");
    }
    for (link, target) in [
        (
            "usr/bin/python3",
            python.file_name().expect("name").to_owned(),
        ),
        ("bin/sh", "busybox".into()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, link, target).expect("link");
    }
    let tar = tar.into_inner().expect("tar");
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip"), diff_id)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn client(host: &str) -> (Client, RegistryAuth) {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![host.to_owned()]),
        ..ClientConfig::default()
    });
    (
        client,
        RegistryAuth::Basic(USER.to_owned(), PASSWORD.to_owned()),
    )
}

/// Pushes the base image as `<registry>/base/python:3`; returns the
/// reference and its layer's digest.
async fn push_base(registry: &Registry, layer: &(Vec<u8>, String)) -> (String, String) {
    let (client, auth) = client(&registry.host);
    let image = format!("{}/base/python:3", registry.host);
    let reference: Reference = image.parse().expect("reference");
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.1]},
        "history": [{"created_by": "the hangar tests: the host's python3 and busybox"}]
    });
    let layers = vec![ImageLayer::oci_v1_gzip(layer.0.clone(), None)];
    let digest = layers[0].sha256_digest();
    client
        .push(
            &reference,
            &layers,
            Config::oci_v1(config.to_string().into_bytes(), None),
            &auth,
            None,
        )
        .await
        .expect("push the base image");
    (image, digest)
}

// ------------------------------------------------------------------ the agent

/// An agent that prints what its dependency says: `hangar-greeting`, a
/// wheel it carries, installed with pip from there (no package index).
fn agent_tree(dir: &Path) {
    with_greeting_dependency(dir);
    std::fs::write(
        dir.join("main.py"),
        "import hangar_greeting\nprint(hangar_greeting.hello('kubernetes'), flush=True)\n",
    )
    .expect("main.py");
}

/// The tree at `dir` as an upload's archive in `data`'s uploads.
fn upload(data: &Path, dir: &Path) -> Source {
    let id = hangar_core::id::new_id(hangar_core::id::IdKind::Upload);
    let uploads = data.join("uploads");
    std::fs::create_dir_all(&uploads).expect("uploads");
    let out = Command::new("tar")
        .args(["czf"])
        .arg(uploads.join(&id))
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "{out:?}");
    Source::Upload {
        archive_url: None,
        upload_id: Some(id),
    }
}

// ------------------------------------------------------------------ the world

/// A test's directory, removed when the test ends, passed or failed
/// (declared first, so dropped after the registries and sandboxes in it).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = temp(tag);
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct World {
    _db: TestDb,
    store: Store,
    org: String,
    user: String,
    dir: PathBuf,
    driver: Arc<SandboxDriver>,
}

impl World {
    async fn new(dir: &Path) -> Self {
        let db = TestDb::new(Backend::Sqlite).await;
        let store = db.store.clone();
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let org = boot.organization.id.clone();
        store
            .put_secret(&org, "REG", PASSWORD)
            .await
            .expect("secret");
        let driver = SandboxDriver::new(SandboxDriverConfig {
            shim_program: PathBuf::from(env!("CARGO_BIN_EXE_hangar")),
            state_dir: dir.join("runtime"),
            host_network: false,
        })
        .expect("driver");
        World {
            _db: db,
            store,
            org,
            user: boot.admin.id,
            dir: dir.to_path_buf(),
            driver: Arc::new(driver),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    async fn cloud(&self, name: &str, config: Value) -> String {
        self.store
            .create_cloud(&self.org, name, DriverKind::Kubernetes, &config, None)
            .await
            .expect("cloud")
            .id
    }

    async fn agent(&self, cloud: &str, name: &str, source: Source) -> Build {
        let cloud = self
            .store
            .get_cloud(&self.org, cloud)
            .await
            .expect("cloud")
            .expect("exists");
        let (_, build) = self
            .store
            .create_agent(NewAgent {
                organization_id: self.org.clone(),
                user_id: self.user.clone(),
                cloud_id: cloud.id,
                url_base: None,
                name: name.into(),
                display_name: None,
                version: None,
                runtime: Default::default(),
                resources: Resources::default(),
                scaling: Scaling::default(),
                config: RuntimeConfig::default(),
                environment: BTreeMap::new(),
                source,
                metadata: BTreeMap::new(),
            })
            .await
            .expect("agent");
        build
    }

    fn builder(&self) -> Builder {
        Builder::new(self.store.clone())
            .with_config(BuildConfig::new(self.data()))
            .with_driver(self.driver.clone())
    }

    /// Runs the queued build; returns it finished, and its log.
    async fn finished(&self, build: &Build) -> (Build, String) {
        assert_eq!(self.builder().run_pending().await.expect("run"), 1);
        let done = self
            .store
            .get_build(&self.org, &build.id)
            .await
            .expect("get")
            .expect("build");
        let log = self
            .store
            .build_log(&build.id, 0, 10_000)
            .await
            .expect("log")
            .into_iter()
            .map(|l| l.line)
            .collect::<Vec<_>>()
            .join("\n");
        (done, log)
    }
}

fn credentials() -> RegistryCredentials {
    RegistryCredentials {
        username: USER.to_owned(),
        password: "${secrets.REG}".to_owned(),
    }
}

/// The image artifact at `path`: its `image.json`, and whether it holds a
/// root filesystem.
fn image_artifact(path: &str) -> (ImageRun, bool) {
    let dir = Path::new(path);
    let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.starts_with("oci-sha256-"), "{path}");
    let text = std::fs::read_to_string(dir.join(IMAGE_CONFIG_FILE)).expect("image.json");
    let run: ImageRun = serde_json::from_str(&text).expect("an ImageRun");
    assert_eq!(
        hangar_core::image::artifact_name(&run.digest).as_deref(),
        Some(name),
        "the artifact is named by the digest"
    );
    (run, dir.join(ROOTFS_DIR).exists())
}

/// The entries of a gzipped layer: path → (mode, uid, symlink target).
fn layer_entries(gz: &[u8]) -> BTreeMap<String, (u32, u64, Option<String>)> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut tar)
        .expect("gunzip");
    let mut archive = tar::Archive::new(&tar[..]);
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let link = e
                .link_name()
                .expect("link")
                .map(|l| l.display().to_string());
            let h = e.header();
            (
                e.path().expect("path").display().to_string(),
                (h.mode().expect("mode"), h.uid().expect("uid"), link),
            )
        })
        .collect()
}

/// Runs the image artifact at `path` (with its root filesystem) as a
/// sandbox replica, as the controller would; returns what it printed.
async fn run_image(world: &World, path: &str) -> String {
    let (run, _) = image_artifact(path);
    let (uid, gid) = run.uid_gid();
    let id = "k8s-build-run";
    let spec = ReplicaSpec {
        id: id.to_owned(),
        labels: BTreeMap::new(),
        argv: run.argv(),
        env: run.env_pairs(),
        cwd: run.cwd(),
        app: None,
        app_writable: false,
        port: None,
        stdin: false,
        cpu_millis: 1000,
        cpu_limit_millis: None,
        memory_limit_bytes: Some(256 << 20),
        pids_limit: 64,
        rootfs: Some(Path::new(path).join(ROOTFS_DIR)),
        user: Some(ReplicaUser { uid, gid }),
        image: None,
        image_auth: None,
        network: Default::default(),
    };
    let _ = world.driver.remove(id).await;
    world.driver.create(&spec).await.expect("create");
    let mut output = world.driver.follow(id, 0).await.expect("follow");
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let event = tokio::select! {
            event = output.recv() => event,
            () = tokio::time::sleep_until(deadline) => panic!("the image never exited: {lines:?}"),
        };
        match event {
            Some(OutputEvent::Line(line)) => lines.push(line.text),
            Some(OutputEvent::End(exit)) => {
                assert!(exit.success(), "{exit:?}: {lines:?}");
                break;
            }
            Some(OutputEvent::Gap { .. }) => {}
            None => panic!("lost the replica: {lines:?}"),
        }
    }
    world.driver.remove(id).await.expect("remove");
    lines.join("\n")
}

// ------------------------------------------------------------------ the tests

#[tokio::test]
async fn an_uploaded_agent_is_built_on_the_base_image_pushed_once_and_runs() {
    if !tools_or_skip("k8s_builds_upload") {
        return;
    }
    let scratch = Scratch::new("k8s-build-upload");
    let dir = scratch.0.clone();
    let registry = Registry::start(&dir.join("registry")).await;
    let base_layer = base_layer();
    let (base, base_layer_digest) = push_base(&registry, &base_layer).await;
    let world = World::new(&dir).await;
    world
        .cloud(
            "k8s",
            json!({
                "registry": format!("{}/agents", registry.host),
                "registry_credentials": {"username": USER, "password": "${secrets.REG}"},
                "base_image": {"python": base},
            }),
        )
        .await;
    let tree = dir.join("agent");
    agent_tree(&tree);
    let build = world
        .agent("k8s", "greeter", upload(&world.data(), &tree))
        .await;
    let started = std::time::Instant::now();
    let (built, log) = world.finished(&build).await;
    eprintln!("first build: {:?}", started.elapsed());
    assert_eq!(built.status, BuildStatus::Ready, "{built:?}\n{log}");
    eprintln!("{log}");
    assert!(log.contains("build step (requirements.txt) on"), "{log}");
    assert!(
        log.contains("Successfully installed hangar-greeting-1.0"),
        "{log}"
    );
    assert!(
        log.contains("1 base layer(s) (1 mounted, 0 copied)"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "the password never shows: {log}");

    // The artifact names the pushed image by its digest, with no root.
    let artifact = built.artifact.clone().expect("artifact");
    let (run, has_rootfs) = image_artifact(&artifact);
    assert!(!has_rootfs, "the cluster pulls the layers, not this server");
    let repository = format!("{}/agents/{}", registry.host, build.agent_id.to_lowercase());
    assert!(run.image.starts_with(&format!("{repository}:")), "{run:?}");
    assert_eq!(
        run.entrypoint,
        ["/app/.venv/bin/python", "-u", "/app/main.py"]
    );
    assert!(run.cmd.is_empty(), "{run:?}");
    assert_eq!(run.working_dir, "/app");
    assert_eq!(run.user, "65534:65534");
    for var in [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED=1",
        "HOME=/tmp",
    ] {
        assert!(run.env.iter().any(|e| e == var), "{var}: {run:?}");
    }

    // The registry has it, as an independent client sees it: the base's
    // layer and one more holding /app with the virtualenv.
    let (client, auth) = client(&registry.host);
    let reference: Reference = run.image.parse().expect("reference");
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&reference, &auth)
        .await
        .expect("the pushed image");
    assert_eq!(digest, run.digest);
    assert_eq!(manifest.layers.len(), 2, "{manifest:?}");
    assert_eq!(manifest.layers[0].digest, base_layer_digest);
    let config: Value = serde_json::from_str(&config).expect("config");
    assert_eq!(config["config"]["Entrypoint"][0], "/app/.venv/bin/python");
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(config["config"]["User"], "65534:65534");
    assert_eq!(
        config["rootfs"]["diff_ids"][0], base_layer.1,
        "the base's layers stay"
    );
    let mut app = Vec::new();
    client
        .pull_blob(&reference, &manifest.layers[1], &mut app)
        .await
        .expect("the app layer");
    let entries = layer_entries(&app);
    assert_eq!(
        entries.get("app/main.py").map(|e| (e.0, e.1)),
        Some((0o644, 0))
    );
    assert!(entries.contains_key("app/wheels/hangar_greeting-1.0-py3-none-any.whl"));
    assert!(
        entries.keys().any(|path| path.starts_with("app/.venv/lib/")
            && path.ends_with("site-packages/hangar_greeting/__init__.py")),
        "the dependency is installed in the layer: {:?}",
        entries.keys().take(40).collect::<Vec<_>>()
    );
    assert!(
        entries
            .get("app/.venv/bin/python")
            .is_some_and(|e| e.2.is_some()),
        "the virtualenv's python is a link to the base's"
    );
    assert!(
        entries.values().all(|(_, uid, _)| *uid == 0),
        "owned by root"
    );
    assert!(
        !entries
            .keys()
            .any(|path| path.contains(".hangar-build-tmp")),
        "the step's scratch dir is not in the image"
    );
    let tags: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/agents/{}/tags/list",
            registry.host,
            build.agent_id.to_lowercase()
        ))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .expect("tags")
        .json()
        .await
        .expect("json");
    assert_eq!(tags["tags"].as_array().map(Vec::len), Some(1), "{tags}");

    // The same source again: nothing is built or written to the registry.
    let writes = registry.writes();
    let again = world
        .store
        .queue_build(
            &world.org,
            &build.agent_id,
            Some(upload(&world.data(), &tree)),
        )
        .await
        .expect("queue")
        .expect("agent");
    let started = std::time::Instant::now();
    let (rebuilt, log) = world.finished(&again).await;
    eprintln!("second build of the same source: {:?}", started.elapsed());
    assert_eq!(rebuilt.status, BuildStatus::Ready, "{rebuilt:?}\n{log}");
    assert!(log.contains("reusing image"), "{log}");
    assert!(log.contains("nothing pushed"), "{log}");
    assert!(!log.contains("build step"), "{log}");
    assert_eq!(rebuilt.artifact, built.artifact);
    assert_eq!(
        registry.writes(),
        writes,
        "no PUT, POST or PATCH reached the registry: {:?}",
        &registry.requests()[..]
    );

    // The image runs: pulled and unpacked as a sandbox cloud's `docker`
    // source would (the same artifact gains its root filesystem), started
    // as the controller would start it.
    let pulled = world
        .agent(
            "local",
            "greeter-image",
            Source::Docker {
                image: run.image.clone(),
                credentials: Some(credentials()),
            },
        )
        .await;
    let (pulled, log) = world.finished(&pulled).await;
    assert_eq!(pulled.status, BuildStatus::Ready, "{pulled:?}\n{log}");
    assert_eq!(pulled.artifact, built.artifact, "one artifact per digest");
    let (_, has_rootfs) = image_artifact(&artifact);
    assert!(has_rootfs, "{log}");
    let output = run_image(&world, &artifact).await;
    assert_eq!(output, "Hello, kubernetes, from a dependency!");
}

#[tokio::test]
async fn a_docker_source_is_resolved_to_its_digest_without_pulling_layers() {
    if !tools_or_skip("k8s_builds_docker_source") {
        return;
    }
    let scratch = Scratch::new("k8s-build-docker");
    let dir = scratch.0.clone();
    let registry = Registry::start(&dir.join("registry")).await;
    let (base, layer_digest) = push_base(&registry, &base_layer()).await;
    let world = World::new(&dir).await;
    world.cloud("k8s", json!({})).await;
    let build = world
        .agent(
            "k8s",
            "prebuilt",
            Source::Docker {
                image: base.clone(),
                credentials: Some(credentials()),
            },
        )
        .await;
    let (built, log) = world.finished(&build).await;
    assert_eq!(built.status, BuildStatus::Ready, "{built:?}\n{log}");
    assert!(log.contains("pulled by the cluster"), "{log}");
    let (run, has_rootfs) = image_artifact(built.artifact.as_deref().expect("artifact"));
    assert!(!has_rootfs);
    assert_eq!(run.image, base);
    assert_eq!(run.cmd, ["python3"]);
    let (client, auth) = client(&registry.host);
    let digest = client
        .fetch_manifest_digest(&base.parse().expect("reference"), &auth)
        .await
        .expect("digest");
    assert_eq!(run.digest, digest);
    assert_eq!(
        hangar_core::kubernetes::pinned_reference(&run),
        format!("{}/base/python@{digest}", registry.host)
    );
    let requests = registry.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("GET ") && r.contains(&layer_digest)),
        "no layer was fetched: {requests:?}"
    );
}

/// This machine's first address that is not loopback, if any.
fn outside_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback()).then_some(ip)
}

#[tokio::test]
async fn a_registry_on_plain_http_is_used_only_when_the_cloud_says_insecure_registry() {
    if !tools_or_skip("k8s_builds_insecure") {
        return;
    }
    let Some(ip) = outside_address() else {
        eprintln!("SKIPPED k8s_builds_insecure: no address besides loopback");
        return;
    };
    let scratch = Scratch::new("k8s-build-insecure");
    let dir = scratch.0.clone();
    let registry = Registry::start_on(&dir.join("registry"), ip, false, true).await;
    let (base, _) = push_base(&registry, &base_layer()).await;
    let world = World::new(&dir).await;
    let config = |insecure: bool| {
        json!({
            "registry": format!("{}/agents", registry.host),
            "registry_credentials": {"username": USER, "password": "${secrets.REG}"},
            "insecure_registry": insecure,
            "base_image": {"python": base},
        })
    };
    world.cloud("tls", config(false)).await;
    world.cloud("plain", config(true)).await;
    let tree = dir.join("agent");
    std::fs::create_dir_all(&tree).expect("dir");
    std::fs::write(tree.join("main.py"), "print('no dependencies')\n").expect("main.py");

    let refused = world
        .agent("tls", "over-tls", upload(&world.data(), &tree))
        .await;
    let (refused, log) = world.finished(&refused).await;
    assert_eq!(refused.status, BuildStatus::Failed, "{log}");
    let reason = refused.reason.unwrap_or_default();
    eprintln!("{reason}");
    assert!(reason.contains("insecure_registry"), "{reason}");

    let built = world
        .agent("plain", "over-http", upload(&world.data(), &tree))
        .await;
    let (built, log) = world.finished(&built).await;
    assert_eq!(built.status, BuildStatus::Ready, "{built:?}\n{log}");
    let (run, _) = image_artifact(built.artifact.as_deref().expect("artifact"));
    assert_eq!(run.entrypoint, ["python3", "-u", "/app/main.py"]);
}

#[tokio::test]
async fn failures_say_what_to_fix() {
    if !tools_or_skip("k8s_builds_failures") {
        return;
    }
    let scratch = Scratch::new("k8s-build-failures");
    let dir = scratch.0.clone();
    let registry = Registry::start(&dir.join("registry")).await;
    let layer = base_layer();
    let (base, _) = push_base(&registry, &layer).await;
    // A base anyone may pull, for clouds whose own registry is elsewhere.
    let public = Registry::start_on(
        &dir.join("public"),
        IpAddr::from([127, 0, 0, 1]),
        false,
        false,
    )
    .await;
    let (public_base, _) = push_base(&public, &layer).await;
    let read_only = Registry::start_on(
        &dir.join("read-only"),
        IpAddr::from([127, 0, 0, 1]),
        true,
        true,
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let closed_text = closed.to_string();
    let world = World::new(&dir).await;
    let tree = dir.join("agent");
    std::fs::create_dir_all(&tree).expect("dir");
    std::fs::write(tree.join("main.py"), "print('hi')\n").expect("main.py");
    let credentials = json!({"username": USER, "password": "${secrets.REG}"});
    world
        .store
        .put_secret(&world.org, "WRONG", "not-the-password")
        .await
        .expect("secret");
    let cases = [
        (
            "no-base",
            json!({"registry": format!("{}/agents", registry.host), "registry_credentials": credentials}),
            vec!["config.base_image.python"],
        ),
        (
            "no-registry",
            json!({"base_image": {"python": public_base}}),
            vec!["config.registry"],
        ),
        (
            "unreachable",
            json!({"registry": format!("{closed}/agents"), "base_image": {"python": public_base}}),
            vec!["cannot connect to the registry", &closed_text],
        ),
        (
            "wrong-password",
            json!({
                "registry": format!("{}/agents", registry.host),
                "registry_credentials": {"username": USER, "password": "${secrets.WRONG}"},
                "base_image": {"python": base},
            }),
            vec!["refused the credentials"],
        ),
        (
            "missing-base",
            json!({
                "registry": format!("{}/agents", registry.host),
                "registry_credentials": credentials,
                "base_image": {"python": format!("{}/base/python:0", registry.host)},
            }),
            vec!["config.base_image.python", "not found"],
        ),
        (
            // The base in one registry, pushes refused by the other: the
            // base's layer is copied (no mount across registries) and the
            // read-only registry says no.
            "read-only",
            json!({
                "registry": format!("{}/agents", read_only.host),
                "registry_credentials": credentials,
                "base_image": {"python": public_base},
            }),
            vec!["cannot push to", &read_only.host, "takes no pushes"],
        ),
    ];
    for (name, config, words) in cases {
        world.cloud(name, config).await;
        let build = world.agent(name, name, upload(&world.data(), &tree)).await;
        let (failed, log) = world.finished(&build).await;
        assert_eq!(failed.status, BuildStatus::Failed, "{name}: {log}");
        let reason = failed.reason.unwrap_or_default();
        eprintln!("{name}: {reason}");
        for word in words {
            assert!(reason.contains(word), "{name}: {word:?} in {reason}");
        }
        for internal in [
            "os error",
            "tcp connect",
            "hyper",
            "reqwest",
            "error sending request",
            "not-the-password",
        ] {
            assert!(
                !reason.contains(internal),
                "{name}: {internal:?} in {reason}"
            );
        }
        assert!(
            log.ends_with(&reason),
            "{name}: the reason is the log's last line"
        );
    }
}
