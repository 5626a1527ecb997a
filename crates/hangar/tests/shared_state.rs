//! What servers on one PostgreSQL share instead of keeping in a data dir:
//! the secret key (from configuration; a server with another key refuses to
//! start and creates nothing), and uploads' archives and build artifacts
//! (in the database's blob store), so an archive one server took is built
//! by another and run by a third, each with a data dir of its own.
//!
//! The servers run `hangar serve` for real; they run one after the other
//! where each would start replicas, because two controllers on one database
//! would both start every replica until instances have owners. Needs
//! PostgreSQL (`HANGAR_TEST_POSTGRES_URL`), and root for the replicas:
//! `cargo test -p hangar --test shared_state`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// A fresh PostgreSQL database, or `None` where there is none (and not CI).
async fn postgres() -> Option<hangar_store::testing::TestDb> {
    if !hangar_store::testing::backends().contains(&hangar_store::Backend::Postgres) {
        eprintln!("SKIPPED: no PostgreSQL (HANGAR_TEST_POSTGRES_URL)");
        return None;
    }
    Some(hangar_store::testing::TestDb::new(hangar_store::Backend::Postgres).await)
}

/// A file holding a fresh random 32-byte key, as an operator makes one.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, rand::random::<[u8; 32]>()).expect("key file");
    path
}

