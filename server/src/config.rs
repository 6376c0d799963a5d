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

use crate::datastore::postgres::redact_url;

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
/// Default admin socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/tmp/tessera-server/admin.sock";
/// Default longest task lifetime.
pub const DEFAULT_MAX_TASK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest SVID lifetime an entry may ask for.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The server config file as written (every key optional; flags may fill the gaps).
/// `Debug` hides a password in `datastore`.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerConfig {
    /// Trust domain name, e.g. `example.org` (required).
    pub trust_domain: Option<String>,
    /// Directory for the datastore and CA key.
    pub data_dir: Option<PathBuf>,
    /// Node API listen address `IP:PORT`.
    pub bind_address: Option<String>,
    /// Admin API Unix socket path.
    pub admin_socket: Option<PathBuf>,
    /// `sqlite` (default, `<data_dir>/datastore.sqlite3`), `sqlite:///abs/path`, or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (also `postgresql://`).
    pub datastore: Option<String>,
    /// CA certificate lifetime, e.g. `24h`.
    pub ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime, e.g. `1h`.
    pub default_x509_svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime, e.g. `5m`.
    pub default_jwt_svid_ttl: Option<String>,
    /// Agent SVID lifetime, e.g. `1h`.
    pub agent_svid_ttl: Option<String>,
    /// How long a JWT signing key signs before the next one takes over, e.g. `24h`.
    pub jwt_key_ttl: Option<String>,
    /// PEM certificate of an existing CA that signs Tessera's CA (then an intermediate).
    pub upstream_ca_cert: Option<PathBuf>,
    /// PEM private key of that CA.
    pub upstream_ca_key: Option<PathBuf>,
    /// PEM root(s) to publish when the upstream certificate is not itself a root.
    pub upstream_bundle: Option<PathBuf>,
    /// `IP:PORT` for the HTTP `/live` and `/ready` endpoints (off when unset).
    pub health_address: Option<String>,
    /// Directory of Cedar policies (`*.cedar`) for tasks; the built-in set when unset.
    pub policy_dir: Option<PathBuf>,
    /// Longest task lifetime, whatever the policy allows, e.g. `24h`.
    pub max_task_ttl: Option<String>,
    /// Unix group whose members may use the admin API too (e.g. task approvers): the
    /// admin socket becomes group-accessible (0660).
    pub admin_group: Option<String>,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub log_level: Option<String>,
    /// `text` or `json`.
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
            max_task_ttl,
            admin_group,
            log_level,
            log_format,
        } = self;
        f.debug_struct("RawServerConfig")
            .field("trust_domain", trust_domain)
            .field("data_dir", data_dir)
            .field("bind_address", bind_address)
            .field("admin_socket", admin_socket)
            .field("datastore", &datastore.as_deref().map(redact_url))
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
            .field("max_task_ttl", max_task_ttl)
            .field("admin_group", admin_group)
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
    /// Longest task lifetime.
    pub max_task_ttl: Duration,
    /// Group allowed on the admin socket besides root and the server's user, by gid.
    pub admin_gid: Option<u32>,
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
}

pub use common::duration::parse_duration;

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

impl ServerConfig {
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
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
        if !admin_socket.is_absolute() {
            return Err(ServerConfigError::Invalid {
                key: "admin_socket",
                message: "must be an absolute path".into(),
            });
        }
        let datastore = match raw.datastore.as_deref() {
            None | Some("sqlite") => DatastoreUrl::Sqlite(data_dir.join("datastore.sqlite3")),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                crate::datastore::postgres::validate_url(url).map_err(|message| {
                    ServerConfigError::Invalid {
                        key: "datastore",
                        message,
                    }
                })?;
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
        let admin_gid = raw
            .admin_group
            .as_deref()
            .map(|g| match nix::unistd::Group::from_name(g) {
                Ok(Some(grp)) => Ok(grp.gid.as_raw()),
                _ => Err(ServerConfigError::Invalid {
                    key: "admin_group",
                    message: format!("no Unix group named {g:?}"),
                }),
            })
            .transpose()?;
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
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            jwt_key_ttl,
            upstream,
            health_address,
            policy_dir,
            max_task_ttl,
            admin_gid,
            log_level,
            log_json,
        })
    }
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
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        for bad in ["", "h", "0s", "-1s", "1y", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
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
    }
}
