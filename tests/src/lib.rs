//! End-to-end test harness: real `tessera-server` and `tessera-agent` processes on temp
//! directories, loopback TCP and Unix sockets, driven through their command-line
//! interfaces exactly as an operator would.
//!
//! The binaries are taken from the same target directory as the test executable, so the
//! test command builds them first (`cargo build --workspace --bins`), as the README says.
//!
//! Every process a test starts is a [`Process`]: its pid and exit status are visible, SIGTERM
//! is timed ([`Process::terminate`]), and its log is printed when the test fails.
//! [`ServerProc`] and [`AgentProc`] add the flags and files of each binary and wait for
//! readiness (failing with the log if the process exits while starting); [`Cluster`] is a
//! server with one agent that has attested.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::missing_panics_doc,
    reason = "test harness: a failed setup step is a failed test"
)]

pub mod agent;
pub mod cgroups;
pub mod cluster;
pub mod dns;
pub mod fetch;
pub mod health;
pub mod jwt;
pub mod nobody;
pub mod pgcluster;
pub mod process;
pub mod server;
pub mod testdb;
pub mod web;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

pub use agent::AgentProc;
pub use cluster::Cluster;
pub use fetch::{FetchedSvid, fetch_x509, only, parse_fetched, sorted_ids};
pub use health::{http_get, status_of};
pub use nobody::{NOBODY, assert_nobody_can_reach, bin_for_nobody, command_as_nobody};
pub use pgcluster::PgCluster;
pub use process::Process;
pub use server::ServerProc;
pub use testdb::TestDb;

/// The longest an agent takes to reach a server that is back after an outage: its reconnect
/// backoff is capped at 30 s (agent/src/rotation.rs `BACKOFF_MAX`), plus a margin.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(35);
/// The drain deadline after SIGTERM of both binaries (their `app.rs`).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Trust domain used by test clusters.
pub const TRUST_DOMAIN: &str = "example.org";
/// SPIFFE ID of the test agent.
pub const AGENT_ID: &str = "spiffe://example.org/node/test";

/// Path of a workspace binary built beside the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The words that run a program under a soft open-file limit of `soft` and a hard one of
/// `hard`: util-linux `prlimit`, which execs the program, so its pid is the program's.
pub(crate) fn prlimit_prefix(soft: u64, hard: u64) -> [std::ffi::OsString; 3] {
    [
        "prlimit".into(),
        format!("--nofile={soft}:{hard}").into(),
        "--".into(),
    ]
}

/// A free loopback TCP port (best effort: the port is released before use).
///
/// Chosen below the kernel's ephemeral range, never from it: a server that tests stop and
/// restart on the same port would otherwise find it taken by the source port of some
/// other test's outgoing connection, which the kernel hands out from that range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(10_001));
    let span = high - low;
    // Different test processes start at different places; calls in one process step on.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(low + offset).expect("port below 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The selector of this test process's own uid (`unix:uid:N`).
pub fn uid_selector() -> String {
    format!("unix:uid:{}", nix::unistd::getuid())
}

/// A command's exit code, stdout and stderr, for failure messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gRPC channel to an agent's Unix socket (the Workload API and its task service).
pub async fn agent_channel(socket: &Path) -> tonic::transport::Channel {
    daemon::socket::connect_unix(socket)
        .await
        .expect("connect to the agent socket")
}

/// A request carrying the `workload.spiffe.io: true` security header.
pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix time with sub-second precision (certificate times have 1 s resolution).
pub fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A multi-threaded runtime: gRPC connection tasks keep running on its workers while the
/// test thread blocks on CLI commands inside `block_on`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Tessera's generated Workload API client on an agent's Unix socket (requests go through
/// [`with_header`], or deliberately without it).
pub async fn workload_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(agent_channel(socket).await)
}

/// Permission bits (0o7777) of the file at `path`.
pub fn file_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// How often `needle` occurs in `haystack` (log lines, mostly).
pub fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
