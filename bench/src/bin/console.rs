//! The web console's first load: first paint, first contentful paint,
//! DOMContentLoaded, bytes over the wire and requests, of `/console/` served
//! by a real `hangar serve` against the same files served by nginx, in one
//! run, measured by one browser.
//!
//! Target (the console's issue): first paint < 300 ms on loopback, < 300 KB
//! transferred.
//!
//! # What runs
//! 1. `hangar serve` (`--hangar`, default the `hangar` next to this binary)
//!    in a fresh temporary directory on SQLite, with a known admin key; no
//!    agent (the agents page shows an empty list).
//! 2. nginx (`--nginx`, default `nginx` in `PATH`) serving a copy of the
//!    console's files (`crates/hangar-console/assets`) at `/console/` from a
//!    temporary directory, and passing `/v1/` to that `hangar serve`, so the
//!    signed-in page makes the same API calls to the same server: the two
//!    targets differ only in who serves the console's files.
//! 3. The browser side, `crates/hangar-console/e2e/paint.mjs` (Node and the
//!    e2e's `playwright-core`: `npm ci` in that directory), driving Debian's
//!    Chromium (`--chromium`). Per target, page and run: a fresh browser
//!    context, the HTTP cache disabled, then the page loaded — the sign-in
//!    page (`/console/`, no key) and the agents page (`/console/#/agents`
//!    with the admin key stored in `sessionStorage` the way the console's
//!    sign-in stores it). Targets alternate run by run; `--warmup` loads of
//!    each are not counted. Its module docs say what each figure is.
//!
//! Figures are the browser's own (Performance API paint and navigation
//! entries, CDP's encoded byte counts); this binary only sets up, tears down
//! and summarises (nearest-rank percentiles). The ratio is Hangar's median ÷
//! nginx's.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, terminate, version, TempDir};
use hangar_bench::serve::Serve;
use hangar_bench::{
    cpu_count, cpu_ticks, find_program, free_port, kernel_release, load_average, percentile,
    print_conditions, steal_percent,
};
use serde_json::{json, Value};

/// The admin key the server starts with and the signed-in page uses.
const KEY: &str = "hgr_benchconsole00000000000000000000000000000";

/// Targets: first paint and bytes transferred of a first load.
const FIRST_PAINT_MS: f64 = 300.0;
const TRANSFERRED_BYTES: f64 = 300.0 * 1000.0;

/// The pages `paint.mjs` loads, in the order the report shows them.
const PAGES: [&str; 2] = ["sign-in", "agents"];

/// The figures of one load, as `paint.mjs` names them, with how the report
/// labels them and whether they are times.
const FIGURES: [(&str, &str, bool); 6] = [
    ("fp", "first paint (ms)", true),
    ("fcp", "first contentful paint (ms)", true),
    ("dcl", "DOMContentLoaded (ms)", true),
    ("ready", "page shown (ms)", true),
    ("bytes", "bytes transferred", false),
    ("requests", "requests", false),
];

const HANGAR: &str = "hangar";
const NGINX: &str = "nginx";

/// The console's first load through `hangar serve` against nginx serving
/// the same files.
#[derive(Parser, Debug)]
struct Args {
    /// Timed loads per server and page.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed loads per server and page before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// The hangar binary (default: `hangar` next to this benchmark).
    #[arg(long)]
    hangar: Option<PathBuf>,
    /// The nginx binary (default: `nginx` in `PATH`).
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// The browser.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: PathBuf,
}

/// nginx serving the console's files at `/console/` and passing `/v1/` to
/// Hangar, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start(nginx: &Path, assets: &Path, api: &str) -> Result<Self> {
        let dir = TempDir::new("ngxc")?;
        copy_dir(assets, &dir.0.join("www/console"))?;
        let port = free_port().context("finding a free loopback port")?;
        let d = dir.0.display();
        // The console's files are ES modules: a browser runs a module only
        // when it comes with a JavaScript content type, so the types are
        // spelled out (no system mime.types is assumed).
        let conf = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   types {{\n\
             \x20       text/html html;\n\
             \x20       text/css css;\n\
             \x20       text/javascript js;\n\
             \x20       image/svg+xml svg;\n\
             \x20   }}\n\
             \x20   charset utf-8;\n\
             \x20   charset_types text/css text/javascript;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       root {d}/www;\n\
             \x20       location /console/ {{ index index.html; }}\n\
             \x20       location /v1/ {{\n\
             \x20           proxy_pass http://{api};\n\
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

/// Copies a directory tree of plain files.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Min, median, p95 and max (nearest rank) of some figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    min: f64,
    p50: f64,
    p95: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            min: *sorted.first()?,
            p50: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            max: *sorted.last()?,
        })
    }
}

/// The figure `figure` of every load of `target`'s `page`.
fn figures(samples: &[Value], target: &str, page: &str, figure: &str) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s["target"] == target && s["page"] == page)
        .filter_map(|s| s[figure].as_f64())
        .collect()
}

