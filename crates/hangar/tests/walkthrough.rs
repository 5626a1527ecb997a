//! The README's walkthrough, run as written: every request example of the
//! Agents API and Instances API documents against the agents in `examples/`.
//!
//! The shell blocks of the README's "Walkthrough: the seeds' examples"
//! section that carry a `<!-- walkthrough: NAME -->` marker run in order in
//! one `bash` (so the ids a block captures reach the next ones), from the
//! repository's root, against a fresh `hangar serve`; each block's output is
//! kept and checked against what the README says it answers. So the README
//! cannot drift from what Hangar and the examples do, and a seed example that
//! stops working fails here.
//!
//! Needs root (agents run in sandboxes), `bash`, `curl`, `jq` and `tar`, and
//! PyPI for the sentiment analyzer's `langchain-core`; with `CI=true` a
//! missing one fails the test rather than skip it:
//! `cargo test -p hangar --test walkthrough`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

/// The heading of the README section the blocks come from.
const SECTION: &str = "## Walkthrough: the seeds' examples";

/// The marked blocks, in the order the README must have them: each has a
/// check below, and a block the README adds or drops fails the test until
/// this list (and a check) follows.
const STEPS: &[&str] = &[
    "helpers",
    "deploy",
    "invoke",
    "invoke-async",
    "deploy-poet",
    "stream",
    "logs",
    "create-instance",
    "list-get",
    "status",
    "exec",
    "stdin",
    "instance-logs",
    "update",
    "delete",
];

/// Longest the whole walkthrough may take before it is stopped as hung
/// (it takes about a minute, most of it the langchain-core build).
const HUNG_AFTER: Duration = Duration::from_secs(900);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One marked shell block of the section.
#[derive(Debug)]
struct Step {
    name: String,
    code: String,
}

/// The section's marked `sh` blocks, in order. Panics on a marker not right
/// above an `sh` block, and on an unmarked `sh` block other than the first
/// one (which sets `HANGAR` and `KEY` for a reader; the test sets them
/// itself), since nothing would run it.
fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("the README has no {SECTION:?} section"));
    let rest = &readme[start + 1..];
    let section = rest[SECTION.len()..]
        .find("\n## ")
        .map_or(rest, |end| &rest[..SECTION.len() + end]);
    let mut lines = section.lines();
    let mut steps = Vec::new();
    let mut unmarked = 0;
    while let Some(line) = lines.next() {
        if let Some(name) = line
            .strip_prefix("<!-- walkthrough: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            assert_eq!(
                lines.next(),
                Some("```sh"),
                "the marker {name:?} must sit right above an sh block"
            );
            let code: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            steps.push(Step {
                name: name.to_owned(),
                code: code.join("\n"),
            });
        } else if line == "```sh" {
            unmarked += 1;
            assert_eq!(
                unmarked, 1,
                "an sh block after the first one has no walkthrough marker, so nothing runs it"
            );
            lines.by_ref().take_while(|l| *l != "```").for_each(drop);
        }
    }
    steps
}

/// The script: each block in braces (so what it sets stays set), its output
/// to files of its own, its name appended to `done` once it succeeded; with
/// `set -e`, a failing command (a build that fails, an agent that never
/// runs) stops the walkthrough there.
fn script(steps: &[Step], out: &Path) -> String {
    let mut script = String::from("set -eu\n");
    for step in steps {
        let file = out.join(&step.name);
        let file = file.display();
        script.push_str(&format!(
            "{{\n{}\n}} >'{file}.out' 2>'{file}.err'\necho {} >>'{}'\n",
            step.code,
            step.name,
            out.join("done").display()
        ));
    }
    script
}

/// Every JSON value in `text`, in order, skipping what is not JSON (the
/// lines of an event stream between them).
fn json_values(text: &str) -> Vec<Value> {
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(['{', '[']) {
        let mut stream = serde_json::Deserializer::from_str(&rest[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                values.push(value);
                rest = &rest[start + stream.byte_offset()..];
            }
            _ => rest = &rest[start + 1..],
        }
    }
    values
}

/// The JSON data of an event stream's `data:` lines.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.split_once("data: ").map(|(_, data)| data))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect()
}

fn starts(value: &Value, prefix: &str) -> bool {
    value.as_str().is_some_and(|s| s.starts_with(prefix))
}

fn messages(lines: &Value) -> Vec<&str> {
    lines
        .as_array()
        .map(|lines| lines.iter().filter_map(|l| l["message"].as_str()).collect())
        .unwrap_or_default()
}

