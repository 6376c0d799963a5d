//! Node groups (SPIRE's "node entries"): which agents a node entry groups, and so which
//! SPIFFE IDs an agent acts for.
//!
//! A node entry is parented to the server and carries node selectors (`x509pop:...`); its
//! SPIFFE ID names the group of agents whose stored node selectors (written at each
//! attestation, see `node_attestation.rs`) include all of them. An agent acts for its own
//! ID and for the ID of every enabled node entry it is a member of: it receives the
//! workload entries parented to any of them (`api/node.rs`, sync) and gets SVIDs signed
//! for them (`issuance.rs`). A node entry without selectors groups nobody, and an agent
//! without node selectors (join token) is in no group.

use std::collections::BTreeSet;

use common::{NodeSelector, RegistrationEntry, SpiffeId, TrustDomain};

use crate::clock::now_unix;
use crate::datastore::{AgentRecord, Datastore, DatastoreError, EntryFilter};

/// Whether an agent with node selectors `agent` is a member of `entry`: a node entry,
/// enabled and not expired at `now`, whose selectors (never none) are all among the
/// agent's.
pub fn is_member(agent: &BTreeSet<NodeSelector>, entry: &RegistrationEntry, now: i64) -> bool {
    let Some(wanted) = &entry.node_selectors else {
        return false;
    };
    !wanted.is_empty()
        && entry.governance.disabled.is_none()
        && entry.governance.expires_at.is_none_or(|at| at > now)
        && wanted.is_subset(agent)
}

/// The SPIFFE IDs an agent acts for: its own, then its groups' (sorted, each once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingFor {
    own: SpiffeId,
    groups: BTreeSet<SpiffeId>,
}

impl ActingFor {
    /// An agent in no group.
    pub fn alone(own: SpiffeId) -> Self {
        Self {
            own,
            groups: BTreeSet::new(),
        }
    }

    /// An agent acting for `own` and the groups `groups` (membership decided by the
    /// caller).
    pub fn with_groups(own: SpiffeId, groups: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            own,
            groups: groups.into_iter().collect(),
        }
    }

    /// `agent`'s IDs given every node entry (others in `entries` are ignored).
    pub fn of(agent: &AgentRecord, entries: &[RegistrationEntry], now: i64) -> Self {
        Self {
            own: agent.spiffe_id.clone(),
            groups: entries
                .iter()
                .filter(|e| is_member(&agent.selectors, e, now))
                .map(|e| e.spiffe_id.clone())
                .collect(),
        }
    }

    /// Whether an entry parented to `parent` is the agent's.
    pub fn includes(&self, parent: &SpiffeId) -> bool {
        parent == &self.own || self.groups.contains(parent)
    }

    /// The agent's own ID.
    pub fn own(&self) -> &SpiffeId {
        &self.own
    }

    /// The groups' IDs.
    pub fn groups(&self) -> impl Iterator<Item = &SpiffeId> {
        self.groups.iter()
    }

    /// Every ID, own first.
    pub fn all(&self) -> impl Iterator<Item = &SpiffeId> {
        std::iter::once(&self.own).chain(self.groups.iter())
    }
}

/// The server's ID in `td`: every node entry's parent.
fn server_of(td: &TrustDomain) -> Result<SpiffeId, DatastoreError> {
    crate::server_identity::server_id(td)
        .map_err(|e| DatastoreError::Backend(format!("server ID: {e}")))
}

/// Every node entry of the trust domain `td` (they are parented to the server).
pub async fn node_entries(
    ds: &dyn Datastore,
    td: &TrustDomain,
) -> Result<Vec<RegistrationEntry>, DatastoreError> {
    let filter = EntryFilter {
        parent_id: Some(server_of(td)?),
        ..Default::default()
    };
    let mut entries = ds.list_entries(&filter).await?;
    entries.retain(RegistrationEntry::is_node);
    Ok(entries)
}

/// What `agent` acts for now (groups of its trust domain). An agent without node
/// selectors costs no query.
pub async fn acting_for(
    ds: &dyn Datastore,
    agent: &AgentRecord,
) -> Result<ActingFor, DatastoreError> {
    if agent.selectors.is_empty() {
        return Ok(ActingFor::alone(agent.spiffe_id.clone()));
    }
    let entries = node_entries(ds, &agent.spiffe_id.trust_domain()).await?;
    Ok(ActingFor::of(agent, &entries, now_unix()))
}

