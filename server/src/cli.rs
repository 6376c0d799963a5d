//! Command-line interface: `run` starts the server; every other command is an admin API
//! client talking to a running server over its Unix socket.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::proto::tessera::admin_client::AdminClient;
use common::proto::tessera::{
    Agent, AgentIdRequest, CreateJoinTokenRequest, Entry, EntryIdRequest, EntrySpec,
    GetBundleRequest, ListAgentsRequest, ListAuditRequest, ListCasRequest, ListEntriesRequest,
    RotateCaRequest, UpdateEntryRequest, VerifyAuditRequest,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::config::{DEFAULT_ADMIN_SOCKET, RawServerConfig, ServerConfig, ServerConfigError};

/// tessera-server: SPIFFE workload identity server.
#[derive(Debug, Parser)]
#[command(name = "tessera-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format for commands that print data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON.
    Json,
}

/// Options shared by admin commands.
#[derive(Debug, Clone, Args)]
pub struct AdminOpts {
    /// Path of the server's admin socket.
    #[arg(long, env = "TESSERA_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET, global = true)]
    pub admin_socket: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Run(Box<RunArgs>),
    /// Join tokens for node attestation.
    Token {
        /// Token command.
        #[command(subcommand)]
        command: TokenCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Registration entries.
    Entry {
        /// Entry command.
        #[command(subcommand)]
        command: EntryCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Attested agents.
    Agent {
        /// Agent command.
        #[command(subcommand)]
        command: AgentCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// The trust bundle.
    Bundle {
        /// Bundle command.
        #[command(subcommand)]
        command: BundleCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// The X.509 certificate authorities.
    Ca {
        /// CA command.
        #[command(subcommand)]
        command: CaCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// The tamper-evident audit log.
    Audit {
        /// Audit command.
        #[command(subcommand)]
        command: AuditCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Tasks: just-in-time identities bound to a purpose.
    Task {
        /// Task command.
        #[command(subcommand)]
        command: TaskCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// The Cedar policies that decide tasks.
    Policy {
        /// Policy command.
        #[command(subcommand)]
        command: PolicyCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Check that the server answers on its admin socket.
    Healthcheck {
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
}

/// `run` flags; each overrides the config file.
#[derive(Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for the datastore and CA key.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Trust domain name, e.g. example.org.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Node API listen address (IP:PORT).
    #[arg(long)]
    pub bind: Option<String>,
    /// Admin API socket path.
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// Datastore: `sqlite` (default), `sqlite:///absolute/path`, or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (prefer PGPASSWORD or the config
    /// file for the password: flags are visible to other users in `ps`).
    #[arg(long)]
    pub datastore: Option<String>,
    /// CA lifetime, e.g. 24h.
    #[arg(long)]
    pub ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime, e.g. 1h.
    #[arg(long)]
    pub default_x509_svid_ttl: Option<String>,
    /// Agent SVID lifetime, e.g. 1h.
    #[arg(long)]
    pub agent_svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime, e.g. 5m.
    #[arg(long)]
    pub default_jwt_svid_ttl: Option<String>,
    /// How long a JWT signing key signs before the next one takes over, e.g. 24h.
    #[arg(long)]
    pub jwt_key_ttl: Option<String>,
    /// Address (IP:PORT) for the HTTP /live and /ready endpoints.
    #[arg(long)]
    pub health_address: Option<String>,
    /// PEM certificate of an existing CA that signs Tessera's CA (making it an intermediate).
    #[arg(long)]
    pub upstream_ca_cert: Option<PathBuf>,
    /// PEM private key of the upstream CA.
    #[arg(long)]
    pub upstream_ca_key: Option<PathBuf>,
    /// PEM root(s) to publish when the upstream certificate is not itself a root.
    #[arg(long)]
    pub upstream_bundle: Option<PathBuf>,
    /// Directory of Cedar task policies (`*.cedar`); the built-in set when unset.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Longest task lifetime whatever the policy allows (e.g. 24h).
    #[arg(long)]
    pub max_task_ttl: Option<String>,
    /// Unix group whose members may use the admin API (e.g. task approvers).
    #[arg(long)]
    pub admin_group: Option<String>,
    /// Log level (trace, debug, info, warn, error).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format (text or json).
    #[arg(long)]
    pub log_format: Option<String>,
}

impl std::fmt::Debug for RunArgs {
    // Hand-written: a PostgreSQL URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunArgs")
            .field("config", &self.config)
            .field("data_dir", &self.data_dir)
            .field("trust_domain", &self.trust_domain)
            .field("bind", &self.bind)
            .field(
                "datastore",
                &self
                    .datastore
                    .as_deref()
                    .map(crate::datastore::postgres::redact_url),
            )
            .finish_non_exhaustive()
    }
}

impl RunArgs {
    /// Reads the config file (if any), applies flags, validates.
    pub fn into_config(self) -> Result<ServerConfig, ServerConfigError> {
        let mut raw = match &self.config {
            Some(p) => RawServerConfig::from_file(p)?,
            None => RawServerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident <- $flag:ident),*) => {$(
                if let Some(v) = self.$flag { raw.$field = Some(v); }
            )*};
        }
        set!(data_dir <- data_dir, trust_domain <- trust_domain, bind_address <- bind,
            admin_socket <- admin_socket, datastore <- datastore, ca_ttl <- ca_ttl,
            default_x509_svid_ttl <- default_x509_svid_ttl, agent_svid_ttl <- agent_svid_ttl,
            default_jwt_svid_ttl <- default_jwt_svid_ttl, jwt_key_ttl <- jwt_key_ttl,
            health_address <- health_address, log_level <- log_level, log_format <- log_format,
            upstream_ca_cert <- upstream_ca_cert, upstream_ca_key <- upstream_ca_key,
            upstream_bundle <- upstream_bundle, policy_dir <- policy_dir,
            max_task_ttl <- max_task_ttl, admin_group <- admin_group);
        ServerConfig::from_raw(raw)
    }
}

/// Join token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token; prints the token alone on stdout.
    Generate {
        /// SPIFFE ID the agent will receive (default: a generated one).
        #[arg(long, default_value = "")]
        spiffe_id: String,
        /// Token lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        ttl: i64,
    },
}

/// Fields of an entry, shared by create and update.
#[derive(Debug, Args)]
pub struct EntryFields {
    /// SPIFFE ID of the agent whose workloads may receive the identity.
    #[arg(long)]
    pub parent_id: String,
    /// SPIFFE ID to issue.
    #[arg(long)]
    pub spiffe_id: String,
    /// Selector `type:value` (repeatable), e.g. unix:uid:1000.
    #[arg(long = "selector", required = true)]
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime in seconds (0: server default).
    #[arg(long, default_value_t = 0)]
    pub x509_svid_ttl: i64,
    /// JWT-SVID lifetime in seconds (0: server default).
    #[arg(long, default_value_t = 0)]
    pub jwt_svid_ttl: i64,
    /// DNS SAN (repeatable).
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Dormant unless a task covering it is active.
    #[arg(long)]
    pub jit: bool,
    /// Hint passed to workloads to tell identities apart.
    #[arg(long, default_value = "")]
    pub hint: String,
}

impl From<EntryFields> for EntrySpec {
    fn from(f: EntryFields) -> Self {
        Self {
            spiffe_id: f.spiffe_id,
            parent_id: f.parent_id,
            selectors: f.selectors,
            x509_svid_ttl_seconds: f.x509_svid_ttl,
            jwt_svid_ttl_seconds: f.jwt_svid_ttl,
            dns_names: f.dns_names,
            jit: f.jit,
            hint: f.hint,
        }
    }
}

/// Entry commands.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Create an entry.
    Create(EntryFields),
    /// Show one entry, or list entries (optionally filtered).
    Show {
        /// Show only this entry.
        #[arg(long)]
        entry_id: Option<String>,
        /// Only entries with this SPIFFE ID.
        #[arg(long, default_value = "")]
        spiffe_id: String,
        /// Only entries with this parent ID.
        #[arg(long, default_value = "")]
        parent_id: String,
    },
    /// Replace an entry's fields.
    Update {
        /// The entry to update.
        #[arg(long)]
        entry_id: String,
        /// New fields.
        #[command(flatten)]
        fields: EntryFields,
    },
    /// Delete an entry.
    Delete {
        /// The entry to delete.
        #[arg(long)]
        entry_id: String,
    },
}

/// Agent commands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List attested agents.
    List,
    /// Remove an agent; it must attest again with a new join token.
    Evict {
        /// The agent's SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
    },
    /// Ban an agent: refused at once and until evicted.
    Ban {
        /// The agent's SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
    },
}

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit records in order (`--output json`: one JSON object per line).
    Show {
        /// Only the records of this task.
        #[arg(long, default_value = "")]
        task: String,
    },
    /// Recompute the hash chain; fails and names the first record that was edited,
    /// deleted, inserted or reordered.
    Verify,
}

/// What a task activates or provisions, and why.
#[derive(Debug, Args)]
pub struct TaskSpecArgs {
    /// JIT access: the just-in-time entry to activate, by id.
    #[arg(long, default_value = "")]
    pub entry_id: String,
    /// JIT access: the just-in-time entry to activate, by SPIFFE ID; with --provision, the
    /// SPIFFE ID of the temporary entry.
    #[arg(long, default_value = "")]
    pub spiffe_id: String,
    /// JIT provisioning: create a temporary entry that is deleted when the task ends.
    #[arg(long)]
    pub provision: bool,
    /// Parent (agent) of the entry: narrows --spiffe-id, or names the temporary entry's.
    #[arg(long, default_value = "")]
    pub parent_id: String,
    /// Selectors of the temporary entry (with --provision), `type:value`.
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// Why the task exists.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Ticket reference, e.g. INC-1234.
    #[arg(long, default_value = "")]
    pub ticket: String,
    /// What the task may do (repeatable; policies can test them).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Lifetime from now, e.g. 900, 15m, 2h (default: the longest the policy allows).
    #[arg(long, default_value = "")]
    pub ttl: String,
}

impl TaskSpecArgs {
    /// The wire spec.
    pub fn into_spec(self) -> anyhow::Result<common::proto::tessera::TaskSpec> {
        let ttl_seconds = if self.ttl.is_empty() {
            0
        } else {
            let d = crate::config::parse_duration(&self.ttl)
                .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            i64::try_from(d.as_secs()).context("--ttl is too large")?
        };
        Ok(common::proto::tessera::TaskSpec {
            entry_id: self.entry_id,
            spiffe_id: self.spiffe_id,
            provision: self.provision,
            parent_id: self.parent_id,
            selectors: self.selectors,
            reason: self.reason,
            ticket: self.ticket,
            scopes: self.scopes,
            ttl_seconds,
            requester_spiffe_id: String::new(),
        })
    }
}

/// Task commands.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Start a task (you are the requester); it is active at once unless policy requires
    /// approval.
    Create(TaskSpecArgs),
    /// List tasks.
    List {
        /// Only tasks in this state (pending_approval, active, completed, failed,
        /// cancelled, expired, revoked).
        #[arg(long, default_value = "")]
        state: String,
    },
    /// Show one task.
    Show {
        /// The task id.
        task_id: String,
    },
    /// Approve a pending task (you are the approver; the requester cannot approve).
    Approve {
        /// The task id.
        task_id: String,
    },
    /// End a task as completed.
    Complete {
        /// The task id.
        task_id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End a task as failed.
    Fail {
        /// The task id.
        task_id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Withdraw a task (pending or active).
    Cancel {
        /// The task id.
        task_id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Revoke a task now: its credentials are withdrawn from every agent.
    Revoke {
        /// The task id.
        task_id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Explain the policy decision for a task (by id), or for a task specification
    /// without starting it.
    Explain {
        /// The task id (omit to evaluate the specification flags instead).
        task_id: Option<String>,
        /// The specification to evaluate.
        #[command(flatten)]
        spec: TaskSpecArgs,
    },
}

/// Policy commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Re-read the server's policy directory; an invalid set is refused and the last good
    /// one stays in force.
    Reload,
    /// Validate a policy directory offline (no server needed).
    Check {
        /// The directory of `*.cedar` files.
        dir: PathBuf,
    },
}

/// CA commands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// List the CAs with their phase (prepared, active, retired) and validity.
    Show,
    /// Rotate now: a fresh CA signs from this moment; the previous one stays in the bundle
    /// until it expires. For a suspected key compromise.
    Rotate,
}

/// Bundle output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BundleFormat {
    /// PEM certificates (for `tessera-agent run --trust-bundle`).
    #[default]
    Pem,
    /// SPIFFE bundle (JWK set).
    Spiffe,
}

/// Bundle commands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print the trust bundle.
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
}

