//! Connections on the Workload API socket that nobody asked for: a local user who opens
//! connections until the agent runs out of file descriptors, or holds them open without a
//! request, must not cut other workloads off, nor make the agent spin.
//!
//! The flood comes from a real second user: `hold-connections` (tests/src/bin) run as
//! `nobody`, which opens the connections and holds them for as long as the test wants.
//! The agent's figures are its own: the open descriptors in `/proc/<pid>/fd` and the CPU
//! time (`utime` + `stime`) in `/proc/<pid>/stat`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use common::proto::workload::X509svidRequest;
use tests::{Cluster, NOBODY};
use tokio::time::Instant;

/// The open-file limit the flooded agent runs under.
const FD_LIMIT: u64 = 256;
/// Connections the flood opens: more than the agent's open-file limit.
const FLOOD: usize = 300;
/// Descriptors one connection may hold: its socket, and its caller's `/proc/<pid>`
/// directory with `status` and `cgroup` (agent/src/config.rs).
const FDS_PER_CONNECTION: usize = 4;
/// What a connection that has made no request yet holds: its socket and its caller's
/// `/proc/<pid>` directory, opened at accept (`status` and `cgroup` are opened on a later
/// call).
const FDS_PER_NEW_CONNECTION: usize = 2;
/// The default per-uid cap under [`FD_LIMIT`]: a quarter of the connections the limit
/// leaves room for beside the 64 descriptors the agent keeps for itself
/// (agent/src/config.rs).
const DEFAULT_PER_UID_AT_LIMIT: usize = (FD_LIMIT as usize - 64) / FDS_PER_CONNECTION / 4;
/// Spinning on a failed accept burns a whole core (200 ticks in 2 s at 100 Hz); an agent
/// holding idle connections uses next to nothing.
const MAX_TICKS_IN_WINDOW: u64 = 20;

/// Connections held open by `hold-connections` running as `nobody`.
struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Connections whose connect succeeded.
    connected: usize,
}

