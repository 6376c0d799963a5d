//! The admin API, served on a local Unix socket (mode 0600) and used by the CLI.
//!
//! Besides the socket's file mode, every call checks the caller's kernel-reported uid:
//! only root and the server's own user may administer it.

use std::sync::Arc;

use common::BundleCell;
use common::proto::tessera::admin_server::Admin;
use common::proto::tessera::{
    Agent, AgentIdRequest, Bundle as WireBundle, CreateJoinTokenRequest, CreateJoinTokenResponse,
    Entry, EntryIdRequest, EntrySpec, GetBundleRequest, ListAgentsRequest, ListAgentsResponse,
    ListEntriesRequest, ListEntriesResponse, UpdateEntryRequest,
};
use common::proto::tessera::{
    AuditRecord as WireAuditRecord, CaInfo as WireCaInfo, ListAuditRequest, ListCasRequest,
    ListCasResponse, RotateCaRequest, VerifyAuditRequest, VerifyAuditResponse,
};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::app::BundlePublisher;
use crate::audit::{AuditChainError, AuditEvent};
use crate::ca::rotation::CaInfo;
use crate::datastore::{AgentRecord, Datastore};
use crate::node_attestation::NodeAttestor;
use crate::registration::Registrar;
use crate::server_identity::ServerIdentity;

/// The admin API service.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    pub(crate) registrar: Registrar,
    pub(crate) attestor: NodeAttestor,
    pub(crate) bundle: BundleCell,
    pub(crate) publisher: Arc<BundlePublisher>,
    pub(crate) identity: Arc<ServerIdentity>,
    pub(crate) ds: Arc<dyn Datastore>,
}

fn audit_to_wire(r: &crate::audit::AuditRecord) -> WireAuditRecord {
    WireAuditRecord {
        seq: r.seq,
        at_ms: r.at_ms,
        kind: r.event.kind.clone(),
        task_id: r.event.task_id.clone().unwrap_or_default(),
        subject: r.event.subject.clone(),
        detail_json: r.event.detail.to_string(),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
    }
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn cas_to_wire(list: &[CaInfo]) -> ListCasResponse {
    ListCasResponse {
        cas: list
            .iter()
            .map(|c| WireCaInfo {
                serial: c.serial.clone(),
                phase: c.phase.as_str().to_owned(),
                not_before: unix(c.not_before),
                not_after: unix(c.not_after),
            })
            .collect(),
    }
}

fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    let uid = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    let me = nix::unistd::geteuid().as_raw();
    match uid {
        Some(u) if u == 0 || u == me => Ok(()),
        Some(u) => {
            tracing::warn!(uid = u, "admin call refused for uid");
            Err(Status::permission_denied(
                "admin API is restricted to root and the server's user",
            ))
        }
        None => Err(Status::permission_denied("caller credentials unavailable")),
    }
}

fn agent_to_wire(a: &AgentRecord) -> Agent {
    Agent {
        spiffe_id: a.spiffe_id.to_string(),
        serial: a.serial.clone(),
        expires_at: a.expires_at,
        attested_at: a.attested_at,
        banned: a.banned,
        attestation_type: a.attestation_type.clone(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let (token, id, expires_at) = self
            .attestor
            .generate_token(&r.spiffe_id, r.ttl_seconds)
            .await?;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            spiffe_id: id.to_string(),
            expires_at,
        }))
    }

    async fn create_entry(&self, req: Request<EntrySpec>) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let e = self.registrar.create(req.get_ref()).await?;
        Ok(Response::new((&e).into()))
    }

    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let e = self.registrar.update(&r.id, &spec).await?;
        Ok(Response::new((&e).into()))
    }

    async fn delete_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let e = self.registrar.delete(&req.get_ref().id).await?;
        Ok(Response::new((&e).into()))
    }

    async fn get_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        authorize(&req)?;
        let e = self.registrar.get(&req.get_ref().id).await?;
        Ok(Response::new((&e).into()))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        authorize(&req)?;
        let r = req.get_ref();
        let entries = self.registrar.list(&r.spiffe_id, &r.parent_id).await?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.iter().map(Into::into).collect(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        authorize(&req)?;
        let agents = self.attestor.list().await?;
        Ok(Response::new(ListAgentsResponse {
            agents: agents.iter().map(agent_to_wire).collect(),
        }))
    }

    async fn evict_agent(&self, req: Request<AgentIdRequest>) -> Result<Response<Agent>, Status> {
        authorize(&req)?;
        let a = self.attestor.evict(&req.get_ref().spiffe_id).await?;
        Ok(Response::new(agent_to_wire(&a)))
    }

    async fn ban_agent(&self, req: Request<AgentIdRequest>) -> Result<Response<Agent>, Status> {
        authorize(&req)?;
        let a = self.attestor.ban(&req.get_ref().spiffe_id).await?;
        Ok(Response::new(agent_to_wire(&a)))
    }

    async fn get_bundle(
        &self,
        req: Request<GetBundleRequest>,
    ) -> Result<Response<WireBundle>, Status> {
        authorize(&req)?;
        let b = self.bundle.get();
        Ok(Response::new((&*b).into()))
    }

    async fn list_cas(
        &self,
        req: Request<ListCasRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        authorize(&req)?;
        Ok(Response::new(cas_to_wire(&self.publisher.ca.list())))
    }

    async fn rotate_ca(
        &self,
        req: Request<RotateCaRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        authorize(&req)?;
        self.publisher.ca.rotate_now().map_err(|e| {
            tracing::error!(error = %e, "forced CA rotation failed");
            Status::internal("CA rotation failed; see the server log")
        })?;
        self.ds
            .append_audit(&[AuditEvent::new(
                "ca.rotated",
                self.publisher.ca.active().serial_hex(),
                serde_json::json!({ "reason": "operator" }),
            )])
            .await?;
        // Publish the new CA to every agent before presenting a certificate it signed.
        self.publisher.publish();
        if let Err(e) = self.identity.renew() {
            tracing::error!(error = %e, "cannot re-issue the server certificate");
        }
        Ok(Response::new(cas_to_wire(&self.publisher.ca.list())))
    }

    type ListAuditStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<WireAuditRecord, Status>> + Send>>;

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        authorize(&req)?;
        let task = req.get_ref().task_id.clone();
        let records = self
            .ds
            .list_audit((!task.is_empty()).then_some(task.as_str()))
            .await?;
        let items: Vec<Result<WireAuditRecord, Status>> =
            records.iter().map(|r| Ok(audit_to_wire(r))).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        authorize(&req)?;
        let records = self.ds.list_audit(None).await?;
        let resp = match crate::audit::verify(&records) {
            Ok(n) => VerifyAuditResponse {
                ok: true,
                records: i64::try_from(n).unwrap_or(i64::MAX),
                first_bad_seq: 0,
                error: String::new(),
            },
            Err(e) => {
                let seq = match e {
                    AuditChainError::Edited { seq } | AuditChainError::Broken { seq, .. } => seq,
                };
                tracing::error!(error = %e, "audit log verification failed");
                let good = records.iter().take_while(|r| r.seq < seq).count();
                VerifyAuditResponse {
                    ok: false,
                    records: i64::try_from(good).unwrap_or(i64::MAX),
                    first_bad_seq: seq,
                    error: e.to_string(),
                }
            }
        };
        Ok(Response::new(resp))
    }
}
