//! HTTP for the client commands: requests with the API key, answers unwrapped
//! from the `{success, data}` envelope, failures turned into [`ApiError`]
//! (the envelope's `error.code` and `error.message`, which is what a user can
//! act on), and a reader of Server-Sent Events for the routes that stream
//! (build logs, log follows, streaming invokes).

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use super::settings::Settings;

/// How long a plain request may take; streams and invokes set their own.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.code` of the envelope (`UNAUTHORIZED`, `AGENT_NOT_FOUND`, …).
    pub code: String,
    /// `error.message`.
    pub message: String,
}

/// A client of one server with one key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    key: String,
}

impl Client {
    /// A client for `settings`.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hangar-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self {
            http,
            server: settings.server.clone(),
            key: settings.key.clone(),
        })
    }

    /// The underlying HTTP client (for the signed upload URL, which takes no key).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to `path` (from the server's root) with the API key and the
    /// default timeout.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.key)
            .timeout(REQUEST_TIMEOUT)
    }

    /// `GET path`, the envelope's `data`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body, the envelope's `data`.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    /// Sends a request; a 2xx answer's JSON, unwrapped from the envelope
    /// (`data`) when it has one.
    pub async fn json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request).await?;
        let text = response
            .text()
            .await
            .with_context(|| format!("cannot read the answer of {}", self.server))?;
        let body: Value = serde_json::from_str(&text).with_context(|| {
            format!("the server answered something else than JSON: {text:.200}")
        })?;
        Ok(match body.get("data") {
            Some(data) if body.get("success").is_some() => data.clone(),
            _ => body,
        })
    }

    /// Sends a request; the response when it is a 2xx, else an [`ApiError`].
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.server))?;
        check(response).await
    }
}

/// The response when its status is 2xx; otherwise its error envelope as an
/// [`ApiError`] (or the start of its body, when it has no envelope).
pub async fn check(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    Err(api_error(status.as_u16(), &text).into())
}

/// The [`ApiError`] of an error answer's body.
pub fn api_error(status: u16, body: &str) -> ApiError {
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), message) => ApiError {
            status,
            code,
            message: message.unwrap_or_default(),
        },
        _ => ApiError {
            status,
            code: format!("HTTP_{status}"),
            message: body.chars().take(200).collect(),
        },
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// `id:`, when given.
    pub id: Option<String>,
    /// `event:`; `message` when not given.
    pub event: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// Reads the events of an SSE response as they come.
#[derive(Debug)]
pub struct Events {
    response: Response,
    buffer: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl Events {
    /// The events of `response`.
    pub fn new(response: Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
            current: Event::default(),
            has_data: false,
        }
    }

    /// The next event; `None` when the stream ended. Cancel-safe: state only
    /// changes once a chunk has arrived, so it may be raced against a timer.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(event) = self.parse_buffered() {
                return Ok(Some(event));
            }
            match self
                .response
                .chunk()
                .await
                .context("the stream broke off")?
            {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }

    /// Takes complete lines from the buffer until one ends an event.
    fn parse_buffered(&mut self) -> Option<Event> {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if self.has_data {
                    let mut event = std::mem::take(&mut self.current);
                    if event.event.is_empty() {
                        "message".clone_into(&mut event.event);
                    }
                    self.has_data = false;
                    return Some(event);
                }
                self.current = Event::default();
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: the server's keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "event" => value.clone_into(&mut self.current.event),
                "id" => self.current.id = Some(value.to_owned()),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelopes_give_code_and_message() {
        let e = api_error(
            401,
            r#"{"success":false,"error":{"code":"UNAUTHORIZED","message":"Invalid API key"}}"#,
        );
        assert_eq!(e.to_string(), "UNAUTHORIZED: Invalid API key");
        let e = api_error(502, "<html>bad gateway</html>");
        assert_eq!(e.code, "HTTP_502");
        assert!(e.message.contains("bad gateway"));
    }

    #[tokio::test]
    async fn events_are_read_field_by_field() {
        let body = ": keep-alive\n\nid: 7\ndata: {\"a\":1}\n\nevent: done\r\ndata: x\r\ndata:y\r\n\r\ndata: cut off";
        let response = Response::from(axum::http::Response::new(body));
        let mut events = Events::new(response);
        let first = events.next().await.expect("read").expect("event");
        assert_eq!(
            first,
            Event {
                id: Some("7".to_owned()),
                event: "message".to_owned(),
                data: r#"{"a":1}"#.to_owned()
            }
        );
        let done = events.next().await.expect("read").expect("event");
        assert_eq!((done.event.as_str(), done.data.as_str()), ("done", "x\ny"));
        // An event the stream did not finish is not one.
        assert_eq!(events.next().await.expect("read"), None);
    }
}
