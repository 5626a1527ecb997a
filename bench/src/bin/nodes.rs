//! Two nodes on one PostgreSQL: what the hop between nodes costs an invoke,
//! and how long an instance is unreachable when the node running it dies.
//!
//! The figures of issue 19 ("many servers, one store"): invoke through a
//! node that does not run the instance (one forwarding hop) against the
//! node that does, p50/p99 and CPU per request; failover time from `kill
//! -9` of the node running an instance to the first successful invoke
//! through the other node, the median of `--failovers` rounds. There is no
//! numeric target: these are measurements.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! 1. A fresh database on the PostgreSQL of `--postgres` (made with `psql`
//!    as the store's tests make theirs, migrated, and dropped at the end
//!    `WITH (FORCE)`), and two
//!    `hangar serve` on it (the `hangar` binary next to this one, or
//!    `--hangar`), nodes A and B, each in a fresh temporary directory (its
//!    own data dir) and on a loopback port of its own (`--listen
//!    127.0.0.1:<port>`, so its node address is `http://127.0.0.1:<port>`
//!    and stays the same when it is started again), with the same admin key
//!    and the same `HANGAR_SECRET_KEY` (random, 64 hex digits), plus
//!    `--node-dead-after` and `--instance-lease` when given (else the
//!    defaults, 15 s each).
//! 2. Through A it deploys `bench/agents/fast` (a single-threaded asyncio
//!    HTTP/1.1 keep-alive server: `POST /invoke` answers `{"output":
//!    <body>}`), waits until the instance runs, finds the replica's IP with
//!    an exec, and reads from the database's `instance_leases` which node
//!    holds the instance: the owner; the other node is the one that
//!    forwards. Then it invokes through each node every 50 ms until it
//!    answers; any failed answer before that is printed with the servers'
//!    logs (both should answer at once).
//! 3. Latency: three paths, each on one keep-alive `reqwest` connection,
//!    sequential: direct (`POST http://<replica>:8080/invoke` with
//!    `{"q":1}`, the baseline), the owner (`POST /v1/agents/{id}/invoke`
//!    with `{"input":{"q":1}}` and the admin key) and the other node (the
//!    same request, forwarded whole to the owner: one hop). `--warmup`
//!    untimed requests per path, then `--requests` timed ones in 10 blocks
//!    taken round-robin over the paths, as the gateway benchmark does. Timed
//!    from sending to the last body byte; every answer is checked off the
//!    clock (status 200, the echoed input, and for invokes `"success":true`
//!    and the instance's ID in `meta`).
//! 4. CPU per request: a throughput run per path (wrk with one thread when
//!    in `PATH`, else this binary's client; `--connections` connections,
//!    1 s untimed then `--duration` s; `--rounds` rounds, medians). Around
//!    each timed run the CPU time (user + system, all threads, from `/proc`)
//!    of each `hangar serve` (with its children) is read; each node's and
//!    both nodes' CPU time divided by the requests served is the cost per
//!    request. On the hop path both nodes work for every request.
//! 5. Failover, `--failovers` rounds. Each round reads which node holds the
//!    instance (the owner) and sends a steady open-loop load through the
//!    other one: an invoke every `1/--failover-rate` s, each on its own,
//!    not waiting for the one before (30 s limit each). After 1 s of it,
//!    the owner gets SIGKILL: its replicas keep running, orphaned, as they
//!    would on a crashed machine. The failover time is from the kill to the
//!    end of the first successful invoke sent after the kill. The load runs
//!    on for `--after` s past that, then every invoke is waited for and each
//!    failure is counted by when it was sent (before the kill: in flight on
//!    the dead node; after it) and by what it was (status and error code, or
//!    the transport error). The database's lease table is read every 100 ms
//!    meanwhile, to show when the lease moved. Then the killed node is
//!    started again in its data dir (the same node), and the round ends
//!    once it is settled: both nodes `ready` in `GET /v1/nodes`, the lease
//!    held by one of them, the node that came back holding none of its
//!    orphaned replicas any more (its `runtime/shims`, counted before the
//!    restart, empty unless it holds
//!    the instance) and an invoke answered through each node. So the next
//!    round kills the node that took the instance over. A round whose
//!    invokes never succeed again within `--failover-timeout` s ends the
//!    failover part: that is reported, not hidden.
//!
//! The binary exits 0 whether or not the figures are good: it is a
//! measurement, not a test. It exits with an error when the setup fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, require_root, tail, TempDir};
use hangar_bench::load::{self, client, Target, BLOCKS};
use hangar_bench::serve::Serve;
use hangar_bench::{
    cpu_count, cpu_ticks, find_program, free_port, kernel_release, load_average, median,
    print_conditions, process_tree_cpu, steal_percent, Stats,
};
use hangar_store::seal::Sealer;
use hangar_store::Store;
use serde_json::Value;

