//! Workload attestation from cgroups, end to end, with real kernel cgroups the test creates.
//!
//! Each caller is `tessera-agent api fetch x509` run as `nobody` (the same uid for all), by
//! a root shell that first moves itself into a cgroup laid out as a runtime lays it out
//! (writing its pid to `cgroup.procs`), then drops to `nobody` and execs the client. The
//! agent reads the caller's `/proc/<pid>/cgroup` and only the cgroup tells the callers
//! apart. The cgroups are made in the unified (v2) hierarchy (`/sys/fs/cgroup` on a v2
//! host, `/sys/fs/cgroup/unified` on a hybrid one), under a directory named for this test
//! run, and in the v1 `name=systemd` hierarchy where it is mounted; all are removed at the
//! end, also when an assertion fails.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tests::Cluster;
use tests::cgroups::{Caller, TestCgroups, mount_point, svid_ids};

use crate::interop_rust::NO_IDENTITY;

use tests::NOBODY;
const DOCKER_A: &str = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
const DOCKER_B: &str = "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d";
const POD_CONTAINER: &str = "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6";
const POD_UID: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
const CRI_CONTAINER: &str = "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4";
const CRI_POD_UID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const PODMAN: &str = "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea";
const DOCKER_V1: &str = "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111";

/// Runs the client as `nobody` after moving into each of `cgroups` (their directories;
/// none leaves the process where the test runs).
fn fetch_in(socket: &Path, cgroups: &[&Path]) -> Output {
    Caller::nobody().cgroups(cgroups).fetch_x509(socket, &[])
}

