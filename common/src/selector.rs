//! Selectors (`kind:value` facts about a workload) and the subset-match rule.
//!
//! Attestation turns a caller into a [`SelectorSet`] (e.g. `unix:uid:1000`, `unix:user:web`);
//! a registration entry carries the [`SelectorSet`] a caller must show to receive that
//! entry's identity. Selectors are compared as exact strings, so anything that could never
//! equal an attested selector (an unknown kind, `uid:01`, an uppercase hash) is rejected
//! when parsed instead of silently never matching. Validation happens in every constructor,
//! so a [`Selector`] in hand is always well formed. The match rule is
//! [`SelectorSet::entry_matches`]: every entry selector must be present in the caller's set,
//! and an entry with no selectors matches nobody.

use std::collections::{BTreeSet, btree_set};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest selector, in bytes of its `kind:value` string form.
///
/// Bounds the size of policy and audit records; no real attestor fact comes close.
pub const MAX_SELECTOR_LENGTH: usize = 1024;

/// The Unix attestor's kind: facts read from the caller's process (uid, gid, user, group,
/// executable path and hash).
const UNIX_KIND: &str = "unix";

/// Why a string (or kind/value pair) is not a valid selector.
///
/// Messages are lowercase and name the rule that was broken; they are meant for operators
/// writing registration entries and must not be returned to unattested callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The input was the empty string.
    #[error("selector is empty")]
    Empty,
    /// The `kind:value` form is longer than [`MAX_SELECTOR_LENGTH`]; carries its length.
    #[error("selector is {0} bytes long; the limit is 1024 bytes")]
    TooLong(usize),
    /// The selector contains a control character (including NUL); carries it.
    #[error("selector contains control character {0:?}")]
    ControlCharacter(char),
    /// The selector, its kind or its value starts or ends with whitespace.
    #[error("selector has leading or trailing whitespace")]
    SurroundingWhitespace,
    /// The string has no `:` separating kind from value.
    #[error("selector has no \":\"; expected kind:value, e.g. unix:uid:1000")]
    MissingColon,
    /// The kind (before the first `:`) is empty.
    #[error("selector kind (before the first \":\") is empty")]
    EmptyKind,
    /// The value (after the first `:`) is empty.
    #[error("selector value (after the first \":\") is empty")]
    EmptyValue,
    /// The kind contains a character outside `a-z 0-9 _ -`; carries it.
    #[error("selector kind contains {0:?}, a character outside a-z 0-9 _ -")]
    BadKindChar(char),
    /// The kind is well formed but not one this build attests; carries it. Such a selector
    /// would silently never match, so it is refused.
    #[error("unknown selector kind \"{0}\"; supported kinds: unix")]
    UnknownKind(String),
    /// A `unix` value is not `key:value` (no `:`, or nothing before it).
    #[error(
        "unix selector value must be key:value, e.g. uid:1000; keys: uid, gid, user, group, path, sha256"
    )]
    MissingUnixKey,
    /// A `unix` value has a key this build does not attest; carries it.
    #[error(
        "unknown unix selector key \"{0}\"; supported keys: uid, gid, user, group, path, sha256"
    )]
    UnknownUnixKey(String),
    /// A known `unix` key has nothing after its `:`; carries the key.
    #[error("unix:{0} selector has an empty value")]
    EmptyUnixValue(&'static str),
    /// A `unix:uid` or `unix:gid` value is not a canonical decimal `u32` (digits only, no
    /// sign, no leading zeros, at most 4294967295); carries the key.
    #[error("unix:{0} value must be a decimal u32 with no sign and no leading zeros")]
    InvalidUnixId(&'static str),
    /// A `unix:user` or `unix:group` name contains `:`, `/` or whitespace; carries the key
    /// and the character.
    #[error("unix:{key} name contains {ch:?}; names may not contain \":\", \"/\" or whitespace")]
    InvalidUnixName {
        /// `user` or `group`.
        key: &'static str,
        /// The offending character.
        ch: char,
    },
    /// A `unix:path` value does not start with `/`.
    #[error("unix:path value must be an absolute path starting with \"/\"")]
    RelativeUnixPath,
    /// A `unix:sha256` value is not exactly 64 lowercase hex characters.
    #[error("unix:sha256 value must be exactly 64 lowercase hex characters")]
    InvalidSha256,
}

/// One validated selector: a `kind` (e.g. `unix`) and a `value` (e.g. `uid:1000`).
///
/// The string form is `kind:value`, split at the first `:`, so the value may itself contain
/// colons. Serialises as that string; deserialising validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its parts, validating them exactly as [`FromStr`] would
    /// validate `kind:value`.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        validate(kind, value)?;
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The kind, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Builds a `unix:<key>:<value>` selector, e.g. `Selector::unix("uid", 1000)`.
    pub fn unix(key: &str, value: impl fmt::Display) -> Result<Self, SelectorError> {
        Self::new(UNIX_KIND, &format!("{key}:{value}"))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// Parses `kind:value`, splitting at the first `:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        // The same checks run again in `validate`; doing them on the whole string first
        // means a string without a colon still gets the more useful error.
        check_length(s.len())?;
        check_control(s)?;
        check_edges(s)?;
        let (kind, value) = s.split_once(':').ok_or(SelectorError::MissingColon)?;
        Self::new(kind, value)
    }
}

