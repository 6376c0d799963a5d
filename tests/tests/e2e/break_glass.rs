//! Break-glass tasks (`--break-glass`): where a policy allowing the request carries
//! `@break_glass("allowed")` for the principal, a task that normally waits for an approver
//! starts at once, capped by `--break-glass-max-ttl`; anyone else is refused and nothing
//! is stored. Its start and its end reach a real HTTPS SET receiver as signed events; it
//! is flagged in the access review and on the task until an operator other than the
//! requester (here `nobody`, in the admin group) acknowledges it, once, with a note; the
//! audit log records all of it. Both an operator's task and a workload's (through
//! `tessera-agent task begin --break-glass`).

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tests::web::WebPki;
use tests::{Cluster, assert_nobody_can_reach, command_as_nobody, free_port, wait_for};

use crate::set_push::{EVENT, Receiver, audit, claims, verify};

const JIT_DB: &str = "spiffe://example.org/jit/db";
const OTHER_DB: &str = "spiffe://example.org/other/db";
const JIT_TOOLS: &str = "spiffe://example.org/jit/tools";
const STANDING: &str = "spiffe://example.org/standing/runtime";

/// Operators and workloads need approval; root may break glass on `/jit/*` entries only
/// (not on `/other/*`); workloads may break glass everywhere.
const POLICIES: &str = r#"
@id("operators") @approval("required") @max_ttl("1h")
permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource);

@id("root-breaks-glass") @break_glass("allowed") @max_ttl("1h")
permit(principal == Tessera::User::"root", action == Tessera::Action::"begin_task", resource)
when { resource.path like "/jit/*" };

@id("workloads") @approval("required") @break_glass("allowed")
permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource);

@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
"#;

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {:?}", out.stdout))
}

/// Asserts `out` failed with an error message (the JSON error object's) containing `want`.
fn refused(out: &Output, want: &str) {
    let raw = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should be refused: {raw}");
    let err = serde_json::from_str::<Value>(raw.trim()).map_or_else(
        |_| raw.to_string(),
        |v| {
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        },
    );
    assert!(err.contains(want), "{err} should say {want:?}");
}

/// `tessera-server ARGS --output json` as root.
fn root(c: &Cluster, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    c.server.cli(&all)
}

/// `tessera-server ARGS --output json` as `nobody` (in the admin group).
fn nobody(c: &Cluster, args: &[&str]) -> Output {
    assert_nobody_can_reach(&c.server.admin_socket);
    command_as_nobody("tessera-server")
        .args(args)
        .args(["--output", "json", "--admin-socket"])
        .arg(&c.server.admin_socket)
        .output()
        .unwrap()
}

fn task_count(c: &Cluster) -> usize {
    ok_json(&root(c, &["task", "list"]), "task list")["tasks"]
        .as_array()
        .unwrap()
        .len()
}

fn review(c: &Cluster) -> Value {
    ok_json(&root(c, &["review"]), "review")
}

