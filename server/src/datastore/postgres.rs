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
//! ([`redact_url`]). It is better kept out of the URL: in `PGPASSWORD`, or in a file
//! (`datastore_password_file`, mode 0600 or stricter) read at start ([`PgAccess`]).
//!
//! TLS ([`PgTls`], through sqlx's rustls with the *ring* provider, the TLS stack the rest
//! of the server uses) follows libpq's `sslmode`, given in the URL (`?sslmode=`), as
//! `datastore_sslmode` or in `PGSSLMODE`; the roots that authenticate the database are a
//! PEM file (`?sslrootcert=`, `datastore_ca_file` or `PGSSLROOTCERT`), read at start. With
//! a CA file and no mode the mode is `verify-full`; without either it is `prefer`
//! (encrypted when the database offers TLS, unauthenticated: no defence against an active
//! attacker). `require` with a CA file verifies the chain, as libpq does. Besides the CA
//! file, sqlx also trusts the operating system's roots for `verify-ca` and `verify-full`.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection as _, PgConnection, Pool, Postgres, Transaction};

use super::DatastoreError;
use super::migrate::{self, Migration};
use super::sql::{Dialect, Placeholders, SqlStore};

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
    const PLACEHOLDERS: Placeholders = Placeholders::Numbered;

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
        Self::open_with(url, &PgAccess::default()).await
    }

    /// As [`Self::open`], with the TLS and password settings given beside the URL (and
    /// those of the process environment, `PGSSLMODE`, `PGSSLROOTCERT`, `PGPASSWORD`).
    pub async fn open_with(url: &str, access: &PgAccess) -> Result<Self, DatastoreError> {
        let shown = redact_url(url);
        let tls =
            PgTls::resolve(url, access, &PgEnv::from_process()).map_err(DatastoreError::Backend)?;
        // Every change this process commits names it in the change feed (`feed.rs`).
        let opts = connect_options(url)
            .and_then(|o| apply_access(o, &tls, access))
            .map(|o| {
                o.options([
                    ("tessera.origin", origin()),
                    ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
                ])
            })
            .map_err(DatastoreError::Backend)?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DatastoreError::Backend(format!(
                "{what}{shown} ({}): {}",
                tls.describe(),
                explain_tls(&scrub(&e.to_string(), url), &tls)
            ))
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
        tracing::info!(datastore = %shown, tls = %tls.describe(), "connected to PostgreSQL");
        Ok(Self::new(pool, shown))
    }
}

impl SqlStore<Postgres> {
    /// The connection pool, for the change feed's tailer (`feed.rs`).
    pub fn feed_pool(&self) -> Pool<Postgres> {
        self.pool().clone()
    }
}

/// How long a connection of this server may sit in an open transaction doing nothing
/// before PostgreSQL ends its session. Writes are serialised by a transaction-scoped lock,
/// so a server frozen mid-transaction (stopped, swapped out, its VM paused) would otherwise
/// hold every server's writes until its TCP connection died, hours later; with this the
/// lock is released and the frozen server's transaction rolled back. No transaction of
/// ours waits on anything but the database between its statements.
pub const IDLE_IN_TRANSACTION: &str = "10s";

/// This process's instance id: every connection sets it as `tessera.origin`, so the rows
/// its writes append to the change feed name it, and its tailer skips them (they were
/// published in-process).
pub fn origin() -> &'static str {
    static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// libpq's `sslmode`, as far as this server supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the database offers it, its certificate unchecked; else plain.
    Prefer,
    /// TLS only, the certificate unchecked (checked as `verify-ca` with a CA file).
    Require,
    /// TLS only, the certificate chaining to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Parses a mode as libpq spells it.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "{other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }

    /// The mode as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn to_sqlx(self) -> PgSslMode {
        match self {
            Self::Disable => PgSslMode::Disable,
            Self::Prefer => PgSslMode::Prefer,
            Self::Require => PgSslMode::Require,
            Self::VerifyCa => PgSslMode::VerifyCa,
            Self::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// How the server reaches PostgreSQL beyond the URL: the `datastore_sslmode`,
/// `datastore_ca_file` and `datastore_password_file` settings. Holds paths, never a
/// password: the password file is read when the datastore opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgAccess {
    /// TLS mode, if set.
    pub ssl_mode: Option<SslMode>,
    /// PEM roots that authenticate the database's certificate.
    pub ca_file: Option<PathBuf>,
    /// A file holding the password (mode 0600 or stricter; one line).
    pub password_file: Option<PathBuf>,
}

