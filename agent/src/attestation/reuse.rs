//! Reuse of attestation results for a process image already attested.
//!
//! A workload calls the Workload API many times over its life (a new connection per fetch,
//! every open stream attested again on each change and every 30 s), and most of what
//! attestation establishes describes the program it runs, which has not changed since the
//! last call. [`ReuseCache`] remembers, per pid, the selectors of the attestors whose output
//! is a pure function of the process image ([`WorkloadAttestor::reusable`]), under an
//! [`ImageKey`]: pid, start time (`/proc/<pid>/stat`), the executable's device, inode,
//! size, mtime and ctime, where the `exe` link points, and the peer uid and gid.
//!
//! **Every call still reads the key.** The pipeline pins the process and reads the key
//! through the pins on every call (pidfd, `/proc/<pid>` directory fd, start time, the
//! executable's identity and link), runs every attestor that is not reusable as before
//! (`/proc/<pid>/status` ids and groups, user and group names, the cgroup file), walks the
//! caller's ancestry, and checks the pins again afterwards. Only a reusable attestor's run
//! is skipped, and only when the key read now equals the stored one. When it differs, the
//! entry is not used, the log says which facts changed since the last attestation, and the
//! process is attested afresh.
//!
//! **Why this is exactly as safe as attesting afresh.** A reusable attestor's selectors are,
//! by its contract, a function of the key alone; serving them is then serving what a fresh
//! run would compute, provided the key is the process's key *now*. It is: it is read
//! through the same pins as every other fact, in the same call, and the pins are checked
//! again after (start time and executable identity unchanged, pidfd alive), exactly as
//! today's facts are. In particular:
//!
//! - *exec after connect*: an `exec` of another file changes the executable's identity
//!   (another inode, or another device), so the key differs and nothing is reused; the
//!   check that the program is still the one accepted on the connection runs on every call
//!   as before and refuses it anyway. An `exec` of the very same file keeps the key and
//!   would get the same selectors afresh.
//! - *pid reuse*: a recycled pid mostly belongs to a process with another start time, so
//!   the key differs. Start times count clock ticks, though, and a pid freed and taken
//!   again within one tick keeps it (the unit test forcing reuse through `ns_last_pid`
//!   sees that): then the executable's identity and link still differ unless the new
//!   process runs the very same file as the same user, and in that case it gets exactly
//!   what a fresh run computes for it, since the selectors depend on nothing else.
//! - *in-place binary replacement*: writing into the executable changes its size or mtime
//!   and always its ctime (which no unprivileged caller can set back), renaming another
//!   file over it makes a new inode, and renaming or unlinking it changes what the `exe`
//!   link shows; each changes the key. A write within one timestamp granularity of the
//!   last change could keep size, mtime and ctime: like the executable-hash cache (the
//!   same assumption, made today), an entry is stored only once the file's ctime is
//!   [settled](super::procfs::FileId::settled), so such a write cannot go unnoticed.
//!
//! **Whole attestations.** Beside the reusable attestors' selectors, an entry keeps the
//! last full attestation of the process ([`Known`]: every attestor's selectors and the
//! `status` and cgroup text they were computed from). [`super::Attestor::attest_known`]
//! serves it again for a call from the same instance, within [`KNOWN_MAX_AGE`], when those
//! facts read the same through a fresh `/proc/<pid>` pin; see there for why that gives
//! what a full attestation would.
//!
//! The cache holds at most [`CAPACITY`] processes (oldest stored evicted first), so a churn
//! of short-lived callers cannot grow it.
//!
//! [`WorkloadAttestor::reusable`]: super::WorkloadAttestor::reusable

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use common::SelectorSet;

use super::procfs::{ExeLink, FileId, Status};

/// Most processes whose results are kept.
pub(crate) const CAPACITY: usize = 1024;

/// Everything that identifies the process image an attestation described. Read afresh,
/// through the pins, on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageKey {
    /// The pid from the peer credentials.
    pub(crate) pid: i32,
    /// Its start time (`/proc/<pid>/stat`, clock ticks since boot).
    pub(crate) start_time: u64,
    /// The identity of the file it runs.
    pub(crate) exe: FileId,
    /// Where its `exe` link points.
    pub(crate) exe_link: ExeLink,
    /// The peer uid.
    pub(crate) uid: u32,
    /// The peer gid.
    pub(crate) gid: u32,
}

impl ImageKey {
    /// The names of the components that differ from `other`'s, for the log.
    fn changes(&self, other: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.start_time != other.start_time {
            changed.push("start time");
        }
        if self.exe != other.exe {
            changed.push("executable");
        }
        if self.exe_link != other.exe_link {
            changed.push("executable path");
        }
        if (self.uid, self.gid) != (other.uid, other.gid) {
            changed.push("uid/gid");
        }
        changed
    }
}

/// The stored results of one process: the selectors of each reusable attestor, in the
/// pipeline's order of the reusable attestors, and the whole attestation.
#[derive(Debug)]
struct Entry {
    key: ImageKey,
    selectors: Vec<SelectorSet>,
    known: Option<Known>,
}

