//! Content-addressed artifacts: a built source lives in the data dir under
//! `artifacts/<key>`, where the key hashes the source tree and the build
//! step. A deploy of a source already built the same way finds its key taken
//! and reuses that artifact instead of building again; two builds of one
//! source racing each other both end with the same directory (the second
//! rename loses and its copy is dropped).
//!
//! The tree hash covers each entry's relative path, kind, execute bit, and
//! its content (files) or target (symlinks), in name order; not owners or
//! times, which archives and clones do not carry faithfully.
//!
//! Ownership around the sandboxed build step: the step runs as the sandbox's
//! unprivileged user, so the tree is handed to that user before
//! ([`give_to`]) and taken back afterwards ([`take_back`]), with every file
//! made readable and no setuid bits, so the artifact is root's and immutable
//! to every replica that shows it.
//!
//! [`MAX_ENTRIES`], the bound on every tree the builder takes, lives here,
//! beneath [`crate::source`] and [`crate::archive`], which both apply it.
//!
//! Servers sharing a database share artifacts through the blob store
//! ([`hangar_store::blobs`]) when it is shared: a published artifact is
//! packed as a plain tar (owners, modes and symlinks as they are) into the
//! blob `artifacts/<name>.tar` ([`share`]), and a server that must start a
//! replica of an artifact another server built unpacks that blob into its
//! own `artifacts/<name>` first and keeps it there ([`local_copy`]). A build
//! records the artifact's path on the server that built it; the name (the
//! content address) is what servers agree on. With blobs in the data dir
//! nothing is packed: the artifacts dir is the only copy, as before.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hangar_store::blobs::{BlobKey, Blobs};
use sha2::{Digest, Sha256};

use crate::error::BuildError;

/// Most entries (files, directories, symlinks) a tree the builder takes may
/// have: a directory used in place, and by default an unpacked upload or a
/// clone ([`crate::archive::Limits`]).
pub const MAX_ENTRIES: usize = 10_000;

/// Bumped whenever the same source and recipe would build differently.
const BUILDER_VERSION: &str = "hangar-build 1";

fn io(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Every entry under `dir` (not following symlinks), in name order, with
/// its path relative to `dir`.
pub(crate) fn walk(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, BuildError> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = dir.join(&rel);
        let mut names = std::fs::read_dir(&here)
            .map_err(|err| io(&here, err))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| io(&here, err))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(name);
            let path = dir.join(&rel);
            let meta = path.symlink_metadata().map_err(|err| io(&path, err))?;
            if meta.is_dir() {
                subdirs.push(rel.clone());
            }
            out.push((rel, meta));
        }
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// The content hash of the tree at `dir` (hex).
pub fn tree_hash(dir: &Path) -> Result<String, BuildError> {
    let mut hash = Sha256::new();
    for (rel, meta) in walk(dir)? {
        hash.update(rel.as_os_str().as_bytes());
        hash.update([0]);
        let kind = meta.file_type();
        if kind.is_dir() {
            hash.update(b"d");
        } else if kind.is_symlink() {
            hash.update(b"l");
            let target = std::fs::read_link(dir.join(&rel)).map_err(|err| io(&rel, err))?;
            hash.update(target.as_os_str().as_bytes());
        } else if kind.is_file() {
            hash.update(if meta.mode() & 0o111 != 0 { b"x" } else { b"f" });
            let path = dir.join(&rel);
            let mut file = std::fs::File::open(&path).map_err(|err| io(&path, err))?;
            let mut content = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = file.read(&mut buf).map_err(|err| io(&path, err))?;
                if n == 0 {
                    break;
                }
                content.update(&buf[..n]);
            }
            hash.update(content.finalize());
        } else {
            return Err(BuildError::SpecialFile {
                path: rel.display().to_string(),
            });
        }
        hash.update([0]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// The artifact key of a tree with hash `tree` built by `recipe` (its
/// description; empty for none).
#[must_use]
pub fn key(tree: &str, recipe: &str) -> String {
    let mut hash = Sha256::new();
    for part in [BUILDER_VERSION, tree, recipe] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}

/// Hands the tree at `dir` to `uid` (symlinks themselves, not their targets).
pub fn give_to(dir: &Path, uid: u32) -> Result<(), BuildError> {
    chown_tree(dir, uid)
}

fn chown_tree(dir: &Path, uid: u32) -> Result<(), BuildError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).map_err(|err| io(dir, err))?;
    for (rel, _) in walk(dir)? {
        let path = dir.join(rel);
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).map_err(|err| io(&path, err))?;
    }
    Ok(())
}

/// Takes the tree back for root after a build step: root owns everything;
/// files are readable by all (executable ones executable by all), dirs
/// listable by all, nothing setuid, setgid or writable by others.
pub fn take_back(dir: &Path) -> Result<(), BuildError> {
    chown_tree(dir, 0)?;
    normalize_modes(dir)
}

