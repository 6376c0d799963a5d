//! Verified DNS domains: which DNS names a tenant may put into X.509-SVIDs.
//!
//! A registration entry's DNS names (`--dns-name`) must fall under a domain its tenant has
//! proved control of. The proof is the ACME `dns-01` idea: the server hands out a random
//! [`Challenge`], the operator publishes it as a TXT record at [`record_name`]
//! (`_tessera-challenge.<domain>`), and [`verify`] looks that record up through a real
//! resolver ([`DnsResolver`]) and accepts only an exact match. The resolver keeps no cache,
//! so a periodic re-check sees a removed record at once.
//!
//! This module is self-contained: parsing ([`DomainName`]), the covering rule
//! ([`covering`]), challenges and the lookup. Storing domains per tenant and scheduling
//! re-checks belong to the callers.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest domain name in text form without the trailing dot (RFC 1035 §2.3.4: 255 octets
/// on the wire, which leaves 253 characters of text).
pub const MAX_DOMAIN_LENGTH: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LENGTH: usize = 63;
/// The label under which the challenge is published: `_tessera-challenge.<domain>`. The
/// leading underscore keeps it out of the host-name namespace (RFC 8552), like ACME's
/// `_acme-challenge`.
pub const CHALLENGE_LABEL: &str = "_tessera-challenge";
/// The prefix of every challenge value, so that a TXT record says what it is for.
pub const CHALLENGE_PREFIX: &str = "tessera-domain-verification=";
/// Random bytes in a challenge (256 bits: not guessable, not brute-forceable).
const CHALLENGE_BYTES: usize = 32;
/// How long one DNS query may take before it counts as failed.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a query is tried before the lookup fails.
pub const LOOKUP_ATTEMPTS: usize = 2;
/// Upper bound for a whole lookup, whatever the resolver does inside (every attempt at its
/// timeout, plus a margin for connection set-up).
const LOOKUP_DEADLINE: Duration = Duration::from_secs(8);

/// Why a text is not a domain a tenant may verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Nothing was given.
    #[error("domain name is empty")]
    Empty,
    /// Longer than a DNS name can be.
    #[error("domain name is {0} characters long; at most 253 are allowed")]
    TooLong(usize),
    /// Two dots in a row, or a leading dot.
    #[error("domain name has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    /// A label longer than DNS allows.
    #[error("label {label:?} is {len} characters long; at most 63 are allowed")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A character outside `a-z 0-9 -` (and not an uppercase letter, a dot, a wildcard or
    /// a non-ASCII character, which have their own errors).
    #[error("character {0:?} is not allowed in a domain name: use only a-z, 0-9, '-' and '.'")]
    BadCharacter(char),
    /// An uppercase letter. Refused rather than folded so that what is stored and shown is
    /// exactly what was typed.
    #[error("domain name contains uppercase letters: write it in lowercase")]
    Uppercase,
    /// The fully qualified form with the root's dot.
    #[error("write the domain name without the trailing dot")]
    TrailingDot,
    /// A label that starts or ends with a hyphen (RFC 952/1123 host-name rule).
    #[error("label {0:?} starts or ends with a hyphen")]
    HyphenAtEdge(String),
    /// A label with `--` in positions 3–4: punycode (`xn--`) or another reserved ACE
    /// prefix (RFC 5891 §4.2.3.1).
    #[error(
        "label {0:?} is an encoded (punycode) label: internationalised domain names are not accepted"
    )]
    EncodedLabel(String),
    /// A character outside ASCII.
    #[error(
        "domain name contains non-ASCII characters: internationalised domain names are not accepted"
    )]
    NonAscii,
    /// A `*` label or character.
    #[error(
        "a wildcard is not a domain: verify the parent domain, which covers every name under it"
    )]
    Wildcard,
    /// One label only, such as a top-level domain.
    #[error("domain name has a single label: give at least two, such as example.org")]
    SingleLabel,
    /// The last label is all digits, as in an IPv4 address.
    #[error("the last label {0:?} is all digits: an IP address is not a domain name")]
    NumericTopLabel(String),
}

