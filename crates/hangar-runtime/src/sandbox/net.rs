//! A [`Network::Bridge`](super::Network::Bridge) sandbox's network: a
//! persistent network namespace of its own, wired by the CNI reference
//! plugins (Debian's `containernetworking-plugins`), which this module runs
//! itself — no CNI library, no `ip` binary.
//!
//! ```text
//! setup:    <dir>/netns  ◄── bind mount of a fresh network namespace
//!           <dir>/cni.json   the plugin dir and bridge config, written before ADD
//!                            (DEL runs with them)
//!           loopback ADD (lo up), bridge ADD (eth0, a veth on the bridge,
//!           an address from host-local) ──► the sandbox's IP
//! teardown: bridge DEL (veth, IPAM reservation), unmount and remove
//!           <dir>/netns, remove <dir>/cni.json
//! ```
//!
//! The bridge itself (and `net.ipv4.ip_forward = 1`, which the `bridge`
//! plugin sets for a gateway) stays on the host: it is shared by every
//! sandbox on the network. So are the rules that give sandboxes egress
//! ([`ensure_host_rules`]): one masquerade rule for the whole subnet, and
//! `FORWARD` accepts for the bridge (a Docker host's `FORWARD` policy is
//! `DROP`). The plugin's own `ipMasq` would add and remove a chain per
//! sandbox instead: measured here, that made ADD 44 → 18 ms and DEL
//! 100 → 30 ms slower, all of it in `iptables`. The shared rules are
//! installed once per boot (a marker under `/run`), and re-checked whenever
//! a driver starts.
//!
//! The CNI container id is the sandbox id, so ids must be unique among all
//! the sandboxes on one CNI network ([`BridgeConfig::name`]), not only
//! within one state dir.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::{io_error, SandboxError};

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The default bridge sandboxes are attached to.
pub const DEFAULT_BRIDGE: &str = "hangar0";

/// The default subnet sandboxes get addresses from. Deliberately not
/// podman's `10.88.0.0/16`, Docker's `172.17.0.0/16` or a common LAN range.
pub const DEFAULT_SUBNET: &str = "10.231.0.0/16";

/// The default CNI network name: also the `host-local` IPAM directory,
/// `/var/lib/cni/networks/<name>`.
pub const DEFAULT_NETWORK_NAME: &str = "hangar";

/// The file (in a sandbox's dir) its network namespace is bind-mounted on.
const NETNS_FILE: &str = "netns";

/// The file (in a sandbox's dir) holding the bridge config ADD ran with.
const CNI_CONFIG_FILE: &str = "cni.json";

/// The `PATH` the plugins run with (they look programs such as `iptables`
/// up on it): the system's directories, as sudo's `secure_path`, not
/// whatever the server inherited — the plugins run as root.
const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CNI spec version the configs are written in (plugins ≥ 1.0).
const CNI_VERSION: &str = "1.0.0";

/// The network [`Network::Bridge`](super::Network::Bridge) sandboxes are
/// attached to. Host-wide: every [`super::Sandboxes`] using the same
/// [`BridgeConfig::name`] shares the bridge and the address pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The CNI network name (`[A-Za-z0-9_.-]`).
    pub name: String,
    /// The Linux bridge (at most 15 bytes); created by the plugin if missing.
    pub bridge: String,
    /// The IPv4 subnet in CIDR notation; the bridge gets its first address
    /// and is the sandboxes' gateway.
    pub subnet: String,
    /// Where the `bridge`, `host-local` and `loopback` plugins are.
    pub plugin_dir: PathBuf,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_NETWORK_NAME.to_owned(),
            bridge: DEFAULT_BRIDGE.to_owned(),
            subnet: DEFAULT_SUBNET.to_owned(),
            plugin_dir: PathBuf::from(CNI_PLUGIN_DIR),
        }
    }
}

impl BridgeConfig {
    /// The `bridge` plugin's config: gateway, masquerade, `host-local` IPAM
    /// with a default route.
    fn cni_config(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            // Egress goes through the shared rules of `ensure_host_rules`.
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        })
    }

    fn loopback_config(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": format!("{}-lo", self.name),
            "type": "loopback",
        })
    }
}

/// Where [`ensure_host_rules`] notes it has run since boot.
fn rules_marker(config: &BridgeConfig) -> PathBuf {
    PathBuf::from(format!("/run/hangar/net-{}.rules", config.name))
}