/// The review's flags of the identity with entry id `entry`.
fn review_flags(r: &Value, entry: &str) -> Vec<String> {
    r["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["entry_id"] == entry)
        .unwrap_or_else(|| panic!("no identity {entry} in {r}"))["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

fn unreviewed(r: &Value) -> Vec<String> {
    r["break_glass_unreviewed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `change_type` of each event about `task` the receiver accepted, in order, after
/// verifying each one's signature with the published JWK set.
fn events(rx: &Receiver, task: &str, jwks: &Value) -> Vec<Value> {
    rx.about(task)
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| {
            verify(r.body.trim(), jwks);
            claims(r.body.trim())["events"][EVENT].clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_starts_at_once_where_allowed_is_pushed_and_awaits_anothers_review() {
    let web = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(web.path()).unwrap();
    let rx = Receiver::start(&pki).await;
    let rp_port = free_port();
    let rp_addr = SocketAddr::from(([127, 0, 0, 1], rp_port));
    let rp_url = format!("https://localhost:{rp_port}");
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("tasks.cedar"), POLICIES).unwrap();
    let mut args = pki.server_args(rp_addr, &rp_url);
    args.extend(
        [
            "--policy-dir",
            policies.path().to_str().unwrap(),
            "--admin-group",
            "nogroup",
            "--break-glass-max-ttl",
            "2m",
            "--set-receiver",
            &rx.url(),
            "--set-receiver-ca-file",
            pki.ca_file.to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Cluster::start(&args);
    let jwks = tests::web::https(rp_addr, &pki.ca_der, "GET", "/keys", "")
        .await
        .unwrap()
        .json();
    let db = c.server.create_entry(JIT_DB, &["unix:uid:0"], &["--jit"]);
    let other = c.server.create_entry(OTHER_DB, &["unix:uid:0"], &["--jit"]);
    // For the workload's task at the end (created now, so the agent has them by then).
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    c.server
        .create_entry(JIT_TOOLS, &["unix:uid:0"], &["--jit"]);

    // Normally root's task waits for an approver.
    let normal = ok_json(
        &root(
            &c,
            &["task", "create", "--entry-id", &db, "--reason", "routine"],
        ),
        "task create",
    );
    assert_eq!(normal["state"], "pending_approval", "{normal}");
    assert_eq!(normal["break_glass"], false);
    assert_eq!(normal["flags"], serde_json::json!([]));
    let normal_id = normal["id"].as_str().unwrap().to_owned();
    root(&c, &["task", "cancel", &normal_id]);
    // `task explain` says where break-glass is allowed.
    let d = ok_json(
        &root(&c, &["task", "explain", "--entry-id", &db, "--break-glass"]),
        "explain",
    );
    assert_eq!(d["break_glass_allowed"], true, "{d}");
    assert!(
        d["explanation"]
            .as_str()
            .unwrap()
            .contains("break-glass allowed"),
        "{d}"
    );
    let d = ok_json(
        &root(
            &c,
            &["task", "explain", "--entry-id", &other, "--break-glass"],
        ),
        "explain",
    );
    assert_eq!(d["break_glass_allowed"], false, "{d}");

    // Refused, and nothing stored, where no annotated permit allows it: another operator
    // (nobody) on the same entry, and root on an entry outside its break-glass policy.
    let before = task_count(&c);
    refused(
        &nobody(
            &c,
            &[
                "task",
                "create",
                "--entry-id",
                &db,
                "--break-glass",
                "--reason",
                "x",
            ],
        ),
        "break-glass is not allowed for User::\"nobody\"",
    );
    refused(
        &root(
            &c,
            &[
                "task",
                "create",
                "--entry-id",
                &other,
                "--break-glass",
                "--reason",
                "x",
            ],
        ),
        "break-glass is not allowed for User::\"root\"",
    );
    assert_eq!(
        task_count(&c),
        before,
        "a refused break-glass stores no task"
    );

    // Root breaks glass: active at once, capped at 2 minutes though the policy allows an
    // hour, flagged until reviewed.
    let t = ok_json(
        &root(
            &c,
            &[
                "task",
                "create",
                "--entry-id",
                &db,
                "--break-glass",
                "--reason",
                "INC-7 primary down",
            ],
        ),
        "break-glass task create",
    );
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "active", "{t}");
    assert_eq!(t["break_glass"], true);
    assert_eq!(t["approver"], Value::Null);
    assert_eq!(
        t["deadline"].as_i64().unwrap() - t["activated_at"].as_i64().unwrap(),
        120,
        "{t}"
    );
    assert_eq!(t["flags"], serde_json::json!(["break_glass_unreviewed"]));
    // Its credential is served now.
    wait_for(Duration::from_secs(10), || {
        let out = c.fetch_json();
        String::from_utf8_lossy(&out.stdout)
            .contains(JIT_DB)
            .then_some(())
    })
    .expect("the break-glass task's SVID is delivered without approval");

    // The receiver hears of its start, signed, naming the task, identity, requester and
    // reason.
    rx.wait(&id, Duration::from_secs(5), |r| {
        r.iter().any(|x| x.status == 202)
    })
    .await;
    let e = events(&rx, &id, &jwks);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["change_type"], "create", "{e:?}");
    assert_eq!(e[0]["break_glass"], true);
    assert_eq!(e[0]["task_id"], id.as_str());
    assert_eq!(e[0]["subject"]["uri"], JIT_DB);
    assert_eq!(e[0]["requester"], "user:root");
    assert_eq!(e[0]["reason_admin"]["en"], "INC-7 primary down");
    assert_eq!(e[0]["task_state"], "active");

    // The review flags it, while it runs and after it ends.
    let r = review(&c);
    assert!(
        review_flags(&r, &db).contains(&"break_glass_unreviewed".to_owned()),
        "{r}"
    );
    assert_eq!(unreviewed(&r), [id.as_str()]);
    ok_json(&root(&c, &["task", "complete", &id]), "task complete");
    rx.wait(&id, Duration::from_secs(5), |r| {
        r.iter().filter(|x| x.status == 202).count() == 2
    })
    .await;
    let e = events(&rx, &id, &jwks);
    assert_eq!(e[1]["change_type"], "revoke", "{e:?}");
    assert_eq!(e[1]["task_state"], "completed");
    assert_eq!(e[1]["break_glass"], true);
    assert_eq!(unreviewed(&review(&c)), [id.as_str()]);

    // The requester cannot acknowledge it; another operator can, once.
    refused(
        &root(&c, &["task", "acknowledge", &id, "--note", "fine"]),
        "user:root requested task",
    );
    refused(
        &nobody(&c, &["task", "acknowledge", &id, "--note", " "]),
        "a note is required",
    );
    let acked = ok_json(
        &nobody(
            &c,
            &[
                "task",
                "acknowledge",
                &id,
                "--note",
                "INC-7: justified, postmortem PM-3",
            ],
        ),
        "acknowledge as nobody",
    );
    assert_eq!(acked["acknowledgement"]["by"], "user:nobody", "{acked}");
    assert_eq!(acked["acknowledgement"]["uid"], 65534);
    assert_eq!(
        acked["acknowledgement"]["note"],
        "INC-7: justified, postmortem PM-3"
    );
    assert_eq!(acked["flags"], serde_json::json!([]));
    assert_eq!(acked["state"], "completed");
    refused(
        &nobody(&c, &["task", "acknowledge", &id, "--note", "again"]),
        "already acknowledged by user:nobody",
    );
    refused(
        &nobody(&c, &["task", "acknowledge", &normal_id, "--note", "x"]),
        "is not a break-glass task",
    );
    let shown = ok_json(&root(&c, &["task", "show", &id]), "task show");
    assert_eq!(shown["acknowledgement"], acked["acknowledgement"]);
    let r = review(&c);
    assert!(unreviewed(&r).is_empty(), "{r}");
    assert!(
        !review_flags(&r, &db).contains(&"break_glass_unreviewed".to_owned()),
        "{r}"
    );

    // The audit log has the start, the review (once, with its actor and note) and both
    // deliveries.
    let records = |kind: &str| -> Vec<Value> {
        audit(&c.server, kind)
            .into_iter()
            .filter(|r| r["task_id"] == id.as_str())
            .collect()
    };
    let started = records("task.break_glass");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["detail"]["requester"], "user:root");
    assert_eq!(started[0]["detail"]["reason"], "INC-7 primary down");
    let acks = records("task.acknowledged");
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0]["actor"], "user:nobody");
    assert_eq!(
        acks[0]["detail"]["note"],
        "INC-7: justified, postmortem PM-3"
    );
    assert_eq!(records("set.delivered").len(), 2);
    let v = ok_json(&root(&c, &["audit", "verify"]), "audit verify");
    assert_eq!(v["ok"], true, "{v}");

    // A workload breaks glass through its agent: root's uid asked, so root (as an
    // operator) cannot acknowledge it; nobody can.
    let w = ok_json(
        &c.agent.cli(&[
            "task",
            "begin",
            "--bind",
            "selectors",
            "--spiffe-id",
            JIT_TOOLS,
            "--break-glass",
            "--reason",
            "INC-8 tool outage",
            "--output",
            "json",
        ]),
        "tessera-agent task begin --break-glass",
    );
    let wid = w["id"].as_str().unwrap().to_owned();
    assert_eq!(w["state"], "active", "{w}");
    assert_eq!(w["requester"], STANDING);
    assert_eq!(w["break_glass"], true);
    assert_eq!(
        w["deadline"].as_i64().unwrap() - w["activated_at"].as_i64().unwrap(),
        120
    );
    rx.wait(&wid, Duration::from_secs(5), |r| {
        r.iter().any(|x| x.status == 202)
    })
    .await;
    let e = events(&rx, &wid, &jwks);
    assert_eq!(e[0]["change_type"], "create");
    assert_eq!(e[0]["requester"], STANDING);
    assert_eq!(e[0]["initiating_entity"], "user");
    assert_eq!(unreviewed(&review(&c)), [wid.as_str()]);
    refused(
        &root(&c, &["task", "acknowledge", &wid, "--note", "fine"]),
        "is the same Unix user as the requester",
    );
    ok_json(
        &nobody(&c, &["task", "acknowledge", &wid, "--note", "INC-8 ok"]),
        "acknowledge the workload's task as nobody",
    );
    assert!(unreviewed(&review(&c)).is_empty());
}
