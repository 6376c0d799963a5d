//! How each record is stored: its statements (one text for both backends) and its row
//! mapping, in both directions, written once.
//!
//! Statements use `$n` placeholders, which PostgreSQL requires and sqlx's SQLite driver
//! binds by number too, and only SQL both backends read the same way: `RETURNING`,
//! `ON CONFLICT ... DO UPDATE`, partial indexes, `NOT flag` and `TRUE` for flags. Orders
//! are total (a unique column last) and text keys compare as bytes on both backends
//! (SQLite's `BINARY` collation; `COLLATE "C"` on PostgreSQL since schema version 2), so a
//! listing comes back in one order whatever the backend.
//!
//! Lists, scopes, DNS names and policy decisions are stored as JSON text (not a native
//! JSON type) so a value reads back byte for byte, and audit hashes are computed over the
//! same strings on both backends.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use common::entry::{Disabled, Governance};
use common::task::{BindKind, Holder, ProcessInstance, TaskBinding, TaskState};
use common::{
    EntryId, NodeSelector, RegistrationEntry, Selector, SelectorSet, SpiffeId, SpiffeIdTemplate,
    TaskId, TemplateId,
};
use sha2::{Digest as _, Sha256};

use super::io::{Cells, Param};
use crate::audit::{AuditEvent, AuditRecord};
use crate::datastore::{
    Acknowledgement, AgentRecord, ConsumedToken, DatastoreError, EntryUsage, STATUS_LIST_SIZE,
    StatusEntry, TaskEnd, TaskRecord, TaskSvid, TemplateRecord, UnixUser, UsageReport,
};

/// The message of a duplicate entry (same id, or same SPIFFE ID, parent and selectors);
/// the admin API shows it.
pub(super) const ENTRY_CONFLICT: &str =
    "an entry with the same SPIFFE ID, parent ID and selectors already exists";

pub(super) const INSERT_ENTRY: &str = "INSERT INTO entries (id, spiffe_id, parent_id, selectors,
        identity, x509_svid_ttl, jwt_svid_ttl, dns_names, jit, hint, created_at, revision,
        tenant, owner, expires_at, review_every, certified_at, disabled_at, disabled_reason,
        template_id, node)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21)";
pub(super) const UPDATE_ENTRY: &str = "UPDATE entries SET spiffe_id = $2, parent_id = $3,
        selectors = $4, identity = $5, x509_svid_ttl = $6, jwt_svid_ttl = $7, dns_names = $8,
        jit = $9, hint = $10, created_at = $11, revision = $12, tenant = $13, owner = $14,
        expires_at = $15, review_every = $16, certified_at = $17, disabled_at = $18,
        disabled_reason = $19, template_id = $20, node = $21
    WHERE id = $1";
/// [`UPDATE_ENTRY`] only while the stored revision is `$22` (compare-and-set).
pub(super) const UPDATE_ENTRY_IF: &str = "UPDATE entries SET spiffe_id = $2, parent_id = $3,
        selectors = $4, identity = $5, x509_svid_ttl = $6, jwt_svid_ttl = $7, dns_names = $8,
        jit = $9, hint = $10, created_at = $11, revision = $12, tenant = $13, owner = $14,
        expires_at = $15, review_every = $16, certified_at = $17, disabled_at = $18,
        disabled_reason = $19, template_id = $20, node = $21
    WHERE id = $1 AND revision = $22";
pub(super) const DELETE_ENTRY: &str = "DELETE FROM entries WHERE id = $1 RETURNING *";
pub(super) const GET_ENTRY: &str = "SELECT * FROM entries WHERE id = $1";
/// The entries whose ids are bound to the `n` values (`n` at least 1), in no order.
pub(super) fn entries_by_id_sql(marks: Placeholders, n: usize) -> String {
    format!(
        "SELECT * FROM entries WHERE id IN ({})",
        placeholders(marks, n)
    )
}

/// How a backend writes the placeholders of a generated statement, whose values are each
/// bound once and in order.
///
/// SQLite finds a numbered placeholder's (`$7`) name by walking the names before it, and
/// the driver asks for every name while binding, so binding n numbered values costs about
/// n²/2 steps: half a million for a 990-value insert, a tenth of the server's time while
/// it signs batches. Its anonymous placeholder (`?`) has no name to look up. PostgreSQL
/// has only numbered ones. A statement never mixes the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholders {
    /// `$1, $2, ...`
    Numbered,
    /// `?, ?, ...`, numbered by position.
    Anonymous,
}

impl Placeholders {
    /// Writes the placeholder of the `i`th value (from 1).
    fn write(self, sql: &mut String, i: usize) {
        use std::fmt::Write as _;
        match self {
            Self::Numbered => {
                let _ = write!(sql, "${i}");
            }
            Self::Anonymous => sql.push('?'),
        }
    }
}

/// The placeholders of `n` values, comma-separated.
fn placeholders(marks: Placeholders, n: usize) -> String {
    let mut sql = String::with_capacity(n * 6);
    for i in 1..=n {
        if i > 1 {
            sql.push_str(", ");
        }
        marks.write(&mut sql, i);
    }
    sql
}

pub(super) const LIST_ENTRIES: &str = "SELECT * FROM entries
    WHERE ($1 IS NULL OR spiffe_id = $1) AND ($2 IS NULL OR parent_id = $2)
        AND ($3 IS NULL OR tenant = $3)
    ORDER BY created_at, id";
/// Entries of the same workload (parent and selector set) in another tenant.
pub(super) const SAME_WORKLOAD_ELSEWHERE: &str = "SELECT * FROM entries
    WHERE parent_id = $1 AND selectors = $2 AND tenant <> $3 ORDER BY created_at, id";
