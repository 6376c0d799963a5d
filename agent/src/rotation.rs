//! The single worker that keeps the agent's identities current.
//!
//! It holds the one sync stream to the server (a snapshot, then every change), applies it
//! to the cache, signs an SVID for every entry that needs one (new, changed, or past its
//! refresh point at ~half-life), renews the agent's own SVID, and reconnects with capped,
//! jittered exponential backoff when the server is unreachable. SVIDs already in the
//! cache keep being served while the server is away; nothing is dropped on an error.
//!
//! The schedule is pure ([`schedule`]: refresh at 40–50 % of an SVID's life, task
//! deadlines, retries) and retry delays are in [`backoff`]; the worker reads wall-clock
//! time from a [`Clock`] and waits with tokio timers, and talks to the server only through
//! [`NodeApi`], so paused-time tests drive it against an in-process server
//! (`rotation/tests.rs`). An SVID issued under a task is withdrawn at the task's deadline
//! even if the server does not say so.
//!
//! A refusal of the agent itself (evicted, banned) is fatal: the persisted SVID is removed
//! and the worker returns an error so the agent stops serving identities it no longer has.

mod backoff;
mod schedule;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use common::proto::tessera::{CsrForEntry, SignedX509Svid, SyncUpdate, sync_update};
use common::task::TaskGrant;
use common::{Bundle, BundleCell, EntryId, TrustDomain, X509Svid};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::cache::{AgentEntry, Cache, CachedEntry, slot_key};
use crate::clock::{self, Clock};
use crate::node_api::{NodeApi, NodeConnector, SyncStream};
use crate::node_identity::{self, NodeIdentityError};
use crate::server_client;

pub(crate) use backoff::Backoff;
use backoff::capped_by_life;

/// CSRs per signing call.
const SIGN_BATCH: usize = 500;
/// Most signing calls out at once.
const SIGN_CALLS_IN_FLIGHT: usize = 3;

/// Why the worker stopped for good.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RotationError {
    /// The server refused this agent.
    #[error(
        "the server no longer accepts this agent ({0}); it must attest again with a new join token"
    )]
    AgentRefused(String),
    /// Local state could not be written.
    #[error(transparent)]
    Storage(NodeIdentityError),
}

/// The rotation worker.
#[derive(Debug)]
pub(crate) struct Rotation {
    /// Opens sessions with the server as the current agent SVID.
    pub(crate) connector: Arc<dyn NodeConnector>,
    /// Wall-clock time (certificates, task deadlines).
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) data_dir: PathBuf,
    pub(crate) cache: Cache,
    pub(crate) bundle: BundleCell,
    pub(crate) agent_svid: X509Svid,
    /// Where the Workload API finds the current session.
    pub(crate) link: server_client::ServerLink,
    /// Retry state of signing.
    pub(crate) retry: SignRetry,
    /// The sync stream's state and progress.
    pub(crate) metrics: Arc<crate::metrics::AgentMetrics>,
}

/// When signing is retried after a failure.
#[derive(Debug, Default)]
pub(crate) struct SignRetry {
    /// When signing last failed; entries needing SVIDs are retried after this.
    at: Option<SystemTime>,
    backoff: Backoff,
}

enum StreamEnd {
    Shutdown,
    Reconnect,
    RenewDue,
}

fn is_refusal(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::PermissionDenied
}

impl Rotation {
    fn node(&self) -> Result<Arc<dyn NodeApi>, RotationError> {
        self.connector
            .connect(Some(&self.agent_svid))
            .map_err(|e| RotationError::Storage(NodeIdentityError::Unreachable(e.to_string())))
    }

    fn refuse(&self, why: &str) -> RotationError {
        // Stop serving at once, then forget everything persisted.
        self.cache
            .update(|s| *s = crate::cache::CacheSnapshot::default());
        node_identity::forget_svid(&self.data_dir);
        RotationError::AgentRefused(why.to_owned())
    }

