//! The client commands of the `hangar` binary: `login`, `deploy`, `agents`,
//! `invoke` and `logs`. They are a thin client of the public HTTP API — every
//! step is a documented request (uploads, agents, builds, invoke, logs) — so
//! that nothing the command line does is out of reach of `curl` or another
//! client, and the server stays the one place with rules.
//!
//! One module per command group; [`client`] speaks HTTP and SSE and turns the
//! API's error envelope into an error naming its `code`, and [`settings`] says
//! which server and key a command uses.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};

mod agents;
mod client;
mod deploy;
mod invoke;
mod login;
mod logs;
mod pack;
mod progress;
mod settings;

pub use settings::Connection;

/// The client commands (flattened into the binary's subcommands).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check an API key against a server and save both for later commands.
    Login(login::LoginArgs),
    /// Pack a directory, upload it, build it and run it as an agent.
    Deploy(deploy::DeployArgs),
    /// Agents of your organization.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Invoke an agent with a JSON input and print its output.
    Invoke(invoke::InvokeArgs),
    /// Print (or follow) an agent's logs.
    Logs(logs::LogsArgs),
}

/// `hangar agents …`.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List the agents with their status, ID and URL.
    List(ListArgs),
}

/// Flags of `hangar agents list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    connection: Connection,
}

/// A mistake on the command line or in the local setup (exit 64), as opposed
/// to a failure of the server or the network (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code for usage errors (BSD `EX_USAGE`), as `hangar serve` uses.
const EX_USAGE: u8 = 64;

/// Runs a client command; `env` is the process environment (read once, by
/// `main`).
pub fn run(command: Command, env: &HashMap<String, String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hangar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Login(args) => login::run(args, env).await,
            Command::Deploy(args) => deploy::run(args, env).await,
            Command::Agents {
                command: AgentsCommand::List(args),
            } => agents::list(&args.connection, env).await,
            Command::Invoke(args) => invoke::run(args, env).await,
            Command::Logs(args) => logs::run(args, env).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangar: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
