//! Workload attestation for local callers: turns what the kernel says about the peer of a
//! Workload API connection into a [`SelectorSet`].
//!
//! **Attestors.** [`Attestor`] pins the caller's process and runs each [`WorkloadAttestor`]
//! through that pin: [`unix`] (`unix:` selectors, described below) and [`cgroup`]
//! (`cgroup:`, `container:`, `systemd:` and `k8s:` selectors from `/proc/<pid>/cgroup`).
//! They are parallel modules; a new one (a kubelet-backed attestor) is another
//! implementation of the trait. Each owns its kinds, and the pipeline refuses a caller if
//! one emits a kind it does not own. The selectors of all are merged.
//!
//! Workloads are untrusted, so every selector comes from the kernel: the peer credentials
//! the kernel recorded for the socket (`SO_PEERCRED`: pid, uid, gid) and procfs for that
//! pid (executable path and contents, supplementary groups). Nothing comes from memory the
//! process can write (argv, environment). The Unix attestor produces
//! `uid`, `gid`, `user`, `group`, `supplementary_gid` (one per supplementary group, so an
//! entry naming one group matches any member, see [`SelectorSet::entry_matches`]), `path`
//! and `sha256` selectors. `path` and `sha256` are omitted when the executable has been
//! deleted.
//!
//! **One vocabulary.** Selectors are built only with typed keys (`UnixKey`, `ContainerKey`,
//! ...), the same enums
//! the registration validator parses with, so no attestor can emit a key that entries
//! cannot name. Numbers and digests always have a selector form. Names and paths come from
//! outside our control (NSS, the filesystem) and may not: a name with whitespace, `:` or
//! `/` (`domain users` from a directory service), one NSS returned with invalid UTF-8, an
//! executable path with control characters or surrounding whitespace, that is not UTF-8,
//! or that is too long. Such a fact yields no selector, and the caller is still attested
//! by its other facts. That fails closed: selectors only ever add entries a caller
//! matches, so a missing one can only make it match fewer. Refusing the whole caller
//! instead would deny identities that need none of these facts (the supplementary-groups
//! bug was that, for every process in a group). [`unix::selectors`] is that mapping, a pure
//! function unit-tested on a table of facts.
//!
//! **Pid reuse.** The peer credentials carry a pid, and a pid is only a number: a caller
//! could connect, hand the socket to a child, exit, and wait for its pid to be recycled by a
//! more privileged process, hoping to be attested as that process. We therefore pin one
//! process instance before reading anything and check afterwards that the pin still holds
//! (see [`procfs`] for how each pin works):
//!
//! 1. open a pidfd for the pid (skipped where the kernel has none);
//! 2. open `/proc/<pid>` as a directory fd and read the start time through it;
//! 3. read everything else through that directory fd;
//! 4. check that the pidfd still shows the process alive, that the start time read again is
//!    unchanged, and that the executable is still the file we hashed (no `exec` meanwhile);
//! 5. require every uid and gid in `/proc/<pid>/status` (real, effective, saved,
//!    filesystem) to equal the peer credentials.
//!
//! Steps 1–4 make sure every fact came from one process instance that was alive for the
//! whole read. Step 5 ties that instance to the caller. A pid is freed only when its process
//! is reaped, so as long as the instance is alive the number is its own. The kernel recorded
//! the peer credentials at `connect()`, though, and a pid recycled *before* step 1 would
//! pass steps 1–4. Step 5 narrows that to a process with the caller's own uid and gid, from
//! which the caller gains nothing its own uid could not get. A process whose ids differ
//! among themselves (a running setuid/setgid program, including one exec'd after
//! connecting as another user: its real id is still the caller's, its effective id the
//! program owner's) is refused, so the selectors of a privileged executable are never
//! attested to a caller that merely started it.
//!
//! Two residual limits are inherent to peer credentials and not solved here. The socket
//! may be used by a process other than the one that connected (fd passing, fork). A hash
//! describes the bytes the *agent* read, which a filesystem the caller controls (FUSE) can
//! serve differently from what the kernel executed. `path` selectors under root-owned
//! directories are the robust ones.
//!
//! **Reuse.** What the attestors that describe only the program (the executable's path and
//! hash) found is kept per process image in [`reuse`], and served again only while every
//! fact identifying that image, read afresh on each call through the same pins, is
//! unchanged; see that module for why this is exactly as safe as attesting afresh.
//!
//! Callers run [`Attestor::attest_caller`] on a blocking thread and should bound it with a timeout:
//! it reads procfs, may hash a large binary, and resolves names through NSS. Before that,
//! they may try [`Attestor::attest_known`], which serves the last full attestation of the
//! same instance again after reading procfs alone (see there and [`reuse`] for why it is as
//! safe), and is cheap enough for the async runtime.

pub(crate) mod cgroup;
pub(crate) mod lineage;
mod procfs;
mod reuse;
mod unix;

use std::cell::OnceCell;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use common::task::ProcessInstance;
use common::{SelectorError, SelectorKey, SelectorKind, SelectorSet};
use nix::errno::Errno;
use tokio::time::Instant;

use self::cgroup::CgroupAttestor;
use self::procfs::{ExeLink, FileId, PidFd, PinnedProc, ProcDir, ProcfsParseError, Status};
use self::reuse::{ImageKey, Known, ReuseCache};
pub(crate) use self::unix::{ExecutableAttestor, UnixAttestor};
use crate::config::WorkloadAttestorKind;

/// What the kernel told us about the caller at accept/RPC time (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// The peer's pid in the agent's pid namespace; `None` (or 0) when the kernel could not
    /// name one, e.g. the peer lives in a pid namespace the agent cannot see.
    pub(crate) pid: Option<i32>,
    /// The peer's effective uid when it connected.
    pub(crate) uid: u32,
    /// The peer's effective gid when it connected.
    pub(crate) gid: u32,
}

/// The caller's process instance as it was when the agent accepted its connection: its
/// start time and the identity of the file it ran. Attestation refuses a caller whose
/// process is no longer that instance or has since run `exec` (of any program, setuid or
/// not): the connection was made by one program, and only that program is attested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessAtAccept {
    start_time: u64,
    exe: FileId,
}

impl ProcessAtAccept {
    /// Reads `/proc/<pid>` of a caller just accepted (no hashing: a few reads of procfs).
    #[cfg(test)]
    pub(crate) fn capture(pid: i32) -> Result<Self, AttestationError> {
        Ok(Accepted::capture(pid)?.process)
    }
}

/// A caller just accepted: its process as it was then ([`ProcessAtAccept`]), and its
/// `/proc/<pid>` directory opened then and held for the life of the connection, with the
/// `status` and `cgroup` files opened through it once first read ([`PinnedProc`]).
///
/// The directory is the pin [`Attestor::attest_known`] reads through: every read through
/// it, or through a file opened through it, describes the instance that connected or fails
/// once that instance is reaped, even after its pid is given to another process (see
/// [`procfs`]). It costs the connection up to three file descriptors beside its socket
/// (see [`crate::config::FDS_PER_CONNECTION`]).
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// The instance and the file it ran, read through `dir` at accept.
    pub(crate) process: ProcessAtAccept,
    pinned: Arc<PinnedProc>,
}

impl Accepted {
    /// Opens and reads `/proc/<pid>` of a caller just accepted (no hashing: a few reads of
    /// procfs), and keeps the directory.
    pub(crate) fn capture(pid: i32) -> Result<Self, AttestationError> {
        let dir = ProcDir::open(pid)?;
        let start_time = dir.start_time()?;
        let exe = dir.exe_id()?;
        Ok(Self {
            process: ProcessAtAccept { start_time, exe },
            pinned: Arc::new(PinnedProc::new(dir)),
        })
    }

    /// The same pinned directory with other facts "at accept" (tests of what a kept
    /// attestation is served for).
    #[cfg(test)]
    fn with_process(&self, process: ProcessAtAccept) -> Self {
        Self {
            process,
            pinned: Arc::clone(&self.pinned),
        }
    }
}

