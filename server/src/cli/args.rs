//! Argument types of every `tessera-server` command, as clap parses them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use common::duration::parse_duration;
use common::proto::tessera::{EntrySpec, TemplateSpec};
use daemon::cli_output::Output;

use crate::config::{RawServerConfig, ServerConfig, ServerConfigError};

/// tessera-server: SPIFFE workload identity server.
#[derive(Debug, Parser)]
#[command(name = "tessera-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by admin commands.
#[derive(Debug, Clone, Args)]
pub struct AdminOpts {
    /// Path of the server's admin socket [default: $XDG_RUNTIME_DIR/tessera-server/admin.sock
    /// when that exists, else /run/tessera-server/admin.sock].
    #[arg(long, env = "TESSERA_ADMIN_SOCKET", global = true)]
    pub admin_socket: Option<PathBuf>,
    /// The user the server runs as, when not root or yourself: the CLI talks only to a
    /// socket whose listening process runs as root, as the caller, or as this user (by the
    /// kernel's peer credentials), so whoever squats the socket path cannot answer.
    #[arg(long, env = "TESSERA_SERVER_USER", global = true)]
    pub server_user: Option<String>,
    /// Output format: text (times in RFC 3339) or json (times as Unix seconds).
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
    /// Identity templates: entries made when a matching workload first asks.
    Template {
        /// Template command.
        #[command(subcommand)]
        command: TemplateCommand,
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
    /// Tenants: organisations inside the trust domain, their path prefixes, domains and
    /// admins.
    Tenant {
        /// Tenant command.
        #[command(subcommand)]
        command: TenantCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Owners of entries and requesters of tasks (people and workloads).
    Owner {
        /// Owner command.
        #[command(subcommand)]
        command: OwnerCommand,
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Access review: every identity you may see with its tenant, owner, dates, open tasks
    /// and flags (no owner, expired, review lapsed, stale, dormant, overlapping selectors,
    /// unverified DNS name, owner offboarded).
    Review {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Not used for this long means stale, e.g. 30d, 12h [default: 30d].
        #[arg(long, value_parser = parse_duration)]
        stale_after: Option<Duration>,
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
    /// Check that the server answers on its admin socket and its datastore answers (exit
    /// code 1 with the reason when not).
    Healthcheck {
        /// Admin connection options.
        #[command(flatten)]
        admin: AdminOpts,
    },
}

impl Command {
    /// The output format the command's result and errors use.
    pub fn output(&self) -> Output {
        match self {
            Self::Run(_) => Output::Text,
            Self::Token { admin, .. }
            | Self::Entry { admin, .. }
            | Self::Template { admin, .. }
            | Self::Agent { admin, .. }
            | Self::Bundle { admin, .. }
            | Self::Ca { admin, .. }
            | Self::Audit { admin, .. }
            | Self::Task { admin, .. }
            | Self::Tenant { admin, .. }
            | Self::Owner { admin, .. }
            | Self::Review { admin, .. }
            | Self::Policy { admin, .. }
            | Self::Healthcheck { admin } => admin.output,
        }
    }
}

/// `run` flags: a config file, and any config key as a flag that overrides it.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file (see deploy/config/server.toml); flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The config keys.
    #[command(flatten)]
    pub keys: RawServerConfig,
}

impl RunArgs {
    /// Reads the config file (if any), applies flags, validates.
    pub fn into_config(self) -> Result<ServerConfig, ServerConfigError> {
        ServerConfig::load(self.config.as_deref(), self.keys)
    }
}

/// Join token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token; prints the token alone on stdout.
    Generate {
        /// SPIFFE ID the agent will receive (default: a generated one).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Token lifetime, e.g. 90s, 10m, 1h (a bare number is seconds).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// Fields of an entry, shared by create and update.
#[derive(Debug, Args)]
pub struct EntryFields {
    /// SPIFFE ID of the agent (or node group) whose workloads may receive the identity.
    #[arg(long, required_unless_present = "node")]
    pub parent_id: Option<String>,
    /// SPIFFE ID to issue.
    #[arg(long)]
    pub spiffe_id: String,
    /// Selector `type:value` (repeatable), e.g. unix:uid:1000; with --node, a node
    /// selector, e.g. x509pop:subject:cn:web1.
    #[arg(long = "selector", required = true)]
    pub selectors: Vec<String>,
    /// A node entry: the SPIFFE ID names the group of agents whose attested node
    /// selectors (x509pop:...) include all of --selector; entries parented to that ID are
    /// served by each of them. Its parent is the server (no --parent-id).
    #[arg(long, conflicts_with = "parent_id")]
    pub node: bool,
    /// X.509-SVID lifetime, e.g. 15m, 1h (a bare number is seconds); default: the server's
    /// default_x509_svid_ttl.
    #[arg(long, value_parser = parse_duration)]
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime, e.g. 5m (a bare number is seconds); default: the server's
    /// default_jwt_svid_ttl.
    #[arg(long, value_parser = parse_duration)]
    pub jwt_svid_ttl: Option<Duration>,
    /// DNS SAN (repeatable).
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Dormant unless a task covering it is active.
    #[arg(long)]
    pub jit: bool,
    /// Hint passed to workloads to tell identities apart.
    #[arg(long)]
    pub hint: Option<String>,
    /// Tenant the entry belongs to (default: the one you administer; for platform
    /// operators, the tenant owning the SPIFFE ID's path). On update: unchanged.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Who answers for it: user:NAME or a SPIFFE ID (default: you; on update: unchanged).
    #[arg(long)]
    pub owner: Option<String>,
    /// When it stops being issued: RFC 3339 (2027-01-31T00:00:00Z) or Unix seconds.
    #[arg(long, value_parser = parse_time, conflicts_with = "expires_in")]
    pub expires_at: Option<i64>,
    /// When it stops being issued, from now, e.g. 90d, 12h.
    #[arg(long, value_parser = parse_duration)]
    pub expires_in: Option<Duration>,
    /// Its owner must re-certify it (`entry certify`) within this period, e.g. 90d, or it
    /// is disabled (default: the tenant's).
    #[arg(long, value_parser = parse_duration)]
    pub review_every: Option<Duration>,
}

/// A point in time given as RFC 3339 or Unix seconds.
pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    common::duration::parse_rfc3339(s).map_err(|e| format!("{e} (or Unix seconds)"))
}

impl From<EntryFields> for EntrySpec {
    fn from(f: EntryFields) -> Self {
        let expires_at = f.expires_at.or_else(|| {
            f.expires_in.map(|d| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, seconds);
                now.saturating_add(seconds(d))
            })
        });
        Self {
            tenant: f.tenant.unwrap_or_default(),
            owner: f.owner.unwrap_or_default(),
            expires_at: expires_at.unwrap_or(0),
            review_every_seconds: f.review_every.map_or(0, seconds),
            spiffe_id: f.spiffe_id,
            parent_id: f.parent_id.unwrap_or_default(),
            selectors: f.selectors,
            node: f.node,
            // 0 on the wire: the server's default.
            x509_svid_ttl_seconds: f.x509_svid_ttl.map_or(0, seconds),
            jwt_svid_ttl_seconds: f.jwt_svid_ttl.map_or(0, seconds),
            dns_names: f.dns_names,
            jit: f.jit,
            hint: f.hint.unwrap_or_default(),
        }
    }
}

/// Whole seconds for the wire (a parsed duration is at most `u64::MAX` seconds; more than
/// `i64::MAX` saturates, and the server refuses it as too long).
fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
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
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only entries with this parent ID.
        #[arg(long)]
        parent_id: Option<String>,
        /// Only entries of this tenant.
        #[arg(long)]
        tenant: Option<String>,
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
    /// Re-certify an entry (its owner confirms it is still needed): its review period
    /// starts again; an entry disabled because its review lapsed is enabled again.
    Certify {
        /// The entry.
        #[arg(long)]
        entry_id: String,
    },
}

