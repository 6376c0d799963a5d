//! Security Event Token push: every task end, whatever ended it (completed, failed,
//! cancelled, revoked, expired), and the start of every break-glass task, is POSTed to
//! each configured receiver as a signed SET (RFC 8417) over HTTPS (RFC 8935 push
//! delivery), so relying parties that never ask Tessera hear of it.
//!
//! The audit log is the source of truth: each receiver has its own worker that tails the
//! log for `task.ended` and `task.break_glass` records from a cursor (the last sequence
//! number delivered or given up for that receiver). The cursor is in the datastore
//! (`set_push_cursors`, one row per receiver) and shared by every server on it: a server
//! pushes to a receiver only while it holds the receiver's lease ([`LEASE`], renewed
//! while it pushes, taken over by another server once it runs out, given up at
//! shutdown), and moves the cursor only while it holds it, in the transaction that
//! appends the `set.delivered` or `set.abandoned` record (compare-and-set on holder and
//! cursor). Each event therefore reaches each receiver once across the servers, not once
//! per server, and is recorded once; only a server that loses the lease in the middle of
//! a push (it stalled past [`LEASE`]) can make another send that event again, with the
//! same `jti`. The cursor is also kept in [`CURSOR_FILE`] (0600) in the data directory,
//! which seeds a receiver the datastore has no cursor for yet (a server upgraded from
//! before shared cursors). A receiver that is down, or a server restart, therefore
//! loses nothing, and one receiver never delays another (one worker each, all polled in
//! one service). A receiver's events go out in log order, one at a time: its queue is
//! the log itself, so memory holds one event per receiver however long it is down.
//!
//! A delivery is a 2xx answer (202 expected). Anything else, or no answer within
//! [`REQUEST_TIMEOUT`], is retried after [`FIRST_RETRY`], doubling up to [`MAX_RETRY`],
//! until the event is `set_give_up_after` old (default
//! [`crate::config::DEFAULT_SET_GIVE_UP_AFTER`]); then it is
//! abandoned. Both outcomes are
//! audited (`set.delivered`, `set.abandoned`, with receiver, `jti` and attempts). A SET's
//! `jti` is derived from the audit record's hash and the receiver's URL: the retries of one
//! event, after a restart or a takeover by another server too, all carry the same `jti`,
//! so a receiver can deduplicate by it. Response bodies are
//! never read.
//!
//! A worker with no cursor yet starts at the log's current end: configuring a receiver
//! does not replay history.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditKind, AuditRecord, SERVER_ACTOR};
use crate::clock::now_unix;
use crate::config::SetPushConfig;
use crate::datastore::Datastore;
use crate::jwt_keys::JwtKeyManager;
use daemon::state_file;

