//! Cold start: how long the first request to an agent scaled to zero waits
//! for its answer, measured against `crun run` of the same agent in the same
//! run.
//!
//! The target (issue tracker): cold start → first byte of a trivial agent
//! ≤ 2× `crun run`. Scale to zero saves an idle agent's memory, and the cold
//! start is what the first caller after an idle period pays for it; the
//! ratio against a bare OCI runtime starting the same process says how much
//! of that wait is Hangar's own.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! 1. One directory holding `bench/agents/fast/main.py` (a single-threaded
//!    asyncio HTTP/1.1 server, standard library only: `GET /health` answers
//!    200, `POST /invoke` answers `{"output": <body>}`), copied into a
//!    temporary directory. Every row runs this same file with the same
//!    `python3` (the first in the sandbox's `PATH`, from the host's `/usr`).
//! 2. Hangar: `hangar serve --listen 127.0.0.1:0 --scale-to-zero-after 1`
//!    (the `hangar` binary next to this one, or `--hangar`) in a fresh
//!    directory, `HANGAR_ADMIN_KEY` set. The agent is deployed from the
//!    directory (`file://` source) with `"scaling": {"min_instances": 0,
//!    "max_instances": 1}` and 256 MiB of memory. A sample waits until the
//!    status endpoint says `READY_TO_COLD_START` and no replica is left (the
//!    driver's `runtime/shims` directory is empty), then times `POST
//!    /v1/agents/{id}/invoke` on a new connection from connecting to the
//!    first byte of the answer. The request is held while the replica
//!    starts (a sandbox through `hangar shim run`, its own network namespace
//!    on the CNI bridge, probed every 10 ms until `GET /health` answers).
//!    Right after, one more invoke is timed the same way: the warm path, for
//!    comparison.
//! 3. crun, the target's baseline: `crun run --detach` of an OCI bundle
//!    (`crun spec`, adjusted) built like Hangar's sandbox: a read-only root
//!    with read-only binds of the host's `/usr` and `/etc` (and the merged-
//!    `/usr` symlinks), a tmpfs `/tmp`, the agent's directory at `/app`,
//!    `python3 -u /app/main.py` as uid 65534 with no capabilities, the same
//!    memory and pids limits, `PORT` set to a free loopback port on the
//!    host's network (no network namespace: crun does not pay for the
//!    network Hangar sets up). Timed from spawning `crun run` to the first
//!    byte of `POST /invoke`, polled every 2 ms once `crun run` returned;
//!    `crun delete --force` runs off the clock. On a hybrid cgroup host
//!    whose v2 hierarchy has controllers, crun 1.8 refuses to run, so every
//!    crun command runs through `nsenter` into a mount namespace without
//!    `/sys/fs/cgroup/unified` (its ~1.5 ms count against crun).
//! 4. The same `python3` started directly as a process (uid 65534, no
//!    container), timed the same way: what Python itself costs.
//!
//! Every answer is checked after the clock stops (status 200 and this
//! sample's token echoed back; Hangar's with `"success": true`), so an error
//! never passes as a fast start. The three take turns, in a rotating order;
//! before every sample (of any row) Hangar is at zero with no replica left,
//! so each one starts on an equally quiet machine and drift in the machine's
//! load falls on every row alike. `--warmup` rounds first, untimed.
//!
//! Results are mean, p50 and p95 in ms and ratios of medians, printed as a
//! Markdown table with the CPU steal and the load average while timing. The
//! binary exits 0 whether or not the target is met: it is a measurement, not
//! a test. It fails on real errors, and when crun is missing.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, require_root, tail, terminate, TempDir};
use hangar_bench::probe::exchange;
use hangar_bench::{
    cpu_count, cpu_ticks, find_program, free_port, hybrid_with_controllers, kernel_release,
    load_average, print_conditions, steal_percent, unified_free_namespace, CgroupParent, Stats,
};
use serde_json::{json, Value};

