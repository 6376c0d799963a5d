//! Lifecycle: enrollment, restarts, single-use and expiring join tokens, eviction, bans,
//! graceful server restarts and server crashes, and the privacy of the server's state.
//!
//! Agent runs that are *expected to fail* are driven by `AgentProc::run_until_exit`, which
//! waits for the exit, rather than `AgentProc::start`/`restart`, which wait for the Workload
//! API socket: an agent refused at once binds and removes its socket within a few
//! milliseconds, so waiting for it would race with the very failure under test.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tests::{
    AGENT_ID, AgentProc, Cluster, RECOVERY_BOUND, ServerProc, assert_nobody_can_reach, bin,
    command_as_nobody, file_mode, occurrences, wait_for,
};
use tokio::time::Instant;

const WORKLOAD_A: &str = "spiffe://example.org/workload/a";
const WORKLOAD_B: &str = "spiffe://example.org/workload/b";
const WORKLOAD_C: &str = "spiffe://example.org/workload/c";
const WORKLOAD_LATE: &str = "spiffe://example.org/workload/late";
const SECOND_AGENT_ID: &str = "spiffe://example.org/node/second";

/// How long an agent refused by the server may take to exit by itself.
const REFUSED_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn entries(server: &ServerProc) -> Vec<Value> {
    server.cli_json(&["entry", "show"])["entries"]
        .as_array()
        .expect("entries array")
        .clone()
}

/// Fetches (as root) until the caller receives exactly `want` (SVIDs for entries created
/// in a row may arrive in more than one update); fails after `timeout`.
fn wait_fetches(agent: &AgentProc, want: &[&str], timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let mut last = Err(String::new());
    let ok = wait_for(timeout, || {
        last = agent.fetch_ids();
        if last.as_ref().is_ok_and(|got| got == want) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    assert!(
        ok.is_some(),
        "uid 0 did not receive exactly {want:?} within {timeout:?}; last fetch: {last:?}\n{}",
        agent.log_tail()
    );
    t0.elapsed()
}

fn assert_fetches(agent: &AgentProc, want: &[&str]) {
    wait_fetches(agent, want, Duration::from_secs(15));
}

#[test]
fn agent_restart_reattests_from_persisted_svid() {
    let mut c = Cluster::start(&[]);
    c.server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));
    let before = c.server.agents();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["spiffe_id"], AGENT_ID);

    c.agent.stop();
    let log = std::fs::read_to_string(&c.agent.log).unwrap();
    assert!(
        !log.contains("panicked") && !c.agent.socket_path.exists(),
        "SIGTERM must stop the agent cleanly and remove its socket (else `restart` \
         sees the stale socket and returns before the new agent listens):\n{log}"
    );
    let key = c.agent.data_dir.join("agent_svid.key");
    assert_eq!(file_mode(&key), 0o600, "agent SVID key {}", key.display());
    assert!(c.agent.data_dir.join("agent_svid.pem").exists());

    c.agent.restart(None);
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));
    let after = c.server.agents();
    assert_eq!(after.len(), 1, "still exactly one agent: {after:?}");
    assert_eq!(after[0]["spiffe_id"], AGENT_ID);
    // Same record: not attested again, same SVID.
    assert_eq!(after[0]["attested_at"], before[0]["attested_at"]);
    assert_eq!(after[0]["serial"], before[0]["serial"]);
    let log = std::fs::read_to_string(&c.agent.log).unwrap();
    assert_eq!(
        occurrences(&log, "node attested with join token"),
        1,
        "{log}"
    );
    assert_eq!(
        occurrences(&log, "using the persisted agent SVID"),
        1,
        "{log}"
    );
    assert_eq!(file_mode(&key), 0o600, "key mode after restart");
}

#[test]
fn join_token_is_single_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let token = server.token(AGENT_ID);
    let first = AgentProc::start(&dir.path().join("first"), &server, Some(&token));
    server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    assert_fetches(&first, &[WORKLOAD_A]);
    assert_eq!(server.agent_ids(), [AGENT_ID]);

    let mut second = AgentProc::new(&dir.path().join("second"), &server);
    let (code, log) = second.run_until_exit(Some(&token), REFUSED_EXIT_TIMEOUT);
    assert_ne!(code, 0, "second agent with a used token must fail:\n{log}");
    assert!(
        log.contains("join token is invalid or has already been used"),
        "second agent log should say the token is used:\n{log}"
    );
    assert!(
        !second.data_dir.join("agent_svid.key").exists(),
        "a refused agent persists no identity"
    );
    assert_eq!(server.agent_ids(), [AGENT_ID], "still only the first agent");
    // The first agent is unaffected.
    assert_fetches(&first, &[WORKLOAD_A]);
}

