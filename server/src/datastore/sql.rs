//! The one implementation of [`Datastore`], for every SQL backend: [`SqlStore<D>`], generic
//! over the sqlx driver `D`, which supplies only what really differs through [`Dialect`]:
//! how a write transaction starts (SQLite's `BEGIN IMMEDIATE`; PostgreSQL's advisory lock),
//! how migrations are serialised, and the DDL of each schema version. Opening the pool
//! (file modes, WAL, URLs and passwords) lives in each backend's module.
//!
//! Why this shape: both drivers take the same statement text (`$n` placeholders), so the
//! statements and the row mapping are written once (`records`), over four kinds of value
//! (`io`). The code generic over sqlx's own traits is confined to `io`, whose bounds do
//! not leak: everything here is generic over `D: Dialect` alone. (`sqlx::Any`, which picks
//! the driver at run time, is configured from a URL rather than each driver's connect
//! options, and is a feature this build does not enable.)
//!
//! Errors: a unique violation is a [`DatastoreError::Conflict`] only where the trait
//! promises one (entries, join tokens, tasks), with the message of what was duplicated;
//! anywhere else it is a [`DatastoreError::Backend`] failure, like any other driver error.
//! (The two backends used to differ here: SQLite called any duplicate, a join token's or
//! an audit record's too, a duplicate entry. They also differed on empty lists, the order
//! of due tasks and how entries are unique; each is now one behaviour, in one place.)
//!
//! Writes that append audit records go through `write_tx`: one transaction, serialised
//! in the process by a mutex (waiting there keeps pooled connections free) and across
//! processes by the dialect's write lock, so the chain head read in it is the one every
//! other writer sees. The next record follows that head, or the highest head this object
//! committed or was anchored to (`anchor_audit`) when the stored log ends before it:
//! deleting the newest records never makes a sequence number be used twice.

mod authorities;
mod io;
mod records;
mod tenants;

use std::sync::Arc;

use common::task::TaskState;
use common::{EntryId, RegistrationEntry, SpiffeId, TaskId, TemplateId};
use futures::future::BoxFuture;
use sqlx::{Pool, Transaction};
use tokio::sync::watch;

pub(crate) use self::records::Placeholders;
use self::records::{EntryRow, TaskRow, TemplateRow};
use super::migrate::Migration;
use super::{
    Acknowledgement, AgentRecord, AuditFor, ConsumedToken, Datastore, DatastoreError,
    DeletedTemplate, DomainRecord, EntryFilter, EntryUsage, IssuedSvid, LimitReached,
    PublishedAuthority, STATUS_LIST_SIZE, StatusEntry, TaskLimits, TaskRecord, TaskSvid,
    TemplateRecord, TenantRecord, TokenAttestation, UsageReport,
};
use crate::audit::{AuditEvent, AuditRecord, ChainHead};

pub(super) use self::io::{Cells, Io, Param};

/// What differs between SQL backends, beyond what [`Io`] runs.
#[async_trait::async_trait]
pub trait Dialect: Io {
    /// Counts the tables named `$1` where the datastore's unqualified names resolve.
    const COUNT_TABLES: &'static str;
    /// How this backend writes a generated statement's placeholders.
    const PLACEHOLDERS: Placeholders;

    /// Begins a transaction that writes the audit chain (or may). On return, no other
    /// writer of this database, in any process, can append before it ends.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error>;
    /// Begins a transaction that reads and changes the schema version. On return, no
    /// other server can migrate this database before it ends.
    async fn begin_migration(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error>;
    /// This backend's DDL for a schema version.
    fn script(migration: &Migration) -> &'static str;
}

/// Most entry ids bound in one usage query.
const USAGE_IDS_PER_QUERY: usize = 500;

/// A datastore on a SQL database (see the module docs).
pub struct SqlStore<D: Dialect> {
    pool: Pool<D>,
    /// Serialises this process's audit appends (the dialect's write lock serialises
    /// processes).
    audit_lock: Arc<tokio::sync::Mutex<()>>,
    /// The highest chain head this object committed, or was anchored to: appends never
    /// go at or below it (read and written under `audit_lock`).
    heads: Arc<watch::Sender<Option<ChainHead>>>,
    /// Where the database is, for `Debug` and messages; never holds a password.
    shown: String,
    /// Audit records committed, by kind (`/metrics`), once the server hands it over.
    audit_appends: Arc<std::sync::OnceLock<AuditAppends>>,
}

/// What is told of each audit record appended.
type AuditAppends = super::AuditAppended;

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            audit_lock: Arc::clone(&self.audit_lock),
            heads: Arc::clone(&self.heads),
            shown: self.shown.clone(),
            audit_appends: Arc::clone(&self.audit_appends),
        }
    }
}

impl<D: Dialect> std::fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &<D as sqlx::Database>::NAME)
            .field("at", &self.shown)
            .finish_non_exhaustive()
    }
}

/// Any driver error, where no uniqueness rule applies: [`DatastoreError::Unavailable`]
/// when the database cannot be reached or is not accepting work, else a backend failure.
pub(super) fn backend(e: sqlx::Error) -> DatastoreError {
    if unavailable(&e) {
        DatastoreError::Unavailable(e.to_string())
    } else {
        DatastoreError::Backend(e.to_string())
    }
}

/// Whether `e` says the database is away rather than that the call failed: no connection
/// within the pool's wait, a lost or refused connection, or the server shutting down or
/// starting up (SQLSTATE class 08, 57P01 to 57P03).
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// A driver error where a unique violation means "`what` already exists".
fn conflict(what: impl FnOnce() -> String) -> impl FnOnce(sqlx::Error) -> DatastoreError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => DatastoreError::Conflict(what()),
        _ => backend(e),
    }
}

fn entry_conflict() -> String {
    records::ENTRY_CONFLICT.to_owned()
}

impl<D: Dialect> SqlStore<D> {
    /// A store on `pool`, whose schema is current; `shown` names the database.
    pub(super) fn new(pool: Pool<D>, shown: String) -> Self {
        super::note_opened(&shown);
        Self {
            pool,
            audit_lock: Arc::default(),
            heads: Arc::new(watch::Sender::new(None)),
            shown,
            audit_appends: Arc::default(),
        }
    }

