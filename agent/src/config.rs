//! Agent configuration: a TOML file, overridden by flags, validated before anything binds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TrustDomain;
use common::duration::parse_duration;
use serde::Deserialize;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tessera/agent";
/// Default Workload API socket for clients, and for an agent run as root (an
/// unprivileged agent defaults to `$XDG_RUNTIME_DIR/tessera-agent/public/api.sock`). Not
/// under `/tmp`, where any user could create the directory first.
pub const DEFAULT_SOCKET_PATH: &str = "/run/tessera-agent/public/api.sock";
/// The Workload API socket's path under a runtime directory.
const SOCKET_IN_RUNTIME_DIR: &str = "tessera-agent/public/api.sock";
/// Default server address.
pub const DEFAULT_SERVER_ADDRESS: &str = "127.0.0.1:8081";
/// Open files the agent keeps for itself below its open-file limit (RLIMIT_NOFILE): the
/// Workload API's connections may use the rest. It covers the agent's own files (runtime,
/// logs, the listening sockets, the server connection, state files while they are
/// written) and the /proc files each attestation opens for a moment: an agent with
/// nothing connected holds 13.
pub const RESERVED_FDS: u64 = 64;
/// Open files one Workload API connection may hold: its socket, and its caller's
/// `/proc/<pid>` directory with the `status` and `cgroup` files read through it, kept open
/// for the connection's later calls (each call's check is then reads, not opens; see
/// `attestation::Accepted`). The default connection cap divides the open-file limit by
/// this.
pub const FDS_PER_CONNECTION: u64 = 4;
/// Default most connections one uid may hold open on the Workload API socket: generous
/// for a node where many workloads share a uid (containers running as root; a node runs
/// 110 pods by default under Kubernetes, each with a channel or two), and never more than
/// a quarter of [`WorkloadApiLimits::max_connections`], so that one uid cannot take the
/// agent from the others even under a low open-file limit.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: u32 = 256;
/// Default time a new connection has to complete its first request's headers: a client
/// connects to make a call, so a well-behaved one sends it within milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection with no open stream may stay silent before the agent closes
/// it (clients reconnect on their next call). Streams (`FetchX509SVID` and the other
/// watches) are long-lived by design and never count as idle.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default concurrent streams one Workload API connection may open
/// (SETTINGS_MAX_CONCURRENT_STREAMS; clients queue calls beyond it). Unlimited by default
/// in the HTTP/2 stack; with [`DEFAULT_MAX_REQUEST_BYTES`] it bounds what one connection's
/// requests hold to 4 MiB.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Default largest request message the Workload API services decode. The largest
/// legitimate one is a task request of about 121 KiB (64 selectors of 1 KiB, 64 scopes of
/// 256 bytes, 32 audiences of 1 KiB, reason, ticket and SPIFFE IDs; a JWT-SVID request
/// names at most 32 audiences of 1 KiB); the gRPC default of 4 MiB let any local user make the agent buffer
/// 4 MiB per stream before attestation, by declaring a large message and withholding its
/// last byte.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 128 * 1024;
/// Bounds of `api_max_concurrent_streams`.
const STREAMS_RANGE: std::ops::RangeInclusive<u32> = 1..=1024;
/// Bounds of `api_max_request_bytes`: room for the largest legitimate request, and no more
/// than the gRPC default.
const REQUEST_BYTES_RANGE: std::ops::RangeInclusive<u32> = 128 * 1024..=4 * 1024 * 1024;
/// Default most JWT-SVIDs the agent caches. A token is cached per identity and audience
/// list for half its lifetime, so this is room for, e.g., 500 workloads each using 20
/// audience lists at once.
pub const DEFAULT_JWT_CACHE_MAX_ENTRIES: usize = 10_000;
/// Default most bytes of JWT-SVIDs the agent caches (16 MiB): 10,000 typical tokens of
/// under 1 KiB fit, or about 370 of the largest a workload may ask for (32 audiences of
/// 1 KiB, about 45 KiB each).
pub const DEFAULT_JWT_CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Default most JWT-SVIDs whose verified signature `ValidateJWTSVID` keeps.
pub const DEFAULT_JWT_VERIFIED_MAX_ENTRIES: usize = 1024;
/// Most JWT-SVIDs `jwt_verified_max_entries` may ask to keep.
const JWT_VERIFIED_MAX_ENTRIES_LIMIT: usize = 100_000;

/// Default time between two reports of per-entry usage to the server.
pub const DEFAULT_USAGE_REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// Bounds of `usage_report_interval`.
const USAGE_REPORT_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// Bounds of the agent's cache of minted JWT-SVIDs (least recently used evicted first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtCacheLimits {
    /// Most tokens held.
    pub max_entries: usize,
    /// Most bytes held (tokens plus a fixed overhead per token).
    pub max_bytes: usize,
}

impl Default for JwtCacheLimits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_JWT_CACHE_MAX_ENTRIES,
            max_bytes: DEFAULT_JWT_CACHE_MAX_BYTES,
        }
    }
}

