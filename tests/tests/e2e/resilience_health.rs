//! Health (issue 5): `/live`, `/ready` and the `healthcheck` subcommands say what they
//! claim. A server is ready once it serves; an agent is alive at once but ready only once it
//! can serve an SVID: not before its first sync, not with a persisted cache whose SVIDs have
//! all expired, and again once the server is back (within [`RECOVERY_BOUND`]).

use std::time::Duration;

use tests::{
    AGENT_ID, AgentProc, RECOVERY_BOUND, ServerProc, http_get, occurrences, only, status_of,
    unix_now, wait_for,
};
use tokio::time::Instant;

#[test]
fn health_endpoints() {
    let id = "spiffe://example.org/healthy";
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::new(dir.path(), &[]).with_health();
    server.restart();
    let server_health = server.health();
    let server_check = |s: &ServerProc| s.cli(&["healthcheck"]).status.success();

    assert_eq!(status_of(server_health, "/live"), Some(200));
    let ready = http_get(server_health, "/ready").unwrap();
    assert_eq!(ready.0, 200, "server /ready after start: {ready:?}");
    assert_eq!(status_of(server_health, "/nope"), Some(404));
    assert!(server_check(&server), "server healthcheck while up");

    server.create_entry(id, &["unix:uid:0"], &[]);
    let token = server.token(AGENT_ID);
    let mut agent = AgentProc::new(&dir.path().join("a"), &server).with_health();
    server.stop();
    assert!(!server_check(&server), "server healthcheck while down");
    assert!(
        http_get(server_health, "/live").is_err(),
        "server /live answers while the server is down"
    );

    // A fresh agent cannot attest without the server: alive, not ready.
    agent.restart(Some(&token));
    let live = http_get(agent.health(), "/live");
    assert!(matches!(&live, Ok((200, _))), "agent /live: {live:?}");
    let retried = wait_for(Duration::from_secs(20), || {
        (occurrences(&agent.log_text(), "node attestation failed; retrying") >= 2).then_some(())
    });
    assert!(
        retried.is_some(),
        "agent retries attestation:\n{}",
        agent.log_tail()
    );
    let not_ready = http_get(agent.health(), "/ready").unwrap();
    assert_eq!(
        not_ready.0, 503,
        "agent /ready before any sync: {not_ready:?}"
    );
    assert!(not_ready.1.contains("\"ready\":false"), "{not_ready:?}");
    let api_answers = agent.healthcheck();
    let fetch_down = agent.fetch_x509();
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
        (status_of(agent.health(), "/ready") == Some(200)).then_some(())
    });
    let took = restarted.elapsed();
    assert!(
        ready_after.is_some(),
        "agent not ready within {RECOVERY_BOUND:?} of the server restart:\n{}",
        agent.log_tail()
    );
    // Ready means it can serve.
    let served = only(agent.fetch_x509(), id);
    assert!(served.is_ok(), "ready agent serves: {served:?}");
    assert!(agent.healthcheck(), "agent healthcheck while up and ready");
    println!(
        "health: agent ready {:.1} s after the server restart; serves {}",
        took.as_secs_f64(),
        served.unwrap().serial
    );

    let (code, _) = agent.terminate();
    assert_eq!(code, 0);
    assert!(!agent.healthcheck(), "agent healthcheck while down");
    assert!(
        http_get(agent.health(), "/live").is_err(),
        "agent /live while down"
    );
    server.stop();
    assert!(!server_check(&server));
}

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
    let mut agent = AgentProc::new(&dir.path().join("a"), &server).with_health();
    agent.restart(Some(&server.token(AGENT_ID)));
    wait_for(Duration::from_secs(30), || {
        only(agent.fetch_x509(), id).ok()
    })
    .unwrap_or_else(|| panic!("no SVID within 30 s:\n{}", agent.log_tail()));
    assert_eq!(agent.terminate().0, 0);
    let persisted = unix_now();
    server.stop();
    // Everything persisted has expired once a full SVID lifetime (5.5 s) has passed.
    std::thread::sleep(Duration::from_secs(8));

    agent.restart(None);
    let fetch = agent.fetch_x509();
    assert!(
        fetch.is_err(),
        "precondition: nothing valid to serve {} s after persisting: {fetch:?}",
        unix_now() - persisted
    );
    let ready = http_get(agent.health(), "/ready").unwrap();
    println!("stale cache: fetch {fetch:?}; /ready {ready:?}");
    assert_eq!(
        ready.0, 503,
        "an agent that can serve no SVID must not report ready: {ready:?}"
    );

    server.restart();
    let back = wait_for(RECOVERY_BOUND, || {
        (status_of(agent.health(), "/ready") == Some(200)).then_some(())
    });
    assert!(back.is_some(), "ready once the server is back");
    assert!(only(agent.fetch_x509(), id).is_ok());
}
