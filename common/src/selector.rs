//! Selectors (`kind:key:value` facts about a workload) and the subset-match rule.
//!
//! Attestation turns a caller into a [`SelectorSet`] (e.g. `unix:uid:1000`, `unix:user:web`);
//! a registration entry carries the [`SelectorSet`] a caller must show to receive that
//! entry's identity. Selectors are compared as exact strings, so anything that could never
//! equal an attested selector (an unknown kind or key, `uid:01`, an uppercase hash) is
//! rejected when parsed instead of silently never matching.
//!
//! **One vocabulary.** Which kinds exist is [`SelectorKind`]; which keys each kind has is a
//! typed enum per kind ([`UnixKey`]), and each key carries its own value rule. The validator
//! parses through those enums, and attestors build selectors only through the typed
//! constructors ([`Selector::new`], [`Selector::unix`]), so an attestor cannot emit a key
//! the validator does not know, and error messages list exactly the keys that exist. A new
//! kind is a variant of [`SelectorKind`], a key enum beside `unix.rs`, and the arms the
//! compiler then asks for in [`SelectorKey`].
//!
//! Validation happens in every constructor, so a [`Selector`] in hand is always well
//! formed. The match rule is [`SelectorSet::entry_matches`]: every entry selector must be
//! present in the caller's set, and an entry with no selectors matches nobody. Facts with
//! several values (a process's supplementary groups) are attested as one selector per
//! value, so an entry naming one of them (`unix:supplementary_gid:27`) matches every caller
//! that has it among others, and an entry naming two requires both.

/// Declares one closed list of names in the selector vocabulary (the kinds, or the keys of
/// one kind): the enum, its `ALL` list and each variant's spelling, all from one
/// declaration, so no list of names is ever written apart from the variants.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order (the order error messages list them in).
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name as written in a selector.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The variant spelled exactly `name` (case-sensitive), if any.
            fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod cgroup;
mod kind;
mod node;
mod unix;

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::cgroup::{
    CgroupKey, ContainerKey, ContainerRuntime, K8sKey, MAX_UNIT_NAME, SystemdKey, is_container_id,
    is_pod_uid, is_unit_name,
};
pub use self::kind::{SelectorKey, SelectorKind};
pub use self::node::{NodeSelector, NodeSelectorError, X509POP_KIND, X509PopKey};
pub use self::unix::UnixKey;

/// Longest selector, in bytes of its `kind:key:value` string form.
///
/// Bounds the size of policy and audit records; no real attestor fact comes close.
pub const MAX_SELECTOR_LENGTH: usize = 1024;

