//! How tenants and their domains are stored (schema version 5): statements and row
//! mapping, as `records` does for the older tables.

use std::time::Duration;

use super::io::{Cells, Param};
use crate::datastore::{DatastoreError, DomainRecord, TenantRecord};

pub(super) const INSERT_TENANT: &str = "INSERT INTO tenants (name, path_prefixes, admin_users,
        admin_groups, max_entries, max_open_tasks, review_every, created_at, revision, policy,
        max_parallel_tasks_per_entry)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
/// Compare-and-set on the revision: `$12` is the revision the caller read.
pub(super) const UPDATE_TENANT: &str = "UPDATE tenants SET path_prefixes = $2, admin_users = $3,
        admin_groups = $4, max_entries = $5, max_open_tasks = $6, review_every = $7,
        created_at = $8, revision = $9, policy = $10, max_parallel_tasks_per_entry = $11
    WHERE name = $1 AND revision = $12";
pub(super) const GET_TENANT: &str = "SELECT * FROM tenants WHERE name = $1";
pub(super) const LIST_TENANTS: &str = "SELECT * FROM tenants ORDER BY name";
pub(super) const DELETE_TENANT: &str = "DELETE FROM tenants WHERE name = $1 RETURNING *";
pub(super) const COUNT_ENTRIES: &str = "SELECT COUNT(*) AS n FROM entries WHERE tenant = $1";
pub(super) const COUNT_OPEN_TASKS: &str = "SELECT COUNT(*) AS n FROM tasks
    WHERE tenant = $1 AND state IN ('pending_approval', 'active')";
pub(super) const COUNT_DOMAINS: &str = "SELECT COUNT(*) AS n FROM tenant_domains WHERE tenant = $1";

/// Inserts a domain, or replaces it if the same tenant claimed it; another tenant's claim
/// is left alone (no row changes: the caller reports a conflict).
pub(super) const PUT_DOMAIN: &str = "INSERT INTO tenant_domains (domain, tenant, challenge,
        added_at, verified_at, checked_at, failing_since, last_error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (domain) DO UPDATE SET challenge = excluded.challenge,
        added_at = excluded.added_at, verified_at = excluded.verified_at,
        checked_at = excluded.checked_at, failing_since = excluded.failing_since,
        last_error = excluded.last_error
    WHERE tenant_domains.tenant = excluded.tenant";
/// A check's outcome, if the claim is the same and no other check was recorded since
/// `$9` ([`domain_params`] order, then the previous `checked_at`).
pub(super) const RECORD_DOMAIN_CHECK: &str = "UPDATE tenant_domains SET verified_at = $5,
        checked_at = $6, failing_since = $7, last_error = $8
    WHERE domain = $1 AND tenant = $2 AND challenge = $3 AND added_at = $4
        AND checked_at IS NOT DISTINCT FROM $9";
pub(super) const GET_DOMAIN: &str = "SELECT * FROM tenant_domains WHERE domain = $1";
pub(super) const LIST_DOMAINS: &str =
    "SELECT * FROM tenant_domains WHERE ($1 IS NULL OR tenant = $1) ORDER BY domain";
pub(super) const DELETE_DOMAIN: &str = "DELETE FROM tenant_domains WHERE domain = $1 RETURNING *";

fn corrupt(what: &str, e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Corrupt(format!("{what}: {e}"))
}

fn json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

fn strings(row: &impl Cells, column: &str) -> Result<Vec<String>, DatastoreError> {
    serde_json::from_str(&row.text(column)?).map_err(|e| corrupt(column, e))
}

/// A tenant's values, owned, in [`INSERT_TENANT`] / [`UPDATE_TENANT`] order.
pub(super) struct TenantRow {
    prefixes: String,
    users: String,
    groups: String,
    revision: i64,
}

impl TenantRow {
    pub(super) fn new(t: &TenantRecord) -> Result<Self, DatastoreError> {
        Ok(Self {
            prefixes: json(&t.path_prefixes),
            users: json(&t.admin_users),
            groups: json(&t.admin_groups),
            revision: i64::try_from(t.revision).map_err(|e| corrupt("revision", e))?,
        })
    }

    pub(super) fn params<'a>(&'a self, t: &'a TenantRecord) -> [Param<'a>; 11] {
        [
            Param::Text(&t.name),
            Param::Text(&self.prefixes),
            Param::Text(&self.users),
            Param::Text(&self.groups),
            Param::OptInt(t.max_entries),
            Param::OptInt(t.max_open_tasks),
            Param::OptInt(
                t.review_every
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            ),
            Param::Int(t.created_at),
            Param::Int(self.revision),
            Param::OptText(t.policy.as_deref()),
            Param::OptInt(t.max_parallel_tasks_per_entry),
        ]
    }

    /// The revision the update expects to replace.
    pub(super) fn previous_revision(&self) -> i64 {
        self.revision - 1
    }
}

pub(super) fn tenant(row: &impl Cells) -> Result<TenantRecord, DatastoreError> {
    Ok(TenantRecord {
        name: row.text("name")?,
        path_prefixes: strings(row, "path_prefixes")?,
        admin_users: strings(row, "admin_users")?,
        admin_groups: strings(row, "admin_groups")?,
        max_entries: row.opt_int("max_entries")?,
        max_open_tasks: row.opt_int("max_open_tasks")?,
        max_parallel_tasks_per_entry: row.opt_int("max_parallel_tasks_per_entry")?,
        review_every: row
            .opt_int("review_every")?
            .map(|v| u64::try_from(v).map(Duration::from_secs))
            .transpose()
            .map_err(|e| corrupt("review_every", e))?,
        created_at: row.int("created_at")?,
        revision: u64::try_from(row.int("revision")?).map_err(|e| corrupt("revision", e))?,
        policy: row.opt_text("policy")?,
    })
}

pub(super) fn domain_params(d: &DomainRecord) -> [Param<'_>; 8] {
    [
        Param::Text(&d.domain),
        Param::Text(&d.tenant),
        Param::Text(&d.challenge),
        Param::Int(d.added_at),
        Param::OptInt(d.verified_at),
        Param::OptInt(d.checked_at),
        Param::OptInt(d.failing_since),
        Param::OptText(d.last_error.as_deref()),
    ]
}

pub(super) fn domain(row: &impl Cells) -> Result<DomainRecord, DatastoreError> {
    Ok(DomainRecord {
        domain: row.text("domain")?,
        tenant: row.text("tenant")?,
        challenge: row.text("challenge")?,
        added_at: row.int("added_at")?,
        verified_at: row.opt_int("verified_at")?,
        checked_at: row.opt_int("checked_at")?,
        failing_since: row.opt_int("failing_since")?,
        last_error: row.opt_text("last_error")?,
    })
}

pub(super) fn count(row: &impl Cells) -> Result<i64, DatastoreError> {
    row.int("n")
}
