//! Embedded SQLite backend (the default).
//!
//! WAL journal with `synchronous = FULL`: a write returns only after it reached the disk,
//! so an accepted API call survives `kill -9` and power loss. Schema changes are plain
//! `CREATE ... IF NOT EXISTS` statements applied at open.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use common::{RegistrationEntry, Selector, SelectorSet, SpiffeId};
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use common::task::TaskState;

use super::{
    AgentRecord, ConsumedToken, Datastore, DatastoreError, EntryFilter, TaskRecord, TaskSvid,
};
use crate::audit::{AuditEvent, AuditRecord};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        x509_svid_ttl INTEGER NOT NULL,
        jwt_svid_ttl INTEGER NOT NULL,
        dns_names TEXT NOT NULL,
        jit INTEGER NOT NULL,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        UNIQUE (spiffe_id, parent_id, selectors)
    )",
    "CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent_id)",
    "CREATE TABLE IF NOT EXISTS join_tokens (
        token_hash TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        task_id TEXT,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_task ON audit_log (task_id)",
    "CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        entry_id TEXT NOT NULL,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        provisioned INTEGER NOT NULL,
        requester TEXT NOT NULL,
        approver TEXT NOT NULL,
        reason TEXT NOT NULL,
        ticket TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        activated_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        ended_at INTEGER NOT NULL,
        end_reason TEXT NOT NULL,
        decision TEXT NOT NULL
    )",
    // At most one open task per entry: the SVID of an entry names exactly one task.
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_open_entry ON tasks (entry_id)
        WHERE state IN ('pending_approval', 'active')",
    "CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, deadline)",
    "CREATE TABLE IF NOT EXISTS task_svids (
        serial TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        issuer_serial TEXT NOT NULL,
        not_after INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS task_svids_task ON task_svids (task_id)",
    "CREATE TABLE IF NOT EXISTS agents (
        spiffe_id TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        previous_serial TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        attested_at INTEGER NOT NULL,
        banned INTEGER NOT NULL,
        attestation_type TEXT NOT NULL
    )",
];

/// SQLite-backed datastore.
#[derive(Debug, Clone)]
pub struct SqliteDatastore {
    pool: SqlitePool,
    /// Serialises audit appends so each record chains onto the one before it.
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn backend(e: sqlx::Error) -> DatastoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return DatastoreError::Conflict(
            "an entry with the same SPIFFE ID, parent ID and selectors already exists".into(),
        );
    }
    DatastoreError::Backend(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Corrupt(e.to_string())
}

/// Canonical selector encoding: a JSON array of sorted `type:value` strings, so the
/// uniqueness constraint sees equal sets as equal text.
fn selectors_json(s: &SelectorSet) -> String {
    let list: Vec<String> = s.iter().map(ToString::to_string).collect();
    serde_json::Value::from(list).to_string()
}

fn entry_from_row(row: &SqliteRow) -> Result<RegistrationEntry, DatastoreError> {
    let selectors: Vec<String> =
        serde_json::from_str(row.try_get("selectors").map_err(corrupt)?).map_err(corrupt)?;
    let selectors = selectors
        .iter()
        .map(|s| Selector::from_str(s))
        .collect::<Result<SelectorSet, _>>()
        .map_err(corrupt)?;
    let dns_names: Vec<String> =
        serde_json::from_str(row.try_get("dns_names").map_err(corrupt)?).map_err(corrupt)?;
    let secs = |col: &str| -> Result<Duration, DatastoreError> {
        let v: i64 = row.try_get(col).map_err(corrupt)?;
        Ok(Duration::from_secs(u64::try_from(v).map_err(corrupt)?))
    };
    let revision: i64 = row.try_get("revision").map_err(corrupt)?;
    Ok(RegistrationEntry {
        id: row.try_get("id").map_err(corrupt)?,
        spiffe_id: SpiffeId::new(row.try_get("spiffe_id").map_err(corrupt)?).map_err(corrupt)?,
        parent_id: SpiffeId::new(row.try_get("parent_id").map_err(corrupt)?).map_err(corrupt)?,
        selectors,
        x509_svid_ttl: secs("x509_svid_ttl")?,
        jwt_svid_ttl: secs("jwt_svid_ttl")?,
        dns_names,
        jit: row.try_get("jit").map_err(corrupt)?,
        hint: row.try_get("hint").map_err(corrupt)?,
        created_at: row.try_get("created_at").map_err(corrupt)?,
        revision: u64::try_from(revision).map_err(corrupt)?,
    })
}

