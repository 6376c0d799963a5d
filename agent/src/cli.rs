//! Command-line interface: `run` starts the agent; `api ...` commands are Workload API
//! clients (like any SPIFFE client) on the agent socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse,
};
use rustls_pki_types::CertificateDer;
use serde_json::json;
use tonic::transport::Channel;

use crate::config::{AgentConfig, AgentConfigError, DEFAULT_SOCKET_PATH, RawAgentConfig};

/// tessera-agent: SPIFFE workload identity node agent.
#[derive(Debug, Parser)]
#[command(name = "tessera-agent", version, about)]
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

/// Options shared by Workload API client commands.
#[derive(Debug, Clone, Args)]
pub struct ApiOpts {
    /// Workload API socket (a path, or a `unix:` URI as in SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = DEFAULT_SOCKET_PATH, global = true)]
    pub socket_path: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// How long to wait for an answer, in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
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

/// `run` flags; each overrides the config file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server node API address (HOST:PORT).
    #[arg(long)]
    pub server_address: Option<String>,
    /// Trust domain name.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// PEM trust bundle for first contact (`tessera-server bundle show`).
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// One-time join token (`tessera-server token generate`).
    #[arg(long, env = "TESSERA_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Directory for the agent SVID, key and bundle.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Workload API socket path.
    #[arg(long)]
    pub socket_path: Option<PathBuf>,
    /// Address (IP:PORT) for the HTTP /live and /ready endpoints.
    #[arg(long)]
    pub health_address: Option<String>,
    /// Log level (trace, debug, info, warn, error).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format (text or json).
    #[arg(long)]
    pub log_format: Option<String>,
}

impl RunArgs {
    /// Reads the config file (if any), applies flags, validates.
    pub fn into_config(self) -> Result<AgentConfig, AgentConfigError> {
        let mut raw = match &self.config {
            Some(p) => RawAgentConfig::from_file(p)?,
            None => RawAgentConfig::default(),
        };
        macro_rules! set {
            ($($field:ident <- $flag:ident),*) => {$(
                if let Some(v) = self.$flag { raw.$field = Some(v); }
            )*};
        }
        set!(server_address <- server_address, trust_domain <- trust_domain,
            trust_bundle_path <- trust_bundle, join_token <- join_token, data_dir <- data_dir,
            socket_path <- socket_path, health_address <- health_address, log_level <- log_level,
            log_format <- log_format);
        AgentConfig::from_raw(raw)
    }
}

/// Task commands: the caller's standing identity is the requester.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Start a task that activates a just-in-time identity (or provisions a temporary
    /// one) for this workload; prints the task.
    Begin {
        /// The just-in-time SPIFFE ID to activate (or, with --provision, to create).
        #[arg(long, default_value = "")]
        spiffe_id: String,
        /// The just-in-time entry to activate, by id.
        #[arg(long, default_value = "")]
        entry_id: String,
        /// Create a temporary entry for the task (deleted when it ends).
        #[arg(long)]
        provision: bool,
        /// Selectors of the temporary entry (all must be the caller's own).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Ticket reference.
        #[arg(long, default_value = "")]
        ticket: String,
        /// What the task may do (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime, e.g. 300, 5m, 1h (default: the longest the policy allows).
        #[arg(long, default_value = "")]
        ttl: String,
        /// Which of this workload's standing identities asks (default: its oldest).
        #[arg(long, default_value = "")]
        requester: String,
    },
    /// End a task this workload started.
    End {
        /// The task id.
        task_id: String,
        /// completed, failed or cancelled.
        #[arg(long, default_value = "completed")]
        outcome: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
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
    /// Print every X.509-SVID update as it arrives.
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
        /// Write svid.pem, svid.key and bundle.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// JWT-SVIDs for an audience.
    Jwt {
        /// Audience (repeatable); every value goes into the token's `aud`.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Only the identity with this SPIFFE ID.
        #[arg(long, default_value = "")]
        spiffe_id: String,
    },
}

/// The socket path from a plain path or a `unix:` URI.
pub fn socket_path(raw: &str) -> anyhow::Result<PathBuf> {
    let path = if let Some(rest) = raw.strip_prefix("unix://") {
        anyhow::ensure!(
            rest.starts_with('/'),
            "{raw:?}: a unix:// URI must have an empty authority (unix:///path)"
        );
        rest
    } else if let Some(rest) = raw.strip_prefix("unix:") {
        rest
    } else {
        anyhow::ensure!(
            !raw.contains("://"),
            "{raw:?}: only unix sockets are supported"
        );
        raw
    };
    anyhow::ensure!(
        path.starts_with('/'),
        "{raw:?}: the socket path must be absolute"
    );
    anyhow::ensure!(
        !path.contains(['?', '#']),
        "{raw:?}: no query or fragment allowed"
    );
    Ok(PathBuf::from(path))
}

