//! Sandbox start and exec latency: how long Hangar takes from "create this
//! replica" to the replica answering HTTP, measured against `crun run`,
//! `runc run` and `docker run` of the same server in the same run.
//!
//! The target (issue "Run agents"): sandbox create → first HTTP byte of a
//! trivial static HTTP server ≤ 2× `crun run` of the same rootfs and ≤ 0.2×
//! `docker run`, and an exec round trip ≤ 30 ms. Start latency is what a
//! scale-up, a restart after a crash or a rollout waits for, and exec is what
//! every tool call an agent makes into its sandbox costs, so these bound how
//! responsive the platform feels.
//!
//! What runs (as root; everything is removed at the end, also on errors):
//! 1. One root filesystem directory: a statically linked busybox and
//!    `www/index.html` holding a token unique to this run. The server is
//!    `busybox httpd -f` in all runtimes: a server that starts in about a
//!    millisecond, so the numbers are the runtimes' own cost.
//! 2. Hangar: [`SandboxDriver::create`] of a replica whose artifact (`/app`)
//!    is that directory, running `/app/busybox httpd -f -p 8080 -h
//!    /app/www` as `nobody` in its own network namespace on the CNI bridge,
//!    then HTTP to [`ReplicaInfo::address`](hangar_runtime::driver::ReplicaInfo).
//!    Every create spawns a `hangar shim run` process (the `hangar` binary,
//!    found next to this one or given with `--hangar`). A second driver
//!    with `host_network` (no namespace, no CNI; the server is started by
//!    busybox `sh` to read `PORT`) shows what the network costs.
//! 3. `crun run --detach` and `runc run --detach` of an OCI bundle (`crun
//!    spec`, adjusted) whose read-only rootfs is the same directory, running
//!    the same busybox with the same memory and pids limits. They use the
//!    host's network namespace and listen on a free loopback port: no network
//!    setup, unlike Hangar, so the ratio against them (the target's terms)
//!    is conservative. A third crun row pays for the same network Hangar
//!    sets up: `ip netns add`, then the CNI `loopback` and `bridge` plugins
//!    with Hangar's configuration (same bridge, same address pool), all on
//!    the clock, then `crun run` in that namespace.
//!    crun 1.8 refuses to run on a hybrid cgroup host whose v2 hierarchy has
//!    controllers (`cgroups in hybrid mode not supported`); there every crun
//!    command runs through `nsenter` into a mount namespace where
//!    `/sys/fs/cgroup/unified` is unmounted (crun then uses the v1
//!    hierarchies, as Hangar does). The wrapper's own cost is timed and
//!    printed.
//! 4. `docker run -d -p 127.0.0.1:<port>:8080` of an image built `FROM
//!    scratch` from the same directory. If no daemon answers, the benchmark
//!    starts `dockerd` itself (and stops it at the end); if Docker cannot be
//!    made to work, it says why and reports the rest.
//!
//! A start is timed from just before the create call (`SandboxDriver::create`,
//! spawning `crun run`, ...) to the first byte of the answer to `GET
//! /index.html`, polled every 2 ms after the create call has returned (for
//! Docker's port proxy, which accepts connections before the server runs, a
//! connection closed without an answer counts as not ready). The whole
//! answer is then checked — status 200 and this run's token — off the clock,
//! so an error or another server can never pass as a fast start. Removal
//! (`SandboxDriver::remove`, `crun delete --force`, `docker rm -f`) is timed
//! separately. The runtimes take turns, in a rotating order, one container at
//! a time, after `--warmup` untimed rounds.
//!
//! Exec round trip: [`SandboxDriver::exec`] of `true` in a running replica,
//! interleaved with `crun exec`, `runc exec` and `docker exec` of
//! `/busybox true` in running containers of the others.
//!
//! Graceful stop: [`SandboxDriver::stop`] with the API's 10 s grace period of
//! a replica running a plain Python HTTP server (`python3 -m http.server`,
//! no signal handler of its own) serving the same files, timed from the
//! stop call to its answer, then [`SandboxDriver::remove`]: what a graceful
//! `DELETE` or a scale-down waits for. The exit is printed too: ended by
//! `SIGTERM`, or by the `SIGKILL` after the grace period. `--stop-only`
//! measures only this (no crun, runc or Docker needed).
//!
//! Results are mean, p50 and p95 in ms and the ratios of medians, printed as
//! a Markdown table, with the CPU steal and the load average while timing
//! (other work on the machine shows up in every row). The binary exits 0 whether or not the targets are met:
//! it is a measurement, not a test. It fails on real errors, and when crun
//! (the baseline the target is stated against) is missing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_bench::host::{hangar_binary, output, require_root, tail, version, TempDir};
use hangar_bench::probe::{check_busybox, first_byte, server_rootfs};
use hangar_bench::{
    cpu_count, cpu_ticks, find_program, free_port, hybrid_with_controllers, kernel_release,
    load_average, print_conditions, ratio, steal_percent, unified_free_namespace, CgroupParent,
    Stats,
};
use hangar_runtime::driver::{Exit, ReplicaSpec};
use hangar_runtime::sandbox::{
    CNI_PLUGIN_DIR, DEFAULT_BRIDGE, DEFAULT_NETWORK_NAME, DEFAULT_SUBNET,
};
use hangar_runtime::{Driver, SandboxDriver, SandboxDriverConfig};
use serde_json::{json, Value};