/// The libpq environment variables that change TLS (sqlx reads them too).
#[derive(Debug, Clone, Default)]
pub struct PgEnv {
    /// `PGSSLMODE`.
    pub ssl_mode: Option<String>,
    /// `PGSSLROOTCERT`.
    pub root_cert: Option<String>,
}

impl PgEnv {
    /// The variables of this process.
    pub fn from_process() -> Self {
        Self {
            ssl_mode: std::env::var("PGSSLMODE").ok(),
            root_cert: std::env::var("PGSSLROOTCERT").ok(),
        }
    }
}

/// The TLS the connections use, resolved from the URL, the settings and the environment
/// (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// The mode.
    pub mode: SslMode,
    /// The PEM roots, if any.
    pub ca_file: Option<PathBuf>,
}

impl PgTls {
    /// Resolves the TLS settings, refusing contradictions: a mode or CA file given in the
    /// URL and as a setting with different values, an unknown mode, a CA file with a mode
    /// that does not use it, and a password both in the URL and in a file.
    pub fn resolve(url: &str, access: &PgAccess, env: &PgEnv) -> Result<Self, String> {
        let shown = redact_url(url);
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("{shown} is not a valid PostgreSQL URL: {e}"))?;
        let (mut url_mode, mut url_ca) = (None, None);
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "sslmode" | "ssl-mode" => {
                    url_mode = Some(
                        SslMode::parse(&value)
                            .map_err(|e| format!("sslmode in the datastore URL: {e}"))?,
                    );
                }
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => {
                    url_ca = Some(PathBuf::from(&*value));
                }
                _ => {}
            }
        }
        if parsed.password().is_some() && access.password_file.is_some() {
            return Err(
                "the datastore URL carries a password and datastore_password_file is set: give it once (the file keeps it out of the command line)"
                    .into(),
            );
        }
        let mode = match (url_mode, access.ssl_mode) {
            (Some(u), Some(s)) if u != s => {
                return Err(format!(
                    "sslmode={} in the datastore URL contradicts datastore_sslmode {}",
                    u.as_str(),
                    s.as_str()
                ));
            }
            (u, s) => u.or(s),
        };
        let ca_file = match (url_ca, access.ca_file.clone()) {
            (Some(u), Some(s)) if u != s => {
                return Err(format!(
                    "sslrootcert={} in the datastore URL contradicts datastore_ca_file {}",
                    u.display(),
                    s.display()
                ));
            }
            (u, s) => u.or(s),
        };
        let explicit_ca = ca_file.is_some();
        let ca_file = ca_file.or_else(|| env.root_cert.as_ref().map(PathBuf::from));
        let mode = match mode {
            Some(m) => m,
            None => match env.ssl_mode.as_deref() {
                Some(m) => SslMode::parse(m).map_err(|e| format!("PGSSLMODE: {e}"))?,
                None if ca_file.is_some() => SslMode::VerifyFull,
                None => SslMode::Prefer,
            },
        };
        let mode = match (mode, &ca_file) {
            // A CA file from the environment is for whoever uses TLS.
            (SslMode::Disable | SslMode::Prefer, Some(_)) if !explicit_ca => {
                return Ok(Self {
                    mode,
                    ca_file: None,
                });
            }
            (SslMode::Disable | SslMode::Prefer, Some(ca)) => {
                return Err(format!(
                    "the datastore CA file {} is used only with sslmode require, verify-ca or verify-full, not {}",
                    ca.display(),
                    mode.as_str()
                ));
            }
            // libpq's rule: `require` with a root certificate verifies the chain.
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        Ok(Self { mode, ca_file })
    }

    /// For logs and errors: the mode, and the CA file if any.
    pub fn describe(&self) -> String {
        match &self.ca_file {
            Some(ca) => format!("sslmode {}, CA file {}", self.mode.as_str(), ca.display()),
            None => format!("sslmode {}", self.mode.as_str()),
        }
    }
}

/// Applies the resolved TLS and the password file to `opts`. Errors name the file and what
/// is wrong with it, never its content.
fn apply_access(
    opts: PgConnectOptions,
    tls: &PgTls,
    access: &PgAccess,
) -> Result<PgConnectOptions, String> {
    let mut opts = opts.ssl_mode(tls.mode.to_sqlx());
    if let Some(ca) = &tls.ca_file {
        opts = opts.ssl_root_cert_from_pem(read_ca_file(ca)?);
    }
    if let Some(path) = &access.password_file {
        opts = opts.password(&read_password_file(path)?);
    }
    Ok(opts)
}

