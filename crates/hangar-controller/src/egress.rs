//! The controller's side of the egress proxy: which replica is at an
//! address and what its instance's `config.network` lets it reach by name
//! and adds to its requests, and what the proxy reports back.
//!
//! The proxy asks on every request ([`hangar_egress::Policies`]), so a
//! changed policy applies to running replicas at once. The rules are kept
//! per instance, with the injected headers' secrets already resolved: they
//! are worked out when a replica is made and again at every reconcile (an
//! adopted replica gets them at its instance's first reconcile; until then
//! the proxy refuses it, as a client it does not know).
//!
//! A replica that needs the proxy (host names in `egress.allow`, or
//! `inject`) is pointed at it with `HTTP_PROXY`/`HTTPS_PROXY` and may reach
//! its port on the host ([`hangar_runtime::network::NetworkPolicy::host_ports`]);
//! a server without a proxy refuses to make it.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use hangar_core::logs::LogLevel;
use hangar_core::model::Instance;
use hangar_core::network::Egress;
use hangar_egress::{ClientPolicy, EgressEvent, Injection, Policies};
use hangar_runtime::driver::ReplicaSpec;
use hyper::header::{HeaderName, HeaderValue};

use crate::{launch, lock, reconcile, tell, Inner, InstanceState};

/// Where replicas reach the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxyAddress {
    /// The proxy's URL as replicas use it (`http://10.231.0.1:3128`).
    pub url: String,
    /// Its port on the host, which the packet filter lets replicas reach.
    pub port: u16,
    /// Its CA certificate (PEM), which replicas whose headers it injects
    /// trust, so that it can terminate their TLS to those hosts.
    pub ca_pem: String,
}

/// An instance's rules for the proxy, secrets resolved.
#[derive(Clone, Debug)]
pub(crate) struct EgressRules {
    egress: hangar_egress::Egress,
    inject: Vec<Injection>,
}

/// `instance`'s rules, or `None` when its replicas do not use the proxy.
pub(crate) async fn rules(
    inner: &Inner,
    instance: &Instance,
) -> Result<Option<EgressRules>, String> {
    let Some(network) = instance.config.network.as_ref().filter(|n| n.needs_proxy()) else {
        return Ok(None);
    };
    let secrets = reconcile::reveal_secrets(inner, instance, network.secret_refs()).await?;
    let mut inject = Vec::new();
    for injection in &network.inject {
        let mut headers = Vec::new();
        for (name, value) in &injection.headers {
            let value = launch::resolve_secrets(value, &secrets).map_err(|_| {
                format!(
                    "config.network.inject: the header {name} for {} names a secret this \
                     organization does not have",
                    injection.host
                )
            })?;
            let bad = || {
                format!(
                    "config.network.inject: the header {name} of {} cannot be sent",
                    injection.host
                )
            };
            headers.push((
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
                HeaderValue::from_str(&value).map_err(|_| bad())?,
            ));
        }
        inject.push(Injection {
            host: injection.host.clone(),
            headers,
        });
    }
    let egress = match network
        .egress
        .as_ref()
        .unwrap_or(&inner.config.default_egress)
    {
        Egress::Open => hangar_egress::Egress::Open,
        Egress::None => hangar_egress::Egress::None,
        Egress::Allow(rules) => hangar_egress::Egress::Allow(rules.clone()),
    };
    Ok(Some(EgressRules { egress, inject }))
}

/// Points `spec` at the proxy when `instance` needs it (and keeps the
/// instance's rules for the proxy); refuses when this server runs none.
pub(crate) async fn prepare(
    inner: &Inner,
    state: &InstanceState,
    instance: &Instance,
    spec: &mut ReplicaSpec,
) -> Result<(), String> {
    let Some(rules) = rules(inner, instance).await? else {
        return Ok(());
    };
    let Some(proxy) = &inner.config.egress_proxy else {
        return Err(
            "config.network names hosts or injects headers, which needs the egress \
                    proxy, and this server runs none"
                .to_owned(),
        );
    };
    spec.network.host_ports.push(proxy.port);
    for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        spec.env.retain(|(k, _)| k != key);
        spec.env.push((key.to_owned(), proxy.url.clone()));
    }
    for key in ["NO_PROXY", "no_proxy"] {
        spec.env.retain(|(k, _)| k != key);
        spec.env
            .push((key.to_owned(), "localhost,127.0.0.1".to_owned()));
    }
    if !rules.inject.is_empty() {
        spec.network.trusted_ca = Some(proxy.ca_pem.clone());
    }
    lock(&state.tracked).egress = Some(Arc::new(rules));
    Ok(())
}

/// What the proxy asks: the live replicas, by address.
pub(crate) struct LivePolicies(pub(crate) Weak<Inner>);

impl Policies for LivePolicies {
    fn lookup(&self, client: IpAddr) -> Option<ClientPolicy> {
        let inner = self.0.upgrade()?;
        let states: Vec<Arc<InstanceState>> = lock(&inner.instances).values().cloned().collect();
        for state in states {
            let tracked = lock(&state.tracked);
            let found = tracked.replicas.values().find(|replica| {
                replica.phase.is_running()
                    && replica
                        .info
                        .address
                        .is_some_and(|address| address.ip() == client)
            });
            if let Some(replica) = found {
                let rules = tracked.egress.as_ref()?;
                return Some(ClientPolicy {
                    replica: replica.info.id.clone(),
                    egress: rules.egress.clone(),
                    inject: rules.inject.clone(),
                });
            }
        }
        None
    }
}

/// Tells the replica's instance what the proxy did: a denial is counted and
/// written to the agent's log; bytes are counted.
pub(crate) async fn report(inner: &Inner, event: EgressEvent) {
    match event {
        EgressEvent::Denied {
            replica: Some(replica),
            host,
            port,
            ..
        } => refused(inner, &replica, &host, port).await,
        // A client that is no replica: nobody's to tell.
        EgressEvent::Denied { replica: None, .. } => {}
        EgressEvent::Done {
            replica,
            bytes_up,
            bytes_down,
            ..
        } => {
            if let Some(state) = owner(inner, &replica) {
                state
                    .egress_bytes
                    .fetch_add(bytes_up.saturating_add(bytes_down), Ordering::Relaxed);
            }
        }
    }
}

/// Counts a connection `replica` was refused (by the proxy or the packet
/// filter) and writes it to its agent's log.
pub(crate) async fn refused(inner: &Inner, replica: &str, host: &str, port: u16) {
    let Some(state) = owner(inner, replica) else {
        return;
    };
    state.egress_denied.fetch_add(1, Ordering::Relaxed);
    let message = format!("[hangar] egress to {host}:{port} denied by policy");
    tell::system_log(inner, &state, replica, LogLevel::Error, message).await;
}

/// The instance `replica` is tracked under.
fn owner(inner: &Inner, replica: &str) -> Option<Arc<InstanceState>> {
    let states: Vec<Arc<InstanceState>> = lock(&inner.instances).values().cloned().collect();
    states
        .into_iter()
        .find(|state| lock(&state.tracked).replicas.contains_key(replica))
}
