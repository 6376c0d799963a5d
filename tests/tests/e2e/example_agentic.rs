//! The agentic-runtime example (`deploy/examples/agentic`) run end to end, with its own
//! policy directory and scripts: the runtime (`agent.py`) starts a task for the
//! just-in-time tool identity, calls `tool_server.py` with the task's JWT-SVID, ends the
//! task, and the same unexpired token is then refused by the tool (through the agent's
//! ValidateJWTSVID). The audit log holds the whole task.
//!
//! Every process runs as the test's user (root in CI), so the selectors are that uid; the
//! tool server is told apart by `unix:path` (the Python interpreter), and the tool identity
//! exists only as the `--jit` entry. The task requester is the standing identity of the
//! process that calls the task service, the `tessera-agent` CLI that `agent.py` runs: the
//! uid-only runtime entry is the only standing entry it matches.
//!
//! Like the py-spiffe interop suite, this never skips: a missing `python3` or py-spiffe
//! fails with install instructions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tests::{Cluster, bin, wait_for};

const RUNTIME: &str = "spiffe://example.org/agents/runtime";
const TOOL_SERVER: &str = "spiffe://example.org/svc/tool-server";
const TOOL: &str = "spiffe://example.org/tools/search";

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/agentic")
        .canonicalize()
        .expect("deploy/examples/agentic")
}

/// The interpreter `python3` runs, as the agent sees the process (`/proc/PID/exe`).
fn python() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3 must be installed to run the agentic example");
    assert!(out.status.success(), "{}", stderr(&out));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn assert_py_spiffe_installed(code: Option<i32>, script: &str, out: &str) {
    assert!(
        code != Some(3),
        "py-spiffe is not installed for python3 ({script}: {}): run \
         `python3 -m pip install -r tests/py/requirements.txt`",
        out.trim()
    );
}

/// `tool_server.py`, killed when dropped (also when the test panics; its output is
/// printed then).
struct ToolServer {
    child: Child,
    log: PathBuf,
    err: PathBuf,
}

impl ToolServer {
    /// Starts the tool server on a free port and waits for its `ready` line.
    fn start(c: &Cluster, python: &Path) -> (Self, u16) {
        let log = c.dir.path().join("tool_server.log");
        let err = c.dir.path().join("tool_server.err");
        let child = Command::new(python)
            .arg(example().join("tool_server.py"))
            .args(["--port", "0", "--spiffe-id", TOOL_SERVER])
            .args(["--allow-spiffe-id", TOOL])
            .env("SPIFFE_ENDPOINT_SOCKET", c.agent.endpoint())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn tool_server.py");
        let mut t = Self { child, log, err };
        let port = wait_for(Duration::from_secs(40), || {
            if let Some(status) = t.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&t.log).unwrap_or_default();
                assert_py_spiffe_installed(status.code(), "tool_server.py", &out);
                panic!(
                    "tool_server.py exited ({status}):\n{out}\n{}",
                    std::fs::read_to_string(&t.err).unwrap_or_default()
                );
            }
            let lines = t.lines();
            let ready = lines.iter().find(|l| l["event"] == "ready")?;
            Some(u16::try_from(ready["port"].as_u64().unwrap()).unwrap())
        })
        .expect("tool_server.py ready within 40 s");
        (t, port)
    }

    /// Its JSON log lines so far (complete lines only).
    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        json_lines(complete)
    }
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- tool_server.py ---\n{}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
        }
    }
}

/// `tessera-agent task ARGS --output json` as the test's user.
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

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: bad JSON ({e})"))
}

