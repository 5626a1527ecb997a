//! The egress proxy over real sockets: upstream HTTP and HTTPS servers (the
//! HTTPS one with its own test CA), a real client (reqwest through the proxy,
//! or raw bytes where reqwest would not misbehave), and the proxy between.
//!
//! Clients are told apart by source address: every `127.x.y.z` is loopback,
//! so each test client binds its own (127.0.0.2 open, .3 an allow-list,
//! .4 none, .9 unknown). Test names (`plain.test`, …) reach the upstreams
//! through the proxy's name mapping.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hangar_egress::{
    CertificateAuthority, ClientPolicy, DenyReason, Egress, EgressEvent, EgressProxy, Injection,
    Policies, ProxyConfig,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const OPEN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const ALLOW: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const NONE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
const UNKNOWN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

/// Names the upstream HTTPS server has a certificate for.
const TLS_NAMES: [&str; 3] = ["secure.test", "tunnel.test", "other.test"];

/// An upstream that answers with what it received: each header as
/// `name: value` on a line, a blank line, then the request body. At
/// `/chunked` the same in two chunks of unknown length; at `/empty`,
/// nothing.
async fn echo(request: Request<Incoming>) -> Result<Response<Chunks>, Infallible> {
    let (parts, body) = request.into_parts();
    let mut text = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    text.push('\n');
    let mut out = text.into_bytes();
    if let Ok(body) = body.collect().await {
        out.extend_from_slice(&body.to_bytes());
    }
    let out = Bytes::from(out);
    let body = match parts.uri.path() {
        "/empty" => Chunks::sized(Bytes::new()),
        "/chunked" => {
            let half = out.len() / 2;
            Chunks(VecDeque::from([out.slice(..half), out.slice(half..)]), None)
        }
        _ => Chunks::sized(out),
    };
    Ok(Response::new(body))
}

/// A response body in frames; of unknown length (sent chunked) unless
/// `sized`.
struct Chunks(VecDeque<Bytes>, Option<u64>);

impl Chunks {
    fn sized(bytes: Bytes) -> Chunks {
        let len = bytes.len() as u64;
        Chunks(VecDeque::from([bytes]), Some(len))
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.1 {
            Some(len) => hyper::body::SizeHint::with_exact(len),
            None => hyper::body::SizeHint::default(),
        }
    }
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service_fn(echo))
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service_fn(echo))
                        .await;
                }
            }
        });
    }
}

struct Upstreams {
    http: SocketAddr,
    https: SocketAddr,
    /// Connections each upstream accepted.
    http_accepted: Arc<AtomicUsize>,
    https_accepted: Arc<AtomicUsize>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
}

async fn upstreams() -> Upstreams {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(TLS_NAMES.map(str::to_owned).to_vec())
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .expect("config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let https = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstreams = Upstreams {
        http: http.local_addr().expect("addr"),
        https: https.local_addr().expect("addr"),
        http_accepted: Arc::default(),
        https_accepted: Arc::default(),
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        leaf_der: leaf.der().clone(),
    };
    tokio::spawn(serve_http(http, None, upstreams.http_accepted.clone()));
    tokio::spawn(serve_http(
        https,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        upstreams.https_accepted.clone(),
    ));
    upstreams
}

fn header(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    )
}

fn allow(rules: &[&str]) -> Egress {
    Egress::Allow(rules.iter().map(|r| r.parse().expect("rule")).collect())
}

fn policies() -> HashMap<IpAddr, ClientPolicy> {
    let inject = vec![Injection {
        host: "Secure.Test".into(),
        headers: vec![
            header("authorization", "Bearer injected-tls"),
            header("x-api-key", "k1"),
            header("x-api-key", "k2"),
        ],
    }];
    HashMap::from([
        (
            OPEN,
            ClientPolicy {
                replica: "r-open".into(),
                egress: Egress::Open,
                inject,
            },
        ),
        (
            ALLOW,
            ClientPolicy {
                replica: "r-allow".into(),
                egress: allow(&[
                    "PLAIN.test",
                    "*.wild.test",
                    "ported.test:443",
                    "tunnel.test:443",
                ]),
                inject: Vec::new(),
            },
        ),
        (
            NONE,
            ClientPolicy {
                replica: "r-none".into(),
                egress: Egress::None,
                inject: Vec::new(),
            },
        ),
    ])
}

