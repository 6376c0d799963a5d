//! PostgreSQL backend, for a database shared by several servers.
//!
//! Same tables and semantics as the SQLite backend (integers as `BIGINT`, flags as
//! `BOOLEAN`, JSON as `TEXT` so audit hashes are computed over identical strings). Every
//! write returns after its commit, which is durable: connections set
//! `synchronous_commit = on` (PostgreSQL's default) whatever the database's setting.
//!
//! Several servers may append to the same audit chain: every transaction that appends
//! audit records first takes a transaction-scoped advisory lock derived from the
//! `audit_log` table (a fixed prefix plus the table's OID, so two schemas in one database
//! keep independent chains), and only then reads the chain head. The lock is released at
//! commit, after the new records are visible, so the next writer — in this process or
//! another — always chains onto them. Transactions run at `READ COMMITTED`, so the head is
//! read with a snapshot taken after the lock was granted. The schema is created at open
//! under another advisory lock, so servers starting together do not race.
//!
//! The connection URL may carry a password; it never appears in `Debug`, logs or errors
//! ([`redact_url`]).

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use common::task::TaskState;
use common::{RegistrationEntry, Selector, SelectorSet, SpiffeId};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, PgConnection, Row as _};

use super::{
    AgentRecord, ConsumedToken, Datastore, DatastoreError, EntryFilter, TaskRecord, TaskSvid,
};
use crate::audit::{AuditEvent, AuditRecord};

const SCHEMA: &[&str] = &[
    // `identity` is SHA-256 over (spiffe_id, parent_id, selectors): the uniqueness rule of
    // SQLite's `UNIQUE (spiffe_id, parent_id, selectors)`, without PostgreSQL's limit on
    // the size of an index row (an entry may carry 64 selectors of 1 KiB).
    "CREATE TABLE IF NOT EXISTS entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        identity TEXT NOT NULL,
        x509_svid_ttl BIGINT NOT NULL,
        jwt_svid_ttl BIGINT NOT NULL,
        dns_names TEXT NOT NULL,
        jit BOOLEAN NOT NULL,
        hint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revision BIGINT NOT NULL,
        CONSTRAINT entries_identity UNIQUE (identity)
    )",
    "CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent_id)",
    "CREATE INDEX IF NOT EXISTS entries_spiffe ON entries (spiffe_id)",
    "CREATE TABLE IF NOT EXISTS join_tokens (
        token_hash TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
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
        provisioned BOOLEAN NOT NULL,
        requester TEXT NOT NULL,
        approver TEXT NOT NULL,
        reason TEXT NOT NULL,
        ticket TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        activated_at BIGINT NOT NULL,
        deadline BIGINT NOT NULL,
        ended_at BIGINT NOT NULL,
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
        not_after BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS task_svids_task ON task_svids (task_id)",
    "CREATE TABLE IF NOT EXISTS agents (
        spiffe_id TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        previous_serial TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        attested_at BIGINT NOT NULL,
        banned BOOLEAN NOT NULL,
        attestation_type TEXT NOT NULL
    )",
];

/// Advisory lock held while the schema is created ("TESSSCHM").
const SCHEMA_LOCK: i64 = 0x5445_5353_5343_484D;
/// High 32 bits of the advisory lock that serialises audit appends ("TESA"); the low 32
/// bits are the OID of the `audit_log` table in use.
const AUDIT_LOCK_PREFIX: i64 = 0x5445_5341_0000_0000;
/// How long `open` waits for the first connection, and the pool for a free one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per server.
const MAX_CONNECTIONS: u32 = 8;

/// PostgreSQL-backed datastore.
#[derive(Clone)]
pub struct PostgresDatastore {
    pool: PgPool,
    /// Serialises this process's audit appends (the advisory lock serialises processes);
    /// waiting here rather than on the advisory lock keeps pooled connections free.
    audit_lock: Arc<tokio::sync::Mutex<()>>,
    /// The URL with its password replaced, for `Debug`.
    shown: String,
}

