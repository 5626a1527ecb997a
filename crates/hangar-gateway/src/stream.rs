//! Streaming invocations: the agent's answer re-framed, as it arrives, into
//! the Agents API's Server-Sent Events:
//!
//! ```text
//! data: {"type":"start","request_id":"req_…"}
//! data: {"type":"chunk","content":"In"}
//! data: {"type":"chunk","content":" silicon"}
//! data: {"type":"done","usage":{…}}
//! ```
//!
//! What the agent may answer (the agent contract):
//! - SSE (`text/event-stream`): each event's `data` is a chunk. JSON data
//!   with a `content` field gives that content; JSON with only `usage` (or
//!   `"type":"done"`) gives the `done` event's usage; `[DONE]` ends the
//!   stream; other JSON is the content as is; anything else is text.
//! - Chunked text (any other `text/*`): each piece as it arrives is a chunk
//!   (never splitting a UTF-8 character).
//! - JSON: read whole, like a sync invoke; its `output` is one chunk.
//!
//! A failure after `start` is an `{"type":"error","error":{code, message}}`
//! event, and the stream ends. The stream pulls from the agent only as the
//! caller reads (back-pressure is TCP's, end to end), and dropping it — the
//! caller went away — drops the upstream connection, which the agent sees
//! as a disconnect.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hangar_core::model::Instance;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::Classify;
use crate::invoke::{read_answer, read_error, Answer, InvokeError, ANSWER_LIMIT};
use crate::upstream::UpstreamBody;
use crate::{Gateway, InFlight};

/// How the agent's answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Sse,
    Text,
    Whole { is_json: bool },
}

/// Turns the agent's bytes into events. Pure, so the framing is tested
/// without a network.
#[derive(Debug)]
struct Reframer {
    framing: Framing,
    /// Bytes not yet making a whole SSE event, a whole UTF-8 character, or
    /// (for a whole answer) everything so far.
    pending: Vec<u8>,
    usage: Option<Value>,
    /// The agent said `[DONE]` (or `"type":"done"`).
    finished: bool,
}

fn chunk(content: Value) -> Value {
    json!({"type": "chunk", "content": content})
}

impl Reframer {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            pending: Vec::new(),
            usage: None,
            finished: false,
        }
    }

    /// The events in `bytes` (with what was pending).
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Value>, InvokeError> {
        if self.finished {
            return Ok(Vec::new());
        }
        self.pending.extend_from_slice(bytes);
        match self.framing {
            Framing::Sse => Ok(self.sse_events(false)),
            Framing::Text => Ok(self.text_chunk(false).into_iter().collect()),
            Framing::Whole { .. } => {
                if self.pending.len() > ANSWER_LIMIT {
                    return Err(InvokeError::BadResponse(format!(
                        "the answer is larger than {ANSWER_LIMIT} bytes"
                    )));
                }
                Ok(Vec::new())
            }
        }
    }

    /// The last events, `done` included, once the agent's answer ended.
    fn finish(&mut self) -> Result<Vec<Value>, InvokeError> {
        let mut events = match self.framing {
            Framing::Sse => self.sse_events(true),
            Framing::Text => self.text_chunk(true).into_iter().collect(),
            Framing::Whole { is_json } => {
                let (output, usage) = read_answer(&self.pending, is_json)?;
                self.usage = usage;
                vec![chunk(output)]
            }
        };
        events.push(json!({"type": "done", "usage": self.usage.take()}));
        Ok(events)
    }

    fn sse_events(&mut self, at_end: bool) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let end = find_event_end(&self.pending);
            let (event, rest) = match end {
                Some((event_end, next)) => (self.pending[..event_end].to_vec(), next),
                None if at_end && !self.pending.is_empty() => {
                    (std::mem::take(&mut self.pending), 0)
                }
                None => break,
            };
            self.pending.drain(..rest);
            if let Some(event) = self.sse_event(&event) {
                events.push(event);
            }
            if self.finished {
                self.pending.clear();
                break;
            }
        }
        events
    }

    /// One SSE event's `data` lines, read as a chunk (or the end).
    fn sse_event(&mut self, event: &[u8]) -> Option<Value> {
        let text = String::from_utf8_lossy(event);
        let mut data: Option<String> = None;
        for line in text.lines() {
            let value = match line.strip_prefix("data") {
                Some("") => "",
                Some(rest) if rest.starts_with(':') => {
                    let rest = &rest[1..];
                    rest.strip_prefix(' ').unwrap_or(rest)
                }
                _ => continue,
            };
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
        let data = data?;
        if data.trim() == "[DONE]" {
            self.finished = true;
            return None;
        }
        match serde_json::from_str::<Value>(&data) {
            Ok(Value::Object(mut object)) => {
                if let Some(usage) = object.remove("usage") {
                    self.usage = Some(usage);
                }
                if object.get("type").and_then(Value::as_str) == Some("done") {
                    self.finished = true;
                    return None;
                }
                match object.remove("content") {
                    Some(content) => Some(chunk(content)),
                    None if object.is_empty() || object.get("type").is_some() => None,
                    None => Some(chunk(Value::Object(object))),
                }
            }
            Ok(other) => Some(chunk(other)),
            Err(_) => Some(chunk(Value::String(data))),
        }
    }

    /// The pending bytes as text, keeping back an unfinished UTF-8
    /// character (unless at the end).
    fn text_chunk(&mut self, at_end: bool) -> Option<Value> {
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(err) if err.error_len().is_none() && !at_end => err.valid_up_to(),
            // Not UTF-8 at all: replaced rather than lost.
            Err(_) => self.pending.len(),
        };
        if valid == 0 {
            return None;
        }
        let bytes: Vec<u8> = self.pending.drain(..valid).collect();
        Some(chunk(Value::String(
            String::from_utf8_lossy(&bytes).into_owned(),
        )))
    }
}

