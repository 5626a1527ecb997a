//! Gateway overhead and throughput: `POST /v1/agents/{id}/invoke` through a
//! real `hangar serve` against calling the replica directly and against nginx
//! `proxy_pass` to the same replica, in one run, with one load tool.
//!
//! The target (issue "Gateway"): overhead against calling the replica
//! directly p50 ≤ 0.5 ms and p99 ≤ 2 ms; throughput ≥ 1.0× nginx
//! `proxy_pass` to the same upstream with the same load tool.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! 1. `hangar serve --listen 127.0.0.1:0` (the `hangar` binary next to this
//!    one, or `--hangar`) in a fresh temporary directory, with
//!    `HANGAR_ADMIN_KEY` set. It deploys `bench/agents/fast` (a
//!    single-threaded asyncio HTTP/1.1 keep-alive server, standard library
//!    only: `POST /invoke` answers `{"output": <body>}`) from its directory,
//!    waits until the instance runs and finds the replica's IP with an exec.
//! 2. nginx (`--nginx`, default `nginx` in `PATH`; Debian: `apt-get install
//!    nginx-light`) with a minimal configuration in a temporary directory:
//!    `proxy_pass` to the replica's `ip:8080` through an `upstream` block
//!    with `keepalive`, HTTP/1.1 to the upstream, two workers.
//! 3. Four paths, all with the same `reqwest` client (keep-alive, no proxy):
//!    - direct: `POST http://<replica>:8080/invoke` with body `{"q":1}`;
//!    - Hangar invoke: `POST /v1/agents/{id}/invoke` with
//!      `{"input":{"q":1}}` and the admin key as Bearer token;
//!    - nginx: `POST http://127.0.0.1:<port>/invoke` with `{"q":1}`;
//!    - Hangar instance URL: `POST /invoke` with `{"q":1}` to Hangar's
//!      port with `Host: <resource_name>.localhost:<port>` — the instance's
//!      own URL, proxied as is like nginx's `proxy_pass`.
//!
//!    Two more rows show where Hangar's time goes, without proxying:
//!    `GET /v1/agents/{id}` (the same API-key authentication and agent view
//!    lookup the invoke route does) and `GET /healthz` (the same HTTP server
//!    with no auth and no database).
//! 4. With `--baseline <hangar>`, a second `hangar serve` of that binary (an
//!    earlier build) beside the first, with the same agent deployed, whose
//!    `GET /v1/agents/{id}` and `GET /healthz` are measured in the same
//!    rounds: a before/after comparison under one machine load.
//!
//! Latency: sequential requests on one keep-alive connection per path,
//! `--warmup` untimed first, then `--requests` timed, split into 10 blocks
//! taken round-robin over the paths (drift in the machine's load falls on
//! every path alike). Timed from sending the request to the last body byte.
//! Every answer is checked off the clock (status 200 and the echoed input;
//! Hangar's also `"success":true`), so an error never passes as fast.
//!
//! Throughput: `--connections` concurrent tasks sending back to back for
//! `--duration` seconds per path (after a 1 s untimed warm-up), counting
//! checked answers; any failed answer fails the run.
//! Each run also reads the CPU time (user + system, from `/proc`) the
//! answering server used while timed — `hangar serve`, or nginx's master
//! and workers — and divides it by the requests served: the proxies' own
//! cost per request, which the shared cores' noise moves far less than the
//! request rate.
//!
//! The binary exits 0 whether or not the targets are met: it is a
//! measurement, not a test.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, require_root, terminate, TempDir};
use hangar_bench::load::{self, client, Target, BLOCKS};
use hangar_bench::serve::Serve;
use hangar_bench::{
    cpu_ticks, find_program, free_port, load_average, median, print_conditions, process_tree_cpu,
    steal_percent, Stats,
};

/// The admin key `hangar serve` is started with.
const KEY: &str = "hgr_benchgateway00000000000000000000000000000";
/// The body every direct and nginx request sends; Hangar's `input`.
const BODY: &str = r#"{"q":1}"#;
/// What every answer must contain: the echoed input.
const ECHO: &str = r#""q":1"#;
/// The port the agent listens on in its sandbox.
const AGENT_PORT: u16 = 8080;
/// Target: Hangar − direct, p50, in ms.
const P50_TARGET_MS: f64 = 0.5;
/// Target: Hangar − direct, p99, in ms.
const P99_TARGET_MS: f64 = 2.0;
/// Target: Hangar's throughput ÷ nginx's, at least.
const THROUGHPUT_TARGET: f64 = 1.0;

