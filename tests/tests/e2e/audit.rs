//! The audit log records every step in order, and `audit verify` detects an edited,
//! deleted or reordered record in the datastore and names the first bad one.

use tests::Cluster;

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
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
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
