//! What a sandbox is made of: the caller's request ([`SandboxSpec`]) and its
//! translation into an OCI bundle (a `config.json` plus a root filesystem
//! directory) that `libcontainer` runs.
//!
//! This module does no container work itself; it only validates the request,
//! writes files into a fresh bundle directory and builds the OCI [`Spec`].

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, LinuxBuilder,
    LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;

use super::SandboxError;
use crate::network::NetworkPolicy;

/// The nobody/nogroup ids on Debian: an unprivileged identity that owns nothing
/// on the host.
pub const NOBODY: u32 = 65534;

/// Top-level host paths that merged-/usr systems make symlinks into `/usr`
/// (Debian since 12). Each is mirrored into the sandbox the way the host has
/// it: the same symlink, or a read-only bind when it is a real directory.
const USR_ALIASES: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host directories bound read-only into every sandbox.
const HOST_BINDS: &[&str] = &["/usr", "/etc"];

/// The host's resolver configuration, shown in sandboxes on an image root.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Longest sandbox id: it is also the hostname, which Linux caps at 64 bytes.
const MAX_ID_LEN: usize = 64;

/// The CFS period the CPU quota is expressed in: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest memory limit accepted: below this even the init process and
/// a shell do not fit, and the failure would look like a crash, not a limit.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

/// The smallest CPU limit accepted: the kernel's minimum CFS quota is 1 ms per
/// period, that is 10 millicores at [`CPU_PERIOD_US`].
pub const MIN_CPU_LIMIT_MILLIS: u64 = 10;

/// The largest CPU request accepted: cgroup v1 caps `cpu.shares` at 262144,
/// which is 256 CPUs at 1024 shares each.
pub const MAX_CPU_MILLIS: u64 = 256_000;

/// How a sandbox reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A new, empty network namespace. Nothing is configured in it, so the
    /// loopback interface stays down and there is no route anywhere: the
    /// process cannot talk to the network at all.
    Isolated,
    /// A network namespace of its own, wired with CNI: `lo` up, `eth0` a veth
    /// on the host's bridge with an address from its subnet
    /// ([`super::Sandbox::ip`], reachable from the host) and egress through
    /// masquerade, all of it under [`SandboxSpec::network_policy`] (no IPv6).
    /// Needs root, the CNI reference plugins, `iptables` and `nft`.
    Bridge,
    /// The host's network namespace: the process sees and binds the host's
    /// interfaces. The fallback when a namespace cannot be wired.
    Host,
}

