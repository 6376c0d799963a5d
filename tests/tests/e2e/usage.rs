//! Entry usage for the access review: the server counts the SVIDs it issues per entry,
//! and the agent reports, every `usage_report_interval`, the X.509-SVIDs and JWT-SVIDs its
//! Workload API delivered and the JWT-SVIDs it validated. Read back from the server's
//! SQLite datastore.

use std::time::Duration;

use tests::jwt::{fetch_all_when_ready, spiffe_client, validate_raw};
use tests::{Cluster, runtime, unix_now, wait_for, workload_client};

/// An entry's usage, summed over agents.
#[derive(Debug)]
struct Usage {
    issued: i64,
    last_issued_at: Option<i64>,
    deliveries: i64,
    validations: i64,
    last_used_at: Option<i64>,
}

/// `entry_id`'s usage; `None` while nothing is recorded for it.
fn usage_of(c: &Cluster, entry_id: &str) -> Option<Usage> {
    let rows = c.server.query_sql(&format!(
        "SELECT sum(issued), max(last_issued_at), sum(deliveries), sum(validations), \
         max(last_used_at) FROM entry_usage WHERE entry_id = '{entry_id}' \
         GROUP BY entry_id"
    ));
    let row = rows.first()?;
    Some(Usage {
        issued: row[0].as_i64()?,
        last_issued_at: row[1].as_i64(),
        deliveries: row[2].as_i64()?,
        validations: row[3].as_i64()?,
        last_used_at: row[4].as_i64(),
    })
}

#[test]
fn deliveries_validations_and_issuance_reach_the_server() {
    let c = Cluster::start_with(&[], &["--usage-report-interval", "1s"]);
    let start = unix_now();
    let id = "spiffe://example.org/usage/web";
    let used = c.server.create_entry(id, &["unix:uid:0"], &[]);
    // Held by the agent (so issued) but matching no process here (so never delivered).
    let idle = c
        .server
        .create_entry("spiffe://example.org/usage/idle", &["unix:uid:4242"], &[]);

    let before = unix_now();
    let fetched = c.agent.fetch_x509_within(20).expect("X.509-SVID fetched");
    assert_eq!(
        fetched
            .iter()
            .map(|s| s.spiffe_id.as_str())
            .collect::<Vec<_>>(),
        [id]
    );
    runtime().block_on(async {
        let client = spiffe_client(&c.agent.endpoint()).await;
        let mut raw = workload_client(&c.agent.socket_path).await;
        let svids = fetch_all_when_ready(&client, &["usage-test"], 1).await;
        assert_eq!(svids.len(), 1);
        let token = svids[0].token().to_owned();
        let r = validate_raw(&mut raw, "usage-test", &token)
            .await
            .expect("the token validates");
        assert_eq!(r.spiffe_id, id);
    });

    // One report a second: within a few seconds the server has it.
    let got = wait_for(Duration::from_secs(20), || {
        usage_of(&c, &used).filter(|u| u.deliveries >= 2 && u.validations >= 1)
    });
    let Some(Usage {
        issued,
        last_issued_at,
        deliveries,
        validations,
        last_used_at,
    }) = got
    else {
        panic!(
            "no usage of {used} reported within 20 s: {:?}\nagent log:\n{}\nserver log:\n{}",
            usage_of(&c, &used),
            c.agent.log_tail(),
            c.server.log_tail()
        );
    };
    let now = unix_now();
    // An X.509-SVID and a JWT-SVID (at least: the CLI may have read more than one message).
    assert!(issued >= 2, "issued {issued}");
    assert!(
        last_issued_at.is_some_and(|t| t >= start && t <= now),
        "{last_issued_at:?}"
    );
    assert!(deliveries >= 2, "deliveries {deliveries}");
    assert_eq!(validations, 1);
    assert!(
        last_used_at.is_some_and(|t| t >= before && t <= now),
        "last used {last_used_at:?}, test ran from {before} to {now}"
    );

    // The idle entry: issued, never used.
    let idle_usage = usage_of(&c, &idle).expect("the idle entry's SVID was issued");
    assert!(idle_usage.issued >= 1, "{idle_usage:?}");
    assert_eq!(
        (
            idle_usage.deliveries,
            idle_usage.validations,
            idle_usage.last_used_at
        ),
        (0, 0, None),
        "{idle_usage:?}"
    );
}