/// Measures the gateway's invoke overhead against calling the replica
/// directly and its throughput against nginx `proxy_pass`. Needs root.
#[derive(Debug, Parser)]
#[command(name = "gateway")]
struct Args {
    /// Timed sequential requests per path.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Untimed sequential requests per path before timing.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Seconds of throughput load per path.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections for throughput.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The `hangar` binary (default: `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
    /// The nginx binary (default: `nginx` in `PATH`).
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// The throughput load tool: `wrk` (default when in `PATH`; one thread)
    /// or `builtin` (this binary's own reqwest client).
    #[arg(long)]
    load: Option<LoadTool>,
    /// Throughput rounds: every path once per round, round-robin; each
    /// path's figure is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Another `hangar` binary (an earlier build): its `GET /v1/agents/{id}`
    /// and `GET /healthz` are measured too, in the same rounds.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// What generates the throughput load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoadTool {
    Wrk,
    Builtin,
}

/// What a throughput run measured.
#[derive(Clone, Copy)]
struct Load {
    /// Requests per second.
    rps: f64,
    /// CPU time of the path's server (Hangar, or nginx's master and
    /// workers) per request while timed; `None` for direct calls.
    cpu_per_request: Option<Duration>,
}

impl Load {
    fn of(timed: &load::Timed<Option<Duration>>) -> Self {
        Self {
            rps: timed.rps,
            cpu_per_request: timed.per_request(timed.before, timed.after),
        }
    }
}

