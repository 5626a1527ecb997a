//! Connections to replicas for invocations, driven by the request using one.
//!
//! hyper's pooled client (`hyper_util`'s legacy `Client`) runs every
//! connection in a task of its own: a request hands its message to that task
//! and waits to be woken with the answer, and the body comes back through a
//! channel the same way, so each invocation hops between two tasks (often
//! across the runtime's worker threads) several times. Here a request takes
//! an idle connection out of the pool and polls the connection's I/O itself
//! while it waits for the answer's head and while its body is read; when the
//! body has ended, the connection goes back to the pool. A request dropped
//! midway (its timeout ran out, its caller left) drops its connection, and
//! the replica sees it close, as with the pooled client.
//!
//! Invocations (sync and streamed) use this; the instance-URL proxy keeps the
//! pooled client, which handles protocol upgrades (websockets).

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::lock;

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept per replica; more are closed when they come back.
pub const MAX_IDLE_PER_REPLICA: usize = 64;

/// Idle connections tried for one request before a new one is made (each
/// may have been closed by the replica while it sat in the pool).
const IDLE_ATTEMPTS: usize = 3;

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One HTTP/1.1 connection to a replica: the handle requests are sent on,
/// and the state machine doing its reads and writes when polled.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
}

impl Conn {
    /// Polls the connection's I/O. `false` once it has closed (or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        match Pin::new(&mut self.driver).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(err)) => {
                tracing::debug!(error = %err, "replica connection failed");
                false
            }
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request was not sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed or closed before the answer's head.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The connection closed with the request in flight.
    #[error("the connection closed before an answer")]
    Closed,
}

impl UpstreamError {
    /// Whether the replica never saw the request (it refused the connection).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    swept: Instant,
}

/// See the module docs. Shared by a gateway's requests.
pub struct Upstreams {
    pool: Mutex<Pool>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            pool: Mutex::new(Pool {
                idle: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }
}

impl Upstreams {
    /// Sends `request` to `address` on an idle connection, or a new one,
    /// and returns the answer once its head has arrived. Its body drives the
    /// connection as it is read and returns it to the pool at its end.
    pub async fn send(
        self: &Arc<Self>,
        address: SocketAddr,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut attempts = 0;
        loop {
            let reused = if attempts < IDLE_ATTEMPTS {
                self.checkout(address)
            } else {
                None
            };
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(conn) => conn,
                None => connect(address).await?,
            };
            attempts += 1;
            let ready = poll_fn(|cx| {
                if !conn.drive(cx) {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|ready| ready.is_ok())
            })
            .await;
            if !ready {
                if fresh {
                    return Err(UpstreamError::Closed);
                }
                continue;
            }
            let mut sending = pin!(conn.sender.try_send_request(request));
            let mut open = true;
            let sent = poll_fn(|cx| {
                if open {
                    open = conn.drive(cx);
                }
                match sending.as_mut().poll(cx) {
                    Poll::Pending if !open => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(result) => Poll::Ready(Some(result)),
                }
            })
            .await;
            match sent {
                Some(Ok(response)) => {
                    let (head, incoming) = response.into_parts();
                    let body = UpstreamBody {
                        incoming,
                        conn: open.then_some(conn),
                        pool: self.clone(),
                        address,
                    };
                    return Ok(Response::from_parts(head, body));
                }
                Some(Err(mut err)) => match err.take_message() {
                    // Never written: the connection had closed. Try again.
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(UpstreamError::Http(err.into_error())),
                },
                None => return Err(UpstreamError::Closed),
            }
        }
    }

