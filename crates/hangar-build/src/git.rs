//! Fetching a git repository's tree at a branch head or a pinned commit.
//!
//! The `git` command does the work — it already speaks every transport
//! (https, ssh, `file://`) and knows every corner of the protocol — run as a
//! subprocess that can never wait for a person: no terminal prompts
//! (`GIT_TERMINAL_PROMPT=0`), ssh in batch mode, no system or user
//! configuration, stdin empty, and killed at a timeout. Its output goes to a
//! file next to the checkout (so a chatty remote cannot fill a pipe and
//! stall it) and is quoted in the build's failure, with credentials masked.
//!
//! What comes out is the work tree only: `.git` is removed, so the artifact —
//! and its content hash — is the source at that commit and nothing else.
//! Submodules are not fetched.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BuildError;

/// The repository URL a `github` source's `repo` names: `owner/name` is the
/// GitHub repository, anything else is already a URL.
#[must_use]
pub fn repository_url(repo: &str) -> String {
    if repo.contains("://") || repo.starts_with("git@") {
        repo.to_owned()
    } else {
        format!("https://github.com/{repo}.git")
    }
}

/// What to check out.
#[derive(Debug, Clone)]
pub struct Checkout<'a> {
    /// The URL to clone, credentials included.
    pub url: &'a str,
    /// Text that must never appear in logs or messages (credentials).
    pub secrets: &'a [String],
    /// A branch; `None`: the remote's default branch.
    pub branch: Option<&'a str>,
    /// A commit to check out exactly.
    pub commit: Option<&'a str>,
    /// How long all of it may take.
    pub timeout: Duration,
}

fn mask(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

/// Clones `checkout` into `dest` (which must not exist), checks out its
/// commit, removes `.git`; returns log lines (the commit built).
pub fn fetch(checkout: &Checkout<'_>, dest: &Path) -> Result<Vec<String>, BuildError> {
    let shown = mask(checkout.url, checkout.secrets);
    let deadline = Instant::now() + checkout.timeout;
    let scratch = dest.with_extension("git-output");
    let mut clone = vec![
        "clone".to_owned(),
        "--quiet".to_owned(),
        "--no-tags".to_owned(),
    ];
    if checkout.commit.is_none() {
        clone.push("--depth=1".to_owned());
    }
    if let Some(branch) = checkout.branch {
        clone.push("--single-branch".to_owned());
        clone.push(format!("--branch={branch}"));
    }
    clone.push("--".to_owned());
    clone.push(checkout.url.to_owned());
    clone.push(dest.display().to_string());
    run_git(None, &clone, &scratch, deadline, checkout.secrets)
        .map_err(|why| BuildError::Git(format!("cannot clone {shown}: {why}")))?;
    if let Some(commit) = checkout.commit {
        run_git(
            Some(dest),
            &[
                "-c".to_owned(),
                "advice.detachedHead=false".to_owned(),
                "checkout".to_owned(),
                "--quiet".to_owned(),
                "--detach".to_owned(),
                format!("{commit}^{{commit}}"),
                "--".to_owned(),
            ],
            &scratch,
            deadline,
            checkout.secrets,
        )
        .map_err(|why| {
            BuildError::Git(format!(
                "cannot check out commit {commit} of {shown}: {why}"
            ))
        })?;
    }
    run_git(
        Some(dest),
        &["rev-parse".to_owned(), "HEAD".to_owned()],
        &scratch,
        deadline,
        checkout.secrets,
    )
    .map_err(|why| BuildError::Git(format!("cannot read the commit of {shown}: {why}")))?;
    let head = std::fs::read_to_string(&scratch)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let _ = std::fs::remove_file(&scratch);
    std::fs::remove_dir_all(dest.join(".git")).map_err(|err| BuildError::Io {
        path: dest.join(".git").display().to_string(),
        source: err,
    })?;
    Ok(vec![match checkout.branch {
        Some(branch) => format!("checked out {shown} at commit {head} (branch {branch})"),
        None => format!("checked out {shown} at commit {head}"),
    }])
}

/// Runs `git args` (in `dir`), its output into `scratch`, until `deadline`;
/// the failure is git's last lines of output, masked.
fn run_git(
    dir: Option<&Path>,
    args: &[String],
    scratch: &Path,
    deadline: Instant,
    secrets: &[String],
) -> Result<(), String> {
    let out = std::fs::File::create(scratch).map_err(|err| format!("cannot run git: {err}"))?;
    let err_out = out
        .try_clone()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        )
        .env("GIT_ASKPASS", "/bin/false")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out);
    let mut child = command.spawn().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            "git is not installed on this server".to_owned()
        } else {
            format!("cannot run git: {err}")
        }
    })?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out".to_owned());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => return Err(format!("cannot wait for git: {err}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let output = std::fs::read_to_string(scratch).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(mask(
        &format!(
            "git {} ({})",
            if tail.is_empty() {
                "failed".to_owned()
            } else {
                format!("said: {}", tail.join(" / "))
            },
            status
        ),
        secrets,
    ))
}
