//! The caller's cgroups, from `/proc/<pid>/cgroup`, as `cgroup:`, `container:`, `systemd:`
//! and `k8s:` selectors.
//!
//! The file has one line per hierarchy, `<hierarchy id>:<controllers>:<path>`: on a cgroup
//! v2 host a single `0::/path`, on a v1 or hybrid host one line per v1 hierarchy
//! (`4:memory:/docker/<id>`, `1:name=systemd:/...`) and, on hybrid, the unified `0::` line.
//! The paths are what the runtimes and systemd chose when they created the cgroups:
//!
//! | layout | path (last components) | selectors |
//! |---|---|---|
//! | docker, cgroupfs driver | `/docker/<id>` | `container:id`, `container:runtime:docker` |
//! | docker, systemd driver | `/system.slice/docker-<id>.scope` | the same |
//! | containerd CRI, systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` | `container:*`, `k8s:pod-uid`, `k8s:container-id` |
//! | kubelet, cgroupfs driver | `/kubepods/burstable/pod<uid>/<id>` | `container:id` (runtime unknown), `k8s:*` |
//! | cri-o | `crio-<id>.scope` (systemd), `crio-<id>` (cgroupfs) | `container:runtime:cri-o` |
//! | podman | `libpod-<id>.scope` (systemd), `libpod-<id>` (cgroupfs) | `container:runtime:podman` |
//! | systemd | `/system.slice/nginx.service`, `/a.slice/a-b.slice/x.scope` | `systemd:unit`, `systemd:slice` |
//!
//! `cgroup:path`, `systemd:unit` and `systemd:slice` come from systemd's hierarchy: the
//! `name=systemd` line on v1 and hybrid hosts (there the unified line of a docker container
//! may name `containerd.service`), else the unified `0::` line. Container and pod facts come
//! from every line.
//!
//! **What decides.** Only a writer of cgroupfs chooses these paths: the runtime, systemd or
//! the kubelet, as root. A process may create cgroups below its own when it was delegated a
//! subtree (a systemd unit with `Delegate=yes`, a user's `user@<uid>.service` where
//! rootless podman puts its containers, a privileged container), and could name them like
//! a container. Every fact is therefore taken from the *outermost* matching component, the
//! one the manager above the delegation point created, and nothing below the first systemd
//! unit (`.service`, `.scope`) is read at all unless that unit is itself the container's
//! scope: a child cgroup `docker-<other id>.scope` below a container's cgroup or inside a
//! service changes nothing, and rootless containers get no `container:` selectors. For the
//! same reason the systemd slice and unit are read only from the run of slices that starts
//! at the root, as systemd lays them out. When two hierarchies disagree
//! (a v1 controller places the process in one container, the unified hierarchy in
//! another), the fact is omitted rather than chosen. Omitting a fact fails closed: a
//! selector can only make a caller match more entries.
//!
//! Paths outside the agent's cgroup namespace show as `/..`-relative; such a line yields no
//! facts (the agent should run in the host's cgroup namespace).
//!
//! [`parse`] and [`facts`] are pure and accept arbitrary text without panicking (the fuzz
//! target `proc_cgroup` checks that).

use std::collections::BTreeSet;

use common::{
    CgroupKey, ContainerKey, ContainerRuntime, K8sKey, Selector, SelectorError, SelectorKey,
    SelectorKind, SelectorSet, SystemdKey,
};

use super::procfs::{self, ProcfsParseError};
use super::{AttestationError, Input, PinnedProcess, WorkloadAttestor};

/// Attests the `cgroup`, `container`, `systemd` and `k8s` kinds from the caller's
/// `/proc/<pid>/cgroup`, read through the pinned process.
#[derive(Debug, Default)]
pub(crate) struct CgroupAttestor;

