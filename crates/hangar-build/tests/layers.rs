//! Unpacking OCI image layers into a root filesystem: whiteouts and opaque
//! directories hide what lower layers left, later layers replace earlier
//! ones, owners and modes are kept without setuid bits, and the attacks an
//! upload may try — escaping paths, writing or whiting out through a
//! symlink, devices — fail (or touch nothing) outside the root. The layers
//! are made here, byte by byte where the tar library would refuse to.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::TempDir;
use hangar_build::archive::{unpack_layers, Limits};
use hangar_build::BuildError;

/// One tar entry, written with raw names (tar's own setters refuse `..`).
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Owned(&'a str, &'a [u8], u32, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Device(&'a str),
    Fifo(&'a str),
}

fn raw_name(field: &mut [u8], name: &str) {
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

fn tar_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (name, kind, data, mode, owner, link): (
            &str,
            tar::EntryType,
            &[u8],
            u32,
            u64,
            Option<&str>,
        ) = match entry {
            Entry::File(name, data) => (name, tar::EntryType::Regular, data, 0o644, 0, None),
            Entry::Owned(name, data, mode, owner) => {
                (name, tar::EntryType::Regular, data, *mode, *owner, None)
            }
            Entry::Dir(name) => (name, tar::EntryType::Directory, b"", 0o755, 0, None),
            Entry::Symlink(name, to) => (name, tar::EntryType::Symlink, b"", 0o777, 0, Some(to)),
            Entry::HardLink(name, to) => (name, tar::EntryType::Link, b"", 0o644, 0, Some(to)),
            Entry::Device(name) => (name, tar::EntryType::Char, b"", 0o644, 0, None),
            Entry::Fifo(name) => (name, tar::EntryType::Fifo, b"", 0o644, 0, None),
        };
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner);
        header.set_gid(owner);
        header.set_size(data.len() as u64);
        raw_name(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            raw_name(&mut header.as_old_mut().linkname, link);
        }
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A case's directory: the layers, `root` to unpack into, and `outside`
/// (a stand-in for the host) whose files must survive.
struct Case {
    dir: TempDir,
}

impl Case {
    fn new() -> Self {
        let dir = TempDir::new();
        std::fs::create_dir(dir.path().join("root")).expect("root");
        std::fs::create_dir(dir.path().join("outside")).expect("outside");
        std::fs::write(dir.path().join("outside/victim"), "host file").expect("victim");
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn unpack(&self, layers: &[Vec<u8>]) -> Result<(), BuildError> {
        let files: Vec<PathBuf> = layers
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let path = self.dir.path().join(format!("layer-{i}"));
                std::fs::write(&path, bytes).expect("write");
                path
            })
            .collect();
        unpack_layers(&files, &self.root(), Limits::image())
    }

    fn outside_intact(&self) {
        assert_eq!(
            std::fs::read_to_string(self.outside().join("victim")).expect("the host file is there"),
            "host file"
        );
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("victim")]);
    }
}

fn exists(root: &Path, rel: &str) -> bool {
    root.join(rel).symlink_metadata().is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_layers() {
    let lower = tar_bytes(&[
        Entry::Dir("etc/"),
        Entry::File("etc/keep", b"kept"),
        Entry::File("etc/gone", b"removed by a whiteout"),
        Entry::Dir("data/"),
        Entry::File("data/a", b"lower"),
        Entry::Dir("data/sub/"),
        Entry::File("data/sub/b", b"lower"),
        Entry::Dir("bin/"),
        Entry::File("bin/tool", b"lower"),
        Entry::Dir("lib/"),
        Entry::File("lib/x", b"lower"),
        Entry::File("config", b"a file that becomes a directory"),
    ]);
    let upper = tar_bytes(&[
        Entry::File("etc/.wh.gone", b""),
        // An entry of this layer before its opaque marker stays.
        Entry::File("data/early", b"upper"),
        Entry::File("data/.wh..wh..opq", b""),
        Entry::File("data/late", b"upper"),
        // A whole directory whited out.
        Entry::File(".wh.bin", b""),
        // A directory replaced by a file, a file by a directory.
        Entry::File("lib", b"now a file"),
        Entry::Dir("config/"),
        Entry::File("config/inner", b"upper"),
        // Whiteouts of what is not there are nothing.
        Entry::File("etc/.wh.never", b""),
    ]);
    for layers in [
        vec![lower.clone(), upper.clone()],
        vec![gzip(&lower), gzip(&upper)],
    ] {
        let case = Case::new();
        case.unpack(&layers).expect("unpacks");
        let root = case.root();
        assert_eq!(names(&root.join("etc")), ["keep"]);
        assert_eq!(
            names(&root.join("data")),
            ["early", "late"],
            "the opaque directory keeps only the upper layer's entries"
        );
        assert!(!exists(&root, "bin"), "the whited-out directory is gone");
        assert_eq!(
            std::fs::read_to_string(root.join("lib")).expect("lib"),
            "now a file"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("config/inner")).expect("inner"),
            "upper"
        );
        assert!(
            !names(&root).iter().any(|n| n.starts_with(".wh.")),
            "no whiteout file is left: {:?}",
            names(&root)
        );
        case.outside_intact();
    }
}

