//! Security Event Token push (`--set-receiver`): every task end reaches a real HTTPS
//! receiver (a hyper server over tokio-rustls, with a certificate of the test web PKI) as
//! a SET signed with the JWT-SVID key, verified with the JWK set the relying-party
//! listener publishes by PyJWT (`tests/py/set_verify.py`, through OIDC discovery) and by
//! ring's ES256 verifier; a receiver that refuses for a while, and a
//! server restart meanwhile, lose nothing and duplicate nothing; an event undeliverable
//! for `--set-give-up-after` is abandoned (audited) and never sent afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tests::free_port;
use tests::server::ServerProc;
use tests::web::WebPki;
use tokio::time::Instant;

const JIT: &str = "spiffe://example.org/jit/pushed";
pub(crate) const EVENT: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    pub(crate) path: String,
    pub(crate) content_type: String,
    pub(crate) body: String,
    /// The status it answered.
    pub(crate) status: u16,
}

/// A SET receiver: records every request, answers `status` (202 unless changed).
#[derive(Debug)]
pub(crate) struct Receiver {
    addr: SocketAddr,
    pub(crate) status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start(pki: &WebPki) -> Self {
        Self::start_at(pki, 0).await
    }

    /// A receiver on 127.0.0.1:`port` (0: any free port).
    pub(crate) async fn start_at(pki: &WebPki, port: u16) -> Self {
        let tls = rustls::ServerConfig::builder_with_provider(tests::web::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pki.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(202));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (st, rx) = (Arc::clone(&status), Arc::clone(&received));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st, rx) = (acceptor.clone(), Arc::clone(&st), Arc::clone(&rx));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (st, rx) = (Arc::clone(&st), Arc::clone(&rx));
                        async move {
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = st.load(Ordering::SeqCst);
                            rx.lock().unwrap().push(Received {
                                at: Instant::now(),
                                path,
                                content_type,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                status,
                            });
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            status,
            received,
            _task: task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}/events", self.addr.port())
    }

    pub(crate) fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests carrying a SET about `task_id`.
    pub(crate) fn about(&self, task_id: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| claims(&r.body)["events"][EVENT]["task_id"] == task_id)
            .collect()
    }

    /// Waits until `f` holds of the requests about `task_id`; returns them.
    pub(crate) async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
        f: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.about(task_id);
            if f(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: not within {timeout:?} for task {task_id}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub(crate) fn part(token: &str, i: usize) -> Value {
    use base64::Engine as _;
    let seg = token.split('.').nth(i).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

pub(crate) fn claims(token: &str) -> Value {
    part(token, 1)
}

/// Verifies the ES256 signature of `token` with the key its `kid` names in `jwks`.
pub(crate) fn verify(token: &str, jwks: &Value) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = part(token, 0);
    let kid = header["kid"].as_str().unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in the published JWK set {jwks}"));
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    let mut point = vec![4u8];
    point.extend(b64.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(b64.decode(key["y"].as_str().unwrap()).unwrap());
    let (signed, sig) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &b64.decode(sig).unwrap())
        .expect("the SET's signature verifies with the published key");
    // The same token with one signature bit flipped does not.
    let mut bad = b64.decode(sig).unwrap();
    bad[5] ^= 1;
    assert!(
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(signed.as_bytes(), &bad)
            .is_err()
    );
}

/// Runs `tests/py/set_verify.py` (PyJWT) on `tokens`; returns its per-token results.
fn pyjwt(issuer: &str, audience: &str, pki: &WebPki, tokens: &[&str]) -> Vec<Value> {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/set_verify.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--issuer", issuer, "--audience", audience, "--cafile"])
        .arg(&pki.ca_file)
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
        "set_verify.py failed:\n{stdout}\n{stderr}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    v["results"].as_array().unwrap().clone()
}

/// Starts a task on a fresh just-in-time entry; returns its id.
fn start_task(s: &ServerProc, n: usize) -> String {
    start_task_for(s, n, "600")
}

/// As [`start_task`], for `ttl` seconds.
fn start_task_for(s: &ServerProc, n: usize, ttl: &str) -> String {
    let entry = s.create_entry(
        &format!("{JIT}/{n}"),
        &["unix:uid:0"],
        &["--jit", "--x509-svid-ttl", "3600"],
    );
    let t = s.cli_json(&[
        "task",
        "create",
        "--entry-id",
        &entry,
        "--reason",
        "push test",
        "--ttl",
        ttl,
    ]);
    assert_eq!(t["state"], "active", "{t}");
    t["id"].as_str().unwrap().to_owned()
}

pub(crate) fn audit(s: &ServerProc, kind: &str) -> Vec<Value> {
    let out = s.cli(&["audit", "show", "--output", "json"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn task_ends_reach_a_receiver_as_verifiable_sets_despite_outages_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(dir.path()).unwrap();
    let rx = Receiver::start(&pki).await;
    let rp_port = free_port();
    let rp_addr = SocketAddr::from(([127, 0, 0, 1], rp_port));
    let rp_url = format!("https://localhost:{rp_port}");
    let mut args = pki.server_args(rp_addr, &rp_url);
    args.extend([
        "--set-receiver".to_owned(),
        rx.url(),
        "--set-receiver-ca-file".to_owned(),
        pki.ca_file.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = ServerProc::start(dir.path(), &args);

    // 1. A task ends: the receiver has its SET within a second.
    let t1 = start_task(&s, 1);
    let ended = Instant::now();
    s.cli_json(&["task", "revoke", &t1, "--reason", "suspected misuse"]);
    let got = rx
        .wait(&t1, Duration::from_secs(5), |r| !r.is_empty())
        .await;
    let latency = got[0].at - ended;
    println!("task end → SET at the receiver: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let r = &got[0];
    assert_eq!(r.path, "/events");
    assert_eq!(r.content_type, "application/secevent+jwt");
    let token = r.body.trim();
    let header = part(token, 0);
    assert_eq!(header["typ"], "secevent+jwt");
    assert_eq!(header["alg"], "ES256");
    let jwks = tests::web::https(rp_addr, &pki.ca_der, "GET", "/keys", "")
        .await
        .unwrap()
        .json();
    verify(token, &jwks);
    // PyJWT, through OIDC discovery: accepts the SET; refuses it for another audience,
    // and with a changed signature.
    let tampered = {
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.to_owned().into_bytes();
        sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
        format!("{signed}.{}", String::from_utf8(sig).unwrap())
    };
    let r = pyjwt(&rp_url, &rx.url(), &pki, &[token, &tampered]);
    assert_eq!(r[0]["ok"], true, "{r:?}");
    assert_eq!(r[0]["claims"]["events"][EVENT]["task_id"], t1.as_str());
    assert_eq!(r[1]["ok"], false, "{r:?}");
    let r = pyjwt(&rp_url, "https://elsewhere.example.org", &pki, &[token]);
    assert_eq!(r[0]["ok"], false, "{r:?}");
    assert!(
        r[0]["error"].as_str().unwrap().contains("Audience"),
        "{r:?}"
    );
    let c = claims(token);
    assert_eq!(c["iss"], rp_url.as_str());
    assert_eq!(c["aud"], rx.url().as_str());
    assert!(c["jti"].as_str().is_some_and(|j| j.len() == 36), "{c}");
    let now = tests::unix_now();
    assert!(
        (now - 60..=now + 1).contains(&c["iat"].as_i64().unwrap()),
        "{c}"
    );
    let e = &c["events"][EVENT];
    assert_eq!(e["change_type"], "revoke", "{c}");
    assert_eq!(e["credential_type"], "x509");
    assert_eq!(e["task_id"], t1.as_str());
    assert_eq!(e["task_state"], "revoked");
    assert_eq!(e["reason_admin"]["en"], "suspected misuse");
    assert_eq!(e["subject"]["format"], "uri");
    assert_eq!(e["subject"]["uri"], format!("{JIT}/1"));
    assert!((now - 60..=now).contains(&e["event_timestamp"].as_i64().unwrap()));
    let delivered = audit(&s, "set.delivered");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["task_id"], t1.as_str());
    assert_eq!(delivered[0]["detail"]["jti"], c["jti"]);
    assert_eq!(delivered[0]["detail"]["receiver"], rx.url().as_str());
    assert_eq!(delivered[0]["detail"]["attempts"], 1);

    // 2. The receiver refuses (503) for a while: the SET is retried with backoff and
    // arrives once it accepts, exactly once.
    rx.status.store(503, Ordering::SeqCst);
    let t2 = start_task(&s, 2);
    s.cli_json(&["task", "complete", &t2]);
    rx.wait(&t2, Duration::from_secs(10), |r| r.len() >= 3)
        .await;
    rx.status.store(202, Ordering::SeqCst);
    let got = rx
        .wait(&t2, Duration::from_secs(15), |r| {
            r.iter().any(|x| x.status == 202)
        })
        .await;
    let first = got[0].at;
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!(
        "attempts for a refusing receiver: {}, gaps {gaps:?}",
        got.len()
    );
    // 1 s, 2 s, 4 s...: each wait at least about double the previous.
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1800), "{gaps:?}");
    let jtis: Vec<Value> = got.iter().map(|r| claims(&r.body)["jti"].clone()).collect();
    assert!(
        jtis.iter().all(|j| *j == jtis[0]),
        "one jti for every attempt: {jtis:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let accepted = rx
        .about(&t2)
        .into_iter()
        .filter(|x| x.status == 202)
        .count();
    assert_eq!(accepted, 1, "delivered exactly once");
    let delivered = audit(&s, "set.delivered");
    let d2: Vec<&Value> = delivered
        .iter()
        .filter(|d| d["task_id"] == t2.as_str())
        .collect();
    assert_eq!(d2.len(), 1, "{delivered:?}");
    assert_eq!(d2[0]["detail"]["attempts"], got.len());
    assert_eq!(d2[0]["detail"]["jti"], jtis[0]);
    println!(
        "refused from {:?} until delivered",
        got.last().unwrap().at - first
    );

    // 3. The receiver refuses and the server restarts meanwhile: the event is delivered
    // after the restart, from the persisted cursor, once.
    rx.status.store(503, Ordering::SeqCst);
    let t3 = start_task(&s, 3);
    s.cli_json(&["task", "cancel", &t3]);
    rx.wait(&t3, Duration::from_secs(10), |r| !r.is_empty())
        .await;
    s.stop();
    rx.status.store(202, Ordering::SeqCst);
    s.restart();
    let got = rx
        .wait(&t3, Duration::from_secs(15), |r| {
            r.iter().any(|x| x.status == 202)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rx.about(&t3);
    assert_eq!(
        after.iter().filter(|x| x.status == 202).count(),
        1,
        "{after:?}"
    );
    assert!(got.len() >= 2);
    // Earlier events are not sent again after the restart.
    assert_eq!(rx.about(&t1).len(), 1);
    assert_eq!(rx.about(&t2).iter().filter(|x| x.status == 202).count(), 1);
    let delivered = audit(&s, "set.delivered");
    assert_eq!(
        delivered
            .iter()
            .filter(|d| d["task_id"] == t3.as_str())
            .count(),
        1,
        "{delivered:?}"
    );
    assert_eq!(
        tests::file_mode(&s.data_dir.join(server::set_push::CURSOR_FILE)) & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_receiver_never_delays_another() {
    let dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(dir.path()).unwrap();
    let down = Receiver::start(&pki).await;
    down.status.store(503, Ordering::SeqCst);
    let up = Receiver::start(&pki).await;
    let (down_url, up_url) = (down.url(), up.url());
    let ca = pki.ca_file.display().to_string();
    let s = ServerProc::start(
        dir.path(),
        &[
            "--jwt-issuer",
            "https://tessera.example.org",
            "--set-receiver",
            &down_url,
            "--set-receiver",
            &up_url,
            "--set-receiver-ca-file",
            &ca,
            "--set-audience",
            "urn:example:security-events",
        ],
    );
    // Several task ends while the first receiver refuses every one: the second has each
    // at once, in order.
    let mut ids = Vec::new();
    for n in 0..3 {
        let t = start_task(&s, n);
        let ended = Instant::now();
        s.cli_json(&["task", "fail", &t, "--reason", "tool error"]);
        let got = up.wait(&t, Duration::from_secs(5), |r| !r.is_empty()).await;
        let latency = got[0].at - ended;
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        let c = claims(&got[0].body);
        assert_eq!(c["aud"], "urn:example:security-events");
        assert_eq!(c["iss"], "https://tessera.example.org");
        assert_eq!(c["events"][EVENT]["task_state"], "failed");
        ids.push(t);
    }
    let order: Vec<Value> = up
        .all()
        .iter()
        .map(|r| claims(&r.body)["events"][EVENT]["task_id"].clone())
        .collect();
    assert_eq!(
        order,
        ids.iter()
            .map(|t| Value::from(t.as_str()))
            .collect::<Vec<_>>()
    );
    // A task that reaches its deadline is pushed too, as the server's own doing.
    let started = Instant::now();
    let expiring = start_task_for(&s, 9, "2");
    let got = up
        .wait(&expiring, Duration::from_secs(15), |r| !r.is_empty())
        .await;
    println!("2 s task → its expiry SET after {:?}", got[0].at - started);
    let e = &claims(&got[0].body)["events"][EVENT];
    assert_eq!(e["task_state"], "expired", "{e}");
    assert_eq!(e["initiating_entity"], "policy", "{e}");
    // The refusing receiver is still on the first event, retrying.
    let refused = down.all();
    assert!(!refused.is_empty());
    assert!(
        refused
            .iter()
            .all(|r| claims(&r.body)["events"][EVENT]["task_id"] == ids[0].as_str()),
        "{refused:?}"
    );
    // Receivers get distinct jtis for one event.
    assert_ne!(
        claims(&refused[0].body)["jti"],
        claims(&up.about(&ids[0])[0].body)["jti"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_undeliverable_past_set_give_up_after_is_abandoned_and_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(dir.path()).unwrap();
    // Nothing listens on the receiver's port yet: every attempt fails to connect.
    let port = free_port();
    let url = format!("https://localhost:{port}/events");
    let ca = pki.ca_file.display().to_string();
    let s = ServerProc::start(
        dir.path(),
        &[
            "--jwt-issuer",
            "https://tessera.example.org",
            "--set-receiver",
            &url,
            "--set-receiver-ca-file",
            &ca,
            "--set-give-up-after",
            "2s",
        ],
    );
    let t = start_task(&s, 1);
    let ended = Instant::now();
    s.cli_json(&["task", "revoke", &t, "--reason", "receiver down"]);
    let abandoned = tests::wait_for(Duration::from_secs(15), || {
        audit(&s, "set.abandoned")
            .into_iter()
            .find(|r| r["task_id"] == t.as_str())
    })
    .expect("set.abandoned for the task end within 15 s");
    let after = ended.elapsed();
    println!("receiver down: task end abandoned after {after:?}");
    // Not before the event is 2 s old (the record was written just before `ended`).
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    assert_eq!(abandoned["detail"]["receiver"], url.as_str(), "{abandoned}");
    assert_eq!(abandoned["detail"]["event_kind"], "task.ended");
    assert_eq!(abandoned["actor"], "server");
    let attempts = abandoned["detail"]["attempts"].as_u64().unwrap();
    assert!((2..=4).contains(&attempts), "{abandoned}");
    assert!(audit(&s, "set.delivered").is_empty());

    // The receiver comes up: the abandoned event is never sent to it, the next one is.
    let rx = Receiver::start_at(&pki, port).await;
    assert_eq!(rx.url(), url);
    let t2 = start_task(&s, 2);
    s.cli_json(&["task", "complete", &t2]);
    rx.wait(&t2, Duration::from_secs(10), |r| !r.is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rx.about(&t).is_empty(), "{:?}", rx.about(&t));
    let delivered = audit(&s, "set.delivered");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["task_id"], t2.as_str());
    assert_eq!(audit(&s, "set.abandoned").len(), 1);
}

/// Two servers on one PostgreSQL database, both configured with the same receiver: each
/// task end reaches it once (not once per server) with one `set.delivered` record, within
/// a second whichever server ended the task; when the server pushing to the receiver
/// stops, the other pushes from where it was.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_database_push_each_event_once() {
    let db = tests::TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let pki = WebPki::generate(dir.path()).unwrap();
    let rx = Receiver::start(&pki).await;
    let (url, ca) = (rx.url(), pki.ca_file.display().to_string());
    let args = [
        "--datastore",
        db.url.as_str(),
        "--jwt-issuer",
        "https://tessera.example.org",
        "--set-receiver",
        &url,
        "--set-receiver-ca-file",
        &ca,
    ];
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = ServerProc::start(&dir_a, &args);
    let b = ServerProc::start(&dir_b, &args);

    // Tasks ended on either server, each pushed once.
    let mut ids = Vec::new();
    for n in 0..6 {
        let s = if n % 2 == 0 { &a } else { &b };
        let t = start_task(s, n);
        let ended = Instant::now();
        s.cli_json(&["task", "complete", &t]);
        let got = rx
            .wait(&t, Duration::from_secs(10), |r| !r.is_empty())
            .await;
        let latency = got[0].at - ended;
        println!("two servers: task end → SET after {latency:?}");
        // Whichever server ended it: the change feed wakes the pushing server.
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        ids.push(t);
    }
    // Time for a second push of each, were every server pushing everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in &ids {
        let got = rx.about(t);
        assert_eq!(got.len(), 1, "task {t}: {got:?}");
        assert_eq!(got[0].status, 202);
    }
    assert_eq!(rx.all().len(), ids.len(), "{:?}", rx.all());
    let delivered = audit(&a, "set.delivered");
    assert_eq!(delivered.len(), ids.len(), "{delivered:?}");
    for t in &ids {
        assert_eq!(
            delivered
                .iter()
                .filter(|d| d["task_id"] == t.as_str())
                .count(),
            1,
            "{delivered:?}"
        );
    }
    let pushing = |s: &ServerProc| s.log_text().contains("this server pushes to the receiver");
    assert!(
        pushing(&a) != pushing(&b),
        "exactly one server pushes to the receiver\nA:\n{}\nB:\n{}",
        a.log_tail(),
        b.log_tail()
    );

    // The pushing server stops: the other takes the receiver over where it was.
    let (mut gone, other) = if pushing(&a) { (a, b) } else { (b, a) };
    gone.stop();
    let t = start_task(&other, 99);
    let ended = Instant::now();
    other.cli_json(&["task", "revoke", &t, "--reason", "after the takeover"]);
    let got = rx
        .wait(&t, Duration::from_secs(15), |r| !r.is_empty())
        .await;
    let took = got[0].at - ended;
    println!("two servers: after the pushing server stopped, task end → SET after {took:?}");
    // Given up at shutdown, not waited out (the lease is 20 s).
    assert!(took < Duration::from_secs(10), "{took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.about(&t).len(), 1);
    assert_eq!(rx.all().len(), ids.len() + 1, "nothing earlier sent again");
    let delivered = audit(&other, "set.delivered");
    assert_eq!(delivered.len(), ids.len() + 1, "{delivered:?}");
    let v = other.cli_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn the_server_refuses_an_http_receiver_and_a_missing_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let iss = ["--jwt-issuer", "https://tessera.example.org"];
    let mut args = vec!["--set-receiver", "http://rx.example.org/events"];
    args.extend(iss);
    args.extend(["--set-receiver-ca-file", "/nonexistent.pem"]);
    let (code, log) = tests::server::refused_start(dir.path(), &args);
    assert_eq!(code, Some(64), "{log}");
    assert!(log.contains("is not an https:// URL"), "{log}");

    let mut args = vec!["--set-receiver", "https://rx.example.org/events"];
    args.extend(iss);
    let (code, log) = tests::server::refused_start(dir.path(), &args);
    assert_eq!(code, Some(64), "{log}");
    assert!(log.contains("needs set_receiver_ca_file"), "{log}");

    let missing = dir.path().join("no-such-roots.pem");
    args.extend(["--set-receiver-ca-file", missing.to_str().unwrap()]);
    let (code, log) = tests::server::refused_start(dir.path(), &args);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {log}");
    assert!(log.contains("no-such-roots.pem"), "{log}");

    let (code, log) = tests::server::refused_start(dir.path(), &["--set-give-up-after", "0s"]);
    assert_eq!(code, Some(64), "{log}");
    assert!(log.contains("set_give_up_after"), "{log}");
}
