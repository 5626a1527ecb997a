//! Builds for kubernetes clouds: the artifact is an image in a registry the
//! cluster pulls from, named by its manifest digest, made and pushed here
//! without a Docker engine. What the controller gets is an image artifact
//! (`artifacts/oci-<digest>/`) holding only `image.json`
//! ([`hangar_core::image::ImageRun`]): no root filesystem, since the kubelet
//! pulls the layers, not this server; replicas run
//! [`hangar_core::kubernetes::pinned_reference`] of it.
//!
//! * A `docker` source is resolved, not pulled: its manifest digest and its
//!   config (entrypoint, cmd, env, working dir, user, port) through
//!   [`crate::image::resolve`], with the source's credentials. Its layers
//!   stay in the registry.
//! * An `upload` or `github` source is fetched as for a sandbox, then
//!   built on the cloud's base image for the agent's runtime
//!   (`base_image.python` / `.node`, required): the base is pulled as an
//!   image artifact with its root filesystem (as a sandbox cloud's `docker`
//!   source is),
//!   the build step runs in a sandbox whose root is that filesystem, the
//!   tree writable at `/app`; the tree becomes one new layer over the base's
//!   ([`crate::layer`]), with the agent contract's command as entrypoint.
//!   The image goes to `<registry>/<agent id>:<key>`, the key hashing the
//!   base's digest, the tree and the build step, so an unchanged source on
//!   an unchanged base names an image the registry has already: then
//!   nothing is built or pushed, and the log says the image was reused.
//!   The base's layers reach the agent's repository by a cross-repository
//!   mount when they live in the same registry, else by copy; a blob the
//!   repository has is never sent again.
//!
//! The cloud's registry takes its `registry_credentials` (the password a
//! `${secrets.NAME}`, resolved here and masked in every message), and is
//! spoken to over plain HTTP when the cloud says `insecure_registry` (or
//! it is on loopback). Failures say what to do: a missing setting names
//! it, a registry that cannot be reached or refuses says so, never with
//! the HTTP client's own text.

use std::path::{Path, PathBuf};

use hangar_core::contract::{self, TreeFiles};
use hangar_core::image::{artifact_name, ImageRun};
use hangar_core::kubernetes::KubernetesCloudConfig;
use hangar_core::model::Build;
use hangar_core::spec::{RegistryCredentials, Source};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::BuildError;
use crate::image::{self, Credentials, Pull};
use crate::layer;
use crate::recipe;
use crate::source::{Artifact, Fetched};
use crate::{artifact, blocking, path_text, Builder, StepRoot, STEP_TMP};

/// How much of a blob is read and sent at once.
const PUSH_PIECE: usize = 8 << 20;

/// Bumped whenever the same tree on the same base would make another image.
const IMAGE_LAYOUT: &str = "hangar-kubernetes-image 1";

/// What a build for a kubernetes cloud needs to know of its cloud and agent.
#[derive(Debug, Clone)]
pub struct KubernetesCloud {
    /// The cloud's name, for messages.
    pub name: String,
    /// Its settings.
    pub config: KubernetesCloudConfig,
    /// The agent's `runtime.language`, for the base image.
    pub language: Option<String>,
}

/// The repository and tag a built image is pushed as: the agent's id
/// (lowercase, as repositories must be) under the cloud's registry, and
/// the content key.
#[must_use]
pub fn image_reference(registry: &str, agent_id: &str, key: &str) -> String {
    format!(
        "{}/{}:{key}",
        registry.trim_end_matches('/'),
        agent_id.to_ascii_lowercase()
    )
}

/// The content key of an image of `tree_key` (the tree and its build step,
/// [`artifact::key`]) on the base image whose manifest is `base_digest`.
#[must_use]
pub fn content_key(base_digest: &str, tree_key: &str) -> String {
    let mut hash = Sha256::new();
    for part in [IMAGE_LAYOUT, base_digest, tree_key] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}

/// A tree's files for the agent contract, read from a directory.
struct DirTree<'a>(&'a Path);

impl TreeFiles for DirTree<'_> {
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        let path = self.0.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|err| format!("cannot read {name}: {err}"))
    }

    fn is_file(&self, name: &str) -> bool {
        self.0.join(name).is_file()
    }

    fn exists(&self, name: &str) -> bool {
        self.0.join(name).symlink_metadata().is_ok()
    }
}

/// Whether a registry's answer means "no such manifest".
fn not_found(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// How a blob came to be in the built image's repository without being
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// It was there already (an earlier build, another layer of the same).
    Present,
    /// Mounted from the base image's repository in the same registry.
    Mounted,
}

