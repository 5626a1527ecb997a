//! The Python SDK's API client (`sdk/python/hangar`, `hangar.Client` and
//! `hangar.AsyncClient`) against a real `hangar serve`: its own tests
//! (`sdk/python/tests`, unittest) deploy a directory with `client.deploy`,
//! invoke sync, streaming and as jobs (waited for, cancelled), follow logs and
//! resume them, exec, page through lists, and check typed errors and the CRUD
//! of secrets, webhooks and keys — and check the SDK against the OpenAPI
//! document: the generated models and async client are what regenerating
//! them gives, and every operation has a client method.
//!
//! The tests need a Python with `httpx` and `datamodel-code-generator`:
//! `HANGAR_TEST_SDK_PYTHON` names it (`.ci/run` makes a virtualenv). Without
//! it the test is skipped with how to make one — a failure when `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::*;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo")
}

/// The Python to run the SDK's tests with, or `None` (skip) outside CI.
#[allow(
    clippy::disallowed_methods,
    reason = "a test's prerequisite, read once: the Python the SDK's tests run with"
)]
fn sdk_python() -> Option<String> {
    let how = "set HANGAR_TEST_SDK_PYTHON to a Python with the SDK's test dependencies: \
               python3 -m venv VENV && VENV/bin/pip install httpx==0.28.1 \
               datamodel-code-generator==0.89.0 mypy==2.4.1 (what .ci/run does)";
    match std::env::var("HANGAR_TEST_SDK_PYTHON") {
        Ok(python) if Path::new(&python).exists() => Some(python),
        found => {
            let ci = std::env::var("CI").as_deref() == Ok("true");
            assert!(!ci, "CI=true and no SDK Python ({found:?}): {how}");
            eprintln!("SKIPPED the Python SDK's tests: {how}");
            None
        }
    }
}

#[tokio::test]
async fn the_python_client_works_against_a_real_server() {
    let Some(python) = sdk_python() else {
        return;
    };
    if !root_or_skip("Python SDK client") {
        return;
    }
    let dir = temp("sdk-python");
    let server = Server::start(&dir);
    let sdk = repo().join("sdk/python");
    let python_run = tokio::task::spawn_blocking({
        let url = server.url.clone();
        let home = dir.join("home");
        move || {
            Command::new(python)
                .args(["-m", "unittest", "discover", "-v", "-s", "tests"])
                .current_dir(&sdk)
                .env("HANGAR_URL", url)
                .env("HANGAR_KEY", KEY)
                // No saved login of whoever runs the tests leaks in.
                .env("HOME", home)
                .env_remove("XDG_CONFIG_HOME")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .output()
                .expect("run python")
        }
    })
    .await
    .expect("python task");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&python_run.stdout),
        String::from_utf8_lossy(&python_run.stderr)
    );
    assert!(python_run.status.success(), "{output}");
    // Every test ran, none skipped (a skip would hide a missing server).
    assert!(output.contains("\nOK"), "{output}");
    assert!(!output.contains("skipped"), "{output}");
    let ran = output
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 25, "only {ran} tests ran: {output}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