/// Everything the caller decides about one sandbox.
///
/// [`SandboxSpec::new`] fills in safe defaults; adjust the public fields
/// before handing it to [`super::Sandboxes::create`].
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique among the sandboxes of one state dir: `[A-Za-z0-9_.+-]`, at most
    /// 64 bytes. Also the sandbox's hostname and its cgroup's name.
    pub id: String,
    /// The program and its arguments. `argv[0]` is either a path inside the
    /// sandbox or a name looked up in the sandbox's `PATH`.
    pub argv: Vec<String>,
    /// The environment, in order. [`SandboxSpec::new`] sets a `PATH`.
    pub env: Vec<(String, String)>,
    /// The working directory inside the sandbox; must be absolute.
    pub cwd: PathBuf,
    /// The uid the process runs as. Defaults to [`NOBODY`].
    pub uid: u32,
    /// The gid the process runs as. Defaults to [`NOBODY`].
    pub gid: u32,
    /// Network namespace choice. Defaults to [`Network::Isolated`].
    pub network: Network,
    /// The most tasks (processes and threads) the sandbox may hold at once.
    /// Defaults to 512; a fork bomb stops here.
    pub pids_limit: i64,
    /// The CPU request in millicores (1000 = one CPU), turned into a relative
    /// weight: `cpu.shares = cpu_millis * 1024 / 1000` (at least 2), so under
    /// contention sandboxes get CPU in proportion to their requests. Defaults
    /// to 1000, the kernel's default weight. At most [`MAX_CPU_MILLIS`].
    pub cpu_millis: u64,
    /// A hard CPU cap in millicores: a CFS quota of `cpu_limit_millis * 100`
    /// µs per [`CPU_PERIOD_US`] period. `None` (the default) is no cap. At
    /// least [`MIN_CPU_LIMIT_MILLIS`].
    pub cpu_limit_millis: Option<u64>,
    /// A hard memory limit in bytes; swap is limited to the same total, so
    /// the sandbox cannot swap. Going over it gets a process OOM-killed
    /// (see [`super::Sandbox::oom_killed`]). `None` (the default) is no
    /// limit. At least [`MIN_MEMORY_BYTES`].
    pub memory_limit_bytes: Option<u64>,
    /// Size of the tmpfs mounted at `/tmp`, in MiB.
    pub tmp_size_mib: u32,
    /// A host directory (a build's artifact) shown at `/app`: an overlay
    /// with the directory as its read-only lower layer and a fresh upper
    /// layer in the sandbox's state dir, so the sandbox may write there
    /// while the artifact itself stays untouched and shareable. The
    /// directory's files must be readable by [`SandboxSpec::uid`]. `None`
    /// (the default): no `/app`.
    pub app: Option<PathBuf>,
    /// Bind [`SandboxSpec::app`] itself read-write instead of the overlay,
    /// so what the sandbox writes there stays: how a build fills in its
    /// artifact. Defaults to `false`.
    pub app_writable: bool,
    /// An OCI image's unpacked root filesystem (a host directory) as the
    /// sandbox's root, instead of the host's `/usr` and `/etc`: the
    /// read-only lower layer of an overlay whose upper layer is in the
    /// sandbox's state dir, so the sandbox may write anywhere in it while the
    /// image stays untouched and shared. `/proc`, `/dev` and `/tmp` are
    /// mounted fresh as always, and the host's `/etc/resolv.conf` is shown
    /// read-only (as container engines do: an image has no resolver of its
    /// own for the network the sandbox is on). [`SandboxSpec::app`] may be
    /// shown over it: a build step on an image, its tree at `/app`. `None`
    /// (the default): the host's.
    pub rootfs: Option<PathBuf>,
    /// What a [`Network::Bridge`] sandbox may reach (see
    /// [`crate::network`]). Defaults to a group of its own with open egress.
    pub network_policy: NetworkPolicy,
}

/// Where [`SandboxSpec::app`] mounts.
pub const APP_DIR: &str = "/app";

impl SandboxSpec {
    /// A sandbox running `argv` as `nobody` in `/`, with no network.
    pub fn new(id: impl Into<String>, argv: Vec<String>) -> Self {
        Self {
            id: id.into(),
            argv,
            env: vec![(
                "PATH".to_owned(),
                "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_owned(),
            )],
            cwd: PathBuf::from("/"),
            uid: NOBODY,
            gid: NOBODY,
            network: Network::Isolated,
            pids_limit: 512,
            cpu_millis: 1000,
            cpu_limit_millis: None,
            memory_limit_bytes: None,
            tmp_size_mib: 64,
            app: None,
            app_writable: false,
            rootfs: None,
            network_policy: NetworkPolicy::default(),
        }
    }

    /// The `cpu.shares` weight for [`SandboxSpec::cpu_millis`].
    pub fn cpu_shares(&self) -> u64 {
        (self.cpu_millis.saturating_mul(1024) / 1000).max(2)
    }

    /// The CFS quota in µs per [`CPU_PERIOD_US`] for
    /// [`SandboxSpec::cpu_limit_millis`].
    pub fn cpu_quota_us(&self) -> Option<i64> {
        self.cpu_limit_millis.map(|millis| {
            i64::try_from(millis.saturating_mul(CPU_PERIOD_US) / 1000).unwrap_or(i64::MAX)
        })
    }