/// The cloud's registry, where the built image goes.
struct Target {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
    /// `host[:port]`, for messages.
    registry: String,
    /// The reference as text.
    image: String,
}

/// The built image, ready to push.
struct Built {
    layer: layer::Layer,
    /// The layer's gzip.
    layer_file: PathBuf,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
    media_type: String,
}

/// Where the base image's layers are.
struct BaseSource<'a> {
    client: Client,
    auth: RegistryAuth,
    reference: &'a Reference,
    layers: &'a [OciDescriptor],
    /// In the cloud's own registry: its layers can be mounted.
    same_registry: bool,
}

impl Target {
    /// Pushes `built`: the base's layers (mounted, or copied from `base`,
    /// through a file in `work`, unless the repository has them), the new
    /// layer and the config unless it has them, then the manifest. Returns
    /// how many base layers were mounted and copied.
    async fn push(
        &self,
        built: &Built,
        base: &BaseSource<'_>,
        work: &Path,
        masked: &[String],
    ) -> Result<(usize, usize), BuildError> {
        let (mut mounted, mut copied) = (0, 0);
        for layer in base.layers {
            let from = base.same_registry.then_some(base.reference);
            match self.blob(&layer.digest, from, masked).await? {
                Some(Placed::Mounted) => mounted += 1,
                Some(Placed::Present) => {}
                None => {
                    self.copy(base, layer, work, masked).await?;
                    copied += 1;
                }
            }
        }
        if self
            .blob(&built.layer.digest, None, masked)
            .await?
            .is_none()
        {
            self.push_file(&built.layer_file, &built.layer.digest, masked)
                .await?;
        }
        if self
            .blob(&built.config_digest, None, masked)
            .await?
            .is_none()
        {
            self.client
                .push_blob(&self.reference, built.config.clone(), &built.config_digest)
                .await
                .map_err(|err| self.refused("push to", &err, masked))?;
        }
        let content_type = reqwest::header::HeaderValue::from_str(&built.media_type)
            .map_err(|err| BuildError::Crashed(format!("manifest media type: {err}")))?;
        self.client
            .push_manifest_raw(&self.reference, built.manifest.clone(), content_type)
            .await
            .map_err(|err| self.refused("push to", &err, masked))?;
        Ok((mounted, copied))
    }

    /// Copies the base's blob `layer` (from another registry) through a
    /// file in `work`.
    async fn copy(
        &self,
        base: &BaseSource<'_>,
        layer: &OciDescriptor,
        work: &Path,
        masked: &[String],
    ) -> Result<(), BuildError> {
        let file = work.join("blob");
        let out = tokio::fs::File::create(&file)
            .await
            .map_err(|err| BuildError::Io {
                path: file.display().to_string(),
                source: err,
            })?;
        let from = base.reference;
        base.client
            .store_auth_if_needed(from.resolve_registry(), &base.auth)
            .await;
        base.client
            .pull_blob(from, layer, out)
            .await
            .map_err(|err| {
                BuildError::Image(image::mask(
                    &format!(
                        "cannot copy layer {} of {from}: {}",
                        layer.digest,
                        image::registry_why(from.resolve_registry(), &err)
                    ),
                    masked,
                ))
            })?;
        self.push_file(&file, &layer.digest, masked).await?;
        let _ = tokio::fs::remove_file(&file).await;
        Ok(())
    }

    fn refused(&self, what: &str, err: &OciDistributionError, masked: &[String]) -> BuildError {
        let why = image::registry_why(&self.registry, err);
        BuildError::Image(image::mask(
            &format!("cannot {what} {}: {why}", self.image),
            masked,
        ))
    }

    /// Whether the repository has the blob `digest` already, or has it
    /// now by a mount from `from` (a repository of the same registry);
    /// `None`: it must be sent.
    async fn blob(
        &self,
        digest: &str,
        from: Option<&Reference>,
        masked: &[String],
    ) -> Result<Option<Placed>, BuildError> {
        let exists = self
            .client
            .blob_exists(&self.reference, digest)
            .await
            .map_err(|err| self.refused("push to", &err, masked))?;
        if exists {
            return Ok(Some(Placed::Present));
        }
        let Some(from) = from else {
            return Ok(None);
        };
        // A registry that does not mount answers with an upload session
        // instead (an error here): the blob is copied then.
        let mounted = self
            .client
            .mount_blob(&self.reference, from, digest)
            .await
            .is_ok()
            && self
                .client
                .blob_exists(&self.reference, digest)
                .await
                .unwrap_or(false);
        Ok(mounted.then_some(Placed::Mounted))
    }

