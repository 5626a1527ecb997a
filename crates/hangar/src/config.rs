//! `hangar serve` configuration: flags, then `HANGAR_*` environment variables, then
//! the `[server]` table of `hangar.toml`, then defaults — read once into one typed
//! struct and validated before anything binds. (`hangar.toml` may also hold an
//! agent's build settings; only `[server]` is read here.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use serde::Deserialize;

/// Flags of `hangar serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: HANGAR_LISTEN] [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Data directory [env: HANGAR_DATA_DIR] [default: ./hangar-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [env: HANGAR_DATABASE_URL] [default: SQLite in the data dir]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Apply the database's pending migrations, say what was applied, and exit
    /// without serving (the first step of an upgrade; see the README's Upgrades)
    #[arg(long)]
    pub migrate_only: bool,
    /// Instance URLs are http://<name>.<DOMAIN>:<port> [env: HANGAR_BASE_DOMAIN] [default: localhost]
    #[arg(long, value_name = "DOMAIN")]
    pub base_domain: Option<String>,
    /// Use this bootstrap API key instead of generating one [env: HANGAR_ADMIN_KEY]
    #[arg(long, value_name = "KEY")]
    pub admin_key: Option<String>,
    /// URL clients reach this server at, for links it hands out (upload URLs)
    /// [env: HANGAR_PUBLIC_URL] [default: http://<listen address>]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Seconds without a request after which an instance that may scale to
    /// zero does [env: HANGAR_SCALE_TO_ZERO_AFTER] [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub scale_to_zero_after: Option<u64>,
    /// Seconds without a heartbeat after which a server on the same database
    /// is shown dead; servers beat every third of it. A build whose builder
    /// is silent this long is built again by any server
    /// [env: HANGAR_NODE_DEAD_AFTER] [default: 15]
    #[arg(long, value_name = "SECONDS")]
    pub node_dead_after: Option<u64>,
    /// Seconds an instance's lease lasts: the server that holds it is the
    /// only one that runs the instance and renews it every third of this
    /// (or of --node-dead-after when shorter); another server takes the
    /// instance over once it runs out
    /// [env: HANGAR_INSTANCE_LEASE] [default: 15]
    #[arg(long, value_name = "SECONDS")]
    pub instance_lease: Option<u64>,
    /// Requests in flight per replica; more wait in a bounded queue
    /// [env: HANGAR_REPLICA_CONCURRENCY] [default: 100]
    #[arg(long, value_name = "N")]
    pub replica_concurrency: Option<usize>,
    /// Delays between webhook attempts, e.g. "5s,5m,30m,2h,5h,10h,10h"
    /// [env: HANGAR_WEBHOOK_RETRY_SCHEDULE] [default: that, about 28 h]
    #[arg(long, value_name = "DELAYS")]
    pub webhook_retry_schedule: Option<String>,
    /// Deliver webhooks to loopback, private and link-local addresses too
    /// (receivers on the operator's own network); refused otherwise, after
    /// DNS resolution [env: HANGAR_WEBHOOK_ALLOW_PRIVATE=true] [default: refused]
    #[arg(long)]
    pub webhook_allow_private: bool,
    /// Most async jobs of one agent running at once, across every server
    /// sharing the database [env: HANGAR_JOB_CONCURRENCY] [default: 32]
    #[arg(long, value_name = "N")]
    pub job_concurrency: Option<u32>,
    /// Largest archive an upload URL takes, in MiB
    /// [env: HANGAR_MAX_UPLOAD_MB] [default: 512]
    #[arg(long, value_name = "MIB")]
    pub max_upload_mb: Option<u64>,
    /// Log lines kept per instance (the newest)
    /// [env: HANGAR_LOG_RETENTION_LINES] [default: 100000]
    #[arg(long, value_name = "N")]
    pub log_retention_lines: Option<u32>,
    /// Hours log lines are kept
    /// [env: HANGAR_LOG_RETENTION_HOURS] [default: 168, a week]
    #[arg(long, value_name = "HOURS")]
    pub log_retention_hours: Option<u64>,
    /// How long the metric history (request counts, latency, CPU and memory
    /// per instance and minute, what `GET /v1/agents/{id}/metrics` plots) is
    /// kept, in minutes, hours or days: `90m`, `48h`, `7d`; older figures are
    /// gone from every window [env: HANGAR_METRIC_RETENTION] [default: 7d]
    #[arg(long, value_name = "DURATION")]
    pub metric_retention: Option<String>,
    /// Origins whose pages may call the API from a browser, comma-separated
    /// (`https://console.example.com,http://localhost:3000`), or `*`
    /// [env: HANGAR_CORS_ORIGINS] [default: none]
    #[arg(long, value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// The Docker engine docker clouds run on: unix:///path, tcp://host:port,
    /// http(s)://host:port [env: HANGAR_DOCKER_HOST, then DOCKER_HOST]
    /// [default: the local socket]
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
    /// Requests one API key may send: N/s, N/m or N/h, or `off`
    /// [env: HANGAR_RATE_LIMIT] [default: 50/s]
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Requests one API key may send at once after a quiet spell
    /// [env: HANGAR_RATE_LIMIT_BURST] [default: twice the rate's N]
    #[arg(long, value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// What replicas may reach outside the host when their agent's
    /// `config.network.egress` does not say: `open` (fine on a single-tenant
    /// box) or `none` (recommended when several organizations share it)
    /// [env: HANGAR_EGRESS_DEFAULT] [default: open]
    #[arg(long, value_name = "open|none")]
    pub egress_default: Option<String>,
    /// Host names the egress proxy sends to a fixed address instead of
    /// resolving them, comma-separated `name=ip:port` (an internal service,
    /// a test server) [env: HANGAR_EGRESS_HOSTS] [default: none]
    #[arg(long, value_name = "NAME=IP:PORT,...")]
    pub egress_hosts: Option<String>,
    /// More certificate authorities (a PEM file) the egress proxy trusts
    /// upstream, besides the public web's [env: HANGAR_EGRESS_UPSTREAM_CA]
    /// [default: none]
    #[arg(long, value_name = "FILE")]
    pub egress_upstream_ca: Option<PathBuf>,
    /// File holding the 32-byte key secrets are sealed with and stream
    /// tokens and upload URLs are signed with (raw bytes, or 64 hex digits,
    /// or base64): the same on every server sharing a database
    /// [env: HANGAR_SECRET_KEY_FILE; or the key itself in HANGAR_SECRET_KEY]
    /// [default: secret.key in the data dir, made at the first start]
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Where uploads' archives and build artifacts are kept: `data_dir` (this
    /// server's disk), `store` (the database, shared by every server on
    /// it) or `s3://bucket[/prefix]` (credentials, region and endpoint from
    /// the AWS_* variables) [env: HANGAR_BLOBS]
    /// [default: data_dir on SQLite, store on PostgreSQL]
    #[arg(long, value_name = "data_dir|store|s3://BUCKET/PREFIX")]
    pub blobs: Option<String>,
    /// Configuration file [env: HANGAR_CONFIG] [default: ./hangar.toml when present]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The `[server]` table of `hangar.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    base_domain: Option<String>,
    admin_key: Option<String>,
    public_url: Option<String>,
    scale_to_zero_after: Option<u64>,
    node_dead_after: Option<u64>,
    instance_lease: Option<u64>,
    replica_concurrency: Option<usize>,
    webhook_retry_schedule: Option<String>,
    webhook_allow_private: Option<bool>,
    job_concurrency: Option<u32>,
    max_upload_mb: Option<u64>,
    log_retention_lines: Option<u32>,
    log_retention_hours: Option<u64>,
    metric_retention: Option<String>,
    cors_origins: Option<String>,
    docker_host: Option<String>,
    rate_limit: Option<String>,
    rate_limit_burst: Option<u32>,
    egress_default: Option<String>,
    egress_hosts: Option<String>,
    egress_upstream_ca: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    blobs: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    server: FileServer,
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listener address.
    pub listen: SocketAddr,
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Database URL.
    pub database_url: String,
    /// Only migrate the database, then exit.
    pub migrate_only: bool,
    /// Base domain of instance URLs.
    pub base_domain: String,
    /// Bootstrap key, when configured.
    pub admin_key: Option<String>,
    /// Public URL of this server (no trailing slash), when configured.
    pub public_url: Option<String>,
    /// Idle time before an instance that may scale to zero does.
    pub scale_to_zero_after: std::time::Duration,
    /// Silence after which a server on the same database is shown dead.
    pub node_dead_after: std::time::Duration,
    /// How long an instance's lease lasts without a renewal.
    pub instance_lease: std::time::Duration,
    /// Requests in flight per replica.
    pub replica_concurrency: usize,
    /// Delays between webhook attempts.
    pub webhook_retry_schedule: Vec<std::time::Duration>,
    /// Which receiver addresses webhook deliveries may connect to.
    pub webhook_addresses: hangar_webhooks::AddressPolicy,
    /// Per-agent cap on running async jobs (1–10000).
    pub job_concurrency: u32,
    /// Largest archive an upload URL takes, in bytes.
    pub max_upload_bytes: u64,
    /// Egress of replicas whose agent does not say.
    pub egress_default: hangar_core::network::Egress,
    /// The egress proxy's fixed name mapping.
    pub egress_hosts: std::collections::HashMap<String, SocketAddr>,
    /// More roots the egress proxy trusts upstream (a PEM file).
    pub egress_upstream_ca: Option<PathBuf>,
    /// Browser origins allowed by CORS (`*` for any); empty for none.
    pub cors_origins: Vec<String>,
    /// Log lines kept per instance.
    pub log_retention_lines: u32,
    /// How long log lines are kept.
    pub log_retention: std::time::Duration,
    /// How long the metric history is kept.
    pub metric_retention: std::time::Duration,
    /// The Docker engine's address; `None`: the local socket.
    pub docker_host: Option<String>,
    /// How fast one API key may send requests; `None`: unlimited.
    pub rate_limit: Option<hangar_api::RateLimit>,
    /// The operator's package index settings, passed on to build steps
    /// (those of [`hangar_build::STEP_ENV_NAMES`] that are set).
    pub build_step_env: Vec<(String, String)>,
    /// The configured secret key; `None`: the data dir's `secret.key`.
    pub secret_key: Option<SecretKey>,
    /// Where uploads' archives and build artifacts are kept.
    pub blobs: BlobHome,
}

