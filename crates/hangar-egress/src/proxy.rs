//! The listener and what it does with each client connection: plain HTTP
//! forwarded, `CONNECT` tunnelled or terminated (see the crate docs for
//! which and why).
//!
//! Every connection, tunnel and upstream connection driver is a task of one
//! [`TaskTracker`], and all of them stop when [`EgressProxy::serve`]'s
//! shutdown fires: a replica's open connections are cut, not drained, since
//! egress has no request boundary the proxy could wait for (a tunnel may
//! stay open for hours).
//!
//! Input from clients is bounded: a request head over [`MAX_HEAD`] is
//! answered 431 by hyper, a head or ClientHello slower than
//! [`ProxyConfig::client_timeout`] closes the connection, and a ClientHello
//! over `hello::MAX_HELLO` is refused.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hello::{self, HelloError};
use crate::policy::{is_dns_name, normalize_host};
use crate::pool::{self, Pool};
use crate::upstream::{self, ConnectError, Counted, Counts, Network};
use crate::{
    crypto_provider, CertificateAuthority, ClientPolicy, DenyReason, EgressEvent, Injection,
    Policies, ProxyConfig,
};

/// The largest request head a client may send (hyper's read buffer).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

type Body = BoxBody<Bytes, hyper::Error>;

/// The egress proxy, bound and ready to serve.
pub struct EgressProxy {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

/// What every connection of the proxy reads.
struct Shared {
    ca: Arc<CertificateAuthority>,
    upstream_tls: TlsConnector,
    events: mpsc::Sender<EgressEvent>,
    resolve: std::collections::HashMap<String, SocketAddr>,
    forbidden: Vec<Network>,
    client_timeout: Duration,
    connect_timeout: Duration,
    max_connections: usize,
    policies: Arc<dyn Policies>,
    pool: Arc<Pool>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl EgressProxy {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        config: ProxyConfig,
        policies: Arc<dyn Policies>,
    ) -> io::Result<Self> {
        let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(config.upstream_roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(EgressProxy {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                ca: config.ca,
                upstream_tls: TlsConnector::from(Arc::new(tls)),
                events: config.events,
                resolve: config
                    .resolve
                    .into_iter()
                    .map(|(name, addr)| (normalize_host(&name), addr))
                    .collect(),
                forbidden: config.forbidden,
                client_timeout: config.client_timeout,
                connect_timeout: config.connect_timeout,
                max_connections: config.max_connections.max(1),
                policies,
                pool: Arc::default(),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// The address it listens on (the port chosen when bound to port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`, then cuts every connection and returns once
    /// their tasks have ended.
    pub async fn serve(self, shutdown: CancellationToken) {
        let shared = self.shared;
        let permits = Arc::new(Semaphore::new(shared.max_connections));
        let sweeper = shared.clone();
        shared.tasks.spawn(async move {
            let mut sweeps = tokio::time::interval(pool::IDLE_TIMEOUT / 2);
            loop {
                tokio::select! {
                    _ = sweeps.tick() => sweeper.pool.sweep(),
                    () = sweeper.stop.cancelled() => break,
                }
            }
        });
        loop {
            // At the limit, connections wait in the listen backlog.
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, mostly: let some close.
                        tracing::warn!(%error, "egress proxy: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let connection = shared.clone();
            shared
                .tasks
                .spawn(connection.serve_client(stream, peer, Arc::new(permit)));
        }
        shared.stop.cancel();
        shared.pool.clear();
        shared.tasks.close();
        shared.tasks.wait().await;
    }
}

/// What an upstream connection is reported as when it ends.
struct Done {
    replica: String,
    host: String,
    counts: Arc<Counts>,
}

/// A host and port a client asked for.
#[derive(Clone, Debug)]
struct Target {
    /// Normalized (see [`normalize_host`]).
    host: String,
    port: u16,
}

impl Target {
    /// From `host[:port]`; `None` for a host that is no DNS name or IP.
    fn parse(authority: &Authority, default_port: Option<u16>) -> Option<Target> {
        let host = normalize_host(authority.host());
        let valid = host.parse::<IpAddr>().is_ok() || is_dns_name(&host);
        let port = authority.port_u16().or(default_port)?;
        (valid && port != 0).then_some(Target { host, port })
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// What goes in the `Host` header.
    fn authority(&self, default_port: u16) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Why a request gets no upstream answer.
enum Refusal {
    Denied(String),
    BadRequest(&'static str),
    Unreachable(String),
}

impl Refusal {
    fn response(self) -> Response<Body> {
        match self {
            Refusal::Denied(host) => text(
                StatusCode::FORBIDDEN,
                format!("egress to {host} denied by policy\n"),
            ),
            Refusal::BadRequest(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            Refusal::Unreachable(host) => text(
                StatusCode::BAD_GATEWAY,
                format!("egress to {host} failed: the host could not be reached\n"),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
}

fn http1_server(timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD);
    builder
}

impl Shared {
    /// Serves one client connection. `permit` is its place among
    /// [`ProxyConfig::max_connections`], held as long as the connection or
    /// a tunnel it opened lives.
    async fn serve_client(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Arc<OwnedSemaphorePermit>,
    ) {
        let client = peer.ip().to_canonical();
        let _ = stream.set_nodelay(true);
        let shared = self.clone();
        let service = service_fn(move |request| {
            let (shared, permit) = (shared.clone(), permit.clone());
            async move { Ok::<_, Infallible>(shared.handle(client, request, permit).await) }
        });
        let connection = http1_server(self.client_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::select! {
            _ = connection => {}
            () = self.stop.cancelled() => {}
        }
    }

    async fn handle(
        self: Arc<Self>,
        client: IpAddr,
        request: Request<Incoming>,
        permit: Arc<OwnedSemaphorePermit>,
    ) -> Response<Body> {
        let result = if request.method() == Method::CONNECT {
            self.connect(client, request, permit).await
        } else {
            self.forward_plain(client, request).await
        };
        result.unwrap_or_else(Refusal::response)
    }

    /// The client's policy, when it may reach `target`; a denial reported
    /// when not.
    async fn authorize(&self, client: IpAddr, target: &Target) -> Result<ClientPolicy, Refusal> {
        let policy = self.policy(client, target).await?;
        self.check(client, &policy, target).await?;
        Ok(policy)
    }

    /// The client's policy; an unknown client denied.
    async fn policy(&self, client: IpAddr, target: &Target) -> Result<ClientPolicy, Refusal> {
        match self.policies.lookup(client) {
            Some(policy) => Ok(policy),
            None => Err(self
                .deny(client, None, target, DenyReason::UnknownClient)
                .await),
        }
    }

    /// Whether `policy` lets its client reach `target`; a denial reported
    /// when not.
    async fn check(
        &self,
        client: IpAddr,
        policy: &ClientPolicy,
        target: &Target,
    ) -> Result<(), Refusal> {
        if policy.egress.allows(&target.host, target.port) {
            return Ok(());
        }
        Err(self
            .deny(
                client,
                Some(policy.replica.clone()),
                target,
                DenyReason::NotAllowed,
            )
            .await)
    }

    async fn deny(
        &self,
        client: IpAddr,
        replica: Option<String>,
        target: &Target,
        reason: DenyReason,
    ) -> Refusal {
        tracing::info!(
            %client,
            replica = replica.as_deref().unwrap_or("-"),
            host = %target.host,
            port = target.port,
            %reason,
            "egress denied",
        );
        self.report(EgressEvent::Denied {
            client,
            replica,
            host: target.host.clone(),
            port: target.port,
            reason,
        })
        .await;
        Refusal::Denied(target.host.clone())
    }

    async fn done(&self, replica: String, host: String, counts: &Counts) {
        let (bytes_up, bytes_down) = counts.get();
        self.report(EgressEvent::Done {
            replica,
            host,
            bytes_up,
            bytes_down,
        })
        .await;
    }

    /// Sends `event`, waiting while the channel is full, except once the
    /// proxy is stopping: then an event that does not fit is dropped, so
    /// that a reader that stopped reading cannot hold up the shutdown.
    async fn report(&self, event: EgressEvent) {
        tokio::select! {
            biased;
            _ = self.events.send(event.clone()) => {}
            () = self.stop.cancelled() => {
                let _ = self.events.try_send(event);
            }
        }
    }

    /// A TCP connection to `target`, counted into `counts`.
    async fn open(
        &self,
        client: IpAddr,
        policy: &ClientPolicy,
        target: &Target,
        counts: &Arc<Counts>,
    ) -> Result<Counted<TcpStream>, Refusal> {
        match upstream::connect(
            &target.host,
            target.port,
            &self.resolve,
            &self.forbidden,
            self.connect_timeout,
        )
        .await
        {
            Ok(stream) => Ok(Counted::new(stream, counts.clone())),
            Err(ConnectError::Forbidden) => Err(self
                .deny(
                    client,
                    Some(policy.replica.clone()),
                    target,
                    DenyReason::ForbiddenAddress,
                )
                .await),
            Err(ConnectError::Unreachable(error)) => {
                tracing::info!(host = %target.host, port = target.port, %error, "egress upstream unreachable");
                Err(Refusal::Unreachable(target.host.clone()))
            }
        }
    }

    /// Runs an upstream HTTP/1 connection as a task of the proxy, so it
    /// stops with it; `done` is reported when it ends.
    fn drive<F>(self: &Arc<Self>, connection: F, done: Option<Done>)
    where
        F: std::future::Future + Send + 'static,
    {
        let shared = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = shared.stop.cancelled() => {}
            }
            if let Some(done) = done {
                shared.done(done.replica, done.host, &done.counts).await;
            }
        });
    }

    /// `GET http://host/path` and the like: checked, injected, forwarded on
    /// a connection of the replica's to that host, kept for its next
    /// request (see [`pool`]).
    ///
    /// A request that gets injected headers goes upstream over TLS (to 443
    /// for port 80, else to the port the URL names), verified like a
    /// terminated `CONNECT`, and the policy is checked on that port:
    /// a secret never crosses the network in clear, and an agent can call
    /// `http://api.example/…` without trusting any CA. Other requests go as
    /// they came, plain, to port 80 or the URL's.
    async fn forward_plain(
        self: Arc<Self>,
        client: IpAddr,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        if request.uri().scheme() != Some(&Scheme::HTTP) {
            return Err(Refusal::BadRequest(
                "this is an egress proxy: send http:// URLs in absolute form, or CONNECT",
            ));
        }
        let mut target = request
            .uri()
            .authority()
            .and_then(|a| Target::parse(a, Some(80)))
            .ok_or(Refusal::BadRequest("the request names no valid host"))?;
        let policy = self.policy(client, &target).await?;
        let injection = policy.injection_for(&target.host).cloned();
        let tls = injection.is_some();
        if tls && target.port == 80 {
            target.port = 443;
        }
        let default_port = if tls { 443 } else { 80 };
        self.check(client, &policy, &target).await?;
        let key = pool::Key {
            replica: policy.replica.clone(),
            host: target.host.clone(),
            port: target.port,
            tls,
        };
        let outbound = outbound(request, &target, default_port, injection.as_ref());
        let (sender, response) = self
            .send_plain(client, &policy, &target, &key, outbound)
            .await?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = pool::Returning::new(body, self.pool.clone(), key, sender);
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// Sends a plain HTTP request on a kept connection of its replica to
    /// its host, or on a new one.
    async fn send_plain(
        self: &Arc<Self>,
        client: IpAddr,
        policy: &ClientPolicy,
        target: &Target,
        key: &pool::Key,
        mut request: Request<Incoming>,
    ) -> Result<(SendRequest<Incoming>, Response<Incoming>), Refusal> {
        let failed = |error: &dyn std::fmt::Display| {
            tracing::info!(host = %target.host, %error, "egress upstream failed");
            Refusal::Unreachable(target.host.clone())
        };
        while let Some(mut sender) = self.pool.checkout(key) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((sender, response)),
                // Closed by the upstream before the request went out: it
                // comes back, and goes on another connection.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(failed(error.error())),
                },
            }
        }
        let counts = Arc::new(Counts::default());
        let stream = self.open(client, policy, target, &counts).await?;
        let done = Done {
            replica: policy.replica.clone(),
            host: target.host.clone(),
            counts,
        };
        let mut sender = if key.tls {
            self.tls_session(target, stream, Some(done)).await?
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| failed(&e))?;
            self.drive(connection, Some(done));
            sender
        };
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        Ok((sender, response))
    }

    /// `CONNECT host:port`: checked and connected upstream before it is
    /// answered (so a refusal or an unreachable host is a status, not a
    /// closed tunnel), then tunnelled or terminated.
    async fn connect(
        self: Arc<Self>,
        client: IpAddr,
        request: Request<Incoming>,
        permit: Arc<OwnedSemaphorePermit>,
    ) -> Result<Response<Body>, Refusal> {
        let target = request
            .uri()
            .authority()
            .and_then(|a| Target::parse(a, None))
            .ok_or(Refusal::BadRequest("CONNECT needs host:port"))?;
        let policy = self.authorize(client, &target).await?;
        let counts = Arc::new(Counts::default());
        let stream = self.open(client, &policy, &target, &counts).await?;
        let upgrade = hyper::upgrade::on(request);
        let shared = self.clone();
        if policy.injection_for(&target.host).is_some() {
            // The upstream connection is reported at the tunnel's end, or
            // here when its TLS fails.
            let sender = match self.tls_session(&target, stream, None).await {
                Ok(sender) => sender,
                Err(refusal) => {
                    self.done(policy.replica.clone(), target.host.clone(), &counts)
                        .await;
                    return Err(refusal);
                }
            };
            self.tasks.spawn(async move {
                let _permit = permit;
                if let Ok(upgraded) = upgrade.await {
                    let session = Arc::new(Terminated {
                        shared: shared.clone(),
                        client,
                        replica: policy.replica.clone(),
                        target: target.clone(),
                        counts: counts.clone(),
                        sender: tokio::sync::Mutex::new(Some(sender)),
                    });
                    session.serve(TokioIo::new(upgraded)).await;
                }
                shared.done(policy.replica, target.host, &counts).await;
            });
        } else {
            self.tasks.spawn(async move {
                let _permit = permit;
                if let Ok(upgraded) = upgrade.await {
                    tokio::select! {
                        () = shared.tunnel(client, &policy, &target, TokioIo::new(upgraded), stream) => {}
                        () = shared.stop.cancelled() => {}
                    }
                }
                shared.done(policy.replica, target.host, &counts).await;
            });
        }
        Ok(Response::new(empty()))
    }

    /// A byte tunnel, opened once the ClientHello names the `CONNECT` host.
    async fn tunnel(
        &self,
        client: IpAddr,
        policy: &ClientPolicy,
        target: &Target,
        mut downstream: TokioIo<hyper::upgrade::Upgraded>,
        mut upstream: Counted<TcpStream>,
    ) {
        let mut hello = Vec::new();
        let verdict = match hello::read(&mut downstream, &mut hello, self.client_timeout).await {
            Ok(server_name) => check_server_name(server_name.as_deref(), target),
            Err(HelloError::NotTls) => Err(DenyReason::NotTls),
            Err(HelloError::Incomplete) => return,
        };
        if let Err(reason) = verdict {
            self.deny(client, Some(policy.replica.clone()), target, reason)
                .await;
            return;
        }
        if upstream.write_all(&hello).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    }

    /// TLS to the upstream, verified against the upstream roots, and an
    /// HTTP/1 connection over it.
    async fn tls_session(
        self: &Arc<Self>,
        target: &Target,
        stream: Counted<TcpStream>,
        done: Option<Done>,
    ) -> Result<SendRequest<Incoming>, Refusal> {
        let unreachable = |error: &dyn std::fmt::Display| {
            tracing::info!(host = %target.host, %error, "egress upstream TLS failed");
            Refusal::Unreachable(target.host.clone())
        };
        let handshake = async {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| unreachable(&e))?;
            let tls = tokio::time::timeout(
                self.connect_timeout,
                self.upstream_tls.connect(name, stream),
            )
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
            hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(&e))
        };
        match handshake.await {
            Ok((sender, connection)) => {
                self.drive(connection, done);
                Ok(sender)
            }
            Err(refusal) => {
                // The connection was made: what went over it is reported.
                if let Some(done) = done {
                    self.done(done.replica, done.host, &done.counts).await;
                }
                Err(refusal)
            }
        }
    }
}

/// `Ok` when a ClientHello's server name fits the `CONNECT` host: the same
/// name, or none for a `CONNECT` to an IP address (SNI carries no IPs).
fn check_server_name(server_name: Option<&str>, target: &Target) -> Result<(), DenyReason> {
    match server_name {
        Some(name) if normalize_host(name) == target.host => Ok(()),
        Some(name) => Err(DenyReason::ServerNameMismatch {
            server_name: normalize_host(name),
        }),
        None if target.is_ip() => Ok(()),
        None => Err(DenyReason::NoServerName),
    }
}

/// A `CONNECT` the proxy terminates: the client's TLS ends here, its
/// requests go out over the proxy's own TLS to the same host.
struct Terminated {
    shared: Arc<Shared>,
    client: IpAddr,
    replica: String,
    target: Target,
    counts: Arc<Counts>,
    /// The upstream connection; replaced when the upstream closed it. One
    /// request at a time is all HTTP/1 has on the client side anyway.
    sender: tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
}

impl Terminated {
    async fn serve(self: Arc<Self>, downstream: TokioIo<hyper::upgrade::Upgraded>) {
        let shared = self.shared.clone();
        let timeout = shared.client_timeout;
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), downstream);
        let start = tokio::select! {
            started = tokio::time::timeout(timeout, start) => started,
            () = shared.stop.cancelled() => return,
        };
        let start = match start {
            Ok(Ok(start)) => start,
            Ok(Err(error)) if error.kind() == io::ErrorKind::InvalidData => {
                self.deny(DenyReason::NotTls).await;
                return;
            }
            _ => return,
        };
        if let Err(reason) = check_server_name(start.client_hello().server_name(), &self.target) {
            self.deny(reason).await;
            return;
        }
        let config = match shared.ca.server_config(&self.target.host) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(host = %self.target.host, %error, "egress proxy: no leaf certificate");
                return;
            }
        };
        let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
            Ok(Ok(tls)) => tls,
            _ => return,
        };
        let session = self.clone();
        let service = service_fn(move |request| {
            let session = session.clone();
            async move { Ok::<_, Infallible>(session.forward(request).await) }
        });
        let connection = http1_server(timeout).serve_connection(TokioIo::new(tls), service);
        tokio::select! {
            _ = connection => {}
            () = shared.stop.cancelled() => {}
        }
    }

