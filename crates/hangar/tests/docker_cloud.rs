//! Docker clouds for real: `hangar serve` as a process with the local Docker
//! engine; an agent on a cloud with `driver: docker` is built into an image
//! by the engine (a generated Dockerfile from a base image made here, or the
//! source's own Dockerfile), runs as a container, is invoked through the
//! gateway, and leaves nothing behind once deleted.
//!
//! Needs root and a Docker engine (`cargo test -p hangar --test
//! docker_cloud`); without an engine it skips, saying why, except with
//! `CI=true`, where it fails. No registry is needed: the base image is made
//! from the host's own Python (see `common/docker.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::docker::{self as engine, BASE_IMAGE};
use common::*;

/// Removes what a test's server made on the engine, however the test ends:
/// its containers and networks (by owner) and its build images.
struct Leftovers {
    owner: String,
    images: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        engine::remove_owned(&self.owner);
        if !self.images.is_empty() {
            let _ = Command::new("docker")
                .args(["image", "rm", "-f"])
                .args(&self.images)
                .output();
        }
    }
}

/// The owner label `hangar serve` gives its containers: made at random on
/// its first start and kept in its data dir.
fn serve_owner(dir: &Path) -> String {
    let path = dir.join("hangar-data/docker.owner");
    let owner = std::fs::read_to_string(&path).expect("the server keeps its docker owner");
    let owner = owner.trim();
    assert_eq!(owner.len(), 16, "{owner:?}");
    owner.to_owned()
}

