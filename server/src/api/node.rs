//! The node API: agents attest, renew, sync entries and get workload SVIDs signed.
//!
//! Served over TLS with the server's own SVID. `AttestAgent` is the only call accepted
//! without a client certificate; every other call authenticates the agent's SVID against
//! its stored record first, so an evicted or banned agent is refused on its next call and
//! its sync stream ends at once.

use std::pin::Pin;
use std::sync::Arc;

use common::proto::tessera::node_server::Node;
use common::proto::tessera::{
    AttestAgentRequest, AttestAgentResponse, MintJwtSvidRequest, MintJwtSvidResponse,
    NodeBeginTaskRequest, NodeEndTaskRequest, RenewAgentRequest, RenewAgentResponse,
    SignX509SvidsRequest, SignX509SvidsResponse, SignedX509Svid, SyncRequest, SyncSnapshot,
    SyncUpdate, Task, TaskTokenUse, TaskTokenUseAck, sync_update,
};
use common::{Bundle, BundleCell, RegistrationEntry, SpiffeId};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::AuditEvent;
use crate::ca::rotation::CaSet;
use crate::datastore::{AgentRecord, Datastore, EntryFilter};
use crate::events::{ChangeEvent, Events};
use crate::node_attestation::NodeAttestor;
use crate::tasks::{Requester, Tasks};

/// Most CSRs accepted in one `SignX509Svids` call.
const MAX_CSRS_PER_CALL: usize = 1000;
/// Most audiences in one JWT-SVID.
const MAX_AUDIENCES: usize = 32;
/// Longest audience value.
const MAX_AUDIENCE_LENGTH: usize = 1024;

/// The node API service.
#[derive(Debug, Clone)]
pub(crate) struct NodeService {
    pub(crate) attestor: NodeAttestor,
    pub(crate) ds: Arc<dyn Datastore>,
    pub(crate) ca: Arc<CaSet>,
    pub(crate) events: Events,
    pub(crate) bundle: BundleCell,
    pub(crate) jwt: Arc<crate::jwt_keys::JwtKeyManager>,
    pub(crate) tasks: Arc<Tasks>,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

fn chain_bytes(chain: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<Vec<u8>> {
    chain.iter().map(|c| c.to_vec()).collect()
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

    async fn snapshot(&self, agent: &SpiffeId) -> Result<SyncUpdate, Status> {
        let filter = EntryFilter {
            parent_id: Some(agent.clone()),
            ..Default::default()
        };
        let entries = self.ds.list_entries(&filter).await?;
        Ok(SyncUpdate {
            update: Some(sync_update::Update::Snapshot(SyncSnapshot {
                entries: entries.iter().map(|e| self.wire_entry(e)).collect(),
                bundle: Some(self.wire_bundle()),
                revocations: Some((*self.tasks.revocations()).clone()),
            })),
        })
    }

    /// An entry as its agent sees it: a just-in-time entry carries the grant of the task
    /// that activates it, if any.
    fn wire_entry(&self, e: &RegistrationEntry) -> common::proto::tessera::Entry {
        let mut wire: common::proto::tessera::Entry = e.into();
        if e.jit {
            wire.task = self.tasks.grant_for(&e.id).as_ref().map(Into::into);
        }
        wire
    }

    /// The caller's standing entry: parented to `agent` and not just-in-time.
    async fn requester(&self, agent: &SpiffeId, entry_id: &str) -> Result<Requester, Status> {
        match self.ds.get_entry(entry_id).await? {
            Some(e) if &e.parent_id == agent && !e.jit => Ok(Requester::Workload {
                spiffe_id: e.spiffe_id,
                agent: agent.clone(),
            }),
            _ => Err(Status::permission_denied(
                "the caller has no standing identity on this agent",
            )),
        }
    }

    /// Translates a change into what this agent must hear, if anything.
    fn relevant(&self, event: &ChangeEvent, agent: &SpiffeId) -> Option<Result<SyncUpdate, ()>> {
        let update = match event {
            ChangeEvent::BundleChanged => sync_update::Update::Bundle(self.wire_bundle()),
            ChangeEvent::RevocationsChanged => {
                sync_update::Update::Revocations((*self.tasks.revocations()).clone())
            }
            ChangeEvent::EntryUpserted { entry, .. } if &entry.parent_id == agent => {
                sync_update::Update::EntryUpserted(self.wire_entry(entry))
            }
            ChangeEvent::EntryUpserted {
                entry,
                previous_parent: Some(prev),
            } if prev == agent => sync_update::Update::EntryDeleted(entry.id.clone()),
            ChangeEvent::EntryDeleted { id, parent_id } if parent_id == agent => {
                sync_update::Update::EntryDeleted(id.clone())
            }
            ChangeEvent::AgentRemoved(id) if id == agent => return Some(Err(())),
            _ => return None,
        };
        Some(Ok(SyncUpdate {
            update: Some(update),
        }))
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
        let (_, issued) = self
            .attestor
            .attest_with_token(&req.join_token, &req.csr)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "node attestation refused"))?;
        Ok(Response::new(AttestAgentResponse {
            svid_chain: chain_bytes(&issued.chain),
            bundle: Some(self.wire_bundle()),
        }))
    }

