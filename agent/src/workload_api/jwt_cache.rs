//! The agent's cache of minted JWT-SVIDs, bounded by count and by bytes.
//!
//! A workload chooses its audiences, so it chooses how many distinct tokens the agent
//! caches and how large they are (32 audiences of 1 KiB make a token of about 45 KiB).
//! The cache therefore holds at most `max_entries` tokens and `max_bytes` of them: an
//! insert first drops expired tokens, then the least recently used ones until the new one
//! fits; a token larger than the whole byte budget is served but not cached. Expired
//! tokens are also dropped on every lookup and by [`JwtCache::sweep`], which the agent
//! runs periodically, so memory returns below the bounds after a burst even when no
//! request follows it.
//!
//! When the server refuses a mint for an identity by a rate limit, the cache also holds
//! that refusal until the server said a retry can succeed ([`JwtCache::hold_off`]): the
//! workload's next requests for that identity get the same answer without reaching the
//! server, so a workload that keeps asking costs the server one refusal per window.
//!
//! Keys are SHA-256 digests of (entry, revision, audience list), so a key costs 32 bytes
//! whatever the audiences weigh; the token itself is the rest of an entry's cost.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest as _, Sha256};

use crate::config::JwtCacheLimits;

/// What an entry costs besides its token: the key, the times, and the map and index nodes
/// that point at it (an estimate on the high side).
const ENTRY_OVERHEAD: usize = 160;

/// Identifies a token: digest of the entry (and task) it was minted for, the entry's
/// revision and the audience list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct JwtKey([u8; 32]);

impl JwtKey {
    /// The key of a token minted for `entry` (entry id, or `id#task`) at `revision` with
    /// `audience`. Every part is length-prefixed, so no two lists share a key.
    pub(crate) fn new(entry: &str, revision: u64, audience: &[String]) -> Self {
        let mut h = Sha256::new();
        h.update((entry.len() as u64).to_be_bytes());
        h.update(entry.as_bytes());
        h.update(revision.to_be_bytes());
        h.update((audience.len() as u64).to_be_bytes());
        for a in audience {
            h.update((a.len() as u64).to_be_bytes());
            h.update(a.as_bytes());
        }
        Self(h.finalize().into())
    }
}

/// A minted JWT-SVID, reused until half its lifetime has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedJwt {
    pub(crate) token: String,
    /// When to ask for a new one (Unix seconds).
    pub(crate) refresh_at: i64,
    /// `exp` (Unix seconds).
    pub(crate) expires_at: i64,
}

#[derive(Debug)]
struct Slot {
    jwt: CachedJwt,
    /// Position in the recency order (larger is more recent).
    tick: u64,
    cost: usize,
}

/// Minted JWT-SVIDs, least recently used first out (see the module docs).
#[derive(Debug)]
pub(crate) struct JwtCache {
    limits: JwtCacheLimits,
    slots: HashMap<JwtKey, Slot>,
    /// Keys by tick: the first is the least recently used.
    recency: BTreeMap<u64, JwtKey>,
    /// (expires_at, tick) of every slot: the first expires first.
    expiry: BTreeSet<(i64, u64)>,
    bytes: usize,
    next_tick: u64,
    /// Identities the server refused to mint for, until when (Unix ms), and its message.
    held_off: HashMap<String, (i64, String)>,
}

impl JwtCache {
    /// An empty cache with `limits`.
    pub(crate) fn new(limits: JwtCacheLimits) -> Self {
        Self {
            limits,
            slots: HashMap::new(),
            recency: BTreeMap::new(),
            expiry: BTreeSet::new(),
            bytes: 0,
            next_tick: 0,
            held_off: HashMap::new(),
        }
    }

