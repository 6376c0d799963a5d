//! SPIFFE IDs and trust domain names, parsed strictly at the edge.
//!
//! [`SpiffeId`] is a validated `spiffe://<trust-domain><path>` URI and [`TrustDomain`] a
//! validated trust domain name; both can only be built through constructors that enforce
//! the SPIFFE ID rules (SPIFFE-ID.md §2, summarised in the Tessera SPIFFE digest §1), so code
//! holding one never re-checks it. The parser is a hand-written scan of the input: no regex
//! and no general URL parser, because a general parser accepts (and "fixes") things the spec
//! forbids. We are deliberately strict: uppercase in the scheme or trust domain is rejected,
//! never canonicalised, so the string we hold is exactly the string we were given and
//! exactly what we emit (go-spiffe rejects uppercase trust domains, so emitting one would
//! break interop). Every failure has its own [`SpiffeIdError`] variant; messages never echo
//! the whole (possibly 2 KB) input.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest SPIFFE ID, in bytes of the whole URI (scheme, `://`, trust domain and path), that
/// we accept.
///
/// SPIFFE-ID.md §2.3 "Maximum SPIFFE ID Length"
/// (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md#23-maximum-spiffe-id-length>):
/// "SPIFFE implementations MUST support SPIFFE URIs up to 2048 bytes in length and SHOULD NOT
/// generate URIs of length greater than 2048 bytes." Anything longer is rejected, so we can
/// never generate one either.
pub const MAX_SPIFFE_ID_LENGTH: usize = 2048;

/// Longest trust domain name, in bytes.
///
/// SPIFFE-ID.md §2.3
/// (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md#23-maximum-spiffe-id-length>):
/// "RFC 3986 defines a maximum length of 255 characters for the "host" component of a URI;
/// therefore a maximum length of a trust domain name is 255 bytes."
pub const MAX_TRUST_DOMAIN_LENGTH: usize = 255;

/// The only scheme a SPIFFE ID may have, with the `//` that introduces the authority.
const SCHEME_PREFIX: &str = "spiffe://";

/// `spiffe:` as bytes, for the case-insensitive "is this an uppercase scheme?" check.
const SCHEME_WITH_COLON: &[u8] = b"spiffe:";

/// Why a string is not a valid SPIFFE ID or trust domain name.
///
/// Messages are lowercase and name the rule that was broken; they are shown to operators as
/// is. They carry at most the offending character or a length, never the whole input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was the empty string.
    #[error("spiffe id is empty")]
    Empty,
    /// The whole URI is longer than [`MAX_SPIFFE_ID_LENGTH`]; carries the length in bytes.
    #[error("spiffe id is {0} bytes long; the limit is 2048 bytes")]
    TooLong(usize),
    /// The input does not start with the `spiffe:` scheme.
    #[error("spiffe id must start with \"spiffe://\"")]
    WrongScheme,
    /// The scheme is `spiffe` in a different case (e.g. `SPIFFE:`); we reject rather than
    /// canonicalise.
    #[error(
        "spiffe id scheme must be lowercase \"spiffe\" (uppercase is rejected, not canonicalised)"
    )]
    UppercaseScheme,
    /// `spiffe:` is not followed by `//`, so there is no authority (trust domain).
    #[error("spiffe id is missing \"//\" after \"spiffe:\"; expected spiffe://<trust-domain>")]
    MissingAuthority,
    /// The trust domain name is empty (e.g. `spiffe:///foo`, or `""` as a trust domain).
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain name is longer than [`MAX_TRUST_DOMAIN_LENGTH`]; carries its length.
    #[error("trust domain is {0} bytes long; the limit is 255 bytes")]
    TrustDomainTooLong(usize),
    /// The authority contains `@`, i.e. userinfo such as `user@` or `user:pw@`.
    #[error("trust domain must not contain userinfo (\"user@\")")]
    Userinfo,
    /// The authority contains `:`, i.e. a port such as `:8080`.
    #[error("trust domain must not contain a port (\":\")")]
    Port,
    /// A `%` appears in the trust domain or path; SPIFFE IDs are never percent-encoded.
    #[error("spiffe id must not contain percent-encoding (\"%\")")]
    PercentEncoding,
    /// The trust domain contains an uppercase ASCII letter; carries it. We reject rather
    /// than canonicalise.
    #[error(
        "trust domain contains uppercase letter {0:?}; it must be lowercase (uppercase is rejected, not canonicalised)"
    )]
    UppercaseTrustDomain(char),
    /// The trust domain contains an ASCII character outside `a-z 0-9 . - _` (for example the
    /// brackets of an IPv6 literal); carries it.
    #[error("trust domain contains {0:?}, a character outside a-z 0-9 . - _")]
    BadTrustDomainChar(char),
    /// The trust domain or path contains a non-ASCII character; carries it.
    #[error("spiffe id contains non-ascii character {0:?}")]
    NonAscii(char),
    /// A `?` starts a query component, which SPIFFE IDs must not have.
    #[error("spiffe id must not have a query (\"?\")")]
    Query,
    /// A `#` starts a fragment component, which SPIFFE IDs must not have.
    #[error("spiffe id must not have a fragment (\"#\")")]
    Fragment,
    /// The path ends with `/` (including a path that is just `/`).
    #[error("spiffe id path must not end with \"/\"")]
    TrailingSlash,
    /// The path contains `//`, an empty segment.
    #[error("spiffe id path contains an empty segment (\"//\")")]
    EmptySegment,
    /// A path segment is exactly `.` or `..`.
    #[error("spiffe id path contains a \".\" or \"..\" segment")]
    DotSegment,
    /// A path segment contains an ASCII character outside `a-z A-Z 0-9 . - _`; carries it.
    #[error("spiffe id path contains {0:?}, a character outside a-z A-Z 0-9 . - _")]
    BadPathChar(char),
    /// [`SpiffeId::from_parts`] was given a path that is neither empty nor starts with `/`.
    #[error("spiffe id path must be empty or start with \"/\"")]
    RelativePath,
    /// [`TrustDomain::new`] was given a name or trust-domain ID followed by a path.
    #[error("a trust domain must not have a path")]
    TrustDomainHasPath,
}

