//! Per-entry usage the agent reports to the server, for the access review.
//!
//! The Workload API counts, per registration entry: each X.509-SVID message a
//! `FetchX509SVID` stream delivers (once per entry whose SVID it carries; bundle-only
//! streams are not counted), each JWT-SVID `FetchJWTSVID` returns, and each
//! `ValidateJWTSVID` call whose token's signature verified and whose subject is the
//! SPIFFE ID of an entry of this agent (counted under every such entry: the token names an
//! identity, not the entry it was minted for, and several entries may grant one identity).
//! With the counts goes the time of the last use.
//!
//! Counting is a short critical section on one map ([`UsageCounters`]); the flusher
//! ([`run`]) swaps the map out every `usage_report_interval` and sends it as one
//! `ReportUsage` batch, only when something was used. A batch the server did not receive
//! is merged back and sent with the next one; one it refused as malformed is dropped (it
//! would be refused again). The map holds at most [`MAX_PENDING_ENTRIES`] entries (the
//! server's bound on one report): uses of further entries are dropped while it is full, so
//! a long server outage costs counts, never memory. A report whose answer was lost (a
//! timeout after the server stored it) is sent again: counts are at least, not exactly,
//! what happened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::EntryId;
use common::proto::tessera::{EntryUsageItem, UsageReport};
use tokio_util::sync::CancellationToken;

use crate::server_client::ServerLink;

/// Most entries counted between two reports; the server accepts this many items in one
/// report.
pub const MAX_PENDING_ENTRIES: usize = 10_000;
/// Longest a report may take before it counts as failed (and is merged back).
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the last report, at shutdown, may take.
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// One entry's use since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// X.509-SVID messages and JWT-SVIDs delivered.
    pub deliveries: u64,
    /// JWT-SVIDs of the entry's SPIFFE ID validated.
    pub validations: u64,
    /// When it was last used (Unix seconds).
    pub last_used_at: i64,
}

impl Counts {
    /// Adds `other` (counts saturating, the later time kept).
    fn merge(&mut self, other: Self) {
        self.deliveries = self.deliveries.saturating_add(other.deliveries);
        self.validations = self.validations.saturating_add(other.validations);
        self.last_used_at = self.last_used_at.max(other.last_used_at);
    }
}

/// The counters, shared by the Workload API (which counts) and the flusher (which takes
/// them). Clones share one map.
#[derive(Debug, Clone, Default)]
pub struct UsageCounters(Arc<Mutex<HashMap<EntryId, Counts>>>, LiveInstances);

/// Entries made from identity templates that open Workload API streams hold now, with how
/// many streams hold each: every report names them, so the server keeps them while their
/// workload lives and deletes them once it has been gone for the template's grace.
#[derive(Debug, Clone, Default)]
pub struct LiveInstances(Arc<Mutex<HashMap<EntryId, usize>>>);

/// What one stream holds; released when dropped (the stream ended).
#[derive(Debug, Default)]
pub struct LiveHold {
    live: LiveInstances,
    held: Vec<EntryId>,
}

impl LiveInstances {
    /// The ids held by at least one stream.
    pub fn ids(&self) -> Vec<EntryId> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<EntryId> = map.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// An empty hold on these instances.
    pub fn hold(&self) -> LiveHold {
        LiveHold {
            live: self.clone(),
            held: Vec::new(),
        }
    }
}

impl LiveHold {
    /// Holds exactly `ids` from now on (a stream's entries change with its messages).
    pub fn set(&mut self, mut ids: Vec<EntryId>) {
        ids.sort();
        ids.dedup();
        if ids == self.held {
            return;
        }
        let mut map = self.live.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the entries the agent holds: a stream holds only its caller's.
        for id in &ids {
            *map.entry(id.clone()).or_default() += 1;
        }
        for id in &self.held {
            if let Some(n) = map.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(id);
                }
            }
        }
        drop(map);
        self.held = ids;
    }
}

impl Drop for LiveHold {
    fn drop(&mut self) {
        self.set(Vec::new());
    }
}

