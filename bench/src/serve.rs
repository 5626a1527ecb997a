//! A real `hangar serve` for the benchmarks that measure through it (the
//! gateway, logs, deploy and nodes benchmarks): started in a fresh temporary
//! directory with a known admin key (on SQLite unless its flags name a
//! database), an agent deployed from a directory of the repository (a
//! `file://` source) and waited for until it runs, its replica found on the
//! bridge, and everything removed again — also when the benchmark fails
//! halfway, because replicas outlive the server and a run that leaves
//! sandboxes behind spoils the next one. A server can also be killed with
//! SIGKILL and started again in its directory, as the same node, for the
//! benchmark of failover between nodes.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::host::{terminate, TempDir};

/// An agent deployed by [`Serve::deploy`], running.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The organization (of the admin key).
    pub org: String,
    /// The agent's id.
    pub agent: String,
    /// Its default instance's id.
    pub instance: String,
    /// The replica's IPv4 address on the `hangar0` bridge.
    pub ip: String,
    /// The instance's resource name: its instance URL is
    /// `http://<resource_name>.localhost:<port>`.
    pub resource_name: String,
}

/// A running `hangar serve`; on drop it is stopped with SIGTERM, the
/// replicas left (replicas outlive the server) are removed with `hangar shim
/// cleanup`, and its directory is removed.
pub struct Serve {
    /// The server's process (the latest, after [`Serve::restart`]).
    pub child: Child,
    /// Its base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// The admin key it was started with.
    pub key: String,
    hangar: PathBuf,
    /// What it was started with, for [`Serve::restart`].
    launch: Launch,
    /// Its working directory (`hangar-data` is below it). Dropped after the
    /// cleanup in `Drop` (fields drop after `drop` runs).
    pub dir: TempDir,
}

/// How a server was started: a restart starts it the same way.
struct Launch {
    listen: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Serve {
    /// Starts `hangar serve --listen 127.0.0.1:0` plus `args` in a fresh
    /// directory `hb-<tag>-…` with `HANGAR_ADMIN_KEY=key` and `RUST_LOG=warn`
    /// (its log is `serve.log` there); returns once it listens.
    pub fn start(hangar: &Path, tag: &str, key: &str, args: &[&str]) -> Result<Self> {
        Self::start_in(hangar, TempDir::new(tag)?, "127.0.0.1:0", key, args, &[])
    }

    /// Like [`Serve::start`], in `dir`, listening on `listen` (a fixed
    /// port keeps a server's address across [`Serve::restart`]), with more
    /// environment variables (a shared `HANGAR_SECRET_KEY`, say).
    pub fn start_in(
        hangar: &Path,
        dir: TempDir,
        listen: &str,
        key: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let launch = Launch {
            listen: listen.to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            env: env
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        let (child, url) = spawn(hangar, &dir.0, key, &launch)?;
        Ok(Self {
            child,
            url,
            key: key.to_owned(),
            hangar: hangar.to_path_buf(),
            launch,
            dir,
        })
    }

    /// Kills the server with SIGKILL (a crash: nothing is released, its
    /// replicas keep running) and waits for it to be gone.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill().context("killing hangar serve")?;
        self.child.wait().context("waiting for hangar serve")?;
        Ok(())
    }

    /// Starts the server again, as it was started, in the same directory
    /// (same data dir, same node); returns once it listens. Stop it first
    /// ([`Serve::kill9`]).
    pub fn restart(&mut self) -> Result<()> {
        ensure!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "hangar serve at {} still runs",
            self.url
        );
        let (child, url) = spawn(&self.hangar, &self.dir.0, &self.key, &self.launch)?;
        self.child = child;
        self.url = url;
        Ok(())
    }

    /// The server's log (stderr of every start, appended).
    #[must_use]
    pub fn log(&self) -> PathBuf {
        self.dir.0.join("serve.log")
    }

