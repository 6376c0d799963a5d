//! Signed checkpoints of the audit chain head, kept outside the datastore.
//!
//! A hash chain is only consistent with itself: whoever can write the datastore (a
//! database administrator) can delete its newest records, or rewrite a record and
//! recompute every later hash, and the chain still verifies. So the server signs
//! checkpoints of the chain head — sequence number, hash, time, the server's SPIFFE ID
//! and the signing key's id — with an Ed25519 key that never enters the datastore:
//! - `<data_dir>/audit_checkpoint_key.pem` (PKCS#8, 0600, created at first start, like
//!   `ca_state.json` and `jwt_keys.json`; the server refuses to start when its mode lets
//!   anyone but its owner read it);
//! - `<data_dir>/audit_checkpoint_key.pub.pem`, the public key, so an auditor can verify
//!   copies without the private key;
//! - `<data_dir>/audit_checkpoints.jsonl`, one JSON [`Checkpoint`] per line, opened
//!   `O_APPEND` and fsync'd after every line; the server never rewrites it (a line torn by
//!   a crash during the write is cut off at the next start).
//!
//! [`verify_anchored`] checks a log against the checkpoints: a checkpointed record that is
//! gone was deleted (a truncation when the log now ends before it), a checkpointed record
//! whose hash differs was rewritten (or its sequence number reused, when it was written
//! after the checkpoint), and a line whose signature does not verify is named. Records
//! newer than the last checkpoint are protected by the chain alone until the next one:
//! [`Checkpointer`] bounds that window. Sequence numbers are never reused: the datastore
//! appends after the highest head this process wrote or found checkpointed, even when the
//! stored log ends earlier (see `Datastore::anchor_audit`).

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AuditChainError, AuditRecord, ChainHead, VerifyReport, verify_report};
use daemon::state_file;

/// The private key, in the data directory.
pub const KEY_FILE: &str = "audit_checkpoint_key.pem";
/// The public key, beside it.
pub const PUBLIC_KEY_FILE: &str = "audit_checkpoint_key.pub.pem";
/// The checkpoints, one JSON object per line.
pub const CHECKPOINT_FILE: &str = "audit_checkpoints.jsonl";

/// Default: a checkpoint at most this long after the first record it will cover.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default: a checkpoint at once when this many records are not covered yet.
pub const DEFAULT_RECORDS: u64 = 1000;

/// Prefixed to what is signed, so a checkpoint signature means nothing else.
const CONTEXT: &[u8] = b"tessera audit checkpoint v1\n";
/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410 section 4) before the 32 key bytes:
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// How much of the end of the checkpoint file is read to find the last line (a line is a
/// few hundred bytes).
const TAIL: u64 = 64 * 1024;

/// Why the anchor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// A file could not be read, written or understood.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The private key file can be read by others than its owner.
    #[error(
        "audit checkpoint key {path} has mode {mode:04o}: refusing to use it (it must be 0600, readable by the server's user only)"
    )]
    KeyMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key is gone but checkpoints signed with it exist.
    #[error(
        "audit checkpoint key {key} is missing but {checkpoints} holds checkpoints signed with it: restore the key (a new one would leave them unverifiable), or move the checkpoint file aside to start a new anchor"
    )]
    KeyMissing {
        /// The key file.
        key: PathBuf,
        /// The checkpoint file.
        checkpoints: PathBuf,
    },
    /// The newest checkpoint does not verify with the server's key.
    #[error("the last checkpoint in {path} does not verify with {PUBLIC_KEY_FILE}: {reason}")]
    LastCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> AnchorError {
    AnchorError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// An Ed25519 public key that checkpoints are verified with.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PublicKey").field(&self.key_id()).finish()
    }
}