/// Every agent setting, declared once: the config file (`snake_case` keys) and the
/// `tessera-agent run` flags (`--kebab-case`) both fill this struct. Every field is
/// optional here; the file is read first, then flags override it
/// ([`RawAgentConfig::merge`]), then [`AgentConfig::from_raw`] applies the defaults and
/// validates. Each field's doc comment is its `--help` text. `Debug` hides the join token.
#[derive(Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// Server node API address, HOST:PORT [default: 127.0.0.1:8081]. Repeat it (in the
    /// file: a list) for several servers on one database: the agent uses the one that last
    /// worked and moves to the next when it is unreachable; a host name is tried at each
    /// of its DNS records.
    #[arg(long)]
    #[serde(default, deserialize_with = "one_or_many")]
    pub server_address: Option<Vec<String>>,
    /// Trust domain name (required).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// PEM trust bundle that authenticates the server at first contact
    /// (`tessera-server bundle show`).
    #[arg(long = "trust-bundle")]
    pub trust_bundle_path: Option<PathBuf>,
    /// One-time join token for the first attestation (`tessera-server token generate`); not
    /// needed once the agent's SVID is persisted.
    #[arg(long, env = "TESSERA_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// PEM certificate chain (leaf first) from the organisation's CA, to attest with x509pop
    /// instead of a join token (with --x509pop-key).
    #[arg(long)]
    pub x509pop_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8) of --x509pop-cert.
    #[arg(long)]
    pub x509pop_key: Option<PathBuf>,
    /// Directory for the agent SVID, key, bundle and cache [default: /var/lib/tessera/agent].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Workload API Unix socket path [default: /run/tessera-agent/public/api.sock for
    /// root, $XDG_RUNTIME_DIR/tessera-agent/public/api.sock for other users].
    #[arg(long)]
    pub socket_path: Option<PathBuf>,
    /// IP:PORT for the HTTP /live and /ready endpoints (off when unset).
    #[arg(long)]
    pub health_address: Option<String>,
    /// Log level: trace, debug, info, warn or error [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Most Workload API connections open at once; one more is closed at once
    /// [default: the open-file limit (RLIMIT_NOFILE, whose soft value the agent raises to
    /// the hard one at start) less 64 kept for the agent's files, divided by the 4 a
    /// connection may hold: its socket and its caller's /proc files].
    #[arg(long)]
    pub api_max_connections: Option<u32>,
    /// Most Workload API connections one uid may hold open; one more is closed at once
    /// [default: 256, or a quarter of api_max_connections if less].
    #[arg(long)]
    pub api_max_connections_per_uid: Option<u32>,
    /// Time a new Workload API connection has to send its first request, e.g. 10s
    /// [default: 10s].
    #[arg(long)]
    pub api_handshake_timeout: Option<String>,
    /// Time a Workload API connection with no open stream may stay silent before it is
    /// closed, e.g. 5m [default: 5m].
    #[arg(long)]
    pub api_idle_timeout: Option<String>,
    /// Concurrent streams per Workload API connection (more wait) [default: 32].
    #[arg(long)]
    pub api_max_concurrent_streams: Option<u32>,
    /// Largest Workload API request message, in bytes [default: 131072].
    #[arg(long)]
    pub api_max_request_bytes: Option<u32>,
    /// Most JWT-SVIDs cached for reuse; the least recently used go first [default: 10000].
    #[arg(long)]
    pub jwt_cache_max_entries: Option<usize>,
    /// Most bytes of JWT-SVIDs cached for reuse [default: 16777216, 16 MiB].
    #[arg(long)]
    pub jwt_cache_max_bytes: Option<usize>,
    /// Most JWT-SVIDs whose signature `ValidateJWTSVID` verified that are kept, so the same
    /// token presented again skips the signature check (expiry, audience and task are
    /// checked on every call); 0 verifies every call [default: 1024].
    #[arg(long)]
    pub jwt_verified_max_entries: Option<usize>,
    /// Time between two reports to the server of how workloads used each entry (SVIDs
    /// delivered, JWT-SVIDs validated), from 1s to 1h; nothing is sent when nothing was
    /// used, e.g. 30s [default: 30s].
    #[arg(long)]
    pub usage_report_interval: Option<String>,
    /// Workload attestor to run on every Workload API call: `unix` (required) or `cgroup`.
    /// Repeat it (in the file: a list) [default: unix and cgroup].
    #[arg(long = "workload-attestor")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub workload_attestors: Option<Vec<String>>,
}

impl std::fmt::Debug for RawAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new key cannot be forgotten here.
        let Self {
            server_address,
            trust_domain,
            trust_bundle_path,
            join_token,
            x509pop_cert,
            x509pop_key,
            data_dir,
            socket_path,
            health_address,
            log_level,
            log_format,
            api_max_connections,
            api_max_connections_per_uid,
            api_handshake_timeout,
            api_idle_timeout,
            api_max_concurrent_streams,
            api_max_request_bytes,
            jwt_cache_max_entries,
            jwt_cache_max_bytes,
            jwt_verified_max_entries,
            usage_report_interval,
            workload_attestors,
        } = self;
        f.debug_struct("RawAgentConfig")
            .field("server_address", server_address)
            .field("trust_domain", trust_domain)
            .field("trust_bundle_path", trust_bundle_path)
            .field("join_token", &join_token.as_ref().map(|_| "<redacted>"))
            .field("x509pop_cert", x509pop_cert)
            .field("x509pop_key", x509pop_key)
            .field("data_dir", data_dir)
            .field("socket_path", socket_path)
            .field("health_address", health_address)
            .field("log_level", log_level)
            .field("log_format", log_format)
            .field("api_max_connections", api_max_connections)
            .field("api_max_connections_per_uid", api_max_connections_per_uid)
            .field("api_handshake_timeout", api_handshake_timeout)
            .field("api_idle_timeout", api_idle_timeout)
            .field("api_max_concurrent_streams", api_max_concurrent_streams)
            .field("api_max_request_bytes", api_max_request_bytes)
            .field("jwt_cache_max_entries", jwt_cache_max_entries)
            .field("jwt_cache_max_bytes", jwt_cache_max_bytes)
            .field("jwt_verified_max_entries", jwt_verified_max_entries)
            .field("usage_report_interval", usage_report_interval)
            .field("workload_attestors", workload_attestors)
            .finish()
    }
}