/// How long a start may take before the benchmark gives up.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long an exec may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// The port the server listens on inside its own network namespace.
const CONTAINER_PORT: u16 = 8080;
/// Memory limit of every container, in bytes.
const MEMORY_LIMIT: u64 = 128 << 20;
/// Pids limit of every container.
const PIDS_LIMIT: i64 = 128;
/// Target: Hangar's start ÷ crun's start, at most.
const CRUN_TARGET: f64 = 2.0;
/// Target: Hangar's start ÷ Docker's start, at most.
const DOCKER_TARGET: f64 = 0.2;
/// Target: exec round trip, in ms.
const EXEC_TARGET_MS: f64 = 30.0;
/// The grace period of the graceful stops: the API's default.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Measures sandbox start (to the first HTTP byte) and exec latency of Hangar
/// against crun, runc and Docker. Needs root.
#[derive(Debug, Parser)]
#[command(name = "sandbox")]
struct Args {
    /// Timed starts per runtime, and timed execs per runtime.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Untimed rounds (a start of each runtime, an exec of each) before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// The `hangar` binary whose `shim` runs each replica (default: `hangar`
    /// in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
    /// A statically linked busybox with the `httpd` applet (Debian:
    /// busybox-static).
    #[arg(long, default_value = "/usr/bin/busybox")]
    busybox: PathBuf,
    /// Timed graceful stops of a plain Python HTTP server, after the starts
    /// and execs (0: none).
    #[arg(long, default_value_t = 5)]
    stops: usize,
    /// Measure only the graceful stops: no crun, runc or Docker needed.
    #[arg(long)]
    stop_only: bool,
}

/// The runtimes compared, in the order of the table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Hangar,
    /// Hangar with the host's network (no namespace, no CNI): shows what the
    /// network setup costs; starts only.
    HangarHost,
    Crun,
    /// crun in a network namespace on Hangar's bridge, wired by the same CNI
    /// plugins: the same work Hangar does for the network; starts only.
    CrunCni,
    Runc,
    Docker,
}

/// How many runtimes the table compares.
const N: usize = 6;

const RUNTIMES: [Runtime; N] = [
    Runtime::Hangar,
    Runtime::HangarHost,
    Runtime::Crun,
    Runtime::CrunCni,
    Runtime::Runc,
    Runtime::Docker,
];

impl Runtime {
    fn index(self) -> usize {
        self as usize
    }

    /// Its part of container ids: short, because Hangar's ids end up in
    /// socket paths.
    fn short(self) -> &'static str {
        match self {
            Runtime::Hangar => "h",
            Runtime::HangarHost => "hh",
            Runtime::Crun => "c",
            Runtime::CrunCni => "cc",
            Runtime::Runc => "r",
            Runtime::Docker => "d",
        }
    }
}

/// Hangar's sandbox driver and the replicas it has running (removed on drop).
struct Hangar {
    rt: tokio::runtime::Runtime,
    driver: SandboxDriver,
    rootfs: PathBuf,
    live: Vec<String>,
}

impl Hangar {
    fn spec(&self, id: &str) -> ReplicaSpec {
        let bridged = self.driver.bridged();
        let argv = if bridged {
            vec![
                "/app/busybox".to_owned(),
                "httpd".to_owned(),
                "-f".to_owned(),
                "-p".to_owned(),
                CONTAINER_PORT.to_string(),
                "-h".to_owned(),
                "/app/www".to_owned(),
            ]
        } else {
            // Host network: the driver picks the port and sets PORT.
            vec![
                "/app/busybox".to_owned(),
                "sh".to_owned(),
                "-c".to_owned(),
                "exec /app/busybox httpd -f -p \"$PORT\" -h /app/www".to_owned(),
            ]
        };
        ReplicaSpec {
            id: id.to_owned(),
            labels: BTreeMap::from([("hangar.instance".to_owned(), "bench".to_owned())]),
            argv,
            env: vec![("PORT".to_owned(), CONTAINER_PORT.to_string())],
            cwd: "/app".to_owned(),
            app: Some(self.rootfs.clone()),
            app_writable: false,
            port: Some(CONTAINER_PORT),
            stdin: false,
            cpu_millis: 1000,
            cpu_limit_millis: None,
            memory_limit_bytes: Some(MEMORY_LIMIT),
            pids_limit: PIDS_LIMIT,
            rootfs: None,
            user: None,
            image: None,
            image_auth: None,
            network: Default::default(),
        }
    }

    /// Creates replica `id`; returns (create returned, first HTTP byte), both
    /// from just before the create call.
    fn start(&mut self, id: &str, marker: &str) -> Result<(Duration, Duration)> {
        let spec = self.spec(id);
        let t0 = Instant::now();
        let info = self
            .rt
            .block_on(self.driver.create(&spec))
            .with_context(|| format!("Hangar: creating replica {id}"))?;
        let call = t0.elapsed();
        self.live.push(id.to_owned());
        let address = info
            .address
            .with_context(|| format!("Hangar: replica {id} has no address"))?;
        let ready = first_byte(address, t0, marker, START_DEADLINE).context("Hangar")?;
        Ok((call, ready))
    }