/// A secret key from the configuration, and which setting gave it (for
/// messages). Its bytes are never shown, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    key: [u8; 32],
    /// The setting it came from: `HANGAR_SECRET_KEY`, or the file's path
    /// and the setting that named it.
    pub source: String,
}

impl SecretKey {
    /// The key's 32 bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where uploads' archives and build artifacts are kept
/// ([`hangar_store::blobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobHome {
    /// Files in this server's data dir: for one server alone.
    DataDir,
    /// Chunks in the database, read by every server on it.
    Store,
    /// Objects in an S3-compatible bucket.
    Bucket(Bucket),
}

/// An S3-compatible bucket: `s3://bucket[/prefix]` and the `AWS_*`
/// variables of the environment (credentials, region, endpoint), which
/// `Debug` does not show.
#[derive(Clone, PartialEq, Eq)]
pub struct Bucket {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    /// The `AWS_*` variables, for `object_store`.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("url", &self.url)
            .field(
                "env",
                &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The names of the settings that give the secret key, for messages that
/// ask for one.
pub const SECRET_KEY_SETTINGS: &str =
    "--secret-key-file, HANGAR_SECRET_KEY_FILE, secret_key_file in hangar.toml, or HANGAR_SECRET_KEY";

/// A 32-byte key written as raw bytes, 64 hex digits or base64 (padded or
/// not), surrounding whitespace aside; `None` for anything else.
fn decode_key(bytes: &[u8]) -> Option<[u8; 32]> {
    use base64::Engine as _;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        // Raw bytes, as a data dir's secret.key holds them; text of that
        // length is neither hex nor base64 of 32 bytes.
        return Some(raw);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = if text.len() == 64 {
        hex::decode(text).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?
    };
    <[u8; 32]>::try_from(decoded.as_slice()).ok()
}

/// The configured secret key: the file named by the flag, the environment
/// or `hangar.toml`, or the key itself in `HANGAR_SECRET_KEY`; one of them
/// at most.
fn secret_key(
    flag: Option<PathBuf>,
    env_get: &dyn Fn(&str) -> Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<SecretKey>, ConfigError> {
    let path = match (flag, env_get("HANGAR_SECRET_KEY_FILE"), file) {
        (Some(path), _, _) => Some((path, "--secret-key-file")),
        (None, Some(path), _) => Some((PathBuf::from(path), "HANGAR_SECRET_KEY_FILE")),
        (None, None, Some(path)) => Some((path, "secret_key_file in hangar.toml")),
        (None, None, None) => None,
    };
    let value = env_get("HANGAR_SECRET_KEY");
    let shape = "32 bytes: raw, 64 hex digits or base64 (e.g. `openssl rand -hex 32`)";
    match (path, value) {
        (Some((_, setting)), Some(_)) => Err(ConfigError(format!(
            "both {setting} and HANGAR_SECRET_KEY give the secret key: set one"
        ))),
        (Some((path, setting)), None) => {
            let bytes = std::fs::read(&path).map_err(|err| {
                ConfigError(format!(
                    "cannot read the secret key file {} ({setting}): {err}",
                    path.display()
                ))
            })?;
            let key = decode_key(&bytes).ok_or_else(|| {
                ConfigError(format!(
                    "the secret key file {} ({setting}) must hold {shape}",
                    path.display()
                ))
            })?;
            Ok(Some(SecretKey {
                key,
                source: format!("{} ({setting})", path.display()),
            }))
        }
        (None, Some(value)) => {
            let key = decode_key(value.as_bytes())
                .ok_or_else(|| ConfigError(format!("HANGAR_SECRET_KEY must be {shape}")))?;
            Ok(Some(SecretKey {
                key,
                source: "HANGAR_SECRET_KEY".to_owned(),
            }))
        }
        (None, None) => Ok(None),
    }
}

/// The process environment, read once at start (by `main`) and handed to
/// [`Config::resolve`] and the client commands: the one place outside
/// tests that reads it (a clippy rule keeps it so), so every setting is
/// visible here and tests pass a map instead.
#[allow(
    clippy::disallowed_methods,
    reason = "configuration is where the environment is read"
)]
#[must_use]
pub fn process_env() -> HashMap<String, String> {
    // Variables that are not UTF-8 are left out rather than ending the
    // process: none of Hangar's are.
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// Bad configuration; `hangar serve` prints it on one line and exits 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Resolves `args` over `env` over the config file over defaults.
    pub fn resolve(args: ServeArgs, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let env_get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let file_path = args
            .config
            .clone()
            .or_else(|| env_get("HANGAR_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            Some(p) => read_file(p, true)?,
            None => read_file(Path::new("hangar.toml"), false)?,
        }
        .server;

        let listen = args
            .listen
            .or_else(|| env_get("HANGAR_LISTEN"))
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError(format!(
                "listen address '{listen}' is not IP:PORT (e.g. 127.0.0.1:7070)"
            ))
        })?;
        let data_dir = args
            .data_dir
            .or_else(|| env_get("HANGAR_DATA_DIR").map(PathBuf::from))
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("hangar-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data dir must not be empty".into()));
        }
        let database_url = args
            .database_url
            .or_else(|| env_get("HANGAR_DATABASE_URL"))
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("hangar.db").display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError(format!(
                "database URL must start with sqlite:, postgres:// or postgresql:// (got '{}')",
                redact_url(&database_url)
            )));
        }
        let base_domain = args
            .base_domain
            .or_else(|| env_get("HANGAR_BASE_DOMAIN"))
            .or(file.base_domain)
            .unwrap_or_else(|| "localhost".into());
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if base_domain.len() > 200 || !base_domain.split('.').all(label_ok) {
            return Err(ConfigError(format!(
                "base domain '{base_domain}' is not a DNS name"
            )));
        }
        let admin_key = args
            .admin_key
            .or_else(|| env_get("HANGAR_ADMIN_KEY"))
            .or(file.admin_key);
        if let Some(k) = &admin_key {
            if k.len() < 16
                || k.len() > 256
                || k.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError(
                    "admin key must be 16 to 256 characters without spaces".into(),
                ));
            }
        }
        let public_url = args
            .public_url
            .or_else(|| env_get("HANGAR_PUBLIC_URL"))
            .or(file.public_url);
        if let Some(u) = &public_url {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && !u.ends_with('/')
                && u.len() <= 2048
                && !u.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ConfigError(format!("public URL '{u}' must be http(s)://host[:port][/path] without a trailing slash")));
            }
        }
        let number = |name: &str, flag: Option<u64>, file: Option<u64>, default: u64, max: u64| {
            let value = match flag {
                Some(v) => v,
                None => match env_get(name) {
                    Some(v) => v
                        .parse()
                        .map_err(|_| ConfigError(format!("{name} '{v}' is not a whole number")))?,
                    None => file.unwrap_or(default),
                },
            };
            if value == 0 || value > max {
                return Err(ConfigError(format!(
                    "{name} must be between 1 and {max} (got {value})"
                )));
            }
            Ok(value)
        };
        let scale_to_zero_after = number(
            "HANGAR_SCALE_TO_ZERO_AFTER",
            args.scale_to_zero_after,
            file.scale_to_zero_after,
            300,
            30 * 24 * 3600,
        )?;
        let node_dead_after = number(
            "HANGAR_NODE_DEAD_AFTER",
            args.node_dead_after,
            file.node_dead_after,
            15,
            3600,
        )?;
        let instance_lease = number(
            "HANGAR_INSTANCE_LEASE",
            args.instance_lease,
            file.instance_lease,
            15,
            3600,
        )?;
        let replica_concurrency = number(
            "HANGAR_REPLICA_CONCURRENCY",
            args.replica_concurrency.map(|v| v as u64),
            file.replica_concurrency.map(|v| v as u64),
            100,
            100_000,
        )?;
        let schedule = args
            .webhook_retry_schedule
            .or_else(|| env_get("HANGAR_WEBHOOK_RETRY_SCHEDULE"))
            .or(file.webhook_retry_schedule);
        let webhook_retry_schedule = match schedule {
            Some(text) => parse_schedule(&text)?,
            None => hangar_webhooks::DEFAULT_SCHEDULE.to_vec(),
        };
        let webhook_allow_private = if args.webhook_allow_private {
            true
        } else {
            match env_get("HANGAR_WEBHOOK_ALLOW_PRIVATE") {
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ConfigError(format!(
                            "HANGAR_WEBHOOK_ALLOW_PRIVATE '{v}' is not true or false"
                        )))
                    }
                },
                None => file.webhook_allow_private.unwrap_or(false),
            }
        };
        let webhook_addresses = if webhook_allow_private {
            hangar_webhooks::AddressPolicy::AllowPrivate
        } else {
            hangar_webhooks::AddressPolicy::PublicOnly
        };
        let job_concurrency = match args.job_concurrency {
            Some(n) => n,
            None => match env_get("HANGAR_JOB_CONCURRENCY") {
                Some(v) => v.parse().map_err(|_| {
                    ConfigError(format!("HANGAR_JOB_CONCURRENCY '{v}' is not a number"))
                })?,
                None => file.job_concurrency.unwrap_or(32),
            },
        };
        if !(1..=10_000).contains(&job_concurrency) {
            return Err(ConfigError(format!(
                "job concurrency {job_concurrency} must be between 1 and 10000"
            )));
        }
        let max_upload_mb = number(
            "HANGAR_MAX_UPLOAD_MB",
            args.max_upload_mb,
            file.max_upload_mb,
            512,
            1 << 20,
        )?;
        let log_retention_lines = number(
            "HANGAR_LOG_RETENTION_LINES",
            args.log_retention_lines.map(u64::from),
            file.log_retention_lines.map(u64::from),
            100_000,
            10_000_000,
        )?;
        let log_retention_hours = number(
            "HANGAR_LOG_RETENTION_HOURS",
            args.log_retention_hours,
            file.log_retention_hours,
            168,
            24 * 3650,
        )?;
        let metric_retention = args
            .metric_retention
            .or_else(|| env_get("HANGAR_METRIC_RETENTION"))
            .or(file.metric_retention)
            .map(|text| parse_retention(&text))
            .transpose()?
            .unwrap_or(DEFAULT_METRIC_RETENTION);
        let cors_origins = args
            .cors_origins
            .or_else(|| env_get("HANGAR_CORS_ORIGINS"))
            .or(file.cors_origins)
            .map(|text| parse_origins(&text))
            .transpose()?
            .unwrap_or_default();
        // Hangar's own settings first; an inherited DOCKER_HOST last, and
        // one this server cannot use is passed over (it may be meant for
        // another tool), not a reason to refuse to start.
        let docker_host = match args
            .docker_host
            .or_else(|| env_get("HANGAR_DOCKER_HOST"))
            .or(file.docker_host)
        {
            Some(host) => Some(docker_host(host)?),
            None => env_get("DOCKER_HOST").and_then(|host| match docker_host(host) {
                Ok(host) => Some(host),
                Err(err) => {
                    eprintln!("hangar: ignoring DOCKER_HOST: {err}");
                    None
                }
            }),
        };
        let rate_limit = parse_rate_limit(
            args.rate_limit
                .or_else(|| env_get("HANGAR_RATE_LIMIT"))
                .or(file.rate_limit),
            match args.rate_limit_burst {
                Some(n) => Some(n),
                None => env_get("HANGAR_RATE_LIMIT_BURST")
                    .map(|v| {
                        v.parse().map_err(|_| {
                            ConfigError(format!(
                                "HANGAR_RATE_LIMIT_BURST '{v}' is not a whole number"
                            ))
                        })
                    })
                    .transpose()?
                    .or(file.rate_limit_burst),
            },
        )?;
        let egress_default = match args
            .egress_default
            .or_else(|| env_get("HANGAR_EGRESS_DEFAULT"))
            .or(file.egress_default)
        {
            Some(text) => text
                .parse()
                .map_err(|err| ConfigError(format!("egress default: {err}")))?,
            None => hangar_core::network::Egress::Open,
        };
        let egress_hosts = parse_egress_hosts(
            args.egress_hosts
                .or_else(|| env_get("HANGAR_EGRESS_HOSTS"))
                .or(file.egress_hosts)
                .as_deref()
                .unwrap_or(""),
        )?;
        let egress_upstream_ca = args
            .egress_upstream_ca
            .or_else(|| env_get("HANGAR_EGRESS_UPSTREAM_CA").map(PathBuf::from))
            .or(file.egress_upstream_ca);
        let secret_key = secret_key(args.secret_key_file, &env_get, file.secret_key_file)?;
        let blobs = match args
            .blobs
            .or_else(|| env_get("HANGAR_BLOBS"))
            .or(file.blobs)
            .as_deref()
        {
            Some("data_dir") => BlobHome::DataDir,
            Some("store") => BlobHome::Store,
            Some(url) if url.starts_with("s3://") => {
                let bucket = url["s3://".len()..].split('/').next().unwrap_or_default();
                let ok = (3..=63).contains(&bucket.len())
                    && bucket
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                    && !url.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    return Err(ConfigError(format!(
                        "blobs '{url}' must be s3://bucket[/prefix] with an S3 bucket name"
                    )));
                }
                let mut env: Vec<(String, String)> = env
                    .iter()
                    .filter(|(name, _)| name.starts_with("AWS_"))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                env.sort();
                BlobHome::Bucket(Bucket {
                    url: url.to_owned(),
                    env,
                })
            }
            // One server alone on SQLite; servers sharing PostgreSQL must
            // read each other's uploads and artifacts.
            None if database_url.starts_with("sqlite:") => BlobHome::DataDir,
            None => BlobHome::Store,
            Some(other) => {
                return Err(ConfigError(format!(
                    "blobs '{other}' must be data_dir (this server's disk), store (the database) or s3://bucket[/prefix]"
                )))
            }
        };
        let build_step_env = hangar_build::STEP_ENV_NAMES
            .iter()
            .filter_map(|&name| env.get(name).map(|value| (name.to_owned(), value.clone())))
            .collect();
        Ok(Config {
            migrate_only: args.migrate_only,
            secret_key,
            blobs,
            egress_default,
            egress_hosts,
            egress_upstream_ca,
            rate_limit,
            build_step_env,
            docker_host,
            cors_origins,
            log_retention_lines: u32::try_from(log_retention_lines).unwrap_or(u32::MAX),
            log_retention: std::time::Duration::from_secs(log_retention_hours * 3600),
            metric_retention,
            listen,
            data_dir,
            database_url,
            base_domain,
            admin_key,
            public_url,
            scale_to_zero_after: std::time::Duration::from_secs(scale_to_zero_after),
            node_dead_after: std::time::Duration::from_secs(node_dead_after),
            instance_lease: std::time::Duration::from_secs(instance_lease),
            replica_concurrency: usize::try_from(replica_concurrency).unwrap_or(usize::MAX),
            webhook_retry_schedule,
            webhook_addresses,
            job_concurrency,
            max_upload_bytes: max_upload_mb << 20,
        })
    }
}