#[test]
fn agent_calls_tool_under_a_task_and_its_token_is_refused_once_the_task_ends() {
    let policies = example().join("policies");
    let c = Cluster::start(&["--policy-dir", policies.to_str().unwrap()]);
    let python = python();
    let uid = format!("unix:uid:{}", nix::unistd::getuid());
    let py_path = format!("unix:path:{}", python.display());

    // The README's three entries: the tool identity (just-in-time), the runtime's standing
    // identity (the user: it matches the tessera-agent CLI), the tool server's (the user
    // running python).
    c.server.create_entry(TOOL, &[&uid], &["--jit"]);
    c.server.create_entry(RUNTIME, &[&uid], &[]);
    c.server.create_entry(TOOL_SERVER, &[&uid, &py_path], &[]);
    wait_for(Duration::from_secs(15), || {
        let v: Value = serde_json::from_slice(&c.fetch_json().stdout).ok()?;
        (v["svids"][0]["spiffe_id"] == RUNTIME).then_some(())
    })
    .expect("the runtime identity is served within 15 s");

    // The example policy: a reason is required, and tasks last at most 10 minutes.
    let out = agent_task(&c, &["begin", "--spiffe-id", TOOL]);
    assert!(
        !out.status.success(),
        "a task without a reason must be refused"
    );
    assert!(
        stderr(&out).contains("tasks.cedar:reason-required"),
        "{}",
        stderr(&out)
    );
    let capped = ok_json(
        &agent_task(
            &c,
            &[
                "begin",
                "--spiffe-id",
                TOOL,
                "--reason",
                "cap",
                "--ttl",
                "1h",
            ],
        ),
        "task begin --ttl 1h",
    );
    assert_eq!(capped["state"], "active", "{capped}");
    assert_eq!(
        capped["decision"]["policies"],
        serde_json::json!(["tasks.cedar:agent-runtime-tools"])
    );
    let ttl = capped["deadline"].as_i64().unwrap() - capped["created_at"].as_i64().unwrap();
    assert!(ttl <= 600, "1h asked, at most 10 min granted: {capped}");
    ok_json(
        &agent_task(&c, &["end", capped["id"].as_str().unwrap()]),
        "task end",
    );

    let (tool, port) = ToolServer::start(&c, &python);
    let out = Command::new(&python)
        .arg(example().join("agent.py"))
        .args(["--tool-url", &format!("http://127.0.0.1:{port}/lookup")])
        .args(["--tool-audience", TOOL_SERVER, "--tool-identity", TOOL])
        .args(["--runtime-identity", RUNTIME])
        .arg("--tessera-agent")
        .arg(bin("tessera-agent"))
        .env("SPIFFE_ENDPOINT_SOCKET", c.agent.endpoint())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run agent.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_py_spiffe_installed(out.status.code(), "agent.py", &stdout);
    assert!(
        out.status.success(),
        "agent.py failed ({}):\n{stdout}\n{}",
        out.status,
        stderr(&out)
    );
    let lines = json_lines(&stdout);
    let step = |name: &str| -> &Value {
        let s = lines
            .iter()
            .find(|l| l["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in:\n{stdout}"));
        assert_eq!(s["ok"], true, "{s}");
        s
    };

    let begun = step("begin_task");
    let task_id = begun["task_id"].as_str().unwrap().to_owned();
    assert_eq!(begun["state"], "active");
    assert_eq!(begun["requester"], RUNTIME, "the CLI's standing identity");
    assert_eq!(begun["spiffe_id"], TOOL);

    let jwt = step("fetch_jwt");
    assert_eq!(jwt["spiffe_id"], TOOL);
    assert_eq!(jwt["audience"], serde_json::json!([TOOL_SERVER]));
    assert_eq!(jwt["task_id"], task_id.as_str());
    assert_eq!(
        jwt["scope"], "lookup",
        "the task's scope travels in the token"
    );
    // The task declared the tool's audience only: a token for another is refused.
    let other = step("fetch_other_aud");
    assert!(
        other["error"].as_str().unwrap().contains(&task_id),
        "the refusal names the task: {other}"
    );

    let standing = step("call_as_runtime");
    assert_eq!(standing["status"], 403, "{standing}");
    assert_eq!(standing["response"]["error"], "forbidden");

    let call = step("call_with_task");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["response"]["caller"], TOOL);
    assert_eq!(
        call["response"]["task_id"],
        task_id.as_str(),
        "the tool saw our task"
    );

    assert_eq!(step("end_task")["state"], "completed");

    let after = step("call_after_end");
    assert_eq!(after["status"], 401, "{after}");
    let detail = after["response"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("task {task_id}, which has ended (completed)")),
        "{detail}"
    );
    assert!(
        after["token_expires_in"].as_i64().unwrap() > 0,
        "refused because its task ended, not because it expired: {after}"
    );
    println!(
        "task end → tool refuses the token after {} ms",
        after["refused_after_ms"]
    );
    assert!(
        step("fetch_after_end")["error"]
            .as_str()
            .unwrap()
            .contains("PERMISSION_DENIED")
    );
    step("done");

    // The tool server's own log names the task of the accepted call and the refusal.
    let calls: Vec<Value> = tool
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "call")
        .collect();
    assert!(
        calls
            .iter()
            .any(|l| l["status"] == 200 && l["caller"] == TOOL && l["task_id"] == task_id.as_str()),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|l| l["status"] == 401
            && l["detail"]
                .as_str()
                .is_some_and(|d| d.contains("has ended"))),
        "{calls:?}"
    );
    drop(tool);

    let shown = c.server.cli_json(&["task", "show", &task_id]);
    assert_eq!(shown["state"], "completed", "{shown}");
    assert_eq!(shown["requester"], RUNTIME);
    assert_eq!(
        shown["reason"],
        "answer a user question with the lookup tool"
    );

    let audit = || {
        let out = c
            .server
            .cli(&["audit", "show", "--task", &task_id, "--output", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        json_lines(&String::from_utf8_lossy(&out.stdout))
    };
    // The tool's validations are audited too: the accepted call, and the refusal after
    // the end (waited for, in case the agent reports them after answering).
    let validated = |r: &Value, accepted: bool| {
        r["kind"] == "task.jwt.validated"
            && r["detail"]["accepted"] == accepted
            && r["detail"]["audience"] == TOOL_SERVER
    };
    let records = wait_for(Duration::from_secs(5), || {
        let records = audit();
        (records.iter().any(|r| validated(r, true)) && records.iter().any(|r| validated(r, false)))
            .then_some(records)
    })
    .unwrap_or_else(|| panic!("no accepted and refused task.jwt.validated: {:?}", audit()));
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for want in [
        "task.requested",
        "task.activated",
        "svid.jwt.issued",
        "task.ended",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let jwt_issued = records
        .iter()
        .find(|r| r["kind"] == "svid.jwt.issued")
        .unwrap();
    assert_eq!(jwt_issued["subject"], TOOL, "{jwt_issued}");
    assert_eq!(
        jwt_issued["detail"]["audience"],
        serde_json::json!([TOOL_SERVER]),
        "{jwt_issued}"
    );
}
