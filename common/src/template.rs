//! SPIFFE ID templates: an identity built from a workload's attested selectors.
//!
//! A template such as `spiffe://example.org/acme/svc/{systemd:unit}` is a SPIFFE ID whose
//! path may hold placeholders, each a whole path segment `{kind:key}` naming a key of the
//! selector vocabulary ([`SelectorKey`]). [`SpiffeIdTemplate::render`] replaces each
//! placeholder with the caller's value for that key, as exactly one path segment:
//! a value must be non-empty, not `.` or `..`, and made only of the SPIFFE path segment
//! characters `A-Z a-z 0-9 . - _`. Anything else is refused, never encoded: SPIFFE IDs may
//! not hold percent-encoding, and an encoding of our own would make two values render
//! alike. So a rendered ID always stays under the template's literal prefix
//! ([`SpiffeIdTemplate::literal_prefix`]), one segment per placeholder, and is a valid
//! SPIFFE ID of at most 2048 bytes, or an error.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::selector::{SelectorKey, SelectorKind, SelectorSet};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Most placeholders one template may hold.
pub const MAX_PLACEHOLDERS: usize = 8;

/// Why a template, or a value rendered into one, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template (with its placeholders standing for a plain segment) is not a SPIFFE ID.
    #[error("invalid template: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    /// A `{` or `}` that is not a whole-segment placeholder.
    #[error("placeholders must be whole path segments \"{{kind:key}}\"")]
    BadPlaceholder,
    /// A placeholder names no key of the selector vocabulary.
    #[error("placeholder {{{0}}} names no selector key (kind:key, e.g. systemd:unit)")]
    UnknownKey(String),
    /// The same key twice.
    #[error("placeholder {{{0}}} appears twice")]
    DuplicatePlaceholder(SelectorKey),
    /// No placeholder: that is an entry, not a template.
    #[error("a template needs at least one placeholder such as {{systemd:unit}}")]
    NoPlaceholder,
    /// Too many placeholders.
    #[error("a template holds at most {MAX_PLACEHOLDERS} placeholders")]
    TooManyPlaceholders,
    /// The template is a trust domain ID or starts with a placeholder.
    #[error("a template needs a literal path segment before its first placeholder")]
    NoLiteralPrefix,
    /// The caller has no value for a placeholder.
    #[error("no value for {{{0}}}")]
    MissingValue(SelectorKey),
    /// The caller has several values for a placeholder.
    #[error("several values for {{{0}}}")]
    AmbiguousValue(SelectorKey),
    /// A value cannot be one path segment.
    #[error("value for {{{key}}} cannot be a SPIFFE ID path segment: {why}")]
    BadValue {
        /// The placeholder.
        key: SelectorKey,
        /// What is wrong (never the whole value).
        why: String,
    },
    /// The rendered ID is longer than a SPIFFE ID may be.
    #[error("rendered SPIFFE ID would be {0} bytes long; the limit is 2048 bytes")]
    TooLong(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Placeholder(SelectorKey),
}

/// A validated SPIFFE ID template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeIdTemplate {
    raw: String,
    trust_domain: TrustDomain,
    segments: Vec<Segment>,
}

/// Parses `kind:key` (without braces).
fn parse_key(s: &str) -> Result<SelectorKey, TemplateError> {
    let unknown = || TemplateError::UnknownKey(s.to_owned());
    let (kind, key) = s.split_once(':').ok_or_else(unknown)?;
    let kind: SelectorKind = kind.parse().map_err(|_| unknown())?;
    kind.key(key).map_err(|_| unknown())
}

/// Checks one rendered value; `Ok` means it is a valid path segment by itself.
fn check_value(key: SelectorKey, value: &str) -> Result<(), TemplateError> {
    let bad = |why: String| TemplateError::BadValue { key, why };
    if value.is_empty() {
        return Err(bad("it is empty".to_owned()));
    }
    if value == "." || value == ".." {
        return Err(bad(format!("{value:?} is a dot segment")));
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(bad(format!("{ch:?} is outside A-Z a-z 0-9 . - _")));
    }
    Ok(())
}

