//! Logs: how fast one replica's output gets into the store and out to
//! followers, and how soon a new line reaches 50 followers, through a real
//! `hangar serve`, against the same agent's output read straight from a pipe.
//!
//! The targets (issue "Logs, metrics, status and webhooks"):
//! 1. log ingest ≥ 100,000 lines/s per core from one replica with followers
//!    attached — "per core" is lines ÷ CPU-seconds `hangar serve` used;
//! 2. 50 concurrent followers see a new log line within 100 ms p99.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! - `hangar serve` on SQLite in a fresh temporary directory
//!   ([`hangar_bench::serve`]), with `bench/agents/logs` deployed from its
//!   directory: a single-threaded asyncio server (standard library only)
//!   that on `POST /burst {"run","count","bytes"}` writes `count` numbered
//!   lines `INFO burst <run> <i> <count> xxx…` (`bytes` long) to stdout as
//!   fast as it can and answers with CLOCK_REALTIME before the first and
//!   after the last write; on `POST /tick {"k"}` it writes one line `INFO
//!   tick <k> <ns>` with the CLOCK_REALTIME of the write and answers it.
//!   Triggers go straight to the replica's address on the bridge, so they
//!   cost `hangar serve` nothing.
//! - Two more copies of the same agent run as plain processes, the
//!   baselines: one with stdout to `/dev/null` (what writing costs), one
//!   with stdout piped to this benchmark, which reads and checks the lines
//!   as a shim would, minus storing and broadcasting.
//!
//! Latency (target 2) first: `--latency-followers` SSE followers attach,
//! alternating between `GET /instances/{org}/{id}/logs?follow=true` and `GET
//! /v1/agents/{id}/logs?follow=true`; then `--ticks` ticks, one every
//! `--tick-interval-ms`, each sent to the replica and to the piped agent.
//! For every (follower, tick) the delay is the follower's receipt time
//! minus the time in the line (both CLOCK_REALTIME of this machine). The
//! baselines: the piped agent's line read from the pipe, and the replica's
//! HTTP answer to the tick (written after the print).
//!
//! Ingest (target 1), `--bursts` times: `--followers` followers attach
//! (alternating APIs as above), then one burst of `--lines` lines is
//! requested from the replica. The clock runs from the agent's first write
//! to (a) the newest stored line being the burst's last — polled every 10
//! ms with `GET …/logs?lines=1` — and (b) every follower having received
//! the last line. CPU time of `hangar serve` (and separately of the
//! replica's `hangar shim`) is read from `/proc/<pid>/stat` right before
//! the request and once every follower is done. Then, off the clock, the
//! checks: every follower got every number of the burst exactly once, in
//! order, with increasing event ids; the store keeps only the newest
//! 100,000 lines of an instance (trimmed every 1,000 lines), so the store
//! is read directly (the SQLite file, through `hangar_store`) and the
//! burst's stored lines must be an unbroken run of numbers ending at the
//! last, each once, in `seq` order, at least `min(lines, 100000)` of them;
//! and both logs APIs' newest 10,000 lines (their maximum) must be the
//! burst's last 10,000. The baselines follow each burst: the same burst
//! from the `/dev/null` agent and from the piped agent (clock: first write
//! → last line read from the pipe, every number checked).
//!
//! A failed check is reported and makes the verdict "not met"; the binary
//! exits 0 either way: it is a measurement, not a test.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, require_root, terminate};
use hangar_bench::serve::{Deployed, Serve};
use hangar_bench::{
    cpu_ticks, find_program, free_port, load_average, median, percentile, process_cpu, sorted_ms,
    steal_percent,
};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The admin key `hangar serve` is started with.
const KEY: &str = "hgr_benchlogs0000000000000000000000000000000000";
/// The port the agent listens on in its sandbox.
const AGENT_PORT: u16 = 8080;
/// Target 1: lines stored per CPU-second of `hangar serve`.
const INGEST_TARGET: f64 = 100_000.0;
/// Target 2: p99 of the follower delay, in ms.
const LATENCY_TARGET_MS: f64 = 100.0;
/// How many lines an instance's stored log keeps (the controller's default).
const KEPT: usize = 100_000;
/// The most lines a logs API returns at once.
const API_MAX: usize = 10_000;
/// How often the newest stored line is polled during a burst.
const POLL: Duration = Duration::from_millis(10);

/// Measures log ingest into the store and to followers, and the delay to
/// 50 followers, through `hangar serve`. Needs root.
#[derive(Debug, Parser)]
#[command(name = "logs")]
struct Args {
    /// Lines per burst.
    #[arg(long, default_value_t = 200_000)]
    lines: usize,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Timed bursts (each with its baselines).
    #[arg(long, default_value_t = 3)]
    bursts: usize,
    /// Followers attached during a burst, each must receive every line.
    #[arg(long, default_value_t = 5)]
    followers: usize,
    /// Followers attached during the ticks.
    #[arg(long, default_value_t = 50)]
    latency_followers: usize,
    /// Ticks (one line each) for the latency target.
    #[arg(long, default_value_t = 200)]
    ticks: usize,
    /// Time between the starts of two ticks, in ms.
    #[arg(long, default_value_t = 20)]
    tick_interval_ms: u64,
    /// The `hangar` binary (default: `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
}