/// How long a whole attestation may be served again ([`ReuseCache::known`]): the most
/// that the user and group names (and the agent's own cgroup hierarchies), which the quick
/// check does not read again, may lag behind their source.
pub(crate) const KNOWN_MAX_AGE: Duration = Duration::from_secs(30);

/// A whole attestation of one process (every attestor's selectors) and the procfs facts
/// they were computed from besides the [`ImageKey`], kept so that the next call can be
/// checked against procfs alone ([`super::Attestor::attest_known`]).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// `/proc/<pid>/status` as read for it (every uid and gid, the groups).
    pub(crate) status: Status,
    /// `/proc/<pid>/cgroup` as read for it (`None`: no attestor read it).
    pub(crate) cgroup: Option<String>,
    /// Every attestor's selectors, merged.
    pub(crate) selectors: SelectorSet,
    /// When it was made.
    pub(crate) at: Instant,
}

#[derive(Debug, Default)]
struct Entries {
    by_pid: HashMap<i32, Entry>,
    /// Pids in the order stored, oldest first; holds exactly the keys of `by_pid`.
    order: VecDeque<i32>,
    #[cfg(test)]
    stats: Stats,
}

/// What the cache did, for tests.
#[cfg(test)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Lookups served from an entry.
    pub(crate) hits: u64,
    /// Lookups that found an entry for the pid under another key.
    pub(crate) changed: u64,
    /// Whole attestations found by [`ReuseCache::known`] (served only if the facts read
    /// again agree).
    pub(crate) known: u64,
}

/// Attestation results by process image, bounded to [`CAPACITY`] processes. `Sync`; shared
/// by every call of one [`super::Attestor`].
#[derive(Debug, Default)]
pub(crate) struct ReuseCache {
    entries: Mutex<Entries>,
}

impl ReuseCache {
    /// The stored selectors of the reusable attestors for exactly `key`. An entry for the
    /// same pid under another key is dropped, and the log names what changed.
    pub(crate) fn get(&self, key: &ImageKey) -> Option<Vec<SelectorSet>> {
        let mut entries = self.lock();
        let entry = entries.by_pid.get(&key.pid)?;
        if entry.key == *key {
            #[cfg(test)]
            {
                entries.stats.hits += 1;
            }
            return entries.by_pid.get(&key.pid).map(|e| e.selectors.clone());
        }
        let changed = key.changes(&entry.key).join(", ");
        tracing::debug!(
            pid = key.pid,
            %changed,
            "facts changed since the last attestation; attesting afresh"
        );
        entries.remove(key.pid);
        #[cfg(test)]
        {
            entries.stats.changed += 1;
        }
        None
    }

    /// The whole attestation stored for the process `pid` whose start time, executable
    /// and peer ids are the ones given, if made less than [`KNOWN_MAX_AGE`] before `now`,
    /// and where its `exe` link pointed.
    pub(crate) fn known(
        &self,
        pid: i32,
        start_time: u64,
        exe: FileId,
        (uid, gid): (u32, u32),
        now: Instant,
    ) -> Option<(ExeLink, Known)> {
        let entries = self.lock();
        let entry = entries.by_pid.get(&pid)?;
        let k = &entry.key;
        let known = entry.known.as_ref().filter(|known| {
            (k.start_time, k.exe, k.uid, k.gid) == (start_time, exe, uid, gid)
                && now.saturating_duration_since(known.at) < KNOWN_MAX_AGE
        })?;
        let found = (k.exe_link.clone(), known.clone());
        drop(entries);
        #[cfg(test)]
        {
            self.lock().stats.known += 1;
        }
        Some(found)
    }

    /// Stores the selectors the reusable attestors produced for `key` and the whole
    /// attestation, once the executable is settled (see the module docs); a later
    /// [`Self::get`] with an equal key returns the first, [`Self::known`] the second.
    pub(crate) fn insert(
        &self,
        key: ImageKey,
        selectors: Vec<SelectorSet>,
        known: Option<Known>,
        now: SystemTime,
    ) {
        if !key.exe.settled(now) {
            return;
        }
        let mut entries = self.lock();
        let pid = key.pid;
        if let Some(entry) = entries.by_pid.get_mut(&pid) {
            *entry = Entry {
                key,
                selectors,
                known,
            };
            return;
        }
        while entries.by_pid.len() >= CAPACITY {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.by_pid.remove(&oldest);
        }
        entries.by_pid.insert(
            pid,
            Entry {
                key,
                selectors,
                known,
            },
        );
        entries.order.push_back(pid);
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Poisoning is harmless: nothing that can panic runs under the lock, and an entry is
        // written whole.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counters and number of entries.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> (Stats, usize) {
        let entries = self.lock();
        (entries.stats, entries.by_pid.len())
    }
}

