//! Lifetime follows the requester: a task bound to a process ends when that process exits.
//!
//! [`Holders`] keeps one watch per process-bound task this agent knows of: the tasks its
//! workloads begin (watched from the moment the server answers, even while pending
//! approval) and every grant with a process or tree binding in the cache (so after a
//! restart, the persisted cache and the first sync re-check every bound process). A watch
//! waits on a pidfd of the bound process instance (see `attestation::lineage`); when it
//! becomes readable — or when the process is already gone, or its pid now names another
//! instance — the agent ends the task through the node API (`EndTask` with
//! `holder_exited`), and the server records it `cancelled` with reason
//! [`common::task::REQUESTER_EXITED`]. The server away, the agent retries every
//! [`RETRY_EVERY`] until it answers. Meanwhile no process can receive the task's SVIDs:
//! its binding names an instance that no longer runs.
//!
//! A watch whose task leaves the cache (ended otherwise) is cancelled. A watch begun for a
//! pending task that never became active stays until its process exits, then asks the
//! server once and stops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::TaskId;
use common::proto::tessera::{EndTaskRequest, NodeEndTaskRequest};
use common::task::{ProcessInstance, REQUESTER_EXITED};
use daemon::supervisor::Spawner;
use tokio_util::sync::CancellationToken;

use crate::attestation::lineage::ExitWatch;
use crate::cache::Cache;
use crate::server_client::ServerLink;

/// How often ending a task is retried while the server does not answer.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The watches of process-bound tasks (cheap to clone: one shared set).
#[derive(Debug, Clone)]
pub(crate) struct Holders {
    watches: Arc<Mutex<HashMap<TaskId, Watch>>>,
    link: ServerLink,
    spawner: Spawner,
}

#[derive(Debug)]
struct Watch {
    cancel: CancellationToken,
    /// Seen as a grant in the cache: cancelled once it leaves it.
    in_cache: bool,
    /// The watch is over (the task was ended, or found ended). Kept while its grant is
    /// still in the cache, so the grant does not start another watch and another request.
    finished: bool,
}