#[test]
fn expired_join_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let t = server.cli_json(&["token", "generate", "--spiffe-id", AGENT_ID, "--ttl", "1"]);
    let token = t["token"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let mut agent = AgentProc::new(&dir.path().join("a"), &server);
    let (code, log) = agent.run_until_exit(Some(&token), REFUSED_EXIT_TIMEOUT);
    assert_ne!(code, 0, "agent with an expired token must fail:\n{log}");
    assert!(log.contains("expired"), "log should say expired:\n{log}");
    assert!(server.agent_ids().is_empty(), "no agent was enrolled");
}

#[test]
fn evicted_agent_is_refused_at_once() {
    let mut c = Cluster::start(&[]);
    c.server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));
    let serial_before = c.server.agents()[0]["serial"].clone();

    let t0 = Instant::now();
    let out = c.server.cli(&["agent", "evict", "--spiffe-id", AGENT_ID]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = c.agent.wait_exit(Duration::from_secs(10));
    let latency = t0.elapsed();
    println!("eviction latency (evict command issued -> agent exited): {latency:?}");
    let code = code.expect("evicted agent did not exit within 10 s");
    assert_ne!(code, 0, "an evicted agent exits with an error");
    assert!(
        latency <= Duration::from_secs(2),
        "evicted agent took {latency:?} to exit (limit 2 s)"
    );
    let log = std::fs::read_to_string(&c.agent.log).unwrap();
    assert!(
        log.contains("no longer accepts this agent"),
        "agent log should explain the refusal:\n{log}"
    );
    for f in ["agent_svid.key", "agent_svid.pem"] {
        assert!(
            !c.agent.data_dir.join(f).exists(),
            "{f} must be removed after eviction"
        );
    }
    assert!(!c.agent.socket_path.exists(), "Workload API socket removed");
    assert!(c.server.agent_ids().is_empty(), "agent record removed");

    // Without a token it cannot come back.
    let (code, log) = c.agent.run_until_exit(None, REFUSED_EXIT_TIMEOUT);
    assert_ne!(code, 0, "restart without a token must fail:\n{log}");
    assert!(
        log.contains("--join-token"),
        "log should say to use a join token:\n{log}"
    );
    assert!(c.server.agent_ids().is_empty());

    // With a new token it works again.
    let token = c.server.token(AGENT_ID);
    c.agent.restart(Some(&token));
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));
    let after = c.server.agents();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["spiffe_id"], AGENT_ID);
    assert_ne!(after[0]["serial"], serial_before, "a new agent SVID");
}

#[test]
fn agent_evicted_while_stopped_is_refused_on_restart() {
    let mut c = Cluster::start(&[]);
    c.server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));
    c.agent.stop();
    let out = c.server.cli(&["agent", "evict", "--spiffe-id", AGENT_ID]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.agent.data_dir.join("agent_svid.key").exists(),
        "the stopped agent still holds its persisted SVID"
    );
    // The persisted SVID is still valid by date, but the server no longer knows it.
    let (code, log) = c.agent.run_until_exit(None, REFUSED_EXIT_TIMEOUT);
    assert_ne!(
        code, 0,
        "an evicted agent must not come back without a token:\n{log}"
    );
    assert!(log.contains("no longer accepts this agent"), "{log}");
    for f in ["agent_svid.key", "agent_svid.pem"] {
        assert!(!c.agent.data_dir.join(f).exists(), "{f} must be removed");
    }
    assert!(c.server.agent_ids().is_empty(), "not re-enrolled");
}

