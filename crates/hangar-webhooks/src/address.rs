//! Which addresses a delivery may connect to.
//!
//! A webhook URL is chosen by a tenant, and the deliverer connects from
//! inside the operator's network: a URL naming the loopback interface, a
//! private network or the link-local range (where clouds serve instance
//! metadata and credentials, 169.254.169.254) would let a tenant make the
//! server send requests to services meant only for the operator. So unless
//! the operator allows it ([`AddressPolicy::AllowPrivate`], `hangar serve
//! --webhook-allow-private`), such addresses are refused.
//!
//! The check is on the addresses the connection is made to, not on the
//! name in the URL: [`Receivers`] is the connector the deliverer's client
//! uses, and its resolver hands the TCP connector only addresses that
//! passed. A name that resolves to a public address when checked and to
//! 127.0.0.1 a moment later (DNS rebinding) cannot slip through, because no
//! second lookup is made. Literal IP hosts (which the HTTP connector does
//! not resolve) get the same check before connecting.
//!
//! What this is not: an egress firewall. It governs the deliverer's own
//! connections only; redirects are not followed, so there is no second hop
//! to check.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

/// Which receiver addresses deliveries may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressPolicy {
    /// Public addresses only: loopback, private, link-local, shared (CGNAT)
    /// and unspecified addresses are refused. The default.
    #[default]
    PublicOnly,
    /// Any address (the operator runs receivers on their own network).
    AllowPrivate,
}

impl AddressPolicy {
    /// Why a connection to `address` (reached through `host`, the URL's
    /// host) is refused, or `None` when it may be made.
    #[must_use]
    pub fn refuses(self, host: &str, address: IpAddr) -> Option<Refused> {
        match self {
            AddressPolicy::AllowPrivate => None,
            AddressPolicy::PublicOnly => reserved(address).map(|range| Refused {
                host: host.to_owned(),
                address,
                range,
            }),
        }
    }
}

/// A range of addresses that is not the public Internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// 127.0.0.0/8, ::1: this machine.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7: a private network.
    Private,
    /// 169.254/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// 100.64/10: carrier-grade NAT, shared address space.
    Shared,
    /// 0.0.0.0/8, ::: "this host" (Linux connects 0.0.0.0 to loopback).
    Unspecified,
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reserved::Loopback => "a loopback address",
            Reserved::Private => "a private address",
            Reserved::LinkLocal => "a link-local address",
            Reserved::Shared => "a shared (carrier-grade NAT) address",
            Reserved::Unspecified => "an unspecified address",
        })
    }
}

/// The reserved range `address` is in, if any. IPv6 forms that carry an
/// IPv4 address the kernel or a NAT64 gateway would connect to
/// (`::ffff:127.0.0.1`, `::127.0.0.1`, `64:ff9b::127.0.0.1`) count as that
/// IPv4 address.
#[must_use]
pub fn reserved(address: IpAddr) -> Option<Reserved> {
    match address {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => reserved_v6(v6),
    }
}

fn reserved_v4(ip: Ipv4Addr) -> Option<Reserved> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some(Reserved::Loopback)
    } else if ip.is_private() {
        Some(Reserved::Private)
    } else if ip.is_link_local() {
        Some(Reserved::LinkLocal)
    } else if a == 100 && (64..128).contains(&b) {
        Some(Reserved::Shared)
    } else if a == 0 {
        Some(Reserved::Unspecified)
    } else {
        None
    }
}

fn reserved_v6(ip: Ipv6Addr) -> Option<Reserved> {
    let segments = ip.segments();
    if ip.is_loopback() {
        return Some(Reserved::Loopback);
    }
    if ip.is_unspecified() {
        return Some(Reserved::Unspecified);
    }
    if segments[0] & 0xfe00 == 0xfc00 {
        return Some(Reserved::Private);
    }
    if segments[0] & 0xffc0 == 0xfe80 {
        return Some(Reserved::LinkLocal);
    }
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible
    // (::a.b.c.d) forms reach the IPv4 address; so does the NAT64
    // well-known prefix (64:ff9b::/96) through a NAT64 gateway.
    let [.., a, b, c, d] = ip.octets();
    let embedded = Ipv4Addr::new(a, b, c, d);
    let mapped = segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0);
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if mapped || nat64 {
        return reserved_v4(embedded);
    }
    None
}

