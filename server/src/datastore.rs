//! The datastore interface: registration entries, join tokens, agents, the audit log and
//! tasks.
//!
//! Every method returns only after its change is durable (SQLite in WAL mode with
//! `synchronous = FULL`; PostgreSQL with its default `synchronous_commit = on`), so
//! anything an API call accepted survives a crash. The trait is written against plain SQL
//! semantics (unique constraints, atomic delete-returning, conditional upserts,
//! compare-and-set updates), and one implementation serves both backends: `sql` holds the
//! statements and the row mapping, `sqlite` and `postgres` only what differs (opening,
//! write locks, DDL). `migrate` brings a database's schema to the current version when it
//! is opened, in place; `conformance` runs one test suite against both backends, on fresh
//! databases and on databases written by an older release.

#[cfg(test)]
mod conformance;
mod migrate;
pub mod postgres;
mod sql;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod testdb;

pub use sql::SqlStore;

/// Most entry ids bound in one [`Datastore::get_entries`] query: well under what either
/// backend binds in one statement.
pub const ENTRY_IDS_PER_QUERY: usize = 500;

/// Told the kind (`AuditKind::as_str` as stored) and number of the audit records committed,
/// once per run of records of one kind.
pub type AuditAppended = std::sync::Arc<dyn Fn(&str, u64) + Send + Sync>;

use common::task::{TaskBinding, TaskState};
use common::{
    EntryId, RegistrationEntry, SelectorSet, SpiffeId, SpiffeIdTemplate, TaskId, TemplateId,
};

use crate::audit::{AuditEvent, AuditRecord, ChainHead};
use crate::policy::Decision;

/// What can go wrong talking to the datastore.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DatastoreError {
    /// A uniqueness rule was violated (e.g. a duplicate entry).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The record does not exist (or changed concurrently).
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored row cannot be decoded.
    #[error("BUG: corrupt record: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, lock, connection).
    #[error("datastore failure: {0}")]
    Backend(String),
    /// The database cannot be reached or is not accepting work (no connection within the
    /// pool's wait, a connection lost, the database shutting down or starting up): the
    /// call may succeed once it answers again.
    #[error("datastore {shown} is unavailable: {0}", shown = opened())]
    Unavailable(String),
}

/// The datastore this process opened, as its errors name it (never with a password).
static OPENED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records how the datastore is shown (the first one opened: a server opens one).
pub(crate) fn note_opened(shown: &str) {
    let _ = OPENED.set(shown.to_owned());
}

/// How the datastore is shown in errors.
fn opened() -> &'static str {
    OPENED.get().map_or("(not opened)", String::as_str)
}

/// Limits a new task must stay within, checked where it is stored (see
/// [`Datastore::create_task_within`]). The default checks nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskLimits {
    /// The tenant's open tasks (pending approval or active) stay below this.
    pub tenant_open_tasks: Option<i64>,
    /// The entry's open tasks stay below this; and a task bound by selectors (no holder)
    /// is open alone on its entry. `None`: the entry is not checked (a provisioning task
    /// creates its entry).
    pub entry_parallel: Option<u64>,
}

/// Which limit refused a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitReached {
    /// The tenant has `max` open tasks.
    TenantOpenTasks {
        /// The limit.
        max: i64,
    },
    /// A task bound by selectors would share the entry, or join one open there.
    SelectorsBoundAlone,
    /// The entry has `open` open tasks, at most `max` allowed.
    EntryParallel {
        /// Open now.
        open: u64,
        /// The limit.
        max: u64,
    },
}

/// Filter for listing entries; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries parented to this ID.
    pub parent_id: Option<SpiffeId>,
    /// Only entries of this tenant.
    pub tenant: Option<String>,
}