/// nginx proxying to the replica, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start(nginx: &Path, upstream: &str) -> Result<Self> {
        let dir = TempDir::new("ngx")?;
        let port = free_port().context("finding a free loopback port")?;
        let d = dir.0.display();
        let conf = format!(
            "daemon off;\n\
             worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   keepalive_requests 1000000;\n\
             \x20   upstream agent {{\n\
             \x20       server {upstream};\n\
             \x20       keepalive 64;\n\
             \x20       keepalive_requests 1000000;\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://agent/;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        let conf_path = dir.0.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", nginx.display()))?;
        let mut nginx = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited: {status}");
            }
            ensure!(Instant::now() < deadline, "nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.requests >= 1, "--requests must be at least 1");
    ensure!(args.connections >= 1, "--connections must be at least 1");
    require_root("hangar serve runs replicas in sandboxes")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let nginx_bin = match &args.nginx {
        Some(path) => path.clone(),
        None => find_program("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .context("nginx is not installed (Debian: apt-get install nginx-light)")?,
    };
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let serve = Serve::start(&hangar_bin, "gw", KEY, &[])?;
    eprintln!("hangar serve at {} in {}", serve.url, serve.dir.0.display());
    let setup = client(4)?;
    let deployed = rt.block_on(serve.deploy(&setup, "bench-fast", &agent_dir))?;
    let (agent, instance, ip) = (deployed.agent, deployed.instance, deployed.ip);
    let port = serve.url.rsplit(':').next().unwrap_or_default();
    let instance_host = format!("{}.localhost:{port}", deployed.resource_name);
    let upstream = format!("{ip}:{AGENT_PORT}");
    eprintln!("agent {agent}, instance {instance}, replica at {upstream}");
    let nginx = Nginx::start(&nginx_bin, &upstream)?;
    eprintln!("nginx at 127.0.0.1:{}", nginx.port);
    let baseline = match &args.baseline {
        Some(bin) => {
            let base = Serve::start(&hangar_binary(Some(bin))?, "gwb", KEY, &[])?;
            eprintln!(
                "baseline hangar serve at {} in {}",
                base.url,
                base.dir.0.display()
            );
            let deployed = rt.block_on(base.deploy(&setup, "bench-fast", &agent_dir))?;
            Some((base, deployed))
        }
        None => None,
    };

    let echo = vec![ECHO.to_owned()];
    let hangar_pid = Some(serve.child.id());
    let nginx_pid = Some(nginx.child.id());
    let mut targets = vec![
        Target {
            name: "direct: `POST <replica>:8080/invoke`",
            url: format!("http://{upstream}/invoke"),
            body: Some(BODY),
            key: None,
            host: None,
            server: None,
            expect: echo.clone(),
        },
        Target {
            name: "Hangar: `POST /v1/agents/{id}/invoke`",
            url: format!("{}/v1/agents/{agent}/invoke", serve.url),
            body: Some(r#"{"input":{"q":1}}"#),
            key: Some(KEY),
            host: None,
            server: hangar_pid,
            expect: vec![ECHO.to_owned(), r#""success":true"#.to_owned()],
        },
        Target {
            name: "nginx `proxy_pass` → replica",
            url: format!("http://127.0.0.1:{}/invoke", nginx.port),
            body: Some(BODY),
            key: None,
            host: None,
            server: nginx_pid,
            expect: echo.clone(),
        },
        Target {
            name: "Hangar instance URL: `POST <resource>.localhost/invoke`",
            url: format!("{}/invoke", serve.url),
            body: Some(BODY),
            key: None,
            host: Some(instance_host),
            server: hangar_pid,
            expect: echo,
        },
        Target {
            name: "Hangar, no proxying: `GET /v1/agents/{id}` (auth + agent view)",
            url: format!("{}/v1/agents/{agent}", serve.url),
            body: None,
            key: Some(KEY),
            host: None,
            server: hangar_pid,
            expect: vec![agent.clone()],
        },
        Target {
            name: "Hangar, no auth, no database: `GET /healthz`",
            url: format!("{}/healthz", serve.url),
            body: None,
            key: None,
            host: None,
            server: hangar_pid,
            expect: vec!["ok".to_owned()],
        },
    ];
    if let Some((base, deployed)) = &baseline {
        let pid = Some(base.child.id());
        targets.push(Target {
            name: "baseline build: `GET /v1/agents/{id}`",
            url: format!("{}/v1/agents/{}", base.url, deployed.agent),
            body: None,
            key: Some(KEY),
            host: None,
            server: pid,
            expect: vec![deployed.agent.clone()],
        });
        targets.push(Target {
            name: "baseline build: `GET /healthz`",
            url: format!("{}/healthz", base.url),
            body: None,
            key: None,
            host: None,
            server: pid,
            expect: vec!["ok".to_owned()],
        });
    }

    let load_before = load_average();
    let ticks = cpu_ticks();
    eprintln!(
        "latency: {} warm-up + {} timed sequential requests per path",
        args.warmup, args.requests
    );
    let samples = rt.block_on(load::latency(&targets, args.warmup, args.requests))?;
    let scripts = TempDir::new("wrk")?;
    let mut rounds: Vec<Vec<Load>> = vec![Vec::new(); targets.len()];
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
            let server = || target.server.and_then(process_tree_cpu);
            let timed = match &wrk {
                Some(wrk) => {
                    load::wrk(wrk, &scripts.0, target, args.connections, duration, server)?
                }
                None => rt.block_on(load::builtin(target, args.connections, duration, server))?,
            };
            rounds[i].push(Load::of(&timed));
        }
    }
    let rps: Vec<f64> = rounds
        .iter()
        .map(|r| median(&r.iter().map(|l| l.rps).collect::<Vec<_>>()))
        .collect();
    // CPU µs per request: the median of the rounds that measured it.
    let cpu: Vec<Option<f64>> = rounds
        .iter()
        .map(|r| {
            let us: Vec<f64> = r
                .iter()
                .filter_map(|l| l.cpu_per_request)
                .map(|d| d.as_secs_f64() * 1e6)
                .collect();
            (!us.is_empty()).then(|| median(&us))
        })
        .collect();
    let steal = steal_percent(ticks, cpu_ticks());
    let load_after = load_average();

    // Clean up before reporting: the instance, then nginx and serve (drop).
    if let Err(err) = rt.block_on(serve.delete(&setup, &instance)) {
        eprintln!("warning: {err:#}");
    }
    if let Some((base, deployed)) = baseline {
        if let Err(err) = rt.block_on(base.delete(&setup, &deployed.instance)) {
            eprintln!("warning: {err:#}");
        }
    }
    drop(nginx);
    drop(serve);

    println!();
    println!(
        "Throughput load tool: {}; {} round(s), the median of each path's rounds.",
        if wrk.is_some() {
            "wrk, one thread"
        } else {
            "this binary's reqwest client"
        },
        args.rounds.max(1)
    );
    for (target, r) in targets.iter().zip(&rounds) {
        let shown: Vec<String> = r.iter().map(|l| format!("{:.0}", l.rps)).collect();
        let cpu: Vec<String> = r
            .iter()
            .filter_map(|l| l.cpu_per_request)
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e6))
            .collect();
        if cpu.is_empty() {
            println!("- {}: {} req/s", target.name, shown.join(", "));
        } else {
            println!(
                "- {}: {} req/s; server CPU µs per request: {}",
                target.name,
                shown.join(", "),
                cpu.join(", ")
            );
        }
    }
    report(
        &args,
        &targets,
        &samples,
        &rps,
        &cpu,
        steal,
        (load_before, load_after),
    );
    Ok(())
}

