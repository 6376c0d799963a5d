//! What the agent keeps of a registration entry.
//!
//! The server's entry carries what only the server acts on: the parent (the sync already
//! chose this agent's entries), the TTLs and DNS names (the server puts them in the SVID
//! it signs, whatever the CSR says), and governance (owner, tenant, expiry, review: the
//! server stops syncing an entry it no longer issues). The agent matches callers against
//! the selectors and serves the identity, so it keeps only those facts, in one shared
//! allocation: every task slot of an entry, and every copy of the cache a change makes,
//! points at the same [`AgentEntry`]. At 10,000 entries, keeping the full entry instead
//! cost about 0.5 KB per SVID (1.7 KB of cache structures against 1.2 KB).

use common::entry::EntryWireError;
use common::proto::tessera;
use common::{EntryId, Selector, SelectorSet, SpiffeId, TemplateId};

/// A registration entry as the agent keeps it (see the module docs for what is left out
/// and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    /// Server-assigned opaque identifier.
    pub id: EntryId,
    /// The identity served to matching workloads.
    pub spiffe_id: SpiffeId,
    /// All of these must be among the caller's selectors. Empty (matching nobody) on a
    /// node entry, whose selectors are the node's, never a workload's.
    pub selectors: SelectorSet,
    /// Dormant unless a task covering it is active.
    pub jit: bool,
    /// Optional hint passed to workloads to tell identities apart.
    pub hint: Box<str>,
    /// Unix seconds at creation (orders a caller's identities: the oldest is the default).
    pub created_at: i64,
    /// Increases on every change.
    pub revision: u64,
    /// The template the entry was made from, if any (its instances are reported live).
    pub template_id: Option<TemplateId>,
    /// Whether this is a node entry (kept so that the cache file says so).
    pub node: bool,
}

impl TryFrom<tessera::Entry> for AgentEntry {
    type Error = EntryWireError;

    /// Checks what the agent keeps exactly as [`common::RegistrationEntry`] does; the rest
    /// of the wire entry is dropped unread, a node entry's selectors included (the agent
    /// never matches a caller against them).
    fn try_from(e: tessera::Entry) -> Result<Self, Self::Error> {
        let selectors = if e.node {
            SelectorSet::new()
        } else {
            e.selectors
                .iter()
                .map(|s| s.parse::<Selector>())
                .collect::<Result<SelectorSet, _>>()?
        };
        Ok(Self {
            id: EntryId::parse(e.id)?,
            spiffe_id: SpiffeId::new(&e.spiffe_id)?,
            selectors,
            jit: e.jit,
            hint: e.hint.into_boxed_str(),
            created_at: e.created_at,
            revision: e.revision,
            template_id: if e.template_id.is_empty() {
                None
            } else {
                Some(TemplateId::parse(e.template_id)?)
            },
            node: e.node,
        })
    }
}

impl From<&AgentEntry> for tessera::Entry {
    /// The entry as the cache file holds it: the kept fields; the others empty.
    fn from(e: &AgentEntry) -> Self {
        Self {
            id: e.id.to_string(),
            spiffe_id: e.spiffe_id.to_string(),
            selectors: e.selectors.iter().map(ToString::to_string).collect(),
            jit: e.jit,
            hint: e.hint.to_string(),
            created_at: e.created_at,
            revision: e.revision,
            template_id: e
                .template_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            node: e.node,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> tessera::Entry {
        tessera::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec!["unix:uid:1000".into(), "unix:gid:5".into()],
            x509_svid_ttl_seconds: 3600,
            jwt_svid_ttl_seconds: 300,
            dns_names: vec!["web.internal".into()],
            jit: true,
            hint: "frontend".into(),
            created_at: 17,
            revision: 4,
            tenant: "acme".into(),
            owner: "user:alice".into(),
            template_id: "t1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_kept_fields_round_trip_through_the_cache_file_form() {
        let kept = AgentEntry::try_from(wire()).unwrap();
        assert_eq!(kept.id.as_str(), "e1");
        assert_eq!(kept.spiffe_id.as_str(), "spiffe://example.org/web");
        assert_eq!(kept.selectors.len(), 2);
        assert!(kept.jit);
        assert_eq!(&*kept.hint, "frontend");
        assert_eq!((kept.created_at, kept.revision), (17, 4));
        assert_eq!(kept.template_id.as_ref().unwrap().as_str(), "t1");
        let back = tessera::Entry::from(&kept);
        // What only the server acts on is not kept.
        assert!(back.parent_id.is_empty() && back.dns_names.is_empty() && back.owner.is_empty());
        assert_eq!(AgentEntry::try_from(back).unwrap(), kept);
    }

    #[test]
    fn what_the_agent_keeps_is_checked_as_the_full_entry_checks_it() {
        for bad in [
            tessera::Entry {
                id: String::new(),
                ..wire()
            },
            tessera::Entry {
                spiffe_id: "spiffe://example.org/../x".into(),
                ..wire()
            },
            tessera::Entry {
                selectors: vec!["uid:1000".into()],
                ..wire()
            },
            tessera::Entry {
                template_id: "bad id".into(),
                ..wire()
            },
        ] {
            let full = common::RegistrationEntry::try_from(bad.clone()).map(|_| ());
            let kept = AgentEntry::try_from(bad).map(|_| ());
            assert!(kept.is_err(), "accepted");
            assert_eq!(kept, full);
        }
    }

    #[test]
    fn a_node_entry_matches_no_caller() {
        let node = AgentEntry::try_from(tessera::Entry {
            node: true,
            selectors: vec!["join_token:abc".into()],
            ..wire()
        })
        .unwrap();
        assert!(node.node && node.selectors.is_empty());
        let caller: SelectorSet = ["unix:uid:1000".parse::<Selector>().unwrap()]
            .into_iter()
            .collect();
        assert!(!node.selectors.entry_matches(&caller));
    }
}
