//! Argument types of every `tessera-agent` command, as clap parses them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::duration::parse_duration;
use daemon::cli_output::Output;

use crate::config::{AgentConfig, AgentConfigError, DEFAULT_SOCKET_PATH, RawAgentConfig};

/// tessera-agent: SPIFFE workload identity node agent.
#[derive(Debug, Parser)]
#[command(name = "tessera-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by Workload API client commands.
#[derive(Debug, Clone, Args)]
pub struct ApiOpts {
    /// Workload API socket (a path, or a `unix:` URI as in SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = DEFAULT_SOCKET_PATH, global = true)]
    pub socket_path: String,
    /// Output format: text (times in RFC 3339) or json (times as Unix seconds).
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// How long to wait for an answer, e.g. 10s, 1m (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Workload API client commands.
    Api {
        /// API command.
        #[command(subcommand)]
        command: ApiCommand,
        /// Connection options.
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// Start or end a task as the calling workload (over the Workload API socket).
    Task {
        /// Task command.
        #[command(subcommand)]
        command: TaskCommand,
        /// Connection options.
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// Check that the Workload API answers on the socket.
    Healthcheck {
        /// Connection options.
        #[command(flatten)]
        opts: ApiOpts,
    },
}

impl Command {
    /// The output format the command's result and errors use.
    pub fn output(&self) -> Output {
        match self {
            Self::Run(_) => Output::Text,
            Self::Api { opts, .. } | Self::Task { opts, .. } | Self::Healthcheck { opts } => {
                opts.output
            }
        }
    }
}

/// `run` flags: a config file, and any config key as a flag that overrides it.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file (see deploy/config/agent.toml); flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The config keys.
    #[command(flatten)]
    pub keys: RawAgentConfig,
}

impl RunArgs {
    /// Reads the config file (if any), applies flags, validates.
    pub fn into_config(self) -> Result<AgentConfig, AgentConfigError> {
        AgentConfig::load(self.config.as_deref(), self.keys)
    }
}

/// Task commands: the caller's standing identity is the requester.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Start a task that activates a just-in-time identity (or provisions a temporary
    /// one) for this workload; prints the task.
    Begin {
        /// The just-in-time SPIFFE ID to activate (or, with --provision, to create).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// The just-in-time entry to activate, by id.
        #[arg(long)]
        entry_id: Option<String>,
        /// Create a temporary entry for the task (deleted when it ends).
        #[arg(long)]
        provision: bool,
        /// Selectors of the temporary entry (all must be the caller's own).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// Ticket reference.
        #[arg(long)]
        ticket: Option<String>,
        /// What the task may do (repeatable): RFC 6749 scope tokens, carried by its
        /// JWT-SVIDs in the `scope` claim.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A JWT audience the task will use (repeatable): its JWT-SVIDs are minted for
        /// these only; without any, the task gets X.509-SVIDs only.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Lifetime, e.g. 300, 5m, 1h. Default: the longest the deciding policies allow
        /// (the built-in workload policy allows 1h), never more than the server's
        /// max_task_ttl (24h unless configured).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Which of this workload's standing identities asks (default: its oldest).
        #[arg(long)]
        requester: Option<String>,
        /// Who receives the task's SVIDs: `process` (default: only the bound process),
        /// `tree` (it and its descendants) or `selectors` (every process matching the
        /// entry's selectors). A process-bound task ends when its process exits.
        #[arg(long, value_parser = ["process", "tree", "selectors"])]
        bind: Option<String>,
        /// Bind the task to this process instead of this command's own (which exits at
        /// once): an ancestor of this command running as the same user, e.g. `--bind-pid $$`
        /// from a shell or the runtime's own pid.
        #[arg(long)]
        bind_pid: Option<u32>,
        /// Break-glass: start at once without approval, where a policy allowing the task
        /// carries @break_glass("allowed") for this workload (refused otherwise). Capped at
        /// the server's break_glass_max_ttl (15m unless configured), announced to SET
        /// receivers, and flagged for review until an operator acknowledges it.
        #[arg(long)]
        break_glass: bool,
    },
    /// End a task this workload started.
    End {
        /// The task id.
        task_id: String,
        /// completed, failed or cancelled.
        #[arg(long, default_value = "completed")]
        outcome: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Workload API client commands.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch once.
    Fetch {
        /// What to fetch.
        #[command(subcommand)]
        what: FetchCommand,
    },
    /// Print every X.509-SVID update as it arrives, numbered.
    Watch,
    /// Validate a token.
    Validate {
        /// What to validate.
        #[command(subcommand)]
        what: ValidateCommand,
    },
}

/// What to validate.
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validate a JWT-SVID for an audience (signature, expiry, audience, trust domain).
    Jwt {
        /// The audience the token must be for.
        #[arg(long)]
        audience: String,
        /// The token.
        #[arg(long)]
        svid: String,
    },
}

/// What to fetch.
#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// X.509-SVIDs and the bundle.
    X509 {
        /// Write each SVID's certificate chain, key and bundle into this directory:
        /// svid.pem, svid.key, bundle.pem for the first, svid.1.pem, ... for the next.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// JWT-SVIDs for an audience.
    Jwt {
        /// Audience (repeatable); every value goes into the token's `aud`.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Only the identity with this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}
