//! `hangar deploy [DIR]`: the whole loop from a directory to a running agent,
//! through the public API only — pack the directory ([`super::pack`]),
//! `POST /v1/uploads` and `PUT` the archive to its signed URL, then create the
//! agent (`POST /v1/agents`) or, when the cloud already has one of that name,
//! build it again from the new archive (`POST /v1/agents/{id}/redeploy` with
//! the source: `PATCH` only stores a source for a later redeploy, while
//! redeploy takes it and queues the build in one request). Then it follows
//! the build's log as SSE, and waits — bounded by `--timeout` — until the
//! agent's instance runs that build (the `agent.deployed` event names it), so
//! that when the command returns, the URL it prints answers with the new code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::agents;
use super::client::{Client, Events};
use super::pack;
use super::progress::Progress;
use super::settings::{self, Connection};
use super::UsageError;

/// Flags of `hangar deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The agent's directory
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// The agent's name [default: the directory's name]
    #[arg(long)]
    name: Option<String>,
    /// Cloud to deploy to: its ID or name
    #[arg(long, default_value = "local")]
    cloud: String,
    /// Seconds to wait for the agent to run its new build, once built
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    connection: Connection,
}

/// How often the agent is looked at while waiting for it to run.
const POLL: Duration = Duration::from_millis(500);

/// How long a build log stream may stay silent (the server sends a comment
/// every 15 s) before it counts as broken.
const STREAM_SILENCE: Duration = Duration::from_secs(60);

/// Times a broken build log stream is resumed in a row.
const STREAM_RETRIES: u32 = 5;

/// Runs `hangar deploy`.
pub async fn run(args: DeployArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let client = Client::new(&settings::load(&args.connection, env)?)?;
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|e| UsageError(format!("{}: {e}", args.dir.display())))?;
    if !dir.is_dir() {
        bail!(UsageError(format!("{} is not a directory", dir.display())));
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| UsageError("give the agent a --name".to_owned()))?,
    };
    let mut progress = Progress::new();

    progress.step(&format!("Packing {}", dir.display()));
    let packed = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || pack::pack(&dir))
            .await
            .context("the packer panicked")??
    };
    if packed.files.is_empty() {
        bail!(UsageError(format!(
            "{}: no files to deploy (all ignored?)",
            dir.display()
        )));
    }
    progress.line(&format!(
        "Packed {} file{} ({} KiB)",
        packed.files.len(),
        if packed.files.len() == 1 { "" } else { "s" },
        packed.archive.len().div_ceil(1024)
    ));

    progress.step("Uploading");
    let upload = client
        .post(
            "/v1/uploads",
            &json!({"filename": format!("{name}.tar.gz")}),
        )
        .await?;
    let upload_url = upload["upload_url"]
        .as_str()
        .context("the upload has no upload_url")?
        .to_owned();
    let put = client
        .http()
        .put(&upload_url)
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .body(packed.archive)
        .timeout(Duration::from_secs(600));
    client
        .send(put)
        .await
        .context("cannot upload the archive")?;
    let source = json!({"type": "upload", "archive_url": upload_url});

    let existing = agents::named(&client, &name, Some(&args.cloud)).await?;
    let updating = !existing.is_empty();
    let agent = match existing.first() {
        Some(agent) => {
            let id = agents::id(agent)?;
            progress.line(&format!("Updating agent {name} ({id})"));
            client
                .post(
                    &format!("/v1/agents/{id}/redeploy"),
                    &json!({ "source": source }),
                )
                .await?
        }
        None => {
            let agent = client
                .post(
                    "/v1/agents",
                    &json!({"name": name, "cloud_id": args.cloud, "source": source}),
                )
                .await?;
            progress.line(&format!(
                "Created agent {name} ({})",
                agent["id"].as_str().unwrap_or("?")
            ));
            agent
        }
    };
    let id = agents::id(&agent)?;
    let build = match agent["latest_build_id"].as_str() {
        Some(build) => build.to_owned(),
        None => client.get(&format!("/v1/agents/{id}/builds")).await?[0]["id"]
            .as_str()
            .context("the agent has no build")?
            .to_owned(),
    };

    progress.step(&format!("Building {build}"));
    let (status, reason) = follow_build(&client, &build, &mut progress).await?;
    if status != "ready" {
        progress.clear();
        bail!(
            "build {build} {status}: {}{}",
            reason.as_deref().unwrap_or("no reason given"),
            if updating {
                " (the agent keeps running its previous build)"
            } else {
                ""
            }
        );
    }

    progress.step(&format!("Starting {name}"));
    let agent = wait_running(
        &client,
        &id,
        &build,
        Duration::from_secs(args.timeout),
        &mut progress,
    )
    .await?;
    progress.clear();
    println!("Deployed {name}: build {build} is running");
    println!("  id:  {id}");
    println!(
        "  url: {}",
        agent["endpoints"]["base_url"].as_str().unwrap_or("-")
    );
    Ok(())
}

