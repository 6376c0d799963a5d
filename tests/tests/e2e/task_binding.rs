//! Task binding: a workload-started task belongs to the process that asked for it. Its
//! SVIDs reach only that process instance (`process`, the default), or it and its
//! descendants (`tree`); every other process matching the entry's selectors gets nothing
//! from it, as if the entry were dormant. `--bind-pid` binds to an ancestor of the caller
//! running as the same user, and nothing else. When the bound process exits, the agent
//! ends the task (`cancelled`, reason "requester exited") through the node API, within a
//! second, recorded in the audit log. `--bind selectors` keeps the behaviour of tasks
//! without a binding.
//!
//! The test process runs as root and is itself a workload (uid 0): it begins tasks in
//! process through the agent's task service, and runs real child processes (the
//! `tessera-agent` CLI, `sh`, one as `nobody`) as the other processes on the node.

use std::io::BufRead as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::proto::tessera::workload_tasks_client::WorkloadTasksClient;
use common::proto::tessera::{EndTaskRequest, Task, TaskSpec};
use common::proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
use serde_json::Value;
use tests::{Cluster, assert_nobody_can_reach, bin, command_as_nobody, wait_for, with_header};
use tokio::time::Instant;
use x509_parser::prelude::{FromDer as _, X509Certificate};

const TOOL: &str = "spiffe://example.org/tools/search";
const RUNTIME: &str = "spiffe://example.org/agents/runtime";
const TOOL_NOBODY: &str = "spiffe://example.org/tools/nobody";
const RUNTIME_NOBODY: &str = "spiffe://example.org/agents/nobody";

/// Workloads and operators begin tasks without approval; issuance is allowed.
const POLICIES: &str = r#"
@id("workloads") permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource);
@id("operators") permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource);
@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
"#;

/// A cluster with a standing identity and a just-in-time tool identity for uid 0.
fn cluster() -> (Cluster, tempfile::TempDir) {
    cluster_with(POLICIES)
}

/// As [`cluster`], under the Cedar policies `text`.
fn cluster_with(text: &str) -> (Cluster, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("binding.cedar"), text).unwrap();
    let dir = policies.path().to_str().unwrap().to_owned();
    let c = Cluster::start(&["--policy-dir", &dir]);
    c.server.create_entry(RUNTIME, &["unix:uid:0"], &[]);
    c.server.create_entry(TOOL, &["unix:uid:0"], &["--jit"]);
    // The standing identity reaches the agent before any task is begun.
    wait_for(Duration::from_secs(15), || {
        let v: Value = serde_json::from_slice(&c.fetch_json().stdout).ok()?;
        (v["svids"][0]["spiffe_id"] == RUNTIME).then_some(())
    })
    .expect("the standing identity is served");
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

/// `tessera-agent task begin --spiffe-id TOOL --audience tools ARGS --output json`, run
/// by a child of the test process.
fn cli_begin(c: &Cluster, args: &[&str]) -> Output {
    let mut all = vec!["task", "begin", "--spiffe-id", TOOL, "--audience", "tools"];
    all.extend(args);
    all.extend(["--output", "json"]);
    c.agent.cli(&all)
}