/// Makes sure the host has the rules bridged sandboxes need for egress:
/// masquerade of the subnet's traffic leaving it, and `FORWARD` accepts for
/// traffic from the bridge and replies to it. Idempotent (each rule is
/// checked before it is added); needs root and `iptables`.
pub fn ensure_host_rules(config: &BridgeConfig) -> Result<(), String> {
    let subnet = config.subnet.as_str();
    let bridge = config.bridge.as_str();
    let rules: [(&str, &str, Vec<&str>); 3] = [
        (
            "nat",
            "POSTROUTING",
            vec!["-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE"],
        ),
        ("filter", "FORWARD", vec!["-i", bridge, "-j", "ACCEPT"]),
        (
            "filter",
            "FORWARD",
            vec![
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ),
    ];
    for (table, chain, rule) in rules {
        let run = |op: &str| {
            Command::new("iptables")
                .args(["-w", "-t", table, op, chain])
                .args(&rule)
                .args(["-m", "comment", "--comment", "hangar"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
        };
        let present = run("-C").map_err(|err| format!("cannot run iptables: {err}"))?;
        if present.status.success() {
            continue;
        }
        // FORWARD accepts go first, ahead of a DROP a firewall put there.
        let op = if chain == "FORWARD" { "-I" } else { "-A" };
        let added = run(op).map_err(|err| format!("cannot run iptables: {err}"))?;
        if !added.status.success() {
            return Err(format!(
                "iptables {op} {chain} failed: {}",
                String::from_utf8_lossy(&added.stderr).trim()
            ));
        }
    }
    let marker = rules_marker(config);
    if let Some(parent) = marker.parent() {
        let _ = fs::create_dir_all(parent);
    }
    let _ = fs::write(&marker, b"");
    Ok(())
}

/// The path a sandbox's network namespace is bound to.
pub(super) fn netns_path(dir: &Path) -> PathBuf {
    dir.join(NETNS_FILE)
}

/// The CNI plugins wiring a new namespace, still running: the sandbox's
/// container is created meanwhile, and [`PendingNetwork::finish`] waits for
/// them before the sandbox starts.
pub(super) struct PendingNetwork {
    id: String,
    loopback: Result<RunningPlugin, Failure>,
    bridge: Result<RunningPlugin, Failure>,
    saved: PathBuf,
}

impl PendingNetwork {
    /// Waits for both plugins; returns the sandbox's address. On failure,
    /// what was done stays for [`teardown`] to undo.
    pub(super) fn finish(self) -> Result<IpAddr, SandboxError> {
        // Both are waited for, whatever the first says: teardown must not
        // race a plugin still at work.
        let loopback = self.loopback.and_then(RunningPlugin::wait);
        let bridge = self.bridge.and_then(RunningPlugin::wait);
        // A bridge plugin that never ran did nothing, and DEL would not run
        // either: forget it.
        if bridge.as_ref().is_err_and(|failure| !failure.started) {
            remove_file(&self.id, &self.saved)?;
        }
        loopback.map_err(|failure| failure.error)?;
        let result = bridge.map_err(|failure| failure.error)?;
        first_ip(&result).ok_or_else(|| SandboxError::Network {
            id: self.id.clone(),
            action: "read the address from the bridge plugin's result",
            reason: String::from_utf8_lossy(&result).into_owned(),
        })
    }
}

/// Creates the sandbox's network namespace at [`netns_path`] and starts the
/// plugins that wire it (loopback and bridge at once: they touch different
/// interfaces). On failure, what was done stays for [`teardown`] (the
/// create's cleanup) to undo.
pub(super) fn begin(
    id: &str,
    dir: &Path,
    config: &BridgeConfig,
) -> Result<PendingNetwork, SandboxError> {
    if !rules_marker(config).exists() {
        ensure_host_rules(config).map_err(|reason| SandboxError::Network {
            id: id.to_owned(),
            action: "install the bridge's egress rules",
            reason,
        })?;
    }
    let netns = netns_path(dir);
    File::create(&netns).map_err(io_error(id, "create", &netns))?;
    create_netns(&netns).map_err(|source| SandboxError::Os {
        id: id.to_owned(),
        action: "create the network namespace",
        source,
    })?;
    let plugin = Plugin {
        id,
        dir: &config.plugin_dir,
        netns: &netns,
    };
    // Saved before ADD: a failed ADD may have done half its work (a veth, a
    // reservation), and CNI undoes that with DEL. Nothing to DEL for
    // loopback: removing the namespace undoes it.
    let saved = dir.join(CNI_CONFIG_FILE);
    let record = serde_json::json!({
        "pluginDir": config.plugin_dir,
        "config": config.cni_config(),
    });
    fs::write(&saved, record.to_string()).map_err(io_error(id, "write", &saved))?;
    let loopback = plugin.spawn(
        "loopback",
        "ADD",
        "lo",
        &config.loopback_config().to_string(),
    );
    let bridge = plugin.spawn("bridge", "ADD", "eth0", &config.cni_config().to_string());
    Ok(PendingNetwork {
        id: id.to_owned(),
        loopback,
        bridge,
        saved,
    })
}

/// Undoes [`setup`], as far as it got: bridge DEL with the saved config, then
/// the namespace. Tolerates every step being already done. When DEL fails the
/// namespace is kept, so a retry can run DEL again.
pub(super) fn teardown(id: &str, dir: &Path) -> Result<(), SandboxError> {
    let netns = netns_path(dir);
    let saved = dir.join(CNI_CONFIG_FILE);
    match fs::read_to_string(&saved) {
        Ok(record) => {
            let (plugin_dir, cni_config) =
                parse_record(&record).ok_or_else(|| SandboxError::Network {
                    id: id.to_owned(),
                    action: "read the saved CNI config",
                    reason: format!("{} is malformed", saved.display()),
                })?;
            let plugin = Plugin {
                id,
                dir: &plugin_dir,
                netns: &netns,
            };
            plugin
                .run("bridge", "DEL", "eth0", &cni_config)
                .map_err(|failure| failure.error)?;
            remove_file(id, &saved)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(id, "read", &saved)(err)),
    }
    match umount2(&netns, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (setup failed before binding it).
        Ok(()) | Err(Errno::ENOENT | Errno::EINVAL) => {}
        Err(source) => {
            return Err(SandboxError::Os {
                id: id.to_owned(),
                action: "unmount the network namespace",
                source,
            })
        }
    }
    remove_file(id, &netns)
}

fn remove_file(id: &str, path: &Path) -> Result<(), SandboxError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_error(id, "remove", path)(err)),
        _ => Ok(()),
    }
}

