//! Interoperability with the unmodified Rust `spiffe` crate (0.19) as a Workload API client,
//! plus raw gRPC calls with Tessera's own generated client for what that crate cannot send
//! (a request without the security header).
//!
//! Every certificate property the SPIFFE X509-SVID spec and real clients rely on is checked
//! here independently of Tessera's code (x509-parser, rustls-webpki, rcgen), including the
//! private-key/leaf match that the Rust and Python clients do not check themselves.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, WitBundlesRequest, WitsvidRequest,
    X509BundlesRequest, X509svidRequest,
};
use futures::StreamExt as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use spiffe::{TrustDomain, WorkloadApiClient, WorkloadApiError, X509Context, X509Source};
use tests::{Cluster, NOBODY, TRUST_DOMAIN};
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

/// Longest back-date of notBefore (server/src/ca.rs BACKDATE).
pub(crate) const BACKDATE_SECS: i64 = 10;
/// The message real clients match on (digest §5.6).
pub(crate) const NO_IDENTITY: &str = "no identity issued";

// ---------------------------------------------------------------------------------------
// Shared checks (also used by the Python interop suite).
// ---------------------------------------------------------------------------------------

/// The harness's multi-threaded runtime (also importable from here, as the other shared
/// checks below are).
pub(crate) use tests::runtime;

/// What the tests need to know about a leaf after its profile was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafFacts {
    /// Serial, lowercase hex.
    pub(crate) serial: String,
    /// notBefore, Unix seconds.
    pub(crate) not_before: i64,
    /// notAfter, Unix seconds.
    pub(crate) not_after: i64,
}

