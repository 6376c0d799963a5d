//! Entry usage, for the access review: when an SVID was last issued for each entry, and
//! when it was last used.
//!
//! The server counts what it issues itself (see `issuance`). Use happens on the nodes:
//! each agent counts, per entry, the X.509-SVID messages and JWT-SVIDs its Workload API
//! delivered and the JWT-SVIDs of the entry's SPIFFE ID it validated, and reports them in
//! batches (`ReportUsage` on the node API). [`record_report`] decides what of a batch is
//! stored: only items for entries parented to the reporting agent (an agent cannot vouch
//! for another node's workloads), with last-use times no later than the server's clock.
//!
//! The gRPC handler (`api/node.rs`) authenticates the agent and converts wire messages.

use std::collections::HashSet;

use common::{EntryId, SpiffeId};

use crate::datastore::{Datastore, DatastoreError, EntryFilter, UsageReport};
use crate::node_groups::ActingFor;

/// Most items one usage report may carry.
pub const MAX_USAGE_ITEMS: usize = 10_000;

/// Why a whole usage report was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// More items than one report may carry.
    #[error("a usage report carries at most {MAX_USAGE_ITEMS} items, this one {0}")]
    TooManyItems(usize),
    /// An item's last use is not a time after the Unix epoch.
    #[error("entry {entry_id}: last_used_at {at} is not a Unix time")]
    BadTime {
        /// The item's entry.
        entry_id: EntryId,
        /// The time reported.
        at: i64,
    },
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// One entry's use on the reporting agent, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedUse {
    /// The entry.
    pub entry_id: EntryId,
    /// X.509-SVID messages and JWT-SVIDs delivered.
    pub deliveries: u64,
    /// JWT-SVIDs of the entry's SPIFFE ID validated.
    pub validations: u64,
    /// When it was last used (Unix seconds).
    pub last_used_at: i64,
}

/// What became of a usage report's items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportOutcome {
    /// Items stored (or with nothing to store: no use counted).
    pub accepted: u32,
    /// Items whose entry is unknown or not parented to the reporting agent.
    pub ignored: u32,
}

/// Stores the items of `agent`'s report that are about its own entries, in one
/// transaction; `now` (Unix seconds) bounds the last-use times (an agent's clock ahead of
/// the server's does not put a use in the future). Refuses a report of more than
/// [`MAX_USAGE_ITEMS`] items or with a time before the epoch, storing nothing.
pub async fn record_report(
    ds: &dyn Datastore,
    agent: &SpiffeId,
    items: Vec<ReportedUse>,
    now: i64,
) -> Result<ReportOutcome, UsageError> {
    record_report_for(ds, &ActingFor::alone(agent.clone()), items, now).await
}