impl UsageCounters {
    /// The template instances held by open streams.
    pub fn live(&self) -> &LiveInstances {
        &self.1
    }

    /// Adds `counts` to each of `entries` (a use of an entry not yet in a full map is
    /// dropped).
    fn add<'a>(&self, entries: impl IntoIterator<Item = &'a EntryId>, counts: Counts) {
        // A panic while holding the lock cannot leave the map inconsistent (every
        // update is one insert or one merge): keep counting.
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for id in entries {
            if let Some(c) = map.get_mut(id) {
                c.merge(counts);
            } else if map.len() < MAX_PENDING_ENTRIES {
                map.insert(id.clone(), counts);
            }
        }
    }

    /// One delivery (an X.509-SVID message or a JWT-SVID) of each of `entries` at `now`
    /// (Unix seconds).
    pub fn delivered<'a>(&self, entries: impl IntoIterator<Item = &'a EntryId>, now: i64) {
        self.add(
            entries,
            Counts {
                deliveries: 1,
                validations: 0,
                last_used_at: now,
            },
        );
    }

    /// One validation of a JWT-SVID of each of `entries` at `now` (Unix seconds).
    pub fn validated<'a>(&self, entries: impl IntoIterator<Item = &'a EntryId>, now: i64) {
        self.add(
            entries,
            Counts {
                deliveries: 0,
                validations: 1,
                last_used_at: now,
            },
        );
    }

    /// Everything counted since the last take, leaving the map empty.
    pub fn take(&self) -> HashMap<EntryId, Counts> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back counts that could not be reported, merged with what was counted since;
    /// returns how many entries did not fit (dropped).
    pub fn restore(&self, batch: HashMap<EntryId, Counts>) -> usize {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0;
        for (id, counts) in batch {
            if let Some(c) = map.get_mut(&id) {
                c.merge(counts);
            } else if map.len() < MAX_PENDING_ENTRIES {
                map.insert(id, counts);
            } else {
                dropped += 1;
            }
        }
        dropped
    }
}

/// A batch as the wire carries it, in entry order.
fn report(batch: &HashMap<EntryId, Counts>, live: Vec<EntryId>) -> UsageReport {
    let mut items: Vec<EntryUsageItem> = batch
        .iter()
        .map(|(id, c)| EntryUsageItem {
            entry_id: id.to_string(),
            deliveries: c.deliveries,
            validations: c.validations,
            last_used_at: c.last_used_at,
        })
        .collect();
    items.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
    UsageReport {
        items,
        live_instances: live.iter().map(ToString::to_string).collect(),
    }
}

/// What one flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing was used: nothing sent.
    Nothing,
    /// The server received this many entries' counts.
    Sent(usize),
    /// The server refused the report as malformed (or refused this agent): dropped.
    Refused(usize),
    /// Not received (no session yet, server away, timeout): merged back for the next one.
    Kept(usize),
}

/// Sends what was counted since the last flush, if anything, in one report, waiting at
/// most `timeout` for the server's answer.
pub async fn flush(counters: &UsageCounters, link: &ServerLink, timeout: Duration) -> Flushed {
    let batch = counters.take();
    let live = counters.live().ids();
    if batch.is_empty() && live.is_empty() {
        return Flushed::Nothing;
    }
    let n = batch.len();
    let Some(node) = link.get() else {
        counters.restore(batch);
        return Flushed::Kept(n);
    };
    let answer = tokio::time::timeout(timeout, node.report_usage(report(&batch, live))).await;
    let status = match answer {
        Ok(Ok(ack)) => {
            tracing::debug!(
                entries = n,
                accepted = ack.accepted,
                ignored = ack.ignored,
                "usage reported"
            );
            return Flushed::Sent(n);
        }
        Ok(Err(status)) => status,
        Err(_) => tonic::Status::deadline_exceeded("no answer in time"),
    };
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
            tracing::warn!(entries = n, code = ?status.code(), error = %status.message(), "usage report refused by the server; dropped");
            Flushed::Refused(n)
        }
        code => {
            let dropped = counters.restore(batch);
            tracing::warn!(entries = n, dropped, ?code, error = %status.message(), "usage report failed; kept for the next one");
            Flushed::Kept(n)
        }
    }
}