fn report(
    args: &Args,
    targets: &[Target],
    samples: &[Vec<Duration>],
    rps: &[f64],
    cpu: &[Option<f64>],
    steal: Option<f64>,
    load: (String, String),
) {
    let stats: Vec<Option<Stats>> = samples.iter().map(|s| Stats::of(s)).collect();
    println!();
    println!(
        "{} timed sequential requests per path (after {} untimed), one keep-alive connection \
         each, in {BLOCKS} round-robin blocks; throughput {} s per path with {} connections. \
         Times in ms.",
        args.requests, args.warmup, args.duration, args.connections
    );
    print_conditions(steal, &load);
    println!();
    println!(
        "| path | mean ms | p50 ms | p90 ms | p99 ms | max ms | throughput req/s | server CPU \
         µs/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, target) in targets.iter().enumerate() {
        let cpu = cpu[i].map_or_else(|| "—".to_owned(), |us| format!("{us:.1}"));
        match &stats[i] {
            Some(s) => println!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {cpu} |",
                target.name, s.mean, s.p50, s.p90, s.p99, s.max, rps[i]
            ),
            None => println!(
                "| {} | — | — | — | — | — | {:.0} | {cpu} |",
                target.name, rps[i]
            ),
        }
    }
    let (Some(direct), Some(nginx)) = (&stats[0], &stats[2]) else {
        return;
    };
    let ratio = |i: usize, of: usize| if rps[of] > 0.0 { rps[i] / rps[of] } else { 0.0 };
    println!();
    println!("| overhead vs direct | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    let hangar_paths = [(1, "Hangar invoke"), (3, "Hangar instance URL")];
    for (i, label) in hangar_paths {
        if let Some(s) = &stats[i] {
            println!(
                "| {label} − direct | {:.3} | {:.3} |",
                s.p50 - direct.p50,
                s.p99 - direct.p99
            );
        }
    }
    println!(
        "| nginx − direct | {:.3} | {:.3} |",
        nginx.p50 - direct.p50,
        nginx.p99 - direct.p99
    );
    for (i, label) in [(4, "`GET /v1/agents/{id}`"), (5, "`GET /healthz`")] {
        if let Some(s) = &stats[i] {
            println!(
                "| {label} (not an overhead: its whole time, for comparison) | {:.3} | {:.3} |",
                s.p50, s.p99
            );
        }
    }
    println!();
    println!(
        "Throughput: invoke ÷ nginx = {:.2}×; instance URL ÷ nginx = {:.2}×; invoke ÷ direct = \
         {:.2}×; instance URL ÷ direct = {:.2}×; nginx ÷ direct = {:.2}×.",
        ratio(1, 2),
        ratio(3, 2),
        ratio(1, 0),
        ratio(3, 0),
        ratio(2, 0),
    );
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for (i, label) in hangar_paths {
        let Some(s) = &stats[i] else { continue };
        let (o50, o99) = (s.p50 - direct.p50, s.p99 - direct.p99);
        println!(
            "{label}: overhead p50 ≤ {P50_TARGET_MS} ms: {} ({o50:.3} ms); p99 ≤ \
             {P99_TARGET_MS} ms: {} ({o99:.3} ms); throughput ≥ {THROUGHPUT_TARGET:.1}× nginx: \
             {} ({:.2}×).",
            verdict(o50 <= P50_TARGET_MS),
            verdict(o99 <= P99_TARGET_MS),
            verdict(ratio(i, 2) >= THROUGHPUT_TARGET),
            ratio(i, 2),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_agent_is_there() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fast");
        assert!(dir.join("main.py").is_file());
    }
}
