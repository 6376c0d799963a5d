//! The repository's Python task client (`clients/python`, import name `tessera_tasks`)
//! against a real server and agent: `tests/py/task_client.py` begins a task, gets the
//! task's X.509- and JWT-SVIDs through the unmodified py-spiffe, ends it and sees the
//! X.509-SVID leave its Workload API stream; its `task()` context manager ends a task
//! however the block is left; and each refusal arrives as its typed error with the
//! server's message. The script prints what it saw as JSON; the properties are checked
//! here, with the server's own view of each task (`task show`).
//!
//! Like the py-spiffe interop suite, this never skips: a missing `python3`, grpcio,
//! protobuf or py-spiffe fails with install instructions.

use std::path::PathBuf;
use std::process::Command;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use tests::{Cluster, wait_for};

const RUNTIME: &str = "spiffe://example.org/agents/runtime";
const TOOL: &str = "spiffe://example.org/tools/search";
const DENIED: &str = "spiffe://example.org/secret/db";

/// Workloads may activate `/tools/` identities with a reason, for at most 10 minutes.
const POLICIES: &str = r#"
@id("workload-tools") @max_ttl("10m")
permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource)
when { resource.path like "/tools/*" && resource.jit };

@id("reason-required")
forbid(principal, action == Tessera::Action::"begin_task", resource)
when { context.reason == "" };

@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
"#;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/task_client.py")
}

/// A cluster with [`POLICIES`]; the test's user holds the standing identity [`RUNTIME`]
/// and matches the just-in-time entries [`TOOL`] and [`DENIED`].
fn cluster() -> (Cluster, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("tasks.cedar"), POLICIES).unwrap();
    let c = Cluster::start(&["--policy-dir", policies.path().to_str().unwrap()]);
    let uid = format!("unix:uid:{}", nix::unistd::getuid());
    c.server.create_entry(RUNTIME, &[&uid], &[]);
    c.server.create_entry(TOOL, &[&uid], &["--jit"]);
    c.server.create_entry(DENIED, &[&uid], &["--jit"]);
    wait_for(std::time::Duration::from_secs(15), || {
        let v: Value = serde_json::from_slice(&c.fetch_json().stdout).ok()?;
        (v["svids"][0]["spiffe_id"] == RUNTIME).then_some(())
    })
    .expect("the standing identity is served within 15 s");
    (c, policies)
}

/// Runs `task_client.py MODE` against the cluster's agent and parses its JSON.
fn run(c: &Cluster, mode: &str) -> Value {
    let out = Command::new("python3")
        .arg(script())
        .arg(mode)
        .args([
            "--spiffe-id",
            TOOL,
            "--denied-id",
            DENIED,
            "--audience",
            "tools",
        ])
        .args(["--timeout", "15"])
        .env("SPIFFE_ENDPOINT_SOCKET", c.agent.endpoint())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .output()
        .expect("python3 must be installed to run the Python task client tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "grpcio, protobuf or py-spiffe is not installed for python3 ({}): run \
         `python3 -m pip install -r tests/py/requirements.txt`\n{stderr}",
        stdout.trim()
    );
    assert!(
        out.status.success(),
        "task_client.py {mode} failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("task_client.py printed no JSON ({e}):\n{stdout}\n{stderr}"));
    assert!(
        v["error_class"].is_null(),
        "task_client.py {mode} raised {}: {}\n{stderr}",
        v["error_class"],
        v["error"]
    );
    println!("task_client.py {mode} with {}", v["versions"]);
    v
}

/// The server's record of task `id`.
fn task_show(c: &Cluster, id: &str) -> Value {
    c.server.cli_json(&["task", "show", id])
}

/// Asserts that `r` is the typed error `class` (gRPC `code`) whose message contains `needle`.
fn assert_refused(r: &Value, class: &str, code: &str, needle: &str) {
    assert_eq!(r["error_class"], class, "{r}");
    assert_eq!(r["code"], code, "{r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "expected {needle:?} in the message: {r}"
    );
}

fn ms(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("a time in ms, got {v}"))
}

