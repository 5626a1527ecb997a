//! What a source becomes, on real directories.

mod common;

use std::os::unix::fs::symlink;

use common::TempDir;
use hangar_build::source::{fetch, Fetch, MAX_ENTRIES};
use hangar_build::{Artifact, BuildError, Fetched};
use hangar_core::spec::Source;

/// Fetches a source that needs no scratch space: a plain directory, used in
/// place.
fn build(source: &Source) -> Result<Artifact, BuildError> {
    let work = TempDir::new();
    let fetched = fetch(
        source,
        &Fetch {
            work: work.path(),
            uploads: work.path(),
            limits: Default::default(),
            git_timeout: std::time::Duration::from_secs(60),
            repo: None,
        },
    )?;
    match fetched {
        Fetched::InPlace(artifact) => Ok(artifact),
        other => panic!("not in place: {other:?}"),
    }
}

fn dir_source(repo: String, path: Option<&str>) -> Source {
    Source::Github {
        repo,
        branch: None,
        path: path.map(str::to_owned),
        commit: None,
    }
}

fn canonical(dir: &TempDir, sub: &str) -> String {
    dir.path()
        .join(sub)
        .canonicalize()
        .expect("canonical")
        .to_str()
        .expect("utf-8")
        .to_owned()
}

#[test]
fn a_plain_directory_is_the_artifact() {
    let d = TempDir::new();
    d.file("main.py", "print('hi')\n");
    d.file("lib/util.py", "X = 1\n");
    let artifact = build(&dir_source(d.url(""), None)).expect("builds");
    assert_eq!(artifact.path, canonical(&d, ""));
    assert!(artifact
        .log
        .iter()
        .any(|l| l == &format!("using the directory {} as the artifact", artifact.path)));
    // Any of the runnable files will do; `localhost` URLs too.
    for (file, text) in [("hangar.toml", ""), ("app.py", ""), ("package.json", "{}")] {
        let d = TempDir::new();
        d.file(file, text);
        let url = d.url("").replacen("file://", "file://localhost", 1);
        assert!(build(&dir_source(url, None)).is_ok(), "{file}");
    }
}

#[test]
fn a_subdirectory_inside_it_is_the_artifact() {
    let d = TempDir::new();
    d.file("README", "top\n");
    d.file("agents/echo/app.py", "print('hi')\n");
    let artifact = build(&dir_source(d.url(""), Some("agents/echo"))).expect("builds");
    assert_eq!(artifact.path, canonical(&d, "agents/echo"));
    // A symlink that stays inside is fine.
    symlink(d.path().join("agents/echo"), d.path().join("current")).expect("symlink");
    let artifact = build(&dir_source(d.url(""), Some("current"))).expect("builds");
    assert_eq!(artifact.path, canonical(&d, "agents/echo"));
    // A branch does not apply to a plain directory, and the log says so.
    let artifact = build(&Source::Github {
        repo: d.url(""),
        branch: Some("main".into()),
        path: Some("agents/echo".into()),
        commit: None,
    })
    .expect("builds");
    assert!(
        artifact.log[0].contains("branch 'main' does not apply"),
        "{:?}",
        artifact.log
    );
}

