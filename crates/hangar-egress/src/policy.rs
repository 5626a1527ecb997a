//! What a client may reach and what is added to its requests: the policy the
//! proxy asks for on every request, by the client's source address.
//!
//! The proxy does not own policies: the server does (agents and instances
//! carry them, and they change while replicas run), so the proxy asks
//! [`Policies::lookup`] on every request and every `CONNECT` rather than
//! caching an answer per connection. The rules are the API's own
//! ([`EgressRule`]: host patterns and IPv4 networks, parsed and matched in
//! `hangar-core`), so the proxy and the packet filter read one allow-list.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

pub use hangar_core::network::{EgressRule, HostPattern};

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
    /// Only to hosts matching one of the rules: names by pattern, IPv4
    /// literals by the networks (the same rules the packet filter is
    /// given, so an address allowed directly is allowed through the proxy).
    Allow(Vec<EgressRule>),
}

impl Egress {
    /// Whether `host` (normalized: lower case, no trailing dot) on `port`
    /// may be reached.
    #[must_use]
    pub fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Egress::Open => true,
            Egress::None => false,
            Egress::Allow(rules) => rules.iter().any(|rule| match rule {
                EgressRule::Host(pattern) => pattern.matches(host, port),
                EgressRule::Network(network) => {
                    host.parse::<Ipv4Addr>()
                        .is_ok_and(|ip| network.net.contains(&ip))
                        && network.port.is_none_or(|p| p == port)
                }
            }),
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

    fn rule(text: &str) -> EgressRule {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn egress_modes() {
        assert!(Egress::Open.allows("anything.example", 1));
        assert!(!Egress::None.allows("anything.example", 443));
        let allow = Egress::Allow(vec![
            rule("a.example"),
            rule("*.b.example:443"),
            rule("192.0.2.0/24:80"),
        ]);
        assert!(allow.allows("a.example", 8080));
        assert!(allow.allows("x.b.example", 443));
        assert!(!allow.allows("x.b.example", 80));
        assert!(!allow.allows("c.example", 443));
        assert!(allow.allows("192.0.2.7", 80));
        assert!(!allow.allows("192.0.2.7", 443));
        assert!(!allow.allows("198.51.100.1", 80));
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
