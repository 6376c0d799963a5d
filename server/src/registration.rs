//! Registration entries: validation and CRUD on top of the datastore.
//!
//! Validation happens here, once, before anything is written: SPIFFE IDs in our trust
//! domain with a path, well-formed `type:value` selectors (at least one), positive TTLs
//! within bounds, valid DNS names. A rejected request changes nothing.

use std::sync::Arc;
use std::time::Duration;

use common::{
    EntryId, RegistrationEntry, Selector, SelectorError, SelectorSet, SpiffeId, SpiffeIdError,
    TrustDomain,
};

use crate::audit::{AuditEvent, AuditKind};
use crate::clock::now_unix;
use crate::config::MAX_SVID_TTL;
use crate::datastore::{Datastore, DatastoreError, EntryFilter};
use crate::events::{ChangeEvent, Events};

/// Longest accepted hint, as the Workload API spec recommends.
const MAX_HINT_LENGTH: usize = 1024;
/// Most DNS names on one entry.
const MAX_DNS_NAMES: usize = 32;
/// Most selectors on one entry.
const MAX_SELECTORS: usize = 64;

/// Why an entry request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistrationError {
    /// `spiffe_id` or `parent_id` is malformed.
    #[error("invalid {field}: {source}")]
    InvalidSpiffeId {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        source: SpiffeIdError,
    },
    /// An ID is in another trust domain.
    #[error("{field} {id} is not in trust domain {td}")]
    ForeignTrustDomain {
        /// Which field.
        field: &'static str,
        /// The ID.
        id: String,
        /// Our trust domain.
        td: String,
    },
    /// The SPIFFE ID is the trust domain itself or reserved for Tessera's own components.
    #[error("spiffe_id {0} is reserved or has no path")]
    ReservedSpiffeId(String),
    /// A selector is malformed.
    #[error("invalid selector {selector:?}: {source}")]
    InvalidSelector {
        /// The selector as given.
        selector: String,
        /// What is wrong.
        source: SelectorError,
    },
    /// No selectors (the entry would match nobody).
    #[error("at least one selector is required")]
    NoSelectors,
    /// Too many selectors or DNS names.
    #[error("too many {0} (at most {1})")]
    TooMany(&'static str, usize),
    /// A TTL is negative or too long.
    #[error("invalid {field}: must be between 1 second and {max}s (0 means the server default)")]
    BadTtl {
        /// Which field.
        field: &'static str,
        /// Upper bound in seconds.
        max: u64,
    },
    /// A DNS name is malformed.
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
    /// The hint holds control characters.
    #[error("hint must not contain control characters")]
    BadHint,
    /// The hint is too long.
    #[error("hint is longer than {MAX_HINT_LENGTH} bytes")]
    HintTooLong,
    /// No entry with that id.
    #[error("no entry with id {0}")]
    NotFound(String),
    /// A duplicate entry exists.
    #[error("{0}")]
    Duplicate(String),
    /// The datastore failed.
    #[error("{0}")]
    Datastore(DatastoreError),
}

impl RegistrationError {
    /// The error for an out-of-range TTL in `field`.
    pub fn bad_ttl(field: &'static str) -> Self {
        Self::BadTtl {
            field,
            max: MAX_SVID_TTL.as_secs(),
        }
    }
}

impl From<DatastoreError> for RegistrationError {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::Conflict(m) => Self::Duplicate(m),
            DatastoreError::NotFound(m) => Self::NotFound(m),
            other => Self::Datastore(other),
        }
    }
}

/// Checks an RFC 1123 DNS name (a leading `*.` wildcard label is allowed).
pub fn valid_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || name.len() > 253 {
        return false;
    }
    body.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

fn entry_event(kind: AuditKind, e: &RegistrationEntry) -> AuditEvent {
    AuditEvent::new(
        kind,
        &e.id,
        serde_json::json!({
            "spiffe_id": e.spiffe_id.as_str(),
            "parent_id": e.parent_id.as_str(),
            "selectors": e.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "x509_svid_ttl": e.x509_svid_ttl.as_secs(),
            "jwt_svid_ttl": e.jwt_svid_ttl.as_secs(),
            "dns_names": e.dns_names,
            "jit": e.jit,
            "revision": e.revision,
        }),
    )
}