impl PublicKey {
    /// Reads a `PUBLIC KEY` PEM block (SubjectPublicKeyInfo) holding an Ed25519 key.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let block = pem::parse(text).map_err(|e| format!("not PEM: {e}"))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(format!(
                "a PUBLIC KEY PEM block was expected, not {}",
                block.tag()
            ));
        }
        block
            .contents()
            .strip_prefix(SPKI_PREFIX.as_slice())
            .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
            .map(Self)
            .ok_or_else(|| "not an Ed25519 public key".to_owned())
    }

    /// Reads [`Self::from_pem`] from a file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key as a `PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new(
            "PUBLIC KEY",
            [SPKI_PREFIX.as_slice(), self.0.as_slice()].concat(),
        ))
    }

    /// The key's id: the first 8 bytes of SHA-256 of the key, hex.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.0).get(..8).unwrap_or_default())
    }
}

/// One signed checkpoint: the chain had record `seq`, with hash `hash`, at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the head record.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// When the checkpoint was signed (Unix milliseconds).
    pub at_ms: i64,
    /// SPIFFE ID of the server that signed it.
    pub server: String,
    /// Id of the signing key ([`PublicKey::key_id`]).
    pub key_id: String,
    /// Ed25519 signature over `CONTEXT` and the other fields, base64.
    pub sig: String,
}

impl Checkpoint {
    /// What the signature covers: a fixed context, then the canonical JSON array
    /// `[seq, hash, at_ms, server, key_id]`.
    fn message(&self) -> Vec<u8> {
        let body = serde_json::json!([self.seq, self.hash, self.at_ms, self.server, self.key_id]);
        [CONTEXT, body.to_string().as_bytes()].concat()
    }

    /// Checks the signature with `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), String> {
        if self.key_id != key.key_id() {
            return Err(format!(
                "signed by key {}, not by the public key given ({})",
                self.key_id,
                key.key_id()
            ));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.sig)
            .map_err(|_| "the signature is not base64".to_owned())?;
        UnparsedPublicKey::new(&ED25519, key.0)
            .verify(&self.message(), &sig)
            .map_err(|_| "the signature does not verify (the line was altered)".to_owned())
    }

    /// The head it vouches for.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// The server's checkpoint signing key.
pub struct CheckpointSigner {
    key: Ed25519KeyPair,
    public: PublicKey,
    server: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.public.key_id())
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Loads `<dir>/audit_checkpoint_key.pem`, creating it (0600) on first start, and
    /// (re)writes the public key beside it. Refuses a key file others may read, and a
    /// missing key when checkpoints signed by it exist. `server` names the signer in each
    /// checkpoint.
    pub fn load_or_create(dir: &Path, server: &str) -> Result<Self, AnchorError> {
        let path = dir.join(KEY_FILE);
        let pkcs8 = match std::fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(AnchorError::KeyMode { path, mode });
                }
                let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
                let block = pem::parse(&text).map_err(|e| file_error(&path, e))?;
                if block.tag() != "PRIVATE KEY" {
                    return Err(file_error(&path, "not a PRIVATE KEY PEM block"));
                }
                block.into_contents()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let checkpoints = dir.join(CHECKPOINT_FILE);
                if std::fs::metadata(&checkpoints).is_ok_and(|m| m.len() > 0) {
                    return Err(AnchorError::KeyMissing {
                        key: path,
                        checkpoints,
                    });
                }
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| file_error(&path, "generating an Ed25519 key failed"))?;
                let text = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref()));
                state_file::write_atomic(&path, text.as_bytes(), 0o600)
                    .map_err(|e| file_error(&path, e))?;
                tracing::info!(key = %path.display(), "created the audit checkpoint key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(file_error(&path, e)),
        };
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|e| file_error(&path, format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let public = <[u8; 32]>::try_from(key.public_key().as_ref())
            .map(PublicKey)
            .map_err(|_| file_error(&path, "not an Ed25519 key"))?;
        // 0600 like every state file of the server (its directory is 0700 anyway); an
        // auditor is given a copy.
        let public_path = dir.join(PUBLIC_KEY_FILE);
        state_file::write_atomic(&public_path, public.to_pem().as_bytes(), 0o600)
            .map_err(|e| file_error(&public_path, e))?;
        Ok(Self {
            key,
            public,
            server: server.to_owned(),
        })
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// A signed checkpoint of `head` at `at_ms`.
    pub fn sign(&self, head: &ChainHead, at_ms: i64) -> Checkpoint {
        let mut cp = Checkpoint {
            seq: head.seq,
            hash: head.hash.clone(),
            at_ms,
            server: self.server.clone(),
            key_id: self.public.key_id(),
            sig: String::new(),
        };
        let sig = self.key.sign(&cp.message());
        cp.sig = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
        cp
    }
}