    /// Replica `id` running a plain Python HTTP server with no signal
    /// handler of its own, serving the same files as busybox.
    fn python_spec(&self, id: &str) -> ReplicaSpec {
        let mut spec = self.spec(id);
        let port = if self.driver.bridged() {
            CONTAINER_PORT.to_string()
        } else {
            "\"$PORT\"".to_owned()
        };
        spec.argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!("exec python3 -m http.server {port} --bind 0.0.0.0 --directory /app/www"),
        ];
        spec
    }

    /// Starts replica `id` with [`Hangar::python_spec`], waits for its first
    /// HTTP byte, then stops it with [`STOP_GRACE`] and removes it; returns
    /// (stop, remove, how it ended).
    fn graceful_delete(&mut self, id: &str, marker: &str) -> Result<(Duration, Duration, Exit)> {
        let spec = self.python_spec(id);
        let t0 = Instant::now();
        let info = self
            .rt
            .block_on(self.driver.create(&spec))
            .with_context(|| format!("Hangar: creating replica {id}"))?;
        self.live.push(id.to_owned());
        let address = info
            .address
            .with_context(|| format!("Hangar: replica {id} has no address"))?;
        first_byte(address, t0, marker, START_DEADLINE).context("Hangar: the Python server")?;
        let t0 = Instant::now();
        let exit = self
            .rt
            .block_on(self.driver.stop(id, STOP_GRACE))
            .with_context(|| format!("Hangar: stopping replica {id}"))?;
        let stop = t0.elapsed();
        let remove = self.remove(id)?;
        Ok((stop, remove, exit))
    }

    fn remove(&mut self, id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.rt
            .block_on(self.driver.remove(id))
            .with_context(|| format!("Hangar: removing replica {id}"))?;
        let took = t0.elapsed();
        self.live.retain(|live| live != id);
        Ok(took)
    }

    fn exec(&self, id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        let result = self
            .rt
            .block_on(
                self.driver
                    .exec(id, &["true".to_owned()], &[], EXEC_TIMEOUT),
            )
            .with_context(|| format!("Hangar: exec in replica {id}"))?;
        let took = t0.elapsed();
        ensure!(
            result.code == Some(0) && !result.timed_out,
            "Hangar: `true` in replica {id} did not succeed: {result:?}"
        );
        Ok(took)
    }
}

impl Drop for Hangar {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.live) {
            if let Err(err) = self.rt.block_on(self.driver.remove(&id)) {
                eprintln!("warning: cannot remove Hangar replica {id}: {err}");
            }
        }
    }
}

/// An OCI runtime CLI (crun or runc) with its own state root, one bundle and
/// the containers it has running (deleted on drop).
struct Oci {
    name: &'static str,
    program: PathBuf,
    /// Prepended to every command (the `nsenter` into [`Oci::holder`]'s
    /// mount namespace), if any.
    wrapper: Vec<OsString>,
    /// The process holding the mount namespace crun runs in, if it needs one.
    holder: Option<Child>,
    root: PathBuf,
    bundle: PathBuf,
    rootfs: PathBuf,
    log: PathBuf,
    cgroup_parent: String,
    template: Value,
    /// Give each container a network namespace of its own on Hangar's CNI
    /// bridge, set up the way Hangar does it, instead of the host's network.
    cni: bool,
    live: Vec<String>,
    /// Network namespaces (named after their containers) that may be
    /// attached to the bridge.
    netns: Vec<String>,
}

impl Oci {
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

    /// Runs one command of this runtime, stdout and stderr to its log.
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
            .with_context(|| format!("running {}", self.program.display()))?;
        if !status.success() {
            bail!(
                "`{} {}` failed ({status}): {}",
                self.name,
                args.join(" "),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// The bundle's `config.json` for container `id` serving on `port` of
    /// the host's loopback.
    /// The bundle's `config.json` for container `id` serving on `listen`:
    /// in the network namespace at `netns`, or the host's without one.
    fn config(&self, id: &str, listen: &str, netns: Option<&str>) -> Value {
        let mut config = self.template.clone();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["/busybox", "httpd", "-f", "-p", listen, "-h", "/www"]);
        config["root"] = json!({"path": self.rootfs, "readonly": true});
        if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
            namespaces.retain(|ns| ns["type"] != "network");
            if let Some(path) = netns {
                namespaces.push(json!({"type": "network", "path": path}));
            }
        }
        config["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", self.cgroup_parent));
        config["linux"]["resources"]["memory"] = json!({"limit": MEMORY_LIMIT});
        config["linux"]["resources"]["pids"] = json!({"limit": PIDS_LIMIT});
        config
    }

    fn start(&mut self, id: &str, marker: &str) -> Result<(Duration, Duration)> {
        if self.cni {
            return self.start_cni(id, marker);
        }
        let port = free_port().context("finding a free loopback port")?;
        let config = self.config(id, &format!("127.0.0.1:{port}"), None);
        fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let bundle = self.bundle.to_string_lossy().into_owned();
        let t0 = Instant::now();
        // Registered first: a failed run may still leave state to delete.
        self.live.push(id.to_owned());
        self.run(&["run", "--detach", "--bundle", &bundle, id])?;
        let call = t0.elapsed();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = first_byte(address, t0, marker, START_DEADLINE).context(self.name)?;
        Ok((call, ready))
    }

    /// Like [`Oci::start`], in a new network namespace (`ip netns add`)
    /// wired by the same CNI plugins with the same configuration as Hangar's
    /// (loopback, then bridge with host-local IPAM and masquerade), all on
    /// the clock.
    fn start_cni(&mut self, id: &str, marker: &str) -> Result<(Duration, Duration)> {
        let host_path = PathBuf::from("/run/netns").join(id);
        // crun may run in another mount namespace (see `unified_free_namespace`),
        // which does not see mounts made after it was created: reach the
        // namespace's bind mount through this process's root instead.
        let crun_path = if self.wrapper.is_empty() {
            host_path.clone()
        } else {
            PathBuf::from(format!("/proc/{}/root", std::process::id())).join(
                host_path
                    .strip_prefix("/")
                    .context("a relative netns path")?,
            )
        };
        let config = self.config(
            id,
            &CONTAINER_PORT.to_string(),
            Some(&crun_path.to_string_lossy()),
        );
        fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let bundle = self.bundle.to_string_lossy().into_owned();
        let t0 = Instant::now();
        self.netns.push(id.to_owned());
        let added = output(Command::new("ip").args(["netns", "add", id]))?;
        ensure!(
            added.status.success(),
            "`ip netns add {id}` failed: {}",
            String::from_utf8_lossy(&added.stderr).trim()
        );
        cni("loopback", "ADD", id, &host_path, "lo", &loopback_config())?;
        let result = cni("bridge", "ADD", id, &host_path, "eth0", &bridge_config())?;
        let ip = first_ip(&result).context("the bridge plugin's result has no address")?;
        self.live.push(id.to_owned());
        self.run(&["run", "--detach", "--bundle", &bundle, id])?;
        let call = t0.elapsed();
        let ready = first_byte(
            SocketAddr::new(ip, CONTAINER_PORT),
            t0,
            marker,
            START_DEADLINE,
        )
        .context(self.name)?;
        Ok((call, ready))
    }

    /// Detaches network namespace `id` from the bridge and deletes it.
    fn remove_netns(&self, id: &str) -> Result<()> {
        let path = PathBuf::from("/run/netns").join(id);
        cni("bridge", "DEL", id, &path, "eth0", &bridge_config())?;
        let deleted = output(Command::new("ip").args(["netns", "delete", id]))?;
        ensure!(
            deleted.status.success(),
            "`ip netns delete {id}` failed: {}",
            String::from_utf8_lossy(&deleted.stderr).trim()
        );
        Ok(())
    }

    fn remove(&mut self, id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.run(&["delete", "--force", id])?;
        self.live.retain(|live| live != id);
        if self.cni {
            self.remove_netns(id)?;
            self.netns.retain(|netns| netns != id);
        }
        Ok(t0.elapsed())
    }

    fn exec(&self, id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.run(&["exec", id, "/busybox", "true"])?;
        Ok(t0.elapsed())
    }
}

