//! What a source becomes before its build step: a directory tree.
//!
//! - `upload`: the archive PUT to the upload's URL, unpacked ([`crate::archive`]).
//! - `github`: the repository at the branch head or pinned commit, `path`
//!   selecting a subdirectory ([`crate::git`]); `owner/name` is GitHub's, any
//!   git URL works, `file://` ones included.
//! - `docker`: not a tree: the builder pulls the image ([`crate::image`]).
//!
//! One case is used in place, not copied: a `file://` URL naming a directory
//! on this server that is not a git repository, when it has nothing to build.
//! (With a build step it is copied to the build's directory first.) The artifact is that
//! directory (or its `path` subdirectory), by its canonical absolute path. The
//! sandbox shows it read-only at `/app` (writes land in an overlay), so it is
//! neither copied nor changed — an operator's edits to it reach replicas started
//! afterwards. Before it is accepted it must:
//!
//! - exist and be a directory; `path` must stay inside it (no `..`, no symlink
//!   leading out);
//! - hold something the agent contract can run: `hangar.toml`, `main.py`,
//!   `app.py` or `package.json`;
//! - be readable by the sandbox's unprivileged user (uid 65534, a stranger to
//!   its files): every file readable by others, every directory listable and
//!   enterable by others; no device, socket or FIFO;
//! - have at most [`MAX_ENTRIES`] entries.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use hangar_core::spec::Source;

pub use crate::artifact::MAX_ENTRIES;
use crate::error::BuildError;

/// The uid the sandbox runs agents as; it owns none of the artifact's files.
pub const SANDBOX_UID: u32 = 65_534;

/// Files one of which an artifact must have for the agent contract to run it.
pub const RUNNABLE_FILES: [&str; 4] = ["hangar.toml", "main.py", "app.py", "package.json"];

/// A built artifact: where it is and what the build log should say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The artifact directory's canonical absolute path (what the build stores as
    /// its `artifact`).
    pub path: String,
    /// Lines for the build's log.
    pub log: Vec<String>,
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn io_error(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Io {
        path: shown(path),
        source,
    }
}

/// What [`fetch`] needs besides the source.
#[derive(Debug, Clone)]
pub struct Fetch<'a> {
    /// An empty directory of this build's own; the source goes to `src` in it.
    pub work: &'a Path,
    /// Where uploaded archives are, by upload id.
    pub uploads: &'a Path,
    /// Bounds on archives.
    pub limits: crate::archive::Limits,
    /// How long a git fetch may take.
    pub git_timeout: std::time::Duration,
    /// The `github` source's repository URL with `${secrets.NAME}` resolved,
    /// and the secret values to mask in messages; `None`: `repo` as it is.
    pub repo: Option<(&'a str, &'a [String])>,
}

/// A source, fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A plain directory on this server with nothing to build: the artifact
    /// is the directory itself, used in place.
    InPlace(Artifact),
    /// The source, in the build's own directory (`work/src`), to be built and
    /// published as a content-addressed artifact.
    Tree {
        /// Where it is.
        dir: PathBuf,
        /// Lines for the build's log.
        log: Vec<String>,
    },
}