/// A directory for the proxy's CA, removed when dropped (also when a test
/// fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("hangar-egress-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    proxy: SocketAddr,
    events: mpsc::Receiver<EgressEvent>,
    ca: Arc<CertificateAuthority>,
    upstreams: Upstreams,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Harness {
    async fn start(name: &str) -> Harness {
        Harness::start_with(name, |_, _| {}).await
    }

    /// A proxy in front of fresh upstreams; `adjust` changes its
    /// configuration before it binds.
    async fn start_with(name: &str, adjust: impl FnOnce(&mut ProxyConfig, &Upstreams)) -> Harness {
        let upstreams = upstreams().await;
        let dir = TempDir::new(name);
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir.0).expect("ca"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(upstreams.ca_der.clone()).expect("root");
        let (events_tx, events) = mpsc::channel(256);
        let mut config = ProxyConfig::new(ca.clone(), roots, events_tx);
        config.resolve = HashMap::from([
            ("plain.test".to_owned(), upstreams.http),
            ("a.wild.test".to_owned(), upstreams.http),
            ("x.a.wild.test".to_owned(), upstreams.http),
            ("wild.test".to_owned(), upstreams.http),
            ("ported.test".to_owned(), upstreams.http),
            ("secure.test".to_owned(), upstreams.https),
            ("tunnel.test".to_owned(), upstreams.https),
            ("other.test".to_owned(), upstreams.https),
            // Nothing listens on port 9 of loopback.
            (
                "down.test".to_owned(),
                SocketAddr::from(([127, 0, 0, 1], 9)),
            ),
        ]);
        adjust(&mut config, &upstreams);
        let policies: Arc<dyn Policies> = Arc::new(policies());
        let proxy = EgressProxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config, policies)
            .await
            .expect("bind");
        let addr = proxy.local_addr();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(proxy.serve(shutdown.clone()));
        Harness {
            proxy: addr,
            events,
            ca,
            upstreams,
            shutdown,
            served,
            _dir: dir,
        }
    }

    /// A client at `source` going through the proxy, trusting only the
    /// given roots.
    fn client(&self, source: IpAddr, roots: &[&str]) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{}", self.proxy)).expect("proxy"))
            .local_address(source)
            .tls_built_in_root_certs(false);
        for pem in roots {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"));
        }
        builder.build().expect("client")
    }

    /// The next event that `wanted` accepts; those before it are skipped.
    async fn event(&mut self, wanted: impl Fn(&EgressEvent) -> bool) -> EgressEvent {
        loop {
            let event = self
                .events
                .recv()
                .await
                .expect("the proxy stopped reporting");
            if wanted(&event) {
                return event;
            }
        }
    }

    async fn denied(&mut self, host: &str) -> EgressEvent {
        self.event(|e| matches!(e, EgressEvent::Denied { host: h, .. } if h == host))
            .await
    }

    async fn done(&mut self, host: &str) -> (String, u64, u64) {
        match self
            .event(|e| matches!(e, EgressEvent::Done { host: h, .. } if h == host))
            .await
        {
            EgressEvent::Done {
                replica,
                bytes_up,
                bytes_down,
                ..
            } => (replica, bytes_up, bytes_down),
            EgressEvent::Denied { .. } => unreachable!("filtered"),
        }
    }

    async fn stop(self) {
        self.finish().await;
    }

    /// Stops the proxy (closing the upstream connections it kept) and
    /// returns the events not read yet.
    async fn finish(mut self) -> Vec<EgressEvent> {
        self.shutdown.cancel();
        (&mut self.served).await.expect("serve");
        let mut rest = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            rest.push(event);
        }
        rest
    }
}

#[tokio::test]
async fn plain_http_is_forwarded_as_it_came_and_counted() {
    let h = Harness::start("plain").await;
    let body = "x".repeat(100_000);
    let response = h
        .client(OPEN, &[])
        .post("http://plain.test/hello?q=1")
        .header("authorization", "Bearer the-sandboxes-own")
        .header("proxy-authorization", "Basic for-the-proxy-only")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let seen = response.text().await.expect("body");
    assert!(seen.starts_with("POST /hello?q=1\n"), "{seen:.200}");
    assert!(
        seen.contains("\nauthorization: Bearer the-sandboxes-own\n"),
        "{seen:.400}"
    );
    assert!(!seen.contains("proxy-authorization"), "{seen:.400}");
    assert!(seen.contains("\nhost: plain.test\n"));
    assert!(seen.ends_with(&body));

    // The upstream connection is kept for the next request: it is
    // reported when the proxy closes it.
    let (replica, up, down) = done_in(&h.finish().await, "plain.test");
    assert_eq!(replica, "r-open");
    assert!(up > 100_000, "up {up}");
    assert!(down > 100_000, "down {down}");
}