impl WorkloadAttestor for CgroupAttestor {
    fn kinds(&self) -> &'static [SelectorKind] {
        &[
            SelectorKind::Cgroup,
            SelectorKind::Container,
            SelectorKind::Systemd,
            SelectorKind::K8s,
        ]
    }

    fn input(&self) -> Option<Input> {
        // The caller's cgroup file (and the agent's own hierarchies, which change only if
        // cgroup hierarchies are mounted or unmounted).
        Some(Input::Cgroup)
    }

    fn attest(&self, process: &PinnedProcess<'_>) -> Result<SelectorSet, AttestationError> {
        let pid = process.pid;
        let malformed = |source| AttestationError::Malformed {
            pid,
            what: "cgroup",
            source,
        };
        let lines = parse(process.cgroup()?).map_err(malformed)?;
        // Every process lists the same hierarchies; a line more than the agent's own would
        // be forged (see `same_hierarchies`).
        let own = procfs::own_cgroup().map_err(|e| procfs::io_error(pid, "own cgroup", e))?;
        let own = parse(&own).map_err(malformed)?;
        if !same_hierarchies(&lines, &own) {
            return Err(malformed(ProcfsParseError::Cgroup(
                "hierarchies differ from the agent's own",
            )));
        }
        let facts = facts(&lines);
        let set = selectors(&facts).map_err(|(key, source)| {
            tracing::error!(%key, error = %source, "BUG: cgroup fact refused by the selector vocabulary");
            AttestationError::Selector {
                key,
                source: std::sync::Arc::new(source),
            }
        })?;
        tracing::debug!(
            pid,
            selectors = set.len(),
            container = facts.container.is_some(),
            "cgroup attested"
        );
        Ok(set)
    }
}

/// Most lines a `/proc/<pid>/cgroup` file has: one per hierarchy (the kernel has at most 16
/// v1 controllers, plus named hierarchies and the unified one).
const MAX_LINES: usize = 64;

/// One line of `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupLine {
    /// The hierarchy id; 0 is the unified (v2) hierarchy.
    pub(crate) hierarchy: u32,
    /// The controllers bound to that hierarchy (`memory`, `cpu,cpuacct`, `name=systemd`);
    /// empty for the unified hierarchy.
    pub(crate) controllers: String,
    /// The cgroup path, starting with `/`.
    pub(crate) path: String,
}

/// Parses `/proc/<pid>/cgroup`. Refuses a file with no lines, a line not of the form
/// `<id>:<controllers>:/<path>`, a hierarchy listed twice, or more than [`MAX_LINES`]
/// lines: the kernel writes none of those, so they could only come from a forged line.
pub(crate) fn parse(text: &str) -> Result<Vec<CgroupLine>, ProcfsParseError> {
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if lines.len() == MAX_LINES {
            return Err(ProcfsParseError::Cgroup("too many lines"));
        }
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ProcfsParseError::Cgroup("line is not id:controllers:path"));
        };
        let canonical = id == "0" || !id.starts_with('0');
        let hierarchy = match id.parse::<u32>() {
            Ok(h) if canonical && id.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => return Err(ProcfsParseError::Cgroup("hierarchy id is not a number")),
        };
        if !path.starts_with('/') {
            return Err(ProcfsParseError::Cgroup("path is not absolute"));
        }
        if !seen.insert(hierarchy) {
            return Err(ProcfsParseError::Cgroup("hierarchy listed twice"));
        }
        lines.push(CgroupLine {
            hierarchy,
            controllers: controllers.to_owned(),
            path: path.to_owned(),
        });
    }
    if lines.is_empty() {
        return Err(ProcfsParseError::Cgroup("no lines"));
    }
    Ok(lines)
}

/// Whether two files list the same hierarchies (ids and controllers, in order). Every
/// process sees the same hierarchies, so the caller's file must list exactly the agent's
/// own: a line more would be a forged one (a cgroup name holding a newline).
pub(crate) fn same_hierarchies(a: &[CgroupLine], b: &[CgroupLine]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.hierarchy == y.hierarchy && x.controllers == y.controllers)
}

/// A container, as its cgroup names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    /// 64 lowercase hex characters.
    pub(crate) id: String,
    /// `None` where the layout does not say (a bare id under a kubelet pod cgroup).
    pub(crate) runtime: Option<ContainerRuntime>,
}

/// What one cgroup path states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PathFacts {
    /// The outermost container cgroup.
    pub(crate) container: Option<Container>,
    /// The pod UID (dashes), when a kubelet pod cgroup encloses the path.
    pub(crate) pod_uid: Option<String>,
    /// Whether [`Self::container`] lies inside that pod cgroup (so it is the pod's container).
    pub(crate) container_in_pod: bool,
    /// The systemd unit directly below the root run of slices.
    pub(crate) unit: Option<String>,
    /// The last slice of that run.
    pub(crate) slice: Option<String>,
}