/// A registration entry as asked for, before validation (parsed from the API's wire
/// form in `api/wire.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryRequest {
    /// The identity, `spiffe://<our trust domain>/<path>`.
    pub spiffe_id: String,
    /// The agent (node) whose workloads may receive it.
    pub parent_id: String,
    /// `type:value` selectors a workload must all have.
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime; `None`: the server default.
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime; `None`: the server default.
    pub jwt_svid_ttl: Option<Duration>,
    /// DNS SANs of the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Issued only while a task activates it.
    pub jit: bool,
    /// Workload API hint.
    pub hint: String,
}

/// An entry's validated fields, not yet an entry: it becomes one with an id, a creation
/// time and a revision ([`ValidEntry::new_entry`], [`ValidEntry::replacing`]).
#[derive(Debug, Clone)]
pub struct ValidEntry {
    spiffe_id: SpiffeId,
    parent_id: SpiffeId,
    selectors: SelectorSet,
    x509_svid_ttl: Duration,
    jwt_svid_ttl: Duration,
    dns_names: Vec<String>,
    jit: bool,
    hint: String,
}

impl ValidEntry {
    fn into_entry(self, id: EntryId, created_at: i64, revision: u64) -> RegistrationEntry {
        RegistrationEntry {
            id,
            spiffe_id: self.spiffe_id,
            parent_id: self.parent_id,
            selectors: self.selectors,
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            dns_names: self.dns_names,
            jit: self.jit,
            hint: self.hint,
            created_at,
            revision,
        }
    }

    /// A new entry created at `now` (a time-ordered id: entries created in the same
    /// second still sort in creation order).
    pub fn new_entry(self, now: i64) -> RegistrationEntry {
        self.into_entry(EntryId::generate(), now, 1)
    }

    /// The next revision of `old`, with these fields.
    pub fn replacing(self, old: &RegistrationEntry) -> RegistrationEntry {
        self.into_entry(old.id.clone(), old.created_at, old.revision + 1)
    }
}

/// Entry CRUD with validation and change notification.
#[derive(Debug, Clone)]
pub struct Registrar {
    ds: Arc<dyn Datastore>,
    events: Events,
    trust_domain: TrustDomain,
    default_x509_ttl: Duration,
    default_jwt_ttl: Duration,
}

impl Registrar {
    /// A registrar for `trust_domain`.
    pub fn new(
        ds: Arc<dyn Datastore>,
        events: Events,
        trust_domain: TrustDomain,
        default_x509_ttl: Duration,
        default_jwt_ttl: Duration,
    ) -> Self {
        Self {
            ds,
            events,
            trust_domain,
            default_x509_ttl,
            default_jwt_ttl,
        }
    }

    fn id_in_td(&self, field: &'static str, raw: &str) -> Result<SpiffeId, RegistrationError> {
        let id = SpiffeId::new(raw)
            .map_err(|source| RegistrationError::InvalidSpiffeId { field, source })?;
        if !id.is_member_of(&self.trust_domain) {
            return Err(RegistrationError::ForeignTrustDomain {
                field,
                id: id.to_string(),
                td: self.trust_domain.to_string(),
            });
        }
        Ok(id)
    }

    fn ttl(
        field: &'static str,
        ttl: Option<Duration>,
        default: Duration,
    ) -> Result<Duration, RegistrationError> {
        match ttl {
            None => Ok(default),
            Some(d) if d >= Duration::from_secs(1) && d <= MAX_SVID_TTL => {
                Ok(Duration::from_secs(d.as_secs()))
            }
            Some(_) => Err(RegistrationError::bad_ttl(field)),
        }
    }