    async fn deny(&self, reason: DenyReason) -> Refusal {
        self.shared
            .deny(
                self.client,
                Some(self.replica.clone()),
                &self.target,
                reason,
            )
            .await
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        match self.try_forward(request).await {
            Ok(response) => response,
            Err(refusal) => refusal.response(),
        }
    }

    async fn try_forward(&self, request: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        let mismatch = match requested_host(&request) {
            None => None,
            Some(Ok(requested))
                if requested.host == self.target.host && requested.port == self.target.port =>
            {
                None
            }
            Some(Ok(requested)) => Some(requested.authority(443)),
            Some(Err(unparsable)) => Some(unparsable.chars().take(256).collect()),
        };
        if let Some(requested) = mismatch {
            return Err(self.deny(DenyReason::HostMismatch { requested }).await);
        }
        // The policy may have changed since the CONNECT: asked again.
        let policy = self.shared.authorize(self.client, &self.target).await?;
        let outbound = outbound(
            request,
            &self.target,
            443,
            policy.injection_for(&self.target.host),
        );
        let mut sender = self.sender.lock().await;
        let ready = match sender.as_mut() {
            Some(current) => current.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            let stream = self
                .shared
                .open(self.client, &policy, &self.target, &self.counts)
                .await?;
            let mut fresh = self.shared.tls_session(&self.target, stream, None).await?;
            fresh
                .ready()
                .await
                .map_err(|_| Refusal::Unreachable(self.target.host.clone()))?;
            *sender = Some(fresh);
        }
        let Some(current) = sender.as_mut() else {
            return Err(Refusal::Unreachable(self.target.host.clone()));
        };
        let response = current.send_request(outbound).await.map_err(|error| {
            tracing::info!(host = %self.target.host, %error, "egress upstream failed");
            Refusal::Unreachable(self.target.host.clone())
        })?;
        Ok(inbound(response))
    }
}

