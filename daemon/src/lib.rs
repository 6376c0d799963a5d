//! Process plumbing shared by `tessera-server` and `tessera-agent`: crash-safe state files,
//! Unix socket binding, logging, signal handling, the open-file limit and the HTTP health
//! endpoints.
//!
//! It knows nothing about identities: no SPIFFE types, no keys, no policy. It exists so the
//! two daemons behave the same way where operators can see it (files, sockets, probes,
//! shutdown) without either depending on the other.

pub mod cli_output;
pub mod fd_limit;
pub mod health;
pub mod socket;
pub mod state_file;
pub mod supervisor;
pub mod users;

use tokio_util::sync::CancellationToken;

/// BSD `EX_USAGE`: exit code for an invalid command line or configuration.
pub const EX_USAGE: u8 = 64;

/// Installs the tracing subscriber: logs to stderr, filtered by `TESSERA_LOG` if set, else
/// by `level`; JSON lines when `json`. Colours only when stderr is a terminal: a log file
/// or the journal gets plain text.
pub fn init_logging(level: &str, json: bool) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

/// How a binary's `main` proceeds: run the daemon (with its validated log settings) or a
/// one-shot client command.
#[derive(Debug)]
pub enum Invocation<D, C> {
    /// `run`: configuration already validated; `(log_level, log_json, daemon)`.
    Daemon(String, bool, D),
    /// Any other subcommand, with the output format its result and errors use.
    Client(cli_output::Output, C),
    /// `run` with an invalid configuration: the message to print (exit 64).
    BadConfig(String),
}

impl<DF, C> Invocation<Box<dyn FnOnce(CancellationToken) -> DF>, C> {
    /// The `run` command: raises the soft open-file limit to the hard one first
    /// ([`fd_limit`]), since `config` may size what it allows by that limit; then reads
    /// the configuration with `config` (an error: [`Invocation::BadConfig`]), and runs
    /// `daemon` with it once logging is set up with the `(level, json)` that `logging`
    /// takes from it.
    pub fn run<Cfg: 'static, E: std::fmt::Display>(
        config: impl FnOnce() -> Result<Cfg, E>,
        logging: impl FnOnce(&Cfg) -> (String, bool),
        daemon: impl FnOnce(Cfg, CancellationToken) -> DF + 'static,
    ) -> Self {
        let limit = fd_limit::raise_open_file_limit();
        match config() {
            Ok(cfg) => {
                let (level, json) = logging(&cfg);
                Self::Daemon(
                    level,
                    json,
                    Box::new(move |shutdown| {
                        limit.log();
                        daemon(cfg, shutdown)
                    }),
                )
            }
            Err(e) => Self::BadConfig(e.to_string()),
        }
    }
}

/// The shared `main`: builds the multi-threaded runtime, and either runs the daemon until
/// SIGTERM/SIGINT (logging to stderr) or runs a client command; maps the outcome to the
/// process exit code (see [`cli_output`]: 0, 1, or [`EX_USAGE`] for a bad configuration
/// or usage).
#[expect(
    clippy::print_stderr,
    reason = "errors are reported to the operator on stderr"
)]
pub fn main<D, DF, C, CF>(name: &str, invocation: Invocation<D, C>) -> std::process::ExitCode
where
    D: FnOnce(CancellationToken) -> DF,
    DF: Future<Output = Result<(), anyhow::Error>>,
    C: FnOnce() -> CF,
    CF: Future<Output = Result<(), anyhow::Error>>,
{
    use std::process::ExitCode;
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
    let (output, result) = match invocation {
        Invocation::BadConfig(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EX_USAGE);
        }
        Invocation::Daemon(level, json, daemon) => {
            init_logging(&level, json);
            let shutdown = CancellationToken::new();
            runtime.spawn(cancel_on_signal(shutdown.clone()));
            let r = runtime.block_on(daemon(shutdown));
            if let Err(e) = &r {
                tracing::error!(error = format!("{e:#}"), "{name} failed");
            }
            (cli_output::Output::Text, r)
        }
        Invocation::Client(output, client) => (output, runtime.block_on(client())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli_output::print_error(output, &e);
            ExitCode::from(cli_output::exit_code(&e))
        }
    }
}
