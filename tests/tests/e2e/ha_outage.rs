//! A database outage under several servers: two servers share a PostgreSQL cluster of the
//! test's own, each with an agent; a workload keeps a Workload API stream open on A's
//! agent. The cluster stops as in a crash (`pg_ctl stop -m immediate`): a write is refused
//! with an Unavailable error naming the datastore, both servers report not ready (503), and
//! both agents keep serving the SVIDs they hold, the stream never failing. The cluster
//! starts again and nothing else is touched: both servers are ready again, writes succeed,
//! each server's change feed `LISTEN`s again, and an entry created on B reaches the stream
//! on A's agent. How long each recovery took is printed.

use std::process::Output;
use std::time::Duration;

use tests::fetch::SvidStream;
use tests::{
    AgentProc, PgCluster, ServerProc, http_get, output_text, status_of, uid_selector, wait_for,
};
use tokio::time::Instant;

const NODE_A: &str = "spiffe://example.org/node/outage-a";
const NODE_B: &str = "spiffe://example.org/node/outage-b";
const ON_A: &str = "spiffe://example.org/outage/on-a";
const ON_B: &str = "spiffe://example.org/outage/on-b";
const DURING: &str = "spiffe://example.org/outage/during";
const AFTER: &str = "spiffe://example.org/outage/after";
const FROM_B: &str = "spiffe://example.org/outage/from-b";

/// How long a server may take to notice the datastore went or came back: it probes every
/// 2 s, a probe gives up after 3 s (server/src/readiness.rs), plus room for a loaded
/// machine and the pool replacing its broken connections (as `readiness.rs`).
const NOTICE_BOUND: Duration = Duration::from_secs(30);
/// How long a refused write may take: the pool waits 10 s for a connection
/// (server/src/datastore/postgres.rs), plus room.
const REFUSAL_BOUND: Duration = Duration::from_secs(20);

/// `entry create` for `spiffe_id` under `node` on `server`, as the CLI ran.
fn create(server: &ServerProc, node: &str, spiffe_id: &str) -> Output {
    server.cli(&[
        "entry",
        "create",
        "--parent-id",
        node,
        "--spiffe-id",
        spiffe_id,
        "--selector",
        &uid_selector(),
        "--output",
        "json",
    ])
}

/// How many sessions of the cluster are `LISTEN`ing (their last statement), as the change
/// feed's listener of each server is.
fn listeners(pg: &PgCluster) -> usize {
    pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'",
    )
    .parse()
    .unwrap_or(0)
}