    /// Waits until `until` by the worker's clock (while away from the server), still
    /// withdrawing task SVIDs at their deadlines; `false` on shutdown.
    async fn pause(&self, until: SystemTime, shutdown: &CancellationToken) -> bool {
        loop {
            self.withdraw_ended_grants();
            let now = self.clock.now();
            if now >= until {
                return true;
            }
            let wake = schedule::next_grant_deadline(&self.cache.current())
                .filter(|d| *d > now)
                .map_or(until, |d| d.min(until));
            let wait = clock::until(&*self.clock, wake);
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs until shutdown or a fatal refusal.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), RotationError> {
        let mut backoff = Backoff::default();
        // Where the last stream left off (a server of the cluster resumes from it): at
        // start, where the persisted cache was.
        let mut cursor = self.cache.current().cursor.clone();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if self.clock.now() >= self.agent_svid.refresh_at() {
                let renewed = match self.node() {
                    Ok(node) => node_identity::renew(&*node, &self.trust_domain).await,
                    Err(RotationError::Storage(e)) => Err(e),
                    Err(e) => return Err(e),
                };
                match renewed {
                    Ok((svid, bundle)) => {
                        node_identity::save_svid(&self.data_dir, &svid)
                            .map_err(RotationError::Storage)?;
                        tracing::info!(serial = %svid.leaf().serial_hex, "agent SVID renewed");
                        self.agent_svid = svid;
                        self.apply_bundle(bundle);
                    }
                    Err(NodeIdentityError::Refused(why)) => return Err(self.refuse(&why)),
                    Err(e) => {
                        let now = self.clock.now();
                        let left = self.agent_svid.not_after().duration_since(now).ok();
                        let wait = capped_by_life(backoff.step(), left);
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "agent SVID renewal failed");
                        if !self.pause(now + wait, &shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            let node = self.node()?;
            self.link.set(Arc::clone(&node));
            let end = match node.sync(cursor.clone()).await {
                Ok(stream) => {
                    backoff.reset();
                    tracing::info!(resuming = !cursor.is_empty(), "sync stream open");
                    self.follow(&*node, stream, &mut cursor, &shutdown).await?
                }
                Err(s) if is_refusal(&s) => return Err(self.refuse(s.message())),
                Err(s) => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), "cannot open sync stream");
                    StreamEnd::Reconnect
                }
            };
            match end {
                StreamEnd::Shutdown => return Ok(()),
                StreamEnd::RenewDue => continue,
                StreamEnd::Reconnect => {
                    // As for signing: never sleep through the end of what is served.
                    let now = self.clock.now();
                    let snap = self.cache.current();
                    let served = schedule::shortest_remaining_life(&snap, snap.entries.keys(), now);
                    let agent_left = self.agent_svid.not_after().duration_since(now).ok();
                    let left = match (served, agent_left) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let wait = capped_by_life(backoff.step(), left);
                    tracing::info!(
                        retry_in_ms = wait.as_millis() as u64,
                        "reconnecting to the server"
                    );
                    if !self.pause(self.clock.now() + wait, &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Follows one sync stream until it ends, the agent SVID is due, or shutdown.
    async fn follow(
        &mut self,
        node: &dyn NodeApi,
        mut stream: SyncStream,
        cursor: &mut String,
        shutdown: &CancellationToken,
    ) -> Result<StreamEnd, RotationError> {
        let _connected = crate::metrics::UpGuard::up(&self.metrics.sync_connected);
        loop {
            self.withdraw_ended_grants();
            let now = self.clock.now();
            let wake =
                schedule::next_wake(&self.cache.current(), &self.agent_svid, self.retry.at, now);
            let wait = clock::until(&*self.clock, wake);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(StreamEnd::Shutdown),
                msg = stream.next() => match msg {
                    Some(Ok(update)) => {
                        let at = update.cursor.clone();
                        let before = self.cache.current();
                        self.apply(update);
                        let now = self.clock.now();
                        self.metrics.synced(now);
                        self.metrics.revocations_arrived(
                            &before,
                            &self.cache.current(),
                            crate::cache::unix_ms(now),
                        );
                        // Only once applied: a stream lost before that resumes from the
                        // previous position.
                        if !at.is_empty() {
                            *cursor = at;
                        }
                        self.sign_pending(node).await?;
                    }
                    None => {
                        tracing::warn!("sync stream ended by the server");
                        return Ok(StreamEnd::Reconnect);
                    }
                    Some(Err(s)) if is_refusal(&s) => return Err(self.refuse(s.message())),
                    Some(Err(s)) => {
                        tracing::warn!(code = ?s.code(), error = %s.message(), "sync stream failed");
                        return Ok(StreamEnd::Reconnect);
                    }
                },
                () = tokio::time::sleep(wait) => {
                    if self.clock.now() >= self.agent_svid.refresh_at() {
                        return Ok(StreamEnd::RenewDue);
                    }
                    self.withdraw_ended_grants();
                    self.sign_pending(node).await?;
                }
            }
        }
    }

    /// Drops the SVIDs of task entries whose grant no longer holds (deadline passed): a
    /// task's credential is withdrawn on time even while the server is out of reach.
    fn withdraw_ended_grants(&self) {
        let now = self.clock.now();
        let ended: Vec<EntryId> = self
            .cache
            .current()
            .entries
            .iter()
            .filter(|(_, c)| schedule::grant_ended(c, now))
            .map(|(slot, _)| slot.clone())
            .collect();
        if ended.is_empty() {
            return;
        }
        self.cache.update(|s| {
            for id in &ended {
                if let Some(c) = s.entries.get_mut(id) {
                    let c = Arc::make_mut(c);
                    tracing::info!(
                        entry_id = %id,
                        task_id = ?c.grant.as_ref().map(|g| &g.task_id),
                        "task deadline passed; SVID withdrawn"
                    );
                    c.svid = None;
                }
            }
        });
    }

    fn apply_bundle(&self, bundle: Bundle) {
        if let Err(e) = node_identity::save_bundle(&self.data_dir, &bundle) {
            tracing::warn!(error = %e, "cannot persist the trust bundle");
        }
        self.bundle.set(bundle.clone());
        self.cache.update(|s| s.bundle = Some(Arc::new(bundle)));
    }

    fn apply(&self, update: SyncUpdate) {
        apply_update(&self.cache, update, |bundle| self.apply_bundle(bundle));
    }

    /// Signs SVIDs for every entry that needs one. Failures are retried with backoff;
    /// only a refusal of the agent itself is returned as an error.
    async fn sign_pending(&mut self, node: &dyn NodeApi) -> Result<(), RotationError> {
        let now = self.clock.now();
        if self.retry.at.is_some_and(|t| now < t) {
            return Ok(());
        }
        let snap = self.cache.current();
        // Every slot that needs an SVID.
        let due: Vec<Due> = snap
            .entries
            .iter()
            .filter(|(_, c)| schedule::needs_svid(c, now))
            .map(|(key, c)| {
                let task = c
                    .grant
                    .as_ref()
                    .map(|g| g.task_id.to_string())
                    .unwrap_or_default();
                (key.clone(), c.entry.id.clone(), task, c.entry.revision)
            })
            .collect();
        drop(snap);
        if due.is_empty() {
            self.retry = SignRetry::default();
            return Ok(());
        }
        let mut failed = false;
        // Keys and CSRs are made on the blocking pool and up to SIGN_CALLS_IN_FLIGHT
        // batches are out at once, so making the next batch overlaps signing the last.
        // After a failed call no further batch is sent; those already out are answered
        // and kept.
        let mut batches = due.chunks(SIGN_BATCH);
        let mut in_flight = FuturesUnordered::new();
        for batch in batches.by_ref().take(SIGN_CALLS_IN_FLIGHT) {
            in_flight.push(sign_batch(node, batch.to_vec()));
        }
        let mut stopped = false;
        while let Some(batch) = in_flight.next().await {
            failed |= batch.unprepared;
            match batch.answer {
                Ok(signed_svids) => {
                    failed |= self.store_signed(signed_svids, batch.keys);
                }
                Err(s) if is_refusal(&s) => return Err(self.refuse(s.message())),
                Err(s) => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), "signing request failed");
                    failed = true;
                    stopped = true;
                }
            }
            if !stopped && let Some(next) = batches.next() {
                in_flight.push(sign_batch(node, next.to_vec()));
            }
        }
        if failed {
            let now = self.clock.now();
            // The SVIDs still served for what failed bound the wait (see backoff.rs).
            let left = schedule::shortest_remaining_life(
                &self.cache.current(),
                due.iter().map(|(slot, ..)| slot),
                now,
            );
            let wait = capped_by_life(self.retry.backoff.step(), left);
            tracing::debug!(
                retry_in_ms = wait.as_millis() as u64,
                "signing will be retried"
            );
            self.retry.at = Some(now + wait);
        } else {
            self.retry.backoff.reset();
            self.retry.at = None;
        }
        Ok(())
    }

    /// Puts the SVIDs of one answered batch in the cache; `true` if any CSR was refused,
    /// left unanswered or answered with an unusable SVID.
    fn store_signed(&self, signed_svids: Vec<SignedX509Svid>, mut keys: BatchKeys) -> bool {
        let mut failed = false;
        let mut issued = Vec::with_capacity(signed_svids.len());
        for signed in signed_svids {
            let Some((slot, key, rev)) =
                keys.remove(&(signed.entry_id.clone(), signed.task_id.clone()))
            else {
                continue;
            };
            if !signed.error.is_empty() {
                tracing::warn!(entry_id = %signed.entry_id, error = %signed.error, "server did not sign");
                failed = true;
                continue;
            }
            let chain = signed
                .svid_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            match X509Svid::new(chain, key.serialize_der()) {
                Ok(svid) => issued.push((slot, rev, Arc::new(svid))),
                Err(e) => {
                    tracing::error!(entry_id = %signed.entry_id, error = %e, "server returned an unusable SVID");
                    failed = true;
                }
            }
        }
        if !keys.is_empty() {
            // Unanswered entries are retried like failures, never in a tight loop.
            tracing::warn!(unanswered = keys.len(), "server left CSRs unanswered");
            failed = true;
        }
        if !issued.is_empty() {
            tracing::info!(count = issued.len(), "X.509-SVIDs updated");
            self.cache.update(|s| {
                for (slot, rev, svid) in issued {
                    if let Some(c) = s.entries.get_mut(&slot) {
                        let c = Arc::make_mut(c);
                        c.svid = Some(svid);
                        c.svid_revision = rev;
                    }
                }
            });
        }
        failed
    }
}

/// One slot that needs an SVID: (slot, entry, task, revision).
type Due = (EntryId, EntryId, String, u64);

/// The key of each CSR sent, by (entry, task) as the answer names them: the slot, the
/// key and the entry's revision.
type BatchKeys = HashMap<(String, String), (EntryId, KeyPair, u64)>;

/// A batch of CSRs and the server's answer to it.
struct SignedBatch {
    keys: BatchKeys,
    /// A key or CSR could not be made for some slot (it was not sent).
    unprepared: bool,
    answer: Result<Vec<SignedX509Svid>, tonic::Status>,
}

/// Makes a key and a CSR for every slot of `batch` (on the blocking pool, see
/// [`prepare`]) and sends the CSRs in one signing call.
async fn sign_batch(node: &dyn NodeApi, batch: Vec<Due>) -> SignedBatch {
    let (csrs, keys, unprepared) = prepare(batch).await;
    let answer = node.sign_x509_svids(csrs).await;
    SignedBatch {
        keys,
        unprepared,
        answer,
    }
}

/// Keys and CSRs for `batch`, made on the blocking pool in about as many chunks, made at
/// once, as the machine runs threads; the CSRs in `batch` order. `true`: some slot got
/// none (logged).
async fn prepare(batch: Vec<Due>) -> (Vec<CsrForEntry>, BatchKeys, bool) {
    let n = batch.len();
    let parts = common::svid::parallel_chunks().min(n.max(1));
    let size = n.div_ceil(parts).max(1);
    let mut batch = batch.into_iter();
    let mut chunks = Vec::with_capacity(parts);
    loop {
        let chunk: Vec<Due> = batch.by_ref().take(size).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(tokio::task::spawn_blocking(move || prepare_chunk(chunk)));
    }
    let mut csrs = Vec::with_capacity(n);
    let mut keys = HashMap::with_capacity(n);
    let mut failed = false;
    for chunk in chunks {
        match chunk.await {
            Ok(made) => {
                for (csr, key, slot, rev) in made {
                    keys.insert(
                        (csr.entry_id.clone(), csr.task_id.clone()),
                        (slot, key, rev),
                    );
                    csrs.push(csr);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "key generation did not finish");
                failed = true;
            }
        }
    }
    // A chunk that made fewer than it was given logged why.
    failed |= csrs.len() < n;
    (csrs, keys, failed)
}

/// A key and a CSR for each slot of `chunk` that one can be made for.
fn prepare_chunk(chunk: Vec<Due>) -> Vec<(CsrForEntry, KeyPair, EntryId, u64)> {
    let mut made = Vec::with_capacity(chunk.len());
    for (slot, id, task, rev) in chunk {
        let key = match common::svid::generate_key() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "key generation failed");
                continue;
            }
        };
        match common::svid::csr_for(&key) {
            Ok(csr) => made.push((
                CsrForEntry {
                    entry_id: id.to_string(),
                    csr,
                    task_id: task,
                },
                key,
                slot,
                rev,
            )),
            Err(e) => tracing::error!(error = %e, "CSR creation failed"),
        }
    }
    made
}