impl std::fmt::Debug for PostgresDatastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDatastore")
            .field("url", &self.shown)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***` (in the user-info part and in a `password=`
/// query parameter). When the URL is too malformed to tell where the user info ends,
/// everything between the scheme and the last `@` is replaced, so a password is never
/// shown.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => match rest.rsplit_once('@') {
            // An `@` after a `/`, `?` or `#`: a malformed URL (or a password holding one of
            // them unescaped). Show nothing of what comes before it.
            Some((_, after)) => return format!("{scheme}***@{}", redact_query(after)),
            None => authority.to_owned(),
        },
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// Replaces the value of `password=` query parameters.
fn redact_query(s: &str) -> String {
    let Some((path, query)) = s.split_once('?') else {
        return s.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

/// Checks that `url` is a PostgreSQL connection URL this backend can use; the error names
/// the problem without the password.
pub fn validate_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{} is not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            redact_url(url)
        ));
    }
    connect_options(url).map(|_| ())
}

fn connect_options(url: &str) -> Result<PgConnectOptions, String> {
    PgConnectOptions::from_str(url)
        // A commit returns once it is on disk, whatever the database's default says.
        .map(|o| {
            o.application_name("tessera-server")
                .options([("synchronous_commit", "on")])
        })
        .map_err(|e| {
            format!(
                "{} is not a valid PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE): {}",
                redact_url(url),
                scrub(&e.to_string(), url)
            )
        })
}

/// Removes the URL's password from an error message, should a driver ever echo it.
fn scrub(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => message.replace(p, "***"),
        None => message.to_owned(),
    }
}

fn backend(e: sqlx::Error) -> DatastoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return DatastoreError::Conflict(match db.constraint() {
            Some("entries_identity" | "entries_pkey") => {
                "an entry with the same SPIFFE ID, parent ID and selectors already exists".into()
            }
            Some(c) => format!("duplicate key ({c})"),
            None => db.message().to_owned(),
        });
    }
    DatastoreError::Backend(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Corrupt(e.to_string())
}

/// Canonical selector encoding (as SQLite's): a JSON array of sorted `type:value` strings.
fn selectors_json(s: &SelectorSet) -> String {
    let list: Vec<String> = s.iter().map(ToString::to_string).collect();
    serde_json::Value::from(list).to_string()
}

/// What makes an entry unique: SHA-256 (hex) of `[spiffe_id, parent_id, selectors]`.
fn identity(e: &RegistrationEntry, selectors: &str) -> String {
    let key = serde_json::json!([e.spiffe_id.as_str(), e.parent_id.as_str(), selectors]);
    hex::encode(Sha256::digest(key.to_string().as_bytes()))
}