    /// The pool, for the change feed (`feed.rs`) and tests that look under the trait.
    pub(super) fn pool(&self) -> &Pool<D> {
        &self.pool
    }

    /// Closes the pool's connections (waits for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn one<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        decode: fn(&D::Row) -> Result<T, DatastoreError>,
    ) -> Result<Option<T>, DatastoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let row = D::fetch_optional(&mut conn, sql, params)
            .await
            .map_err(backend)?;
        row.as_ref().map(decode).transpose()
    }

    async fn all<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        decode: fn(&D::Row) -> Result<T, DatastoreError>,
    ) -> Result<Vec<T>, DatastoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let rows = D::fetch_all(&mut conn, sql, params)
            .await
            .map_err(backend)?;
        rows.iter().map(decode).collect()
    }

    /// Inserts (`insert`) or replaces an entry with its audit records, in one transaction.
    async fn put_entry(
        &self,
        entry: &RegistrationEntry,
        insert: bool,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let entry = entry.clone();
        self.write_tx(audit, move |conn| {
            Box::pin(async move { write_entry::<D>(conn, &entry, insert).await.map(Some) })
        })
        .await
        .map(|_| ())
    }

    /// Runs `sql`, a statement that changes or deletes the row keyed `key` and returns it
    /// (`... RETURNING`), and appends the records `audit` makes of that row, in one
    /// transaction; `None`, and no record, if no row matched.
    async fn change_row<T: Send + 'static>(
        &self,
        sql: &'static str,
        key: &str,
        decode: fn(&D::Row) -> Result<T, DatastoreError>,
        audit: AuditFor<T>,
    ) -> Result<Option<T>, DatastoreError> {
        let key = key.to_owned();
        let deleted = self
            .write_tx_audited(move |conn| {
                Box::pin(async move {
                    let row = D::fetch_optional(conn, sql, &[Param::Text(&key)])
                        .await
                        .map_err(backend)?;
                    let removed = row.as_ref().map(decode).transpose()?;
                    Ok(removed.map(|r| {
                        let events = audit(&r);
                        (r, events)
                    }))
                })
            })
            .await?;
        Ok(deleted.map(|(r, _)| r))
    }

    /// Runs `f` and then appends `audit` in one write transaction, committed only if `f`
    /// returns `Ok(Some(_))` (`Ok(None)`: nothing applied, rolled back); returns `f`'s value
    /// and the records stored.
    async fn write_tx<T, F>(
        &self,
        audit: &[AuditEvent],
        f: F,
    ) -> Result<Option<(T, Vec<AuditRecord>)>, DatastoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut D::Connection,
            ) -> BoxFuture<'c, Result<Option<T>, DatastoreError>>
            + Send
            + 'static,
    {
        let events = audit.to_vec();
        self.write_tx_audited(move |conn| {
            let applied = f(conn);
            Box::pin(async move { Ok(applied.await?.map(|v| (v, events))) })
        })
        .await
    }

    /// Runs `f`, then appends the audit events it returns beside its value, in one write
    /// transaction committed only if `f` returns `Ok(Some(_))` (`Ok(None)`: nothing applied,
    /// rolled back): for changes whose records describe what the transaction found (a
    /// deleted row). Returns `f`'s value and the records stored.
    ///
    /// It runs to completion in a task of its own even if the caller's request is
    /// cancelled, so a transaction is never abandoned half-way; appends are serialised so
    /// each record chains onto the one before it. The new head is published (`heads`)
    /// only once committed: a checkpoint never covers a record that was rolled back.
    async fn write_tx_audited<T, F>(
        &self,
        f: F,
    ) -> Result<Option<(T, Vec<AuditRecord>)>, DatastoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut D::Connection,
            )
                -> BoxFuture<'c, Result<Option<(T, Vec<AuditEvent>)>, DatastoreError>>
            + Send
            + 'static,
    {
        let pool = self.pool.clone();
        let lock = Arc::clone(&self.audit_lock);
        let heads = Arc::clone(&self.heads);
        let counted = Arc::clone(&self.audit_appends);
        tokio::spawn(async move {
            let _guard = lock.lock().await;
            let mut tx = D::begin_write(&pool).await.map_err(backend)?;
            let floor = heads.borrow().clone();
            let result = match f(&mut tx).await {
                Ok(Some((v, events))) => append_in_tx::<D>(&mut tx, events, floor)
                    .await
                    .map(|stored| Some((v, stored))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            if let Ok(Some((_, stored))) = &result {
                tx.commit().await.map_err(backend)?;
                if let Some(counted) = counted.get() {
                    // Once per run of one kind (a batch of issuances is one run).
                    for run in stored.chunk_by(|a, b| a.event.kind == b.event.kind) {
                        counted(&run[0].event.kind, run.len() as u64);
                    }
                }
                if let Some(last) = stored.last() {
                    raise(
                        &heads,
                        ChainHead {
                            seq: last.seq,
                            hash: last.hash.clone(),
                        },
                    );
                }
            } else {
                // Nothing was applied either way: if the rollback fails, the connection is
                // gone (sqlx closes it rather than reuse it mid-transaction).
                let _ = tx.rollback().await;
            }
            result
        })
        .await
        .map_err(|e| DatastoreError::Backend(format!("write transaction task: {e}")))?
    }
}

async fn write_entry<D: Dialect>(
    conn: &mut D::Connection,
    e: &RegistrationEntry,
    insert: bool,
) -> Result<(), DatastoreError> {
    let row = EntryRow::new(e)?;
    let sql = if insert {
        records::INSERT_ENTRY
    } else {
        records::UPDATE_ENTRY
    };
    let changed = D::execute(conn, sql, &row.params(e))
        .await
        .map_err(conflict(entry_conflict))?;
    if changed == 0 {
        return Err(DatastoreError::NotFound(format!("entry {}", e.id)));
    }
    Ok(())
}

/// Inserts a task (`expected: None`) or updates it if its state is one of `expected`;
/// returns whether a row changed.
async fn write_task<D: Dialect>(
    conn: &mut D::Connection,
    t: &TaskRecord,
    expected: Option<&[TaskState]>,
) -> Result<bool, DatastoreError> {
    let update;
    let sql = match expected {
        None => records::INSERT_TASK,
        Some(states) => match records::update_task_sql(states) {
            Some(sql) => {
                update = sql;
                &update
            }
            None => return Ok(false),
        },
    };
    let row = TaskRow::new(t)?;
    let params = if expected.is_none() {
        row.insert_params(t)
    } else {
        row.params(t).to_vec()
    };
    let changed = D::execute(conn, sql, &params).await.map_err(conflict(|| {
        format!("entry {} already has an open task", t.entry_id)
    }))?;
    Ok(changed == 1)
}

/// Most random draws for a free status list entry: the newest list is at most half full
/// when drawing, so each draw is free with probability at least 1/2, and 64 taken ones in
/// a row (probability 2^-64) mean something else is wrong.
const STATUS_ENTRY_DRAWS: usize = 64;

/// Allocates a status list entry for a task being created at `now`, in the caller's write
/// transaction (which no other server's writes interleave with): a uniformly random
/// unused index of the newest list, starting a new list first once the newest has given
/// out half its entries. The randomness is `rand`'s thread generator (ChaCha, seeded and
/// reseeded from the operating system): a relying party cannot tell from its own index
/// which indices other tasks hold.
async fn allocate_status_entry<D: Dialect>(
    conn: &mut D::Connection,
    now: i64,
) -> Result<StatusEntry, DatastoreError> {
    let newest = D::fetch_optional(conn, records::NEWEST_STATUS_LIST, &[])
        .await
        .map_err(backend)?
        .map(|row| Ok::<_, DatastoreError>((row.int("number")?, row.int("allocated")?)))
        .transpose()?;
    let list = match newest {
        Some((number, allocated)) if allocated < i64::from(STATUS_LIST_SIZE / 2) => number,
        newest => {
            let number = newest.map_or(1, |(n, _)| n.saturating_add(1));
            D::execute(
                conn,
                records::INSERT_STATUS_LIST,
                &[Param::Int(number), Param::Int(now)],
            )
            .await
            .map_err(backend)?;
            number
        }
    };
    for _ in 0..STATUS_ENTRY_DRAWS {
        let idx = rand::random_range(0..STATUS_LIST_SIZE);
        let taken = D::fetch_optional(
            conn,
            records::STATUS_ENTRY_HOLDER,
            &[Param::Int(list), Param::Int(i64::from(idx))],
        )
        .await
        .map_err(backend)?
        .is_some();
        if !taken {
            D::execute(conn, records::COUNT_STATUS_ENTRY, &[Param::Int(list)])
                .await
                .map_err(backend)?;
            return Ok(StatusEntry { list, idx });
        }
    }
    Err(DatastoreError::Backend(format!(
        "no free entry found in status list {list} after {STATUS_ENTRY_DRAWS} draws"
    )))
}

/// Sets `heads` to `head` if it is higher than what it holds.
fn raise(heads: &watch::Sender<Option<ChainHead>>, head: ChainHead) {
    heads.send_if_modified(|h| {
        let higher = h.as_ref().is_none_or(|h| h.seq < head.seq);
        if higher {
            *h = Some(head);
        }
        higher
    });
}

/// Appends `events` after the chain head, or after `floor` when the stored log ends
/// before it (its newest records were deleted). The caller holds the write lock.
async fn append_in_tx<D: Dialect>(
    conn: &mut D::Connection,
    events: Vec<AuditEvent>,
    floor: Option<ChainHead>,
) -> Result<Vec<AuditRecord>, DatastoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let stored_head = D::fetch_optional(conn, records::AUDIT_HEAD, &[])
        .await
        .map_err(backend)?
        .as_ref()
        .map(records::audit_head)
        .transpose()?;
    let head = match (stored_head, floor) {
        (stored, Some(floor)) if stored.as_ref().is_none_or(|(seq, _)| *seq < floor.seq) => {
            // Numbering after the stored head would give the deleted records' numbers to
            // new ones; the gap stays visible to `audit verify`.
            tracing::error!(
                stored_head = stored.as_ref().map_or(0, |(seq, _)| *seq),
                written_or_checkpointed = floor.seq,
                "the audit log ends before a record this server wrote or checkpointed: records were deleted from the datastore; appending after record {} so that no sequence number is used twice",
                floor.seq
            );
            Some((floor.seq, floor.hash))
        }
        (stored, _) => stored,
    };
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let (stored, details): (Vec<AuditRecord>, Vec<String>) =
        crate::audit::chain_owned(head, at_ms, events)
            .into_iter()
            .unzip();
    let per_statement = records::MAX_VALUES_PER_STATEMENT / records::INSERT_AUDIT_COLUMNS;
    for (chunk, details) in stored
        .chunks(per_statement)
        .zip(details.chunks(per_statement))
    {
        let sql = records::values_rows(
            D::PLACEHOLDERS,
            records::INSERT_AUDIT_HEAD,
            records::INSERT_AUDIT_COLUMNS,
            chunk.len(),
            "",
        );
        let params: Vec<Param<'_>> = chunk
            .iter()
            .zip(details)
            .flat_map(|(r, detail)| records::audit_params(r, detail))
            .collect();
        D::execute(conn, &sql, &params).await.map_err(backend)?;
    }
    Ok(stored)
}

