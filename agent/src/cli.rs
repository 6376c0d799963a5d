//! Command-line interface: `run` starts the agent; `api ...` and `task ...` commands are
//! Workload API clients (like any SPIFFE client) on the agent socket.
//!
//! Three parts: `args` (what clap parses), `commands` (the calls), and `output` (text and
//! JSON rendering, files written). Output format, error format and exit codes are
//! the ones both binaries share (`daemon::cli_output`).

mod args;
mod commands;
mod output;

use std::path::PathBuf;

use daemon::cli_output::UsageError;

pub use args::{
    ApiCommand, ApiOpts, Cli, Command, FetchCommand, RunArgs, TaskCommand, ValidateCommand,
};
pub use commands::{connect, run_api};
pub use daemon::cli_output::Output;
pub use output::split_der;

/// The socket path from a plain path or a `unix:` URI (a malformed one is a usage error).
pub fn socket_path(raw: &str) -> Result<PathBuf, UsageError> {
    let bad = |why: &str| {
        Err(UsageError(format!(
            "--socket-path / SPIFFE_ENDPOINT_SOCKET {raw:?}: {why}"
        )))
    };
    let path = if let Some(rest) = raw.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            return bad("a unix:// URI must have an empty authority (unix:///path)");
        }
        rest
    } else if let Some(rest) = raw.strip_prefix("unix:") {
        rest
    } else if raw.contains("://") {
        return bad("only unix sockets are supported");
    } else {
        raw
    };
    if !path.starts_with('/') {
        return bad("the socket path must be absolute");
    }
    if path.contains(['?', '#']) {
        return bad("no query or fragment allowed");
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_socket_forms() {
        for ok in ["/tmp/a.sock", "unix:///tmp/a.sock", "unix:/tmp/a.sock"] {
            assert_eq!(
                socket_path(ok).unwrap(),
                PathBuf::from("/tmp/a.sock"),
                "{ok}"
            );
        }
        for bad in [
            "rel/a.sock",
            "unix://host/p",
            "unix:rel/p",
            "tcp://127.0.0.1:1",
            "http://x",
            "unix:///a?x",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }
}
