//! The PostgreSQL datastore end to end: a server on a fresh database enrolls an agent,
//! stores entries and a task, and after a restart has all of it (the agent still gets its
//! SVIDs, a new entry reaches it, the audit chain verifies); two servers appending to one
//! database keep one valid chain. A database written by release 7c0b47d is upgraded in
//! place when the server starts; one whose schema is newer than the server knows stops
//! it with a message saying to upgrade.
//!
//! The database is created and dropped with `psql` on `TESSERA_TEST_POSTGRES_URL`
//! ([`tests::TestDb`]). When PostgreSQL does not answer, these tests fail; they never skip.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{
    AGENT_ID, AgentProc, Cluster, ServerProc, TRUST_DOMAIN, TestDb, bin, free_port, wait_for,
};
const WEB: &str = "spiffe://example.org/pg/web";
const JIT: &str = "spiffe://example.org/pg/jit";
const LATE: &str = "spiffe://example.org/pg/after-restart";

/// The PostgreSQL datastore written by release 7c0b47d (`pg_dump` of the schema
/// `tessera_fixture`), made by `server/src/datastore/fixtures/generate.sh`.
const RELEASE_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../server/src/datastore/fixtures/postgres-7c0b47d.sql"
);

fn ok_json(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// SPIFFE IDs the agent serves to the caller (uid 0), sorted; none if the fetch fails.
fn served(c: &Cluster) -> Vec<String> {
    c.agent.fetch_ids().unwrap_or_default()
}

fn wait_served(c: &Cluster, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let got = wait_for(Duration::from_secs(30), || {
        let ids = served(c);
        (ids == want).then_some(ids)
    });
    assert!(
        got.is_some(),
        "agent never served {want:?} (last: {:?})\n{}",
        served(c),
        c.agent.log_tail()
    );
}

fn audit_count(server: &ServerProc) -> usize {
    let out = server.cli(&["audit", "show", "--output", "json"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn audit_verify(server: &ServerProc) -> Value {
    ok_json(
        &server.cli(&["audit", "verify", "--output", "json"]),
        "audit verify",
    )
}

#[test]
fn everything_survives_a_restart_on_postgres_and_two_servers_share_one_audit_chain() {
    let db = TestDb::create();
    let mut c = Cluster::start(&["--datastore", &db.url]);
    assert!(
        !c.server.data_dir.join("datastore.sqlite3").exists(),
        "the server must not fall back to SQLite"
    );
    assert_eq!(
        db.query("SELECT spiffe_id FROM agents"),
        AGENT_ID,
        "the enrolled agent is in PostgreSQL"
    );

    let web = c.server.create_entry(WEB, &["unix:uid:0"], &[]);
    let jit = c.server.create_entry(JIT, &["unix:uid:0"], &["--jit"]);
    let t = ok_json(
        &c.server.cli(&[
            "task",
            "create",
            "--entry-id",
            &jit,
            "--ttl",
            "600",
            "--reason",
            "e2e",
            "--output",
            "json",
        ]),
        "task create",
    );
    let task_id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["state"], "active", "{t}");
    wait_served(&c, &[WEB, JIT]);
    let before = audit_count(&c.server);
    assert!(before >= 5, "enrollment, entries, task, issuance: {before}");
    assert_eq!(
        db.query("SELECT count(*) FROM audit_log"),
        before.to_string()
    );

    // Restart: entries, the task, the agent record and the audit log are all still there.
    c.server.stop();
    c.server.restart();
    let entries = c.server.cli_json(&["entry", "show"]);
    let mut ids: Vec<&str> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![web.as_str(), jit.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    let shown = c.server.cli_json(&["task", "show", &task_id]);
    assert_eq!(shown["state"], "active", "{shown}");
    assert_eq!(shown["entry_id"], jit.as_str(), "{shown}");
    let agents = c.server.cli_json(&["agent", "list"]);
    assert_eq!(agents["agents"][0]["spiffe_id"], AGENT_ID, "{agents}");
    assert_eq!(agents["agents"][0]["banned"], false);
    assert!(audit_count(&c.server) >= before);

    // The agent reconnects with its stored identity (checked against the agent record in
    // PostgreSQL) and gets SVIDs signed after the restart, for old and new entries.
    c.server.create_entry(LATE, &["unix:uid:0"], &[]);
    wait_served(&c, &[WEB, JIT, LATE]);
    let v = audit_verify(&c.server);
    assert_eq!(v["ok"], true, "{v}");

    // A second server on the same database: both append audit records concurrently (an
    // entry change is one record each) and the chain stays whole.
    let second = db.server(c.dir.path(), "second", &[]);
    let start = audit_count(&c.server);
    const PER_SERVER: usize = 15;
    std::thread::scope(|s| {
        for (n, server) in [&c.server, &second].into_iter().enumerate() {
            s.spawn(move || {
                for i in 0..PER_SERVER {
                    server.create_entry(
                        &format!("spiffe://example.org/pg/s{n}/{i}"),
                        &["unix:uid:4242"],
                        &[],
                    );
                }
            });
        }
    });
    let end = audit_count(&second);
    assert!(
        end >= start + 2 * PER_SERVER,
        "every entry change recorded: {start} -> {end}"
    );
    for server in [&c.server, &second] {
        let v = audit_verify(server);
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["records"].as_u64().unwrap() >= end as u64, "{v}");
    }
    assert_eq!(
        db.query("SELECT count(*) FROM entries"),
        (3 + 2 * PER_SERVER).to_string()
    );
}

/// `url` with `search_path` set to `schema`.
fn in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

#[test]
fn a_release_database_is_upgraded_at_start_and_a_newer_schema_stops_the_server() {
    let db = TestDb::create();
    db.run_file(RELEASE_FIXTURE);
    // The fixture was written at a fixed time; its open tasks get a deadline a day from
    // now, as if the release had written it just before this upgrade (else the server
    // would expire them at start and delete the entry one of them provisioned).
    db.query(
        "UPDATE tessera_fixture.tasks SET deadline = extract(epoch FROM now())::bigint + 86400 \
         WHERE state IN ('pending_approval', 'active')",
    );
    let url = in_schema(&db.url, "tessera_fixture");
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), &["--datastore", &url]);

    // Migrated in place: the release's tables recorded as version 1, later versions applied.
    assert_eq!(
        db.query(
            "SELECT string_agg(version || ' ' || how, ',' ORDER BY version) \
             FROM tessera_fixture.tessera_schema"
        ),
        "1 baseline,2 applied,3 applied,4 applied,5 applied,6 applied,7 applied,8 applied,9 applied,10 applied,11 applied,12 applied,13 applied,14 applied,15 applied"
    );
    // Everything the release stored is served by this server.
    let entries = server.cli_json(&["entry", "show"]);
    let mut ids: Vec<&str> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["spiffe_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/db",
            "spiffe://example.org/jit/deploy",
            "spiffe://example.org/jit/ops",
            "spiffe://example.org/jit/tmp",
            "spiffe://example.org/web",
        ]
    );
    let agents = server.cli_json(&["agent", "list"]);
    let banned: Vec<(&str, bool)> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["spiffe_id"].as_str().unwrap(),
                a["banned"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        banned,
        [
            ("spiffe://example.org/node/fixture", false),
            ("spiffe://example.org/node/banned", true)
        ]
    );
    let tasks = server.cli_json(&["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 3, "{tasks}");
    // A release did not record which Unix user requested a task (such a task cannot be
    // approved: see the task unit tests).
    for t in tasks["tasks"].as_array().unwrap() {
        assert!(
            t["requester_uid"].is_null() && t["requester_user"].is_null(),
            "{t}"
        );
        // Nor which JWT audiences it would use (schema version 7): it gets no JWT-SVIDs.
        assert_eq!(t["audiences"], serde_json::json!([]), "{t}");
        // Nor what it was bound to (schema version 8): it was bound by selectors.
        assert_eq!(t["binding"]["kind"], "selectors", "{t}");
        // Nor break-glass (schema version 9): nothing awaits an after-the-fact review.
        assert_eq!(t["break_glass"], false, "{t}");
        assert_eq!(t["flags"], serde_json::json!([]), "{t}");
    }
    let v = audit_verify(&server);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["records"].as_u64().unwrap() >= 25, "{v}");
    // A duplicate of a release's entry is refused: its identity was computed as now.
    let dup = server.cli(&[
        "entry",
        "create",
        "--parent-id",
        "spiffe://example.org/node/fixture",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--selector",
        "unix:uid:0",
    ]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    server.stop();

    // As if a newer release had upgraded the database: this server refuses to start.
    let known: u32 = db
        .query("SELECT max(version) FROM tessera_fixture.tessera_schema")
        .parse()
        .unwrap();
    db.query(&format!(
        "INSERT INTO tessera_fixture.tessera_schema \
         (version, description, checksum, installed_at, how) \
         VALUES ({}, 'a newer release', '', 0, 'applied')",
        known + 1
    ));
    let mut child = Command::new(bin("tessera-server"))
        .arg("run")
        .args(["--trust-domain", TRUST_DOMAIN])
        .arg("--data-dir")
        .arg(&server.data_dir)
        .arg("--admin-socket")
        .arg(dir.path().join("refused.sock"))
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--datastore", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(30), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server must exit: {stderr}"
    );
    for part in [
        format!("schema is version {}", known + 1),
        format!("up to version {known}"),
        "upgrade tessera-server".to_owned(),
    ] {
        assert!(stderr.contains(&part), "{part:?} not in: {stderr}");
    }
}

/// The audit records of `kind` about `subject`, as `server` shows them.
fn audit_records(server: &ServerProc, kind: &str, subject: &str) -> Vec<Value> {
    let out = server.cli(&["audit", "show", "--output", "json"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == kind && v["subject"] == subject)
        .collect()
}

#[test]
fn a_join_token_presented_to_two_servers_at_once_enrolls_exactly_one_agent() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let servers = db.servers(dir.path(), ["a", "b"], &[]);
    const ROUNDS: usize = 5;
    let mut wins = [0; 2];
    for round in 0..ROUNDS {
        let node = format!("spiffe://example.org/node/race-{round}");
        let token = servers[round % 2].token(&node);
        // One agent per server, each trusting its server's CA (servers on one database
        // still have a CA each), started together with the same token.
        let mut agents: Vec<AgentProc> = servers
            .iter()
            .enumerate()
            .map(|(n, s)| AgentProc::new(&dir.path().join(format!("r{round}-{n}")), s))
            .collect();
        let barrier = std::sync::Barrier::new(agents.len());
        std::thread::scope(|s| {
            for agent in &mut agents {
                let (barrier, token) = (&barrier, &token);
                s.spawn(move || {
                    barrier.wait();
                    agent.spawn(Some(token));
                });
            }
        });
        // The loser exits, refused; the winner stays and keeps its identity.
        let refused = wait_for(Duration::from_secs(30), || {
            agents
                .iter_mut()
                .position(|a| a.exited().is_some_and(|code| code != 0))
        });
        let Some(loser) = refused else {
            panic!(
                "round {round}: no agent was refused:\n{}\n{}",
                agents[0].log_tail(),
                agents[1].log_tail()
            );
        };
        let winner = 1 - loser;
        let log = agents[loser].log_text();
        assert!(
            log.contains("join token is invalid or has already been used"),
            "round {round}: the refused agent says why:\n{log}"
        );
        assert!(!agents[loser].data_dir.join("agent_svid.key").exists());
        servers[winner].wait_attested(&node, Duration::from_secs(30));
        assert!(
            wait_for(Duration::from_secs(30), || agents[winner]
                .data_dir
                .join("agent_svid.key")
                .exists()
                .then_some(()))
            .is_some(),
            "round {round}: the winner stores its identity:\n{}",
            agents[winner].log_tail()
        );
        assert!(
            agents[winner].is_running(),
            "round {round}: the winner runs:\n{}",
            agents[winner].log_tail()
        );
        assert_eq!(
            db.query(&format!(
                "SELECT count(*) FROM agents WHERE spiffe_id = '{node}'"
            )),
            "1"
        );
        assert_eq!(
            db.query("SELECT count(*) FROM join_tokens WHERE expires_at > 0"),
            "0",
            "the token is used up"
        );
        // One enrollment recorded, by whichever server won, seen from both.
        for server in &servers {
            let attested = audit_records(server, "agent.attested", &node);
            assert_eq!(attested.len(), 1, "round {round}: {attested:?}");
        }
        wins[winner] += 1;
        for agent in &mut agents {
            if agent.is_running() {
                agent.stop();
            }
        }
    }
    // Every loser's refusal is recorded too.
    let refusals = audit_records(&servers[0], "agent.attestation_refused", "unknown");
    assert_eq!(refusals.len(), ROUNDS, "{refusals:?}");
    let v = audit_verify(&servers[1]);
    assert_eq!(v["ok"], true, "{v}");
    eprintln!("wins by server: {wins:?}");
}