impl LeafFacts {
    /// notAfter as a `SystemTime`.
    pub(crate) fn not_after_time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(self.not_after).unwrap())
    }
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses as DER");
    assert!(rest.is_empty(), "trailing bytes after certificate");
    cert
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("well-formed SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the X509-SVID leaf profile (digest §2.1, §2.2, §8) and returns serial/validity.
pub(crate) fn assert_leaf_profile(leaf_der: &[u8], expected_id: &str) -> LeafFacts {
    let cert = parse(leaf_der);
    // Exactly one URI SAN, equal to the SPIFFE ID.
    let uris = uri_sans(&cert);
    assert_eq!(
        uris,
        vec![expected_id.to_owned()],
        "leaf must carry exactly one URI SAN equal to the SPIFFE ID"
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    if cert.subject().iter_attributes().next().is_none() {
        assert!(san.critical, "empty subject requires a critical SAN");
    }
    // basicConstraints present, cA=false.
    let bc = cert
        .basic_constraints()
        .expect("well-formed basicConstraints")
        .expect("leaf must carry a basicConstraints extension");
    assert!(!bc.value.ca, "leaf must have cA=false");
    // keyUsage present AND critical, digitalSignature, no keyCertSign/cRLSign.
    let ku = cert
        .key_usage()
        .expect("well-formed keyUsage")
        .expect("leaf must carry a keyUsage extension");
    assert!(ku.critical, "leaf keyUsage must be critical");
    assert!(
        ku.value.digital_signature(),
        "leaf keyUsage must have digitalSignature"
    );
    assert!(
        !ku.value.key_cert_sign(),
        "leaf keyUsage must not have keyCertSign"
    );
    assert!(!ku.value.crl_sign(), "leaf keyUsage must not have cRLSign");
    // EKU has serverAuth and clientAuth.
    let eku = cert
        .extended_key_usage()
        .expect("well-formed EKU")
        .expect("leaf should carry an extendedKeyUsage extension");
    assert!(eku.value.server_auth, "leaf EKU must contain serverAuth");
    assert!(eku.value.client_auth, "leaf EKU must contain clientAuth");
    LeafFacts {
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    }
}

/// Asserts the lifetime is the entry's TTL plus the back-date (±2 s: certificate times
/// have 1 s resolution). The server back-dates notBefore by 10 s, or by a tenth of the TTL
/// when that is less (server/src/ca.rs), so that renewal falls after issuance.
pub(crate) fn assert_lifetime(facts: &LeafFacts, ttl_secs: i64) {
    let life = facts.not_after - facts.not_before;
    let backdate = (ttl_secs as f64 / 10.0).min(BACKDATE_SECS as f64);
    let expected = ttl_secs as f64 + backdate;
    assert!(
        (life as f64 - expected).abs() <= 2.0,
        "notAfter - notBefore = {life} s, expected {ttl_secs} s TTL + {backdate} s back-date (±2)"
    );
}

/// Asserts the PKCS#8 DER private key belongs to the leaf's public key.
pub(crate) fn assert_key_matches_leaf(pkcs8_der: &[u8], leaf_der: &[u8]) {
    let key = rcgen::KeyPair::try_from(pkcs8_der).expect("private key is valid PKCS#8");
    let cert = parse(leaf_der);
    let spki = cert.public_key().subject_public_key.data.to_vec();
    assert_eq!(
        key.public_key_raw(),
        spki.as_slice(),
        "the private key does not match the leaf certificate's public key"
    );
    // Negative control: the comparison can fail.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert_ne!(other.public_key_raw(), spki.as_slice());
}

fn webpki_verify(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), webpki::Error> {
    let root_ders: Vec<CertificateDer<'static>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.clone()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).expect("bundle root is a usable anchor"))
        .collect();
    let leaf = CertificateDer::from(chain[0].clone());
    let intermediates: Vec<CertificateDer<'static>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).expect("leaf parses for webpki");
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

/// Asserts `chain` (leaf first) verifies to one of `roots`, and not to an unrelated root.
pub(crate) fn assert_chain_verifies(chain: &[Vec<u8>], roots: &[Vec<u8>]) {
    assert!(!chain.is_empty(), "empty chain");
    assert!(!roots.is_empty(), "empty bundle");
    for c in chain {
        assert!(
            !roots.contains(c),
            "the X509-SVID chain must not contain the bundle root"
        );
    }
    if let Err(e) = webpki_verify(chain, roots) {
        panic!("chain does not verify to the bundle: {e:?}");
    }
    // Negative control: an unrelated CA does not verify the same chain.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let other = p.self_signed(&key).unwrap().der().to_vec();
    assert!(webpki_verify(chain, &[other]).is_err());
}

/// Asserts a trust-domain root: CA, keyCertSign, URI SAN `spiffe://example.org`.
pub(crate) fn assert_td_root(der: &[u8]) {
    let cert = parse(der);
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("root must carry basicConstraints");
    assert!(bc.value.ca, "root must have cA=true");
    let ku = cert.key_usage().unwrap().expect("root must carry keyUsage");
    assert!(ku.critical, "root keyUsage must be critical");
    assert!(
        ku.value.key_cert_sign(),
        "root keyUsage must have keyCertSign"
    );
    assert_eq!(
        uri_sans(&cert),
        vec![format!("spiffe://{TRUST_DOMAIN}")],
        "root URI SAN must be the trust domain ID"
    );
    assert_eq!(
        cert.subject(),
        cert.issuer(),
        "the trust-domain root is self-issued"
    );
}

/// The server's CA certificates, DER, from `tessera-server bundle show` (PEM).
pub(crate) fn server_bundle_ders(c: &Cluster) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    let out = c.server.cli(&["bundle", "show"]);
    assert!(out.status.success());
    CertificateDer::pem_slice_iter(&out.stdout)
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// Async `wait_for`: polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub(crate) async fn wait_for_async<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn td() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

// ---------------------------------------------------------------------------------------
// Rust-client helpers.
// ---------------------------------------------------------------------------------------

async fn connect(c: &Cluster) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(c.agent.endpoint())
        .await
        .expect("spiffe crate connects to the agent socket")
}

/// Fetches the X.509 context, waiting (up to 15 s) while the new entry reaches the agent.
async fn context_when_ready(client: &WorkloadApiClient, want_svids: usize) -> X509Context {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_context()).await;
        match r {
            Ok(Ok(ctx)) if ctx.svids().len() >= want_svids => return ctx,
            Ok(Ok(_) | Err(WorkloadApiError::NoIdentityIssued)) => {}
            Ok(Err(e)) => panic!("fetch_x509_context failed: {e:?}"),
            Err(_) => panic!("fetch_x509_context did not answer within 10 s"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no X.509 context with {want_svids} SVID(s) within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Received = (SystemTime, Result<X509Context, WorkloadApiError>);

/// Opens `stream_x509_contexts` and forwards every item with its time of receipt.
async fn open_stream(client: &WorkloadApiClient) -> tokio::sync::mpsc::UnboundedReceiver<Received> {
    let mut stream = client
        .stream_x509_contexts()
        .await
        .expect("stream_x509_contexts opens");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send((SystemTime::now(), item)).is_err() {
                return;
            }
        }
    });
    rx
}

fn ids(ctx: &X509Context) -> Vec<String> {
    ctx.svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect()
}

fn chain_of(svid: &spiffe::X509Svid) -> Vec<Vec<u8>> {
    svid.cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

fn roots_of(ctx: &X509Context) -> Vec<Vec<u8>> {
    ctx.bundle_set()
        .get(&td())
        .expect("bundle set contains the own trust domain")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// Runs `tessera-agent api fetch x509 --output json` as uid/gid `nobody`.
fn fetch_as_nobody(socket: &Path) -> Output {
    tests::assert_nobody_can_reach(socket);
    tests::command_as_nobody("tessera-agent")
        .args(["api", "fetch", "x509", "--output", "json", "--timeout", "5"])
        .arg("--socket-path")
        .arg(socket)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .expect("spawn tessera-agent as nobody")
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[test]
fn x509_svid_profile() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/workload";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--x509-svid-ttl", "600"]);
    runtime().block_on(async {
        let client = connect(&c).await;
        let ctx = context_when_ready(&client, 1).await;
        assert_eq!(ids(&ctx), vec![id.to_owned()], "exactly one SVID");
        let svid = client.fetch_x509_svid().await.expect("fetch_x509_svid");
        assert_eq!(svid.spiffe_id().to_string(), id);
        assert_eq!(
            svid.leaf().as_bytes(),
            ctx.svids()[0].leaf().as_bytes(),
            "fetch_x509_svid and fetch_x509_context return the same SVID"
        );

        let chain = chain_of(&svid);
        let facts = assert_leaf_profile(&chain[0], id);
        assert_lifetime(&facts, 600);
        assert_key_matches_leaf(svid.private_key().as_bytes(), &chain[0]);
        for inter in &chain[1..] {
            let cert = parse(inter);
            assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        }

        let roots = roots_of(&ctx);
        assert_eq!(roots.len(), 1, "one CA in the bundle");
        assert_td_root(&roots[0]);
        assert_eq!(
            roots,
            server_bundle_ders(&c),
            "the Workload API serves the server's CA"
        );
        assert_chain_verifies(&chain, &roots);
        println!(
            "x509_svid_profile: serial {} lifetime {} s",
            facts.serial,
            facts.not_after - facts.not_before
        );
    });
}

#[test]
fn unregistered_caller_gets_permission_denied() {
    let c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/other", &["unix:uid:12345"], &[]);
    let rt = runtime();
    rt.block_on(async {
        let client = connect(&c).await;
        let svid = tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_svid())
            .await
            .expect("answer within 10 s");
        assert!(
            matches!(svid, Err(WorkloadApiError::NoIdentityIssued)),
            "fetch_x509_svid: {svid:?}"
        );
        let ctx = client.fetch_x509_context().await;
        assert!(
            matches!(ctx, Err(WorkloadApiError::NoIdentityIssued)),
            "fetch_x509_context: {ctx:?}"
        );
        let bundles = client.fetch_x509_bundles().await;
        assert!(
            matches!(bundles, Err(WorkloadApiError::NoIdentityIssued)),
            "fetch_x509_bundles: {bundles:?}"
        );
    });

    // Another user, through the agent's own CLI client, gets the same answer.
    let out = fetch_as_nobody(&c.agent.socket_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody must be refused: {out:?}");
    assert!(stderr.contains(NO_IDENTITY), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "no identity data printed");

    // Registering nobody gives nobody (and only nobody) an identity.
    let nobody_id = "spiffe://example.org/nobody";
    c.server
        .create_entry(nobody_id, &[&format!("unix:uid:{NOBODY}")], &[]);
    let ok = tests::wait_for(Duration::from_secs(15), || {
        let out = fetch_as_nobody(&c.agent.socket_path);
        out.status.success().then_some(out)
    })
    .unwrap_or_else(|| {
        panic!(
            "nobody still refused after registration: {}",
            String::from_utf8_lossy(&fetch_as_nobody(&c.agent.socket_path).stderr)
        )
    });
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON output");
    let svids = v["svids"].as_array().expect("svids array");
    assert_eq!(svids.len(), 1, "{v}");
    assert_eq!(svids[0]["spiffe_id"], nobody_id);

    rt.block_on(async {
        let client = connect(&c).await;
        let svid = client.fetch_x509_svid().await;
        assert!(
            matches!(svid, Err(WorkloadApiError::NoIdentityIssued)),
            "root has no entry and must still be refused: {svid:?}"
        );
    });
}

/// Connects Tessera's generated client to the agent socket (no interceptor: no header).
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(socket).await)
}

