//! The harness of the end-to-end tests: `hangar serve` as a process with a
//! known admin key, agents deployed from `tests/agents/`, and what the tests
//! look at from outside (replica processes, the driver's state dir).

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod docker;
pub mod kubernetes;
pub mod registry;

pub const KEY: &str = "hgr_runtests0000000000000000000000000000000000";

#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
pub fn root_or_skip(name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = "running agents needs root (sandboxes)";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI=true"
    );
    eprintln!("SKIPPED {name}: {why}");
    false
}

pub fn agent_dir(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agents")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    pub keep_dir: bool,
}

impl Server {
    pub fn start(dir: &Path) -> Self {
        Self::start_full(dir, &[], &[])
    }

    /// Like [`Server::start`], with more flags for `hangar serve`.
    pub fn start_with(dir: &Path, flags: &[&str]) -> Self {
        Self::start_full(dir, flags, &[])
    }

    /// Starts `hangar serve` with extra environment variables.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_full(dir, &[], env)
    }

    /// Starts `hangar serve` with extra flags and environment variables.
    pub fn start_full(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).expect("dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .current_dir(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            // Tests send as fast as they can (200 invokes at once); the
            // per-key limit has its own tests, which set it with a flag.
            .env("HANGAR_RATE_LIMIT", "off")
            .envs(env.iter().copied())
            .env("HANGAR_ADMIN_KEY", KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            // Kept with the data dir of a failed test, for the post-mortem.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("serve.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("spawn hangar serve");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let url = loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).expect("read") > 0,
                "serve exited"
            );
            if let Some(rest) = line.strip_prefix("hangar listening on ") {
                break rest.split_whitespace().next().expect("url").to_owned();
            }
        };
        std::thread::spawn(move || for _ in reader.lines() {});
        Self {
            child,
            url,
            dir: dir.to_path_buf(),
            keep_dir: false,
        }
    }

    pub fn kill9(mut self) {
        self.keep_dir = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap, String) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, json, headers, text)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body, _, text) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        body
    }

    pub async fn org(&self) -> String {
        let me = self.get("/v1/me").await;
        me["organization_id"]
            .as_str()
            .or_else(|| me["data"]["organization_id"].as_str())
            .expect("organization_id")
            .to_owned()
    }

    /// Deploys an agent from a directory; returns its default instance's id.
    pub async fn deploy(&self, name: &str, agent: &str, extra: Value) -> String {
        let mut body = json!({
            "name": name,
            "cloud_id": "local",
            "source": {"type": "github", "repo": format!("file://{}", agent_dir(agent))},
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                body.insert(k.clone(), v.clone());
            }
        }
        let (status, created, _, text) = self
            .call(reqwest::Method::POST, "/v1/agents", Some(body))
            .await;
        assert_eq!(status, 201, "{text}");
        let id = created["data"]["id"].as_str().expect("id").to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let agent = self.get(&format!("/v1/agents/{id}")).await;
            if let Some(instance) = agent["data"]["instance_id"].as_str() {
                return instance.to_owned();
            }
            assert!(Instant::now() < deadline, "never deployed: {agent}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deploys the `echo` stdin agent scaled to zero (`min_instances: 0`);
    /// returns its default instance's id, the agent's and its build's.
    pub async fn deploy_echo_at_zero(&self) -> (String, String, String) {
        let instance = self
            .deploy(
                "echo",
                "echo",
                json!({
                    "config": {"enable_http": false, "stdin_enabled": true},
                    "scaling": {"min_instances": 0, "max_instances": 1},
                }),
            )
            .await;
        let agent = self.instance(&instance).await["agent_id"]
            .as_str()
            .expect("agent_id")
            .to_owned();
        let build = self.get(&format!("/v1/agents/{agent}")).await["data"]["latest_build_id"]
            .as_str()
            .expect("latest_build_id")
            .to_owned();
        (instance, agent, build)
    }

    /// Deploys an agent and waits for its default instance to run; returns
    /// the agent's id and the instance's.
    pub async fn deploy_running(&self, name: &str, agent: &str, extra: Value) -> (String, String) {
        let instance = self.deploy(name, agent, extra).await;
        self.wait_instance(&instance, "running", |i| i["status"] == "running")
            .await;
        let agent = self.instance(&instance).await["agent_id"]
            .as_str()
            .expect("agent_id")
            .to_owned();
        (agent, instance)
    }

    pub async fn instance(&self, id: &str) -> Value {
        self.get(&format!("/instances/{id}")).await
    }

    pub async fn wait_instance(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let inst = self.instance(id).await;
            if done(&inst) {
                return inst;
            }
            assert!(Instant::now() < deadline, "never {what}: {inst}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exec(&self, org: &str, id: &str, argv: &[&str]) -> (u16, String, Option<String>) {
        let (status, _, headers, text) = self
            .call(
                reqwest::Method::POST,
                &format!("/instances/{org}/{id}/exec"),
                Some(json!(argv)),
            )
            .await;
        let code = headers
            .get("x-exit-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, text, code)
    }

    pub async fn logs(&self, org: &str, id: &str) -> Vec<String> {
        self.get(&format!("/instances/{org}/{id}/logs?lines=1000"))
            .await["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l["level"].as_str().unwrap_or(""),
                    l["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    pub async fn wait_log(&self, org: &str, id: &str, want: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs(org, id).await;
            if logs.iter().any(|l| l.contains(want)) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "{want:?} never logged: {logs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn delete(&self, id: &str, force: bool) {
        let (status, _, _, text) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/instances/{id}?force={force}"),
                None,
            )
            .await;
        assert_eq!(status, 204, "{text}");
    }

    /// The ids of this server's replicas now (from the driver's state dir).
    pub fn replica_ids(&self) -> Vec<String> {
        let shims = self.dir.join("hangar-data/runtime/shims");
        std::fs::read_dir(shims)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect()
    }

    /// Waits until nothing of this server's replicas is left: no shim or
    /// sandbox directory, no process of theirs.
    pub async fn wait_nothing_left(&self, instance: &str) {
        let runtime = self.dir.join("hangar-data/runtime");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let dirs: Vec<_> = ["shims", "sandboxes"]
                .iter()
                .flat_map(|sub| {
                    std::fs::read_dir(runtime.join(sub))
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|e| e.file_name())
                // The state dir's lock files stay.
                .filter(|n| !n.to_string_lossy().starts_with('.'))
                .collect();
            let procs = replica_pids(instance);
            if dirs.is_empty() && procs.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left behind: {dirs:?} {procs:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            // Replicas outlive the server: remove any a failed test left.
            kill_replicas_under(&self.dir);
        }
    }
}

/// Processes (not zombies) whose environment names this instance: its replicas' processes.
pub fn replica_pids(instance: &str) -> Vec<i32> {
    let needle = format!("HANGAR_INSTANCE_ID={instance}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

pub fn kill_replicas_under(dir: &Path) {
    let shims = dir.join("hangar-data/runtime/shims");
    // `shim cleanup` also kills the shims still running.
    for entry in std::fs::read_dir(&shims).into_iter().flatten().flatten() {
        let _ = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(["shim", "cleanup"])
            .arg(entry.path())
            .status();
    }
}

pub fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hangar-run-{tag}-{}", std::process::id()))
}

/// Runs the futures concurrently and collects their outputs in order.
pub async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// Gives the agent tree at `dir` a dependency it carries as a wheel:
/// `hangar-greeting` (`hangar_greeting.hello(name)`), in `wheels/`, and a
/// `requirements.txt` installing it from there with pip (no package index).
pub fn with_greeting_dependency(dir: &Path) {
    std::fs::create_dir_all(dir.join("wheels")).expect("dir");
    std::fs::write(
        dir.join("requirements.txt"),
        "--no-index\n--find-links /app/wheels\nhangar-greeting==1.0\n",
    )
    .expect("requirements.txt");
    // A wheel is a zip: written by the host's python, so nothing is fetched.
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    files = {
        "hangar_greeting/__init__.py": "def hello(name):\n    return 'Hello, ' + name + ', from a dependency!'\n",
        "hangar_greeting-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: hangar-greeting\nVersion: 1.0\n",
        "hangar_greeting-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hangar-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    for name, text in files.items():
        wheel.writestr(name, text)
    wheel.writestr("hangar_greeting-1.0.dist-info/RECORD", "".join(n + ",,\n" for n in files) + "hangar_greeting-1.0.dist-info/RECORD,,\n")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("wheels/hangar_greeting-1.0-py3-none-any.whl"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
}

// Several servers on one database.

/// Servers ("nodes") of one test on one fresh PostgreSQL database, sharing
/// a secret key (they must), each with its own data dir under `dir`.
pub struct Nodes {
    pub db: hangar_store::testing::TestDb,
    pub dir: PathBuf,
    key: String,
    flags: Vec<String>,
}

impl Nodes {
    /// Nodes started with `flags` besides the database's; `None` when the
    /// test is skipped (not root, or no PostgreSQL, outside CI).
    pub async fn new(tag: &str, flags: &[&str]) -> Option<Self> {
        if !root_or_skip(tag)
            || !hangar_store::testing::backends().contains(&hangar_store::Backend::Postgres)
        {
            return None;
        }
        let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Postgres).await;
        let mut all = vec!["--database-url".to_owned(), db.url.clone()];
        all.extend(flags.iter().map(|f| (*f).to_owned()));
        Some(Self {
            db,
            dir: temp(tag),
            key: shared_key(),
            flags: all,
        })
    }

    /// Starts the node whose data dir is `name` under the test's dir.
    pub fn start(&self, name: &str) -> Server {
        self.start_at(&self.dir.join(name))
    }

    /// Starts (again) the node whose data dir is `dir`.
    pub fn start_at(&self, dir: &Path) -> Server {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        Server::start_full(dir, &flags, &[("HANGAR_SECRET_KEY", self.key.as_str())])
    }
}

/// A secret key for servers that share one database (they must share it),
/// as `HANGAR_SECRET_KEY` takes it.
pub fn shared_key() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node (ID) holding `instance`'s lease and its generation, as stored.
pub async fn holder(db: &hangar_store::testing::TestDb, instance: &str) -> Option<(String, i64)> {
    db.store
        .instance_leases(None)
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.instance_id == instance)
        .and_then(|l| l.node_id.map(|node| (node, l.generation)))
}

/// The node ID of `server`, from `GET /v1/nodes` (it lists its address).
pub async fn node_id(server: &Server) -> String {
    let nodes = server.get("/v1/nodes").await;
    nodes["data"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["address"] == server.url.as_str())
        .and_then(|n| n["id"].as_str())
        .expect("the server lists itself")
        .to_owned()
}

/// Waits until `GET /v1/nodes` on `server` shows these replica counts for
/// these ready nodes.
pub async fn wait_replicas(server: &Server, want: &[(&str, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = server.get("/v1/nodes").await;
        let listed = nodes["data"].as_array().expect("nodes").clone();
        let matches = want.iter().all(|(id, count)| {
            listed
                .iter()
                .any(|n| n["id"] == *id && n["status"] == "ready" && n["replicas"] == *count)
        });
        if matches {
            return;
        }
        assert!(Instant::now() < deadline, "never {want:?}: {listed:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a websocket to the app behind `host` and `path` on `server`, and
/// checks it echoes two messages.
pub async fn websocket_echoes(server: &Server, host: &str, path: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let address = server.url.strip_prefix("http://").expect("addr");
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("handshake");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's example key and its accept value.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for message in ["hello", "again"] {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | message.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        stream.get_mut().write_all(&frame).await.expect("frame");
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.expect("answer header");
        assert_eq!(header[0], 0x81);
        let mut payload = vec![0u8; usize::from(header[1] & 0x7f)];
        stream.read_exact(&mut payload).await.expect("payload");
        assert_eq!(
            String::from_utf8_lossy(&payload),
            format!("echo: {message}")
        );
    }
}

/// What the load saw: answers, and the failures with their text.
#[derive(Default)]
pub struct Seen {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::Mutex<Vec<String>>,
}

/// Invokes `agent` through `url` back to back until `stop`.
pub async fn load(
    url: String,
    agent: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<Seen>,
) {
    let http = reqwest::Client::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let answer = http
            .post(format!("{url}/v1/agents/{agent}/invoke"))
            .bearer_auth(KEY)
            .json(&json!({"input": {"n": n}}))
            .timeout(Duration::from_secs(120))
            .send()
            .await;
        match answer {
            Ok(res) if res.status() == 200 => {
                seen.ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(res) => {
                let status = res.status();
                let text = res.text().await.unwrap_or_default();
                seen.failed
                    .lock()
                    .expect("lock")
                    .push(format!("{url}: {status} {text}"));
            }
            Err(err) => seen
                .failed
                .lock()
                .expect("lock")
                .push(format!("{url}: {err}")),
        }
    }
}

/// Every event of the organization of one type, by subject.
pub async fn events_by_subject(
    db: &hangar_store::testing::TestDb,
    org: &str,
    kind: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut by_subject = std::collections::BTreeMap::new();
    let mut before: Option<String> = None;
    loop {
        let page = db
            .store
            .list_events(org, before.as_deref(), Some(kind), 100)
            .await
            .expect("events");
        for event in &page {
            *by_subject.entry(event.subject.clone()).or_insert(0) += 1;
        }
        match page.last() {
            Some(last) if page.len() == 100 => before = Some(last.id.clone()),
            _ => return by_subject,
        }
    }
}
