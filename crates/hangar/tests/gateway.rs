//! The gateway for real: `hangar serve` as a process, agents in sandboxes,
//! invocations through the Agents API. Needs root like `run.rs`:
//! `cargo test -p hangar --test gateway`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// The `data:` events of an SSE body.
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).expect("event is JSON"))
        .collect()
}

async fn stream(server: &Server, agent: &str, input: Value) -> (u16, String, String) {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/invoke", server.url))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .json(&json!({ "input": input }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, content_type, res.text().await.expect("body"))
}

async fn agent_id(server: &Server, instance: &str) -> String {
    server.instance(instance).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned()
}

#[tokio::test]
async fn streaming_invokes_reframe_sse_text_and_json_and_stop_when_the_caller_leaves() {
    if !root_or_skip("streaming") {
        return;
    }
    let dir = temp("stream");
    let server = Server::start(&dir);
    let org = server.org().await;
    let instance = server.deploy("streamer", "stream", json!({})).await;
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let agent = agent_id(&server, &instance).await;
    let text = "In silicon dreams we stream";

    // SSE from the agent: start, a chunk per event, done with its usage.
    let (status, content_type, body) =
        stream(&server, &agent, json!({"mode": "sse", "text": text})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let evs = events(&body);
    assert_eq!(evs[0]["type"], "start", "{body}");
    assert!(evs[0]["request_id"]
        .as_str()
        .is_some_and(|r| r.starts_with("req_")));
    let chunks: Vec<&str> = evs[1..evs.len() - 1]
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "chunk", "{body}");
            e["content"].as_str().expect("content")
        })
        .collect();
    assert_eq!(chunks.len(), 5, "{body}");
    assert_eq!(chunks.concat().trim_end(), text);
    assert_eq!(
        evs[evs.len() - 1],
        json!({"type": "done", "usage": {"words": 5}})
    );

    // Chunked text: the words arrive, then done.
    let (status, _, body) = stream(&server, &agent, json!({"mode": "text", "text": text})).await;
    assert_eq!(status, 200, "{body}");
    let evs = events(&body);
    let joined: String = evs
        .iter()
        .filter(|e| e["type"] == "chunk")
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert_eq!(joined.trim_end(), text);
    assert_eq!(evs.last().expect("done")["type"], "done");

    // A whole JSON answer: one chunk with the output, done with the usage.
    let (_, _, body) = stream(&server, &agent, json!({"mode": "json", "text": "one two"})).await;
    let evs = events(&body);
    assert_eq!(
        evs[1],
        json!({"type": "chunk", "content": "one two "}),
        "{body}"
    );
    assert_eq!(evs[2], json!({"type": "done", "usage": {"words": 2}}));

    // An agent error before the stream starts: the envelope, not a stream.
    let (status, content_type, body) = stream(&server, &agent, json!({"mode": "fail"})).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(error["error"]["code"], "AGENT_ERROR");

    // A caller that goes away mid-stream: the agent sees its connection close.
    let mut res = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/invoke", server.url))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"mode": "endless"}}))
        .send()
        .await
        .expect("request");
    let mut seen = String::new();
    while !seen.contains("tick 3") {
        let piece = res.chunk().await.expect("chunk").expect("more");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    drop(res);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, out, _) = server
            .exec(&org, &instance, &["cat", "/tmp/disconnects"])
            .await;
        if status == 200 && out.contains("after") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw the caller leave: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Sync invokes of the same agent still work beside streams.
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"mode": "json", "text": "a b"}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["data"]["output"], "a b ");
    assert_eq!(body["data"]["usage"], json!({"words": 2}));

    // Request figures: six invocations, one of them failed.
    let metrics = server.get(&format!("/v1/agents/{agent}/metrics")).await;
    assert_eq!(metrics["data"]["requests_24h"], 6, "{metrics}");
    assert_eq!(metrics["data"]["requests"], 6, "{metrics}");
    assert_eq!(metrics["data"]["error_rate_percent"], 16.67, "{metrics}");
    assert!(metrics["data"]["avg_latency_ms"]
        .as_f64()
        .is_some_and(|l| l > 0.0));
    let view = server.get(&format!("/v1/agents/{agent}")).await;
    assert_eq!(view["data"]["metrics"]["requests_24h"], 6, "{view}");
    let inst = server.instance(&instance).await;
    assert_eq!(inst["metrics"]["requests_total"], 6, "{inst}");

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