/// The one `Done` for `host` among `events`.
fn done_in(events: &[EgressEvent], host: &str) -> (String, u64, u64) {
    let done: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            EgressEvent::Done {
                replica,
                host: h,
                bytes_up,
                bytes_down,
            } if h == host => Some((replica.clone(), *bytes_up, *bytes_down)),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 1, "{events:?}");
    done[0].clone()
}

#[tokio::test]
async fn plain_http_reuses_a_replicas_upstream_connection_and_only_its_own() {
    let h = Harness::start("reuse").await;
    let open = h.client(OPEN, &[]);
    for host in ["plain.test", "secure.test"] {
        // Answers of all kinds: fixed length, none, chunked.
        for path in ["/", "/empty", "/chunked", "/"] {
            let url = format!("http://{host}{path}");
            let response = open.post(&url).body("x").send().await.expect("send");
            assert_eq!(response.status(), 200, "{url}");
            let body = response.text().await.expect("body");
            assert_eq!(body.is_empty(), path == "/empty", "{url}: {body}");
            if path == "/chunked" {
                assert!(body.ends_with("\n\nx"), "{body}");
            }
        }
    }
    assert_eq!(h.upstreams.http_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(h.upstreams.https_accepted.load(Ordering::SeqCst), 1);

    // Another replica gets a connection of its own.
    let response = h
        .client(ALLOW, &[])
        .get("http://plain.test/")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(!response.text().await.expect("body").is_empty());
    assert_eq!(h.upstreams.http_accepted.load(Ordering::SeqCst), 2);

    let events = h.finish().await;
    let mut replicas: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            EgressEvent::Done { replica, host, .. } if host == "plain.test" => {
                Some(replica.clone())
            }
            _ => None,
        })
        .collect();
    replicas.sort();
    assert_eq!(replicas, ["r-allow", "r-open"]);
}

#[tokio::test]
async fn plain_http_to_a_host_with_injection_goes_out_over_tls_with_the_header() {
    let h = Harness::start("plain-injected").await;
    // The client trusts no CA at all: it speaks plain HTTP to the proxy.
    let response = h
        .client(OPEN, &[])
        .post("http://secure.test/v1/chat")
        .header("authorization", "Bearer from-the-sandbox")
        .header("x-kept", "yes")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    // Only the HTTPS upstream could have answered.
    let seen = response.text().await.expect("body");
    assert!(seen.starts_with("POST /v1/chat\n"), "{seen}");
    assert!(
        seen.contains("\nauthorization: Bearer injected-tls\n"),
        "{seen}"
    );
    assert!(seen.contains("\nx-api-key: k1\nx-api-key: k2\n"), "{seen}");
    assert!(!seen.contains("from-the-sandbox"), "{seen}");
    assert!(seen.contains("\nx-kept: yes\n"), "{seen}");
    assert!(seen.contains("\nhost: secure.test\n"), "{seen}");
    assert!(seen.ends_with("\n\nhello"), "{seen}");
    let (replica, up, down) = done_in(&h.finish().await, "secure.test");
    assert_eq!(replica, "r-open");
    // A TLS handshake each way at least.
    assert!(up > 200 && down > 500, "up {up} down {down}");
}

#[tokio::test]
async fn https_to_a_host_with_injection_is_terminated_and_re_originated() {
    let mut h = Harness::start("terminated").await;
    let ca_pem = h.ca.cert_pem().to_owned();
    let client = h.client(OPEN, &[&ca_pem]);
    for _ in 0..2 {
        // Twice: the second request rides the same tunnel and upstream.
        let response = client
            .get("https://secure.test/v1/models")
            .header("authorization", "Bearer from-the-sandbox")
            .header("x-api-key", "mine")
            .send()
            .await
            .expect("send");
        // The client trusts the Hangar CA only: the proxy answered TLS.
        assert_eq!(response.status(), 200);
        let seen = response.text().await.expect("body");
        assert!(seen.starts_with("GET /v1/models\n"), "{seen}");
        assert!(
            seen.contains("\nauthorization: Bearer injected-tls\n"),
            "{seen}"
        );
        assert!(seen.contains("\nx-api-key: k1\nx-api-key: k2\n"), "{seen}");
        assert!(
            !seen.contains("from-the-sandbox") && !seen.contains("mine"),
            "{seen}"
        );
        assert!(seen.contains("\nhost: secure.test\n"), "{seen}");
    }
    // The upstream's own CA is not enough: nothing of its TLS reaches the
    // client.
    let upstream_ca = h.upstreams.ca_pem.clone();
    let direct = h.client(OPEN, &[&upstream_ca]);
    assert!(direct.get("https://secure.test/").send().await.is_err());
    drop((client, direct));
    let (replica, up, down) = h.done("secure.test").await;
    assert_eq!(replica, "r-open");
    assert!(up > 0 && down > 0, "up {up} down {down}");
    h.stop().await;
}

