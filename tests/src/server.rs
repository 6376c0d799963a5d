//! `tessera-server` run by a test: started, stopped, crashed and restarted on the same data
//! directory and port, and driven through its admin CLI.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{CurrentRun, Process, tail};
use crate::{AGENT_ID, TRUST_DOMAIN, bin, free_port, wait_for};

/// How long a server may take to answer its admin API after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) `tessera-server`.
#[derive(Debug)]
pub struct ServerProc {
    run: CurrentRun,
    /// Extra `run` flags used at every start.
    pub extra_args: Vec<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Admin socket.
    pub admin_socket: PathBuf,
    /// Node API address (127.0.0.1 unless [`Self::with_node_address`]).
    pub host: Ipv4Addr,
    /// Node API port.
    pub port: u16,
    /// `/live` and `/ready` address (`--health-address`), if the server serves them.
    pub health_address: Option<SocketAddr>,
    /// Open-file limits (soft, hard RLIMIT_NOFILE) the server starts under, if set.
    pub fd_limits: Option<(u64, u64)>,
    /// Log file (stderr).
    pub log: PathBuf,
}

impl ServerProc {
    /// Starts a server in `dir` and waits until its admin API answers.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Self {
        let mut s = Self::new(dir, extra_args);
        s.restart();
        s
    }

    /// A server in `dir` that is not started yet (see [`Self::restart`]).
    pub fn new(dir: &Path, extra_args: &[&str]) -> Self {
        Self {
            run: CurrentRun::new("tessera-server"),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            data_dir: dir.join("server"),
            admin_socket: dir.join("admin.sock"),
            host: Ipv4Addr::LOCALHOST,
            port: free_port(),
            health_address: None,
            fd_limits: None,
            log: dir.join("server.log"),
        }
    }

    /// Starts the server under a soft open-file limit of `soft` and a hard one of `hard`
    /// ([`crate::prlimit_prefix`]).
    #[must_use]
    pub fn with_fd_limits(mut self, soft: u64, hard: u64) -> Self {
        self.fd_limits = Some((soft, hard));
        self
    }

    /// Serves `/live` and `/ready` on a free loopback port (see `health_address`).
    #[must_use]
    pub fn with_health(mut self) -> Self {
        self.health_address = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        self
    }

    /// Serves the node API on `host:port` instead (any loopback address answers on Linux:
    /// several servers can share one port on 127.0.0.2, 127.0.0.3, ...).
    #[must_use]
    pub fn with_node_address(mut self, host: Ipv4Addr, port: u16) -> Self {
        self.host = host;
        self.port = port;
        self
    }

    /// The health address; panics unless the server was built [`Self::with_health`].
    pub fn health(&self) -> SocketAddr {
        self.health_address
            .expect("server started without a health address")
    }

    /// (Re)starts the process with the same data directory and port, and waits until its
    /// admin API answers. Fails the test, with the log, if it exits or does not answer.
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "server already running");
        let mut program: Vec<std::ffi::OsString> = Vec::new();
        if let Some((soft, hard)) = self.fd_limits {
            program.extend(crate::prlimit_prefix(soft, hard));
        }
        program.push(bin("tessera-server").into());
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["--bind", &self.address()]);
        if let Some(h) = self.health_address {
            cmd.args(["--health-address", &h.to_string()]);
        }
        cmd.args(&self.extra_args).env("TESSERA_LOG", "info");
        let mut p = Process::spawn("tessera-server", cmd, &self.log);
        let up = wait_for(START_TIMEOUT, || {
            if let Some(code) = p.exited() {
                panic!(
                    "tessera-server exited with {code} during start:\n{}",
                    tail(&self.log)
                );
            }
            self.cli(&["healthcheck"]).status.success().then_some(())
        });
        assert!(
            up.is_some(),
            "tessera-server did not answer within {START_TIMEOUT:?}:\n{}",
            tail(&self.log)
        );
        self.run.set(p);
    }

    /// Node API address.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
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
        self.create_entry_under(AGENT_ID, spiffe_id, selectors, extra)
    }

    /// As [`Self::create_entry`], parented to the agent `parent_id`.
    pub fn create_entry_under(
        &self,
        parent_id: &str,
        spiffe_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "entry",
            "create",
            "--parent-id",
            parent_id,
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

    /// `agent list`: one JSON object per agent record.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        self.cli_json(&["agent", "list"])["agents"]
            .as_array()
            .expect("agents array")
            .clone()
    }

    /// SPIFFE IDs of the agent records (attested agents, banned ones too), sorted.
    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .agents()
            .iter()
            .map(|a| a["spiffe_id"].as_str().expect("spiffe_id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Waits until the server lists an agent record for `spiffe_id` (the agent has
    /// attested, and its `agent.attested` audit record is written); fails after `timeout`.
    pub fn wait_attested(&self, spiffe_id: &str, timeout: Duration) {
        let listed = wait_for(timeout, || {
            let out = self.cli(&["agent", "list", "--output", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["agents"]
                .as_array()?
                .iter()
                .any(|a| a["spiffe_id"] == spiffe_id)
                .then_some(())
        });
        assert!(
            listed.is_some(),
            "the server did not list agent {spiffe_id} within {timeout:?}:\n{}",
            self.log_tail()
        );
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

    /// The rows `sql` selects from the server's SQLite datastore (read-only, with Python's
    /// sqlite3; the server may be running), each row as a JSON array.
    pub fn query_sql(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        let db = self.data_dir.join("datastore.sqlite3");
        let out = Command::new("python3")
            .args([
                "-c",
                "import json,sqlite3,sys; d=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True); print(json.dumps(d.execute(sys.argv[2]).fetchall()))",
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
        serde_json::from_slice(&out.stdout).expect("rows as JSON")
    }

    /// Writes the PEM bundle to `path`.
    pub fn write_bundle(&self, path: &Path) {
        let out = self.cli(&["bundle", "show"]);
        assert!(
            out.status.success(),
            "bundle show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(path, out.stdout).expect("write bundle");
    }

    /// Waits until the server's trust bundle (`bundle show`) holds `n` CA certificates, as
    /// it does once every server on its database has published its CA; fails after
    /// `timeout`.
    pub fn wait_bundle_cas(&self, n: usize, timeout: Duration) {
        let got = wait_for(timeout, || {
            let out = self.cli(&["bundle", "show"]);
            let count = String::from_utf8_lossy(&out.stdout)
                .matches("BEGIN CERTIFICATE")
                .count();
            (count == n).then_some(())
        });
        assert!(
            got.is_some(),
            "the bundle never held {n} CAs within {timeout:?}:\n{}",
            self.log_tail()
        );
    }

    /// The end of the server log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// The whole server log (all runs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // A running process prints its own log when dropped during a panic.
        if std::thread::panicking() && !self.run.is_started() {
            eprintln!("--- server log ---\n{}", tail(&self.log));
        }
    }
}

impl std::ops::Deref for ServerProc {
    type Target = CurrentRun;
    fn deref(&self) -> &CurrentRun {
        &self.run
    }
}

impl std::ops::DerefMut for ServerProc {
    fn deref_mut(&mut self) -> &mut CurrentRun {
        &mut self.run
    }
}

/// Runs `tessera-server run` under `dir` with `args`, expecting it to refuse its
/// configuration and exit at start: its exit code (`None` if it was still running after
/// 20 s) and its log.
pub fn refused_start(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let log = dir.join("refused.log");
    let mut cmd = Command::new(bin("tessera-server"));
    cmd.arg("run")
        .args(["--trust-domain", TRUST_DOMAIN, "--data-dir"])
        .arg(dir.join("data"))
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(args);
    let mut p = Process::spawn("tessera-server", cmd, &log);
    let code = p.wait_exit(Duration::from_secs(20));
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}
