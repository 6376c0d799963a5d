//! Versioned schema migrations, run when a datastore is opened.
//!
//! The schema has a version, recorded in the table `tessera_schema` of the database
//! itself (one row per version: description, SHA-256 of the script, when and how it was
//! installed). [`MIGRATIONS`] lists every version this binary knows; version N is one
//! logical schema on both backends, each with its own script under
//! `server/migrations/{sqlite,postgres}/`. Opening a datastore:
//!
//! 1. takes the dialect's migration lock in a transaction (SQLite: `BEGIN IMMEDIATE`;
//!    PostgreSQL: an advisory lock, so servers starting together on one database do not
//!    race) and reads the recorded versions;
//! 2. refuses a database recorded at a version newer than the binary knows, naming both
//!    ([`MigrateError::TooNew`]: the server exits, telling the operator to upgrade), and
//!    one whose recorded scripts differ from the binary's ([`MigrateError::Changed`]);
//! 3. records a database written before versioning (its tables present, no version) as
//!    version 1 without running any DDL: version 1 is exactly the schema those releases
//!    created;
//! 4. applies the next version's script, then any work SQL cannot do (e.g. hashing in
//!    Rust), records it and commits; each version in a transaction of its own, under the
//!    lock, and again from step 1 until the schema is current.
//!
//! So a data directory or database from an older release is upgraded in place, a fresh
//! one goes through the same scripts (and ends identical), and opening again applies
//! nothing, nor needs the right to create tables: on PostgreSQL the owner may migrate
//! and the servers run as a user with row privileges only. A released script must never
//! change: add a new version instead.

use sha2::{Digest as _, Sha256};
use sqlx::Pool;

use super::DatastoreError;
use super::sql::{Cells as _, Dialect, Param, refresh_entry_identities};

/// One schema version.
#[derive(Debug)]
pub struct Migration {
    /// From 1, without gaps.
    pub(super) version: i64,
    /// What it changes, recorded with it.
    pub(super) description: &'static str,
    /// The SQLite script.
    pub(super) sqlite: &'static str,
    /// The PostgreSQL script.
    pub(super) postgres: &'static str,
    /// Work the scripts cannot do, run after them in the same transaction.
    then: Option<Fixup>,
}

/// Work of a migration written in Rust (once, for both backends).
#[derive(Debug, Clone, Copy)]
enum Fixup {
    /// Compute `entries.identity` from each entry (SQLite has no SHA-256).
    EntryIdentities,
}

