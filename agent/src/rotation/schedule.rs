//! When the rotation worker acts: pure functions of the cache, the agent SVID and the time.
//!
//! An entry needs an SVID when it is live (standing, or under a live task grant) and has
//! none, has one for an older revision of the entry, or has reached its refresh point
//! (40–50 % of its life, [`X509Svid::refresh_at`]). An SVID that already lasts until its
//! task's deadline is not renewed: the server cuts every task SVID to the deadline, so a
//! renewal could not extend it, and near the deadline (second-precision validity) it
//! would be due again at once. The worker wakes at the earliest of: the agent SVID's
//! refresh point, any renewal point, any task deadline of an entry holding an SVID (to
//! withdraw it), and the retry time when entries are pending.

use std::time::{Duration, SystemTime};

use common::{EntryId, X509Svid};

use crate::cache::{CacheSnapshot, CachedEntry, unix};
use crate::clock::from_unix;

/// When the SVID held for `c` is due for renewal: its refresh point, or never when it
/// already lasts until its task's deadline.
pub(crate) fn renewal_at(c: &CachedEntry, svid: &X509Svid) -> Option<SystemTime> {
    let capped_by_task = c
        .grant
        .as_ref()
        .is_some_and(|g| svid.not_after() >= from_unix(g.deadline));
    (!capped_by_task).then(|| svid.refresh_at())
}

/// Whether `c` needs a (new) SVID at `now`.
pub(crate) fn needs_svid(c: &CachedEntry, now: SystemTime) -> bool {
    if !c.is_live(unix(now)) {
        return false;
    }
    match &c.svid {
        None => true,
        Some(s) => {
            c.svid_revision != c.entry.revision || renewal_at(c, s).is_some_and(|at| now >= at)
        }
    }
}

/// Whether `c` holds an SVID issued under a task grant that no longer holds at `now`:
/// the SVID must be withdrawn, whether or not the server has said so yet.
pub(crate) fn grant_ended(c: &CachedEntry, now: SystemTime) -> bool {
    c.entry.jit && c.svid.is_some() && !c.is_live(unix(now))
}

/// When the worker must next act.
pub(crate) fn next_wake(
    snap: &CacheSnapshot,
    agent_svid: &X509Svid,
    retry_at: Option<SystemTime>,
    now: SystemTime,
) -> SystemTime {
    let mut next = agent_svid.refresh_at();
    let mut pending = false;
    if let Some(deadline) = next_grant_deadline(snap) {
        next = next.min(deadline);
    }
    for c in snap.entries.values() {
        match &c.svid {
            Some(s) if c.svid_revision == c.entry.revision => match renewal_at(c, s) {
                // Not due yet: wake at its renewal point.
                Some(at) if at > now => next = next.min(at),
                // Due (its renewal failed): retried with the pending ones, not in a loop.
                Some(_) => pending |= c.is_live(unix(now)),
                None => {}
            },
            _ if c.is_live(unix(now)) => pending = true,
            _ => {}
        }
    }
    if pending {
        next = next.min(retry_at.unwrap_or(now));
    }
    next
}

/// The earliest task deadline among entries holding an SVID (when one must be withdrawn).
pub(crate) fn next_grant_deadline(snap: &CacheSnapshot) -> Option<SystemTime> {
    snap.entries
        .values()
        .filter(|c| c.svid.is_some())
        .filter_map(|c| c.grant.as_ref())
        .map(|g| from_unix(g.deadline))
        .min()
}

/// The shortest remaining life among the SVIDs still served for `ids` at `now`, if any.
pub(crate) fn shortest_remaining_life<'a>(
    snap: &CacheSnapshot,
    ids: impl IntoIterator<Item = &'a EntryId>,
    now: SystemTime,
) -> Option<Duration> {
    ids.into_iter()
        .filter_map(|id| snap.entries.get(id)?.svid.as_ref())
        .filter_map(|s| s.not_after().duration_since(now).ok())
        .filter(|d| !d.is_zero())
        .min()
}