/// The admin key `hangar serve` is started with.
const KEY: &str = "hgr_benchcoldstart000000000000000000000000000";
/// How often a starting baseline is polled.
const POLL: Duration = Duration::from_millis(2);
/// How long a start may take before the benchmark gives up.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long Hangar may take to scale to zero (idle time, the autoscaler's
/// 2 s look, the replica's stop).
const ZERO_DEADLINE: Duration = Duration::from_secs(120);
/// Quiet time before every sample, after Hangar is at zero.
const SETTLE: Duration = Duration::from_millis(250);
/// Target: Hangar's cold start ÷ crun's start, at most (medians).
const TARGET: f64 = 2.0;
/// Memory of the agent (Hangar's limit is the request) and of the crun
/// container, in MiB.
const MEMORY_MB: u64 = 256;
/// Pids limit of a Hangar replica, given to crun too.
const PIDS_LIMIT: i64 = 512;
/// The `PATH` in Hangar's sandboxes, given to crun and to the direct process.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
/// The uid and gid every row runs the agent as (`nobody`, as Hangar does).
const NOBODY: u32 = 65534;
/// Top-level host paths that merged-`/usr` systems make symlinks into
/// `/usr`, mirrored into the crun root as Hangar's sandbox does.
const USR_ALIASES: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Measures the cold start of an agent scaled to zero (invoke → first byte)
/// against `crun run` of the same agent. Needs root.
#[derive(Debug, Parser)]
#[command(name = "coldstart")]
struct Args {
    /// Timed samples per row.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Untimed rounds (one sample of each row) before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// The `hangar` binary (default: `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
    /// `RUST_LOG` of `hangar serve` (`debug` shows where a cold start's time
    /// goes, at some cost to it).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Copy `hangar serve`'s log (stderr, with timestamps) to this file at
    /// the end.
    #[arg(long)]
    keep_log: Option<PathBuf>,
}

/// The rows measured, in the order of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Hangar,
    Crun,
    Python,
}

const ROWS: [Row; 3] = [Row::Hangar, Row::Crun, Row::Python];

/// The order of the rows in round `round`: rotated by one each round.
fn order(round: usize) -> [Row; 3] {
    let mut rows = ROWS;
    rows.rotate_left(round % ROWS.len());
    rows
}

