//! One authority across servers: two servers on one PostgreSQL database (a fresh database
//! per test) each sign under their own CA and JWT keys and serve the union of both as the
//! trust bundle. A workload's X.509-SVID from one server's agent verifies against the
//! other agent's bundle, a JWT-SVID minted through one is accepted by `ValidateJWTSVID`
//! on the other, and an agent enrolled on one server, restarted pointing at the other
//! (same data directory), is accepted there and keeps getting SVIDs.

use std::collections::BTreeSet;
use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{X509svidRequest, X509svidResponse};
use common::{Bundle, TrustDomain};
use rustls_pki_types::{CertificateDer, UnixTime};
use tests::jwt::{agent_jwks, kid_of, spiffe_client, validate_raw};
use tests::{AgentProc, ServerProc, TRUST_DOMAIN, TestDb, runtime, uid_selector, with_header};
use tonic::transport::Channel;

const NODE_A: &str = "spiffe://example.org/node/shared-a";
const NODE_B: &str = "spiffe://example.org/node/shared-b";
const WORKLOAD_A: &str = "spiffe://example.org/shared/on-a";
const WORKLOAD_B: &str = "spiffe://example.org/shared/on-b";
const MOVED: &str = "spiffe://example.org/shared/after-the-move";
const AUDIENCE: &str = "shared-audience";

/// How long a change on one server may take to be in the other's bundle (the refresh is
/// every 2 s).
const SHARING: Duration = Duration::from_secs(20);

/// Serials (hex) of the CAs `server` holds (`ca show`).
fn ca_serials(server: &ServerProc) -> BTreeSet<String> {
    server.cli_json(&["ca", "show"])["cas"]
        .as_array()
        .expect("cas")
        .iter()
        .map(|c| c["serial"].as_str().expect("serial").to_ascii_lowercase())
        .collect()
}

/// The certificates in a concatenation of DER certificates.
fn split_der(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).expect("DER certificate");
        out.push(CertificateDer::from(der[..der.len() - rest.len()].to_vec()));
        der = rest;
    }
    out
}

fn serial_of(cert: &CertificateDer<'_>) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert).expect("certificate");
    hex::encode(c.raw_serial())
}

