//! The node API: agents attest, renew, sync entries and get workload SVIDs signed.
//!
//! Served over TLS with the server's own SVID. `AttestAgent` is the only call accepted
//! without a client certificate; every other call authenticates the agent's SVID against
//! its stored record first, so an evicted or banned agent is refused on its next call and
//! its sync stream ends at once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::proto::tessera::ProvisionEntryRequest;
use common::proto::tessera::node_server::Node;
use common::proto::tessera::{
    AttestAgentRequest, AttestAgentResponse, MintJwtSvidRequest, MintJwtSvidResponse,
    NodeBeginTaskRequest, NodeEndTaskRequest, RenewAgentRequest, RenewAgentResponse,
    SignX509SvidsRequest, SignX509SvidsResponse, SyncDelta, SyncRequest, SyncSnapshot, SyncUpdate,
    Task, TaskTokenUse, TaskTokenUseAck, UsageReport, UsageReportAck, sync_update,
};
use common::{Bundle, BundleCell, EntryId, RegistrationEntry, SpiffeId};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::wire;
use crate::datastore::{AgentRecord, Datastore, EntryFilter};
use crate::events::{ChangeEvent, Events};
use crate::feed::{self, Cursor};
use crate::issuance::{CsrRequest, Issuer, X509Outcome};
use crate::metrics::{self, ServerMetrics, StreamGuard};
use crate::node_attestation::NodeAttestor;
use crate::node_groups::{self, ActingFor};
use crate::tasks::{Tasks, TokenUse};
use crate::usage::{self, ReportedUse};

/// The node API service.
#[derive(Debug, Clone)]
pub(crate) struct NodeService {
    pub(crate) attestor: NodeAttestor,
    pub(crate) ds: Arc<dyn Datastore>,
    pub(crate) issuer: Issuer,
    pub(crate) events: Events,
    pub(crate) bundle: BundleCell,
    pub(crate) tasks: Arc<Tasks>,
    /// This server's place in the cluster's change feed (PostgreSQL only): streams carry
    /// it as their cursor and resume from agents' cursors.
    pub(crate) feed: Option<Arc<Cursor>>,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) metrics: Arc<ServerMetrics>,
    /// Identity templates: provisioning, instances' liveness.
    pub(crate) templates: crate::templates::Templates,
}

/// How long a stream that heard of a new feed position with nothing to send waits before
/// sending the position alone (more changes in the meantime ride along with it).
const CURSOR_FLUSH: Duration = Duration::from_secs(1);

/// How long a sync waits for this server to apply what other servers committed before
/// the agent asked, before answering with what it has (the stream then brings the rest).
const CATCH_UP_BOUND: Duration = Duration::from_secs(2);

/// Above this many changed entries a resumed stream reads the agent's entries in one query
/// rather than one by one.
const DELTA_READ_ALL: usize = 64;

/// The fewest entries a snapshot part holds, whatever the agent asks for: a snapshot is
/// never cut into more messages than this allows.
const MIN_SNAPSHOT_PART: usize = 64;

/// `update` as the messages that carry it to an agent that takes a snapshot in parts of at
/// most `part_entries` entries (0: in one message; see `SyncRequest.snapshot_part_entries`).
/// A snapshot with more entries is cut into consecutive parts, all but the last marked
/// `more`, each with the same cursor; the first carries the bundle, the revocations and
/// the templates. Anything else is one message, as it is.
fn in_parts(update: SyncUpdate, part_entries: u32) -> Vec<SyncUpdate> {
    let part = usize::try_from(part_entries)
        .unwrap_or(usize::MAX)
        .max(MIN_SNAPSHOT_PART);
    match update {
        SyncUpdate {
            cursor,
            update: Some(sync_update::Update::Snapshot(mut head)),
        } if part_entries > 0 && head.entries.len() > part => {
            let mut entries = std::mem::take(&mut head.entries).into_iter();
            let mut parts = Vec::with_capacity(entries.len().div_ceil(part));
            let mut head = Some(head);
            loop {
                let chunk: Vec<_> = entries.by_ref().take(part).collect();
                if chunk.is_empty() {
                    break;
                }
                let mut snapshot = head.take().unwrap_or_default();
                snapshot.entries = chunk;
                snapshot.more = !entries.as_slice().is_empty();
                parts.push(SyncUpdate {
                    cursor: cursor.clone(),
                    update: Some(sync_update::Update::Snapshot(snapshot)),
                });
            }
            parts
        }
        other => vec![other],
    }
}