    /// Sends the blob in `file` as `digest`, a bounded piece at a time
    /// (layers can be larger than this server's memory should hold).
    async fn push_file(
        &self,
        file: &Path,
        digest: &str,
        masked: &[String],
    ) -> Result<(), BuildError> {
        let io = |err: std::io::Error| BuildError::Io {
            path: file.display().to_string(),
            source: err,
        };
        let opened = tokio::fs::File::open(file).await.map_err(io)?;
        let size = opened.metadata().await.map_err(io)?.len();
        let pieces = futures_util::stream::try_unfold(opened, |mut file| async move {
            let mut piece = vec![0u8; PUSH_PIECE];
            let mut filled = 0;
            while filled < piece.len() {
                match file.read(&mut piece[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) => return Err(OciDistributionError::IoError(err)),
                }
            }
            if filled == 0 {
                return Ok(None);
            }
            piece.truncate(filled);
            Ok(Some((bytes::Bytes::from(piece), file)))
        });
        self.client
            .push_blob_stream(&self.reference, pieces, digest, Some(size))
            .await
            .map_err(|err| self.refused("push to", &err, masked))?;
        Ok(())
    }
}

impl Builder {
    /// Makes `build`'s image for a kubernetes cloud and publishes its
    /// `image.json` (see the module docs).
    pub(crate) async fn produce_for_kubernetes(
        &self,
        build: &Build,
        work: &Path,
        cloud: &KubernetesCloud,
    ) -> Result<Artifact, BuildError> {
        let mut insecure = self.config.insecure_registries.clone();
        if cloud.config.insecure_registry {
            insecure.extend(cloud.config.registry_host().map(str::to_owned));
        }
        if let Source::Docker { image, credentials } = &build.source {
            return self
                .resolve_for_cluster(build, work, image, credentials.as_ref(), &insecure)
                .await;
        }
        self.build_and_push(build, work, cloud, &insecure).await
    }

    /// A `docker` source: its digest and config, no layers.
    async fn resolve_for_cluster(
        &self,
        build: &Build,
        work: &Path,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
        insecure: &[String],
    ) -> Result<Artifact, BuildError> {
        let mut masked = Vec::new();
        let credentials = match credentials {
            Some(c) => Some(Credentials {
                username: self
                    .reveal(build, &c.username, "credentials.username", &mut masked)
                    .await?,
                password: self
                    .reveal(build, &c.password, "credentials.password", &mut masked)
                    .await?,
            }),
            None => None,
        };
        let pull = Pull {
            image: reference,
            credentials,
            masked: &masked,
            insecure_registries: insecure,
        };
        let (resolved, digest) = image::resolve(&pull).await?;
        image::check_runnable(&pull, &resolved)?;
        let log = vec![format!(
            "image {reference}: manifest {digest}, {} layer(s), pulled by the cluster (not by this server)",
            resolved.layers.len()
        )];
        self.publish_run(work, resolved.run, &digest, log).await
    }

    /// Publishes `run` as the image artifact of `digest` (or keeps the one
    /// published before), with `log` before its own line.
    async fn publish_run(
        &self,
        work: &Path,
        run: ImageRun,
        digest: &str,
        mut log: Vec<String>,
    ) -> Result<Artifact, BuildError> {
        let key = artifact_name(digest).ok_or_else(|| {
            BuildError::Image(format!(
                "image {}: its manifest digest {digest} is not one this builder can address",
                run.image
            ))
        })?;
        let artifacts = self.config.artifacts_dir();
        let dir = work.join("image-run");
        let published_key = key.clone();
        let (published, reused) = blocking(move || {
            let existing = artifacts.join(&published_key);
            if existing.is_dir() {
                return Ok((existing, true));
            }
            crate::remove_work_dir(&dir);
            std::fs::create_dir_all(&dir).map_err(|err| BuildError::Io {
                path: dir.display().to_string(),
                source: err,
            })?;
            image::write_run(&dir, &run)?;
            Ok((artifact::publish(&dir, &artifacts, &published_key)?, false))
        })
        .await?;
        log.push(if reused {
            format!("reusing artifact {key}: this image was resolved before")
        } else {
            format!("artifact {key} ready")
        });
        Ok(Artifact {
            path: path_text(&published)?,
            log,
        })
    }