/// Why a caller could not be attested.
///
/// Messages name pids and ids but never paths. They are for the agent's log. The Workload
/// API maps them to a status and never sends them to the caller.
#[derive(Debug, thiserror::Error, Clone)]
pub(crate) enum AttestationError {
    /// The peer credentials carry no pid (absent, 0 or negative), so there is no process
    /// to attest.
    #[error("peer credentials carry no pid")]
    NoPid,
    /// The process exited, or is a zombie or a kernel thread without an executable, before
    /// or during attestation.
    #[error("process {pid} exited during attestation")]
    ProcessExited {
        /// Pid from the peer credentials.
        pid: i32,
    },
    /// The pid named a different process instance at the end of attestation than at the
    /// start (start time changed, or the pidfd no longer matches the number).
    #[error("pid {pid} was reused during attestation")]
    PidReused {
        /// Pid from the peer credentials.
        pid: i32,
    },
    /// The process ran `exec` (or its executable file was modified) after it connected:
    /// the program attested would not be the one that made the connection.
    #[error("process {pid} ran another executable since it connected")]
    ExecutedSinceConnect {
        /// Pid from the peer credentials.
        pid: i32,
    },
    /// The agent could not read the caller's process when it accepted the connection (it
    /// had already exited), so nothing ties the caller to the process attested now.
    #[error("process {pid} could not be pinned when its connection was accepted")]
    NotPinnedAtAccept {
        /// Pid from the peer credentials.
        pid: i32,
    },
    /// The process ran `exec`, or its executable file was modified, while being attested.
    #[error("executable of process {pid} changed during attestation")]
    ExecutableChanged {
        /// Pid from the peer credentials.
        pid: i32,
    },
    /// A uid in `/proc/<pid>/status` differs from the peer credentials: the process
    /// changed identity (or runs setuid) since connecting, or the pid belongs to another
    /// process.
    #[error("process {pid} has {which} uid {proc_uid}, peer credentials say {peer_uid}")]
    UidMismatch {
        /// Pid from the peer credentials.
        pid: i32,
        /// Uid from the peer credentials.
        peer_uid: u32,
        /// Which of the four uids differs (real, effective, saved, filesystem).
        which: &'static str,
        /// That uid, from procfs.
        proc_uid: u32,
    },
    /// As [`Self::UidMismatch`], for the gids.
    #[error("process {pid} has {which} gid {proc_gid}, peer credentials say {peer_gid}")]
    GidMismatch {
        /// Pid from the peer credentials.
        pid: i32,
        /// Gid from the peer credentials.
        peer_gid: u32,
        /// Which of the four gids differs.
        which: &'static str,
        /// That gid, from procfs.
        proc_gid: u32,
    },
    /// Reading procfs (or the executable, or opening a pidfd) failed for a reason other
    /// than the process being gone, e.g. the agent lacks permission.
    #[error("reading {what} of process {pid}: {source}")]
    Proc {
        /// Pid from the peer credentials.
        pid: i32,
        /// Which file or operation failed.
        what: &'static str,
        /// The I/O error (paths are never part of it).
        source: Arc<io::Error>,
    },
    /// A procfs file did not have the format we expect.
    #[error("malformed {what} of process {pid}: {source}")]
    Malformed {
        /// Pid from the peer credentials.
        pid: i32,
        /// Which file.
        what: &'static str,
        /// What was wrong with it.
        source: ProcfsParseError,
    },
    /// The user or group database (NSS) failed to look up a name. This is different from
    /// "no such name", which just omits the selector.
    #[error("looking up {what} name for id {id}: {source}")]
    NameLookup {
        /// `"user"` or `"group"`.
        what: &'static str,
        /// The uid or gid looked up.
        id: u32,
        /// The error from the lookup.
        source: Errno,
    },
    /// A number or digest, which always has a selector form, was refused by the selector
    /// vocabulary: a bug in this module or in `common::selector`, never the caller's doing.
    #[error("BUG: attested {key} refused by the selector vocabulary")]
    Selector {
        /// The selector key.
        key: SelectorKey,
        /// Why the selector type refused it.
        source: Arc<SelectorError>,
    },
}

/// What attestation established about a caller.
#[derive(Debug, Clone)]
pub(crate) struct Attested {
    /// Its selectors.
    pub(crate) selectors: SelectorSet,
    /// Its process instance (pinned: the one that connected), then its ancestors, parent
    /// first, read when first needed (see [`lineage`]): what a task's process binding is
    /// compared with.
    pub(crate) lineage: crate::cache::Lineage,
}

/// One source of selectors about a caller: a module that reads, through the pinned
/// process, the facts of one selector kind. The [`Attestor`] pins the caller, runs every
/// attestor while the pins hold, checks them again, and merges the selectors; an attestor
/// never opens `/proc/<pid>` by number itself, so it inherits the pid-reuse safety.
///
/// Implementations emit only their own kind, through the typed keys of `common::selector`,
/// and treat a fact they cannot read as an error (the caller is refused) and a fact that
/// has no selector form as absent (the caller matches fewer entries).
pub(crate) trait WorkloadAttestor: Send + Sync + fmt::Debug {
    /// The selector kinds this attestor emits.
    fn kinds(&self) -> &'static [SelectorKind];

    /// This attestor's selectors for `process`. Called while the pins hold; blocking.
    fn attest(&self, process: &PinnedProcess<'_>) -> Result<SelectorSet, AttestationError>;

    /// What [`Self::attest`]'s selectors are a function of (see [`Input`]); `None` (the
    /// default) when it reads anything else. Only an attestor that names its input may
    /// have its selectors served again from an earlier call: an [`Input::Image`] one
    /// whenever the process image is unchanged (see [`reuse`]), and every attestor of a
    /// whole attestation served again ([`Attestor::attest_known`]) only when all of them
    /// name one.
    fn input(&self) -> Option<Input> {
        None
    }

    /// Whether [`Self::attest`] is a pure function of the process image, the facts of a
    /// [`reuse::ImageKey`] (pid, start time, executable identity and link, peer uid and
    /// gid): the same key always yields the same selectors. Only then may the pipeline
    /// serve its selectors from an earlier call with an equal key (see [`reuse`]).
    fn reusable(&self) -> bool {
        self.input() == Some(Input::Image)
    }
}

/// What an attestor's selectors are a function of ([`WorkloadAttestor::input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// The process image alone: the facts of a [`reuse::ImageKey`].
    Image,
    /// The peer uid and gid, `/proc/<pid>/status` (every uid and gid, the supplementary
    /// groups) and the names the user and group databases give those ids.
    Status,
    /// The text of `/proc/<pid>/cgroup` (and the agent's own cgroup hierarchies).
    Cgroup,
}

/// A caller's process, pinned (see the module docs): everything an attestor reads goes
/// through [`Self::dir`], whose reads fail once the instance is gone.
#[derive(Debug)]
pub(crate) struct PinnedProcess<'a> {
    /// The pid from the peer credentials.
    pub(crate) pid: i32,
    /// The peer credentials.
    pub(crate) peer: PeerCred,
    /// `/proc/<pid>` of the pinned instance.
    pub(crate) dir: &'a ProcDir,
    /// The executable the instance ran when pinned, opened through [`Self::dir`] at offset 0.
    pub(crate) exe: &'a File,
    /// Its identity, compared again once every attestor ran.
    pub(crate) exe_id: FileId,
    /// Where its `exe` link pointed, read through [`Self::dir`] after [`Self::exe`] was
    /// opened.
    pub(crate) exe_link: &'a ExeLink,
    /// `/proc/<pid>/status`, read through [`Self::dir`].
    pub(crate) status: &'a Status,
    /// `/proc/<pid>/cgroup`, read through [`Self::dir`] on first use.
    cgroup: OnceCell<String>,
}

impl PinnedProcess<'_> {
    /// The text of `/proc/<pid>/cgroup`, read through [`Self::dir`] once per attestation
    /// (kept with the selectors it gave, see [`Attestor::attest_known`]).
    pub(crate) fn cgroup(&self) -> Result<&str, AttestationError> {
        if let Some(text) = self.cgroup.get() {
            return Ok(text);
        }
        let text = self.dir.cgroup()?;
        Ok(self.cgroup.get_or_init(|| text))
    }
}

/// Attests local callers: pins the caller and runs its [`WorkloadAttestor`]s. Share one
/// instance (it is `Sync`; the executable attestor caches hashes, and the reusable
/// attestors' results are kept per process image).
#[derive(Debug)]
pub(crate) struct Attestor {
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    /// `None` only in tests that time attestation without reuse.
    reuse: Option<ReuseCache>,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new()
    }
}

impl Attestor {
    /// The Unix and cgroup attestors.
    pub(crate) fn new() -> Self {
        Self::configured(&WorkloadAttestorKind::ALL)
    }

    /// The attestors the configuration names (`workload_attestors`), in that order.
    pub(crate) fn configured(kinds: &[WorkloadAttestorKind]) -> Self {
        Self::with(
            kinds
                .iter()
                .flat_map(|k| -> Vec<Arc<dyn WorkloadAttestor>> {
                    match k {
                        WorkloadAttestorKind::Unix => vec![
                            Arc::new(UnixAttestor),
                            Arc::new(ExecutableAttestor::default()),
                        ],
                        WorkloadAttestorKind::Cgroup => vec![Arc::new(CgroupAttestor)],
                    }
                })
                .collect(),
        )
    }