/// `hangar serve` run until it exits on its own (a minute at most, then
/// killed): its exit status and what it said on stderr.
fn serve_until_exit(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    std::fs::create_dir_all(dir).expect("dir");
    let stderr = dir.join("serve.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(flags)
        .envs(env.iter().copied())
        .env("HANGAR_ADMIN_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn hangar serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hangar serve kept running: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        std::fs::read_to_string(&stderr).unwrap_or_default(),
    )
}

/// Opens an upload on `at`, PUTs `archive` to its URL on `to` (the same path
/// and signature, another server), returns the upload's id.
async fn upload_across(at: &Server, to: &Server, archive: Vec<u8>) -> String {
    let (status, created, _, text) = at.call(reqwest::Method::POST, "/v1/uploads", None).await;
    assert_eq!(status, 201, "{text}");
    let url = created["data"]["upload_url"].as_str().expect("url");
    let path = url
        .strip_prefix(at.url.as_str())
        .expect("a URL of the server");
    let put = reqwest::Client::new()
        .put(format!("{}{path}", to.url))
        .body(archive)
        .send()
        .await
        .expect("put");
    let status = put.status();
    let text = put.text().await.unwrap_or_default();
    assert_eq!(
        status, 200,
        "a URL signed by one server is good on the other: {text}"
    );
    created["data"]["id"].as_str().expect("id").to_owned()
}

/// A `.tar.gz` of the test agent `name`.
fn tar_gz(name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["czf", "-", "-C", &agent_dir(name), "."])
        .output()
        .expect("tar");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[tokio::test]
async fn servers_with_one_key_share_a_database_and_one_with_another_is_refused() {
    let Some(db) = postgres().await else { return };
    let dir = temp("shared-key");
    let _ = std::fs::remove_dir_all(&dir);
    let key = key_file(&dir, "hangar.key");
    let key = key.to_str().expect("utf-8");
    let flags = ["--database-url", db.url.as_str(), "--secret-key-file", key];
    let a = Server::start_with(&dir.join("a"), &flags);
    let b = Server::start_with(&dir.join("b"), &flags);

    // An upload URL signed by A is taken by B: one signing key.
    let upload = upload_across(&a, &b, tar_gz("http")).await;
    let stored = db
        .store
        .find_upload(&upload)
        .await
        .expect("read")
        .expect("upload");
    assert!(stored.completed_at.is_some());
    // Another key, from the environment: refused, naming the settings to
    // fix, with nothing made — no data dir, no node.
    let nodes_before = db.store.list_nodes().await.expect("nodes").len();
    let other_key = hex::encode(rand::random::<[u8; 32]>());
    let refused = dir.join("c");
    let (code, stderr) = serve_until_exit(
        &refused,
        &["--database-url", db.url.as_str()],
        &[("HANGAR_SECRET_KEY", other_key.as_str())],
    );
    assert_ne!(code, Some(0), "{stderr}");
    for said in [
        "the secret key (HANGAR_SECRET_KEY) is not the one the servers on this database use",
        "--secret-key-file",
        "HANGAR_SECRET_KEY_FILE",
    ] {
        assert!(stderr.contains(said), "{said:?} not said: {stderr}");
    }
    assert!(
        !refused.join("hangar-data").exists(),
        "a refused server made its data dir"
    );
    assert_eq!(
        db.store.list_nodes().await.expect("nodes").len(),
        nodes_before,
        "a refused server joined the nodes"
    );

    // No key configured at all: the data dir's own, made now, which is not
    // the database's either.
    let (code, stderr) =
        serve_until_exit(&dir.join("d"), &["--database-url", db.url.as_str()], &[]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("secret.key (made by this server at its first start)")
            && stderr.contains("is not the one the servers on this database use"),
        "{stderr}"
    );

    // The two with the same key still serve.
    assert_eq!(
        a.get("/v1/me").await["organization_id"],
        b.get("/v1/me").await["organization_id"]
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for a build to finish.
async fn finished(server: &Server, build: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let b = server.get(&format!("/v1/builds/{build}")).await["data"].clone();
        if b["status"] == "ready" || b["status"] == "failed" {
            return b;
        }
        assert!(Instant::now() < deadline, "build never finished: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops `server` and removes its data dir: what it kept there is gone.
fn gone(server: Server) {
    let dir = server.dir.clone();
    drop(server);
    std::fs::remove_dir_all(dir.join("hangar-data")).expect("remove the data dir");
}

#[tokio::test]
async fn an_archive_one_server_took_is_built_by_another_and_run_by_a_third() {
    if !root_or_skip("shared blobs") {
        return;
    }
    let Some(db) = postgres().await else { return };
    let dir = temp("shared-blobs");
    shared_blobs(&db, &dir, &[], &[], "the database").await;
}

/// The S3-compatible server of the bucket test, or `None` (not in CI).
#[allow(
    clippy::disallowed_methods,
    reason = "test support: where the test S3 server is, as CI sets it"
)]
fn s3_endpoint() -> Option<String> {
    let endpoint = std::env::var("HANGAR_TEST_S3_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty());
    if endpoint.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but HANGAR_TEST_S3_ENDPOINT is not set"
        );
        eprintln!("SKIPPED: no S3-compatible server (HANGAR_TEST_S3_ENDPOINT)");
    }
    endpoint
}

#[tokio::test]
async fn an_archive_and_an_artifact_go_through_a_bucket_as_well() {
    if !root_or_skip("shared blobs in a bucket") {
        return;
    }
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(db) = postgres().await else { return };
    let bucket = format!("hangar-test-{:016x}", rand::random::<u64>());
    // A test server makes buckets on an unsigned PUT.
    let made = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("make the bucket");
    assert!(made.status().is_success(), "{made:?}");
    let url = format!("s3://{bucket}/hangar");
    let dir = temp("shared-bucket");
    shared_blobs(
        &db,
        &dir,
        &["--blobs", url.as_str()],
        &[
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "hangar"),
            ("AWS_SECRET_ACCESS_KEY", "hangar"),
            ("AWS_REGION", "us-east-1"),
        ],
        &format!("the bucket {url}"),
    )
    .await;
}

/// A takes an archive and is gone with its data dir; B builds it and is
/// gone with its data dir; C runs it. `flags` and `env` choose the blob
/// store, which the servers' logs call `blobs`.
async fn shared_blobs(
    db: &hangar_store::testing::TestDb,
    dir: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
    blobs: &str,
) {
    let _ = std::fs::remove_dir_all(dir);
    let key = key_file(dir, "hangar.key");
    let mut all = vec![
        "--database-url",
        db.url.as_str(),
        "--secret-key-file",
        key.to_str().expect("utf-8"),
    ];
    all.extend_from_slice(flags);
    let flags = all.as_slice();

    // A takes the archive, and is gone with its data dir.
    let a = Server::start_full(&dir.join("a"), flags, env);
    let upload = upload_across(&a, &a, tar_gz("http")).await;
    gone(a);

    // B builds it (the archive is only in the database now) and runs it.
    let b = Server::start_full(&dir.join("b"), flags, env);
    let (status, created, _, text) = b
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "shared",
                "cloud_id": "local",
                "source": {"type": "upload", "upload_id": upload},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let build = b.get(&format!("/v1/agents/{agent}/builds")).await["data"][0]["id"]
        .as_str()
        .expect("build")
        .to_owned();
    let built = finished(&b, &build).await;
    assert_eq!(built["status"], "ready", "{built}");
    let logs = b.get(&format!("/v1/builds/{build}/logs")).await.to_string();
    assert!(
        logs.contains(&format!("artifact stored in {blobs}")),
        "{logs}"
    );
    let stored = db
        .store
        .get_build(&b.org().await, &build)
        .await
        .expect("read")
        .expect("build");
    let recorded = PathBuf::from(stored.artifact.expect("an artifact"));
    assert!(
        recorded.starts_with(&b.dir),
        "built on B: {}",
        recorded.display()
    );
    let name = recorded.file_name().expect("name").to_owned();
    gone(b);
    assert!(!recorded.exists(), "B's artifact is gone with its data dir");

    // C never saw the archive or the build: its replica runs from the
    // artifact it fetched.
    let c = Server::start_full(&dir.join("c"), flags, env);
    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let (status, body, _, text) = c
            .call(
                reqwest::Method::POST,
                &format!("/v1/agents/{agent}/invoke"),
                Some(json!({"input": {"from": "c"}})),
            )
            .await;
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "C never answered: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        answer["data"]["output"]["echo"],
        json!({"from": "c"}),
        "{answer}"
    );
    let replica = answer["data"]["output"]["replica"]
        .as_str()
        .expect("replica");
    assert!(
        c.replica_ids()
            .iter()
            .any(|id| id.contains(replica) || replica.contains(id.as_str())),
        "the replica {replica} is C's: {:?}",
        c.replica_ids()
    );
    let copy = c.dir.join("hangar-data/artifacts").join(&name);
    assert!(
        copy.join("main.py").is_file(),
        "C's copy: {}",
        copy.display()
    );
    let log = std::fs::read_to_string(c.dir.join("serve.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("artifact fetched from {blobs}")),
        "{log}"
    );
    drop(c);
    let _ = std::fs::remove_dir_all(dir);
}