#[test]
fn a_database_outage_under_two_servers_is_survived_and_recovered_without_a_restart() {
    let mut pg = PgCluster::start();
    let url = pg.url();
    let named = format!("datastore {url}");
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = ["a", "b"].map(|name| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let mut s = ServerProc::new(&home, &["--datastore", &url]).with_health();
        s.restart();
        s
    });
    a.wait_bundle_cas(2, Duration::from_secs(20));
    b.wait_bundle_cas(2, Duration::from_secs(20));
    let mut agent_a = AgentProc::new(&dir.path().join("agent-a"), &a);
    agent_a.restart(Some(&a.token(NODE_A)));
    a.wait_attested(NODE_A, Duration::from_secs(30));
    let mut agent_b = AgentProc::new(&dir.path().join("agent-b"), &b);
    agent_b.restart(Some(&b.token(NODE_B)));
    b.wait_attested(NODE_B, Duration::from_secs(30));
    for (server, node, id) in [(&a, NODE_A, ON_A), (&b, NODE_B, ON_B)] {
        let out = create(server, node, id);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let mut stream = SvidStream::open(&agent_a.socket_path);
    stream.wait_id(ON_A, Duration::from_secs(30));
    let served_b = wait_for(Duration::from_secs(30), || {
        (agent_b.fetch_ids().ok()? == [ON_B]).then_some(())
    });
    assert!(served_b.is_some(), "B's agent never served {ON_B}");
    // Each server's change feed listens.
    assert!(
        wait_for(Duration::from_secs(10), || (listeners(&pg) == 2)
            .then_some(()))
        .is_some(),
        "not two LISTENing sessions: {}",
        listeners(&pg)
    );

    pg.stop_immediate();
    let stopped = Instant::now();

    // Meanwhile (the pool waits for a connection before it gives up), a write is refused
    // with an error saying the datastore is unavailable and naming it...
    let (refused, refusal, noticed) = std::thread::scope(|s| {
        let write = s.spawn(|| {
            let started = Instant::now();
            let out = create(&a, NODE_A, DURING);
            (out, started.elapsed())
        });
        // ...and both servers report not ready, naming the datastore, and stay alive.
        let mut noticed = Vec::new();
        for (server, who) in [(&a, "A"), (&b, "B")] {
            let got = wait_for(NOTICE_BOUND, || {
                http_get(server.health(), "/ready")
                    .ok()
                    .filter(|(s, _)| *s == 503)
            });
            let (_, body) = got.unwrap_or_else(|| {
                panic!(
                    "{who}'s /ready not 503 {NOTICE_BOUND:?} after the datastore stopped:\n{}",
                    server.log_tail()
                )
            });
            noticed.push(stopped.elapsed());
            assert!(body.contains(&named), "{who}'s /ready body: {body}");
            assert_eq!(status_of(server.health(), "/live"), Some(200), "{who}");
        }
        let (out, took) = write.join().expect("the write thread");
        (out, took, noticed)
    });
    assert!(!refused.status.success(), "{}", output_text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unavailable") && stderr.contains(&named),
        "the refusal names the unavailable datastore: {}",
        output_text(&refused)
    );
    assert!(refusal < REFUSAL_BOUND, "the refusal took {refusal:?}");
    println!("database outage: a write during it: {}", stderr.trim());

    // The agents keep serving what they hold; the open stream has not failed.
    assert_eq!(agent_a.fetch_ids().as_deref(), Ok(&[ON_A.to_owned()][..]));
    assert_eq!(agent_b.fetch_ids().as_deref(), Ok(&[ON_B.to_owned()][..]));
    stream.assert_no_error();

    pg.start_again();
    let restarted = Instant::now();

    // Ready again, without restarting anything.
    let mut ready_after = Vec::new();
    for (server, who) in [(&a, "A"), (&b, "B")] {
        let back = wait_for(NOTICE_BOUND, || {
            (status_of(server.health(), "/ready") == Some(200)).then(|| restarted.elapsed())
        });
        ready_after.push(back.unwrap_or_else(|| {
            panic!(
                "{who}'s /ready not 200 {NOTICE_BOUND:?} after the datastore restarted:\n{}\n{}",
                server.log_tail(),
                pg.log_tail()
            )
        }));
    }
    // Writes succeed.
    let out = create(&a, NODE_A, AFTER);
    assert!(
        out.status.success(),
        "write on A after the outage: {}",
        output_text(&out)
    );
    let write_after = restarted.elapsed();
    // The change feed listens again on both servers, by itself.
    let listening = wait_for(NOTICE_BOUND, || {
        (listeners(&pg) == 2).then(|| restarted.elapsed())
    });
    let listen_after = listening.unwrap_or_else(|| {
        panic!(
            "the change feeds did not LISTEN again ({} sessions):\n{}\n{}",
            listeners(&pg),
            a.log_tail(),
            b.log_tail()
        )
    });
    // A change made on B reaches the open stream on A's agent.
    let created = Instant::now();
    let out = create(&b, NODE_A, FROM_B);
    assert!(
        out.status.success(),
        "write on B after the outage: {}",
        output_text(&out)
    );
    let arrived = stream.wait_id(FROM_B, Duration::from_secs(10));
    let feed_latency = arrived - created;
    stream.assert_no_error();
    println!(
        "database outage: write refused in {} ms; /ready 503 on A {} ms, on B {} ms after the stop; after the restart: /ready 200 on A {} ms, on B {} ms, a write succeeded {} ms, both feeds LISTENing {} ms; entry on B → A's stream {} ms",
        refusal.as_millis(),
        noticed[0].as_millis(),
        noticed[1].as_millis(),
        ready_after[0].as_millis(),
        ready_after[1].as_millis(),
        write_after.as_millis(),
        listen_after.as_millis(),
        feed_latency.as_millis()
    );
    assert!(
        feed_latency < Duration::from_secs(2),
        "entry on B → A's stream took {feed_latency:?}"
    );
}