/// The append-only checkpoint file.
#[derive(Debug)]
pub struct CheckpointLog {
    path: PathBuf,
    file: std::fs::File,
}

impl CheckpointLog {
    /// Opens `<dir>/audit_checkpoints.jsonl` for appending (created 0600 if missing) and
    /// returns it with its last checkpoint, checked against `key`. A last line without
    /// its newline was torn by a crash during the write and is cut off.
    pub fn open(dir: &Path, key: &PublicKey) -> Result<(Self, Option<Checkpoint>), AnchorError> {
        let path = dir.join(CHECKPOINT_FILE);
        let err = |e: std::io::Error| file_error(&path, e);
        let created = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        if created {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        let len = file.metadata().map_err(err)?.len();
        let start = len.saturating_sub(TAIL);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start)).map_err(err)?;
        file.read_to_end(&mut tail).map_err(err)?;
        if tail.last().is_some_and(|b| *b != b'\n') {
            let keep = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            tail.truncate(keep);
            let new_len = start + keep as u64;
            file.set_len(new_len).map_err(err)?;
            file.sync_all().map_err(err)?;
            tracing::warn!(
                file = %path.display(),
                bytes = len - new_len,
                "cut off a torn last line of the audit checkpoint file (a crash during its write)"
            );
        }
        let last = String::from_utf8_lossy(&tail)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|line| {
                let cp: Checkpoint =
                    serde_json::from_str(line).map_err(|e| AnchorError::LastCheckpoint {
                        path: path.clone(),
                        reason: format!("not a checkpoint: {e}"),
                    })?;
                cp.verify(key)
                    .map_err(|reason| AnchorError::LastCheckpoint {
                        path: path.clone(),
                        reason,
                    })
                    .map(|()| cp)
            })
            .transpose()?;
        Ok((Self { path, file }, last))
    }

    /// Appends one checkpoint as one line and fsyncs it.
    pub fn append(&mut self, cp: &Checkpoint) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cp)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the checkpoints and the public key that verifies them are.
#[derive(Debug, Clone)]
pub struct AnchorFiles {
    /// The checkpoint file.
    pub checkpoints: PathBuf,
    /// The public key (PEM).
    pub public_key: PathBuf,
}