#[test]
fn owners_and_modes_are_kept_without_setuid() {
    let layer = tar_bytes(&[
        Entry::Dir("home/"),
        Entry::Owned("home/secret", b"mine", 0o600, 1000),
        Entry::Owned("bin/su", b"#!/bin/sh\n", 0o4755, 0),
        Entry::Symlink("bin/sh", "/bin/busybox"),
        Entry::Symlink("usr/lib/up", "../../../../../etc"),
    ]);
    let case = Case::new();
    case.unpack(&[layer]).expect("unpacks");
    let root = case.root();
    let meta = |rel: &str| root.join(rel).symlink_metadata().expect("meta");
    assert_eq!(meta("home/secret").permissions().mode() & 0o7777, 0o600);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(meta("home/secret").uid(), 1000);
        assert_eq!(meta("home/secret").gid(), 1000);
    }
    assert_eq!(
        meta("bin/su").permissions().mode() & 0o7777,
        0o755,
        "never setuid"
    );
    // A root filesystem's absolute and climbing links resolve inside the
    // sandbox's root: kept as they are.
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).expect("link"),
        Path::new("/bin/busybox")
    );
    assert!(meta("usr/lib/up").file_type().is_symlink());
}

fn refused(result: Result<(), BuildError>, entry: &str) {
    let err = result.expect_err("must be refused");
    let msg = err.to_string();
    assert!(
        matches!(err, BuildError::UnsafeEntry { .. }),
        "{entry}: {msg}"
    );
    assert!(msg.contains(entry), "the message names {entry}: {msg}");
}

#[test]
fn unsafe_layer_entries_are_refused_and_touch_nothing_outside() {
    type Layers = fn(&str) -> Vec<Vec<u8>>;
    let cases: [(&str, Layers); 6] = [
        ("../escape", |_| {
            vec![tar_bytes(&[Entry::File("../escape", b"x")])]
        }),
        ("/abs", |_| vec![tar_bytes(&[Entry::File("/abs", b"x")])]),
        ("dev/null", |_| {
            vec![tar_bytes(&[Entry::Device("dev/null")])]
        }),
        ("pipe", |_| vec![tar_bytes(&[Entry::Fifo("pipe")])]),
        ("out/victim", |outside| {
            vec![
                tar_bytes(&[Entry::Symlink("out", outside)]),
                tar_bytes(&[Entry::File("out/victim", b"overwritten")]),
            ]
        }),
        ("copy", |_| {
            vec![tar_bytes(&[Entry::HardLink("copy", "../outside/victim")])]
        }),
    ];
    for (entry, layers) in cases {
        let case = Case::new();
        let outside = case.outside().display().to_string();
        refused(case.unpack(&layers(&outside)), entry);
        case.outside_intact();
    }
}

#[test]
fn whiteouts_beyond_a_symlink_remove_nothing_of_the_host() {
    let case = Case::new();
    let outside = case.outside().display().to_string();
    let layers = vec![
        tar_bytes(&[Entry::Symlink("out", &outside)]),
        tar_bytes(&[
            Entry::File("out/.wh.victim", b""),
            Entry::File("out/.wh..wh..opq", b""),
        ]),
    ];
    case.unpack(&layers)
        .expect("unpacks: nothing to remove inside");
    case.outside_intact();
    assert!(case.root().join("out").symlink_metadata().is_ok());
}

#[test]
fn layers_that_are_not_tar_are_refused_with_a_reason() {
    let case = Case::new();
    let zstd = vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    let err = case.unpack(&[zstd]).expect_err("zstd is not taken");
    assert!(err.to_string().contains("layer 1"), "{err}");
    assert!(err.to_string().contains("zstd"), "{err}");
}
