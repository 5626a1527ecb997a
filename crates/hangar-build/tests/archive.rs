//! Unpacking uploads: good archives unpack, and every attack — escaping
//! paths, links out, devices, bombs — fails naming the entry, with nothing
//! written outside the build's directory. The malicious archives are made
//! here, byte by byte where the archive libraries would refuse to write them.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::TempDir;
use hangar_build::archive::{check_links, unpack, Limits};
use hangar_build::BuildError;

/// One tar entry, written with raw names (tar's own setters refuse `..`).
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
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
        let (name, kind, data, mode, link): (&str, tar::EntryType, &[u8], u32, Option<&str>) =
            match entry {
                Entry::File(name, data, mode) => (name, tar::EntryType::Regular, data, *mode, None),
                Entry::Dir(name) => (name, tar::EntryType::Directory, b"", 0o755, None),
                Entry::Symlink(name, to) => (name, tar::EntryType::Symlink, b"", 0o777, Some(to)),
                Entry::HardLink(name, to) => (name, tar::EntryType::Link, b"", 0o644, Some(to)),
                Entry::Device(name) => (name, tar::EntryType::Char, b"", 0o644, None),
                Entry::Fifo(name) => (name, tar::EntryType::Fifo, b"", 0o644, None),
            };
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        raw_name(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            raw_name(&mut header.as_old_mut().linkname, link);
        }
        if matches!(entry, Entry::Device(_)) {
            header.set_device_major(1).expect("major");
            header.set_device_minor(3).expect("minor");
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

/// A case's directory: the archive, and `root` to unpack into. Anything
/// else that appears in it was written outside the root.
struct Case {
    dir: TempDir,
}

impl Case {
    fn new() -> Self {
        let dir = TempDir::new();
        std::fs::create_dir(dir.path().join("root")).expect("root");
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn unpack(&self, archive: &[u8], limits: Limits) -> Result<(), BuildError> {
        let path = self.dir.path().join("upload");
        std::fs::write(&path, archive).expect("write");
        let result = unpack(&path, &self.root(), limits);
        std::fs::remove_file(&path).expect("rm");
        result
    }

    /// Nothing but `root` next to it.
    fn nothing_outside(&self) {
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("root")]);
    }
}

fn refused(result: Result<(), BuildError>, entry: &str) -> String {
    let err = result.expect_err("must be refused");
    let msg = err.to_string();
    assert!(
        matches!(err, BuildError::UnsafeEntry { .. }),
        "{entry}: {msg}"
    );
    assert!(msg.contains(entry), "the message names {entry}: {msg}");
    msg
}