    /// Checks everything that can be checked before touching the system.
    pub(super) fn validate(&self) -> Result<(), SandboxError> {
        validate_id(&self.id)?;
        let invalid = |reason: String| Err(SandboxError::InvalidSpec { reason });
        if self.argv.first().is_none_or(String::is_empty) {
            return invalid("argv must name a program".to_owned());
        }
        if self.argv.iter().any(|arg| arg.contains('\0')) {
            return invalid("argv must not contain NUL bytes".to_owned());
        }
        if let Some(pem) = &self.network_policy.trusted_ca {
            super::trust::check(pem).or_else(invalid)?;
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return invalid(format!("invalid environment variable name {key:?}"));
            }
        }
        if !self.cwd.is_absolute() {
            return invalid(format!("cwd must be absolute, got {}", self.cwd.display()));
        }
        if self.pids_limit <= 0 {
            return invalid("pids_limit must be positive".to_owned());
        }
        if self.cpu_millis == 0 || self.cpu_millis > MAX_CPU_MILLIS {
            return invalid(format!(
                "cpu_millis must be between 1 and {MAX_CPU_MILLIS}, got {}",
                self.cpu_millis
            ));
        }
        if let Some(limit) = self.cpu_limit_millis {
            if !(MIN_CPU_LIMIT_MILLIS..=i64::MAX as u64 / 100).contains(&limit) {
                return invalid(format!(
                    "cpu_limit_millis must be at least {MIN_CPU_LIMIT_MILLIS}, got {limit}"
                ));
            }
        }
        if let Some(bytes) = self.memory_limit_bytes {
            if !(MIN_MEMORY_BYTES..=i64::MAX as u64).contains(&bytes) {
                return invalid(format!(
                    "memory_limit_bytes must be at least {MIN_MEMORY_BYTES} (4 MiB), got {bytes}"
                ));
            }
        }
        if let Some(app) = &self.app {
            let text = app.to_string_lossy();
            if !app.is_absolute() || text.contains([',', ':', '\\', '\0']) {
                return invalid(format!(
                    "app must be an absolute path without ',', ':' or '\\', got {}",
                    app.display()
                ));
            }
        }
        if let Some(rootfs) = &self.rootfs {
            let text = rootfs.to_string_lossy();
            if !rootfs.is_absolute() || text.contains([',', ':', '\\', '\0']) {
                return invalid(format!(
                    "rootfs must be an absolute path without ',', ':' or '\\', got {}",
                    rootfs.display()
                ));
            }
        }
        if self.tmp_size_mib == 0 {
            return invalid("tmp_size_mib must be positive".to_owned());
        }
        Ok(())
    }
}

/// Sandbox ids become directory names, cgroup names and hostnames, so they are
/// held to the strictest of the three.
pub(super) fn validate_id(id: &str) -> Result<(), SandboxError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 64 bytes"
    } else if id == "." || id == ".." {
        "it is not a file name"
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'))
    {
        "only A-Z, a-z, 0-9, '_', '.', '+' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(SandboxError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

/// How one of [`USR_ALIASES`] looks on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostEntry {
    /// A symlink with this target (`usr/bin` on merged-/usr systems).
    Symlink(PathBuf),
    /// A real directory, bound read-only.
    Dir,
}

/// Reads how the host at `host_root` lays out [`USR_ALIASES`]; missing entries
/// are left out.
pub(super) fn host_layout(host_root: &Path) -> io::Result<Vec<(&'static str, HostEntry)>> {
    let mut layout = Vec::new();
    for name in USR_ALIASES {
        let path = host_root.join(name);
        let meta = match path.symlink_metadata() {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if meta.file_type().is_symlink() {
            layout.push((*name, HostEntry::Symlink(path.read_link()?)));
        } else if meta.is_dir() {
            layout.push((*name, HostEntry::Dir));
        }
    }
    Ok(layout)
}

/// Fills the empty `rootfs` directory with the symlinks of `layout`. Mount
/// points are created by `libcontainer` itself.
pub(super) fn populate_rootfs(rootfs: &Path, layout: &[(&str, HostEntry)]) -> io::Result<()> {
    for (name, entry) in layout {
        if let HostEntry::Symlink(target) = entry {
            symlink(target, rootfs.join(name))?;
        }
    }
    Ok(())
}

/// The OCI `process` of `spec`: its argv, env, cwd and identity, no
/// capabilities, `no_new_privs`, its rlimits. Used for the sandbox's init
/// and, as `process.json`, for every [`super::Sandbox::exec`].
pub(super) fn process(spec: &SandboxSpec) -> Result<Process, OciSpecError> {
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(HashSet::new())
        .effective(HashSet::new())
        .inheritable(HashSet::new())
        .permitted(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.uid)
                .gid(spec.gid)
                // Only its own group: an empty list would leave the caller's
                // supplementary groups (root's `0`) in place.
                .additional_gids(vec![spec.gid])
                .build()?,
        )
        .args(spec.argv.clone())
        .env(environment(spec))
        .cwd(spec.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1024_u64)
            .hard(1024_u64)
            .build()?])
        .build()
}

