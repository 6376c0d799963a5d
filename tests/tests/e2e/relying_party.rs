//! Relying parties that never talk to Tessera: the server's HTTPS listener
//! (`--relying-party-listen`) serves OIDC discovery, the JWK set, one CRL per CA and one
//! token status list per task, and task credentials point there.
//!
//! Each check uses a client nobody here wrote: PyJWT validates task JWT-SVIDs through the
//! discovery document (and refuses a token signed by another key, and an ended task's
//! token by its status list), the Rust `spiffe` crate still verifies them, `openssl verify
//! -crl_check` with the CRL fetched from the SVID's distribution point refuses an ended
//! task's certificate, and a rustls server with `WebPkiClientVerifier::with_crls` refuses it
//! as a TLS client certificate. The listener's own certificate comes from a test "web PKI"
//! (an rcgen CA), never from the SPIFFE bundle, as in a real deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use serde_json::Value;
use tests::web::{HttpResponse, WebPki, crl_serials, crl_urls, provider, serial_of};
use tests::{Cluster, free_port, with_header};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use x509_parser::prelude::{FromDer as _, X509Certificate};

const JIT: &str = "spiffe://example.org/jit/tools";
const STANDING: &str = "spiffe://example.org/standing/runtime";
const AUDIENCE: &str = "tools.example.org";

/// A cluster whose server serves relying parties on a free port as
/// `https://localhost:<port>`.
struct RpCluster {
    c: Cluster,
    pki: WebPki,
    url: String,
    addr: SocketAddr,
    _pki_dir: tempfile::TempDir,
}

fn rp_cluster() -> RpCluster {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(pki_dir.path()).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("https://localhost:{port}");
    let c = Cluster::start(&[
        "--relying-party-listen",
        &addr.to_string(),
        "--relying-party-url",
        &url,
        "--relying-party-cert-file",
        pki.cert_file.to_str().unwrap(),
        "--relying-party-key-file",
        pki.key_file.to_str().unwrap(),
    ]);
    RpCluster {
        c,
        pki,
        url,
        addr,
        _pki_dir: pki_dir,
    }
}

/// `METHOD path` over HTTPS to the listener, trusting only the test web CA.
async fn https(rp: &RpCluster, method: &str, path: &str, extra: &str) -> HttpResponse {
    tests::web::https(rp.addr, &rp.pki.ca_der, method, path, extra)
        .await
        .unwrap()
}

async fn workload(c: &Cluster) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(tests::agent_channel(&c.agent.socket_path).await)
}

async fn fetch_x509(c: &Cluster) -> Option<X509svidResponse> {
    let mut s = workload(c)
        .await
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .ok()?
        .into_inner();
    s.message().await.ok()?
}

async fn fetch_jwt(c: &Cluster, id: &str, audience: &str) -> String {
    let r = workload(c)
        .await
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: id.into(),
        }))
        .await
        .unwrap_or_else(|e| panic!("JWT-SVID for {id}: {e:?}"))
        .into_inner();
    r.svids[0].svid.clone()
}

/// Creates a just-in-time entry for the test process and starts a task on it; returns
/// the task id.
fn start_task(c: &Cluster) -> String {
    let entry = c
        .server
        .create_entry(JIT, &["unix:uid:0"], &["--jit", "--x509-svid-ttl", "3600"]);
    let t = c.server.cli_json(&[
        "task",
        "create",
        "--entry-id",
        &entry,
        "--reason",
        "relying-party test",
        "--ttl",
        "600",
        // Task JWT-SVIDs are minted only for the audiences the task declares.
        "--audience",
        AUDIENCE,
    ]);
    assert_eq!(t["state"], "active", "{t}");
    t["id"].as_str().unwrap().to_owned()
}

/// Waits for the SVIDs of `id` in a fresh fetch.
async fn wait_for_svid(c: &Cluster, id: &str) -> X509svidResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(r) = fetch_x509(c).await
            && r.svids.iter().any(|s| s.spiffe_id == id)
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no SVID for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Concatenated DER certificates, split.
fn split_ders(mut bytes: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = X509Certificate::from_der(bytes).expect("DER certificate");
        out.push(CertificateDer::from(
            bytes[..bytes.len() - rest.len()].to_vec(),
        ));
        bytes = rest;
    }
    out
}