/// [`record_report`] for an agent that acts for node groups too: the items about entries
/// parented to its own ID or to one of its groups are stored (under its own ID).
pub async fn record_report_for(
    ds: &dyn Datastore,
    acting: &ActingFor,
    items: Vec<ReportedUse>,
    now: i64,
) -> Result<ReportOutcome, UsageError> {
    let agent = acting.own();
    if items.len() > MAX_USAGE_ITEMS {
        return Err(UsageError::TooManyItems(items.len()));
    }
    if let Some(bad) = items.iter().find(|i| i.last_used_at <= 0) {
        return Err(UsageError::BadTime {
            entry_id: bad.entry_id.clone(),
            at: bad.last_used_at,
        });
    }
    if items.is_empty() {
        return Ok(ReportOutcome::default());
    }
    let mut own: HashSet<EntryId> = HashSet::new();
    for parent in acting.all() {
        let filter = EntryFilter {
            parent_id: Some(parent.clone()),
            ..Default::default()
        };
        own.extend(ds.list_entries(&filter).await?.into_iter().map(|e| e.id));
    }
    let mut outcome = ReportOutcome::default();
    let mut reports = Vec::with_capacity(items.len());
    for item in items {
        if !own.contains(&item.entry_id) {
            outcome.ignored = outcome.ignored.saturating_add(1);
            continue;
        }
        outcome.accepted = outcome.accepted.saturating_add(1);
        if item.deliveries == 0 && item.validations == 0 {
            continue;
        }
        reports.push(UsageReport {
            entry_id: item.entry_id,
            agent_id: agent.clone(),
            deliveries: item.deliveries,
            validations: item.validations,
            last_used_at: item.last_used_at.min(now),
        });
    }
    ds.record_usage(&reports).await?;
    if outcome.ignored > 0 {
        tracing::info!(
            agent_id = %agent,
            ignored = outcome.ignored,
            "usage reported for entries not parented to the agent was ignored"
        );
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::{RegistrationEntry, Selector, SelectorSet};

    use super::*;
    use crate::datastore::EntryUsage;
    use crate::datastore::sqlite::SqliteDatastore;

    fn sid(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn eid(s: &str) -> EntryId {
        EntryId::parse(s).unwrap()
    }

    fn entry(id: &str, parent: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: eid(id),
            spiffe_id: sid(&format!("spiffe://example.org/{id}")),
            parent_id: sid(parent),
            selectors: ["unix:uid:1"]
                .iter()
                .map(|s| s.parse::<Selector>().unwrap())
                .collect::<SelectorSet>(),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            dns_names: Vec::new(),
            jit: false,
            hint: String::new(),
            created_at: 1,
            revision: 1,
            governance: common::entry::Governance::new("default", "user:root"),
            node_selectors: None,
        }
    }

    fn used(id: &str, deliveries: u64, validations: u64, at: i64) -> ReportedUse {
        ReportedUse {
            entry_id: eid(id),
            deliveries,
            validations,
            last_used_at: at,
        }
    }

    const A: &str = "spiffe://example.org/node/a";
    const B: &str = "spiffe://example.org/node/b";

    async fn store() -> (tempfile::TempDir, SqliteDatastore) {
        let dir = tempfile::tempdir().unwrap();
        let ds = SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap();
        ds.create_entry(&entry("mine", A), &[]).await.unwrap();
        ds.create_entry(&entry("mine2", A), &[]).await.unwrap();
        ds.create_entry(&entry("theirs", B), &[]).await.unwrap();
        (dir, ds)
    }

    #[tokio::test]
    async fn only_the_agents_own_entries_are_stored() {
        let (_dir, ds) = store().await;
        let outcome = record_report(
            &ds,
            &sid(A),
            vec![
                used("mine", 2, 1, 900),
                used("theirs", 5, 5, 900),
                used("unknown", 1, 0, 900),
                // Counted as accepted, nothing to store.
                used("mine2", 0, 0, 900),
                // A time ahead of the server's clock is cut to it.
                used("mine", 1, 0, 5000),
            ],
            1000,
        )
        .await
        .unwrap();
        assert_eq!(
            outcome,
            ReportOutcome {
                accepted: 3,
                ignored: 2
            }
        );
        assert_eq!(
            ds.entry_usage(None).await.unwrap(),
            [EntryUsage {
                entry_id: eid("mine"),
                issued: 0,
                last_issued_at: None,
                deliveries: 3,
                validations: 1,
                last_used_at: Some(1000),
            }]
        );
    }

    /// An agent in a node group records the use of the group's entries (under its own
    /// ID); alone, it may not.
    #[tokio::test]
    async fn a_node_groups_entries_count_for_its_members() {
        let (_dir, ds) = store().await;
        const GROUP: &str = "spiffe://example.org/group/web";
        ds.create_entry(&entry("grouped", GROUP), &[])
            .await
            .unwrap();
        let report = || vec![used("grouped", 1, 0, 900), used("mine", 1, 0, 900)];
        let alone = record_report(&ds, &sid(A), report(), 1000).await.unwrap();
        assert_eq!((alone.accepted, alone.ignored), (1, 1));
        let member = ActingFor::with_groups(sid(A), [sid(GROUP)]);
        let outcome = record_report_for(&ds, &member, report(), 1000)
            .await
            .unwrap();
        assert_eq!((outcome.accepted, outcome.ignored), (2, 0));
        let grouped = ds
            .entry_usage(None)
            .await
            .unwrap()
            .into_iter()
            .find(|u| u.entry_id.as_str() == "grouped")
            .expect("the group entry's use is recorded");
        assert_eq!(grouped.deliveries, 1);
    }

    #[tokio::test]
    async fn oversized_and_malformed_reports_store_nothing() {
        let (_dir, ds) = store().await;
        let too_many = vec![used("mine", 1, 0, 10); MAX_USAGE_ITEMS + 1];
        let err = record_report(&ds, &sid(A), too_many, 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, UsageError::TooManyItems(n) if n == MAX_USAGE_ITEMS + 1));
        let full = vec![used("mine", 1, 0, 10); MAX_USAGE_ITEMS];
        let outcome = record_report(&ds, &sid(A), full, 1000).await.unwrap();
        assert_eq!(outcome.accepted as usize, MAX_USAGE_ITEMS);
        let err = record_report(
            &ds,
            &sid(A),
            vec![used("mine", 1, 0, 10), used("mine2", 1, 0, 0)],
            1000,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, UsageError::BadTime { entry_id, at: 0 } if entry_id.as_str() == "mine2"),
            "{err}"
        );
        let usage = ds.entry_usage(None).await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].deliveries, MAX_USAGE_ITEMS as u64);
        assert_eq!(
            record_report(&ds, &sid(B), Vec::new(), 1000).await.unwrap(),
            ReportOutcome::default()
        );
    }
}
