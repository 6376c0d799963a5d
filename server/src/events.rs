//! Change notifications that drive the agents' sync streams.
//!
//! Every committed change is published here *after* the datastore write returned, so a
//! subscriber never learns of something that is not durable. Sync streams subscribe before
//! reading their snapshot, so nothing committed between the two is missed; a subscriber
//! that falls behind (`Lagged`) re-reads a full snapshot.
//!
//! With several servers on one database, the change feed (`crate::feed`) numbers every
//! change and publishes [`ChangeEvent::Settled`] once everything up to a number has been
//! published here, other servers' changes and this server's own alike. For its own, the
//! feed cannot tell which in-process publication a row belongs to, so every write that is
//! published holds a [`WriteTicket`] from before its datastore write until after it was
//! published, and the feed waits ([`Events::settle`]) for every ticket taken before it
//! looked: a write whose row it read committed before it looked, so its ticket was taken
//! before too. An agent that resumes from a `Settled` number therefore misses nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::{EntryId, RegistrationEntry, SpiffeId};
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it must resynchronise.
const CAPACITY: usize = 4096;

/// One committed change.
#[derive(Debug, Clone)]
pub enum ChangeEvent {
    /// An entry was created or updated. `previous_parent` is set when an update moved it
    /// away from another agent, which must then drop it.
    EntryUpserted {
        /// The entry as stored.
        entry: Arc<RegistrationEntry>,
        /// The parent before the update, if it changed.
        previous_parent: Option<SpiffeId>,
    },
    /// An entry was deleted.
    EntryDeleted {
        /// Its id.
        id: EntryId,
        /// The agent it was parented to.
        parent_id: SpiffeId,
    },
    /// An identity template was created.
    TemplateUpserted(Arc<crate::datastore::TemplateRecord>),
    /// An identity template was deleted.
    TemplateDeleted {
        /// Its id.
        id: common::TemplateId,
        /// The agent it was parented to.
        parent_id: SpiffeId,
    },
    /// An agent was evicted or banned: its streams end at once.
    AgentRemoved(SpiffeId),
    /// The trust bundle changed (e.g. a JWT key was prepared or retired).
    BundleChanged,
    /// The revocations (tasks ended early, CRLs) changed: every agent gets the new set.
    RevocationsChanged,
    /// Every change numbered up to this in the cluster's change feed has been published on
    /// this hub (see the module docs): a position agents may resume from.
    Settled(i64),
}

/// The broadcast hub.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<ChangeEvent>,
    gate: Arc<Gate>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            gate: Arc::default(),
        }
    }
}

impl Events {
    /// Publishes a change (no-op when nobody listens).
    pub fn publish(&self, event: ChangeEvent) {
        let _ = self.tx.send(event);
    }

    /// A new receiver that sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.tx.subscribe()
    }

    /// Marks a write in progress: take it before the datastore write and drop it after
    /// the change was published (or the write failed).
    pub fn begin_write(&self) -> WriteTicket {
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.next;
        open.next += 1;
        open.tickets.insert(n);
        WriteTicket {
            gate: Arc::clone(&self.gate),
            n,
        }
    }

    /// Waits until every write whose ticket was taken before this call has ended.
    pub async fn settle(&self) {
        let horizon = {
            let open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
            open.next
        };
        loop {
            let ended = self.gate.ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end in between still wakes us.
            ended.as_mut().enable();
            {
                let open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
                if open.tickets.first().is_none_or(|&n| n >= horizon) {
                    return;
                }
            }
            ended.await;
        }
    }
}

/// The writes in progress (see [`Events::begin_write`]).
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<Open>,
    ended: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    tickets: BTreeSet<u64>,
}

/// A write in progress; ends when dropped.
#[derive(Debug)]
#[must_use = "a ticket marks a write until it is dropped"]
pub struct WriteTicket {
    gate: Arc<Gate>,
    n: u64,
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.gate
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tickets
            .remove(&self.n);
        self.gate.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `settle` waits for the writes that began before it, not for later ones.
    #[tokio::test]
    async fn settle_waits_for_earlier_writes_only() {
        let events = Events::default();
        // Nothing in progress: at once.
        tokio::time::timeout(Duration::from_secs(1), events.settle())
            .await
            .expect("settles with no write in progress");
        let first = events.begin_write();
        let second = events.begin_write();
        let waiter = tokio::spawn({
            let events = events.clone();
            async move { events.settle().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let later = events.begin_write();
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "settled while an earlier write was open"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("settles once the earlier writes ended, though a later one is open")
            .unwrap();
        drop(later);
    }
}
