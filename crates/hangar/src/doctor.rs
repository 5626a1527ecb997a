//! `hangar doctor`: what this host lets `hangar serve` do, one line per
//! check with the fix, so a first run that does not run agents says why
//! before anyone reads a log.
//!
//! Each check is a function returning a [`Finding`]; the facts it judges
//! (mount table, files present, free space, whether a process answers) are
//! gathered by small readers and handed in, so the judgement is unit-tested
//! on made-up hosts. `hangar serve` prints the [`local`] findings (those that
//! touch no network) at start; `hangar doctor` adds the engines and
//! databases it would connect to ([`all`]), each limited to
//! [`NETWORK_TIMEOUT`] so a host that does not answer cannot hang it.
//!
//! What it is not: a fixer (it creates nothing — not even the data dir or
//! the database; an existing database is opened as `hangar serve` opens
//! it, to read its kubernetes clouds) nor a test of every agent (a check
//! passes when what Hangar needs is present, not when every build will
//! succeed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::{redact_url, Config};

/// How long one check may wait for an engine, a cluster or a database.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(2);

/// Below this much free space in the data dir, builds and logs fail.
const DISK_FAIL_BYTES: u64 = 1 << 30;
/// Below this much, a few builds (a virtualenv is hundreds of MiB) fill it.
const DISK_WARN_BYTES: u64 = 5 << 30;

/// The cgroup controllers sandboxes set limits with: a CPU weight and quota,
/// a memory limit, a pids limit.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Where a sandbox finds programs: the host's `/usr` is bound into it, and
/// its `PATH` is the system's (`SandboxSpec::new`); git runs on the host
/// with the same directories.
const TOOL_DIRS: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

/// Where the runtime looks for `iptables` (the bridge's masquerade) and
/// where `nft` (the sandboxes' packet filter) is installed.
const SYSTEM_DIRS: [&str; 5] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How bad a finding is for running agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Something optional is missing, or agents run with less (no
    /// isolation, no docker clouds): `hangar serve` still runs agents.
    Warn,
    /// `hangar serve` cannot run agents (or cannot start) until it is fixed.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`root`, `cgroups`, `network`, …).
    pub name: &'static str,
    /// How bad it is.
    pub status: Status,
    /// What was found, and what it means for agents.
    pub detail: String,
    /// What to do about it (none when it is fine).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// The finding on one line: status, name, detail, fix.
    #[must_use]
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<4}  {:<10} {}",
            self.status.label(),
            self.name,
            self.detail
        );
        if let Some(fix) = &self.fix {
            line.push_str(" — fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// Why a server will not run agents: `None` as root; otherwise the reason
/// the API gives with 503 `RUNTIME_UNAVAILABLE` — the one refusal `hangar
/// serve` makes on its own (other failed checks are the driver's to report,
/// replica by replica).
#[must_use]
pub fn no_agents_reason(euid_root: bool) -> Option<&'static str> {
    (!euid_root).then_some(
        "this server is not running as root, and sandboxes need root (namespaces, cgroups, \
         mounts), so it runs no agents; run `hangar doctor` on the server for what to fix",
    )
}

/// The checks that need no network: what `hangar serve` prints at start.
#[must_use]
pub fn local(config: &Config) -> Vec<Finding> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = parse_mountinfo(&mountinfo);
    let v2_controllers = unified_mount(&mounts)
        .and_then(|mount| std::fs::read_to_string(mount.point.join("cgroup.controllers")).ok());
    let exists = |path: &Path| path.exists();
    vec![
        root(nix::unistd::geteuid().as_raw()),
        cgroups(&mounts, v2_controllers.as_deref()),
        network(&exists),
        data_dir(&config.data_dir, &|path| space(path)),
        python(find_tool("python3", &exists), python_venv),
        node(find_tool("node", &exists), find_tool("npm", &exists)),
        git(find_tool("git", &exists)),
    ]
}

/// Every check: [`local`], then the database, the Docker engine and a
/// Kubernetes cluster, asked at once (each within [`NETWORK_TIMEOUT`]).
pub async fn all(config: &Config) -> Vec<Finding> {
    // The local checks read files and run python3: off the async threads.
    let owned = config.clone();
    let mut findings = tokio::task::spawn_blocking(move || local(&owned))
        .await
        .unwrap_or_else(|err| {
            vec![Finding::fail(
                "checks",
                format!("the host's checks did not finish: {err}"),
                "report this as a bug",
            )]
        });
    let (database, docker, kubernetes) =
        tokio::join!(database(config), docker(config), kubernetes(config));
    findings.extend([database, docker, kubernetes]);
    findings
}

