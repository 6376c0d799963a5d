//! The top of the selector vocabulary: the kinds ([`SelectorKind`]) and the typed key of
//! any kind ([`SelectorKey`]).
//!
//! Adding a kind means a
//! variant of [`SelectorKind`], a key enum beside `unix.rs` declared with `vocabulary!`,
//! and a variant of [`SelectorKey`]; every `match` below then names what is still missing.
//! A kind is added together with the attestor that emits it: a kind the validator accepts
//! but nothing attests would make entries that never match.

use std::fmt;
use std::str::FromStr;

use super::{CgroupKey, ContainerKey, K8sKey, SelectorError, SystemdKey, UnixKey};

vocabulary! {
    /// A kind of selector: which attestor vouches for the fact.
    pub enum SelectorKind {
        /// Facts the kernel reports about a local process (the agent's Unix attestor): ids,
        /// names, supplementary groups, executable path and hash. Keys: [`UnixKey`].
        Unix => "unix",
        /// The caller's cgroup path (the agent's cgroup attestor). Keys: [`CgroupKey`].
        Cgroup => "cgroup",
        /// The container the caller runs in, recognised from its cgroup path. Keys:
        /// [`ContainerKey`].
        Container => "container",
        /// The systemd unit and slice the caller runs in, from its cgroup path. Keys:
        /// [`SystemdKey`].
        Systemd => "systemd",
        /// The Kubernetes pod and container, from the kubelet's cgroup layout. Keys:
        /// [`K8sKey`].
        K8s => "k8s",
    }
}

impl SelectorKind {
    /// Every key of this kind, in declaration order.
    pub fn keys(self) -> Vec<SelectorKey> {
        fn all<K: Copy + Into<SelectorKey>>(keys: &[K]) -> Vec<SelectorKey> {
            keys.iter().copied().map(Into::into).collect()
        }
        match self {
            Self::Unix => all(UnixKey::ALL),
            Self::Cgroup => all(CgroupKey::ALL),
            Self::Container => all(ContainerKey::ALL),
            Self::Systemd => all(SystemdKey::ALL),
            Self::K8s => all(K8sKey::ALL),
        }
    }

    /// This kind's key spelled exactly `key`.
    pub fn key(self, key: &str) -> Result<SelectorKey, SelectorError> {
        match self {
            Self::Unix => key.parse().map(SelectorKey::Unix),
            Self::Cgroup => key.parse().map(SelectorKey::Cgroup),
            Self::Container => key.parse().map(SelectorKey::Container),
            Self::Systemd => key.parse().map(SelectorKey::Systemd),
            Self::K8s => key.parse().map(SelectorKey::K8s),
        }
    }

    /// A valid `key:value` of this kind, for error messages.
    pub(super) const fn example(self) -> &'static str {
        match self {
            Self::Unix => "uid:1000",
            Self::Cgroup => "path:/system.slice/app.service",
            Self::Container => "runtime:docker",
            Self::Systemd => "unit:app.service",
            Self::K8s => "pod-uid:2f1c3e0a-8b7d-4c6e-9f5a-1b2c3d4e5f60",
        }
    }
}

impl FromStr for SelectorKind {
    type Err = SelectorError;

    /// Parses a kind name; only exact, lowercase spellings exist.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| SelectorError::UnknownKind(s.to_owned()))
    }
}

/// A key of some kind: which fact a selector states (`unix:uid`, `unix:supplementary_gid`).
///
/// Displays as `kind:key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKey {
    /// A key of [`SelectorKind::Unix`].
    Unix(UnixKey),
    /// A key of [`SelectorKind::Cgroup`].
    Cgroup(CgroupKey),
    /// A key of [`SelectorKind::Container`].
    Container(ContainerKey),
    /// A key of [`SelectorKind::Systemd`].
    Systemd(SystemdKey),
    /// A key of [`SelectorKind::K8s`].
    K8s(K8sKey),
}

impl SelectorKey {
    /// Every key of every kind, kind by kind.
    pub fn all() -> impl Iterator<Item = Self> {
        SelectorKind::ALL.iter().flat_map(|kind| kind.keys())
    }

    /// The kind this key belongs to.
    pub const fn kind(self) -> SelectorKind {
        match self {
            Self::Unix(_) => SelectorKind::Unix,
            Self::Cgroup(_) => SelectorKind::Cgroup,
            Self::Container(_) => SelectorKind::Container,
            Self::Systemd(_) => SelectorKind::Systemd,
            Self::K8s(_) => SelectorKind::K8s,
        }
    }

    /// The key name alone, e.g. `uid`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unix(key) => key.as_str(),
            Self::Cgroup(key) => key.as_str(),
            Self::Container(key) => key.as_str(),
            Self::Systemd(key) => key.as_str(),
            Self::K8s(key) => key.as_str(),
        }
    }

    /// Checks a non-empty value against this key's rule.
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::Unix(key) => key.validate_value(value),
            Self::Cgroup(key) => key.validate_value(value),
            Self::Container(key) => key.validate_value(value),
            Self::Systemd(key) => key.validate_value(value),
            Self::K8s(key) => key.validate_value(value),
        }
    }
}

macro_rules! key_into_selector_key {
    ($($key:ident => $variant:ident),+) => {$(
        impl From<$key> for SelectorKey {
            fn from(key: $key) -> Self {
                Self::$variant(key)
            }
        }
    )+};
}

key_into_selector_key!(
    UnixKey => Unix,
    CgroupKey => Cgroup,
    ContainerKey => Container,
    SystemdKey => Systemd,
    K8sKey => K8s
);

impl fmt::Display for SelectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.as_str())
    }
}

/// Displays every kind name, comma-separated, for error messages.
#[derive(Debug)]
pub(super) struct KindNames;

impl fmt::Display for KindNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        comma_separated(f, SelectorKind::ALL.iter().map(|kind| kind.as_str()))
    }
}

/// Displays the key names of one kind, comma-separated, for error messages.
#[derive(Debug)]
pub(super) struct KeyNames(pub(super) SelectorKind);

impl fmt::Display for KeyNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        comma_separated(f, self.0.keys().into_iter().map(SelectorKey::as_str))
    }
}

fn comma_separated<'a>(
    f: &mut fmt::Formatter<'_>,
    names: impl Iterator<Item = &'a str>,
) -> fmt::Result {
    for (i, name) in names.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(name)?;
    }
    Ok(())
}

/// Displays every container runtime name, comma-separated, for error messages.
#[derive(Debug)]
pub(super) struct RuntimeNames;

impl fmt::Display for RuntimeNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        comma_separated(f, super::ContainerRuntime::ALL.iter().map(|r| r.as_str()))
    }
}
