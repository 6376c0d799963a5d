//! Registration entries: validation and CRUD on top of the datastore.
//!
//! Validation happens here, once, before anything is written: SPIFFE IDs in our trust
//! domain with a path, well-formed `type:value` selectors (at least one), positive TTLs
//! within bounds, valid DNS names. A rejected request changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::selector::NodeSelectorError;
use common::{
    EntryId, NodeSelector, RegistrationEntry, Selector, SelectorError, SelectorSet, SpiffeId,
    SpiffeIdError, TrustDomain,
};

use common::entry::{Disabled, Governance};

use crate::audit::{AuditEvent, AuditKind, SERVER_ACTOR};
use crate::clock::now_unix;
use crate::config::MAX_SVID_TTL;
use crate::datastore::TenantRecord;
use crate::datastore::{AuditFor, Datastore, DatastoreError, EntryFilter};
use crate::events::{ChangeEvent, Events};
use crate::tenants::{
    MAX_REVIEW_EVERY, Operator, TenantDirectory, owner_of, prefixes_text, validate_owner,
};

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
    /// A node entry's selector is not a node selector.
    #[error("invalid node selector {selector:?}: {source}")]
    InvalidNodeSelector {
        /// The selector as given.
        selector: String,
        /// What is wrong.
        source: NodeSelectorError,
    },
    /// A workload entry was given a node selector.
    #[error(
        "{0:?} is a node selector: only node entries (--node) take node selectors; \
         workload entries take workload selectors (unix:, cgroup:, ...)"
    )]
    NodeSelectorOnWorkload(String),
    /// A node entry asks for something only a workload entry has.
    #[error("{0}")]
    BadNodeEntry(String),
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
    /// No entry with that id (or one of a tenant the caller may not see: the same answer).
    #[error("no entry with id {0}")]
    NotFound(String),
    /// The tenant named is unknown (or not the caller's), or the caller must name one.
    #[error(transparent)]
    Tenant(crate::tenants::TenantError),
    /// The SPIFFE ID is outside the tenant's path prefixes.
    #[error("{0}")]
    OutsideTenant(String),
    /// The request conflicts with what another tenant owns.
    #[error("{0}")]
    OtherTenant(String),
    /// The tenant is at its entry quota.
    #[error("{0}")]
    Quota(String),
    /// An owner, expiry or review period is malformed.
    #[error("{0}")]
    BadGovernance(String),
    /// A DNS name is not under a domain the tenant verified.
    #[error(
        "DNS name {name} is not under a domain tenant {tenant} has verified \
         (tessera-server tenant domain add/verify)"
    )]
    UnverifiedDnsName {
        /// The name.
        name: String,
        /// The tenant.
        tenant: String,
    },
    /// Only platform operators may do this.
    #[error("{0}")]
    Forbidden(String),
    /// A duplicate entry exists.
    #[error("{0}")]
    Duplicate(String),
    /// An identity template, or a value rendered into one, is malformed.
    #[error("{0}")]
    BadTemplate(String),
    /// The caller may not use this template (not its parent, or lacks its selectors).
    #[error("{0}")]
    NotEntitled(String),
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

