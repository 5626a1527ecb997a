//! What a source becomes: for now, only a plain local directory becomes an
//! artifact; every other kind of source fails its build and says so.
//!
//! A `github` source whose `repo` is a `file://` URL naming a directory on this
//! server that is not a git repository is used as it is: the artifact is that
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

/// Most entries (files, directories, symlinks) a directory artifact may have.
pub const MAX_ENTRIES: usize = 10_000;

/// The uid the sandbox runs agents as; it owns none of the artifact's files.
pub const SANDBOX_UID: u32 = 65_534;

/// Files one of which an artifact must have for the agent contract to run it.
pub const RUNNABLE_FILES: [&str; 4] = ["hangar.toml", "main.py", "app.py", "package.json"];

/// Why a build failed. The message is what the build's `reason` and log say.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// This version of Hangar cannot build this kind of source.
    #[error("building {kind} sources is not available yet in this version of Hangar")]
    Unsupported {
        /// `git`, `docker` or `upload`.
        kind: &'static str,
    },
    /// The `file://` URL does not name a path on this server.
    #[error("{repo} does not name an absolute path on this server (file:///path/to/dir)")]
    BadFileUrl {
        /// The URL.
        repo: String,
    },
    /// A commit is pinned, but a plain directory has no commits.
    #[error("commit {commit} is pinned, but {dir} is a plain directory, not a git repository: it has no commits (remove commit)")]
    NoCommits {
        /// The pinned commit.
        commit: String,
        /// The directory.
        dir: String,
    },
    /// Nothing at the path.
    #[error("the directory {path} does not exist")]
    Missing {
        /// The path.
        path: String,
    },
    /// Something other than a directory at the path.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: String,
    },
    /// The source's `path` leads outside the source directory.
    #[error("path '{path}' leads outside the source directory {dir}")]
    Escapes {
        /// The source's `path`.
        path: String,
        /// The source directory.
        dir: String,
    },
    /// No file the agent contract runs.
    #[error("nothing to run in {dir}: looked for hangar.toml, main.py, app.py and package.json")]
    NothingToRun {
        /// The artifact directory.
        dir: String,
    },
    /// A file the sandbox's user could not read.
    #[error("{path} is not readable by the sandbox's unprivileged user (uid {SANDBOX_UID}): its mode is {mode:o}; make it readable by others (chmod o+r)")]
    FileNotReadable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory the sandbox's user could not list or enter.
    #[error("the directory {path} cannot be listed and entered by the sandbox's unprivileged user (uid {SANDBOX_UID}): its mode is {mode:o}; make it readable and searchable by others (chmod o+rx)")]
    DirNotReadable {
        /// The directory.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A device, socket or FIFO.
    #[error("{path} is not a regular file, directory or symlink: devices, sockets and FIFOs cannot be part of an artifact")]
    SpecialFile {
        /// The entry.
        path: String,
    },
    /// Too many entries.
    #[error("{dir} has more than {MAX_ENTRIES} entries: this builder takes directories of at most {MAX_ENTRIES}")]
    TooManyEntries {
        /// The artifact directory.
        dir: String,
    },
    /// The artifact's path cannot be stored as text.
    #[error("{path} is not valid UTF-8")]
    NotUtf8 {
        /// The path, lossily.
        path: String,
    },
    /// Reading the directory failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was read.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The build step itself crashed (a bug).
    #[error("the builder crashed: {0}")]
    Crashed(String),
}

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

/// Builds `source` into an artifact (blocking file-system work: run it on a
/// blocking thread).
pub fn build(source: &Source) -> Result<Artifact, BuildError> {
    match source {
        Source::Github {
            repo,
            branch,
            path,
            commit,
        } if repo.starts_with("file://") => {
            directory(repo, branch.as_deref(), path.as_deref(), commit.as_deref())
        }
        Source::Github { .. } => Err(BuildError::Unsupported { kind: "git" }),
        Source::Docker { .. } => Err(BuildError::Unsupported { kind: "docker" }),
        Source::Upload { .. } => Err(BuildError::Unsupported { kind: "upload" }),
    }
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
fn is_git_repository(dir: &Path) -> bool {
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
                return Err(BuildError::TooManyEntries { dir: shown(dir) });
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
                    });
                }
                subdirs.push(path);
            } else if kind.is_file() {
                if mode & OTHERS_READ != OTHERS_READ {
                    return Err(BuildError::FileNotReadable {
                        path: shown(&path),
                        mode,
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