/// Connects to the admin API over its Unix socket.
pub async fn connect_admin(path: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let channel = daemon::socket::connect_unix(path).await.with_context(|| {
        format!(
            "cannot reach the server's admin socket {} (is tessera-server running? see --admin-socket)",
            path.display()
        )
    })?;
    Ok(AdminClient::new(channel))
}

/// An admin call failed: print the server's message, not the gRPC plumbing.
fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

fn entry_json(e: &Entry) -> serde_json::Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "x509_svid_ttl": e.x509_svid_ttl_seconds,
        "jwt_svid_ttl": e.jwt_svid_ttl_seconds,
        "dns_names": e.dns_names,
        "jit": e.jit,
        "hint": e.hint,
        "created_at": e.created_at,
        "revision": e.revision,
    })
}

fn entry_text(e: &Entry) -> String {
    let mut s = format!(
        "Entry ID         : {}\nSPIFFE ID        : {}\nParent ID        : {}\nX509-SVID TTL    : {}\nJWT-SVID TTL     : {}\n",
        e.id, e.spiffe_id, e.parent_id, e.x509_svid_ttl_seconds, e.jwt_svid_ttl_seconds
    );
    for sel in &e.selectors {
        s.push_str(&format!("Selector         : {sel}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name         : {d}\n"));
    }
    if e.jit {
        s.push_str("JIT              : true\n");
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint             : {}\n", e.hint));
    }
    s
}

