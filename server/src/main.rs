//! tessera-server entry point: parses arguments, validates config (exit 64 when invalid),
//! then runs the server or an admin command through the shared `daemon::main`.

use std::process::ExitCode;

use clap::Parser as _;
use daemon::Invocation;
use server::cli::{Cli, Command};

fn main() -> ExitCode {
    let invocation = match Cli::parse().command {
        Command::Run(args) => match args.into_config() {
            Ok(config) => {
                Invocation::Daemon(config.log_level.clone(), config.log_json, move |shutdown| {
                    server::app::run(config, shutdown)
                })
            }
            Err(e) => Invocation::BadConfig(e.to_string()),
        },
        command => Invocation::Client(move || server::cli::run_admin(command)),
    };
    daemon::main("tessera-server", invocation)
}
