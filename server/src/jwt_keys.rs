//! JWT-SVID signing keys, separate from the X.509 CA.
//!
//! Each key is ECDSA P-256 (ES256) with a random `kid` and moves through three phases:
//! **prepared** (published in the bundle, signs nothing), **active** (signs), **retired**
//! (published, signs nothing). With key lifetime `T`:
//! - the next key is prepared when the active key is `T/2` old;
//! - it becomes active once the current key is `T` old *and* it has itself been published
//!   for at least `T/2`, so every agent and workload has had time to fetch it;
//! - a retired key stays published for `T` more, and no token lives longer than `T`, so
//!   every token's key is in the bundle until the token expires.
//!
//! Keys are kept in `<data_dir>/jwt_keys.json` (0600), written atomically on every change.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use common::SpiffeId;
use common::jwt::{JwtError, JwtKey, JwtSigner};
use serde::{Deserialize, Serialize};

use crate::datastore::StatusEntry;
use daemon::state_file;

/// Why keys could not be loaded, stored or used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwtKeyError {
    /// Reading or writing the key file failed.
    #[error("JWT key storage: {0}")]
    Storage(String),
    /// A key could not be generated or used.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// No active key (should never happen after start-up).
    #[error("BUG: no active JWT signing key")]
    NoActiveKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    pkcs8: String,
    created_at: i64,
    activated_at: Option<i64>,
    retired_at: Option<i64>,
}

struct LiveKey {
    stored: StoredKey,
    signer: JwtSigner,
}

/// The key set and its schedule.
pub struct JwtKeyManager {
    path: PathBuf,
    ttl: i64,
    /// The `iss` claim of every token, when configured.
    issuer: Option<String>,
    /// Base of the token status list URLs (`<base>/statuslists/<list>`) that task tokens
    /// name in their `status` claim, when the relying-party listener serves them.
    status_base_url: Option<String>,
    keys: Mutex<Vec<LiveKey>>,
}

impl std::fmt::Debug for JwtKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeyManager")
            .field("path", &self.path)
            .field("ttl", &self.ttl)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn storage(e: impl std::fmt::Display) -> JwtKeyError {
    JwtKeyError::Storage(e.to_string())
}

fn new_key(now: i64) -> Result<LiveKey, JwtKeyError> {
    let pkcs8 = JwtSigner::generate_pkcs8()?;
    let kid = hex::encode(rand::random::<[u8; 16]>());
    let signer = JwtSigner::from_pkcs8(&kid, &pkcs8)?;
    Ok(LiveKey {
        stored: StoredKey {
            kid,
            pkcs8: base64::engine::general_purpose::STANDARD.encode(pkcs8),
            created_at: now,
            activated_at: None,
            retired_at: None,
        },
        signer,
    })
}

