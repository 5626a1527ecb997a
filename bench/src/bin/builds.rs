//! Upload → running: how long from opening an upload to the first answered
//! invoke of a Python agent with no dependencies, through a real
//! `hangar serve`, against starting the same agent directly with `python3`.
//!
//! The target (issue "Builds"): upload → running of a no-dependency Python
//! agent ≤ 2 s.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! 1. `hangar serve --listen 127.0.0.1:0` (the `hangar` binary next to this
//!    one, or `--hangar`) in a fresh temporary directory.
//! 2. Each timed round, on one keep-alive client: `POST /v1/uploads`, `PUT`
//!    of a `.tar.gz` of `bench/agents/fast` (made once, before timing, with a
//!    round-specific comment appended to `main.py`, so every round is a new
//!    source: unpacked, hashed and published, never a reused artifact),
//!    `POST /v1/agents` with the upload as its source, then `GET
//!    /v1/agents/{id}` every 5 ms until it is `running`, then `POST
//!    /v1/agents/{id}/invoke` until one answers 200 with the echoed input.
//!    The clock stops at that answer. Off the clock the agent is deleted and
//!    its replicas are waited away.
//! 3. Baseline, in the same run, alternating with the rounds above:
//!    `python3 -u main.py` of the same unpacked files with a free `PORT`,
//!    `GET /health` every 5 ms until 200, then one `POST /invoke`; the clock
//!    stops at its answer; the process is killed off the clock.
//!
//! The binary exits 0 whether or not the target is met: it is a
//! measurement, not a test.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, require_root, terminate, TempDir};
use hangar_bench::{cpu_ticks, free_port, load_average, percentile, sorted_ms, steal_percent};
use serde_json::{json, Value};

/// The admin key `hangar serve` is started with.
const KEY: &str = "hgr_benchbuilds000000000000000000000000000000";
/// Target: upload → running, p50, in ms.
const TARGET_MS: f64 = 2000.0;

/// Measures upload → running of a no-dependency Python agent against a
/// direct `python3` start. Needs root.
#[derive(Debug, Parser)]
#[command(name = "builds")]
struct Args {
    /// Timed rounds of each path.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The `hangar` binary (default: `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
}

/// A running `hangar serve`, stopped on drop with its replicas removed.
struct Serve {
    child: Child,
    url: String,
    hangar: PathBuf,
    dir: TempDir,
}

