//! What every agent must know about tasks that ended early: the tasks themselves (so
//! `ValidateJWTSVID` refuses their tokens until their deadline) and one CRL per CA listing
//! their unexpired X.509-SVIDs (sent to workloads with their SVIDs). Relying parties get
//! one CRL per CA this server holds a key for, empty ones included, from the
//! relying-party listener (`relying_party.rs`).
//!
//! [`RevocationState`] recomputes the set from the datastore, signs CRLs only when what
//! they list changed (or when they approach their `nextUpdate`), and keeps the result as
//! one immutable [`RevocationSet`] that sync streams share.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use common::TaskId;
use common::task::TaskState;

use crate::ca::Revoked;
use crate::ca::rotation::CaSet;
use crate::clock::{from_unix_seconds, unix_seconds};
use crate::datastore::{Datastore, DatastoreError, StatusEntry, TaskRecord};
use crate::status_list::StatusLists;

/// CRLs are valid this long and re-signed at half of it.
pub(crate) const CRL_VALIDITY: Duration = Duration::from_secs(3600);

/// A task that ended before its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedTask {
    /// The task.
    pub task_id: TaskId,
    /// Its deadline: after it, nothing issued under the task is valid anyway.
    pub until: i64,
    /// How it ended.
    pub state: TaskState,
    /// Unix milliseconds when it ended, as near as this server knows (see
    /// `ended_at_ms`); what agents measure revocation propagation from.
    pub ended_at_ms: i64,
    /// Its token status list entry (tasks recorded before schema version 10: none).
    pub status: Option<StatusEntry>,
}

/// Everything agents must refuse, as one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    /// One DER CRL per CA that signed a revoked SVID and whose key this server holds.
    pub crls: Vec<Vec<u8>>,
    /// One DER CRL per CA whose key this server holds (active and prepared), keyed by the
    /// CA's serial (lowercase hex), listing its revoked SVIDs, or none: what relying
    /// parties fetch from the CRL Distribution Point of a task SVID.
    pub published_crls: BTreeMap<String, Vec<u8>>,
    /// Tasks that ended early and whose deadline has not passed.
    pub ended_tasks: Vec<EndedTask>,
    /// The token status lists, their entries of `ended_tasks` INVALID: what relying
    /// parties fetch from the `status` claim of a task JWT-SVID.
    pub status_lists: StatusLists,
}

/// Whether a final task ended before its deadline (expiry is not a revocation: its
/// credentials end at the deadline by themselves).
pub(crate) fn ended_early(t: &TaskRecord) -> bool {
    !t.state.is_open() && t.state != TaskState::Expired
}

