//! A real OCI registry for the tests: Debian's `docker-registry` on a free
//! port, with basic auth ([`USER`] / [`PASSWORD`]), killed on drop. Its
//! access log is kept, so a test can tell which requests reached it (a
//! build that pushes nothing sends no `PUT`, `POST` or `PATCH`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The registry's program (`apt-get install docker-registry`).
pub const REGISTRY: &str = "/usr/bin/docker-registry";
/// The registry's user.
pub const USER: &str = "hangar";
/// Its password.
pub const PASSWORD: &str = "hangar-registry-pw";
/// bcrypt of [`PASSWORD`] (the registry's htpasswd takes bcrypt only).
const PASSWORD_BCRYPT: &str = "$2b$12$HD.rObMsFZ7QDz7IHGZIiOZa0tUk.5.9csV69aLMgGvM2vHgbvUW2";

/// A running `docker-registry serve`.
pub struct Registry {
    child: Child,
    /// `ip:port`.
    pub host: String,
    log: PathBuf,
}

impl Registry {
    /// A writable registry on loopback, its files under `dir`.
    pub async fn start(dir: &Path) -> Self {
        Self::start_on(dir, IpAddr::from([127, 0, 0, 1]), false, true).await
    }

    /// A registry on `ip`, its files under `dir`; `read_only` refuses every
    /// push (the registry's maintenance mode); without `auth` anyone may
    /// pull and push.
    pub async fn start_on(dir: &Path, ip: IpAddr, read_only: bool, auth: bool) -> Self {
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        std::fs::write(dir.join("htpasswd"), format!("{USER}:{PASSWORD_BCRYPT}\n"))
            .expect("htpasswd");
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("{ip}:{port}");
        let auth = if auth {
            format!(
                "auth:\n  htpasswd:\n    realm: hangar-test\n    path: {}\n",
                dir.join("htpasswd").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: {read_only}\nhttp:\n  addr: {host}\n  secret: hangar-test\n{auth}",
            dir.join("data").display(),
        );
        std::fs::write(dir.join("config.yml"), config).expect("config");
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn docker-registry");
        let registry = Self { child, host, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = reqwest::get(format!("http://{}/v2/", registry.host)).await;
            if answer.is_ok_and(|a| a.status() == 401 || a.status() == 200) {
                return registry;
            }
            assert!(Instant::now() < deadline, "the registry never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The requests it has answered so far, as `METHOD path` (access log
    /// order).
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // `ip - user [time] "METHOD /path HTTP/1.1" status size …`
                let request = line.split('"').nth(1)?;
                let mut parts = request.split_whitespace();
                let (method, path) = (parts.next()?, parts.next()?);
                path.starts_with('/').then(|| format!("{method} {path}"))
            })
            .collect()
    }

    /// How many of [`Registry::requests`] write (`PUT`, `POST`, `PATCH`,
    /// `DELETE`).
    pub fn writes(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                ["PUT ", "POST ", "PATCH ", "DELETE "]
                    .iter()
                    .any(|m| r.starts_with(m))
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