/// The IP address `host` (a URL's host, IPv6 in brackets) is, when it is
/// one rather than a name: the hosts the HTTP connector connects to
/// without resolving.
#[must_use]
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// A delivery the policy does not allow: the attempt's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The URL's host.
    pub host: String,
    /// The address it is (or resolved to).
    pub address: IpAddr,
    /// Which reserved range that is in.
    pub range: Reserved,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Refused {
            host,
            address,
            range,
        } = self;
        if literal_ip(host) == Some(*address) {
            write!(f, "refused: {address} is {range}")?;
        } else {
            write!(f, "refused: {host} resolves to {address}, {range}")?;
        }
        f.write_str("; start the server with --webhook-allow-private to allow it")
    }
}

impl std::error::Error for Refused {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Resolves names with the system's resolver (through tokio) and keeps
/// only the addresses `policy` allows; none left is a [`Refused`] naming
/// the first address found.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    policy: AddressPolicy,
}

impl Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str();
            // The port is the connector's to set.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            let mut first_refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.refuses(host, addr.ip()) {
                    None => true,
                    Some(refused) => {
                        first_refused.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            match first_refused {
                Some(refused) if allowed.is_empty() => Err(refused.into()),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The TCP connector of deliveries: literal IP hosts checked here, names
/// through [`CheckedResolver`]; either way only addresses `policy` allows
/// are connected to.
#[derive(Debug, Clone)]
pub struct Receivers {
    policy: AddressPolicy,
    tcp: HttpConnector<CheckedResolver>,
}

impl Receivers {
    /// A connector under `policy`, plain TCP set up by `configure` (its
    /// timeouts; the resolver is this module's).
    #[must_use]
    pub fn new(
        policy: AddressPolicy,
        configure: impl FnOnce(&mut HttpConnector<CheckedResolver>),
    ) -> Self {
        let mut tcp = HttpConnector::new_with_resolver(CheckedResolver { policy });
        configure(&mut tcp);
        Self { policy, tcp }
    }
}

impl Service<axum::http::Uri> for Receivers {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: axum::http::Uri) -> Self::Future {
        let refused = uri.host().and_then(|host| {
            let address = literal_ip(host)?;
            self.policy.refuses(host, address)
        });
        if let Some(refused) = refused {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.tcp.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The [`Refused`] somewhere in `err`'s chain of causes (the client wraps
/// the connector's error, which may wrap the resolver's).
#[must_use]
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn reserved_ranges_are_recognised() {
        let cases = [
            ("127.0.0.1", Some(Reserved::Loopback)),
            ("127.255.255.254", Some(Reserved::Loopback)),
            ("::1", Some(Reserved::Loopback)),
            ("10.0.0.1", Some(Reserved::Private)),
            ("172.16.0.1", Some(Reserved::Private)),
            ("172.31.255.255", Some(Reserved::Private)),
            ("192.168.1.1", Some(Reserved::Private)),
            ("fc00::1", Some(Reserved::Private)),
            ("fd12:3456::1", Some(Reserved::Private)),
            ("169.254.169.254", Some(Reserved::LinkLocal)),
            ("fe80::1", Some(Reserved::LinkLocal)),
            ("febf::1", Some(Reserved::LinkLocal)),
            ("100.64.0.1", Some(Reserved::Shared)),
            ("100.127.255.255", Some(Reserved::Shared)),
            ("0.0.0.0", Some(Reserved::Unspecified)),
            ("0.1.2.3", Some(Reserved::Unspecified)),
            ("::", Some(Reserved::Unspecified)),
            // Just outside each range.
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("169.253.255.255", None),
            ("11.0.0.1", None),
            ("fec0::1", None),
            ("fbff::1", None),
            // Public.
            ("1.1.1.1", None),
            ("93.184.216.34", None),
            ("2606:4700:4700::1111", None),
            ("2001:db8::1", None),
        ];
        for (address, want) in cases {
            assert_eq!(reserved(ip(address)), want, "{address}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_as_the_ipv4_address() {
        let cases = [
            ("::ffff:127.0.0.1", Some(Reserved::Loopback)),
            ("::ffff:7f00:1", Some(Reserved::Loopback)),
            ("::ffff:10.1.2.3", Some(Reserved::Private)),
            ("::ffff:192.168.0.1", Some(Reserved::Private)),
            ("::ffff:169.254.169.254", Some(Reserved::LinkLocal)),
            ("::ffff:100.64.0.1", Some(Reserved::Shared)),
            ("::ffff:0.0.0.0", Some(Reserved::Unspecified)),
            ("::127.0.0.1", Some(Reserved::Loopback)),
            ("64:ff9b::127.0.0.1", Some(Reserved::Loopback)),
            ("64:ff9b::169.254.169.254", Some(Reserved::LinkLocal)),
            ("::ffff:1.1.1.1", None),
            ("64:ff9b::1.1.1.1", None),
        ];
        for (address, want) in cases {
            assert_eq!(reserved(ip(address)), want, "{address}");
        }
    }

    #[test]
    fn the_policy_refuses_only_when_private_is_not_allowed() {
        let refused = AddressPolicy::PublicOnly
            .refuses("127.0.0.1", ip("127.0.0.1"))
            .expect("refused");
        assert_eq!(
            refused.to_string(),
            "refused: 127.0.0.1 is a loopback address; \
             start the server with --webhook-allow-private to allow it"
        );
        let named = AddressPolicy::PublicOnly
            .refuses("metadata.internal", ip("169.254.169.254"))
            .expect("refused");
        assert_eq!(
            named.to_string(),
            "refused: metadata.internal resolves to 169.254.169.254, a link-local address; \
             start the server with --webhook-allow-private to allow it"
        );
        assert_eq!(
            AddressPolicy::AllowPrivate.refuses("127.0.0.1", ip("127.0.0.1")),
            None
        );
        assert_eq!(
            AddressPolicy::PublicOnly.refuses("one.one.one.one", ip("1.1.1.1")),
            None
        );
        assert_eq!(AddressPolicy::default(), AddressPolicy::PublicOnly);
    }

    #[test]
    fn literal_hosts_are_told_from_names() {
        assert_eq!(literal_ip("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(literal_ip("[::1]"), Some(ip("::1")));
        assert_eq!(
            literal_ip("[::ffff:127.0.0.1]"),
            Some(ip("::ffff:127.0.0.1"))
        );
        assert_eq!(literal_ip("localhost"), None);
        // Not a literal to the connector either: resolved, then checked.
        assert_eq!(literal_ip("127.1"), None);
    }

    #[tokio::test]
    async fn the_resolver_hands_on_no_refused_address() {
        let mut resolver = CheckedResolver {
            policy: AddressPolicy::PublicOnly,
        };
        for host in ["localhost", "127.1", "2130706433"] {
            let name: Name = host.parse().expect("name");
            let err = resolver.call(name).await.expect_err(host);
            let refused = refusal(&*err).expect("a refusal");
            assert_eq!(refused.range, Reserved::Loopback, "{host}");
            assert_eq!(refused.host, host);
        }
        let mut open = CheckedResolver {
            policy: AddressPolicy::AllowPrivate,
        };
        let found: Vec<SocketAddr> = open
            .call("localhost".parse().expect("name"))
            .await
            .expect("resolved")
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
        assert!(!found.is_empty());
    }
}
