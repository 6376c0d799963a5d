//! Registration entries: which workloads (selectors), under which agent (parent ID), get
//! which SPIFFE ID, with which TTLs and DNS names.
//!
//! The server stores and validates entries; agents receive them over the sync stream. The
//! conversion from the wire type validates every field, so an agent never acts on a
//! malformed entry even if the wire were tampered with.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ids::{EntryId, IdError};
use crate::proto::tessera;
use crate::selector::{NodeSelector, NodeSelectorError, Selector, SelectorError, SelectorSet};
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// Server-assigned opaque identifier.
    pub id: EntryId,
    /// The identity issued to matching workloads.
    pub spiffe_id: SpiffeId,
    /// The agent (node) whose workloads may receive this identity.
    pub parent_id: SpiffeId,
    /// All of these must be among the caller's selectors.
    pub selectors: SelectorSet,
    /// Lifetime of X.509-SVIDs issued for this entry.
    pub x509_svid_ttl: Duration,
    /// Lifetime of JWT-SVIDs issued for this entry.
    pub jwt_svid_ttl: Duration,
    /// DNS SANs added to X.509-SVIDs.
    pub dns_names: Vec<String>,
    /// Dormant unless a task covering it is active.
    pub jit: bool,
    /// Optional hint passed to workloads to tell identities apart.
    pub hint: String,
    /// Unix seconds at creation.
    pub created_at: i64,
    /// Increases on every change.
    pub revision: u64,
    /// Whose it is and how long it may live (decided by the server; agents ignore it).
    pub governance: Governance,
    /// Set on a node entry (SPIRE's "node entry"): its SPIFFE ID names the group of agents
    /// whose attested node selectors include all of these (never empty), its parent is
    /// the server and `selectors` is empty. Workload entries parented to the group's ID
    /// are served by every member. `None` on workload entries.
    pub node_selectors: Option<BTreeSet<NodeSelector>>,
}

impl RegistrationEntry {
    /// Whether this is a node entry (see [`RegistrationEntry::node_selectors`]).
    pub fn is_node(&self) -> bool {
        self.node_selectors.is_some()
    }

    /// The selectors as their strings: node selectors on a node entry, else the workload
    /// selectors (sorted either way).
    pub fn selector_strings(&self) -> Vec<String> {
        match &self.node_selectors {
            Some(n) => n.iter().map(ToString::to_string).collect(),
            None => self.selectors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Who an entry belongs to and how long it may live: decided by the server when the entry
/// is created, and kept true afterwards (expiry, review, offboarding).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Governance {
    /// The tenant (organisation) that owns it: its SPIFFE ID is under one of the tenant's
    /// path prefixes.
    pub tenant: String,
    /// Who answers for it: `user:NAME` or a workload's SPIFFE ID; empty only on entries
    /// created before owners were recorded.
    pub owner: String,
    /// Unix seconds after which it is no longer issued.
    pub expires_at: Option<i64>,
    /// Its owner must re-certify it within this period, or it is disabled.
    pub review_every: Option<Duration>,
    /// Unix seconds of the last certification (`None`: never; the period runs from creation).
    pub certified_at: Option<i64>,
    /// Set while it is disabled: not issued anywhere, kept for review.
    pub disabled: Option<Disabled>,
    /// The identity template it was made from (`None`: created as an entry).
    pub template_id: Option<crate::TemplateId>,
}

/// Why and since when an entry is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// Unix seconds.
    pub at: i64,
    /// E.g. `expired`, `review lapsed`, `owner offboarded: <reason>`.
    pub reason: String,
}

impl Governance {
    /// The tenant of entries whose tenant is not stated: everything created before tenants.
    pub const DEFAULT_TENANT: &'static str = "default";

    /// Governance of an entry in `tenant`, owned by `owner`, with nothing else set.
    pub fn new(tenant: impl Into<String>, owner: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            owner: owner.into(),
            ..Self::default()
        }
    }

    /// When its review period lapses (`None` without one): from the last certification,
    /// or from `created_at` when never certified.
    pub fn review_due(&self, created_at: i64) -> Option<i64> {
        let every = i64::try_from(self.review_every?.as_secs()).unwrap_or(i64::MAX);
        Some(
            self.certified_at
                .unwrap_or(created_at)
                .saturating_add(every),
        )
    }
}

