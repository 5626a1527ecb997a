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

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}