impl Held {
    /// Opens `count` connections to `socket` as `nobody`, writing `send` on each when given.
    fn open(socket: &Path, count: usize, send: Option<&[u8]>) -> Self {
        tests::assert_nobody_can_reach(socket);
        let mut cmd = tests::command_as_nobody("hold-connections");
        cmd.arg(socket).arg(count.to_string());
        if let Some(bytes) = send {
            cmd.arg("--send").arg(std::str::from_utf8(bytes).unwrap());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hold-connections as nobody");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("hold-connections output");
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["connected", connected, "failed", failed] = words[..] else {
            panic!("hold-connections said {line:?}");
        };
        let connected: usize = connected.parse().unwrap();
        eprintln!("nobody opened {connected} connections ({failed} connects failed)");
        Self {
            child,
            stdin,
            stdout,
            connected,
        }
    }

    /// (open, closed by the agent) among the connections held.
    fn status(&mut self) -> (usize, usize) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "status").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["open", open, "closed", closed] = words[..] else {
            panic!("hold-connections said {line:?}");
        };
        (open.parse().unwrap(), closed.parse().unwrap())
    }

    /// Polls [`Self::status`] until `want` holds or `within` passes; the last status.
    fn status_until(
        &mut self,
        within: Duration,
        want: impl Fn((usize, usize)) -> bool,
    ) -> (usize, usize) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status();
            if want(s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing stdin ends the child, which closes its connections.
        drop(self.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

/// CPU time of process `pid` so far, in clock ticks (`utime` + `stime`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// How long the agent took to close `s`, waiting up to `within`; `None` if it did not.
fn time_to_close(s: &mut UnixStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            // The agent's SETTINGS frame: keep reading.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
}

#[test]
fn a_flood_of_connections_from_one_user_leaves_the_agent_serving_the_others() {
    // The flood stays open for the whole test, whatever the machine's load.
    let mut c = Cluster::start_with_agent(&[], |a| {
        a.with_fd_limit(FD_LIMIT)
            .with_args(&["--api-handshake-timeout", "1h"])
    });
    c.server
        .create_entry("spiffe://example.org/flood-root", &["unix:uid:0"], &[]);
    c.agent.fetch_ids().expect("fetch before the flood");
    let pid = c.agent.pid();
    let fds_before = open_fds(pid);

    let mut flood = Held::open(&c.agent.socket_path, FLOOD, None);
    assert_eq!(flood.connected, FLOOD, "every connect returns");
    // The agent has dealt with every connection: those over nobody's cap are closed.
    let (open, closed) = flood.status_until(Duration::from_secs(10), |(_, closed)| {
        closed >= FLOOD - DEFAULT_PER_UID_AT_LIMIT
    });

    // Over two seconds of the flood held open, the agent does next to nothing.
    let tick = ticks_per_second();
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - ticks_before;
    let fds_during = open_fds(pid);
    let (open_after, _) = flood.status();
    eprintln!(
        "agent under RLIMIT_NOFILE {FD_LIMIT}: {fds_before} fds before, {fds_during} with \
         {FLOOD} connections from nobody ({open} held open, {closed} closed by the agent); \
         {ticks} CPU ticks ({tick}/s) in 2 s"
    );

    // A registered workload of another user is served meanwhile, within a normal deadline.
    let fetch_started = Instant::now();
    let fetched = c.agent.fetch_x509_within(10);
    let fetch_took = fetch_started.elapsed();
    assert!(
        fetched.is_ok(),
        "root's fetch under the flood: {fetched:?}\n{}",
        c.agent.log_tail()
    );
    eprintln!("root's fetch under the flood took {fetch_took:?}");

    assert!(
        fds_during < FD_LIMIT as usize,
        "the agent holds {fds_during} fds, at its limit of {FD_LIMIT}"
    );
    assert!(
        fds_during <= fds_before + FDS_PER_NEW_CONNECTION * DEFAULT_PER_UID_AT_LIMIT + 8,
        "the agent holds {fds_during} fds ({fds_before} before the flood): more than \
         nobody's {DEFAULT_PER_UID_AT_LIMIT} connections"
    );
    assert_eq!(
        (open, open_after),
        (DEFAULT_PER_UID_AT_LIMIT, DEFAULT_PER_UID_AT_LIMIT),
        "nobody keeps exactly its cap of connections open for the whole window"
    );
    assert!(
        ticks <= MAX_TICKS_IN_WINDOW,
        "the agent used {ticks} CPU ticks in 2 s while holding idle connections"
    );
    // The refusals are logged, naming the uid, but not once each.
    let log = c.agent.log_text();
    let warned = tests::occurrences(&log, "closed a new Workload API connection");
    assert!(
        (1..=2).contains(&warned) && log.contains(&format!("uid={NOBODY}")),
        "{warned} refusal lines for {closed} refusals:\n{}",
        c.agent.log_tail()
    );
    drop(flood);
    assert!(c.agent.is_running(), "agent died: {}", c.agent.log_tail());
}

#[test]
fn one_users_connections_beyond_its_cap_are_closed_and_come_back_when_released() {
    const CAP: usize = 8;
    let mut c = Cluster::start_with(
        &[],
        &[
            "--api-max-connections-per-uid",
            "8",
            "--api-handshake-timeout",
            "1h",
        ],
    );
    c.server
        .create_entry("spiffe://example.org/cap-root", &["unix:uid:0"], &[]);
    let socket = &c.agent.socket_path.clone();

    let pid = c.agent.pid();
    let fds_before = open_fds(pid);

    let mut first = Held::open(socket, 20, None);
    let status = first.status_until(Duration::from_secs(10), |(_, closed)| closed >= 20 - CAP);
    assert_eq!(
        status,
        (CAP, 20 - CAP),
        "(open, closed) of nobody's 20 connections"
    );
    // Another user is served, and holds as many connections as its own cap allows.
    c.agent
        .fetch_ids()
        .expect("root's fetch beside nobody's capped connections");
    // The fetch's connection is released once the agent has seen it close.
    let settled = tests::wait_for(Duration::from_secs(10), || {
        (open_fds(pid) <= fds_before + FDS_PER_NEW_CONNECTION * CAP).then_some(())
    });
    assert!(settled.is_some(), "the agent kept the fetch's connection");
    let mut mine: Vec<UnixStream> = (0..CAP)
        .map(|_| UnixStream::connect(socket).unwrap())
        .collect();
    for s in &mut mine {
        assert_eq!(
            time_to_close(s, Duration::from_millis(200)),
            None,
            "root's connection was closed"
        );
    }
    // Still capped: with nobody's connections held, one more is refused.
    let mut extra = Held::open(socket, 1, None);
    assert_eq!(
        extra.status_until(Duration::from_secs(5), |(_, closed)| closed == 1),
        (0, 1)
    );
    drop(extra);
    // Closing its connections gives nobody its slots back, as soon as the agent has seen
    // them close.
    drop(first);
    let released = tests::wait_for(Duration::from_secs(10), || {
        (open_fds(pid) <= fds_before + FDS_PER_NEW_CONNECTION * CAP).then_some(())
    });
    assert!(released.is_some(), "the agent kept the closed connections");
    let mut second = Held::open(socket, CAP, None);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        second.status(),
        (CAP, 0),
        "slots released by closed connections"
    );
    drop(mine);
}

#[test]
fn connections_without_a_request_are_closed_after_the_handshake_timeout() {
    let c = Cluster::start_with(&[], &["--api-handshake-timeout", "2"]);
    c.server
        .create_entry("spiffe://example.org/handshake", &["unix:uid:0"], &[]);
    let socket = &c.agent.socket_path;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 0x04, 0, 0, 0, 0, 0];
    let start = Instant::now();
    let mut silent = UnixStream::connect(socket).unwrap();
    let mut half_preface = UnixStream::connect(socket).unwrap();
    half_preface.write_all(&PREFACE[..12]).unwrap();
    let mut settings_only = UnixStream::connect(socket).unwrap();
    settings_only.write_all(PREFACE).unwrap();
    settings_only.write_all(&EMPTY_SETTINGS).unwrap();
    for s in [&mut silent, &mut half_preface, &mut settings_only] {
        assert_eq!(
            time_to_close(s, Duration::from_millis(100)),
            None,
            "closed at once"
        );
    }
    // As nobody too: the timeout does not depend on who connects.
    let mut nobody = Held::open(socket, 3, Some(&PREFACE[..5]));

    // A workload that makes its call in time keeps its stream open past the timeout.
    let rt = tests::runtime();
    let mut stream = rt.block_on(async {
        let mut client = tests::workload_client(socket).await;
        let mut s = client
            .fetch_x509svid(tests::with_header(X509svidRequest {}))
            .await
            .expect("FetchX509SVID")
            .into_inner();
        s.message()
            .await
            .expect("first message")
            .expect("a message");
        s
    });

    for (name, s) in [
        ("sending nothing", &mut silent),
        ("sending half the preface", &mut half_preface),
        ("sending the preface and settings", &mut settings_only),
    ] {
        let closed = time_to_close(s, Duration::from_secs(15).saturating_sub(start.elapsed()));
        let at = start.elapsed();
        eprintln!("a connection {name} was closed {at:?} after it was opened");
        assert!(
            closed.is_some(),
            "a connection {name} is still open 15 s after a 2 s handshake timeout"
        );
        assert!(
            at >= Duration::from_secs(2),
            "closed before the timeout: {at:?}"
        );
    }
    assert_eq!(
        nobody.status_until(Duration::from_secs(5), |(_, closed)| closed == 3),
        (0, 3),
        "nobody's half-preface connections"
    );
    // The stream opened before the timeout still delivers: a new entry reaches it.
    c.server
        .create_entry("spiffe://example.org/handshake-2", &["unix:uid:0"], &[]);
    let update = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), stream.message()).await });
    let svids = update
        .expect("an update within 20 s")
        .expect("the stream is open")
        .expect("a message")
        .svids;
    assert_eq!(svids.len(), 2);
}

