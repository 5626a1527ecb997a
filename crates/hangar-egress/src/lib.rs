//! Hangar's egress proxy: where replicas' outbound HTTP and HTTPS go, so
//! that each agent's egress policy is enforced by name and its secrets are
//! added to its requests outside the sandbox.
//!
//! # Why a proxy
//!
//! A packet filter sees addresses; policies name hosts (`api.openai.com`,
//! `*.github.com`), and one address serves many names. The proxy sees the
//! name a client asks for — the host in a plain HTTP request's URL, the
//! host of a `CONNECT` and the server name (SNI) of the TLS handshake inside
//! it —
//! and checks it against the client's [`Policies`] before anything leaves.
//! Replicas are pointed at it with `HTTP_PROXY`/`HTTPS_PROXY`; the packet
//! filter (not this crate) makes it the only way out for a replica whose
//! egress is not open.
//!
//! # How secrets stay out of the sandbox
//!
//! An agent that declares `{"host": "api.openai.com", "headers":
//! {"Authorization": "Bearer ${secrets.OPENAI_KEY}"}}` never sees the key:
//! the server resolves it and hands it to the proxy as an [`Injection`], and
//! the proxy writes the header into each request to that host on its way
//! out, replacing whatever the client sent under that name. The replica
//! holds no copy in its environment, files or memory, so code running there
//! (the agent, a dependency, a prompt-injected tool) cannot read it; at most
//! it can make requests to the host the secret is for, which the policy
//! already allows. (A host that echoes request headers back in its answers
//! would hand the secret to the sandbox: injections are for APIs, not for
//! echo services.)
//!
//! # What is terminated and what is not
//!
//! - Plain HTTP (`GET http://host/…`): read, checked, forwarded. To a host
//!   with an injection it goes out over TLS (port 80 becomes 443), verified
//!   against [`ProxyConfig::upstream_roots`], with the headers injected: an
//!   agent can call `http://api.openai.com/…` and trust no CA, and a secret
//!   never crosses the network in clear. (An upstream that speaks only plain
//!   HTTP cannot get injected headers.)
//! - `CONNECT` to a host **with** an injection: the proxy answers 200,
//!   completes the client's TLS handshake with a leaf for that host signed
//!   by the server's [`CertificateAuthority`] (which the sandbox trusts),
//!   reads the HTTP/1.1 requests inside, injects, and sends them over its own
//!   TLS connection to the host, verified against
//!   [`ProxyConfig::upstream_roots`]. A request inside whose `Host` names
//!   another host is refused.
//! - `CONNECT` to any other host: a byte tunnel, not terminated — the client
//!   verifies the host's own certificate end to end. The proxy reads the
//!   ClientHello first and refuses the tunnel when its SNI names another
//!   host than the `CONNECT`, or names none while the `CONNECT` names a host
//!   by name (every TLS client sends SNI for a name; one that does not is
//!   hiding where it goes). A `CONNECT` to an IP address may carry no SNI.
//!   A tunnel carries TLS only: bytes that are not a ClientHello are
//!   refused, since the proxy could not tell where they lead.
//!
//! Whatever the policy, the proxy does not connect to an address of its own
//! host, nor to loopback, link-local (cloud metadata) or unspecified
//! addresses, nor to the ranges in [`ProxyConfig::forbidden`] (the server
//! adds its replicas' networks there), checked on the addresses it resolved
//! itself: the proxy connects from the host, outside the packet filter that
//! fences replicas, so without this a replica with open egress could reach
//! the host's services, or another tenant's replicas, through it.
//!
//! # Limits
//!
//! Inside a terminated tunnel the proxy speaks HTTP/1.1 (it offers only
//! `http/1.1` by ALPN; HTTP/2 clients fall back, h2-only ones fail), and
//! requests that ask to switch protocols (WebSocket) are not carried there
//! or over plain HTTP; over a plain tunnel anything TLS goes. A host gets
//! injected headers only over TLS.
//!
//! # Failures
//!
//! A denied request fails at once: `403` with `egress to <host> denied by
//! policy` (to the request, or to the `CONNECT`; after a `CONNECT` was
//! answered — a wrong SNI — the connection is closed), and an
//! [`EgressEvent::Denied`]. An address with no policy is denied the same
//! way. An upstream that cannot be reached or fails its TLS is a `502`.
//! Each upstream connection ends with an [`EgressEvent::Done`] counting the
//! bytes that went over the wire to and from it.
//!
//! # Layout
//!
//! - [`policy`]: [`Policies`], [`ClientPolicy`], [`Egress`], [`HostPattern`],
//!   [`Injection`].
//! - [`ca`]: the [`CertificateAuthority`] and the leaves it mints.
//! - `hello`: the ClientHello's server name, before a tunnel opens.
//! - `proxy`: the listener, plain HTTP, `CONNECT`, tunnels and terminated
//!   TLS.
//! - `pool`: plain HTTP's upstream connections, kept per replica and host.
//! - `upstream`: resolving, the address check, connecting, byte counts.

