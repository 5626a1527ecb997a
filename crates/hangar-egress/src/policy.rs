//! What a client may reach and what is added to its requests: the policy the
//! proxy asks for on every request, by the client's source address.
//!
//! The proxy does not own policies: the server does (agents and instances
//! carry them, and they change while replicas run), so the proxy asks
//! [`Policies::lookup`] on every request and every `CONNECT` rather than
//! caching an answer per connection. Names are matched here; address ranges
//! (`10.0.0.0/8:5432`) are the packet filter's business and are refused by
//! [`HostPattern`]'s parser so that a CIDR cannot silently become a name rule.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hyper::header::{HeaderName, HeaderValue};

/// Who a client is and what it may do, looked up by the client's source
/// address. Implemented by the server over its live replicas.
pub trait Policies: Send + Sync + 'static {
    /// The policy of the replica at `client`, or `None` when the address is
    /// no replica the server knows (refused).
    fn lookup(&self, client: IpAddr) -> Option<ClientPolicy>;
}

/// A fixed table, for a server with static replicas and for tests.
impl Policies for HashMap<IpAddr, ClientPolicy> {
    fn lookup(&self, client: IpAddr) -> Option<ClientPolicy> {
        self.get(&client).cloned()
    }
}

/// The policy of one client (a replica).
#[derive(Clone, Debug)]
pub struct ClientPolicy {
    /// The replica's id, carried in events.
    pub replica: String,
    /// Where it may go.
    pub egress: Egress,
    /// Headers added to its requests per host. An injection does not grant
    /// egress: the host must also be allowed by [`ClientPolicy::egress`].
    pub inject: Vec<Injection>,
}

impl ClientPolicy {
    /// The injection for `host` (normalized), if any.
    pub(crate) fn injection_for(&self, host: &str) -> Option<&Injection> {
        self.inject
            .iter()
            .find(|injection| normalize_host(&injection.host) == host)
    }
}

/// Where a client may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Anywhere (except the addresses the proxy never forwards to, see
    /// [`crate::ProxyConfig::forbidden`]).
    Open,
    /// Nowhere.
    None,
    /// Only to hosts matching one of the patterns.
    Allow(Vec<HostPattern>),
}

impl Egress {
    /// Whether `host` (normalized: lower case, no trailing dot) on `port`
    /// may be reached.
    #[must_use]
    pub fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Egress::Open => true,
            Egress::None => false,
            Egress::Allow(patterns) => patterns.iter().any(|p| p.matches(host, port)),
        }
    }
}

/// Headers added to every request a client sends to `host`, replacing any
/// value the client sent under the same names. The values are secrets,
/// already resolved by the server: they are never logged (`Debug` hides
/// them) and never reach the client.
#[derive(Clone)]
pub struct Injection {
    /// The host name, matched exactly (case and a trailing dot aside).
    pub host: String,
    /// The headers, in order; several values under one name are all sent.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Injection")
            .field("host", &self.host)
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

/// One allow-list rule: an exact host (`api.openai.com`) or every name under
/// a domain (`*.github.com`: one or more labels in front, not `github.com`
/// itself), case-insensitive, on any port or on one (`api.openai.com:443`).
/// IP literals are exact hosts (`192.0.2.1`, `[2001:db8::1]:443`).
#[derive(Clone, PartialEq, Eq)]
pub struct HostPattern {
    name: NamePattern,
    port: Option<u16>,
}

#[derive(Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    /// The domain under which any name matches, without the `*.`.
    Under(String),
}

impl HostPattern {
    /// Whether `host` (normalized) on `port` matches.
    #[must_use]
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.name {
            NamePattern::Exact(name) => host == name,
            NamePattern::Under(domain) => host
                .strip_suffix(domain.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| !front.is_empty()),
        }
    }
}

/// Why a rule was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Address ranges are matched by the packet filter, not by name.
    #[error("`{0}` is an address range: ranges are matched by the packet filter, not the proxy")]
    Range(String),
    /// Not a host name, `*.` domain or IP literal, with an optional port.
    #[error("`{0}` is not a host name, `*.domain` or IP address with an optional `:port`")]
    Invalid(String),
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let invalid = || PatternError::Invalid(rule.to_owned());
        if rule.contains('/') {
            return Err(PatternError::Range(rule.to_owned()));
        }
        let (host, port) = split_port(rule).ok_or_else(invalid)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(HostPattern {
                name: NamePattern::Exact(ip.to_canonical().to_string()),
                port,
            });
        }
        let host = normalize_host(host);
        let name = match host.strip_prefix("*.") {
            Some(domain) if is_dns_name(domain) => NamePattern::Under(domain.to_owned()),
            Some(_) => return Err(invalid()),
            None if is_dns_name(&host) => NamePattern::Exact(host),
            None => return Err(invalid()),
        };
        Ok(HostPattern { name, port })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            NamePattern::Exact(name) if name.contains(':') => write!(f, "[{name}]")?,
            NamePattern::Exact(name) => f.write_str(name)?,
            NamePattern::Under(domain) => write!(f, "*.{domain}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({self})")
    }
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 address. `None` when the
/// port is not a number in 1..=65535.
fn split_port(rule: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = rule.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(parse_port(after.strip_prefix(':')?)?))),
        };
    }
    match rule.split_once(':') {
        // More than one colon: a bare IPv6 address, no port.
        Some((_, rest)) if rest.contains(':') => Some((rule, None)),
        Some((host, port)) => Some((host, Some(parse_port(port)?))),
        None => Some((rule, None)),
    }
}

