//! Server configuration: a TOML file, overridden by command-line flags, validated before
//! anything binds.
//!
//! Reading (`RawServerConfig` from TOML) and validating (`ServerConfig::from_raw`) are
//! separate steps so tests can build a config from data without touching the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TrustDomain;
use serde::Deserialize;

use crate::datastore::postgres::{PgAccess, SslMode, redact_url};
use crate::rate_limit::{MintLimits, Rate};

/// Default CA lifetime (as SPIRE's `ca_ttl`).
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default X.509-SVID lifetime (as SPIRE's `default_x509_svid_ttl`).
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default JWT-SVID lifetime.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// Default JWT signing key lifetime (how long a key signs before the next one takes over).
pub const DEFAULT_JWT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default agent SVID lifetime.
pub const DEFAULT_AGENT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default node API address.
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0:8081";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tessera/server";
/// The admin socket's path under a runtime directory (`/run` for root, else
/// `$XDG_RUNTIME_DIR`): see [`daemon::socket::default_daemon_socket`].
pub const ADMIN_SOCKET_IN_RUNTIME_DIR: &str = "tessera-server/admin.sock";
/// Default longest task lifetime.
pub const DEFAULT_MAX_TASK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default longest lifetime of a task's X.509-SVID (re-issued while the task runs).
pub const DEFAULT_TASK_X509_SVID_TTL: Duration = Duration::from_secs(5 * 60);
/// How often verified domains are checked again, by default.
pub const DEFAULT_DOMAIN_RECHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest SVID lifetime an entry may ask for.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Every server setting, declared once: the config file (`snake_case` keys) and the
/// `tessera-server run` flags (`--kebab-case`) both fill this struct, so a key cannot exist
/// in one and not the other. Every field is optional here; the file is read first, then
/// flags override it ([`RawServerConfig::merge`]), then [`ServerConfig::from_raw`] applies
/// the defaults and validates. Each field's doc comment is its `--help` text.
/// `Debug` hides a password in `datastore`.
#[derive(Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawServerConfig {
    /// Trust domain name, e.g. example.org (required).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Directory for the datastore and CA key [default: /var/lib/tessera/server].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node API listen address, IP:PORT [default: 0.0.0.0:8081].
    #[arg(long = "bind")]
    pub bind_address: Option<String>,
    /// Admin API Unix socket path [default: /run/tessera-server/admin.sock for root,
    /// $XDG_RUNTIME_DIR/tessera-server/admin.sock for other users].
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// Datastore: `sqlite` (default, `<data_dir>/datastore.sqlite3`), `sqlite:///abs/path`,
    /// or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (also `postgresql://`; prefer
    /// PGPASSWORD or datastore_password_file for the password: flags are visible in `ps`).
    #[arg(long)]
    pub datastore: Option<String>,
    /// PostgreSQL TLS mode: disable, prefer, require, verify-ca or verify-full (also
    /// `?sslmode=` in the URL) [default: verify-full with a CA file, else prefer].
    #[arg(long)]
    pub datastore_sslmode: Option<String>,
    /// PEM roots that authenticate the PostgreSQL server's certificate (also
    /// `?sslrootcert=` in the URL).
    #[arg(long)]
    pub datastore_ca_file: Option<PathBuf>,
    /// File holding the PostgreSQL password (one line; mode 0600 or stricter), instead of
    /// putting it in the URL.
    #[arg(long)]
    pub datastore_password_file: Option<PathBuf>,
    /// CA certificate lifetime, e.g. 24h [default: 24h].
    #[arg(long)]
    pub ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime, e.g. 1h [default: 1h].
    #[arg(long)]
    pub default_x509_svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime, e.g. 5m [default: 5m].
    #[arg(long)]
    pub default_jwt_svid_ttl: Option<String>,
    /// Agent SVID lifetime, e.g. 1h [default: 1h].
    #[arg(long)]
    pub agent_svid_ttl: Option<String>,
    /// How long a JWT signing key signs before the next one takes over [default: 24h].
    #[arg(long)]
    pub jwt_key_ttl: Option<String>,
    /// PEM certificate of an existing CA that signs Tessera's CA (then an intermediate).
    #[arg(long)]
    pub upstream_ca_cert: Option<PathBuf>,
    /// PEM private key of that upstream CA.
    #[arg(long)]
    pub upstream_ca_key: Option<PathBuf>,
    /// PEM root(s) to publish when the upstream certificate is not itself a root.
    #[arg(long)]
    pub upstream_bundle: Option<PathBuf>,
    /// IP:PORT for the HTTP /live and /ready endpoints (off when unset).
    #[arg(long)]
    pub health_address: Option<String>,
    /// Directory of Cedar task policies (`*.cedar`); the built-in set when unset.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// PEM bundle of the organisation CA(s) whose certificates agents may enroll with
    /// (x509pop node attestation; off when unset).
    #[arg(long)]
    pub x509pop_ca_file: Option<PathBuf>,
    /// Path of x509pop agent IDs, from validated certificate fields {fingerprint} (SHA-1
    /// of the leaf), {subject_cn} and {serial}; must stay under /tessera/agent/
    /// [default: /tessera/agent/x509pop/{fingerprint}].
    #[arg(long)]
    pub x509pop_agent_id_template: Option<String>,
    /// Longest task lifetime, whatever the policy allows, e.g. 8h [default: 24h].
    #[arg(long)]
    pub max_task_ttl: Option<String>,
    /// Longest lifetime of a task's X.509-SVID, e.g. 2m [default: 5m]: the agent renews
    /// it while the task runs, so a TLS peer that checks no CRL is exposed at most this long
    /// after the task ends.
    #[arg(long)]
    pub task_x509_svid_ttl: Option<String>,
    /// Longest lifetime of a break-glass task (one that skipped approval because policy
    /// allows break-glass for its requester), e.g. 10m [default: 15m].
    #[arg(long)]
    pub break_glass_max_ttl: Option<String>,
    /// Unix group whose members may use the admin API too (e.g. task approvers): the admin
    /// socket becomes group-accessible (0660).
    #[arg(long)]
    pub admin_group: Option<String>,
    /// Unix group that may connect to the admin socket (0660) without being a platform
    /// operator: tenant admins. Their calls act only for the tenants naming them
    /// [default: the admin group].
    #[arg(long)]
    pub admin_socket_group: Option<String>,
    /// DNS server (IP:PORT) that verifies tenants' domains [default: the system's
    /// resolv.conf].
    #[arg(long)]
    pub dns_resolver: Option<String>,
    /// How often verified domains are checked again, e.g. 1h [default: 1h].
    #[arg(long)]
    pub domain_recheck_interval: Option<String>,
    /// Longest time an audit record waits for a signed checkpoint of the chain, e.g. 10s
    /// [default: 10s].
    #[arg(long)]
    pub audit_checkpoint_interval: Option<String>,
    /// Records after which a checkpoint is signed at once [default: 1000].
    #[arg(long)]
    pub audit_checkpoint_records: Option<String>,
    /// JWT-SVIDs one workload (a SPIFFE ID on one agent) may have minted per second,
    /// sustained; more are refused with ResourceExhausted [default: 20].
    #[arg(long)]
    pub jwt_mint_rate_per_workload: Option<u32>,
    /// JWT-SVIDs one workload may have minted at once before its rate applies
    /// [default: 100].
    #[arg(long)]
    pub jwt_mint_burst_per_workload: Option<u32>,
    /// JWT-SVIDs all workloads of one agent together may have minted per second, sustained
    /// [default: 200].
    #[arg(long)]
    pub jwt_mint_rate_per_agent: Option<u32>,
    /// JWT-SVIDs all workloads of one agent may have minted at once before its rate applies
    /// [default: 1000].
    #[arg(long)]
    pub jwt_mint_burst_per_agent: Option<u32>,
    /// IP:PORT of the HTTPS listener for relying parties (OIDC discovery, JWKS, CRLs; off
    /// when unset). Needs relying_party_url, relying_party_cert_file and
    /// relying_party_key_file.
    #[arg(long)]
    pub relying_party_listen: Option<String>,
    /// Public https:// base URL of that listener, as relying parties reach it (put in the
    /// discovery document and in task X.509-SVIDs' CRL Distribution Points).
    #[arg(long)]
    pub relying_party_url: Option<String>,
    /// PEM certificate chain the relying-party listener presents (e.g. from the
    /// organisation's web PKI), leaf first.
    #[arg(long)]
    pub relying_party_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, SEC1 or PKCS#1; mode 0600 or stricter).
    #[arg(long)]
    pub relying_party_key_file: Option<PathBuf>,
    /// `iss` claim of every JWT-SVID, and the discovery document's issuer
    /// [default: relying_party_url when set, else no `iss`].
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// https:// URL of a Security Event Token receiver (RFC 8935 push): every task end is
    /// POSTed there as a signed SET (repeatable; off when none). Needs
    /// set_receiver_ca_file and a jwt_issuer (or relying_party_url).
    #[arg(long = "set-receiver", value_name = "URL")]
    #[serde(default)]
    pub set_receivers: Vec<String>,
    /// PEM roots trusted for the SET receivers' TLS certificates (required with
    /// set_receivers: the server carries no web roots of its own).
    #[arg(long)]
    pub set_receiver_ca_file: Option<PathBuf>,
    /// `aud` claim of every pushed SET [default: the receiver's URL].
    #[arg(long)]
    pub set_audience: Option<String>,
    /// How long a SET is retried for a receiver that does not accept it, from the event,
    /// before it is abandoned (audited as set.abandoned), e.g. 2h [default: 24h].
    #[arg(long)]
    pub set_give_up_after: Option<String>,
    /// Most tasks open at once on one just-in-time entry (one per bound process)
    /// [default: 16].
    #[arg(long)]
    pub max_parallel_tasks_per_entry: Option<u32>,
    /// Log level: trace, debug, info, warn or error [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
}