/// Enabled entries whose expiry or review deadline has passed.
pub(super) const LAPSED_ENTRIES: &str = "SELECT * FROM entries
    WHERE disabled_at IS NULL AND (expires_at <= $1
        OR (review_every IS NOT NULL AND COALESCE(certified_at, created_at) + review_every <= $1))
    ORDER BY created_at, id";
/// What the migration to version 2 recomputes: see [`identity`].
pub(super) const ENTRY_IDENTITIES: &str =
    "SELECT id, spiffe_id, parent_id, selectors, identity FROM entries ORDER BY id";
pub(super) const SET_ENTRY_IDENTITY: &str = "UPDATE entries SET identity = $2 WHERE id = $1";

pub(super) const INSERT_TEMPLATE: &str = "INSERT INTO entry_templates (id, spiffe_id_template,
        parent_id, selectors, identity, x509_svid_ttl, jwt_svid_ttl, tenant, owner,
        grace_seconds, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub(super) const GET_TEMPLATE: &str = "SELECT * FROM entry_templates WHERE id = $1";
pub(super) const LIST_TEMPLATES: &str = "SELECT * FROM entry_templates
    WHERE ($1 IS NULL OR parent_id = $1) ORDER BY created_at, id";
pub(super) const DELETE_TEMPLATE: &str = "DELETE FROM entry_templates WHERE id = $1 RETURNING *";
pub(super) const DELETE_INSTANCES: &str = "DELETE FROM entries WHERE template_id = $1 RETURNING *";
/// Keeps the later of two times an instance was seen.
pub(super) const MARK_SEEN: &str = "INSERT INTO instances_seen (entry_id, seen_at) VALUES ($1, $2)
    ON CONFLICT (entry_id) DO UPDATE SET seen_at = excluded.seen_at
    WHERE instances_seen.seen_at < excluded.seen_at";
/// Instances past their grace, and instances whose template is gone (made while it was
/// being deleted).
pub(super) const STALE_INSTANCES: &str = "SELECT e.* FROM entries e
    LEFT JOIN entry_templates t ON t.id = e.template_id
    LEFT JOIN instances_seen s ON s.entry_id = e.id
    WHERE e.template_id IS NOT NULL
        AND (t.id IS NULL OR COALESCE(s.seen_at, e.created_at) + t.grace_seconds <= $1)
    ORDER BY e.created_at, e.id";
/// One instance, only while [`STALE_INSTANCES`] would list it (a compare-and-set: a report
/// that it was seen, committed after it was listed, keeps it).
pub(super) const DELETE_STALE_INSTANCE: &str = "DELETE FROM entries
    WHERE id = $1 AND template_id IS NOT NULL
        AND (NOT EXISTS (SELECT 1 FROM entry_templates t WHERE t.id = entries.template_id)
            OR COALESCE((SELECT s.seen_at FROM instances_seen s WHERE s.entry_id = entries.id),
                    entries.created_at)
                + (SELECT t.grace_seconds FROM entry_templates t WHERE t.id = entries.template_id)
                <= $2)
    RETURNING *";
/// Seen rows of entries that are gone.
pub(super) const PRUNE_SEEN: &str =
    "DELETE FROM instances_seen WHERE entry_id NOT IN (SELECT id FROM entries)";
/// The message of a duplicate template.
pub(super) const TEMPLATE_CONFLICT: &str =
    "a template with the same SPIFFE ID template and parent ID already exists";

pub(super) const INSERT_JOIN_TOKEN: &str =
    "INSERT INTO join_tokens (token_hash, spiffe_id, expires_at) VALUES ($1, $2, $3)";
/// One statement: of two concurrent callers only one deletes the row (SQLite serialises
/// writers; on PostgreSQL the second `DELETE` waits for the first, then finds nothing).
pub(super) const GET_JOIN_TOKEN: &str =
    "SELECT spiffe_id, expires_at FROM join_tokens WHERE token_hash = $1";

/// Consumes a join token: one conditional statement, so of two transactions presenting
/// the same token only the first to commit deletes a row (the other, waiting on the row
/// or the write lock, finds none).
pub(super) const CONSUME_JOIN_TOKEN: &str =
    "DELETE FROM join_tokens WHERE token_hash = $1 AND spiffe_id = $2 AND expires_at > $3";

/// One statement: the conflicting row is locked and its `banned` read again before the
/// update, so a ban committed concurrently is never overwritten.
pub(super) const ATTEST_AGENT: &str = "INSERT INTO agents (spiffe_id, serial, previous_serial,
        expires_at, attested_at, banned, attestation_type, selectors)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (spiffe_id) DO UPDATE SET serial = excluded.serial,
        previous_serial = excluded.previous_serial, expires_at = excluded.expires_at,
        attested_at = excluded.attested_at, banned = excluded.banned,
        attestation_type = excluded.attestation_type, selectors = excluded.selectors
    WHERE NOT agents.banned";
pub(super) const RENEW_AGENT: &str =
    "UPDATE agents SET previous_serial = serial, serial = $1, expires_at = $2
    WHERE spiffe_id = $3 AND serial = $4 AND NOT banned";
pub(super) const BAN_AGENT: &str =
    "UPDATE agents SET banned = TRUE WHERE spiffe_id = $1 RETURNING *";
pub(super) const GET_AGENT: &str = "SELECT * FROM agents WHERE spiffe_id = $1";
pub(super) const LIST_AGENTS: &str = "SELECT * FROM agents ORDER BY attested_at, spiffe_id";
pub(super) const DELETE_AGENT: &str = "DELETE FROM agents WHERE spiffe_id = $1 RETURNING *";

