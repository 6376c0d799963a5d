//! PostgreSQL backend, for a database shared by several servers: what PostgreSQL does
//! differently from the shared SQL layer (`sql.rs`), namely connecting (URLs, passwords)
//! and serialising writers across processes.
//!
//! Every write returns after its commit, which is durable: connections set
//! `synchronous_commit = on` (PostgreSQL's default) whatever the database's setting.
//!
//! Several servers may append to the same audit chain: every write transaction first
//! takes a transaction-scoped advisory lock derived from the `audit_log` table (a fixed
//! prefix plus the table's OID, so two schemas in one database keep independent chains),
//! and only then reads the chain head. The lock is released at commit, after the new
//! records are visible, so the next writer (in this process or another) always chains
//! onto them. Write transactions run at `READ COMMITTED`, so the head is read with a
//! snapshot taken after the lock was granted (`REPEATABLE READ` would read it from the
//! snapshot of the lock statement). Migrations run under another advisory lock, so
//! servers starting together do not race.
//!
//! The connection URL may carry a password; it never appears in `Debug`, logs or errors
//! ([`redact_url`]).

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, Pool, Postgres, Transaction};

use super::DatastoreError;
use super::migrate::{self, Migration};
use super::sql::{Dialect, SqlStore};

/// Advisory lock held while the schema is migrated ("TESSSCHM").
const SCHEMA_LOCK: i64 = 0x5445_5353_5343_484D;
/// High 32 bits of the advisory lock that serialises audit appends ("TESA"); the low 32
/// bits are the OID of the `audit_log` table in use.
const AUDIT_LOCK_PREFIX: i64 = 0x5445_5341_0000_0000;
/// How long `open` waits for the first connection, and the pool for a free one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per server.
const MAX_CONNECTIONS: u32 = 8;

/// PostgreSQL-backed datastore.
pub type PostgresDatastore = SqlStore<Postgres>;

#[async_trait::async_trait]
impl Dialect for Postgres {
    // `current_schema()` is where unqualified names are created: the first schema of the
    // `search_path` that exists.
    const COUNT_TABLES: &'static str = "SELECT count(*) AS n FROM pg_catalog.pg_tables
        WHERE schemaname = current_schema() AND tablename::text = $1";

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1 + 'audit_log'::regclass::oid::bigint)")
            .bind(AUDIT_LOCK_PREFIX)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn begin_migration(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await?;
        // Keep the NOTICEs of migration scripts out of the server's log.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    fn script(migration: &Migration) -> &'static str {
        migration.postgres
    }
}

impl SqlStore<Postgres> {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, any
    /// parameter sqlx accepts, e.g. `?sslmode=disable` or `?options=-c%20search_path%3DS`)
    /// and brings its schema to the current version. Fails at once, naming the cause, if
    /// the database cannot be reached.
    pub async fn open(url: &str) -> Result<Self, DatastoreError> {
        let shown = redact_url(url);
        let opts = connect_options(url).map_err(DatastoreError::Backend)?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DatastoreError::Backend(format!("{what}{shown}: {}", scrub(&e.to_string(), url)))
        };
        // One connection attempt first: the pool would retry a refused connection until
        // its timeout and then report only that it timed out.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| {
                fail(
                    "cannot connect to PostgreSQL at ",
                    &format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|e| fail("cannot connect to PostgreSQL at ", &e))?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| fail("cannot connect to PostgreSQL at ", &e))?;
        migrate::migrate(&pool).await.map_err(|e| fail("", &e))?;
        Ok(Self::new(pool, shown))
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
pub(crate) fn scrub(message: &str, url: &str) -> String {
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
        let db = crate::datastore::testdb::Postgres::new().await;
        let url = format!("{}&options=-c%20synchronous_commit%3Doff", db.url);
        let ds = PostgresDatastore::open(&url).await.unwrap();
        let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit")
            .fetch_one(ds.pool())
            .await
            .unwrap();
        assert_eq!(setting, "on");
        ds.close().await;
    }

    #[tokio::test]
    async fn debug_shows_where_the_database_is_without_the_password() {
        let db = crate::datastore::testdb::Postgres::new().await;
        // The test URL's password if it has one; else one the server ignores (the test
        // server trusts local connections, as `.ci/run` sets it up).
        let (scheme, rest) = db.url.split_once("://").unwrap();
        let (userinfo, host) = rest.split_once('@').expect("the test URL names a user");
        let (url, password) = match userinfo.split_once(':') {
            Some((_, password)) => (db.url.clone(), password.to_owned()),
            None => (
                format!("{scheme}://{userinfo}:s3cret@{host}"),
                "s3cret".to_owned(),
            ),
        };
        let ds = PostgresDatastore::open(&url).await.unwrap();
        let shown = format!("{ds:?}");
        assert!(!shown.contains(&password), "{shown}");
        assert!(
            shown.contains("PostgreSQL") && shown.contains(":***@"),
            "{shown}"
        );
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