/// Whether `hangar serve` can run agents with these findings: none failed.
#[must_use]
pub fn runs_agents(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.status != Status::Fail)
}

/// `hangar doctor`: prints every finding and a verdict; 0 when `hangar
/// serve` can run agents here, 1 otherwise.
pub async fn run(config: &Config) -> u8 {
    let findings = all(config).await;
    println!(
        "hangar doctor: data dir {}, database {}",
        config.data_dir.display(),
        redact_url(&config.database_url)
    );
    for finding in &findings {
        println!("  {}", finding.line());
    }
    let warnings = findings.iter().filter(|f| f.status == Status::Warn).count();
    let failures = findings.iter().filter(|f| f.status == Status::Fail).count();
    if failures == 0 {
        println!("hangar serve can run agents here ({warnings} warning(s))");
        0
    } else {
        println!(
            "hangar serve cannot run agents here: {failures} check(s) failed (fix the FAIL lines above)"
        );
        1
    }
}

/// The block `hangar serve` prints at start: every finding that is not ok,
/// then one summary line.
#[must_use]
pub fn start_block(findings: &[Finding]) -> Vec<String> {
    let mut lines: Vec<String> = findings
        .iter()
        .filter(|f| f.status != Status::Ok)
        .map(|f| format!("hangar: {}", f.line()))
        .collect();
    let problems = lines.len();
    lines.push(if problems == 0 {
        format!("hangar: {} start-up checks ok", findings.len())
    } else if runs_agents(findings) {
        format!("hangar: {problems} warning(s) above; agents run here (`hangar doctor` explains)")
    } else {
        "hangar: THIS SERVER WILL NOT RUN AGENTS (see FAIL above); the APIs work; \
         run `hangar doctor` for what to fix"
            .to_owned()
    });
    lines
}

/// Root: sandboxes need it (namespaces, cgroups, mounts, the bridge).
#[must_use]
pub fn root(euid: u32) -> Finding {
    if euid == 0 {
        Finding::ok(
            "root",
            "running as root: sandboxes, cgroup limits and bridged networking are available",
        )
    } else {
        Finding::fail(
            "root",
            format!(
                "not running as root (uid {euid}): sandboxes need root (namespaces, cgroups, \
                 mounts), so no agent runs; the APIs work, but creating agents and instances \
                 answers 503 RUNTIME_UNAVAILABLE"
            ),
            "run `hangar serve` as root (e.g. `sudo hangar serve`, or a systemd unit without User=)",
        )
    }
}

/// One line of `/proc/self/mountinfo`, as far as the checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// `cgroup`, `cgroup2`, `tmpfs`, …
    pub fstype: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// The file system's options (a v1 cgroup's controllers are among them).
    pub options: Vec<String>,
}

/// The cgroup (v1) and cgroup2 mounts of a mountinfo text.
#[must_use]
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut rest = after.split(' ');
            let fstype = rest.next()?;
            let _source = rest.next()?;
            let options = rest.next().unwrap_or_default();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                point: PathBuf::from(fields.get(4)?),
                fstype: fstype.to_owned(),
                read_only: fields.get(5)?.split(',').any(|o| o == "ro"),
                options: options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The cgroup2 mount at `/sys/fs/cgroup` (a unified host) or, failing that,
/// anywhere (a hybrid host's `unified`).
fn unified_mount(mounts: &[Mount]) -> Option<&Mount> {
    let v2 = || mounts.iter().filter(|m| m.fstype == "cgroup2");
    v2().find(|m| m.point == Path::new("/sys/fs/cgroup"))
        .or_else(|| v2().next())
}

