//! Tasks: what makes a just-in-time identity live, and how a credential names its task.
//!
//! A task binds an identity to a purpose for a bounded time. The server decides and
//! records tasks; agents only learn which of their just-in-time entries a task currently
//! activates ([`TaskGrant`]) and which tasks ended early (so their tokens are refused).
//!
//! Relying parties tie a call to a task through the credential itself: JWT-SVIDs carry the
//! task id in the [`JWT_CLAIM`] claim (and the task's scopes in [`SCOPE_CLAIM`]),
//! X.509-SVIDs in the Subject as an organizational unit `task:<id>` ([`SUBJECT_OU_PREFIX`]).
//!
//! A task declares what its JWT-SVIDs may be used for: the audiences they may name
//! ([`validate_audiences`]) and its scopes, RFC 6749 scope tokens ([`validate_scopes`]).
//! A JWT-SVID is minted under a task only for audiences it declared
//! ([`audience_refusal`], checked by the agent and again by the server); a task that
//! declared none gets no JWT-SVIDs at all. X.509-SVIDs are not affected.

use std::fmt;
use std::str::FromStr;

use crate::ids::TaskId;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// JWT-SVID claim holding the task id.
pub const JWT_CLAIM: &str = "task_id";

/// JWT-SVID claim holding the task's scopes, space-separated (the `scope` claim of
/// RFC 8693 section 4.2); absent when the task declared none.
pub const SCOPE_CLAIM: &str = "scope";

/// Most audiences a task may declare (as many as one JWT-SVID may name).
pub const MAX_AUDIENCES: usize = 32;
/// Longest audience a task may declare, in bytes (as long as a JWT-SVID accepts).
pub const MAX_AUDIENCE_LEN: usize = 1024;
/// Most scopes a task may declare.
pub const MAX_SCOPES: usize = 64;
/// Longest scope, in bytes (scope tokens are short names such as `repo:read`; the bound
/// keeps the largest task request within the agent's request size limit).
pub const MAX_SCOPE_LEN: usize = 256;

/// Why a task's declared audiences or scopes are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskScopeError {
    /// More than [`MAX_AUDIENCES`] audiences.
    #[error("{0} audiences declared: at most {MAX_AUDIENCES}")]
    TooManyAudiences(usize),
    /// An empty audience.
    #[error("an audience must not be empty")]
    EmptyAudience,
    /// An audience longer than [`MAX_AUDIENCE_LEN`] bytes.
    #[error("an audience of {0} bytes: at most {MAX_AUDIENCE_LEN}")]
    AudienceTooLong(usize),
    /// An audience with whitespace or a control character.
    #[error("audience {0:?} contains whitespace or a control character")]
    AudienceCharacter(String),
    /// The same audience twice.
    #[error("audience {0:?} is declared twice")]
    DuplicateAudience(String),
    /// More than [`MAX_SCOPES`] scopes.
    #[error("{0} scopes declared: at most {MAX_SCOPES}")]
    TooManyScopes(usize),
    /// An empty scope.
    #[error("a scope must not be empty")]
    EmptyScope,
    /// A scope longer than [`MAX_SCOPE_LEN`] bytes.
    #[error("a scope of {0} bytes: at most {MAX_SCOPE_LEN}")]
    ScopeTooLong(usize),
    /// A scope that is not an RFC 6749 scope token.
    #[error(
        "scope {0:?} is not an RFC 6749 scope token (printable ASCII without space, '\"' or '\\')"
    )]
    ScopeCharacter(String),
    /// The same scope twice.
    #[error("scope {0:?} is declared twice")]
    DuplicateScope(String),
}

/// Checks the audiences a task declares: at most [`MAX_AUDIENCES`], each non-empty, at
/// most [`MAX_AUDIENCE_LEN`] bytes, without whitespace or control characters, no
/// duplicates. An empty list is valid: the task then gets no JWT-SVIDs.
pub fn validate_audiences(audiences: &[String]) -> Result<(), TaskScopeError> {
    if audiences.len() > MAX_AUDIENCES {
        return Err(TaskScopeError::TooManyAudiences(audiences.len()));
    }
    for (i, a) in audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(TaskScopeError::EmptyAudience);
        }
        if a.len() > MAX_AUDIENCE_LEN {
            return Err(TaskScopeError::AudienceTooLong(a.len()));
        }
        if a.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TaskScopeError::AudienceCharacter(a.clone()));
        }
        if audiences[..i].contains(a) {
            return Err(TaskScopeError::DuplicateAudience(a.clone()));
        }
    }
    Ok(())
}

