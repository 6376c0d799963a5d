//! Interoperability with the unmodified Python client, py-spiffe (`pip install spiffe`).
//!
//! `tests/py/fetch_x509.py` talks to the agent through `SPIFFE_ENDPOINT_SOCKET` and prints
//! what it got as JSON; the properties are then checked here, in Rust, with the same
//! independent checks as the Rust-client suite (profile, key/leaf match, chain, lifetime).
//!
//! The tests run py-spiffe exactly as shipped, and pass. grpcio >= 1.57 sends the
//! percent-encoded socket path as `:authority` on `unix:` channels (e.g.
//! `tmp%2Fx%2Fapi.sock`), which is not a valid URI authority; the agent repairs it before
//! the HTTP/2 server sees it (`agent/src/workload_api/authority.rs`). The `_diagnostic`
//! test, where grpcio is told to send `localhost`, stays beside them so a regression there
//! is pinned on the authority alone.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tests::Cluster;

use crate::interop_rust::{
    NO_IDENTITY, assert_chain_verifies, assert_key_matches_leaf, assert_leaf_profile,
    assert_lifetime, assert_td_root, server_bundle_ders,
};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/fetch_x509.py")
}

/// Runs the py-spiffe client in `mode` against the cluster's agent and parses its JSON.
///
/// `authority` is a diagnostic override of grpcio's `:authority` (never set by a real
/// workload); `None` runs py-spiffe exactly as shipped.
fn py_spiffe(
    c: &Cluster,
    mode: &str,
    timeout_secs: u32,
    authority: Option<&str>,
) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg(script())
        .arg(mode)
        .args(["--timeout", &timeout_secs.to_string()])
        .env("SPIFFE_ENDPOINT_SOCKET", c.agent.endpoint())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("TESSERA_TEST_GRPC_AUTHORITY");
    if let Some(a) = authority {
        cmd.env("TESSERA_TEST_GRPC_AUTHORITY", a);
    }
    let out = cmd
        .output()
        .expect("python3 must be installed to run the py-spiffe interop tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "py-spiffe is not installed for python3 ({}): run `pip install spiffe` (0.3.x)\n{stderr}",
        stdout.trim()
    );
    assert!(
        out.status.success(),
        "fetch_x509.py {mode} failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("fetch_x509.py printed no JSON ({e}):\n{stdout}\n{stderr}"));
    println!(
        "py-spiffe {} ({mode})",
        v["py_spiffe_version"].as_str().unwrap_or("?")
    );
    v
}

