//! The per-cloud bridge networks: one user-defined bridge per cloud, named
//! after the driver's owner and the cloud, made when a replica of the cloud
//! is created and removed when none is left.
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
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
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
    }
}