impl Entries {
    fn remove(&mut self, pid: i32) {
        if self.by_pid.remove(&pid).is_some() {
            self.order.retain(|&p| p != pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: i32, file: &std::fs::File) -> ImageKey {
        ImageKey {
            pid,
            start_time: 7,
            exe: FileId::of(file).unwrap(),
            exe_link: ExeLink::Path("/usr/bin/x".into()),
            uid: 1000,
            gid: 1000,
        }
    }

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_changed_key_is_never_served_and_drops_the_entry() {
        let file = tempfile::tempfile().unwrap();
        let other = tempfile::tempfile().unwrap();
        let cache = ReuseCache::default();
        let k = key(10, &file);
        let sel: SelectorSet = ["unix:uid:1000".parse().unwrap()].into_iter().collect();
        cache.insert(k.clone(), vec![sel.clone()], None, later());
        assert_eq!(cache.get(&k), Some(vec![sel.clone()]));
        let variants = [
            ImageKey {
                start_time: 8,
                ..k.clone()
            },
            ImageKey {
                exe: FileId::of(&other).unwrap(),
                ..k.clone()
            },
            ImageKey {
                exe_link: ExeLink::Detached,
                ..k.clone()
            },
            ImageKey {
                uid: 0,
                ..k.clone()
            },
            ImageKey {
                gid: 0,
                ..k.clone()
            },
        ];
        for (n, changed) in variants.iter().enumerate() {
            cache.insert(k.clone(), vec![sel.clone()], None, later());
            assert_eq!(cache.get(changed), None, "variant {n}");
            assert_eq!(cache.get(&k), None, "variant {n}: the entry is dropped");
        }
        let (stats, len) = cache.stats();
        assert_eq!((stats.hits, stats.changed, len), (1, 5, 0));
        // Another pid is simply absent.
        cache.insert(k.clone(), vec![sel], None, later());
        assert_eq!(cache.get(&ImageKey { pid: 11, ..k }), None);
    }

    #[test]
    fn a_whole_attestation_is_found_for_its_instance_and_ids_while_young_enough() {
        use super::super::procfs::Ids;
        let file = tempfile::tempfile().unwrap();
        let exe = FileId::of(&file).unwrap();
        let other = FileId::of(&tempfile::tempfile().unwrap()).unwrap();
        let cache = ReuseCache::default();
        let k = key(10, &file);
        let ids = Ids {
            real: 1000,
            effective: 1000,
            saved: 1000,
            fs: 1000,
        };
        let at = Instant::now();
        let sel: SelectorSet = ["unix:uid:1000".parse().unwrap()].into_iter().collect();
        let known = Known {
            status: Status {
                uid: ids,
                gid: ids,
                groups: vec![1000],
            },
            cgroup: Some("0::/a\n".into()),
            selectors: sel.clone(),
            at,
        };
        cache.insert(k.clone(), Vec::new(), Some(known.clone()), later());
        let find = |pid, start_time, exe, ids, now| {
            cache
                .known(pid, start_time, exe, ids, now)
                .map(|(link, k)| (link, k.status, k.cgroup, k.selectors))
        };
        let found = Some((k.exe_link.clone(), known.status, known.cgroup, sel));
        assert_eq!(find(10, 7, exe, (1000, 1000), at), found);
        let young = at + KNOWN_MAX_AGE - Duration::from_millis(1);
        assert_eq!(find(10, 7, exe, (1000, 1000), young), found);
        assert_eq!(find(10, 7, exe, (1000, 1000), at + KNOWN_MAX_AGE), None);
        for (n, (pid, start_time, exe, ids)) in [
            (11, 7, exe, (1000, 1000)),
            (10, 8, exe, (1000, 1000)),
            (10, 7, other, (1000, 1000)),
            (10, 7, exe, (0, 1000)),
            (10, 7, exe, (1000, 0)),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(find(pid, start_time, exe, ids, at), None, "variant {n}");
        }
        assert_eq!(cache.stats().0.known, 2);
        // Stored again without one: none is found.
        cache.insert(k, Vec::new(), None, later());
        assert_eq!(find(10, 7, exe, (1000, 1000), at), None);
    }

    #[test]
    fn an_unsettled_executable_is_not_stored() {
        let file = tempfile::tempfile().unwrap();
        let cache = ReuseCache::default();
        let k = key(10, &file);
        // Just written: its ctime is now.
        cache.insert(k.clone(), vec![SelectorSet::new()], None, SystemTime::now());
        assert_eq!(cache.get(&k), None);
        assert_eq!(cache.stats().1, 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let file = tempfile::tempfile().unwrap();
        let cache = ReuseCache::default();
        let count = i32::try_from(CAPACITY).unwrap() + 3;
        for pid in 1..=count {
            cache.insert(key(pid, &file), vec![SelectorSet::new()], None, later());
        }
        assert_eq!(cache.stats().1, CAPACITY);
        // Oldest evicted first.
        let got: Vec<bool> = (1..=4)
            .map(|pid| cache.get(&key(pid, &file)).is_some())
            .collect();
        assert_eq!(got, [false, false, false, true]);
        // Storing a pid again replaces its entry rather than adding one.
        cache.insert(key(count, &file), vec![SelectorSet::new()], None, later());
        let entries = cache.lock();
        assert_eq!(
            (entries.by_pid.len(), entries.order.len()),
            (CAPACITY, CAPACITY)
        );
    }
}