#[test]
fn a_missing_directory_or_a_file_fails() {
    let d = TempDir::new();
    let err = build(&dir_source(d.url("nope"), None)).expect_err("missing");
    assert!(matches!(err, BuildError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    d.file("main.py", "");
    let err = build(&dir_source(d.url("main.py"), None)).expect_err("a file");
    assert!(matches!(err, BuildError::NotADirectory { .. }), "{err}");
    let err = build(&dir_source(d.url(""), Some("nope"))).expect_err("missing sub");
    assert!(matches!(err, BuildError::Missing { .. }), "{err}");
    let err = build(&dir_source("file://elsewhere/srv".into(), None)).expect_err("remote host");
    assert!(matches!(err, BuildError::BadFileUrl { .. }), "{err}");
}

#[test]
fn a_directory_without_anything_to_run_fails_and_says_what_it_looked_for() {
    let d = TempDir::new();
    d.file("README.md", "nothing here\n");
    d.file("src/main.py", "print('not at the top')\n");
    let err = build(&dir_source(d.url(""), None)).expect_err("nothing to run");
    assert!(matches!(err, BuildError::NothingToRun { .. }), "{err}");
    let msg = err.to_string();
    for file in ["hangar.toml", "main.py", "app.py", "package.json"] {
        assert!(msg.contains(file), "{msg}");
    }
}

#[test]
fn paths_leading_outside_the_directory_are_refused() {
    let outside = TempDir::new();
    outside.file("main.py", "print('secret')\n");
    let d = TempDir::new();
    d.file("agent/main.py", "");
    for path in ["../x", "agent/../../x", "agent/..", "/etc"] {
        let err = build(&dir_source(d.url(""), Some(path))).expect_err(path);
        assert!(matches!(err, BuildError::Escapes { .. }), "{path}: {err}");
    }
    symlink(outside.path(), d.path().join("out")).expect("symlink");
    let err = build(&dir_source(d.url(""), Some("out"))).expect_err("symlink out");
    assert!(matches!(err, BuildError::Escapes { .. }), "{err}");
    assert!(err.to_string().contains("leads outside"), "{err}");
}

#[test]
fn files_the_sandbox_user_cannot_read_fail_the_build() {
    let d = TempDir::new();
    d.file("main.py", "print('hi')\n");
    let secret = d.file("conf/secret.txt", "s3cret\n");
    d.chmod("conf/secret.txt", 0o600);
    let err = build(&dir_source(d.url(""), None)).expect_err("unreadable");
    assert!(
        matches!(err, BuildError::FileNotReadable { mode: 0o600, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&secret.display().to_string()), "{msg}");
    assert!(msg.contains("65534"), "{msg}");
    d.chmod("conf/secret.txt", 0o644);
    assert!(build(&dir_source(d.url(""), None)).is_ok());
    // Directories must be listable and enterable by others.
    d.chmod("conf", 0o711);
    let err = build(&dir_source(d.url(""), None)).expect_err("unlistable dir");
    assert!(
        matches!(err, BuildError::DirNotReadable { mode: 0o711, .. }),
        "{err}"
    );
    d.chmod("conf", 0o750);
    let err = build(&dir_source(d.url(""), None)).expect_err("closed dir");
    assert!(matches!(err, BuildError::DirNotReadable { .. }), "{err}");
    d.chmod("conf", 0o755);
    d.chmod("", 0o700);
    let err = build(&dir_source(d.url(""), None)).expect_err("closed root");
    assert!(matches!(err, BuildError::DirNotReadable { .. }), "{err}");
    d.chmod("", 0o755);
    // Symlinks are not followed (inside the sandbox they resolve within it).
    symlink("/etc/shadow", d.path().join("shadow")).expect("symlink");
    assert!(build(&dir_source(d.url(""), None)).is_ok());
}

#[test]
fn too_many_entries_fail() {
    let d = TempDir::new();
    d.file("main.py", "");
    d.dir("many");
    for i in 0..MAX_ENTRIES {
        std::fs::write(d.path().join(format!("many/{i}")), "").expect("write");
    }
    let err = build(&dir_source(d.url(""), None)).expect_err("too many");
    assert!(matches!(err, BuildError::TooManyEntries { .. }), "{err}");
    assert!(err.to_string().contains("10000"), "{err}");
}

#[test]
fn docker_sources_are_not_trees_and_plain_directories_have_no_commits() {
    let err = build(&Source::Docker {
        image: "ghcr.io/user/agent:v1".into(),
        credentials: None,
    })
    .expect_err("docker");
    // Images are pulled by the builder (hangar_build::image), not fetched.
    assert!(matches!(err, BuildError::Image(_)), "{err}");
    assert!(!err.to_string().contains("not available yet"), "{err}");
    let pinned = TempDir::new();
    pinned.file("main.py", "");
    // A pinned commit cannot be honoured by a plain directory.
    let err = build(&Source::Github {
        repo: pinned.url(""),
        branch: None,
        path: None,
        commit: Some("a1b2c3d4".into()),
    })
    .expect_err("pinned");
    assert!(matches!(err, BuildError::NoCommits { .. }), "{err}");
}
