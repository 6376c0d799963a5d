//! The single worker that keeps the agent's identities current.
//!
//! It holds the one sync stream to the server (a snapshot, then every change), applies it
//! to the cache, signs an SVID for every entry that needs one (new, changed, or past its
//! refresh point at ~half-life), renews the agent's own SVID, and reconnects with capped,
//! jittered exponential backoff when the server is unreachable. SVIDs already in the
//! cache keep being served while the server is away; nothing is dropped on an error.
//!
//! A refusal of the agent itself (evicted, banned) is fatal: the persisted SVID is removed
//! and the worker returns an error so the agent stops serving identities it no longer has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::proto::tessera::node_client::NodeClient;
use common::proto::tessera::{CsrForEntry, SignX509SvidsRequest, SyncRequest, sync_update};
use common::task::TaskGrant;
use common::{Bundle, BundleCell, EntryId, RegistrationEntry, TrustDomain, X509Svid};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::cache::{Cache, CachedEntry};
use crate::node_identity::{self, NodeIdentityError};
use crate::server_client;

/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// CSRs per signing call.
const SIGN_BATCH: usize = 500;

/// Capped exponential backoff with full jitter in the upper half.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The delay to wait now; doubles the next one up to the cap.
    pub(crate) fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
        base.mul_f64(jitter)
    }
}

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
    pub(crate) server_address: String,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) cache: Cache,
    pub(crate) bundle: BundleCell,
    pub(crate) agent_svid: X509Svid,
    /// When signing last failed; entries needing SVIDs are retried after this.
    pub(crate) retry_at: Option<SystemTime>,
    pub(crate) sign_backoff: Backoff,
    /// Where the Workload API finds the current client.
    pub(crate) link: server_client::ServerLink,
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
    fn client(&self) -> Result<NodeClient<Channel>, RotationError> {
        server_client::connect(
            &self.server_address,
            &self.trust_domain,
            self.bundle.clone(),
            Some(&self.agent_svid),
        )
        .map_err(|e| RotationError::Storage(NodeIdentityError::Unreachable(e.to_string())))
    }

    fn refuse(&self, why: &str) -> RotationError {
        // Stop serving at once, then forget everything persisted.
        self.cache
            .update(|s| *s = crate::cache::CacheSnapshot::default());
        node_identity::forget_svid(&self.data_dir);
        RotationError::AgentRefused(why.to_owned())
    }

    /// Runs until shutdown or a fatal refusal.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), RotationError> {
        let mut backoff = Backoff::new();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if SystemTime::now() >= self.agent_svid.refresh_at() {
                match node_identity::renew(
                    &self.server_address,
                    &self.trust_domain,
                    &self.bundle,
                    &self.agent_svid,
                )
                .await
                {
                    Ok((svid, bundle)) => {
                        node_identity::save_svid(&self.data_dir, &svid)
                            .map_err(RotationError::Storage)?;
                        tracing::info!(serial = %svid.leaf().serial_hex, "agent SVID renewed");
                        self.agent_svid = svid;
                        self.apply_bundle(bundle);
                    }
                    Err(NodeIdentityError::Refused(why)) => return Err(self.refuse(&why)),
                    Err(e) => {
                        let wait = backoff.step();
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "agent SVID renewal failed");
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                }
            }
            let mut client = self.client()?;
            self.link.set(client.clone());
            let end = match client.sync(SyncRequest {}).await {
                Ok(resp) => {
                    backoff.reset();
                    tracing::info!("sync stream open");
                    self.follow(&mut client, resp.into_inner(), &shutdown)
                        .await?
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
                    let wait = backoff.step();
                    tracing::info!(
                        retry_in_ms = wait.as_millis() as u64,
                        "reconnecting to the server"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Follows one sync stream until it ends, the agent SVID is due, or shutdown.
    async fn follow(
        &mut self,
        client: &mut NodeClient<Channel>,
        mut stream: tonic::Streaming<common::proto::tessera::SyncUpdate>,
        shutdown: &CancellationToken,
    ) -> Result<StreamEnd, RotationError> {
        loop {
            let deadline = self.next_deadline();
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(StreamEnd::Shutdown),
                msg = stream.message() => match msg {
                    Ok(Some(update)) => {
                        self.apply(update);
                        self.sign_pending(client).await?;
                    }
                    Ok(None) => {
                        tracing::warn!("sync stream ended by the server");
                        return Ok(StreamEnd::Reconnect);
                    }
                    Err(s) if is_refusal(&s) => return Err(self.refuse(s.message())),
                    Err(s) => {
                        tracing::warn!(code = ?s.code(), error = %s.message(), "sync stream failed");
                        return Ok(StreamEnd::Reconnect);
                    }
                },
                () = tokio::time::sleep(wait) => {
                    if SystemTime::now() >= self.agent_svid.refresh_at() {
                        return Ok(StreamEnd::RenewDue);
                    }
                    self.sign_pending(client).await?;
                }
            }
        }
    }

    fn apply_bundle(&self, bundle: Bundle) {
        if let Err(e) = node_identity::save_bundle(&self.data_dir, &bundle) {
            tracing::warn!(error = %e, "cannot persist the trust bundle");
        }
        self.bundle.set(bundle.clone());
        self.cache.update(|s| s.bundle = Some(Arc::new(bundle)));
    }

    fn apply(&self, update: common::proto::tessera::SyncUpdate) {
        let parse = |mut e: common::proto::tessera::Entry| {
            let grant = e.task.take().map(TaskGrant::try_from).transpose();
            match (RegistrationEntry::try_from(e), grant) {
                (Ok(e), Ok(grant)) => Some((e, grant)),
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
        match update.update {
            Some(sync_update::Update::Snapshot(snap)) => {
                let entries: Vec<(RegistrationEntry, Option<TaskGrant>)> =
                    snap.entries.into_iter().filter_map(parse).collect();
                tracing::info!(entries = entries.len(), "entry snapshot received");
                if let Some(b) = snap.bundle.and_then(|b| Bundle::try_from(b).ok()) {
                    self.apply_bundle(b);
                }
                let revocations = snap.revocations.unwrap_or_default();
                self.cache.update(|s| {
                    let mut next = HashMap::with_capacity(entries.len());
                    for (entry, grant) in entries {
                        let merged = merge(s.entries.get(&entry.id), entry, grant);
                        next.insert(merged.entry.id.clone(), Arc::new(merged));
                    }
                    s.entries = next;
                    s.synced = true;
                    s.from_server = true;
                    s.revocations = Arc::new(revocations);
                });
            }
            Some(sync_update::Update::EntryUpserted(e)) => {
                if let Some((entry, grant)) = parse(e) {
                    tracing::debug!(entry_id = %entry.id, task_id = ?grant.as_ref().map(|g| &g.task_id), "entry upserted");
                    self.cache.update(|s| {
                        let merged = merge(s.entries.get(&entry.id), entry, grant);
                        s.entries.insert(merged.entry.id.clone(), Arc::new(merged));
                    });
                }
            }
            Some(sync_update::Update::Revocations(r)) => {
                tracing::info!(
                    ended_tasks = r.ended_tasks.len(),
                    crls = r.crls.len(),
                    "revocations updated"
                );
                self.cache.update(|s| s.revocations = Arc::new(r));
            }
            Some(sync_update::Update::EntryDeleted(id)) => {
                tracing::debug!(entry_id = %id, "entry deleted");
                self.cache.update(|s| {
                    s.entries.remove(id.as_str());
                });
            }
            Some(sync_update::Update::Bundle(b)) => match Bundle::try_from(b) {
                Ok(b) => self.apply_bundle(b),
                Err(e) => tracing::error!(error = %e, "ignoring an invalid bundle"),
            },
            None => {}
        }
    }

    fn needs_svid(c: &CachedEntry, now: SystemTime) -> bool {
        if !c.is_live(crate::cache::unix(now)) {
            return false;
        }
        match &c.svid {
            None => true,
            Some(s) => c.svid_revision != c.entry.revision || now >= s.refresh_at(),
        }
    }

    fn next_deadline(&self) -> SystemTime {
        let snap = self.cache.current();
        let now = SystemTime::now();
        let mut next = self.agent_svid.refresh_at();
        let mut pending = false;
        for c in snap.entries.values() {
            match &c.svid {
                Some(s) if c.svid_revision == c.entry.revision => next = next.min(s.refresh_at()),
                _ if c.is_live(crate::cache::unix(now)) => pending = true,
                _ => {}
            }
        }
        if pending {
            next = next.min(self.retry_at.unwrap_or(now));
        }
        next
    }

    /// Signs SVIDs for every entry that needs one. Failures are retried with backoff;
    /// only a refusal of the agent itself is returned as an error.
    async fn sign_pending(
        &mut self,
        client: &mut NodeClient<Channel>,
    ) -> Result<(), RotationError> {
        let now = SystemTime::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return Ok(());
        }
        let snap = self.cache.current();
        let due: Vec<(EntryId, u64)> = snap
            .entries
            .values()
            .filter(|c| Self::needs_svid(c, now))
            .map(|c| (c.entry.id.clone(), c.entry.revision))
            .collect();
        drop(snap);
        let mut failed = false;
        for batch in due.chunks(SIGN_BATCH) {
            let mut keys = HashMap::with_capacity(batch.len());
            let mut csrs = Vec::with_capacity(batch.len());
            for (id, rev) in batch {
                let key = match common::svid::generate_key() {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::error!(error = %e, "key generation failed");
                        failed = true;
                        continue;
                    }
                };
                match common::svid::csr_for(&key) {
                    Ok(csr) => csrs.push(CsrForEntry {
                        entry_id: id.to_string(),
                        csr,
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "CSR creation failed");
                        failed = true;
                        continue;
                    }
                }
                keys.insert(id.clone(), (key, *rev));
            }
            let resp = match client.sign_x509_svids(SignX509SvidsRequest { csrs }).await {
                Ok(r) => r.into_inner(),
                Err(s) if is_refusal(&s) => return Err(self.refuse(s.message())),
                Err(s) => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), "signing request failed");
                    failed = true;
                    break;
                }
            };
            let mut issued = Vec::with_capacity(resp.svids.len());
            for signed in resp.svids {
                let Some((key, rev)) = keys.remove(signed.entry_id.as_str()) else {
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
                    Ok(svid) => issued.push((signed.entry_id, rev, Arc::new(svid))),
                    Err(e) => {
                        tracing::error!(entry_id = %signed.entry_id, error = %e, "server returned an unusable SVID");
                        failed = true;
                    }
                }
            }
            if !issued.is_empty() {
                tracing::info!(count = issued.len(), "X.509-SVIDs updated");
                self.cache.update(|s| {
                    for (id, rev, svid) in issued {
                        if let Some(c) = s.entries.get_mut(id.as_str()) {
                            let c = Arc::make_mut(c);
                            c.svid = Some(svid);
                            c.svid_revision = rev;
                        }
                    }
                });
            }
        }
        if failed {
            let wait = self.sign_backoff.step();
            self.retry_at = Some(SystemTime::now() + wait);
        } else {
            self.sign_backoff.reset();
            self.retry_at = None;
        }
        Ok(())
    }
}

/// The cached state of an entry after the server sent `entry` (with `grant`): the SVID
/// is kept unless it was issued under another task (or the entry lost its task), so a
/// task's credential never survives the task on this agent.
fn merge(
    old: Option<&Arc<CachedEntry>>,
    entry: RegistrationEntry,
    grant: Option<TaskGrant>,
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
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.step();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.step() <= BACKOFF_MIN);
    }
}
