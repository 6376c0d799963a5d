//! End-to-end test harness: real `tessera-server` and `tessera-agent` processes on temp
//! directories, loopback TCP and Unix sockets, driven through their command-line
//! interfaces exactly as an operator would.
//!
//! The binaries are taken from the same target directory as the test executable, so the
//! test command builds them first (`cargo build --workspace --bins`), as the README says.
#![allow(
    clippy::expect_used,
    clippy::print_stderr,
    clippy::missing_panics_doc,
    reason = "test harness: a failed setup step is a failed test"
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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

/// A free loopback TCP port (best effort: the port is released before use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::SystemTime::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::SystemTime::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running (or stopped) `tessera-server`.
#[derive(Debug)]
pub struct ServerProc {
    child: Option<Child>,
    /// Extra `run` flags used at every start.
    pub extra_args: Vec<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Admin socket.
    pub admin_socket: PathBuf,
    /// Node API port on 127.0.0.1.
    pub port: u16,
    /// Log file (stderr).
    pub log: PathBuf,
}

impl ServerProc {
    /// Starts a server in `dir` and waits until its admin API answers.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Self {
        let mut s = Self {
            child: None,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            data_dir: dir.join("server"),
            admin_socket: dir.join("admin.sock"),
            port: free_port(),
            log: dir.join("server.log"),
        };
        s.restart();
        s
    }

    /// (Re)starts the process with the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(bin("tessera-server"))
            .arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra_args)
            .env("TESSERA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tessera-server");
        self.child = Some(child);
        let ok = wait_for(Duration::from_secs(20), || {
            self.cli(&["healthcheck"]).status.success().then_some(())
        });
        assert!(
            ok.is_some(),
            "server did not become healthy:\n{}",
            tail(&self.log)
        );
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// Hard stop (SIGKILL), as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node API address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `tessera-server ARGS --admin-socket ...` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera-server"))
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .output()
            .expect("run tessera-server CLI")
    }

    /// Runs an admin command with `--output json`, asserting success, and parses the JSON.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "tessera-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// A fresh join token for `spiffe_id`.
    pub fn token(&self, spiffe_id: &str) -> String {
        self.cli_json(&["token", "generate", "--spiffe-id", spiffe_id])["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// Creates an entry parented to the test agent; returns its id.
    pub fn create_entry(&self, spiffe_id: &str, selectors: &[&str], extra: &[&str]) -> String {
        let mut args = vec![
            "entry",
            "create",
            "--parent-id",
            AGENT_ID,
            "--spiffe-id",
            spiffe_id,
        ];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        args.extend(extra);
        self.cli_json(&args)["id"]
            .as_str()
            .expect("entry id")
            .to_owned()
    }

    /// Runs SQL against the (stopped) server's datastore with Python's sqlite3, as an
    /// attacker with write access to the database file would.
    pub fn tamper_sql(&self, sql: &str) {
        let db = self.data_dir.join("datastore.sqlite3");
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.executescript(sys.argv[2]); d.commit()",
            ])
            .arg(&db)
            .arg(sql)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes the PEM bundle to `path`.
    pub fn write_bundle(&self, path: &Path) {
        let out = self.cli(&["bundle", "show"]);
        assert!(out.status.success());
        std::fs::write(path, out.stdout).expect("write bundle");
    }

    /// The server log so far.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", tail(&self.log));
        }
        self.kill();
    }
}

/// A running (or stopped) `tessera-agent`.
#[derive(Debug)]
pub struct AgentProc {
    child: Option<Child>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Workload API socket.
    pub socket_path: PathBuf,
    /// Bootstrap bundle file.
    pub bundle_path: PathBuf,
    /// Server address.
    pub server_address: String,
    /// Log file (stderr).
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts an agent in `dir` (socket under `dir/public`, reachable by any user).
    pub fn start(dir: &Path, server: &ServerProc, join_token: Option<&str>) -> Self {
        let public = dir.join("public");
        std::fs::create_dir_all(&public).expect("socket dir");
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bundle_path = dir.join("bootstrap-bundle.pem");
        server.write_bundle(&bundle_path);
        let mut a = Self {
            child: None,
            data_dir: dir.join("agent"),
            socket_path: public.join("api.sock"),
            bundle_path,
            server_address: server.address(),
            log: dir.join("agent.log"),
        };
        a.restart(join_token);
        a
    }

    /// (Re)starts the process with the same data directory and socket.
    pub fn restart(&mut self, join_token: Option<&str>) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = Command::new(bin("tessera-agent"));
        cmd.arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .args(["--server-address", &self.server_address])
            .arg("--trust-bundle")
            .arg(&self.bundle_path)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket-path")
            .arg(&self.socket_path)
            .env("TESSERA_LOG", "info,agent=debug")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(t) = join_token {
            cmd.args(["--join-token", t]);
        }
        self.child = Some(cmd.spawn().expect("spawn tessera-agent"));
        let ok = wait_for(Duration::from_secs(20), || {
            self.socket_path.exists().then_some(())
        });
        assert!(
            ok.is_some(),
            "agent socket did not appear:\n{}",
            tail(&self.log)
        );
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = wait_for(timeout, || child.try_wait().ok().flatten())?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// `unix://` endpoint URI of the Workload API.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket_path.display())
    }

    /// Runs `tessera-agent ARGS --socket-path ...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera-agent"))
            .args(args)
            .arg("--socket-path")
            .arg(&self.socket_path)
            .output()
            .expect("run tessera-agent CLI")
    }

    /// The agent log so far.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", tail(&self.log));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server and an enrolled agent in one temp directory.
#[derive(Debug)]
pub struct Cluster {
    /// Agent (dropped first).
    pub agent: AgentProc,
    /// Server.
    pub server: ServerProc,
    /// Root of all files; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a server (with `server_args`) and an agent enrolled as [`AGENT_ID`].
    pub fn start(server_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Other users (the `nobody` child in tests) must reach the socket below.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let server = ServerProc::start(dir.path(), server_args);
        let token = server.token(AGENT_ID);
        let agent = AgentProc::start(dir.path(), &server, Some(&token));
        Self { agent, server, dir }
    }

    /// Fetches X.509-SVIDs with the agent CLI as the current user, `--output json`.
    pub fn fetch_json(&self) -> Output {
        self.agent.cli(&[
            "api",
            "fetch",
            "x509",
            "--output",
            "json",
            "--timeout",
            "10",
        ])
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