/// Cgroups: the layout, and whether the controllers sandboxes set limits
/// with are there and writable. libcontainer uses v2 only when
/// `/sys/fs/cgroup` itself is cgroup2; on a hybrid host it uses the v1
/// hierarchies, so the controllers must be there. `v2_controllers` is the
/// unified hierarchy's `cgroup.controllers`.
#[must_use]
pub fn cgroups(mounts: &[Mount], v2_controllers: Option<&str>) -> Finding {
    let fix_missing =
        "boot with the controllers enabled (cgroup v2: `systemd.unified_cgroup_hierarchy=1`; \
                       in a container: run it with its own cgroup namespace and `--privileged`)";
    let unified = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2" && m.point == Path::new("/sys/fs/cgroup"));
    if let Some(mount) = unified {
        let available: Vec<&str> = v2_controllers
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let missing: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !available.contains(c))
            .collect();
        if !missing.is_empty() {
            return Finding::fail(
                "cgroups",
                format!(
                    "v2 (unified) without the {} controller(s): sandboxes cannot get their limits",
                    missing.join(", ")
                ),
                fix_missing,
            );
        }
        if mount.read_only {
            return Finding::fail(
                "cgroups",
                "v2 (unified), mounted read-only: sandboxes cannot get cgroups",
                "mount /sys/fs/cgroup read-write (a container: `--privileged` or `--cgroupns=private`)",
            );
        }
        return Finding::ok(
            "cgroups",
            format!("v2 (unified) with {}", CONTROLLERS.join(", ")),
        );
    }
    let v1: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup").collect();
    if v1.is_empty() {
        return Finding::fail(
            "cgroups",
            "no cgroup file system is mounted: sandboxes cannot be made",
            "mount cgroup2 at /sys/fs/cgroup (`mount -t cgroup2 none /sys/fs/cgroup`)",
        );
    }
    let layout = if mounts.iter().any(|m| m.fstype == "cgroup2") {
        "hybrid (v1 controllers, v2 beside them)"
    } else {
        "v1"
    };
    let holder = |controller: &str| {
        v1.iter()
            .find(|m| m.options.iter().any(|o| o == controller))
            .copied()
    };
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| holder(c).is_none())
        .collect();
    if !missing.is_empty() {
        return Finding::fail(
            "cgroups",
            format!(
                "{layout} without the {} controller(s): sandboxes cannot get their limits",
                missing.join(", ")
            ),
            fix_missing,
        );
    }
    let read_only: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| holder(c).is_some_and(|m| m.read_only))
        .collect();
    if !read_only.is_empty() {
        return Finding::fail(
            "cgroups",
            format!(
                "{layout}, with {} mounted read-only: sandboxes cannot get cgroups",
                read_only.join(", ")
            ),
            "mount the cgroup hierarchies read-write (a container: `--privileged`)",
        );
    }
    Finding::ok(
        "cgroups",
        format!("{layout} with {}", CONTROLLERS.join(", ")),
    )
}

/// Networking: bridged (every replica its own address on `hangar0`)
/// needs the CNI plugins `bridge`, `host-local` and `loopback` and
/// `iptables`; without them replicas share the host's network. A bridged
/// replica is admitted to the packet filter with `nft`: without it, every
/// bridged replica fails to start.
#[must_use]
pub fn network(exists: &dyn Fn(&Path) -> bool) -> Finding {
    let plugin_dir = Path::new(hangar_runtime::sandbox::CNI_PLUGIN_DIR);
    let missing_plugins: Vec<&str> = ["bridge", "host-local", "loopback"]
        .into_iter()
        .filter(|plugin| !exists(&plugin_dir.join(plugin)))
        .collect();
    let in_system = |program: &str| {
        SYSTEM_DIRS
            .iter()
            .any(|dir| exists(&Path::new(dir).join(program)))
    };
    let mut missing: Vec<String> = missing_plugins
        .iter()
        .map(|plugin| format!("{}/{plugin}", plugin_dir.display()))
        .collect();
    if !in_system("iptables") {
        missing.push("iptables".to_owned());
    }
    if !missing.is_empty() {
        return Finding::warn(
            "network",
            format!(
                "host-network fallback: {} missing, so replicas share the host's network \
                 (each its own PORT, but not isolated from each other or the host)",
                missing.join(", ")
            ),
            "install the CNI plugins and iptables (Debian: `apt install containernetworking-plugins iptables nftables`)",
        );
    }
    if !in_system("nft") {
        return Finding::fail(
            "network",
            "bridged networking, but nft is missing: every replica on the bridge fails to start \
             (its packet filter rules are applied with nft)",
            "install nftables (Debian: `apt install nftables`)",
        );
    }
    Finding::ok(
        "network",
        format!(
            "bridged: CNI plugins in {}, iptables and nft present (replicas get their own address on hangar0)",
            plugin_dir.display()
        ),
    )
}

