//! Readiness follows the datastore: a server on a PostgreSQL cluster of its own is ready
//! and healthy; when the database stops as in a crash (`pg_ctl stop -m immediate`), `/ready`
//! turns 503 with a reason naming the datastore within [`NOTICE_BOUND`], `healthcheck`
//! exits 1 naming it, and the server stays alive; when the database is back, the server
//! is ready again and writes succeed.

use std::time::Duration;

use tests::{PgCluster, ServerProc, http_get, output_text, status_of, wait_for};
use tokio::time::Instant;

/// How long the server may take to notice a change: it probes the datastore every 2 s and
/// a probe gives up after 3 s (server/src/readiness.rs), plus room for a loaded machine
/// and, on the way back, the pool replacing its broken connections.
const NOTICE_BOUND: Duration = Duration::from_secs(30);

#[test]
fn readiness_and_healthcheck_follow_the_datastore() {
    let mut pg = PgCluster::start();
    let url = pg.url();
    // What every reason must name: the datastore (this URL has no password to hide).
    let named = format!("datastore {url} does not answer");
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::new(dir.path(), &["--datastore", &url]).with_health();
    server.restart();
    let health = server.health();

    let ready = http_get(health, "/ready").unwrap();
    assert_eq!(ready.0, 200, "/ready with the datastore up: {ready:?}");
    let up = server.cli(&["healthcheck"]);
    assert!(
        up.status.success(),
        "healthcheck while up: {}",
        output_text(&up)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("healthy"));

    pg.stop_immediate();
    let stopped = Instant::now();
    let not_ready = wait_for(NOTICE_BOUND, || {
        http_get(health, "/ready").ok().filter(|(s, _)| *s == 503)
    });
    let noticed = stopped.elapsed();
    let (_, body) = not_ready.unwrap_or_else(|| {
        panic!(
            "/ready still not 503 {NOTICE_BOUND:?} after the datastore stopped:\n{}",
            server.log_tail()
        )
    });
    assert!(
        body.contains("\"ready\":false") && body.contains(&named),
        "/ready body: {body}"
    );
    let down = server.cli(&["healthcheck"]);
    assert_eq!(down.status.code(), Some(1), "{}", output_text(&down));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains("unhealthy") && stderr.contains(&named),
        "healthcheck while the datastore is down: {}",
        output_text(&down)
    );
    // Not ready is not dead: the process keeps running and answers `/live`.
    assert_eq!(status_of(health, "/live"), Some(200));
    assert!(server.is_running(), "{}", server.log_tail());

    pg.start_again();
    let restarted = Instant::now();
    let back = wait_for(NOTICE_BOUND, || {
        (status_of(health, "/ready") == Some(200)).then_some(())
    });
    let recovered = restarted.elapsed();
    assert!(
        back.is_some(),
        "/ready not 200 {NOTICE_BOUND:?} after the datastore restarted:\n{}\n{}",
        server.log_tail(),
        pg.log_tail()
    );
    let again = server.cli(&["healthcheck"]);
    assert!(
        again.status.success(),
        "healthcheck after: {}",
        output_text(&again)
    );
    // Ready means it serves: a write reaches the datastore.
    server.create_entry("spiffe://example.org/after-outage", &["unix:uid:0"], &[]);
    println!(
        "readiness: /ready 503 {} ms after the datastore stopped, 200 {} ms after it restarted; reason: {body}",
        noticed.as_millis(),
        recovered.as_millis()
    );
}
