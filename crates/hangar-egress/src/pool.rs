//! Upstream connections of plain HTTP requests, kept for the next request of
//! the same replica to the same host.
//!
//! A plain HTTP request to a host with injected headers goes out over TLS;
//! without reuse every such request would pay a TCP and a TLS handshake to
//! the upstream (two round trips to the internet). Connections are kept per
//! replica, not shared between replicas, so that each connection's bytes
//! (reported when it closes) belong to one replica; a connection idle for
//! [`IDLE_TIMEOUT`] is closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

/// How long an upstream connection waits unused before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per replica and host at most.
const IDLE_PER_KEY: usize = 16;

/// Whose connection to where.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) replica: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

impl Idle {
    fn usable(&self) -> bool {
        self.since.elapsed() < IDLE_TIMEOUT && !self.sender.is_closed()
    }
}

/// The idle connections. Dropping a connection's sender closes it (and its
/// driver reports its bytes).
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Idle>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle connection for `key`, to be awaited `ready()` before use
    /// (the response before it may still be finishing).
    pub(crate) fn checkout(&self, key: &Key) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle();
        let kept = idle.get_mut(key)?;
        // The most recently used first: the likeliest still open upstream.
        while let Some(connection) = kept.pop() {
            if connection.usable() {
                return Some(connection.sender);
            }
        }
        idle.remove(key);
        None
    }

    /// Keeps `sender` for `key`; called as the response on it ends.
    pub(crate) fn checkin(&self, key: Key, sender: SendRequest<Incoming>) {
        let mut idle = self.idle();
        let kept = idle.entry(key).or_default();
        kept.retain(Idle::usable);
        if kept.len() < IDLE_PER_KEY {
            kept.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle too long or closed by their upstream.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle();
        idle.retain(|_, kept| {
            kept.retain(Idle::usable);
            !kept.is_empty()
        });
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        self.idle().clear();
    }
}

/// A response body from a kept connection: when its last frame comes
/// through, the connection goes back to the pool — before the client has
/// the frame, so that the client's next request finds it there. A body
/// dropped before its end takes the connection with it (closed).
pub(crate) struct Returning {
    inner: Incoming,
    back: Option<(Arc<Pool>, Key, SendRequest<Incoming>)>,
}

impl Returning {
    pub(crate) fn new(
        inner: Incoming,
        pool: Arc<Pool>,
        key: Key,
        sender: SendRequest<Incoming>,
    ) -> Self {
        let mut body = Returning {
            inner,
            back: Some((pool, key, sender)),
        };
        // An empty body may never be polled.
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some((pool, key, sender)) = self.back.take() {
            pool.checkin(key, sender);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