fn agent_json(a: &Agent) -> serde_json::Value {
    json!({
        "spiffe_id": a.spiffe_id,
        "serial": a.serial,
        "expires_at": a.expires_at,
        "attested_at": a.attested_at,
        "banned": a.banned,
        "attestation_type": a.attestation_type,
    })
}

fn agent_text(a: &Agent) -> String {
    format!(
        "SPIFFE ID        : {}\nAttestation type : {}\nSerial           : {}\nExpires at       : {}\nBanned           : {}\n",
        a.spiffe_id, a.attestation_type, a.serial, a.expires_at, a.banned
    )
}

fn print(output: Output, text: String, value: serde_json::Value) {
    #[expect(clippy::print_stdout, reason = "CLI output")]
    match output {
        Output::Text => print!("{text}"),
        Output::Json => println!("{value}"),
    }
}

/// The SPIFFE bundle (JWK set) for a set of X.509 authorities.
pub fn spiffe_bundle_json(b: &common::proto::tessera::Bundle) -> anyhow::Result<serde_json::Value> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std64 = base64::engine::general_purpose::STANDARD;
    let mut keys = Vec::new();
    for der in &b.x509_authorities {
        let (_, cert) = X509Certificate::from_der(der).context("bundle certificate")?;
        let point = cert.public_key().subject_public_key.data.as_ref();
        // Uncompressed P-256 point: 0x04 || X (32) || Y (32).
        let (x, y) = match point {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => anyhow::bail!("bundle certificate key is not an uncompressed P-256 point"),
        };
        keys.push(json!({
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": b64url.encode(x),
            "y": b64url.encode(y),
            "x5c": [std64.encode(der)],
        }));
    }
    for k in &b.jwt_authorities {
        let (x, y) = match k.public_key.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => anyhow::bail!("JWT key {} is not an uncompressed P-256 point", k.kid),
        };
        keys.push(json!({
            "use": "jwt-svid",
            "kty": "EC",
            "kid": k.kid,
            "crv": "P-256",
            "x": b64url.encode(x),
            "y": b64url.encode(y),
        }));
    }
    Ok(json!({
        "keys": keys,
        "spiffe_sequence": b.sequence,
        "spiffe_refresh_hint": b.refresh_hint_seconds,
    }))
}

