//! The agentic-runtime example (`deploy/examples/agentic`) run end to end, with its own
//! policy directory and scripts, against a server that serves relying parties
//! (`--relying-party-*`, a test web PKI):
//!
//! - the runtime (`agent.py`, the repository's Python task client in process) begins a
//!   task bound to itself for a just-in-time tool identity, declaring the tool's audience
//!   and a scope; calls `tool_server.py` with the task's JWT-SVID; ends the task, and the
//!   same unexpired token is refused by the tool, which validates offline (OIDC discovery,
//!   JWK set and token status list over HTTPS, PyJWT; no Workload API); then runs two tool
//!   calls in parallel threads, each under its own task;
//! - a runtime killed with SIGKILL while it holds a task: the agent ends the task
//!   ("requester exited") and the tool refuses the token through the status list, within
//!   [`KILL_TO_REFUSAL_BOUND`].
//!
//! Every process runs as the test's user (root in CI), so the selectors are that uid: the
//! runtime's standing identity, and the two tool identities as `--jit` entries. The tool
//! server has no identity at all: it never talks to the agent.
//!
//! Like the py-spiffe interop suite, this never skips: a missing `python3`, PyJWT,
//! grpcio, protobuf or py-spiffe fails with install instructions.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tests::web::WebPki;
use tests::{Cluster, free_port, wait_for};
use tokio::time::Instant;

const RUNTIME: &str = "spiffe://example.org/agents/runtime";
const TOOL: &str = "spiffe://example.org/tools/search";
const TOOL2: &str = "spiffe://example.org/tools/fetch";
/// The audience the tool server checks (a name of the tool, not a SPIFFE identity).
const AUDIENCE: &str = "https://tool.example.org";
/// How long the tool server may cache a status list (`--status-list-max-age`); the server
/// says 5 s (its `ttl`), the tool caps it to keep the test short.
const STATUS_LIST_MAX_AGE: Duration = Duration::from_secs(1);
/// Kill (or end) of the runtime's task → the tool refuses its token: the agent ends the
/// task of an exited holder within 1 s (`task_binding.rs` asserts that), the status list
/// flips in the same call, and the tool's cached copy is at most [`STATUS_LIST_MAX_AGE`]
/// old; plus 1 s for polling on a loaded machine.
const KILL_TO_REFUSAL_BOUND: Duration = Duration::from_secs(3);

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/agentic")
        .canonicalize()
        .expect("deploy/examples/agentic")
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

fn assert_python_deps_installed(code: Option<i32>, script: &str, out: &str) {
    assert!(
        code != Some(3),
        "a Python dependency is missing for python3 ({script}: {}): run \
         `python3 -m pip install -r tests/py/requirements.txt`",
        out.trim()
    );
}

/// A cluster with the example's policies whose server serves relying parties at
/// `https://localhost:<port>`, and the README's entries.
struct Example {
    c: Cluster,
    pki: WebPki,
    /// The relying-party URL, also the JWT-SVIDs' `iss`.
    url: String,
    _pki_dir: tempfile::TempDir,
}

