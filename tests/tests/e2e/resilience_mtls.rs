//! Mutual TLS between two workloads never breaks (issue 5): a "client" and a "server"
//! workload keep doing fresh TLS 1.3 handshakes once a second (rustls, their SVIDs from an
//! `X509Source`, the current bundle) across a forced CA rotation and a server restart, and
//! after the restart they handshake with SVIDs the restarted server issued. Negative
//! controls (wrong server ID, unrelated bundle, no client certificate) prove the handshake
//! really authenticates both sides.

use std::io::{BufRead as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tls::{SpiffeClientVerifier, SpiffeServerVerifier};
use common::{Bundle, BundleCell, SpiffeId};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde_json::Value;
use spiffe::{TrustDomain, X509Source};
use tests::{TRUST_DOMAIN, runtime, unix_now_f64, wait_for};
use tokio::time::Instant;
use x509_parser::prelude::{FromDer as _, X509Certificate};

const CLIENT_ID: &str = "spiffe://example.org/client";
const SERVER_ID: &str = "spiffe://example.org/server";

/// rustls's server-side verifier with client authentication *required*: the product's
/// verifier (which only offers it, for join-token first contact) with the mandatory bit.
#[derive(Debug)]
struct RequireClientSvid(Arc<SpiffeClientVerifier>);

impl ClientCertVerifier for RequireClientSvid {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What one handshake used.
#[derive(Debug, Clone)]
struct Handshake {
    client_serial: String,
    server_serial: String,
    /// Authority key ids of the two leaves: which CA signed each.
    client_ca: String,
    server_ca: String,
    roots: usize,
    /// Seconds until the sooner of the two leaves expires, at the handshake.
    margin: f64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// notAfter of a leaf, Unix seconds.
fn not_after_of(der: &[u8]) -> i64 {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.validity().not_after.timestamp()
}

/// Serial and authority key id of a leaf.
fn serial_and_aki(der: &[u8]) -> (String, String) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
        .unwrap_or_default();
    (hex(cert.raw_serial()), aki)
}

fn chain_and_key(
    svid: &spiffe::X509Svid,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    (chain, key)
}

fn read_line<R: std::io::Read>(r: R) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::BufReader::new(r).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Negative controls proving the handshake really authenticates both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Both workloads as they are.
    Genuine,
    /// The client requires a different server SPIFFE ID.
    WrongServerId,
    /// Both sides trust an unrelated CA instead of the bundle.
    UnrelatedBundle,
    /// The client presents no certificate.
    NoClientCert,
}

fn unrelated_ca() -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.self_signed(&key).unwrap().der().clone()
}

/// One fresh TLS 1.3 mutual-TLS connection over loopback TCP between a "server" workload
/// and a "client" workload, with configs built now from the source's current SVIDs and
/// bundle, and one request/response exchanged.
fn mtls_handshake(source: &X509Source, n: usize, control: Control) -> Result<Handshake, String> {
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let ctx = source
        .x509_context()
        .map_err(|e| format!("no context: {e}"))?;
    let pick = |id: &str| {
        ctx.svids()
            .iter()
            .find(|s| s.spiffe_id().to_string() == id)
            .cloned()
            .ok_or_else(|| format!("no SVID for {id} in the context"))
    };
    let (client_svid, server_svid) = (pick(CLIENT_ID)?, pick(SERVER_ID)?);
    let roots: Vec<CertificateDer<'static>> = ctx
        .bundle_set()
        .get(&td)
        .ok_or("no bundle for the trust domain")?
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let n_roots = roots.len();
    let roots = if control == Control::UnrelatedBundle {
        vec![unrelated_ca()]
    } else {
        roots
    };
    let expected_server = if control == Control::WrongServerId {
        CLIENT_ID
    } else {
        SERVER_ID
    };
    let bundle = BundleCell::new(Bundle::new(
        common::TrustDomain::new(TRUST_DOMAIN).unwrap(),
        roots,
        0,
        0,
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (server_chain, server_key) = chain_and_key(&server_svid);
    let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(RequireClientSvid(SpiffeClientVerifier::new(
            bundle.clone(),
        ))))
        .with_single_cert(server_chain, server_key)
        .map_err(|e| format!("server config: {e}"))?;
    let (client_chain, client_key) = chain_and_key(&client_svid);
    let client_builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(
            bundle,
            SpiffeId::new(expected_server).unwrap(),
        ));
    let client_cfg = if control == Control::NoClientCert {
        client_builder.with_no_client_auth()
    } else {
        client_builder
            .with_client_auth_cert(client_chain, client_key)
            .map_err(|e| format!("client config: {e}"))?
    };

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<String, String> {
        let tcp = wait_for(Duration::from_secs(10), || {
            listener.accept().ok().map(|(s, _)| s)
        })
        .ok_or("server side: no connection")?;
        tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(Arc::new(server_cfg))
            .map_err(|e| format!("server side: {e}"))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = read_line(&mut tls).map_err(|e| format!("server side: {e}"))?;
        if tls.conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Err(format!(
                "server side: negotiated {:?}",
                tls.conn.protocol_version()
            ));
        }
        let peer = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("server side: no client certificate")?;
        let peer_id = common::svid::parse_leaf(peer)
            .map_err(|e| format!("server side: {e}"))?
            .spiffe_id
            .to_string();
        tls.write_all(format!("{request} -> pong from {SERVER_ID} to {peer_id}\n").as_bytes())
            .map_err(|e| format!("server side: {e}"))?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| format!("server side: {e}"))?;
        Ok(peer_id)
    });

    let client_side = || -> Result<String, String> {
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from("workload.test").unwrap(),
        )
        .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(format!("ping {n}\n").as_bytes())
            .map_err(|e| format!("client side: {e}"))?;
        tls.flush().map_err(|e| format!("client side: {e}"))?;
        read_line(&mut tls).map_err(|e| format!("client side: {e}"))
    };
    let reply = client_side();
    let peer_id = server
        .join()
        .map_err(|_| "server thread panicked".to_owned())?;
    let reply = reply?;
    let peer_id = peer_id?;
    let expected = format!("ping {n} -> pong from {SERVER_ID} to {CLIENT_ID}");
    if reply != expected || peer_id != CLIENT_ID {
        return Err(format!("unexpected exchange: {reply:?} (peer {peer_id})"));
    }
    let (client_serial, client_ca) = serial_and_aki(client_svid.leaf().as_bytes());
    let (server_serial, server_ca) = serial_and_aki(server_svid.leaf().as_bytes());
    let expiry = not_after_of(client_svid.leaf().as_bytes())
        .min(not_after_of(server_svid.leaf().as_bytes()));
    Ok(Handshake {
        client_serial,
        server_serial,
        client_ca,
        server_ca,
        roots: n_roots,
        margin: expiry as f64 - unix_now_f64(),
    })
}