/// `name=ip:port,…` (empty: none).
fn parse_egress_hosts(
    text: &str,
) -> Result<std::collections::HashMap<String, SocketAddr>, ConfigError> {
    let mut hosts = std::collections::HashMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(name, addr)| {
            let name = name.trim().to_ascii_lowercase();
            let valid = hangar_core::network::HostPattern::from_str(&name)
                .is_ok_and(|pattern| !pattern.wildcard && pattern.port.is_none());
            Some((name, addr.trim().parse::<SocketAddr>().ok()?)).filter(|_| valid)
        });
        let (name, addr) = parsed.ok_or_else(|| {
            ConfigError(format!(
                "egress host '{entry}' must be name=ip:port, such as api.internal=10.0.0.5:443"
            ))
        })?;
        hosts.insert(name, addr);
    }
    Ok(hosts)
}

/// The per-key rate limit: `rate` is `N/s`, `N/m` or `N/h` (default
/// `50/s`) or `off`; `burst` defaults to twice N (so 100 with the default).
fn parse_rate_limit(
    rate: Option<String>,
    burst: Option<u32>,
) -> Result<Option<hangar_api::RateLimit>, ConfigError> {
    use std::num::NonZeroU32;
    const MAX: u32 = 1_000_000;
    let text = rate.unwrap_or_else(|| "50/s".to_owned());
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || {
        ConfigError(format!(
            "rate limit '{text}' must be N/s, N/m or N/h with N from 1 to {MAX} (e.g. 50/s), or off"
        ))
    };
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count = count
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX)
        .and_then(NonZeroU32::new)
        .ok_or_else(bad)?;
    let unit = match unit.trim() {
        "s" => std::time::Duration::from_secs(1),
        "m" => std::time::Duration::from_secs(60),
        "h" => std::time::Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    let burst = match burst {
        Some(n) => NonZeroU32::new(n)
            .filter(|n| n.get() <= 2 * MAX)
            .ok_or_else(|| {
                ConfigError(format!(
                    "rate limit burst must be between 1 and {} (got {n})",
                    2 * MAX
                ))
            })?,
        None => count.saturating_mul(const { NonZeroU32::new(2).expect("non-zero") }),
    };
    Ok(Some(hangar_api::RateLimit { count, unit, burst }))
}