    /// The data directory of the server.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("hangar-data")
    }

    /// The directories of the replicas' shims (one per replica alive).
    #[must_use]
    pub fn shims(&self) -> Vec<PathBuf> {
        fs::read_dir(self.data_dir().join("runtime/shims"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// One API call with the admin key (60 s limit): status, JSON body
    /// (`null` when not JSON) and the body as text.
    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value, String)> {
        let mut req = client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, json, text))
    }

    /// `GET path`, which must answer 200.
    pub async fn get(&self, client: &reqwest::Client, path: &str) -> Result<Value> {
        let (status, body, text) = self.call(client, reqwest::Method::GET, path, None).await?;
        ensure!(status == 200, "GET {path}: {status} {text}");
        Ok(body)
    }

    /// Deploys the agent in `agent_dir` (a `file://` source) as `name`,
    /// waits (up to 60 s) until its instance runs, and finds the replica's
    /// IP on the bridge with an exec.
    pub async fn deploy(
        &self,
        client: &reqwest::Client,
        name: &str,
        agent_dir: &Path,
    ) -> Result<Deployed> {
        let me = self.get(client, "/v1/me").await?;
        let org = me["organization_id"]
            .as_str()
            .or_else(|| me["data"]["organization_id"].as_str())
            .context("no organization_id in /v1/me")?
            .to_owned();
        let body = json!({
            "name": name,
            "cloud_id": "local",
            "source": {"type": "github", "repo": format!("file://{}", agent_dir.display())},
        });
        let (status, created, text) = self
            .call(client, reqwest::Method::POST, "/v1/agents", Some(body))
            .await?;
        ensure!(status == 201, "deploying: {status} {text}");
        let agent = created["data"]["id"]
            .as_str()
            .context("no agent id")?
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let instance = loop {
            let view = self.get(client, &format!("/v1/agents/{agent}")).await?;
            if let Some(instance) = view["data"]["instance_id"].as_str() {
                break instance.to_owned();
            }
            ensure!(Instant::now() < deadline, "never deployed: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let resource_name = loop {
            let inst = self.get(client, &format!("/instances/{instance}")).await?;
            if inst["status"] == "running" {
                break inst["deployment"]["resource_name"]
                    .as_str()
                    .context("no deployment.resource_name in the instance")?
                    .to_owned();
            }
            ensure!(Instant::now() < deadline, "never running: {inst}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let probe = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                     s.connect(('10.231.0.1', 9)); print(s.getsockname()[0])";
        let (status, _, text) = self
            .call(
                client,
                reqwest::Method::POST,
                &format!("/instances/{org}/{instance}/exec"),
                Some(json!(["python3", "-c", probe])),
            )
            .await?;
        ensure!(status == 200, "exec for the replica's IP: {status} {text}");
        let ip = text.trim().to_owned();
        ensure!(
            ip.parse::<Ipv4Addr>().is_ok(),
            "the replica's IP is not an IPv4 address: {ip:?}"
        );
        Ok(Deployed {
            org,
            agent,
            instance,
            ip,
            resource_name,
        })
    }

    /// Deletes the instance (forced) and waits (up to 60 s) until its
    /// replicas are gone.
    pub async fn delete(&self, client: &reqwest::Client, instance: &str) -> Result<()> {
        let (status, _, text) = self
            .call(
                client,
                reqwest::Method::DELETE,
                &format!("/instances/{instance}?force=true"),
                None,
            )
            .await?;
        ensure!(status == 204, "deleting {instance}: {status} {text}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.shims().is_empty() {
            ensure!(Instant::now() < deadline, "replicas left after delete");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Starts `hangar serve` in `dir` as `launch` says, its stderr appended to
/// `serve.log` there; returns it and its URL once it prints that it listens.
fn spawn(hangar: &Path, dir: &Path, key: &str, launch: &Launch) -> Result<(Child, String)> {
    let log_path = dir.join("serve.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = Command::new(hangar)
        .current_dir(dir)
        .args(["serve", "--listen", launch.listen.as_str()])
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env("HANGAR_ADMIN_KEY", key)
        // The per-key limit stays on (its cost is measured) but above any load.
        .env("HANGAR_RATE_LIMIT", "1000000/s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawning {} serve", hangar.display()))?;
    let stdout = child.stdout.take().context("serve's stdout")?;
    let mut reader = BufReader::new(stdout);
    let listening = (|| -> Result<String> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!(
                    "hangar serve exited before listening: {}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if let Some(rest) = line.strip_prefix("hangar listening on ") {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .context("no URL in the listening line")?
                    .to_owned());
            }
        }
    })();
    let url = match listening {
        Ok(url) => url,
        Err(err) => {
            terminate(&mut child);
            return Err(err);
        }
    };
    std::thread::spawn(move || for _ in reader.lines() {});
    Ok((child, url))
}

impl Drop for Serve {
    fn drop(&mut self) {
        terminate(&mut self.child);
        for shim in self.shims() {
            let _ = Command::new(&self.hangar)
                .args(["shim", "cleanup"])
                .arg(&shim)
                .status();
        }
    }
}
