//! The Unix attestors: `unix:` selectors from the kernel's peer credentials, the user and
//! group databases and `/proc/<pid>/status` ([`UnixAttestor`]), and from the executable
//! ([`ExecutableAttestor`]), all read through the pinned process (see the parent module
//! for the pins and for why names and paths may be omitted). `workload_attestors = ["unix"]`
//! runs both. They are two because they differ in what their output depends on: ids,
//! names and groups can change under a running program (`setgroups`, the user database),
//! while the executable's path and hash are a function of the process image alone, so only
//! the second is [reusable](super::WorkloadAttestor::reusable).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use common::{Selector, SelectorKind, SelectorSet, UnixKey};
use nix::unistd::{Gid, Group, Uid, User};

use super::procfs::{self, ExeLink, FileId};
use super::{AttestationError, Input, PinnedProcess, WorkloadAttestor};

/// Most executables whose hashes we remember. A node runs far fewer distinct binaries than
/// this; the bound only keeps a churn of short-lived binaries from growing memory.
const HASH_CACHE_CAPACITY: usize = 1024;
/// The executable a process runs: its path and the SHA-256 of its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Executable {
    pub(crate) path: PathBuf,
    pub(crate) sha256: [u8; 32],
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

/// Everything attestation learned about one caller, before it becomes selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// From the peer credentials.
    pub(crate) uid: u32,
    /// From the peer credentials.
    pub(crate) gid: u32,
    /// Name of `uid` in the user database; `None` when it has none.
    pub(crate) user: Option<String>,
    /// Name of `gid` in the group database; `None` when it has none.
    pub(crate) group: Option<String>,
    /// From `/proc/<pid>/status`, in kernel order; may hold the primary gid and repeats.
    pub(crate) supplementary_gids: Vec<u32>,
    /// `None` when the executable was deleted.
    pub(crate) executable: Option<Executable>,
}

/// The selectors for `facts`: the one mapping from facts to the shared vocabulary.
///
/// Numbers and the digest always have a selector form; if one is refused, that is a bug,
/// and the caller is refused rather than attested with facts missing. Names and the path
/// are omitted when they have no selector form (see the module docs for why).
pub(crate) fn selectors(facts: &Facts) -> Result<SelectorSet, AttestationError> {
    let mut set = SelectorSet::new();
    set.insert(required(UnixKey::Uid, facts.uid)?);
    set.insert(required(UnixKey::Gid, facts.gid)?);
    for gid in &facts.supplementary_gids {
        set.insert(required(UnixKey::SupplementaryGid, gid)?);
    }
    set.extend(facts.user.as_deref().and_then(|n| name(UnixKey::User, n)));
    set.extend(facts.group.as_deref().and_then(|n| name(UnixKey::Group, n)));
    if let Some(executable) = &facts.executable {
        set.extend(executable_selectors(executable)?);
    }
    Ok(set)
}

/// The `sha256` and `path` selectors of an executable (part of [`selectors`]).
fn executable_selectors(executable: &Executable) -> Result<SelectorSet, AttestationError> {
    let mut set = SelectorSet::new();
    set.insert(required(UnixKey::Sha256, hex::encode(executable.sha256))?);
    match executable.path.to_str() {
        Some(path) => set.extend(optional(UnixKey::Path, path)),
        // Replacing the bad bytes would let two different paths produce one selector.
        None => tracing::debug!("executable path is not UTF-8; omitting its selector"),
    }
    Ok(set)
}

/// A selector for a fact that always has one.
fn required(key: UnixKey, value: impl fmt::Display) -> Result<Selector, AttestationError> {
    Selector::unix(key, value).map_err(|source| {
        tracing::error!(%key, error = %source, "BUG: attested value refused by the selector vocabulary");
        AttestationError::Selector {
            key: key.into(),
            source: Arc::new(source),
        }
    })
}

/// A selector for a user or group name, or `None` when it has no selector form.
fn name(key: UnixKey, name: &str) -> Option<Selector> {
    // nix decodes names with `to_string_lossy`, which leaves U+FFFD where the bytes were
    // not UTF-8: two different names could then yield one selector.
    if name.contains(char::REPLACEMENT_CHARACTER) {
        tracing::debug!(%key, "name was not valid UTF-8; omitting its selector");
        return None;
    }
    optional(key, name)
}

