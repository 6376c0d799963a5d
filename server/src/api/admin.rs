//! The admin API, served on a local Unix socket (mode 0600) and used by the CLI.
//!
//! Besides the socket's file mode, every call checks the caller's kernel-reported uid:
//! only root and the server's own user may administer it.

use std::sync::Arc;

use common::proto::tessera::admin_server::Admin;
use common::proto::tessera::{
    Agent, AgentIdRequest, Bundle as WireBundle, CreateJoinTokenRequest, CreateJoinTokenResponse,
    Entry, EntryIdRequest, EntrySpec, GetBundleRequest, HealthRequest, HealthResponse,
    ListAgentsRequest, ListAgentsResponse, ListEntriesRequest, ListEntriesResponse,
    UpdateEntryRequest,
};
use common::proto::tessera::{
    AuditRecord as WireAuditRecord, ListAuditRequest, ListCasRequest, ListCasResponse,
    RotateCaRequest, VerifyAuditRequest, VerifyAuditResponse,
};
use common::proto::tessera::{
    EndTaskRequest, ListTasksRequest, ListTasksResponse, PolicyDecision, PolicyStatus,
    ReloadPolicyRequest, Task, TaskIdRequest, TaskSpec,
};
use common::{BundleCell, TaskId};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::wire;
use crate::audit::anchor::{AnchorFiles, AnchoredReport, PublicKey, verify_anchored};
use crate::bundle::BundlePublisher;
use crate::datastore::{Datastore, UnixUser};
use crate::node_attestation::NodeAttestor;
use crate::readiness::Readiness;
use crate::registration::Registrar;
use crate::server_identity::ServerIdentity;
use crate::tasks::{Requester, Tasks};

/// The admin API service.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    pub(crate) registrar: Registrar,
    pub(crate) attestor: NodeAttestor,
    pub(crate) bundle: BundleCell,
    pub(crate) publisher: Arc<BundlePublisher>,
    pub(crate) identity: Arc<ServerIdentity>,
    pub(crate) ds: Arc<dyn Datastore>,
    pub(crate) tasks: Arc<Tasks>,
    pub(crate) readiness: Arc<Readiness>,
    /// Members of this group (by gid) may administer too (e.g. task approvers).
    pub(crate) admin_gid: Option<u32>,
    /// The signed checkpoints `VerifyAudit` checks the log against.
    pub(crate) audit_anchor: AnchorFiles,
}

/// The operator calling: root, the server's own user, or a member of the admin group.
/// Returns their Unix user: uid and name (`uid:N` if the uid has no name).
fn operator<T>(req: &Request<T>, admin_gid: Option<u32>) -> Result<UnixUser, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied("caller credentials unavailable"))?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let me = nix::unistd::geteuid().as_raw();
    let name = daemon::users::user_name(uid);
    let in_group = admin_gid.is_some_and(|g| {
        gid == g
            || nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g))
                .ok()
                .flatten()
                .is_some_and(|grp| grp.mem.contains(&name))
    });
    if uid == 0 || uid == me || in_group {
        Ok(UnixUser { uid, name })
    } else {
        tracing::warn!(uid, "admin call refused for uid");
        Err(Status::permission_denied(
            "admin API is restricted to root, the server's user and the admin group",
        ))
    }
}