/// Fetches `source` (blocking file-system and process work: run it on a
/// blocking thread). See the crate docs for what each kind becomes.
pub fn fetch(source: &Source, ctx: &Fetch<'_>) -> Result<Fetched, BuildError> {
    let src = ctx.work.join("src");
    match source {
        Source::Github {
            repo,
            branch,
            path,
            commit,
        } => {
            let plain_dir =
                repo.starts_with("file://") && !is_git_repository(&file_url_path(repo)?);
            if plain_dir {
                let artifact =
                    directory(repo, branch.as_deref(), path.as_deref(), commit.as_deref())?;
                let root = PathBuf::from(&artifact.path);
                if crate::recipe::recipe(&root)?.is_none() {
                    return Ok(Fetched::InPlace(artifact));
                }
                copy_tree(&root, &src)?;
                let mut log = artifact.log;
                log.pop();
                log.push(format!(
                    "copied the directory {} to build it",
                    artifact.path
                ));
                return Ok(Fetched::Tree { dir: src, log });
            }
            let url = crate::git::repository_url(repo);
            let (url, secrets) = ctx.repo.unwrap_or((url.as_str(), &[]));
            let checkout = ctx.work.join("checkout");
            let log = crate::git::fetch(
                &crate::git::Checkout {
                    url,
                    secrets,
                    branch: branch.as_deref(),
                    commit: commit.as_deref(),
                    timeout: ctx.git_timeout,
                },
                &checkout,
            )?;
            let chosen = match path {
                None => checkout.clone(),
                Some(sub) => subdirectory(&checkout, sub)?,
            };
            std::fs::rename(&chosen, &src).map_err(|err| io_error(&src, err))?;
            let _ = std::fs::remove_dir_all(&checkout);
            crate::archive::check_links(&src, ctx.limits.max_entries)?;
            crate::artifact::normalize_modes(&src)?;
            Ok(Fetched::Tree { dir: src, log })
        }
        // Already built: the builder pulls it (crate::image), no tree to fetch.
        Source::Docker { image, .. } => Err(BuildError::Image(format!(
            "image {image} is pulled by the builder, not fetched as a source tree"
        ))),
        Source::Upload { upload_id, .. } => {
            let id = self::upload_id(source).ok_or_else(|| BuildError::UploadMissing {
                id: upload_id.clone().unwrap_or_default(),
            })?;
            let archive = ctx.uploads.join(&id);
            if !archive.is_file() {
                return Err(BuildError::UploadMissing { id });
            }
            std::fs::create_dir(&src).map_err(|err| io_error(&src, err))?;
            crate::archive::unpack(&archive, &src, ctx.limits)?;
            Ok(Fetched::Tree {
                dir: src,
                log: vec![format!("unpacked upload {id}")],
            })
        }
    }
}

/// The upload an `upload` source names (by id, or by its upload URL), when
/// it names one that can be.
#[must_use]
pub fn upload_id(source: &Source) -> Option<String> {
    let Source::Upload {
        upload_id,
        archive_url,
    } = source
    else {
        return None;
    };
    upload_id
        .clone()
        .or_else(|| archive_url.as_deref().and_then(upload_id_from_url))
        .filter(|id| {
            id.starts_with("upl_")
                && id.len() < 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The upload id in an `upload_url` (`…/v1/uploads/{id}/content?…`).
fn upload_id_from_url(url: &str) -> Option<String> {
    let rest = &url[url.find("/v1/uploads/")? + "/v1/uploads/".len()..];
    Some(rest.split(['/', '?']).next()?.to_owned())
}

/// Copies the tree at `from` to `to` (which must not exist): directories,
/// files and symlinks (as links); anything else fails.
fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir(to).map_err(|err| io_error(to, err))?;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = from.join(&rel);
        for entry in std::fs::read_dir(&here).map_err(|err| io_error(&here, err))? {
            let entry = entry.map_err(|err| io_error(&here, err))?;
            let rel = rel.join(entry.file_name());
            let (src, dst) = (from.join(&rel), to.join(&rel));
            let kind = src
                .symlink_metadata()
                .map_err(|err| io_error(&src, err))?
                .file_type();
            if kind.is_dir() {
                std::fs::create_dir(&dst).map_err(|err| io_error(&dst, err))?;
                pending.push(rel);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&src).map_err(|err| io_error(&src, err))?;
                std::os::unix::fs::symlink(target, &dst).map_err(|err| io_error(&dst, err))?;
            } else if kind.is_file() {
                std::fs::copy(&src, &dst).map_err(|err| io_error(&dst, err))?;
            } else {
                return Err(BuildError::SpecialFile { path: shown(&src) });
            }
        }
    }
    Ok(())
}

/// The local path a `file://` URL names: `file:///abs` or `file://localhost/abs`,
/// percent-escapes decoded.
fn file_url_path(repo: &str) -> Result<PathBuf, BuildError> {
    let bad = || BuildError::BadFileUrl {
        repo: repo.to_owned(),
    };
    let rest = repo.strip_prefix("file://").ok_or_else(bad)?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err(bad());
    }
    let raw = rest.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
            bytes.push(hex);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    if bytes.contains(&0) {
        return Err(bad());
    }
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// Whether `dir` is a git repository: a work tree (`.git` inside) or a bare one
/// (`HEAD`, `objects/` and `refs/`).
pub(crate) fn is_git_repository(dir: &Path) -> bool {
    dir.join(".git").symlink_metadata().is_ok()
        || (dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir())
}