fn entry_from_row(row: &PgRow) -> Result<RegistrationEntry, DatastoreError> {
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

fn agent_from_row(row: &PgRow) -> Result<AgentRecord, DatastoreError> {
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

fn task_from_row(row: &PgRow) -> Result<TaskRecord, DatastoreError> {
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

fn task_svid_from_row(row: &PgRow) -> Result<TaskSvid, DatastoreError> {
    Ok(TaskSvid {
        task_id: row.try_get("task_id").map_err(corrupt)?,
        serial: row.try_get("serial").map_err(corrupt)?,
        issuer_serial: row.try_get("issuer_serial").map_err(corrupt)?,
        not_after: row.try_get("not_after").map_err(corrupt)?,
    })
}

fn audit_from_row(r: &PgRow) -> Result<AuditRecord, DatastoreError> {
    let detail: String = r.try_get("detail").map_err(corrupt)?;
    Ok(AuditRecord {
        seq: r.try_get("seq").map_err(corrupt)?,
        at_ms: r.try_get("at_ms").map_err(corrupt)?,
        event: AuditEvent {
            kind: r.try_get("kind").map_err(corrupt)?,
            task_id: r.try_get("task_id").map_err(corrupt)?,
            subject: r.try_get("subject").map_err(corrupt)?,
            // A record whose detail is no longer JSON was tampered with: keep the raw text
            // so verification reports it instead of the listing failing.
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        },
        prev_hash: r.try_get("prev_hash").map_err(corrupt)?,
        hash: r.try_get("hash").map_err(corrupt)?,
    })
}

/// SQL list of the open states, for `state IN (...)`.
const OPEN_STATES: &str = "('pending_approval', 'active')";

fn ttl_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl PostgresDatastore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, any
    /// parameter sqlx accepts, e.g. `?sslmode=disable` or `?options=-c%20search_path%3DS`)
    /// and creates the schema if needed. Fails at once, naming the cause, if the database
    /// cannot be reached.
    pub async fn open(url: &str) -> Result<Self, DatastoreError> {
        let shown = redact_url(url);
        let opts = connect_options(url).map_err(DatastoreError::Backend)?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DatastoreError::Backend(format!("{what} {shown}: {}", scrub(&e.to_string(), url)))
        };
        // One connection attempt first: the pool would retry a refused connection until
        // its timeout and then report only that it timed out.
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| {
                fail(
                    "cannot connect to PostgreSQL at",
                    &format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|e| fail("cannot connect to PostgreSQL at", &e))?;
        create_schema(&mut conn)
            .await
            .map_err(|e| fail("cannot create the schema in", &e))?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| fail("cannot connect to PostgreSQL at", &e))?;
        Ok(Self {
            pool,
            audit_lock: Arc::default(),
            shown,
        })
    }

    /// Closes the pool's connections (waits for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `f` and then appends `audit` in one transaction, committed only if `f` returns
    /// `Ok(Some(_))` (`Ok(None)`: nothing applied, rolled back).
    ///
    /// It runs to completion even if the caller's request is cancelled, so a transaction is
    /// never abandoned half-way. The audit advisory lock is taken first, so the chain head
    /// read at the end is the one every other server sees, and nothing is appended after
    /// it until this transaction ends.
    async fn write_tx<T, F>(&self, audit: &[AuditEvent], f: F) -> Result<Option<T>, DatastoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut PgConnection,
            )
                -> futures::future::BoxFuture<'c, Result<Option<T>, DatastoreError>>
            + Send
            + 'static,
    {
        let pool = self.pool.clone();
        let lock = Arc::clone(&self.audit_lock);
        let events = audit.to_vec();
        tokio::spawn(async move {
            let _guard = lock.lock().await;
            let mut tx = pool.begin().await.map_err(backend)?;
            // Each statement sees what was committed before it started: the chain head is
            // read after the lock is granted (REPEATABLE READ would read it from the
            // snapshot of the lock statement).
            sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1 + 'audit_log'::regclass::oid::bigint)")
                .bind(AUDIT_LOCK_PREFIX)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            let result = match f(&mut tx).await {
                Ok(Some(v)) => append_in_tx(&mut tx, &events).await.map(|_| Some(v)),
                other => other,
            };
            if matches!(result, Ok(Some(_))) {
                tx.commit().await.map_err(backend)?;
            } else {
                // Nothing was applied either way: if the rollback fails, the connection is
                // gone and the server has rolled back already.
                let _ = tx.rollback().await;
            }
            result
        })
        .await
        .map_err(|e| DatastoreError::Backend(format!("write transaction task: {e}")))?
    }
}

