//! One sandbox: a process tree isolated with youki's `libcontainer`, created,
//! started, waited for, signalled and deleted through a small synchronous API.
//!
//! ```text
//! Sandboxes::new(state_dir, cgroup_parent)
//!   .create(&spec, stdio) ──► Sandbox (created: init is parked before exec)
//!      .start()           ──► the init runs `spec.argv` as its child
//!      .wait() / .try_wait() / .kill(sig) / .stop(grace)
//!      .exec(argv, env, timeout) ──► ExecOutput (while running)
//!      .delete()          ──► nothing left: no state dir, no cgroup dir
//! ```
//!
//! # What it is not
//!
//! It is not the `Driver` (no replicas, health checks, logs or restarts). It
//! never spawns threads or touches tokio.
//!
//! # Network
//!
//! [`SandboxSpec::network`] picks one of three: [`Network::Isolated`] (a new,
//! empty namespace), [`Network::Host`], or [`Network::Bridge`]: a network
//! namespace of the sandbox's own, bind-mounted at `<id>/netns` and wired
//! with the CNI reference plugins (`loopback`, `bridge` with `host-local`
//! IPAM and masquerade, from Debian's `containernetworking-plugins`; the
//! masquerade needs `iptables`) to the bridge [`Sandboxes::with_bridge`]
//! configures ([`BridgeConfig`], default `hangar0` on `10.231.0.0/16`).
//! [`Sandbox::ip`] is its address, reachable from the host; delete runs CNI
//! `DEL` (releasing the address) and removes the namespace. The bridge stays,
//! and the `bridge` plugin turns on `net.ipv4.ip_forward`.
//!
//! # Limits
//!
//! [`SandboxSpec`] carries the resource limits, written into the OCI spec's
//! `linux.resources` and applied by libcontainer to the sandbox's cgroup: a
//! CPU weight from `cpu_millis` (`cpu.shares`), an optional CFS quota from
//! `cpu_limit_millis`, an optional memory limit with swap capped to the same
//! value, and a pids limit (default 512) that stops fork bombs. A process
//! killed for going over the memory limit shows up as
//! [`ExitStatus::Signaled`]`(SIGKILL)`; [`Sandbox::oom_killed`] tells that
//! apart from any other kill, from the cgroup's OOM kill counter (read when
//! the exit is reaped, before [`Sandbox::delete`] removes the cgroup).
//!
//! # Where it may run
//!
//! Only in a process that is effectively single-threaded while it calls
//! [`Sandboxes::create`], [`Sandbox::start`] and [`Sandbox::exec`] — the future `hangar shim`, one
//! per replica. `libcontainer` forks with a raw `clone3` (bypassing the C
//! library's fork handlers, so a lock another thread holds stays held in the
//! child forever), and it `chdir`s the whole process while it binds and
//! connects its notify socket. The sandbox's init process becomes a child of
//! the calling process (its intermediate process uses `CLONE_PARENT`), which is
//! why [`Sandbox::wait`] can `waitpid` it: the caller must not reap children
//! wholesale (`waitpid(-1)`, `SIGCHLD` set to `SIG_IGN`). The same holds for
//! the processes [`Sandbox::exec`] starts, which it reaps itself.
//!
//! # Pitfalls
//!
//! Found while building this on libcontainer 0.7:
//!
//! * libcontainer's own `tracing` output can land in the sandbox's stdout:
//!   its init process logs through the caller's subscriber after it has
//!   switched stdio to the sandbox's descriptors. The shim must not log to
//!   fd 1 or 2 (log to a file, or keep the subscriber quiet).
//! * libcontainer marks the *calling* process non-dumpable
//!   (`PR_SET_DUMPABLE` 0, whenever the spec has namespaces): no core dumps,
//!   and its `/proc/<pid>` files become root-owned.
//! * On cgroup v1 the sandbox's cgroup is created at `<cgroup_parent>/<id>`
//!   below each hierarchy's *root*, not below the caller's own cgroup, so it
//!   escapes whatever limits the caller (a systemd unit, a container) runs
//!   under.
//! * Dropping a [`Sandbox`] without [`Sandbox::delete`] leaks it: the
//!   processes keep running, the cgroup and the state dir stay (and for
//!   [`Network::Bridge`] the namespace mount, the veth and the address).
//! * A failed create leaves libcontainer's intermediate and init processes
//!   behind as zombie (or parked) children of the caller; [`Sandboxes::create`]
//!   kills and reaps them on its error path (`cleanup::reap_failed_create`).
//! * libcontainer's tenant (exec) processes get a `linux` section rebuilt
//!   from the init's namespaces and cgroup path only: a seccomp filter in
//!   the spec (none yet) would not apply to them. It also binds a notify
//!   socket per exec in its state dir and never removes it;
//!   [`Sandbox::exec`] does.
//! * An empty `additional_gids` makes libcontainer skip `setgroups`, so the
//!   process would keep the caller's supplementary groups (root's `0`):
//!   the spec lists the sandbox's own gid instead.
//! * PID 1 of a pid namespace only receives the signals it installed a
//!   handler for, and inherits every orphan: `spec.argv` is therefore not
//!   PID 1 but the only child of a tiny init (the `init` module) that
//!   forwards signals to it, reaps zombies and reports how it ended.
//!
//! # On disk
//!
//! ```text
//! <state_dir>/
//!   .cgroups.lock            flock: shared while creating, exclusive to remove the cgroup parent
//!   <id>/bundle/config.json  the OCI spec
//!   <id>/exec-process.json   only while an exec starts: its OCI process
//!   <id>/bundle/rootfs/      empty dir + bin/lib/... symlinks; mount points appear here
//!                            (an image's: the overlay of the image and <id>/root/upper)
//!   <id>/root/{upper,work}   SandboxSpec::rootfs: the sandbox's writes to its root
//!   <id>/runtime/<id>/       libcontainer's state (state.json, notify socket)
//!   <id>/netns               Network::Bridge: bind mount of its network namespace
//!   <id>/cni.json            Network::Bridge: the CNI config DEL runs with
//! /var/lib/cni/networks/<name>/<ip>   Network::Bridge: host-local's reservation
//! /sys/fs/cgroup/<controller>/<cgroup_parent>/<id>   (v1; v2 has one hierarchy)
//! ```

