//! The client commands for real: `hangar serve` as a process, and the
//! `hangar` binary run as a user would — `login` writing its config file,
//! `deploy` of a directory with a `.gitignore` (what it ignores, and `.git`,
//! never reach the agent), `invoke` (plain and streaming), a second `deploy`
//! of the changed directory updating the same agent with a new build, `logs`
//! (and `logs -f`), a build that fails, a bad key and an unknown agent. Needs root like
//! `run.rs` (agents run in sandboxes): `cargo test -p hangar --test cli`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// A user's home for the client: its config goes under `<home>/config`.
struct Home(PathBuf);

impl Home {
    fn new(dir: &Path) -> Self {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("home");
        Self(home)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hangar"));
        command
            .args(args)
            .env_remove("HANGAR_URL")
            .env_remove("HANGAR_KEY")
            .env("HOME", &self.0)
            .env("XDG_CONFIG_HOME", self.0.join("config"))
            .stdin(Stdio::null());
        command
    }

    /// Runs `hangar ARGS` to its end.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run hangar")
    }

    /// Runs `hangar ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "hangar {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of the `http` test agent in `dir`, with a `.gitignore` that
/// ignores `secret.txt` and `*.log`, both present, and a `.git` directory.
fn agent_copy(dir: &Path) {
    std::fs::create_dir_all(dir.join(".git")).expect("mkdir");
    std::fs::copy(
        Path::new(&agent_dir("http")).join("main.py"),
        dir.join("main.py"),
    )
    .expect("copy");
    std::fs::write(dir.join(".gitignore"), "secret.txt\n*.log\n").expect("write");
    std::fs::write(dir.join("secret.txt"), "hunter2\n").expect("write");
    std::fs::write(dir.join("debug.log"), "noise\n").expect("write");
    std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
}

/// The value after `label` on a line of `text` (`  id:  agent_…`).
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
}