/// The datastore's liveness check: the newest schema version recorded.
pub(super) const PING: &str = "SELECT version FROM tessera_schema ORDER BY version DESC LIMIT 1";
pub(super) const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";
/// Audit records, one row of [`audit_params`] per record after it (see [`values_rows`]).
pub(super) const INSERT_AUDIT_HEAD: &str = "INSERT INTO audit_log (seq, at_ms, kind, task_id,
        subject, detail, prev_hash, hash, actor, tenant) VALUES ";
/// Values per row of [`INSERT_AUDIT_HEAD`].
pub(super) const INSERT_AUDIT_COLUMNS: usize = 10;
/// Most values bound in one multi-row statement: under the 999 of the oldest SQLite
/// builds and far under PostgreSQL's 65,535.
pub(super) const MAX_VALUES_PER_STATEMENT: usize = 990;

/// `head` followed by `rows` parenthesised groups of `columns` placeholders
/// (`($1, $2), ($3, $4)` or `(?, ?), (?, ?)`), then `tail`: one statement for many rows.
/// `head` and `tail` hold no placeholder.
pub(super) fn values_rows(
    marks: Placeholders,
    head: &str,
    columns: usize,
    rows: usize,
    tail: &str,
) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * columns * 6);
    sql.push_str(head);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            marks.write(&mut sql, r * columns + c + 1);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}
pub(super) const AUDIT_RECORD: &str = "SELECT * FROM audit_log WHERE seq = $1";
pub(super) const LIST_AUDIT: &str = "SELECT * FROM audit_log
    WHERE ($1 IS NULL OR task_id = $1) AND ($2 IS NULL OR tenant = $2) ORDER BY seq";

pub(super) const INSERT_TASK: &str = "INSERT INTO tasks (id, state, entry_id, spiffe_id,
        parent_id, provisioned, requester, approver, reason, ticket, scopes, created_at,
        activated_at, deadline, ended_at, end_reason, decision, requester_uid, requester_user,
        approver_uid, tenant, audiences, bind_kind, bind_pid, bind_start_time, bind_agent,
        break_glass, acknowledged_by, acknowledged_uid, acknowledged_at, acknowledgement_note,
        status_list, status_idx)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)";
/// The newest token status list: its number and how many entries it has given out.
pub(super) const NEWEST_STATUS_LIST: &str =
    "SELECT number, allocated FROM status_lists ORDER BY number DESC LIMIT 1";
/// Starts list `$1` at `$2` (unix seconds), with nothing allocated.
pub(super) const INSERT_STATUS_LIST: &str =
    "INSERT INTO status_lists (number, created_at, allocated) VALUES ($1, $2, 0)";
/// A task holding entry `$2` of list `$1`, if any.
pub(super) const STATUS_ENTRY_HOLDER: &str =
    "SELECT id FROM tasks WHERE status_list = $1 AND status_idx = $2";
/// Counts one more entry given out by list `$1`.
pub(super) const COUNT_STATUS_ENTRY: &str =
    "UPDATE status_lists SET allocated = allocated + 1 WHERE number = $1";
/// Records a break-glass task's acknowledgement, once: `$1` the task, `$2` to `$5` who,
/// their uid, when and the note.
pub(super) const ACKNOWLEDGE_TASK: &str = "UPDATE tasks SET acknowledged_by = $2,
        acknowledged_uid = $3, acknowledged_at = $4, acknowledgement_note = $5
    WHERE id = $1 AND break_glass = $6 AND acknowledged_at IS NULL";
pub(super) const GET_TASK: &str = "SELECT * FROM tasks WHERE id = $1";
pub(super) const LIST_TASKS: &str =
    "SELECT * FROM tasks WHERE ($1 IS NULL OR state = $1) ORDER BY created_at, id";
pub(super) const DUE_TASKS: &str = "SELECT * FROM tasks
    WHERE state IN ('pending_approval', 'active') AND deadline <= $1 ORDER BY deadline, id";
pub(super) const OPEN_TASKS_FOR_ENTRY: &str = "SELECT * FROM tasks
    WHERE entry_id = $1 AND state IN ('pending_approval', 'active') ORDER BY created_at, id";
pub(super) const ENDED_TASKS: &str = "SELECT * FROM tasks
    WHERE state NOT IN ('pending_approval', 'active') AND deadline > $1 ORDER BY ended_at, id";
pub(super) const UPSERT_TASK_SVID: &str = "INSERT INTO task_svids (serial, task_id,
        issuer_serial, not_after)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (serial) DO UPDATE SET task_id = excluded.task_id,
        issuer_serial = excluded.issuer_serial, not_after = excluded.not_after";
pub(super) const REVOKED_TASK_SVIDS: &str = "SELECT s.* FROM task_svids s
    JOIN tasks t ON t.id = s.task_id
    WHERE t.state NOT IN ('pending_approval', 'active') AND s.not_after > $1
    ORDER BY s.serial";

/// Adds one agent's report of an entry's use: counts added (saturating at the largest
/// value a column holds), the later of the two last-use times kept.
pub(super) const UPSERT_USAGE: &str = "INSERT INTO entry_usage (entry_id, agent_id,
        deliveries, validations, last_used_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (entry_id, agent_id) DO UPDATE SET
        deliveries = CASE
            WHEN excluded.deliveries > 9223372036854775807 - entry_usage.deliveries
            THEN 9223372036854775807
            ELSE entry_usage.deliveries + excluded.deliveries END,
        validations = CASE
            WHEN excluded.validations > 9223372036854775807 - entry_usage.validations
            THEN 9223372036854775807
            ELSE entry_usage.validations + excluded.validations END,
        last_used_at = CASE
            WHEN entry_usage.last_used_at IS NULL
                OR excluded.last_used_at > entry_usage.last_used_at
            THEN excluded.last_used_at
            ELSE entry_usage.last_used_at END";
