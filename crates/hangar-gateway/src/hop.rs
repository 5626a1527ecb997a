//! The hop between nodes: a request for an instance another node runs is
//! sent on to that node, whole, and its answer relayed back.
//!
//! Several servers (nodes) on one database each run the instances whose
//! lease they hold (the controller's `leases`). A client, or a load
//! balancer in front of the nodes, may reach any of them: a node that is
//! asked about an instance another ready node holds forwards the request
//! there rather than answer without the replicas, live logs and figures
//! that only the holder has ([`Hops::elsewhere`], [`Hops::forward`]). The
//! hop is plain HTTP (or HTTPS, when the node's address says so) over the
//! same hyper stack as everything else: method, path, query, body and the
//! client's own headers (its API key too, checked again by the holder, and
//! `Host`, which names an instance URL) go as they came, streamed both
//! ways, so invocations, streams, log follows, exec and stdin behave as on
//! the holder itself.
//!
//! A forwarded request carries the cluster token ([`HOP_HEADER`]), a key
//! derived from the secret key every node on the database shares (a node
//! with another key refuses to start), so it needs no setting of its own.
//! The token marks the request as one hop old: the receiver acts on it
//! itself whatever the store says by then, so a lease moving in between
//! costs one answer (the receiver's, as if asked first), never a loop; and
//! it is not counted again by the receiver's rate limit. A request with a
//! wrong token is refused.
//!
//! Where an instance is held is read from the store and kept for
//! [`crate::ROUTE_TTL`]; an instance nobody holds, or whose holder is dead
//! or stopped or whose lease ran out, is served here (the local controller
//! takes it over on the first request) — unless this node is draining and
//! so takes nothing: then it goes to the ready, undrained node with the
//! fewest replicas, which takes it over instead ([`Hops::set_draining`]).
//! On one server nothing is ever forwarded, and the check costs a lookup
//! in a small map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use hangar_store::{LeaseOf, NodeStatus, Store, StoreError};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::error::{Classify, ErrorClass};
use crate::proxy::{is_upgrade, splice, strip_hop_by_hop};
use crate::{lock, ROUTE_TTL};

/// The header that carries the cluster token on a forwarded request.
pub const HOP_HEADER: &str = "x-hangar-hop";

/// What a request concerns, as far as the hop is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HopKey {
    /// An instance, by ID.
    Instance(String),
    /// An agent's default instance, by the agent's ID.
    Agent(String),
}

/// Where an instance was last read to be held: `None` here (kept only
/// when this node holds it).
struct Held {
    node: Option<Arc<str>>,
    read_at: Instant,
}

/// A forwarded request that found no answer.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// The holder could not be reached or broke the connection.
    #[error("the node at {node} that runs this instance could not be reached: {cause}")]
    Unreachable {
        /// The node's address.
        node: String,
        /// Why (internal text).
        cause: String,
        /// No connection was made: the request never reached the node, and
        /// may be sent again.
        connect: bool,
    },
    /// The holder's address is not one a request can be sent to.
    #[error("the node address '{0}' is not an http(s) URL")]
    BadAddress(String),
}

impl Classify for HopError {
    fn class(&self) -> ErrorClass {
        ErrorClass::NODE_UNREACHABLE
    }

    fn public_message(&self) -> String {
        "the server that runs this instance could not be reached; try again".to_owned()
    }

