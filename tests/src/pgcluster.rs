//! A private PostgreSQL cluster, for tests that stop and start the database under a running
//! server (never the shared one on `TESSERA_TEST_POSTGRES_URL`, which other tests use).
//!
//! The cluster lives in a temporary directory: `initdb` as the `postgres` OS user (initdb
//! refuses root), trust authentication for a superuser called `root`, listening on a free
//! loopback port with its socket in the same directory. [`PgCluster::url`] is
//! `postgres://root@127.0.0.1:PORT/postgres`. It is stopped (immediate mode) when dropped.
//!
//! [`PgCluster::start_tls`] makes a cluster that accepts TCP connections only over TLS,
//! with a certificate the test issued, and a password (SCRAM): `hostssl` lines in
//! `pg_hba.conf` and nothing else for TCP, so a plain connection is refused. `root` then
//! connects only over the Unix socket ([`PgCluster::psql`]).
//!
//! The tests run as root and need PostgreSQL's server binaries under
//! `/usr/lib/postgresql/<version>/bin` (`.ci/run` installs them): without them a test using
//! this fails, naming what is missing; it never skips.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_port;
use crate::process::tail;

/// The OS user PostgreSQL runs as.
const POSTGRES_USER: &str = "postgres";

/// A PostgreSQL cluster of one test (see the module docs).
#[derive(Debug)]
pub struct PgCluster {
    /// Holds everything; removed when dropped.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
    /// Serves TLS (certificate and key in `dir`).
    tls: bool,
}

/// The newest PostgreSQL server binaries installed.
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) under {}: install the \
             `postgresql` package (.ci/run does)",
            root.display()
        )
    })
}

/// Runs `program ARGS` as the `postgres` user; fails the test with its output if it fails.
fn as_postgres(program: &Path, args: &[&str], what: &str) {
    let out = Command::new("runuser")
        .args(["-u", POSTGRES_USER, "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run runuser: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Creates a cluster and starts it; fails the test, with the reason, if it cannot.
    pub fn start() -> Self {
        Self::create(None)
    }

    /// Creates a cluster that serves TLS with `cert_pem` (chain, leaf first) and `key_pem`
    /// and accepts TCP connections only over TLS with a password (see the module docs),
    /// and starts it.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::create(Some((cert_pem, key_pem)))
    }

    fn create(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temporary directory");
        let postgres = nix::unistd::User::from_name(POSTGRES_USER)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no `{POSTGRES_USER}` OS user to run PostgreSQL as"));
        // The data directory and the socket are created by PostgreSQL itself, inside a
        // directory it owns.
        nix::unistd::chown(dir.path(), Some(postgres.uid), Some(postgres.gid))
            .expect("giving the cluster directory to postgres");
        let mut cluster = Self {
            dir,
            bin,
            port: free_port(),
            running: false,
            tls: tls.is_some(),
        };
        let data = cluster.data_dir();
        as_postgres(
            &cluster.bin.join("initdb"),
            &[
                "-D",
                path_str(&data),
                "--auth=trust",
                "-U",
                "root",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
            "initdb",
        );
        if let Some((cert, key)) = tls {
            let private = |name: &str, text: &str| {
                let path = cluster.dir.path().join(name);
                std::fs::write(&path, text).expect("writing a TLS file of the cluster");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                nix::unistd::chown(&path, Some(postgres.uid), Some(postgres.gid))
                    .expect("giving a TLS file to postgres");
            };
            private("server.crt", cert);
            private("server.key", key);
            private(
                "data/pg_hba.conf",
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all ::1/128 scram-sha-256\n",
            );
        }
        cluster.start_again();
        cluster
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` in `database` as `root` over the Unix socket (which needs neither TLS
    /// nor a password) and returns its output (unaligned tuples); fails the test if it
    /// fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", path_str(self.dir.path())])
            .args(["-p", &self.port.to_string(), "-U", "root", "-d", database])
            .args(["-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `postgres://root@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's log (the server's messages), for failure output.
    pub fn log_tail(&self) -> String {
        tail(&self.log())
    }

    /// Starts the (stopped) cluster on the same port and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "PostgreSQL cluster already running");
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            path_str(self.dir.path())
        );
        if self.tls {
            let dir = path_str(self.dir.path());
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        let data = self.data_dir();
        let log = self.log();
        let (data, log) = (path_str(&data), path_str(&log));
        let started = Command::new("runuser")
            .args(["-u", POSTGRES_USER, "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D", data, "-l", log, "-o", &options, "-w", "-t", "60", "start",
            ])
            .output()
            .expect("running pg_ctl");
        assert!(
            started.status.success(),
            "pg_ctl start failed ({}):\n{}{}\n{}",
            started.status,
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr),
            self.log_tail()
        );
        self.running = true;
    }

    /// Stops the cluster at once, as a crash would: every connection is cut, nothing is
    /// shut down cleanly (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&mut self) {
        let data = self.data_dir();
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
            "pg_ctl stop",
        );
        self.running = false;
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let _ = Command::new("runuser")
                .args(["-u", POSTGRES_USER, "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A temporary path as a command-line argument (temporary paths are ASCII).
fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