/// A string or a list of strings (`server_address = "a:1"` or `["a:1", "b:1"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// A validated agent configuration.
#[derive(Clone)]
pub struct AgentConfig {
    /// Server addresses (at least one), tried in turn.
    pub server_address: Vec<String>,
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// Bootstrap bundle file.
    pub trust_bundle_path: Option<PathBuf>,
    /// Join token, if given.
    pub join_token: Option<String>,
    /// x509pop certificate chain and key files, if given.
    pub x509pop: Option<(PathBuf, PathBuf)>,
    /// State directory.
    pub data_dir: PathBuf,
    /// Workload API socket.
    pub socket_path: PathBuf,
    /// Health endpoints address, if enabled.
    pub health_address: Option<std::net::SocketAddr>,
    /// Log filter.
    pub log_level: String,
    /// JSON logs.
    pub log_json: bool,
    /// What the Workload API allows each connection and each uid.
    pub workload_api: WorkloadApiLimits,
    /// Bounds of the JWT-SVID cache.
    pub jwt_cache: JwtCacheLimits,
    /// Most JWT-SVIDs kept with their verified signature (0: none).
    pub jwt_verified_max_entries: usize,
    /// Time between two usage reports to the server.
    pub usage_report_interval: Duration,
    /// The workload attestors run on every Workload API call, each once, `unix` first.
    pub workload_attestors: Vec<WorkloadAttestorKind>,
}

/// A workload attestor the agent can run (`workload_attestors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadAttestorKind {
    /// `unix:` selectors from the peer credentials and the executable. Always run: the
    /// operator's entries can always name a uid, and an agent that attested callers by
    /// their cgroup alone would give every process in a container (whatever its user)
    /// the container's identities.
    Unix,
    /// `cgroup:`, `container:`, `systemd:` and `k8s:` selectors from `/proc/<pid>/cgroup`.
    Cgroup,
}

impl WorkloadAttestorKind {
    /// Every attestor, in the order they run; the default.
    pub const ALL: [Self; 2] = [Self::Unix, Self::Cgroup];

    /// The name in the config file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unix => "unix",
            Self::Cgroup => "cgroup",
        }
    }

    /// The validated `workload_attestors` list: known names, each at most once, `unix`
    /// among them; sorted into run order. `None` is the default (all of them).
    fn parse_list(names: Option<&[String]>) -> Result<Vec<Self>, AgentConfigError> {
        let invalid = |message: String| AgentConfigError::Invalid {
            key: "workload_attestors",
            message,
        };
        let Some(names) = names else {
            return Ok(Self::ALL.to_vec());
        };
        let mut kinds = Vec::with_capacity(names.len());
        for name in names {
            let kind = Self::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    invalid(format!(
                        "{name:?} is not a workload attestor (known: unix, cgroup)"
                    ))
                })?;
            if kinds.contains(&kind) {
                return Err(invalid(format!("{name:?} is listed twice")));
            }
            kinds.push(kind);
        }
        if !kinds.contains(&Self::Unix) {
            return Err(invalid(
                "must include \"unix\" (the Unix attestor always runs; add others beside it)"
                    .into(),
            ));
        }
        kinds.sort();
        Ok(kinds)
    }
}

/// The Workload API's limits on connections, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadApiLimits {
    /// Connections open at once, all callers together.
    pub max_connections: u32,
    /// Connections open at once from one uid.
    pub max_connections_per_uid: u32,
    /// Time from accept to the first request's headers.
    pub handshake_timeout: Duration,
    /// Silence allowed on a connection with no open stream.
    pub idle_timeout: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// Largest request message decoded.
    pub max_request_bytes: u32,
}

impl std::fmt::Debug for AgentConfig {
    // Hand-written: the join token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server_address", &self.server_address)
            .field("trust_domain", &self.trust_domain.name())
            .field("trust_bundle_path", &self.trust_bundle_path)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("x509pop", &self.x509pop)
            .field("data_dir", &self.data_dir)
            .field("socket_path", &self.socket_path)
            .field("workload_api", &self.workload_api)
            .field("jwt_cache", &self.jwt_cache)
            .field("jwt_verified_max_entries", &self.jwt_verified_max_entries)
            .field("usage_report_interval", &self.usage_report_interval)
            .field("workload_attestors", &self.workload_attestors)
            .finish()
    }
}

/// What is wrong with an agent configuration.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
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
        /// Why.
        message: String,
    },
    /// A key has an invalid value.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// Key or flag.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A required key is missing.
    #[error("missing {0} (set it in the config file or with --{1})")]
    Missing(&'static str, &'static str),
}

