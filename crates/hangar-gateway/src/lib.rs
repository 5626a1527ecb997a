//! The gateway: Hangar's data plane. So far, synchronous invocations.
//!
//! ```text
//! POST /v1/agents/:id/invoke {input, options}
//!   → a ready replica of the agent's default instance, the one with the
//!     fewest requests in flight (ties go round the rotation)
//!   → POST http://<replica><invoke_path> with `input` as the JSON body
//!   ← a JSON object with `output` (and `usage`): taken as such; any other
//!     JSON: the output; text: the output as a string
//! ```
//!
//! Failures are the agent's or the wait's, told apart for the caller
//! ([`InvokeError`]): a non-2xx answer, an answer that is not JSON or text,
//! a replica that closed the connection (crashed mid-request), or the
//! caller's `options.timeout` running out.
//!
//! Async invocations are durable jobs in the store, run by [`jobs::JobRunner`].
//!
//! Not built yet (see the gateway issue): streaming (SSE), instance
//! URLs, cold start, autoscaling, per-replica concurrency limits and request
//! metrics.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hangar_controller::Controller;
use hangar_core::model::Instance;
use serde_json::Value;

pub mod jobs;

/// The most of an agent's error answer kept for the caller.
const ERROR_BODY_LIMIT: usize = 4096;

/// How an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No replica of the instance is ready.
    #[error("no replica is ready")]
    NoReplica,
    /// The caller's time limit ran out.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with a non-2xx status.
    #[error("the agent answered {status}")]
    AgentStatus {
        /// Its HTTP status.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// The agent's answer could not be read.
    #[error("the agent's answer could not be read: {0}")]
    BadResponse(String),
    /// The replica could not be reached or dropped the connection.
    #[error("the replica could not be reached: {0}")]
    Unreachable(String),
}

/// A successful invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invoked {
    /// What the agent returned.
    pub output: Value,
    /// The agent's `usage`, if it reported one.
    pub usage: Option<Value>,
    /// The replica that served it.
    pub replica_id: String,
    /// From picking a replica to the end of its answer.
    pub latency: Duration,
}

/// See the module docs. One per server.
pub struct Gateway {
    controller: Controller,
    client: reqwest::Client,
    /// Requests in flight per replica.
    outstanding: Mutex<HashMap<String, usize>>,
    /// Breaks ties between equally loaded replicas.
    turn: AtomicUsize,
}

/// Counts a request against a replica while it is in flight.
struct InFlight<'a> {
    gateway: &'a Gateway,
    replica: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut outstanding = self.gateway.outstanding();
        if let Some(count) = outstanding.get_mut(&self.replica) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                outstanding.remove(&self.replica);
            }
        }
    }
}

impl Gateway {
    /// A gateway routing to `controller`'s replicas.
    pub fn new(controller: Controller) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(32)
            .build()
            .unwrap_or_default();
        Self {
            controller,
            client,
            outstanding: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
        }
    }

    fn outstanding(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The ready replica with the fewest requests in flight, counted as one
    /// more until the returned guard drops.
    fn pick(&self, instance_id: &str) -> Option<(SocketAddr, InFlight<'_>)> {
        let ready = self.controller.ready_replicas(instance_id);
        if ready.is_empty() {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % ready.len();
        let mut outstanding = self.outstanding();
        let (id, address) = (0..ready.len())
            .map(|i| &ready[(start + i) % ready.len()])
            .min_by_key(|(id, _)| outstanding.get(id).copied().unwrap_or(0))?
            .clone();
        *outstanding.entry(id.clone()).or_insert(0) += 1;
        Some((
            address,
            InFlight {
                gateway: self,
                replica: id,
            },
        ))
    }

    /// Invokes `instance` with `input` (see the module docs), giving up
    /// after `timeout`. `headers` are passed to the agent.
    pub async fn invoke(
        &self,
        instance: &Instance,
        input: &Value,
        timeout: Duration,
        headers: &BTreeMap<String, String>,
    ) -> Result<Invoked, InvokeError> {
        let started = Instant::now();
        let (address, in_flight) = self.pick(&instance.id).ok_or(InvokeError::NoReplica)?;
        let url = format!("http://{address}{}", instance.config.invoke_path);
        let mut request = self.client.post(url).json(input).timeout(timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|err| {
            if err.is_timeout() {
                InvokeError::Timeout(timeout)
            } else {
                InvokeError::Unreachable(err.to_string())
            }
        })?;
        let status = response.status();
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let left = timeout.saturating_sub(started.elapsed());
        let body = tokio::time::timeout(left, response.bytes())
            .await
            .map_err(|_| InvokeError::Timeout(timeout))?
            .map_err(|err| InvokeError::Unreachable(err.to_string()))?;
        let replica_id = in_flight.replica.clone();
        drop(in_flight);
        if !status.is_success() {
            let mut text = String::from_utf8_lossy(&body).into_owned();
            if text.len() > ERROR_BODY_LIMIT {
                let mut cut = ERROR_BODY_LIMIT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            return Err(InvokeError::AgentStatus {
                status: status.as_u16(),
                body: text,
            });
        }
        let (output, usage) = read_answer(&body, is_json)?;
        Ok(Invoked {
            output,
            usage,
            replica_id,
            latency: started.elapsed(),
        })
    }
}

/// The agent contract: a JSON object with `output` (and optional `usage`)
/// is taken as such; any other JSON is the output; text is the output as a
/// string.
fn read_answer(body: &[u8], is_json: bool) -> Result<(Value, Option<Value>), InvokeError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut object)) if object.contains_key("output") => {
            let output = object.remove("output").unwrap_or(Value::Null);
            Ok((output, object.remove("usage")))
        }
        Ok(other) => Ok((other, None)),
        Err(err) if is_json => Err(InvokeError::BadResponse(format!(
            "it says it is JSON but is not: {err}"
        ))),
        Err(_) => match std::str::from_utf8(body) {
            Ok(text) => Ok((Value::String(text.to_owned()), None)),
            Err(_) => Err(InvokeError::BadResponse(
                "neither JSON nor UTF-8 text".to_owned(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_agent_contract() {
        let (output, usage) =
            read_answer(br#"{"output": {"a": 1}, "usage": {"tokens": 3}}"#, true).expect("ok");
        assert_eq!(output, serde_json::json!({"a": 1}));
        assert_eq!(usage, Some(serde_json::json!({"tokens": 3})));
        let (output, usage) = read_answer(br#"{"answer": 42}"#, true).expect("ok");
        assert_eq!(output, serde_json::json!({"answer": 42}));
        assert_eq!(usage, None);
        let (output, _) = read_answer(b"plain words", false).expect("ok");
        assert_eq!(output, Value::String("plain words".to_owned()));
        assert!(read_answer(b"{not json", true).is_err());
        assert!(read_answer(&[0xff, 0xfe], false).is_err());
    }
}