fn agent_from_row(row: &SqliteRow) -> Result<AgentRecord, DatastoreError> {
    Ok(AgentRecord {
        spiffe_id: SpiffeId::new(row.try_get("spiffe_id").map_err(corrupt)?).map_err(corrupt)?,
        serial: row.try_get("serial").map_err(corrupt)?,
        previous_serial: row.try_get("previous_serial").map_err(corrupt)?,
        expires_at: row.try_get("expires_at").map_err(corrupt)?,
        attested_at: row.try_get("attested_at").map_err(corrupt)?,
        banned: row.try_get("banned").map_err(corrupt)?,
        attestation_type: row.try_get("attestation_type").map_err(corrupt)?,
    })
}

fn task_from_row(row: &SqliteRow) -> Result<TaskRecord, DatastoreError> {
    let state: String = row.try_get("state").map_err(corrupt)?;
    let scopes: Vec<String> =
        serde_json::from_str(row.try_get("scopes").map_err(corrupt)?).map_err(corrupt)?;
    let decision: String = row.try_get("decision").map_err(corrupt)?;
    Ok(TaskRecord {
        id: row.try_get("id").map_err(corrupt)?,
        state: state.parse().map_err(corrupt)?,
        entry_id: row.try_get("entry_id").map_err(corrupt)?,
        spiffe_id: SpiffeId::new(row.try_get("spiffe_id").map_err(corrupt)?).map_err(corrupt)?,
        parent_id: SpiffeId::new(row.try_get("parent_id").map_err(corrupt)?).map_err(corrupt)?,
        provisioned: row.try_get("provisioned").map_err(corrupt)?,
        requester: row.try_get("requester").map_err(corrupt)?,
        approver: row.try_get("approver").map_err(corrupt)?,
        reason: row.try_get("reason").map_err(corrupt)?,
        ticket: row.try_get("ticket").map_err(corrupt)?,
        scopes,
        created_at: row.try_get("created_at").map_err(corrupt)?,
        activated_at: row.try_get("activated_at").map_err(corrupt)?,
        deadline: row.try_get("deadline").map_err(corrupt)?,
        ended_at: row.try_get("ended_at").map_err(corrupt)?,
        end_reason: row.try_get("end_reason").map_err(corrupt)?,
        decision: serde_json::from_str(&decision).map_err(corrupt)?,
    })
}

fn task_svid_from_row(row: &SqliteRow) -> Result<TaskSvid, DatastoreError> {
    Ok(TaskSvid {
        task_id: row.try_get("task_id").map_err(corrupt)?,
        serial: row.try_get("serial").map_err(corrupt)?,
        issuer_serial: row.try_get("issuer_serial").map_err(corrupt)?,
        not_after: row.try_get("not_after").map_err(corrupt)?,
    })
}

/// SQL list of the open states, for `state IN (...)`.
const OPEN_STATES: &str = "('pending_approval', 'active')";