/// The SPIFFE IDs a one-shot `tessera-agent api fetch x509` (a child process) receives.
fn child_ids(c: &Cluster) -> Vec<String> {
    let out = c.fetch_json();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["svids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["spiffe_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn tasks_client(c: &Cluster) -> WorkloadTasksClient<tonic::transport::Channel> {
    WorkloadTasksClient::new(tests::agent_channel(&c.agent.socket_path).await)
}

/// This process begins a task for TOOL through the agent (in process: the caller is the
/// test process itself).
async fn begin_here(c: &Cluster, bind: &str) -> Task {
    tasks_client(c)
        .await
        .begin_task(with_header(TaskSpec {
            spiffe_id: TOOL.into(),
            audiences: vec!["tools".into()],
            reason: "binding e2e".into(),
            bind: bind.into(),
            ..Default::default()
        }))
        .await
        .expect("begin a task in process")
        .into_inner()
}

/// The SPIFFE IDs in this process's X.509-SVID stream, once `want` holds for them.
async fn own_ids_until(c: &Cluster, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut stream = tests::workload_client(&c.agent.socket_path)
        .await
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("open the X.509-SVID stream")
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the wanted SVIDs within 10 s")
            .expect("stream message")
            .expect("stream open");
        let ids: Vec<String> = msg.svids.iter().map(|s| s.spiffe_id.clone()).collect();
        if want(&ids) {
            return ids;
        }
    }
}

/// FetchJWTSVID for TOOL and audience `tools` by this process.
async fn own_jwt(c: &Cluster) -> Result<String, tonic::Status> {
    let r = tests::workload_client(&c.agent.socket_path)
        .await
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["tools".into()],
            spiffe_id: TOOL.into(),
        }))
        .await?;
    Ok(r.into_inner().svids.remove(0).svid)
}

fn task_show(c: &Cluster, id: &str) -> Value {
    c.server.cli_json(&["task", "show", id])
}

#[test]
fn only_the_process_that_began_a_task_receives_its_svids() {
    let (c, _p) = cluster();
    tests::runtime().block_on(async {
        let task = begin_here(&c, "").await;
        assert_eq!(task.state, "active", "{task:?}");
        let b = task.binding.clone().expect("the task names its binding");
        assert_eq!(b.kind, "process", "the default: {b:?}");
        assert_eq!(b.pid, std::process::id(), "bound to the caller");
        assert_eq!(b.agent_id, tests::AGENT_ID);
        assert!(b.start_time > 0);
        let shown = task_show(&c, &task.id);
        assert_eq!(shown["binding"]["kind"], "process", "{shown}");
        assert_eq!(shown["binding"]["pid"], std::process::id(), "{shown}");

        // The holder gets the task's X.509-SVID and JWT-SVID ...
        let ids = own_ids_until(&c, |ids| ids.iter().any(|i| i == TOOL)).await;
        assert!(ids.iter().any(|i| i == RUNTIME), "{ids:?}");
        let token = own_jwt(&c).await.expect("the holder's task JWT-SVID");
        assert_eq!(tests::jwt::segment(&token, 1)["task_id"], task.id.as_str());

        // ... another process with the same selectors nothing of the task: its stream has
        // only the standing identity, its FetchJWTSVID for the task identity is refused.
        let other = child_ids(&c);
        assert_eq!(other, [RUNTIME], "another process of uid 0");
        let out = c.agent.cli(&[
            "api",
            "fetch",
            "jwt",
            "--audience",
            "tools",
            "--spiffe-id",
            TOOL,
        ]);
        assert!(!out.status.success(), "another process got the task's JWT");
        assert!(
            stderr(&out).contains("no identity issued"),
            "{}",
            stderr(&out)
        );

        tasks_client(&c)
            .await
            .end_task(with_header(EndTaskRequest {
                id: task.id.clone(),
                outcome: "completed".into(),
                reason: String::new(),
            }))
            .await
            .expect("end the task");
    });
}

