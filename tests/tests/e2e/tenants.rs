//! Organisation controls with real processes: tenant admins as real second Unix users on the
//! admin socket, path prefixes on whole segments, one tenant per workload, verified DNS
//! domains against a real DNS server, and entries that stop being issued at their expiry
//! or when their review lapses, as an open Workload API stream sees it.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::time::Instant;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{X509svidRequest, X509svidResponse};
use serde_json::Value;
use tests::dns::DnsServer;
use tests::{
    AGENT_ID, Cluster, assert_nobody_can_reach, bin_for_nobody, unix_now, wait_for, with_header,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The group (by gid, with no name) that may connect to the admin socket: tenant admins.
const SOCKET_GID: u32 = 4242;
/// Tenant admins: real Unix users other than root.
const NOBODY: u32 = 65534;
const DAEMON: u32 = 1;

/// The error a command printed: `error: MESSAGE` (a JSON error object's message, as
/// `--output json` prints it, or the text line).
fn stderr(out: &Output) -> String {
    let raw = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match serde_json::from_str::<Value>(&raw) {
        Ok(v) if v["error"]["message"].is_string() => {
            format!(
                "error: {}",
                v["error"]["message"].as_str().unwrap_or_default()
            )
        }
        _ => raw,
    }
}

fn json(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: bad JSON ({e})"))
}

/// `tessera-server ARGS --output json` as `uid` (primary group [`SOCKET_GID`], no others).
fn cli_as(c: &Cluster, uid: u32, args: &[&str]) -> Output {
    assert_nobody_can_reach(&c.server.admin_socket);
    Command::new(bin_for_nobody("tessera-server"))
        .args(args)
        .args(["--output", "json", "--admin-socket"])
        .arg(&c.server.admin_socket)
        .uid(uid)
        .gid(SOCKET_GID)
        .current_dir("/")
        .output()
        .expect("run tessera-server CLI")
}

/// `tessera-server ARGS --output json` as root.
fn root(c: &Cluster, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    c.server.cli(&all)
}

fn entry_args<'a>(spiffe_id: &'a str, selector: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "entry",
        "create",
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        spiffe_id,
        "--selector",
        selector,
    ];
    v.extend(extra);
    v
}

