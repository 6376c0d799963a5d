//! Task scope: a task declares the JWT audiences it will use and its scopes. Its JWT-SVIDs
//! carry `task_id` and `scope`, are minted only for declared audiences (refused with
//! PermissionDenied naming the task otherwise, and not at all when it declared none),
//! and Cedar sees the requested audience at issuance. X.509-SVIDs are unaffected.
//!
//! The test process runs as root: the workload (uid 0) begins its own tasks through the
//! agent, as an AI-agent runtime would.

use std::process::Output;
use std::time::Duration;

use common::proto::workload::JwtsvidRequest;
use serde_json::Value;
use tests::{Cluster, wait_for, with_header};

const TOOL: &str = "spiffe://example.org/tools/search";
const OTHER_TOOL: &str = "spiffe://example.org/tools/other";
const RUNTIME: &str = "spiffe://example.org/agents/runtime";

/// Workloads and operators may begin tasks without approval; issuance is allowed except
/// for audience `c`, which a task may declare but never get a token for.
const POLICIES: &str = r#"
@id("workloads") permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource);
@id("operators") permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource);
@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
@id("never-c") forbid(principal, action == Tessera::Action::"issue_svid", resource)
when { context.audience == "c" };
"#;

fn cluster() -> (Cluster, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("scope.cedar"), POLICIES).unwrap();
    let dir = policies.path().to_str().unwrap().to_owned();
    let c = Cluster::start(&["--policy-dir", &dir]);
    (c, policies)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {:?}", out.stdout))
}

/// `tessera-agent task ARGS --output json` as the test's user (root).
fn agent_task(c: &Cluster, args: &[&str]) -> Output {
    let mut all = vec!["task"];
    all.extend(args);
    // The task's SVIDs are fetched by this test's other clients, not by the short-lived
    // CLI process that begins it: bound by selectors, explicitly.
    if args.first() == Some(&"begin") {
        all.extend(["--bind", "selectors"]);
    }
    all.extend(["--output", "json"]);
    c.agent.cli(&all)
}

/// FetchJWTSVID for `audience` (and `spiffe_id`, when not empty).
async fn fetch_jwt(
    c: &Cluster,
    spiffe_id: &str,
    audience: &[&str],
) -> Result<Vec<(String, String)>, tonic::Status> {
    let r = tests::workload_client(&c.agent.socket_path)
        .await
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            spiffe_id: spiffe_id.into(),
        }))
        .await?
        .into_inner();
    Ok(r.svids.into_iter().map(|s| (s.spiffe_id, s.svid)).collect())
}

/// The one JWT-SVID for `spiffe_id` and `audience`, once the task reached the agent.
fn first_jwt(c: &Cluster, spiffe_id: &str, audience: &[&str]) -> String {
    wait_for(Duration::from_secs(10), || {
        futures::executor::block_on(fetch_jwt(c, spiffe_id, audience))
            .ok()
            .and_then(|mut v| v.pop())
            .map(|(_, t)| t)
    })
    .unwrap_or_else(|| panic!("no JWT-SVID for {spiffe_id} {audience:?} within 10 s"))
}