/// An identity template (schema version 15): entries ("instances") are made from it when a
/// matching workload first asks, and removed once their workload has been gone for
/// `grace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    /// Server-assigned id.
    pub id: TemplateId,
    /// The SPIFFE ID template, e.g. `spiffe://td/acme/svc/{systemd:unit}`.
    pub template: SpiffeIdTemplate,
    /// The agent whose workloads it applies to.
    pub parent_id: SpiffeId,
    /// What a workload must have, besides a value for each placeholder.
    pub selectors: SelectorSet,
    /// Lifetime of instances' X.509-SVIDs.
    pub x509_svid_ttl: std::time::Duration,
    /// Lifetime of instances' JWT-SVIDs.
    pub jwt_svid_ttl: std::time::Duration,
    /// The tenant owning the template's literal prefix, and its instances.
    pub tenant: String,
    /// Who answers for it (and its instances).
    pub owner: String,
    /// How long an instance outlives the last report of its workload.
    pub grace: std::time::Duration,
    /// Unix seconds at creation.
    pub created_at: i64,
}

/// A deleted template with the instances deleted with it.
pub type DeletedTemplate = (TemplateRecord, Vec<RegistrationEntry>);

/// An attested agent (node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Serial (hex) of its current SVID.
    pub serial: String,
    /// Serial of the SVID it held before the last renewal (accepted until that expires,
    /// so a renewal whose response was lost does not lock the agent out); `None` before
    /// its first renewal.
    pub previous_serial: Option<String>,
    /// When the current SVID expires (unix seconds).
    pub expires_at: i64,
    /// First attestation (unix seconds).
    pub attested_at: i64,
    /// A banned agent cannot attest again until the record is deleted.
    pub banned: bool,
    /// How it attested, e.g. `join_token`.
    pub attestation_type: String,
    /// The node selectors its last attestation verified (x509pop), sorted; empty for join
    /// tokens. Decides which node entries (groups) it is a member of.
    pub selectors: std::collections::BTreeSet<common::NodeSelector>,
}

/// What a join token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedToken {
    /// The SPIFFE ID the token grants.
    pub spiffe_id: SpiffeId,
    /// When it expires(d) (unix seconds).
    pub expires_at: i64,
}

