//! What the benchmark binaries share. Each binary measures one thing its
//! own way; what they have in common lives here once, so two benchmarks
//! whose figures BENCHMARKS.md sets side by side cannot drift apart in how
//! they probe, summarise or set up, and a fix lands in all of them.
//!
//! # Layout
//! - this file: nearest-rank percentiles, the summary ([`Stats`]) and ratio
//!   cells the tables print; readings of the machine (CPU steal, load
//!   average, kernel, CPUs, free ports, programs in `PATH`) that every
//!   report prints next to its figures, because on a shared VM the figures
//!   mean little without them ([`print_conditions`]); and what it takes to
//!   run crun (the baseline of the start targets) on a hybrid cgroup host.
//! - [`host`]: what every run sets up and tears down around its timing
//!   (root, the `hangar` binary, a temporary directory, child processes,
//!   programs' versions).
//! - [`load`]: HTTP load on a path (latency in round-robin blocks,
//!   throughput under wrk or this binary's own senders) for the request
//!   benchmarks.
//! - [`probe`]: the first-byte HTTP probe the start benchmarks time
//!   readiness with, and the static busybox server it probes.
//! - [`serve`]: a real `hangar serve` with an agent deployed on it.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub mod host;
pub mod load;
pub mod probe;
pub mod serve;

/// Where a hybrid cgroup host mounts its v2 hierarchy.
pub const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Samples in ms, sorted, for [`percentile`].
#[must_use]
pub fn sorted_ms(samples: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Nearest-rank percentile of sorted samples (0 for none).
#[must_use]
pub fn percentile(sorted: &[f64], pct: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of some figures (the mean of the middle two for an even
/// count; 0 for none).
#[must_use]
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Summary statistics of some samples, in ms: every figure a report's
/// table shows (each benchmark prints the columns its target is stated in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (nearest rank, like the other percentiles).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest sample.
    pub max: f64,
}

impl Stats {
    /// The summary of `samples`; `None` for none (a row not measured).
    #[must_use]
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let ms = sorted_ms(samples);
        Some(Stats {
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            p50: percentile(&ms, 50.0),
            p90: percentile(&ms, 90.0),
            p95: percentile(&ms, 95.0),
            p99: percentile(&ms, 99.0),
            max: ms[ms.len() - 1],
        })
    }
}

/// `a ÷ b` of medians, as a table cell (`—` without a baseline).
#[must_use]
pub fn ratio(a: &Stats, b: Option<&Stats>) -> String {
    match b {
        Some(b) if b.p50 > 0.0 => format!("{:.2}×", a.p50 / b.p50),
        _ => "—".to_owned(),
    }
}

/// Prints the conditions a run was timed under, the lines every report
/// puts above its tables: the CPU steal while timing (from
/// [`steal_percent`]) and the load average before and after.
pub fn print_conditions(steal: Option<f64>, load: &(String, String)) {
    match steal {
        Some(p) => println!("CPU time stolen by the hypervisor while timing: {p:.1}%."),
        None => println!("CPU steal while timing: unknown (no /proc/stat)."),
    }
    println!(
        "Load average (1, 5, 15 min) before timing: {}; after: {}.",
        load.0, load.1
    );
}

/// CPU time counters of the whole machine, from `/proc/stat` (Linux): total
/// and stolen (taken by the hypervisor for other guests), in ticks.
#[must_use]
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let total = fields.iter().take(8).sum();
    Some((total, *fields.get(7)?))
}

/// Share of CPU time stolen between two [`cpu_ticks`] readings, in percent.
#[must_use]
pub fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((t0, s0), (t1, s1)) = (before?, after?);
    let total = t1.checked_sub(t0).filter(|&t| t > 0)?;
    Some(s1.saturating_sub(s0) as f64 * 100.0 / total as f64)
}

