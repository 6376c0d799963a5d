//! Resilience (issue 5): no workload outage through server loss, restarts and CA rotation.
//!
//! * The agent keeps serving cached, still-valid SVIDs while the server is gone for longer
//!   than an SVID's half-life, and resumes rotation by itself when the server returns.
//! * Two workloads keep doing fresh mutual-TLS handshakes (rustls, their SVIDs, the
//!   current bundle) across a forced CA rotation and a server restart.
//! * An agent restarted while the server is down serves its persisted cache.
//! * SIGTERM drains and removes sockets; stale socket files do not block the next start.
//! * `/live`, `/ready` and the `healthcheck` subcommands say what they claim.
//!
//! Timing parameters are derived from the product's rules, not guessed: an SVID of TTL
//! `t` is back-dated by `min(t/10, 10 s)` and renewed at 40–50 % of its lifetime, and the
//! agent reconnects with a jittered backoff of 0.5 s doubling to 30 s. An outage is only
//! survivable if the agent reconnects before the SVID it holds expires, so the TTLs below
//! leave several seconds of margin over the worst-case reconnect time.
//!
//! Processes whose PID or exit status matters are spawned here ([`Daemon`]) rather than
//! through the harness, which hides both.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::proto::workload::X509svidRequest;
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::tls::{SpiffeClientVerifier, SpiffeServerVerifier};
use common::{Bundle, BundleCell, SpiffeId};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde_json::Value;
use spiffe::{TrustDomain, X509Source};
use tests::{AGENT_ID, ServerProc, TRUST_DOMAIN, bin, free_port, wait_for};
use tokio::time::Instant;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer as _, X509Certificate};

const CLIENT_ID: &str = "spiffe://example.org/client";
const SERVER_ID: &str = "spiffe://example.org/server";
/// The agent's reconnect backoff is capped at 30 s (agent/src/rotation.rs BACKOFF_MAX).
const RECOVERY_BOUND: Duration = Duration::from_secs(35);
/// The product's drain deadline after SIGTERM (server and agent app.rs).
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Processes owned by the test (PID and exit status visible).
// ---------------------------------------------------------------------------------------

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A daemon process spawned by the test; killed on drop (its log printed on failure).
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name,
            child: Some(child),
            log: log.to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `Some(exit code)` once the process has exited.
    fn exited(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGTERM, then waits (up to 30 s) for the exit; returns the exit code and how long
    /// the process took to exit.
    fn terminate(&mut self) -> (i32, Duration) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let sent = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten());
        let took = sent.elapsed();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} ignored SIGTERM for 30 s:\n{}",
                self.name,
                tail(&self.log, 60)
            );
        };
        (status.code().unwrap_or(-1), took)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                eprintln!("--- {} log ---\n{}", self.name, tail(&self.log, 60));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `tessera-agent` with a health address, started and stopped by the test.
#[derive(Debug)]
struct Agent {
    data_dir: PathBuf,
    socket_path: PathBuf,
    bundle_path: PathBuf,
    server_address: String,
    health: SocketAddr,
    log: PathBuf,
    proc: Option<Daemon>,
}

impl Agent {
    /// The files of a fresh agent in `dir`, bootstrapped with `bundle_pem`.
    fn new(dir: &Path, server_address: &str, bundle_pem: &[u8]) -> Self {
        let public = dir.join("public");
        std::fs::create_dir_all(&public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bundle_path = dir.join("bootstrap-bundle.pem");
        std::fs::write(&bundle_path, bundle_pem).unwrap();
        Self {
            data_dir: dir.join("agent"),
            socket_path: public.join("api.sock"),
            bundle_path,
            server_address: server_address.to_owned(),
            health: SocketAddr::from(([127, 0, 0, 1], free_port())),
            log: dir.join("agent.log"),
            proc: None,
        }
    }

    fn for_server(dir: &Path, server: &ServerProc) -> Self {
        let out = server.cli(&["bundle", "show"]);
        assert!(out.status.success(), "bundle show: {out:?}");
        Self::new(dir, &server.address(), &out.stdout)
    }

    /// Spawns `tessera-agent run` and waits until its Workload API answers (which it does
    /// before attestation: the socket is bound first).
    fn start(&mut self, join_token: Option<&str>) {
        assert!(self.proc.is_none(), "agent already running");
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
            .args(["--health-address", &self.health.to_string()])
            .env("TESSERA_LOG", "info,agent=debug");
        if let Some(t) = join_token {
            cmd.args(["--join-token", t]);
        }
        let mut d = Daemon::spawn("tessera-agent", cmd, &self.log);
        let up = wait_for(Duration::from_secs(30), || {
            if let Some(code) = d.exited() {
                panic!(
                    "agent exited with {code} at start:\n{}",
                    tail(&self.log, 60)
                );
            }
            self.healthcheck().then_some(())
        });
        assert!(
            up.is_some(),
            "agent Workload API did not answer within 30 s:\n{}",
            tail(&self.log, 60)
        );
        self.proc = Some(d);
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.proc.as_mut().expect("agent running")
    }

    /// SIGTERM; returns exit code and time to exit.
    fn stop(&mut self) -> (i32, Duration) {
        let r = self.daemon().terminate();
        self.proc = None;
        r
    }

    fn healthcheck(&self) -> bool {
        Command::new(bin("tessera-agent"))
            .arg("healthcheck")
            .arg("--socket-path")
            .arg(&self.socket_path)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .unwrap()
            .status
            .success()
    }

    fn fetch(&self) -> Result<Vec<Fetched>, String> {
        fetch_x509(&self.socket_path, 5)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 60)
    }
}