/// How [`Datastore::attest_agent_with_token`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAttestation {
    /// The token was consumed and the agent stored, with its audit records.
    Attested,
    /// The token is gone (used, perhaps by a concurrent caller), expired, or grants
    /// another SPIFFE ID: nothing changed.
    TokenGone,
    /// An agent with this SPIFFE ID is banned: nothing changed.
    Banned,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Server-assigned id (UUIDv7).
    pub id: TaskId,
    /// Where it is in its life.
    pub state: TaskState,
    /// The entry it activates (JIT access) or created (JIT provisioning).
    pub entry_id: EntryId,
    /// That entry's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// That entry's parent (the agent whose workloads use it).
    pub parent_id: SpiffeId,
    /// The task created the entry and deletes it when it ends.
    pub provisioned: bool,
    /// `user:NAME` (an operator) or the workload's standing SPIFFE ID.
    pub requester: String,
    /// Who approved it (`user:NAME`); `None` if approval was not needed or not given yet.
    pub approver: Option<String>,
    /// Why it exists.
    pub reason: String,
    /// Ticket reference.
    pub ticket: String,
    /// What it may do (RFC 6749 scope tokens policies can test; its JWT-SVIDs carry them).
    pub scopes: Vec<String>,
    /// The JWT audiences it declared: its JWT-SVIDs name only these (none: no JWT-SVIDs;
    /// tasks recorded before schema version 7 declared none).
    pub audiences: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` until active.
    pub activated_at: Option<i64>,
    /// Unix seconds: nothing issued under it outlives this; it expires here.
    pub deadline: i64,
    /// How and when it ended; `None` while open.
    pub end: Option<TaskEnd>,
    /// The policy decision that admitted it.
    pub decision: Decision,
    /// The Unix user that asked: the operator's, or the workload's as its agent attested
    /// it. `None` only for tasks recorded before it was kept; those cannot be approved.
    pub requester_unix: Option<UnixUser>,
    /// The uid of the operator who approved it.
    pub approver_uid: Option<u32>,
    /// The tenant it belongs to: its entry's.
    pub tenant: String,
    /// What its credentials are bound to on its node (tasks recorded before schema
    /// version 8: selectors).
    pub binding: TaskBinding,
    /// It skipped approval by break-glass (policy allowed it for its requester): capped
    /// short, pushed to SET receivers at its start, and flagged for review until
    /// acknowledged (tasks recorded before schema version 9: not break-glass).
    pub break_glass: bool,
    /// The after-the-fact review of a break-glass task, once someone other than the
    /// requester gave it (only ever set on break-glass tasks, and only once).
    pub acknowledgement: Option<Acknowledgement>,
    /// Its entry in a shared token status list, which its JWT-SVIDs name in their
    /// `status` claim: allocated by [`Datastore::create_task`] (tasks recorded before
    /// schema version 13 have none and are served a list of their own).
    pub status: Option<StatusEntry>,
}

/// Entries in one token status list (IETF OAuth Token Status List): 2^16, one bit each,
/// 8 KiB uncompressed.
pub const STATUS_LIST_SIZE: u32 = 1 << 16;

/// A task's place in the token status lists: list `list` (numbered from 1, never
/// reused), entry `idx` (below [`STATUS_LIST_SIZE`]). No two tasks ever share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusEntry {
    /// The list's number (`/statuslists/<list>`).
    pub list: i64,
    /// The task's index in it.
    pub idx: u32,
}

impl TaskRecord {
    /// A break-glass task nobody has acknowledged yet.
    pub fn awaits_review(&self) -> bool {
        self.break_glass && self.acknowledgement.is_none()
    }
}

/// Who reviewed a break-glass task after the fact, when, and what they said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    /// `user:NAME`: the operator who acknowledged it.
    pub by: String,
    /// That operator's uid.
    pub uid: u32,
    /// Unix seconds.
    pub at: i64,
    /// What the reviewer found (required, bounded like a reason).
    pub note: String,
}

/// A tenant as stored: an organisation inside the trust domain (see `crate::tenants`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// A DNS label.
    pub name: String,
    /// SPIFFE ID path prefixes it owns (whole segments), e.g. `/acme`.
    pub path_prefixes: Vec<String>,
    /// Unix user names that administer it.
    pub admin_users: Vec<String>,
    /// Unix group names whose members administer it.
    pub admin_groups: Vec<String>,
    /// At most this many entries (`None`: no limit).
    pub max_entries: Option<i64>,
    /// At most this many open tasks.
    pub max_open_tasks: Option<i64>,
    /// At most this many tasks open at once on one of its entries (schema version 10).
    pub max_parallel_tasks_per_entry: Option<i64>,
    /// Default review period of its entries.
    pub review_every: Option<std::time::Duration>,
    /// Unix seconds.
    pub created_at: i64,
    /// Increases on every change.
    pub revision: u64,
    /// Its own Cedar policies, applied on top of the global set (see
    /// `crate::policy::TenantPolicies`); `None`: none.
    pub policy: Option<String>,
}

/// A DNS domain a tenant claimed, verified or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// The domain (lowercase, no trailing dot).
    pub domain: String,
    /// The tenant that claimed it.
    pub tenant: String,
    /// The TXT value that proves control of it.
    pub challenge: String,
    /// Unix seconds.
    pub added_at: i64,
    /// When its challenge was first found (`None`: never verified).
    pub verified_at: Option<i64>,
    /// The last look-up.
    pub checked_at: Option<i64>,
    /// Verified once, and failing since then: its names are not issued.
    pub failing_since: Option<i64>,
    /// What the last failing look-up found.
    pub last_error: Option<String>,
}

impl DomainRecord {
    /// Verified and not failing now: entries may carry names under it.
    pub fn is_verified(&self) -> bool {
        self.verified_at.is_some() && self.failing_since.is_none()
    }
}

/// A Unix user as the kernel reported it (peer credentials), with its name at the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixUser {
    /// The uid.
    pub uid: u32,
    /// Its name (the uid in decimal when it has none).
    pub name: String,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    /// Unix seconds.
    pub at: i64,
    /// Why, e.g. `deadline reached` or the reason its requester gave (may be empty).
    pub reason: String,
}

/// An X.509-SVID issued under a task (kept so it can be listed on a CRL when the task
/// ends early).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSvid {
    /// The task.
    pub task_id: TaskId,
    /// Serial, hex.
    pub serial: String,
    /// Serial (hex) of the CA that signed it.
    pub issuer_serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// What an agent reported of one entry's use since its last report: counts to add, and
/// when it was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// The entry.
    pub entry_id: EntryId,
    /// The agent that reported it.
    pub agent_id: SpiffeId,
    /// X.509-SVID messages and JWT-SVIDs its Workload API delivered for the entry.
    pub deliveries: u64,
    /// JWT-SVIDs of the entry's SPIFFE ID that its Workload API validated.
    pub validations: u64,
    /// When the entry was last used on that agent (Unix seconds).
    pub last_used_at: i64,
}

/// An SVID issued for an entry to an agent: `(entry, agent, when in Unix seconds)`.
pub type IssuedSvid = (EntryId, SpiffeId, i64);

/// How one entry has been used, over every agent that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryUsage {
    /// The entry.
    pub entry_id: EntryId,
    /// SVIDs (X.509 and JWT) the server issued for it.
    pub issued: u64,
    /// When the last of them was issued (Unix seconds); `None` if none was.
    pub last_issued_at: Option<i64>,
    /// X.509-SVID messages and JWT-SVIDs agents delivered for it to workloads.
    pub deliveries: u64,
    /// JWT-SVIDs of its SPIFFE ID that agents validated.
    pub validations: u64,
    /// When an agent last reported it used (Unix seconds); `None` if none did.
    pub last_used_at: Option<i64>,
}

/// What kind of trust material a server published for the shared bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthorityKind {
    /// A CA certificate (X.509 authority); `material` is its PEM, `key_id` its serial (hex).
    X509,
    /// A JWT-SVID verification key; `material` is its JWK, `key_id` its `kid`.
    Jwt,
}

impl AuthorityKind {
    /// As stored: `x509` or `jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }

    /// From its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x509" => Some(Self::X509),
            "jwt" => Some(Self::Jwt),
            _ => None,
        }
    }
}