/// Creates directory `dir` with mode 0755, whatever the umask.
fn mkdir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 `POST` with `Connection: close`, as bytes.
fn post_request(path: &str, bearer: Option<&str>, body: &str) -> Vec<u8> {
    let auth = bearer
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status code and body of a whole HTTP/1.x answer (a `Content-Length`
/// body, a chunked one, or everything to the end).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the headers")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let rest = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    ensure!(
        status_line.starts_with("HTTP/1."),
        "not an HTTP answer: {status_line:?}"
    );
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = Some(value.parse::<usize>().context("a bad Content-Length")?);
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let end = rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("a chunk without a size line")?;
            let size_text = String::from_utf8_lossy(&rest[at..at + end]);
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .with_context(|| format!("a bad chunk size {size_text:?}"))?;
            at += end + 2;
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(at..at + size).context("a short chunk")?);
            at += size + 2;
        }
        body
    } else if let Some(length) = length {
        rest.get(..length).context("a short body")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Checks an agent's own answer to `POST /invoke` with `{"token": token}`.
fn check_agent(answer: &[u8], token: &str) -> Result<()> {
    let (status, body) = parse_response(answer)?;
    let text = String::from_utf8_lossy(&body);
    ensure!(status == 200, "status {status}: {text}");
    let json: Value = serde_json::from_slice(&body).with_context(|| format!("not JSON: {text}"))?;
    ensure!(
        json["output"]["token"] == token,
        "the answer lacks this sample's token: {text}"
    );
    Ok(())
}

/// Checks Hangar's answer to an invoke with `{"input": {"token": token}}`;
/// returns its `meta.latency_ms`, if it has one.
fn check_hangar(answer: &[u8], token: &str) -> Result<Option<f64>> {
    let (status, body) = parse_response(answer)?;
    let text = String::from_utf8_lossy(&body);
    ensure!(status == 200, "status {status}: {text}");
    let json: Value = serde_json::from_slice(&body).with_context(|| format!("not JSON: {text}"))?;
    ensure!(
        json["success"] == true && json["data"]["output"]["token"] == token,
        "the answer lacks success or this sample's token: {text}"
    );
    Ok(json["meta"]["latency_ms"].as_f64())
}

/// Polls `POST /invoke` on `address` every [`POLL`] until an answer's first
/// byte arrives; returns when that was, counted from `t0`. The answer is
/// checked off the clock. `alive` says whether the server can still come.
fn first_byte(
    address: SocketAddr,
    t0: Instant,
    token: &str,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    let request = post_request("/invoke", None, &json!({ "token": token }).to_string());
    let deadline = t0 + START_DEADLINE;
    loop {
        match exchange(address, &request, START_DEADLINE) {
            Ok((at, answer)) => {
                check_agent(&answer, token)
                    .with_context(|| format!("{address} answered, but not as expected"))?;
                return Ok(at.duration_since(t0));
            }
            Err(err) if Instant::now() > deadline => bail!(
                "no answer from {address} within {} s (last: {err})",
                START_DEADLINE.as_secs()
            ),
            Err(_) => {
                alive()?;
                std::thread::sleep(POLL);
            }
        }
    }
}

/// A running `hangar serve`; on drop it is stopped with SIGTERM and the
/// replicas left (replicas outlive the server) are removed with `hangar shim
/// cleanup`. Its directory is the caller's.
struct Serve {
    child: Child,
    address: SocketAddr,
    hangar: PathBuf,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Serve {
    fn start(hangar: &Path, dir: &Path, log_level: &str) -> Result<Self> {
        mkdir(dir)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime")?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let log = fs::File::create(dir.join("serve.log"))?;
        let mut child = Command::new(hangar)
            .current_dir(dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--scale-to-zero-after",
                "1",
            ])
            .env("HANGAR_ADMIN_KEY", KEY)
            // The per-key limit stays on (its cost is measured) but above any load.
            .env("HANGAR_RATE_LIMIT", "1000000/s")
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawning {} serve", hangar.display()))?;
        let stdout = child.stdout.take();
        let mut serve = Self {
            child,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            hangar: hangar.to_path_buf(),
            dir: dir.to_path_buf(),
            rt,
            client,
        };
        let mut reader = BufReader::new(stdout.context("serve's stdout")?);
        serve.address = loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!(
                    "hangar serve exited before listening: {}",
                    fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            if let Some(rest) = line.strip_prefix("hangar listening on ") {
                break listen_address(rest)?;
            }
        };
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok(serve)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn shims(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.join("hangar-data/runtime/shims"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.rt.block_on(async {
            let res = req
                .send()
                .await
                .with_context(|| format!("calling {path}"))?;
            let status = res.status().as_u16();
            let text = res.text().await?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        })
    }

    fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = self.call(reqwest::Method::GET, path, None)?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }

    /// Deploys the agent in `agent_dir` scaled between 0 and 1; returns
    /// (organization id, agent id, instance id) once it runs.
    fn deploy(&self, agent_dir: &Path) -> Result<(String, String, String)> {
        let me = self.get("/v1/me")?;
        let org = me["organization_id"]
            .as_str()
            .or_else(|| me["data"]["organization_id"].as_str())
            .context("no organization_id in /v1/me")?
            .to_owned();
        let body = json!({
            "name": "bench-coldstart",
            "cloud_id": "local",
            "source": {"type": "github", "repo": format!("file://{}", agent_dir.display())},
            "resources": {"cpu": 1, "memory_mb": MEMORY_MB},
            "scaling": {"min_instances": 0, "max_instances": 1},
        });
        let (status, created) = self.call(reqwest::Method::POST, "/v1/agents", Some(body))?;
        ensure!(status == 201, "deploying: {status} {created}");
        let agent = created["data"]["id"]
            .as_str()
            .context("no agent id")?
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let instance = loop {
            let view = self.get(&format!("/v1/agents/{agent}"))?;
            if let Some(instance) = view["data"]["instance_id"].as_str() {
                break instance.to_owned();
            }
            ensure!(Instant::now() < deadline, "never deployed: {view}");
            std::thread::sleep(Duration::from_millis(100));
        };
        loop {
            let inst = self.get(&format!("/instances/{instance}"))?;
            if inst["status"] == "running" {
                break;
            }
            ensure!(Instant::now() < deadline, "never running: {inst}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((org, agent, instance))
    }

    /// Waits until the instance is scaled to zero: the status endpoint says
    /// `READY_TO_COLD_START` and no replica's state is left.
    fn wait_zero(&mut self, org: &str, instance: &str) -> Result<()> {
        let deadline = Instant::now() + ZERO_DEADLINE;
        loop {
            let status = self.get(&format!("/instances/status/{org}/{instance}"))?;
            if status["status"] == "READY_TO_COLD_START" && self.shims().is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "not scaled to zero within {} s: {status}",
                ZERO_DEADLINE.as_secs()
            );
            if let Some(exit) = self.child.try_wait()? {
                bail!("hangar serve exited: {exit}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One invoke on a new connection: (first byte, counted from just before
    /// connecting; Hangar's `meta.latency_ms`). Checked off the clock.
    fn invoke(&self, agent: &str, token: &str) -> Result<(Duration, Option<f64>)> {
        let body = json!({"input": {"token": token}}).to_string();
        let request = post_request(&format!("/v1/agents/{agent}/invoke"), Some(KEY), &body);
        let t0 = Instant::now();
        let (at, answer) =
            exchange(self.address, &request, START_DEADLINE).context("invoking the agent")?;
        let took = at.duration_since(t0);
        let latency = check_hangar(&answer, token).context("Hangar's invoke answer")?;
        Ok((took, latency))
    }
}

/// The address in the rest of `hangar listening on http://127.0.0.1:PORT …`.
fn listen_address(rest: &str) -> Result<SocketAddr> {
    let url = rest
        .split_whitespace()
        .next()
        .context("no URL in the listening line")?;
    let host = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    host.parse()
        .with_context(|| format!("not an address: {host:?}"))
}

impl Drop for Serve {
    fn drop(&mut self) {
        terminate(&mut self.child);
        for shim in self.shims() {
            let _ = Command::new(&self.hangar)
                .args(["shim", "cleanup"])
                .arg(&shim)
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// crun with its own state root and one bundle, and the containers it has
/// running (deleted on drop).
struct Crun {
    program: PathBuf,
    /// Prepended to every command (`nsenter` into [`Crun::holder`]'s mount
    /// namespace), if any.
    wrapper: Vec<OsString>,
    holder: Option<Child>,
    root: PathBuf,
    bundle: PathBuf,
    log: PathBuf,
    template: Value,
    live: Vec<String>,
}

impl Crun {
    fn command(&self) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.arg("--root").arg(&self.root);
        command
    }

    /// Runs one crun command, its output (and a detached container's) to the
    /// log.
    fn run(&self, args: &[&str]) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let status = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running crun")?;
        ensure!(
            status.success(),
            "`crun {}` failed ({status}): {}",
            args.join(" "),
            tail(&self.log)
        );
        Ok(())
    }

    /// Starts container `id` serving on `port`; returns (`crun run`
    /// returned, first byte), both from just before spawning it.
    fn start(&mut self, id: &str, port: u16, token: &str) -> Result<(Duration, Duration)> {
        fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&with_port(&self.template, id, port))?,
        )?;
        let bundle = self.bundle.to_string_lossy().into_owned();
        let t0 = Instant::now();
        // Registered first: a failed run may still leave state to delete.
        self.live.push(id.to_owned());
        self.run(&["run", "--detach", "--bundle", &bundle, id])?;
        let call = t0.elapsed();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = first_byte(address, t0, token, || Ok(())).context("crun")?;
        Ok((call, ready))
    }

    fn remove(&mut self, id: &str) -> Result<()> {
        self.run(&["delete", "--force", id])?;
        self.live.retain(|live| live != id);
        Ok(())
    }
}

impl Drop for Crun {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.live) {
            if let Err(err) = self.run(&["delete", "--force", &id]) {
                eprintln!("warning: cannot delete crun container {id}: {err:#}");
            }
        }
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

/// The bundle's `config.json` (from `crun spec`) made like Hangar's sandbox:
/// a read-only root at `rootfs` with read-only binds of `/usr`, `/etc` and
/// the real top-level directories in `binds`, a tmpfs `/tmp`, `app` at
/// `/app`, `python3 -u /app/main.py` as `nobody` with no capabilities, the
/// host's network, and the memory and pids limits under `cgroup_parent`.
/// [`with_port`] fills in the container's id and port.
fn crun_template(
    spec: &Value,
    rootfs: &Path,
    app: &Path,
    binds: &[String],
    cgroup_parent: &str,
) -> Value {
    let mut config = spec.clone();
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["python3", "-u", "/app/main.py"]);
    config["process"]["cwd"] = json!("/app");
    config["process"]["user"] = json!({"uid": NOBODY, "gid": NOBODY});
    config["process"]["noNewPrivileges"] = json!(true);
    config["process"]["capabilities"] = json!({
        "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": [],
    });
    config["root"] = json!({"path": rootfs, "readonly": true});
    let mut mounts: Vec<Value> = config["mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            !m["destination"]
                .as_str()
                .is_some_and(|d| d == "/sys" || d.starts_with("/sys/"))
        })
        .collect();
    let ro_bind = |dir: &str, source: &str| {
        json!({"destination": dir, "type": "bind", "source": source,
               "options": ["bind", "ro", "nosuid", "nodev"]})
    };
    for dir in ["/usr", "/etc"]
        .into_iter()
        .map(str::to_owned)
        .chain(binds.iter().cloned())
    {
        mounts.push(ro_bind(&dir, &dir));
    }
    mounts.push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777", "size=64m"]}),
    );
    mounts.push(ro_bind("/app", &app.to_string_lossy()));
    config["mounts"] = json!(mounts);
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
    }
    // Paths under /sys are not there without a /sys mount.
    for key in ["maskedPaths", "readonlyPaths"] {
        if let Some(paths) = config["linux"][key].as_array_mut() {
            paths.retain(|p| !p.as_str().is_some_and(|p| p.starts_with("/sys")));
        }
    }
    config["linux"]["cgroupsPath"] = json!(format!("/{cgroup_parent}/"));
    config["linux"]["resources"]["memory"] = json!({"limit": MEMORY_MB << 20});
    config["linux"]["resources"]["pids"] = json!({"limit": PIDS_LIMIT});
    config
}

/// The template with container `id`'s cgroup and `PORT`.
fn with_port(template: &Value, id: &str, port: u16) -> Value {
    let mut config = template.clone();
    let parent = config["linux"]["cgroupsPath"]
        .as_str()
        .unwrap_or("/")
        .to_owned();
    config["linux"]["cgroupsPath"] = json!(format!("{parent}{id}"));
    config["process"]["env"] = json!(agent_env(port)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>());
    config
}

/// The agent's environment in every row (what Hangar sets that the agent
/// reads, and a `PATH`).
fn agent_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", SANDBOX_PATH.to_owned()),
        ("PORT", port.to_string()),
        ("HOME", "/tmp".to_owned()),
        ("PYTHONUNBUFFERED", "1".to_owned()),
    ]
}

