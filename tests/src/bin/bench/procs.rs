//! Real `tessera-server` and `tessera-agent` processes for the benchmark.
//!
//! The harness in `tests/src/lib.rs` finds the binaries relative to a *test* executable
//! (`target/<profile>/deps/`), which is one level deeper than this binary, so the bench
//! starts the processes itself, the same way, and talks to them in-process over their
//! sockets (admin gRPC, Workload API) instead of spawning CLI processes while timing.

use std::future::Future;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use common::proto::tessera::admin_client::AdminClient;
use common::proto::tessera::{
    CreateJoinTokenRequest, Entry, EntrySpec, GetBundleRequest, ListEntriesRequest,
};
use common::proto::workload::X509svidRequest;
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::{Bundle, TrustDomain};
use tokio::time::Instant;
use tonic::transport::Channel;

pub(crate) const TRUST_DOMAIN: &str = tests::TRUST_DOMAIN;

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Option<Child>,
    pub(crate) pid: i32,
    pub(crate) log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Self {
            pid: i32::try_from(child.id()).unwrap_or(i32::MAX),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let done = tests::wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten());
            if done.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of `pid` in bytes (VmRSS).
pub(crate) fn rss_bytes(pid: i32) -> anyhow::Result<u64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// Peak resident set size of `pid` in bytes (VmHWM).
pub(crate) fn hwm_bytes(pid: i32) -> anyhow::Result<u64> {
    status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

fn status_kb(pid: i32, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} missing in /proc/{pid}/status"))?;
    let kb = line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse::<u64>()?;
    Ok(kb)
}

/// User + system CPU time of `pid` in seconds (from `/proc/<pid>/stat`, USER_HZ = 100).
pub(crate) fn cpu_secs(pid: i32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let Some((_, rest)) = text.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    match (get(14), get(15)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// A running server.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) admin_socket: PathBuf,
    pub(crate) address: String,
    pub(crate) bundle_pem: PathBuf,
    /// Its relying-party listener (OIDC discovery, JWKS, CRLs, status lists).
    pub(crate) relying_party: Option<RelyingParty>,
}

/// Where a server serves relying parties, and the web PKI its listener uses.
#[derive(Debug)]
pub(crate) struct RelyingParty {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) pki: tests::web::WebPki,
}

