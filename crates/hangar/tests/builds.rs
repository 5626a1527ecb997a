//! Builds for real: `hangar serve` as a process takes an archive through its
//! signed upload URL or clones a `file://` git repository made here, installs
//! the agent's real dependency (`langchain-core`, from the package index) into
//! a virtualenv inside a sandbox, and runs it; a second deploy of the same
//! source reuses the artifact; a malicious archive fails its build. Needs root
//! and the package index: `cargo test -p hangar --test builds`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// A `.tar.gz` of the test agent `name`.
fn tar_gz(name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["czf", "-", "-C", &agent_dir(name), "."])
        .output()
        .expect("tar");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// Opens an upload, PUTs `archive` to its URL (no API key: the URL is
/// signed), returns the URL.
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
    assert_eq!(
        put.status(),
        200,
        "{}",
        put.text().await.unwrap_or_default()
    );
    url
}

/// Creates an agent from `source`; returns its id and its first build's id.
async fn create(server: &Server, name: &str, source: Value) -> (String, String) {
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": name, "cloud_id": "local", "source": source})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let build = latest_build(server, &agent).await;
    (agent, build)
}

async fn latest_build(server: &Server, agent: &str) -> String {
    let builds = server.get(&format!("/v1/agents/{agent}/builds")).await;
    builds["data"][0]["id"].as_str().expect("build").to_owned()
}