/// Applies one message of the sync stream to `cache`; `apply_bundle` gets the trust bundle
/// it carries (a snapshot's before its entries are applied). Invalid entries and bundles
/// from the server are logged and ignored.
pub(crate) fn apply_update(
    cache: &Cache,
    update: SyncUpdate,
    mut apply_bundle: impl FnMut(Bundle),
) {
    // The cursor moves with the state it describes, in the same cache update (a bundle
    // alone leaves it: an older cursor only resends more).
    let at = update.cursor;
    let moved = |s: &mut crate::cache::CacheSnapshot| {
        if !at.is_empty() {
            s.cursor.clone_from(&at);
        }
    };
    // An entry and each of its active tasks (several may be active at once on a
    // just-in-time entry, one per bound process; `task` alone from older servers).
    let parse = |mut e: common::proto::tessera::Entry| {
        let wire_grants = if e.tasks.is_empty() {
            e.task.take().into_iter().collect()
        } else {
            e.task = None;
            std::mem::take(&mut e.tasks)
        };
        let grants = wire_grants
            .into_iter()
            .map(|g| TaskGrant::try_from(g).map(Arc::new))
            .collect::<Result<Vec<_>, _>>();
        match (AgentEntry::try_from(e), grants) {
            (Ok(e), Ok(grants)) => Some((Arc::new(e), grants)),
            (Err(err), _) => {
                tracing::error!(error = %err, "ignoring an invalid entry from the server");
                None
            }
            (_, Err(err)) => {
                tracing::error!(error = %err, "ignoring an invalid entry from the server");
                None
            }
        }
    };
    // The cache slots of an entry: one per task (sharing the entry), or the entry alone.
    let slots = |(entry, grants): (Arc<AgentEntry>, Vec<Arc<TaskGrant>>)| {
        if grants.is_empty() {
            vec![(entry, None)]
        } else {
            grants
                .into_iter()
                .map(|g| (Arc::clone(&entry), Some(g)))
                .collect::<Vec<_>>()
        }
    };
    let parse_templates = |list: Vec<common::proto::tessera::Template>| {
        list.into_iter()
            .filter_map(|t| match common::template::AgentTemplate::try_from(t) {
                Ok(t) => Some((t.id.clone(), Arc::new(t))),
                Err(err) => {
                    tracing::error!(error = %err, "ignoring an invalid template from the server");
                    None
                }
            })
            .collect::<HashMap<_, _>>()
    };
    match update.update {
        Some(sync_update::Update::TemplateUpserted(t)) => {
            let parsed = parse_templates(vec![t]);
            cache.update(|s| {
                s.templates.extend(parsed);
                moved(s);
            });
        }
        Some(sync_update::Update::TemplateDeleted(id)) => {
            cache.update(|s| {
                s.templates.retain(|k, _| k.as_str() != id.as_str());
                moved(s);
            });
        }
        Some(sync_update::Update::Snapshot(snap)) => {
            let templates = parse_templates(snap.templates);
            let entries: Vec<Slot> = snap
                .entries
                .into_iter()
                .filter_map(parse)
                .flat_map(slots)
                .collect();
            tracing::info!(entries = entries.len(), "entry snapshot received");
            if let Some(b) = snap.bundle.and_then(|b| Bundle::try_from(b).ok()) {
                apply_bundle(b);
            }
            let revocations = snap.revocations.unwrap_or_default();
            cache.update(|s| {
                let mut next = HashMap::with_capacity(entries.len());
                for (entry, grant) in entries {
                    let key = slot_key(&entry.id, grant.as_deref());
                    let merged = merge(s.entries.get(&key), entry, grant);
                    next.insert(key, Arc::new(merged));
                }
                s.entries = next;
                s.templates = templates;
                s.synced = true;
                s.from_server = true;
                s.revocations = Arc::new(revocations);
                moved(s);
            });
        }
        Some(sync_update::Update::EntryUpserted(e)) => {
            if let Some((entry, grants)) = parse(e) {
                tracing::debug!(entry_id = %entry.id, tasks = grants.len(), "entry upserted");
                let id = entry.id.clone();
                let new_slots = slots((entry, grants));
                cache.update(|s| {
                    upsert(&mut s.entries, &id, new_slots);
                    moved(s);
                });
            }
        }
        Some(sync_update::Update::Resumed(delta)) => {
            let upserted: Vec<(EntryId, Vec<_>)> = delta
                .entries_upserted
                .into_iter()
                .filter_map(parse)
                .map(|(entry, grants)| (entry.id.clone(), slots((entry, grants))))
                .collect();
            let (n_upserted, n_deleted) = (upserted.len(), delta.entries_deleted.len());
            // The templates as they are now: the whole set.
            let templates = parse_templates(delta.templates_upserted);
            if let Some(b) = delta.bundle.and_then(|b| Bundle::try_from(b).ok()) {
                apply_bundle(b);
            }
            let revocations = delta.revocations.unwrap_or_default();
            // One update: the revocations and the entries change together, so nothing is
            // served for a task that ended while the agent was away.
            cache.update(|s| {
                s.revocations = Arc::new(revocations);
                s.templates = templates;
                for id in &delta.entries_deleted {
                    s.entries.retain(|_, c| c.entry.id.as_str() != id.as_str());
                }
                for (id, new_slots) in upserted {
                    upsert(&mut s.entries, &id, new_slots);
                }
                s.synced = true;
                s.from_server = true;
                moved(s);
            });
            tracing::info!(
                upserted = n_upserted,
                deleted = n_deleted,
                "sync resumed: changes since the last stream applied"
            );
        }
        Some(sync_update::Update::Revocations(r)) => {
            tracing::info!(
                ended_tasks = r.ended_tasks.len(),
                crls = r.crls.len(),
                "revocations updated"
            );
            cache.update(|s| {
                s.revocations = Arc::new(r);
                moved(s);
            });
        }
        Some(sync_update::Update::EntryDeleted(id)) => {
            tracing::debug!(entry_id = %id, "entry deleted");
            cache.update(|s| {
                s.entries.retain(|_, c| c.entry.id.as_str() != id.as_str());
                moved(s);
            });
        }
        Some(sync_update::Update::Bundle(b)) => match Bundle::try_from(b) {
            Ok(b) => apply_bundle(b),
            Err(e) => tracing::error!(error = %e, "ignoring an invalid bundle"),
        },
        None => {}
    }
}

