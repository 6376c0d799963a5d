//! `tessera.v1.WorkloadTasks`: workloads start and end their own tasks over the Workload
//! API socket.
//!
//! The caller is attested exactly as for the Workload API, and the agent speaks for it to
//! the server: the requester is the caller's *standing* identity (its first live,
//! non-just-in-time entry), never anything the caller asserts. A workload may only
//! activate a just-in-time entry whose selectors it satisfies, or provision a temporary
//! entry whose selectors it satisfies: a task gives an identity to its own requester's
//! process, not to someone else's. Policy on the server decides the rest.
//!
//! **Binding.** The agent resolves what the task is bound to before it asks the server:
//! by default the calling process instance (pid and start time, as attestation pinned
//! them), or with `bind_pid` one of the caller's ancestors running as the caller's uid
//! (so a runtime can run the CLI for itself), as one process (`process`) or with its
//! descendants (`tree`); `selectors` only when asked for. The bound process is watched
//! from then on ([`crate::holders`]): the task ends when it exits.

use std::sync::Arc;

use common::proto::tessera::workload_tasks_server::WorkloadTasks;
use common::proto::tessera::{
    EndTaskRequest, NodeBeginTaskRequest, NodeEndTaskRequest, Task, TaskBinding as WireBinding,
    TaskSpec,
};
use common::task::{BindKind, ProcessInstance};
use common::{Selector, SelectorSet};
use tonic::{Request, Response, Status};

use super::{WorkloadApi, check_header, peer};
use crate::attestation::lineage::bind_target;
use crate::cache::{CacheSnapshot, CachedEntry, Lineage};

/// The caller's standing entry: not just-in-time, matching the caller, with SPIFFE ID
/// `wanted` if given; the oldest of those.
fn standing<'a>(
    snap: &'a CacheSnapshot,
    selectors: &SelectorSet,
    wanted: &str,
) -> Result<&'a CachedEntry, Status> {
    snap.entries
        .values()
        .filter(|c| !c.entry.jit && c.entry.selectors.entry_matches(selectors))
        .filter(|c| wanted.is_empty() || c.entry.spiffe_id.as_str() == wanted)
        .min_by(|a, b| (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id)))
        .map(AsRef::as_ref)
        .ok_or_else(|| {
            Status::permission_denied(if wanted.is_empty() {
                "the caller has no standing identity on this agent to request a task under"
                    .to_owned()
            } else {
                format!("the caller does not hold the standing identity {wanted}")
            })
        })
}

/// Resolves the just-in-time entry a workload asks to activate, among this agent's
/// entries that match the caller.
fn target(
    snap: &CacheSnapshot,
    selectors: &SelectorSet,
    spec: &TaskSpec,
) -> Result<String, Status> {
    let mut candidates: Vec<&Arc<CachedEntry>> = snap
        .entries
        .values()
        .filter(|c| c.entry.jit && c.entry.selectors.entry_matches(selectors))
        .filter(|c| {
            (spec.entry_id.is_empty() || c.entry.id == spec.entry_id)
                && (spec.spiffe_id.is_empty() || c.entry.spiffe_id.as_str() == spec.spiffe_id)
        })
        .collect();
    // An entry with several active tasks is cached once per task: count it once.
    candidates.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
    candidates.dedup_by(|a, b| a.entry.id == b.entry.id);
    if spec.entry_id.is_empty() && spec.spiffe_id.is_empty() {
        return Err(Status::invalid_argument(
            "name the just-in-time identity to activate (spiffe_id or entry_id), or provision one",
        ));
    }
    match candidates.as_slice() {
        [one] => Ok(one.entry.id.to_string()),
        [] => Err(Status::not_found(
            "no just-in-time entry on this agent matches both the request and the caller",
        )),
        _ => Err(Status::invalid_argument(
            "several just-in-time entries match: name one by entry_id",
        )),
    }
}

