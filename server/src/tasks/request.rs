//! What callers ask of the task service, as domain values: who asks ([`Requester`]),
//! for what ([`TaskRequest`], [`TaskTarget`]), how a task ends ([`Outcome`]) and what an
//! agent reports when it validates a task token ([`TokenUse`]). The API layer parses wire
//! messages into these (`api/wire.rs`); nothing here knows protobuf.

use std::time::Duration;

use common::task::{TaskBinding, TaskState};
use common::{EntryId, SpiffeId};

use super::TaskError;
use crate::datastore::UnixUser;
use crate::policy::Principal;
use crate::tenants::{Operator, Scope};

/// Longest reason or ticket accepted.
pub(crate) const MAX_TEXT: usize = 1024;

/// Who asks for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// An operator on the admin socket, by the Unix user of its peer credentials, acting
    /// for the tenants it administers.
    User(Operator),
    /// A workload, by its standing SPIFFE ID, through the agent that attested it.
    Workload {
        /// The workload's standing identity.
        spiffe_id: SpiffeId,
        /// The agent it runs under.
        agent: SpiffeId,
        /// The Unix user the agent attested the calling process as (peer credentials on
        /// the Workload API socket). Known when a workload begins a task.
        unix: Option<UnixUser>,
        /// The tenant of its standing entry: the only one it acts in.
        tenant: String,
    },
}

impl Requester {
    /// The stored form: `user:NAME` or the SPIFFE ID.
    pub fn label(&self) -> String {
        match self {
            Self::User(op) => op.principal(),
            Self::Workload { spiffe_id, .. } => spiffe_id.to_string(),
        }
    }

    /// The Unix user behind the request, when known.
    pub fn unix(&self) -> Option<&UnixUser> {
        match self {
            Self::User(op) => Some(&op.user),
            Self::Workload { unix, .. } => unix.as_ref(),
        }
    }

    /// Whether it may see and act on `tenant`'s objects.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Self::User(op) => op.sees(tenant),
            Self::Workload { tenant: own, .. } => own == tenant,
        }
    }

    /// Its scope as an operator would have it: an operator's own; a workload acts only in
    /// its standing entry's tenant.
    pub fn as_operator(&self) -> Operator {
        match self {
            Self::User(op) => op.clone(),
            Self::Workload {
                spiffe_id,
                unix,
                tenant,
                ..
            } => Operator {
                user: unix.clone().unwrap_or_else(|| UnixUser {
                    uid: u32::MAX,
                    name: spiffe_id.to_string(),
                }),
                scope: Scope::Tenants([tenant.clone()].into()),
            },
        }
    }

    pub(crate) fn principal(&self) -> Principal {
        match self {
            Self::User(op) => Principal::User(op.user.name.clone()),
            Self::Workload { spiffe_id, .. } => Principal::Workload(spiffe_id.to_string()),
        }
    }
}

/// The policy principal of a stored requester label.
pub(crate) fn principal_of(label: &str) -> Principal {
    match label.strip_prefix("user:") {
        Some(name) => Principal::User(name.to_owned()),
        None => Principal::Workload(label.to_owned()),
    }
}

/// The entry a task is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskTarget {
    /// An existing just-in-time entry, by id.
    Entry(EntryId),
    /// The one just-in-time entry with this SPIFFE ID (under `parent_id` when given; a
    /// workload's tasks are always under its own agent).
    SpiffeId {
        /// The entry's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// Its parent, to choose between agents.
        parent_id: Option<SpiffeId>,
    },
    /// A temporary just-in-time entry created for the task and deleted when it ends,
    /// validated like any entry (a workload's is always parented to its own agent).
    Provision {
        /// The SPIFFE ID to create.
        spiffe_id: String,
        /// The agent whose workloads may use it (ignored for workloads).
        parent_id: String,
        /// Selectors of the workloads that may use it.
        selectors: Vec<String>,
        /// Its tenant; empty: the requester's only one (operators of every tenant: the
        /// tenant owning the SPIFFE ID's path).
        tenant: String,
    },
}

/// A request to start a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// The entry it is for.
    pub target: TaskTarget,
    /// Why it is needed.
    pub reason: String,
    /// Ticket reference.
    pub ticket: String,
    /// What it may do: RFC 6749 scope tokens, which policies can test and its JWT-SVIDs
    /// carry in the `scope` claim.
    pub scopes: Vec<String>,
    /// The JWT audiences it will use: its JWT-SVIDs are minted for these only (none: no
    /// JWT-SVIDs).
    pub audiences: Vec<String>,
    /// How long it may last; `None`: as long as the server and the policy allow.
    pub ttl: Option<Duration>,
    /// Which processes receive its credentials: a workload's agent resolves a process or
    /// tree binding on its node; operators bind by selectors only.
    pub binding: TaskBinding,
    /// Break-glass: skip approval where policy allows it for the requester
    /// (`@break_glass("allowed")`), at most `break_glass_max_ttl`, pushed to SET receivers
    /// at its start, and flagged for review until someone else acknowledges it.
    pub break_glass: bool,
}

fn text(field: &str, v: &str) -> Result<(), TaskError> {
    if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
        return Err(TaskError::Invalid(format!(
            "{field} must be at most {MAX_TEXT} bytes without control characters"
        )));
    }
    Ok(())
}