impl SpiffeIdTemplate {
    /// Parses and validates a template.
    pub fn new(s: &str) -> Result<Self, TemplateError> {
        // Validate the literal parts as a SPIFFE ID with every placeholder standing for a
        // one-character segment (the shortest a value can render to).
        let mut segments = Vec::new();
        let mut probe = String::with_capacity(s.len());
        let (head, path) = match s.find("://") {
            Some(i) => {
                let after = &s[i + 3..];
                let td_end = after.find('/').unwrap_or(after.len());
                s.split_at(i + 3 + td_end)
            }
            None => (s, ""),
        };
        if head.contains(['{', '}']) {
            return Err(TemplateError::BadPlaceholder);
        }
        probe.push_str(head);
        let mut seen = Vec::new();
        if !path.is_empty() {
            for seg in path.strip_prefix('/').unwrap_or(path).split('/') {
                probe.push('/');
                if let Some(inner) = seg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    if inner.contains(['{', '}']) {
                        return Err(TemplateError::BadPlaceholder);
                    }
                    let key = parse_key(inner)?;
                    if seen.contains(&key) {
                        return Err(TemplateError::DuplicatePlaceholder(key));
                    }
                    seen.push(key);
                    probe.push('x');
                    segments.push(Segment::Placeholder(key));
                } else if seg.contains(['{', '}']) {
                    return Err(TemplateError::BadPlaceholder);
                } else {
                    probe.push_str(seg);
                    segments.push(Segment::Literal(seg.to_owned()));
                }
            }
        }
        let id = SpiffeId::new(&probe)?;
        if seen.is_empty() {
            return Err(TemplateError::NoPlaceholder);
        }
        if seen.len() > MAX_PLACEHOLDERS {
            return Err(TemplateError::TooManyPlaceholders);
        }
        if !matches!(segments.first(), Some(Segment::Literal(_))) {
            return Err(TemplateError::NoLiteralPrefix);
        }
        Ok(Self {
            raw: s.to_owned(),
            trust_domain: id.trust_domain(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Its trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path up to the first placeholder, e.g. `/acme/svc` (never empty): every rendered
    /// ID's path is under it, on a segment boundary.
    pub fn literal_prefix(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    out.push('/');
                    out.push_str(l);
                }
                Segment::Placeholder(_) => break,
            }
        }
        out
    }

    /// The keys of its placeholders, in order.
    pub fn placeholders(&self) -> Vec<SelectorKey> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Placeholder(k) => Some(*k),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The SPIFFE ID with each placeholder replaced by `values[key]`, each checked to be
    /// exactly one path segment.
    pub fn render(&self, values: &HashMap<SelectorKey, String>) -> Result<SpiffeId, TemplateError> {
        let mut path = String::new();
        for seg in &self.segments {
            path.push('/');
            match seg {
                Segment::Literal(l) => path.push_str(l),
                Segment::Placeholder(key) => {
                    let value = values.get(key).ok_or(TemplateError::MissingValue(*key))?;
                    check_value(*key, value)?;
                    path.push_str(value);
                }
            }
        }
        let len = "spiffe://".len() + self.trust_domain.name().len() + path.len();
        if len > crate::spiffe_id::MAX_SPIFFE_ID_LENGTH {
            return Err(TemplateError::TooLong(len));
        }
        Ok(SpiffeId::from_parts(&self.trust_domain, &path)?)
    }

    /// The caller's value for each placeholder, taken from `selectors` (exactly one value
    /// per placeholder key, else an error): what [`Self::render`] takes.
    pub fn values_from(
        &self,
        selectors: &SelectorSet,
    ) -> Result<HashMap<SelectorKey, String>, TemplateError> {
        let mut out = HashMap::with_capacity(self.segments.len());
        for key in self.placeholders() {
            let mut found = selectors.iter().filter(|s| s.key() == key);
            let first = found.next().ok_or(TemplateError::MissingValue(key))?;
            if found.next().is_some() {
                return Err(TemplateError::AmbiguousValue(key));
            }
            out.insert(key, first.value().to_owned());
        }
        Ok(out)
    }
}

impl fmt::Display for SpiffeIdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for SpiffeIdTemplate {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A template as an agent holds it (from the sync stream): what decides whether a caller
/// that matches no entry may ask for one made from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTemplate {
    /// Its id, named in `ProvisionEntry`.
    pub id: crate::TemplateId,
    /// The SPIFFE ID template.
    pub template: SpiffeIdTemplate,
    /// The selectors a caller must have (besides one value per placeholder).
    pub selectors: SelectorSet,
    /// How long the server keeps an instance after the last report that its workload
    /// lives (`None`: not told). The agent reports held instances well within it.
    pub grace: Option<std::time::Duration>,
}

impl AgentTemplate {
    /// The caller's selectors that make its instance (the template's, and one per
    /// placeholder) when a caller with `selectors` may ask for one: it has the template's
    /// selectors and exactly one value per placeholder, each a valid path segment. `None`
    /// otherwise (the server would refuse).
    pub fn instance_selectors(&self, selectors: &SelectorSet) -> Option<SelectorSet> {
        if self.selectors.is_empty() || !self.selectors.is_subset_of(selectors) {
            return None;
        }
        let values = self.template.values_from(selectors).ok()?;
        self.template.render(&values).ok()?;
        let mut out = self.selectors.clone();
        for (key, value) in values {
            out.insert(crate::Selector::new(key, value).ok()?);
        }
        Some(out)
    }
}

