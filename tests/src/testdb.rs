//! A fresh PostgreSQL database per test on the shared server (`TESSERA_TEST_POSTGRES_URL`,
//! default `postgres://root@127.0.0.1:5432/test`, which `.ci/run` provides), and servers
//! on it: several servers on one database, each with its own data directory (its own CA
//! and keys), are how suites run Tessera highly available.
//!
//! The database is created and dropped with `psql`. When PostgreSQL does not answer, a
//! test using this fails, saying so; it never skips.

use std::path::Path;
use std::process::Command;

use crate::server::ServerProc;

/// Where the shared PostgreSQL server is when `TESSERA_TEST_POSTGRES_URL` is not set.
const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// A fresh database, dropped (with any connection left to it) when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

/// Runs `sql` (`-c`) or a file (`-f`) with psql on `url`: its output (unaligned tuples,
/// trimmed) or its error.
pub fn psql_run(url: &str, how: &str, what: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        // No psqlrc, quiet, unaligned tuples only; stop at the first error.
        .args(["-XqAt", "-v", "ON_ERROR_STOP=1", how, what])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl TestDb {
    /// Creates a database with a name of its own on the shared PostgreSQL server.
    pub fn create() -> Self {
        let admin_url =
            std::env::var("TESSERA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("tessera_e2e_{}_{nanos}", std::process::id());
        psql_run(&admin_url, "-c", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required by this test and does not answer at {admin_url} ({e}). \
                 Start it (.ci/run does) or point TESSERA_TEST_POSTGRES_URL at one."
            )
        });
        // Same server and user, other database (any query string is kept).
        let (before, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
        let authority_end = before
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| before[start..].find('/').map(|j| start + j))
            .unwrap_or(before.len());
        let mut url = format!("{}/{name}", &before[..authority_end]);
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// Runs `sql` in the database; its output (unaligned tuples, trimmed). Fails the test
    /// if psql fails.
    pub fn query(&self, sql: &str) -> String {
        psql_run(&self.url, "-c", sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs the SQL file at `path` in the database; fails the test if psql fails.
    pub fn run_file(&self, path: &str) {
        psql_run(&self.url, "-f", path).unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    /// Starts a server on this database with the files of its own under `dir/name` (data
    /// directory, admin socket, log) and `extra` flags; waits until its admin API answers.
    pub fn server(&self, dir: &Path, name: &str, extra: &[&str]) -> ServerProc {
        self.server_with(dir, name, extra, |s| s)
    }

    /// As [`Self::server`], with the server set up by `setup` before it starts (its node
    /// API address, a health address).
    pub fn server_with(
        &self,
        dir: &Path,
        name: &str,
        extra: &[&str],
        setup: impl FnOnce(ServerProc) -> ServerProc,
    ) -> ServerProc {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("server directory");
        let mut args = vec!["--datastore", self.url.as_str()];
        args.extend(extra);
        let mut server = setup(ServerProc::new(&home, &args));
        server.restart();
        server
    }

    /// Starts one server per name (see [`Self::server`]), in order.
    pub fn servers<const N: usize>(
        &self,
        dir: &Path,
        names: [&str; N],
        extra: &[&str],
    ) -> [ServerProc; N] {
        names.map(|name| self.server(dir, name, extra))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = psql_run(
            &self.admin_url,
            "-c",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
