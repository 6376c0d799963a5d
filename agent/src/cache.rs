//! The agent's view of its entries, their SVIDs and the trust bundle.
//!
//! State is published as an immutable `Arc<CacheSnapshot>` through a `watch` channel: the
//! rotation worker is the only writer; every Workload API stream borrows the latest
//! snapshot and waits for `changed()`. A snapshot is never half-updated.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use common::proto::tessera;
use common::task::{ProcessInstance, TaskBinding, TaskGrant};
use common::{Bundle, EntryId, SelectorSet, X509Svid};
use tokio::sync::watch;

mod entry;
pub use entry::AgentEntry;

/// A caller's process lineage: its process instance (pinned by attestation), then its
/// ancestors, parent first, which only a task bound to a process tree needs.
///
/// The ancestors are read from `/proc` the first time a tree binding is compared with
/// this caller, not at attestation: most calls never need them, and the walk was about a
/// third of an attestation. Walked later, it is exactly as safe: it starts from the parent
/// pid and start time attestation read, and stops at any process that started after the
/// one below it, so a parent that exited and whose pid was reused meanwhile is never
/// taken for an ancestor (see `attestation::lineage`). A clone shares the walk.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// The caller (none: unknown, which no process binding admits).
    caller: Option<ProcessInstance>,
    /// Its parent's pid as attestation read it.
    parent: u32,
    /// Its ancestors, once walked.
    ancestors: Arc<OnceLock<Vec<ProcessInstance>>>,
}

impl Lineage {
    /// The lineage of the attested `caller` whose parent pid is `parent`; the ancestors
    /// are read when first needed.
    pub fn of(caller: ProcessInstance, parent: u32) -> Self {
        Self {
            caller: Some(caller),
            parent,
            ancestors: Arc::new(OnceLock::new()),
        }
    }

    /// A lineage known in full: the caller first, then its ancestors (none: unknown).
    pub fn known(mut lineage: Vec<ProcessInstance>) -> Self {
        let caller = (!lineage.is_empty()).then(|| lineage.remove(0));
        Self {
            caller,
            parent: 0,
            ancestors: Arc::new(OnceLock::from(lineage)),
        }
    }

    /// The caller's process instance.
    pub fn caller(&self) -> Option<&ProcessInstance> {
        self.caller.as_ref()
    }

    /// The caller's ancestors, parent first (read from `/proc` on the first call: a few
    /// small reads per ancestor, at most `MAX_ANCESTORS`).
    pub fn ancestors(&self) -> &[ProcessInstance] {
        self.ancestors.get_or_init(|| match &self.caller {
            Some(c) => crate::attestation::lineage::ancestors(self.parent, c.start_time),
            None => Vec::new(),
        })
    }

    /// The caller, then its ancestors.
    pub fn to_vec(&self) -> Vec<ProcessInstance> {
        self.caller
            .iter()
            .chain(self.ancestors())
            .copied()
            .collect()
    }

    /// Whether `binding` admits this caller ([`TaskBinding::admits`]); the ancestors are
    /// read only if a tree binding's holder is not the caller itself.
    pub fn admitted_by(&self, binding: &TaskBinding) -> bool {
        binding.admits(self.caller.as_ref(), |p| self.ancestors().contains(p))
    }

    /// Whether the ancestors were read (tests).
    #[cfg(test)]
    pub(crate) fn walked(&self) -> bool {
        self.ancestors.get().is_some()
    }
}

/// One entry and, once issued, its SVID.
///
/// Everything in it is shared: a copy (each cache change copies the entries it touches)
/// is four pointers, and the task slots of one entry share its [`AgentEntry`].
#[derive(Debug, Clone)]
pub struct CachedEntry {
    /// The entry as last synced.
    pub entry: Arc<AgentEntry>,
    /// For a just-in-time entry, the active task that makes it live (none: dormant).
    pub grant: Option<Arc<TaskGrant>>,
    /// The current SVID for it, if issued (for a just-in-time entry: under `grant`).
    pub svid: Option<Arc<X509Svid>>,
    /// The entry revision the SVID was issued for.
    pub svid_revision: u64,
}

