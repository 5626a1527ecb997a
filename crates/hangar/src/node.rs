//! This server as a node of its database: a heartbeat row that says where
//! it is, what it has and how many replicas it runs, kept fresh every third
//! of `node_dead_after` so that every server on the database can tell it is
//! alive (`GET /v1/nodes`), and marked stopped when it stops cleanly. A
//! stopped node's instance leases may be taken at once, so the stop is
//! recorded only once its controller no longer acts (the `shutdown` it is
//! given is the controller's).

use std::time::Duration;

use hangar_store::{NodeBeat, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What this machine has: its CPUs in millicores, its memory in bytes
/// (`MemTotal` of `/proc/meminfo`; 0 when it cannot be read).
fn capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| mem_total(&info))
        .unwrap_or(0);
    (cpus * 1000, memory)
}

/// `MemTotal:  16384 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Records this node's start, then beats every `dead_after / 3` until
/// `shutdown`, then records a clean stop. `replicas` counts what it runs;
/// `draining` is told, after every beat, whether an operator drains the
/// node. A heartbeat that fails is logged and tried again at the next beat.
pub async fn start(
    store: Store,
    id: String,
    address: String,
    dead_after: Duration,
    replicas: impl Fn() -> usize + Send + 'static,
    draining: impl Fn(bool) + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let (cpu_millis, memory_bytes) = capacity();
    let beat = move |replicas: usize| NodeBeat {
        id: id.clone(),
        address: address.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        cpu_millis,
        memory_bytes,
        replicas: replicas as u64,
    };
    let first = beat(replicas());
    let drained = store
        .node_heartbeat(&first, true)
        .await
        .map_err(|err| anyhow::anyhow!("recording this node in the database: {err}"))?;
    draining(drained);
    let every = (dead_after / 3).max(Duration::from_millis(100));
    Ok(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    match store.node_heartbeat(&beat(replicas()), false).await {
                        Ok(drained) => draining(drained),
                        Err(err) => {
                            tracing::warn!(error = %err, "node heartbeat failed; trying again at the next");
                        }
                    }
                }
            }
        }
        if let Err(err) = store.node_stopped(&first.id).await {
            tracing::warn!(error = %err, "could not record this node's stop");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_meminfo() {
        assert_eq!(
            mem_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16 << 20)
        );
        assert_eq!(mem_total("nothing here"), None);
        let (cpu, _) = capacity();
        assert!(cpu >= 1000);
    }
}