impl Server {
    /// Starts a server under `dir` and waits until its admin API answers.
    pub(crate) async fn start(bin_dir: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin_dir, dir, &[]).await
    }

    /// As [`Self::start`], with `extra` `run` flags (e.g. `--datastore URL`).
    pub(crate) async fn start_with(
        bin_dir: &Path,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let port = tests::free_port();
        let admin_socket = dir.join("admin.sock");
        std::fs::create_dir_all(dir)?;
        let rp_addr = std::net::SocketAddr::from(([127, 0, 0, 1], tests::free_port()));
        let pki = tests::web::WebPki::generate(dir)?;
        let mut cmd = Command::new(bin_dir.join("tessera-server"));
        cmd.arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--data-dir")
            .arg(dir.join("server"))
            .arg("--admin-socket")
            .arg(&admin_socket)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--log-format", "json"])
            .args(pki.server_args(rp_addr, &format!("https://localhost:{}", rp_addr.port())))
            .env_remove("TESSERA_LOG");
        // Figure 5 measures how fast JWT-SVIDs can be minted, not the rate limits (whose
        // defaults would cap one workload at 20/s): lift them.
        for limit in [
            "--jwt-mint-rate-per-workload",
            "--jwt-mint-burst-per-workload",
            "--jwt-mint-rate-per-agent",
            "--jwt-mint-burst-per-agent",
        ] {
            cmd.args([limit, "1000000000"]);
        }
        cmd.args(extra);
        let mut proc = Proc::spawn(cmd, &dir.join("server.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let bundle = loop {
            if let Ok(mut c) = server::cli::connect_admin(&admin_socket, None).await
                && let Ok(b) = c.get_bundle(GetBundleRequest {}).await
            {
                break b.into_inner();
            }
            if !proc.alive() || Instant::now() > deadline {
                bail!("tessera-server did not start:\n{}", proc.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let bundle = Bundle::try_from(bundle).context("server bundle")?;
        let bundle_pem = dir.join("bundle.pem");
        std::fs::write(&bundle_pem, bundle.to_pem())?;
        Ok(Self {
            proc,
            admin_socket,
            address: format!("127.0.0.1:{port}"),
            bundle_pem,
            relying_party: Some(RelyingParty { addr: rp_addr, pki }),
        })
    }

    /// A fresh admin client (one HTTP/2 connection over the admin socket).
    pub(crate) async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        server::cli::connect_admin(&self.admin_socket, None).await
    }

    /// A fresh join token for `spiffe_id`.
    pub(crate) async fn token(&self, spiffe_id: &str) -> anyhow::Result<String> {
        let admin = self.admin().await?;
        let r = retry_internal("CreateJoinToken", || {
            let mut admin = admin.clone();
            async move {
                admin
                    .create_join_token(CreateJoinTokenRequest {
                        spiffe_id: spiffe_id.into(),
                        ttl_seconds: 0,
                    })
                    .await
            }
        })
        .await?;
        Ok(r.into_inner().token)
    }

    /// The server's trust bundle.
    pub(crate) async fn bundle(&self) -> anyhow::Result<Bundle> {
        let b = self
            .admin()
            .await?
            .get_bundle(GetBundleRequest {})
            .await?
            .into_inner();
        Ok(Bundle::try_from(b)?)
    }
}

/// A running agent.
#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) proc: Proc,
    pub(crate) socket: PathBuf,
    /// When the process was spawned.
    pub(crate) started: Instant,
}

impl Agent {
    /// Starts an agent under `dir` enrolled as `node_id` with a fresh join token, and waits
    /// for its Workload API socket.
    pub(crate) async fn start(
        bin_dir: &Path,
        dir: &Path,
        server: &Server,
        node_id: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::start_with(bin_dir, dir, server, node_id, env, &[]).await
    }

    /// As [`Self::start`], with `extra` `run` flags (e.g. `--workload-attestor unix`).
    pub(crate) async fn start_with(
        bin_dir: &Path,
        dir: &Path,
        server: &Server,
        node_id: &str,
        env: &[(String, String)],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let public = dir.join("public");
        std::fs::create_dir_all(&public)?;
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755))?;
        let socket = public.join("api.sock");
        let token = server.token(node_id).await?;
        let mut cmd = Command::new(bin_dir.join("tessera-agent"));
        cmd.arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .args(["--server-address", &server.address])
            .arg("--trust-bundle")
            .arg(&server.bundle_pem)
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .arg("--socket-path")
            .arg(&socket)
            .args(["--join-token", &token])
            .args(["--log-format", "json"])
            .args(extra)
            .env_remove("TESSERA_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)));
        let started = Instant::now();
        let mut proc = Proc::spawn(cmd, &dir.join("agent.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if !proc.alive() || Instant::now() > deadline {
                bail!("tessera-agent did not start:\n{}", proc.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            proc,
            socket,
            started,
        })
    }
}

/// A Workload API client on a new connection (connection set up included).
pub(crate) async fn workload_client(
    socket: &Path,
) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    Ok(agent::cli::connect(socket)
        .await?
        .max_decoding_message_size(1 << 30))
}