impl AdminService {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        operator(req, self.admin_gid).map(|_| ())
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Requester, Status> {
        operator(req, self.admin_gid).map(Requester::User)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_task(&self, req: Request<TaskSpec>) -> Result<Response<Task>, Status> {
        let who = self.caller(&req)?;
        let t = self
            .tasks
            .create(&who, &wire::task_request(req.get_ref())?)
            .await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn get_task(&self, req: Request<TaskIdRequest>) -> Result<Response<Task>, Status> {
        self.authorize(&req)?;
        let t = self.tasks.get(&req.get_ref().id.parse()?).await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.authorize(&req)?;
        let state = match req.get_ref().state.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|e: common::task::UnknownTaskState| {
                Status::invalid_argument(e.to_string())
            })?),
        };
        let tasks = self.tasks.list(state).await?;
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.iter().map(wire::task).collect(),
        }))
    }

    async fn approve_task(&self, req: Request<TaskIdRequest>) -> Result<Response<Task>, Status> {
        let who = operator(&req, self.admin_gid)?;
        let t = self.tasks.approve(&req.get_ref().id.parse()?, &who).await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn end_task(&self, req: Request<EndTaskRequest>) -> Result<Response<Task>, Status> {
        let who = self.caller(&req)?;
        let r = req.into_inner();
        let t = self
            .tasks
            .end(&r.id.parse()?, r.outcome.parse()?, &r.reason, &who)
            .await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn explain_task(
        &self,
        req: Request<TaskSpec>,
    ) -> Result<Response<PolicyDecision>, Status> {
        let who = self.caller(&req)?;
        let d = self
            .tasks
            .explain(&who, &wire::task_request(req.get_ref())?)
            .await?;
        Ok(Response::new(wire::decision(&d)))
    }

    async fn reload_policy(
        &self,
        req: Request<ReloadPolicyRequest>,
    ) -> Result<Response<PolicyStatus>, Status> {
        let who = self.caller(&req)?;
        let (description, n) = self.tasks.reload_policy(&who).await?;
        Ok(Response::new(PolicyStatus {
            description,
            policies: i64::try_from(n).unwrap_or(i64::MAX),
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        self.authorize(&req)?;
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
        self.authorize(&req)?;
        let e = self
            .registrar
            .create(&wire::entry_request(req.get_ref())?)
            .await?;
        Ok(Response::new((&e).into()))
    }

    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let e = self
            .registrar
            .update(&r.id.parse()?, &wire::entry_request(&spec)?)
            .await?;
        Ok(Response::new((&e).into()))
    }

    async fn delete_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        self.authorize(&req)?;
        let e = self.tasks.delete_entry(&req.get_ref().id.parse()?).await?;
        Ok(Response::new((&e).into()))
    }

    async fn get_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        self.authorize(&req)?;
        let e = self.registrar.get(&req.get_ref().id.parse()?).await?;
        Ok(Response::new((&e).into()))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        self.authorize(&req)?;
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
        self.authorize(&req)?;
        let agents = self.attestor.list().await?;
        Ok(Response::new(ListAgentsResponse {
            agents: agents.iter().map(wire::agent).collect(),
        }))
    }

    async fn evict_agent(&self, req: Request<AgentIdRequest>) -> Result<Response<Agent>, Status> {
        self.authorize(&req)?;
        let a = self.attestor.evict(&req.get_ref().spiffe_id).await?;
        Ok(Response::new(wire::agent(&a)))
    }

    async fn ban_agent(&self, req: Request<AgentIdRequest>) -> Result<Response<Agent>, Status> {
        self.authorize(&req)?;
        let a = self.attestor.ban(&req.get_ref().spiffe_id).await?;
        Ok(Response::new(wire::agent(&a)))
    }

    async fn get_bundle(
        &self,
        req: Request<GetBundleRequest>,
    ) -> Result<Response<WireBundle>, Status> {
        self.authorize(&req)?;
        let b = self.bundle.get();
        Ok(Response::new((&*b).into()))
    }

    async fn health(
        &self,
        req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(wire::health(self.readiness.check().await)))
    }

    async fn list_cas(
        &self,
        req: Request<ListCasRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(wire::cas(&self.publisher.ca.list())))
    }

    async fn rotate_ca(
        &self,
        req: Request<RotateCaRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        self.authorize(&req)?;
        self.publisher
            .rotate_ca_now(&*self.ds, &self.identity)
            .await?;
        Ok(Response::new(wire::cas(&self.publisher.ca.list())))
    }

    type ListAuditStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<WireAuditRecord, Status>> + Send>>;

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        self.authorize(&req)?;
        let task: Option<TaskId> = match req.get_ref().task_id.as_str() {
            "" => None,
            id => Some(id.parse()?),
        };
        let records = self.ds.list_audit(task.as_ref()).await?;
        let items: Vec<Result<WireAuditRecord, Status>> =
            records.iter().map(|r| Ok(wire::audit_record(r))).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.authorize(&req)?;
        // The checkpoints first: one written after the log is read covers records the log
        // read does not hold, and would look like a deletion.
        let files = &self.audit_anchor;
        let checkpoints = tokio::fs::read_to_string(&files.checkpoints)
            .await
            .map_err(|e| format!("{}: {e}", files.checkpoints.display()));
        let key = PublicKey::read(&files.public_key);
        let log = self.ds.list_audit(None).await?;
        let (report, unreadable) = match (checkpoints, key) {
            (Ok(text), Ok(key)) => (verify_anchored(&log, &text, &key), None),
            (Err(e), _) | (_, Err(e)) => (AnchoredReport::chain_only(&log), Some(e)),
        };
        let mut problems = report.messages();
        if let Some(e) = unreadable {
            problems.push(format!("cannot check the signed checkpoints: {e}"));
        }
        if !problems.is_empty() {
            tracing::error!(problems = %problems.join("; "), "audit log verification failed");
        }
        let resp = VerifyAuditResponse {
            ok: problems.is_empty(),
            records: i64::try_from(report.chain.verified).unwrap_or(i64::MAX),
            first_bad_seq: report.first_bad_seq(),
            error: problems.join("; "),
            problems,
            checkpoints: i64::try_from(report.checkpoints).unwrap_or(i64::MAX),
            anchored: report.anchored,
        };
        Ok(Response::new(resp))
    }
}
