//! What a connection may make the agent hold before attestation: a local user who
//! announces huge HTTP/2 frames on the Workload API socket and trickles their payload
//! must not grow the agent, and registered workloads keep being served meanwhile.
//!
//! The figures are the agent's own resident set (`VmRSS` in `/proc/<pid>/status`), not
//! timings. Any local user may connect to the socket, so the attacker here is the test
//! process itself; no second user is needed.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use tests::Cluster;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A SETTINGS frame header on stream 0 declaring a 16 MiB - 1 payload (the 24-bit maximum).
const HUGE_FRAME_HEADER: [u8; 9] = [0xff, 0xff, 0xff, 0x04, 0, 0, 0, 0, 0];
/// Concurrent attacking connections.
const CONNECTIONS: usize = 8;
/// Payload each one sends, in MiB: all of the frame but its last MiB, so that the frame
/// never completes.
const MIB_SENT: usize = 15;
/// Growth of the agent's resident set the attack may cause. Unbounded buffering costs
/// `CONNECTIONS × MIB_SENT` = 120 MiB; bounded, each connection holds well under 1 MiB.
const MAX_GROWTH_KB: u64 = 24 * 1024;

/// `VmRSS` of `pid` in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Announces the huge frame and sends `MIB_SENT` MiB of it; returns the connection (still
/// open, for as long as the agent keeps it) and how many MiB the agent accepted.
fn attack(socket: &Path) -> (UnixStream, usize) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("write timeout");
    s.write_all(PREFACE).expect("preface");
    s.write_all(&HUGE_FRAME_HEADER).expect("frame header");
    let mib = vec![0u8; 1 << 20];
    let mut sent = 0;
    for _ in 0..MIB_SENT {
        // Once the agent has refused the frame and closed, writes fail: that is the fix.
        if s.write_all(&mib).is_err() {
            break;
        }
        sent += 1;
    }
    (s, sent)
}

/// Whether the agent closes `s` within `within` (end of stream or reset, after whatever
/// it wrote: its SETTINGS and a GOAWAY).
fn closed_by_agent(s: &mut UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn announced_huge_frames_do_not_grow_the_agent() {
    let mut c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/frames", &["unix:uid:0"], &[]);
    let fetched = c.fetch_json();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let pid = c.agent.pid();
    let before = rss_kb(pid);

    let socket = c.agent.socket_path.clone();
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || attack(&socket))
        })
        .collect();
    let mut conns: Vec<(UnixStream, usize)> = attackers
        .into_iter()
        .map(|t| t.join().expect("attacker thread"))
        .collect();
    // Every byte the agent accepted has been read by it (the writes completed), and the
    // connections that are still open are held: measure now.
    let during = rss_kb(pid);
    let growth = during.saturating_sub(before);
    let accepted: Vec<usize> = conns.iter().map(|(_, n)| *n).collect();
    eprintln!(
        "agent VmRSS {before} kB before, {during} kB under {CONNECTIONS} connections \
         announcing 16 MiB frames (growth {growth} kB); MiB accepted per connection: {accepted:?}"
    );

    // Registered workloads are still served while the attacking connections exist.
    let out = c.fetch_json();
    assert!(
        out.status.success(),
        "fetch under attack: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        growth <= MAX_GROWTH_KB,
        "the agent grew by {growth} kB ({before} → {during} kB) holding announced frames"
    );
    for (s, _) in &mut conns {
        assert!(
            closed_by_agent(s, Duration::from_secs(5)),
            "the agent kept open a connection whose frame exceeds the maximum frame size"
        );
    }
    assert!(c.agent.is_running(), "agent died: {}", c.agent.log_tail());
}
