//! The web console for real: `hangar serve` as a process serving the
//! console's embedded files, and Debian's Chromium driven by `playwright-core`
//! (the script `crates/hangar-console/e2e/console.mjs`) doing what an
//! operator does — sign in, deploy by dropping an archive and watch its build
//! log, invoke sync and streaming, see the request in the plot, follow logs
//! live, cancel a job, redeliver a webhook delivery, revoke a key and be
//! signed out. Screenshots of every page go to the test's data directory
//! (printed). Needs root (agents run in sandboxes), Chromium, Node and
//! `npm ci` in `crates/hangar-console/e2e`; with `CI=true` a missing one is a
//! failure. `cargo test -p hangar --test console`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::json;

mod common;

use common::*;

#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn skip_unless(ok: bool, name: &str, why: &str) -> bool {
    if ok {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI=true"
    );
    eprintln!("SKIPPED {name}: {why}");
    true
}

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hangar-console/e2e")
}

/// Packs `tests/agents/<agent>` as `<dir>/<name>.tar.gz`, the way a user
/// would before dropping it on the page.
fn pack(agent: &str, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.tar.gz"));
    let file = std::fs::File::create(&path).expect("create archive");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", agent_dir(agent))
        .expect("pack agent");
    tar.into_inner().expect("tar").finish().expect("gzip");
    path
}

