//! Builds for docker clouds: the artifact a replica runs is a container
//! image on the engine that runs it, tagged
//! [`hangar_core::docker::image_tag`] of the build, instead of a tree run in
//! a sandbox.
//!
//! * A `docker` source is pulled by the engine (credentials from
//!   `${secrets.NAME}`, masked in every line and reason) and tagged; its
//!   artifact is a tree holding just a `Dockerfile` saying `FROM` it, which
//!   tells launch to run the image's own command (see
//!   [`hangar_core::docker`]).
//! * An `upload` or `github` source is fetched as for a sandbox. With its
//!   own `Dockerfile` at the root, the engine builds that; else this module
//!   writes one ([`dockerfile`]): `FROM` the cloud's `base_image` (or a
//!   default per language, [`default_base_image`]), the tree at `/app`, the
//!   build step of [`crate::recipe`] as a `RUN`. No build step runs on this
//!   host: the engine's build is the sandbox.
//! * The engine's output lines go into the build's log as they come; a
//!   failed build fails with the engine's last word as its reason. The
//!   source tree is published as the artifact (unbuilt, so the same key as
//!   a tree with no build step), for launch to read `hangar.toml` and find
//!   the command.
//!
//! The engine sits behind [`ImageMaker`], which the docker driver
//! implements, so the builder's side is tested with a fake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hangar_core::docker::{image_tag, DockerCloudConfig, DOCKERFILE};
use hangar_core::kubernetes::KubernetesCloudConfig;
use hangar_core::model::{Build, DriverKind};
use hangar_core::resources::Resources;
use hangar_core::spec::{RegistryCredentials, Source};
use hangar_runtime::{BuildLimits, DockerDriver};
use tokio::sync::mpsc;

use crate::error::BuildError;
use crate::kubernetes::KubernetesCloud;
use crate::recipe::{self, Recipe};
use crate::source::{Artifact, Fetched};
use crate::{artifact, blocking, path_text, remove_work_dir, Builder, Road};

/// Makes images on the engine that runs a docker cloud's replicas.
#[async_trait::async_trait]
pub trait ImageMaker: Send + Sync + 'static {
    /// Builds `tag` from the directory `context`, with its own `Dockerfile`
    /// (`dockerfile` `None`) or that text, its steps held to `limits`;
    /// output lines go to `log` as they come. The error is the engine's
    /// message.
    async fn build(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        limits: BuildLimits,
        log: mpsc::Sender<String>,
    ) -> Result<(), String>;

    /// Pulls `reference` with `credentials` (user name, password) and tags
    /// it `tag`; progress lines go to `log`.
    async fn pull(
        &self,
        reference: &str,
        credentials: Option<(String, String)>,
        tag: &str,
        log: mpsc::Sender<String>,
    ) -> Result<(), String>;
}

#[async_trait::async_trait]
impl ImageMaker for DockerDriver {
    async fn build(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        limits: BuildLimits,
        log: mpsc::Sender<String>,
    ) -> Result<(), String> {
        self.build_image(context, dockerfile, tag, limits, log)
            .await
            .map_err(|err| err.to_string())
    }

    async fn pull(
        &self,
        reference: &str,
        credentials: Option<(String, String)>,
        tag: &str,
        log: mpsc::Sender<String>,
    ) -> Result<(), String> {
        self.pull_image(reference, credentials, tag, log)
            .await
            .map_err(|err| err.to_string())
    }
}

/// The base image of generated Dockerfiles for Python (and whatever does
/// not say): also what the docker driver runs when a spec names no image.
pub const DEFAULT_BASE_IMAGE: &str = "python:3.12-slim";

/// What a build for a docker cloud needs to know of its cloud and agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerCloud {
    /// The image a generated Dockerfile starts from.
    pub base_image: Option<String>,
    /// The agent's `runtime.language` and `runtime.version`, for the
    /// default base image.
    pub language: Option<String>,
    /// See [`DockerCloud::language`].
    pub version: Option<String>,
    /// The agent's resources: its image build gets a build step's limits.
    pub resources: Resources,
}

/// The base image of a generated Dockerfile when the cloud names none:
/// Node's for a `node` agent (or, with no language given, a tree with a
/// `package.json` and no Python files), else Python's; at the agent's
/// `runtime.version` when it gives one.
#[must_use]
pub fn default_base_image(language: Option<&str>, version: Option<&str>, tree: &Path) -> String {
    match (is_node(language, tree), version) {
        (true, version) => format!("node:{}-slim", version.unwrap_or("20")),
        (false, Some(version)) => format!("python:{version}-slim"),
        (false, None) => DEFAULT_BASE_IMAGE.to_owned(),
    }
}

