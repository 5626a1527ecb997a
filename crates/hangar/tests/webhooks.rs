//! Events and signed webhooks for real: `hangar serve` as a process, agents
//! that build, deploy, scale and stop (and one whose build fails), a
//! receiver that verifies every delivery with the `standardwebhooks` Python
//! package (installed into a virtualenv by the test; needs `python3-venv`
//! and the package index), down while events happen and while the server is
//! killed and restarted; and receivers on loopback refused unless the
//! operator allows them. Needs root like `run.rs`:
//! `cargo test -p hangar --test webhooks`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// A virtualenv with `standardwebhooks`, under `dir`.
fn receiver_python(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(
        made.success(),
        "python3 -m venv failed (Debian: python3-venv)"
    );
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "standardwebhooks"])
        .status()
        .expect("pip");
    assert!(installed.success(), "pip install standardwebhooks failed");
    venv.join("bin/python")
}

struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn received(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver line"))
        .collect()
}

/// The receivers of these tests listen on loopback: the operator allows it.
const FLAGS: [&str; 5] = [
    "--webhook-retry-schedule",
    "300ms,300ms,500ms,500ms,1s,1s,1s,2s,2s,2s,2s,3s,3s,3s,3s,3s,3s,3s",
    "--scale-to-zero-after",
    "1",
    "--webhook-allow-private",
];