    /// The most recently used idle connection to `address` that is young
    /// enough.
    fn checkout(&self, address: SocketAddr) -> Option<Conn> {
        let mut pool = lock(&self.pool);
        let idle = pool.idle.get_mut(&address)?;
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Puts a connection whose last answer has been read back in the pool.
    /// Now and then, connections idle past [`IDLE_TIMEOUT`] are closed (a
    /// replica that went away leaves its own to this sweep).
    fn checkin(&self, address: SocketAddr, conn: Conn) {
        let mut pool = lock(&self.pool);
        let now = Instant::now();
        if now.duration_since(pool.swept) >= IDLE_TIMEOUT {
            pool.swept = now;
            pool.idle.retain(|_, idle| {
                idle.retain(|entry| now.duration_since(entry.since) < IDLE_TIMEOUT);
                !idle.is_empty()
            });
        }
        let idle = pool.idle.entry(address).or_default();
        if idle.len() < MAX_IDLE_PER_REPLICA {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Idle connections in the pool, for tests.
    pub fn idle_count(&self) -> usize {
        lock(&self.pool).idle.values().map(Vec::len).sum()
    }
}

async fn connect(address: SocketAddr) -> Result<Conn, UpstreamError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(UpstreamError::Connect)?;
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    let (sender, driver) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    Ok(Conn { sender, driver })
}

/// An answer's body, read from the replica as it is polled; at its end the
/// connection returns to the pool.
pub struct UpstreamBody {
    incoming: Incoming,
    /// `None` once the connection closed, or was returned.
    conn: Option<Conn>,
    pool: Arc<Upstreams>,
    address: SocketAddr,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = Pin::new(&mut this.incoming).poll_frame(cx);
        if frame.is_pending() {
            if let Some(conn) = &mut this.conn {
                if !conn.drive(cx) {
                    this.conn = None;
                }
                // The reads just done may have completed a frame.
                frame = Pin::new(&mut this.incoming).poll_frame(cx);
            }
        }
        match &frame {
            Poll::Ready(None) => {
                if let Some(conn) = this.conn.take() {
                    this.pool.checkin(this.address, conn);
                }
            }
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A replica speaking just enough HTTP/1.1: answers `ok` to each
    /// `POST /invoke` in origin form with a Host (404 to anything else;
    /// bodiless requests and ones with a Content-Length), closing a
    /// connection after `answers_per_connection` answers without saying so.
    /// Returns its address and how many connections it accepted.
    async fn replica(answers_per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut answered = 0;
                    let mut chunk = [0u8; 4096];
                    while answered < answers_per_connection {
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().expect("length"));
                        while buffer.len() < end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.drain(..end + 4 + length);
                        // Origin form, with a Host header: what a server expects.
                        let answer: &[u8] = if head.starts_with("post /invoke http/1.1\r\n")
                            && head.contains("\r\nhost: 127.0.0.1:")
                        {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                        };
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                });
            }
        });
        (address, accepted)
    }

    fn post(address: SocketAddr) -> Request<Full<Bytes>> {
        Request::post("/invoke")
            .header(hyper::header::HOST, address.to_string())
            .body(Full::new(Bytes::from_static(b"{\"q\":1}")))
            .expect("request")
    }

    async fn answer(upstreams: &Arc<Upstreams>, address: SocketAddr) -> Bytes {
        let response = upstreams.send(address, post(address)).await.expect("sent");
        assert_eq!(response.status(), 200);
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (address, accepted) = replica(usize::MAX).await;
        let upstreams = Arc::new(Upstreams::default());
        for _ in 0..5 {
            assert_eq!(answer(&upstreams, address).await, "ok");
            assert_eq!(upstreams.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_takes_its_connection_with_it() {
        let (address, accepted) = replica(usize::MAX).await;
        let upstreams = Arc::new(Upstreams::default());
        let response = upstreams.send(address, post(address)).await.expect("sent");
        drop(response);
        assert_eq!(upstreams.idle_count(), 0);
        assert_eq!(answer(&upstreams, address).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_replica_closed_while_idle_is_replaced() {
        let (address, accepted) = replica(1).await;
        let upstreams = Arc::new(Upstreams::default());
        for _ in 0..4 {
            assert_eq!(answer(&upstreams, address).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_refused_connection_says_the_request_was_not_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let upstreams = Arc::new(Upstreams::default());
        let Err(err) = upstreams.send(address, post(address)).await else {
            panic!("a closed port answered");
        };
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_all_come_back() {
        let (address, accepted) = replica(usize::MAX).await;
        let upstreams = Arc::new(Upstreams::default());
        let answers = futures_util::future::join_all((0..8).map(|_| answer(&upstreams, address)));
        for body in answers.await {
            assert_eq!(body, "ok");
        }
        let made = accepted.load(Ordering::SeqCst);
        assert_eq!(upstreams.idle_count(), made);
        for _ in 0..8 {
            answer(&upstreams, address).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), made);
    }
}