/// Sends `msg` on an agent's sync stream, a snapshot in the parts the agent asked for
/// ([`in_parts`]); `false` once the agent is gone.
async fn send_update(
    tx: &mpsc::Sender<Result<SyncUpdate, Status>>,
    msg: Result<SyncUpdate, Status>,
    part_entries: u32,
) -> bool {
    match msg {
        Ok(update) => {
            for part in in_parts(update, part_entries) {
                if tx.send(Ok(part)).await.is_err() {
                    return false;
                }
            }
            true
        }
        Err(e) => tx.send(Err(e)).await.is_ok(),
    }
}

impl NodeService {
    async fn agent<T>(&self, req: &Request<T>) -> Result<AgentRecord, Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first());
        Ok(self.attestor.authenticate(leaf.map(|c| c.as_ref())).await?)
    }

    fn wire_bundle(&self) -> common::proto::tessera::Bundle {
        let b: Arc<Bundle> = self.bundle.get();
        (&*b).into()
    }

    /// The entries parented to any ID `agent` acts for (one query per ID).
    async fn entries_of(&self, agent: &ActingFor) -> Result<Vec<RegistrationEntry>, Status> {
        let mut entries = Vec::new();
        for id in agent.all() {
            let filter = EntryFilter {
                parent_id: Some(id.clone()),
                ..Default::default()
            };
            entries.extend(self.ds.list_entries(&filter).await?);
        }
        Ok(entries)
    }

    /// What `agent` acts for, by its node selectors and the node entries. Costs nothing
    /// for an agent without node selectors.
    async fn acting_for(&self, agent: &AgentRecord) -> Result<ActingFor, Status> {
        Ok(node_groups::acting_for(&*self.ds, agent).await?)
    }

    /// [`Self::acting_for`] with the agent's record read again (a re-attestation may have
    /// replaced its node selectors); `opened` (the record its stream opened with) if the
    /// record is gone, whose stream then ends on its removal.
    async fn acting_now(&self, opened: &AgentRecord) -> Result<ActingFor, Status> {
        match self.ds.get_agent(&opened.spiffe_id).await? {
            Some(now) => self.acting_for(&now).await,
            None => self.acting_for(opened).await,
        }
    }

    /// Everything `agent` must know, with the feed position it reflects.
    async fn snapshot(&self, agent: &ActingFor) -> Result<SyncUpdate, Status> {
        // Read before the state: a change in between is then sent once more, never missed.
        let cursor = self.feed.as_ref().map(|f| f.settled());
        let entries = self.entries_of(agent).await?;
        let templates = self.ds.list_templates(Some(agent.own())).await?;
        Ok(SyncUpdate {
            cursor: cursor.map(feed::encode).unwrap_or_default(),
            update: Some(sync_update::Update::Snapshot(SyncSnapshot {
                templates: templates.iter().map(wire::template).collect(),
                entries: entries
                    .iter()
                    .filter(|e| issued_to(e, agent))
                    .map(|e| self.wire_entry(e))
                    .collect(),
                bundle: Some(self.wire_bundle()),
                revocations: Some(wire::revocations(&self.tasks.revocations())),
                more: false,
            })),
        })
    }

    /// The first message of a stream: what changed since `resume_from` when the feed can
    /// tell, else a snapshot. Either way this server has first applied (within
    /// [`CATCH_UP_BOUND`]) everything other servers committed before the agent asked, so
    /// a task ended anywhere while the agent was switching servers is in the revocations
    /// it gets before anything else.
    async fn first_message(
        &self,
        record: &AgentRecord,
        acting: &ActingFor,
        resume_from: &str,
    ) -> Result<SyncUpdate, Status> {
        let agent = acting.own();
        let Some(feed) = &self.feed else {
            return self.snapshot(acting).await;
        };
        let upto = match feed.caught_up(CATCH_UP_BOUND).await {
            Some(n) => n,
            None => {
                tracing::warn!(agent_id = %agent, "this server has not applied the whole change feed yet; the agent's stream brings the rest");
                feed.settled()
            }
        };
        let Some(after) = feed::decode(resume_from) else {
            return self.snapshot(acting).await;
        };
        // An agent with node selectors may be in node groups: a node entry changed since
        // its cursor may have changed which, so it then gets a snapshot.
        let groups_parent = groups_parent(record);
        let parents: Vec<&SpiffeId> = acting.all().collect();
        let touched = feed
            .touched_since(agent, &parents, groups_parent.as_ref(), after, upto)
            .await?;
        let Some(touched) = touched else {
            tracing::info!(agent_id = %agent, after, upto, "cannot resume the agent's sync from its cursor; sending a snapshot");
            return self.snapshot(acting).await;
        };
        if touched.agent_removed {
            return Err(removed(agent));
        }
        if touched.groups_changed {
            tracing::info!(agent_id = %agent, after, upto, "node entries changed since the agent's cursor; sending a snapshot");
            return self.snapshot(acting).await;
        }
        let mut upserted = Vec::new();
        let mut deleted = Vec::new();
        if touched.entries.len() > DELTA_READ_ALL {
            let mut now: std::collections::HashMap<String, RegistrationEntry> = self
                .entries_of(acting)
                .await?
                .into_iter()
                .map(|e| (e.id.to_string(), e))
                .collect();
            for id in touched.entries {
                match now.remove(&id) {
                    Some(e) if issued_to(&e, acting) => upserted.push(self.wire_entry(&e)),
                    _ => deleted.push(id),
                }
            }
        } else {
            for id in touched.entries {
                let stored = match EntryId::parse(id.as_str()) {
                    Ok(parsed) => self.ds.get_entry(&parsed).await?,
                    Err(_) => None,
                };
                match stored {
                    Some(e) if issued_to(&e, acting) => upserted.push(self.wire_entry(&e)),
                    _ => deleted.push(id),
                }
            }
        }
        tracing::info!(agent_id = %agent, after, upto, upserted = upserted.len(), deleted = deleted.len(), "agent sync resumed from its cursor");
        let templates = self.ds.list_templates(Some(agent)).await?;
        Ok(SyncUpdate {
            cursor: feed::encode(upto),
            update: Some(sync_update::Update::Resumed(SyncDelta {
                templates_upserted: templates.iter().map(wire::template).collect(),
                templates_deleted: Vec::new(),
                entries_upserted: upserted,
                entries_deleted: deleted,
                bundle: Some(self.wire_bundle()),
                revocations: Some(wire::revocations(&self.tasks.revocations())),
            })),
        })
    }

    /// An entry as its agent sees it: a just-in-time entry carries the grant of the task
    /// that activates it, if any.
    fn wire_entry(&self, e: &RegistrationEntry) -> common::proto::tessera::Entry {
        let mut wire: common::proto::tessera::Entry = e.into();
        if e.jit {
            let grants = self.tasks.grants_for(&e.id);
            wire.task = grants.first().map(Into::into);
            wire.tasks = grants.iter().map(Into::into).collect();
        }
        wire
    }

    /// Translates a change into what this agent must hear, if anything.
    fn relevant(&self, event: &ChangeEvent, agent: &ActingFor) -> Option<Result<SyncUpdate, ()>> {
        let update = match event {
            ChangeEvent::BundleChanged => sync_update::Update::Bundle(self.wire_bundle()),
            ChangeEvent::RevocationsChanged => {
                sync_update::Update::Revocations(wire::revocations(&self.tasks.revocations()))
            }
            ChangeEvent::EntryUpserted { entry, .. }
                if agent.includes(&entry.parent_id) && entry.governance.disabled.is_some() =>
            {
                sync_update::Update::EntryDeleted(entry.id.to_string())
            }
            ChangeEvent::EntryUpserted { entry, .. } if agent.includes(&entry.parent_id) => {
                sync_update::Update::EntryUpserted(self.wire_entry(entry))
            }
            ChangeEvent::EntryUpserted {
                entry,
                previous_parent: Some(prev),
            } if agent.includes(prev) => sync_update::Update::EntryDeleted(entry.id.to_string()),
            ChangeEvent::EntryDeleted { id, parent_id } if agent.includes(parent_id) => {
                sync_update::Update::EntryDeleted(id.to_string())
            }
            ChangeEvent::TemplateUpserted(t) if &t.parent_id == agent.own() => {
                sync_update::Update::TemplateUpserted(wire::template(t))
            }
            ChangeEvent::TemplateDeleted { id, parent_id } if parent_id == agent.own() => {
                sync_update::Update::TemplateDeleted(id.to_string())
            }
            ChangeEvent::AgentRemoved(id) if id == agent.own() => return Some(Err(())),
            _ => return None,
        };
        Some(Ok(SyncUpdate {
            cursor: String::new(),
            update: Some(update),
        }))
    }
}

