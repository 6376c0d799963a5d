//! A server and one enrolled agent in one temp directory: the starting point of most suites.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Output;
use std::time::Duration;

use crate::AGENT_ID;
use crate::agent::AgentProc;
use crate::server::ServerProc;

/// How long an agent may take to attest after its socket listens.
const ATTEST_TIMEOUT: Duration = Duration::from_secs(30);

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
        Self::start_with(server_args, &[])
    }

    /// As [`Self::start`], with extra `run` flags for the agent too.
    pub fn start_with(server_args: &[&str], agent_args: &[&str]) -> Self {
        Self::start_with_agent(server_args, |a| a.with_args(agent_args))
    }

    /// As [`Self::start`], with the agent set up by `agent` (flags, an open-file limit).
    ///
    /// Returns once the server lists the agent as attested, so everything the test does
    /// afterwards happens after enrollment (and its audit record).
    pub fn start_with_agent(
        server_args: &[&str],
        agent: impl FnOnce(AgentProc) -> AgentProc,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Other users (the `nobody` child in tests) must reach the socket below.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let server = ServerProc::start(dir.path(), server_args);
        let token = server.token(AGENT_ID);
        let mut agent = agent(AgentProc::new(dir.path(), &server));
        agent.restart(Some(&token));
        server.wait_attested(AGENT_ID, ATTEST_TIMEOUT);
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
