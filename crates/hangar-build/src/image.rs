//! `docker` sources: an OCI image pulled from its registry and unpacked as
//! the root filesystem its replicas run in.
//!
//! Why it is a builder of its own rather than a [`crate::source`] kind: an
//! image is already built. There is no build step and no tree to hash; the
//! image manifest's digest *is* the content address, so the builder asks
//! the registry for the manifest first and pulls layers only when no
//! artifact of that digest exists yet.
//!
//! 1. **Resolve** ([`resolve`]): the reference's manifest through
//!    `oci-client` (an image index resolves to its linux/amd64 manifest),
//!    and the image config blob, digests verified by the crate. Registries
//!    on loopback (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`) are
//!    spoken to over plain HTTP, all others over HTTPS. Credentials are
//!    HTTP basic (or exchanged for a bearer token where the registry asks),
//!    their `${secrets.NAME}` resolved by the builder and masked in every
//!    message.
//! 2. **Pull** ([`pull_layers`]): each layer blob to a file in the build's
//!    scratch dir, its digest verified as it streams.
//! 3. **Unpack** ([`crate::archive::unpack_layers`]): the layers in order,
//!    whiteouts honoured, nothing written outside the root; then
//!    [`finish_rootfs`] makes sure the sandbox's mount points (`/proc`,
//!    `/dev`, `/tmp`) are plain directories, so no mount can be steered
//!    through a symlink of the image, and creates the working directory.
//! 4. **Publish**: `artifacts/oci-<digest>/` holds `rootfs/` and
//!    `image.json` ([`hangar_core::image::ImageRun`]: entrypoint, cmd, env,
//!    working dir, user, exposed port), which the controller turns into
//!    the replica's command, environment and user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_core::image::{ImageRun, IMAGE_CONFIG_FILE, ROOTFS_DIR};
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{self, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::error::BuildError;

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a registry may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The layer media types this builder unpacks (gzip or plain tar).
const LAYER_TYPES: [&str; 4] = [
    manifest::IMAGE_LAYER_MEDIA_TYPE,
    manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
    manifest::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
];

/// Registry credentials, `${secrets.NAME}` already resolved.
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"****")
            .finish()
    }
}

/// Where an image comes from and how to reach it.
#[derive(Debug, Clone)]
pub struct Pull<'a> {
    /// The image reference as the source gives it.
    pub image: &'a str,
    /// Credentials, if the source has any.
    pub credentials: Option<Credentials>,
    /// Secret values to mask wherever a message could show them.
    pub masked: &'a [String],
    /// More registries (`host:port`) spoken to over plain HTTP, beside the
    /// loopback ones.
    pub insecure_registries: &'a [String],
}

/// An image's manifest, resolved: what to pull and how it runs.
pub struct Resolved {
    pub(crate) client: Client,
    pub(crate) reference: Reference,
    pub(crate) auth: RegistryAuth,
    /// Its layers, lowest first.
    pub layers: Vec<OciDescriptor>,
    /// How it runs, from its config.
    pub run: ImageRun,
    /// The manifest itself (for an image built on top of this one).
    pub manifest: manifest::OciImageManifest,
    /// The image configuration blob as the registry holds it.
    pub config: String,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("reference", &self.reference)
            .field("layers", &self.layers)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// The `config` part of an OCI image configuration (the Docker spelling
/// of its keys, which OCI kept).
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// Whether `registry` (`host[:port]`) is on this machine's loopback.
#[must_use]
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `text` with every secret value in `masked` replaced by `****`.
pub(crate) fn mask(text: &str, masked: &[String]) -> String {
    masked
        .iter()
        .filter(|value| !value.is_empty())
        .fold(text.to_owned(), |text, value| {
            text.replace(value.as_str(), "****")
        })
}

/// A registry failure as the build's reason says it.
fn pull_error(pull: &Pull<'_>, what: &str, err: &OciDistributionError) -> BuildError {
    let registry = pull
        .image
        .parse::<Reference>()
        .map(|r| r.resolve_registry().to_owned())
        .unwrap_or_default();
    BuildError::Image(mask(
        &format!(
            "cannot {what} image {}: {}",
            pull.image,
            registry_why(&registry, err)
        ),
        pull.masked,
    ))
}

/// Why talking to the registry at `registry` failed, in words a user can
/// act on: the HTTP client's own text (addresses, OS error numbers, TLS
/// library messages) is logged for the operator, never put in a reason.
pub(crate) fn registry_why(registry: &str, err: &OciDistributionError) -> String {
    let denied = |codes: &[OciErrorCode]| match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| codes.contains(&e.code))
        }
        _ => false,
    };
    if denied(&[OciErrorCode::ManifestUnknown, OciErrorCode::NameUnknown])
        || matches!(err, OciDistributionError::ServerError { code: 404, .. })
    {
        return "not found in its registry (no such repository or tag)".to_owned();
    }
    if denied(&[OciErrorCode::Unauthorized, OciErrorCode::Denied])
        || matches!(
            err,
            OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)
                | OciDistributionError::ServerError {
                    code: 401 | 403,
                    ..
                }
        )
    {
        return format!(
            "the registry {registry} refused the credentials (check the user name and the password's secret)"
        );
    }
    let chain = error_chain(err);
    tracing::warn!(registry, error = %chain, "registry request failed");
    match err {
        OciDistributionError::RequestError(request) => {
            let lower = chain.to_ascii_lowercase();
            if ["certificate", "tls", "ssl", "handshake"]
                .iter()
                .any(|word| lower.contains(word))
            {
                format!("the registry {registry} could not be spoken to over HTTPS (a registry on plain HTTP needs the cloud's insecure_registry, or the server's list of insecure registries)")
            } else if request.is_timeout() {
                format!("the registry {registry} did not answer in time")
            } else if request.is_connect() {
                format!("cannot connect to the registry {registry} (is it running and reachable from this server?)")
            } else {
                format!("the connection to the registry {registry} failed")
            }
        }
        OciDistributionError::ServerError { code: 405, .. } => {
            format!(
                "the registry {registry} takes no pushes (HTTP 405: is it read-only, or a mirror?)"
            )
        }
        OciDistributionError::ServerError { code, .. } => {
            format!("the registry {registry} answered HTTP {code}")
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            format!("the registry {registry} refused: {}", codes.join("; "))
        }
        other => chain_or(other, &chain),
    }
}