impl CachedEntry {
    /// Whether the entry grants its identity at `now_unix`: always for a standing entry;
    /// for a just-in-time entry only while a task activates it.
    pub fn is_live(&self, now_unix: i64) -> bool {
        !self.entry.jit || self.grant.as_ref().is_some_and(|g| g.live_at(now_unix))
    }

    /// Whether a caller whose process lineage is `lineage` (itself, then its ancestors) may
    /// receive this entry's identity at `now_unix`: the entry is live and, when its task is
    /// bound to a process, the caller is that process instance (or, for a tree binding,
    /// descends from it). Everyone else is served as if the entry were dormant.
    pub fn serves(&self, lineage: &Lineage, now_unix: i64) -> bool {
        self.is_live(now_unix)
            && self
                .grant
                .as_ref()
                .is_none_or(|g| lineage.admitted_by(&g.binding))
    }
}

/// The key under which the cache holds `entry` under `grant`.
///
/// Several tasks may be active at once on one just-in-time entry (one per bound process):
/// the cache holds the entry once per task, each with the task's own SVID, under
/// `<entry id>#<task id>`; an entry without a task under its own id. Entry and task ids
/// are server-made UUIDs, never holding `#`, and the pair fits an id's length bound.
pub fn slot_key(entry: &EntryId, grant: Option<&TaskGrant>) -> EntryId {
    grant
        .and_then(|g| EntryId::parse(format!("{entry}#{}", g.task_id)).ok())
        .unwrap_or_else(|| entry.clone())
}

/// Unix seconds of `t`.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Everything the Workload API serves, at one instant.
#[derive(Debug, Clone, Default)]
pub struct CacheSnapshot {
    /// Entries parented to this agent, by [`slot_key`]: a just-in-time entry once per
    /// active task.
    pub entries: HashMap<EntryId, Arc<CachedEntry>>,
    /// Our trust domain's bundle.
    pub bundle: Option<Arc<Bundle>>,
    /// True once entries are known: from the server's first sync, or from the persisted
    /// cache at start-up.
    pub synced: bool,
    /// True once the server itself has synced us (not just the persisted cache).
    pub from_server: bool,
    /// Tasks that ended early and the CRLs listing their SVIDs (trust-domain wide).
    pub revocations: Arc<tessera::Revocations>,
    /// Where this state is in the cluster's change feed (the server's cursor of the last
    /// change applied; empty: unknown), persisted with it so a restarted agent resumes.
    pub cursor: String,
    /// Identity templates parented to this agent: a caller that matches no entry but one
    /// of these gets an entry made for it (`ProvisionEntry`).
    pub templates: HashMap<common::TemplateId, Arc<common::template::AgentTemplate>>,
    /// Counts the snapshots published ([`Cache::update`]): whatever is derived from a
    /// snapshot and kept may be reused while this is unchanged.
    pub generation: u64,
}

/// What a caller is entitled to right now.
#[derive(Debug, Default)]
pub struct Identities {
    /// At least one entry matches the caller (even if its SVID is not issued yet).
    pub matched: bool,
    /// Valid SVIDs of matching entries, default identity first, with their hints.
    pub svids: Vec<(Arc<X509Svid>, String)>,
    /// The entry of each of `svids`, in the same order.
    pub entry_ids: Vec<EntryId>,
}

impl CacheSnapshot {
    /// Whether the agent can actually serve: synced by the server, or holding at least one
    /// still-valid SVID from the persisted cache.
    pub fn can_serve(&self, now: SystemTime) -> bool {
        self.from_server
            || (self.synced
                && self
                    .entries
                    .values()
                    .any(|c| c.svid.as_ref().is_some_and(|s| !s.is_expired_at(now))))
    }

