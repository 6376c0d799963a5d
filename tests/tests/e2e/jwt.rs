//! The JWT half of the Workload API, end to end: FetchJWTSVID, FetchJWTBundles and
//! ValidateJWTSVID through the unmodified Rust `spiffe` crate (0.19) and py-spiffe (0.3.x),
//! the agent and server CLIs, and a forced JWT signing-key rotation.
//!
//! Token contents are checked independently of Tessera's code (base64 + JSON here, the
//! clients' own offline verifiers). Every bad token is built in the test — mostly by
//! mutating a real token, and where a genuine signature matters, signed with a P-256 key
//! of the test's own (`rcgen`) — and must be refused by the agent's ValidateJWTSVID with
//! gRPC `InvalidArgument` and a message naming the reason.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, ValidateJwtsvidResponse,
};
use futures::StreamExt as _;
use rcgen::{PublicKeyData as _, SigningKey as _};
use serde_json::{Value, json};
use spiffe::{
    JwtBundle, JwtBundleSet, JwtSource, JwtSvid, JwtSvidError, JwtVerificationErrorKind, SpiffeId,
    TrustDomain, WorkloadApiClient, WorkloadApiError,
};
use tests::with_header as req;
use tests::{Cluster, TRUST_DOMAIN, unix_now};
use tonic::transport::Channel;

/// Workload API map key of the test trust domain.
const TD_KEY: &str = "spiffe://example.org";
/// Largest token the agent validates (common/src/jwt.rs MAX_TOKEN_LENGTH).
const MAX_TOKEN_LENGTH: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

/// A multi-threaded runtime: gRPC connection tasks keep running while the test thread
/// blocks on CLI commands inside `block_on`.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn td() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

fn b64e(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("{s:?} is not unpadded base64url: {e}"))
}

/// Segment `i` (0: header, 1: claims) of a compact JWS, as JSON.
fn segment(token: &str, i: usize) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS has three segments: {token}");
    serde_json::from_slice(&b64d(parts[i]))
        .unwrap_or_else(|e| panic!("segment {i} of {token} is not JSON: {e}"))
}

fn header(token: &str) -> Value {
    segment(token, 0)
}

fn claims(token: &str) -> Value {
    segment(token, 1)
}

fn kid_of(token: &str) -> String {
    header(token)["kid"].as_str().expect("kid").to_owned()
}

/// Re-encodes a token with another header and/or claims, keeping its signature.
fn forge(token: &str, header: Option<&Value>, claims: Option<&Value>) -> String {
    let mut p: Vec<String> = token.split('.').map(str::to_owned).collect();
    if let Some(h) = header {
        p[0] = b64e(h.to_string().as_bytes());
    }
    if let Some(c) = claims {
        p[1] = b64e(c.to_string().as_bytes());
    }
    p.join(".")
}

/// The token with one bit of its signature flipped.
fn flip_signature_bit(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut raw = b64d(sig);
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    format!("{input}.{}", b64e(&raw))
}

/// An ECDSA DER signature (SEQUENCE { INTEGER r, INTEGER s }) as JWS `r || s` (32 + 32).
fn der_to_jws_signature(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "DER SEQUENCE");
    assert!(der[1] < 0x80, "short-form length for a P-256 signature");
    let mut i = 2;
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "DER INTEGER");
        let len = usize::from(der[i + 1]);
        let mut int = &der[i + 2..i + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        assert!(int.len() <= 32);
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

/// A P-256 key of the test's own, to make genuinely signed ES256 tokens Tessera never
/// issued.
struct ForeignSigner {
    key: rcgen::KeyPair,
}

impl ForeignSigner {
    fn new() -> Self {
        Self {
            key: rcgen::KeyPair::generate().unwrap(),
        }
    }

    /// An ES256 token with this header and claims, signed by this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64e(header.to_string().as_bytes()),
            b64e(claims.to_string().as_bytes())
        );
        let der = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64e(&der_to_jws_signature(&der)))
    }

    /// The public key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let point = self.key.der_bytes();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        json!({
            "kty": "EC", "kid": kid, "crv": "P-256",
            "x": b64e(&point[1..33]), "y": b64e(&point[33..]),
        })
    }
}

async fn connect(c: &Cluster) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(c.agent.endpoint())
        .await
        .expect("spiffe crate connects to the agent socket")
}

