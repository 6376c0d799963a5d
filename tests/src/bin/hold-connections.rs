//! `hold-connections SOCKET COUNT [--send BYTES]`: opens COUNT connections to the Unix
//! socket SOCKET, optionally writes BYTES (text) on each, and holds them open, for tests
//! of what the agent does with connections it did not ask for. Tests run it as another
//! user (`tests::command_as_nobody`), so the connections carry that user's credentials.
//!
//! It prints `connected N failed M` once every connect returned, then answers each line
//! `status` on stdin with `open N closed M`: a connection counts as closed once the peer
//! has ended it (end of stream or reset; whatever the peer wrote before is read and
//! discarded). It exits when stdin closes, closing every connection.

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

/// Whether the peer has closed `s` (read without waiting).
fn closed(mut s: &UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, count, send) = match args.as_slice() {
        [socket, count] => (socket, count, None),
        [socket, count, flag, bytes] if flag == "--send" => (socket, count, Some(bytes)),
        _ => {
            eprintln!("usage: hold-connections SOCKET COUNT [--send BYTES]");
            return ExitCode::from(64);
        }
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("COUNT must be a number");
        return ExitCode::from(64);
    };
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    for _ in 0..count {
        match UnixStream::connect(socket) {
            Ok(mut s) => {
                if let Some(bytes) = send {
                    // A peer that already closed makes this fail: it still counts as held
                    // (and will show as closed).
                    let _ = s.write_all(bytes.as_bytes());
                }
                if s.set_nonblocking(true).is_err() {
                    failed += 1;
                    continue;
                }
                held.push(s);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("connect {socket}: {e}");
                }
                failed += 1;
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "connected {} failed {failed}", held.len())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "status" {
            continue;
        }
        let closed = held.iter().filter(|s| closed(s)).count();
        let open = held.len() - closed;
        if writeln!(out, "open {open} closed {closed}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}
