//! x509pop node attestation: agents holding a certificate from the organisation's CA (the
//! server's `--x509pop-ca-file`, generated here) enroll without a join token by proving
//! possession of its key; certificates from another CA or expired ones are refused and
//! enroll nothing; an evicted x509pop agent attests again on restart; a node entry groups
//! agents by their certificates' node selectors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tests::{AgentProc, ServerProc, wait_for};

const WORKLOAD: &str = "spiffe://example.org/workload/x509pop";
const AGENT_PREFIX: &str = "spiffe://example.org/tessera/agent/x509pop/";
const REFUSED_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes a node certificate and key issued by `ca` into `dir`; returns the two paths.
fn node_cert(dir: &Path, ca: &Ca, cn: &str, expired: bool) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![format!("{cn}.nodes.example")]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn server_with_ca(dir: &Path, org: &Ca) -> ServerProc {
    let ca_file = dir.join("org-ca.pem");
    std::fs::write(&ca_file, &org.pem).unwrap();
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    ServerProc::start(
        &server_dir,
        &["--x509pop-ca-file", ca_file.to_str().unwrap()],
    )
}

fn x509pop_agent(dir: &Path, server: &ServerProc, cert: &Path, key: &Path) -> AgentProc {
    std::fs::create_dir_all(dir).unwrap();
    AgentProc::new(dir, server).with_args(&[
        "--x509pop-cert",
        cert.to_str().unwrap(),
        "--x509pop-key",
        key.to_str().unwrap(),
    ])
}

fn wait_serves(agent: &AgentProc) {
    let got = wait_for(Duration::from_secs(30), || {
        agent
            .fetch_ids()
            .ok()
            .filter(|ids| ids == &[WORKLOAD.to_owned()])
    });
    assert!(
        got.is_some(),
        "the x509pop agent did not serve {WORKLOAD}:\n{}",
        agent.log_tail()
    );
}

