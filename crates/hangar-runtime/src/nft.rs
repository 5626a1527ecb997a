//! Running `nft -f` scripts: the one way the runtime changes the host's
//! packet filter (the sandboxes' tables, the docker networks' guard). A
//! script is one transaction: it applies whole or not at all.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `nft -f -` with `script`.
pub(crate) fn run(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run nft (Debian: nftables): {err}"))?;
    let written = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes());
    let output = child
        .wait_with_output()
        .map_err(|err| format!("cannot wait for nft: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    written.map_err(|err| format!("cannot write to nft: {err}"))
}