fn cell(value: f64, time: bool) -> String {
    if time {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let nginx_bin = match &args.nginx {
        Some(path) => path.clone(),
        None => find_program("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .context("nginx is not installed (Debian: apt-get install nginx-light)")?,
    };
    ensure!(
        args.chromium.is_file(),
        "{} not found (Debian: apt-get install chromium), or pass --chromium",
        args.chromium.display()
    );
    let node = find_program("node").context("node is not installed (Debian: nodejs)")?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let assets = repo.join("crates/hangar-console/assets");
    let e2e = repo.join("crates/hangar-console/e2e");
    ensure!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "no playwright-core: run `npm ci` in crates/hangar-console/e2e"
    );

    let serve = Serve::start(&hangar_bin, "con", KEY, &[])?;
    eprintln!("hangar serve at {} in {}", serve.url, serve.dir.0.display());
    let api = serve.url.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&nginx_bin, &assets, &api)?;
    let nginx_url = format!("http://127.0.0.1:{}", nginx.port);
    eprintln!("nginx at {nginx_url}");
    let targets = json!([
        { "name": HANGAR, "url": serve.url },
        { "name": NGINX, "url": nginx_url },
    ]);

    let load_before = load_average();
    let ticks_before = cpu_ticks();
    let out = Command::new(&node)
        .arg(e2e.join("paint.mjs"))
        .current_dir(&e2e)
        .env("TARGETS", targets.to_string())
        .env("HANGAR_KEY", KEY)
        .env("RUNS", args.runs.to_string())
        .env("WARMUP", args.warmup.to_string())
        .env("CHROMIUM", &args.chromium)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running paint.mjs")?;
    let steal = steal_percent(ticks_before, cpu_ticks());
    let load_after = load_average();
    ensure!(out.status.success(), "paint.mjs failed: {}", out.status);
    let samples: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("paint.mjs printed a line that is not JSON")?;
    drop(nginx);
    drop(serve);

    println!("# Console: first load, hangar serve vs nginx serving the same files");
    println!();
    println!(
        "{} timed loads per server and page ({} warm-up), a fresh browser context each, cache \
         disabled. Kernel {}, {} CPUs.",
        args.runs,
        args.warmup,
        kernel_release(),
        cpu_count()
    );
    println!(
        "Browser: {}. nginx: {}. Node: {}.",
        version(&args.chromium, &["--version"]),
        version(&nginx_bin, &["-v"]),
        version(&node, &["--version"])
    );
    print_conditions(steal, &(load_before, load_after));
    let mut verdicts = Vec::new();
    for page in PAGES {
        println!();
        println!("## {page}");
        println!();
        println!("| figure | server | min | median | p95 | max | Hangar ÷ nginx (median) |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for (figure, label, time) in FIGURES {
            let hangar = Summary::of(&figures(&samples, HANGAR, page, figure));
            let nginx = Summary::of(&figures(&samples, NGINX, page, figure));
            for (name, summary) in [(HANGAR, hangar), (NGINX, nginx)] {
                let Some(s) = summary else {
                    println!("| {label} | {name} | — | — | — | — | — |");
                    continue;
                };
                let ratio = match (name, nginx) {
                    (HANGAR, Some(n)) if n.p50 > 0.0 => format!("{:.2}×", s.p50 / n.p50),
                    (HANGAR, _) => "—".to_owned(),
                    _ => String::new(),
                };
                println!(
                    "| {label} | {name} | {} | {} | {} | {} | {ratio} |",
                    cell(s.min, time),
                    cell(s.p50, time),
                    cell(s.p95, time),
                    cell(s.max, time)
                );
            }
            match (figure, hangar) {
                ("fp", Some(s)) => verdicts.push(format!(
                    "{page}: first paint p95 {:.1} ms (max {:.1}) against < {FIRST_PAINT_MS} ms: {}",
                    s.p95,
                    s.max,
                    if s.max < FIRST_PAINT_MS { "met" } else { "NOT met" }
                )),
                ("bytes", Some(s)) => verdicts.push(format!(
                    "{page}: {:.1} KB transferred (max) against < {:.0} KB: {}",
                    s.max / 1000.0,
                    TRANSFERRED_BYTES / 1000.0,
                    if s.max < TRANSFERRED_BYTES { "met" } else { "NOT met" }
                )),
                _ => {}
            }
        }
    }
    println!();
    println!("## Targets (Hangar, every load)");
    println!();
    for verdict in verdicts {
        println!("- {verdict}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_nearest_rank() {
        let values: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(
            Summary::of(&values),
            Some(Summary {
                min: 1.0,
                p50: 10.0,
                p95: 19.0,
                max: 20.0
            })
        );
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn figures_are_picked_by_target_and_page() {
        let samples = vec![
            json!({"target": HANGAR, "page": "agents", "fp": 12.5}),
            json!({"target": NGINX, "page": "agents", "fp": 10.0}),
            json!({"target": HANGAR, "page": "sign-in", "fp": 9.0}),
        ];
        assert_eq!(figures(&samples, HANGAR, "agents", "fp"), vec![12.5]);
        assert!(figures(&samples, NGINX, "sign-in", "fp").is_empty());
    }
}
