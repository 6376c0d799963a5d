//! JWT-SVIDs through the command lines: `tessera-agent api fetch jwt` and `api validate jwt`
//! (text and JSON, audiences, `--spiffe-id`, refusals with the reason on stderr), and
//! `tessera-server bundle show --format spiffe`, whose JWT keys are the ones the agent serves
//! and whose X.509 authority is the PEM bundle's root.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tests::jwt::{agent_jwks, assert_ec_jwk, b64d, claims, flip_signature_bit, kid_of};
use tests::{Cluster, runtime, workload_client};

#[test]
fn agent_cli_fetch_and_validate_and_server_spiffe_bundle() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/jwt/cli";
    c.server.create_entry(id, &["unix:uid:0"], &[]);
    let fetched = tests::wait_for(Duration::from_secs(20), || {
        let out = c
            .agent
            .cli(&["api", "fetch", "jwt", "--audience", "A", "--output", "json"]);
        out.status.success().then_some(out)
    })
    .unwrap_or_else(|| {
        let out = c
            .agent
            .cli(&["api", "fetch", "jwt", "--audience", "A", "--output", "json"]);
        panic!(
            "api fetch jwt never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: Value = serde_json::from_slice(&fetched.stdout).expect("JSON");
    let svids = v["svids"].as_array().expect("svids");
    assert_eq!(svids.len(), 1, "{v}");
    assert_eq!(svids[0]["spiffe_id"], id);
    let token = svids[0]["svid"].as_str().expect("svid").to_owned();
    assert_eq!(claims(&token)["aud"], json!(["A"]));
    assert_eq!(claims(&token)["sub"], id);

    // Two audiences and an explicit --spiffe-id.
    let out = c.agent.cli(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "A",
        "--audience",
        "B",
        "--spiffe-id",
        id,
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t2 = v["svids"][0]["svid"].as_str().unwrap();
    assert_eq!(claims(t2)["aud"], json!(["A", "B"]));
    // Text output shows the identity and the token.
    let out = c.agent.cli(&["api", "fetch", "jwt", "--audience", "A"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(id) && text.contains(&token), "{text}");
    // A foreign --spiffe-id fails.
    let out = c.agent.cli(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "A",
        "--spiffe-id",
        "spiffe://example.org/jwt/not-mine",
    ]);
    assert!(!out.status.success());

    // validate: text names the SPIFFE ID; JSON has the claims.
    let out = c.agent.cli(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "A",
        "--svid",
        &token,
    ]);
    assert!(
        out.status.success(),
        "validate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(id), "{text}");
    let out = c.agent.cli(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "A",
        "--svid",
        &token,
        "--output",
        "json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spiffe_id"], id);
    assert_eq!(v["claims"]["sub"], id);
    assert_eq!(v["claims"]["aud"], json!(["A"]));
    assert_eq!(v["claims"]["exp"], claims(&token)["exp"]);
    assert!(v["claims"]["exp"].is_i64(), "{v}");

    // Wrong audience and a tampered token: non-zero exit, reason on stderr.
    let out = c.agent.cli(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "B",
        "--svid",
        &token,
    ]);
    assert!(!out.status.success(), "wrong audience accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audience"), "{err}");
    let out = c.agent.cli(&[
        "api",
        "validate",
        "jwt",
        "--audience",
        "A",
        "--svid",
        &flip_signature_bit(&token),
    ]);
    assert!(!out.status.success(), "tampered token accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature"));

    // tessera-server bundle show --format spiffe.
    let out = c.server.cli(&["bundle", "show", "--format", "spiffe"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).expect("SPIFFE bundle is JSON");
    let keys = b["keys"].as_array().expect("keys");
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(
        x509.len() + jwt.len(),
        keys.len(),
        "every key has a known use: {b}"
    );
    assert_eq!(x509.len(), 1, "one X.509 authority: {b}");
    let x = x509[0];
    assert!(x.get("kid").is_none(), "x509-svid entry has no kid: {x}");
    let x5c = x["x5c"].as_array().expect("x5c");
    assert_eq!(x5c.len(), 1, "exactly one certificate: {x}");
    let der = base64::engine::general_purpose::STANDARD
        .decode(x5c[0].as_str().unwrap())
        .expect("x5c is standard base64 (RFC 7517 §4.7)");
    {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let pem = c.server.cli(&["bundle", "show"]);
        let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem.stdout)
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(roots, vec![der.clone()], "x5c is the PEM bundle's root");
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x5c is a certificate");
    let point = cert.public_key().subject_public_key.data.as_ref();
    assert_eq!(point.len(), 65);
    assert_eq!(
        b64d(x["x"].as_str().unwrap()),
        point[1..33].to_vec(),
        "x matches cert"
    );
    assert_eq!(
        b64d(x["y"].as_str().unwrap()),
        point[33..].to_vec(),
        "y matches cert"
    );
    assert!(!jwt.is_empty(), "at least one jwt-svid key: {b}");
    let server_kids: BTreeSet<String> = jwt.iter().map(|k| assert_ec_jwk(k)).collect();
    assert!(
        server_kids.contains(&kid_of(&token)),
        "token kid in the SPIFFE bundle"
    );
    assert!(
        b["spiffe_sequence"].as_u64().expect("spiffe_sequence") >= 1,
        "{b}"
    );
    assert!(
        b["spiffe_refresh_hint"]
            .as_u64()
            .expect("spiffe_refresh_hint")
            >= 1,
        "{b}"
    );
    // Same JWT keys as the agent serves on the Workload API.
    let agent_kids = runtime().block_on(async {
        let mut raw = workload_client(&c.agent.socket_path).await;
        let jwks = agent_jwks(&mut raw).await;
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(assert_ec_jwk)
            .collect::<BTreeSet<String>>()
    });
    assert_eq!(agent_kids, server_kids);
}
