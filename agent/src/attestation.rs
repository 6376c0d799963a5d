//! Workload attestation for local callers: turns what the kernel says about the peer of a
//! Workload API connection into a [`SelectorSet`] of `unix:` selectors.
//!
//! Workloads are untrusted, so every selector comes from the kernel: the peer credentials
//! the kernel recorded for the socket (`SO_PEERCRED`: pid, uid, gid) and procfs for that
//! pid (executable path and contents, supplementary groups). Nothing comes from memory the
//! process can write (argv, environment). [`Attestor::attest`] produces
//! `uid`, `gid`, `user`, `group`, `supplementary_gid`, `path` and `sha256` selectors.
//! `user` and `group` are omitted when the id has no name. `path` and `sha256` are omitted
//! when the executable has been deleted.
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
//! 5. require the real uid and gid in `/proc/<pid>/status` to equal the peer credentials.
//!
//! Steps 1–4 make sure every fact came from one process instance that was alive for the
//! whole read. Step 5 ties that instance to the caller. A pid is freed only when its process
//! is reaped, so as long as the instance is alive the number is its own. The kernel recorded
//! the peer credentials at `connect()`, though, and a pid recycled *before* step 1 would
//! pass steps 1–4. Step 5 narrows that to a process with the caller's own uid and gid, from
//! which the caller gains nothing its own uid could not get. A process whose real and
//! effective ids differ (a running setuid/setgid program) is refused, because
//! `SO_PEERCRED` reports the effective ids.
//!
//! Two residual limits are inherent to peer credentials and not solved here. The socket
//! may be used by a process other than the one that connected (fd passing, fork). A hash
//! describes the bytes the *agent* read, which a filesystem the caller controls (FUSE) can
//! serve differently from what the kernel executed. `path` selectors under root-owned
//! directories are the robust ones.
//!
//! Callers run [`Attestor::attest`] on a blocking thread and should bound it with a timeout:
//! it reads procfs, may hash a large binary, and resolves names through NSS.

mod procfs;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use common::{Selector, SelectorError, SelectorSet};
use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};

use self::procfs::{ExeLink, FileId, PidFd, ProcDir, ProcfsParseError, Status};

