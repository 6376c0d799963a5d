//! Real databases for the datastore tests: a SQLite file in a temporary directory, or a
//! fresh schema `tessera_t_<random>` in the PostgreSQL test database (dropped afterwards);
//! each empty, or loaded with a datastore written by release 7c0b47d (`fixtures/`, made by
//! `fixtures/generate.sh`) and not yet opened by this code.
//!
//! PostgreSQL is `TESSERA_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`);
//! the tests FAIL, never skip, when it does not answer: `.ci/run` starts PostgreSQL before
//! the tests.
//!
//! Besides opening datastores ([`Backend`]), [`TestDatabase`] looks under them: scripts
//! and queries on a connection of their own and the migration runner alone ([`Under`],
//! written once over [`Connect`]), the schema.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::Pool;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::migrate::{self, MigrateError, Report};
use super::postgres::{PostgresDatastore, redact_url};
use super::sql::{Cells as _, Dialect, Io as _};
use super::sqlite::SqliteDatastore;
use super::{Datastore, DatastoreError};

/// Where PostgreSQL is unless `TESSERA_TEST_POSTGRES_URL` says otherwise.
const DEFAULT_POSTGRES_URL: &str = "postgres://root@127.0.0.1:5432/test";
/// The SQLite datastore of release 7c0b47d (`sqlite3 .dump`).
const SQLITE_FIXTURE: &str = include_str!("fixtures/sqlite-7c0b47d.sql");
/// The PostgreSQL datastore of release 7c0b47d (`pg_dump` of the schema below).
const POSTGRES_FIXTURE: &str = include_str!("fixtures/postgres-7c0b47d.sql");
/// The schema the PostgreSQL fixture was dumped from; loading renames it.
const POSTGRES_FIXTURE_SCHEMA: &str = "tessera_fixture";

/// A database that datastore objects can be opened on.
#[async_trait::async_trait]
pub(super) trait Backend: Send + Sync {
    /// A new datastore object on the database (which it migrates if needed), or the error.
    async fn try_open(&self) -> Result<Arc<dyn Datastore>, DatastoreError>;

    /// A new datastore object on the same database: another server, or a restarted one.
    async fn open(&self) -> Arc<dyn Datastore> {
        self.try_open().await.unwrap()
    }
}

/// How a test database is reached from under the datastore.
#[async_trait::async_trait]
pub(super) trait Connect: Send + Sync {
    /// The backend.
    type Dialect: Dialect;
    /// A pool of one connection on the database (no migration).
    async fn connect(&self) -> Pool<Self::Dialect>;
}

/// Scripts, queries and the migration runner on a database, written once for both
/// backends.
#[async_trait::async_trait]
pub(super) trait Under: Send + Sync {
    /// Runs a script of statements on a connection of its own.
    async fn script(&self, sql: &str);
    /// The column `t` (text) of each row of `sql`.
    async fn texts(&self, sql: &str) -> Vec<String>;
    /// Runs the migration runner alone on a pool of its own.
    async fn migrate(&self) -> Result<Report, MigrateError>;
}

#[async_trait::async_trait]
impl<T: Connect> Under for T {
    async fn script(&self, sql: &str) {
        let pool = self.connect().await;
        let mut conn = pool.acquire().await.unwrap();
        T::Dialect::execute_script(&mut conn, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(conn);
        pool.close().await;
    }

    async fn texts(&self, sql: &str) -> Vec<String> {
        let pool = self.connect().await;
        let mut conn = pool.acquire().await.unwrap();
        let rows = T::Dialect::fetch_all(&mut conn, sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(conn);
        pool.close().await;
        rows.iter().map(|r| r.text("t").unwrap()).collect()
    }

    async fn migrate(&self) -> Result<Report, MigrateError> {
        let pool = self.connect().await;
        let report = migrate::migrate(&pool).await;
        pool.close().await;
        report
    }
}

/// A database the tests open datastores on and look under.
#[async_trait::async_trait]
pub(super) trait TestDatabase: Backend + Under {
    /// Loads the datastore of release 7c0b47d into this (empty) database.
    async fn load_fixture(&self);
    /// The schema, one line per column, index or constraint (without white space on
    /// SQLite), in a stable order: equal for two databases with the same schema.
    async fn schema(&self) -> Vec<String>;
    /// A statement after which version 2's script fails (something in its way).
    fn blocks_version_2(&self) -> &'static str;
    /// The names of the tables, sorted.
    async fn tables(&self) -> Vec<String>;

    /// This database loaded with the fixture, opened once (so migrated), then emptied:
    /// the schema of an upgraded database without the release's records.
    async fn emptied(self) -> Self
    where
        Self: Sized,
    {
        self.load_fixture().await;
        drop(self.open().await);
        for table in migrate::BASELINE_TABLES {
            self.script(&format!("DELETE FROM {table}")).await;
        }
        self
    }
}

/// A SQLite file in a temporary directory (removed with this value).
pub(super) struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Sqlite {
    /// No file yet: the first open creates it.
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("datastore.sqlite3");
        Self { _dir: dir, path }
    }

    /// The fixture, opened once by this code, emptied.
    pub(super) async fn upgraded() -> Self {
        Self::new().emptied().await
    }

    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10))
    }
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn try_open(&self) -> Result<Arc<dyn Datastore>, DatastoreError> {
        Ok(Arc::new(SqliteDatastore::open(&self.path).await?))
    }
}

