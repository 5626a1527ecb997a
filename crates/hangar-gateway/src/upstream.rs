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
//! Invocations (sync and streamed) use this with whole request bodies, and
//! the instance-URL proxy with the caller's body streamed through (the
//! connection writes it as it is driven, before and while the answer is
//! read). An answer that ends while its request is still being written
//! (the replica answered before reading it all) leaves the connection to a
//! task of its own that writes the rest, as a connection task would.
//! Protocol upgrades (websockets) take a connection of their own
//! (`proxy::tunnel`).

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

/// How long a replica may take to accept a connection. It is on the host's
/// bridge or loopback, so a healthy one accepts within a millisecond; one
/// that does not answer at all (its address gone a moment ago, say) would
/// otherwise hold the request for TCP's whole SYN retry schedule, about two
/// minutes. Past it the connection counts as refused: the request was never
/// sent, and goes to another replica.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A request body the connections can write.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 connection to a replica: the handle requests are sent on,
/// and the state machine doing its reads and writes when polled.
struct Conn<B: RequestBody> {
    sender: http1::SendRequest<B>,
    /// `None` once it finished: dropping it fails a request still queued.
    driver: Option<http1::Connection<TokioIo<TcpStream>, B>>,
}

impl<B: RequestBody> Conn<B> {
    /// Drives the connection until it can take a request; `false` if it
    /// closed first.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if !self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|ready| ready.is_ok())
        })
        .await
    }

    /// Polls the connection's I/O. `false` once it has closed (or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return false;
        };
        match Pin::new(driver).poll(cx) {
            Poll::Pending => return true,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(err)) => {
                tracing::debug!(error = %err, "replica connection failed");
            }
        }
        self.driver = None;
        false
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request was not sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// A new connection closed before it took the request: not sent.
    #[error("the replica closed a new connection before taking the request")]
    NotSent,
    /// The connection failed or closed after the request was written,
    /// before the answer's head.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// Whether the replica never saw the request (it refused or closed the
    /// connection first): another replica may be asked.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::NotSent)
    }
}

struct Idle<B: RequestBody> {
    conn: Conn<B>,
    since: Instant,
}

struct Pool<B: RequestBody> {
    idle: HashMap<SocketAddr, Vec<Idle<B>>>,
    swept: Instant,
}

impl<B: RequestBody> Pool<B> {
    /// Now and then (at most every [`IDLE_TIMEOUT`], on a checkout or a
    /// checkin), closes connections idle past [`IDLE_TIMEOUT`]: a replica
    /// that went away leaves its own to this sweep.
    fn sweep(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.swept) < IDLE_TIMEOUT {
            return;
        }
        self.swept = now;
        self.idle.retain(|_, idle| {
            idle.retain(|entry| now.duration_since(entry.since) < IDLE_TIMEOUT);
            !idle.is_empty()
        });
    }
}

/// See the module docs. Shared by a gateway's requests. `B` is the type of
/// the request bodies sent.
pub struct Upstreams<B: RequestBody = Full<Bytes>> {
    pool: Mutex<Pool<B>>,
}

