//! `hangar logs NAME|ID [-f] [--tail N]`: the agent's log lines (its default
//! instance's, every replica's) as `time level message`; `-f` follows them
//! over SSE and, should the stream break, resumes after the last line seen
//! (`Last-Event-ID`), so a follower sees each line once.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::Value;

use super::agents;
use super::client::{Client, Events};
use super::settings::{self, Connection};

/// Flags of `hangar logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The agent's name or ID
    #[arg(value_name = "NAME|ID")]
    agent: String,
    /// Keep printing new lines as they come
    #[arg(short, long)]
    follow: bool,
    /// How many of the latest lines to print first (1–10000)
    #[arg(long, value_name = "N", default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    tail: u32,
    #[command(flatten)]
    connection: Connection,
}

/// Times a broken follow is resumed in a row before giving up.
const RETRIES: u32 = 5;

/// Runs `hangar logs`.
pub async fn run(args: LogsArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let client = Client::new(&settings::load(&args.connection, env)?)?;
    let agent = agents::find(&client, &args.agent).await?;
    let id = agents::id(&agent)?;
    let path = format!("/v1/agents/{id}/logs");
    if !args.follow {
        let request = client
            .request(reqwest::Method::GET, &path)
            .query(&[("tail", args.tail)]);
        let lines = client.json(request).await?;
        for line in lines.as_array().into_iter().flatten() {
            println!("{}", render(line));
        }
        return Ok(());
    }
    let mut last_id: Option<String> = None;
    let mut retries = 0;
    loop {
        let mut request = client
            .request(reqwest::Method::GET, &path)
            .query(&[("follow", "true"), ("tail", &args.tail.to_string())])
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let broke = match client.send(request).await {
            Ok(response) => {
                let mut events = Events::new(response);
                loop {
                    match events.next().await {
                        Ok(Some(event)) => {
                            retries = 0;
                            if event.id.is_some() {
                                last_id = event.id;
                            }
                            let line: Value =
                                serde_json::from_str(&event.data).unwrap_or(Value::Null);
                            println!("{}", render(&line));
                        }
                        Ok(None) => break "the server closed the stream".to_owned(),
                        Err(e) => break format!("{e:#}"),
                    }
                }
            }
            // The agent is gone or the key is wrong: no use retrying.
            Err(e) if e.downcast_ref::<super::client::ApiError>().is_some() => return Err(e),
            Err(e) => format!("{e:#}"),
        };
        retries += 1;
        if retries > RETRIES {
            bail!("{broke}; stopped following");
        }
        eprintln!("hangar: {broke}; resuming");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One log line as `time LEVEL message`.
fn render(line: &Value) -> String {
    let text = |name: &str| line[name].as_str().unwrap_or("").to_owned();
    format!(
        "{} {:<5} {}",
        text("timestamp"),
        text("level").to_uppercase(),
        text("message")
    )
}