impl std::fmt::Debug for RawServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new key cannot be forgotten here.
        let Self {
            trust_domain,
            data_dir,
            bind_address,
            admin_socket,
            datastore,
            datastore_sslmode,
            datastore_ca_file,
            datastore_password_file,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            jwt_key_ttl,
            upstream_ca_cert,
            upstream_ca_key,
            upstream_bundle,
            health_address,
            policy_dir,
            x509pop_ca_file,
            x509pop_agent_id_template,
            max_task_ttl,
            task_x509_svid_ttl,
            break_glass_max_ttl,
            admin_group,
            admin_socket_group,
            dns_resolver,
            domain_recheck_interval,
            audit_checkpoint_interval,
            audit_checkpoint_records,
            jwt_mint_rate_per_workload,
            jwt_mint_burst_per_workload,
            jwt_mint_rate_per_agent,
            jwt_mint_burst_per_agent,
            relying_party_listen,
            relying_party_url,
            relying_party_cert_file,
            relying_party_key_file,
            jwt_issuer,
            set_receivers,
            set_receiver_ca_file,
            set_audience,
            set_give_up_after,
            max_parallel_tasks_per_entry,
            log_level,
            log_format,
        } = self;
        f.debug_struct("RawServerConfig")
            .field("trust_domain", trust_domain)
            .field("data_dir", data_dir)
            .field("bind_address", bind_address)
            .field("admin_socket", admin_socket)
            .field("datastore", &datastore.as_deref().map(redact_url))
            .field("datastore_sslmode", datastore_sslmode)
            .field("datastore_ca_file", datastore_ca_file)
            .field("datastore_password_file", datastore_password_file)
            .field("ca_ttl", ca_ttl)
            .field("default_x509_svid_ttl", default_x509_svid_ttl)
            .field("default_jwt_svid_ttl", default_jwt_svid_ttl)
            .field("agent_svid_ttl", agent_svid_ttl)
            .field("jwt_key_ttl", jwt_key_ttl)
            .field("upstream_ca_cert", upstream_ca_cert)
            .field("upstream_ca_key", upstream_ca_key)
            .field("upstream_bundle", upstream_bundle)
            .field("health_address", health_address)
            .field("policy_dir", policy_dir)
            .field("x509pop_ca_file", x509pop_ca_file)
            .field("x509pop_agent_id_template", x509pop_agent_id_template)
            .field("max_task_ttl", max_task_ttl)
            .field("task_x509_svid_ttl", task_x509_svid_ttl)
            .field("break_glass_max_ttl", break_glass_max_ttl)
            .field("admin_group", admin_group)
            .field("admin_socket_group", admin_socket_group)
            .field("dns_resolver", dns_resolver)
            .field("domain_recheck_interval", domain_recheck_interval)
            .field("audit_checkpoint_interval", audit_checkpoint_interval)
            .field("audit_checkpoint_records", audit_checkpoint_records)
            .field("jwt_mint_rate_per_workload", jwt_mint_rate_per_workload)
            .field("jwt_mint_burst_per_workload", jwt_mint_burst_per_workload)
            .field("jwt_mint_rate_per_agent", jwt_mint_rate_per_agent)
            .field("jwt_mint_burst_per_agent", jwt_mint_burst_per_agent)
            .field("relying_party_listen", relying_party_listen)
            .field("relying_party_url", relying_party_url)
            .field("relying_party_cert_file", relying_party_cert_file)
            .field("relying_party_key_file", relying_party_key_file)
            .field("jwt_issuer", jwt_issuer)
            .field("set_receivers", set_receivers)
            .field("set_receiver_ca_file", set_receiver_ca_file)
            .field("set_audience", set_audience)
            .field("set_give_up_after", set_give_up_after)
            .field("max_parallel_tasks_per_entry", max_parallel_tasks_per_entry)
            .field("log_level", log_level)
            .field("log_format", log_format)
            .finish()
    }
}

/// Where the server keeps its records. `Debug` and [`DatastoreUrl::describe`] hide a
/// PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatastoreUrl {
    /// Embedded SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (a validated `postgres://` or `postgresql://` URL, which may
    /// carry a password).
    Postgres(String),
}

impl DatastoreUrl {
    /// The location for logs and errors: a path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(url) => redact_url(url),
        }
    }
}

impl std::fmt::Debug for DatastoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

/// An upstream authority given as files.
#[derive(Debug, Clone)]
pub struct UpstreamFiles {
    /// The CA certificate (then any intermediates).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// Roots to publish, when the certificate is not a root.
    pub bundle_file: Option<PathBuf>,
}

/// The relying-party listener's settings (all four keys given, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingPartyListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its public base URL: `https://`, no trailing slash, query or fragment.
    pub url: String,
    /// Its certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// Security Event Token push (`set_receivers` given, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPushConfig {
    /// The receivers' https:// URLs, distinct, no trailing slash.
    pub receivers: Vec<String>,
    /// PEM roots their TLS certificates must chain to.
    pub ca_file: PathBuf,
    /// The `aud` of every SET; `None`: each receiver's URL.
    pub audience: Option<String>,
    /// The `iss` of every SET (the JWT issuer).
    pub issuer: String,
    /// How long an event is retried for a receiver, from when it happened, before it is
    /// abandoned for that receiver.
    pub give_up_after: Duration,
}

/// Most SET receivers.
const MAX_SET_RECEIVERS: usize = 16;

/// Longest accepted `relying_party_url` or `jwt_issuer`.
const MAX_URL_LENGTH: usize = 512;