fn parse_port(port: &str) -> Option<u16> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(port) => Some(port),
    }
}

/// Lower case, without a trailing dot, IPv6 without brackets and IPv4-mapped
/// IPv6 as IPv4: the one spelling policies are matched in.
#[must_use]
pub fn normalize_host(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// Letters, digits, `-` and `_` in non-empty labels of at most 63, at most
/// 253 in all.
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(rule: &str) -> HostPattern {
        rule.parse().unwrap_or_else(|e| panic!("{rule}: {e}"))
    }

    #[test]
    fn exact_names_match_themselves_in_any_case() {
        let p = pattern("API.OpenAI.com");
        assert!(p.matches("api.openai.com", 443));
        assert!(p.matches("api.openai.com", 80));
        assert!(!p.matches("openai.com", 443));
        assert!(!p.matches("x.api.openai.com", 443));
        assert!(!p.matches("api.openai.com.evil.example", 443));
    }

    #[test]
    fn wildcards_match_one_or_more_labels_but_not_the_apex() {
        let p = pattern("*.github.com");
        assert!(p.matches("api.github.com", 443));
        assert!(p.matches("a.b.github.com", 443));
        assert!(!p.matches("github.com", 443));
        assert!(!p.matches("evilgithub.com", 443));
        assert!(!p.matches(".github.com", 443));
        assert!(!p.matches("github.com.evil.example", 443));
    }

    #[test]
    fn a_port_restricts_the_rule_to_that_port() {
        let p = pattern("api.openai.com:443");
        assert!(p.matches("api.openai.com", 443));
        assert!(!p.matches("api.openai.com", 80));
        let p = pattern("*.github.com:22");
        assert!(p.matches("ssh.github.com", 22));
        assert!(!p.matches("ssh.github.com", 443));
    }

    #[test]
    fn ip_literals_are_exact_hosts() {
        assert!(pattern("192.0.2.1").matches("192.0.2.1", 80));
        assert!(pattern("[2001:db8::1]:443").matches("2001:db8::1", 443));
        assert!(!pattern("[2001:db8::1]:443").matches("2001:db8::1", 80));
        assert!(pattern("2001:DB8::1").matches(&normalize_host("[2001:db8::1]"), 1));
        assert_eq!(
            pattern("[2001:db8::1]:443").to_string(),
            "[2001:db8::1]:443"
        );
    }

    #[test]
    fn ranges_and_nonsense_are_refused() {
        assert!(matches!(
            "10.0.0.0/8:5432".parse::<HostPattern>(),
            Err(PatternError::Range(_))
        ));
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*.*.com",
            "host:0",
            "host:70000",
            "host:",
            "ho st",
            "a..b",
            "[::1",
            "[::1]x",
            "https://x.com",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_gives_back_the_rule() {
        for rule in ["api.openai.com", "*.github.com:443", "192.0.2.1:80"] {
            assert_eq!(pattern(rule).to_string(), rule);
        }
    }

    #[test]
    fn egress_modes() {
        assert!(Egress::Open.allows("anything.example", 1));
        assert!(!Egress::None.allows("anything.example", 443));
        let allow = Egress::Allow(vec![pattern("a.example"), pattern("*.b.example:443")]);
        assert!(allow.allows("a.example", 8080));
        assert!(allow.allows("x.b.example", 443));
        assert!(!allow.allows("x.b.example", 80));
        assert!(!allow.allows("c.example", 443));
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_host("API.Example.COM."), "api.example.com");
        assert_eq!(normalize_host("[::ffff:192.0.2.1]"), "192.0.2.1");
    }

    #[test]
    fn injection_debug_hides_values() {
        let injection = Injection {
            host: "api.example".into(),
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("Bearer sk-secret"),
            )],
        };
        let shown = format!("{injection:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