mod cleanup;
mod exec;
mod firewall;
mod init;
mod net;
mod spec;
mod stats;
mod trust;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use oci_spec::OciSpecError;

pub use cleanup::cgroup_roots;
pub use exec::{ExecOutput, EXEC_OUTPUT_LIMIT};
pub use firewall::{table_name as firewall_table_name, Denial};
pub use net::{
    ensure_host_rules, BridgeConfig, CNI_PLUGIN_DIR, DEFAULT_BRIDGE, DEFAULT_NETWORK_NAME,
    DEFAULT_SUBNET,
};
pub use spec::{
    Network, SandboxSpec, APP_DIR, CPU_PERIOD_US, MAX_CPU_MILLIS, MIN_CPU_LIMIT_MILLIS,
    MIN_MEMORY_BYTES, NOBODY,
};
pub use stats::SandboxStats;
pub use trust::{BUNDLE_FILE as CA_BUNDLE_FILE, CA_DIR, CA_FILE};

/// How often [`Sandbox::stop`] checks whether the process has exited.
const STOP_POLL: Duration = Duration::from_millis(5);

/// How many times (every [`STOP_POLL`]) a sandbox whose init was killed by
/// `SIGKILL` re-reads its OOM kill counter (see [`Sandbox::oom_killed`]).
const OOM_COUNT_RETRIES: u32 = 2;

