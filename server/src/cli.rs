//! Command-line interface: `run` starts the server; every other command is an admin API
//! client talking to a running server over its Unix socket.
//!
//! Three parts: `args` (what clap parses), `commands` (one admin call per command),
//! and `output` (text and JSON rendering). Output format, error format and exit codes are
//! the ones both binaries share (`daemon::cli_output`).

mod args;
mod commands;
mod output;

pub use args::{
    AdminOpts, AgentCommand, AuditCommand, BundleCommand, BundleFormat, CaCommand, Cli, Command,
    EntryCommand, EntryFields, PolicyCommand, RunArgs, TaskCommand, TaskSpecArgs, TokenCommand,
};
pub use commands::{connect_admin, run_admin};
pub use daemon::cli_output::Output;
pub use output::spiffe_bundle_json;
