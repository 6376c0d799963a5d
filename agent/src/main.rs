//! tessera-agent entry point: parses arguments (exit 64 on a usage error), validates config
//! (exit 64 when invalid), then runs the agent or a client command through the shared
//! `daemon::main`.

use std::process::ExitCode;

use agent::cli::{Cli, Command};
use daemon::Invocation;

fn main() -> ExitCode {
    let cli: Cli = match daemon::cli_output::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let invocation = match cli.command {
        Command::Run(args) => {
            // Raised before the configuration is read: its default Workload API connection cap
            // follows the open-file limit (see `daemon::fd_limit`).
            let fd_limit = daemon::fd_limit::raise_open_file_limit();
            match args.into_config() {
                Ok(config) => {
                    Invocation::Daemon(config.log_level.clone(), config.log_json, move |shutdown| {
                        fd_limit.log();
                        agent::app::run(config, shutdown)
                    })
                }
                Err(e) => Invocation::BadConfig(e.to_string()),
            }
        }
        command => Invocation::Client(command.output(), move || agent::cli::run_api(command)),
    };
    daemon::main("tessera-agent", invocation)
}