impl<B: RequestBody> Default for Upstreams<B> {
    fn default() -> Self {
        Self {
            pool: Mutex::new(Pool {
                idle: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }
}

impl<B: RequestBody> Upstreams<B> {
    /// Sends `request` to `address` on an idle connection, or a new one,
    /// and returns the answer once its head has arrived. Its body drives the
    /// connection as it is read and returns it to the pool at its end.
    pub async fn send(
        self: &Arc<Self>,
        address: SocketAddr,
        mut request: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, UpstreamError> {
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
            if !conn.ready().await {
                if fresh {
                    return Err(UpstreamError::NotSent);
                }
                continue;
            }
            let mut sending = pin!(conn.sender.try_send_request(request));
            // Once the driver finishes it is dropped, and hyper resolves the
            // request: handed back if never written, else an error. Waiting
            // for that (not giving up when the driver ends) also keeps an
            // answer whose head arrived with the connection's close.
            let sent = poll_fn(|cx| {
                conn.drive(cx);
                sending.as_mut().poll(cx)
            })
            .await;
            match sent {
                Ok(response) => {
                    let (head, incoming) = response.into_parts();
                    let open = conn.driver.is_some();
                    let body = UpstreamBody {
                        incoming,
                        conn: open.then_some(conn),
                        pool: self.clone(),
                        address,
                    };
                    return Ok(Response::from_parts(head, body));
                }
                Err(mut err) => match err.take_message() {
                    // Never written: the connection had closed. Try again.
                    Some(unsent) if !fresh => request = unsent,
                    Some(_) => return Err(UpstreamError::NotSent),
                    None => return Err(UpstreamError::Http(err.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `address` that is young
    /// enough.
    fn checkout(&self, address: SocketAddr) -> Option<Conn<B>> {
        let mut pool = lock(&self.pool);
        pool.sweep();
        let idle = pool.idle.get_mut(&address)?;
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Puts a connection whose last answer has been read back in the pool.
    fn checkin(&self, address: SocketAddr, conn: Conn<B>) {
        let mut pool = lock(&self.pool);
        pool.sweep();
        let idle = pool.idle.entry(address).or_default();
        if idle.len() < MAX_IDLE_PER_REPLICA {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Drives `conn`, whose answer has ended, until it has written the rest
    /// of its request and is ready for the next (then pools it), closes, or
    /// [`IDLE_TIMEOUT`] passes (a replica that never reads on). Outside a
    /// runtime it is closed.
    fn finish_writing(self: &Arc<Self>, address: SocketAddr, mut conn: Conn<B>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        runtime.spawn(async move {
            if let Ok(true) = tokio::time::timeout(IDLE_TIMEOUT, conn.ready()).await {
                pool.checkin(address, conn);
            }
        });
    }

    /// Idle connections in the pool, for tests.
    pub fn idle_count(&self) -> usize {
        lock(&self.pool).idle.values().map(Vec::len).sum()
    }
}

async fn connect<B: RequestBody>(address: SocketAddr) -> Result<Conn<B>, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| {
            UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })?
        .map_err(UpstreamError::Connect)?;
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    let (sender, driver) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    Ok(Conn {
        sender,
        driver: Some(driver),
    })
}

/// An answer's body, read from the replica as it is polled; at its end the
/// connection returns to the pool. The end is its last frame when the
/// length says so (hyper's server stops polling a body of known length
/// there), `None` otherwise; a body dropped once wholly read (an empty one
/// is never polled) returns it too.
pub struct UpstreamBody<B: RequestBody = Full<Bytes>> {
    incoming: Incoming,
    /// `None` once the connection closed, or was returned.
    conn: Option<Conn<B>>,
    pool: Arc<Upstreams<B>>,
    address: SocketAddr,
}

impl<B: RequestBody> UpstreamBody<B> {
    /// The answer has been read whole: the connection goes back to the pool
    /// once driven past it, if it is ready for the next request. One still
    /// writing this request's body (the replica answered early) would hold
    /// the next one forever: it finishes on a task of its own first
    /// ([`Upstreams::finish_writing`]).
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut conn) = self.conn.take() {
            if conn.drive(cx) {
                if conn.sender.is_ready() {
                    self.pool.checkin(self.address, conn);
                } else {
                    self.pool.finish_writing(self.address, conn);
                }
            }
        }
    }
}

impl<B: RequestBody> Drop for UpstreamBody<B> {
    fn drop(&mut self) {
        if self.conn.is_some() && self.incoming.is_end_stream() {
            self.release(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }
}

impl<B: RequestBody> Body for UpstreamBody<B> {
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
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.release(cx),
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
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A replica speaking just enough HTTP/1.1: answers `ok` to each
    /// `POST /invoke` in origin form with a Host (404 to anything else;
    /// bodiless requests and ones with a Content-Length), closing a
    /// connection after `answers_per_connection` answers without saying so.
    /// Returns its address and how many connections it accepted.
    async fn replica(answers_per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        scripted(move |mut stream, _| async move {
            let mut buffer = Vec::new();
            for _ in 0..answers_per_connection {
                let Some(head) = read_request_head(&mut stream, &mut buffer).await else {
                    return;
                };
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
            }
        })
        .await
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
    async fn a_replica_that_never_accepts_counts_as_refused() {
        // A listener whose accept queue is full: Linux drops further SYNs,
        // so a connect would wait through TCP's retries.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("address");
        let mut queued = Vec::new();
        for _ in 0..4 {
            let attempt =
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(address));
            if let Ok(Ok(stream)) = attempt.await {
                queued.push(stream);
            }
        }
        let upstreams = Arc::new(Upstreams::default());
        let Err(err) = upstreams.send(address, post(address)).await else {
            panic!("a replica that never accepts gave an answer");
        };
        assert!(err.is_connect(), "{err}");
        assert!(err.to_string().contains("no connection within"), "{err}");
        drop((queued, listener));
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
    async fn a_connection_sending_streamed_bodies_is_reused_too() {
        let (address, accepted) = replica(usize::MAX).await;
        let upstreams = Arc::new(Upstreams::<axum::body::Body>::default());
        for _ in 0..5 {
            let request = Request::post("/invoke")
                .header(hyper::header::HOST, address.to_string())
                .header(hyper::header::CONTENT_LENGTH, "7")
                .body(axum::body::Body::from("{\"q\":1}"))
                .expect("request");
            let response = upstreams.send(address, request).await.expect("sent");
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), "ok");
            assert_eq!(upstreams.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// hyper's server stops at the frame that ends a body of known length,
    /// and never polls an empty one: the connection goes back all the same.
    #[tokio::test]
    async fn a_body_read_to_its_length_or_empty_returns_its_connection_when_dropped() {
        let (address, accepted) = replica(usize::MAX).await;
        let upstreams = Arc::new(Upstreams::default());
        let response = upstreams.send(address, post(address)).await.expect("sent");
        let mut body = response.into_body();
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "ok");
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(upstreams.idle_count(), 1);

        let empty = Request::get("/nothing")
            .header(hyper::header::HOST, address.to_string())
            .body(Full::default())
            .expect("request");
        let response = upstreams.send(address, empty).await.expect("sent");
        assert_eq!(response.status(), 404);
        drop(response);
        assert_eq!(upstreams.idle_count(), 1);
        assert_eq!(answer(&upstreams, address).await, "ok");
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

    /// Reads one request (head and Content-Length body) from `stream`
    /// through `buf`; its head in lower case, `None` at EOF.
    async fn read_request_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("length"));
                while buf.len() < end + 4 + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..end + 4 + length);
                return Some(head);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether another request arrived (see [`read_request_head`]).
    async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        read_request_head(stream, buf).await.is_some()
    }

    /// Answers `ok` to every request that comes on `stream` until it closes.
    async fn answer_ok_to_each(stream: &mut TcpStream) {
        let mut buf = Vec::new();
        while read_request(stream, &mut buf).await {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("replica write");
        }
    }

    /// A replica running `script(stream, connection_number)` on each connection.
    async fn scripted<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(stream, n));
            }
        });
        (address, accepted)
    }

    async fn try_answer(upstreams: &Arc<Upstreams>, address: SocketAddr) -> Result<Bytes, String> {
        let response = upstreams
            .send(address, post(address))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes())
    }

    /// The answer's body, failing the test if it takes over `seconds`.
    async fn answer_within(upstreams: &Arc<Upstreams>, address: SocketAddr, seconds: u64) -> Bytes {
        tokio::time::timeout(Duration::from_secs(seconds), try_answer(upstreams, address))
            .await
            .expect("hung")
            .expect("answer")
    }

    /// Head now, body later in chunks: only UpstreamBody::poll_frame drives the conn.
    #[tokio::test]
    async fn a_slow_chunked_body_is_read_and_the_connection_reused() {
        let (address, accepted) = scripted(|mut s, _| async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf).await {
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await
                    .expect("replica write");
                tokio::time::sleep(Duration::from_millis(30)).await;
                s.write_all(b"2\r\nok\r\n").await.expect("replica write");
                tokio::time::sleep(Duration::from_millis(30)).await;
                s.write_all(b"0\r\n\r\n").await.expect("replica write");
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        for _ in 0..3 {
            let body = answer_within(&upstreams, address, 2).await;
            assert_eq!(body, "ok");
            assert_eq!(upstreams.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// `Connection: close` answers are not pooled, even if the replica leaves
    /// the socket open; body sent later.
    #[tokio::test]
    async fn a_connection_close_answer_is_not_pooled() {
        let (address, accepted) = scripted(|mut s, _| async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await {
                s.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n")
                    .await
                    .expect("replica write");
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.write_all(b"ok").await.expect("replica write");
                // keep it open
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        for _ in 0..2 {
            let body = answer_within(&upstreams, address, 2).await;
            assert_eq!(body, "ok");
            assert_eq!(upstreams.idle_count(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Same in one write (the driver finishes while the head is awaited).
    #[tokio::test]
    async fn a_connection_close_answer_in_one_write() {
        let (address, _) = scripted(|mut s, _| async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await {
                s.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .expect("replica write");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        for _ in 0..3 {
            assert_eq!(try_answer(&upstreams, address).await.expect("answer"), "ok");
            assert_eq!(upstreams.idle_count(), 0);
        }
    }

    #[tokio::test]
    async fn close_delimited_bodies_are_read_and_not_pooled() {
        for head in [
            &b"HTTP/1.0 200 OK\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
        ] {
            let (address, _) = scripted(move |mut s, _| async move {
                let mut buf = Vec::new();
                if read_request(&mut s, &mut buf).await {
                    s.write_all(head).await.expect("replica write");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    s.write_all(b"ok").await.expect("replica write");
                }
            })
            .await;
            let upstreams = Arc::new(Upstreams::default());
            for _ in 0..2 {
                let body = answer_within(&upstreams, address, 2).await;
                assert_eq!(body, "ok");
                assert_eq!(upstreams.idle_count(), 0);
            }
        }
    }

    /// The invocation's timeout runs out while the replica thinks: the replica
    /// sees the connection close, and nothing is pooled.
    #[tokio::test]
    async fn a_request_dropped_while_waiting_closes_its_connection() {
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let (address, _) = scripted(move |mut s, _| {
            let tx = tx.clone();
            async move {
                let mut buf = Vec::new();
                assert!(read_request(&mut s, &mut buf).await);
                let mut b = [0u8; 16];
                let eof = matches!(
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
                    Ok(Ok(0) | Err(_))
                );
                let _ = tx.lock().expect("lock").take().expect("once").send(eof);
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            upstreams.send(address, post(address)),
        )
        .await;
        assert!(r.is_err());
        assert!(
            rx.await.expect("replica report"),
            "replica did not see the close"
        );
        assert_eq!(upstreams.idle_count(), 0);
    }

    /// A body dropped mid-way closes its connection.
    #[tokio::test]
    async fn a_body_dropped_midway_closes_its_connection() {
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let (address, _) = scripted(move |mut s, _| {
            let tx = tx.clone();
            async move {
                let mut buf = Vec::new();
                assert!(read_request(&mut s, &mut buf).await);
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n")
                    .await
                    .expect("replica write");
                let mut b = [0u8; 16];
                let eof = matches!(
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
                    Ok(Ok(0) | Err(_))
                );
                let _ = tx.lock().expect("lock").take().expect("once").send(eof);
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        let response = upstreams
            .send(address, post(address))
            .await
            .expect("replica write");
        let mut body = response.into_body();
        let first = body.frame().await.expect("a frame").expect("a frame");
        assert_eq!(first.into_data().expect("data"), "ok");
        drop(body);
        assert!(
            rx.await.expect("replica report"),
            "replica did not see the close"
        );
        assert_eq!(upstreams.idle_count(), 0);
    }

    /// A pooled connection that the replica closes after reading the request
    /// (it crashed): an error, and the POST is not sent again.
    #[tokio::test]
    async fn a_request_the_replica_read_is_never_sent_twice() {
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let (address, _) = scripted(move |mut s, _| {
            let seen = seen.clone();
            async move {
                let mut buf = Vec::new();
                while read_request(&mut s, &mut buf).await {
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .expect("replica write");
                    } else {
                        return; // read it, then died
                    }
                }
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        assert_eq!(try_answer(&upstreams, address).await.expect("answer"), "ok");
        assert_eq!(upstreams.idle_count(), 1);
        let err = upstreams
            .send(address, post(address))
            .await
            .err()
            .expect("an error");
        assert!(!err.is_connect(), "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    /// Answers with empty bodies (204, content-length: 0) keep the connection.
    #[tokio::test]
    async fn empty_answers_are_pooled() {
        let (address, accepted) = scripted(|mut s, _| async move {
            let mut buf = Vec::new();
            let mut n = 0u32;
            while read_request(&mut s, &mut buf).await {
                let a: &[u8] = if n.is_multiple_of(2) {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                } else {
                    b"HTTP/1.1 500 E\r\ncontent-length: 0\r\n\r\n"
                };
                n += 1;
                s.write_all(a).await.expect("replica write");
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        for _ in 0..4 {
            assert_eq!(try_answer(&upstreams, address).await.expect("answer"), "");
            assert_eq!(upstreams.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// The replica answers (keep-alive) before reading a big request body, and
    /// never reads the rest. Is the connection pooled mid-request? Does the
    /// next request on it hang?
    #[tokio::test]
    async fn an_early_answer_to_a_big_request() {
        let (address, accepted) = scripted(|mut s, n| async move {
            let mut buf = vec![0u8; 4096];
            if n == 0 {
                let _ = s.read(&mut buf).await;
                s.write_all(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .expect("replica write");
                tokio::time::sleep(Duration::from_secs(5)).await; // never reads on
            } else {
                answer_ok_to_each(&mut s).await;
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        let big = Request::post("/invoke")
            .header(hyper::header::HOST, address.to_string())
            .body(Full::new(Bytes::from(vec![b'x'; 32 << 20])))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(2), upstreams.send(address, big))
            .await
            .expect("hung on the head")
            .expect("sent");
        assert_eq!(response.status(), 413);
        let _ = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
            .await
            .expect("hung on the body");
        let next =
            tokio::time::timeout(Duration::from_secs(2), try_answer(&upstreams, address)).await;
        assert_eq!(
            next.expect("the next request hung on a connection pooled mid-request"),
            Ok(Bytes::from_static(b"ok"))
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A replica that answers first and reads the request's body after (a
    /// webhook's 202): the body still arrives whole. (hyper does not reuse
    /// a connection answered early, so the next request makes its own.)
    #[tokio::test]
    async fn an_answer_before_the_body_is_read_still_gets_the_whole_body() {
        const SIZE: usize = 8 << 20;
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        let (address, accepted) = scripted(move |mut s, _| {
            let seen = seen.clone();
            async move {
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.expect("head");
                let head_end = buf[..n]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("the head in the first read")
                    + 4;
                s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .expect("replica write");
                let mut total = n - head_end;
                while total < SIZE {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => total += n,
                    }
                }
                seen.store(total, Ordering::SeqCst);
                answer_ok_to_each(&mut s).await;
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        let big = Request::post("/invoke")
            .header(hyper::header::HOST, address.to_string())
            .body(Full::new(Bytes::from(vec![b'x'; SIZE])))
            .expect("request");
        let response = upstreams.send(address, big).await.expect("sent");
        assert_eq!(response.status(), 202);
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "ok");
        let whole = async {
            while received.load(Ordering::SeqCst) < SIZE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), whole)
            .await
            .expect("the body was cut off after the answer");
        assert_eq!(received.load(Ordering::SeqCst), SIZE);
        assert_eq!(answer_within(&upstreams, address, 2).await, "ok");
        assert!(accepted.load(Ordering::SeqCst) <= 2);
    }

    /// With the task's coop budget almost spent, a Connection: close answer
    /// whose driver finishes in the poll the head arrives in.
    #[tokio::test]
    async fn a_close_answer_with_little_coop_budget_left() {
        let (address, _) = scripted(|mut s, _| async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await {
                s.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .expect("replica write");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
        .await;
        let mut failures = Vec::new();
        for left in 0..8usize {
            let upstreams = Arc::new(Upstreams::default());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            for _ in 0..100_000 {
                tx.send(()).expect("send");
            }
            let mut send = std::pin::pin!(upstreams.send(address, post(address)));
            let result = poll_fn(|cx| {
                // Spend the budget down to `left` units.
                for _ in 0..(128 - left) {
                    if rx.poll_recv(cx).is_pending() {
                        break;
                    }
                }
                send.as_mut().poll(cx)
            })
            .await;
            if let Err(err) = result {
                failures.push(format!("left={left}: {err}"));
            }
        }
        assert!(failures.is_empty(), "{failures:?}");
    }

    /// Many tasks on a multi-thread runtime share the pool: connections are
    /// checked in by one task and driven by another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_move_between_tasks_and_threads() {
        let (address, accepted) = scripted(|mut s, _| async move {
            let mut buf = Vec::new();
            let mut i = 0u32;
            while read_request(&mut s, &mut buf).await {
                i += 1;
                if i.is_multiple_of(3) {
                    s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await
                        .expect("replica write");
                    tokio::task::yield_now().await;
                    s.write_all(b"2\r\nok\r\n0\r\n\r\n")
                        .await
                        .expect("replica write");
                } else {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .expect("replica write");
                }
            }
        })
        .await;
        let upstreams = Arc::new(Upstreams::default());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let body = tokio::time::timeout(
                            Duration::from_secs(5),
                            try_answer(&upstreams, address),
                        )
                        .await
                        .expect("hung")
                        .expect("answer");
                        assert_eq!(body, "ok");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("replica write");
        }
        assert!(
            accepted.load(Ordering::SeqCst) <= 16,
            "{}",
            accepted.load(Ordering::SeqCst)
        );
        assert_eq!(upstreams.idle_count(), accepted.load(Ordering::SeqCst));
    }
}