#[async_trait::async_trait]
impl Connect for Sqlite {
    type Dialect = sqlx::Sqlite;

    async fn connect(&self) -> Pool<sqlx::Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(self.options())
            .await
            .unwrap()
    }
}

#[async_trait::async_trait]
impl TestDatabase for Sqlite {
    async fn load_fixture(&self) {
        self.script(SQLITE_FIXTURE).await;
    }

    async fn schema(&self) -> Vec<String> {
        let rows = self
            .texts(
                "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS t FROM sqlite_master
                 WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
            )
            .await;
        // The release created its tables with other indentation than the scripts.
        rows.into_iter()
            .map(|r| r.chars().filter(|c| !c.is_whitespace()).collect())
            .collect()
    }

    fn blocks_version_2(&self) -> &'static str {
        "CREATE TABLE entries_v2 (id TEXT)"
    }

    async fn tables(&self) -> Vec<String> {
        self.texts("SELECT name AS t FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .await
    }
}

/// A fresh schema `tessera_t_<random>` in the test database; dropped with this value.
pub(crate) struct Postgres {
    base: String,
    schema: String,
    /// Connection URL whose `search_path` is the schema.
    pub(crate) url: String,
}

fn postgres_base_url() -> String {
    std::env::var("TESSERA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

impl Postgres {
    /// Creates the schema; panics (fails the test) if PostgreSQL does not answer.
    pub(crate) async fn new() -> Self {
        let base = postgres_base_url();
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required by the datastore tests and does not answer at {} ({e}). \
                 Start it (.ci/run does) or point TESSERA_TEST_POSTGRES_URL at one.",
                redact_url(&base)
            )
        });
        let schema = format!("tessera_t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Self { base, schema, url }
    }

    /// The fixture, opened once by this code, emptied.
    pub(super) async fn upgraded() -> Self {
        Self::new().await.emptied().await
    }

    /// The schema's name.
    pub(super) fn schema_name(&self) -> &str {
        &self.schema
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime: use a runtime of its own on a thread.
        let base = self.base.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&base)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&sql)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.schema);
        }
    }
}

#[async_trait::async_trait]
impl Backend for Postgres {
    async fn try_open(&self) -> Result<Arc<dyn Datastore>, DatastoreError> {
        Ok(Arc::new(PostgresDatastore::open(&self.url).await?))
    }
}

#[async_trait::async_trait]
impl Connect for Postgres {
    type Dialect = sqlx::Postgres;

    async fn connect(&self) -> Pool<sqlx::Postgres> {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

#[async_trait::async_trait]
impl TestDatabase for Postgres {
    async fn load_fixture(&self) {
        // The dump creates and names its own schema; this database's schema exists
        // already. Lines starting with `\` are psql commands (`\restrict`), not SQL.
        let script: String = POSTGRES_FIXTURE
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .filter(|l| *l != format!("CREATE SCHEMA {POSTGRES_FIXTURE_SCHEMA};"))
            .map(|l| {
                l.replace(
                    &format!("{POSTGRES_FIXTURE_SCHEMA}."),
                    &format!("{}.", self.schema),
                ) + "\n"
            })
            .collect();
        self.script(&script).await;
    }

    async fn schema(&self) -> Vec<String> {
        self.texts(
            "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
                 || is_nullable || ' collate ' || coalesce(collation_name, '-') AS t
             FROM information_schema.columns WHERE table_schema = current_schema()
             UNION ALL
             SELECT 'index ' || replace(indexdef, current_schema() || '.', '')
             FROM pg_indexes WHERE schemaname = current_schema()
             UNION ALL
             SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '
                 || pg_get_constraintdef(oid)
             FROM pg_constraint WHERE connamespace = to_regnamespace(current_schema())
             ORDER BY 1",
        )
        .await
    }

    fn blocks_version_2(&self) -> &'static str {
        // A column a view depends on cannot change its collation.
        "CREATE VIEW entry_ids AS SELECT id FROM entries"
    }

    async fn tables(&self) -> Vec<String> {
        self.texts(
            "SELECT tablename::text AS t FROM pg_catalog.pg_tables
             WHERE schemaname = current_schema() ORDER BY tablename",
        )
        .await
    }
}