/// A request with `workload.spiffe.io` set to each of `values` (none: no header).
fn req<T>(msg: T, values: &[&'static str]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for v in values {
        r.metadata_mut().append(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static(v),
        );
    }
    r
}

fn assert_invalid_argument<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Err(s) => assert_eq!(
            s.code(),
            tonic::Code::InvalidArgument,
            "{what}: wrong status {s:?}"
        ),
        Ok(v) => panic!("{what}: accepted without a valid security header: {v:?}"),
    }
}

/// A server-streaming call must fail with InvalidArgument and deliver no message.
async fn assert_stream_refused<T: std::fmt::Debug>(
    what: &str,
    r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) {
    match r {
        Err(s) => assert_eq!(
            s.code(),
            tonic::Code::InvalidArgument,
            "{what}: wrong status {s:?}"
        ),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: stream open without header, nothing sent"));
            assert_invalid_argument(what, first);
        }
    }
}

#[test]
fn missing_security_header_is_invalid_argument() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/header";
    c.server.create_entry(id, &["unix:uid:0"], &[]);
    runtime().block_on(async {
        // Positive control first: with the right header the same caller gets its SVID.
        let mut client = raw_client(&c.agent.socket_path).await;
        let msg = wait_for_async(Duration::from_secs(15), || {
            let mut client = client.clone();
            async move {
                let mut s = client
                    .fetch_x509svid(req(X509svidRequest {}, &["true"]))
                    .await
                    .ok()?
                    .into_inner();
                tokio::time::timeout(Duration::from_secs(5), s.message())
                    .await
                    .ok()?
                    .ok()?
            }
        })
        .await
        .expect("with the header the registered caller gets an SVID");
        assert_eq!(msg.svids.len(), 1);
        let svid = &msg.svids[0];
        assert_eq!(svid.spiffe_id, id);
        let leaf_len = x509_parser::parse_x509_certificate(&svid.x509_svid)
            .map(|(rest, _)| svid.x509_svid.len() - rest.len())
            .unwrap();
        let uris = uri_sans(&parse(&svid.x509_svid[..leaf_len]));
        assert_eq!(uris, vec![svid.spiffe_id.clone()], "wire ID == URI SAN");
        assert!(!svid.x509_svid_key.is_empty() && !svid.bundle.is_empty());

        for values in [&[][..], &["TRUE"], &["false"], &[""], &["true", "true"]] {
            let what = format!("FetchX509SVID with header {values:?}");
            assert_stream_refused(
                &what,
                client.fetch_x509svid(req(X509svidRequest {}, values)).await,
            )
            .await;
            let what = format!("FetchX509Bundles with header {values:?}");
            assert_stream_refused(
                &what,
                client
                    .fetch_x509_bundles(req(X509BundlesRequest {}, values))
                    .await,
            )
            .await;
        }
        // The other RPCs check the header first, too.
        assert_invalid_argument(
            "FetchJWTSVID",
            client
                .fetch_jwtsvid(req(
                    JwtsvidRequest {
                        audience: vec!["a".into()],
                        spiffe_id: String::new(),
                    },
                    &[],
                ))
                .await,
        );
        assert_stream_refused(
            "FetchJWTBundles",
            client
                .fetch_jwt_bundles(req(JwtBundlesRequest {}, &[]))
                .await,
        )
        .await;
        assert_invalid_argument(
            "ValidateJWTSVID",
            client
                .validate_jwtsvid(req(
                    ValidateJwtsvidRequest {
                        audience: "a".into(),
                        svid: "x.y.z".into(),
                    },
                    &[],
                ))
                .await,
        );
        assert_stream_refused(
            "FetchWITSVID",
            client
                .fetch_witsvid(req(WitsvidRequest::default(), &[]))
                .await,
        )
        .await;
        assert_stream_refused(
            "FetchWITBundles",
            client
                .fetch_wit_bundles(req(WitBundlesRequest {}, &[]))
                .await,
        )
        .await;
    });
}