/// The admin key both servers are started with.
const KEY: &str = "hgr_benchnodes0000000000000000000000000000000";
/// The body of a direct request; the invokes' `input`.
const BODY: &str = r#"{"q":1}"#;
/// The body of an invoke.
const INVOKE_BODY: &str = r#"{"input":{"q":1}}"#;
/// What every answer must contain: the echoed input.
const ECHO: &str = r#""q":1"#;
/// The port the agent listens on in its sandbox.
const AGENT_PORT: u16 = 8080;
/// Blocks the timed latency requests of each path are split into.
/// How often the lease table is read during a failover.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// Measures invoke through the node that runs an instance against through
/// the other node (one hop), and the failover time when the node running
/// it is killed. Needs root and a PostgreSQL where the user may create
/// databases.
#[derive(Debug, Parser)]
#[command(name = "nodes")]
struct Args {
    /// A PostgreSQL server (any database on it) where the user may create
    /// and drop databases; the run uses a fresh one of its own.
    #[arg(
        long,
        default_value = "postgres://hangar:hangar@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// Timed sequential requests per path.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Untimed sequential requests per path before timing.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Seconds of throughput load per path and round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections for throughput.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Throughput rounds: every path once per round; medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The throughput load tool: `wrk` (default when in `PATH`; one thread)
    /// or `builtin` (this binary's own reqwest client).
    #[arg(long)]
    load: Option<LoadTool>,
    /// Failover rounds (kill -9 of the node holding the instance).
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Invokes per second through the surviving node during a failover.
    #[arg(long, default_value_t = 100)]
    failover_rate: u32,
    /// Seconds the failover load goes on after the first success.
    #[arg(long, default_value_t = 3)]
    after: u64,
    /// Seconds a failover (or a restarted node's settling) may take before
    /// the round is reported as never completing.
    #[arg(long, default_value_t = 120)]
    failover_timeout: u64,
    /// `hangar serve --node-dead-after` for both nodes (default: the
    /// server's, 15 s).
    #[arg(long)]
    node_dead_after: Option<u64>,
    /// `hangar serve --instance-lease` for both nodes (default: the
    /// server's, 15 s).
    #[arg(long)]
    instance_lease: Option<u64>,
    /// Only the failover rounds (no latency or throughput): for a second
    /// run with other node settings.
    #[arg(long)]
    failover_only: bool,
    /// The `hangar` binary (default: `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
}

/// What generates the throughput load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoadTool {
    Wrk,
    Builtin,
}

/// A database of this run's own on the PostgreSQL of `--postgres`, with a
/// store on it for reading leases; dropped on drop.
struct Database {
    store: Store,
    /// Its URL, for the servers.
    url: String,
    /// Dropped after the store (fields drop in order).
    made: Made,
}

/// A database made by this run: dropped on drop (`WITH (FORCE)`, which
/// ends any connection left to it), also when the run fails halfway.
struct Made {
    name: String,
    admin_url: String,
    psql: PathBuf,
}

impl Drop for Made {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = run_psql(&self.psql, &self.admin_url, &drop) {
            eprintln!("warning: {err:#}");
        }
    }
}

impl Database {
    /// Creates a fresh database next to `admin_url`'s and migrates it.
    async fn create(psql: &Path, admin_url: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "hangar_bench_nodes_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000
        );
        let mut url = reqwest::Url::parse(admin_url).context("--postgres is not a URL")?;
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        run_psql(psql, admin_url, &format!("CREATE DATABASE {name}"))?;
        let made = Made {
            name,
            admin_url: admin_url.to_owned(),
            psql: psql.to_path_buf(),
        };
        // The servers hold the shared key; this store only reads leases.
        let sealer =
            Sealer::new(&Sealer::generate_key()).map_err(|_| anyhow::anyhow!("a 32-byte key"))?;
        let store = Store::connect(&url, sealer)
            .await
            .with_context(|| format!("connecting to and migrating {}", made.name))?;
        Ok(Self { store, url, made })
    }
}

