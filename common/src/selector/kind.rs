//! The top of the selector vocabulary: the kinds ([`SelectorKind`]) and the typed key of
//! any kind ([`SelectorKey`]).
//!
//! Adding a kind (the roadmap has `cgroup`, `container`, `systemd` and `k8s`) means a
//! variant of [`SelectorKind`], a key enum beside `unix.rs` declared with `vocabulary!`,
//! and a variant of [`SelectorKey`]; every `match` below then names what is still missing.
//! A kind is added together with the attestor that emits it: a kind the validator accepts
//! but nothing attests would make entries that never match.

use std::fmt;
use std::str::FromStr;

use super::{SelectorError, UnixKey};

vocabulary! {
    /// A kind of selector: which attestor vouches for the fact.
    pub enum SelectorKind {
        /// Facts the kernel reports about a local process (the agent's Unix attestor): ids,
        /// names, supplementary groups, executable path and hash. Keys: [`UnixKey`].
        Unix => "unix",
    }
}

impl SelectorKind {
    /// Every key of this kind, in declaration order.
    pub fn keys(self) -> Vec<SelectorKey> {
        match self {
            Self::Unix => UnixKey::ALL
                .iter()
                .copied()
                .map(SelectorKey::Unix)
                .collect(),
        }
    }

    /// This kind's key spelled exactly `key`.
    pub fn key(self, key: &str) -> Result<SelectorKey, SelectorError> {
        match self {
            Self::Unix => key.parse().map(SelectorKey::Unix),
        }
    }

    /// A valid `key:value` of this kind, for error messages.
    pub(super) const fn example(self) -> &'static str {
        match self {
            Self::Unix => "uid:1000",
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
        }
    }

    /// The key name alone, e.g. `uid`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unix(key) => key.as_str(),
        }
    }

    /// Checks a non-empty value against this key's rule.
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::Unix(key) => key.validate_value(value),
        }
    }
}

impl From<UnixKey> for SelectorKey {
    fn from(key: UnixKey) -> Self {
        Self::Unix(key)
    }
}

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
