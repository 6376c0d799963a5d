//! JWT-SVIDs whose signature `ValidateJWTSVID` has verified, kept so that the same
//! token presented again is not verified again.
//!
//! A relying party sees the same token many times: a workload keeps its JWT-SVID for an
//! audience until it nears expiry and sends it with every request. What
//! [`common::jwt::verify`] checks (form, algorithm, header, subject, the key named by
//! `kid`, the ES256 signature) depends on nothing but the token's exact text and the
//! trust bundle's JWT keys, so its answer for one text under one key set never changes.
//! That answer is what is kept, under these rules:
//!
//! - **Keyed by the whole token text**, compared byte for byte (no digest to collide).
//! - **Only for the key set it was verified with.** Every lookup compares the bundle's
//!   current JWT keys with the set the kept tokens were verified against; any difference
//!   (a key added, removed or rotated) drops them all before anything is answered.
//! - **Only acceptances are kept.** A refused token is verified again on every call, so
//!   nothing an attacker sends without a valid signature takes a place here.
//! - **Everything else is checked on every call**, exactly as for a new token: expiry,
//!   `nbf` and `iat` against the clock, the audience asked for, and whether the token's
//!   task has ended (`workload_api.rs`). A kept token past its `exp` is dropped.
//! - **Bounded**: at most `jwt_verified_max_entries` tokens (agent configuration; 0
//!   keeps none) of at most [`MAX_TOKEN_BYTES`] each; an insert into a full set first
//!   drops expired tokens, then an arbitrary one.
//!
//! Each kept token also holds its answer (`ValidateJwtsvidResponse`, built once) and the
//! entries of this agent that grant its identity, for the usage counters, recomputed when
//! the cache snapshot changes (see [`CacheSnapshot::generation`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use common::EntryId;
use common::jwt::{JwtKey, VerifiedJwt};
use common::proto::workload::ValidateJwtsvidResponse;

use crate::cache::CacheSnapshot;

/// Longest token kept (longer ones are verified on every call). Ordinary JWT-SVIDs are
/// well under 1 KiB; what is kept for one (token, claims and answer) is about three times
/// its length, so the set stays under about 6 MiB at 1,024 tokens.
pub(crate) const MAX_TOKEN_BYTES: usize = 2 * 1024;

/// A token whose signature was verified, with what answering it needs.
#[derive(Debug)]
pub(crate) struct Verified {
    /// What [`common::jwt::verify`] accepted.
    pub(crate) jwt: VerifiedJwt,
    /// The answer to a call that accepts it.
    pub(crate) response: ValidateJwtsvidResponse,
    /// This agent's entries granting the token's identity, as of a snapshot generation.
    entries: Mutex<Option<(u64, Arc<[EntryId]>)>>,
}

impl Verified {
    /// Keeps `jwt` with `response`, its answer.
    pub(crate) fn new(jwt: VerifiedJwt, response: ValidateJwtsvidResponse) -> Self {
        Self {
            jwt,
            response,
            entries: Mutex::new(None),
        }
    }

    /// The entries of `snap` granting the token's identity (each once), computed once per
    /// snapshot generation.
    pub(crate) fn entries(&self, snap: &CacheSnapshot) -> Arc<[EntryId]> {
        let mut kept = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((generation, ids)) = kept.as_ref()
            && *generation == snap.generation
        {
            return Arc::clone(ids);
        }
        let mut ids: Vec<EntryId> = snap
            .entries
            .values()
            .filter(|c| &c.entry.spiffe_id == self.jwt.spiffe_id())
            .map(|c| c.entry.id.clone())
            .collect();
        // A just-in-time entry has a slot per active task: count the entry once.
        ids.sort();
        ids.dedup();
        let ids: Arc<[EntryId]> = ids.into();
        *kept = Some((snap.generation, Arc::clone(&ids)));
        ids
    }
}

/// The verified tokens, for one trust bundle's JWT keys at a time.
#[derive(Debug)]
pub(crate) struct VerifiedTokens {
    max: usize,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The JWT keys every kept token was verified against.
    keys: Vec<JwtKey>,
    tokens: HashMap<Box<str>, Arc<Verified>>,
}