/// Whether `entry` is served by `agent` now: parented to it or to one of its node groups,
/// and not disabled (an expired entry, a lapsed review or an offboarded owner is issued
/// nowhere: agents never hear of it). Node entries themselves are never sent.
fn issued_to(entry: &RegistrationEntry, agent: &ActingFor) -> bool {
    agent.includes(&entry.parent_id) && entry.governance.disabled.is_none() && !entry.is_node()
}

/// For an agent that may be in node groups (it has node selectors), the parent of node
/// entries: the server's ID in its trust domain. `None` for others.
fn groups_parent(agent: &AgentRecord) -> Option<SpiffeId> {
    if agent.selectors.is_empty() {
        return None;
    }
    crate::server_identity::server_id(&agent.spiffe_id.trust_domain()).ok()
}

/// Whether `event` may change which node groups an agent is in: a node entry (an entry
/// parented to `groups_parent`) created, changed or deleted.
fn touches_groups(event: &ChangeEvent, groups_parent: &SpiffeId) -> bool {
    match event {
        ChangeEvent::EntryUpserted {
            entry,
            previous_parent,
        } => {
            entry.is_node()
                || &entry.parent_id == groups_parent
                || previous_parent.as_ref() == Some(groups_parent)
        }
        ChangeEvent::EntryDeleted { parent_id, .. } => parent_id == groups_parent,
        _ => false,
    }
}

