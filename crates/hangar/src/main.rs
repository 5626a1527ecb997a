//! The `hangar` binary: `hangar serve` runs the platform; later subcommands are the
//! client CLI. This file only parses the command line and maps failures to exit
//! codes (64 for bad configuration, 1 for anything else).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
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
    Serve(config::ServeArgs),
}

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

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
    // The one place the process environment is read.
    let env: HashMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::Serve(args) => {
            let config = match config::Config::resolve(args, &env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hangar: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            serve::init_tracing(&env);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hangar: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hangar: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
