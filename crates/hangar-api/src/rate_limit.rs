//! Per-API-key rate limiting: one token bucket per key, so one client's
//! loop cannot take the whole server from every other client.
//!
//! A bucket holds `burst` requests and refills at the rate; a request
//! that finds it empty answers 429 `RATE_LIMITED` with `Retry-After` (whole
//! seconds until the next request is taken) without reaching its handler.
//! The buckets are [`governor`]'s GCRA — one timestamp per key, no refill
//! task — keyed by the API key's ID. A request that carries a stream token
//! counts against the key that minted the token.
//!
//! What it does not limit: requests without a key (they answer 401 in their
//! handler, or need none: `/healthz`, signed upload URLs), and instance URLs
//! (`<name>.<base domain>`, public and answered by the agent): the layer sits
//! inside the one that takes those away (see [`crate::app`]).
//!
//! Memory stays bounded: only a key that authenticated gets a bucket, and
//! every [`SWEEP_EVERY`] checks the buckets that have refilled — keys that
//! stopped sending, indistinguishable from new ones — are dropped.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::AppState;

/// How fast one API key may send requests: `count` per `unit`, in bursts
/// of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per `unit`, sustained.
    pub count: NonZeroU32,
    /// The unit of time `count` is per (a second, a minute, an hour).
    pub unit: Duration,
    /// Requests that may come at once after a quiet spell (the bucket's size).
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    /// 50 requests per second in bursts of 100: far above what a person or
    /// a well-behaved client sends, low enough that one runaway loop leaves
    /// the server to the others.
    fn default() -> Self {
        Self {
            count: const { NonZeroU32::new(50).expect("non-zero") },
            unit: Duration::from_secs(1),
            burst: const { NonZeroU32::new(100).expect("non-zero") },
        }
    }
}

impl RateLimit {
    /// The bucket's quota: one request back every `unit / count`.
    fn quota(&self) -> Quota {
        let every = (self.unit / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.burst)
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.unit.as_secs() {
            1 => "second".to_owned(),
            60 => "minute".to_owned(),
            3600 => "hour".to_owned(),
            _ => format!("{} ms", self.unit.as_millis()),
        };
        write!(f, "{} per {unit}, in bursts of {}", self.count, self.burst)
    }
}

/// Checks between two sweeps of refilled buckets.
const SWEEP_EVERY: u64 = 1024;

/// Every key's bucket.
pub(crate) struct KeyBuckets<C: Clock = DefaultClock> {
    limit: RateLimit,
    buckets: RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    checks: AtomicU64,
}