impl JwtKeyManager {
    /// Loads the keys from `dir` (creating and activating a first key if there is none).
    pub fn load_or_create(dir: &Path, ttl: Duration, now: i64) -> Result<Self, JwtKeyError> {
        let path = dir.join("jwt_keys.json");
        let mut keys = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(storage)?;
            let stored: Vec<StoredKey> = serde_json::from_str(&text).map_err(storage)?;
            for s in stored {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(&s.pkcs8)
                    .map_err(storage)?;
                let signer = JwtSigner::from_pkcs8(&s.kid, &der)?;
                keys.push(LiveKey { stored: s, signer });
            }
        }
        let mgr = Self {
            path,
            ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1),
            issuer: None,
            status_base_url: None,
            keys: Mutex::new(keys),
        };
        {
            let mut keys = mgr.lock();
            if !keys
                .iter()
                .any(|k| k.stored.activated_at.is_some() && k.stored.retired_at.is_none())
            {
                // First start: nothing can hold tokens yet, so the key is active at once.
                let mut k = new_key(now)?;
                k.stored.activated_at = Some(now);
                keys.push(k);
                mgr.save(&keys)?;
            }
        }
        mgr.tick(now)?;
        Ok(mgr)
    }

    /// Makes every token carry `iss` = `issuer` (the relying-party listener's URL, so
    /// standard JWT libraries find the keys through OIDC discovery).
    #[must_use]
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Makes task tokens carry a `status` claim ([`Self::status_claim`]) pointing into
    /// the status lists under `base_url` (IETF OAuth Token Status List).
    #[must_use]
    pub fn with_status_lists(mut self, base_url: Option<String>) -> Self {
        self.status_base_url = base_url;
        self
    }

    /// The `status` claim of a token of task `task_id` whose status list entry is
    /// `entry`, when status lists are published: `{"status_list": {"idx": N, "uri":
    /// "<base>/statuslists/<list>"}}` (draft §6.1). A task recorded before schema
    /// version 10 has no entry: its tokens name index 0 of a list of its own,
    /// `<base>/statuslists/<task id>` (when the id can be a URL path segment as is, as
    /// every generated id can).
    pub fn status_claim(
        &self,
        task_id: &str,
        entry: Option<StatusEntry>,
    ) -> Option<serde_json::Value> {
        let base = self.status_base_url.as_ref()?;
        let (uri, idx) = match entry {
            Some(e) => (format!("{base}/statuslists/{}", e.list), e.idx),
            None if is_path_segment(task_id) => (format!("{base}/statuslists/{task_id}"), 0),
            None => return None,
        };
        Some(serde_json::json!({ "status_list": { "idx": idx, "uri": uri } }))
    }

    /// A signed status list token (`typ: statuslist+jwt`, IETF OAuth Token Status List)
    /// for the list at `uri`: `bits` 1, and `lst`, the zlib-compressed, base64url-encoded
    /// bit array (see `status_list.rs`). Relying parties may cache it for `ttl` seconds;
    /// it expires after [`STATUS_LIST_LIFETIME`].
    pub fn sign_status_list(
        &self,
        uri: &str,
        lst: &str,
        ttl: i64,
        now: i64,
    ) -> Result<String, JwtKeyError> {
        let keys = self.lock();
        let active = keys
            .iter()
            .find(|k| k.stored.activated_at.is_some() && k.stored.retired_at.is_none())
            .ok_or(JwtKeyError::NoActiveKey)?;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), uri.into());
        claims.insert("iat".into(), now.into());
        claims.insert(
            "exp".into(),
            now.saturating_add(STATUS_LIST_LIFETIME).into(),
        );
        claims.insert("ttl".into(), ttl.into());
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.as_str().into());
        }
        claims.insert(
            "status_list".into(),
            serde_json::json!({ "bits": 1, "lst": lst }),
        );
        Ok(active.signer.sign_claims("statuslist+jwt", claims)?)
    }

    /// Signs `claims` as a Security Event Token (`typ: secevent+jwt`, RFC 8417 §2.3) with
    /// the active key, so receivers verify it with the published JWK set.
    pub fn sign_security_event(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, JwtKeyError> {
        let keys = self.lock();
        let active = keys
            .iter()
            .find(|k| k.stored.activated_at.is_some() && k.stored.retired_at.is_none())
            .ok_or(JwtKeyError::NoActiveKey)?;
        Ok(active.signer.sign_claims("secevent+jwt", claims)?)
    }

    /// The `iss` claim tokens carry, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LiveKey>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, keys: &[LiveKey]) -> Result<(), JwtKeyError> {
        let stored: Vec<&StoredKey> = keys.iter().map(|k| &k.stored).collect();
        let text = serde_json::to_vec_pretty(&stored).map_err(storage)?;
        state_file::write_atomic(&self.path, &text, 0o600).map_err(storage)
    }

    /// Advances the schedule to `now`. Returns whether the published key set changed.
    pub fn tick(&self, now: i64) -> Result<bool, JwtKeyError> {
        let ttl = self.ttl;
        let mut keys = self.lock();
        let mut changed = false;
        // Drop retired keys whose tokens have all expired.
        let before = keys.len();
        keys.retain(|k| {
            k.stored
                .retired_at
                .is_none_or(|r| now < r.saturating_add(ttl))
        });
        changed |= keys.len() != before;
        let active_since = keys
            .iter()
            .find(|k| k.stored.activated_at.is_some() && k.stored.retired_at.is_none())
            .and_then(|k| k.stored.activated_at)
            .ok_or(JwtKeyError::NoActiveKey)?;
        let prepared = keys.iter().position(|k| k.stored.activated_at.is_none());
        if prepared.is_none() && now >= active_since.saturating_add(ttl / 2) {
            keys.push(new_key(now)?);
            changed = true;
            tracing::info!("prepared the next JWT signing key");
        }
        if let Some(i) = keys.iter().position(|k| k.stored.activated_at.is_none())
            && now >= active_since.saturating_add(ttl)
            && keys
                .get(i)
                .is_some_and(|k| now >= k.stored.created_at.saturating_add(ttl / 2))
        {
            for k in keys.iter_mut() {
                if k.stored.activated_at.is_some() && k.stored.retired_at.is_none() {
                    k.stored.retired_at = Some(now);
                }
            }
            if let Some(k) = keys.get_mut(i) {
                k.stored.activated_at = Some(now);
                tracing::info!(kid = %k.stored.kid, "activated a new JWT signing key");
            }
            changed = true;
        }
        if changed {
            self.save(&keys)?;
        }
        Ok(changed)
    }

    /// Unix time of the next scheduled change.
    pub fn next_event(&self) -> i64 {
        let ttl = self.ttl;
        let keys = self.lock();
        let mut next = i64::MAX;
        for k in keys.iter() {
            match (k.stored.activated_at, k.stored.retired_at) {
                (Some(a), None) => {
                    next = next
                        .min(a.saturating_add(ttl / 2))
                        .min(a.saturating_add(ttl));
                }
                (_, Some(r)) => next = next.min(r.saturating_add(ttl)),
                (None, None) => next = next.min(k.stored.created_at.saturating_add(ttl / 2)),
            }
        }
        next
    }

    /// Every published key with the time it stops being published.
    pub fn public_keys(&self) -> Vec<JwtKey> {
        let ttl = self.ttl;
        self.lock()
            .iter()
            .map(|k| {
                let expires_at = match (k.stored.activated_at, k.stored.retired_at) {
                    (_, Some(r)) => r.saturating_add(ttl),
                    (Some(a), None) => a.saturating_add(ttl.saturating_mul(2)),
                    (None, None) => k.stored.created_at.saturating_add(ttl.saturating_mul(3)),
                };
                JwtKey {
                    kid: k.stored.kid.clone(),
                    public_key: k.signer.public_key(),
                    expires_at,
                }
            })
            .collect()
    }

    /// Signs a JWT-SVID with the active key. The lifetime is `ttl` capped at the key
    /// lifetime, which is what keeps retired keys published long enough. Returns the token
    /// and its `exp`.
    pub fn sign(
        &self,
        subject: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: i64,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(String, i64), JwtKeyError> {
        let keys = self.lock();
        let active = keys
            .iter()
            .find(|k| k.stored.activated_at.is_some() && k.stored.retired_at.is_none())
            .ok_or(JwtKeyError::NoActiveKey)?;
        let ttl = i64::try_from(ttl.as_secs())
            .unwrap_or(i64::MAX)
            .clamp(1, self.ttl);
        let exp = now.saturating_add(ttl);
        let token = if let Some(iss) = &self.issuer {
            let mut claims = extra.clone();
            claims.insert("iss".into(), serde_json::Value::from(iss.as_str()));
            active.signer.sign(subject, audience, now, exp, &claims)?
        } else {
            active.signer.sign(subject, audience, now, exp, extra)?
        };
        Ok((token, exp))
    }
}

