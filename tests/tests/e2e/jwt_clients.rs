//! JWT-SVIDs through real clients: FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID with
//! the unmodified Rust `spiffe` crate (0.19) and py-spiffe (0.3.x), and offline
//! verification of the fetched tokens against the fetched bundle by each client's own
//! verifier. Token headers and claims are checked independently of Tessera's code (base64 +
//! JSON, `tests::jwt`): exactly `alg`/`kid`/`typ`, the full audience list, the entry's
//! lifetime, no `nbf`; a caller gets only its own identities, and bad requests are
//! InvalidArgument.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::proto::workload::JwtsvidRequest;
use serde_json::{Value, json};
use spiffe::{
    JwtBundleSet, JwtSvid, JwtSvidError, JwtVerificationErrorKind, SpiffeId, WorkloadApiError,
};
use tests::jwt::{
    agent_jwks, assert_ec_jwk, claims, fetch_all_when_ready, flip_signature_bit, header, kid_of,
    kids_of, spiffe_client, td, validate_raw,
};
use tests::with_header as req;
use tests::{Cluster, TRUST_DOMAIN, runtime, unix_now, workload_client};

// ---------------------------------------------------------------------------------------
// The Rust `spiffe` crate.
// ---------------------------------------------------------------------------------------

#[test]
fn rust_client_fetches_validates_and_verifies_offline() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/jwt/rust";
    let second = "spiffe://example.org/jwt/rust-second";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--jwt-svid-ttl", "120"]);
    let created = SystemTime::now();
    runtime().block_on(async {
        let client = spiffe_client(&c.agent.endpoint()).await;
        let mut raw = workload_client(&c.agent.socket_path).await;
        fetch_all_when_ready(&client, &["a", "b"], 1).await;

        // FetchJWTSVID, default identity, two audiences.
        let before = unix_now();
        let svid = client
            .fetch_jwt_svid(&["a", "b"], None)
            .await
            .expect("fetch_jwt_svid");
        let after = unix_now();
        let token = svid.token().to_owned();
        assert_eq!(svid.spiffe_id().to_string(), id);
        assert_eq!(svid.audience(), ["a", "b"]);
        let h = header(&token);
        let kid = kid_of(&token);
        assert!(!kid.is_empty());
        assert_eq!(
            h,
            json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            "header is exactly alg, kid, typ"
        );
        assert_eq!(svid.key_id(), kid);
        let cl = claims(&token);
        assert_eq!(
            cl["aud"],
            json!(["a", "b"]),
            "aud is the full requested list"
        );
        assert_eq!(cl["sub"], id);
        let exp = cl["exp"].as_i64().expect("integer exp");
        let iat = cl["iat"].as_i64().expect("integer iat");
        assert!(cl["exp"].is_i64() && cl["iat"].is_i64(), "{cl}");
        assert!(
            (before - 2..=after + 1).contains(&iat),
            "iat {iat} is now ({before}..{after})"
        );
        assert_eq!(exp - iat, 120, "lifetime is the entry's --jwt-svid-ttl");
        assert!(cl.get("nbf").is_none(), "no nbf (zero-skew verifiers)");

        // FetchJWTBundles: the own TD, a key with the token's kid, nothing but JWT keys.
        let bundles = client.fetch_jwt_bundles().await.expect("fetch_jwt_bundles");
        assert_eq!(bundles.len(), 1, "only the own trust domain");
        let bundle = bundles.get(&td()).expect("bundle for example.org");
        assert!(
            bundle.find_jwt_authority(&kid).is_some(),
            "bundle has the token's kid {kid}"
        );
        let jwks = agent_jwks(&mut raw).await;
        let keys = jwks["keys"].as_array().expect("keys array");
        assert!(!keys.is_empty());
        let mut wire_kids = BTreeSet::new();
        for k in keys {
            assert!(k.get("x5c").is_none(), "no X.509 material: {k}");
            assert!(
                k.get("use").is_none_or(|u| u == "jwt-svid"),
                "JWT keys only: {k}"
            );
            wire_kids.insert(assert_ec_jwk(k));
        }
        assert_eq!(wire_kids, kids_of(&bundles), "crate sees every key");

        // Offline verification with the crate against the fetched bundle.
        let verified =
            JwtSvid::parse_and_validate(&token, &bundles, &["a"]).expect("offline verification");
        assert_eq!(verified.spiffe_id().to_string(), id);
        assert_eq!(verified.claims().exp(), exp);
        JwtSvid::parse_and_validate(&token, &bundles, &["b"]).expect("offline, second audience");
        match JwtSvid::parse_and_validate(&token, &bundles, &["c"]) {
            Err(JwtSvidError::InvalidToken(e)) => {
                assert_eq!(e.kind(), JwtVerificationErrorKind::AudienceMismatch);
            }
            other => panic!("offline, wrong audience: {other:?}"),
        }
        match JwtSvid::parse_and_validate(&flip_signature_bit(&token), &bundles, &["a"]) {
            Err(JwtSvidError::InvalidToken(e)) => {
                assert_eq!(e.kind(), JwtVerificationErrorKind::InvalidSignature);
            }
            other => panic!("offline, flipped signature bit: {other:?}"),
        }
        assert!(matches!(
            JwtSvid::parse_and_validate(&token, &JwtBundleSet::new(), &["a"]),
            Err(JwtSvidError::BundleNotFound(_))
        ));

        // ValidateJWTSVID through the crate and raw: spiffe_id and claims.
        let v = client
            .validate_jwt_token("a", &token)
            .await
            .expect("validate_jwt_token");
        assert_eq!(v.spiffe_id().to_string(), id);
        let resp = validate_raw(&mut raw, "b", &token)
            .await
            .expect("ValidateJWTSVID");
        assert_eq!(resp.spiffe_id, id);
        let fields = &resp.claims.as_ref().expect("claims").fields;
        for k in ["sub", "aud", "exp"] {
            assert!(fields.contains_key(k), "claims have {k}: {fields:?}");
        }
        let dbg = |k: &str| format!("{:?}", fields[k].kind);
        assert!(dbg("sub").contains(id), "{}", dbg("sub"));
        assert!(dbg("aud").starts_with("Some(ListValue"), "{}", dbg("aud"));
        assert!(dbg("exp").starts_with("Some(NumberValue"), "{}", dbg("exp"));
        let err = client
            .validate_jwt_token("c", &token)
            .await
            .expect_err("wrong audience");
        assert!(err.is_invalid_argument(), "{err:?}");
        assert!(err.to_string().contains("audience"), "{err}");

        // With the caller's own SPIFFE ID: exactly that identity.
        let own = SpiffeId::new(id).unwrap();
        let list = client
            .fetch_all_jwt_svids(&["a"], Some(&own))
            .await
            .expect("fetch with own spiffe_id");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].spiffe_id(), &own);
        assert_eq!(claims(list[0].token())["aud"], json!(["a"]));

        // An ID the caller does not have: PermissionDenied.
        let not_mine = SpiffeId::new("spiffe://example.org/jwt/not-mine").unwrap();
        let err = client
            .fetch_jwt_svid(&["a"], Some(&not_mine))
            .await
            .expect_err("foreign spiffe_id refused");
        assert!(
            matches!(
                err,
                WorkloadApiError::NoIdentityIssued | WorkloadApiError::PermissionDenied(_)
            ),
            "{err:?}"
        );
        let s = raw
            .fetch_jwtsvid(req(JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: not_mine.to_string(),
            }))
            .await
            .expect_err("raw: foreign spiffe_id refused");
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        let s = raw
            .fetch_jwtsvid(req(JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: "not a spiffe id".into(),
            }))
            .await
            .expect_err("malformed spiffe_id refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");

        // Empty audience: InvalidArgument (crate and raw).
        let err = client
            .fetch_jwt_svid(Vec::<&str>::new(), None)
            .await
            .expect_err("empty audience refused");
        assert!(err.is_invalid_argument(), "{err:?}");
        let s = raw
            .fetch_jwtsvid(req(JwtsvidRequest {
                audience: vec![],
                spiffe_id: String::new(),
            }))
            .await
            .expect_err("raw: empty audience refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("audience"), "{s:?}");
        // More than 32 audiences, or an empty one: InvalidArgument.
        for audience in [
            (0..33).map(|i| format!("aud{i}")).collect::<Vec<_>>(),
            vec!["a".to_owned(), String::new()],
        ] {
            let s = raw
                .fetch_jwtsvid(req(JwtsvidRequest {
                    audience: audience.clone(),
                    spiffe_id: String::new(),
                }))
                .await
                .expect_err("bad audience list refused");
            assert_eq!(
                s.code(),
                tonic::Code::InvalidArgument,
                "{audience:?}: {s:?}"
            );
        }

        // A second entry for the same caller (created in a later second): two tokens, the
        // default identity first; fetch_jwt_svid still returns the default one.
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        while secs(SystemTime::now()) <= secs(created) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.server.create_entry(second, &["unix:uid:0"], &[]);
        let both = fetch_all_when_ready(&client, &["a"], 2).await;
        let ids: Vec<String> = both.iter().map(|s| s.spiffe_id().to_string()).collect();
        assert_eq!(ids, [id, second], "default identity first");
        for s in &both {
            assert_eq!(claims(s.token())["sub"], s.spiffe_id().to_string());
            JwtSvid::parse_and_validate(s.token(), &bundles, &["a"]).expect("offline");
        }
        let default = client.fetch_jwt_svid(&["a"], None).await.unwrap();
        assert_eq!(default.spiffe_id().to_string(), id);
        let only = client
            .fetch_all_jwt_svids(&["a"], Some(&SpiffeId::new(second).unwrap()))
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].spiffe_id().to_string(), second);
    });
}

