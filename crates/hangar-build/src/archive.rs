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

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::source::BuildError;

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
            max_entries: crate::source::MAX_ENTRIES,
            max_unpacked_bytes: 2 << 30,
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
    let mut out = Unpacker {
        root: root.to_path_buf(),
        limits,
        entries: 0,
        bytes: 0,
        symlinks: Vec::new(),
    };
    match sniff(&mut file)? {
        Format::TarGz => out.tar(flate2::read::GzDecoder::new(BufReader::new(file)))?,
        Format::Tar => out.tar(BufReader::new(file))?,
        Format::Zip => out.zip(file)?,
    }
    out.check_symlinks()
}

/// What one entry is.
enum Kind<'a> {
    Dir,
    File(&'a mut dyn Read, bool),
    Symlink(PathBuf),
    HardLink(PathBuf),
}

struct Unpacker {
    root: PathBuf,
    limits: Limits,
    entries: usize,
    bytes: u64,
    symlinks: Vec<PathBuf>,
}

impl Unpacker {
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
            let header = entry.header();
            let kind = header.entry_type();
            let executable = header.mode().unwrap_or(0o644) & 0o111 != 0;
            let link = entry
                .link_name()
                .map_err(|err| refuse(&name, format!("its link target is unreadable: {err}")))?
                .map(std::borrow::Cow::into_owned);
            use tar::EntryType as T;
            match kind {
                T::Regular | T::Continuous => {
                    self.entry(&name, Kind::File(&mut entry, executable))?;
                }
                T::Directory => self.entry(&name, Kind::Dir)?,
                T::Symlink => {
                    let target = link.ok_or_else(|| refuse(&name, "a symlink without a target"))?;
                    self.entry(&name, Kind::Symlink(target))?;
                }
                T::Link => {
                    let target =
                        link.ok_or_else(|| refuse(&name, "a hard link without a target"))?;
                    self.entry(&name, Kind::HardLink(target))?;
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
                    self.entry(&name, Kind::Symlink(PathBuf::from(target)))?;
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
                _ if entry.is_dir() => self.entry(&name, Kind::Dir)?,
                _ => {
                    let executable = mode & 0o111 != 0;
                    self.entry(&name, Kind::File(&mut entry, executable))?;
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &Path, kind: Kind<'_>) -> Result<(), BuildError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(BuildError::ArchiveTooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let Some(rel) = relative(name)? else {
            // The root itself ("./").
            return Ok(());
        };
        let path = self.root.join(&rel);
        self.make_parents(name, &rel)?;
        let existing = path.symlink_metadata().ok();
        match kind {
            Kind::Dir => match existing {
                Some(meta) if meta.is_dir() => Ok(()),
                Some(_) => Err(refuse(name, "a directory where another entry already is")),
                None => make_dir(&path).map_err(|err| io(name, &err)),
            },
            Kind::File(reader, executable) => {
                self.clear(name, &path, existing.as_ref())?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if executable { 0o755 } else { 0o644 })
                    .open(&path)
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
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|err| io(name, &err))
            }
            Kind::Symlink(target) => {
                check_symlink_target(name, &rel, &target)?;
                self.clear(name, &path, existing.as_ref())?;
                std::os::unix::fs::symlink(&target, &path).map_err(|err| io(name, &err))?;
                self.symlinks.push(rel);
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
                self.clear(name, &path, existing.as_ref())?;
                std::fs::hard_link(&source, &path).map_err(|err| io(name, &err))
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