/// Free space and write access where a path is (or would be created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    /// This process may create files there.
    pub writable: bool,
}

/// The data dir (or, before the first start, the directory it will be
/// made in): writable by this process, and free space for builds, logs
/// and the database.
#[must_use]
pub fn data_dir(path: &Path, space: &dyn Fn(&Path) -> Option<(PathBuf, Space)>) -> Finding {
    let Some((at, space)) = space(path) else {
        return Finding::fail(
            "data dir",
            format!("{}: no part of the path can be read", path.display()),
            "choose a data dir this user can create (--data-dir / HANGAR_DATA_DIR)",
        );
    };
    let shown = if at == path {
        path.display().to_string()
    } else {
        format!(
            "{} (not there yet: made in {})",
            path.display(),
            at.display()
        )
    };
    if !space.writable {
        return Finding::fail(
            "data dir",
            format!("{shown} is not writable by this user: hangar serve cannot start"),
            format!(
                "choose another data dir (--data-dir / HANGAR_DATA_DIR), or give this user {}",
                at.display()
            ),
        );
    }
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    let free = format!("{:.1} GiB free", gib(space.free));
    if space.free < DISK_FAIL_BYTES {
        return Finding::fail(
            "data dir",
            format!("{shown}: only {free}; builds and logs will fail"),
            "free space on that file system, or choose a data dir on another one",
        );
    }
    if space.free < DISK_WARN_BYTES {
        return Finding::warn(
            "data dir",
            format!("{shown}: {free}; a few builds (a virtualenv is hundreds of MiB) fill it"),
            "free space on that file system, or choose a data dir on another one",
        );
    }
    Finding::ok("data dir", format!("{shown}: writable, {free}"))
}

/// The path itself when it exists, else its nearest existing ancestor
/// (where it would be created), with its free space and write access.
fn space(path: &Path) -> Option<(PathBuf, Space)> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let at = absolute.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(at).ok()?;
    let writable = nix::unistd::access(
        at,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok();
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let at = if at == absolute {
        path.to_path_buf()
    } else {
        at.to_path_buf()
    };
    Some((at, Space { free, writable }))
}

/// Where `program` is among the directories sandboxes see.
fn find_tool(program: &str, exists: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| exists(path))
}

/// Whether `python3` can make a virtualenv with pip (Debian splits
/// `venv`'s `ensurepip` into `python3-venv`).
fn python_venv(python: &Path) -> Result<(), String> {
    let output = run_limited(
        Command::new(python).args(["-c", "import venv, ensurepip"]),
        NETWORK_TIMEOUT,
    )?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .lines()
            .last()
            .unwrap_or("the import failed")
            .trim()
            .to_owned())
    }
}

/// Runs `command` to its end, or kills it after `limit`.
fn run_limited(command: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run it: {err}"))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => {
                return child
                    .wait_with_output()
                    .map_err(|err| format!("cannot read its output: {err}"))
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", limit.as_secs()));
            }
            Err(err) => return Err(format!("cannot wait for it: {err}")),
        }
    }
}

/// Python agents: run with the host's `python3`; a `requirements.txt` or
/// `pyproject.toml` builds a virtualenv with pip.
#[must_use]
pub fn python(found: Option<PathBuf>, venv: impl Fn(&Path) -> Result<(), String>) -> Finding {
    let Some(python) = found else {
        return Finding::warn(
            "python",
            format!(
                "no python3 in {}: Python agents will not build or run",
                TOOL_DIRS.join(", ")
            ),
            "install Python (Debian: `apt install python3 python3-venv`); only needed for Python agents",
        );
    };
    match venv(&python) {
        Ok(()) => Finding::ok(
            "python",
            format!(
                "{} with venv and pip: Python agents build and run",
                python.display()
            ),
        ),
        Err(why) => Finding::warn(
            "python",
            format!(
                "{} cannot make a virtualenv ({why}): Python agents with requirements.txt or \
                 pyproject.toml will not build",
                python.display()
            ),
            "install venv (Debian: `apt install python3-venv`)",
        ),
    }
}