// ---------------------------------------------------------------------------------------
// py-spiffe.
// ---------------------------------------------------------------------------------------

fn py_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/jwt_client.py")
}

/// Runs tests/py/jwt_client.py against the cluster's agent and parses its JSON.
///
/// `authority` is a diagnostic override of grpcio's `:authority` (never set by a real
/// workload); `None` runs py-spiffe exactly as shipped.
fn py_jwt(c: &Cluster, audiences: &[&str], wrong: &str, authority: Option<&str>) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(py_script());
    for a in audiences {
        cmd.args(["--audience", a]);
    }
    cmd.args(["--wrong-audience", wrong, "--timeout", "10"])
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
        "py-spiffe is not installed for python3 ({}): run `python3 -m pip install 'spiffe>=0.3,<0.4'`\n{stderr}",
        stdout.trim()
    );
    assert!(
        out.status.success(),
        "jwt_client.py failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("jwt_client.py printed no JSON ({e}):\n{stdout}\n{stderr}"));
    println!(
        "py-spiffe {}",
        v["py_spiffe_version"].as_str().unwrap_or("?")
    );
    v
}

fn py_ok<'a>(v: &'a Value, what: &str) -> &'a Value {
    let r = &v[what];
    assert!(
        (r.is_object() && r.get("error").is_none()) || r.is_array(),
        "py-spiffe {what} failed: {r}"
    );
    r
}