/// The CA file's bytes, once it is known to hold at least one PEM certificate.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let what = |e: &dyn std::fmt::Display| format!("datastore CA file {}: {e}", path.display());
    let pem = std::fs::read(path).map_err(|e| what(&e))?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| what(&format!("not PEM: {e}")))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(what(&"no CERTIFICATE block"));
    }
    Ok(pem)
}

/// Reads a password file: owned by anyone, readable by its owner only (0600 or
/// stricter), one line (a final newline is dropped), not empty.
fn read_password_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let what =
        |e: &dyn std::fmt::Display| format!("datastore_password_file {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| what(&e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(what(&format!(
            "mode {mode:04o} lets others read it; chmod 600 it"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| what(&e))?;
    let line = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if line.is_empty() {
        return Err(what(&"empty"));
    }
    if line.contains(['\n', '\r']) {
        return Err(what(&"more than one line"));
    }
    Ok(line.to_owned())
}

/// A connection error, with what to check when the cause is the database's certificate.
fn explain_tls(message: &str, tls: &PgTls) -> String {
    if !message.contains("certificate") {
        return message.to_owned();
    }
    let roots = match &tls.ca_file {
        Some(ca) => format!("a CA in {} (or the system's roots)", ca.display()),
        None => "the system's roots (set datastore_ca_file for a private CA)".to_owned(),
    };
    let name = if tls.mode == SslMode::VerifyFull {
        " and name the host in the URL"
    } else {
        ""
    };
    format!("{message} (the PostgreSQL server's certificate must chain to {roots}{name})")
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

/// Checks that `url` is a PostgreSQL connection URL this backend can use, and that it
/// agrees with `access` (files are read only when the datastore opens); the error names
/// the problem without the password.
pub fn validate_url(url: &str, access: &PgAccess) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{} is not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            redact_url(url)
        ));
    }
    // Ours first: it names the TLS setting at fault.
    PgTls::resolve(url, access, &PgEnv::default())?;
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
        let err =
            validate_url("postgres://u:s3cret@db:notaport/x", &PgAccess::default()).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("postgres://u:***@db:notaport/x"), "{err}");
        let none = PgAccess::default();
        assert!(validate_url("mysql://u:s3cret@db/x", &none).is_err());
        assert!(validate_url("postgres://u:s3cret@db:5432/x", &none).is_ok());
        assert_eq!(
            scrub("bad s3cret here", "postgres://u:s3cret@h/d"),
            "bad *** here"
        );
    }

    #[test]
    fn tls_mode_follows_the_url_the_settings_and_the_environment() {
        let url = "postgres://tessera@db.example/tessera";
        let none = PgAccess::default();
        let no_env = PgEnv::default();
        let ca = |p: &str| PgAccess {
            ca_file: Some(p.into()),
            ..PgAccess::default()
        };
        let tls = |mode, ca: Option<&str>| PgTls {
            mode,
            ca_file: ca.map(PathBuf::from),
        };
        // Nothing said: prefer; a CA file: verify-full; require with a CA: verify-ca.
        assert_eq!(
            PgTls::resolve(url, &none, &no_env),
            Ok(tls(SslMode::Prefer, None))
        );
        assert_eq!(
            PgTls::resolve(url, &ca("/ca.pem"), &no_env),
            Ok(tls(SslMode::VerifyFull, Some("/ca.pem")))
        );
        assert_eq!(
            PgTls::resolve(&format!("{url}?sslrootcert=/u.pem"), &none, &no_env),
            Ok(tls(SslMode::VerifyFull, Some("/u.pem")))
        );
        assert_eq!(
            PgTls::resolve(&format!("{url}?sslmode=require"), &ca("/ca.pem"), &no_env),
            Ok(tls(SslMode::VerifyCa, Some("/ca.pem")))
        );
        // The URL and the settings agree, or the start is refused.
        let both = PgAccess {
            ssl_mode: Some(SslMode::VerifyCa),
            ..ca("/ca.pem")
        };
        assert_eq!(
            PgTls::resolve(
                &format!("{url}?sslmode=verify-ca&sslrootcert=/ca.pem"),
                &both,
                &no_env
            ),
            Ok(tls(SslMode::VerifyCa, Some("/ca.pem")))
        );
        let err =
            PgTls::resolve(&format!("{url}?sslrootcert=/other.pem"), &both, &no_env).unwrap_err();
        assert!(err.contains("contradicts datastore_ca_file"), "{err}");
        // The environment counts when neither says anything, and is checked.
        let env = PgEnv {
            ssl_mode: Some("verify-ca".into()),
            root_cert: Some("/env.pem".into()),
        };
        assert_eq!(
            PgTls::resolve(url, &none, &env),
            Ok(tls(SslMode::VerifyCa, Some("/env.pem")))
        );
        assert_eq!(
            PgTls::resolve(&format!("{url}?sslmode=verify-full"), &none, &env),
            Ok(tls(SslMode::VerifyFull, Some("/env.pem")))
        );
        let bad_env = PgEnv {
            ssl_mode: Some("sometimes".into()),
            root_cert: None,
        };
        let err = PgTls::resolve(url, &none, &bad_env).unwrap_err();
        assert!(
            err.starts_with("PGSSLMODE: \"sometimes\" is not one of"),
            "{err}"
        );
        assert_eq!(
            PgTls::resolve(&format!("{url}?sslmode=disable"), &none, &env),
            Ok(tls(SslMode::Disable, None))
        );
        let err =
            PgTls::resolve(&format!("{url}?sslmode=disable"), &ca("/ca.pem"), &no_env).unwrap_err();
        assert!(err.contains("not disable"), "{err}");
        assert_eq!(
            tls(SslMode::VerifyFull, Some("/ca.pem")).describe(),
            "sslmode verify-full, CA file /ca.pem"
        );
    }

    #[test]
    fn password_and_ca_files_are_checked_and_never_shown() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        let write = |text: &str, mode: u32| {
            std::fs::write(&pw, text).unwrap();
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("s3cret\n", 0o600);
        assert_eq!(read_password_file(&pw).unwrap(), "s3cret");
        write("s3cret\r\n", 0o400);
        assert_eq!(read_password_file(&pw).unwrap(), "s3cret");
        for (text, mode, part) in [
            ("s3cret\n", 0o640, "mode 0640 lets others read it"),
            ("s3cret\n", 0o604, "mode 0604"),
            ("\n", 0o600, "empty"),
            ("s3cret\nother\n", 0o600, "more than one line"),
        ] {
            write(text, mode);
            let err = read_password_file(&pw).unwrap_err();
            assert!(err.contains(part), "{part:?} not in {err:?}");
            assert!(err.contains("datastore_password_file"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let missing = read_password_file(&dir.path().join("none")).unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");

        let ca = dir.path().join("ca.pem");
        let err = read_ca_file(&ca).unwrap_err();
        assert!(
            err.starts_with(&format!("datastore CA file {}: ", ca.display()))
                && err.contains("No such file"),
            "{err}"
        );
        std::fs::write(&ca, "not a certificate").unwrap();
        assert!(
            read_ca_file(&ca)
                .unwrap_err()
                .contains("no CERTIFICATE block")
        );
        let cert = rcgen::generate_simple_self_signed(vec!["db.example".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        assert_eq!(read_ca_file(&ca).unwrap(), cert.cert.pem().into_bytes());
    }

    #[tokio::test]
    async fn a_missing_ca_file_stops_the_open_naming_it() {
        let db = crate::datastore::testdb::Postgres::new().await;
        let access = PgAccess {
            ssl_mode: Some(SslMode::VerifyFull),
            ca_file: Some("/nonexistent/db-ca.pem".into()),
            password_file: None,
        };
        let err = PostgresDatastore::open_with(&db.url, &access)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("datastore CA file /nonexistent/db-ca.pem: No such file"),
            "{err}"
        );
    }

    /// A server frozen in the middle of a write (here: a transaction holding the write
    /// lock, then nothing) does not hold the other servers' writes for longer than
    /// [`IDLE_IN_TRANSACTION`]: the database ends its session, rolling it back.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_write_left_idle_is_ended_and_its_lock_released() {
        use crate::audit::{AuditEvent, AuditKind};
        use crate::datastore::Datastore as _;

        let db = crate::datastore::testdb::Postgres::new().await;
        let frozen = PostgresDatastore::open(&db.url).await.unwrap();
        let other = PostgresDatastore::open(&db.url).await.unwrap();
        let mut tx = Postgres::begin_write(frozen.pool()).await.unwrap();
        let event = || {
            AuditEvent::new(
                AuditKind::AgentEvicted,
                common::SpiffeId::new("spiffe://example.org/node/x").unwrap(),
                serde_json::json!({}),
            )
        };
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(30), other.append_audit(&[event()]))
            .await
            .expect("the other server's write went through once the frozen one was ended")
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
            "waited {waited:?} for the lock of a transaction idle for {IDLE_IN_TRANSACTION}"
        );
        // The frozen transaction was ended with its session.
        assert!(sqlx::query("SELECT 1").execute(&mut *tx).await.is_err());
        drop(tx);
        frozen.close().await;
        other.close().await;
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
