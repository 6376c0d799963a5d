//! Agent failover: two servers on one PostgreSQL database (a fresh database per test), one
//! agent given both addresses. When the server it uses is killed (SIGKILL), the agent is
//! on the other within a second or two, its open Workload API stream never errors, and a
//! new entry created on the surviving server reaches that stream.

use std::time::Duration;

use tokio::time::Instant;

use common::proto::workload::X509svidRequest;
use tests::{AgentProc, ServerProc, TestDb, runtime, wait_for, with_header};

const NODE: &str = "spiffe://example.org/node/failover";
const BEFORE: &str = "spiffe://example.org/failover/before";
const AFTER: &str = "spiffe://example.org/failover/after";

fn uid_selector() -> String {
    format!("unix:uid:{}", nix::unistd::getuid())
}

/// Creates an entry for `spiffe_id` under the agent, through `server`.
fn entry(server: &ServerProc, spiffe_id: &str) {
    server.cli_json(&[
        "entry",
        "create",
        "--parent-id",
        NODE,
        "--spiffe-id",
        spiffe_id,
        "--selector",
        &uid_selector(),
    ]);
}

/// The agent log lines saying it connected to `address`.
fn connected_to(log: &str, address: &str) -> bool {
    log.lines()
        .any(|l| l.contains("connected to server") && l.contains(address))
}

#[test]
fn an_agent_whose_server_dies_moves_to_the_other_within_a_second() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let [mut a, b] = db.servers(dir.path(), ["a", "b"], &[]);
    // Both CAs in the bundle before the agent takes it, so either server is trusted.
    a.wait_bundle_cas(2, Duration::from_secs(20));

    // Server A first, then B.
    let mut agent = AgentProc::new(&dir.path().join("agent"), &a)
        .with_args(&["--server-address", &b.address()]);
    agent.restart(Some(&a.token(NODE)));
    a.wait_attested(NODE, Duration::from_secs(30));
    entry(&a, BEFORE);

    let rt = runtime();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let socket = agent.socket_path.clone();
    rt.spawn(async move {
        let mut client = tests::workload_client(&socket).await;
        let mut stream = match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    let ids: Vec<String> = msg.svids.into_iter().map(|s| s.spiffe_id).collect();
                    if tx.send(Ok(ids)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Err("the stream ended".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    // Waits for a message holding `id`; fails the test on a stream error.
    let mut wait_id = |id: &str, within: Duration| -> Instant {
        rt.block_on(async {
            let deadline = Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Ok(ids))) if ids.iter().any(|i| i == id) => return Instant::now(),
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => panic!("the X.509 stream failed: {e}"),
                    Ok(None) => panic!("the stream task ended"),
                    Err(_) => panic!("no SVID for {id} within {within:?}"),
                }
            }
        })
    };
    wait_id(BEFORE, Duration::from_secs(30));
    assert!(
        connected_to(&agent.log_text(), &a.address()),
        "the agent did not start on A:\n{}",
        agent.log_tail()
    );

    let offset = agent.log_len();
    let killed = Instant::now();
    a.kill();
    // The first sync stream opened after the kill is on B.
    let synced = wait_for(Duration::from_secs(10), || {
        agent
            .log_since(offset)
            .contains("sync stream open")
            .then(Instant::now)
    })
    .unwrap_or_else(|| panic!("no sync on B within 10 s:\n{}", agent.log_tail()));
    let failover = synced - killed;
    println!(
        "failover: {} ms from kill -9 of A to the agent's first sync on B",
        failover.as_millis()
    );
    let since = agent.log_since(offset);
    assert!(
        connected_to(&since, &b.address()),
        "the agent did not say it connected to B:\n{since}"
    );

    // Synced through B: an entry created there reaches the open stream.
    let created = Instant::now();
    entry(&b, AFTER);
    let arrived = wait_id(AFTER, Duration::from_secs(5));
    println!(
        "entry created on B reached the open stream in {} ms",
        (arrived - created).as_millis()
    );
    // The stream never errored (wait_id fails on an error); nothing failed since either.
    rt.block_on(async {
        while let Ok(m) = rx.try_recv() {
            assert!(m.is_ok(), "the X.509 stream failed: {m:?}");
        }
    });
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?}:\n{since}"
    );
}
