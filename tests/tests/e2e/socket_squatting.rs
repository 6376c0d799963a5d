//! Squatting a daemon's socket: a local user (`nobody`) creates the socket's directory
//! before the daemon starts, or serves a fake admin API on the path the CLI uses. The
//! daemons refuse a directory another user can change, and the admin CLI talks only to a
//! socket served by root, by the caller, or by `--server-user`.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tests::{AgentProc, NOBODY, ServerProc, bin, free_port, wait_for};

/// A directory like `/tmp`: owned by root, writable by everyone, sticky.
fn shared_tmp() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// `program args...` as uid and gid nobody, without supplementary groups.
fn as_nobody(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(program)
        .current_dir("/");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` until it exits by itself (at most 15 s); its stderr.
fn exits_with_error(mut cmd: Command) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} kept running on a squatted socket directory:\n{err}");
    };
    assert!(!status.success(), "{cmd:?} succeeded:\n{err}");
    err
}

#[test]
fn daemons_refuse_a_socket_directory_another_user_created() {
    let tmp = shared_tmp();
    // What the attacker does before the daemons start: create the socket directories.
    for name in ["tessera-server", "tessera-agent"] {
        let out = as_nobody("mkdir")
            .arg(tmp.path().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "mkdir as nobody: {}", stderr(&out));
    }
    let data = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("tessera-server/admin.sock");
    let mut server = Command::new(bin("tessera-server"));
    server
        .args(["run", "--trust-domain", "example.org"])
        .arg("--data-dir")
        .arg(data.path().join("server"))
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .arg("--admin-socket")
        .arg(&socket);
    let err = exits_with_error(server);
    let dir = tmp.path().join("tessera-server");
    assert!(
        err.contains(&format!(
            "{} is owned by uid {NOBODY}, not by this process's user (uid 0) or root",
            dir.display()
        )),
        "{err}"
    );
    assert!(!socket.exists(), "the server bound nothing");

    // The agent, with a real server's bundle so it gets as far as binding its socket.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("server")).unwrap();
    let real = ServerProc::start(&home.path().join("server"), &[]);
    let mut agent = AgentProc::new(&home.path().join("agent"), &real);
    agent.socket_path = tmp.path().join("tessera-agent/api.sock");
    let (code, log) = agent.run_until_exit(Some("unused"), Duration::from_secs(15));
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains(&format!(
            "{} is owned by uid {NOBODY}, not by this process's user (uid 0) or root",
            tmp.path().join("tessera-agent").display()
        )),
        "{log}"
    );
    assert!(!agent.socket_path.exists(), "the agent bound nothing");
}

/// A fake admin API served by `nobody` on `path`: it accepts one connection and writes
/// how many bytes it received before the client hung up to `received`.
fn fake_server_as_nobody(path: &Path, received: &Path) -> Child {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
open(sys.argv[2] + ".ready", "w").close()
c, _ = s.accept()
c.settimeout(5)
n = 0
try:
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
except socket.timeout:
    pass
with open(sys.argv[2], "w") as f:
    f.write(str(n))
"#;
    let child = as_nobody("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .arg(received)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = received.with_extension("ready");
    wait_for(Duration::from_secs(10), || ready.exists().then_some(()))
        .expect("the fake server listens");
    child
}

#[test]
fn the_admin_cli_refuses_a_socket_served_by_another_user() {
    let tmp = shared_tmp();
    let out = as_nobody("mkdir")
        .arg(tmp.path().join("fake"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let socket = tmp.path().join("fake/admin.sock");
    let received = tmp.path().join("fake/received");

    // As root, against nobody's socket: refused before a byte is sent.
    let mut fake = fake_server_as_nobody(&socket, &received);
    let out = Command::new(bin("tessera-server"))
        .args(["entry", "show", "--admin-socket"])
        .arg(&socket)
        .env_remove("TESSERA_SERVER_USER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the process answering there runs as nobody (uid 65534), not as a trusted user (root (uid 0))")
            && err.contains("refusing to talk to it"),
        "{err}"
    );
    assert!(fake.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&received).unwrap(), "0");

    // Naming nobody as the server's user: the CLI talks to it (and gets no answer).
    std::fs::remove_file(&socket).unwrap();
    std::fs::remove_file(received.with_extension("ready")).unwrap();
    let mut fake = fake_server_as_nobody(&socket, &received);
    let out = Command::new(bin("tessera-server"))
        .args(["entry", "show", "--server-user", "nobody", "--admin-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(fake.wait().unwrap().success());
    let sent: usize = std::fs::read_to_string(&received).unwrap().parse().unwrap();
    assert!(
        sent >= 24,
        "the HTTP/2 preface reached the named server: {sent} bytes"
    );
}
