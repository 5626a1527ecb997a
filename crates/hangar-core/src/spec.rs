//! The parts of an agent blueprint that requests set: runtime, scaling, runtime
//! configuration and source. Each has a stored form (complete, validated) and an
//! input form (every field optional, unknown fields rejected) with an `apply` that
//! lays the input over a base and validates the result as a whole.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::network::NetworkConfig;
use crate::validate;
use crate::Invalid;

/// Most replicas one instance may ask for.
pub const MAX_REPLICAS: u32 = 100;

crate::string_enum! {
    /// How an instance is run and reached.
    pub enum DeploymentType {
        /// An HTTP server kept running.
        HttpLongRunning = "HTTP_LONG_RUNNING",
        /// An HTTP server scaled to zero when idle and started on the next request.
        HttpColdStart = "HTTP_COLD_START",
        /// A process that reads requests on stdin and answers on stdout.
        Stdin = "STDIN",
    }
}

/// Language runtime of an agent (`{"language": "python", "version": "3.11"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// `python`, `node`, or another language a `hangar.toml` builds.
    #[schema(pattern = r"^[A-Za-z0-9._+-]{1,32}$")]
    pub language: Option<String>,
    /// Language version, e.g. `3.11`.
    #[schema(pattern = r"^[A-Za-z0-9._+-]{1,32}$")]
    pub version: Option<String>,
    /// Framework, informational (e.g. `langchain`).
    #[schema(pattern = r"^[A-Za-z0-9._+-]{1,32}$")]
    pub framework: Option<String>,
}

impl Runtime {
    /// Checks each field's shape.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (field, v) in [
            ("language", &self.language),
            ("version", &self.version),
            ("framework", &self.framework),
        ] {
            if let Some(v) = v {
                validate::token(field, v)?;
            }
        }
        Ok(())
    }

    /// `self` with the fields `input` sets replaced.
    #[must_use]
    pub fn merged(&self, input: &Runtime) -> Runtime {
        Runtime {
            language: input.language.clone().or_else(|| self.language.clone()),
            version: input.version.clone().or_else(|| self.version.clone()),
            framework: input.framework.clone().or_else(|| self.framework.clone()),
        }
    }
}

/// Autoscaling bounds of an agent's default instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaling {
    /// Fewest replicas; 0 allows scale to zero.
    pub min_instances: u32,
    /// Most replicas.
    pub max_instances: u32,
    /// Average CPU per replica the autoscaler aims for.
    pub target_cpu_percent: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_instances: 1,
            max_instances: 1,
            target_cpu_percent: 70,
        }
    }
}

/// Scaling as a request gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingInput {
    /// Fewest replicas (0–100).
    #[schema(maximum = 100)]
    pub min_instances: Option<u32>,
    /// Most replicas (1–100, at least `min_instances`).
    #[schema(minimum = 1, maximum = 100)]
    pub max_instances: Option<u32>,
    /// Target CPU percent (1–100).
    #[schema(minimum = 1, maximum = 100)]
    pub target_cpu_percent: Option<u32>,
}

impl ScalingInput {
    /// `base` with this input laid over it, validated.
    pub fn apply(&self, base: Scaling) -> Result<Scaling, Invalid> {
        let mut s = base;
        if let Some(min) = self.min_instances {
            s.min_instances = min;
            // Raising the floor above an untouched ceiling lifts the ceiling with it.
            if self.max_instances.is_none() && s.max_instances < min {
                s.max_instances = min;
            }
        }
        if let Some(max) = self.max_instances {
            s.max_instances = max;
        }
        if let Some(t) = self.target_cpu_percent {
            s.target_cpu_percent = t;
        }
        if s.min_instances > MAX_REPLICAS {
            return Err(Invalid::new(
                "min_instances",
                format!("must be at most {MAX_REPLICAS}"),
            ));
        }
        if s.max_instances == 0 || s.max_instances > MAX_REPLICAS {
            return Err(Invalid::new(
                "max_instances",
                format!("must be between 1 and {MAX_REPLICAS}"),
            ));
        }
        if s.max_instances < s.min_instances {
            return Err(Invalid::new(
                "max_instances",
                "must be at least min_instances",
            ));
        }
        if !(1..=100).contains(&s.target_cpu_percent) {
            return Err(Invalid::new(
                "target_cpu_percent",
                "must be between 1 and 100",
            ));
        }
        Ok(s)
    }
}