/// Runs one SQL statement with `psql` on `url`.
fn run_psql(psql: &Path, url: &str, sql: &str) -> Result<()> {
    let out = Command::new(psql)
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qc", sql])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running psql")?;
    ensure!(
        out.status.success(),
        "psql {sql:?} on {}: {}",
        redacted(url),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A node of the run: its server and its node ID.
struct Node {
    name: &'static str,
    serve: Serve,
    id: String,
}

impl Node {
    /// CPU time of its server (with its children) so far; `None` when it
    /// is not running.
    fn cpu(&self) -> Option<Duration> {
        process_tree_cpu(self.serve.child.id())
    }
}

/// The node (ID) holding `instance`'s lease and its generation.
async fn holder(db: &Database, instance: &str) -> Result<Option<(String, i64)>> {
    Ok(db
        .store
        .instance_leases(None)
        .await
        .context("reading instance_leases")?
        .into_iter()
        .find(|l| l.instance_id == instance)
        .and_then(|l| l.node_id.map(|node| (node, l.generation))))
}

/// `GET /v1/nodes` through `via`: each node's ID → (status, replicas).
async fn list_nodes(
    via: &Serve,
    http: &reqwest::Client,
) -> Result<BTreeMap<String, (String, u64)>> {
    let listed = via.get(http, "/v1/nodes").await?;
    Ok(listed["data"]
        .as_array()
        .context("no data in GET /v1/nodes")?
        .iter()
        .filter_map(|n| {
            Some((
                n["id"].as_str()?.to_owned(),
                (
                    n["status"].as_str().unwrap_or_default().to_owned(),
                    n["replicas"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// The node ID of `serve`: the node `GET /v1/nodes` lists at its address.
async fn node_id(serve: &Serve, http: &reqwest::Client) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = serve.get(http, "/v1/nodes").await?;
        let found = listed["data"].as_array().and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["address"] == serve.url.as_str())
                .and_then(|n| n["id"].as_str())
                .map(str::to_owned)
        });
        if let Some(id) = found {
            return Ok(id);
        }
        ensure!(
            Instant::now() < deadline,
            "{} never listed itself: {listed}",
            serve.url
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a throughput run measured.
#[derive(Clone, Copy)]
struct Load {
    /// Requests per second.
    rps: f64,
    /// CPU time per request of node A and of node B while timed.
    cpu: [Option<Duration>; 2],
}

impl Load {
    fn of(timed: &load::Timed<[Option<Duration>; 2]>) -> Self {
        Self {
            rps: timed.rps,
            cpu: [0, 1].map(|i| timed.per_request(timed.before[i], timed.after[i])),
        }
    }
}

/// Both nodes' CPU time now.
fn cpu_now(nodes: &[Node; 2]) -> [Option<Duration>; 2] {
    [nodes[0].cpu(), nodes[1].cpu()]
}

/// One invoke of the failover load: when it was sent, when it ended and
/// what it got.
struct Shot {
    sent: Instant,
    ended: Instant,
    /// `None` for a success; else what failed (`503 NODE_UNREACHABLE`, a
    /// transport error).
    failure: Option<String>,
}

/// What one invoke got, as [`Shot::failure`] says it.
async fn invoke_once(client: &reqwest::Client, url: &str, instance: &str) -> Option<String> {
    let res = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .bearer_auth(KEY)
        .body(INVOKE_BODY)
        .send()
        .await;
    let res = match res {
        Ok(res) => res,
        Err(err) => return Some(transport_kind(&err)),
    };
    let status = res.status();
    let text = match res.text().await {
        Ok(text) => text,
        Err(err) => return Some(format!("{status}, then {}", transport_kind(&err))),
    };
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status == 200 && body["success"] == true && text.contains(ECHO) {
        if body["meta"]["instance_id"] != instance {
            return Some(format!("200 from another instance: {}", body["meta"]));
        }
        return None;
    }
    let code = body["error"]["code"]
        .as_str()
        .map_or_else(|| "(no error code)".to_owned(), str::to_owned);
    Some(format!("{} {code}", status.as_u16()))
}

/// A transport error, by kind (not its full text, which names addresses).
fn transport_kind(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out (30 s)"
    } else if err.is_connect() {
        "connection refused or failed"
    } else if err.is_body() || err.is_decode() {
        "answer cut off"
    } else {
        "connection broken"
    };
    format!("transport error: {kind}")
}

/// One failover round's findings.
struct Failover {
    /// The node killed (A or B).
    killed: &'static str,
    /// Kill → end of the first successful invoke sent after it; `None`
    /// when none succeeded within the timeout.
    time: Option<Duration>,
    /// Kill → the lease read with another holder.
    lease_moved: Option<Duration>,
    /// Invokes sent, in all.
    sent: usize,
    /// Failures by (sent before the kill?, what), counted.
    failures: BTreeMap<(bool, String), usize>,
    /// Failures sent after the first success.
    after_recovery: usize,
    /// Replicas the killed node left running (in its data dir) when it
    /// was started again: what it had to stop.
    orphans: usize,
    /// Restart → settled, for the node killed.
    settled: Option<Duration>,
}

/// Runs one failover round: load through `survivor`, kill `owner`, wait for
/// the first success, go on for `after`, stop. The owner is left dead.
async fn failover(
    args: &Args,
    db: &Database,
    instance: &str,
    agent: &str,
    owner: &mut Node,
    survivor: &Node,
) -> Result<Failover> {
    let url = format!("{}/v1/agents/{agent}/invoke", survivor.serve.url);
    let http = client(64)?;
    let shots: Arc<Mutex<Vec<Shot>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f64(1.0 / f64::from(args.failover_rate.max(1)));
    let load = {
        let (shots, stop, http, url, instance) = (
            shots.clone(),
            stop.clone(),
            http.clone(),
            url.clone(),
            instance.to_owned(),
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut shots_in_flight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let (shots, http, url, instance) =
                    (shots.clone(), http.clone(), url.clone(), instance.clone());
                shots_in_flight.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let failure = invoke_once(&http, &url, &instance).await;
                    let ended = Instant::now();
                    if let Ok(mut shots) = shots.lock() {
                        shots.push(Shot {
                            sent,
                            ended,
                            failure,
                        });
                    }
                }));
            }
            for shot in shots_in_flight {
                let _ = shot.await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = holder(db, instance).await?;
    let killed_at = Instant::now();
    owner.serve.kill9()?;
    let timeout = Duration::from_secs(args.failover_timeout);
    let mut lease_moved = None;
    let first_success = loop {
        let found = shots.lock().ok().and_then(|shots| {
            shots
                .iter()
                .filter(|s| s.sent > killed_at && s.failure.is_none())
                .map(|s| s.ended)
                .min()
        });
        if lease_moved.is_none() && holder(db, instance).await? != before {
            lease_moved = Some(killed_at.elapsed());
        }
        if let Some(ended) = found {
            break Some(ended);
        }
        if killed_at.elapsed() > timeout {
            break None;
        }
        tokio::time::sleep(LEASE_POLL).await;
    };
    if first_success.is_some() {
        let until = Instant::now() + Duration::from_secs(args.after);
        while Instant::now() < until {
            if lease_moved.is_none() && holder(db, instance).await? != before {
                lease_moved = Some(killed_at.elapsed());
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.await.context("the failover load panicked")?;
    let shots = std::mem::take(&mut *shots.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let mut failures = BTreeMap::new();
    let mut after_recovery = 0;
    for shot in &shots {
        if let Some(what) = &shot.failure {
            *failures
                .entry((shot.sent <= killed_at, what.clone()))
                .or_insert(0) += 1;
            if first_success.is_some_and(|first| shot.sent > first) {
                after_recovery += 1;
            }
        }
    }
    Ok(Failover {
        killed: owner.name,
        time: first_success.map(|ended| ended.saturating_duration_since(killed_at)),
        lease_moved,
        sent: shots.len(),
        failures,
        after_recovery,
        orphans: 0,
        settled: None,
    })
}

/// Starts the killed node again and waits until the pair is settled (see
/// the module docs); returns how long that took.
async fn restart_and_settle(
    args: &Args,
    db: &Database,
    instance: &str,
    agent: &str,
    nodes: &mut [Node; 2],
    killed: usize,
) -> Result<Duration> {
    let t0 = Instant::now();
    nodes[killed].serve.restart()?;
    let http = client(4)?;
    let deadline = t0 + Duration::from_secs(args.failover_timeout);
    let mut last = String::new();
    loop {
        ensure!(
            Instant::now() < deadline,
            "node {} never settled after its restart: {last}",
            nodes[killed].name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listed = list_nodes(&nodes[1 - killed].serve, &http).await?;
        let ready = nodes.iter().all(|n| {
            listed
                .get(&n.id)
                .is_some_and(|(status, _)| status == "ready")
        });
        let held = holder(db, instance).await?;
        let holder_index = held
            .as_ref()
            .and_then(|(id, _)| nodes.iter().position(|n| &n.id == id));
        let orphans = nodes[killed].serve.shims().len();
        last = format!(
            "nodes {listed:?}, lease {held:?}, {orphans} replica(s) in node {}'s data dir",
            nodes[killed].name
        );
        if !ready || holder_index.is_none() || (holder_index != Some(killed) && orphans > 0) {
            continue;
        }
        let mut answered = true;
        for node in nodes.iter() {
            let url = format!("{}/v1/agents/{agent}/invoke", node.serve.url);
            if let Some(failure) = invoke_once(&http, &url, instance).await {
                last = format!("{last}; invoke through {}: {failure}", node.name);
                answered = false;
            }
        }
        if answered {
            return Ok(t0.elapsed());
        }
    }
}

/// Invokes through each node (every 50 ms, up to `timeout`) until one
/// answers; returns per node the failed answers before it (by what they
/// were) and how long that took. A node that never answers is an error.
async fn wait_answering(
    nodes: &[Node; 2],
    agent: &str,
    instance: &str,
    timeout: Duration,
) -> Result<Vec<(BTreeMap<String, usize>, Duration)>> {
    let http = client(2)?;
    let mut found = Vec::new();
    for node in nodes {
        let url = format!("{}/v1/agents/{agent}/invoke", node.serve.url);
        let t0 = Instant::now();
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(failure) = invoke_once(&http, &url, instance).await {
            *failures.entry(failure).or_insert(0) += 1;
            ensure!(
                t0.elapsed() < timeout,
                "invokes through node {} never answered: {failures:?}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        found.push((failures, t0.elapsed()));
    }
    Ok(found)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.requests >= 1, "--requests must be at least 1");
    ensure!(args.connections >= 1, "--connections must be at least 1");
    require_root("hangar serve runs replicas in sandboxes")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let wrk = match args.load {
        Some(LoadTool::Builtin) => None,
        Some(LoadTool::Wrk) => Some(
            find_program("wrk").context("wrk is not installed (Debian: apt-get install wrk)")?,
        ),
        None => find_program("wrk"),
    };
    let agent_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast");
    ensure!(
        agent_dir.join("main.py").is_file(),
        "{} has no main.py",
        agent_dir.display()
    );
    let psql = find_program("psql")
        .context("psql is not installed (Debian: apt-get install postgresql-client)")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Declared before the servers, so dropped after them: a database is
    // dropped only once nothing uses it.
    let db = rt.block_on(Database::create(&psql, &args.postgres))?;
    eprintln!(
        "fresh database {} on {}",
        db.made.name,
        redacted(&args.postgres)
    );
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut flags: Vec<String> = vec!["--database-url".into(), db.url.clone()];
    if let Some(s) = args.node_dead_after {
        flags.extend(["--node-dead-after".into(), s.to_string()]);
    }
    if let Some(s) = args.instance_lease {
        flags.extend(["--instance-lease".into(), s.to_string()]);
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = [("HANGAR_SECRET_KEY", secret.as_str())];
    let http = client(4)?;
    let start = |name: &'static str, tag: &str| -> Result<Node> {
        let listen = format!("127.0.0.1:{}", free_port().context("a free loopback port")?);
        let serve = Serve::start_in(
            &hangar_bin,
            TempDir::new(tag)?,
            &listen,
            KEY,
            &flag_refs,
            &env,
        )?;
        let id = rt.block_on(node_id(&serve, &http))?;
        eprintln!(
            "node {name}: {id} at {} in {}",
            serve.url,
            serve.dir.0.display()
        );
        Ok(Node { name, serve, id })
    };
    // One after the other: the first writes the key's fingerprint.
    let a = start("A", "na")?;
    let b = start("B", "nb")?;
    let mut nodes = [a, b];

    let deployed = rt.block_on(nodes[0].serve.deploy(&http, "bench-fast", &agent_dir))?;
    let (agent, instance) = (deployed.agent.clone(), deployed.instance.clone());
    let upstream = format!("{}:{AGENT_PORT}", deployed.ip);
    let (owner_id, generation) = rt
        .block_on(holder(&db, &instance))?
        .context("the running instance has no lease holder")?;
    let owner = nodes
        .iter()
        .position(|n| n.id == owner_id)
        .with_context(|| format!("the holder {owner_id} is neither node"))?;
    let other = 1 - owner;
    eprintln!(
        "agent {agent}, instance {instance} held by node {} (generation {generation}), replica at \
         {upstream}",
        nodes[owner].name
    );
    println!(
        "Hangar: {}; nodes A at {} and B at {}, node flags: {}; kernel {}, {} CPUs.",
        hangar_bin.display(),
        nodes[0].serve.url,
        nodes[1].serve.url,
        node_flags(&args),
        kernel_release(),
        cpu_count()
    );

    // Whether both nodes answer invokes at once: any failure before the
    // first answer is a finding, reported with the servers' logs.
    let first_answers = rt.block_on(wait_answering(
        &nodes,
        &agent,
        &instance,
        Duration::from_secs(args.failover_timeout),
    ))?;
    for (node, (failures, took)) in nodes.iter().zip(&first_answers) {
        if failures.is_empty() {
            continue;
        }
        println!(
            "Before the first answer through node {} ({} ms after the instance ran): {failures:?}.",
            node.name,
            took.as_millis()
        );
        for node in &nodes {
            println!("Log of node {}: {}", node.name, tail(&node.serve.log()));
        }
    }

    let load_before = load_average();
    let ticks = cpu_ticks();
    let expect_invoke = vec![
        ECHO.to_owned(),
        r#""success":true"#.to_owned(),
        instance.clone(),
    ];
    let targets = vec![
        Target {
            name: "direct: `POST <replica>:8080/invoke`",
            url: format!("http://{upstream}/invoke"),
            body: Some(BODY),
            key: None,
            host: None,
            server: None,
            expect: vec![ECHO.to_owned()],
        },
        Target {
            name: "owner: `POST /v1/agents/{id}/invoke` to the node running it",
            url: format!("{}/v1/agents/{agent}/invoke", nodes[owner].serve.url),
            body: Some(INVOKE_BODY),
            key: Some(KEY),
            host: None,
            server: None,
            expect: expect_invoke.clone(),
        },
        Target {
            name: "hop: the same to the other node (one forwarding hop)",
            url: format!("{}/v1/agents/{agent}/invoke", nodes[other].serve.url),
            body: Some(INVOKE_BODY),
            key: Some(KEY),
            host: None,
            server: None,
            expect: expect_invoke,
        },
    ];
    let mut samples = Vec::new();
    let mut rounds: Vec<Vec<Load>> = vec![Vec::new(); targets.len()];
    if !args.failover_only {
        eprintln!(
            "latency: {} warm-up + {} timed sequential requests per path",
            args.warmup, args.requests
        );
        samples = rt.block_on(load::latency(&targets, args.warmup, args.requests))?;
        let scripts = TempDir::new("wrk")?;
        for round in 1..=args.rounds.max(1) {
            for (i, target) in targets.iter().enumerate() {
                eprintln!(
                    "throughput, round {round}: {} for {} s with {} connections ({})",
                    target.name,
                    args.duration,
                    args.connections,
                    if wrk.is_some() { "wrk" } else { "builtin" }
                );
                let duration = Duration::from_secs(args.duration);
                let both = || cpu_now(&nodes);
                let timed = match &wrk {
                    Some(wrk) => {
                        load::wrk(wrk, &scripts.0, target, args.connections, duration, both)?
                    }
                    None => rt.block_on(load::builtin(target, args.connections, duration, both))?,
                };
                rounds[i].push(Load::of(&timed));
            }
        }
    }

    let mut failovers: Vec<Failover> = Vec::new();
    let mut unfinished: Option<String> = None;
    for round in 1..=args.failovers {
        let Some((held, _)) = rt.block_on(holder(&db, &instance))? else {
            unfinished = Some(format!("before round {round}: nobody holds the instance"));
            break;
        };
        let Some(owner) = nodes.iter().position(|n| n.id == held) else {
            unfinished = Some(format!(
                "before round {round}: the holder {held} is neither node"
            ));
            break;
        };
        eprintln!(
            "failover {round}: kill -9 node {} under {} invokes/s through node {}",
            nodes[owner].name,
            args.failover_rate,
            nodes[1 - owner].name
        );
        let [a, b] = &mut nodes;
        let (dead, survivor) = if owner == 0 { (a, &*b) } else { (b, &*a) };
        let mut found = rt.block_on(failover(&args, &db, &instance, &agent, dead, survivor))?;
        eprintln!(
            "  first success {} after the kill; lease moved after {}; {} invokes, {} failed",
            shown_ms(found.time),
            shown_ms(found.lease_moved),
            found.sent,
            found.failures.values().sum::<usize>()
        );
        if found.time.is_none() {
            unfinished = Some(format!(
                "round {round}: no invoke through node {} succeeded within {} s of the kill",
                nodes[1 - owner].name,
                args.failover_timeout
            ));
            failovers.push(found);
            break;
        }
        found.orphans = nodes[owner].serve.shims().len();
        match rt.block_on(restart_and_settle(
            &args, &db, &instance, &agent, &mut nodes, owner,
        )) {
            Ok(took) => found.settled = Some(took),
            Err(err) => {
                unfinished = Some(format!("round {round}: {err:#}"));
                failovers.push(found);
                break;
            }
        }
        failovers.push(found);
    }
    let steal = steal_percent(ticks, cpu_ticks());
    let load_after = load_average();

    // Clean up before reporting: the instance (through the node holding
    // it, whose replicas it waits for), then the servers (drop).
    if let Ok(Some((held, _))) = rt.block_on(holder(&db, &instance)) {
        if let Some(node) = nodes.iter().find(|n| n.id == held) {
            if let Err(err) = rt.block_on(node.serve.delete(&http, &instance)) {
                eprintln!("warning: {err:#}");
            }
        }
    }
    let names = [nodes[0].name, nodes[1].name];
    let owner_name = names[owner];
    drop(nodes);
    {
        // The store's pool is closed inside the runtime it was made in.
        let _runtime = rt.enter();
        drop(db);
    }

    report(
        &args,
        &targets,
        &samples,
        &rounds,
        &failovers,
        unfinished.as_deref(),
        (names, owner_name),
        wrk.is_some(),
        steal,
        (load_before, load_after),
    );
    Ok(())
}

/// The node flags in effect, as a sentence part.
fn node_flags(args: &Args) -> String {
    let dead = args.node_dead_after.map_or_else(
        || "--node-dead-after default (15 s)".to_owned(),
        |s| format!("--node-dead-after {s}"),
    );
    let lease = args.instance_lease.map_or_else(
        || "--instance-lease default (15 s)".to_owned(),
        |s| format!("--instance-lease {s}"),
    );
    format!("{dead}, {lease}")
}

/// A PostgreSQL URL without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:…{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A duration in ms for a log line (`never` for none).
fn shown_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
    )
}

#[allow(
    clippy::too_many_arguments,
    reason = "one report of one run's findings"
)]
fn report(
    args: &Args,
    targets: &[Target],
    samples: &[Vec<Duration>],
    rounds: &[Vec<Load>],
    failovers: &[Failover],
    unfinished: Option<&str>,
    (names, owner_name): ([&str; 2], &str),
    wrk: bool,
    steal: Option<f64>,
    load: (String, String),
) {
    println!();
    print_conditions(steal, &load);
    if !args.failover_only {
        let stats: Vec<Option<Stats>> = samples.iter().map(|s| Stats::of(s)).collect();
        println!();
        println!(
            "Latency: {} timed sequential requests per path (after {} untimed), one keep-alive \
             connection each, in {BLOCKS} round-robin blocks. The instance runs on node \
             {owner_name}. Times in ms.",
            args.requests, args.warmup
        );
        println!();
        println!("| path | mean ms | p50 ms | p90 ms | p99 ms | max ms | p50 ÷ direct |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (target, s) in targets.iter().zip(&stats) {
            if let Some(s) = s {
                println!(
                    "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                    target.name,
                    s.mean,
                    s.p50,
                    s.p90,
                    s.p99,
                    s.max,
                    hangar_bench::ratio(s, stats[0].as_ref())
                );
            }
        }
        if let (Some(direct), Some(owner), Some(hop)) = (&stats[0], &stats[1], &stats[2]) {
            println!();
            println!("| difference | p50 ms | p99 ms |");
            println!("|---|---:|---:|");
            println!(
                "| hop − owner (the hop's cost) | {:.3} | {:.3} |",
                hop.p50 - owner.p50,
                hop.p99 - owner.p99
            );
            println!(
                "| owner − direct (the gateway's cost) | {:.3} | {:.3} |",
                owner.p50 - direct.p50,
                owner.p99 - direct.p99
            );
            println!(
                "| hop − direct | {:.3} | {:.3} |",
                hop.p50 - direct.p50,
                hop.p99 - direct.p99
            );
            println!(
                "Hop ÷ owner, p50: {:.2}×; p99: {:.2}×.",
                hop.p50 / owner.p50,
                hop.p99 / owner.p99
            );
        }
        println!();
        println!(
            "Throughput and CPU per request: {}; {} connections, {} s per path and round, {} \
             round(s), medians of the rounds. CPU is each `hangar serve`'s user + system time \
             (with its children) while timed, divided by the requests served.",
            if wrk {
                "wrk, one thread"
            } else {
                "this binary's reqwest client"
            },
            args.connections,
            args.duration,
            args.rounds.max(1)
        );
        println!();
        println!(
            "| path | req/s (rounds) | req/s | node {} CPU µs/req | node {} CPU µs/req | both \
             nodes CPU µs/req (rounds) | both µs/req |",
            names[0], names[1]
        );
        println!("|---|---|---:|---:|---:|---|---:|");
        let us = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
        let mut both_medians = Vec::new();
        for (target, r) in targets.iter().zip(rounds) {
            let rps: Vec<f64> = r.iter().map(|l| l.rps).collect();
            let node = |i: usize| {
                let v: Vec<f64> = r.iter().filter_map(|l| us(l.cpu[i])).collect();
                (!v.is_empty()).then(|| median(&v))
            };
            let both: Vec<f64> = r
                .iter()
                .filter_map(|l| Some(us(l.cpu[0])? + us(l.cpu[1])?))
                .collect();
            let both_median = (!both.is_empty()).then(|| median(&both));
            both_medians.push(both_median);
            let cell = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"));
            println!(
                "| {} | {} | {:.0} | {} | {} | {} | {} |",
                target.name,
                rps.iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(&rps),
                cell(node(0)),
                cell(node(1)),
                both.iter()
                    .map(|v| format!("{v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                cell(both_median),
            );
        }
        if let (Some(Some(owner)), Some(Some(hop))) = (both_medians.get(1), both_medians.get(2)) {
            println!();
            println!(
                "CPU per request, both nodes: hop {hop:.1} µs − owner {owner:.1} µs = {:.1} µs \
                 for the hop ({:.2}×).",
                hop - owner,
                hop / owner
            );
        }
        let rps: Vec<f64> = rounds
            .iter()
            .map(|r| median(&r.iter().map(|l| l.rps).collect::<Vec<_>>()))
            .collect();
        if rps.len() == 3 && rps[0] > 0.0 && rps[1] > 0.0 {
            println!(
                "Throughput: owner ÷ direct = {:.2}×; hop ÷ direct = {:.2}×; hop ÷ owner = {:.2}×.",
                rps[1] / rps[0],
                rps[2] / rps[0],
                rps[2] / rps[1]
            );
        }
    }

    println!();
    println!(
        "Failover ({}): {} round(s) asked; load {} invokes/s open loop through the surviving \
         node; each round's time is kill -9 → end of the first successful invoke sent after the \
         kill.",
        node_flags(args),
        args.failovers,
        args.failover_rate
    );
    println!();
    println!(
        "| round | node killed | kill → first success ms | kill → lease moved ms | invokes | \
         failed: sent before the kill | failed: sent after the kill | failed after the first \
         success | replicas orphaned | restart → settled s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, f) in failovers.iter().enumerate() {
        let count = |before: bool| {
            f.failures
                .iter()
                .filter(|((b, _), _)| *b == before)
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            f.killed,
            f.time.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.0}", d.as_secs_f64() * 1e3)
            ),
            f.lease_moved.map_or_else(
                || "—".to_owned(),
                |d| format!("{:.0}", d.as_secs_f64() * 1e3)
            ),
            f.sent,
            count(true),
            count(false),
            f.after_recovery,
            f.orphans,
            f.settled
                .map_or_else(|| "—".to_owned(), |d| format!("{:.1}", d.as_secs_f64())),
        );
    }
    let times: Vec<f64> = failovers
        .iter()
        .filter_map(|f| f.time)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    if !times.is_empty() {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        println!();
        println!(
            "Failover time, median of {} round(s): {:.0} ms (min {:.0}, max {:.0}).",
            times.len(),
            median(&times),
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
    let mut kinds: BTreeMap<(bool, &str), usize> = BTreeMap::new();
    for f in failovers {
        for ((before, what), n) in &f.failures {
            *kinds.entry((*before, what.as_str())).or_insert(0) += n;
        }
    }
    if !kinds.is_empty() {
        println!();
        println!("Failed invokes of all rounds, by what they got:");
        for ((before, what), n) in kinds {
            println!(
                "- {what}: {n} ({})",
                if before {
                    "sent before the kill, in flight"
                } else {
                    "sent after the kill"
                }
            );
        }
    }
    if let Some(why) = unfinished {
        println!();
        println!("The failover rounds stopped early: {why}.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_shown_without_its_password() {
        assert_eq!(
            redacted("postgres://hangar:secret@127.0.0.1:5432/postgres"),
            "postgres://hangar:…@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            redacted("postgres://localhost/db"),
            "postgres://localhost/db"
        );
    }

    #[test]
    fn the_fast_agent_is_there() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast");
        assert!(dir.join("main.py").is_file());
    }
}