impl TaskRequest {
    /// Checks the free-text fields (bounded, no control characters), the scopes (RFC 6749
    /// scope tokens) and the declared audiences (`common::task`'s rules).
    pub(crate) fn check(&self) -> Result<(), TaskError> {
        text("reason", &self.reason)?;
        text("ticket", &self.ticket)?;
        let invalid = |e: common::task::TaskScopeError| TaskError::Invalid(e.to_string());
        common::task::validate_scopes(&self.scopes).map_err(invalid)?;
        common::task::validate_audiences(&self.audiences).map_err(invalid)
    }

    /// Whether the task creates its entry.
    pub fn provisions(&self) -> bool {
        matches!(self.target, TaskTarget::Provision { .. })
    }
}

/// Checks a reason given when a task ends.
pub(crate) fn check_reason(reason: &str) -> Result<(), TaskError> {
    text("reason", reason)
}

/// Checks a free-text `field` (bounded, no control characters).
pub(crate) fn check_text(field: &str, v: &str) -> Result<(), TaskError> {
    text(field, v)
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
    /// The final state it leads to.
    pub fn state(self) -> TaskState {
        match self {
            Self::Completed => TaskState::Completed,
            Self::Failed => TaskState::Failed,
            Self::Cancelled => TaskState::Cancelled,
            Self::Revoked => TaskState::Revoked,
        }
    }
}

/// One validation of a task's JWT-SVID by an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// The audience the relying party validated for.
    pub audience: String,
    /// Whether the token was accepted.
    pub accepted: bool,
    /// Why it was refused (empty when accepted).
    pub reason: String,
    /// The token's `exp`, Unix seconds.
    pub expires_at: i64,
}

impl TokenUse {
    /// Bounds the free-text fields (they go into the audit log).
    pub(crate) fn check(&self) -> Result<(), TaskError> {
        if self.audience.len() > MAX_TEXT || self.reason.len() > MAX_TEXT {
            return Err(TaskError::Invalid("field too long".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use common::task::{MAX_AUDIENCES, MAX_SCOPES};

    use super::*;

    fn request() -> TaskRequest {
        TaskRequest {
            target: TaskTarget::Entry(EntryId::parse("e1").unwrap()),
            reason: "deploy".into(),
            ticket: "OPS-1".into(),
            scopes: vec!["read".into()],
            audiences: vec!["https://tools.example".into()],
            ttl: None,
            binding: TaskBinding::Selectors,
            break_glass: false,
        }
    }

    #[test]
    fn text_fields_are_bounded_and_printable() {
        assert!(request().check().is_ok());
        type Case = fn(&mut TaskRequest);
        let bad: [Case; 9] = [
            |r| r.reason = "x".repeat(MAX_TEXT + 1),
            |r| r.ticket = "a\nb".into(),
            |r| r.scopes = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect(),
            |r| r.scopes = vec!["ok".into(), "\u{7}".into()],
            |r| r.scopes = vec!["read write".into()],
            |r| r.reason = "\u{1b}[31m".into(),
            |r| r.audiences = vec![String::new()],
            |r| r.audiences = vec!["a b".into()],
            |r| r.audiences = (0..=MAX_AUDIENCES).map(|i| format!("a{i}")).collect(),
        ];
        for mutate in bad {
            let mut r = request();
            mutate(&mut r);
            assert!(matches!(r.check(), Err(TaskError::Invalid(_))), "{r:?}");
        }
        let mut r = request();
        r.reason = "x".repeat(MAX_TEXT);
        r.scopes = (0..MAX_SCOPES).map(|i| format!("s{i}")).collect();
        r.audiences = (0..MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
        assert!(r.check().is_ok(), "limits are inclusive");
        r.audiences.clear();
        assert!(r.check().is_ok(), "no audiences: valid, and no JWT-SVIDs");
    }

    #[test]
    fn outcomes_parse_and_map_to_final_states() {
        for (s, want) in [
            ("completed", TaskState::Completed),
            ("complete", TaskState::Completed),
            ("failed", TaskState::Failed),
            ("cancel", TaskState::Cancelled),
            ("revoked", TaskState::Revoked),
        ] {
            let o: Outcome = s.parse().unwrap();
            assert_eq!(o.state(), want);
            assert!(!o.state().is_open());
        }
        assert!(
            "expired".parse::<Outcome>().is_err(),
            "only the server expires"
        );
    }

    #[test]
    fn requester_labels_round_trip_to_principals() {
        let alice = UnixUser {
            uid: 1000,
            name: "alice".into(),
        };
        let user = Requester::User(Operator::platform(alice.clone()));
        assert_eq!(user.label(), "user:alice");
        assert_eq!(user.unix(), Some(&alice));
        assert_eq!(principal_of(&user.label()), user.principal());
        let w = Requester::Workload {
            spiffe_id: SpiffeId::new("spiffe://example.org/runtime").unwrap(),
            agent: SpiffeId::new("spiffe://example.org/agent").unwrap(),
            unix: None,
            tenant: "acme".into(),
        };
        assert_eq!(w.unix(), None);
        assert!(w.sees("acme") && !w.sees("default"));
        assert!(w.as_operator().sees("acme") && !w.as_operator().is_platform());
        assert_eq!(principal_of(&w.label()), w.principal());
    }
}
