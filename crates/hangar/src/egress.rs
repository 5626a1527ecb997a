//! The egress proxy as `hangar serve` runs it ([`hangar_egress`]): on every
//! address of the host at the data dir's `egress.port`, with the data dir's
//! CA, asking the controller which replica is at a client's address.
//!
//! Replicas reach it at the bridge's gateway (`http://10.231.0.1:<port>`);
//! the packet filter lets only those whose agent needs it connect. It
//! listens on every address because the bridge (and so its address) may not
//! exist yet when the server starts; a client that is not a live replica is
//! refused by the proxy itself. It never carries a replica to another
//! replica's network or to the host ([`hangar_egress::ProxyConfig::forbidden`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use hangar_controller::{Controller, EgressProxyAddress};
use hangar_egress::{
    CertificateAuthority, ClientPolicy, EgressEvent, EgressProxy, Network, Policies, ProxyConfig,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data_dir::DataDir;

/// The proxy, bound, waiting for the controller that answers its lookups.
pub struct Proxy {
    /// Where replicas reach it.
    pub address: EgressProxyAddress,
    proxy: EgressProxy,
    policies: Arc<Late>,
    events: mpsc::Receiver<EgressEvent>,
}

/// The controller's policies once there is a controller: the proxy is bound
/// before it (the controller hands replicas the proxy's address), and
/// refuses everyone until then.
#[derive(Default)]
struct Late(OnceLock<Arc<dyn Policies>>);

impl Policies for Late {
    fn lookup(&self, client: IpAddr) -> Option<ClientPolicy> {
        self.0.get()?.lookup(client)
    }
}

/// Binds the proxy for replicas on `bridge`.
pub async fn bind(
    config: &Config,
    data_dir: &DataDir,
    bridge: &hangar_runtime::sandbox::BridgeConfig,
) -> anyhow::Result<Proxy> {
    let subnet: ipnet::Ipv4Net = bridge
        .subnet
        .parse()
        .with_context(|| format!("the bridge subnet {} is not IPv4", bridge.subnet))?;
    let gateway = subnet
        .hosts()
        .next()
        .context("the bridge subnet has no address for its gateway")?;
    let ca = CertificateAuthority::load_or_create(&data_dir.egress_ca_dir())
        .context("loading the egress proxy's certificate authority")?;
    let ca_pem = ca.cert_pem().to_owned();
    let mut roots = hangar_egress::public_roots();
    if let Some(path) = &config.egress_upstream_ca {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.with_context(|| format!("reading {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("a certificate of {} is not usable", path.display()))?;
            added += 1;
        }
        anyhow::ensure!(added > 0, "{} holds no certificate", path.display());
    }
    let (events_tx, events) = mpsc::channel(1024);
    let mut proxy_config = ProxyConfig::new(Arc::new(ca), roots, events_tx);
    proxy_config.resolve.clone_from(&config.egress_hosts);
    // Replicas' own networks: the proxy must not carry one replica to
    // another past the packet filter.
    proxy_config.forbidden.extend(Network::new(
        IpAddr::V4(subnet.network()),
        subnet.prefix_len(),
    ));
    let port = data_dir.egress_port()?;
    let policies = Arc::new(Late::default());
    let proxy = EgressProxy::bind(
        SocketAddr::from(([0, 0, 0, 0], port)),
        proxy_config,
        policies.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "the egress proxy cannot listen on port {port} (kept in the data dir's egress.port, \
             which running replicas were given)"
        )
    })?;
    let address = EgressProxyAddress {
        url: format!("http://{gateway}:{port}"),
        port,
        ca_pem,
    };
    tracing::info!(url = %address.url, "egress proxy ready");
    Ok(Proxy {
        address,
        proxy,
        policies,
        events,
    })
}

impl Proxy {
    /// Serves until `shutdown`, asking `controller` and telling it what
    /// happened; the handle ends when the proxy and its reports have.
    pub fn start(self, controller: Controller, shutdown: CancellationToken) -> JoinHandle<()> {
        let Proxy {
            proxy,
            policies,
            mut events,
            ..
        } = self;
        let _ = policies.0.set(controller.egress_policies());
        tokio::spawn(async move {
            let serving = tokio::spawn(proxy.serve(shutdown));
            // Ends when the proxy, the last sender, is gone.
            while let Some(event) = events.recv().await {
                controller.report_egress(event).await;
            }
            if let Err(err) = serving.await {
                tracing::error!(error = %err, "the egress proxy failed");
            }
        })
    }
}
