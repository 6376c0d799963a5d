//! Tasks: just-in-time identities bound to a purpose, decided by policy, ended on time.
//!
//! A task activates a dormant just-in-time entry (JIT access) or creates a temporary one
//! that is deleted when the task ends (JIT provisioning). Policy decides at request time
//! whether it may start, whether an approver other than the requester must approve it, and
//! its longest lifetime; it is evaluated again at every issuance under the task.
//!
//! Every transition is one compare-and-set in the datastore together with its audit
//! records, then published to the agents' sync streams: the entry becomes live (with a
//! [`TaskGrant`]) when the task activates and dormant (or deleted) when it ends. Tasks that
//! end before their deadline are published to every agent as a [`RevocationSet`], with
//! CRLs listing the X.509-SVIDs issued under them, so open Workload API streams drop them
//! and `ValidateJWTSVID` refuses their tokens. A background loop expires tasks whose
//! deadline passed, whether or not anybody calls anything; and no credential is ever
//! issued past the deadline in the first place.
//!
//! Deadlines are wall-clock time read from a [`Clock`], so tests move a `ManualClock` past
//! a deadline and watch the expiry loop end the task, in milliseconds.

mod remote;
mod request;
mod revocation;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::task::{REQUESTER_EXITED, TaskBinding, TaskGrant, TaskState};
use common::{EntryId, RegistrationEntry, SpiffeId, TaskId};
use serde_json::json;

pub use self::request::{Outcome, Requester, TaskRequest, TaskTarget, TokenUse};
use self::request::{check_reason, check_text, principal_of};
pub use self::revocation::{EndedTask, RevocationSet};
use self::revocation::{RevocationState, ended_early};
use crate::audit::{AuditEvent, AuditKind, SERVER_ACTOR};
use crate::ca::rotation::CaSet;
use crate::clock::Clock;
use crate::datastore::{
    Acknowledgement, Datastore, DatastoreError, EntryFilter, LimitReached, TaskEnd, TaskLimits,
    TaskRecord, UnixUser,
};
use crate::events::{ChangeEvent, Events};
use crate::policy::{
    Action, Decision, EntryFacts, PolicyEngine, PolicyRequest, Principal, TenantPolicies,
};
use crate::registration::{EntryRequest, Registrar, RegistrationError};
use crate::tenants::{Operator, Scope, validate_owner};

/// How often the server looks for tasks past their deadline.
const EXPIRY_TICK: Duration = Duration::from_millis(200);
/// Revocations are pruned every this many expiry ticks (5 s).
const PRUNE_EVERY_TICKS: u32 = 25;
/// Most standing entries a workload may speak for in one call.
const MAX_REQUESTER_ENTRIES: usize = 1000;

/// Why a task ends when the standing identity that requested it is deleted.
pub const REQUESTER_DELETED: &str = "requester identity deleted";
/// Why a task ends (and an entry is disabled) when its owner leaves; `: REASON` follows
/// when the operator gave one.
pub const OWNER_OFFBOARDED: &str = "owner offboarded";

/// What offboarding an owner did: the tasks it ended and the entries it disabled (both
/// empty when an earlier run already did everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offboarded {
    /// Tasks ended (revoked) now.
    pub ended_tasks: Vec<TaskId>,
    /// Entries disabled now.
    pub disabled_entries: Vec<EntryId>,
}

/// Why a task operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such task or entry.
    #[error("{0}")]
    NotFound(String),
    /// Policy denied it.
    #[error("{0}")]
    Denied(String),
    /// The caller may not do this to this task.
    #[error("{0}")]
    Forbidden(String),
    /// The task is not in a state that allows it.
    #[error("{0}")]
    WrongState(String),
    /// The entry already has an open task, or a provisioned entry duplicates one.
    #[error("{0}")]
    Conflict(String),
    /// The tenant is at its quota of open tasks.
    #[error("{0}")]
    Quota(String),
    /// Entry validation failed (JIT provisioning).
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// The datastore failed.
    #[error(transparent)]
    Datastore(DatastoreError),
}

impl From<DatastoreError> for TaskError {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::Conflict(m) => Self::Conflict(m),
            other => Self::Datastore(other),
        }
    }
}

/// The error for a task refused by `limit` (`source`: what set the per-entry limit).
fn limit_refusal(task: &TaskRecord, limit: LimitReached, source: &str) -> TaskError {
    let entry = &task.entry_id;
    match limit {
        LimitReached::TenantOpenTasks { max } => TaskError::Quota(format!(
            "tenant {} is at its limit of {max} open tasks",
            task.tenant
        )),
        LimitReached::SelectorsBoundAlone => TaskError::Conflict(format!(
            "entry {entry} already has an open task; a task bound by selectors is open alone \
             on its entry (bind tasks to their processes to run several at once)"
        )),
        LimitReached::EntryParallel { open, max } => TaskError::Quota(format!(
            "entry {entry} already has {open} open tasks: at most {max} at once ({source})"
        )),
    }
}

/// What an issuance under a task may use.
#[derive(Debug, Clone)]
pub struct IssueGrant {
    /// The task.
    pub task: TaskRecord,
    /// Longest lifetime for the credential: never past the deadline or the policy's cap.
    pub max_ttl: Duration,
    /// The policy decision for the issuance.
    pub decision: Decision,
}