/// A `tessera-server` run by the test itself (for its exit status).
#[derive(Debug)]
struct OwnServer {
    data_dir: PathBuf,
    admin_socket: PathBuf,
    port: u16,
    log: PathBuf,
    proc: Option<Daemon>,
}

impl OwnServer {
    fn new(dir: &Path) -> Self {
        Self {
            data_dir: dir.join("server"),
            admin_socket: dir.join("admin").join("admin.sock"),
            port: free_port(),
            log: dir.join("server.log"),
            proc: None,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        assert!(self.proc.is_none(), "server already running");
        let mut cmd = Command::new(bin("tessera-server"));
        cmd.arg("run")
            .args(["--trust-domain", TRUST_DOMAIN])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["--bind", &self.address()])
            .env("TESSERA_LOG", "info");
        let mut d = Daemon::spawn("tessera-server", cmd, &self.log);
        let up = wait_for(Duration::from_secs(30), || {
            if let Some(code) = d.exited() {
                panic!(
                    "server exited with {code} at start:\n{}",
                    tail(&self.log, 60)
                );
            }
            self.admin(&["healthcheck"]).status.success().then_some(())
        });
        assert!(
            up.is_some(),
            "server not healthy within 30 s:\n{}",
            tail(&self.log, 60)
        );
        self.proc = Some(d);
    }

    fn stop(&mut self) -> (i32, Duration) {
        let r = self.proc.as_mut().expect("server running").terminate();
        self.proc = None;
        r
    }

    fn admin(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera-server"))
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .output()
            .unwrap()
    }