/// Node agents: run with the host's `node`; a `package.json` with
/// dependencies builds with `npm`.
#[must_use]
pub fn node(node: Option<PathBuf>, npm: Option<PathBuf>) -> Finding {
    let fix =
        "install Node.js and npm (Debian: `apt install nodejs npm`); only needed for Node agents";
    match (node, npm) {
        (Some(node), Some(npm)) => Finding::ok(
            "node",
            format!(
                "{} and {}: Node agents build and run",
                node.display(),
                npm.display()
            ),
        ),
        (Some(node), None) => Finding::warn(
            "node",
            format!(
                "{} but no npm: Node agents with dependencies (package.json) will not build",
                node.display()
            ),
            fix,
        ),
        (None, _) => Finding::warn(
            "node",
            format!(
                "no node in {}: Node agents will not run",
                TOOL_DIRS.join(", ")
            ),
            fix,
        ),
    }
}

/// Git sources are cloned with the host's `git`.
#[must_use]
pub fn git(found: Option<PathBuf>) -> Finding {
    match found {
        Some(git) => Finding::ok("git", format!("{}: git sources build", git.display())),
        None => Finding::warn(
            "git",
            format!(
                "no git in {}: agents from git sources will not build",
                TOOL_DIRS.join(", ")
            ),
            "install git (Debian: `apt install git`); only needed for git sources",
        ),
    }
}

/// The database `hangar serve` would open: a PostgreSQL server must
/// answer (the server does not start without it); SQLite needs its file
/// (or the directory it will be made in) writable.
async fn database(config: &Config) -> Finding {
    let url = &config.database_url;
    if let Some(path) = sqlite_path(url) {
        return sqlite(&path, space(&path).map(|(_, space)| space.writable));
    }
    let shown = redact_url(url);
    let connecting = async {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(url).await?;
        connection.ping().await?;
        connection.close().await
    };
    match tokio::time::timeout(NETWORK_TIMEOUT, connecting).await {
        Ok(Ok(())) => Finding::ok("database", format!("PostgreSQL at {shown} answers")),
        Ok(Err(err)) => postgres_down(&shown, &err.to_string()),
        Err(_) => postgres_down(
            &shown,
            &format!("no answer within {} s", NETWORK_TIMEOUT.as_secs()),
        ),
    }
}

fn postgres_down(shown: &str, why: &str) -> Finding {
    Finding::fail(
        "database",
        format!("PostgreSQL at {shown} does not answer ({why}): hangar serve cannot start"),
        "start PostgreSQL, or correct --database-url / HANGAR_DATABASE_URL",
    )
}

/// A SQLite database at `path`, whose file (or directory) this process may
/// write (`None`: nothing of the path exists).
#[must_use]
pub fn sqlite(path: &Path, writable: Option<bool>) -> Finding {
    match writable {
        Some(true) => Finding::ok("database", format!("SQLite at {}", path.display())),
        _ => Finding::fail(
            "database",
            format!(
                "SQLite at {}: not writable by this user, so hangar serve cannot start",
                path.display()
            ),
            "choose a database this user can write (--database-url / HANGAR_DATABASE_URL)",
        ),
    }
}

/// The Docker engine docker clouds build and run on (optional).
async fn docker(config: &Config) -> Finding {
    let engine = config
        .docker_host
        .clone()
        .unwrap_or_else(|| "the local socket".to_owned());
    let asking = async {
        let driver = hangar_runtime::DockerDriver::connect(hangar_runtime::DockerDriverConfig {
            host: config.docker_host.clone(),
            // Only asked for its version: no container is made.
            owner: "doctor".to_owned(),
            default_image: hangar_build::docker::DEFAULT_BASE_IMAGE.to_owned(),
        })
        .await
        .map_err(|err| err.to_string())?;
        driver.engine_version().await.map_err(|err| err.to_string())
    };
    let answer = tokio::time::timeout(NETWORK_TIMEOUT, asking)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", NETWORK_TIMEOUT.as_secs())));
    docker_finding(&engine, answer)
}

/// The Docker finding for the engine at `engine`'s answer (its version).
#[must_use]
pub fn docker_finding(engine: &str, answer: Result<String, String>) -> Finding {
    match answer {
        Ok(version) => Finding::ok(
            "docker",
            format!("engine {version} at {engine}: docker clouds build and run here"),
        ),
        Err(why) => Finding::warn(
            "docker",
            format!("no Docker engine at {engine} ({why}): agents on docker clouds will not build or run"),
            "start dockerd (Debian: `apt install docker.io`) or point --docker-host / HANGAR_DOCKER_HOST at one; only needed for docker clouds",
        ),
    }
}