/// The `python3` a sandbox runs: the first in [`SANDBOX_PATH`] on the host
/// (the sandbox binds the host's `/usr`).
fn sandbox_python() -> Option<PathBuf> {
    std::env::split_paths(SANDBOX_PATH)
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
}

/// Starts the agent directly (no container) as `nobody`; returns the first
/// byte, from just before spawning it. The process is killed off the clock.
fn start_direct(python: &Path, agent_dir: &Path, log: &Path, token: &str) -> Result<Duration> {
    let port = free_port().context("finding a free loopback port")?;
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = Command::new(python);
    command
        .args(["-u", "main.py"])
        .current_dir(agent_dir)
        .env_clear()
        .envs(agent_env(port))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let t0 = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("spawning {}", python.display()))?;
    let mut child = Killed(child);
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    first_byte(address, t0, token, || match child.0.try_wait()? {
        Some(status) => bail!("python exited ({status}): {}", tail(log)),
        None => Ok(()),
    })
    .context("python")
}

/// Timed samples, in ms order of the table.
#[derive(Default)]
struct Samples {
    /// Hangar: invoke at zero → first byte.
    hangar: Vec<Duration>,
    /// Hangar's own `meta.latency_ms` of those invokes.
    hangar_meta: Vec<Duration>,
    /// Hangar: the next invoke, warm.
    hangar_warm: Vec<Duration>,
    /// crun run → first byte.
    crun: Vec<Duration>,
    /// crun run returned.
    crun_call: Vec<Duration>,
    /// python directly → first byte.
    python: Vec<Duration>,
}