/// How a replica is run and reached (the Instances API's `config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuntimeConfig {
    /// Port the agent listens on (`$PORT`).
    pub port: u16,
    /// Path answered with 2xx when the agent is ready.
    pub health_path: String,
    /// Path invocations are POSTed to.
    pub invoke_path: String,
    /// Kept running (true) or scaled to zero when idle (false).
    pub long_running: bool,
    /// Serves HTTP.
    pub enable_http: bool,
    /// Reads requests on stdin.
    pub stdin_enabled: bool,
    /// Health checks failed in a row after which a replica that was ready
    /// is restarted (counted in `restart_count`, with the crash backoff).
    /// Absent: the server's default, 3 (checks every 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_failures: Option<u32>,
    /// Seconds a replica may take to pass its first health check before it
    /// is replaced (counted as a restart). Absent: the server's default, 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_seconds: Option<u32>,
    /// Seconds a sticky session (`options.session_id`, `X-Hangar-Session`)
    /// lives without a request before it ends. Absent: the server's
    /// default, [`DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS`] (15 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_idle_timeout_seconds: Option<u32>,
    /// What replicas may reach besides their own instance's replicas
    /// (see [`crate::network`]). Absent: no other instance, and the server's
    /// default egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
}

/// Most failed checks in a row `liveness_failures` may ask for.
pub const MAX_LIVENESS_FAILURES: u32 = 100;

/// Longest `start_timeout_seconds`: an hour.
pub const MAX_START_TIMEOUT_SECONDS: u32 = 3600;

/// How long a session lives idle when the agent does not say: 15 minutes.
pub const DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS: u32 = 900;

/// Shortest `session_idle_timeout_seconds`: ten seconds.
pub const MIN_SESSION_IDLE_TIMEOUT_SECONDS: u32 = 10;

/// Longest `session_idle_timeout_seconds`: a week.
pub const MAX_SESSION_IDLE_TIMEOUT_SECONDS: u32 = 7 * 24 * 3600;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            port: 8080,
            health_path: "/health".to_owned(),
            invoke_path: "/invoke".to_owned(),
            long_running: true,
            enable_http: true,
            stdin_enabled: false,
            liveness_failures: None,
            start_timeout_seconds: None,
            session_idle_timeout_seconds: None,
            network: None,
        }
    }
}

impl RuntimeConfig {
    /// The deployment type these flags amount to.
    #[must_use]
    pub fn deployment_type(&self) -> DeploymentType {
        if self.stdin_enabled && !self.enable_http {
            DeploymentType::Stdin
        } else if self.enable_http && !self.long_running {
            DeploymentType::HttpColdStart
        } else {
            DeploymentType::HttpLongRunning
        }
    }

    /// How long a session of this instance lives without a request.
    #[must_use]
    pub fn session_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(
            self.session_idle_timeout_seconds
                .unwrap_or(DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS),
        ))
    }
}

/// Runtime configuration as a request gives it (the Instances API's `config`, and
/// the Agents API's optional `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigInput {
    /// Replicas of the instance (0–100); Instances API only.
    #[schema(maximum = 100)]
    pub replicas: Option<u32>,
    /// Port the agent listens on (1–65535).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
    /// Health check path.
    #[schema(pattern = r"^/[^\s\x00-\x1f\x7f-\x9f]*$", max_length = 256)]
    pub health_path: Option<String>,
    /// Invoke path.
    #[schema(pattern = r"^/[^\s\x00-\x1f\x7f-\x9f]*$", max_length = 256)]
    pub invoke_path: Option<String>,
    /// Keep running (true) or allow scale to zero (false).
    pub long_running: Option<bool>,
    /// Serves HTTP.
    pub enable_http: Option<bool>,
    /// Reads requests on stdin.
    pub stdin_enabled: Option<bool>,
    /// Sets the three flags above at once.
    pub deployment_type: Option<DeploymentType>,
    /// Health checks failed in a row (1–100) after which a replica that was
    /// ready is restarted; default 3, checked every 5 s.
    #[schema(minimum = 1, maximum = 100)]
    pub liveness_failures: Option<u32>,
    /// Seconds (1–3600) a replica may take to become ready before it is
    /// replaced; default 120.
    #[schema(minimum = 1, maximum = 3600)]
    pub start_timeout_seconds: Option<u32>,
    /// Seconds (10–604800) a sticky session lives without a request before
    /// it ends; default 900 (15 minutes).
    pub session_idle_timeout_seconds: Option<u32>,
    /// What replicas may reach: `{"egress": "open" | "none" | {"allow": […]},
    /// "reach": ["agent-name"]}`. Replaces the whole block when given;
    /// changing it replaces the replicas.
    pub network: Option<NetworkConfig>,
}