impl AnchorFiles {
    /// The files the server keeps in its data directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            checkpoints: dir.join(CHECKPOINT_FILE),
            public_key: dir.join(PUBLIC_KEY_FILE),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes checkpoints of the heads this server appends.
///
/// When: as soon as `records` records are not covered, else `interval` after the first
/// record that is not, and at shutdown. A checkpoint costs a signature and an fsync, so
/// one per append would put a disk flush on every issuance; batching bounds what a crash
/// can leave unanchored (records of the last `interval`, at most `records` of them) while
/// an idle server writes nothing. The defaults (10 s, 1000 records) keep a busy server at
/// a few hundred bytes every 10 s.
#[derive(Debug)]
pub struct Checkpointer {
    signer: CheckpointSigner,
    state: Mutex<CheckpointState>,
    interval: Duration,
    records: u64,
}

#[derive(Debug)]
struct CheckpointState {
    log: CheckpointLog,
    last: Option<ChainHead>,
}

impl Checkpointer {
    /// A checkpointer appending to `log`, whose last checkpoint covers `last`.
    pub fn new(
        signer: CheckpointSigner,
        log: CheckpointLog,
        last: Option<ChainHead>,
        interval: Duration,
        records: u64,
    ) -> Self {
        Self {
            signer,
            state: Mutex::new(CheckpointState { log, last }),
            interval,
            records: records.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many records after the last checkpoint `head` is.
    fn behind(&self, head: &ChainHead) -> i64 {
        head.seq - self.lock().last.as_ref().map_or(0, |l| l.seq)
    }

    /// Signs and appends a checkpoint of `head` unless the last one is already there;
    /// returns whether it wrote one. Blocks on the fsync.
    pub fn checkpoint(&self, head: &ChainHead) -> std::io::Result<bool> {
        let mut state = self.lock();
        if state.last.as_ref() == Some(head) {
            return Ok(false);
        }
        let cp = self.signer.sign(head, now_ms());
        state.log.append(&cp)?;
        state.last = Some(head.clone());
        Ok(true)
    }

    /// [`Self::checkpoint`] on a blocking thread; failures are logged (the next attempt
    /// covers the same records).
    pub async fn write(self: &Arc<Self>, head: ChainHead) -> bool {
        let me = Arc::clone(self);
        let seq = head.seq;
        match tokio::task::spawn_blocking(move || me.checkpoint(&head)).await {
            Ok(Ok(wrote)) => {
                if wrote {
                    tracing::debug!(seq, "audit checkpoint written");
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(seq, file = %self.lock().log.path().display(), error = %e, "writing an audit checkpoint failed; will retry");
                false
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "audit checkpoint task failed; will retry");
                false
            }
        }
    }

    /// Follows `heads` (what the datastore committed) until `shutdown`, writing
    /// checkpoints as described on the type. The final checkpoint is the caller's, once
    /// nothing appends any more.
    pub async fn run(
        self: Arc<Self>,
        mut heads: watch::Receiver<Option<ChainHead>>,
        shutdown: CancellationToken,
    ) {
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let timer = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let head = tokio::select! {
                () = shutdown.cancelled() => return,
                changed = heads.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let head = heads.borrow_and_update().clone();
                    match head {
                        Some(h) if u64::try_from(self.behind(&h)).is_ok_and(|n| n >= self.records) => h,
                        Some(h) if self.behind(&h) > 0 => {
                            due.get_or_insert_with(|| tokio::time::Instant::now() + self.interval);
                            continue;
                        }
                        _ => continue,
                    }
                }
                () = timer => match heads.borrow().clone() {
                    Some(h) => h,
                    None => {
                        due = None;
                        continue;
                    }
                },
            };
            due = if self.write(head).await {
                None
            } else {
                Some(tokio::time::Instant::now() + self.interval)
            };
        }
    }
}

/// Something the checkpoints show is wrong with the log or with themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorProblem {
    /// The log ends before a checkpointed record.
    Truncated {
        /// The last record in the log (0: none).
        head: i64,
        /// The newest checkpointed record.
        checkpoint: i64,
    },
    /// Checkpointed records are missing inside the log.
    Deleted {
        /// First missing record.
        from: i64,
        /// Last missing record.
        to: i64,
        /// The newest checkpointed record among them.
        checkpoint: i64,
    },
    /// A checkpointed record no longer has the checkpointed hash.
    Rewritten {
        /// The record whose hash differs.
        seq: i64,
        /// The earliest record that may have been changed (the one after the last
        /// checkpoint that still matches).
        first: i64,
    },
    /// A record was written under a sequence number a checkpoint had already covered.
    SequenceReused {
        /// The sequence number.
        seq: i64,
        /// When the checkpoint covered it (Unix ms).
        checkpoint_at_ms: i64,
        /// When the record now stored under it was written (Unix ms).
        record_at_ms: i64,
    },
    /// A checkpoint line's signature does not verify.
    BadSignature {
        /// Line number in the checkpoint file (from 1).
        line: usize,
        /// Why.
        reason: String,
    },
    /// A checkpoint line is not a checkpoint.
    Malformed {
        /// Line number in the checkpoint file (from 1).
        line: usize,
        /// Why.
        reason: String,
    },
    /// A checkpoint covers an older record than the line before it.
    OutOfOrder {
        /// Line number in the checkpoint file (from 1).
        line: usize,
        /// The record it covers.
        seq: i64,
        /// The record the line before covers.
        previous: i64,
    },
}

