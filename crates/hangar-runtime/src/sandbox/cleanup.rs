//! Removing a sandbox's traces: libcontainer's state, the cgroup in every
//! hierarchy (including the parent libcontainer leaves behind), the network
//! (CNI `DEL`, the namespace), the bundle.
//!
//! Used both by [`super::Sandbox::delete`] and to undo a failed
//! [`super::Sandboxes::create`], so every step tolerates "already gone".

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use nix::errno::Errno;
use nix::fcntl::FlockArg;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::{io_error, SandboxError, Sandboxes};

/// Removes everything sandbox `id` left on the system. `container` is the live
/// handle when there is one; otherwise libcontainer's state is loaded from
/// disk if it got that far. The container and cgroup steps always both run;
/// failures are collected into one [`SandboxError::Delete`].
pub(super) fn remove_sandbox(
    sandboxes: &Sandboxes,
    id: &str,
    container: Option<&mut Container>,
) -> Result<(), SandboxError> {
    let mut failures = Vec::new();
    let dir = sandboxes.sandbox_dir(id);
    let container_error = |source| SandboxError::Container {
        id: id.to_owned(),
        action: "delete the container",
        source: Box::new(source),
    };

    // libcontainer: kills what is left (force), removes the cgroup leaf in the
    // hierarchies it manages and its state dir.
    let state = dir.join("runtime").join(id);
    if container.is_none() {
        // Nobody holds the init: kill what runs first and wait for the
        // cgroup to empty (libcontainer's force delete signals but does not
        // wait, and a busy cgroup cannot be removed).
        kill_cgroup(&sandboxes.cgroup_path(id));
    }
    let result = match container {
        Some(container) => container.delete(true).map_err(container_error),
        None if state.join("state.json").exists() => Container::load(state)
            .and_then(|mut container| container.delete(true))
            .map_err(container_error),
        None => Ok(()),
    };
    if let Err(err) = result {
        failures.push(err);
    }

    if let Err(err) = remove_cgroups(sandboxes, id) {
        failures.push(err);
    }

    // Out of the packet filter before its address is given back: a new
    // sandbox given the address must not inherit its peers. When that fails
    // the address is kept, for a retry.
    match super::firewall::release(sandboxes, id, &dir) {
        Err(err) => failures.push(err),
        // After the container: nothing runs in the namespace any more. A
        // no-op for sandboxes without a network of their own.
        Ok(()) => {
            if let Err(err) = super::net::teardown(id, &dir) {
                failures.push(err);
            }
        }
    }

    // An image root's overlay, mounted by create in this mount namespace.
    if let Err(err) = unmount_root(id, &dir) {
        failures.push(err);
    }

    // Keep libcontainer's state and the bundle while anything else is left:
    // they are what a retry (or a later `Container::load`) needs.
    if failures.is_empty() {
        if let Err(err) = remove_bundle(id, &dir) {
            failures.push(err);
        }
    }

    if failures.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::Delete {
            id: id.to_owned(),
            failures,
        })
    }
}

/// Kills and reaps the helper processes a failed `libcontainer` create leaves
/// behind as children of the caller: its intermediate process (which it
/// never waits for on the error path) and the init process (a child of the
/// caller through `CLONE_PARENT`). Both carry a `youki:[…]` name until init
/// execs the workload, so after a failed create any child so named is one of
/// them — given the module's rule that creates do not run concurrently.
pub(super) fn reap_failed_create(id: &str) {
    for pid in helper_children() {
        tracing::debug!(sandbox = id, %pid, "reaping helper of a failed create");
        kill_and_reap(pid);
    }
}

/// This process's children that still carry libcontainer's `youki:[…]` name:
/// intermediate and init processes that have not exec'd (yet, or ever).
pub(super) fn helper_children() -> Vec<Pid> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut helpers = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, ppid)) = parse_stat(&stat) else {
            continue;
        };
        if ppid == me && name.starts_with("youki:[") {
            helpers.push(Pid::from_raw(pid));
        }
    }
    helpers
}