/// Unix milliseconds of `now`.
fn unix_millis(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// When a task the datastore says ended in second `ended_at` (Unix seconds) ended, in
/// Unix milliseconds, seen first at `now_ms`: `now_ms` while still within that second
/// (the server publishes an end it made itself at once, so this is within milliseconds
/// of the end), else the end of that second (an end seen late, e.g. made by another
/// server: the estimate then errs short by under a second, never long).
pub(crate) fn ended_at_ms(ended_at: i64, now_ms: i64) -> i64 {
    now_ms.min(ended_at.saturating_mul(1000).saturating_add(999))
}

/// What the CRLs were signed for: (CA serial, SVID serial) pairs listed, and the CAs that
/// signed one (each CA whose key the server holds).
type Listed = (Vec<(String, String)>, Vec<String>);

/// The current [`RevocationSet`] and the CRL bookkeeping behind it.
#[derive(Debug)]
pub(crate) struct RevocationState {
    current: RwLock<Arc<RevocationSet>>,
    crl_number: AtomicU64,
    signed_at: RwLock<Option<SystemTime>>,
    /// What the current CRLs were signed for.
    listed: RwLock<Listed>,
    /// One refresh at a time, so an older computation never overwrites a newer one.
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Default for RevocationState {
    fn default() -> Self {
        Self {
            current: RwLock::new(Arc::new(RevocationSet::default())),
            crl_number: AtomicU64::new(0),
            signed_at: RwLock::new(None),
            listed: RwLock::default(),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl RevocationState {
    /// CRL numbers must grow across restarts: start from the current time in seconds.
    pub(crate) fn start_numbering_at(&self, now: SystemTime) {
        self.crl_number
            .store(unix_seconds(now).unsigned_abs(), Ordering::Relaxed);
    }

    /// The current set.
    pub(crate) fn current(&self) -> Arc<RevocationSet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the CRLs reached half their validity (or were never signed).
    pub(crate) fn stale(&self, now: SystemTime) -> bool {
        self.signed_at
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= CRL_VALIDITY / 2)
    }

    /// Recomputes the set at `now`; stores it and returns `true` when it changed or when
    /// `force`d (CRLs re-signed), `false` when nothing changed.
    pub(crate) async fn refresh(
        &self,
        ds: &dyn Datastore,
        ca: &CaSet,
        now: SystemTime,
        force: bool,
    ) -> Result<bool, DatastoreError> {
        let _serial = self.refresh_lock.lock().await;
        let now_unix = unix_seconds(now);
        let (tasks, svids) = ds.revoked_since(now_unix).await?;
        let now_ms = unix_millis(now);
        let ended: Vec<EndedTask> = {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            tasks
                .iter()
                .filter(|t| ended_early(t))
                .map(|t| EndedTask {
                    task_id: t.id.clone(),
                    until: t.deadline,
                    state: t.state,
                    status: t.status,
                    // Stamped once, when first seen here, and kept: a later refresh must
                    // not see a change.
                    ended_at_ms: cur
                        .ended_tasks
                        .iter()
                        .find(|c| c.task_id == t.id)
                        .map_or_else(
                            || ended_at_ms(t.end.as_ref().map_or(now_unix, |e| e.at), now_ms),
                            |c| c.ended_at_ms,
                        ),
                })
                .collect()
        };
        let newest_list = ds.newest_status_list().await?;
        let listed: Vec<(String, String)> = svids
            .iter()
            .map(|v| (v.issuer_serial.clone(), v.serial.clone()))
            .collect();
        // A CA prepared or activated since the last signing needs its (empty) CRL.
        let signers = ca.signing_serials();
        let listed = (listed, signers);
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            let last = self.listed.read().unwrap_or_else(|e| e.into_inner());
            if !force
                && cur.ended_tasks == ended
                && *last == listed
                && cur.status_lists.newest() == newest_list.unwrap_or(0)
            {
                return Ok(false);
            }
        }
        let (status_lists, compressed) = StatusLists::build(
            ended.iter().filter_map(|t| t.status),
            newest_list,
            &self.current().status_lists,
        );
        if compressed > 0 {
            tracing::debug!(
                lists = compressed,
                newest = status_lists.newest(),
                "token status lists changed"
            );
        }
        let ended_at: HashMap<&str, i64> = tasks
            .iter()
            .filter_map(|t| Some((t.id.as_str(), t.end.as_ref()?.at)))
            .collect();
        let mut by_ca: BTreeMap<&str, Vec<Revoked>> = BTreeMap::new();
        for s in &svids {
            let at = ended_at
                .get(s.task_id.as_str())
                .copied()
                .unwrap_or(now_unix);
            by_ca.entry(&s.issuer_serial).or_default().push(Revoked {
                serial_hex: s.serial.clone(),
                at: from_unix_seconds(at),
            });
        }
        for serial in &listed.1 {
            by_ca.entry(serial.as_str()).or_default();
        }
        let number = self.crl_number.fetch_add(1, Ordering::Relaxed) + 1;
        let next_update = now + CRL_VALIDITY;
        let mut crls = Vec::new();
        let mut published_crls = BTreeMap::new();
        for (ca_serial, revoked) in by_ca {
            match ca.sign_crl(ca_serial, &revoked, number, next_update) {
                Some(Ok(der)) => {
                    if !revoked.is_empty() {
                        crls.push(der.clone());
                    }
                    published_crls.insert(ca_serial.to_owned(), der);
                }
                Some(Err(e)) => tracing::error!(error = %e, ca_serial, "cannot sign a CRL"),
                None => tracing::warn!(
                    ca_serial,
                    revoked = revoked.len(),
                    "no CRL for SVIDs of a retired CA (its key is gone); ended tasks still remove them"
                ),
            }
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(RevocationSet {
            crls,
            published_crls,
            ended_tasks: ended,
            status_lists,
        });
        *self.listed.write().unwrap_or_else(|e| e.into_inner()) = listed;
        *self.signed_at.write().unwrap_or_else(|e| e.into_inner()) = Some(now);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;
    use common::TrustDomain;
    use x509_parser::prelude::FromDer as _;

    #[test]
    fn an_end_is_stamped_when_published_within_its_second_else_at_the_end_of_it() {
        // Seen within the second the datastore recorded: the time it was seen.
        assert_eq!(
            ended_at_ms(1_700_000_000, 1_700_000_000_250),
            1_700_000_000_250
        );
        // Seen later (ended elsewhere, or before a restart): the end of that second.
        assert_eq!(
            ended_at_ms(1_700_000_000, 1_700_000_042_000),
            1_700_000_000_999
        );
        assert_eq!(ended_at_ms(i64::MAX, 5), 5);
    }

    #[tokio::test]
    async fn every_ca_with_a_key_has_a_published_crl_even_with_nothing_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let ds = SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let ca =
            CaSet::load_or_create(dir.path(), &td, Duration::from_secs(86400), None, now).unwrap();
        let state = RevocationState::default();
        assert!(state.refresh(&ds, &ca, now, false).await.unwrap());
        let set = state.current();
        assert!(set.crls.is_empty(), "agents get no empty CRLs");
        let first = ca.signing_serials();
        assert_eq!(first.len(), 1);
        let der = set.published_crls.get(&first[0]).expect("active CA's CRL");
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        // Nothing changed: nothing is re-signed.
        assert!(!state.refresh(&ds, &ca, now, false).await.unwrap());
        // A new CA gets its CRL at the next refresh; the retired one (key gone) has none.
        ca.rotate_now().unwrap();
        assert!(state.refresh(&ds, &ca, now, false).await.unwrap());
        let published: Vec<String> = state.current().published_crls.keys().cloned().collect();
        let mut signers = ca.signing_serials();
        signers.sort();
        assert_eq!(published, signers);
        assert!(!published.contains(&first[0]));
    }
}