#[test]
fn banned_agent_cannot_reattest() {
    let mut c = Cluster::start(&[]);
    c.server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));

    let t0 = Instant::now();
    let banned = c
        .server
        .cli_json(&["agent", "ban", "--spiffe-id", AGENT_ID]);
    assert_eq!(banned["banned"], true, "{banned}");
    let code = c.agent.wait_exit(Duration::from_secs(10));
    println!(
        "ban latency (ban command issued -> agent exited): {:?}",
        t0.elapsed()
    );
    assert_ne!(code.expect("banned agent did not exit"), 0);
    assert!(!c.agent.data_dir.join("agent_svid.key").exists());
    let list = c.server.agents();
    assert_eq!(list.len(), 1, "the ban is recorded: {list:?}");
    assert_eq!(list[0]["spiffe_id"], AGENT_ID);
    assert_eq!(list[0]["banned"], true);

    // A new token for the banned ID is refused (twice: the ban does not wear off).
    for _ in 0..2 {
        let token = c.server.token(AGENT_ID);
        let (code, log) = c.agent.run_until_exit(Some(&token), REFUSED_EXIT_TIMEOUT);
        assert_ne!(code, 0, "a banned agent must not attest:\n{log}");
        assert!(log.contains("banned"), "log should say banned:\n{log}");
        assert!(!c.agent.data_dir.join("agent_svid.key").exists());
        assert_eq!(c.server.agents()[0]["banned"], true);
    }

    // Evicting removes the record (and the ban); a new token then works.
    let out = c.server.cli(&["agent", "evict", "--spiffe-id", AGENT_ID]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.server.agent_ids().is_empty());
    let token = c.server.token(AGENT_ID);
    c.agent.restart(Some(&token));
    assert_eq!(c.agent.fetch_ids(), Ok(vec![WORKLOAD_A.to_owned()]));
    let list = c.server.agents();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["banned"], false);
}

#[test]
fn server_restart_loses_nothing() {
    let mut c = Cluster::start(&[]);
    for id in [WORKLOAD_A, WORKLOAD_B, WORKLOAD_C] {
        c.server.create_entry(id, &["unix:uid:0"], &[]);
    }
    let unused_token = c.server.token(SECOND_AGENT_ID);
    let all = [WORKLOAD_A, WORKLOAD_B, WORKLOAD_C];
    assert_fetches(&c.agent, &all);
    let entries_before = c.server.cli_json(&["entry", "show"]);
    let agents_before = c.server.cli_json(&["agent", "list"]);
    assert_eq!(entries_before["entries"].as_array().unwrap().len(), 3);
    assert_eq!(agents_before["agents"].as_array().unwrap().len(), 1);

    c.server.stop();
    // Still served from the agent's cache while the server is down.
    assert_fetches(&c.agent, &all);
    c.server.restart();
    let restarted = Instant::now();

    assert_eq!(c.server.cli_json(&["entry", "show"]), entries_before);
    assert_eq!(c.server.cli_json(&["agent", "list"]), agents_before);

    // The running agent reconnects by itself: a new entry reaches it.
    c.server.create_entry(WORKLOAD_LATE, &["unix:uid:0"], &[]);
    wait_fetches(
        &c.agent,
        &[WORKLOAD_A, WORKLOAD_B, WORKLOAD_C, WORKLOAD_LATE],
        RECOVERY_BOUND,
    );
    let recovery = restarted.elapsed();
    println!("recovery after server restart (server healthy -> new entry delivered): {recovery:?}");

    // The token created before the restart still works, once.
    let dir = c.dir.path();
    let second = AgentProc::start(&dir.join("second"), &c.server, Some(&unused_token));
    let enrolled = wait_for(Duration::from_secs(20), || {
        (c.server.agent_ids().len() == 2).then_some(())
    });
    assert!(
        enrolled.is_some(),
        "second agent did not enroll:\n{}",
        second.log_tail()
    );
    assert_eq!(
        c.server.agent_ids(),
        [SECOND_AGENT_ID, AGENT_ID],
        "both agents listed (sorted)"
    );
    let mut third = AgentProc::new(&dir.join("third"), &c.server);
    let (code, log) = third.run_until_exit(Some(&unused_token), REFUSED_EXIT_TIMEOUT);
    assert_ne!(code, 0, "the token is consumed:\n{log}");
    assert!(log.contains("invalid or has already been used"), "{log}");
    assert_eq!(c.server.agent_ids().len(), 2);
}

