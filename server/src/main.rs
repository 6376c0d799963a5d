//! tessera-server entry point: parses arguments (exit 64 on a usage error), validates config
//! (exit 64 when invalid), then runs the server or an admin command through the shared
//! `daemon::main`.

use std::process::ExitCode;

use daemon::Invocation;
use server::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli: Cli = match daemon::cli_output::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let invocation = match cli.command {
        Command::Run(args) => {
            // Raised first, so that the server is not held to the 1,024 descriptors a soft
            // limit usually allows while thousands of agents connect (see `daemon::fd_limit`).
            let fd_limit = daemon::fd_limit::raise_open_file_limit();
            match args.into_config() {
                Ok(config) => {
                    Invocation::Daemon(config.log_level.clone(), config.log_json, move |shutdown| {
                        fd_limit.log();
                        server::app::run(config, shutdown)
                    })
                }
                Err(e) => Invocation::BadConfig(e.to_string()),
            }
        }
        command => Invocation::Client(command.output(), move || server::cli::run_admin(command)),
    };
    daemon::main("tessera-server", invocation)
}
