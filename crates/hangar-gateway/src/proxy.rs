//! Instance URLs: `http://<resource_name>.<base domain>[:port]/…` reaches a
//! replica of the instance as is — any method and path, headers, streaming
//! bodies both ways, and protocol upgrades (websockets).
//!
//! The request goes through the same rotation as invocations (least
//! outstanding requests, the per-replica limit and queue, a cold start for
//! an instance at zero), and counts in the instance's traffic and request
//! figures. The slot on the replica is held until the response body ends
//! (or, for an upgraded connection, until the tunnel closes), so a replica
//! that is leaving drains streams and websockets too.
//!
//! An `X-Hangar-Session` header (checked by the API) sends the request to
//! its session's replica ([`crate::sessions`]) and is passed on.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; `X-Forwarded-For`,
//! `-Host` and `-Proto` are added. The caller's `Host` is kept.
//!
//! Requests go over the gateway's kept-alive connections, driven by the
//! request itself ([`crate::upstream`]); an upgrade gets a connection of its
//! own, which becomes the tunnel.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use hangar_controller::ACTIVATION_WAIT;
use hangar_core::model::Instance;
use hyper::body::{Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::invoke::InvokeError;
use crate::{Gateway, InFlight};

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// `Upgrade` is kept when `upgrading`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        if !(upgrading && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !upgrading {
        headers.remove(header::UPGRADE);
    }
}

pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// A replica's response body, holding its slot until it ends or drops.
struct Held<B> {
    body: B,
    _slot: InFlight,
}

impl<B> hyper::body::Body for Held<B>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Gateway {
    /// Forwards `request` (whose path and query are kept) to a replica of
    /// `instance`. `client` is the caller's address, for
    /// `X-Forwarded-For`. Errors before the replica answers come back as
    /// `Err` for the caller to render.
    pub async fn proxy(
        &self,
        instance: &Instance,
        mut request: Request<axum::body::Body>,
        client: Option<SocketAddr>,
    ) -> Result<Response<axum::body::Body>, InvokeError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + ACTIVATION_WAIT;
        let session = request
            .headers()
            .get(crate::sessions::SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let slot = self
            .acquire(instance, session.as_deref(), deadline, ACTIVATION_WAIT, &[])
            .await
            .inspect_err(|_| self.record(&instance.id, false, started.elapsed()))?;
        let upgrading = is_upgrade(request.headers());
        let downstream_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));

        let (mut parts, body) = request.into_parts();
        // HTTP/2 callers name the host in the URI.
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
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
                Some(earlier) => format!("{earlier}, {}", client.ip()),
                None => client.ip().to_string(),
            };
            if let Ok(value) = HeaderValue::try_from(forwarded) {
                parts.headers.insert("x-forwarded-for", value);
            }
        }
        let host = match host {
            Some(host) => {
                parts.headers.insert("x-forwarded-host", host.clone());
                host
            }
            None => HeaderValue::try_from(slot.address.to_string())
                .map_err(|err| InvokeError::Unreachable(err.to_string()))?,
        };
        parts.headers.insert(header::HOST, host);
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
        // Origin form over HTTP/1.1, whatever the caller spoke.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|err| InvokeError::Unreachable(format!("{err}")))?;
        parts.version = hyper::Version::HTTP_11;
        let upstream = Request::from_parts(parts, body);

        let answer = match downstream_upgrade {
            Some(downstream) => tunnel(slot, upstream, downstream).await,
            None => self
                .proxied
                .send(slot.address, upstream)
                .await
                .map(|response| {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers, false);
                    let body = axum::body::Body::new(Held { body, _slot: slot });
                    Response::from_parts(parts, body)
                })
                .map_err(|err| err.to_string()),
        };
        self.record(
            &instance.id,
            answer
                .as_ref()
                .is_ok_and(|response| !response.status().is_server_error()),
            started.elapsed(),
        );
        answer.map_err(InvokeError::Unreachable)
    }
}

/// Sends an upgrade request on a connection of its own. When the replica
/// switches protocols, a task joins the two upgraded connections until
/// either closes (holding `slot` until then) and the answer is the 101's
/// head; otherwise its answer is passed on.
async fn tunnel(
    slot: InFlight,
    request: Request<axum::body::Body>,
    downstream: hyper::upgrade::OnUpgrade,
) -> Result<Response<axum::body::Body>, String> {
    let connecting = TcpStream::connect(slot.address);
    let stream = tokio::time::timeout(crate::upstream::CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| "connect: the replica did not accept a connection in time".to_owned())?
        .map_err(|err| format!("connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upgrade connection failed");
        }
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|err| err.to_string())?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let _slot = slot;
            splice(downstream, upstream).await;
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, axum::body::Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = axum::body::Body::new(Held { body, _slot: slot });
    Ok(Response::from_parts(parts, body))
}

/// Joins the two sides of an upgraded connection until either closes.
pub(crate) async fn splice(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
        }
        Err(err) => tracing::debug!(error = %err, "upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ] {
            headers.insert(k, HeaderValue::from_static(v));
        }
        let mut plain = headers.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain["x-kept"], "yes");
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers["upgrade"], "websocket");
    }

    #[test]
    fn upgrades_need_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&headers));
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&headers));
    }
}