/// The process's environment: [`SandboxSpec::env`], and with a trusted CA
/// the variables naming it (but those the spec sets).
fn environment(spec: &SandboxSpec) -> Vec<String> {
    let mut env = spec.env.clone();
    if spec.network_policy.trusted_ca.is_some() {
        super::trust::add_variables(&mut env);
    }
    env.into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// The upper and work directories of the `/app` overlay
/// ([`SandboxSpec::app`]), in the sandbox's state dir.
#[derive(Debug, Clone)]
pub(super) struct AppLayers {
    /// Where the sandbox's writes to `/app` land.
    pub upper: PathBuf,
    /// overlayfs's scratch directory, on the same file system.
    pub work: PathBuf,
}

/// The upper and work directories of an image root's overlay
/// ([`SandboxSpec::rootfs`]), in the sandbox's state dir.
#[derive(Debug, Clone)]
pub(super) struct RootLayers {
    /// Where the sandbox's writes to its root land.
    pub upper: PathBuf,
    /// overlayfs's scratch directory, on the same file system.
    pub work: PathBuf,
}

impl RootLayers {
    /// The overlay's mount options over the image at `lower`.
    pub fn options(&self, lower: &Path) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// What the sandbox's directory holds for mounts of [`oci_spec`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ExtraMounts<'a> {
    /// For [`SandboxSpec::app`] behind an overlay: the overlay's own layers.
    pub app: Option<&'a AppLayers>,
    /// For a [`NetworkPolicy::trusted_ca`]: the directory shown at
    /// [`super::CA_DIR`].
    pub trusted_ca: Option<&'a Path>,
}

/// The OCI runtime spec for `spec`, with its root filesystem at `rootfs`
/// (relative to the bundle), its cgroup at `cgroups_path`, for
/// [`Network::Bridge`] the network namespace bound at `netns`, and the
/// directories of `extra`.
pub(super) fn oci_spec(
    spec: &SandboxSpec,
    layout: &[(&str, HostEntry)],
    cgroups_path: &Path,
    netns: Option<&Path>,
    extra: ExtraMounts<'_>,
) -> Result<Spec, OciSpecError> {
    let process = process(spec)?;

    let mut namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(namespace)
    .collect::<Result<Vec<_>, _>>()?;
    match (spec.network, netns) {
        (Network::Isolated, _) => namespaces.push(namespace(LinuxNamespaceType::Network)?),
        (Network::Bridge, Some(path)) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.to_path_buf())
                .build()?,
        ),
        (Network::Bridge, None) => {
            return Err(OciSpecError::Other(
                "a bridged sandbox needs its network namespace".to_owned(),
            ))
        }
        (Network::Host, _) => {}
    }

    let resources = LinuxResourcesBuilder::default()
        // Deny every device, then libcontainer allows its default set
        // (null, zero, full, random, urandom, tty, ptmx, pts).
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?])
        .pids(LinuxPidsBuilder::default().limit(spec.pids_limit).build()?)
        .cpu(cpu_resources(spec)?)
        .memory(memory_resources(spec)?)
        .build()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path.to_path_buf())
        .resources(resources)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                // An image's root is an overlay with the sandbox's own upper
                // layer: writable, as images expect; the host's is not.
                .readonly(spec.rootfs.is_none())
                .build()?,
        )
        .hostname(spec.id.clone())
        .mounts(mounts(spec, layout, extra)?)
        .process(process)
        .linux(linux)
        .build()
}

