//! Tenant isolation on the network, tried from inside replicas as a tenant
//! would: a replica reaches no replica of another organization, no other
//! agent of its own unless it names it in `config.network.reach`, and no
//! service of the host; the gateway still serves every agent. Needs root
//! like `run.rs`: `cargo test -p hangar --test isolation`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// `method path` as the holder of `key`.
async fn call_as(
    server: &Server,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(key)
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Deploys agent `name` (the `http` test agent) on `cloud` as the holder of
/// `key` and waits for it to run; returns its id and its instance's.
async fn deploy_as(
    server: &Server,
    key: &str,
    cloud: &str,
    name: &str,
    config: Value,
) -> (String, String) {
    // Uploaded: `file://` sources are the operator organization's only.
    let archive = std::process::Command::new("tar")
        .args(["czf", "-", "-C", &agent_dir("http"), "."])
        .output()
        .expect("tar");
    assert!(archive.status.success(), "{archive:?}");
    let (status, created) = call_as(server, key, reqwest::Method::POST, "/v1/uploads", None).await;
    assert_eq!(status, 201, "{created}");
    let url = created["data"]["upload_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let put = reqwest::Client::new()
        .put(&url)
        .body(archive.stdout)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let body = json!({
        "name": name,
        "cloud_id": cloud,
        "source": {"type": "upload", "archive_url": url},
        "config": config,
    });
    let (status, created) =
        call_as(server, key, reqwest::Method::POST, "/v1/agents", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, view) = call_as(
            server,
            key,
            reqwest::Method::GET,
            &format!("/v1/agents/{agent}"),
            None,
        )
        .await;
        if view["data"]["status"] == "running" {
            let instance = view["data"]["instance_id"]
                .as_str()
                .expect("instance")
                .to_owned();
            return (agent, instance);
        }
        assert!(Instant::now() < deadline, "never running: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An agent deployed by the holder of `key`: the key, its organization and
/// the agent's default instance.
struct Deployed {
    key: String,
    org: String,
    agent: String,
    instance: String,
}

async fn deploy(server: &Server, key: &str, cloud: &str, name: &str, config: Value) -> Deployed {
    let (_, me) = call_as(server, key, reqwest::Method::GET, "/v1/me", None).await;
    let org = me["organization_id"]
        .as_str()
        .expect("organization_id")
        .to_owned();
    let (agent, instance) = deploy_as(server, key, cloud, name, config).await;
    Deployed {
        key: key.to_owned(),
        org,
        agent,
        instance,
    }
}

/// Runs `code` with Python in a replica of `deployed`; its stdout.
async fn python_in(server: &Server, deployed: &Deployed, code: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/instances/{}/{}/exec",
            server.url, deployed.org, deployed.instance
        ))
        .bearer_auth(&deployed.key)
        .timeout(Duration::from_secs(60))
        .json(&json!(["python3", "-c", code]))
        .send()
        .await
        .expect("exec");
    let status = response.status().as_u16();
    let code = response
        .headers()
        .get("x-exit-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("output");
    assert_eq!((status, code.as_deref()), (200, Some("0")), "{text}");
    text.trim().to_owned()
}

/// The replica's own address on the bridge.
const OWN_ADDRESS: &str = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
    s.connect(('10.231.0.1', 9)); print(s.getsockname()[0])";

/// "ok", "refused", "timeout" or an errno for a TCP connection to `host:port`.
fn connect(host: &str, port: u16) -> String {
    format!(
        "import socket\ns = socket.socket(); s.settimeout(5)\n\
         try:\n    s.connect(('{host}', {port})); print('ok')\n\
         except ConnectionRefusedError: print('refused')\n\
         except socket.timeout: print('timeout')\n\
         except OSError as e: print('errno', e.errno)\n"
    )
}

#[tokio::test]
async fn replicas_reach_neither_other_tenants_nor_other_agents_nor_the_host() {
    if !root_or_skip("network isolation") {
        return;
    }
    let server = Server::start(&temp("isolation"));
    let (status, created) = call_as(
        &server,
        KEY,
        reqwest::Method::POST,
        "/v1/organizations",
        Some(json!({"name": "Other", "admin_email": "ops@other.test"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let other_key = created["data"]["api_key"]["key"]
        .as_str()
        .expect("key")
        .to_owned();

    let alpha = deploy(&server, KEY, "local", "alpha", json!({})).await;
    let beta = deploy(&server, KEY, "local", "beta", json!({})).await;
    let gamma = deploy(
        &server,
        KEY,
        "local",
        "gamma",
        json!({"network": {"reach": ["beta"]}}),
    )
    .await;
    // Another organization's agent, of the same name as one of ours: on a
    // cloud of its own base URL, as agent URLs need (clouds at the server's
    // URL share agent names).
    let (status, created) = call_as(
        &server,
        &other_key,
        reqwest::Method::POST,
        "/v1/clouds",
        Some(json!({"name": "own", "driver": "sandbox", "base_url": "http://other.example.test"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let theirs = deploy(&server, &other_key, "own", "beta", json!({})).await;
    assert_ne!(theirs.org, alpha.org);

    let beta_ip = python_in(&server, &beta, OWN_ADDRESS).await;
    let gamma_ip = python_in(&server, &gamma, OWN_ADDRESS).await;
    let theirs_ip = python_in(&server, &theirs, OWN_ADDRESS).await;
    assert_ne!(beta_ip, theirs_ip);

    // Across organizations: nothing, even by the name an agent may reach.
    assert_eq!(
        python_in(&server, &alpha, &connect(&theirs_ip, 8080)).await,
        "refused"
    );
    assert_eq!(
        python_in(&server, &gamma, &connect(&theirs_ip, 8080)).await,
        "refused"
    );
    assert_eq!(
        python_in(&server, &theirs, &connect(&beta_ip, 8080)).await,
        "refused"
    );
    // Within one: only what an agent names, and only that way.
    assert_eq!(
        python_in(&server, &alpha, &connect(&beta_ip, 8080)).await,
        "refused"
    );
    assert_eq!(
        python_in(&server, &gamma, &connect(&beta_ip, 8080)).await,
        "ok"
    );
    assert_eq!(
        python_in(&server, &beta, &connect(&gamma_ip, 8080)).await,
        "refused"
    );

    // A service of the host listening on every address: not at the bridge's
    // gateway, not at any other address of the host.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert_eq!(
        python_in(&server, &alpha, &connect("10.231.0.1", port)).await,
        "refused"
    );
    let api_port: u16 = server
        .url
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");
    assert_eq!(
        python_in(&server, &alpha, &connect("10.231.0.1", api_port)).await,
        "refused"
    );

    // The gateway still reaches every agent.
    for deployed in [&alpha, &beta, &gamma, &theirs] {
        let (status, body) = call_as(
            &server,
            &deployed.key,
            reqwest::Method::POST,
            &format!("/v1/agents/{}/invoke", deployed.agent),
            Some(json!({"input": {"hello": deployed.agent}})),
        )
        .await;
        assert_eq!(status, 200, "{}: {body}", deployed.agent);
    }

    // The rules are the kernel's: a server killed with -9 leaves them in
    // force, and the next one repairs a flushed table within a resync.
    let dir = server.dir.clone();
    server.kill9();
    let server = Server::start(&dir);
    assert_eq!(
        python_in(&server, &alpha, &connect(&theirs_ip, 8080)).await,
        "refused"
    );
    let sandboxes = std::fs::canonicalize(dir.join("hangar-data/runtime/sandboxes")).expect("dir");
    let table = hangar_runtime::sandbox::firewall_table_name(&sandboxes);
    let flushed = std::process::Command::new("nft")
        .args(["flush", "table", "inet", &table])
        .status()
        .expect("nft");
    assert!(flushed.success());
    assert_eq!(
        python_in(&server, &alpha, &connect(&theirs_ip, 8080)).await,
        "ok",
        "flushed"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while python_in(&server, &alpha, &connect(&theirs_ip, 8080)).await != "refused" {
        assert!(
            Instant::now() < deadline,
            "the flushed table was never repaired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_network_block_is_validated_and_shown_back() {
    if !root_or_skip("network block") {
        return;
    }
    let server = Server::start(&temp("isolation-block"));
    for (network, field) in [
        (json!({"egress": "some"}), "config"),
        (json!({"egress": {"allow": ["10.1.2.3/8"]}}), "config"),
        (json!({"egress": {"allow": ["*.com"]}}), "config"),
        (
            json!({"inject": [{"host": "*.openai.com", "headers": {"A": "b"}}]}),
            "config.network.inject",
        ),
        (json!({"reach": ["not a name"]}), "config.network.reach"),
        (json!({"unknown": true}), "config"),
    ] {
        let body = json!({
            "name": "blocked",
            "cloud_id": "local",
            "source": {"type": "github", "repo": format!("file://{}", agent_dir("http"))},
            "config": {"network": network},
        });
        let (status, answer) = call_as(
            &server,
            KEY,
            reqwest::Method::POST,
            "/v1/agents",
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{network}: {answer}");
        let message = answer["error"].to_string();
        assert!(message.contains(field), "{network}: {answer}");
    }
    let network = json!({
        "egress": {"allow": ["10.0.0.0/8:5432", "192.0.2.7", "api.openai.com", "*.github.com:443"]},
        "reach": ["beta"],
        "inject": [{"host": "api.openai.com", "headers": {"Authorization": "Bearer ${secrets.KEY}"}}],
    });
    let (status, _) = call_as(
        &server,
        KEY,
        reqwest::Method::POST,
        "/v1/secrets",
        Some(json!({"name": "KEY", "value": "not shown"})),
    )
    .await;
    assert!(status == 201 || status == 200);
    let (agent, _) = deploy_as(&server, KEY, "local", "shown", json!({"network": network})).await;
    let (_, view) = call_as(
        &server,
        KEY,
        reqwest::Method::GET,
        &format!("/v1/agents/{agent}"),
        None,
    )
    .await;
    assert_eq!(view["data"]["config"]["network"], network, "{view}");

    // Changes of the policy are audited: narrowing, then widening.
    let changes = [
        (json!({"egress": "none"}), false),
        (json!({"egress": {"allow": ["api.openai.com"]}}), true),
        (
            json!({"egress": {"allow": ["api.openai.com"]}, "reach": ["beta"]}),
            true,
        ),
        (
            json!({"egress": {"allow": ["api.openai.com"]}, "reach": ["beta"]}),
            false,
        ),
    ];
    for (network, _) in &changes {
        let (status, body) = call_as(
            &server,
            KEY,
            reqwest::Method::PATCH,
            &format!("/v1/agents/{agent}"),
            Some(json!({"config": {"network": network}})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, events) = call_as(
        &server,
        KEY,
        reqwest::Method::GET,
        "/v1/events?type=agent.policy_changed&limit=100",
        None,
    )
    .await;
    let mut recorded: Vec<Value> = events["data"].as_array().expect("events").clone();
    recorded.reverse();
    // The last PATCH changed nothing: three events.
    assert_eq!(recorded.len(), 3, "{events}");
    for (event, (network, widened)) in recorded.iter().zip(&changes) {
        assert_eq!(event["data"]["agent_id"], agent.as_str());
        assert_eq!(event["data"]["policy"]["after"], *network, "{event}");
        assert_eq!(event["data"]["policy"]["widened"], *widened, "{event}");
    }
    assert_eq!(
        recorded[0]["data"]["policy"]["before"]["reach"],
        json!(["beta"])
    );
}
