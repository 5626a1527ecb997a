//! A replica as the engine sees it, both ways: a [`ReplicaSpec`] becomes a
//! container's create body (image, user, limits, labels, mounts), and an
//! inspected container becomes a [`ReplicaInfo`] (its address on the
//! cloud's network, its exit as Hangar reads it).
//!
//! Not here: starting, stopping or removing containers (the [`Driver`]
//! verbs in the parent module) and the network a replica joins (`network`),
//! though creating a container holds the network lock the way `network`
//! asks for.
//!
//! [`Driver`]: crate::driver::Driver

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use bollard::query_parameters::CreateContainerOptions;

use super::{
    engine_message, failed, parse_time_ms, status_of, DockerDriver, INTERNAL_PREFIX, NETWORK_LABEL,
    OWNER_LABEL, PORT_LABEL, STDIN_LABEL,
};
use crate::driver::{now_ms, DriverError, Exit, ReplicaInfo, ReplicaSpec};

/// The user a replica runs as when neither spec nor image names another.
const NOBODY: &str = "65534:65534";

impl DockerDriver {
    pub(super) async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        let name = self.container_name(id)?;
        match self.docker.inspect_container(&name, None).await {
            Ok(found)
                if found
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(OWNER_LABEL))
                    == Some(&self.owner) =>
            {
                Ok(Some(found))
            }
            Ok(_) => Ok(None),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(failed("inspecting a container", err)),
        }
    }

    pub(super) async fn info(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        let found = self
            .inspect_container(id)
            .await?
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
        Ok(self.replica_info(id, &found))
    }

    fn replica_info(&self, id: &str, found: &ContainerInspectResponse) -> ReplicaInfo {
        let all_labels = found
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let state = found.state.clone().unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let exit = (!running).then(|| {
            let at_ms = state
                .finished_at
                .as_deref()
                .and_then(parse_time_ms)
                .unwrap_or_else(now_ms);
            Exit::from_status(
                state.exit_code.unwrap_or(-1),
                state.oom_killed.unwrap_or(false),
                at_ms,
            )
        });
        let port = all_labels
            .get(PORT_LABEL)
            .and_then(|p| p.parse::<u16>().ok());
        let ip = all_labels.get(NETWORK_LABEL).and_then(|network| {
            found
                .network_settings
                .as_ref()?
                .networks
                .as_ref()?
                .get(network)?
                .ip_address
                .as_deref()?
                .parse::<std::net::IpAddr>()
                .ok()
        });
        let address = match (ip, port, running) {
            (Some(ip), Some(port), true) => Some(std::net::SocketAddr::new(ip, port)),
            _ => None,
        };
        ReplicaInfo {
            id: id.to_owned(),
            labels: all_labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with(INTERNAL_PREFIX))
                .collect(),
            address,
            pid: u32::try_from(state.pid.unwrap_or(0)).unwrap_or(0),
            started_at_ms: state
                .started_at
                .as_deref()
                .and_then(parse_time_ms)
                .unwrap_or(0),
            exit,
            output_seq: 0,
        }
    }

    /// Who a replica of `image` runs as (see the module docs).
    async fn user_for(&self, spec: &ReplicaSpec, image: &str) -> Result<String, DriverError> {
        if let Some(user) = spec.user {
            return Ok(format!("{}:{}", user.uid, user.gid));
        }
        let inspected = match self.docker.inspect_image(image).await {
            Ok(inspected) => inspected,
            Err(err) if status_of(&err) == Some(404) => {
                return Err(DriverError::Invalid(format!(
                    "the image {image} is not on the Docker engine (build or pull it first)"
                )))
            }
            Err(err) => return Err(failed("inspecting an image", err)),
        };
        let user = inspected
            .config
            .and_then(|c| c.user)
            .unwrap_or_default()
            .trim()
            .to_owned();
        let name = user.split(':').next().unwrap_or_default();
        Ok(if name.is_empty() || name == "0" || name == "root" {
            NOBODY.to_owned()
        } else {
            user
        })
    }

    pub(super) async fn create_container(&self, spec: &ReplicaSpec) -> Result<String, DriverError> {
        let name = self.container_name(&spec.id)?;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.default_image.clone());
        let user = self.user_for(spec, &image).await?;
        let network = self.network_name(spec);
        let mut container_labels: HashMap<String, String> = spec
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with(INTERNAL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        container_labels.insert(OWNER_LABEL.to_owned(), self.owner.clone());
        container_labels.insert(NETWORK_LABEL.to_owned(), network.clone());
        container_labels.insert(STDIN_LABEL.to_owned(), spec.stdin.to_string());
        if let Some(port) = spec.port {
            container_labels.insert(PORT_LABEL.to_owned(), port.to_string());
        }
        let binds = spec.app.as_ref().map(|app| {
            let mode = if spec.app_writable { "rw" } else { "ro" };
            vec![format!("{}:/app:{mode}", app.display())]
        });
        let shares = i64::try_from(spec.cpu_millis.saturating_mul(1024) / 1000)
            .unwrap_or(i64::MAX)
            .max(2);
        let memory = spec
            .memory_limit_bytes
            .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
        let host_config = HostConfig {
            cpu_shares: Some(shares),
            nano_cpus: spec
                .cpu_limit_millis
                .map(|millis| i64::try_from(millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
            memory,
            // The same as the memory limit: no swap on top.
            memory_swap: memory,
            pids_limit: Some(spec.pids_limit),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,mode=1777".to_owned(),
            )])),
            binds,
            network_mode: Some(network.clone()),
            // The engine's init (tini) as PID 1, as the sandbox has its own:
            // the agent hears SIGTERM (PID 1 ignores signals it has no
            // handler for), orphans are reaped, and the exit is the agent's.
            init: Some(true),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
            // A given command replaces the image's entrypoint too.
            entrypoint: (!spec.argv.is_empty()).then(|| vec![String::new()]),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: (!spec.cwd.is_empty()).then(|| spec.cwd.clone()),
            user: Some(user),
            labels: Some(container_labels),
            open_stdin: Some(spec.stdin),
            attach_stdin: Some(spec.stdin),
            stdin_once: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let _turn = self.networks.lock().await;
        self.ensure_network(&network).await?;
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(name),
            Err(err) if status_of(&err) == Some(409) => Err(DriverError::Invalid(format!(
                "replica {} already exists",
                spec.id
            ))),
            Err(err) if status_of(&err) == Some(404) => Err(DriverError::Invalid(format!(
                "docker: {}",
                engine_message(&err)
            ))),
            Err(err) => Err(failed("creating the container", err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_over_128_are_signals() {
        let killed = Exit::from_status(137, false, 5);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        let crashed = Exit::from_status(3, false, 5);
        assert_eq!((crashed.code, crashed.signal), (Some(3), None));
        assert_eq!(Exit::from_status(255, false, 5).code, Some(255));
        assert_eq!(parse_time_ms("0001-01-01T00:00:00Z"), None);
    }
}
