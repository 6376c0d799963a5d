use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use serde_json::json;

use super::*;
use crate::audit::{AuditEvent, AuditKind, chain, record_hash};

const SERVER: &str = "spiffe://example.org/tessera/server";

fn log(n: usize, at_ms: i64) -> Vec<AuditRecord> {
    let events: Vec<AuditEvent> = (0..n)
        .map(|i| AuditEvent::new(AuditKind::EntryCreated, format!("e{i}"), json!({"i": i})))
        .collect();
    chain(None, at_ms, &events)
}

fn head(r: &AuditRecord) -> ChainHead {
    ChainHead {
        seq: r.seq,
        hash: r.hash.clone(),
    }
}

/// A signer in a fresh directory, and checkpoint lines of `seqs` of `log` signed at 2000.
fn signed(log: &[AuditRecord], seqs: &[i64]) -> (tempfile::TempDir, CheckpointSigner, String) {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap();
    let mut text = String::new();
    for s in seqs {
        let r = log.iter().find(|r| r.seq == *s).unwrap();
        text.push_str(&serde_json::to_string(&signer.sign(&head(r), 2000)).unwrap());
        text.push('\n');
    }
    (dir, signer, text)
}

#[test]
fn a_checkpoint_verifies_only_unaltered_and_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap();
    let h = ChainHead {
        seq: 7,
        hash: "ab".repeat(32),
    };
    let cp = signer.sign(&h, 1234);
    assert_eq!(cp.head(), h);
    assert_eq!(cp.server, SERVER);
    cp.verify(signer.public_key()).unwrap();

    // The public key written beside it verifies too, read back from PEM.
    let public = PublicKey::read(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(&public, signer.public_key());
    cp.verify(&public).unwrap();

    // Any field changed: the signature no longer verifies.
    let altered: [fn(&mut Checkpoint); 5] = [
        |c| c.seq += 1,
        |c| c.hash = "cd".repeat(32),
        |c| c.at_ms += 1,
        |c| c.server = "spiffe://example.org/other".into(),
        |c| c.sig = base64::engine::general_purpose::STANDARD.encode([0u8; 64]),
    ];
    for alter in altered {
        let mut bad = cp.clone();
        alter(&mut bad);
        let err = bad.verify(&public).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
    }
    // Another key: refused, naming both keys.
    let other_dir = tempfile::tempdir().unwrap();
    let other = CheckpointSigner::load_or_create(other_dir.path(), SERVER).unwrap();
    let err = cp.verify(other.public_key()).unwrap_err();
    assert!(
        err.contains(&cp.key_id) && err.contains(&other.public_key().key_id()),
        "{err}"
    );

    // The same key is loaded again at the next start.
    let again = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap();
    assert_eq!(again.public_key(), signer.public_key());
    assert!(
        PublicKey::from_pem("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
            .is_err()
    );
}

#[test]
fn the_key_file_is_0600_and_a_wider_mode_or_a_lost_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap();
    let key = dir.path().join(KEY_FILE);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap_err();
    assert!(
        matches!(err, AnchorError::KeyMode { mode: 0o640, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("0640") && err.to_string().contains(KEY_FILE),
        "{err}"
    );

    // Checkpoints exist, the key is gone: a new key would orphan them.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (mut file, last) = CheckpointLog::open(dir.path(), signer.public_key()).unwrap();
    assert_eq!(last, None);
    file.append(&signer.sign(
        &ChainHead {
            seq: 1,
            hash: "00".repeat(32),
        },
        1,
    ))
    .unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap_err();
    assert!(matches!(err, AnchorError::KeyMissing { .. }), "{err}");
}

#[test]
fn the_log_appends_returns_its_last_checkpoint_and_cuts_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap();
    let key = signer.public_key().clone();
    let (mut file, _) = CheckpointLog::open(dir.path(), &key).unwrap();
    let path = dir.path().join(CHECKPOINT_FILE);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let a = signer.sign(
        &ChainHead {
            seq: 3,
            hash: "aa".repeat(32),
        },
        10,
    );
    let b = signer.sign(
        &ChainHead {
            seq: 5,
            hash: "bb".repeat(32),
        },
        20,
    );
    file.append(&a).unwrap();
    file.append(&b).unwrap();
    drop(file);
    let (_, last) = CheckpointLog::open(dir.path(), &key).unwrap();
    assert_eq!(last, Some(b.clone()));

    // A crash in the middle of a write: the torn line goes, the one before is the last.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":6,\"ha");
    std::fs::write(&path, &text).unwrap();
    let (mut file, last) = CheckpointLog::open(dir.path(), &key).unwrap();
    assert_eq!(last, Some(b));
    let c = signer.sign(
        &ChainHead {
            seq: 6,
            hash: "cc".repeat(32),
        },
        30,
    );
    file.append(&c).unwrap();
    let lines: Vec<Checkpoint> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    // A last line that does not verify: the server refuses to go on from it.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"seq\":6", "\"seq\":60");
    std::fs::write(&path, text).unwrap();
    let err = CheckpointLog::open(dir.path(), &key).unwrap_err();
    assert!(matches!(err, AnchorError::LastCheckpoint { .. }), "{err}");
}

#[test]
fn an_intact_log_agrees_with_its_checkpoints() {
    let log = log(6, 1000);
    let (_dir, signer, text) = signed(&log, &[2, 4, 6]);
    let report = verify_anchored(&log, &text, signer.public_key());
    assert!(report.ok(), "{:?}", report.messages());
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.anchored, 6);
    assert_eq!(report.first_bad_seq(), 0);
    // No checkpoint yet: the chain alone.
    assert!(verify_anchored(&log, "", signer.public_key()).ok());
}