impl Drop for Oci {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.live) {
            if let Err(err) = self.run(&["delete", "--force", &id]) {
                eprintln!(
                    "warning: cannot delete {} container {id}: {err:#}",
                    self.name
                );
            }
        }
        for id in std::mem::take(&mut self.netns) {
            if let Err(err) = self.remove_netns(&id) {
                eprintln!("warning: cannot remove network namespace {id}: {err:#}");
            }
        }
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

/// The Docker daemon (started by the benchmark if none was running, and then
/// stopped on drop), the benchmark's image and containers (removed on drop).
struct Docker {
    /// Why Docker is not measured, if it is not.
    unavailable: Option<String>,
    dockerd: Option<Child>,
    version: String,
    image: Option<String>,
    live: Vec<String>,
}

impl Docker {
    /// Finds or starts a daemon and builds the image; says why not if it
    /// cannot.
    fn new(tmp: &Path, rootfs: &Path) -> Self {
        let mut docker = Docker {
            unavailable: None,
            dockerd: None,
            version: String::new(),
            image: None,
            live: Vec::new(),
        };
        if let Err(why) = docker.setup(tmp, rootfs) {
            docker.unavailable = Some(format!("{why:#}"));
        }
        docker
    }

    fn setup(&mut self, tmp: &Path, rootfs: &Path) -> Result<()> {
        if find_program("docker").is_none() {
            bail!("the docker CLI is not installed");
        }
        if Self::server_version().is_err() {
            let Some(dockerd) = find_program("dockerd") else {
                bail!(
                    "no Docker daemon answers and dockerd is not installed (Debian: apt-get \
                     install docker.io)"
                );
            };
            let log_path = tmp.join("dockerd.log");
            let log = fs::File::create(&log_path)?;
            println!("No Docker daemon answers; starting {}…", dockerd.display());
            let child = Command::new(&dockerd)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", dockerd.display()))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let child = self.dockerd.insert(child);
            while Self::server_version().is_err() {
                if let Some(status) = child.try_wait()? {
                    // Reaped: nothing left to stop at the end.
                    self.dockerd = None;
                    bail!("dockerd exited ({status}): {}", tail(&log_path));
                }
                if Instant::now() > deadline {
                    bail!("dockerd did not answer within 30 s: {}", tail(&log_path));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.version = Self::server_version()?;
        let dockerfile = tmp.join("Dockerfile");
        fs::write(&dockerfile, "FROM scratch\nCOPY . /\n")?;
        let image = format!("hangar-bench-httpd:{}", std::process::id());
        let mut build = Command::new("docker");
        build
            .args(["build", "--quiet", "--tag", &image, "--file"])
            .arg(&dockerfile)
            .arg(rootfs);
        let built = output(&mut build)?;
        self.image = Some(image);
        ensure!(
            built.status.success(),
            "docker build failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        );
        Ok(())
    }

    fn server_version() -> Result<String> {
        let out =
            output(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let out = output(Command::new("docker").args(args))?;
        ensure!(
            out.status.success(),
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn start(&mut self, name: &str, marker: &str) -> Result<(Duration, Duration)> {
        let image = self.image.clone().context("no image")?;
        let port = free_port().context("finding a free loopback port")?;
        let publish = format!("127.0.0.1:{port}:{CONTAINER_PORT}");
        let memory = MEMORY_LIMIT.to_string();
        let pids = PIDS_LIMIT.to_string();
        let listen = CONTAINER_PORT.to_string();
        let t0 = Instant::now();
        self.live.push(name.to_owned());
        self.run(&[
            "run",
            "--detach",
            "--name",
            name,
            "--publish",
            &publish,
            "--memory",
            &memory,
            "--pids-limit",
            &pids,
            &image,
            "/busybox",
            "httpd",
            "-f",
            "-p",
            &listen,
            "-h",
            "/www",
        ])?;
        let call = t0.elapsed();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = first_byte(address, t0, marker, START_DEADLINE).context("Docker")?;
        Ok((call, ready))
    }

    fn remove(&mut self, name: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.run(&["rm", "--force", name])?;
        let took = t0.elapsed();
        self.live.retain(|live| live != name);
        Ok(took)
    }

    fn exec(&self, name: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.run(&["exec", name, "/busybox", "true"])?;
        Ok(t0.elapsed())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.live) {
            if let Err(err) = self.run(&["rm", "--force", &name]) {
                eprintln!("warning: cannot remove Docker container {name}: {err:#}");
            }
        }
        if let Some(image) = self.image.take() {
            if let Err(err) = self.run(&["rmi", "--force", &image]) {
                eprintln!("warning: cannot remove Docker image {image}: {err:#}");
            }
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            println!("Stopping the dockerd this benchmark started…");
            if let Ok(pid) = i32::try_from(dockerd.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match dockerd.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => {
                        eprintln!("warning: dockerd did not stop within 30 s; killing it");
                        let _ = dockerd.kill();
                        let _ = dockerd.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// Hangar's bridge network, as `hangar_runtime::sandbox` configures it (a
/// copy: the runtime keeps its configuration private).
fn bridge_config() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK_NAME,
        "type": "bridge",
        "bridge": DEFAULT_BRIDGE,
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": DEFAULT_SUBNET }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })
}

/// Hangar's loopback network configuration (see [`bridge_config`]).
fn loopback_config() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("{DEFAULT_NETWORK_NAME}-lo"),
        "type": "loopback",
    })
}

/// Runs CNI plugin `plugin` with `command` for container `id`; returns its
/// result.
fn cni(
    plugin: &str,
    command: &str,
    id: &str,
    netns: &Path,
    ifname: &str,
    config: &Value,
) -> Result<Vec<u8>> {
    let binary = Path::new(CNI_PLUGIN_DIR).join(plugin);
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "CNI {plugin} {command} for {id} failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// The first address of a CNI result, without its prefix length.
fn first_ip(result: &[u8]) -> Option<IpAddr> {
    let value: Value = serde_json::from_slice(result).ok()?;
    let address = value.get("ips")?.get(0)?.get("address")?.as_str()?;
    address.split('/').next()?.parse().ok()
}

/// Timed samples, by runtime ([`Runtime::index`]).
#[derive(Default)]
struct Samples {
    /// Create call → first HTTP byte.
    ready: [Vec<Duration>; N],
    /// The create call alone.
    call: [Vec<Duration>; N],
    /// Removal.
    remove: [Vec<Duration>; N],
    /// Exec round trip.
    exec: [Vec<Duration>; N],
    /// Spawning `true` directly.
    spawn_true: Vec<Duration>,
    /// Spawning `true` through the `nsenter` wrapper crun runs under.
    nsenter_true: Vec<Duration>,
}

/// Spawns a command that must succeed; returns how long it took.
fn time_spawn(command: &mut Command) -> Result<Duration> {
    let t0 = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let took = t0.elapsed();
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(took)
}

/// Everything one run holds; fields drop in order, so containers go before
/// their cgroup parent and the temporary directory.
struct Bench {
    hangar: Hangar,
    hangar_host: Hangar,
    /// Before `crun`, which owns the mount namespace both run crun in.
    crun_cni: Oci,
    crun: Oci,
    runc: Option<Oci>,
    docker: Docker,
    _cgroups: CgroupParent,
    tmp: TempDir,
    marker: String,
}

impl Bench {
    fn enabled(&self, runtime: Runtime) -> bool {
        match runtime {
            Runtime::Hangar | Runtime::Crun => true,
            // Only a comparison when the main one has a network of its own.
            Runtime::HangarHost | Runtime::CrunCni => self.hangar.driver.bridged(),
            Runtime::Runc => self.runc.is_some(),
            Runtime::Docker => self.docker.unavailable.is_none(),
        }
    }

    fn oci(&mut self, runtime: Runtime) -> Result<&mut Oci> {
        match runtime {
            Runtime::Crun => Ok(&mut self.crun),
            Runtime::CrunCni => Ok(&mut self.crun_cni),
            Runtime::Runc => self.runc.as_mut().context("runc is not installed"),
            _ => bail!("{runtime:?} is not an OCI runtime CLI"),
        }
    }

    fn start(&mut self, runtime: Runtime, id: &str) -> Result<(Duration, Duration)> {
        let marker = self.marker.clone();
        match runtime {
            Runtime::Hangar => self.hangar.start(id, &marker),
            Runtime::HangarHost => self.hangar_host.start(id, &marker),
            Runtime::Crun | Runtime::CrunCni | Runtime::Runc => {
                self.oci(runtime)?.start(id, &marker)
            }
            Runtime::Docker => self.docker.start(id, &marker),
        }
    }

    fn remove(&mut self, runtime: Runtime, id: &str) -> Result<Duration> {
        match runtime {
            Runtime::Hangar => self.hangar.remove(id),
            Runtime::HangarHost => self.hangar_host.remove(id),
            Runtime::Crun | Runtime::CrunCni | Runtime::Runc => self.oci(runtime)?.remove(id),
            Runtime::Docker => self.docker.remove(id),
        }
    }

    fn exec(&mut self, runtime: Runtime, id: &str) -> Result<Duration> {
        match runtime {
            Runtime::Hangar => self.hangar.exec(id),
            Runtime::HangarHost => self.hangar_host.exec(id),
            Runtime::Crun | Runtime::CrunCni | Runtime::Runc => self.oci(runtime)?.exec(id),
            Runtime::Docker => self.docker.exec(id),
        }
    }

    /// Starts and removes each runtime's server `warmup + n` times, in
    /// rotating order, then execs in one running container of each `warmup
    /// + n` times; the first `warmup` rounds of each are not kept.
    fn measure(&mut self, warmup: usize, n: usize) -> Result<Samples> {
        let pid = std::process::id();
        let mut samples = Samples::default();
        let enabled: Vec<Runtime> = RUNTIMES.into_iter().filter(|&r| self.enabled(r)).collect();
        let started = Instant::now();
        for round in 0..warmup + n {
            let timed = round >= warmup;
            for k in 0..enabled.len() {
                let runtime = enabled[(round + k) % enabled.len()];
                let id = format!("hb-{pid}-{}-{round}", runtime.short());
                let (call, ready) = self.start(runtime, &id)?;
                let remove = self.remove(runtime, &id)?;
                if timed {
                    let i = runtime.index();
                    samples.call[i].push(call);
                    samples.ready[i].push(ready);
                    samples.remove[i].push(remove);
                }
            }
            if (round + 1) % 5 == 0 || round + 1 == warmup + n {
                println!(
                    "  start round {}/{} done ({:.1} s)",
                    round + 1,
                    warmup + n,
                    started.elapsed().as_secs_f64()
                );
            }
        }

        // Exec: one running container of each.
        let mut running = Vec::new();
        // Exec does not depend on the network: the variants that differ from
        // another row only in their network are skipped.
        let exec_runtimes = enabled
            .iter()
            .filter(|&&r| r != Runtime::HangarHost && r != Runtime::CrunCni);
        for &runtime in exec_runtimes {
            let id = format!("hb-{pid}-{}-exec", runtime.short());
            self.start(runtime, &id)?;
            running.push((runtime, id));
        }
        let wrapper = self.crun.wrapper.clone();
        let truth = find_program("true").context("`true` is not in PATH")?;
        for round in 0..warmup + n {
            let timed = round >= warmup;
            for k in 0..running.len() {
                let (runtime, id) = running[(round + k) % running.len()].clone();
                let took = self.exec(runtime, &id)?;
                if timed {
                    samples.exec[runtime.index()].push(took);
                }
            }
            if let Some((first, rest)) = wrapper.split_first() {
                let direct = time_spawn(&mut Command::new(&truth))?;
                let wrapped = time_spawn(Command::new(first).args(rest).arg(&truth))?;
                if timed {
                    samples.spawn_true.push(direct);
                    samples.nsenter_true.push(wrapped);
                }
            }
        }
        println!(
            "  exec rounds done ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        for (runtime, id) in running {
            self.remove(runtime, &id)?;
        }
        Ok(samples)
    }
}

/// Prints one group of rows (one per runtime) with ratios of medians against
/// crun and Docker.
fn print_group(rows: &[(String, Option<Stats>)]) {
    let crun = rows[Runtime::Crun.index()].1.as_ref();
    let docker = rows[Runtime::Docker.index()].1.as_ref();
    for (i, (name, stats)) in rows.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        match stats {
            Some(s) => {
                let vs_crun = if i == Runtime::Crun.index() {
                    "—".to_owned()
                } else {
                    ratio(s, crun)
                };
                let vs_docker = if i == Runtime::Docker.index() {
                    "—".to_owned()
                } else {
                    ratio(s, docker)
                };
                println!(
                    "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {vs_crun} | {vs_docker} |",
                    s.mean, s.p50, s.p95, s.max
                );
            }
            None => println!("| {name} | not measured | | | | | |"),
        }
    }
}

fn group(names: [&str; N], samples: &[Vec<Duration>; N]) -> Vec<(String, Option<Stats>)> {
    names
        .iter()
        .zip(samples)
        .map(|(name, s)| ((*name).to_owned(), Stats::of(s)))
        .collect()
}

/// Prints the table and the verdict.
fn report(
    bench: &Bench,
    samples: &Samples,
    args: &Args,
    steal: Option<f64>,
    load: (String, String),
) {
    println!();
    println!(
        "{} timed starts and {} timed execs per runtime, after {} untimed rounds; one \
         container at a time, runtimes in rotating order. Times in ms; ratios are of medians.",
        args.iterations, args.iterations, args.warmup
    );
    print_conditions(steal, &load);
    println!();
    println!(
        "| measurement | mean ms | p50 ms | p95 ms | max ms | p50 ÷ crun p50 | p50 ÷ docker p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ready = group(
        [
            "Hangar: `SandboxDriver::create` → first HTTP byte",
            "Hangar, host network (no netns, no CNI): `create` → first HTTP byte",
            "crun, host network: `crun run --detach` → first HTTP byte",
            "crun + Hangar's CNI network: `ip netns add`, CNI ADD, `crun run --detach` → first HTTP byte",
            "runc, host network: `runc run --detach` → first HTTP byte",
            "Docker: `docker run -d` (its bridge, published port) → first HTTP byte",
        ],
        &samples.ready,
    );
    print_group(&ready);
    print_group(&group(
        [
            "Hangar: `SandboxDriver::create` returned",
            "Hangar, host network: `create` returned",
            "crun: `crun run --detach` returned",
            "crun + Hangar's CNI network: `crun run --detach` returned",
            "runc: `runc run --detach` returned",
            "Docker: `docker run -d` returned",
        ],
        &samples.call,
    ));
    print_group(&group(
        [
            "Hangar: `SandboxDriver::remove`",
            "Hangar, host network: `remove`",
            "crun: `crun delete --force`",
            "crun + Hangar's CNI network: `crun delete --force`, CNI DEL, `ip netns delete`",
            "runc: `runc delete --force`",
            "Docker: `docker rm --force`",
        ],
        &samples.remove,
    ));
    let exec = group(
        [
            "Hangar: `SandboxDriver::exec` of `true`",
            "",
            "crun: `crun exec … /busybox true`",
            "",
            "runc: `runc exec … /busybox true`",
            "Docker: `docker exec … /busybox true`",
        ],
        &samples.exec,
    );
    print_group(&exec);
    for (name, s) in [
        ("spawn `true` directly", &samples.spawn_true),
        (
            "spawn `nsenter -t <holder> -m -- true` (the wrapper every crun command runs under)",
            &samples.nsenter_true,
        ),
    ] {
        if let Some(s) = Stats::of(s) {
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | — | — |",
                s.mean, s.p50, s.p95, s.max
            );
        }
    }

    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let hangar = ready[Runtime::Hangar.index()].1.as_ref();
    let crun = ready[Runtime::Crun.index()].1.as_ref();
    let docker = ready[Runtime::Docker.index()].1.as_ref();
    println!();
    println!("Targets (issue \"Run agents\"), judged on medians:");
    let mut all = true;
    if let (Some(h), Some(c)) = (hangar, crun) {
        let r = h.p50 / c.p50;
        all &= r <= CRUN_TARGET;
        println!(
            "- start → first HTTP byte vs `crun run`: {:.1} ms ÷ {:.1} ms = {r:.3}× (≤ \
             {CRUN_TARGET}×): {}; means: {:.2}×.",
            h.p50,
            c.p50,
            verdict(r <= CRUN_TARGET),
            h.mean / c.mean
        );
    }
    match (hangar, docker, &bench.docker.unavailable) {
        (Some(h), Some(d), _) => {
            let r = h.p50 / d.p50;
            all &= r <= DOCKER_TARGET;
            println!(
                "- start → first HTTP byte vs `docker run`: {:.1} ms ÷ {:.1} ms = {r:.3}× (≤ \
                 {DOCKER_TARGET}×): {}; means: {:.2}×.",
                h.p50,
                d.p50,
                verdict(r <= DOCKER_TARGET),
                h.mean / d.mean
            );
        }
        (_, _, Some(why)) => {
            all = false;
            println!("- start vs `docker run`: NOT MEASURED: {why}");
        }
        _ => {}
    }
    if let Some(e) = exec[Runtime::Hangar.index()].1.as_ref() {
        all &= e.p50 <= EXEC_TARGET_MS;
        println!(
            "- exec round trip: p50 {:.1} ms (≤ {EXEC_TARGET_MS} ms): {}; p95 {:.1} ms.",
            e.p50,
            verdict(e.p50 <= EXEC_TARGET_MS),
            e.p95
        );
    }
    println!(
        "{}",
        if all {
            "All targets met."
        } else {
            "Targets NOT all met."
        }
    );
    let host = ready[Runtime::HangarHost.index()].1.as_ref();
    let crun_cni = ready[Runtime::CrunCni.index()].1.as_ref();
    if let (Some(h), Some(c), Some(hh), Some(cc)) = (hangar, crun, host, crun_cni) {
        println!(
            "Same network on both sides (not the target's terms): Hangar ÷ crun with Hangar's \
             CNI network {:.2}×; Hangar on the host network ÷ crun {:.2}×. The network \
             namespace and CNI cost Hangar {:.1} ms and crun {:.1} ms (differences of medians).",
            h.p50 / cc.p50,
            hh.p50 / c.p50,
            h.p50 - hh.p50,
            cc.p50 - c.p50
        );
    }
}

/// Times `n` graceful deletes of a plain Python HTTP server (see the module
/// docs) and prints them as table rows, with how each replica ended.
fn measure_stops(hangar: &mut Hangar, marker: &str, n: usize) -> Result<()> {
    let pid = std::process::id();
    let (mut stops, mut removes, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..n {
        let id = format!("hb-{pid}-stop-{round}");
        let (stop, remove, exit) = hangar.graceful_delete(&id, marker)?;
        stops.push(stop);
        removes.push(remove);
        deletes.push(stop + remove);
        *ends.entry(exit.describe()).or_default() += 1;
    }
    println!();
    println!(
        "Graceful delete of a plain Python HTTP server (`python3 -m http.server`, no signal \
         handler), {} s grace period, {n} times. Times in ms.",
        STOP_GRACE.as_secs()
    );
    println!();
    println!("| measurement | mean ms | p50 ms | p95 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, samples) in [
        (
            "Hangar: `SandboxDriver::stop` (SIGTERM, SIGKILL after the grace)",
            &stops,
        ),
        ("Hangar: `SandboxDriver::remove` after the stop", &removes),
        ("Hangar: graceful delete (stop + remove)", &deletes),
    ] {
        if let Some(s) = Stats::of(samples) {
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
                s.mean, s.p50, s.p95, s.max
            );
        }
    }
    let ends: Vec<String> = ends
        .into_iter()
        .map(|(how, count)| format!("{how} ×{count}"))
        .collect();
    println!();
    println!("How the replicas ended: {}.", ends.join(", "));
    Ok(())
}

/// `--stop-only`: the graceful stops alone, with a driver and a served
/// directory of their own.
fn stops_only(args: &Args, hangar_bin: &Path) -> Result<()> {
    let tmp = TempDir::new("sandbox")?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("hangar-bench-sandbox {} {nanos}", std::process::id());
    let rootfs = tmp.0.join("rootfs");
    let www = rootfs.join("www");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&www)?;
    for dir in [&rootfs, &www] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    let index = www.join("index.html");
    fs::write(&index, format!("<!doctype html><p>{marker}</p>\n"))?;
    fs::set_permissions(&index, fs::Permissions::from_mode(0o644))?;
    let mut hangar = Hangar {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime")?,
        driver: SandboxDriver::new(SandboxDriverConfig {
            shim_program: hangar_bin.to_path_buf(),
            state_dir: tmp.0.join("hangar"),
            host_network: false,
        })
        .context("starting the sandbox driver")?,
        rootfs,
        live: Vec::new(),
    };
    println!("Hangar: {}", hangar_bin.display());
    let measured = measure_stops(&mut hangar, &marker, args.stops);
    // Replicas before the directory they live in.
    drop(hangar);
    drop(tmp);
    measured
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.iterations >= 1, "--iterations must be at least 1");
    require_root("namespaces, cgroups, mounts, crun, Docker")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    if args.stop_only {
        return stops_only(&args, &hangar_bin);
    }
    let Some(crun_bin) = find_program("crun") else {
        bail!(
            "crun is not installed (Debian: apt-get install crun): the start target is stated \
             against `crun run`, so the benchmark cannot run without it"
        );
    };
    check_busybox(
        &args.busybox,
        "the crun and Docker root filesystems hold nothing but busybox",
    )?;

    // --- Set up -------------------------------------------------------------------
    let tmp = TempDir::new("sandbox")?;
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("hangar-bench-sandbox {pid} {nanos}");
    let rootfs = tmp.0.join("rootfs");
    server_rootfs(&rootfs, &args.busybox, &marker, &["proc", "dev", "sys"])?;
    let cgroups = CgroupParent(format!("hangar-bench-{pid}"));
    let longest_socket = tmp
        .0
        .join("hangar-host/shims")
        .join(format!("hb-{pid}-hh-{}", args.warmup + args.iterations))
        .join("shim.sock");
    ensure!(
        longest_socket.as_os_str().len() <= 107,
        "the temporary directory {} is too deep: Hangar's shim sockets ({}) would pass the \
         107-byte limit of socket paths; set TMPDIR to a shorter one",
        tmp.0.display(),
        longest_socket.display()
    );

    let hangar_with = |host_network: bool, state: &str| -> Result<Hangar> {
        Ok(Hangar {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime")?,
            driver: SandboxDriver::new(SandboxDriverConfig {
                shim_program: hangar_bin.clone(),
                state_dir: tmp.0.join(state),
                host_network,
            })
            .context("starting the sandbox driver")?,
            rootfs: rootfs.clone(),
            live: Vec::new(),
        })
    };
    let hangar = hangar_with(false, "hangar")?;
    let hangar_host = hangar_with(true, "hangar-host")?;
    let bridged = hangar.driver.bridged();

    let bundle = tmp.0.join("bundle");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&bundle)?;
    let spec = output(Command::new(&crun_bin).arg("spec").current_dir(&bundle))?;
    ensure!(
        spec.status.success(),
        "`crun spec` failed: {}",
        String::from_utf8_lossy(&spec.stderr).trim()
    );
    let template: Value = serde_json::from_slice(&fs::read(bundle.join("config.json"))?)
        .context("parsing the config.json of `crun spec`")?;
    let (wrapper, holder) = if hybrid_with_controllers() {
        let holder = unified_free_namespace().context(
            "crun cannot run on this hybrid cgroup host, and hiding the v2 hierarchy from it failed",
        )?;
        let nsenter = find_program("nsenter").context("`nsenter` (util-linux) is not installed")?;
        let wrapper: Vec<OsString> = vec![
            nsenter.into(),
            "-t".into(),
            holder.id().to_string().into(),
            "-m".into(),
            "--".into(),
        ];
        (wrapper, Some(holder))
    } else {
        (Vec::new(), None)
    };
    let oci = |name: &'static str,
               program: PathBuf,
               wrapper: Vec<OsString>,
               holder: Option<Child>,
               cni: bool|
     -> Result<Oci> {
        let root = tmp.0.join(format!("{name}-state"));
        fs::DirBuilder::new().mode(0o700).create(&root)?;
        Ok(Oci {
            name,
            program,
            wrapper,
            holder,
            root,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            log: tmp.0.join(format!("{name}.log")),
            cgroup_parent: cgroups.0.clone(),
            template: template.clone(),
            cni,
            live: Vec::new(),
            netns: Vec::new(),
        })
    };
    let crun = oci("crun", crun_bin.clone(), wrapper.clone(), holder, false)?;
    // Dropped before `crun`, whose holder process it uses.
    let crun_cni = oci("crun-cni", crun_bin.clone(), wrapper, None, true)?;
    let runc = match find_program("runc") {
        Some(program) => Some(oci("runc", program, Vec::new(), None, false)?),
        None => None,
    };
    let docker = Docker::new(&tmp.0, &rootfs);

    println!(
        "Hangar: {} (shim: `hangar shim run`), network: {}",
        hangar_bin.display(),
        if bridged {
            "own namespace on the CNI bridge"
        } else {
            "THE HOST'S (the bridge is unavailable; see the driver's requirements)"
        }
    );
    println!(
        "crun: {}; network: the host's{}",
        version(&crun_bin, &["--version"]),
        if crun.wrapper.is_empty() {
            ""
        } else {
            "; run through nsenter into a mount namespace without /sys/fs/cgroup/unified \
             (hybrid cgroups with v2 controllers)"
        }
    );
    match &runc {
        Some(r) => println!(
            "runc: {}; network: the host's",
            version(&r.program, &["--version"])
        ),
        None => println!("runc: not installed, not measured"),
    }
    match &docker.unavailable {
        None => println!(
            "Docker: server {}{}; network: its default bridge, port published on 127.0.0.1",
            docker.version,
            if docker.dockerd.is_some() {
                " (started by this benchmark)"
            } else {
                ""
            }
        ),
        Some(why) => println!("Docker: NOT MEASURED: {why}"),
    }
    println!(
        "Server: {} httpd -f, serving {} bytes; kernel {}, {} CPUs",
        version(&args.busybox, &[]),
        fs::metadata(rootfs.join("www/index.html"))?.len(),
        kernel_release(),
        cpu_count()
    );

    let mut bench = Bench {
        hangar,
        hangar_host,
        crun_cni,
        crun,
        runc,
        docker,
        _cgroups: cgroups,
        tmp,
        marker,
    };
    println!("Temporary files: {}", bench.tmp.0.display());

    // --- Measure ------------------------------------------------------------------
    let ticks = cpu_ticks();
    let load_before = load_average();
    let samples = bench.measure(args.warmup, args.iterations)?;
    let steal = steal_percent(ticks, cpu_ticks());
    let load = (load_before, load_average());
    report(&bench, &samples, &args, steal, load);
    if args.stops > 0 {
        let marker = bench.marker.clone();
        measure_stops(&mut bench.hangar, &marker, args.stops)?;
    }
    drop(bench);
    Ok(())
}