fn ttl_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl SqliteDatastore {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub async fn open(path: &Path) -> Result<Self, DatastoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Switching a new file to WAL takes an exclusive lock that SQLite's busy handler
        // does not wait for: a process opening the same file at that instant is told
        // "database is locked" at once. Retry that (only that) for a few seconds.
        let mut attempt = 0;
        let pool = loop {
            match Self::connect(opts.clone()).await {
                Ok(pool) => break pool,
                Err(sqlx::Error::Database(db))
                    if attempt < 50 && matches!(db.code().as_deref(), Some("5" | "6")) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(backend(e)),
            }
        };
        // The database holds token hashes and agent records: keep it private.
        set_private(path);
        Ok(Self {
            pool,
            audit_lock: std::sync::Arc::default(),
        })
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(pool)
    }

    /// Runs `f` and then appends `audit` in one `BEGIN IMMEDIATE` transaction, committed
    /// only if `f` returns `Ok(Some(_))` (`Ok(None)`: nothing applied, rolled back).
    ///
    /// It runs to completion even if the caller's request is cancelled, so a transaction is
    /// never abandoned half-way on a pooled connection; IMMEDIATE takes the write lock up
    /// front (waiting up to the busy timeout), so a read of the audit chain head and the
    /// writes after it see no interleaved writer (a deferred transaction would fail with
    /// SQLITE_BUSY when it upgrades); and appends are serialised so each record chains onto
    /// the one before it.
    async fn write_tx<T, F>(&self, audit: &[AuditEvent], f: F) -> Result<Option<T>, DatastoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut sqlx::SqliteConnection,
            )
                -> futures::future::BoxFuture<'c, Result<Option<T>, DatastoreError>>
            + Send
            + 'static,
    {
        let pool = self.pool.clone();
        let lock = std::sync::Arc::clone(&self.audit_lock);
        let events = audit.to_vec();
        tokio::spawn(async move {
            let _guard = lock.lock().await;
            let mut conn = pool.acquire().await.map_err(backend)?;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            let result = match f(&mut conn).await {
                Ok(Some(v)) => append_in_tx(&mut conn, &events).await.map(|_| Some(v)),
                other => other,
            };
            let end = if matches!(result, Ok(Some(_))) {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            sqlx::query(end)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            result
        })
        .await
        .map_err(|e| DatastoreError::Backend(format!("write transaction task: {e}")))?
    }

    async fn write_entry(&self, e: &RegistrationEntry, insert: bool) -> Result<(), DatastoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        write_entry_on(&mut conn, e, insert).await
    }
}

async fn write_entry_on(
    conn: &mut sqlx::SqliteConnection,
    e: &RegistrationEntry,
    insert: bool,
) -> Result<(), DatastoreError> {
    {
        let sql = if insert {
            "INSERT INTO entries (spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl,
                dns_names, jit, hint, created_at, revision, id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        } else {
            "UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors = ?, x509_svid_ttl = ?,
                jwt_svid_ttl = ?, dns_names = ?, jit = ?, hint = ?, created_at = ?, revision = ?
             WHERE id = ?"
        };
        let revision = i64::try_from(e.revision).map_err(corrupt)?;
        let done = sqlx::query(sql)
            .bind(e.spiffe_id.as_str())
            .bind(e.parent_id.as_str())
            .bind(selectors_json(&e.selectors))
            .bind(ttl_secs(e.x509_svid_ttl))
            .bind(ttl_secs(e.jwt_svid_ttl))
            .bind(serde_json::Value::from(e.dns_names.clone()).to_string())
            .bind(e.jit)
            .bind(&e.hint)
            .bind(e.created_at)
            .bind(revision)
            .bind(&e.id)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(DatastoreError::NotFound(format!("entry {}", e.id)));
        }
        Ok(())
    }
}

async fn write_task_on(
    conn: &mut sqlx::SqliteConnection,
    t: &TaskRecord,
    expected: Option<&[TaskState]>,
) -> Result<bool, DatastoreError> {
    let cols = "state, entry_id, spiffe_id, parent_id, provisioned, requester, approver, reason,
        ticket, scopes, created_at, activated_at, deadline, ended_at, end_reason, decision, id";
    let sql = match expected {
        None => format!(
            "INSERT INTO tasks ({cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ),
        Some(states) => {
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            format!(
                "UPDATE tasks SET state = ?1, entry_id = ?2, spiffe_id = ?3, parent_id = ?4,
                    provisioned = ?5, requester = ?6, approver = ?7, reason = ?8, ticket = ?9,
                    scopes = ?10, created_at = ?11, activated_at = ?12, deadline = ?13,
                    ended_at = ?14, end_reason = ?15, decision = ?16
                 WHERE id = ?17 AND state IN ({})",
                list.join(", ")
            )
        }
    };
    let done = sqlx::query(&sql)
        .bind(t.state.as_str())
        .bind(&t.entry_id)
        .bind(t.spiffe_id.as_str())
        .bind(t.parent_id.as_str())
        .bind(t.provisioned)
        .bind(&t.requester)
        .bind(&t.approver)
        .bind(&t.reason)
        .bind(&t.ticket)
        .bind(serde_json::Value::from(t.scopes.clone()).to_string())
        .bind(t.created_at)
        .bind(t.activated_at)
        .bind(t.deadline)
        .bind(t.ended_at)
        .bind(&t.end_reason)
        .bind(t.decision.to_string())
        .bind(&t.id)
        .execute(&mut *conn)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                DatastoreError::Conflict(format!("entry {} already has an open task", t.entry_id))
            }
            e => backend(e),
        })?;
    Ok(done.rows_affected() == 1)
}