/// The host a request inside a terminated tunnel names (its absolute URI's
/// or its `Host` header's): `None` when it names none (HTTP/1.0), `Err`
/// with what it sent when that is no host.
fn requested_host(request: &Request<Incoming>) -> Option<Result<Target, String>> {
    let authority = match request.uri().authority() {
        Some(authority) => Ok(authority.clone()),
        None => {
            let host = request.headers().get(header::HOST)?;
            Authority::try_from(host.as_bytes())
                .map_err(|_| String::from_utf8_lossy(host.as_bytes()).into_owned())
        }
    };
    Some(authority.and_then(|authority| {
        Target::parse(&authority, Some(443)).ok_or_else(|| authority.to_string())
    }))
}

/// The request as it goes upstream: origin-form, hop-by-hop headers gone,
/// `Host` the checked host, the injected headers in place of any the
/// client sent under their names.
fn outbound(
    request: Request<Incoming>,
    target: &Target,
    default_port: u16,
    injection: Option<&Injection>,
) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(host) = HeaderValue::try_from(target.authority(default_port)) {
        parts.headers.insert(header::HOST, host);
    }
    if let Some(injection) = injection {
        for (name, _) in &injection.headers {
            parts.headers.remove(name);
        }
        for (name, value) in &injection.headers {
            parts.headers.append(name.clone(), value.clone());
        }
    }
    Request::from_parts(parts, body)
}