#[test]
fn python_client_begins_a_task_gets_its_svids_and_ends_it() {
    let (c, _p) = cluster();
    let v = run(&c, "lifecycle");

    // Begin: active under the policy that admitted it, requested by the standing identity.
    let begun = &v["begin"];
    let id = begun["id"].as_str().unwrap();
    assert_eq!(begun["state"], "active", "{begun}");
    assert_eq!(begun["spiffe_id"], TOOL);
    assert_eq!(begun["requester"], RUNTIME);
    // Bound to the Python process that began it, by default.
    assert_eq!(
        begun["bound_to"],
        serde_json::json!(["process", begun["own_pid"]]),
        "{begun}"
    );
    assert_eq!(
        begun["policies"],
        serde_json::json!(["tasks.cedar:workload-tools"])
    );

    // The X.509-SVID py-spiffe got is the task's own: its URI SAN and Subject OU.
    let x509 = &v["x509"];
    assert_eq!(x509["spiffe_id"], TOOL);
    assert_eq!(x509["task_id"], id);
    let leaf = CertificateDer::from_pem_slice(x509["leaf_pem"].as_str().unwrap().as_bytes())
        .expect("leaf PEM");
    assert_eq!(
        common::task::task_id_of_certificate(&leaf).map(|t| t.as_str().to_owned()),
        Some(id.to_owned()),
        "the certificate names the task"
    );

    // The JWT-SVID names the task and the identity.
    let claims = &v["jwt"]["claims"];
    assert_eq!(claims["sub"], TOOL, "{claims}");
    assert_eq!(claims[common::task::JWT_CLAIM], id, "{claims}");

    // End: completed by the workload; the server agrees; the SVIDs are gone.
    assert_eq!(v["end"]["state"], "completed", "{}", v["end"]);
    let shown = task_show(&c, id);
    assert_eq!(shown["state"], "completed", "{shown}");
    assert_eq!(shown["end_reason"], "done", "{shown}");
    let after = &v["jwt_after_end"];
    assert_eq!(after["error_class"], "FetchJwtSvidError", "{after}");
    assert!(
        after["error"]
            .as_str()
            .unwrap()
            .contains("PERMISSION_DENIED"),
        "{after}"
    );
    assert_refused(
        &v["end_again"],
        "FailedPrecondition",
        "FAILED_PRECONDITION",
        "already ended",
    );

    // The context manager: completed after a normal exit, failed after an exception that
    // still propagates, with a reason that names the exception's type only.
    let cm_ok = &v["cm_ok"];
    let ok_id = cm_ok["begin"]["id"].as_str().unwrap();
    assert_eq!(cm_ok["svid_task_id"], ok_id);
    assert_refused(
        &cm_ok["end_again"],
        "FailedPrecondition",
        "FAILED_PRECONDITION",
        "already ended",
    );
    assert_eq!(task_show(&c, ok_id)["state"], "completed");
    let cm_raise = &v["cm_raise"];
    assert_eq!(cm_raise["propagated"], true);
    let raise_id = cm_raise["begin"]["id"].as_str().unwrap();
    let failed = task_show(&c, raise_id);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["end_reason"], "raised RuntimeError", "{failed}");
    let audit = c
        .server
        .cli(&["audit", "show", "--task", raise_id, "--output", "json"]);
    assert!(audit.status.success());
    assert!(
        !String::from_utf8_lossy(&audit.stdout).contains("secret detail"),
        "an exception's message never reaches the task record"
    );

    let (svid_ms, gone_ms) = (ms(&v["svid_ms"]), ms(&v["gone_ms"]));
    println!(
        "python task client: X.509-SVID on the stream {svid_ms:.0} ms after begin (BeginTask \
         answered in {:.0} ms), JWT-SVID {:.0} ms later; gone from the stream {gone_ms:.0} ms \
         after end (EndTask answered in {:.0} ms; {} stream updates)",
        ms(&v["begin_ms"]),
        ms(&v["jwt_ms"]),
        ms(&v["end_ms"]),
        v["stream_updates"]
    );
    // Ending revokes within a second everywhere (tasks.rs); a Python stream sees it too.
    assert!(
        gone_ms < 1000.0,
        "X.509-SVID still on the stream {gone_ms} ms after end"
    );
}

#[test]
fn python_client_maps_refusals_to_typed_errors_with_the_servers_message() {
    let (c, _p) = cluster();
    let v = run(&c, "errors");
    assert_refused(
        &v["unknown_identity"],
        "NotFound",
        "NOT_FOUND",
        "no just-in-time entry",
    );
    assert_refused(
        &v["policy_denied"],
        "PermissionDenied",
        "PERMISSION_DENIED",
        "",
    );
    assert_refused(
        &v["no_reason"],
        "PermissionDenied",
        "PERMISSION_DENIED",
        "tasks.cedar:reason-required",
    );
    assert_refused(
        &v["foreign_requester"],
        "PermissionDenied",
        "PERMISSION_DENIED",
        "does not hold the standing identity spiffe://example.org/not/mine",
    );
    assert_refused(
        &v["nothing_named"],
        "InvalidArgument",
        "INVALID_ARGUMENT",
        "spiffe_id",
    );
    assert_refused(&v["end_unknown"], "NotFound", "NOT_FOUND", "no-such-task");
    assert_refused(
        &v["end_bad_outcome"],
        "InvalidArgument",
        "INVALID_ARGUMENT",
        "exploded",
    );
    assert_refused(
        &v["end_revoked"],
        "PermissionDenied",
        "PERMISSION_DENIED",
        "revoking",
    );
    assert_eq!(v["end_cancelled"]["ok"]["state"], "cancelled", "{v}");
    assert_refused(
        &v["no_header"],
        "InvalidArgument",
        "INVALID_ARGUMENT",
        "security header",
    );
    assert_eq!(v["no_socket"]["error_class"], "Unavailable", "{v}");
    assert_eq!(v["tcp_socket"]["error_class"], "ConfigError", "{v}");

    // Nothing a refused request asked for was created: only the one task that began.
    let listed = c.server.cli_json(&["task", "list"]);
    let tasks = listed["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(tasks.len(), 1, "{listed}");
    assert_eq!(tasks[0]["state"], "cancelled");
}

/// The client's own unit tests (`clients/python/tests`, an in-process fake of the task
/// service: security header, status → error class, the context manager's outcomes).
#[test]
fn python_client_unit_tests_pass() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python/tests");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .output()
        .expect("python3 must be installed to run the Python client's unit tests");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "clients/python unit tests failed (install them with \
         `python3 -m pip install -r tests/py/requirements.txt`):\n{stderr}"
    );
    // unittest reports on stderr; an empty discovery must not pass.
    assert!(stderr.contains("\nOK"), "{stderr}");
    assert!(!stderr.contains("Ran 0 tests"), "{stderr}");
}