/// Checks a public `https://` base URL: a host (and optional port and path), no user
/// info, query or fragment, no spaces or control characters. Returns it without a
/// trailing slash, so paths can be appended.
fn https_base_url(key: &'static str, url: &str) -> Result<String, ServerConfigError> {
    let invalid = |message: String| ServerConfigError::Invalid { key, message };
    if url.len() > MAX_URL_LENGTH {
        return Err(invalid(format!("longer than {MAX_URL_LENGTH} bytes")));
    }
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| invalid(format!("{url:?} is not an https:// URL")))?;
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '@' | '\\'))
    {
        return Err(invalid(format!(
            "{url:?} contains {c:?} (no user info, query, fragment or spaces)"
        )));
    }
    let host = rest.split('/').next().unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !host.ends_with(']') => {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid(format!("{url:?} has an invalid port {port:?}")));
            }
            name
        }
        _ => host,
    };
    if name.is_empty() {
        return Err(invalid(format!("{url:?} has no host")));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// Datastore and key directory.
    pub data_dir: PathBuf,
    /// Node API address.
    pub bind_address: SocketAddr,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Datastore location.
    pub datastore: DatastoreUrl,
    /// PostgreSQL TLS and password file settings (all unset with SQLite).
    pub datastore_access: PgAccess,
    /// CA lifetime.
    pub ca_ttl: Duration,
    /// Default X.509-SVID lifetime.
    pub default_x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub default_jwt_svid_ttl: Duration,
    /// Agent SVID lifetime.
    pub agent_svid_ttl: Duration,
    /// JWT signing key lifetime.
    pub jwt_key_ttl: Duration,
    /// Upstream authority, if the CA is to be an intermediate.
    pub upstream: Option<UpstreamFiles>,
    /// Health endpoints address, if enabled.
    pub health_address: Option<SocketAddr>,
    /// Cedar policy directory (the built-in set when `None`).
    pub policy_dir: Option<PathBuf>,
    /// x509pop trust anchors (PEM bundle, absolute path), if x509pop is enabled.
    pub x509pop_ca_file: Option<PathBuf>,
    /// x509pop agent ID template (the default when `None`).
    pub x509pop_agent_id_template: Option<String>,
    /// Longest task lifetime.
    pub max_task_ttl: Duration,
    /// Longest lifetime of a task's X.509-SVID.
    pub task_x509_svid_ttl: Duration,
    /// Longest lifetime of a break-glass task.
    pub break_glass_max_ttl: Duration,
    /// Group allowed on the admin socket besides root and the server's user, by gid.
    pub admin_gid: Option<u32>,
    /// Group that may connect to the admin socket (tenant admins among them), by gid.
    pub admin_socket_gid: Option<u32>,
    /// DNS server verifying tenants' domains (`None`: the system's configuration).
    pub dns_resolver: Option<SocketAddr>,
    /// How often verified domains are checked again.
    pub domain_recheck_interval: Duration,
    /// Longest time an audit record waits for a signed checkpoint.
    pub audit_checkpoint_interval: Duration,
    /// Records after which a checkpoint is signed at once.
    pub audit_checkpoint_records: u64,
    /// JWT-SVID mint rate limits.
    pub jwt_mint_limits: MintLimits,
    /// The HTTPS listener for relying parties, if enabled.
    pub relying_party: Option<RelyingPartyListener>,
    /// The `iss` of every JWT-SVID (and the discovery document's issuer), if any.
    pub jwt_issuer: Option<String>,
    /// Security Event Token push to receivers, if any are configured.
    pub set_push: Option<SetPushConfig>,
    /// Most tasks open at once on one just-in-time entry.
    pub max_parallel_tasks_per_entry: u32,
    /// Log filter.
    pub log_level: String,
    /// Emit JSON log lines.
    pub log_json: bool,
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// A key has an invalid value.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The config key or flag.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A required key is missing.
    #[error("missing {0} (set it in the config file or with --{1})")]
    Missing(&'static str, &'static str),
}

impl RawServerConfig {
    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ServerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ServerConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// `self` (the file) with every key that `over` (the flags) sets replaced by its value.
    pub fn merge(self, over: Self) -> Self {
        // Destructured, so a new key cannot be forgotten here.
        let Self {
            trust_domain,
            data_dir,
            bind_address,
            admin_socket,
            datastore,
            datastore_sslmode,
            datastore_ca_file,
            datastore_password_file,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            jwt_key_ttl,
            upstream_ca_cert,
            upstream_ca_key,
            upstream_bundle,
            health_address,
            policy_dir,
            x509pop_ca_file,
            x509pop_agent_id_template,
            max_task_ttl,
            task_x509_svid_ttl,
            break_glass_max_ttl,
            admin_group,
            admin_socket_group,
            dns_resolver,
            domain_recheck_interval,
            audit_checkpoint_interval,
            audit_checkpoint_records,
            jwt_mint_rate_per_workload,
            jwt_mint_burst_per_workload,
            jwt_mint_rate_per_agent,
            jwt_mint_burst_per_agent,
            relying_party_listen,
            relying_party_url,
            relying_party_cert_file,
            relying_party_key_file,
            jwt_issuer,
            set_receivers,
            set_receiver_ca_file,
            set_audience,
            set_give_up_after,
            max_parallel_tasks_per_entry,
            log_level,
            log_format,
        } = over;
        Self {
            trust_domain: trust_domain.or(self.trust_domain),
            data_dir: data_dir.or(self.data_dir),
            bind_address: bind_address.or(self.bind_address),
            admin_socket: admin_socket.or(self.admin_socket),
            datastore: datastore.or(self.datastore),
            datastore_sslmode: datastore_sslmode.or(self.datastore_sslmode),
            datastore_ca_file: datastore_ca_file.or(self.datastore_ca_file),
            datastore_password_file: datastore_password_file.or(self.datastore_password_file),
            ca_ttl: ca_ttl.or(self.ca_ttl),
            default_x509_svid_ttl: default_x509_svid_ttl.or(self.default_x509_svid_ttl),
            default_jwt_svid_ttl: default_jwt_svid_ttl.or(self.default_jwt_svid_ttl),
            agent_svid_ttl: agent_svid_ttl.or(self.agent_svid_ttl),
            jwt_key_ttl: jwt_key_ttl.or(self.jwt_key_ttl),
            upstream_ca_cert: upstream_ca_cert.or(self.upstream_ca_cert),
            upstream_ca_key: upstream_ca_key.or(self.upstream_ca_key),
            upstream_bundle: upstream_bundle.or(self.upstream_bundle),
            health_address: health_address.or(self.health_address),
            policy_dir: policy_dir.or(self.policy_dir),
            x509pop_ca_file: x509pop_ca_file.or(self.x509pop_ca_file),
            x509pop_agent_id_template: x509pop_agent_id_template.or(self.x509pop_agent_id_template),
            max_task_ttl: max_task_ttl.or(self.max_task_ttl),
            task_x509_svid_ttl: task_x509_svid_ttl.or(self.task_x509_svid_ttl),
            break_glass_max_ttl: break_glass_max_ttl.or(self.break_glass_max_ttl),
            admin_group: admin_group.or(self.admin_group),
            admin_socket_group: admin_socket_group.or(self.admin_socket_group),
            dns_resolver: dns_resolver.or(self.dns_resolver),
            domain_recheck_interval: domain_recheck_interval.or(self.domain_recheck_interval),
            audit_checkpoint_interval: audit_checkpoint_interval.or(self.audit_checkpoint_interval),
            audit_checkpoint_records: audit_checkpoint_records.or(self.audit_checkpoint_records),
            jwt_mint_rate_per_workload: jwt_mint_rate_per_workload
                .or(self.jwt_mint_rate_per_workload),
            jwt_mint_burst_per_workload: jwt_mint_burst_per_workload
                .or(self.jwt_mint_burst_per_workload),
            jwt_mint_rate_per_agent: jwt_mint_rate_per_agent.or(self.jwt_mint_rate_per_agent),
            jwt_mint_burst_per_agent: jwt_mint_burst_per_agent.or(self.jwt_mint_burst_per_agent),
            relying_party_listen: relying_party_listen.or(self.relying_party_listen),
            relying_party_url: relying_party_url.or(self.relying_party_url),
            relying_party_cert_file: relying_party_cert_file.or(self.relying_party_cert_file),
            relying_party_key_file: relying_party_key_file.or(self.relying_party_key_file),
            jwt_issuer: jwt_issuer.or(self.jwt_issuer),
            // A list from the flags replaces the file's list as a whole.
            set_receivers: if set_receivers.is_empty() {
                self.set_receivers
            } else {
                set_receivers
            },
            set_receiver_ca_file: set_receiver_ca_file.or(self.set_receiver_ca_file),
            set_audience: set_audience.or(self.set_audience),
            set_give_up_after: set_give_up_after.or(self.set_give_up_after),
            max_parallel_tasks_per_entry: max_parallel_tasks_per_entry
                .or(self.max_parallel_tasks_per_entry),
            log_level: log_level.or(self.log_level),
            log_format: log_format.or(self.log_format),
        }
    }
}