/// Every schema version this binary knows, oldest first.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "baseline: the schema of the releases before versioned migrations",
        sqlite: include_str!("../../migrations/sqlite/0001_baseline.sql"),
        postgres: include_str!("../../migrations/postgres/0001_baseline.sql"),
        then: None,
    },
    Migration {
        version: 2,
        description: "one SQL layer: entries unique by identity hash on SQLite too, \
                      byte-order text keys on PostgreSQL",
        sqlite: include_str!("../../migrations/sqlite/0002_one_sql_layer.sql"),
        postgres: include_str!("../../migrations/postgres/0002_one_sql_layer.sql"),
        then: Some(Fixup::EntryIdentities),
    },
    Migration {
        version: 3,
        description: "no placeholders: NULL for a task's unset approver, activation and \
                      end, and an agent's previous serial before its first renewal",
        sqlite: include_str!("../../migrations/sqlite/0003_no_sentinels.sql"),
        postgres: include_str!("../../migrations/postgres/0003_no_sentinels.sql"),
        then: None,
    },
    Migration {
        version: 4,
        description: "a task's requester and approver Unix users (uid, and the requester's \
                      name), so one user cannot request and approve the same task",
        sqlite: include_str!("../../migrations/sqlite/0004_task_unix_users.sql"),
        postgres: include_str!("../../migrations/postgres/0004_task_unix_users.sql"),
        then: None,
    },
    Migration {
        version: 5,
        description: "organisation controls: tenants (path prefixes, verified domains, \
                      admins, quotas); an entry's tenant, owner, expiry, review period and \
                      disabled state; a task's tenant; an audit record's actor and tenant",
        sqlite: include_str!("../../migrations/sqlite/0005_tenants.sql"),
        postgres: include_str!("../../migrations/postgres/0005_tenants.sql"),
        then: None,
    },
    Migration {
        version: 6,
        description: "entry usage: SVIDs issued per entry and agent, and the deliveries \
                      and validations agents report, with when each last happened",
        sqlite: include_str!("../../migrations/sqlite/0006_entry_usage.sql"),
        postgres: include_str!("../../migrations/postgres/0006_entry_usage.sql"),
        then: None,
    },
    Migration {
        version: 7,
        description: "task scope: the JWT audiences a task declares (none on earlier \
                      tasks, which then get no JWT-SVIDs)",
        sqlite: include_str!("../../migrations/sqlite/0007_task_audiences.sql"),
        postgres: include_str!("../../migrations/postgres/0007_task_audiences.sql"),
        then: None,
    },
    Migration {
        version: 8,
        description: "task binding: the process (or process tree) a task's credentials \
                      are bound to on its node (earlier tasks: bound by selectors)",
        sqlite: include_str!("../../migrations/sqlite/0008_task_binding.sql"),
        postgres: include_str!("../../migrations/postgres/0008_task_binding.sql"),
        then: None,
    },
    Migration {
        version: 9,
        description: "break-glass tasks: whether a task skipped approval by break-glass, \
                      and who acknowledged it after the fact, when and why (earlier \
                      tasks: not break-glass)",
        sqlite: include_str!("../../migrations/sqlite/0009_break_glass.sql"),
        postgres: include_str!("../../migrations/postgres/0009_break_glass.sql"),
        then: None,
    },
    Migration {
        version: 10,
        description: "a tenant's limit on tasks open at once on one of its entries \
                      (earlier tenants: none of their own)",
        sqlite: include_str!("../../migrations/sqlite/0010_tenant_parallel_limit.sql"),
        postgres: include_str!("../../migrations/postgres/0010_tenant_parallel_limit.sql"),
        then: None,
    },
    Migration {
        version: 11,
        description: "shared trust bundle: the public CA certificates and JWT keys every \
                      server publishes, whose union each server serves as the bundle",
        sqlite: include_str!("../../migrations/sqlite/0011_shared_bundle.sql"),
        postgres: include_str!("../../migrations/postgres/0011_shared_bundle.sql"),
        then: None,
    },
    Migration {
        version: 12,
        description: "change feed: every change agents must hear about, numbered in \
                      commit order with the server that made it (filled by triggers and \
                      announced with NOTIFY on PostgreSQL)",
        sqlite: include_str!("../../migrations/sqlite/0012_change_feed.sql"),
        postgres: include_str!("../../migrations/postgres/0012_change_feed.sql"),
        then: None,
    },
    Migration {
        version: 13,
        description: "shared token status lists: the lists, and each task's random entry \
                      in one (earlier tasks: none, served a list of their own)",
        sqlite: include_str!("../../migrations/sqlite/0013_status_lists.sql"),
        postgres: include_str!("../../migrations/postgres/0013_status_lists.sql"),
        then: None,
    },
    Migration {
        version: 14,
        description: "SET push cursors shared by the servers: one per receiver, moved only \
                      by the server holding its lease",
        sqlite: include_str!("../../migrations/sqlite/0014_set_push_cursors.sql"),
        postgres: include_str!("../../migrations/postgres/0014_set_push_cursors.sql"),
        then: None,
    },
    Migration {
        version: 15,
        description: "identity templates: entries built from attested selectors at a \
                      workload's first call, their instances and when each was last seen",
        sqlite: include_str!("../../migrations/sqlite/0015_entry_templates.sql"),
        postgres: include_str!("../../migrations/postgres/0015_entry_templates.sql"),
        then: None,
    },
    Migration {
        version: 16,
        description: "node groups: an agent's attested node selectors, and node entries \
                      (an entry whose SPIFFE ID names the agents having its node selectors)",
        sqlite: include_str!("../../migrations/sqlite/0016_node_groups.sql"),
        postgres: include_str!("../../migrations/postgres/0016_node_groups.sql"),
        then: None,
    },
];

