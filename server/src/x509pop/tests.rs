use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SigningKey as _,
};

use super::*;

pub(crate) struct Ca {
    pub(crate) cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert_der: cert.der().to_vec(),
        issuer: Issuer::new(params, key),
    }
}

pub(crate) fn leaf(ca: &Ca, cn: &str, expired: bool) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![format!("{cn}.nodes.example")]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().to_vec(), key)
}

pub(crate) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn a_good_chain_enrolls_with_the_default_template_and_selectors() {
    let org = ca("org CA");
    let pop = X509Pop::new(vec![org.cert_der.clone()], None, td()).unwrap();
    let (cert, key) = leaf(&org, "node-1", false);
    let chain = vec![cert.clone()];
    let challenge = pop.challenge(&chain, now()).unwrap();
    let sig = key
        .sign(&X509Pop::signed_message(&challenge.nonce))
        .unwrap();
    let (node, id) = pop.answer(&chain, &challenge.id, &sig, now()).unwrap();
    let sha1 = hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &cert,
    ));
    assert_eq!(
        id.to_string(),
        format!("spiffe://example.org/tessera/agent/x509pop/{sha1}")
    );
    let ca_fp = hex::encode(Sha256::digest(&org.cert_der));
    assert_eq!(
        node.selectors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![
            "x509pop:subject:cn:node-1".to_owned(),
            format!("x509pop:ca:fingerprint:{ca_fp}"),
            "x509pop:san:dns:node-1.nodes.example".to_owned(),
        ]
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused_before_any_challenge() {
    let org = ca("org CA");
    let other = ca("other CA");
    let pop = X509Pop::new(vec![org.cert_der], None, td()).unwrap();
    let (cert, _) = leaf(&other, "node-1", false);
    let err = pop.challenge(&[cert], now()).unwrap_err();
    assert!(
        matches!(&err, X509PopError::Untrusted(m) if m.contains("UnknownIssuer")),
        "{err}"
    );
    assert!(pop.pending.lock().unwrap().is_empty());
}

#[test]
fn an_expired_certificate_is_refused() {
    let org = ca("org CA");
    let pop = X509Pop::new(vec![org.cert_der.clone()], None, td()).unwrap();
    let (cert, _) = leaf(&org, "node-1", true);
    let err = pop.challenge(&[cert], now()).unwrap_err();
    assert!(
        matches!(&err, X509PopError::Untrusted(m) if m.contains("CertExpired")),
        "{err}"
    );
}

#[test]
fn a_signature_over_another_nonce_is_refused_and_uses_up_the_challenge() {
    let org = ca("org CA");
    let pop = X509Pop::new(vec![org.cert_der.clone()], None, td()).unwrap();
    let (cert, key) = leaf(&org, "node-1", false);
    let chain = vec![cert];
    let first = pop.challenge(&chain, now()).unwrap();
    let second = pop.challenge(&chain, now()).unwrap();
    assert_ne!(first.nonce, second.nonce);
    // Signed the second nonce, answered the first challenge.
    let sig = key.sign(&X509Pop::signed_message(&second.nonce)).unwrap();
    assert_eq!(
        pop.answer(&chain, &first.id, &sig, now()).unwrap_err(),
        X509PopError::BadSignature
    );
    // The first challenge is gone even though its answer failed.
    let good = key.sign(&X509Pop::signed_message(&first.nonce)).unwrap();
    assert_eq!(
        pop.answer(&chain, &first.id, &good, now()).unwrap_err(),
        X509PopError::BadChallenge
    );
    // A signature without the domain string does not count either.
    let bare = key.sign(&second.nonce).unwrap();
    assert_eq!(
        pop.answer(&chain, &second.id, &bare, now()).unwrap_err(),
        X509PopError::BadSignature
    );
}

#[test]
fn a_replayed_answer_is_refused() {
    let org = ca("org CA");
    let pop = X509Pop::new(vec![org.cert_der.clone()], None, td()).unwrap();
    let (cert, key) = leaf(&org, "node-1", false);
    let chain = vec![cert];
    let challenge = pop.challenge(&chain, now()).unwrap();
    let sig = key
        .sign(&X509Pop::signed_message(&challenge.nonce))
        .unwrap();
    pop.answer(&chain, &challenge.id, &sig, now()).unwrap();
    assert_eq!(
        pop.answer(&chain, &challenge.id, &sig, now()).unwrap_err(),
        X509PopError::BadChallenge
    );
}

#[test]
fn a_challenge_is_bound_to_its_certificate_and_expires() {
    let org = ca("org CA");
    let pop = X509Pop::new(vec![org.cert_der.clone()], None, td()).unwrap();
    let (cert_a, _) = leaf(&org, "node-a", false);
    let (cert_b, key_b) = leaf(&org, "node-b", false);
    let challenge = pop.challenge(&[cert_a], now()).unwrap();
    let sig = key_b
        .sign(&X509Pop::signed_message(&challenge.nonce))
        .unwrap();
    assert_eq!(
        pop.answer(std::slice::from_ref(&cert_b), &challenge.id, &sig, now())
            .unwrap_err(),
        X509PopError::BadChallenge
    );
    let short = X509Pop::new(vec![org.cert_der], None, td())
        .unwrap()
        .with_challenge_ttl(Duration::from_millis(1));
    let challenge = short
        .challenge(std::slice::from_ref(&cert_b), now())
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let sig = key_b
        .sign(&X509Pop::signed_message(&challenge.nonce))
        .unwrap();
    assert_eq!(
        short
            .answer(&[cert_b], &challenge.id, &sig, now())
            .unwrap_err(),
        X509PopError::BadChallenge
    );
}

#[test]
fn templates_use_only_known_fields_and_stay_under_the_node_prefix() {
    let org = ca("org CA");
    let anchors = || vec![org.cert_der.clone()];
    let pop = X509Pop::new(anchors(), Some("/tessera/agent/x509pop/{subject_cn}"), td()).unwrap();
    let (cert, _) = leaf(&org, "node-7", false);
    let node = pop.verify_chain(&[cert], now()).unwrap();
    assert_eq!(
        pop.agent_id(&node).unwrap().to_string(),
        "spiffe://example.org/tessera/agent/x509pop/node-7"
    );
    for bad in [
        "/tessera/server/{fingerprint}",
        "/workload/{fingerprint}",
        "/tessera/agent/{issuer}",
        "/tessera/agent/{fingerprint",
        "/tessera/agent/",
    ] {
        assert!(X509Pop::new(anchors(), Some(bad), td()).is_err(), "{bad}");
    }
    // A CN that would leave its segment is refused, never escaped into a path.
    let mut evil = node;
    evil.subject_cn = Some("../../server".to_owned());
    assert!(matches!(
        pop.agent_id(&evil),
        Err(X509PopError::BadAgentId(_))
    ));
    evil.subject_cn = Some("..".to_owned());
    assert!(matches!(
        pop.agent_id(&evil),
        Err(X509PopError::BadAgentId(_))
    ));
}