#[test]
fn bind_pid_must_be_a_same_user_ancestor_of_the_caller() {
    let (c, _p) = cluster();
    // A sibling of the CLI (a child of the test process, like the CLI): not its ancestor.
    let mut sibling = Command::new("sleep").arg("60").spawn().unwrap();
    let out = cli_begin(&c, &["--bind-pid", &sibling.id().to_string()]);
    assert!(!out.status.success(), "bound to a non-ancestor");
    assert!(stderr(&out).contains("not an ancestor"), "{}", stderr(&out));
    sibling.kill().unwrap();
    sibling.wait().unwrap();
    assert_eq!(
        c.server.cli_json(&["task", "list"])["tasks"],
        serde_json::json!([]),
        "a refused binding starts nothing"
    );

    // nobody's CLI is a descendant of the test process, which runs as root: refused.
    c.server
        .create_entry(RUNTIME_NOBODY, &["unix:uid:65534"], &[]);
    c.server
        .create_entry(TOOL_NOBODY, &["unix:uid:65534"], &["--jit"]);
    assert_nobody_can_reach(&c.agent.socket_path);
    let me = std::process::id().to_string();
    let refused = wait_for(Duration::from_secs(10), || {
        let out = command_as_nobody("tessera-agent")
            .args([
                "task",
                "begin",
                "--spiffe-id",
                TOOL_NOBODY,
                "--bind-pid",
                &me,
            ])
            .arg("--socket-path")
            .arg(&c.agent.socket_path)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .expect("run tessera-agent as nobody");
        // Until the agent has synced nobody's standing entry, it has no identity.
        (!stderr(&out).contains("no standing identity")).then_some(out)
    })
    .expect("nobody's request is answered");
    assert!(!refused.status.success(), "bound to another user's process");
    assert!(
        stderr(&refused).contains("not as the caller's uid 65534"),
        "{}",
        stderr(&refused)
    );

    // Root's CLI binds to the test process, its parent: the test process is the holder.
    let t = ok_json(&cli_begin(&c, &["--bind-pid", &me]), "begin --bind-pid");
    assert_eq!(t["binding"]["kind"], "process", "{t}");
    assert_eq!(t["binding"]["pid"], std::process::id(), "{t}");
    tests::runtime().block_on(async {
        own_ids_until(&c, |ids| ids.iter().any(|i| i == TOOL)).await;
    });
    assert_eq!(child_ids(&c), [RUNTIME], "the CLI's sibling gets nothing");
    let id = t["id"].as_str().unwrap();
    ok_json(
        &c.agent.cli(&["task", "end", id, "--output", "json"]),
        "task end",
    );
}

/// Spawns `sh` that begins a task bound to itself (`--bind-pid $$`) with `bind`, then
/// starts `tessera-agent api watch` as its child and waits. Returns the shell, the
/// task, and the watch's pid and stdout lines.
fn shell_holder(
    c: &Cluster,
    bind: &str,
    dir: &std::path::Path,
) -> (std::process::Child, Value, u32, std::path::PathBuf) {
    let begun = dir.join("begun.json");
    let watch_out = dir.join("watch.jsonl");
    let watch_pid = dir.join("watch.pid");
    let script = format!(
        r#"set -e
"$AGENT" task begin --socket-path "$SOCK" --spiffe-id {TOOL} --audience tools --bind {bind} --bind-pid $$ --output json > "{begun}"
"$AGENT" api watch --socket-path "$SOCK" --output json > "{watch_out}" 2>&1 &
echo $! > "{watch_pid}"
"$AGENT" api fetch jwt --socket-path "$SOCK" --audience tools --spiffe-id {TOOL} --output json > "{jwt}" 2>&1 || true
exec sleep 600 < /dev/null
"#,
        begun = begun.display(),
        watch_out = watch_out.display(),
        watch_pid = watch_pid.display(),
        jwt = dir.join("jwt.json").display(),
    );
    // `exec sleep`: the holder keeps its pid and start time (exec changes neither).
    let sh = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("AGENT", bin("tessera-agent"))
        .env("SOCK", &c.agent.socket_path)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&watch_pid)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    })
    .expect("the shell started its watch");
    let task: Value = serde_json::from_slice(&std::fs::read(&begun).unwrap()).unwrap();
    (sh, task, pid, watch_out)
}