#[tokio::test]
async fn a_terminated_upstream_is_verified_against_the_upstream_roots() {
    // The proxy trusts no one upstream: the test upstream's certificate
    // must fail, and the client gets a 502, not a connection.
    let mut h = Harness::start_with("unverified", |config, _| {
        config.upstream_roots = rustls::RootCertStore::empty();
    })
    .await;
    let mut stream = connect_from(OPEN, h.proxy).await;
    let answer = exchange(
        &mut stream,
        b"CONNECT secure.test:443 HTTP/1.1\r\nhost: secure.test:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // The bytes of the failed handshake count.
    let (_, up, down) = h.done("secure.test").await;
    assert!(up > 0 && down > 0, "up {up} down {down}");
    // The same for plain HTTP that goes out over TLS for its injection.
    let response = h
        .client(OPEN, &[])
        .get("http://secure.test/")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    h.stop().await;
}

#[tokio::test]
async fn https_without_injection_is_a_tunnel_to_the_upstreams_own_certificate() {
    let mut h = Harness::start("tunnel").await;
    let upstream_ca = h.upstreams.ca_pem.clone();
    let response = h
        .client(OPEN, &[&upstream_ca])
        .get("https://tunnel.test/x")
        .header("authorization", "Bearer mine")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let seen = response.text().await.expect("body");
    assert!(seen.contains("\nauthorization: Bearer mine\n"), "{seen}");
    let (replica, up, down) = h.done("tunnel.test").await;
    assert_eq!(replica, "r-open");
    // At least a ClientHello up and a certificate down.
    assert!(up > 100 && down > 300, "up {up} down {down}");

    // The certificate the client sees is the upstream's own, byte for byte.
    let mut stream = connect_from(OPEN, h.proxy).await;
    let connect = b"CONNECT tunnel.test:443 HTTP/1.1\r\nhost: tunnel.test:443\r\n\r\n";
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    let seen = handshake(stream, &h.upstreams.ca_der, Some("tunnel.test"))
        .await
        .expect("handshake");
    assert_eq!(seen, h.upstreams.leaf_der);
    h.stop().await;
}

#[tokio::test]
async fn allow_lists_match_names_wildcards_case_and_ports() {
    let mut h = Harness::start("allow").await;
    let upstream_ca = h.upstreams.ca_pem.clone();
    let client = h.client(ALLOW, &[&upstream_ca]);
    for url in [
        "http://plain.test/",
        "http://A.Wild.TEST/",
        "http://x.a.wild.test/",
    ] {
        let response = client.get(url).send().await.expect("send");
        assert_eq!(response.status(), 200, "{url}");
    }
    let response = client
        .get("https://tunnel.test/")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);

    // The apex of a wildcard, a rule for another port, an unlisted host.
    for (url, host) in [
        ("http://wild.test/", "wild.test"),
        ("http://ported.test/", "ported.test"),
        ("http://other.test/", "other.test"),
    ] {
        let response = client.get(url).send().await.expect("send");
        assert_eq!(response.status(), 403, "{url}");
        assert_eq!(
            response.text().await.expect("body"),
            format!("egress to {host} denied by policy\n")
        );
        assert_eq!(
            h.denied(host).await,
            EgressEvent::Denied {
                client: ALLOW,
                replica: Some("r-allow".into()),
                host: host.into(),
                port: 80,
                reason: DenyReason::NotAllowed,
            }
        );
    }
    // CONNECT to an unlisted host: refused before any tunnel.
    let mut stream = connect_from(ALLOW, h.proxy).await;
    let answer = exchange(
        &mut stream,
        b"CONNECT other.test:443 HTTP/1.1\r\nhost: other.test:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(client.get("https://other.test/").send().await.is_err());
    assert!(matches!(
        h.denied("other.test").await,
        EgressEvent::Denied {
            port: 443,
            reason: DenyReason::NotAllowed,
            ..
        }
    ));

    // Egress none: nothing.
    let none = h.client(NONE, &[&upstream_ca]);
    let response = none.get("http://plain.test/").send().await.expect("send");
    assert_eq!(response.status(), 403);
    assert!(none.get("https://tunnel.test/").send().await.is_err());
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_client_is_refused() {
    let mut h = Harness::start("unknown").await;
    let upstream_ca = h.upstreams.ca_pem.clone();
    let client = h.client(UNKNOWN, &[&upstream_ca]);
    let response = client.get("http://plain.test/").send().await.expect("send");
    assert_eq!(response.status(), 403);
    assert_eq!(
        h.denied("plain.test").await,
        EgressEvent::Denied {
            client: UNKNOWN,
            replica: None,
            host: "plain.test".into(),
            port: 80,
            reason: DenyReason::UnknownClient,
        }
    );
    assert!(client.get("https://tunnel.test/").send().await.is_err());
    assert!(matches!(
        h.denied("tunnel.test").await,
        EgressEvent::Denied {
            reason: DenyReason::UnknownClient,
            ..
        }
    ));
    h.stop().await;
}

/// A raw connection from `source` to the proxy.
async fn connect_from(source: IpAddr, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind");
    socket.connect(proxy).await.expect("connect")
}

/// Sends `head` and reads until the end of the answer's head.
async fn exchange(stream: &mut TcpStream, head: &[u8]) -> String {
    stream.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A TLS handshake through an open `CONNECT`, naming `sni` (or nothing).
async fn handshake(
    stream: TcpStream,
    upstream_ca: &CertificateDer<'static>,
    sni: Option<&str>,
) -> std::io::Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(upstream_ca.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("tunnel.test").to_owned()).expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: tunnel.test\r\n\r\n")
        .await?;
    let mut answer = [0u8; 16];
    let n = tls.read(&mut answer).await?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned());
    match peer {
        Some(peer) if answer[..n].starts_with(b"HTTP/1.1 200") => Ok(peer),
        _ => Err(std::io::Error::other("no answer")),
    }
}

#[tokio::test]
async fn a_tunnel_refuses_a_server_name_other_than_its_connect_host() {
    let mut h = Harness::start("sni").await;
    let connect = b"CONNECT tunnel.test:443 HTTP/1.1\r\nhost: tunnel.test:443\r\n\r\n";

    // The control: the same CONNECT with the right name works.
    let mut stream = connect_from(ALLOW, h.proxy).await;
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    handshake(stream, &h.upstreams.ca_der, Some("tunnel.test"))
        .await
        .expect("the matching name");

    // other.test is served by the same upstream, and denied to this client.
    let mut stream = connect_from(ALLOW, h.proxy).await;
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(handshake(stream, &h.upstreams.ca_der, Some("other.test"))
        .await
        .is_err());
    assert!(matches!(
        h.denied("tunnel.test").await,
        EgressEvent::Denied {
            reason: DenyReason::ServerNameMismatch { server_name },
            ..
        } if server_name == "other.test"
    ));

    // No server name at all, to a CONNECT by name.
    let mut stream = connect_from(ALLOW, h.proxy).await;
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(handshake(stream, &h.upstreams.ca_der, None).await.is_err());
    assert!(matches!(
        h.denied("tunnel.test").await,
        EgressEvent::Denied {
            reason: DenyReason::NoServerName,
            ..
        }
    ));

    // Not TLS at all.
    let mut stream = connect_from(ALLOW, h.proxy).await;
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    stream
        .write_all(b"GET http://other.test/ HTTP/1.1\r\nhost: other.test\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(matches!(
        h.denied("tunnel.test").await,
        EgressEvent::Denied {
            reason: DenyReason::NotTls,
            ..
        }
    ));
    h.stop().await;
}