/// A webhook receiver on loopback: answers 204 to every POST and lists the
/// `webhook-id` of each at `GET /received`, for the script to see a
/// redelivery arrive.
async fn receiver() -> String {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| async move {
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    seen.lock().expect("lock").push(id.to_owned());
                }
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/received",
            axum::routing::get(move || async move {
                axum::Json(received.lock().expect("lock").clone())
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// What a browser and an API client get at `/` and under `/console`, through
/// the whole server: browsers are sent to the console, API clients keep the
/// 404 in the envelope, and the console's files come with their types, a
/// strong ETag and revalidation, small enough for a first load under 300 KB.
#[tokio::test]
async fn the_console_is_served_by_hangar_serve_and_browsers_are_sent_there() {
    let dir = temp("console-files");
    let server = Server::start(&dir);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let browser = client
        .get(format!("{}/", server.url))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .expect("GET /");
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], "/console/");

    for accept in [None, Some("application/json"), Some("text/html;q=0")] {
        let mut req = client.get(format!("{}/", server.url));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let res = req.send().await.expect("GET /");
        assert_eq!(res.status(), 404, "{accept:?}");
        let body: serde_json::Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "NOT_FOUND", "{accept:?}: {body}");
    }

    let page = client
        .get(format!("{}/console/", server.url))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let etag = page.headers()["etag"].to_str().expect("etag").to_owned();
    let html = page.text().await.expect("html");
    // Everything the page loads, as a first visit would: its stylesheet,
    // icon and modules, the pages' modules included.
    let mut total = html.len();
    let mut files = vec!["console.css".to_owned(), "favicon.svg".to_owned()];
    // main.js imports the pages when they are first shown: all of them.
    let mut queue: Vec<String> = [
        "main",
        "pages/agents",
        "pages/agent",
        "pages/logs",
        "pages/plots",
        "pages/invoke",
        "pages/jobs",
        "pages/webhooks",
        "pages/secrets",
        "pages/keys",
        "pages/orgs",
        "pages/signin",
    ]
    .iter()
    .map(|m| format!("js/{m}.js"))
    .collect();
    while let Some(module) = queue.pop() {
        if files.contains(&module) {
            continue;
        }
        let res = client
            .get(format!("{}/console/{module}", server.url))
            .send()
            .await
            .expect("module");
        assert_eq!(res.status(), 200, "{module}");
        assert_eq!(
            res.headers()["content-type"],
            "text/javascript; charset=utf-8",
            "{module}"
        );
        let text = res.text().await.expect("module text");
        let base = module.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        for piece in text.split(" from \"").skip(1) {
            let target = piece.split('"').next().unwrap_or_default();
            let mut parts: Vec<&str> = base.split('/').collect();
            for part in target.split('/') {
                match part {
                    "." => {}
                    ".." => {
                        parts.pop();
                    }
                    p => parts.push(p),
                }
            }
            queue.push(parts.join("/"));
        }
        files.push(module);
    }
    for file in &files {
        let res = client
            .get(format!("{}/console/{file}", server.url))
            .send()
            .await
            .expect("asset");
        assert_eq!(res.status(), 200, "{file}");
        total += res.bytes().await.expect("bytes").len();
    }
    println!(
        "the console: {} files, {total} bytes for a first load of every page",
        files.len() + 1
    );
    assert!(total < 300 * 1024, "{total} bytes");

    let again = client
        .get(format!("{}/console/", server.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(again.status(), 304);
    // Without the trailing slash too: the page's <base> makes its links
    // resolve under /console/ either way.
    let bare = client
        .get(format!("{}/console", server.url))
        .send()
        .await
        .expect("bare");
    assert_eq!(bare.status(), 200);
    assert!(bare
        .text()
        .await
        .expect("html")
        .contains("<base href=\"/console/\">"));
    let missing = client
        .get(format!("{}/console/js/nope.js", server.url))
        .send()
        .await
        .expect("missing");
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_does_everything_from_the_console_in_a_real_browser() {
    if !root_or_skip("console e2e") {
        return;
    }
    let chromium = Path::new("/usr/bin/chromium");
    if skip_unless(
        chromium.exists(),
        "console e2e",
        "no /usr/bin/chromium (Debian: chromium)",
    ) {
        return;
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if skip_unless(node_ok, "console e2e", "no node (Debian: nodejs)") {
        return;
    }
    let e2e = e2e_dir();
    if skip_unless(
        e2e.join("node_modules/playwright-core").exists(),
        "console e2e",
        "no playwright-core: run `npm ci` in crates/hangar-console/e2e",
    ) {
        return;
    }

    let dir = temp("console");
    let server = Server::start_with(&dir, &["--webhook-allow-private"]);
    // An agent whose jobs sleep as long as asked, so one is still running
    // when the page cancels it.
    let (slow, _) = server
        .deploy_running("console-slow", "jobs", json!({}))
        .await;
    // A stdin agent printing a line per line it reads: the log page is
    // flooded through it.
    let (echo, echo_instance) = server
        .deploy_running(
            "console-echo",
            "echo",
            json!({"config": {"enable_http": false, "stdin_enabled": true}}),
        )
        .await;
    let org = server.org().await;
    let archive = pack("stream", &dir, "console-stream");
    let receiver = receiver().await;
    // The plot shows the page's invocations from the metric history.
    let metrics = server
        .get(&format!("/v1/agents/{slow}/metrics?window=1h"))
        .await;
    assert!(metrics["data"]["series"].is_array(), "no series: {metrics}");
    let shots = dir.join("screenshots");

    let mut child = Command::new("node")
        .arg(e2e.join("console.mjs"))
        .current_dir(&e2e)
        .env("HANGAR_URL", &server.url)
        .env("HANGAR_KEY", KEY)
        .env("ARCHIVE", &archive)
        .env("SLOW_AGENT_ID", &slow)
        .env("FOLDER", agent_dir("http"))
        .env("ECHO_AGENT_ID", &echo)
        .env("ECHO_INSTANCE_ID", &echo_instance)
        .env("ORG_ID", &org)
        .env("RECEIVER_URL", &receiver)
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .inspect(|line| eprintln!("{line}"))
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().expect("stdout");
    // The script's steps, printed as they happen; read on a thread so the
    // server's runtime keeps serving the page meanwhile.
    let steps = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .inspect(|line| println!("{line}"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("read the script's output");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait for node");
    let errors = errors.join().unwrap_or_default();
    println!("screenshots: {}", shots.display());
    assert!(
        status.success(),
        "the console's e2e script failed ({status}):\n{}\n{}\nserver log: {}",
        steps.join("\n"),
        errors.join("\n"),
        dir.join("serve.log").display()
    );
    assert!(
        steps.iter().any(|l| l == "console e2e: every step passed"),
        "{steps:?}"
    );
}
