//! CA rotation without outage: with a 30 s CA, workloads keep receiving SVIDs that verify
//! against the bundle delivered with them, across scheduled and forced rotations, and the
//! agent keeps talking to the server (whose certificate is re-issued by the new CA).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use tests::Cluster;
use x509_parser::prelude::{FromDer, X509Certificate};

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let text = std::fs::read_to_string(path).unwrap();
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

/// Fetches with the agent CLI into `dir`, verifies the chain against the bundle that came
/// with it, and returns the issuing CA's serial. `Err` describes a failure.
fn fetch_and_verify(c: &Cluster, dir: &Path) -> Result<String, String> {
    let out = c.agent.cli(&[
        "api",
        "fetch",
        "x509",
        "--write",
        dir.to_str().unwrap(),
        "--timeout",
        "5",
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let chain = pem_certs(&dir.join("svid.pem"));
    let roots = pem_certs(&dir.join("bundle.pem"));
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| e.to_string())?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| format!("chain does not verify to the bundle: {e}"))?;
    // Which CA signed it: the root whose subject key id matches the leaf's authority key id.
    let (_, parsed) = X509Certificate::from_der(&chain[0]).unwrap();
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .ok_or("leaf has no authority key identifier")?;
    for r in &roots {
        let (_, root) = X509Certificate::from_der(r).unwrap();
        let ski = root
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        if ski.as_deref() == Some(aki.as_slice()) {
            return Ok(hex_serial(root.raw_serial()));
        }
    }
    Err("issuer not in bundle".into())
}

fn hex_serial(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ca_phases(c: &Cluster) -> Vec<(String, String)> {
    let v = c.server.cli_json(&["ca", "show"]);
    v["cas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ca| {
            (
                ca["serial"].as_str().unwrap().to_owned(),
                ca["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn workloads_ride_through_scheduled_and_forced_ca_rotation() {
    let c = Cluster::start(&[
        "--ca-ttl",
        "30s",
        "--default-x509-svid-ttl",
        "5s",
        "--agent-svid-ttl",
        "5s",
    ]);
    c.server
        .create_entry("spiffe://example.org/rotating", &["unix:uid:0"], &[]);
    let out = c.dir.path().join("fetched");
    let first_ca = ca_phases(&c)
        .into_iter()
        .find(|(_, p)| p == "active")
        .unwrap()
        .0;

    let mut issuers = BTreeSet::new();
    let mut failures = Vec::new();
    let mut fetches = 0;
    let mut forced = false;
    let start = SystemTime::now();
    // Two scheduled rotations happen at ~25 s and ~50 s; force one more at 35 s.
    while start.elapsed().unwrap() < Duration::from_secs(56) {
        match fetch_and_verify(&c, &out) {
            Ok(serial) => {
                issuers.insert(serial);
            }
            Err(e) => failures.push(format!("{:?}: {e}", start.elapsed().unwrap())),
        }
        fetches += 1;
        if !forced && start.elapsed().unwrap() > Duration::from_secs(35) {
            let before: Vec<_> = ca_phases(&c);
            let after = c.server.cli_json(&["ca", "rotate"]);
            let active = after["cas"]
                .as_array()
                .unwrap()
                .iter()
                .find(|ca| ca["phase"] == "active")
                .unwrap()["serial"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                before.iter().all(|(s, _)| *s != active),
                "forced rotation activates a fresh CA"
            );
            forced = true;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    println!(
        "fetches={fetches} failures={} signing CAs seen={}",
        failures.len(),
        issuers.len()
    );
    assert!(failures.is_empty(), "failed fetches: {failures:#?}");
    assert!(
        issuers.len() >= 3,
        "expected SVIDs from at least 3 CAs (2 scheduled + 1 forced), saw {issuers:?}"
    );
    assert!(issuers.contains(&first_ca));
    // The agent never lost the server: it is still attested and serving.
    assert!(fetch_and_verify(&c, &out).is_ok());
    let phases = ca_phases(&c);
    assert!(phases.iter().any(|(_, p)| p == "retired"), "{phases:?}");
    assert_eq!(phases.iter().filter(|(_, p)| p == "active").count(), 1);
}
