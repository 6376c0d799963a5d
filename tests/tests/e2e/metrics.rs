//! Prometheus metrics (issue 15): `GET /metrics` on the health listener of server and agent.
//! After a workload fetched an X.509-SVID and a JWT-SVID (and was refused one JWT-SVID),
//! the server's issuance series and the agent's Workload API series have moved, both
//! outputs (in the Prometheus text format a client gets without asking for OpenMetrics)
//! pass `promtool check metrics`, and a real Prometheus server (the distribution's
//! `prometheus`, which asks for OpenMetrics) scraping both answers its query API with
//! those series.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{AGENT_ID, AgentProc, Process, ServerProc, free_port, http_get, only, wait_for};

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200, "/metrics: {body}");
    // Asked without `Accept: application/openmetrics-text`: the Prometheus text format.
    assert!(!body.contains("# EOF"), "{body}");
    body
}

fn at_least(text: &str, series: &str, min: f64) -> f64 {
    let v = value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert!(v >= min, "{series} = {v}, expected at least {min}\n{text}");
    v
}

/// `promtool check metrics` on `text` (from stdin); panics with its output on failure.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}'s output failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn metrics_of_server_and_agent_scraped_by_prometheus() {
    let id = "spiffe://example.org/metrics/svc";
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::new(dir.path(), &[]).with_health();
    server.restart();
    server.create_entry(id, &["unix:uid:0"], &[]);
    let token = server.token(AGENT_ID);
    let mut agent = AgentProc::new(&dir.path().join("a"), &server).with_health();
    agent.restart(Some(&token));

    let served = wait_for(Duration::from_secs(30), || {
        only(agent.fetch_x509(), id).ok()
    });
    assert!(served.is_some(), "no X.509-SVID:\n{}", agent.log_tail());
    let jwt = wait_for(Duration::from_secs(30), || {
        agent
            .cli(&["api", "fetch", "jwt", "--audience", "metrics"])
            .status
            .success()
            .then_some(())
    });
    assert!(jwt.is_some(), "no JWT-SVID:\n{}", agent.log_tail());
    let refused = agent.cli(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "metrics",
        "--spiffe-id",
        "spiffe://example.org/metrics/not-mine",
    ]);
    assert!(!refused.status.success());

    // A task that starts and is revoked: its transitions and the revocation are counted.
    let jit = server.create_entry(
        "spiffe://example.org/metrics/jit",
        &["unix:uid:0"],
        &["--jit"],
    );
    let created = server.cli(&[
        "task",
        "create",
        "--entry-id",
        &jit,
        "--reason",
        "metrics",
        "--ttl",
        "300",
        "--output",
        "json",
    ]);
    assert!(
        created.status.success(),
        "task create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let task: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let task_id = task["id"].as_str().unwrap();
    let revoked = server.cli(&["task", "revoke", task_id, "--reason", "metrics test"]);
    assert!(
        revoked.status.success(),
        "task revoke: {}",
        String::from_utf8_lossy(&revoked.stderr)
    );

    // A stream that opened and then lost its identity: counted with its code.
    let nobody_id = server.create_entry(
        "spiffe://example.org/metrics/nobody",
        &[&format!("unix:uid:{}", tests::NOBODY)],
        &[],
    );
    let mut cmd =
        tests::cgroups::Caller::nobody().command(&tests::nobody::bin_for_nobody("fetch-over-fd"));
    cmd.arg("--connect").arg(&agent.socket_path).arg("--watch");
    let opened = wait_for(Duration::from_secs(30), || {
        let mut cmd = tests::cgroups::Caller::nobody()
            .command(&tests::nobody::bin_for_nobody("fetch-over-fd"));
        cmd.arg("--connect").arg(&agent.socket_path);
        cmd.output().unwrap().status.success().then_some(())
    });
    assert!(
        opened.is_some(),
        "no SVID for nobody:\n{}",
        agent.log_tail()
    );
    let mut watch = tests::fetch::Watcher::spawn(cmd);
    assert!(
        matches!(watch.next(Duration::from_secs(20)), Ok(Some(ids)) if ids.len() == 1),
        "the stream opens"
    );
    let deleted = server.cli(&["entry", "delete", "--entry-id", &nobody_id]);
    assert!(deleted.status.success(), "entry delete");
    let ended = watch
        .next(Duration::from_secs(20))
        .expect_err("the stream ends");
    assert!(ended.contains("PermissionDenied"), "{ended}");

    let s = scrape(server.health());
    at_least(&s, "tessera_server_svids_issued_total{kind=\"x509\"}", 1.0);
    at_least(&s, "tessera_server_svids_issued_total{kind=\"jwt\"}", 1.0);
    at_least(
        &s,
        "tessera_server_issuance_duration_seconds_count{kind=\"x509\"}",
        1.0,
    );
    at_least(
        &s,
        "tessera_server_issuance_duration_seconds_count{kind=\"jwt\"}",
        1.0,
    );
    at_least(
        &s,
        "tessera_server_task_transitions_total{state=\"active\"}",
        1.0,
    );
    at_least(
        &s,
        "tessera_server_task_transitions_total{state=\"revoked\"}",
        1.0,
    );
    at_least(&s, "tessera_server_revocations_total", 1.0);
    assert_eq!(value(&s, "tessera_server_tasks_active"), Some(0.0), "{s}");
    assert_eq!(value(&s, "tessera_server_sync_streams"), Some(1.0), "{s}");
    assert_eq!(value(&s, "tessera_server_datastore_up"), Some(1.0), "{s}");
    let now = unix_now();
    at_least(&s, "tessera_server_ca_expiry_timestamp_seconds", now);
    at_least(&s, "tessera_server_jwt_key_expiry_timestamp_seconds", now);
    at_least(&s, "tessera_server_audit_head_sequence", 1.0);
    at_least(
        &s,
        "tessera_server_audit_appends_total{kind=\"entry.created\"}",
        3.0,
    );
    at_least(
        &s,
        "tessera_server_audit_appends_total{kind=\"task.ended\"}",
        1.0,
    );
    // No datastore call failed here: every series is there, at 0.
    for op in ["read", "write", "probe"] {
        for error in ["unavailable", "backend", "corrupt"] {
            let series =
                format!("tessera_server_datastore_errors_total{{op=\"{op}\",error=\"{error}\"}}");
            assert_eq!(value(&s, &series), Some(0.0), "{series}\n{s}");
        }
    }
    assert!(!s.contains("spiffe://"), "no SPIFFE ID in labels:\n{s}");

    // The revocation reached the agent: its propagation latency is observed.
    let a = wait_for(Duration::from_secs(20), || {
        let a = scrape(agent.health());
        value(&a, "tessera_agent_revocation_propagation_seconds_count")
            .is_some_and(|n| n >= 1.0)
            .then_some(a)
    })
    .unwrap_or_else(|| panic!("no revocation observed:\n{}", scrape(agent.health())));
    let propagation = value(&a, "tessera_agent_revocation_propagation_seconds_sum").unwrap();
    assert!(
        (0.0..10.0).contains(&propagation),
        "revocation propagated in {propagation} s"
    );
    at_least(
        &a,
        "tessera_agent_workload_api_requests_total{method=\"FetchX509SVID\",result=\"OK\"}",
        1.0,
    );
    at_least(
        &a,
        "tessera_agent_workload_api_requests_total{method=\"FetchJWTSVID\",result=\"OK\"}",
        1.0,
    );
    at_least(
        &a,
        "tessera_agent_workload_api_requests_total{method=\"FetchJWTSVID\",result=\"PermissionDenied\"}",
        1.0,
    );
    at_least(
        &a,
        "tessera_agent_workload_api_request_duration_seconds_count{method=\"FetchX509SVID\"}",
        1.0,
    );
    assert_eq!(value(&a, "tessera_agent_sync_connected"), Some(1.0), "{a}");
    at_least(&a, "tessera_agent_sync_updates_total", 1.0);
    at_least(&a, "tessera_agent_last_sync_timestamp_seconds", now - 600.0);
    at_least(&a, "tessera_agent_cached_svids", 1.0);
    at_least(
        &a,
        "tessera_agent_workload_api_stream_errors_total{method=\"FetchX509SVID\",code=\"PermissionDenied\"}",
        1.0,
    );
    assert!(!a.contains("spiffe://"), "no SPIFFE ID in labels:\n{a}");

    let mean = |text: &str, family: &str, labels: &str| {
        let sum = value(text, &format!("{family}_sum{labels}")).unwrap_or(f64::NAN);
        let count = value(text, &format!("{family}_count{labels}")).unwrap_or(f64::NAN);
        sum / count * 1000.0
    };
    println!(
        "metrics: mean x509 issuance call {:.2} ms, jwt mint {:.2} ms; FetchX509SVID to first message {:.2} ms, FetchJWTSVID {:.2} ms; revocation propagation {:.1} ms; server {} bytes, agent {} bytes",
        mean(
            &s,
            "tessera_server_issuance_duration_seconds",
            "{kind=\"x509\"}"
        ),
        mean(
            &s,
            "tessera_server_issuance_duration_seconds",
            "{kind=\"jwt\"}"
        ),
        mean(
            &a,
            "tessera_agent_workload_api_request_duration_seconds",
            "{method=\"FetchX509SVID\"}"
        ),
        mean(
            &a,
            "tessera_agent_workload_api_request_duration_seconds",
            "{method=\"FetchJWTSVID\"}"
        ),
        propagation * 1000.0,
        s.len(),
        a.len()
    );
    promtool_check("server", &s);
    promtool_check("agent", &a);

    // A real Prometheus scrapes both and answers queries for the series.
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(prom_dir.join("data")).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tessera-server\n    static_configs:\n      - targets: ['{}']\n  - job_name: tessera-agent\n    static_configs:\n      - targets: ['{}']\n",
            server.health(),
            agent.health()
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"));
    let mut prometheus = Process::spawn("prometheus", cmd, &prom_dir.join("prometheus.log"));
    let query = |q: &str| -> Option<String> {
        let (status, body) = http_get(web, &format!("/api/v1/query?query={q}")).ok()?;
        (status == 200 && body.contains("\"status\":\"success\"") && body.contains("\"result\":[{"))
            .then_some(body)
    };
    for q in [
        "tessera_server_svids_issued_total%7Bkind%3D%22x509%22%7D",
        "tessera_server_issuance_duration_seconds_count",
        "tessera_agent_workload_api_requests_total%7Bmethod%3D%22FetchX509SVID%22%7D",
        "tessera_agent_cached_svids",
        "tessera_server_audit_appends_total",
        "tessera_agent_revocation_propagation_seconds_count",
        "up%7Bjob%3D%22tessera-agent%22%7D%3D%3D1",
        "up%7Bjob%3D%22tessera-server%22%7D%3D%3D1",
    ] {
        let answer = wait_for(Duration::from_secs(60), || query(q));
        assert!(
            answer.is_some(),
            "Prometheus has no {q}:\n{}",
            prometheus.log_tail()
        );
        println!("metrics: prometheus answers {q}");
    }
    prometheus.terminate();
}