/// Most executables whose hashes we remember. A node runs far fewer distinct binaries than
/// this; the bound only keeps a churn of short-lived binaries from growing memory.
const HASH_CACHE_CAPACITY: usize = 1024;

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
    /// The process ran `exec`, or its executable file was modified, while being attested.
    #[error("executable of process {pid} changed during attestation")]
    ExecutableChanged {
        /// Pid from the peer credentials.
        pid: i32,
    },
    /// The real uid in `/proc/<pid>/status` differs from the peer credentials: the process
    /// changed identity (or runs setuid) since connecting, or the pid belongs to another
    /// process.
    #[error("process {pid} has real uid {proc_uid}, peer credentials say {peer_uid}")]
    UidMismatch {
        /// Pid from the peer credentials.
        pid: i32,
        /// Uid from the peer credentials.
        peer_uid: u32,
        /// Real uid from procfs.
        proc_uid: u32,
    },
    /// As [`Self::UidMismatch`], for the real gid.
    #[error("process {pid} has real gid {proc_gid}, peer credentials say {peer_gid}")]
    GidMismatch {
        /// Pid from the peer credentials.
        pid: i32,
        /// Gid from the peer credentials.
        peer_gid: u32,
        /// Real gid from procfs.
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
    /// The executable's path is not valid UTF-8, so it cannot be a selector value. Replacing
    /// the bad bytes would let two different paths produce the same selector.
    #[error("executable path of process {pid} is not UTF-8")]
    ExePathNotUtf8 {
        /// Pid from the peer credentials.
        pid: i32,
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
    /// An attested value is not a valid selector value (e.g. a user name with characters
    /// selectors forbid). The value itself is only in the source, which may quote it.
    #[error("attested {key} is not a valid selector value")]
    Selector {
        /// The selector key, e.g. `"user"`.
        key: &'static str,
        /// Why the selector type rejected it.
        source: Arc<SelectorError>,
    },
}

/// Facts gathered from one pinned process instance.
#[derive(Debug)]
struct Evidence {
    status: Status,
    /// `None` when the executable was deleted: no path to name, no hash to attest.
    executable: Option<Executable>,
}

#[derive(Debug)]
struct Executable {
    path: PathBuf,
    sha256: [u8; 32],
}

/// Attests local callers. Holds a cache of executable hashes, so share one instance (it is
/// `Sync`) rather than creating one per call.
#[derive(Debug, Default)]
pub(crate) struct Attestor {
    hashes: Mutex<HashCache>,
}

/// Executable hashes keyed by file identity, evicted oldest-first past
/// [`HASH_CACHE_CAPACITY`].
#[derive(Debug, Default)]
struct HashCache {
    digests: HashMap<FileId, [u8; 32]>,
    /// Insertion order, oldest first; holds exactly the keys of `digests`.
    order: VecDeque<FileId>,
    #[cfg(test)]
    hits: u64,
}

impl HashCache {
    fn get(&mut self, id: &FileId) -> Option<[u8; 32]> {
        let found = self.digests.get(id).copied();
        #[cfg(test)]
        if found.is_some() {
            self.hits += 1;
        }
        found
    }

    fn insert(&mut self, id: FileId, digest: [u8; 32]) {
        // Two concurrent misses for one file both hash it; the second insert is a no-op.
        if self.digests.contains_key(&id) {
            return;
        }
        while self.digests.len() >= HASH_CACHE_CAPACITY {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.digests.remove(&oldest);
        }
        self.digests.insert(id, digest);
        self.order.push_back(id);
    }
}

impl Attestor {
    /// An attestor with an empty hash cache.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Attests the process behind `peer` and returns its selectors.
    ///
    /// Blocking (reads /proc and may hash a binary): callers run it on spawn_blocking.
    pub(crate) fn attest(&self, peer: PeerCred) -> Result<SelectorSet, AttestationError> {
        let pid = match peer.pid {
            Some(pid) if pid > 0 => pid,
            _ => return Err(AttestationError::NoPid),
        };
        let _span = tracing::debug_span!("attest", pid, uid = peer.uid, gid = peer.gid).entered();
        let evidence = self.gather(pid, peer)?;
        let selectors = build_selectors(pid, peer, &evidence)?;
        tracing::debug!(
            selectors = selectors.iter().count(),
            has_executable = evidence.executable.is_some(),
            "attested"
        );
        Ok(selectors)
    }

    /// Pins one process instance, reads what we need through the pins, then checks the pins
    /// still hold and the process still has the caller's ids. See the module docs for why
    /// each step is there. The order matters.
    fn gather(&self, pid: i32, peer: PeerCred) -> Result<Evidence, AttestationError> {
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

        // 2. Gather, all through the pinned directory. The executable is opened before its
        //    link is read, and its identity is compared again in step 3, so an `exec`
        //    between the two reads cannot pair one program's path with another's hash.
        let (mut exe, exe_id) = proc_dir.open_exe()?;
        let executable = match proc_dir.exe_link()? {
            ExeLink::Path(path) => Some(Executable {
                path,
                sha256: self.sha256(pid, &mut exe, exe_id)?,
            }),
            ExeLink::Detached => {
                tracing::debug!(
                    pid,
                    "executable deleted or unnamed; omitting path and sha256"
                );
                None
            }
        };
        let status = proc_dir.status()?;

        // 3. Re-check the pins. The pidfd fails once the process is reaped. The directory
        //    fd read fails the same way on every kernel. An equal start time rules out a
        //    swap we somehow missed. The exe identity rules out an `exec` during step 2.
        if let Some(pidfd) = &pidfd {
            pidfd.check_alive()?;
        }
        if proc_dir.start_time()? != start_time {
            return Err(AttestationError::PidReused { pid });
        }
        if proc_dir.exe_id()? != exe_id {
            return Err(AttestationError::ExecutableChanged { pid });
        }

        // 4. Tie the instance to the caller. The kernel's peer credentials are authoritative
        //    for the selectors. procfs must agree with them, or the process is not (or no
        //    longer) the one that connected.
        if status.real_uid != peer.uid {
            return Err(AttestationError::UidMismatch {
                pid,
                peer_uid: peer.uid,
                proc_uid: status.real_uid,
            });
        }
        if status.real_gid != peer.gid {
            return Err(AttestationError::GidMismatch {
                pid,
                peer_gid: peer.gid,
                proc_gid: status.real_gid,
            });
        }
        Ok(Evidence { status, executable })
    }

    /// Hash of the opened executable, from the cache when its identity is known.
    fn sha256(&self, pid: i32, exe: &mut File, id: FileId) -> Result<[u8; 32], AttestationError> {
        if let Some(digest) = self.cache().get(&id) {
            return Ok(digest);
        }
        // Hash without holding the lock: a large binary must not stall other attestations.
        let digest = procfs::sha256(exe).map_err(|e| procfs::io_error(pid, "executable", e))?;
        // A write during the read would leave a hash of mixed contents. Such a write changes
        // size, mtime or ctime, so compare the identity again.
        let after = FileId::of(exe).map_err(|e| procfs::io_error(pid, "executable", e))?;
        if after != id {
            return Err(AttestationError::ExecutableChanged { pid });
        }
        if id.settled(SystemTime::now()) {
            self.cache().insert(id, digest);
        }
        Ok(digest)
    }

    fn cache(&self) -> MutexGuard<'_, HashCache> {
        // Poisoning is harmless here: nothing that can panic runs under the lock, and a
        // cache entry is written whole.
        self.hashes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (entries, hits) of the hash cache.
    #[cfg(test)]
    fn cache_stats(&self) -> (usize, u64) {
        let cache = self.cache();
        (cache.digests.len(), cache.hits)
    }
}

/// Builds the selector set. uid and gid come from the peer credentials; procfs has been
/// checked to agree with them.
fn build_selectors(
    pid: i32,
    peer: PeerCred,
    evidence: &Evidence,
) -> Result<SelectorSet, AttestationError> {
    let mut set = SelectorSet::default();
    insert(&mut set, "uid", peer.uid)?;
    insert(&mut set, "gid", peer.gid)?;
    let user =
        User::from_uid(Uid::from_raw(peer.uid)).map_err(|source| AttestationError::NameLookup {
            what: "user",
            id: peer.uid,
            source,
        })?;
    if let Some(user) = user {
        insert(&mut set, "user", user.name)?;
    }
    let group = Group::from_gid(Gid::from_raw(peer.gid)).map_err(|source| {
        AttestationError::NameLookup {
            what: "group",
            id: peer.gid,
            source,
        }
    })?;
    if let Some(group) = group {
        insert(&mut set, "group", group.name)?;
    }
    for gid in &evidence.status.groups {
        insert(&mut set, "supplementary_gid", gid)?;
    }
    if let Some(executable) = &evidence.executable {
        let path = executable
            .path
            .to_str()
            .ok_or(AttestationError::ExePathNotUtf8 { pid })?;
        insert(&mut set, "path", path)?;
        insert(&mut set, "sha256", hex::encode(executable.sha256))?;
    }
    Ok(set)
}

fn insert(
    set: &mut SelectorSet,
    key: &'static str,
    value: impl fmt::Display,
) -> Result<(), AttestationError> {
    let selector = Selector::unix(key, value).map_err(|source| AttestationError::Selector {
        key,
        source: Arc::new(source),
    })?;
    set.insert(selector);
    Ok(())
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

    fn sel(key: &str, value: impl fmt::Display) -> Selector {
        Selector::unix(key, value).unwrap()
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
    fn attests_current_process() {
        let peer = own_peer();
        let got = Attestor::new().attest(peer).unwrap();
        let exe = std::env::current_exe().unwrap();
        let want = with_executable(identity_selectors(peer.uid, peer.gid, &own_groups()), &exe);
        assert_same(&got, &want);
        if peer.uid == 0 {
            assert!(got.contains(&sel("user", "root")));
        }
    }

    #[test]
    fn missing_pid_is_no_pid() {
        let attestor = Attestor::new();
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
        let attestor = Attestor::new();
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
        let attestor = Attestor::new();
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
        let result = Attestor::new().attest(peer);
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
        let result = Attestor::new().attest(peer);
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
        let attestor = Attestor::new();
        let first = attestor.attest(peer).unwrap();
        assert_eq!(attestor.cache_stats(), (1, 0));
        let second = attestor.attest(peer).unwrap();
        assert_eq!(attestor.cache_stats(), (1, 1));
        assert_same(&second, &first);
        assert!(first.contains(&sel("sha256", file_sha256(&which("sleep")))));
    }

    #[test]
    fn hash_cache_is_bounded() {
        let mut cache = HashCache::default();
        let id = |n: u64| {
            let file = tempfile::tempfile().unwrap();
            file.set_len(n).unwrap();
            FileId::of(&file).unwrap()
        };
        let ids: Vec<FileId> = (0..(HASH_CACHE_CAPACITY as u64 + 3)).map(id).collect();
        for (n, id) in ids.iter().enumerate() {
            cache.insert(*id, [n as u8; 32]);
        }
        assert_eq!(cache.digests.len(), HASH_CACHE_CAPACITY);
        assert_eq!(cache.order.len(), HASH_CACHE_CAPACITY);
        // Oldest evicted first.
        let got: Vec<_> = ids.iter().take(4).map(|id| cache.get(id)).collect();
        assert_eq!(got, [None, None, None, Some([3; 32])]);
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
        let attestor = Attestor::new();

        let fresh = attestor.attest(peer).unwrap();
        let identity = || identity_selectors(peer.uid, peer.gid, &own_groups());
        assert_same(&fresh, &with_executable(identity(), &copy));
        assert_eq!(attestor.cache_stats(), (0, 0));

        fs::remove_file(&copy).unwrap();
        let deleted = attestor.attest(peer).unwrap();
        assert_same(&deleted, &identity());
    }
}