/// Everything that can go wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The id cannot name a directory, a cgroup and a hostname.
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId {
        /// The rejected id.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The spec cannot be run as asked.
    #[error("invalid sandbox spec: {reason}")]
    InvalidSpec {
        /// What is wrong with it.
        reason: String,
    },
    /// The cgroup parent is not an absolute, normalized, non-root path.
    #[error("invalid cgroup parent {path:?}: must be absolute, below the root, without '..'")]
    InvalidCgroupParent {
        /// The rejected path.
        path: PathBuf,
    },
    /// A sandbox with this id already has a directory in the state dir.
    #[error("sandbox {id} already exists")]
    AlreadyExists {
        /// The taken id.
        id: String,
    },
    /// A file system operation on the sandbox's own files failed.
    #[error("sandbox {id}: failed to {action} {}", path.display())]
    Io {
        /// The sandbox.
        id: String,
        /// What was being done.
        action: &'static str,
        /// To which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The OCI spec could not be built or written.
    #[error("sandbox {id}: failed to build the OCI spec")]
    Spec {
        /// The sandbox.
        id: String,
        /// The cause.
        #[source]
        source: OciSpecError,
    },
    /// `libcontainer` failed.
    #[error("sandbox {id}: libcontainer failed to {action}")]
    Container {
        /// The sandbox.
        id: String,
        /// What it was asked to do.
        action: &'static str,
        /// The cause (boxed: it is several times the size of the others).
        #[source]
        source: Box<LibcontainerError>,
    },
    /// A system call on the sandbox's process failed.
    #[error("sandbox {id}: failed to {action}")]
    Os {
        /// The sandbox.
        id: String,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Something is still mounted under the sandbox's root filesystem
    /// directory, so removing it could reach into the mounted file system.
    #[error("sandbox {id}: refusing to remove {}: a file system is mounted under it", path.display())]
    StillMounted {
        /// The sandbox.
        id: String,
        /// The mount point found.
        path: PathBuf,
    },
    /// The sandbox's init has exited (and was reaped): there is nothing to
    /// exec into.
    #[error("sandbox {id} is not running")]
    NotRunning {
        /// The sandbox.
        id: String,
    },
    /// Wiring the sandbox's network (a CNI plugin) failed.
    #[error("sandbox {id}: failed to {action}: {reason}")]
    Network {
        /// The sandbox.
        id: String,
        /// What was being done.
        action: &'static str,
        /// What the plugin said.
        reason: String,
    },
    /// Creating failed, and so did undoing what had been done.
    #[error("{error}; cleaning up after it also failed: {cleanup}")]
    CreateAndCleanup {
        /// Why creating failed.
        #[source]
        error: Box<SandboxError>,
        /// Why cleaning up failed.
        cleanup: Box<SandboxError>,
    },
    /// Deleting went through every step; these ones failed.
    #[error("sandbox {id}: delete left something behind: {}", join(failures))]
    Delete {
        /// The sandbox.
        id: String,
        /// Each failed step, in order.
        failures: Vec<SandboxError>,
    },
}

fn join(errors: &[SandboxError]) -> String {
    errors
        .iter()
        .map(|error| error_chain(error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and all its causes on one line, for logs and test failures.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a sandbox's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }

    /// The exit code, if it exited rather than being killed.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Exited(code) => Some(code),
            Self::Signaled(_) => None,
        }
    }
}

/// The descriptors a sandbox's stdio is connected to. The caller keeps the
/// other ends.
///
/// stdout and stderr must be writable descriptors such as pipes or files, not
/// `/dev/null`: `libcontainer` replaces any stdio that is the host's
/// `/dev/null` with the sandbox's, opened read-only, so writes would fail.
#[derive(Debug)]
pub struct SandboxStdio {
    /// The sandbox's stdin; `None` means `/dev/null`.
    pub stdin: Option<OwnedFd>,
    /// The sandbox's stdout.
    pub stdout: OwnedFd,
    /// The sandbox's stderr.
    pub stderr: OwnedFd,
}

/// The caller's ends of [`SandboxStdio::pipes`].
#[derive(Debug)]
pub struct StdioPipes {
    /// Reads what the sandbox writes to stdout; EOF once every process in the
    /// sandbox has closed it.
    pub stdout: File,
    /// Reads what the sandbox writes to stderr.
    pub stderr: File,
}

impl SandboxStdio {
    /// Fresh pipes for stdout and stderr, stdin from `/dev/null`. All ends are
    /// close-on-exec in the caller.
    pub fn pipes() -> io::Result<(StdioPipes, SandboxStdio)> {
        let (stdout_read, stdout_write) = pipe2(OFlag::O_CLOEXEC)?;
        let (stderr_read, stderr_write) = pipe2(OFlag::O_CLOEXEC)?;
        Ok((
            StdioPipes {
                stdout: File::from(stdout_read),
                stderr: File::from(stderr_read),
            },
            SandboxStdio {
                stdin: None,
                stdout: stdout_write,
                stderr: stderr_write,
            },
        ))
    }
}

/// Where sandboxes live: a state directory on disk and a parent cgroup.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    state_dir: PathBuf,
    cgroup_parent: PathBuf,
    bridge: BridgeConfig,
}

impl Sandboxes {
    /// Sandboxes with their files under `state_dir` (created if missing) and
    /// their cgroups under `cgroup_parent` (for example `/hangar`) in every
    /// cgroup hierarchy.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        cgroup_parent: impl Into<PathBuf>,
    ) -> Result<Self, SandboxError> {
        let cgroup_parent = cgroup_parent.into();
        let normalized = cgroup_parent.is_absolute()
            && cgroup_parent.components().count() > 1
            && cgroup_parent
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !normalized {
            return Err(SandboxError::InvalidCgroupParent {
                path: cgroup_parent,
            });
        }
        Ok(Self {
            state_dir: state_dir.into(),
            cgroup_parent,
            bridge: BridgeConfig::default(),
        })
    }

    /// Attaches [`Network::Bridge`] sandboxes to `bridge` instead of the
    /// default ([`BridgeConfig::default`]).
    pub fn with_bridge(mut self, bridge: BridgeConfig) -> Self {
        self.bridge = bridge;
        self
    }

    /// The network [`Network::Bridge`] sandboxes are attached to.
    pub fn bridge(&self) -> &BridgeConfig {
        &self.bridge
    }

    /// The directory the sandboxes' own directories are in.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Rebuilds the packet filter of these sandboxes from their records
    /// (see [`firewall`]), repairing whatever happened to it; removes it when
    /// no sandbox is left. Returns how many sandboxes it covers.
    pub fn sync_firewall(&self) -> Result<usize, String> {
        firewall::sync(self)
    }

    /// The connections the packet filter refused these sandboxes since the
    /// last call (see [`firewall`]).
    pub fn take_denials(&self) -> Result<Vec<Denial>, String> {
        firewall::take_denials(self)
    }

    /// The directory holding sandbox `id`'s files.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    /// The cgroup path (relative to each hierarchy's root) of sandbox `id`.
    pub fn cgroup_path(&self, id: &str) -> PathBuf {
        self.cgroup_parent.join(id)
    }

    /// Creates sandbox `spec.id`: its init process is set up in its
    /// namespaces and cgroup, with its stdio connected to `stdio`, and waits
    /// for [`Sandbox::start`] to exec `spec.argv`.
    ///
    /// On failure nothing is left behind, unless cleaning up failed too
    /// ([`SandboxError::CreateAndCleanup`]).
    pub fn create(&self, spec: &SandboxSpec, stdio: SandboxStdio) -> Result<Sandbox, SandboxError> {
        spec.validate()?;
        let id = spec.id.as_str();
        // Owner-only: bundles will hold the replica's environment, secrets
        // included. The sandbox does not need access: it sees its rootfs only
        // after pivot_root, and everything before that runs as root.
        private_dir()
            .recursive(true)
            .create(&self.state_dir)
            .map_err(io_error(id, "create", &self.state_dir))?;
        let dir = self.sandbox_dir(id);
        match private_dir().create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::AlreadyExists { id: id.to_owned() });
            }
            Err(err) => return Err(io_error(id, "create", &dir)(err)),
        }
        // From here on the id's directory is ours, and any failure undoes
        // everything created under it.
        self.create_in(&dir, spec, stdio).map_err(|error| {
            cleanup::reap_failed_create(id);
            match cleanup::remove_sandbox(self, id, None) {
                Ok(()) => error,
                Err(cleanup) => SandboxError::CreateAndCleanup {
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                },
            }
        })
    }

    fn create_in(
        &self,
        dir: &Path,
        spec: &SandboxSpec,
        stdio: SandboxStdio,
    ) -> Result<Sandbox, SandboxError> {
        let id = spec.id.as_str();
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(io_error(id, "create", &rootfs))?;
        let layout = match &spec.rootfs {
            // The image's own root, through an overlay mounted here, in the
            // caller's mount namespace: the sandbox's is cloned from it.
            // Deleting the sandbox unmounts it (`cleanup::unmount_root`).
            Some(image) => {
                let layers = root_layers(dir).map_err(io_error(id, "create", dir.join("root")))?;
                nix::mount::mount(
                    Some("overlay"),
                    &rootfs,
                    Some("overlay"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(layers.options(image).as_str()),
                )
                .map_err(|source| SandboxError::Os {
                    id: id.to_owned(),
                    action: "mount the image's root overlay",
                    source,
                })?;
                Vec::new()
            }
            None => {
                let layout =
                    spec::host_layout(Path::new("/")).map_err(io_error(id, "inspect", "/"))?;
                spec::populate_rootfs(&rootfs, &layout)
                    .map_err(io_error(id, "populate", &rootfs))?;
                layout
            }
        };
        let trusted_ca = match &spec.network_policy.trusted_ca {
            Some(pem) => {
                // The image's root is mounted at `rootfs` by now; the host's
                // is the host's.
                let root = if spec.rootfs.is_some() {
                    rootfs.as_path()
                } else {
                    Path::new("/")
                };
                let written = trust::write(dir, root, pem);
                Some(written.map_err(io_error(id, "write the trusted CA", dir.join("ca")))?)
            }
            None => None,
        };
        // The network is wired while the container is created: the plugins
        // work in the namespace the container joins, and are waited for
        // before the sandbox can start.
        let (pending, netns) = match spec.network {
            Network::Bridge => (
                Some(net::begin(id, dir, &self.bridge)?),
                Some(net::netns_path(dir)),
            ),
            Network::Isolated | Network::Host => (None, None),
        };
        let created = self.create_container(
            dir,
            spec,
            stdio,
            &layout,
            netns.as_deref(),
            trusted_ca.as_deref(),
        );
        let ip = match pending {
            Some(pending) => {
                // Waited for even when the container failed: the cleanup's
                // DEL must not race the ADD.
                Some(pending.finish()?)
            }
            None => None,
        };
        let (container, pid, exit_report) = created?;
        // In force before the sandbox runs anything.
        if let Some(ip) = ip {
            firewall::admit(self, id, dir, ip, &spec.network_policy)?;
        }
        Ok(Sandbox {
            id: id.to_owned(),
            sandboxes: self.clone(),
            container,
            pid,
            spec: spec.clone(),
            ip,
            exit_report,
            exit: None,
            oom_killed: false,
        })
    }

    /// The container of [`Sandboxes::create_in`], its init parked, and the
    /// read end of its init's report pipe.
    fn create_container(
        &self,
        dir: &Path,
        spec: &SandboxSpec,
        stdio: SandboxStdio,
        layout: &[(&str, spec::HostEntry)],
        netns: Option<&Path>,
        trusted_ca: Option<&Path>,
    ) -> Result<(Container, Pid, File), SandboxError> {
        let id = spec.id.as_str();
        let bundle = dir.join("bundle");
        let app = match &spec.app {
            Some(_) if !spec.app_writable => {
                Some(app_layers(dir, spec).map_err(io_error(id, "create", dir.join("app")))?)
            }
            _ => None,
        };
        let extra = spec::ExtraMounts {
            app: app.as_ref(),
            trusted_ca,
        };
        let oci = spec::oci_spec(spec, layout, &self.cgroup_path(id), netns, extra).map_err(
            |source| SandboxError::Spec {
                id: id.to_owned(),
                source,
            },
        )?;
        let config = bundle.join("config.json");
        oci.save(&config).map_err(|source| SandboxError::Spec {
            id: id.to_owned(),
            source,
        })?;

        let stdin = match stdio.stdin {
            Some(fd) => fd,
            None => {
                OwnedFd::from(File::open("/dev/null").map_err(io_error(id, "open", "/dev/null"))?)
            }
        };
        // Close-on-exec: only the init holds the write end (the agent and
        // anything it starts never see it). Non-blocking: an init killed
        // before it wrote leaves the pipe empty.
        let (report_read, report_write) =
            pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|source| SandboxError::Os {
                id: id.to_owned(),
                action: "create the init's report pipe",
                source,
            })?;
        let runtime = dir.join("runtime");
        let container_error = |action| {
            move |source| SandboxError::Container {
                id: id.to_owned(),
                action,
                source: Box::new(source),
            }
        };
        // Held while libcontainer creates the cgroup, so a concurrent delete
        // does not remove the shared parent between its mkdir and ours.
        let lock = self.cgroups_lock(id, FlockArg::LockShared)?;
        let blocked = init::InitSignalsBlocked::new().map_err(|source| SandboxError::Os {
            id: id.to_owned(),
            action: "block the init's signals",
            source,
        })?;
        let container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&runtime)
            .map_err(container_error("use its state dir"))?
            .with_stdin(stdin)
            .with_stdout(stdio.stdout)
            .with_stderr(stdio.stderr)
            .with_executor(init::InitExecutor {
                report: Arc::new(report_write),
            })
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(container_error("create the container"))?;
        drop(blocked);
        drop(lock);
        let pid = container.pid().ok_or_else(|| SandboxError::Os {
            id: id.to_owned(),
            action: "learn the init pid from libcontainer",
            source: Errno::ESRCH,
        })?;
        Ok((container, pid, File::from(report_read)))
    }

    /// Removes sandbox `id` when no [`Sandbox`] value is at hand (its
    /// creator is gone): kills whatever runs in it and removes everything
    /// [`Sandbox::delete`] would. Not there at all is success. Its init, if
    /// it was a child of another process, is reaped by that process (or by
    /// the system's init once that process is gone).
    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        spec::validate_id(id)?;
        if !self.sandbox_dir(id).exists() {
            return Ok(());
        }
        cleanup::remove_sandbox(self, id, None)
    }

    /// Takes the state dir's cgroup lock (see the module docs). `None` when a
    /// non-blocking request finds it taken.
    fn cgroups_lock(&self, id: &str, arg: FlockArg) -> Result<Option<Flock<File>>, SandboxError> {
        let path = self.state_dir.join(".cgroups.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(id, "open", &path))?;
        match Flock::lock(file, arg) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, source)) => Err(SandboxError::Os {
                id: id.to_owned(),
                action: "lock the cgroup lock file",
                source,
            }),
        }
    }
}