fn records(from: i64, to: i64) -> String {
    if from == to {
        format!("record {from}")
    } else {
        format!("records {from} to {to}")
    }
}

impl std::fmt::Display for AnchorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { head, checkpoint } => write!(
                f,
                "truncated: the log ends at record {head} but a signed checkpoint covers record {checkpoint} ({} deleted)",
                records(head + 1, *checkpoint)
            ),
            Self::Deleted {
                from,
                to,
                checkpoint,
            } => write!(
                f,
                "truncated: {} deleted (a signed checkpoint covers record {checkpoint})",
                records(*from, *to)
            ),
            Self::Rewritten { seq, first } if first == seq => write!(
                f,
                "rewritten: record {seq} no longer has the hash its signed checkpoint holds"
            ),
            Self::Rewritten { seq, first } => write!(
                f,
                "rewritten: record {seq} no longer has the hash its signed checkpoint holds (the change is in {})",
                records(*first, *seq)
            ),
            Self::SequenceReused {
                seq,
                checkpoint_at_ms,
                record_at_ms,
            } => write!(
                f,
                "sequence number reused: record {seq} was written at {record_at_ms} ms, after a signed checkpoint covered another record {seq} at {checkpoint_at_ms} ms"
            ),
            Self::BadSignature { line, reason } => {
                write!(f, "checkpoint file line {line}: bad signature: {reason}")
            }
            Self::Malformed { line, reason } => {
                write!(f, "checkpoint file line {line}: not a checkpoint: {reason}")
            }
            Self::OutOfOrder {
                line,
                seq,
                previous,
            } => write!(
                f,
                "checkpoint file line {line}: covers record {seq} after a line covering record {previous} (lines were removed or reordered)"
            ),
        }
    }
}

impl AnchorProblem {
    /// The record it concerns, if any.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Self::Truncated { head, .. } => Some(head + 1),
            Self::Deleted { from, .. } => Some(*from),
            Self::Rewritten { first, .. } => Some(*first),
            Self::SequenceReused { seq, .. } => Some(*seq),
            Self::BadSignature { .. } | Self::Malformed { .. } | Self::OutOfOrder { .. } => None,
        }
    }
}

/// The outcome of [`verify_anchored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoredReport {
    /// The chain on its own.
    pub chain: VerifyReport,
    /// Checkpoint lines whose signature verified.
    pub checkpoints: usize,
    /// The newest record a verified checkpoint covers and the log still holds unchanged
    /// (0: none).
    pub anchored: i64,
    /// What the checkpoints show is wrong.
    pub problems: Vec<AnchorProblem>,
}

impl AnchoredReport {
    /// The chain on its own, for when no checkpoints can be read.
    pub fn chain_only(log: &[AuditRecord]) -> Self {
        Self {
            chain: verify_report(log),
            checkpoints: 0,
            anchored: 0,
            problems: Vec::new(),
        }
    }

    /// Whether the chain is intact and agrees with every checkpoint.
    pub fn ok(&self) -> bool {
        self.chain.error.is_none() && self.problems.is_empty()
    }

