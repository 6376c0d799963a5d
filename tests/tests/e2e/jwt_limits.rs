//! What a workload can make Tessera keep by asking for JWT-SVIDs: a registered workload
//! that asks for thousands of tokens, each with a different list of 32 audiences of
//! 1 KiB, must not grow the agent without bound nor write audit records of its choosing
//! size, and mints beyond the server's rate limits are refused with `ResourceExhausted`,
//! naming the limit, once per request (the agent passes the refusal on, never retries).
//!
//! Memory figures are the agent's own resident set (`VmRSS` in `/proc/<pid>/status`);
//! audit record sizes are read from the datastore itself.

use std::process::Command;

use common::proto::workload::JwtsvidRequest;
use tests::Cluster;

/// JWT-SVID requests of the burst.
const BURST: usize = 2_000;
/// Concurrent clients sending them.
const CLIENTS: usize = 4;
/// Audiences per request, each of 1 KiB: the largest request the agent accepts.
const AUDIENCES: usize = 32;
/// Growth of the agent's resident set the burst may cause: the JWT-SVID cache's default
/// byte bound (16 MiB) plus the allocator's slack and in-flight requests. Unbounded, the
/// agent keeps every token (about 45 KiB each): some 90 MiB for 2,000.
const MAX_GROWTH_KB: u64 = 40 * 1024;
/// Largest audit record of a JWT-SVID (kind, subject, detail, hashes) with this test's
/// short identities: the audience list of 32 KiB is recorded as its count and digest.
const MAX_AUDIT_RECORD_BYTES: i64 = 1024;

/// `VmRSS` of `pid` in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// 32 audiences of exactly 1 KiB, different for every `request`.
fn audiences(request: usize) -> Vec<String> {
    (0..AUDIENCES)
        .map(|i| {
            let head = format!("{request:05}-{i:02}-");
            format!("{head}{}", "a".repeat(1024 - head.len()))
        })
        .collect()
}

/// FetchJWTSVID as the test process (uid 0).
async fn fetch_jwt(
    client: &mut common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
    audience: Vec<String>,
    spiffe_id: &str,
) -> Result<String, tonic::Status> {
    let resp = client
        .fetch_jwtsvid(tests::with_header(JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.to_owned(),
        }))
        .await?
        .into_inner();
    assert_eq!(resp.svids.len(), 1, "one identity asked for");
    Ok(resp.svids[0].svid.clone())
}

/// The SHA-256 of a token's audience list as the README tells an auditor to compute it.
fn auditor_digest(token: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,json,sys\n\
             p=sys.argv[1].split('.')[1]; aud=json.loads(base64.urlsafe_b64decode(p+'='*(-len(p)%4)))['aud']\n\
             aud=[aud] if isinstance(aud,str) else aud\n\
             print(hashlib.sha256(json.dumps(aud,separators=(',',':'),ensure_ascii=False).encode()).hexdigest())",
        ])
        .arg(token)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_burst_of_large_jwt_svids_leaves_the_agent_and_the_audit_log_bounded() {
    // Limits out of the way: this test is about what the agent and the log keep.
    let roomy = "1000000";
    let mut c = Cluster::start(&[
        "--jwt-mint-rate-per-workload",
        roomy,
        "--jwt-mint-burst-per-workload",
        roomy,
        "--jwt-mint-rate-per-agent",
        roomy,
        "--jwt-mint-burst-per-agent",
        roomy,
    ]);
    c.server
        .create_entry("spiffe://example.org/burst", &["unix:uid:0"], &[]);
    let fetched = c.fetch_json();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let pid = c.agent.pid();
    let rt = tests::runtime();
    let socket = c.agent.socket_path.clone();
    // One small token first, so that what the first mint sets up is not counted.
    rt.block_on(async {
        let mut client = tests::workload_client(&socket).await;
        fetch_jwt(&mut client, vec!["warm-up".into()], "").await
    })
    .expect("first JWT-SVID");
    let before = rss_kb(pid);

    let tokens: Vec<String> = rt.block_on(async {
        let mut clients = Vec::new();
        for k in 0..CLIENTS {
            let socket = socket.clone();
            clients.push(tokio::spawn(async move {
                let mut client = tests::workload_client(&socket).await;
                let mut last = String::new();
                for r in (k..BURST).step_by(CLIENTS) {
                    last = fetch_jwt(&mut client, audiences(r), "")
                        .await
                        .unwrap_or_else(|s| panic!("request {r}: {s:?}"));
                }
                last
            }));
        }
        let mut last = Vec::new();
        for c in clients {
            last.push(c.await.expect("client task"));
        }
        last
    });
    let after = rss_kb(pid);
    let growth = after.saturating_sub(before);
    eprintln!(
        "agent VmRSS {before} kB before, {after} kB after {BURST} JWT-SVIDs of {AUDIENCES} \
         × 1 KiB audiences (growth {growth} kB)"
    );

    // Every record is in the log, each of a bounded size.
    let rows = c.server.query_sql(
        "SELECT count(*), max(length(CAST(kind AS BLOB)) + length(CAST(subject AS BLOB)) \
         + length(CAST(detail AS BLOB)) + coalesce(length(task_id), 0) + length(prev_hash) \
         + length(hash)), sum(length(CAST(detail AS BLOB))) \
         FROM audit_log WHERE kind = 'svid.jwt.issued'",
    );
    let (count, largest, details) = (
        rows[0][0].as_i64().unwrap(),
        rows[0][1].as_i64().unwrap(),
        rows[0][2].as_i64().unwrap(),
    );
    eprintln!(
        "{count} JWT-SVID audit records: largest {largest} bytes, details {details} bytes in all"
    );
    assert_eq!(
        count,
        i64::try_from(BURST).unwrap() + 1,
        "one record per mint"
    );

    assert!(
        growth <= MAX_GROWTH_KB,
        "the agent grew by {growth} kB ({before} → {after} kB) keeping JWT-SVIDs"
    );
    assert!(
        largest <= MAX_AUDIT_RECORD_BYTES,
        "a JWT-SVID audit record of {largest} bytes"
    );
    // An auditor holding a token finds its record by the digest of its audiences.
    let digest = auditor_digest(&tokens[0]);
    let matching = c.server.query_sql(&format!(
        "SELECT json_extract(detail, '$.audience_count') FROM audit_log \
         WHERE kind = 'svid.jwt.issued' AND json_extract(detail, '$.audience_sha256') = '{digest}'"
    ));
    assert_eq!(
        matching,
        vec![vec![serde_json::json!(AUDIENCES)]],
        "the record of the token whose audiences hash to {digest}"
    );

    assert!(c.agent.is_running(), "agent died: {}", c.agent.log_tail());
}