/// Everything the cgroup file of one process states, merged over its hierarchies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupFacts {
    /// The unified hierarchy's path (or `name=systemd`'s without one).
    pub(crate) path: Option<String>,
    /// The facts every hierarchy that states them agrees on.
    pub(crate) container: Option<Container>,
    pub(crate) pod_uid: Option<String>,
    pub(crate) k8s_container_id: Option<String>,
    pub(crate) unit: Option<String>,
    pub(crate) slice: Option<String>,
}

/// What a path states, reading its components outermost first (see the module docs).
pub(crate) fn path_facts(path: &str) -> PathFacts {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut facts = PathFacts::default();
    if components.iter().any(|c| *c == "." || *c == "..") {
        return facts;
    }
    // systemd: the run of slices from the root, then one unit.
    let slices = components
        .iter()
        .take_while(|c| common::selector::is_unit_name(c, &[".slice"]))
        .count();
    if slices > 0 {
        facts.slice = components.get(slices - 1).map(|s| (*s).to_owned());
        facts.unit = components
            .get(slices)
            .filter(|c| common::selector::is_unit_name(c, &[".service", ".scope"]))
            .map(|c| (*c).to_owned());
    }
    let mut kubepods = false;
    for (i, component) in components.iter().enumerate() {
        let parent = i.checked_sub(1).and_then(|p| components.get(p)).copied();
        if let Some(found) = container(component, parent, facts.pod_uid.is_some()) {
            facts.container_in_pod = facts.pod_uid.is_some();
            facts.container = Some(found);
            break;
        }
        // Below a unit, the tree may be delegated to the unit's own processes (a service
        // with `Delegate=yes`, a user's `user@<uid>.service`), which can name cgroups as
        // they like: nothing there is read.
        if common::selector::is_unit_name(component, &[".service", ".scope"]) {
            break;
        }
        if facts.pod_uid.is_none() {
            if *component == "kubepods" || *component == "kubepods.slice" {
                kubepods = true;
            } else if let Some(uid) = pod_uid(component, kubepods) {
                facts.pod_uid = Some(uid);
            }
        }
    }
    facts
}

/// The pod UID a kubelet pod cgroup is named with: `pod<uid>` (cgroupfs driver, below a
/// `kubepods` cgroup) or `kubepods[-besteffort|-burstable]-pod<uid with _>.slice` (systemd
/// driver).
fn pod_uid(component: &str, below_kubepods: bool) -> Option<String> {
    let uid = if let Some(rest) = component.strip_prefix("kubepods-") {
        let rest = rest
            .strip_prefix("besteffort-")
            .or_else(|| rest.strip_prefix("burstable-"))
            .unwrap_or(rest);
        rest.strip_prefix("pod")?
            .strip_suffix(".slice")?
            .replace('_', "-")
    } else if below_kubepods {
        component.strip_prefix("pod")?.to_owned()
    } else {
        return None;
    };
    common::selector::is_pod_uid(&uid).then_some(uid)
}

/// The container a component names, given its parent component and whether a pod cgroup
/// encloses it.
fn container(component: &str, parent: Option<&str>, in_pod: bool) -> Option<Container> {
    use ContainerRuntime as R;
    let id_in = |prefix: &str, suffix: &str| {
        component
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .filter(|id| common::selector::is_container_id(id))
    };
    let named = [
        ("docker-", ".scope", R::Docker),
        ("cri-containerd-", ".scope", R::Containerd),
        ("crio-", ".scope", R::CriO),
        ("crio-", "", R::CriO),
        ("libpod-", ".scope", R::Podman),
        ("libpod-", "", R::Podman),
    ];
    for (prefix, suffix, runtime) in named {
        if let Some(id) = id_in(prefix, suffix) {
            return Some(Container {
                id: id.to_owned(),
                runtime: Some(runtime),
            });
        }
    }
    if !common::selector::is_container_id(component) {
        return None;
    }
    // A bare id: docker's cgroupfs layout, or any CRI runtime's below a kubelet pod.
    let runtime = match parent {
        Some("docker") => Some(R::Docker),
        _ if in_pod => None,
        _ => return None,
    };
    Some(Container {
        id: component.to_owned(),
        runtime,
    })
}