#[test]
fn a_connection_with_no_open_stream_is_closed_after_the_idle_timeout_and_a_stream_never() {
    let c = Cluster::start_with(&[], &["--api-idle-timeout", "3"]);
    c.server
        .create_entry("spiffe://example.org/idle", &["unix:uid:0"], &[]);
    let socket = c.agent.socket_path.clone();
    let rt = tests::runtime();
    rt.block_on(async {
        // A raw HTTP/2 connection makes one call, then stays silent.
        let io = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let (mut client, conn) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
        let conn = tokio::spawn(conn);
        let req = http::Request::post("http://localhost/SpiffeWorkloadAPI/NoSuchMethod")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("workload.spiffe.io", "true")
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).expect("request");
        let response = response.await.expect("response");
        assert_eq!(response.headers()["grpc-status"], "12", "Unimplemented");
        let call_ended = Instant::now();

        // A stream on another connection stays silent longer than the idle timeout.
        let mut workload = tests::workload_client(&socket).await;
        let mut stream = workload
            .fetch_x509svid(tests::with_header(X509svidRequest {}))
            .await
            .expect("FetchX509SVID")
            .into_inner();
        stream
            .message()
            .await
            .expect("first message")
            .expect("a message");

        tokio::time::timeout(Duration::from_secs(15), conn)
            .await
            .expect("the idle connection is closed within 15 s of a 3 s idle timeout")
            .unwrap()
            .ok();
        let took = call_ended.elapsed();
        eprintln!("the idle connection was closed {took:?} after its call");
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(9)).contains(&took),
            "closed {took:?} after its call, with a 3 s idle timeout"
        );
        drop(client);

        tokio::time::sleep(Duration::from_secs(5)).await;
        c.server
            .create_entry("spiffe://example.org/idle-2", &["unix:uid:0"], &[]);
        let update = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an update within 20 s")
            .expect("the stream is open after 8 s of silence")
            .expect("a message");
        assert_eq!(update.svids.len(), 2);
    });
}