/// Whether `c` may appear in an RFC 6749 scope token (section 3.3:
/// `%x21 / %x23-5B / %x5D-7E`).
fn scope_char(c: char) -> bool {
    matches!(c, '\u{21}' | '\u{23}'..='\u{5b}' | '\u{5d}'..='\u{7e}')
}

/// Checks the scopes a task declares: at most [`MAX_SCOPES`] RFC 6749 scope tokens of at
/// most [`MAX_SCOPE_LEN`] bytes, no duplicates (so the `scope` claim, the tokens joined
/// by spaces, splits back into exactly the declared list).
pub fn validate_scopes(scopes: &[String]) -> Result<(), TaskScopeError> {
    if scopes.len() > MAX_SCOPES {
        return Err(TaskScopeError::TooManyScopes(scopes.len()));
    }
    for (i, s) in scopes.iter().enumerate() {
        if s.is_empty() {
            return Err(TaskScopeError::EmptyScope);
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(TaskScopeError::ScopeTooLong(s.len()));
        }
        if !s.chars().all(scope_char) {
            return Err(TaskScopeError::ScopeCharacter(s.clone()));
        }
        if scopes[..i].contains(s) {
            return Err(TaskScopeError::DuplicateScope(s.clone()));
        }
    }
    Ok(())
}

/// The value of the [`SCOPE_CLAIM`] claim for `scopes`: the tokens joined by single
/// spaces; `None` (no claim) when there are none.
pub fn scope_claim(scopes: &[String]) -> Option<String> {
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

/// Why a JWT-SVID for `requested` audiences may not be minted under task `task_id`, which
/// declared `declared`: `None` when every requested audience is declared. A task that
/// declared no audiences gets no JWT-SVIDs at all. The one wording for the agent and the
/// server, so a workload reads the same refusal wherever it was decided.
pub fn audience_refusal(
    task_id: &TaskId,
    declared: &[String],
    requested: &[String],
) -> Option<String> {
    if declared.is_empty() {
        return Some(format!(
            "task {task_id} declared no JWT audiences, so it gets no JWT-SVIDs \
             (begin it with --audience for each audience it will call)"
        ));
    }
    let outside = requested.iter().find(|a| !declared.contains(*a))?;
    let shown: String = outside.chars().take(128).collect();
    Some(format!(
        "audience {shown:?} is outside the audiences task {task_id} declared"
    ))
}

/// Prefix of the Subject organizational unit (`OU`) that names the task in an X.509-SVID:
/// `OU=task:<id>`. Every X.509 library and `openssl x509 -subject` can read it; the
/// SPIFFE ID stays the one URI SAN.
pub const SUBJECT_OU_PREFIX: &str = "task:";

/// Longest task id accepted anywhere (ids are UUIDs; this only bounds hostile input).
pub const MAX_TASK_ID_LEN: usize = crate::ids::MAX_ID_LEN;

/// Why a task ends when the process it is bound to exits (outcome `cancelled`).
pub const REQUESTER_EXITED: &str = "requester exited";

/// One process instance on a node: a pid and the process's start time (clock ticks since
/// boot, field 22 of `/proc/<pid>/stat`). A pid is reused once its process is reaped, but
/// never while it lives, and a later process with the same pid has a later start time: the
/// pair names exactly one process, ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessInstance {
    /// The pid, in the agent's pid namespace.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// The process a task is bound to and the agent whose node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The bound process instance.
    pub process: ProcessInstance,
    /// The agent that attested it (pids mean something only on one node).
    pub agent: crate::SpiffeId,
}

/// The kinds of [`TaskBinding`], by their wire and CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindKind {
    /// Every process matching the entry's selectors.
    Selectors,
    /// One process instance.
    Process,
    /// One process instance and its descendants.
    Tree,
}

impl BindKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::Selectors, Self::Process, Self::Tree];

    /// The stable name (wire, datastore, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Selectors => "selectors",
            Self::Process => "process",
            Self::Tree => "tree",
        }
    }
}

