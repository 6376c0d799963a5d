//! JWT-SVID helpers shared by the JWT suites: reading a compact JWS independently of
//! Tessera's code (base64url + JSON), and the Workload API calls those suites repeat.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{JwtBundlesRequest, ValidateJwtsvidRequest, ValidateJwtsvidResponse};
use serde_json::Value;
use spiffe::{JwtBundleSet, JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};
use tonic::transport::Channel;

use crate::{TRUST_DOMAIN, with_header, workload_client};

/// Workload API map key of the test trust domain (FetchJWTBundles).
pub const TD_KEY: &str = "spiffe://example.org";

/// The test trust domain as the `spiffe` crate's type.
pub fn td() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).expect("test trust domain")
}

/// Unpadded base64url.
pub fn b64e(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url; fails the test on anything else.
pub fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("{s:?} is not unpadded base64url: {e}"))
}

/// Segment `i` (0: header, 1: claims) of a compact JWS, as JSON.
pub fn segment(token: &str, i: usize) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS has three segments: {token}");
    serde_json::from_slice(&b64d(parts[i]))
        .unwrap_or_else(|e| panic!("segment {i} of {token} is not JSON: {e}"))
}

/// The JOSE header of a token.
pub fn header(token: &str) -> Value {
    segment(token, 0)
}

/// The claims of a token.
pub fn claims(token: &str) -> Value {
    segment(token, 1)
}

/// The `kid` of a token's header.
pub fn kid_of(token: &str) -> String {
    header(token)["kid"].as_str().expect("kid").to_owned()
}

/// The token with one bit of its signature flipped.
pub fn flip_signature_bit(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("compact JWS");
    let mut raw = b64d(sig);
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    format!("{input}.{}", b64e(&raw))
}

/// The unmodified `spiffe` crate's client on an agent's `unix://` endpoint.
pub async fn spiffe_client(endpoint: &str) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(endpoint)
        .await
        .expect("spiffe crate connects to the agent socket")
}

/// ValidateJWTSVID with Tessera's generated client (security header set).
pub async fn validate_raw(
    raw: &mut SpiffeWorkloadApiClient<Channel>,
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, tonic::Status> {
    raw.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
        audience: audience.to_owned(),
        svid: token.to_owned(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// ValidateJWTSVID of `token` for `audience` on the agent at `socket`, on a new connection
/// (as a relying party beside that agent would call it).
pub async fn validate_on(
    socket: &Path,
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, tonic::Status> {
    validate_raw(&mut workload_client(socket).await, audience, token).await
}

/// How often [`wait_refused`] asks again.
const REFUSAL_POLL: Duration = Duration::from_millis(5);

/// Asks ValidateJWTSVID on the agent at `socket` (every 5 ms) until it refuses `token` for
/// `audience`; returns the refusal and how long after `since` it came. Fails the test,
/// naming `what`, if the token still validates 5 s after `since`.
pub async fn wait_refused(
    socket: &Path,
    audience: &str,
    token: &str,
    since: tokio::time::Instant,
    what: &str,
) -> (tonic::Status, Duration) {
    loop {
        match validate_on(socket, audience, token).await {
            Err(e) => return (e, since.elapsed()),
            Ok(_) if since.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(REFUSAL_POLL).await;
            }
            Ok(_) => panic!("{what}: the token still validates 5 s later"),
        }
    }
}

/// Fetches every JWT-SVID of the caller with the Rust crate, waiting (up to 20 s) until
/// `want` identities are there (entries take a moment to reach the agent).
pub async fn fetch_all_when_ready(
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
pub async fn agent_jwks(raw: &mut SpiffeWorkloadApiClient<Channel>) -> Value {
    let mut stream = raw
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
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
pub fn assert_ec_jwk(k: &Value) -> String {
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

/// The key ids a JWT bundle set holds for the test trust domain.
pub fn kids_of(set: &JwtBundleSet) -> BTreeSet<String> {
    set.get(&td())
        .map(|b| b.jwt_authorities().map(|a| a.key_id().to_owned()).collect())
        .unwrap_or_default()
}
