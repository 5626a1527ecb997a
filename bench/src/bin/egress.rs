//! Egress proxy added latency: a small HTTPS `GET` through
//! `hangar-egress` against the same request made directly, in one run.
//!
//! The target (issue "Tenant isolation … egress policy with a proxy that
//! injects secrets"): record the proxy's added latency, p50, for a small
//! HTTPS request.
//!
//! What runs (in this process, no root needed):
//! 1. An HTTPS upstream on loopback: hyper HTTP/1.1 behind rustls, with a
//!    certificate from a CA made for the run; `GET /` answers `ok` plus the
//!    value of the `x-injected` header it received.
//! 2. The egress proxy on loopback, trusting that CA upstream, with the
//!    names `tunnel.bench` and `inject.bench` mapped to the upstream; the
//!    client's address has open egress and an injection for `inject.bench`.
//!    Upstream and proxy run on their own two-thread runtime; the client on
//!    another thread, as a replica and `hangar serve` would.
//! 3. Three paths, each with its own reqwest client:
//!    - direct: `https://tunnel.bench/` resolved to the upstream;
//!    - tunnel: through the proxy (`CONNECT`, a byte tunnel, the client
//!      verifies the upstream's certificate);
//!    - terminated: `https://inject.bench/` through the proxy, which
//!      terminates TLS with a leaf of its own CA, adds `x-injected` and
//!      re-originates TLS to the upstream;
//!    - plain → TLS: `http://inject.bench/` through the proxy, which adds
//!      `x-injected` and sends the request on over TLS (how an agent that
//!      trusts no CA calls a host with injected headers).
//!
//!    Each is measured twice: on a kept-alive connection (the request
//!    alone) and on a fresh connection per request (TCP, `CONNECT` and the
//!    TLS handshakes included: what a client that does not pool pays).
//!
//! Latency: sequential requests, `--warmup` untimed first, then
//! `--requests` timed per path, split into 10 blocks taken round-robin over
//! the paths. Timed from sending the request to the last body byte; every
//! answer is checked off the clock (200, `ok`, the injected value on the
//! two paths to the host with an injection and no other), so an error
//! never passes as fast.
//!
//! The binary exits 0 whether or not the figures are good: it is a
//! measurement, not a test.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hangar_bench::host::TempDir;
use hangar_bench::{cpu_ticks, load_average, percentile, sorted_ms, steal_percent};
use hangar_egress::{
    CertificateAuthority, ClientPolicy, Egress, EgressProxy, Injection, Policies, ProxyConfig,
};
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Blocks the timed requests of each path are split into.
const BLOCKS: usize = 10;
/// The injected value the terminated path must deliver.
const INJECTED: &str = "secret-from-the-proxy";

/// Measures the egress proxy's added latency for a small HTTPS request.
#[derive(Debug, Parser)]
#[command(name = "egress")]
struct Args {
    /// Timed sequential requests per path and connection mode.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Untimed sequential requests per path before timing.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
}

async fn answer(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let injected = request
        .headers()
        .get("x-injected")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    Ok(Response::new(Full::new(Bytes::from(format!(
        "ok {injected}"
    )))))
}

/// The upstream's CA (PEM, DER) and its TLS acceptor.
fn upstream_tls() -> Result<(
    String,
    rustls::pki_types::CertificateDer<'static>,
    tokio_rustls::TlsAcceptor,
)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "egress bench upstream CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["tunnel.bench".into(), "inject.bench".into()])?
        .signed_by(&key, &ca, &ca_key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        ca.pem(),
        ca.der().clone(),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    ))
}

async fn serve_upstream(listener: TcpListener, tls: tokio_rustls::TlsAcceptor) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Ok(stream) = tls.accept(stream).await {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            }
        });
    }
}

/// One measured path.
struct Path {
    name: &'static str,
    url: &'static str,
    expect: String,
    client: reqwest::Client,
}

impl Path {
    async fn send(&self) -> Result<Duration> {
        let t0 = Instant::now();
        let response = self.client.get(self.url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        let took = t0.elapsed();
        ensure!(status == 200, "{}: status {status}", self.name);
        ensure!(
            body == self.expect.as_bytes(),
            "{}: answered {:?}",
            self.name,
            String::from_utf8_lossy(&body)
        );
        Ok(took)
    }
}

fn client(
    proxy: Option<SocketAddr>,
    root_pem: &str,
    upstream: SocketAddr,
    fresh: bool,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes())?)
        .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .no_proxy();
    builder = match proxy {
        Some(proxy) => builder.proxy(reqwest::Proxy::all(format!("http://{proxy}"))?),
        None => builder.resolve("tunnel.bench", upstream),
    };
    if fresh {
        builder = builder.pool_max_idle_per_host(0);
    }
    Ok(builder.build()?)
}