    /// Whether a JWT-SVID of `task_id` must be refused: the task ended before its deadline.
    pub fn task_ended(&self, task_id: &str, now_unix: i64) -> Option<&str> {
        self.revocations
            .ended_tasks
            .iter()
            .find(|t| t.task_id == task_id && now_unix < t.until)
            .map(|t| t.state.as_str())
    }

    /// The template (and the selectors its instance would have) a caller with `selectors`
    /// may ask an entry of, when it matches no entry: the first by id, for determinism.
    pub fn template_for(
        &self,
        selectors: &SelectorSet,
    ) -> Option<(Arc<common::template::AgentTemplate>, SelectorSet)> {
        let mut all: Vec<_> = self.templates.values().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.into_iter()
            .find_map(|t| t.instance_selectors(selectors).map(|s| (Arc::clone(t), s)))
    }

    /// The shortest grace of this agent's templates: how long the server keeps an instance
    /// without a report that its workload lives.
    pub fn shortest_grace(&self) -> Option<std::time::Duration> {
        self.templates.values().filter_map(|t| t.grace).min()
    }

    /// The ids of the entries made from templates that a caller with `selectors` holds.
    pub fn instances_of(&self, selectors: &SelectorSet) -> Vec<EntryId> {
        self.entries
            .values()
            .filter(|c| c.entry.template_id.is_some() && c.entry.selectors.entry_matches(selectors))
            .map(|c| c.entry.id.clone())
            .collect()
    }

    /// Whether a caller with `selectors` matches any live entry at `now`, whatever
    /// process a task is bound to: who may read the trust bundles, which carry nothing of
    /// any task (a task's binding limits its SVIDs, not the bundles).
    pub fn matches_any(&self, selectors: &SelectorSet, now: SystemTime) -> bool {
        self.entries
            .values()
            .any(|c| c.is_live(unix(now)) && c.entry.selectors.entry_matches(selectors))
    }

    /// The identities of a caller with `selectors` and process `lineage` at `now`.
    ///
    /// Order is stable (entry creation time, then id) so the default identity does not
    /// flip between messages; hints are made unique by dropping repeats.
    pub fn identities(
        &self,
        selectors: &SelectorSet,
        lineage: &Lineage,
        now: SystemTime,
    ) -> Identities {
        let mut matching: Vec<&Arc<CachedEntry>> = self
            .entries
            .values()
            // A just-in-time entry is dormant: it grants nothing without an active task,
            // and a task bound to a process grants nothing to any other process.
            .filter(|c| c.serves(lineage, unix(now)) && c.entry.selectors.entry_matches(selectors))
            .collect();
        matching.sort_by(|a, b| {
            (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id))
        });
        let mut seen_hints = std::collections::HashSet::new();
        let (svids, entry_ids) = matching
            .iter()
            .filter_map(|c| c.svid.as_ref().map(|s| (s, &c.entry)))
            .filter(|(s, _)| !s.is_expired_at(now))
            .map(|(s, entry)| {
                let hint = &*entry.hint;
                let hint = if hint.is_empty() || !seen_hints.insert(hint) {
                    String::new()
                } else {
                    hint.to_owned()
                };
                ((Arc::clone(s), hint), entry.id.clone())
            })
            .unzip();
        Identities {
            matched: !matching.is_empty(),
            svids,
            entry_ids,
        }
    }
}

/// The single-writer cache.
#[derive(Debug, Clone)]
pub struct Cache {
    tx: Arc<watch::Sender<Arc<CacheSnapshot>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(Arc::new(CacheSnapshot::default())).0),
        }
    }
}

impl Cache {
    /// A receiver that sees the current snapshot and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CacheSnapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<CacheSnapshot> {
        Arc::clone(&self.tx.borrow())
    }

    /// Applies `f` to a copy of the state and publishes the result.
    pub fn update(&self, f: impl FnOnce(&mut CacheSnapshot)) {
        self.tx.send_modify(|snap| {
            let snap = Arc::make_mut(snap);
            let generation = snap.generation;
            f(snap);
            snap.generation = generation + 1;
        });
    }
}