/// Kubernetes clouds: the cluster of every kubernetes cloud in the
/// database `hangar serve` would open (its `config.kubeconfig` and
/// `context`, as the driver reads them), or, with none there yet, the
/// cluster the default kubeconfig names — what a new cloud without a
/// kubeconfig of its own would use. Optional: only their agents need it.
async fn kubernetes(config: &Config) -> Finding {
    let clouds = match tokio::time::timeout(NETWORK_TIMEOUT, kubernetes_clouds(config)).await {
        Ok(Ok(clouds)) => clouds,
        // No database yet, or one that does not answer (its own check
        // says so): the default kubeconfig is what there is to check.
        Ok(Err(_)) | Err(_) => Vec::new(),
    };
    if clouds.is_empty() {
        let answer = cluster_version(&ClusterAddress::default()).await;
        return default_cluster_finding(answer);
    }
    let mut asking = tokio::task::JoinSet::new();
    for (name, address) in clouds {
        asking.spawn(async move {
            let answer = cluster_version(&address).await;
            (name, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = asking.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort();
    clouds_finding(&answers)
}

/// A cluster's API server address and Kubernetes version, or why it did
/// not answer.
type ClusterAnswer = Result<(String, String), String>;

/// Where a cloud's cluster is: a kubeconfig file and its context (`None`:
/// in-cluster, then `$KUBECONFIG`, then `~/.kube/config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ClusterAddress {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

/// The kubernetes clouds of the database `config` names, by name, when
/// that database exists (a SQLite file that is not there is not made).
async fn kubernetes_clouds(config: &Config) -> Result<Vec<(String, ClusterAddress)>, String> {
    if let Some(path) = sqlite_path(&config.database_url) {
        if !path.exists() {
            return Ok(Vec::new());
        }
    }
    // Clouds are not sealed: a throwaway key reads them.
    let sealer = hangar_store::seal::Sealer::new(&hangar_store::seal::Sealer::generate_key())
        .map_err(|err| err.to_string())?;
    let store = hangar_store::Store::connect(&config.database_url, sealer)
        .await
        .map_err(|err| err.to_string())?;
    let clouds = store
        .clouds_of_driver(hangar_core::model::DriverKind::Kubernetes)
        .await
        .map_err(|err| err.to_string());
    store.close().await;
    Ok(clouds?
        .into_iter()
        .map(|cloud| {
            let parsed = hangar_core::kubernetes::KubernetesCloudConfig::parse(&cloud.config).ok();
            let address = ClusterAddress {
                kubeconfig: parsed
                    .as_ref()
                    .and_then(|c| c.kubeconfig.as_ref().map(PathBuf::from)),
                context: parsed.and_then(|c| c.context),
            };
            (cloud.name, address)
        })
        .collect())
}

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
}

/// The version of the API server at `address`, or why there is none (read
/// as the kubernetes driver reads it, but only asked for its version).
async fn cluster_version(address: &ClusterAddress) -> ClusterAnswer {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let asking = async {
        let options = KubeConfigOptions {
            context: address.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &address.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|err| {
                    format!("cannot read the kubeconfig {}: {err}", path.display())
                })?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|err| format!("unusable kubeconfig {}: {err}", path.display()))?
            }
            None if address.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|err| format!("unusable kubeconfig: {err}"))?,
            None => kube::Config::infer().await.map_err(|err| {
                // kube tells why each way failed; the kubeconfig's is the
                // one an operator acts on.
                let text = err.to_string();
                let why = text
                    .split_once("kubeconfig: (")
                    .map_or(text.as_str(), |(_, why)| {
                        why.strip_suffix(')').unwrap_or(why)
                    });
                format!(
                    "no usable kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a cluster: {why}"
                )
            })?,
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|err| err.to_string())?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|err| format!("{server} does not answer: {err}"))?;
        Ok((server, version.git_version))
    };
    tokio::time::timeout(NETWORK_TIMEOUT, asking)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the cluster did not answer within {} s",
                NETWORK_TIMEOUT.as_secs()
            ))
        })
}