/// Runs an admin command.
pub async fn run_admin(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(_) => anyhow::bail!("BUG: run is not an admin command"),
        Command::Token { command, admin } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            let TokenCommand::Generate { spiffe_id, ttl } = command;
            let r = c
                .create_join_token(CreateJoinTokenRequest {
                    spiffe_id,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                admin.output,
                format!("{}\n", r.token),
                json!({"token": r.token, "spiffe_id": r.spiffe_id, "expires_at": r.expires_at}),
            );
        }
        Command::Entry { command, admin } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            match command {
                EntryCommand::Create(fields) => {
                    let e = c
                        .create_entry(EntrySpec::from(fields))
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, entry_text(&e), entry_json(&e));
                }
                EntryCommand::Update { entry_id, fields } => {
                    let e = c
                        .update_entry(UpdateEntryRequest {
                            id: entry_id,
                            spec: Some(fields.into()),
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, entry_text(&e), entry_json(&e));
                }
                EntryCommand::Delete { entry_id } => {
                    let e = c
                        .delete_entry(EntryIdRequest { id: entry_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Deleted entry {}\n", e.id),
                        entry_json(&e),
                    );
                }
                EntryCommand::Show {
                    entry_id: Some(id), ..
                } => {
                    let e = c
                        .get_entry(EntryIdRequest { id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, entry_text(&e), entry_json(&e));
                }
                EntryCommand::Show {
                    entry_id: None,
                    spiffe_id,
                    parent_id,
                } => {
                    let list = c
                        .list_entries(ListEntriesRequest {
                            spiffe_id,
                            parent_id,
                        })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .entries;
                    let text = format!(
                        "Found {} entries\n{}",
                        list.len(),
                        list.iter()
                            .map(|e| format!("\n{}", entry_text(e)))
                            .collect::<String>()
                    );
                    print(
                        admin.output,
                        text,
                        json!({"entries": list.iter().map(entry_json).collect::<Vec<_>>()}),
                    );
                }
            }
        }
        Command::Agent { command, admin } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            match command {
                AgentCommand::List => {
                    let list = c
                        .list_agents(ListAgentsRequest {})
                        .await
                        .map_err(status)?
                        .into_inner()
                        .agents;
                    let text = format!(
                        "Found {} attested agents\n{}",
                        list.len(),
                        list.iter()
                            .map(|a| format!("\n{}", agent_text(a)))
                            .collect::<String>()
                    );
                    print(
                        admin.output,
                        text,
                        json!({"agents": list.iter().map(agent_json).collect::<Vec<_>>()}),
                    );
                }
                AgentCommand::Evict { spiffe_id } => {
                    let a = c
                        .evict_agent(AgentIdRequest { spiffe_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Evicted agent {}\n", a.spiffe_id),
                        agent_json(&a),
                    );
                }
                AgentCommand::Ban { spiffe_id } => {
                    let a = c
                        .ban_agent(AgentIdRequest { spiffe_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Banned agent {}\n", a.spiffe_id),
                        agent_json(&a),
                    );
                }
            }
        }
        Command::Bundle {
            command: BundleCommand::Show { format },
            admin,
        } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            let b = c
                .get_bundle(GetBundleRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let pem_text = pem::encode_many(
                &b.x509_authorities
                    .iter()
                    .map(|d| pem::Pem::new("CERTIFICATE", d.clone()))
                    .collect::<Vec<_>>(),
            );
            match format {
                BundleFormat::Pem => print(
                    admin.output,
                    pem_text.clone(),
                    json!({"trust_domain": b.trust_domain, "pem": pem_text}),
                ),
                BundleFormat::Spiffe => {
                    let v = spiffe_bundle_json(&b)?;
                    print(Output::Json, String::new(), v);
                }
            }
        }
        Command::Ca { command, admin } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            let list = match command {
                CaCommand::Show => c.list_cas(ListCasRequest {}).await,
                CaCommand::Rotate => c.rotate_ca(RotateCaRequest {}).await,
            }
            .map_err(status)?
            .into_inner()
            .cas;
            let text: String = list
                .iter()
                .map(|ca| {
                    format!(
                        "Serial     : {}\nPhase      : {}\nNot before : {}\nNot after  : {}\n\n",
                        ca.serial, ca.phase, ca.not_before, ca.not_after
                    )
                })
                .collect();
            let value = json!({"cas": list.iter().map(|ca| json!({
                "serial": ca.serial,
                "phase": ca.phase,
                "not_before": ca.not_before,
                "not_after": ca.not_after,
            })).collect::<Vec<_>>()});
            print(admin.output, text, value);
        }
        Command::Audit { command, admin } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            match command {
                AuditCommand::Show { task } => {
                    let mut stream = c
                        .list_audit(ListAuditRequest { task_id: task })
                        .await
                        .map_err(status)?
                        .into_inner();
                    while let Some(r) = stream.message().await.map_err(status)? {
                        let detail: serde_json::Value =
                            serde_json::from_str(&r.detail_json).unwrap_or(json!(r.detail_json));
                        let text = format!(
                            "{:>6}  {}  {:<26} {}  {}\n",
                            r.seq, r.at_ms, r.kind, r.subject, detail
                        );
                        let value = json!({
                            "seq": r.seq,
                            "at_ms": r.at_ms,
                            "kind": r.kind,
                            "task_id": (!r.task_id.is_empty()).then_some(&r.task_id),
                            "subject": r.subject,
                            "detail": detail,
                            "prev_hash": r.prev_hash,
                            "hash": r.hash,
                        });
                        print(admin.output, text, value);
                    }
                }
                AuditCommand::Verify => {
                    let r = c
                        .verify_audit(VerifyAuditRequest {})
                        .await
                        .map_err(status)?
                        .into_inner();
                    let value = json!({
                        "ok": r.ok,
                        "records": r.records,
                        "first_bad_seq": (!r.ok).then_some(r.first_bad_seq),
                        "error": (!r.ok).then_some(&r.error),
                    });
                    if r.ok {
                        print(
                            admin.output,
                            format!("Audit log verified: {} records, chain intact.\n", r.records),
                            value,
                        );
                    } else {
                        print(admin.output, String::new(), value);
                        anyhow::bail!("audit log is broken: {}", r.error);
                    }
                }
            }
        }
        Command::Task { command, admin } => run_task(command, &admin).await?,
        Command::Policy {
            command: PolicyCommand::Check { dir },
            admin,
        } => {
            let n = crate::policy::PolicyEngine::check_dir(&dir)?;
            print(
                admin.output,
                format!("{}: {n} policies, valid.\n", dir.display()),
                json!({"dir": dir, "policies": n, "valid": true}),
            );
        }
        Command::Policy {
            command: PolicyCommand::Reload,
            admin,
        } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            let r = c
                .reload_policy(common::proto::tessera::ReloadPolicyRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print(
                admin.output,
                format!(
                    "Policy reloaded: {} ({} policies)\n",
                    r.description, r.policies
                ),
                json!({"source": r.description, "policies": r.policies}),
            );
        }
        Command::Healthcheck { admin } => {
            let mut c = connect_admin(&admin.admin_socket).await?;
            c.get_bundle(GetBundleRequest {}).await.map_err(status)?;
            print(
                admin.output,
                "Server is healthy.\n".into(),
                json!({"healthy": true}),
            );
        }
    }
    Ok(())
}