/// A wire entry that is not a valid registration entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryWireError {
    /// `spiffe_id` or `parent_id` is malformed.
    #[error("invalid SPIFFE ID in entry: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    /// A selector is malformed.
    #[error("invalid selector in entry: {0}")]
    Selector(#[from] SelectorError),
    /// A node entry's selector is not a node selector.
    #[error("invalid node selector in entry: {0}")]
    NodeSelector(#[from] NodeSelectorError),
    /// A TTL is zero or negative.
    #[error("entry TTL must be positive")]
    BadTtl,
    /// The entry's id is missing or malformed.
    #[error("invalid entry: {0}")]
    Id(#[from] IdError),
}

fn positive_secs(s: i64) -> Result<Duration, EntryWireError> {
    match u64::try_from(s) {
        Ok(v) if v > 0 => Ok(Duration::from_secs(v)),
        _ => Err(EntryWireError::BadTtl),
    }
}

impl TryFrom<tessera::Entry> for RegistrationEntry {
    type Error = EntryWireError;

    fn try_from(e: tessera::Entry) -> Result<Self, Self::Error> {
        let (selectors, node_selectors) = if e.node {
            let node = e
                .selectors
                .iter()
                .map(|s| s.parse::<NodeSelector>())
                .collect::<Result<BTreeSet<_>, _>>()?;
            (SelectorSet::new(), Some(node))
        } else {
            let selectors = e
                .selectors
                .iter()
                .map(|s| s.parse::<Selector>())
                .collect::<Result<SelectorSet, _>>()?;
            (selectors, None)
        };
        Ok(Self {
            id: EntryId::parse(e.id)?,
            spiffe_id: SpiffeId::new(&e.spiffe_id)?,
            parent_id: SpiffeId::new(&e.parent_id)?,
            selectors,
            x509_svid_ttl: positive_secs(e.x509_svid_ttl_seconds)?,
            jwt_svid_ttl: positive_secs(e.jwt_svid_ttl_seconds)?,
            dns_names: e.dns_names,
            jit: e.jit,
            hint: e.hint,
            created_at: e.created_at,
            revision: e.revision,
            governance: Governance {
                tenant: e.tenant,
                owner: e.owner,
                expires_at: (e.expires_at != 0).then_some(e.expires_at),
                review_every: u64::try_from(e.review_every_seconds)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
                certified_at: (e.certified_at != 0).then_some(e.certified_at),
                disabled: (e.disabled_at != 0).then_some(Disabled {
                    at: e.disabled_at,
                    reason: e.disabled_reason,
                }),
                template_id: if e.template_id.is_empty() {
                    None
                } else {
                    Some(crate::TemplateId::parse(e.template_id)?)
                },
            },
            node_selectors,
        })
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl From<&RegistrationEntry> for tessera::Entry {
    fn from(e: &RegistrationEntry) -> Self {
        Self {
            id: e.id.to_string(),
            spiffe_id: e.spiffe_id.to_string(),
            parent_id: e.parent_id.to_string(),
            selectors: e.selector_strings(),
            x509_svid_ttl_seconds: secs(e.x509_svid_ttl),
            jwt_svid_ttl_seconds: secs(e.jwt_svid_ttl),
            dns_names: e.dns_names.clone(),
            jit: e.jit,
            hint: e.hint.clone(),
            created_at: e.created_at,
            revision: e.revision,
            task: None,
            tasks: Vec::new(),
            tenant: e.governance.tenant.clone(),
            owner: e.governance.owner.clone(),
            expires_at: e.governance.expires_at.unwrap_or(0),
            review_every_seconds: e.governance.review_every.map_or(0, secs),
            certified_at: e.governance.certified_at.unwrap_or(0),
            disabled_at: e.governance.disabled.as_ref().map_or(0, |d| d.at),
            disabled_reason: e
                .governance
                .disabled
                .as_ref()
                .map(|d| d.reason.clone())
                .unwrap_or_default(),
            template_id: e
                .governance
                .template_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            node: e.is_node(),
        }
    }
}

impl TryFrom<tessera::TaskGrant> for crate::task::TaskGrant {
    type Error = crate::task::BindingError;

    fn try_from(g: tessera::TaskGrant) -> Result<Self, Self::Error> {
        Ok(Self {
            task_id: crate::ids::TaskId::parse(g.task_id)?,
            deadline: g.deadline,
            audiences: g.audiences,
            binding: g
                .binding
                .map(crate::task::TaskBinding::try_from)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

impl From<&crate::task::TaskGrant> for tessera::TaskGrant {
    fn from(g: &crate::task::TaskGrant) -> Self {
        Self {
            task_id: g.task_id.to_string(),
            deadline: g.deadline,
            audiences: g.audiences.clone(),
            binding: Some((&g.binding).into()),
        }
    }
}

impl TryFrom<tessera::TaskBinding> for crate::task::TaskBinding {
    type Error = crate::task::BindingError;

    /// A complete binding: `process` and `tree` name a pid and the agent; an empty kind is
    /// `selectors` (peers from before bindings existed).
    fn try_from(b: tessera::TaskBinding) -> Result<Self, Self::Error> {
        use crate::task::{BindKind, BindingError, Holder, ProcessInstance};
        let kind = if b.kind.is_empty() {
            BindKind::Selectors
        } else {
            b.kind.parse::<BindKind>()?
        };
        let holder = || -> Result<Holder, BindingError> {
            if b.pid == 0 {
                return Err(BindingError::NoPid(kind));
            }
            Ok(Holder {
                process: ProcessInstance {
                    pid: b.pid,
                    start_time: b.start_time,
                },
                agent: SpiffeId::new(&b.agent_id)
                    .map_err(|e| BindingError::Agent(e.to_string()))?,
            })
        };
        Ok(match kind {
            BindKind::Selectors => Self::Selectors,
            BindKind::Process => Self::Process(holder()?),
            BindKind::Tree => Self::Tree(holder()?),
        })
    }
}

impl From<&crate::task::TaskBinding> for tessera::TaskBinding {
    fn from(b: &crate::task::TaskBinding) -> Self {
        let holder = b.holder();
        Self {
            kind: b.kind().as_str().to_owned(),
            pid: holder.map_or(0, |h| h.process.pid),
            start_time: holder.map_or(0, |h| h.process.start_time),
            agent_id: holder.map(|h| h.agent.to_string()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_and_rejections() {
        let wire = tessera::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/agent/a".into(),
            selectors: vec!["unix:uid:1000".into()],
            x509_svid_ttl_seconds: 3600,
            jwt_svid_ttl_seconds: 300,
            dns_names: vec!["web.example.org".into()],
            jit: false,
            hint: String::new(),
            created_at: 1,
            revision: 2,
            task: None,
            tasks: Vec::new(),
            tenant: "acme".into(),
            owner: "user:alice".into(),
            expires_at: 1_900_000_000,
            review_every_seconds: 86_400,
            certified_at: 5,
            disabled_at: 7,
            disabled_reason: "review lapsed".into(),
            template_id: "t1".into(),
            node: false,
        };
        let entry = RegistrationEntry::try_from(wire.clone()).unwrap();
        assert_eq!(entry.governance.template_id.as_ref().unwrap(), "t1");
        assert_eq!(tessera::Entry::from(&entry), wire);

        // A node entry carries node selectors, which a workload entry refuses.
        let mut node = wire.clone();
        node.node = true;
        node.selectors = vec!["x509pop:subject:cn:web1".into()];
        let group = RegistrationEntry::try_from(node.clone()).unwrap();
        assert!(group.is_node() && group.selectors.is_empty());
        assert_eq!(tessera::Entry::from(&group), node);
        let mut bad = node.clone();
        bad.selectors = vec!["unix:uid:1000".into()];
        assert!(matches!(
            RegistrationEntry::try_from(bad),
            Err(EntryWireError::NodeSelector(_))
        ));
        let mut bad = node;
        bad.node = false;
        assert!(matches!(
            RegistrationEntry::try_from(bad),
            Err(EntryWireError::Selector(_))
        ));

        let mut bad = wire.clone();
        bad.spiffe_id = "spiffe://example.org/".into();
        assert!(matches!(
            RegistrationEntry::try_from(bad),
            Err(EntryWireError::SpiffeId(_))
        ));
        let mut bad = wire.clone();
        bad.selectors = vec!["nocolon".into()];
        assert!(matches!(
            RegistrationEntry::try_from(bad),
            Err(EntryWireError::Selector(_))
        ));
        let mut bad = wire.clone();
        bad.x509_svid_ttl_seconds = 0;
        assert_eq!(
            RegistrationEntry::try_from(bad),
            Err(EntryWireError::BadTtl)
        );
        let mut bad = wire;
        bad.id.clear();
        assert_eq!(
            RegistrationEntry::try_from(bad),
            Err(EntryWireError::Id(IdError::Empty { kind: "entry" }))
        );
    }
}