pub use common::duration::parse_duration;

/// Default of `break_glass_max_ttl`: the longest a break-glass task lives.
pub const DEFAULT_BREAK_GLASS_MAX_TTL: Duration = Duration::from_secs(15 * 60);
/// Default of `set_give_up_after`: how old an event may get before its SET is abandoned
/// for a receiver.
pub const DEFAULT_SET_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Default of `max_parallel_tasks_per_entry`.
pub const DEFAULT_MAX_PARALLEL_TASKS_PER_ENTRY: u32 = 16;

/// A count that must be at least 1, or `default`.
fn at_least_one(key: &'static str, v: Option<u32>, default: u32) -> Result<u32, ServerConfigError> {
    match v {
        None => Ok(default),
        Some(0) => Err(ServerConfigError::Invalid {
            key,
            message: "must be at least 1".into(),
        }),
        Some(n) => Ok(n),
    }
}

/// `path` made absolute against the current directory.
fn absolute(
    key: &'static str,
    path: Option<PathBuf>,
) -> Result<Option<PathBuf>, ServerConfigError> {
    path.map(|p| {
        std::path::absolute(&p).map_err(|e| ServerConfigError::Invalid {
            key,
            message: format!("{}: {e}", p.display()),
        })
    })
    .transpose()
}

fn duration(
    key: &'static str,
    v: Option<&String>,
    default: Duration,
) -> Result<Duration, ServerConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|message| ServerConfigError::Invalid { key, message }),
    }
}

/// [`duration`], refusing zero.
fn positive_duration(
    key: &'static str,
    v: Option<&String>,
    default: Duration,
) -> Result<Duration, ServerConfigError> {
    let d = duration(key, v, default)?;
    if d.is_zero() {
        return Err(ServerConfigError::Invalid {
            key,
            message: "must be longer than 0s".into(),
        });
    }
    Ok(d)
}

impl ServerConfig {
    /// The configuration `tessera-server run` uses: the file at `file` (if any), then
    /// `flags` over it, then defaults, validated.
    pub fn load(file: Option<&Path>, flags: RawServerConfig) -> Result<Self, ServerConfigError> {
        let from_file = match file {
            Some(p) => RawServerConfig::from_file(p)?,
            None => RawServerConfig::default(),
        };
        Self::from_raw(from_file.merge(flags))
    }

