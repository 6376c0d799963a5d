//! What task bindings need from the kernel: a caller's process lineage, the process a
//! workload binds its task to (`--bind-pid`), and the moment a bound process exits.
//!
//! A task bound to a process names it by pid and start time ([`ProcessInstance`]): a pid is
//! reused once its process is reaped, but the pair names one process ever. Delivery
//! compares the caller's lineage (itself, pinned by attestation, then its ancestors) with
//! the binding, so a recycled pid never matches (its start time differs).
//!
//! **Ancestors.** Each step reads the parent pid from the child's `stat`, then the parent's
//! start time through a directory fd pinned to `/proc/<ppid>`. If the real parent exited
//! between the two reads and its pid was reused, the process read is not the parent, but it
//! started after the child did: a parent never starts later than its child, so the walk
//! stops there. And a binding matches only the exact instance it pinned at begin, which was
//! alive before and cannot hold a pid another live process held meanwhile.
//!
//! **Exit.** [`ExitWatch`] holds a pidfd of the bound process, opened and then checked
//! against the pinned start time (a pidfd opened on a recycled pid names the wrong process:
//! refused as gone). A pidfd becomes readable when its process exits, so the agent waits
//! with tokio's `AsyncFd`, without polling. Where the kernel has no pidfd (before Linux
//! 5.3, or a seccomp filter forbids it), the watch falls back to re-reading `stat` through
//! the pinned `/proc/<pid>` directory every [`FALLBACK_POLL`], logged once.

use std::os::fd::OwnedFd;
use std::time::Duration;

use common::task::ProcessInstance;
use tokio::io::unix::AsyncFd;

use super::AttestationError;
use super::procfs::{PidFd, ProcDir};

/// Most ancestors read for one caller (process trees are far shallower; the bound keeps a
/// hostile chain of processes from costing more).
pub(crate) const MAX_ANCESTORS: usize = 64;

/// How often a bound process is checked where the kernel offers no pidfd.
const FALLBACK_POLL: Duration = Duration::from_millis(250);

/// The ancestors of a process whose parent pid is `ppid` and which started at
/// `child_start`: parent first, up to [`MAX_ANCESTORS`]; the walk stops at pid 0, at a
/// process that cannot be read, and at one that started after its supposed child (see
/// the module docs).
pub(crate) fn ancestors(mut ppid: u32, mut child_start: u64) -> Vec<ProcessInstance> {
    let mut out = Vec::new();
    while ppid > 0 && out.len() < MAX_ANCESTORS {
        let Ok(pid) = i32::try_from(ppid) else { break };
        let Ok(dir) = ProcDir::open(pid) else { break };
        let Ok((start_time, parent)) = dir.start_time_and_ppid() else {
            break;
        };
        if start_time > child_start {
            break;
        }
        out.push(ProcessInstance {
            pid: ppid,
            start_time,
        });
        child_start = start_time;
        ppid = parent;
    }
    out
}

/// Why `--bind-pid` was refused: a sentence for the workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BindRefused(pub(crate) String);

/// The process instance a workload whose lineage is `lineage` (itself first) and whose
/// uid is `uid` binds its task to with `--bind-pid pid`: itself or one of its ancestors,
/// running as the same uid (real, effective, saved and filesystem), alive now with the
/// start time the lineage recorded. Reads `/proc/<pid>` (blocking, a few small reads).
pub(crate) fn bind_target(
    lineage: &[ProcessInstance],
    pid: u32,
    uid: u32,
) -> Result<ProcessInstance, BindRefused> {
    let Some(found) = lineage.iter().find(|p| p.pid == pid).copied() else {
        return Err(BindRefused(format!(
            "process {pid} is not an ancestor of the caller: a task can be bound only to the \
             calling process or one of its ancestors"
        )));
    };
    let gone = || BindRefused(format!("process {pid} exited"));
    let dir = i32::try_from(pid)
        .map_err(|_| gone())
        .and_then(|p| ProcDir::open(p).map_err(|_| gone()))?;
    if dir.start_time().map_err(|_| gone())? != found.start_time {
        return Err(gone());
    }
    let status = dir.status().map_err(|e| {
        BindRefused(match e {
            AttestationError::ProcessExited { .. } => format!("process {pid} exited"),
            _ => format!("process {pid} could not be read"),
        })
    })?;
    if let Some((which, other)) = status.uid.first_other_than(uid) {
        return Err(BindRefused(format!(
            "process {pid} runs as {which} uid {other}, not as the caller's uid {uid}: a task \
             can be bound only to a process of the same user"
        )));
    }
    Ok(found)
}

