//! The TypeScript client (`sdk/typescript`) against a real `hangar serve`:
//! its `npm test` — the drift checks against `sdk/openapi.json` and the
//! tests that deploy an agent from an uploaded archive and invoke it (sync,
//! streamed, as jobs waited for and cancelled), follow its log with resume
//! and through a stream token URL, page through lists, and manage secrets
//! and API keys — run under Node with `HANGAR_URL` and `HANGAR_KEY` naming
//! this server.
//!
//! It needs Node 20 with npm, and the client's dev dependencies installed
//! (`npm ci` in `sdk/typescript`): without them the test is skipped, saying
//! so, and with `CI=true` it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{root_or_skip, temp, Server, KEY};

/// `sdk/typescript` of this repository.
fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/typescript")
        .canonicalize()
        .expect("sdk/typescript")
}

/// Whether Node, npm and the client's dev dependencies are there; if not,
/// a skip (a failure with `CI=true`) saying how to get them.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn node_or_skip(package: &Path) -> bool {
    let node = Command::new("node").arg("--version").output();
    let npm = Command::new("npm").arg("--version").output();
    let why = match (&node, &npm) {
        (Ok(node), Ok(npm)) if node.status.success() && npm.status.success() => {
            // `npm ls` fails when a dependency is missing or not the version
            // package.json pins: node_modules is absent or stale.
            let installed = Command::new("npm")
                .args(["ls", "--depth=0"])
                .current_dir(package)
                .output()
                .is_ok_and(|out| out.status.success());
            if installed {
                return true;
            }
            "its dev dependencies are missing or stale: run `npm ci` in sdk/typescript"
        }
        _ => "Node and npm are not installed (`apt-get install nodejs npm`)",
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the TypeScript client's tests cannot run: {why}, and CI=true"
    );
    eprintln!("SKIPPED the TypeScript client's tests: {why}");
    false
}

#[tokio::test]
async fn the_typescript_client_passes_its_tests_against_a_real_server() {
    let package = package();
    if !root_or_skip("TypeScript client") || !node_or_skip(&package) {
        return;
    }
    let dir = temp("sdk-typescript");
    let server = Server::start(&dir);
    let url = server.url.clone();
    // `npm test` builds the client, then runs every test file; it blocks,
    // so it runs off the runtime that serves nothing here (the server is
    // its own process).
    let output = tokio::task::spawn_blocking(move || {
        Command::new("npm")
            .arg("test")
            .current_dir(&package)
            .env("HANGAR_URL", url)
            .env("HANGAR_KEY", KEY)
            .output()
    })
    .await
    .expect("npm test ran")
    .expect("spawn npm");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "npm test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Every test ran: none was skipped for want of the server.
    assert!(
        !stdout.contains("# SKIP") && stdout.contains("# fail 0"),
        "{stdout}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