/// Checks what one block printed against what the README says it answers.
fn check(step: &str, out: &str) {
    let values = json_values(out);
    let first = values.first().cloned().unwrap_or(Value::Null);
    match step {
        "helpers" | "deploy-poet" => assert_eq!(out.trim(), "", "{step} prints nothing"),
        "deploy" => {
            let secret = values
                .iter()
                .find(|v| v["data"]["name"] == "OPENAI_KEY")
                .expect("the secret's answer");
            assert_eq!(secret["data"]["value"], "****", "{secret}");
            let agent = values
                .iter()
                .find(|v| v["data"]["name"] == "sentiment-analyzer")
                .expect("the deployed agent");
            assert_eq!(agent["success"], true, "{agent}");
            assert!(starts(&agent["data"]["id"], "agent_"), "{agent}");
            assert_eq!(agent["data"]["source"]["type"], "upload", "{agent}");
            assert_eq!(agent["data"]["runtime"]["language"], "python", "{agent}");
            assert_eq!(agent["data"]["resources"]["memory_mb"], 4096, "{agent}");
            assert_eq!(
                agent["data"]["environment"]["OPENAI_API_KEY"], "****",
                "{agent}"
            );
            assert_eq!(agent["data"]["scaling"]["max_instances"], 10, "{agent}");
        }
        "invoke" => {
            // The README shows this answer exactly: the analyzer is deterministic.
            assert_eq!(first["success"], true, "{first}");
            assert_eq!(
                first["data"]["output"],
                serde_json::json!({
                    "sentiment": "positive",
                    "confidence": 0.95,
                    "emotions": {"joy": 0.69, "love": 0.63, "surprise": 0.15},
                }),
                "{first}"
            );
            assert_eq!(first["data"]["usage"]["tokens_used"], 10, "{first}");
            assert!(first["data"]["usage"]["compute_ms"].is_u64(), "{first}");
            assert!(starts(&first["meta"]["request_id"], "req_"), "{first}");
            assert!(starts(&first["meta"]["instance_id"], "inst_"), "{first}");
        }
        "invoke-async" => {
            assert_eq!(values.len(), 2, "the acceptance, then the job: {out}");
            let accepted = &values[0]["data"];
            assert_eq!(accepted["status"], "pending", "{out}");
            let job = accepted["job_id"].as_str().expect("job_id");
            assert!(job.starts_with("job_"), "{out}");
            assert_eq!(accepted["poll_url"], format!("/v1/jobs/{job}"), "{out}");
            let done = &values[1]["data"];
            assert_eq!(done["job_id"], job, "{out}");
            assert_eq!(done["status"], "completed", "{out}");
            assert_eq!(
                done["output"],
                serde_json::json!({"sentiment": "neutral", "confidence": 1.0, "emotions": {}}),
                "{out}"
            );
            assert_eq!(done["usage"]["tokens_used"], 3, "{out}");
        }
        "stream" => {
            let events = events(out);
            assert_eq!(
                events.first().map(|e| &e["type"]),
                Some(&Value::from("start")),
                "{out}"
            );
            assert!(starts(&events[0]["request_id"], "req_"), "{out}");
            let done = events.last().expect("events");
            assert_eq!(done["type"], "done", "{out}");
            let chunks: Vec<&str> = events
                .iter()
                .filter(|e| e["type"] == "chunk")
                .filter_map(|e| e["content"].as_str())
                .collect();
            // Word by word, as the seed shows it.
            assert_eq!(
                chunks.get(..3),
                Some(&["In", " silicon", " dreams"][..]),
                "{out}"
            );
            assert_eq!(done["usage"]["tokens"], chunks.len(), "{out}");
            let poem = chunks.concat();
            assert!(poem.starts_with("In silicon dreams AI wakes\n"), "{poem}");
            assert!(poem.contains("AI keeps asking what is true"), "{poem}");
            assert_eq!(poem.lines().count(), 8, "{poem}");
        }
        "logs" => {
            assert_eq!(first["success"], true, "{out}");
            let told = messages(&first["data"]);
            assert!(
                told.contains(&"sentiment analyzer listening on 8080"),
                "{out}"
            );
            assert!(
                told.contains(&"analyzed 10 tokens: positive (0.95)"),
                "{out}"
            );
            // Then the follow's first events: the stored lines, oldest first.
            assert!(out.lines().any(|l| l.ends_with("id: 1")), "{out}");
            let followed = events(out);
            assert_eq!(
                followed.first().map(|e| &e["message"]),
                Some(&first["data"][0]["message"]),
                "{out}"
            );
            assert!(
                followed
                    .iter()
                    .all(|e| e["timestamp"].is_string() && e["level"].is_string()),
                "{out}"
            );
        }
        "create-instance" => {
            assert!(starts(&first["id"], "inst_"), "{first}");
            assert_eq!(first["name"], "trading-bot-v1", "{first}");
            assert_eq!(first["status"], "starting", "{first}");
            assert!(starts(&first["agent_id"], "agent_"), "{first}");
            assert!(starts(&first["build_id"], "build_"), "{first}");
            assert_eq!(first["env_vars"]["API_KEY"], "***REDACTED***", "{first}");
            assert_eq!(first["env_vars"]["TRADING_MODE"], "live", "{first}");
        }
        "list-get" => {
            assert_eq!(values.len(), 2, "the list, then the instance: {out}");
            let listed = values[0]["data"].as_array().expect("data");
            assert!(
                listed
                    .iter()
                    .any(|i| i["name"] == "trading-bot-v1" && i["status"] == "running"),
                "{out}"
            );
            assert!(listed.iter().all(|i| i["status"] == "running"), "{out}");
            assert_eq!(values[0]["pagination"]["limit"], 50, "{out}");
            let got = &values[1];
            assert_eq!(got["name"], "trading-bot-v1", "{out}");
            assert_eq!(got["status"], "running", "{out}");
            assert!(got["deployment"]["url"].is_string(), "{out}");
            assert!(got["deployment"]["replicas"].as_u64() >= Some(1), "{out}");
            assert!(got["metrics"]["uptime_seconds"].is_u64(), "{out}");
        }
        "update" => {
            assert_eq!(first["config"]["replicas"], 2, "{first}");
            assert_eq!(first["env_vars"]["LOG_LEVEL"], "DEBUG", "{first}");
            assert_eq!(first["env_vars"]["TRADING_MODE"], "live", "{first}");
        }
        "status" => {
            assert!(
                first["status"] == "RUNNING" || first["status"] == "READY_TO_RECEIVE_REQUESTS",
                "{first}"
            );
            assert!(first["created_at"].is_i64(), "{first}");
            assert!(first["replicas"].is_u64(), "{first}");
            assert!(first["health_checks"].is_object(), "{first}");
            assert!(first["resource_usage"]["memory_mb"].is_u64(), "{first}");
        }
        "exec" => {
            for file in [".venv", "main.py", "requirements.txt"] {
                assert!(
                    out.lines().any(|l| l.ends_with(&format!(" {file}"))),
                    "ls -la lists {file}: {out}"
                );
            }
            assert!(out.lines().any(|l| l == "Hello from instance!"), "{out}");
        }
        "stdin" => {
            assert!(
                out.contains("no weather service"),
                "the chat agent's reply: {out}"
            );
            assert!(!out.contains("error"), "{out}");
        }
        "instance-logs" => {
            let told = messages(&first["logs"]);
            assert!(
                told.contains(&"sentiment analyzer listening on 8080"),
                "{out}"
            );
        }
        "delete" => assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["204", "204"]),
        other => panic!("no check for the walkthrough step {other:?}"),
    }
}