impl ConfigInput {
    /// `base` with this input laid over it, validated. `replicas` is not part of the
    /// result: callers that accept it read it themselves.
    pub fn apply(&self, base: &RuntimeConfig) -> Result<RuntimeConfig, Invalid> {
        let mut c = base.clone();
        if let Some(t) = self.deployment_type {
            let (long_running, enable_http, stdin_enabled) = match t {
                DeploymentType::HttpLongRunning => (true, true, false),
                DeploymentType::HttpColdStart => (false, true, false),
                DeploymentType::Stdin => (true, false, true),
            };
            let conflicts = [
                ("long_running", self.long_running, long_running),
                ("enable_http", self.enable_http, enable_http),
                ("stdin_enabled", self.stdin_enabled, stdin_enabled),
            ];
            for (field, given, implied) in conflicts {
                if given.is_some_and(|g| g != implied) {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "contradicts deployment_type {t} (which implies {field} = {implied})"
                        ),
                    ));
                }
            }
            (c.long_running, c.enable_http, c.stdin_enabled) =
                (long_running, enable_http, stdin_enabled);
        }
        if let Some(v) = self.long_running {
            c.long_running = v;
        }
        if let Some(v) = self.enable_http {
            c.enable_http = v;
        }
        if let Some(v) = self.stdin_enabled {
            c.stdin_enabled = v;
        }
        if let Some(port) = self.port {
            if port == 0 {
                return Err(Invalid::new("port", "must be between 1 and 65535"));
            }
            c.port = port;
        }
        if let Some(p) = &self.health_path {
            validate::http_path("health_path", p)?;
            c.health_path.clone_from(p);
        }
        if let Some(p) = &self.invoke_path {
            validate::http_path("invoke_path", p)?;
            c.invoke_path.clone_from(p);
        }
        if let Some(n) = self.liveness_failures {
            if !(1..=MAX_LIVENESS_FAILURES).contains(&n) {
                return Err(Invalid::new(
                    "liveness_failures",
                    format!("must be between 1 and {MAX_LIVENESS_FAILURES}"),
                ));
            }
            c.liveness_failures = Some(n);
        }
        if let Some(seconds) = self.start_timeout_seconds {
            if !(1..=MAX_START_TIMEOUT_SECONDS).contains(&seconds) {
                return Err(Invalid::new(
                    "start_timeout_seconds",
                    format!("must be between 1 and {MAX_START_TIMEOUT_SECONDS}"),
                ));
            }
            c.start_timeout_seconds = Some(seconds);
        }
        if let Some(seconds) = self.session_idle_timeout_seconds {
            let range = MIN_SESSION_IDLE_TIMEOUT_SECONDS..=MAX_SESSION_IDLE_TIMEOUT_SECONDS;
            if !range.contains(&seconds) {
                return Err(Invalid::new(
                    "session_idle_timeout_seconds",
                    format!(
                        "must be between {MIN_SESSION_IDLE_TIMEOUT_SECONDS} and {MAX_SESSION_IDLE_TIMEOUT_SECONDS}"
                    ),
                ));
            }
            c.session_idle_timeout_seconds = Some(seconds);
        }
        if let Some(network) = &self.network {
            network.validate()?;
            c.network = Some(network.clone());
        }
        if let Some(r) = self.replicas {
            if r > MAX_REPLICAS {
                return Err(Invalid::new(
                    "replicas",
                    format!("must be at most {MAX_REPLICAS}"),
                ));
            }
        }
        Ok(c)
    }
}

/// Registry credentials of a `docker` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// Registry user.
    pub username: String,
    /// Password or token; usually `${secrets.NAME}`. Shown as `****`.
    pub password: String,
}

/// Where an agent's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A git repository: `user/repo` on GitHub, or any git URL.
    Github {
        /// `owner/name`, or an `https://`, `ssh://`, `git@host:path` or `file://` URL.
        repo: String,
        /// Branch to build (default `main`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// Subdirectory holding the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// A pinned commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    /// An OCI image.
    Docker {
        /// Image reference, e.g. `ghcr.io/user/my-agent:v1.0.0`.
        image: String,
        /// Registry credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<RegistryCredentials>,
    },
    /// An archive uploaded through `POST /v1/uploads`.
    Upload {
        /// The `upload_url` that `/v1/uploads` returned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archive_url: Option<String>,
        /// The upload's id, instead of its URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload_id: Option<String>,
    },
}

fn is_git_url(s: &str) -> bool {
    ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|p| s.starts_with(p))
        || (s.starts_with("git@") && s.contains(':'))
}

fn is_owner_repo(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    matches!(s.split_once('/'), Some((owner, repo)) if ok(owner) && ok(repo))
}