impl TryFrom<crate::proto::tessera::Template> for AgentTemplate {
    type Error = String;

    fn try_from(t: crate::proto::tessera::Template) -> Result<Self, Self::Error> {
        Ok(Self {
            id: crate::TemplateId::parse(t.id).map_err(|e| e.to_string())?,
            template: SpiffeIdTemplate::new(&t.spiffe_id_template).map_err(|e| e.to_string())?,
            selectors: t
                .selectors
                .iter()
                .map(|s| s.parse::<crate::Selector>())
                .collect::<Result<SelectorSet, _>>()
                .map_err(|e| e.to_string())?,
            grace: u64::try_from(t.grace_seconds)
                .ok()
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
        })
    }
}

impl From<&AgentTemplate> for crate::proto::tessera::Template {
    fn from(t: &AgentTemplate) -> Self {
        Self {
            id: t.id.to_string(),
            spiffe_id_template: t.template.to_string(),
            selectors: t.selectors.iter().map(ToString::to_string).collect(),
            grace_seconds: t
                .grace
                .map_or(0, |g| i64::try_from(g.as_secs()).unwrap_or(i64::MAX)),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::{Selector, SystemdKey, UnixKey};

    const UNIT: SelectorKey = SelectorKey::Systemd(SystemdKey::Unit);

    fn t(s: &str) -> SpiffeIdTemplate {
        SpiffeIdTemplate::new(s).unwrap()
    }

    fn unit(v: &str) -> HashMap<SelectorKey, String> {
        HashMap::from([(UNIT, v.to_owned())])
    }

    #[test]
    fn parses_whole_segment_placeholders() {
        let tpl = t("spiffe://example.org/acme/svc/{systemd:unit}");
        assert_eq!(tpl.literal_prefix(), "/acme/svc");
        assert_eq!(tpl.placeholders(), vec![UNIT]);
        assert_eq!(tpl.trust_domain().name(), "example.org");
        let two = t("spiffe://example.org/a/{systemd:slice}/x/{unix:uid}");
        assert_eq!(two.literal_prefix(), "/a");
        assert_eq!(two.placeholders().len(), 2);
    }

    #[test]
    fn refuses_bad_templates() {
        for (bad, want) in [
            ("spiffe://example.org/acme", TemplateError::NoPlaceholder),
            (
                "spiffe://example.org/{systemd:unit}",
                TemplateError::NoLiteralPrefix,
            ),
            (
                "spiffe://example.org/a/x{systemd:unit}",
                TemplateError::BadPlaceholder,
            ),
            (
                "spiffe://example.org/a/{systemd:unit}x",
                TemplateError::BadPlaceholder,
            ),
            (
                "spiffe://example.org/a/{{systemd:unit}}",
                TemplateError::BadPlaceholder,
            ),
            ("spiffe://{systemd:unit}/a/b", TemplateError::BadPlaceholder),
            (
                "spiffe://example.org/a/{systemd:nope}",
                TemplateError::UnknownKey("systemd:nope".into()),
            ),
            (
                "spiffe://example.org/a/{bogus:unit}",
                TemplateError::UnknownKey("bogus:unit".into()),
            ),
            (
                "spiffe://example.org/a/{systemd:unit}/{systemd:unit}",
                TemplateError::DuplicatePlaceholder(UNIT),
            ),
        ] {
            assert_eq!(SpiffeIdTemplate::new(bad).unwrap_err(), want, "{bad}");
        }
        for bad in [
            "spiffe://example.org/a/../{systemd:unit}",
            "spiffe://example.org/a//{systemd:unit}",
            "spiffe://example.org/a/{systemd:unit}/",
            "spiffe://example.org/a%2f/{systemd:unit}",
            "http://example.org/a/{systemd:unit}",
            "spiffe://Example.org/a/{systemd:unit}",
        ] {
            assert!(
                matches!(SpiffeIdTemplate::new(bad), Err(TemplateError::SpiffeId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn renders_one_segment_per_value() {
        let tpl = t("spiffe://example.org/acme/svc/{systemd:unit}");
        assert_eq!(
            tpl.render(&unit("a.service")).unwrap().as_str(),
            "spiffe://example.org/acme/svc/a.service"
        );
        assert_eq!(
            tpl.render(&unit("A-b_c.1")).unwrap().as_str(),
            "spiffe://example.org/acme/svc/A-b_c.1"
        );
    }

    #[test]
    fn values_that_could_escape_the_prefix_are_refused() {
        let tpl = t("spiffe://example.org/acme/svc/{systemd:unit}");
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/",
            "..%2f",
            "%2e%2e",
            "a%b",
            "a b",
            "ü.service",
            "a\u{0}b",
            "a\\b",
            "a?b",
            "a#b",
            "a@b.service",
        ] {
            let err = tpl.render(&unit(bad)).unwrap_err();
            assert!(
                matches!(err, TemplateError::BadValue { key: UNIT, .. }),
                "{bad:?}: {err}"
            );
        }
        // Every value that renders gives exactly one more segment under the prefix.
        for good in ["...", ".x", "x..", "-", "_"] {
            let id = tpl.render(&unit(good)).unwrap();
            let rest = id.path().strip_prefix("/acme/svc/").unwrap();
            assert_eq!(rest, good);
        }
    }

    #[test]
    fn very_long_values_stay_within_the_spiffe_id_limit() {
        let tpl = t("spiffe://example.org/acme/svc/{systemd:unit}");
        let fits = 2048 - "spiffe://example.org/acme/svc/".len();
        let id = tpl.render(&unit(&"a".repeat(fits))).unwrap();
        assert_eq!(id.as_str().len(), 2048);
        assert_eq!(
            tpl.render(&unit(&"a".repeat(fits + 1))).unwrap_err(),
            TemplateError::TooLong(2049)
        );
        assert!(matches!(
            tpl.render(&unit(&"a".repeat(100_000))).unwrap_err(),
            TemplateError::TooLong(_)
        ));
    }

    #[test]
    fn an_agent_asks_only_for_callers_the_server_would_serve() {
        let sel = |s: &str| s.parse::<Selector>().unwrap();
        let set = |list: &[&str]| list.iter().map(|s| sel(s)).collect::<SelectorSet>();
        let tpl = AgentTemplate {
            id: crate::TemplateId::parse("t1").unwrap(),
            template: t("spiffe://example.org/acme/{cgroup:path}/{systemd:unit}"),
            selectors: set(&["systemd:slice:acme.slice"]),
            grace: Some(std::time::Duration::from_secs(90)),
        };
        // Not in the slice; no value for a placeholder; a value that is not one segment.
        assert!(
            tpl.instance_selectors(&set(&["systemd:unit:a.service"]))
                .is_none()
        );
        assert!(
            tpl.instance_selectors(&set(&[
                "systemd:slice:acme.slice",
                "systemd:unit:a.service"
            ]))
            .is_none()
        );
        assert!(
            tpl.instance_selectors(&set(&[
                "systemd:slice:acme.slice",
                "systemd:unit:a.service",
                "cgroup:path:/acme.slice/a.service",
            ]))
            .is_none()
        );
        assert!(
            tpl.instance_selectors(&set(&[
                "systemd:slice:acme.slice",
                "systemd:unit:a.service",
                "cgroup:path:/x",
            ]))
            .is_none(),
            "cgroup:path values start with / and never render"
        );
        let unit = AgentTemplate {
            template: t("spiffe://example.org/acme/{systemd:unit}"),
            ..tpl
        };
        let own = unit
            .instance_selectors(&set(&[
                "systemd:slice:acme.slice",
                "systemd:unit:a.service",
                "unix:uid:1000",
            ]))
            .unwrap();
        assert_eq!(
            own,
            set(&["systemd:slice:acme.slice", "systemd:unit:a.service"]),
            "the template's selectors and one per placeholder, nothing else of the caller"
        );
        // The wire form keeps what the agent needs.
        let back = AgentTemplate::try_from(crate::proto::tessera::Template::from(&unit)).unwrap();
        assert_eq!(back, unit);
    }

    #[test]
    fn values_come_from_exactly_one_selector_of_the_key() {
        let tpl = t("spiffe://example.org/acme/{unix:uid}/{systemd:unit}");
        let sel = |s: &str| s.parse::<Selector>().unwrap();
        let caller: SelectorSet = [
            sel("unix:uid:1000"),
            sel("systemd:unit:a.service"),
            sel("systemd:slice:acme.slice"),
        ]
        .into_iter()
        .collect();
        let values = tpl.values_from(&caller).unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(
            tpl.render(&values).unwrap().as_str(),
            "spiffe://example.org/acme/1000/a.service"
        );
        let missing: SelectorSet = [sel("unix:uid:1000")].into_iter().collect();
        assert_eq!(
            tpl.values_from(&missing).unwrap_err(),
            TemplateError::MissingValue(UNIT)
        );
        let gids = t("spiffe://example.org/g/{unix:supplementary_gid}");
        let two: SelectorSet = [
            Selector::unix(UnixKey::SupplementaryGid, 1).unwrap(),
            Selector::unix(UnixKey::SupplementaryGid, 2).unwrap(),
        ]
        .into_iter()
        .collect();
        assert!(matches!(
            gids.values_from(&two).unwrap_err(),
            TemplateError::AmbiguousValue(_)
        ));
    }
}
