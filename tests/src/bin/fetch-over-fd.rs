//! `fetch-over-fd --stdin` | `fetch-over-fd --connect SOCKET [--twice | --watch |
//! --watch-then-exec PROGRAM | --then-exec PROGRAM [ARG...]]`: one `FetchX509SVID` over a Unix socket connection to the
//! Workload API, either inherited as standard input (made by whatever program ran before
//! an `exec`) or made here. Prints the SPIFFE IDs received, one per line, and exits 0;
//! prints the refusal and exits 1. With `--twice`, it then prints `--`, waits for a line on
//! standard input, and makes a second call on the same connection, printing its IDs the
//! same way (tests change the process in between).
//!
//! With `--watch`, it keeps the stream open and prints the IDs of every message followed
//! by `--`, until the stream ends (exit 0) or fails (the refusal on standard error, exit
//! 1). With `--watch-then-exec PROGRAM`, it prints the first message so, waits for a line
//! on standard input, then execs `PROGRAM` with the connection (its stream still open) as
//! that program's standard input: what the agent sends on it from then on reaches
//! `PROGRAM` (`cat` prints it raw). With `--then-exec PROGRAM [ARG...]`, it prints the IDs
//! of one call followed by `--`, then execs `PROGRAM` with `ARG...` in the same process
//! (same pid and start time; the connection is closed on exec).
//!
//! Tests use it to show what the agent attests when the program that connected is not the
//! one that asks.

use std::os::fd::AsFd as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use common::proto::workload::X509svidRequest;
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

fn stream(args: &[String]) -> Result<std::os::unix::net::UnixStream, String> {
    match args {
        [flag, socket, ..] if flag == "--connect" => {
            std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))
        }
        [flag] if flag == "--stdin" => std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map(std::os::unix::net::UnixStream::from)
            .map_err(|e| format!("standard input: {e}")),
        _ => Err("usage: fetch-over-fd --stdin | fetch-over-fd --connect SOCKET".into()),
    }
}

/// What to do on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// One call.
    Once,
    /// Two calls, with a line of standard input in between.
    Twice,
    /// One call, every message.
    Watch,
    /// One call; after its first message and a line of standard input, exec this program
    /// with the connection as its standard input.
    WatchThenExec(String),
    /// One call; then exec this program with these arguments.
    OnceThenExec(Vec<String>),
}

async fn fetch(s: std::os::unix::net::UnixStream, mode: Mode) -> Result<Vec<String>, String> {
    // Kept for `--watch-then-exec`: another descriptor of the same connection.
    let kept = s.try_clone().map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let once = Arc::new(Mutex::new(Some(
        tokio::net::UnixStream::from_std(s).map_err(|e| e.to_string())?,
    )));
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let taken = once.lock().ok().and_then(|mut s| s.take());
            async move {
                taken
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the one connection is used"))
            }
        }))
        .await
        .map_err(|e| e.to_string())?;
    let client = SpiffeWorkloadApiClient::new(channel);
    match mode {
        Mode::Watch => return watch(client, None).await,
        Mode::WatchThenExec(program) => return watch(client, Some((program, kept))).await,
        Mode::Once | Mode::Twice | Mode::OnceThenExec(_) => drop(kept),
    }
    let mut ids = once_on(client.clone()).await?;
    if mode == Mode::Twice {
        println!("{}\n--", ids.join("\n"));
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        ids = once_on(client).await?;
    }
    Ok(ids)
}

/// One `FetchX509SVID` call on `client`'s connection: the IDs of its first message.
async fn once_on(
    mut client: SpiffeWorkloadApiClient<tonic::transport::Channel>,
) -> Result<Vec<String>, String> {
    let mut stream = client
        .fetch_x509svid(tests::with_header(X509svidRequest {}))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .ok_or("the stream ended without a message")?;
    Ok(first.svids.into_iter().map(|s| s.spiffe_id).collect())
}

/// Prints the IDs of every message of one `FetchX509SVID` stream, each message followed by
/// `--`; with `exec`, after the first message and a line of standard input, execs the
/// program with the connection as its standard input. Returns when the stream ends.
async fn watch(
    mut client: SpiffeWorkloadApiClient<tonic::transport::Channel>,
    mut exec: Option<(String, std::os::unix::net::UnixStream)>,
) -> Result<Vec<String>, String> {
    use std::io::Write as _;
    let mut stream = client
        .fetch_x509svid(tests::with_header(X509svidRequest {}))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    loop {
        let Some(msg) = stream
            .message()
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        else {
            return Ok(Vec::new());
        };
        let mut out = std::io::stdout().lock();
        for s in &msg.svids {
            writeln!(out, "{}", s.spiffe_id).map_err(|e| e.to_string())?;
        }
        writeln!(out, "--").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        drop(out);
        if let Some((program, conn)) = exec.take() {
            use std::os::unix::process::CommandExt as _;
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            // `stream` stays open: the agent keeps sending on the connection. The descriptor
            // shares the runtime's non-blocking mode: the next program expects blocking.
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            let err = std::process::Command::new(&program)
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(conn)))
                .exec();
            return Err(format!("exec {program}: {err}"));
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.get(2..).unwrap_or_default() {
        [] => Mode::Once,
        [flag] if flag == "--twice" => Mode::Twice,
        [flag] if flag == "--watch" => Mode::Watch,
        [flag, program] if flag == "--watch-then-exec" => Mode::WatchThenExec(program.clone()),
        [flag, command @ ..] if flag == "--then-exec" && !command.is_empty() => {
            Mode::OnceThenExec(command.to_vec())
        }
        _ => {
            eprintln!(
                "usage: fetch-over-fd --stdin | fetch-over-fd --connect SOCKET [--twice | --watch | --watch-then-exec PROGRAM | --then-exec PROGRAM [ARG...]]"
            );
            return ExitCode::from(64);
        }
    };
    let watching = matches!(mode, Mode::Watch | Mode::WatchThenExec(_));
    let then_exec = match &mode {
        Mode::OnceThenExec(command) => Some(command.clone()),
        _ => None,
    };
    let s = match stream(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A watch lasts as long as the stream; a single call must answer within 10 s.
    let limit = std::time::Duration::from_secs(if watching { 24 * 3600 } else { 10 });
    match rt.block_on(async { tokio::time::timeout(limit, fetch(s, mode)).await }) {
        Ok(Ok(ids)) => {
            for id in ids {
                println!("{id}");
            }
            let Some(command) = then_exec else {
                return ExitCode::SUCCESS;
            };
            use std::io::Write as _;
            use std::os::unix::process::CommandExt as _;
            println!("--");
            let _ = std::io::stdout().flush();
            let err = std::process::Command::new(&command[0])
                .args(&command[1..])
                .exec();
            eprintln!("exec {}: {err}", command[0]);
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("refused: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("refused: no answer within 10 s");
            ExitCode::FAILURE
        }
    }
}