impl Source {
    /// Checks every field's shape (not whether the repository or image exists: the
    /// build finds that out and reports it).
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Source::Github {
                repo,
                branch,
                path,
                commit,
            } => {
                if !(is_owner_repo(repo) || is_git_url(repo))
                    || repo.len() > 2048
                    || repo.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(Invalid::new("repo", "must be 'owner/name' or a git URL (https://, ssh://, git@host:path, file://)"));
                }
                if let Some(b) = branch {
                    let bad = b.is_empty()
                        || b.len() > 255
                        || b.starts_with('-')
                        || b.contains("..")
                        || b.chars()
                            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
                    if bad {
                        return Err(Invalid::new("branch", "is not a valid git branch name"));
                    }
                }
                if let Some(p) = path {
                    let bad = p.is_empty()
                        || p.starts_with('/')
                        || p.split('/').any(|seg| seg == "..")
                        || p.len() > 1024
                        || p.chars().any(char::is_control);
                    if bad {
                        return Err(Invalid::new(
                            "path",
                            "must be a relative path inside the repository",
                        ));
                    }
                }
                if let Some(c) = commit {
                    if !(4..=64).contains(&c.len()) || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                        return Err(Invalid::new(
                            "commit",
                            "must be a commit hash (4 to 64 hex digits)",
                        ));
                    }
                }
            }
            Source::Docker { image, credentials } => {
                let bad = image.is_empty()
                    || image.len() > 512
                    || image.starts_with(['-', '/', ':', '@'])
                    || !image
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
                if bad {
                    return Err(Invalid::new(
                        "image",
                        "must be an image reference such as ghcr.io/user/agent:v1",
                    ));
                }
                if let Some(c) = credentials {
                    if c.username.is_empty() || c.username.len() > 256 {
                        return Err(Invalid::new(
                            "credentials.username",
                            "must be 1 to 256 characters",
                        ));
                    }
                    if c.password.is_empty() || c.password.len() > 4096 {
                        return Err(Invalid::new(
                            "credentials.password",
                            "must be 1 to 4096 characters",
                        ));
                    }
                    validate::secret_refs(&c.password)
                        .map_err(|e| e.under("credentials.password"))?;
                }
            }
            Source::Upload {
                archive_url,
                upload_id,
            } => match (archive_url, upload_id) {
                (None, None) => {
                    return Err(Invalid::new(
                        "archive_url",
                        "give archive_url (from POST /v1/uploads) or upload_id",
                    ))
                }
                (Some(u), _)
                    if u.is_empty()
                        || u.len() > 4096
                        || u.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    return Err(Invalid::new(
                        "archive_url",
                        "must be the upload_url from POST /v1/uploads",
                    ))
                }
                (_, Some(id)) if !id.starts_with("upl_") => {
                    return Err(Invalid::new("upload_id", "must be an upload id (upl_…)"))
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// The source as responses show it: credentials' password and any password
    /// or token inside a git URL (`https://user:TOKEN@host/…`) as `****`.
    #[must_use]
    pub fn redacted(&self) -> Source {
        match self {
            Source::Github {
                repo,
                branch,
                path,
                commit,
            } => Source::Github {
                repo: validate::redact_url_credentials(repo),
                branch: branch.clone(),
                path: path.clone(),
                commit: commit.clone(),
            },
            Source::Docker { image, credentials } => Source::Docker {
                image: image.clone(),
                credentials: credentials.as_ref().map(|c| RegistryCredentials {
                    username: c.username.clone(),
                    password: "****".to_owned(),
                }),
            },
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_type_from_flags_and_back() {
        let base = RuntimeConfig::default();
        assert_eq!(base.deployment_type(), DeploymentType::HttpLongRunning);
        let cold = ConfigInput {
            long_running: Some(false),
            ..Default::default()
        }
        .apply(&base)
        .expect("valid");
        assert_eq!(cold.deployment_type(), DeploymentType::HttpColdStart);
        let stdin = ConfigInput {
            deployment_type: Some(DeploymentType::Stdin),
            ..Default::default()
        }
        .apply(&base)
        .expect("valid");
        assert!(stdin.stdin_enabled && !stdin.enable_http);
        assert_eq!(stdin.deployment_type(), DeploymentType::Stdin);
        let clash = ConfigInput {
            deployment_type: Some(DeploymentType::Stdin),
            enable_http: Some(true),
            ..Default::default()
        };
        assert_eq!(
            clash.apply(&base).expect_err("conflict").field,
            "enable_http"
        );
    }

    #[test]
    fn config_ranges() {
        let base = RuntimeConfig::default();
        let bad = |json: &str| {
            serde_json::from_str::<ConfigInput>(json)
                .map_err(|_| ())
                .and_then(|c| c.apply(&base).map_err(|_| ()))
        };
        assert!(bad(r#"{"port":0}"#).is_err());
        assert!(bad(r#"{"port":70000}"#).is_err());
        assert!(bad(r#"{"replicas":101}"#).is_err());
        assert!(bad(r#"{"replicas":-1}"#).is_err());
        assert!(bad(r#"{"health_path":"health"}"#).is_err());
        assert!(bad(r#"{"liveness_failures":0}"#).is_err());
        assert!(bad(r#"{"liveness_failures":101}"#).is_err());
        assert!(bad(r#"{"start_timeout_seconds":0}"#).is_err());
        assert!(bad(r#"{"start_timeout_seconds":3601}"#).is_err());
        assert!(bad(r#"{"liveness_failures":5,"start_timeout_seconds":30}"#).is_ok());
        assert!(bad(r#"{"session_idle_timeout_seconds":9}"#).is_err());
        assert!(bad(r#"{"session_idle_timeout_seconds":604801}"#).is_err());
        let idle = bad(r#"{"session_idle_timeout_seconds":60}"#).expect("in range");
        assert_eq!(
            idle.session_idle_timeout(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            base.session_idle_timeout(),
            std::time::Duration::from_secs(u64::from(DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS))
        );
        assert!(bad(r#"{"bogus":true}"#).is_err());
        assert!(bad(r#"{"replicas":3,"health_path":"/healthz"}"#).is_ok());
    }

    #[test]
    fn scaling_rules() {
        let s = ScalingInput {
            min_instances: Some(3),
            ..Default::default()
        }
        .apply(Scaling::default())
        .expect("valid");
        assert_eq!((s.min_instances, s.max_instances), (3, 3));
        let err = ScalingInput {
            min_instances: Some(5),
            max_instances: Some(2),
            ..Default::default()
        }
        .apply(Scaling::default())
        .expect_err("max < min");
        assert_eq!(err.field, "max_instances");
        assert!(ScalingInput {
            target_cpu_percent: Some(0),
            ..Default::default()
        }
        .apply(Scaling::default())
        .is_err());
        assert!(ScalingInput {
            min_instances: Some(0),
            ..Default::default()
        }
        .apply(Scaling::default())
        .is_ok());
    }

    #[test]
    fn sources_parse_and_validate() {
        let gh: Source = serde_json::from_str(
            r#"{"type":"github","repo":"myorg/sentiment-agent","branch":"main","path":"agents/a"}"#,
        )
        .expect("github");
        assert!(gh.validate().is_ok());
        let file: Source = serde_json::from_str(
            r#"{"type":"github","repo":"file:///srv/repo.git","commit":"a1b2c3d4"}"#,
        )
        .expect("file");
        assert!(file.validate().is_ok());
        let docker: Source = serde_json::from_str(
            r#"{"type":"docker","image":"ghcr.io/user/my-agent:v1.0.0","credentials":{"username":"user","password":"${secrets.GITHUB_TOKEN}"}}"#,
        )
        .expect("docker");
        assert!(docker.validate().is_ok());
        let shown = serde_json::to_value(docker.redacted()).expect("serializes");
        assert_eq!(shown["credentials"]["password"], "****");
        let upload: Source =
            serde_json::from_str(r#"{"type":"upload","archive_url":"https://x/y"}"#)
                .expect("upload");
        assert!(upload.validate().is_ok());

        for (json, field) in [
            (r#"{"type":"github","repo":"noslash"}"#, "repo"),
            (r#"{"type":"github","repo":"file:///x\u0000"}"#, "repo"),
            (
                r#"{"type":"upload","archive_url":"https://x/\u0007"}"#,
                "archive_url",
            ),
            (r#"{"type":"github","repo":"a/b","path":"../up"}"#, "path"),
            (r#"{"type":"github","repo":"a/b","commit":"xyz"}"#, "commit"),
            (
                r#"{"type":"github","repo":"a/b","branch":"a..b"}"#,
                "branch",
            ),
            (r#"{"type":"docker","image":"has space"}"#, "image"),
            (r#"{"type":"upload"}"#, "archive_url"),
        ] {
            let s: Source = serde_json::from_str(json).expect(json);
            assert_eq!(s.validate().expect_err(json).field, field, "{json}");
        }
        assert!(serde_json::from_str::<Source>(r#"{"type":"ftp","repo":"a/b"}"#).is_err());
        assert!(
            serde_json::from_str::<Source>(r#"{"type":"github","repo":"a/b","extra":1}"#).is_err()
        );
    }
}