#[tokio::test(flavor = "multi_thread")]
async fn task_jwt_svids_name_only_declared_audiences_and_carry_task_id_and_scope() {
    let (c, _p) = cluster();
    c.server.create_entry(RUNTIME, &["unix:uid:0"], &[]);
    c.server.create_entry(TOOL, &["unix:uid:0"], &["--jit"]);
    c.server
        .create_entry(OTHER_TOOL, &["unix:uid:0"], &["--jit"]);
    wait_for(Duration::from_secs(15), || {
        c.agent
            .fetch_ids()
            .ok()?
            .contains(&RUNTIME.to_owned())
            .then_some(())
    })
    .expect("the runtime's standing identity is served");

    // Bad declarations are refused, with the rule named, and start nothing.
    for (args, says) in [
        (&["--audience", "a b"][..], "whitespace"),
        (&["--audience", ""], "must not be empty"),
        (&["--audience", "a", "--audience", "a"], "declared twice"),
        (&["--scope", "read write"], "RFC 6749 scope token"),
        (&["--scope", "say\"hi\""], "RFC 6749 scope token"),
    ] {
        let mut begin = vec!["begin", "--spiffe-id", TOOL];
        begin.extend(args);
        let out = agent_task(&c, &begin);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let none = c.server.cli_json(&["task", "list"]);
    assert_eq!(
        none["tasks"],
        serde_json::json!([]),
        "nothing stored: {none}"
    );

    // The runtime begins a task for the tool: audiences a and c, scopes read and db:write.
    let t = ok_json(
        &agent_task(
            &c,
            &[
                "begin",
                "--spiffe-id",
                TOOL,
                "--audience",
                "a",
                "--audience",
                "c",
                "--scope",
                "read",
                "--scope",
                "db:write",
                "--reason",
                "lookup",
            ],
        ),
        "task begin --audience a --audience c --scope read --scope db:write",
    );
    let task_id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "active", "{t}");
    assert_eq!(t["audiences"], serde_json::json!(["a", "c"]), "{t}");
    assert_eq!(t["scopes"], serde_json::json!(["read", "db:write"]), "{t}");
    let shown = c.server.cli(&["task", "show", &task_id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("Audience") && text.contains("db:write"),
        "{text}"
    );

    // A token for a declared audience names the task and carries its scopes.
    let token = first_jwt(&c, TOOL, &["a"]);
    let claims = tests::jwt::claims(&token);
    assert_eq!(claims["sub"], TOOL);
    assert_eq!(claims["aud"], serde_json::json!(["a"]), "{claims}");
    assert_eq!(claims["task_id"], task_id.as_str(), "{claims}");
    assert_eq!(claims["scope"], "read db:write", "{claims}");
    // The agent CLI gets the same identity for it.
    let cli = ok_json(
        &c.agent.cli(&[
            "api",
            "fetch",
            "jwt",
            "--audience",
            "a",
            "--spiffe-id",
            TOOL,
            "--output",
            "json",
        ]),
        "api fetch jwt --audience a",
    );
    assert!(cli.to_string().contains(TOOL), "{cli}");

    // Outside the declared set: refused, naming the task and the audience.
    for audience in [&["b"][..], &["a", "b"]] {
        let refused = fetch_jwt(&c, TOOL, audience)
            .await
            .expect_err("an undeclared audience is refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains(&task_id) && refused.message().contains("\"b\""),
            "{refused:?}"
        );
    }
    // The agent refused those itself (the server would have refused them too).
    assert!(
        c.agent
            .log_text()
            .contains("JWT-SVID refused: audience not declared by the task"),
        "{}",
        c.agent.log_tail()
    );
    // Declared, but Cedar forbids issuing for it (context.audience).
    let forbidden = fetch_jwt(&c, TOOL, &["c"])
        .await
        .expect_err("policy forbids audience c");
    assert_eq!(
        forbidden.code(),
        tonic::Code::PermissionDenied,
        "{forbidden:?}"
    );
    assert!(
        forbidden.message().contains("never-c") && forbidden.message().contains(&task_id),
        "{forbidden:?}"
    );
    // Asked for all of the caller's identities, an undeclared audience leaves the task
    // identity out and serves the standing one.
    let all = fetch_jwt(&c, "", &["b"])
        .await
        .expect("the standing identity");
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [RUNTIME], "{ids:?}");
    let with_a = fetch_jwt(&c, "", &["a"]).await.unwrap();
    let mut ids: Vec<&str> = with_a.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [RUNTIME, TOOL], "{ids:?}");

    // A task that declared no audiences gets its X.509-SVID, and no JWT-SVID at all.
    let bare = ok_json(
        &agent_task(&c, &["begin", "--spiffe-id", OTHER_TOOL]),
        "task begin without --audience",
    );
    let bare_id = bare["id"].as_str().unwrap().to_owned();
    assert_eq!(bare["audiences"], serde_json::json!([]), "{bare}");
    wait_for(Duration::from_secs(10), || {
        c.agent
            .fetch_ids()
            .ok()?
            .contains(&OTHER_TOOL.to_owned())
            .then_some(())
    })
    .expect("X.509-SVID for a task without audiences");
    let refused = fetch_jwt(&c, OTHER_TOOL, &["a"])
        .await
        .expect_err("no JWT-SVIDs without declared audiences");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(&bare_id)
            && refused.message().contains("declared no JWT audiences"),
        "{refused:?}"
    );

    // An operator's task declares audiences the same way.
    let entry = c.server.create_entry(
        "spiffe://example.org/tools/ops",
        &["unix:uid:0"],
        &["--jit"],
    );
    let op = c.server.cli_json(&[
        "task",
        "create",
        "--entry-id",
        &entry,
        "--audience",
        "https://ops.example",
        "--scope",
        "admin",
    ]);
    assert_eq!(
        op["audiences"],
        serde_json::json!(["https://ops.example"]),
        "{op}"
    );
    let token = first_jwt(
        &c,
        "spiffe://example.org/tools/ops",
        &["https://ops.example"],
    );
    assert_eq!(tests::jwt::claims(&token)["scope"], "admin");
    let bad = c.server.cli(&[
        "task",
        "create",
        "--entry-id",
        &entry,
        "--audience",
        "a\u{7}",
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("control character"),
        "{}",
        stderr(&bad)
    );
}
