//! Resource usage of a running sandbox: [`super::Sandbox::stats`].
//!
//! Read from the sandbox's cgroup in whichever hierarchy has the controller
//! (cgroup v1 files first, then v2, so hybrid hosts work) and from the
//! network namespace of its init process (`/proc/<pid>/net/dev`, which the
//! host reads in the namespace of that pid).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::cleanup::cgroup_roots;

/// Counters of one sandbox, read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SandboxStats {
    /// CPU time of all its processes so far, in ns.
    pub cpu_ns: u64,
    /// Memory in use, without the inactive (reclaimable) file cache, in bytes.
    pub memory_bytes: u64,
    /// Bytes received on interfaces other than `lo`.
    pub rx_bytes: u64,
    /// Bytes sent on interfaces other than `lo`.
    pub tx_bytes: u64,
    /// Tasks (processes and threads) in its cgroup.
    pub pids: u64,
}

/// Reads the counters of the cgroup at `cgroup` (relative to each
/// hierarchy's root) and of `pid`'s network namespace. Counters that cannot
/// be read are 0.
pub(super) fn read(cgroup: &Path, pid: i32) -> io::Result<SandboxStats> {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let dirs: Vec<PathBuf> = cgroup_roots()?
        .into_iter()
        .map(|root| root.join(relative))
        .collect();
    let first = |file: &str| {
        dirs.iter()
            .find_map(|dir| fs::read_to_string(dir.join(file)).ok())
    };

    let cpu_ns = first("cpuacct.usage")
        .and_then(|text| text.trim().parse().ok())
        .or_else(|| {
            first("cpu.stat")
                .and_then(|text| keyed(&text, "usage_usec"))
                .map(|usec| usec.saturating_mul(1000))
        })
        .unwrap_or(0);
    let memory_bytes = match first("memory.usage_in_bytes") {
        Some(usage) => {
            let usage: u64 = usage.trim().parse().unwrap_or(0);
            let inactive = first("memory.stat")
                .and_then(|text| keyed(&text, "total_inactive_file"))
                .unwrap_or(0);
            usage.saturating_sub(inactive)
        }
        None => {
            let current: u64 = first("memory.current")
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0);
            let inactive = first("memory.stat")
                .and_then(|text| keyed(&text, "inactive_file"))
                .unwrap_or(0);
            current.saturating_sub(inactive)
        }
    };
    let pids = first("pids.current")
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let (rx_bytes, tx_bytes) = fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|text| net_dev(&text))
        .unwrap_or((0, 0));
    Ok(SandboxStats {
        cpu_ns,
        memory_bytes,
        rx_bytes,
        tx_bytes,
        pids,
    })
}

/// The value of the `key value` line of a cgroup stat file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Received and sent bytes over the interfaces of a `/proc/net/dev` table,
/// loopback excluded.
fn net_dev(text: &str) -> (u64, u64) {
    let mut totals = (0_u64, 0_u64);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        if fields.len() >= 9 {
            totals.0 = totals.0.saturating_add(fields[0]);
            totals.1 = totals.1.saturating_add(fields[8]);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
 eth0:    2000      10    0    0    0     0          0         0      3000      12    0    0    0     0       0          0\n";
        assert_eq!(net_dev(text), (2000, 3000));
    }

    #[test]
    fn keyed_reads_one_line() {
        let text = "cache 10\nrss 20\ntotal_inactive_file 5\n";
        assert_eq!(keyed(text, "rss"), Some(20));
        assert_eq!(keyed(text, "total_inactive_file"), Some(5));
        assert_eq!(keyed(text, "missing"), None);
    }
}