/// Whether an agent is a Node one: its `runtime.language` says so, or, with
/// none given, its tree has a `package.json` and no Python files. Else it
/// is a Python one.
#[must_use]
pub fn is_node(language: Option<&str>, tree: &Path) -> bool {
    let is_file = |name: &str| tree.join(name).is_file();
    match language {
        Some(language) => {
            language.eq_ignore_ascii_case("node")
                || language.eq_ignore_ascii_case("nodejs")
                || language.eq_ignore_ascii_case("javascript")
                || language.eq_ignore_ascii_case("typescript")
        }
        None => {
            is_file("package.json")
                && !["requirements.txt", "pyproject.toml", "main.py", "app.py"]
                    .iter()
                    .any(|name| is_file(name))
        }
    }
}

/// A Dockerfile for a tree without one: `base`, the tree at `/app`, the
/// build step as a `RUN`, and the virtualenv it made first on `PATH`.
#[must_use]
pub fn dockerfile(base: &str, step: Option<&Recipe>) -> String {
    let mut text = format!(
        "# Written by Hangar: this source has no Dockerfile of its own.\n\
         FROM {base}\n\
         COPY . /app\n\
         WORKDIR /app\n\
         ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1\n"
    );
    if let Some(step) = step {
        let run = match step.argv.as_slice() {
            [shell, flag, line]
                if shell == "/bin/sh" && flag == "-c" && !line.contains(['\n', '\r']) =>
            {
                line.clone()
            }
            // Exec form: JSON strings, so nothing is split or expanded, and
            // a command of several lines stays one instruction.
            argv => serde_json::to_string(argv).unwrap_or_default(),
        };
        text.push_str(&format!("RUN {run}\n"));
        if step.argv.iter().any(|arg| arg.contains("/app/.venv")) {
            text.push_str("ENV PATH=/app/.venv/bin:$PATH\n");
        }
    }
    text
}

/// `text` with every secret value in `masked` replaced by `****`.
fn mask(text: &str, masked: &[String]) -> String {
    masked
        .iter()
        .filter(|value| !value.is_empty())
        .fold(text.to_owned(), |text, value| {
            text.replace(value.as_str(), "****")
        })
}

/// How many engine lines go into the log in one write at most.
const LOG_BATCH: usize = 200;

impl Builder {
    /// Which road `build` takes: that of its agent's cloud's driver (a
    /// deleted agent's builds are made as for a sandbox: nothing will run
    /// them).
    pub(crate) async fn road(&self, build: &Build) -> Result<Road, BuildError> {
        let Some(view) = self
            .store
            .get_agent(&build.organization_id, &build.agent_id)
            .await
            .map_err(BuildError::Store)?
        else {
            return Ok(Road::Sandbox);
        };
        let agent = view.agent;
        let Some(cloud) = self
            .store
            .get_cloud(&build.organization_id, &agent.cloud_id)
            .await
            .map_err(BuildError::Store)?
        else {
            return Ok(Road::Sandbox);
        };
        let unusable = |err: hangar_core::Invalid| {
            BuildError::Image(format!("cloud {} has unusable settings: {err}", cloud.name))
        };
        match cloud.driver {
            DriverKind::Docker => {
                let config = DockerCloudConfig::parse(&cloud.config).map_err(unusable)?;
                Ok(Road::Docker(DockerCloud {
                    base_image: config.base_image,
                    language: agent.runtime.language,
                    version: agent.runtime.version,
                    resources: agent.resources,
                }))
            }
            DriverKind::Kubernetes => {
                let config = KubernetesCloudConfig::parse(&cloud.config).map_err(unusable)?;
                Ok(Road::Kubernetes(KubernetesCloud {
                    name: cloud.name.clone(),
                    config,
                    language: agent.runtime.language,
                }))
            }
            _ => Ok(Road::Sandbox),
        }
    }