    /// Tokens held.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes held (as counted against `max_bytes`).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The unexpired token under `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &JwtKey, now: i64) -> Option<CachedJwt> {
        self.sweep(now);
        let tick = self.tick();
        let slot = self.slots.get_mut(key)?;
        self.recency.remove(&slot.tick);
        self.expiry.remove(&(slot.jwt.expires_at, slot.tick));
        slot.tick = tick;
        self.recency.insert(tick, *key);
        self.expiry.insert((slot.jwt.expires_at, tick));
        Some(slot.jwt.clone())
    }

    /// Caches `jwt` under `key` (replacing what was there), dropping expired tokens and
    /// then the least recently used until it fits. Not cached if it is already expired or
    /// larger than the whole byte budget.
    pub(crate) fn insert(&mut self, key: JwtKey, jwt: CachedJwt, now: i64) {
        self.sweep(now);
        self.remove(&key);
        let cost = jwt.token.len().saturating_add(ENTRY_OVERHEAD);
        if jwt.expires_at <= now || cost > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        while self.slots.len() >= self.limits.max_entries
            || self.bytes.saturating_add(cost) > self.limits.max_bytes
        {
            let Some((_, oldest)) = self.recency.first_key_value() else {
                break;
            };
            let oldest = *oldest;
            self.remove(&oldest);
        }
        let tick = self.tick();
        self.recency.insert(tick, key);
        self.expiry.insert((jwt.expires_at, tick));
        self.bytes += cost;
        self.slots.insert(key, Slot { jwt, tick, cost });
    }

    /// Forgets the token under `key`.
    pub(crate) fn remove(&mut self, key: &JwtKey) {
        if let Some(slot) = self.slots.remove(key) {
            self.recency.remove(&slot.tick);
            self.expiry.remove(&(slot.jwt.expires_at, slot.tick));
            self.bytes -= slot.cost;
        }
    }

    /// Drops every token expired at `now`, and gives back the map's spare room once it is
    /// mostly empty (after a burst).
    pub(crate) fn sweep(&mut self, now: i64) {
        while let Some(&(expires_at, tick)) = self.expiry.first() {
            if expires_at > now {
                break;
            }
            match self.recency.get(&tick) {
                Some(key) => {
                    let key = *key;
                    self.remove(&key);
                }
                // Not reachable: every index entry has its slot. Drop it all the same.
                None => {
                    self.expiry.pop_first();
                }
            }
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to_fit();
        }
    }

    /// Holds mints for `identity` back until `until_ms` (Unix ms), answering `message`.
    /// Lapsed holds are dropped here, so there are never more than the identities the
    /// server is refusing right now.
    pub(crate) fn hold_off(&mut self, identity: &str, until_ms: i64, message: String, now_ms: i64) {
        self.held_off.retain(|_, (until, _)| *until > now_ms);
        self.held_off
            .insert(identity.to_owned(), (until_ms, message));
    }

    /// The server's refusal for `identity` if it still holds at `now_ms`.
    pub(crate) fn held_off(&mut self, identity: &str, now_ms: i64) -> Option<String> {
        match self.held_off.get(identity) {
            Some((until, message)) if *until > now_ms => Some(message.clone()),
            Some(_) => {
                self.held_off.remove(identity);
                None
            }
            None => None,
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_JWT_CACHE_MAX_BYTES as DEFAULT_MAX_BYTES;

    const NOW: i64 = 1_000_000;

    fn key(i: usize) -> JwtKey {
        JwtKey::new(&format!("entry-{i}"), 1, &["aud".to_owned()])
    }

    fn jwt(len: usize, expires_at: i64) -> CachedJwt {
        CachedJwt {
            token: "t".repeat(len),
            refresh_at: NOW + 150,
            expires_at,
        }
    }

    fn cache(max_entries: usize, max_bytes: usize) -> JwtCache {
        JwtCache::new(JwtCacheLimits {
            max_entries,
            max_bytes,
        })
    }

    #[test]
    fn keys_tell_apart_entries_revisions_and_audience_lists() {
        let a = |e: &str, r: u64, aud: &[&str]| {
            JwtKey::new(
                e,
                r,
                &aud.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        };
        let base = a("e", 1, &["x", "y"]);
        assert_eq!(base, a("e", 1, &["x", "y"]));
        for other in [
            a("e", 2, &["x", "y"]),
            a("f", 1, &["x", "y"]),
            a("e", 1, &["y", "x"]),
            a("e", 1, &["xy"]),
            a("e", 1, &["x", "y", ""]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn the_count_bound_evicts_the_least_recently_used() {
        let mut c = cache(3, usize::MAX);
        for i in 0..3 {
            c.insert(key(i), jwt(10, NOW + 300), NOW);
        }
        // Using 0 makes 1 the least recently used.
        assert!(c.get(&key(0), NOW).is_some());
        c.insert(key(3), jwt(10, NOW + 300), NOW);
        assert_eq!(c.len(), 3);
        assert!(c.get(&key(1), NOW).is_none(), "least recently used evicted");
        for i in [0, 2, 3] {
            assert!(c.get(&key(i), NOW).is_some(), "{i} kept");
        }
        // Replacing a key does not count twice.
        c.insert(key(3), jwt(20, NOW + 300), NOW);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&key(3), NOW).unwrap().token.len(), 20);
    }

    #[test]
    fn the_byte_bound_evicts_until_the_new_token_fits() {
        let per = 1000 + ENTRY_OVERHEAD;
        let mut c = cache(usize::MAX, 5 * per);
        for i in 0..5 {
            c.insert(key(i), jwt(1000, NOW + 300), NOW);
        }
        assert_eq!(c.bytes(), 5 * per);
        // A token of three slots' size pushes out the three least recently used.
        c.insert(key(5), jwt(3 * per - ENTRY_OVERHEAD, NOW + 300), NOW);
        assert!(c.bytes() <= 5 * per);
        assert_eq!(c.len(), 3);
        for i in 0..3 {
            assert!(c.get(&key(i), NOW).is_none(), "{i} evicted");
        }
        // Larger than the whole budget: served by the caller, never cached, evicts nothing.
        c.insert(key(6), jwt(5 * per, NOW + 300), NOW);
        assert!(c.get(&key(6), NOW).is_none());
        assert_eq!(c.len(), 3);
        // Many large tokens: never above the budget.
        for i in 10..1000 {
            c.insert(key(i), jwt(4_000, NOW + 300), NOW);
            assert!(c.bytes() <= 5 * per, "{} bytes", c.bytes());
        }
        let mut big = cache(10_000, DEFAULT_MAX_BYTES);
        for i in 0..2000 {
            big.insert(key(i), jwt(45_000, NOW + 300), NOW);
        }
        assert!(big.bytes() <= DEFAULT_MAX_BYTES);
        assert_eq!(big.len(), DEFAULT_MAX_BYTES / (45_000 + ENTRY_OVERHEAD));
    }

    #[test]
    fn expired_tokens_are_swept() {
        let mut c = cache(100, usize::MAX);
        for i in 0..10 {
            let exp = if i % 2 == 0 { NOW + 10 } else { NOW + 300 };
            c.insert(key(i), jwt(100, exp), NOW);
        }
        assert_eq!(c.len(), 10);
        c.sweep(NOW + 9);
        assert_eq!(c.len(), 10);
        c.sweep(NOW + 10);
        assert_eq!(c.len(), 5, "expired at their exp");
        assert_eq!(c.bytes(), 5 * (100 + ENTRY_OVERHEAD));
        assert!(c.get(&key(0), NOW + 10).is_none());
        assert!(c.get(&key(1), NOW + 10).is_some());
        // A lookup sweeps too, and an expired token is never cached.
        assert!(c.get(&key(3), NOW + 300).is_none());
        assert_eq!(c.len(), 0);
        assert_eq!(c.bytes(), 0);
        c.insert(key(1), jwt(100, NOW), NOW);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_refusal_is_held_until_the_server_said_and_lapsed_ones_are_dropped() {
        let mut c = cache(10, 1 << 20);
        let ms = NOW * 1000;
        c.hold_off("entry-1", ms + 250, "limited".into(), ms);
        assert_eq!(c.held_off("entry-1", ms), Some("limited".into()));
        assert_eq!(c.held_off("entry-1", ms + 249), Some("limited".into()));
        assert_eq!(c.held_off("entry-2", ms), None, "per identity");
        assert_eq!(c.held_off("entry-1", ms + 250), None);
        assert!(c.held_off.is_empty());
        for i in 0..100 {
            c.hold_off(&format!("entry-{i}"), ms + 10, "limited".into(), ms);
        }
        c.hold_off("entry-x", ms + 1000, "limited".into(), ms + 10);
        assert_eq!(c.held_off.len(), 1, "lapsed holds dropped");
    }

    #[test]
    fn a_burst_is_given_back_once_it_expires() {
        let mut c = cache(10_000, DEFAULT_MAX_BYTES);
        for i in 0..10_000 {
            c.insert(key(i), jwt(100, NOW + 300), NOW);
        }
        let full = c.slots.capacity();
        assert!(full >= 10_000);
        c.insert(key(0), jwt(100, NOW + 1_000), NOW + 200);
        c.sweep(NOW + 300);
        assert_eq!(c.len(), 1);
        assert!(c.slots.capacity() < full / 4, "{}", c.slots.capacity());
        assert!(c.recency.len() == 1 && c.expiry.len() == 1);
    }
}
