//! `hangar serve` as a user runs it: a real process, a real port, real signals.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn hangar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hangar-serve-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Server {
    child: Child,
    url: String,
    stdout: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `hangar serve` in `dir` on a free port and waits for its listening line.
fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = hangar();
    cmd.current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn hangar serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    let url = loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "hangar serve exited before listening: {lines:?}");
        lines.push(line.trim_end().to_owned());
        if let Some(rest) = line.strip_prefix("hangar listening on ") {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Server {
        child,
        url,
        stdout: lines,
    }
}

async fn me(url: &str, key: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .get(format!("{url}/v1/me"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request")
        .status()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..100 {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("hangar serve did not exit within 10 s of SIGTERM");
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    let dir = temp_dir("badconfig");
    let cases: [&[&str]; 5] = [
        &["serve", "--listen", "not-an-address"],
        &["serve", "--database-url", "mysql://x"],
        &["serve", "--base-domain", "bad domain"],
        &["serve", "--admin-key", "short"],
        &["serve", "--no-such-flag"],
    ];
    for args in cases {
        let out = hangar().current_dir(&dir).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            !dir.join("hangar-data").exists(),
            "{args:?}: nothing is created before the configuration is valid"
        );
    }
    std::fs::write(dir.join("hangar.toml"), "[server]\nlisten = 5\n").expect("write");
    let out = hangar()
        .current_dir(&dir)
        .arg("serve")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad hangar.toml is bad configuration"
    );
    let out = hangar()
        .current_dir(&dir)
        .args(["serve", "--config", "missing.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn first_start_bootstraps_and_sigterm_exits_zero() {
    let dir = temp_dir("boot");
    let mut server = start(&dir, &[], &[]);
    let key_file = dir.join("hangar-data/admin.key");
    let mode = std::fs::metadata(&key_file)
        .expect("admin.key")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the key file is readable only by its owner"
    );
    let key = std::fs::read_to_string(&key_file)
        .expect("read key")
        .trim()
        .to_owned();
    assert!(
        server.stdout.iter().any(|l| l.contains(&key)),
        "the key is printed once at first start"
    );
    assert_eq!(me(&server.url, &key).await, reqwest::StatusCode::OK);
    assert_eq!(
        me(&server.url, "hgr_wrong").await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    let created = reqwest::Client::new()
        .post(format!("{}/v1/agents", server.url))
        .bearer_auth(&key)
        .body(r#"{"name":"kept","cloud_id":"local","source":{"type":"github","repo":"a/b"}}"#)
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    sigterm(&server.child);
    assert_eq!(wait_exit(&mut server.child).code(), Some(0));
    drop(server);

    // A second start prints no new key; data and the key survive.
    let server = start(&dir, &[], &[]);
    assert!(
        !server.stdout.iter().any(|l| l.contains("hgr_")),
        "no new key on later starts: {:?}",
        server.stdout
    );
    assert_eq!(me(&server.url, &key).await, reqwest::StatusCode::OK);
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/agents", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["data"][0]["name"], "kept");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_key_from_the_environment() {
    let dir = temp_dir("adminkey");
    let key = "master-key-for-tests-0123456789";
    let server = start(&dir, &[], &[("HANGAR_ADMIN_KEY", key)]);
    assert!(
        !dir.join("hangar-data/admin.key").exists(),
        "a configured key is not written out"
    );
    assert_eq!(me(&server.url, key).await, reqwest::StatusCode::OK);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn serves_on_postgres_when_given_a_url() {
    // `backends()` panics under CI=true without PostgreSQL, so CI cannot skip this.
    if !hangar_store::testing::backends().contains(&hangar_store::Backend::Postgres) {
        return;
    }
    let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Postgres).await;
    let dir = temp_dir("pg");
    let key = "postgres-admin-key-0123456789";
    let server = start(
        &dir,
        &["--database-url", &db.url],
        &[("HANGAR_ADMIN_KEY", key)],
    );
    assert_eq!(me(&server.url, key).await, reqwest::StatusCode::OK);
    assert!(
        !dir.join("hangar-data/hangar.db").exists(),
        "no SQLite file when PostgreSQL is configured"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `hangar serve` on `listen` (taken by another listener) in `dir`,
/// expects it to fail naming the address, and returns its stdout.
fn serve_on_a_taken_port(dir: &Path, listen: &str, extra: &[&str]) -> String {
    let out = hangar()
        .current_dir(dir)
        .args(["serve", "--listen", listen])
        .args(extra)
        .env_remove("HANGAR_ADMIN_KEY")
        .output()
        .expect("run hangar serve");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve on a taken port: {stdout}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("hangar: ") && l.contains(listen)),
        "a line names the address: {stderr}"
    );
    assert!(
        !stdout.contains("hgr_") && !stdout.contains("Created organization"),
        "no key is printed for a server that never ran: {stdout}"
    );
    stdout
}

#[tokio::test]
async fn a_taken_port_fails_before_anything_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("addr").to_string();
    let dir = temp_dir("taken");
    serve_on_a_taken_port(&dir, &listen, &[]);
    assert!(
        !dir.join("hangar-data").exists(),
        "no data dir, no admin.key, no database"
    );

    // The same on a database that exists: no organization is created in it.
    if hangar_store::testing::backends().contains(&hangar_store::Backend::Postgres) {
        let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Postgres).await;
        serve_on_a_taken_port(&dir, &listen, &["--database-url", &db.url]);
        assert_eq!(
            db.store.list_organizations().await.expect("list").len(),
            0,
            "no organization"
        );
        assert!(!dir.join("hangar-data").exists(), "no data dir");
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}