/// A created sandbox. Dropping it neither stops nor deletes it: the process
/// keeps running (and, once it exits, stays a zombie until the caller exits).
/// Call [`Sandbox::delete`].
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    sandboxes: Sandboxes,
    container: Container,
    pid: Pid,
    /// What it was created from: [`Sandbox::exec`] runs its processes the
    /// same way.
    spec: SandboxSpec,
    /// Its address on the bridge ([`Network::Bridge`] only).
    ip: Option<IpAddr>,
    /// Where the init says how the agent ended (see [`init`]).
    exit_report: File,
    exit: Option<ExitStatus>,
    /// Read from the cgroup when the exit is reaped (the cgroup is gone
    /// after delete).
    oom_killed: bool,
}

impl Sandbox {
    /// The sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init process's pid, as the caller's pid namespace sees it (the
    /// sandbox's PID 1; `spec.argv` runs as its child).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The sandbox's address on its bridge, reachable from the host: `Some`
    /// for [`Network::Bridge`], `None` for the other modes.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// Lets the init process start `argv`.
    pub fn start(&mut self) -> Result<(), SandboxError> {
        self.container
            .start()
            .map_err(|source| SandboxError::Container {
                id: self.id.clone(),
                action: "start the container",
                source: Box::new(source),
            })
    }