/// A domain name a tenant may verify and that then covers itself and every name under it.
///
/// Deliberately stricter than DNS, because a verified domain decides which DNS names may be
/// put into certificates and an operator must be able to read exactly what was verified:
///
/// - lowercase ASCII letters, digits and `-` only, in labels separated by `.`: the host-name
///   syntax of RFC 952/1123, which is what certificate DNS names (RFC 5280) use;
/// - lowercase only, never folded: the stored form is the typed form, and entry DNS names are
///   lowercase too, so comparisons are exact;
/// - no trailing dot: one spelling per domain;
/// - no internationalised names, neither as Unicode nor as punycode (`xn--`) or any other
///   label with `--` in positions 3–4: look-alike names (`exаmple.org` with a Cyrillic `а`)
///   must not be verifiable next to the names they imitate;
/// - no wildcard: a verified domain already covers everything under it;
/// - at least two labels, and a last label that is not all digits: a top-level domain or an
///   IP address is not something one tenant may claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Parses and checks `s` (see the type's documentation for the rules).
    pub fn new(s: &str) -> Result<Self, DomainError> {
        if s.is_empty() {
            return Err(DomainError::Empty);
        }
        if !s.is_ascii() {
            return Err(DomainError::NonAscii);
        }
        if s.len() > MAX_DOMAIN_LENGTH {
            return Err(DomainError::TooLong(s.len()));
        }
        if s.contains('*') {
            return Err(DomainError::Wildcard);
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(DomainError::Uppercase);
        }
        if s.ends_with('.') && !s.ends_with("..") && s.len() > 1 {
            return Err(DomainError::TrailingDot);
        }
        let labels: Vec<&str> = s.split('.').collect();
        for label in &labels {
            check_label(label)?;
        }
        let Some(top) = labels.last().filter(|_| labels.len() >= 2) else {
            return Err(DomainError::SingleLabel);
        };
        if top.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DomainError::NumericTopLabel((*top).to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The domain as text (lowercase, no trailing dot).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this domain covers the DNS name `name`: `name` is the domain itself or a name
    /// under it, a wildcard (`*.example.org`) included. Comparison is exact; see [`covering`].
    pub fn covers(&self, name: &str) -> bool {
        if !plausible_entry_name(name) {
            return false;
        }
        if name == self.0 {
            return true;
        }
        name.strip_suffix(self.0.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|prefix| !prefix.is_empty())
    }
}

/// Checks one label of a domain (already known to be ASCII without `*` or uppercase).
fn check_label(label: &str) -> Result<(), DomainError> {
    if label.is_empty() {
        return Err(DomainError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LENGTH {
        return Err(DomainError::LabelTooLong {
            label: label.to_owned(),
            len: label.len(),
        });
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(DomainError::BadCharacter(c));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(DomainError::HyphenAtEdge(label.to_owned()));
    }
    if label.get(2..4) == Some("--") {
        return Err(DomainError::EncodedLabel(label.to_owned()));
    }
    Ok(())
}

/// Whether `name` can be an entry's DNS name at all for the covering rule: non-empty,
/// lowercase ASCII, no empty label. Anything else is never covered.
fn plausible_entry_name(name: &str) -> bool {
    !name.is_empty()
        && name.is_ascii()
        && !name.bytes().any(|b| b.is_ascii_uppercase())
        && name.split('.').all(|label| !label.is_empty())
}

impl FromStr for DomainName {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for DomainName {
    type Error = DomainError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for DomainName {
    type Error = DomainError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DomainName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for DomainName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DomainName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The verified domain that covers an entry's DNS name `name`, if any: a domain equal to
/// `name`, or one that `name` ends with on a label boundary (`a.example.org` and
/// `*.example.org` are covered by `example.org`; `evil-example.org` is not).
///
/// Comparison is exact, byte for byte: entry DNS names are validated lowercase, so a name
/// with uppercase letters, a trailing dot or an empty label is not covered by anything.
/// When several domains cover `name` (`example.org` and `a.example.org`), the longest, most
/// specific one is returned.
pub fn covering<'a>(name: &str, verified: &'a [DomainName]) -> Option<&'a DomainName> {
    verified
        .iter()
        .filter(|d| d.covers(name))
        .max_by_key(|d| d.0.len())
}

/// A verification challenge: `tessera-domain-verification=` and 32 random bytes in base64url
/// without padding. Not a secret (it is published in DNS), so `Debug` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge(String);

/// Why a stored text is not a challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a domain verification challenge: expected {CHALLENGE_PREFIX} followed by 43 base64url characters"
)]
pub struct ChallengeError;

impl Challenge {
    /// A fresh challenge from the operating system's random source (through `rand`'s
    /// thread-local generator, seeded from it).
    pub fn generate() -> Self {
        let bytes: [u8; CHALLENGE_BYTES] = rand::random();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self(format!("{CHALLENGE_PREFIX}{encoded}"))
    }

    /// Reads a challenge back from storage, checking its form.
    pub fn parse(s: &str) -> Result<Self, ChallengeError> {
        let encoded = s.strip_prefix(CHALLENGE_PREFIX).ok_or(ChallengeError)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| ChallengeError)?;
        if bytes.len() != CHALLENGE_BYTES {
            return Err(ChallengeError);
        }
        Ok(Self(s.to_owned()))
    }

    /// The value to publish in the TXT record.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Challenge {
    type Err = ChallengeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of the TXT record that must hold the challenge for `domain`:
/// `_tessera-challenge.<domain>`.
pub fn record_name(domain: &DomainName) -> String {
    format!("{CHALLENGE_LABEL}.{domain}")
}

/// Why a DNS lookup failed (an answer that the name or the record does not exist is not a
/// failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The system's resolver configuration (`/etc/resolv.conf`) could not be read or names
    /// no server.
    #[error("cannot use the system DNS configuration: {0}")]
    SystemConfig(String),
    /// The name to look up is not a valid DNS name.
    #[error("{name:?} is not a valid DNS name: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The DNS servers did not answer, answered with an error (such as SERVFAIL or REFUSED),
    /// or could not be reached.
    #[error("DNS lookup of TXT {name} failed: {cause}")]
    Failed {
        /// The name looked up.
        name: String,
        /// The resolver's explanation.
        cause: String,
    },
    /// No answer within the lookup deadline.
    #[error("DNS lookup of TXT {name} timed out after {}s", .after.as_secs())]
    TimedOut {
        /// The name looked up.
        name: String,
        /// How long it waited.
        after: Duration,
    },
}

impl LookupError {
    /// What went wrong, without the name looked up (for messages that name it already).
    pub fn cause(&self) -> String {
        match self {
            Self::SystemConfig(_) | Self::BadName { .. } => self.to_string(),
            Self::Failed { cause, .. } => cause.clone(),
            Self::TimedOut { after, .. } => format!("no answer within {}s", after.as_secs()),
        }
    }
}

/// A DNS stub resolver for TXT lookups, without any answer cache: every lookup asks the
/// server again, so a record that was removed is missing at the next check.
///
/// Queries time out after [`LOOKUP_TIMEOUT`] and are tried [`LOOKUP_ATTEMPTS`] times; a
/// whole lookup never takes much longer than that. `/etc/hosts` is not consulted.
#[derive(Clone)]
pub struct DnsResolver {
    resolver: TokioResolver,
    server: Option<SocketAddr>,
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A resolver that asks `server` only (over UDP, and TCP for truncated answers), or the
    /// servers of the system configuration (`/etc/resolv.conf`) when `server` is `None`.
    ///
    /// Fails only when the system configuration is needed and cannot be read.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, LookupError> {
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut ns.connections {
                    connection.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| LookupError::SystemConfig(e.to_string()))?,
        };
        configure(builder.options_mut());
        let resolver = builder
            .build()
            .map_err(|e| LookupError::SystemConfig(e.to_string()))?;
        Ok(Self { resolver, server })
    }

    /// The server given to [`DnsResolver::new`], `None` for the system configuration.
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// The TXT values at `name`, each record's character-strings joined into one value (as
    /// RFC 7208 §3.3 reads long records). A name that does not exist, or has no TXT record,
    /// gives an empty list; any other outcome is a [`LookupError`].
    ///
    /// `name` is looked up as given, fully qualified: no search domain is appended.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let mut query = Name::from_ascii(name).map_err(|e| LookupError::BadName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        query.set_fqdn(true);
        // The cache is disabled (capacity and TTLs zero); clearing it too makes sure no
        // answer from before this call can be served whatever the resolver's internals do.
        self.resolver.clear_cache();
        let lookup = tokio::time::timeout(LOOKUP_DEADLINE, self.resolver.txt_lookup(query))
            .await
            .map_err(|_| LookupError::TimedOut {
                name: name.to_owned(),
                after: LOOKUP_DEADLINE,
            })?;
        let lookup = match lookup {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => {
                return Err(LookupError::Failed {
                    name: name.to_owned(),
                    cause: e.to_string(),
                });
            }
        };
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }
}