/// A Docker engine address this server can speak to: a Unix socket or
/// plain HTTP over TCP (no TLS).
fn docker_host(host: String) -> Result<String, ConfigError> {
    let ok = ["unix:///", "tcp://", "http://"]
        .iter()
        .any(|scheme| host.starts_with(scheme) && host.len() > scheme.len())
        && host.len() <= 2048
        && !host.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(host)
    } else {
        Err(ConfigError(format!(
            "docker host '{host}' must be unix:///path, tcp://host:port or http://host:port (TLS to the engine is not supported)"
        )))
    }
}

/// CORS origins: comma-separated `scheme://host[:port]` (no path), or `*`.
fn parse_origins(text: &str) -> Result<Vec<String>, ConfigError> {
    // Browsers send origins lower-cased and without a default port, and CORS
    // compares them byte for byte: configured ones are written the same way.
    let origins: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let o = o.to_ascii_lowercase();
            match (o.strip_suffix(":443"), o.strip_suffix(":80")) {
                (Some(bare), _) if o.starts_with("https://") => bare.to_owned(),
                (_, Some(bare)) if o.starts_with("http://") => bare.to_owned(),
                _ => o,
            }
        })
        .collect();
    for origin in &origins {
        let rest = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let ok = origin == "*"
            || rest.is_some_and(|host| {
                !host.is_empty()
                    && host.len() <= 253
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
            });
        if !ok {
            return Err(ConfigError(format!(
                "CORS origin '{origin}' must be * or scheme://host[:port] without a path (e.g. https://console.example.com)"
            )));
        }
    }
    Ok(origins)
}