/// Two callers with the same uid in two cgroups laid out as two docker containers get two
/// different identities; so do callers in kubelet pod cgroups (cgroupfs and systemd
/// drivers), a podman container, and, in the v1 `name=systemd` hierarchy where mounted, a
/// docker container and a systemd service. A caller of that uid in no such cgroup gets
/// `PermissionDenied`, as does one below a service's own cgroup named like a container,
/// and one whose hierarchies name two different containers.
#[test]
#[ignore = "needs root: creates kernel cgroups and runs clients as nobody"]
fn cgroups_tell_callers_of_one_uid_apart() {
    let unified = mount_point(None).expect("a cgroup2 (unified) hierarchy is mounted");
    let systemd_v1 = mount_point(Some("name=systemd"));
    let run = format!("tessera-e2e-{}", std::process::id());
    let mut made = TestCgroups::new();
    // Docker, systemd driver, and docker, cgroupfs driver.
    let a = made.make(
        &unified,
        &format!("{run}/system.slice/docker-{DOCKER_A}.scope"),
    );
    let b = made.make(&unified, &format!("{run}/docker/{DOCKER_B}"));
    // The kubelet's cgroupfs driver, burstable QoS, containerd.
    let pod = made.make(
        &unified,
        &format!("{run}/kubepods/burstable/pod{POD_UID}/{POD_CONTAINER}"),
    );
    // containerd's CRI plugin under the kubelet's systemd driver, guaranteed QoS.
    let cri = made.make(
        &unified,
        &format!(
            "{run}/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CRI_CONTAINER}.scope",
            CRI_POD_UID.replace('-', "_")
        ),
    );
    // Rootful podman, systemd cgroup manager, with its `container` child.
    let podman = made.make(
        &unified,
        &format!("{run}/machine.slice/libpod-{PODMAN}.scope/container"),
    );
    // A plain cgroup, and a service's own child named like container A.
    let plain = made.make(&unified, &format!("{run}/plain"));
    let forged = made.make(
        &unified,
        &format!("{run}/system.slice/ci.service/docker-{DOCKER_A}.scope"),
    );

    let c = Cluster::start(&[]);
    let uid = format!("unix:uid:{NOBODY}");
    let id_a = "spiffe://example.org/container-a";
    let id_b = "spiffe://example.org/container-b";
    let id_pod = "spiffe://example.org/pod";
    let id_unit = "spiffe://example.org/unit";
    c.server.create_entry(
        id_a,
        &[
            &uid,
            &format!("container:id:{DOCKER_A}"),
            "container:runtime:docker",
        ],
        &[],
    );
    c.server
        .create_entry(id_b, &[&uid, &format!("container:id:{DOCKER_B}")], &[]);
    c.server.create_entry(
        id_pod,
        &[
            &uid,
            &format!("k8s:pod-uid:{POD_UID}"),
            &format!("k8s:container-id:{POD_CONTAINER}"),
        ],
        &[],
    );
    let id_cri = "spiffe://example.org/cri";
    let id_podman = "spiffe://example.org/podman";
    let id_docker_v1 = "spiffe://example.org/docker-v1";
    c.server.create_entry(
        id_cri,
        &[
            &uid,
            &format!("k8s:pod-uid:{CRI_POD_UID}"),
            "container:runtime:containerd",
        ],
        &[],
    );
    c.server.create_entry(
        id_podman,
        &[
            &uid,
            &format!("container:id:{PODMAN}"),
            "container:runtime:podman",
        ],
        &[],
    );
    // Docker's cgroupfs driver on a v1 host, in systemd's v1 hierarchy only.
    let docker_v1 = systemd_v1.as_ref().map(|root| {
        c.server.create_entry(
            id_docker_v1,
            &[&uid, &format!("container:id:{DOCKER_V1}")],
            &[],
        );
        made.make(root, &format!("{run}/docker/{DOCKER_V1}"))
    });
    let unit = systemd_v1.as_ref().map(|root| {
        let slice = format!("{run}.slice");
        let leaf = made.make(root, &format!("{slice}/web.service"));
        c.server.create_entry(
            id_unit,
            &[
                &uid,
                "systemd:unit:web.service",
                &format!("systemd:slice:{slice}"),
                &format!("cgroup:path:/{slice}/web.service"),
            ],
            &[],
        );
        leaf
    });
    let socket = &c.agent.socket_path;

    // Wait until the agent has the entries (the last one created is the pod's or the
    // unit's): from then on a missing identity means no match.
    let last = unit.as_ref().map_or((&pod, id_pod), |u| (u, id_unit));
    let got = tests::wait_for(Duration::from_secs(20), || {
        svid_ids(&fetch_in(socket, &[last.0]))
            .ok()
            .filter(|ids| *ids == [last.1])
    });
    assert!(
        got.is_some(),
        "{:?}\nagent log:\n{}",
        svid_ids(&fetch_in(socket, &[last.0])),
        c.agent.log_tail()
    );

    // (caller, the cgroups it moves into, the identities it gets; none: PermissionDenied)
    let mut cases: Vec<(&str, Vec<&Path>, Vec<&str>)> = vec![
        ("docker A (systemd driver)", vec![&a], vec![id_a]),
        ("docker B (cgroupfs driver)", vec![&b], vec![id_b]),
        ("kubelet pod (cgroupfs driver)", vec![&pod], vec![id_pod]),
        ("containerd CRI (systemd driver)", vec![&cri], vec![id_cri]),
        ("podman", vec![&podman], vec![id_podman]),
        ("plain cgroup", vec![&plain], vec![]),
        ("forged below a service", vec![&forged], vec![]),
        ("where the test runs", vec![], vec![]),
    ];
    if let Some(docker_v1) = &docker_v1 {
        cases.push((
            "docker, v1 name=systemd only",
            vec![docker_v1],
            vec![id_docker_v1],
        ));
        // The v1 and unified hierarchies name two containers: neither is attested.
        cases.push(("two containers at once", vec![&b, docker_v1], vec![]));
    }
    if let Some(unit) = &unit {
        cases.push(("systemd unit (v1 name=systemd)", vec![unit], vec![id_unit]));
        // Container A in the unified hierarchy and the unit in systemd's: both attested.
        cases.push(("container A in a unit", vec![&a, unit], vec![id_a, id_unit]));
    }
    for (what, cgroups, want) in cases {
        let out = fetch_in(socket, &cgroups);
        if want.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: {out:?}");
            assert!(out.stdout.is_empty(), "{what}: {out:?}");
            assert!(
                stderr.contains(NO_IDENTITY) && stderr.contains("PermissionDenied"),
                "{what}: expected PermissionDenied ({NO_IDENTITY:?}), got {stderr}"
            );
        } else {
            let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            want.sort();
            assert_eq!(
                svid_ids(&out),
                Ok(want),
                "{what}\nagent log:\n{}",
                c.agent.log_tail()
            );
        }
    }
    drop(c);
    drop(made);
    assert!(
        !unified.join(&run).exists(),
        "the test's cgroups are removed"
    );
}