/// Stores the serials of X.509-SVIDs issued under tasks.
async fn write_task_svids<D: Dialect>(
    conn: &mut D::Connection,
    svids: &[TaskSvid],
) -> Result<(), DatastoreError> {
    for s in svids {
        D::execute(
            conn,
            records::UPSERT_TASK_SVID,
            &records::task_svid_params(s),
        )
        .await
        .map_err(backend)?;
    }
    Ok(())
}

/// Adds SVIDs issued to the entries' usage (the issue counts of [`Datastore::record_issuance`]).
async fn write_issued<D: Dialect>(
    conn: &mut D::Connection,
    issued: &[IssuedSvid],
) -> Result<(), DatastoreError> {
    // One row per (entry, agent): how many, and the latest time. Sorted, so that
    // concurrent calls touch rows in one order.
    let mut counts: std::collections::BTreeMap<(&str, &str), (i64, i64)> =
        std::collections::BTreeMap::new();
    for (entry_id, agent_id, at) in issued {
        let c = counts
            .entry((entry_id.as_str(), agent_id.as_str()))
            .or_insert((0, *at));
        c.0 = c.0.saturating_add(1);
        c.1 = c.1.max(*at);
    }
    let rows: Vec<_> = counts.into_iter().collect();
    let per_statement = records::MAX_VALUES_PER_STATEMENT / records::UPSERT_ISSUED_COLUMNS;
    for chunk in rows.chunks(per_statement) {
        let sql = records::values_rows(
            D::PLACEHOLDERS,
            records::UPSERT_ISSUED_HEAD,
            records::UPSERT_ISSUED_COLUMNS,
            chunk.len(),
            records::UPSERT_ISSUED_TAIL,
        );
        let params: Vec<Param<'_>> = chunk
            .iter()
            .flat_map(|((entry_id, agent_id), (n, at))| {
                [
                    Param::Text(entry_id),
                    Param::Text(agent_id),
                    Param::Int(*n),
                    Param::Int(*at),
                ]
            })
            .collect();
        D::execute(conn, &sql, &params).await.map_err(backend)?;
    }
    Ok(())
}