/// Says on stderr when policy (or the server) gave a task less time than was asked.
fn warn_if_cut(task: &common::proto::tessera::Task) {
    let cap = task.decision.as_ref().map_or(0, |d| d.max_ttl_seconds);
    if task.deadline > 0 && cap > 0 && task.deadline - task.created_at >= cap {
        #[expect(clippy::print_stderr, reason = "CLI diagnostics")]
        {
            eprintln!(
                "note: the task's lifetime is capped at {cap} s by policy ({})",
                task.decision
                    .as_ref()
                    .map(|d| d.policies.join(", "))
                    .unwrap_or_default()
            );
        }
    }
}

/// Connects to the Workload API on `path`.
pub async fn connect(path: &Path) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    Ok(SpiffeWorkloadApiClient::new(channel(path).await?))
}

/// A channel to the agent's socket at `path`.
async fn channel(path: &Path) -> anyhow::Result<Channel> {
    daemon::socket::connect_unix(path).await.with_context(|| {
        format!(
            "cannot reach the Workload API at {} (is tessera-agent running? see --socket-path)",
            path.display()
        )
    })
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// Splits concatenated DER certificates.
pub fn split_der(mut bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = X509Certificate::from_der(bytes).context("malformed certificate")?;
        let len = bytes.len() - rest.len();
        let (cert, tail) = bytes.split_at(len);
        out.push(CertificateDer::from(cert.to_vec()));
        bytes = tail;
    }
    Ok(out)
}

fn pem_of(kind: &str, ders: &[CertificateDer<'static>]) -> String {
    pem::encode_many(
        &ders
            .iter()
            .map(|d| pem::Pem::new(kind, d.to_vec()))
            .collect::<Vec<_>>(),
    )
}

fn describe(resp: &X509svidResponse) -> anyhow::Result<(String, serde_json::Value)> {
    let mut text = format!("Received {} svid(s) after fetch\n", resp.svids.len());
    let mut list = Vec::new();
    for s in &resp.svids {
        let chain = split_der(&s.x509_svid)?;
        let leaf = common::svid::parse_leaf(chain.first().map(|c| c.as_ref()).unwrap_or_default())?;
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        text.push_str(&format!(
            "\nSPIFFE ID         : {}\nSVID Valid After  : {}\nSVID Valid Until  : {}\nSerial            : {}\n",
            s.spiffe_id,
            secs(leaf.not_before),
            secs(leaf.not_after),
            leaf.serial_hex
        ));
        if !s.hint.is_empty() {
            text.push_str(&format!("Hint              : {}\n", s.hint));
        }
        list.push(json!({
            "spiffe_id": s.spiffe_id,
            "hint": s.hint,
            "serial": leaf.serial_hex,
            "not_before": secs(leaf.not_before),
            "not_after": secs(leaf.not_after),
            "dns_names": leaf.dns_names,
        }));
    }
    Ok((text, json!({"svids": list})))
}

fn write_files(dir: &Path, resp: &X509svidResponse) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, s) in resp.svids.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!(".{i}")
        };
        let chain = split_der(&s.x509_svid)?;
        let bundle = split_der(&s.bundle)?;
        std::fs::write(
            dir.join(format!("svid{suffix}.pem")),
            pem_of("CERTIFICATE", &chain),
        )?;
        let key_path = dir.join(format!("svid{suffix}.key"));
        let _ = std::fs::remove_file(&key_path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?;
        f.write_all(
            pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone())).as_bytes(),
        )?;
        std::fs::write(
            dir.join(format!("bundle{suffix}.pem")),
            pem_of("CERTIFICATE", &bundle),
        )?;
    }
    Ok(())
}