#[test]
fn good_archives_unpack_with_normalized_modes() {
    let tar = tar_bytes(&[
        Entry::Dir("./"),
        Entry::File("./main.py", b"print('hi')\n", 0o600),
        Entry::File("bin/run", b"#!/bin/sh\n", 0o4700),
        Entry::Symlink("lib", "bin"),
        Entry::Symlink("bin/up", "../main.py"),
        Entry::HardLink("copy.py", "main.py"),
    ]);
    for archive in [tar.clone(), gzip(&tar)] {
        let case = Case::new();
        case.unpack(&archive, Limits::default()).expect("unpacks");
        let root = case.root();
        assert_eq!(
            std::fs::read_to_string(root.join("main.py")).expect("read"),
            "print('hi')\n"
        );
        let mode = |p: &str| {
            std::fs::symlink_metadata(root.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("main.py"), 0o644);
        assert_eq!(mode("bin/run"), 0o755, "no setuid bit, readable by all");
        assert_eq!(mode("bin"), 0o755);
        assert_eq!(
            std::fs::read_link(root.join("lib")).expect("link"),
            Path::new("bin")
        );
        assert_eq!(
            std::fs::read_to_string(root.join("copy.py")).expect("hard link"),
            "print('hi')\n"
        );
        case.nothing_outside();
    }

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.add_directory("pkg/", options).expect("dir");
    zip.start_file("pkg/app.py", options).expect("file");
    zip.write_all(b"print('zip')\n").expect("write");
    zip.add_symlink("app", "pkg/app.py", options)
        .expect("symlink");
    let zip = zip.finish().expect("zip").into_inner();
    let case = Case::new();
    case.unpack(&zip, Limits::default()).expect("unpacks");
    assert_eq!(
        std::fs::read_to_string(case.root().join("app")).expect("through the link"),
        "print('zip')\n"
    );
    case.nothing_outside();
}

#[test]
fn paths_escaping_the_root_are_refused() {
    let absolute = TempDir::new();
    let planted = absolute.path().join("planted.txt");
    let planted_name = planted.display().to_string();
    for (entries, name) in [
        (vec![Entry::File("../evil.txt", b"x", 0o644)], "../evil.txt"),
        (
            vec![Entry::File("a/../../evil.txt", b"x", 0o644)],
            "a/../../evil.txt",
        ),
        (
            vec![Entry::File(&planted_name, b"x", 0o644)],
            planted_name.as_str(),
        ),
        (vec![Entry::Dir("../outdir")], "../outdir"),
    ] {
        let case = Case::new();
        let tar = tar_bytes(&entries);
        refused(case.unpack(&gzip(&tar), Limits::default()), name);
        case.nothing_outside();
        assert!(!planted.exists());
    }
    // The same in a zip.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("../zip-evil.txt", zip::write::SimpleFileOptions::default())
        .expect("file");
    zip.write_all(b"x").expect("write");
    let zip = zip.finish().expect("zip").into_inner();
    let case = Case::new();
    refused(case.unpack(&zip, Limits::default()), "../zip-evil.txt");
    case.nothing_outside();
}

#[test]
fn links_pointing_outside_are_refused() {
    let outside = TempDir::new();
    outside.file("secret.txt", "s3cret\n");
    let secret = outside.path().join("secret.txt").display().to_string();
    let cases: Vec<(Vec<Entry<'_>>, &str)> = vec![
        // Symlinks out, absolute or climbing.
        (vec![Entry::Symlink("etc", "/etc")], "etc"),
        (vec![Entry::Symlink("up", "../..")], "up"),
        (vec![Entry::Symlink("deep/up", "../../x")], "deep/up"),
        // A link to a link that climbs only once both resolve.
        (
            vec![Entry::Symlink("s", "."), Entry::Symlink("e", "s/..")],
            "e",
        ),
        // Writing through a symlink, even one that stays inside.
        (
            vec![
                Entry::Dir("sub"),
                Entry::Symlink("in", "sub"),
                Entry::File("in/x.txt", b"x", 0o644),
            ],
            "in/x.txt",
        ),
        // Hard links to files outside.
        (vec![Entry::HardLink("h", &secret)], "h"),
        (vec![Entry::HardLink("h2", "../../etc/passwd")], "h2"),
        (vec![Entry::HardLink("h3", "missing.txt")], "h3"),
    ];
    for (entries, name) in cases {
        let case = Case::new();
        refused(case.unpack(&tar_bytes(&entries), Limits::default()), name);
        case.nothing_outside();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret.txt")).expect("intact"),
            "s3cret\n"
        );
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.add_symlink(
        "shadow",
        "/etc/shadow",
        zip::write::SimpleFileOptions::default(),
    )
    .expect("symlink");
    let zip = zip.finish().expect("zip").into_inner();
    let case = Case::new();
    refused(case.unpack(&zip, Limits::default()), "shadow");
}

#[test]
fn devices_and_fifos_are_refused() {
    for (entry, name) in [
        (Entry::Device("dev/null"), "dev/null"),
        (Entry::Fifo("pipe"), "pipe"),
    ] {
        let case = Case::new();
        let msg = refused(case.unpack(&tar_bytes(&[entry]), Limits::default()), name);
        assert!(msg.contains("cannot be part of an agent"), "{msg}");
        assert!(!case.root().join(name).exists());
        case.nothing_outside();
    }
}

#[test]
fn too_many_entries_or_bytes_are_refused() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry<'_>> = names.iter().map(|n| Entry::File(n, b"x", 0o644)).collect();
    let case = Case::new();
    let err = case
        .unpack(
            &tar_bytes(&entries),
            Limits {
                max_entries: 10,
                max_unpacked_bytes: 1 << 20,
            },
        )
        .expect_err("too many");
    assert!(
        matches!(err, BuildError::ArchiveTooManyEntries { limit: 10 }),
        "{err}"
    );
    case.nothing_outside();

    // A bomb: 8 MiB of zeros compress to a few KiB; the limit is 1 MiB.
    let zeros = vec![0u8; 8 << 20];
    let bomb = gzip(&tar_bytes(&[Entry::File("zeros.bin", &zeros, 0o644)]));
    assert!(bomb.len() < 100 << 10);
    let case = Case::new();
    let err = case
        .unpack(
            &bomb,
            Limits {
                max_entries: 10,
                max_unpacked_bytes: 1 << 20,
            },
        )
        .expect_err("too large");
    assert!(matches!(err, BuildError::ArchiveTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("zeros.bin"), "{err}");
    case.nothing_outside();
}

/// A tree that was not unpacked here (a clone) is held to the limit it is
/// checked with, and the message names that limit, not the default one.
#[test]
fn a_checked_tree_over_its_limit_names_that_limit() {
    let case = Case::new();
    for i in 0..5 {
        std::fs::write(case.root().join(format!("f{i}")), "x").expect("write");
    }
    let err = check_links(&case.root(), 3).expect_err("too many");
    assert!(
        matches!(err, BuildError::TooManyEntries { limit: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("more than 3 entries"), "{err}");
}

#[test]
fn something_else_than_an_archive_is_refused() {
    let case = Case::new();
    let err = case
        .unpack(b"#!/bin/sh\necho not an archive\n", Limits::default())
        .expect_err("not an archive");
    assert!(matches!(err, BuildError::Archive(_)), "{err}");
    assert!(err.to_string().contains(".tar.gz, .tar or .zip"), "{err}");
}