/// Shares always (the default request is the kernel's default weight), a
/// quota and its period only when capped.
fn cpu_resources(spec: &SandboxSpec) -> Result<oci_spec::runtime::LinuxCpu, OciSpecError> {
    let builder = LinuxCpuBuilder::default().shares(spec.cpu_shares());
    match spec.cpu_quota_us() {
        Some(quota) => builder.quota(quota).period(CPU_PERIOD_US).build(),
        None => builder.build(),
    }
}

/// The memory limit, with memory+swap set to the same value so nothing can
/// be swapped out, and the OOM killer left enabled: over the limit, a process
/// is killed rather than the whole sandbox hanging.
fn memory_resources(spec: &SandboxSpec) -> Result<oci_spec::runtime::LinuxMemory, OciSpecError> {
    let builder = LinuxMemoryBuilder::default().disable_oom_killer(false);
    match spec.memory_limit_bytes {
        Some(bytes) => {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            builder.limit(bytes).swap(bytes).build()
        }
        None => builder.build(),
    }
}

fn namespace(typ: LinuxNamespaceType) -> Result<LinuxNamespace, OciSpecError> {
    LinuxNamespaceBuilder::default().typ(typ).build()
}

/// `/proc`, a minimal `/dev` (tmpfs with pts, shm and mqueue), the read-only
/// host binds, and a private `/tmp`. No `/sys`: nothing a replica needs lives
/// there, and it describes the host.
fn mounts(
    spec: &SandboxSpec,
    layout: &[(&str, HostEntry)],
    extra: ExtraMounts<'_>,
) -> Result<Vec<Mount>, OciSpecError> {
    let app = extra.app;
    let mut mounts: Vec<Mount> = get_default_mounts()
        .into_iter()
        .filter(|mount| !mount.destination().starts_with("/sys"))
        .collect();
    // An image brings its own /usr and /etc: nothing of the host's.
    let layout = if spec.rootfs.is_some() { &[] } else { layout };
    let host_binds: &[&str] = if spec.rootfs.is_some() {
        &[]
    } else {
        HOST_BINDS
    };
    let real_dirs = layout
        .iter()
        .filter(|(_, entry)| *entry == HostEntry::Dir)
        .map(|(name, _)| format!("/{name}"));
    for dir in host_binds
        .iter()
        .map(|dir| (*dir).to_owned())
        .chain(real_dirs)
    {
        mounts.push(
            MountBuilder::default()
                .destination(&dir)
                .typ("bind")
                .source(&dir)
                // Not "rbind": a recursive bind would carry submounts whose
                // read-only flag the remount does not change.
                .options(strings(&["bind", "ro", "nosuid", "nodev"]))
                .build()?,
        );
    }
    if spec.rootfs.is_some() {
        mounts.push(
            MountBuilder::default()
                .destination(RESOLV_CONF)
                .typ("bind")
                .source(RESOLV_CONF)
                .options(strings(&["bind", "ro", "nosuid", "nodev", "noexec"]))
                .build()?,
        );
    }
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_owned(),
                "nodev".to_owned(),
                "mode=1777".to_owned(),
                format!("size={}m", spec.tmp_size_mib),
            ])
            .build()?,
    );
    match (spec.network_policy.trusted_ca.is_some(), extra.trusted_ca) {
        (true, Some(dir)) => mounts.push(
            MountBuilder::default()
                .destination(super::CA_DIR)
                .typ("bind")
                .source(dir)
                .options(strings(&["bind", "ro", "nosuid", "nodev", "noexec"]))
                .build()?,
        ),
        (false, _) => {}
        (true, None) => {
            return Err(OciSpecError::Other(
                "a trusted CA needs its directory".to_owned(),
            ))
        }
    }
    match (&spec.app, app) {
        (Some(dir), _) if spec.app_writable => mounts.push(
            MountBuilder::default()
                .destination(APP_DIR)
                .typ("bind")
                .source(dir)
                .options(strings(&["bind", "nosuid", "nodev"]))
                .build()?,
        ),
        (Some(lower), Some(layers)) => mounts.push(
            MountBuilder::default()
                .destination(APP_DIR)
                .typ("overlay")
                .source("overlay")
                .options(vec![
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                    format!("lowerdir={}", lower.display()),
                    format!("upperdir={}", layers.upper.display()),
                    format!("workdir={}", layers.work.display()),
                ])
                .build()?,
        ),
        (None, _) => {}
        (Some(_), None) => {
            return Err(OciSpecError::Other(
                "an /app overlay needs its upper and work layers".to_owned(),
            ))
        }
    }
    Ok(mounts)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec::new("replica-1", vec!["/usr/bin/true".to_owned()])
    }

    #[test]
    fn ids_are_file_names_hostnames_and_cgroup_names() {
        for ok in ["a", "replica-1", "A_b.c+d", &"x".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_rejects_unrunnable_specs() {
        assert!(spec().validate().is_ok());
        let mut no_argv = spec();
        no_argv.argv.clear();
        assert!(no_argv.validate().is_err());
        let mut bad_env = spec();
        bad_env.env.push(("A=B".to_owned(), "c".to_owned()));
        assert!(bad_env.validate().is_err());
        let mut relative_cwd = spec();
        relative_cwd.cwd = PathBuf::from("app");
        assert!(relative_cwd.validate().is_err());
    }

    #[test]
    fn validation_rejects_unusable_limits() {
        let check = |change: fn(&mut SandboxSpec)| {
            let mut spec = spec();
            change(&mut spec);
            spec.validate()
        };
        assert!(check(|s| s.memory_limit_bytes = Some(MIN_MEMORY_BYTES)).is_ok());
        assert!(check(|s| s.memory_limit_bytes = Some(MIN_MEMORY_BYTES - 1)).is_err());
        assert!(check(|s| s.memory_limit_bytes = Some(u64::MAX)).is_err());
        assert!(check(|s| s.cpu_millis = 0).is_err());
        assert!(check(|s| s.cpu_millis = MAX_CPU_MILLIS + 1).is_err());
        assert!(check(|s| s.cpu_limit_millis = Some(MIN_CPU_LIMIT_MILLIS)).is_ok());
        assert!(check(|s| s.cpu_limit_millis = Some(MIN_CPU_LIMIT_MILLIS - 1)).is_err());
        assert!(check(|s| s.pids_limit = 0).is_err());
    }

    #[test]
    fn cpu_millis_map_to_shares_and_quota() {
        let mut spec = spec();
        assert_eq!(spec.cpu_shares(), 1024);
        assert_eq!(spec.cpu_quota_us(), None);
        spec.cpu_millis = 250;
        assert_eq!(spec.cpu_shares(), 256);
        spec.cpu_millis = 1;
        assert_eq!(spec.cpu_shares(), 2, "the kernel's minimum");
        spec.cpu_limit_millis = Some(1500);
        assert_eq!(spec.cpu_quota_us(), Some(150_000));
    }

    #[test]
    fn oci_spec_carries_the_limits() -> Result<(), OciSpecError> {
        let mut limited = spec();
        limited.cpu_millis = 500;
        limited.cpu_limit_millis = Some(2000);
        limited.memory_limit_bytes = Some(256 << 20);
        limited.pids_limit = 64;
        let oci = oci_spec(
            &limited,
            &[],
            Path::new("/hangar/replica-1"),
            None,
            ExtraMounts::default(),
        )?;
        let resources = oci
            .linux()
            .as_ref()
            .and_then(|linux| linux.resources().as_ref())
            .ok_or_else(|| OciSpecError::Other("no resources".into()))?;
        let cpu = resources
            .cpu()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no cpu".into()))?;
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.quota(), Some(200_000));
        assert_eq!(cpu.period(), Some(CPU_PERIOD_US));
        let memory = resources
            .memory()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no memory".into()))?;
        assert_eq!(memory.limit(), Some(256 << 20));
        assert_eq!(memory.swap(), Some(256 << 20), "no swap beyond the limit");
        assert_eq!(memory.disable_oom_killer(), Some(false));
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(64));

        // Defaults: the default weight, no cap, no memory limit, 512 pids.
        let oci = oci_spec(
            &spec(),
            &[],
            Path::new("/hangar/replica-1"),
            None,
            ExtraMounts::default(),
        )?;
        let resources = oci
            .linux()
            .as_ref()
            .and_then(|linux| linux.resources().as_ref())
            .ok_or_else(|| OciSpecError::Other("no resources".into()))?;
        let cpu = resources.cpu().as_ref();
        assert_eq!(cpu.and_then(|cpu| cpu.shares()), Some(1024));
        assert_eq!(cpu.and_then(|cpu| cpu.quota()), None);
        assert_eq!(resources.memory().as_ref().and_then(|m| m.limit()), None);
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(512));
        Ok(())
    }

    #[test]
    fn oci_spec_drops_privileges_and_isolates() -> Result<(), OciSpecError> {
        let oci = oci_spec(
            &spec(),
            &[],
            Path::new("/hangar/replica-1"),
            None,
            ExtraMounts::default(),
        )?;
        let process = oci
            .process()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no process".into()))?;
        assert_eq!(process.user().uid(), NOBODY);
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process
            .capabilities()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no caps".into()))?;
        assert!(caps.bounding().as_ref().is_some_and(HashSet::is_empty));
        assert!(caps.effective().as_ref().is_some_and(HashSet::is_empty));
        assert_eq!(
            oci.root().as_ref().and_then(|root| root.readonly()),
            Some(true)
        );

        let linux = oci
            .linux()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no linux".into()))?;
        let types: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|ns| ns.typ())
            .collect();
        assert!(types.contains(&LinuxNamespaceType::Network));
        assert!(types.contains(&LinuxNamespaceType::Cgroup));

        let mut host = spec();
        host.network = Network::Host;
        let oci = oci_spec(
            &host,
            &[],
            Path::new("/hangar/replica-1"),
            None,
            ExtraMounts::default(),
        )?;
        let linux = oci
            .linux()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no linux".into()))?;
        assert!(!linux
            .namespaces()
            .iter()
            .flatten()
            .any(|ns| ns.typ() == LinuxNamespaceType::Network));

        let mut bridged = spec();
        bridged.network = Network::Bridge;
        let cgroup = Path::new("/hangar/replica-1");
        assert!(oci_spec(&bridged, &[], cgroup, None, ExtraMounts::default()).is_err());
        let netns = Path::new("/state/replica-1/netns");
        let oci = oci_spec(&bridged, &[], cgroup, Some(netns), ExtraMounts::default())?;
        let linux = oci
            .linux()
            .as_ref()
            .ok_or_else(|| OciSpecError::Other("no linux".into()))?;
        let network = linux
            .namespaces()
            .iter()
            .flatten()
            .find(|ns| ns.typ() == LinuxNamespaceType::Network)
            .ok_or_else(|| OciSpecError::Other("no network namespace".into()))?;
        assert_eq!(network.path().as_deref(), Some(netns));
        Ok(())
    }

    #[test]
    fn a_trusted_ca_is_shown_read_only_and_named_in_the_environment() -> Result<(), OciSpecError> {
        let mut trusting = spec();
        trusting.network_policy.trusted_ca =
            Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned());
        assert!(trusting.validate().is_ok());
        let dir = Path::new("/state/replica-1/ca");
        let extra = ExtraMounts {
            app: None,
            trusted_ca: Some(dir),
        };
        let oci = oci_spec(&trusting, &[], Path::new("/hangar/replica-1"), None, extra)?;
        let mount = oci
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new(super::super::CA_DIR))
            .ok_or_else(|| OciSpecError::Other("no CA mount".to_owned()))?;
        assert_eq!(mount.source().as_deref(), Some(dir));
        assert!(mount.options().iter().flatten().any(|o| o == "ro"));
        let env = oci
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        assert!(
            env.contains(&"SSL_CERT_FILE=/run/hangar/ca/ca-bundle.pem".to_owned()),
            "{env:?}"
        );
        // Without its directory, no spec; without a CA, no mount, no variable.
        assert!(oci_spec(
            &trusting,
            &[],
            Path::new("/h"),
            None,
            ExtraMounts::default()
        )
        .is_err());
        let plain = oci_spec(&spec(), &[], Path::new("/h"), None, extra)?;
        assert!(!plain
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.destination() == Path::new(super::super::CA_DIR)));
        trusting.network_policy.trusted_ca = Some("not a certificate".to_owned());
        assert!(trusting.validate().is_err());
        Ok(())
    }

    #[test]
    fn mounts_bind_host_dirs_read_only_and_skip_sys() -> Result<(), OciSpecError> {
        let layout = [
            ("bin", HostEntry::Symlink(PathBuf::from("usr/bin"))),
            ("lib32", HostEntry::Dir),
        ];
        let mounts = mounts(&spec(), &layout, ExtraMounts::default())?;
        let find = |dest: &str| mounts.iter().find(|m| m.destination() == Path::new(dest));
        for dir in ["/usr", "/etc", "/lib32"] {
            let mount = find(dir).ok_or_else(|| OciSpecError::Other(format!("no {dir}")))?;
            assert!(mount.options().iter().flatten().any(|o| o == "ro"), "{dir}");
        }
        assert!(find("/bin").is_none(), "symlinked aliases are not mounts");
        assert!(find("/proc").is_some());
        assert!(find("/dev").is_some());
        assert!(find("/tmp").is_some());
        assert!(!mounts.iter().any(|m| m.destination().starts_with("/sys")));
        Ok(())
    }

    fn mounts_of(
        spec: &SandboxSpec,
        layout: &[(&str, HostEntry)],
    ) -> Result<Vec<Mount>, OciSpecError> {
        mounts(spec, layout, ExtraMounts::default())
    }

    #[test]
    fn an_image_root_has_nothing_of_the_host() -> Result<(), OciSpecError> {
        let mut image = spec();
        image.rootfs = Some(PathBuf::from("/data/artifacts/oci-sha256-ab/rootfs"));
        assert!(image.validate().is_ok());
        let layout = [("lib32", HostEntry::Dir)];
        let mounts = mounts(&image, &layout, ExtraMounts::default())?;
        for host in ["/usr", "/etc", "/lib32", "/app"] {
            assert!(
                !mounts.iter().any(|m| m.destination() == Path::new(host)),
                "{host} is not the host's in an image sandbox"
            );
        }
        for fresh in ["/proc", "/dev", "/tmp"] {
            assert!(mounts.iter().any(|m| m.destination() == Path::new(fresh)));
        }
        let oci = oci_spec(
            &image,
            &layout,
            Path::new("/hangar/replica-1"),
            None,
            ExtraMounts::default(),
        )?;
        assert_eq!(
            oci.root().as_ref().and_then(|root| root.readonly()),
            Some(false),
            "its writes land in the sandbox's own upper layer"
        );
        let resolver = mounts
            .iter()
            .find(|m| m.destination() == Path::new(RESOLV_CONF))
            .ok_or_else(|| OciSpecError::Other("no resolv.conf".into()))?;
        assert!(resolver.options().iter().flatten().any(|o| o == "ro"));
        // A build step on an image: its tree writable at /app over the root.
        let mut with_app = image.clone();
        with_app.app = Some(PathBuf::from("/data/builds/b/src"));
        with_app.app_writable = true;
        assert!(with_app.validate().is_ok());
        let app = mounts_of(&with_app, &layout)?;
        let app = app
            .iter()
            .find(|m| m.destination() == Path::new(APP_DIR))
            .ok_or_else(|| OciSpecError::Other("no /app".into()))?;
        assert_eq!(
            app.source().as_deref(),
            Some(Path::new("/data/builds/b/src"))
        );
        assert!(!app.options().iter().flatten().any(|o| o == "ro"));
        let mut relative = image;
        relative.rootfs = Some(PathBuf::from("rootfs"));
        assert!(relative.validate().is_err());
        Ok(())
    }

    #[test]
    fn host_layout_mirrors_symlinks_and_dirs() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("hangar-layout-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin"))?;
        std::fs::create_dir_all(root.join("lib32"))?;
        symlink("usr/bin", root.join("bin"))?;
        let layout = host_layout(&root);
        std::fs::remove_dir_all(&root)?;
        assert_eq!(
            layout?,
            vec![
                ("bin", HostEntry::Symlink(PathBuf::from("usr/bin"))),
                ("lib32", HostEntry::Dir),
            ]
        );
        Ok(())
    }
}