impl From<crate::tenants::TenantError> for RegistrationError {
    fn from(e: crate::tenants::TenantError) -> Self {
        use crate::tenants::TenantError as T;
        match e {
            T::Datastore(d) => d.into(),
            T::PlatformOnly(_) => Self::Forbidden(e.to_string()),
            other => Self::Tenant(other),
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

pub(crate) fn entry_event(kind: AuditKind, e: &RegistrationEntry, by: &str) -> AuditEvent {
    let g = &e.governance;
    AuditEvent::new(
        kind,
        &e.id,
        serde_json::json!({
            "spiffe_id": e.spiffe_id.as_str(),
            "parent_id": e.parent_id.as_str(),
            "selectors": e.selector_strings(),
            "node": e.is_node(),
            "x509_svid_ttl": e.x509_svid_ttl.as_secs(),
            "jwt_svid_ttl": e.jwt_svid_ttl.as_secs(),
            "dns_names": e.dns_names,
            "jit": e.jit,
            "revision": e.revision,
            "owner": g.owner,
            "expires_at": g.expires_at,
            "review_every": g.review_every.map(|d| d.as_secs()),
            "disabled": g.disabled.as_ref().map(|d| d.reason.as_str()),
        }),
    )
    .by(by)
    .in_tenant(&g.tenant)
}

/// Whether `name` (an entry's DNS name, possibly `*.`) is the stored domain `domain` or
/// under it, on a label boundary ([`crate::domains::DomainName::covers`]); a stored domain
/// that is not a valid domain covers nothing.
pub fn dns_name_under(name: &str, domain: &str) -> bool {
    crate::domains::DomainName::new(domain).is_ok_and(|d| d.covers(name))
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
    /// The tenant; empty: the caller's only tenant (platform operators: the tenant owning
    /// the SPIFFE ID's path). On update, empty keeps the entry's.
    pub tenant: String,
    /// `user:NAME` or a SPIFFE ID; empty: the caller (on update: unchanged).
    pub owner: String,
    /// Unix seconds after which it is not issued.
    pub expires_at: Option<i64>,
    /// Its owner re-certifies it within this period; `None`: the tenant's default.
    pub review_every: Option<Duration>,
    /// A node entry: `selectors` are node selectors, `parent_id` is empty (or the
    /// server's ID) and the SPIFFE ID names the group of agents having them all.
    pub node: bool,
}

/// An entry's validated fields, not yet an entry: it becomes one with an id, a creation
/// time, a revision and its governance ([`ValidEntry::new_entry`], [`ValidEntry::replacing`]).
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
    node_selectors: Option<BTreeSet<NodeSelector>>,
}

impl ValidEntry {
    fn into_entry(
        self,
        id: EntryId,
        created_at: i64,
        revision: u64,
        governance: Governance,
    ) -> RegistrationEntry {
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
            governance,
            node_selectors: self.node_selectors,
        }
    }

    /// The SPIFFE ID asked for.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// A new entry created at `now` (a time-ordered id: entries created in the same
    /// second still sort in creation order).
    pub fn new_entry(self, now: i64, governance: Governance) -> RegistrationEntry {
        self.into_entry(EntryId::generate(), now, 1, governance)
    }

    /// The next revision of `old`, with these fields.
    pub fn replacing(self, old: &RegistrationEntry, governance: Governance) -> RegistrationEntry {
        self.into_entry(old.id.clone(), old.created_at, old.revision + 1, governance)
    }
}

/// Entry CRUD with validation, tenancy checks and change notification.
#[derive(Debug, Clone)]
pub struct Registrar {
    ds: Arc<dyn Datastore>,
    events: Events,
    trust_domain: TrustDomain,
    default_x509_ttl: Duration,
    default_jwt_ttl: Duration,
    tenants: TenantDirectory,
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
            tenants: TenantDirectory::new(Arc::clone(&ds)),
            ds,
            events,
            trust_domain,
            default_x509_ttl,
            default_jwt_ttl,
        }
    }

    /// The tenant directory entries are checked against.
    pub fn tenants(&self) -> &TenantDirectory {
        &self.tenants
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
        if spec.selectors.is_empty() {
            return Err(RegistrationError::NoSelectors);
        }
        if spec.selectors.len() > MAX_SELECTORS {
            return Err(RegistrationError::TooMany("selectors", MAX_SELECTORS));
        }
        let (parent_id, selectors, node_selectors) = if spec.node {
            let (parent_id, node) = self.validate_node(spec, &spiffe_id)?;
            (parent_id, SelectorSet::default(), Some(node))
        } else {
            let parent_id = self.id_in_td("parent_id", &spec.parent_id)?;
            let mut selectors = SelectorSet::default();
            for raw in &spec.selectors {
                let s: Selector = raw.parse().map_err(|source| {
                    if raw.parse::<NodeSelector>().is_ok() {
                        RegistrationError::NodeSelectorOnWorkload(raw.clone())
                    } else {
                        RegistrationError::InvalidSelector {
                            selector: raw.clone(),
                            source,
                        }
                    }
                })?;
                selectors.insert(s);
            }
            (parent_id, selectors, None)
        };
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
            node_selectors,
        })
    }

    /// The parent (the server) and node selectors of a node entry. Its SPIFFE ID names a
    /// group and must not be an agent's (members would act for that agent's entries).
    fn validate_node(
        &self,
        spec: &EntryRequest,
        spiffe_id: &SpiffeId,
    ) -> Result<(SpiffeId, BTreeSet<NodeSelector>), RegistrationError> {
        let server = crate::server_identity::server_id(&self.trust_domain).map_err(|source| {
            RegistrationError::InvalidSpiffeId {
                field: "parent_id",
                source,
            }
        })?;
        if !spec.parent_id.is_empty() && spec.parent_id != server.as_str() {
            return Err(RegistrationError::BadNodeEntry(format!(
                "a node entry's parent is the server ({server}): leave parent_id empty"
            )));
        }
        if spiffe_id.path().starts_with("/tessera/") {
            return Err(RegistrationError::BadNodeEntry(format!(
                "node entry SPIFFE ID {spiffe_id} is under /tessera/, reserved for agents \
                 and servers; name the group elsewhere, e.g. spiffe://{}/group/web",
                self.trust_domain
            )));
        }
        if spec.jit || !spec.dns_names.is_empty() || !spec.hint.is_empty() {
            return Err(RegistrationError::BadNodeEntry(
                "a node entry names a group of agents: it takes no --jit, DNS names or hint \
                 (give them to the workload entries parented to it)"
                    .to_owned(),
            ));
        }
        let mut node = BTreeSet::new();
        for raw in &spec.selectors {
            let s: NodeSelector =
                raw.parse()
                    .map_err(|source| RegistrationError::InvalidNodeSelector {
                        selector: raw.clone(),
                        source,
                    })?;
            node.insert(s);
        }
        Ok((server, node))
    }

    /// The governance of an entry `by` asks for: its tenant (which must own the SPIFFE
    /// ID's path and be one `by` acts for), owner, expiry and review period, checked.
    /// `current`: the entry being updated (its tenant and owner are kept unless changed).
    pub async fn govern(
        &self,
        by: &Operator,
        spec: &EntryRequest,
        spiffe_id: &SpiffeId,
        current: Option<&Governance>,
        now: i64,
    ) -> Result<(Governance, TenantRecord), RegistrationError> {
        let all = self.tenants.all().await?;
        let named = match (spec.tenant.as_str(), current) {
            ("", Some(g)) => g.tenant.as_str(),
            (t, _) => t,
        };
        let tenant = by.tenant_for(named, spiffe_id.path(), &all)?.clone();
        if let Some(g) = current
            && g.tenant != tenant.name
            && !by.is_platform()
        {
            return Err(RegistrationError::Forbidden(
                "moving an entry to another tenant is restricted to platform operators".to_owned(),
            ));
        }
        let owner_tenant = owner_of(&all, spiffe_id.path());
        if owner_tenant.map(|t| t.name.as_str()) != Some(tenant.name.as_str()) {
            return Err(RegistrationError::OutsideTenant(format!(
                "SPIFFE ID {spiffe_id} is outside tenant {}'s path prefixes ({})",
                tenant.name,
                prefixes_text(&tenant)
            )));
        }
        let owner = match (spec.owner.as_str(), current) {
            ("", Some(g)) => g.owner.clone(),
            ("", None) => by.principal(),
            (o, _) => o.to_owned(),
        };
        if !owner.is_empty() {
            validate_owner(&owner).map_err(RegistrationError::BadGovernance)?;
        }
        if let Some(at) = spec.expires_at
            && at <= now
        {
            return Err(RegistrationError::BadGovernance(format!(
                "expires_at {at} is not in the future"
            )));
        }
        let review_every = spec.review_every.or(tenant.review_every);
        if let Some(every) = review_every
            && (every < Duration::from_secs(1) || every > MAX_REVIEW_EVERY)
        {
            return Err(RegistrationError::BadGovernance(format!(
                "review period must be between 1s and {}s",
                MAX_REVIEW_EVERY.as_secs()
            )));
        }
        let governance = Governance {
            tenant: tenant.name.clone(),
            owner,
            expires_at: spec.expires_at,
            review_every,
            certified_at: current.and_then(|g| g.certified_at),
            disabled: current.and_then(|g| g.disabled.clone()),
            template_id: current.and_then(|g| g.template_id.clone()),
        };
        Ok((governance, tenant))
    }

    /// The checks that need the datastore: DNS names under the tenant's verified domains,
    /// no registration of the same workload in another tenant, the tenant's quota.
    async fn check_placement(
        &self,
        by: &Operator,
        entry: &RegistrationEntry,
        tenant: &TenantRecord,
        is_new: bool,
    ) -> Result<(), RegistrationError> {
        let domains = self.ds.list_domains(Some(&tenant.name)).await?;
        // The default tenant holds what existed before tenants: its names are checked only
        // once it claims domains of its own.
        let exempt = tenant.name == Governance::DEFAULT_TENANT && domains.is_empty();
        if !exempt {
            for name in &entry.dns_names {
                let ok = domains
                    .iter()
                    .any(|d| d.is_verified() && dns_name_under(name, &d.domain));
                if !ok {
                    return Err(RegistrationError::UnverifiedDnsName {
                        name: name.clone(),
                        tenant: tenant.name.clone(),
                    });
                }
            }
        }
        // (A node entry names a group, not a workload: tenants may each group the same
        // nodes.)
        let elsewhere = if entry.is_node() {
            Vec::new()
        } else {
            self.ds
                .same_workload_elsewhere(&entry.parent_id, &entry.selectors, &tenant.name)
                .await?
        };
        if let Some(other) = elsewhere.iter().find(|o| o.id != entry.id) {
            return Err(RegistrationError::OtherTenant(
                if by.sees(&other.governance.tenant) {
                    format!(
                        "the same workload (parent {} and these selectors) is already registered \
                     in tenant {} (entry {})",
                        entry.parent_id, other.governance.tenant, other.id
                    )
                } else {
                    format!(
                        "the same workload (parent {} and these selectors) is already registered \
                     in another tenant",
                        entry.parent_id
                    )
                },
            ));
        }
        if let (true, Some(max)) = (is_new, tenant.max_entries) {
            let (n, _) = self.ds.tenant_counts(&tenant.name).await?;
            if n >= max {
                return Err(RegistrationError::Quota(format!(
                    "tenant {} is at its limit of {max} entries",
                    tenant.name
                )));
            }
        }
        Ok(())
    }

    /// A new entry from `spec`, governed and checked for `by` (not stored): what an entry
    /// created now would be.
    pub async fn prepare(
        &self,
        by: &Operator,
        spec: &EntryRequest,
        now: i64,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let valid = self.validate(spec)?;
        let (governance, tenant) = self.govern(by, spec, valid.spiffe_id(), None, now).await?;
        let entry = valid.new_entry(now, governance);
        self.check_placement(by, &entry, &tenant, true).await?;
        Ok(entry)
    }

    /// Creates an entry for `by`.
    pub async fn create(
        &self,
        spec: &EntryRequest,
        by: &Operator,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let _guard = self.tenants.lock.lock().await;
        let entry = self.prepare(by, spec, now_unix()).await?;
        let event = entry_event(AuditKind::EntryCreated, &entry, &by.principal());
        let _write = self.events.begin_write();
        self.ds.create_entry(&entry, &[event]).await?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, parent_id = %entry.parent_id, tenant = %entry.governance.tenant, "entry created");
        self.publish_upsert(&entry, None);
        Ok(entry)
    }

    /// Creates the entry `spec` describes as an instance of template `template_id`, through
    /// the same checks as [`Self::create`] (`by`: an operator scoped to the template's
    /// tenant), audited as `entry.provisioned` by `actor` (the asking agent).
    pub async fn provision(
        &self,
        spec: &EntryRequest,
        by: &Operator,
        template_id: &common::TemplateId,
        actor: &str,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let _guard = self.tenants.lock.lock().await;
        let mut entry = self.prepare(by, spec, now_unix()).await?;
        entry.governance.template_id = Some(template_id.clone());
        let mut event = entry_event(AuditKind::EntryProvisioned, &entry, actor);
        event.detail["template_id"] = serde_json::json!(template_id.as_str());
        let _write = self.events.begin_write();
        self.ds.create_entry(&entry, &[event]).await?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, parent_id = %entry.parent_id, template_id = %template_id, "entry provisioned");
        self.publish_upsert(&entry, None);
        Ok(entry)
    }

    /// Tells agents that `deleted` (already deleted from the datastore) are gone.
    pub fn publish_deleted(&self, deleted: &[RegistrationEntry]) {
        for entry in deleted {
            self.events.publish(ChangeEvent::EntryDeleted {
                id: entry.id.clone(),
                parent_id: entry.parent_id.clone(),
            });
        }
    }

    /// The events writer, held across a datastore write whose changes are published after.
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn publish_upsert(&self, entry: &RegistrationEntry, previous_parent: Option<SpiffeId>) {
        self.events.publish(ChangeEvent::EntryUpserted {
            entry: Arc::new(entry.clone()),
            previous_parent,
        });
    }

    /// Replaces an entry's fields, for `by`.
    pub async fn update(
        &self,
        id: &EntryId,
        spec: &EntryRequest,
        by: &Operator,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let valid = self.validate(spec)?;
        let _guard = self.tenants.lock.lock().await;
        let old = self.get(id, by).await?;
        if old.is_node() != spec.node {
            return Err(RegistrationError::BadNodeEntry(format!(
                "entry {id} is a {} entry: an entry cannot become a {} entry (delete it and \
                 create another)",
                if old.is_node() { "node" } else { "workload" },
                if spec.node { "node" } else { "workload" },
            )));
        }
        let (governance, tenant) = self
            .govern(
                by,
                spec,
                valid.spiffe_id(),
                Some(&old.governance),
                now_unix(),
            )
            .await?;
        let entry = valid.replacing(&old, governance);
        self.check_placement(by, &entry, &tenant, old.governance.tenant != tenant.name)
            .await?;
        let mut event = entry_event(AuditKind::EntryUpdated, &entry, &by.principal());
        if old.governance.owner != entry.governance.owner {
            event.detail["owner_was"] = serde_json::json!(old.governance.owner);
        }
        let _write = self.events.begin_write();
        self.ds.update_entry(&entry, &[event]).await?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, "entry updated");
        let previous_parent = (old.parent_id != entry.parent_id).then_some(old.parent_id);
        self.publish_upsert(&entry, previous_parent);
        Ok(entry)
    }

    /// Deletes an entry (`by`: who asked, checked by the caller).
    pub async fn delete(
        &self,
        id: &EntryId,
        by: &str,
    ) -> Result<RegistrationEntry, RegistrationError> {
        self.delete_as(id, by, AuditKind::EntryDeleted).await
    }

    /// Deletes an entry, audited as `kind` (`entry.deleted`, `entry.deprovisioned`).
    pub async fn delete_as(
        &self,
        id: &EntryId,
        by: &str,
        kind: AuditKind,
    ) -> Result<RegistrationEntry, RegistrationError> {
        self.remove(id, by, kind, None)
            .await?
            .ok_or_else(|| RegistrationError::NotFound(id.to_string()))
    }

    /// Deletes the template instance `id` if it is still stale at `now` (a report that its
    /// workload was seen, committed meanwhile, keeps it); `None` when nothing was deleted.
    pub async fn delete_if_stale(
        &self,
        id: &EntryId,
        now: i64,
        by: &str,
        kind: AuditKind,
    ) -> Result<Option<RegistrationEntry>, RegistrationError> {
        self.remove(id, by, kind, Some(now)).await
    }

    /// Deletes `id` (only if stale at `stale_at`, when given), records it as `kind` by
    /// `by`, and tells the agents.
    async fn remove(
        &self,
        id: &EntryId,
        by: &str,
        kind: AuditKind,
        stale_at: Option<i64>,
    ) -> Result<Option<RegistrationEntry>, RegistrationError> {
        let by = by.to_owned();
        let audit: AuditFor<RegistrationEntry> = Box::new(move |e| vec![entry_event(kind, e, &by)]);
        let _write = self.events.begin_write();
        let deleted = match stale_at {
            None => self.ds.delete_entry(id, audit).await?,
            Some(now) => self.ds.delete_stale_instance(id, now, audit).await?,
        };
        if let Some(entry) = &deleted {
            tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, "entry deleted");
            self.events.publish(ChangeEvent::EntryDeleted {
                id: entry.id.clone(),
                parent_id: entry.parent_id.clone(),
            });
        }
        Ok(deleted)
    }

    /// One entry `by` may see (another tenant's answers exactly like a missing one).
    pub async fn get(
        &self,
        id: &EntryId,
        by: &Operator,
    ) -> Result<RegistrationEntry, RegistrationError> {
        match self.ds.get_entry(id).await? {
            Some(e) if by.sees(&e.governance.tenant) => Ok(e),
            _ => Err(RegistrationError::NotFound(id.to_string())),
        }
    }

    /// Disables or re-enables an entry (`disabled: None`), recording why; agents stop (or
    /// resume) serving it. A compare-and-set on `entry`'s revision: returns the stored
    /// entry, or `None` (nothing stored, nothing audited) if the entry changed since
    /// `entry` was read or no longer exists — another server sharing the datastore may
    /// have done the same a moment earlier.
    pub async fn set_disabled(
        &self,
        entry: &RegistrationEntry,
        disabled: Option<Disabled>,
        certified_at: Option<i64>,
        kind: AuditKind,
        by: &str,
    ) -> Result<Option<RegistrationEntry>, RegistrationError> {
        let mut next = entry.clone();
        next.governance.disabled = disabled;
        if certified_at.is_some() {
            next.governance.certified_at = certified_at;
        }
        next.revision += 1;
        let _write = self.events.begin_write();
        if !self
            .ds
            .update_entry_if_unchanged(&next, &[entry_event(kind, &next, by)])
            .await?
        {
            tracing::debug!(entry_id = %next.id, kind = %kind, "entry changed meanwhile; not applied");
            return Ok(None);
        }
        tracing::info!(entry_id = %next.id, spiffe_id = %next.spiffe_id, kind = %kind, "entry {}", if next.governance.disabled.is_some() { "disabled" } else { "enabled" });
        self.publish_upsert(&next, None);
        Ok(Some(next))
    }

    /// The owner (or an operator of its tenant) re-certifies an entry: its review period
    /// starts again, and an entry disabled because its review lapsed is enabled again.
    pub async fn certify(
        &self,
        id: &EntryId,
        by: &Operator,
    ) -> Result<RegistrationEntry, RegistrationError> {
        let _guard = self.tenants.lock.lock().await;
        // A compare-and-set: when the entry changed in between (another server), read it
        // again and certify what is stored now.
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.get(id, by).await?;
            let keep = entry
                .governance
                .disabled
                .clone()
                .filter(|d| d.reason != REVIEW_LAPSED);
            if let Some(e) = self
                .set_disabled(
                    &entry,
                    keep,
                    Some(now_unix()),
                    AuditKind::EntryCertified,
                    &by.principal(),
                )
                .await?
            {
                return Ok(e);
            }
        }
        Err(RegistrationError::Datastore(DatastoreError::Conflict(
            format!("entry {id} kept changing; try again"),
        )))
    }

    /// Disables every enabled entry owned by `owner` among those `by` may see, with
    /// `reason`, as `by` (audit kind `entry.disabled`): agents drop them at once. Entries
    /// already disabled (for any reason) are left as they are. Returns the entries
    /// disabled now.
    pub async fn disable_owned(
        &self,
        owner: &str,
        reason: &str,
        by: &Operator,
    ) -> Result<Vec<RegistrationEntry>, RegistrationError> {
        let _guard = self.tenants.lock.lock().await;
        let now = now_unix();
        let mut disabled = Vec::new();
        for e in self.ds.list_entries(&EntryFilter::default()).await? {
            if e.governance.owner != owner
                || e.governance.disabled.is_some()
                || !by.sees(&e.governance.tenant)
            {
                continue;
            }
            let mut current = e;
            for _ in 0..CAS_ATTEMPTS {
                let why = Disabled {
                    at: now,
                    reason: reason.to_owned(),
                };
                if let Some(done) = self
                    .set_disabled(
                        &current,
                        Some(why),
                        None,
                        AuditKind::EntryDisabled,
                        &by.principal(),
                    )
                    .await?
                {
                    disabled.push(done);
                    break;
                }
                // Changed in between (another server): disable what is stored now, if it
                // is still this owner's and enabled.
                match self.ds.get_entry(&current.id).await? {
                    Some(now)
                        if now.governance.owner == owner && now.governance.disabled.is_none() =>
                    {
                        current = now;
                    }
                    _ => break,
                }
            }
        }
        Ok(disabled)
    }

    /// Entries matching the optional filters, among those `by` may see.
    pub async fn list(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        tenant: &str,
        by: &Operator,
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
            tenant: (!tenant.is_empty()).then(|| tenant.to_owned()),
        };
        let mut entries = self.ds.list_entries(&filter).await?;
        entries.retain(|e| by.sees(&e.governance.tenant));
        Ok(entries)
    }

    /// Disables every enabled entry whose expiry or review deadline is at or before
    /// `now`, as the server (its own schedule): agents drop it at once. Returns how many
    /// this call disabled (not those another server disabled first).
    pub async fn disable_lapsed(&self, now: i64) -> Result<usize, RegistrationError> {
        let lapsed = self.ds.lapsed_entries(now).await?;
        let mut n = 0;
        for e in &lapsed {
            let expired = e.governance.expires_at.is_some_and(|at| at <= now);
            let reason = if expired { EXPIRED } else { REVIEW_LAPSED };
            let disabled = Disabled {
                at: now,
                reason: reason.to_owned(),
            };
            // Every server sharing the datastore runs this schedule: the compare-and-set
            // lets exactly one of them disable the entry (one record, one change); the
            // others skip it, as they skip an entry changed by an operator meanwhile
            // (found again on the next round if it is still lapsed).
            if self
                .set_disabled(
                    e,
                    Some(disabled),
                    None,
                    AuditKind::EntryDisabled,
                    SERVER_ACTOR,
                )
                .await?
                .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// How often a compare-and-set an operator asked for is tried again on a changed entry.
const CAS_ATTEMPTS: usize = 5;

/// Why an entry past its expiry is disabled.
pub const EXPIRED: &str = "expired";
/// Why an entry whose review period lapsed is disabled.
pub const REVIEW_LAPSED: &str = "review lapsed";
/// How the reason of an entry disabled because its owner left begins.
pub const OFFBOARDED: &str = "owner offboarded";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;

    fn root() -> Operator {
        Operator::platform(crate::datastore::UnixUser {
            uid: 0,
            name: "root".into(),
        })
    }

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
            (
                |s| s.selectors = vec!["container:id:4c01db0b".into()],
                "container:id value must be exactly 64 lowercase hex characters",
            ),
            (
                |s| s.selectors = vec!["container:runtime:rkt".into()],
                "unknown container runtime \"rkt\"; supported runtimes: docker, containerd",
            ),
            (
                |s| s.selectors = vec!["systemd:unit:nginx".into()],
                "systemd:unit value must be a systemd unit name",
            ),
            (
                |s| s.selectors = vec!["k8s:pod-uid:POD".into()],
                "k8s:pod-uid value must be a pod UID",
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
            let err = r.create(&s, &root()).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        assert!(
            r.list("", "", "", &root()).await.unwrap().is_empty(),
            "nothing was stored"
        );

        // Every cgroup kind is accepted, through the same vocabulary the agent attests with.
        let mut cgroup = spec();
        cgroup.spiffe_id = "spiffe://example.org/container".into();
        cgroup.selectors = vec![
            format!("container:id:{}", "ab".repeat(32)),
            "container:runtime:cri-o".into(),
            "cgroup:path:/kubepods.slice/x".into(),
            "systemd:unit:app.service".into(),
            "systemd:slice:system.slice".into(),
            "k8s:pod-uid:2f1c3e0a-8b7d-4c6e-9f5a-1b2c3d4e5f60".into(),
            format!("k8s:container-id:{}", "cd".repeat(32)),
        ];
        let c = r.create(&cgroup, &root()).await.unwrap();
        assert_eq!(c.selectors.len(), 7);
        r.delete(&c.id, "user:root").await.unwrap();

        let e = r.create(&spec(), &root()).await.unwrap();
        assert_eq!(e.x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(e.governance.tenant, "default");
        assert_eq!(e.governance.owner, "user:root");
        assert!(matches!(
            r.create(&spec(), &root()).await,
            Err(RegistrationError::Duplicate(_))
        ));
        let mut s = spec();
        s.dns_names = vec!["web.example.org".into(), "*.svc.example.org".into()];
        s.x509_svid_ttl = Some(Duration::from_secs(60));
        let u = r.update(&e.id, &s, &root()).await.unwrap();
        assert_eq!(u.revision, 2);
        assert_eq!(u.x509_svid_ttl, Duration::from_secs(60));
        assert!(matches!(
            r.update(&EntryId::parse("nope").unwrap(), &s, &root())
                .await,
            Err(RegistrationError::NotFound(_))
        ));
        r.delete(&e.id, "user:root").await.unwrap();
        assert!(matches!(
            r.delete(&e.id, "user:root").await,
            Err(RegistrationError::NotFound(_))
        ));
    }

    /// Node entries take node selectors only and are parented to the server; workload
    /// entries refuse node selectors with an error naming `--node`; a refused request
    /// stores nothing; a node entry cannot become a workload entry.
    #[tokio::test]
    async fn node_entries_take_node_selectors_and_workload_entries_refuse_them() {
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
        let node = || EntryRequest {
            spiffe_id: "spiffe://example.org/group/web".into(),
            selectors: vec!["x509pop:subject:cn:web1".into()],
            node: true,
            ..Default::default()
        };
        type Case = (fn(&mut EntryRequest), &'static str);
        let cases: Vec<Case> = vec![
            (
                |s| s.selectors = vec!["unix:uid:0".into()],
                "invalid node selector \"unix:uid:0\"",
            ),
            (
                |s| s.selectors = vec!["x509pop:ca:fingerprint:AB".into()],
                "exactly 64 lowercase hex characters",
            ),
            (|s| s.selectors.clear(), "at least one selector"),
            (
                |s| s.parent_id = "spiffe://example.org/agent".into(),
                "a node entry's parent is the server",
            ),
            (
                |s| s.spiffe_id = "spiffe://example.org/tessera/agent/x509pop/ab".into(),
                "reserved for agents and servers",
            ),
            (|s| s.jit = true, "takes no --jit"),
            (
                |s| s.dns_names = vec!["web.example.org".into()],
                "takes no --jit, DNS names or hint",
            ),
        ];
        for (mutate, want) in cases {
            let mut s = node();
            mutate(&mut s);
            let err = r.create(&s, &root()).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        let mut workload = spec();
        workload.selectors = vec!["unix:uid:0".into(), "x509pop:subject:cn:web1".into()];
        let err = r.create(&workload, &root()).await.unwrap_err().to_string();
        assert!(
            err.contains("\"x509pop:subject:cn:web1\" is a node selector")
                && err.contains("--node"),
            "{err}"
        );
        assert!(
            r.list("", "", "", &root()).await.unwrap().is_empty(),
            "nothing was stored"
        );

        let mut with_server_parent = node();
        with_server_parent.parent_id = "spiffe://example.org/tessera/server".into();
        let group = r.create(&with_server_parent, &root()).await.unwrap();
        assert!(group.is_node());
        assert!(group.selectors.is_empty());
        assert_eq!(
            group.parent_id.as_str(),
            "spiffe://example.org/tessera/server"
        );
        assert_eq!(
            group.selector_strings(),
            ["x509pop:subject:cn:web1".to_owned()]
        );
        // Checked for duplicates like any entry.
        assert!(matches!(
            r.create(&node(), &root()).await,
            Err(RegistrationError::Duplicate(_))
        ));
        // A workload entry parented to the group's ID is an ordinary entry.
        let mut member = spec();
        member.parent_id = group.spiffe_id.to_string();
        assert!(!r.create(&member, &root()).await.unwrap().is_node());
        let mut become_workload = spec();
        become_workload.spiffe_id = group.spiffe_id.to_string();
        let err = r
            .update(&group.id, &become_workload, &root())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot become a workload entry"),
            "{err}"
        );
        let mut more = node();
        more.selectors
            .push("x509pop:san:dns:web1.example.org".into());
        let updated = r.update(&group.id, &more, &root()).await.unwrap();
        assert_eq!(updated.node_selectors.map(|n| n.len()), Some(2));
    }

    /// Two servers (two datastores on one database) run the lapse schedule at the same
    /// moment: each lapsed entry is disabled once, with one `entry.disabled` record.
    async fn lapsed_entries_are_disabled_once_by_two_servers(servers: [Arc<dyn Datastore>; 2]) {
        let registrar = |ds: &Arc<dyn Datastore>| {
            Registrar::new(
                Arc::clone(ds),
                Events::default(),
                TrustDomain::new("example.org").unwrap(),
                Duration::from_secs(3600),
                Duration::from_secs(300),
            )
        };
        let registrars = [registrar(&servers[0]), registrar(&servers[1])];
        let mut ids = Vec::new();
        for i in 0..10 {
            let mut s = spec();
            s.spiffe_id = format!("spiffe://example.org/lapsing/{i}");
            ids.push(registrars[0].create(&s, &root()).await.unwrap().id);
        }
        // Due in an hour; both servers look then.
        let later = now_unix() + 3600;
        for e in servers[0]
            .list_entries(&EntryFilter::default())
            .await
            .unwrap()
        {
            let mut next = e.clone();
            next.governance.expires_at = Some(later - 1);
            next.revision += 1;
            assert!(
                servers[0]
                    .update_entry_if_unchanged(&next, &[])
                    .await
                    .unwrap()
            );
        }
        let mut handles = Vec::new();
        for k in 0..4 {
            let r = registrars[k % 2].clone();
            handles.push(tokio::spawn(async move {
                r.disable_lapsed(later).await.unwrap()
            }));
        }
        let mut disabled = 0;
        for h in handles {
            disabled += h.await.unwrap();
        }
        assert_eq!(disabled, ids.len());
        for id in &ids {
            let e = servers[1].get_entry(id).await.unwrap().unwrap();
            assert_eq!(e.revision, 3, "{id}");
            assert_eq!(e.governance.disabled.unwrap().reason, EXPIRED);
        }
        let records = servers[1].list_audit(None, None).await.unwrap();
        let disables: Vec<&str> = records
            .iter()
            .filter(|r| r.event.kind == AuditKind::EntryDisabled.as_str())
            .map(|r| r.event.subject.as_str())
            .collect();
        assert_eq!(disables.len(), ids.len(), "{disables:?}");
        for id in &ids {
            assert_eq!(disables.iter().filter(|s| **s == id.as_str()).count(), 1);
        }
        assert_eq!(registrars[1].disable_lapsed(later).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lapsed_entries_are_disabled_once_by_two_servers_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite3");
        let a: Arc<dyn Datastore> = Arc::new(SqliteDatastore::open(&path).await.unwrap());
        let b: Arc<dyn Datastore> = Arc::new(SqliteDatastore::open(&path).await.unwrap());
        lapsed_entries_are_disabled_once_by_two_servers([a, b]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lapsed_entries_are_disabled_once_by_two_servers_on_postgres() {
        use crate::datastore::postgres::PostgresDatastore;
        let db = crate::datastore::testdb::Postgres::new().await;
        let a: Arc<dyn Datastore> = Arc::new(PostgresDatastore::open(&db.url).await.unwrap());
        let b: Arc<dyn Datastore> = Arc::new(PostgresDatastore::open(&db.url).await.unwrap());
        lapsed_entries_are_disabled_once_by_two_servers([a, b]).await;
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
