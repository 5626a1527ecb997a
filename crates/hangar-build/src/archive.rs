//! Unpacking an uploaded archive (`.tar.gz`, `.tar` or `.zip`) into a build's
//! fresh source directory — and nowhere else.
//!
//! An archive is whatever a client sent, so every entry is distrusted:
//!
//! - its path must be relative and stay inside the root (`..`, absolute paths
//!   and drive prefixes are refused, not rewritten);
//! - nothing is ever written through a symlink: each directory on the way to
//!   an entry must be a real directory made by this unpacking, so a symlink
//!   entry followed by a file "inside" it cannot reach out;
//! - a symlink's target must be relative and resolve inside the root, both as
//!   written and, once everything is unpacked, as the kernel resolves it
//!   (links through links: `s -> .` then `e -> s/..`);
//! - a hard link must name a regular file unpacked earlier;
//! - devices, FIFOs and anything else exotic are refused;
//! - at most [`Limits::max_entries`] entries and [`Limits::max_unpacked_bytes`]
//!   bytes of file content, counted as written (a header's claimed size is not
//!   trusted: a zip bomb stops at the limit).
//!
//! Any refusal fails the build with a message naming the entry. File modes are
//! normalized (0644, or 0755 when any execute bit was set; directories 0755):
//! no setuid bits, and everything readable by the sandbox's user. Owners and
//! times are not restored. The format is sniffed from the file's first bytes,
//! not from a name.
//!
//! # Image layers
//!
//! [`unpack_layers`] lays an OCI image's layers (gzip or plain tar) one over
//! the other into a root filesystem with the same distrust of entry paths,
//! links through directories and devices, plus what layers need:
//!
//! - whiteouts: `.wh.NAME` removes `NAME` as the layers below left it, and
//!   `.wh..wh..opq` empties its directory of what the layers below put
//!   there (entries of the same layer stay, whatever their order);
//! - a later layer replaces what an earlier one left at a path, a
//!   directory included (a directory entry over a directory keeps it);
//! - owners (numeric uid and gid) and permission bits are kept, as the
//!   image's processes expect them, but never setuid or setgid bits;
//! - symlinks may be absolute or climb: a root filesystem's links resolve
//!   inside the sandbox's root, where it is `/`. Nothing is ever written
//!   through one, and Hangar never follows one on the host.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::BuildError;

/// Bounds on what one archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files, directories, links).
    pub max_entries: usize,
    /// Most bytes of file content, all files together.
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: crate::artifact::MAX_ENTRIES,
            max_unpacked_bytes: 2 << 30,
        }
    }
}

impl Limits {
    /// Bounds on an OCI image's layers, all together: a distribution's root
    /// filesystem has tens of thousands of files.
    #[must_use]
    pub fn image() -> Self {
        Self {
            max_entries: 500_000,
            max_unpacked_bytes: 8 << 30,
        }
    }
}

/// The formats an upload may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TarGz,
    Tar,
    Zip,
}

fn sniff(file: &mut File) -> Result<Format, BuildError> {
    let mut head = [0u8; 512];
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) => return Err(archive_error(format!("cannot read the archive: {err}"))),
        }
    }
    file.rewind()
        .map_err(|err| archive_error(format!("cannot read the archive: {err}")))?;
    let head = &head[..read];
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::TarGz)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Format::Zip)
    } else if head.get(257..262) == Some(b"ustar") {
        Ok(Format::Tar)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(archive_error(
            "the archive is zstd-compressed: only gzip and plain tar are taken".to_owned(),
        ))
    } else {
        Err(archive_error(
            "the upload is not a .tar.gz, .tar or .zip archive".to_owned(),
        ))
    }
}

fn archive_error(message: String) -> BuildError {
    BuildError::Archive(message)
}

fn refuse(entry: &Path, why: impl Into<String>) -> BuildError {
    BuildError::UnsafeEntry {
        entry: entry.display().to_string(),
        why: why.into(),
    }
}

