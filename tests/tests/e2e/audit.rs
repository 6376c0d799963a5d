//! The audit log records every step in order, and `audit verify` detects an edited,
//! deleted or reordered record in the datastore and names the first bad one; against the
//! server's signed checkpoints it also detects what keeps the chain consistent: deleting
//! the newest records, and rewriting one with every later hash recomputed. Sequence
//! numbers are never used twice, and an altered checkpoint line is named.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use server::audit::anchor::{CHECKPOINT_FILE, KEY_FILE, PUBLIC_KEY_FILE};
use server::audit::{AuditRecord, record_hash};
use tests::{Cluster, Process, ServerProc, bin, wait_for};

fn kinds(c: &Cluster) -> Vec<(i64, String)> {
    let out = c.server.cli(&["audit", "show", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["seq"].as_i64().unwrap(),
                v["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn tamper(c: &Cluster, sql: &str) {
    c.server.tamper_sql(sql);
}

fn verify(c: &Cluster) -> (bool, String) {
    let out = c.server.cli(&["audit", "verify"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn lifecycle_is_recorded_and_tampering_is_detected() {
    let mut c = Cluster::start(&[]);
    let entry = c
        .server
        .create_entry("spiffe://example.org/audited", &["unix:uid:0"], &[]);
    let fetched = c.fetch_json();
    assert!(fetched.status.success());
    let token_out = c.agent.cli(&["api", "fetch", "jwt", "--audience", "tool"]);
    assert!(token_out.status.success());
    let deleted = c.server.cli(&["entry", "delete", "--entry-id", &entry]);
    assert!(deleted.status.success());

    let log = kinds(&c);
    let order: Vec<&str> = log.iter().map(|(_, k)| k.as_str()).collect();
    let pos = |k: &str| {
        order
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} missing from {order:?}"))
    };
    assert!(pos("join_token.created") < pos("agent.attested"));
    assert!(pos("agent.attested") < pos("entry.created"));
    assert!(pos("entry.created") < pos("svid.x509.issued"));
    assert!(pos("svid.x509.issued") < pos("entry.deleted"));
    assert!(order.contains(&"svid.jwt.issued"));
    let seqs: Vec<i64> = log.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let (ok, text) = verify(&c);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("{} records", seqs.len())), "{text}");

    // Edit one record's detail.
    c.server.stop();
    tamper(
        &c,
        "UPDATE audit_log SET detail = '{\"forged\":true}' WHERE seq = 3;",
    );
    c.server.restart();
    let (ok, text) = verify(&c);
    assert!(
        !ok && text.contains("record 3") && text.contains("edited"),
        "{text}"
    );

    // Delete record 2 as well: verification reports the first break in log order, which
    // is now record 3 (it no longer follows record 1).
    c.server.stop();
    tamper(&c, "DELETE FROM audit_log WHERE seq = 2;");
    c.server.restart();
    let (ok, text) = verify(&c);
    assert!(!ok && text.contains("record 3"), "{text}");
}

#[test]
fn reordering_is_detected() {
    let mut c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/a", &["unix:uid:0"], &[]);
    c.server
        .create_entry("spiffe://example.org/b", &["unix:uid:0"], &[]);
    assert!(verify(&c).0);
    let n = kinds(&c).len();
    assert!(n >= 4);
    c.server.stop();
    // Swap the contents of records 2 and 3 (hashes travel with their rows).
    tamper(
        &c,
        "UPDATE audit_log SET seq = -2 WHERE seq = 2;
         UPDATE audit_log SET seq = 2 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = -2;",
    );
    c.server.restart();
    let (ok, text) = verify(&c);
    assert!(!ok && text.contains("record 2"), "{text}");
}

/// A checkpoint after every append (at once, or within a second).
const ANCHORED: &[&str] = &[
    "--audit-checkpoint-records",
    "1",
    "--audit-checkpoint-interval",
    "1s",
];

fn checkpoint_file(s: &ServerProc) -> PathBuf {
    s.data_dir.join(CHECKPOINT_FILE)
}

/// The sequence numbers the server's checkpoint file covers, in file order.
fn checkpointed(s: &ServerProc) -> Vec<i64> {
    std::fs::read_to_string(checkpoint_file(s))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// The records, as `audit show --output json` exports them.
fn records(s: &ServerProc) -> Vec<Value> {
    let out = s.cli(&["audit", "show", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seqs(s: &ServerProc) -> Vec<i64> {
    records(s)
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

/// Creates an entry (one record) and waits until a checkpoint covers it; returns its seq.
fn anchored_entry(s: &ServerProc, name: &str) -> i64 {
    s.create_entry(
        &format!("spiffe://example.org/{name}"),
        &["unix:uid:0"],
        &[],
    );
    let head = *seqs(s).last().unwrap();
    let covered = wait_for(Duration::from_secs(10), || {
        checkpointed(s)
            .last()
            .is_some_and(|c| *c >= head)
            .then_some(())
    });
    assert!(
        covered.is_some(),
        "no checkpoint of record {head}:\n{}",
        s.log_tail()
    );
    head
}

/// `audit verify ARGS --output json`: success, the JSON report, stderr.
fn verify_json(s: &ServerProc, args: &[&str]) -> (bool, Value, String) {
    let mut all = vec!["audit", "verify"];
    all.extend(args);
    all.extend(["--output", "json"]);
    let out = s.cli(&all);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn deleting_the_newest_records_is_reported_and_their_numbers_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(dir.path(), ANCHORED);
    let mut last = 0;
    for i in 0..6 {
        last = anchored_entry(&s, &format!("t{i}"));
    }
    let (ok, report, err) = verify_json(&s, &[]);
    assert!(ok, "{err}");
    assert_eq!(report["anchored"], last, "{report}");
    assert!(report["checkpoints"].as_i64().unwrap() >= 6, "{report}");

    // The attack: delete the three newest records. The rest is still a valid chain.
    s.stop();
    let kept = last - 3;
    tamper_server(&s, &format!("DELETE FROM audit_log WHERE seq > {kept};"));
    s.restart();
    assert!(
        s.log_text().contains("AUDIT LOG TAMPERED"),
        "the server did not report the truncation at start:\n{}",
        s.log_tail()
    );
    let (ok, report, err) = verify_json(&s, &[]);
    assert!(!ok, "truncation passed verification: {report}");
    let truncation = format!(
        "truncated: the log ends at record {kept} but a signed checkpoint covers record {last} (records {} to {last} deleted)",
        kept + 1
    );
    assert!(err.contains(&truncation), "{err}");
    assert_eq!(report["first_bad_seq"], kept + 1, "{report}");
    assert!(
        report["problems"].to_string().contains(&truncation),
        "{report}"
    );

    // Appends after the deletion take new numbers, not the deleted records' ones...
    s.create_entry("spiffe://example.org/after", &["unix:uid:0"], &[]);
    assert_eq!(
        *seqs(&s).last().unwrap(),
        last + 1,
        "a deleted record's number was reused"
    );
    // ...and so after another restart, from the checkpoint alone.
    s.stop();
    tamper_server(&s, &format!("DELETE FROM audit_log WHERE seq > {kept};"));
    s.restart();
    s.create_entry("spiffe://example.org/after2", &["unix:uid:0"], &[]);
    let now = seqs(&s);
    assert_eq!(now.last().copied(), Some(last + 2), "{now:?}");
    assert!(now.iter().all(|n| *n <= kept || *n > last + 1), "{now:?}");

    // The log has grown past the deletion: verification still names it.
    let (ok, _, err) = verify_json(&s, &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "truncated: records {} to {} deleted",
            kept + 1,
            last + 1
        )),
        "{err}"
    );
}

/// SQL as a database administrator runs it on the stopped server's database.
fn tamper_server(s: &ServerProc, sql: &str) {
    s.tamper_sql(sql);
}

#[test]
fn rewriting_a_record_and_recomputing_every_later_hash_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(dir.path(), ANCHORED);
    for i in 0..6 {
        anchored_entry(&s, &format!("r{i}"));
    }
    let exported: Vec<AuditRecord> = records(&s)
        .iter()
        .map(|v| AuditRecord::from_json(v).unwrap())
        .collect();
    let target = exported[exported.len() - 3].seq;
    let covered = checkpointed(&s);
    assert!(
        covered.contains(&target) && covered.contains(&(target - 1)),
        "records {} and {target} each have a checkpoint: {covered:?}",
        target - 1
    );

    // The attack: change one record's subject, then recompute its hash and every later
    // hash and link with the server's own hashing code.
    let mut forged = exported;
    let mut sql = String::new();
    let mut prev: Option<String> = None;
    for r in &mut forged {
        if r.seq == target {
            r.event.subject = "spiffe://example.org/forged".into();
        }
        if r.seq >= target {
            if let Some(p) = &prev {
                r.prev_hash.clone_from(p);
            }
            r.hash = record_hash(r.seq, r.at_ms, &r.event, &r.prev_hash);
            sql.push_str(&format!(
                "UPDATE audit_log SET subject = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {};\n",
                r.event.subject, r.prev_hash, r.hash, r.seq
            ));
        }
        prev = Some(r.hash.clone());
    }
    assert!(
        server::audit::verify(&forged).is_ok(),
        "the forged chain is consistent"
    );
    s.stop();
    tamper_server(&s, &sql);
    s.restart();
    assert!(
        s.log_text().contains("AUDIT LOG TAMPERED"),
        "{}",
        s.log_tail()
    );

    let (ok, report, err) = verify_json(&s, &[]);
    assert!(!ok, "the rewrite passed verification: {report}");
    assert!(
        err.contains(&format!(
            "rewritten: record {target} no longer has the hash its signed checkpoint holds"
        )),
        "{err}"
    );
    assert_eq!(report["first_bad_seq"], target, "{report}");
    // The chain itself is intact: the checkpoints are what catch it.
    assert_eq!(
        report["records"].as_i64().unwrap() as usize,
        forged.len(),
        "{report}"
    );
}

/// Runs the server on `s`'s directories and expects it to exit at start; returns its log.
fn refused_start(s: &ServerProc, dir: &Path) -> String {
    let log = dir.join("refused.log");
    let mut cmd = Command::new(bin("tessera-server"));
    cmd.arg("run")
        .args(["--trust-domain", "example.org", "--data-dir"])
        .arg(&s.data_dir)
        .arg("--admin-socket")
        .arg(&s.admin_socket)
        .args(["--bind", &s.address()]);
    let mut p = Process::spawn("tessera-server", cmd, &log);
    let code = p.wait_exit(Duration::from_secs(20));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the server did not refuse to start ({code:?}):\n{text}"
    );
    text
}

#[test]
fn an_altered_checkpoint_line_is_named_and_auditors_verify_copies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(dir.path(), ANCHORED);
    for i in 0..4 {
        anchored_entry(&s, &format!("c{i}"));
    }
    // An auditor's copies: checkpoints first, then the records.
    let copy = dir.path().join("copy.jsonl");
    let public = dir.path().join("copy.pub.pem");
    let exported = dir.path().join("records.jsonl");
    std::fs::copy(checkpoint_file(&s), &copy).unwrap();
    std::fs::copy(s.data_dir.join(PUBLIC_KEY_FILE), &public).unwrap();
    let out = s.cli(&["audit", "show", "--output", "json"]);
    std::fs::write(&exported, &out.stdout).unwrap();
    let copy_s = copy.to_str().unwrap();
    let public_s = public.to_str().unwrap();
    let exported_s = exported.to_str().unwrap();
    let offline = ["--checkpoints", copy_s, "--public-key", public_s];
    let (ok, report, err) = verify_json(&s, &offline);
    assert!(ok, "{err}");
    assert!(report["checkpoints"].as_i64().unwrap() >= 4, "{report}");

    // The attack: change a checkpoint line, here to vouch for another hash.
    let tamper = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines[1]["hash"] = Value::String("ab".repeat(32));
        let out: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, out).unwrap();
    };
    tamper(&copy);
    let (ok, report, err) = verify_json(&s, &offline);
    assert!(!ok, "{report}");
    assert!(
        err.contains("checkpoint file line 2: bad signature"),
        "{err}"
    );

    // The server's own file, checked by the server.
    tamper(&checkpoint_file(&s));
    let (ok, _, err) = verify_json(&s, &[]);
    assert!(!ok);
    assert!(
        err.contains("checkpoint file line 2: bad signature"),
        "{err}"
    );

    // Fully offline (no server): the exported records against a good copy.
    s.stop();
    std::fs::copy(s.data_dir.join(PUBLIC_KEY_FILE), &public).unwrap();
    let good: String = std::fs::read_to_string(checkpoint_file(&s))
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&copy, good).unwrap();
    let (ok, _, err) = verify_json(
        &s,
        &[offline.as_slice(), &["--records", exported_s]].concat(),
    );
    assert!(ok, "{err}");

    // The signing key readable by others: the server refuses to start, naming it.
    let key = s.data_dir.join(KEY_FILE);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let text = refused_start(&s, dir.path());
    assert!(text.contains(KEY_FILE) && text.contains("0644"), "{text}");
}
