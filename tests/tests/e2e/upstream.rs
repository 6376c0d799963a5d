//! Upstream authority from disk: Tessera's CA becomes an intermediate under an
//! organisation's root. The bundle agents and workloads receive is that root, and every
//! SVID chain carries Tessera's CA so it verifies to the root.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, UnixTime};
use tests::Cluster;

fn pem_certs(text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

#[test]
fn svids_chain_to_the_upstream_root() {
    let pki = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Example Corp Root CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = p.self_signed(&key).unwrap();
    let (cert_file, key_file) = (pki.path().join("root.pem"), pki.path().join("root.key"));
    std::fs::write(&cert_file, root.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let c = Cluster::start(&[
        "--upstream-ca-cert",
        cert_file.to_str().unwrap(),
        "--upstream-ca-key",
        key_file.to_str().unwrap(),
    ]);
    // The agent enrolled with the bundle from `bundle show`: the upstream root.
    let shown = String::from_utf8(c.server.cli(&["bundle", "show"]).stdout).unwrap();
    assert_eq!(pem_certs(&shown), vec![root.der().clone()]);

    c.server
        .create_entry("spiffe://example.org/under-root", &["unix:uid:0"], &[]);
    let out = c.dir.path().join("fetched");
    let fetched = c
        .agent
        .cli(&["api", "fetch", "x509", "--write", out.to_str().unwrap()]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let chain = pem_certs(&std::fs::read_to_string(out.join("svid.pem")).unwrap());
    let bundle = pem_certs(&std::fs::read_to_string(out.join("bundle.pem")).unwrap());
    assert_eq!(chain.len(), 2, "leaf followed by Tessera's intermediate CA");
    assert_eq!(bundle, vec![root.der().clone()]);
    let anchors = [webpki::anchor_from_trusted_cert(&bundle[0]).unwrap()];
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .expect("SVID chains to the upstream root through Tessera's CA");

    // A bad upstream configuration refuses to start, with a clear message.
    let bad = std::process::Command::new(tests::bin("tessera-server"))
        .args(["run", "--trust-domain", "example.org", "--upstream-ca-cert"])
        .arg(&cert_file)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("upstream_ca_key"));
}