/// Counts SVIDs issued for entries to agents, one row of [`UPSERT_ISSUED_COLUMNS`]
/// values per (entry, agent) after [`UPSERT_ISSUED_HEAD`] (see [`values_rows`]): that many
/// more issued (saturating at the largest value the column holds), the later of the two
/// last-issue times kept. A statement names each (entry, agent) once.
pub(super) const UPSERT_ISSUED_HEAD: &str = "INSERT INTO entry_usage (entry_id, agent_id, issued,
        last_issued_at) VALUES ";
/// Values per row of [`UPSERT_ISSUED_HEAD`]: entry, agent, count, time.
pub(super) const UPSERT_ISSUED_COLUMNS: usize = 4;
/// What follows the rows of [`UPSERT_ISSUED_HEAD`].
pub(super) const UPSERT_ISSUED_TAIL: &str = "
    ON CONFLICT (entry_id, agent_id) DO UPDATE SET
        issued = CASE
            WHEN excluded.issued > 9223372036854775807 - entry_usage.issued
            THEN 9223372036854775807
            ELSE entry_usage.issued + excluded.issued END,
        last_issued_at = CASE
            WHEN entry_usage.last_issued_at IS NULL
                OR excluded.last_issued_at > entry_usage.last_issued_at
            THEN excluded.last_issued_at
            ELSE entry_usage.last_issued_at END";
/// Every entry's usage, one row per entry and agent.
pub(super) const ALL_USAGE: &str = "SELECT * FROM entry_usage ORDER BY entry_id, agent_id";

/// The usage rows of `n` entries, whose ids are bound to the `n` values (`n` at least 1).
pub(super) fn usage_of_sql(marks: Placeholders, n: usize) -> String {
    format!(
        "SELECT * FROM entry_usage WHERE entry_id IN ({}) ORDER BY entry_id, agent_id",
        placeholders(marks, n)
    )
}

/// The update of a task's row, applied only if its stored state is one of `expected`
/// (compare-and-set); `None` when `expected` is empty (nothing can match). Whether a task
/// is break-glass never changes, and its acknowledgement is written only by
/// [`ACKNOWLEDGE_TASK`], so an update from a copy read earlier never undoes one.
pub(super) fn update_task_sql(expected: &[TaskState]) -> Option<String> {
    if expected.is_empty() {
        return None;
    }
    // State names are fixed identifiers, never input: safe to inline.
    let states: Vec<String> = expected
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    Some(format!(
        "UPDATE tasks SET state = $2, entry_id = $3, spiffe_id = $4, parent_id = $5,
            provisioned = $6, requester = $7, approver = $8, reason = $9, ticket = $10,
            scopes = $11, created_at = $12, activated_at = $13, deadline = $14, ended_at = $15,
            end_reason = $16, decision = $17, requester_uid = $18, requester_user = $19,
            approver_uid = $20, tenant = $21, audiences = $22, bind_kind = $23, bind_pid = $24,
            bind_start_time = $25, bind_agent = $26
        WHERE id = $1 AND state IN ({})",
        states.join(", ")
    ))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Corrupt(format!("{what}: {e}"))
}

fn spiffe_id(row: &impl Cells, column: &str) -> Result<SpiffeId, DatastoreError> {
    SpiffeId::new(&row.text(column)?).map_err(|e| corrupt(column, e))
}

/// An id column (`EntryId` or `TaskId`), checked as on the way in.
fn id<T: FromStr<Err = common::ids::IdError>>(
    row: &impl Cells,
    column: &str,
) -> Result<T, DatastoreError> {
    row.text(column)?.parse().map_err(|e| corrupt(column, e))
}

fn json_strings(row: &impl Cells, column: &str) -> Result<Vec<String>, DatastoreError> {
    serde_json::from_str(&row.text(column)?).map_err(|e| corrupt(column, e))
}

fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

/// A duration as stored: whole seconds (saturating; TTLs are far below the limit).
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn duration(row: &impl Cells, column: &str) -> Result<Duration, DatastoreError> {
    let v = row.int(column)?;
    Ok(Duration::from_secs(
        u64::try_from(v).map_err(|e| corrupt(column, e))?,
    ))
}

/// Canonical selector encoding: a JSON array of the sorted `type:value` strings, so equal
/// sets are equal text.
pub(super) fn selectors_json(s: &SelectorSet) -> String {
    let list: Vec<String> = s.iter().map(ToString::to_string).collect();
    to_json(&list)
}

/// What makes an entry unique: SHA-256 (hex) of the JSON array `[spiffe_id, parent_id,
/// selectors]`, `selectors` being the stored text. A unique constraint on this column is
/// the rule "no two entries with the same SPIFFE ID, parent and selector set", without
/// an index over the columns themselves (an entry may carry 64 selectors of 1 KiB, beyond
/// what a PostgreSQL index row holds).
pub(super) fn identity(spiffe_id: &str, parent_id: &str, selectors: &str) -> String {
    let key = serde_json::json!([spiffe_id, parent_id, selectors]);
    hex::encode(Sha256::digest(key.to_string().as_bytes()))
}

/// An entry's values, owned, in [`INSERT_ENTRY`] / [`UPDATE_ENTRY`] order.
pub(super) struct EntryRow {
    selectors: String,
    identity: String,
    dns_names: String,
    revision: i64,
}

impl EntryRow {
    pub(super) fn new(e: &RegistrationEntry) -> Result<Self, DatastoreError> {
        // A node entry stores its node selectors in the same column, as sorted strings.
        let selectors = to_json(&e.selector_strings());
        Ok(Self {
            identity: identity(e.spiffe_id.as_str(), e.parent_id.as_str(), &selectors),
            selectors,
            dns_names: to_json(&e.dns_names),
            revision: i64::try_from(e.revision).map_err(|err| corrupt("revision", err))?,
        })
    }

