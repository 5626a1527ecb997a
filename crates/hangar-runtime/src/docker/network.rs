//! The per-cloud bridge networks: one user-defined bridge per cloud, named
//! after the driver's owner and the cloud, made when a replica of the cloud
//! is created and removed when none is left.
//!
//! Isolation: a cloud is one organization's, and Docker keeps its networks
//! apart. Within a network, containers do not reach each other
//! (`enable_icc = false`: replicas of another agent of the organization no
//! more than their own), and the network's Linux bridge is named `hgd-…`,
//! so a packet filter of Hangar's own ([`host_guard`]) refuses everything
//! they open to the host (any of its addresses, any port) and everything
//! the host's other networks (sandboxes, the LAN) open to them. Hangar's
//! own connections to replicas start on the host and are not affected.
//!
//! Not here: joining a network (a container names it in its host config,
//! `container`) or reading a replica's address on it.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListContainersOptions;

use super::{engine_message, failed, status_of, DockerDriver, NETWORK_LABEL, OWNER_LABEL};
use crate::driver::{labels, DriverError, ReplicaSpec};

impl DockerDriver {
    pub(super) fn network_name(&self, spec: &ReplicaSpec) -> String {
        let cloud: String = spec
            .labels
            .get(labels::CLOUD)
            .map(String::as_str)
            .unwrap_or("default")
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
                _ => '-',
            })
            .take(64)
            .collect();
        format!("hangar-{}-{cloud}", self.owner)
    }

    /// Makes `name` unless it exists. Call with [`Self::networks`] held.
    pub(super) async fn ensure_network(&self, name: &str) -> Result<(), DriverError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(failed("inspecting a network", err)),
        }
        tokio::task::spawn_blocking(|| host_guard(true))
            .await
            .map_err(|err| {
                DriverError::Failed(format!("the packet filter's update panicked: {err}"))
            })?
            .map_err(DriverError::Failed)?;
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([
                (
                    "com.docker.network.bridge.name".to_owned(),
                    bridge_name(name),
                ),
                (
                    "com.docker.network.bridge.enable_icc".to_owned(),
                    "false".to_owned(),
                ),
            ])),
            labels: Some(HashMap::from([(
                OWNER_LABEL.to_owned(),
                self.owner.clone(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(err) if status_of(&err) == Some(409) => Ok(()),
            Err(err) => Err(failed(&format!("creating network {name}"), err)),
        }
    }

    /// Removes `name` if no replica of this driver's is made for it any
    /// more. Containers are counted by their network label, in any state:
    /// the network's own list has only started ones, and a replica created
    /// a moment ago (under [`Self::networks`]) is started after the lock is
    /// let go.
    pub(super) async fn release_network(&self, name: &str) {
        let _turn = self.networks.lock().await;
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.owned(Some(format!("{NETWORK_LABEL}={name}")))),
            ..Default::default()
        };
        match self.docker.list_containers(Some(options)).await {
            Ok(containers) if containers.is_empty() => {}
            Ok(_) => return,
            Err(err) => {
                tracing::debug!(network = name, error = %engine_message(&err), "network kept: cannot list its replicas");
                return;
            }
        }
        if let Err(err) = self.docker.remove_network(name).await {
            tracing::debug!(network = name, error = %engine_message(&err), "network not removed");
        }
        // The guard goes with the last guarded bridge on the host.
        match tokio::task::spawn_blocking(|| host_guard(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "the docker networks' packet filter is not updated");
            }
            Err(err) => {
                tracing::warn!(error = %err, "the docker networks' packet filter update panicked")
            }
        }
    }
}

/// The Linux bridge of network `name`: `hgd-` and 11 hex digits of its
/// name's hash (a bridge name has at most 15 bytes).
fn bridge_name(name: &str) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(name.as_bytes());
    format!("hgd-{}", &hex::encode(hash)[..11])
}

/// The table guarding every `hgd-*` bridge on the host.
const GUARD_TABLE: &str = "hangar_docker";

/// Makes sure the guard is in place while any `hgd-*` bridge exists (or
/// `one_coming`: a network is about to be made), and gone otherwise. The
/// table is the same whichever server writes it, so servers sharing a host
/// share it. Needs root and `nft`.
pub(crate) fn host_guard(one_coming: bool) -> Result<(), String> {
    let bridges = std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with("hgd-"))
        })
        .unwrap_or(false);
    let mut script = format!("table inet {GUARD_TABLE}\ndelete table inet {GUARD_TABLE}\n");
    if bridges || one_coming {
        script.push_str(&format!(
            "table inet {GUARD_TABLE} {{
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname \"hgd-*\" ct state established,related accept
    iifname \"hgd-*\" meta l4proto tcp reject with tcp reset
    iifname \"hgd-*\" reject with icmpx admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    oifname \"hgd-*\" iifname != \"hgd-*\" ct state new reject with icmpx admin-prohibited
  }}
}}
"
        ));
    }
    crate::nft::run(&script).map_err(|err| format!("the docker networks' packet filter: {err}"))
}