/// Whether `agent` (its SPIFFE ID) is a member of a node entry named `group`: one query for
/// the agent record, one for the node entries with that ID.
pub async fn is_member_of(
    ds: &dyn Datastore,
    agent: &SpiffeId,
    group: &SpiffeId,
) -> Result<bool, DatastoreError> {
    let Some(record) = ds.get_agent(agent).await? else {
        return Ok(false);
    };
    if record.selectors.is_empty() || record.banned {
        return Ok(false);
    }
    let filter = EntryFilter {
        spiffe_id: Some(group.clone()),
        parent_id: Some(server_of(&agent.trust_domain())?),
        ..Default::default()
    };
    let now = now_unix();
    Ok(ds
        .list_entries(&filter)
        .await?
        .iter()
        .any(|e| is_member(&record.selectors, e, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::entry::{Disabled, Governance};

    fn sel(s: &str) -> NodeSelector {
        s.parse().unwrap()
    }

    fn agent(selectors: &[&str]) -> AgentRecord {
        AgentRecord {
            spiffe_id: SpiffeId::new("spiffe://example.org/tessera/agent/x509pop/a").unwrap(),
            serial: "01".into(),
            previous_serial: None,
            expires_at: 2_000_000_000,
            attested_at: 1_700_000_000,
            banned: false,
            attestation_type: if selectors.is_empty() {
                "join_token".into()
            } else {
                "x509pop".into()
            },
            selectors: selectors.iter().map(|s| sel(s)).collect(),
        }
    }

    fn node_entry(group: &str, selectors: &[&str]) -> RegistrationEntry {
        RegistrationEntry {
            id: common::EntryId::generate(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/group/{group}")).unwrap(),
            parent_id: SpiffeId::new("spiffe://example.org/tessera/server").unwrap(),
            selectors: common::SelectorSet::new(),
            x509_svid_ttl: std::time::Duration::from_secs(3600),
            jwt_svid_ttl: std::time::Duration::from_secs(300),
            dns_names: Vec::new(),
            jit: false,
            hint: String::new(),
            created_at: 1,
            revision: 1,
            governance: Governance::new("default", "user:root"),
            node_selectors: Some(selectors.iter().map(|s| sel(s)).collect()),
        }
    }

    const NOW: i64 = 1_800_000_000;
    const WEB1: &str = "x509pop:subject:cn:web1";
    const DNS: &str = "x509pop:san:dns:web1.example.org";

    #[test]
    fn an_agent_is_a_member_when_its_selectors_include_all_of_the_node_entrys() {
        let a = agent(&[WEB1, DNS]);
        assert!(is_member(&a.selectors, &node_entry("one", &[WEB1]), NOW));
        assert!(is_member(
            &a.selectors,
            &node_entry("both", &[WEB1, DNS]),
            NOW
        ));
        // One selector the agent lacks is enough to leave it out.
        let cn2 = "x509pop:subject:cn:web2";
        assert!(!is_member(&a.selectors, &node_entry("other", &[cn2]), NOW));
        assert!(!is_member(
            &a.selectors,
            &node_entry("more", &[WEB1, cn2]),
            NOW
        ));
        // The superset rule is not a prefix or substring rule.
        assert!(!is_member(
            &a.selectors,
            &node_entry("prefix", &["x509pop:subject:cn:web"]),
            NOW
        ));
    }

    #[test]
    fn empty_disabled_expired_and_workload_entries_group_nobody() {
        let a = agent(&[WEB1]);
        assert!(!is_member(&a.selectors, &node_entry("empty", &[]), NOW));
        let mut disabled = node_entry("off", &[WEB1]);
        disabled.governance.disabled = Some(Disabled {
            at: 1,
            reason: "expired".into(),
        });
        assert!(!is_member(&a.selectors, &disabled, NOW));
        let mut expired = node_entry("gone", &[WEB1]);
        expired.governance.expires_at = Some(NOW);
        assert!(!is_member(&a.selectors, &expired, NOW));
        let mut workload = node_entry("workload", &[WEB1]);
        workload.node_selectors = None;
        assert!(!is_member(&a.selectors, &workload, NOW));
    }

    #[test]
    fn a_join_token_agent_matches_nothing_and_acts_only_for_itself() {
        let a = agent(&[]);
        let entries = [node_entry("empty", &[]), node_entry("web", &[WEB1])];
        let acting = ActingFor::of(&a, &entries, NOW);
        assert_eq!(acting, ActingFor::alone(a.spiffe_id.clone()));
        assert!(acting.includes(&a.spiffe_id));
        assert!(!acting.includes(&entries[1].spiffe_id));
    }

    #[test]
    fn an_agent_acts_for_itself_and_each_group_it_is_in() {
        let a = agent(&[WEB1, DNS]);
        let entries = [
            node_entry("web", &[WEB1]),
            node_entry("dns", &[DNS]),
            node_entry("db", &["x509pop:subject:cn:db1"]),
        ];
        let acting = ActingFor::of(&a, &entries, NOW);
        let all: Vec<_> = acting.all().map(SpiffeId::as_str).collect();
        assert_eq!(
            all,
            [
                "spiffe://example.org/tessera/agent/x509pop/a",
                "spiffe://example.org/group/dns",
                "spiffe://example.org/group/web",
            ]
        );
        assert!(acting.includes(&a.spiffe_id));
        assert!(acting.includes(&entries[0].spiffe_id) && acting.includes(&entries[1].spiffe_id));
        assert!(!acting.includes(&entries[2].spiffe_id));
    }
}
