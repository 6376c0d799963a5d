//! An agent whose server dies in the middle of a stream of changes resumes on another
//! server of the cluster from where it was: three servers (A, B, C) on one PostgreSQL
//! database (a fresh one per test), an agent given A then B, holding 40 standing entries
//! and one task. While changes are made on C, A is frozen (SIGSTOP), the task is revoked on
//! C (A's agent cannot hear of it), and A is killed (SIGKILL). The agent moves to B and
//! gets only what changed since its last position (no snapshot), with the task's end
//! applied before anything else: the first answer after the switch refuses the task's
//! token. A workload fetching SVIDs throughout never sees a failed fetch; at the end the
//! agent serves exactly the entries stored for it, each once, and the audit chain
//! verifies on every surviving server. Restarted, the agent resumes from the position
//! persisted with its cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
use tests::{AgentProc, ServerProc, runtime, uid_selector, wait_for, with_header};
use tokio::time::Instant;

use tests::TestDb;

const NODE: &str = "spiffe://example.org/node/resume";
const JIT: &str = "spiffe://example.org/resume/task";
/// Standing entries before the switch.
const OLD: usize = 40;
/// Entries created, and old ones deleted, on C during the switch.
const CHANGES: usize = 12;

fn old(i: usize) -> String {
    format!("spiffe://example.org/resume/old-{i}")
}

fn new(i: usize) -> String {
    format!("spiffe://example.org/resume/new-{i}")
}

fn signal(server: &mut ServerProc, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.pid()).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

async fn client(socket: &std::path::Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(socket).await)
}

async fn validate(socket: &std::path::Path, token: &str) -> Result<(), tonic::Status> {
    client(socket)
        .await
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "tools".into(),
            svid: token.into(),
        }))
        .await
        .map(|_| ())
}

/// `upserted=N deleted=M` of the agent's "sync resumed" log line.
fn resumed_counts(log: &str) -> Option<(usize, usize)> {
    let line = log.lines().find(|l| l.contains("sync resumed"))?;
    let field = |name: &str| -> Option<usize> {
        let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("upserted")?, field("deleted")?))
}

