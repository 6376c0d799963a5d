//! The kinds the agent's cgroup attestor emits, from the caller's `/proc/<pid>/cgroup`:
//! `cgroup` ([`CgroupKey`]), `container` ([`ContainerKey`], with the runtimes of
//! [`ContainerRuntime`]), `systemd` ([`SystemdKey`]) and `k8s` ([`K8sKey`]).
//!
//! As for `unix`, each rule accepts exactly the form attestation emits: container ids are
//! 64 lowercase hex characters (what runtimes name their cgroups with), pod UIDs are
//! lowercase with dashes (the systemd driver's underscores are turned back into dashes by
//! the attestor), unit and slice names keep their suffix.

use std::str::FromStr;

use super::{SelectorError, SelectorKey, SelectorKind};

vocabulary! {
    /// A key of the `cgroup` kind.
    pub enum CgroupKey {
        /// The caller's cgroup path, as the kernel reports it (the unified hierarchy's, or
        /// the `name=systemd` one's on a host without it): `path:/system.slice/app.service`.
        Path => "path",
    }
}

vocabulary! {
    /// A key of the `container` kind: which container the caller runs in.
    pub enum ContainerKey {
        /// The container id, 64 lowercase hex characters: `id:3f2a...`.
        Id => "id",
        /// The runtime that created the container's cgroup: `runtime:docker`.
        Runtime => "runtime",
    }
}

vocabulary! {
    /// A key of the `systemd` kind: where systemd placed the caller.
    pub enum SystemdKey {
        /// The unit (service or scope) the caller belongs to: `unit:nginx.service`.
        Unit => "unit",
        /// The slice that unit is in: `slice:system.slice`.
        Slice => "slice",
    }
}

vocabulary! {
    /// A key of the `k8s` kind: facts the kubelet's cgroup layout states.
    pub enum K8sKey {
        /// The pod's UID, lowercase with dashes: `pod-uid:0f1e...-...`.
        PodUid => "pod-uid",
        /// The container id within the pod, 64 lowercase hex characters.
        ContainerId => "container-id",
    }
}

vocabulary! {
    /// A container runtime the cgroup attestor recognises by its cgroup layout; the values
    /// of `container:runtime`.
    pub enum ContainerRuntime {
        /// Docker (`/docker/<id>`, `docker-<id>.scope`).
        Docker => "docker",
        /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
        Containerd => "containerd",
        /// CRI-O (`crio-<id>.scope`, `crio-<id>`).
        CriO => "cri-o",
        /// Podman (`libpod-<id>.scope`, `libpod-<id>`).
        Podman => "podman",
    }
}

impl FromStr for ContainerRuntime {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| SelectorError::UnknownContainerRuntime(s.to_owned()))
    }
}

/// `FromStr` for a key enum of `kind`.
macro_rules! key_from_str {
    ($key:ident, $kind:expr) => {
        impl FromStr for $key {
            type Err = SelectorError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_name(s).ok_or_else(|| SelectorError::UnknownKey {
                    kind: $kind,
                    key: s.to_owned(),
                })
            }
        }
    };
}

key_from_str!(CgroupKey, SelectorKind::Cgroup);
key_from_str!(ContainerKey, SelectorKind::Container);
key_from_str!(SystemdKey, SelectorKind::Systemd);
key_from_str!(K8sKey, SelectorKind::K8s);

/// The longest systemd unit name (`UNIT_NAME_MAX`).
pub const MAX_UNIT_NAME: usize = 255;

impl CgroupKey {
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::Path => {
                if !value.starts_with('/') {
                    return Err(invalid(self, "an absolute cgroup path starting with \"/\""));
                }
                Ok(())
            }
        }
    }
}

impl ContainerKey {
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::Id => check(is_container_id(value), self, CONTAINER_ID_RULE),
            Self::Runtime => value.parse::<ContainerRuntime>().map(drop),
        }
    }
}

impl SystemdKey {
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::Unit => check(
                is_unit_name(value, &[".service", ".scope"]),
                self,
                "a systemd unit name ending in .service or .scope (at most 255 characters \
                 of A-Z a-z 0-9 : _ . - @ \\)",
            ),
            Self::Slice => check(
                is_unit_name(value, &[".slice"]),
                self,
                "a systemd slice name ending in .slice (at most 255 characters of \
                 A-Z a-z 0-9 : _ . - @ \\)",
            ),
        }
    }
}

impl K8sKey {
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::PodUid => check(
                is_pod_uid(value),
                self,
                "a pod UID: lowercase hex in groups of 8-4-4-4-12 separated by dashes, or 32 \
                 lowercase hex characters (a static pod)",
            ),
            Self::ContainerId => check(is_container_id(value), self, CONTAINER_ID_RULE),
        }
    }
}

const CONTAINER_ID_RULE: &str = "exactly 64 lowercase hex characters";

fn invalid(key: impl Into<SelectorKey>, rule: &'static str) -> SelectorError {
    SelectorError::InvalidValue {
        key: key.into(),
        rule,
    }
}

fn check(ok: bool, key: impl Into<SelectorKey>, rule: &'static str) -> Result<(), SelectorError> {
    if ok { Ok(()) } else { Err(invalid(key, rule)) }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A container id as runtimes write it into cgroup names: 64 lowercase hex characters.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// A pod UID as the kubelet names pod cgroups: a UUID in its canonical form (lowercase hex
/// groups of 8-4-4-4-12, dash-separated), or 32 lowercase hex characters (a static pod,
/// whose UID is the hash of its manifest).
pub fn is_pod_uid(s: &str) -> bool {
    if s.len() == 32 && is_lower_hex(s) {
        return true;
    }
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && is_lower_hex(g))
}

/// A systemd unit name with one of `suffixes`: a non-empty prefix of the characters systemd
/// allows, at most [`MAX_UNIT_NAME`] bytes in all.
pub fn is_unit_name(s: &str, suffixes: &[&str]) -> bool {
    let Some(prefix) = suffixes.iter().find_map(|suffix| s.strip_suffix(suffix)) else {
        return false;
    };
    s.len() <= MAX_UNIT_NAME
        && !prefix.is_empty()
        && prefix.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-' | b'@' | b'\\')
        })
}