/// The tables version 1 created: a database holding them but no version table was
/// written by a release before versioned migrations.
pub(super) const BASELINE_TABLES: &[&str] = &[
    "entries",
    "join_tokens",
    "audit_log",
    "tasks",
    "task_svids",
    "agents",
];

/// The version table (the same text for both backends).
const VERSION_TABLE: &str = "CREATE TABLE tessera_schema (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    installed_at BIGINT NOT NULL,
    how TEXT NOT NULL
)";
const RECORDED: &str = "SELECT version, checksum FROM tessera_schema ORDER BY version";
const RECORD: &str = "INSERT INTO tessera_schema (version, description, checksum, installed_at,
        how)
    VALUES ($1, $2, $3, $4, $5)";

/// The newest version this binary knows.
pub(super) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Why a database cannot be brought to the current schema.
#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    /// A newer release upgraded the database; this binary does not know its schema.
    #[error(
        "the datastore's schema is version {found}, newer than this tessera-server knows \
         (up to version {known}): a newer release has upgraded it; upgrade tessera-server \
         to that release or later (downgrades are not supported)"
    )]
    TooNew {
        /// The newest version recorded in the database.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// The database was migrated with a different script than this binary's.
    #[error(
        "schema version {version} was installed by a different script than this \
         tessera-server's (checksum {recorded}, expected {expected}): the database was \
         migrated by another build"
    )]
    Changed {
        /// The version.
        version: i64,
        /// Checksum recorded in the database.
        recorded: String,
        /// Checksum of this binary's script.
        expected: String,
    },
    /// The version table does not hold versions 1 to N.
    #[error("the recorded schema versions {found:?} do not run from 1 without gaps")]
    Gaps {
        /// The versions recorded.
        found: Vec<i64>,
    },
    /// Some of the baseline tables exist, not all.
    #[error(
        "the database holds some of the datastore's tables but not {missing}: it is not a \
         tessera-server datastore, or an incomplete one"
    )]
    Partial {
        /// The tables missing, comma-separated.
        missing: String,
    },
    /// A migration's script or work failed; it was rolled back.
    #[error("migration to schema version {version} ({description}) failed: {source}")]
    Failed {
        /// The version.
        version: i64,
        /// Its description.
        description: &'static str,
        /// What failed.
        source: DatastoreError,
    },
    /// The database failed outside a migration's own work (connection, lock, version
    /// table).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A row of the version table cannot be read.
    #[error("cannot read the version table: {0}")]
    Corrupt(DatastoreError),
}

/// What [`migrate`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Report {
    /// A database written before versioning was recorded as version 1.
    pub(super) baseline: bool,
    /// The versions whose scripts ran, in order.
    pub(super) applied: Vec<i64>,
}

