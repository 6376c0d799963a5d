//! Node selectors: facts the server verified about an attested node (not about a
//! workload), e.g. `x509pop:subject:cn:node-1`. They describe which certificate enrolled an
//! agent; workload entries never carry them (a workload is never attested to have them, so
//! [`super::Selector`] refuses them), which is why they are a vocabulary of their own.
//!
//! As for workload selectors, the node attestor builds them only through
//! [`NodeSelector::x509pop`], and parsing accepts exactly what it builds.

use std::fmt;
use std::str::FromStr;

vocabulary! {
    /// A key of the `x509pop` node selector kind: a field of the verified certificate.
    pub enum X509PopKey {
        /// The leaf's subject common name: `x509pop:subject:cn:node-1`.
        SubjectCn => "subject:cn",
        /// SHA-256 of the CA certificate the chain verified to, 64 lowercase hex
        /// characters: `x509pop:ca:fingerprint:3f2a...`.
        CaFingerprint => "ca:fingerprint",
        /// One DNS subject alternative name of the leaf: `x509pop:san:dns:node-1.example`.
        SanDns => "san:dns",
    }
}

/// The only node selector kind so far.
pub const X509POP_KIND: &str = "x509pop";

/// Why a string (or key/value pair) is not a valid node selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSelectorError {
    /// Not `x509pop:<key>:<value>` with a known key.
    #[error(
        "node selector must be x509pop:subject:cn:<cn>, x509pop:ca:fingerprint:<sha256 hex> or x509pop:san:dns:<name>"
    )]
    Unknown,
    /// The value breaks its key's rule.
    #[error("x509pop:{key} value must be {rule}")]
    InvalidValue {
        /// The key.
        key: X509PopKey,
        /// What the value must be.
        rule: &'static str,
    },
    /// The value breaks a rule every selector follows (length, control characters,
    /// surrounding whitespace).
    #[error(transparent)]
    Selector(#[from] super::SelectorError),
}

/// One validated node selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeSelector {
    key: X509PopKey,
    value: String,
}

impl PartialOrd for X509PopKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for X509PopKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl NodeSelector {
    /// An `x509pop` node selector, validated.
    pub fn x509pop(key: X509PopKey, value: impl fmt::Display) -> Result<Self, NodeSelectorError> {
        let value = value.to_string();
        super::check_length(X509POP_KIND.len() + key.as_str().len() + 2 + value.len())?;
        super::check_control(&value)?;
        super::check_edges(&value)?;
        let ok = match key {
            X509PopKey::SubjectCn => !value.is_empty(),
            X509PopKey::CaFingerprint => {
                value.len() == 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            X509PopKey::SanDns => {
                !value.is_empty()
                    && !value
                        .chars()
                        .any(|c| c.is_whitespace() || c == '/' || c == ':')
            }
        };
        if !ok {
            let rule = match key {
                X509PopKey::SubjectCn => "non-empty",
                X509PopKey::CaFingerprint => "exactly 64 lowercase hex characters",
                X509PopKey::SanDns => "a DNS name (no whitespace, \"/\" or \":\")",
            };
            return Err(NodeSelectorError::InvalidValue { key, rule });
        }
        Ok(Self { key, value })
    }

    /// The key.
    pub fn key(&self) -> X509PopKey {
        self.key
    }

    /// The value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for NodeSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{X509POP_KIND}:{}:{}", self.key, self.value)
    }
}

impl FromStr for NodeSelector {
    type Err = NodeSelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(X509POP_KIND)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or(NodeSelectorError::Unknown)?;
        // Every key is two words joined by ':'; the value is what follows the third ':'.
        let mut parts = rest.splitn(3, ':');
        let (Some(a), Some(b), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NodeSelectorError::Unknown);
        };
        let key = X509PopKey::from_name(&format!("{a}:{b}")).ok_or(NodeSelectorError::Unknown)?;
        Self::x509pop(key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selectors_round_trip_and_refuse_what_attestation_never_emits() {
        let fp = "ab".repeat(32);
        for text in [
            "x509pop:subject:cn:node-1".to_owned(),
            format!("x509pop:ca:fingerprint:{fp}"),
            "x509pop:san:dns:node-1.nodes.example".to_owned(),
        ] {
            let parsed: NodeSelector = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        for bad in [
            "x509pop:subject:node-1",
            "x509pop:ca:fingerprint:ABCD",
            "x509pop:san:dns:a b",
            "x509pop:subject:cn:",
            "x509pop:subject:cn: padded",
            "unix:uid:0",
            "x509pop:issuer:cn:x",
        ] {
            assert!(bad.parse::<NodeSelector>().is_err(), "{bad}");
        }
        // Node selectors are not workload selectors.
        assert!(
            "x509pop:subject:cn:node-1"
                .parse::<super::super::Selector>()
                .is_err()
        );
    }
}