/// Makes every file readable and every directory listable by the sandbox's
/// user, without special bits or write access for others.
pub fn normalize_modes(dir: &Path) -> Result<(), BuildError> {
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|err| io(path, err))
    };
    set(dir, 0o755)?;
    for (rel, meta) in walk(dir)? {
        let path = dir.join(rel);
        let kind = meta.file_type();
        if kind.is_dir() {
            set(&path, 0o755)?;
        } else if kind.is_file() {
            set(
                &path,
                if meta.mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                },
            )?;
        } else if !kind.is_symlink() {
            return Err(BuildError::SpecialFile {
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Moves the built tree `dir` to `artifacts/<key>`; when that exists already
/// (a concurrent build of the same source won), `dir` is dropped and the
/// existing one is used. Returns the artifact's path.
pub fn publish(dir: &Path, artifacts: &Path, key: &str) -> Result<PathBuf, BuildError> {
    std::fs::create_dir_all(artifacts).map_err(|err| io(artifacts, err))?;
    let target = artifacts.join(key);
    match std::fs::rename(dir, &target) {
        Ok(()) => Ok(target),
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(dir);
            Ok(target)
        }
        Err(err) => Err(io(&target, err)),
    }
}

/// The files the server itself reads from an artifact (to choose the run
/// command) must be files, not symlinks that could show it something else
/// of the host.
pub fn check_top_level(dir: &Path) -> Result<(), BuildError> {
    for name in ["hangar.toml", "main.py", "app.py", "package.json"] {
        if dir
            .join(name)
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(BuildError::TopLevelSymlink {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// The blob the artifact at `artifact` is packed into: `artifacts/<name>.tar`;
/// `None` when its name is not an artifact's ([`key`], or an image
/// artifact's): a directory used in place is never packed.
#[must_use]
pub fn blob_key(artifact: &Path) -> Option<BlobKey> {
    let name = artifact.file_name()?.to_str()?;
    let addressed = (name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        || hangar_core::image::is_image_artifact_name(name);
    addressed
        .then(|| BlobKey::artifact(&format!("{name}.tar")))
        .flatten()
}

/// Packs the tree at `dir` into a plain tar at `to`: directories, files and
/// symlinks (not followed), with their owners and modes.
pub fn pack(dir: &Path, to: &Path) -> Result<(), BuildError> {
    let file = std::fs::File::create(to).map_err(|err| io(to, err))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).map_err(|err| io(dir, err))?;
    let mut out = tar.into_inner().map_err(|err| io(to, err))?;
    std::io::Write::flush(&mut out).map_err(|err| io(to, err))?;
    out.get_ref().sync_all().map_err(|err| io(to, err))
}

/// Runs blocking work on a blocking thread; a panic there is an error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(BuildError::Crashed(err.to_string())))
}

/// A scratch name beside `name` in `dir`, hidden and unique.
fn scratch(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    dir.join(format!(".{name}.{:016x}{suffix}", rand::random::<u64>()))
}

/// Puts the artifact published at `artifact` (under `artifacts`) in the
/// blob store, when the store is shared and does not have it yet, so every
/// server can start its replicas; `true` when it was packed and stored now.
/// An artifact outside `artifacts` (a directory used in place) is not
/// packed: it is where the build found it.
pub async fn share(
    artifact: &Path,
    artifacts: &Path,
    blobs: &dyn Blobs,
) -> Result<bool, BuildError> {
    if !blobs.shared() || artifact.parent() != Some(artifacts) {
        return Ok(false);
    }
    let Some(key) = blob_key(artifact) else {
        return Ok(false);
    };
    if blobs.exists(&key).await? {
        return Ok(false);
    }
    let name = key.as_str().trim_start_matches("artifacts/").to_owned();
    let packed = scratch(artifacts, &name, "");
    let (dir, to) = (artifact.to_path_buf(), packed.clone());
    let stored = async {
        blocking(move || pack(&dir, &to)).await?;
        blobs.put_file(&key, &packed).await?;
        Ok(true)
    }
    .await;
    let _ = tokio::fs::remove_file(&packed).await;
    stored
}

/// The artifact a build recorded as `recorded` (its path on the server
/// that built it), readable on this server: `recorded` itself when blobs
/// are not shared, when it is in this server's `artifacts`, or when the
/// blob store does not have it (a directory used in place, an artifact from
/// before blobs were shared); else this server's copy,
/// `artifacts/<name>`, unpacked from the blob store first when missing.
/// Servers whose data dirs have one path (containers: every pod's is the
/// same) record artifacts at the same path: one missing here was built by
/// another, and is fetched.
pub async fn local_copy(
    recorded: &str,
    artifacts: &Path,
    blobs: &dyn Blobs,
) -> Result<PathBuf, BuildError> {
    let path = Path::new(recorded);
    if !blobs.shared() || (path.parent() == Some(artifacts) && path.is_dir()) {
        return Ok(path.to_path_buf());
    }
    let (Some(key), Some(name)) = (blob_key(path), path.file_name()) else {
        return Ok(path.to_path_buf());
    };
    let copy = artifacts.join(name);
    if copy.is_dir() {
        return Ok(copy);
    }
    if !blobs.exists(&key).await? {
        return Ok(path.to_path_buf());
    }
    tokio::fs::create_dir_all(artifacts)
        .await
        .map_err(|err| io(artifacts, err))?;
    let name = name.to_string_lossy().into_owned();
    let packed = scratch(artifacts, &name, ".tar");
    if !blobs.get_file(&key, &packed).await? {
        return Ok(path.to_path_buf());
    }
    let unpacked = scratch(artifacts, &name, "");
    let (from, into, artifacts_dir, published) = (
        packed.clone(),
        unpacked.clone(),
        artifacts.to_path_buf(),
        name.clone(),
    );
    let copied = blocking(move || {
        std::fs::create_dir(&into).map_err(|err| io(&into, err))?;
        std::fs::set_permissions(&into, std::fs::Permissions::from_mode(0o755))
            .map_err(|err| io(&into, err))?;
        crate::archive::unpack_artifact(&from, &into, crate::archive::Limits::image())?;
        publish(&into, &artifacts_dir, &published)
    })
    .await;
    let _ = tokio::fs::remove_file(&packed).await;
    match &copied {
        Ok(copy) => tracing::info!(artifact = %name, copy = %copy.display(),
            "artifact fetched from {}: built by another server", blobs.describe()),
        Err(_) => {
            let _ = tokio::fs::remove_dir_all(&unpacked).await;
        }
    }
    copied
}