#[tokio::test]
async fn a_terminated_tunnel_refuses_requests_for_another_host() {
    let mut h = Harness::start("fronting").await;
    let mut stream = connect_from(OPEN, h.proxy).await;
    let connect = b"CONNECT secure.test:443 HTTP/1.1\r\nhost: secure.test:443\r\n\r\n";
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.ca.cert_der().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("secure.test").expect("name"), stream)
        .await
        .expect("terminated by the proxy");
    tls.write_all(b"GET / HTTP/1.1\r\nhost: other.test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 256];
    let n = tls.read(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(matches!(
        h.denied("secure.test").await,
        EgressEvent::Denied {
            reason: DenyReason::HostMismatch { requested },
            ..
        } if requested == "other.test"
    ));

    // Not TLS at all, to a host the proxy would terminate.
    let mut stream = connect_from(OPEN, h.proxy).await;
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: secure.test\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));
    assert!(matches!(
        h.denied("secure.test").await,
        EgressEvent::Denied {
            reason: DenyReason::NotTls,
            ..
        }
    ));
    h.stop().await;
}

/// The address this host sends from towards the outside (no packet is
/// sent: a UDP `connect` only picks the route).
fn own_outward_address() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket
        .connect("203.0.113.1:9")
        .expect("this test needs a route off the host (any non-loopback interface)");
    let ip = socket.local_addr().expect("addr").ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

