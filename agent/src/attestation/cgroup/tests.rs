//! Fixtures: `/proc/<pid>/cgroup` as each runtime and driver lays it out.

use super::*;

const ID: &str = "7e3c2f1a9b8d4c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";
const OTHER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const POD: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

/// The selectors of `text` as strings, sorted.
fn of(text: &str) -> Vec<String> {
    selectors_of(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn want(items: &[String]) -> Vec<String> {
    let mut v = items.to_vec();
    v.sort();
    v
}

/// A v1 host with every hierarchy at `path`, as the kernel lists them (Ubuntu 18.04).
fn v1(path: &str, unified: Option<&str>) -> String {
    let mut s = String::new();
    for (i, c) in [
        "pids",
        "hugetlb",
        "net_cls,net_prio",
        "cpuset",
        "memory",
        "rdma",
        "cpu,cpuacct",
        "devices",
        "perf_event",
        "freezer",
        "blkio",
    ]
    .iter()
    .enumerate()
    {
        let p = if *c == "rdma" { "/" } else { path };
        s.push_str(&format!("{}:{c}:{p}\n", 12 - i));
    }
    s.push_str(&format!("1:name=systemd:{path}\n"));
    if let Some(u) = unified {
        s.push_str(&format!("0::{u}\n"));
    }
    s
}

fn container(id: &str, runtime: Option<&str>) -> Vec<String> {
    let mut v = vec![format!("container:id:{id}")];
    if let Some(r) = runtime {
        v.push(format!("container:runtime:{r}"));
    }
    v
}

#[test]
fn docker_layouts() {
    // cgroup v2, systemd driver (Docker 20+ on Fedora, Ubuntu 22.04).
    let path = format!("/system.slice/docker-{ID}.scope");
    let mut w = container(ID, Some("docker"));
    w.push(format!("cgroup:path:{path}"));
    w.push("systemd:slice:system.slice".into());
    w.push(format!("systemd:unit:docker-{ID}.scope"));
    assert_eq!(of(&format!("0::{path}\n")), want(&w));

    // cgroup v2, cgroupfs driver.
    let path = format!("/docker/{ID}");
    let mut w = container(ID, Some("docker"));
    w.push(format!("cgroup:path:{path}"));
    assert_eq!(of(&format!("0::{path}\n")), want(&w));

    // v1, cgroupfs driver.
    assert_eq!(of(&v1(&path, None)), want(&w));

    // Hybrid, cgroupfs driver: the unified line names containerd's service, which must not
    // become the container's unit or path.
    assert_eq!(
        of(&v1(&path, Some("/system.slice/containerd.service"))),
        want(&w)
    );

    // Docker inside a host cgroup the agent is not at the root of.
    let path = format!("/process_api/1f2e/docker/{ID}");
    let mut w = container(ID, Some("docker"));
    w.push(format!("cgroup:path:{path}"));
    assert_eq!(of(&format!("0::{path}\n")), want(&w));
}

#[test]
fn kubelet_systemd_driver() {
    let pod_slice = |qos: &str| {
        let under = POD.replace('-', "_");
        match qos {
            "" => format!("/kubepods.slice/kubepods-pod{under}.slice"),
            q => format!("/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{under}.slice"),
        }
    };
    for qos in ["", "besteffort", "burstable"] {
        let slice = pod_slice(qos).rsplit('/').next().unwrap().to_owned();
        for (scope, runtime) in [
            (format!("cri-containerd-{ID}.scope"), "containerd"),
            (format!("crio-{ID}.scope"), "cri-o"),
            (format!("docker-{ID}.scope"), "docker"),
        ] {
            let path = format!("{}/{scope}", pod_slice(qos));
            let mut w = container(ID, Some(runtime));
            w.push(format!("cgroup:path:{path}"));
            w.push(format!("k8s:pod-uid:{POD}"));
            w.push(format!("k8s:container-id:{ID}"));
            w.push(format!("systemd:slice:{slice}"));
            w.push(format!("systemd:unit:{scope}"));
            assert_eq!(of(&format!("0::{path}\n")), want(&w), "{path}");
        }
        // The pod's conmon (cri-o) is in the pod but is no container.
        let path = format!("{}/crio-conmon-{ID}.scope", pod_slice(qos));
        let w = [
            format!("cgroup:path:{path}"),
            format!("k8s:pod-uid:{POD}"),
            format!("systemd:slice:{slice}"),
            format!("systemd:unit:crio-conmon-{ID}.scope"),
        ];
        assert_eq!(of(&format!("0::{path}\n")), want(&w), "{path}");
    }
}

#[test]
fn kubelet_cgroupfs_driver() {
    for qos in ["", "besteffort/", "burstable/"] {
        // containerd: a bare id, runtime unknown.
        let path = format!("/kubepods/{qos}pod{POD}/{ID}");
        let mut w = container(ID, None);
        w.push(format!("cgroup:path:{path}"));
        w.push(format!("k8s:pod-uid:{POD}"));
        w.push(format!("k8s:container-id:{ID}"));
        assert_eq!(of(&format!("0::{path}\n")), want(&w), "{path}");
        // The same on v1: every controller agrees.
        assert_eq!(of(&v1(&path, None)), want(&w), "{path}");
        // cri-o's cgroupfs layout names its runtime.
        let path = format!("/kubepods/{qos}pod{POD}/crio-{ID}");
        let mut w = container(ID, Some("cri-o"));
        w.push(format!("cgroup:path:{path}"));
        w.push(format!("k8s:pod-uid:{POD}"));
        w.push(format!("k8s:container-id:{ID}"));
        assert_eq!(of(&format!("0::{path}\n")), want(&w), "{path}");
    }
    // The pause container's sibling: a pod cgroup alone gives the pod.
    let path = format!("/kubepods/burstable/pod{POD}");
    assert_eq!(
        of(&format!("0::{path}\n")),
        want(&[format!("cgroup:path:{path}"), format!("k8s:pod-uid:{POD}")])
    );
    // A static pod's UID is a 32-hex hash.
    let hash = "5c8c4a5b4b2c6b1b8e8f9d6b6f3b2a1c";
    let path = format!("/kubepods/besteffort/pod{hash}/{ID}");
    assert!(of(&format!("0::{path}\n")).contains(&format!("k8s:pod-uid:{hash}")));
    // `pod<uid>` outside kubepods is nobody's pod, and a bare id outside a pod or docker is
    // nobody's container.
    let path = format!("/other/pod{POD}/{ID}");
    assert_eq!(of(&format!("0::{path}\n")), [format!("cgroup:path:{path}")]);
}

#[test]
fn podman_layouts() {
    // Rootful, systemd cgroup manager; `--systemd=always` adds a `container` child.
    for path in [
        format!("/machine.slice/libpod-{ID}.scope"),
        format!("/machine.slice/libpod-{ID}.scope/container"),
    ] {
        let mut w = container(ID, Some("podman"));
        w.push(format!("cgroup:path:{path}"));
        w.push("systemd:slice:machine.slice".into());
        w.push(format!("systemd:unit:libpod-{ID}.scope"));
        assert_eq!(of(&format!("0::{path}\n")), want(&w), "{path}");
    }
    // Rootful, cgroupfs manager.
    let path = format!("/libpod_parent/libpod-{ID}");
    let mut w = container(ID, Some("podman"));
    w.push(format!("cgroup:path:{path}"));
    assert_eq!(of(&format!("0::{path}\n")), want(&w));
    // conmon is no container.
    let path = format!("/machine.slice/libpod-conmon-{ID}.scope");
    assert!(
        !of(&format!("0::{path}\n"))
            .iter()
            .any(|s| s.starts_with("container:"))
    );
    // Rootless: inside the user's own delegated `user@.service`, where the user names
    // cgroups as it likes. No container selectors.
    let path = format!(
        "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
    );
    assert_eq!(
        of(&format!("0::{path}\n")),
        want(&[
            format!("cgroup:path:{path}"),
            "systemd:slice:user-1000.slice".into(),
            "systemd:unit:user@1000.service".into(),
        ])
    );
}

#[test]
fn systemd_layouts() {
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        (
            "/system.slice/nginx.service",
            Some("system.slice"),
            Some("nginx.service"),
        ),
        (
            "/system.slice/system-getty.slice/getty@tty1.service",
            Some("system-getty.slice"),
            Some("getty@tty1.service"),
        ),
        (
            "/app.slice/app-web.slice/app-web-api.slice/api@2.service",
            Some("app-web-api.slice"),
            Some("api@2.service"),
        ),
        (
            "/user.slice/user-1000.slice/session-3.scope",
            Some("user-1000.slice"),
            Some("session-3.scope"),
        ),
        // A delegated service's own children change nothing.
        (
            "/system.slice/build.service/docker-x.scope/a.service",
            Some("system.slice"),
            Some("build.service"),
        ),
        ("/system.slice", Some("system.slice"), None),
        ("/init.scope", None, None),
        ("/", None, None),
    ];
    for (path, slice, unit) in cases {
        let mut w = vec![format!("cgroup:path:{path}")];
        w.extend(slice.map(|s| format!("systemd:slice:{s}")));
        w.extend(unit.map(|u| format!("systemd:unit:{u}")));
        assert_eq!(of(&format!("0::{path}\n")), want(&w), "{path}");
    }
    // v1: systemd's hierarchy is name=systemd; other controllers may sit elsewhere.
    let text =
        "5:memory:/system.slice\n3:cpu,cpuacct:/\n1:name=systemd:/system.slice/sshd.service\n";
    assert_eq!(
        of(text),
        [
            "cgroup:path:/system.slice/sshd.service",
            "systemd:slice:system.slice",
            "systemd:unit:sshd.service"
        ]
    );
}

/// A process can forge nothing by creating cgroups below its own: the outermost container
/// wins, and nothing below a service is read.
#[test]
fn delegated_subtrees_cannot_claim_another_container() {
    let forged = [
        format!("/docker/{ID}/docker/{OTHER}"),
        format!("/system.slice/docker-{ID}.scope/docker-{OTHER}.scope"),
        format!("/kubepods/burstable/pod{POD}/{ID}/{OTHER}"),
    ];
    for path in forged {
        let got = of(&format!("0::{path}\n"));
        assert!(
            got.contains(&format!("container:id:{ID}")),
            "{path}: {got:?}"
        );
        assert!(
            !got.iter()
                .any(|s| s.contains(OTHER) && !s.starts_with("cgroup:path")),
            "{path}: {got:?}"
        );
    }
    for path in [
        format!("/system.slice/ci.service/docker-{OTHER}.scope"),
        format!("/system.slice/ci.service/docker/{OTHER}"),
        format!("/user.slice/user-1000.slice/user@1000.service/docker-{OTHER}.scope"),
        format!("/system.slice/ci.service/kubepods/pod{POD}/{OTHER}"),
    ] {
        let got = of(&format!("0::{path}\n"));
        assert!(
            !got.iter()
                .any(|s| s.starts_with("container:") || s.starts_with("k8s:")),
            "{path}: {got:?}"
        );
    }
}

#[test]
fn hierarchies_that_disagree_state_nothing() {
    let text = format!("4:memory:/docker/{ID}\n1:name=systemd:/docker/{OTHER}\n0::/\n");
    assert_eq!(of(&text), [format!("cgroup:path:/docker/{OTHER}")]);
    // One hierarchy stating it and the others silent is agreement.
    let text = format!("4:memory:/docker/{ID}\n1:name=systemd:/\n0::/\n");
    assert_eq!(
        of(&text),
        want(&[
            "cgroup:path:/".into(),
            format!("container:id:{ID}"),
            "container:runtime:docker".into()
        ])
    );
}

#[test]
fn near_misses_are_no_containers() {
    for component in [
        format!("docker-{}.scope", &ID[1..]),
        format!("docker-{}.scope", ID.to_uppercase()),
        format!("docker-{ID}0.scope"),
        format!("docker-{ID}.service"),
        format!("docker-{ID}"),
        format!("cri-containerd-{ID}"),
        format!("rkt-{ID}.scope"),
        ID[1..].to_owned(),
    ] {
        let path = format!("/x/{component}");
        assert_eq!(
            of(&format!("0::{path}\n")),
            [format!("cgroup:path:{path}")],
            "{path}"
        );
    }
    // Paths outside the agent's cgroup namespace show as `..`: nothing is read from them.
    assert!(of(&format!("0::/../../docker/{ID}\n")).is_empty());
    // Not UTF-8 (replaced when read): no path selector.
    assert!(of("0::/a\u{fffd}b\n").is_empty());
}

#[test]
fn malformed_files_are_refused() {
    for text in [
        "",
        "\n",
        "0:/\n",
        "x::/\n",
        "-1::/\n",
        "01::/\n",
        "+1::/\n",
        "0::relative\n",
        "0::\n",
        "0::/a\n0::/b\n",
        "4:memory:/\n4:cpu:/\n",
    ] {
        assert!(selectors_of(text).is_err(), "{text:?}");
    }
    let many: String = (0..=MAX_LINES).map(|i| format!("{i}:c{i}:/\n")).collect();
    assert!(selectors_of(&many).is_err());
    let fits: String = (0..MAX_LINES).map(|i| format!("{i}:c{i}:/\n")).collect();
    assert!(selectors_of(&fits).is_ok());
    // A path may hold `:` (the first two separate the fields).
    assert_eq!(of("0::/a:b\n"), ["cgroup:path:/a:b"]);
}

#[test]
fn same_hierarchies_compares_ids_and_controllers() {
    let a = parse("4:memory:/x\n1:name=systemd:/\n0::/\n").unwrap();
    let b = parse("4:memory:/\n1:name=systemd:/y\n0::/z\n").unwrap();
    assert!(same_hierarchies(&a, &b));
    let c = parse("4:memory:/\n1:name=systemd:/\n0::/\n5:cpu:/\n").unwrap();
    assert!(!same_hierarchies(&a, &c));
    let d = parse("4:cpu:/\n1:name=systemd:/\n0::/\n").unwrap();
    assert!(!same_hierarchies(&a, &d));
}

/// Arbitrary input never panics, and whatever comes out is a valid selector set (the
/// `proc_cgroup` fuzz target does the same with coverage guidance).
#[test]
fn arbitrary_input_never_panics() {
    let pieces = [
        "0",
        "1",
        "4",
        ":",
        "::",
        "/",
        "\n",
        "memory",
        "name=systemd",
        "docker",
        "docker-",
        ".scope",
        ".slice",
        ".service",
        "kubepods",
        "kubepods-",
        "pod",
        "burstable-",
        "_",
        "-",
        "crio-",
        "libpod-",
        "cri-containerd-",
        ID,
        POD,
        "..",
        "\u{fffd}",
        " ",
        "é",
        "@",
        "user@1000.service",
        "\0",
        "\r",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let n = next() % 24;
        let text: String = (0..n)
            .map(|_| pieces[usize::try_from(next() % pieces.len() as u64).unwrap()])
            .collect();
        if let Ok(set) = selectors_of(&text) {
            for s in &set {
                assert_eq!(s.to_string().parse::<Selector>().as_ref(), Ok(s));
            }
        }
    }
}
