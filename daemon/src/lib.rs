//! Process plumbing shared by `tessera-server` and `tessera-agent`: crash-safe state files,
//! Unix socket binding, logging, signal handling and the HTTP health endpoints.
//!
//! It knows nothing about identities: no SPIFFE types, no keys, no policy. It exists so the
//! two daemons behave the same way where operators can see it (files, sockets, probes,
//! shutdown) without either depending on the other.

pub mod health;
pub mod socket;
pub mod state_file;

use tokio_util::sync::CancellationToken;

/// BSD `EX_USAGE`: exit code for an invalid command line or configuration.
pub const EX_USAGE: u8 = 64;

/// Installs the tracing subscriber: logs to stderr, filtered by `TESSERA_LOG` if set, else
/// by `level`; JSON lines when `json`.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