/// Public trust material (a CA certificate or a JWT public key) one server published for
/// the bundle every server serves (schema version 11). Never a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedAuthority {
    /// The publishing server's instance id.
    pub server_id: String,
    /// Certificate or JWT key.
    pub kind: AuthorityKind,
    /// CA serial (hex) or JWT `kid`.
    pub key_id: String,
    /// `prepared`, `active` or `retired` (as `CaPhase` names them).
    pub state: String,
    /// PEM certificate or JWK (JSON).
    pub material: String,
    /// Trusted until then (unix seconds); pruned after.
    pub not_after: i64,
    /// When this row was last written (unix seconds).
    pub published_at: i64,
}

/// Builds a deletion's audit records from the row it removed, inside the deleting
/// transaction: the change and its record commit together or not at all.
pub type AuditFor<T> = Box<dyn FnOnce(&T) -> Vec<AuditEvent> + Send>;

/// Persistent state of the server. Every change an operator or a job makes takes the
/// audit records that describe it and stores both in one transaction: no change is ever
/// stored without its record, nor a record without its change.
#[async_trait::async_trait]
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// Stores a new entry; `Conflict` if one with the same SPIFFE ID, parent and selectors exists.
    async fn create_entry(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// Replaces an entry; `NotFound` if it does not exist; `Conflict` on a duplicate.
    async fn update_entry(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// Replaces an entry whose stored revision is `entry.revision - 1` (compare-and-set),
    /// with `audit` in the same transaction; returns whether it applied (`false`, and no
    /// record, when another change came first or the entry is gone). `Conflict` on a
    /// duplicate. Several servers running the same duty on one entry: exactly one wins.
    async fn update_entry_if_unchanged(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// Deletes an entry and returns it (`None`, and no record, if it does not exist).
    async fn delete_entry(
        &self,
        id: &EntryId,
        audit: AuditFor<RegistrationEntry>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError>;
    /// One entry by id.
    async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, DatastoreError>;
    /// The entries among `ids` that exist, each once, ordered by id (unknown ids and
    /// repeats are ignored; no ids, no entries). One query per
    /// [`ENTRY_IDS_PER_QUERY`] distinct ids, so a batch costs a few round trips rather
    /// than one per id.
    async fn get_entries(&self, ids: &[EntryId]) -> Result<Vec<RegistrationEntry>, DatastoreError>;
    /// Entries matching `filter`, ordered by creation.
    async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError>;

    /// Stores a join token by hash.
    async fn create_join_token(
        &self,
        token_hash: &str,
        spiffe_id: &SpiffeId,
        expires_at: i64,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// What a stored join token grants, without consuming it (`None`: unknown or used).
    async fn get_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<ConsumedToken>, DatastoreError>;
    /// Enrolls an agent with a join token, in one transaction: deletes the token if it
    /// still exists, grants `agent.spiffe_id` and expires after `now` (one conditional
    /// `DELETE`), then creates or replaces `agent` as [`Self::attest_agent`] does and
    /// appends `audit`. Of concurrent callers with the same token, in this process or
    /// another server on the same database, exactly one gets
    /// [`TokenAttestation::Attested`]; for every other outcome nothing changes (the token
    /// of a banned agent stays, as it was).
    async fn attest_agent_with_token(
        &self,
        token_hash: &str,
        now: i64,
        agent: &AgentRecord,
        audit: &[AuditEvent],
    ) -> Result<TokenAttestation, DatastoreError>;

    /// Creates or replaces an agent record — unless a record with that ID is banned, in
    /// which case nothing changes and `false` is returned. One statement, so a ban that
    /// lands concurrently is never undone.
    async fn attest_agent(
        &self,
        agent: &AgentRecord,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// Records a renewed SVID if the agent is still present, not banned, and its current
    /// serial is still `expected_serial` (compare-and-set); returns whether it was stored.
    async fn renew_agent(
        &self,
        id: &SpiffeId,
        expected_serial: &str,
        new_serial: &str,
        expires_at: i64,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// Marks an agent banned and returns the updated record (`None` if unknown).
    async fn ban_agent(
        &self,
        id: &SpiffeId,
        audit: &[AuditEvent],
    ) -> Result<Option<AgentRecord>, DatastoreError>;
    /// One agent.
    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError>;
    /// All agents.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, DatastoreError>;
    /// Deletes an agent record and returns it.
    async fn delete_agent(
        &self,
        id: &SpiffeId,
        audit: &[AuditEvent],
    ) -> Result<Option<AgentRecord>, DatastoreError>;

    /// Appends events to the audit log, chained after the last record, atomically and in
    /// order; returns the stored records.
    async fn append_audit(&self, events: &[AuditEvent])
    -> Result<Vec<AuditRecord>, DatastoreError>;
    /// Audit records in log order, optionally only those of one task and of one tenant.
    async fn list_audit(
        &self,
        task_id: Option<&TaskId>,
        tenant: Option<&str>,
    ) -> Result<Vec<AuditRecord>, DatastoreError>;
    /// The last audit record's sequence number and hash, as stored.
    async fn audit_head(&self) -> Result<Option<ChainHead>, DatastoreError>;
    /// One audit record, by sequence number.
    async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>, DatastoreError>;
    /// Appends from now on never go at or below `head` (a signed checkpoint of it exists):
    /// if the stored log ends before it, its newest records were deleted, and the next
    /// record follows `head` rather than take a deleted record's number.
    fn anchor_audit(&self, head: ChainHead);
    /// The highest chain head this datastore object committed (or was anchored to),
    /// updated after each commit that appended records: what the checkpointer signs.
    fn audit_heads(&self) -> tokio::sync::watch::Receiver<Option<ChainHead>>;

    /// Stores a new task, and the temporary entry it provisions if any, with its audit
    /// records, atomically. `Conflict` if the same holder already has an open task on the
    /// entry (or the provisioned entry duplicates one).
    ///
    /// In the same transaction it allocates the task's status list entry (`task.status`
    /// is ignored) and returns it: an index drawn from a CSPRNG among the unused ones of
    /// the newest list, and a new list once that one is half full, so indices stay
    /// unpredictable. Creates on every server of the database are serialised by its write
    /// lock, and a unique index backs it: no two tasks ever get the same entry.
    async fn create_task(
        &self,
        task: &TaskRecord,
        provisioned_entry: Option<&RegistrationEntry>,
        audit: &[AuditEvent],
    ) -> Result<StatusEntry, DatastoreError> {
        self.create_task_within(task, provisioned_entry, audit, &TaskLimits::default())
            .await?
            .map_err(|limit| DatastoreError::Conflict(format!("{limit:?}")))
    }
    /// As `create_task`, after checking `limits` against the open tasks stored, in the
    /// same serialised write transaction (so concurrent creates on any number of servers
    /// never exceed them): `Ok(Err(_))` names the limit reached, and nothing is written.
    async fn create_task_within(
        &self,
        task: &TaskRecord,
        provisioned_entry: Option<&RegistrationEntry>,
        audit: &[AuditEvent],
        limits: &TaskLimits,
    ) -> Result<Result<StatusEntry, LimitReached>, DatastoreError>;
    /// Replaces a task's row if its stored state is one of `expected` (compare-and-set),
    /// appending `audit` in the same transaction; when the new state is final and the
    /// task provisioned its entry, the entry is deleted too. Returns whether it applied.
    async fn update_task(
        &self,
        task: &TaskRecord,
        expected: &[TaskState],
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// Records the after-the-fact review of break-glass task `id`, with its audit records,
    /// atomically, only if the task is break-glass and not acknowledged yet (compare-and-set;
    /// nothing else of the task changes). Returns whether it applied.
    async fn acknowledge_task(
        &self,
        id: &TaskId,
        acknowledgement: &Acknowledgement,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// One task.
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, DatastoreError>;
    /// Tasks, optionally in one state, oldest first.
    async fn list_tasks(&self, state: Option<TaskState>)
    -> Result<Vec<TaskRecord>, DatastoreError>;
    /// Open (pending or active) tasks whose deadline is at or before `now`.
    async fn due_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, DatastoreError>;
    /// The open (pending or active) tasks of an entry, oldest first (several may be open
    /// at once, one per holder).
    async fn open_tasks_for_entry(
        &self,
        entry_id: &EntryId,
    ) -> Result<Vec<TaskRecord>, DatastoreError>;
    /// Records a batch of issued SVIDs in one write transaction: the X.509-SVID serials
    /// issued under tasks (what [`Datastore::revoked_since`] lists once a task ends early),
    /// the audit events (as [`Datastore::append_audit`]) and the issue counts (per entry
    /// and agent, `issued` grows by one per item and `last_issued_at` becomes the later of
    /// the stored and given times), all or none. Returns the stored audit records.
    async fn record_issuance(
        &self,
        task_svids: Vec<TaskSvid>,
        audit: Vec<AuditEvent>,
        issued: Vec<IssuedSvid>,
    ) -> Result<Vec<AuditRecord>, DatastoreError>;
    /// Tasks that ended before their deadline (`deadline > now`), and the SVIDs issued
    /// under them that have not expired (`not_after > now`): what must stay revoked.
    async fn revoked_since(
        &self,
        now: i64,
    ) -> Result<(Vec<TaskRecord>, Vec<TaskSvid>), DatastoreError>;
    /// The number of the newest token status list (`None` before the first task of
    /// schema version 10).
    async fn newest_status_list(&self) -> Result<Option<i64>, DatastoreError>;

    /// Entries of the same workload (`parent_id` and exactly `selectors`) in a tenant
    /// other than `tenant`.
    async fn same_workload_elsewhere(
        &self,
        parent_id: &SpiffeId,
        selectors: &SelectorSet,
        tenant: &str,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError>;
    /// Enabled entries whose expiry or review deadline is at or before `now`.
    async fn lapsed_entries(&self, now: i64) -> Result<Vec<RegistrationEntry>, DatastoreError>;

    /// Stores a new tenant; `Conflict` if the name is taken.
    async fn create_tenant(
        &self,
        t: &TenantRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// Replaces a tenant whose stored revision is `t.revision - 1` (compare-and-set);
    /// returns whether it applied.
    async fn update_tenant(
        &self,
        t: &TenantRecord,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// Deletes a tenant that owns no entries, tasks or domains, atomically; `Conflict`
    /// naming what it still owns otherwise; `None` if it does not exist.
    async fn delete_tenant(
        &self,
        name: &str,
        audit: AuditFor<TenantRecord>,
    ) -> Result<Option<TenantRecord>, DatastoreError>;
    /// One tenant.
    async fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, DatastoreError>;
    /// Every tenant, by name.
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, DatastoreError>;
    /// How many entries and open tasks a tenant owns.
    async fn tenant_counts(&self, name: &str) -> Result<(i64, i64), DatastoreError>;
    /// Stores a claimed domain, or replaces it (same domain); `Conflict` if another tenant
    /// claimed it.
    async fn put_domain(
        &self,
        d: &DomainRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// Records a check of a claimed domain (`d`: verification state, `checked_at`,
    /// `last_error`) with `audit`, only if no other check was recorded since the one at
    /// `previous_checked_at` (compare-and-set on `checked_at`; same tenant, challenge and
    /// claim time). Returns whether it applied (`false`: nothing stored, no record).
    /// Every server re-checks the domains: a change of state is recorded once.
    async fn record_domain_check(
        &self,
        d: &DomainRecord,
        previous_checked_at: Option<i64>,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// One domain.
    async fn get_domain(&self, domain: &str) -> Result<Option<DomainRecord>, DatastoreError>;
    /// Domains, optionally of one tenant, by name.
    async fn list_domains(&self, tenant: Option<&str>)
    -> Result<Vec<DomainRecord>, DatastoreError>;
    /// Deletes a domain and returns it.
    async fn delete_domain(
        &self,
        domain: &str,
        audit: AuditFor<DomainRecord>,
    ) -> Result<Option<DomainRecord>, DatastoreError>;
    /// Adds agents' usage reports to the entries' usage, in one transaction: counts are
    /// added to what is stored for the entry and agent, `last_used_at` becomes the later
    /// of the stored and reported times.
    async fn record_usage(&self, reports: &[UsageReport]) -> Result<(), DatastoreError>;
    /// The usage of the entries `entry_ids` (every entry with usage recorded when `None`),
    /// summed over agents (latest times), ordered by entry id. An entry without any
    /// recorded usage is absent; usage recorded for an entry since deleted stays listed.
    async fn entry_usage(
        &self,
        entry_ids: Option<&[EntryId]>,
    ) -> Result<Vec<EntryUsage>, DatastoreError>;

    /// Inserts or replaces trust material a server publishes for the shared bundle (keyed
    /// by server, kind and key id), with its audit records, in one transaction.
    async fn publish_authorities(
        &self,
        items: &[PublishedAuthority],
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// Every server's published trust material still valid at `now` (`not_after > now`),
    /// by server, kind and key id.
    async fn list_authorities(&self, now: i64) -> Result<Vec<PublishedAuthority>, DatastoreError>;
    /// Deletes published trust material that expired at or before `now`; returns how many
    /// rows went. Idempotent, so every server may run it.
    async fn prune_authorities(&self, now: i64) -> Result<u64, DatastoreError>;

    /// Takes or renews `holder`'s lease on pushing SETs to `receiver`, until `until_ms`,
    /// unless another holder's lease runs past `now_ms` (unix milliseconds); the
    /// receiver's cursor starts at `start` if it has none. Returns the cursor (the last
    /// audit record delivered to the receiver or given up) while `holder` holds the lease,
    /// `None` while another server does. In a write transaction: of servers asking at
    /// once, one holds it.
    async fn claim_set_receiver(
        &self,
        receiver: &str,
        holder: &str,
        start: i64,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, DatastoreError>;
    /// Moves `receiver`'s cursor from `from` to `to` and appends `audit`, in one
    /// transaction, if `holder` still holds the receiver and its cursor is still `from`
    /// (compare-and-set); returns whether it applied (`false`: nothing stored, no record).
    async fn advance_set_cursor(
        &self,
        receiver: &str,
        holder: &str,
        from: i64,
        to: i64,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError>;
    /// Ends `holder`'s lease on `receiver` (at shutdown), so another server takes the
    /// receiver over at once; nothing if it does not hold it.
    async fn release_set_receiver(
        &self,
        receiver: &str,
        holder: &str,
    ) -> Result<(), DatastoreError>;

    /// Stores a template; `Conflict` if one with the same text and parent exists.
    async fn create_template(
        &self,
        template: &TemplateRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError>;
    /// One template by id.
    async fn get_template(&self, id: &TemplateId)
    -> Result<Option<TemplateRecord>, DatastoreError>;
    /// Templates (only those parented to `parent` if given), ordered by creation.
    async fn list_templates(
        &self,
        parent: Option<&SpiffeId>,
    ) -> Result<Vec<TemplateRecord>, DatastoreError>;
    /// Deletes a template and every entry made from it, in one transaction with the
    /// records `audit` makes of them; `None` (and no record) if it does not exist.
    async fn delete_template(
        &self,
        id: &TemplateId,
        audit: AuditFor<DeletedTemplate>,
    ) -> Result<Option<DeletedTemplate>, DatastoreError>;
    /// Records that the workloads of these instances were alive at `now` (Unix seconds;
    /// a time earlier than the one stored is ignored).
    async fn mark_instances_seen(&self, ids: &[EntryId], now: i64) -> Result<(), DatastoreError>;
    /// Instances not seen (or, never seen, not created) within their template's grace
    /// before `now`.
    async fn stale_instances(&self, now: i64) -> Result<Vec<RegistrationEntry>, DatastoreError>;
    /// Deletes instance `id` only if it is still stale at `now` (as [`stale_instances`]
    /// says, checked in the delete itself), in one transaction with the records `audit`
    /// makes of it; `None` (nothing deleted, nothing recorded) if it is gone, not an
    /// instance, or was seen within its grace since it was listed.
    ///
    /// [`stale_instances`]: Datastore::stale_instances
    async fn delete_stale_instance(
        &self,
        id: &EntryId,
        now: i64,
        audit: AuditFor<RegistrationEntry>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError>;

    /// Checks that the datastore answers: one read of its own schema table on a pooled
    /// connection, given at most `within` (waiting for a connection included). `Backend`
    /// with the cause when it does not, or not in time. Readiness rests on it.
    async fn ping(&self, within: std::time::Duration) -> Result<(), DatastoreError>;

    /// Calls `counted` with the kind of each audit record appended, once it is committed
    /// (`/metrics`). Stores that cannot ignore it.
    fn count_audit_appends(&self, _counted: AuditAppended) {}
}
