//! The server reaches PostgreSQL over verified TLS: a test-owned cluster serving a
//! certificate from a test CA (for `localhost` only) and accepting TCP connections only
//! over TLS with a SCRAM password. The server connects with `verify-full`, the CA file
//! and a password file, enrolls an agent and serves it; the password is in neither its
//! log nor its command line. A plain connection, another CA, a certificate that does not
//! name the host, and a missing CA file each stop it at start with an error naming the
//! cause and not the password.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tests::server::refused_start;
use tests::{AGENT_ID, Cluster, PgCluster, wait_for};

const WEB: &str = "spiffe://example.org/pg-tls/web";

/// A self-signed CA: its PEM certificate and an issuer for leaves.
fn test_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn assert_refused(dir: &Path, args: &[&str], parts: &[&str], password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (code, log) = refused_start(dir, args);
    assert!(
        code.is_some_and(|c| c != 0),
        "the server must refuse to start ({code:?}):\n{log}"
    );
    for part in parts {
        assert!(log.contains(part), "{part:?} not in:\n{log}");
    }
    assert!(
        !log.contains(password),
        "the password is in the log:\n{log}"
    );
}

#[test]
fn the_server_uses_postgresql_over_verified_tls_with_a_password_file() {
    let (ca_pem, ca) = test_ca("Tessera test database CA");
    let (other_ca_pem, _) = test_ca("Another CA");
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let pg = PgCluster::start_tls(&cert.pem(), &key.serialize_pem());

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let password = format!("pw{nanos}x{}", std::process::id());
    pg.psql(
        "postgres",
        &format!("CREATE ROLE tessera LOGIN PASSWORD '{password}'"),
    );
    pg.psql("postgres", "CREATE DATABASE tessera OWNER tessera");

    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("db-ca.pem");
    let other_ca_file = files.path().join("other-ca.pem");
    let password_file = files.path().join("db-password");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    std::fs::write(&other_ca_file, &other_ca_pem).unwrap();
    write_private(&password_file, &format!("{password}\n"));
    let (ca_file, other_ca_file, password_file) = (
        ca_file.to_str().unwrap(),
        other_ca_file.to_str().unwrap(),
        password_file.to_str().unwrap(),
    );
    let port = pg.port();
    let url = format!("postgres://tessera@localhost:{port}/tessera");

    // Plain TCP is refused by the cluster.
    let plain = format!("{url}?sslmode=disable");
    assert_refused(
        &files.path().join("plain"),
        &[
            "--datastore",
            &plain,
            "--datastore-password-file",
            password_file,
        ],
        &[
            "cannot connect to PostgreSQL",
            "sslmode disable",
            "no encryption",
        ],
        &password,
    );
    // Another CA: the certificate does not verify.
    assert_refused(
        &files.path().join("other-ca"),
        &[
            "--datastore",
            &url,
            "--datastore-ca-file",
            other_ca_file,
            "--datastore-password-file",
            password_file,
        ],
        &[
            "cannot connect to PostgreSQL at postgres://tessera@localhost",
            "UnknownIssuer",
            &format!("must chain to a CA in {other_ca_file}"),
        ],
        &password,
    );
    // The right CA, but the certificate names localhost, not 127.0.0.1: verify-full
    // refuses.
    let by_ip = format!("postgres://tessera@127.0.0.1:{port}/tessera");
    assert_refused(
        &files.path().join("by-ip"),
        &[
            "--datastore",
            &by_ip,
            "--datastore-ca-file",
            ca_file,
            "--datastore-password-file",
            password_file,
        ],
        &[
            "sslmode verify-full",
            "certificate not valid for name",
            "name the host",
        ],
        &password,
    );
    // A CA file that does not exist.
    let missing = files.path().join("missing-ca.pem");
    assert_refused(
        &files.path().join("missing"),
        &[
            "--datastore",
            &url,
            "--datastore-ca-file",
            missing.to_str().unwrap(),
            "--datastore-password-file",
            password_file,
        ],
        &[&format!(
            "datastore CA file {}: No such file",
            missing.display()
        )],
        &password,
    );
    // A password file others may read.
    let loose = files.path().join("loose-password");
    std::fs::write(&loose, &password).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(
        &files.path().join("loose"),
        &[
            "--datastore",
            &url,
            "--datastore-ca-file",
            ca_file,
            "--datastore-password-file",
            loose.to_str().unwrap(),
        ],
        &["datastore_password_file", "mode 0644 lets others read it"],
        &password,
    );
    // verify-full (the default with a CA file), the CA file, the password from a file.
    let mut c = Cluster::start(&[
        "--datastore",
        &url,
        "--datastore-ca-file",
        ca_file,
        "--datastore-password-file",
        password_file,
    ]);
    assert_eq!(
        pg.psql("tessera", "SELECT spiffe_id FROM agents"),
        AGENT_ID,
        "the agent was enrolled in this database"
    );
    assert!(
        !c.server.data_dir.join("datastore.sqlite3").exists(),
        "the server must not fall back to SQLite"
    );
    // Every connection of the server is encrypted.
    let plain_connections = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'tessera-server' AND NOT ssl",
    );
    let tls_connections = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'tessera-server' AND ssl",
    );
    assert_eq!(plain_connections, "0");
    assert_ne!(tls_connections, "0");
    c.server.create_entry(WEB, &["unix:uid:0"], &[]);
    let served = wait_for(Duration::from_secs(30), || {
        let ids = c.agent.fetch_ids().ok()?;
        (ids == [WEB]).then_some(ids)
    });
    assert!(
        served.is_some(),
        "no SVID for {WEB}:\n{}",
        c.agent.log_tail()
    );

    let log = c.server.log_text();
    assert!(
        log.contains("sslmode verify-full, CA file"),
        "the log says how the database is reached:\n{log}"
    );
    assert!(
        !log.contains(&password),
        "the password is in the server's log"
    );
    let pid = c.server.pid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains("--datastore-password-file"),
        "{cmdline:?} is not the server's command line"
    );
    assert!(
        !cmdline.contains(&password),
        "the password is on the command line"
    );
    c.agent.stop();
    c.server.stop();
    assert!(!c.server.log_text().contains(&password));
}