    /// Validates a request; the result becomes an entry once it has an id ([`ValidEntry`]).
    pub fn validate(&self, spec: &EntryRequest) -> Result<ValidEntry, RegistrationError> {
        let spiffe_id = self.id_in_td("spiffe_id", &spec.spiffe_id)?;
        if spiffe_id.is_trust_domain_id() || spiffe_id.path().starts_with("/tessera/server") {
            return Err(RegistrationError::ReservedSpiffeId(spiffe_id.to_string()));
        }
        let parent_id = self.id_in_td("parent_id", &spec.parent_id)?;
        if spec.selectors.is_empty() {
            return Err(RegistrationError::NoSelectors);
        }
        if spec.selectors.len() > MAX_SELECTORS {
            return Err(RegistrationError::TooMany("selectors", MAX_SELECTORS));
        }
        let mut selectors = SelectorSet::default();
        for raw in &spec.selectors {
            let s: Selector = raw
                .parse()
                .map_err(|source| RegistrationError::InvalidSelector {
                    selector: raw.clone(),
                    source,
                })?;
            selectors.insert(s);
        }
        if spec.dns_names.len() > MAX_DNS_NAMES {
            return Err(RegistrationError::TooMany("DNS names", MAX_DNS_NAMES));
        }
        let mut dns_names = Vec::with_capacity(spec.dns_names.len());
        for name in &spec.dns_names {
            if !valid_dns_name(name) {
                return Err(RegistrationError::BadDnsName(name.clone()));
            }
            if !dns_names.contains(name) {
                dns_names.push(name.clone());
            }
        }
        if spec.hint.len() > MAX_HINT_LENGTH {
            return Err(RegistrationError::HintTooLong);
        }
        if spec.hint.chars().any(char::is_control) {
            return Err(RegistrationError::BadHint);
        }
        Ok(ValidEntry {
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: Self::ttl("x509_svid_ttl", spec.x509_svid_ttl, self.default_x509_ttl)?,
            jwt_svid_ttl: Self::ttl("jwt_svid_ttl", spec.jwt_svid_ttl, self.default_jwt_ttl)?,
            dns_names,
            jit: spec.jit,
            hint: spec.hint.clone(),
        })
    }

