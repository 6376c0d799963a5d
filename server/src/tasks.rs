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
//! end before their deadline are published to every agent as [`Revocations`], with CRLs
//! listing the X.509-SVIDs issued under them, so open Workload API streams drop them and
//! `ValidateJWTSVID` refuses their tokens. A background loop expires tasks whose deadline
//! passed, whether or not anybody calls anything; and no credential is ever issued past
//! the deadline in the first place.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use common::proto::tessera::{self, EndedTask, Revocations, TaskSpec};
use common::task::{TaskGrant, TaskState};
use common::{RegistrationEntry, SpiffeId};
use serde_json::json;

use crate::audit::AuditEvent;
use crate::ca::Revoked;
use crate::ca::rotation::CaSet;
use crate::datastore::{Datastore, DatastoreError, TaskRecord};
use crate::events::{ChangeEvent, Events};
use crate::policy::{Action, Decision, EntryFacts, PolicyEngine, PolicyRequest, Principal};
use crate::registration::{Registrar, RegistrationError, now_unix};

/// Longest reason, ticket or scope accepted.
const MAX_TEXT: usize = 1024;
/// Most scopes on one task.
const MAX_SCOPES: usize = 64;
/// How often the server looks for tasks past their deadline.
const EXPIRY_TICK: Duration = Duration::from_millis(200);
/// Revocations are pruned every this many expiry ticks (5 s).
const PRUNE_EVERY_TICKS: u32 = 25;
/// CRLs are valid this long and re-signed at half of it.
const CRL_VALIDITY: Duration = Duration::from_secs(3600);

/// Who asks for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// An operator on the admin socket, by Unix user name.
    User(String),
    /// A workload, by its standing SPIFFE ID, through the agent that attested it.
    Workload {
        /// The workload's standing identity.
        spiffe_id: SpiffeId,
        /// The agent it runs under.
        agent: SpiffeId,
    },
}

impl Requester {
    /// The stored form: `user:NAME` or the SPIFFE ID.
    pub fn label(&self) -> String {
        match self {
            Self::User(name) => format!("user:{name}"),
            Self::Workload { spiffe_id, .. } => spiffe_id.to_string(),
        }
    }

    fn principal(&self) -> Principal {
        match self {
            Self::User(name) => Principal::User(name.clone()),
            Self::Workload { spiffe_id, .. } => Principal::Workload(spiffe_id.to_string()),
        }
    }
}

/// The policy principal of a stored requester label.
fn principal_of(label: &str) -> Principal {
    match label.strip_prefix("user:") {
        Some(name) => Principal::User(name.to_owned()),
        None => Principal::Workload(label.to_owned()),
    }
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

/// How a task ends when somebody ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Completed,
    /// Failure.
    Failed,
    /// Withdrawn.
    Cancelled,
    /// Ended by an operator.
    Revoked,
}

impl std::str::FromStr for Outcome {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "completed" | "complete" => Ok(Self::Completed),
            "failed" | "fail" => Ok(Self::Failed),
            "cancelled" | "cancel" => Ok(Self::Cancelled),
            "revoked" | "revoke" => Ok(Self::Revoked),
            other => Err(TaskError::Invalid(format!(
                "unknown outcome {other:?} (expected completed, failed, cancelled or revoked)"
            ))),
        }
    }
}