/// The first X.509-SVID message the agent at `socket` sends the caller with an SVID for
/// `spiffe_id`.
fn x509_message(socket: &std::path::Path, spiffe_id: &str) -> X509svidResponse {
    let rt = runtime();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut client: SpiffeWorkloadApiClient<Channel> = tests::workload_client(socket).await;
            if let Ok(stream) = client.fetch_x509svid(with_header(X509svidRequest {})).await {
                let mut stream = stream.into_inner();
                if let Ok(Ok(Some(msg))) =
                    tokio::time::timeout(Duration::from_secs(5), stream.message()).await
                    && msg.svids.iter().any(|s| s.spiffe_id == spiffe_id)
                {
                    return msg;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no X.509-SVID for {spiffe_id} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Verifies the SVID for `spiffe_id` in `msg` against the X.509 authorities of `bundle_der`.
fn verifies_against(
    msg: &X509svidResponse,
    spiffe_id: &str,
    bundle_der: &[u8],
) -> Result<(), String> {
    let svid = msg
        .svids
        .iter()
        .find(|s| s.spiffe_id == spiffe_id)
        .expect("the SVID");
    let chain = split_der(&svid.x509_svid);
    let bundle = Bundle::new(
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        split_der(bundle_der),
        0,
        0,
    );
    common::tls::verify_svid_chain(
        &chain[0],
        &chain[1..],
        &bundle,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
    .map(|id| assert_eq!(id.as_str(), spiffe_id))
    .map_err(|e| e.to_string())
}

/// The bundle's CA serials, from an X.509-SVID message.
fn bundle_serials(msg: &X509svidResponse) -> BTreeSet<String> {
    split_der(&msg.svids[0].bundle)
        .iter()
        .map(serial_of)
        .collect()
}

#[test]
fn two_servers_on_one_database_are_one_authority_for_their_agents() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = db.servers(dir.path(), ["a", "b"], &[]);
    // Each server published its CA and JWT key; each serves both.
    a.wait_bundle_cas(2, SHARING);
    b.wait_bundle_cas(2, SHARING);
    let (cas_a, cas_b) = (ca_serials(&a), ca_serials(&b));
    assert!(cas_a.is_disjoint(&cas_b), "each server has its own CA");
    assert_eq!(
        db.query("SELECT count(DISTINCT server_id) FROM bundle_authorities"),
        "2"
    );
    assert_eq!(
        db.query(
            "SELECT count(*) FROM bundle_authorities WHERE material LIKE '%PRIVATE%' OR material LIKE '%\"d\"%'"
        ),
        "0",
        "public material only"
    );

    // One agent enrolled on each server.
    let mut agent_a = AgentProc::new(&dir.path().join("agent-a"), &a);
    agent_a.restart(Some(&a.token(NODE_A)));
    a.wait_attested(NODE_A, Duration::from_secs(30));
    let mut agent_b = AgentProc::new(&dir.path().join("agent-b"), &b);
    agent_b.restart(Some(&b.token(NODE_B)));
    b.wait_attested(NODE_B, Duration::from_secs(30));
    a.create_entry_under(NODE_A, WORKLOAD_A, &[&uid_selector()], &[]);
    b.create_entry_under(NODE_B, WORKLOAD_B, &[&uid_selector()], &[]);

    // Both agents' Workload API bundles hold both servers' CAs.
    let msg_a = x509_message(&agent_a.socket_path, WORKLOAD_A);
    let msg_b = x509_message(&agent_b.socket_path, WORKLOAD_B);
    for (msg, who) in [(&msg_a, "agent on A"), (&msg_b, "agent on B")] {
        let serials = bundle_serials(msg);
        for serial in cas_a.iter().chain(&cas_b) {
            assert!(
                serials.contains(serial),
                "{who}: CA {serial} not in {serials:?}"
            );
        }
    }
    // Each workload's X.509-SVID verifies against the other agent's bundle.
    verifies_against(&msg_a, WORKLOAD_A, &msg_b.svids[0].bundle)
        .expect("A's SVID verifies against B's agent's bundle");
    verifies_against(&msg_b, WORKLOAD_B, &msg_a.svids[0].bundle)
        .expect("B's SVID verifies against A's agent's bundle");
    // Positive and negative control: against A's own CA only, B's SVID does not verify.
    let only_a: Vec<u8> = split_der(&msg_a.svids[0].bundle)
        .into_iter()
        .filter(|c| cas_a.contains(&serial_of(c)))
        .flat_map(|c| c.to_vec())
        .collect();
    assert!(verifies_against(&msg_a, WORKLOAD_A, &only_a).is_ok());
    assert!(verifies_against(&msg_b, WORKLOAD_B, &only_a).is_err());

    // JWT-SVIDs: minted through one agent, accepted by ValidateJWTSVID on the other; both
    // agents' JWT bundles hold both servers' keys.
    runtime().block_on(async {
        let ca = spiffe_client(&agent_a.endpoint()).await;
        let cb = spiffe_client(&agent_b.endpoint()).await;
        let ta = ca
            .fetch_jwt_svid(&[AUDIENCE], None)
            .await
            .expect("JWT-SVID via A");
        let tb = cb
            .fetch_jwt_svid(&[AUDIENCE], None)
            .await
            .expect("JWT-SVID via B");
        let (kid_a, kid_b) = (kid_of(ta.token()), kid_of(tb.token()));
        assert_ne!(kid_a, kid_b, "each server signs with its own key");
        let mut raw_a = tests::workload_client(&agent_a.socket_path).await;
        let mut raw_b = tests::workload_client(&agent_b.socket_path).await;
        for (raw, token, id, what) in [
            (&mut raw_b, ta.token(), WORKLOAD_A, "A's token on B's agent"),
            (&mut raw_a, tb.token(), WORKLOAD_B, "B's token on A's agent"),
        ] {
            let v = validate_raw(raw, AUDIENCE, token)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(v.spiffe_id, id, "{what}");
        }
        for raw in [&mut raw_a, &mut raw_b] {
            let jwks = agent_jwks(raw).await;
            let kids: BTreeSet<&str> = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap())
                .collect();
            assert!(
                kids.contains(kid_a.as_str()) && kids.contains(kid_b.as_str()),
                "{kids:?}"
            );
        }
    });

    // The agent enrolled on A, restarted pointing at B with the same data directory
    // (trusting the bundle it persisted), is accepted by B and keeps getting SVIDs.
    agent_a.stop();
    agent_a.server_address = b.address();
    agent_a.restart(None);
    b.create_entry_under(NODE_A, MOVED, &[&uid_selector()], &[]);
    let moved = x509_message(&agent_a.socket_path, MOVED);
    verifies_against(&moved, MOVED, &msg_b.svids[0].bundle)
        .expect("signed by B, trusted by the shared bundle");
    assert!(
        verifies_against(&moved, MOVED, &only_a).is_err(),
        "the new SVID was signed by B's CA, not A's"
    );
    // Workload A's SVID is still served (renewed through B as needed).
    let again = x509_message(&agent_a.socket_path, WORKLOAD_A);
    verifies_against(&again, WORKLOAD_A, &msg_b.svids[0].bundle).unwrap();

    // Both servers audited what they published.
    let kinds = a.cli(&["audit", "show", "--output", "json"]);
    let published = String::from_utf8_lossy(&kinds.stdout)
        .lines()
        .filter(|l| l.contains("\"bundle.published\""))
        .count();
    assert!(
        published >= 4,
        "two CAs and two JWT keys published: {published}"
    );
    let v = a.cli_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn servers_under_one_upstream_root_share_that_root_once() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp Root CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root = p.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    std::fs::write(&cert_file, root.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let [a, b] = db.servers(
        dir.path(),
        ["a", "b"],
        &[
            "--upstream-ca-cert",
            cert_file.to_str().unwrap(),
            "--upstream-ca-key",
            key_file.to_str().unwrap(),
        ],
    );
    // Both servers published the root; after both have re-read the table (every 2 s),
    // each still serves that one root.
    assert_eq!(
        db.query("SELECT count(DISTINCT server_id) FROM bundle_authorities WHERE kind = 'x509'"),
        "2"
    );
    std::thread::sleep(Duration::from_secs(5));
    for server in [&a, &b] {
        let shown = String::from_utf8(server.cli(&["bundle", "show"]).stdout).unwrap();
        let certs: Vec<Vec<u8>> = pem::parse_many(&shown)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        assert_eq!(certs, vec![root.der().to_vec()], "the root, once");
    }
    // An agent of A gets an SVID that chains through A's intermediate to the root, which
    // is all B's agents trust.
    let mut agent_a = AgentProc::new(&dir.path().join("agent-a"), &a);
    agent_a.restart(Some(&a.token(NODE_A)));
    a.wait_attested(NODE_A, Duration::from_secs(30));
    // Through A: entries reach only the agents of the server that stored them (until the
    // change feed).
    a.create_entry_under(NODE_A, WORKLOAD_A, &[&uid_selector()], &[]);
    let msg = x509_message(&agent_a.socket_path, WORKLOAD_A);
    verifies_against(&msg, WORKLOAD_A, root.der()).expect("chains to the shared root");
    assert!(
        verifies_against(&msg, WORKLOAD_A, &other_root()).is_err(),
        "and only to it"
    );
}

/// A root the SVIDs were not issued under, for negative controls.
fn other_root() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().der().to_vec()
}