#[test]
fn the_readme_walkthrough_marks_every_step() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let names: Vec<String> = steps(&readme).into_iter().map(|s| s.name).collect();
    assert_eq!(names, STEPS);
}

#[test]
fn json_values_reads_answers_between_other_lines() {
    let out = "{\"a\":1}{\"b\":[2]}id: 1\ndata: {\"c\":3}\n\nnot json {oops\n[4]";
    assert_eq!(
        json_values(out),
        [
            serde_json::json!({"a": 1}),
            serde_json::json!({"b": [2]}),
            serde_json::json!({"c": 3}),
            serde_json::json!([4]),
        ]
    );
    assert_eq!(events(out), [serde_json::json!({"c": 3})]);
}

/// Whether `tool` runs here; without it the walkthrough cannot.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn tool_or_skip(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why = format!("the walkthrough needs {tool}");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and CI=true"
        );
        eprintln!("SKIPPED walkthrough: {why}");
    }
    found
}

#[test]
fn the_readme_walkthrough_answers_as_documented() {
    if !root_or_skip("walkthrough") {
        return;
    }
    for tool in ["bash", "curl", "jq", "tar"] {
        if !tool_or_skip(tool) {
            return;
        }
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let steps = steps(&readme);
    let dir = temp("walkthrough");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let server = Server::start(&dir);
    let script_file = dir.join("walkthrough.sh");
    std::fs::write(&script_file, script(&steps, &out)).expect("script");

    let mut bash = Command::new("bash")
        .arg(&script_file)
        .current_dir(repo_root())
        .env("HANGAR", &server.url)
        .env("KEY", KEY)
        // Its own process group, so a hung run is stopped whole.
        .process_group(0)
        .spawn()
        .expect("bash");
    let deadline = Instant::now() + HUNG_AFTER;
    let status = loop {
        if let Some(status) = bash.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let group = nix::unistd::Pid::from_raw(i32::try_from(bash.id()).expect("pid"));
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = bash.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    let done = std::fs::read_to_string(out.join("done")).unwrap_or_default();
    let done: Vec<&str> = done.lines().collect();
    let read = |name: &str, ext: &str| {
        std::fs::read_to_string(out.join(format!("{name}.{ext}"))).unwrap_or_default()
    };
    if status.is_none_or(|s| !s.success()) {
        let failed = steps
            .iter()
            .map(|s| s.name.as_str())
            .find(|name| !done.contains(name))
            .unwrap_or("?");
        panic!(
            "the walkthrough stopped at {failed:?} ({}):\n--- output\n{}\n--- errors\n{}",
            status.map_or("hung".to_owned(), |s| s.to_string()),
            read(failed, "out"),
            read(failed, "err"),
        );
    }
    assert_eq!(done, STEPS, "every step ran");
    // Every step is checked, so one run names every answer that is off.
    let wrong: Vec<&str> = steps
        .iter()
        .filter(|step| {
            let out = read(&step.name, "out");
            std::panic::catch_unwind(|| check(&step.name, &out)).is_err()
        })
        .map(|step| step.name.as_str())
        .collect();
    assert!(wrong.is_empty(), "answers not as documented: {wrong:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