fn pem_file(path: &Path, tag: &str, ders: &[&[u8]]) {
    let text: String = ders
        .iter()
        .map(|d| pem::encode(&pem::Pem::new(tag, d.to_vec())))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// `openssl verify -crl_check` of `leaf` against `bundle` with `crl`: (success, output).
fn openssl_verify(
    dir: &Path,
    bundle: &[CertificateDer<'_>],
    leaf: &[u8],
    crl: &[u8],
) -> (bool, String) {
    let (b, l, c) = (
        dir.join("bundle.pem"),
        dir.join("leaf.pem"),
        dir.join("crl.pem"),
    );
    let roots: Vec<&[u8]> = bundle.iter().map(|d| d.as_ref()).collect();
    pem_file(&b, "CERTIFICATE", &roots);
    pem_file(&l, "CERTIFICATE", &[leaf]);
    pem_file(&c, "X509 CRL", &[crl]);
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(&b)
        .arg("-CRLfile")
        .arg(&c)
        .arg(&l)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A TLS handshake in memory: a rustls server that requires client certificates chaining
/// to the SPIFFE `bundle`, checked against `crl` (`WebPkiClientVerifier::with_crls`), and
/// a rustls client presenting `chain` and `key`. Returns the server's verdict.
async fn mtls_handshake(
    pki: &WebPki,
    bundle: &[CertificateDer<'static>],
    crl: &[u8],
    chain: Vec<CertificateDer<'static>>,
    key: &[u8],
) -> Result<(), String> {
    let mut spiffe_roots = rustls::RootCertStore::empty();
    for r in bundle {
        spiffe_roots.add(r.clone()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(spiffe_roots),
        provider(),
    )
    .with_crls([CertificateRevocationListDer::from(crl.to_vec())])
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pki.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
        )
        .unwrap();
    let mut web_roots = rustls::RootCertStore::empty();
    web_roots.add(pki.ca_der.clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(web_roots)
        .with_client_auth_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = async {
        let mut s = tokio_rustls::TlsAcceptor::from(Arc::new(server))
            .accept(a)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"ok").await.map_err(|e| e.to_string())?;
        s.shutdown().await.map_err(|e| e.to_string())
    };
    let connect = async {
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), b)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let (server_side, client_side) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, connect)
    })
    .await
    .expect("handshake finished");
    server_side?;
    assert_eq!(client_side?, b"ok");
    Ok(())
}

/// Runs `tests/py/oidc_validate.py` (PyJWT) on `tokens`; returns its JSON.
fn pyjwt(rp: &RpCluster, audience: &str, tokens: &[&str]) -> Value {
    pyjwt_with(rp, audience, tokens, &[])
}

/// As [`pyjwt`], with extra flags (`--check-status`).
fn pyjwt_with(rp: &RpCluster, audience: &str, tokens: &[&str], flags: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/oidc_validate.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--issuer", &rp.url, "--audience", audience, "--cafile"])
        .arg(&rp.pki.ca_file)
        .args(flags)
        .args(tokens)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "PyJWT is not installed for python3: pip install -r tests/py/requirements.txt\n{stdout}{stderr}"
    );
    assert!(
        out.status.success(),
        "oidc_validate.py failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}"))
}

