//! HTTP load the request benchmarks (`gateway`, `nodes`) put on their
//! paths, measured one way for all of them: one path's request and the
//! check of its answer ([`Target`]), sequential latency in round-robin
//! blocks ([`latency`]), and throughput under wrk ([`wrk`]) or this
//! binary's own senders ([`builtin`]), each reading what the caller samples
//! (a server's CPU time, several nodes') just before and after the timed
//! part. Their figures sit side by side in BENCHMARKS.md, so how they are
//! taken must not drift apart.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Blocks the timed latency requests of each path are split into.
pub const BLOCKS: usize = 10;

/// One path's request: what it is called, where it goes, what it sends
/// and what its answer must contain.
#[derive(Clone)]
pub struct Target {
    /// Its name in the report.
    pub name: &'static str,
    /// Where it goes.
    pub url: String,
    /// The JSON body of a POST; `None` for a GET.
    pub body: Option<&'static str>,
    /// The API key it is sent with, if any.
    pub key: Option<&'static str>,
    /// A `Host` header instead of the URL's (instance URLs).
    pub host: Option<String>,
    /// The process answering (with its children), whose CPU time a run
    /// may count; `None` when nothing is counted (direct calls).
    pub server: Option<u32>,
    /// What a good answer contains (besides status 200).
    pub expect: Vec<String>,
}

impl Target {
    /// Sends one request; returns how long it took to the last body byte.
    /// The answer is checked after the clock stops.
    ///
    /// # Errors
    /// When it cannot be sent, or its answer is not the one expected.
    pub async fn send(&self, client: &reqwest::Client) -> Result<Duration> {
        let mut req = match self.body {
            Some(body) => client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
            None => client.get(&self.url),
        };
        if let Some(key) = self.key {
            req = req.bearer_auth(key);
        }
        if let Some(host) = &self.host {
            req = req.header(reqwest::header::HOST, host);
        }
        let t0 = Instant::now();
        let res = req.send().await.context("sending")?;
        let status = res.status();
        let body = res.bytes().await.context("reading the answer")?;
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&body);
        ensure!(
            status == 200 && self.expect.iter().all(|e| text.contains(e.as_str())),
            "{}: bad answer {status}: {text}",
            self.url
        );
        Ok(took)
    }

    /// The wrk script that sends this request.
    fn wrk_script(&self) -> String {
        let mut script = String::new();
        if let Some(body) = self.body {
            script.push_str(&format!(
                "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
            ));
        }
        if let Some(key) = self.key {
            script.push_str(&format!(
                "wrk.headers[\"Authorization\"] = \"Bearer {key}\"\n"
            ));
        }
        if let Some(host) = &self.host {
            script.push_str(&format!("wrk.headers[\"Host\"] = \"{host}\"\n"));
        }
        script
    }
}

/// A client like the load tool's: keep-alive, no proxy.
///
/// # Errors
/// When reqwest cannot build it.
pub fn client(idle: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(idle)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// Sequential latency: `warmup` requests per path, then `requests` timed
/// ones in [`BLOCKS`] blocks, round-robin over the paths (the first path
/// of each block rotates). One client (one connection) per path.
///
/// # Errors
/// The first failed request.
pub async fn latency(
    targets: &[Target],
    warmup: usize,
    requests: usize,
) -> Result<Vec<Vec<Duration>>> {
    let clients = targets
        .iter()
        .map(|_| client(1))
        .collect::<Result<Vec<_>>>()?;
    for (target, client) in targets.iter().zip(&clients) {
        for _ in 0..warmup {
            target.send(client).await?;
        }
    }
    let n = targets.len();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let per_block = requests.div_ceil(BLOCKS);
    for block in 0..BLOCKS {
        for offset in 0..n {
            let i = (block + offset) % n;
            let n = per_block.min(requests.saturating_sub(samples[i].len()));
            for _ in 0..n {
                let took = targets[i].send(&clients[i]).await?;
                samples[i].push(took);
            }
        }
    }
    Ok(samples)
}

/// A timed throughput run: requests per second over `seconds`, and what
/// the caller's sample read just before and just after.
#[derive(Debug, Clone, Copy)]
pub struct Timed<S> {
    /// Requests per second.
    pub rps: f64,
    /// How long it was timed.
    pub seconds: f64,
    /// The sample before.
    pub before: S,
    /// The sample after.
    pub after: S,
}

impl<S> Timed<S> {
    /// CPU time per request of a process whose CPU time was sampled as
    /// `before` and `after`; `None` without both or without a request.
    #[must_use]
    pub fn per_request(
        &self,
        before: Option<Duration>,
        after: Option<Duration>,
    ) -> Option<Duration> {
        let requests = self.rps * self.seconds;
        match (before, after) {
            (Some(b), Some(a)) if requests >= 1.0 => Some(a.saturating_sub(b).div_f64(requests)),
            _ => None,
        }
    }
}

/// Requests per second of `target` with wrk (one thread, `connections`
/// connections; the script goes in `scripts`), after one untimed second,
/// checking that every answer was 2xx.
///
/// # Errors
/// When wrk fails or reports a bad answer.
pub fn wrk<S>(
    wrk: &Path,
    scripts: &Path,
    target: &Target,
    connections: usize,
    duration: Duration,
    sample: impl Fn() -> S,
) -> Result<Timed<S>> {
    let path = scripts.join("request.lua");
    fs::write(&path, target.wrk_script())?;
    for (seconds, timed) in [(1, false), (duration.as_secs().max(1), true)] {
        let before = sample();
        let out = Command::new(wrk)
            .arg("-t1")
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("-s")
            .arg(&path)
            .arg(&target.url)
            .output()
            .context("running wrk")?;
        let after = sample();
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "wrk failed: {text}");
        ensure!(
            !text.contains("Non-2xx") && !text.contains("Socket errors"),
            "{}: bad answers under load: {text}",
            target.url
        );
        if timed {
            let rps = text
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
            return Ok(Timed {
                rps,
                seconds: seconds as f64,
                before,
                after,
            });
        }
    }
    bail!("unreachable: the timed run returns")
}

/// Requests per second of `target` over `duration` with `connections`
/// concurrent senders of this binary's client, after one untimed second.
///
/// # Errors
/// The first failed request.
pub async fn builtin<S>(
    target: &Target,
    connections: usize,
    duration: Duration,
    sample: impl Fn() -> S,
) -> Result<Timed<S>> {
    let client = client(connections)?;
    let done = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, target) = (client.clone(), target.clone());
        let (done, counting, stop) = (done.clone(), counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                target.send(&client).await?;
                if counting.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let before = sample();
    let t0 = Instant::now();
    tokio::time::sleep(duration).await;
    let n = done.load(Ordering::Relaxed);
    let took = t0.elapsed();
    let after = sample();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("a load task panicked")??;
    }
    let seconds = took.as_secs_f64();
    Ok(Timed {
        rps: n as f64 / seconds,
        seconds,
        before,
        after,
    })
}