/// Why a string (or key/value pair) is not a valid selector.
///
/// Messages are lowercase and name the rule that was broken; they are meant for operators
/// writing registration entries and must not be returned to unattested callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The input was the empty string.
    #[error("selector is empty")]
    Empty,
    /// The `kind:key:value` form is longer than [`MAX_SELECTOR_LENGTH`]; carries its length.
    #[error("selector is {0} bytes long; the limit is {limit} bytes", limit = MAX_SELECTOR_LENGTH)]
    TooLong(usize),
    /// The selector contains a control character (including NUL); carries it.
    #[error("selector contains control character {0:?}")]
    ControlCharacter(char),
    /// The selector, its kind or its value starts or ends with whitespace.
    #[error("selector has leading or trailing whitespace")]
    SurroundingWhitespace,
    /// The string has no `:` separating kind from value.
    #[error("selector has no \":\"; expected kind:key:value, e.g. unix:uid:1000")]
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
    #[error("unknown selector kind \"{0}\"; supported kinds: {kinds}", kinds = kind::KindNames)]
    UnknownKind(String),
    /// The part after the kind is not `key:value` (no `:`, or nothing before it).
    #[error("{0} selector value must be key:value, e.g. {0}:{example}; keys: {keys}",
        example = .0.example(), keys = kind::KeyNames(*.0))]
    MissingKey(SelectorKind),
    /// The key is not one the kind has; carries the kind and the key.
    #[error("unknown {kind} selector key \"{key}\"; supported keys: {keys}",
        keys = kind::KeyNames(*.kind))]
    UnknownKey {
        /// The (known) kind.
        kind: SelectorKind,
        /// The key as given.
        key: String,
    },
    /// A known key has nothing after its `:`; carries the key.
    #[error("{0} selector has an empty value")]
    EmptyKeyValue(SelectorKey),
    /// A `unix:uid`, `unix:gid` or `unix:supplementary_gid` value is not a canonical
    /// decimal `u32` (digits only, no sign, no leading zeros, at most 4294967295); carries
    /// the key.
    #[error("unix:{0} value must be a decimal u32 with no sign and no leading zeros")]
    InvalidUnixId(UnixKey),
    /// A `unix:user` or `unix:group` name contains `:`, `/` or whitespace; carries the key
    /// and the character.
    #[error("unix:{key} name contains {ch:?}; names may not contain \":\", \"/\" or whitespace")]
    InvalidUnixName {
        /// [`UnixKey::User`] or [`UnixKey::Group`].
        key: UnixKey,
        /// The offending character.
        ch: char,
    },
    /// A `unix:path` value does not start with `/`.
    #[error("unix:path value must be an absolute path starting with \"/\"")]
    RelativeUnixPath,
    /// A `unix:sha256` value is not exactly 64 lowercase hex characters.
    #[error("unix:sha256 value must be exactly 64 lowercase hex characters")]
    InvalidSha256,
    /// A value of a `cgroup`, `container`, `systemd` or `k8s` key breaks that key's rule;
    /// carries the key and the rule, e.g. a `container:id` that is not 64 hex characters.
    #[error("{key} value must be {rule}")]
    InvalidValue {
        /// The key.
        key: SelectorKey,
        /// What the value must be.
        rule: &'static str,
    },
    /// A `container:runtime` value is not a runtime the attestor recognises; carries it.
    #[error("unknown container runtime \"{0}\"; supported runtimes: {runtimes}",
        runtimes = kind::RuntimeNames)]
    UnknownContainerRuntime(String),
}

/// One validated selector: a typed key (which names its kind, e.g. `unix:uid`) and a value
/// (e.g. `1000`).
///
/// The string form is `kind:key:value`; kinds and keys never contain `:`, so the value may.
/// Serialises as that string; deserialising validates. Selectors order as their string
/// forms do, so a [`SelectorSet`] lists (and serialises) them in plain string order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    key: SelectorKey,
    value: String,
}

impl Selector {
    /// Builds a selector from a typed key and a value, validating the value with the key's
    /// rule (and the rules every selector follows) exactly as [`FromStr`] would.
    pub fn new(
        key: impl Into<SelectorKey>,
        value: impl fmt::Display,
    ) -> Result<Self, SelectorError> {
        let key = key.into();
        let value = value.to_string();
        validate_value(key, &value)?;
        Ok(Self { key, value })
    }

    /// Builds a `unix:<key>:<value>` selector, e.g.
    /// `Selector::unix(UnixKey::SupplementaryGid, 27)`.
    pub fn unix(key: UnixKey, value: impl fmt::Display) -> Result<Self, SelectorError> {
        Self::new(key, value)
    }

    /// The kind, e.g. [`SelectorKind::Unix`].
    pub fn kind(&self) -> SelectorKind {
        self.key.kind()
    }

    /// The key, e.g. `SelectorKey::Unix(UnixKey::Uid)`.
    pub fn key(&self) -> SelectorKey {
        self.key
    }

    /// The value, e.g. `1000` in `unix:uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The bytes of `kind:key:` (the string form up to the value).
    fn prefix_bytes(&self) -> impl Iterator<Item = u8> {
        let colon = std::iter::once(b':');
        self.kind()
            .as_str()
            .bytes()
            .chain(colon.clone())
            .chain(self.key.as_str().bytes())
            .chain(colon)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// Parses `kind:key:value`, splitting at the first two `:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        // Whole-string checks first, so a string without a colon still gets the more
        // useful error; `validate_value` repeats the ones that apply to the value.
        check_length(s.len())?;
        check_control(s)?;
        check_edges(s)?;
        let (kind, rest) = s.split_once(':').ok_or(SelectorError::MissingColon)?;
        if kind.is_empty() {
            return Err(SelectorError::EmptyKind);
        }
        if rest.is_empty() {
            return Err(SelectorError::EmptyValue);
        }
        check_edges(kind)?;
        check_edges(rest)?;
        if let Some(ch) = kind
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(SelectorError::BadKindChar(ch));
        }
        let kind: SelectorKind = kind.parse()?;
        let (key, value) = match rest.split_once(':') {
            Some((key, value)) if !key.is_empty() => (key, value),
            _ => return Err(SelectorError::MissingKey(kind)),
        };
        Self::new(kind.key(key)?, value)
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
        write!(f, "{}:{}", self.key, self.value)
    }
}