fn py_err<'a>(v: &'a Value, what: &str) -> &'a str {
    v[what]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("py-spiffe {what} should have raised: {}", v[what]))
}

/// py-spiffe exactly as shipped (grpcio sends the %-encoded socket path as `:authority`,
/// which the agent must accept; see agent/src/workload_api/authority.rs).
#[test]
fn py_spiffe_fetches_validates_and_verifies_offline() {
    py_spiffe_jwt(None);
}

/// Diagnostic companion of `py_spiffe_fetches_validates_and_verifies_offline`: the same
/// checks with grpcio told to send `:authority: localhost`. Should the real test fail while
/// this one passes, the incompatibility is in the `:authority` handling alone, not in what
/// the JWT RPCs serve.
#[test]
fn py_spiffe_jwt_with_localhost_authority_diagnostic() {
    py_spiffe_jwt(Some("localhost"));
}

fn py_spiffe_jwt(authority: Option<&str>) {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/jwt/python";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--jwt-svid-ttl", "120"]);
    // The entry must have reached the agent before py-spiffe runs (it does not retry).
    let kids = runtime().block_on(async {
        let client = spiffe_client(&c.agent.endpoint()).await;
        fetch_all_when_ready(&client, &["a"], 1).await;
        kids_of(&client.fetch_jwt_bundles().await.unwrap())
    });
    let now = unix_now();
    let v = py_jwt(&c, &["a", "b"], "c", authority);
    assert_eq!(v["authority_override"].as_str(), authority);

    // fetch_jwt_svid({"a","b"}): the caller's ID, both audiences, integer expiry ~ +120 s.
    let svid = py_ok(&v, "svid");
    assert_eq!(svid["spiffe_id"], id);
    assert_eq!(svid["audience"], json!(["a", "b"]));
    let expiry = svid["expiry"].as_i64().expect("integer expiry");
    assert!(
        (now + 115..=now + 125).contains(&expiry),
        "expiry {expiry} vs now {now}"
    );
    let token = svid["token"].as_str().unwrap();
    let kid = kid_of(token);
    let mut aud: Vec<String> = serde_json::from_value(claims(token)["aud"].clone()).unwrap();
    aud.sort();
    assert_eq!(aud, ["a", "b"], "every requested audience is in aud");
    assert!(kids.contains(&kid), "token kid {kid} in the agent's bundle");
    let svids = py_ok(&v, "svids").as_array().unwrap();
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0]["spiffe_id"], id);

    // fetch_jwt_bundles(): the own TD with the same kids.
    let bundles = py_ok(&v, "bundles");
    let py_kids: BTreeSet<String> = serde_json::from_value(bundles[TRUST_DOMAIN].clone())
        .unwrap_or_else(|e| panic!("bundle for {TRUST_DOMAIN}: {e}: {bundles}"));
    assert_eq!(py_kids, kids);
    assert_eq!(bundles.as_object().unwrap().len(), 1);

    // validate_jwt_svid(token, "a") succeeds; with a wrong audience it raises, naming it.
    let val = py_ok(&v, "validate");
    assert_eq!(val["spiffe_id"], id);
    assert_eq!(val["audience"], json!(["a", "b"]));
    let e = py_err(&v, "validate_wrong_audience");
    assert_eq!(
        v["validate_wrong_audience"]["error_class"],
        "ValidateJwtSvidError"
    );
    assert!(e.contains("audience"), "{e}");
    assert!(e.contains("INVALID_ARGUMENT"), "{e}");

    // Offline JwtSvid.parse_and_validate against the fetched bundle, and its negatives.
    let off = py_ok(&v, "offline");
    assert_eq!(off["spiffe_id"], id);
    let e = py_err(&v, "offline_wrong_audience");
    assert!(e.to_lowercase().contains("audience"), "{e}");
    let e = py_err(&v, "offline_tampered");
    assert!(e.to_lowercase().contains("signature"), "{e}");

    // JwtSource: a token, verified offline against the source's own bundle.
    let src = py_ok(&v, "source");
    assert_eq!(src["svid"]["spiffe_id"], id);
    assert_eq!(src["svid"]["audience"], json!(["a", "b"]));
    assert_eq!(src["offline_spiffe_id"], id);
    let src_kids: BTreeSet<String> = serde_json::from_value(src["bundle_kids"].clone()).unwrap();
    assert_eq!(src_kids, kids);
}
