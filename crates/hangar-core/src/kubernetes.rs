//! Kubernetes clouds: what the API, the builder, the controller and the
//! kubernetes driver must agree on when a cloud's `driver` is `kubernetes`,
//! kept here without I/O so there is one meaning of each.
//!
//! * A cloud's `config` is [`KubernetesCloudConfig`]: where the cluster is
//!   (a kubeconfig on the server and its context, else the in-cluster
//!   account, else `$KUBECONFIG`), the namespace replicas run in, the
//!   registry Hangar pushes the images it builds to, and how pods are
//!   placed. Anything else in it is refused when the cloud is created, and
//!   credentials are `${secrets.NAME}` references, never clear text.
//! * A build for a kubernetes cloud makes an image the cluster pulls: its
//!   artifact is an image artifact ([`crate::image`]) holding only the
//!   `image.json` (the reference to pull, its digest, how it runs), with no
//!   unpacked root filesystem. Replicas run [`pinned_reference`] of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::ImageRun;
use crate::Invalid;

/// The namespace a cloud's replicas run in when its config names none.
pub const DEFAULT_NAMESPACE: &str = "hangar";

/// The settings a kubernetes cloud takes in its `config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesCloudConfig {
    /// A kubeconfig file on the server; absent: the in-cluster service
    /// account, then `$KUBECONFIG` (and `~/.kube/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig's context; absent: its current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Where pods and their Secrets go (made if missing); default
    /// [`DEFAULT_NAMESPACE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `host[:port]/prefix`: where Hangar pushes the images it builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Credentials for [`KubernetesCloudConfig::registry`], both for
    /// Hangar's pushes and the cluster's pulls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credentials: Option<ClusterRegistryCredentials>,
    /// Speak plain HTTP to the registry (a registry on the cluster's own
    /// network, say); default false.
    #[serde(default)]
    pub insecure_registry: bool,
    /// The images a built agent's layer goes on top of, per runtime.
    #[serde(default)]
    pub base_image: BaseImages,
    /// The pods' `runtimeClassName` (gVisor, Kata, where the cluster has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// The pods' `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// An image pull Secret already in the namespace, for every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// Reach replicas through the API server's port-forward (`true`) or at
    /// their pod IPs (`false`); absent: at their pod IPs when this server
    /// is on the cluster's pod network, else through port-forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_forward: Option<bool>,
}

/// A registry user and a password given as `${secrets.NAME}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRegistryCredentials {
    /// The user.
    pub username: String,
    /// `${secrets.NAME}`: the organization's secret holding the password.
    pub password: String,
}

/// Base images per runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImages {
    /// For Python agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// For Node agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The settings a kubernetes cloud takes, for messages.
const SETTINGS: &str = "kubeconfig, context, namespace, registry, registry_credentials, insecure_registry, base_image, runtime_class, node_selector, image_pull_secret, port_forward";

impl KubernetesCloudConfig {
    /// Reads and checks a cloud's `config`; errors name the field under
    /// `config`.
    pub fn parse(config: &serde_json::Value) -> Result<Self, Invalid> {
        if config.is_null() {
            return Ok(Self::default());
        }
        if !config.is_object() {
            return Err(Invalid::new("config", "must be an object"));
        }
        if let Some(object) = config.as_object() {
            if let Some(unknown) = object
                .keys()
                .find(|k| !SETTINGS.split(", ").any(|s| s == *k))
            {
                return Err(Invalid::new(
                    format!("config.{unknown}"),
                    format!("unknown setting for a kubernetes cloud (it takes: {SETTINGS})"),
                ));
            }
        }
        let parsed: Self = serde_json::from_value(config.clone())
            .map_err(|err| Invalid::new("config", err.to_string()))?;
        parsed.check()?;
        Ok(parsed)
    }