#[test]
fn rotation_before_expiry_on_open_stream() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/short";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--x509-svid-ttl", "6"]);
    runtime().block_on(async {
        let client = connect(&c).await;
        context_when_ready(&client, 1).await;
        let source = X509Source::builder()
            .endpoint(c.agent.endpoint())
            .build()
            .await
            .expect("X509Source builds");
        let mut updates = source.updated();
        let source_first = assert_leaf_profile(source.svid().unwrap().leaf().as_bytes(), id);

        let mut rx = open_stream(&client).await;
        let (_, first) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("first message promptly")
            .unwrap();
        let first = first.expect("first message is a context");
        assert_eq!(ids(&first), vec![id.to_owned()]);
        let old = assert_leaf_profile(first.svids()[0].leaf().as_bytes(), id);
        assert_lifetime(&old, 6);
        let opened = SystemTime::now();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut messages = 1;
        let (at, ctx, new) = loop {
            let (at, item) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("a rotated SVID within 15 s")
                .expect("stream still open");
            let ctx = item.expect("stream items are contexts");
            messages += 1;
            let facts = assert_leaf_profile(ctx.svids()[0].leaf().as_bytes(), id);
            if facts.serial != old.serial {
                break (at, ctx, facts);
            }
        };
        let after = at.duration_since(opened).unwrap_or_default();
        let margin = old
            .not_after_time()
            .duration_since(at)
            .unwrap_or_else(|e| {
                panic!(
                    "rotated SVID arrived {:?} AFTER the old one expired",
                    e.duration()
                )
            });
        println!(
            "rotation: new serial {} after {} ms on the stream ({} messages), {} ms before the old notAfter",
            new.serial,
            after.as_millis(),
            messages,
            margin.as_millis()
        );
        // The message carries the complete state: same ID, a bundle, a matching key.
        assert_eq!(ids(&ctx), vec![id.to_owned()]);
        assert!(new.not_after > old.not_after, "the new SVID lives longer");
        assert_lifetime(&new, 6);
        let svid = &ctx.svids()[0];
        assert_key_matches_leaf(svid.private_key().as_bytes(), svid.leaf().as_bytes());
        assert_chain_verifies(&chain_of(svid), &roots_of(&ctx));

        // The X509Source saw a rotation too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let now = assert_leaf_profile(source.svid().unwrap().leaf().as_bytes(), id);
            if now.serial != source_first.serial {
                break;
            }
            tokio::time::timeout_at(deadline, updates.changed())
                .await
                .expect("X509Source rotates within 15 s")
                .expect("X509Source open");
        }
        source.shutdown().await;
    });
}