#[test]
fn x509pop_agent_enrolls_serves_and_reattests_after_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let org = ca("org CA");
    let server = server_with_ca(dir.path(), &org);
    let (cert, key) = node_cert(&dir.path().join("pki"), &org, "node-1", false);
    let mut agent = x509pop_agent(&dir.path().join("a"), &server, &cert, &key);
    agent.restart(None);
    let id = wait_for(Duration::from_secs(30), || {
        server.agent_ids().into_iter().next()
    })
    .unwrap_or_else(|| panic!("no agent enrolled:\n{}", agent.log_tail()));
    let fingerprint = id.strip_prefix(AGENT_PREFIX).expect("default template");
    assert_eq!(fingerprint.len(), 40, "SHA-1 hex: {id}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(server.agents()[0]["attestation_type"], "x509pop");
    server.create_entry_under(&id, WORKLOAD, &["unix:uid:0"], &[]);
    wait_serves(&agent);
    let serial_before = server.agents()[0]["serial"].clone();

    // Evicted: the agent exits and forgets its SVID...
    let out = server.cli(&["agent", "evict", "--spiffe-id", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = agent
        .wait_exit(Duration::from_secs(10))
        .expect("evicted agent did not exit");
    assert_ne!(code, 0);
    assert!(server.agent_ids().is_empty());
    // ...and, unlike a join-token agent, attests again on restart with its certificate.
    agent.restart(None);
    server.wait_attested(&id, Duration::from_secs(30));
    wait_serves(&agent);
    let after = server.agents();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["spiffe_id"], id.as_str());
    assert_ne!(after[0]["serial"], serial_before, "a new agent SVID");
}

#[test]
fn x509pop_refuses_another_ca_and_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let org = ca("org CA");
    let other = ca("other CA");
    let server = server_with_ca(dir.path(), &org);
    let pki = dir.path().join("pki");
    for (name, issuer, expired, why) in [
        ("foreign", &other, false, "not trusted"),
        ("expired", &org, true, "Expired"),
    ] {
        let (cert, key) = node_cert(&pki, issuer, name, expired);
        let mut agent = x509pop_agent(&dir.path().join(name), &server, &cert, &key);
        let (code, log) = agent.run_until_exit(None, REFUSED_EXIT_TIMEOUT);
        assert_ne!(code, 0, "{name}: the agent must be refused:\n{log}");
        assert!(log.contains(why), "{name}: log should say {why:?}:\n{log}");
        assert!(
            !agent.data_dir.join("agent_svid.pem").exists(),
            "{name}: no SVID"
        );
        assert!(server.agent_ids().is_empty(), "{name}: nothing enrolled");
    }
    let out = server.cli(&["audit", "show", "--output", "json"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.matches("agent.attestation_refused").count() >= 2,
        "each refusal is audited: {text}"
    );
}

/// A node entry (`entry create --node`) selecting `x509pop:subject:cn:web1` groups the
/// agent whose certificate has that CN: a workload entry parented to the group's ID is
/// served by it and by no other agent (the `db1` agent's workload is refused). A second
/// node entry, created while both agents' streams are open, regroups the `db1` agent.
#[test]
fn a_node_entry_groups_x509pop_agents_by_their_certificate() {
    const GROUP: &str = "spiffe://example.org/group/web";
    const DB_GROUP: &str = "spiffe://example.org/group/db";
    const DB_WORKLOAD: &str = "spiffe://example.org/workload/db";
    let dir = tempfile::tempdir().unwrap();
    let org = ca("org CA");
    let server = server_with_ca(dir.path(), &org);
    let pki = dir.path().join("pki");
    let (web_cert, web_key) = node_cert(&pki, &org, "web1", false);
    let (db_cert, db_key) = node_cert(&pki, &org, "db1", false);
    let mut web = x509pop_agent(&dir.path().join("web"), &server, &web_cert, &web_key);
    let mut db = x509pop_agent(&dir.path().join("db"), &server, &db_cert, &db_key);
    web.restart(None);
    db.restart(None);
    let agents = wait_for(Duration::from_secs(30), || {
        let a = server.agents();
        (a.len() == 2).then_some(a)
    })
    .unwrap_or_else(|| panic!("two agents did not enroll:\n{}", web.log_tail()));
    // `agent list` shows each agent's node selectors.
    for cn in ["web1", "db1"] {
        let agent = agents
            .iter()
            .find(|a| {
                a["selectors"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == &format!("x509pop:subject:cn:{cn}")))
            })
            .unwrap_or_else(|| panic!("no agent listed with CN {cn}: {agents:?}"));
        let selectors = agent["selectors"].to_string();
        assert!(
            selectors.contains(&format!("x509pop:san:dns:{cn}.nodes.example"))
                && selectors.contains("x509pop:ca:fingerprint:"),
            "{selectors}"
        );
    }

    // Node entries take node selectors only; workload entries refuse them.
    let out = server.cli(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        GROUP,
        "--selector",
        "unix:uid:0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node selector"),
        "{out:?}"
    );
    let out = server.cli(&[
        "entry",
        "create",
        "--parent-id",
        GROUP,
        "--spiffe-id",
        WORKLOAD,
        "--selector",
        "x509pop:subject:cn:web1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a node selector"),
        "{out:?}"
    );

    let node = server.cli_json(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        GROUP,
        "--selector",
        "x509pop:subject:cn:web1",
    ]);
    assert_eq!(node["node"], true, "{node}");
    assert_eq!(node["parent_id"], "spiffe://example.org/tessera/server");
    server.create_entry_under(GROUP, WORKLOAD, &["unix:uid:0"], &[]);
    wait_serves(&web);
    // The other agent is in no group: its workload is attested and refused.
    let refused = db.fetch_ids();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no identity issued")),
        "the db1 agent must not serve {WORKLOAD}: {refused:?}\n{}",
        db.log_tail()
    );

    // A group for db1, created while its stream is open: db1 serves its workload, web1
    // does not.
    server.cli_json(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        DB_GROUP,
        "--selector",
        "x509pop:subject:cn:db1",
    ]);
    server.create_entry_under(DB_GROUP, DB_WORKLOAD, &["unix:uid:0"], &[]);
    let got = wait_for(Duration::from_secs(30), || {
        db.fetch_ids()
            .ok()
            .filter(|ids| ids == &[DB_WORKLOAD.to_owned()])
    });
    assert!(
        got.is_some(),
        "db1 did not serve {DB_WORKLOAD}:\n{}",
        db.log_tail()
    );
    assert_eq!(web.fetch_ids(), Ok(vec![WORKLOAD.to_owned()]));
}