/// The plugin dir and the bridge config saved by [`setup`].
fn parse_record(record: &str) -> Option<(PathBuf, String)> {
    let value: serde_json::Value = serde_json::from_str(record).ok()?;
    let plugin_dir = PathBuf::from(value.get("pluginDir")?.as_str()?);
    let config = value.get("config")?;
    config.is_object().then(|| (plugin_dir, config.to_string()))
}

/// Binds a new network namespace on `path` (an existing empty file), the way
/// `ip netns add` does, without leaving it: only the calling thread enters
/// the new namespace, and it returns to its own before this returns.
fn create_netns(path: &Path) -> Result<(), Errno> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|err| errno_of(&err))?;
    unshare(CloneFlags::CLONE_NEWNET)?;
    let bound = without_ipv6().and_then(|()| {
        mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    });
    // Returning must not fail silently: the thread would stay in the new
    // namespace and every later connection would go nowhere.
    setns(&own, CloneFlags::CLONE_NEWNET).expect("return to the caller's network namespace");
    bound
}

/// Turns IPv6 off in the calling thread's (new) network namespace, for the
/// interfaces there and those made later (`eth0`): the packet filter
/// ([`super::firewall`]) speaks IPv4 only, and link-local IPv6 would let
/// sandboxes on one bridge talk past it. The sandbox has no capability to
/// turn it back on. A kernel without IPv6 has nothing to turn off.
fn without_ipv6() -> Result<(), Errno> {
    for scope in ["default", "all"] {
        let path = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
        match fs::write(&path, b"1") {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(errno_of(&err)),
        }
    }
    Ok(())
}

fn errno_of(err: &io::Error) -> Errno {
    err.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// A plugin invocation that failed.
struct Failure {
    /// Whether the plugin ran at all (it may have done part of its work).
    started: bool,
    error: SandboxError,
}

/// One sandbox's plugin invocations.
struct Plugin<'a> {
    id: &'a str,
    dir: &'a Path,
    netns: &'a Path,
}

/// A plugin started by [`Plugin::spawn`].
struct RunningPlugin {
    child: std::process::Child,
    id: String,
    name: String,
    command: String,
    action: &'static str,
    binary: PathBuf,
    written: io::Result<()>,
    started: std::time::Instant,
}

