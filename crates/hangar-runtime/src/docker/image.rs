//! Images made ahead of time for the builder: building one from a context
//! directory under a build step's limits ([`BuildLimits`]), pulling one from
//! a registry and tagging it as the build's image.
//!
//! Not here: choosing the image a replica runs, or the user it runs as
//! (`container`); the builder decides which image to make and when.

use std::path::Path;

use bollard::query_parameters::{BuildImageOptions, CreateImageOptions, TagImageOptions};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{failed, DockerDriver};
use crate::driver::DriverError;

/// What the containers of an image build's steps may use: the limits of a
/// sandboxed build step. The engine's classic builder applies them to each
/// `RUN`; there is no process limit for builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Memory, with no swap on top, in bytes.
    pub memory_bytes: u64,
    /// CPU weight, millicores.
    pub cpu_millis: u64,
    /// CPU hard limit, millicores.
    pub cpu_limit_millis: Option<u64>,
}

/// The CFS period of CPU limits, µs.
const CFS_PERIOD_US: i32 = 100_000;

impl BuildLimits {
    /// The memory limit as the build API carries it (a 32-bit number of
    /// bytes in the client's types): a limit from 2 GiB up is not sent,
    /// and the step runs with the engine's memory.
    fn memory(&self) -> Option<i32> {
        i32::try_from(self.memory_bytes).ok()
    }

    /// CPU shares: 1024 a core, at least the kernel's 2.
    fn cpu_shares(&self) -> i32 {
        i32::try_from(self.cpu_millis.saturating_mul(1024) / 1000)
            .unwrap_or(i32::MAX)
            .max(2)
    }

    /// The CFS quota per [`CFS_PERIOD_US`], from the CPU limit.
    fn cpu_quota(&self) -> Option<i32> {
        let millis = self.cpu_limit_millis?;
        Some(
            i32::try_from(millis.saturating_mul(100))
                .unwrap_or(i32::MAX)
                .max(1000),
        )
    }
}

impl DockerDriver {
    /// Builds `tag` from the directory `context` (symlinks kept as links):
    /// with `dockerfile` `None` its own `Dockerfile`, else that text, its
    /// steps' containers held to `limits`. Each line the build prints goes
    /// to `log` as it comes; a failed step is the error, with the engine's
    /// message.
    pub async fn build_image(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        limits: BuildLimits,
        log: mpsc::Sender<String>,
    ) -> Result<(), DriverError> {
        const GENERATED: &str = ".hangar.Dockerfile";
        let dir = context.to_path_buf();
        let text = dockerfile.map(str::to_owned);
        let archive = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut tar = tar::Builder::new(Vec::new());
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &dir)?;
            if let Some(text) = text {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, GENERATED, text.as_bytes())?;
            }
            tar.into_inner()
        })
        .await
        .map_err(|err| DriverError::Failed(format!("packing the build context: {err}")))?
        .map_err(|err| DriverError::Failed(format!("packing the build context: {err}")))?;
        let options = BuildImageOptions {
            dockerfile: if dockerfile.is_some() {
                GENERATED.to_owned()
            } else {
                "Dockerfile".to_owned()
            },
            t: Some(tag.to_owned()),
            rm: true,
            forcerm: true,
            memory: limits.memory(),
            memswap: limits.memory(),
            cpushares: Some(limits.cpu_shares()),
            cpuperiod: limits.cpu_quota().map(|_| CFS_PERIOD_US),
            cpuquota: limits.cpu_quota(),
            ..Default::default()
        };
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(bytes::Bytes::from(archive))),
        );
        let mut partial = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|err| failed("building the image", err))?;
            if let Some(detail) = info.error_detail {
                let message = detail
                    .message
                    .unwrap_or_else(|| "the build failed".to_owned());
                let _ = log.send(message.clone()).await;
                return Err(DriverError::Failed(message));
            }
            if let Some(text) = info.stream {
                partial.push_str(&text);
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    let line = line.trim_end();
                    if !line.is_empty() {
                        let _ = log.send(line.to_owned()).await;
                    }
                }
            }
        }
        if !partial.trim().is_empty() {
            let _ = log.send(partial.trim_end().to_owned()).await;
        }
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(()),
            Err(err) => Err(failed("the build made no image", err)),
        }
    }

    /// Pulls `reference` (with `credentials`: user name and password) and
    /// tags it `tag`. Each change of a layer's status goes to `log`.
    pub async fn pull_image(
        &self,
        reference: &str,
        credentials: Option<(String, String)>,
        tag: &str,
        log: mpsc::Sender<String>,
    ) -> Result<(), DriverError> {
        let credentials =
            credentials.map(|(username, password)| bollard::auth::DockerCredentials {
                username: Some(username),
                password: Some(password),
                ..Default::default()
            });
        let options = CreateImageOptions {
            from_image: Some(reference.to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|err| failed(&format!("pulling {reference}"), err))?;
            if let Some(detail) = info.error_detail {
                return Err(DriverError::Failed(format!(
                    "pulling {reference}: {}",
                    detail.message.unwrap_or_default()
                )));
            }
            // Progress ticks carry a detail; only the changes of status are lines.
            let ticking = info
                .progress_detail
                .as_ref()
                .is_some_and(|d| d.current.is_some());
            if let (Some(status), false) = (info.status, ticking) {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                let _ = log.send(line).await;
            }
        }
        let (repo, version) = match tag.rsplit_once(':') {
            Some((repo, version)) if !version.contains('/') => (repo, version),
            _ => (tag, "latest"),
        };
        let options = TagImageOptions {
            repo: Some(repo.to_owned()),
            tag: Some(version.to_owned()),
        };
        self.docker
            .tag_image(reference, Some(options))
            .await
            .map_err(|err| failed(&format!("tagging {reference} as {tag}"), err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_limits_as_the_build_api_takes_them() {
        let limits = BuildLimits {
            memory_bytes: 512 << 20,
            cpu_millis: 250,
            cpu_limit_millis: Some(1500),
        };
        assert_eq!(limits.memory(), Some(512 << 20));
        assert_eq!(limits.cpu_shares(), 256);
        assert_eq!(limits.cpu_quota(), Some(150_000));
        let big = BuildLimits {
            memory_bytes: 4 << 30,
            cpu_millis: 1,
            cpu_limit_millis: None,
        };
        assert_eq!(big.memory(), None, "not sent: the field is 32 bits");
        assert_eq!(big.cpu_shares(), 2);
        assert_eq!(big.cpu_quota(), None);
    }
}
