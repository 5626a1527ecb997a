//! Async job throughput: jobs accepted → completed per second through a real
//! `hangar serve` on SQLite, against the same number of synchronous invokes
//! through the same server and of direct calls to the replica, in one run.
//!
//! The target (issue "Gateway", async part): ≥ 2,000 async jobs/s on SQLite.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! 1. `hangar serve --listen 127.0.0.1:0 --job-concurrency <cap>` (the
//!    `hangar` binary next to this one, or `--hangar`) in a fresh temporary
//!    directory (SQLite in its data dir). It deploys `bench/agents/fast` (a
//!    single-threaded asyncio HTTP/1.1 server, standard library only:
//!    `POST /invoke` answers `{"output": <body>}`), waits until the instance
//!    runs and finds the replica's IP with an exec.
//! 2. Warm-up: `--warmup` async jobs, waited for, untimed.
//! 3. Async: `--jobs` jobs `POST /v1/agents/{id}/invoke {"input":{"q":i},
//!    "async":true}` from `--connections` concurrent senders (one keep-alive
//!    client). The clock starts before the first request and stops at the
//!    last job's `finished_at` as the server recorded it (milliseconds, same
//!    machine clock), so polling for results costs nothing on the clock.
//!    Afterwards every job is read back and must be `completed` with its own
//!    input echoed; any other answer fails the run.
//! 4. Baselines, same count and concurrency: synchronous invokes through the
//!    same server (`{"input":{"q":i}}`, checked), then direct `POST
//!    <replica>:8080/invoke` (checked).
//!
//! The binary exits 0 whether or not the target is met: it is a measurement,
//! not a test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, require_root};
use hangar_bench::serve::{Deployed, Serve};
use hangar_bench::{cpu_ticks, load_average, steal_percent};
use serde_json::{json, Value};

/// The admin key `hangar serve` is started with.
const KEY: &str = "hgr_benchjobs0000000000000000000000000000000000";
/// Target: async jobs per second, accepted → completed.
const TARGET: f64 = 2000.0;

/// Measures async jobs/s through `hangar serve` on SQLite. Needs root.
#[derive(Debug, Parser)]
#[command(name = "jobs")]
struct Args {
    /// Timed jobs (and baseline requests per path).
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Untimed jobs first.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The server's per-agent job concurrency (`--job-concurrency`).
    #[arg(long, default_value_t = 32)]
    job_concurrency: u32,
    /// The `hangar` binary (default: `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
}