    /// Blocks until the init process exits, which it does as soon as
    /// `spec.argv` has ended; returns how `spec.argv` ended (or, when the
    /// init itself was killed, how the init did). Every other process in the
    /// sandbox is killed by the kernel then (the init is PID 1 of the
    /// sandbox's pid namespace).
    pub fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        loop {
            if let Some(exit) = self.reap(None)? {
                return Ok(exit);
            }
        }
    }

    /// The exit status if the init process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        self.reap(Some(WaitPidFlag::WNOHANG))
    }

    fn reap(&mut self, flags: Option<WaitPidFlag>) -> Result<Option<ExitStatus>, SandboxError> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        loop {
            let waited = match waitpid(self.pid, flags) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Exited(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signaled(signal),
                Ok(WaitStatus::StillAlive) => return Ok(None),
                // Stops and continues are only reported when asked for.
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(SandboxError::Os {
                        id: self.id.clone(),
                        action: "wait for the init process",
                        source,
                    })
                }
            };
            // The init's own status says "exited 143" for an agent killed by
            // SIGTERM; its report says which. Without one (the init itself
            // was killed, or the agent never started) the init's status is
            // the sandbox's.
            let exit = init::read_report(&mut self.exit_report).unwrap_or(waited);
            self.exit = Some(exit);
            self.oom_killed = self.read_oom_killed(exit);
            return Ok(Some(exit));
        }
    }

    /// Whether the kernel's OOM killer killed a process of this sandbox — its
    /// init or any other — because the sandbox went over its memory limit
    /// ([`SandboxSpec::memory_limit_bytes`]).
    ///
    /// Settled once [`Sandbox::wait`] or [`Sandbox::try_wait`] has returned
    /// the exit status: it is read from the sandbox's cgroup then, before
    /// [`Sandbox::delete`] removes it. An init process killed this way exits
    /// with [`ExitStatus::Signaled`]`(SIGKILL)`; this tells it apart from
    /// an ordinary kill. While the sandbox runs, it reads the live counter.
    pub fn oom_killed(&self) -> bool {
        match self.exit {
            Some(_) => self.oom_killed,
            None => self.oom_kills().is_some_and(|kills| kills > 0),
        }
    }

    /// The cgroup's OOM kill counter; `None` when there is none to read
    /// (no memory controller), or reading failed (logged).
    fn oom_kills(&self) -> Option<u64> {
        cleanup::oom_kills(&self.sandboxes.cgroup_path(&self.id))
            .inspect_err(|err| {
                tracing::warn!(sandbox = %self.id, error = %err, "cannot read the OOM kill counter");
            })
            .ok()
            .flatten()
    }

    fn read_oom_killed(&self, exit: ExitStatus) -> bool {
        // The OOM killer sends SIGKILL before it bumps the counter, so a
        // victim can in principle be reaped a moment before it is counted.
        let mut retries = if exit == ExitStatus::Signaled(Signal::SIGKILL) {
            OOM_COUNT_RETRIES
        } else {
            0
        };
        loop {
            if self.oom_kills().is_some_and(|kills| kills > 0) {
                return true;
            }
            if retries == 0 {
                return false;
            }
            retries -= 1;
            thread::sleep(STOP_POLL);
        }
    }

    /// Sends `signal` to the init process. Already exited is success.
    ///
    /// The init forwards `SIGTERM`, `SIGINT`, `SIGHUP`, `SIGQUIT` and
    /// `SIGWINCH` to `spec.argv`'s process group and `SIGUSR1`/`SIGUSR2` to
    /// `spec.argv` alone; the kernel drops any other signal but `SIGKILL`
    /// (PID 1 has no handler for it), and `SIGKILL` ends the init and with
    /// it everything in the sandbox. Use [`Sandbox::stop`] for "terminate,
    /// then kill".
    pub fn kill(&self, signal: Signal) -> Result<(), SandboxError> {
        // Until it is reaped, the pid cannot be reused, so this cannot hit an
        // unrelated process.
        if self.exit.is_some() {
            return Ok(());
        }
        match signal::kill(self.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(SandboxError::Os {
                id: self.id.clone(),
                action: "signal the init process",
                source,
            }),
        }
    }

    /// Its resource usage counters now ([`SandboxStats`]).
    pub fn stats(&self) -> Result<SandboxStats, SandboxError> {
        stats::read(&self.sandboxes.cgroup_path(&self.id), self.pid.as_raw()).map_err(io_error(
            &self.id,
            "read the stats of",
            "its cgroup",
        ))
    }

    /// `SIGTERM`, then `SIGKILL` if the process is still there after `grace`;
    /// returns how it ended. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus, SandboxError> {
        self.kill(Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            thread::sleep(STOP_POLL);
        }
        self.kill(Signal::SIGKILL)?;
        self.wait()
    }

    /// Kills whatever still runs and removes the sandbox: libcontainer's
    /// state, its cgroup (and the cgroup parent once it is empty), its
    /// network (CNI `DEL`: veth and address; the namespace), its bundle.
    /// Failures are reported together; when the container or its cgroup
    /// could not be removed, the sandbox's directory is kept so the state is
    /// not lost.
    pub fn delete(mut self) -> Result<(), SandboxError> {
        let mut failures = Vec::new();
        if let Err(err) = self.kill(Signal::SIGKILL).and_then(|()| self.wait()) {
            failures.push(err);
        }
        match cleanup::remove_sandbox(&self.sandboxes, &self.id, Some(&mut self.container)) {
            Ok(()) => {}
            Err(SandboxError::Delete { failures: more, .. }) => failures.extend(more),
            Err(err) => failures.push(err),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(SandboxError::Delete {
                id: self.id,
                failures,
            })
        }
    }
}