    /// Makes `build`'s image on the engine and publishes its tree (see the
    /// module docs).
    pub(crate) async fn produce_for_docker(
        &self,
        build: &Build,
        work: &Path,
        cloud: &DockerCloud,
    ) -> Result<Artifact, BuildError> {
        let images = self.images.clone().map_err(|why| {
            BuildError::Image(format!("this agent's cloud runs containers, but {why}"))
        })?;
        let tag = image_tag(&build.id);
        if let Source::Docker { image, credentials } = &build.source {
            return self
                .pull_for_docker(build, work, images, image, credentials.as_ref(), &tag)
                .await;
        }
        let (dir, log, in_place) = match self.fetch(build, work).await? {
            Fetched::InPlace(artifact) => (PathBuf::from(&artifact.path), artifact.log, true),
            Fetched::Tree { dir, log } => (dir, log, false),
        };
        self.log(&build.id, "stdout", &log)
            .await
            .map_err(BuildError::Store)?;
        let tree = dir.clone();
        let cloud = cloud.clone();
        let (generated, key) = blocking(move || {
            artifact::check_top_level(&tree)?;
            let own = tree
                .join(DOCKERFILE)
                .symlink_metadata()
                .is_ok_and(|m| m.is_file());
            let generated = if own {
                None
            } else {
                let base = cloud.base_image.clone().unwrap_or_else(|| {
                    default_base_image(cloud.language.as_deref(), cloud.version.as_deref(), &tree)
                });
                Some(dockerfile(&base, recipe::recipe(&tree)?.as_ref()))
            };
            // The tree is published unbuilt: the key of a tree with no step.
            let key = (!in_place)
                .then(|| artifact::tree_hash(&tree).map(|hash| artifact::key(&hash, "")))
                .transpose()?;
            Ok((generated, key))
        })
        .await?;
        let intro = match &generated {
            None => format!("building image {tag} with the source's own Dockerfile"),
            Some(text) => format!(
                "building image {tag} with a generated Dockerfile:\n{}",
                text.trim_end()
            ),
        };
        let intro: Vec<String> = intro.lines().map(str::to_owned).collect();
        self.log(&build.id, "stdout", &intro)
            .await
            .map_err(BuildError::Store)?;
        let (tx, rx) = mpsc::channel(256);
        let limits = self.step_limits(&cloud.resources);
        let made = images.build(&dir, generated.as_deref(), &tag, limits, tx);
        self.engine_log(build, made, rx, &[], "the image build")
            .await?;
        let Some(key) = key else {
            // A directory on this server used in place is its own artifact.
            return Ok(Artifact {
                path: path_text(&dir)?,
                log: vec![format!("image {tag} ready")],
            });
        };
        self.publish_tree(dir, key, &tag).await
    }

