//! An agent's network block, `config.network`: what its replicas may reach
//! besides the replicas of their own instance.
//!
//! ```json
//! "network": {
//!   "egress": "open" | "none" | {"allow": ["api.openai.com", "*.github.com:443", "10.0.0.0/8:5432"]},
//!   "reach": ["other-agent"]
//! }
//! ```
//!
//! `egress` is what replicas may open outside the host: everything, nothing,
//! or an allow-list. Addresses and networks in the list are enforced by the
//! packet filter; host names by the egress proxy (which matches the name
//! the client asks for: the HTTP `Host` or the TLS server name). Absent: the
//! server's default (`hangar serve --egress-default`). `reach` names other
//! instances (in the Agents API: agents) of the same organization whose
//! replicas these may open connections to; without it, no other instance's.
//! Nothing can name another organization's.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Invalid;

/// Most entries in `egress.allow`.
pub const MAX_ALLOW_RULES: usize = 100;
/// Most names in `reach`.
pub const MAX_REACH: usize = 50;

/// What an agent's replicas may reach besides their own instance's
/// replicas: outside the host (`egress`), other agents of the organization
/// (`reach`), and headers the egress proxy adds for them (`inject`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// What replicas may reach outside the host: `"open"`, `"none"` or
    /// `{"allow": [rules]}`. Absent: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    /// Names of other instances (agents) of the organization whose replicas
    /// these may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<String>,
    /// Headers the egress proxy adds to every request to a host, usually
    /// with secrets (`${secrets.NAME}`): the values never enter the replica.
    /// The host must also be allowed by `egress`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inject: Vec<Injection>,
}

/// What a change of `config.network` from `before` to `after` amounts to,
/// for the `agent.policy_changed` event: `None` when it is no change.
/// `widened` is true when replicas may reach anything they could not
/// before — and whenever that cannot be told without the server's default
/// egress (a change to or from an absent `egress`, unless from `open` or to
/// `none`), so a widening is never missed.
#[must_use]
pub fn policy_change(
    before: Option<&NetworkConfig>,
    after: Option<&NetworkConfig>,
) -> Option<serde_json::Value> {
    let empty = NetworkConfig::default();
    let (old, new) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    if old == new {
        return None;
    }
    let egress_widened = match (&old.egress, &new.egress) {
        (_, Some(Egress::None)) | (Some(Egress::Open), _) => false,
        (Some(_), Some(Egress::Open)) | (None, Some(_)) | (Some(_), None) => true,
        (Some(Egress::None), Some(Egress::Allow(_))) => true,
        (Some(Egress::Allow(was)), Some(Egress::Allow(now))) => {
            now.iter().any(|rule| !was.contains(rule))
        }
        (None, None) => false,
    };
    let reach_widened = new.reach.iter().any(|name| !old.reach.contains(name));
    let injected: Vec<&str> = new
        .inject
        .iter()
        .filter(|injection| !old.inject.contains(injection))
        .map(|injection| injection.host.as_str())
        .collect();
    Some(serde_json::json!({
        "before": before,
        "after": after,
        "widened": egress_widened || reach_widened,
        "egress_widened": egress_widened,
        "reach_widened": reach_widened,
        "injection_changed_hosts": injected,
    }))
}

/// Headers the egress proxy adds to requests to one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    /// The host name, exactly (`api.openai.com`).
    pub host: String,
    /// Header names and values; values may refer to secrets as
    /// `${secrets.NAME}`. They replace what the replica sent under those
    /// names.
    pub headers: BTreeMap<String, String>,
}

/// Most hosts in `inject`.
pub const MAX_INJECTIONS: usize = 20;
/// Most headers per injected host.
pub const MAX_INJECTED_HEADERS: usize = 20;

impl NetworkConfig {
    /// Whether replicas need the egress proxy: it matches host names and
    /// adds the injected headers.
    #[must_use]
    pub fn needs_proxy(&self) -> bool {
        let names = matches!(
            &self.egress,
            Some(Egress::Allow(rules)) if rules.iter().any(|rule| rule.host().is_some())
        );
        names || !self.inject.is_empty()
    }

    /// Every secret the injected headers refer to.
    #[must_use]
    pub fn secret_refs(&self) -> Vec<&str> {
        self.inject
            .iter()
            .flat_map(|injection| injection.headers.values())
            .flat_map(|value| crate::validate::secret_refs(value).unwrap_or_default())
            .collect()
    }
}