/// A validated trust domain name such as `example.org` (without `spiffe://`).
///
/// Invariant: non-empty, at most [`MAX_TRUST_DOMAIN_LENGTH`] bytes, only `a-z 0-9 . - _`.
/// Serialises as the bare name; deserialising validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a trust domain from either its bare name (`example.org`) or its trust-domain
    /// SPIFFE ID (`spiffe://example.org`).
    ///
    /// The ID form must not carry a path ([`SpiffeIdError::TrustDomainHasPath`]), and
    /// neither form may carry a port, userinfo, query or fragment.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = if looks_like_uri(s) {
            if s.len() > MAX_SPIFFE_ID_LENGTH {
                return Err(SpiffeIdError::TooLong(s.len()));
            }
            strip_scheme(s)?
        } else {
            s
        };
        let (name, tail) = split_authority(rest);
        validate_trust_domain(name)?;
        match tail.bytes().next() {
            None => Ok(Self {
                name: name.to_owned(),
            }),
            Some(b'?') => Err(SpiffeIdError::Query),
            Some(b'#') => Err(SpiffeIdError::Fragment),
            Some(_) => Err(SpiffeIdError::TrustDomainHasPath),
        }
    }

    /// The bare trust domain name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain's SPIFFE ID as a string, e.g. `spiffe://example.org`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.name)
    }

    /// The trust domain's SPIFFE ID (no path), e.g. `spiffe://example.org`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            id: self.id_string(),
            path_start: SCHEME_PREFIX.len() + self.name.len(),
        }
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for TrustDomain {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated SPIFFE ID such as `spiffe://example.org/tessera/server`.
///
/// Holds the exact input string (strict parsing means it is already canonical) plus the
/// byte offset where the path starts, so accessors are slices without re-parsing.
/// Serialises as the URI string; deserialising validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole URI; always passes [`validate_id`].
    id: String,
    /// Byte offset of the path in `id` (`id.len()` for a trust-domain ID).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let path_start = validate_id(s)?;
        Ok(Self {
            id: s.to_owned(),
            path_start,
        })
    }

    /// Builds `spiffe://<td><path>`; `path` must be empty (the trust-domain ID) or start with
    /// `/` (e.g. `/tessera/server`) and is validated like a parsed path.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SpiffeIdError::RelativePath);
        }
        let path_start = SCHEME_PREFIX.len() + td.name.len();
        let len = path_start.saturating_add(path.len());
        if len > MAX_SPIFFE_ID_LENGTH {
            return Err(SpiffeIdError::TooLong(len));
        }
        validate_path(path)?;
        Ok(Self {
            id: format!("{SCHEME_PREFIX}{}{path}", td.name),
            path_start,
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain {
            name: self.trust_domain_name().to_owned(),
        }
    }

    /// The bare trust domain name, e.g. `example.org`.
    pub fn trust_domain_name(&self) -> &str {
        // The fallback is unreachable: both offsets come from the validated parse and sit
        // on ASCII boundaries.
        self.id
            .get(SCHEME_PREFIX.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path: `""` for a trust-domain ID, otherwise `/a/b` (no trailing slash).
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// Whether this is the ID of a trust domain itself (no path), as carried by signing
    /// authorities. Leaf SVIDs must not use such an ID.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path_start == self.id.len()
    }

    /// The whole URI, exactly as parsed or built.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Whether this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.name
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;

    /// Validates and keeps the given allocation.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let path_start = validate_id(&s)?;
        Ok(Self { id: s, path_start })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::try_from(s).map_err(serde::de::Error::custom)
    }
}