impl RunningPlugin {
    /// Waits for it: its stdout (the result) on success, the CNI error it
    /// printed otherwise.
    fn wait(self) -> Result<Vec<u8>, Failure> {
        let error = |reason: String| Failure {
            started: true,
            error: SandboxError::Network {
                id: self.id.clone(),
                action: self.action,
                reason,
            },
        };
        let output = self
            .child
            .wait_with_output()
            .map_err(|err| error(format!("cannot wait for {}: {err}", self.binary.display())))?;
        tracing::debug!(
            sandbox = self.id,
            plugin = self.name,
            command = self.command,
            elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            success = output.status.success(),
            "ran a CNI plugin"
        );
        if output.status.success() {
            self.written
                .map_err(|err| error(format!("cannot write the config: {err}")))?;
            return Ok(output.stdout);
        }
        Err(error(plugin_error(
            &output.stdout,
            &output.stderr,
            output.status,
        )))
    }
}

impl Plugin<'_> {
    /// Runs plugin `name` with CNI `command` and waits for it.
    fn run(
        &self,
        name: &str,
        command: &str,
        ifname: &str,
        config: &str,
    ) -> Result<Vec<u8>, Failure> {
        self.spawn(name, command, ifname, config)?.wait()
    }

    /// Starts plugin `name` with CNI `command`, its config written to it.
    fn spawn(
        &self,
        name: &str,
        command: &str,
        ifname: &str,
        config: &str,
    ) -> Result<RunningPlugin, Failure> {
        let action = match (name, command) {
            ("loopback", _) => "bring up the loopback interface (CNI loopback ADD)",
            (_, "ADD") => "attach the sandbox to the bridge (CNI bridge ADD)",
            _ => "detach the sandbox from the bridge (CNI bridge DEL)",
        };
        let error = |started: bool, reason: String| Failure {
            started,
            error: SandboxError::Network {
                id: self.id.to_owned(),
                action,
                reason,
            },
        };
        let binary = self.dir.join(name);
        let started = std::time::Instant::now();
        let mut child = Command::new(&binary)
            .env_clear()
            .env("PATH", PLUGIN_PATH)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| error(false, format!("cannot run {}: {err}", binary.display())))?;
        // The config is far smaller than a pipe buffer: writing it all before
        // reading cannot deadlock.
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(config.as_bytes());
        Ok(RunningPlugin {
            child,
            id: self.id.to_owned(),
            name: name.to_owned(),
            command: command.to_owned(),
            action,
            binary,
            written,
            started,
        })
    }
}

/// The message of a CNI error result (`{"code", "msg", "details"}`), or
/// whatever the plugin printed.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(stdout) {
        if let Some(msg) = value.get("msg").and_then(|msg| msg.as_str()) {
            let details = value.get("details").and_then(|d| d.as_str()).unwrap_or("");
            return if details.is_empty() {
                msg.to_owned()
            } else {
                format!("{msg}: {details}")
            };
        }
    }
    let printed = String::from_utf8_lossy(if stdout.is_empty() { stderr } else { stdout });
    format!("{status}: {}", printed.trim())
}

/// The first address of a CNI result, without its prefix length.
fn first_ip(result: &[u8]) -> Option<IpAddr> {
    let value: serde_json::Value = serde_json::from_slice(result).ok()?;
    let address = value.get("ips")?.get(0)?.get("address")?.as_str()?;
    address.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_address_of_a_result() {
        let result = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
            "ips":[{"interface":0,"address":"10.231.0.7/16","gateway":"10.231.0.1"}]}"#;
        assert_eq!(first_ip(result), Some(IpAddr::from([10, 231, 0, 7])));
        assert_eq!(first_ip(br#"{"ips":[]}"#), None);
        assert_eq!(first_ip(b"not json"), None);
    }

    #[test]
    fn bridge_config_is_a_gateway_with_masquerade() {
        let config = BridgeConfig {
            subnet: "10.1.0.0/24".to_owned(),
            ..BridgeConfig::default()
        }
        .cni_config();
        assert_eq!(config["type"], "bridge");
        assert_eq!(config["bridge"], DEFAULT_BRIDGE);
        assert_eq!(config["isGateway"], true);
        assert_eq!(config["ipMasq"], false);
        assert_eq!(config["ipam"]["type"], "host-local");
        assert_eq!(config["ipam"]["ranges"][0][0]["subnet"], "10.1.0.0/24");
    }

    #[test]
    fn plugin_errors_show_msg_and_details() {
        let status = std::process::ExitStatus::default();
        assert_eq!(
            plugin_error(
                br#"{"code":7,"msg":"no IP","details":"pool full"}"#,
                b"",
                status
            ),
            "no IP: pool full"
        );
    }
}