#[tokio::test]
async fn webhooks_are_signed_in_order_and_outlive_a_down_receiver_and_a_restart() {
    if !root_or_skip("webhooks") {
        return;
    }
    let dir = temp("hooks");
    std::fs::create_dir_all(&dir).expect("dir");
    let python = receiver_python(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();

    let server = Server::start_with(&dir, &FLAGS);
    let (status, hook, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": []})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let hook_id = hook["data"]["id"].as_str().expect("id").to_owned();
    let secret = hook["data"]["secret"].as_str().expect("secret").to_owned();

    // Events while nobody listens: built, deployed, started, scaled to
    // zero, scaled up by a request, stopped; and another agent's build fails.
    let instance = server
        .deploy(
            "notifier",
            "http",
            json!({"scaling": {"min_instances": 0, "max_instances": 1}}),
        )
        .await;
    let agent = server.instance(&instance).await["agent_id"]
        .as_str()
        .expect("agent")
        .to_owned();
    let org = server.org().await;
    server
        .wait_log(&org, &instance, "scaled from 1 to 0 replicas")
        .await;
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"wake": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    server.wait_log(&org, &instance, "scaled from 0 to 1").await;
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/stop"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    server
        .wait_instance(&instance, "stopped", |i| i["status"] == "stopped")
        .await;
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("broken agent dir");
    std::fs::write(broken.join("main.py"), "print('never runs')\n").expect("main.py");
    std::fs::write(
        broken.join("hangar.toml"),
        "[build]\ncommand = \"echo no compiler here >&2; exit 3\"\n",
    )
    .expect("hangar.toml");
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "broken",
                "cloud_id": "local",
                "source": {"type": "github", "repo": format!("file://{}", broken.display())},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let broken_agent = created["data"]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let broken_build = loop {
        let builds = server
            .get(&format!("/v1/agents/{broken_agent}/builds"))
            .await;
        let build = builds["data"][0].clone();
        if build["status"] == "failed" {
            break build["id"].as_str().expect("build").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the build never failed: {builds}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The server dies hard and comes back; then the receiver comes up.
    server.kill9();
    let server = Server::start_with(&dir, &FLAGS);
    let out = dir.join("received.jsonl");
    let _receiver = Receiver(
        Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks/receiver.py"))
            .arg(port.to_string())
            .arg(&secret)
            .arg(&out)
            .stdout(Stdio::null())
            .spawn()
            .expect("receiver"),
    );

    let events = server.get("/v1/events?limit=100").await["data"]
        .as_array()
        .expect("events")
        .clone();
    let kinds: BTreeSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "build.succeeded",
        "agent.deployed",
        "instance.started",
        "agent.scaled",
        "instance.stopped",
        "build.failed",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {events:#?}");
    }
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    let built = of("build.succeeded");
    assert_eq!(built.len(), 1, "{built:#?}");
    assert_eq!(built[0]["data"]["agent_id"], agent.as_str());
    let build = built[0]["subject"].as_str().expect("build").to_owned();
    assert_eq!(built[0]["data"]["build_id"], build.as_str());
    let deployed = of("agent.deployed");
    assert_eq!(
        deployed.len(),
        1,
        "once, though it scaled and restarted: {deployed:#?}"
    );
    assert_eq!(deployed[0]["subject"], agent.as_str());
    assert_eq!(deployed[0]["data"]["instance_id"], instance.as_str());
    assert_eq!(deployed[0]["data"]["build_id"], build.as_str());
    let failed = of("build.failed");
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["subject"], broken_build.as_str());
    assert_eq!(failed[0]["data"]["agent_id"], broken_agent.as_str());
    let reason = failed[0]["data"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("build step"), "{reason}");
    let scaled: Vec<(i64, i64)> = events
        .iter()
        .rev()
        .filter(|e| e["type"] == "agent.scaled")
        .map(|e| {
            (
                e["data"]["from"].as_i64().expect("from"),
                e["data"]["to"].as_i64().expect("to"),
            )
        })
        .collect();
    assert_eq!(&scaled[..2], &[(1, 0), (0, 1)], "{events:#?}");
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();

    // Every event arrives, verified, each subject's in the order they happened.
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        let got = received(&out);
        let have: BTreeSet<String> = got
            .iter()
            .filter_map(|g| g["event_id"].as_str().map(str::to_owned))
            .collect();
        if ids.is_subset(&have) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            ids.difference(&have).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(got.iter().all(|g| g["verified"] == true), "{got:#?}");
    let delivered: BTreeSet<&str> = got.iter().filter_map(|g| g["type"].as_str()).collect();
    for kind in ["build.succeeded", "agent.deployed", "build.failed"] {
        assert!(delivered.contains(kind), "no {kind} delivered: {got:#?}");
    }
    let mut first_seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in &got {
        let (subject, event) = (
            g["subject"].as_str().expect("subject").to_owned(),
            g["event_id"].as_str().expect("event").to_owned(),
        );
        let seen = first_seen.entry(subject).or_default();
        if !seen.contains(&event) {
            seen.push(event);
        }
    }
    for (subject, seen) in &first_seen {
        let mut in_order = seen.clone();
        in_order.sort(); // event IDs sort by creation
        assert_eq!(seen, &in_order, "{subject}'s events out of order");
    }

    // The outbox says so too: delivered, the early ones after retries.
    let deliveries = server
        .get(&format!("/v1/webhooks/{hook_id}/deliveries?limit=100"))
        .await["data"]
        .as_array()
        .expect("deliveries")
        .clone();
    assert!(
        deliveries.iter().all(|d| d["status"] == "delivered"),
        "{deliveries:#?}"
    );
    assert!(deliveries.iter().any(|d| d["attempts"].as_u64() > Some(1)));
    let (status, again, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!(
                "/v1/webhooks/{hook_id}/deliveries/{}/redeliver",
                deliveries[0]["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(again["data"]["status"], "pending");

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the
/// `openssl` command in `dir`: (CA certificate, server certificate, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=hangar test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "hook.key",
        "-out",
        "hook.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "hook.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "hook.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("hook.pem"),
        dir.join("hook.key"),
    )
}

/// An HTTPS receiver (Python's standard library) that appends each request's
/// headers and body to `out` as a JSON line and answers 204.
fn https_receiver(port: u16, cert: &Path, key: &Path, out: &Path) -> Receiver {
    let script = r#"
import http.server, json, ssl, sys
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with open(out, "a") as f:
            f.write(json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}) + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
    Receiver(
        Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .args([cert, key, out])
            .stdout(Stdio::null())
            .spawn()
            .expect("https receiver"),
    )
}

#[tokio::test]
async fn webhooks_reach_https_receivers_that_the_server_trusts() {
    if !root_or_skip("https webhooks") {
        return;
    }
    let dir = temp("hooks-https");
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, key) = certificates(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = dir.join("received.jsonl");
    let _receiver = https_receiver(port, &cert, &key, &out);

    // The receiver's CA is trusted through SSL_CERT_FILE, as an operator
    // with a private CA would configure it.
    let ca = ca.to_string_lossy().into_owned();
    let server = Server::start_full(&dir, &FLAGS, &[("SSL_CERT_FILE", ca.as_str())]);
    let (status, hook, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": format!("https://127.0.0.1:{port}/hook"), "events": ["build.succeeded"]})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let secret = hook["data"]["secret"].as_str().expect("secret").to_owned();
    let instance = server.deploy("tls-notifier", "http", json!({})).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let delivery = loop {
        if let Some(d) = received(&out).into_iter().next() {
            break d;
        }
        assert!(Instant::now() < deadline, "nothing arrived over HTTPS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body: Value = serde_json::from_str(delivery["body"].as_str().expect("body")).expect("json");
    assert_eq!(body["type"], "build.succeeded", "{body}");
    // Signed as over plain HTTP: HMAC-SHA256 of "id.timestamp.body".
    let headers = &delivery["headers"];
    let signed = format!(
        "{}.{}.{}",
        headers["webhook-id"].as_str().expect("id"),
        headers["webhook-timestamp"].as_str().expect("timestamp"),
        delivery["body"].as_str().expect("body")
    );
    use base64::Engine as _;
    use hmac::Mac as _;
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key_bytes).expect("key");
    mac.update(signed.as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(
        headers["webhook-signature"].as_str(),
        Some(expected.as_str())
    );
    server.delete(&instance, true).await;
}

/// A receiver on loopback that answers 204 and counts what it gets.
async fn counting_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(AtomicUsize::new(0));
    let counted = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(axum::http::StatusCode::NO_CONTENT)
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

#[tokio::test]
async fn receivers_on_private_addresses_are_refused_unless_the_operator_allows_them() {
    use std::sync::atomic::Ordering;
    if !root_or_skip("private webhook receivers") {
        return;
    }
    let dir = temp("hooks-private");
    let (port, got) = counting_receiver().await;
    let schedule = ["--webhook-retry-schedule", "300ms,300ms"];
    let server = Server::start_with(&dir, &schedule);

    // A literal private address is refused when the endpoint is made...
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://127.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "https://10.1.2.3/hook".to_owned(),
    ] {
        let (status, body, _, text) = server
            .call(
                reqwest::Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "events": ["build.failed"]})),
            )
            .await;
        assert_eq!(status, 400, "{url}: {text}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{text}");
        assert_eq!(body["error"]["field"], "url", "{text}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("--webhook-allow-private"), "{message}");
    }
    // ...and changed to.
    let (status, hook, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/x", "events": ["build.failed"]})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let hook_id = hook["data"]["id"].as_str().expect("id").to_owned();
    let (status, _, _, text) = server
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{hook_id}"),
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook")})),
        )
        .await;
    assert_eq!(status, 400, "{text}");

    // A name is checked where it matters, at delivery, on the addresses
    // it resolves to: `localhost` is refused there, and not retried.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{hook_id}"),
            Some(json!({"url": format!("http://localhost:{port}/hook")})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("broken agent dir");
    std::fs::write(broken.join("main.py"), "print('never runs')\n").expect("main.py");
    std::fs::write(
        broken.join("hangar.toml"),
        "[build]\ncommand = \"exit 3\"\n",
    )
    .expect("hangar.toml");
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "broken",
                "cloud_id": "local",
                "source": {"type": "github", "repo": format!("file://{}", broken.display())},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let deliveries = format!("/v1/webhooks/{hook_id}/deliveries");
    let deadline = Instant::now() + Duration::from_secs(120);
    let refused = loop {
        let list = server.get(&deliveries).await;
        let first = list["data"][0].clone();
        if first["status"] == "failed" {
            break first;
        }
        assert!(Instant::now() < deadline, "never refused: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused["attempts"], 1, "given up at once: {refused}");
    let error = refused["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("refused: localhost resolves to ")
            && error.contains("a loopback address")
            && error.ends_with("start the server with --webhook-allow-private to allow it"),
        "{error}"
    );
    assert_eq!(got.load(Ordering::SeqCst), 0, "the receiver got a delivery");

    // The operator allows private receivers: a redelivery arrives.
    server.kill9();
    let allowing: Vec<&str> = schedule
        .iter()
        .copied()
        .chain(["--webhook-allow-private"])
        .collect();
    let server = Server::start_with(&dir, &allowing);
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!(
                "{deliveries}/{}/redeliver",
                refused["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = server.get(&deliveries).await;
        if list["data"][0]["status"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "never delivered: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got.load(Ordering::SeqCst), 1);
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook")})),
        )
        .await;
    assert_eq!(status, 201, "allowed now: {text}");
}
