//! Task changes another server made, applied here when the change feed (`feed.rs`)
//! reports them: the in-memory grants follow the stored task, the entry's agent hears of
//! it, and the revocations are recomputed at once when the task ended early.

use common::TaskId;

use super::Tasks;
use super::revocation::ended_early;
use crate::datastore::DatastoreError;

impl Tasks {
    /// Re-reads task `id` and applies it as [`Tasks::changed`] does for a local change.
    /// Returns whether it ended early (the revocations must then be refreshed, see
    /// [`Tasks::refresh_revocations_now`]). Idempotent: applying the same state twice
    /// changes nothing but publishes the entry again.
    pub(crate) async fn apply_remote(&self, id: &TaskId) -> Result<bool, DatastoreError> {
        let Some(task) = self.ds.get_task(id).await? else {
            return Ok(false);
        };
        // A provisioned entry goes with its task (its deletion is a change of its own).
        let entry = if task.provisioned && !task.state.is_open() {
            None
        } else {
            self.ds.get_entry(&task.entry_id).await?
        };
        self.changed(&task, entry);
        Ok(ended_early(&task))
    }

    /// Recomputes the revocations, publishing them if they changed.
    pub(crate) async fn refresh_revocations_now(&self) -> Result<(), DatastoreError> {
        self.refresh_revocations(false).await
    }
}
