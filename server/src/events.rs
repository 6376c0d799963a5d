//! Change notifications that drive the agents' sync streams.
//!
//! Every committed change is published here *after* the datastore write returned, so a
//! subscriber never learns of something that is not durable. Sync streams subscribe before
//! reading their snapshot, so nothing committed between the two is missed; a subscriber
//! that falls behind (`Lagged`) re-reads a full snapshot.

use std::sync::Arc;

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
    /// An agent was evicted or banned: its streams end at once.
    AgentRemoved(SpiffeId),
    /// The trust bundle changed (e.g. a JWT key was prepared or retired).
    BundleChanged,
    /// The revocations (tasks ended early, CRLs) changed: every agent gets the new set.
    RevocationsChanged,
}

/// The broadcast hub.
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<ChangeEvent>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::channel(CAPACITY).0)
    }
}

impl Events {
    /// Publishes a change (no-op when nobody listens).
    pub fn publish(&self, event: ChangeEvent) {
        let _ = self.0.send(event);
    }

    /// A new receiver that sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.0.subscribe()
    }
}