/// Everything one run holds; fields drop in order: the server and its
/// replicas, crun's containers, then their cgroup parent and the directory.
struct Bench {
    serve: Serve,
    crun: Crun,
    _cgroups: CgroupParent,
    tmp: TempDir,
    python: PathBuf,
    agent_dir: PathBuf,
    org: String,
    agent: String,
    instance: String,
}

impl Bench {
    fn sample(&mut self, row: Row, name: &str, timed: bool, samples: &mut Samples) -> Result<()> {
        self.serve.wait_zero(&self.org, &self.instance)?;
        std::thread::sleep(SETTLE);
        let token = format!("{name}-{}", std::process::id());
        match row {
            Row::Hangar => {
                let (cold, meta) = self.serve.invoke(&self.agent, &token)?;
                let (warm, _) = self.serve.invoke(&self.agent, &format!("{token}-warm"))?;
                if timed {
                    samples.hangar.push(cold);
                    if let Some(ms) = meta {
                        samples.hangar_meta.push(Duration::from_secs_f64(ms / 1e3));
                    }
                    samples.hangar_warm.push(warm);
                }
            }
            Row::Crun => {
                let port = free_port().context("finding a free loopback port")?;
                let id = format!("hb-cs-{name}");
                let (call, ready) = self.crun.start(&id, port, &token)?;
                self.crun.remove(&id)?;
                if timed {
                    samples.crun.push(ready);
                    samples.crun_call.push(call);
                }
            }
            Row::Python => {
                let log = self.tmp.0.join("python.log");
                let ready = start_direct(&self.python, &self.agent_dir, &log, &token)?;
                if timed {
                    samples.python.push(ready);
                }
            }
        }
        Ok(())
    }

