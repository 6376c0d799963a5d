//! Task-scoped just-in-time identities: JIT access and provisioning, Cedar policy (allow,
//! deny, approval, TTL caps, invalid sets), approval by someone other than the requester,
//! deadlines the server enforces by itself, revocation reaching open streams and
//! `ValidateJWTSVID` within a second, and the audit trail of a whole task.
//!
//! The test process runs as root: root is the requester (operator `user:root`, and the
//! workload with uid 0); `nobody`, a member of the admin group `nogroup`, is the other
//! operator who approves, except where nobody is the requester and root approves.

use std::process::Output;
use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use serde_json::Value;
use tests::jwt::{validate_on, wait_refused};
use tests::{
    AGENT_ID, Cluster, assert_nobody_can_reach, command_as_nobody, unix_now as now, wait_for,
    with_header,
};
use tokio::time::Instant;
use x509_parser::prelude::{FromDer as _, X509Certificate};

const JIT_DB: &str = "spiffe://example.org/jit/db";
const STANDING: &str = "spiffe://example.org/standing/root";

const POLICIES: &str = r#"
@id("operators") @max_ttl("1h")
permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource);

@id("workloads-need-approval") @approval("required") @max_ttl("10m")
permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource)
when { principal.trust_domain == resource.trust_domain };

@id("sensitive-needs-approval") @approval("required")
permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource)
when { resource.path like "/sensitive/*" };

@id("changes-are-short") @max_ttl("120")
permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource)
when { context.ticket like "CHG-*" };

@id("no-prod") forbid(principal, action == Tessera::Action::"begin_task", resource)
when { resource.path like "/prod/*" };

@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
"#;

/// A cluster whose server loads [`POLICIES`] and lets group `nogroup` administer.
fn cluster() -> (Cluster, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("tasks.cedar"), POLICIES).unwrap();
    let dir = policies.path().to_str().unwrap().to_owned();
    let c = Cluster::start(&["--policy-dir", &dir, "--admin-group", "nogroup"]);
    (c, policies)
}

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {:?}", out.stdout))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tessera-server task ARGS --output json` as root.
fn task(c: &Cluster, args: &[&str]) -> Output {
    let mut all = vec!["task"];
    all.extend(args);
    all.extend(["--output", "json"]);
    c.server.cli(&all)
}

/// `tessera-server task approve ID` as `nobody` (in the admin group).
fn approve_as_nobody(c: &Cluster, id: &str) -> Output {
    assert_nobody_can_reach(&c.server.admin_socket);
    command_as_nobody("tessera-server")
        .args(["task", "approve", id, "--output", "json"])
        .arg("--admin-socket")
        .arg(&c.server.admin_socket)
        .output()
        .unwrap()
}

async fn client(c: &Cluster) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(&c.agent.socket_path).await)
}

/// One fetch of the caller's X.509-SVIDs (first message of a fresh stream).
async fn fetch(c: &Cluster) -> Result<X509svidResponse, tonic::Status> {
    let mut cl = client(c).await;
    let mut s = cl
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    s.message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("stream ended"))
}

fn ids(r: &X509svidResponse) -> Vec<String> {
    r.svids.iter().map(|s| s.spiffe_id.clone()).collect()
}