impl NetworkConfig {
    /// Checks every field; `field` is where the block is (`config.network`).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.reach.len() > MAX_REACH {
            return Err(Invalid::new(
                "config.network.reach",
                format!("must name at most {MAX_REACH} agents"),
            ));
        }
        for name in &self.reach {
            crate::validate::name("config.network.reach", name)?;
        }
        if let Some(Egress::Allow(rules)) = &self.egress {
            if rules.len() > MAX_ALLOW_RULES {
                return Err(Invalid::new(
                    "config.network.egress.allow",
                    format!("must have at most {MAX_ALLOW_RULES} rules"),
                ));
            }
        }
        if self.inject.len() > MAX_INJECTIONS {
            return Err(Invalid::new(
                "config.network.inject",
                format!("must have at most {MAX_INJECTIONS} hosts"),
            ));
        }
        for injection in &self.inject {
            injection.validate()?;
        }
        Ok(())
    }
}

impl Injection {
    fn validate(&self) -> Result<(), Invalid> {
        let field = "config.network.inject";
        let host: HostPattern = self
            .host
            .parse()
            .map_err(|err: String| Invalid::new(field, err))?;
        if host.wildcard || host.port.is_some() {
            return Err(Invalid::new(
                field,
                format!("{}: a host is one name, without `*.` or a port", self.host),
            ));
        }
        if self.headers.is_empty() || self.headers.len() > MAX_INJECTED_HEADERS {
            return Err(Invalid::new(
                field,
                format!("{}: give 1 to {MAX_INJECTED_HEADERS} headers", self.host),
            ));
        }
        for (name, value) in &self.headers {
            let token = !name.is_empty()
                && name.len() <= 256
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(Invalid::new(
                    field,
                    format!("{name:?} is not a header name"),
                ));
            }
            let reserved = ["host", "content-length", "transfer-encoding", "connection"];
            if reserved.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(Invalid::new(field, format!("{name} is the proxy's to set")));
            }
            if value.len() > crate::validate::MAX_ENV_VALUE_LEN
                || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(Invalid::new(
                    field,
                    format!("the value of {name} must be printable text of at most 32 KiB"),
                ));
            }
            crate::validate::secret_refs(value)
                .map_err(|err| Invalid::new(field, format!("{name}: {}", err.message)))?;
        }
        Ok(())
    }
}

/// What replicas may reach outside the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Anything outside the host.
    Open,
    /// Nothing outside the host.
    None,
    /// Only these: host names (`api.openai.com`, `*.github.com`, optionally
    /// with `:port`) and IPv4 addresses or networks (`10.0.0.0/8:5432`).
    #[schema(value_type = Vec<String>)]
    Allow(Vec<EgressRule>),
}

impl FromStr for Egress {
    type Err = String;

    /// `open` or `none` (a server's default).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "open" => Ok(Self::Open),
            "none" => Ok(Self::None),
            _ => Err(format!("{text:?}: egress must be \"open\" or \"none\"")),
        }
    }
}

/// One entry of an allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressRule {
    /// A host name, matched by the egress proxy.
    Host(HostPattern),
    /// IPv4 addresses, matched by the packet filter.
    Network(Destination),
}

impl EgressRule {
    /// The rule's host pattern, if it is one.
    #[must_use]
    pub fn host(&self) -> Option<&HostPattern> {
        match self {
            Self::Host(pattern) => Some(pattern),
            Self::Network(_) => None,
        }
    }

    /// The rule's destination, if it is addresses.
    #[must_use]
    pub fn destination(&self) -> Option<&Destination> {
        match self {
            Self::Network(destination) => Some(destination),
            Self::Host(_) => None,
        }
    }
}

impl FromStr for EgressRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let host = text.rsplit_once(':').map_or(text, |(host, _)| host);
        let host = host.split('/').next().unwrap_or(host);
        if host.parse::<Ipv4Addr>().is_ok() {
            text.parse().map(Self::Network)
        } else {
            text.parse().map(Self::Host)
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(pattern) => pattern.fmt(f),
            Self::Network(destination) => destination.fmt(f),
        }
    }
}