#[test]
fn a_connection_cap_beyond_the_open_file_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = tests::ServerProc::start(dir.path(), &[]);
    let mut agent = tests::AgentProc::new(dir.path(), &server)
        .with_fd_limit(FD_LIMIT)
        .with_args(&["--api-max-connections", "1000"]);
    let (code, log) = agent.run_until_exit(None, Duration::from_secs(20));
    assert_eq!(code, 64, "{log}");
    assert!(
        log.contains("api_max_connections")
            && log.contains("RLIMIT_NOFILE")
            && log.contains("at most 48"),
        "{log}"
    );
}

/// The soft and hard open-file limits in `/proc/<pid>/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [soft, hard] = numbers[..] else {
        panic!("unexpected limits line {line:?}");
    };
    (soft, hard)
}

/// The hard limit the daemons below start under, above their soft [`FD_LIMIT`].
const HARD_FD_LIMIT: u64 = 1024;

#[test]
fn the_agent_raises_its_soft_open_file_limit_to_the_hard_limit_before_sizing_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let server = tests::ServerProc::start(dir.path(), &[]);
    let mut agent =
        tests::AgentProc::new(dir.path(), &server).with_fd_limits(FD_LIMIT, HARD_FD_LIMIT);
    agent.restart(Some(&server.token("spiffe://example.org/node/raised")));
    let pid = agent.pid();
    assert_eq!(open_file_limits(pid), (HARD_FD_LIMIT, HARD_FD_LIMIT));
    let log = agent.log_text();
    assert!(
        log.contains("open-file limit raised to the hard limit")
            && log.contains(&format!("from={FD_LIMIT}"))
            && log.contains(&format!("to={HARD_FD_LIMIT}")),
        "{log}"
    );
    // The default connection cap follows the raised limit, not the one it started under
    // (which would allow (256 - 64) / 4 = 48).
    let cap = (HARD_FD_LIMIT as usize - 64) / FDS_PER_CONNECTION;
    assert!(log.contains(&format!("max_connections: {cap},")), "{log}");
}

#[test]
fn the_server_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        tests::ServerProc::new(dir.path(), &[]).with_fd_limits(FD_LIMIT, HARD_FD_LIMIT);
    server.restart();
    let pid = server.pid();
    assert_eq!(open_file_limits(pid), (HARD_FD_LIMIT, HARD_FD_LIMIT));
    let log = server.log_text();
    assert!(
        log.contains("open-file limit raised to the hard limit")
            && log.contains(&format!("from={FD_LIMIT}")),
        "{log}"
    );
}

#[test]
fn an_agent_whose_soft_and_hard_limits_agree_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = tests::ServerProc::start(dir.path(), &[]);
    let mut agent = tests::AgentProc::new(dir.path(), &server).with_fd_limit(FD_LIMIT);
    agent.restart(Some(&server.token("spiffe://example.org/node/kept")));
    assert_eq!(open_file_limits(agent.pid()), (FD_LIMIT, FD_LIMIT));
    assert!(
        !agent.log_text().contains("open-file limit raised"),
        "{}",
        agent.log_text()
    );
}
