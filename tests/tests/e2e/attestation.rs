//! Workload attestation end to end: the agent turns the kernel's view of a caller (uid,
//! gid, supplementary groups) into selectors, and the caller gets exactly the X.509-SVIDs
//! of the entries those selectors satisfy.
//!
//! The callers are the agent's own CLI (`tessera-agent api fetch x509`), a real Workload
//! API client, run as `nobody` through `setpriv`, which sets the supplementary groups we
//! ask for. `std::process::Command::uid` cannot be used for this: as root it drops every
//! supplementary group. As in `interop_rust.rs`, `nobody` runs the client straight from
//! `target/`, so the checkout must be traversable by other users; the Workload API socket
//! sits in a 0755 directory (see `tests::Cluster::start`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tests::Cluster;
use tests::cgroups::{Caller, svid_ids};

use crate::interop_rust::{NO_IDENTITY, assert_key_matches_leaf, assert_leaf_profile};

use tests::NOBODY;
/// A supplementary group the entries below require (`sudo` on Debian; its name does not
/// matter, only the number is attested here).
const GROUP: u32 = 27;
/// Entry for any process of `nobody`.
const NOBODY_ID: &str = "spiffe://example.org/nobody";
/// Entry for `nobody` processes that are in [`GROUP`].
const GROUP_ID: &str = "spiffe://example.org/group-27";
/// Entry for `nobody` processes that are in [`LAST_OF_MANY`].
const MANY_ID: &str = "spiffe://example.org/many-groups";
/// First gid of the large group list.
const MANY_FIRST: u32 = 100_000;
/// How many groups the large list holds: far beyond 64, and enough that the `Groups:` line
/// of `/proc/<pid>/status` spans many pages (about 70 KB), while the `--groups` argument
/// stays under the kernel's 128 KiB limit for one argument.
const MANY: u32 = 10_000;
/// The last gid of the large list, required by [`MANY_ID`]: only a reader of the whole
/// `Groups:` line attests it.
const LAST_OF_MANY: u32 = MANY_FIRST + MANY - 1;

/// Runs `tessera-agent api fetch x509 --output json` as uid/gid `nobody` with exactly the
/// supplementary groups `groups`, writing the SVIDs into `write` when given.
fn fetch_as_nobody(socket: &Path, groups: &[u32], write: Option<&Path>) -> Output {
    let extra: Vec<&std::ffi::OsStr> = match write {
        Some(dir) => vec!["--write".as_ref(), dir.as_os_str()],
        None => Vec::new(),
    };
    Caller::nobody().groups(groups).fetch_x509(socket, &extra)
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// Checks the files `api fetch x509 --write` left in `dir`: each SVID's leaf carries the
/// SPIFFE ID as its one URI SAN and matches its key; returns those IDs, sorted.
fn written_ids(dir: &Path, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!(".{i}")
        };
        let chain =
            pem::parse_many(std::fs::read(dir.join(format!("svid{suffix}.pem"))).unwrap()).unwrap();
        let key =
            pem::parse(std::fs::read(dir.join(format!("svid{suffix}.key"))).unwrap()).unwrap();
        let leaf = chain[0].contents();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let id = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .expect("URI SAN");
        assert_leaf_profile(leaf, &id);
        assert_key_matches_leaf(key.contents(), leaf);
        ids.push(id);
    }
    ids.sort();
    ids
}