/// Follows a build's log until its `done` event; its status and reason.
/// A stream that breaks off is resumed after its last line.
async fn follow_build(
    client: &Client,
    build: &str,
    progress: &mut Progress,
) -> anyhow::Result<(String, Option<String>)> {
    let mut last_id: Option<String> = None;
    let mut retries = 0;
    loop {
        let mut request = client
            .request(
                reqwest::Method::GET,
                &format!("/v1/builds/{build}/logs?follow=true"),
            )
            // The stream lasts as long as the build: no overall timeout.
            .timeout(Duration::from_secs(24 * 3600))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut events = Events::new(client.send(request).await?);
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        let mut heard = Instant::now();
        let broke = loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = ticker.tick(), if progress.animated() => {
                    progress.tick();
                    if heard.elapsed() > STREAM_SILENCE {
                        break "the build log went silent".to_owned();
                    }
                    continue;
                }
                () = tokio::time::sleep(STREAM_SILENCE), if !progress.animated() => {
                    break "the build log went silent".to_owned();
                }
            };
            heard = Instant::now();
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => break "the build log stream ended early".to_owned(),
                Err(e) => break format!("{e:#}"),
            };
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            if event.event == "done" {
                let status = data["status"].as_str().unwrap_or("failed").to_owned();
                let reason = data["reason"].as_str().map(str::to_owned);
                return Ok((status, reason));
            }
            retries = 0;
            if event.id.is_some() {
                last_id = event.id;
            }
            let message = data["message"].as_str().unwrap_or(&event.data);
            progress.line(&format!("  {message}"));
        };
        retries += 1;
        if retries > STREAM_RETRIES {
            bail!("{broke}; gave up following build {build} (GET /v1/builds/{build} tells how it ends)");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the agent runs `build` (its `agent.deployed` event); the agent.
async fn wait_running(
    client: &Client,
    id: &str,
    build: &str,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let agent = client.get(&format!("/v1/agents/{id}")).await?;
        if agent["latest_build_id"] != build {
            bail!(
                "another build ({}) of the agent was queued meanwhile; not waiting for it",
                agent["latest_build_id"].as_str().unwrap_or("?")
            );
        }
        match agent["status"].as_str() {
            Some("running") if deployed(client, id, build).await? => return Ok(agent),
            Some("failed") => {
                let why = match agent["instance_id"].as_str() {
                    Some(instance) => client.get(&format!("/instances/{instance}")).await?
                        ["status_reason"]
                        .as_str()
                        .map(str::to_owned),
                    None => None,
                };
                bail!(
                    "the agent failed to start: {} (see `hangar logs {id}`)",
                    why.as_deref().unwrap_or("no reason given")
                );
            }
            Some("stopped") => bail!(
                "build {build} is ready, but the agent is stopped: it runs the build once started (POST /v1/agents/{id}/start)"
            ),
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "the agent did not run build {build} within {} s (status {}); `hangar logs {id}` may say why",
                timeout.as_secs(),
                agent["status"]
            );
        }
        let until = Instant::now() + POLL;
        while Instant::now() < until {
            progress.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether the organization's events say the agent runs `build`.
async fn deployed(client: &Client, id: &str, build: &str) -> anyhow::Result<bool> {
    let events = client
        .get("/v1/events?type=agent.deployed&limit=100")
        .await?;
    Ok(events.as_array().is_some_and(|events| {
        events
            .iter()
            .any(|e| e["data"]["agent_id"] == id && e["data"]["build_id"] == build)
    }))
}