/// How long between two reports: `interval`, or a third of the shortest template grace
/// (`shortest_grace`) when that is shorter, so that an instance whose workload lives is
/// reported at least twice within its grace, whatever `usage_report_interval` says (never
/// more often than once a second).
pub fn report_period(interval: Duration, shortest_grace: Option<Duration>) -> Duration {
    shortest_grace
        .map_or(interval, |g| interval.min(g / 3))
        .max(Duration::from_secs(1))
}

/// Reports usage every [`report_period`] (`interval`, shortened by the templates'
/// shortest grace, read from `shortest_grace` before each wait) until `shutdown`, then
/// once more (briefly) so the last interval's uses are not lost on a clean stop.
pub async fn run(
    counters: UsageCounters,
    link: ServerLink,
    interval: Duration,
    shortest_grace: impl Fn() -> Option<Duration> + Send,
    shutdown: CancellationToken,
) {
    loop {
        let period = report_period(interval, shortest_grace());
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
        flush(
            &counters,
            &link,
            REPORT_TIMEOUT.min(period.max(Duration::from_secs(5))),
        )
        .await;
    }
    flush(&counters, &link, FINAL_REPORT_TIMEOUT).await;
}

#[cfg(test)]
mod tests {
    use common::TrustDomain;

    use super::*;
    use crate::testing::{FakeNode, NodeCall};

    fn eid(s: &str) -> EntryId {
        EntryId::parse(s).unwrap()
    }

    fn reports(fake: &FakeNode) -> Vec<Vec<(String, u64, u64, i64)>> {
        fake.calls()
            .into_iter()
            .filter_map(|c| match c.call {
                NodeCall::ReportUsage { items } => Some(items),
                _ => None,
            })
            .collect()
    }