/// The ids of the entries `uid` lists.
fn listed(c: &Cluster, uid: u32) -> Vec<String> {
    let v = json(&cli_as(c, uid, &["entry", "show"]), "entry show");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn tenants_cluster() -> Cluster {
    let c = Cluster::start(&["--admin-socket-group", &SOCKET_GID.to_string()]);
    json(
        &root(
            &c,
            &[
                "tenant",
                "create",
                "--name",
                "acme",
                "--admin-user",
                "nobody",
            ],
        ),
        "tenant create acme",
    );
    json(
        &root(
            &c,
            &[
                "tenant",
                "create",
                "--name",
                "beta",
                "--admin-user",
                "daemon",
                "--max-entries",
                "2",
            ],
        ),
        "tenant create beta",
    );
    c
}

#[test]
fn a_tenant_admin_reaches_only_its_own_tenant_and_cannot_tell_others_objects_from_missing_ones() {
    let c = tenants_cluster();

    // Each admin creates in its own tenant without naming it (its only tenant).
    let acme = json(
        &cli_as(
            &c,
            NOBODY,
            &entry_args("spiffe://example.org/acme/web", "unix:uid:1000", &[]),
        ),
        "acme entry",
    );
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["owner"], "user:nobody");
    let beta = json(
        &cli_as(
            &c,
            DAEMON,
            &entry_args("spiffe://example.org/beta/db", "unix:uid:1001", &[]),
        ),
        "beta entry",
    );
    let beta_id = beta["id"].as_str().unwrap();

    // Outside its prefixes, or in the other tenant: refused, naming its own tenant only.
    let out = cli_as(
        &c,
        NOBODY,
        &entry_args("spiffe://example.org/beta/x", "unix:uid:7", &[]),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("outside tenant acme's path prefixes (/acme)"),
        "{}",
        stderr(&out)
    );
    let out = cli_as(
        &c,
        NOBODY,
        &entry_args(
            "spiffe://example.org/beta/x",
            "unix:uid:7",
            &["--tenant", "beta"],
        ),
    );
    let missing = cli_as(
        &c,
        NOBODY,
        &entry_args(
            "spiffe://example.org/beta/x",
            "unix:uid:7",
            &["--tenant", "gamma"],
        ),
    );
    assert_eq!(
        stderr(&out),
        "error: tenant beta not found",
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&missing), "error: tenant gamma not found");

    // Another tenant's entry answers exactly like a missing one, for every verb.
    let absent = "0190b1c4-0000-7000-8000-00000000beef";
    for verb in [
        vec!["entry", "show", "--entry-id"],
        vec!["entry", "delete", "--entry-id"],
        vec!["entry", "certify", "--entry-id"],
    ] {
        let mut theirs = verb.clone();
        theirs.push(beta_id);
        let mut nothing = verb.clone();
        nothing.push(absent);
        let a = cli_as(&c, NOBODY, &theirs);
        let b = cli_as(&c, NOBODY, &nothing);
        assert!(
            !a.status.success(),
            "{verb:?} on another tenant's entry succeeded"
        );
        assert_eq!(
            stderr(&a).replace(beta_id, "ID"),
            stderr(&b).replace(absent, "ID"),
            "{verb:?}"
        );
    }
    let mut update = vec!["entry", "update", "--entry-id", beta_id];
    update.extend(&entry_args("spiffe://example.org/beta/db", "unix:uid:1001", &[])[2..]);
    let a = cli_as(&c, NOBODY, &update);
    assert_eq!(stderr(&a), format!("error: no entry with id {beta_id}"));

    // Lists leave other tenants out; the platform sees everything.
    assert_eq!(listed(&c, NOBODY), [acme["id"].as_str().unwrap()]);
    assert_eq!(listed(&c, DAEMON), [beta_id]);
    let all = json(&root(&c, &["entry", "show"]), "entry show as root");
    assert_eq!(all["entries"].as_array().unwrap().len(), 2);
    let tenants = json(&cli_as(&c, NOBODY, &["tenant", "list"]), "tenant list");
    let names: Vec<&str> = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    let hidden = cli_as(&c, NOBODY, &["tenant", "show", "--name", "beta"]);
    let none = cli_as(&c, NOBODY, &["tenant", "show", "--name", "nope"]);
    assert_eq!(
        stderr(&hidden).replace("beta", "X"),
        stderr(&none).replace("nope", "X")
    );

    // Audit: its own tenant's records only; the whole log is the platform's.
    let audit = cli_as(&c, NOBODY, &["audit", "show"]);
    let text = String::from_utf8_lossy(&json_lines(&audit)).into_owned();
    assert!(
        text.contains("/acme/web") && !text.contains("/beta/db"),
        "{text}"
    );
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["tenant"], "acme", "{v}");
    }
    let out = cli_as(&c, NOBODY, &["audit", "show", "--tenant", "beta"]);
    assert_eq!(stderr(&out), "error: tenant beta not found");

    // Platform operations are refused; quotas hold.
    for args in [
        vec!["token", "generate"],
        vec!["agent", "evict", "--spiffe-id", AGENT_ID],
        vec!["tenant", "create", "--name", "evil"],
        vec!["ca", "rotate"],
    ] {
        let out = cli_as(&c, NOBODY, &args);
        assert!(!out.status.success(), "{args:?} allowed to a tenant admin");
        assert!(
            stderr(&out).contains("restricted to platform operators"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    json(
        &cli_as(
            &c,
            DAEMON,
            &entry_args("spiffe://example.org/beta/two", "unix:uid:1002", &[]),
        ),
        "second beta entry",
    );
    let out = cli_as(
        &c,
        DAEMON,
        &entry_args("spiffe://example.org/beta/three", "unix:uid:1003", &[]),
    );
    assert!(
        stderr(&out).contains("tenant beta is at its limit of 2 entries"),
        "{}",
        stderr(&out)
    );

    // A user who administers no tenant is refused outright.
    let out = Command::new(bin_for_nobody("tessera-server"))
        .args(["entry", "show", "--admin-socket"])
        .arg(&c.server.admin_socket)
        .uid(2)
        .gid(SOCKET_GID)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        stderr(&out)
            .contains("restricted to root, the server's user, the admin group and tenant admins"),
        "{}",
        stderr(&out)
    );
    // Nothing any refusal touched changed.
    assert_eq!(listed(&c, DAEMON).len(), 2);
    assert_eq!(
        json(&root(&c, &["entry", "show"]), "all")["entries"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// stdout of a JSON-lines command, asserting success.
fn json_lines(out: &Output) -> Vec<u8> {
    assert!(out.status.success(), "{}", stderr(out));
    out.stdout.clone()
}

#[test]
fn prefixes_are_owned_on_whole_segments_and_never_overlap() {
    let c = Cluster::start(&[]);
    json(&root(&c, &["tenant", "create", "--name", "acme"]), "acme");
    let out = root(
        &c,
        &entry_args(
            "spiffe://example.org/acme-evil/x",
            "unix:uid:5",
            &["--tenant", "acme"],
        ),
    );
    assert!(
        stderr(&out).contains(
            "spiffe://example.org/acme-evil/x is outside tenant acme's path prefixes (/acme)"
        ),
        "{}",
        stderr(&out)
    );
    // Without --tenant, the platform's entry goes to the tenant owning the path.
    let e = json(
        &root(
            &c,
            &entry_args("spiffe://example.org/acme-evil/x", "unix:uid:5", &[]),
        ),
        "default",
    );
    assert_eq!(e["tenant"], "default");
    let e = json(
        &root(
            &c,
            &entry_args("spiffe://example.org/acme/x", "unix:uid:6", &[]),
        ),
        "acme",
    );
    assert_eq!(e["tenant"], "acme");
    for (prefix, want) in [
        ("/acme", "overlaps /acme of tenant acme"),
        ("/acme/sub", "overlaps /acme of tenant acme"),
        ("/", "only the default tenant may own the root prefix"),
        ("/acme-evil", "would be owned by evil"),
    ] {
        let out = root(
            &c,
            &[
                "tenant",
                "create",
                "--name",
                "evil",
                "--path-prefix",
                prefix,
            ],
        );
        assert!(stderr(&out).contains(want), "{prefix}: {}", stderr(&out));
    }
    json(
        &root(
            &c,
            &[
                "tenant",
                "create",
                "--name",
                "evil",
                "--path-prefix",
                "/evil",
            ],
        ),
        "evil",
    );
    let out = root(&c, &["tenant", "delete", "--name", "acme"]);
    assert!(
        stderr(&out).contains("tenant acme still owns 1 entries"),
        "{}",
        stderr(&out)
    );
    json(
        &root(&c, &["tenant", "delete", "--name", "evil"]),
        "delete evil",
    );
}

#[test]
fn one_workload_belongs_to_one_tenant_and_provisioning_never_shadows_a_standing_id() {
    let c = tenants_cluster();
    let acme = json(
        &cli_as(
            &c,
            NOBODY,
            &entry_args("spiffe://example.org/acme/web", "unix:uid:1000", &[]),
        ),
        "acme entry",
    );
    // The same parent and selector set in another tenant: refused, the tenant unnamed.
    let out = cli_as(
        &c,
        DAEMON,
        &entry_args("spiffe://example.org/beta/web", "unix:uid:1000", &[]),
    );
    assert_eq!(
        stderr(&out),
        format!(
            "error: the same workload (parent {AGENT_ID} and these selectors) is already registered in another tenant"
        )
    );
    // ... and named for the platform, which may see it.
    let out = root(
        &c,
        &entry_args("spiffe://example.org/beta/web", "unix:uid:1000", &[]),
    );
    assert!(
        stderr(&out).contains(&format!(
            "in tenant acme (entry {})",
            acme["id"].as_str().unwrap()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        listed(&c, DAEMON),
        Vec::<String>::new(),
        "nothing persisted"
    );

    // A provisioning task for an existing SPIFFE ID is refused; nothing persisted.
    let out = root(
        &c,
        &[
            "task",
            "create",
            "--provision",
            "--spiffe-id",
            "spiffe://example.org/acme/web",
            "--parent-id",
            AGENT_ID,
            "--selector",
            "unix:uid:4000",
            "--reason",
            "r",
        ],
    );
    assert!(
        stderr(&out).contains("already exists as entry") && stderr(&out).contains("of tenant acme"),
        "{}",
        stderr(&out)
    );
    let tasks = json(&root(&c, &["task", "list"]), "task list");
    assert_eq!(tasks["tasks"].as_array().map_or(0, Vec::len), 0);
    assert_eq!(
        json(&root(&c, &["entry", "show"]), "all")["entries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn stream(c: &Cluster) -> tonic::Streaming<X509svidResponse> {
    let mut cl = SpiffeWorkloadApiClient::new(tests::agent_channel(&c.agent.socket_path).await);
    cl.fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
}

fn ids(r: &X509svidResponse) -> Vec<String> {
    let mut v: Vec<String> = r.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    v.sort();
    v
}

/// Reads `s` until a message without `id`; returns when it came.
async fn until_gone(
    s: &mut tonic::Streaming<X509svidResponse>,
    id: &str,
    within: Duration,
) -> Instant {
    tokio::time::timeout(within, async {
        loop {
            let m = s.message().await.unwrap().expect("stream open");
            if !ids(&m).contains(&id.to_owned()) {
                return Instant::now();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} still on the stream after {within:?}"))
}

/// Waits on the stream's messages until `ids` are all present.
async fn until_present(
    s: &mut tonic::Streaming<X509svidResponse>,
    want: &[&str],
) -> X509svidResponse {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = s.message().await.unwrap().expect("stream open");
            if want.iter().all(|w| ids(&m).contains(&(*w).to_owned())) {
                return m;
            }
        }
    })
    .await
    .expect("SVIDs on the stream")
}

/// Sleeps until the wall clock reaches `unix` (whole seconds) plus `extra`.
async fn sleep_until_unix(unix: i64, extra: Duration) {
    let now = tests::unix_now_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "Unix seconds fit an f64 exactly"
    )]
    let wait = (unix as f64 - now).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(wait) + extra).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_leaves_open_streams_within_a_second_of_its_expiry() {
    const STAYS: &str = "spiffe://example.org/stays";
    const EXPIRES: &str = "spiffe://example.org/expires";
    let c = Cluster::start(&[]);
    c.server.create_entry(STAYS, &["unix:uid:0"], &[]);
    let e = json(
        &root(
            &c,
            &entry_args(EXPIRES, "unix:uid:0", &["--expires-in", "4s"]),
        ),
        "expiring",
    );
    let expires_at = e["expires_at"].as_i64().unwrap();
    assert!(
        (unix_now() + 2..=unix_now() + 5).contains(&expires_at),
        "{e}"
    );
    let mut s = stream(&c).await;
    let first = until_present(&mut s, &[STAYS, EXPIRES]).await;
    // Nothing issued outlives the entry.
    for svid in first.svids.iter().filter(|s| s.spiffe_id == EXPIRES) {
        let (_, cert) = X509Certificate::from_der(&svid.x509_svid).unwrap();
        assert!(cert.validity().not_after.timestamp() <= expires_at + 1);
    }
    let gone = until_gone(&mut s, EXPIRES, Duration::from_secs(10)).await;
    let after = tests::unix_now_f64() - gone.elapsed().as_secs_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "Unix seconds fit an f64 exactly"
    )]
    let late = after - expires_at as f64;
    println!("entry expiry → off the open stream {late:.3}s after expires_at");
    assert!(
        (-0.05..=1.0).contains(&late),
        "left the stream {late:.3}s after its expiry"
    );
    // The agent drops the SVID at its notAfter (cut to the expiry) on its own; the server
    // disables the entry at the same time, on its schedule.
    let id = e["id"].as_str().unwrap();
    let shown = wait_for(Duration::from_secs(2), || {
        let v = json(&root(&c, &["entry", "show", "--entry-id", id]), "show");
        (v["disabled_reason"] == "expired").then_some(v)
    });
    assert!(shown.is_some(), "the server disabled the expired entry");
    // Recorded as the server's doing (appended just after the entry's change).
    let recorded = wait_for(Duration::from_secs(2), || {
        let audit =
            String::from_utf8_lossy(&json_lines(&root(&c, &["audit", "show"]))).into_owned();
        audit
            .lines()
            .any(|l| l.contains("entry.disabled") && l.contains("\"actor\":\"server\""))
            .then_some(())
    });
    assert!(
        recorded.is_some(),
        "entry.disabled by the server is audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_nobody_recertifies_is_disabled_at_its_lapse_and_a_certified_one_stays() {
    const LAPSES: &str = "spiffe://example.org/lapses";
    const CERTIFIED: &str = "spiffe://example.org/certified";
    let c = Cluster::start(&[]);
    let a = json(
        &root(
            &c,
            &entry_args(LAPSES, "unix:uid:0", &["--review-every", "4s"]),
        ),
        "a",
    );
    let b = json(
        &root(
            &c,
            &entry_args(CERTIFIED, "unix:uid:0", &["--review-every", "4s"]),
        ),
        "b",
    );
    let mut s = stream(&c).await;
    until_present(&mut s, &[LAPSES, CERTIFIED]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let certified = json(
        &root(
            &c,
            &["entry", "certify", "--entry-id", b["id"].as_str().unwrap()],
        ),
        "certify",
    );
    assert!(certified["certified_at"].as_i64().unwrap() > b["created_at"].as_i64().unwrap());
    let due = a["created_at"].as_i64().unwrap() + 4;
    let gone = until_gone(&mut s, LAPSES, Duration::from_secs(10)).await;
    let after = tests::unix_now_f64() - gone.elapsed().as_secs_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "Unix seconds fit an f64 exactly"
    )]
    let late = after - due as f64;
    println!("review lapse → off the open stream {late:.3}s after the deadline");
    assert!(
        (-0.05..=1.0).contains(&late),
        "left {late:.3}s after its lapse"
    );
    // The certified one is still served past the first one's lapse.
    sleep_until_unix(due, Duration::from_millis(500)).await;
    let now = fetch_ids(&c).await;
    assert_eq!(now, [CERTIFIED], "certified entry kept");
    let shown = json(
        &root(
            &c,
            &["entry", "show", "--entry-id", a["id"].as_str().unwrap()],
        ),
        "show",
    );
    assert_eq!(shown["disabled_reason"], "review lapsed", "{shown}");
    // Certifying a lapsed entry brings it back.
    json(
        &root(
            &c,
            &["entry", "certify", "--entry-id", a["id"].as_str().unwrap()],
        ),
        "re-certify",
    );
    until_present(&mut s, &[LAPSES, CERTIFIED]).await;
}

async fn fetch_ids(c: &Cluster) -> Vec<String> {
    let mut s = stream(c).await;
    ids(&s.message().await.unwrap().unwrap())
}

fn dns_names(r: &X509svidResponse, id: &str) -> Vec<String> {
    let svid = r.svids.iter().find(|s| s.spiffe_id == id).expect("svid");
    let (_, cert) = X509Certificate::from_der(&svid.x509_svid).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_names_need_a_domain_verified_through_real_dns_and_lose_it_when_the_record_goes() {
    const WEB: &str = "spiffe://example.org/acme/web";
    let mut dns = DnsServer::start(&[]);
    let resolver = dns.addr().to_string();
    let c = Cluster::start(&[
        "--dns-resolver",
        &resolver,
        "--domain-recheck-interval",
        "1s",
    ]);
    json(&root(&c, &["tenant", "create", "--name", "acme"]), "acme");
    let with_name = entry_args(
        WEB,
        "unix:uid:0",
        &["--dns-name", "web.acme.test", "--x509-svid-ttl", "6s"],
    );

    // No verified domain: refused, nothing stored.
    let out = root(&c, &with_name);
    assert!(
        stderr(&out)
            .contains("DNS name web.acme.test is not under a domain tenant acme has verified"),
        "{}",
        stderr(&out)
    );
    // Look-alikes are not domains at all.
    for bad in [
        "ACME.test",
        "acme.test.",
        "xn--acme-9ua.test",
        "acme..test",
        "*.acme.test",
    ] {
        let out = root(
            &c,
            &[
                "tenant", "domain", "add", "--tenant", "acme", "--domain", bad,
            ],
        );
        assert!(!out.status.success(), "{bad} accepted");
        assert!(
            stderr(&out).contains("invalid domain"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    let claim = json(
        &root(
            &c,
            &[
                "tenant",
                "domain",
                "add",
                "--tenant",
                "acme",
                "--domain",
                "acme.test",
            ],
        ),
        "domain add",
    );
    let challenge = claim["challenge"].as_str().unwrap().to_owned();
    assert_eq!(claim["record_name"], "_tessera-challenge.acme.test");
    assert_eq!(claim["verified"], false);

    // Not published yet, then a wrong value: not verified, and still refused.
    let verify = [
        "tenant",
        "domain",
        "verify",
        "--tenant",
        "acme",
        "--domain",
        "acme.test",
    ];
    let out = root(&c, &verify);
    assert!(
        stderr(&out).contains("TXT record _tessera-challenge.acme.test not found"),
        "{}",
        stderr(&out)
    );
    dns.set_records(&[(
        "_tessera-challenge.acme.test",
        "tessera-domain-verification=wrong",
    )]);
    let out = root(&c, &verify);
    assert!(
        stderr(&out).contains("none equal to the challenge"),
        "{}",
        stderr(&out)
    );
    assert!(!root(&c, &with_name).status.success());
    let entries = json(&root(&c, &["entry", "show"]), "entries");
    assert_eq!(
        entries["entries"].as_array().unwrap().len(),
        0,
        "nothing persisted"
    );

    // Published: verified, and the SVID carries the name.
    dns.set_records(&[("_tessera-challenge.acme.test", &challenge)]);
    let v = json(&root(&c, &verify), "verify");
    assert_eq!(v["verified"], true, "{v}");
    json(&root(&c, &with_name), "entry with a verified name");
    let out = root(
        &c,
        &entry_args(
            "spiffe://example.org/acme/api",
            "unix:uid:0",
            &["--dns-name", "api.other.test"],
        ),
    );
    assert!(
        !out.status.success(),
        "a name outside the verified domain was accepted"
    );
    let mut s = stream(&c).await;
    let m = until_present(&mut s, &[WEB]).await;
    assert_eq!(dns_names(&m, WEB), ["web.acme.test"]);

    // The record goes: flagged at the next re-check, and no new SVID carries the name.
    dns.set_records(&[]);
    let flagged = wait_for(Duration::from_secs(10), || {
        let t = json(
            &root(&c, &["tenant", "show", "--name", "acme"]),
            "tenant show",
        );
        (t["domains"][0]["failing_since"].as_i64().is_some()).then_some(t)
    })
    .expect("the failing domain is flagged");
    assert_eq!(flagged["domains"][0]["verified"], false, "{flagged}");
    // The agent renews the 6 s SVID at about half its life: the renewed one has no name.
    let renewed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = s.message().await.unwrap().unwrap();
            if m.svids.iter().any(|x| x.spiffe_id == WEB) && dns_names(&m, WEB).is_empty() {
                return m;
            }
        }
    })
    .await
    .expect("a renewed SVID without the unverified name");
    assert!(dns_names(&renewed, WEB).is_empty());
    let audit = String::from_utf8_lossy(&json_lines(&root(
        &c,
        &["audit", "show", "--tenant", "acme"],
    )))
    .into_owned();
    for kind in [
        "domain.added",
        "domain.verified",
        "domain.failing",
        "entry.created",
    ] {
        assert!(audit.contains(kind), "{kind} missing: {audit}");
    }
}

/// The flags `review --output json` gives the identity with `spiffe_id`.
fn review_flags(review: &Value, spiffe_id: &str) -> Vec<String> {
    let item = review["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["spiffe_id"] == spiffe_id)
        .unwrap_or_else(|| panic!("{spiffe_id} not in the review: {review}"));
    item["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_review_flags_each_case_on_a_prepared_data_set() {
    let mut dns = DnsServer::start(&[]);
    let resolver = dns.addr().to_string();
    let c = Cluster::start(&[
        "--dns-resolver",
        &resolver,
        "--domain-recheck-interval",
        "1s",
    ]);
    json(&root(&c, &["tenant", "create", "--name", "acme"]), "acme");
    let id = |path: &str| format!("spiffe://example.org/{path}");
    let create = |path: &str, selectors: &[&str], extra: &[&str]| {
        let spiffe_id = id(path);
        let mut args = vec![
            "entry",
            "create",
            "--parent-id",
            AGENT_ID,
            "--spiffe-id",
            &spiffe_id,
        ];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        args.extend(extra);
        json(&root(&c, &args), path)
    };
    // Healthy and in use: the workload (root) fetches it below.
    create("acme/healthy", &["unix:uid:0"], &[]);
    // Overlapping selector sets in one tenant (a workload matching the second gets both).
    create("acme/wide", &["unix:uid:4000"], &[]);
    create("acme/narrow", &["unix:uid:4000", "unix:gid:4000"], &[]);
    // Expires, lapses review, belongs to a leaver, has a DNS name whose domain stops verifying.
    create("acme/expiring", &["unix:uid:4001"], &["--expires-in", "2s"]);
    create(
        "acme/unreviewed",
        &["unix:uid:4002"],
        &["--review-every", "2s"],
    );
    create("acme/leaver", &["unix:uid:4003"], &["--owner", "user:pat"]);
    let claim = json(
        &root(
            &c,
            &[
                "tenant",
                "domain",
                "add",
                "--tenant",
                "acme",
                "--domain",
                "acme.test",
            ],
        ),
        "claim",
    );
    dns.set_records(&[(
        "_tessera-challenge.acme.test",
        claim["challenge"].as_str().unwrap(),
    )]);
    json(
        &root(
            &c,
            &[
                "tenant",
                "domain",
                "verify",
                "--tenant",
                "acme",
                "--domain",
                "acme.test",
            ],
        ),
        "verify",
    );
    create(
        "acme/named",
        &["unix:uid:4004"],
        &["--dns-name", "web.acme.test"],
    );
    // An entry from before owners were recorded.
    let legacy = create("legacy", &["unix:uid:4005"], &[]);
    c.server.tamper_sql(&format!(
        "UPDATE entries SET owner = '' WHERE id = '{}'",
        legacy["id"].as_str().unwrap()
    ));
    json(
        &root(
            &c,
            &[
                "owner", "offboard", "--owner", "user:pat", "--reason", "left",
            ],
        ),
        "offboard",
    );
    dns.set_records(&[]);
    let mut s = stream(&c).await;
    until_present(&mut s, &[&id("acme/healthy")]).await;
    // Usage reaches the server in the agent's next report; expiry and the review lapse pass;
    // the domain's re-check fails.
    let review = wait_for(Duration::from_secs(60), || {
        let r = json(&root(&c, &["review", "--stale-after", "1h"]), "review");
        let ready = review_flags(&r, &id("acme/named")).contains(&"unverified_dns_name".to_owned())
            && review_flags(&r, &id("acme/unreviewed")).contains(&"review_lapsed".to_owned())
            && review_flags(&r, &id("acme/expiring")).contains(&"expired".to_owned());
        ready.then_some(r)
    })
    .expect("the review shows every case");
    println!("{review}");
    let want: &[(&str, &[&str])] = &[
        ("acme/healthy", &[]),
        ("acme/wide", &["overlapping_selectors"]),
        ("acme/narrow", &["overlapping_selectors"]),
        ("acme/expiring", &["expired"]),
        ("acme/unreviewed", &["review_lapsed"]),
        ("acme/leaver", &["owner_offboarded"]),
        ("acme/named", &["unverified_dns_name"]),
        ("legacy", &["no_owner"]),
    ];
    for (path, flags) in want {
        assert_eq!(review_flags(&review, &id(path)), *flags, "{path}");
    }
    let healthy = review["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["spiffe_id"] == id("acme/healthy"))
        .unwrap();
    assert_eq!(healthy["tenant"], "acme");
    assert_eq!(healthy["owner"], "user:root");
    assert!(healthy["last_issued_at"].as_i64().is_some(), "{healthy}");
    // Nothing was used in the last 0 seconds... everything unused for 1 s is stale.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let strict = json(
        &root(&c, &["review", "--stale-after", "1s", "--tenant", "acme"]),
        "strict",
    );
    assert!(review_flags(&strict, &id("acme/wide")).contains(&"stale".to_owned()));
    assert!(
        strict["identities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["tenant"] == "acme")
    );
}

/// `task VERB --entry-id ID --ttl TTL` as root (`create` or `explain`).
fn task_for(c: &Cluster, verb: &str, entry: &Value, ttl: &str) -> Output {
    let id = entry["id"].as_str().unwrap();
    root(
        c,
        &[
            "task",
            verb,
            "--entry-id",
            id,
            "--ttl",
            ttl,
            "--reason",
            "r",
        ],
    )
}

/// Whether the policy would allow a task of `ttl` on `entry`.
fn allowed(c: &Cluster, entry: &Value, ttl: &str) -> bool {
    json(&task_for(c, "explain", entry, ttl), "task explain")["allowed"]
        .as_bool()
        .unwrap()
}

#[test]
fn a_tenants_own_policies_narrow_the_global_set_and_only_its_admins_set_them() {
    let c = tenants_cluster();
    let acme_db = json(
        &cli_as(
            &c,
            NOBODY,
            &entry_args("spiffe://example.org/acme/db", "unix:uid:4001", &["--jit"]),
        ),
        "acme entry",
    );
    let beta_db = json(
        &cli_as(
            &c,
            DAEMON,
            &entry_args("spiffe://example.org/beta/db", "unix:uid:4002", &["--jit"]),
        ),
        "beta entry",
    );
    // Files a second user can read.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let short = write(
        "short.cedar",
        r#"@id("short-tasks")
forbid (principal, action == Tessera::Action::"begin_task", resource)
when { context.ttl_seconds > 600 };
"#,
    );
    let bad = write(
        "bad.cedar",
        "forbid (principal, action, resource) when { context.nope };\n",
    );

    // An invalid file is refused with its position and changes nothing.
    let out = cli_as(
        &c,
        NOBODY,
        &["tenant", "policy", "set", "--name", "acme", "--file", &bad],
    );
    assert!(
        stderr(&out).starts_with("error: invalid tenant policies: tenant/acme:1:"),
        "{}",
        stderr(&out)
    );
    let shown = json(
        &cli_as(&c, NOBODY, &["tenant", "policy", "show", "--name", "acme"]),
        "policy show",
    );
    assert_eq!(shown["policy"], "");

    // Another tenant's admin cannot tell acme from a tenant that does not exist.
    let hidden = cli_as(
        &c,
        DAEMON,
        &[
            "tenant", "policy", "set", "--name", "acme", "--file", &short,
        ],
    );
    let none = cli_as(
        &c,
        DAEMON,
        &[
            "tenant", "policy", "set", "--name", "nope", "--file", &short,
        ],
    );
    assert_eq!(stderr(&hidden), "error: tenant acme not found");
    assert_eq!(
        stderr(&hidden).replace("acme", "X"),
        stderr(&none).replace("nope", "X")
    );

    // Before: the built-in set lets operators start day-long tasks anywhere.
    assert!(allowed(&c, &acme_db, "1h"));

    // acme's own admin sets its policies.
    let set = json(
        &cli_as(
            &c,
            NOBODY,
            &[
                "tenant", "policy", "set", "--name", "acme", "--file", &short,
            ],
        ),
        "policy set",
    );
    assert_eq!(set["has_policy"], true);
    let shown = json(
        &cli_as(&c, NOBODY, &["tenant", "policy", "show", "--name", "acme"]),
        "policy show",
    );
    assert!(shown["policy"].as_str().unwrap().contains("short-tasks"));

    // They narrow acme's decisions only, and say which policy decided.
    let out = task_for(&c, "create", &acme_db, "1h");
    assert!(
        stderr(&out).contains("denied by policies [tenant/acme:short-tasks]"),
        "{}",
        stderr(&out)
    );
    let tasks = json(&root(&c, &["task", "list"]), "task list");
    assert_eq!(
        tasks["tasks"].as_array().map_or(0, Vec::len),
        0,
        "nothing persisted"
    );
    assert!(allowed(&c, &beta_db, "1h"), "beta is not narrowed");
    let ok = json(&task_for(&c, "create", &acme_db, "5m"), "short acme task");
    assert_eq!(ok["state"], "active", "{ok}");
    assert_eq!(
        ok["decision"]["policies"],
        serde_json::json!(["builtin.cedar:operator-begin-task"]),
        "{ok}"
    );

    // The change is recorded with who made it.
    let audit = String::from_utf8_lossy(&json_lines(&cli_as(
        &c,
        NOBODY,
        &["audit", "show", "--tenant", "acme"],
    )))
    .into_owned();
    let set_record: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "tenant.policy_set")
        .unwrap_or_else(|| panic!("no tenant.policy_set in {audit}"));
    assert_eq!(set_record["actor"], "user:nobody", "{set_record}");
    assert_eq!(
        set_record["detail"]["policies"],
        serde_json::json!(["tenant/acme:short-tasks"])
    );

    // Cleared, the global set alone decides again.
    json(
        &cli_as(&c, NOBODY, &["tenant", "policy", "clear", "--name", "acme"]),
        "policy clear",
    );
    assert!(allowed(&c, &acme_db, "1h"));
}