/// Merges the facts of every line (see the module docs): a fact two hierarchies disagree on
/// is omitted.
pub(crate) fn facts(lines: &[CgroupLine]) -> CgroupFacts {
    let per_line: Vec<PathFacts> = lines.iter().map(|l| path_facts(&l.path)).collect();
    // systemd's own hierarchy: `name=systemd` on v1 and hybrid hosts (where the unified
    // line may name the runtime's service rather than the container), else the unified.
    let systemd = lines
        .iter()
        .position(|l| l.controllers == "name=systemd")
        .or_else(|| lines.iter().position(|l| l.hierarchy == 0));
    let path = systemd
        .and_then(|i| lines.get(i))
        .map(|l| l.path.clone())
        .filter(|p| !p.split('/').any(|c| c == "." || c == ".."))
        // Bytes that were not UTF-8 were replaced: two paths could give one selector.
        .filter(|p| !p.contains(char::REPLACEMENT_CHARACTER));
    let in_systemd = systemd.and_then(|i| per_line.get(i));
    let containers = agreed(per_line.iter().map(|f| f.container.clone()));
    let k8s_container_id = agreed(per_line.iter().map(|f| {
        f.container
            .as_ref()
            .filter(|_| f.container_in_pod)
            .map(|c| c.id.clone())
    }));
    CgroupFacts {
        path,
        container: containers,
        pod_uid: agreed(per_line.iter().map(|f| f.pod_uid.clone())),
        k8s_container_id,
        unit: in_systemd.and_then(|f| f.unit.clone()),
        slice: in_systemd.and_then(|f| f.slice.clone()),
    }
}

/// The one value the lines that state a fact agree on, or `None` when none states it or
/// two disagree.
fn agreed<T: PartialEq>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
    let mut found: Option<T> = None;
    for value in values.flatten() {
        match &found {
            None => found = Some(value),
            Some(f) if *f == value => {}
            Some(_) => {
                tracing::debug!("cgroup hierarchies disagree; omitting the fact");
                return None;
            }
        }
    }
    found
}

/// The selectors for `facts`.
///
/// Ids, runtimes, pod UIDs, units and slices were validated by the same rules the
/// vocabulary has, so a refusal is a bug and is returned. The path comes from outside our
/// control (it may be longer than a selector may be) and is omitted when it has no
/// selector form.
pub(crate) fn selectors(facts: &CgroupFacts) -> Result<SelectorSet, (SelectorKey, SelectorError)> {
    fn required(
        key: impl Into<SelectorKey>,
        value: &str,
    ) -> Result<Selector, (SelectorKey, SelectorError)> {
        let key = key.into();
        Selector::new(key, value).map_err(|e| (key, e))
    }
    let mut set = SelectorSet::new();
    if let Some(path) = &facts.path {
        match Selector::new(CgroupKey::Path, path) {
            Ok(s) => {
                set.insert(s);
            }
            Err(error) => tracing::debug!(%error, "cgroup path has no selector form; omitting it"),
        }
    }
    if let Some(container) = &facts.container {
        set.insert(required(ContainerKey::Id, &container.id)?);
        if let Some(runtime) = container.runtime {
            set.insert(required(ContainerKey::Runtime, runtime.as_str())?);
        }
    }
    if let Some(uid) = &facts.pod_uid {
        set.insert(required(K8sKey::PodUid, uid)?);
    }
    if let Some(id) = &facts.k8s_container_id {
        set.insert(required(K8sKey::ContainerId, id)?);
    }
    if let Some(unit) = &facts.unit {
        set.insert(required(SystemdKey::Unit, unit)?);
    }
    if let Some(slice) = &facts.slice {
        set.insert(required(SystemdKey::Slice, slice)?);
    }
    Ok(set)
}

/// Parses a whole file into selectors, as the attestor does (without comparing hierarchies
/// with the agent's own): what the fuzz target and the fixture tests run.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn selectors_of(text: &str) -> Result<SelectorSet, ProcfsParseError> {
    let lines = parse(text)?;
    selectors(&facts(&lines)).map_err(|(key, error)| {
        tracing::error!(%key, %error, "BUG: cgroup fact refused by the selector vocabulary");
        ProcfsParseError::Cgroup("a fact was refused by the selector vocabulary")
    })
}

#[cfg(test)]
mod tests;