/// The string form, which is shorter to read in test failures and logs than the fields.
impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Selector").field(&self.to_string()).finish()
    }
}

/// String order of the `kind:key:value` forms, without building them.
impl Ord for Selector {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.key == other.key {
            return self.value.cmp(&other.value);
        }
        // Different keys give different `kind:key:` prefixes, and neither is a prefix of
        // the other (both end at their first `:` after the kind), so the prefixes alone
        // decide the order of the whole strings.
        self.prefix_bytes().cmp(other.prefix_bytes())
    }
}

impl PartialOrd for Selector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
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

/// Validates the value for `key`; shared by every constructor.
fn validate_value(key: SelectorKey, value: &str) -> Result<(), SelectorError> {
    let prefix_len = key.kind().as_str().len() + key.as_str().len() + 2;
    check_length(prefix_len.saturating_add(value.len()))?;
    check_control(value)?;
    check_edges(value)?;
    if value.is_empty() {
        return Err(SelectorError::EmptyKeyValue(key));
    }
    key.validate_value(value)
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

/// An ordered, de-duplicated set of selectors: what a caller was attested to have, or what
/// a registration entry requires.
///
/// Held as a sorted boxed slice rather than a tree: an agent keeps one per cached entry
/// (thousands), each with a handful of selectors, and a tree node reserves room for eleven.
/// Sets are built once and then only read; [`insert`](Self::insert) copies.
///
/// Serialises as a sequence of `kind:key:value` strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SelectorSet(Box<[Selector]>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sorted and de-duplicated, as the set is kept.
    fn from_vec(mut v: Vec<Selector>) -> Self {
        v.sort_unstable();
        v.dedup();
        Self(v.into_boxed_slice())
    }

    /// Adds a selector; returns whether it was not already present.
    pub fn insert(&mut self, selector: Selector) -> bool {
        match self.0.binary_search(&selector) {
            Ok(_) => false,
            Err(at) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(at, selector);
                self.0 = v.into_boxed_slice();
                true
            }
        }
    }

    /// The selectors in sorted order.
    pub fn iter(&self) -> std::slice::Iter<'_, Selector> {
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
        self.0.binary_search(selector).is_ok()
    }

    /// Plain set inclusion: every selector in `self` is also in `other`.
    ///
    /// True when `self` is empty. Use [`entry_matches`](Self::entry_matches) to decide
    /// whether an entry applies to a caller.
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.len() <= other.len() && self.0.iter().all(|s| other.contains(s))
    }

    /// Whether a registration entry requiring `self` applies to a caller attested with
    /// `caller`: `self` is non-empty and every one of its selectors is in `caller`.
    ///
    /// The empty set is a subset of every set, so an entry with no selectors would
    /// otherwise match every caller, including one nothing could be attested about. That
    /// is never what an operator means, so it matches nobody.
    ///
    /// A multi-valued fact is one selector per value in `caller`: an entry requiring
    /// `unix:supplementary_gid:27` matches a caller with 27 among any number of
    /// supplementary groups. Selectors are only ever added by attestation, never
    /// subtracted, so a caller missing a fact can only match fewer entries.
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
        Self::from_vec(iter.into_iter().collect())
    }
}

impl Extend<Selector> for SelectorSet {
    fn extend<I: IntoIterator<Item = Selector>>(&mut self, iter: I) {
        let mut v = std::mem::take(&mut self.0).into_vec();
        v.extend(iter);
        *self = Self::from_vec(v);
    }
}

impl<'de> Deserialize<'de> for SelectorSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Selector>::deserialize(deserializer).map(Self::from_vec)
    }
}

impl<'a> IntoIterator for &'a SelectorSet {
    type Item = &'a Selector;
    type IntoIter = std::slice::Iter<'a, Selector>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for SelectorSet {
    type Item = Selector;
    type IntoIter = std::vec::IntoIter<Selector>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

#[cfg(test)]
mod tests;