fn inbound(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), and
/// those the client addressed to the proxy.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn server_names_must_be_the_connect_host() {
        let t = target("api.example.com", 443);
        assert_eq!(check_server_name(Some("API.example.com."), &t), Ok(()));
        assert!(matches!(
            check_server_name(Some("other.example.com"), &t),
            Err(DenyReason::ServerNameMismatch { .. })
        ));
        assert_eq!(check_server_name(None, &t), Err(DenyReason::NoServerName));
        assert_eq!(check_server_name(None, &target("192.0.2.1", 443)), Ok(()));
    }

    #[test]
    fn targets_parse_and_print() {
        let a = Authority::from_static("API.Example.com:8443");
        let t = Target::parse(&a, None).expect("target");
        assert_eq!((t.host.as_str(), t.port), ("api.example.com", 8443));
        assert_eq!(t.authority(443), "api.example.com:8443");
        assert!(Target::parse(&Authority::from_static("example.com"), None).is_none());
        let v6 = Target::parse(&Authority::from_static("[2001:db8::1]:443"), None).expect("v6");
        assert_eq!(v6.authority(443), "[2001:db8::1]");
        assert!(Target::parse(&Authority::from_static("a_b!c:80"), None).is_none());
    }

    #[test]
    fn hop_by_hop_headers_go_and_those_named_in_connection_too() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }
}
