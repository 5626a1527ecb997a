//! The TypeScript client (`sdk/typescript`) against a real `hangar serve`:
//! its `npm test` — the drift checks against `sdk/openapi.json` and the
//! tests that deploy an agent from an uploaded archive and invoke it (sync,
//! streamed, as jobs waited for and cancelled), follow its log with resume
//! and through a stream token URL, page through lists, and manage secrets
//! and API keys — run under Node with `HANGAR_URL` and `HANGAR_KEY` naming
//! this server.
//!
//! And the same client in a real browser (headless Chromium from Debian's
//! `chromium` package): a page on another origin imports the built client as
//! ES modules, invokes (sync and streamed), reads a typed error, and follows
//! the agent's log with an `EventSource` on the client's stream token URL.
//!
//! It needs Node 20 with npm, and the client's dev dependencies installed
//! (`npm ci` in `sdk/typescript`): without them the tests are skipped, saying
//! so, and with `CI=true` they fail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{root_or_skip, temp, Server, KEY};

/// `sdk/typescript` of this repository.
fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/typescript")
        .canonicalize()
        .expect("sdk/typescript")
}

/// Whether Node, npm and the client's dev dependencies are there; if not,
/// a skip (a failure with `CI=true`) saying how to get them.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn node_or_skip(package: &Path) -> bool {
    let node = Command::new("node").arg("--version").output();
    let npm = Command::new("npm").arg("--version").output();
    let why = match (&node, &npm) {
        (Ok(node), Ok(npm)) if node.status.success() && npm.status.success() => {
            // `npm ls` fails when a dependency is missing or not the version
            // package.json pins: node_modules is absent or stale.
            let installed = Command::new("npm")
                .args(["ls", "--depth=0"])
                .current_dir(package)
                .output()
                .is_ok_and(|out| out.status.success());
            if installed {
                return true;
            }
            "its dev dependencies are missing or stale: run `npm ci` in sdk/typescript"
        }
        _ => "Node and npm are not installed (`apt-get install nodejs npm`)",
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the TypeScript client's tests cannot run: {why}, and CI=true"
    );
    eprintln!("SKIPPED the TypeScript client's tests: {why}");
    false
}

#[tokio::test]
async fn the_typescript_client_passes_its_tests_against_a_real_server() {
    let package = package();
    if !root_or_skip("TypeScript client") || !node_or_skip(&package) {
        return;
    }
    let dir = temp("sdk-typescript");
    let server = Server::start(&dir);
    let url = server.url.clone();
    // `npm test` builds the client, then runs every test file; it blocks,
    // so it runs off the runtime that serves nothing here (the server is
    // its own process).
    let output = tokio::task::spawn_blocking(move || {
        Command::new("npm")
            .arg("test")
            .current_dir(&package)
            .env("HANGAR_URL", url)
            .env("HANGAR_KEY", KEY)
            .output()
    })
    .await
    .expect("npm test ran")
    .expect("spawn npm");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "npm test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Every test ran: none was skipped for want of the server.
    assert!(
        !stdout.contains("# SKIP") && stdout.contains("# fail 0"),
        "{stdout}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Headless Chromium, in its own process group (killed whole on drop).
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

/// Chromium, or a skip (a failure with `CI=true`).
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn chromium_or_skip() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        let why = "no Chromium (Debian: chromium)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and CI=true"
        );
        eprintln!("SKIPPED the TypeScript client in a browser: {why}");
    }
    found
}