    /// Validates a raw config.
    pub fn from_raw(raw: RawServerConfig) -> Result<Self, ServerConfigError> {
        let td = raw
            .trust_domain
            .as_deref()
            .ok_or(ServerConfigError::Missing("trust_domain", "trust-domain"))?;
        let trust_domain = TrustDomain::new(td).map_err(|e| ServerConfigError::Invalid {
            key: "trust_domain",
            message: e.to_string(),
        })?;
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let bind = raw.bind_address.as_deref().unwrap_or(DEFAULT_BIND_ADDRESS);
        let bind_address = bind.parse().map_err(|_| ServerConfigError::Invalid {
            key: "bind_address",
            message: format!("{bind:?} is not IP:PORT"),
        })?;
        let admin_socket = raw
            .admin_socket
            .unwrap_or_else(|| daemon::socket::default_daemon_socket(ADMIN_SOCKET_IN_RUNTIME_DIR));
        if !admin_socket.is_absolute() {
            return Err(ServerConfigError::Invalid {
                key: "admin_socket",
                message: "must be an absolute path".into(),
            });
        }
        let datastore_access = PgAccess {
            ssl_mode: raw
                .datastore_sslmode
                .as_deref()
                .map(SslMode::parse)
                .transpose()
                .map_err(|message| ServerConfigError::Invalid {
                    key: "datastore_sslmode",
                    message,
                })?,
            // Relative to the directory the server was started in, like the policy directory.
            ca_file: absolute("datastore_ca_file", raw.datastore_ca_file)?,
            password_file: absolute("datastore_password_file", raw.datastore_password_file)?,
        };
        let datastore = match raw.datastore.as_deref() {
            None | Some("sqlite") => DatastoreUrl::Sqlite(data_dir.join("datastore.sqlite3")),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                crate::datastore::postgres::validate_url(url, &datastore_access).map_err(
                    |message| ServerConfigError::Invalid {
                        key: "datastore",
                        message,
                    },
                )?;
                DatastoreUrl::Postgres(url.to_owned())
            }
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(path) if path.starts_with('/') => DatastoreUrl::Sqlite(PathBuf::from(path)),
                _ => {
                    return Err(ServerConfigError::Invalid {
                        key: "datastore",
                        message: format!(
                            "{:?} is not supported (use \"sqlite\", \"sqlite:///absolute/path\" or \"postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE\")",
                            redact_url(url)
                        ),
                    });
                }
            },
        };
        if matches!(datastore, DatastoreUrl::Sqlite(_)) && datastore_access != PgAccess::default() {
            return Err(ServerConfigError::Invalid {
                key: "datastore_sslmode",
                message: "datastore_sslmode, datastore_ca_file and datastore_password_file apply only to a postgres:// datastore".into(),
            });
        }
        let ca_ttl = duration("ca_ttl", raw.ca_ttl.as_ref(), DEFAULT_CA_TTL)?;
        let default_x509_svid_ttl = duration(
            "default_x509_svid_ttl",
            raw.default_x509_svid_ttl.as_ref(),
            DEFAULT_X509_SVID_TTL,
        )?;
        let default_jwt_svid_ttl = duration(
            "default_jwt_svid_ttl",
            raw.default_jwt_svid_ttl.as_ref(),
            DEFAULT_JWT_SVID_TTL,
        )?;
        let agent_svid_ttl = duration(
            "agent_svid_ttl",
            raw.agent_svid_ttl.as_ref(),
            DEFAULT_AGENT_SVID_TTL,
        )?;
        let jwt_key_ttl = duration("jwt_key_ttl", raw.jwt_key_ttl.as_ref(), DEFAULT_JWT_KEY_TTL)?;
        if default_jwt_svid_ttl > jwt_key_ttl {
            return Err(ServerConfigError::Invalid {
                key: "default_jwt_svid_ttl",
                message: format!(
                    "{}s is longer than jwt_key_ttl ({}s): JWT-SVIDs never outlive their signing key's term",
                    default_jwt_svid_ttl.as_secs(),
                    jwt_key_ttl.as_secs()
                ),
            });
        }
        for (key, ttl) in [
            ("default_x509_svid_ttl", default_x509_svid_ttl),
            ("agent_svid_ttl", agent_svid_ttl),
        ] {
            if ttl > ca_ttl {
                return Err(ServerConfigError::Invalid {
                    key,
                    message: format!(
                        "{}s is longer than ca_ttl ({}s): SVIDs would be cut short by the CA's expiry",
                        ttl.as_secs(),
                        ca_ttl.as_secs()
                    ),
                });
            }
        }
        let upstream = match (raw.upstream_ca_cert, raw.upstream_ca_key) {
            (Some(cert_file), Some(key_file)) => Some(UpstreamFiles {
                cert_file,
                key_file,
                bundle_file: raw.upstream_bundle,
            }),
            (None, None) if raw.upstream_bundle.is_none() => None,
            _ => {
                return Err(ServerConfigError::Invalid {
                    key: "upstream_ca_cert",
                    message: "upstream_ca_cert and upstream_ca_key go together (upstream_bundle needs both)".into(),
                });
            }
        };
        let health_address = raw
            .health_address
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| ServerConfigError::Invalid {
                    key: "health_address",
                    message: format!("{a:?} is not IP:PORT"),
                })
            })
            .transpose()?;
        let max_task_ttl = duration(
            "max_task_ttl",
            raw.max_task_ttl.as_ref(),
            DEFAULT_MAX_TASK_TTL,
        )?;
        let task_x509_svid_ttl = duration(
            "task_x509_svid_ttl",
            raw.task_x509_svid_ttl.as_ref(),
            DEFAULT_TASK_X509_SVID_TTL,
        )?;
        let break_glass_max_ttl = positive_duration(
            "break_glass_max_ttl",
            raw.break_glass_max_ttl.as_ref(),
            DEFAULT_BREAK_GLASS_MAX_TTL,
        )?;
        let group = |key: &'static str, name: Option<&str>| {
            name.map(|g| match nix::unistd::Group::from_name(g) {
                Ok(Some(grp)) => Ok(grp.gid.as_raw()),
                // A gid without a name in the group database is still a group.
                _ => g.parse::<u32>().map_err(|_| ServerConfigError::Invalid {
                    key,
                    message: format!("no Unix group named {g:?}"),
                }),
            })
            .transpose()
        };
        let admin_gid = group("admin_group", raw.admin_group.as_deref())?;
        let admin_socket_gid =
            group("admin_socket_group", raw.admin_socket_group.as_deref())?.or(admin_gid);
        let dns_resolver = raw
            .dns_resolver
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| ServerConfigError::Invalid {
                        key: "dns_resolver",
                        message: format!("{a:?} is not IP:PORT"),
                    })
            })
            .transpose()?;
        let domain_recheck_interval = duration(
            "domain_recheck_interval",
            raw.domain_recheck_interval.as_ref(),
            DEFAULT_DOMAIN_RECHECK_INTERVAL,
        )?;
        // Relative to the directory the server was started in (a reload must find the
        // same files whatever the daemon's working directory becomes).
        let policy_dir = raw
            .policy_dir
            .map(|d| {
                std::path::absolute(&d).map_err(|e| ServerConfigError::Invalid {
                    key: "policy_dir",
                    message: format!("{}: {e}", d.display()),
                })
            })
            .transpose()?;
        let x509pop_ca_file = raw
            .x509pop_ca_file
            .map(|f| {
                std::path::absolute(&f).map_err(|e| ServerConfigError::Invalid {
                    key: "x509pop_ca_file",
                    message: format!("{}: {e}", f.display()),
                })
            })
            .transpose()?;
        let x509pop_agent_id_template = raw.x509pop_agent_id_template;
        match &x509pop_ca_file {
            Some(file) => {
                crate::x509pop::X509Pop::from_pem_file(
                    file,
                    x509pop_agent_id_template.as_deref(),
                    trust_domain.clone(),
                )
                .map_err(|message| ServerConfigError::Invalid {
                    key: "x509pop_ca_file",
                    message,
                })?;
            }
            None if x509pop_agent_id_template.is_some() => {
                return Err(ServerConfigError::Invalid {
                    key: "x509pop_agent_id_template",
                    message: "needs x509pop_ca_file".to_owned(),
                });
            }
            None => {}
        }
        let audit_checkpoint_interval = duration(
            "audit_checkpoint_interval",
            raw.audit_checkpoint_interval.as_ref(),
            crate::audit::anchor::DEFAULT_INTERVAL,
        )?;
        if audit_checkpoint_interval.is_zero() {
            return Err(ServerConfigError::Invalid {
                key: "audit_checkpoint_interval",
                message: "must be longer than 0s".into(),
            });
        }
        let audit_checkpoint_records = match raw.audit_checkpoint_records.as_deref() {
            None => crate::audit::anchor::DEFAULT_RECORDS,
            Some(n) => n.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ServerConfigError::Invalid {
                    key: "audit_checkpoint_records",
                    message: format!("{n:?} is not a whole number of at least 1"),
                }
            })?,
        };
        let defaults = MintLimits::default();
        let jwt_mint_limits = MintLimits {
            per_workload: Rate {
                per_second: at_least_one(
                    "jwt_mint_rate_per_workload",
                    raw.jwt_mint_rate_per_workload,
                    defaults.per_workload.per_second,
                )?,
                burst: at_least_one(
                    "jwt_mint_burst_per_workload",
                    raw.jwt_mint_burst_per_workload,
                    defaults.per_workload.burst,
                )?,
            },
            per_agent: Rate {
                per_second: at_least_one(
                    "jwt_mint_rate_per_agent",
                    raw.jwt_mint_rate_per_agent,
                    defaults.per_agent.per_second,
                )?,
                burst: at_least_one(
                    "jwt_mint_burst_per_agent",
                    raw.jwt_mint_burst_per_agent,
                    defaults.per_agent.burst,
                )?,
            },
        };
        let relying_party = match (
            raw.relying_party_listen.as_deref(),
            raw.relying_party_url.as_deref(),
            raw.relying_party_cert_file,
            raw.relying_party_key_file,
        ) {
            (None, None, None, None) => None,
            (Some(listen), Some(url), Some(cert_file), Some(key_file)) => {
                Some(RelyingPartyListener {
                    listen: listen.parse().map_err(|_| ServerConfigError::Invalid {
                        key: "relying_party_listen",
                        message: format!("{listen:?} is not IP:PORT"),
                    })?,
                    url: https_base_url("relying_party_url", url)?,
                    cert_file,
                    key_file,
                })
            }
            (listen, url, cert, key) => {
                let missing: Vec<&str> = [
                    ("relying_party_listen", listen.is_none()),
                    ("relying_party_url", url.is_none()),
                    ("relying_party_cert_file", cert.is_none()),
                    ("relying_party_key_file", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(k, missing)| missing.then_some(k))
                .collect();
                return Err(ServerConfigError::Invalid {
                    key: "relying_party_listen",
                    message: format!(
                        "the relying-party listener needs relying_party_listen, relying_party_url, relying_party_cert_file and relying_party_key_file together; missing {}",
                        missing.join(", ")
                    ),
                });
            }
        };
        let jwt_issuer = match raw.jwt_issuer.as_deref() {
            Some(iss) => Some(https_base_url("jwt_issuer", iss).map(|_| iss.to_owned())?),
            None => relying_party.as_ref().map(|rp| rp.url.clone()),
        };
        let set_give_up_after = positive_duration(
            "set_give_up_after",
            raw.set_give_up_after.as_ref(),
            DEFAULT_SET_GIVE_UP_AFTER,
        )?;
        let set_push = set_push(
            raw.set_receivers,
            raw.set_receiver_ca_file,
            raw.set_audience,
            jwt_issuer.as_deref(),
        )?
        .map(|p| SetPushConfig {
            give_up_after: set_give_up_after,
            ..p
        });
        let max_parallel_tasks_per_entry = at_least_one(
            "max_parallel_tasks_per_entry",
            raw.max_parallel_tasks_per_entry,
            DEFAULT_MAX_PARALLEL_TASKS_PER_ENTRY,
        )?;
        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
            return Err(ServerConfigError::Invalid {
                key: "log_level",
                message: format!("{log_level:?} is not one of trace, debug, info, warn, error"),
            });
        }
        let log_json = match raw.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ServerConfigError::Invalid {
                    key: "log_format",
                    message: format!("{other:?} is not text or json"),
                });
            }
        };
        Ok(Self {
            trust_domain,
            data_dir,
            bind_address,
            admin_socket,
            datastore,
            datastore_access,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            jwt_key_ttl,
            upstream,
            health_address,
            policy_dir,
            x509pop_ca_file,
            x509pop_agent_id_template,
            max_task_ttl,
            task_x509_svid_ttl,
            break_glass_max_ttl,
            admin_gid,
            admin_socket_gid,
            dns_resolver,
            domain_recheck_interval,
            audit_checkpoint_interval,
            audit_checkpoint_records,
            jwt_mint_limits,
            relying_party,
            jwt_issuer,
            set_push,
            max_parallel_tasks_per_entry,
            log_level,
            log_json,
        })
    }
}

