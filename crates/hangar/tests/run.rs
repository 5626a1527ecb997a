//! Agents running for real: `hangar serve` as a process, agents deployed from
//! directories through the API, replicas in sandboxes. Needs root (CI runs as
//! root; with `CI=true` and no root these tests fail instead of skipping):
//! `cargo test -p hangar --test run`.
//!
//! The agents are in `tests/agents/`: `http` (standard-library HTTP server),
//! `echo` (stdin), `crash`, `oom` (allocates 400 MB), `forkbomb`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

#[tokio::test]
async fn python_agent_runs_isolated_restarts_and_is_deleted() {
    if !root_or_skip("python_agent") {
        return;
    }
    let server = Server::start(&temp("python"));
    let org = server.org().await;
    let a = server.deploy("web", "http", json!({})).await;
    let b = server
        .deploy(
            "other",
            "http",
            json!({"config": {"invoke_path": "/missing"}}),
        )
        .await;
    for id in [&a, &b] {
        server
            .wait_instance(id, "running", |i| i["status"] == "running")
            .await;
    }

    // exec: output as text, exit code in a header.
    let (status, out, code) = server
        .exec(&org, &a, &["python3", "-c", "print(6*7)"])
        .await;
    assert_eq!(
        (status, out.as_str(), code.as_deref()),
        (200, "42\n", Some("0"))
    );
    let (_, _, code) = server.exec(&org, &a, &["sh", "-c", "exit 3"]).await;
    assert_eq!(code.as_deref(), Some("3"));
    // A program the replica does not have: what a shell says, not a 500.
    let (status, out, code) = server.exec(&org, &a, &["no-such-program", "x"]).await;
    assert_eq!((status, code.as_deref()), (200, Some("127")), "{out}");
    assert!(
        out.contains("executable 'no-such-program' not found in $PATH"),
        "{out}"
    );

    // Its own IP, reachable from the host: /health and /invoke answer there.
    let (_, ip, _) = server
        .exec(&org, &a, &["python3", "-c", "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('10.231.0.1', 9)); print(s.getsockname()[0])"])
        .await;
    let ip = ip.trim().to_owned();
    assert!(ip.starts_with("10.231."), "{ip}");
    let health = reqwest::get(format!("http://{ip}:8080/health"))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let invoked: Value = reqwest::Client::new()
        .post(format!("http://{ip}:8080/invoke"))
        .json(&json!({"q": 1}))
        .send()
        .await
        .expect("invoke")
        .json()
        .await
        .expect("json");
    assert_eq!(invoked["output"]["echo"], json!({"q": 1}));

    // Invoke through the Agents API: the gateway proxies to a ready replica.
    let agent_id = server.instance(&a).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    let (status, invoked, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/invoke"),
            Some(json!({"input": {"text": "hi"}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(invoked["success"], true);
    assert_eq!(invoked["data"]["output"]["echo"], json!({"text": "hi"}));
    assert_eq!(invoked["meta"]["instance_id"], a.as_str());
    assert!(invoked["meta"]["latency_ms"].is_u64());
    assert!(invoked["meta"]["request_id"]
        .as_str()
        .is_some_and(|r| r.starts_with("req_")));
    // Too slow for options.timeout: 504 INVOKE_TIMEOUT.
    let (status, body, _, _) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/invoke"),
            Some(json!({"input": {"sleep": 3}, "options": {"timeout": 1}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("INVOKE_TIMEOUT")),
        "{body}"
    );
    assert_eq!(body["success"], false);

    // An agent answering an error: 502 AGENT_ERROR with its status.
    let b_agent = server.instance(&b).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    let (status, body, _, _) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{b_agent}/invoke"),
            Some(json!({"input": 1})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("AGENT_ERROR")),
        "{body}"
    );
    assert_eq!(body["error"]["details"]["agent_status"], 404);

    // Isolation.
    let data_dir = server.dir.join("hangar-data");
    let probe = format!(
        "import os\n\
         def can(f):\n    try:\n        f(); return 'yes'\n    except OSError:\n        return 'no'\n\
         print('root', can(lambda: os.listdir('/root')))\n\
         print('data', can(lambda: os.listdir({:?})))\n\
         print('usr', can(lambda: open('/usr/x', 'w')))\n\
         print('uid', os.getuid())\n\
         print('procs', sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:1])\n\
         open('/tmp/mine', 'w').write('a')\n",
        data_dir.to_string_lossy()
    );
    let (_, out, _) = server.exec(&org, &a, &["python3", "-c", &probe]).await;
    assert_eq!(
        out, "root no\ndata no\nusr no\nuid 65534\nprocs [1]\n",
        "{out}"
    );
    let (_, out, _) = server
        .exec(&org, &b, &["python3", "-c", "import os; print(os.path.exists('/tmp/mine'), len([p for p in os.listdir('/proc') if p.isdigit()]) < 5)"])
        .await;
    assert_eq!(
        out, "False True\n",
        "another replica's files or processes are visible"
    );

    // kill -9 of the agent's process: restarted, counted, back to running.
    let pids = replica_pids(&a);
    assert!(!pids.is_empty());
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let inst = server
        .wait_instance(&a, "restarted", |i| {
            i["deployment"]["restart_count"] == 1 && i["status"] == "running"
        })
        .await;
    assert_eq!(inst["deployment"]["replicas"], 1);
    let logs = server
        .wait_log(&org, &a, "was killed by SIGKILL; restarting")
        .await;
    assert!(
        logs.iter()
            .filter(|l| l.contains("listening on 8080"))
            .count()
            >= 2,
        "{logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l.starts_with("ERROR [hangar] replica")),
        "{logs:#?}"
    );
    // The agent's log is its default instance's; level filters.
    let agent_logs = server
        .get(&format!("/v1/agents/{agent_id}/logs?tail=500"))
        .await;
    let all = agent_logs["data"].as_array().expect("data");
    assert!(
        all.iter().any(|l| l["message"] == "listening on 8080"),
        "{agent_logs}"
    );
    let errors = server
        .get(&format!("/v1/agents/{agent_id}/logs?tail=500&level=error"))
        .await;
    let errors = errors["data"].as_array().expect("data");
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|l| l["level"] == "ERROR"), "{errors:?}");

    // Metrics from the cgroup.
    let inst = server
        .wait_instance(&a, "measured", |i| {
            i["metrics"]["memory_usage_mb"]
                .as_u64()
                .is_some_and(|m| m > 0)
        })
        .await;
    assert!(inst["metrics"]["uptime_seconds"].is_u64());
    let status = server.get(&format!("/instances/status/{org}/{a}")).await;
    assert!(
        status["health_checks"]["response_time_ms"].is_u64(),
        "{status}"
    );
    assert_eq!(status["health_checks"]["status"], "healthy");

    // Graceful and forced deletes leave nothing: no process, state dir,
    // cgroup or mount (the network namespaces are bind mounts).
    let replicas = server.replica_ids();
    assert_eq!(replicas.len(), 2);
    server.delete(&a, false).await;
    server.delete(&b, true).await;
    server.wait_nothing_left(&a).await;
    server.wait_nothing_left(&b).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for id in &replicas {
        assert!(!mountinfo.contains(id.as_str()), "a mount of {id} is left");
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .expect("cgroups")
            .flatten()
        {
            for parent in std::fs::read_dir(hierarchy.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = parent.file_name();
                if name.to_string_lossy().starts_with("hangar-") {
                    assert!(
                        !parent.path().join(id).exists(),
                        "cgroup {} of {id} is left",
                        parent.path().display()
                    );
                }
            }
        }
    }
    let (status, body, _, _) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{a}/exec"),
            Some(json!(["true"])),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn limits_stop_memory_hogs_and_fork_bombs() {
    if !root_or_skip("limits") {
        return;
    }
    let server = Server::start(&temp("limits"));
    let org = server.org().await;
    let hog = server
        .deploy(
            "hog",
            "oom",
            json!({"config": {"enable_http": false}, "resources": {"memory": "128Mi", "memory_limit": "256Mi"}}),
        )
        .await;
    let logs = server.wait_log(&org, &hog, "out of memory").await;
    assert!(
        logs.iter().any(|l| l.contains("allocating 400 MB")),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("INFO allocated")),
        "{logs:#?}"
    );
    let inst = server
        .wait_instance(&hog, "restarted after the OOM kill", |i| {
            i["deployment"]["restart_count"].as_u64() >= Some(1)
        })
        .await;
    let reason_or_status = inst.to_string();
    assert!(
        reason_or_status.contains("error")
            || reason_or_status.contains("starting")
            || reason_or_status.contains("running")
    );

    // A CPU cap too: the pids limit stops the forking, the cap keeps the 512
    // processes that keep trying from starving the machine.
    let bomb = server
        .deploy(
            "bomb",
            "forkbomb",
            json!({"config": {"enable_http": false}, "resources": {"cpu": "0.1", "cpu_limit": "0.25"}}),
        )
        .await;
    server.wait_log(&org, &bomb, "forking").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The API keeps answering while the bomb runs against its pids limit.
    for _ in 0..5 {
        server.get("/v1/me").await;
    }
    let pids = replica_pids(&bomb).len();
    assert!(pids > 10 && pids <= 512, "{pids} processes");

    server.delete(&hog, true).await;
    server.delete(&bomb, true).await;
    server.wait_nothing_left(&hog).await;
    server.wait_nothing_left(&bomb).await;
}

#[tokio::test]
async fn stdin_agent_answers() {
    if !root_or_skip("stdin") {
        return;
    }
    let server = Server::start(&temp("stdin"));
    let org = server.org().await;
    let echo = server
        .deploy(
            "echo",
            "echo",
            json!({"config": {"enable_http": false, "stdin_enabled": true}}),
        )
        .await;
    server
        .wait_instance(&echo, "running", |i| i["status"] == "running")
        .await;
    server.wait_log(&org, &echo, "ready").await;
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{echo}/stdin"),
            Some(json!({"input": "hello\n"})),
        )
        .await;
    assert_eq!((status, text.as_str()), (200, "echo: hello\n"));

    // Redeploy: a new build of the same directory; the instance rolls onto it.
    let before = server.instance(&echo).await;
    let old_pids = replica_pids(&echo);
    let agent_id = before["agent_id"].as_str().expect("agent_id").to_owned();
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/redeploy"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let rolled = server
        .wait_instance(&echo, "rolled onto the new build", |i| {
            i["build_id"] != before["build_id"] && i["status"] == "running"
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica_pids(&echo).iter().any(|pid| old_pids.contains(pid))
        || replica_pids(&echo).len() != 1
    {
        assert!(
            Instant::now() < deadline,
            "old replica still there: {rolled}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The agent's stop and start stop and start its instance.
    let agent = server.instance(&echo).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/stop"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    server
        .wait_instance(&echo, "stopped", |i| i["status"] == "stopped")
        .await;
    assert!(replica_pids(&echo).is_empty());
    let (status, _, _, _) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{echo}/stdin"),
            Some(json!({"input": "x\n"})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/start"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    server
        .wait_instance(&echo, "running again", |i| i["status"] == "running")
        .await;
    assert_eq!(replica_pids(&echo).len(), 1);
    server.delete(&echo, true).await;
    server.wait_nothing_left(&echo).await;
}

#[tokio::test]
async fn kill_9_of_the_server_leaves_replicas_running_and_readopted() {
    if !root_or_skip("readopt") {
        return;
    }
    let dir = temp("readopt");
    let server = Server::start(&dir);
    let org = server.org().await;
    let id = server
        .deploy(
            "trio",
            "http",
            json!({"scaling": {"min_instances": 3, "max_instances": 3}}),
        )
        .await;
    server
        .wait_instance(&id, "3 running", |i| {
            i["status"] == "running" && i["deployment"]["replicas"] == 3
        })
        .await;
    let mut before = replica_pids(&id);
    before.sort_unstable();
    assert_eq!(before.len(), 3, "{before:?}");
    server.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut alive = replica_pids(&id);
    alive.sort_unstable();
    assert_eq!(alive, before, "replicas died with the server");

    let server = Server::start(&dir);
    let inst = server
        .wait_instance(&id, "3 running again", |i| {
            i["status"] == "running" && i["deployment"]["replicas"] == 3
        })
        .await;
    assert_eq!(inst["deployment"]["restart_count"], 0);
    let mut after = replica_pids(&id);
    after.sort_unstable();
    assert_eq!(after, before, "the same processes are managed");
    let (_, out, _) = server
        .exec(&org, &id, &["python3", "-c", "print(6*7)"])
        .await;
    assert_eq!(out, "42\n");
    // Logs continue: each replica prints when invoked; reach one by its IP.
    let (_, ip, _) = server
        .exec(&org, &id, &["python3", "-c", "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('10.231.0.1', 9)); print(s.getsockname()[0])"])
        .await;
    reqwest::Client::new()
        .post(format!("http://{}:8080/invoke", ip.trim()))
        .json(&json!("after restart"))
        .send()
        .await
        .expect("invoke");
    server
        .wait_log(&org, &id, "invoked with \"after restart\"")
        .await;

    // Load balancing over the re-adopted replicas: 200 concurrent invokes
    // spread within 20% of even.
    let agent = server.instance(&id).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    let client = reqwest::Client::new();
    let calls = (0..200).map(|i| {
        let request = client
            .post(format!("{}/v1/agents/{agent}/invoke", server.url))
            .bearer_auth(KEY)
            .json(&json!({"input": {"n": i, "sleep": 0.02}}))
            .timeout(Duration::from_secs(60))
            .send();
        async move {
            let reply: Value = request.await.expect("invoke").json().await.expect("json");
            reply["data"]["output"]["replica"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("failed invoke: {reply}"))
        }
    });
    let served = futures_join_all(calls).await;
    let mut per_replica = std::collections::BTreeMap::<String, u32>::new();
    for replica in served {
        *per_replica.entry(replica).or_default() += 1;
    }
    assert_eq!(per_replica.len(), 3, "{per_replica:?}");
    for count in per_replica.values() {
        assert!((53..=80).contains(count), "uneven: {per_replica:?}");
    }
    server.delete(&id, true).await;
    server.wait_nothing_left(&id).await;
}

#[tokio::test]
async fn a_crash_loop_backs_off() {
    if !root_or_skip("crash_loop") {
        return;
    }
    let server = Server::start(&temp("crash"));
    let org = server.org().await;
    let id = server
        .deploy(
            "crasher",
            "crash",
            json!({"config": {"enable_http": false}}),
        )
        .await;
    let logs = server.wait_log(&org, &id, "(restart 3)").await;
    // "… exited with code 3; restarting in 1.0s (restart 1)", 2.0s, 4.0s …
    let delays: Vec<f64> = logs
        .iter()
        .filter(|l| l.contains("exited with code 3; restarting in"))
        .filter_map(|l| {
            l.split("restarting in ")
                .nth(1)?
                .split('s')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(delays.len() >= 3, "{logs:#?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "no backoff: {delays:?}"
    );
    let inst = server
        .wait_instance(&id, "counted 3 restarts", |i| {
            i["deployment"]["restart_count"].as_u64() >= Some(3)
        })
        .await;
    assert!(
        inst["status"] == "error" || inst["status"] == "running" || inst["status"] == "starting",
        "{inst}"
    );
    server.delete(&id, true).await;
    server.wait_nothing_left(&id).await;
}

#[tokio::test]
async fn secrets_reach_the_agent_and_never_the_api() {
    if !root_or_skip("secrets") {
        return;
    }
    let dir = temp("secrets");
    let server = Server::start(&dir);
    let org = server.org().await;
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/secrets",
            Some(json!({"name": "GREETING", "value": "hello from a secret"})),
        )
        .await;
    assert!(status == 201 || status == 200, "{text}");
    let instance = server
        .deploy(
            "secretive",
            "http",
            json!({"environment": {"GREETING": "${secrets.GREETING}", "PLAIN": "visible"}}),
        )
        .await;
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let (code, out, _) = server
        .exec(
            &org,
            &instance,
            &["python3", "-c", "import os; print(os.environ['GREETING'])"],
        )
        .await;
    assert_eq!((code, out.trim()), (200, "hello from a secret"));
    // The API shows the reference masked, never the value.
    let agent = server.instance(&instance).await["agent_id"]
        .as_str()
        .expect("agent")
        .to_owned();
    let shown = server.get(&format!("/v1/agents/{agent}")).await.to_string();
    assert!(!shown.contains("hello from a secret"), "{shown}");
    let shown = server.instance(&instance).await.to_string();
    assert!(!shown.contains("hello from a secret"), "{shown}");
    server.delete(&instance, true).await;
}