    /// An `upload` or `github` source: built on the base image, pushed (see
    /// the module docs).
    async fn build_and_push(
        &self,
        build: &Build,
        work: &Path,
        cloud: &KubernetesCloud,
        insecure: &[String],
    ) -> Result<Artifact, BuildError> {
        let registry = cloud.config.registry.clone().ok_or_else(|| {
            BuildError::Image(format!(
                "cloud {} has no registry to push the built image to: set config.registry (host[:port]/prefix)",
                cloud.name
            ))
        })?;
        let registry_host = cloud.config.registry_host().unwrap_or_default().to_owned();
        let (dir, log, in_place) = match self.fetch(build, work).await? {
            Fetched::InPlace(artifact) => (PathBuf::from(&artifact.path), artifact.log, true),
            Fetched::Tree { dir, log } => (dir, log, false),
        };
        self.log(&build.id, "stdout", &log)
            .await
            .map_err(BuildError::Store)?;
        let tree = dir.clone();
        let language = cloud.language.clone();
        let (recipe, tree_key, node) = blocking(move || {
            artifact::check_top_level(&tree)?;
            let recipe = recipe::recipe(&tree)?;
            let tree_key = artifact::key(
                &artifact::tree_hash(&tree)?,
                &recipe
                    .as_ref()
                    .map(recipe::Recipe::describe)
                    .unwrap_or_default(),
            );
            Ok((
                recipe,
                tree_key,
                crate::docker::is_node(language.as_deref(), &tree),
            ))
        })
        .await?;
        let (runtime, base) = if node {
            ("node", cloud.config.base_image.node.clone())
        } else {
            ("python", cloud.config.base_image.python.clone())
        };
        let base = base.ok_or_else(|| {
            BuildError::Image(format!(
                "cloud {} has no base image for {runtime} agents: set config.base_image.{runtime} to the image they are built on",
                cloud.name
            ))
        })?;

        let mut masked = Vec::new();
        let credentials = match &cloud.config.registry_credentials {
            Some(c) => Some(Credentials {
                username: self
                    .reveal(
                        build,
                        &c.username,
                        "the cloud's registry_credentials.username",
                        &mut masked,
                    )
                    .await?,
                password: self
                    .reveal(
                        build,
                        &c.password,
                        "the cloud's registry_credentials.password",
                        &mut masked,
                    )
                    .await?,
            }),
            None => None,
        };
        let base_ref: Reference = base.parse().map_err(|err| {
            BuildError::Image(format!(
                "cloud {}: base_image.{runtime} {base} is not an image reference: {err}",
                cloud.name
            ))
        })?;
        let same_registry = base_ref.resolve_registry() == registry_host;
        let base_pull = Pull {
            image: &base,
            // The cloud's credentials go to its own registry only.
            credentials: credentials.clone().filter(|_| same_registry),
            masked: &masked,
            insecure_registries: insecure,
        };
        let (base_resolved, base_digest) = image::resolve(&base_pull).await.map_err(|err| {
            BuildError::Image(format!(
                "the base image for {runtime} agents (config.base_image.{runtime} of cloud {}): {err}",
                cloud.name
            ))
        })?;

        let key = content_key(&base_digest, &tree_key);
        let target_image = image_reference(&registry, &build.agent_id, &key);
        let target = Target {
            client: image::client(&registry_host, insecure),
            auth: match &credentials {
                Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                None => RegistryAuth::Anonymous,
            },
            reference: target_image.parse().map_err(|err| {
                BuildError::Image(format!(
                    "cloud {}: {target_image} is not an image reference (check config.registry): {err}",
                    cloud.name
                ))
            })?,
            registry: registry_host.clone(),
            image: target_image.clone(),
        };
        let target_pull = Pull {
            image: &target_image,
            credentials: credentials.clone(),
            masked: &masked,
            insecure_registries: insecure,
        };
        match target
            .client
            .fetch_manifest_digest(&target.reference, &target.auth)
            .await
        {
            Ok(digest) => {
                let (resolved, digest_now) = image::resolve(&target_pull).await?;
                let log = vec![format!(
                    "reusing image {target_image} ({digest}): this source was built on this base before; nothing pushed"
                )];
                return self.publish_run(work, resolved.run, &digest_now, log).await;
            }
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(target.refused("look up", &err, &masked)),
        }
        self.log(
            &build.id,
            "stdout",
            &[format!(
                "building image {target_image} on {base} ({base_digest})"
            )],
        )
        .await
        .map_err(BuildError::Store)?;

        // The base's root filesystem, for the build step to run on.
        let base_manifest = base_resolved.manifest.clone();
        let base_config = base_resolved.config.clone();
        let base_env = base_resolved.run.env_pairs();
        if let Some(recipe) = &recipe {
            let base_artifact = self
                .unpacked_image(build, &work.join("base"), &base_pull, base_resolved, &base_digest)
                .await
                .map_err(|err| match err {
                    BuildError::Image(why) => BuildError::Image(format!(
                        "the base image for {runtime} agents (config.base_image.{runtime} of cloud {}): {why}",
                        cloud.name
                    )),
                    other => other,
                })?;
            self.log(&build.id, "stdout", &base_artifact.log)
                .await
                .map_err(BuildError::Store)?;
            self.log(
                &build.id,
                "stdout",
                &[format!(
                    "build step ({}) on {base}: {}",
                    recipe.origin,
                    recipe.describe()
                )],
            )
            .await
            .map_err(BuildError::Store)?;
            let root = StepRoot {
                rootfs: image::rootfs_dir(Path::new(&base_artifact.path)),
                env: base_env,
            };
            self.run_step(build, &dir, recipe, Some(&root)).await?;
        }

        // The layer, its config and manifest.
        let tree = dir.clone();
        let layer_file = work.join("app-layer.tar.gz");
        let layer_path = layer_file.clone();
        let (made, argv) = blocking(move || {
            if !in_place {
                let tmp = tree.join(STEP_TMP);
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(|err| BuildError::Io {
                        path: tmp.display().to_string(),
                        source: err,
                    })?;
                }
                artifact::take_back(&tree)?;
                artifact::check_top_level(&tree)?;
            }
            let argv = contract::command(&DirTree(&tree)).map_err(BuildError::Manifest)?;
            Ok((layer::app_layer(&tree, &layer_path)?, argv))
        })
        .await?;
        let config = layer::image_config(&base_config, &made, &argv)
            .map_err(|why| BuildError::Image(format!("the base image {base}: {why}")))?;
        let config_digest = layer::digest(&config);
        let (manifest, media_type) =
            layer::manifest(&base_manifest, &config_digest, config.len(), &made)
                .map_err(BuildError::Crashed)?;
        let manifest_digest = layer::digest(&manifest);