/// Validates the SET push keys: either none of them, or receivers (https, distinct) with
/// a CA file and an issuer to name.
fn set_push(
    receivers: Vec<String>,
    ca_file: Option<PathBuf>,
    audience: Option<String>,
    issuer: Option<&str>,
) -> Result<Option<SetPushConfig>, ServerConfigError> {
    if receivers.is_empty() {
        if ca_file.is_some() || audience.is_some() {
            return Err(ServerConfigError::Invalid {
                key: "set_receivers",
                message:
                    "set_receiver_ca_file and set_audience need at least one set_receivers URL"
                        .into(),
            });
        }
        return Ok(None);
    }
    if receivers.len() > MAX_SET_RECEIVERS {
        return Err(ServerConfigError::Invalid {
            key: "set_receivers",
            message: format!("at most {MAX_SET_RECEIVERS} receivers"),
        });
    }
    let mut urls: Vec<String> = Vec::with_capacity(receivers.len());
    for r in &receivers {
        let url = https_base_url("set_receivers", r)?;
        if urls.contains(&url) {
            return Err(ServerConfigError::Invalid {
                key: "set_receivers",
                message: format!("{r:?} is given twice"),
            });
        }
        urls.push(url);
    }
    let ca_file = ca_file.ok_or_else(|| ServerConfigError::Invalid {
        key: "set_receiver_ca_file",
        message:
            "set_receivers needs set_receiver_ca_file (PEM roots for the receivers' certificates)"
                .into(),
    })?;
    if let Some(aud) = &audience
        && (aud.is_empty()
            || aud.len() > MAX_URL_LENGTH
            || aud.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(ServerConfigError::Invalid {
            key: "set_audience",
            message: format!(
                "{aud:?} must be 1 to {MAX_URL_LENGTH} bytes without spaces or control characters"
            ),
        });
    }
    let issuer = issuer.ok_or_else(|| ServerConfigError::Invalid {
        key: "set_receivers",
        message: "set_receivers needs jwt_issuer or relying_party_url (the SETs' iss, whose keys receivers fetch)".into(),
    })?;
    Ok(Some(SetPushConfig {
        receivers: urls,
        ca_file,
        audience,
        issuer: issuer.to_owned(),
        give_up_after: DEFAULT_SET_GIVE_UP_AFTER,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(td: &str) -> RawServerConfig {
        RawServerConfig {
            trust_domain: Some(td.into()),
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        let c = ServerConfig::from_raw(raw("example.org")).unwrap();
        assert_eq!(c.ca_ttl, DEFAULT_CA_TTL);
        assert_eq!(c.default_x509_svid_ttl, DEFAULT_X509_SVID_TTL);
        assert!(matches!(
            ServerConfig::from_raw(RawServerConfig::default()),
            Err(ServerConfigError::Missing("trust_domain", _))
        ));
        assert!(matches!(
            ServerConfig::from_raw(raw("Example.org")),
            Err(ServerConfigError::Invalid {
                key: "trust_domain",
                ..
            })
        ));
        let mut r = raw("example.org");
        r.default_x509_svid_ttl = Some("48h".into());
        assert!(matches!(
            ServerConfig::from_raw(r),
            Err(ServerConfigError::Invalid {
                key: "default_x509_svid_ttl",
                ..
            })
        ));
        let mut r = raw("example.org");
        r.datastore = Some("mysql://x".into());
        assert!(matches!(
            ServerConfig::from_raw(r),
            Err(ServerConfigError::Invalid {
                key: "datastore",
                ..
            })
        ));
        for (url, want) in [
            (
                "sqlite",
                DatastoreUrl::Sqlite(c.data_dir.join("datastore.sqlite3")),
            ),
            (
                "sqlite:///srv/ds.sqlite3",
                DatastoreUrl::Sqlite("/srv/ds.sqlite3".into()),
            ),
            (
                "postgres://tessera@db.example:5432/tessera",
                DatastoreUrl::Postgres("postgres://tessera@db.example:5432/tessera".into()),
            ),
            (
                "postgresql://tessera:s3cret@db.example/tessera",
                DatastoreUrl::Postgres("postgresql://tessera:s3cret@db.example/tessera".into()),
            ),
        ] {
            let mut r = raw("example.org");
            r.datastore = Some(url.into());
            assert_eq!(ServerConfig::from_raw(r).unwrap().datastore, want, "{url}");
        }
        // A password never shows in Debug output or errors.
        let mut r = raw("example.org");
        r.datastore = Some("postgres://tessera:s3cret@db.example/tessera".into());
        assert!(!format!("{r:?}").contains("s3cret"));
        let c = ServerConfig::from_raw(r).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(
            c.datastore.describe(),
            "postgres://tessera:***@db.example/tessera"
        );
        for bad in [
            "postgres://tessera:s3cret@db.example:notaport/tessera",
            "postgres://tessera:s3cret@[::1/tessera",
            "postgresx://tessera:s3cret@db/tessera",
        ] {
            let mut r = raw("example.org");
            r.datastore = Some(bad.into());
            let err = ServerConfig::from_raw(r).unwrap_err();
            assert!(
                matches!(
                    err,
                    ServerConfigError::Invalid {
                        key: "datastore",
                        ..
                    }
                ),
                "{bad}"
            );
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        let mut r = raw("example.org");
        r.bind_address = Some("localhost".into());
        assert!(matches!(
            ServerConfig::from_raw(r),
            Err(ServerConfigError::Invalid {
                key: "bind_address",
                ..
            })
        ));
        assert!(RawServerConfig::from_toml("nonsense = 1").is_err());
        assert_eq!(c.audit_checkpoint_records, 1000);
        for (key, value) in [
            ("audit_checkpoint_records", "0"),
            ("audit_checkpoint_records", "many"),
            ("audit_checkpoint_interval", "0s"),
        ] {
            let mut r = raw("example.org");
            if key == "audit_checkpoint_records" {
                r.audit_checkpoint_records = Some(value.into());
            } else {
                r.audit_checkpoint_interval = Some(value.into());
            }
            match ServerConfig::from_raw(r) {
                Err(ServerConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{value}"),
                other => panic!("{key} = {value}: {other:?}"),
            }
        }
    }

    #[test]
    fn jwt_mint_limits_default_and_must_be_at_least_one() {
        let c = ServerConfig::from_raw(raw("example.org")).unwrap();
        assert_eq!(c.jwt_mint_limits, MintLimits::default());
        assert_eq!(c.jwt_mint_limits.per_workload.per_second, 20);
        assert_eq!(c.jwt_mint_limits.per_agent.burst, 1000);
        let file = RawServerConfig::from_toml(
            "trust_domain = \"example.org\"\njwt_mint_rate_per_workload = 5\njwt_mint_burst_per_agent = 50\n",
        )
        .unwrap();
        let c = ServerConfig::from_raw(file.merge(flags(&["--jwt-mint-burst-per-workload", "7"])))
            .unwrap();
        assert_eq!(
            c.jwt_mint_limits.per_workload,
            Rate {
                per_second: 5,
                burst: 7
            }
        );
        assert_eq!(c.jwt_mint_limits.per_agent.burst, 50);
        for key in [
            "jwt_mint_rate_per_workload",
            "jwt_mint_burst_per_workload",
            "jwt_mint_rate_per_agent",
            "jwt_mint_burst_per_agent",
        ] {
            let text = format!("trust_domain = \"example.org\"\n{key} = 0\n");
            match ServerConfig::from_raw(RawServerConfig::from_toml(&text).unwrap()) {
                Err(e @ ServerConfigError::Invalid { .. }) => {
                    assert_eq!(e.to_string(), format!("invalid {key}: must be at least 1"));
                }
                other => panic!("{key} = 0: {other:?}"),
            }
        }
    }

    /// The flags of `tessera-server run`, as clap parses them.
    fn flags(args: &[&str]) -> RawServerConfig {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            keys: RawServerConfig,
        }
        let mut all = vec!["run"];
        all.extend(args);
        <Run as clap::Parser>::try_parse_from(all).unwrap().keys
    }

    #[test]
    fn a_key_works_in_the_file_and_as_a_flag_and_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "trust_domain = \"example.org\"\nmax_task_ttl = \"2h\"\nbind_address = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        // From the file alone.
        let c = ServerConfig::load(Some(&file), flags(&[])).unwrap();
        assert_eq!(c.max_task_ttl, Duration::from_secs(7200));
        assert_eq!(c.bind_address, "127.0.0.1:9000".parse().unwrap());
        // From flags alone.
        let c = ServerConfig::load(
            None,
            flags(&[
                "--trust-domain",
                "example.org",
                "--max-task-ttl",
                "15m",
                "--bind",
                "127.0.0.1:9001",
            ]),
        )
        .unwrap();
        assert_eq!(c.max_task_ttl, Duration::from_secs(900));
        assert_eq!(c.bind_address, "127.0.0.1:9001".parse().unwrap());
        // Both: the flag wins, keys the flags leave unset come from the file.
        let c = ServerConfig::load(Some(&file), flags(&["--max-task-ttl", "30m"])).unwrap();
        assert_eq!(c.max_task_ttl, Duration::from_secs(1800));
        assert_eq!(c.bind_address, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.trust_domain.name(), "example.org");
    }

    #[test]
    fn set_push_needs_https_receivers_a_ca_file_and_an_issuer() {
        let c = ServerConfig::from_raw(raw("example.org")).unwrap();
        assert_eq!(c.set_push, None);
        let ok = [
            "--set-receiver",
            "https://rx.example.org/events/",
            "--set-receiver",
            "https://127.0.0.1:9443",
            "--set-receiver-ca-file",
            "/etc/tessera/web-ca.pem",
            "--jwt-issuer",
            "https://tessera.example.org",
        ];
        let mut r = flags(&ok);
        r.trust_domain = Some("example.org".into());
        let push = ServerConfig::from_raw(r).unwrap().set_push.unwrap();
        assert_eq!(
            push.receivers,
            ["https://rx.example.org/events", "https://127.0.0.1:9443"]
        );
        assert_eq!(push.ca_file, PathBuf::from("/etc/tessera/web-ca.pem"));
        assert_eq!(push.audience, None);
        assert_eq!(push.issuer, "https://tessera.example.org");
        // The file's list, and flags replacing it.
        let file = RawServerConfig::from_toml(
            "trust_domain = \"example.org\"\nset_receivers = [\"https://a.example.org\"]\nset_receiver_ca_file = \"/ca.pem\"\njwt_issuer = \"https://i.example.org\"\nset_audience = \"urn:example:rx\"",
        )
        .unwrap();
        let c = ServerConfig::from_raw(file.clone().merge(flags(&[]))).unwrap();
        let push = c.set_push.unwrap();
        assert_eq!(push.receivers, ["https://a.example.org"]);
        assert_eq!(push.audience.as_deref(), Some("urn:example:rx"));
        let c =
            ServerConfig::from_raw(file.merge(flags(&["--set-receiver", "https://b.example.org"])))
                .unwrap();
        assert_eq!(c.set_push.unwrap().receivers, ["https://b.example.org"]);

        let refused = |args: &[&str], key: &str, words: &str| {
            let mut r = flags(args);
            r.trust_domain = Some("example.org".into());
            match ServerConfig::from_raw(r) {
                Err(ServerConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{args:?}: {message}");
                    assert!(message.contains(words), "{args:?}: {message}");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        };
        let ca = [
            "--set-receiver-ca-file",
            "/ca.pem",
            "--jwt-issuer",
            "https://i.example.org",
        ];
        for (url, words) in [
            ("http://rx.example.org", "not an https:// URL"),
            ("https://rx.example.org/?a=1", "no user info, query"),
            ("https://user@rx.example.org", "no user info"),
            ("https://:443", "no host"),
            ("rx.example.org", "not an https:// URL"),
        ] {
            let mut args = vec!["--set-receiver", url];
            args.extend(ca);
            refused(&args, "set_receivers", words);
        }
        let mut twice = vec![
            "--set-receiver",
            "https://a.example.org",
            "--set-receiver",
            "https://a.example.org/",
        ];
        twice.extend(ca);
        refused(&twice, "set_receivers", "given twice");
        refused(
            &[
                "--set-receiver",
                "https://a.example.org",
                "--jwt-issuer",
                "https://i.example.org",
            ],
            "set_receiver_ca_file",
            "needs set_receiver_ca_file",
        );
        refused(
            &[
                "--set-receiver",
                "https://a.example.org",
                "--set-receiver-ca-file",
                "/ca.pem",
            ],
            "set_receivers",
            "needs jwt_issuer",
        );
        refused(
            &["--set-receiver-ca-file", "/ca.pem"],
            "set_receivers",
            "need at least one",
        );
        refused(
            &["--set-audience", "x"],
            "set_receivers",
            "need at least one",
        );
        let mut spaced = vec![
            "--set-receiver",
            "https://a.example.org",
            "--set-audience",
            "a b",
        ];
        spaced.extend(ca);
        refused(&spaced, "set_audience", "without spaces");
    }

    #[test]
    fn break_glass_cap_and_set_give_up_are_positive_durations() {
        let c = ServerConfig::from_raw(raw("example.org")).unwrap();
        assert_eq!(c.break_glass_max_ttl, Duration::from_secs(15 * 60));
        let ok = [
            "--set-receiver",
            "https://rx.example.org/events",
            "--set-receiver-ca-file",
            "/ca.pem",
            "--jwt-issuer",
            "https://tessera.example.org",
        ];
        let with = |extra: &[&str]| {
            let mut args = ok.to_vec();
            args.extend(extra);
            let mut r = flags(&args);
            r.trust_domain = Some("example.org".into());
            ServerConfig::from_raw(r)
        };
        let c = with(&[]).unwrap();
        assert_eq!(
            c.set_push.unwrap().give_up_after,
            Duration::from_secs(24 * 3600)
        );
        let c = with(&["--set-give-up-after", "3s", "--break-glass-max-ttl", "5m"]).unwrap();
        assert_eq!(c.set_push.unwrap().give_up_after, Duration::from_secs(3));
        assert_eq!(c.break_glass_max_ttl, Duration::from_secs(300));
        for (args, key) in [
            (["--set-give-up-after", "0s"], "set_give_up_after"),
            (["--set-give-up-after", "soon"], "set_give_up_after"),
            (["--break-glass-max-ttl", "0"], "break_glass_max_ttl"),
            (["--break-glass-max-ttl", "5x"], "break_glass_max_ttl"),
        ] {
            match with(&args) {
                Err(ServerConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn postgres_tls_and_password_file_settings() {
        let pg = "postgres://tessera@db.example/tessera";
        let with = |f: &dyn Fn(&mut RawServerConfig)| {
            let mut r = raw("example.org");
            r.datastore = Some(pg.into());
            f(&mut r);
            ServerConfig::from_raw(r)
        };
        let c = with(&|r| {
            r.datastore_sslmode = Some("verify-full".into());
            r.datastore_ca_file = Some("/etc/tessera/db-ca.pem".into());
            r.datastore_password_file = Some("/etc/tessera/db-password".into());
        })
        .unwrap();
        assert_eq!(
            c.datastore_access,
            PgAccess {
                ssl_mode: Some(SslMode::VerifyFull),
                ca_file: Some("/etc/tessera/db-ca.pem".into()),
                password_file: Some("/etc/tessera/db-password".into()),
            }
        );
        let refused = |f: &dyn Fn(&mut RawServerConfig), key: &str, part: &str| match with(f) {
            Err(ServerConfigError::Invalid { key: k, message }) => {
                assert_eq!(k, key, "{message}");
                assert!(message.contains(part), "{part:?} not in {message:?}");
            }
            other => panic!("{part}: {other:?}"),
        };
        refused(
            &|r| r.datastore_sslmode = Some("verify_full".into()),
            "datastore_sslmode",
            "not one of disable, prefer, require, verify-ca, verify-full",
        );
        refused(
            &|r| r.datastore = Some(format!("{pg}?sslmode=strict")),
            "datastore",
            "sslmode in the datastore URL",
        );
        refused(
            &|r| {
                r.datastore = Some(format!("{pg}?sslmode=require"));
                r.datastore_sslmode = Some("verify-full".into());
            },
            "datastore",
            "contradicts datastore_sslmode",
        );
        refused(
            &|r| {
                r.datastore_sslmode = Some("prefer".into());
                r.datastore_ca_file = Some("/ca.pem".into());
            },
            "datastore",
            "used only with sslmode require, verify-ca or verify-full",
        );
        refused(
            &|r| {
                r.datastore = Some("postgres://tessera:s3cret@db.example/tessera".into());
                r.datastore_password_file = Some("/pw".into());
            },
            "datastore",
            "give it once",
        );
        // Only for PostgreSQL.
        let mut r = raw("example.org");
        r.datastore_ca_file = Some("/ca.pem".into());
        assert!(matches!(
            ServerConfig::from_raw(r),
            Err(ServerConfigError::Invalid {
                key: "datastore_sslmode",
                ..
            })
        ));
    }

    #[test]
    fn every_flag_is_a_config_file_key() {
        let cmd = <RawServerConfig as clap::Args>::augment_args(clap::Command::new("run"));
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(ids.len(), 45, "{ids:?}");
        for id in ids {
            // A text key, a number key or a list key.
            let ok = ["\"x\"", "1", "[\"x\"]"]
                .iter()
                .any(|v| RawServerConfig::from_toml(&format!("{id} = {v}")).is_ok());
            assert!(ok, "flag {id} is no file key");
        }
    }

    #[test]
    fn the_relying_party_listener_needs_all_four_keys_and_an_https_url() {
        let c = ServerConfig::from_raw(raw("example.org")).unwrap();
        assert_eq!(c.relying_party, None);
        assert_eq!(c.jwt_issuer, None);
        let all = [
            "--relying-party-listen",
            "127.0.0.1:8443",
            "--relying-party-url",
            "https://rp.example.org:8443/tessera/",
            "--relying-party-cert-file",
            "/etc/tessera/rp.pem",
            "--relying-party-key-file",
            "/etc/tessera/rp.key",
        ];
        let mut r = flags(&all);
        r.trust_domain = Some("example.org".into());
        let c = ServerConfig::from_raw(r).unwrap();
        let rp = c.relying_party.unwrap();
        assert_eq!(rp.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(
            rp.url, "https://rp.example.org:8443/tessera",
            "no trailing slash"
        );
        assert_eq!(rp.cert_file, PathBuf::from("/etc/tessera/rp.pem"));
        // The issuer defaults to the listener's URL; jwt_issuer overrides it.
        assert_eq!(
            c.jwt_issuer.as_deref(),
            Some("https://rp.example.org:8443/tessera")
        );
        let mut r = flags(&all);
        r.trust_domain = Some("example.org".into());
        r.jwt_issuer = Some("https://issuer.example.org".into());
        let c = ServerConfig::from_raw(r).unwrap();
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://issuer.example.org"));

        // Any key without the others names what is missing.
        for i in 0..4 {
            let mut args = all.to_vec();
            args.drain(i * 2..i * 2 + 2);
            let mut r = flags(&args);
            r.trust_domain = Some("example.org".into());
            let err = ServerConfig::from_raw(r).unwrap_err().to_string();
            let missing = all[i * 2].trim_start_matches("--").replace('-', "_");
            assert!(err.contains(&format!("missing {missing}")), "{err}");
        }
        let mut r = raw("example.org");
        r.relying_party_url = Some("https://rp.example.org".into());
        assert!(matches!(
            ServerConfig::from_raw(r),
            Err(ServerConfigError::Invalid {
                key: "relying_party_listen",
                ..
            })
        ));

        for (key, bad) in [
            ("relying_party_url", "http://rp.example.org"),
            ("relying_party_url", "rp.example.org"),
            ("relying_party_url", "https://"),
            ("relying_party_url", "https:///keys"),
            ("relying_party_url", "https://rp.example.org?x=1"),
            ("relying_party_url", "https://rp.example.org/#frag"),
            ("relying_party_url", "https://user@rp.example.org"),
            ("relying_party_url", "https://rp.example.org:0"),
            ("relying_party_url", "https://rp.example.org:99999"),
            ("relying_party_url", "https://rp example.org"),
            ("relying_party_listen", "localhost:8443"),
            ("jwt_issuer", "tessera"),
            ("jwt_issuer", "http://issuer.example.org"),
        ] {
            let mut args = all.to_vec();
            match key {
                "relying_party_url" => args[3] = bad,
                "relying_party_listen" => args[1] = bad,
                _ => args.extend(["--jwt-issuer", bad]),
            }
            let mut r = flags(&args);
            r.trust_domain = Some("example.org".into());
            match ServerConfig::from_raw(r) {
                Err(ServerConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{bad}: {message}");
                }
                other => panic!("{key} = {bad}: {other:?}"),
            }
        }
        // jwt_issuer alone is fine: tokens carry `iss`, nothing is served.
        let mut r = raw("example.org");
        r.jwt_issuer = Some("https://issuer.example.org".into());
        let c = ServerConfig::from_raw(r).unwrap();
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://issuer.example.org"));
        assert_eq!(c.relying_party, None);
    }

    #[test]
    fn debug_of_flags_hides_the_password() {
        let f = flags(&["--datastore", "postgres://u:s3cret@db/x"]);
        assert!(!format!("{f:?}").contains("s3cret"));
    }
}