    fn internal_cause(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// A hop header that is there but wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongToken;

/// See the module docs. One per server.
pub struct Hops {
    store: Store,
    /// This node's ID: a lease it holds is served here.
    node: String,
    /// The cluster token, as sent in [`HOP_HEADER`].
    token: HeaderValue,
    /// A holder silent this long is dead: its instances are served here.
    dead_after: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    held: Mutex<HashMap<HopKey, Held>>,
    /// This node is draining: it takes no instance over.
    draining: AtomicBool,
}

impl Hops {
    /// Hops for node `node`, whose requests carry `token` (any bytes; sent
    /// as hex). `dead_after` is the store's failure detection.
    ///
    /// # Errors
    /// When no TLS roots can be loaded for HTTPS node addresses.
    pub fn new(
        store: Store,
        node: String,
        token: &[u8],
        dead_after: Duration,
    ) -> std::io::Result<Self> {
        let token = HeaderValue::try_from(hex_of(token)).map_err(std::io::Error::other)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Self {
            store,
            node,
            token,
            dead_after,
            client,
            held: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
        })
    }

    /// Whether this node is draining (told with each heartbeat): while it
    /// is, what nobody holds goes to another node rather than here.
    pub fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::SeqCst) != draining {
            self.forget();
        }
    }

    /// This node's ID.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether `headers` say the request was forwarded by another node:
    /// `Ok(false)` without the header, `Err` with a wrong token.
    ///
    /// # Errors
    /// [`WrongToken`] when the header is there with another value.
    pub fn received(&self, headers: &HeaderMap) -> Result<bool, WrongToken> {
        match headers.get(HOP_HEADER) {
            None => Ok(false),
            Some(sent) if same(sent.as_bytes(), self.token.as_bytes()) => Ok(true),
            Some(_) => Err(WrongToken),
        }
    }

    /// The address of the other node that runs what `key` leads to, when
    /// one ready node other than this one holds its lease; `None`: it is
    /// served here.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn elsewhere(&self, key: &HopKey) -> Result<Option<Arc<str>>, StoreError> {
        {
            let held = lock(&self.held);
            if let Some(h) = held.get(key).filter(|h| h.read_at.elapsed() < ROUTE_TTL) {
                return Ok(h.node.clone());
            }
        }
        let of = match key {
            HopKey::Instance(id) => LeaseOf::Instance(id),
            HopKey::Agent(id) => LeaseOf::Agent(id),
        };
        let now = hangar_store::store_now();
        let holder = self.store.lease_holder(of).await?;
        let mine = holder.as_ref().is_some_and(|h| h.node.beat.id == self.node);
        let node = holder.and_then(|holder| {
            let theirs = holder.node.beat.id != self.node
                && holder.expires_at > now
                && holder.node.status(now, self.dead_after) == NodeStatus::Ready;
            theirs.then(|| Arc::from(holder.node.beat.address.as_str()))
        });
        if node.is_none() && !mine {
            // Nobody runs it yet (or its holder is gone): served here for
            // now, but asked again next time, as a node may take it any
            // moment. A draining node takes nothing over: another does.
            if self.draining.load(Ordering::SeqCst) {
                return self.stand_in(now).await;
            }
            return Ok(None);
        }
        let mut held = lock(&self.held);
        if held.len() >= 10_000 {
            held.retain(|_, h| h.read_at.elapsed() < ROUTE_TTL);
        }
        held.insert(
            key.clone(),
            Held {
                node: node.clone(),
                read_at: Instant::now(),
            },
        );
        Ok(node)
    }

    /// Sends `request` to the node at `node` (`http://host:port`) as it
    /// came, with the cluster token and the caller's address added to
    /// `X-Forwarded-For`, and answers what that node answers, its body
    /// streamed through. A protocol upgrade (a websocket to an instance
    /// URL) that the node accepts is joined through here until either side
    /// closes.
    ///
    /// # Errors
    /// When the node cannot be reached or its address is not a URL.
    pub async fn forward(
        &self,
        node: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, HopError> {
        let upgrading = is_upgrade(request.headers());
        let downstream = upgrading.then(|| hyper::upgrade::on(&mut request));
        let client = request
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", axum::http::uri::PathAndQuery::as_str);
        parts.uri = format!("{}{path}", node.trim_end_matches('/'))
            .parse::<Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
            .ok_or_else(|| HopError::BadAddress(node.to_owned()))?;
        parts.version = axum::http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers, upgrading);
        if upgrading {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if let Some(client) = client {
            let forwarded = match parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(earlier) => format!("{earlier}, {client}"),
                None => client.to_string(),
            };
            if let Ok(value) = HeaderValue::try_from(forwarded) {
                parts.headers.insert("x-forwarded-for", value);
            }
        }
        parts.headers.insert(HOP_HEADER, self.token.clone());
        let mut response = self
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|err| HopError::Unreachable {
                node: node.to_owned(),
                cause: format!("{err:#}"),
                connect: err.is_connect(),
            })?;
        if let (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) = (downstream, response.status())
        {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(downstream, upstream));
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// The ready, undrained node other than this one with the fewest
    /// replicas, to take over what a draining node is asked about; `None`
    /// (served here, which answers that nothing runs it) when there is none.
    async fn stand_in(
        &self,
        now: hangar_core::model::Timestamp,
    ) -> Result<Option<Arc<str>>, StoreError> {
        let nodes = self.store.list_nodes().await?;
        Ok(nodes
            .iter()
            .filter(|n| {
                n.beat.id != self.node
                    && n.draining_at.is_none()
                    && n.status(now, self.dead_after) == NodeStatus::Ready
            })
            .min_by_key(|n| (n.beat.replicas, n.beat.id.clone()))
            .map(|n| Arc::from(n.beat.address.as_str())))
    }

    /// Like [`Hops::elsewhere`], read from the store now whatever was
    /// read before: for a request whose holder did not answer.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn reread(&self, key: &HopKey) -> Result<Option<Arc<str>>, StoreError> {
        lock(&self.held).remove(key);
        self.elsewhere(key).await
    }

    /// Forgets where instances are held: a lease changed here.
    pub fn forget(&self) {
        lock(&self.held).clear();
    }
}

fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcd", b"abcd"));
        assert!(!same(b"abcd", b"abce"));
        assert!(!same(b"abc", b"abcd"));
        assert_eq!(hex_of(&[0, 255, 16]), "00ff10");
    }
}