fn removed(agent: &SpiffeId) -> Status {
    Status::permission_denied(format!("agent {agent} has been evicted or banned"))
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    async fn attest_agent(
        &self,
        req: Request<AttestAgentRequest>,
    ) -> Result<Response<AttestAgentResponse>, Status> {
        let req = req.into_inner();
        if !req.x509pop_chain.is_empty() && req.x509pop_challenge_id.is_empty() {
            let challenge = self
                .attestor
                .x509pop_challenge(&req.x509pop_chain)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "x509pop attestation refused"))?;
            return Ok(Response::new(AttestAgentResponse {
                x509pop_challenge_id: challenge.id,
                x509pop_nonce: challenge.nonce,
                ..Default::default()
            }));
        }
        let (_, issued) = if req.x509pop_chain.is_empty() {
            self.attestor
                .attest_with_token(&req.join_token, &req.csr)
                .await
        } else {
            self.attestor
                .attest_with_x509pop(
                    &req.x509pop_chain,
                    &req.x509pop_challenge_id,
                    &req.x509pop_signature,
                    &req.csr,
                )
                .await
        }
        .inspect_err(|e| tracing::warn!(error = %e, "node attestation refused"))?;
        Ok(Response::new(AttestAgentResponse {
            svid_chain: wire::chain_bytes(&issued.chain),
            bundle: Some(self.wire_bundle()),
            ..Default::default()
        }))
    }

    async fn renew_agent(
        &self,
        req: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        let agent = self.agent(&req).await?;
        let issued = self.attestor.renew(&agent, &req.get_ref().csr).await?;
        Ok(Response::new(RenewAgentResponse {
            svid_chain: wire::chain_bytes(&issued.chain),
            bundle: Some(self.wire_bundle()),
        }))
    }

    type SyncStream = SyncStream;

    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let record = self.agent(&req).await?;
        let agent = record.spiffe_id.clone();
        // Subscribe before reading the state so no commit in between is missed.
        let mut rx = self.events.subscribe();
        let mut acting = self.acting_for(&record).await?;
        let groups_parent = groups_parent(&record);
        let first = self
            .first_message(&record, &acting, &req.get_ref().resume_from)
            .await?;
        let part_entries = req.get_ref().snapshot_part_entries;
        let (tx, out) = mpsc::channel::<Result<SyncUpdate, Status>>(64);
        let this = self.clone();
        tracing::info!(agent_id = %agent, "agent sync stream opened");
        let open = StreamGuard::open(&self.metrics.sync_streams);
        tokio::spawn(async move {
            let _open = open;
            // The last feed position passed on, one heard but not passed on yet, and when
            // to send that alone.
            let mut sent = feed::decode(&first.cursor).unwrap_or(0);
            let mut pending: Option<i64> = None;
            if !send_update(&tx, Ok(first), part_entries).await {
                return;
            }
            let mut flush_at: Option<tokio::time::Instant> = None;
            loop {
                let item = tokio::select! {
                    () = tx.closed() => return,
                    () = this.shutdown.cancelled() => return,
                    () = sleep_until(flush_at) => {
                        flush_at = None;
                        let Some(n) = pending.take() else { continue };
                        sent = n;
                        let update = SyncUpdate {
                            cursor: feed::encode(n),
                            update: None,
                        };
                        if tx.send(Ok(update)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    ev = rx.recv() => ev,
                };
                // A node entry changed: if the agent's groups did, it takes a snapshot
                // (membership read again from the datastore; the events in between are in
                // that snapshot).
                let regroup = match (&item, &groups_parent) {
                    (Ok(ev), Some(parent)) => touches_groups(ev, parent),
                    _ => false,
                };
                if regroup {
                    let now = match this.acting_now(&record).await {
                        Ok(now) => now,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    if now != acting {
                        tracing::info!(agent_id = %agent, groups = now.groups().count(), "agent's node groups changed; resending snapshot");
                        acting = now;
                        pending = None;
                        flush_at = None;
                        let snapshot = this.snapshot(&acting).await;
                        if let Ok(s) = &snapshot {
                            sent = feed::decode(&s.cursor).unwrap_or(sent);
                        }
                        let end = snapshot.is_err();
                        if !send_update(&tx, snapshot, part_entries).await || end {
                            return;
                        }
                        continue;
                    }
                }
                let msg = match item {
                    // Every change up to `n` was published before this: once the agent
                    // has what precedes it, it may resume from `n`.
                    Ok(ChangeEvent::Settled(n)) => {
                        if n > sent {
                            pending = Some(n);
                            flush_at
                                .get_or_insert_with(|| tokio::time::Instant::now() + CURSOR_FLUSH);
                        }
                        continue;
                    }
                    Ok(ev) => match this.relevant(&ev, &acting) {
                        None => continue,
                        Some(Ok(mut update)) => {
                            if let Some(n) = pending.take() {
                                update.cursor = feed::encode(n);
                                sent = n;
                                flush_at = None;
                            }
                            Ok(update)
                        }
                        Some(Err(())) => {
                            tracing::info!(agent_id = %agent, "ending sync stream of removed agent");
                            Err(removed(&agent))
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(agent_id = %agent, missed = n, "sync stream lagged; resending snapshot");
                        pending = None;
                        flush_at = None;
                        // Node entry changes may be among those missed.
                        let snapshot = match this.acting_now(&record).await {
                            Ok(now) => {
                                acting = now;
                                this.snapshot(&acting).await
                            }
                            Err(e) => Err(e),
                        };
                        if let Ok(s) = &snapshot {
                            sent = feed::decode(&s.cursor).unwrap_or(sent);
                        }
                        snapshot
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let end = msg.is_err();
                if !send_update(&tx, msg, part_entries).await || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn sign_x509_svids(
        &self,
        req: Request<SignX509SvidsRequest>,
    ) -> Result<Response<SignX509SvidsResponse>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let requests = req
            .into_inner()
            .csrs
            .into_iter()
            .map(|c| {
                Ok(CsrRequest {
                    entry_id: c.entry_id.parse()?,
                    task_id: optional_task(&c.task_id)?,
                    csr: c.csr,
                })
            })
            .collect::<Result<_, common::ids::IdError>>()?;
        let started = tokio::time::Instant::now();
        let outcomes = self.issuer.sign_x509(&agent, requests).await;
        let signed = outcomes.as_ref().map_or(0, |o| {
            o.iter()
                .filter(|o| matches!(o, X509Outcome::Signed { .. }))
                .count()
        });
        let refused = outcomes.as_ref().map_or(1, |o| o.len() - signed);
        self.metrics.issuance(
            metrics::X509,
            started.elapsed(),
            u64::try_from(signed).unwrap_or(u64::MAX),
            u64::try_from(refused).unwrap_or(u64::MAX),
        );
        let outcomes = outcomes?;
        Ok(Response::new(SignX509SvidsResponse {
            svids: outcomes.into_iter().map(wire::signed_svid).collect(),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let req = req.into_inner();
        let entry_id = req.entry_id.parse()?;
        let task_id = optional_task(&req.task_id)?;
        let started = tokio::time::Instant::now();
        let minted = self
            .issuer
            .mint_jwt(&agent, &entry_id, task_id.as_ref(), &req.audience)
            .await;
        let ok = u64::from(minted.is_ok());
        self.metrics
            .issuance(metrics::JWT, started.elapsed(), ok, 1 - ok);
        let minted = minted?;
        Ok(Response::new(MintJwtSvidResponse {
            token: minted.token,
            expires_at: minted.expires_at,
        }))
    }

    async fn begin_task(
        &self,
        req: Request<NodeBeginTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let req = req.into_inner();
        let unix = wire::requester_unix(req.requester_uid, &req.requester_user)?;
        let requester = self
            .tasks
            .workload_requester(&agent, &req.requester_entry_id.parse()?, Some(unix))
            .await?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let task = self
            .tasks
            .create(
                &requester,
                &wire::workload_task_request(&spec, req.binding, &agent)?,
            )
            .await?;
        Ok(Response::new(wire::task(&task)))
    }

    async fn end_task(&self, req: Request<NodeEndTaskRequest>) -> Result<Response<Task>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let req = req.into_inner();
        let end = req
            .end
            .ok_or_else(|| Status::invalid_argument("end is required"))?;
        if req.holder_exited {
            let task = self
                .tasks
                .end_for_holder_exit(&agent, &end.id.parse()?)
                .await?;
            return Ok(Response::new(wire::task(&task)));
        }
        let requester_entry_ids = req
            .requester_entry_ids
            .iter()
            .map(|id| id.parse())
            .collect::<Result<Vec<EntryId>, _>>()?;
        let task = self
            .tasks
            .end_for_workload(
                &agent,
                &requester_entry_ids,
                &end.id.parse()?,
                end.outcome.parse()?,
                &end.reason,
            )
            .await?;
        Ok(Response::new(wire::task(&task)))
    }

    async fn record_task_token_use(
        &self,
        req: Request<TaskTokenUse>,
    ) -> Result<Response<TaskTokenUseAck>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let u = req.into_inner();
        let subject = SpiffeId::new(&u.spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        let token_use = TokenUse {
            audience: u.audience,
            accepted: u.accepted,
            reason: u.reason,
            expires_at: u.expires_at,
        };
        self.tasks
            .record_token_use(&agent, &u.task_id.parse()?, &subject, &token_use)
            .await?;
        Ok(Response::new(TaskTokenUseAck {}))
    }

    async fn provision_entry(
        &self,
        req: Request<ProvisionEntryRequest>,
    ) -> Result<Response<common::proto::tessera::Entry>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let r = req.into_inner();
        let id: common::TemplateId = r.template_id.parse()?;
        let entry = self
            .templates
            .provision(&agent, &id, &r.selectors)
            .await
            .inspect_err(|e| {
                tracing::warn!(agent_id = %agent, template_id = %id, error = %e, "provisioning refused");
            })?;
        Ok(Response::new((&entry).into()))
    }

    async fn report_usage(
        &self,
        req: Request<UsageReport>,
    ) -> Result<Response<UsageReportAck>, Status> {
        let record = self.agent(&req).await?;
        let agent = record.spiffe_id.clone();
        let report = req.into_inner();
        let (items, live) = (report.items, report.live_instances);
        // Refused before anything else is looked at.
        if items.len() > usage::MAX_USAGE_ITEMS {
            return Err(usage::UsageError::TooManyItems(items.len()).into());
        }
        if live.len() > usage::MAX_USAGE_ITEMS {
            return Err(usage::UsageError::TooManyItems(live.len()).into());
        }
        let live = live
            .iter()
            .map(|id| id.parse())
            .collect::<Result<Vec<EntryId>, _>>()?;
        let items = items
            .into_iter()
            .map(|i| {
                Ok(ReportedUse {
                    entry_id: i.entry_id.parse()?,
                    deliveries: i.deliveries,
                    validations: i.validations,
                    last_used_at: i.last_used_at,
                })
            })
            .collect::<Result<Vec<_>, common::ids::IdError>>()?;
        // Usage of entries parented to the agent's node groups counts too.
        let acting = self.acting_for(&record).await?;
        let outcome = usage::record_report_for(&*self.ds, &acting, items, crate::clock::now_unix())
            .await
            .inspect_err(
                |e| tracing::warn!(agent_id = %agent, error = %e, "usage report refused"),
            )?;
        self.templates
            .seen(&agent, &live, crate::clock::now_unix())
            .await?;
        Ok(Response::new(UsageReportAck {
            accepted: outcome.accepted,
            ignored: outcome.ignored,
        }))
    }
}

/// A task id a request may leave empty (an agent from before parallel tasks).
fn optional_task(raw: &str) -> Result<Option<common::TaskId>, common::ids::IdError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        common::TaskId::parse(raw).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::tessera::{Entry, Template};

    fn snapshot(n: usize) -> SyncUpdate {
        SyncUpdate {
            cursor: "c7".into(),
            update: Some(sync_update::Update::Snapshot(SyncSnapshot {
                entries: (0..n)
                    .map(|i| Entry {
                        id: format!("e{i}"),
                        ..Default::default()
                    })
                    .collect(),
                bundle: Some(Default::default()),
                revocations: Some(Default::default()),
                templates: vec![Template::default()],
                more: false,
            })),
        }
    }

    fn parts_of(msgs: &[SyncUpdate]) -> Vec<&SyncSnapshot> {
        msgs.iter()
            .map(|m| match &m.update {
                Some(sync_update::Update::Snapshot(s)) => s,
                other => panic!("not a snapshot: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_snapshot_goes_in_parts_only_when_asked_and_larger_than_a_part() {
        // Not asked (an agent from before parts): one message, whatever its size.
        assert_eq!(in_parts(snapshot(1000), 0), vec![snapshot(1000)]);
        // Asked, but no larger than a part: one message, unmarked.
        assert_eq!(in_parts(snapshot(100), 100), vec![snapshot(100)]);
        // Anything but a snapshot is never cut.
        let delta = SyncUpdate {
            cursor: "c8".into(),
            update: Some(sync_update::Update::EntryDeleted("e1".into())),
        };
        assert_eq!(in_parts(delta.clone(), 64), vec![delta]);
    }

    #[test]
    fn parts_hold_every_entry_once_in_order_and_only_the_last_is_unmarked() {
        let msgs = in_parts(snapshot(250), 100);
        let parts = parts_of(&msgs);
        assert_eq!(
            parts.iter().map(|p| p.entries.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(
            parts.iter().map(|p| p.more).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(
            msgs.iter().all(|m| m.cursor == "c7"),
            "every part has the cursor"
        );
        let ids: Vec<&str> = parts
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.id.as_str()))
            .collect();
        let want: Vec<String> = (0..250).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want);
        // The rest of the state goes once, with the first part.
        assert!(parts[0].bundle.is_some() && parts[0].revocations.is_some());
        assert_eq!(parts[0].templates.len(), 1);
        for p in &parts[1..] {
            assert!(p.bundle.is_none() && p.revocations.is_none() && p.templates.is_empty());
        }
        // An exact multiple leaves no empty last part.
        let msgs = in_parts(snapshot(200), 100);
        let parts = parts_of(&msgs);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].more && !parts[1].more);
    }

    #[test]
    fn a_part_is_never_smaller_than_the_floor() {
        let msgs = in_parts(snapshot(130), 1);
        let parts = parts_of(&msgs);
        assert_eq!(
            parts.iter().map(|p| p.entries.len()).collect::<Vec<_>>(),
            [MIN_SNAPSHOT_PART, MIN_SNAPSHOT_PART, 2]
        );
        // Within the floor: one message.
        assert_eq!(in_parts(snapshot(64), 1), vec![snapshot(64)]);
    }
}
