//! Packs a directory into the `.tar.gz` that `hangar deploy` uploads: the
//! files git would take — `.gitignore` (also in parent directories, and
//! without a repository), `.git/info/exclude`, the global excludes, `.ignore`
//! and `.hangarignore` are honoured by the `ignore` crate's walker, the one
//! ripgrep uses — and never `.git/` itself, whose history is no part of an
//! agent. Hidden files are kept (`.python-version`, `.npmrc`): only ignore
//! files leave things out. Entries are sorted, so the same tree packs the same.

use std::path::Path;

use anyhow::Context;
use flate2::write::GzEncoder;
use flate2::Compression;

/// A packed directory.
#[derive(Debug)]
pub struct Packed {
    /// The `.tar.gz`.
    pub archive: Vec<u8>,
    /// The paths of the regular files in it, relative, with `/`.
    pub files: Vec<String>,
}

/// Custom ignore file read besides `.gitignore` and `.ignore`: for what git
/// should keep but an agent's archive need not.
pub const HANGAR_IGNORE: &str = ".hangarignore";

/// Packs `dir` (see the module docs).
pub fn pack(dir: &Path) -> anyhow::Result<Packed> {
    let mut walk = ignore::WalkBuilder::new(dir);
    walk.hidden(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(HANGAR_IGNORE)
        .filter_entry(|entry| entry.file_name() != ".git")
        .sort_by_file_name(|a, b| a.cmp(b));
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    // Symlinks go in as links; the server checks where they point.
    tar.follow_symlinks(false);
    let mut files = Vec::new();
    for entry in walk.build() {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        let relative = path
            .strip_prefix(dir)
            .with_context(|| format!("{} is outside {}", path.display(), dir.display()))?;
        if relative.as_os_str().is_empty() {
            continue; // the root itself
        }
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue; // sockets, FIFOs, devices: nothing an archive should carry
        }
        tar.append_path_with_name(path, relative)
            .with_context(|| format!("cannot pack {}", path.display()))?;
        if kind.is_file() {
            files.push(relative.to_string_lossy().into_owned());
        }
    }
    let archive = tar
        .into_inner()
        .and_then(GzEncoder::finish)
        .context("cannot finish the archive")?;
    Ok(Packed { archive, files })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// The entries of a packed archive: path → contents (directories "/").
    fn entries(archive: &[u8]) -> Vec<(String, String)> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        let mut out = Vec::new();
        for entry in tar.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut text = String::new();
            if entry.header().entry_type().is_dir() {
                text.push('/');
            } else {
                entry.read_to_string(&mut text).expect("read");
            }
            out.push((path, text));
        }
        out
    }

    #[test]
    fn ignored_files_and_git_stay_out() {
        let root = std::env::temp_dir().join(format!("hangar-pack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        write(&root, "main.py", "print('hi')\n");
        write(&root, ".gitignore", "secret.txt\n/build/\n*.log\n");
        write(&root, "secret.txt", "hunter2");
        write(&root, "build/out.bin", "x");
        write(&root, "lib/util.py", "X = 1\n");
        write(&root, "lib/debug.log", "noise");
        write(&root, "lib/.gitignore", "local.txt\n");
        write(&root, "lib/local.txt", "only here");
        write(&root, ".python-version", "3.11\n");
        write(&root, ".hangarignore", "docs/\n");
        write(&root, "docs/big.md", "#");
        // A repository's own data never goes, whatever the ignore files say.
        write(&root, ".git/HEAD", "ref: refs/heads/main\n");
        write(&root, ".git/config", "[core]\n");
        std::os::unix::fs::symlink("main.py", root.join("entry.py")).expect("symlink");

        let packed = pack(&root).expect("pack");
        let got = entries(&packed.archive);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".gitignore",
                ".hangarignore",
                ".python-version",
                "entry.py",
                "lib",
                "lib/.gitignore",
                "lib/util.py",
                "main.py",
            ],
            "{got:?}"
        );
        assert!(got.contains(&("main.py".to_owned(), "print('hi')\n".to_owned())));
        assert_eq!(
            packed.files,
            [
                ".gitignore",
                ".hangarignore",
                ".python-version",
                "lib/.gitignore",
                "lib/util.py",
                "main.py"
            ]
        );
        // The same tree packs the same.
        assert_eq!(pack(&root).expect("again").archive, packed.archive);
        let _ = std::fs::remove_dir_all(&root);
    }
}
