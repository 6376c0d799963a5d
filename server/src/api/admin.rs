//! The admin API, served on a local Unix socket (mode 0600) and used by the CLI.
//!
//! Besides the socket's file mode, every call checks the caller's kernel-reported
//! credentials: root, the server's own user and members of the admin group are platform
//! operators (every tenant, and the platform itself); anyone else acts only for the
//! tenants that name them as admins, and is refused when none does. A tenant admin's view
//! leaves other tenants' objects out, and asking for one by id answers exactly like a
//! missing one.

use std::sync::Arc;

use common::proto::tessera::admin_server::Admin;
use common::proto::tessera::{
    AcknowledgeTaskRequest, EndTaskRequest, ListTasksRequest, ListTasksResponse, OffboardRequest,
    OffboardResponse, PolicyDecision, PolicyStatus, ReloadPolicyRequest, Task, TaskIdRequest,
    TaskSpec,
};
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
    ListTemplatesRequest, ListTemplatesResponse, Template as WireTemplate, TemplateIdRequest,
    TemplateSpec,
};
use common::proto::tessera::{
    ListTenantsRequest, ListTenantsResponse, Tenant as WireTenant,
    TenantDomain as WireTenantDomain, TenantDomainRequest, TenantNameRequest, TenantPolicyRequest,
    TenantSpec,
};
use common::proto::tessera::{ReviewRequest, ReviewResponse};
use common::{BundleCell, TaskId};

/// An identity not used for this long is stale, unless the review asks otherwise.
const DEFAULT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::wire;
use crate::audit::anchor::{AnchorFiles, AnchoredReport, PublicKey, verify_anchored};
use crate::bundle::BundlePublisher;
use crate::datastore::TenantRecord;
use crate::datastore::{Datastore, UnixUser};
use crate::node_attestation::NodeAttestor;
use crate::readiness::Readiness;
use crate::registration::Registrar;
use crate::server_identity::ServerIdentity;
use crate::tasks::{Requester, Tasks};
use crate::tenants::domains::TenantDomains;
use crate::tenants::{Operator, Scope};

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
    /// Tenants' DNS domains: claims, verification through DNS.
    pub(crate) domains: Arc<TenantDomains>,
    /// Identity templates.
    pub(crate) templates: crate::templates::Templates,
}

/// The caller's Unix user (uid and name, `uid:N` if the uid has none), primary gid, and
/// whether they are a platform operator: root, the server's own user, or a member of the
/// admin group.
fn peer<T>(req: &Request<T>, admin_gid: Option<u32>) -> Result<(UnixUser, u32, bool), Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied("caller credentials unavailable"))?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let me = nix::unistd::geteuid().as_raw();
    let user = UnixUser {
        uid,
        name: daemon::users::user_name(uid),
    };
    let in_group = admin_gid.is_some_and(|g| crate::tenants::in_group(&user, gid, &g.to_string()));
    let platform = uid == 0 || uid == me || in_group;
    Ok((user, gid, platform))
}

impl AdminService {
    /// The operator calling, with the tenants they act for; refused when they are neither
    /// a platform operator nor any tenant's admin.
    async fn operator<T>(&self, req: &Request<T>) -> Result<Operator, Status> {
        let (user, gid, platform) = peer(req, self.admin_gid)?;
        let scope = self
            .registrar
            .tenants()
            .scope_of(&user, gid, platform)
            .await?;
        if matches!(&scope, Scope::Tenants(t) if t.is_empty()) {
            tracing::warn!(uid = user.uid, "admin call refused for uid");
            return Err(Status::permission_denied(
                "admin API is restricted to root, the server's user, the admin group and \
                 tenant admins",
            ));
        }
        Ok(Operator { user, scope })
    }