    async fn renew_agent(
        &self,
        req: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        let agent = self.agent(&req).await?;
        let issued = self.attestor.renew(&agent, &req.get_ref().csr).await?;
        Ok(Response::new(RenewAgentResponse {
            svid_chain: chain_bytes(&issued.chain),
            bundle: Some(self.wire_bundle()),
        }))
    }

    type SyncStream = SyncStream;

    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        // Subscribe before reading the snapshot so no commit in between is missed.
        let mut rx = self.events.subscribe();
        let first = self.snapshot(&agent).await?;
        let (tx, out) = mpsc::channel::<Result<SyncUpdate, Status>>(64);
        let this = self.clone();
        tracing::info!(agent_id = %agent, "agent sync stream opened");
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                let item = tokio::select! {
                    () = tx.closed() => return,
                    () = this.shutdown.cancelled() => return,
                    ev = rx.recv() => ev,
                };
                let msg = match item {
                    Ok(ev) => match this.relevant(&ev, &agent) {
                        None => continue,
                        Some(Ok(update)) => Ok(update),
                        Some(Err(())) => {
                            tracing::info!(agent_id = %agent, "ending sync stream of removed agent");
                            Err(Status::permission_denied(format!(
                                "agent {agent} has been evicted or banned"
                            )))
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(agent_id = %agent, missed = n, "sync stream lagged; resending snapshot");
                        this.snapshot(&agent).await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
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
        let csrs = req.into_inner().csrs;
        if csrs.len() > MAX_CSRS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_CSRS_PER_CALL} CSRs per call"
            )));
        }
        let mut svids = Vec::with_capacity(csrs.len());
        let mut audit = Vec::with_capacity(csrs.len());
        let mut task_svids = Vec::new();
        for item in csrs {
            let refuse = |why: String| SignedX509Svid {
                entry_id: item.entry_id.clone(),
                svid_chain: vec![],
                error: why,
            };
            let entry = match self.ds.get_entry(&item.entry_id).await? {
                Some(e) if e.parent_id == agent => e,
                // Same answer for "missing" and "someone else's": an agent learns nothing
                // about entries it is not entitled to.
                _ => {
                    svids.push(refuse("no such entry for this agent".into()));
                    continue;
                }
            };
            let grant = if entry.jit {
                match self.tasks.issue_grant(&entry).await {
                    Ok(g) => Some(g),
                    Err(why) => {
                        svids.push(refuse(why));
                        continue;
                    }
                }
            } else {
                None
            };
            let signed = match &grant {
                None => self.ca.sign_svid(
                    &item.csr,
                    &entry.spiffe_id,
                    entry.x509_svid_ttl,
                    &entry.dns_names,
                ),
                Some(g) => self.ca.sign_svid_for_task(
                    &item.csr,
                    &entry.spiffe_id,
                    entry.x509_svid_ttl.min(g.max_ttl),
                    &entry.dns_names,
                    &g.task.id,
                ),
            };
            match signed {
                Ok(issued) => {
                    let not_after = issued
                        .not_after
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let task_id = grant.as_ref().map(|g| g.task.id.clone());
                    tracing::info!(
                        agent_id = %agent,
                        entry_id = %entry.id,
                        spiffe_id = %entry.spiffe_id,
                        serial = %issued.serial_hex,
                        task_id = task_id.as_deref().unwrap_or(""),
                        "X.509-SVID issued"
                    );
                    let mut detail = serde_json::json!({
                        "entry_id": entry.id,
                        "agent_id": agent.as_str(),
                        "serial": issued.serial_hex,
                        "not_after": not_after,
                    });
                    if let Some(g) = &grant {
                        detail["policy"] = g.decision.to_json();
                        task_svids.push(crate::datastore::TaskSvid {
                            task_id: g.task.id.clone(),
                            serial: issued.serial_hex.clone(),
                            issuer_serial: issued.issuer_serial.clone(),
                            not_after: i64::try_from(not_after).unwrap_or(i64::MAX),
                        });
                    }
                    audit.push(AuditEvent {
                        task_id,
                        ..AuditEvent::new("svid.x509.issued", &entry.spiffe_id, detail)
                    });
                    svids.push(SignedX509Svid {
                        entry_id: entry.id,
                        svid_chain: chain_bytes(&issued.chain),
                        error: String::new(),
                    });
                }
                Err(e) => {
                    tracing::warn!(agent_id = %agent, entry_id = %entry.id, error = %e, "X.509-SVID not issued");
                    svids.push(refuse(e.to_string()));
                }
            }
        }
        // Recorded before any SVID leaves the server.
        self.ds.record_task_svids(&task_svids).await?;
        self.ds.append_audit(&audit).await?;
        Ok(Response::new(SignX509SvidsResponse { svids }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.audience.len() > MAX_AUDIENCES
            || req
                .audience
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LENGTH)
        {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_AUDIENCES} non-empty audiences of at most {MAX_AUDIENCE_LENGTH} bytes"
            )));
        }
        let entry = match self.ds.get_entry(&req.entry_id).await? {
            Some(e) if e.parent_id == agent => e,
            _ => return Err(Status::permission_denied("no such entry for this agent")),
        };
        let grant = if entry.jit {
            Some(
                self.tasks
                    .issue_grant(&entry)
                    .await
                    .map_err(Status::permission_denied)?,
            )
        } else {
            None
        };
        let mut extra = serde_json::Map::new();
        let mut ttl = entry.jwt_svid_ttl;
        if let Some(g) = &grant {
            extra.insert(
                common::task::JWT_CLAIM.into(),
                serde_json::Value::from(g.task.id.clone()),
            );
            ttl = ttl.min(g.max_ttl);
        }
        let now = crate::registration::now_unix();
        let (token, expires_at) = self
            .jwt
            .sign(&entry.spiffe_id, &req.audience, ttl, now, &extra)
            .map_err(|e| {
                tracing::error!(error = %e, "JWT-SVID signing failed");
                Status::internal("JWT-SVID signing failed; see the server log")
            })?;
        self.ds
            .append_audit(&[AuditEvent {
                task_id: grant.as_ref().map(|g| g.task.id.clone()),
                ..AuditEvent::new(
                    "svid.jwt.issued",
                    &entry.spiffe_id,
                    serde_json::json!({
                        "entry_id": entry.id,
                        "agent_id": agent.as_str(),
                        "audience": req.audience,
                        "expires_at": expires_at,
                    }),
                )
            }])
            .await?;
        tracing::info!(
            agent_id = %agent,
            entry_id = %entry.id,
            spiffe_id = %entry.spiffe_id,
            expires_at,
            "JWT-SVID issued"
        );
        Ok(Response::new(MintJwtSvidResponse { token, expires_at }))
    }

    async fn begin_task(
        &self,
        req: Request<NodeBeginTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let req = req.into_inner();
        let requester = self.requester(&agent, &req.requester_entry_id).await?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let task = self.tasks.create(&requester, &spec).await?;
        Ok(Response::new(crate::tasks::to_wire(&task)))
    }

    async fn end_task(&self, req: Request<NodeEndTaskRequest>) -> Result<Response<Task>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let req = req.into_inner();
        let end = req
            .end
            .ok_or_else(|| Status::invalid_argument("end is required"))?;
        if req.requester_entry_ids.len() > MAX_CSRS_PER_CALL {
            return Err(Status::invalid_argument("too many requester entries"));
        }
        let task = self.tasks.get(&end.id).await?;
        let mut requester = None;
        for id in &req.requester_entry_ids {
            if let Ok(r @ Requester::Workload { .. }) = self.requester(&agent, id).await
                && r.label() == task.requester
            {
                requester = Some(r);
                break;
            }
        }
        // Same answer as for a missing task: a workload learns nothing of others' tasks.
        let requester =
            requester.ok_or_else(|| Status::not_found(format!("no task {}", end.id)))?;
        let outcome = end.outcome.parse()?;
        if outcome == crate::tasks::Outcome::Revoked {
            return Err(Status::permission_denied(
                "a workload ends its task as completed, failed or cancelled; revoking is for operators",
            ));
        }
        let task = self
            .tasks
            .end(&end.id, outcome, &end.reason, &requester)
            .await?;
        Ok(Response::new(crate::tasks::to_wire(&task)))
    }

    async fn record_task_token_use(
        &self,
        req: Request<TaskTokenUse>,
    ) -> Result<Response<TaskTokenUseAck>, Status> {
        let agent = self.agent(&req).await?.spiffe_id;
        let u = req.into_inner();
        if u.task_id.len() > common::task::MAX_TASK_ID_LEN
            || u.audience.len() > MAX_AUDIENCE_LENGTH
            || u.reason.len() > MAX_AUDIENCE_LENGTH
        {
            return Err(Status::invalid_argument("field too long"));
        }
        let subject = SpiffeId::new(&u.spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        // Only tasks that exist are recorded: the log is not a sink for arbitrary claims.
        let task = self.tasks.get(&u.task_id).await?;
        self.ds
            .append_audit(&[AuditEvent::for_task(
                "task.jwt.validated",
                &task.id,
                &subject,
                serde_json::json!({
                    "agent_id": agent.as_str(),
                    "audience": u.audience,
                    "accepted": u.accepted,
                    "reason": u.reason,
                    "expires_at": u.expires_at,
                }),
            )])
            .await?;
        Ok(Response::new(TaskTokenUseAck {}))
    }
}