/// File in the data directory holding the persisted cache.
pub const CACHE_FILE: &str = "cache.pb";

/// Why a persisted cache could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CacheFileError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not a valid cache.
    #[error("invalid cache file {0}: {1}")]
    Invalid(String, String),
}

impl CacheSnapshot {
    /// Encodes the snapshot for the cache file (entries, bundle, SVIDs with their keys).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.encode_to(&mut out);
        out
    }

    /// Streams the cache file encoding of the snapshot to `w`, one entry or SVID at a
    /// time: the file is never built whole in memory (at 10,000 entries it is megabytes).
    ///
    /// The result is an `AgentCache` message whose `snapshot` field occurs several times,
    /// one entry each, then once for the bundle, revocations and templates: protobuf
    /// decoders merge the occurrences of a message field (repeated fields concatenate), so
    /// it decodes to the same message as one `snapshot` holding everything.
    pub fn encode_to<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<()> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, message};
        const SNAPSHOT: u32 = 1;
        const SVIDS: u32 = 2;
        const SYNC_CURSOR: u32 = 3;
        const REVOCATIONS: u32 = 3;
        let mut entries: Vec<(&EntryId, &Arc<CachedEntry>)> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        // One record's encoding, reused.
        let mut buf = Vec::new();
        for (_, c) in &entries {
            let mut wire: tessera::Entry = (&*c.entry).into();
            wire.task = c.grant.as_deref().map(Into::into);
            let record = tessera::SyncSnapshot {
                entries: vec![wire],
                ..Default::default()
            };
            buf.clear();
            message::encode(SNAPSHOT, &record, &mut buf);
            w.write_all(&buf)?;
        }
        let mut templates: Vec<tessera::Template> =
            self.templates.values().map(|t| (&**t).into()).collect();
        templates.sort_by(|a, b| a.id.cmp(&b.id));
        let rest = tessera::SyncSnapshot {
            entries: Vec::new(),
            bundle: self.bundle.as_deref().map(Into::into),
            revocations: None,
            templates,
            more: false,
        };
        // The revocations (CRLs included) are encoded in place rather than copied into
        // `rest`: a snapshot record holding them after the rest of the snapshot's fields.
        let revocations_len = message::encoded_len(REVOCATIONS, &*self.revocations);
        buf.clear();
        encode_key(SNAPSHOT, WireType::LengthDelimited, &mut buf);
        let len = prost::Message::encoded_len(&rest) + revocations_len;
        encode_varint(len as u64, &mut buf);
        buf.reserve(len + encoded_len_varint(len as u64));
        prost::Message::encode_raw(&rest, &mut buf);
        message::encode(REVOCATIONS, &*self.revocations, &mut buf);
        w.write_all(&buf)?;
        for (key, c) in &entries {
            let Some(s) = &c.svid else { continue };
            let record = tessera::CachedSvid {
                // The slot: one SVID per task of an entry.
                entry_id: key.to_string(),
                entry_revision: c.svid_revision,
                chain: s.chain().map(|d| d.to_vec()).collect(),
                key: s.key_pkcs8().to_vec(),
            };
            buf.clear();
            message::encode(SVIDS, &record, &mut buf);
            w.write_all(&buf)?;
        }
        if !self.cursor.is_empty() {
            buf.clear();
            prost::encoding::string::encode(SYNC_CURSOR, &self.cursor, &mut buf);
            w.write_all(&buf)?;
        }
        Ok(())
    }

    /// Decodes a cache file. SVIDs that no longer parse or match their key are dropped;
    /// expired ones are kept here and filtered when served.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        use prost::Message as _;
        let msg = tessera::AgentCache::decode(bytes).map_err(|e| e.to_string())?;
        let snap = msg.snapshot.unwrap_or_default();
        let bundle = snap
            .bundle
            .map(Bundle::try_from)
            .transpose()
            .map_err(|e| e.to_string())?
            .map(Arc::new);
        let mut svids: HashMap<String, (u64, Arc<X509Svid>)> = HashMap::new();
        for s in msg.svids {
            let chain = s
                .chain
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from)
                .collect();
            if let Ok(svid) = X509Svid::new(chain, s.key) {
                svids.insert(s.entry_id, (s.entry_revision, Arc::new(svid)));
            }
        }
        let mut templates = HashMap::new();
        for wire in snap.templates {
            let t = common::template::AgentTemplate::try_from(wire)?;
            templates.insert(t.id.clone(), Arc::new(t));
        }
        let mut entries = HashMap::new();
        for mut wire in snap.entries {
            let grant = wire
                .task
                .take()
                .map(TaskGrant::try_from)
                .transpose()
                .map_err(|e| e.to_string())?
                .map(Arc::new);
            let entry = AgentEntry::try_from(wire).map_err(|e| e.to_string())?;
            let key = slot_key(&entry.id, grant.as_deref());
            let (svid_revision, svid) = match svids.remove(key.as_str()) {
                Some((rev, s)) => (rev, Some(s)),
                None => (0, None),
            };
            entries.insert(
                key,
                Arc::new(CachedEntry {
                    entry: Arc::new(entry),
                    grant,
                    svid,
                    svid_revision,
                }),
            );
        }
        Ok(Self {
            entries,
            bundle,
            synced: true,
            from_server: false,
            revocations: Arc::new(snap.revocations.unwrap_or_default()),
            cursor: msg.sync_cursor,
            templates,
            generation: 0,
        })
    }

    /// Reads the cache file in `dir`, if there is one.
    pub fn load(dir: &std::path::Path) -> Result<Option<Self>, CacheFileError> {
        let path = dir.join(CACHE_FILE);
        let shown = path.display().to_string();
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&bytes)
                .map(Some)
                .map_err(|e| CacheFileError::Invalid(shown, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheFileError::Read(shown, e)),
        }
    }
}