/// Resolver options: no cache, bounded time, no hosts file.
fn configure(opts: &mut ResolverOpts) {
    opts.timeout = LOOKUP_TIMEOUT;
    opts.attempts = LOOKUP_ATTEMPTS;
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.use_hosts_file = ResolveHosts::Never;
    opts.try_tcp_on_error = true;
}

/// The outcome of one verification of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A TXT value at the challenge record equals the challenge.
    Verified,
    /// TXT values exist at the challenge record, `found` of them, but none equals the
    /// challenge.
    Mismatch {
        /// How many TXT values were found.
        found: usize,
    },
    /// The challenge record does not exist (or has no TXT value).
    Missing,
    /// The lookup failed (no answer, an error answer, unreachable servers): nothing is
    /// known about the record. The text says why.
    Failed(String),
}

impl Verification {
    /// Whether the domain is verified.
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified)
    }

    /// The outcome as an operator reads it, naming the record of `domain`:
    /// "TXT record _tessera-challenge.example.org not found".
    pub fn describe(&self, domain: &DomainName) -> String {
        let record = record_name(domain);
        match self {
            Self::Verified => format!("verified: TXT record {record} holds the challenge"),
            Self::Mismatch { found } => format!(
                "TXT record {record} has {found} value{}, none equal to the challenge",
                if *found == 1 { "" } else { "s" }
            ),
            Self::Missing => format!("TXT record {record} not found"),
            Self::Failed(why) => format!("could not check TXT record {record}: {why}"),
        }
    }
}