/// The SPIFFE IDs of each update the watch printed so far.
fn watch_updates(path: &std::path::Path) -> Vec<Vec<String>> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .map(|v| {
            v["svids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["spiffe_id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

#[test]
fn a_tree_binding_reaches_descendants_and_the_task_ends_when_its_holder_is_killed() {
    let (c, _p) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (mut sh, task, watch, watch_out) = shell_holder(&c, "tree", dir.path());
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["binding"]["kind"], "tree", "{task}");
    assert_eq!(task["binding"]["pid"], sh.id(), "{task}");
    assert_eq!(task["state"], "active", "{task}");

    // The shell's child (the watch) receives the task's SVID; a sibling of the shell
    // (a child of the test process) does not.
    let got = wait_for(Duration::from_secs(10), || {
        watch_updates(&watch_out)
            .last()
            .filter(|ids| ids.iter().any(|i| i == TOOL))
            .cloned()
    });
    assert!(got.is_some(), "the child: {:?}", watch_updates(&watch_out));
    assert_eq!(child_ids(&c), [RUNTIME], "a sibling gets nothing");
    let updates_before = watch_updates(&watch_out).len();
    // The shell's other child fetched the task's JWT-SVID (a descendant of the holder).
    let token = wait_for(Duration::from_secs(10), || {
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("jwt.json")).ok()?).ok()?;
        v["svids"][0]["svid"].as_str().map(str::to_owned)
    })
    .expect("the holder's child got the task's JWT-SVID");
    let validate = |token: &str| {
        let token = token.to_owned();
        let socket = c.agent.socket_path.clone();
        tests::runtime().block_on(async move {
            tests::workload_client(&socket)
                .await
                .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                    audience: "tools".into(),
                    svid: token,
                }))
                .await
        })
    };
    validate(&token).expect("valid while the holder lives");

    // kill -9 the holder: the agent ends the task, as "requester exited", within 1 s.
    let killed = Instant::now();
    sh.kill().unwrap();
    let ended = wait_for(Duration::from_secs(5), || {
        let t = task_show(&c, &id);
        (t["state"] != "active").then_some(t)
    })
    .expect("the task ends after its holder is killed");
    let took = killed.elapsed();
    println!(
        "holder killed -> task {} ({}) in {} ms",
        ended["state"],
        ended["end_reason"],
        took.as_millis()
    );
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert_eq!(ended["end_reason"], "requester exited", "{ended}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    sh.wait().unwrap();
    // ValidateJWTSVID refuses the task's token, within a second of the kill.
    let refused = wait_for(Duration::from_secs(5), || validate(&token).err());
    let took = killed.elapsed();
    println!(
        "holder killed -> its task's JWT-SVID refused by ValidateJWTSVID in {} ms",
        took.as_millis()
    );
    let refused = refused.expect("the token is refused once the task ended");
    assert!(
        refused.message().contains("has ended (cancelled)"),
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The open stream of the (orphaned) descendant loses the SVID.
    let gone = wait_for(Duration::from_secs(5), || {
        let updates = watch_updates(&watch_out);
        (updates.len() > updates_before && updates.last()?.iter().all(|i| i != TOOL)).then_some(())
    });
    println!(
        "holder killed -> SVID gone from the descendant's stream in {} ms",
        killed.elapsed().as_millis()
    );
    kill(watch, "-9");
    assert!(gone.is_some(), "{:?}", watch_updates(&watch_out));

    // The audit log records who ended it and why.
    let out = c
        .server
        .cli(&["audit", "show", "--task", &id, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ended_record = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["kind"] == "task.ended")
        .expect("a task.ended record");
    assert_eq!(
        ended_record["detail"]["reason"], "requester exited",
        "{ended_record}"
    );
    assert_eq!(
        ended_record["detail"]["state"], "cancelled",
        "{ended_record}"
    );
    assert_eq!(
        ended_record["detail"]["by"],
        tests::AGENT_ID,
        "{ended_record}"
    );
}

#[test]
fn a_process_bound_task_whose_holder_is_gone_at_begin_ends_at_once() {
    let (c, _p) = cluster();
    // The CLI binds the task to itself and exits at once: the task ends by itself.
    let out = cli_begin(&c, &[]);
    assert!(
        stderr(&out).contains("bound to this command's own process"),
        "the CLI says so: {}",
        stderr(&out)
    );
    let t = ok_json(&out, "begin bound to the CLI");
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["binding"]["kind"], "process", "{t}");
    let ended = wait_for(Duration::from_secs(5), || {
        let t = task_show(&c, &id);
        (t["state"] != "active").then_some(t)
    })
    .expect("the task ends once its requester exited");
    assert_eq!(ended["end_reason"], "requester exited", "{ended}");
}

#[test]
fn bind_selectors_keeps_serving_every_matching_process() {
    let (c, _p) = cluster();
    let t = ok_json(
        &cli_begin(&c, &["--bind", "selectors"]),
        "begin --bind selectors",
    );
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["binding"]["kind"], "selectors", "{t}");
    // The CLI that began it has exited; the task lives on, and any process of uid 0
    // receives its SVID.
    let got = wait_for(Duration::from_secs(10), || {
        let ids = child_ids(&c);
        ids.iter().any(|i| i == TOOL).then_some(ids)
    });
    assert!(got.is_some(), "another process gets the task's SVID");
    assert_eq!(task_show(&c, &id)["state"], "active");
    // --bind-pid makes no sense with selectors.
    let out = cli_begin(&c, &["--bind", "selectors", "--bind-pid", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bind_pid"), "{}", stderr(&out));
}

#[test]
fn a_restarted_agent_ends_a_task_whose_holder_exited_while_it_was_down() {
    let (mut c, _p) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (mut sh, task, watch, _) = shell_holder(&c, "process", dir.path());
    kill(watch, "-9");
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["state"], "active", "{task}");
    // Let the agent persist the grant (its cache file is written at most twice a second).
    std::thread::sleep(Duration::from_millis(1500));
    c.agent.stop();
    sh.kill().unwrap();
    sh.wait().unwrap();
    assert_eq!(
        task_show(&c, &id)["state"],
        "active",
        "nobody watched the holder while the agent was down"
    );
    let restarted = Instant::now();
    c.agent.restart(None);
    let ended = wait_for(Duration::from_secs(10), || {
        let t = task_show(&c, &id);
        (t["state"] != "active").then_some(t)
    })
    .expect("the restarted agent ends the task of a holder that is gone");
    println!(
        "agent restarted -> task {} ({}) in {} ms",
        ended["state"],
        ended["end_reason"],
        restarted.elapsed().as_millis()
    );
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert_eq!(ended["end_reason"], "requester exited", "{ended}");
}

/// The serial and task of each TOOL SVID in one X.509-SVID message.
fn tool_svids(msg: &common::proto::workload::X509svidResponse) -> Vec<(String, String)> {
    msg.svids
        .iter()
        .filter(|s| s.spiffe_id == TOOL)
        .map(|s| {
            let (_, cert) = X509Certificate::from_der(&s.x509_svid).unwrap();
            let task = common::task::task_id_of_certificate(&s.x509_svid)
                .map(|t| t.to_string())
                .unwrap_or_default();
            (hex::encode(cert.raw_serial()), task)
        })
        .collect()
}

#[test]
fn parallel_tasks_on_one_entry_each_reach_only_their_own_process() {
    let (c, _p) = cluster();
    let dir = tempfile::tempdir().unwrap();
    tests::runtime().block_on(async {
        // Two processes of uid 0 each begin a task on the same just-in-time entry.
        let mine = begin_here(&c, "").await;
        let (mut sh, theirs, watch, watch_out) = shell_holder(&c, "tree", dir.path());
        let theirs_id = theirs["id"].as_str().unwrap().to_owned();
        assert_eq!(theirs["state"], "active", "{theirs}");
        assert_ne!(mine.id, theirs_id);
        let mut stream = tests::workload_client(&c.agent.socket_path)
            .await
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let deadline = Instant::now() + Duration::from_secs(10);
        let own = loop {
            let msg = tokio::time::timeout_at(deadline, stream.message())
                .await
                .expect("this process's task SVID within 10 s")
                .unwrap()
                .unwrap();
            let tool = tool_svids(&msg);
            if !tool.is_empty() {
                break tool;
            }
        };
        // This process sees exactly one SVID of the identity: its own task's.
        assert_eq!(own.len(), 1, "{own:?}");
        assert_eq!(own[0].1, mine.id, "the SVID names this process's task");
        // The shell's child sees its own, with another serial.
        let theirs_serial = wait_for(Duration::from_secs(10), || {
            let updates = watch_updates(&watch_out);
            let last = updates.last()?;
            last.iter().any(|i| i == TOOL).then_some(())?;
            let v: Value =
                serde_json::from_str(std::fs::read_to_string(&watch_out).ok()?.lines().last()?)
                    .ok()?;
            v["svids"]
                .as_array()?
                .iter()
                .filter(|s| s["spiffe_id"] == TOOL)
                .map(|s| s["serial"].as_str().unwrap_or_default().to_owned())
                .next()
        })
        .expect("the other task's SVID reaches the shell's child");
        println!(
            "parallel tasks: {} serial {} / {theirs_id} serial {theirs_serial}",
            mine.id, own[0].0
        );
        assert_ne!(theirs_serial, own[0].0, "distinct serials");
        let tool_count: usize = watch_updates(&watch_out)
            .last()
            .map_or(0, |ids| ids.iter().filter(|i| *i == TOOL).count());
        assert_eq!(tool_count, 1, "the child sees only its own task's SVID");

        // Ending this process's task leaves the other one working.
        tasks_client(&c)
            .await
            .end_task(with_header(EndTaskRequest {
                id: mine.id.clone(),
                outcome: "completed".into(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout_at(deadline, stream.message())
                .await
                .expect("this process's task SVID leaves its stream")
                .unwrap()
                .unwrap();
            if tool_svids(&msg).is_empty() {
                break;
            }
        }
        assert_eq!(task_show(&c, &theirs_id)["state"], "active");
        assert!(
            watch_updates(&watch_out)
                .last()
                .is_some_and(|ids| ids.iter().any(|i| i == TOOL)),
            "the other task's SVID stays with its process"
        );
        sh.kill().unwrap();
        sh.wait().unwrap();
        kill(watch, "-9");
    });
}

/// The second node of the two-node kill -9 test below.
const NODE_B: &str = "spiffe://example.org/node/b";
/// A standing workload on node B that validates tokens.
const VALIDATOR: &str = "spiffe://example.org/svc/validator";

/// Unix milliseconds now.
fn unix_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

/// One server, two nodes. On node A a runtime (`sh`) begins a task bound to itself and
/// its descendants (`--bind tree`); its child holds an open X.509-SVID stream carrying
/// the task's SVID, and another child takes the task's JWT-SVID, which a workload on node
/// B validates through node B's agent. `kill -9` of the runtime: (a) node A's agent ends
/// the task, "requester exited"; (b) the child's open stream on node A drops the task's
/// SVID and (c) node B's `ValidateJWTSVID` refuses the token, each within 1 s of the
/// kill, measured and printed.
///
/// A process-bound task's SVIDs are served only on the node of its holder (the binding
/// names the agent), so the stream that loses the SVID is on the holder's node; the other
/// node sees the end through the revocations every agent receives.
#[test]
fn kill_9_of_a_tree_bound_runtime_reaches_its_childs_stream_and_another_node_within_a_second() {
    let (c, _p) = cluster();
    // Node B: a second agent of the same server, with a standing workload of its own.
    let join = c.server.token(NODE_B);
    let mut node_b = tests::AgentProc::new(&c.dir.path().join("node-b"), &c.server);
    node_b.restart(Some(&join));
    c.server.wait_attested(NODE_B, Duration::from_secs(30));
    c.server.cli_json(&[
        "entry",
        "create",
        "--parent-id",
        NODE_B,
        "--spiffe-id",
        VALIDATOR,
        "--selector",
        "unix:uid:0",
    ]);
    let rt = tests::runtime();
    rt.block_on(async {
        let mut s = tests::workload_client(&node_b.socket_path)
            .await
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .expect("node B's stream")
            .into_inner();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let msg = tokio::time::timeout_at(deadline, s.message())
                .await
                .expect("node B serves its workload within 15 s")
                .unwrap()
                .unwrap();
            if msg.svids.iter().any(|s| s.spiffe_id == VALIDATOR) {
                break;
            }
        }
    });

    // Node A: the runtime, its child's open stream, the task's JWT-SVID.
    let dir = tempfile::tempdir().unwrap();
    let (mut sh, task, watch, watch_out) = shell_holder(&c, "tree", dir.path());
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["binding"]["kind"], "tree", "{task}");
    assert_eq!(task["binding"]["agent_id"], tests::AGENT_ID, "{task}");
    wait_for(Duration::from_secs(10), || {
        watch_updates(&watch_out)
            .last()
            .filter(|ids| ids.iter().any(|i| i == TOOL))
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("the child's stream: {:?}", watch_updates(&watch_out)));
    let token = wait_for(Duration::from_secs(10), || {
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("jwt.json")).ok()?).ok()?;
        v["svids"][0]["svid"].as_str().map(str::to_owned)
    })
    .expect("the runtime's child got the task's JWT-SVID");
    assert_eq!(tests::jwt::segment(&token, 1)["task_id"], id.as_str());
    let validate_request = || {
        with_header(ValidateJwtsvidRequest {
            audience: "tools".into(),
            svid: token.clone(),
        })
    };
    let mut validator = rt.block_on(tests::workload_client(&node_b.socket_path));
    rt.block_on(validator.validate_jwtsvid(validate_request()))
        .expect("node B accepts the token while the runtime lives");
    let updates_before = watch_updates(&watch_out).len();

    // kill -9 the runtime; watch the child's stream (node A) and node B's validation.
    let killed_ms = unix_ms();
    let killed = Instant::now();
    sh.kill().unwrap();
    let (mut stream_dropped, mut refused) = (None, None);
    rt.block_on(async {
        let deadline = killed + Duration::from_secs(5);
        while (stream_dropped.is_none() || refused.is_none()) && Instant::now() < deadline {
            if refused.is_none()
                && let Err(status) = validator.validate_jwtsvid(validate_request()).await
            {
                refused = Some((killed.elapsed(), status));
            }
            if stream_dropped.is_none() {
                let updates = watch_updates(&watch_out);
                if updates.len() > updates_before
                    && updates
                        .last()
                        .is_some_and(|ids| ids.iter().all(|i| i != TOOL))
                {
                    stream_dropped = Some(killed.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    sh.wait().unwrap();
    kill(watch, "-9");

    // (a) The task ended by itself, as "requester exited", ended by node A's agent.
    let ended = wait_for(Duration::from_secs(5), || {
        let t = task_show(&c, &id);
        (t["state"] != "active").then_some(t)
    })
    .expect("the task ends after its runtime is killed");
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert_eq!(ended["end_reason"], "requester exited", "{ended}");
    let out = c
        .server
        .cli(&["audit", "show", "--task", &id, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["kind"] == "task.ended")
        .expect("a task.ended record");
    assert_eq!(record["detail"]["by"], tests::AGENT_ID, "{record}");
    let end_ms = record["at_ms"].as_i64().unwrap() - killed_ms;

    let (refused_after, status) = refused.expect("node B refuses the token within 5 s");
    let dropped_after = stream_dropped.unwrap_or_else(|| {
        panic!(
            "the child's stream kept the SVID: {:?}",
            watch_updates(&watch_out)
        )
    });
    println!(
        "runtime killed -> (a) task ended (requester exited) after {end_ms} ms; (b) SVID gone \
         from the child's stream on node A after {} ms; (c) ValidateJWTSVID on node B refuses \
         the token after {} ms",
        dropped_after.as_millis(),
        refused_after.as_millis()
    );
    assert!(
        status.message().contains("has ended (cancelled)"),
        "{status:?}"
    );
    assert!(end_ms < 1000, "(a) took {end_ms} ms");
    assert!(
        dropped_after < Duration::from_secs(1),
        "(b) took {dropped_after:?}"
    );
    assert!(
        refused_after < Duration::from_secs(1),
        "(c) took {refused_after:?}"
    );
}

/// As [`POLICIES`], with at most two tasks at once per entry for workloads and operators.
const PARALLEL_POLICIES: &str = r#"
@id("workloads") @max_parallel("2") permit(principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource);
@id("operators") @max_parallel("2") permit(principal is Tessera::User, action == Tessera::Action::"begin_task", resource);
@id("issue") permit(principal, action == Tessera::Action::"issue_svid", resource);
"#;

#[test]
fn a_tenants_parallel_task_quota_bounds_tasks_per_entry_and_explain_names_it() {
    let (c, _p) = cluster_with(PARALLEL_POLICIES);
    let dir = tempfile::tempdir().unwrap();
    // `task explain` shows the policy's cap before anything is begun.
    let d = c.server.cli_json(&["task", "explain", "--spiffe-id", TOOL]);
    assert_eq!(d["max_parallel"], 2, "{d}");
    assert!(
        d["explanation"]
            .as_str()
            .unwrap()
            .contains("at most 2 parallel"),
        "{d}"
    );
    // The tenant allows three: the policy's two applies.
    let t = c.server.cli_json(&[
        "tenant",
        "update",
        "--name",
        "default",
        "--max-parallel-tasks-per-entry",
        "3",
    ]);
    assert_eq!(t["max_parallel_tasks_per_entry"], 3, "{t}");
    tests::runtime().block_on(async {
        let mine = begin_here(&c, "").await;
        assert_eq!(mine.state, "active");
        assert_eq!(mine.decision.as_ref().unwrap().max_parallel, 2);
        let (mut sh, theirs, watch, _) = shell_holder(&c, "process", dir.path());
        assert_eq!(theirs["state"], "active", "{theirs}");
        // A third process is refused, the limit named; nothing is stored.
        let before = c.server.cli_json(&["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .len();
        let third = cli_begin(&c, &[]);
        assert!(!third.status.success());
        let why = stderr(&third);
        assert!(
            why.contains(
                "already has 2 open tasks: at most 2 at once (@max_parallel of \
                 policies [binding.cedar:workloads])"
            ),
            "{why}"
        );
        // The tenant's own limit, lowered to one, is named when it is the least.
        c.server.cli_json(&[
            "tenant",
            "update",
            "--name",
            "default",
            "--max-parallel-tasks-per-entry",
            "1",
        ]);
        let again = cli_begin(&c, &[]);
        let why = stderr(&again);
        assert!(
            why.contains("at most 1 at once (tenant default's max_parallel_tasks_per_entry)"),
            "{why}"
        );
        assert_eq!(
            c.server.cli_json(&["task", "list"])["tasks"]
                .as_array()
                .unwrap()
                .len(),
            before,
            "refused tasks are not stored"
        );
        // Ending one makes room again under the policy's cap, once the tenant's is lifted.
        c.server.cli_json(&[
            "tenant",
            "update",
            "--name",
            "default",
            "--max-parallel-tasks-per-entry",
            "0",
        ]);
        let shown = c.server.cli_json(&["tenant", "show", "--name", "default"]);
        assert_eq!(
            shown["max_parallel_tasks_per_entry"],
            Value::Null,
            "{shown}"
        );
        tasks_client(&c)
            .await
            .end_task(with_header(EndTaskRequest {
                id: mine.id.clone(),
                outcome: "completed".into(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        let next = begin_here(&c, "").await;
        assert_eq!(next.state, "active");
        sh.kill().unwrap();
        sh.wait().unwrap();
        kill(watch, "-9");
    });
}