/// Validates a whole SPIFFE ID and returns the byte offset where its path starts.
fn validate_id(s: &str) -> Result<usize, SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::Empty);
    }
    // Checked first so that no further work is done on oversized input.
    if s.len() > MAX_SPIFFE_ID_LENGTH {
        return Err(SpiffeIdError::TooLong(s.len()));
    }
    let rest = strip_scheme(s)?;
    let (td, path) = split_authority(rest);
    validate_trust_domain(td)?;
    validate_path(path)?;
    Ok(SCHEME_PREFIX.len() + td.len())
}

/// Whether `s` is meant as a URI rather than a bare trust domain name.
fn looks_like_uri(s: &str) -> bool {
    s.contains("://") || has_scheme_ignoring_case(s)
}

/// Whether `s` starts with `spiffe:` in any case.
fn has_scheme_ignoring_case(s: &str) -> bool {
    s.as_bytes()
        .get(..SCHEME_WITH_COLON.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME_WITH_COLON))
}

/// Removes the exact, lowercase `spiffe://` prefix and returns what follows it.
fn strip_scheme(s: &str) -> Result<&str, SpiffeIdError> {
    let Some(after_colon) = s.strip_prefix("spiffe:") else {
        return Err(if has_scheme_ignoring_case(s) {
            SpiffeIdError::UppercaseScheme
        } else {
            SpiffeIdError::WrongScheme
        });
    };
    after_colon
        .strip_prefix("//")
        .ok_or(SpiffeIdError::MissingAuthority)
}

/// Splits what follows `spiffe://` into the authority and the rest (which is empty or starts
/// with `/`, `?` or `#`): per RFC 3986 §3.2 the authority ends at the first of those.
fn split_authority(rest: &str) -> (&str, &str) {
    let end = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    // `end` is at an ASCII byte or the end, so the split cannot fail. Were it ever to, the
    // fallback fails closed: the whole remainder becomes the "authority" and is rejected
    // for its delimiter character.
    rest.split_at_checked(end).unwrap_or((rest, ""))
}

/// Validates an authority as a trust domain name.
fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    // Before the per-character scan: in `user:pw@host` the `:` belongs to the userinfo, and
    // reporting a port would send the operator looking for the wrong mistake.
    if td.contains('@') {
        return Err(SpiffeIdError::Userinfo);
    }
    if td.len() > MAX_TRUST_DOMAIN_LENGTH {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    for ch in td.chars() {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::UppercaseTrustDomain(ch)),
            ':' => return Err(SpiffeIdError::Port),
            '%' => return Err(SpiffeIdError::PercentEncoding),
            _ if !ch.is_ascii() => return Err(SpiffeIdError::NonAscii(ch)),
            _ => return Err(SpiffeIdError::BadTrustDomainChar(ch)),
        }
    }
    Ok(())
}

