//! Agent configuration: a TOML file, overridden by flags, validated before anything binds.

use std::path::{Path, PathBuf};

use common::TrustDomain;
use serde::Deserialize;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tessera/agent";
/// Default Workload API socket (as SPIRE's `/tmp/spire-agent/public/api.sock`).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/tessera-agent/public/api.sock";
/// Default server address.
pub const DEFAULT_SERVER_ADDRESS: &str = "127.0.0.1:8081";

/// The agent config file as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// Server node API address, `HOST:PORT`.
    pub server_address: Option<String>,
    /// Trust domain name (required).
    pub trust_domain: Option<String>,
    /// PEM bundle used to authenticate the server at first contact.
    pub trust_bundle_path: Option<PathBuf>,
    /// One-time join token for first attestation (not needed once an SVID is persisted).
    pub join_token: Option<String>,
    /// Where the agent SVID, key and bundle are kept.
    pub data_dir: Option<PathBuf>,
    /// Workload API Unix socket path.
    pub socket_path: Option<PathBuf>,
    /// `IP:PORT` for the HTTP `/live` and `/ready` endpoints (off when unset).
    pub health_address: Option<String>,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub log_level: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
}

/// A validated agent configuration.
#[derive(Clone)]
pub struct AgentConfig {
    /// Server address.
    pub server_address: String,
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// Bootstrap bundle file.
    pub trust_bundle_path: Option<PathBuf>,
    /// Join token, if given.
    pub join_token: Option<String>,
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
            .field("data_dir", &self.data_dir)
            .field("socket_path", &self.socket_path)
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
    /// Validates a raw config.
    pub fn from_raw(raw: RawAgentConfig) -> Result<Self, AgentConfigError> {
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
            .unwrap_or_else(|| DEFAULT_SERVER_ADDRESS.to_owned());
        if !valid_server_address(&server_address) {
            return Err(AgentConfigError::Invalid {
                key: "server_address",
                message: format!("{server_address:?} is not HOST:PORT"),
            });
        }
        let socket_path = raw
            .socket_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
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
        Ok(Self {
            server_address,
            trust_domain,
            trust_bundle_path: raw.trust_bundle_path,
            join_token: raw.join_token,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            socket_path,
            health_address,
            log_level,
            log_json,
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
        assert_eq!(c.server_address, DEFAULT_SERVER_ADDRESS);
        assert!(matches!(
            AgentConfig::from_raw(RawAgentConfig::default()),
            Err(AgentConfigError::Missing("trust_domain", _))
        ));
        for (bad, key) in [
            (
                RawAgentConfig {
                    server_address: Some("nope".into()),
                    ..raw()
                },
                "server_address",
            ),
            (
                RawAgentConfig {
                    server_address: Some("h:0".into()),
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
                    trust_domain: Some("spiffe://x/y".into()),
                    ..raw()
                },
                "trust_domain",
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
}