impl TryFrom<&str> for Selector {
    type Error = SelectorError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Validates a kind/value pair; shared by every constructor.
fn validate(kind: &str, value: &str) -> Result<(), SelectorError> {
    check_length(kind.len().saturating_add(1).saturating_add(value.len()))?;
    check_control(kind)?;
    check_control(value)?;
    check_edges(kind)?;
    check_edges(value)?;
    if kind.is_empty() {
        return Err(SelectorError::EmptyKind);
    }
    if value.is_empty() {
        return Err(SelectorError::EmptyValue);
    }
    if let Some(ch) = kind
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        return Err(SelectorError::BadKindChar(ch));
    }
    match kind {
        UNIX_KIND => validate_unix(value),
        other => Err(SelectorError::UnknownKind(other.to_owned())),
    }
}

/// Rejects selectors longer than [`MAX_SELECTOR_LENGTH`].
fn check_length(len: usize) -> Result<(), SelectorError> {
    if len > MAX_SELECTOR_LENGTH {
        return Err(SelectorError::TooLong(len));
    }
    Ok(())
}

/// Rejects control characters anywhere: they have no place in a policy string and would
/// let a selector forge lines in logs and audit records.
fn check_control(s: &str) -> Result<(), SelectorError> {
    match s.chars().find(|c| c.is_control()) {
        Some(ch) => Err(SelectorError::ControlCharacter(ch)),
        None => Ok(()),
    }
}

/// Rejects leading or trailing whitespace: it is invisible in configs and would make a
/// selector that never equals the attested one.
fn check_edges(s: &str) -> Result<(), SelectorError> {
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(SelectorError::SurroundingWhitespace);
    }
    Ok(())
}

/// Validates the value of a `unix` selector: `key:val` with a known key.
fn validate_unix(value: &str) -> Result<(), SelectorError> {
    let Some((key, val)) = value.split_once(':') else {
        return Err(SelectorError::MissingUnixKey);
    };
    match key {
        "uid" => validate_unix_id("uid", val),
        "gid" => validate_unix_id("gid", val),
        "user" => validate_unix_name("user", val),
        "group" => validate_unix_name("group", val),
        "path" => validate_unix_path(val),
        "sha256" => validate_sha256(val),
        "" => Err(SelectorError::MissingUnixKey),
        other => Err(SelectorError::UnknownUnixKey(other.to_owned())),
    }
}

/// A uid or gid: canonical decimal `u32`. Leading zeros are refused because attestation
/// emits `uid:1000`, and `uid:01000` would never equal it.
fn validate_unix_id(key: &'static str, val: &str) -> Result<(), SelectorError> {
    if val.is_empty() {
        return Err(SelectorError::EmptyUnixValue(key));
    }
    // `u32::from_str` alone would accept a leading `+`.
    let digits_only = val.bytes().all(|b| b.is_ascii_digit());
    let canonical = val == "0" || !val.starts_with('0');
    if !digits_only || !canonical || val.parse::<u32>().is_err() {
        return Err(SelectorError::InvalidUnixId(key));
    }
    Ok(())
}

/// A user or group name: non-empty, without `:`, `/` or whitespace.
fn validate_unix_name(key: &'static str, val: &str) -> Result<(), SelectorError> {
    if val.is_empty() {
        return Err(SelectorError::EmptyUnixValue(key));
    }
    match val
        .chars()
        .find(|&c| c == ':' || c == '/' || c.is_whitespace())
    {
        Some(ch) => Err(SelectorError::InvalidUnixName { key, ch }),
        None => Ok(()),
    }
}

