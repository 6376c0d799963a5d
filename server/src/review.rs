//! Access review: every identity with who owns it, why it still exists and what is wrong
//! with it.
//!
//! [`review`] is a pure function of what the datastore holds (entries, open tasks, usage,
//! domains) and the time, so every flag is tested without a server: the admin API gathers
//! the inputs for the tenants the caller may see and renders the items.

use std::collections::HashMap;
use std::time::Duration;

use common::entry::Governance;
use common::{EntryId, RegistrationEntry, TaskId};

use crate::datastore::{DomainRecord, EntryUsage, TaskRecord};
use crate::registration::dns_name_under;

/// Why an identity needs someone's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// Nobody answers for it.
    NoOwner,
    /// Past its expiry.
    Expired,
    /// Its review period lapsed without a certification.
    ReviewLapsed,
    /// Not used (delivered or validated) within the staleness window, or never.
    Stale,
    /// A just-in-time entry nobody used within its review period.
    Dormant,
    /// Its selector set overlaps another entry's of the same tenant and parent: one
    /// workload may receive both.
    OverlappingSelectors,
    /// It carries a DNS name not under a domain its tenant has verified (now).
    UnverifiedDnsName,
    /// Its owner was offboarded.
    OwnerOffboarded,
    /// Not issued anywhere (for another reason than the flags above).
    Disabled,
    /// A break-glass task under it (open or ended) awaits its after-the-fact review.
    BreakGlassUnreviewed,
}

impl Flag {
    /// The name reports use, e.g. `no_owner`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoOwner => "no_owner",
            Self::Expired => "expired",
            Self::ReviewLapsed => "review_lapsed",
            Self::Stale => "stale",
            Self::Dormant => "dormant",
            Self::OverlappingSelectors => "overlapping_selectors",
            Self::UnverifiedDnsName => "unverified_dns_name",
            Self::OwnerOffboarded => "owner_offboarded",
            Self::Disabled => "disabled",
            Self::BreakGlassUnreviewed => "break_glass_unreviewed",
        }
    }
}

/// One identity in the review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewItem {
    /// The entry.
    pub entry: RegistrationEntry,
    /// When the server last issued an SVID for it.
    pub last_issued_at: Option<i64>,
    /// When an agent last reported it delivered or validated.
    pub last_used_at: Option<i64>,
    /// Its open tasks (pending or active).
    pub open_tasks: Vec<TaskId>,
    /// Entries of the same tenant and parent whose selector sets overlap its own.
    pub overlaps: Vec<EntryId>,
    /// Its DNS names that no verified domain of its tenant covers now.
    pub unverified_dns_names: Vec<String>,
    /// Its break-glass tasks nobody has acknowledged yet.
    pub break_glass_tasks: Vec<TaskId>,
    /// What needs attention, sorted.
    pub flags: Vec<Flag>,
}

/// What a review looks at.
#[derive(Debug, Clone, Copy)]
pub struct ReviewInput<'a> {
    /// The entries to review.
    pub entries: &'a [RegistrationEntry],
    /// Open tasks, and break-glass tasks awaiting review (others are ignored).
    pub tasks: &'a [TaskRecord],
    /// Usage per entry.
    pub usage: &'a [EntryUsage],
    /// Claimed domains of the entries' tenants.
    pub domains: &'a [DomainRecord],
    /// Now (Unix seconds).
    pub now: i64,
    /// An identity not used for this long is stale.
    pub stale_after: Duration,
}