/// The finding for the default kubeconfig's cluster (no kubernetes cloud yet).
fn default_cluster_finding(answer: ClusterAnswer) -> Finding {
    match answer {
        Ok((server, version)) => Finding::ok(
            "kubernetes",
            format!(
                "no kubernetes cloud yet; the default kubeconfig's cluster at {server} answers                  (Kubernetes {version}): a kubernetes cloud can use it"
            ),
        ),
        Err(why) => Finding::warn(
            "kubernetes",
            format!(
                "no kubernetes cloud yet, and {why}: a kubernetes cloud needs a kubeconfig of its own"
            ),
            "set KUBECONFIG to a cluster's kubeconfig, or give the cloud `config.kubeconfig`; only needed for kubernetes clouds",
        ),
    }
}

/// The finding for the kubernetes clouds' clusters, by cloud name.
#[must_use]
fn clouds_finding(answers: &[(String, ClusterAnswer)]) -> Finding {
    let down: Vec<String> = answers
        .iter()
        .filter_map(|(name, answer)| {
            answer
                .as_ref()
                .err()
                .map(|why| format!("cloud '{name}': {why}"))
        })
        .collect();
    if down.is_empty() {
        let up: Vec<String> = answers
            .iter()
            .filter_map(|(name, answer)| {
                answer
                    .as_ref()
                    .ok()
                    .map(|(server, version)| format!("'{name}' at {server} (Kubernetes {version})"))
            })
            .collect();
        return Finding::ok(
            "kubernetes",
            format!(
                "the clusters of every kubernetes cloud answer: {}",
                up.join(", ")
            ),
        );
    }
    Finding::warn(
        "kubernetes",
        format!(
            "{}: agents on {} will not build or run",
            down.join("; "),
            if down.len() == 1 { "that cloud" } else { "those clouds" }
        ),
        "bring the cluster up, or make the file the cloud's `config.kubeconfig` names (and its `context`) reach it; only agents on those clouds need it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 31 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime shared:9 master:3 - cgroup2 cgroup2 rw
";

    const UNIFIED: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn cgroup_layouts_are_told_apart() {
        let hybrid = parse_mountinfo(HYBRID);
        assert_eq!(hybrid.len(), 5, "only cgroup mounts: {hybrid:?}");
        let finding = cgroups(&hybrid, Some("cpu memory pids"));
        assert_eq!(finding.status, Status::Ok, "{finding:?}");
        assert!(finding.detail.starts_with("hybrid"), "{finding:?}");

        let v1 = parse_mountinfo(&HYBRID.replace("cgroup2 cgroup2", "tmpfs tmpfs"));
        let finding = cgroups(&v1, None);
        assert_eq!(finding.status, Status::Ok);
        assert!(finding.detail.starts_with("v1 "), "{finding:?}");

        let unified = parse_mountinfo(UNIFIED);
        let finding = cgroups(
            &unified,
            Some("cpuset cpu io memory hugetlb pids rdma misc\n"),
        );
        assert_eq!(finding.status, Status::Ok);
        assert!(finding.detail.starts_with("v2"), "{finding:?}");
    }

    #[test]
    fn missing_or_read_only_controllers_fail() {
        let unified = parse_mountinfo(UNIFIED);
        let finding = cgroups(&unified, Some("cpu io"));
        assert_eq!(finding.status, Status::Fail);
        assert!(finding.detail.contains("memory, pids"), "{finding:?}");

        let no_pids = parse_mountinfo(&HYBRID.replace("rw,pids", "rw,freezer"));
        let finding = cgroups(&no_pids, None);
        assert_eq!(finding.status, Status::Fail);
        assert!(finding.detail.contains("pids"), "{finding:?}");

        let read_only = parse_mountinfo(&UNIFIED.replace(" rw,nosuid", " ro,nosuid"));
        assert_eq!(
            cgroups(&read_only, Some("cpu memory pids")).status,
            Status::Fail
        );
        assert_eq!(cgroups(&[], None).status, Status::Fail, "no cgroups at all");
    }

    #[test]
    fn networking_is_bridged_only_with_every_tool() {
        let with = |missing: &'static [&'static str]| {
            network(&move |path: &Path| {
                !missing
                    .iter()
                    .any(|m| path.file_name().is_some_and(|name| name == *m))
            })
        };
        assert_eq!(with(&[]).status, Status::Ok);
        let fallback = with(&["host-local", "iptables"]);
        assert_eq!(
            fallback.status,
            Status::Warn,
            "host network: agents still run"
        );
        assert!(
            fallback
                .detail
                .contains("/usr/lib/cni/host-local, iptables"),
            "{fallback:?}"
        );
        assert_eq!(
            with(&["nft"]).status,
            Status::Fail,
            "bridged replicas cannot start without nft"
        );
    }

    #[test]
    fn the_data_dir_must_be_writable_with_room() {
        let dir = Path::new("/srv/hangar");
        let at = |free: u64, writable: bool| {
            move |_: &Path| Some((PathBuf::from("/srv"), Space { free, writable }))
        };
        let ok = data_dir(dir, &at(20 << 30, true));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.detail.contains("made in /srv"), "{ok:?}");
        assert_eq!(data_dir(dir, &at(20 << 30, false)).status, Status::Fail);
        assert_eq!(data_dir(dir, &at(3 << 30, true)).status, Status::Warn);
        assert_eq!(data_dir(dir, &at(100 << 20, true)).status, Status::Fail);
        assert_eq!(data_dir(dir, &|_: &Path| None).status, Status::Fail);
    }

    #[test]
    fn toolchains_are_optional() {
        let python3 = Some(PathBuf::from("/usr/bin/python3"));
        assert_eq!(python(python3.clone(), |_| Ok(())).status, Status::Ok);
        let no_venv = python(python3, |_| Err("No module named 'ensurepip'".into()));
        assert_eq!(no_venv.status, Status::Warn);
        assert!(no_venv
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("python3-venv")));
        assert_eq!(python(None, |_| Ok(())).status, Status::Warn);
        assert_eq!(
            node(Some("/usr/bin/node".into()), None).status,
            Status::Warn
        );
        assert_eq!(node(None, None).status, Status::Warn);
        assert_eq!(git(None).status, Status::Warn);
        assert_eq!(
            docker_finding("the local socket", Err("refused".into())).status,
            Status::Warn
        );
    }

    #[test]
    fn kubernetes_clouds_are_named_when_their_cluster_does_not_answer() {
        let up = || Ok(("https://10.0.0.1:6443/".to_owned(), "v1.30.0".to_owned()));
        let all_up = clouds_finding(&[("a".into(), up()), ("b".into(), up())]);
        assert_eq!(all_up.status, Status::Ok);
        assert!(all_up
            .detail
            .contains("'a' at https://10.0.0.1:6443/ (Kubernetes v1.30.0)"));
        let one_down = clouds_finding(&[
            ("a".into(), up()),
            (
                "b".into(),
                Err("cannot read the kubeconfig /k: gone".into()),
            ),
        ]);
        assert_eq!(one_down.status, Status::Warn, "only that cloud's agents");
        assert!(
            one_down
                .detail
                .starts_with("cloud 'b': cannot read the kubeconfig /k")
                && one_down.detail.contains("that cloud"),
            "{one_down:?}"
        );
        assert_eq!(default_cluster_finding(up()).status, Status::Ok);
        assert_eq!(
            default_cluster_finding(Err("no kubeconfig".into())).status,
            Status::Warn
        );
        assert_eq!(
            sqlite_path("sqlite://hangar-data/hangar.db?mode=rwc"),
            Some(PathBuf::from("hangar-data/hangar.db"))
        );
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }

    #[test]
    fn only_a_failure_stops_agents_and_the_start_block_says_so() {
        let fine = vec![root(0), git(None)];
        assert!(runs_agents(&fine));
        let block = start_block(&fine);
        assert_eq!(block.len(), 2, "the warning and the summary: {block:?}");
        assert!(block[1].contains("agents run here"));

        let not_root = vec![root(1000), git(Some("/usr/bin/git".into()))];
        assert!(!runs_agents(&not_root));
        let block = start_block(&not_root);
        assert_eq!(block.len(), 2, "{block:?}");
        assert!(block[0].contains("not running as root (uid 1000)"));
        assert!(block[1].contains("WILL NOT RUN AGENTS") && block[1].contains("hangar doctor"));

        assert_eq!(start_block(&[root(0)]), ["hangar: 1 start-up checks ok"]);
        assert!(no_agents_reason(true).is_none());
        assert!(no_agents_reason(false).is_some_and(|r| r.contains("not running as root")));
    }
}