/// Waits for a build to finish (installing a real dependency takes a while).
async fn finished(server: &Server, build: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let b = server.get(&format!("/v1/builds/{build}")).await["data"].clone();
        if b["status"] == "ready" || b["status"] == "failed" {
            return b;
        }
        assert!(Instant::now() < deadline, "build never finished: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn log_lines(server: &Server, build: &str) -> Vec<Value> {
    server.get(&format!("/v1/builds/{build}/logs")).await["data"]["logs"]
        .as_array()
        .expect("logs")
        .clone()
}

async fn log_text(server: &Server, build: &str) -> String {
    log_lines(server, build)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for the agent's instance to run `build`, then invokes it.
async fn invoke_when_running(server: &Server, agent: &str, build: &str, input: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = server.get(&format!("/v1/agents/{agent}")).await["data"].clone();
        if let Some(instance) = a["instance_id"].as_str() {
            let i = server.instance(instance).await;
            if i["build_id"] == build && i["status"] == "running" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never running {build}: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({ "input": input })),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    body["data"]["output"].clone()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_python_agent_with_a_real_dependency_deploys_from_an_upload_and_a_pinned_git_commit() {
    if !root_or_skip("builds_real_dependency") {
        return;
    }
    let dir = temp("builds-dep");
    let server = Server::start(&dir);

    // (a) An uploaded archive: the build installs langchain-core in a sandbox.
    let url = upload(&server, tar_gz("langchain")).await;
    let (agent, build) = create(
        &server,
        "lc-upload",
        json!({"type": "upload", "archive_url": url}),
    )
    .await;
    let built = finished(&server, &build).await;
    let log = log_text(&server, &build).await;
    assert_eq!(built["status"], "ready", "{built}\n{log}");
    assert!(log.contains("unpacked upload"), "{log}");
    assert!(log.contains("build step (requirements.txt)"), "{log}");
    assert!(log.contains("Successfully installed"), "{log}");
    assert!(
        log.contains("langchain-core") || log.contains("langchain_core"),
        "{log}"
    );
    let lines = log_lines(&server, &build).await;
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()),
        "{lines:?}"
    );
    let artifact = built["artifact"].as_str().expect("artifact").to_owned();
    assert!(Path::new(&artifact)
        .join(".venv/bin/python")
        .symlink_metadata()
        .is_ok());
    let output = invoke_when_running(&server, &agent, &build, json!({"name": "Hangar"})).await;
    assert_eq!(output["text"], "Hello, Hangar!", "{output}");
    assert_eq!(output["version"], "v1", "{output}");

    // (b) A file:// git repository at a pinned commit, the agent in a
    // subdirectory: the same files as the archive, so the same artifact.
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("agents/lc")).expect("repo");
    for file in ["main.py", "requirements.txt"] {
        std::fs::copy(
            Path::new(&agent_dir("langchain")).join(file),
            repo.join("agents/lc").join(file),
        )
        .expect("copy");
    }
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    let main = repo.join("agents/lc/main.py");
    let v2 = std::fs::read_to_string(&main)
        .expect("read")
        .replace("VERSION = \"v1\"", "VERSION = \"v2\"");
    std::fs::write(&main, v2).expect("write");
    git(&repo, &["commit", "--quiet", "-am", "v2"]);
    let repo_url = format!("file://{}", repo.display());
    let (git_agent, git_build) = create(
        &server,
        "lc-git",
        json!({"type": "github", "repo": repo_url, "path": "agents/lc", "commit": first}),
    )
    .await;
    let built = finished(&server, &git_build).await;
    let log = log_text(&server, &git_build).await;
    assert_eq!(built["status"], "ready", "{built}\n{log}");
    assert!(log.contains(&format!("at commit {first}")), "{log}");
    assert!(log.contains("reusing artifact"), "{log}");
    assert_eq!(
        built["artifact"],
        artifact.as_str(),
        "one artifact for one source"
    );
    let output = invoke_when_running(&server, &git_agent, &git_build, json!({"name": "git"})).await;
    assert_eq!(output["text"], "Hello, git!", "{output}");
    assert_eq!(
        output["version"], "v1",
        "the pinned commit, not the head: {output}"
    );

    // Redeploy from the branch head: a new build, and the instance rolls onto it.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{git_agent}/redeploy"),
            Some(json!({"source": {"type": "github", "repo": repo_url, "path": "agents/lc", "branch": "main"}})),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let head_build = latest_build(&server, &git_agent).await;
    assert_ne!(head_build, git_build);
    let built = finished(&server, &head_build).await;
    assert_eq!(built["status"], "ready", "{built}");
    let second = git(&repo, &["rev-parse", "HEAD"]);
    let log = log_text(&server, &head_build).await;
    assert!(log.contains(&format!("at commit {second}")), "{log}");
    let mut output = invoke_when_running(&server, &git_agent, &head_build, json!({})).await;
    // The roll: replicas of the old build leave the rotation once a new one is ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while output["version"] != "v2" {
        assert!(Instant::now() < deadline, "never rolled: {output}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        output = invoke_when_running(&server, &git_agent, &head_build, json!({})).await;
    }
    assert_eq!(output["text"], "Hello, world!", "{output}");

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_malicious_archive_fails_its_build_and_writes_nothing_outside() {
    if !root_or_skip("builds_malicious_archive") {
        return;
    }
    let dir = temp("builds-evil");
    let server = Server::start(&dir);
    // Python's tarfile writes the names tar's own tools would refuse.
    let evil = dir.join("evil.tar.gz");
    let made = Command::new("python3")
        .arg("-c")
        .arg(
            "import io, sys, tarfile\n\
             with tarfile.open(sys.argv[1], 'w:gz') as t:\n\
             \x20   for name, data in [('main.py', b'print(1)\\n'), ('../../escape.txt', b'pwned\\n')]:\n\
             \x20       info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))\n",
        )
        .arg(&evil)
        .status()
        .expect("python3");
    assert!(made.success());
    let url = upload(&server, std::fs::read(&evil).expect("read")).await;
    let (agent, build) = create(
        &server,
        "evil",
        json!({"type": "upload", "archive_url": url}),
    )
    .await;
    let built = finished(&server, &build).await;
    assert_eq!(built["status"], "failed", "{built}");
    let reason = built["reason"].as_str().expect("reason");
    assert!(reason.contains("../../escape.txt"), "{reason}");
    assert!(log_text(&server, &build).await.contains("../../escape.txt"));
    // Not in the data dir, not next to it.
    for place in [
        dir.join("escape.txt"),
        dir.join("hangar-data/escape.txt"),
        dir.join("hangar-data/builds/escape.txt"),
    ] {
        assert!(!place.exists(), "{}", place.display());
    }
    let a = server.get(&format!("/v1/agents/{agent}")).await["data"].clone();
    assert_eq!(a["status"], "failed", "{a}");

    // Something that is not an archive is refused at the upload.
    let (_, created, _, _) = server
        .call(reqwest::Method::POST, "/v1/uploads", None)
        .await;
    let url = created["data"]["upload_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let put = reqwest::Client::new()
        .put(&url)
        .body("just text")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 400);
    // A tampered signature is refused.
    let tampered = url.replace("signature=", "signature=00");
    let put = reqwest::Client::new()
        .put(&tampered)
        .body(tar_gz("http"))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 403);

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_agent_installs_its_dependencies_and_answers() {
    if !root_or_skip("node build") {
        return;
    }
    let dir = temp("builds-node");
    let server = Server::start(&dir);
    let url = upload(&server, tar_gz("node")).await;
    let (agent, build) = create(
        &server,
        "node-agent",
        json!({"type": "upload", "archive_url": url}),
    )
    .await;
    let b = finished(&server, &build).await;
    let log = log_text(&server, &build).await;
    assert_eq!(b["status"], "ready", "{b}\n{log}");
    assert!(log.contains("npm install"), "the step is in the log: {log}");
    // The dependency came from the registry; the dev dependency did not.
    let output = invoke_when_running(&server, &agent, &build, json!({"value": "42"})).await;
    assert_eq!(output, json!({"is_number": true, "dev": false}));
    let output = invoke_when_running(&server, &agent, &build, json!({"value": "x"})).await;
    assert_eq!(output["is_number"], false);
    let instance = server.get(&format!("/v1/agents/{agent}")).await["data"]["instance_id"]
        .as_str()
        .expect("instance")
        .to_owned();
    server.delete(&instance, true).await;
}
