//! Running Workload API client commands: each connects to the agent's socket like any
//! SPIFFE client (with the security header), makes its call, and prints the answer through
//! [`super::output`].

use std::path::Path;
use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse,
};
use daemon::cli_output::{self, Output};
use serde_json::json;
use tonic::transport::Channel;

use super::args::{ApiCommand, Command, FetchCommand, TaskCommand, ValidateCommand};
use super::output;
use super::socket_path;

/// Connects to the Workload API on `path`.
pub async fn connect(path: &Path) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    Ok(SpiffeWorkloadApiClient::new(channel(path).await?))
}

/// A channel to the agent's socket at `path`; the error names `SPIFFE_ENDPOINT_SOCKET`.
async fn channel(path: &Path) -> anyhow::Result<Channel> {
    cli_output::connect_socket(
        path,
        "the Workload API",
        "tessera-agent",
        "SPIFFE_ENDPOINT_SOCKET",
        "--socket-path",
        None,
    )
    .await
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

fn print(output: Output, text: &str, value: &serde_json::Value) {
    cli_output::print(output, text, value);
}

/// A refused call: the agent's reason and the gRPC code.
fn status(e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::PermissionDenied {
        anyhow::anyhow!(
            "the agent refused this process: {} (PermissionDenied)",
            e.message()
        )
    } else {
        anyhow::anyhow!("{} ({:?})", e.message(), e.code())
    }
}

/// Fetches the first X.509-SVID message, retrying while the agent answers `Unavailable`
/// (not ready yet). When the deadline passes, the error carries the agent's last answer, so
/// a caller the agent cannot attest learns why instead of only that time ran out.
async fn fetch_x509(path: &Path, timeout: Duration) -> anyhow::Result<X509svidResponse> {
    let mut last_refusal: Option<String> = None;
    let attempt = async {
        loop {
            let mut client = connect(path).await?;
            match client.fetch_x509svid(with_header(X509svidRequest {})).await {
                Ok(resp) => match resp.into_inner().message().await {
                    Ok(Some(m)) => return Ok(m),
                    Ok(None) => {}
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        last_refusal = Some(s.message().to_owned());
                    }
                    Err(s) => return Err(status(s)),
                },
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    last_refusal = Some(s.message().to_owned());
                }
                Err(s) => return Err(status(s)),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let result = tokio::time::timeout(timeout, attempt).await;
    result.unwrap_or_else(|_| {
        Err(match last_refusal {
            Some(reason) => anyhow::anyhow!(
                "no X.509-SVID within {}s: the agent refused this process: {reason} (Unavailable)",
                timeout.as_secs_f64()
            ),
            None => anyhow::anyhow!(
                "no X.509-SVID within {}s: the agent did not answer",
                timeout.as_secs_f64()
            ),
        })
    })
}

/// Runs a Workload API client command.
pub async fn run_api(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(_) => anyhow::bail!("BUG: run is not a client command"),
        Command::Api { command, opts } => {
            let path = socket_path(&opts.socket_path)?;
            let timeout = opts.timeout;
            match command {
                ApiCommand::Fetch {
                    what: FetchCommand::X509 { write },
                } => {
                    let resp = fetch_x509(&path, timeout).await?;
                    let (body, mut value) = output::describe(&resp)?;
                    let mut text = format!("Received {} svid(s)\n{body}", resp.svids.len());
                    if let Some(dir) = write {
                        let written = output::write_files(&dir, &resp)?;
                        text.push_str(&output::wrote_text(&dir, &written));
                        value["written"] = json!(written);
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
                            spiffe_id: spiffe_id.unwrap_or_default(),
                        })),
                    )
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {}s", timeout.as_secs_f64()))?
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
                    let claims = resp
                        .claims
                        .as_ref()
                        .map(output::struct_to_json)
                        .unwrap_or_default();
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
                    let mut update = 0u64;
                    while let Some(m) = stream.message().await.map_err(status)? {
                        update += 1;
                        let (body, mut value) = output::describe(&m)?;
                        // The first message is what the workload has; each later one
                        // replaces it (a rotation, an entry change, a revocation).
                        let header = if update == 1 {
                            format!("Received {} svid(s)\n", m.svids.len())
                        } else {
                            format!("\nUpdate {}: now {} svid(s)\n", update - 1, m.svids.len())
                        };
                        value["update"] = json!(update - 1);
                        print(opts.output, &format!("{header}{body}"), &value);
                    }
                }
            }
        }
        Command::Task { command, opts } => {
            use common::proto::tessera::workload_tasks_client::WorkloadTasksClient;
            use common::proto::tessera::{EndTaskRequest, TaskSpec};
            let path = socket_path(&opts.socket_path)?;
            let mut client = WorkloadTasksClient::new(channel(&path).await?);
            let task = match command {
                TaskCommand::Begin {
                    spiffe_id,
                    entry_id,
                    provision,
                    selectors,
                    reason,
                    ticket,
                    scopes,
                    audiences,
                    ttl,
                    requester,
                    bind,
                    bind_pid,
                    break_glass,
                } => {
                    let named_requester = requester.is_some();
                    let task = client
                        .begin_task(with_header(TaskSpec {
                            entry_id: entry_id.unwrap_or_default(),
                            spiffe_id: spiffe_id.unwrap_or_default(),
                            provision,
                            parent_id: String::new(),
                            selectors,
                            reason: reason.unwrap_or_default(),
                            ticket: ticket.unwrap_or_default(),
                            scopes,
                            audiences,
                            ttl_seconds: ttl
                                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                            requester_spiffe_id: requester.unwrap_or_default(),
                            // A workload's provisioned entry goes to its own tenant.
                            tenant: String::new(),
                            bind: bind.unwrap_or_default(),
                            bind_pid: bind_pid.unwrap_or(0),
                            break_glass,
                        }))
                        .await
                        .map_err(|s| begin_refused(s, named_requester))?
                        .into_inner();
                    output::warn_if_cut(&task);
                    output::warn_if_bound_to_self(&task);
                    task
                }
                TaskCommand::End {
                    task_id,
                    outcome,
                    reason,
                } => client
                    .end_task(with_header(EndTaskRequest {
                        id: task_id,
                        outcome,
                        reason: reason.unwrap_or_default(),
                    }))
                    .await
                    .map_err(status)?
                    .into_inner(),
            };
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

/// A refused `task begin`. A policy denial for a request made as the workload's default
/// (oldest) standing identity may not hold for another of its identities: say how to name
/// one.
fn begin_refused(s: tonic::Status, named_requester: bool) -> anyhow::Error {
    if s.code() == tonic::Code::PermissionDenied && !named_requester {
        anyhow::anyhow!(
            "the task was refused: {} (the request was made as this workload's oldest standing \
             identity; if another of its identities may begin this task, name it with \
             --requester SPIFFE_ID)",
            s.message()
        )
    } else if s.code() == tonic::Code::PermissionDenied {
        anyhow::anyhow!("the task was refused: {}", s.message())
    } else {
        status(s)
    }
}
