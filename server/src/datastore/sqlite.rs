//! Embedded SQLite backend (the default): what SQLite does differently from the shared SQL
//! layer (`sql.rs`), namely opening the file and starting transactions.
//!
//! WAL journal with `synchronous = FULL`: a write returns only after it reached the disk,
//! so an accepted API call survives `kill -9` and power loss. The file is private (0600):
//! it holds token hashes and agent records. Write transactions and migrations start with
//! `BEGIN IMMEDIATE`, which takes the database's write lock up front (waiting up to the
//! busy timeout): a read of the audit chain head or of the schema version and the writes
//! after it then see no interleaved writer (a deferred transaction would instead fail with
//! `SQLITE_BUSY` when it upgrades), and processes opening one file together migrate it
//! once.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Pool, Sqlite, Transaction};

use super::DatastoreError;
use super::migrate::{self, MigrateError, Migration};
use super::sql::{Dialect, Placeholders, SqlStore};

/// SQLite-backed datastore.
pub type SqliteDatastore = SqlStore<Sqlite>;

#[async_trait::async_trait]
impl Dialect for Sqlite {
    const COUNT_TABLES: &'static str =
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1";
    const PLACEHOLDERS: Placeholders = Placeholders::Anonymous;

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn begin_migration(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn script(migration: &Migration) -> &'static str {
        migration.sqlite
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database at `path` and brings its schema to the
    /// current version.
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
            match connect(opts.clone()).await {
                Ok(pool) => break pool,
                Err(e) if attempt < 50 && is_locked(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // The caller names the file (a server says "opening datastore PATH").
                Err(e) => return Err(DatastoreError::Backend(e.to_string())),
            }
        };
        set_private(path);
        Ok(Self::new(pool, path.display().to_string()))
    }
}

/// Migrates the file on a connection of its own, then opens the serving pool.
///
/// A connection reads the schema when it opens, and sqlx keeps the column list of each
/// statement it prepares. A pooled connection opened half-way through the migrations (the
/// pool opens one whenever none is idle at that instant) would keep an older schema until
/// its next transaction, so a `SELECT *` first prepared on it could be cached with fewer
/// columns than its rows then carry, which panics sqlx's SQLite worker (and the query
/// yields no rows). Every serving connection therefore opens after the last migration.
async fn connect(opts: SqliteConnectOptions) -> Result<SqlitePool, MigrateError> {
    let migrating = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone())
        .await?;
    let migrated = migrate::migrate(&migrating).await;
    migrating.close().await;
    migrated?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED` outside a migration's own work.
fn is_locked(e: &MigrateError) -> bool {
    matches!(e, MigrateError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("5" | "6")))
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