impl Outcome {
    fn state(self) -> TaskState {
        match self {
            Self::Completed => TaskState::Completed,
            Self::Failed => TaskState::Failed,
            Self::Cancelled => TaskState::Cancelled,
            Self::Revoked => TaskState::Revoked,
        }
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

/// The task service.
#[derive(Debug)]
pub struct Tasks {
    ds: Arc<dyn Datastore>,
    registrar: Registrar,
    policy: Arc<PolicyEngine>,
    events: Events,
    ca: Arc<CaSet>,
    max_ttl: Duration,
    /// Active tasks by entry id (what sync streams attach to entries).
    active: RwLock<HashMap<String, TaskGrant>>,
    revocations: RwLock<Arc<Revocations>>,
    crl_number: AtomicU64,
    crl_signed_at: RwLock<Option<SystemTime>>,
    /// (CA serial, SVID serial) pairs on the current CRLs.
    crl_listed: RwLock<Vec<(String, String)>>,
    refresh_lock: tokio::sync::Mutex<()>,
}

fn text(field: &str, v: &str) -> Result<(), TaskError> {
    if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
        return Err(TaskError::Invalid(format!(
            "{field} must be at most {MAX_TEXT} bytes without control characters"
        )));
    }
    Ok(())
}

fn ended_early(t: &TaskRecord) -> bool {
    !t.state.is_open() && t.state != TaskState::Expired
}

impl Tasks {
    /// The service; call [`Tasks::load`] before serving.
    pub fn new(
        ds: Arc<dyn Datastore>,
        registrar: Registrar,
        policy: Arc<PolicyEngine>,
        events: Events,
        ca: Arc<CaSet>,
        max_ttl: Duration,
    ) -> Self {
        Self {
            ds,
            registrar,
            policy,
            events,
            ca,
            max_ttl,
            active: RwLock::default(),
            revocations: RwLock::new(Arc::new(Revocations::default())),
            crl_number: AtomicU64::new(0),
            crl_signed_at: RwLock::new(None),
            crl_listed: RwLock::default(),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn server_max_ttl(&self) -> i64 {
        i64::try_from(self.max_ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// The lifetime a spec asks for (0: as long as the server allows).
    fn asked_ttl(&self, spec: &TaskSpec) -> i64 {
        if spec.ttl_seconds == 0 {
            self.server_max_ttl()
        } else {
            spec.ttl_seconds
        }
    }

    /// The policy engine.
    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    /// Reads active tasks and revocations from the datastore (at start-up).
    pub async fn load(&self) -> Result<(), DatastoreError> {
        let active = self.ds.list_tasks(Some(TaskState::Active)).await?;
        let map = active
            .iter()
            .map(|t| (t.entry_id.clone(), grant(t)))
            .collect();
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.crl_number
            .store(now_unix().max(0).unsigned_abs(), Ordering::Relaxed);
        self.refresh_revocations(true).await
    }

    /// The grant that makes `entry_id` live, if a task activates it.
    pub fn grant_for(&self, entry_id: &str) -> Option<TaskGrant> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(entry_id)
            .cloned()
    }

    /// The current revocations (sent to every agent).
    pub fn revocations(&self) -> Arc<Revocations> {
        Arc::clone(&self.revocations.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn policy_request(
        action: Action,
        principal: Principal,
        entry: &RegistrationEntry,
        t: &TaskRecord,
        ttl_seconds: i64,
        provisioned: bool,
    ) -> PolicyRequest {
        PolicyRequest {
            action,
            principal,
            entry: EntryFacts {
                id: entry.id.clone(),
                spiffe_id: entry.spiffe_id.to_string(),
                jit: entry.jit,
                selectors: entry.selectors.iter().map(ToString::to_string).collect(),
            },
            scopes: t.scopes.clone(),
            ttl_seconds,
            ticket: t.ticket.clone(),
            reason: t.reason.clone(),
            approver: (!t.approver.is_empty()).then(|| t.approver.clone()),
            now_unix: now_unix(),
            provisioned,
        }
    }

    /// Resolves what a spec activates or provisions.
    async fn target(
        &self,
        requester: &Requester,
        spec: &TaskSpec,
    ) -> Result<(RegistrationEntry, bool), TaskError> {
        if spec.provision {
            if !spec.entry_id.is_empty() {
                return Err(TaskError::Invalid(
                    "a provisioning task creates its entry: give --spiffe-id, --parent-id and --selector, not --entry-id".into(),
                ));
            }
            let parent_id = match requester {
                Requester::Workload { agent, .. } => agent.to_string(),
                Requester::User(_) => spec.parent_id.clone(),
            };
            let mut entry = self.registrar.validate(&tessera::EntrySpec {
                spiffe_id: spec.spiffe_id.clone(),
                parent_id,
                selectors: spec.selectors.clone(),
                jit: true,
                ..Default::default()
            })?;
            entry.id = uuid::Uuid::now_v7().to_string();
            entry.created_at = now_unix();
            entry.revision = 1;
            return Ok((entry, true));
        }
        let entry = if !spec.entry_id.is_empty() {
            self.ds
                .get_entry(&spec.entry_id)
                .await?
                .ok_or_else(|| TaskError::NotFound(format!("no entry {}", spec.entry_id)))?
        } else if !spec.spiffe_id.is_empty() {
            let id = SpiffeId::new(&spec.spiffe_id)
                .map_err(|e| TaskError::Invalid(format!("spiffe_id: {e}")))?;
            let parent_id = match requester {
                Requester::Workload { agent, .. } => Some(agent.clone()),
                Requester::User(_) if !spec.parent_id.is_empty() => Some(
                    SpiffeId::new(&spec.parent_id)
                        .map_err(|e| TaskError::Invalid(format!("parent_id: {e}")))?,
                ),
                Requester::User(_) => None,
            };
            let mut found: Vec<RegistrationEntry> = self
                .ds
                .list_entries(&crate::datastore::EntryFilter {
                    spiffe_id: Some(id.clone()),
                    parent_id,
                })
                .await?
                .into_iter()
                .filter(|e| e.jit)
                .collect();
            match found.len() {
                0 => {
                    return Err(TaskError::NotFound(format!(
                        "no just-in-time entry for {id}"
                    )));
                }
                1 => found.remove(0),
                n => {
                    return Err(TaskError::Invalid(format!(
                        "{n} just-in-time entries have SPIFFE ID {id}: name one with --entry-id"
                    )));
                }
            }
        } else {
            return Err(TaskError::Invalid(
                "name the entry the task activates (entry id or SPIFFE ID), or provision one"
                    .into(),
            ));
        };
        if !entry.jit {
            return Err(TaskError::Invalid(format!(
                "entry {} is not just-in-time: it is live without a task (create it with --jit)",
                entry.id
            )));
        }
        if let Requester::Workload { agent, .. } = requester
            && &entry.parent_id != agent
        {
            return Err(TaskError::NotFound(format!("no entry {}", entry.id)));
        }
        Ok((entry, false))
    }

    /// Starts a task: resolves the entry, asks the policy, stores the task (pending
    /// approval or active) and, when active, makes the entry live on its agent.
    pub async fn create(
        &self,
        requester: &Requester,
        spec: &TaskSpec,
    ) -> Result<TaskRecord, TaskError> {
        text("reason", &spec.reason)?;
        text("ticket", &spec.ticket)?;
        if spec.scopes.len() > MAX_SCOPES {
            return Err(TaskError::Invalid(format!("at most {MAX_SCOPES} scopes")));
        }
        for s in &spec.scopes {
            text("scope", s)?;
        }
        if spec.ttl_seconds < 0 {
            return Err(TaskError::Invalid("ttl must not be negative".into()));
        }
        let (entry, provisioned) = self.target(requester, spec).await?;
        let now = now_unix();
        let server_max = self.server_max_ttl();
        let mut task = draft(requester, spec, &entry, provisioned, now);
        let asked = self.asked_ttl(spec);
        let decision = self.policy.evaluate(&Self::policy_request(
            Action::BeginTask,
            requester.principal(),
            &entry,
            &task,
            asked,
            provisioned,
        ));
        let requested = AuditEvent::for_task(
            "task.requested",
            &task.id,
            &task.spiffe_id,
            json!({
                "requester": task.requester,
                "entry_id": task.entry_id,
                "parent_id": task.parent_id.as_str(),
                "provisioned": provisioned,
                "reason": task.reason,
                "ticket": task.ticket,
                "scopes": task.scopes,
                "ttl_seconds": spec.ttl_seconds,
            }),
        );
        let decided =
            AuditEvent::for_task("task.policy", &task.id, &task.spiffe_id, decision.to_json());
        if !decision.allowed {
            self.ds.append_audit(&[requested, decided]).await?;
            tracing::info!(task_id = %task.id, requester = %task.requester, explanation = %decision.explain(), "task denied by policy");
            return Err(TaskError::Denied(decision.explain()));
        }
        let ttl = asked
            .min(decision.max_ttl_seconds.unwrap_or(i64::MAX))
            .min(server_max)
            .max(1);
        task.deadline = now.saturating_add(ttl);
        task.decision = decision.to_json();
        let mut audit = vec![requested, decided];
        if decision.approval_required {
            audit.push(AuditEvent::for_task(
                "task.pending_approval",
                &task.id,
                &task.spiffe_id,
                json!({ "deadline": task.deadline }),
            ));
        } else {
            task.state = TaskState::Active;
            task.activated_at = now;
            audit.push(activated_event(&task));
        }
        self.ds
            .create_task(&task, provisioned.then_some(&entry), &audit)
            .await?;
        tracing::info!(task_id = %task.id, state = %task.state, requester = %task.requester, spiffe_id = %task.spiffe_id, deadline = task.deadline, "task created");
        // Publishes the entry (new, for provisioning; now live if the task is active).
        self.changed(&task, Some(entry));
        Ok(task)
    }

    /// One task.
    pub async fn get(&self, id: &str) -> Result<TaskRecord, TaskError> {
        self.ds
            .get_task(id)
            .await?
            .ok_or_else(|| TaskError::NotFound(format!("no task {id}")))
    }

    /// Tasks, optionally in one state.
    pub async fn list(&self, state: Option<TaskState>) -> Result<Vec<TaskRecord>, TaskError> {
        Ok(self.ds.list_tasks(state).await?)
    }

    /// Approves a pending task. The approver must not be the requester, and the policy is
    /// asked again with the approver known.
    pub async fn approve(&self, id: &str, approver: &Requester) -> Result<TaskRecord, TaskError> {
        let current = self.get(id).await?;
        if current.state != TaskState::PendingApproval {
            return Err(TaskError::WrongState(format!(
                "task {id} is {}, not pending approval",
                current.state
            )));
        }
        let label = approver.label();
        if label == current.requester {
            return Err(TaskError::Forbidden(format!(
                "{label} requested task {id} and cannot approve it: another approver must"
            )));
        }
        let entry =
            self.ds.get_entry(&current.entry_id).await?.ok_or_else(|| {
                TaskError::NotFound(format!("entry {} is gone", current.entry_id))
            })?;
        let now = now_unix();
        if now >= current.deadline {
            return Err(TaskError::WrongState(format!("task {id} has expired")));
        }
        let mut task = current.clone();
        task.approver = label;
        let decision = self.policy.evaluate(&Self::policy_request(
            Action::BeginTask,
            principal_of(&task.requester),
            &entry,
            &task,
            task.deadline - now,
            task.provisioned,
        ));
        if !decision.allowed {
            return Err(TaskError::Denied(decision.explain()));
        }
        task.state = TaskState::Active;
        task.activated_at = now;
        let audit = [
            AuditEvent::for_task(
                "task.approved",
                &task.id,
                &task.spiffe_id,
                json!({ "approver": task.approver, "policy": decision.to_json() }),
            ),
            activated_event(&task),
        ];
        if !self
            .ds
            .update_task(&task, &[TaskState::PendingApproval], &audit)
            .await?
        {
            return Err(TaskError::WrongState(format!(
                "task {id} changed concurrently; try again"
            )));
        }
        tracing::info!(task_id = %task.id, approver = %task.approver, "task approved and active");
        self.changed(&task, Some(entry));
        Ok(task)
    }

    /// Ends an open task. `by` ends it as `outcome`; a workload may end only its own
    /// tasks (checked by the caller).
    pub async fn end(
        &self,
        id: &str,
        outcome: Outcome,
        reason: &str,
        by: &Requester,
    ) -> Result<TaskRecord, TaskError> {
        text("reason", reason)?;
        let current = self.get(id).await?;
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
        task.ended_at = now_unix();
        task.end_reason = reason.to_owned();
        let mut audit = vec![AuditEvent::for_task(
            "task.ended",
            &task.id,
            &task.spiffe_id,
            json!({ "state": state.as_str(), "reason": reason, "by": by }),
        )];
        if task.provisioned {
            audit.push(AuditEvent::for_task(
                "entry.deleted",
                &task.id,
                &task.spiffe_id,
                json!({ "entry_id": task.entry_id, "by": "task end" }),
            ));
        }
        if !self.ds.update_task(&task, &[current.state], &audit).await? {
            return Ok(None);
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

    /// Ends the open task of an entry that was deleted.
    pub async fn entry_deleted(&self, entry_id: &str) -> Result<(), TaskError> {
        if let Some(t) = self.ds.open_task_for_entry(entry_id).await? {
            self.finish(t, TaskState::Revoked, "entry deleted", "server")
                .await?;
        }
        Ok(())
    }

    /// Updates the in-memory grants and tells the agents.
    fn changed(&self, task: &TaskRecord, entry: Option<RegistrationEntry>) {
        {
            let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
            if task.state == TaskState::Active {
                active.insert(task.entry_id.clone(), grant(task));
            } else if active
                .get(&task.entry_id)
                .is_some_and(|g| g.task_id == task.id)
            {
                active.remove(&task.entry_id);
            }
        }
        if let Some(entry) = entry {
            self.events.publish(ChangeEvent::EntryUpserted {
                entry: Arc::new(entry),
                previous_parent: None,
            });
        }
    }

    /// Checks that an SVID may be issued for the just-in-time `entry` now: an active task
    /// covers it, its deadline has not passed, and policy allows the issuance.
    pub async fn issue_grant(&self, entry: &RegistrationEntry) -> Result<IssueGrant, String> {
        let task = match self.ds.open_task_for_entry(&entry.id).await {
            Ok(Some(t)) if t.state == TaskState::Active => t,
            Ok(_) => return Err("entry is just-in-time: it needs an active task".into()),
            Err(e) => {
                tracing::error!(error = %e, "datastore failure checking a task");
                return Err("cannot check the task; see the server log".into());
            }
        };
        let now = now_unix();
        let left = task.deadline - now;
        if left <= 0 {
            return Err(format!("task {} has reached its deadline", task.id));
        }
        let decision = self.policy.evaluate(&Self::policy_request(
            Action::IssueSvid,
            principal_of(&task.requester),
            entry,
            &task,
            left,
            task.provisioned,
        ));
        if !decision.allowed {
            return Err(format!(
                "policy denies issuance under task {}: {}",
                task.id,
                decision.explain()
            ));
        }
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
        for t in self.ds.due_tasks(now_unix()).await? {
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
        // One refresh at a time, so an older computation never overwrites a newer one.
        let _serial = self.refresh_lock.lock().await;
        let now = now_unix();
        let (tasks, svids) = self.ds.revoked_since(now).await?;
        let ended: Vec<EndedTask> = tasks
            .iter()
            .filter(|t| ended_early(t))
            .map(|t| EndedTask {
                task_id: t.id.clone(),
                until: t.deadline,
                state: t.state.as_str().to_owned(),
            })
            .collect();
        let listed: Vec<(String, String)> = svids
            .iter()
            .map(|v| (v.issuer_serial.clone(), v.serial.clone()))
            .collect();
        {
            let cur = self.revocations.read().unwrap_or_else(|e| e.into_inner());
            let last = self.crl_listed.read().unwrap_or_else(|e| e.into_inner());
            if !force && cur.ended_tasks == ended && *last == listed {
                return Ok(());
            }
        }
        let ended_at: HashMap<&str, i64> =
            tasks.iter().map(|t| (t.id.as_str(), t.ended_at)).collect();
        let mut by_ca: BTreeMap<&str, Vec<Revoked>> = BTreeMap::new();
        for s in &svids {
            let at = ended_at.get(s.task_id.as_str()).copied().unwrap_or(now);
            by_ca.entry(&s.issuer_serial).or_default().push(Revoked {
                serial_hex: s.serial.clone(),
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(at.max(0).unsigned_abs()),
            });
        }
        let number = self.crl_number.fetch_add(1, Ordering::Relaxed) + 1;
        let next_update = SystemTime::now() + CRL_VALIDITY;
        let mut crls = Vec::new();
        for (ca, revoked) in by_ca {
            match self.ca.sign_crl(ca, &revoked, number, next_update) {
                Some(Ok(der)) => crls.push(der),
                Some(Err(e)) => tracing::error!(error = %e, ca_serial = ca, "cannot sign a CRL"),
                None => tracing::warn!(
                    ca_serial = ca,
                    revoked = revoked.len(),
                    "no CRL for SVIDs of a retired CA (its key is gone); ended tasks still remove them"
                ),
            }
        }
        let new = Revocations {
            crls,
            ended_tasks: ended,
        };
        *self.revocations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        *self.crl_listed.write().unwrap_or_else(|e| e.into_inner()) = listed;
        *self
            .crl_signed_at
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        self.events.publish(ChangeEvent::RevocationsChanged);
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
            let stale = self
                .crl_signed_at
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|t| t.elapsed().unwrap_or_default() >= CRL_VALIDITY / 2);
            if let Err(e) = self.refresh_revocations(stale).await {
                tracing::error!(error = %e, "refreshing revocations failed");
            }
        }
    }
}

/// A new task for `spec` on `entry`, pending until policy and approval say otherwise.
fn draft(
    requester: &Requester,
    spec: &TaskSpec,
    entry: &RegistrationEntry,
    provisioned: bool,
    now: i64,
) -> TaskRecord {
    TaskRecord {
        id: uuid::Uuid::now_v7().to_string(),
        state: TaskState::PendingApproval,
        entry_id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.clone(),
        parent_id: entry.parent_id.clone(),
        provisioned,
        requester: requester.label(),
        approver: String::new(),
        reason: spec.reason.clone(),
        ticket: spec.ticket.clone(),
        scopes: spec.scopes.clone(),
        created_at: now,
        activated_at: 0,
        deadline: 0,
        ended_at: 0,
        end_reason: String::new(),
        decision: json!(null),
    }
}

fn grant(t: &TaskRecord) -> TaskGrant {
    TaskGrant {
        task_id: t.id.clone(),
        deadline: t.deadline,
    }
}

fn activated_event(t: &TaskRecord) -> AuditEvent {
    AuditEvent::for_task(
        "task.activated",
        &t.id,
        &t.spiffe_id,
        json!({ "deadline": t.deadline, "entry_id": t.entry_id }),
    )
}

/// The wire form of a task.
pub fn to_wire(t: &TaskRecord) -> tessera::Task {
    let d = &t.decision;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let list = |k: &str| {
        d.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    tessera::Task {
        id: t.id.clone(),
        state: t.state.as_str().to_owned(),
        entry_id: t.entry_id.clone(),
        spiffe_id: t.spiffe_id.to_string(),
        parent_id: t.parent_id.to_string(),
        provisioned: t.provisioned,
        requester: t.requester.clone(),
        approver: t.approver.clone(),
        reason: t.reason.clone(),
        ticket: t.ticket.clone(),
        scopes: t.scopes.clone(),
        created_at: t.created_at,
        activated_at: t.activated_at,
        deadline: t.deadline,
        ended_at: t.ended_at,
        end_reason: t.end_reason.clone(),
        decision: (!d.is_null()).then(|| tessera::PolicyDecision {
            allowed: d
                .get("allowed")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            approval_required: d
                .get("approval_required")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            max_ttl_seconds: d
                .get("max_ttl_seconds")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0),
            policies: list("policies"),
            errors: list("errors"),
            explanation: s("explanation"),
        }),
    }
}

/// The wire form of a policy decision.
pub fn decision_to_wire(d: &Decision) -> tessera::PolicyDecision {
    tessera::PolicyDecision {
        allowed: d.allowed,
        approval_required: d.approval_required,
        max_ttl_seconds: d.max_ttl_seconds.unwrap_or(0),
        policies: d.policies.clone(),
        errors: d.errors.clone(),
        explanation: d.explain(),
    }
}

impl Tasks {
    /// Evaluates the policy for `spec` as `requester` without starting anything.
    pub async fn explain(
        &self,
        requester: &Requester,
        spec: &TaskSpec,
    ) -> Result<Decision, TaskError> {
        let (entry, provisioned) = self.target(requester, spec).await?;
        let probe = draft(requester, spec, &entry, provisioned, 0);
        let ttl = self.asked_ttl(spec);
        Ok(self.policy.evaluate(&Self::policy_request(
            Action::BeginTask,
            requester.principal(),
            &entry,
            &probe,
            ttl,
            provisioned,
        )))
    }
}