    fn measure(&mut self, warmup: usize, n: usize) -> Result<Samples> {
        let mut samples = Samples::default();
        let started = Instant::now();
        for round in 0..warmup + n {
            for row in order(round) {
                let name = format!("{}-{round}", format!("{row:?}").to_lowercase());
                self.sample(row, &name, round >= warmup, &mut samples)?;
            }
            eprintln!(
                "  round {}/{} done ({:.1} s){}",
                round + 1,
                warmup + n,
                started.elapsed().as_secs_f64(),
                if round < warmup { ", untimed" } else { "" }
            );
        }
        Ok(samples)
    }
}

fn report(samples: &Samples, args: &Args, steal: Option<f64>, load: (String, String)) {
    println!();
    println!(
        "{} timed samples per row, after {} untimed rounds; rows in rotating order, each \
         sample with Hangar at zero. Times in ms; ratios are of medians.",
        args.samples, args.warmup
    );
    print_conditions(steal, &load);
    println!();
    println!("| measurement | mean ms | p50 ms | p95 ms | max ms | p50 ÷ crun p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let crun = Stats::of(&samples.crun);
    // (name, samples, whether the ratio to crun is shown)
    let rows: [(&str, &[Duration], bool); 6] = [
        (
            "Hangar: `POST /v1/agents/{id}/invoke` at zero → first byte (cold start)",
            &samples.hangar,
            true,
        ),
        (
            "crun, host network: `crun run --detach` → first byte of `POST /invoke`",
            &samples.crun,
            false,
        ),
        (
            "python directly (no container) → first byte of `POST /invoke`",
            &samples.python,
            true,
        ),
        (
            "Hangar: the cold invoke's own `meta.latency_ms`",
            &samples.hangar_meta,
            true,
        ),
        (
            "crun: `crun run --detach` returned",
            &samples.crun_call,
            false,
        ),
        (
            "Hangar: the next invoke, warm (new connection) → first byte",
            &samples.hangar_warm,
            false,
        ),
    ];
    for (name, s, vs_crun) in rows {
        let Some(s) = Stats::of(s) else {
            println!("| {name} | not measured | | | | |");
            continue;
        };
        let ratio = match &crun {
            Some(c) if vs_crun && c.p50 > 0.0 => format!("{:.2}×", s.p50 / c.p50),
            _ => "—".to_owned(),
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {ratio} |",
            s.mean, s.p50, s.p95, s.max
        );
    }
    println!();
    if let (Some(h), Some(c)) = (Stats::of(&samples.hangar), &crun) {
        let r = h.p50 / c.p50;
        println!(
            "Target (cold start → first byte ≤ {TARGET}× `crun run`), judged on medians: {:.1} ms \
             ÷ {:.1} ms = {r:.2}×: {}; means: {:.2}×.",
            h.p50,
            c.p50,
            if r <= TARGET { "met" } else { "NOT met" },
            h.mean / c.mean
        );
        if let Some(p) = Stats::of(&samples.python) {
            println!(
                "Python alone takes {:.1} ms (p50): Hangar adds {:.1} ms to it, crun {:.1} ms.",
                p.p50,
                h.p50 - p.p50,
                c.p50 - p.p50
            );
        }
    }
}

/// The root of the crun bundle, made in `rootfs`: empty mount points, and
/// the host's merged-`/usr` symlinks copied as they are. Returns the real
/// top-level directories among them, which are bound read-only instead.
fn make_rootfs(rootfs: &Path) -> Result<Vec<String>> {
    for dir in ["usr", "etc", "proc", "dev", "tmp", "app"] {
        mkdir(&rootfs.join(dir))?;
    }
    let mut binds = Vec::new();
    for alias in USR_ALIASES {
        let host = Path::new("/").join(alias);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&host)?, rootfs.join(alias))
                .with_context(|| format!("mirroring {}", host.display()))?;
        } else if meta.is_dir() {
            mkdir(&rootfs.join(alias))?;
            binds.push(format!("/{alias}"));
        }
    }
    Ok(binds)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.samples >= 1, "--samples must be at least 1");
    require_root("hangar serve runs replicas in sandboxes; crun")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let Some(crun_bin) = find_program("crun") else {
        bail!(
            "crun is not installed (Debian: apt-get install crun): the target is stated against \
             `crun run`, so the benchmark cannot run without it"
        );
    };
    let python = sandbox_python()
        .with_context(|| format!("no python3 in the sandbox's PATH ({SANDBOX_PATH})"))?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast/main.py");
    ensure!(source.is_file(), "{} is missing", source.display());

    // --- Set up -------------------------------------------------------------------
    let pid = std::process::id();
    let tmp = TempDir::new("cs")?;
    let agent_dir = tmp.0.join("agent");
    mkdir(&agent_dir)?;
    fs::copy(&source, agent_dir.join("main.py")).context("copying the agent")?;
    fs::set_permissions(agent_dir.join("main.py"), fs::Permissions::from_mode(0o644))?;
    let rootfs = tmp.0.join("rootfs");
    let binds = make_rootfs(&rootfs)?;
    let cgroups = CgroupParent(format!("hangar-bench-cs-{pid}"));

    let bundle = tmp.0.join("bundle");
    mkdir(&bundle)?;
    let spec = Command::new(&crun_bin)
        .arg("spec")
        .current_dir(&bundle)
        .stdin(Stdio::null())
        .output()
        .context("running `crun spec`")?;
    ensure!(
        spec.status.success(),
        "`crun spec` failed: {}",
        String::from_utf8_lossy(&spec.stderr).trim()
    );
    let spec: Value = serde_json::from_slice(&fs::read(bundle.join("config.json"))?)
        .context("parsing the config.json of `crun spec`")?;
    let state = tmp.0.join("crun-state");
    fs::DirBuilder::new().mode(0o700).create(&state)?;
    let mut crun = Crun {
        program: crun_bin.clone(),
        wrapper: Vec::new(),
        holder: None,
        root: state,
        bundle,
        log: tmp.0.join("crun.log"),
        template: crun_template(&spec, &rootfs, &agent_dir, &binds, &cgroups.0),
        live: Vec::new(),
    };
    if hybrid_with_controllers() {
        let holder = unified_free_namespace().context(
            "crun cannot run on this hybrid cgroup host, and hiding the v2 hierarchy from it failed",
        )?;
        let nsenter = find_program("nsenter").context("`nsenter` (util-linux) is not installed")?;
        crun.wrapper = vec![
            nsenter.into(),
            "-t".into(),
            holder.id().to_string().into(),
            "-m".into(),
            "--".into(),
        ];
        crun.holder = Some(holder);
    }

    let serve = Serve::start(&hangar_bin, &tmp.0.join("serve"), &args.log_level)?;
    eprintln!(
        "hangar serve at {} in {}",
        serve.address,
        serve.dir.display()
    );
    let (org, agent, instance) = serve.deploy(&agent_dir)?;
    eprintln!("agent {agent}, instance {instance}");

    println!(
        "Hangar: {} serve --scale-to-zero-after 1; agent min 0 / max 1 replicas, {MEMORY_MB} MiB",
        hangar_bin.display()
    );
    println!(
        "crun: {}; network: the host's{}",
        first_line(Command::new(&crun_bin).arg("--version")),
        if crun.wrapper.is_empty() {
            ""
        } else {
            "; run through nsenter into a mount namespace without /sys/fs/cgroup/unified \
             (hybrid cgroups with v2 controllers)"
        }
    );
    println!(
        "Agent: bench/agents/fast/main.py with {} ({}); kernel {}, {} CPUs",
        python.display(),
        first_line(Command::new(&python).arg("--version")),
        kernel_release(),
        cpu_count()
    );

    let mut bench = Bench {
        serve,
        crun,
        _cgroups: cgroups,
        tmp,
        python,
        agent_dir,
        org,
        agent,
        instance,
    };

    // --- Measure ------------------------------------------------------------------
    let ticks = cpu_ticks();
    let load_before = load_average();
    let measured = bench.measure(args.warmup, args.samples);
    let steal = steal_percent(ticks, cpu_ticks());
    let load = (load_before, load_average());
    if let Some(keep) = &args.keep_log {
        if let Err(err) = fs::copy(bench.serve.dir.join("serve.log"), keep) {
            eprintln!(
                "warning: cannot copy the serve log to {}: {err}",
                keep.display()
            );
        }
    }
    let samples = measured?;
    drop(bench);
    report(&samples, &args, steal, load);
    Ok(())
}