/// A caller is attested at every call, by the cgroup it is in then: a process that
/// connected in container A's cgroup and is then moved into container B's gets B's
/// identity on its next call over the same connection, and one moved into no container's
/// cgroup is refused.
#[test]
#[ignore = "needs root: creates kernel cgroups and moves a process between them"]
fn a_caller_moved_to_another_cgroup_is_attested_there() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;

    let unified = mount_point(None).expect("a cgroup2 (unified) hierarchy is mounted");
    let run = format!("tessera-e2e-move-{}", std::process::id());
    let mut made = TestCgroups::new();
    let a = made.make(
        &unified,
        &format!("{run}/system.slice/docker-{DOCKER_A}.scope"),
    );
    let b = made.make(&unified, &format!("{run}/docker/{DOCKER_B}"));
    let plain = made.make(&unified, &format!("{run}/plain"));

    let c = Cluster::start(&[]);
    let id_a = "spiffe://example.org/moved-a";
    let id_b = "spiffe://example.org/moved-b";
    c.server.create_entry(
        id_a,
        &["unix:uid:0", &format!("container:id:{DOCKER_A}")],
        &[],
    );
    c.server.create_entry(
        id_b,
        &["unix:uid:0", &format!("container:id:{DOCKER_B}")],
        &[],
    );
    let socket = c.agent.socket_path.to_str().unwrap().to_owned();
    let program = tests::bin("fetch-over-fd");

    // Starts the client in `a`; returns it and the IDs of its first call.
    let start = || {
        let mut child = Caller::root()
            .cgroups(&[&a])
            .command(&program)
            .args(["--connect", &socket, "--twice"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = Vec::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 || line.trim() == "--" {
                break;
            }
            first.push(line.trim().to_owned());
        }
        (child, out, first)
    };
    // Both entries are live once B's cgroup gets B's identity.
    let ready = tests::wait_for(Duration::from_secs(20), || {
        svid_ids(&fetch_in_as_root(&socket, &b))
            .ok()
            .filter(|ids| *ids == [id_b])
    });
    assert!(ready.is_some(), "agent log:\n{}", c.agent.log_tail());

    for (to, want) in [(&b, Some(id_b)), (&plain, None)] {
        let (mut child, mut out, first) = start();
        assert_eq!(first, [id_a], "first call, in container A");
        tests::cgroups::move_into(to, child.id());
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        match want {
            Some(id) => {
                assert!(status.success(), "{stderr}");
                assert_eq!(rest.trim(), id, "second call, moved to {}", to.display());
            }
            None => {
                assert!(!status.success(), "moved to {}: {rest}", to.display());
                assert!(
                    stderr.contains("PermissionDenied") && stderr.contains(NO_IDENTITY),
                    "{stderr}"
                );
            }
        }
    }
    drop(c);
    drop(made);
    assert!(
        !unified.join(&run).exists(),
        "the test's cgroups are removed"
    );
}