/// The error's own words for failures that are not transport text
/// (digests, manifests, media types).
fn chain_or(err: &OciDistributionError, chain: &str) -> String {
    match err {
        OciDistributionError::IoError(_) => "reading or writing a blob failed".to_owned(),
        _ => chain.to_owned(),
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A registry client for `registry` (`host[:port]`): plain HTTP when it
/// is on loopback or among `insecure`, else HTTPS; an image index resolves
/// to its linux/amd64 manifest.
#[must_use]
pub fn client(registry: &str, insecure: &[String]) -> Client {
    let mut insecure = insecure.to_vec();
    if is_loopback(registry) {
        insecure.push(registry.to_owned());
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure),
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    })
}

/// Resolves `pull.image` to its linux/amd64 manifest and config (see the
/// module docs). Returns the manifest's digest too: the artifact's address.
pub async fn resolve(pull: &Pull<'_>) -> Result<(Resolved, String), BuildError> {
    let reference: Reference = pull.image.parse().map_err(|err| {
        BuildError::Image(format!("{} is not an image reference: {err}", pull.image))
    })?;
    let client = client(reference.resolve_registry(), pull.insecure_registries);
    let auth = match &pull.credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&reference, &auth)
        .await
        .map_err(|err| pull_error(pull, "pull", &err))?;
    let parsed: ConfigFile = serde_json::from_str(&config).map_err(|err| {
        BuildError::Image(format!(
            "image {}: its config is not an image configuration: {err}",
            pull.image
        ))
    })?;
    let settings = parsed.config.unwrap_or_default();
    let tcp_ports: Vec<u16> = settings
        .exposed_ports
        .unwrap_or_default()
        .keys()
        .filter_map(|port| {
            let (number, protocol) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
            (protocol == "tcp").then(|| number.parse().ok()).flatten()
        })
        .collect();
    let run = ImageRun {
        image: pull.image.to_owned(),
        digest: digest.clone(),
        entrypoint: settings.entrypoint.unwrap_or_default(),
        cmd: settings.cmd.unwrap_or_default(),
        env: settings.env.unwrap_or_default(),
        working_dir: settings.working_dir.unwrap_or_default(),
        user: settings.user.unwrap_or_default(),
        exposed_port: match tcp_ports[..] {
            [port] => Some(port),
            _ => None,
        },
    };
    Ok((
        Resolved {
            client,
            reference,
            auth,
            layers: manifest.layers.clone(),
            run,
            manifest,
            config,
        },
        digest,
    ))
}

/// Fails when `resolved` names nothing to run (no `Entrypoint`, no `Cmd`):
/// checked for an image replicas run as it is, not for a base image that
/// a built image's entrypoint goes on.
pub fn check_runnable(pull: &Pull<'_>, resolved: &Resolved) -> Result<(), BuildError> {
    if resolved.run.argv().is_empty() {
        return Err(BuildError::Image(format!(
            "image {} names nothing to run: its config has no Entrypoint and no Cmd",
            pull.image
        )));
    }
    Ok(())
}

