//! `tessera-agent` run by a test: started (waiting until its Workload API listens), stopped,
//! crashed and restarted on the same files, or run until it exits by itself.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::fetch::{FetchedSvid, fetch_x509, sorted_ids};
use crate::process::{CurrentRun, Process, tail};
use crate::server::ServerProc;
use crate::{TRUST_DOMAIN, bin, free_port, wait_for};

/// How long an agent may take to listen on its Workload API socket after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) `tessera-agent`.
#[derive(Debug)]
pub struct AgentProc {
    run: CurrentRun,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Workload API socket.
    pub socket_path: PathBuf,
    /// Bootstrap bundle file.
    pub bundle_path: PathBuf,
    /// Server address.
    pub server_address: String,
    /// `/live` and `/ready` address (`--health-address`), if the agent serves them.
    pub health_address: Option<SocketAddr>,
    /// Extra `run` flags used at every start.
    pub extra_args: Vec<String>,
    /// Open-file limits (soft, hard RLIMIT_NOFILE) the agent starts under, if set.
    pub fd_limits: Option<(u64, u64)>,
    /// The resolver configuration the agent sees as `/etc/resolv.conf`, if set.
    pub resolv_conf: Option<PathBuf>,
    /// Log file (stderr).
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts an agent in `dir` (socket under `dir/public`, reachable by any user) and waits
    /// until its Workload API listens. With a join token this does not wait for the agent
    /// to attest (see [`ServerProc::wait_attested`]).
    pub fn start(dir: &Path, server: &ServerProc, join_token: Option<&str>) -> Self {
        let mut a = Self::new(dir, server);
        a.restart(join_token);
        a
    }

    /// The files of a fresh agent in `dir`, bootstrapped with `server`'s current bundle;
    /// not started yet (see [`Self::restart`], [`Self::run_until_exit`]).
    pub fn new(dir: &Path, server: &ServerProc) -> Self {
        let public = dir.join("public");
        std::fs::create_dir_all(&public).expect("socket dir");
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bundle_path = dir.join("bootstrap-bundle.pem");
        server.write_bundle(&bundle_path);
        Self {
            run: CurrentRun::new("tessera-agent"),
            data_dir: dir.join("agent"),
            socket_path: public.join("api.sock"),
            bundle_path,
            server_address: server.address(),
            health_address: None,
            extra_args: Vec::new(),
            fd_limits: None,
            resolv_conf: None,
            log: dir.join("agent.log"),
        }
    }

    /// Serves `/live` and `/ready` on a free loopback port (see `health_address`).
    #[must_use]
    pub fn with_health(mut self) -> Self {
        self.health_address = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        self
    }

    /// Adds `run` flags used at every start.
    #[must_use]
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Runs the agent under an open-file limit of `n`, soft and hard
    /// ([`Self::with_fd_limits`]).
    #[must_use]
    pub fn with_fd_limit(self, n: u64) -> Self {
        self.with_fd_limits(n, n)
    }

    /// Starts the agent under a soft open-file limit of `soft` and a hard one of `hard`
    /// ([`crate::prlimit_prefix`]).
    #[must_use]
    pub fn with_fd_limits(mut self, soft: u64, hard: u64) -> Self {
        self.fd_limits = Some((soft, hard));
        self
    }

    /// Runs the agent in a mount namespace of its own where `path` is bind-mounted over
    /// `/etc/resolv.conf`, so its name lookups go to the DNS server that file names
    /// (util-linux `unshare`, then `sh`, exec the agent: the pid is the agent's). The
    /// rest of the machine keeps its resolver.
    #[must_use]
    pub fn with_resolv_conf(mut self, path: &Path) -> Self {
        self.resolv_conf = Some(path.to_owned());
        self
    }

    /// The health address; panics unless the agent was built [`Self::with_health`].
    pub fn health(&self) -> SocketAddr {
        self.health_address
            .expect("agent started without a health address")
    }