/// An entry requiring `unix:supplementary_gid:N` serves exactly the processes that have N
/// among their supplementary groups, whether they have one group, 64, or 10 000.
#[test]
#[ignore = "needs root: runs Workload API clients as nobody with chosen supplementary groups"]
fn supplementary_groups_select_entries() {
    let c = Cluster::start(&[]);
    let uid = format!("unix:uid:{NOBODY}");
    c.server.create_entry(NOBODY_ID, &[&uid], &[]);
    c.server.create_entry(
        GROUP_ID,
        &[&uid, &format!("unix:supplementary_gid:{GROUP}")],
        &[],
    );
    c.server.create_entry(
        MANY_ID,
        &[&uid, &format!("unix:supplementary_gid:{LAST_OF_MANY}")],
        &[],
    );
    let socket = &c.agent.socket_path;

    // 27 first, then MANY - 1 more, ending with LAST_OF_MANY.
    let many: Vec<u32> = std::iter::once(GROUP)
        .chain(MANY_FIRST + 1..=LAST_OF_MANY)
        .collect();
    assert_eq!(many.len(), MANY as usize);
    let all = sorted(&[GROUP_ID, MANY_ID, NOBODY_ID]);

    // Wait until the agent has all three entries and their SVIDs: from then on, a missing
    // ID below means the entry did not match, not that it had not arrived yet.
    let got = tests::wait_for(Duration::from_secs(20), || {
        svid_ids(&fetch_as_nobody(socket, &many, None))
            .ok()
            .filter(|ids| *ids == all)
    });
    assert!(
        got.is_some(),
        "10 000 groups: {:?}\nagent log:\n{}",
        svid_ids(&fetch_as_nobody(socket, &many, None)),
        c.agent.log_tail()
    );

    // 64 groups, 27 among them (in the middle), none from the large list.
    let sixty_four: Vec<u32> = (1000..1032).chain([GROUP]).chain(2000..2031).collect();
    assert_eq!(sixty_four.len(), 64);

    // (supplementary groups, expected SPIFFE IDs)
    let cases: Vec<(Vec<u32>, Vec<String>)> = vec![
        (vec![], sorted(&[NOBODY_ID])),
        (vec![GROUP], sorted(&[GROUP_ID, NOBODY_ID])),
        (vec![GROUP + 1], sorted(&[NOBODY_ID])),
        (vec![NOBODY, GROUP], sorted(&[GROUP_ID, NOBODY_ID])),
        (sixty_four, sorted(&[GROUP_ID, NOBODY_ID])),
        (vec![LAST_OF_MANY], sorted(&[MANY_ID, NOBODY_ID])),
        (many, all),
    ];
    for (groups, want) in cases {
        let out = fetch_as_nobody(socket, &groups, None);
        assert_eq!(
            svid_ids(&out),
            Ok(want),
            "{} supplementary groups {:?}...\nagent log:\n{}",
            groups.len(),
            groups.iter().take(4).collect::<Vec<_>>(),
            c.agent.log_tail()
        );
    }

    // The certificates themselves: written by the client as nobody, checked here.
    let out_dir = c.dir.path().join("nobody-out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = fetch_as_nobody(socket, &[GROUP], Some(&out_dir));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(written_ids(&out_dir, 2), sorted(&[GROUP_ID, NOBODY_ID]));
}

/// An entry that only a group grants gives nothing to a process outside that group: the
/// caller is attested (no attestation error) and told "no identity issued".
#[test]
#[ignore = "needs root: runs Workload API clients as nobody with chosen supplementary groups"]
fn missing_group_gets_no_identity() {
    let c = Cluster::start(&[]);
    c.server.create_entry(
        GROUP_ID,
        &[
            &format!("unix:uid:{NOBODY}"),
            &format!("unix:supplementary_gid:{GROUP}"),
        ],
        &[],
    );
    let socket = &c.agent.socket_path;
    let got = tests::wait_for(Duration::from_secs(20), || {
        svid_ids(&fetch_as_nobody(socket, &[GROUP], None)).ok()
    });
    assert_eq!(
        got,
        Some(vec![GROUP_ID.to_owned()]),
        "agent log:\n{}",
        c.agent.log_tail()
    );

    for groups in [vec![], vec![GROUP + 1], (1000..1064).collect()] {
        let out = fetch_as_nobody(socket, &groups, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} groups: {out:?}", groups.len());
        assert!(
            stderr.contains(NO_IDENTITY),
            "{} groups: expected {NO_IDENTITY:?}, got {stderr}",
            groups.len()
        );
        assert!(out.stdout.is_empty(), "no identity data printed");
    }
}

/// Python: connects to the socket `argv[1]`, waits for the agent to accept, then execs the
/// program `argv[2]` with the connection as its standard input (`fetch-over-fd --stdin`).
const CONNECT_THEN_EXEC: &str = "import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(0.5)
os.dup2(s.fileno(), 0)
os.execv(sys.argv[2], [sys.argv[2], '--stdin'])";

/// The program that connected is the one attested: a process that connects to the
/// Workload API and then execs a program an entry names (handing it the connection) is
/// refused, while that program connecting by itself gets the identity.
#[test]
fn a_caller_that_execs_after_connecting_is_refused() {
    const EXEC_ID: &str = "spiffe://example.org/fetch-over-fd";
    let c = Cluster::start(&[]);
    let program = std::fs::canonicalize(tests::bin("fetch-over-fd")).unwrap();
    c.server
        .create_entry(EXEC_ID, &[&format!("unix:path:{}", program.display())], &[]);
    let socket = &c.agent.socket_path;
    // The program itself, connecting after it started: attested by its path.
    let mut last = None;
    let direct = tests::wait_for(Duration::from_secs(20), || {
        let out = Command::new(&program)
            .arg("--connect")
            .arg(socket)
            .output()
            .unwrap();
        if out.status.success() {
            return Some(out);
        }
        last = Some(out);
        None
    })
    .unwrap_or_else(|| panic!("no identity for the program itself: {last:?}"));
    assert_eq!(String::from_utf8_lossy(&direct.stdout).trim(), EXEC_ID);

    // Python connects, then (once the agent has accepted: it accepts at once, and the
    // kernel records no executable at connect(), so an exec before the accept is not
    // seen) execs the program with the connection as its stdin.
    let out = Command::new("/usr/bin/python3")
        .args(["-c", CONNECT_THEN_EXEC])
        .arg(socket)
        .arg(&program)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attested after exec: {out:?}");
    assert!(out.stdout.is_empty(), "no identity printed: {out:?}");
    assert!(stderr.contains("refused"), "{stderr}");
    let log = c.agent.log_tail();
    assert!(
        log.contains("ran another executable since it connected"),
        "the agent says why: {log}"
    );
}

/// A real setuid-root program run by `nobody`: whether it connects itself (the kernel
/// records the effective uid, root, in the peer credentials, while the real uid is
/// nobody's) or inherits a connection `nobody` made before the exec, it is refused, and an
/// entry for root's processes running that program grants it nothing.
#[test]
fn a_setuid_program_run_by_another_user_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    const ROOT_ID: &str = "spiffe://example.org/setuid-root";
    let c = Cluster::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let setuid = dir.path().join("fetch-setuid");
    std::fs::copy(tests::bin("fetch-over-fd"), &setuid).unwrap();
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    tests::assert_nobody_can_reach(&setuid);
    c.server.create_entry(
        ROOT_ID,
        &["unix:uid:0", &format!("unix:path:{}", setuid.display())],
        &[],
    );
    let socket = &c.agent.socket_path;
    // Root running it gets the identity (the entry is live on the agent).
    let mut last = None;
    tests::wait_for(Duration::from_secs(20), || {
        let out = Command::new(&setuid)
            .arg("--connect")
            .arg(socket)
            .output()
            .unwrap();
        if out.status.success() {
            return Some(());
        }
        last = Some(out);
        None
    })
    .unwrap_or_else(|| panic!("root gets no identity: {last:?}"));

    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
            ])
            .args(args)
            .current_dir("/")
            .output()
            .unwrap()
    };
    let setuid_path = setuid.to_str().unwrap();
    let socket_path = socket.to_str().unwrap();
    let direct = as_nobody(&[setuid_path, "--connect", socket_path]);
    let inherited = as_nobody(&[
        "/usr/bin/python3",
        "-c",
        CONNECT_THEN_EXEC,
        socket_path,
        setuid_path,
    ]);
    for (how, out) in [("connecting itself", direct), ("after exec", inherited)] {
        assert!(!out.status.success(), "{how}: attested as root: {out:?}");
        assert!(out.stdout.is_empty(), "{how}: {out:?}");
    }
    let log = c.agent.log_tail();
    assert!(
        log.contains("has real uid 65534, peer credentials say 0"),
        "the agent names the differing id: {log}"
    );
    assert!(
        log.contains("ran another executable since it connected"),
        "{log}"
    );
}