    /// These attestors, run in this order.
    pub(crate) fn with(attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self {
            attestors,
            reuse: Some(ReuseCache::default()),
        }
    }

    /// These attestors, every call attested afresh (timing comparisons).
    #[cfg(test)]
    fn without_reuse(kinds: &[WorkloadAttestorKind]) -> Self {
        Self {
            reuse: None,
            ..Self::configured(kinds)
        }
    }

    /// What the reuse cache did (hits, changed keys) and how many entries it holds.
    #[cfg(test)]
    fn reuse_stats(&self) -> (reuse::Stats, usize) {
        self.reuse
            .as_ref()
            .map_or((reuse::Stats::default(), 0), ReuseCache::stats)
    }

    /// The Unix attestor alone (tests that compare exact `unix:` sets).
    #[cfg(test)]
    pub(crate) fn unix_only() -> Self {
        Self::configured(&[WorkloadAttestorKind::Unix])
    }

    /// Attests the process behind `peer` (without what was seen at accept).
    #[cfg(test)]
    pub(crate) fn attest(&self, peer: PeerCred) -> Result<SelectorSet, AttestationError> {
        self.attest_caller(peer, None).map(|a| a.selectors)
    }

    /// Attests the process behind `peer` and returns its selectors and lineage. With
    /// `at_accept` (the Workload API always passes it: `None` there is refused before
    /// this), the process must still be the instance accepted, running the same file.
    ///
    /// Blocking (reads /proc and may hash a binary): callers run it on spawn_blocking.
    pub(crate) fn attest_caller(
        &self,
        peer: PeerCred,
        at_accept: Option<ProcessAtAccept>,
    ) -> Result<Attested, AttestationError> {
        let pid = match peer.pid {
            Some(pid) if pid > 0 => pid,
            _ => return Err(AttestationError::NoPid),
        };
        let _span = tracing::debug_span!("attest", pid, uid = peer.uid, gid = peer.gid).entered();
        let (selectors, start_time, ppid) = self.gather(pid, peer, at_accept)?;
        tracing::debug!(selectors = selectors.len(), "attested");
        // The caller as pinned; its ancestors are read only if a tree binding asks.
        let caller = ProcessInstance {
            pid: pid.unsigned_abs(),
            start_time,
        };
        Ok(Attested {
            selectors,
            lineage: crate::cache::Lineage::of(caller, ppid),
        })
    }

    /// Pins one process instance, runs every attestor through the pins, then checks the
    /// pins still hold and the process still has the caller's ids. See the module docs for
    /// why each step is there. The order matters. Returns the merged selectors, the start
    /// time and the parent pid.
    fn gather(
        &self,
        pid: i32,
        peer: PeerCred,
        at_accept: Option<ProcessAtAccept>,
    ) -> Result<(SelectorSet, u64, u32), AttestationError> {
        // 1. Pin. The pidfd, where the kernel supports it, is an independent second pin. The
        //    directory fd and the start time alone already suffice (see `procfs`).
        let pidfd = PidFd::open(pid)?;
        if pidfd.is_none() {
            tracing::debug!(
                pid,
                "pidfd_open unavailable; pinning by /proc fd and start time"
            );
        }
        let proc_dir = ProcDir::open(pid)?;
        let start_time = proc_dir.start_time()?;

        // 2. Gather, all through the pinned directory: the executable (opened first, and
        //    its identity compared again in step 3), its link, `status`, then each
        //    attestor's facts. A reusable attestor's selectors come from the last call for
        //    this process image when every fact of its key, just read, is unchanged
        //    (see `reuse`); the others always run.
        let (exe, exe_id) = proc_dir.open_exe()?;
        let exe_link = proc_dir.exe_link()?;
        let status = proc_dir.status()?;
        let key = ImageKey {
            pid,
            start_time,
            exe: exe_id,
            exe_link: exe_link.clone(),
            uid: peer.uid,
            gid: peer.gid,
        };
        let reuse = self
            .reuse
            .as_ref()
            .filter(|_| self.attestors.iter().any(|a| a.reusable()));
        let mut reused = reuse.and_then(|r| r.get(&key)).map(Vec::into_iter);
        let process = PinnedProcess {
            pid,
            peer,
            dir: &proc_dir,
            exe: &exe,
            exe_id,
            exe_link: &exe_link,
            status: &status,
            cgroup: OnceCell::new(),
        };
        let mut selectors = SelectorSet::new();
        let mut reusable_sets = Vec::new();
        for attestor in &self.attestors {
            let stored = match reused.as_mut() {
                Some(sets) if attestor.reusable() => sets.next(),
                _ => None,
            };
            let set = match stored {
                Some(set) => set,
                None => attestor.attest(&process)?,
            };
            if attestor.reusable() {
                reusable_sets.push(set.clone());
            }
            if let Some(stray) = set.iter().find(|s| !attestor.kinds().contains(&s.kind())) {
                tracing::error!(selector = %stray.key(), "BUG: attestor emitted a kind it does not own");
                return Err(AttestationError::Selector {
                    key: stray.key(),
                    source: Arc::new(SelectorError::UnknownKind(stray.kind().to_string())),
                });
            }
            selectors.extend(set);
        }

        // 3. Re-check the pins. The pidfd fails once the process is reaped. The directory
        //    fd read fails the same way on every kernel. An equal start time rules out a
        //    swap we somehow missed. The exe identity rules out an `exec` during step 2.
        if let Some(pidfd) = &pidfd {
            pidfd.check_alive()?;
        }
        let (start_again, ppid) = proc_dir.start_time_and_ppid()?;
        if start_again != start_time {
            return Err(AttestationError::PidReused { pid });
        }
        if proc_dir.exe_id()? != exe_id {
            return Err(AttestationError::ExecutableChanged { pid });
        }
        // The instance and program that connected: a recycled pid, or an `exec` after
        // connecting (the old program passing its connection to a new one), is refused.
        if let Some(accepted) = at_accept {
            if accepted.start_time != start_time {
                return Err(AttestationError::PidReused { pid });
            }
            if accepted.exe != exe_id {
                return Err(AttestationError::ExecutedSinceConnect { pid });
            }
        }

        // 4. Tie the instance to the caller. The kernel's peer credentials are authoritative
        //    for the selectors. procfs must agree with them, or the process is not (or no
        //    longer) the one that connected.
        if let Some((which, proc_uid)) = status.uid.first_other_than(peer.uid) {
            return Err(AttestationError::UidMismatch {
                pid,
                peer_uid: peer.uid,
                which,
                proc_uid,
            });
        }
        if let Some((which, proc_gid)) = status.gid.first_other_than(peer.gid) {
            return Err(AttestationError::GidMismatch {
                pid,
                peer_gid: peer.gid,
                which,
                proc_gid,
            });
        }
        // Every check passed: the reusable attestors' results describe this image, and
        // the whole attestation this instance with these facts.
        if let Some(cache) = &self.reuse {
            let known = self.all_inputs_named().then(|| Known {
                status: status.clone(),
                cgroup: process.cgroup.into_inner(),
                selectors: selectors.clone(),
                at: Instant::now(),
            });
            cache.insert(key, reusable_sets, known, SystemTime::now());
        }
        Ok((selectors, start_time, ppid))
    }

    /// Whether every attestor names what its selectors are a function of
    /// ([`WorkloadAttestor::input`]), so that a whole attestation may be served again.
    fn all_inputs_named(&self) -> bool {
        self.attestors.iter().all(|a| a.input().is_some())
    }