/// The cursor file in the data directory: `{ "<receiver URL>": <last seq> }`.
pub const CURSOR_FILE: &str = "set-push-cursor.json";
/// The CAEP event type every SET carries.
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// `Content-Type` of a pushed SET (RFC 8935 §2).
pub const SET_CONTENT_TYPE: &str = "application/secevent+jwt";
/// Wait before the first retry.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// Connect, TLS handshake, request and response head, together.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the log is read even when this server appended nothing and the change feed
/// said nothing (another server sharing the datastore may have ended a task; the feed
/// wakes the worker at once on PostgreSQL, this is the fallback).
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long a server's claim on a receiver lasts unless renewed (every `POLL_INTERVAL`
/// while idle, before each attempt and every `RENEW_EVERY` while waiting to retry).
/// Longer than [`REQUEST_TIMEOUT`], so an attempt in flight never outlives the lease; it
/// is also how long a server that died holding a receiver delays its events. Servers'
/// clocks must agree to well within it.
pub const LEASE: Duration = Duration::from_secs(20);
/// How often the lease is renewed while waiting to retry.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Why SET push could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetPushError {
    /// The receivers' CA file could not be read or holds no certificate.
    #[error("{path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The cursor file could not be read or parsed.
    #[error("{path}: {message}")]
    Cursor {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Whether `record` becomes a SET: a task end, or a break-glass task's start.
pub fn is_pushed(record: &AuditRecord) -> bool {
    let kind = record.event.kind.as_str();
    kind == AuditKind::TaskEnded.as_str() || kind == AuditKind::TaskBreakGlass.as_str()
}

/// The SET claims announcing what `record` recorded: a task end (`task.ended`, CAEP
/// credential-change `revoke`) or a break-glass task's start (`task.break_glass`,
/// `create`); `None` for any other record. Events about break-glass tasks carry
/// `break_glass: true`, the requester and the reason. Pure: `iat` and `jti` are given.
pub fn security_event(
    record: &AuditRecord,
    issuer: &str,
    audience: &str,
    iat: i64,
    jti: &str,
) -> Option<Map<String, Value>> {
    if !is_pushed(record) {
        return None;
    }
    let task_id = record.event.task_id.as_deref()?;
    let detail = &record.event.detail;
    let started = record.event.kind == AuditKind::TaskBreakGlass.as_str();
    let by = if started {
        detail["requester"].as_str().unwrap_or_default()
    } else {
        detail["by"].as_str().unwrap_or_default()
    };
    // CAEP's initiating_entity: the server's own schedule (expiry), an operator, or the
    // workload itself.
    let initiating = if by == SERVER_ACTOR {
        "policy"
    } else if by.starts_with("user:") {
        "admin"
    } else {
        "user"
    };
    // RFC 9493 subject identifier, format "uri": the task's SPIFFE ID.
    let subject = json!({ "format": "uri", "uri": record.event.subject });
    let mut claims = Map::new();
    claims.insert("iss".into(), issuer.into());
    claims.insert("iat".into(), iat.into());
    claims.insert("jti".into(), jti.into());
    claims.insert("aud".into(), audience.into());
    claims.insert("txn".into(), record.hash.as_str().into());
    claims.insert("sub_id".into(), subject.clone());
    let mut event = json!({
        // A task's X.509-SVIDs and JWT-SVIDs start and end together; CAEP names one type.
        "credential_type": "x509",
        "change_type": if started { "create" } else { "revoke" },
        "event_timestamp": record.at_ms / 1000,
        "initiating_entity": initiating,
        "reason_admin": { "en": detail["reason"] },
        "subject": subject,
        "task_id": task_id,
        "task_state": if started { Value::from("active") } else { detail["state"].clone() },
        "credentials": ["x509-svid", "jwt-svid"],
    });
    if started || detail["break_glass"] == true {
        event["break_glass"] = true.into();
        event["requester"] = detail["requester"].clone();
        if started {
            event["task_deadline"] = detail["deadline"].clone();
        }
    }
    claims.insert("events".into(), json!({ CREDENTIAL_CHANGE: event }));
    Some(claims)
}

/// The `jti` of the SET of `record` for `receiver`: a UUID-shaped digest of both, the same
/// on every attempt and every server.
pub fn jti(record_hash: &str, receiver: &str) -> String {
    let d = Sha256::digest(format!("{record_hash}\n{receiver}").as_bytes());
    let h = hex::encode(d.get(..16).unwrap_or_default());
    let part = |a: usize, b: usize| h.get(a..b).unwrap_or_default();
    format!(
        "{}-{}-{}-{}-{}",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

/// The wait before retry number `attempt` (1 = the first retry).
pub fn backoff(attempt: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_RETRY)
}

/// Per-receiver cursors, persisted as one 0600 file.
#[derive(Debug)]
struct Cursors {
    path: PathBuf,
    seqs: Mutex<BTreeMap<String, i64>>,
}

impl Cursors {
    fn load(dir: &Path) -> Result<Self, SetPushError> {
        let path = dir.join(CURSOR_FILE);
        let err = |message: String| SetPushError::Cursor {
            path: path.display().to_string(),
            message,
        };
        let seqs = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            path,
            seqs: Mutex::new(seqs),
        })
    }

    fn get(&self, receiver: &str) -> Option<i64> {
        self.lock().get(receiver).copied()
    }

    fn set(&self, receiver: &str, seq: i64) {
        let mut seqs = self.lock();
        seqs.insert(receiver.to_owned(), seq);
        let written = serde_json::to_vec_pretty(&*seqs)
            .map_err(std::io::Error::other)
            .and_then(|text| state_file::write_atomic(&self.path, &text, 0o600));
        if let Err(e) = written {
            // The event is done; at worst it is sent again (same jti) after a restart.
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the SET push cursor");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
        self.seqs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Pushes task ends to the configured receivers.
pub struct SetPusher {
    config: SetPushConfig,
    tls: tokio_rustls::TlsConnector,
    ds: Arc<dyn Datastore>,
    jwt: Arc<JwtKeyManager>,
    cursors: Cursors,
    /// This server's instance id: who holds a receiver's lease.
    holder: String,
    /// Bumped by the change feed when another server changed a task (see
    /// [`Self::woken_by`]).
    wake: Option<tokio::sync::watch::Receiver<u64>>,
}

impl std::fmt::Debug for SetPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetPusher")
            .field("receivers", &self.config.receivers)
            .finish_non_exhaustive()
    }
}

/// How pushing one event ended.
enum Outcome {
    /// Delivered (`set.delivered`) or given up (`set.abandoned`), after this many attempts.
    Done(AuditKind, u32),
    /// Not a pushable event (no task id): passed over without a record.
    Skipped,
    /// Shutdown came first: the cursor stays before the event.
    Shutdown,
    /// Another server holds the receiver now and pushes from the shared cursor.
    Lost,
}

/// The outcome of one POST.
enum Attempt {
    Delivered(u16),
    Failed(String),
}

impl SetPusher {
    /// Reads the receivers' roots and the cursors; fails on an unreadable file.
    pub fn new(
        config: SetPushConfig,
        data_dir: &Path,
        ds: Arc<dyn Datastore>,
        jwt: Arc<JwtKeyManager>,
        holder: String,
    ) -> Result<Self, SetPushError> {
        let ca_err = |message: String| SetPushError::CaFile {
            path: config.ca_file.display().to_string(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.ca_file)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_err("no certificate in the file".into()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            cursors: Cursors::load(data_dir)?,
            config,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            ds,
            jwt,
            holder,
            wake: None,
        })
    }

    /// Also reads the log whenever `wake` changes (the change feed saw another server
    /// change a task), not only on this server's appends and every `POLL_INTERVAL`.
    #[must_use]
    pub fn woken_by(mut self, wake: tokio::sync::watch::Receiver<u64>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Runs one worker per receiver until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let workers = self
            .config
            .receivers
            .iter()
            .map(|r| Arc::clone(&self).receiver(r.clone(), shutdown.clone()));
        futures::future::join_all(workers).await;
        Ok(())
    }

    /// Tails the log for `receiver` and delivers each task end and break-glass start, in
    /// order, while this server holds the receiver's lease; gives it up at shutdown.
    async fn receiver(self: Arc<Self>, receiver: String, shutdown: CancellationToken) {
        self.push_while_held(&receiver, &shutdown).await;
        if let Err(e) = self.ds.release_set_receiver(&receiver, &self.holder).await {
            tracing::warn!(receiver = %receiver, error = %e, "cannot release the SET push lease; another server takes the receiver over when it runs out");
        }
    }

    /// Where a receiver without a shared cursor starts: this server's cursor file (a
    /// datastore from before shared cursors), else the log's current end (configuring a
    /// receiver does not replay history).
    async fn start_of(&self, receiver: &str) -> Result<i64, String> {
        if let Some(seq) = self.cursors.get(receiver) {
            return Ok(seq);
        }
        match self.ds.audit_head().await {
            Ok(head) => Ok(head.map_or(0, |h| h.seq)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Takes or renews this server's lease on `receiver`; its cursor while held.
    async fn claim(&self, receiver: &str, start: i64) -> Result<Option<i64>, String> {
        let now_ms = crate::clock::now_unix_ms();
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        self.ds
            .claim_set_receiver(
                receiver,
                &self.holder,
                start,
                now_ms,
                now_ms.saturating_add(lease),
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn push_while_held(&self, receiver: &str, shutdown: &CancellationToken) {
        let mut heads = self.ds.audit_heads();
        let mut heads_open = true;
        let mut wake = self.wake.clone();
        let mut behind_warned = false;
        // The cursor while this server holds the receiver, and when the lease was renewed.
        let mut held: Option<(i64, tokio::time::Instant)> = None;
        let mut tried: Option<tokio::time::Instant> = None;
        let start = loop {
            match self.start_of(receiver).await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::warn!(receiver, error = %e, "cannot read the audit log head");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
            }
        };
        tracing::info!(receiver, "pushing task ends as Security Event Tokens");
        loop {
            // The shared cursor, while this server holds the receiver. Nobody else moves
            // it meanwhile, so a lease renewed less than RENEW_EVERY ago is not renewed
            // again on every append.
            let fresh =
                held.filter(|(_, at): &(i64, tokio::time::Instant)| at.elapsed() < RENEW_EVERY);
            // Another server's lease is asked after at most every POLL_INTERVAL.
            let waiting = held.is_none()
                && tried.is_some_and(|at: tokio::time::Instant| at.elapsed() < POLL_INTERVAL);
            let cursor = if let Some((cursor, _)) = fresh {
                Some(cursor)
            } else if waiting {
                None
            } else {
                tried = Some(tokio::time::Instant::now());
                match self.claim(receiver, start).await {
                    Ok(Some(cursor)) => {
                        if held.is_none() {
                            tracing::info!(receiver, cursor, "this server pushes to the receiver");
                        }
                        held = Some((cursor, tokio::time::Instant::now()));
                        Some(cursor)
                    }
                    Ok(None) => {
                        if held.take().is_some() {
                            tracing::info!(receiver, "another server pushes to the receiver now");
                        }
                        None
                    }
                    Err(e) => {
                        held = None;
                        tracing::warn!(receiver, error = %e, "cannot claim the SET push receiver");
                        None
                    }
                }
            };
            if let Some(mut cursor) = cursor {
                // Everything appended since the cursor.
                let end = match self.ds.audit_head().await {
                    Ok(h) => h.map_or(0, |h| h.seq),
                    Err(e) => {
                        tracing::warn!(receiver, error = %e, "cannot read the audit log head");
                        cursor
                    }
                };
                if end < cursor && !behind_warned {
                    // The log ends before what was already pushed: another datastore, or
                    // its newest records were lost. Nothing is pushed until it grows past
                    // the cursor.
                    tracing::warn!(
                        receiver,
                        cursor,
                        log_end = end,
                        "the audit log ends before this receiver's SET cursor"
                    );
                    behind_warned = true;
                }
                // Records read but not pushed move the cursor with the next event, or at
                // the end of the pass.
                let mut read = cursor;
                let mut lost = false;
                while read < end {
                    let seq = read.saturating_add(1);
                    let record = match self.ds.audit_record(seq).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(receiver, seq, error = %e, "cannot read an audit record");
                            break;
                        }
                    };
                    if let Some(record) = record
                        && is_pushed(&record)
                    {
                        let audit: Vec<AuditEvent> = match self
                            .deliver(receiver, &record, cursor, shutdown)
                            .await
                        {
                            Outcome::Done(kind, attempts) => {
                                let jti = jti(&record.hash, receiver);
                                vec![self.outcome_event(kind, &record, receiver, &jti, attempts)]
                            }
                            Outcome::Skipped => Vec::new(),
                            Outcome::Shutdown => return,
                            Outcome::Lost => {
                                lost = true;
                                break;
                            }
                        };
                        match self
                            .ds
                            .advance_set_cursor(receiver, &self.holder, cursor, seq, &audit)
                            .await
                        {
                            Ok(true) => {
                                cursor = seq;
                                self.cursors.set(receiver, seq);
                            }
                            Ok(false) => {
                                tracing::warn!(
                                    receiver,
                                    seq,
                                    "another server took the receiver over during a push; it may get this event twice (same jti)"
                                );
                                lost = true;
                                break;
                            }
                            Err(e) => {
                                // Pushed again on the next pass (same jti): at least once.
                                tracing::warn!(receiver, seq, error = %e, "cannot record a SET push");
                                lost = true;
                                break;
                            }
                        }
                    }
                    read = seq;
                }
                if !lost && read > cursor {
                    match self
                        .ds
                        .advance_set_cursor(receiver, &self.holder, cursor, read, &[])
                        .await
                    {
                        Ok(true) => {
                            cursor = read;
                            self.cursors.set(receiver, read);
                        }
                        Ok(false) => lost = true,
                        Err(e) => {
                            lost = true;
                            tracing::warn!(receiver, error = %e, "cannot move the SET push cursor");
                        }
                    }
                }
                held = if lost {
                    None
                } else {
                    held.map(|(_, at)| (cursor, at))
                };
            }
            let woken = async {
                match wake.as_mut() {
                    Some(w) => {
                        if w.changed().await.is_err() {
                            wake = None;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = heads.changed(), if heads_open => heads_open = r.is_ok(),
                () = woken => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Delivers one event to `receiver`, retrying until it is delivered or too old,
    /// renewing the lease on the receiver (whose cursor is `cursor`) meanwhile.
    async fn deliver(
        &self,
        receiver: &str,
        record: &AuditRecord,
        cursor: i64,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let jti = jti(&record.hash, receiver);
        let audience = self.config.audience.as_deref().unwrap_or(receiver);
        let give_up_at_ms = record.at_ms.saturating_add(
            i64::try_from(self.config.give_up_after.as_millis()).unwrap_or(i64::MAX),
        );
        let task_id = record.event.task_id.clone().unwrap_or_default();
        let mut attempts: u32 = 0;
        loop {
            let now = now_unix();
            let now_ms = crate::clock::now_unix_ms();
            if now_ms >= give_up_at_ms {
                tracing::warn!(receiver, task_id = %task_id, jti = %jti, attempts, give_up_after_secs = self.config.give_up_after.as_secs(), "gave up pushing a security event: too old");
                return Outcome::Done(AuditKind::SetAbandoned, attempts);
            }
            // Still this server's to push (renewed for the attempt).
            if !self.still_held(receiver, cursor).await {
                return Outcome::Lost;
            }
            attempts = attempts.saturating_add(1);
            let outcome = match security_event(record, &self.config.issuer, audience, now, &jti)
                .map(|claims| self.jwt.sign_security_event(claims))
            {
                // Not an event after all (no task id): passed over, unrecorded.
                None => return Outcome::Skipped,
                Some(Err(e)) => Attempt::Failed(format!("signing: {e}")),
                Some(Ok(token)) => tokio::select! {
                    () = shutdown.cancelled() => return Outcome::Shutdown,
                    a = self.post(receiver, token) => a,
                },
            };
            match outcome {
                Attempt::Delivered(status) => {
                    tracing::info!(receiver, task_id = %task_id, jti = %jti, attempts, status, kind = %record.event.kind, "pushed a security event");
                    return Outcome::Done(AuditKind::SetDelivered, attempts);
                }
                Attempt::Failed(why) => {
                    // Never past the moment it is given up.
                    let left = u64::try_from(give_up_at_ms.saturating_sub(now_ms)).unwrap_or(0);
                    let wait = backoff(attempts).min(Duration::from_millis(left));
                    tracing::warn!(receiver, task_id = %task_id, jti = %jti, attempts, error = %why, retry_in_ms = wait.as_millis(), "pushing a security event failed");
                    // The lease is renewed during long waits too.
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        let step = until
                            .saturating_duration_since(tokio::time::Instant::now())
                            .min(RENEW_EVERY);
                        tokio::select! {
                            () = shutdown.cancelled() => return Outcome::Shutdown,
                            () = tokio::time::sleep(step) => {}
                        }
                        if tokio::time::Instant::now() >= until {
                            break;
                        }
                        if !self.still_held(receiver, cursor).await {
                            return Outcome::Lost;
                        }
                    }
                }
            }
        }
    }

    /// Renews the lease on `receiver`; whether this server still holds it at `cursor`.
    async fn still_held(&self, receiver: &str, cursor: i64) -> bool {
        match self.claim(receiver, cursor).await {
            Ok(Some(c)) if c == cursor => true,
            Ok(_) => {
                tracing::info!(receiver, "another server pushes to the receiver now");
                false
            }
            Err(e) => {
                // Unsure: stop and claim again on the next pass (the lease may run out).
                tracing::warn!(receiver, error = %e, "cannot renew the SET push lease");
                false
            }
        }
    }

    /// The record of a delivery (`set.delivered`) or of giving up (`set.abandoned`).
    fn outcome_event(
        &self,
        kind: AuditKind,
        record: &AuditRecord,
        receiver: &str,
        jti: &str,
        attempts: u32,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(
            kind,
            &record.event.subject,
            json!({
                "receiver": receiver,
                "jti": jti,
                "attempts": attempts,
                "event_seq": record.seq,
                "event_kind": record.event.kind,
            }),
        )
        .by(SERVER_ACTOR);
        event.task_id.clone_from(&record.event.task_id);
        event.tenant.clone_from(&record.event.tenant);
        event
    }

    /// One POST of `token` to `url`, bounded by [`REQUEST_TIMEOUT`].
    async fn post(&self, url: &str, token: String) -> Attempt {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.post_inner(url, token)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Attempt::Delivered(status),
            Ok(Ok(status)) => Attempt::Failed(format!("HTTP status {status}")),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }

    async fn post_inner(&self, url: &str, token: String) -> Result<u16, String> {
        // The config allows only https://host[:port][/path] URLs.
        let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or("/"),
            ),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|e| e.to_string())?)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        let request = hyper::Request::post(path)
            .header(
                HOST,
                HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            )
            .header(CONTENT_TYPE, SET_CONTENT_TYPE)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(token)))
            .map_err(|e| e.to_string())?;
        // The connection is driven alongside the request and dropped with it: the
        // response body is never read.
        let response = tokio::select! {
            r = sender.send_request(request) => r.map_err(|e| format!("HTTP: {e}"))?,
            c = conn => return Err(format!("connection closed before an answer: {c:?}")),
        };
        Ok(response.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn ended(by: &str) -> AuditRecord {
        AuditRecord {
            seq: 7,
            at_ms: 1_700_000_000_123,
            event: AuditEvent {
                kind: "task.ended".into(),
                task_id: Some("0190-task".into()),
                subject: "spiffe://example.org/jit/tools".into(),
                detail: json!({ "state": "revoked", "reason": "suspected misuse", "by": by }),
                actor: Some(by.into()),
                tenant: None,
            },
            prev_hash: crate::audit::GENESIS.into(),
            hash: "ab".repeat(32),
        }
    }

    #[test]
    fn a_task_end_becomes_a_signed_caep_credential_change_event() {
        let dir = tempfile::tempdir().unwrap();
        let mgr =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(3600), 1000).unwrap();
        let record = ended("user:root");
        let jti = jti(&record.hash, "https://rx.example.org/set");
        let claims = security_event(
            &record,
            "https://tessera.example.org",
            "https://rx.example.org/set",
            1_700_000_001,
            &jti,
        )
        .unwrap();
        let token = mgr.sign_security_event(claims).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "secevent+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], mgr.public_keys()[0].kid.as_str());
        let c: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(c["iss"], "https://tessera.example.org");
        assert_eq!(c["aud"], "https://rx.example.org/set");
        assert_eq!(c["iat"], 1_700_000_001);
        assert_eq!(c["jti"], jti.as_str());
        // The subject is an RFC 9493 identifier, never "sub", so a SET cannot pass for a
        // JWT-SVID; and it has no "exp" (RFC 8417 §2.2).
        assert!(c.get("sub").is_none() && c.get("exp").is_none());
        let events = c["events"].as_object().unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[CREDENTIAL_CHANGE];
        assert_eq!(e["change_type"], "revoke");
        assert_eq!(e["credential_type"], "x509");
        assert_eq!(e["event_timestamp"], 1_700_000_000);
        assert_eq!(e["task_id"], "0190-task");
        assert_eq!(e["task_state"], "revoked");
        assert_eq!(e["reason_admin"]["en"], "suspected misuse");
        assert_eq!(e["initiating_entity"], "admin");
        let subject = json!({ "format": "uri", "uri": "spiffe://example.org/jit/tools" });
        assert_eq!(e["subject"], subject);
        assert_eq!(c["sub_id"], subject);

        // The server's own schedule (expiry) is "policy".
        let e = security_event(&ended(SERVER_ACTOR), "i", "a", 0, "j").unwrap();
        assert_eq!(
            e["events"][CREDENTIAL_CHANGE]["initiating_entity"],
            "policy"
        );
    }

    #[test]
    fn only_task_ends_and_break_glass_starts_become_events() {
        let mut r = ended("user:root");
        for kind in AuditKind::ALL {
            r.event.kind = kind.as_str().to_owned();
            assert_eq!(
                security_event(&r, "i", "a", 0, "j").is_some(),
                matches!(kind, AuditKind::TaskEnded | AuditKind::TaskBreakGlass),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_break_glass_task_is_announced_at_its_start_and_marked_at_its_end() {
        let mut start = ended("user:root");
        start.event.kind = AuditKind::TaskBreakGlass.as_str().into();
        start.event.detail = json!({
            "requester": "user:alice",
            "reason": "INC-9 database down",
            "deadline": 1_700_000_900,
        });
        let c = security_event(&start, "i", "a", 0, "j").unwrap();
        let e = &c["events"][CREDENTIAL_CHANGE];
        assert_eq!(e["change_type"], "create", "{e}");
        assert_eq!(e["break_glass"], true);
        assert_eq!(e["requester"], "user:alice");
        assert_eq!(e["reason_admin"]["en"], "INC-9 database down");
        assert_eq!(e["task_id"], "0190-task");
        assert_eq!(e["task_state"], "active");
        assert_eq!(e["task_deadline"], 1_700_000_900);
        assert_eq!(e["initiating_entity"], "admin");
        assert_eq!(e["subject"]["uri"], "spiffe://example.org/jit/tools");
        // Its end says break-glass too; an ordinary end does not.
        let mut end = ended("user:bob");
        end.event.detail["break_glass"] = true.into();
        end.event.detail["requester"] = "spiffe://example.org/runtime".into();
        let c = security_event(&end, "i", "a", 0, "j").unwrap();
        let e = &c["events"][CREDENTIAL_CHANGE];
        assert_eq!(e["change_type"], "revoke");
        assert_eq!(e["break_glass"], true);
        assert_eq!(e["requester"], "spiffe://example.org/runtime");
        let c = security_event(&ended("user:bob"), "i", "a", 0, "j").unwrap();
        let e = &c["events"][CREDENTIAL_CHANGE];
        assert!(
            e.get("break_glass").is_none() && e.get("requester").is_none(),
            "{e}"
        );
    }

    #[test]
    fn jti_is_stable_per_event_and_receiver_and_differs_otherwise() {
        let a = jti(&"ab".repeat(32), "https://a.example.org");
        assert_eq!(a, jti(&"ab".repeat(32), "https://a.example.org"));
        assert_ne!(a, jti(&"ab".repeat(32), "https://b.example.org"));
        assert_ne!(a, jti(&"cd".repeat(32), "https://a.example.org"));
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn cursors_persist_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let c = Cursors::load(dir.path()).unwrap();
        assert_eq!(c.get("https://a"), None);
        c.set("https://a", 12);
        let mode = std::fs::metadata(dir.path().join(CURSOR_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            Cursors::load(dir.path()).unwrap().get("https://a"),
            Some(12)
        );
        std::fs::write(dir.path().join(CURSOR_FILE), "not json").unwrap();
        assert!(Cursors::load(dir.path()).is_err());
    }
}