/// One cache slot of a synced entry: the entry and the task it is held for, if any.
type Slot = (Arc<AgentEntry>, Option<Arc<TaskGrant>>);

/// Replaces the slots of entry `id` with `new_slots`, keeping each SVID its slot may keep
/// (see [`merge`]).
fn upsert(entries: &mut HashMap<EntryId, Arc<CachedEntry>>, id: &EntryId, new_slots: Vec<Slot>) {
    let mut old: HashMap<EntryId, Arc<CachedEntry>> = HashMap::new();
    entries.retain(|key, c| {
        if &c.entry.id == id {
            old.insert(key.clone(), Arc::clone(c));
            false
        } else {
            true
        }
    });
    for (entry, grant) in new_slots {
        let key = slot_key(&entry.id, grant.as_deref());
        let merged = merge(old.get(&key), entry, grant);
        entries.insert(key, Arc::new(merged));
    }
}

/// The cached state of an entry after the server sent `entry` (with `grant`): the SVID
/// is kept unless it was issued under another task (or the entry lost its task), so a
/// task's credential never survives the task on this agent.
fn merge(
    old: Option<&Arc<CachedEntry>>,
    entry: Arc<AgentEntry>,
    grant: Option<Arc<TaskGrant>>,
) -> CachedEntry {
    let same_task = |c: &CachedEntry| {
        !entry.jit || c.grant.as_ref().map(|g| &g.task_id) == grant.as_ref().map(|g| &g.task_id)
    };
    let (svid, svid_revision) = old
        .filter(|c| same_task(c))
        .map(|c| (c.svid.clone(), c.svid_revision))
        .unwrap_or((None, 0));
    CachedEntry {
        entry,
        grant,
        svid,
        svid_revision,
    }
}

#[cfg(test)]
mod tests;