type Attempts = Arc<Mutex<Vec<(Duration, Result<Handshake, String>)>>>;

#[test]
fn mtls_survives_ca_rotation_and_server_restart() {
    // SVID TTL 40 s: renewed every ~14–18 s, so SVIDs rotate during the test; at the
    // server stop the SVIDs held have >= 22 s left, more than the 4 s outage plus the
    // agent's worst-case reconnect (the backoff step after ~4 s can reach ~12.5 s after the
    // stop). With a 10 s TTL only ~5.5 s would be left at worst, which that backoff can
    // exceed: the SVIDs would expire before the agent reconnects (by design, not a bug).
    let mut c = tests::Cluster::start(&["--default-x509-svid-ttl", "40s"]);
    c.server.create_entry(CLIENT_ID, &["unix:uid:0"], &[]);
    c.server.create_entry(SERVER_ID, &["unix:uid:0"], &[]);
    let rt = runtime();
    let source = rt
        .block_on(X509Source::builder().endpoint(c.agent.endpoint()).build())
        .expect("X509Source builds");
    let both = wait_for(Duration::from_secs(30), || {
        let ctx = source.x509_context().ok()?;
        let mut got: Vec<String> = ctx
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        got.sort();
        (got == [CLIENT_ID, SERVER_ID]).then_some(())
    });
    assert!(both.is_some(), "both SVIDs in the source within 30 s");
    // The handshake can fail: each missing or wrong credential makes it fail.
    for control in [
        Control::WrongServerId,
        Control::UnrelatedBundle,
        Control::NoClientCert,
    ] {
        match mtls_handshake(&source, 0, control) {
            Ok(h) => panic!("{control:?}: handshake succeeded: {h:?}"),
            Err(e) => println!("mtls: control {control:?} fails as it must: {e}"),
        }
    }

    let attempts: Attempts = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let worker = {
        let (attempts, stop, source) = (Arc::clone(&attempts), Arc::clone(&stop), source.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let at = start.elapsed();
                let r = mtls_handshake(&source, n, Control::Genuine);
                if let Err(e) = &r {
                    println!(
                        "mtls: handshake {n} at {:.1} s FAILED: {e}",
                        at.as_secs_f64()
                    );
                }
                attempts.lock().unwrap().push((at, r));
                n += 1;
                let next = start + Duration::from_secs(u64::try_from(n).unwrap());
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let sleep_until = |t: u64| {
        std::thread::sleep(
            (start + Duration::from_secs(t)).saturating_duration_since(Instant::now()),
        );
    };
    let active = |v: &Value| -> String {
        v["cas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ca| ca["phase"] == "active")
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    sleep_until(8);
    let ca_before = active(&c.server.cli_json(&["ca", "show"]));
    let ca_after = active(&c.server.cli_json(&["ca", "rotate"]));
    let rotated_at = start.elapsed();
    assert_ne!(ca_before, ca_after, "forced rotation activates a fresh CA");
    sleep_until(16);
    let stop_at = start.elapsed();
    c.server.stop();
    sleep_until(20);
    c.server.restart();
    let restarted_at = start.elapsed();
    // Serials the agent had when the server came back: it could sign nothing while down.
    let mut before_restart: std::collections::BTreeSet<String> = source
        .x509_context()
        .unwrap()
        .svids()
        .iter()
        .map(|s| serial_and_aki(s.leaf().as_bytes()).0)
        .collect();
    for (_, r) in attempts.lock().unwrap().iter() {
        if let Ok(h) = r {
            before_restart.insert(h.client_serial.clone());
            before_restart.insert(h.server_serial.clone());
        }
    }
    // Run to >= 30 s and until both workloads handshake with SVIDs the restarted server
    // issued (the agent recovered by itself; rotation continues).
    let fresh_after_restart = |a: &Attempts| {
        let ok: Vec<(Duration, Handshake)> = a
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, r)| r.as_ref().ok().map(|h| (*at, h.clone())))
            .collect();
        fresh_after_restart_ok(&ok, restarted_at, &before_restart)
    };
    let deadline = restarted_at + Duration::from_secs(50);
    while start.elapsed() < Duration::from_secs(30) || !fresh_after_restart(&attempts) {
        if start.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    let attempts = attempts.lock().unwrap().clone();

    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|(at, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{:.1} s: {e}", at.as_secs_f64()))
        })
        .collect();
    let ok: Vec<(Duration, Handshake)> = attempts
        .iter()
        .filter_map(|(at, r)| r.as_ref().ok().map(|h| (*at, h.clone())))
        .collect();
    let max_gap = attempts
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let during_outage = ok
        .iter()
        .filter(|(at, _)| *at > stop_at && *at < restarted_at)
        .count();
    let cas: std::collections::BTreeSet<&str> = ok
        .iter()
        .flat_map(|(_, h)| [h.client_ca.as_str(), h.server_ca.as_str()])
        .collect();
    let serials: std::collections::BTreeSet<&str> = ok
        .iter()
        .flat_map(|(_, h)| [h.client_serial.as_str(), h.server_serial.as_str()])
        .collect();
    let mixed = ok
        .iter()
        .filter(|(_, h)| h.client_ca != h.server_ca)
        .count();
    let max_roots = ok.iter().map(|(_, h)| h.roots).max().unwrap_or(0);
    let min_margin = ok
        .iter()
        .map(|(_, h)| h.margin)
        .fold(f64::INFINITY, f64::min);
    println!(
        "mtls: {} handshakes over {:.1} s, {} failed; max gap {:.1} s; ca rotate at {:.1} s, server stopped {:.1}..{:.1} s ({} handshakes while down); {} distinct SVID serials, {} signing CAs, {} handshakes with leaves from different CAs, up to {} roots in the bundle; closest to expiry: {:.1} s left",
        attempts.len(),
        start.elapsed().as_secs_f64(),
        failed.len(),
        max_gap.as_secs_f64(),
        rotated_at.as_secs_f64(),
        stop_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        during_outage,
        serials.len(),
        cas.len(),
        mixed,
        max_roots,
        min_margin
    );
    assert!(failed.is_empty(), "failed handshakes: {failed:#?}");
    assert!(attempts.len() >= 25, "only {} handshakes", attempts.len());
    assert!(
        max_gap <= Duration::from_secs(3),
        "handshakes stalled for {max_gap:?}"
    );
    assert!(
        during_outage >= 2,
        "handshakes continued while the server was down"
    );
    assert!(
        max_roots >= 2,
        "the rotated bundle (old + new CA) reached the workloads"
    );
    assert!(
        cas.len() >= 2,
        "SVIDs from the new CA were used after the forced rotation: {cas:?}"
    );
    assert!(
        fresh_after_restart_ok(&ok, restarted_at, &before_restart),
        "no handshake with SVIDs issued after the server restart within 50 s:\n{}",
        c.agent.log_tail()
    );
    let last = &ok.last().unwrap().1;
    assert_eq!(
        last.client_ca, last.server_ca,
        "at the end both SVIDs come from the one active CA"
    );
}

fn fresh_after_restart_ok(
    ok: &[(Duration, Handshake)],
    restarted_at: Duration,
    before: &std::collections::BTreeSet<String>,
) -> bool {
    ok.iter().any(|(at, h)| {
        *at > restarted_at
            && !before.contains(&h.client_serial)
            && !before.contains(&h.server_serial)
    })
}
