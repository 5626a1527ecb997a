//! The probe the start benchmarks (`sandbox`, `kubernetes`) time a server's
//! readiness with, and the server it probes: a static busybox `httpd`
//! serving this run's token from a root filesystem of nothing else
//! ([`server_rootfs`]). The probe is one plain HTTP/1.0 `GET` over a fresh
//! connection,
//! repeated every [`POLL`] until the first byte of an answer arrives. The
//! clock stops at that first byte; the rest of the answer (status 200 and
//! this run's token, so a stale server from another run cannot pass) is read
//! and checked off the clock. Both benchmarks compare their rows against
//! each other's figures in BENCHMARKS.md, so they must probe the same way:
//! one copy here keeps them from drifting apart.
//!
//! The `coldstart` benchmark times a `POST` through Hangar's API and checks
//! a different answer, so it polls its own way, but it times the first byte
//! with the same [`exchange`].

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::host::{is_dynamic, output};

/// How often a starting server is polled.
pub const POLL: Duration = Duration::from_millis(2);

/// The request: the static server the benchmarks start serves its token in
/// `/index.html`.
pub const REQUEST: &[u8] = b"GET /index.html HTTP/1.0\r\nHost: bench\r\n\r\n";

/// Polls `address` every [`POLL`] until an HTTP answer's first byte arrives;
/// returns the time from `t0` to that byte. The answer must be a 200 with
/// `marker` in its body; no answer by `t0 + deadline` is an error.
pub fn first_byte(
    address: SocketAddr,
    t0: Instant,
    marker: &str,
    deadline: Duration,
) -> Result<Duration> {
    first_byte_every(address, t0, marker, deadline, POLL)
}

/// [`first_byte`], polling every `poll` instead.
pub fn first_byte_every(
    address: SocketAddr,
    t0: Instant,
    marker: &str,
    deadline: Duration,
    poll: Duration,
) -> Result<Duration> {
    let give_up = t0 + deadline;
    loop {
        match http_get(address) {
            Ok((at, answer)) => {
                check_answer(&answer, marker)
                    .with_context(|| format!("{address} answered, but not as expected"))?;
                return Ok(at.duration_since(t0));
            }
            Err(err) if Instant::now() > give_up => {
                bail!(
                    "no HTTP answer from {address} within {} s (last: {err})",
                    deadline.as_secs()
                )
            }
            Err(_) => std::thread::sleep(poll),
        }
    }
}

/// One `GET` of [`REQUEST`]: when its first byte arrived, and the whole
/// answer.
pub fn http_get(address: SocketAddr) -> io::Result<(Instant, Vec<u8>)> {
    exchange(address, REQUEST, Duration::from_secs(2))
}

/// Sends `request` on a new connection (waiting at most `read_timeout` for
/// each read); returns when the first byte of the answer arrived, and the
/// whole answer (read to the end, after that).
pub fn exchange(
    address: SocketAddr,
    request: &[u8],
    read_timeout: Duration,
) -> io::Result<(Instant, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.write_all(request)?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf)?;
    let at = Instant::now();
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without answering",
        ));
    }
    let mut answer = buf[..n].to_vec();
    stream.read_to_end(&mut answer)?;
    Ok((at, answer))
}

/// Whether an answer is a 200 whose body carries this run's `marker`.
pub fn check_answer(answer: &[u8], marker: &str) -> Result<()> {
    let text = String::from_utf8_lossy(answer);
    let status = text.lines().next().unwrap_or_default();
    ensure!(
        status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200"),
        "status line {status:?}"
    );
    ensure!(
        text.contains(marker),
        "the body lacks this run's token: {text:?}"
    );
    Ok(())
}

/// Checks that `busybox` can be the whole server: a file, statically
/// linked (`why_static` says what holds nothing but it) and with the
/// `httpd` applet.
pub fn check_busybox(busybox: &Path, why_static: &str) -> Result<()> {
    ensure!(
        busybox.is_file(),
        "{} not found (Debian: apt-get install busybox-static)",
        busybox.display()
    );
    ensure!(
        !is_dynamic(busybox)?,
        "{} is dynamically linked; {why_static}, so it must be static (Debian: apt-get install \
         busybox-static, or pass --busybox)",
        busybox.display()
    );
    let applets = output(Command::new(busybox).arg("--list"))?;
    ensure!(
        String::from_utf8_lossy(&applets.stdout)
            .lines()
            .any(|l| l == "httpd"),
        "{} has no httpd applet",
        busybox.display()
    );
    Ok(())
}

/// Fills `rootfs` with the server: `busybox` and `www/index.html` holding
/// `marker`, plus the empty directories `mount_points` (where a runtime
/// mounts `/proc` and the like). Everything is world-readable whatever the
/// umask, because the server runs as `nobody`.
pub fn server_rootfs(
    rootfs: &Path,
    busybox: &Path,
    marker: &str,
    mount_points: &[&str],
) -> Result<()> {
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    let subdirs = ["www"].iter().chain(mount_points).map(|d| rootfs.join(d));
    for dir in std::iter::once(rootfs.to_path_buf()).chain(subdirs) {
        dirs.create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    fs::copy(busybox, rootfs.join("busybox")).context("copying busybox")?;
    fs::set_permissions(rootfs.join("busybox"), fs::Permissions::from_mode(0o755))?;
    fs::write(
        rootfs.join("www/index.html"),
        format!("<!doctype html><p>{marker}</p>\n"),
    )?;
    fs::set_permissions(
        rootfs.join("www/index.html"),
        fs::Permissions::from_mode(0o644),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n<p>token 1</p>";
        assert!(check_answer(ok, "token 1").is_ok());
        assert!(check_answer(ok, "token 2").is_err());
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\ntoken 1";
        assert!(check_answer(missing, "token 1").is_err());
    }

    #[test]
    fn the_server_rootfs_holds_busybox_and_the_token() {
        let tmp = crate::host::TempDir::new("rootfs").expect("temporary directory");
        let rootfs = tmp.0.join("rootfs");
        let busybox = std::env::current_exe().expect("current exe");
        server_rootfs(&rootfs, &busybox, "token 1", &["proc", "dev"]).expect("rootfs");
        let index = fs::read_to_string(rootfs.join("www/index.html")).expect("index");
        assert!(check_answer(
            format!("HTTP/1.0 200 OK\r\n\r\n{index}").as_bytes(),
            "token 1"
        )
        .is_ok());
        for dir in ["", "www", "proc", "dev"] {
            let mode = fs::metadata(rootfs.join(dir))
                .expect("dir")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755, "{dir}");
        }
        assert!(rootfs.join("busybox").is_file());
    }

    #[test]
    fn the_first_byte_is_timed_and_the_answer_checked() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            for answer in [
                &b"HTTP/1.0 200 OK\r\n\r\ntoken 1"[..],
                b"HTTP/1.0 200 OK\r\n\r\nother",
            ] {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut request = [0u8; 256];
                let n = stream.read(&mut request).expect("read");
                assert_eq!(&request[..n], REQUEST);
                stream.write_all(answer).expect("write");
            }
        });
        let t0 = Instant::now();
        let took = first_byte(address, t0, "token 1", Duration::from_secs(5)).expect("answered");
        assert!(took <= t0.elapsed());
        assert!(first_byte(address, Instant::now(), "token 1", Duration::from_secs(5)).is_err());
        server.join().expect("server");
    }
}