    /// Attests the caller again from the last full attestation of the same process
    /// instance, made less than [`reuse::KNOWN_MAX_AGE`] ago, when every fact its selectors
    /// were computed from reads the same now; `None` when any differs or cannot be read, or
    /// nothing is kept: the caller is then attested in full ([`Self::attest_caller`]),
    /// which also gives the reason for a refusal.
    ///
    /// It reads `/proc/<pid>` only: no hashing and no user or group database, whose
    /// lookups may wait on a directory service. That is what makes it cheap enough for the
    /// async runtime, and why the names may lag by up to the maximum age.
    ///
    /// Why it gives what a full attestation would (see [`reuse`] for the image facts):
    ///
    /// - *The instance that connected.* Everything is read through the `/proc/<pid>`
    ///   directory opened when the connection was accepted ([`Accepted`]), or through the
    ///   `status` and `cgroup` files it opened once and reads again from the start: such reads
    ///   describe the instance that connected, or fail once it is reaped, even when its
    ///   pid has since been given to another process (a zombie has no `exe`, so it fails
    ///   too). The kept attestation is looked up by that instance's start time, read
    ///   through the same directory at accept, and by its executable.
    /// - *The program that connected.* The executable's identity is read now and must
    ///   equal the one at accept (an `exec` of another file fails this), and its link must
    ///   equal the kept one (a rename changes the `path` selector).
    /// - *The same facts.* `status` (every uid and gid, which must also equal the peer
    ///   credentials, and the groups) and the cgroup file are read now and must equal the
    ///   ones the kept selectors were computed from: a `setuid`, `setgroups` or a move to
    ///   another cgroup makes it attest in full. Every attestor's selectors are a function
    ///   of these, of the image facts and of the names ([`WorkloadAttestor::input`]);
    ///   an attestor that reads anything else disables this. The parent pid, for the
    ///   lineage, comes from the same read of `status`.
    pub(crate) fn attest_known(
        &self,
        peer: PeerCred,
        at_accept: Option<&Accepted>,
    ) -> Option<Attested> {
        let pid = peer.pid.filter(|&pid| pid > 0)?;
        let accepted = at_accept?;
        let pinned = &accepted.pinned;
        if pinned.dir().pid() != pid {
            return None;
        }
        let cache = self.reuse.as_ref()?;
        if !self.all_inputs_named() {
            return None;
        }
        let (exe_link, known) = cache.known(
            pid,
            accepted.process.start_time,
            accepted.process.exe,
            (peer.uid, peer.gid),
            Instant::now(),
        )?;
        let (status, ppid) = pinned.status_and_ppid().ok()?;
        if status != known.status
            || status.uid.first_other_than(peer.uid).is_some()
            || status.gid.first_other_than(peer.gid).is_some()
        {
            return None;
        }
        let dir = pinned.dir();
        if dir.exe_id().ok()? != accepted.process.exe || dir.exe_link().ok()? != exe_link {
            return None;
        }
        if let Some(cgroup) = &known.cgroup
            && pinned.cgroup().ok()? != *cgroup
        {
            return None;
        }
        let caller = ProcessInstance {
            pid: pid.unsigned_abs(),
            start_time: accepted.process.start_time,
        };
        Some(Attested {
            selectors: known.selectors,
            lineage: crate::cache::Lineage::of(caller, ppid),
        })
    }
}

/// The attestation of one Workload API call, without the socket: pins the process `pid`
/// and runs the configured attestors through the pins, as [`Attestor::attest_caller`]
/// does. Public for the benchmark (`bench --only attestation`), which times it on a
/// child process; not a stable interface.
#[doc(hidden)]
#[derive(Debug)]
pub struct ProcessAttestor(Attestor);

impl ProcessAttestor {
    /// These attestors (`workload_attestors`), one shared executable-hash cache.
    pub fn new(kinds: &[WorkloadAttestorKind]) -> Self {
        Self(Attestor::configured(kinds))
    }

    /// Attests `pid` as a caller whose peer credentials are `uid` and `gid`; returns how
    /// many selectors it has, or why it was refused.
    pub fn attest(&self, pid: i32, uid: u32, gid: u32) -> Result<usize, String> {
        let peer = PeerCred {
            pid: Some(pid),
            uid,
            gid,
        };
        self.0
            .attest_caller(peer, None)
            .map(|a| a.selectors.len())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command};
    use std::time::Duration;
    use std::{fs, thread};

    use sha2::{Digest, Sha256};

    use std::path::PathBuf;

    use common::Selector;
    use nix::unistd::{Gid, Group, Uid, User};

    use super::unix::{Executable, Facts, selectors};
    use super::*;

    /// Kills and reaps the child even when an assertion fails.
    struct Reaped(Child);