/// A retry schedule: comma-separated delays, each a whole number with `ms`,
/// `s`, `m` or `h` (1 to 20 delays, each at most 7 days).
fn parse_schedule(text: &str) -> Result<Vec<std::time::Duration>, ConfigError> {
    let bad = |why: &str| {
        ConfigError(format!(
            "webhook retry schedule '{text}': {why} (e.g. \"5s,5m,30m,2h\")"
        ))
    };
    let delays = text
        .split(',')
        .map(|d| {
            let d = d.trim();
            let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
            let (n, unit) = d.split_at(split);
            let n: u64 = n
                .parse()
                .map_err(|_| bad("each delay is a number and a unit"))?;
            let ms = match unit {
                "ms" => n,
                "s" => n.saturating_mul(1000),
                "m" => n.saturating_mul(60_000),
                "h" => n.saturating_mul(3_600_000),
                _ => return Err(bad("units are ms, s, m or h")),
            };
            if ms == 0 || ms > 7 * 24 * 3_600_000 {
                return Err(bad("each delay is between 1 ms and 7 days"));
            }
            Ok(std::time::Duration::from_millis(ms))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 20 {
        return Err(bad("at most 20 delays"));
    }
    Ok(delays)
}

/// The metric history's retention when none is configured: the longest
/// window the API plots.
const DEFAULT_METRIC_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A metric retention: a whole number of minutes, hours or days (`90m`,
/// `48h`, `7d`), from an hour to a year (a shorter one would empty the
/// shortest window while it is shown; rows are per minute, so a longer one
/// is mostly disk).
fn parse_retention(text: &str) -> Result<std::time::Duration, ConfigError> {
    let bad = |why: &str| ConfigError(format!("metric retention '{text}': {why} (e.g. \"7d\")"));
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| bad("a number and a unit, m, h or d"))?;
    let minutes = match unit {
        "m" => n,
        "h" => n.saturating_mul(60),
        "d" => n.saturating_mul(24 * 60),
        _ => return Err(bad("units are m, h or d")),
    };
    if !(60..=366 * 24 * 60).contains(&minutes) {
        return Err(bad("between 1 hour and 366 days"));
    }
    Ok(std::time::Duration::from_secs(minutes * 60))
}

fn read_file(path: &Path, required: bool) -> Result<ConfigFile, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            ConfigError(format!("{}: {first} ({})", path.display(), e.message()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok(ConfigFile::default())
        }
        Err(e) => Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
    }
}

/// A database URL with its password hidden (in the user part and in a
/// `password=` parameter), for messages.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let mut shown = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    if let Some(q) = shown.find('?') {
        let (base, query) = shown.split_at(q + 1);
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        shown = format!("{base}{}", params.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedules_read_units_and_refuse_nonsense() {
        use std::time::Duration;
        assert_eq!(
            parse_schedule("500ms, 5s,2m,1h").expect("schedule"),
            vec![
                Duration::from_millis(500),
                Duration::from_secs(5),
                Duration::from_secs(120),
                Duration::from_secs(3600)
            ]
        );
        for bad in ["", "5", "5x", "0s", "-1s", "9999h", "1s,,2s"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metric_retention_reads_minutes_hours_or_days_from_the_flag_or_environment() {
        use std::time::Duration;
        let days = |n: u64| Duration::from_secs(n * 24 * 3600);
        let resolved = |args: ServeArgs, vars: &[(&str, &str)]| {
            Config::resolve(args, &env(vars)).map(|c| c.metric_retention)
        };
        assert_eq!(
            resolved(ServeArgs::default(), &[]).expect("default"),
            days(7)
        );
        assert_eq!(
            resolved(ServeArgs::default(), &[("HANGAR_METRIC_RETENTION", "48h")]).expect("env"),
            days(2)
        );
        let flag = ServeArgs {
            metric_retention: Some("90m".into()),
            ..ServeArgs::default()
        };
        assert_eq!(
            resolved(flag, &[("HANGAR_METRIC_RETENTION", "48h")]).expect("the flag wins"),
            Duration::from_secs(90 * 60)
        );
        assert_eq!(parse_retention("30d").expect("days"), days(30));
        for bad in [
            "", "7", "7 d", "7w", "-1d", "59m", "0h", "367d", "1.5d", "d",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad}");
            let args = ServeArgs {
                metric_retention: Some(bad.into()),
                ..ServeArgs::default()
            };
            assert!(resolved(args, &[]).is_err(), "{bad} is refused at start");
        }
    }

    #[test]
    fn rate_limits_read_a_count_per_unit_or_off() {
        use std::time::Duration;
        let limit = |rate: &str, burst: Option<u32>| {
            parse_rate_limit(Some(rate.to_owned()), burst)
                .expect("valid")
                .map(|l| (l.count.get(), l.unit, l.burst.get()))
        };
        assert_eq!(
            parse_rate_limit(None, None).expect("default"),
            Some(hangar_api::RateLimit::default()),
            "50/s in bursts of 100"
        );
        assert_eq!(limit("10/m", None), Some((10, Duration::from_secs(60), 20)));
        assert_eq!(
            limit("2/h", Some(5)),
            Some((2, Duration::from_secs(3600), 5))
        );
        assert_eq!(limit("off", Some(5)), None);
        for bad in [
            "",
            "50",
            "0/s",
            "50/d",
            "-1/s",
            "1.5/s",
            "2000000/s",
            "fast",
        ] {
            assert!(
                parse_rate_limit(Some(bad.to_owned()), None).is_err(),
                "{bad}"
            );
        }
        assert!(parse_rate_limit(None, Some(0)).is_err(), "a burst of 0");
    }

    #[test]
    fn cors_origins_are_origins_or_a_star() {
        assert_eq!(
            parse_origins("https://a.example, http://localhost:3000").expect("origins"),
            vec!["https://a.example", "http://localhost:3000"]
        );
        assert_eq!(parse_origins("*").expect("any"), vec!["*"]);
        assert_eq!(
            parse_origins("https://Console.Example.com:443,http://a.test:80,http://a.test:8080")
                .expect("normalized"),
            vec![
                "https://console.example.com",
                "http://a.test",
                "http://a.test:8080"
            ]
        );
        for bad in [
            "a.example",
            "https://a.example/",
            "https://a.example/app",
            "ftp://a",
            "http://",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let dir = std::env::temp_dir().join("hangar-config-test-none.toml");
        let args = ServeArgs {
            config: None,
            ..Default::default()
        };
        // No hangar.toml in the test's working dir is assumed; point at a missing explicit file instead to prove it is required.
        assert!(Config::resolve(
            ServeArgs {
                config: Some(dir),
                ..Default::default()
            },
            &env(&[])
        )
        .is_err());
        let c = Config::resolve(args, &env(&[])).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.base_domain, "localhost");
        assert!(c.database_url.starts_with("sqlite://hangar-data"));
        assert_eq!(
            c.webhook_addresses,
            hangar_webhooks::AddressPolicy::PublicOnly,
            "private webhook receivers are refused by default"
        );
    }

    #[test]
    fn private_webhook_receivers_are_allowed_by_flag_env_or_file() {
        use hangar_webhooks::AddressPolicy::{AllowPrivate, PublicOnly};
        let path = std::env::temp_dir().join(format!(
            "hangar-config-webhooks-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "[server]\nwebhook_allow_private = true\n").expect("write");
        let file = path.to_str().expect("utf8");
        let policy = |flag: bool, pairs: &[(&str, &str)]| {
            Config::resolve(
                ServeArgs {
                    webhook_allow_private: flag,
                    ..Default::default()
                },
                &env(pairs),
            )
            .map(|c| c.webhook_addresses)
        };
        assert_eq!(policy(true, &[]).expect("valid"), AllowPrivate);
        assert_eq!(
            policy(false, &[("HANGAR_WEBHOOK_ALLOW_PRIVATE", "true")]).expect("valid"),
            AllowPrivate
        );
        assert_eq!(
            policy(false, &[("HANGAR_CONFIG", file)]).expect("valid"),
            AllowPrivate
        );
        assert_eq!(
            policy(
                false,
                &[
                    ("HANGAR_CONFIG", file),
                    ("HANGAR_WEBHOOK_ALLOW_PRIVATE", "0")
                ]
            )
            .expect("valid"),
            PublicOnly,
            "env beats file"
        );
        assert_eq!(
            policy(true, &[("HANGAR_WEBHOOK_ALLOW_PRIVATE", "false")]).expect("valid"),
            AllowPrivate,
            "flag beats env"
        );
        assert!(policy(false, &[("HANGAR_WEBHOOK_ALLOW_PRIVATE", "yes please")]).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let path = std::env::temp_dir().join(format!("hangar-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9000\"\nbase_domain = \"file.test\"\ndata_dir = \"/tmp/x\"\n").expect("write");
        let e = env(&[
            ("HANGAR_LISTEN", "127.0.0.1:8000"),
            ("HANGAR_CONFIG", path.to_str().expect("utf8")),
        ]);
        let c = Config::resolve(ServeArgs::default(), &e).expect("valid");
        assert_eq!(c.listen.port(), 8000, "env beats file");
        assert_eq!(c.base_domain, "file.test", "file beats default");
        let c = Config::resolve(
            ServeArgs {
                listen: Some("127.0.0.1:7000".into()),
                ..Default::default()
            },
            &e,
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 7000, "flag beats env");
        let docker = |pairs: &[(&str, &str)]| {
            Config::resolve(ServeArgs::default(), &env(pairs))
                .expect("valid")
                .docker_host
        };
        assert_eq!(docker(&[]), None, "the local socket");
        assert_eq!(
            docker(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]).as_deref(),
            Some("tcp://10.0.0.1:2375")
        );
        assert_eq!(
            docker(&[
                ("DOCKER_HOST", "tcp://10.0.0.1:2375"),
                ("HANGAR_DOCKER_HOST", "unix:///run/docker.sock")
            ])
            .as_deref(),
            Some("unix:///run/docker.sock"),
            "Hangar's own variable first"
        );
        assert_eq!(
            docker(&[("DOCKER_HOST", "ssh://me@build-host")]),
            None,
            "an inherited DOCKER_HOST this server cannot use is passed over"
        );
        std::fs::write(&path, "[server]\nlisen = \"x\"\n").expect("write");
        assert!(
            Config::resolve(ServeArgs::default(), &e).is_err(),
            "unknown keys are errors"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn package_index_settings_are_passed_to_build_steps() {
        let c = Config::resolve(
            ServeArgs::default(),
            &env(&[
                ("PIP_INDEX_URL", "https://mirror.example/simple"),
                ("NPM_CONFIG_REGISTRY", "https://npm.example"),
                ("AWS_SECRET_ACCESS_KEY", "not for build steps"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            c.build_step_env,
            vec![
                (
                    "PIP_INDEX_URL".to_owned(),
                    "https://mirror.example/simple".to_owned()
                ),
                (
                    "NPM_CONFIG_REGISTRY".to_owned(),
                    "https://npm.example".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn the_secret_key_comes_from_a_file_or_the_environment_never_both() {
        let dir = std::env::temp_dir().join(format!(
            "hangar-config-key-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let key: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7).expect("byte"));
        let resolve = |args: ServeArgs, pairs: &[(&str, &str)]| {
            Config::resolve(args, &env(pairs)).map(|c| c.secret_key)
        };
        // None configured: the data dir's.
        assert_eq!(resolve(ServeArgs::default(), &[]).expect("valid"), None);
        // Raw bytes (a data dir's secret.key, copied), hex, base64.
        let raw = dir.join("raw.key");
        std::fs::write(&raw, key).expect("write");
        let hex_file = dir.join("hex.key");
        std::fs::write(&hex_file, format!("{}\n", hex::encode(key))).expect("write");
        for (args, pairs) in [
            (
                ServeArgs {
                    secret_key_file: Some(raw.clone()),
                    ..Default::default()
                },
                vec![],
            ),
            (
                ServeArgs::default(),
                vec![("HANGAR_SECRET_KEY_FILE", hex_file.to_str().expect("utf8"))],
            ),
        ] {
            let found = resolve(args, &pairs).expect("valid").expect("a key");
            assert_eq!(found.bytes(), &key);
        }
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        let found = resolve(ServeArgs::default(), &[("HANGAR_SECRET_KEY", &encoded)])
            .expect("valid")
            .expect("a key");
        assert_eq!(
            (found.bytes(), found.source.as_str()),
            (&key, "HANGAR_SECRET_KEY")
        );
        assert!(
            !format!("{found:?}").contains(&hex::encode(key))
                && !format!("{found:?}").contains(&encoded),
            "Debug shows no key"
        );
        // Both, a short key, a missing file: refused, naming the setting.
        let both = resolve(
            ServeArgs {
                secret_key_file: Some(raw.clone()),
                ..Default::default()
            },
            &[("HANGAR_SECRET_KEY", &encoded)],
        )
        .expect_err("both");
        assert!(both.to_string().contains("set one"), "{both}");
        let short =
            resolve(ServeArgs::default(), &[("HANGAR_SECRET_KEY", "abcd")]).expect_err("short");
        assert!(short.to_string().contains("HANGAR_SECRET_KEY"), "{short}");
        let missing = resolve(
            ServeArgs::default(),
            &[("HANGAR_SECRET_KEY_FILE", "/nonexistent/hangar.key")],
        )
        .expect_err("missing");
        assert!(
            missing.to_string().contains("HANGAR_SECRET_KEY_FILE"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn blobs_default_to_the_data_dir_alone_and_the_store_when_shared() {
        let blobs = |args: ServeArgs, pairs: &[(&str, &str)]| {
            Config::resolve(args, &env(pairs)).map(|c| c.blobs)
        };
        assert_eq!(
            blobs(ServeArgs::default(), &[]).expect("valid"),
            BlobHome::DataDir
        );
        let postgres = ServeArgs {
            database_url: Some("postgres://h/db".into()),
            ..Default::default()
        };
        assert_eq!(
            blobs(postgres.clone(), &[]).expect("valid"),
            BlobHome::Store
        );
        assert_eq!(
            blobs(postgres, &[("HANGAR_BLOBS", "data_dir")]).expect("valid"),
            BlobHome::DataDir
        );
        assert!(blobs(ServeArgs::default(), &[("HANGAR_BLOBS", "s4://x")]).is_err());
        assert!(blobs(ServeArgs::default(), &[("HANGAR_BLOBS", "s3://No_Such")]).is_err());
        let bucket = blobs(
            ServeArgs {
                blobs: Some("s3://hangar-blobs/prod".into()),
                ..Default::default()
            },
            &[
                ("AWS_SECRET_ACCESS_KEY", "very secret"),
                ("AWS_REGION", "eu-west-1"),
                ("HOME", "/root"),
            ],
        )
        .expect("valid");
        let BlobHome::Bucket(bucket) = bucket else {
            panic!("not a bucket: {bucket:?}")
        };
        assert_eq!(bucket.url, "s3://hangar-blobs/prod");
        assert_eq!(
            bucket
                .env
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["AWS_REGION", "AWS_SECRET_ACCESS_KEY"]
        );
        assert!(!format!("{bucket:?}").contains("very secret"));
    }

    #[test]
    fn instance_leases_last_15_s_unless_a_flag_env_or_file_says() {
        use std::time::Duration;
        let lease = |args: ServeArgs, pairs: &[(&str, &str)]| {
            Config::resolve(args, &env(pairs)).map(|c| c.instance_lease)
        };
        assert_eq!(
            lease(ServeArgs::default(), &[]).expect("default"),
            Duration::from_secs(15)
        );
        let path =
            std::env::temp_dir().join(format!("hangar-config-lease-{}.toml", std::process::id()));
        std::fs::write(&path, "[server]\ninstance_lease = 30\n").expect("write");
        let file = path.to_str().expect("utf8");
        assert_eq!(
            lease(ServeArgs::default(), &[("HANGAR_CONFIG", file)]).expect("file"),
            Duration::from_secs(30)
        );
        assert_eq!(
            lease(
                ServeArgs::default(),
                &[("HANGAR_CONFIG", file), ("HANGAR_INSTANCE_LEASE", "20")]
            )
            .expect("env"),
            Duration::from_secs(20)
        );
        let flag = ServeArgs {
            instance_lease: Some(5),
            ..Default::default()
        };
        assert_eq!(
            lease(flag, &[("HANGAR_INSTANCE_LEASE", "20")]).expect("flag"),
            Duration::from_secs(5)
        );
        assert!(lease(ServeArgs::default(), &[("HANGAR_INSTANCE_LEASE", "0")]).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            ServeArgs {
                listen: Some("nope".into()),
                ..Default::default()
            },
            ServeArgs {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
            ServeArgs {
                base_domain: Some("bad domain".into()),
                ..Default::default()
            },
            ServeArgs {
                admin_key: Some("short".into()),
                ..Default::default()
            },
            ServeArgs {
                job_concurrency: Some(0),
                ..Default::default()
            },
            ServeArgs {
                docker_host: Some("/var/run/docker.sock".into()),
                ..Default::default()
            },
            ServeArgs {
                docker_host: Some("https://engine:2376".into()),
                ..Default::default()
            },
        ];
        for args in bad {
            assert!(
                Config::resolve(args.clone(), &env(&[])).is_err(),
                "{args:?}"
            );
        }
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
    }
}