/// Where the first SSE event in `bytes` ends and the next begins (a blank
/// line: `\n\n`, `\r\n\r\n` or `\r\r`).
fn find_event_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < bytes.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if bytes[i..].starts_with(sep) {
                return Some((i, i + sep.len()));
            }
        }
        i += 1;
    }
    None
}

/// One SSE frame of the Agents API.
fn frame(events: &[Value]) -> Bytes {
    let mut out = Vec::new();
    for event in events {
        out.extend_from_slice(b"data: ");
        // A Value always serializes.
        out.extend_from_slice(&serde_json::to_vec(event).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

/// The event for a failure mid-stream: the code the same failure answers
/// with before the start ([`crate::error`]).
fn error_event(err: &InvokeError) -> Value {
    if let Some(cause) = err.internal_cause() {
        tracing::warn!(error = %cause, "a stream broke off");
    }
    json!({"type": "error", "error": {"code": err.class().code, "message": err.public_message()}})
}

/// The state of a stream between polls.
struct Streaming {
    body: Option<UpstreamBody>,
    reframer: Reframer,
    deadline: Instant,
    timeout: Duration,
    /// Counts against the replica until the stream ends or is dropped.
    in_flight: Option<InFlight>,
    start: Option<Value>,
}

impl Gateway {
    /// Invokes `instance` with `input` and streams its answer as SSE frames
    /// (see the module docs). Errors before the agent's answer starts (no
    /// replica, a non-2xx answer, the time limit) come back as `Err`, for
    /// the caller to answer in the API's envelope; later ones are events.
    pub async fn invoke_stream(
        &self,
        instance: &Instance,
        input: &Value,
        timeout: Duration,
        headers: &BTreeMap<String, String>,
        request_id: String,
    ) -> Result<
        impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
        InvokeError,
    > {
        let started = std::time::Instant::now();
        let deadline = Instant::now() + timeout;
        let answer = tokio::time::timeout_at(
            deadline,
            self.post_input(
                instance,
                input,
                headers,
                "text/event-stream, text/plain;q=0.9, application/json;q=0.8",
                deadline,
                timeout,
            ),
        )
        .await
        .map_err(|_| InvokeError::Timeout(timeout))
        .and_then(|answer| answer);
        // Counted when the stream starts: its latency is the time to start.
        self.record(&instance.id, answer.is_ok(), started.elapsed());
        let answer = answer?;
        let framing = if answer.is("text/event-stream") {
            Framing::Sse
        } else if answer.is("json") {
            Framing::Whole { is_json: true }
        } else if answer.is("text/") {
            Framing::Text
        } else {
            Framing::Whole { is_json: false }
        };
        let Answer {
            response,
            in_flight,
        } = answer;
        let state = Streaming {
            body: Some(response.into_body()),
            reframer: Reframer::new(framing),
            deadline,
            timeout,
            in_flight: Some(in_flight),
            start: Some(json!({"type": "start", "request_id": request_id})),
        };
        Ok(futures_util::stream::unfold(
            state,
            |mut state| async move {
                if let Some(start) = state.start.take() {
                    return Some((Ok(frame(&[start])), state));
                }
                loop {
                    let body = state.body.as_mut()?;
                    let next = tokio::time::timeout_at(state.deadline, body.frame()).await;
                    let events = match next {
                        Err(_) => Err(InvokeError::Timeout(state.timeout)),
                        Ok(Some(Ok(piece))) => match piece.into_data() {
                            Ok(data) => state.reframer.feed(&data),
                            // Trailers: nothing to pass on.
                            Err(_) => Ok(Vec::new()),
                        },
                        Ok(Some(Err(err))) => Err(read_error(&err)),
                        Ok(None) => {
                            state.body = None;
                            state.in_flight = None;
                            state.reframer.finish()
                        }
                    };
                    let events = match events {
                        Ok(events) => {
                            if state.reframer.finished && state.body.is_some() {
                                // The agent said it is done: no need to read on.
                                state.body = None;
                                state.in_flight = None;
                                let mut events = events;
                                events.extend(state.reframer.finish().unwrap_or_default());
                                events
                            } else {
                                events
                            }
                        }
                        Err(err) => {
                            state.body = None;
                            state.in_flight = None;
                            vec![error_event(&err)]
                        }
                    };
                    if !events.is_empty() {
                        return Some((Ok(frame(&events)), state));
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(events: &[Value]) -> Vec<Value> {
        events.iter().map(|e| e["content"].clone()).collect()
    }

    #[test]
    fn sse_events_split_anywhere_become_chunks_then_done() {
        let stream = b"data: {\"content\":\"In\"}\n\ndata: {\"content\":\" silicon\"}\r\n\r\ndata: plain\n\nevent: x\ndata: {\"usage\":{\"tokens\":3}}\n\ndata: [DONE]\n\ndata: after\n\n";
        for split in 0..stream.len() {
            let mut r = Reframer::new(Framing::Sse);
            let mut events = r.feed(&stream[..split]).expect("feed");
            events.extend(r.feed(&stream[split..]).expect("feed"));
            assert!(r.finished, "split at {split}");
            events.extend(r.finish().expect("finish"));
            assert_eq!(
                contents(&events[..3]),
                vec![json!("In"), json!(" silicon"), json!("plain")],
                "split at {split}"
            );
            assert_eq!(
                events[3],
                json!({"type": "done", "usage": {"tokens": 3}}),
                "split at {split}"
            );
            assert_eq!(events.len(), 4);
        }
    }

    #[test]
    fn sse_without_done_ends_with_the_body_and_multiline_data_joins() {
        let mut r = Reframer::new(Framing::Sse);
        let mut events = r
            .feed(b"data: a\ndata: b\n\ndata: {\"x\":1}")
            .expect("feed");
        events.extend(r.finish().expect("finish"));
        assert_eq!(events[0], json!({"type": "chunk", "content": "a\nb"}));
        assert_eq!(events[1], json!({"type": "chunk", "content": {"x": 1}}));
        assert_eq!(events[2], json!({"type": "done", "usage": null}));
    }

    #[test]
    fn text_chunks_never_split_a_character() {
        let text = "héllo wörld ✓".as_bytes();
        for split in 0..text.len() {
            let mut r = Reframer::new(Framing::Text);
            let mut events = r.feed(&text[..split]).expect("feed");
            events.extend(r.feed(&text[split..]).expect("feed"));
            events.extend(r.finish().expect("finish"));
            let joined: String = events
                .iter()
                .filter_map(|e| e["content"].as_str())
                .collect();
            assert_eq!(joined, "héllo wörld ✓", "split at {split}");
        }
    }

    #[test]
    fn a_json_answer_is_one_chunk_with_its_usage() {
        let mut r = Reframer::new(Framing::Whole { is_json: true });
        assert!(r
            .feed(br#"{"output": "hi", "usage": {"t": 1}}"#)
            .expect("feed")
            .is_empty());
        let events = r.finish().expect("finish");
        assert_eq!(
            events,
            vec![
                json!({"type": "chunk", "content": "hi"}),
                json!({"type": "done", "usage": {"t": 1}})
            ]
        );
        let mut r = Reframer::new(Framing::Whole { is_json: true });
        r.feed(b"{broken").expect("feed");
        assert!(r.finish().is_err());
    }

    #[test]
    fn frames_are_sse() {
        assert_eq!(
            frame(&[json!({"type": "start"})]),
            Bytes::from_static(b"data: {\"type\":\"start\"}\n\n")
        );
    }
}