fn checksum(script: &str) -> String {
    hex::encode(Sha256::digest(script.as_bytes()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Brings the database of `pool` to the newest schema version (see the module docs).
pub(super) async fn migrate<D: Dialect>(pool: &Pool<D>) -> Result<Report, MigrateError> {
    let mut report = Report::default();
    loop {
        let mut tx = D::begin_migration(pool).await?;
        // Only when missing: a database user who may not create tables can run on a
        // database someone else migrated.
        if !has_table::<D>(&mut tx, "tessera_schema").await? {
            D::execute(&mut tx, VERSION_TABLE, &[]).await?;
        }
        let current = current_version::<D>(&mut tx).await?;
        let baseline = MIGRATIONS.first().filter(|_| current == 0);
        let (m, how) = match baseline {
            // The tables are those of version 1: record it, run nothing.
            Some(m) if written_before_versioning::<D>(&mut tx).await? => (m, "baseline"),
            _ => {
                let Some(m) = MIGRATIONS.iter().find(|m| m.version > current) else {
                    tx.commit().await?;
                    return Ok(report);
                };
                apply::<D>(&mut tx, m).await?;
                (m, "applied")
            }
        };
        record::<D>(&mut tx, m, how).await?;
        tx.commit().await?;
        if how == "baseline" {
            report.baseline = true;
        } else {
            report.applied.push(m.version);
        }
        tracing::info!(
            version = m.version,
            description = m.description,
            how,
            "datastore schema migrated"
        );
    }
}

/// The recorded version (0 if none), after checking the records against [`MIGRATIONS`].
async fn current_version<D: Dialect>(conn: &mut D::Connection) -> Result<i64, MigrateError> {
    let rows = D::fetch_all(conn, RECORDED, &[]).await?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        let version = row.int("version").map_err(MigrateError::Corrupt)?;
        let sum = row.text("checksum").map_err(MigrateError::Corrupt)?;
        recorded.push((version, sum));
    }
    let found = recorded.last().map_or(0, |(v, _)| *v);
    if found > latest() {
        return Err(MigrateError::TooNew {
            found,
            known: latest(),
        });
    }
    if recorded.iter().zip(1..).any(|((v, _), want)| *v != want) {
        return Err(MigrateError::Gaps {
            found: recorded.into_iter().map(|(v, _)| v).collect(),
        });
    }
    for ((version, sum), m) in recorded.into_iter().zip(MIGRATIONS) {
        let expected = checksum(D::script(m));
        if sum != expected {
            return Err(MigrateError::Changed {
                version,
                recorded: sum,
                expected,
            });
        }
    }
    Ok(found)
}

/// Whether the database holds the tables of version 1 (then it was written by a release
/// before versioning); `false` if it holds none of them.
async fn written_before_versioning<D: Dialect>(
    conn: &mut D::Connection,
) -> Result<bool, MigrateError> {
    let mut missing = Vec::new();
    for table in BASELINE_TABLES {
        if !has_table::<D>(conn, table).await? {
            missing.push(*table);
        }
    }
    match missing.len() {
        0 => Ok(true),
        n if n == BASELINE_TABLES.len() => Ok(false),
        _ => Err(MigrateError::Partial {
            missing: missing.join(", "),
        }),
    }
}

/// Whether the table exists where the datastore's unqualified names resolve.
async fn has_table<D: Dialect>(conn: &mut D::Connection, name: &str) -> Result<bool, MigrateError> {
    let row = D::fetch_optional(conn, D::COUNT_TABLES, &[Param::Text(name)]).await?;
    let count = match &row {
        Some(r) => r.int("n").map_err(MigrateError::Corrupt)?,
        None => 0,
    };
    Ok(count > 0)
}

async fn apply<D: Dialect>(conn: &mut D::Connection, m: &Migration) -> Result<(), MigrateError> {
    let failed = |source| MigrateError::Failed {
        version: m.version,
        description: m.description,
        source,
    };
    D::execute_script(conn, D::script(m))
        .await
        .map_err(|e| failed(super::sql::backend(e)))?;
    match m.then {
        None => {}
        Some(Fixup::EntryIdentities) => {
            let changed = refresh_entry_identities::<D>(conn).await.map_err(failed)?;
            tracing::info!(changed, "entry identities computed");
        }
    }
    Ok(())
}

/// Records `m` as installed (`how`: "applied" or "baseline").
async fn record<D: Dialect>(
    conn: &mut D::Connection,
    m: &Migration,
    how: &str,
) -> Result<(), MigrateError> {
    let sum = checksum(D::script(m));
    let params = [
        Param::Int(m.version),
        Param::Text(m.description),
        Param::Text(&sum),
        Param::Int(unix_now()),
        Param::Text(how),
    ];
    D::execute(conn, RECORD, &params).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