        let built = Built {
            layer: made,
            layer_file,
            config,
            config_digest,
            manifest,
            media_type,
        };
        let base_source = BaseSource {
            client: image::client(base_ref.resolve_registry(), insecure),
            auth: match &base_pull.credentials {
                Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                None => RegistryAuth::Anonymous,
            },
            reference: &base_ref,
            layers: &base_manifest.layers,
            same_registry,
        };
        let (mounted, copied) = target.push(&built, &base_source, work, &masked).await?;
        let made = built.layer;
        self.log(
            &build.id,
            "stdout",
            &[format!(
                "pushed {target_image} ({manifest_digest}): {} base layer(s) ({mounted} mounted, {copied} copied), a new layer of {} bytes from /app, running {}",
                base_manifest.layers.len(),
                made.size,
                argv.join(" ")
            )],
        )
        .await
        .map_err(BuildError::Store)?;

        // What the cluster will pull, as the registry now has it.
        let (resolved, digest) = image::resolve(&target_pull).await?;
        if digest != manifest_digest {
            return Err(BuildError::Image(format!(
                "the registry {registry_host} serves {target_image} as {digest}, not as the {manifest_digest} pushed: it changed the manifest, which replicas could then not pin"
            )));
        }
        self.publish_run(work, resolved.run, &digest, Vec::new())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_by_agent_and_content() {
        assert_eq!(
            image_reference("127.0.0.1:5000/hangar", "agent_01ABC", "k1"),
            "127.0.0.1:5000/hangar/agent_01abc:k1"
        );
        assert_eq!(
            image_reference("r.example/", "agent_X", "k"),
            "r.example/agent_x:k"
        );
        let key = content_key("sha256:base", "tree");
        assert_eq!(key.len(), 32);
        assert_eq!(key, content_key("sha256:base", "tree"));
        assert_ne!(key, content_key("sha256:other", "tree"));
        assert_ne!(key, content_key("sha256:base", "tree2"));
    }

    #[test]
    fn missing_manifests_are_told_from_failures() {
        assert!(not_found(&OciDistributionError::ServerError {
            code: 404,
            url: String::new(),
            message: String::new()
        }));
        assert!(!not_found(&OciDistributionError::ServerError {
            code: 500,
            url: String::new(),
            message: String::new()
        }));
    }
}