/// An executable path: absolute. NUL (which no path can contain) is already refused by the
/// control-character check.
fn validate_unix_path(val: &str) -> Result<(), SelectorError> {
    if val.is_empty() {
        return Err(SelectorError::EmptyUnixValue("path"));
    }
    if !val.starts_with('/') {
        return Err(SelectorError::RelativeUnixPath);
    }
    Ok(())
}

/// An executable digest: exactly 64 lowercase hex characters, the form attestation emits.
fn validate_sha256(val: &str) -> Result<(), SelectorError> {
    if val.is_empty() {
        return Err(SelectorError::EmptyUnixValue("sha256"));
    }
    let is_hex = val.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if val.len() != 64 || !is_hex {
        return Err(SelectorError::InvalidSha256);
    }
    Ok(())
}

/// An ordered, de-duplicated set of selectors: what a caller was attested to have, or what
/// a registration entry requires.
///
/// Serialises as a sequence of `kind:value` strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SelectorSet(BTreeSet<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a selector; returns whether it was not already present.
    pub fn insert(&mut self, selector: Selector) -> bool {
        self.0.insert(selector)
    }

    /// The selectors in sorted order.
    pub fn iter(&self) -> btree_set::Iter<'_, Selector> {
        self.0.iter()
    }

    /// Number of selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set has no selectors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the set contains `selector`.
    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.contains(selector)
    }

    /// Plain set inclusion: every selector in `self` is also in `other`.
    ///
    /// True when `self` is empty. Use [`entry_matches`](Self::entry_matches) to decide
    /// whether an entry applies to a caller.
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Whether a registration entry requiring `self` applies to a caller attested with
    /// `caller`: `self` is non-empty and every one of its selectors is in `caller`.
    ///
    /// The empty set is a subset of every set, so an entry with no selectors would
    /// otherwise match every caller, including one nothing could be attested about. That
    /// is never what an operator means, so it matches nobody.
    pub fn entry_matches(&self, caller: &Self) -> bool {
        !self.is_empty() && self.is_subset_of(caller)
    }

    /// Same as `entry.entry_matches(caller)`: whether an entry's selectors match a caller's.
    /// An empty `entry` matches nothing.
    pub fn matches(entry: &Self, caller: &Self) -> bool {
        entry.entry_matches(caller)
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<Selector> for SelectorSet {
    fn extend<I: IntoIterator<Item = Selector>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<'a> IntoIterator for &'a SelectorSet {
    type Item = &'a Selector;
    type IntoIter = btree_set::Iter<'a, Selector>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for SelectorSet {
    type Item = Selector;
    type IntoIter = btree_set::IntoIter<Selector>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    fn set(items: &[&str]) -> SelectorSet {
        items.iter().map(|s| sel(s)).collect()
    }

    #[test]
    fn valid_selectors_parse_and_round_trip() {
        let sha = format!("unix:sha256:{SHA}");
        let long_path = format!("unix:path:/{}", "a".repeat(MAX_SELECTOR_LENGTH - 11));
        assert_eq!(long_path.len(), MAX_SELECTOR_LENGTH);
        let cases: Vec<(&str, &str, &str)> = vec![
            ("unix:uid:1000", "unix", "uid:1000"),
            ("unix:uid:0", "unix", "uid:0"),
            ("unix:uid:4294967295", "unix", "uid:4294967295"),
            ("unix:gid:42", "unix", "gid:42"),
            ("unix:user:www-data", "unix", "user:www-data"),
            ("unix:user:svc@REALM", "unix", "user:svc@REALM"),
            ("unix:group:wheel", "unix", "group:wheel"),
            (
                "unix:path:/usr/bin/python3",
                "unix",
                "path:/usr/bin/python3",
            ),
            ("unix:path:/opt/my app/bin", "unix", "path:/opt/my app/bin"),
            ("unix:path:/a:b", "unix", "path:/a:b"),
            ("unix:path:/", "unix", "path:/"),
            (&sha, "unix", sha.get(5..).unwrap()),
            (&long_path, "unix", long_path.get(5..).unwrap()),
        ];
        for (input, kind, value) in cases {
            let s = Selector::from_str(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(s.kind(), kind, "{input:?}");
            assert_eq!(s.value(), value, "{input:?}");
            assert_eq!(s.to_string(), input);
            assert_eq!(Selector::try_from(input).unwrap(), s);
            assert_eq!(Selector::new(kind, value).unwrap(), s);
        }
    }

    #[test]
    fn invalid_selectors_report_specific_error() {
        use SelectorError as E;
        let too_long = format!("unix:path:/{}", "a".repeat(MAX_SELECTOR_LENGTH - 10));
        let sha_upper = format!("unix:sha256:{}", SHA.to_uppercase());
        let sha_short = format!("unix:sha256:{}", SHA.get(1..).unwrap());
        let sha_long = format!("unix:sha256:{SHA}0");
        let sha_not_hex = format!("unix:sha256:{}g", SHA.get(1..).unwrap());
        let cases: Vec<(&str, SelectorError)> = vec![
            ("", E::Empty),
            (&too_long, E::TooLong(MAX_SELECTOR_LENGTH + 1)),
            ("unix", E::MissingColon),
            (":uid:1000", E::EmptyKind),
            ("unix:", E::EmptyValue),
            ("Unix:uid:1000", E::BadKindChar('U')),
            ("un.ix:uid:1000", E::BadKindChar('.')),
            ("unix :uid:1000", E::SurroundingWhitespace),
            ("un ix:uid:1000", E::BadKindChar(' ')),
            ("k8s:ns:default", E::UnknownKind("k8s".to_owned())),
            ("docker:label:a", E::UnknownKind("docker".to_owned())),
            (" unix:uid:1000", E::SurroundingWhitespace),
            ("unix:uid:1000 ", E::SurroundingWhitespace),
            ("unix: uid:1000", E::SurroundingWhitespace),
            ("unix:uid:1000\n", E::ControlCharacter('\n')),
            ("unix:path:/bin/\0sh", E::ControlCharacter('\0')),
            ("unix:user:a\u{1b}[31m", E::ControlCharacter('\u{1b}')),
            ("unix:uid", E::MissingUnixKey),
            ("unix::1000", E::MissingUnixKey),
            ("unix:pid:1", E::UnknownUnixKey("pid".to_owned())),
            ("unix:UID:1", E::UnknownUnixKey("UID".to_owned())),
            ("unix:uid:", E::EmptyUnixValue("uid")),
            ("unix:gid:", E::EmptyUnixValue("gid")),
            ("unix:user:", E::EmptyUnixValue("user")),
            ("unix:group:", E::EmptyUnixValue("group")),
            ("unix:path:", E::EmptyUnixValue("path")),
            ("unix:sha256:", E::EmptyUnixValue("sha256")),
            ("unix:uid:-1", E::InvalidUnixId("uid")),
            ("unix:uid:+1", E::InvalidUnixId("uid")),
            ("unix:uid:01", E::InvalidUnixId("uid")),
            ("unix:uid:00", E::InvalidUnixId("uid")),
            ("unix:uid:4294967296", E::InvalidUnixId("uid")),
            ("unix:uid:1e3", E::InvalidUnixId("uid")),
            ("unix:uid:1 000", E::InvalidUnixId("uid")),
            ("unix:gid:abc", E::InvalidUnixId("gid")),
            (
                "unix:user:a:b",
                E::InvalidUnixName {
                    key: "user",
                    ch: ':',
                },
            ),
            (
                "unix:user:a/b",
                E::InvalidUnixName {
                    key: "user",
                    ch: '/',
                },
            ),
            (
                "unix:group:a b",
                E::InvalidUnixName {
                    key: "group",
                    ch: ' ',
                },
            ),
            ("unix:path:bin/sh", E::RelativeUnixPath),
            ("unix:path:./sh", E::RelativeUnixPath),
            (&sha_upper, E::InvalidSha256),
            (&sha_short, E::InvalidSha256),
            (&sha_long, E::InvalidSha256),
            (&sha_not_hex, E::InvalidSha256),
        ];
        for (input, expected) in cases {
            assert_eq!(Selector::from_str(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn new_validates_like_parse() {
        use SelectorError as E;
        assert_eq!(Selector::new("", "uid:1"), Err(E::EmptyKind));
        assert_eq!(Selector::new("unix", ""), Err(E::EmptyValue));
        assert_eq!(Selector::new("uni:x", "uid:1"), Err(E::BadKindChar(':')));
        assert_eq!(
            Selector::new("unix", "uid:1 "),
            Err(E::SurroundingWhitespace)
        );
        assert_eq!(
            Selector::new("unix", " uid:1"),
            Err(E::SurroundingWhitespace)
        );
        assert_eq!(
            Selector::new("k8s", "ns:a"),
            Err(E::UnknownKind("k8s".to_owned()))
        );
        let long = format!("/{}", "a".repeat(MAX_SELECTOR_LENGTH));
        assert_eq!(
            Selector::new("unix", &format!("path:{long}")),
            Err(E::TooLong(MAX_SELECTOR_LENGTH + 11))
        );
    }

    #[test]
    fn unix_convenience() {
        assert_eq!(Selector::unix("uid", 1000).unwrap(), sel("unix:uid:1000"));
        assert_eq!(Selector::unix("gid", 0u32).unwrap(), sel("unix:gid:0"));
        assert_eq!(Selector::unix("user", "web").unwrap(), sel("unix:user:web"));
        assert_eq!(
            Selector::unix("uid", -1),
            Err(SelectorError::InvalidUnixId("uid"))
        );
        assert_eq!(
            Selector::unix("shell", "bash"),
            Err(SelectorError::UnknownUnixKey("shell".to_owned()))
        );
    }

    #[test]
    fn error_messages() {
        let unknown = SelectorError::UnknownKind("k8s".to_owned()).to_string();
        assert!(unknown.contains("supported kinds: unix"), "{unknown}");
        let key = SelectorError::UnknownUnixKey("pid".to_owned()).to_string();
        assert!(key.contains("\"pid\"") && key.contains("sha256"), "{key}");
    }

    #[test]
    fn serde_round_trip() {
        let s = sel("unix:uid:1000");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#""unix:uid:1000""#);
        assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Selector>(r#""unix:uid:01""#).is_err());

        let set = set(&["unix:uid:1000", "unix:gid:1000"]);
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["unix:gid:1000","unix:uid:1000"]"#);
        assert_eq!(serde_json::from_str::<SelectorSet>(&json).unwrap(), set);
        assert!(serde_json::from_str::<SelectorSet>(r#"["k8s:ns:a"]"#).is_err());
    }

    #[test]
    fn set_basics() {
        let mut set = SelectorSet::new();
        assert!(set.is_empty());
        assert!(set.insert(sel("unix:uid:1000")));
        assert!(!set.insert(sel("unix:uid:1000")), "duplicates are ignored");
        set.extend([sel("unix:gid:1000"), sel("unix:user:web")]);
        assert_eq!(set.len(), 3);
        assert!(set.contains(&sel("unix:user:web")));
        assert!(!set.contains(&sel("unix:user:db")));
        let listed: Vec<String> = set.iter().map(ToString::to_string).collect();
        assert_eq!(listed, ["unix:gid:1000", "unix:uid:1000", "unix:user:web"]);
        assert_eq!((&set).into_iter().count(), 3);
        assert_eq!(set.clone().into_iter().count(), 3);
        assert_eq!(SelectorSet::default(), SelectorSet::new());
    }

    #[test]
    fn subset_and_entry_matching() {
        let caller = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:web"]);
        let empty = SelectorSet::new();

        // (entry, matches caller?)
        let cases = [
            (set(&["unix:uid:1000"]), true),
            (set(&["unix:uid:1000", "unix:user:web"]), true),
            (caller.clone(), true),
            (set(&["unix:uid:1001"]), false),
            (set(&["unix:uid:1000", "unix:uid:1001"]), false),
            (
                set(&[
                    "unix:uid:1000",
                    "unix:gid:1000",
                    "unix:user:web",
                    "unix:path:/x",
                ]),
                false,
            ),
        ];
        for (entry, expected) in cases {
            assert_eq!(entry.entry_matches(&caller), expected, "{entry:?}");
            assert_eq!(SelectorSet::matches(&entry, &caller), expected, "{entry:?}");
            assert_eq!(entry.is_subset_of(&caller), expected, "{entry:?}");
        }

        // The empty set is a subset of everything, but an empty entry matches nobody.
        assert!(empty.is_subset_of(&caller));
        assert!(empty.is_subset_of(&empty));
        assert!(!empty.entry_matches(&caller));
        assert!(!empty.entry_matches(&empty));
        assert!(!SelectorSet::matches(&empty, &caller));
        // A caller with no selectors matches no non-empty entry.
        assert!(!set(&["unix:uid:1000"]).entry_matches(&empty));
    }
}