/// Fails unless every layer of `resolved` is one this builder unpacks
/// (gzip or plain tar): checked before pulling an image to run it from
/// its root filesystem, not for an image a cluster pulls itself.
pub fn check_unpackable(pull: &Pull<'_>, resolved: &Resolved) -> Result<(), BuildError> {
    match resolved
        .layers
        .iter()
        .find(|layer| !LAYER_TYPES.contains(&layer.media_type.as_str()))
    {
        Some(layer) => Err(BuildError::Image(format!(
            "image {}: layer {} is {}, which this builder does not unpack (gzip or plain tar layers only)",
            pull.image, layer.digest, layer.media_type
        ))),
        None => Ok(()),
    }
}

/// Pulls every layer of `resolved` into `dir` (one file each, in order),
/// each blob's digest verified as it streams in; stops at a layer larger
/// than `max_bytes`. Returns the files, lowest layer first.
pub async fn pull_layers(
    pull: &Pull<'_>,
    resolved: &Resolved,
    dir: &Path,
    max_bytes: u64,
) -> Result<Vec<PathBuf>, BuildError> {
    let io = |path: &Path, err: std::io::Error| BuildError::Io {
        path: path.display().to_string(),
        source: err,
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|err| io(dir, err))?;
    let mut files = Vec::with_capacity(resolved.layers.len());
    for (index, layer) in resolved.layers.iter().enumerate() {
        if u64::try_from(layer.size).unwrap_or(u64::MAX) > max_bytes {
            return Err(BuildError::Image(format!(
                "image {}: layer {} is {} bytes, more than the {max_bytes} an image may have",
                pull.image, layer.digest, layer.size
            )));
        }
        let path = dir.join(format!("layer-{index}"));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|err| io(&path, err))?;
        resolved
            .client
            .store_auth_if_needed(resolved.reference.resolve_registry(), &resolved.auth)
            .await;
        resolved
            .client
            .pull_blob(&resolved.reference, layer, file)
            .await
            .map_err(|err| pull_error(pull, &format!("pull layer {} of", layer.digest), &err))?;
        files.push(path);
    }
    Ok(files)
}

/// Makes the unpacked `rootfs` ready to be a sandbox's root: `/proc`,
/// `/dev` and `/tmp` plain directories (whatever the image had there is
/// replaced: the sandbox mounts its own), and the working directory of
/// `run` present unless it lies beyond a symlink (where it is the image's
/// business). Blocking.
pub fn finish_rootfs(rootfs: &Path, run: &ImageRun) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path, err: std::io::Error| BuildError::Io {
        path: path.display().to_string(),
        source: err,
    };
    std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(|err| io(rootfs, err))?;
    for (name, mode) in [("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777)] {
        let path = rootfs.join(name);
        match path.symlink_metadata() {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() || meta.is_file() => {
                std::fs::remove_file(&path).map_err(|err| io(&path, err))?;
            }
            Ok(_) => {
                return Err(BuildError::SpecialFile {
                    path: format!("/{name}"),
                })
            }
            Err(_) => {}
        }
        std::fs::create_dir(&path).map_err(|err| io(&path, err))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|err| io(&path, err))?;
    }
    let mut dir = rootfs.to_path_buf();
    for part in Path::new(&run.cwd()).components() {
        let std::path::Component::Normal(part) = part else {
            continue;
        };
        dir.push(part);
        match dir.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {}
            // Beyond a symlink or a file: left to the image.
            Ok(_) => return Ok(()),
            Err(_) => {
                std::fs::create_dir(&dir).map_err(|err| io(&dir, err))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|err| io(&dir, err))?;
            }
        }
    }
    Ok(())
}

/// Writes `run` as the artifact's `image.json` beside `rootfs/` in `dir`.
pub fn write_run(dir: &Path, run: &ImageRun) -> Result<(), BuildError> {
    let path = dir.join(IMAGE_CONFIG_FILE);
    let text = serde_json::to_vec_pretty(run)
        .map_err(|err| BuildError::Crashed(format!("cannot write {IMAGE_CONFIG_FILE}: {err}")))?;
    std::fs::write(&path, text).map_err(|err| BuildError::Io {
        path: path.display().to_string(),
        source: err,
    })
}

/// Where an image artifact being assembled keeps its root filesystem.
#[must_use]
pub fn rootfs_dir(artifact: &Path) -> PathBuf {
    artifact.join(ROOTFS_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_told_apart() {
        for local in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "registry.example.com",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com:80",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask(
                "user bob:hunter2 failed",
                &["hunter2".to_owned(), String::new()]
            ),
            "user bob:**** failed"
        );
    }

    #[test]
    fn credentials_never_debug_print_the_password() {
        let c = Credentials {
            username: "bob".to_owned(),
            password: "hunter2".to_owned(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