#[expect(clippy::print_stdout, reason = "CLI output")]
fn print(output: Output, text: &str, value: &serde_json::Value) {
    match output {
        Output::Text => print!("{text}"),
        Output::Json => println!("{value}"),
    }
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

/// Fetches the first X.509-SVID message, retrying while the agent is not ready.
async fn fetch_x509(path: &Path, timeout: Duration) -> anyhow::Result<X509svidResponse> {
    let attempt = async {
        loop {
            let mut client = connect(path).await?;
            match client.fetch_x509svid(with_header(X509svidRequest {})).await {
                Ok(resp) => match resp.into_inner().message().await {
                    Ok(Some(m)) => return Ok(m),
                    Ok(None) => {}
                    Err(s) if s.code() == tonic::Code::Unavailable => {}
                    Err(s) => return Err(status(s)),
                },
                Err(s) if s.code() == tonic::Code::Unavailable => {}
                Err(s) => return Err(status(s)),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no X.509-SVID within {}s", timeout.as_secs()))?
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        // Claims such as exp are integers; print them as such when they are.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// Runs a Workload API client command.
pub async fn run_api(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(_) => anyhow::bail!("BUG: run is not a client command"),
        Command::Api { command, opts } => {
            let path = socket_path(&opts.socket_path)?;
            let timeout = Duration::from_secs(opts.timeout);
            match command {
                ApiCommand::Fetch {
                    what: FetchCommand::X509 { write },
                } => {
                    let resp = fetch_x509(&path, timeout).await?;
                    let (mut text, value) = describe(&resp)?;
                    if let Some(dir) = write {
                        write_files(&dir, &resp)?;
                        text.push_str(&format!(
                            "\nWrote svid.pem, svid.key and bundle.pem to {}\n",
                            dir.display()
                        ));
                    }
                    print(opts.output, &text, &value);
                }
                ApiCommand::Fetch {
                    what:
                        FetchCommand::Jwt {
                            audience,
                            spiffe_id,
                        },
                } => {
                    let mut client = connect(&path).await?;
                    let resp = tokio::time::timeout(
                        timeout,
                        client.fetch_jwtsvid(with_header(JwtsvidRequest {
                            audience,
                            spiffe_id,
                        })),
                    )
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {}s", timeout.as_secs()))?
                    .map_err(status)?
                    .into_inner();
                    let mut text = String::new();
                    for s in &resp.svids {
                        text.push_str(&format!("token({}):\n\t{}\n", s.spiffe_id, s.svid));
                    }
                    let list: Vec<_> = resp
                        .svids
                        .iter()
                        .map(|s| json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
                        .collect();
                    print(opts.output, &text, &json!({ "svids": list }));
                }
                ApiCommand::Validate {
                    what: ValidateCommand::Jwt { audience, svid },
                } => {
                    let mut client = connect(&path).await?;
                    let resp = client
                        .validate_jwtsvid(with_header(ValidateJwtsvidRequest { audience, svid }))
                        .await
                        .map_err(status)?
                        .into_inner();
                    let claims = resp.claims.as_ref().map(struct_to_json).unwrap_or_default();
                    let text = format!(
                        "SVID is valid.\nSPIFFE ID : {}\nClaims    : {}\n",
                        resp.spiffe_id, claims
                    );
                    print(
                        opts.output,
                        &text,
                        &json!({"spiffe_id": resp.spiffe_id, "claims": claims}),
                    );
                }
                ApiCommand::Watch => {
                    let mut client = connect(&path).await?;
                    let mut stream = client
                        .fetch_x509svid(with_header(X509svidRequest {}))
                        .await
                        .map_err(status)?
                        .into_inner();
                    while let Some(m) = stream.message().await.map_err(status)? {
                        let (text, value) = describe(&m)?;
                        print(opts.output, &text, &value);
                    }
                }
            }
        }
        Command::Task { command, opts } => {
            use common::proto::tessera::workload_tasks_client::WorkloadTasksClient;
            use common::proto::tessera::{EndTaskRequest, TaskSpec};
            let path = socket_path(&opts.socket_path)?;
            let mut client = WorkloadTasksClient::new(channel(&path).await?);
            let begin = matches!(command, TaskCommand::Begin { .. });
            let task = match command {
                TaskCommand::Begin {
                    spiffe_id,
                    entry_id,
                    provision,
                    selectors,
                    reason,
                    ticket,
                    scopes,
                    ttl,
                    requester,
                } => {
                    let ttl_seconds = if ttl.is_empty() {
                        0
                    } else {
                        let d = common::duration::parse_duration(&ttl)
                            .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
                        i64::try_from(d.as_secs()).context("--ttl is too large")?
                    };
                    client
                        .begin_task(with_header(TaskSpec {
                            entry_id,
                            spiffe_id,
                            provision,
                            parent_id: String::new(),
                            selectors,
                            reason,
                            ticket,
                            scopes,
                            ttl_seconds,
                            requester_spiffe_id: requester,
                        }))
                        .await
                }
                TaskCommand::End {
                    task_id,
                    outcome,
                    reason,
                } => {
                    client
                        .end_task(with_header(EndTaskRequest {
                            id: task_id,
                            outcome,
                            reason,
                        }))
                        .await
                }
            }
            .map_err(status)?
            .into_inner();
            if begin {
                warn_if_cut(&task);
            }
            print(
                opts.output,
                &common::task::task_text(&task),
                &common::task::task_json(&task),
            );
        }
        Command::Healthcheck { opts } => {
            let path = socket_path(&opts.socket_path)?;
            let mut client = connect(&path).await?;
            // A request without the security header must be refused with InvalidArgument:
            // getting exactly that proves the Workload API itself is answering.
            match client
                .fetch_x509_bundles(common::proto::workload::X509BundlesRequest {})
                .await
            {
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    print(
                        opts.output,
                        "Agent is healthy.\n",
                        &json!({"healthy": true}),
                    );
                }
                Err(s) => return Err(status(s)),
                Ok(_) => {
                    anyhow::bail!("the Workload API accepted a request without the security header")
                }
            }
        }
    }
    Ok(())
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