/// The page: the client from `/sdk/index.js`, each step's result posted to
/// its own origin's `/seen`. (A page holding an API key is for this test
/// only: pages should get stream token URLs from a server that holds it.)
fn page(hangar: &str, agent: &str) -> String {
    format!(
        r#"<!doctype html><html><body><script type="module">
const report = (what) => fetch("/seen", {{ method: "POST", body: JSON.stringify(what) }});
try {{
  const {{ Hangar, HangarError }} = await import("/sdk/index.js");
  const hangar = new Hangar({{ baseUrl: {hangar:?}, apiKey: {KEY:?} }});
  const sync = await hangar.agents.invoke({agent:?}, {{ n: 4 }});
  report({{ step: "invoke", output: sync.output }});
  const chunks = [];
  for await (const e of hangar.agents.stream({agent:?}, {{ text: "from the browser", stream: true }})) {{
    if (e.type === "chunk") chunks.push(e.content);
  }}
  report({{ step: "stream", chunks }});
  const missing = await hangar.agents.get("agent_nope").catch((e) => e);
  report({{ step: "error", typed: missing instanceof HangarError, code: missing.code, status: missing.status }});
  const url = await hangar.agents.logStreamUrl({agent:?}, {{ ttlSeconds: 120 }});
  const source = new EventSource(url);
  source.onopen = () => hangar.agents.invoke({agent:?}, {{ log: ["line-for-the-browser"] }});
  source.onmessage = (e) => report({{ step: "log", id: e.lastEventId, data: e.data }});
}} catch (err) {{
  report({{ step: "failed", error: String(err) }});
}}
</script></body></html>"#
    )
}

#[tokio::test]
async fn the_typescript_client_works_in_a_browser() {
    let package = package();
    if !root_or_skip("TypeScript client in a browser") || !node_or_skip(&package) {
        return;
    }
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    // Built into this test's own directory: the other test's `npm test`
    // rebuilds `dist/` meanwhile.
    let dir = temp("sdk-typescript-browser");
    let dist = dir.join("dist");
    let built = Command::new("npm")
        .args(["run", "build", "--", "--outDir"])
        .arg(&dist)
        .current_dir(&package)
        .output()
        .expect("npm run build");
    assert!(built.status.success(), "npm run build: {built:?}");

    // The page's own server, on another origin than Hangar's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let page_origin = format!("http://{}", listener.local_addr().expect("addr"));
    let server = Server::start_with(&dir, &["--cors-origins", &page_origin]);
    let agent_source = package.join("test/agent");
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "ts-browser",
                "cloud_id": "local",
                "source": {"type": "github", "repo": format!("file://{}", agent_source.display())},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let instance = loop {
        let view = server.get(&format!("/v1/agents/{agent}")).await;
        if view["data"]["status"] == "running" {
            break view["data"]["instance_id"]
                .as_str()
                .expect("instance")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "never running: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let html = page(&server.url, &agent);
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(html) }),
        )
        .route(
            "/sdk/{*file}",
            axum::routing::get(
                move |axum::extract::Path(file): axum::extract::Path<String>| {
                    let dist = dist.clone();
                    async move {
                        let path = dist.join(&file);
                        match (file.contains(".."), std::fs::read(&path)) {
                            (false, Ok(bytes)) => Ok((
                                [(axum::http::header::CONTENT_TYPE, "text/javascript")],
                                bytes,
                            )),
                            _ => Err(axum::http::StatusCode::NOT_FOUND),
                        }
                    }
                },
            ),
        )
        .route(
            "/seen",
            axum::routing::post(move |body: String| async move {
                let _ = seen_tx.send(serde_json::from_str(&body).unwrap_or(Value::Null));
            }),
        );
    let page_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let profile = dir.join("chromium-profile");
    let _browser = Browser(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("{page_origin}/"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium"),
    );

    // The page's steps, in order, until its EventSource got the line the
    // invoke it made once the stream was open printed.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let live = loop {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, seen.recv()).await else {
            break None;
        };
        got.push(message.clone());
        assert_ne!(message["step"], "failed", "{got:#?}");
        if message["step"] == "log"
            && message["data"]
                .as_str()
                .is_some_and(|d| d.contains("line-for-the-browser"))
        {
            break Some(message);
        }
    };
    let live = live.unwrap_or_else(|| panic!("the page never received its log line: {got:#?}"));
    assert!(
        live["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{live}"
    );
    let step = |name: &str| {
        got.iter()
            .find(|m| m["step"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} step: {got:#?}"))
    };
    assert_eq!(step("invoke")["output"], json!({"n": 4, "doubled": 8}));
    assert_eq!(step("stream")["chunks"], json!(["from", "the", "browser"]));
    let error = step("error");
    assert_eq!(
        (&error["typed"], &error["code"], &error["status"]),
        (&json!(true), &json!("AGENT_NOT_FOUND"), &json!(404)),
        "{error}"
    );
    page_server.abort();
    server.delete(&instance, true).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
