//! Shutdown (issue 5): SIGTERM drains within the deadline and removes the sockets, with an
//! agent's sync stream open on the server, with a Workload API stream open on the agent and
//! with an agent still retrying attestation; the exit code after SIGTERM is 0 every time
//! (many cycles, since which `select!` branch wins is random); a second agent on a live
//! socket is refused, while a stale socket file left by a crash does not block the next
//! start.

use std::path::Path;
use std::time::Duration;

use common::proto::workload::X509svidRequest;
use tests::{
    AGENT_ID, AgentProc, DRAIN_DEADLINE, ServerProc, occurrences, only, runtime, wait_for,
    workload_client,
};
use tokio::time::Instant;

const WORKLOAD_A: &str = "spiffe://example.org/workload/a";

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
    let mut server = ServerProc::start(dir.path(), &[]);
    server.create_entry(id, &["unix:uid:0"], &[]);
    let token = server.token(AGENT_ID);
    let mut agent = AgentProc::new(&dir.path().join("a"), &server);
    // Laid out now: it is started below while the server is down.
    let mut waiting = AgentProc::new(&dir.path().join("w"), &server);
    agent.restart(Some(&token));
    let first = wait_for(Duration::from_secs(30), || {
        only(agent.fetch_x509(), id).ok()
    })
    .unwrap_or_else(|| panic!("no SVID within 30 s:\n{}", agent.log_tail()));

    // A live socket is not stale: a second agent on it is refused, the first keeps serving.
    let mut intruder = AgentProc::new(&dir.path().join("intruder"), &server);
    intruder.socket_path = agent.socket_path.clone();
    // Fails the test unless it exits by itself.
    let (code, ilog) = intruder.run_until_exit(Some("unused"), Duration::from_secs(20));
    assert_ne!(code, 0, "{ilog}");
    assert!(ilog.contains("already serving"), "{ilog}");
    assert_eq!(
        only(agent.fetch_x509(), id).as_ref(),
        Ok(&first),
        "first agent unharmed"
    );

    // The server with an agent's sync stream open.
    let (code, took) = server.terminate();
    println!("shutdown: server exited {code} {took:?} after SIGTERM (agent connected)");
    assert_eq!(code, 0, "server exit code after SIGTERM");
    assert!(took < DRAIN_DEADLINE, "server drained in {took:?}");
    assert!(!server.admin_socket.exists(), "admin socket removed");
    let slog = server.log_text();
    assert!(!slog.contains("shutdown deadline passed"), "{slog}");
    assert_eq!(
        only(agent.fetch_x509(), id),
        Ok(first),
        "agent still serves"
    );

    // An agent still retrying attestation (server down) stops promptly too.
    waiting.restart(Some("never-used-token"));
    let retrying = wait_for(Duration::from_secs(20), || {
        waiting
            .log_text()
            .contains("node attestation failed; retrying")
            .then_some(())
    });
    assert!(retrying.is_some(), "{}", waiting.log_tail());
    let (code, took) = waiting.terminate();
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
        let mut client = workload_client(&socket).await;
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
    let (code, took) = agent.terminate();
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
    server.restart();
    let entries = server.cli_json(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().unwrap().len(), 1, "{entries}");
    agent.restart(None);
    let again = wait_for(Duration::from_secs(30), || {
        only(agent.fetch_x509(), id).ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "agent does not serve after a stale socket:\n{}",
            agent.log_tail()
        )
    });
    assert_eq!(again.spiffe_id, id);
    assert!(std::os::unix::net::UnixStream::connect(&agent.socket_path).is_ok());
    assert!(std::os::unix::net::UnixStream::connect(&server.admin_socket).is_ok());

    // And both stop cleanly again.
    let (acode, atook) = agent.terminate();
    let (scode, stook) = server.terminate();
    println!("shutdown: second round: agent {acode} in {atook:?}, server {scode} in {stook:?}");
    assert_eq!(acode, 0);
    assert_eq!(scode, 0, "server exit code after SIGTERM");
    assert!(atook < DRAIN_DEADLINE && stook < DRAIN_DEADLINE);
    assert!(!agent.socket_path.exists() && !server.admin_socket.exists());
}

#[test]
fn server_sigterm_always_exits_zero() {
    // Which select! branch wins at shutdown is random, so stop the server many times.
    const CYCLES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::new(dir.path(), &[]);
    let mut codes = Vec::with_capacity(CYCLES);
    for _ in 0..CYCLES {
        server.restart();
        let (code, took) = server.terminate();
        assert!(took < DRAIN_DEADLINE, "drained in {took:?}");
        assert!(!server.admin_socket.exists(), "admin socket removed");
        codes.push(code);
    }
    let failed = codes.iter().filter(|c| **c != 0).count();
    let log = server.log_text();
    println!(
        "server SIGTERM: {failed}/{CYCLES} exits non-zero {codes:?}; {} \"stopped unexpectedly\" in the log",
        occurrences(&log, "a server component stopped unexpectedly")
    );
    assert_eq!(failed, 0, "exit codes after SIGTERM: {codes:?}");
}

#[test]
fn agent_sigterm_stops_cleanly() {
    // Which select! branch wins at shutdown is random, so stop the agent many times.
    const CYCLES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    let mut agent = AgentProc::new(&dir.path().join("a"), &server);
    let token = server.token(AGENT_ID);
    let fetch_ok = |agent: &AgentProc| agent.fetch_ids().is_ok_and(|ids| ids == [WORKLOAD_A]);
    for cycle in 0..CYCLES {
        let offset = agent.log_len();
        agent.spawn((cycle == 0).then_some(token.as_str()));
        let up = wait_for(Duration::from_secs(15), || fetch_ok(&agent).then_some(()));
        assert!(
            up.is_some(),
            "cycle {cycle}: agent never served:\n{}",
            agent.log_since(offset)
        );
        let (code, _) = agent.terminate();
        let log = agent.log_since(offset);
        assert!(
            !log.contains("panicked"),
            "cycle {cycle}: the agent panicked on SIGTERM:\n{log}"
        );
        assert_eq!(code, 0, "cycle {cycle}: exit code after SIGTERM:\n{log}");
        assert!(
            !agent.socket_path.exists(),
            "cycle {cycle}: the socket was left behind"
        );
        assert!(log.contains("stopped"), "cycle {cycle}:\n{log}");
    }
}