/// The build a `hangar deploy` output names (`… build build_… is running`).
fn deployed_build(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("build_"))
        .unwrap_or_else(|| panic!("no build in {text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_deploy_invoke_redeploy_and_logs() {
    if !root_or_skip("login_deploy_invoke_redeploy_and_logs") {
        return;
    }
    let dir = temp("cli");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&dir.join("server"));
    let home = Home::new(&dir);

    // Login checks the key and saves server and key, for the owner only.
    let out = home.ok(&["login", "--server", &server.url, "--key", KEY]);
    assert!(out.contains("Logged in"), "{out}");
    let config = home.0.join("config/hangar/config.toml");
    let text = std::fs::read_to_string(&config).expect("config written");
    assert!(text.contains(&server.url) && text.contains(KEY), "{text}");
    let mode = std::fs::metadata(&config)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Deploy a directory: the agent is named after it and runs.
    let agent = dir.join("cli-echo");
    agent_copy(&agent);
    let out = home.ok(&["deploy", agent.to_str().expect("utf-8")]);
    let id = field(&out, "id:");
    let url = field(&out, "url:");
    let first_build = deployed_build(&out);
    assert!(id.starts_with("agent_"), "{out}");
    assert!(url.contains("cli-echo"), "{out}");

    let list = home.ok(&["agents", "list"]);
    let row = list
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {list}"));
    assert!(
        row.starts_with("cli-echo") && row.contains("running"),
        "{row}"
    );

    // What .gitignore ignores, and .git, are not in the artifact.
    let org = server.org().await;
    let instance = server.get(&format!("/v1/agents/{id}")).await["data"]["instance_id"]
        .as_str()
        .expect("instance")
        .to_owned();
    let (status, listing, code) = server.exec(&org, &instance, &["ls", "-a", "/app"]).await;
    assert_eq!((status, code.as_deref()), (200, Some("0")), "{listing}");
    let files: Vec<&str> = listing.lines().collect();
    assert!(
        files.contains(&"main.py") && files.contains(&".gitignore"),
        "{files:?}"
    );
    for gone in ["secret.txt", "debug.log", ".git"] {
        assert!(!files.contains(&gone), "{gone} deployed: {files:?}");
    }

    // Invoke by name: the output alone; streaming prints the chunks.
    let out = home.ok(&["invoke", "cli-echo", r#"{"text": "hello from the cli"}"#]);
    let output: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(output["echo"]["text"], "hello from the cli", "{out}");
    let out = home.ok(&["invoke", &id, r#"{"text": "streamed"}"#, "--stream"]);
    assert!(out.contains("streamed"), "{out}");

    // A second deploy of the changed directory updates the same agent.
    std::fs::write(agent.join("VERSION"), "2\n").expect("write");
    let out = home.ok(&["deploy", agent.to_str().expect("utf-8")]);
    assert_eq!(field(&out, "id:"), id, "{out}");
    let second_build = deployed_build(&out);
    assert_ne!(second_build, first_build, "{out}");
    let a = server.get(&format!("/v1/agents/{id}")).await;
    assert_eq!(a["data"]["latest_build_id"], second_build.as_str());
    // Deploy returned once the new build runs: its file is there.
    let (_, version, code) = server.exec(&org, &instance, &["cat", "/app/VERSION"]).await;
    assert_eq!((version.trim(), code.as_deref()), ("2", Some("0")));
    let all = home.ok(&["agents", "list"]);
    let rows = all.lines().filter(|l| l.starts_with("cli-echo ")).count();
    assert_eq!(rows, 1, "{all}");

    // Logs by name show the agent's lines (they reach the store shortly
    // after the invoke: a bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = home.ok(&["logs", "cli-echo", "--tail", "50"]);
        if out.contains("invoked with") && out.contains("listening on") {
            break;
        }
        assert!(Instant::now() < deadline, "lines never shown: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `logs -f` prints a line that comes after it started.
    let mut follower = home
        .command(&["logs", "cli-echo", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The tail line shows the follow is connected before the new line goes in.
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the tail line");
    home.ok(&["invoke", "cli-echo", r#"{"text": "followed"}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("followed") => break line,
            Ok(_) => {}
            Err(e) => panic!("the followed line never came: {e}"),
        }
    };
    assert!(seen.contains("INFO"), "{seen}");
    let _ = follower.kill();
    let _ = follower.wait();

    let _ = server
        .call(reqwest::Method::DELETE, &format!("/v1/agents/{id}"), None)
        .await;
    server.wait_nothing_left(&instance).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_fails_the_deploy_with_its_reason() {
    if !root_or_skip("a_failing_build_fails_the_deploy_with_its_reason") {
        return;
    }
    let dir = temp("cli-fail");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&dir.join("server"));
    let home = Home::new(&dir);
    let agent = dir.join("broken");
    agent_copy(&agent);
    std::fs::write(agent.join("hangar.toml"), "[build]\ncommand = \"exit 3\"\n").expect("write");

    // Server and key from the environment this time.
    let out = home
        .command(&["deploy", agent.to_str().expect("utf-8")])
        .env("HANGAR_URL", &server.url)
        .env("HANGAR_KEY", KEY)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed") && stderr.contains("exited with code 3"),
        "{}",
        show(&out)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_key_exits_non_zero_naming_unauthorized() {
    let dir = temp("cli-key");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&dir.join("server"));
    let home = Home::new(&dir);
    let bad = "hgr_wrong00000000000000000000000000000000000000";
    for args in [
        vec!["agents", "list", "--server", &server.url, "--key", bad],
        vec!["login", "--server", &server.url, "--key", bad],
    ] {
        let out = home.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("UNAUTHORIZED"), "{args:?}: {}", show(&out));
    }
    // A name no agent has is the API's not-found code.
    let out = home.run(&[
        "invoke",
        "nope",
        "{}",
        "--server",
        &server.url,
        "--key",
        KEY,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AGENT_NOT_FOUND"),
        "{}",
        show(&out)
    );
    // A failed login writes nothing.
    assert!(!home.0.join("config/hangar/config.toml").exists());
    // No server at all is a usage error, not a crash.
    let out = home.run(&["agents", "list"]);
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