fn jwt_part(token: &str, i: usize) -> Value {
    use base64::Engine as _;
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pyjwt_validates_task_tokens_through_oidc_discovery_and_refuses_other_keys() {
    let rp = rp_cluster();
    let c = &rp.c;
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    let task_id = start_task(c);
    let deadline = Instant::now() + Duration::from_secs(15);
    let task_token = loop {
        let r = workload(c)
            .await
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec![AUDIENCE.into()],
                spiffe_id: JIT.into(),
            }))
            .await;
        match r {
            Ok(r) => break r.into_inner().svids[0].svid.clone(),
            Err(e) => {
                assert!(Instant::now() < deadline, "no task JWT-SVID: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let standing_token = fetch_jwt(c, STANDING, AUDIENCE).await;
    let other_audience = fetch_jwt(c, STANDING, "somebody-else").await;
    let claims = jwt_part(&task_token, 1);
    assert_eq!(claims["iss"], rp.url.as_str(), "{claims}");
    assert_eq!(claims["task_id"], task_id.as_str(), "{claims}");

    // SPIFFE clients are unaffected by the extra claims: the Rust `spiffe` crate verifies
    // the token offline against the bundle it fetches from the agent.
    let bundles = tests::jwt::spiffe_client(&c.agent.endpoint())
        .await
        .fetch_jwt_bundles()
        .await
        .expect("fetch_jwt_bundles");
    let verified = spiffe::JwtSvid::parse_and_validate(&task_token, &bundles, &[AUDIENCE])
        .expect("the spiffe crate verifies a token with iss and status");
    assert_eq!(verified.spiffe_id().to_string(), JIT);

    // Forgeries: the real kid over another key's signature, and a kid nobody published.
    let kid = jwt_part(&task_token, 0)["kid"].as_str().unwrap().to_owned();
    let forge = |kid: &str| {
        let pkcs8 = common::jwt::JwtSigner::generate_pkcs8().unwrap();
        let signer = common::jwt::JwtSigner::from_pkcs8(kid, &pkcs8).unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("iss".into(), rp.url.clone().into());
        extra.insert("task_id".into(), task_id.clone().into());
        let now = tests::unix_now();
        signer
            .sign(
                &common::SpiffeId::new(JIT).unwrap(),
                &[AUDIENCE.to_owned()],
                now,
                now + 300,
                &extra,
            )
            .unwrap()
    };
    let forged_same_kid = forge(&kid);
    let forged_other_kid = forge("0123456789abcdef0123456789abcdef");

    let v = pyjwt(
        &rp,
        AUDIENCE,
        &[
            &task_token,
            &standing_token,
            &forged_same_kid,
            &forged_other_kid,
            &other_audience,
        ],
    );
    println!("PyJWT {}", v["pyjwt_version"]);
    assert_eq!(v["discovery"]["issuer"], rp.url.as_str(), "{v}");
    assert_eq!(
        v["discovery"]["jwks_uri"],
        format!("{}/keys", rp.url).as_str()
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"], true, "task token: {}", results[0]);
    assert_eq!(results[0]["claims"]["task_id"], task_id.as_str());
    assert_eq!(results[0]["claims"]["sub"], JIT);
    assert_eq!(results[1]["ok"], true, "standing token: {}", results[1]);
    assert_eq!(results[1]["claims"]["iss"], rp.url.as_str());
    for (i, want) in [
        (2, "InvalidSignatureError"),
        (3, "PyJWKClientError"),
        (4, "InvalidAudienceError"),
    ] {
        assert_eq!(results[i]["ok"], false, "token {i}: {}", results[i]);
        let err = results[i]["error"].as_str().unwrap();
        assert!(err.starts_with(want), "token {i}: {err}");
    }

    // The task token names its entry in a shared status list (a list number, a random
    // index); while the task runs, its entry is VALID.
    let status_uri = claims["status"]["status_list"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let list_number = status_uri
        .strip_prefix(&format!("{}/statuslists/", rp.url))
        .unwrap_or_else(|| panic!("{status_uri}"));
    assert!(
        list_number.parse::<u64>().is_ok_and(|n| n >= 1),
        "{status_uri}"
    );
    let idx = claims["status"]["status_list"]["idx"].as_u64().unwrap();
    assert!(idx < 1 << 16, "{idx}");
    let idx = usize::try_from(idx).unwrap();
    assert!(jwt_part(&standing_token, 1).get("status").is_none());
    let v = pyjwt_with(
        &rp,
        AUDIENCE,
        &[&task_token, &standing_token],
        &["--check-status"],
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"], true, "{}", results[0]);
    assert_eq!(results[0]["status"], 0);
    assert_eq!(results[1]["ok"], true, "{}", results[1]);

    // End the task: the status list says INVALID at once; a relying party that checks it
    // refuses the token, one that checks only signature and claims accepts it until `exp`.
    let started = Instant::now();
    c.server.cli_json(&["task", "complete", &task_id]);
    let path = status_uri.strip_prefix(&rp.url).unwrap().to_owned();
    loop {
        let r = https(&rp, "GET", &path, "").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/statuslist+jwt"));
        let token = String::from_utf8(r.body).unwrap();
        assert_eq!(jwt_part(&token, 1)["sub"], status_uri.as_str());
        if tests::web::status_bit(&token, idx).unwrap() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "status list never says INVALID"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latency = started.elapsed();
    println!("task end → status list says INVALID: {latency:?}");
    // Lists no server has started are not served.
    for unknown in ["/statuslists/1000000", "/statuslists/0", "/statuslists/01"] {
        assert_eq!(
            https(&rp, "GET", unknown, "").await.status,
            404,
            "{unknown}"
        );
    }
    // A status list token, signed with the JWT-SVID key, does not pass for a JWT-SVID.
    let list = https(&rp, "GET", &path, "").await;
    let refused = workload(c)
        .await
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: AUDIENCE.into(),
            svid: String::from_utf8(list.body).unwrap(),
        }))
        .await
        .expect_err("a status list token is no JWT-SVID");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let checked = pyjwt_with(
        &rp,
        AUDIENCE,
        &[&task_token, &standing_token],
        &["--check-status"],
    );
    let refusal = checked["results"][0]["error"].as_str().unwrap_or_default();
    assert_eq!(checked["results"][0]["ok"], false, "{checked}");
    assert!(refusal.starts_with("TokenStatusInvalid"), "{refusal}");
    assert_eq!(
        checked["results"][1]["ok"], true,
        "standing token unaffected"
    );
    let unchecked = pyjwt(&rp, AUDIENCE, &[&task_token]);
    println!(
        "PyJWT after task end: with the status list {refusal}; signature and claims only: accepted = {}",
        unchecked["results"][0]["ok"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_serves_discovery_keys_and_crls_and_refuses_everything_else() {
    let rp = rp_cluster();
    let d = https(&rp, "GET", "/.well-known/openid-configuration", "").await;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.header("content-type"), Some("application/json"));
    let doc = d.json();
    assert_eq!(doc["issuer"], rp.url.as_str());
    assert_eq!(doc["jwks_uri"], format!("{}/keys", rp.url).as_str());
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );

    // The JWK set is the bundle's JWT authorities, with alg and use for JWT libraries.
    let bundle: Value =
        serde_json::from_slice(&c_out(&rp.c, &["bundle", "show", "--format", "spiffe"])).unwrap();
    let mut bundle_kids: Vec<String> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    bundle_kids.sort();
    for path in ["/keys", "/jwks.json"] {
        let k = https(&rp, "GET", path, "").await;
        assert_eq!(k.status, 200, "{path}: {k:?}");
        let cache = k.header("cache-control").unwrap();
        assert!(cache.contains("max-age=60"), "{cache}");
        let jwks = k.json();
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                assert_eq!(k["alg"], "ES256", "{k}");
                assert_eq!(k["use"], "sig", "{k}");
                assert_eq!(k["crv"], "P-256", "{k}");
                k["kid"].as_str().unwrap().to_owned()
            })
            .collect();
        kids.sort();
        assert_eq!(kids, bundle_kids, "{path}");
    }

    // The active CA's CRL exists (empty) before anything is revoked.
    let cas = rp.c.server.cli_json(&["ca", "show"]);
    let active = cas["cas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ca| ca["phase"] == "active")
        .unwrap_or_else(|| panic!("{cas}"))["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let crl = https(&rp, "GET", &format!("/crl/{active}.crl"), "").await;
    assert_eq!(crl.status, 200, "{crl:?}");
    assert_eq!(crl.header("content-type"), Some("application/pkix-crl"));
    assert!(crl_serials(&crl.body).unwrap().is_empty());

    for (method, path, want) in [
        ("GET", "/", 404),
        ("GET", "/crl/00ff.crl", 404),
        ("GET", "/crl/not-hex.crl", 404),
        ("GET", "/keys/../admin", 404),
        ("GET", "/live", 404),
        ("POST", "/keys", 405),
        ("DELETE", &format!("/crl/{active}.crl") as &str, 405),
        ("PUT", "/.well-known/openid-configuration", 405),
    ] {
        let r = https(&rp, method, path, "").await;
        assert_eq!(r.status, want, "{method} {path}: {r:?}");
    }
    let r = https(&rp, "POST", "/keys", "").await;
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // A request head beyond the limit is refused, not buffered.
    let big = format!("X-Filler: {}\r\n", "a".repeat(32 * 1024));
    let r = https(&rp, "GET", "/keys", &big).await;
    assert_eq!(r.status, 431, "{r:?}");
    // The listener still serves afterwards.
    assert_eq!(https(&rp, "GET", "/keys", "").await.status, 200);
}

fn c_out(c: &Cluster, args: &[&str]) -> Vec<u8> {
    let out = c.server.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_and_rustls_refuse_an_ended_tasks_certificate_with_the_crl_from_its_distribution_point()
 {
    let rp = rp_cluster();
    let c = &rp.c;
    c.server.create_entry(STANDING, &["unix:uid:0"], &[]);
    let task_id = start_task(c);
    let got = wait_for_svid(c, JIT).await;
    let svid = got.svids.iter().find(|s| s.spiffe_id == JIT).unwrap();
    let chain = split_ders(&svid.x509_svid);
    let leaf = chain[0].clone();
    let bundle = split_ders(&svid.bundle);
    let serial = serial_of(&leaf).unwrap();

    // The task SVID names its CA's CRL on the listener; a standing SVID names none.
    let urls = crl_urls(&leaf).unwrap();
    assert_eq!(urls.len(), 1, "{urls:?}");
    let (_, parsed) = X509Certificate::from_der(&leaf).unwrap();
    let ca = bundle
        .iter()
        .find(|r| X509Certificate::from_der(r).unwrap().1.subject() == parsed.issuer())
        .expect("issuing CA in the bundle");
    let ca_serial = serial_of(ca).unwrap();
    assert_eq!(urls[0], format!("{}/crl/{ca_serial}.crl", rp.url));
    let standing = got.svids.iter().find(|s| s.spiffe_id == STANDING).unwrap();
    assert!(
        crl_urls(&split_ders(&standing.x509_svid)[0])
            .unwrap()
            .is_empty()
    );

    let path = urls[0].strip_prefix(&rp.url).unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let before = https(&rp, "GET", &path, "").await;
    assert_eq!(before.status, 200, "{before:?}");
    assert!(!crl_serials(&before.body).unwrap().contains(&serial));
    let (ok, text) = openssl_verify(work.path(), &bundle, &leaf, &before.body);
    assert!(ok, "openssl accepts the running task's SVID: {text}");
    mtls_handshake(
        &rp.pki,
        &bundle,
        &before.body,
        chain.clone(),
        &svid.x509_svid_key,
    )
    .await
    .expect("rustls accepts the running task's SVID");

    // End the task; the CRL at the distribution point lists the serial at once.
    let started = Instant::now();
    c.server
        .cli_json(&["task", "complete", &task_id, "--reason", "done"]);
    let ended = started.elapsed();
    let after = loop {
        let r = https(&rp, "GET", &path, "").await;
        assert_eq!(r.status, 200, "{r:?}");
        if crl_serials(&r.body).unwrap().contains(&serial) {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the CRL does not list {serial}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let latency = started.elapsed();
    println!(
        "task end → CRL at the distribution point lists the SVID: {latency:?} (the `task complete` command itself took {ended:?})"
    );
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let cache = after.header("cache-control").unwrap();
    assert!(cache.contains("max-age=5"), "{cache}");

    let (ok, text) = openssl_verify(work.path(), &bundle, &leaf, &after.body);
    assert!(!ok, "openssl must refuse the ended task's SVID: {text}");
    assert!(text.contains("certificate revoked"), "{text}");
    let refused = mtls_handshake(&rp.pki, &bundle, &after.body, chain, &svid.x509_svid_key)
        .await
        .expect_err("rustls must refuse the ended task's SVID");
    assert!(refused.contains("Revoked"), "{refused}");
    println!("openssl: {}; rustls: {refused}", text.trim());

    // A standing SVID still passes both with the same CRL.
    let standing_chain = split_ders(&standing.x509_svid);
    let (ok, text) = openssl_verify(work.path(), &bundle, &standing_chain[0], &after.body);
    assert!(ok, "{text}");
    mtls_handshake(
        &rp.pki,
        &bundle,
        &after.body,
        standing_chain,
        &standing.x509_svid_key,
    )
    .await
    .expect("standing SVID accepted");
}

#[test]
fn the_server_refuses_an_incomplete_listener_config_and_a_key_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(dir.path()).unwrap();
    let (code, log) = tests::server::refused_start(
        dir.path(),
        &["--relying-party-url", "https://tessera.example.org"],
    );
    assert_eq!(code, Some(64), "{log}");
    assert!(
        log.contains(
            "missing relying_party_listen, relying_party_cert_file, relying_party_key_file"
        ),
        "{log}"
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let full = [
        "--relying-party-listen",
        &listen,
        "--relying-party-url",
        "http://tessera.example.org",
        "--relying-party-cert-file",
        pki.cert_file.to_str().unwrap(),
        "--relying-party-key-file",
        pki.key_file.to_str().unwrap(),
    ];
    let (code, log) = tests::server::refused_start(dir.path(), &full);
    assert_eq!(code, Some(64), "{log}");
    assert!(log.contains("is not an https:// URL"), "{log}");

    std::fs::set_permissions(&pki.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut https_url = full;
    https_url[3] = "https://tessera.example.org";
    let (code, log) = tests::server::refused_start(dir.path(), &https_url);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {log}");
    assert!(log.contains("chmod 600"), "{log}");
}