/// What a task the caller begins is bound to: `spec.bind` (default `process`) of the
/// caller itself, or of `spec.bind_pid`, which must be an ancestor of the caller (whose
/// lineage is `lineage`, itself first) running as its `uid`. The agent id is left for the
/// server to fill in from the calling agent's identity.
async fn resolve_binding(
    spec: &TaskSpec,
    lineage: Lineage,
    uid: u32,
) -> Result<WireBinding, Status> {
    let kind = match spec.bind.as_str() {
        "" => BindKind::Process,
        s => s
            .parse::<BindKind>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
    };
    if kind == BindKind::Selectors {
        if spec.bind_pid != 0 {
            return Err(Status::invalid_argument(
                "bind_pid names the process a task is bound to: not with --bind selectors",
            ));
        }
        return Ok(WireBinding {
            kind: kind.as_str().to_owned(),
            ..WireBinding::default()
        });
    }
    let holder = if spec.bind_pid == 0 {
        *lineage
            .caller()
            .ok_or_else(|| Status::unavailable("workload attestation failed"))?
    } else {
        // A few small reads of /proc: off the async runtime, like attestation.
        let pid = spec.bind_pid;
        tokio::task::spawn_blocking(move || bind_target(&lineage.to_vec(), pid, uid))
            .await
            .map_err(|_| Status::unavailable("workload attestation failed"))?
            .map_err(|e| Status::permission_denied(e.to_string()))?
    };
    Ok(WireBinding {
        kind: kind.as_str().to_owned(),
        pid: holder.pid,
        start_time: holder.start_time,
        agent_id: String::new(),
    })
}

#[tonic::async_trait]
impl WorkloadTasks for WorkloadApi {
    async fn begin_task(&self, req: Request<TaskSpec>) -> Result<Response<Task>, Status> {
        check_header(&req)?;
        let caller = self.attest(&req).await?;
        let selectors = &caller.selectors;
        // The Unix user attestation just verified: the server records it so that this user
        // can never approve the task.
        let uid = peer(&req)?.uid;
        let snap = self.cache.current();
        let mut spec = req.into_inner();
        let binding = resolve_binding(&spec, caller.lineage.clone(), uid).await?;
        let requester = standing(&snap, selectors, &spec.requester_spiffe_id)?
            .entry
            .id
            .clone();
        if spec.provision {
            let wanted = spec
                .selectors
                .iter()
                .map(|s| s.parse::<Selector>())
                .collect::<Result<SelectorSet, _>>()
                .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?;
            if wanted.is_empty() || !wanted.entry_matches(selectors) {
                return Err(Status::permission_denied(
                    "a provisioned entry's selectors must be non-empty and all among the caller's",
                ));
            }
            spec.parent_id.clear();
        } else {
            spec.entry_id = target(&snap, selectors, &spec)?;
            spec.spiffe_id.clear();
        }
        let node = self
            .link
            .get()
            .ok_or_else(|| Status::unavailable("agent is not attested yet"))?;
        let task = node
            .begin_task(NodeBeginTaskRequest {
                requester_entry_id: requester.to_string(),
                spec: Some(spec),
                requester_uid: Some(uid),
                requester_user: daemon::users::user_name(uid),
                binding: Some(binding.clone()),
            })
            .await?;
        tracing::info!(task_id = %task.id, state = %task.state, spiffe_id = %task.spiffe_id, bind = %binding.kind, pid = binding.pid, "workload started a task");
        // From now on the task lives only as long as its process: if that process is gone
        // already (it exited while the server decided), the watch ends the task at once.
        if binding.pid != 0
            && let Ok(task_id) = common::TaskId::parse(task.id.clone())
        {
            self.holders.watch(
                &task_id,
                ProcessInstance {
                    pid: binding.pid,
                    start_time: binding.start_time,
                },
            );
        }
        Ok(Response::new(task))
    }

    async fn end_task(&self, req: Request<EndTaskRequest>) -> Result<Response<Task>, Status> {
        check_header(&req)?;
        let selectors = self.attest(&req).await?.selectors;
        let snap = self.cache.current();
        // Any of the caller's standing identities may have started the task.
        let candidates: Vec<String> = snap
            .entries
            .values()
            .filter(|c| !c.entry.jit && c.entry.selectors.entry_matches(&selectors))
            .map(|c| c.entry.id.to_string())
            .collect();
        if candidates.is_empty() {
            return Err(Status::permission_denied(
                "the caller has no standing identity",
            ));
        }
        let node = self
            .link
            .get()
            .ok_or_else(|| Status::unavailable("agent is not attested yet"))?;
        let task = node
            .end_task(NodeEndTaskRequest {
                requester_entry_ids: candidates,
                end: Some(req.into_inner()),
                holder_exited: false,
            })
            .await?;
        tracing::info!(task_id = %task.id, state = %task.state, "workload ended a task");
        Ok(Response::new(task))
    }
}