    fn check(&self) -> Result<(), Invalid> {
        if let Some(path) = &self.kubeconfig {
            if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
                return Err(Invalid::new(
                    "config.kubeconfig",
                    "must be an absolute path of a file on the server",
                ));
            }
        }
        if let Some(context) = &self.context {
            text("config.context", context, 253)?;
        }
        if let Some(namespace) = &self.namespace {
            dns_label("config.namespace", namespace)?;
        }
        if let Some(registry) = &self.registry {
            registry_address(registry)?;
        }
        if let Some(credentials) = &self.registry_credentials {
            text(
                "config.registry_credentials.username",
                &credentials.username,
                255,
            )?;
            let password = credentials.password.trim();
            let reference = password
                .strip_prefix("${secrets.")
                .and_then(|rest| rest.strip_suffix('}'));
            match reference {
                Some(name) => crate::validate::secret_name("", name).map_err(|_| {
                    Invalid::new(
                        "config.registry_credentials.password",
                        format!("'{name}' is not a valid secret name"),
                    )
                })?,
                None => {
                    return Err(Invalid::new(
                        "config.registry_credentials.password",
                        "must be a ${secrets.NAME} reference (a cloud's config holds no secret in clear)",
                    ))
                }
            }
            if self.registry.is_none() {
                return Err(Invalid::new(
                    "config.registry_credentials",
                    "needs config.registry",
                ));
            }
        }
        for (runtime, image) in [
            ("python", &self.base_image.python),
            ("node", &self.base_image.node),
        ] {
            if let Some(image) = image {
                image_reference(&format!("config.base_image.{runtime}"), image)?;
            }
        }
        if let Some(class) = &self.runtime_class {
            dns_subdomain("config.runtime_class", class)?;
        }
        if self.node_selector.len() > 32 {
            return Err(Invalid::new("config.node_selector", "at most 32 labels"));
        }
        for (key, value) in &self.node_selector {
            let field = format!("config.node_selector.{key}");
            let name = key.rsplit('/').next().unwrap_or(key);
            if key.len() > 316 || !is_label_value(name) || name.is_empty() {
                return Err(Invalid::new(field, "is not a Kubernetes label key"));
            }
            if !is_label_value(value) {
                return Err(Invalid::new(
                    field,
                    "is not a Kubernetes label value (at most 63 of [A-Za-z0-9._-], starting and ending alphanumeric)",
                ));
            }
        }
        if let Some(secret) = &self.image_pull_secret {
            dns_subdomain("config.image_pull_secret", secret)?;
        }
        Ok(())
    }

    /// The namespace replicas run in.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The registry's host (with its port), without the prefix.
    #[must_use]
    pub fn registry_host(&self) -> Option<&str> {
        let registry = self.registry.as_deref()?;
        Some(registry.split_once('/').map_or(registry, |(host, _)| host))
    }

    /// The name of the secret holding the registry password, if any.
    #[must_use]
    pub fn registry_password_secret(&self) -> Option<&str> {
        let password = self.registry_credentials.as_ref()?.password.trim();
        password
            .strip_prefix("${secrets.")
            .and_then(|rest| rest.strip_suffix('}'))
    }
}

/// The reference a replica of an image artifact runs: the image it was
/// pulled or pushed as, pinned to its digest, so every replica of a build
/// runs the same bytes whatever its tag points at later.
#[must_use]
pub fn pinned_reference(run: &ImageRun) -> String {
    let name = strip_tag(&run.image);
    if run.digest.is_empty() {
        run.image.clone()
    } else {
        format!("{name}@{}", run.digest)
    }
}

/// `host/repo:tag` or `host/repo@digest` → `host/repo` (a port's colon stays).
fn strip_tag(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!("must be 1 to {max} characters, no control characters"),
        ));
    }
    Ok(())
}

/// An RFC 1123 label: what a namespace is.
fn dns_label(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be a DNS label: at most 63 of [a-z0-9-], not starting or ending with '-'",
        ))
    }
}

/// An RFC 1123 subdomain: what most object names are.
fn dns_subdomain(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| dns_label(field, part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be a DNS subdomain: dot-separated labels of [a-z0-9-], at most 253 characters",
        ))
    }
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric())
}