impl fmt::Display for Verification {
    /// The outcome without the record's name (a failure's text names it); see
    /// [`Verification::describe`] for the form that names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verified => f.write_str("verified: the TXT record holds the challenge"),
            Self::Mismatch { found } => write!(
                f,
                "the TXT record has {found} value{}, none equal to the challenge",
                if *found == 1 { "" } else { "s" }
            ),
            Self::Missing => f.write_str("the TXT record was not found"),
            Self::Failed(why) => write!(f, "the DNS lookup failed: {why}"),
        }
    }
}

/// Checks that the TXT record `_tessera-challenge.<domain>` holds `challenge`, exactly (one
/// of its values equal to it, other values ignored).
pub async fn verify(resolver: &DnsResolver, domain: &DomainName, challenge: &str) -> Verification {
    match resolver.txt(&record_name(domain)).await {
        Err(e) => Verification::Failed(e.cause()),
        Ok(values) if values.is_empty() => Verification::Missing,
        Ok(values) if values.iter().any(|v| v == challenge) => Verification::Verified,
        Ok(values) => Verification::Mismatch {
            found: values.len(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    fn refused(s: &str) -> DomainError {
        DomainName::new(s).unwrap_err()
    }

    #[test]
    fn accepts_ordinary_domains() {
        for s in [
            "example.org",
            "a.example.org",
            "my-team.example.co.uk",
            "123.example.org",
            "x1.y2",
            "a.b.c.d.e.f.example.org",
        ] {
            let d = domain(s);
            assert_eq!(d.as_str(), s);
            assert_eq!(d.to_string(), s);
            assert_eq!(s.parse::<DomainName>().unwrap(), d);
        }
    }

    #[test]
    fn refuses_empty() {
        assert_eq!(refused(""), DomainError::Empty);
    }

    #[test]
    fn length_limits() {
        // 4 labels of 61 + 3 dots = 247; one more label of 5 + a dot = 253 exactly.
        let label = "a".repeat(61);
        let at_limit = format!("{label}.{label}.{label}.{label}.bcdef");
        assert_eq!(at_limit.len(), 253);
        assert_eq!(domain(&at_limit).as_str(), at_limit);
        let over = format!("{at_limit}g");
        assert_eq!(refused(&over), DomainError::TooLong(254));

        let label63 = "b".repeat(63);
        assert_eq!(domain(&format!("{label63}.org")).as_str().len(), 67);
        let label64 = "b".repeat(64);
        assert_eq!(
            refused(&format!("{label64}.org")),
            DomainError::LabelTooLong {
                label: label64,
                len: 64
            }
        );
    }

    #[test]
    fn refuses_empty_labels() {
        for s in [".example.org", "example..org", "a...b", "."] {
            assert_eq!(refused(s), DomainError::EmptyLabel, "{s}");
        }
    }

    #[test]
    fn refuses_characters_outside_the_host_name_set() {
        assert_eq!(refused("ex_ample.org"), DomainError::BadCharacter('_'));
        assert_eq!(
            refused("_tessera-challenge.example.org"),
            DomainError::BadCharacter('_')
        );
        assert_eq!(refused("exa mple.org"), DomainError::BadCharacter(' '));
        assert_eq!(refused("example.org/"), DomainError::BadCharacter('/'));
        assert_eq!(refused("user@example.org"), DomainError::BadCharacter('@'));
        assert_eq!(refused("example.org:443"), DomainError::BadCharacter(':'));
    }

    #[test]
    fn refuses_uppercase_instead_of_folding() {
        assert_eq!(refused("EXAMPLE.org"), DomainError::Uppercase);
        assert_eq!(refused("example.Org"), DomainError::Uppercase);
        assert!(
            refused("Example.org")
                .to_string()
                .contains("write it in lowercase")
        );
    }

    #[test]
    fn refuses_trailing_dot() {
        assert_eq!(refused("example.org."), DomainError::TrailingDot);
        assert!(
            refused("example.org.")
                .to_string()
                .contains("without the trailing dot")
        );
    }

    #[test]
    fn refuses_hyphens_at_label_edges() {
        assert_eq!(
            refused("-example.org"),
            DomainError::HyphenAtEdge("-example".into())
        );
        assert_eq!(
            refused("example-.org"),
            DomainError::HyphenAtEdge("example-".into())
        );
        assert_eq!(
            refused("example.-org"),
            DomainError::HyphenAtEdge("-org".into())
        );
        // Inside a label a hyphen is fine, also two in a row away from positions 3-4.
        assert_eq!(domain("exa--mple.org").as_str(), "exa--mple.org");
        assert_eq!(domain("a-b.example.org").as_str(), "a-b.example.org");
    }

    #[test]
    fn refuses_punycode_and_other_reserved_ace_labels() {
        for (s, label) in [
            ("xn--exmple-cua.org", "xn--exmple-cua"),
            ("www.xn--80ak6aa92e.com", "xn--80ak6aa92e"),
            ("example.xn--p1ai", "xn--p1ai"),
            ("ab--cd.example.org", "ab--cd"),
        ] {
            let e = refused(s);
            assert_eq!(e, DomainError::EncodedLabel(label.into()), "{s}");
            assert!(
                e.to_string()
                    .contains("internationalised domain names are not accepted"),
                "{e}"
            );
        }
    }

    #[test]
    fn refuses_non_ascii() {
        // A Cyrillic "а" looks like the Latin one.
        for s in ["exаmple.org", "bücher.de", "例え.jp", "example.org\u{200b}"] {
            let e = refused(s);
            assert_eq!(e, DomainError::NonAscii, "{s}");
            assert!(
                e.to_string()
                    .contains("internationalised domain names are not accepted")
            );
        }
    }

    #[test]
    fn refuses_wildcards() {
        assert_eq!(refused("*.example.org"), DomainError::Wildcard);
        assert_eq!(refused("a*.example.org"), DomainError::Wildcard);
        assert_eq!(refused("*"), DomainError::Wildcard);
    }

    #[test]
    fn refuses_single_labels() {
        assert_eq!(refused("org"), DomainError::SingleLabel);
        assert_eq!(refused("localhost"), DomainError::SingleLabel);
    }

    #[test]
    fn refuses_numeric_top_labels() {
        assert_eq!(
            refused("192.168.1.1"),
            DomainError::NumericTopLabel("1".into())
        );
        assert_eq!(
            refused("example.123"),
            DomainError::NumericTopLabel("123".into())
        );
        // Digits elsewhere, or mixed with letters at the top, are fine.
        assert_eq!(domain("1.2.3.example").as_str(), "1.2.3.example");
        assert_eq!(domain("example.x123").as_str(), "example.x123");
    }

    #[test]
    fn serde_round_trip_checks_the_rules() {
        let d = domain("example.org");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "\"example.org\"");
        assert_eq!(serde_json::from_str::<DomainName>(&json).unwrap(), d);
        let err = serde_json::from_str::<DomainName>("\"EXAMPLE.org\"").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }

    #[test]
    fn covering_equal_and_subdomains() {
        let verified = [domain("example.org")];
        assert_eq!(covering("example.org", &verified), Some(&verified[0]));
        assert_eq!(covering("a.example.org", &verified), Some(&verified[0]));
        assert_eq!(covering("a.b.c.example.org", &verified), Some(&verified[0]));
        assert_eq!(covering("*.example.org", &verified), Some(&verified[0]));
        assert_eq!(covering("*.a.example.org", &verified), Some(&verified[0]));
    }

    #[test]
    fn covering_respects_label_boundaries() {
        let verified = [domain("example.org")];
        for name in [
            "evil-example.org",
            "evilexample.org",
            "example.org.evil.com",
            "xample.org",
            "org",
            "example.organization",
            "notexample.org",
        ] {
            assert_eq!(covering(name, &verified), None, "{name}");
        }
    }

    #[test]
    fn covering_does_not_cover_look_alikes() {
        let verified = [domain("example.org")];
        for name in [
            "examp1e.org",
            "exarnple.org",
            "xn--exmple-cua.org",
            "exаmple.org",
            "a.exаmple.org",
        ] {
            assert_eq!(covering(name, &verified), None, "{name}");
        }
    }

    #[test]
    fn covering_is_exact_about_case_and_trailing_dots() {
        let verified = [domain("example.org")];
        for name in [
            "EXAMPLE.org",
            "Example.org",
            "A.example.org",
            "a.EXAMPLE.ORG",
            "example.org.",
            "a.example.org.",
            ".example.org",
            "a..example.org",
            "",
        ] {
            assert_eq!(covering(name, &verified), None, "{name:?}");
        }
    }

    #[test]
    fn covering_a_wildcard_needs_its_parent() {
        // *.example.org stands for names under example.org, not under a.example.org.
        let verified = [domain("a.example.org")];
        assert_eq!(covering("*.example.org", &verified), None);
        assert_eq!(covering("example.org", &verified), None);
        assert_eq!(covering("*.a.example.org", &verified), Some(&verified[0]));
    }

    #[test]
    fn covering_picks_the_most_specific_domain() {
        let verified = [
            domain("example.org"),
            domain("team.example.org"),
            domain("other.net"),
        ];
        assert_eq!(
            covering("svc.team.example.org", &verified).map(DomainName::as_str),
            Some("team.example.org")
        );
        assert_eq!(
            covering("svc.example.org", &verified).map(DomainName::as_str),
            Some("example.org")
        );
        assert_eq!(
            covering("x.other.net", &verified).map(DomainName::as_str),
            Some("other.net")
        );
        assert_eq!(covering("x.another.net", &verified), None);
        assert_eq!(covering("example.org", &[]), None);
    }

    #[test]
    fn challenges_are_random_and_well_formed() {
        let a = Challenge::generate();
        let b = Challenge::generate();
        assert_ne!(a, b);
        let encoded = a
            .as_str()
            .strip_prefix("tessera-domain-verification=")
            .unwrap();
        assert_eq!(encoded.len(), 43);
        assert!(
            encoded
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{encoded}"
        );
        assert_eq!(Challenge::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.to_string().parse::<Challenge>().unwrap(), a);
    }

    #[test]
    fn challenge_parse_refuses_other_text() {
        let good = Challenge::generate();
        let encoded = good.as_str().strip_prefix(CHALLENGE_PREFIX).unwrap();
        for bad in [
            String::new(),
            encoded.to_owned(),
            CHALLENGE_PREFIX.to_owned(),
            format!("{CHALLENGE_PREFIX}{encoded}="),
            format!("{CHALLENGE_PREFIX}{}", &encoded[1..]),
            format!("{CHALLENGE_PREFIX}{encoded}AA"),
            format!("other-prefix={encoded}"),
            format!("{CHALLENGE_PREFIX}{}", encoded.replace(|_: char| true, "+")),
        ] {
            assert_eq!(Challenge::parse(&bad), Err(ChallengeError), "{bad}");
        }
    }

    #[test]
    fn record_name_is_under_the_domain() {
        assert_eq!(
            record_name(&domain("example.org")),
            "_tessera-challenge.example.org"
        );
        assert_eq!(
            record_name(&domain("a.example.org")),
            "_tessera-challenge.a.example.org"
        );
    }

    #[test]
    fn verification_messages_name_the_record() {
        let d = domain("x.org");
        assert_eq!(
            Verification::Missing.describe(&d),
            "TXT record _tessera-challenge.x.org not found"
        );
        assert_eq!(
            Verification::Mismatch { found: 2 }.describe(&d),
            "TXT record _tessera-challenge.x.org has 2 values, none equal to the challenge"
        );
        assert_eq!(
            Verification::Mismatch { found: 1 }.describe(&d),
            "TXT record _tessera-challenge.x.org has 1 value, none equal to the challenge"
        );
        assert_eq!(
            Verification::Verified.describe(&d),
            "verified: TXT record _tessera-challenge.x.org holds the challenge"
        );
        assert_eq!(
            Verification::Failed("no answer within 8s".into()).describe(&d),
            "could not check TXT record _tessera-challenge.x.org: no answer within 8s"
        );
        assert_eq!(
            Verification::Missing.to_string(),
            "the TXT record was not found"
        );
        assert!(Verification::Verified.is_verified());
        assert!(!Verification::Missing.is_verified());
    }

    #[test]
    fn resolver_refuses_names_that_are_not_dns_names() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resolver = DnsResolver::new(Some("127.0.0.1:9".parse().unwrap())).unwrap();
        assert_eq!(resolver.server(), Some("127.0.0.1:9".parse().unwrap()));
        let long = "a".repeat(64);
        let err = rt
            .block_on(resolver.txt(&format!("{long}.org")))
            .unwrap_err();
        assert!(matches!(err, LookupError::BadName { .. }), "{err}");
    }
}