fn directory(
    repo: &str,
    branch: Option<&str>,
    sub: Option<&str>,
    commit: Option<&str>,
) -> Result<Artifact, BuildError> {
    let given = file_url_path(repo)?;
    let meta = match std::fs::metadata(&given) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(BuildError::Missing {
                path: shown(&given),
            })
        }
        Err(err) => return Err(io_error(&given, err)),
    };
    if !meta.is_dir() {
        return Err(BuildError::NotADirectory {
            path: shown(&given),
        });
    }
    if is_git_repository(&given) {
        return Err(BuildError::Unsupported { kind: "git" });
    }
    let root = given.canonicalize().map_err(|err| io_error(&given, err))?;
    if let Some(commit) = commit {
        return Err(BuildError::NoCommits {
            commit: commit.to_owned(),
            dir: shown(&root),
        });
    }
    let mut log = Vec::new();
    if let Some(branch) = branch {
        log.push(format!(
            "{} is a plain directory, not a git repository: branch '{branch}' does not apply",
            shown(&root)
        ));
    }
    let artifact = match sub {
        None => root.clone(),
        Some(sub) => subdirectory(&root, sub)?,
    };
    if !RUNNABLE_FILES
        .iter()
        .any(|file| artifact.join(file).is_file())
    {
        return Err(BuildError::NothingToRun {
            dir: shown(&artifact),
        });
    }
    check_tree(&artifact)?;
    let path = artifact
        .to_str()
        .ok_or_else(|| BuildError::NotUtf8 {
            path: shown(&artifact),
        })?
        .to_owned();
    log.push(format!("using the directory {path} as the artifact"));
    Ok(Artifact { path, log })
}

/// `root`'s subdirectory `sub`, canonical, which must stay inside `root`.
fn subdirectory(root: &Path, sub: &str) -> Result<PathBuf, BuildError> {
    let escapes = || BuildError::Escapes {
        path: sub.to_owned(),
        dir: shown(root),
    };
    let relative = Path::new(sub);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(escapes());
    }
    let joined = root.join(relative);
    let target = match joined.canonicalize() {
        Ok(target) => target,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(BuildError::Missing {
                path: shown(&joined),
            })
        }
        Err(err) => return Err(io_error(&joined, err)),
    };
    if !target.starts_with(root) {
        return Err(escapes());
    }
    if !target.is_dir() {
        return Err(BuildError::NotADirectory {
            path: shown(&joined),
        });
    }
    Ok(target)
}

/// Walks `dir` (symlinks are not followed: inside the sandbox they resolve within
/// it) and checks that uid 65534 can read all of it, stopping at the first entry
/// it could not read and at more than [`MAX_ENTRIES`] entries. Entries are
/// visited in name order, so the entry reported is always the same.
fn check_tree(dir: &Path) -> Result<(), BuildError> {
    const OTHERS_READ: u32 = 0o004;
    const OTHERS_READ_SEARCH: u32 = 0o005;
    let meta = dir.metadata().map_err(|err| io_error(dir, err))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OTHERS_READ_SEARCH != OTHERS_READ_SEARCH {
        return Err(BuildError::DirNotReadable {
            path: shown(dir),
            mode,
            uid: SANDBOX_UID,
        });
    }
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(current) = pending.pop() {
        let mut entries = std::fs::read_dir(&current)
            .map_err(|err| io_error(&current, err))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| io_error(&current, err))?;
        entries.sort();
        // Subdirectories are pushed in reverse so they are visited in order.
        let mut subdirs = Vec::new();
        for path in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(BuildError::TooManyEntries {
                    dir: shown(dir),
                    limit: MAX_ENTRIES,
                });
            }
            let meta = path
                .symlink_metadata()
                .map_err(|err| io_error(&path, err))?;
            let kind = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            if kind.is_symlink() {
                continue;
            } else if kind.is_dir() {
                if mode & OTHERS_READ_SEARCH != OTHERS_READ_SEARCH {
                    return Err(BuildError::DirNotReadable {
                        path: shown(&path),
                        mode,
                        uid: SANDBOX_UID,
                    });
                }
                subdirs.push(path);
            } else if kind.is_file() {
                if mode & OTHERS_READ != OTHERS_READ {
                    return Err(BuildError::FileNotReadable {
                        path: shown(&path),
                        mode,
                        uid: SANDBOX_UID,
                    });
                }
            } else {
                return Err(BuildError::SpecialFile { path: shown(&path) });
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}