fn pem_certs(pems: &serde_json::Value) -> Vec<Vec<u8>> {
    pems.as_array()
        .unwrap_or_else(|| panic!("expected a PEM list, got {pems}"))
        .iter()
        .flat_map(|p| {
            CertificateDer::pem_slice_iter(p.as_str().unwrap().as_bytes())
                .map(|c| c.unwrap().to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn pem_key(pem: &serde_json::Value) -> Vec<u8> {
    rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_str().unwrap().as_bytes())
        .expect("PKCS#8 PEM key")
        .secret_pkcs8_der()
        .to_vec()
}

/// Waits until the entry's SVID is served (so py-spiffe needs no retry logic).
fn wait_until_served(c: &Cluster, id: &str) {
    let ok = tests::wait_for(Duration::from_secs(15), || {
        let out = c.fetch_json();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["svids"][0]["spiffe_id"] == id).then_some(())
    });
    assert!(ok.is_some(), "{id} not served within 15 s");
}

fn assert_no_error(v: &serde_json::Value) {
    assert!(
        v["error_class"].is_null(),
        "py-spiffe failed: {} {}",
        v["error_class"],
        v["error"]
    );
}

#[test]
fn py_spiffe_fetch_profile() {
    fetch_profile(None);
}

/// Diagnostic companion of `py_spiffe_fetch_profile`: the same checks with grpcio told
/// to send `:authority: localhost`. Should the real test fail while this one passes, the
/// incompatibility is in the authority alone (everything Tessera serves parses in py-spiffe).
#[test]
fn py_spiffe_fetch_profile_with_localhost_authority_diagnostic() {
    fetch_profile(Some("localhost"));
}

fn fetch_profile(authority: Option<&str>) {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/python";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--x509-svid-ttl", "600"]);
    wait_until_served(&c, id);
    let v = py_spiffe(&c, "fetch", 10, authority);
    assert_eq!(v["authority_override"].as_str(), authority);
    assert_no_error(&v);

    assert_eq!(v["spiffe_id"], id, "fetch_x509_svid");
    assert_eq!(v["context_svid_count"], 1, "fetch_x509_context");
    assert_eq!(v["context_spiffe_ids"], serde_json::json!([id]));
    assert_eq!(v["context_default_spiffe_id"], id);
    assert_eq!(v["source_spiffe_id"], id, "X509Source");

    let chain = pem_certs(&v["cert_chain_pem"]);
    assert!(!chain.is_empty());
    let facts = assert_leaf_profile(&chain[0], id);
    assert_lifetime(&facts, 600);
    assert_key_matches_leaf(&pem_key(&v["key_pem"]), &chain[0]);
    let source_leaf = pem_certs(&serde_json::json!([v["source_leaf_pem"]]));
    assert_key_matches_leaf(&pem_key(&v["source_key_pem"]), &source_leaf[0]);

    // Bundles as py-spiffe keys them (by trust domain name), from both RPCs.
    let server_roots = server_bundle_ders(&c);
    for field in ["bundles", "context_bundles"] {
        let map = v[field].as_object().unwrap();
        assert_eq!(map.len(), 1, "{field}: only the own trust domain: {map:?}");
        let roots = pem_certs(&map["example.org"]);
        assert_eq!(roots.len(), 1, "{field}");
        assert_td_root(&roots[0]);
        assert_eq!(roots, server_roots, "{field}: the server's CA");
        assert_chain_verifies(&chain, &roots);
    }
}

#[test]
fn py_spiffe_unregistered_gets_permission_denied() {
    let c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/other", &["unix:uid:12345"], &[]);
    let v = py_spiffe(&c, "denied", 10, None);
    assert_no_error(&v);
    for (call, class) in [
        ("svid", "FetchX509SvidError"),
        ("context", "FetchX509SvidError"),
        ("bundles", "FetchX509BundleError"),
    ] {
        let r = &v[call];
        assert_eq!(r["error_class"], class, "{call}: {r}");
        let msg = r["error"].as_str().unwrap();
        assert!(msg.contains(NO_IDENTITY), "{call}: {msg}");
        assert!(msg.contains("PERMISSION_DENIED"), "{call}: {msg}");
    }
}

#[test]
fn py_spiffe_watch_receives_rotation() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/python-short";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--x509-svid-ttl", "6"]);
    wait_until_served(&c, id);
    let v = py_spiffe(&c, "watch", 15, None);
    assert_no_error(&v);

    let initial = &v["initial"];
    let rotated = &v["rotated"];
    assert!(
        rotated.is_object(),
        "py-spiffe X509Source saw no rotation within 15 s: {v}"
    );
    assert_no_error(rotated);
    let old_chain = pem_certs(&initial["cert_chain_pem"]);
    let new_chain = pem_certs(&rotated["cert_chain_pem"]);
    let old = assert_leaf_profile(&old_chain[0], id);
    let new = assert_leaf_profile(&new_chain[0], id);
    assert_ne!(old.serial, new.serial);
    assert!(new.not_after > old.not_after);
    assert_lifetime(&new, 6);
    assert_eq!(rotated["spiffe_id"], id);
    assert_key_matches_leaf(&pem_key(&rotated["key_pem"]), &new_chain[0]);

    let secs = |x: &serde_json::Value| x.as_f64().expect("received_at");
    let received = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs(&rotated["received_at"]));
    let margin = old
        .not_after_time()
        .duration_since(received)
        .unwrap_or_else(|e| {
            panic!(
                "py-spiffe received the rotated SVID {:?} AFTER the old one expired",
                e.duration()
            )
        });
    println!(
        "py-spiffe rotation: {} update(s), rotated {:.0} ms after the first SVID, {} ms before its notAfter",
        v["updates_seen"],
        (secs(&rotated["received_at"]) - secs(&initial["received_at"])) * 1000.0,
        margin.as_millis()
    );
}