/// CPU time (user + system, all threads) process `pid` has used so far,
/// from `/proc/<pid>/stat` (Linux); `None` when it is gone.
#[must_use]
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// CPU time [`process_cpu`] of `pid` and its children (nginx's master and
/// workers); `None` when `pid` is gone.
#[must_use]
pub fn process_tree_cpu(pid: u32) -> Option<Duration> {
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    let own = process_cpu(pid)?;
    Some(
        own + children
            .into_iter()
            .filter_map(process_cpu)
            .sum::<Duration>(),
    )
}

/// utime + stime of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces, so fields are
/// counted after its closing parenthesis: state is field 3, utime 14 and
/// stime 15.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The load averages of `/proc/loadavg` (1, 5 and 15 minutes).
#[must_use]
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The running kernel's release (empty when unknown), for the line each
/// report prints about the machine.
#[must_use]
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// How many CPUs this process may run on (0 when unknown).
#[must_use]
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
}

/// A program in `PATH`.
#[must_use]
#[allow(
    clippy::disallowed_methods,
    reason = "the benchmark harness finds the programs it compares with as a shell would"
)]
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port free right now.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether this host mounts a cgroup v2 hierarchy with controllers next to
/// v1 ones, which crun 1.8 refuses to run on ("cgroups in hybrid mode not
/// supported").
#[must_use]
pub fn hybrid_with_controllers() -> bool {
    std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers"))
        .is_ok_and(|controllers| !controllers.trim().is_empty())
}

/// Starts a process holding a private mount namespace in which
/// `/sys/fs/cgroup/unified` is unmounted; returns it once it is ready. crun
/// run through `nsenter -t <its pid> -m --` then uses the v1 hierarchies, as
/// libcontainer does. The caller kills it when done.
pub fn unified_free_namespace() -> Result<Child> {
    let unshare = find_program("unshare").context("`unshare` (util-linux) is not installed")?;
    let mut child = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "umount {UNIFIED} && echo ready && exec sleep infinity"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting unshare")?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        BufReader::new(stdout).read_line(&mut line)?;
    }
    if line.trim() != "ready" {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "cannot make a mount namespace without {UNIFIED}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(child)
}

/// A cgroup parent (a path below every hierarchy's root, like
/// `hangar-bench-<pid>`) that containers go under; removed from every
/// hierarchy on drop.
pub struct CgroupParent(pub String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut hierarchies: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        hierarchies.push(PathBuf::from("/sys/fs/cgroup"));
        for hierarchy in hierarchies {
            let dir = hierarchy.join(&self.0);
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                // Not a cgroup hierarchy (a symlink like cpu,cpuacct) or not a dir.
                Err(err) if err.raw_os_error() == Some(nix::libc::ENOTDIR) => {}
                Err(err) => eprintln!("warning: cannot remove cgroup {}: {err}", dir.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn stats_and_ratios() {
        assert_eq!(Stats::of(&[]), None);
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Stats::of(&samples).expect("samples");
        assert_eq!(
            (s.p50, s.p90, s.p95, s.p99, s.max),
            (50.0, 90.0, 95.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        let half = Stats::of(&[Duration::from_millis(25)]).expect("one sample");
        assert_eq!(ratio(&half, Some(&s)), "0.50×");
        assert_eq!(ratio(&half, None), "—");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn process_cpu_is_utime_plus_stime() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 \
                    9 0 1234 5678 90";
        assert_eq!(stat_cpu_ticks(stat), Some(320));
        assert_eq!(stat_cpu_ticks("42 (x) S 1"), None);
        assert!(process_cpu(std::process::id()).is_some());
    }

    #[test]
    fn steal_is_a_share_of_the_ticks_between_readings() {
        assert_eq!(steal_percent(Some((100, 10)), Some((200, 30))), Some(20.0));
        assert_eq!(steal_percent(Some((100, 10)), Some((100, 10))), None);
        assert_eq!(steal_percent(None, Some((1, 1))), None);
    }
}