async fn latency(paths: &[Path], args: &Args) -> Result<Vec<Vec<Duration>>> {
    for path in paths {
        for _ in 0..args.warmup {
            path.send().await?;
        }
    }
    let n = paths.len();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let per_block = args.requests.div_ceil(BLOCKS);
    for block in 0..BLOCKS {
        for offset in 0..n {
            let i = (block + offset) % n;
            let count = per_block.min(args.requests.saturating_sub(samples[i].len()));
            for _ in 0..count {
                samples[i].push(paths[i].send().await?);
            }
        }
    }
    Ok(samples)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.requests >= 1, "--requests must be at least 1");
    let dir = TempDir::new("egress")?;
    let (upstream_pem, upstream_der, acceptor) = upstream_tls()?;
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.0)?);
    let hangar_pem = ca.cert_pem().to_owned();

    // Upstream and proxy: their own runtime on their own threads.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let (upstream, proxy_addr, mut events, served) = servers.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = listener.local_addr()?;
        tokio::spawn(serve_upstream(listener, acceptor));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(upstream_der)?;
        let (events_tx, events) = tokio::sync::mpsc::channel(1024);
        let mut config = ProxyConfig::new(ca, roots, events_tx);
        config.resolve = HashMap::from([
            ("tunnel.bench".to_owned(), upstream),
            ("inject.bench".to_owned(), upstream),
        ]);
        let policies: Arc<dyn Policies> = Arc::new(HashMap::from([(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            ClientPolicy {
                replica: "bench".into(),
                egress: Egress::Open,
                inject: vec![Injection {
                    host: "inject.bench".into(),
                    headers: vec![(
                        HeaderName::from_static("x-injected"),
                        HeaderValue::from_static(INJECTED),
                    )],
                }],
            },
        )]));
        let proxy =
            EgressProxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config, policies).await?;
        let addr = proxy.local_addr();
        let served = tokio::spawn(proxy.serve(shutdown.clone()));
        anyhow::Ok((upstream, addr, events, served))
    })?;
    // Events are drained so the proxy never waits on them.
    servers.spawn(async move { while events.recv().await.is_some() {} });

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut table = Vec::new();
    let ticks = cpu_ticks();
    let load_before = load_average();
    for fresh in [false, true] {
        let paths = vec![
            Path {
                name: "direct",
                url: "https://tunnel.bench/",
                expect: "ok -".to_owned(),
                client: client(None, &upstream_pem, upstream, fresh)?,
            },
            Path {
                name: "tunnel",
                url: "https://tunnel.bench/",
                expect: "ok -".to_owned(),
                client: client(Some(proxy_addr), &upstream_pem, upstream, fresh)?,
            },
            Path {
                name: "terminated",
                url: "https://inject.bench/",
                expect: format!("ok {INJECTED}"),
                client: client(Some(proxy_addr), &hangar_pem, upstream, fresh)?,
            },
            Path {
                name: "plain → TLS",
                url: "http://inject.bench/",
                expect: format!("ok {INJECTED}"),
                client: client(Some(proxy_addr), &hangar_pem, upstream, fresh)?,
            },
        ];
        let samples = client_rt
            .block_on(latency(&paths, &args))
            .context("measuring")?;
        for (path, samples) in paths.iter().zip(samples) {
            let ms = sorted_ms(&samples);
            table.push((
                if fresh { "fresh" } else { "keep-alive" },
                path.name,
                percentile(&ms, 50.0),
                percentile(&ms, 99.0),
            ));
        }
    }
    let steal = steal_percent(ticks, cpu_ticks());
    let load_after = load_average();
    shutdown.cancel();
    servers.block_on(served)?;

    println!(
        "Egress proxy: small HTTPS GET, {} timed requests per row ({} warm-up)",
        args.requests, args.warmup
    );
    println!();
    println!("| connection | path | p50 ms | p99 ms | p50 added vs direct |");
    println!("|---|---|---:|---:|---:|");
    for (mode, name, p50, p99) in &table {
        let direct = table
            .iter()
            .find(|(m, n, _, _)| m == mode && *n == "direct")
            .map_or(0.0, |row| row.2);
        let added = if *name == "direct" {
            "—".to_owned()
        } else {
            format!("{:+.3} ms", p50 - direct)
        };
        println!("| {mode} | {name} | {p50:.3} | {p99:.3} | {added} |");
    }
    println!();
    match steal {
        Some(steal) => println!("CPU steal while timing: {steal:.1}%."),
        None => println!("CPU steal while timing: unknown (no /proc/stat)."),
    }
    println!("Load average before: {load_before}; after: {load_after}.");
    Ok(())
}
