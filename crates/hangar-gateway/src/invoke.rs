//! Synchronous invocations: one request to a replica's invoke path, its
//! whole answer read into the agent contract's `output` and `usage`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response};
use bytes::Bytes;
use hangar_core::model::Instance;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::upstream::UpstreamBody;
use crate::{Gateway, InFlight};

/// Replicas tried for one invocation when connections are refused.
const CONNECT_ATTEMPTS: usize = 3;

/// The most of an agent's error answer kept for the caller.
const ERROR_BODY_LIMIT: usize = 4096;

/// The largest answer read from an agent (an output this size is already
/// far past what a JSON envelope should carry).
pub const ANSWER_LIMIT: usize = 64 << 20;

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
    /// The agent's answer could not be read; the reason is in our words,
    /// for the caller.
    #[error("the agent's answer could not be read: {0}")]
    BadResponse(String),
    /// The replica could not be reached or dropped the connection; the
    /// cause is the connection's (internal text: logged, not answered, see
    /// [`crate::error`]).
    #[error("the replica could not be reached: {0}")]
    Unreachable(String),
    /// Every replica is at its concurrency limit and the queue is full.
    #[error("every replica is busy and the queue is full")]
    Overloaded,
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

/// An answer whose headers arrived, its body still to read.
pub(crate) struct Answer {
    pub(crate) response: Response<UpstreamBody>,
    pub(crate) in_flight: InFlight,
}

impl Answer {
    /// Whether the answer says it is of this media type.
    pub(crate) fn is(&self, media_type: &str) -> bool {
        self.response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(media_type))
    }
}

impl Gateway {
    /// Sends `input` to a ready replica of `instance` and waits for the
    /// answer's headers. A non-2xx answer is read (its start) into
    /// [`InvokeError::AgentStatus`].
    pub(crate) async fn post_input(
        &self,
        instance: &Instance,
        input: &Value,
        headers: &BTreeMap<String, String>,
        accept: &'static str,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Answer, InvokeError> {
        // A Value always serializes.
        let body = Bytes::from(serde_json::to_vec(input).unwrap_or_default());
        // A replica that refuses the connection never saw the request: it
        // goes to another (a replica killed a moment ago is still in the
        // rotation until its exit is noticed).
        let mut refused = Vec::new();
        // A session travels as the header the agent is given too, so a
        // job (whose headers are stored) keeps its session.
        let session = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(crate::sessions::SESSION_HEADER))
            .map(|(_, value)| value.as_str());
        let (response, in_flight) = loop {
            let in_flight = self
                .acquire(instance, session, deadline, timeout, &refused)
                .await?;
            let mut request = Request::builder()
                .method(Method::POST)
                // Origin form, as a client speaks to a server (not a proxy).
                .uri(instance.config.invoke_path.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, accept);
            for (name, value) in headers {
                // Checked by the API; anything else is skipped, not sent.
                if let (Ok(name), Ok(value)) = (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    request = request.header(name, value);
                }
            }
            // The replica's address, unless the caller named a host.
            if !request
                .headers_ref()
                .is_some_and(|h| h.contains_key(header::HOST))
            {
                request = request.header(header::HOST, in_flight.address.to_string());
            }
            let request = request
                .body(Full::new(body.clone()))
                .map_err(|err| InvokeError::Unreachable(err.to_string()))?;
            match self.upstreams.send(in_flight.address, request).await {
                Ok(response) => break (response, in_flight),
                Err(err) if err.is_connect() && refused.len() < CONNECT_ATTEMPTS => {
                    tracing::debug!(replica = %in_flight.replica, error = %err, "connection refused; trying another replica");
                    refused.push(in_flight.replica.clone());
                }
                Err(err) => return Err(InvokeError::Unreachable(err.to_string())),
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = Limited::new(response.into_body(), ERROR_BODY_LIMIT)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(InvokeError::AgentStatus {
                status: status.as_u16(),
                body: truncated(&body),
            });
        }
        Ok(Answer {
            response,
            in_flight,
        })
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
        let deadline = tokio::time::Instant::now() + timeout;
        let read = async {
            let answer = self
                .post_input(
                    instance,
                    input,
                    headers,
                    "application/json",
                    deadline,
                    timeout,
                )
                .await?;
            let is_json = answer.is("json");
            let Answer {
                response,
                in_flight,
            } = answer;
            let body = Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map_err(|err| read_error(&*err))?
                .to_bytes();
            Ok::<_, InvokeError>((body, is_json, in_flight.replica.clone()))
        };
        let answered = async {
            let (body, is_json, replica_id) = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| InvokeError::Timeout(timeout))??;
            let (output, usage) = read_answer(&body, is_json)?;
            Ok(Invoked {
                output,
                usage,
                replica_id,
                latency: started.elapsed(),
            })
        }
        .await;
        self.record(&instance.id, answered.is_ok(), started.elapsed());
        answered
    }
}

/// An error reading an answer's body: too large, or the connection broke.
pub(crate) fn read_error(err: &(dyn std::error::Error + 'static)) -> InvokeError {
    if err.is::<http_body_util::LengthLimitError>() {
        InvokeError::BadResponse(format!("the answer is larger than {ANSWER_LIMIT} bytes"))
    } else {
        InvokeError::Unreachable(format!("the answer broke off: {err}"))
    }
}

/// The start of an agent's error answer, as text.
fn truncated(body: &Bytes) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > ERROR_BODY_LIMIT {
        let mut cut = ERROR_BODY_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The agent contract: a JSON object with `output` (and optional `usage`)
/// is taken as such; any other JSON is the output; text is the output as a
/// string.
pub(crate) fn read_answer(
    body: &[u8],
    is_json: bool,
) -> Result<(Value, Option<Value>), InvokeError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut object)) if object.contains_key("output") => {
            let output = object.remove("output").unwrap_or(Value::Null);
            Ok((output, object.remove("usage")))
        }
        Ok(other) => Ok((other, None)),
        Err(err) if is_json => {
            tracing::debug!(error = %err, "an agent's JSON answer does not parse");
            Err(InvokeError::BadResponse(
                "it says it is JSON but is not".to_owned(),
            ))
        }
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