/// Template commands.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Create a template.
    Create(TemplateFields),
    /// List the templates you may see.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete a template and every entry made from it.
    Delete {
        /// The template to delete.
        #[arg(long)]
        template_id: String,
    },
}

/// A template's fields.
#[derive(Debug, Args)]
pub struct TemplateFields {
    /// The SPIFFE ID template, e.g. spiffe://example.org/acme/svc/{systemd:unit}:
    /// each {kind:key} placeholder is a whole path segment, replaced by the workload's
    /// attested value for that selector key.
    #[arg(long)]
    pub spiffe_id_template: String,
    /// The agent (node) whose workloads it applies to.
    #[arg(long)]
    pub parent_id: String,
    /// A selector the workload must also have, e.g. systemd:slice:acme.slice (repeatable).
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime of its entries, e.g. 1h [default: the server's].
    #[arg(long, value_parser = parse_duration)]
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime of its entries, e.g. 5m [default: the server's].
    #[arg(long, value_parser = parse_duration)]
    pub jwt_svid_ttl: Option<Duration>,
    /// Tenant (default: as for an entry).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Who answers for it and its entries: user:NAME or a SPIFFE ID (default: you).
    #[arg(long)]
    pub owner: Option<String>,
    /// How long an entry outlives its workload, e.g. 5m, 3s [default: 5m; at least 2s].
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
}

impl From<TemplateFields> for TemplateSpec {
    fn from(f: TemplateFields) -> Self {
        Self {
            spiffe_id_template: f.spiffe_id_template,
            parent_id: f.parent_id,
            selectors: f.selectors,
            x509_svid_ttl_seconds: f.x509_svid_ttl.map_or(0, seconds),
            jwt_svid_ttl_seconds: f.jwt_svid_ttl.map_or(0, seconds),
            tenant: f.tenant.unwrap_or_default(),
            owner: f.owner.unwrap_or_default(),
            grace_seconds: f.grace.map_or(0, seconds),
        }
    }
}

/// A tenant's settings, for create and update (on update, what is not given stays).
#[derive(Debug, Args)]
pub struct TenantFields {
    /// The tenant's name (a DNS label, e.g. acme).
    #[arg(long)]
    pub name: String,
    /// SPIFFE ID path prefix it owns (repeatable; whole segments). Default on create:
    /// /<name>.
    #[arg(long = "path-prefix")]
    pub path_prefixes: Vec<String>,
    /// Unix user who administers it on the admin socket (repeatable).
    #[arg(long = "admin-user")]
    pub admin_users: Vec<String>,
    /// Unix group whose members administer it (repeatable).
    #[arg(long = "admin-group")]
    pub admin_groups: Vec<String>,
    /// At most this many entries (0: no limit).
    #[arg(long)]
    pub max_entries: Option<i64>,
    /// At most this many open tasks (0: no limit).
    #[arg(long)]
    pub max_open_tasks: Option<i64>,
    /// At most this many tasks open at once on one of its entries (0: no tenant limit;
    /// the server's limit and policy's @max_parallel still apply).
    #[arg(long)]
    pub max_parallel_tasks_per_entry: Option<i64>,
    /// Default review period of its entries, e.g. 90d (0: none).
    #[arg(long, value_parser = parse_duration)]
    pub review_every: Option<Duration>,
}

/// Tenant commands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (platform operators).
    Create(TenantFields),
    /// List the tenants you may see.
    List,
    /// Show one tenant, with its domains and what it owns.
    Show {
        /// The tenant.
        #[arg(long)]
        name: String,
    },
    /// Change a tenant's settings (platform operators); lists given replace the current
    /// ones, settings not given stay.
    Update(TenantFields),
    /// Delete a tenant (refused while it owns entries, tasks or domains).
    Delete {
        /// The tenant.
        #[arg(long)]
        name: String,
    },
    /// DNS domains: claim one, verify it through DNS, give it up.
    Domain {
        /// Domain command.
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// The tenant's own Cedar policies, applied on top of the global set for its entries:
    /// a forbid denies, a permit adds approval or lowers the TTL cap, nothing widens.
    Policy {
        /// Tenant policy command.
        #[command(subcommand)]
        command: TenantPolicyCommand,
    },
}

/// Tenant policy commands.
#[derive(Debug, Subcommand)]
pub enum TenantPolicyCommand {
    /// Replace the tenant's policies with a Cedar file (validated first; an invalid file
    /// changes nothing). Tenant admins may set their own tenant's.
    Set {
        /// The tenant.
        #[arg(long)]
        name: String,
        /// The `.cedar` file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove the tenant's policies (the global set alone decides).
    Clear {
        /// The tenant.
        #[arg(long)]
        name: String,
    },
    /// Print the tenant's policies.
    Show {
        /// The tenant.
        #[arg(long)]
        name: String,
    },
}

/// Domain commands.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Claim a domain for a tenant: prints the TXT record to publish.
    Add(DomainArgs),
    /// Look the TXT record up; the domain is verified only when it holds the challenge.
    Verify(DomainArgs),
    /// Give a domain up: names under it are no longer issued.
    Remove(DomainArgs),
}

/// A tenant's domain.
#[derive(Debug, Args)]
pub struct DomainArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The domain, e.g. example.com (lowercase, no trailing dot).
    #[arg(long)]
    pub domain: String,
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
        #[arg(long)]
        task: Option<String>,
        /// Only the records of this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Recompute the hash chain and check it against the server's signed checkpoints;
    /// fails and names the first record that was edited, deleted, inserted or reordered,
    /// a truncation, a record rewritten with recomputed hashes, a reused sequence number
    /// and a checkpoint line whose signature does not verify.
    Verify {
        /// Check against this copy of the checkpoint file (`audit_checkpoints.jsonl` in the
        /// server's data directory) instead of asking the server; copy it before exporting
        /// the records.
        #[arg(long, requires = "public_key")]
        checkpoints: Option<PathBuf>,
        /// The public key that verifies the checkpoints (`audit_checkpoint_key.pub.pem`).
        #[arg(long, requires = "checkpoints")]
        public_key: Option<PathBuf>,
        /// Records exported with `audit show --output json` instead of the server's (no
        /// server needed).
        #[arg(long, requires = "checkpoints")]
        records: Option<PathBuf>,
    },
}

/// What a task activates or provisions, and why.
#[derive(Debug, Args)]
pub struct TaskSpecArgs {
    /// JIT access: the just-in-time entry to activate, by id.
    #[arg(long)]
    pub entry_id: Option<String>,
    /// JIT access: the just-in-time entry to activate, by SPIFFE ID; with --provision, the
    /// SPIFFE ID of the temporary entry.
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// JIT provisioning: create a temporary entry that is deleted when the task ends.
    #[arg(long)]
    pub provision: bool,
    /// Parent (agent) of the entry: narrows --spiffe-id, or names the temporary entry's.
    #[arg(long)]
    pub parent_id: Option<String>,
    /// Selectors of the temporary entry (with --provision), `type:value`.
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// Tenant of the temporary entry (with --provision; default: the one you administer,
    /// or for platform operators the tenant owning the SPIFFE ID's path).
    #[arg(long, requires = "provision")]
    pub tenant: Option<String>,
    /// Why the task exists.
    #[arg(long)]
    pub reason: Option<String>,
    /// Ticket reference, e.g. INC-1234.
    #[arg(long)]
    pub ticket: Option<String>,
    /// What the task may do (repeatable): RFC 6749 scope tokens, which policies can test
    /// and its JWT-SVIDs carry in the `scope` claim.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// A JWT audience the task will use (repeatable): its JWT-SVIDs are minted for these
    /// only; without any, the task gets X.509-SVIDs only.
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Lifetime from now, e.g. 900, 15m, 2h. Default: the longest the deciding policies
    /// allow (`@max_ttl`; the built-in operator policy allows 24h), never more than the
    /// server's max_task_ttl (24h unless configured).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Break-glass: start at once without approval, where a policy allowing the task
    /// carries @break_glass("allowed") for you (refused otherwise). Capped at the server's
    /// break_glass_max_ttl (15m unless configured), announced to SET receivers, and flagged
    /// in the access review until another operator acknowledges it.
    #[arg(long)]
    pub break_glass: bool,
}

impl TaskSpecArgs {
    /// The wire spec.
    pub fn into_spec(self) -> common::proto::tessera::TaskSpec {
        common::proto::tessera::TaskSpec {
            entry_id: self.entry_id.unwrap_or_default(),
            spiffe_id: self.spiffe_id.unwrap_or_default(),
            provision: self.provision,
            parent_id: self.parent_id.unwrap_or_default(),
            selectors: self.selectors,
            reason: self.reason.unwrap_or_default(),
            ticket: self.ticket.unwrap_or_default(),
            scopes: self.scopes,
            audiences: self.audiences,
            // 0 on the wire: the longest allowed.
            ttl_seconds: self.ttl.map_or(0, seconds),
            requester_spiffe_id: String::new(),
            tenant: self.tenant.unwrap_or_default(),
            // An operator's task is bound by selectors (the server refuses anything else).
            bind: String::new(),
            bind_pid: 0,
            break_glass: self.break_glass,
        }
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
        #[arg(long)]
        state: Option<String>,
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
    /// Acknowledge a break-glass task after the fact (you are the reviewer; the requester
    /// cannot): clears its `break_glass_unreviewed` flag, once, and records your note.
    Acknowledge {
        /// The task id.
        task_id: String,
        /// What the review found (required; recorded in the audit log).
        #[arg(long)]
        note: String,
    },
    /// End a task as completed.
    Complete {
        /// The task id.
        task_id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a task as failed.
    Fail {
        /// The task id.
        task_id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Withdraw a task (pending or active).
    Cancel {
        /// The task id.
        task_id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke a task now: its credentials are withdrawn from every agent.
    Revoke {
        /// The task id.
        task_id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
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

/// Owner commands.
#[derive(Debug, Subcommand)]
pub enum OwnerCommand {
    /// An owner leaves: end (revoke) every open task they requested or whose entry they
    /// own, and disable every entry they own, in the tenants you administer. Running it
    /// again changes nothing more.
    Offboard {
        /// The owner: user:NAME or a SPIFFE ID.
        #[arg(long)]
        owner: String,
        /// Why (recorded as `owner offboarded: REASON`).
        #[arg(long)]
        reason: Option<String>,
    },
}
