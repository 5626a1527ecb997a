//! What a replica may reach on the network: its [`NetworkPolicy`].
//!
//! Every driver gets the same policy with every replica
//! ([`crate::driver::ReplicaSpec::network`]) and enforces what it can; a
//! driver that cannot enforce a policy it is given refuses the replica
//! instead of running it with less isolation.
//!
//! The policy speaks of *groups*, not of organizations or agents: the
//! controller puts the replicas of one instance in one group, so the runtime
//! never needs to know who owns what. A replica reaches:
//!
//! - replicas of its own group, and of the groups it names in
//!   [`NetworkPolicy::reach`] (it may open connections to them; they may not
//!   open connections to it unless they name its group too);
//! - on the host, only the TCP ports of [`NetworkPolicy::host_ports`] (the
//!   services Hangar offers replicas, such as the egress proxy);
//! - outside the host, what [`Egress`] allows: everything, nothing, or a list
//!   of addresses and ports. Host *names* are not the packet filter's to
//!   match: the egress proxy matches them.
//!
//! Nothing else: not another group's replicas, not any address of the host.
//! Hangar's own connections to replicas (invocations, health checks) are
//! the host's, and always reach them.

use std::fmt;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Replicas of one group reach each other. Empty: the replica is a group
    /// of its own (its id), as a build is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Other groups whose replicas this one may open connections to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<String>,
    /// What it may reach outside the host.
    #[serde(default)]
    pub egress: Egress,
    /// TCP ports on the host it may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
}

/// What a replica may reach outside the host, by address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Any address outside the host (no other replica, no address of the
    /// host: those are the rest of the policy's).
    #[default]
    Open,
    /// No address outside the host.
    None,
    /// Only these.
    Allow(Vec<Destination>),
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
        let (addresses, port) = match text.rsplit_once(':') {
            Some((addresses, port)) => {
                let port: u16 = port.parse().ok().filter(|port| *port != 0).ok_or_else(|| {
                    format!("{text:?}: the port must be a number from 1 to 65535")
                })?;
                (addresses, Some(port))
            }
            None => (text, None),
        };
        let net = if addresses.contains('/') {
            addresses.parse::<Ipv4Net>().map_err(|_| {
                format!("{text:?} is not an IPv4 network such as 10.0.0.0/8 or 10.0.0.0/8:5432")
            })?
        } else {
            let address: std::net::Ipv4Addr = addresses.parse().map_err(|_| {
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

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

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
    fn bad_destinations_say_why() {
        for (text, why) in [
            ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/8:0", "port"),
            ("10.0.0.0/8:70000", "port"),
            ("api.openai.com", "not an IPv4 address"),
            ("10.0.0.0/33", "not an IPv4 network"),
            ("::1", "not an IPv4 address"),
        ] {
            let err = text.parse::<Destination>().expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn a_policy_without_fields_is_open_and_of_its_own_group() {
        let policy: NetworkPolicy = serde_json::from_str("{}").expect("empty policy");
        assert_eq!(policy, NetworkPolicy::default());
        assert_eq!(policy.egress, Egress::Open);
        let allow: NetworkPolicy =
            serde_json::from_str(r#"{"group":"g","egress":{"allow":["10.0.0.0/8:5432"]}}"#)
                .expect("allow policy");
        assert_eq!(
            allow.egress,
            Egress::Allow(vec!["10.0.0.0/8:5432".parse().expect("destination")])
        );
        assert_eq!(
            serde_json::to_value(&allow).expect("serializes"),
            serde_json::json!({"group": "g", "egress": {"allow": ["10.0.0.0/8:5432"]}})
        );
    }
}