/// Sends `count` requests from `connections` tasks; `send(i)` sends the
/// i-th and checks its answer. Returns the answers' values in order and the
/// time until the last one.
async fn fan_out<F, Fut>(
    count: usize,
    connections: usize,
    send: F,
) -> Result<(Vec<String>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let send = Arc::new(send);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, send) = (next.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                mine.push((i, send(i).await?));
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = vec![String::new(); count];
    for task in tasks {
        for (i, v) in task.await.context("a sender panicked")?? {
            all[i] = v;
        }
    }
    Ok((all, t0.elapsed()))
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Submits `count` async jobs (inputs `{"q": offset + i}`); returns their
/// IDs, the wall-clock start, and how long accepting took.
async fn submit(
    client: &reqwest::Client,
    url: &str,
    count: usize,
    offset: usize,
    connections: usize,
) -> Result<(Vec<String>, SystemTime, Duration)> {
    let start = SystemTime::now();
    let (client, url) = (client.clone(), url.to_owned());
    let (ids, took) = fan_out(count, connections, move |i| {
        let req = client
            .post(&url)
            .bearer_auth(KEY)
            .json(&json!({"input": {"q": offset + i}, "async": true}));
        async move {
            let res = req.send().await?;
            let status = res.status();
            let body: Value = res.json().await?;
            ensure!(status == 202, "accepting a job: {status} {body}");
            Ok(body["data"]["job_id"]
                .as_str()
                .context("no job_id")?
                .to_owned())
        }
    })
    .await?;
    Ok((ids, start, took))
}

/// Reads every job back (off the clock), checks it completed with its
/// input echoed, and returns the latest `finished_at` in Unix ms.
async fn check_jobs(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    offset: usize,
) -> Result<i64> {
    let mut last = 0;
    for (i, id) in ids.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(300);
        let job = loop {
            let job: Value = client
                .get(format!("{base}/v1/jobs/{id}"))
                .bearer_auth(KEY)
                .send()
                .await?
                .json()
                .await?;
            match job["data"]["status"].as_str() {
                Some("completed") => break job,
                Some("pending" | "running") => {
                    ensure!(Instant::now() < deadline, "job {id} never finished: {job}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => bail!("job {id} did not complete: {job}"),
            }
        };
        ensure!(
            job["data"]["output"]["q"] == json!(offset + i),
            "job {id} answered someone else's input: {job}"
        );
        let finished = job["data"]["finished_at"]
            .as_str()
            .and_then(chrono_ms)
            .context("no finished_at")?;
        last = last.max(finished);
    }
    Ok(last)
}

/// RFC 3339 (`2024-01-15T14:30:00.123Z`) → Unix ms.
fn chrono_ms(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.jobs >= 1 && args.connections >= 1,
        "--jobs and --connections must be at least 1"
    );
    require_root("hangar serve runs replicas in sandboxes")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let agent_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let concurrency = args.job_concurrency.to_string();
    let serve = Serve::start(
        &hangar_bin,
        "jobs",
        KEY,
        &["--job-concurrency", concurrency.as_str()],
    )?;
    eprintln!("hangar serve at {} in {}", serve.url, serve.dir.0.display());
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(60))
        .build()?;
    rt.block_on(async {
        let Deployed { agent, ip, .. } = serve.deploy(&client, "bench-jobs", &agent_dir).await?;
        eprintln!("agent {agent}, replica at {ip}:8080");
        let invoke_url = format!("{}/v1/agents/{agent}/invoke", serve.url);

        let (warm, _, _) = submit(&client, &invoke_url, args.warmup, 0, args.connections).await?;
        check_jobs(&client, &serve.url, &warm, 0).await?;
        eprintln!("warm-up: {} jobs completed", warm.len());

        let load_before = load_average();
        let ticks = cpu_ticks();
        let offset = args.warmup;
        let (ids, start, accepting) =
            submit(&client, &invoke_url, args.jobs, offset, args.connections).await?;
        let last = check_jobs(&client, &serve.url, &ids, offset).await?;
        let span_ms = (last - unix_ms(start)).max(1);
        let jobs_per_s = args.jobs as f64 / (span_ms as f64 / 1000.0);
        let accepted_per_s = args.jobs as f64 / accepting.as_secs_f64();

        let sync_client = client.clone();
        let url = invoke_url.clone();
        let (_, sync_took) = fan_out(args.jobs, args.connections, move |i| {
            let req = sync_client
                .post(&url)
                .bearer_auth(KEY)
                .json(&json!({"input": {"q": i}}));
            async move {
                let body: Value = req.send().await?.json().await?;
                ensure!(body["data"]["output"]["q"] == json!(i), "sync invoke: {body}");
                Ok(String::new())
            }
        })
        .await?;
        let direct_client = client.clone();
        let direct_url = format!("http://{ip}:8080/invoke");
        let (_, direct_took) = fan_out(args.jobs, args.connections, move |i| {
            let req = direct_client.post(&direct_url).json(&json!({"q": i}));
            async move {
                let body: Value = req.send().await?.json().await?;
                ensure!(body["output"]["q"] == json!(i), "direct: {body}");
                Ok(String::new())
            }
        })
        .await?;
        let steal = steal_percent(ticks, cpu_ticks());
        let load_after = load_average();

        let sync_per_s = args.jobs as f64 / sync_took.as_secs_f64();
        let direct_per_s = args.jobs as f64 / direct_took.as_secs_f64();
        println!(
            "{} jobs, {} connections, per-agent job concurrency {}; CPU steal {}; load average {load_before} → {load_after}",
            args.jobs,
            args.connections,
            args.job_concurrency,
            steal.map_or("n/a".to_owned(), |s| format!("{s:.1}%"))
        );
        println!();
        println!("| path | requests | seconds | per second |");
        println!("|---|---:|---:|---:|");
        println!(
            "| async jobs, accepted → completed (first request → last `finished_at`) | {} | {:.2} | {:.0} |",
            args.jobs,
            span_ms as f64 / 1000.0,
            jobs_per_s
        );
        println!(
            "| async jobs, accepting only (`202` answers) | {} | {:.2} | {:.0} |",
            args.jobs,
            accepting.as_secs_f64(),
            accepted_per_s
        );
        println!(
            "| sync invokes through Hangar | {} | {:.2} | {sync_per_s:.0} |",
            args.jobs,
            sync_took.as_secs_f64()
        );
        println!(
            "| direct `POST <replica>:8080/invoke` | {} | {:.2} | {direct_per_s:.0} |",
            args.jobs,
            direct_took.as_secs_f64()
        );
        println!();
        println!(
            "async jobs/s ÷ sync invokes/s = {:.2}×; target ≥ {TARGET:.0} jobs/s: {}",
            jobs_per_s / sync_per_s,
            if jobs_per_s >= TARGET { "met" } else { "NOT met" }
        );
        anyhow::Ok(())
    })
}