/// Unpacks the archive at `archive` into `root` (an empty directory) within
/// `limits`. On error `root` may hold part of the archive; nothing outside it
/// was touched.
pub fn unpack(archive: &Path, root: &Path, limits: Limits) -> Result<(), BuildError> {
    let mut file = File::open(archive).map_err(|err| BuildError::Io {
        path: archive.display().to_string(),
        source: err,
    })?;
    let mut out = Unpacker::new(root, limits, Mode::Upload);
    match sniff(&mut file)? {
        Format::TarGz => out.tar(flate2::read::GzDecoder::new(BufReader::new(file)))?,
        Format::Tar => out.tar(BufReader::new(file))?,
        Format::Zip => out.zip(file)?,
    }
    out.check_symlinks()
}

/// Unpacks the image layers at `layers`, lowest first, into `root` (an
/// empty directory) as one root filesystem, within `limits` for all of them
/// together (see the module docs). On error `root` may hold part of the
/// image; nothing outside it was touched.
pub fn unpack_layers(layers: &[PathBuf], root: &Path, limits: Limits) -> Result<(), BuildError> {
    let mut out = Unpacker::new(root, limits, Mode::Layer);
    for (index, layer) in layers.iter().enumerate() {
        let mut file = File::open(layer).map_err(|err| BuildError::Io {
            path: layer.display().to_string(),
            source: err,
        })?;
        let in_layer = |err: BuildError| match err {
            BuildError::Archive(message) => {
                BuildError::Archive(format!("layer {}: {message}", index + 1))
            }
            other => other,
        };
        match sniff(&mut file).map_err(in_layer)? {
            Format::TarGz => out
                .tar(flate2::read::GzDecoder::new(BufReader::new(file)))
                .map_err(in_layer)?,
            Format::Tar => out.tar(BufReader::new(file)).map_err(in_layer)?,
            Format::Zip => {
                return Err(in_layer(archive_error(
                    "a zip archive is not an image layer (gzip or plain tar)".to_owned(),
                )))
            }
        }
        out.end_layer()?;
    }
    Ok(())
}

/// Unpacks a packed artifact (a plain tar made by
/// [`crate::artifact::pack`], read back from the blob store) into `root` (an
/// empty directory) within `limits`. As an image layer: owners and
/// permission bits are kept (never setuid or setgid), symlinks may point
/// anywhere (they resolve inside a replica's root), but nothing is written
/// through one; unlike a layer, a `.wh.` name is a file like any other.
pub fn unpack_artifact(packed: &Path, root: &Path, limits: Limits) -> Result<(), BuildError> {
    let file = File::open(packed).map_err(|err| BuildError::Io {
        path: packed.display().to_string(),
        source: err,
    })?;
    let mut out = Unpacker::new(root, limits, Mode::Artifact);
    out.tar(BufReader::new(file))?;
    out.end_layer()
}

/// What one entry is.
enum Kind<'a> {
    Dir,
    File(&'a mut dyn Read, bool),
    Symlink(PathBuf),
    HardLink(PathBuf),
}

/// What an archive is unpacked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// An upload: a source tree, links kept inside it, modes normalized.
    Upload,
    /// An image layer over the layers before it (see the module docs).
    Layer,
    /// A packed artifact ([`unpack_artifact`]): as a layer, without whiteouts.
    Artifact,
}

/// A layer entry's owner and permission bits, as its header gives them.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// What a layer's whiteout entry asks for.
enum Whiteout {
    /// `.wh.NAME`: remove `NAME`.
    Remove(PathBuf),
    /// `.wh..wh..opq`: empty this directory of the lower layers' entries.
    Opaque(PathBuf),
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

struct Unpacker {
    root: PathBuf,
    limits: Limits,
    mode: Mode,
    entries: usize,
    bytes: u64,
    symlinks: Vec<PathBuf>,
    /// [`Mode::Layer`]: the paths the current layer wrote, which its own
    /// whiteouts leave alone.
    layer_paths: std::collections::HashSet<PathBuf>,
    /// [`Mode::Layer`]: directories' modes, set once the layer is written
    /// (a read-only directory must still take its entries).
    dir_modes: Vec<(PathBuf, u32)>,
    /// Whether owners can be set (only root may give files away).
    chown: bool,
}

impl Unpacker {
    fn new(root: &Path, limits: Limits, mode: Mode) -> Self {
        Self {
            root: root.to_path_buf(),
            limits,
            mode,
            entries: 0,
            bytes: 0,
            symlinks: Vec::new(),
            layer_paths: std::collections::HashSet::new(),
            dir_modes: Vec::new(),
            chown: nix::unistd::geteuid().is_root(),
        }
    }