/// Tessera's generated client on the agent socket; requests go through [`req`].
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(socket).await)
}

async fn validate_raw(
    raw: &mut SpiffeWorkloadApiClient<Channel>,
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, tonic::Status> {
    raw.validate_jwtsvid(req(ValidateJwtsvidRequest {
        audience: audience.to_owned(),
        svid: token.to_owned(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// Fetches every JWT-SVID of the caller with the Rust crate, waiting (up to 20 s) until
/// `want` identities are there (entries take a moment to reach the agent).
async fn fetch_all_when_ready(
    client: &WorkloadApiClient,
    audience: &[&str],
    want: usize,
) -> Vec<JwtSvid> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.fetch_all_jwt_svids(audience, None),
        )
        .await
        .expect("FetchJWTSVID answers within 10 s");
        let last = match r {
            Ok(svids) if svids.len() >= want => return svids,
            Ok(svids) => format!("{} identities", svids.len()),
            // Not yet registered / agent still synchronising: both are retriable.
            Err(e @ WorkloadApiError::NoIdentityIssued) => e.to_string(),
            Err(e) if format!("{e:?}").contains("code: Unavailable") => e.to_string(),
            Err(e) => panic!("fetch_all_jwt_svids failed: {e:?}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {want} JWT-SVID(s) within 20 s (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JWK set the agent serves for the own trust domain on FetchJWTBundles (first message).
async fn agent_jwks(raw: &mut SpiffeWorkloadApiClient<Channel>) -> Value {
    let mut stream = raw
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .expect("FetchJWTBundles")
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("first FetchJWTBundles message within 10 s")
        .expect("FetchJWTBundles message")
        .expect("stream open");
    let keys: Vec<&String> = msg.bundles.keys().collect();
    assert_eq!(keys, vec![TD_KEY], "JWT bundles keyed by the own TD only");
    serde_json::from_slice(&msg.bundles[TD_KEY]).expect("JWT bundle is JSON")
}

/// A JWT-SVID JWK: EC P-256 with kid and full-width coordinates; returns the kid.
fn assert_ec_jwk(k: &Value) -> String {
    assert_eq!(k["kty"], "EC", "{k}");
    assert_eq!(k["crv"], "P-256", "{k}");
    for c in ["x", "y"] {
        let raw = b64d(k[c].as_str().unwrap_or_else(|| panic!("{c} missing: {k}")));
        assert_eq!(raw.len(), 32, "{c} is full-width (32 bytes): {k}");
    }
    let kid = k["kid"].as_str().unwrap_or_else(|| panic!("kid: {k}"));
    assert!(!kid.is_empty(), "{k}");
    kid.to_owned()
}

fn kids_of(set: &JwtBundleSet) -> BTreeSet<String> {
    set.get(&td())
        .map(|b| b.jwt_authorities().map(|a| a.key_id().to_owned()).collect())
        .unwrap_or_default()
}

/// Asserts gRPC InvalidArgument whose message contains every one of `reasons`.
fn assert_rejected<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    reasons: &[&str],
) -> String {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                tonic::Code::InvalidArgument,
                "{what}: wrong code ({s:?})"
            );
            let msg = s.message().to_lowercase();
            for reason in reasons {
                assert!(
                    msg.contains(&reason.to_lowercase()),
                    "{what}: message {:?} does not name {reason:?}",
                    s.message()
                );
            }
            s.message().to_owned()
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. The Rust `spiffe` crate.
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
        let client = connect(&c).await;
        let mut raw = raw_client(&c.agent.socket_path).await;
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
// 2. py-spiffe.
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
        let client = connect(&c).await;
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

// ---------------------------------------------------------------------------------------
// 3. Rejections through ValidateJWTSVID.
// ---------------------------------------------------------------------------------------

#[test]
fn validate_rejects_bad_tokens_with_a_reason() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/jwt/validate";
    let short = "spiffe://example.org/jwt/short-lived";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--jwt-svid-ttl", "120"]);
    c.server
        .create_entry(short, &["unix:uid:0"], &["--jwt-svid-ttl", "2"]);
    runtime().block_on(async {
        let client = connect(&c).await;
        let mut raw = raw_client(&c.agent.socket_path).await;
        fetch_all_when_ready(&client, &["a"], 2).await;
        let own = SpiffeId::new(id).unwrap();

        // The short-lived token first, so that it has expired by the end.
        let short_token = client
            .fetch_jwt_svid(&["a"], Some(&SpiffeId::new(short).unwrap()))
            .await
            .expect("short-lived token")
            .token()
            .to_owned();
        let short_exp = claims(&short_token)["exp"].as_i64().unwrap();
        assert!(short_exp - claims(&short_token)["iat"].as_i64().unwrap() == 2);
        validate_raw(&mut raw, "a", &short_token)
            .await
            .expect("short-lived token is valid before it expires");

        let good = client
            .fetch_jwt_svid(&["a", "b"], Some(&own))
            .await
            .unwrap()
            .token()
            .to_owned();
        let kid = kid_of(&good);
        let h = header(&good);
        let cl = claims(&good);
        // Positive controls: the real token validates for each of its audiences.
        for aud in ["a", "b"] {
            let r = validate_raw(&mut raw, aud, &good)
                .await
                .expect("valid token");
            assert_eq!(r.spiffe_id, id);
        }

        let with_alg = |alg: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"});
        // The real token with a `pad` claim: the shortest one of at least `len` bytes.
        let padded = |len: usize| {
            let mut padded_claims = cl.clone();
            let mut n = 0;
            loop {
                padded_claims["pad"] = json!("x".repeat(n));
                let t = forge(&good, None, Some(&padded_claims));
                if t.len() >= len {
                    return t;
                }
                n += 1;
            }
        };
        let oversized = padded(9 * 1024);
        assert!((9 * 1024..9 * 1024 + 4).contains(&oversized.len()));
        // Just under the limit: refused for its signature, not its size.
        let at_limit = padded(MAX_TOKEN_LENGTH - 2);
        assert!((MAX_TOKEN_LENGTH - 2..=MAX_TOKEN_LENGTH).contains(&at_limit.len()));

        // Genuinely signed tokens from a key Tessera does not know.
        let attacker = ForeignSigner::new();
        let attacker_same_kid = attacker.sign(&h, &cl);
        let attacker_own_kid = attacker.sign(
            &json!({"alg": "ES256", "kid": "attacker-key", "typ": "JWT"}),
            &cl,
        );
        let mut foreign_claims = cl.clone();
        foreign_claims["sub"] = json!("spiffe://other.org/x");
        let foreign_td_signed = attacker.sign(&h, &foreign_claims);
        // Sanity of the forging code: the attacker tokens verify against the attacker's
        // key, so Tessera refuses them for the key, not for a broken signature encoding.
        let mut attacker_bundle = JwtBundle::new(td());
        attacker_bundle
            .add_jwk_authority_json(attacker.jwk(&kid).to_string().as_bytes())
            .unwrap();
        let mut attacker_set = JwtBundleSet::new();
        attacker_set.add_bundle(attacker_bundle);
        JwtSvid::parse_and_validate(&attacker_same_kid, &attacker_set, &["a"])
            .expect("attacker token is a well-formed ES256 JWS");

        let mut no_exp = cl.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut more_aud = cl.clone();
        more_aud["aud"] = json!(["a", "b", "c"]);
        let mut later_exp = cl.clone();
        later_exp["exp"] = json!(cl["exp"].as_i64().unwrap() + 3600);
        let mut other_sub = cl.clone();
        other_sub["sub"] = json!("spiffe://example.org/jwt/someone-else");
        let (hdr, body) = {
            let p: Vec<&str> = good.split('.').collect();
            (p[0].to_owned(), p[1].to_owned())
        };

        let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
            (
                "alg none (empty signature)",
                format!(
                    "{}.{body}.",
                    b64e(
                        json!({"alg": "none", "kid": kid, "typ": "JWT"})
                            .to_string()
                            .as_bytes()
                    )
                ),
                "a",
                vec!["not allowed", "\"none\""],
            ),
            (
                "alg none (real signature kept)",
                forge(&good, Some(&with_alg("none")), None),
                "a",
                vec!["not allowed", "\"none\""],
            ),
            (
                "alg HS256",
                forge(&good, Some(&with_alg("HS256")), None),
                "a",
                vec!["not allowed", "HS256"],
            ),
            (
                "alg HS512",
                forge(&good, Some(&with_alg("HS512")), None),
                "a",
                vec!["not allowed", "HS512"],
            ),
            (
                "alg EdDSA",
                forge(&good, Some(&with_alg("EdDSA")), None),
                "a",
                vec!["not allowed", "EdDSA"],
            ),
            (
                "alg missing",
                forge(&good, Some(&json!({"kid": kid, "typ": "JWT"})), None),
                "a",
                vec!["not allowed"],
            ),
            (
                "alg RS256 (in the JWT-SVID list, not Tessera's)",
                forge(&good, Some(&with_alg("RS256")), None),
                "a",
                vec!["not supported", "RS256"],
            ),
            (
                "alg ES384",
                forge(&good, Some(&with_alg("ES384")), None),
                "a",
                vec!["not supported", "ES384"],
            ),
            (
                "unknown kid",
                forge(
                    &good,
                    Some(&json!({"alg": "ES256", "kid": "no-such-key", "typ": "JWT"})),
                    None,
                ),
                "a",
                vec!["unknown key", "no-such-key"],
            ),
            (
                "kid missing",
                forge(&good, Some(&json!({"alg": "ES256", "typ": "JWT"})), None),
                "a",
                vec!["unknown key"],
            ),
            (
                "attacker key under its own kid",
                attacker_own_kid,
                "a",
                vec!["unknown key", "attacker-key"],
            ),
            (
                "extra header parameter (jku)",
                forge(
                    &good,
                    Some(&json!({"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil"})),
                    None,
                ),
                "a",
                vec!["header"],
            ),
            (
                "typ not JWT/JOSE",
                forge(
                    &good,
                    Some(&json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"})),
                    None,
                ),
                "a",
                vec!["header", "typ"],
            ),
            (
                "flipped signature bit",
                flip_signature_bit(&good),
                "a",
                vec!["signature"],
            ),
            (
                "truncated signature",
                format!(
                    "{hdr}.{body}.{}",
                    &b64e(&b64d(good.rsplit('.').next().unwrap())[..32])
                ),
                "a",
                vec!["signature"],
            ),
            (
                "attacker key under Tessera's kid",
                attacker_same_kid,
                "a",
                vec!["signature"],
            ),
            (
                "claims changed: audience added",
                forge(&good, None, Some(&more_aud)),
                "c",
                vec!["signature"],
            ),
            (
                "claims changed: exp extended",
                forge(&good, None, Some(&later_exp)),
                "a",
                vec!["signature"],
            ),
            (
                "claims changed: other subject",
                forge(&good, None, Some(&other_sub)),
                "a",
                vec!["signature"],
            ),
            (
                "claims changed: exp removed",
                forge(&good, None, Some(&no_exp)),
                "a",
                vec!["signature"],
            ),
            (
                "wrong audience",
                good.clone(),
                "c",
                vec!["audience", "\"c\""],
            ),
            (
                "audience differing in case",
                good.clone(),
                "A",
                vec!["audience"],
            ),
            (
                "foreign trust domain (signature kept)",
                forge(&good, None, Some(&foreign_claims)),
                "a",
                vec!["not trusted", "other.org"],
            ),
            (
                "foreign trust domain (genuinely signed)",
                foreign_td_signed,
                "a",
                vec!["not trusted", "other.org"],
            ),
            (
                "malformed: two segments",
                "a.b".into(),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: four segments",
                format!("{good}.x"),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: header not base64url",
                format!("!!!.{body}.x"),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: header not JSON",
                format!("{}.{body}.x", b64e(b"not json")),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: claims not JSON",
                format!("{hdr}.{}.x", b64e(b"[1,2")),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: signature not base64url",
                format!("{hdr}.{body}.***"),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: not a JWT at all",
                "hello".into(),
                "a",
                vec!["malformed"],
            ),
            (
                "subject not a SPIFFE ID",
                forge(
                    &good,
                    None,
                    Some(&json!({"sub": "https://example.org/x", "aud": ["a"], "exp": cl["exp"]})),
                ),
                "a",
                vec!["subject"],
            ),
            ("oversized (9 KiB)", oversized, "a", vec!["larger than"]),
            (
                "just under the size limit",
                at_limit,
                "a",
                vec!["signature"],
            ),
        ];
        let mut reasons = Vec::new();
        for (what, token, audience, want) in &cases {
            let r = validate_raw(&mut raw, audience, token).await;
            let msg = assert_rejected(what, r, want);
            // The real client sees the same: InvalidArgument, with the reason.
            let e = client
                .validate_jwt_token(audience, token)
                .await
                .expect_err(what);
            assert!(e.is_invalid_argument(), "{what}: spiffe crate: {e:?}");
            assert!(e.to_string().contains(&msg), "{what}: {e}");
            reasons.push(format!("{what}: {msg}"));
        }

        // Empty request fields.
        assert_rejected(
            "empty audience",
            validate_raw(&mut raw, "", &good).await,
            &["audience"],
        );
        assert_rejected(
            "empty svid",
            validate_raw(&mut raw, "a", "").await,
            &["svid"],
        );

        // Expired: the 2 s token, once its exp has passed.
        while unix_now() <= short_exp {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let msg = assert_rejected(
            "expired",
            validate_raw(&mut raw, "a", &short_token).await,
            &["expired"],
        );
        let e = client
            .validate_jwt_token("a", &short_token)
            .await
            .expect_err("expired");
        assert!(e.is_invalid_argument(), "{e:?}");
        reasons.push(format!("expired: {msg}"));
        // The long-lived real token is still fine afterwards.
        validate_raw(&mut raw, "a", &good)
            .await
            .expect("valid token still valid");
        println!("{} rejections:\n  {}", reasons.len(), reasons.join("\n  "));
    });
}

/// An audience longer than the server accepts is a bad request, not a transient failure:
/// InvalidArgument (terminal for clients), never Unavailable (which clients retry forever).
#[test]
fn overlong_audience_is_invalid_argument() {
    let c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/jwt/aud", &["unix:uid:0"], &[]);
    runtime().block_on(async {
        let client = connect(&c).await;
        let mut raw = raw_client(&c.agent.socket_path).await;
        fetch_all_when_ready(&client, &["a"], 1).await;
        // 1024 bytes is the limit: accepted, and the token carries it whole.
        let max = "m".repeat(1024);
        let svid = client
            .fetch_jwt_svid([max.as_str()], None)
            .await
            .expect("a 1024-byte audience is accepted");
        assert_eq!(claims(svid.token())["aud"], json!([max]));
        for len in [1025, 2000] {
            let s = raw
                .fetch_jwtsvid(req(JwtsvidRequest {
                    audience: vec!["a".into(), "x".repeat(len)],
                    spiffe_id: String::new(),
                }))
                .await
                .expect_err("over-long audience refused");
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{len} bytes: {s:?}");
            assert!(s.message().contains("audience"), "{s:?}");
            let e = client
                .fetch_jwt_svid(["x".repeat(len)], None)
                .await
                .expect_err("over-long audience refused");
            assert!(e.is_invalid_argument(), "spiffe crate, {len} bytes: {e:?}");
        }
    });
}

// ---------------------------------------------------------------------------------------
// 4. CLIs.
// ---------------------------------------------------------------------------------------

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
        let mut raw = raw_client(&c.agent.socket_path).await;
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

// ---------------------------------------------------------------------------------------
// 5. Key rotation.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Latest {
    bundle: Option<JwtBundleSet>,
    updates: usize,
    kid_sets: Vec<BTreeSet<String>>,
}

#[test]
fn jwt_key_rotation_never_breaks_offline_verification() {
    let c = Cluster::start(&["--jwt-key-ttl", "4s", "--default-jwt-svid-ttl", "4s"]);
    let id = "spiffe://example.org/jwt/rotation";
    c.server.create_entry(id, &["unix:uid:0"], &[]);
    runtime().block_on(async {
        let client = connect(&c).await;
        fetch_all_when_ready(&client, &["rot"], 1).await;

        // Hold a FetchJWTBundles stream and keep the latest bundle it delivered.
        let latest = Arc::new(Mutex::new(Latest::default()));
        let mut stream = client
            .stream_jwt_bundles()
            .await
            .expect("stream_jwt_bundles");
        let watcher = {
            let latest = Arc::clone(&latest);
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    let set = item.expect("JWT bundle stream message");
                    let mut l = latest.lock().unwrap();
                    l.kid_sets.push(kids_of(&set));
                    l.bundle = Some(set);
                    l.updates += 1;
                }
            })
        };
        // And a JwtSource, which keeps its own bundle from its own stream.
        let source = JwtSource::builder()
            .endpoint(c.agent.endpoint())
            .initial_sync_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("JwtSource");
        let first = tests::wait_for(Duration::from_secs(10), || {
            latest.lock().unwrap().bundle.clone()
        })
        .expect("first JWT bundle on the stream");
        let first_kids = kids_of(&first);

        let started = tokio::time::Instant::now();
        let mut checked = 0usize;
        let mut rechecked = 0usize;
        let mut kids_seen = BTreeSet::new();
        let mut failures: Vec<String> = Vec::new();
        let mut outstanding: Vec<(String, i64)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while started.elapsed() < Duration::from_secs(14) {
            tick.tick().await;
            let at = started.elapsed().as_secs_f64();
            let svid = match client.fetch_jwt_svid(&["rot"], None).await {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{at:.2}s: FetchJWTSVID failed: {e}"));
                    continue;
                }
            };
            let token = svid.token().to_owned();
            let kid = svid.key_id().to_owned();
            let exp = svid.claims().exp();
            kids_seen.insert(kid.clone());
            checked += 1;
            let bundle = latest.lock().unwrap().bundle.clone().unwrap();
            if let Err(e) = JwtSvid::parse_and_validate(&token, &bundle, &["rot"]) {
                failures.push(format!(
                    "{at:.2}s: fresh token (kid {kid}, exp {exp}) fails against the latest \
                     stream bundle {:?}: {e} ({e:?})",
                    kids_of(&bundle)
                ));
            }
            if let Err(e) = JwtSvid::parse_and_validate(&token, &source, &["rot"]) {
                failures.push(format!(
                    "{at:.2}s: fresh token (kid {kid}) fails against JwtSource: {e} ({e:?})"
                ));
            }
            if let Err(e) = client.validate_jwt_token("rot", &token).await {
                failures.push(format!(
                    "{at:.2}s: agent refuses a fresh token (kid {kid}): {e}"
                ));
            }
            // Every token handed out earlier must stay verifiable against the current
            // bundle until it expires (a retired key stays published long enough).
            outstanding.push((token, exp));
            let now = unix_now_f64();
            outstanding.retain(|(_, e)| (*e as f64) > now + 0.5);
            for (t, e) in &outstanding {
                rechecked += 1;
                if let Err(err) = JwtSvid::parse_and_validate(t, &bundle, &["rot"]) {
                    failures.push(format!(
                        "{at:.2}s: earlier token (kid {}, exp {e}) no longer verifies \
                         against {:?}: {err}",
                        kid_of(t),
                        kids_of(&bundle)
                    ));
                }
            }
        }
        let (updates, kid_sets, final_kids) = {
            let l = latest.lock().unwrap();
            (
                l.updates,
                l.kid_sets.clone(),
                kids_of(l.bundle.as_ref().unwrap()),
            )
        };
        assert!(!watcher.is_finished(), "the JWT bundle stream ended early");
        watcher.abort();
        source.shutdown().await;
        let max_keys = kid_sets.iter().map(BTreeSet::len).max().unwrap_or(0);
        println!(
            "rotation: {checked} fresh tokens checked (3 ways each), {rechecked} re-checks of \
             earlier tokens, {} distinct kids seen in tokens, {updates} bundle messages, \
             at most {max_keys} keys published, {} failures",
            kids_seen.len(),
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{} verification failures:\n{}\nbundle kid sets in order: {kid_sets:?}",
            failures.len(),
            failures.join("\n")
        );
        assert!(checked >= 40, "only {checked} tokens checked in 14 s");
        assert!(
            kids_seen.len() >= 2,
            "no rotation: tokens were signed by {kids_seen:?}; bundles {kid_sets:?}"
        );
        assert!(
            updates >= 2,
            "bundle stream delivered rotations ({updates})"
        );
        assert!(
            first_kids.iter().all(|k| !final_kids.contains(k)),
            "retired keys are eventually unpublished: first {first_kids:?}, last {final_kids:?}"
        );
        assert!(
            max_keys <= 3,
            "prepared + active + retired at most: {kid_sets:?}"
        );
    });
}