/// The leaf of the SVID for `id` in `r`: (task id from the Subject, serial hex, notAfter).
fn leaf(r: &X509svidResponse, id: &str) -> (Option<String>, String, i64) {
    let svid = r.svids.iter().find(|s| s.spiffe_id == id).expect("svid");
    let (_, cert) = X509Certificate::from_der(&svid.x509_svid).unwrap();
    (
        common::task::task_id_of_certificate(&svid.x509_svid).map(String::from),
        hex::encode(cert.raw_serial()),
        cert.validity().not_after.timestamp(),
    )
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

fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Serials listed on the CRLs of a response.
fn crl_serials(r: &X509svidResponse) -> Vec<String> {
    r.crl
        .iter()
        .flat_map(|der| {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
                .expect("CRL parses");
            crl.iter_revoked_certificates()
                .map(|rc| hex::encode(rc.raw_serial()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn kinds(c: &Cluster, task_id: &str) -> Vec<String> {
    let out = c
        .server
        .cli(&["audit", "show", "--task", task_id, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn jit_access_lives_only_while_its_task_is_active_and_ending_it_revokes_within_a_second() {
    let (c, _p) = cluster();
    let entry = c.server.create_entry(
        JIT_DB,
        &["unix:uid:0"],
        &["--jit", "--x509-svid-ttl", "3600"],
    );

    // Dormant: the only matching entry is just-in-time and no task is active.
    let denied = fetch(&c)
        .await
        .expect_err("dormant JIT entry grants nothing");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let denied = fetch_jwt(&c, JIT_DB).await.expect_err("no JWT either");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // A standing identity too, so a stream survives the task's end and shows the update.
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);

    let t = ok_json(
        &task(
            &c,
            &[
                "create",
                "--entry-id",
                &entry,
                "--reason",
                "rotate db creds",
                "--ticket",
                "INC-7",
                "--scope",
                "db:write",
                "--audience",
                "tools",
                "--ttl",
                "300",
            ],
        ),
        "task create",
    );
    let task_id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "active", "operators need no approval: {t}");
    assert_eq!(t["requester"], "user:root");
    let deadline = t["deadline"].as_i64().unwrap();
    assert!(deadline <= now() + 300 && deadline >= now() + 290, "{t}");
    assert_eq!(
        t["decision"]["policies"],
        serde_json::json!(["tasks.cedar:operators"])
    );

    // The SVID arrives on a fresh fetch, names the task, and ends by the deadline even
    // though the entry asks for an hour.
    let got = wait_for(Duration::from_secs(10), || {
        let r = futures::executor::block_on(fetch(&c)).ok()?;
        ids(&r).contains(&JIT_DB.to_owned()).then_some(r)
    })
    .expect("task SVID issued");
    let (svid_task, serial, not_after) = leaf(&got, JIT_DB);
    assert_eq!(
        svid_task.as_deref(),
        Some(task_id.as_str()),
        "Subject names the task"
    );
    assert!(
        not_after <= deadline,
        "notAfter {not_after} beyond deadline {deadline}"
    );
    assert_eq!(leaf(&got, STANDING).0, None, "standing SVIDs name no task");

    let token = fetch_jwt(&c, JIT_DB).await.expect("task JWT-SVID");
    let claims = jwt_claims(&token);
    assert_eq!(claims["task_id"], task_id.as_str(), "{claims}");
    assert_eq!(claims["scope"], "db:write", "{claims}");
    assert!(claims["exp"].as_i64().unwrap() <= deadline);
    validate_on(&c.agent.socket_path, "tools", &token)
        .await
        .expect("valid while the task is active");

    // An open stream sees the task end: an update without the SVID, its serial on the CRL.
    let mut cl = client(&c).await;
    let mut stream = cl
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(ids(&first).contains(&JIT_DB.to_owned()));
    assert!(first.crl.is_empty() || !crl_serials(&first).contains(&serial));

    let started = Instant::now();
    ok_json(
        &task(&c, &["complete", &task_id, "--reason", "done"]),
        "task complete",
    );
    let update = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = stream.message().await.unwrap().unwrap();
            if !ids(&m).contains(&JIT_DB.to_owned()) && crl_serials(&m).contains(&serial) {
                return m;
            }
        }
    })
    .await
    .expect("stream update without the task SVID, serial on the CRL");
    let stream_latency = started.elapsed();
    assert_eq!(ids(&update), vec![STANDING.to_owned()]);
    let (rejected, validate_latency) = wait_refused(
        &c.agent.socket_path,
        "tools",
        &token,
        started,
        "token of the ended task",
    )
    .await;
    println!(
        "task end → stream update {stream_latency:?}, → ValidateJWTSVID refusal {validate_latency:?}"
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
    let denied = fetch_jwt(&c, JIT_DB).await.expect_err("no new task JWTs");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // Ending again is refused and changes nothing.
    let again = task(&c, &["revoke", &task_id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already ended"),
        "{}",
        stderr(&again)
    );

    // The whole lifecycle is in the audit log, in order, and the chain verifies; the
    // refused use of the token after the end is recorded too (reported in the background).
    let k = wait_for(Duration::from_secs(5), || {
        let k = kinds(&c, &task_id);
        (k.iter().filter(|k| *k == "task.jwt.validated").count() == 2).then_some(k)
    })
    .expect("both validations of the task token audited");
    let expect = [
        "task.requested",
        "task.policy",
        "task.activated",
        "svid.x509.issued",
        "svid.jwt.issued",
        "task.jwt.validated",
        "task.ended",
        "task.jwt.validated",
    ];
    let mut it = k.iter();
    for want in expect {
        assert!(
            it.any(|got| got == want),
            "{want} missing or out of order in {k:?}"
        );
    }
    let v = c.server.cli_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");

    // Tasks survive a server restart.
    let mut c = c;
    c.server.stop();
    c.server.restart();
    let shown = ok_json(&task(&c, &["show", &task_id]), "task show");
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["end_reason"], "done");

    // Rewriting how the task ended, in the datastore itself, breaks the chain right there.
    c.server.stop();
    c.server.tamper_sql(&format!(
        "UPDATE audit_log SET detail = replace(detail, '\"done\"', '\"fine\"') \
         WHERE task_id = '{task_id}' AND kind = 'task.ended'"
    ));
    c.server.restart();
    let out = c.server.cli(&["audit", "verify", "--output", "json"]);
    assert!(
        !out.status.success(),
        "edited task record must fail verification"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let edited = c
        .server
        .cli(&["audit", "show", "--task", &task_id, "--output", "json"]);
    let seq = String::from_utf8_lossy(&edited.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["kind"] == "task.ended")
        .map(|r| r["seq"].as_i64().unwrap())
        .unwrap();
    assert_eq!(v["first_bad_seq"], seq, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioned_task_expires_on_its_own_and_takes_its_entry_along() {
    let (c, _p) = cluster();
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    let tmp = "spiffe://example.org/tmp/job-42";
    let t = ok_json(
        &task(
            &c,
            &[
                "create",
                "--provision",
                "--spiffe-id",
                tmp,
                "--parent-id",
                AGENT_ID,
                "--selector",
                "unix:uid:0",
                "--ttl",
                "4",
            ],
        ),
        "task create --provision",
    );
    let task_id = t["id"].as_str().unwrap().to_owned();
    let deadline = t["deadline"].as_i64().unwrap();
    assert_eq!(t["provisioned"], true);
    let entries = c.server.cli_json(&["entry", "show", "--spiffe-id", tmp]);
    assert_eq!(
        entries["entries"].as_array().map(Vec::len),
        Some(1),
        "{entries}"
    );

    let got = wait_for(Duration::from_secs(10), || {
        let r = futures::executor::block_on(fetch(&c)).ok()?;
        ids(&r).contains(&tmp.to_owned()).then_some(r)
    })
    .expect("provisioned SVID issued");
    let (svid_task, _, not_after) = leaf(&got, tmp);
    assert_eq!(svid_task.as_deref(), Some(task_id.as_str()));
    assert!(
        not_after <= deadline,
        "notAfter {not_after} beyond deadline {deadline}"
    );

    // Nobody calls anything: the server expires it at the deadline.
    let expired = wait_for(Duration::from_secs(10), || {
        let s = ok_json(&task(&c, &["show", &task_id]), "task show");
        (s["state"] == "expired").then_some(s)
    })
    .expect("task expires by itself");
    let ended_at = expired["ended_at"].as_i64().unwrap();
    assert!(
        ended_at >= deadline && ended_at <= deadline + 2,
        "{expired}"
    );
    let entries = c.server.cli_json(&["entry", "show", "--spiffe-id", tmp]);
    assert_eq!(
        entries["entries"].as_array().map(Vec::len),
        Some(0),
        "{entries}"
    );
    wait_for(Duration::from_secs(5), || {
        let r = futures::executor::block_on(fetch(&c)).ok()?;
        (ids(&r) == vec![STANDING.to_owned()]).then_some(())
    })
    .expect("the provisioned identity is gone from the agent");
    let k = kinds(&c, &task_id);
    assert!(
        k.contains(&"task.ended".to_owned()) && k.contains(&"entry.deleted".to_owned()),
        "{k:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_allows_denies_caps_and_requires_another_approver() {
    let (c, policies) = cluster();
    let db = c.server.create_entry(JIT_DB, &["unix:uid:0"], &["--jit"]);
    let prod = c
        .server
        .create_entry("spiffe://example.org/prod/db", &["unix:uid:0"], &["--jit"]);
    let sensitive = c.server.create_entry(
        "spiffe://example.org/sensitive/keys",
        &["unix:uid:0"],
        &["--jit"],
    );
    let standing = c.server.create_entry(STANDING, &["unix:uid:0"], &[]);

    // Deny: a forbid names itself.
    let out = task(&c, &["create", "--entry-id", &prod]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("tasks.cedar:no-prod"),
        "{}",
        stderr(&out)
    );
    let listed = c.server.cli_json(&["task", "list"]);
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(0),
        "denied tasks are not stored"
    );

    // Not a JIT entry: refused with a reason.
    let out = task(&c, &["create", "--entry-id", &standing]);
    assert!(
        stderr(&out).contains("not just-in-time"),
        "{}",
        stderr(&out)
    );

    // TTL capped by the smallest determining @max_ttl; explain says which policies.
    let d = ok_json(
        &task(
            &c,
            &[
                "explain",
                "--entry-id",
                &db,
                "--ticket",
                "CHG-9",
                "--ttl",
                "1h",
            ],
        ),
        "task explain",
    );
    assert_eq!(d["max_ttl_seconds"], 120, "{d}");
    let policies_json = d["policies"].to_string();
    assert!(
        policies_json.contains("changes-are-short") && policies_json.contains("operators"),
        "{d}"
    );
    let t = ok_json(
        &task(
            &c,
            &[
                "create",
                "--entry-id",
                &db,
                "--ticket",
                "CHG-9",
                "--ttl",
                "1h",
            ],
        ),
        "task create",
    );
    assert!(
        t["deadline"].as_i64().unwrap() - t["created_at"].as_i64().unwrap() <= 120,
        "{t}"
    );
    // One open task per entry.
    let dup = task(&c, &["create", "--entry-id", &db]);
    assert!(
        stderr(&dup).contains("already has an open task"),
        "{}",
        stderr(&dup)
    );
    ok_json(
        &task(&c, &["cancel", t["id"].as_str().unwrap()]),
        "task cancel",
    );

    // Approval: pending until someone other than the requester approves.
    let t = ok_json(
        &task(&c, &["create", "--entry-id", &sensitive]),
        "task create",
    );
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "pending_approval", "{t}");
    let own = task(&c, &["approve", &id]);
    assert!(!own.status.success());
    assert!(stderr(&own).contains("cannot approve"), "{}", stderr(&own));
    let shown = ok_json(&task(&c, &["show", &id]), "task show");
    assert_eq!(
        shown["state"], "pending_approval",
        "self-approval changed nothing"
    );
    let approved = ok_json(&approve_as_nobody(&c, &id), "approve as nobody");
    assert_eq!(approved["state"], "active");
    assert_eq!(approved["approver"], "user:nobody");
    assert!(kinds(&c, &id).contains(&"task.approved".to_owned()));

    // A workload starts its own task through the agent: the requester is its standing
    // identity, policy wants approval, an operator approves, the workload ends it.
    let out = c.agent.cli(&[
        "task",
        "begin",
        "--bind",
        "selectors",
        "--spiffe-id",
        JIT_DB,
        "--reason",
        "agent tool call",
        "--audience",
        "tools",
        "--ttl",
        "5m",
        "--output",
        "json",
    ]);
    let w = ok_json(&out, "tessera-agent task begin");
    let wid = w["id"].as_str().unwrap().to_owned();
    assert_eq!(w["requester"], STANDING, "{w}");
    assert_eq!(w["requester_uid"], 0, "{w}");
    assert_eq!(w["requester_user"], "root", "{w}");
    assert_eq!(w["state"], "pending_approval", "{w}");
    // The workload ran as root: root, as an operator, is the same Unix user and cannot
    // approve it.
    let own = task(&c, &["approve", &wid]);
    assert!(!own.status.success());
    assert!(
        stderr(&own).contains("is the same Unix user as the requester"),
        "{}",
        stderr(&own)
    );
    let active = ok_json(
        &approve_as_nobody(&c, &wid),
        "another operator approves the workload's task",
    );
    assert_eq!(active["state"], "active");
    assert_eq!(active["approver"], "user:nobody");
    assert_eq!(active["approver_uid"], 65534);
    let token = wait_for(Duration::from_secs(10), || {
        futures::executor::block_on(fetch_jwt(&c, JIT_DB)).ok()
    })
    .expect("task JWT after approval");
    assert_eq!(jwt_claims(&token)["task_id"], wid.as_str());
    let ended = ok_json(
        &c.agent.cli(&["task", "end", &wid, "--output", "json"]),
        "tessera-agent task end",
    );
    assert_eq!(ended["state"], "completed");

    // An invalid policy set is refused with its file named; the last good one stays.
    std::fs::write(
        policies.path().join("broken.cedar"),
        "permit(principal, action, resource) when { resource.nope };",
    )
    .unwrap();
    let out = c.server.cli(&["policy", "reload"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broken.cedar"), "{}", stderr(&out));
    let out = c
        .server
        .cli(&["policy", "check", policies.path().to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("broken.cedar"));
    let out = task(&c, &["create", "--entry-id", &prod]);
    assert!(
        stderr(&out).contains("no-prod"),
        "old policy still in force: {}",
        stderr(&out)
    );
    std::fs::remove_file(policies.path().join("broken.cedar")).unwrap();
    let r = c.server.cli_json(&["policy", "reload"]);
    assert_eq!(r["policies"], 6, "{r}");
}

/// The attack of a local user who is also an operator: as `nobody`, begin a task through
/// the agent (as a workload), then approve it on the admin socket (through the admin
/// group). The server recorded the uid the agent attested, so the approval is refused;
/// root, another user, approves.
#[test]
fn one_unix_user_cannot_request_and_approve_the_same_task() {
    const JIT_NOBODY: &str = "spiffe://example.org/jit/nobody";
    const STANDING_NOBODY: &str = "spiffe://example.org/standing/nobody";
    let (c, _p) = cluster();
    c.server
        .create_entry(JIT_NOBODY, &["unix:uid:65534"], &["--jit"]);
    c.server
        .create_entry(STANDING_NOBODY, &["unix:uid:65534"], &[]);
    let begun = wait_for(Duration::from_secs(10), || {
        let out = command_as_nobody("tessera-agent")
            .args([
                "task",
                "begin",
                "--bind",
                "selectors",
                "--spiffe-id",
                JIT_NOBODY,
                "--reason",
                "self-approval attempt",
                "--output",
                "json",
            ])
            .arg("--socket-path")
            .arg(&c.agent.socket_path)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .expect("run tessera-agent as nobody");
        // Until the agent has synced nobody's standing entry, it has no identity.
        out.status.success().then_some(out)
    })
    .expect("nobody begins a task through the agent");
    let t = ok_json(&begun, "tessera-agent task begin as nobody");
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "pending_approval", "{t}");
    assert_eq!(t["requester"], STANDING_NOBODY, "{t}");
    assert_eq!(t["requester_uid"], 65534, "{t}");

    let own = approve_as_nobody(&c, &id);
    assert!(!own.status.success(), "nobody approved its own task");
    assert!(
        stderr(&own).contains("user:nobody (uid 65534) is the same Unix user as the requester"),
        "{}",
        stderr(&own)
    );
    let shown = ok_json(&task(&c, &["show", &id]), "task show");
    assert_eq!(shown["state"], "pending_approval", "{shown}");
    assert!(shown["approver"].is_null(), "{shown}");
    assert!(
        !kinds(&c, &id).contains(&"task.approved".to_owned()),
        "a refused approval is not audited as one"
    );

    let approved = ok_json(&task(&c, &["approve", &id]), "root approves");
    assert_eq!(approved["state"], "active");
    assert_eq!(approved["approver"], "user:root");
    assert_eq!(approved["approver_uid"], 0);
}

#[test]
fn workload_without_standing_identity_cannot_start_tasks() {
    let (c, _p) = cluster();
    c.server.create_entry(JIT_DB, &["unix:uid:0"], &["--jit"]);
    let out = c.agent.cli(&["task", "begin", "--spiffe-id", JIT_DB]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no standing identity"),
        "{}",
        stderr(&out)
    );
    // A requester must be one of the caller's own standing identities.
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    c.server.create_entry(
        "spiffe://example.org/standing/nobody",
        &["unix:uid:65534"],
        &[],
    );
    let out = c.agent.cli(&[
        "task",
        "begin",
        "--spiffe-id",
        JIT_DB,
        "--requester",
        "spiffe://example.org/standing/nobody",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not hold"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_task_survives_a_server_restart_and_its_end_reaches_other_nodes() {
    let (mut c, _p) = cluster();
    // A second node, where the tool server validates tokens.
    let other_dir = c.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let token = c.server.token("spiffe://example.org/node/tools");
    let other = tests::AgentProc::start(&other_dir, &c.server, Some(&token));

    let entry = c.server.create_entry(JIT_DB, &["unix:uid:0"], &["--jit"]);
    let t = ok_json(
        &task(
            &c,
            &[
                "create",
                "--entry-id",
                &entry,
                "--audience",
                "tools",
                "--ttl",
                "300",
            ],
        ),
        "task create",
    );
    let task_id = t["id"].as_str().unwrap().to_owned();
    let jwt = wait_for(Duration::from_secs(10), || {
        futures::executor::block_on(fetch_jwt(&c, JIT_DB)).ok()
    })
    .expect("task JWT-SVID");
    validate_on(&other.socket_path, "tools", &jwt)
        .await
        .expect("another node's agent accepts the active task's token");

    // The server restarts: the task is still active, the node still serves its SVID, and
    // it can still mint for it once the server is back.
    c.server.stop();
    let during = fetch(&c)
        .await
        .expect("cached task SVID served while the server is down");
    assert_eq!(ids(&during), vec![JIT_DB.to_owned()]);
    c.server.restart();
    assert_eq!(
        ok_json(&task(&c, &["show", &task_id]), "task show")["state"],
        "active"
    );
    // Both agents are back on their sync streams (revocations travel on them).
    for log in [&c.agent.log, &other.log] {
        wait_for(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(log).ok()?;
            (text.matches("sync stream open").count() >= 2).then_some(())
        })
        .expect("agent resynchronised after the server restart");
    }
    let fresh = fetch(&c).await.expect("task SVID after the server restart");
    assert_eq!(leaf(&fresh, JIT_DB).0.as_deref(), Some(task_id.as_str()));

    // Revoked by an operator: the other node refuses the token within a second.
    let started = Instant::now();
    ok_json(
        &task(&c, &["revoke", &task_id, "--reason", "suspected misuse"]),
        "task revoke",
    );
    let (refused, latency) = wait_refused(
        &other.socket_path,
        "tools",
        &jwt,
        started,
        "the revoked task's token, on the other node",
    )
    .await;
    println!("task revoke → refusal on another node {latency:?}");
    assert!(
        refused.message().contains("has ended (revoked)"),
        "{refused:?}"
    );
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let k = kinds(&c, &task_id);
    assert!(k.contains(&"task.ended".to_owned()), "{k:?}");
}
