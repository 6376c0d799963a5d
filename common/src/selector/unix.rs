//! The `unix` kind: the keys the agent's Unix attestor emits ([`UnixKey`]) and the rule
//! each key's value follows.
//!
//! Every rule accepts exactly the form attestation emits, because selectors match as
//! exact strings: `uid:01000` or an uppercase hash would be accepted by a looser parser
//! and then never equal what the attestor says.

use std::str::FromStr;

use super::{SelectorError, SelectorKind};

vocabulary! {
    /// A key of the `unix` kind: one fact the kernel reports about a local process.
    ///
    /// A process has one of each, except [`SupplementaryGid`](Self::SupplementaryGid) (one
    /// selector per group, possibly none) and [`User`](Self::User),
    /// [`Group`](Self::Group), [`Path`](Self::Path) and [`Sha256`](Self::Sha256), which are
    /// absent when there is no such fact or it has no selector form.
    pub enum UnixKey {
        /// Effective uid of the caller, from the kernel's peer credentials: `uid:1000`.
        Uid => "uid",
        /// Effective gid of the caller, from the kernel's peer credentials: `gid:1000`.
        Gid => "gid",
        /// Name of the caller's uid in the user database: `user:alice`.
        User => "user",
        /// Name of the caller's gid in the group database: `group:staff`.
        Group => "group",
        /// One of the caller's supplementary groups (`Groups:` in `/proc/<pid>/status`), one
        /// selector per group: `supplementary_gid:27`. The primary gid is `gid`, and appears
        /// here too only when the process's group list also holds it.
        SupplementaryGid => "supplementary_gid",
        /// Absolute path of the executable the caller runs: `path:/usr/bin/app`.
        Path => "path",
        /// SHA-256 of that executable, 64 lowercase hex characters: `sha256:9f86...`.
        Sha256 => "sha256",
    }
}

impl UnixKey {
    /// Checks a non-empty value against this key's rule.
    pub(super) fn validate_value(self, value: &str) -> Result<(), SelectorError> {
        match self {
            Self::Uid | Self::Gid | Self::SupplementaryGid => validate_id(self, value),
            Self::User | Self::Group => validate_name(self, value),
            Self::Path => validate_path(value),
            Self::Sha256 => validate_sha256(value),
        }
    }
}

impl FromStr for UnixKey {
    type Err = SelectorError;

    /// Parses a key name; only exact, lowercase spellings exist.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| SelectorError::UnknownKey {
            kind: SelectorKind::Unix,
            key: s.to_owned(),
        })
    }
}

/// A uid or gid: canonical decimal `u32`. Leading zeros are refused because attestation
/// emits `uid:1000`, and `uid:01000` would never equal it.
fn validate_id(key: UnixKey, value: &str) -> Result<(), SelectorError> {
    // `u32::from_str` alone would accept a leading `+`.
    let digits_only = value.bytes().all(|b| b.is_ascii_digit());
    let canonical = value == "0" || !value.starts_with('0');
    if !digits_only || !canonical || value.parse::<u32>().is_err() {
        return Err(SelectorError::InvalidUnixId(key));
    }
    Ok(())
}

/// A user or group name: without `:`, `/` or whitespace.
fn validate_name(key: UnixKey, value: &str) -> Result<(), SelectorError> {
    match value
        .chars()
        .find(|&c| c == ':' || c == '/' || c.is_whitespace())
    {
        Some(ch) => Err(SelectorError::InvalidUnixName { key, ch }),
        None => Ok(()),
    }
}

/// An executable path: absolute. NUL (which no path can contain) is already refused by the
/// control-character check every selector goes through.
fn validate_path(value: &str) -> Result<(), SelectorError> {
    if !value.starts_with('/') {
        return Err(SelectorError::RelativeUnixPath);
    }
    Ok(())
}

/// An executable digest: exactly 64 lowercase hex characters, the form attestation emits.
fn validate_sha256(value: &str) -> Result<(), SelectorError> {
    let is_hex = value
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if value.len() != 64 || !is_hex {
        return Err(SelectorError::InvalidSha256);
    }
    Ok(())
}
