//! x509pop through the node attestor, on a real datastore.

use std::time::SystemTime;

use rcgen::SigningKey as _;

use super::*;
use crate::datastore::sqlite::SqliteDatastore;
use crate::x509pop::tests::{ca, leaf, td};

const HOUR: Duration = Duration::from_secs(3600);

fn csr() -> Vec<u8> {
    let key = common::svid::generate_key().unwrap();
    common::svid::csr_for(&key).unwrap()
}

#[tokio::test]
async fn replays_and_foreign_certificates_change_nothing_and_eviction_does_not_lock_out() {
    let dir = tempfile::tempdir().unwrap();
    let ds: Arc<dyn Datastore> = Arc::new(
        SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap(),
    );
    let svid_ca = Arc::new(
        CaSet::load_or_create(dir.path(), &td(), 24 * HOUR, None, SystemTime::now()).unwrap(),
    );
    let org = ca("org CA");
    let pop = X509Pop::new(vec![org.cert_der.clone()], None, td()).unwrap();
    let attestor = NodeAttestor::new(Arc::clone(&ds), svid_ca, Events::default(), td(), HOUR)
        .with_x509pop(Some(Arc::new(pop)));
    let (cert, key) = leaf(&org, "node-1", false);
    let chain = vec![cert];

    let challenge = attestor.x509pop_challenge(&chain).await.unwrap();
    let sig = key
        .sign(&X509Pop::signed_message(&challenge.nonce))
        .unwrap();
    let (id, issued) = attestor
        .attest_with_x509pop(&chain, &challenge.id, &sig, &csr())
        .await
        .unwrap();
    let record = ds.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(record.attestation_type, "x509pop");
    assert_eq!(record.serial, issued.serial_hex);

    // A replayed answer is refused and leaves the record as it was.
    let err = attestor
        .attest_with_x509pop(&chain, &challenge.id, &sig, &csr())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeAttestationError::X509Pop(X509PopError::BadChallenge)
        ),
        "{err}"
    );
    assert_eq!(ds.get_agent(&id).await.unwrap().unwrap(), record);

    // A certificate from another CA gets no challenge and enrolls nothing.
    let other = ca("other CA");
    let (foreign, _) = leaf(&other, "node-2", false);
    let err = attestor.x509pop_challenge(&[foreign]).await.unwrap_err();
    assert!(
        matches!(
            err,
            NodeAttestationError::X509Pop(X509PopError::Untrusted(_))
        ),
        "{err}"
    );
    assert_eq!(ds.list_agents().await.unwrap().len(), 1);

    // Evicted, the node enrolls again with the same certificate.
    attestor.evict(id.as_str(), "operator").await.unwrap();
    assert!(ds.get_agent(&id).await.unwrap().is_none());
    let challenge = attestor.x509pop_challenge(&chain).await.unwrap();
    let sig = key
        .sign(&X509Pop::signed_message(&challenge.nonce))
        .unwrap();
    let (again, issued) = attestor
        .attest_with_x509pop(&chain, &challenge.id, &sig, &csr())
        .await
        .unwrap();
    assert_eq!(again, id);
    assert_eq!(
        ds.get_agent(&id).await.unwrap().unwrap().serial,
        issued.serial_hex
    );
}

#[tokio::test]
async fn a_server_without_anchors_refuses_x509pop() {
    let dir = tempfile::tempdir().unwrap();
    let ds: Arc<dyn Datastore> = Arc::new(
        SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap(),
    );
    let svid_ca = Arc::new(
        CaSet::load_or_create(dir.path(), &td(), 24 * HOUR, None, SystemTime::now()).unwrap(),
    );
    let attestor = NodeAttestor::new(Arc::clone(&ds), svid_ca, Events::default(), td(), HOUR);
    let org = ca("org CA");
    let (cert, _) = leaf(&org, "node-1", false);
    let err = attestor.x509pop_challenge(&[cert]).await.unwrap_err();
    assert!(
        matches!(err, NodeAttestationError::X509Pop(X509PopError::Disabled)),
        "{err}"
    );
}