/// The first of `limits` that storing `task` would break, read inside the write
/// transaction.
async fn limit_reached<D: Dialect>(
    conn: &mut D::Connection,
    task: &TaskRecord,
    limits: &TaskLimits,
) -> Result<Option<LimitReached>, DatastoreError> {
    if let Some(max) = limits.tenant_open_tasks {
        let row = D::fetch_optional(
            conn,
            tenants::COUNT_OPEN_TASKS,
            &[Param::Text(&task.tenant)],
        )
        .await
        .map_err(backend)?;
        let open = row.map(|r| r.int("n")).transpose()?.unwrap_or(0);
        if open >= max {
            return Ok(Some(LimitReached::TenantOpenTasks { max }));
        }
    }
    let Some(max) = limits.entry_parallel else {
        return Ok(None);
    };
    let rows = D::fetch_all(
        conn,
        records::OPEN_TASKS_FOR_ENTRY,
        &[Param::Text(task.entry_id.as_str())],
    )
    .await
    .map_err(backend)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let open = rows
        .iter()
        .map(records::task)
        .collect::<Result<Vec<_>, _>>()?;
    if open
        .iter()
        .any(|t| t.binding.holder() == task.binding.holder())
    {
        // The same holder twice: the unique index refuses the insert (a Conflict).
        return Ok(None);
    }
    if task.binding.holder().is_none() || open.iter().any(|t| t.binding.holder().is_none()) {
        return Ok(Some(LimitReached::SelectorsBoundAlone));
    }
    let open = u64::try_from(open.len()).unwrap_or(u64::MAX);
    Ok((open >= max).then_some(LimitReached::EntryParallel { open, max }))
}

/// Recomputes every entry's `identity` from its stored columns and writes those that
/// differ (all of them on a SQLite database older than schema version 2, none on
/// PostgreSQL, which always stored it). Part of the migration to version 2.
pub(super) async fn refresh_entry_identities<D: Dialect>(
    conn: &mut D::Connection,
) -> Result<u64, DatastoreError> {
    let rows = D::fetch_all(conn, records::ENTRY_IDENTITIES, &[])
        .await
        .map_err(backend)?;
    let mut changed = 0;
    for row in &rows {
        let id = row.text("id")?;
        let want = records::identity(
            &row.text("spiffe_id")?,
            &row.text("parent_id")?,
            &row.text("selectors")?,
        );
        if row.text("identity")? != want {
            // Two entries with one identity would be one entry stored twice, which the
            // schema never allowed: the unique constraint refuses it, and the migration
            // with it.
            changed += D::execute(
                conn,
                records::SET_ENTRY_IDENTITY,
                &[Param::Text(&id), Param::Text(&want)],
            )
            .await
            .map_err(conflict(|| {
                format!("{} (entry {id})", records::ENTRY_CONFLICT)
            }))?;
        }
    }
    Ok(changed)
}