/// Writes the cache file (0600, atomically) after every change, at most twice a second,
/// until `shutdown`; then once more so the last state is kept.
pub async fn persist(
    cache: Cache,
    dir: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut rx = cache.subscribe();
    rx.mark_unchanged();
    loop {
        let stop = tokio::select! {
            () = shutdown.cancelled() => true,
            r = rx.changed() => r.is_err(),
        };
        if !stop {
            // Coalesce bursts (a snapshot of many entries, a batch of signatures).
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let snap = Arc::clone(&rx.borrow_and_update());
        if snap.synced {
            let path = dir.join(CACHE_FILE);
            let written = tokio::task::spawn_blocking(move || {
                daemon::state_file::write_atomic_with(&path, 0o600, move |w| {
                    let encoded = snap.encode_to(w);
                    // Let go of the snapshot before the file is synced to disk: while
                    // it is held, every cache update has to copy the whole snapshot.
                    drop(snap);
                    encoded
                })
            })
            .await;
            if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                tracing::warn!(error = %e, "cannot persist the agent cache");
            }
        }
        if stop || shutdown.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{Selector, SpiffeId};
    use std::time::Duration;

    fn entry(id: &str, created: i64, sels: &[&str], hint: &str) -> Arc<CachedEntry> {
        Arc::new(CachedEntry {
            entry: Arc::new(AgentEntry {
                id: EntryId::parse(id).unwrap(),
                spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{id}")).unwrap(),
                selectors: sels
                    .iter()
                    .map(|s| s.parse::<Selector>().unwrap())
                    .collect(),
                jit: false,
                hint: hint.into(),
                created_at: created,
                revision: 1,
                template_id: None,
                node: false,
            }),
            grant: None,
            svid: None,
            svid_revision: 0,
        })
    }

    #[test]
    fn the_streamed_file_decodes_to_the_whole_message() {
        use prost::Message as _;
        let now = SystemTime::now();
        let td = common::TrustDomain::new("example.org").unwrap();
        let ca = crate::testing::TestCa::new(&td, now).unwrap();
        let mut snap = CacheSnapshot {
            bundle: Some(Arc::new(ca.bundle())),
            cursor: "feed/7".into(),
            synced: true,
            ..CacheSnapshot::default()
        };
        for (id, issued) in [("b", true), ("a", true), ("c", false)] {
            let mut c = (*entry(id, 1, &["unix:uid:0"], "")).clone();
            if issued {
                let sid = SpiffeId::new(&format!("spiffe://example.org/{id}")).unwrap();
                c.svid = Some(Arc::new(
                    ca.issue(&sid, now, Duration::from_secs(600)).unwrap(),
                ));
                c.svid_revision = 1;
            }
            snap.entries
                .insert(EntryId::parse(id).unwrap(), Arc::new(c));
        }
        let streamed = snap.encode();
        // The same state as one message, as the file was written before streaming.
        let ids = ["a", "b", "c"];
        let whole = tessera::AgentCache {
            snapshot: Some(tessera::SyncSnapshot {
                entries: ids
                    .iter()
                    .map(|id| (&*snap.entries[*id].entry).into())
                    .collect(),
                bundle: snap.bundle.as_deref().map(Into::into),
                revocations: Some((*snap.revocations).clone()),
                templates: Vec::new(),
                more: false,
            }),
            svids: ids
                .iter()
                .filter_map(|id| {
                    let c = &snap.entries[*id];
                    c.svid.as_ref().map(|s| tessera::CachedSvid {
                        entry_id: (*id).to_owned(),
                        entry_revision: c.svid_revision,
                        chain: s.chain().map(|d| d.to_vec()).collect(),
                        key: s.key_pkcs8().to_vec(),
                    })
                })
                .collect(),
            sync_cursor: "feed/7".into(),
        };
        assert_eq!(tessera::AgentCache::decode(&streamed[..]).unwrap(), whole);
        let back = CacheSnapshot::decode(&streamed).unwrap();
        assert_eq!(back.entries.len(), 3);
        assert_eq!(back.cursor, "feed/7");
        for id in ["a", "b"] {
            assert_eq!(back.entries[id].svid, snap.entries[id].svid, "{id}");
        }
        assert!(back.entries["c"].svid.is_none());
    }

    #[test]
    fn matching_requires_subset_and_reports_pending() {
        let mut snap = CacheSnapshot::default();
        snap.entries.insert(
            EntryId::parse("b").unwrap(),
            entry("b", 2, &["unix:uid:0"], ""),
        );
        snap.entries.insert(
            EntryId::parse("a").unwrap(),
            entry("a", 1, &["unix:uid:0", "unix:gid:0"], ""),
        );
        snap.entries.insert(
            EntryId::parse("c").unwrap(),
            entry("c", 0, &["unix:uid:5"], ""),
        );
        let caller: SelectorSet = ["unix:uid:0", "unix:gid:0", "unix:user:root"]
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect();
        let ids = snap.identities(&caller, &Lineage::known(vec![]), SystemTime::now());
        assert!(ids.matched, "entries a and b match");
        assert!(ids.svids.is_empty(), "nothing issued yet");
        let mut jit = (*entry("d", 3, &["unix:uid:9"], "")).clone();
        Arc::make_mut(&mut jit.entry).jit = true;
        snap.entries
            .insert(EntryId::parse("d").unwrap(), Arc::new(jit));
        let nine: SelectorSet = ["unix:uid:9"]
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect();
        assert!(
            !snap
                .identities(&nine, &Lineage::known(vec![]), SystemTime::now())
                .matched,
            "dormant JIT entry"
        );
        // A task makes it live until its deadline, and no longer.
        let now = SystemTime::now();
        let mut live = (*snap.entries["d"]).clone();
        live.grant = Some(Arc::new(TaskGrant {
            task_id: common::TaskId::parse("t1").unwrap(),
            deadline: unix(now) + 60,
            audiences: Vec::new(),
            binding: TaskBinding::Selectors,
        }));
        snap.entries
            .insert(EntryId::parse("d").unwrap(), Arc::new(live.clone()));
        assert!(
            snap.identities(&nine, &Lineage::known(vec![]), now).matched,
            "JIT entry under an active task"
        );
        live.grant = Some(Arc::new(TaskGrant {
            task_id: common::TaskId::parse("t1").unwrap(),
            deadline: unix(now),
            audiences: Vec::new(),
            binding: TaskBinding::Selectors,
        }));
        snap.entries
            .insert(EntryId::parse("d").unwrap(), Arc::new(live));
        assert!(
            !snap.identities(&nine, &Lineage::known(vec![]), now).matched,
            "task past its deadline"
        );
        let stranger: SelectorSet = ["unix:uid:7"]
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect();
        assert!(
            !snap
                .identities(&stranger, &Lineage::known(vec![]), SystemTime::now())
                .matched
        );
    }

    #[test]
    fn a_process_bound_task_serves_only_its_holder_and_a_tree_its_descendants() {
        use common::task::{Holder, ProcessInstance, TaskBinding};
        let now = SystemTime::now();
        let holder = ProcessInstance {
            pid: 100,
            start_time: 50,
        };
        let child = ProcessInstance {
            pid: 101,
            start_time: 60,
        };
        let sibling = ProcessInstance {
            pid: 102,
            start_time: 61,
        };
        let parent = ProcessInstance {
            pid: 1,
            start_time: 1,
        };
        let recycled = ProcessInstance {
            pid: 100,
            start_time: 70,
        };
        let bound = |binding: TaskBinding| {
            let mut snap = CacheSnapshot::default();
            snap.entries.insert(
                EntryId::parse("std").unwrap(),
                entry("std", 1, &["unix:uid:0"], ""),
            );
            let mut jit = (*entry("tool", 2, &["unix:uid:0"], "")).clone();
            Arc::make_mut(&mut jit.entry).jit = true;
            jit.grant = Some(Arc::new(TaskGrant {
                task_id: common::TaskId::parse("t1").unwrap(),
                deadline: unix(now) + 60,
                audiences: Vec::new(),
                binding,
            }));
            snap.entries
                .insert(EntryId::parse("tool").unwrap(), Arc::new(jit));
            snap
        };
        let uid0: SelectorSet = ["unix:uid:0"]
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect();
        let sees_tool = |snap: &CacheSnapshot, lineage: &[ProcessInstance]| {
            let tool = &snap.entries["tool"];
            tool.serves(&Lineage::known(lineage.to_vec()), unix(now))
        };
        let h = Holder {
            process: holder,
            agent: SpiffeId::new("spiffe://example.org/agent").unwrap(),
        };
        let process = bound(TaskBinding::Process(h.clone()));
        assert!(sees_tool(&process, &[holder, parent]));
        assert!(!sees_tool(&process, &[child, holder, parent]));
        assert!(!sees_tool(&process, &[sibling, parent]));
        assert!(!sees_tool(&process, &[recycled, parent]));
        // Everyone still matches the standing entry, and may read the bundles.
        assert!(
            process
                .identities(&uid0, &Lineage::known(vec![sibling, parent]), now)
                .matched
        );
        assert!(process.matches_any(&uid0, now));
        let tree = bound(TaskBinding::Tree(h));
        assert!(sees_tool(&tree, &[holder, parent]));
        assert!(sees_tool(&tree, &[child, holder, parent]));
        assert!(!sees_tool(&tree, &[sibling, parent]));
        let selectors = bound(TaskBinding::Selectors);
        assert!(sees_tool(&selectors, &[sibling, parent]));
        assert!(sees_tool(&selectors, &[]));
    }
}
