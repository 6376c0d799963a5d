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
        // The open-file limit is raised before the configuration is read (see
        // `daemon::fd_limit`).
        Command::Run(args) => Invocation::run(
            || args.into_config(),
            |config| (config.log_level.clone(), config.log_json),
            server::app::run,
        ),
        command => Invocation::Client(command.output(), move || server::cli::run_admin(command)),
    };
    daemon::main("tessera-server", invocation)
}
