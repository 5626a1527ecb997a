//! `hangar agents list`, and finding an agent by name or ID for the other
//! commands: people name agents, the API addresses them by ID, so every
//! command that takes an agent takes either (`agent_…` is an ID).

use std::collections::HashMap;

use anyhow::bail;
use serde_json::Value;

use super::client::{ApiError, Client};
use super::settings::{self, Connection};
use super::UsageError;

/// Every agent, following the pages (optionally only those of one cloud).
pub async fn all(client: &Client, cloud: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let mut agents = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "100".to_owned())];
        if let Some(cloud) = cloud {
            query.push(("cloud_id", cloud.to_owned()));
        }
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let request = client
            .request(reqwest::Method::GET, "/v1/agents")
            .query(&query);
        let page = client.send(request).await?;
        let page: Value = page.json().await?;
        if let Some(items) = page["data"].as_array() {
            agents.extend(items.iter().cloned());
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(next) if page["pagination"]["has_more"] == true => cursor = Some(next.to_owned()),
            _ => return Ok(agents),
        }
    }
}

/// The agents named `name` (one per cloud at most).
pub async fn named(client: &Client, name: &str, cloud: Option<&str>) -> anyhow::Result<Vec<Value>> {
    Ok(all(client, cloud)
        .await?
        .into_iter()
        .filter(|a| a["name"] == name)
        .collect())
}

/// The agent `name_or_id` names: an `agent_…` ID, else a unique name.
pub async fn find(client: &Client, name_or_id: &str) -> anyhow::Result<Value> {
    if name_or_id.starts_with("agent_") {
        return client.get(&format!("/v1/agents/{name_or_id}")).await;
    }
    let mut found = named(client, name_or_id, None).await?;
    match found.len() {
        0 => Err(ApiError {
            status: 404,
            code: "AGENT_NOT_FOUND".to_owned(),
            message: format!("no agent is named {name_or_id:?}"),
        }
        .into()),
        1 => Ok(found.remove(0)),
        _ => {
            let ids: Vec<&str> = found.iter().filter_map(|a| a["id"].as_str()).collect();
            bail!(UsageError(format!(
                "{} agents are named {name_or_id:?} (in different clouds): give an ID ({})",
                found.len(),
                ids.join(", ")
            )))
        }
    }
}

/// The ID of an agent object.
pub fn id(agent: &Value) -> anyhow::Result<String> {
    match agent["id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => bail!("the server answered an agent without an id: {agent}"),
    }
}

/// `hangar agents list`: one line per agent.
pub async fn list(connection: &Connection, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let client = Client::new(&settings::load(connection, env)?)?;
    let agents = all(&client, None).await?;
    if agents.is_empty() {
        println!("no agents yet: `hangar deploy` makes one");
        return Ok(());
    }
    let rows: Vec<[String; 4]> = agents
        .iter()
        .map(|a| {
            let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            [
                text(&a["name"]),
                text(&a["status"]),
                text(&a["id"]),
                text(&a["endpoints"]["base_url"]),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "ID", "URL"].map(str::to_owned);
    let mut widths = [0; 3];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    Ok(())
}
