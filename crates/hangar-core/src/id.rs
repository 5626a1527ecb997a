//! Identifiers: a kind prefix and a lowercase ULID (`agent_01jd7x…`).
//!
//! ULIDs sort by creation time, so "newest first" and cursor pagination are a range
//! scan on the primary key; the prefix makes an ID self-describing in logs and
//! support tickets. IDs are opaque to clients: nothing but equality is promised.

use std::sync::Mutex;

use ulid::{Generator, Ulid};

/// One generator per process, so IDs made within the same millisecond still sort in
/// the order they were made (the generator increments the random part).
static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

crate::string_enum! {
    /// What an identifier names; its prefix is the value.
    pub enum IdKind {
        /// An organization.
        Organization = "org",
        /// A user.
        User = "user",
        /// An API key.
        ApiKey = "key",
        /// A cloud (runtime target).
        Cloud = "cloud",
        /// An agent blueprint.
        Agent = "agent",
        /// A build of an agent.
        Build = "build",
        /// An instance (deployment of a build).
        Instance = "inst",
        /// A replica of an instance.
        Replica = "rep",
        /// An async invocation.
        Job = "job",
        /// An invocation request.
        Request = "req",
        /// An upload slot.
        Upload = "upl",
        /// A secret.
        Secret = "sec",
        /// A webhook endpoint.
        Webhook = "wh",
        /// A webhook delivery.
        Delivery = "dlv",
        /// An event.
        Event = "evt",
        /// A server on the database (its IDs are made by the server).
        Node = "node",
        /// A sticky session of an agent (its IDs are the caller's own).
        Session = "sess",
    }
}

/// A fresh identifier of `kind`.
#[must_use]
#[expect(
    clippy::unwrap_or_default,
    reason = "Ulid's Default is the nil ULID, not a fresh one"
)]
pub fn new_id(kind: IdKind) -> String {
    let ulid = GENERATOR
        .lock()
        .ok()
        .and_then(|mut g| g.generate().ok())
        // Overflow of the random part within one millisecond, or a poisoned lock:
        // a fresh ULID is still unique, only not ordered within that millisecond.
        .unwrap_or_else(Ulid::new);
    format!("{}_{}", kind.as_str(), ulid.to_string().to_lowercase())
}

/// The random tail of an identifier, for names that must be unique but short
/// (resource names in URLs). `len` is clamped to the ULID's 16 random characters.
#[must_use]
pub fn random_suffix(id: &str, len: usize) -> String {
    let len = len.min(16);
    let tail: String = id.chars().rev().take(len).collect();
    tail.chars().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_sort_by_creation() {
        let ids: Vec<String> = (0..1000).map(|_| new_id(IdKind::Agent)).collect();
        let a = &ids[0];
        assert!(a.starts_with("agent_"));
        assert_eq!(a.len(), "agent_".len() + 26);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "made in one millisecond, still in order"
        );
        assert_eq!(*a, a.to_lowercase());
    }

    #[test]
    fn suffix_is_the_random_tail() {
        let id = "inst_01jd7x0000000000000000abcd";
        assert_eq!(random_suffix(id, 4), "abcd");
        assert_eq!(random_suffix(id, 100).len(), 16);
    }
}