/// `SIGKILL`s child `pid` (gone already is fine) and reaps it.
pub(super) fn kill_and_reap(pid: Pid) {
    let _ = signal::kill(pid, Signal::SIGKILL);
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

/// `(comm, ppid)` from `/proc/<pid>/stat`; comm may hold spaces and
/// parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u32)> {
    let (head, rest) = stat.rsplit_once(") ")?;
    let (_, name) = head.split_once(" (")?;
    let ppid = rest.split(' ').nth(1)?.parse().ok()?;
    Some((name, ppid))
}

/// Removes the sandbox's cgroup in every hierarchy, then its parents up to
/// the hierarchy root while they are empty.
///
/// libcontainer removes the leaf, but only in the hierarchies its manager
/// handles, and never the parent it created with `create_dir_all`.
fn remove_cgroups(sandboxes: &Sandboxes, id: &str) -> Result<(), SandboxError> {
    let cgroup = sandboxes.cgroup_path(id);
    let relative = cgroup.strip_prefix("/").unwrap_or(&cgroup).to_path_buf();
    let roots = cgroup_roots().map_err(io_error(id, "read", "/proc/self/mountinfo"))?;
    for root in &roots {
        let leaf = root.join(&relative);
        // A leaf that is busy still holds processes: that is a real failure.
        remove_empty_dir(&leaf).map_err(io_error(id, "remove cgroup", &leaf))?;
    }

    // Removing the shared parent races with a create making its leaf below
    // it; creates hold the lock shared, so only remove when nobody creates.
    // When somebody does, the parent is in use anyway.
    let Some(_lock) = sandboxes.cgroups_lock(id, FlockArg::LockExclusiveNonblock)? else {
        return Ok(());
    };
    for root in &roots {
        let mut parent = relative.parent();
        while let Some(dir) = parent.filter(|dir| !dir.as_os_str().is_empty()) {
            let path = root.join(dir);
            match fs::remove_dir(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                // Other sandboxes' cgroups are still inside.
                Err(err) if matches!(err.raw_os_error(), Some(errno) if is_busy(errno)) => {
                    break;
                }
                Err(err) => return Err(io_error(id, "remove cgroup", &path)(err)),
            }
            parent = dir.parent();
        }
    }
    Ok(())
}