/// The first line a command prints (stdout, then stderr).
fn first_line(command: &mut Command) -> String {
    match command.stdin(Stdio::null()).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned(),
        Err(err) => format!("unknown ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_rotate() {
        assert_eq!(order(0), [Row::Hangar, Row::Crun, Row::Python]);
        assert_eq!(order(1), [Row::Crun, Row::Python, Row::Hangar]);
        assert_eq!(order(3), order(0));
    }

    #[test]
    fn requests_are_well_formed() {
        let request = post_request("/invoke", Some("k"), r#"{"a":1}"#);
        let text = String::from_utf8(request).expect("utf-8");
        assert!(text.starts_with("POST /invoke HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer k\r\n"));
        assert!(text.contains("Content-Length: 7\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n{\"a\":1}"));
        assert!(!String::from_utf8_lossy(&post_request("/x", None, "")).contains("Authorization"));
    }

    #[test]
    fn answers_are_parsed() -> Result<()> {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(parse_response(plain)?, (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked)?, (502, b"abcde".to_vec()));
        let to_end = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(to_end)?, (404, b"nope".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        Ok(())
    }

    #[test]
    fn answers_are_checked() -> Result<()> {
        let agent = b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{\"output\":{\"token\":\"t\"}}";
        assert!(check_agent(agent, "t").is_ok());
        assert!(check_agent(agent, "u").is_err());
        let body = r#"{"success":true,"data":{"output":{"token":"t"}},"meta":{"latency_ms":41.5}}"#;
        let hangar = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(check_hangar(hangar.as_bytes(), "t")?, Some(41.5));
        assert!(check_hangar(hangar.as_bytes(), "u").is_err());
        let failed = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}";
        assert!(check_hangar(failed, "t").is_err());
        Ok(())
    }

    #[test]
    fn listening_lines_give_the_address() -> Result<()> {
        assert_eq!(
            listen_address("http://127.0.0.1:4321 (admin key in …)\n")?,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 4321))
        );
        assert!(listen_address("").is_err());
        Ok(())
    }

    #[test]
    fn the_crun_config_is_like_a_sandbox() {
        let spec = json!({
            "process": {"args": ["sh"], "capabilities": {"bounding": ["CAP_KILL"]}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            },
        });
        let template = crun_template(
            &spec,
            Path::new("/r"),
            Path::new("/a"),
            &["/lib32".to_owned()],
            "p",
        );
        let config = with_port(&template, "c1", 9000);
        assert_eq!(config["process"]["user"]["uid"], NOBODY);
        assert_eq!(config["process"]["capabilities"]["bounding"], json!([]));
        assert_eq!(config["root"]["readonly"], true);
        assert_eq!(config["linux"]["cgroupsPath"], "/p/c1");
        assert!(config["process"]["env"]
            .as_array()
            .is_some_and(|env| env.contains(&json!("PORT=9000"))));
        let destinations: Vec<&str> = config["mounts"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["destination"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            destinations,
            ["/proc", "/usr", "/etc", "/lib32", "/tmp", "/app"]
        );
        assert_eq!(
            config["linux"]["namespaces"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(config["linux"]["maskedPaths"], json!(["/proc/kcore"]));
    }

    #[test]
    fn the_fast_agent_is_there() {
        let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast/main.py");
        assert!(main.is_file());
    }
}