/// `host[:port]/prefix`, lowercase, no scheme.
fn registry_address(registry: &str) -> Result<(), Invalid> {
    let field = "config.registry";
    let (host, prefix) = registry.split_once('/').unwrap_or((registry, ""));
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    let host_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && (port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0));
    let prefix_ok = prefix.len() <= 200
        && prefix.split('/').all(|part| {
            prefix.is_empty()
                || (!part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'-' | b'_' | b'.')
                    }))
        });
    if host_ok && prefix_ok && !registry.contains("://") {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be host[:port]/prefix (no scheme; lowercase repository path), e.g. registry.example.com:5000/agents",
        ))
    }
}

fn image_reference(field: &str, image: &str) -> Result<(), Invalid> {
    if image.is_empty()
        || image.len() > 255
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Invalid::new(
            field,
            "must be an image reference: 1 to 255 characters, no whitespace",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(config: serde_json::Value) -> String {
        KubernetesCloudConfig::parse(&config)
            .expect_err("refused")
            .field
    }

    #[test]
    fn a_full_config_reads_back() {
        let config = KubernetesCloudConfig::parse(&json!({
            "kubeconfig": "/etc/hangar/kubeconfig",
            "context": "prod",
            "namespace": "agents",
            "registry": "127.0.0.1:5000/hangar",
            "registry_credentials": {"username": "u", "password": "${secrets.REG}"},
            "insecure_registry": true,
            "base_image": {"python": "127.0.0.1:5000/python:3"},
            "runtime_class": "gvisor",
            "node_selector": {"kubernetes.io/os": "linux"},
            "image_pull_secret": "pull"
        }))
        .expect("valid");
        assert_eq!(config.namespace(), "agents");
        assert_eq!(config.registry_host(), Some("127.0.0.1:5000"));
        assert_eq!(config.registry_password_secret(), Some("REG"));
        assert_eq!(
            KubernetesCloudConfig::parse(&json!({}))
                .expect("empty")
                .namespace(),
            DEFAULT_NAMESPACE
        );
    }

    #[test]
    fn bad_settings_are_named() {
        assert_eq!(field_of(json!({"namespce": "x"})), "config.namespce");
        assert_eq!(field_of(json!({"namespace": "Bad_NS"})), "config.namespace");
        assert_eq!(
            field_of(json!({"kubeconfig": "relative"})),
            "config.kubeconfig"
        );
        assert_eq!(
            field_of(json!({"registry": "https://r.example/x"})),
            "config.registry"
        );
        assert_eq!(
            field_of(
                json!({"registry": "r:5000/x", "registry_credentials": {"username": "u", "password": "hunter2"}})
            ),
            "config.registry_credentials.password"
        );
        assert_eq!(
            field_of(
                json!({"registry_credentials": {"username": "u", "password": "${secrets.A}"}})
            ),
            "config.registry_credentials"
        );
        assert_eq!(
            field_of(json!({"node_selector": {"zone": "not valid!"}})),
            "config.node_selector.zone"
        );
        assert_eq!(
            field_of(json!({"runtime_class": "Kata"})),
            "config.runtime_class"
        );
        assert_eq!(field_of(json!("x")), "config");
        assert_eq!(field_of(json!({"insecure_registry": "yes"})), "config");
    }

    #[test]
    fn replicas_run_the_digest() {
        let run = |image: &str, digest: &str| ImageRun {
            image: image.to_owned(),
            digest: digest.to_owned(),
            ..ImageRun::default()
        };
        assert_eq!(
            pinned_reference(&run("127.0.0.1:5000/a/b:v1", "sha256:ab")),
            "127.0.0.1:5000/a/b@sha256:ab"
        );
        assert_eq!(
            pinned_reference(&run("127.0.0.1:5000/a/b", "sha256:ab")),
            "127.0.0.1:5000/a/b@sha256:ab"
        );
        assert_eq!(
            pinned_reference(&run("busybox@sha256:00", "sha256:ab")),
            "busybox@sha256:ab"
        );
        assert_eq!(pinned_reference(&run("busybox:1", "")), "busybox:1");
    }
}