impl JwtKeyManager {
    /// [`JwtKeyManager::public_keys`] with each key's phase, for the bundle shared with
    /// the other servers on the datastore (`crate::bundle::shared`).
    pub fn published_keys(&self) -> Vec<(JwtKey, crate::ca::rotation::CaPhase)> {
        use crate::ca::rotation::CaPhase;
        let phases: std::collections::HashMap<String, CaPhase> = self
            .lock()
            .iter()
            .map(|k| {
                let phase = match (k.stored.activated_at, k.stored.retired_at) {
                    (_, Some(_)) => CaPhase::Retired,
                    (Some(_), None) => CaPhase::Active,
                    (None, None) => CaPhase::Prepared,
                };
                (k.stored.kid.clone(), phase)
            })
            .collect();
        self.public_keys()
            .into_iter()
            .filter_map(|k| {
                let phase = *phases.get(&k.kid)?;
                Some((k, phase))
            })
            .collect()
    }
}

/// Whether `id` is a non-empty run of ASCII letters, digits and `-` (a UUID is): safe in a
/// URL path without escaping.
pub fn is_path_segment(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// How long a status list token is valid (seconds); relying parties fetch a fresh one
/// at its `ttl` anyway.
pub const STATUS_LIST_LIFETIME: i64 = 300;

#[cfg(test)]
mod tests {
    use super::*;
    use common::TrustDomain;
    use common::jwt::{JwtBundle, validate};
    use std::collections::BTreeMap;

    #[test]
    fn rotation_never_signs_with_an_unpublished_or_unpublishes_a_needed_key() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = 100;
        let t0 = 1_000_000;
        let mgr = JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(ttl), t0).unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        // Tokens minted at every second, each checked against the bundle published at the
        // moment it was minted and at every later second until it expires.
        let mut outstanding: Vec<(String, i64)> = Vec::new();
        let mut kids = std::collections::BTreeSet::new();
        let end = t0 + 6 * ttl as i64;
        for now in t0..end {
            mgr.tick(now).unwrap();
            let published = JwtBundle::new(mgr.public_keys());
            let bundles = BTreeMap::from([(td.clone(), published)]);
            let (tok, exp) = mgr
                .sign(
                    &id,
                    &["a".into()],
                    Duration::from_secs(1000),
                    now,
                    &Default::default(),
                )
                .unwrap();
            assert_eq!(exp, now + ttl as i64, "TTL capped at the key lifetime");
            outstanding.push((tok, exp));
            outstanding.retain(|(_, e)| *e > now);
            for (t, _) in &outstanding {
                let v = validate(t, "a", &bundles, now).unwrap();
                kids.insert(v.kid);
            }
        }
        assert!(kids.len() >= 5, "keys rotated: {}", kids.len());
        assert!(mgr.public_keys().len() <= 3);

        // Reload keeps the same keys.
        let before: Vec<String> = mgr.public_keys().into_iter().map(|k| k.kid).collect();
        let again =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(ttl), end - 1).unwrap();
        let after: Vec<String> = again.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(before, after);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("jwt_keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tokens_carry_the_configured_issuer_and_none_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let plain =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(3600), now).unwrap();
        let bundles = BTreeMap::from([(td, JwtBundle::new(plain.public_keys()))]);
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"task_id": "t1"}"#).unwrap();
        let ttl = Duration::from_secs(60);
        let (tok, _) = plain.sign(&id, &["a".into()], ttl, now, &extra).unwrap();
        let v = validate(&tok, "a", &bundles, now).unwrap();
        assert!(!v.claims.contains_key("iss"), "{:?}", v.claims);
        let with = plain.with_issuer(Some("https://rp.example.org".into()));
        assert_eq!(with.issuer(), Some("https://rp.example.org"));
        let (tok, _) = with.sign(&id, &["a".into()], ttl, now, &extra).unwrap();
        let v = validate(&tok, "a", &bundles, now).unwrap();
        assert_eq!(v.claims["iss"], "https://rp.example.org");
        assert_eq!(v.claims["task_id"], "t1", "other claims kept");
        assert_eq!(v.claims["sub"], "spiffe://example.org/w");
    }

    #[test]
    fn task_tokens_name_their_status_list_entry_and_lists_are_signed() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let plain =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(3600), now).unwrap();
        assert_eq!(
            plain.status_claim("t1", None),
            None,
            "no lists published: no claim"
        );
        let mgr = plain.with_status_lists(Some("https://rp.example.org".into()));
        let entry = StatusEntry {
            list: 3,
            idx: 40_123,
        };
        assert_eq!(
            mgr.status_claim("t1", Some(entry)),
            Some(
                serde_json::json!({"status_list": {"idx": 40_123, "uri": "https://rp.example.org/statuslists/3"}})
            )
        );
        // Tasks recorded before schema version 10: index 0 of a list of their own.
        assert_eq!(
            mgr.status_claim("t1", None),
            Some(
                serde_json::json!({"status_list": {"idx": 0, "uri": "https://rp.example.org/statuslists/t1"}})
            )
        );
        assert_eq!(mgr.status_claim("t/1", None), None);

        let bundles = BTreeMap::from([(td, JwtBundle::new(mgr.public_keys()))]);
        let mut task: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"task_id": "t1"}"#).unwrap();
        task.insert(
            "status".into(),
            mgr.status_claim("t1", Some(entry)).unwrap(),
        );
        let ttl = Duration::from_secs(60);
        let (tok, _) = mgr.sign(&id, &["a".into()], ttl, now, &task).unwrap();
        let v = validate(&tok, "a", &bundles, now).unwrap();
        assert_eq!(v.claims["status"]["status_list"]["idx"], 40_123);

        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let lst = crate::status_list::encode(&[40_123]);
        let list = mgr
            .sign_status_list("https://rp.example.org/statuslists/3", &lst, 5, now)
            .unwrap();
        let part = |i: usize| -> serde_json::Value {
            serde_json::from_slice(&b64.decode(list.split('.').nth(i).unwrap()).unwrap()).unwrap()
        };
        assert_eq!(part(0)["typ"], "statuslist+jwt");
        let claims = part(1);
        assert_eq!(claims["sub"], "https://rp.example.org/statuslists/3");
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["exp"], now + STATUS_LIST_LIFETIME);
        assert_eq!(claims["ttl"], 5);
        assert_eq!(claims["status_list"]["bits"], 1);
        assert_eq!(claims["status_list"]["lst"], &*lst);
    }
}
