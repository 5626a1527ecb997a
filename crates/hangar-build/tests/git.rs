//! Git sources against real repositories made here with the `git` command
//! (`file://` URLs): branch heads, pinned commits, subdirectories, failures.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::TempDir;
use hangar_build::source::{fetch, Fetch};
use hangar_build::{BuildError, Fetched};
use hangar_core::spec::Source;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A repository on branch `main` with two commits: `v1` then `v2` of
/// `agents/echo/main.py`. Returns it and the two commits.
fn repository() -> (TempDir, String, String) {
    let repo = TempDir::new();
    git(repo.path(), &["init", "--quiet", "--initial-branch=main"]);
    repo.file("agents/echo/main.py", "print('v1')\n");
    repo.file("README.md", "top\n");
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "--quiet", "-m", "v1"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    repo.file("agents/echo/main.py", "print('v2')\n");
    git(repo.path(), &["commit", "--quiet", "-am", "v2"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    (repo, first, second)
}

fn source(
    repo: &TempDir,
    branch: Option<&str>,
    path: Option<&str>,
    commit: Option<&str>,
) -> Source {
    Source::Github {
        repo: repo.url(""),
        branch: branch.map(str::to_owned),
        path: path.map(str::to_owned),
        commit: commit.map(str::to_owned),
    }
}

/// Fetches into a fresh work dir; returns it (kept alive) and the tree.
fn fetched(source: &Source) -> Result<(TempDir, std::path::PathBuf, Vec<String>), BuildError> {
    let work = TempDir::new();
    let result = fetch(
        source,
        &Fetch {
            work: work.path(),
            uploads: work.path(),
            limits: Default::default(),
            git_timeout: Duration::from_secs(60),
            repo: None,
        },
    )?;
    match result {
        Fetched::Tree { dir, log } => Ok((work, dir, log)),
        other => panic!("a git source is fetched into the work dir: {other:?}"),
    }
}

#[test]
fn the_branch_head_is_checked_out_without_its_history() {
    let (repo, _, second) = repository();
    let (_work, dir, log) = fetched(&source(&repo, None, None, None)).expect("fetch");
    assert_eq!(
        std::fs::read_to_string(dir.join("agents/echo/main.py")).expect("read"),
        "print('v2')\n"
    );
    assert!(!dir.join(".git").exists(), "no history in the artifact");
    assert!(log[0].contains(&second), "{log:?}");
    let (_work, _, log) = fetched(&source(&repo, Some("main"), None, None)).expect("branch");
    assert!(log[0].contains("branch main"), "{log:?}");
}

#[test]
fn a_pinned_commit_and_a_subdirectory_are_exactly_that() {
    let (repo, first, _) = repository();
    let (_work, dir, log) =
        fetched(&source(&repo, None, Some("agents/echo"), Some(&first))).expect("fetch");
    assert_eq!(
        std::fs::read_to_string(dir.join("main.py")).expect("read"),
        "print('v1')\n"
    );
    assert!(!dir.join("README.md").exists(), "only the subdirectory");
    assert!(log[0].contains(&first), "{log:?}");
    // A short commit works too.
    let (_work, dir, _) = fetched(&source(
        &repo,
        None,
        Some("agents/echo"),
        Some(&first[..10]),
    ))
    .expect("short");
    assert_eq!(
        std::fs::read_to_string(dir.join("main.py")).expect("read"),
        "print('v1')\n"
    );
}

#[test]
fn missing_branches_commits_paths_and_links_out_fail_clearly() {
    let (repo, _, _) = repository();
    let err = fetched(&source(&repo, Some("nope"), None, None)).expect_err("branch");
    assert!(matches!(err, BuildError::Git(_)), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = fetched(&source(&repo, None, None, Some("deadbeefdeadbeef"))).expect_err("commit");
    assert!(
        err.to_string()
            .contains("cannot check out commit deadbeefdeadbeef"),
        "{err}"
    );
    let err = fetched(&source(&repo, None, Some("agents/none"), None)).expect_err("path");
    assert!(matches!(err, BuildError::Missing { .. }), "{err}");
    // A symlink committed to the repository that points out of it.
    std::os::unix::fs::symlink("/etc/passwd", repo.path().join("passwd")).expect("symlink");
    git(repo.path(), &["add", "passwd"]);
    git(repo.path(), &["commit", "--quiet", "-m", "link out"]);
    let err = fetched(&source(&repo, None, None, None)).expect_err("link out");
    assert!(matches!(err, BuildError::UnsafeEntry { .. }), "{err}");
    assert!(err.to_string().contains("passwd"), "{err}");
    // Not a repository at all (nothing there).
    let err = fetched(&Source::Github {
        repo: "file:///nonexistent/hangar/repo.git".into(),
        branch: None,
        path: None,
        commit: None,
    })
    .expect_err("missing");
    assert!(err.to_string().contains("does not exist"), "{err}");
}