/// A host name an allow-list admits: `api.openai.com` (that name only) or
/// `*.github.com` (any name under `github.com`, not `github.com` itself),
/// lower case, optionally with one port (`:443`; absent: any port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// `api.openai.com`, or `github.com` for `*.github.com`.
    pub name: String,
    /// Whether names under [`HostPattern::name`] match rather than it.
    pub wildcard: bool,
    /// The one port allowed; `None`: any.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Whether `host` (a name, any case, no trailing dot) on `port` matches.
    #[must_use]
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.strip_suffix(&self.name)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|rest| !rest.is_empty())
        } else {
            host == self.name
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_port(text)?;
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, host),
        };
        let name = name.to_ascii_lowercase();
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        // At least two labels: a bare `com` or `*.com` is not a host.
        if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a host name such as api.openai.com or *.github.com:443, \
                 nor an IPv4 address or network such as 10.0.0.0/8:5432"
            ));
        }
        Ok(Self {
            name,
            wildcard,
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// An IPv4 network and, optionally, one port of it: `10.0.0.0/8:5432`,
/// `192.0.2.7` (a single address, every port), `192.0.2.7:443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// The addresses.
    pub net: Ipv4Net,
    /// The port (TCP or UDP); `None`: every port.
    pub port: Option<u16>,
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addresses, port) = split_port(text)?;
        let net = if addresses.contains('/') {
            addresses.parse::<Ipv4Net>().map_err(|_| {
                format!("{text:?} is not an IPv4 network such as 10.0.0.0/8 or 10.0.0.0/8:5432")
            })?
        } else {
            let address: Ipv4Addr = addresses.parse().map_err(|_| {
                format!("{text:?} is not an IPv4 address such as 192.0.2.7 or 192.0.2.7:443")
            })?;
            Ipv4Net::from(address)
        };
        // `10.1.2.3/8` would be read as 10.0.0.0/8: say so instead.
        if net.addr() != net.network() {
            return Err(format!(
                "{text:?} has host bits set: did you mean {}?",
                net.trunc()
            ));
        }
        Ok(Self { net, port })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.net.prefix_len() == 32 {
            write!(f, "{}", self.net.addr())?;
        } else {
            write!(f, "{}", self.net)?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// `text` without its `:port`, and the port (1–65535) if it had one.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    match text.rsplit_once(':') {
        Some((rest, port)) => {
            let port: u16 =
                port.parse().ok().filter(|port| *port != 0).ok_or_else(|| {
                    format!("{text:?}: the port must be a number from 1 to 65535")
                })?;
            Ok((rest, Some(port)))
        }
        None => Ok((text, None)),
    }
}