/// A request carrying the Workload API security header.
pub(crate) fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// Waits until the Workload API serves at least `n` X.509-SVIDs to this process.
pub(crate) async fn wait_svids(socket: &Path, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = workload_client(socket).await
            && let Ok(resp) = c.fetch_x509svid(with_header(X509svidRequest {})).await
            && let Ok(Ok(Some(m))) =
                tokio::time::timeout(Duration::from_secs(2), resp.into_inner().message()).await
            && m.svids.len() >= n
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent did not serve {n} X.509-SVIDs within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Server `Internal` errors the benchmark retried (a server defect, reported in the JSON).
static RETRIED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Calls `f` until it succeeds, retrying up to 5 times (10 ms doubling) when the server
/// answers `Internal`, e.g. "datastore failed" on a transient SQLite lock conflict. Every
/// retry is recorded and reported; other errors fail at once.
pub(crate) async fn retry_internal<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut wait = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s) if s.code() == tonic::Code::Internal && attempt < 5 => {
                if let Ok(mut r) = RETRIED.lock() {
                    r.push(format!("{what}: {}", s.message()));
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(s) => bail!(
                "{what}: {:?}: {} (after {attempt} retries)",
                s.code(),
                s.message()
            ),
        }
    }
}

/// CreateEntry, retried on `Internal`. A retried call may find that the failed attempt
/// did commit the entry (AlreadyExists): then the existing entry is looked up and returned.
pub(crate) async fn create_entry(
    admin: &AdminClient<Channel>,
    spec: EntrySpec,
) -> anyhow::Result<Entry> {
    let mut internal = false;
    let mut wait = Duration::from_millis(10);
    for attempt in 0..6 {
        match admin.clone().create_entry(spec.clone()).await {
            Ok(e) => return Ok(e.into_inner()),
            Err(s) if s.code() == tonic::Code::Internal && attempt < 5 => {
                internal = true;
                if let Ok(mut r) = RETRIED.lock() {
                    r.push(format!("CreateEntry: {}", s.message()));
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists && internal => {
                if let Ok(mut r) = RETRIED.lock() {
                    r.push(
                        "CreateEntry: an attempt answered Internal but had created the entry"
                            .to_owned(),
                    );
                }
                let list = admin
                    .clone()
                    .list_entries(ListEntriesRequest {
                        spiffe_id: spec.spiffe_id.clone(),
                        parent_id: spec.parent_id.clone(),
                        tenant: String::new(),
                    })
                    .await?
                    .into_inner();
                return list
                    .entries
                    .into_iter()
                    .next()
                    .context("entry reported as existing but not listed");
            }
            Err(s) => bail!("CreateEntry: {:?}: {}", s.code(), s.message()),
        }
    }
    bail!("CreateEntry kept failing")
}

/// The retries made so far.
pub(crate) fn retried() -> Vec<String> {
    RETRIED.lock().map(|r| r.clone()).unwrap_or_default()
}

/// An entry parented to `parent` for `spiffe_id`, matching this process's uid.
pub(crate) fn entry_spec(parent: &str, spiffe_id: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: vec![format!("unix:uid:{}", nix::unistd::getuid())],
        ..Default::default()
    }
}

/// Creates `n` entries (`make(i)`) with `concurrency` callers sharing one admin
/// connection; returns the entry ids in order and the wall time taken.
pub(crate) async fn create_entries(
    server: &Server,
    n: usize,
    concurrency: usize,
    make: impl Fn(usize) -> EntrySpec + Send + Sync + 'static,
) -> anyhow::Result<(Vec<String>, Duration)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let admin = server.admin().await?;
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let admin = admin.clone();
        let next = Arc::clone(&next);
        let make = Arc::clone(&make);
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let e = create_entry(&admin, make(i)).await?;
                out.push((i, e.id));
            }
        });
    }
    let mut ids = vec![String::new(); n];
    while let Some(r) = set.join_next().await {
        for (i, id) in r?? {
            ids[i] = id;
        }
    }
    Ok((ids, t0.elapsed()))
}

/// The trust domain of the benchmark clusters.
pub(crate) fn trust_domain() -> anyhow::Result<TrustDomain> {
    Ok(TrustDomain::new(TRUST_DOMAIN)?)
}
