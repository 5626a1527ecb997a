//! The `hangar` binary: `hangar serve` runs the platform; `hangar doctor`
//! says whether this host lets it run agents; `login`, `deploy`,
//! `agents`, `invoke` and `logs` are its client (in [`cli`]). This file only
//! parses the command line and maps failures to exit codes (64 for bad
//! configuration or usage, 1 for anything else).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod config;
mod data_dir;
mod doctor;
mod egress;
mod jobs;
mod node;
mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "hangar",
    version,
    about = "Build, run, scale and invoke AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Hangar server (API, gateway and instance URLs on one listener).
    Serve(Box<config::ServeArgs>),
    /// Check what `hangar serve` needs on this host (root, cgroups,
    /// networking, engines, the database, disk, toolchains), one line each
    /// with the fix; exit 0 when it can run agents, 1 otherwise. Takes
    /// `serve`'s flags, so it checks the data dir and database serve would use.
    Doctor(Box<config::ServeArgs>),
    /// Print the OpenAPI document every server answers at `/openapi.json`
    /// (what the SDKs are generated from; `sdk/openapi.json` is a copy).
    Openapi,
    #[command(flatten)]
    Client(cli::Command),
    /// Internal: the per-replica process the sandbox driver starts.
    #[command(hide = true)]
    Shim {
        #[command(subcommand)]
        command: ShimCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ShimCommand {
    /// Create and start the replica described in DIR, then serve its socket.
    Run { dir: std::path::PathBuf },
    /// Run one command in the replica of DIR (request on stdin).
    Exec { dir: std::path::PathBuf },
    /// Remove the replica of DIR whose shim is gone.
    Cleanup { dir: std::path::PathBuf },
}

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

/// mimalloc instead of glibc's allocator: the data plane allocates small,
/// short-lived buffers on every request, and glibc's malloc and free were a
/// tenth of the gateway's CPU time under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let rendered = e.render().to_string();
            eprintln!(
                "{}",
                rendered.lines().next().unwrap_or("invalid command line")
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    let env = config::process_env();
    match cli.command {
        Command::Client(command) => cli::run(command, &env),
        Command::Openapi => match hangar_api::openapi().to_pretty_json() {
            Ok(document) => {
                println!("{document}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hangar: cannot render the OpenAPI document: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Shim { command } => {
            let code = match command {
                ShimCommand::Run { dir } => {
                    shim_log(&dir, &env);
                    hangar_runtime::shim::run(&dir)
                }
                ShimCommand::Exec { dir } => hangar_runtime::shim::exec(&dir),
                ShimCommand::Cleanup { dir } => hangar_runtime::shim::cleanup(&dir),
            };
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Doctor(args) => {
            let config = match config::Config::resolve(*args, &env) {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            ExitCode::from(runtime.block_on(doctor::run(&config)))
        }
        Command::Serve(args) => {
            let config = match config::Config::resolve(*args, &env) {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            serve::init_tracing(&env);
            let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let served = if config.migrate_only {
                runtime.block_on(serve::migrate_only(&config))
            } else {
                runtime.block_on(serve::run(config))
            };
            // Every task that must finish was joined by `run`; blocking work
            // a drain cut off (unpacking a build's archive, say) is not
            // waited for: its results are thrown away at the next start.
            runtime.shutdown_background();
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hangar: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A configuration that cannot be used: said, and the usage exit code.
fn usage_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("hangar: {error}");
    ExitCode::from(EX_USAGE)
}

/// The async runtime `builder` makes, or the failure said.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("hangar: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// The shim logs to a file in its directory, never to fd 1 or 2: stdout is
/// its handshake, and libcontainer's init would write its own log lines
/// into the replica's output through the same subscriber otherwise.
fn shim_log(dir: &std::path::Path, env: &HashMap<String, String>) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(hangar_runtime::shim::protocol::LOG_FILE));
    if let Ok(file) = file {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(
                env.get("HANGAR_SHIM_LOG")
                    .and_then(|filter| tracing_subscriber::EnvFilter::try_new(filter).ok())
                    .unwrap_or_else(|| {
                        tracing_subscriber::EnvFilter::new("info,libcontainer=warn")
                    }),
            )
            .try_init();
    }
}