    fn fake() -> FakeNode {
        let td = TrustDomain::new("example.org").unwrap();
        FakeNode::new(
            &td,
            Arc::new(crate::clock::SystemClock),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn counts_add_up_per_entry_with_the_latest_time() {
        let c = UsageCounters::default();
        let (a, b) = (eid("a"), eid("b"));
        c.delivered([&a, &b], 100);
        c.delivered([&a], 90);
        c.validated([&a], 95);
        c.validated([&b, &b], 120);
        let got = c.take();
        assert_eq!(
            got[&a],
            Counts {
                deliveries: 2,
                validations: 1,
                last_used_at: 100
            }
        );
        assert_eq!(
            got[&b],
            Counts {
                deliveries: 1,
                validations: 2,
                last_used_at: 120
            }
        );
        assert!(c.take().is_empty(), "taken: the map is empty again");
    }

    #[test]
    fn restored_counts_merge_with_new_ones_and_stay_bounded() {
        let c = UsageCounters::default();
        let a = eid("a");
        c.delivered([&a], 100);
        let batch = c.take();
        c.validated([&a], 50);
        assert_eq!(c.restore(batch), 0);
        assert_eq!(
            c.take()[&a],
            Counts {
                deliveries: 1,
                validations: 1,
                last_used_at: 100
            }
        );

        // Full: uses of other entries are dropped, those of counted entries still add up.
        let ids: Vec<EntryId> = (0..MAX_PENDING_ENTRIES)
            .map(|i| eid(&format!("e{i}")))
            .collect();
        c.delivered(&ids, 1);
        let extra = eid("extra");
        c.delivered([&extra, &ids[0]], 2);
        let full = c.take();
        assert_eq!(full.len(), MAX_PENDING_ENTRIES);
        assert!(!full.contains_key(&extra));
        assert_eq!(full[&ids[0]].deliveries, 2);
        // Restoring into a map that filled up meanwhile drops what does not fit.
        c.delivered([&extra], 3);
        assert_eq!(c.restore(full), 1);
        let after = c.take();
        assert_eq!(after.len(), MAX_PENDING_ENTRIES);
        assert_eq!(after[&extra].deliveries, 1);
    }

    #[test]
    fn counts_saturate() {
        let c = UsageCounters::default();
        let a = eid("a");
        c.delivered([&a], 1);
        let mut batch = c.take();
        if let Some(x) = batch.get_mut(&a) {
            x.deliveries = u64::MAX;
        }
        c.delivered([&a], 2);
        c.restore(batch);
        assert_eq!(c.take()[&a].deliveries, u64::MAX);
    }

    #[tokio::test]
    async fn a_flush_sends_only_when_something_was_used_and_keeps_what_failed() {
        let node = fake();
        let link = ServerLink::default();
        let c = UsageCounters::default();
        let (a, b) = (eid("a"), eid("b"));
        let t = Duration::from_secs(5);
        // Used before the agent attested: kept.
        c.delivered([&a], 10);
        assert_eq!(flush(&c, &link, t).await, Flushed::Kept(1));
        link.set(Arc::new(node.clone()));
        assert_eq!(flush(&c, &link, t).await, Flushed::Sent(1));
        assert_eq!(flush(&c, &link, t).await, Flushed::Nothing);
        // The server is away: kept, and sent with the next uses once it is back.
        c.validated([&b], 20);
        node.set_unreachable(true);
        assert_eq!(flush(&c, &link, t).await, Flushed::Kept(1));
        node.set_unreachable(false);
        c.delivered([&a, &b], 30);
        assert_eq!(flush(&c, &link, t).await, Flushed::Sent(2));
        assert_eq!(
            reports(&node),
            [
                vec![("a".to_owned(), 1, 0, 10)],
                vec![("b".to_owned(), 0, 1, 20)],
                vec![("a".to_owned(), 1, 0, 30), ("b".to_owned(), 1, 1, 30)],
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_reports_every_interval_and_once_more_at_shutdown() {
        let node = fake();
        let link = ServerLink::default();
        link.set(Arc::new(node.clone()));
        let c = UsageCounters::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            c.clone(),
            link,
            Duration::from_secs(10),
            || None,
            shutdown.clone(),
        ));
        let a = eid("a");
        c.delivered([&a], 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(reports(&node).is_empty(), "not before the interval");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(reports(&node).len(), 1);
        // Nothing used: nothing sent.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(reports(&node).len(), 1);
        c.validated([&a], 2);
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            reports(&node),
            [
                vec![("a".to_owned(), 1, 0, 1)],
                vec![("a".to_owned(), 0, 1, 2)]
            ]
        );
    }

    #[test]
    fn reports_come_at_least_thrice_per_grace_and_at_most_once_a_second() {
        let s = Duration::from_secs;
        assert_eq!(report_period(s(30), None), s(30));
        assert_eq!(report_period(s(30), Some(s(300))), s(30));
        assert_eq!(report_period(s(30), Some(s(30))), s(10));
        assert_eq!(report_period(s(30), Some(s(2))), s(1));
        assert_eq!(report_period(Duration::from_millis(200), None), s(1));
    }

    #[tokio::test(start_paused = true)]
    async fn held_instances_are_reported_within_a_grace_shorter_than_the_interval() {
        let node = fake();
        let link = ServerLink::default();
        link.set(Arc::new(node.clone()));
        let c = UsageCounters::default();
        let mut hold = c.live().hold();
        hold.set(vec![eid("a")]);
        let shutdown = CancellationToken::new();
        // Reports every 60 s, but a template keeps instances only 6 s without one.
        let task = tokio::spawn(run(
            c.clone(),
            link,
            Duration::from_secs(60),
            || Some(Duration::from_secs(6)),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(6500)).await;
        assert_eq!(reports(&node).len(), 3, "one every 2 s, not one a minute");
        shutdown.cancel();
        task.await.unwrap();
        drop(hold);
    }
}
