//! Reuse of attestation results with the real agent: the agent keeps what it attested
//! about a process image (the executable's path and hash) and serves it again only while
//! the facts identifying that image are unchanged. A process that execs another program
//! keeps its pid and start time but not its executable, so it is attested afresh.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use tests::Cluster;

const FIRST_ID: &str = "spiffe://example.org/reuse-first";
const SECOND_ID: &str = "spiffe://example.org/reuse-second";

/// The agent stores a result only for an executable whose ctime is at least 2 s old (a
/// file changed within the timestamp granularity could otherwise keep its identity);
/// waits until `path` is past that, so the first program's result is stored.
fn wait_until_settled(path: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).unwrap();
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(meta.ctime()).unwrap())
        + Duration::from_nanos(u64::try_from(meta.ctime_nsec()).unwrap());
    let settled = ctime + Duration::from_secs(3);
    if let Ok(left) = settled.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// Two copies of one client (same contents, so the same `unix:sha256`), each named by an
/// entry through its path. A process runs the first, which fetches its identity (the agent
/// stores the result for that pid), then execs the second in the same process, which
/// connects again: it gets the second program's identity, never the first's, and the
/// agent logs that the facts changed since the last attestation.
#[test]
fn a_process_that_execs_another_binary_is_attested_afresh() {
    let c = Cluster::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = std::fs::canonicalize(dir.path()).unwrap();
    let first = dir.join("fetch-first");
    let second = dir.join("fetch-second");
    for copy in [&first, &second] {
        std::fs::copy(tests::bin("fetch-over-fd"), copy).unwrap();
        std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    c.server
        .create_entry(FIRST_ID, &[&format!("unix:path:{}", first.display())], &[]);
    c.server.create_entry(
        SECOND_ID,
        &[&format!("unix:path:{}", second.display())],
        &[],
    );
    let socket = &c.agent.socket_path;
    // Each program alone gets its own identity once the entries reached the agent.
    for (program, id) in [(&first, FIRST_ID), (&second, SECOND_ID)] {
        let mut last = None;
        tests::wait_for(Duration::from_secs(20), || {
            let out = Command::new(program)
                .arg("--connect")
                .arg(socket)
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == id {
                return Some(());
            }
            last = Some(out);
            None
        })
        .unwrap_or_else(|| panic!("{id} not served: {last:?}\n{}", c.agent.log_tail()));
    }
    wait_until_settled(&first);
    wait_until_settled(&second);

    let log_from = c.agent.log_len();
    let out = Command::new(&first)
        .arg("--connect")
        .arg(socket)
        .arg("--then-exec")
        .arg(&second)
        .arg("--connect")
        .arg(socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        out.status.success(),
        "{out:?}\n{}",
        c.agent.log_since(log_from)
    );
    assert_eq!(
        lines,
        [FIRST_ID, "--", SECOND_ID],
        "the exec'd program gets its own identity: {out:?}"
    );
    let log = c.agent.log_since(log_from);
    assert!(
        log.lines().any(|l| {
            l.contains("facts changed since the last attestation") && l.contains("executable")
        }),
        "the agent says the executable changed: {log}"
    );
}