    /// Every finding, the chain's first.
    pub fn messages(&self) -> Vec<String> {
        self.chain
            .error
            .iter()
            .map(AuditChainError::to_string)
            .chain(self.problems.iter().map(AnchorProblem::to_string))
            .collect()
    }

    /// The lowest record a finding names (0 when none does).
    pub fn first_bad_seq(&self) -> i64 {
        self.chain
            .error
            .iter()
            .map(AuditChainError::seq)
            .chain(self.problems.iter().filter_map(AnchorProblem::seq))
            .min()
            .unwrap_or(0)
    }
}

/// Checks a whole log (in storage order) against the checkpoint file's text, whose
/// signatures are verified with `key`. Read the checkpoints before the log: the server
/// may checkpoint records appended after the log was read, which would look deleted.
pub fn verify_anchored(log: &[AuditRecord], checkpoints: &str, key: &PublicKey) -> AnchoredReport {
    let chain = verify_report(log);
    let by_seq: std::collections::BTreeMap<i64, &AuditRecord> =
        log.iter().map(|r| (r.seq, r)).collect();
    let head = by_seq.keys().next_back().copied().unwrap_or(0);
    let mut problems = Vec::new();
    let mut verified = 0;
    let mut anchored = 0;
    let mut previous: Option<i64> = None;
    let mut mismatch_seen = false;
    let mut truncated_at: Option<i64> = None;
    for (i, line) in checkpoints.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cp: Checkpoint = match serde_json::from_str(line) {
            Ok(cp) => cp,
            Err(e) => {
                problems.push(AnchorProblem::Malformed {
                    line: line_no,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Err(reason) = cp.verify(key) {
            problems.push(AnchorProblem::BadSignature {
                line: line_no,
                reason,
            });
            continue;
        }
        verified += 1;
        if let Some(prev) = previous.filter(|p| cp.seq < *p) {
            problems.push(AnchorProblem::OutOfOrder {
                line: line_no,
                seq: cp.seq,
                previous: prev,
            });
        }
        previous = Some(cp.seq);
        match by_seq.get(&cp.seq) {
            Some(r) if r.hash == cp.hash => anchored = anchored.max(cp.seq),
            Some(r) => {
                // Every later checkpoint differs too once one record changed and the
                // hashes after it were recomputed: the first one says where.
                if !mismatch_seen {
                    mismatch_seen = true;
                    problems.push(if r.at_ms > cp.at_ms {
                        AnchorProblem::SequenceReused {
                            seq: cp.seq,
                            checkpoint_at_ms: cp.at_ms,
                            record_at_ms: r.at_ms,
                        }
                    } else {
                        AnchorProblem::Rewritten {
                            seq: cp.seq,
                            first: anchored + 1,
                        }
                    });
                }
            }
            None if cp.seq > head => {
                truncated_at = Some(truncated_at.map_or(cp.seq, |t| t.max(cp.seq)));
            }
            None => {
                let from = by_seq.range(..cp.seq).next_back().map_or(1, |(s, _)| s + 1);
                let to = by_seq.range(cp.seq..).next().map_or(cp.seq, |(s, _)| s - 1);
                // One finding per gap, naming the newest checkpoint inside it.
                let known = problems.iter_mut().find_map(|p| match p {
                    AnchorProblem::Deleted {
                        from: f,
                        to: t,
                        checkpoint,
                    } if *f == from && *t == to => Some(checkpoint),
                    _ => None,
                });
                match known {
                    Some(checkpoint) => *checkpoint = (*checkpoint).max(cp.seq),
                    None => problems.push(AnchorProblem::Deleted {
                        from,
                        to,
                        checkpoint: cp.seq,
                    }),
                }
            }
        }
    }
    if let Some(checkpoint) = truncated_at {
        problems.push(AnchorProblem::Truncated { head, checkpoint });
    }
    AnchoredReport {
        chain,
        checkpoints: verified,
        anchored,
        problems,
    }
}

#[cfg(test)]
mod tests;