    fn admin_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.admin(&all);
        assert!(
            out.status.success(),
            "tessera-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------

/// One SVID as printed by `tessera-agent api fetch x509 --output json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetched {
    spiffe_id: String,
    serial: String,
    not_before: u64,
    not_after: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Unix time with sub-second precision (certificate times have 1 s resolution).
fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn fetch_x509(socket: &Path, timeout_secs: u64) -> Result<Vec<Fetched>, String> {
    let out = Command::new(bin("tessera-agent"))
        .args(["api", "fetch", "x509", "--output", "json", "--timeout"])
        .arg(timeout_secs.to_string())
        .arg("--socket-path")
        .arg(socket)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let list = v["svids"].as_array().ok_or("no svids array")?;
    Ok(list
        .iter()
        .map(|s| Fetched {
            spiffe_id: s["spiffe_id"].as_str().unwrap_or_default().to_owned(),
            serial: s["serial"].as_str().unwrap_or_default().to_owned(),
            not_before: s["not_before"].as_u64().unwrap_or(0),
            not_after: s["not_after"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// The single SVID `spiffe_id` from a fetch result.
fn only(r: Result<Vec<Fetched>, String>, spiffe_id: &str) -> Result<Fetched, String> {
    let list = r?;
    match list.as_slice() {
        [one] if one.spiffe_id == spiffe_id => Ok(one.clone()),
        _ => Err(format!("expected exactly {spiffe_id}, got {list:?}")),
    }
}

fn ids(list: &[Fetched]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|f| f.spiffe_id.clone()).collect();
    v.sort();
    v
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `GET path` over HTTP/1.1; returns status code and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).ok().map(|(s, _)| s)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Server flags: ServerProc args plus a health address.
fn health_flags(port: u16) -> [String; 2] {
    ["--health-address".into(), format!("127.0.0.1:{port}")]
}

// ---------------------------------------------------------------------------------------
// 1. Server outage longer than an SVID's half-life.
// ---------------------------------------------------------------------------------------

#[test]
fn server_outage_longer_than_half_life() {
    // The outage starts right after the SVID was issued and lasts past its refresh point
    // (40–50 % of its lifetime). After the restart the agent reconnects at its next
    // backoff step, which after an outage of D can be up to ~2D later (jittered doubling)
    // but never more than 30 s (the cap). A short TTL is therefore NOT survivable in the
    // worst case: measured with a 20 s TTL and a 10 s outage, the agent reconnected 11.2 s
    // after the restart, with 0 s left on the old SVID. With an 80 s TTL: refresh due by
    // ~36 s after issuance, outage ~37 s, reconnect at worst ~37 + 30 s, expiry at 80 s.
    // The agent SVID (300 s) is not due during the test, so only workload SVIDs are at
    // stake (an expired agent SVID would need a new join token).
    let id = "spiffe://example.org/outage";
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(
        dir.path(),
        &[
            "--default-x509-svid-ttl",
            "80s",
            "--agent-svid-ttl",
            "300s",
            "--ca-ttl",
            "1h",
        ],
    );
    server.create_entry(id, &["unix:uid:0"], &[]);
    let mut agent = Agent::for_server(&dir.path().join("a"), &server);
    agent.start(Some(&server.token(AGENT_ID)));
    let pid = agent.daemon().pid();

    // The first SVID is issued right after enrollment: stop the server as soon as it is
    // served, so the outage covers the SVID's refresh point with its expiry far ahead.
    let svid = wait_for(Duration::from_secs(30), || only(agent.fetch(), id).ok())
        .unwrap_or_else(|| panic!("no SVID within 30 s:\n{}", agent.log_tail()));
    server.stop();
    let stopped = Instant::now();
    let stopped_unix = unix_now_f64();
    let lifetime = svid.not_after - svid.not_before;
    let refresh_latest = svid.not_before as f64 + lifetime as f64 / 2.0;
    println!(
        "outage: server stopped {:.1} s after notBefore of serial {} (lifetime {lifetime} s, refresh due by {:.1} s, expiry {} s after notBefore)",
        stopped_unix - svid.not_before as f64,
        svid.serial,
        refresh_latest - svid.not_before as f64,
        lifetime
    );
    let outage =
        Duration::from_secs(10).max(Duration::from_secs_f64(refresh_latest + 1.0 - stopped_unix));
    assert!(
        stopped_unix + outage.as_secs_f64() + RECOVERY_BOUND.as_secs_f64() + 2.0
            < svid.not_after as f64,
        "test parameters: outage plus worst-case reconnect must end before the SVID expires"
    );

    let mut outage_fetches = 0;
    let mut failures = Vec::new();
    while stopped.elapsed() < outage {
        match only(agent.fetch(), id) {
            Ok(f) if f.serial != svid.serial => failures.push(format!(
                "{:?}: serial changed without a server: {f:?}",
                stopped.elapsed()
            )),
            Ok(f) if f.not_after <= unix_now() => failures.push(format!(
                "{:?}: expired SVID served: {f:?}",
                stopped.elapsed()
            )),
            Ok(_) => {}
            Err(e) => failures.push(format!("{:?}: {e}", stopped.elapsed())),
        }
        outage_fetches += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let outage_len = stopped.elapsed();
    assert!(
        unix_now_f64() > refresh_latest,
        "the outage must outlast the refresh point"
    );
    assert!(
        failures.is_empty(),
        "fetches failed during the outage: {failures:#?}"
    );
    assert!(outage_fetches >= 10, "only {outage_fetches} fetches");
    println!(
        "outage: {outage_fetches} fetches over {:.1} s without the server, all served serial {} (past its refresh point by {:.1} s)",
        outage_len.as_secs_f64(),
        svid.serial,
        unix_now_f64() - refresh_latest
    );

    server.restart();
    let restarted = Instant::now();
    let mut recovery_fetches = 0;
    let renewed = loop {
        match only(agent.fetch(), id) {
            Ok(f) if f.not_after <= unix_now() => {
                failures.push(format!("after restart: expired SVID served: {f:?}"))
            }
            Ok(f) if f.serial != svid.serial => break Some(f),
            Ok(_) => {}
            Err(e) => failures.push(format!("after restart {:?}: {e}", restarted.elapsed())),
        }
        recovery_fetches += 1;
        if restarted.elapsed() > RECOVERY_BOUND {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let recovery = restarted.elapsed();
    let renewed = renewed.unwrap_or_else(|| {
        panic!(
            "no new SVID within {RECOVERY_BOUND:?} of the restart:\n{}",
            agent.log_tail()
        )
    });
    assert!(
        failures.is_empty(),
        "fetches failed after the restart: {failures:#?}"
    );
    assert!(
        renewed.not_after > svid.not_after,
        "{renewed:?} vs {svid:?}"
    );
    // The same agent process did it: never restarted, never exited.
    assert_eq!(agent.daemon().pid(), pid);
    assert_eq!(agent.daemon().exited(), None, "the agent exited");
    assert_eq!(count(&agent.log_text(), "starting tessera-agent"), 1);
    println!(
        "outage: rotation resumed {:.1} s after the restart (serial {} -> {}, {recovery_fetches} fetches, all ok); agent pid {pid} throughout; old SVID had {} s left",
        recovery.as_secs_f64(),
        svid.serial,
        renewed.serial,
        svid.not_after.saturating_sub(unix_now())
    );
}

// ---------------------------------------------------------------------------------------
// 2. Mutual TLS between two workloads across CA rotation and server restart.
// ---------------------------------------------------------------------------------------

/// rustls's server-side verifier with client authentication *required*: the product's
/// verifier (which only offers it, for join-token first contact) with the mandatory bit.
#[derive(Debug)]
struct RequireClientSvid(Arc<SpiffeClientVerifier>);

impl ClientCertVerifier for RequireClientSvid {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What one handshake used.
#[derive(Debug, Clone)]
struct Handshake {
    client_serial: String,
    server_serial: String,
    /// Authority key ids of the two leaves: which CA signed each.
    client_ca: String,
    server_ca: String,
    roots: usize,
    /// Seconds until the sooner of the two leaves expires, at the handshake.
    margin: f64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// notAfter of a leaf, Unix seconds.
fn not_after_of(der: &[u8]) -> i64 {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.validity().not_after.timestamp()
}

/// Serial and authority key id of a leaf.
fn serial_and_aki(der: &[u8]) -> (String, String) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
        .unwrap_or_default();
    (hex(cert.raw_serial()), aki)
}

fn chain_and_key(
    svid: &spiffe::X509Svid,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    (chain, key)
}

fn read_line<R: std::io::Read>(r: R) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::BufReader::new(r).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Negative controls proving the handshake really authenticates both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Both workloads as they are.
    Genuine,
    /// The client requires a different server SPIFFE ID.
    WrongServerId,
    /// Both sides trust an unrelated CA instead of the bundle.
    UnrelatedBundle,
    /// The client presents no certificate.
    NoClientCert,
}

fn unrelated_ca() -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.self_signed(&key).unwrap().der().clone()
}

/// One fresh TLS 1.3 mutual-TLS connection over loopback TCP between a "server" workload
/// and a "client" workload, with configs built now from the source's current SVIDs and
/// bundle, and one request/response exchanged.
fn mtls_handshake(source: &X509Source, n: usize, control: Control) -> Result<Handshake, String> {
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let ctx = source
        .x509_context()
        .map_err(|e| format!("no context: {e}"))?;
    let pick = |id: &str| {
        ctx.svids()
            .iter()
            .find(|s| s.spiffe_id().to_string() == id)
            .cloned()
            .ok_or_else(|| format!("no SVID for {id} in the context"))
    };
    let (client_svid, server_svid) = (pick(CLIENT_ID)?, pick(SERVER_ID)?);
    let roots: Vec<CertificateDer<'static>> = ctx
        .bundle_set()
        .get(&td)
        .ok_or("no bundle for the trust domain")?
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let n_roots = roots.len();
    let roots = if control == Control::UnrelatedBundle {
        vec![unrelated_ca()]
    } else {
        roots
    };
    let expected_server = if control == Control::WrongServerId {
        CLIENT_ID
    } else {
        SERVER_ID
    };
    let bundle = BundleCell::new(Bundle::new(
        common::TrustDomain::new(TRUST_DOMAIN).unwrap(),
        roots,
        0,
        0,
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (server_chain, server_key) = chain_and_key(&server_svid);
    let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(RequireClientSvid(SpiffeClientVerifier::new(
            bundle.clone(),
        ))))
        .with_single_cert(server_chain, server_key)
        .map_err(|e| format!("server config: {e}"))?;
    let (client_chain, client_key) = chain_and_key(&client_svid);
    let client_builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(
            bundle,
            SpiffeId::new(expected_server).unwrap(),
        ));
    let client_cfg = if control == Control::NoClientCert {
        client_builder.with_no_client_auth()
    } else {
        client_builder
            .with_client_auth_cert(client_chain, client_key)
            .map_err(|e| format!("client config: {e}"))?
    };

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<String, String> {
        let tcp = wait_for(Duration::from_secs(10), || {
            listener.accept().ok().map(|(s, _)| s)
        })
        .ok_or("server side: no connection")?;
        tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(Arc::new(server_cfg))
            .map_err(|e| format!("server side: {e}"))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = read_line(&mut tls).map_err(|e| format!("server side: {e}"))?;
        if tls.conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Err(format!(
                "server side: negotiated {:?}",
                tls.conn.protocol_version()
            ));
        }
        let peer = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("server side: no client certificate")?;
        let peer_id = common::svid::parse_leaf(peer)
            .map_err(|e| format!("server side: {e}"))?
            .spiffe_id
            .to_string();
        tls.write_all(format!("{request} -> pong from {SERVER_ID} to {peer_id}\n").as_bytes())
            .map_err(|e| format!("server side: {e}"))?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| format!("server side: {e}"))?;
        Ok(peer_id)
    });

    let client_side = || -> Result<String, String> {
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from("workload.test").unwrap(),
        )
        .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(format!("ping {n}\n").as_bytes())
            .map_err(|e| format!("client side: {e}"))?;
        tls.flush().map_err(|e| format!("client side: {e}"))?;
        read_line(&mut tls).map_err(|e| format!("client side: {e}"))
    };
    let reply = client_side();
    let peer_id = server
        .join()
        .map_err(|_| "server thread panicked".to_owned())?;
    let reply = reply?;
    let peer_id = peer_id?;
    let expected = format!("ping {n} -> pong from {SERVER_ID} to {CLIENT_ID}");
    if reply != expected || peer_id != CLIENT_ID {
        return Err(format!("unexpected exchange: {reply:?} (peer {peer_id})"));
    }
    let (client_serial, client_ca) = serial_and_aki(client_svid.leaf().as_bytes());
    let (server_serial, server_ca) = serial_and_aki(server_svid.leaf().as_bytes());
    let expiry = not_after_of(client_svid.leaf().as_bytes())
        .min(not_after_of(server_svid.leaf().as_bytes()));
    Ok(Handshake {
        client_serial,
        server_serial,
        client_ca,
        server_ca,
        roots: n_roots,
        margin: expiry as f64 - unix_now_f64(),
    })
}

type Attempts = Arc<Mutex<Vec<(Duration, Result<Handshake, String>)>>>;

#[test]
fn mtls_survives_ca_rotation_and_server_restart() {
    // SVID TTL 40 s: renewed every ~14–18 s, so SVIDs rotate during the test; at the
    // server stop the SVIDs held have >= 22 s left, more than the 4 s outage plus the
    // agent's worst-case reconnect (the backoff step after ~4 s can reach ~12.5 s after the
    // stop). With a 10 s TTL only ~5.5 s would be left at worst, which that backoff can
    // exceed: the SVIDs would expire before the agent reconnects (by design, not a bug).
    let mut c = tests::Cluster::start(&["--default-x509-svid-ttl", "40s"]);
    c.server.create_entry(CLIENT_ID, &["unix:uid:0"], &[]);
    c.server.create_entry(SERVER_ID, &["unix:uid:0"], &[]);
    let rt = runtime();
    let source = rt
        .block_on(X509Source::builder().endpoint(c.agent.endpoint()).build())
        .expect("X509Source builds");
    let both = wait_for(Duration::from_secs(30), || {
        let ctx = source.x509_context().ok()?;
        let mut got: Vec<String> = ctx
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        got.sort();
        (got == [CLIENT_ID, SERVER_ID]).then_some(())
    });
    assert!(both.is_some(), "both SVIDs in the source within 30 s");
    // The handshake can fail: each missing or wrong credential makes it fail.
    for control in [
        Control::WrongServerId,
        Control::UnrelatedBundle,
        Control::NoClientCert,
    ] {
        match mtls_handshake(&source, 0, control) {
            Ok(h) => panic!("{control:?}: handshake succeeded: {h:?}"),
            Err(e) => println!("mtls: control {control:?} fails as it must: {e}"),
        }
    }

    let attempts: Attempts = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let worker = {
        let (attempts, stop, source) = (Arc::clone(&attempts), Arc::clone(&stop), source.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let at = start.elapsed();
                let r = mtls_handshake(&source, n, Control::Genuine);
                if let Err(e) = &r {
                    println!(
                        "mtls: handshake {n} at {:.1} s FAILED: {e}",
                        at.as_secs_f64()
                    );
                }
                attempts.lock().unwrap().push((at, r));
                n += 1;
                let next = start + Duration::from_secs(u64::try_from(n).unwrap());
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let sleep_until = |t: u64| {
        std::thread::sleep(
            (start + Duration::from_secs(t)).saturating_duration_since(Instant::now()),
        );
    };
    let active = |v: &Value| -> String {
        v["cas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ca| ca["phase"] == "active")
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    sleep_until(8);
    let ca_before = active(&c.server.cli_json(&["ca", "show"]));
    let ca_after = active(&c.server.cli_json(&["ca", "rotate"]));
    let rotated_at = start.elapsed();
    assert_ne!(ca_before, ca_after, "forced rotation activates a fresh CA");
    sleep_until(16);
    let stop_at = start.elapsed();
    c.server.stop();
    sleep_until(20);
    c.server.restart();
    let restarted_at = start.elapsed();
    // Serials the agent had when the server came back: it could sign nothing while down.
    let mut before_restart: std::collections::BTreeSet<String> = source
        .x509_context()
        .unwrap()
        .svids()
        .iter()
        .map(|s| serial_and_aki(s.leaf().as_bytes()).0)
        .collect();
    for (_, r) in attempts.lock().unwrap().iter() {
        if let Ok(h) = r {
            before_restart.insert(h.client_serial.clone());
            before_restart.insert(h.server_serial.clone());
        }
    }
    // Run to >= 30 s and until both workloads handshake with SVIDs the restarted server
    // issued (the agent recovered by itself; rotation continues).
    let fresh_after_restart = |a: &Attempts| {
        let ok: Vec<(Duration, Handshake)> = a
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, r)| r.as_ref().ok().map(|h| (*at, h.clone())))
            .collect();
        fresh_after_restart_ok(&ok, restarted_at, &before_restart)
    };
    let deadline = restarted_at + Duration::from_secs(50);
    while start.elapsed() < Duration::from_secs(30) || !fresh_after_restart(&attempts) {
        if start.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    let attempts = attempts.lock().unwrap().clone();

    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|(at, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{:.1} s: {e}", at.as_secs_f64()))
        })
        .collect();
    let ok: Vec<(Duration, Handshake)> = attempts
        .iter()
        .filter_map(|(at, r)| r.as_ref().ok().map(|h| (*at, h.clone())))
        .collect();
    let max_gap = attempts
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let during_outage = ok
        .iter()
        .filter(|(at, _)| *at > stop_at && *at < restarted_at)
        .count();
    let cas: std::collections::BTreeSet<&str> = ok
        .iter()
        .flat_map(|(_, h)| [h.client_ca.as_str(), h.server_ca.as_str()])
        .collect();
    let serials: std::collections::BTreeSet<&str> = ok
        .iter()
        .flat_map(|(_, h)| [h.client_serial.as_str(), h.server_serial.as_str()])
        .collect();
    let mixed = ok
        .iter()
        .filter(|(_, h)| h.client_ca != h.server_ca)
        .count();
    let max_roots = ok.iter().map(|(_, h)| h.roots).max().unwrap_or(0);
    let min_margin = ok
        .iter()
        .map(|(_, h)| h.margin)
        .fold(f64::INFINITY, f64::min);
    println!(
        "mtls: {} handshakes over {:.1} s, {} failed; max gap {:.1} s; ca rotate at {:.1} s, server stopped {:.1}..{:.1} s ({} handshakes while down); {} distinct SVID serials, {} signing CAs, {} handshakes with leaves from different CAs, up to {} roots in the bundle; closest to expiry: {:.1} s left",
        attempts.len(),
        start.elapsed().as_secs_f64(),
        failed.len(),
        max_gap.as_secs_f64(),
        rotated_at.as_secs_f64(),
        stop_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        during_outage,
        serials.len(),
        cas.len(),
        mixed,
        max_roots,
        min_margin
    );
    assert!(failed.is_empty(), "failed handshakes: {failed:#?}");
    assert!(attempts.len() >= 25, "only {} handshakes", attempts.len());
    assert!(
        max_gap <= Duration::from_secs(3),
        "handshakes stalled for {max_gap:?}"
    );
    assert!(
        during_outage >= 2,
        "handshakes continued while the server was down"
    );
    assert!(
        max_roots >= 2,
        "the rotated bundle (old + new CA) reached the workloads"
    );
    assert!(
        cas.len() >= 2,
        "SVIDs from the new CA were used after the forced rotation: {cas:?}"
    );
    assert!(
        fresh_after_restart_ok(&ok, restarted_at, &before_restart),
        "no handshake with SVIDs issued after the server restart within 50 s:\n{}",
        c.agent.log_tail()
    );
    let last = &ok.last().unwrap().1;
    assert_eq!(
        last.client_ca, last.server_ca,
        "at the end both SVIDs come from the one active CA"
    );
}

fn fresh_after_restart_ok(
    ok: &[(Duration, Handshake)],
    restarted_at: Duration,
    before: &std::collections::BTreeSet<String>,
) -> bool {
    ok.iter().any(|(at, h)| {
        *at > restarted_at
            && !before.contains(&h.client_serial)
            && !before.contains(&h.server_serial)
    })
}

// ---------------------------------------------------------------------------------------
// 3. Agent restart while the server is down.
// ---------------------------------------------------------------------------------------

#[test]
fn agent_restart_with_server_down_serves_persisted_svids() {
    let id = "spiffe://example.org/persisted";
    let late = "spiffe://example.org/late";
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &[]);
    server.create_entry(id, &["unix:uid:0"], &[]);
    let mut agent = Agent::for_server(&dir.path().join("a"), &server);
    agent.start(Some(&server.token(AGENT_ID)));
    let before = wait_for(Duration::from_secs(30), || only(agent.fetch(), id).ok())
        .unwrap_or_else(|| panic!("no SVID within 30 s:\n{}", agent.log_tail()));

    let (code, took) = agent.stop();
    assert_eq!(
        code,
        0,
        "agent exit code after SIGTERM:\n{}",
        agent.log_tail()
    );
    server.stop();
    let cache = agent.data_dir.join("cache.pb");
    assert!(cache.exists(), "{} was not written", cache.display());
    assert_eq!(mode(&cache), 0o600, "cache.pb holds private keys");
    let size = std::fs::metadata(&cache).unwrap().len();
    println!(
        "persisted: agent stopped in {took:?}; cache.pb {size} bytes, mode {:o}",
        mode(&cache)
    );

    // No join token, no server: the persisted cache is all the agent has.
    let spawned = Instant::now();
    agent.start(None);
    let served = only(agent.fetch(), id)
        .unwrap_or_else(|e| panic!("restarted agent does not serve: {e}\n{}", agent.log_tail()));
    let first_fetch = spawned.elapsed();
    assert_eq!(served, before, "the same SVID, from the persisted cache");
    assert!(served.not_after > unix_now());
    // Ready: it can serve (persisted cache loaded), though it has not reached the server.
    let ready = http_get(agent.health, "/ready");
    assert!(
        matches!(&ready, Ok((200, _))),
        "agent /ready with a loaded cache: {ready:?}"
    );
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let again = only(agent.fetch(), id);
        assert_eq!(again.as_ref(), Ok(&before), "served from the cache");
    }
    let log = agent.log_text();
    assert!(
        log.contains("serving the persisted cache"),
        "{}",
        agent.log_tail()
    );
    println!(
        "persisted: restarted agent served serial {} {:.2} s after spawn with the server down",
        served.serial,
        first_fetch.as_secs_f64()
    );

    server.restart();
    let restarted = Instant::now();
    server.create_entry(late, &["unix:uid:0"], &[]);
    let both = wait_for(RECOVERY_BOUND, || {
        agent
            .fetch()
            .ok()
            .filter(|l| ids(l) == [late.to_owned(), id.to_owned()])
    });
    let recovery = restarted.elapsed();
    let both = both.unwrap_or_else(|| {
        panic!(
            "the entry created after the restart did not reach the agent within {RECOVERY_BOUND:?}:\n{}",
            agent.log_tail()
        )
    });
    let kept = both.iter().find(|f| f.spiffe_id == id).unwrap();
    assert_eq!(
        kept.serial, before.serial,
        "the persisted SVID is kept, not reissued"
    );
    println!(
        "persisted: agent synced and served the new entry {:.1} s after the server restart",
        recovery.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 4. Graceful shutdown, socket removal, stale sockets.
// ---------------------------------------------------------------------------------------

/// Tessera's generated Workload API client on a Unix socket.
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(socket).await)
}

/// Leaves a socket file nobody listens on, as a crash does.
fn make_stale_socket(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    assert!(path.exists(), "stale socket file stays");
    assert!(
        std::os::unix::net::UnixStream::connect(path).is_err(),
        "nobody answers on a stale socket"
    );
}

#[test]
fn graceful_shutdown_removes_sockets_and_stale_sockets_do_not_block() {
    let id = "spiffe://example.org/graceful";
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnServer::new(dir.path());
    server.start();
    server.admin_json(&[
        "entry",
        "create",
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        id,
        "--selector",
        "unix:uid:0",
    ]);
    let token = server.admin_json(&["token", "generate", "--spiffe-id", AGENT_ID])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = server.admin(&["bundle", "show"]).stdout;
    let mut agent = Agent::new(&dir.path().join("a"), &server.address(), &bundle);
    agent.start(Some(&token));
    let first = wait_for(Duration::from_secs(30), || only(agent.fetch(), id).ok())
        .unwrap_or_else(|| panic!("no SVID within 30 s:\n{}", agent.log_tail()));

    // A live socket is not stale: a second agent on it is refused, the first keeps serving.
    let intruder_log = dir.path().join("intruder.log");
    let mut cmd = Command::new(bin("tessera-agent"));
    cmd.arg("run")
        .args(["--trust-domain", TRUST_DOMAIN])
        .args(["--server-address", &server.address()])
        .arg("--trust-bundle")
        .arg(&agent.bundle_path)
        .arg("--data-dir")
        .arg(dir.path().join("intruder"))
        .arg("--socket-path")
        .arg(&agent.socket_path)
        .args(["--join-token", "unused"]);
    let mut intruder = Daemon::spawn("second tessera-agent", cmd, &intruder_log);
    let code = wait_for(Duration::from_secs(20), || intruder.exited())
        .expect("a second agent on a live socket exits by itself");
    let ilog = std::fs::read_to_string(&intruder_log).unwrap();
    assert_ne!(code, 0, "{ilog}");
    assert!(ilog.contains("already serving"), "{ilog}");
    assert_eq!(
        only(agent.fetch(), id).as_ref(),
        Ok(&first),
        "first agent unharmed"
    );

    // The server with an agent's sync stream open.
    let (code, took) = server.stop();
    println!("shutdown: server exited {code} {took:?} after SIGTERM (agent connected)");
    assert_eq!(code, 0, "server exit code after SIGTERM");
    assert!(took < DRAIN_DEADLINE, "server drained in {took:?}");
    assert!(!server.admin_socket.exists(), "admin socket removed");
    let slog = server.log_text();
    assert!(!slog.contains("shutdown deadline passed"), "{slog}");
    assert_eq!(only(agent.fetch(), id), Ok(first), "agent still serves");

    // An agent still retrying attestation (server down) stops promptly too.
    let mut waiting = Agent::new(&dir.path().join("w"), &server.address(), &bundle);
    waiting.start(Some("never-used-token"));
    let retrying = wait_for(Duration::from_secs(20), || {
        waiting
            .log_text()
            .contains("node attestation failed; retrying")
            .then_some(())
    });
    assert!(retrying.is_some(), "{}", waiting.log_tail());
    let (code, took) = waiting.stop();
    println!("shutdown: agent retrying attestation exited {code} {took:?} after SIGTERM");
    assert_eq!(code, 0, "{}", waiting.log_tail());
    assert!(took < DRAIN_DEADLINE);
    assert!(!waiting.socket_path.exists(), "socket removed");

    // The agent with a Workload API stream open.
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    let (times, ended_at) = std::sync::mpsc::channel();
    let socket = agent.socket_path.clone();
    rt.spawn(async move {
        let mut client = raw_client(&socket).await;
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(req).await.unwrap().into_inner();
        let first = stream.message().await;
        let _ = tx.send(format!(
            "first: {:?}",
            first.map(|m| m.map(|m| m.svids.len()))
        ));
        let end = stream.message().await;
        let ended_at = Instant::now();
        let _ = tx.send(match end {
            Ok(None) => "end of stream".to_owned(),
            Ok(Some(m)) => format!("unexpected message with {} SVIDs", m.svids.len()),
            Err(s) => format!("error {:?}: {}", s.code(), s.message()),
        });
        let _ = times.send(ended_at);
    });
    let opened = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(opened, "first: Ok(Some(1))");
    let sigterm = Instant::now();
    let (code, took) = agent.stop();
    let ended = rx.recv_timeout(Duration::from_secs(5));
    let stream_end = ended_at
        .recv_timeout(Duration::from_secs(1))
        .map(|t| t.saturating_duration_since(sigterm));
    println!(
        "shutdown: agent exited {code} {took:?} after SIGTERM; open stream: {ended:?} after {stream_end:?}"
    );
    assert_eq!(code, 0, "agent exit code:\n{}", agent.log_tail());
    assert!(took < DRAIN_DEADLINE, "agent drained in {took:?}");
    let ended = ended.expect("the open FetchX509SVID stream ended with the agent");
    assert!(
        ended == "end of stream" || ended.starts_with("error"),
        "{ended}"
    );
    assert!(
        stream_end.is_ok_and(|d| d < DRAIN_DEADLINE),
        "stream ended {stream_end:?} after SIGTERM"
    );
    assert!(!agent.socket_path.exists(), "Workload API socket removed");
    let alog = agent.log_text();
    assert!(
        !alog.contains("did not drain before the deadline"),
        "{alog}"
    );
    assert!(alog.contains("stopped"), "{alog}");
    drop(rt);

    // A crash leaves socket files behind: the next start replaces them.
    make_stale_socket(&server.admin_socket);
    make_stale_socket(&agent.socket_path);
    server.start();
    let entries = server.admin_json(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().unwrap().len(), 1, "{entries}");
    agent.start(None);
    let again =
        wait_for(Duration::from_secs(30), || only(agent.fetch(), id).ok()).unwrap_or_else(|| {
            panic!(
                "agent does not serve after a stale socket:\n{}",
                agent.log_tail()
            )
        });
    assert_eq!(again.spiffe_id, id);
    assert!(std::os::unix::net::UnixStream::connect(&agent.socket_path).is_ok());
    assert!(std::os::unix::net::UnixStream::connect(&server.admin_socket).is_ok());

    // And both stop cleanly again.
    let (acode, atook) = agent.stop();
    let (scode, stook) = server.stop();
    println!("shutdown: second round: agent {acode} in {atook:?}, server {scode} in {stook:?}");
    assert_eq!(acode, 0);
    assert_eq!(scode, 0, "server exit code after SIGTERM");
    assert!(atook < DRAIN_DEADLINE && stook < DRAIN_DEADLINE);
    assert!(!agent.socket_path.exists() && !server.admin_socket.exists());
}

// ---------------------------------------------------------------------------------------
// 5. Health endpoints and healthcheck subcommands.
// ---------------------------------------------------------------------------------------

#[test]
fn health_endpoints() {
    let id = "spiffe://example.org/healthy";
    let dir = tempfile::tempdir().unwrap();
    let server_health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let flags = health_flags(server_health.port());
    let mut server = ServerProc::start(dir.path(), &[flags[0].as_str(), flags[1].as_str()]);
    let server_check = |s: &ServerProc| s.cli(&["healthcheck"]).status.success();

    assert_eq!(status_of(server_health, "/live"), Some(200));
    let ready = http_get(server_health, "/ready").unwrap();
    assert_eq!(ready.0, 200, "server /ready after start: {ready:?}");
    assert_eq!(status_of(server_health, "/nope"), Some(404));
    assert!(server_check(&server), "server healthcheck while up");

    server.create_entry(id, &["unix:uid:0"], &[]);
    let token = server.token(AGENT_ID);
    let mut agent = Agent::for_server(&dir.path().join("a"), &server);
    server.stop();
    assert!(!server_check(&server), "server healthcheck while down");
    assert!(
        http_get(server_health, "/live").is_err(),
        "server /live answers while the server is down"
    );

    // A fresh agent cannot attest without the server: alive, not ready.
    agent.start(Some(&token));
    let live = http_get(agent.health, "/live");
    assert!(matches!(&live, Ok((200, _))), "agent /live: {live:?}");
    let retried = wait_for(Duration::from_secs(20), || {
        (count(&agent.log_text(), "node attestation failed; retrying") >= 2).then_some(())
    });
    assert!(
        retried.is_some(),
        "agent retries attestation:\n{}",
        agent.log_tail()
    );
    let not_ready = http_get(agent.health, "/ready").unwrap();
    assert_eq!(
        not_ready.0, 503,
        "agent /ready before any sync: {not_ready:?}"
    );
    assert!(not_ready.1.contains("\"ready\":false"), "{not_ready:?}");
    let api_answers = agent.healthcheck();
    let fetch_down = agent.fetch();
    println!(
        "health: agent before first sync: /live 200, /ready 503 {}, healthcheck exit ok={api_answers}, fetch {:?}",
        not_ready.1, fetch_down
    );
    assert!(
        fetch_down.is_err(),
        "nothing to serve before the first sync"
    );

    server.restart();
    let restarted = Instant::now();
    assert!(server_check(&server));
    assert_eq!(status_of(server_health, "/ready"), Some(200));
    let ready_after = wait_for(RECOVERY_BOUND, || {
        (status_of(agent.health, "/ready") == Some(200)).then_some(())
    });
    let took = restarted.elapsed();
    assert!(
        ready_after.is_some(),
        "agent not ready within {RECOVERY_BOUND:?} of the server restart:\n{}",
        agent.log_tail()
    );
    // Ready means it can serve.
    let served = only(agent.fetch(), id);
    assert!(served.is_ok(), "ready agent serves: {served:?}");
    assert!(agent.healthcheck(), "agent healthcheck while up and ready");
    println!(
        "health: agent ready {:.1} s after the server restart; serves {}",
        took.as_secs_f64(),
        served.unwrap().serial
    );

    let (code, _) = agent.stop();
    assert_eq!(code, 0);
    assert!(!agent.healthcheck(), "agent healthcheck while down");
    assert!(
        http_get(agent.health, "/live").is_err(),
        "agent /live while down"
    );
    server.stop();
    assert!(!server_check(&server));
}

// ---------------------------------------------------------------------------------------
// 6. Readiness with a persisted cache that can no longer serve.
// ---------------------------------------------------------------------------------------

#[test]
fn agent_with_only_expired_persisted_svids_is_not_ready() {
    // Workload SVIDs of 5 s, an agent SVID of 2 min: after a short stop of agent and
    // server the agent's own identity is still valid but every workload SVID it persisted
    // has expired, so it can serve nothing until the server is back.
    let id = "spiffe://example.org/stale";
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(
        dir.path(),
        &["--default-x509-svid-ttl", "5s", "--agent-svid-ttl", "120s"],
    );
    server.create_entry(id, &["unix:uid:0"], &[]);
    let mut agent = Agent::for_server(&dir.path().join("a"), &server);
    agent.start(Some(&server.token(AGENT_ID)));
    wait_for(Duration::from_secs(30), || only(agent.fetch(), id).ok())
        .unwrap_or_else(|| panic!("no SVID within 30 s:\n{}", agent.log_tail()));
    assert_eq!(agent.stop().0, 0);
    let persisted = unix_now();
    server.stop();
    // Everything persisted has expired once a full SVID lifetime (5.5 s) has passed.
    std::thread::sleep(Duration::from_secs(8));

    agent.start(None);
    let fetch = agent.fetch();
    assert!(
        fetch.is_err(),
        "precondition: nothing valid to serve {} s after persisting: {fetch:?}",
        unix_now() - persisted
    );
    let ready = http_get(agent.health, "/ready").unwrap();
    println!("stale cache: fetch {fetch:?}; /ready {ready:?}");
    assert_eq!(
        ready.0, 503,
        "an agent that can serve no SVID must not report ready: {ready:?}"
    );

    server.restart();
    let back = wait_for(RECOVERY_BOUND, || {
        (status_of(agent.health, "/ready") == Some(200)).then_some(())
    });
    assert!(back.is_some(), "ready once the server is back");
    assert!(only(agent.fetch(), id).is_ok());
}

// ---------------------------------------------------------------------------------------
// 7. The server's exit status after SIGTERM.
// ---------------------------------------------------------------------------------------

#[test]
fn server_sigterm_always_exits_zero() {
    // Which select! branch wins at shutdown is random, so stop the server many times.
    const CYCLES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnServer::new(dir.path());
    let mut codes = Vec::with_capacity(CYCLES);
    for _ in 0..CYCLES {
        server.start();
        let (code, took) = server.stop();
        assert!(took < DRAIN_DEADLINE, "drained in {took:?}");
        assert!(!server.admin_socket.exists(), "admin socket removed");
        codes.push(code);
    }
    let failed = codes.iter().filter(|c| **c != 0).count();
    let log = server.log_text();
    println!(
        "server SIGTERM: {failed}/{CYCLES} exits non-zero {codes:?}; {} \"stopped unexpectedly\" in the log",
        count(&log, "a server component stopped unexpectedly")
    );
    assert_eq!(failed, 0, "exit codes after SIGTERM: {codes:?}");
}