pub mod ca;
mod hello;
pub mod policy;
mod pool;
mod proxy;
mod upstream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use ca::{CaError, CertificateAuthority};
pub use policy::{ClientPolicy, Egress, EgressRule, HostPattern, Injection, Policies};
pub use proxy::EgressProxy;
pub use upstream::Network;

/// How the proxy runs.
pub struct ProxyConfig {
    /// Signs the leaves for hosts the proxy terminates.
    pub ca: Arc<CertificateAuthority>,
    /// Whom the proxy trusts upstream when it re-originates TLS.
    pub upstream_roots: rustls::RootCertStore,
    /// Where denials and finished connections are reported. Sends wait when
    /// the channel is full, so a slow reader slows egress rather than losing
    /// a denial (except while the proxy shuts down: then what does not fit
    /// is dropped).
    pub events: mpsc::Sender<EgressEvent>,
    /// Names resolved to a fixed address (port included, replacing the
    /// requested one) instead of through DNS: an operator's name mapping,
    /// and how tests reach servers with no DNS name. These addresses are
    /// trusted as given ([`ProxyConfig::forbidden`] is not applied).
    pub resolve: HashMap<String, SocketAddr>,
    /// Addresses never connected to after resolving, whatever the policy,
    /// besides the host's own: by default loopback, link-local and
    /// unspecified ([`Network::host_local`]); a server adds its replicas'
    /// networks, so that the proxy cannot carry one replica to another.
    pub forbidden: Vec<Network>,
    /// How long a client has to send its request head, and its ClientHello
    /// after a `CONNECT`.
    pub client_timeout: Duration,
    /// How long connecting to an upstream (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// Client connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl ProxyConfig {
    /// A configuration with the defaults: no name mapping, loopback,
    /// link-local and unspecified addresses forbidden, 30 s for clients,
    /// 10 s to connect, 4096 connections.
    #[must_use]
    pub fn new(
        ca: Arc<CertificateAuthority>,
        upstream_roots: rustls::RootCertStore,
        events: mpsc::Sender<EgressEvent>,
    ) -> Self {
        ProxyConfig {
            ca,
            upstream_roots,
            events,
            resolve: HashMap::new(),
            forbidden: Network::host_local(),
            client_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// The public web's roots (Mozilla's list, built in): the usual
/// [`ProxyConfig::upstream_roots`].
#[must_use]
pub fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// What the proxy reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressEvent {
    /// A request or `CONNECT` refused.
    Denied {
        /// The client's address.
        client: IpAddr,
        /// Its replica, `None` when the address has no policy.
        replica: Option<String>,
        /// The host asked for (normalized).
        host: String,
        /// The port asked for.
        port: u16,
        /// Why.
        reason: DenyReason,
    },
    /// An upstream connection ended: for plain HTTP, one per upstream
    /// connection (kept for the replica's next requests to the host, closed
    /// after 30 s unused); for a `CONNECT`, one per tunnel (terminated:
    /// every upstream connection the tunnel used).
    Done {
        /// The replica that used it.
        replica: String,
        /// The host it went to (normalized).
        host: String,
        /// Bytes sent to the upstream, on the wire (TLS included).
        bytes_up: u64,
        /// Bytes received from the upstream, on the wire.
        bytes_down: u64,
    },
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The client address has no policy (no replica the server knows).
    UnknownClient,
    /// The client's egress policy does not allow the host.
    NotAllowed,
    /// The host resolved only to addresses the proxy never connects to
    /// (the host's own, or [`ProxyConfig::forbidden`]).
    ForbiddenAddress,
    /// Inside an allowed `CONNECT`, the TLS server name named another host.
    ServerNameMismatch {
        /// The server name the client asked for.
        server_name: String,
    },
    /// Inside a `CONNECT` to a name, the ClientHello named no server.
    NoServerName,
    /// Inside a `CONNECT`, the first bytes were not a TLS ClientHello.
    NotTls,
    /// Inside a terminated `CONNECT`, a request named another host.
    HostMismatch {
        /// The host the request named.
        requested: String,
    },
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::UnknownClient => f.write_str("the client is no known replica"),
            DenyReason::NotAllowed => f.write_str("not allowed by the egress policy"),
            DenyReason::ForbiddenAddress => {
                f.write_str("resolves to an address the proxy does not connect to")
            }
            DenyReason::ServerNameMismatch { server_name } => {
                write!(
                    f,
                    "the TLS server name {server_name} is not the CONNECT host"
                )
            }
            DenyReason::NoServerName => f.write_str("the TLS handshake names no server"),
            DenyReason::NotTls => f.write_str("the tunnel does not start with TLS"),
            DenyReason::HostMismatch { requested } => {
                write!(f, "a request inside the tunnel is for {requested}")
            }
        }
    }
}

/// The one crypto provider, named rather than taken from the process
/// default, which is unset (and building a config would panic) when a
/// binary links more than one.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