/// Mints JWT-SVIDs for `spiffe_id` with new audiences until one is refused (at most 50);
/// returns how many were minted and the refusal.
async fn mint_until_refused(
    client: &mut common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
    spiffe_id: &str,
) -> (usize, tonic::Status) {
    for i in 0..50 {
        if let Err(s) = fetch_jwt(client, vec![format!("{spiffe_id}-{i}")], spiffe_id).await {
            return (i, s);
        }
    }
    panic!("50 JWT-SVIDs minted for {spiffe_id} without a refusal");
}

#[test]
fn mints_beyond_the_rate_limits_are_refused_with_resource_exhausted() {
    // Small limits, so that what is refused does not depend on how fast the machine
    // mints: a workload may have 5 at once, the agent 6, and each 1 more per second.
    let mut c = Cluster::start(&[
        "--jwt-mint-rate-per-workload",
        "1",
        "--jwt-mint-burst-per-workload",
        "5",
        "--jwt-mint-rate-per-agent",
        "1",
        "--jwt-mint-burst-per-agent",
        "6",
    ]);
    let (w1, w2) = (
        "spiffe://example.org/limited/one",
        "spiffe://example.org/limited/two",
    );
    c.server.create_entry(w1, &["unix:uid:0"], &[]);
    c.server.create_entry(w2, &["unix:uid:0"], &[]);
    let fetched = c.fetch_json();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let rt = tests::runtime();
    let socket = c.agent.socket_path.clone();
    let minted = rt.block_on(async {
        let mut client = tests::workload_client(&socket).await;
        let start = tokio::time::Instant::now();
        // The workload's burst, then a refusal naming its limit (the agent's bucket holds
        // one more token than the workload's, so the workload's runs out first).
        let (one, s) = mint_until_refused(&mut client, w1).await;
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message().contains("per-workload limit of 1/s, burst 5") && s.message().contains(w1),
            "{}",
            s.message()
        );
        // At most one more per second than the burst.
        let allowed = 5 + start.elapsed().as_secs() as usize + 1;
        assert!(
            (5..=allowed).contains(&one),
            "{one} minted before the refusal, {allowed} allowed"
        );
        // Asking again at once gets the same answer from the agent, which holds the
        // refusal until the server said a mint can succeed: the server sees a refusal
        // again only after such a mint (on a slow machine the loop may outlast the hold).
        let mut again_minted = 0;
        for i in 0..10 {
            match fetch_jwt(&mut client, vec![format!("{w1}-again-{i}")], w1).await {
                Ok(_) => again_minted += 1,
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                    assert!(
                        s.message().contains("per-workload limit"),
                        "{}",
                        s.message()
                    );
                }
            }
        }
        assert!(again_minted < 10, "the refusal was not held at all");
        let one = one + again_minted;
        // A token already minted is still served from the agent's cache.
        fetch_jwt(&mut client, vec![format!("{w1}-0")], w1)
            .await
            .expect("a cached token while limited");
        // Another workload of the agent has its own bucket, but the agent's is nearly empty.
        let (two, s) = mint_until_refused(&mut client, w2).await;
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message().contains("per-agent limit of 1/s, burst 6")
                && s.message().contains(tests::AGENT_ID),
            "{}",
            s.message()
        );
        let allowed = 6 + start.elapsed().as_secs() as usize + 1;
        assert!(
            one + two <= allowed,
            "{one} + {two} minted, {allowed} allowed"
        );
        // Each refusal the server logged answered one request of the agent: the agent
        // never retried, and held each refusal instead of passing requests on.
        let log = c.server.log_text();
        let refusals: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("JWT-SVID mint refused"))
            .collect();
        let of = |w: &str| refusals.iter().filter(|l| l.contains(w)).count();
        assert!(
            of(w1) <= 1 + again_minted && of(w2) == 1 && of(w1) + of(w2) == refusals.len(),
            "refusals logged by the server ({again_minted} minted while asking again): \
             {refusals:#?}"
        );
        // The limits refill: within a few seconds the first workload mints again.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match fetch_jwt(&mut client, vec!["later".into()], w1).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no mint within 5 s after the limit: {s:?}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(s) => panic!("{s:?}"),
            }
        }
        one + two + 1
    });
    // Refused mints wrote no audit records.
    let rows = c
        .server
        .query_sql("SELECT count(*) FROM audit_log WHERE kind = 'svid.jwt.issued'");
    assert_eq!(rows, vec![vec![serde_json::json!(minted)]]);
    assert!(c.agent.is_running(), "agent died: {}", c.agent.log_tail());
}
