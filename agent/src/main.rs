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
        // The open-file limit is raised before the configuration is read (see
        // `daemon::fd_limit`).
        Command::Run(args) => Invocation::run(
            || args.into_config(),
            |config| (config.log_level.clone(), config.log_json),
            agent::app::run,
        ),
        command => Invocation::Client(command.output(), move || agent::cli::run_api(command)),
    };
    daemon::main("tessera-agent", invocation)
}