    /// A platform operator, or refused.
    async fn platform<T>(&self, req: &Request<T>, what: &'static str) -> Result<Operator, Status> {
        let op = self.operator(req).await?;
        op.require_platform(what)?;
        Ok(op)
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Requester, Status> {
        self.operator(req).await.map(Requester::User)
    }

    /// The wire form of a tenant, with its domains and counts.
    async fn wire_tenant(&self, t: &TenantRecord) -> Result<WireTenant, Status> {
        let domains = self.ds.list_domains(Some(&t.name)).await?;
        let counts = self.ds.tenant_counts(&t.name).await?;
        Ok(wire::tenant(t, &domains, counts))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_task(&self, req: Request<TaskSpec>) -> Result<Response<Task>, Status> {
        let who = self.caller(&req).await?;
        let t = self
            .tasks
            .create(&who, &wire::task_request(req.get_ref())?)
            .await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn get_task(&self, req: Request<TaskIdRequest>) -> Result<Response<Task>, Status> {
        let who = self.caller(&req).await?;
        let t = self.tasks.get_for(&req.get_ref().id.parse()?, &who).await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let who = self.caller(&req).await?;
        let state = match req.get_ref().state.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|e: common::task::UnknownTaskState| {
                Status::invalid_argument(e.to_string())
            })?),
        };
        let tasks = self.tasks.list(state, &who).await?;
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.iter().map(wire::task).collect(),
        }))
    }

    async fn approve_task(&self, req: Request<TaskIdRequest>) -> Result<Response<Task>, Status> {
        let who = self.operator(&req).await?;
        let t = self.tasks.approve(&req.get_ref().id.parse()?, &who).await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn acknowledge_task(
        &self,
        req: Request<AcknowledgeTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let t = self
            .tasks
            .acknowledge(&r.id.parse()?, &r.note, &who)
            .await?;
        Ok(Response::new(wire::task(&t)))
    }

    async fn end_task(&self, req: Request<EndTaskRequest>) -> Result<Response<Task>, Status> {
        let who = self.caller(&req).await?;
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
        let who = self.caller(&req).await?;
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
        let who = Requester::User(self.platform(&req, "reloading the policy").await?);
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
        let who = self.platform(&req, "creating join tokens").await?;
        let r = req.into_inner();
        let (token, id, expires_at) = self
            .attestor
            .generate_token(&r.spiffe_id, r.ttl_seconds, &who.principal())
            .await?;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            spiffe_id: id.to_string(),
            expires_at,
        }))
    }

    async fn create_entry(&self, req: Request<EntrySpec>) -> Result<Response<Entry>, Status> {
        let who = self.operator(&req).await?;
        let e = self
            .registrar
            .create(&wire::entry_request(req.get_ref())?, &who)
            .await?;
        Ok(Response::new((&e).into()))
    }

    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let who = self.operator(&req).await?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let e = self
            .registrar
            .update(&r.id.parse()?, &wire::entry_request(&spec)?, &who)
            .await?;
        Ok(Response::new((&e).into()))
    }

    async fn delete_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        let who = self.operator(&req).await?;
        let e = self
            .tasks
            .delete_entry(&req.get_ref().id.parse()?, &who)
            .await?;
        Ok(Response::new((&e).into()))
    }

    async fn get_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        let who = self.operator(&req).await?;
        let e = self.registrar.get(&req.get_ref().id.parse()?, &who).await?;
        Ok(Response::new((&e).into()))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let entries = self
            .registrar
            .list(&r.spiffe_id, &r.parent_id, &r.tenant, &who)
            .await?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.iter().map(Into::into).collect(),
        }))
    }

    async fn create_template(
        &self,
        req: Request<TemplateSpec>,
    ) -> Result<Response<WireTemplate>, Status> {
        let who = self.operator(&req).await?;
        let t = self
            .templates
            .create(&wire::template_request(req.get_ref())?, &who)
            .await?;
        Ok(Response::new(wire::template(&t)))
    }

    async fn list_templates(
        &self,
        req: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        let who = self.operator(&req).await?;
        let list = self.templates.list(&who, &req.get_ref().tenant).await?;
        Ok(Response::new(ListTemplatesResponse {
            templates: list.iter().map(wire::template).collect(),
        }))
    }

    async fn delete_template(
        &self,
        req: Request<TemplateIdRequest>,
    ) -> Result<Response<WireTemplate>, Status> {
        let who = self.operator(&req).await?;
        let id: common::TemplateId = req.get_ref().id.parse()?;
        let (t, _) = self.templates.delete(&id, &who).await?;
        Ok(Response::new(wire::template(&t)))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        // Agents are the platform's, not a tenant's; tenant admins may list them to name
        // parents of their entries.
        self.operator(&req).await?;
        let agents = self.attestor.list().await?;
        Ok(Response::new(ListAgentsResponse {
            agents: agents.iter().map(wire::agent).collect(),
        }))
    }

    async fn evict_agent(&self, req: Request<AgentIdRequest>) -> Result<Response<Agent>, Status> {
        let who = self.platform(&req, "evicting agents").await?;
        let a = self
            .attestor
            .evict(&req.get_ref().spiffe_id, &who.principal())
            .await?;
        self.tasks
            .end_tasks_of_agent(&a.spiffe_id, "agent evicted")
            .await?;
        Ok(Response::new(wire::agent(&a)))
    }

    async fn ban_agent(&self, req: Request<AgentIdRequest>) -> Result<Response<Agent>, Status> {
        let who = self.platform(&req, "banning agents").await?;
        let a = self
            .attestor
            .ban(&req.get_ref().spiffe_id, &who.principal())
            .await?;
        self.tasks
            .end_tasks_of_agent(&a.spiffe_id, "agent banned")
            .await?;
        Ok(Response::new(wire::agent(&a)))
    }

    async fn get_bundle(
        &self,
        req: Request<GetBundleRequest>,
    ) -> Result<Response<WireBundle>, Status> {
        self.operator(&req).await?;
        let b = self.bundle.get();
        Ok(Response::new((&*b).into()))
    }

    async fn health(
        &self,
        req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        self.operator(&req).await?;
        Ok(Response::new(wire::health(self.readiness.check().await)))
    }

    async fn list_cas(
        &self,
        req: Request<ListCasRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        self.platform(&req, "listing CAs").await?;
        Ok(Response::new(wire::cas(&self.publisher.ca.list())))
    }

    async fn rotate_ca(
        &self,
        req: Request<RotateCaRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        let who = self.platform(&req, "rotating the CA").await?;
        self.publisher
            .rotate_ca_now(&*self.ds, &self.identity, &who.principal())
            .await?;
        Ok(Response::new(wire::cas(&self.publisher.ca.list())))
    }

    type ListAuditStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<WireAuditRecord, Status>> + Send>>;

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let task: Option<TaskId> = match r.task_id.as_str() {
            "" => None,
            id => Some(id.parse()?),
        };
        let tenant = (!r.tenant.is_empty()).then_some(r.tenant.as_str());
        if let Some(t) = tenant
            && !who.sees(t)
        {
            return Err(crate::tenants::TenantError::NotFound(t.to_owned()).into());
        }
        let mut records = self.ds.list_audit(task.as_ref(), tenant).await?;
        // A tenant admin sees its tenants' records only (platform records name no tenant).
        records.retain(|r| {
            r.event.tenant.as_deref().is_some_and(|t| who.sees(t)) || who.is_platform()
        });
        let items: Vec<Result<WireAuditRecord, Status>> =
            records.iter().map(|r| Ok(wire::audit_record(r))).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.platform(&req, "verifying the whole audit log").await?;
        // The checkpoints first: one written after the log is read covers records the log
        // read does not hold, and would look like a deletion.
        let files = &self.audit_anchor;
        let checkpoints = tokio::fs::read_to_string(&files.checkpoints)
            .await
            .map_err(|e| format!("{}: {e}", files.checkpoints.display()));
        let key = PublicKey::read(&files.public_key);
        let log = self.ds.list_audit(None, None).await?;
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

    async fn create_tenant(
        &self,
        req: Request<TenantSpec>,
    ) -> Result<Response<WireTenant>, Status> {
        let who = self.operator(&req).await?;
        let t = self
            .registrar
            .tenants()
            .create(&who, &wire::tenant_request(req.get_ref())?)
            .await?;
        Ok(Response::new(self.wire_tenant(&t).await?))
    }

    async fn update_tenant(
        &self,
        req: Request<TenantSpec>,
    ) -> Result<Response<WireTenant>, Status> {
        let who = self.operator(&req).await?;
        let t = self
            .registrar
            .tenants()
            .update(&who, &wire::tenant_request(req.get_ref())?)
            .await?;
        Ok(Response::new(self.wire_tenant(&t).await?))
    }

    async fn delete_tenant(
        &self,
        req: Request<TenantNameRequest>,
    ) -> Result<Response<WireTenant>, Status> {
        let who = self.operator(&req).await?;
        let t = self
            .registrar
            .tenants()
            .delete(&who, &req.get_ref().name)
            .await?;
        Ok(Response::new(wire::tenant(&t, &[], (0, 0))))
    }

    async fn get_tenant(
        &self,
        req: Request<TenantNameRequest>,
    ) -> Result<Response<WireTenant>, Status> {
        let who = self.operator(&req).await?;
        let t = self
            .registrar
            .tenants()
            .get(&who, &req.get_ref().name)
            .await?;
        Ok(Response::new(self.wire_tenant(&t).await?))
    }

    async fn list_tenants(
        &self,
        req: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let who = self.operator(&req).await?;
        let mut tenants = Vec::new();
        for t in self.registrar.tenants().list(&who).await? {
            tenants.push(self.wire_tenant(&t).await?);
        }
        Ok(Response::new(ListTenantsResponse { tenants }))
    }

    async fn set_tenant_policy(
        &self,
        req: Request<TenantPolicyRequest>,
    ) -> Result<Response<WireTenant>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let text = (!r.clear).then_some(r.policy.as_str());
        let t = self
            .registrar
            .tenants()
            .set_policy(&who, &r.name, text)
            .await?;
        Ok(Response::new(self.wire_tenant(&t).await?))
    }

    async fn add_tenant_domain(
        &self,
        req: Request<TenantDomainRequest>,
    ) -> Result<Response<WireTenantDomain>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let d = self.domains.add(&who, &r.tenant, &r.domain).await?;
        Ok(Response::new(wire::domain(&d)))
    }

    async fn verify_tenant_domain(
        &self,
        req: Request<TenantDomainRequest>,
    ) -> Result<Response<WireTenantDomain>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let d = self.domains.verify(&who, &r.tenant, &r.domain).await?;
        Ok(Response::new(wire::domain(&d)))
    }

    async fn remove_tenant_domain(
        &self,
        req: Request<TenantDomainRequest>,
    ) -> Result<Response<WireTenantDomain>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let d = self.domains.remove(&who, &r.tenant, &r.domain).await?;
        Ok(Response::new(wire::domain(&d)))
    }

    async fn review(
        &self,
        req: Request<ReviewRequest>,
    ) -> Result<Response<ReviewResponse>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        if !r.tenant.is_empty() && !who.sees(&r.tenant) {
            return Err(crate::tenants::TenantError::NotFound(r.tenant.clone()).into());
        }
        let stale_after = match u64::try_from(r.stale_after_seconds) {
            Ok(0) => DEFAULT_STALE_AFTER,
            Ok(s) => std::time::Duration::from_secs(s),
            Err(_) => return Err(Status::invalid_argument("stale_after must not be negative")),
        };
        let visible = |t: &str| who.sees(t) && (r.tenant.is_empty() || r.tenant == t);
        let mut entries = self
            .ds
            .list_entries(&crate::datastore::EntryFilter::default())
            .await?;
        entries.retain(|e| visible(&e.governance.tenant));
        let mut tasks = self.ds.list_tasks(None).await?;
        tasks.retain(|t| (t.state.is_open() || t.awaits_review()) && visible(&t.tenant));
        let ids: Vec<common::EntryId> = entries.iter().map(|e| e.id.clone()).collect();
        let usage = self.ds.entry_usage(Some(&ids)).await?;
        let mut domains = self.ds.list_domains(None).await?;
        domains.retain(|d| visible(&d.tenant));
        let now = crate::clock::now_unix();
        let items = crate::review::review(&crate::review::ReviewInput {
            entries: &entries,
            tasks: &tasks,
            usage: &usage,
            domains: &domains,
            now,
            stale_after,
        });
        Ok(Response::new(ReviewResponse {
            items: items.iter().map(wire::review_item).collect(),
            generated_at: now,
            break_glass_unreviewed: crate::review::unreviewed_break_glass(&tasks)
                .map(wire::task)
                .collect(),
        }))
    }

    async fn certify_entry(&self, req: Request<EntryIdRequest>) -> Result<Response<Entry>, Status> {
        let who = self.operator(&req).await?;
        let e = self
            .registrar
            .certify(&req.get_ref().id.parse()?, &who)
            .await?;
        Ok(Response::new((&e).into()))
    }

    async fn offboard_owner(
        &self,
        req: Request<OffboardRequest>,
    ) -> Result<Response<OffboardResponse>, Status> {
        let who = self.operator(&req).await?;
        let r = req.get_ref();
        let done = self.tasks.offboard(&r.owner, &r.reason, &who).await?;
        Ok(Response::new(OffboardResponse {
            ended_tasks: done.ended_tasks.iter().map(ToString::to_string).collect(),
            disabled_entries: done
                .disabled_entries
                .iter()
                .map(ToString::to_string)
                .collect(),
        }))
    }
}