#[test]
fn truncation_is_reported_though_the_shorter_chain_verifies() {
    let log = log(6, 1000);
    let (_dir, signer, text) = signed(&log, &[2, 5]);
    let report = verify_anchored(&log[..3], &text, signer.public_key());
    assert_eq!(report.chain.error, None, "the chain alone cannot tell");
    assert_eq!(
        report.problems,
        vec![AnchorProblem::Truncated {
            head: 3,
            checkpoint: 5
        }]
    );
    assert_eq!(report.first_bad_seq(), 4);
    let msg = report.messages().join("\n");
    assert!(
        msg.contains("truncated") && msg.contains("records 4 to 5"),
        "{msg}"
    );
    // Everything deleted.
    let report = verify_anchored(&[], &text, signer.public_key());
    assert_eq!(
        report.problems,
        vec![AnchorProblem::Truncated {
            head: 0,
            checkpoint: 5
        }]
    );
}

#[test]
fn a_truncation_the_log_has_grown_past_is_still_reported() {
    let full = log(8, 1000);
    let (_dir, signer, text) = signed(&full, &[2, 4, 5]);
    // Records 4 and 5 deleted, 6.. kept (as appended after the deletion).
    let log: Vec<AuditRecord> = full
        .iter()
        .filter(|r| r.seq < 4 || r.seq > 5)
        .cloned()
        .collect();
    let report = verify_anchored(&log, &text, signer.public_key());
    assert_eq!(
        report.problems,
        vec![AnchorProblem::Deleted {
            from: 4,
            to: 5,
            checkpoint: 5
        }]
    );
    assert!(report.chain.error.is_some());
    assert!(
        report
            .messages()
            .join("\n")
            .contains("truncated: records 4 to 5 deleted")
    );
}

/// Rewrites record `seq`'s subject and recomputes every later hash, as somebody with
/// write access to the datastore could.
fn rewrite(log: &mut [AuditRecord], seq: i64) {
    let mut prev = crate::audit::GENESIS.to_owned();
    for r in log.iter_mut() {
        if r.seq == seq {
            r.event.subject = "forged".into();
        }
        r.prev_hash.clone_from(&prev);
        r.hash = record_hash(r.seq, r.at_ms, &r.event, &r.prev_hash);
        prev.clone_from(&r.hash);
    }
}

#[test]
fn a_rewrite_with_recomputed_hashes_is_named() {
    let good = log(6, 1000);
    let (_dir, signer, text) = signed(&good, &[1, 2, 3, 4, 5, 6]);
    let mut forged = good.clone();
    rewrite(&mut forged, 4);
    let report = verify_anchored(&forged, &text, signer.public_key());
    assert_eq!(report.chain.error, None, "the chain alone cannot tell");
    assert_eq!(
        report.problems,
        vec![AnchorProblem::Rewritten { seq: 4, first: 4 }]
    );
    assert_eq!(report.first_bad_seq(), 4);
    assert!(report.messages()[0].contains("rewritten: record 4 "));

    // With checkpoints further apart, the range the change is in.
    let (_dir, signer, text) = signed(&good, &[2, 5]);
    let report = verify_anchored(&forged, &text, signer.public_key());
    assert_eq!(
        report.problems,
        vec![AnchorProblem::Rewritten { seq: 5, first: 3 }]
    );
    assert!(report.messages()[0].contains("records 3 to 5"));
}

