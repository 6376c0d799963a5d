//! tessera-agent entry point: parses arguments, validates config (exit 64 when invalid),
//! builds the runtime, runs the agent or a client command, maps errors to exit codes.

use std::process::ExitCode;

use agent::cli::{Cli, Command};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[expect(
    clippy::print_stderr,
    reason = "errors are reported to the operator on stderr"
)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(daemon::EX_USAGE);
                }
            };
            daemon::init_logging(&config.log_level, config.log_json);
            let shutdown = CancellationToken::new();
            runtime.spawn(daemon::cancel_on_signal(shutdown.clone()));
            match runtime.block_on(agent::app::run(config, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "tessera-agent failed");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        command => match runtime.block_on(agent::cli::run_api(command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