    /// The revision the stored entry has when this one replaces it.
    pub(super) fn previous_revision(&self) -> i64 {
        self.revision - 1
    }

    pub(super) fn params<'a>(&'a self, e: &'a RegistrationEntry) -> [Param<'a>; 21] {
        let g = &e.governance;
        [
            Param::Text(e.id.as_str()),
            Param::Text(e.spiffe_id.as_str()),
            Param::Text(e.parent_id.as_str()),
            Param::Text(&self.selectors),
            Param::Text(&self.identity),
            Param::Int(secs(e.x509_svid_ttl)),
            Param::Int(secs(e.jwt_svid_ttl)),
            Param::Text(&self.dns_names),
            Param::Flag(e.jit),
            Param::Text(&e.hint),
            Param::Int(e.created_at),
            Param::Int(self.revision),
            Param::Text(&g.tenant),
            Param::Text(&g.owner),
            Param::OptInt(g.expires_at),
            Param::OptInt(g.review_every.map(secs)),
            Param::OptInt(g.certified_at),
            Param::OptInt(g.disabled.as_ref().map(|d| d.at)),
            Param::OptText(g.disabled.as_ref().map(|d| d.reason.as_str())),
            Param::OptText(g.template_id.as_ref().map(TemplateId::as_str)),
            Param::Flag(e.is_node()),
        ]
    }
}

pub(super) fn entry(row: &impl Cells) -> Result<RegistrationEntry, DatastoreError> {
    let strings = json_strings(row, "selectors")?;
    let (selectors, node_selectors) = if row.flag("node")? {
        let node = strings
            .iter()
            .map(|s| NodeSelector::from_str(s))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| corrupt("selectors", e))?;
        (SelectorSet::new(), Some(node))
    } else {
        let selectors = strings
            .iter()
            .map(|s| Selector::from_str(s))
            .collect::<Result<SelectorSet, _>>()
            .map_err(|e| corrupt("selectors", e))?;
        (selectors, None)
    };
    Ok(RegistrationEntry {
        id: id::<EntryId>(row, "id")?,
        spiffe_id: spiffe_id(row, "spiffe_id")?,
        parent_id: spiffe_id(row, "parent_id")?,
        selectors,
        x509_svid_ttl: duration(row, "x509_svid_ttl")?,
        jwt_svid_ttl: duration(row, "jwt_svid_ttl")?,
        dns_names: json_strings(row, "dns_names")?,
        jit: row.flag("jit")?,
        hint: row.text("hint")?,
        created_at: row.int("created_at")?,
        revision: u64::try_from(row.int("revision")?).map_err(|e| corrupt("revision", e))?,
        governance: Governance {
            tenant: row.text("tenant")?,
            owner: row.text("owner")?,
            expires_at: row.opt_int("expires_at")?,
            review_every: row
                .opt_int("review_every")?
                .map(|v| u64::try_from(v).map(Duration::from_secs))
                .transpose()
                .map_err(|e| corrupt("review_every", e))?,
            certified_at: row.opt_int("certified_at")?,
            disabled: match (
                row.opt_int("disabled_at")?,
                row.opt_text("disabled_reason")?,
            ) {
                (Some(at), Some(reason)) => Some(Disabled { at, reason }),
                (None, None) => None,
                _ => {
                    return Err(corrupt(
                        "disabled_at",
                        "does not agree with disabled_reason",
                    ));
                }
            },
            template_id: row
                .opt_text("template_id")?
                .map(TemplateId::parse)
                .transpose()
                .map_err(|e| corrupt("template_id", e))?,
        },
        node_selectors,
    })
}

/// A template's values, owned, in [`INSERT_TEMPLATE`] order.
pub(super) struct TemplateRow {
    selectors: String,
    identity: String,
}

impl TemplateRow {
    pub(super) fn new(t: &TemplateRecord) -> Self {
        let key = serde_json::json!([t.template.as_str(), t.parent_id.as_str()]);
        Self {
            selectors: selectors_json(&t.selectors),
            identity: hex::encode(Sha256::digest(key.to_string().as_bytes())),
        }
    }

    pub(super) fn params<'a>(&'a self, t: &'a TemplateRecord) -> [Param<'a>; 11] {
        [
            Param::Text(t.id.as_str()),
            Param::Text(t.template.as_str()),
            Param::Text(t.parent_id.as_str()),
            Param::Text(&self.selectors),
            Param::Text(&self.identity),
            Param::Int(secs(t.x509_svid_ttl)),
            Param::Int(secs(t.jwt_svid_ttl)),
            Param::Text(&t.tenant),
            Param::Text(&t.owner),
            Param::Int(secs(t.grace)),
            Param::Int(t.created_at),
        ]
    }
}

pub(super) fn template(row: &impl Cells) -> Result<TemplateRecord, DatastoreError> {
    let selectors = json_strings(row, "selectors")?
        .iter()
        .map(|s| Selector::from_str(s))
        .collect::<Result<SelectorSet, _>>()
        .map_err(|e| corrupt("selectors", e))?;
    Ok(TemplateRecord {
        id: id::<TemplateId>(row, "id")?,
        template: SpiffeIdTemplate::new(&row.text("spiffe_id_template")?)
            .map_err(|e| corrupt("spiffe_id_template", e))?,
        parent_id: spiffe_id(row, "parent_id")?,
        selectors,
        x509_svid_ttl: duration(row, "x509_svid_ttl")?,
        jwt_svid_ttl: duration(row, "jwt_svid_ttl")?,
        tenant: row.text("tenant")?,
        owner: row.text("owner")?,
        grace: duration(row, "grace_seconds")?,
        created_at: row.int("created_at")?,
    })
}