impl RawAgentConfig {
    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| AgentConfigError::Parse {
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
            server_address,
            trust_domain,
            trust_bundle_path,
            join_token,
            x509pop_cert,
            x509pop_key,
            data_dir,
            socket_path,
            health_address,
            log_level,
            log_format,
            api_max_connections,
            api_max_connections_per_uid,
            api_handshake_timeout,
            api_idle_timeout,
            api_max_concurrent_streams,
            api_max_request_bytes,
            jwt_cache_max_entries,
            jwt_cache_max_bytes,
            jwt_verified_max_entries,
            usage_report_interval,
            workload_attestors,
        } = over;
        Self {
            server_address: server_address.or(self.server_address),
            trust_domain: trust_domain.or(self.trust_domain),
            trust_bundle_path: trust_bundle_path.or(self.trust_bundle_path),
            join_token: join_token.or(self.join_token),
            x509pop_cert: x509pop_cert.or(self.x509pop_cert),
            x509pop_key: x509pop_key.or(self.x509pop_key),
            data_dir: data_dir.or(self.data_dir),
            socket_path: socket_path.or(self.socket_path),
            health_address: health_address.or(self.health_address),
            log_level: log_level.or(self.log_level),
            log_format: log_format.or(self.log_format),
            api_max_connections: api_max_connections.or(self.api_max_connections),
            api_max_connections_per_uid: api_max_connections_per_uid
                .or(self.api_max_connections_per_uid),
            api_handshake_timeout: api_handshake_timeout.or(self.api_handshake_timeout),
            api_idle_timeout: api_idle_timeout.or(self.api_idle_timeout),
            api_max_concurrent_streams: api_max_concurrent_streams
                .or(self.api_max_concurrent_streams),
            api_max_request_bytes: api_max_request_bytes.or(self.api_max_request_bytes),
            jwt_cache_max_entries: jwt_cache_max_entries.or(self.jwt_cache_max_entries),
            jwt_cache_max_bytes: jwt_cache_max_bytes.or(self.jwt_cache_max_bytes),
            jwt_verified_max_entries: jwt_verified_max_entries.or(self.jwt_verified_max_entries),
            usage_report_interval: usage_report_interval.or(self.usage_report_interval),
            workload_attestors: workload_attestors.or(self.workload_attestors),
        }
    }
}

/// The process's open-file limit (soft RLIMIT_NOFILE); `None` when unlimited.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

fn duration(
    key: &'static str,
    v: Option<&String>,
    default: Duration,
) -> Result<Duration, AgentConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|message| AgentConfigError::Invalid { key, message }),
    }
}

impl WorkloadApiLimits {
    /// The limits `raw` sets, defaults for the rest, checked against the open-file limit
    /// `fd_limit` (`None`: unlimited) the agent runs under.
    fn from_raw(raw: &RawAgentConfig, fd_limit: Option<u64>) -> Result<Self, AgentConfigError> {
        // Connections the open-file limit leaves room for, beside the agent's own files.
        let room = fd_limit.map_or(u64::from(u32::MAX), |l| {
            l.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION
        });
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        let max_connections = match raw.api_max_connections {
            None if room == 0 => {
                return Err(AgentConfigError::Invalid {
                    key: "api_max_connections",
                    message: format!(
                        "the open-file limit (RLIMIT_NOFILE) of {} leaves no room for \
                         Workload API connections ({FDS_PER_CONNECTION} files each) beside \
                         the {RESERVED_FDS} files the agent keeps for itself; raise it \
                         (LimitNOFILE= in the unit)",
                        fd_limit.unwrap_or_default()
                    ),
                });
            }
            None => room,
            Some(0) => {
                return Err(AgentConfigError::Invalid {
                    key: "api_max_connections",
                    message: "must be at least 1".into(),
                });
            }
            Some(n) if n > room => {
                return Err(AgentConfigError::Invalid {
                    key: "api_max_connections",
                    message: format!(
                        "{n} is more than the open-file limit (RLIMIT_NOFILE) of {} allows \
                         at {FDS_PER_CONNECTION} files a connection beside the \
                         {RESERVED_FDS} files the agent keeps for itself (at most {room}); \
                         raise the limit (LimitNOFILE= in the unit) or lower \
                         api_max_connections",
                        fd_limit.unwrap_or_default()
                    ),
                });
            }
            Some(n) => n,
        };
        let max_connections_per_uid = match raw.api_max_connections_per_uid {
            None => DEFAULT_MAX_CONNECTIONS_PER_UID.min((max_connections / 4).max(1)),
            Some(0) => {
                return Err(AgentConfigError::Invalid {
                    key: "api_max_connections_per_uid",
                    message: "must be at least 1".into(),
                });
            }
            Some(n) if n > max_connections => {
                return Err(AgentConfigError::Invalid {
                    key: "api_max_connections_per_uid",
                    message: format!("{n} is more than api_max_connections ({max_connections})"),
                });
            }
            Some(n) => n,
        };
        let max_concurrent_streams = raw
            .api_max_concurrent_streams
            .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS);
        if !STREAMS_RANGE.contains(&max_concurrent_streams) {
            return Err(AgentConfigError::Invalid {
                key: "api_max_concurrent_streams",
                message: format!(
                    "{max_concurrent_streams} is not between {} and {}",
                    STREAMS_RANGE.start(),
                    STREAMS_RANGE.end()
                ),
            });
        }
        let max_request_bytes = raw
            .api_max_request_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if !REQUEST_BYTES_RANGE.contains(&max_request_bytes) {
            return Err(AgentConfigError::Invalid {
                key: "api_max_request_bytes",
                message: format!(
                    "{max_request_bytes} is not between {} and {}",
                    REQUEST_BYTES_RANGE.start(),
                    REQUEST_BYTES_RANGE.end()
                ),
            });
        }
        Ok(Self {
            max_connections,
            max_connections_per_uid,
            handshake_timeout: duration(
                "api_handshake_timeout",
                raw.api_handshake_timeout.as_ref(),
                DEFAULT_HANDSHAKE_TIMEOUT,
            )?,
            idle_timeout: duration(
                "api_idle_timeout",
                raw.api_idle_timeout.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
            )?,
            max_concurrent_streams,
            max_request_bytes,
        })
    }
}