/// Creates the `/app` overlay's upper layer (owned by the sandbox's user:
/// its root is what `/app` itself looks like) and work dir under `dir`.
fn app_layers(dir: &Path, spec: &SandboxSpec) -> io::Result<spec::AppLayers> {
    let base = dir.join("app");
    private_dir().create(&base)?;
    let layers = spec::AppLayers {
        upper: base.join("upper"),
        work: base.join("work"),
    };
    DirBuilder::new().mode(0o755).create(&layers.upper)?;
    std::os::unix::fs::chown(&layers.upper, Some(spec.uid), Some(spec.gid))?;
    private_dir().create(&layers.work)?;
    Ok(layers)
}

/// Creates the image root overlay's upper layer (root's, 0755: what `/`
/// itself looks like) and work dir under `dir`.
fn root_layers(dir: &Path) -> io::Result<spec::RootLayers> {
    let base = dir.join("root");
    private_dir().create(&base)?;
    let layers = spec::RootLayers {
        upper: base.join("upper"),
        work: base.join("work"),
    };
    DirBuilder::new().mode(0o755).create(&layers.upper)?;
    private_dir().create(&layers.work)?;
    Ok(layers)
}

fn private_dir() -> DirBuilder {
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    builder
}

fn io_error<'a>(
    id: &'a str,
    action: &'static str,
    path: impl AsRef<Path> + 'a,
) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        id: id.to_owned(),
        action,
        path: path.as_ref().to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_must_be_a_plain_absolute_path() {
        for ok in ["/hangar", "/hangar/sandboxes"] {
            assert!(Sandboxes::new("/tmp/x", ok).is_ok(), "{ok}");
        }
        for bad in ["/", "hangar", "/hangar/../etc", ""] {
            assert!(Sandboxes::new("/tmp/x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_status_success_and_code() {
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Exited(1).success());
        assert_eq!(ExitStatus::Exited(3).code(), Some(3));
        assert_eq!(ExitStatus::Signaled(Signal::SIGKILL).code(), None);
        assert!(!ExitStatus::Signaled(Signal::SIGKILL).success());
    }

    #[test]
    fn error_chain_shows_every_cause() {
        let err = SandboxError::Io {
            id: "a".to_owned(),
            action: "create",
            path: PathBuf::from("/x"),
            source: io::Error::other("disk on fire"),
        };
        assert_eq!(
            error_chain(&err),
            "sandbox a: failed to create /x: disk on fire"
        );
    }
}
