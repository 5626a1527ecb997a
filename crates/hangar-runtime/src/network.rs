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

use serde::{Deserialize, Serialize};

pub use hangar_core::network::Destination;

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
    /// A CA certificate (PEM) the replica trusts besides its root's own: the
    /// egress proxy's, so that it can terminate TLS to hosts it injects
    /// headers for. The sandbox driver shows it at
    /// [`crate::sandbox::CA_DIR`] with a bundle of the root's CAs and names
    /// them in the variables TLS libraries read; other drivers refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