impl KeyBuckets {
    /// Buckets of `limit` on the monotonic clock.
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock> KeyBuckets<C> {
    fn with_clock(limit: RateLimit, clock: C) -> Self {
        Self {
            limit,
            buckets: RateLimiter::new(limit.quota(), DefaultKeyedStateStore::default(), clock),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a request from `key_id`'s bucket; `Err` with how long until
    /// the bucket has one again.
    fn take(&self, key_id: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets
            .check_key(&key_id.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }

    /// The 429 for a request `wait` too early.
    fn refusal(&self, wait: Duration) -> ApiError {
        // Retry-After is whole seconds: round up, so a client that waits
        // that long finds a request in the bucket.
        let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::RateLimited {
            retry_after_seconds: whole.max(1),
            limit: self.limit.to_string(),
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.len()
    }
}

/// What the layer holds: the API's state (to resolve keys) and the buckets.
#[derive(Clone)]
pub(crate) struct Limiter {
    pub state: AppState,
    pub buckets: Arc<KeyBuckets>,
}

/// Middleware: resolves the request's API key (the handler's [`Caller`]
/// then reuses it) and takes a request from its bucket, or answers 429.
pub(crate) async fn per_key(
    State(limiter): State<Limiter>,
    request: Request,
    next: Next,
) -> Response {
    if crate::hop::forwarded(&limiter.state, request.headers()) {
        // Counted where it arrived.
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let key_id = if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        // A key that does not authenticate is not limited here: its
        // handler answers 401 (or needs no key at all).
        Caller::from_request_parts(&mut parts, &limiter.state)
            .await
            .ok()
            .map(|caller| caller.0.key_id)
    } else {
        crate::routes::tokens::minting_key(&limiter.state.config.signing_key, parts.uri.query())
    };
    if let Some(key_id) = key_id {
        if let Err(wait) = limiter.buckets.take(&key_id) {
            return limiter.buckets.refusal(wait).into_response();
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Operations that take no API key (the signature in the URL is the
/// authority), so no bucket: `(path, method)`.
const KEYLESS: &[(&str, &str)] = &[("/v1/uploads/{id}/content", "put")];

/// Documents the 429 on every operation that takes an API key, and says
/// that the keyless ones take none.
pub(crate) fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::ResponseBuilder;

    let refusal = ResponseBuilder::new()
        .description(
            "RATE_LIMITED (+ `retry_after_seconds`): this API key sent more requests than \
             its rate allows (by default 50 per second in bursts of 100)",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Whole seconds until the key's next request is taken"))
                .build(),
        )
        .build();
    for (path, item) in &mut doc.paths.paths {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            if KEYLESS.contains(&(path.as_str(), method)) {
                operation.security = Some(Vec::new());
            } else {
                operation
                    .responses
                    .responses
                    .insert("429".to_owned(), refusal.clone().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit {
            count: NonZeroU32::new(per_second).expect("non-zero"),
            unit: Duration::from_secs(1),
            burst: NonZeroU32::new(burst).expect("non-zero"),
        }
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_for_the_refill_and_others_are_not_touched() {
        let clock = FakeRelativeClock::default();
        let buckets = KeyBuckets::with_clock(limit(2, 3), clock.clone());
        for _ in 0..3 {
            buckets.take("key_a").expect("within the burst");
        }
        let wait = buckets.take("key_a").expect_err("the bucket is empty");
        assert_eq!(wait, Duration::from_millis(500), "one request per 1/2 s");
        buckets
            .take("key_b")
            .expect("another key has its own bucket");

        clock.advance(Duration::from_millis(499));
        assert!(buckets.take("key_a").is_err(), "not refilled yet");
        clock.advance(Duration::from_millis(1));
        buckets.take("key_a").expect("one request refilled");
        assert!(buckets.take("key_a").is_err(), "and only one");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let buckets = KeyBuckets::with_clock(limit(1, 1), FakeRelativeClock::default());
        let body = |wait| buckets.refusal(wait).body();
        assert_eq!(
            body(Duration::from_millis(1))["error"]["retry_after_seconds"],
            1
        );
        assert_eq!(body(Duration::ZERO)["error"]["retry_after_seconds"], 1);
        assert_eq!(
            body(Duration::from_millis(2001))["error"]["retry_after_seconds"],
            3
        );
        assert_eq!(body(Duration::ZERO)["error"]["code"], "RATE_LIMITED");
        assert!(
            body(Duration::ZERO)["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("1 per second, in bursts of 1")),
            "the message says the limit"
        );
    }

    #[test]
    fn slow_rates_refill_one_request_per_unit_over_count() {
        let clock = FakeRelativeClock::default();
        let two_an_hour = RateLimit {
            count: NonZeroU32::new(2).expect("non-zero"),
            unit: Duration::from_secs(3600),
            burst: NonZeroU32::new(1).expect("non-zero"),
        };
        assert_eq!(two_an_hour.to_string(), "2 per hour, in bursts of 1");
        let buckets = KeyBuckets::with_clock(two_an_hour, clock.clone());
        buckets.take("key_a").expect("the burst");
        let wait = buckets.take("key_a").expect_err("empty");
        assert_eq!(wait, Duration::from_secs(1800));
        assert_eq!(
            buckets.refusal(wait).body()["error"]["retry_after_seconds"],
            1800
        );
    }

    #[test]
    fn keys_that_stop_sending_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let buckets = KeyBuckets::with_clock(limit(10, 10), clock.clone());
        for n in 0..SWEEP_EVERY - 1 {
            buckets.take(&format!("key_{n}")).expect("first request");
        }
        assert_eq!(
            buckets.keys(),
            usize::try_from(SWEEP_EVERY - 1).expect("fits")
        );
        // A full bucket refills in burst / rate = 1 s; after that the idle
        // keys are indistinguishable from new ones and the next sweep drops them.
        clock.advance(Duration::from_secs(2));
        buckets.take("key_busy").expect("a request");
        assert_eq!(buckets.keys(), 1, "only the key still sending");
    }
}