    /// Creates an entry.
    pub async fn create(
        &self,
        spec: &EntryRequest,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let entry = self.validate(spec)?.new_entry(now_unix());
        self.ds.create_entry(&entry).await?;
        self.ds
            .append_audit(&[entry_event(AuditKind::EntryCreated, &entry)])
            .await?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, parent_id = %entry.parent_id, "entry created");
        self.events.publish(ChangeEvent::EntryUpserted {
            entry: Arc::new(entry.clone()),
            previous_parent: None,
        });
        Ok(entry)
    }

    /// Replaces an entry's fields.
    pub async fn update(
        &self,
        id: &EntryId,
        spec: &EntryRequest,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let valid = self.validate(spec)?;
        let old = self
            .ds
            .get_entry(id)
            .await?
            .ok_or_else(|| RegistrationError::NotFound(id.to_string()))?;
        let entry = valid.replacing(&old);
        self.ds.update_entry(&entry).await?;
        self.ds
            .append_audit(&[entry_event(AuditKind::EntryUpdated, &entry)])
            .await?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, "entry updated");
        let previous_parent = (old.parent_id != entry.parent_id).then_some(old.parent_id);
        self.events.publish(ChangeEvent::EntryUpserted {
            entry: Arc::new(entry.clone()),
            previous_parent,
        });
        Ok(entry)
    }

    /// Deletes an entry.
    pub async fn delete(&self, id: &EntryId) -> Result<RegistrationEntry, RegistrationError> {
        let entry = self
            .ds
            .delete_entry(id)
            .await?
            .ok_or_else(|| RegistrationError::NotFound(id.to_string()))?;
        self.ds
            .append_audit(&[entry_event(AuditKind::EntryDeleted, &entry)])
            .await?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, "entry deleted");
        self.events.publish(ChangeEvent::EntryDeleted {
            id: entry.id.clone(),
            parent_id: entry.parent_id.clone(),
        });
        Ok(entry)
    }

    /// One entry.
    pub async fn get(&self, id: &EntryId) -> Result<RegistrationEntry, RegistrationError> {
        self.ds
            .get_entry(id)
            .await?
            .ok_or_else(|| RegistrationError::NotFound(id.to_string()))
    }

    /// Entries matching the optional filters.
    pub async fn list(
        &self,
        spiffe_id: &str,
        parent_id: &str,
    ) -> Result<Vec<RegistrationEntry>, RegistrationError> {
        let parse = |field, raw: &str| -> Result<Option<SpiffeId>, RegistrationError> {
            if raw.is_empty() {
                Ok(None)
            } else {
                SpiffeId::new(raw)
                    .map(Some)
                    .map_err(|source| RegistrationError::InvalidSpiffeId { field, source })
            }
        };
        let filter = EntryFilter {
            spiffe_id: parse("spiffe_id", spiffe_id)?,
            parent_id: parse("parent_id", parent_id)?,
        };
        Ok(self.ds.list_entries(&filter).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;

    fn spec() -> EntryRequest {
        EntryRequest {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec!["unix:uid:1000".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn validation_rejects_bad_input_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Arc::new(
            SqliteDatastore::open(&dir.path().join("d.sqlite3"))
                .await
                .unwrap(),
        );
        let r = Registrar::new(
            ds,
            Events::default(),
            TrustDomain::new("example.org").unwrap(),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        type Case = (fn(&mut EntryRequest), &'static str);
        let cases: Vec<Case> = vec![
            (
                |s| s.spiffe_id = "spiffe://example.org/".into(),
                "invalid spiffe_id",
            ),
            (
                |s| s.spiffe_id = "spiffe://other.org/web".into(),
                "not in trust domain",
            ),
            (|s| s.spiffe_id = "spiffe://example.org".into(), "reserved"),
            (
                |s| s.spiffe_id = "spiffe://example.org/tessera/server".into(),
                "reserved",
            ),
            (|s| s.parent_id = "http://x".into(), "invalid parent_id"),
            (|s| s.selectors.clear(), "at least one selector"),
            (
                |s| s.selectors = vec!["uid:1000".into()],
                "invalid selector",
            ),
            (
                |s| s.selectors = vec!["unix:uid:abc".into()],
                "invalid selector",
            ),
            (|s| s.x509_svid_ttl = Some(Duration::ZERO), "x509_svid_ttl"),
            (
                |s| s.jwt_svid_ttl = Some(Duration::from_secs(u64::MAX)),
                "jwt_svid_ttl",
            ),
            (
                |s| s.jwt_svid_ttl = Some(MAX_SVID_TTL + Duration::from_secs(1)),
                "jwt_svid_ttl",
            ),
            (|s| s.dns_names = vec!["Bad_Name".into()], "DNS name"),
            (|s| s.dns_names = vec!["a..b".into()], "DNS name"),
            (|s| s.hint = "x".repeat(2000), "hint"),
            (|s| s.hint = "a\0b".into(), "control characters"),
        ];
        for (mutate, want) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = r.create(&s).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        assert!(
            r.list("", "").await.unwrap().is_empty(),
            "nothing was stored"
        );

        let e = r.create(&spec()).await.unwrap();
        assert_eq!(e.x509_svid_ttl, Duration::from_secs(3600));
        assert!(matches!(
            r.create(&spec()).await,
            Err(RegistrationError::Duplicate(_))
        ));
        let mut s = spec();
        s.dns_names = vec!["web.example.org".into(), "*.svc.example.org".into()];
        s.x509_svid_ttl = Some(Duration::from_secs(60));
        let u = r.update(&e.id, &s).await.unwrap();
        assert_eq!(u.revision, 2);
        assert_eq!(u.x509_svid_ttl, Duration::from_secs(60));
        assert!(matches!(
            r.update(&EntryId::parse("nope").unwrap(), &s).await,
            Err(RegistrationError::NotFound(_))
        ));
        r.delete(&e.id).await.unwrap();
        assert!(matches!(
            r.delete(&e.id).await,
            Err(RegistrationError::NotFound(_))
        ));
    }

    #[test]
    fn dns_names() {
        for ok in ["a", "web.example.org", "*.example.org", "x-1.y2"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*.",
            "-a.b",
            "a-.b",
            "A.b",
            "a_b",
            "a..b",
            "a.*.b",
            &"a".repeat(64),
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }
}