fn example_cluster() -> Example {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(pki_dir.path()).unwrap();
    let port = free_port();
    let url = format!("https://localhost:{port}");
    let policies = example().join("policies");
    let mut args = vec![
        "--policy-dir".to_owned(),
        policies.to_str().unwrap().to_owned(),
    ];
    args.extend(pki.server_args(SocketAddr::from(([127, 0, 0, 1], port)), &url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Cluster::start(&args);
    let uid = format!("unix:uid:{}", nix::unistd::getuid());
    // The runtime's standing identity (the requester of its tasks), and the two tool
    // identities: just-in-time, dormant until a task activates them.
    c.server.create_entry(RUNTIME, &[&uid], &[]);
    c.server.create_entry(TOOL, &[&uid], &["--jit"]);
    c.server.create_entry(TOOL2, &[&uid], &["--jit"]);
    wait_for(Duration::from_secs(15), || {
        let v: Value = serde_json::from_slice(&c.fetch_json().stdout).ok()?;
        (v["svids"][0]["spiffe_id"] == RUNTIME).then_some(())
    })
    .expect("the runtime identity is served within 15 s");
    Example {
        c,
        pki,
        url,
        _pki_dir: pki_dir,
    }
}

/// `tool_server.py`, killed when dropped (also when the test panics; its output is
/// printed then).
struct ToolServer {
    child: Child,
    port: u16,
    log: PathBuf,
    err: PathBuf,
}

impl ToolServer {
    /// Starts the tool server on a free port, without any Workload API socket in its
    /// environment, and waits for its `ready` line.
    fn start(e: &Example) -> Self {
        let log = e.c.dir.path().join("tool_server.log");
        let err = e.c.dir.path().join("tool_server.err");
        let child = Command::new("python3")
            .arg(example().join("tool_server.py"))
            .args(["--port", "0", "--issuer", &e.url, "--cafile"])
            .arg(&e.pki.ca_file)
            .args(["--audience", AUDIENCE])
            .args(["--allow-spiffe-id", TOOL, "--allow-spiffe-id", TOOL2])
            .args([
                "--status-list-max-age",
                &STATUS_LIST_MAX_AGE.as_secs().to_string(),
            ])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("python3 must be installed to run the agentic example");
        let mut t = Self {
            child,
            port: 0,
            log,
            err,
        };
        t.port = wait_for(Duration::from_secs(40), || {
            if let Some(status) = t.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&t.log).unwrap_or_default();
                assert_python_deps_installed(status.code(), "tool_server.py", &out);
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
        t
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/lookup", self.port)
    }

    /// Its JSON log lines so far (complete lines only).
    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        json_lines(complete)
    }

    /// Its `call` log lines so far.
    fn calls(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["event"] == "call")
            .collect()
    }

    /// POSTs a call with `token` as the test's own client; (HTTP status, JSON body).
    fn call(&self, token: &str) -> (u16, Value) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"query":"from the test"}"#;
        write!(
            s,
            "POST /lookup HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("the tool's answer");
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head: {raw:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        (status, body)
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

/// `agent.py` with the example's arguments and `extra`, on the cluster's agent.
fn runtime(e: &Example, tool: &ToolServer, extra: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(example().join("agent.py"))
        .args(["--tool-url", &tool.url(), "--tool-audience", AUDIENCE])
        .args(["--tool-identity", TOOL, "--runtime-identity", RUNTIME])
        .args(extra)
        .env("SPIFFE_ENDPOINT_SOCKET", e.c.agent.endpoint())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null());
    cmd
}

/// `tessera-agent task ARGS --output json` as the test's user, bound by selectors (the
/// CLI exits at once; these tasks only check the example's policy).
fn agent_task(c: &Cluster, args: &[&str]) -> Output {
    let mut all = vec!["task"];
    all.extend(args);
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

fn audit(c: &Cluster, task_id: &str) -> Vec<Value> {
    let out = c
        .server
        .cli(&["audit", "show", "--task", task_id, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&String::from_utf8_lossy(&out.stdout))
}

/// The example's policy: a reason is required, and tasks last at most 10 minutes.
fn check_policy(c: &Cluster) {
    let out = agent_task(c, &["begin", "--spiffe-id", TOOL]);
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
            c,
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
        &agent_task(c, &["end", capped["id"].as_str().unwrap()]),
        "task end",
    );
}

#[test]
fn agent_runtime_calls_tools_under_its_own_tasks_and_an_offline_tool_refuses_ended_ones() {
    let e = example_cluster();
    let c = &e.c;
    check_policy(c);

    let tool = ToolServer::start(&e);
    let out = runtime(&e, &tool, &["--second-tool-identity", TOOL2])
        .output()
        .expect("run agent.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_python_deps_installed(out.status.code(), "agent.py", &stdout);
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

    // The task is the runtime's: bound to its process, requested by its standing identity,
    // for the tool's audience and one scope.
    let begun = step("begin_task");
    let task_id = begun["task_id"].as_str().unwrap().to_owned();
    assert_eq!(begun["state"], "active");
    assert_eq!(begun["requester"], RUNTIME);
    assert_eq!(begun["spiffe_id"], TOOL);
    assert_eq!(
        begun["bound_to"],
        serde_json::json!(["process", begun["own_pid"]])
    );
    assert_eq!(begun["audiences"], serde_json::json!([AUDIENCE]));
    assert_eq!(begun["scopes"], serde_json::json!(["lookup"]));
    let shown = c.server.cli_json(&["task", "show", &task_id]);
    assert_eq!(shown["binding"]["kind"], "process", "{shown}");
    assert_eq!(shown["binding"]["pid"], begun["own_pid"], "{shown}");

    // Its JWT-SVID: the tool's audience, the task and scope, the issuer the tool trusts,
    // and where its status is published.
    let jwt = step("fetch_jwt");
    assert_eq!(jwt["spiffe_id"], TOOL);
    assert_eq!(jwt["audience"], serde_json::json!([AUDIENCE]));
    assert_eq!(jwt["task_id"], task_id.as_str());
    assert_eq!(jwt["scope"], "lookup");
    assert_eq!(jwt["iss"], e.url.as_str());
    let list = &jwt["status"]["status_list"];
    assert!(
        list["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{}/statuslists/", e.url))),
        "{jwt}"
    );
    assert!(list["idx"].is_u64(), "{jwt}");
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
    assert_eq!(call["response"]["task_id"], task_id.as_str());
    assert_eq!(call["response"]["scope"], "lookup");

    assert_eq!(step("end_task")["state"], "completed");

    // The same, unexpired token: refused by the tool, through the status list alone.
    let after = step("call_after_end");
    assert_eq!(after["status"], 401, "{after}");
    assert_eq!(after["response"]["error"], "revoked_token", "{after}");
    let detail = after["response"]["detail"].as_str().unwrap();
    assert!(detail.contains("INVALID (1)"), "{detail}");
    assert!(
        after["token_expires_in"].as_i64().unwrap() > 0,
        "refused because its task ended, not because it expired: {after}"
    );
    let refused_ms = after["refused_after_ms"].as_u64().unwrap();
    println!(
        "task end -> offline tool refuses the token after {refused_ms} ms (status list cached \
         at most {} s)",
        STATUS_LIST_MAX_AGE.as_secs()
    );
    assert!(
        Duration::from_millis(refused_ms) < KILL_TO_REFUSAL_BOUND,
        "{after}"
    );
    assert!(
        step("fetch_after_end")["error"]
            .as_str()
            .unwrap()
            .contains("PERMISSION_DENIED")
    );

    // Two tool calls at once, each its own task with its own token; the second task's
    // token still works after the first task ended.
    let parallel: Vec<&Value> = lines
        .iter()
        .filter(|l| l["step"] == "parallel_call")
        .collect();
    assert_eq!(parallel.len(), 2, "{stdout}");
    for (p, (identity, scope)) in parallel.iter().zip([(TOOL, "lookup"), (TOOL2, "fetch")]) {
        assert_eq!(p["ok"], true, "{p}");
        let id = p["task_id"].as_str().unwrap();
        assert_ne!(id, task_id, "a new task per call");
        assert_eq!(p["jwt_task_id"], id, "{p}");
        assert_eq!(p["scope"], scope, "{p}");
        assert_eq!(p["response"]["caller"], identity, "{p}");
        assert_eq!(p["response"]["task_id"], id, "{p}");
        let shown = c.server.cli_json(&["task", "show", id]);
        assert_eq!(shown["state"], "completed", "{shown}");
        assert_eq!(shown["binding"]["pid"], begun["own_pid"], "{shown}");
    }
    let both = step("parallel");
    assert_ne!(both["task_ids"][0], both["task_ids"][1]);
    assert!(both["overlap_ms"].as_i64().unwrap() > 0, "{both}");
    assert_eq!(both["second_after_first_ended"], 200, "{both}");
    step("done");

    // The tool's own log: the accepted call names the task and the status it checked; the
    // refusal names the status list entry.
    let calls = tool.calls();
    assert!(
        calls.iter().any(|l| l["status"] == 200
            && l["caller"] == TOOL
            && l["task_id"] == task_id.as_str()
            && l["status_list"]["status"] == 0),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|l| l["status"] == 401 && l["error"] == "revoked_token"),
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
    let records = audit(c, &task_id);
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
    // Validation was offline: the agent was never asked about the task's token.
    assert!(
        !kinds.contains(&"task.jwt.validated"),
        "the tool asked the agent: {kinds:?}"
    );
    let jwt_issued = records
        .iter()
        .find(|r| r["kind"] == "svid.jwt.issued")
        .unwrap();
    assert_eq!(jwt_issued["subject"], TOOL, "{jwt_issued}");
    assert_eq!(
        jwt_issued["detail"]["audience"],
        serde_json::json!([AUDIENCE]),
        "{jwt_issued}"
    );
}

/// `agent.py --hold`, killed when dropped; its stdout lines arrive on `lines`.
struct HeldRuntime {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    err: PathBuf,
}

impl HeldRuntime {
    fn start(e: &Example, tool: &ToolServer) -> Self {
        let err = e.c.dir.path().join("runtime.err");
        let mut child = runtime(e, tool, &["--hold"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("python3 must be installed to run the agentic example");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {line}")));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            err,
        }
    }

    /// The first line whose `step` is `name` (within 40 s); fails on a step that is not ok.
    fn step(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = self.seen.iter().find(|l| l["step"] == name) {
                return s.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    assert_python_deps_installed(
                        (v["step"] == "import").then_some(3),
                        "agent.py",
                        &v.to_string(),
                    );
                    assert!(v["ok"] == true, "agent.py --hold: {v}\n{}", self.stderr());
                    self.seen.push(v);
                }
                Err(_) => panic!(
                    "agent.py --hold printed no {name} step: {:?}\n{}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for HeldRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_killed_runtimes_task_ends_by_itself_and_the_offline_tool_refuses_its_token() {
    let e = example_cluster();
    let tool = ToolServer::start(&e);
    let mut rt = HeldRuntime::start(&e, &tool);
    let begun = rt.step("begin_task");
    assert_eq!(begun["state"], "active", "{begun}");
    assert_eq!(
        begun["bound_to"],
        serde_json::json!(["process", rt.child.id()]),
        "bound to the runtime's own process"
    );
    assert_eq!(rt.step("hold_call")["status"], 200);
    let held = rt.step("holding");
    let task_id = held["task_id"].as_str().unwrap().to_owned();
    let token = held["token"].as_str().unwrap().to_owned();

    // The token works for anyone holding it (here: the test) while the runtime lives; this
    // call also leaves the tool with a fresh, VALID copy of the status list.
    let (status, body) = tool.call(&token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], task_id.as_str());

    let killed = Instant::now();
    rt.child.kill().expect("SIGKILL the runtime");
    rt.child.wait().unwrap();
    let refused = wait_for(Duration::from_secs(15), || {
        let (status, body) = tool.call(&token);
        (status != 200).then_some((status, body))
    });
    let took = killed.elapsed();
    let (status, body) = refused.expect("the tool refuses the killed runtime's token");
    println!(
        "runtime killed -> offline tool refuses its task's token in {} ms (status list cached \
         at most {} s; bound {} s)",
        took.as_millis(),
        STATUS_LIST_MAX_AGE.as_secs(),
        KILL_TO_REFUSAL_BOUND.as_secs()
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "revoked_token", "{body}");
    assert!(
        took < KILL_TO_REFUSAL_BOUND,
        "took {took:?}, bound {KILL_TO_REFUSAL_BOUND:?}"
    );

    // Nobody ended the task but the agent, which saw its holder exit.
    let shown = e.c.server.cli_json(&["task", "show", &task_id]);
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert_eq!(shown["end_reason"], "requester exited", "{shown}");
    let ended = audit(&e.c, &task_id)
        .into_iter()
        .find(|r| r["kind"] == "task.ended")
        .expect("a task.ended record");
    assert_eq!(ended["detail"]["by"], tests::AGENT_ID, "{ended}");
    // The tool logged the refusal with the list entry it read.
    let calls = tool.calls();
    let last = calls.last().unwrap();
    assert_eq!(last["status"], 401, "{last}");
    assert_eq!(last["status_list"]["status"], 1, "{last}");
    assert_eq!(
        last["status_list"]["idx"],
        shown_status_index(&token),
        "{last}"
    );
}

/// The `idx` of a token's `status` claim.
fn shown_status_index(token: &str) -> Value {
    tests::jwt::segment(token, 1)["status"]["status_list"]["idx"].clone()
}

/// `tool_server.py`'s own unit tests (`deploy/examples/agentic/tests`): status list
/// entries of every width per the draft's examples, and the refusals.
#[test]
fn example_tool_server_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(example().join("tests"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 must be installed to run the example's unit tests");
    let stderr = stderr(&out);
    assert!(
        out.status.success(),
        "deploy/examples/agentic unit tests failed (install PyJWT with \
         `python3 -m pip install -r tests/py/requirements.txt`):\n{stderr}"
    );
    // unittest reports on stderr; an empty discovery must not pass.
    assert!(stderr.contains("\nOK"), "{stderr}");
    assert!(!stderr.contains("Ran 0 tests"), "{stderr}");
}
