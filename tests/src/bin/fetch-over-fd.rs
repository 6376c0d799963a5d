//! `fetch-over-fd --stdin` | `fetch-over-fd --connect SOCKET [--twice]`: one `FetchX509SVID`
//! over a Unix socket connection to the Workload API, either inherited as standard input
//! (made by whatever program ran before an `exec`) or made here. Prints the SPIFFE IDs
//! received, one per line, and exits 0; prints the refusal and exits 1. With `--twice`, it
//! then prints `--`, waits for a line on standard input, and makes a second call on the
//! same connection, printing its IDs the same way (tests change the process in between).
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
        [flag, socket] | [flag, socket, _] if flag == "--connect" => {
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

async fn fetch(s: std::os::unix::net::UnixStream, twice: bool) -> Result<Vec<String>, String> {
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
    let mut ids = once_on(client.clone()).await?;
    if twice {
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let twice = args.len() == 3 && args.get(2).is_some_and(|a| a == "--twice");
    if args.len() == 3 && !twice {
        eprintln!("usage: fetch-over-fd --stdin | fetch-over-fd --connect SOCKET [--twice]");
        return ExitCode::from(64);
    }
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
    match rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), fetch(s, twice)).await
    }) {
        Ok(Ok(ids)) => {
            for id in ids {
                println!("{id}");
            }
            ExitCode::SUCCESS
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