/// An agent's node selectors as stored: a JSON array of the sorted strings.
pub(super) fn agent_selectors_json(a: &AgentRecord) -> String {
    let list: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
    to_json(&list)
}

/// [`ATTEST_AGENT`]'s parameters; `selectors` from [`agent_selectors_json`].
pub(super) fn agent_params<'a>(a: &'a AgentRecord, selectors: &'a str) -> [Param<'a>; 8] {
    [
        Param::Text(a.spiffe_id.as_str()),
        Param::Text(&a.serial),
        Param::OptText(a.previous_serial.as_deref()),
        Param::Int(a.expires_at),
        Param::Int(a.attested_at),
        Param::Flag(a.banned),
        Param::Text(&a.attestation_type),
        Param::Text(selectors),
    ]
}

pub(super) fn agent(row: &impl Cells) -> Result<AgentRecord, DatastoreError> {
    Ok(AgentRecord {
        spiffe_id: spiffe_id(row, "spiffe_id")?,
        serial: row.text("serial")?,
        previous_serial: row.opt_text("previous_serial")?,
        expires_at: row.int("expires_at")?,
        attested_at: row.int("attested_at")?,
        banned: row.flag("banned")?,
        attestation_type: row.text("attestation_type")?,
        selectors: json_strings(row, "selectors")?
            .iter()
            .map(|s| NodeSelector::from_str(s))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| corrupt("selectors", e))?,
    })
}

pub(super) fn consumed_token(row: &impl Cells) -> Result<ConsumedToken, DatastoreError> {
    Ok(ConsumedToken {
        spiffe_id: spiffe_id(row, "spiffe_id")?,
        expires_at: row.int("expires_at")?,
    })
}

/// A task's values, owned, in [`INSERT_TASK`] / [`update_task_sql`] order.
pub(super) struct TaskRow {
    scopes: String,
    audiences: String,
    decision: String,
    bind_agent: Option<String>,
}

impl TaskRow {
    pub(super) fn new(t: &TaskRecord) -> Result<Self, DatastoreError> {
        Ok(Self {
            scopes: to_json(&t.scopes),
            audiences: to_json(&t.audiences),
            decision: serde_json::to_string(&t.decision).map_err(|e| corrupt("decision", e))?,
            bind_agent: t.binding.holder().map(|h| h.agent.to_string()),
        })
    }

    pub(super) fn params<'a>(&'a self, t: &'a TaskRecord) -> [Param<'a>; 26] {
        let holder = t.binding.holder().map(|h| h.process);
        [
            Param::Text(t.id.as_str()),
            Param::Text(t.state.as_str()),
            Param::Text(t.entry_id.as_str()),
            Param::Text(t.spiffe_id.as_str()),
            Param::Text(t.parent_id.as_str()),
            Param::Flag(t.provisioned),
            Param::Text(&t.requester),
            Param::OptText(t.approver.as_deref()),
            Param::Text(&t.reason),
            Param::Text(&t.ticket),
            Param::Text(&self.scopes),
            Param::Int(t.created_at),
            Param::OptInt(t.activated_at),
            Param::Int(t.deadline),
            Param::OptInt(t.end.as_ref().map(|e| e.at)),
            Param::OptText(t.end.as_ref().map(|e| e.reason.as_str())),
            Param::Text(&self.decision),
            Param::OptInt(t.requester_unix.as_ref().map(|u| i64::from(u.uid))),
            Param::OptText(t.requester_unix.as_ref().map(|u| u.name.as_str())),
            Param::OptInt(t.approver_uid.map(i64::from)),
            Param::Text(&t.tenant),
            Param::Text(&self.audiences),
            Param::Text(t.binding.kind().as_str()),
            Param::OptInt(holder.map(|p| i64::from(p.pid))),
            // Start times are clock ticks since boot: far below i64::MAX (at 100 Hz, 2.9
            // billion years); a value that does not fit would be refused when read back.
            Param::OptInt(holder.map(|p| i64::try_from(p.start_time).unwrap_or(i64::MAX))),
            Param::OptText(self.bind_agent.as_deref()),
        ]
    }

    /// [`Self::params`] and the columns only an insert writes ([`INSERT_TASK`] order).
    pub(super) fn insert_params<'a>(&'a self, t: &'a TaskRecord) -> Vec<Param<'a>> {
        let ack = t.acknowledgement.as_ref();
        let mut params = self.params(t).to_vec();
        params.extend([
            Param::Flag(t.break_glass),
            Param::OptText(ack.map(|a| a.by.as_str())),
            Param::OptInt(ack.map(|a| i64::from(a.uid))),
            Param::OptInt(ack.map(|a| a.at)),
            Param::OptText(ack.map(|a| a.note.as_str())),
            Param::OptInt(t.status.map(|s| s.list)),
            Param::OptInt(t.status.map(|s| i64::from(s.idx))),
        ]);
        params
    }
}

/// A break-glass task's acknowledgement (schema version 9 on): all four columns or none,
/// and only on a break-glass task.
fn acknowledgement(
    row: &impl Cells,
    break_glass: bool,
) -> Result<Option<Acknowledgement>, DatastoreError> {
    match (
        row.opt_text("acknowledged_by")?,
        uid(row, "acknowledged_uid")?,
        row.opt_int("acknowledged_at")?,
        row.opt_text("acknowledgement_note")?,
    ) {
        (None, None, None, None) => Ok(None),
        (Some(by), Some(uid), Some(at), Some(note)) if break_glass => {
            Ok(Some(Acknowledgement { by, uid, at, note }))
        }
        _ => Err(corrupt(
            "acknowledged_at",
            "an acknowledgement is complete and only on a break-glass task",
        )),
    }
}

