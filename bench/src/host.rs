//! The host a benchmark run stands on, and what every run sets up and tears
//! down around its timing: the check that it runs as root, the `hangar`
//! binary it starts, a temporary directory removed again (also when a run
//! fails halfway, so the next one starts clean), child processes stopped,
//! and what the reports print about the programs compared (their versions,
//! whether a binary is static). None of it is on the clock.
//!
//! These were copied from binary to binary; one copy keeps the binaries
//! from drifting apart in what they set up, and a fix (a longer socket path,
//! a process that ignores SIGTERM) lands in all of them at once.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};

/// Fails unless this process runs as root; `why` says what needs it.
pub fn require_root(why: &str) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root ({why})"
    );
    Ok(())
}

/// A temporary directory (mode 0755, so sandboxed servers running as
/// `nobody` can read below it), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory `hb-<tag>-<pid>-<n>` in the system's temporary
    /// directory. Kept short: shim sockets live below it, and socket paths
    /// are limited to 107 bytes.
    pub fn new(tag: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "hb-{tag}-{}-{}",
            std::process::id(),
            nanos % 1_000_000
        ));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {err}", self.0.display());
        }
    }
}

/// Sends SIGTERM to a child process and waits for it (SIGKILL after 10 s).
/// A child already waited for is left alone: its pid may be another
/// process's by now.
pub fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The `hangar` binary a benchmark runs: `explicit` (its `--hangar`), else
/// `hangar` next to the benchmark's own binary, where `cargo build --release
/// -p hangar -p hangar-bench` puts it.
pub fn hangar_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this binary")?
            .parent()
            .context("this binary has no directory")?
            .join("hangar"),
    };
    ensure!(
        path.is_file(),
        "{} not found: build it next to this benchmark with `cargo build --release -p hangar -p \
         hangar-bench`, or pass --hangar <path>",
        path.display()
    );
    Ok(path)
}

/// Runs a command to completion, capturing its output.
pub fn output(command: &mut Command) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))
}

/// The first line a program prints about itself.
#[must_use]
pub fn version(program: &Path, args: &[&str]) -> String {
    match output(Command::new(program).args(args)) {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_owned()
        }
        Err(err) => format!("unknown ({err:#})"),
    }
}

/// The last lines of a log file, on one line.
#[must_use]
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(no output)".to_owned()
    } else {
        tail
    }
}

/// Whether an ELF file asks for a dynamic loader (has a `PT_INTERP` header):
/// a sandbox's rootfs of one static busybox cannot run a dynamic one.
pub fn is_dynamic(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() > 64 && bytes.starts_with(b"\x7fELF") && bytes[4] == 2 && bytes[5] == 1,
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into()?) as usize;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    for i in 0..count {
        let at = phoff + i * entsize;
        let header = bytes.get(at..at + 4).context("truncated ELF file")?;
        if u32::from_le_bytes(header.try_into()?) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_is_an_elf_file() {
        let exe = std::env::current_exe().expect("current exe");
        assert!(is_dynamic(&exe).is_ok());
        let not_elf = TempDir::new("elf").expect("temporary directory");
        let script = not_elf.0.join("script");
        fs::write(&script, "#!/bin/sh\n").expect("write");
        assert!(is_dynamic(&script).is_err());
    }

    #[test]
    fn a_temporary_directory_is_removed_on_drop() {
        let dir = TempDir::new("t").expect("temporary directory");
        let path = dir.0.clone();
        fs::write(path.join("file"), "x").expect("write");
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn the_tail_is_the_last_five_lines() {
        let dir = TempDir::new("tail").expect("temporary directory");
        let log = dir.0.join("log");
        assert_eq!(tail(&log), "(no output)");
        fs::write(&log, "1\n2\n\n3\n4\n5\n6\n").expect("write");
        assert_eq!(tail(&log), "2 | 3 | 4 | 5 | 6");
    }
}