#[async_trait::async_trait]
impl<D: Dialect> Datastore for SqlStore<D> {
    async fn ping(&self, within: std::time::Duration) -> Result<(), DatastoreError> {
        // A read of the schema table, not `SELECT 1`: the datastore answers only if its
        // tables do (a database that lost them, or revoked our rights, fails every call).
        let read = self.one(records::PING, &[], |_| Ok(()));
        match tokio::time::timeout(within, read).await {
            Ok(Ok(Some(()))) => Ok(()),
            Ok(Ok(None)) => Err(DatastoreError::Backend(
                "the schema version table is empty".to_owned(),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DatastoreError::Backend(format!(
                "timed out after {} ms",
                within.as_millis()
            ))),
        }
    }

    async fn create_entry(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        self.put_entry(entry, true, audit).await
    }

    async fn update_entry(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        self.put_entry(entry, false, audit).await
    }

    async fn update_entry_if_unchanged(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let entry = entry.clone();
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let row = EntryRow::new(&entry)?;
                    let mut params = row.params(&entry).to_vec();
                    params.push(Param::Int(row.previous_revision()));
                    let n = D::execute(conn, records::UPDATE_ENTRY_IF, &params)
                        .await
                        .map_err(conflict(entry_conflict))?;
                    // Another change came first (or the entry is gone): nothing applied,
                    // no record.
                    Ok((n == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn delete_entry(
        &self,
        id: &EntryId,
        audit: AuditFor<RegistrationEntry>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        self.change_row(records::DELETE_ENTRY, id.as_str(), records::entry, audit)
            .await
    }

    async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, DatastoreError> {
        self.one(
            records::GET_ENTRY,
            &[Param::Text(id.as_str())],
            records::entry,
        )
        .await
    }

    async fn get_entries(&self, ids: &[EntryId]) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        // Without repeats, so no entry is in two chunks.
        let mut ids: Vec<&EntryId> = ids.iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut entries = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(super::ENTRY_IDS_PER_QUERY) {
            let params: Vec<Param<'_>> = chunk.iter().map(|id| Param::Text(id.as_str())).collect();
            let sql = records::entries_by_id_sql(D::PLACEHOLDERS, chunk.len());
            entries.extend(self.all(&sql, &params, records::entry).await?);
        }
        // In byte order of the ids, whatever the database's collation.
        entries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let params = [
            Param::OptText(filter.spiffe_id.as_ref().map(SpiffeId::as_str)),
            Param::OptText(filter.parent_id.as_ref().map(SpiffeId::as_str)),
            Param::OptText(filter.tenant.as_deref()),
        ];
        self.all(records::LIST_ENTRIES, &params, records::entry)
            .await
    }

    async fn create_join_token(
        &self,
        token_hash: &str,
        spiffe_id: &SpiffeId,
        expires_at: i64,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let (hash, id) = (token_hash.to_owned(), spiffe_id.clone());
        self.write_tx(audit, move |conn| {
            Box::pin(async move {
                let params = [
                    Param::Text(&hash),
                    Param::Text(id.as_str()),
                    Param::Int(expires_at),
                ];
                D::execute(conn, records::INSERT_JOIN_TOKEN, &params)
                    .await
                    .map_err(conflict(|| {
                        "a join token with this hash already exists".into()
                    }))?;
                Ok(Some(()))
            })
        })
        .await
        .map(|_| ())
    }

    async fn get_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<ConsumedToken>, DatastoreError> {
        self.one(
            records::GET_JOIN_TOKEN,
            &[Param::Text(token_hash)],
            records::consumed_token,
        )
        .await
    }

    async fn attest_agent_with_token(
        &self,
        token_hash: &str,
        now: i64,
        agent: &AgentRecord,
        audit: &[AuditEvent],
    ) -> Result<TokenAttestation, DatastoreError> {
        let (hash, agent) = (token_hash.to_owned(), agent.clone());
        // Why nothing was applied, when nothing was (the transaction is rolled back).
        let refusal = Arc::new(std::sync::Mutex::new(TokenAttestation::TokenGone));
        let refused = Arc::clone(&refusal);
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let params = [
                        Param::Text(&hash),
                        Param::Text(agent.spiffe_id.as_str()),
                        Param::Int(now),
                    ];
                    let consumed = D::execute(conn, records::CONSUME_JOIN_TOKEN, &params)
                        .await
                        .map_err(backend)?;
                    if consumed != 1 {
                        return Ok(None);
                    }
                    let selectors = records::agent_selectors_json(&agent);
                    let stored = D::execute(
                        conn,
                        records::ATTEST_AGENT,
                        &records::agent_params(&agent, &selectors),
                    )
                    .await
                    .map_err(backend)?;
                    if stored != 1 {
                        *refused.lock().unwrap_or_else(|e| e.into_inner()) =
                            TokenAttestation::Banned;
                        return Ok(None);
                    }
                    Ok(Some(()))
                })
            })
            .await?;
        Ok(match applied {
            Some(_) => TokenAttestation::Attested,
            None => *refusal.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    async fn attest_agent(
        &self,
        agent: &AgentRecord,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let agent = agent.clone();
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let selectors = records::agent_selectors_json(&agent);
                    let changed = D::execute(
                        conn,
                        records::ATTEST_AGENT,
                        &records::agent_params(&agent, &selectors),
                    )
                    .await
                    .map_err(backend)?;
                    // Banned: nothing applied, no record.
                    Ok((changed == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn renew_agent(
        &self,
        id: &SpiffeId,
        expected_serial: &str,
        new_serial: &str,
        expires_at: i64,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let (id, expected, new) = (
            id.clone(),
            expected_serial.to_owned(),
            new_serial.to_owned(),
        );
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let params = [
                        Param::Text(&new),
                        Param::Int(expires_at),
                        Param::Text(id.as_str()),
                        Param::Text(&expected),
                    ];
                    let changed = D::execute(conn, records::RENEW_AGENT, &params)
                        .await
                        .map_err(backend)?;
                    // Evicted, banned or renewed meanwhile: nothing applied, no record.
                    Ok((changed == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn ban_agent(
        &self,
        id: &SpiffeId,
        audit: &[AuditEvent],
    ) -> Result<Option<AgentRecord>, DatastoreError> {
        let events = audit.to_vec();
        self.change_row(
            records::BAN_AGENT,
            id.as_str(),
            records::agent,
            Box::new(move |_| events),
        )
        .await
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        self.one(
            records::GET_AGENT,
            &[Param::Text(id.as_str())],
            records::agent,
        )
        .await
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, DatastoreError> {
        self.all(records::LIST_AGENTS, &[], records::agent).await
    }

    async fn delete_agent(
        &self,
        id: &SpiffeId,
        audit: &[AuditEvent],
    ) -> Result<Option<AgentRecord>, DatastoreError> {
        let events = audit.to_vec();
        self.change_row(
            records::DELETE_AGENT,
            id.as_str(),
            records::agent,
            Box::new(move |_| events),
        )
        .await
    }

    async fn append_audit(
        &self,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let stored = self
            .write_tx(events, |_| Box::pin(async { Ok(Some(())) }))
            .await?;
        Ok(stored.map(|(_, records)| records).unwrap_or_default())
    }

    async fn audit_head(&self) -> Result<Option<ChainHead>, DatastoreError> {
        let head = self
            .one(records::AUDIT_HEAD, &[], records::audit_head)
            .await?;
        Ok(head.map(|(seq, hash)| ChainHead { seq, hash }))
    }

    async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>, DatastoreError> {
        self.one(records::AUDIT_RECORD, &[Param::Int(seq)], records::audit)
            .await
    }

    fn anchor_audit(&self, head: ChainHead) {
        raise(&self.heads, head);
    }

    fn audit_heads(&self) -> watch::Receiver<Option<ChainHead>> {
        self.heads.subscribe()
    }

    fn count_audit_appends(&self, counter: AuditAppends) {
        // Handed over once, at startup; a second hand-over changes nothing.
        let _ = self.audit_appends.set(counter);
    }

    async fn list_audit(
        &self,
        task_id: Option<&TaskId>,
        tenant: Option<&str>,
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        self.all(
            records::LIST_AUDIT,
            &[
                Param::OptText(task_id.map(TaskId::as_str)),
                Param::OptText(tenant),
            ],
            records::audit,
        )
        .await
    }

    async fn same_workload_elsewhere(
        &self,
        parent_id: &SpiffeId,
        selectors: &common::SelectorSet,
        tenant: &str,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let selectors = records::selectors_json(selectors);
        let params = [
            Param::Text(parent_id.as_str()),
            Param::Text(&selectors),
            Param::Text(tenant),
        ];
        self.all(records::SAME_WORKLOAD_ELSEWHERE, &params, records::entry)
            .await
    }

    async fn lapsed_entries(&self, now: i64) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        self.all(records::LAPSED_ENTRIES, &[Param::Int(now)], records::entry)
            .await
    }

    async fn create_tenant(
        &self,
        t: &TenantRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let t = t.clone();
        self.write_tx(audit, move |conn| {
            Box::pin(async move {
                let row = tenants::TenantRow::new(&t)?;
                let name = &t.name;
                D::execute(conn, tenants::INSERT_TENANT, &row.params(&t))
                    .await
                    .map_err(conflict(|| format!("tenant {name} already exists")))?;
                Ok(Some(()))
            })
        })
        .await
        .map(|_| ())
    }

    async fn update_tenant(
        &self,
        t: &TenantRecord,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let t = t.clone();
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let row = tenants::TenantRow::new(&t)?;
                    let mut params = row.params(&t).to_vec();
                    params.push(Param::Int(row.previous_revision()));
                    let n = D::execute(conn, tenants::UPDATE_TENANT, &params)
                        .await
                        .map_err(backend)?;
                    // Another change came first: nothing applied, no record.
                    Ok((n == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn create_template(
        &self,
        template: &TemplateRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let template = template.clone();
        self.write_tx(audit, move |conn| {
            Box::pin(async move {
                let row = TemplateRow::new(&template);
                D::execute(conn, records::INSERT_TEMPLATE, &row.params(&template))
                    .await
                    .map_err(conflict(|| records::TEMPLATE_CONFLICT.to_owned()))?;
                Ok(Some(()))
            })
        })
        .await
        .map(|_| ())
    }

    async fn get_template(
        &self,
        id: &TemplateId,
    ) -> Result<Option<TemplateRecord>, DatastoreError> {
        self.one(
            records::GET_TEMPLATE,
            &[Param::Text(id.as_str())],
            records::template,
        )
        .await
    }

    async fn list_templates(
        &self,
        parent: Option<&SpiffeId>,
    ) -> Result<Vec<TemplateRecord>, DatastoreError> {
        self.all(
            records::LIST_TEMPLATES,
            &[Param::OptText(parent.map(SpiffeId::as_str))],
            records::template,
        )
        .await
    }

    async fn delete_template(
        &self,
        id: &TemplateId,
        audit: AuditFor<DeletedTemplate>,
    ) -> Result<Option<DeletedTemplate>, DatastoreError> {
        let id = id.clone();
        let deleted = self
            .write_tx_audited(move |conn| {
                Box::pin(async move {
                    let key = [Param::Text(id.as_str())];
                    let row = D::fetch_optional(conn, records::DELETE_TEMPLATE, &key)
                        .await
                        .map_err(backend)?;
                    let Some(template) = row.as_ref().map(records::template).transpose()? else {
                        return Ok(None);
                    };
                    let rows = D::fetch_all(conn, records::DELETE_INSTANCES, &key)
                        .await
                        .map_err(backend)?;
                    let instances = rows
                        .iter()
                        .map(records::entry)
                        .collect::<Result<Vec<_>, _>>()?;
                    let done = (template, instances);
                    let events = audit(&done);
                    Ok(Some((done, events)))
                })
            })
            .await?;
        Ok(deleted.map(|(d, _)| d))
    }

    async fn mark_instances_seen(&self, ids: &[EntryId], now: i64) -> Result<(), DatastoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for id in ids {
            D::execute(
                &mut tx,
                records::MARK_SEEN,
                &[Param::Text(id.as_str()), Param::Int(now)],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn stale_instances(&self, now: i64) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let stale = self
            .all(records::STALE_INSTANCES, &[Param::Int(now)], records::entry)
            .await?;
        // Only when instances are about to go: an idle check writes nothing. The rows of
        // the instances deleted last time are pruned now.
        if !stale.is_empty() {
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            D::execute(&mut conn, records::PRUNE_SEEN, &[])
                .await
                .map_err(backend)?;
        }
        Ok(stale)
    }

    async fn delete_stale_instance(
        &self,
        id: &EntryId,
        now: i64,
        audit: AuditFor<RegistrationEntry>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let key = id.as_str().to_owned();
        let deleted = self
            .write_tx_audited(move |conn| {
                Box::pin(async move {
                    let params = [Param::Text(&key), Param::Int(now)];
                    let row = D::fetch_optional(conn, records::DELETE_STALE_INSTANCE, &params)
                        .await
                        .map_err(backend)?;
                    let removed = row.as_ref().map(records::entry).transpose()?;
                    Ok(removed.map(|e| {
                        let events = audit(&e);
                        (e, events)
                    }))
                })
            })
            .await?;
        Ok(deleted.map(|(e, _)| e))
    }

    async fn delete_tenant(
        &self,
        name: &str,
        audit: AuditFor<TenantRecord>,
    ) -> Result<Option<TenantRecord>, DatastoreError> {
        let name = name.to_owned();
        // In a write transaction: nothing can be created in the tenant between the counts
        // and the delete.
        let deleted = self
            .write_tx_audited(move |conn| {
                Box::pin(async move {
                    let mut owned = Vec::new();
                    for (sql, what) in [
                        (tenants::COUNT_ENTRIES, "entries"),
                        (tenants::COUNT_OPEN_TASKS, "open tasks"),
                        (tenants::COUNT_DOMAINS, "domains"),
                    ] {
                        let row = D::fetch_optional(conn, sql, &[Param::Text(&name)])
                            .await
                            .map_err(backend)?;
                        let n = row.as_ref().map(tenants::count).transpose()?.unwrap_or(0);
                        if n > 0 {
                            owned.push(format!("{n} {what}"));
                        }
                    }
                    if !owned.is_empty() {
                        return Err(DatastoreError::Conflict(format!(
                            "tenant {name} still owns {}: delete or move them first",
                            owned.join(", ")
                        )));
                    }
                    let row =
                        D::fetch_optional(conn, tenants::DELETE_TENANT, &[Param::Text(&name)])
                            .await
                            .map_err(backend)?;
                    let t = row.as_ref().map(tenants::tenant).transpose()?;
                    Ok(t.map(|t| {
                        let events = audit(&t);
                        (t, events)
                    }))
                })
            })
            .await?;
        Ok(deleted.map(|(t, _)| t))
    }

    async fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, DatastoreError> {
        self.one(tenants::GET_TENANT, &[Param::Text(name)], tenants::tenant)
            .await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, DatastoreError> {
        self.all(tenants::LIST_TENANTS, &[], tenants::tenant).await
    }

    async fn tenant_counts(&self, name: &str) -> Result<(i64, i64), DatastoreError> {
        let entries = self
            .one(tenants::COUNT_ENTRIES, &[Param::Text(name)], tenants::count)
            .await?
            .unwrap_or(0);
        let tasks = self
            .one(
                tenants::COUNT_OPEN_TASKS,
                &[Param::Text(name)],
                tenants::count,
            )
            .await?
            .unwrap_or(0);
        Ok((entries, tasks))
    }

    async fn put_domain(
        &self,
        d: &DomainRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let d = d.clone();
        self.write_tx(audit, move |conn| {
            Box::pin(async move {
                let n = D::execute(conn, tenants::PUT_DOMAIN, &tenants::domain_params(&d))
                    .await
                    .map_err(backend)?;
                if n == 0 {
                    return Err(DatastoreError::Conflict(format!(
                        "domain {} is claimed by another tenant",
                        d.domain
                    )));
                }
                Ok(Some(()))
            })
        })
        .await
        .map(|_| ())
    }

    async fn record_domain_check(
        &self,
        d: &DomainRecord,
        previous_checked_at: Option<i64>,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let d = d.clone();
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let mut params = tenants::domain_params(&d).to_vec();
                    params.push(Param::OptInt(previous_checked_at));
                    let n = D::execute(conn, tenants::RECORD_DOMAIN_CHECK, &params)
                        .await
                        .map_err(backend)?;
                    // Another check came first (or the claim changed): no record.
                    Ok((n == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn get_domain(&self, domain: &str) -> Result<Option<DomainRecord>, DatastoreError> {
        self.one(tenants::GET_DOMAIN, &[Param::Text(domain)], tenants::domain)
            .await
    }

    async fn list_domains(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<DomainRecord>, DatastoreError> {
        self.all(
            tenants::LIST_DOMAINS,
            &[Param::OptText(tenant)],
            tenants::domain,
        )
        .await
    }

    async fn delete_domain(
        &self,
        domain: &str,
        audit: AuditFor<DomainRecord>,
    ) -> Result<Option<DomainRecord>, DatastoreError> {
        self.change_row(tenants::DELETE_DOMAIN, domain, tenants::domain, audit)
            .await
    }

    async fn create_task_within(
        &self,
        task: &TaskRecord,
        provisioned_entry: Option<&RegistrationEntry>,
        audit: &[AuditEvent],
        limits: &TaskLimits,
    ) -> Result<Result<StatusEntry, LimitReached>, DatastoreError> {
        let mut task = task.clone();
        let entry = provisioned_entry.cloned();
        let limits = limits.clone();
        let reached = Arc::new(std::sync::Mutex::new(None));
        let slot = Arc::clone(&reached);
        let stored = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    // The write lock is held from the transaction's start (BEGIN IMMEDIATE;
                    // on PostgreSQL the audit advisory lock, with each statement reading
                    // what is committed), so these counts hold until the commit.
                    if let Some(limit) = limit_reached::<D>(conn, &task, &limits).await? {
                        *slot
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(limit);
                        return Ok(None);
                    }
                    if let Some(e) = &entry {
                        write_entry::<D>(conn, e, true).await?;
                    }
                    // Allocated last: a refused task takes no status list entry.
                    let status = allocate_status_entry::<D>(conn, task.created_at).await?;
                    task.status = Some(status);
                    write_task::<D>(conn, &task, None).await?;
                    Ok(Some(status))
                })
            })
            .await?;
        let reached = reached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(match (stored, reached) {
            (_, Some(limit)) => Err(limit),
            (Some((status, _)), None) => Ok(status),
            (None, None) => {
                return Err(DatastoreError::Backend(
                    "task creation applied nothing without naming a limit".into(),
                ));
            }
        })
    }

    async fn update_task(
        &self,
        task: &TaskRecord,
        expected: &[TaskState],
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let task = task.clone();
        let expected = expected.to_vec();
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    if !write_task::<D>(conn, &task, Some(&expected)).await? {
                        return Ok(None);
                    }
                    if task.provisioned && !task.state.is_open() {
                        D::execute(
                            conn,
                            records::DELETE_ENTRY,
                            &[Param::Text(task.entry_id.as_str())],
                        )
                        .await
                        .map_err(backend)?;
                    }
                    Ok(Some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn acknowledge_task(
        &self,
        id: &TaskId,
        acknowledgement: &Acknowledgement,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let id = id.clone();
        let ack = acknowledgement.clone();
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let params = [
                        Param::Text(id.as_str()),
                        Param::Text(&ack.by),
                        Param::Int(i64::from(ack.uid)),
                        Param::Int(ack.at),
                        Param::Text(&ack.note),
                        Param::Flag(true),
                    ];
                    let changed = D::execute(conn, records::ACKNOWLEDGE_TASK, &params)
                        .await
                        .map_err(backend)?;
                    Ok((changed == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, DatastoreError> {
        self.one(
            records::GET_TASK,
            &[Param::Text(id.as_str())],
            records::task,
        )
        .await
    }

    async fn list_tasks(
        &self,
        state: Option<TaskState>,
    ) -> Result<Vec<TaskRecord>, DatastoreError> {
        let params = [Param::OptText(state.map(TaskState::as_str))];
        self.all(records::LIST_TASKS, &params, records::task).await
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, DatastoreError> {
        self.all(records::DUE_TASKS, &[Param::Int(now)], records::task)
            .await
    }

    async fn open_tasks_for_entry(
        &self,
        entry_id: &EntryId,
    ) -> Result<Vec<TaskRecord>, DatastoreError> {
        self.all(
            records::OPEN_TASKS_FOR_ENTRY,
            &[Param::Text(entry_id.as_str())],
            records::task,
        )
        .await
    }

    async fn record_issuance(
        &self,
        task_svids: Vec<TaskSvid>,
        audit: Vec<AuditEvent>,
        issued: Vec<IssuedSvid>,
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        if task_svids.is_empty() && audit.is_empty() && issued.is_empty() {
            return Ok(Vec::new());
        }
        let stored = self
            .write_tx_audited(move |conn| {
                Box::pin(async move {
                    write_task_svids::<D>(conn, &task_svids).await?;
                    write_issued::<D>(conn, &issued).await?;
                    Ok(Some(((), audit)))
                })
            })
            .await?;
        Ok(stored.map(|(_, records)| records).unwrap_or_default())
    }

    async fn record_usage(&self, reports: &[UsageReport]) -> Result<(), DatastoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        // In (entry, agent) order, as issue counts are written, so that two transactions
        // never wait for each other's rows in opposite orders.
        let mut reports: Vec<&UsageReport> = reports.iter().collect();
        reports
            .sort_unstable_by(|a, b| (&a.entry_id, &a.agent_id).cmp(&(&b.entry_id, &b.agent_id)));
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for r in reports {
            D::execute(&mut tx, records::UPSERT_USAGE, &records::usage_params(r))
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn entry_usage(
        &self,
        entry_ids: Option<&[EntryId]>,
    ) -> Result<Vec<EntryUsage>, DatastoreError> {
        let Some(ids) = entry_ids else {
            let rows = self.all(records::ALL_USAGE, &[], records::usage).await?;
            return Ok(records::sum_usage(rows));
        };
        // Sorted and without repeats, so the chunks' rows come back in entry order.
        let mut ids: Vec<&EntryId> = ids.iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = Vec::new();
        // Well under what either backend binds in one statement.
        for chunk in ids.chunks(USAGE_IDS_PER_QUERY) {
            let params: Vec<Param<'_>> = chunk.iter().map(|id| Param::Text(id.as_str())).collect();
            let sql = records::usage_of_sql(D::PLACEHOLDERS, chunk.len());
            rows.extend(self.all(&sql, &params, records::usage).await?);
        }
        Ok(records::sum_usage(rows))
    }

    async fn publish_authorities(
        &self,
        items: &[PublishedAuthority],
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        if items.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let items = items.to_vec();
        self.write_tx(audit, move |conn| {
            Box::pin(async move {
                for a in &items {
                    D::execute(conn, authorities::PUT_AUTHORITY, &authorities::params(a))
                        .await
                        .map_err(backend)?;
                }
                Ok(Some(()))
            })
        })
        .await
        .map(|_| ())
    }

    async fn list_authorities(&self, now: i64) -> Result<Vec<PublishedAuthority>, DatastoreError> {
        self.all(
            authorities::LIST_AUTHORITIES,
            &[Param::Int(now)],
            authorities::authority,
        )
        .await
    }

    async fn prune_authorities(&self, now: i64) -> Result<u64, DatastoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        D::execute(
            &mut conn,
            authorities::PRUNE_AUTHORITIES,
            &[Param::Int(now)],
        )
        .await
        .map_err(backend)
    }

    async fn claim_set_receiver(
        &self,
        receiver: &str,
        holder: &str,
        start: i64,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, DatastoreError> {
        let (receiver, holder) = (receiver.to_owned(), holder.to_owned());
        let claimed = self
            .write_tx(&[], move |conn| {
                Box::pin(async move {
                    D::execute(
                        conn,
                        records::INSERT_SET_CURSOR,
                        &[Param::Text(&receiver), Param::Int(start)],
                    )
                    .await
                    .map_err(backend)?;
                    let row = D::fetch_optional(
                        conn,
                        records::CLAIM_SET_CURSOR,
                        &[
                            Param::Text(&receiver),
                            Param::Text(&holder),
                            Param::Int(now_ms),
                            Param::Int(until_ms),
                        ],
                    )
                    .await
                    .map_err(backend)?;
                    row.map(|r| r.int("seq")).transpose()
                })
            })
            .await?;
        Ok(claimed.map(|(seq, _)| seq))
    }

    async fn advance_set_cursor(
        &self,
        receiver: &str,
        holder: &str,
        from: i64,
        to: i64,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let (receiver, holder) = (receiver.to_owned(), holder.to_owned());
        let applied = self
            .write_tx(audit, move |conn| {
                Box::pin(async move {
                    let n = D::execute(
                        conn,
                        records::ADVANCE_SET_CURSOR,
                        &[
                            Param::Text(&receiver),
                            Param::Text(&holder),
                            Param::Int(from),
                            Param::Int(to),
                        ],
                    )
                    .await
                    .map_err(backend)?;
                    // Another server took the receiver over: nothing applied, no record.
                    Ok((n == 1).then_some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn release_set_receiver(
        &self,
        receiver: &str,
        holder: &str,
    ) -> Result<(), DatastoreError> {
        let (receiver, holder) = (receiver.to_owned(), holder.to_owned());
        self.write_tx(&[], move |conn| {
            Box::pin(async move {
                D::execute(
                    conn,
                    records::RELEASE_SET_CURSOR,
                    &[Param::Text(&receiver), Param::Text(&holder)],
                )
                .await
                .map_err(backend)?;
                Ok(Some(()))
            })
        })
        .await
        .map(|_| ())
    }

    async fn revoked_since(
        &self,
        now: i64,
    ) -> Result<(Vec<TaskRecord>, Vec<TaskSvid>), DatastoreError> {
        let tasks = self
            .all(records::ENDED_TASKS, &[Param::Int(now)], records::task)
            .await?;
        let svids = self
            .all(
                records::REVOKED_TASK_SVIDS,
                &[Param::Int(now)],
                records::task_svid,
            )
            .await?;
        Ok((tasks, svids))
    }

    async fn newest_status_list(&self) -> Result<Option<i64>, DatastoreError> {
        self.one(records::NEWEST_STATUS_LIST, &[], |row| row.int("number"))
            .await
    }
}