/// A uid column: absent, or a value a `u32` holds.
fn uid(row: &impl Cells, column: &str) -> Result<Option<u32>, DatastoreError> {
    row.opt_int(column)?
        .map(|v| u32::try_from(v).map_err(|e| corrupt(column, e)))
        .transpose()
}

pub(super) fn task(row: &impl Cells) -> Result<TaskRecord, DatastoreError> {
    let state: TaskState = row
        .text("state")?
        .parse()
        .map_err(|e| corrupt("state", e))?;
    // An open task has no end; a final one always has one (schema version 3 on).
    let end = match (row.opt_int("ended_at")?, row.opt_text("end_reason")?) {
        (Some(at), Some(reason)) if !state.is_open() => Some(TaskEnd { at, reason }),
        (None, None) if state.is_open() => None,
        _ => {
            return Err(corrupt(
                "ended_at",
                format!("does not agree with state {state}"),
            ));
        }
    };
    // Both or neither (schema version 4 on; NULL on tasks recorded before).
    let requester_unix = match (uid(row, "requester_uid")?, row.opt_text("requester_user")?) {
        (Some(uid), Some(name)) => Some(UnixUser { uid, name }),
        (None, None) => None,
        _ => {
            return Err(corrupt(
                "requester_uid",
                "does not agree with requester_user",
            ));
        }
    };
    let break_glass = row.flag("break_glass")?;
    Ok(TaskRecord {
        id: id::<TaskId>(row, "id")?,
        state,
        entry_id: id::<EntryId>(row, "entry_id")?,
        spiffe_id: spiffe_id(row, "spiffe_id")?,
        parent_id: spiffe_id(row, "parent_id")?,
        provisioned: row.flag("provisioned")?,
        requester: row.text("requester")?,
        approver: row.opt_text("approver")?,
        reason: row.text("reason")?,
        ticket: row.text("ticket")?,
        scopes: json_strings(row, "scopes")?,
        audiences: json_strings(row, "audiences")?,
        created_at: row.int("created_at")?,
        activated_at: row.opt_int("activated_at")?,
        deadline: row.int("deadline")?,
        end,
        decision: serde_json::from_str(&row.text("decision")?)
            .map_err(|e| corrupt("decision", e))?,
        requester_unix,
        approver_uid: uid(row, "approver_uid")?,
        tenant: row.text("tenant")?,
        binding: binding(row)?,
        break_glass,
        acknowledgement: acknowledgement(row, break_glass)?,
        status: status_entry(row)?,
    })
}

/// A task's status list entry (schema version 10 on): list and index both set, a list
/// number from 1 and an index within a list, or neither (tasks recorded before).
fn status_entry(row: &impl Cells) -> Result<Option<StatusEntry>, DatastoreError> {
    match (row.opt_int("status_list")?, row.opt_int("status_idx")?) {
        (None, None) => Ok(None),
        (Some(list), Some(idx)) if list >= 1 => u32::try_from(idx)
            .ok()
            .filter(|i| *i < STATUS_LIST_SIZE)
            .map(|idx| Some(StatusEntry { list, idx }))
            .ok_or_else(|| corrupt("status_idx", format!("{idx} is not within a list"))),
        _ => Err(corrupt(
            "status_list",
            "a status list entry has a list from 1 and an index, or neither",
        )),
    }
}

/// A task's binding (schema version 8 on): `bind_kind`, and for a process or tree binding
/// the holder's pid, start time and agent, all present; for selectors, none.
fn binding(row: &impl Cells) -> Result<TaskBinding, DatastoreError> {
    let kind: BindKind = row
        .text("bind_kind")?
        .parse()
        .map_err(|e| corrupt("bind_kind", e))?;
    let pid = row
        .opt_int("bind_pid")?
        .map(|v| u32::try_from(v).map_err(|e| corrupt("bind_pid", e)))
        .transpose()?;
    let start_time = row
        .opt_int("bind_start_time")?
        .map(|v| u64::try_from(v).map_err(|e| corrupt("bind_start_time", e)))
        .transpose()?;
    let agent = row.opt_text("bind_agent")?;
    let holder = match (pid, start_time, agent) {
        (Some(pid), Some(start_time), Some(agent)) if kind != BindKind::Selectors => Holder {
            process: ProcessInstance { pid, start_time },
            agent: SpiffeId::new(&agent).map_err(|e| corrupt("bind_agent", e))?,
        },
        (None, None, None) if kind == BindKind::Selectors => return Ok(TaskBinding::Selectors),
        _ => {
            return Err(corrupt(
                "bind_kind",
                format!("does not agree with bind_pid, bind_start_time and bind_agent ({kind})"),
            ));
        }
    };
    // Selectors returned above.
    Ok(if kind == BindKind::Process {
        TaskBinding::Process(holder)
    } else {
        TaskBinding::Tree(holder)
    })
}

pub(super) fn task_svid_params(s: &TaskSvid) -> [Param<'_>; 4] {
    [
        Param::Text(&s.serial),
        Param::Text(s.task_id.as_str()),
        Param::Text(&s.issuer_serial),
        Param::Int(s.not_after),
    ]
}

pub(super) fn task_svid(row: &impl Cells) -> Result<TaskSvid, DatastoreError> {
    Ok(TaskSvid {
        task_id: id::<TaskId>(row, "task_id")?,
        serial: row.text("serial")?,
        issuer_serial: row.text("issuer_serial")?,
        not_after: row.int("not_after")?,
    })
}