#[test]
fn a_reused_sequence_number_is_named() {
    let good = log(5, 1000);
    let (_dir, signer, text) = signed(&good, &[3, 5]);
    // Records 4 and 5 deleted, two others appended after the checkpoints under 4 and 5.
    let later = chain(
        Some((3, good[2].hash.clone())),
        5000,
        &[
            AuditEvent::new(AuditKind::EntryDeleted, "x", json!({})),
            AuditEvent::new(AuditKind::EntryDeleted, "y", json!({})),
        ],
    );
    let reused: Vec<AuditRecord> = good[..3].iter().chain(&later).cloned().collect();
    let report = verify_anchored(&reused, &text, signer.public_key());
    assert_eq!(report.chain.error, None);
    assert_eq!(
        report.problems,
        vec![AnchorProblem::SequenceReused {
            seq: 5,
            checkpoint_at_ms: 2000,
            record_at_ms: 5000
        }]
    );
    assert!(report.messages()[0].contains("sequence number reused: record 5"));
}

#[test]
fn altered_malformed_and_reordered_checkpoint_lines_are_named() {
    let good = log(6, 1000);
    let (_dir, signer, text) = signed(&good, &[2, 4, 6]);
    let lines: Vec<&str> = text.lines().collect();
    let tampered = format!(
        "{}\n{}\nnot json\n{}\n{}\n",
        lines[0],
        lines[1].replace("\"seq\":4", "\"seq\":3"),
        lines[2],
        lines[0]
    );
    let report = verify_anchored(&good, &tampered, signer.public_key());
    assert_eq!(report.checkpoints, 3);
    let msgs = report.messages();
    assert!(
        matches!(
            report.problems[0],
            AnchorProblem::BadSignature { line: 2, .. }
        ),
        "{msgs:?}"
    );
    assert!(
        msgs[0].contains("checkpoint file line 2: bad signature"),
        "{msgs:?}"
    );
    assert!(
        matches!(report.problems[1], AnchorProblem::Malformed { line: 3, .. }),
        "{msgs:?}"
    );
    assert!(
        matches!(
            report.problems[2],
            AnchorProblem::OutOfOrder {
                line: 5,
                seq: 2,
                previous: 6
            }
        ),
        "{msgs:?}"
    );
    assert!(!report.ok());
}

#[tokio::test(start_paused = true)]
async fn the_checkpointer_batches_by_count_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::load_or_create(dir.path(), SERVER).unwrap();
    let key = signer.public_key().clone();
    let (file, _) = CheckpointLog::open(dir.path(), &key).unwrap();
    let cp = Arc::new(Checkpointer::new(
        signer,
        file,
        None,
        Duration::from_secs(10),
        3,
    ));
    let (tx, rx) = watch::channel(None);
    let shutdown = CancellationToken::new();
    let job = tokio::spawn(Arc::clone(&cp).run(rx, shutdown.clone()));
    let lines = || -> Vec<Checkpoint> {
        std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let h = |seq: i64| ChainHead {
        seq,
        hash: format!("{seq:064}"),
    };
    // Waits (in paused time) until the file holds `n` lines.
    async fn until(n: usize, lines: &dyn Fn() -> Vec<Checkpoint>) -> Vec<Checkpoint> {
        for _ in 0..200 {
            let l = lines();
            if l.len() >= n {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no checkpoint {n}");
    }

    // Two records: not enough for a checkpoint at once...
    tx.send_replace(Some(h(2)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(lines().is_empty());
    // ...but 10 s after the first one, a checkpoint of the head then.
    let got = until(1, &lines).await;
    assert_eq!(got[0].seq, 2);
    // Three more records: at once.
    tx.send_replace(Some(h(5)));
    let got = until(2, &lines).await;
    assert_eq!(got[1].seq, 5);
    for c in &got {
        c.verify(&key).unwrap();
    }
    // Nothing new: nothing written, however long.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(lines().len(), 2);
    // At shutdown the owner writes the last head; the same head twice is one line.
    tx.send_replace(Some(h(6)));
    shutdown.cancel();
    job.await.unwrap();
    assert!(cp.write(h(6)).await);
    assert!(cp.write(h(6)).await);
    assert_eq!(lines().iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 5, 6]);
}