async fn append_in_tx(
    conn: &mut sqlx::SqliteConnection,
    events: &[AuditEvent],
) -> Result<Vec<AuditRecord>, DatastoreError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend)?
        .map(|r| -> Result<(i64, String), DatastoreError> {
            Ok((
                r.try_get("seq").map_err(corrupt)?,
                r.try_get("hash").map_err(corrupt)?,
            ))
        })
        .transpose()?;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let records = crate::audit::chain(last, at_ms, events);
    for r in &records {
        sqlx::query(
            "INSERT INTO audit_log (seq, at_ms, kind, task_id, subject, detail, prev_hash, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.seq)
        .bind(r.at_ms)
        .bind(&r.event.kind)
        .bind(&r.event.task_id)
        .bind(&r.event.subject)
        .bind(r.event.detail.to_string())
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }
    Ok(records)
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for p in [
        path.to_path_buf(),
        path.with_extension("sqlite3-wal"),
        path.with_extension("sqlite3-shm"),
    ] {
        if p.exists() {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
    }
}

#[async_trait::async_trait]
impl Datastore for SqliteDatastore {
    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), DatastoreError> {
        self.write_entry(entry, true).await
    }

    async fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), DatastoreError> {
        self.write_entry(entry, false).await
    }

    async fn delete_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let row = sqlx::query("DELETE FROM entries WHERE id = ? RETURNING *")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let row = sqlx::query("SELECT * FROM entries WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT * FROM entries
             WHERE (?1 IS NULL OR spiffe_id = ?1) AND (?2 IS NULL OR parent_id = ?2)
             ORDER BY created_at, id",
        )
        .bind(filter.spiffe_id.as_ref().map(SpiffeId::as_str))
        .bind(filter.parent_id.as_ref().map(SpiffeId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn create_join_token(
        &self,
        token_hash: &str,
        spiffe_id: &SpiffeId,
        expires_at: i64,
    ) -> Result<(), DatastoreError> {
        sqlx::query("INSERT INTO join_tokens (token_hash, spiffe_id, expires_at) VALUES (?, ?, ?)")
            .bind(token_hash)
            .bind(spiffe_id.as_str())
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn consume_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<ConsumedToken>, DatastoreError> {
        // One statement: SQLite serialises writers, so only one caller can delete the row.
        let row = sqlx::query(
            "DELETE FROM join_tokens WHERE token_hash = ? RETURNING spiffe_id, expires_at",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(ConsumedToken {
                spiffe_id: SpiffeId::new(r.try_get("spiffe_id").map_err(corrupt)?)
                    .map_err(corrupt)?,
                expires_at: r.try_get("expires_at").map_err(corrupt)?,
            })
        })
        .transpose()
    }

    async fn attest_agent(&self, a: &AgentRecord) -> Result<bool, DatastoreError> {
        let done = sqlx::query(
            "INSERT INTO agents (spiffe_id, serial, previous_serial, expires_at, attested_at,
                banned, attestation_type)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (spiffe_id) DO UPDATE SET serial = excluded.serial,
                previous_serial = excluded.previous_serial, expires_at = excluded.expires_at,
                attested_at = excluded.attested_at, banned = excluded.banned,
                attestation_type = excluded.attestation_type
             WHERE agents.banned = 0",
        )
        .bind(a.spiffe_id.as_str())
        .bind(&a.serial)
        .bind(&a.previous_serial)
        .bind(a.expires_at)
        .bind(a.attested_at)
        .bind(a.banned)
        .bind(&a.attestation_type)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew_agent(
        &self,
        id: &SpiffeId,
        expected_serial: &str,
        new_serial: &str,
        expires_at: i64,
    ) -> Result<bool, DatastoreError> {
        let done = sqlx::query(
            "UPDATE agents SET previous_serial = serial, serial = ?, expires_at = ?
             WHERE spiffe_id = ? AND serial = ? AND banned = 0",
        )
        .bind(new_serial)
        .bind(expires_at)
        .bind(id.as_str())
        .bind(expected_serial)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn ban_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let row = sqlx::query("UPDATE agents SET banned = 1 WHERE spiffe_id = ? RETURNING *")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let row = sqlx::query("SELECT * FROM agents WHERE spiffe_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, DatastoreError> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY attested_at, spiffe_id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn delete_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let row = sqlx::query("DELETE FROM agents WHERE spiffe_id = ? RETURNING *")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn append_audit(
        &self,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events.to_vec();
        let stored = self
            .write_tx(&[], move |conn| {
                Box::pin(async move { append_in_tx(conn, &events).await.map(Some) })
            })
            .await?;
        Ok(stored.unwrap_or_default())
    }

    async fn create_task(
        &self,
        task: &TaskRecord,
        provisioned_entry: Option<&RegistrationEntry>,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let task = task.clone();
        let entry = provisioned_entry.cloned();
        self.write_tx(audit, move |conn| {
            Box::pin(async move {
                if let Some(e) = &entry {
                    write_entry_on(conn, e, true).await?;
                }
                write_task_on(conn, &task, None).await.map(|_| Some(()))
            })
        })
        .await
        .map(|_| ())
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
                    if !write_task_on(conn, &task, Some(&expected)).await? {
                        return Ok(None);
                    }
                    if task.provisioned && !task.state.is_open() {
                        sqlx::query("DELETE FROM entries WHERE id = ?")
                            .bind(&task.entry_id)
                            .execute(&mut *conn)
                            .await
                            .map_err(backend)?;
                    }
                    Ok(Some(()))
                })
            })
            .await?;
        Ok(applied.is_some())
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, DatastoreError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(
        &self,
        state: Option<TaskState>,
    ) -> Result<Vec<TaskRecord>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE (?1 IS NULL OR state = ?1) ORDER BY created_at, id",
        )
        .bind(state.map(TaskState::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, DatastoreError> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM tasks WHERE state IN {OPEN_STATES} AND deadline <= ? ORDER BY deadline"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn open_task_for_entry(
        &self,
        entry_id: &str,
    ) -> Result<Option<TaskRecord>, DatastoreError> {
        let row = sqlx::query(&format!(
            "SELECT * FROM tasks WHERE entry_id = ? AND state IN {OPEN_STATES}"
        ))
        .bind(entry_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn record_task_svids(&self, svids: &[TaskSvid]) -> Result<(), DatastoreError> {
        if svids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for s in svids {
            sqlx::query(
                "INSERT OR REPLACE INTO task_svids (serial, task_id, issuer_serial, not_after)
                 VALUES (?, ?, ?, ?)",
            )
            .bind(&s.serial)
            .bind(&s.task_id)
            .bind(&s.issuer_serial)
            .bind(s.not_after)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn revoked_since(
        &self,
        now: i64,
    ) -> Result<(Vec<TaskRecord>, Vec<TaskSvid>), DatastoreError> {
        let tasks = sqlx::query(&format!(
            "SELECT * FROM tasks WHERE state NOT IN {OPEN_STATES} AND deadline > ?
             ORDER BY ended_at, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let svids = sqlx::query(&format!(
            "SELECT s.* FROM task_svids s JOIN tasks t ON t.id = s.task_id
             WHERE t.state NOT IN {OPEN_STATES} AND s.not_after > ? ORDER BY s.serial"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok((
            tasks.iter().map(task_from_row).collect::<Result<_, _>>()?,
            svids
                .iter()
                .map(task_svid_from_row)
                .collect::<Result<_, _>>()?,
        ))
    }

    async fn list_audit(&self, task_id: Option<&str>) -> Result<Vec<AuditRecord>, DatastoreError> {
        let rows =
            sqlx::query("SELECT * FROM audit_log WHERE (?1 IS NULL OR task_id = ?1) ORDER BY seq")
                .bind(task_id)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail").map_err(corrupt)?;
                Ok(AuditRecord {
                    seq: r.try_get("seq").map_err(corrupt)?,
                    at_ms: r.try_get("at_ms").map_err(corrupt)?,
                    event: AuditEvent {
                        kind: r.try_get("kind").map_err(corrupt)?,
                        task_id: r.try_get("task_id").map_err(corrupt)?,
                        subject: r.try_get("subject").map_err(corrupt)?,
                        // A record whose detail is no longer JSON was tampered with: keep the
                        // raw text so verification reports it instead of the listing failing.
                        detail: serde_json::from_str(&detail)
                            .unwrap_or(serde_json::Value::String(detail)),
                    },
                    prev_hash: r.try_get("prev_hash").map_err(corrupt)?,
                    hash: r.try_get("hash").map_err(corrupt)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, uid: u32) -> RegistrationEntry {
        RegistrationEntry {
            id: id.into(),
            spiffe_id: SpiffeId::new("spiffe://example.org/web").unwrap(),
            parent_id: SpiffeId::new("spiffe://example.org/agent").unwrap(),
            selectors: [Selector::unix(common::UnixKey::Uid, uid).unwrap()]
                .into_iter()
                .collect(),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            dns_names: vec!["a.example.org".into()],
            jit: false,
            hint: String::new(),
            created_at: 1,
            revision: 1,
        }
    }

    #[tokio::test]
    async fn entries_tokens_agents_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.sqlite3");
        let ds = SqliteDatastore::open(&path).await.unwrap();
        ds.create_entry(&entry("a", 1)).await.unwrap();
        assert!(matches!(
            ds.create_entry(&entry("b", 1)).await,
            Err(DatastoreError::Conflict(_))
        ));
        ds.create_entry(&entry("b", 2)).await.unwrap();
        let mut e = entry("b", 3);
        e.revision = 2;
        ds.update_entry(&e).await.unwrap();
        assert!(matches!(
            ds.update_entry(&entry("zzz", 9)).await,
            Err(DatastoreError::NotFound(_))
        ));
        let id = SpiffeId::new("spiffe://example.org/agent").unwrap();
        ds.create_join_token("h1", &id, 99).await.unwrap();
        let record = AgentRecord {
            spiffe_id: id.clone(),
            serial: "01".into(),
            previous_serial: String::new(),
            expires_at: 5,
            attested_at: 4,
            banned: false,
            attestation_type: "join_token".into(),
        };
        assert!(ds.attest_agent(&record).await.unwrap());
        // Compare-and-set renewal: a stale expected serial changes nothing.
        assert!(!ds.renew_agent(&id, "zz", "02", 6).await.unwrap());
        assert!(ds.renew_agent(&id, "01", "02", 6).await.unwrap());
        assert!(ds.renew_agent(&id, "02", "01", 7).await.unwrap());
        drop(ds);

        let ds = SqliteDatastore::open(&path).await.unwrap();
        let all = ds.list_entries(&EntryFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(ds.get_entry("b").await.unwrap().unwrap(), e);
        let tok = ds.consume_join_token("h1").await.unwrap().unwrap();
        assert_eq!(tok.spiffe_id, id);
        assert_eq!(
            ds.consume_join_token("h1").await.unwrap(),
            None,
            "single use"
        );
        let got = ds.get_agent(&id).await.unwrap().unwrap();
        assert_eq!(
            (got.serial.as_str(), got.previous_serial.as_str()),
            ("01", "02")
        );
        // A banned agent cannot be renewed or re-attested.
        assert!(ds.ban_agent(&id).await.unwrap().unwrap().banned);
        assert!(!ds.renew_agent(&id, "01", "03", 8).await.unwrap());
        assert!(!ds.attest_agent(&record).await.unwrap());
        assert!(ds.get_agent(&id).await.unwrap().unwrap().banned);
        assert!(ds.delete_agent(&id).await.unwrap().is_some());
        assert!(ds.get_agent(&id).await.unwrap().is_none());
        assert_eq!(ds.delete_entry("a").await.unwrap().unwrap().id, "a");
        assert!(ds.delete_entry("a").await.unwrap().is_none());
        let filter = EntryFilter {
            parent_id: Some(SpiffeId::new("spiffe://example.org/other").unwrap()),
            ..Default::default()
        };
        assert!(ds.list_entries(&filter).await.unwrap().is_empty());
    }
}
