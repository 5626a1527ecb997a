//! Webhook deliveries: the store's outbox ([`hangar_store::DueDelivery`])
//! sent to receivers, signed per the Standard Webhooks specification.
//!
//! ```text
//! POST <endpoint url>
//! content-type: application/json
//! webhook-id: dlv_…              (the same on every attempt: receivers dedupe)
//! webhook-timestamp: <unix seconds of this attempt>
//! webhook-signature: v1,<base64 HMAC-SHA256 over "id.timestamp.body">
//!
//! {"type": "agent.scaled", "timestamp": "…", "data": {…, "event_id": "evt_…", "subject": "…"}}
//! ```
//!
//! The key is the endpoint's `whsec_` secret, base64-decoded. A 2xx answer
//! within [`ATTEMPT_TIMEOUT`] delivers; anything else is retried after the
//! next delay of the schedule ([`DEFAULT_SCHEDULE`]: 5 s, 5 min, 30 min,
//! 2 h, 5 h, 10 h, 10 h — about 28 hours), then given up. Attempts run a few
//! at a time; deliveries of one subject to one endpoint go one after the
//! other (the store's order), so a receiver never sees an agent's events out
//! of order.
//!
//! Receivers on loopback, private and link-local addresses are refused
//! unless the operator allows them ([`address`]); a refused attempt is
//! failed at once, not retried: only a change of the server's
//! configuration (and a redelivery) can make it succeed.
//!
//! Layout: this file sends and schedules; [`address`] decides which
//! addresses a delivery may connect to.

pub mod address;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hangar_store::{Attempt, DueDelivery, Store};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use address::AddressPolicy;
use address::Receivers;

/// The delays between attempts (after the first, which is at once).
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How long a receiver has to answer one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Deliveries taken per round.
const BATCH: u32 = 32;