/// Checks `HOST:PORT` (host name, IPv4, or bracketed IPv6).
fn valid_server_address(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    port_ok && host_ok
}

impl AgentConfig {
    /// The configuration `tessera-agent run` uses: the file at `file` (if any), then
    /// `flags` over it, then defaults, validated.
    pub fn load(file: Option<&Path>, flags: RawAgentConfig) -> Result<Self, AgentConfigError> {
        let from_file = match file {
            Some(p) => RawAgentConfig::from_file(p)?,
            None => RawAgentConfig::default(),
        };
        Self::from_raw(from_file.merge(flags))
    }

    /// Validates a raw config, for an agent running under this process's open-file limit.
    pub fn from_raw(raw: RawAgentConfig) -> Result<Self, AgentConfigError> {
        Self::from_raw_with_fd_limit(raw, open_file_limit())
    }

    /// Validates a raw config, for an agent running under the open-file limit `fd_limit`
    /// (`None`: unlimited), which bounds the Workload API's connections.
    pub fn from_raw_with_fd_limit(
        raw: RawAgentConfig,
        fd_limit: Option<u64>,
    ) -> Result<Self, AgentConfigError> {
        let workload_api = WorkloadApiLimits::from_raw(&raw, fd_limit)?;
        let td = raw
            .trust_domain
            .as_deref()
            .ok_or(AgentConfigError::Missing("trust_domain", "trust-domain"))?;
        let trust_domain = TrustDomain::new(td).map_err(|e| AgentConfigError::Invalid {
            key: "trust_domain",
            message: e.to_string(),
        })?;
        let server_address = raw
            .server_address
            .unwrap_or_else(|| vec![DEFAULT_SERVER_ADDRESS.to_owned()]);
        if server_address.is_empty() {
            return Err(AgentConfigError::Invalid {
                key: "server_address",
                message: "needs at least one HOST:PORT".into(),
            });
        }
        if let Some(bad) = server_address.iter().find(|a| !valid_server_address(a)) {
            return Err(AgentConfigError::Invalid {
                key: "server_address",
                message: format!("{bad:?} is not HOST:PORT"),
            });
        }
        let socket_path = raw
            .socket_path
            .unwrap_or_else(|| daemon::socket::default_daemon_socket(SOCKET_IN_RUNTIME_DIR));
        if !socket_path.is_absolute() {
            return Err(AgentConfigError::Invalid {
                key: "socket_path",
                message: "must be an absolute path".into(),
            });
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if socket_path.as_os_str().len() > 107 {
            return Err(AgentConfigError::Invalid {
                key: "socket_path",
                message: "is longer than the 107 bytes a Unix socket path may have".into(),
            });
        }
        let x509pop = match (&raw.x509pop_cert, &raw.x509pop_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(AgentConfigError::Invalid {
                    key: "x509pop_cert",
                    message: "x509pop_cert and x509pop_key go together".into(),
                });
            }
        };
        if let Some(t) = &raw.join_token
            && (t.is_empty() || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(AgentConfigError::Invalid {
                key: "join_token",
                message: "is not a token printed by `tessera-server token generate`".into(),
            });
        }
        let health_address = raw
            .health_address
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| AgentConfigError::Invalid {
                    key: "health_address",
                    message: format!("{a:?} is not IP:PORT"),
                })
            })
            .transpose()?;
        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
            return Err(AgentConfigError::Invalid {
                key: "log_level",
                message: format!("{log_level:?} is not one of trace, debug, info, warn, error"),
            });
        }
        let log_json = match raw.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(AgentConfigError::Invalid {
                    key: "log_format",
                    message: format!("{other:?} is not text or json"),
                });
            }
        };
        let jwt_cache = JwtCacheLimits {
            max_entries: raw
                .jwt_cache_max_entries
                .unwrap_or(DEFAULT_JWT_CACHE_MAX_ENTRIES),
            max_bytes: raw
                .jwt_cache_max_bytes
                .unwrap_or(DEFAULT_JWT_CACHE_MAX_BYTES),
        };
        for (key, v) in [
            ("jwt_cache_max_entries", jwt_cache.max_entries),
            ("jwt_cache_max_bytes", jwt_cache.max_bytes),
        ] {
            if v == 0 {
                return Err(AgentConfigError::Invalid {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        let jwt_verified_max_entries = raw
            .jwt_verified_max_entries
            .unwrap_or(DEFAULT_JWT_VERIFIED_MAX_ENTRIES);
        if jwt_verified_max_entries > JWT_VERIFIED_MAX_ENTRIES_LIMIT {
            return Err(AgentConfigError::Invalid {
                key: "jwt_verified_max_entries",
                message: format!(
                    "{jwt_verified_max_entries} is more than {JWT_VERIFIED_MAX_ENTRIES_LIMIT}"
                ),
            });
        }
        let usage_report_interval = duration(
            "usage_report_interval",
            raw.usage_report_interval.as_ref(),
            DEFAULT_USAGE_REPORT_INTERVAL,
        )?;
        if !USAGE_REPORT_INTERVAL_RANGE.contains(&usage_report_interval) {
            return Err(AgentConfigError::Invalid {
                key: "usage_report_interval",
                message: format!(
                    "{} s is not between 1s and 1h",
                    usage_report_interval.as_secs_f64()
                ),
            });
        }
        let workload_attestors =
            WorkloadAttestorKind::parse_list(raw.workload_attestors.as_deref())?;
        Ok(Self {
            server_address,
            trust_domain,
            trust_bundle_path: raw.trust_bundle_path,
            join_token: raw.join_token,
            x509pop,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            socket_path,
            health_address,
            log_level,
            log_json,
            workload_api,
            jwt_cache,
            jwt_verified_max_entries,
            usage_report_interval,
            workload_attestors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawAgentConfig {
        RawAgentConfig {
            trust_domain: Some("example.org".into()),
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        let c = AgentConfig::from_raw(raw()).unwrap();
        assert_eq!(c.server_address, [DEFAULT_SERVER_ADDRESS]);
        assert_eq!(c.jwt_cache, JwtCacheLimits::default());
        assert_eq!(c.usage_report_interval, Duration::from_secs(30));
        for (text, secs) in [("1s", 1), ("1h", 3600), ("90", 90)] {
            let c = AgentConfig::from_raw(RawAgentConfig {
                usage_report_interval: Some(text.into()),
                ..raw()
            })
            .unwrap();
            assert_eq!(c.usage_report_interval, Duration::from_secs(secs), "{text}");
        }
        assert!(matches!(
            AgentConfig::from_raw(RawAgentConfig::default()),
            Err(AgentConfigError::Missing("trust_domain", _))
        ));
        for (bad, key) in [
            (
                RawAgentConfig {
                    server_address: Some(vec!["nope".into()]),
                    ..raw()
                },
                "server_address",
            ),
            (
                RawAgentConfig {
                    server_address: Some(vec!["h:0".into()]),
                    ..raw()
                },
                "server_address",
            ),
            (
                RawAgentConfig {
                    server_address: Some(vec!["a:1".into(), "nope".into()]),
                    ..raw()
                },
                "server_address",
            ),
            (
                RawAgentConfig {
                    server_address: Some(vec![]),
                    ..raw()
                },
                "server_address",
            ),
            (
                RawAgentConfig {
                    socket_path: Some("rel/api.sock".into()),
                    ..raw()
                },
                "socket_path",
            ),
            (
                RawAgentConfig {
                    socket_path: Some(PathBuf::from(format!("/{}", "a".repeat(120)))),
                    ..raw()
                },
                "socket_path",
            ),
            (
                RawAgentConfig {
                    join_token: Some("has space".into()),
                    ..raw()
                },
                "join_token",
            ),
            (
                RawAgentConfig {
                    log_level: Some("loud".into()),
                    ..raw()
                },
                "log_level",
            ),
            (
                RawAgentConfig {
                    jwt_cache_max_entries: Some(0),
                    ..raw()
                },
                "jwt_cache_max_entries",
            ),
            (
                RawAgentConfig {
                    jwt_cache_max_bytes: Some(0),
                    ..raw()
                },
                "jwt_cache_max_bytes",
            ),
            (
                RawAgentConfig {
                    trust_domain: Some("spiffe://x/y".into()),
                    ..raw()
                },
                "trust_domain",
            ),
            (
                RawAgentConfig {
                    usage_report_interval: Some("61m".into()),
                    ..raw()
                },
                "usage_report_interval",
            ),
            (
                RawAgentConfig {
                    usage_report_interval: Some("0s".into()),
                    ..raw()
                },
                "usage_report_interval",
            ),
            (
                RawAgentConfig {
                    usage_report_interval: Some("soon".into()),
                    ..raw()
                },
                "usage_report_interval",
            ),
        ] {
            match AgentConfig::from_raw(bad) {
                Err(AgentConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        for ok in ["server.example.org:8081", "10.0.0.1:1", "[::1]:8081"] {
            assert!(valid_server_address(ok), "{ok}");
        }
        let dbg = format!(
            "{:?}",
            AgentConfig::from_raw(RawAgentConfig {
                join_token: Some("secret-token".into()),
                ..raw()
            })
            .unwrap()
        );
        assert!(!dbg.contains("secret-token"));
    }

    #[test]
    fn workload_api_limits_default_below_the_open_file_limit() {
        let limits = |raw: RawAgentConfig, fd_limit| {
            AgentConfig::from_raw_with_fd_limit(raw, fd_limit).map(|c| c.workload_api)
        };
        let d = limits(raw(), Some(1024)).unwrap();
        assert_eq!(
            d,
            WorkloadApiLimits {
                max_connections: 240,
                max_connections_per_uid: 60,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(300),
                max_concurrent_streams: 32,
                max_request_bytes: 128 * 1024,
            }
        );
        for (fd_limit, total, per_uid) in [
            (Some(65_536), 16_368, 256),
            (Some(256), 48, 12),
            (Some(68), 1, 1),
            (None, u32::MAX, 256),
        ] {
            let l = limits(raw(), fd_limit).unwrap();
            assert_eq!(
                (l.max_connections, l.max_connections_per_uid),
                (total, per_uid),
                "{fd_limit:?}"
            );
        }
        let set = limits(
            RawAgentConfig {
                api_max_connections: Some(100),
                api_handshake_timeout: Some("2s".into()),
                api_idle_timeout: Some("1h".into()),
                api_max_concurrent_streams: Some(8),
                api_max_request_bytes: Some(131_073),
                ..raw()
            },
            Some(1024),
        )
        .unwrap();
        assert_eq!(
            set,
            WorkloadApiLimits {
                max_connections: 100,
                max_connections_per_uid: 25,
                handshake_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(3600),
                max_concurrent_streams: 8,
                max_request_bytes: 131_073,
            }
        );
    }

    /// The smallest request size limit an operator may set still admits the largest
    /// request a workload may legitimately send: a task request with every field at its
    /// bound.
    #[test]
    fn the_largest_task_request_fits_the_smallest_request_limit() {
        use common::proto::tessera::TaskSpec;
        use common::spiffe_id::MAX_SPIFFE_ID_LENGTH;
        use prost::Message as _;
        // The server's bounds: 64 selectors per entry, reason and ticket of 1 KiB.
        const MAX_SELECTORS: usize = 64;
        const MAX_TEXT: usize = 1024;
        let many = |n: usize, len: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("{i:04}{}", "x".repeat(len - 4)))
                .collect()
        };
        let id = "x".repeat(MAX_SPIFFE_ID_LENGTH);
        let largest = TaskSpec {
            entry_id: "e".repeat(common::ids::MAX_ID_LEN),
            spiffe_id: id.clone(),
            provision: true,
            parent_id: id.clone(),
            selectors: many(MAX_SELECTORS, common::selector::MAX_SELECTOR_LENGTH),
            reason: "r".repeat(MAX_TEXT),
            ticket: "t".repeat(MAX_TEXT),
            scopes: many(common::task::MAX_SCOPES, common::task::MAX_SCOPE_LEN),
            ttl_seconds: i64::MAX,
            requester_spiffe_id: id,
            tenant: "t".repeat(63),
            audiences: many(common::task::MAX_AUDIENCES, common::task::MAX_AUDIENCE_LEN),
            bind: "selectors".to_owned(),
            bind_pid: u32::MAX,
            break_glass: true,
        };
        let len = largest.encoded_len();
        assert!(
            len <= usize::try_from(*REQUEST_BYTES_RANGE.start()).unwrap(),
            "{len} bytes do not fit {}",
            REQUEST_BYTES_RANGE.start()
        );
    }

    #[test]
    fn invalid_workload_api_limits_are_refused_naming_the_key() {
        let cases: [(RawAgentConfig, Option<u64>, &str, &str); 12] = [
            (raw(), Some(64), "api_max_connections", "leaves no room"),
            // Room for 3 of the 4 files a connection may hold.
            (raw(), Some(67), "api_max_connections", "4 files each"),
            (
                RawAgentConfig {
                    api_max_connections: Some(1000),
                    ..raw()
                },
                Some(256),
                "api_max_connections",
                "RLIMIT_NOFILE) of 256",
            ),
            (
                RawAgentConfig {
                    api_max_connections: Some(0),
                    ..raw()
                },
                Some(1024),
                "api_max_connections",
                "at least 1",
            ),
            (
                RawAgentConfig {
                    api_max_connections_per_uid: Some(0),
                    ..raw()
                },
                Some(1024),
                "api_max_connections_per_uid",
                "at least 1",
            ),
            (
                RawAgentConfig {
                    api_max_connections: Some(10),
                    api_max_connections_per_uid: Some(11),
                    ..raw()
                },
                Some(1024),
                "api_max_connections_per_uid",
                "more than api_max_connections (10)",
            ),
            (
                RawAgentConfig {
                    api_handshake_timeout: Some("0".into()),
                    ..raw()
                },
                Some(1024),
                "api_handshake_timeout",
                "greater than zero",
            ),
            (
                RawAgentConfig {
                    api_idle_timeout: Some("soon".into()),
                    ..raw()
                },
                Some(1024),
                "api_idle_timeout",
                "not a duration",
            ),
            (
                RawAgentConfig {
                    api_max_concurrent_streams: Some(0),
                    ..raw()
                },
                Some(1024),
                "api_max_concurrent_streams",
                "between 1 and 1024",
            ),
            (
                RawAgentConfig {
                    api_max_concurrent_streams: Some(5000),
                    ..raw()
                },
                Some(1024),
                "api_max_concurrent_streams",
                "between 1 and 1024",
            ),
            (
                RawAgentConfig {
                    api_max_request_bytes: Some(1024),
                    ..raw()
                },
                Some(1024),
                "api_max_request_bytes",
                "between 131072 and 4194304",
            ),
            (
                RawAgentConfig {
                    api_max_request_bytes: Some(64 * 1024 * 1024),
                    ..raw()
                },
                Some(1024),
                "api_max_request_bytes",
                "between 131072 and 4194304",
            ),
        ];
        for (bad, fd_limit, key, text) in cases {
            match AgentConfig::from_raw_with_fd_limit(bad, fd_limit) {
                Err(e @ AgentConfigError::Invalid { key: k, .. }) => {
                    assert_eq!(k, key);
                    assert!(e.to_string().contains(text), "{key}: {e}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    /// The flags of `tessera-agent run`, as clap parses them.
    fn flags(args: &[&str]) -> RawAgentConfig {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            keys: RawAgentConfig,
        }
        let mut all = vec!["run"];
        all.extend(args);
        <Run as clap::Parser>::try_parse_from(all).unwrap().keys
    }

    #[test]
    fn a_key_works_in_the_file_and_as_a_flag_and_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "trust_domain = \"example.org\"\nserver_address = \"server:8081\"\ntrust_bundle_path = \"/etc/b.pem\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(Some(&file), flags(&[])).unwrap();
        assert_eq!(c.server_address, ["server:8081"]);
        assert_eq!(c.trust_bundle_path, Some(PathBuf::from("/etc/b.pem")));
        let c = AgentConfig::load(
            None,
            flags(&[
                "--trust-domain",
                "example.org",
                "--server-address",
                "other:1",
                "--trust-bundle",
                "/b2.pem",
            ]),
        )
        .unwrap();
        assert_eq!(c.server_address, ["other:1"]);
        assert_eq!(c.trust_bundle_path, Some(PathBuf::from("/b2.pem")));
        let c = AgentConfig::load(
            Some(&file),
            flags(&[
                "--server-address",
                "other:2",
                "--jwt-cache-max-bytes",
                "65536",
            ]),
        )
        .unwrap();
        assert_eq!(c.jwt_cache.max_bytes, 65536);
        assert_eq!(c.jwt_cache.max_entries, DEFAULT_JWT_CACHE_MAX_ENTRIES);
        assert_eq!(c.server_address, ["other:2"], "the flag wins");
        assert_eq!(c.trust_bundle_path, Some(PathBuf::from("/etc/b.pem")));
        assert_eq!(c.trust_domain.name(), "example.org");
    }

    #[test]
    fn several_server_addresses_from_a_list_or_a_repeated_flag() {
        let c = AgentConfig::from_raw(RawAgentConfig {
            trust_domain: Some("example.org".into()),
            ..RawAgentConfig::from_toml("server_address = [\"a:1\", \"b.example:2\"]").unwrap()
        })
        .unwrap();
        assert_eq!(c.server_address, ["a:1", "b.example:2"]);
        let c = AgentConfig::load(
            None,
            flags(&[
                "--trust-domain",
                "example.org",
                "--server-address",
                "a:1",
                "--server-address",
                "[::1]:2",
            ]),
        )
        .unwrap();
        assert_eq!(c.server_address, ["a:1", "[::1]:2"]);
        assert!(RawAgentConfig::from_toml("server_address = 5").is_err());
    }

    #[test]
    fn workload_attestors_from_a_list_or_a_repeated_flag_and_unix_is_required() {
        use WorkloadAttestorKind::{Cgroup, Unix};
        assert_eq!(
            AgentConfig::from_raw(raw()).unwrap().workload_attestors,
            [Unix, Cgroup],
            "default: both"
        );
        let from_file = |toml: &str| {
            AgentConfig::from_raw(RawAgentConfig {
                trust_domain: Some("example.org".into()),
                ..RawAgentConfig::from_toml(toml).unwrap()
            })
        };
        assert_eq!(
            from_file("workload_attestors = [\"cgroup\", \"unix\"]")
                .unwrap()
                .workload_attestors,
            [Unix, Cgroup],
            "run order, whatever the listed order"
        );
        assert_eq!(
            from_file("workload_attestors = \"unix\"")
                .unwrap()
                .workload_attestors,
            [Unix]
        );
        let c = AgentConfig::load(
            None,
            flags(&[
                "--trust-domain",
                "example.org",
                "--workload-attestor",
                "unix",
            ]),
        )
        .unwrap();
        assert_eq!(c.workload_attestors, [Unix]);
        let c = AgentConfig::load(
            None,
            flags(&[
                "--trust-domain",
                "example.org",
                "--workload-attestor",
                "unix",
                "--workload-attestor",
                "cgroup",
            ]),
        )
        .unwrap();
        assert_eq!(c.workload_attestors, [Unix, Cgroup]);
        // The flag replaces the file's list.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "trust_domain = \"example.org\"\nworkload_attestors = [\"unix\", \"cgroup\"]\n",
        )
        .unwrap();
        let c = AgentConfig::load(Some(&file), flags(&["--workload-attestor", "unix"])).unwrap();
        assert_eq!(c.workload_attestors, [Unix]);

        for (toml, says) in [
            ("workload_attestors = [\"cgroup\"]", "must include \"unix\""),
            ("workload_attestors = []", "must include \"unix\""),
            ("workload_attestors = [\"unix\", \"k8s\"]", "\"k8s\" is not"),
            ("workload_attestors = [\"Unix\"]", "\"Unix\" is not"),
            ("workload_attestors = [\"unix\", \"unix\"]", "listed twice"),
        ] {
            match from_file(toml) {
                Err(
                    e @ AgentConfigError::Invalid {
                        key: "workload_attestors",
                        ..
                    },
                ) => assert!(e.to_string().contains(says), "{toml}: {e}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
        let refused = AgentConfig::load(
            None,
            flags(&[
                "--trust-domain",
                "example.org",
                "--workload-attestor",
                "cgroup",
            ]),
        );
        assert!(
            matches!(
                refused,
                Err(AgentConfigError::Invalid {
                    key: "workload_attestors",
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(RawAgentConfig::from_toml("workload_attestors = 5").is_err());
    }

    #[test]
    fn every_flag_is_a_config_file_key_and_the_token_stays_secret() {
        let cmd = <RawAgentConfig as clap::Args>::augment_args(clap::Command::new("run"));
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(ids.len(), 22, "{ids:?}");
        for id in ids {
            // A string or a number, whichever the key takes.
            let text = format!("{id} = \"x\"");
            let number = format!("{id} = 1");
            assert!(
                RawAgentConfig::from_toml(&text).is_ok()
                    || RawAgentConfig::from_toml(&number).is_ok(),
                "flag {id} is no file key"
            );
        }
        let f = flags(&["--join-token", "secret-token"]);
        assert!(!format!("{f:?}").contains("secret-token"));
    }
}