/// Registers an owned pidfd with tokio's reactor.
#[expect(
    deprecated,
    reason = "tokio 1.54 deprecates AsyncFd::new for AsyncFd::register, the same call made \
              `unsafe` for fds the AsyncFd does not own; the workspace forbids unsafe, and \
              register's condition (the fd stays open and names the same file while the \
              AsyncFd lives) holds here by construction: the AsyncFd owns the OwnedFd"
)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// A watch on one bound process instance, until it exits.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    process: ProcessInstance,
    how: How,
}

#[derive(Debug)]
enum How {
    PidFd(AsyncFd<OwnedFd>),
    /// No pidfd on this kernel: the pinned `/proc/<pid>` directory, re-read.
    Poll(ProcDir),
}

impl ExitWatch {
    /// Starts watching `process`. `Ok(None)` when it is gone already: no process has that
    /// pid, or the one that has it is another instance (a different start time). Must run
    /// inside a tokio runtime (the pidfd is registered with its reactor).
    pub(crate) fn start(process: ProcessInstance) -> Result<Option<Self>, AttestationError> {
        let Ok(pid) = i32::try_from(process.pid) else {
            return Ok(None);
        };
        // The pidfd first, then the start time: a pidfd opened on a recycled pid names the
        // wrong process, and the start time read afterwards shows it.
        let pidfd = match PidFd::open(pid) {
            Ok(fd) => fd,
            Err(AttestationError::ProcessExited { .. } | AttestationError::NoPid) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let dir = match ProcDir::open(pid) {
            Ok(d) => d,
            Err(AttestationError::ProcessExited { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match dir.start_time() {
            Ok(t) if t == process.start_time => {}
            Ok(_) | Err(AttestationError::ProcessExited { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let how = match pidfd {
            Some(fd) => How::PidFd(register(fd.into_fd()).map_err(|e| AttestationError::Proc {
                pid,
                what: "pidfd registration",
                source: std::sync::Arc::new(e),
            })?),
            None => {
                tracing::warn!(
                    pid,
                    "no pidfd on this kernel: checking a bound process every 250 ms"
                );
                How::Poll(dir)
            }
        };
        Ok(Some(Self { process, how }))
    }

    /// Returns once the process has exited (a zombie counts as exited).
    pub(crate) async fn exited(self) {
        match self.how {
            How::PidFd(fd) => {
                // Readable means exited; an error from the reactor (it is shutting down)
                // means nothing more can be watched, so stop as well.
                let _ = fd.readable().await;
            }
            How::Poll(dir) => loop {
                if dir
                    .start_time()
                    .map_or(true, |t| t != self.process.start_time)
                {
                    return;
                }
                tokio::time::sleep(FALLBACK_POLL).await;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn own() -> ProcessInstance {
        let pid = std::process::id();
        let dir = ProcDir::open(i32::try_from(pid).unwrap()).unwrap();
        ProcessInstance {
            pid,
            start_time: dir.start_time().unwrap(),
        }
    }

    fn instance(pid: u32) -> ProcessInstance {
        let dir = ProcDir::open(i32::try_from(pid).unwrap()).unwrap();
        ProcessInstance {
            pid,
            start_time: dir.start_time().unwrap(),
        }
    }

    #[test]
    fn a_child_s_ancestors_start_with_its_parent_and_reach_init() {
        let me = own();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let dir = ProcDir::open(i32::try_from(pid).unwrap()).unwrap();
        let (start, ppid) = dir.start_time_and_ppid().unwrap();
        assert_eq!(ppid, me.pid);
        let up = ancestors(ppid, start);
        assert_eq!(up.first(), Some(&me), "{up:?}");
        assert!(up.len() <= MAX_ANCESTORS);
        assert!(up.windows(2).all(|w| w[1].start_time <= w[0].start_time));
        // A "parent" that started after the child ends the walk (a recycled pid).
        assert!(ancestors(me.pid, me.start_time.saturating_sub(1)).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A caller's ancestors are read only when a tree binding is compared with it, and
    /// then match what the walk at attestation read.
    #[test]
    fn a_lineage_walks_its_ancestors_only_for_a_tree_binding() {
        use common::task::{Holder, TaskBinding};

        use crate::cache::Lineage;

        let me = own();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let dir = ProcDir::open(i32::try_from(pid).unwrap()).unwrap();
        let (start, ppid) = dir.start_time_and_ppid().unwrap();
        let caller = ProcessInstance {
            pid,
            start_time: start,
        };
        let holder = |process| Holder {
            process,
            agent: common::SpiffeId::new("spiffe://example.org/agent").unwrap(),
        };
        let lineage = Lineage::of(caller, ppid);
        let shared = lineage.clone();
        assert!(lineage.admitted_by(&TaskBinding::Selectors));
        assert!(lineage.admitted_by(&TaskBinding::Process(holder(caller))));
        assert!(!lineage.admitted_by(&TaskBinding::Process(holder(me))));
        assert!(lineage.admitted_by(&TaskBinding::Tree(holder(caller))));
        assert!(!lineage.walked(), "no binding so far needed the ancestors");
        // A tree bound to the caller's parent: the walk happens, once, for every clone.
        assert!(lineage.admitted_by(&TaskBinding::Tree(holder(me))));
        assert!(shared.walked());
        assert_eq!(lineage.ancestors(), ancestors(ppid, start).as_slice());
        assert_eq!(lineage.to_vec()[..2], [caller, me]);
        // Another instance of the parent's pid (a recycled pid) is not an ancestor.
        let recycled = ProcessInstance {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!lineage.admitted_by(&TaskBinding::Tree(holder(recycled))));
        // An unknown caller is admitted only by selectors.
        let unknown = Lineage::known(vec![]);
        assert!(unknown.admitted_by(&TaskBinding::Selectors));
        assert!(!unknown.admitted_by(&TaskBinding::Tree(holder(me))));
        assert!(unknown.to_vec().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn bind_pid_must_be_a_same_user_ancestor_alive_as_pinned() {
        let me = own();
        let parent = ProcessInstance {
            pid: 999_999_999,
            start_time: 1,
        };
        let lineage = [me, parent];
        let uid = nix::unistd::geteuid().as_raw();
        assert_eq!(bind_target(&lineage, me.pid, uid), Ok(me));
        let e = bind_target(&lineage, 1, uid).unwrap_err();
        assert!(e.0.contains("not an ancestor"), "{e}");
        let e = bind_target(&lineage, me.pid, uid.wrapping_add(1)).unwrap_err();
        assert!(e.0.contains("not as the caller's uid"), "{e}");
        let e = bind_target(&lineage, parent.pid, uid).unwrap_err();
        assert!(e.0.contains("exited"), "{e}");
        let recycled = [ProcessInstance {
            pid: me.pid,
            start_time: me.start_time + 1,
        }];
        let e = bind_target(&recycled, me.pid, uid).unwrap_err();
        assert!(e.0.contains("exited"), "another instance: {e}");
    }

    #[tokio::test]
    async fn an_exit_watch_fires_when_the_process_exits_and_never_for_another_instance() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let p = instance(child.id());
        let other = ProcessInstance {
            start_time: p.start_time + 1,
            ..p
        };
        assert!(ExitWatch::start(other).unwrap().is_none(), "recycled pid");
        let watch = ExitWatch::start(p).unwrap().unwrap();
        assert_eq!(watch.process, p);
        let exited = tokio::spawn(watch.exited());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!exited.is_finished(), "still running");
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(5), exited)
            .await
            .expect("the watch fires on exit (a zombie counts)")
            .unwrap();
        child.wait().unwrap();
        assert!(ExitWatch::start(p).unwrap().is_none(), "reaped: gone");
    }
}