async fn create_schema(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    // `IF NOT EXISTS` on an existing table is a NOTICE; keep it out of the server's log.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await?;
    for stmt in SCHEMA {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    tx.commit().await
}

async fn write_entry_on(
    conn: &mut PgConnection,
    e: &RegistrationEntry,
    insert: bool,
) -> Result<(), DatastoreError> {
    let sql = if insert {
        "INSERT INTO entries (spiffe_id, parent_id, selectors, identity, x509_svid_ttl,
            jwt_svid_ttl, dns_names, jit, hint, created_at, revision, id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    } else {
        "UPDATE entries SET spiffe_id = $1, parent_id = $2, selectors = $3, identity = $4,
            x509_svid_ttl = $5, jwt_svid_ttl = $6, dns_names = $7, jit = $8, hint = $9,
            created_at = $10, revision = $11
         WHERE id = $12"
    };
    let revision = i64::try_from(e.revision).map_err(corrupt)?;
    let selectors = selectors_json(&e.selectors);
    let done = sqlx::query(sql)
        .bind(e.spiffe_id.as_str())
        .bind(e.parent_id.as_str())
        .bind(&selectors)
        .bind(identity(e, &selectors))
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

async fn write_task_on(
    conn: &mut PgConnection,
    t: &TaskRecord,
    expected: Option<&[TaskState]>,
) -> Result<bool, DatastoreError> {
    let cols = "state, entry_id, spiffe_id, parent_id, provisioned, requester, approver, reason,
        ticket, scopes, created_at, activated_at, deadline, ended_at, end_reason, decision, id";
    let sql = match expected {
        None => format!(
            "INSERT INTO tasks ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        ),
        Some(states) => {
            // `as_str` names are fixed identifiers, never input: safe to inline.
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            let list = if list.is_empty() {
                "NULL".to_owned()
            } else {
                list.join(", ")
            };
            format!(
                "UPDATE tasks SET state = $1, entry_id = $2, spiffe_id = $3, parent_id = $4,
                    provisioned = $5, requester = $6, approver = $7, reason = $8, ticket = $9,
                    scopes = $10, created_at = $11, activated_at = $12, deadline = $13,
                    ended_at = $14, end_reason = $15, decision = $16
                 WHERE id = $17 AND state IN ({list})"
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

/// Appends `events` after the chain head. The caller holds the audit advisory lock.
async fn append_in_tx(
    conn: &mut PgConnection,
    events: &[AuditEvent],
) -> Result<Vec<AuditRecord>, DatastoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

#[async_trait::async_trait]
impl Datastore for PostgresDatastore {
    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), DatastoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        write_entry_on(&mut conn, entry, true).await
    }

    async fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), DatastoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        write_entry_on(&mut conn, entry, false).await
    }

    async fn delete_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let row = sqlx::query("DELETE FROM entries WHERE id = $1 RETURNING *")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let row = sqlx::query("SELECT * FROM entries WHERE id = $1")
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
            r#"SELECT * FROM entries
             WHERE ($1::text IS NULL OR spiffe_id = $1) AND ($2::text IS NULL OR parent_id = $2)
             ORDER BY created_at, id COLLATE "C""#,
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
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, spiffe_id, expires_at) VALUES ($1, $2, $3)",
        )
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
        // One statement: a concurrent DELETE of the same row waits for this one and then
        // finds the row gone, so only one caller gets it.
        let row = sqlx::query(
            "DELETE FROM join_tokens WHERE token_hash = $1 RETURNING spiffe_id, expires_at",
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
        // One statement: the conflicting row is locked and its `banned` re-read before the
        // update, so a ban committed concurrently is never overwritten.
        let done = sqlx::query(
            "INSERT INTO agents (spiffe_id, serial, previous_serial, expires_at, attested_at,
                banned, attestation_type)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (spiffe_id) DO UPDATE SET serial = excluded.serial,
                previous_serial = excluded.previous_serial, expires_at = excluded.expires_at,
                attested_at = excluded.attested_at, banned = excluded.banned,
                attestation_type = excluded.attestation_type
             WHERE agents.banned = false",
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
            "UPDATE agents SET previous_serial = serial, serial = $1, expires_at = $2
             WHERE spiffe_id = $3 AND serial = $4 AND banned = false",
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
        let row = sqlx::query("UPDATE agents SET banned = true WHERE spiffe_id = $1 RETURNING *")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let row = sqlx::query("SELECT * FROM agents WHERE spiffe_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, DatastoreError> {
        let rows =
            sqlx::query(r#"SELECT * FROM agents ORDER BY attested_at, spiffe_id COLLATE "C""#)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn delete_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let row = sqlx::query("DELETE FROM agents WHERE spiffe_id = $1 RETURNING *")
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

    async fn list_audit(&self, task_id: Option<&str>) -> Result<Vec<AuditRecord>, DatastoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE ($1::text IS NULL OR task_id = $1) ORDER BY seq",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(audit_from_row).collect()
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
                        sqlx::query("DELETE FROM entries WHERE id = $1")
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
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
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
            r#"SELECT * FROM tasks WHERE ($1::text IS NULL OR state = $1)
             ORDER BY created_at, id COLLATE "C""#,
        )
        .bind(state.map(TaskState::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, DatastoreError> {
        let rows = sqlx::query(&format!(
            r#"SELECT * FROM tasks WHERE state IN {OPEN_STATES} AND deadline <= $1
             ORDER BY deadline, id COLLATE "C""#
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
            "SELECT * FROM tasks WHERE entry_id = $1 AND state IN {OPEN_STATES}"
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
                "INSERT INTO task_svids (serial, task_id, issuer_serial, not_after)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (serial) DO UPDATE SET task_id = excluded.task_id,
                    issuer_serial = excluded.issuer_serial, not_after = excluded.not_after",
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
            r#"SELECT * FROM tasks WHERE state NOT IN {OPEN_STATES} AND deadline > $1
             ORDER BY ended_at, id COLLATE "C""#
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let svids = sqlx::query(&format!(
            r#"SELECT s.* FROM task_svids s JOIN tasks t ON t.id = s.task_id
             WHERE t.state NOT IN {OPEN_STATES} AND s.not_after > $1
             ORDER BY s.serial COLLATE "C""#
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_shown() {
        for (url, shown) in [
            (
                "postgres://tessera:s3cret@db.example:5432/tessera",
                "postgres://tessera:***@db.example:5432/tessera",
            ),
            (
                "postgresql://tessera@db/tessera?sslmode=disable",
                "postgresql://tessera@db/tessera?sslmode=disable",
            ),
            (
                "postgres://db/tessera?user=t&password=s3cret&sslmode=disable",
                "postgres://db/tessera?user=t&password=***&sslmode=disable",
            ),
            ("postgres://u:pa/s3cret@db/x", "postgres://***@db/x"),
            ("postgres://u:s3cret@", "postgres://u:***@"),
            ("sqlite", "sqlite"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let err = validate_url("postgres://u:s3cret@db:notaport/x").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("postgres://u:***@db:notaport/x"), "{err}");
        assert!(validate_url("mysql://u:s3cret@db/x").is_err());
        assert!(validate_url("postgres://u:s3cret@db:5432/x").is_ok());
        assert_eq!(
            scrub("bad s3cret here", "postgres://u:s3cret@h/d"),
            "bad *** here"
        );
    }

    #[tokio::test]
    async fn commits_are_durable_whatever_the_database_default() {
        let db = crate::datastore::conformance::Postgres::new().await;
        let url = format!("{}&options=-c%20synchronous_commit%3Doff", db.url);
        let ds = PostgresDatastore::open(&url).await.unwrap();
        let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit")
            .fetch_one(&ds.pool)
            .await
            .unwrap();
        assert_eq!(setting, "on");
        ds.close().await;
    }

    #[tokio::test]
    async fn unreachable_database_is_a_clear_error_without_the_password() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://tessera:s3cret@127.0.0.1:{port}/tessera");
        let err = PostgresDatastore::open(&url).await.unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(
            err.contains("cannot connect to PostgreSQL at postgres://tessera:***@127.0.0.1"),
            "{err}"
        );
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }
}