impl crate::metrics::ActiveTasks for Tasks {
    /// In memory; read when metrics are scraped.
    fn active_count(&self) -> usize {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// The task service.
#[derive(Debug)]
pub struct Tasks {
    ds: Arc<dyn Datastore>,
    registrar: Registrar,
    policy: Arc<PolicyEngine>,
    events: Events,
    ca: Arc<CaSet>,
    clock: Arc<dyn Clock>,
    max_ttl: Duration,
    /// Most tasks open at once on one entry.
    max_parallel: usize,
    /// Longest lifetime of a break-glass task.
    break_glass_max_ttl: Duration,
    /// Active tasks by entry id, oldest first (what sync streams attach to entries).
    active: RwLock<HashMap<EntryId, Vec<TaskGrant>>>,
    revocations: RevocationState,
    metrics: Arc<crate::metrics::ServerMetrics>,
}

impl Tasks {
    /// The service; call [`Tasks::load`] before serving.
    pub fn new(
        ds: Arc<dyn Datastore>,
        registrar: Registrar,
        policy: Arc<PolicyEngine>,
        events: Events,
        ca: Arc<CaSet>,
        clock: Arc<dyn Clock>,
        max_ttl: Duration,
    ) -> Self {
        Self {
            ds,
            registrar,
            policy,
            events,
            ca,
            clock,
            max_ttl,
            max_parallel: usize::try_from(crate::config::DEFAULT_MAX_PARALLEL_TASKS_PER_ENTRY)
                .unwrap_or(usize::MAX),
            break_glass_max_ttl: crate::config::DEFAULT_BREAK_GLASS_MAX_TTL,
            active: RwLock::default(),
            revocations: RevocationState::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts task transitions and revocations in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::ServerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// At most `n` (at least one) tasks open at once on one entry.
    pub fn with_max_parallel_per_entry(mut self, n: u32) -> Self {
        self.max_parallel = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        self
    }

    /// A break-glass task lives at most `ttl` (at least one second).
    pub fn with_break_glass_max_ttl(mut self, ttl: Duration) -> Self {
        self.break_glass_max_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    fn server_max_ttl(&self) -> i64 {
        i64::try_from(self.max_ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// The lifetime a request asks for, in seconds (unset: as long as the server allows).
    fn asked_ttl(&self, request: &TaskRequest) -> i64 {
        request.ttl.map_or_else(
            || self.server_max_ttl(),
            |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        )
    }

    /// The policy engine.
    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    /// Reads active tasks and revocations from the datastore (at start-up).
    pub async fn load(&self) -> Result<(), DatastoreError> {
        let active = self.ds.list_tasks(Some(TaskState::Active)).await?;
        let mut map: HashMap<EntryId, Vec<TaskGrant>> = HashMap::new();
        // Listed oldest first, so each entry's grants are too.
        for t in &active {
            map.entry(t.entry_id.clone()).or_default().push(grant(t));
        }
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.revocations.start_numbering_at(self.clock.now());
        self.refresh_revocations(true).await
    }

    /// The grants of the active tasks that make `entry_id` live, oldest first (none:
    /// dormant).
    pub fn grants_for(&self, entry_id: &EntryId) -> Vec<TaskGrant> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(entry_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The oldest grant of `entry_id`, if any.
    #[cfg(test)]
    pub fn grant_for(&self, entry_id: &EntryId) -> Option<TaskGrant> {
        self.grants_for(entry_id).into_iter().next()
    }

    /// The current revocations (sent to every agent).
    pub fn revocations(&self) -> Arc<RevocationSet> {
        self.revocations.current()
    }

    fn policy_request(
        &self,
        action: Action,
        principal: Principal,
        entry: &RegistrationEntry,
        t: Purpose<'_>,
        ttl_seconds: i64,
    ) -> PolicyRequest {
        PolicyRequest {
            action,
            principal,
            entry: EntryFacts {
                id: entry.id.to_string(),
                spiffe_id: entry.spiffe_id.to_string(),
                jit: entry.jit,
                selectors: entry.selectors.iter().map(ToString::to_string).collect(),
                tenant: entry.governance.tenant.clone(),
            },
            scopes: t.scopes.to_vec(),
            audience: t.audience.to_owned(),
            declared_audiences: t.audiences.to_vec(),
            ttl_seconds,
            ticket: t.ticket.to_owned(),
            reason: t.reason.to_owned(),
            approver: t.approver.map(str::to_owned),
            requester_uid: t.requester_uid,
            approver_uid: t.approver_uid,
            now_unix: self.clock.now_unix(),
            provisioned: t.provisioned,
            break_glass: t.break_glass,
        }
    }

    /// Asks the global policies, then the own policies of the entry's tenant (read fresh,
    /// so a change on any server applies to the next decision). A tenant that cannot be
    /// read denies.
    async fn decide(&self, req: &PolicyRequest) -> Decision {
        let mut all = self.decide_each(std::slice::from_ref(req)).await;
        all.pop().unwrap_or_else(|| {
            let mut d = self.policy.evaluate(req);
            d.deny(Vec::new());
            d
        })
    }

    /// [`Self::decide`] for several requests about one entry (e.g. one per audience of a
    /// JWT-SVID), reading its tenant's policies once: one decision per request, in order.
    async fn decide_each(&self, reqs: &[PolicyRequest]) -> Vec<Decision> {
        let Some(first) = reqs.first() else {
            return Vec::new();
        };
        match self.ds.get_tenant(&first.entry.tenant).await {
            Ok(tenant) => {
                let own = tenant.as_ref().and_then(|t| {
                    t.policy.as_deref().map(|text| TenantPolicies {
                        tenant: &t.name,
                        text,
                    })
                });
                reqs.iter()
                    .map(|req| self.policy.evaluate_for(req, own))
                    .collect()
            }
            Err(e) => {
                tracing::error!(error = %e, tenant = %first.entry.tenant, "cannot read a tenant's policies");
                reqs.iter()
                    .map(|req| {
                        let mut d = self.policy.evaluate(req);
                        d.deny(Vec::new());
                        d.errors.push(
                            "cannot read the tenant's policies; see the server log".to_owned(),
                        );
                        d
                    })
                    .collect()
            }
        }
    }

    /// Resolves the entry a request activates, or the entry it provisions (`true`).
    async fn target(
        &self,
        requester: &Requester,
        target: &TaskTarget,
    ) -> Result<(RegistrationEntry, bool), TaskError> {
        let entry = match target {
            TaskTarget::Provision {
                spiffe_id,
                parent_id,
                selectors,
                tenant,
            } => {
                let parent_id = match requester {
                    Requester::Workload { agent, .. } => agent.to_string(),
                    Requester::User(_) => parent_id.clone(),
                };
                let spec = EntryRequest {
                    spiffe_id: spiffe_id.clone(),
                    parent_id,
                    selectors: selectors.clone(),
                    jit: true,
                    tenant: tenant.clone(),
                    owner: requester.label(),
                    ..Default::default()
                };
                let entry = self
                    .registrar
                    .prepare(&requester.as_operator(), &spec, self.clock.now_unix())
                    .await?;
                self.check_new_spiffe_id(requester, &entry).await?;
                return Ok((entry, true));
            }
            TaskTarget::Entry(id) => self
                .ds
                .get_entry(id)
                .await?
                .filter(|e| requester.sees(&e.governance.tenant))
                .ok_or_else(|| TaskError::NotFound(format!("no entry {id}")))?,
            TaskTarget::SpiffeId {
                spiffe_id,
                parent_id,
            } => {
                let parent_id = match requester {
                    Requester::Workload { agent, .. } => Some(agent.clone()),
                    Requester::User(_) => parent_id.clone(),
                };
                let mut found: Vec<RegistrationEntry> = self
                    .ds
                    .list_entries(&EntryFilter {
                        spiffe_id: Some(spiffe_id.clone()),
                        parent_id,
                        tenant: None,
                    })
                    .await?
                    .into_iter()
                    .filter(|e| e.jit && requester.sees(&e.governance.tenant))
                    .collect();
                match found.len() {
                    0 => {
                        return Err(TaskError::NotFound(format!(
                            "no just-in-time entry for {spiffe_id}"
                        )));
                    }
                    1 => found.remove(0),
                    n => {
                        return Err(TaskError::Invalid(format!(
                            "{n} just-in-time entries have SPIFFE ID {spiffe_id}: name one with --entry-id"
                        )));
                    }
                }
            }
        };
        if let Requester::Workload { agent, .. } = requester
            && &entry.parent_id != agent
        {
            return Err(TaskError::NotFound(format!("no entry {}", entry.id)));
        }
        if !entry.jit {
            return Err(TaskError::Invalid(format!(
                "entry {} is not just-in-time: it is live without a task, so a task cannot activate it. \
                 Create a just-in-time entry for the task (`entry create --jit ...`), or start the task \
                 with --provision to create a temporary one",
                entry.id
            )));
        }
        Ok((entry, false))
    }

    /// A provisioning task creates an identity that does not exist yet: refused when an
    /// entry (standing or just-in-time) already has its SPIFFE ID, naming that entry's
    /// tenant only to a requester who may see it.
    async fn check_new_spiffe_id(
        &self,
        requester: &Requester,
        entry: &RegistrationEntry,
    ) -> Result<(), TaskError> {
        let existing = self
            .ds
            .list_entries(&EntryFilter {
                spiffe_id: Some(entry.spiffe_id.clone()),
                ..EntryFilter::default()
            })
            .await?;
        let Some(e) = existing.first() else {
            return Ok(());
        };
        Err(TaskError::Conflict(
            if requester.sees(&e.governance.tenant) {
                format!(
                    "SPIFFE ID {} already exists as entry {} of tenant {}: a provisioning task \
                 creates a new identity; to use that one, make it just-in-time and start \
                 the task on it",
                    entry.spiffe_id, e.id, e.governance.tenant
                )
            } else {
                format!(
                    "SPIFFE ID {} already exists in another tenant",
                    entry.spiffe_id
                )
            },
        ))
    }

    /// The limits a new task on `entry` must stay within: its tenant's quota of open
    /// tasks, and, unless the task provisions its entry, the least of the server's
    /// `max_parallel_tasks_per_entry`, the tenant's and the policy's `@max_parallel`, each
    /// named for the refusal. Checked where the task is stored (`create_task_within`).
    async fn limits(
        &self,
        entry: &RegistrationEntry,
        provisioned: bool,
        decision: &Decision,
    ) -> Result<(TaskLimits, String), TaskError> {
        let tenant = self.ds.get_tenant(&entry.governance.tenant).await?;
        let mut sources = vec![(
            u64::try_from(self.max_parallel).unwrap_or(u64::MAX),
            "the server's max_parallel_tasks_per_entry".to_owned(),
        )];
        if let Some(n) = tenant.as_ref().and_then(|t| t.max_parallel_tasks_per_entry) {
            sources.push((
                u64::try_from(n).unwrap_or(u64::MAX),
                format!(
                    "tenant {}'s max_parallel_tasks_per_entry",
                    entry.governance.tenant
                ),
            ));
        }
        if let Some(n) = decision.max_parallel {
            sources.push((
                u64::from(n),
                format!(
                    "@max_parallel of policies [{}]",
                    decision.policies.join(", ")
                ),
            ));
        }
        let (max, source) = sources
            .into_iter()
            .min_by_key(|(n, _)| *n)
            .unwrap_or((u64::MAX, String::new()));
        Ok((
            TaskLimits {
                tenant_open_tasks: tenant.and_then(|t| t.max_open_tasks),
                entry_parallel: (!provisioned).then_some(max.max(1)),
            },
            source,
        ))
    }

    /// Starts a task: resolves the entry, asks the policy, stores the task (pending
    /// approval or active) and, when active, makes the entry live on its agent.
    pub async fn create(
        &self,
        requester: &Requester,
        request: &TaskRequest,
    ) -> Result<TaskRecord, TaskError> {
        request.check()?;
        check_binding(requester, &request.binding)?;
        let (entry, provisioned) = self.target(requester, &request.target).await?;
        let now = self.clock.now_unix();
        let id = TaskId::generate();
        let asked = self.asked_ttl(request);
        let decision = self
            .decide(&self.policy_request(
                Action::BeginTask,
                requester.principal(),
                &entry,
                Purpose::of_request(request, provisioned, requester),
                asked,
            ))
            .await;
        let requested = AuditEvent::for_task(
            AuditKind::TaskRequested,
            &id,
            &entry.spiffe_id,
            json!({
                "requester": requester.label(),
                "requester_uid": requester.unix().map(|u| u.uid),
                "requester_user": requester.unix().map(|u| &u.name),
                "entry_id": entry.id,
                "parent_id": entry.parent_id.as_str(),
                "provisioned": provisioned,
                "reason": request.reason,
                "ticket": request.ticket,
                "scopes": request.scopes,
                "audiences": request.audiences,
                "ttl_seconds": request.ttl.map_or(0, |d| d.as_secs()),
                "binding": binding_json(&request.binding),
                "break_glass": request.break_glass,
            }),
        );
        let decided = AuditEvent::for_task(
            AuditKind::TaskPolicy,
            &id,
            &entry.spiffe_id,
            decision.to_json(),
        );
        let refusal = if !decision.allowed {
            Some(decision.explain())
        } else if request.break_glass && !decision.break_glass_allowed {
            // Refused rather than left waiting for an approver: whoever breaks glass needs
            // the credential now, and must hear at once that policy does not allow it.
            Some(format!(
                "break-glass is not allowed for {} on {}: no permit policy that allows the \
                 request carries @break_glass(\"allowed\"), or a tenant policy requires \
                 approval ({}); ask without --break-glass to wait for an approver",
                decision.principal,
                decision.entry,
                decision.explain()
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            let audit = stamped(
                vec![requested, decided],
                &requester.label(),
                &entry.governance.tenant,
            );
            self.ds.append_audit(&audit).await?;
            tracing::info!(task_id = %id, requester = %requester.label(), break_glass = request.break_glass, explanation = %why, "task denied by policy");
            return Err(TaskError::Denied(why));
        }
        let mut ttl = asked
            .min(decision.max_ttl_seconds.unwrap_or(i64::MAX))
            .min(self.server_max_ttl());
        if request.break_glass {
            ttl = ttl.min(i64::try_from(self.break_glass_max_ttl.as_secs()).unwrap_or(i64::MAX));
        }
        let ttl = ttl.max(1);
        // Break-glass skips approval (allowed above); everything else is as policy says.
        let approval_required = decision.approval_required && !request.break_glass;
        let mut task = TaskRecord {
            id,
            state: if approval_required {
                TaskState::PendingApproval
            } else {
                TaskState::Active
            },
            entry_id: entry.id.clone(),
            spiffe_id: entry.spiffe_id.clone(),
            parent_id: entry.parent_id.clone(),
            provisioned,
            requester: requester.label(),
            approver: None,
            reason: request.reason.clone(),
            ticket: request.ticket.clone(),
            scopes: request.scopes.clone(),
            audiences: request.audiences.clone(),
            created_at: now,
            activated_at: (!approval_required).then_some(now),
            deadline: now.saturating_add(ttl),
            end: None,
            decision,
            requester_unix: requester.unix().cloned(),
            approver_uid: None,
            tenant: entry.governance.tenant.clone(),
            binding: request.binding.clone(),
            break_glass: request.break_glass,
            acknowledgement: None,
            status: None,
        };
        let mut audit = vec![requested, decided];
        audit.push(if approval_required {
            AuditEvent::for_task(
                AuditKind::TaskPendingApproval,
                &task.id,
                &task.spiffe_id,
                json!({ "deadline": task.deadline }),
            )
        } else {
            activated_event(&task)
        });
        if task.break_glass {
            // What SET receivers are told of its start (see `set_push`).
            audit.push(AuditEvent::for_task(
                AuditKind::TaskBreakGlass,
                &task.id,
                &task.spiffe_id,
                json!({
                    "requester": task.requester,
                    "requester_uid": task.requester_unix.as_ref().map(|u| u.uid),
                    "reason": task.reason,
                    "ticket": task.ticket,
                    "entry_id": task.entry_id,
                    "deadline": task.deadline,
                    "policies": task.decision.policies,
                }),
            ));
        }
        let audit = stamped(audit, &task.requester, &task.tenant);
        let (limits, source) = self.limits(&entry, provisioned, &task.decision).await?;
        let _write = self.events.begin_write();
        task.status = Some(
            self.ds
                .create_task_within(&task, provisioned.then_some(&entry), &audit, &limits)
                .await?
                .map_err(|limit| limit_refusal(&task, limit, &source))?,
        );
        if task.break_glass {
            tracing::warn!(task_id = %task.id, requester = %task.requester, spiffe_id = %task.spiffe_id, deadline = task.deadline, "break-glass task started without approval; it awaits review");
        }
        self.metrics.task_entered(task.state);
        tracing::info!(task_id = %task.id, state = %task.state, requester = %task.requester, spiffe_id = %task.spiffe_id, deadline = task.deadline, "task created");
        // Publishes the entry (new, for provisioning; now live if the task is active).
        self.changed(&task, Some(entry));
        Ok(task)
    }

    /// Evaluates the policy for `request` as `requester` without starting anything.
    pub async fn explain(
        &self,
        requester: &Requester,
        request: &TaskRequest,
    ) -> Result<Decision, TaskError> {
        let (entry, provisioned) = self.target(requester, &request.target).await?;
        Ok(self
            .decide(&self.policy_request(
                Action::BeginTask,
                requester.principal(),
                &entry,
                Purpose::of_request(request, provisioned, requester),
                self.asked_ttl(request),
            ))
            .await)
    }

    /// One task.
    pub async fn get(&self, id: &TaskId) -> Result<TaskRecord, TaskError> {
        self.ds
            .get_task(id)
            .await?
            .ok_or_else(|| TaskError::NotFound(format!("no task {id}")))
    }

    /// One task `by` may see (another tenant's answers exactly like a missing one).
    pub async fn get_for(&self, id: &TaskId, by: &Requester) -> Result<TaskRecord, TaskError> {
        match self.ds.get_task(id).await? {
            Some(t) if by.sees(&t.tenant) => Ok(t),
            _ => Err(TaskError::NotFound(format!("no task {id}"))),
        }
    }

    /// Tasks `by` may see, optionally in one state.
    pub async fn list(
        &self,
        state: Option<TaskState>,
        by: &Requester,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let mut tasks = self.ds.list_tasks(state).await?;
        tasks.retain(|t| by.sees(&t.tenant));
        Ok(tasks)
    }

    /// Approves a pending task. The approver is an operator who is neither the requester
    /// nor the Unix user that asked for it (by uid or by name), and the policy is asked
    /// again with the approver known.
    pub async fn approve(&self, id: &TaskId, by: &Operator) -> Result<TaskRecord, TaskError> {
        let approver = &by.user;
        let current = self.get_for(id, &Requester::User(by.clone())).await?;
        if current.state != TaskState::PendingApproval {
            return Err(TaskError::WrongState(format!(
                "task {id} is {}, not pending approval",
                current.state
            )));
        }
        let label = check_other_user(&current, approver, "approve")?;
        let entry =
            self.ds.get_entry(&current.entry_id).await?.ok_or_else(|| {
                TaskError::NotFound(format!("entry {} is gone", current.entry_id))
            })?;
        let now = self.clock.now_unix();
        if now >= current.deadline {
            return Err(TaskError::WrongState(format!("task {id} has expired")));
        }
        let mut task = current.clone();
        task.approver = Some(label);
        task.approver_uid = Some(approver.uid);
        let decision = self
            .decide(&self.policy_request(
                Action::BeginTask,
                principal_of(&task.requester),
                &entry,
                Purpose::of_task(&task),
                task.deadline - now,
            ))
            .await;
        if !decision.allowed {
            return Err(TaskError::Denied(decision.explain()));
        }
        task.state = TaskState::Active;
        task.activated_at = Some(now);
        let audit = [
            AuditEvent::for_task(
                AuditKind::TaskApproved,
                &task.id,
                &task.spiffe_id,
                json!({
                    "approver": task.approver,
                    "approver_uid": approver.uid,
                    "policy": decision.to_json(),
                }),
            ),
            activated_event(&task),
        ];
        let audit = stamped(audit.to_vec(), &by.principal(), &task.tenant);
        let _write = self.events.begin_write();
        if !self
            .ds
            .update_task(&task, &[TaskState::PendingApproval], &audit)
            .await?
        {
            return Err(TaskError::WrongState(format!(
                "task {id} changed concurrently; try again"
            )));
        }
        self.metrics.task_entered(task.state);
        tracing::info!(task_id = %task.id, approver = ?task.approver, "task approved and active");
        self.changed(&task, Some(entry));
        Ok(task)
    }

    /// Records the after-the-fact review of break-glass task `id` by `by`, with `note`
    /// (required): `by` must be someone other than the requester (see
    /// `check_other_user`), the task break-glass and not acknowledged yet. It may be open
    /// or ended; nothing else of it changes. Audited as `task.acknowledged`.
    pub async fn acknowledge(
        &self,
        id: &TaskId,
        note: &str,
        by: &Operator,
    ) -> Result<TaskRecord, TaskError> {
        if note.trim().is_empty() {
            return Err(TaskError::Invalid(
                "a note is required: say what the review of the break-glass task found".into(),
            ));
        }
        check_text("note", note)?;
        let mut task = self.get_for(id, &Requester::User(by.clone())).await?;
        if !task.break_glass {
            return Err(TaskError::Forbidden(format!(
                "task {id} is not a break-glass task: there is nothing to acknowledge"
            )));
        }
        if let Some(a) = &task.acknowledgement {
            return Err(TaskError::WrongState(format!(
                "task {id} was already acknowledged by {} at {}",
                a.by,
                common::duration::rfc3339(a.at)
            )));
        }
        let label = check_other_user(&task, &by.user, "acknowledge")?;
        let ack = Acknowledgement {
            by: label,
            uid: by.user.uid,
            at: self.clock.now_unix(),
            note: note.to_owned(),
        };
        let audit = AuditEvent::for_task(
            AuditKind::TaskAcknowledged,
            &task.id,
            &task.spiffe_id,
            json!({
                "acknowledged_by": ack.by,
                "acknowledged_uid": ack.uid,
                "note": ack.note,
                "requester": task.requester,
                "state": task.state.as_str(),
            }),
        );
        let audit = stamped(vec![audit], &by.principal(), &task.tenant);
        if !self.ds.acknowledge_task(&task.id, &ack, &audit).await? {
            return Err(TaskError::WrongState(format!(
                "task {id} was acknowledged concurrently"
            )));
        }
        tracing::info!(task_id = %task.id, by = %ack.by, "break-glass task acknowledged");
        task.acknowledgement = Some(ack);
        Ok(task)
    }

    /// Ends an open task. `by` ends it as `outcome`; a workload may end only its own tasks.
    pub async fn end(
        &self,
        id: &TaskId,
        outcome: Outcome,
        reason: &str,
        by: &Requester,
    ) -> Result<TaskRecord, TaskError> {
        check_reason(reason)?;
        let current = self.get_for(id, by).await?;
        if let Requester::Workload { spiffe_id, .. } = by
            && current.requester != spiffe_id.as_str()
        {
            return Err(TaskError::NotFound(format!("no task {id}")));
        }
        if !current.state.is_open() {
            return Err(TaskError::WrongState(format!(
                "task {id} already ended ({})",
                current.state
            )));
        }
        if current.state == TaskState::PendingApproval
            && matches!(outcome, Outcome::Completed | Outcome::Failed)
        {
            return Err(TaskError::WrongState(format!(
                "task {id} never became active: cancel or revoke it instead"
            )));
        }
        self.finish(current, outcome.state(), reason, &by.label())
            .await?
            .ok_or_else(|| TaskError::WrongState(format!("task {id} ended concurrently")))
    }

    /// The requester a workload on `agent` speaks as: its standing entry `entry_id`,
    /// which must be parented to that agent and not just-in-time, as the Unix user `unix`
    /// the agent attested it as (when known).
    pub async fn workload_requester(
        &self,
        agent: &SpiffeId,
        entry_id: &EntryId,
        unix: Option<UnixUser>,
    ) -> Result<Requester, TaskError> {
        match self.ds.get_entry(entry_id).await? {
            Some(e) if &e.parent_id == agent && !e.jit => Ok(Requester::Workload {
                spiffe_id: e.spiffe_id,
                agent: agent.clone(),
                unix,
                tenant: e.governance.tenant,
            }),
            _ => Err(TaskError::Forbidden(
                "the caller has no standing identity on this agent".into(),
            )),
        }
    }

    /// Ends task `id` for a workload on `agent` whose standing entries are
    /// `requester_entry_ids`: only a task one of them requested, and never as `revoked`.
    pub async fn end_for_workload(
        &self,
        agent: &SpiffeId,
        requester_entry_ids: &[EntryId],
        id: &TaskId,
        outcome: Outcome,
        reason: &str,
    ) -> Result<TaskRecord, TaskError> {
        if requester_entry_ids.len() > MAX_REQUESTER_ENTRIES {
            return Err(TaskError::Invalid("too many requester entries".into()));
        }
        let task = self.get(id).await?;
        let mut requester = None;
        for entry_id in requester_entry_ids {
            if let Ok(r) = self.workload_requester(agent, entry_id, None).await
                && r.label() == task.requester
            {
                requester = Some(r);
                break;
            }
        }
        // Same answer as for a missing task: a workload learns nothing of others' tasks.
        let requester = requester.ok_or_else(|| TaskError::NotFound(format!("no task {id}")))?;
        if outcome == Outcome::Revoked {
            return Err(TaskError::Forbidden(
                "a workload ends its task as completed, failed or cancelled; revoking is for operators".into(),
            ));
        }
        self.end(id, outcome, reason, &requester).await
    }

    /// Ends task `id` because the process it is bound to exited, as `agent` (the agent on
    /// whose node that process ran) observed: only an open task with a process or tree
    /// binding on that agent, ended `cancelled` with reason [`REQUESTER_EXITED`]. Any other
    /// task answers as a missing one.
    pub async fn end_for_holder_exit(
        &self,
        agent: &SpiffeId,
        id: &TaskId,
    ) -> Result<TaskRecord, TaskError> {
        let current = self.get(id).await?;
        if current.binding.holder().is_none_or(|h| &h.agent != agent) {
            return Err(TaskError::NotFound(format!("no task {id}")));
        }
        if !current.state.is_open() {
            return Err(TaskError::WrongState(format!(
                "task {id} already ended ({})",
                current.state
            )));
        }
        self.finish(
            current,
            TaskState::Cancelled,
            REQUESTER_EXITED,
            agent.as_str(),
        )
        .await?
        .ok_or_else(|| TaskError::WrongState(format!("task {id} ended concurrently")))
    }

    /// Records that `agent` validated (or refused) a JWT-SVID of task `task_id` presented
    /// as `subject`. Only tasks that exist are recorded: the log is not a sink for
    /// arbitrary claims.
    pub async fn record_token_use(
        &self,
        agent: &SpiffeId,
        task_id: &TaskId,
        subject: &SpiffeId,
        token_use: &TokenUse,
    ) -> Result<(), TaskError> {
        token_use.check()?;
        let task = self.get(task_id).await?;
        self.ds
            .append_audit(&[AuditEvent::for_task(
                AuditKind::TaskJwtValidated,
                &task.id,
                subject,
                json!({
                    "agent_id": agent.as_str(),
                    "audience": token_use.audience,
                    "accepted": token_use.accepted,
                    "reason": token_use.reason,
                    "expires_at": token_use.expires_at,
                }),
            )])
            .await?;
        Ok(())
    }

    /// Moves an open task to a final state; `None` if it was no longer open.
    async fn finish(
        &self,
        current: TaskRecord,
        state: TaskState,
        reason: &str,
        by: &str,
    ) -> Result<Option<TaskRecord>, TaskError> {
        let mut task = current.clone();
        task.state = state;
        task.end = Some(TaskEnd {
            at: self.clock.now_unix(),
            reason: reason.to_owned(),
        });
        let mut detail = json!({ "state": state.as_str(), "reason": reason, "by": by });
        if task.break_glass {
            // SET receivers hear that a break-glass task ended (see `set_push`).
            detail["break_glass"] = true.into();
            detail["requester"] = task.requester.clone().into();
        }
        let mut audit = vec![AuditEvent::for_task(
            AuditKind::TaskEnded,
            &task.id,
            &task.spiffe_id,
            detail,
        )];
        if task.provisioned {
            audit.push(AuditEvent::for_task(
                AuditKind::EntryDeleted,
                &task.id,
                &task.spiffe_id,
                json!({ "entry_id": task.entry_id, "by": "task end" }),
            ));
        }
        let audit = stamped(audit, by, &task.tenant);
        let _write = self.events.begin_write();
        if !self.ds.update_task(&task, &[current.state], &audit).await? {
            return Ok(None);
        }
        // The grant leaves memory at once, before anything else can fail or wait: from
        // here no SVID is issued under the task.
        self.update_grants(&task);
        self.metrics.task_entered(state);
        if ended_early(&task) {
            self.metrics.revocations.inc();
        }
        tracing::info!(task_id = %task.id, state = %state, reason, by, "task ended");
        let entry = if task.provisioned {
            self.events.publish(ChangeEvent::EntryDeleted {
                id: task.entry_id.clone(),
                parent_id: task.parent_id.clone(),
            });
            None
        } else {
            self.ds.get_entry(&task.entry_id).await?
        };
        self.changed(&task, entry);
        if ended_early(&task)
            && let Err(e) = self.refresh_revocations(true).await
        {
            tracing::error!(error = %e, "cannot publish revocations");
        }
        Ok(Some(task))
    }

    /// Deletes an entry `by` may see; a just-in-time entry's open task ends with it
    /// (revoked). Deleting a standing entry ends (revoked, [`REQUESTER_DELETED`]) the open
    /// tasks its workload requested — unless another standing entry with the same SPIFFE
    /// ID remains (the same workload identity registered under another parent, or
    /// disabled for now): the requester then still exists, and its tasks go on.
    pub async fn delete_entry(
        &self,
        id: &EntryId,
        by: &Operator,
    ) -> Result<RegistrationEntry, TaskError> {
        self.registrar.get(id, by).await?;
        let entry = self.registrar.delete(id, &by.principal()).await?;
        if entry.jit {
            self.entry_deleted(&entry.id).await?;
        } else {
            self.requester_deleted(&entry.spiffe_id, &by.principal())
                .await?;
        }
        Ok(entry)
    }

    /// Ends the open tasks requested by `spiffe_id` if no standing entry with that SPIFFE
    /// ID remains; returns the tasks ended.
    async fn requester_deleted(
        &self,
        spiffe_id: &SpiffeId,
        by: &str,
    ) -> Result<Vec<TaskId>, TaskError> {
        let filter = EntryFilter {
            spiffe_id: Some(spiffe_id.clone()),
            ..EntryFilter::default()
        };
        if self.ds.list_entries(&filter).await?.iter().any(|e| !e.jit) {
            return Ok(Vec::new());
        }
        let requester = spiffe_id.as_str();
        self.end_open(|t| t.requester == requester, REQUESTER_DELETED, by)
            .await
    }

    /// Ends (revoked) the open tasks requested under agent `agent_id`'s identities: tasks
    /// whose requester is the SPIFFE ID of a standing entry parented to the agent, and
    /// tasks whose entry lives on the agent (`parent_id`). Called when the agent is
    /// evicted or banned. Tasks do not record the agent they were requested through, so
    /// an identity that is also registered under another agent loses its tasks too (fail
    /// closed). Returns the tasks ended.
    pub async fn end_tasks_of_agent(
        &self,
        agent_id: &SpiffeId,
        reason: &str,
    ) -> Result<Vec<TaskId>, TaskError> {
        check_reason(reason)?;
        let filter = EntryFilter {
            parent_id: Some(agent_id.clone()),
            ..EntryFilter::default()
        };
        let identities: HashSet<String> = self
            .ds
            .list_entries(&filter)
            .await?
            .into_iter()
            .filter(|e| !e.jit)
            .map(|e| e.spiffe_id.to_string())
            .collect();
        let ended = self
            .end_open(
                |t| &t.parent_id == agent_id || identities.contains(&t.requester),
                reason,
                SERVER_ACTOR,
            )
            .await?;
        if !ended.is_empty() {
            tracing::info!(agent_id = %agent_id, tasks = ended.len(), reason, "ended the tasks of an agent");
        }
        Ok(ended)
    }

    /// An owner leaves: ends (revoked, `owner offboarded: REASON`) every open task `owner`
    /// requested or whose entry `owner` owns, then disables every entry `owner` owns, and
    /// records one `owner.offboarded` audit record naming `by`. Only tasks and entries of
    /// tenants `by` sees are touched. Idempotent: a second run ends and disables nothing.
    pub async fn offboard(
        &self,
        owner: &str,
        reason: &str,
        by: &Operator,
    ) -> Result<Offboarded, TaskError> {
        validate_owner(owner).map_err(TaskError::Invalid)?;
        check_reason(reason)?;
        let why = if reason.is_empty() {
            OWNER_OFFBOARDED.to_owned()
        } else {
            format!("{OWNER_OFFBOARDED}: {reason}")
        };
        let owned: HashSet<EntryId> = self
            .ds
            .list_entries(&EntryFilter::default())
            .await?
            .into_iter()
            .filter(|e| e.governance.owner == owner && by.sees(&e.governance.tenant))
            .map(|e| e.id)
            .collect();
        let actor = by.principal();
        let ended_tasks = self
            .end_open(
                |t| by.sees(&t.tenant) && (t.requester == owner || owned.contains(&t.entry_id)),
                &why,
                &actor,
            )
            .await?;
        let disabled_entries: Vec<EntryId> = self
            .registrar
            .disable_owned(owner, &why, by)
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect();
        let mut event = AuditEvent::new(
            AuditKind::OwnerOffboarded,
            owner,
            json!({
                "owner": owner,
                "reason": reason,
                "ended": ended_tasks.len(),
                "disabled": disabled_entries.len(),
                "ended_tasks": ended_tasks,
                "disabled_entries": disabled_entries,
            }),
        )
        .by(&actor);
        // A tenant admin's record belongs to its tenant (the first, if it has several), so
        // it sees it; a platform operator's record is the platform's.
        if let Scope::Tenants(tenants) = &by.scope
            && let Some(t) = tenants.iter().next()
        {
            event = event.in_tenant(t);
        }
        self.ds.append_audit(&[event]).await?;
        tracing::info!(owner, by = %actor, tasks = ended_tasks.len(), entries = disabled_entries.len(), "owner offboarded");
        Ok(Offboarded {
            ended_tasks,
            disabled_entries,
        })
    }

    /// Ends (revoked, `reason`, by `by`) every open task that `pick` selects, like any
    /// revocation; returns the tasks ended (those that ended concurrently are skipped).
    async fn end_open(
        &self,
        pick: impl Fn(&TaskRecord) -> bool,
        reason: &str,
        by: &str,
    ) -> Result<Vec<TaskId>, TaskError> {
        let mut ended = Vec::new();
        for state in [TaskState::PendingApproval, TaskState::Active] {
            for t in self.ds.list_tasks(Some(state)).await? {
                if !pick(&t) {
                    continue;
                }
                if let Some(t) = self.finish(t, TaskState::Revoked, reason, by).await? {
                    ended.push(t.id);
                }
            }
        }
        Ok(ended)
    }

    /// Reloads the policy set (the last good set stays in force if the new one is
    /// invalid) and audits who did it; returns the new set's description and size.
    pub async fn reload_policy(&self, by: &Requester) -> Result<(String, usize), TaskError> {
        let n = self.policy.reload().map_err(|e| {
            tracing::warn!(error = %e, "policy reload refused; the last good policy set stays in force");
            TaskError::Invalid(format!("{e} (the last good policy set stays in force)"))
        })?;
        let description = self.policy.describe();
        self.ds
            .append_audit(&[AuditEvent::new(
                AuditKind::PolicyReloaded,
                &description,
                json!({ "policies": n, "by": by.label() }),
            )
            .by(by.label())])
            .await?;
        tracing::info!(policies = n, source = %description, "policy reloaded");
        Ok((description, n))
    }

    /// Ends the open tasks of an entry that was deleted.
    async fn entry_deleted(&self, entry_id: &EntryId) -> Result<(), TaskError> {
        for t in self.ds.open_tasks_for_entry(entry_id).await? {
            self.finish(t, TaskState::Revoked, "entry deleted", "server")
                .await?;
        }
        Ok(())
    }

    /// Updates the in-memory grants (idempotent).
    fn update_grants(&self, task: &TaskRecord) {
        let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
        let grants = active.entry(task.entry_id.clone()).or_default();
        grants.retain(|g| g.task_id != task.id);
        if task.state == TaskState::Active {
            grants.push(grant(task));
        }
        if grants.is_empty() {
            active.remove(&task.entry_id);
        }
    }

    /// Updates the in-memory grants and tells the agents.
    fn changed(&self, task: &TaskRecord, entry: Option<RegistrationEntry>) {
        self.update_grants(task);
        if let Some(entry) = entry {
            self.events.publish(ChangeEvent::EntryUpserted {
                entry: Arc::new(entry),
                previous_parent: None,
            });
        }
    }

    /// Checks that an SVID may be issued for the just-in-time `entry` now under task
    /// `task_id` (an active task of the entry; `None`: the entry's only active task): it
    /// covers it, its deadline has not passed, and policy allows the issuance. For a
    /// JWT-SVID, `jwt_audience` is the audience list asked for: every value must be one
    /// the task declared (a task that declared none gets no JWT-SVIDs), and the policy is
    /// asked once per distinct audience (context `audience`), each of which must allow it.
    /// For an X.509-SVID (`None`) the policy sees an empty `audience`.
    pub async fn issue_grant(
        &self,
        entry: &RegistrationEntry,
        task_id: Option<&TaskId>,
        jwt_audience: Option<&[String]>,
    ) -> Result<IssueGrant, String> {
        let open = match self.ds.open_tasks_for_entry(&entry.id).await {
            Ok(open) => open,
            Err(e) => {
                tracing::error!(error = %e, "datastore failure checking a task");
                return Err("cannot check the task; see the server log".into());
            }
        };
        let mut active = open.into_iter().filter(|t| t.state == TaskState::Active);
        // The task the agent names, which must be an active task of this entry; an agent
        // that names none (from before parallel tasks) gets the entry's only one.
        let task = match task_id {
            Some(id) => active
                .find(|t| &t.id == id)
                .ok_or_else(|| format!("task {id} is not an active task of entry {}", entry.id))?,
            None => match (active.next(), active.next()) {
                (Some(t), None) => t,
                (None, _) => return Err("entry is just-in-time: it needs an active task".into()),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "entry {} has several active tasks: name the task to issue under",
                        entry.id
                    ));
                }
            },
        };
        let left = task.deadline - self.clock.now_unix();
        if left <= 0 {
            return Err(format!("task {} has reached its deadline", task.id));
        }
        // The agent checks this too; the server decides, whatever an agent sends.
        if let Some(requested) = jwt_audience
            && let Some(refusal) =
                common::task::audience_refusal(&task.id, &task.audiences, requested)
        {
            tracing::info!(task_id = %task.id, entry_id = %entry.id, "JWT-SVID refused: audience not declared by the task");
            return Err(refusal);
        }
        let audiences: Vec<&str> = match jwt_audience {
            None => vec![""],
            Some(requested) => {
                let mut distinct: Vec<&str> = Vec::with_capacity(requested.len());
                for a in requested {
                    if !distinct.contains(&a.as_str()) {
                        distinct.push(a.as_str());
                    }
                }
                distinct
            }
        };
        let requests: Vec<PolicyRequest> = audiences
            .iter()
            .map(|audience| {
                self.policy_request(
                    Action::IssueSvid,
                    principal_of(&task.requester),
                    entry,
                    Purpose {
                        audience,
                        ..Purpose::of_task(&task)
                    },
                    left,
                )
            })
            .collect();
        let mut decision = None;
        for (audience, d) in audiences.iter().zip(self.decide_each(&requests).await) {
            if !d.allowed {
                let what = if audience.is_empty() {
                    String::new()
                } else {
                    format!(
                        " for audience {:?}",
                        audience.chars().take(128).collect::<String>()
                    )
                };
                return Err(format!(
                    "policy denies issuance under task {}{what}: {}",
                    task.id,
                    d.explain()
                ));
            }
            // The smallest cap among the audiences' decisions applies.
            let tighter = match &decision {
                None => true,
                Some(Decision {
                    max_ttl_seconds: Some(cap),
                    ..
                }) => d.max_ttl_seconds.is_some_and(|c| c < *cap),
                Some(_) => d.max_ttl_seconds.is_some(),
            };
            if tighter {
                decision = Some(d);
            }
        }
        let Some(decision) = decision else {
            return Err("BUG: no policy decision for the issuance".into());
        };
        let cap = left.min(decision.max_ttl_seconds.unwrap_or(i64::MAX));
        Ok(IssueGrant {
            task,
            max_ttl: Duration::from_secs(cap.max(1).unsigned_abs()),
            decision,
        })
    }

    /// Expires open tasks whose deadline has passed; returns how many.
    pub async fn expire_due(&self) -> Result<usize, TaskError> {
        let mut n = 0;
        for t in self.ds.due_tasks(self.clock.now_unix()).await? {
            if self
                .finish(t, TaskState::Expired, "deadline reached", "server")
                .await?
                .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Recomputes the revocations (ended tasks and CRLs) and publishes them when they
    /// changed, or when `force`d.
    async fn refresh_revocations(&self, force: bool) -> Result<(), DatastoreError> {
        if self
            .revocations
            .refresh(&*self.ds, &self.ca, self.clock.now(), force)
            .await?
        {
            self.events.publish(ChangeEvent::RevocationsChanged);
        }
        Ok(())
    }

    /// Runs the deadline loop until `shutdown`: expires tasks on time, prunes revocations
    /// whose tasks reached their deadline, and re-signs CRLs before they go stale.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.expire_due().await {
                tracing::error!(error = %e, "expiring tasks failed");
            }
            // Revocations change at once when a task ends (see `finish`); this only prunes
            // tasks past their deadline and SVIDs past their expiry, so it need not be fast.
            n = n.wrapping_add(1);
            if !n.is_multiple_of(PRUNE_EVERY_TICKS) {
                continue;
            }
            let stale = self.revocations.stale(self.clock.now());
            if let Err(e) = self.refresh_revocations(stale).await {
                tracing::error!(error = %e, "refreshing revocations failed");
            }
        }
    }
}

/// What a task is for, as the policy sees it.
#[derive(Debug, Clone, Copy)]
struct Purpose<'a> {
    scopes: &'a [String],
    /// The JWT audiences the task declared.
    audiences: &'a [String],
    /// The audience a JWT-SVID is asked for; empty when beginning a task or issuing an
    /// X.509-SVID.
    audience: &'a str,
    ticket: &'a str,
    reason: &'a str,
    approver: Option<&'a str>,
    requester_uid: Option<u32>,
    approver_uid: Option<u32>,
    provisioned: bool,
    break_glass: bool,
}

impl<'a> Purpose<'a> {
    fn of_request(r: &'a TaskRequest, provisioned: bool, requester: &Requester) -> Self {
        Self {
            scopes: &r.scopes,
            audiences: &r.audiences,
            audience: "",
            ticket: &r.ticket,
            reason: &r.reason,
            approver: None,
            requester_uid: requester.unix().map(|u| u.uid),
            approver_uid: None,
            provisioned,
            break_glass: r.break_glass,
        }
    }

    fn of_task(t: &'a TaskRecord) -> Self {
        Self {
            scopes: &t.scopes,
            audiences: &t.audiences,
            audience: "",
            ticket: &t.ticket,
            reason: &t.reason,
            approver: t.approver.as_deref(),
            requester_uid: t.requester_unix.as_ref().map(|u| u.uid),
            approver_uid: t.approver_uid,
            provisioned: t.provisioned,
            break_glass: t.break_glass,
        }
    }
}

/// Whether `user` may `verb` (approve, or acknowledge after the fact) `task`, returning the
/// user's label. One Unix user never both requests and approves or reviews: `user` differs
/// from the requester's label, uid and name. A workload's uid is the one its agent attested
/// on the workload's node; uids are compared as numbers across hosts, which can only refuse
/// too much (fail closed). A task that does not record its requester's user cannot be
/// approved or acknowledged at all.
fn check_other_user(task: &TaskRecord, user: &UnixUser, verb: &str) -> Result<String, TaskError> {
    let id = &task.id;
    let label = format!("user:{}", user.name);
    if label == task.requester {
        return Err(TaskError::Forbidden(format!(
            "{label} requested task {id} and cannot {verb} it: another operator must"
        )));
    }
    let Some(requester) = &task.requester_unix else {
        return Err(TaskError::Forbidden(format!(
            "task {id} does not record which Unix user requested it, so nobody can be shown \
             to be someone else: it cannot be {verb}d"
        )));
    };
    if requester.uid == user.uid || requester.name == user.name {
        return Err(TaskError::Forbidden(format!(
            "{label} (uid {}) is the same Unix user as the requester of task {id} ({}, uid \
             {} as user {}) and cannot {verb} it: another operator must",
            user.uid, task.requester, requester.uid, requester.name
        )));
    }
    Ok(label)
}

fn grant(t: &TaskRecord) -> TaskGrant {
    TaskGrant {
        task_id: t.id.clone(),
        deadline: t.deadline,
        audiences: t.audiences.clone(),
        binding: t.binding.clone(),
    }
}

/// A task binding as the audit log records it.
fn binding_json(b: &TaskBinding) -> serde_json::Value {
    match b.holder() {
        None => json!({ "kind": b.kind().as_str() }),
        Some(h) => json!({
            "kind": b.kind().as_str(),
            "pid": h.process.pid,
            "start_time": h.process.start_time,
            "agent_id": h.agent.as_str(),
        }),
    }
}

/// Only a workload's agent can bind a task to a process: pids mean something on one node
/// only, and only the agent there attests them. An operator's task is bound by selectors,
/// and a workload's process binding names its own agent.
fn check_binding(requester: &Requester, binding: &TaskBinding) -> Result<(), TaskError> {
    match (requester, binding.holder()) {
        (_, None) => Ok(()),
        (Requester::User(_), Some(_)) => Err(TaskError::Invalid(format!(
            "an operator's task is bound by selectors: a {} binding names a local process, \
             which only a workload beginning its own task through its agent can do",
            binding.kind()
        ))),
        (Requester::Workload { agent, .. }, Some(h)) if &h.agent != agent => Err(
            TaskError::Invalid("a task's process binding must name the agent that asks".into()),
        ),
        (Requester::Workload { .. }, Some(_)) => Ok(()),
    }
}

/// `events`, each naming `actor` and `tenant`.
fn stamped(events: Vec<AuditEvent>, actor: &str, tenant: &str) -> Vec<AuditEvent> {
    events
        .into_iter()
        .map(|e| e.by(actor).in_tenant(tenant))
        .collect()
}

fn activated_event(t: &TaskRecord) -> AuditEvent {
    AuditEvent::for_task(
        AuditKind::TaskActivated,
        &t.id,
        &t.spiffe_id,
        json!({ "deadline": t.deadline, "entry_id": t.entry_id }),
    )
}