impl Serve {
    fn start(hangar: &Path) -> Result<Self> {
        let dir = TempDir::new("bld")?;
        let log = fs::File::create(dir.0.join("serve.log"))?;
        let mut child = Command::new(hangar)
            .current_dir(&dir.0)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("HANGAR_ADMIN_KEY", KEY)
            // The per-key limit stays on (its cost is measured) but above any load.
            .env("HANGAR_RATE_LIMIT", "1000000/s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawning {} serve", hangar.display()))?;
        let stdout = child.stdout.take().context("serve's stdout")?;
        let mut serve = Self {
            child,
            url: String::new(),
            hangar: hangar.to_path_buf(),
            dir,
        };
        let mut reader = BufReader::new(stdout);
        serve.url = loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!(
                    "hangar serve exited before listening: {}",
                    fs::read_to_string(serve.dir.0.join("serve.log")).unwrap_or_default()
                );
            }
            if let Some(rest) = line.strip_prefix("hangar listening on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .context("no URL in the listening line")?
                    .to_owned();
            }
        };
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok(serve)
    }

    fn shims(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.0.join("hangar-data/runtime/shims"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// One timed round: upload → running → first answer. Returns the time
    /// and the agent's id.
    async fn round(
        &self,
        client: &reqwest::Client,
        archive: Vec<u8>,
        name: &str,
    ) -> Result<(Duration, String)> {
        let start = Instant::now();
        let (status, upload) = self
            .call(client, reqwest::Method::POST, "/v1/uploads", None)
            .await?;
        ensure!(status == 201, "POST /v1/uploads: {status} {upload}");
        let url = upload["data"]["upload_url"]
            .as_str()
            .context("no upload_url")?
            .to_owned();
        let put = client.put(&url).body(archive).send().await?;
        ensure!(put.status() == 200, "PUT upload: {}", put.status());
        let (status, created) = self
            .call(
                client,
                reqwest::Method::POST,
                "/v1/agents",
                Some(json!({"name": name, "cloud_id": "local",
                    "source": {"type": "upload", "archive_url": url}})),
            )
            .await?;
        ensure!(status == 201, "POST /v1/agents: {status} {created}");
        let agent = created["data"]["id"].as_str().context("no id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, a) = self
                .call(
                    client,
                    reqwest::Method::GET,
                    &format!("/v1/agents/{agent}"),
                    None,
                )
                .await?;
            match a["data"]["status"].as_str() {
                Some("running") => break,
                Some("failed") => bail!("the agent failed: {a}"),
                _ => {}
            }
            ensure!(Instant::now() < deadline, "never running: {a}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        loop {
            let (status, answer) = self
                .call(
                    client,
                    reqwest::Method::POST,
                    &format!("/v1/agents/{agent}/invoke"),
                    Some(json!({"input": {"q": 1}})),
                )
                .await?;
            if status == 200 && answer["data"]["output"]["q"] == 1 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "never answered: {status} {answer}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok((start.elapsed(), agent))
    }

    async fn delete(&self, client: &reqwest::Client, agent: &str) -> Result<()> {
        let (status, body) = self
            .call(
                client,
                reqwest::Method::DELETE,
                &format!("/v1/agents/{agent}"),
                None,
            )
            .await?;
        ensure!(
            status == 200 || status == 204,
            "DELETE {agent}: {status} {body}"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.shims().is_empty() {
            ensure!(Instant::now() < deadline, "replicas left after delete");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        terminate(&mut self.child);
        for shim in self.shims() {
            let _ = Command::new(&self.hangar)
                .args(["shim", "cleanup"])
                .arg(&shim)
                .status();
        }
    }
}

/// The baseline: the agent started directly, until its first answer.
async fn direct(client: &reqwest::Client, dir: &Path) -> Result<Duration> {
    let port = free_port()?;
    let start = Instant::now();
    let mut child = Command::new("python3")
        .args(["-u", "main.py"])
        .current_dir(dir)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning python3")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = async {
        loop {
            let health = client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await;
            if matches!(&health, Ok(r) if r.status() == 200) {
                break;
            }
            ensure!(Instant::now() < deadline, "python3 never healthy");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let answer: Value = client
            .post(format!("http://127.0.0.1:{port}/invoke"))
            .body(r#"{"q":1}"#)
            .send()
            .await?
            .json()
            .await?;
        ensure!(answer["output"]["q"] == 1, "bad answer {answer}");
        Ok(start.elapsed())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A `.tar.gz` of `dir`.
fn tar_gz(dir: &Path) -> Result<Vec<u8>> {
    let out = Command::new("tar")
        .args(["czf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .context("running tar")?;
    ensure!(out.status.success(), "tar failed: {out:?}");
    Ok(out.stdout)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    require_root("hangar serve runs replicas in sandboxes")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let agent_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast");
    let main_py = fs::read_to_string(agent_dir.join("main.py")).context("agents/fast/main.py")?;

    // One source per round, made before timing.
    let sources = TempDir::new("src")?;
    let mut archives = Vec::new();
    for round in 0..args.rounds {
        let dir = sources.0.join(format!("r{round}"));
        fs::create_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        fs::write(dir.join("main.py"), format!("{main_py}\n# round {round}\n"))?;
        fs::set_permissions(dir.join("main.py"), fs::Permissions::from_mode(0o644))?;
        archives.push((tar_gz(&dir)?, dir));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let serve = Serve::start(&hangar_bin)?;
    eprintln!("hangar serve at {} in {}", serve.url, serve.dir.0.display());
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4)
        .build()?;

    // One untimed round of each, so first-use costs (page cache, the bridge)
    // are not in the figures.
    rt.block_on(async {
        let (_, agent) = serve
            .round(&client, archives[0].0.clone(), "warmup")
            .await?;
        serve.delete(&client, &agent).await?;
        direct(&client, &archives[0].1).await.map(|_| ())
    })?;

    let before = cpu_ticks();
    let mut hangar = Vec::new();
    let mut baseline = Vec::new();
    for (round, (archive, dir)) in archives.iter().enumerate() {
        let (took, agent) =
            rt.block_on(serve.round(&client, archive.clone(), &format!("bench-{round}")))?;
        hangar.push(took);
        rt.block_on(serve.delete(&client, &agent))?;
        baseline.push(rt.block_on(direct(&client, dir))?);
    }
    let steal = steal_percent(before, cpu_ticks());

    let h = sorted_ms(&hangar);
    let b = sorted_ms(&baseline);
    println!(
        "upload → running, {} rounds (load average {}, steal {})",
        args.rounds,
        load_average(),
        steal.map_or("n/a".to_owned(), |s| format!("{s:.1}%"))
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "path", "p50 ms", "max ms", "× direct"
    );
    for (name, sorted) in [
        ("hangar: upload → first answer", &h),
        ("direct: python3 → first answer", &b),
    ] {
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>9.2}",
            name,
            percentile(sorted, 50.0),
            percentile(sorted, 100.0),
            percentile(sorted, 50.0) / percentile(&b, 50.0)
        );
    }
    let p50 = percentile(&h, 50.0);
    println!(
        "target: p50 ≤ {TARGET_MS:.0} ms → {} ({p50:.1} ms)",
        if p50 <= TARGET_MS { "met" } else { "NOT met" }
    );
    drop(serve);
    Ok(())
}
