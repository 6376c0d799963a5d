//! X.509-SVIDs as the agent's own client prints them (`tessera-agent api fetch x509
//! --output json`), for tests that only need to know what a caller is served; and an open
//! Workload API stream watched in the background ([`SvidStream`]).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::proto::workload::X509svidRequest;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::{bin, runtime, with_header};

/// An open X.509-SVID stream of the test process (the workload) on an agent, read by a
/// task of its own runtime: the SPIFFE IDs of every message, or the error that ended it.
#[derive(Debug)]
pub struct SvidStream {
    rt: tokio::runtime::Runtime,
    rx: UnboundedReceiver<Result<Vec<String>, String>>,
}

impl SvidStream {
    /// Opens FetchX509SVID on the agent at `socket`.
    pub fn open(socket: &Path) -> Self {
        let rt = runtime();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let socket = socket.to_owned();
        rt.spawn(async move {
            let mut client = crate::workload_client(&socket).await;
            let mut stream = match client.fetch_x509svid(with_header(X509svidRequest {})).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        let ids: Vec<String> = msg.svids.into_iter().map(|s| s.spiffe_id).collect();
                        if tx.send(Ok(ids)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Err("the stream ended".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Self { rt, rx }
    }

    /// Waits for a message holding `id` and returns when it came; fails the test on a
    /// stream error or after `within`.
    pub fn wait_id(&mut self, id: &str, within: Duration) -> Instant {
        let rx = &mut self.rx;
        self.rt.block_on(async {
            let deadline = Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Ok(ids))) if ids.iter().any(|i| i == id) => return Instant::now(),
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => panic!("the X.509 stream failed: {e}"),
                    Ok(None) => panic!("the stream task ended"),
                    Err(_) => panic!("no SVID for {id} within {within:?}"),
                }
            }
        })
    }

    /// Fails the test if the stream failed since the last message read.
    pub fn assert_no_error(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            assert!(m.is_ok(), "the X.509 stream failed: {m:?}");
        }
    }
}

/// One SVID as printed by `tessera-agent api fetch x509 --output json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedSvid {
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Serial, hex.
    pub serial: String,
    /// notBefore, Unix seconds.
    pub not_before: u64,
    /// notAfter, Unix seconds.
    pub not_after: u64,
}

/// The SVIDs in the output of `api fetch x509 --output json`, or what the CLI printed on
/// stderr when it failed.
pub fn parse_fetched(out: &Output) -> Result<Vec<FetchedSvid>, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let list = v["svids"].as_array().ok_or("no svids array")?;
    Ok(list
        .iter()
        .map(|s| FetchedSvid {
            spiffe_id: s["spiffe_id"].as_str().unwrap_or_default().to_owned(),
            serial: s["serial"].as_str().unwrap_or_default().to_owned(),
            not_before: s["not_before"].as_u64().unwrap_or(0),
            not_after: s["not_after"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// Fetches the caller's X.509-SVIDs from the agent on `socket` with the agent CLI.
pub fn fetch_x509(socket: &Path, timeout_secs: u64) -> Result<Vec<FetchedSvid>, String> {
    let out = Command::new(bin("tessera-agent"))
        .args(["api", "fetch", "x509", "--output", "json", "--timeout"])
        .arg(timeout_secs.to_string())
        .arg("--socket-path")
        .arg(socket)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .map_err(|e| e.to_string())?;
    parse_fetched(&out)
}

/// The SPIFFE IDs of `list`, sorted.
pub fn sorted_ids(list: &[FetchedSvid]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|f| f.spiffe_id.clone()).collect();
    v.sort();
    v
}

/// The single SVID for `spiffe_id` in a fetch result; an error if there is anything else.
pub fn only(r: Result<Vec<FetchedSvid>, String>, spiffe_id: &str) -> Result<FetchedSvid, String> {
    let list = r?;
    match list.as_slice() {
        [one] if one.spiffe_id == spiffe_id => Ok(one.clone()),
        _ => Err(format!("expected exactly {spiffe_id}, got {list:?}")),
    }
}

/// A `fetch-over-fd --connect SOCKET --watch` (or `--watch-then-exec`) process: an open
/// X.509-SVID stream held by a process of its own (which tests move between cgroups or
/// make exec), read line by line in the background.
#[derive(Debug)]
pub struct Watcher {
    /// The process (its standard input is piped; standard error is read at the end).
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Watcher {
    /// Spawns `cmd` (a `fetch-over-fd … --watch` command) with its standard streams piped.
    pub fn spawn(mut cmd: Command) -> Self {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetch-over-fd");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        // Raw lines: after `--watch-then-exec` the output is whatever the agent sends.
        std::thread::spawn(move || {
            loop {
                let mut line = Vec::new();
                match out.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { child, lines }
    }

    /// The pid of the process holding the stream.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The SPIFFE IDs of the next message, `Err` with the process's standard error when the
    /// stream ended instead, `Ok(None)` when nothing came within `within`.
    pub fn next(&mut self, within: Duration) -> Result<Option<Vec<String>>, String> {
        let deadline = Instant::now() + within;
        let mut ids = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == b"--\n" => return Ok(Some(ids)),
                Ok(line) => ids.push(String::from_utf8_lossy(&line).trim_end().to_owned()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_err(|e| e.to_string())?;
                    let mut stderr = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                    }
                    return Err(format!("{status}: {}", stderr.trim()));
                }
            }
        }
    }
}

impl Watcher {
    /// Every byte the process prints within `within` (for a program exec'd with the
    /// connection: what the agent sent on it).
    pub fn output_for(&mut self, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut all = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            all.extend(line);
        }
        all
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
