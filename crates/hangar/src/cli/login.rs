//! `hangar login --server URL --key KEY`: checks the key with `GET /v1/me`
//! before saving anything — a saved key that does not work would only fail
//! later, far from the typo — then writes server and key to the config file
//! (see [`super::settings`]), readable by its owner only.

use std::collections::HashMap;

use clap::Args;

use super::client::Client;
use super::settings::{self, ConfigFile, Connection};

/// Flags of `hangar login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    connection: Connection,
}

/// Runs `hangar login`.
pub async fn run(args: LoginArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let path = settings::config_path(env)?;
    let saved = settings::read(&path)?;
    let chosen = settings::resolve(&args.connection, env, &saved)?;
    let client = Client::new(&chosen)?;
    let me = client.get("/v1/me").await?;
    settings::write(
        &path,
        &ConfigFile {
            server: Some(chosen.server.clone()),
            key: Some(chosen.key.clone()),
        },
    )?;
    let field = |name: &str| me[name].as_str().unwrap_or("?").to_owned();
    println!(
        "Logged in to {} as {} ({}, organization {}); saved to {}",
        chosen.server,
        field("email"),
        field("role"),
        field("organization_id"),
        path.display()
    );
    Ok(())
}