/// Whether one selector set overlaps another: a workload matching the larger also matches
/// the smaller, so it would receive both identities. (Node entries select agents, not
/// workloads: they overlap nothing.)
fn overlap(a: &RegistrationEntry, b: &RegistrationEntry) -> bool {
    a.parent_id == b.parent_id
        && !a.is_node()
        && !b.is_node()
        && (a.selectors.is_subset_of(&b.selectors) || b.selectors.is_subset_of(&a.selectors))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The break-glass tasks among `tasks` that nobody has acknowledged yet, open or ended
/// (a provisioned one's entry is gone, so the review lists them beside the entries).
pub fn unreviewed_break_glass(tasks: &[TaskRecord]) -> impl Iterator<Item = &TaskRecord> {
    tasks.iter().filter(|t| t.awaits_review())
}

/// The review of `input.entries`, in their order.
pub fn review(input: &ReviewInput<'_>) -> Vec<ReviewItem> {
    let usage: HashMap<&EntryId, &EntryUsage> =
        input.usage.iter().map(|u| (&u.entry_id, u)).collect();
    let mut tasks: HashMap<&EntryId, Vec<TaskId>> = HashMap::new();
    for t in input.tasks.iter().filter(|t| t.state.is_open()) {
        tasks.entry(&t.entry_id).or_default().push(t.id.clone());
    }
    let mut break_glass: HashMap<&EntryId, Vec<TaskId>> = HashMap::new();
    for t in unreviewed_break_glass(input.tasks) {
        break_glass
            .entry(&t.entry_id)
            .or_default()
            .push(t.id.clone());
    }
    input
        .entries
        .iter()
        .map(|e| {
            let g = &e.governance;
            let used = usage.get(&e.id);
            let last_used_at = used.and_then(|u| u.last_used_at);
            let last_issued_at = used.and_then(|u| u.last_issued_at);
            let overlaps: Vec<EntryId> = input
                .entries
                .iter()
                .filter(|o| o.id != e.id && o.governance.tenant == g.tenant && overlap(e, o))
                .map(|o| o.id.clone())
                .collect();
            let domains: Vec<&DomainRecord> = input
                .domains
                .iter()
                .filter(|d| d.tenant == g.tenant)
                .collect();
            let exempt = g.tenant == Governance::DEFAULT_TENANT && domains.is_empty();
            let unverified_dns_names: Vec<String> = if exempt {
                Vec::new()
            } else {
                e.dns_names
                    .iter()
                    .filter(|n| {
                        !domains
                            .iter()
                            .any(|d| d.is_verified() && dns_name_under(n, &d.domain))
                    })
                    .cloned()
                    .collect()
            };
            let mut flags = Vec::new();
            if g.owner.is_empty() {
                flags.push(Flag::NoOwner);
            }
            if g.expires_at.is_some_and(|at| at <= input.now) {
                flags.push(Flag::Expired);
            }
            if g.review_due(e.created_at)
                .is_some_and(|due| due <= input.now)
            {
                flags.push(Flag::ReviewLapsed);
            }
            // Unused since (or, never used, created before) the window began.
            let since = last_used_at.unwrap_or(e.created_at);
            if since <= input.now.saturating_sub(secs(input.stale_after)) {
                flags.push(Flag::Stale);
            }
            if let (true, Some(every)) = (e.jit, g.review_every) {
                let since = last_used_at.unwrap_or(e.created_at);
                if since <= input.now.saturating_sub(secs(every)) {
                    flags.push(Flag::Dormant);
                }
            }
            if !overlaps.is_empty() {
                flags.push(Flag::OverlappingSelectors);
            }
            if !unverified_dns_names.is_empty() {
                flags.push(Flag::UnverifiedDnsName);
            }
            match &g.disabled {
                Some(d) if d.reason.starts_with(crate::registration::OFFBOARDED) => {
                    flags.push(Flag::OwnerOffboarded);
                }
                Some(d)
                    if d.reason != crate::registration::EXPIRED
                        && d.reason != crate::registration::REVIEW_LAPSED =>
                {
                    flags.push(Flag::Disabled);
                }
                _ => {}
            }
            let break_glass_tasks = break_glass.get(&e.id).cloned().unwrap_or_default();
            if !break_glass_tasks.is_empty() {
                flags.push(Flag::BreakGlassUnreviewed);
            }
            flags.sort();
            flags.dedup();
            ReviewItem {
                entry: e.clone(),
                last_issued_at,
                last_used_at,
                open_tasks: tasks.get(&e.id).cloned().unwrap_or_default(),
                overlaps,
                unverified_dns_names,
                break_glass_tasks,
                flags,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