/// The ids of the containers (running or not) labelled with `owner`.
fn containers(owner: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=hangar.docker.owner={owner}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Root, an engine, the test base image and a server; `None`: skipped.
async fn setup(test: &str) -> Option<(Server, Leftovers)> {
    if !root_or_skip(test) {
        return None;
    }
    // Checks the engine and makes the base image once.
    engine::driver_or_skip(test, &engine::owner(test)).await?;
    let dir = temp(test);
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&dir);
    let leftovers = Leftovers {
        owner: serve_owner(&dir),
        images: Vec::new(),
    };
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/clouds",
            Some(json!({"name": "dock", "driver": "docker", "config": {"base_image": BASE_IMAGE}})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    Some((server, leftovers))
}

/// A `.tar.gz` of the directory `dir`.
fn tar_gz(dir: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["czf", "-", "-C", dir, "."])
        .output()
        .expect("tar");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// Opens an upload and PUTs `archive` to its signed URL; returns the URL.
async fn upload(server: &Server, archive: Vec<u8>) -> String {
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
        .body(archive)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    url
}

/// Creates an agent on the docker cloud; returns its id and its build's.
async fn create(server: &Server, name: &str, source: Value) -> (String, String) {
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": name, "cloud_id": "dock", "source": source})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let builds = server.get(&format!("/v1/agents/{agent}/builds")).await;
    let build = builds["data"][0]["id"].as_str().expect("build").to_owned();
    (agent, build)
}

/// The build's log, one line per message, once it has finished.
async fn finished(server: &Server, build: &str) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let b = server.get(&format!("/v1/builds/{build}")).await["data"].clone();
        if b["status"] == "ready" || b["status"] == "failed" {
            break b;
        }
        assert!(Instant::now() < deadline, "build never finished: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = server.get(&format!("/v1/builds/{build}/logs")).await["data"]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    (done, log)
}

/// A fresh source directory `name`: the test HTTP agent's `main.py` and a
/// Dockerfile of `steps` on the test base image.
fn with_dockerfile(name: &str, steps: &str) -> PathBuf {
    let src = temp(name);
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("src");
    std::fs::copy(
        Path::new(&agent_dir("http")).join("main.py"),
        src.join("main.py"),
    )
    .expect("copy");
    std::fs::write(
        src.join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\n{steps}"),
    )
    .expect("Dockerfile");
    src
}

/// Creates agent `name` from the directory `src` (a `file://` source);
/// its image is removed with `leftovers`. Returns the agent and its build.
async fn create_from(
    server: &Server,
    leftovers: &mut Leftovers,
    name: &str,
    src: &Path,
) -> (String, String) {
    let (agent, build) = create(
        server,
        name,
        json!({"type": "github", "repo": format!("file://{}", src.display())}),
    )
    .await;
    leftovers
        .images
        .push(format!("hangar-build:{}", build.to_ascii_lowercase()));
    (agent, build)
}

/// The agent's default instance, once it runs.
async fn running(server: &Server, agent: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = server.get(&format!("/v1/agents/{agent}")).await["data"].clone();
        if let Some(instance) = a["instance_id"].as_str() {
            let i = server.instance(instance).await;
            if i["status"] == "running" {
                return instance.to_owned();
            }
            assert!(i["status"] != "error", "instance failed: {i}");
        }
        assert!(Instant::now() < deadline, "never running: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn invoke(server: &Server, agent: &str, input: Value) -> Value {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({ "input": input })),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["success"], true, "{text}");
    body["data"]["output"].clone()
}

/// Deletes the instance and waits for its containers to go.
async fn delete_and_check_nothing_left(server: &Server, instance: &str, owner: &str) {
    server.delete(instance, true).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = containers(owner);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "containers left: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_uploaded_agent_is_built_from_a_generated_dockerfile_and_invoked() {
    let Some((server, mut leftovers)) = setup("docker_cloud_generated").await else {
        return;
    };
    let url = upload(&server, tar_gz(&agent_dir("http"))).await;
    let (agent, build) = create(
        &server,
        "dock-http",
        json!({"type": "upload", "archive_url": url}),
    )
    .await;
    leftovers
        .images
        .push(format!("hangar-build:{}", build.to_ascii_lowercase()));
    let (built, log) = finished(&server, &build).await;
    assert_eq!(built["status"], "ready", "{built}\n{log}");
    // The engine's own lines, streamed into the build's log.
    assert!(log.contains("generated Dockerfile"), "{log}");
    assert!(log.contains(&format!("FROM {BASE_IMAGE}")), "{log}");
    assert!(log.contains("Step 1/"), "{log}");
    assert!(
        log.contains(&format!("hangar-build:{}", build.to_ascii_lowercase())),
        "{log}"
    );

    let instance = running(&server, &agent).await;
    let output = invoke(&server, &agent, json!({"hello": "docker"})).await;
    assert_eq!(output["echo"], json!({"hello": "docker"}), "{output}");
    let org = server.org().await;
    let logs = server
        .wait_log(&org, &instance, "invoked with {\"hello\": \"docker\"}")
        .await;
    assert!(
        logs.iter().any(|l| l.contains("listening on 8080")),
        "{logs:#?}"
    );
    // It is a container of this server's, not a sandbox.
    assert_eq!(containers(&leftovers.owner).len(), 1);
    assert!(server.replica_ids().is_empty(), "no sandbox ran it");
    let (status, out, code) = server.exec(&org, &instance, &["pwd"]).await;
    assert_eq!(
        (status, out.trim(), code.as_deref()),
        (200, "/app", Some("0"))
    );

    // The host is out of reach from the replica: a service on every address
    // of the host, at the network's gateway.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let probe = format!(
        "import socket, struct\n\
         gateway = None\n\
         for line in open('/proc/net/route').read().splitlines()[1:]:\n\
         \x20   f = line.split()\n\
         \x20   if f[1] == '00000000': gateway = socket.inet_ntoa(struct.pack('<L', int(f[2], 16)))\n\
         s = socket.socket(); s.settimeout(5)\n\
         try:\n    s.connect((gateway, {port})); print('ok')\n\
         except ConnectionRefusedError: print('refused')\n\
         except socket.timeout: print('timeout')\n\
         except OSError as e: print('errno', e.errno)\n"
    );
    let (status, out, code) = server
        .exec(&org, &instance, &["python3", "-c", &probe])
        .await;
    assert_eq!(
        (status, out.trim(), code.as_deref()),
        (200, "refused", Some("0"))
    );

    delete_and_check_nothing_left(&server, &instance, &leftovers.owner).await;
}

#[tokio::test]
async fn a_source_with_its_own_dockerfile_runs_the_image_as_it_says() {
    let Some((server, mut leftovers)) = setup("docker_cloud_own").await else {
        return;
    };
    let src = with_dockerfile(
        "docker-own-src",
        "COPY main.py /srv/agent.py\n\
         WORKDIR /srv\n\
         USER 1000\n\
         CMD [\"python3\", \"-u\", \"/srv/agent.py\"]\n",
    );
    let (agent, build) = create_from(&server, &mut leftovers, "dock-own", &src).await;
    let (built, log) = finished(&server, &build).await;
    assert_eq!(built["status"], "ready", "{built}\n{log}");
    assert!(log.contains("the source's own Dockerfile"), "{log}");
    assert!(log.contains("WORKDIR /srv"), "{log}");

    let instance = running(&server, &agent).await;
    let output = invoke(&server, &agent, json!([1, 2, 3])).await;
    assert_eq!(output["echo"], json!([1, 2, 3]), "{output}");
    // The image's working directory and its (non-root) user.
    let org = server.org().await;
    let (_, out, _) = server.exec(&org, &instance, &["pwd"]).await;
    assert_eq!(out.trim(), "/srv");
    let (_, out, _) = server.exec(&org, &instance, &["id", "-u"]).await;
    assert_eq!(out.trim(), "1000");

    delete_and_check_nothing_left(&server, &instance, &leftovers.owner).await;
    let _ = std::fs::remove_dir_all(src);
}

/// An image build's steps get a build step's limits: with the agent's
/// default 512 MiB, a `RUN` that fills 1 GiB is killed and the build fails.
#[tokio::test]
async fn an_image_build_is_held_to_the_build_step_limits() {
    let Some((server, mut leftovers)) = setup("docker_cloud_limits").await else {
        return;
    };
    let src = with_dockerfile(
        "docker-limits-src",
        "RUN python3 -c \"x = b'x' * (1 << 30); print('filled', len(x))\"\n",
    );
    let (_agent, build) = create_from(&server, &mut leftovers, "dock-limits", &src).await;
    let (built, log) = finished(&server, &build).await;
    assert_eq!(built["status"], "failed", "{built}\n{log}");
    assert!(
        !log.contains("filled 1073741824"),
        "the step filled 1 GiB:\n{log}"
    );
    assert!(
        log.contains("returned a non-zero code: 137"),
        "the step was killed:\n{log}"
    );
    assert!(
        containers(&leftovers.owner).is_empty(),
        "no replica was made"
    );
    let _ = std::fs::remove_dir_all(src);
}

/// A data dir from a build before `docker.owner`, with replicas on the
/// engine marked with the hash of its path, keeps that mark (they are its
/// replicas); a new data dir gets a random one.
#[tokio::test]
async fn a_data_dir_keeps_the_owner_its_earlier_replicas_carry() {
    if !root_or_skip("docker owner") {
        return;
    }
    if engine::driver_or_skip("docker owner", &engine::owner("docker-owner"))
        .await
        .is_none()
    {
        return;
    }
    let dir = temp("docker_cloud_owner");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("hangar-data")).expect("data dir");
    let legacy = {
        use sha2::Digest as _;
        let data = dir.join("hangar-data").canonicalize().expect("data dir");
        let hash = sha2::Sha256::digest(data.as_os_str().as_encoded_bytes());
        hash[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let _cleanup = Leftovers {
        owner: legacy.clone(),
        images: Vec::new(),
    };
    let made = Command::new("docker")
        .args(["create", "--label"])
        .arg(format!("hangar.docker.owner={legacy}"))
        .args([BASE_IMAGE, "true"])
        .output()
        .expect("docker create");
    assert!(made.status.success(), "{made:?}");
    let server = Server::start(&dir);
    assert_eq!(serve_owner(&dir), legacy);
    drop(server);

    let fresh = temp("docker_cloud_owner_new");
    let _ = std::fs::remove_dir_all(&fresh);
    let server = Server::start(&fresh);
    let owner = serve_owner(&fresh);
    assert_ne!(owner, legacy);
    drop(server);
    for d in [dir, fresh] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test]
async fn without_an_engine_docker_clouds_say_why_nothing_builds() {
    // Needs neither root nor an engine: an address where none answers.
    let dir = temp("docker_cloud_none");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start_with(&dir, &["--docker-host", "unix:///nonexistent/docker.sock"]);
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/clouds",
            Some(json!({"name": "dock", "driver": "docker"})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let (_, build) = create(
        &server,
        "nowhere",
        json!({"type": "github", "repo": format!("file://{}", agent_dir("http"))}),
    )
    .await;
    let (built, log) = finished(&server, &build).await;
    assert_eq!(built["status"], "failed", "{built}\n{log}");
    eprintln!("LOG {log}");
    let reason = built["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("no Docker engine answered at start")
            && reason.contains("unix:///nonexistent/docker.sock"),
        "{reason}"
    );
}
