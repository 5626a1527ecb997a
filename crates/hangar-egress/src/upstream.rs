//! Reaching an upstream: the proxy's own name resolution, the addresses it
//! never connects to, and the byte counts of each connection.
//!
//! The proxy resolves names itself and connects to the address it checked,
//! so a name cannot pass the check with one address and be connected to
//! another (DNS rebinding). It never connects to an address of its own
//! host, nor to the ranges it is told to keep away from (the replicas'
//! networks are the server's to add): the proxy's connections come from
//! the host, where the packet filter that fences replicas does not apply.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An address range (`127.0.0.0/8`, `fe80::/10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `addr/prefix`; `None` when the prefix is longer than the address.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Network { addr, prefix })
    }

    /// Whether `ip` (IPv4-mapped IPv6 counted as IPv4) is in the range.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }

    /// The host's own addresses in the sense that matters here: loopback,
    /// unspecified ("this host") and link-local (where cloud metadata
    /// services answer).
    #[must_use]
    pub fn host_local() -> Vec<Network> {
        [
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8),
            (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
            (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
        ]
        .into_iter()
        .map(|(addr, prefix)| Network { addr, prefix })
        .collect()
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let whole = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Whether `ip` is an address of this host (any interface: the bridge's
/// gateway, the public address, loopback): the kernel lets a socket bind
/// only to those. The proxy runs on the host, so without this a replica
/// could reach any host service through it, whatever the packet filter
/// says about the replica's own packets.
pub(crate) fn is_own(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why no connection was made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Every address of the host is forbidden.
    Forbidden,
    /// No address, or none answered in time.
    Unreachable(io::Error),
}

/// Resolves `host:port` (the name mapping first) and connects to the first
/// permitted address that answers.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    resolve: &HashMap<String, SocketAddr>,
    forbidden: &[Network],
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = match resolve.get(host) {
            Some(addr) => vec![*addr],
            None => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(ConnectError::Unreachable)?
                    .collect();
                let permitted: Vec<SocketAddr> = found
                    .iter()
                    .copied()
                    .filter(|a| !forbidden.iter().any(|n| n.contains(a.ip())) && !is_own(a.ip()))
                    .collect();
                if permitted.is_empty() && !found.is_empty() {
                    return Err(ConnectError::Forbidden);
                }
                permitted
            }
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(ConnectError::Unreachable(last))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )))
        })
}

/// Bytes that went each way, shared between a connection and whoever
/// reports it.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
}

impl Counts {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// A connection to an upstream that counts what is written to it (up) and
/// read from it (down).
pub(crate) struct Counted<T> {
    inner: T,
    counts: Arc<Counts>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, counts: Arc<Counts>) -> Self {
        Counted { inner, counts }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            add(&self.counts.down, buf.filled().len() - before);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            add(&self.counts.up, n);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            add(&self.counts.up, n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, prefix: u8) -> Network {
        Network::new(s.parse().expect("ip"), prefix).expect("network")
    }

    #[test]
    fn ranges_contain_their_addresses() {
        let n = net("10.1.0.0", 16);
        assert!(n.contains("10.1.255.3".parse().expect("ip")));
        assert!(!n.contains("10.2.0.1".parse().expect("ip")));
        assert!(net("10.0.0.0", 9).contains("10.127.0.1".parse().expect("ip")));
        assert!(!net("10.0.0.0", 9).contains("10.128.0.1".parse().expect("ip")));
        assert!(net("0.0.0.0", 0).contains("192.0.2.1".parse().expect("ip")));
        assert!(!net("0.0.0.0", 0).contains("::1".parse().expect("ip")));
        assert!(Network::new("10.0.0.0".parse().expect("ip"), 33).is_none());
    }

    #[test]
    fn own_addresses_are_the_hosts() {
        assert!(is_own("127.0.0.1".parse().expect("ip")));
        assert!(is_own("0.0.0.0".parse().expect("ip")));
        // TEST-NET-3: assigned to no one, so never to this host.
        assert!(!is_own("203.0.113.77".parse().expect("ip")));
    }

    #[test]
    fn host_local_covers_loopback_metadata_and_mapped_forms() {
        let local = Network::host_local();
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(local.iter().any(|n| n.contains(ip)), "{ip} not forbidden");
        }
        for ip in ["192.0.2.1", "10.0.0.1", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!local.iter().any(|n| n.contains(ip)), "{ip} forbidden");
        }
    }
}