impl Holders {
    /// No watches yet.
    pub(crate) fn new(link: ServerLink, spawner: Spawner) -> Self {
        Self {
            watches: Arc::default(),
            link,
            spawner,
        }
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Watch>> {
        // A poisoned map is still consistent: every change is one insert or remove.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `process`, the holder of task `task_id`, unless it is watched already.
    pub(crate) fn watch(&self, task_id: &TaskId, process: ProcessInstance) {
        let cancel = {
            let mut watches = self.watches();
            if watches.contains_key(task_id) {
                return;
            }
            let cancel = CancellationToken::new();
            watches.insert(
                task_id.clone(),
                Watch {
                    cancel: cancel.clone(),
                    in_cache: false,
                    finished: false,
                },
            );
            cancel
        };
        let this = self.clone();
        let task_id = task_id.clone();
        self.spawner.spawn("task holder watch", async move {
            this.run_watch(&task_id, process, cancel).await;
            let mut watches = this.watches();
            match watches.get_mut(&task_id) {
                Some(w) if w.in_cache => w.finished = true,
                _ => {
                    watches.remove(&task_id);
                }
            }
        });
    }

    async fn run_watch(
        &self,
        task_id: &TaskId,
        process: ProcessInstance,
        cancel: CancellationToken,
    ) {
        match ExitWatch::start(process) {
            Ok(Some(watch)) => {
                tracing::debug!(%task_id, pid = process.pid, "watching a task's bound process");
                // A shutting-down agent stops watching: the restarted agent checks again.
                let shutdown = self.spawner.shutdown_token();
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = shutdown.cancelled() => return,
                    () = watch.exited() => {}
                }
                tracing::info!(%task_id, pid = process.pid, "a task's bound process exited; ending the task");
            }
            Ok(None) => {
                tracing::info!(%task_id, pid = process.pid, "a task's bound process is gone; ending the task");
            }
            Err(e) => {
                // Not knowing is not "gone": the task keeps its deadline, and nothing else
                // can receive its SVIDs meanwhile.
                tracing::error!(%task_id, pid = process.pid, error = %e, "cannot watch a task's bound process");
                return;
            }
        }
        self.end(task_id, &cancel).await;
    }

    /// Ends `task_id` as "requester exited", retrying while the server is away.
    async fn end(&self, task_id: &TaskId, cancel: &CancellationToken) {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(node) = self.link.get() {
                let answer = node
                    .end_task(NodeEndTaskRequest {
                        requester_entry_ids: Vec::new(),
                        end: Some(EndTaskRequest {
                            id: task_id.to_string(),
                            outcome: "cancelled".to_owned(),
                            reason: REQUESTER_EXITED.to_owned(),
                        }),
                        holder_exited: true,
                    })
                    .await;
                match answer {
                    Ok(task) => {
                        tracing::info!(%task_id, state = %task.state, elapsed_ms = started.elapsed().as_millis(), "task ended: requester exited");
                        return;
                    }
                    Err(s) if retryable(s.code()) => {
                        tracing::warn!(%task_id, code = ?s.code(), error = %s.message(), "cannot end a task whose requester exited yet; retrying");
                    }
                    Err(s) => {
                        // Already ended, or unknown to the server: nothing left to end.
                        tracing::debug!(%task_id, code = ?s.code(), error = %s.message(), "task whose requester exited not ended by the agent");
                        return;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.spawner.shutdown_token().cancelled() => return,
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
    }

    /// Follows the cache until `shutdown`: watches the holder of every process-bound
    /// grant, and cancels the watches of tasks that left the cache.
    pub(crate) async fn follow(self, cache: Cache, shutdown: CancellationToken) {
        let mut rx = cache.subscribe();
        loop {
            let snap = Arc::clone(&rx.borrow_and_update());
            let bound: Vec<(TaskId, ProcessInstance)> = snap
                .entries
                .values()
                .filter_map(|c| c.grant.as_ref())
                .filter_map(|g| g.binding.holder().map(|h| (g.task_id.clone(), h.process)))
                .collect();
            // Not kept while waiting: a snapshot held by anyone is copied whole by the
            // next cache change (at 10,000 entries, twenty copies of the map per sync).
            drop(snap);
            let current: HashSet<&TaskId> = bound.iter().map(|(t, _)| t).collect();
            for (task_id, process) in &bound {
                self.watch(task_id, *process);
            }
            {
                let mut watches = self.watches();
                watches.retain(|task_id, w| {
                    if current.contains(task_id) {
                        w.in_cache = true;
                        true
                    } else if w.in_cache || w.finished {
                        w.cancel.cancel();
                        false
                    } else {
                        // Begun here, not active yet (pending approval): kept.
                        true
                    }
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }
}

/// Whether ending a task may succeed later: the server (or the way to it) is away.
fn retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheSnapshot;

    /// A snapshot held by anyone is copied whole by the next cache change; the follower
    /// lets go of each one before it waits for the next.
    #[tokio::test]
    async fn following_the_cache_holds_no_snapshot_while_it_waits() {
        let shutdown = CancellationToken::new();
        let supervisor = daemon::supervisor::Supervisor::new(shutdown.clone(), Duration::ZERO);
        let holders = Holders::new(ServerLink::default(), supervisor.spawner());
        let cache = Cache::default();
        let follower = tokio::spawn(holders.follow(cache.clone(), shutdown.clone()));
        for round in 0..3 {
            cache.update(|s: &mut CacheSnapshot| s.cursor = format!("feed/{round}"));
            // Let the follower see the change and go back to waiting.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let current = cache.current();
            // The channel's own reference and `current`: nobody else's.
            assert_eq!(Arc::strong_count(&current), 2, "round {round}");
        }
        shutdown.cancel();
        follower.await.unwrap();
    }
}