impl fmt::Display for BindKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A binding name that is not one of [`BindKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task binding {0:?} (expected process, tree or selectors)")]
pub struct UnknownBindKind(pub String);

impl FromStr for BindKind {
    type Err = UnknownBindKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownBindKind(s.to_owned()))
    }
}

/// Why a task grant or binding from the wire is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The task id is malformed.
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),
    /// The kind is not one of [`BindKind::ALL`].
    #[error(transparent)]
    Kind(#[from] UnknownBindKind),
    /// A `process` or `tree` binding without a pid.
    #[error("a {0} binding must name a process (pid 0)")]
    NoPid(BindKind),
    /// The agent of a `process` or `tree` binding is not a SPIFFE ID.
    #[error("the agent of a binding: {0}")]
    Agent(String),
}

/// Which processes on its node receive a task's SVIDs.
///
/// A workload-started task is bound to a process instance by default: its credentials
/// reach that process only (`Process`), or that process and its descendants (`Tree`), and
/// the task ends when the process exits. `Selectors` is the behaviour of operator-started
/// tasks: every process matching the entry's selectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TaskBinding {
    /// Every process matching the entry's selectors.
    #[default]
    Selectors,
    /// Only this process instance.
    Process(Holder),
    /// This process instance and its descendants.
    Tree(Holder),
}

impl TaskBinding {
    /// Its kind.
    pub fn kind(&self) -> BindKind {
        match self {
            Self::Selectors => BindKind::Selectors,
            Self::Process(_) => BindKind::Process,
            Self::Tree(_) => BindKind::Tree,
        }
    }

    /// The bound process, for `Process` and `Tree`.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Self::Selectors => None,
            Self::Process(h) | Self::Tree(h) => Some(h),
        }
    }

    /// Whether a caller may receive the task's credentials: `caller` is its own process
    /// instance (`None`: unknown), and `is_ancestor` says whether an instance is one of
    /// its ancestors (parent, grandparent, ...), asked only for a `Tree` binding whose
    /// holder is not the caller, so an agent can read the ancestors only then.
    /// `Selectors` admits everyone the entry's selectors match; `Process` only the bound
    /// instance itself; `Tree` the bound instance and any process whose ancestors include
    /// it. A caller that is unknown is admitted only by `Selectors`.
    pub fn admits(
        &self,
        caller: Option<&ProcessInstance>,
        is_ancestor: impl FnOnce(&ProcessInstance) -> bool,
    ) -> bool {
        match self {
            Self::Selectors => true,
            Self::Process(h) => caller == Some(&h.process),
            Self::Tree(h) => caller.is_some_and(|c| c == &h.process || is_ancestor(&h.process)),
        }
    }
}

/// The active task that makes a just-in-time entry live on an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGrant {
    /// The task's id.
    pub task_id: TaskId,
    /// Unix seconds after which nothing issued under the task is valid.
    pub deadline: i64,
    /// The audiences the task's JWT-SVIDs may name (none: no JWT-SVIDs).
    pub audiences: Vec<String>,
    /// Which processes receive its SVIDs.
    pub binding: TaskBinding,
}

impl TaskGrant {
    /// Whether the grant still holds at `now_unix`.
    pub fn live_at(&self, now_unix: i64) -> bool {
        now_unix < self.deadline
    }

    /// Why a JWT-SVID for `requested` may not be minted under this grant (see
    /// [`audience_refusal`]); `None` when it may.
    pub fn audience_refusal(&self, requested: &[String]) -> Option<String> {
        audience_refusal(&self.task_id, &self.audiences, requested)
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
        "audiences": t.audiences,
        "binding": binding_json(t.binding.as_ref()),
        "created_at": t.created_at,
        "activated_at": (t.activated_at != 0).then_some(t.activated_at),
        "deadline": t.deadline,
        "ended_at": (t.ended_at != 0).then_some(t.ended_at),
        "end_reason": (!t.end_reason.is_empty()).then_some(&t.end_reason),
        "decision": decision_json(&d),
        "break_glass": t.break_glass,
        "acknowledgement": (t.acknowledged_at != 0).then(|| serde_json::json!({
            "by": t.acknowledged_by,
            "uid": t.acknowledged_uid,
            "at": t.acknowledged_at,
            "note": t.acknowledgement_note,
        })),
        "flags": task_flags(t),
    })
}

/// What needs attention about a task: `break_glass_unreviewed` while a break-glass task
/// awaits its after-the-fact review.
pub fn task_flags(t: &crate::proto::tessera::Task) -> Vec<&'static str> {
    if t.break_glass && t.acknowledged_at == 0 {
        vec!["break_glass_unreviewed"]
    } else {
        Vec::new()
    }
}

/// A task's binding as JSON: `{"kind": "selectors"}`, or with `pid`, `start_time` and
/// `agent_id` for a process or tree binding. Absent (tasks from before bindings): selectors.
fn binding_json(b: Option<&crate::proto::tessera::TaskBinding>) -> serde_json::Value {
    match b {
        Some(b) if b.pid != 0 => serde_json::json!({
            "kind": b.kind,
            "pid": b.pid,
            "start_time": b.start_time,
            "agent_id": b.agent_id,
        }),
        _ => serde_json::json!({ "kind": BindKind::Selectors.as_str() }),
    }
}

/// A policy decision as JSON.
pub fn decision_json(d: &crate::proto::tessera::PolicyDecision) -> serde_json::Value {
    serde_json::json!({
        "allowed": d.allowed,
        "approval_required": d.approval_required,
        "max_ttl_seconds": (d.max_ttl_seconds != 0).then_some(d.max_ttl_seconds),
        "max_parallel": (d.max_parallel != 0).then_some(d.max_parallel),
        "break_glass_allowed": d.break_glass_allowed,
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
    for audience in &t.audiences {
        line("Audience", audience);
    }
    match &t.binding {
        Some(b) if b.pid != 0 => line(
            "Bound to",
            &format!(
                "{} (pid {}, start time {}, on {})",
                b.kind, b.pid, b.start_time, b.agent_id
            ),
        ),
        _ => line("Bound to", &BindKind::Selectors),
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
    if t.break_glass {
        if t.acknowledged_at == 0 {
            line(
                "Break-glass",
                &"yes, AWAITING REVIEW (flag break_glass_unreviewed)",
            );
        } else {
            let by = match t.acknowledged_uid {
                Some(uid) => format!("{} (uid {uid})", t.acknowledged_by),
                None => t.acknowledged_by.clone(),
            };
            line(
                "Break-glass",
                &format!("yes, acknowledged by {by} at {}", at(t.acknowledged_at)),
            );
            line("Review note", &t.acknowledgement_note);
        }
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
            audiences: Vec::new(),
            binding: TaskBinding::Selectors,
        };
        assert!(g.live_at(99));
        assert!(!g.live_at(100));
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn audiences_are_bounded_printable_and_distinct() {
        let ok = [
            strings(&[]),
            strings(&["a"]),
            strings(&[
                "https://tools.example/api",
                "spiffe://example.org/tool",
                "é",
            ]),
            vec!["x".repeat(MAX_AUDIENCE_LEN)],
            (0..MAX_AUDIENCES).map(|i| format!("aud-{i}")).collect(),
        ];
        for a in ok {
            assert_eq!(validate_audiences(&a), Ok(()), "{a:?}");
        }
        let bad: [(Vec<String>, TaskScopeError); 7] = [
            (
                (0..=MAX_AUDIENCES).map(|i| format!("aud-{i}")).collect(),
                TaskScopeError::TooManyAudiences(MAX_AUDIENCES + 1),
            ),
            (strings(&["a", ""]), TaskScopeError::EmptyAudience),
            (
                vec!["x".repeat(MAX_AUDIENCE_LEN + 1)],
                TaskScopeError::AudienceTooLong(MAX_AUDIENCE_LEN + 1),
            ),
            (
                strings(&["a b"]),
                TaskScopeError::AudienceCharacter("a b".into()),
            ),
            (
                strings(&["a\tb"]),
                TaskScopeError::AudienceCharacter("a\tb".into()),
            ),
            (
                strings(&["\u{1b}[31m"]),
                TaskScopeError::AudienceCharacter("\u{1b}[31m".into()),
            ),
            (
                strings(&["a", "b", "a"]),
                TaskScopeError::DuplicateAudience("a".into()),
            ),
        ];
        for (a, want) in bad {
            assert_eq!(validate_audiences(&a), Err(want), "{a:?}");
        }
    }

    #[test]
    fn scopes_are_rfc_6749_scope_tokens() {
        let ok = [
            strings(&[]),
            strings(&[
                "read",
                "db:write",
                "repo/x.y_z-1",
                "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
            ]),
            vec!["s".repeat(MAX_SCOPE_LEN)],
            (0..MAX_SCOPES).map(|i| format!("s{i}")).collect(),
        ];
        for s in ok {
            assert_eq!(validate_scopes(&s), Ok(()), "{s:?}");
        }
        let bad: [(Vec<String>, TaskScopeError); 9] = [
            (
                (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect(),
                TaskScopeError::TooManyScopes(MAX_SCOPES + 1),
            ),
            (strings(&[""]), TaskScopeError::EmptyScope),
            (
                vec!["s".repeat(MAX_SCOPE_LEN + 1)],
                TaskScopeError::ScopeTooLong(MAX_SCOPE_LEN + 1),
            ),
            (
                strings(&["read write"]),
                TaskScopeError::ScopeCharacter("read write".into()),
            ),
            (
                strings(&["say\"hi\""]),
                TaskScopeError::ScopeCharacter("say\"hi\"".into()),
            ),
            (
                strings(&["a\\b"]),
                TaskScopeError::ScopeCharacter("a\\b".into()),
            ),
            (
                strings(&["lécture"]),
                TaskScopeError::ScopeCharacter("lécture".into()),
            ),
            (
                strings(&["a\u{7f}"]),
                TaskScopeError::ScopeCharacter("a\u{7f}".into()),
            ),
            (
                strings(&["read", "read"]),
                TaskScopeError::DuplicateScope("read".into()),
            ),
        ];
        for (s, want) in bad {
            assert_eq!(validate_scopes(&s), Err(want), "{s:?}");
        }
        assert_eq!(scope_claim(&[]), None);
        assert_eq!(
            scope_claim(&strings(&["read", "db:write"])).as_deref(),
            Some("read db:write")
        );
    }

    #[test]
    fn jwt_audiences_must_be_declared_and_none_declared_gets_nothing() {
        let id = TaskId::parse("t1").unwrap();
        let declared = strings(&["a", "b"]);
        assert_eq!(audience_refusal(&id, &declared, &strings(&["a"])), None);
        assert_eq!(
            audience_refusal(&id, &declared, &strings(&["b", "a"])),
            None
        );
        let out = audience_refusal(&id, &declared, &strings(&["a", "c"])).unwrap();
        assert!(out.contains("\"c\"") && out.contains("task t1"), "{out}");
        let none = audience_refusal(&id, &[], &strings(&["a"])).unwrap();
        assert!(
            none.contains("task t1") && none.contains("no JWT"),
            "{none}"
        );
        let g = TaskGrant {
            task_id: id,
            deadline: 1,
            audiences: declared,
            binding: TaskBinding::Selectors,
        };
        assert!(g.audience_refusal(&strings(&["c"])).is_some());
        assert!(g.audience_refusal(&strings(&["a"])).is_none());
    }

    /// `binding.admits` for a caller whose lineage is `lineage` (itself first).
    fn admits(binding: &TaskBinding, lineage: &[ProcessInstance]) -> bool {
        let ancestors = lineage.get(1..).unwrap_or_default();
        binding.admits(lineage.first(), |p| ancestors.contains(p))
    }

    #[test]
    fn bindings_admit_only_their_holder_or_its_descendants() {
        let me = ProcessInstance {
            pid: 100,
            start_time: 5000,
        };
        let parent = ProcessInstance {
            pid: 90,
            start_time: 4000,
        };
        let init = ProcessInstance {
            pid: 1,
            start_time: 1,
        };
        let holder = |p: ProcessInstance| Holder {
            process: p,
            agent: crate::SpiffeId::new("spiffe://example.org/agent").unwrap(),
        };
        let recycled = ProcessInstance {
            pid: 100,
            start_time: 9000,
        };
        let sibling = ProcessInstance {
            pid: 101,
            start_time: 5001,
        };
        // Selectors admit anyone (the entry's selectors decided already).
        assert!(admits(&TaskBinding::Selectors, &[]));
        assert!(admits(&TaskBinding::Selectors, &[sibling, parent]));
        // Process: only the instance itself, never its children, parent or a recycled pid.
        let process = TaskBinding::Process(holder(me));
        assert!(admits(&process, &[me, parent, init]));
        assert!(!admits(&process, &[recycled, parent, init]), "recycled pid");
        assert!(
            !admits(&process, &[sibling, me, parent]),
            "a child of the holder"
        );
        assert!(!admits(&process, &[parent, init]));
        assert!(!admits(&process, &[]), "unknown lineage");
        // Tree: the instance and its descendants.
        let tree = TaskBinding::Tree(holder(parent));
        assert!(admits(&tree, &[parent, init]));
        assert!(admits(&tree, &[me, parent, init]), "child");
        assert!(admits(&tree, &[sibling, me, parent, init]), "grandchild");
        assert!(!admits(&tree, &[init]));
        assert!(
            !admits(
                &tree,
                &[
                    me,
                    ProcessInstance {
                        pid: 90,
                        start_time: 4001
                    },
                    init
                ]
            ),
            "an ancestor with the holder's pid but another start time"
        );
        assert!(!admits(&tree, &[]));
        assert_eq!(tree.kind(), BindKind::Tree);
        assert_eq!(tree.holder().unwrap().process, parent);
        assert_eq!(TaskBinding::Selectors.holder(), None);
        for k in BindKind::ALL {
            assert_eq!(k.as_str().parse::<BindKind>(), Ok(k));
        }
        assert!("pid".parse::<BindKind>().is_err());
    }
}