/// An open stream is attested again before it sends: when the process that opened a
/// `FetchX509SVID` stream execs another program (here `cat`, handed the connection as its
/// standard input, so it prints whatever the agent sends), the next change of its
/// identities (a second entry for the program that connected) is not sent: the stream ends
/// and the agent logs why. (Before, the new message reached the new program.)
#[test]
fn an_open_stream_handed_to_another_program_gets_nothing_more() {
    const FIRST: &str = "spiffe://example.org/watch-first";
    const SECOND: &str = "spiffe://example.org/watch-second";
    let c = Cluster::start(&[]);
    let program = std::fs::canonicalize(tests::bin("fetch-over-fd")).unwrap();
    let by_path = format!("unix:path:{}", program.display());
    c.server.create_entry(FIRST, &[&by_path], &[]);
    let socket = &c.agent.socket_path;
    let direct = |want: &[&str]| {
        tests::wait_for(Duration::from_secs(20), || {
            let out = Command::new(&program)
                .arg("--connect")
                .arg(socket)
                .output()
                .unwrap();
            let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            ids.sort();
            (ids == want).then_some(())
        })
        .unwrap_or_else(|| panic!("{want:?} not served\nagent log:\n{}", c.agent.log_tail()))
    };
    direct(&[FIRST]);

    let cat = std::fs::canonicalize("/bin/cat").unwrap();
    let mut cmd = Command::new(&program);
    cmd.arg("--connect")
        .arg(socket)
        .arg("--watch-then-exec")
        .arg(&cat);
    let mut watch = tests::fetch::Watcher::spawn(cmd);
    assert_eq!(
        watch.next(Duration::from_secs(20)),
        Ok(Some(vec![FIRST.to_owned()])),
        "first message, to the program that connected"
    );
    let log_from = c.agent.log_len();
    {
        use std::io::Write as _;
        let stdin = watch.child.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    let exe = format!("/proc/{}/exe", watch.pid());
    let execd = tests::wait_for(Duration::from_secs(10), || {
        (std::fs::read_link(&exe).ok()? == cat).then_some(())
    });
    assert!(execd.is_some(), "the stream's owner execs cat");

    // A new identity for the program that connected: a stream still attested as that
    // program would send it.
    c.server.create_entry(SECOND, &[&by_path], &[]);
    direct(&[FIRST, SECOND]);
    let sent = watch.output_for(Duration::from_secs(3));
    assert!(
        !sent.windows(SECOND.len()).any(|w| w == SECOND.as_bytes()),
        "the exec'd program received the new identity ({} bytes)",
        sent.len()
    );
    let log = c.agent.log_since(log_from);
    assert!(
        log.contains("ran another executable since it connected")
            && log.contains("stream ended: its caller no longer attests"),
        "the agent ends the stream and says why: {log}"
    );
}