    /// Spawns `tessera-agent run` without waiting for anything.
    pub fn spawn(&mut self, join_token: Option<&str>) {
        assert!(!self.is_running(), "agent already running");
        // Each wrapper execs the next, so the pid is the agent's.
        let mut program: Vec<std::ffi::OsString> = Vec::new();
        if let Some(conf) = &self.resolv_conf {
            program.extend(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
                ]
                .map(Into::into),
            );
            program.push(conf.into());
        }
        if let Some((soft, hard)) = self.fd_limits {
            program.extend(crate::prlimit_prefix(soft, hard));
        }
        program.push(bin("tessera-agent").into());
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .args(["--server-address", &self.server_address])
            .arg("--trust-bundle")
            .arg(&self.bundle_path)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket-path")
            .arg(&self.socket_path);
        if let Some(h) = self.health_address {
            cmd.args(["--health-address", &h.to_string()]);
        }
        if let Some(t) = join_token {
            cmd.args(["--join-token", t]);
        }
        cmd.args(&self.extra_args)
            .env("TESSERA_LOG", "info,agent=debug");
        self.run
            .set(Process::spawn("tessera-agent", cmd, &self.log));
    }

    /// (Re)starts the process with the same files and waits until its Workload API listens
    /// (it binds the socket before attesting). Fails the test, with the log, if the agent
    /// exits or does not listen in time. A stale socket file left by a crash does not count:
    /// only a socket that accepts a connection does.
    pub fn restart(&mut self, join_token: Option<&str>) {
        self.spawn(join_token);
        let socket = self.socket_path.clone();
        let p = self.run.process();
        let up = wait_for(START_TIMEOUT, || {
            if let Some(code) = p.exited() {
                panic!(
                    "tessera-agent exited with {code} during start:\n{}",
                    p.log_tail()
                );
            }
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(drop)
        });
        assert!(
            up.is_some(),
            "tessera-agent did not listen on {} within {START_TIMEOUT:?}:\n{}",
            socket.display(),
            tail(&self.log)
        );
    }

    /// Runs `tessera-agent run` until it exits by itself, for runs that are meant to fail
    /// (no readiness wait, which would race with a refusal: a refused agent binds and
    /// removes its socket within milliseconds). Returns the exit code and what this run
    /// logged; fails the test if it is still running after `timeout`.
    pub fn run_until_exit(&mut self, join_token: Option<&str>, timeout: Duration) -> (i32, String) {
        let offset = self.log_len();
        self.spawn(join_token);
        let code = self.wait_exit(timeout);
        let text = self.log_since(offset);
        let Some(code) = code else {
            self.kill();
            panic!("tessera-agent did not exit by itself within {timeout:?}; its log:\n{text}");
        };
        (code, text)
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
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .expect("run tessera-agent CLI")
    }

    /// `tessera-agent healthcheck`: whether the Workload API answers.
    pub fn healthcheck(&self) -> bool {
        self.cli(&["healthcheck"]).status.success()
    }

    /// The caller's X.509-SVIDs through `api fetch x509`, or the CLI's error. The CLI
    /// retries while the agent answers Unavailable, for up to `timeout_secs`.
    pub fn fetch_x509_within(&self, timeout_secs: u64) -> Result<Vec<FetchedSvid>, String> {
        fetch_x509(&self.socket_path, timeout_secs)
    }

    /// [`Self::fetch_x509_within`] 5 s: for polling loops, where a fetch must not hang.
    pub fn fetch_x509(&self) -> Result<Vec<FetchedSvid>, String> {
        self.fetch_x509_within(5)
    }

    /// The SPIFFE IDs of the caller's X.509-SVIDs, sorted, or the CLI's error (10 s, as
    /// [`crate::Cluster::fetch_json`]).
    pub fn fetch_ids(&self) -> Result<Vec<String>, String> {
        self.fetch_x509_within(10).map(|l| sorted_ids(&l))
    }

    /// The end of the agent log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// The whole agent log (all runs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Size of the log so far (to read what a later run adds with [`Self::log_since`]).
    pub fn log_len(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0))
    }

    /// What the log holds after byte `offset`.
    pub fn log_since(&self, offset: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(text.get(offset..).unwrap_or_default()).into_owned()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // A running process prints its own log when dropped during a panic.
        if std::thread::panicking() && !self.run.is_started() {
            eprintln!("--- agent log ---\n{}", tail(&self.log));
        }
    }
}

impl std::ops::Deref for AgentProc {
    type Target = CurrentRun;
    fn deref(&self) -> &CurrentRun {
        &self.run
    }
}

impl std::ops::DerefMut for AgentProc {
    fn deref_mut(&mut self) -> &mut CurrentRun {
        &mut self.run
    }
}