#[tokio::test]
async fn the_proxy_never_connects_to_the_hosts_own_addresses() {
    let mut h = Harness::start("forbidden").await;
    let client = h.client(OPEN, &[]);
    let port = h.upstreams.http.port();
    // A service of the host on every interface, reached at the host's
    // outward address (what a replica would use: the bridge's gateway or
    // the public address).
    let everywhere = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let everywhere_port = everywhere.local_addr().expect("addr").port();
    tokio::spawn(serve_http(everywhere, None, Arc::default()));
    let own = own_outward_address();
    let response = client
        .get(format!("http://{own}:{everywhere_port}/"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 403, "{own}");
    assert!(matches!(
        h.denied(&own.to_string()).await,
        EgressEvent::Denied {
            reason: DenyReason::ForbiddenAddress,
            ..
        }
    ));
    for (url, host) in [
        (format!("http://127.0.0.1:{port}/"), "127.0.0.1"),
        (format!("http://localhost:{port}/"), "localhost"),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "127.0.0.1"),
    ] {
        let response = client.get(&url).send().await.expect("send");
        assert_eq!(response.status(), 403, "{url}");
        assert!(matches!(
            h.denied(host).await,
            EgressEvent::Denied {
                reason: DenyReason::ForbiddenAddress,
                ..
            }
        ));
    }
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let h = Harness::start("down").await;
    let response = h
        .client(OPEN, &[])
        .get("http://down.test/")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    let mut stream = connect_from(OPEN, h.proxy).await;
    let answer = exchange(
        &mut stream,
        b"CONNECT down.test:443 HTTP/1.1\r\nhost: down.test:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn bad_input_is_answered_and_the_proxy_keeps_serving() {
    let h = Harness::start("hostile").await;
    let cases: [(&[u8], &str); 5] = [
        (b"\x16\x03\x01\x00\x05hello\r\n\r\n", "HTTP/1.1 400"),
        (
            b"GET / HTTP/1.1\r\nhost: plain.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"CONNECT plain.test HTTP/1.1\r\nhost: plain.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET https://plain.test/ HTTP/1.1\r\nhost: plain.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET http://bad_host!/ HTTP/1.1\r\nhost: x\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ];
    for (request, expected) in cases {
        let mut stream = connect_from(OPEN, h.proxy).await;
        let answer = exchange(&mut stream, request).await;
        assert!(
            answer.starts_with(expected),
            "{:?} → {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    // A head over the limit.
    let mut stream = connect_from(OPEN, h.proxy).await;
    let mut huge = b"GET http://plain.test/ HTTP/1.1\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 200_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(&mut stream, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    let response = h
        .client(OPEN, &[])
        .get("http://plain.test/")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_cuts_open_tunnels_and_reports_them() {
    let h = Harness::start("shutdown").await;
    let mut stream = connect_from(OPEN, h.proxy).await;
    let connect = b"CONNECT tunnel.test:443 HTTP/1.1\r\nhost: tunnel.test:443\r\n\r\n";
    assert!(exchange(&mut stream, connect)
        .await
        .starts_with("HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.upstreams.ca_der.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("tunnel.test").expect("name"), stream)
        .await
        .expect("through the tunnel");

    // The tunnel is open and idle: shutting down must not wait for it.
    let events = h.finish().await;
    let (replica, up, down) = done_in(&events, "tunnel.test");
    assert_eq!(replica, "r-open");
    assert!(up > 0 && down > 0, "up {up} down {down}");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}
