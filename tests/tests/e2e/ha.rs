//! Several servers on one PostgreSQL database (a fresh one per test): a change made on
//! any server reaches the agents of every other through the change feed. Three servers
//! (A, B, C) share the database, each with its own CA; one agent is enrolled with A and
//! trusts A. An entry created on B reaches an open Workload API stream on A's agent; a
//! task started on B is usable there (X.509 and JWT); ending it on C removes its SVID from
//! the open stream and makes `ValidateJWTSVID` on A's agent refuse its token, each within
//! one second (measured and printed).

use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use serde_json::Value;
use tests::jwt::{validate_on, wait_refused};
use tests::{Cluster, ServerProc, TestDb, wait_for, with_header};
use tokio::time::Instant;

const STANDING: &str = "spiffe://example.org/ha/standing";
const FROM_B: &str = "spiffe://example.org/ha/from-b";
const JIT: &str = "spiffe://example.org/ha/jit";

async fn client(c: &Cluster) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(&c.agent.socket_path).await)
}

fn ids(r: &X509svidResponse) -> Vec<String> {
    let mut ids: Vec<String> = r.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    ids
}

async fn fetch_jwt(c: &Cluster, id: &str) -> Result<String, tonic::Status> {
    let r = client(c)
        .await
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["tools".into()],
            spiffe_id: id.into(),
        }))
        .await?
        .into_inner();
    Ok(r.svids[0].svid.clone())
}

/// `tessera-server task ARGS --output json` on `server`, which must succeed.
fn task(server: &ServerProc, args: &[&str]) -> Value {
    let mut all = vec!["task"];
    all.extend(args);
    server.cli_json(&all)
}

/// The next message of `stream` for which `want` holds, within `within`.
async fn next_where(
    stream: &mut tonic::Streaming<X509svidResponse>,
    within: Duration,
    want: impl Fn(&X509svidResponse) -> bool,
) -> Option<X509svidResponse> {
    tokio::time::timeout(within, async {
        loop {
            let m = stream.message().await.unwrap().expect("stream open");
            if want(&m) {
                return m;
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_on_any_server_reach_the_agents_of_every_other_within_a_second() {
    let db = TestDb::create();
    let args = ["--datastore", db.url.as_str()];
    // Server A with the agent, then B and C on the same database.
    let c = Cluster::start(&args);
    let [b, cc] = db.servers(c.dir.path(), ["b", "c"], &[]);

    // A standing identity created on A keeps a stream open on A's agent.
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    let first = wait_for(Duration::from_secs(30), || {
        let ids = c.agent.fetch_ids().ok()?;
        (ids == [STANDING]).then_some(ids)
    });
    assert!(first.is_some(), "A's agent never served its first entry");
    let mut cl = client(&c).await;
    let mut stream = cl
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let m = stream.message().await.unwrap().unwrap();
    assert_eq!(ids(&m), [STANDING]);

    // An entry created on B reaches the open stream on A's agent.
    let started = Instant::now();
    b.create_entry(FROM_B, &["unix:uid:0"], &[]);
    let got = next_where(&mut stream, Duration::from_secs(10), |m| {
        ids(m).contains(&FROM_B.to_owned())
    })
    .await;
    let entry_latency = started.elapsed();
    assert!(
        got.is_some(),
        "the entry created on B never reached A's agent\n{}",
        c.server.log_tail()
    );

    // A task started on B on a just-in-time entry created on B is usable on A's agent.
    let entry = b.create_entry(JIT, &["unix:uid:0"], &["--jit", "--x509-svid-ttl", "3600"]);
    let t = task(
        &b,
        &[
            "create",
            "--entry-id",
            &entry,
            "--reason",
            "ha e2e",
            "--audience",
            "tools",
            "--ttl",
            "300",
        ],
    );
    let task_id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "active", "{t}");
    let got = next_where(&mut stream, Duration::from_secs(10), |m| {
        ids(m).contains(&JIT.to_owned())
    })
    .await;
    assert!(
        got.is_some(),
        "the task started on B never made A's agent serve its SVID\n{}",
        c.agent.log_tail()
    );
    let token = wait_for(Duration::from_secs(10), || {
        futures::executor::block_on(fetch_jwt(&c, JIT)).ok()
    })
    .expect("a JWT-SVID under the task from A's agent");
    validate_on(&c.agent.socket_path, "tools", &token)
        .await
        .expect("the token validates on A's agent while the task is active");

    // Ending the task on C: the SVID leaves the open stream and the token is refused on
    // A's agent, within a second.
    let started = Instant::now();
    let ended = task(&cc, &["complete", &task_id, "--reason", "done"]);
    assert_eq!(ended["state"], "completed", "{ended}");
    let cli_took = started.elapsed();
    let update = next_where(&mut stream, Duration::from_secs(5), |m| {
        !ids(m).contains(&JIT.to_owned())
    })
    .await
    .expect("A's stream drops the SVID of the task ended on C");
    let stream_latency = started.elapsed();
    assert_eq!(ids(&update), [FROM_B, STANDING]);
    let (rejected, validate_latency) = wait_refused(
        &c.agent.socket_path,
        "tools",
        &token,
        started,
        "the token of the task ended on C, on A's agent",
    )
    .await;
    println!(
        "cross-server: entry on B → A's stream {entry_latency:?}; task end on C (CLI {cli_took:?}) → A's stream {stream_latency:?}, → ValidateJWTSVID refusal on A {validate_latency:?}"
    );
    assert!(
        rejected.message().contains("has ended (completed)"),
        "{rejected:?}"
    );
    assert!(
        stream_latency < Duration::from_secs(1),
        "{stream_latency:?}"
    );
    assert!(
        validate_latency < Duration::from_secs(1),
        "{validate_latency:?}"
    );

    // The feed holds the changes of all three servers, numbered without gaps.
    assert_eq!(
        db.query("SELECT count(DISTINCT origin) FROM changes"),
        "3",
        "{}",
        db.query("SELECT string_agg(seq || ' ' || kind || ' ' || origin, E'\\n' ORDER BY seq) FROM changes")
    );
    assert_eq!(
        db.query("SELECT max(seq) = count(*) FROM changes"),
        "t",
        "gap-free numbering"
    );
    for server in [&c.server, &b, &cc] {
        let v = server.cli_json(&["audit", "verify"]);
        assert_eq!(v["ok"], true, "{v}");
    }
}
