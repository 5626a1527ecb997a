//! One failure, one answer: for each way an invocation fails, the four ways
//! of invoking — synchronously, with an `Idempotency-Key` (and its repeat,
//! answered from the record), as a stream, and as an async job — answer the
//! same status and code, from a real agent in a sandbox behind
//! `hangar serve`. Needs root like `run.rs`: `cargo test -p hangar --test errors`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// An invocation of `agent` with `input`, as the caller sees it: status and
/// body (for a stream that started, 200 and its `error` event's object).
async fn invoke(
    server: &Server,
    agent: &str,
    input: &Value,
    timeout: u64,
    key: Option<&str>,
    stream: bool,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/invoke", server.url))
        .bearer_auth(KEY)
        .json(&json!({"input": input, "options": {"timeout": timeout}}))
        .timeout(Duration::from_secs(120));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if stream {
        request = request.header("accept", "text/event-stream");
    }
    let res = request.send().await.expect("request");
    let status = res.status().as_u16();
    let streamed = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let text = res.text().await.expect("body");
    if streamed {
        let error = text
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(|data| serde_json::from_str::<Value>(data).expect("event is JSON"))
            .find(|event| event["type"] == "error")
            .unwrap_or_else(|| panic!("a stream without an error event: {text}"));
        return (status, json!({ "error": error["error"] }));
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The error an async job of the same invocation records: the failed job's,
/// or, for a failure that is retried, the first attempt's (shown on the
/// pending job), so the test does not wait out the retries.
async fn job_error(server: &Server, agent: &str, input: &Value, timeout: u64) -> Value {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": input, "options": {"timeout": timeout}, "async": true})),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let job = body["data"]["job_id"].as_str().expect("job_id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = server.get(&format!("/v1/jobs/{job}")).await;
        if !job["data"]["error"].is_null() {
            return job["data"]["error"].clone();
        }
        assert!(Instant::now() < deadline, "the job never failed: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invokes every way and checks each answers `status` and `code`. A stream
/// answers before its start like a sync invoke; one that `started` carries
/// the code in its `error` event. Returns the sync answer's `error`.
async fn answers_alike(
    server: &Server,
    agent: &str,
    input: Value,
    timeout: u64,
    (status, code): (u16, &str),
    started: bool,
) -> Value {
    let (got, sync) = invoke(server, agent, &input, timeout, None, false).await;
    assert_eq!(
        (got, sync["error"]["code"].as_str()),
        (status, Some(code)),
        "sync: {sync}"
    );

    let key = format!("key-{code}");
    for repeat in ["first", "repeat"] {
        let (got, keyed) = invoke(server, agent, &input, timeout, Some(&key), false).await;
        assert_eq!(
            (got, keyed["error"]["code"].as_str()),
            (status, Some(code)),
            "keyed ({repeat}): {keyed}"
        );
        assert_eq!(
            keyed["error"]["message"], sync["error"]["message"],
            "keyed ({repeat})"
        );
    }

    let (got, streamed) = invoke(server, agent, &input, timeout, None, true).await;
    let want = if started { 200 } else { status };
    assert_eq!(
        (got, streamed["error"]["code"].as_str()),
        (want, Some(code)),
        "stream: {streamed}"
    );
    assert_eq!(
        streamed["error"]["message"], sync["error"]["message"],
        "stream"
    );

    let job = job_error(server, agent, &input, timeout).await;
    assert_eq!(job["code"], code, "job: {job}");
    assert_eq!(job["message"], sync["error"]["message"], "job");
    sync["error"].clone()
}

async fn failing_agent(tag: &str, flags: &[&str]) -> (Server, String, String) {
    let server = Server::start_with(&temp(tag), flags);
    let (agent, instance) = server
        .deploy_running(
            tag,
            "failing",
            json!({"scaling": {"min_instances": 1, "max_instances": 1}}),
        )
        .await;
    (server, agent, instance)
}

#[tokio::test]
async fn a_non_2xx_answer_is_agent_error_every_way() {
    if !root_or_skip("AGENT_ERROR") {
        return;
    }
    let (server, agent, instance) = failing_agent("err-status", &[]).await;
    let error = answers_alike(
        &server,
        &agent,
        json!({"fail": "status"}),
        30,
        (502, "AGENT_ERROR"),
        false,
    )
    .await;
    assert_eq!(error["details"]["agent_status"], 500, "{error}");
    assert_eq!(error["details"]["agent_body"], "boom", "{error}");
    server.delete(&instance, true).await;
}

#[tokio::test]
async fn an_unreadable_answer_is_agent_bad_response_every_way() {
    if !root_or_skip("AGENT_BAD_RESPONSE") {
        return;
    }
    let (server, agent, instance) = failing_agent("err-garbled", &[]).await;
    // A stream has started by the time the answer turns out unreadable.
    answers_alike(
        &server,
        &agent,
        json!({"fail": "garbled"}),
        30,
        (502, "AGENT_BAD_RESPONSE"),
        true,
    )
    .await;
    server.delete(&instance, true).await;
}

#[tokio::test]
async fn a_slow_agent_is_invoke_timeout_every_way() {
    if !root_or_skip("INVOKE_TIMEOUT") {
        return;
    }
    let (server, agent, instance) = failing_agent("err-slow", &[]).await;
    answers_alike(
        &server,
        &agent,
        json!({"sleep": 5}),
        1,
        (504, "INVOKE_TIMEOUT"),
        false,
    )
    .await;
    server.delete(&instance, true).await;
}

#[tokio::test]
async fn a_hangup_is_agent_unreachable_every_way_and_no_connection_text_leaks() {
    if !root_or_skip("AGENT_UNREACHABLE") {
        return;
    }
    let (server, agent, instance) = failing_agent("err-hangup", &[]).await;
    let error = answers_alike(
        &server,
        &agent,
        json!({"fail": "hangup"}),
        30,
        (502, "AGENT_UNREACHABLE"),
        false,
    )
    .await;
    // A fixed sentence, not the connection library's words.
    assert_eq!(
        error["message"],
        "the replica could not be reached or broke the connection"
    );
    server.delete(&instance, true).await;
}

#[tokio::test]
async fn a_full_queue_is_agent_overloaded_every_way() {
    if !root_or_skip("AGENT_OVERLOADED") {
        return;
    }
    // One request at a time per replica; ten may wait.
    let (server, agent, instance) =
        failing_agent("err-full", &["--replica-concurrency", "1"]).await;
    // Long requests: one holds the slot, ten fill the queue.
    let hold = |server: &Server| {
        let url = server.url.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(format!("{url}/v1/agents/{agent}/invoke"))
                .bearer_auth(KEY)
                .json(&json!({"input": {"sleep": 60}, "options": {"timeout": 120}}))
                .timeout(Duration::from_secs(180))
                .send()
                .await;
        })
    };
    let mut holders: Vec<_> = (0..11).map(|_| hold(&server)).collect();
    // The queue is full once a probe is shed at once. Until then a probe
    // waits in the queue (perhaps taking a holder's place, which is then
    // shed) and gives up after its 1 s limit: one more holder makes up for it.
    // A probe that is answered got there before any holder took the slot.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = invoke(&server, &agent, &json!({}), 1, None, false).await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "AGENT_OVERLOADED", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the queue never filled");
        if status == 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 504, "{body}");
        holders.push(hold(&server));
    }
    answers_alike(
        &server,
        &agent,
        json!({"n": 1}),
        30,
        (503, "AGENT_OVERLOADED"),
        false,
    )
    .await;
    for holder in holders {
        holder.abort();
    }
    server.delete(&instance, true).await;
}