/// The Standard Webhooks signature of `body`: `v1,<base64 HMAC-SHA256>` over
/// `"{id}.{timestamp}.{body}"` with the secret's key. `None` when the secret
/// is not `whsec_` + base64 (the API accepts no other).
#[must_use]
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The body of a delivery.
#[must_use]
pub fn payload(delivery: &DueDelivery) -> Vec<u8> {
    let event = &delivery.event;
    let mut data = event.data.clone();
    if let Some(object) = data.as_object_mut() {
        object.insert("event_id".to_owned(), event.id.clone().into());
        object.insert("subject".to_owned(), event.subject.clone().into());
    }
    serde_json::json!({
        "type": event.kind,
        "timestamp": event.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// Sends the outbox's due deliveries. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    store: Store,
    client: Client<HttpsConnector<Receivers>, axum::body::Body>,
    policy: AddressPolicy,
    schedule: Arc<Vec<Duration>>,
    wake: Arc<Notify>,
    poll: Duration,
}

impl Deliverer {
    /// A deliverer over `store` retrying after each delay of `schedule`,
    /// connecting to the receiver addresses `policy` allows.
    #[must_use]
    pub fn new(store: Store, schedule: Vec<Duration>, policy: AddressPolicy) -> Self {
        let connector = Receivers::new(policy, |tcp| {
            tcp.set_connect_timeout(Some(Duration::from_secs(5)));
            tcp.enforce_http(false);
        });
        // Receivers are usually HTTPS: the system's trusted roots (and
        // SSL_CERT_FILE / SSL_CERT_DIR, for a private CA) decide whom to
        // trust; a system without any falls back to Mozilla's. Plain
        // http:// endpoints keep working.
        let roots = HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "no system root certificates; trusting Mozilla's for webhook deliveries");
                HttpsConnectorBuilder::new().with_webpki_roots()
            });
        let https = roots
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Self {
            store,
            client: Client::builder(TokioExecutor::new()).build(https),
            policy,
            schedule: Arc::new(schedule),
            wake: Arc::new(Notify::new()),
            poll: Duration::from_millis(500),
        }
    }

    /// The receiver addresses this deliverer connects to.
    #[must_use]
    pub fn policy(&self) -> AddressPolicy {
        self.policy
    }

    /// Looks at the outbox now (an event was just recorded).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers until `shutdown`: every half second, or when woken.
    ///
    /// Once `shutdown` is cancelled no delivery is taken; attempts under
    /// way get `drain` to end, as they would (delivered, or failed and
    /// scheduled). One still waiting for its receiver then is recorded as
    /// an attempt cut off by the shutdown, due again at once: the next
    /// start (or another server) sends it again under the same
    /// `webhook-id`, so a receiver that did get it dedupes. No delivery
    /// is left leased to a stopped process, none is lost. The task ends
    /// then.
    pub fn start(
        self,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let sent = match self.round_until(&shutdown, drain).await {
                    Ok(sent) => sent,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the webhook outbox");
                        0
                    }
                };
                if sent < BATCH as usize {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.poll) => {}
                    }
                }
            }
            tracing::info!("webhook deliverer stopped");
        })
    }

    /// One round: takes due deliveries and attempts them, concurrently.
    /// Returns how many were attempted.
    pub async fn round(&self) -> Result<usize, hangar_store::StoreError> {
        self.round_until(&CancellationToken::new(), Duration::ZERO)
            .await
    }

    /// [`Deliverer::round`], its attempts cut off `drain` after `shutdown`.
    async fn round_until(
        &self,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> Result<usize, hangar_store::StoreError> {
        let lease = ATTEMPT_TIMEOUT + Duration::from_secs(15);
        let due = self
            .store
            .take_due_deliveries(BATCH, i64::try_from(lease.as_millis()).unwrap_or(60_000))
            .await?;
        let count = due.len();
        let mut attempts = tokio::task::JoinSet::new();
        for delivery in due {
            let this = self.clone();
            let shutdown = shutdown.clone();
            attempts.spawn(async move {
                let drained = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(drain).await;
                };
                let outcome = tokio::select! {
                    outcome = this.attempt(&delivery) => outcome,
                    () = drained => {
                        tracing::info!(delivery = %delivery.delivery.id, url = %delivery.url,
                            "webhook attempt cut off by shutdown; due again at once");
                        Attempt::Failed {
                            status: None,
                            error: "the server stopped during this attempt".to_owned(),
                            retry_at: Some(chrono::Utc::now().timestamp_millis()),
                        }
                    }
                };
                if let Err(err) = this.store.record_attempt(&delivery.delivery.id, &outcome).await {
                    tracing::warn!(delivery = %delivery.delivery.id, error = %err, "cannot record a webhook attempt");
                }
            });
        }
        while attempts.join_next().await.is_some() {}
        Ok(count)
    }

    async fn attempt(&self, delivery: &DueDelivery) -> Attempt {
        let body = payload(delivery);
        let timestamp = chrono::Utc::now().timestamp();
        let id = &delivery.delivery.id;
        let failed = |status: Option<u16>, error: String| {
            let made = delivery.delivery.attempts as usize + 1;
            let retry_at = self.schedule.get(made - 1).map(|delay| {
                chrono::Utc::now().timestamp_millis()
                    + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4)
            });
            tracing::info!(delivery = %id, url = %delivery.url, attempt = made, %error, "webhook attempt failed");
            Attempt::Failed {
                status,
                error,
                retry_at,
            }
        };
        let Some(signature) = sign(&delivery.secret, id, timestamp, &body) else {
            return failed(None, "the endpoint's secret is not a whsec_ key".to_owned());
        };
        let request = axum::http::Request::post(delivery.url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", "hangar-webhooks")
            .header("webhook-id", id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(axum::body::Body::from(body));
        let request = match request {
            Ok(request) => request,
            Err(err) => return failed(None, format!("bad endpoint URL: {err}")),
        };
        let sent = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read (and drop) the answer so the connection can be reused.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match sent {
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered(status.as_u16()),
            Ok(Ok(status)) => failed(
                Some(status.as_u16()),
                format!("the receiver answered {status}"),
            ),
            Ok(Err(err)) => match address::refusal(&err) {
                // Given up at once: retrying cannot help until the
                // operator changes the server's configuration.
                Some(refused) => {
                    tracing::info!(delivery = %id, url = %delivery.url, %refused, "webhook delivery refused");
                    Attempt::Failed {
                        status: None,
                        error: refused.to_string(),
                        retry_at: None,
                    }
                }
                None => failed(None, format!("cannot reach the receiver: {err}")),
            },
            Err(_) => failed(
                None,
                format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks reference implementations.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("not-a-secret", "x", 1, b""), None);
    }

    /// A receiver that takes requests and never answers; counts them.
    async fn silent_receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = got.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                held.push(tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 64 << 10];
                    let mut seen = Vec::new();
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            seen.clear();
                        }
                    }
                }));
            }
        });
        (url, got)
    }

    /// A receiver that answers every request 204; counts them.
    async fn answering_receiver() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = got.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 << 10];
                    let mut seen = Vec::new();
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Each delivery's body is small and follows its
                        // head at once: a request ends with its JSON.
                        if seen.ends_with(b"}") {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            seen.clear();
                            let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
                            if socket.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        (port, got)
    }

    #[tokio::test]
    async fn receivers_on_loopback_are_refused_unless_allowed_even_by_name() {
        let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Sqlite).await;
        let store = db.store.clone();
        let org = store
            .bootstrap(None)
            .await
            .expect("bootstrap")
            .organization
            .id;
        let (port, got) = answering_receiver().await;
        // A literal address, a name that resolves to it, and the IPv6 form
        // of it that the kernel connects to the IPv4 listener.
        let urls = [
            (
                format!("http://127.0.0.1:{port}/hook"),
                "refused: 127.0.0.1 is a loopback address",
            ),
            (
                format!("http://localhost:{port}/hook"),
                "refused: localhost resolves to ",
            ),
            (
                format!("http://[::ffff:127.0.0.1]:{port}/hook"),
                "refused: ::ffff:127.0.0.1 is a loopback address",
            ),
        ];
        let mut hooks = Vec::new();
        for (url, _) in &urls {
            let (hook, _) = store
                .create_webhook(hangar_store::NewWebhook {
                    organization_id: org.clone(),
                    url: url.clone(),
                    events: Vec::new(),
                    description: None,
                    secret: None,
                })
                .await
                .expect("webhook");
            hooks.push(hook.id);
        }
        store
            .record_event(&org, "agent.deployed", "agt_a", serde_json::json!({}))
            .await
            .expect("event");

        let refusing = Deliverer::new(
            store.clone(),
            DEFAULT_SCHEDULE.to_vec(),
            AddressPolicy::PublicOnly,
        );
        assert_eq!(refusing.round().await.expect("round"), urls.len());
        for (hook, (url, reason)) in hooks.iter().zip(&urls) {
            let deliveries = store
                .list_deliveries(&org, hook, None, 10)
                .await
                .expect("deliveries");
            assert_eq!(deliveries.len(), 1, "{url}");
            let refused = &deliveries[0];
            // Given up at once: no retry can succeed under this policy.
            assert_eq!(
                refused.status,
                hangar_core::events::DeliveryStatus::Failed,
                "{url}: {refused:?}"
            );
            assert_eq!(refused.attempts, 1);
            let error = refused.last_error.as_deref().unwrap_or_default();
            assert!(error.starts_with(reason), "{url}: {error}");
            assert!(
                error.ends_with("start the server with --webhook-allow-private to allow it"),
                "{error}"
            );
        }
        assert_eq!(
            got.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a refused delivery reached the receiver"
        );
        assert!(store
            .take_due_deliveries(10, 60_000)
            .await
            .expect("due")
            .is_empty());

        // The operator allows private receivers: the same URLs deliver.
        store
            .record_event(&org, "agent.deployed", "agt_b", serde_json::json!({}))
            .await
            .expect("event");
        let allowing = Deliverer::new(
            store.clone(),
            DEFAULT_SCHEDULE.to_vec(),
            AddressPolicy::AllowPrivate,
        );
        assert_eq!(allowing.round().await.expect("round"), urls.len());
        for (hook, (url, _)) in hooks.iter().zip(&urls) {
            let deliveries = store
                .list_deliveries(&org, hook, None, 10)
                .await
                .expect("deliveries");
            assert_eq!(
                deliveries[0].status,
                hangar_core::events::DeliveryStatus::Delivered,
                "{url}: {:?}",
                deliveries[0]
            );
        }
        assert_eq!(got.load(std::sync::atomic::Ordering::SeqCst), urls.len());
    }

    #[tokio::test]
    async fn an_attempt_cut_off_by_shutdown_is_due_again_at_once_under_its_id() {
        let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Sqlite).await;
        let store = db.store.clone();
        let org = store
            .bootstrap(None)
            .await
            .expect("bootstrap")
            .organization
            .id;
        let (url, got) = silent_receiver().await;
        let (hook, _) = store
            .create_webhook(hangar_store::NewWebhook {
                organization_id: org.clone(),
                url,
                events: Vec::new(),
                description: None,
                secret: None,
            })
            .await
            .expect("webhook");
        store
            .record_event(&org, "agent.deployed", "agt_x", serde_json::json!({}))
            .await
            .expect("event");
        let shutdown = CancellationToken::new();
        let deliverer = Deliverer::new(
            store.clone(),
            DEFAULT_SCHEDULE.to_vec(),
            AddressPolicy::AllowPrivate,
        );
        let task = deliverer.clone().start(shutdown.clone(), Duration::ZERO);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never sent");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.expect("the deliverer ends at shutdown");
        let deliveries = store
            .list_deliveries(&org, &hook.id, None, 10)
            .await
            .expect("deliveries");
        assert_eq!(deliveries.len(), 1);
        let cut = &deliveries[0];
        assert_eq!(
            cut.status,
            hangar_core::events::DeliveryStatus::Pending,
            "{cut:?}"
        );
        assert_eq!(cut.attempts, 1);
        assert_eq!(
            cut.last_error.as_deref(),
            Some("the server stopped during this attempt")
        );
        // Not leased to the stopped deliverer, not pushed down the
        // schedule: the next one takes it now, under the same ID.
        let due = store.take_due_deliveries(10, 60_000).await.expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].delivery.id, cut.id);
    }
}