/// Validates everything after the trust domain: empty, or `/segment(/segment)*`.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // A `?` or `#` ends the path and starts a component SPIFFE IDs must not have; report it
    // as such rather than as a bad path character.
    match path.bytes().find(|b| matches!(b, b'?' | b'#')) {
        Some(b'?') => return Err(SpiffeIdError::Query),
        Some(_) => return Err(SpiffeIdError::Fragment),
        None => {}
    }
    let Some(segments) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::RelativePath);
    };
    let mut segments = segments.split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "" if segments.peek().is_none() => return Err(SpiffeIdError::TrailingSlash),
            "" => return Err(SpiffeIdError::EmptySegment),
            // Only these two are dot-segments (RFC 3986 §3.3); `...` is an ordinary name.
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        for ch in segment.chars() {
            match ch {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '%' => return Err(SpiffeIdError::PercentEncoding),
                _ if !ch.is_ascii() => return Err(SpiffeIdError::NonAscii(ch)),
                _ => return Err(SpiffeIdError::BadPathChar(ch)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every "Valid" row of the digest's table 1.2 (the 2048-byte row is
    /// `boundary_whole_id_length`).
    const VALID: &[&str] = &[
        "spiffe://example.org",
        "spiffe://example.org/workload",
        "spiffe://staging.example.com/payments/mysql",
        "spiffe://k8s-west.example.com/ns/staging/sa/default",
        "spiffe://trust_domain.example.com/a",
        "spiffe://1.2.3.4/service",
        "spiffe://example.org/9eebccd2-12bf-40a6-b262-65fe0487d453",
        "spiffe://example.org/Foo/BAR_baz-1.2",
        "spiffe://example.org/...",
        "spiffe://a",
        "spiffe://-.-_",
    ];

    /// Every "Invalid" row of the digest's table 1.2 with the specific error expected (the
    /// over-length rows are `boundary_*`).
    fn invalid_cases() -> Vec<(&'static str, SpiffeIdError)> {
        use SpiffeIdError as E;
        vec![
            ("", E::Empty),
            ("http://example.org/foo", E::WrongScheme),
            ("spiffe:/example.org/foo", E::MissingAuthority),
            ("spiffe:example.org/foo", E::MissingAuthority),
            ("spiffe:///foo", E::EmptyTrustDomain),
            ("spiffe://example.org/", E::TrailingSlash),
            ("spiffe://example.org/foo/", E::TrailingSlash),
            ("spiffe://example.org//foo", E::EmptySegment),
            ("spiffe://example.org/./foo", E::DotSegment),
            ("spiffe://example.org/../foo", E::DotSegment),
            ("spiffe://example.org/foo/..", E::DotSegment),
            ("spiffe://example.org:8080/foo", E::Port),
            ("spiffe://user@example.org/foo", E::Userinfo),
            ("spiffe://user:pw@example.org/foo", E::Userinfo),
            ("spiffe://example.org/foo?x=1", E::Query),
            ("spiffe://example.org/foo#frag", E::Fragment),
            ("spiffe://exa%6dple.org/foo", E::PercentEncoding),
            ("spiffe://example.org/f%20o", E::PercentEncoding),
            ("spiffe://[::1]/foo", E::BadTrustDomainChar('[')),
            ("spiffe://example.org/foo bar", E::BadPathChar(' ')),
            ("spiffe://example.org/foo*", E::BadPathChar('*')),
            ("spiffe://example.org/foo:bar", E::BadPathChar(':')),
            ("spiffe://example.org/foo@bar", E::BadPathChar('@')),
            ("spiffe://exämple.org/foo", E::NonAscii('ä')),
            ("spiffe://EXAMPLE.org/foo", E::UppercaseTrustDomain('E')),
            ("SPIFFE://example.org/foo", E::UppercaseScheme),
            // Beyond the table: edges of the same rules.
            ("spiffe://", E::EmptyTrustDomain),
            ("spiffe", E::WrongScheme),
            ("example.org", E::WrongScheme),
            ("Spiffe://example.org", E::UppercaseScheme),
            ("spiffe://example.org?x=1", E::Query),
            ("spiffe://example.org#frag", E::Fragment),
            ("spiffe://example.org//", E::EmptySegment),
            ("spiffe://example.org/.", E::DotSegment),
            ("spiffe://example.org/a/./b", E::DotSegment),
            ("spiffe://example.org/fö", E::NonAscii('ö')),
            ("spiffe://example.org/a\0b", E::BadPathChar('\0')),
            ("spiffe://exa mple.org", E::BadTrustDomainChar(' ')),
            ("spiffe://example.org:", E::Port),
        ]
    }

    #[test]
    fn valid_table_parses_and_round_trips() {
        for &input in VALID {
            let id = SpiffeId::new(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(id.to_string(), input, "display round trip");
            assert_eq!(id.as_str(), input);
            assert_eq!(id.as_ref() as &str, input);
            let reparsed: SpiffeId = id.to_string().parse().unwrap();
            assert_eq!(reparsed, id);
            assert_eq!(
                format!("spiffe://{}{}", id.trust_domain_name(), id.path()),
                input
            );
            assert_eq!(SpiffeId::try_from(input.to_owned()).unwrap(), id);
        }
    }

    #[test]
    fn invalid_table_reports_specific_error() {
        for (input, expected) in invalid_cases() {
            assert_eq!(SpiffeId::new(input), Err(expected.clone()), "{input:?}");
            assert_eq!(
                SpiffeId::try_from(input.to_owned()),
                Err(expected.clone()),
                "{input:?}"
            );
            assert_eq!(input.parse::<SpiffeId>(), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn accessors() {
        let id = SpiffeId::new("spiffe://example.org/tessera/server").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
        assert_eq!(id.path(), "/tessera/server");
        assert!(!id.is_trust_domain_id());

        let td_id = SpiffeId::new("spiffe://example.org").unwrap();
        assert_eq!(td_id.trust_domain_name(), "example.org");
        assert_eq!(td_id.path(), "");
        assert!(td_id.is_trust_domain_id());
    }

    #[test]
    fn boundary_whole_id_length() {
        let prefix = "spiffe://example.org/";
        let at_limit = format!(
            "{prefix}{}",
            "a".repeat(MAX_SPIFFE_ID_LENGTH - prefix.len())
        );
        assert_eq!(at_limit.len(), 2048);
        let id = SpiffeId::new(&at_limit).unwrap();
        assert_eq!(id.as_str(), at_limit);

        let over = format!("{at_limit}a");
        assert_eq!(SpiffeId::new(&over), Err(SpiffeIdError::TooLong(2049)));

        // Many short segments reach the limit too.
        let segments = "/ab".repeat((MAX_SPIFFE_ID_LENGTH - "spiffe://a".len()) / 3);
        let many = format!("spiffe://a{segments}");
        assert!(many.len() <= MAX_SPIFFE_ID_LENGTH);
        assert_eq!(SpiffeId::new(&many).unwrap().path(), segments);
    }

    #[test]
    fn boundary_trust_domain_length() {
        let name_255 = "a".repeat(MAX_TRUST_DOMAIN_LENGTH);
        let name_256 = "a".repeat(MAX_TRUST_DOMAIN_LENGTH + 1);

        let id = SpiffeId::new(&format!("spiffe://{name_255}/x")).unwrap();
        assert_eq!(id.trust_domain_name(), name_255);
        assert_eq!(
            SpiffeId::new(&format!("spiffe://{name_256}/x")),
            Err(SpiffeIdError::TrustDomainTooLong(256))
        );

        assert_eq!(TrustDomain::new(&name_255).unwrap().name(), name_255);
        assert_eq!(
            TrustDomain::new(&name_256),
            Err(SpiffeIdError::TrustDomainTooLong(256))
        );
        assert_eq!(
            TrustDomain::new(&format!("spiffe://{name_256}")),
            Err(SpiffeIdError::TrustDomainTooLong(256))
        );
    }

    #[test]
    fn trust_domain_accepts_both_forms() {
        let bare = TrustDomain::new("example.org").unwrap();
        let uri = TrustDomain::new("spiffe://example.org").unwrap();
        assert_eq!(bare, uri);
        assert_eq!(bare.name(), "example.org");
        assert_eq!(bare.to_string(), "example.org");
        assert_eq!(bare.id_string(), "spiffe://example.org");
        assert_eq!(bare.id(), SpiffeId::new("spiffe://example.org").unwrap());
        assert!(bare.id().is_trust_domain_id());
        assert_eq!("example.org".parse::<TrustDomain>().unwrap(), bare);
        assert_eq!(TrustDomain::try_from("spiffe://example.org").unwrap(), bare);
    }

    #[test]
    fn trust_domain_rejects() {
        use SpiffeIdError as E;
        let cases = [
            ("", E::EmptyTrustDomain),
            ("spiffe://", E::EmptyTrustDomain),
            ("spiffe://example.org/foo", E::TrustDomainHasPath),
            ("spiffe://example.org/", E::TrustDomainHasPath),
            ("example.org/foo", E::TrustDomainHasPath),
            ("example.org?x", E::Query),
            ("spiffe://example.org#x", E::Fragment),
            ("example.org:8080", E::Port),
            ("user@example.org", E::Userinfo),
            ("Example.org", E::UppercaseTrustDomain('E')),
            ("SPIFFE://example.org", E::UppercaseScheme),
            ("spiffe:example.org", E::MissingAuthority),
            ("http://example.org", E::WrongScheme),
            ("[::1]", E::BadTrustDomainChar('[')),
            ("exa%6dple.org", E::PercentEncoding),
            ("exämple.org", E::NonAscii('ä')),
        ];
        for (input, expected) in cases {
            assert_eq!(TrustDomain::new(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn from_parts() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = SpiffeId::from_parts(&td, "/tessera/server").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/tessera/server");
        assert_eq!(
            id,
            SpiffeId::new("spiffe://example.org/tessera/server").unwrap()
        );
        assert_eq!(id.path(), "/tessera/server");
        assert_eq!(id.trust_domain(), td);

        let root = SpiffeId::from_parts(&td, "").unwrap();
        assert_eq!(root, td.id());
        assert!(root.is_trust_domain_id());

        use SpiffeIdError as E;
        let cases = [
            ("tessera/server", E::RelativePath),
            ("?x", E::RelativePath),
            ("/", E::TrailingSlash),
            ("/a/", E::TrailingSlash),
            ("//a", E::EmptySegment),
            ("/a/../b", E::DotSegment),
            ("/a?x=1", E::Query),
            ("/a#f", E::Fragment),
            ("/a%20b", E::PercentEncoding),
            ("/a:b", E::BadPathChar(':')),
        ];
        for (path, expected) in cases {
            assert_eq!(SpiffeId::from_parts(&td, path), Err(expected), "{path:?}");
        }

        let fits = format!(
            "/{}",
            "a".repeat(MAX_SPIFFE_ID_LENGTH - "spiffe://example.org/".len())
        );
        assert_eq!(
            SpiffeId::from_parts(&td, &fits).unwrap().as_str().len(),
            2048
        );
        let too_long = format!("{fits}a");
        assert_eq!(SpiffeId::from_parts(&td, &too_long), Err(E::TooLong(2049)));
    }

    #[test]
    fn serde_round_trip() {
        let id = SpiffeId::new("spiffe://example.org/ns/a").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""spiffe://example.org/ns/a""#);
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>(r#""spiffe://example.org/""#).is_err());
        assert!(serde_json::from_str::<SpiffeId>("42").is_err());

        let td = TrustDomain::new("example.org").unwrap();
        let json = serde_json::to_string(&td).unwrap();
        assert_eq!(json, r#""example.org""#);
        assert_eq!(serde_json::from_str::<TrustDomain>(&json).unwrap(), td);
        assert!(serde_json::from_str::<TrustDomain>(r#""Example.org""#).is_err());
    }

    #[test]
    fn serde_error_carries_message() {
        let err = serde_json::from_str::<SpiffeId>(r#""spiffe://example.org/a?b""#).unwrap_err();
        assert!(err.to_string().contains("query"), "{err}");
    }

    #[test]
    fn membership() {
        let org = TrustDomain::new("example.org").unwrap();
        let other = TrustDomain::new("example.com").unwrap();
        let sub = TrustDomain::new("sub.example.org").unwrap();
        let id = SpiffeId::new("spiffe://example.org/workload").unwrap();
        assert!(id.is_member_of(&org));
        assert!(!id.is_member_of(&other));
        assert!(!id.is_member_of(&sub));
        assert!(org.id().is_member_of(&org));
        let prefix_trap = SpiffeId::new("spiffe://example.org.evil/workload").unwrap();
        assert!(!prefix_trap.is_member_of(&org));
    }

    #[test]
    fn messages_are_lowercase_and_short() {
        let long_bad = format!("spiffe://example.org/{}*", "a".repeat(2000));
        let err = SpiffeId::new(&long_bad).unwrap_err();
        assert_eq!(err, SpiffeIdError::BadPathChar('*'));
        let msg = err.to_string();
        assert!(msg.len() < 200, "{msg}");
        for (_, e) in invalid_cases() {
            let msg = e.to_string();
            assert!(
                msg.chars().next().is_some_and(|c| c.is_ascii_lowercase()),
                "{msg}"
            );
        }
    }
}