/// A usage report's values in [`UPSERT_USAGE`] order.
pub(super) fn usage_params(u: &UsageReport) -> [Param<'_>; 5] {
    [
        Param::Text(u.entry_id.as_str()),
        Param::Text(u.agent_id.as_str()),
        Param::Int(count_param(u.deliveries)),
        Param::Int(count_param(u.validations)),
        Param::Int(u.last_used_at),
    ]
}

/// A count as stored: saturating at the largest value a column holds.
fn count_param(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count(row: &impl Cells, column: &str) -> Result<u64, DatastoreError> {
    u64::try_from(row.int(column)?).map_err(|e| corrupt(column, e))
}

/// One entry's usage on one agent (a row of `entry_usage`).
pub(super) fn usage(row: &impl Cells) -> Result<EntryUsage, DatastoreError> {
    Ok(EntryUsage {
        entry_id: id::<EntryId>(row, "entry_id")?,
        issued: count(row, "issued")?,
        last_issued_at: row.opt_int("last_issued_at")?,
        deliveries: count(row, "deliveries")?,
        validations: count(row, "validations")?,
        last_used_at: row.opt_int("last_used_at")?,
    })
}

/// Rows ordered by entry, summed per entry: counts added (saturating), latest times.
pub(super) fn sum_usage(rows: Vec<EntryUsage>) -> Vec<EntryUsage> {
    let mut out: Vec<EntryUsage> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(last) if last.entry_id == r.entry_id => {
                last.issued = last.issued.saturating_add(r.issued);
                last.deliveries = last.deliveries.saturating_add(r.deliveries);
                last.validations = last.validations.saturating_add(r.validations);
                last.last_issued_at = last.last_issued_at.max(r.last_issued_at);
                last.last_used_at = last.last_used_at.max(r.last_used_at);
            }
            _ => out.push(r),
        }
    }
    out
}

/// An audit record's values in [`INSERT_AUDIT_HEAD`] order (`detail`: the record's detail
/// serialised compactly, as [`crate::audit::chain_owned`] gives it).
pub(super) fn audit_params<'a>(r: &'a AuditRecord, detail: &'a str) -> [Param<'a>; 10] {
    [
        Param::Int(r.seq),
        Param::Int(r.at_ms),
        Param::Text(&r.event.kind),
        Param::OptText(r.event.task_id.as_deref()),
        Param::Text(&r.event.subject),
        Param::Text(detail),
        Param::Text(&r.prev_hash),
        Param::Text(&r.hash),
        Param::OptText(r.event.actor.as_deref()),
        Param::OptText(r.event.tenant.as_deref()),
    ]
}

pub(super) fn audit(row: &impl Cells) -> Result<AuditRecord, DatastoreError> {
    let detail = row.text("detail")?;
    Ok(AuditRecord {
        seq: row.int("seq")?,
        at_ms: row.int("at_ms")?,
        event: AuditEvent {
            kind: row.text("kind")?,
            task_id: row.opt_text("task_id")?,
            subject: row.text("subject")?,
            // A record whose detail is no longer JSON was tampered with: keep the raw text
            // so verification reports it instead of the listing failing.
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            actor: row.opt_text("actor")?,
            tenant: row.opt_text("tenant")?,
        },
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
    })
}

/// The chain head: `(seq, hash)` of the last record.
pub(super) fn audit_head(row: &impl Cells) -> Result<(i64, String), DatastoreError> {
    Ok((row.int("seq")?, row.text("hash")?))
}

/// A receiver's SET push cursor, created free (no holder, lease over) if missing.
pub(super) const INSERT_SET_CURSOR: &str = "INSERT INTO set_push_cursors (receiver, seq,
        holder, lease_until_ms)
    VALUES ($1, $2, '', 0)
    ON CONFLICT (receiver) DO NOTHING";
/// Takes or renews the lease of `$2` until `$4` unless another holder's runs past `$3`.
pub(super) const CLAIM_SET_CURSOR: &str = "UPDATE set_push_cursors
    SET holder = $2, lease_until_ms = $4
    WHERE receiver = $1 AND (holder = $2 OR lease_until_ms <= $3)
    RETURNING seq";
/// Moves the cursor from `$3` to `$4` while `$2` holds it.
pub(super) const ADVANCE_SET_CURSOR: &str = "UPDATE set_push_cursors SET seq = $4
    WHERE receiver = $1 AND holder = $2 AND seq = $3";
/// Ends the lease of `$2`.
pub(super) const RELEASE_SET_CURSOR: &str = "UPDATE set_push_cursors SET lease_until_ms = 0
    WHERE receiver = $1 AND holder = $2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_statements_number_or_order_their_placeholders() {
        assert_eq!(
            values_rows(Placeholders::Numbered, "INSERT INTO t VALUES ", 2, 3, " X"),
            "INSERT INTO t VALUES ($1, $2), ($3, $4), ($5, $6) X"
        );
        assert_eq!(
            values_rows(Placeholders::Anonymous, "INSERT INTO t VALUES ", 2, 3, ""),
            "INSERT INTO t VALUES (?, ?), (?, ?), (?, ?)"
        );
        assert_eq!(
            entries_by_id_sql(Placeholders::Numbered, 3),
            "SELECT * FROM entries WHERE id IN ($1, $2, $3)"
        );
        assert_eq!(
            entries_by_id_sql(Placeholders::Anonymous, 1),
            "SELECT * FROM entries WHERE id IN (?)"
        );
        assert!(usage_of_sql(Placeholders::Anonymous, 2).contains("IN (?, ?) ORDER BY"));
        assert!(usage_of_sql(Placeholders::Numbered, 2).contains("IN ($1, $2) ORDER BY"));
    }
}