/// A selector for a name or path, or `None` when it has no selector form.
fn optional(key: UnixKey, value: &str) -> Option<Selector> {
    Selector::unix(key, value)
        .inspect_err(|error| tracing::debug!(%key, %error, "no selector form; omitting it"))
        .ok()
}

/// The name of `uid` in the user database, `None` when it has none.
fn user_name(uid: u32) -> Result<Option<String>, AttestationError> {
    let user =
        User::from_uid(Uid::from_raw(uid)).map_err(|source| AttestationError::NameLookup {
            what: "user",
            id: uid,
            source,
        })?;
    Ok(user.map(|u| u.name))
}

/// The name of `gid` in the group database, `None` when it has none.
fn group_name(gid: u32) -> Result<Option<String>, AttestationError> {
    let group =
        Group::from_gid(Gid::from_raw(gid)).map_err(|source| AttestationError::NameLookup {
            what: "group",
            id: gid,
            source,
        })?;
    Ok(group.map(|g| g.name))
}

/// Attests the `unix` kind's ids, names and supplementary groups: `uid`, `gid`, `user`,
/// `group`, `supplementary_gid`. Read on every call (not reusable: the groups and the
/// user database can change while the process image stays the same).
#[derive(Debug, Default)]
pub(crate) struct UnixAttestor;

impl WorkloadAttestor for UnixAttestor {
    fn kinds(&self) -> &'static [SelectorKind] {
        &[SelectorKind::Unix]
    }

    fn input(&self) -> Option<Input> {
        // The peer ids, their names and the groups from `status`.
        Some(Input::Status)
    }

    fn attest(&self, process: &PinnedProcess<'_>) -> Result<SelectorSet, AttestationError> {
        let facts = Facts {
            // The peer credentials, which the pinning checks procfs agrees with.
            uid: process.peer.uid,
            gid: process.peer.gid,
            user: user_name(process.peer.uid)?,
            group: group_name(process.peer.gid)?,
            supplementary_gids: process.status.groups.clone(),
            executable: None,
        };
        let set = selectors(&facts)?;
        tracing::debug!(
            selectors = set.len(),
            supplementary_groups = facts.supplementary_gids.len(),
            "unix attested"
        );
        Ok(set)
    }
}

/// Attests the `unix` kind's `path` and `sha256` of the executable. Holds a cache of
/// executable hashes, so share one instance (it is `Sync`) rather than creating one per
/// call. Reusable: its selectors are a function of the executable's identity and `exe`
/// link alone, both part of the reuse key.
#[derive(Debug, Default)]
pub(crate) struct ExecutableAttestor {
    hashes: Mutex<HashCache>,
}

impl WorkloadAttestor for ExecutableAttestor {
    fn kinds(&self) -> &'static [SelectorKind] {
        &[SelectorKind::Unix]
    }

    fn attest(&self, process: &PinnedProcess<'_>) -> Result<SelectorSet, AttestationError> {
        let pid = process.pid;
        // The executable was opened by the pinning before its link was read, and its
        // identity is compared again after every attestor ran, so an `exec` between the
        // two reads cannot pair one program's path with another's hash.
        match process.exe_link {
            ExeLink::Path(path) => {
                let executable = Executable {
                    path: path.clone(),
                    sha256: self.sha256(pid, process.exe, process.exe_id)?,
                };
                let set = executable_selectors(&executable)?;
                tracing::debug!(selectors = set.len(), "executable attested");
                Ok(set)
            }
            ExeLink::Detached => {
                tracing::debug!(
                    pid,
                    "executable deleted or unnamed; omitting path and sha256"
                );
                Ok(SelectorSet::new())
            }
        }
    }

    fn input(&self) -> Option<Input> {
        // The executable's identity, link and contents: an image fact.
        Some(Input::Image)
    }
}

impl ExecutableAttestor {
    /// Hash of the opened executable, from the cache when its identity is known.
    fn sha256(
        &self,
        pid: i32,
        exe: &std::fs::File,
        id: FileId,
    ) -> Result<[u8; 32], AttestationError> {
        if let Some(digest) = self.cache().get(&id) {
            return Ok(digest);
        }
        // Hash without holding the lock: a large binary must not stall other attestations.
        // The file was opened by the pinning at offset 0 and is read only here.
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
    pub(crate) fn cache_stats(&self) -> (usize, u64) {
        let cache = self.cache();
        (cache.digests.len(), cache.hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