#[test]
fn kill9_server_during_entry_burst_loses_nothing_acknowledged() {
    const WORKERS: usize = 2;
    const KILL_AFTER: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &[]);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (acked, unexpected) = (Arc::clone(&acked), Arc::clone(&unexpected));
            let (killed, stop) = (Arc::clone(&killed), Arc::clone(&stop));
            let socket = server.admin_socket.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let spiffe_id = format!("spiffe://example.org/burst/w{w}/{i}");
                    let out = Command::new(bin("tessera-server"))
                        .args(["entry", "create", "--parent-id"])
                        .arg("spiffe://example.org/node/burst")
                        .args(["--spiffe-id", &spiffe_id, "--selector", "unix:uid:1000"])
                        .args(["--output", "json", "--admin-socket"])
                        .arg(&socket)
                        .output()
                        .unwrap();
                    if out.status.success() {
                        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                        let id = v["id"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push((id, spiffe_id));
                    } else {
                        if !killed.load(Ordering::SeqCst) {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&out.stderr).into_owned());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    let burst = wait_for(Duration::from_secs(60), || {
        (acked.lock().unwrap().len() >= KILL_AFTER).then_some(())
    });
    killed.store(true, Ordering::SeqCst);
    server.kill();
    let at_kill = acked.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        burst.is_some(),
        "fewer than {KILL_AFTER} creations succeeded"
    );
    assert_eq!(
        *unexpected.lock().unwrap(),
        Vec::<String>::new(),
        "creations failed before the kill"
    );
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} creations acknowledged before SIGKILL ({at_kill} counted at the kill)",
        acked.len()
    );

    server.restart();
    for (id, spiffe_id) in &acked {
        let out = server.cli(&["entry", "show", "--entry-id", id, "--output", "json"]);
        assert!(
            out.status.success(),
            "acknowledged entry {id} ({spiffe_id}) lost after kill -9: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["spiffe_id"], spiffe_id.as_str());
    }
    // At most the requests in flight at the kill may have committed without an answer.
    let stored = entries(&server).len();
    assert!(
        (acked.len()..=acked.len() + WORKERS).contains(&stored),
        "{stored} entries stored, {} acknowledged",
        acked.len()
    );
}

#[test]
fn server_state_files_are_private() {
    let c = Cluster::start(&[]);
    c.server.create_entry(WORKLOAD_A, &["unix:uid:0"], &[]);
    let data = &c.server.data_dir;
    assert_eq!(
        file_mode(data) & 0o077,
        0,
        "server data dir {}",
        data.display()
    );
    // The CA key lives in `ca.key` (or, with CA rotation, in `ca_state.json`); it must
    // exist and be private.
    let ca_key = ["ca.key", "ca_state.json"]
        .iter()
        .map(|f| data.join(f))
        .find(|p| p.exists())
        .expect("no CA key file (ca.key or ca_state.json) in the data dir");
    let text = std::fs::read_to_string(&ca_key).unwrap();
    assert!(
        text.contains("PRIVATE KEY"),
        "{} holds no key",
        ca_key.display()
    );
    assert_eq!(file_mode(&ca_key), 0o600, "{}", ca_key.display());
    assert_eq!(
        file_mode(&data.join("datastore.sqlite3")),
        0o600,
        "datastore"
    );
    // Every other state file too: only certificate-only PEM files may be readable.
    let mut checked = Vec::new();
    for f in std::fs::read_dir(data).unwrap() {
        let path = f.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let public_cert = text.contains("BEGIN CERTIFICATE") && !text.contains("PRIVATE");
        if !public_cert {
            assert_eq!(file_mode(&path), 0o600, "{} is not private", path.display());
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    println!("private server state files: {checked:?}");
    let socket = &c.server.admin_socket;
    assert_eq!(file_mode(socket), 0o600, "admin socket");
    let before = entries(&c.server);

    // Otherwise "Permission denied" below could come from a directory, not the socket.
    assert_nobody_can_reach(socket);
    let as_nobody = |args: &[&str]| {
        command_as_nobody("tessera-server")
            .args(args)
            .arg("--admin-socket")
            .arg(socket)
            .output()
            .unwrap()
    };
    let create = [
        "entry",
        "create",
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        "spiffe://example.org/intruder",
        "--selector",
        "unix:uid:65534",
    ];
    for args in [&["entry", "show"][..], &create[..]] {
        let out = as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "uid 65534 ran {args:?}");
        assert!(err.contains("Permission denied"), "{args:?}: {err}");
    }
    // Even with the socket opened up, the server checks the caller's uid.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let results: Vec<_> = [&["entry", "show"][..], &create[..]]
        .iter()
        .map(|args| (args.to_vec(), as_nobody(args)))
        .collect();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (args, out) in results {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "uid 65534 ran {args:?}");
        assert!(err.contains("restricted to root"), "{args:?}: {err}");
    }
    assert_eq!(entries(&c.server), before, "nothing changed");
}