/// Now, on CLOCK_REALTIME, in ns since the epoch: the clock the agent
/// stamps its lines with.
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What a log line of the agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentLine {
    /// Line `i` of burst `run`, of `count`.
    Burst { run: u64, i: usize, count: usize },
    /// Tick `k`, written at `ns`.
    Tick { k: usize, ns: i64 },
}

/// Parses the agent's line (or the message Hangar stored of it, its level
/// word stripped) anywhere in `text`.
fn agent_line(text: &str) -> Option<AgentLine> {
    if let Some(at) = text.find("burst ") {
        let mut words = text[at + 6..].split(' ');
        let run = words.next()?.parse().ok()?;
        let i = words.next()?.parse().ok()?;
        let count = words.next()?.parse().ok()?;
        return Some(AgentLine::Burst { run, i, count });
    }
    let at = text.find("tick ")?;
    let mut words = text[at + 5..].split(' ');
    let k = words.next()?.parse().ok()?;
    let ns = words.next()?.trim_end().parse().ok()?;
    Some(AgentLine::Tick { k, ns })
}

/// The `message` of a log entry's JSON as the logs APIs send it, without
/// parsing the whole object (a follower parses hundreds of thousands of
/// them). The agent's messages hold no quotes or escapes.
fn message_of(data: &str) -> Option<&str> {
    let start = data.find("\"message\":\"")? + 11;
    let len = data[start..].find('"')?;
    Some(&data[start..start + len])
}

/// One server-sent event: its `id` and `data`.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    id: Option<i64>,
    data: String,
}

/// Splits complete events off the front of `buffer` (events end with a
/// blank line; comments, like keep-alives, are skipped).
fn take_events(buffer: &mut Vec<u8>) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut consumed = 0;
    while let Some(end) = buffer[consumed..].windows(2).position(|w| w == b"\n\n") {
        let block = String::from_utf8_lossy(&buffer[consumed..consumed + end]);
        let mut event = SseEvent::default();
        let mut any = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => {
                    event.id = value.parse().ok();
                    any = true;
                }
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    any = true;
                }
                _ => {}
            }
        }
        if any {
            events.push(event);
        }
        consumed += end + 2;
    }
    buffer.drain(..consumed);
    events
}

/// Which numbers of one burst arrived, how often and in what order.
#[derive(Debug, Clone)]
struct Tally {
    seen: Vec<u8>,
    duplicates: usize,
    out_of_order: usize,
    last: Option<usize>,
}

impl Tally {
    fn new(count: usize) -> Self {
        Self {
            seen: vec![0; count],
            duplicates: 0,
            out_of_order: 0,
            last: None,
        }
    }

    fn add(&mut self, i: usize) {
        match self.seen.get_mut(i) {
            Some(0) => self.seen[i] = 1,
            Some(_) => self.duplicates += 1,
            None => self.out_of_order += 1,
        }
        if self.last.is_some_and(|last| i <= last) {
            self.out_of_order += 1;
        }
        self.last = Some(i);
    }

    fn missing(&self) -> usize {
        self.seen.iter().filter(|&&s| s == 0).count()
    }

    /// Every number once, in order.
    fn complete(&self) -> bool {
        self.missing() == 0 && self.duplicates == 0 && self.out_of_order == 0
    }

    fn describe(&self) -> String {
        format!(
            "{} missing, {} duplicated, {} out of order",
            self.missing(),
            self.duplicates,
            self.out_of_order
        )
    }
}

/// What a follower is waiting for.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Every line of burst `run` (of `count`).
    Burst { run: u64, count: usize },
    /// Ticks 0 … `count`-1.
    Ticks { count: usize },
}

/// What one follower received.
#[derive(Debug)]
struct Followed {
    /// Burst: the numbers received.
    tally: Option<Tally>,
    /// Burst: when the last line arrived (ns, CLOCK_REALTIME).
    last_at: Option<i64>,
    /// Ticks: the delay of each tick received, in ns, by tick.
    delays: HashMap<usize, i64>,
    /// Ticks received more than once.
    tick_duplicates: usize,
    /// Event ids not above the previous one.
    ids_not_increasing: usize,
    /// Lines saying Hangar lost output.
    lost_notes: usize,
    /// Whether it saw the end it waited for before it was stopped.
    finished: bool,
}