async fn run_task(command: TaskCommand, admin: &AdminOpts) -> anyhow::Result<()> {
    use common::proto::tessera::{EndTaskRequest, ListTasksRequest, TaskIdRequest};
    use common::task::{decision_json, task_json, task_text};
    let mut c = connect_admin(&admin.admin_socket).await?;
    let end = |id: String, outcome: &str, reason: String| EndTaskRequest {
        id,
        outcome: outcome.to_owned(),
        reason,
    };
    let task = match command {
        TaskCommand::Create(spec) => c.create_task(spec.into_spec()?).await,
        TaskCommand::Show { task_id } => c.get_task(TaskIdRequest { id: task_id }).await,
        TaskCommand::Approve { task_id } => c.approve_task(TaskIdRequest { id: task_id }).await,
        TaskCommand::Complete { task_id, reason } => {
            c.end_task(end(task_id, "completed", reason)).await
        }
        TaskCommand::Fail { task_id, reason } => c.end_task(end(task_id, "failed", reason)).await,
        TaskCommand::Cancel { task_id, reason } => {
            c.end_task(end(task_id, "cancelled", reason)).await
        }
        TaskCommand::Revoke { task_id, reason } => {
            c.end_task(end(task_id, "revoked", reason)).await
        }
        TaskCommand::List { state } => {
            let tasks = c
                .list_tasks(ListTasksRequest { state })
                .await
                .map_err(status)?
                .into_inner()
                .tasks;
            let text = tasks.iter().map(task_text).collect::<Vec<_>>().join("\n");
            let value = json!({"tasks": tasks.iter().map(task_json).collect::<Vec<_>>()});
            print(admin.output, text, value);
            return Ok(());
        }
        TaskCommand::Explain {
            task_id: Some(id),
            spec: _,
        } => {
            let t = c
                .get_task(TaskIdRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            let d = t.decision.unwrap_or_default();
            let text = format!(
                "Task {} ({}): {}\nPolicies: {}\n",
                t.id,
                t.state,
                d.explanation,
                d.policies.join(", ")
            );
            print(admin.output, text, decision_json(&d));
            return Ok(());
        }
        TaskCommand::Explain {
            task_id: None,
            spec,
        } => {
            let d = c
                .explain_task(spec.into_spec()?)
                .await
                .map_err(status)?
                .into_inner();
            let text = format!("{}\nPolicies: {}\n", d.explanation, d.policies.join(", "));
            print(admin.output, text, decision_json(&d));
            return Ok(());
        }
    }
    .map_err(status)?
    .into_inner();
    print(admin.output, task_text(&task), task_json(&task));
    Ok(())
}