/// `SIGKILL` to every process of the cgroup at `cgroup` (in every
/// hierarchy), then waits up to 5 s for them to be gone. Best effort: what
/// is left shows up as a busy cgroup when it is removed.
fn kill_cgroup(cgroup: &Path) {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let Ok(roots) = cgroup_roots() else {
        return;
    };
    let procs = || {
        let mut pids = Vec::new();
        for root in &roots {
            if let Ok(text) = fs::read_to_string(root.join(relative).join("cgroup.procs")) {
                pids.extend(
                    text.lines()
                        .filter_map(|line| line.trim().parse::<i32>().ok()),
                );
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let pids = procs();
        if pids.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `rmdir` that treats "not there" as done.
fn remove_empty_dir(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// EBUSY and ENOTEMPTY: what `rmdir` on a cgroup with children says.
fn is_busy(errno: i32) -> bool {
    errno == nix::errno::Errno::EBUSY as i32 || errno == nix::errno::Errno::ENOTEMPTY as i32
}

/// Unmounts the overlay an image sandbox's root is (lazily: a process of
/// the host still looking into it does not keep the sandbox's files).
/// Nothing mounted there is success.
fn unmount_root(id: &str, dir: &Path) -> Result<(), SandboxError> {
    let rootfs = dir.join("bundle").join("rootfs");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(io_error(
        id,
        "read",
        "/proc/self/mountinfo",
    ))?;
    // Mounted more than once (a retry after a crash): unmount each.
    for _ in mount_points(&mountinfo).filter(|mount| *mount == rootfs) {
        match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(source) => {
                return Err(SandboxError::Os {
                    id: id.to_owned(),
                    action: "unmount the image's root overlay",
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Removes the sandbox's directory, after making sure nothing is mounted
/// inside it: `remove_dir_all` does not cross symlinks, but it would descend
/// into a bind mount of the host's `/usr`.
fn remove_bundle(id: &str, dir: &Path) -> Result<(), SandboxError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(io_error(
        id,
        "read",
        "/proc/self/mountinfo",
    ))?;
    if let Some(mount) = mount_points(&mountinfo).find(|mount| mount.starts_with(dir)) {
        return Err(SandboxError::StillMounted {
            id: id.to_owned(),
            path: mount,
        });
    }
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_error(id, "remove", dir)(err)),
        _ => Ok(()),
    }
}

/// Mount points of every cgroup (v1) and cgroup2 file system in this mount
/// namespace: where a sandbox's cgroup path is rooted.
pub fn cgroup_roots() -> io::Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&mountinfo)
        .filter(|(_, fstype)| *fstype == "cgroup" || *fstype == "cgroup2")
        .map(|(mount_point, _)| mount_point)
        .collect())
}

/// How many times the kernel's OOM killer killed a process in the cgroup at
/// `cgroup` (relative to each hierarchy's root) because of the cgroup's
/// memory limit; `None` when no hierarchy has a memory controller there.
///
/// cgroup v2 counts in `memory.events`, v1 in `memory.oom_control` (since
/// Linux 4.13); both as an `oom_kill N` line. Every root is tried, so hybrid
/// systems work whichever hierarchy holds the memory controller.
pub(super) fn oom_kills(cgroup: &Path) -> io::Result<Option<u64>> {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let mut kills = None;
    for root in cgroup_roots()? {
        for file in ["memory.events", "memory.oom_control"] {
            let text = match fs::read_to_string(root.join(relative).join(file)) {
                Ok(text) => text,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if let Some(count) = oom_kill_count(&text) {
                kills = Some(kills.unwrap_or(0).max(count));
            }
        }
    }
    Ok(kills)
}

/// The `oom_kill N` line of `memory.events` or `memory.oom_control`.
fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
}

fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    parse_mountinfo(mountinfo).map(|(mount_point, _)| mount_point)
}

/// `(mount point, file system type)` of each line of `/proc/<pid>/mountinfo`
/// (proc(5)): field 5 is the mount point, the type follows the `-` separator.
fn parse_mountinfo(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str)> {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        let fstype = fields.skip_while(|field| *field != "-").nth(1)?;
        Some((PathBuf::from(unescape(mount_point)), fstype))
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime shared:9 master:3 - cgroup2 cgroup2 rw
50 22 0:40 / /srv/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mount_points_and_types() {
        let parsed: Vec<_> = parse_mountinfo(MOUNTINFO).collect();
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[2], (PathBuf::from("/sys/fs/cgroup/cpu"), "cgroup"));
        assert_eq!(
            parsed[3],
            (PathBuf::from("/sys/fs/cgroup/unified"), "cgroup2")
        );
        assert_eq!(parsed[4].0, PathBuf::from("/srv/with space"));
    }

    #[test]
    fn parses_comm_and_ppid_from_stat() {
        let stat = "4242 (youki:[2:INIT]) S 4240 4242 4242 0 -1 4194560";
        assert_eq!(parse_stat(stat), Some(("youki:[2:INIT]", 4240)));
        let tricky = "7 (a) b (c)) Z 1 7 7 0";
        assert_eq!(parse_stat(tricky), Some(("a) b (c)", 1)));
    }

    #[test]
    fn reads_oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(oom_kill_count(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v2), Some(1));
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\9b"), "a\\9b");
        assert_eq!(unescape("tail\\04"), "tail\\04");
    }
}