/// `fetch-over-fd --connect` as root, in `cgroup`.
fn fetch_in_as_root(socket: &str, cgroup: &Path) -> Output {
    let out = Caller::root()
        .cgroups(&[cgroup])
        .command(&tests::bin("fetch-over-fd"))
        .args(["--connect", socket])
        .output()
        .unwrap();
    // `fetch-over-fd` prints IDs one per line; shape it like the CLI's JSON for `svid_ids`.
    if !out.status.success() {
        return out;
    }
    let ids: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|id| serde_json::json!({ "spiffe_id": id }))
        .collect();
    Output {
        stdout: serde_json::to_vec(&serde_json::json!({ "svids": ids })).unwrap(),
        ..out
    }
}

/// An open stream is attested again before it sends: a process that opened a
/// `FetchX509SVID` stream in container A's cgroup and is then moved into container B's gets
/// B's identity on the stream at the next change of the agent's cache (here: an entry for
/// another workload), and one moved into no container's cgroup has its stream ended with
/// `PermissionDenied`. (Before, the stream went on serving A's identity.)
#[test]
#[ignore = "needs root: creates kernel cgroups and moves a process between them"]
fn an_open_stream_is_attested_again_where_its_process_was_moved() {
    let unified = mount_point(None).expect("a cgroup2 (unified) hierarchy is mounted");
    let run = format!("tessera-e2e-stream-{}", std::process::id());
    let mut made = TestCgroups::new();
    let a = made.make(
        &unified,
        &format!("{run}/system.slice/docker-{DOCKER_A}.scope"),
    );
    let b = made.make(&unified, &format!("{run}/docker/{DOCKER_B}"));
    let plain = made.make(&unified, &format!("{run}/plain"));

    let c = Cluster::start(&[]);
    let id_a = "spiffe://example.org/stream-a";
    let id_b = "spiffe://example.org/stream-b";
    c.server.create_entry(
        id_a,
        &["unix:uid:0", &format!("container:id:{DOCKER_A}")],
        &[],
    );
    c.server.create_entry(
        id_b,
        &["unix:uid:0", &format!("container:id:{DOCKER_B}")],
        &[],
    );
    let socket = c.agent.socket_path.to_str().unwrap().to_owned();
    let ready = tests::wait_for(Duration::from_secs(20), || {
        svid_ids(&fetch_in_as_root(&socket, &b))
            .ok()
            .filter(|ids| *ids == [id_b])
    });
    assert!(ready.is_some(), "agent log:\n{}", c.agent.log_tail());

    for (n, (to, want)) in [(&b, Some(id_b)), (&plain, None)].into_iter().enumerate() {
        let mut cmd = Caller::root()
            .cgroups(&[&a])
            .command(&tests::bin("fetch-over-fd"));
        cmd.args(["--connect", &socket, "--watch"]);
        let mut watch = tests::fetch::Watcher::spawn(cmd);
        assert_eq!(
            watch.next(Duration::from_secs(20)),
            Ok(Some(vec![id_a.to_owned()])),
            "first message, in container A"
        );
        tests::cgroups::move_into(to, watch.pid());
        // Any change of the agent's cache makes the stream render again.
        c.server.create_entry(
            &format!("spiffe://example.org/elsewhere-{n}"),
            &["unix:uid:4242"],
            &[],
        );
        let next = watch.next(Duration::from_secs(20));
        match want {
            Some(id) => assert_eq!(
                next,
                Ok(Some(vec![id.to_owned()])),
                "moved to {}\nagent log:\n{}",
                to.display(),
                c.agent.log_tail()
            ),
            None => {
                let ended = next.expect_err("the stream ends");
                assert!(
                    ended.contains("PermissionDenied") && ended.contains(NO_IDENTITY),
                    "moved to {}: {ended}",
                    to.display()
                );
            }
        }
    }
    drop(c);
    drop(made);
    assert!(
        !unified.join(&run).exists(),
        "the test's cgroups are removed"
    );
}
