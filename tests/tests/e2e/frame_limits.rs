//! What a connection may make the agent hold before attestation: a local user who
//! announces huge HTTP/2 frames on the Workload API socket and trickles their payload, or
//! opens many streams each declaring a large gRPC message and withholding its last byte,
//! must not grow the agent, and registered workloads keep being served meanwhile.
//!
//! The figures are the agent's own resident set (`VmRSS` in `/proc/<pid>/status`), not
//! timings. Any local user may connect to the socket, so the attacker here is the test
//! process itself; no second user is needed.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::proto::workload::JwtsvidRequest;
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

/// Streams the request-message attack opens on one connection.
const STREAMS: usize = 64;
/// gRPC message lengths the streams declare: tonic's default maximum (4 MiB) less one
/// byte, and 128 KiB less one byte (within what the agent decodes).
const DECLARED: [usize; 2] = [4 * 1024 * 1024 - 1, 128 * 1024 - 1];

/// How a stream of the request-message attack ended.
#[derive(Debug, PartialEq)]
enum Sent {
    /// The whole of the data was sent (and so, through flow control, read by the agent).
    All,
    /// The agent answered before the message was complete: it refused it.
    Refused,
    /// No window within 2 s: the stream waits for a slot under the concurrent-stream limit.
    Stalled,
}

/// Sends `data` on `send` as flow control allows.
async fn send_all(
    send: &mut h2::SendStream<Bytes>,
    response: &mut h2::client::ResponseFuture,
    mut data: Bytes,
) -> Sent {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = tokio::select! {
            c = std::future::poll_fn(|cx| send.poll_capacity(cx)) => c,
            _ = &mut *response => return Sent::Refused,
            () = tokio::time::sleep(Duration::from_secs(2)) => return Sent::Stalled,
        };
        let Some(Ok(n)) = capacity else {
            return Sent::Refused;
        };
        let chunk = data.split_to(n.min(data.len()));
        if send.send_data(chunk, false).is_err() {
            return Sent::Refused;
        }
    }
    Sent::All
}

/// Opens up to [`STREAMS`] Workload API calls on one connection, each declaring a message
/// of `declared` bytes and sending all of it but the last byte. Returns what must stay
/// alive for the streams to stay open, and how many streams sent everything.
async fn withhold_last_byte(socket: &Path, declared: usize) -> (Vec<Box<dyn Send>>, usize) {
    let io = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let (mut client, conn) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    held.push(Box::new(tokio::spawn(conn)));
    let mut complete = 0;
    for _ in 0..STREAMS {
        client = client.ready().await.expect("connection open");
        let req = http::Request::post("http://localhost/SpiffeWorkloadAPI/FetchJWTSVID")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("workload.spiffe.io", "true")
            .body(())
            .expect("request");
        let Ok((mut response, mut send)) = client.send_request(req, false) else {
            break;
        };
        let mut body = vec![0u8; 5 + declared - 1];
        body[1..5].copy_from_slice(&u32::try_from(declared).unwrap().to_be_bytes());
        let sent = send_all(&mut send, &mut response, Bytes::from(body)).await;
        held.push(Box::new(response));
        held.push(Box::new(send));
        match sent {
            Sent::All => complete += 1,
            Sent::Refused => {}
            // The streams after it would wait too.
            Sent::Stalled => break,
        }
    }
    held.push(Box::new(client));
    (held, complete)
}

#[test]
fn withheld_request_messages_do_not_grow_the_agent() {
    let mut c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/frames", &["unix:uid:0"], &[]);
    let pid = c.agent.pid();
    let before = rss_kb(pid);
    let rt = tests::runtime();
    let socket = c.agent.socket_path.clone();
    let attacks: Vec<_> = DECLARED
        .iter()
        .map(|&declared| rt.block_on(withhold_last_byte(&socket, declared)))
        .collect();
    // Every stream that sent everything was read by the agent (flow control gave the
    // window back), and every stream is still held open: measure now.
    let during = rss_kb(pid);
    let growth = during.saturating_sub(before);
    let complete: Vec<usize> = attacks.iter().map(|(_, n)| *n).collect();
    eprintln!(
        "agent VmRSS {before} kB before, {during} kB under {STREAMS} streams per connection \
         declaring {DECLARED:?}-byte messages (growth {growth} kB); streams fully sent: {complete:?}"
    );

    let out = c.fetch_json();
    assert!(
        out.status.success(),
        "fetch under attack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        growth <= MAX_GROWTH_KB,
        "the agent grew by {growth} kB ({before} → {during} kB) holding withheld messages"
    );
    // The largest legitimate request (32 audiences of 1 KiB, about 33 KiB) is still served.
    let audience: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "a".repeat(1022)))
        .collect();
    let largest = rt.block_on(async {
        tests::workload_client(&socket)
            .await
            .fetch_jwtsvid(tests::with_header(JwtsvidRequest {
                audience,
                spiffe_id: String::new(),
            }))
            .await
    });
    let svids = largest
        .expect("the largest legitimate request")
        .into_inner()
        .svids;
    assert_eq!(svids.len(), 1);
    drop(attacks);
    assert!(c.agent.is_running(), "agent died: {}", c.agent.log_tail());
}