    impl Reaped {
        fn pid(&self) -> i32 {
            i32::try_from(self.0.id()).unwrap()
        }
    }

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn own_peer() -> PeerCred {
        PeerCred {
            pid: Some(i32::try_from(std::process::id()).unwrap()),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    /// `unix:<key>:<value>`, through the validator's string parser rather than the typed
    /// constructors the code under test uses.
    fn sel(key: &str, value: impl fmt::Display) -> Selector {
        format!("unix:{key}:{value}").parse().unwrap()
    }

    fn file_sha256(path: &Path) -> String {
        hex::encode(Sha256::digest(fs::read(path).unwrap()))
    }

    fn which(name: &str) -> PathBuf {
        let path = std::env::var_os("PATH").unwrap();
        let found = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .unwrap();
        fs::canonicalize(found).unwrap()
    }

    /// The selectors every attestation of (uid, gid, groups) must carry, computed
    /// independently of the code under test.
    fn identity_selectors(uid: u32, gid: u32, groups: &[u32]) -> SelectorSet {
        let mut set = SelectorSet::default();
        set.insert(sel("uid", uid));
        set.insert(sel("gid", gid));
        if let Some(user) = User::from_uid(Uid::from_raw(uid)).unwrap() {
            set.insert(sel("user", user.name));
        }
        if let Some(group) = Group::from_gid(Gid::from_raw(gid)).unwrap() {
            set.insert(sel("group", group.name));
        }
        for gid in groups {
            set.insert(sel("supplementary_gid", gid));
        }
        set
    }

    fn with_executable(mut set: SelectorSet, path: &Path) -> SelectorSet {
        set.insert(sel("path", path.to_str().unwrap()));
        set.insert(sel("sha256", file_sha256(path)));
        set
    }

    /// Set equality using only `iter` and `contains`.
    fn assert_same(got: &SelectorSet, want: &SelectorSet) {
        let same =
            got.iter().count() == want.iter().count() && want.iter().all(|s| got.contains(s));
        assert!(same, "got {got:?}\nwant {want:?}");
    }

    fn own_groups() -> Vec<u32> {
        nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(Gid::as_raw)
            .collect()
    }

    fn spawn_retrying(cmd: &mut Command) -> Child {
        // A test thread forking concurrently can briefly hold a write fd to a freshly
        // written binary, and exec then fails with ETXTBSY. Retry.
        for _ in 0..50 {
            match cmd.spawn() {
                Ok(child) => return child,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn: {e}"),
            }
        }
        panic!("spawn: still ETXTBSY");
    }

    #[test]
    fn a_caller_without_a_pid_is_refused() {
        let a = Attestor::unix_only();
        for pid in [None, Some(0), Some(-1)] {
            let peer = PeerCred { pid, ..own_peer() };
            assert!(
                matches!(a.attest(peer), Err(AttestationError::NoPid)),
                "{pid:?}"
            );
        }
    }

    #[test]
    fn the_instance_seen_at_accept_must_still_run_the_same_file() {
        let a = Attestor::unix_only();
        let pid = own_peer().pid.unwrap();
        let accepted = ProcessAtAccept::capture(pid).unwrap();
        a.attest_caller(own_peer(), Some(accepted)).unwrap();
        let reused = ProcessAtAccept {
            start_time: accepted.start_time + 1,
            ..accepted
        };
        assert!(matches!(
            a.attest_caller(own_peer(), Some(reused)),
            Err(AttestationError::PidReused { .. })
        ));
        // Another file than the one running now (this directory's identity stands in for
        // the program run before an exec).
        let other = File::open(std::env::temp_dir()).unwrap();
        let execd = ProcessAtAccept {
            exe: FileId::of(&other).unwrap(),
            ..accepted
        };
        let e = a.attest_caller(own_peer(), Some(execd)).unwrap_err();
        assert!(
            matches!(e, AttestationError::ExecutedSinceConnect { .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("ran another executable since it connected")
        );
    }

    #[test]
    fn attests_current_process() {
        let peer = own_peer();
        let got = Attestor::unix_only().attest(peer).unwrap();
        let exe = std::env::current_exe().unwrap();
        let want = with_executable(identity_selectors(peer.uid, peer.gid, &own_groups()), &exe);
        assert_same(&got, &want);
        if peer.uid == 0 {
            assert!(got.contains(&sel("user", "root")));
        }
    }

    /// The default pipeline runs the Unix and cgroup attestors over the same pinned process
    /// and merges their selectors.
    #[test]
    fn pipeline_merges_unix_and_cgroup_selectors() {
        let peer = own_peer();
        let merged = Attestor::new().attest(peer).unwrap();
        let unix = Attestor::unix_only().attest(peer).unwrap();
        let cgroups =
            cgroup::selectors_of(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
        assert!(
            cgroups.iter().any(|s| s.kind() == SelectorKind::Cgroup),
            "{cgroups:?}"
        );
        let mut want = unix;
        want.extend(cgroups);
        assert_same(&merged, &want);
    }

    /// `workload_attestors = ["unix"]` runs the Unix attestor alone: the same selectors as
    /// the Unix attestor, no cgroup kind; the default list is the merged pipeline.
    #[test]
    fn the_configured_attestors_are_the_ones_run() {
        let peer = own_peer();
        let unix = Attestor::configured(&[WorkloadAttestorKind::Unix])
            .attest(peer)
            .unwrap();
        assert_same(&unix, &Attestor::unix_only().attest(peer).unwrap());
        assert!(
            unix.iter().all(|s| s.kind() == SelectorKind::Unix),
            "{unix:?}"
        );
        let both = Attestor::configured(&WorkloadAttestorKind::ALL)
            .attest(peer)
            .unwrap();
        assert!(
            both.iter().any(|s| s.kind() == SelectorKind::Cgroup),
            "{both:?}"
        );
        assert_same(&both, &Attestor::new().attest(peer).unwrap());
    }

    /// An attestor emitting a kind it does not own is a bug, and the caller is refused.
    #[test]
    fn an_attestor_emitting_another_kind_is_refused() {
        #[derive(Debug)]
        struct Stray;
        impl WorkloadAttestor for Stray {
            fn kinds(&self) -> &'static [SelectorKind] {
                &[SelectorKind::Cgroup]
            }
            fn attest(&self, _: &PinnedProcess<'_>) -> Result<SelectorSet, AttestationError> {
                Ok([sel("uid", 0)].into_iter().collect())
            }
        }
        let e = Attestor::with(vec![Arc::new(UnixAttestor), Arc::new(Stray)])
            .attest(own_peer())
            .unwrap_err();
        assert!(matches!(e, AttestationError::Selector { .. }), "{e:?}");
    }

    #[test]
    fn missing_pid_is_no_pid() {
        let attestor = Attestor::unix_only();
        for pid in [None, Some(0), Some(-1), Some(i32::MIN)] {
            let peer = PeerCred { pid, ..own_peer() };
            assert!(
                matches!(attestor.attest(peer), Err(AttestationError::NoPid)),
                "{pid:?}"
            );
        }
    }

    #[test]
    fn wrong_ids_are_refused() {
        let attestor = Attestor::unix_only();
        let peer = own_peer();
        let wrong_uid = PeerCred {
            uid: peer.uid.wrapping_add(1),
            ..peer
        };
        assert!(matches!(
            attestor.attest(wrong_uid),
            Err(AttestationError::UidMismatch { peer_uid, proc_uid, .. })
                if peer_uid == wrong_uid.uid && proc_uid == peer.uid
        ));
        let wrong_gid = PeerCred {
            gid: peer.gid.wrapping_add(1),
            ..peer
        };
        assert!(matches!(
            attestor.attest(wrong_gid),
            Err(AttestationError::GidMismatch { .. })
        ));
    }

    #[test]
    #[ignore = "needs root: spawns a child as nobody (65534)"]
    fn attests_child_running_as_nobody() {
        let child = Reaped(
            Command::new("sleep")
                .arg("5")
                .uid(65534)
                .gid(65534)
                .spawn()
                .unwrap(),
        );
        let attestor = Attestor::unix_only();
        let peer = PeerCred {
            pid: Some(child.pid()),
            uid: 65534,
            gid: 65534,
        };
        let got = attestor.attest(peer).unwrap();
        // std drops supplementary groups when it switches uid as root.
        let want = with_executable(identity_selectors(65534, 65534, &[]), &which("sleep"));
        assert_same(&got, &want);
        assert!(got.contains(&sel("uid", 65534)));

        let as_root = PeerCred { uid: 0, ..peer };
        assert!(matches!(
            attestor.attest(as_root),
            Err(AttestationError::UidMismatch {
                peer_uid: 0,
                proc_uid: 65534,
                ..
            })
        ));
    }

    #[test]
    fn exited_process_is_an_error() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(child.wait().unwrap().success());
        // A uid nobody has: if the pid was recycled already, the uid check refuses it.
        let peer = PeerCred {
            pid: Some(pid),
            uid: 0xdead_beef,
            gid: 0xdead_beef,
        };
        let result = Attestor::unix_only().attest(peer);
        assert!(
            matches!(
                result,
                Err(AttestationError::ProcessExited { .. } | AttestationError::UidMismatch { .. })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn zombie_is_an_error() {
        let child = Reaped(Command::new("true").spawn().unwrap());
        let pid = child.pid();
        let stat = format!("/proc/{pid}/stat");
        let mut zombie = false;
        for _ in 0..500 {
            let text = fs::read_to_string(&stat).unwrap();
            if text
                .rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .starts_with('Z')
            {
                zombie = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert!(zombie, "child never became a zombie");
        let peer = PeerCred {
            pid: Some(pid),
            ..own_peer()
        };
        let result = Attestor::unix_only().attest(peer);
        assert!(
            matches!(result, Err(AttestationError::ProcessExited { pid: p }) if p == pid),
            "{result:?}"
        );
    }

    #[test]
    fn hash_cache_is_hit_on_second_attestation() {
        let child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        let peer = PeerCred {
            pid: Some(child.pid()),
            ..own_peer()
        };
        let unix = Arc::new(ExecutableAttestor::default());
        let attestor = Attestor::with(vec![
            Arc::new(UnixAttestor),
            Arc::clone(&unix) as Arc<dyn WorkloadAttestor>,
        ]);
        let first = attestor.attest(peer).unwrap();
        assert_eq!(unix.cache_stats(), (1, 0));
        // The same process again: its executable's selectors are reused, not looked up.
        let second = attestor.attest(peer).unwrap();
        assert_eq!(unix.cache_stats(), (1, 0));
        assert_eq!(attestor.reuse_stats().0.hits, 1);
        assert_same(&second, &first);
        assert!(first.contains(&sel("sha256", file_sha256(&which("sleep")))));
        // Another process running the same file: the hash comes from the cache.
        let other = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        let third = attestor
            .attest(PeerCred {
                pid: Some(other.pid()),
                ..peer
            })
            .unwrap();
        assert_eq!(unix.cache_stats(), (1, 1));
        assert_same(&third, &first);
    }

    /// A freshly written binary is hashed but not cached (its ctime is too recent). Once
    /// deleted, it loses its path and sha256 selectors but keeps its identity selectors.
    #[test]
    fn fresh_then_deleted_executable() {
        let dir = tempfile::tempdir().unwrap();
        let copy = fs::canonicalize(dir.path())
            .unwrap()
            .join("tessera-test-sleep");
        fs::copy(which("sleep"), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        let child = Reaped(spawn_retrying(Command::new(&copy).arg("30")));
        let peer = PeerCred {
            pid: Some(child.pid()),
            ..own_peer()
        };
        let unix = Arc::new(ExecutableAttestor::default());
        let attestor = Attestor::with(vec![
            Arc::new(UnixAttestor),
            Arc::clone(&unix) as Arc<dyn WorkloadAttestor>,
        ]);

        let fresh = attestor.attest(peer).unwrap();
        let identity = || identity_selectors(peer.uid, peer.gid, &own_groups());
        assert_same(&fresh, &with_executable(identity(), &copy));
        assert_eq!(unix.cache_stats(), (0, 0));

        fs::remove_file(&copy).unwrap();
        let deleted = attestor.attest(peer).unwrap();
        assert_same(&deleted, &identity());
    }

    const SHA_AB: &str = "abababababababababababababababababababababababababababababababab";

    fn facts(uid: u32, gid: u32) -> Facts {
        Facts {
            uid,
            gid,
            user: None,
            group: None,
            supplementary_gids: vec![],
            executable: None,
        }
    }

    fn exe(path: impl Into<PathBuf>) -> Option<Executable> {
        Some(Executable {
            path: path.into(),
            sha256: [0xab; 32],
        })
    }

    /// The mapping from facts to selectors, over a table of facts a kernel, NSS or
    /// filesystem can produce: every selector it emits passes the shared validator and
    /// round-trips through its string form, every fact with a selector form gets one, and
    /// between them the cases emit every key the validator knows for `unix`, so an entry
    /// can never name a key this attestor does not emit.
    #[test]
    fn every_emitted_selector_passes_the_validator() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        let id_selectors = |uid: u32, gid: u32, groups: &[u32]| -> Vec<String> {
            let mut v = vec![format!("unix:uid:{uid}"), format!("unix:gid:{gid}")];
            v.extend(groups.iter().map(|g| format!("unix:supplementary_gid:{g}")));
            v
        };
        let with = |mut v: Vec<String>, extra: &[&str]| -> Vec<String> {
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            v
        };
        let sha = format!("unix:sha256:{SHA_AB}");
        let sha = sha.as_str();
        let long_path = format!("/{}", "a".repeat(2000));
        let sixty_four: Vec<u32> = (1000..1064).collect();
        let ngroups_max: Vec<u32> = (0..65536).collect();

        // (what, facts, the selectors they must yield as strings)
        let cases: Vec<(&str, Facts, Vec<String>)> = vec![
            (
                "root running sleep, no supplementary groups",
                Facts {
                    user: Some("root".into()),
                    group: Some("root".into()),
                    executable: exe("/usr/bin/sleep"),
                    ..facts(0, 0)
                },
                with(
                    id_selectors(0, 0, &[]),
                    &[
                        "unix:user:root",
                        "unix:group:root",
                        "unix:path:/usr/bin/sleep",
                        sha,
                    ],
                ),
            ),
            (
                "one supplementary group",
                Facts {
                    supplementary_gids: vec![27],
                    ..facts(65534, 65534)
                },
                id_selectors(65534, 65534, &[27]),
            ),
            (
                "64 supplementary groups",
                Facts {
                    supplementary_gids: sixty_four.clone(),
                    ..facts(1000, 1000)
                },
                id_selectors(1000, 1000, &sixty_four),
            ),
            (
                "NGROUPS_MAX (65536) supplementary groups",
                Facts {
                    supplementary_gids: ngroups_max.clone(),
                    ..facts(1000, 1000)
                },
                id_selectors(1000, 1000, &ngroups_max),
            ),
            (
                "repeated groups and the primary gid among them",
                Facts {
                    supplementary_gids: vec![100, 27, 27, 100],
                    ..facts(1000, 100)
                },
                id_selectors(1000, 100, &[27, 100]),
            ),
            (
                "largest ids",
                Facts {
                    supplementary_gids: vec![u32::MAX, 0],
                    ..facts(u32::MAX, u32::MAX)
                },
                id_selectors(u32::MAX, u32::MAX, &[u32::MAX, 0]),
            ),
            (
                "unusual names that have a selector form",
                Facts {
                    user: Some("DOMAIN\\alice$".into()),
                    group: Some("svc@REALM.EXAMPLE".into()),
                    ..facts(1000, 1000)
                },
                with(
                    id_selectors(1000, 1000, &[]),
                    &["unix:user:DOMAIN\\alice$", "unix:group:svc@REALM.EXAMPLE"],
                ),
            ),
            (
                "non-ASCII names",
                Facts {
                    user: Some("jörg".into()),
                    group: Some("équipe-42_x.y".into()),
                    ..facts(1000, 1000)
                },
                with(
                    id_selectors(1000, 1000, &[]),
                    &["unix:user:jörg", "unix:group:équipe-42_x.y"],
                ),
            ),
            (
                "names without a selector form are omitted",
                Facts {
                    user: Some("a:b".into()),
                    group: Some("domain users".into()),
                    supplementary_gids: vec![513],
                    ..facts(1000, 1000)
                },
                id_selectors(1000, 1000, &[513]),
            ),
            (
                "more names without a selector form",
                Facts {
                    user: Some("a/b".into()),
                    group: Some(" staff".into()),
                    ..facts(1000, 1000)
                },
                id_selectors(1000, 1000, &[]),
            ),
            (
                "names NSS returned as invalid UTF-8 are omitted",
                Facts {
                    user: Some("j\u{fffd}rg".into()),
                    group: Some("\u{fffd}".into()),
                    ..facts(1000, 1000)
                },
                id_selectors(1000, 1000, &[]),
            ),
            (
                "control characters in names are omitted",
                Facts {
                    user: Some("evil\nunix:uid:0".into()),
                    group: Some("tab\there".into()),
                    ..facts(1000, 1000)
                },
                id_selectors(1000, 1000, &[]),
            ),
            (
                "paths with spaces, colons and non-ASCII",
                Facts {
                    executable: exe("/opt/my app/bin:v2/ünïcode app"),
                    ..facts(1000, 1000)
                },
                with(
                    id_selectors(1000, 1000, &[]),
                    &["unix:path:/opt/my app/bin:v2/ünïcode app", sha],
                ),
            ),
            (
                "a UTF-8 path that holds U+FFFD itself is kept",
                Facts {
                    executable: exe("/opt/\u{fffd}/app"),
                    ..facts(1000, 1000)
                },
                with(
                    id_selectors(1000, 1000, &[]),
                    &["unix:path:/opt/\u{fffd}/app", sha],
                ),
            ),
            (
                "a path with a newline keeps only the hash",
                Facts {
                    executable: exe("/tmp/x\nunix:uid:0"),
                    ..facts(1000, 1000)
                },
                with(id_selectors(1000, 1000, &[]), &[sha]),
            ),
            (
                "a path with trailing whitespace keeps only the hash",
                Facts {
                    executable: exe("/tmp/app "),
                    ..facts(1000, 1000)
                },
                with(id_selectors(1000, 1000, &[]), &[sha]),
            ),
            (
                "a non-UTF-8 path keeps only the hash",
                Facts {
                    executable: exe(OsString::from_vec(b"/opt/\xff/app".to_vec())),
                    ..facts(1000, 1000)
                },
                with(id_selectors(1000, 1000, &[]), &[sha]),
            ),
            (
                "a path too long for a selector keeps only the hash",
                Facts {
                    executable: exe(long_path.as_str()),
                    ..facts(1000, 1000)
                },
                with(id_selectors(1000, 1000, &[]), &[sha]),
            ),
            (
                "deleted executable: no path, no hash",
                facts(1000, 1000),
                id_selectors(1000, 1000, &[]),
            ),
        ];

        let mut keys_emitted = std::collections::HashSet::new();
        for (what, facts, want) in cases {
            let got = selectors(&facts).unwrap_or_else(|e| panic!("{what}: {e}"));
            for s in &got {
                assert_eq!(s.kind(), SelectorKind::Unix, "{what}: {s}");
                assert_eq!(
                    s.to_string().parse::<Selector>().as_ref(),
                    Ok(s),
                    "{what}: {s} does not round-trip"
                );
                keys_emitted.insert(s.key());
            }
            let want: SelectorSet = want
                .iter()
                .map(|w| {
                    w.parse::<Selector>()
                        .unwrap_or_else(|e| panic!("{what}: expected {w:?} is invalid: {e}"))
                })
                .collect();
            assert_same(&got, &want);
        }
        let every_key: std::collections::HashSet<_> =
            SelectorKind::Unix.keys().into_iter().collect();
        assert_eq!(
            keys_emitted, every_key,
            "keys the validator knows but never emitted"
        );
    }

    /// Spawns `sleep 30` as nobody with exactly `groups` as supplementary groups (through
    /// `setpriv`: std's `Command::uid` drops them all) and waits until it runs `sleep`.
    fn sleep_as_nobody_with_groups(groups: &[u32]) -> Reaped {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        let child = Reaped(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--groups"])
                .arg(list.join(","))
                .args(["--", "sleep", "30"])
                .spawn()
                .unwrap(),
        );
        wait_for_exec(&child, "sleep");
        child
    }

    /// Waits until `child` runs the program `name` (found on PATH).
    fn wait_for_exec(child: &Reaped, name: &str) {
        let program = which(name);
        let exe = format!("/proc/{}/exe", child.pid());
        for _ in 0..500 {
            if fs::read_link(&exe).is_ok_and(|p| p == program) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("process {} did not exec {name}", child.pid());
    }

    /// The state a setuid program leaves a caller in when it execs one after connecting as
    /// nobody: real ids nobody's (what the peer credentials recorded), effective and saved
    /// ids root's. Reproduced without a setuid file by `setpriv` changing only the real ids
    /// of a root process. Refused, naming the effective uid; a consistent nobody process
    /// with the same peer credentials is attested.
    #[test]
    #[ignore = "needs root: spawns a child whose real and effective ids differ"]
    fn refuses_a_caller_whose_effective_ids_are_not_the_peer_credentials() {
        let attestor = Attestor::unix_only();
        let mixed = Reaped(
            Command::new("setpriv")
                .args(["--ruid=65534", "--rgid=65534", "--clear-groups"])
                .args(["--", "sleep", "30"])
                .spawn()
                .unwrap(),
        );
        wait_for_exec(&mixed, "sleep");
        let status = fs::read_to_string(format!("/proc/{}/status", mixed.pid())).unwrap();
        let ids = procfs::parse_status(&status).unwrap();
        assert_eq!((ids.uid.real, ids.uid.effective), (65534, 0), "{status}");
        let peer = PeerCred {
            pid: Some(mixed.pid()),
            uid: 65534,
            gid: 65534,
        };
        let refused = attestor.attest(peer);
        assert!(
            matches!(
                refused,
                Err(AttestationError::UidMismatch {
                    which: "effective",
                    peer_uid: 65534,
                    proc_uid: 0,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("effective uid 0, peer credentials say 65534")
        );
        let consistent = Reaped(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .args(["--", "sleep", "30"])
                .spawn()
                .unwrap(),
        );
        wait_for_exec(&consistent, "sleep");
        let peer = PeerCred {
            pid: Some(consistent.pid()),
            ..peer
        };
        let attested = attestor.attest(peer);
        assert!(attested.is_ok(), "{attested:?}");
    }

    /// Real processes with supplementary groups, from one to 10 000 (the `Groups:` line of
    /// the last spans many pages), are attested with one selector per group.
    #[test]
    #[ignore = "needs root: spawns children as nobody with chosen supplementary groups"]
    fn attests_supplementary_groups_of_child() {
        let attestor = Attestor::unix_only();
        let sixty_four: Vec<u32> = (27..91).collect();
        let many: Vec<u32> = (100_000..110_000).collect();
        for groups in [vec![27], vec![65534, 27], sixty_four, many] {
            let child = sleep_as_nobody_with_groups(&groups);
            let peer = PeerCred {
                pid: Some(child.pid()),
                uid: 65534,
                gid: 65534,
            };
            let got = attestor.attest(peer).unwrap();
            let want = with_executable(identity_selectors(65534, 65534, &groups), &which("sleep"));
            assert_same(&got, &want);
            assert!(got.contains(&sel("supplementary_gid", groups[0])));
            assert!(got.contains(&sel("supplementary_gid", groups[groups.len() - 1])));
        }
    }

    /// A process attested once (and served from the reuse cache while it runs the same
    /// program) that then execs another binary, keeping its pid and start time, is
    /// attested afresh: it gets the new program's selectors, never the first one's.
    #[test]
    fn a_process_that_execs_another_binary_gets_fresh_facts() {
        let mut child = Reaped(
            Command::new("sh")
                .args(["-c", "read line; exec sleep 30"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        wait_for_exec(&child, "sh");
        let peer = PeerCred {
            pid: Some(child.pid()),
            ..own_peer()
        };
        let identity = || identity_selectors(peer.uid, peer.gid, &own_groups());
        let attestor = Attestor::unix_only();
        let first = attestor.attest(peer).unwrap();
        assert_same(&first, &with_executable(identity(), &which("sh")));
        let again = attestor.attest(peer).unwrap();
        assert_same(&again, &first);
        assert_eq!(attestor.reuse_stats().0.hits, 1, "served from the cache");

        {
            use std::io::Write as _;
            child.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        }
        wait_for_exec(&child, "sleep");
        let after = attestor.attest(peer).unwrap();
        assert_same(&after, &with_executable(identity(), &which("sleep")));
        let (stats, entries) = attestor.reuse_stats();
        assert_eq!((stats.hits, stats.changed, entries), (1, 1, 1));
        // And the new program's facts are what is reused from now on.
        assert_same(&attestor.attest(peer).unwrap(), &after);
        assert_eq!(attestor.reuse_stats().0.hits, 2);
    }

    /// A directory above a running executable renamed: the file is the same (device,
    /// inode, size and times, the key of everything kept for it), only the path the kernel
    /// gives for it has changed, and with it the `path` selector. Neither the whole
    /// attestation kept for the connection nor the image facts kept for reuse are served
    /// under the old path: the link is read again on every call and must match.
    #[test]
    fn a_renamed_directory_above_the_executable_is_attested_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let (before, after) = (root.join("before"), root.join("after"));
        fs::create_dir(&before).unwrap();
        let program = before.join("tessera-test-sleep");
        fs::copy(which("sleep"), &program).unwrap();
        // Only a settled executable (ctime some seconds old) is kept for reuse.
        thread::sleep(Duration::from_millis(2_300));
        let child = Reaped(spawn_retrying(Command::new(&program).arg("30")));
        let pid = child.pid();
        let exe = format!("/proc/{pid}/exe");
        for _ in 0..500 {
            if fs::read_link(&exe).is_ok_and(|p| p == program) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let peer = PeerCred {
            pid: Some(pid),
            ..own_peer()
        };
        let identity = || identity_selectors(peer.uid, peer.gid, &own_groups());
        let attestor = Attestor::unix_only();
        let pin = Accepted::capture(pid).unwrap();
        let accepted = pin.process;

        let first = attestor.attest_caller(peer, Some(accepted)).unwrap();
        assert_same(&first.selectors, &with_executable(identity(), &program));
        let kept = attestor
            .attest_known(peer, Some(&pin))
            .expect("served again while nothing changed");
        assert_same(&kept.selectors, &first.selectors);

        fs::rename(&before, &after).unwrap();
        let moved = after.join("tessera-test-sleep");
        assert_eq!(fs::read_link(&exe).unwrap(), moved);
        // What the rename leaves as it was: the file, by every fact kept for it.
        assert_eq!(
            FileId::of(&File::open(&moved).unwrap()).unwrap(),
            accepted.exe,
            "the file itself is unchanged"
        );
        assert!(
            attestor.attest_known(peer, Some(&pin)).is_none(),
            "served under the old path after a rename"
        );
        let renamed = attestor.attest_caller(peer, Some(accepted)).unwrap();
        assert_same(&renamed.selectors, &with_executable(identity(), &moved));
        assert!(!renamed.selectors.contains(&sel("path", program.display())));
        // And the new path is what is served again from now on.
        assert_same(
            &attestor.attest_known(peer, Some(&pin)).unwrap().selectors,
            &renamed.selectors,
        );
    }

    /// A pid freed and given to another process (forced through `ns_last_pid`) is attested
    /// afresh: the new process never gets the selectors cached for the old one.
    #[test]
    #[ignore = "needs root: writes /proc/sys/kernel/ns_last_pid so that a child takes a pid just freed"]
    fn a_recycled_pid_is_never_served_the_cached_identity() {
        let identity = || {
            let me = own_peer();
            identity_selectors(me.uid, me.gid, &own_groups())
        };
        let attestor = Attestor::unix_only();
        let first = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = first.pid();
        let peer = PeerCred {
            pid: Some(pid),
            ..own_peer()
        };
        let first_pin = Accepted::capture(pid).unwrap();
        let first_accepted = first_pin.process;
        let before = attestor
            .attest_caller(peer, Some(first_accepted))
            .unwrap()
            .selectors;
        assert_same(&before, &with_executable(identity(), &which("sleep")));
        // The whole attestation is kept for the first instance's connection.
        assert!(attestor.attest_known(peer, Some(&first_pin)).is_some());
        drop(first); // killed and reaped: the pid is free
        // Start times count clock ticks (10 ms): let a few pass, so that the second
        // instance's start time differs from the first's.
        thread::sleep(Duration::from_millis(50));
        // Other tests fork too, so the pid may be taken first; try again.
        let second = (0..100)
            .find_map(|_| {
                fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
                // The same program as the first: only the instance tells them apart.
                let child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
                (child.pid() == pid).then_some(child)
            })
            .expect("no child took the recycled pid");
        wait_for_exec(&second, "sleep");
        // The first instance's connection, now that its pid names the second (same
        // program, same ids, same cgroup): nothing kept is served through it, and a full
        // attestation refuses it.
        assert!(attestor.attest_known(peer, Some(&first_pin)).is_none());
        assert!(attestor.attest_caller(peer, Some(first_accepted)).is_err());
        // Nor is the whole attestation kept for the first served to the second, even
        // through a directory pinned to the first with the second's facts.
        let second_pin = Accepted::capture(pid).unwrap();
        assert!(attestor.attest_known(peer, Some(&second_pin)).is_none());
        assert!(
            attestor
                .attest_known(peer, Some(&first_pin.with_process(second_pin.process)))
                .is_none()
        );
        let after = attestor.attest(peer).unwrap();
        assert_same(&after, &with_executable(identity(), &which("sleep")));
        let (stats, _) = attestor.reuse_stats();
        assert_eq!((stats.hits, stats.changed), (0, 1));
    }

    /// The cgroup hierarchy the `cgroup:` path selector comes from (see `cgroup::facts`):
    /// where it is mounted, and what its line in `/proc/<pid>/cgroup` starts with after
    /// the hierarchy number. systemd's `name=systemd` on a v1 or hybrid host, else the
    /// unified one.
    fn path_hierarchy() -> (PathBuf, &'static str) {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let find = |systemd: bool| {
            info.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mut right = right.split(' ');
                let fstype = right.next()?;
                let options = right.nth(1)?;
                let point = left.split(' ').nth(4)?;
                let wanted = if systemd {
                    fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
                } else {
                    fstype == "cgroup2"
                };
                wanted.then(|| PathBuf::from(point))
            })
        };
        find(true)
            .map(|p| (p, ":name=systemd:"))
            .or_else(|| find(false).map(|p| (p, "::")))
            .expect("no cgroup hierarchy mounted")
    }

    /// Waits until `/proc/<pid>/status` has a line satisfying `ready`.
    fn wait_for_status(pid: i32, ready: impl Fn(&str) -> bool) {
        for _ in 0..500 {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            if status.lines().any(&ready) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("process {pid} never reached the state waited for");
    }

    /// A caller attested in full is attested again from the kept attestation
    /// ([`Attestor::attest_known`]) only while every fact its selectors came from reads the
    /// same: after a move to another cgroup, `setgroups`, a changed saved uid, an `exec` of
    /// another binary, and for another instance or other peer ids, it is attested in full,
    /// and gets what that gives (new selectors, or the refusal).
    #[test]
    #[ignore = "needs root: moves a child between cgroups and has it call setgroups and setresuid"]
    fn a_known_caller_is_served_again_only_while_its_facts_read_the_same() {
        let script = "import os, sys\n\
                      sys.stdin.readline(); os.setgroups([4242])\n\
                      sys.stdin.readline(); os.setresuid(0, 0, 4343)\n\
                      sys.stdin.readline(); os.execv('/bin/sleep', ['sleep', '30'])\n";
        let mut child = Reaped(
            Command::new("python3")
                .args(["-c", script])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let pid = child.pid();
        // `python3` on PATH may be a wrapper that execs the interpreter.
        for _ in 0..500 {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            if exe
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python")
            {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The interpreter is running (it may still be starting up: reading stdin waits).
        thread::sleep(Duration::from_millis(200));
        let mut step = || {
            use std::io::Write as _;
            child.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        };
        let peer = PeerCred {
            pid: Some(pid),
            ..own_peer()
        };
        let attestor = Attestor::new();
        let pin = Accepted::capture(pid).unwrap();
        let accepted = pin.process;
        let known = |accepted| attestor.attest_known(peer, Some(&pin.with_process(accepted)));
        let full = |accepted| attestor.attest_caller(peer, Some(accepted));
        let known_count = || attestor.reuse_stats().0.known;

        // Nothing kept yet; then the full attestation is served again, with the lineage.
        assert!(known(accepted).is_none());
        let first = full(accepted).unwrap();
        let again = known(accepted).expect("served again");
        assert_same(&again.selectors, &first.selectors);
        assert_eq!(again.lineage.caller(), first.lineage.caller());
        assert_eq!(known_count(), 1);
        // Kept for this instance and these peer ids only.
        let other_instance = ProcessAtAccept {
            start_time: accepted.start_time + 1,
            ..accepted
        };
        assert!(known(other_instance).is_none());
        let other_ids = PeerCred {
            uid: peer.uid + 1,
            ..peer
        };
        assert!(attestor.attest_known(other_ids, Some(&pin)).is_none());
        assert!(attestor.attest_known(peer, None).is_none());

        // Moved to another cgroup: attested in full, into the new cgroup's selectors.
        let (mount, line) = path_hierarchy();
        let cgroup = mount.join(format!("tessera-known-{pid}"));
        fs::create_dir(&cgroup).unwrap();
        let home = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let home = home
            .lines()
            .find_map(|l| Some(l.split_once(line)?.1))
            .map(|p| mount.join(p.trim_start_matches('/')))
            .unwrap();
        fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
        assert!(known(accepted).is_none(), "served after a cgroup move");
        let moved = full(accepted).unwrap();
        let cgroups =
            cgroup::selectors_of(&fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap())
                .unwrap();
        assert!(cgroups.iter().all(|s| moved.selectors.contains(s)));
        assert!(!cgroups.iter().all(|s| first.selectors.contains(s)));
        assert_same(&known(accepted).unwrap().selectors, &moved.selectors);
        fs::write(home.join("cgroup.procs"), pid.to_string()).unwrap();
        fs::remove_dir(&cgroup).unwrap();
        let back = full(accepted).unwrap();
        assert_same(&back.selectors, &first.selectors);

        // setgroups: attested in full, with the new group.
        step();
        wait_for_status(pid, |l| l.starts_with("Groups:") && l.contains("4242"));
        assert!(known(accepted).is_none(), "served after setgroups");
        let grouped = full(accepted).unwrap();
        assert!(grouped.selectors.contains(&sel("supplementary_gid", 4242)));
        assert_same(&known(accepted).unwrap().selectors, &grouped.selectors);

        // A saved uid other than the peer's: attested in full, which refuses it.
        step();
        wait_for_status(pid, |l| l.starts_with("Uid:") && l.contains("4343"));
        assert!(known(accepted).is_none(), "served after setresuid");
        assert!(matches!(
            full(accepted),
            Err(AttestationError::UidMismatch { .. })
        ));

        // exec of another binary (the saved uid is reset by it): the connection made by the
        // first program is refused, a new connection is attested in full as `sleep`.
        step();
        wait_for_exec(&child, "sleep");
        assert!(known(accepted).is_none(), "served after exec");
        assert!(matches!(
            full(accepted),
            Err(AttestationError::ExecutedSinceConnect { .. })
        ));
        let reconnected = ProcessAtAccept::capture(pid).unwrap();
        assert!(known(reconnected).is_none());
        let execd = full(reconnected).unwrap();
        assert!(
            execd
                .selectors
                .contains(&sel("path", which("sleep").display()))
        );
        assert_same(&known(reconnected).unwrap().selectors, &execd.selectors);
    }

    /// Debug-build timing of one attestation (unix + cgroup) of a running `sleep`: every
    /// call afresh, with the reuse cache, and the ancestry walk alone. Prints microseconds;
    /// run with `--ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check: run by hand"]
    fn time_attestation_with_and_without_reuse() {
        let child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        wait_for_exec(&child, "sleep");
        let peer = PeerCred {
            pid: Some(child.pid()),
            ..own_peer()
        };
        const N: u32 = 2000;
        let time = |attestor: &Attestor| {
            attestor.attest_caller(peer, None).unwrap();
            let mut samples: Vec<u128> = (0..N)
                .map(|_| {
                    let start = SystemTime::now();
                    attestor.attest_caller(peer, None).unwrap();
                    start.elapsed().unwrap().as_micros()
                })
                .collect();
            samples.sort_unstable();
            (samples[samples.len() / 2], samples[samples.len() * 9 / 10])
        };
        let fresh = Attestor::without_reuse(&WorkloadAttestorKind::ALL);
        let reused = Attestor::new();
        for round in 0..3 {
            let (f50, f90) = time(&fresh);
            let (r50, r90) = time(&reused);
            let mut walks: Vec<u128> = (0..N)
                .map(|_| {
                    let start = SystemTime::now();
                    let dir = ProcDir::open(peer.pid.unwrap()).unwrap();
                    let (start_time, ppid) = dir.start_time_and_ppid().unwrap();
                    std::hint::black_box(lineage::ancestors(ppid, start_time));
                    start.elapsed().unwrap().as_micros()
                })
                .collect();
            walks.sort_unstable();
            // The whole attestation kept (what a later call on a Workload API connection
            // costs when nothing changed).
            let accepted = Accepted::capture(peer.pid.unwrap()).unwrap();
            reused.attest_caller(peer, Some(accepted.process)).unwrap();
            let mut known: Vec<u128> = (0..N)
                .map(|_| {
                    let start = SystemTime::now();
                    std::hint::black_box(reused.attest_known(peer, Some(&accepted)).unwrap());
                    start.elapsed().unwrap().as_micros()
                })
                .collect();
            known.sort_unstable();
            println!(
                "round {round}: full p50 {f50} µs p90 {f90} µs; reused p50 {r50} µs p90 {r90} µs; \
                 ancestry walk p50 {} µs; kept attestation p50 {} µs",
                walks[walks.len() / 2],
                known[known.len() / 2]
            );
        }
        assert!(reused.reuse_stats().0.hits >= u64::from(N));
    }
}