/// Waits until the wall clock is in a later second than `t` (entries are ordered by
/// creation second; see `svid_order_follows_creation_order_within_a_second`).
fn next_second_after(t: SystemTime) {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    while secs(SystemTime::now()) <= secs(t) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn entry_created_while_stream_open_reaches_stream() {
    let c = Cluster::start(&[]);
    let a = "spiffe://example.org/first";
    let b = "spiffe://example.org/second";
    c.server.create_entry(a, &["unix:uid:0"], &[]);
    let a_created = SystemTime::now();
    runtime().block_on(async {
        let client = connect(&c).await;
        context_when_ready(&client, 1).await;
        let mut rx = open_stream(&client).await;
        let (_, first) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("first message promptly")
            .unwrap();
        assert_eq!(ids(&first.unwrap()), vec![a.to_owned()]);

        // Creation order is only defined across seconds (documented product bug).
        next_second_after(a_created);
        let start = SystemTime::now();
        c.server.create_entry(b, &["unix:uid:0"], &[]);
        let returned = SystemTime::now();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let (at, ctx) = loop {
            let (at, item) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("the new entry's SVID must reach the open stream within 2 s")
                .expect("stream still open");
            let ctx = item.expect("stream items are contexts");
            if ctx.svids().len() >= 2 {
                break (at, ctx);
            }
        };
        assert_eq!(
            ids(&ctx),
            vec![a.to_owned(), b.to_owned()],
            "both SVIDs, in creation order"
        );
        for s in ctx.svids() {
            let id = s.spiffe_id().to_string();
            assert_leaf_profile(s.leaf().as_bytes(), &id);
            assert_key_matches_leaf(s.private_key().as_bytes(), s.leaf().as_bytes());
        }
        let since_return = at.duration_since(returned).unwrap_or_default();
        let since_start = at.duration_since(start).unwrap_or_default();
        println!(
            "entry propagation: {} ms after `entry create` returned ({} ms after it started; the CLI took {} ms)",
            since_return.as_millis(),
            since_start.as_millis(),
            returned.duration_since(start).unwrap_or_default().as_millis()
        );
    });
}

#[test]
fn svid_order_follows_creation_order_within_a_second() {
    let c = Cluster::start(&[]);
    // Start right after a second boundary so all entries get the same created_at.
    next_second_after(SystemTime::now());
    let created: Vec<String> = (0..5)
        .map(|i| {
            let id = format!("spiffe://example.org/order{i}");
            c.server.create_entry(&id, &["unix:uid:0"], &[]);
            id
        })
        .collect();
    runtime().block_on(async {
        let client = connect(&c).await;
        let ctx = context_when_ready(&client, created.len()).await;
        assert_eq!(
            ids(&ctx),
            created,
            "svids must be in entry creation order (svids[0] is the default identity)"
        );
    });
}

#[test]
fn entry_deleted_ends_stream_with_permission_denied() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/doomed";
    let entry = c.server.create_entry(id, &["unix:uid:0"], &[]);
    runtime().block_on(async {
        let client = connect(&c).await;
        context_when_ready(&client, 1).await;
        let source = X509Source::builder()
            .endpoint(c.agent.endpoint())
            .build()
            .await
            .expect("X509Source builds");
        let mut rx = open_stream(&client).await;
        let (_, first) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("first message promptly")
            .unwrap();
        assert_eq!(ids(&first.unwrap()), vec![id.to_owned()]);

        let deleted = SystemTime::now();
        c.server
            .cli_json(&["entry", "delete", "--entry-id", &entry]);
        let (at, item) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the stream must react to the deletion within 5 s")
            .expect("an error item, not a silent end");
        match item {
            Err(WorkloadApiError::NoIdentityIssued) => {}
            other => panic!("expected PermissionDenied \"{NO_IDENTITY}\", got {other:?}"),
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the stream ends after the error");
        assert!(ended.is_none(), "nothing after the error: {ended:?}");
        println!(
            "deletion reached the stream {} ms after `entry delete` started",
            at.duration_since(deleted).unwrap_or_default().as_millis()
        );

        // The Rust X509Source withdraws the identity.
        let withdrawn = wait_for_async(Duration::from_secs(10), || {
            let r = source.svid();
            async move { r.is_err().then_some(r) }
        })
        .await
        .expect("X509Source withdraws the SVID after deletion");
        println!("X509Source after deletion: {:?}", withdrawn.err());
        source.shutdown().await;
    });
}

#[test]
fn x509_bundles_stream() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/bundles";
    c.server.create_entry(id, &["unix:uid:0"], &[]);
    runtime().block_on(async {
        let client = connect(&c).await;
        let ctx = context_when_ready(&client, 1).await;
        // The single-slash `unix:/path` form of the endpoint works too.
        let short =
            WorkloadApiClient::connect_to(format!("unix:{}", c.agent.socket_path.display()))
                .await
                .expect("connect with unix:/path");
        let set = short
            .fetch_x509_bundles()
            .await
            .expect("fetch_x509_bundles");
        assert_eq!(set.len(), 1, "only the own trust domain (no federation)");
        let bundle = set.get(&td()).expect("example.org bundle");
        let roots: Vec<Vec<u8>> = bundle
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        assert_eq!(roots.len(), 1);
        assert_td_root(&roots[0]);
        assert_eq!(roots, server_bundle_ders(&c), "the server's CA");
        assert_eq!(roots, roots_of(&ctx), "same roots as the per-SVID bundle");

        let mut stream = client
            .stream_x509_bundles()
            .await
            .expect("stream_x509_bundles");
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("first bundle message promptly")
            .expect("stream open")
            .expect("bundle set");
        let streamed: Vec<Vec<u8>> = first
            .get(&td())
            .expect("example.org bundle on the stream")
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        assert_eq!(streamed, roots);
    });
}