#[test]
fn an_agent_resumes_on_another_server_from_where_it_was_with_revocations_first() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let [mut a, b, c] = db.servers(dir.path(), ["a", "b", "c"], &[]);
    // Every CA in the bundle before the agent takes it, so any server is trusted.
    a.wait_bundle_cas(3, Duration::from_secs(20));

    let mut agent = AgentProc::new(&dir.path().join("agent"), &a)
        .with_args(&["--server-address", &b.address()]);
    agent.restart(Some(&a.token(NODE)));
    a.wait_attested(NODE, Duration::from_secs(30));
    let old_ids: Vec<String> = (0..OLD)
        .map(|i| a.create_entry_under(NODE, &old(i), &[&uid_selector()], &[]))
        .collect();
    let jit = a.create_entry_under(
        NODE,
        JIT,
        &[&uid_selector()],
        &["--jit", "--x509-svid-ttl", "3600"],
    );
    let t = a.cli_json(&[
        "task",
        "create",
        "--entry-id",
        &jit,
        "--reason",
        "resume e2e",
        "--audience",
        "tools",
        "--ttl",
        "600",
    ]);
    assert_eq!(t["state"], "active", "{t}");
    let task_id = t["id"].as_str().unwrap().to_owned();
    let mut before: Vec<String> = (0..OLD).map(old).collect();
    before.push(JIT.to_owned());
    before.sort();
    let served = wait_for(Duration::from_secs(60), || {
        (agent.fetch_ids().ok()? == before).then_some(())
    });
    assert!(
        served.is_some(),
        "the agent never served the 41 entries:\n{}",
        agent.log_tail()
    );

    let rt = runtime();
    let socket = agent.socket_path.clone();
    let token = rt
        .block_on(async {
            client(&socket)
                .await
                .fetch_jwtsvid(with_header(JwtsvidRequest {
                    audience: vec!["tools".into()],
                    spiffe_id: JIT.into(),
                }))
                .await
        })
        .expect("a JWT-SVID under the task")
        .into_inner()
        .svids[0]
        .svid
        .clone();
    rt.block_on(validate(&socket, &token))
        .expect("the task's token validates while it is active");

    // A workload fetching throughout: every fetch must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (stop, fetches, socket) = (Arc::clone(&stop), Arc::clone(&fetches), socket.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let got = rt.block_on(async {
                    let mut stream = client(&socket)
                        .await
                        .fetch_x509svid(with_header(X509svidRequest {}))
                        .await?
                        .into_inner();
                    stream.message().await
                });
                match got {
                    Ok(Some(m)) if !m.svids.is_empty() => {}
                    other => failures.push(format!("{other:?}")),
                }
                fetches.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            failures
        })
    };

    // Changes on C, before, during and after the switch.
    let (switch, since) = std::thread::scope(|s| {
        let (c, old_ids) = (&c, &old_ids);
        let writer = s.spawn(move || {
            for (i, id) in old_ids.iter().enumerate().take(CHANGES) {
                c.create_entry_under(NODE, &new(i), &[&uid_selector()], &[]);
                c.cli_json(&["entry", "delete", "--entry-id", id]);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // A few changes reach the agent through A, then A freezes: the task revoked on C
        // now can reach the agent only after it has moved.
        std::thread::sleep(Duration::from_millis(400));
        signal(&mut a, nix::sys::signal::Signal::SIGSTOP);
        // A may be frozen in the middle of a write, holding the cluster's write lock: the
        // database ends that transaction after `idle_in_transaction_session_timeout`
        // (10 s) and the revocation goes through.
        let revoking = Instant::now();
        let ended = c.cli_json(&["task", "revoke", &task_id, "--reason", "switch"]);
        assert_eq!(ended["state"], "revoked", "{ended}");
        println!(
            "resume: the revocation on C took {} ms with A frozen",
            revoking.elapsed().as_millis()
        );
        let offset = agent.log_len();
        let killed = Instant::now();
        a.kill();
        let resumed = wait_for(Duration::from_secs(10), || {
            agent
                .log_since(offset)
                .contains("sync resumed")
                .then(Instant::now)
        })
        .unwrap_or_else(|| panic!("the agent never resumed:\n{}", agent.log_tail()));
        // The first answer after the switch already refuses the revoked task's token.
        let first = rt.block_on(validate(&socket, &token));
        assert!(
            first.is_err(),
            "the task revoked while the agent was switching still validated after the resume"
        );
        writer.join().expect("the writer on C");
        (resumed - killed, agent.log_since(offset))
    });
    println!(
        "resume: {} ms from kill -9 of A to the agent's resumed sync on B",
        switch.as_millis()
    );
    assert!(
        !since.contains("entry snapshot received"),
        "the agent re-downloaded everything instead of resuming:\n{since}"
    );
    let (upserted, deleted) =
        resumed_counts(&since).unwrap_or_else(|| panic!("no counts in:\n{since}"));
    println!(
        "resume: the delta held {upserted} upserted and {deleted} deleted entries (of {OLD} standing)"
    );
    assert!(
        upserted + deleted <= 2 * CHANGES + 1,
        "more than what changed: {upserted} + {deleted}"
    );

    // Everything stored for the agent, each once, and nothing else.
    let mut expected: Vec<String> = (CHANGES..OLD)
        .map(old)
        .chain((0..CHANGES).map(new))
        .collect();
    expected.sort();
    let settled = wait_for(Duration::from_secs(10), || {
        let list = agent.fetch_x509().ok()?;
        let ids: Vec<String> = list.iter().map(|s| s.spiffe_id.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        (sorted == expected).then_some(ids.len())
    });
    assert_eq!(
        settled,
        Some(expected.len()),
        "the agent did not end with exactly the stored entries:\n{}",
        agent.log_tail()
    );
    stop.store(true, Ordering::Relaxed);
    let failures = prober.join().unwrap();
    println!(
        "resume: {} fetches during the test, {} failed",
        fetches.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "failed fetches: {failures:?}");
    for server in [&b, &c] {
        let v = server.cli_json(&["audit", "verify"]);
        assert_eq!(v["ok"], true, "{v}");
    }

    // Restarted, the agent resumes from the position persisted with its cache, and what
    // changed while it was down arrives.
    let offset = agent.log_len();
    agent.terminate();
    c.create_entry_under(NODE, &new(CHANGES), &[&uid_selector()], &[]);
    agent.restart(None);
    expected.push(new(CHANGES));
    expected.sort();
    let caught_up = wait_for(Duration::from_secs(20), || {
        (agent.fetch_ids().ok()? == expected).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the restarted agent never served what changed while it was down:\n{}",
        agent.log_tail()
    );
    let since = agent.log_since(offset);
    assert!(
        !since.contains("entry snapshot received"),
        "the restarted agent re-downloaded everything:\n{since}"
    );
    // The position persisted is that of the last change applied with one (a position sent
    // alone is not written): the entry created meanwhile, and at most the writer's last
    // few changes again.
    let (upserted, deleted) =
        resumed_counts(&since).unwrap_or_else(|| panic!("no resume after restart:\n{since}"));
    println!("resume after restart: {upserted} upserted, {deleted} deleted");
    assert!(
        upserted >= 1 && upserted + deleted <= 4,
        "{upserted} + {deleted}:\n{since}"
    );
}