    /// Ends a layer: its directories get their modes.
    fn end_layer(&mut self) -> Result<(), BuildError> {
        for (rel, mode) in self.dir_modes.drain(..).rev() {
            let path = self.root.join(&rel);
            if path.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|err| io(&rel, &err))?;
            }
        }
        self.layer_paths.clear();
        Ok(())
    }

    /// A layer entry's whiteout, if it is one.
    fn whiteout(&self, name: &Path) -> Result<Option<Whiteout>, BuildError> {
        if self.mode != Mode::Layer {
            return Ok(None);
        }
        let Some(file) = name.file_name().and_then(|f| f.to_str()) else {
            return Ok(None);
        };
        let Some(hidden) = file.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(None);
        };
        let dir = relative(name)?
            .and_then(|rel| rel.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        if file == OPAQUE_WHITEOUT {
            return Ok(Some(Whiteout::Opaque(dir)));
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(refuse(name, "a whiteout naming no entry"));
        }
        Ok(Some(Whiteout::Remove(dir.join(hidden))))
    }

    /// Carries out a whiteout on what the lower layers left.
    fn apply_whiteout(&mut self, name: &Path, whiteout: Whiteout) -> Result<(), BuildError> {
        self.count()?;
        let (Whiteout::Remove(rel) | Whiteout::Opaque(rel)) = &whiteout;
        // Nothing beyond a symlink is touched: it would be the host's.
        if !self.real_dirs_to(rel) {
            return Ok(());
        }
        match whiteout {
            Whiteout::Remove(rel) => {
                if !self.layer_paths.contains(&rel) {
                    remove_any(&self.root.join(&rel)).map_err(|err| io(name, &err))?;
                }
            }
            Whiteout::Opaque(dir) => {
                let path = self.root.join(&dir);
                if path.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
                    self.prune(&dir).map_err(|err| io(name, &err))?;
                }
            }
        }
        Ok(())
    }

    /// Removes everything under `dir` that the current layer did not write.
    fn prune(&self, dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(self.root.join(dir))? {
            let rel = dir.join(entry?.file_name());
            if !self.layer_paths.contains(&rel) {
                remove_any(&self.root.join(&rel))?;
            } else if self.root.join(&rel).symlink_metadata()?.is_dir() {
                self.prune(&rel)?;
            }
        }
        Ok(())
    }

    /// Whether every parent of `rel` is a real directory (or missing).
    fn real_dirs_to(&self, rel: &Path) -> bool {
        let mut dir = self.root.clone();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            match dir.symlink_metadata() {
                Ok(meta) if meta.is_dir() => {}
                _ => return false,
            }
        }
        true
    }

    fn count(&mut self) -> Result<(), BuildError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(BuildError::ArchiveTooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn tar(&mut self, reader: impl Read) -> Result<(), BuildError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|err| archive_error(format!("not a valid tar archive: {err}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|err| archive_error(format!("not a valid tar archive: {err}")))?;
            let name = entry
                .path()
                .map_err(|err| archive_error(format!("a tar entry's name is unreadable: {err}")))?
                .into_owned();
            if let Some(whiteout) = self.whiteout(&name)? {
                self.apply_whiteout(&name, whiteout)?;
                continue;
            }
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().unwrap_or(0o644);
            let executable = mode & 0o111 != 0;
            let owner = (self.mode != Mode::Upload).then(|| Owner {
                uid: header
                    .uid()
                    .ok()
                    .and_then(|id| u32::try_from(id).ok())
                    .unwrap_or(0),
                gid: header
                    .gid()
                    .ok()
                    .and_then(|id| u32::try_from(id).ok())
                    .unwrap_or(0),
                mode,
            });
            let link = entry
                .link_name()
                .map_err(|err| refuse(&name, format!("its link target is unreadable: {err}")))?
                .map(std::borrow::Cow::into_owned);
            use tar::EntryType as T;
            match kind {
                T::Regular | T::Continuous => {
                    self.entry(&name, Kind::File(&mut entry, executable), owner)?;
                }
                T::Directory => self.entry(&name, Kind::Dir, owner)?,
                T::Symlink => {
                    let target = link.ok_or_else(|| refuse(&name, "a symlink without a target"))?;
                    self.entry(&name, Kind::Symlink(target), owner)?;
                }
                T::Link => {
                    let target =
                        link.ok_or_else(|| refuse(&name, "a hard link without a target"))?;
                    self.entry(&name, Kind::HardLink(target), owner)?;
                }
                // Metadata for the entries that follow; nothing to unpack.
                T::XGlobalHeader | T::XHeader => {}
                T::Char | T::Block => {
                    return Err(refuse(&name, "device files cannot be part of an agent"))
                }
                T::Fifo => return Err(refuse(&name, "FIFOs cannot be part of an agent")),
                other => {
                    return Err(refuse(
                        &name,
                        format!("unsupported tar entry type {:?}", other.as_byte() as char),
                    ))
                }
            }
        }
        Ok(())
    }

    fn zip(&mut self, file: File) -> Result<(), BuildError> {
        let mut archive = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|err| archive_error(format!("not a valid zip archive: {err}")))?;
        if archive.len() > self.limits.max_entries {
            return Err(BuildError::ArchiveTooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        for index in 0..archive.len() {
            let mut entry = archive
                .by_index(index)
                .map_err(|err| archive_error(format!("not a valid zip archive: {err}")))?;
            let name = PathBuf::from(entry.name());
            let mode = entry.unix_mode().unwrap_or(0);
            const TYPE_MASK: u32 = 0o170_000;
            match mode & TYPE_MASK {
                0o120_000 => {
                    let mut target = String::new();
                    (&mut entry)
                        .take(4096)
                        .read_to_string(&mut target)
                        .map_err(|err| {
                            refuse(&name, format!("unreadable symlink target: {err}"))
                        })?;
                    self.entry(&name, Kind::Symlink(PathBuf::from(target)), None)?;
                }
                0o020_000 | 0o060_000 => {
                    return Err(refuse(&name, "device files cannot be part of an agent"))
                }
                0o010_000 | 0o140_000 => {
                    return Err(refuse(
                        &name,
                        "FIFOs and sockets cannot be part of an agent",
                    ))
                }
                _ if entry.is_dir() => self.entry(&name, Kind::Dir, None)?,
                _ => {
                    let executable = mode & 0o111 != 0;
                    self.entry(&name, Kind::File(&mut entry, executable), None)?;
                }
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &Path,
        kind: Kind<'_>,
        owner: Option<Owner>,
    ) -> Result<(), BuildError> {
        self.count()?;
        let Some(rel) = relative(name)? else {
            // The root itself ("./").
            return Ok(());
        };
        let path = self.root.join(&rel);
        self.make_parents(name, &rel)?;
        let existing = path.symlink_metadata().ok();
        let is_dir = matches!(kind, Kind::Dir);
        self.write(name, &rel, &path, kind, existing.as_ref())?;
        if self.mode != Mode::Upload {
            // A layer's parents count as its own too: its opaque whiteout
            // must not take them away from under its entries.
            for ancestor in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
                if !self.layer_paths.insert(ancestor.to_path_buf()) {
                    break;
                }
            }
        }
        if let Some(owner) = owner {
            if self.chown {
                std::os::unix::fs::lchown(&path, Some(owner.uid), Some(owner.gid))
                    .map_err(|err| io(name, &err))?;
            }
            // Never setuid or setgid; the sticky bit only matters on
            // directories (`/tmp`).
            if is_dir {
                self.dir_modes.push((rel, owner.mode & 0o1777));
            } else if path.symlink_metadata().is_ok_and(|meta| meta.is_file()) {
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(owner.mode & 0o777),
                )
                .map_err(|err| io(name, &err))?;
            }
        }
        Ok(())
    }

    fn write(
        &mut self,
        name: &Path,
        rel: &Path,
        path: &Path,
        kind: Kind<'_>,
        existing: Option<&std::fs::Metadata>,
    ) -> Result<(), BuildError> {
        match kind {
            Kind::Dir => match existing {
                Some(meta) if meta.is_dir() => Ok(()),
                Some(_) if self.mode != Mode::Upload => {
                    remove_any(path).map_err(|err| io(name, &err))?;
                    make_dir(path).map_err(|err| io(name, &err))
                }
                Some(_) => Err(refuse(name, "a directory where another entry already is")),
                None => make_dir(path).map_err(|err| io(name, &err)),
            },
            Kind::File(reader, executable) => {
                self.clear(name, path, existing)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if executable { 0o755 } else { 0o644 })
                    .open(path)
                    .map_err(|err| io(name, &err))?;
                let room = self.limits.max_unpacked_bytes.saturating_sub(self.bytes);
                let copied = std::io::copy(&mut reader.take(room.saturating_add(1)), &mut file)
                    .map_err(|err| io(name, &err))?;
                if copied > room {
                    return Err(BuildError::ArchiveTooLarge {
                        entry: name.display().to_string(),
                        limit: self.limits.max_unpacked_bytes,
                    });
                }
                self.bytes += copied;
                file.flush().map_err(|err| io(name, &err))?;
                // The umask may have taken bits off.
                let mode = if executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|err| io(name, &err))
            }
            Kind::Symlink(target) => {
                if self.mode != Mode::Upload {
                    if target.as_os_str().is_empty() {
                        return Err(refuse(name, "a symlink with an empty target"));
                    }
                } else {
                    check_symlink_target(name, rel, &target)?;
                }
                self.clear(name, path, existing)?;
                std::os::unix::fs::symlink(&target, path).map_err(|err| io(name, &err))?;
                if self.mode == Mode::Upload {
                    self.symlinks.push(rel.to_path_buf());
                }
                Ok(())
            }
            Kind::HardLink(target) => {
                let Some(source_rel) = relative(&target).map_err(|_| {
                    refuse(
                        name,
                        format!("a hard link to {} outside the archive", target.display()),
                    )
                })?
                else {
                    return Err(refuse(name, "a hard link to the archive's root"));
                };
                // The source must be a regular file reached through real directories.
                self.check_parents(name, &source_rel)?;
                let source = self.root.join(&source_rel);
                match source.symlink_metadata() {
                    Ok(meta) if meta.is_file() => {}
                    _ => {
                        return Err(refuse(
                            name,
                            format!(
                                "a hard link to {}, which is not a file unpacked before it",
                                target.display()
                            ),
                        ))
                    }
                }
                self.clear(name, path, existing)?;
                std::fs::hard_link(&source, path).map_err(|err| io(name, &err))
            }
        }
    }

    /// Removes what an earlier entry left at `path` (a later entry replaces
    /// it, as tar does); a directory is not replaced.
    fn clear(
        &self,
        name: &Path,
        path: &Path,
        existing: Option<&std::fs::Metadata>,
    ) -> Result<(), BuildError> {
        match existing {
            None => Ok(()),
            Some(meta) if meta.is_dir() && self.mode != Mode::Upload => {
                std::fs::remove_dir_all(path).map_err(|err| io(name, &err))
            }
            Some(meta) if meta.is_dir() => Err(refuse(name, "replaces a directory")),
            Some(_) => std::fs::remove_file(path).map_err(|err| io(name, &err)),
        }
    }

    /// Makes `rel`'s parent directories, refusing to pass through anything
    /// that is not a real directory.
    fn make_parents(&self, name: &Path, rel: &Path) -> Result<(), BuildError> {
        let mut dir = self.root.clone();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for part in parent.components() {
            dir.push(part);
            match dir.symlink_metadata() {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refuse(
                        name,
                        format!(
                            "it lies beyond the symlink {}",
                            dir.strip_prefix(&self.root).unwrap_or(&dir).display()
                        ),
                    ))
                }
                Ok(_) => return Err(refuse(name, "its parent is a file")),
                Err(_) => make_dir(&dir).map_err(|err| io(name, &err))?,
            }
        }
        Ok(())
    }

    /// Checks `rel`'s parents are real directories (without making any).
    fn check_parents(&self, name: &Path, rel: &Path) -> Result<(), BuildError> {
        let mut dir = self.root.clone();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            match dir.symlink_metadata() {
                Ok(meta) if meta.is_dir() => {}
                _ => {
                    return Err(refuse(
                        name,
                        "a hard link through something not a directory",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Once everything is unpacked: every symlink that resolves must resolve
    /// inside the root (links through links can climb where no single one
    /// does). Dangling ones may stay: they lead nowhere.
    fn check_symlinks(&self) -> Result<(), BuildError> {
        let root = self
            .root
            .canonicalize()
            .map_err(|err| io(&self.root, &err))?;
        for rel in &self.symlinks {
            if let Ok(resolved) = self.root.join(rel).canonicalize() {
                if !resolved.starts_with(&root) {
                    return Err(refuse(rel, "a symlink that resolves outside the archive"));
                }
            }
        }
        Ok(())
    }
}

/// Removes whatever is at `path` (a directory with all it holds; a symlink
/// itself, not its target); nothing there is success.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match path.symlink_metadata() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

fn make_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

fn io(name: &Path, err: &std::io::Error) -> BuildError {
    refuse(name, format!("cannot unpack it: {err}"))
}

/// An entry's name as a path relative to the root; `None` for the root itself.
fn relative(name: &Path) -> Result<Option<PathBuf>, BuildError> {
    let mut rel = PathBuf::new();
    for part in name.components() {
        match part {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(name, "its path leads outside the archive (..)"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(name, "its path is absolute"))
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// A symlink at `rel` to `target`: relative, and not climbing above the root
/// as written.
fn check_symlink_target(name: &Path, rel: &Path, target: &Path) -> Result<(), BuildError> {
    let outside = || {
        refuse(
            name,
            format!("a symlink to {}, outside the archive", target.display()),
        )
    };
    let mut depth = rel.components().count().saturating_sub(1);
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(outside)?,
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    if target.as_os_str().is_empty() {
        return Err(refuse(name, "a symlink with an empty target"));
    }
    Ok(())
}

/// Checks a tree that did not come through [`unpack`] (a git checkout): at
/// most `max_entries` entries, and every symlink relative and resolving
/// inside it when it resolves at all.
pub fn check_links(root: &Path, max_entries: usize) -> Result<(), BuildError> {
    let entries = crate::artifact::walk(root)?;
    if entries.len() > max_entries {
        return Err(BuildError::TooManyEntries {
            dir: root.display().to_string(),
            limit: max_entries,
        });
    }
    let canonical = root.canonicalize().map_err(|err| io(root, &err))?;
    for (rel, meta) in entries {
        if !meta.file_type().is_symlink() {
            continue;
        }
        let path = root.join(&rel);
        let target = std::fs::read_link(&path).map_err(|err| io(&rel, &err))?;
        check_symlink_target(&rel, &rel, &target)?;
        if let Ok(resolved) = path.canonicalize() {
            if !resolved.starts_with(&canonical) {
                return Err(refuse(&rel, "a symlink that resolves outside the source"));
            }
        }
    }
    Ok(())
}

/// Whether a file starts like one of the archives this module unpacks (the
/// upload route refuses anything else at once).
pub fn looks_like_archive(mut reader: impl Read + Seek) -> bool {
    let mut head = [0u8; 512];
    let mut read = 0;
    while read < head.len() {
        match reader.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let head = &head[..read];
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"PK\x03\x04")
        || head.starts_with(b"PK\x05\x06")
        || head.get(257..262) == Some(b"ustar")
}
