//! Tasks: what makes a just-in-time identity live, and how a credential names its task.
//!
//! A task binds an identity to a purpose for a bounded time. The server decides and
//! records tasks; agents only learn which of their just-in-time entries a task currently
//! activates ([`TaskGrant`]) and which tasks ended early (so their tokens are refused).
//!
//! Relying parties tie a call to a task through the credential itself: JWT-SVIDs carry the
//! task id in the [`JWT_CLAIM`] claim, X.509-SVIDs in the Subject as an organizational
//! unit `task:<id>` ([`SUBJECT_OU_PREFIX`]).

use std::fmt;
use std::str::FromStr;

use crate::ids::TaskId;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// JWT-SVID claim holding the task id.
pub const JWT_CLAIM: &str = "task_id";

/// Prefix of the Subject organizational unit (`OU`) that names the task in an X.509-SVID:
/// `OU=task:<id>`. Every X.509 library and `openssl x509 -subject` can read it; the
/// SPIFFE ID stays the one URI SAN.
pub const SUBJECT_OU_PREFIX: &str = "task:";

/// Longest task id accepted anywhere (ids are UUIDs; this only bounds hostile input).
pub const MAX_TASK_ID_LEN: usize = crate::ids::MAX_ID_LEN;

/// The active task that makes a just-in-time entry live on an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGrant {
    /// The task's id.
    pub task_id: TaskId,
    /// Unix seconds after which nothing issued under the task is valid.
    pub deadline: i64,
}

impl TaskGrant {
    /// Whether the grant still holds at `now_unix`.
    pub fn live_at(&self, now_unix: i64) -> bool {
        now_unix < self.deadline
    }
}

/// Where a task is in its life. Only `PendingApproval` and `Active` are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Policy requires an approver other than the requester, who has not approved yet.
    PendingApproval,
    /// Credentials may be issued under it until its deadline.
    Active,
    /// Its requester reported success.
    Completed,
    /// Its requester reported failure.
    Failed,
    /// Withdrawn before or while active, without blame.
    Cancelled,
    /// Its deadline passed.
    Expired,
    /// An operator ended it (e.g. on suspected misuse).
    Revoked,
}

impl TaskState {
    /// Every state, open ones first.
    pub const ALL: [Self; 7] = [
        Self::PendingApproval,
        Self::Active,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
        Self::Revoked,
    ];

    /// The stable name used on the wire, in the datastore and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Whether the task can still change (pending or active).
    pub fn is_open(self) -> bool {
        matches!(self, Self::PendingApproval | Self::Active)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task state name that is not one of [`TaskState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task state {0:?} (expected pending_approval, active, completed, failed, cancelled, expired or revoked)"
)]
pub struct UnknownTaskState(pub String);

impl FromStr for TaskState {
    type Err = UnknownTaskState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTaskState(s.to_owned()))
    }
}

/// The Subject organizational-unit value that names `task_id` in an X.509-SVID.
pub fn subject_ou(task_id: &str) -> String {
    format!("{SUBJECT_OU_PREFIX}{task_id}")
}

/// The task id an X.509-SVID (DER leaf) carries, if any.
pub fn task_id_of_certificate(der: &[u8]) -> Option<TaskId> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.subject()
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .find_map(|ou| ou.strip_prefix(SUBJECT_OU_PREFIX))
        .and_then(|id| TaskId::parse(id).ok())
}

/// A task as JSON (what `--output json` prints).
pub fn task_json(t: &crate::proto::tessera::Task) -> serde_json::Value {
    let d = t.decision.clone().unwrap_or_default();
    serde_json::json!({
        "id": t.id,
        "state": t.state,
        "entry_id": t.entry_id,
        "spiffe_id": t.spiffe_id,
        "parent_id": t.parent_id,
        "provisioned": t.provisioned,
        "requester": t.requester,
        "requester_uid": t.requester_uid,
        "requester_user": (!t.requester_user.is_empty()).then_some(&t.requester_user),
        "approver": (!t.approver.is_empty()).then_some(&t.approver),
        "approver_uid": t.approver_uid,
        "reason": t.reason,
        "ticket": t.ticket,
        "scopes": t.scopes,
        "created_at": t.created_at,
        "activated_at": (t.activated_at != 0).then_some(t.activated_at),
        "deadline": t.deadline,
        "ended_at": (t.ended_at != 0).then_some(t.ended_at),
        "end_reason": (!t.end_reason.is_empty()).then_some(&t.end_reason),
        "decision": decision_json(&d),
    })
}

/// A policy decision as JSON.
pub fn decision_json(d: &crate::proto::tessera::PolicyDecision) -> serde_json::Value {
    serde_json::json!({
        "allowed": d.allowed,
        "approval_required": d.approval_required,
        "max_ttl_seconds": (d.max_ttl_seconds != 0).then_some(d.max_ttl_seconds),
        "policies": d.policies,
        "errors": d.errors,
        "explanation": d.explanation,
    })
}

/// A task as aligned text (what the CLIs print by default).
pub fn task_text(t: &crate::proto::tessera::Task) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut line = |k: &str, v: &dyn fmt::Display| {
        let _ = writeln!(s, "{k:<17}: {v}");
    };
    line("Task ID", &t.id);
    line("State", &t.state);
    line("SPIFFE ID", &t.spiffe_id);
    line("Entry ID", &t.entry_id);
    line("Parent ID", &t.parent_id);
    if t.provisioned {
        line("Provisioned", &"true (entry deleted when the task ends)");
    }
    line("Requester", &t.requester);
    if let Some(uid) = t.requester_uid {
        line(
            "Requester user",
            &format!("{} (uid {uid})", t.requester_user),
        );
    }
    if !t.approver.is_empty() {
        line("Approver", &t.approver);
    }
    if let Some(uid) = t.approver_uid {
        line("Approver uid", &uid);
    }
    if !t.reason.is_empty() {
        line("Reason", &t.reason);
    }
    if !t.ticket.is_empty() {
        line("Ticket", &t.ticket);
    }
    for scope in &t.scopes {
        line("Scope", scope);
    }
    let at = crate::duration::rfc3339;
    line("Created at", &at(t.created_at));
    if t.activated_at != 0 {
        line("Activated at", &at(t.activated_at));
    }
    line("Deadline", &at(t.deadline));
    if t.ended_at != 0 {
        line("Ended at", &at(t.ended_at));
    }
    if !t.end_reason.is_empty() {
        line("End reason", &t.end_reason);
    }
    if let Some(d) = &t.decision {
        line("Policy", &d.explanation);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_reject_unknown_names() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
        }
        assert!("done".parse::<TaskState>().is_err());
        assert!(TaskState::Active.is_open());
        assert!(!TaskState::Expired.is_open());
    }

    #[test]
    fn grant_is_live_until_its_deadline() {
        let g = TaskGrant {
            task_id: TaskId::parse("t").unwrap(),
            deadline: 100,
        };
        assert!(g.live_at(99));
        assert!(!g.live_at(100));
    }
}