impl VerifiedTokens {
    /// Keeps at most `max` tokens (0: none).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            kept: Mutex::default(),
        }
    }

    /// The kept verification of `token` if it was made with exactly `keys` and the token
    /// has not expired at `now` (Unix seconds). Drops every kept token when `keys` differ
    /// from the set they were verified with.
    pub(crate) fn get(&self, token: &str, keys: &[JwtKey], now: i64) -> Option<Arc<Verified>> {
        if self.max == 0 {
            return None;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.keys != keys {
            kept.tokens.clear();
            kept.keys = keys.to_vec();
            return None;
        }
        let v = kept.tokens.get(token)?;
        if v.jwt.expires_at() <= now {
            kept.tokens.remove(token);
            return None;
        }
        Some(Arc::clone(v))
    }

    /// Keeps `verified`, the verification of `token` made with `keys` (nothing is kept if
    /// the keys changed since, or the token is too long).
    pub(crate) fn insert(&self, token: &str, keys: &[JwtKey], verified: Arc<Verified>, now: i64) {
        if self.max == 0 || token.len() > MAX_TOKEN_BYTES {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.keys != keys {
            kept.tokens.clear();
            kept.keys = keys.to_vec();
        }
        if kept.tokens.len() >= self.max && !kept.tokens.contains_key(token) {
            kept.tokens.retain(|_, v| v.jwt.expires_at() > now);
            if kept.tokens.len() >= self.max
                && let Some(any) = kept.tokens.keys().next().cloned()
            {
                kept.tokens.remove(&any);
            }
        }
        kept.tokens.insert(token.into(), verified);
    }

    /// How many tokens are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tokens
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use common::SpiffeId;
    use common::jwt::{JwtBundle, JwtSigner};
    use common::spiffe_id::TrustDomain;
    use serde_json::Map;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn signer(kid: &str) -> (JwtSigner, JwtKey) {
        let s = JwtSigner::from_pkcs8(kid, &JwtSigner::generate_pkcs8().unwrap()).unwrap();
        let key = JwtKey {
            kid: kid.into(),
            public_key: s.public_key(),
            expires_at: 0,
        };
        (s, key)
    }

    fn token(s: &JwtSigner, sub: &str, exp: i64) -> String {
        s.sign(
            &SpiffeId::new(sub).unwrap(),
            &["aud".into()],
            NOW,
            exp,
            &Map::new(),
        )
        .unwrap()
    }

    fn verified(t: &str, keys: &[JwtKey]) -> Arc<Verified> {
        let bundles = BTreeMap::from([(
            TrustDomain::new("example.org").unwrap(),
            JwtBundle::new(keys.iter().cloned()),
        )]);
        let jwt = common::jwt::verify(t, &bundles).unwrap();
        Arc::new(Verified::new(jwt, ValidateJwtsvidResponse::default()))
    }

    #[test]
    fn a_kept_token_is_served_only_under_the_keys_it_was_verified_with() {
        let (s1, k1) = signer("k1");
        let (_, k2) = signer("k2");
        let kept = VerifiedTokens::new(8);
        let t = token(&s1, "spiffe://example.org/web", NOW + 300);
        let one = [k1.clone()];
        assert!(kept.get(&t, &one, NOW).is_none());
        kept.insert(&t, &one, verified(&t, &one), NOW);
        let got = kept.get(&t, &one, NOW).expect("kept");
        assert_eq!(got.jwt.spiffe_id().as_str(), "spiffe://example.org/web");
        // Another token text (even one character) is not served from it.
        let other = format!("{t}x");
        assert!(kept.get(&other, &one, NOW).is_none());
        // A key added: everything kept goes, including tokens of the key still there.
        let both = [k1, k2];
        assert!(kept.get(&t, &both, NOW).is_none());
        assert_eq!(kept.len(), 0);
        kept.insert(&t, &both, verified(&t, &both), NOW);
        assert!(kept.get(&t, &both, NOW).is_some());
        // The signing key removed (rotated out): nothing is served.
        assert!(kept.get(&t, &both[1..], NOW).is_none());
        assert_eq!(kept.len(), 0);
        // A key replaced under the same kid is another key set.
        kept.insert(&t, &one, verified(&t, &one), NOW);
        let (_, k1_again) = signer("k1");
        assert!(kept.get(&t, &[k1_again], NOW).is_none());
        // An insert made with keys older than the kept tokens' drops those instead of
        // mixing the two sets.
        kept.insert(&t, &one, verified(&t, &one), NOW);
        kept.insert(&t, &both, verified(&t, &both), NOW);
        assert!(kept.get(&t, &one, NOW).is_none());
    }

    #[test]
    fn an_expired_token_is_dropped() {
        let (s, k) = signer("k1");
        let keys = [k];
        let kept = VerifiedTokens::new(8);
        let t = token(&s, "spiffe://example.org/web", NOW + 10);
        kept.insert(&t, &keys, verified(&t, &keys), NOW);
        assert!(kept.get(&t, &keys, NOW + 9).is_some());
        assert!(kept.get(&t, &keys, NOW + 10).is_none());
        assert_eq!(kept.len(), 0);
    }

    #[test]
    fn the_bounds_hold() {
        let (s, k) = signer("k1");
        let keys = [k];
        // 0 keeps nothing.
        let none = VerifiedTokens::new(0);
        let t = token(&s, "spiffe://example.org/web", NOW + 300);
        none.insert(&t, &keys, verified(&t, &keys), NOW);
        assert!(none.get(&t, &keys, NOW).is_none());
        assert_eq!(none.len(), 0);
        // A full set drops expired tokens first, then an arbitrary one.
        let kept = VerifiedTokens::new(3);
        let short = token(&s, "spiffe://example.org/short", NOW + 5);
        kept.insert(&short, &keys, verified(&short, &keys), NOW);
        let live: Vec<String> = (0..3)
            .map(|i| token(&s, &format!("spiffe://example.org/w{i}"), NOW + 300))
            .collect();
        for t in &live[..2] {
            kept.insert(t, &keys, verified(t, &keys), NOW);
        }
        assert_eq!(kept.len(), 3);
        kept.insert(&live[2], &keys, verified(&live[2], &keys), NOW + 6);
        assert_eq!(kept.len(), 3);
        assert!(live.iter().all(|t| kept.get(t, &keys, NOW + 6).is_some()));
        let more = token(&s, "spiffe://example.org/more", NOW + 300);
        kept.insert(&more, &keys, verified(&more, &keys), NOW + 6);
        assert_eq!(kept.len(), 3);
        assert!(kept.get(&more, &keys, NOW + 6).is_some());
        // Re-inserting a kept token does not evict anything.
        kept.insert(&more, &keys, verified(&more, &keys), NOW + 6);
        assert_eq!(kept.len(), 3);
        // A token longer than the bound is not kept.
        let long = s
            .sign(
                &SpiffeId::new("spiffe://example.org/web").unwrap(),
                &["a".repeat(MAX_TOKEN_BYTES + 1)],
                NOW,
                NOW + 300,
                &Map::new(),
            )
            .unwrap();
        let big = VerifiedTokens::new(3);
        big.insert(&long, &keys, verified(&long, &keys), NOW);
        assert_eq!(big.len(), 0);
    }

    #[test]
    fn entries_follow_the_snapshot_generation() {
        let (s, k) = signer("k1");
        let keys = [k];
        let t = token(&s, "spiffe://example.org/web", NOW + 300);
        let v = verified(&t, &keys);
        let wire = |id: &str, path: &str| common::proto::tessera::Entry {
            id: id.into(),
            spiffe_id: format!("spiffe://example.org/{path}"),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec!["unix:uid:0".into()],
            x509_svid_ttl_seconds: 3600,
            jwt_svid_ttl_seconds: 300,
            ..Default::default()
        };
        let cached = |id: &str, path: &str| {
            Arc::new(crate::cache::CachedEntry {
                entry: Arc::new(crate::cache::AgentEntry::try_from(wire(id, path)).unwrap()),
                grant: None,
                svid: None,
                svid_revision: 0,
            })
        };
        let mut snap = CacheSnapshot::default();
        snap.entries
            .insert(EntryId::parse("a").unwrap(), cached("a", "web"));
        snap.entries
            .insert(EntryId::parse("a#t1").unwrap(), cached("a", "web"));
        snap.entries
            .insert(EntryId::parse("b").unwrap(), cached("b", "db"));
        let ids = |snap: &CacheSnapshot| -> Vec<String> {
            v.entries(snap).iter().map(ToString::to_string).collect()
        };
        assert_eq!(ids(&snap), ["a"]);
        // Unchanged generation: the kept answer, even if the map was changed behind it.
        snap.entries
            .insert(EntryId::parse("c").unwrap(), cached("c", "web"));
        assert_eq!(ids(&snap), ["a"]);
        snap.generation += 1;
        assert_eq!(ids(&snap), ["a", "c"]);
    }
}