async fn invoke(server: &Server, agent: &str, input: Value) -> (u16, Value, String) {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({ "input": input })),
        )
        .await;
    (status, body, text)
}

async fn endpoint_status(server: &Server, org: &str, instance: &str) -> String {
    server
        .get(&format!("/instances/status/{org}/{instance}"))
        .await["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

#[tokio::test]
async fn an_idle_agent_scales_to_zero_and_the_next_request_cold_starts_it() {
    if !root_or_skip("cold start") {
        return;
    }
    let dir = temp("cold");
    let server = Server::start_with(&dir, &["--scale-to-zero-after", "2"]);
    let org = server.org().await;
    let instance = server
        .deploy(
            "sleepy",
            "http",
            json!({"scaling": {"min_instances": 0, "max_instances": 2}}),
        )
        .await;
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let agent = agent_id(&server, &instance).await;
    let (status, _, text) = invoke(&server, &agent, json!({"warm": true})).await;
    assert_eq!(status, 200, "{text}");

    // Idle for 2 s: no replica is left, and the status endpoint says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    while endpoint_status(&server, &org, &instance).await != "READY_TO_COLD_START" {
        assert!(Instant::now() < deadline, "never scaled to zero");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.wait_nothing_left(&instance).await;
    server
        .wait_log(&org, &instance, "scaled from 1 to 0 replicas")
        .await;
    let agent_view = server.get(&format!("/v1/agents/{agent}")).await;
    assert_eq!(agent_view["data"]["status"], "running", "{agent_view}");

    // The next request is held while a replica starts, then served.
    let started = Instant::now();
    let (status, body, text) = invoke(&server, &agent, json!({"cold": true})).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["data"]["output"]["echo"], json!({"cold": true}));
    eprintln!("cold start answered in {:?}", started.elapsed());
    // The store hears of the new replica right after the gateway does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint_status(&server, &org, &instance).await != "RUNNING" {
        assert!(Instant::now() < deadline, "never RUNNING again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // At zero again, an exec starts a replica too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while endpoint_status(&server, &org, &instance).await != "READY_TO_COLD_START" {
        assert!(Instant::now() < deadline, "never scaled to zero again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, out, code) = server.exec(&org, &instance, &["echo", "awake"]).await;
    assert_eq!(
        (status, out.trim(), code.as_deref()),
        (200, "awake", Some("0"))
    );

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn a_full_replica_queues_requests_and_sheds_past_the_queue() {
    if !root_or_skip("load shedding") {
        return;
    }
    let dir = temp("shed");
    // One request at a time per replica; ten may wait.
    let server = Server::start_with(&dir, &["--replica-concurrency", "1"]);
    let instance = server
        .deploy(
            "narrow",
            "http",
            json!({"scaling": {"min_instances": 1, "max_instances": 1}}),
        )
        .await;
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let agent = agent_id(&server, &instance).await;

    let url = server.url.clone();
    let call = move |input: Value| {
        let url = url.clone();
        let agent = agent.clone();
        async move {
            let res = reqwest::Client::new()
                .post(format!("{url}/v1/agents/{agent}/invoke"))
                .bearer_auth(KEY)
                .json(&json!({ "input": input }))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("request");
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    // The slot is taken for 2 s; then twelve more arrive.
    let first = tokio::spawn(call(json!({"sleep": 2})));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest = futures_join_all((0..12).map(|i| call(json!({ "n": i })))).await;
    let (status, first_body) = first.await.expect("first");
    assert_eq!(status, 200, "{first_body}");
    let served = rest.iter().filter(|(s, _)| *s == 200).count();
    let shed: Vec<&Value> = rest
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(served, 10, "{rest:?}");
    assert_eq!(shed.len(), 2, "{rest:?}");
    for body in shed {
        assert_eq!(body["error"]["code"], "AGENT_OVERLOADED", "{body}");
    }

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn a_roll_drains_requests_in_flight_before_stopping_a_replica() {
    if !root_or_skip("drain") {
        return;
    }
    let dir = temp("drain");
    let server = Server::start(&dir);
    let instance = server.deploy("drainer", "http", json!({})).await;
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let agent = agent_id(&server, &instance).await;
    let old_replicas = server.replica_ids();

    // A 3 s request on the only replica; meanwhile a change rolls the
    // instance onto a new replica.
    let url = server.url.clone();
    let slow = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(format!("{url}/v1/agents/{agent}/invoke"))
                .bearer_auth(KEY)
                .json(&json!({"input": {"sleep": 3}}))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("request");
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _, text) = server
        .call(
            reqwest::Method::PUT,
            &format!("/instances/{instance}"),
            Some(json!({"env_vars": {"ROLLED": "1"}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = slow.await.expect("slow");
    assert_eq!(status, 200, "the request in flight was cut: {text}");
    // The roll finished: the old replica is gone, a new one serves.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = server.replica_ids();
        if !now.is_empty() && now.iter().all(|r| !old_replicas.contains(r)) {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, text) = invoke(&server, &agent, json!({"after": 1})).await;
    assert_eq!(status, 200, "{text}");

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

/// A 3 MiB body, and its SHA-256 in hex.
fn big_body() -> (Vec<u8>, String) {
    use sha2::Digest;
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let digest = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    (body, digest)
}

/// The host of a URL the API handed out (`http://host:port`).
fn host_of(url: &Value) -> String {
    url.as_str()
        .expect("url")
        .strip_prefix("http://")
        .expect("http URL")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test]
async fn instance_urls_proxy_any_request_and_websockets() {
    if !root_or_skip("instance URLs") {
        return;
    }
    let dir = temp("urls");
    let server = Server::start(&dir);
    let instance = server.deploy("site", "web", json!({})).await;
    let inst = server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let agent = agent_id(&server, &instance).await;
    let host = host_of(&inst["deployment"]["url"]);
    let http = reqwest::Client::new();

    // Any method, path, query and header; no API key; the agent's headers back.
    let res = http
        .get(format!("{}/some/path?x=1&y=two", server.url))
        .header("host", &host)
        .header("x-custom", "kept")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-app"], "web");
    let seen: Value = res.json().await.expect("json");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/some/path");
    assert_eq!(seen["query"], "x=1&y=two");
    assert_eq!(seen["headers"]["x-custom"], "kept");
    assert_eq!(seen["headers"]["x-forwarded-host"], host.as_str());
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");

    // An invocation reaches the same app at its invoke path, in origin form,
    // with the caller's `options.headers`; a Host among them wins.
    for (headers, want_host) in [
        (json!({"x-custom": "passed"}), None),
        (json!({"Host": "agent.example"}), Some("agent.example")),
    ] {
        let res = http
            .post(format!("{}/v1/agents/{agent}/invoke", server.url))
            .bearer_auth(KEY)
            .json(&json!({"input": {"q": 1}, "options": {"headers": headers}}))
            .send()
            .await
            .expect("invoke");
        assert_eq!(res.status(), 200);
        let answer: Value = res.json().await.expect("json");
        let seen = &answer["data"]["output"];
        assert_eq!(seen["method"], "POST", "{answer}");
        assert_eq!(seen["path"], "/invoke", "{answer}");
        let host = seen["headers"]["host"].as_str().expect("a host");
        match want_host {
            Some(want) => assert_eq!(host, want),
            None => {
                assert!(host.ends_with(":8080"), "the replica's address: {host}");
                assert_eq!(seen["headers"]["x-custom"], "passed");
            }
        }
    }

    // A 3 MiB body arrives whole.
    let (body, digest) = big_body();
    let res = http
        .put(format!("{}/upload", server.url))
        .header("host", &host)
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.expect("json");
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["body_bytes"], 3 << 20);
    assert_eq!(seen["body_sha256"], digest.as_str());

    // An unknown name under the base domain: 404; the API's own host: the API.
    let port = server.url.rsplit(':').next().expect("port");
    let res = http
        .get(format!("{}/", server.url))
        .header("host", format!("nobody-here.localhost:{port}"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    let error: Value = res.json().await.expect("json");
    assert_eq!(error["error"]["code"], "INSTANCE_NOT_FOUND");
    server.get("/v1/me").await;

    // A websocket through the instance URL.
    websocket_echoes(&server, &host, "/ws").await;

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn agent_urls_reach_an_agent_by_path_under_its_clouds_base_url() {
    if !root_or_skip("agent URLs") {
        return;
    }
    let dir = temp("agenturls");
    let server = Server::start(&dir);
    let port = server.url.rsplit(':').next().expect("port").to_owned();
    let label = json!({"environment": {"APP_LABEL": "shared"}});
    let (agent, instance) = server.deploy_running("site", "web", label).await;
    let view = server.get(&format!("/v1/agents/{agent}")).await;
    let base = format!("{}/agents/site", server.url);
    assert_eq!(view["data"]["endpoints"]["base_url"], base.as_str());
    let http = reqwest::Client::new();

    // Any method, path and query under it, the prefix stripped and named in
    // X-Forwarded-Prefix; a 3 MiB body arrives whole; no API key.
    let (body, digest) = big_body();
    let res = http
        .put(format!("{base}/upload/here?x=1"))
        .header("x-custom", "kept")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-app"], "web");
    let seen: Value = res.json().await.expect("json");
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/upload/here");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["headers"]["x-forwarded-prefix"], "/agents/site");
    assert_eq!(seen["headers"]["x-custom"], "kept");
    assert_eq!(seen["body_bytes"], 3 << 20);
    assert_eq!(seen["body_sha256"], digest.as_str());
    assert_eq!(seen["label"], "shared");
    let seen: Value = http
        .get(&base)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["path"], "/", "the bare agent URL is the app's root");

    // A streamed answer comes as it is written: the app never ends it, so a
    // proxy that waited for the end would pass nothing on.
    let mut res = http
        .get(format!("{base}/stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    let mut got = String::new();
    while got.matches('\n').count() < 3 {
        let chunk = res.chunk().await.expect("chunk").expect("more");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(got.starts_with("line 0\nline 1\nline 2\n"), "{got}");
    drop(res);

    websocket_echoes(&server, &format!("127.0.0.1:{port}"), "/agents/site/ws").await;

    // No agent by that name: 404; `/v1/agents` is still the API.
    let res = http
        .get(format!("{}/agents/nobody/x", server.url))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    let error: Value = res.json().await.expect("json");
    assert_eq!(error["error"]["code"], "AGENT_NOT_FOUND");

    // A base URL must be an origin outside the instance hosts' domain.
    for bad in [
        "http://edge.example.test/base",
        "http://x.localhost",
        "edge",
    ] {
        let (status, error, _, text) = server
            .call(
                reqwest::Method::POST,
                "/v1/clouds",
                Some(json!({"name": "bad", "driver": "sandbox", "base_url": bad})),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert_eq!(error["error"]["field"], "base_url", "{text}");
    }

    // A cloud with a base URL of its own: its agents answer at that host, and
    // may have a name an agent at the server's URL has.
    let edge_host = format!("edge.example.test:{port}");
    let (status, cloud, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/clouds",
            Some(json!({"name": "edge", "driver": "sandbox",
                "base_url": format!("http://Edge.Example.test:{port}/")})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(cloud["data"]["base_url"], format!("http://{edge_host}"));
    let label = json!({"cloud_id": "edge", "environment": {"APP_LABEL": "edge"}});
    let (edge_agent, edge_instance) = server.deploy_running("site", "web", label).await;
    let view = server.get(&format!("/v1/agents/{edge_agent}")).await;
    assert_eq!(
        view["data"]["endpoints"]["base_url"],
        format!("http://{edge_host}/agents/site")
    );
    for (host, want) in [(edge_host.as_str(), "edge"), ("127.0.0.1", "shared")] {
        let res = http
            .post(format!("{base}/x"))
            .header("host", host)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200);
        let seen: Value = res.json().await.expect("json");
        assert_eq!(seen["label"], want, "through {host}");
    }

    // Clouds at the server's URL share agent names: a second `site` there is
    // refused, saying so.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/clouds",
            Some(json!({"name": "second", "driver": "sandbox"})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let (status, error, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": "site", "cloud_id": "second",
                "source": {"type": "github", "repo": format!("file://{}", agent_dir("web"))}})),
        )
        .await;
    assert_eq!(status, 409, "{text}");
    assert_eq!(error["error"]["code"], "AGENT_NAME_TAKEN", "{text}");

    server.delete(&edge_instance, true).await;
    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn a_replica_killed_under_load_fails_only_what_was_in_flight_on_it() {
    if !root_or_skip("kill under load") {
        return;
    }
    let dir = temp("killload");
    let server = Server::start(&dir);
    let instance = server
        .deploy(
            "sturdy",
            "http",
            json!({"scaling": {"min_instances": 3, "max_instances": 3}}),
        )
        .await;
    server
        .wait_instance(&instance, "3 ready", |i| {
            i["status"] == "running" && i["deployment"]["replicas"] == 3
        })
        .await;
    let agent = agent_id(&server, &instance).await;

    // 30 callers, each sending 0.3 s requests back to back: with least
    // outstanding balancing, 10 are in flight on each replica.
    const CALLERS: usize = 30;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (url, agent, stop) = (server.url.clone(), agent.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let res = client
                        .post(format!("{url}/v1/agents/{agent}/invoke"))
                        .bearer_auth(KEY)
                        .json(&json!({"input": {"sleep": 0.3}}))
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await
                        .expect("request");
                    if res.status() == 200 {
                        ok += 1;
                    } else {
                        failed.push(res.text().await.unwrap_or_default());
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = *replica_pids(&instance).first().expect("a replica process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    // Load goes on while the replica is replaced.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for caller in callers {
        let (o, f) = caller.await.expect("caller");
        ok += o;
        failed.extend(f);
    }
    eprintln!("{ok} answered, {} failed", failed.len());
    assert!(ok > 200, "{ok} answered");
    // About a third are in flight on each replica; on a busy machine one
    // may hold a few more for a moment, never half.
    assert!(
        failed.len() < CALLERS / 2,
        "more failed than were in flight on the killed replica: {failed:#?}"
    );
    for body in &failed {
        let error: Value = serde_json::from_str(body).expect("envelope");
        assert_eq!(error["error"]["code"], "AGENT_UNREACHABLE", "{body}");
    }

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn load_scales_an_agent_up_within_its_bounds() {
    if !root_or_skip("autoscaling") {
        return;
    }
    let dir = temp("autoscale");
    // Two requests per replica at most: the autoscaler aims at 1.4.
    let server = Server::start_with(&dir, &["--replica-concurrency", "2"]);
    let org = server.org().await;
    let instance = server
        .deploy(
            "elastic",
            "http",
            json!({"scaling": {"min_instances": 1, "max_instances": 3}}),
        )
        .await;
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let agent = agent_id(&server, &instance).await;

    // Six callers with 0.5 s requests: about six in flight, far over one
    // replica's target; three replicas is the most the agent may have.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let (url, agent, stop) = (server.url.clone(), agent.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let res = client
                        .post(format!("{url}/v1/agents/{agent}/invoke"))
                        .bearer_auth(KEY)
                        .json(&json!({"input": {"sleep": 0.5}}))
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await
                        .expect("request");
                    statuses.push(res.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    let scaled = server
        .wait_instance(&instance, "scaled to 3", |i| {
            i["deployment"]["replicas"] == 3
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        let statuses = caller.await.expect("caller");
        // Queued while replicas started, never shed: the queue holds 20.
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert_eq!(scaled["status"], "running");
    let logs = server.wait_log(&org, &instance, "to 3 replicas").await;
    assert!(
        logs.iter().any(|l| l.contains("scaled from 1 to")),
        "{logs:#?}"
    );
    let view = server.get(&format!("/v1/agents/{agent}")).await;
    assert_eq!(view["data"]["scaling"]["current_instances"], 3, "{view}");

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}
