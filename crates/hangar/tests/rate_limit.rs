//! The per-API-key rate limit on a real `hangar serve`: set in `hangar.toml`
//! or with flags, a key past its burst answers 429 with `Retry-After`, and an
//! agent's instance URL keeps answering whatever the key's bucket holds.
//! The buckets refill one request an hour, so nothing here depends on how
//! fast the machine sends. `cargo test -p hangar --test rate_limit` (the
//! instance URL test needs root, like `run.rs`).

use std::time::Duration;

use serde_json::{json, Value};

mod common;

use common::*;

async fn me(server: &Server, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/v1/me", server.url))
        .bearer_auth(key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("request")
}

/// Spends `key`'s bucket: the number of requests answered before the 429,
/// and the 429.
async fn spend(server: &Server, key: &str, most: u32) -> (u32, reqwest::Response) {
    for answered in 0..=most {
        let res = me(server, key).await;
        if res.status() == 429 {
            return (answered, res);
        }
        assert_eq!(res.status(), 200);
    }
    panic!("{key} was never limited within {most} requests");
}

#[tokio::test]
async fn the_limit_in_hangar_toml_answers_429_with_retry_after() {
    let dir = temp("ratelimit-file");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("hangar.toml"),
        "[server]\nrate_limit = \"1/h\"\nrate_limit_burst = 3\n",
    )
    .expect("hangar.toml");
    // The harness turns the limit off with the environment; empty, the
    // file's setting counts.
    let server = Server::start_with_env(&dir, &[("HANGAR_RATE_LIMIT", "")]);

    let (answered, refused) = spend(&server, KEY, 10).await;
    assert_eq!(answered, 3, "the burst");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
    assert_eq!(body["error"]["retry_after_seconds"], json!(retry_after));
    assert_eq!(body["success"], false);

    // What needs no key is not limited.
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rate_that_is_not_one_exits_64() {
    let dir = temp("ratelimit-bad");
    std::fs::create_dir_all(&dir).expect("dir");
    for args in [["--rate-limit", "50/d"], ["--rate-limit-burst", "0"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
            .current_dir(&dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run hangar serve");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("rate limit"), "{stderr}");
    }
    assert!(
        !dir.join("hangar-data").exists(),
        "nothing written before the configuration is valid"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_instance_url_answers_while_the_key_is_limited() {
    if !root_or_skip("rate limit and instance URLs") {
        return;
    }
    let dir = temp("ratelimit-urls");
    // Enough for deploying and polling with the admin key; the key under
    // test is spent on purpose.
    let server = Server::start_with(&dir, &["--rate-limit", "1/h", "--rate-limit-burst", "2000"]);
    let instance = server.deploy("site", "web", json!({})).await;
    let inst = server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let host = inst["deployment"]["url"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .expect("instance URL")
        .trim_end_matches('/')
        .to_owned();
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/api_keys",
            Some(json!({"name": "spent"})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let key = created["data"]["key"].as_str().expect("key").to_owned();

    let (answered, _) = spend(&server, &key, 2000).await;
    assert_eq!(answered, 2000, "the burst");

    // The instance URL is the agent's, even with the spent key's header
    // (an agent may check bearer tokens of its own).
    let http = reqwest::Client::new();
    for n in 0..20 {
        let res = http
            .get(format!("{}/page/{n}", server.url))
            .header("host", &host)
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200, "{n}");
        let seen: Value = res.json().await.expect("json");
        assert_eq!(seen["path"], format!("/page/{n}"));
    }
    // Another key still has its own bucket.
    assert_eq!(me(&server, KEY).await.status(), 200);
    assert_eq!(me(&server, &key).await.status(), 429);

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}
