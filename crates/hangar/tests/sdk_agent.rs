//! The Python SDK's agent helper (`sdk/python/hangar/agent.py`) serves
//! Hangar's agent contract: an agent written with it (`examples/python-sdk`)
//! deploys and answers sync and streaming invokes, stdin and health checks
//! through a real `hangar serve`, with its JSON log lines read at their
//! levels; and the helper, run as a plain process, lets a request in flight
//! finish on `SIGTERM` and then exits 0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo")
}

/// Copies a directory tree, readable by everyone (the sandbox's user too).
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).expect("dir");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).expect("copy");
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
}

/// An agent directory: `main.py` (from `source`) and the helper beside it,
/// as the SDK's README says to deploy one.
fn agent_with_helper(dir: &Path, main: &Path) -> PathBuf {
    let agent = dir.join("agent");
    copy_tree(&repo().join("sdk/python/hangar"), &agent.join("hangar"));
    std::fs::copy(main, agent.join("main.py")).expect("main.py");
    agent
}

#[tokio::test]
async fn an_agent_written_with_the_helper_serves_the_contract_through_hangar() {
    if !root_or_skip("SDK agent") {
        return;
    }
    let dir = temp("sdk-agent");
    let server = Server::start(&dir);
    let org = server.org().await;
    let source = agent_with_helper(&dir, &repo().join("examples/python-sdk/main.py"));
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "sdk-text",
                "cloud_id": "local",
                "source": {"type": "github", "repo": format!("file://{}", source.display())},
                "config": {"stdin_enabled": true},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let instance = loop {
        let view = server.get(&format!("/v1/agents/{agent}")).await;
        if view["data"]["status"] == "running" {
            break view["data"]["instance_id"]
                .as_str()
                .expect("instance")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "never running: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A sync invoke: the helper's dict with output and usage, as it is.
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"text": "The quick brown fox jumps over the lazy dog"}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["data"]["output"]["words"], 9, "{body}");
    assert_eq!(
        body["data"]["output"]["summary"],
        "quick brown fox jumps over lazy dog"
    );
    assert_eq!(body["data"]["usage"]["words"], 9, "{body}");

    // A streaming invoke: a chunk per yielded word, the returned usage last.
    let events = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/invoke", server.url))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"text": "the quick brown fox"}}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("events");
    let events: Vec<Value> = events
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("JSON event"))
        .collect();
    let chunks: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "chunk")
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert_eq!(chunks, ["quick ", "brown ", "fox "], "{events:?}");
    let done = events.last().expect("events");
    assert_eq!(done["type"], "done", "{events:?}");
    assert_eq!(done["usage"]["words"], 4, "{events:?}");

    // Stdin: one line in, one out.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{instance}/stdin"),
            Some(json!({"input": "hello there world\n"})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("3 words, first: hello"), "{text}");

    // Its JSON log lines are read at their levels.
    let logs = server.wait_log(&org, &instance, "summarized").await;
    assert!(logs.iter().any(|l| l == "INFO summarized"), "{logs:#?}");

    // Stopped, it says so on its way out: SIGTERM was handled.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/stop"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let logs = server.wait_log(&org, &instance, "stopped").await;
    assert!(
        logs.iter().any(|l| l.starts_with("INFO stopping")),
        "{logs:#?}"
    );

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The helper as a plain process: no Hangar, no root.
#[tokio::test]
async fn on_sigterm_the_helper_finishes_the_request_in_flight_and_exits_0() {
    let dir = temp("sdk-sigterm");
    let main = dir.join("slow.py");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        &main,
        "import time\nfrom hangar import agent\n\n@agent.invoke\ndef slow(input):\n    \
         time.sleep(input['sleep'])\n    return {'slept': input['sleep']}\n\nagent.run()\n",
    )
    .expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new("python3")
        .arg(&main)
        .env("PYTHONPATH", repo().join("sdk/python"))
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert_eq!(first["message"], "listening", "{first}");
    assert_eq!(first["level"], "info", "{first}");

    let url = format!("http://127.0.0.1:{port}/invoke");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"sleep": 1.5}))
            .send()
            .await
    });
    // The request is in (the handler sleeps) before the signal comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let answer = in_flight.await.expect("task").expect("answered");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["output"]["slept"], 1.5, "{body}");
    let exit = child.wait().expect("exits");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    let said: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        said.iter().any(|l| l.contains(r#""message": "stopping""#)),
        "{said:#?}"
    );
    assert!(
        said.iter().any(|l| l.contains(r#""message": "stopped""#)),
        "{said:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
