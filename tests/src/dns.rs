//! A real DNS server for tests: `dnsmasq` on 127.0.0.1, serving given TXT records, or
//! ([`DnsServer::start_a`]) on port 53 of a loopback address of its own, serving A records
//! to a process that is pointed at it with [`DnsServer::resolv_conf`].
//!
//! The server answers every other name itself (NXDOMAIN, or an empty answer for a name that
//! has records under it) and never forwards a query. Records are served with a one-hour TTL
//! and negative answers carry one too, so a resolver that caches would keep serving an old
//! answer: tests that change the records see whether the code under test asks again. Every
//! query is logged; [`DnsServer::queries`] counts them.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::Process;
use crate::{free_port, wait_for};

/// How long dnsmasq may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of the served records and of negative answers.
const TTL_SECS: u32 = 3600;
/// The name the readiness probe asks for (never among a test's records).
const PROBE_NAME: &str = "tessera-harness-probe.invalid";

/// A running `dnsmasq` serving TXT records; killed when dropped.
#[derive(Debug)]
pub struct DnsServer {
    dir: TempDir,
    ip: Ipv4Addr,
    port: u16,
    process: Option<Process>,
}

/// A loopback address (in 127.53.0.0/16) whose UDP and TCP port 53 are free, for a server
/// the system resolver can be pointed at (glibc asks port 53 only).
fn free_port_53_address() -> Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 65_000;
        let [_, _, hi, lo] = n.to_be_bytes();
        let ip = Ipv4Addr::new(127, 53, hi, lo.max(1));
        if UdpSocket::bind((ip, 53)).is_ok() && std::net::TcpListener::bind((ip, 53)).is_ok() {
            return ip;
        }
    }
    panic!("no loopback address in 127.53.0.0/16 with port 53 free");
}

impl DnsServer {
    /// Starts dnsmasq on a free loopback port serving `records`, `(name, value)` pairs, and
    /// waits until it answers. Several pairs with one name are several TXT records. A value
    /// with commas is one record of several character-strings (dnsmasq's `--txt-record`
    /// syntax): `("n", "ab,cd")` serves one record with the strings `ab` and `cd`.
    ///
    /// Fails the test if dnsmasq is not installed or does not start.
    pub fn start(records: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for dnsmasq");
        let mut server = Self {
            dir,
            ip: Ipv4Addr::LOCALHOST,
            port: free_port(),
            process: None,
        };
        server.spawn(&txt_args(records));
        server
    }

    /// Starts dnsmasq on port 53 of a free loopback address serving A records, `(name,
    /// address)` pairs (several pairs with one name are several records, all in every
    /// answer), and waits until it answers. Point a process at it with
    /// [`Self::resolv_conf`] (see `AgentProc::with_resolv_conf`).
    pub fn start_a(records: &[(&str, Ipv4Addr)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for dnsmasq");
        let mut server = Self {
            dir,
            ip: free_port_53_address(),
            port: 53,
            process: None,
        };
        let args: Vec<String> = records
            .iter()
            .map(|(name, ip)| {
                assert!(!name.contains(',') && !name.contains('\n'), "name {name:?}");
                format!("--host-record={name},{ip}")
            })
            .collect();
        server.spawn(&args);
        server
    }

    /// A `resolv.conf` naming only this server (on port 53: see [`Self::start_a`]).
    pub fn resolv_conf(&self) -> PathBuf {
        let path = self.dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            format!("nameserver {}\noptions timeout:1 attempts:2\n", self.ip),
        )
        .expect("write resolv.conf");
        path
    }

    /// The address to send queries to (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    /// Replaces the served records: restarts dnsmasq on the same port and waits until the
    /// new one answers.
    pub fn set_records(&mut self, records: &[(&str, &str)]) {
        self.stop();
        self.spawn(&txt_args(records));
    }

    /// Stops the server (SIGKILL); queries to [`DnsServer::addr`] then go unanswered until
    /// [`DnsServer::set_records`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// How many queries for `name` (any type) reached the server so far, over all its runs.
    pub fn queries(&self, name: &str) -> usize {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        log.lines()
            .filter(|line| {
                line.split_once("]: query[")
                    .and_then(|(_, rest)| rest.split_once("] "))
                    .and_then(|(_, rest)| rest.split_once(" from "))
                    .is_some_and(|(queried, _)| queried == name)
            })
            .count()
    }

    /// dnsmasq's log (all runs, appended).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    fn spawn(&mut self, record_args: &[String]) {
        let bin = dnsmasq_path();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            // Every name is ours: answer NXDOMAIN instead of REFUSED for unknown names.
            "--local=/#/",
            // No pid file (the default path is shared by every dnsmasq on the machine).
            "--pid-file",
            "--log-facility=-",
            "--log-queries",
        ]);
        cmd.arg(format!("--listen-address={}", self.ip));
        cmd.arg(format!("--port={}", self.port));
        cmd.arg(format!("--local-ttl={TTL_SECS}"));
        cmd.arg(format!("--neg-ttl={TTL_SECS}"));
        // Keep our own user and group: as root dnsmasq would switch to an account that
        // may not exist here, and as another user it cannot switch at all.
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .expect("current user name");
        let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
            .ok()
            .flatten()
            .expect("current group name");
        cmd.arg(format!("--user={}", user.name));
        cmd.arg(format!("--group={}", group.name));
        cmd.args(record_args);
        let mut process = Process::spawn("dnsmasq", cmd, &self.log());
        let answered = wait_for(START_TIMEOUT, || {
            if let Some(code) = process.exited() {
                panic!(
                    "dnsmasq exited with {code} while starting:\n{}",
                    process.log_tail()
                );
            }
            probe(self.addr()).then_some(())
        });
        if answered.is_none() {
            panic!(
                "dnsmasq did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.addr(),
                process.log_tail()
            );
        }
        self.process = Some(process);
    }
}

/// dnsmasq's flags serving TXT `records` (see [`DnsServer::start`]).
fn txt_args(records: &[(&str, &str)]) -> Vec<String> {
    records
        .iter()
        .map(|(name, value)| {
            assert!(
                !name.contains(',') && !name.contains('\n') && !value.contains('\n'),
                "record {name:?} = {value:?} cannot be passed to dnsmasq"
            );
            format!("--txt-record={name},{value}")
        })
        .collect()
}

/// The dnsmasq executable: on `$PATH` or in the sbin directories (often not on a user's
/// `$PATH`).
fn dnsmasq_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join("dnsmasq"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!("dnsmasq not found: install dnsmasq (apt-get install dnsmasq-base)")
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a DNS server answers at `addr`: one TXT query over UDP for [`PROBE_NAME`], any
/// response with our id counts.
fn probe(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    if socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return false;
    }
    let id: u16 = 0x7e55;
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired; one question, no other records.
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in PROBE_NAME.split('.') {
        query.push(u8::try_from(label.len()).expect("label under 64 bytes"));
        query.extend_from_slice(label.as_bytes());
    }
    // Root label, QTYPE TXT (16), QCLASS IN (1).
    query.extend_from_slice(&[0, 0, 16, 0, 1]);
    if socket.send_to(&query, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(socket.recv_from(&mut buf), Ok((n, from)) if from == addr && n >= 12 && buf[..2] == id.to_be_bytes())
}
