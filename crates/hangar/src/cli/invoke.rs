//! `hangar invoke NAME|ID '<json>'`: `POST /v1/agents/{id}/invoke` with the
//! JSON as `input`, printing the output alone — a string as its text, other
//! JSON pretty-printed — so the command composes with pipes. `--stream` asks
//! for SSE (`Accept: text/event-stream`) and prints each chunk's content as
//! it arrives, which is what a person watching a model's answer wants.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::{json, Value};

use super::agents;
use super::client::{ApiError, Client, Events};
use super::settings::{self, Connection};
use super::UsageError;

/// Flags of `hangar invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The agent's name or ID
    #[arg(value_name = "NAME|ID")]
    agent: String,
    /// The input, as JSON (`'{"text": "hi"}'`, `'"hi"'`) [default: {}]
    #[arg(value_name = "JSON")]
    input: Option<String>,
    /// Stream the answer (SSE) and print chunks as they come
    #[arg(long)]
    stream: bool,
    /// Seconds the agent may take (the invoke's options.timeout)
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

/// Runs `hangar invoke`.
pub async fn run(args: InvokeArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let input: Value = match &args.input {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| UsageError(format!("the input is not JSON: {e}")))?,
        None => json!({}),
    };
    let client = Client::new(&settings::load(&args.connection, env)?)?;
    let agent = agents::find(&client, &args.agent).await?;
    let id = agents::id(&agent)?;
    let mut body = json!({ "input": input });
    if let Some(seconds) = args.timeout {
        body["options"] = json!({ "timeout": seconds });
    }
    // The server's own limit (default 300 s) answers first; this only
    // bounds a connection that hangs.
    let wait = Duration::from_secs(args.timeout.unwrap_or(300) + 60);
    let request = client
        .request(reqwest::Method::POST, &format!("/v1/agents/{id}/invoke"))
        .timeout(wait)
        .json(&body);
    if !args.stream {
        let answer = client.json(request).await?;
        print_value(&answer["output"]);
        return Ok(());
    }
    let request = request.header(reqwest::header::ACCEPT, "text/event-stream");
    let mut events = Events::new(client.send(request).await?);
    let mut out = std::io::stdout();
    while let Some(event) = events.next().await? {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match data["type"].as_str() {
            Some("chunk") => {
                match &data["content"] {
                    Value::String(text) => write!(out, "{text}")?,
                    Value::Null => {}
                    other => write!(out, "{other}")?,
                }
                out.flush()?;
            }
            Some("done") => {
                writeln!(out)?;
                return Ok(());
            }
            Some("error") => {
                writeln!(out)?;
                let field = |name: &str| data["error"][name].as_str().unwrap_or("").to_owned();
                return Err(ApiError {
                    status: 200,
                    code: field("code"),
                    message: field("message"),
                }
                .into());
            }
            _ => {}
        }
    }
    bail!("the stream ended before the agent was done")
}

/// Prints an output: a string as its text, other JSON pretty-printed.
fn print_value(value: &Value) {
    match value {
        Value::String(text) => println!("{text}"),
        other => println!(
            "{}",
            serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string())
        ),
    }
}