/// Serialized as their text, parsed back from it.
macro_rules! as_text {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

as_text!(EgressRule, HostPattern, Destination);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_print_back() {
        for text in [
            "10.0.0.0/8:5432",
            "10.0.0.0/8",
            "192.0.2.7",
            "192.0.2.7:443",
        ] {
            let destination: Destination = text.parse().expect(text);
            assert_eq!(destination.to_string(), text);
        }
        let single: Destination = "192.0.2.7/32".parse().expect("a /32");
        assert_eq!(single.to_string(), "192.0.2.7");
        assert_eq!(single.port, None);
    }

    #[test]
    fn bad_rules_say_why() {
        for (text, why) in [
            ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/8:0", "port"),
            ("10.0.0.0/8:70000", "port"),
            ("10.0.0.0/33", "not an IPv4 network"),
            ("::1", "not a host name"),
            ("com", "not a host name"),
            ("*.com", "not a host name"),
            ("exa_mple.com", "not a host name"),
            ("-a.example.com", "not a host name"),
            ("api.openai.com:https", "port"),
            ("", "not a host name"),
        ] {
            let err = text.parse::<EgressRule>().expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn rules_are_hosts_or_networks() {
        let rule: EgressRule = "API.OpenAI.com".parse().expect("host");
        assert_eq!(rule.to_string(), "api.openai.com");
        assert!(rule.host().is_some());
        let rule: EgressRule = "10.0.0.0/8:5432".parse().expect("network");
        assert!(rule.destination().is_some());
        let rule: EgressRule = "*.github.com:443".parse().expect("wildcard");
        assert_eq!(rule.to_string(), "*.github.com:443");
    }

    #[test]
    fn host_patterns_match_by_name_and_port() {
        let exact: HostPattern = "api.openai.com".parse().expect("exact");
        assert!(exact.matches("api.openai.com", 443));
        assert!(exact.matches("API.OPENAI.COM.", 80));
        assert!(!exact.matches("openai.com", 443));
        assert!(!exact.matches("evil-api.openai.com", 443));
        assert!(!exact.matches("api.openai.com.evil.net", 443));
        let wildcard: HostPattern = "*.github.com:443".parse().expect("wildcard");
        assert!(wildcard.matches("api.github.com", 443));
        assert!(wildcard.matches("a.b.github.com", 443));
        assert!(!wildcard.matches("github.com", 443), "not the apex");
        assert!(!wildcard.matches("api.github.com", 80), "one port");
        assert!(!wildcard.matches("evilgithub.com", 443));
    }

    #[test]
    fn the_block_reads_as_the_api_writes_it() {
        let block: NetworkConfig = serde_json::from_value(serde_json::json!({
            "egress": {"allow": ["api.openai.com", "10.0.0.0/8:5432"]},
            "reach": ["search-agent"],
        }))
        .expect("block");
        block.validate().expect("valid");
        assert!(block.needs_proxy());
        assert_eq!(
            serde_json::to_value(&block).expect("serializes"),
            serde_json::json!({
                "egress": {"allow": ["api.openai.com", "10.0.0.0/8:5432"]},
                "reach": ["search-agent"],
            })
        );
        for egress in ["open", "none"] {
            let block: NetworkConfig =
                serde_json::from_value(serde_json::json!({ "egress": egress })).expect(egress);
            assert_eq!(
                serde_json::to_value(&block).expect("serializes")["egress"],
                egress
            );
        }
        let bad = serde_json::from_value::<NetworkConfig>(serde_json::json!({"egress": "some"}));
        assert!(bad.is_err());
        let bad = serde_json::from_value::<NetworkConfig>(
            serde_json::json!({"egress": {"allow": ["10.1.2.3/8"]}}),
        )
        .expect_err("host bits");
        assert!(bad.to_string().contains("did you mean"), "{bad}");
        let block = NetworkConfig {
            reach: vec!["bad name!".to_owned()],
            ..NetworkConfig::default()
        };
        assert!(block.validate().is_err());
    }

    #[test]
    fn a_policy_change_says_whether_it_widens() {
        let block = |value: serde_json::Value| -> NetworkConfig {
            serde_json::from_value(value).expect("block")
        };
        let none = block(serde_json::json!({"egress": "none"}));
        let open = block(serde_json::json!({"egress": "open"}));
        let one = block(serde_json::json!({"egress": {"allow": ["api.openai.com"]}}));
        let two = block(serde_json::json!({"egress": {"allow": ["api.openai.com", "10.0.0.0/8"]}}));
        let reach = block(serde_json::json!({"egress": "none", "reach": ["b"]}));
        let widened = |before: Option<&NetworkConfig>, after: Option<&NetworkConfig>| {
            policy_change(before, after).map(|change| change["widened"] == true)
        };
        assert_eq!(widened(Some(&one), Some(&one)), None, "no change");
        assert_eq!(widened(None, None), None);
        assert_eq!(widened(Some(&none), Some(&one)), Some(true));
        assert_eq!(widened(Some(&one), Some(&two)), Some(true));
        assert_eq!(widened(Some(&two), Some(&one)), Some(false));
        assert_eq!(widened(Some(&one), Some(&open)), Some(true));
        assert_eq!(widened(Some(&open), Some(&none)), Some(false));
        assert_eq!(
            widened(Some(&none), Some(&reach)),
            Some(true),
            "reach added"
        );
        // The server's default is not known here: counted as a widening.
        assert_eq!(widened(Some(&none), None), Some(true));
        assert_eq!(widened(None, Some(&one)), Some(true));
        assert_eq!(widened(None, Some(&none)), Some(false));
        let change = policy_change(Some(&none), Some(&one)).expect("change");
        assert_eq!(change["before"], serde_json::json!({"egress": "none"}));
        assert_eq!(change["after"]["egress"]["allow"][0], "api.openai.com");
    }

    #[test]
    fn injections_name_one_host_and_real_headers() {
        let inject = |host: &str, name: &str, value: &str| NetworkConfig {
            inject: vec![Injection {
                host: host.to_owned(),
                headers: [(name.to_owned(), value.to_owned())].into(),
            }],
            ..NetworkConfig::default()
        };
        let good = inject(
            "api.openai.com",
            "Authorization",
            "Bearer ${secrets.OPENAI_KEY}",
        );
        good.validate().expect("valid");
        assert!(good.needs_proxy());
        assert_eq!(good.secret_refs(), ["OPENAI_KEY"]);
        for (bad, why) in [
            (inject("*.openai.com", "A", "b"), "one name"),
            (inject("api.openai.com:443", "A", "b"), "one name"),
            (
                inject("api.openai.com", "Bad Name", "b"),
                "not a header name",
            ),
            (inject("api.openai.com", "Host", "b"), "the proxy's"),
            (inject("api.openai.com", "A", "line\nbreak"), "printable"),
            (
                inject("api.openai.com", "A", "${secrets.OPEN"),
                "unterminated",
            ),
        ] {
            let err = bad.validate().expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }
}
