//! Leavers: `owner offboard` revokes the owner's open tasks on every open Workload API
//! stream within a second and disables their entries (agents drop them at once); a second
//! run changes nothing; evicting an agent ends the tasks requested under its identities.
//!
//! The test process runs as root (operator `user:root`, workload uid 0); the leaver is
//! `user:pat`, who owns entries but never calls anything.

use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{X509svidRequest, X509svidResponse};
use serde_json::{Value, json};
use tests::{AGENT_ID, Cluster, wait_for, with_header};
use tokio::time::Instant;

const STANDING: &str = "spiffe://example.org/standing/root";
const PAT_DB: &str = "spiffe://example.org/jit/pat-db";
const PAT_WEB: &str = "spiffe://example.org/pat/web";
const JIT_DB: &str = "spiffe://example.org/jit/db";
const JIT_OTHER: &str = "spiffe://example.org/jit/other";

const POLICIES: &str = r#"
@id("operators") @max_ttl("1h")
permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource);

@id("workloads-need-approval") @approval("required") @max_ttl("10m")
permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource);

@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
"#;

fn cluster() -> (Cluster, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("tasks.cedar"), POLICIES).unwrap();
    let dir = policies.path().to_str().unwrap().to_owned();
    let c = Cluster::start(&["--policy-dir", &dir]);
    (c, policies)
}

async fn client(c: &Cluster) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(&c.agent.socket_path).await)
}

async fn fetch(c: &Cluster) -> Option<X509svidResponse> {
    let mut s = client(c)
        .await
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .ok()?
        .into_inner();
    s.message().await.ok()?
}

fn ids(r: &X509svidResponse) -> Vec<String> {
    let mut v: Vec<String> = r.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    v.sort();
    v
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect();
    out.sort();
    out
}

fn create_task(c: &Cluster, entry_id: &str) -> String {
    let t = c.server.cli_json(&[
        "task",
        "create",
        "--entry-id",
        entry_id,
        "--reason",
        "maintenance",
        "--ttl",
        "600",
    ]);
    assert_eq!(t["state"], "active", "{t}");
    t["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn offboarding_an_owner_revokes_their_tasks_on_open_streams_and_disables_their_entries() {
    let (c, _p) = cluster();
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    let pat_db = c
        .server
        .create_entry(PAT_DB, &["unix:uid:0"], &["--jit", "--owner", "user:pat"]);
    let pat_web = c
        .server
        .create_entry(PAT_WEB, &["unix:uid:0"], &["--owner", "user:pat"]);
    let task_id = create_task(&c, &pat_db);

    let all = {
        let mut v = vec![PAT_DB.to_owned(), PAT_WEB.to_owned(), STANDING.to_owned()];
        v.sort();
        v
    };
    wait_for(Duration::from_secs(10), || {
        let r = futures::executor::block_on(fetch(&c))?;
        (ids(&r) == all).then_some(())
    })
    .expect("the task's SVID and pat's standing SVID are served");

    let mut cl = client(&c).await;
    let mut stream = cl
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(ids(&first), all);

    let started = Instant::now();
    let done = c.server.cli_json(&[
        "owner",
        "offboard",
        "--owner",
        "user:pat",
        "--reason",
        "left the company",
    ]);
    assert_eq!(
        strings(&done["ended_tasks"]),
        vec![task_id.clone()],
        "{done}"
    );
    let mut disabled = vec![pat_db.clone(), pat_web.clone()];
    disabled.sort();
    assert_eq!(strings(&done["disabled_entries"]), disabled, "{done}");

    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = stream.message().await.unwrap().unwrap();
            if ids(&m) == vec![STANDING.to_owned()] {
                return;
            }
        }
    })
    .await
    .expect("a stream update with only the standing SVID");
    let latency = started.elapsed();
    println!("owner offboard → stream without pat's SVIDs {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    let shown = c.server.cli_json(&["task", "show", &task_id]);
    assert_eq!(shown["state"], "revoked", "{shown}");
    assert_eq!(shown["end_reason"], "owner offboarded: left the company");
    let e = c
        .server
        .cli_json(&["entry", "show", "--entry-id", &pat_web]);
    assert_eq!(
        e["disabled_reason"], "owner offboarded: left the company",
        "{e}"
    );
    assert!(e["disabled_at"].as_i64().is_some(), "{e}");
    // A fresh fetch does not bring them back.
    let r = fetch(&c).await.expect("standing SVID still served");
    assert_eq!(ids(&r), vec![STANDING.to_owned()]);

    // Again: nothing more, and it says so.
    let again = c
        .server
        .cli_json(&["owner", "offboard", "--owner", "user:pat"]);
    assert_eq!(again["ended_tasks"], json!([]), "{again}");
    assert_eq!(again["disabled_entries"], json!([]), "{again}");
    let out = c.server.cli(&["owner", "offboard", "--owner", "user:pat"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Nothing left to end or disable for user:pat.\n"
    );
    // A malformed owner is refused.
    let bad = c.server.cli(&["owner", "offboard", "--owner", "pat"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("user:NAME"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // The audit log names who offboarded whom, once per run.
    let log = c.server.cli(&["audit", "show", "--output", "json"]);
    let offboarded: Vec<Value> = String::from_utf8_lossy(&log.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "owner.offboarded")
        .collect();
    assert_eq!(offboarded.len(), 3, "{offboarded:?}");
    assert_eq!(offboarded[0]["actor"], "user:root", "{}", offboarded[0]);
    assert_eq!(offboarded[0]["subject"], "user:pat", "{}", offboarded[0]);
}

#[test]
fn evicting_an_agent_ends_the_tasks_requested_under_its_identities() {
    let (c, _p) = cluster();
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    c.server.create_entry(JIT_DB, &["unix:uid:0"], &["--jit"]);
    let other = c
        .server
        .create_entry(JIT_OTHER, &["unix:uid:0"], &["--jit"]);
    // A workload asks through the agent (pending approval); an operator's task lives on it.
    let out = c.agent.cli(&[
        "task",
        "begin",
        "--bind",
        "selectors",
        "--spiffe-id",
        JIT_DB,
        "--reason",
        "tool call",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["requester"], STANDING, "{w}");
    assert_eq!(w["state"], "pending_approval", "{w}");
    let by_workload = w["id"].as_str().unwrap().to_owned();
    let on_agent = create_task(&c, &other);

    c.server
        .cli_json(&["agent", "evict", "--spiffe-id", AGENT_ID]);
    for id in [&by_workload, &on_agent] {
        let t = c.server.cli_json(&["task", "show", id]);
        assert_eq!(t["state"], "revoked", "{t}");
        assert_eq!(t["end_reason"], "agent evicted", "{t}");
    }
}