/// Follows `url` (SSE) until `expect` is complete or `stop` says so;
/// signals `attached` once the server answered (it subscribes before it
/// answers).
async fn follow(
    client: reqwest::Client,
    url: String,
    expect: Expect,
    attached: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Result<Followed> {
    let mut res = client
        .get(&url)
        .bearer_auth(KEY)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .with_context(|| format!("following {url}"))?;
    ensure!(res.status() == 200, "following {url}: {}", res.status());
    attached.fetch_add(1, Ordering::SeqCst);
    let mut out = Followed {
        tally: match expect {
            Expect::Burst { count, .. } => Some(Tally::new(count)),
            Expect::Ticks { .. } => None,
        },
        last_at: None,
        delays: HashMap::new(),
        tick_duplicates: 0,
        ids_not_increasing: 0,
        lost_notes: 0,
        finished: false,
    };
    let mut buffer = Vec::new();
    let mut last_id = i64::MIN;
    while !out.finished {
        let chunk = tokio::select! {
            chunk = res.chunk() => chunk.with_context(|| format!("reading {url}"))?,
            _ = stop.changed() => None,
        };
        let Some(chunk) = chunk else {
            break;
        };
        let at = now_ns();
        buffer.extend_from_slice(&chunk);
        for event in take_events(&mut buffer) {
            if let Some(id) = event.id {
                if id <= last_id {
                    out.ids_not_increasing += 1;
                }
                last_id = id;
            }
            let Some(message) = message_of(&event.data) else {
                continue;
            };
            if message.starts_with("[hangar] output lines up to") {
                out.lost_notes += 1;
            }
            match (agent_line(message), expect, out.tally.as_mut()) {
                (
                    Some(AgentLine::Burst { run, i, .. }),
                    Expect::Burst { run: want, count },
                    Some(tally),
                ) if run == want => {
                    tally.add(i);
                    if i + 1 == count {
                        out.last_at = Some(at);
                        out.finished = true;
                    }
                }
                (Some(AgentLine::Tick { k, ns }), Expect::Ticks { count }, _) => {
                    if out.delays.insert(k, at - ns).is_some() {
                        out.tick_duplicates += 1;
                    }
                    if k + 1 == count {
                        out.finished = true;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The follow URL of follower `n`: even ones use the Instances API, odd
/// ones the Agents API (both with the smallest backlog, one line).
fn follow_url(serve: &Serve, d: &Deployed, n: usize) -> String {
    if n.is_multiple_of(2) {
        format!(
            "{}/instances/{}/{}/logs?follow=true&lines=1",
            serve.url, d.org, d.instance
        )
    } else {
        format!(
            "{}/v1/agents/{}/logs?follow=true&tail=1",
            serve.url, d.agent
        )
    }
}

/// Followers attached, following.
struct Followers {
    tasks: Vec<tokio::task::JoinHandle<Result<Followed>>>,
    stop: watch::Sender<bool>,
}

impl Followers {
    /// Waits until every follower saw what it waits for, or `limit` passed,
    /// then stops them and collects what they received.
    async fn collect(self, limit: Duration) -> Result<Vec<Followed>> {
        let until = Instant::now() + limit;
        while Instant::now() < until && !self.tasks.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for task in self.tasks {
            all.push(task.await.context("a follower panicked")??);
        }
        Ok(all)
    }
}

/// Attaches `n` followers and waits (up to 30 s) until the server answered
/// each of them.
async fn attach(serve: &Serve, d: &Deployed, n: usize, expect: Expect) -> Result<Followers> {
    let attached = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    // One connection each, like separate clients.
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building a follower's client")?;
        tasks.push(tokio::spawn(follow(
            client,
            follow_url(serve, d, i),
            expect,
            attached.clone(),
            stopped.clone(),
        )));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while attached.load(Ordering::SeqCst) < n {
        ensure!(
            !tasks.iter().any(tokio::task::JoinHandle::is_finished),
            "a follower ended before it was attached"
        );
        ensure!(Instant::now() < until, "followers never attached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Followers { tasks, stop })
}

/// What the piped agent's reader reports.
#[derive(Debug)]
enum PipeEvent {
    /// A burst's last line was read at `at` (ns); its numbers so far.
    BurstEnd { run: u64, at: i64, tally: Tally },
    /// A tick line was read, `delay_ns` after it was written.
    Tick { k: usize, delay_ns: i64 },
}

/// Reads the piped agent's stdout, as a shim would, and reports.
fn read_pipe(stdout: impl std::io::Read, tx: mpsc::Sender<PipeEvent>) {
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut line = String::new();
    let mut current: Option<(u64, Tally)> = None;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = now_ns();
        match agent_line(&line) {
            Some(AgentLine::Burst { run, i, count }) => {
                if current.as_ref().is_none_or(|(r, _)| *r != run) {
                    current = Some((run, Tally::new(count)));
                }
                if let Some((_, tally)) = current.as_mut() {
                    tally.add(i);
                }
                if i + 1 == count {
                    if let Some((run, tally)) = current.take() {
                        let _ = tx.send(PipeEvent::BurstEnd { run, at, tally });
                    }
                }
            }
            Some(AgentLine::Tick { k, ns }) => {
                let _ = tx.send(PipeEvent::Tick {
                    k,
                    delay_ns: at - ns,
                });
            }
            None => {}
        }
    }
}

/// The agent as a plain process on a loopback port; killed on drop.
struct Local {
    child: Child,
    url: String,
}

impl Local {
    /// Starts `python3 -u main.py` of `agent_dir` with stdout to `stdout`;
    /// returns once it listens (up to 20 s).
    fn start(python: &Path, agent_dir: &Path, stdout: Stdio) -> Result<Self> {
        let port = free_port().context("finding a free loopback port")?;
        let child = Command::new(python)
            .arg(agent_dir.join("main.py"))
            .current_dir(agent_dir)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", python.display()))?;
        let mut local = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = local.child.try_wait()? {
                bail!("the local agent exited: {status}");
            }
            ensure!(Instant::now() < deadline, "the local agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(local)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// `POST <base>/<path>` with a JSON body; the JSON answer (2 min limit).
async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Result<Value> {
    let res = client
        .post(format!("{base}{path}"))
        .json(&body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .with_context(|| format!("POST {base}{path}"))?;
    ensure!(res.status() == 200, "POST {base}{path}: {}", res.status());
    res.json().await.context("reading the agent's answer")
}

/// A burst's (first, last) write times from the agent's answer.
fn burst_times(answer: &Value) -> Result<(i64, i64)> {
    Ok((
        answer["first_ns"].as_i64().context("no first_ns")?,
        answer["last_ns"].as_i64().context("no last_ns")?,
    ))
}

/// The pid of the shim of the replica whose directory is below `shims`.
fn shim_pid(shims: &Path) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
        is_shim_of(&cmdline, shims).then_some(pid)
    })
}

/// Whether a `/proc/<pid>/cmdline` is `… shim run <dir below shims>`.
fn is_shim_of(cmdline: &[u8], shims: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(3).any(|w| {
        w[0] == b"shim"
            && w[1] == b"run"
            && Path::new(std::str::from_utf8(w[2]).unwrap_or("")).starts_with(shims)
    })
}

/// CPU time of `pid` (zero when unknown), for differences.
fn cpu_of(pid: Option<u32>) -> Duration {
    pid.and_then(process_cpu).unwrap_or_default()
}

/// The newest stored line's message, read through the Instances API.
async fn newest(serve: &Serve, client: &reqwest::Client, d: &Deployed) -> Result<Option<String>> {
    let body = serve
        .get(
            client,
            &format!("/instances/{}/{}/logs?lines=1", d.org, d.instance),
        )
        .await?;
    Ok(body["logs"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["message"].as_str())
        .map(str::to_owned))
}

/// Checks the store's lines of burst `run`: an unbroken run of numbers
/// ending at the last, each once, in seq order, at least `min(count,
/// KEPT)`. Returns how many it holds, and whether they pass (or what is
/// wrong).
async fn check_store(
    store: &hangar_store::Store,
    instance: &str,
    run: u64,
    count: usize,
) -> Result<(usize, std::result::Result<usize, String>)> {
    let mut numbers = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        let query = hangar_store::LogQuery {
            tail: None,
            since: None,
            after_seq: Some(after),
            limit: 10_000,
        };
        let lines = store.instance_logs(instance, &query).await?;
        let Some(last) = lines.last() else {
            break;
        };
        after = last.seq;
        numbers.extend(lines.iter().filter_map(|l| match agent_line(&l.message) {
            Some(AgentLine::Burst { run: r, i, .. }) if r == run => Some(i),
            _ => None,
        }));
    }
    Ok((
        numbers.len(),
        check_suffix(&numbers, count, count.min(KEPT)),
    ))
}

/// Whether `numbers` are `count - n … count - 1` in order for an `n` of at
/// least `at_least`: `Ok(n)` or what is wrong.
fn check_suffix(
    numbers: &[usize],
    count: usize,
    at_least: usize,
) -> std::result::Result<usize, String> {
    let n = numbers.len();
    if n < at_least {
        return Err(format!("{n} lines, expected at least {at_least}"));
    }
    if n > count {
        return Err(format!("{n} lines of a burst of {count}"));
    }
    match numbers
        .iter()
        .enumerate()
        .find(|(j, &i)| i != count - n + j)
    {
        Some((j, i)) => Err(format!(
            "line {j} of the newest {n} is number {i}, expected {}",
            count - n + j
        )),
        None => Ok(n),
    }
}

/// The numbers of burst `run` among the newest lines an API returns.
async fn api_tail(
    serve: &Serve,
    client: &reqwest::Client,
    path: &str,
    run: u64,
) -> Result<Vec<usize>> {
    let body = serve.get(client, path).await?;
    let lines = body["logs"]
        .as_array()
        .or_else(|| body["data"].as_array())
        .with_context(|| format!("no lines in GET {path}"))?;
    Ok(lines
        .iter()
        .filter_map(|l| match agent_line(l["message"].as_str()?) {
            Some(AgentLine::Burst { run: r, i, .. }) if r == run => Some(i),
            _ => None,
        })
        .collect())
}

/// One burst through Hangar, and its baselines.
#[derive(Debug, Default)]
struct Burst {
    /// First write → newest stored line is the last, s.
    stored_s: f64,
    /// First write → every follower has the last line, s (NaN when one
    /// never got it, or none was attached).
    delivered_s: f64,
    /// The agent's own writing time, s.
    written_s: f64,
    /// CPU-seconds of `hangar serve` and of the shim.
    serve_cpu_s: f64,
    shim_cpu_s: f64,
    /// CPU-seconds of this benchmark (the followers' parsing, mostly).
    bench_cpu_s: f64,
    /// Baselines: first write → last write to /dev/null; → last line read
    /// from the pipe, s.
    devnull_s: f64,
    pipe_s: f64,
    /// Failed checks.
    problems: Vec<String>,
    /// Lines the store holds of the burst.
    stored_lines: usize,
    /// Lines of the burst that were stored (the rest were lost).
    ingested: usize,
}

/// Everything one run needs.
struct Bench<'a> {
    args: &'a Args,
    serve: &'a Serve,
    d: &'a Deployed,
    store: hangar_store::Store,
    client: &'a reqwest::Client,
    replica: String,
    devnull: Local,
    piped: Local,
    pipe: mpsc::Receiver<PipeEvent>,
    serve_pid: Option<u32>,
    shim_pid: Option<u32>,
}

impl Bench<'_> {
    /// Receives the piped agent's next event (up to `limit`).
    fn pipe_event(&self, limit: Duration) -> Result<PipeEvent> {
        self.pipe
            .recv_timeout(limit)
            .context("the piped agent's line never came")
    }

    async fn burst(&self, run: u64) -> Result<Burst> {
        let args = &self.args;
        let count = args.lines;
        let body = json!({"run": run, "count": count, "bytes": args.line_bytes});
        let deadline = Instant::now() + Duration::from_secs(120);
        let followers = attach(
            self.serve,
            self.d,
            args.followers,
            Expect::Burst { run, count },
        )
        .await?;
        let cpu0 = (
            cpu_of(self.serve_pid),
            cpu_of(self.shim_pid),
            cpu_of(Some(std::process::id())),
        );
        let answer = post(self.client, &self.replica, "/burst", body.clone()).await?;
        let (first, last_write) = burst_times(&answer)?;
        let last = format!("burst {run} {} {count} ", count - 1);
        let mut said = Instant::now();
        let stored_at = loop {
            let message = newest(self.serve, self.client, self.d).await?;
            if message.as_deref().is_some_and(|m| m.starts_with(&last)) {
                break now_ns();
            }
            ensure!(
                Instant::now() < deadline,
                "the burst's last line was never stored (newest: {message:?})"
            );
            if said.elapsed() > Duration::from_secs(5) {
                eprintln!("  still waiting; the newest stored line: {message:?}");
                said = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        };
        // Followers get 30 s more than the store took.
        let followed = followers.collect(Duration::from_secs(30)).await?;
        let cpu1 = (
            cpu_of(self.serve_pid),
            cpu_of(self.shim_pid),
            cpu_of(Some(std::process::id())),
        );
        let mut out = Burst {
            stored_s: (stored_at - first) as f64 / 1e9,
            written_s: (last_write - first) as f64 / 1e9,
            serve_cpu_s: (cpu1.0 - cpu0.0).as_secs_f64(),
            shim_cpu_s: (cpu1.1 - cpu0.1).as_secs_f64(),
            bench_cpu_s: (cpu1.2 - cpu0.2).as_secs_f64(),
            ..Burst::default()
        };
        // No follower, no delivery time.
        let mut delivered = (!followed.is_empty()).then_some(first);
        for (n, f) in followed.iter().enumerate() {
            let tally = f
                .tally
                .as_ref()
                .context("a burst follower without a tally")?;
            if !f.finished || !tally.complete() || f.ids_not_increasing > 0 || f.lost_notes > 0 {
                out.problems.push(format!(
                    "follower {n}: {}{}; {} ids not increasing; {} lost-output notes",
                    tally.describe(),
                    if f.finished {
                        ""
                    } else {
                        ", never saw the last line"
                    },
                    f.ids_not_increasing,
                    f.lost_notes
                ));
            }
            delivered = delivered.zip(f.last_at).map(|(a, b)| a.max(b));
        }
        // Not a number when a follower never got the last line.
        out.delivered_s = delivered.map_or(f64::NAN, |at| (at - first) as f64 / 1e9);
        let (held, check) = check_store(&self.store, &self.d.instance, run, count).await?;
        out.stored_lines = held;
        if let Err(why) = check {
            out.problems.push(format!("store: {why}"));
        }
        // Lines that made it through: what the best follower received (a
        // follower only sees stored lines); without followers, what the
        // store holds (all of them while the burst fits its window).
        out.ingested = followed
            .iter()
            .filter_map(|f| f.tally.as_ref())
            .map(|t| count - t.missing())
            .max()
            .unwrap_or(held);
        let tail = API_MAX.min(count);
        for path in [
            format!(
                "/instances/{}/{}/logs?lines={API_MAX}",
                self.d.org, self.d.instance
            ),
            format!("/v1/agents/{}/logs?tail={API_MAX}", self.d.agent),
        ] {
            let numbers = api_tail(self.serve, self.client, &path, run).await?;
            if let Err(why) = check_suffix(&numbers, count, tail) {
                out.problems.push(format!("GET {path}: {why}"));
            }
        }
        // Baselines: the same burst to /dev/null, and through a pipe.
        let answer = post(self.client, &self.devnull.url, "/burst", body.clone()).await?;
        let (first, last_write) = burst_times(&answer)?;
        out.devnull_s = (last_write - first) as f64 / 1e9;
        let answer = post(self.client, &self.piped.url, "/burst", body).await?;
        let (first, _) = burst_times(&answer)?;
        match self.pipe_event(Duration::from_secs(60))? {
            PipeEvent::BurstEnd { run: r, at, tally } if r == run => {
                out.pipe_s = (at - first) as f64 / 1e9;
                if !tally.complete() {
                    out.problems
                        .push(format!("pipe baseline: {}", tally.describe()));
                }
            }
            other => bail!("unexpected from the pipe: {other:?}"),
        }
        Ok(out)
    }

    /// The ticks; returns (follower delays by API: Instances, Agents; the
    /// replica's HTTP answer after the print; the pipe read), in ns, and
    /// problems.
    async fn ticks(&self) -> Result<Ticks> {
        let args = &self.args;
        let count = args.ticks;
        let interval = Duration::from_millis(args.tick_interval_ms);
        let followers = attach(
            self.serve,
            self.d,
            args.latency_followers,
            Expect::Ticks { count },
        )
        .await?;
        let mut out = Ticks::default();
        let start = Instant::now();
        for k in 0..count {
            let at = start + interval * u32::try_from(k)?;
            tokio::time::sleep_until(at.into()).await;
            let answer = post(self.client, &self.replica, "/tick", json!({"k": k})).await?;
            let received = now_ns();
            let ns = answer["ns"]
                .as_i64()
                .context("no ns in the tick's answer")?;
            out.answer.push(received - ns);
            post(self.client, &self.piped.url, "/tick", json!({"k": k})).await?;
            match self.pipe_event(Duration::from_secs(10))? {
                PipeEvent::Tick { k: got, delay_ns } if got == k => out.pipe.push(delay_ns),
                other => bail!("unexpected from the pipe: {other:?}"),
            }
        }
        let followed = followers.collect(Duration::from_secs(10)).await?;
        for (n, f) in followed.into_iter().enumerate() {
            let missing = (0..count).filter(|k| !f.delays.contains_key(k)).count();
            if missing > 0 || f.tick_duplicates > 0 || f.ids_not_increasing > 0 {
                out.problems.push(format!(
                    "follower {n}: {missing} ticks missing, {} duplicated, {} ids not increasing",
                    f.tick_duplicates, f.ids_not_increasing
                ));
            }
            let delays = f.delays.values().copied();
            if n.is_multiple_of(2) {
                out.instances.extend(delays);
            } else {
                out.agents.extend(delays);
            }
        }
        Ok(out)
    }
}

/// The latency phase's figures, in ns.
#[derive(Debug, Default)]
struct Ticks {
    instances: Vec<i64>,
    agents: Vec<i64>,
    answer: Vec<i64>,
    pipe: Vec<i64>,
    problems: Vec<String>,
}

fn ns_durations(ns: &[i64]) -> Vec<Duration> {
    ns.iter()
        .map(|&n| Duration::from_nanos(u64::try_from(n).unwrap_or(0)))
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.lines >= 1, "--lines must be at least 1");
    ensure!(args.ticks >= 1, "--ticks must be at least 1");
    require_root("hangar serve runs replicas in sandboxes")?;
    let hangar = hangar_binary(args.hangar.as_deref())?;
    let python = find_program("python3").context("python3 is not in PATH")?;
    let agent_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/logs");
    ensure!(
        agent_dir.join("main.py").is_file(),
        "{} has no main.py",
        agent_dir.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let serve = Serve::start(&hangar, "lg", KEY, &[])?;
    eprintln!("hangar serve at {} in {}", serve.url, serve.dir.0.display());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let result = rt.block_on(async {
        let d = serve.deploy(&client, "bench-logs", &agent_dir).await?;
        let outcome = run(&args, &serve, &d, &client, &python, &agent_dir).await;
        // Clean up before reporting, also after a failure.
        if let Err(err) = serve.delete(&client, &d.instance).await {
            eprintln!("warning: {err:#}");
        }
        outcome
    });
    drop(serve);
    let report = result?;
    report.print(&args);
    Ok(())
}

/// Runs both phases on a deployed agent.
async fn run(
    args: &Args,
    serve: &Serve,
    d: &Deployed,
    client: &reqwest::Client,
    python: &Path,
    agent_dir: &Path,
) -> Result<Report> {
    eprintln!(
        "agent {}, instance {}, replica at {}",
        d.agent, d.instance, d.ip
    );
    let db = serve.data_dir().join("hangar.db");
    let sealer = hangar_store::seal::Sealer::new(&hangar_store::seal::Sealer::generate_key())
        .context("a sealer")?;
    let store = hangar_store::Store::connect(&format!("sqlite://{}", db.display()), sealer)
        .await
        .context("opening the store")?;
    let shims = serve.data_dir().join("runtime/shims");
    let shim = shim_pid(&shims);
    if shim.is_none() {
        eprintln!("warning: the replica's shim was not found; its CPU time reads as 0");
    }
    let devnull = Local::start(python, agent_dir, Stdio::null())?;
    let mut piped_child = Local::start(python, agent_dir, Stdio::piped())?;
    let stdout = piped_child
        .child
        .stdout
        .take()
        .context("the piped agent's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || read_pipe(stdout, tx));
    let bench = Bench {
        args,
        serve,
        d,
        store,
        client,
        replica: format!("http://{}:{AGENT_PORT}", d.ip),
        devnull,
        piped: piped_child,
        pipe: rx,
        serve_pid: Some(serve.child.id()),
        shim_pid: shim,
    };
    let load_before = load_average();
    eprintln!(
        "latency: {} followers, {} ticks every {} ms",
        args.latency_followers, args.ticks, args.tick_interval_ms
    );
    let t0 = cpu_ticks();
    let ticks = bench.ticks().await?;
    let t1 = cpu_ticks();
    let mut bursts = Vec::new();
    for run in 1..=args.bursts.max(1) {
        eprintln!(
            "burst {run}: {} lines of {} bytes, {} followers",
            args.lines, args.line_bytes, args.followers
        );
        let run = u64::try_from(run)?;
        bursts.push(bench.burst(run).await?);
    }
    let t2 = cpu_ticks();
    Ok(Report {
        ticks,
        bursts,
        steal_ticks: steal_percent(t0, t1),
        steal_bursts: steal_percent(t1, t2),
        load: (load_before, load_average()),
        shim_found: shim.is_some(),
    })
}

/// What a run measured.
struct Report {
    ticks: Ticks,
    bursts: Vec<Burst>,
    steal_ticks: Option<f64>,
    steal_bursts: Option<f64>,
    load: (String, String),
    shim_found: bool,
}

fn steal_text(steal: Option<f64>) -> String {
    steal.map_or_else(|| "unknown".to_owned(), |p| format!("{p:.1}%"))
}

impl Report {
    fn print(&self, args: &Args) {
        let n = args.lines as f64;
        println!();
        println!(
            "Load average (1, 5, 15 min) before: {}; after: {}.",
            self.load.0, self.load.1
        );
        println!();
        println!(
            "## Ingest: {} bursts of {} lines ({} bytes each), {} followers attached",
            self.bursts.len(),
            args.lines,
            args.line_bytes,
            args.followers
        );
        println!(
            "CPU time stolen by the hypervisor during the bursts: {}.",
            steal_text(self.steal_bursts)
        );
        if !self.shim_found {
            println!("(The shim's process was not found: its CPU reads 0.)");
        }
        println!();
        println!(
            "| burst | lines stored | lines lost | stored, s | stored lines/s | to every \
             follower, s | delivered lines/s | agent writing, s | serve CPU s | lines per serve \
             CPU-s | shim CPU s | lines per (serve + shim) CPU-s | bench CPU s | /dev/null, s | \
             pipe, s | lines/s via pipe | stored ÷ pipe |"
        );
        println!(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, b) in self.bursts.iter().enumerate() {
            let n = b.ingested as f64;
            println!(
                "| {} | {} | {} | {:.3} | {:.0} | {:.3} | {:.0} | {:.3} | {:.2} | {:.0} | {:.2} | \
                 {:.0} | {:.2} | {:.3} | {:.3} | {:.0} | {:.2}× |",
                i + 1,
                b.ingested,
                args.lines - b.ingested,
                b.stored_s,
                n / b.stored_s,
                b.delivered_s,
                n / b.delivered_s,
                b.written_s,
                b.serve_cpu_s,
                n / b.serve_cpu_s,
                b.shim_cpu_s,
                n / (b.serve_cpu_s + b.shim_cpu_s),
                b.bench_cpu_s,
                b.devnull_s,
                b.pipe_s,
                args.lines as f64 / b.pipe_s,
                (n / b.stored_s) / (args.lines as f64 / b.pipe_s),
            );
        }
        let rate = |f: &dyn Fn(&Burst) -> f64| -> Vec<f64> {
            self.bursts
                .iter()
                .map(|b| b.ingested as f64 / f(b))
                .collect()
        };
        let per_cpu = rate(&|b| b.serve_cpu_s);
        let stored = rate(&|b| b.stored_s);
        let delivered = rate(&|b| b.delivered_s);
        let pipe: Vec<f64> = self.bursts.iter().map(|b| n / b.pipe_s).collect();
        let devnull: Vec<f64> = self.bursts.iter().map(|b| n / b.devnull_s).collect();
        println!();
        println!(
            "Medians: {:.0} lines per CPU-second of hangar serve; wall clock {:.0} lines/s \
             stored, {:.0} lines/s to every follower; baselines {:.0} lines/s through a pipe, \
             {:.0} lines/s to /dev/null. Stored ÷ pipe = {:.2}×.",
            median(&per_cpu),
            median(&stored),
            median(&delivered),
            median(&pipe),
            median(&devnull),
            median(&stored) / median(&pipe),
        );
        let problems: Vec<&String> = self.bursts.iter().flat_map(|b| &b.problems).collect();
        let kept: Vec<String> = self
            .bursts
            .iter()
            .map(|b| b.stored_lines.to_string())
            .collect();
        println!(
            "Lines of each burst in the store afterwards: {}.",
            kept.join(", ")
        );
        if problems.is_empty() {
            println!(
                "Checks passed: every follower got every line once, in order; the store holds \
                 an unbroken newest window of each burst; both logs APIs' newest {API_MAX} are \
                 its last {API_MAX}."
            );
        } else {
            println!("Checks FAILED:");
            for p in &problems {
                println!("- {p}");
            }
        }
        let met = problems.is_empty() && median(&per_cpu) >= INGEST_TARGET;
        println!(
            "Target ingest ≥ {INGEST_TARGET:.0} lines/s per core (lines ÷ hangar serve's \
             CPU-seconds), every line stored and followed: {} ({:.0}).",
            if met { "met" } else { "NOT met" },
            median(&per_cpu)
        );

        println!();
        println!(
            "## Latency: {} followers, {} ticks every {} ms",
            args.latency_followers, args.ticks, args.tick_interval_ms
        );
        println!(
            "CPU time stolen by the hypervisor during the ticks: {}.",
            steal_text(self.steal_ticks)
        );
        println!();
        println!("| delay | samples | p50 ms | p90 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        let all: Vec<i64> = self
            .ticks
            .instances
            .iter()
            .chain(&self.ticks.agents)
            .copied()
            .collect();
        let rows: [(&str, &[i64]); 5] = [
            ("print → follower receives it, all followers", &all),
            (
                "… followers of `GET /instances/{org}/{id}/logs`",
                &self.ticks.instances,
            ),
            (
                "… followers of `GET /v1/agents/{id}/logs`",
                &self.ticks.agents,
            ),
            (
                "baseline: print → the replica's HTTP answer",
                &self.ticks.answer,
            ),
            (
                "baseline: print → read from a pipe (plain process)",
                &self.ticks.pipe,
            ),
        ];
        let mut p99_all = f64::INFINITY;
        for (i, (name, ns)) in rows.iter().enumerate() {
            let ms = sorted_ms(&ns_durations(ns));
            if i == 0 {
                p99_all = if ms.is_empty() {
                    f64::INFINITY
                } else {
                    percentile(&ms, 99.0)
                };
            }
            println!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                ms.len(),
                percentile(&ms, 50.0),
                percentile(&ms, 90.0),
                percentile(&ms, 99.0),
                ms.last().copied().unwrap_or(0.0)
            );
        }
        if self.ticks.problems.is_empty() {
            println!("Checks passed: every follower got every tick once.");
        } else {
            println!("Checks FAILED:");
            for p in &self.ticks.problems {
                println!("- {p}");
            }
        }
        let met = self.ticks.problems.is_empty() && p99_all <= LATENCY_TARGET_MS;
        println!(
            "Target {} followers see a new line within {LATENCY_TARGET_MS:.0} ms p99: {} \
             ({p99_all:.3} ms).",
            args.latency_followers,
            if met { "met" } else { "NOT met" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_lines_parse_as_printed_and_as_stored() {
        let printed = "INFO burst 3 17 200000 xxxx\n";
        let want = Some(AgentLine::Burst {
            run: 3,
            i: 17,
            count: 200_000,
        });
        assert_eq!(agent_line(printed), want);
        assert_eq!(agent_line("burst 3 17 200000 xxxx"), want);
        assert_eq!(
            agent_line("INFO tick 5 1700000000123456789\n"),
            Some(AgentLine::Tick {
                k: 5,
                ns: 1_700_000_000_123_456_789
            })
        );
        assert_eq!(agent_line("INFO listening on 8080"), None);
        assert_eq!(agent_line("burst x"), None);
    }

    #[test]
    fn messages_come_out_of_log_entries() {
        let line = hangar_core::logs::InstanceLogLine {
            seq: 7,
            timestamp: chrono::Utc::now(),
            replica_id: "rep_1".to_owned(),
            stream: hangar_core::logs::Stream::Stdout,
            level: hangar_core::logs::LogLevel::Info,
            message: "burst 1 2 3 xx".to_owned(),
        };
        // The shape the logs APIs send (see hangar-api's routes/logs.rs).
        let data = json!({
            "timestamp": line.timestamp.to_rfc3339(),
            "level": "info",
            "message": line.message,
            "stream": "stdout",
            "replica_id": line.replica_id,
        })
        .to_string();
        assert_eq!(message_of(&data), Some("burst 1 2 3 xx"));
        assert_eq!(message_of("{}"), None);
    }

    #[test]
    fn sse_events_are_split_at_blank_lines() {
        let mut buffer = b"id: 1\ndata: {\"a\":1}\n\n:\n\ndata: x\nid: 2\n\nid: 3\nda".to_vec();
        let events = take_events(&mut buffer);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some(1),
                    data: r#"{"a":1}"#.to_owned()
                },
                SseEvent {
                    id: Some(2),
                    data: "x".to_owned()
                },
            ]
        );
        assert_eq!(buffer, b"id: 3\nda");
        buffer.extend_from_slice(b"ta: y\n\n");
        assert_eq!(
            take_events(&mut buffer),
            vec![SseEvent {
                id: Some(3),
                data: "y".to_owned()
            }]
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn tallies_count_missing_duplicated_and_disordered_lines() {
        let mut t = Tally::new(4);
        for i in [0, 1, 2, 3] {
            t.add(i);
        }
        assert!(t.complete());
        let mut t = Tally::new(4);
        for i in [0, 2, 2, 1] {
            t.add(i);
        }
        assert_eq!((t.missing(), t.duplicates, t.out_of_order), (1, 1, 2));
        assert!(!t.complete());
    }

    #[test]
    fn stored_windows_must_be_the_newest_numbers_in_order() {
        assert_eq!(check_suffix(&[7, 8, 9], 10, 3), Ok(3));
        assert_eq!(check_suffix(&[0, 1, 2], 3, 3), Ok(3));
        assert!(check_suffix(&[8, 9], 10, 3).is_err());
        assert!(check_suffix(&[7, 9, 8], 10, 3).is_err());
        assert!(check_suffix(&[6, 7, 8], 10, 3).is_err());
    }

    #[test]
    fn shims_are_found_by_their_command_line() {
        let shims = Path::new("/tmp/hb-lg-1/hangar-data/runtime/shims");
        let ours = b"/x/hangar\0shim\0run\0/tmp/hb-lg-1/hangar-data/runtime/shims/rep_1\0";
        let theirs = b"/x/hangar\0shim\0run\0/tmp/hb-gw-2/hangar-data/runtime/shims/rep_1\0";
        assert!(is_shim_of(ours, shims));
        assert!(!is_shim_of(theirs, shims));
        assert!(!is_shim_of(b"/x/hangar\0serve\0", shims));
    }

    #[test]
    fn the_logs_agent_is_there() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/logs");
        assert!(dir.join("main.py").is_file());
    }
}