    /// Pulls a `docker` source's image as `tag` and publishes the tree that
    /// names it.
    async fn pull_for_docker(
        &self,
        build: &Build,
        work: &Path,
        images: Arc<dyn crate::ImageMaker>,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
        tag: &str,
    ) -> Result<Artifact, BuildError> {
        let mut masked = Vec::new();
        let credentials = match credentials {
            Some(c) => Some((
                self.reveal(build, &c.username, "credentials.username", &mut masked)
                    .await?,
                self.reveal(build, &c.password, "credentials.password", &mut masked)
                    .await?,
            )),
            None => None,
        };
        self.log(
            &build.id,
            "stdout",
            &[format!("pulling image {reference} as {tag}")],
        )
        .await
        .map_err(BuildError::Store)?;
        let (tx, rx) = mpsc::channel(256);
        let pulled = images.pull(reference, credentials, tag, tx);
        self.engine_log(build, pulled, rx, &masked, "the pull")
            .await?;
        let dir = work.join("src");
        let text = format!("FROM {reference}\n");
        let key = blocking(move || {
            remove_work_dir(&dir);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join(DOCKERFILE), text))
                .map_err(|err| BuildError::Io {
                    path: dir.display().to_string(),
                    source: err,
                })?;
            Ok((artifact::key(&artifact::tree_hash(&dir)?, ""), dir))
        })
        .await?;
        self.publish_tree(key.1, key.0, tag).await
    }

    /// Publishes the tree at `dir` as artifact `key` (or keeps the one
    /// published before).
    async fn publish_tree(
        &self,
        dir: PathBuf,
        key: String,
        tag: &str,
    ) -> Result<Artifact, BuildError> {
        let artifacts = self.config.artifacts_dir();
        let published_key = key.clone();
        let published = blocking(move || {
            let existing = artifacts.join(&published_key);
            if existing.is_dir() {
                return Ok(existing);
            }
            artifact::take_back(&dir)?;
            artifact::publish(&dir, &artifacts, &published_key)
        })
        .await?;
        Ok(Artifact {
            path: path_text(&published)?,
            log: vec![format!("image {tag} ready; artifact {key} (its source)")],
        })
    }

    /// Runs the engine's work `made`, copying the lines it sends on `lines`
    /// to the build's log as they come (secret values in `masked` shown as
    /// `****`), within the step timeout. `what` names the work for reasons.
    async fn engine_log(
        &self,
        build: &Build,
        made: impl std::future::Future<Output = Result<(), String>>,
        mut lines: mpsc::Receiver<String>,
        masked: &[String],
        what: &str,
    ) -> Result<(), BuildError> {
        let timeout = self.config.step_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(made, deadline);
        let outcome = loop {
            tokio::select! {
                outcome = &mut made => break Some(outcome),
                () = &mut deadline => break None,
                line = lines.recv() => {
                    let Some(line) = line else { continue };
                    let mut batch = vec![mask(&line, masked)];
                    while batch.len() < LOG_BATCH {
                        match lines.try_recv() {
                            Ok(line) => batch.push(mask(&line, masked)),
                            Err(_) => break,
                        }
                    }
                    self.log(&build.id, "stdout", &batch)
                        .await
                        .map_err(BuildError::Store)?;
                }
            }
        };
        // What was sent before the work ended.
        let mut rest = Vec::new();
        while let Ok(line) = lines.try_recv() {
            rest.push(mask(&line, masked));
        }
        self.log(&build.id, "stdout", &rest)
            .await
            .map_err(BuildError::Store)?;
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(err)) => Err(BuildError::Image(format!(
                "{what} failed: {}",
                mask(&err, masked)
            ))),
            None => Err(BuildError::Image(format!(
                "{what} timed out after {} s",
                timeout.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hangar-dockerfile-{}-{}",
            std::process::id(),
            hangar_core::id::new_id(hangar_core::id::IdKind::Build)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn generated_dockerfiles_run_the_recipe_in_app() {
        let dir = tree(&[("requirements.txt", "flask\n"), ("main.py", "")]);
        let step = recipe::recipe(&dir).expect("recipe");
        let text = dockerfile("python:3.12-slim", step.as_ref());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "FROM python:3.12-slim");
        assert!(lines.contains(&"COPY . /app"), "{text}");
        assert!(lines.contains(&"WORKDIR /app"), "{text}");
        let run = lines.iter().find(|l| l.starts_with("RUN ")).expect("a RUN");
        assert!(
            run.starts_with("RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install"),
            "{run}"
        );
        assert!(run.ends_with("-r /app/requirements.txt"), "{run}");
        assert_eq!(lines.last(), Some(&"ENV PATH=/app/.venv/bin:$PATH"));
        std::fs::remove_dir_all(dir).expect("cleanup");

        // Exec form for a step given as a list: no shell.
        let dir = tree(&[(
            "package.json",
            r#"{"dependencies": {"is-number": "7.0.0"}}"#,
        )]);
        let step = recipe::recipe(&dir).expect("recipe");
        let text = dockerfile("node:20-slim", step.as_ref());
        assert!(
            text.contains("RUN [\"npm\",\"install\",\"--omit=dev\""),
            "{text}"
        );
        assert!(!text.contains("PATH"), "{text}");
        std::fs::remove_dir_all(dir).expect("cleanup");

        // hangar.toml's build command, as a shell line; several lines in
        // exec form.
        let dir = tree(&[("hangar.toml", "[build]\ncommand = \"make all\"\n")]);
        let step = recipe::recipe(&dir).expect("recipe");
        assert!(dockerfile("x", step.as_ref()).contains("\nRUN make all\n"));
        std::fs::remove_dir_all(dir).expect("cleanup");
        let dir = tree(&[(
            "hangar.toml",
            "[build]\ncommand = \"\"\"\nmake\nmake install\n\"\"\"\n",
        )]);
        let step = recipe::recipe(&dir).expect("recipe");
        let text = dockerfile("x", step.as_ref());
        assert!(
            text.contains("\nRUN [\"/bin/sh\",\"-c\",\"make\\nmake install\\n\"]\n"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");

        // Nothing to build: no RUN.
        assert!(!dockerfile("x", None).contains("RUN"));
    }

    #[test]
    fn the_default_base_follows_the_language() {
        let py = tree(&[("main.py", "")]);
        let js = tree(&[("package.json", "{}")]);
        assert_eq!(default_base_image(None, None, &py), "python:3.12-slim");
        assert_eq!(default_base_image(None, None, &js), "node:20-slim");
        assert_eq!(
            default_base_image(Some("node"), Some("22"), &py),
            "node:22-slim"
        );
        assert_eq!(
            default_base_image(Some("python"), Some("3.11"), &js),
            "python:3.11-slim"
        );
        for dir in [py, js] {
            std::fs::remove_dir_all(dir).expect("cleanup");
        }
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask(
                "login as bob with hunter2 failed",
                &["hunter2".to_owned(), String::new()]
            ),
            "login as bob with **** failed"
        );
    }
}
