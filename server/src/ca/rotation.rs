//! CA rotation without outage.
//!
//! A [`CaSet`] holds the **active** CA (the one that signs), at most one **prepared** CA
//! (published in the bundle, signing nothing yet) and the **retired** CAs (published until
//! they expire, signing nothing). With `L` the active CA's lifetime:
//! - at `L/2` the next CA is prepared and published, so every agent and workload holds it
//!   long before it signs anything;
//! - at `5L/6` it becomes active (provided it has been published for at least `L/12`);
//!   every SVID the old CA signed expires by the old CA's own expiry (SVIDs never outlive
//!   their CA), which is exactly how long the old CA stays in the bundle.
//!
//! Configured SVID lifetimes up to `L/6` therefore never need cutting; the server warns at
//! start-up when a TTL is longer. `rotate_now` forces a rotation (suspected compromise).
//! State lives in `<data_dir>/ca_state.json` (0600), rewritten atomically on every change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use common::{Bundle, SpiffeId, TrustDomain};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::{Ca, CaError, Issued, UpstreamAuthority};
use daemon::state_file;

/// Where a CA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaPhase {
    /// Published, not signing yet.
    Prepared,
    /// Signing.
    Active,
    /// Published until it expires, no longer signing.
    Retired,
}

impl CaPhase {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }
}

/// One CA as listed by `ca show`.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// Serial, hex.
    pub serial: String,
    /// Phase.
    pub phase: CaPhase,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

#[derive(Debug, Clone)]
struct RetiredCa {
    cert: CertificateDer<'static>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

#[derive(Debug)]
struct State {
    active: Arc<Ca>,
    prepared: Option<Arc<Ca>>,
    retired: Vec<RetiredCa>,
}

#[derive(Serialize, Deserialize)]
struct StoredPair {
    key_pem: String,
    cert_pem: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    active: StoredPair,
    prepared: Option<StoredPair>,
    retired: Vec<String>,
}

/// A CA certificate this server publishes in the trust bundle, with its phase.
#[derive(Debug, Clone)]
pub struct PublishedCa {
    /// Serial, hex.
    pub serial: String,
    /// Phase (an upstream root is `Active`).
    pub phase: CaPhase,
    /// The certificate.
    pub cert: CertificateDer<'static>,
    /// Validity end: it leaves the bundle then.
    pub not_after: SystemTime,
}

/// One X.509-SVID for [`CaSet::sign_svids`] to sign: the arguments of
/// [`CaSet::sign_svid_for_task`].
#[derive(Debug, Clone)]
pub struct SvidRequest {
    /// The PKCS#10 CSR (DER); only its public key is used.
    pub csr: Vec<u8>,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its lifetime (cut to the CA's expiry).
    pub ttl: Duration,
    /// Its DNS names (the first is the Subject's CN).
    pub dns_names: Vec<String>,
    /// The task it is issued under, if any.
    pub task_id: Option<common::TaskId>,
}

/// What a [`CaSet::tick`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaChange {
    /// The set of published authorities changed.
    pub bundle_changed: bool,
    /// A new CA became active (the server's own certificate should be re-issued).
    pub activated: bool,
}

/// The server's CAs and their rotation schedule.
#[derive(Debug)]
pub struct CaSet {
    path: PathBuf,
    trust_domain: TrustDomain,
    ttl: Duration,
    upstream: Option<Arc<UpstreamAuthority>>,
    /// Base of the CRL URLs put in task SVIDs (`<base>/crl/<CA serial>.crl`), when the
    /// relying-party listener serves them.
    crl_base_url: Option<String>,
    state: RwLock<State>,
}

fn io(e: impl std::fmt::Display) -> CaError {
    CaError::Storage(e.to_string())
}

fn retire(ca: &Ca) -> RetiredCa {
    RetiredCa {
        cert: ca.certificate().clone(),
        serial: ca.serial_hex().to_owned(),
        not_before: ca.not_before(),
        not_after: ca.not_after(),
    }
}

fn lifetime(ca: &Ca) -> Duration {
    ca.not_after()
        .duration_since(ca.not_before())
        .unwrap_or(Duration::ZERO)
}

impl CaSet {
    /// Loads the CA state from `dir`, creating a first CA when there is none.
    pub fn load_or_create(
        dir: &Path,
        td: &TrustDomain,
        ttl: Duration,
        upstream: Option<Arc<UpstreamAuthority>>,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let path = dir.join("ca_state.json");
        let up = upstream.as_deref();
        let state = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let stored: Stored = serde_json::from_str(&text).map_err(io)?;
            let active = Arc::new(Ca::from_pem(
                td,
                &stored.active.key_pem,
                &stored.active.cert_pem,
                up,
            )?);
            let prepared = stored
                .prepared
                .map(|p| Ca::from_pem(td, &p.key_pem, &p.cert_pem, up).map(Arc::new))
                .transpose()?;
            let mut retired = Vec::new();
            for cert_pem in stored.retired {
                let der = CertificateDer::from(pem::parse(&cert_pem).map_err(io)?.into_contents());
                let info = super::parse_ca_cert(&der)?;
                retired.push(RetiredCa {
                    cert: der,
                    serial: info.0,
                    not_before: info.1,
                    not_after: info.2,
                });
            }
            State {
                active,
                prepared,
                retired,
            }
        } else {
            let active = Arc::new(Ca::generate(td, ttl, up)?);
            tracing::info!(trust_domain = %td, serial = %active.serial_hex(), "generated the first CA");
            State {
                active,
                prepared: None,
                retired: Vec::new(),
            }
        };
        let reissue = !state.active.matches(up);
        let set = Self {
            path,
            trust_domain: td.clone(),
            ttl,
            upstream,
            crl_base_url: None,
            state: RwLock::new(state),
        };
        if reissue {
            // The upstream authority was added, removed or replaced since the CA was made.
            tracing::warn!("the CA does not match the configured upstream authority; rotating");
            set.rotate_now()?;
        }
        {
            let state = set.read();
            set.save(&state)?;
        }
        set.tick(now)?;
        Ok(set)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, state: &State) -> Result<(), CaError> {
        let pair = |ca: &Ca| StoredPair {
            key_pem: ca.key_pem(),
            cert_pem: ca.cert_pem(),
        };
        let stored = Stored {
            active: pair(&state.active),
            prepared: state.prepared.as_deref().map(pair),
            retired: state
                .retired
                .iter()
                .map(|r| pem::encode(&pem::Pem::new("CERTIFICATE", r.cert.to_vec())))
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(io)?;
        state_file::write_atomic(&self.path, &text, 0o600).map_err(io)
    }

    /// Makes task SVIDs carry a CRL Distribution Point under `base_url` (the
    /// relying-party listener's public URL, without a trailing slash).
    #[must_use]
    pub fn with_crl_base_url(mut self, base_url: Option<String>) -> Self {
        self.crl_base_url = base_url;
        self
    }

    /// The URL of the CRL of the CA whose serial is `ca_serial`, when CRLs are published.
    pub fn crl_url(&self, ca_serial: &str) -> Option<String> {
        self.crl_base_url
            .as_ref()
            .map(|base| format!("{base}/crl/{ca_serial}.crl"))
    }

    /// Serials of the CAs whose keys this server holds (active, then prepared): the CAs
    /// that can sign a CRL.
    pub fn signing_serials(&self) -> Vec<String> {
        let state = self.read();
        [Some(&state.active), state.prepared.as_ref()]
            .into_iter()
            .flatten()
            .map(|ca| ca.serial_hex().to_owned())
            .collect()
    }

    /// The CA that signs now.
    pub fn active(&self) -> Arc<Ca> {
        Arc::clone(&self.read().active)
    }

    /// Signs an X.509-SVID with the active CA (see [`Ca::sign_svid`]).
    pub fn sign_svid(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<Issued, CaError> {
        self.active().sign_svid(csr_der, spiffe_id, ttl, dns_names)
    }

    /// Signs an X.509-SVID, under a task if `task_id` is given, with the active CA (see
    /// [`Ca::sign_svid_for_task`]).
    pub fn sign_svid_for_task(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
        task_id: Option<&common::TaskId>,
    ) -> Result<Issued, CaError> {
        let ca = self.active();
        // Only task SVIDs can be revoked before they expire, so only they point to a CRL.
        let crl_url = task_id.and_then(|_| self.crl_url(ca.serial_hex()));
        ca.sign_svid_with_crl(
            csr_der,
            spiffe_id,
            ttl,
            dns_names,
            task_id,
            crl_url.as_deref(),
        )
    }

    /// Signs every request with the active CA (as [`CaSet::sign_svid_for_task`] does one)
    /// on the blocking pool, in about as many chunks, signed at once, as the machine runs
    /// threads. The results are in request order, each request's refusal in its place.
    pub async fn sign_svids(
        self: &Arc<Self>,
        requests: Vec<SvidRequest>,
    ) -> Vec<Result<Issued, CaError>> {
        let n = requests.len();
        if n <= 1 {
            return requests.iter().map(|r| self.sign_request(r)).collect();
        }
        let parts = common::svid::parallel_chunks().min(n);
        let size = n.div_ceil(parts);
        let mut requests = requests.into_iter();
        let mut chunks = Vec::with_capacity(parts);
        loop {
            let chunk: Vec<SvidRequest> = requests.by_ref().take(size).collect();
            if chunk.is_empty() {
                break;
            }
            let set = Arc::clone(self);
            let len = chunk.len();
            let signing = tokio::task::spawn_blocking(move || {
                chunk
                    .iter()
                    .map(|r| set.sign_request(r))
                    .collect::<Vec<_>>()
            });
            chunks.push((len, signing));
        }
        let mut out = Vec::with_capacity(n);
        for (len, signing) in chunks {
            match signing.await {
                Ok(results) => out.extend(results),
                Err(e) => {
                    tracing::error!(error = %e, csrs = len, "BUG: a signing chunk did not finish");
                    let failed = CaError::Signing(format!("signing did not finish: {e}"));
                    out.extend(std::iter::repeat_n(Err(failed), len));
                }
            }
        }
        out
    }

    fn sign_request(&self, r: &SvidRequest) -> Result<Issued, CaError> {
        self.sign_svid_for_task(
            &r.csr,
            &r.spiffe_id,
            r.ttl,
            &r.dns_names,
            r.task_id.as_ref(),
        )
    }

    /// Signs a CRL with the CA whose serial is `ca_serial`, if this server still holds its
    /// key (the active or prepared CA). A retired CA's key is gone: `None`.
    pub fn sign_crl(
        &self,
        ca_serial: &str,
        revoked: &[crate::ca::Revoked],
        crl_number: u64,
        next_update: SystemTime,
    ) -> Option<Result<Vec<u8>, CaError>> {
        let state = self.read();
        [Some(&state.active), state.prepared.as_ref()]
            .into_iter()
            .flatten()
            .find(|ca| ca.serial_hex() == ca_serial)
            .map(|ca| ca.sign_crl(revoked, crl_number, next_update))
    }

    /// The trust bundle: the upstream root(s) when there is an upstream authority, else
    /// every published CA (retired, active, prepared).
    pub fn bundle(&self, sequence: u64) -> Bundle {
        if let Some(up) = &self.upstream {
            return Bundle::new(
                self.trust_domain.clone(),
                up.roots().to_vec(),
                sequence,
                300,
            );
        }
        let state = self.read();
        let mut roots: Vec<CertificateDer<'static>> =
            state.retired.iter().map(|r| r.cert.clone()).collect();
        roots.push(state.active.certificate().clone());
        if let Some(p) = &state.prepared {
            roots.push(p.certificate().clone());
        }
        Bundle::new(self.trust_domain.clone(), roots, sequence, 300)
    }

    /// The certificates this server publishes in the trust bundle, with their phases:
    /// the upstream root(s) when there is an upstream authority, else every CA (retired,
    /// active, prepared), as [`CaSet::bundle`] holds them.
    pub fn published(&self) -> Vec<PublishedCa> {
        if let Some(up) = &self.upstream {
            return up
                .roots()
                .iter()
                .filter_map(|cert| {
                    let (serial, _, not_after) = super::parse_ca_cert(cert).ok()?;
                    Some(PublishedCa {
                        serial,
                        phase: CaPhase::Active,
                        cert: cert.clone(),
                        not_after,
                    })
                })
                .collect();
        }
        let state = self.read();
        let mut out: Vec<PublishedCa> = state
            .retired
            .iter()
            .map(|r| PublishedCa {
                serial: r.serial.clone(),
                phase: CaPhase::Retired,
                cert: r.cert.clone(),
                not_after: r.not_after,
            })
            .collect();
        let of = |ca: &Ca, phase| PublishedCa {
            serial: ca.serial_hex().to_owned(),
            phase,
            cert: ca.certificate().clone(),
            not_after: ca.not_after(),
        };
        out.push(of(&state.active, CaPhase::Active));
        if let Some(p) = &state.prepared {
            out.push(of(p, CaPhase::Prepared));
        }
        out
    }

    /// The CAs with their phases, oldest first.
    pub fn list(&self) -> Vec<CaInfo> {
        let state = self.read();
        let mut out: Vec<CaInfo> = state
            .retired
            .iter()
            .map(|r| CaInfo {
                serial: r.serial.clone(),
                phase: CaPhase::Retired,
                not_before: r.not_before,
                not_after: r.not_after,
            })
            .collect();
        let info = |ca: &Ca, phase| CaInfo {
            serial: ca.serial_hex().to_owned(),
            phase,
            not_before: ca.not_before(),
            not_after: ca.not_after(),
        };
        out.push(info(&state.active, CaPhase::Active));
        if let Some(p) = &state.prepared {
            out.push(info(p, CaPhase::Prepared));
        }
        out
    }

    /// When the schedule next needs attention.
    pub fn next_event(&self) -> SystemTime {
        let state = self.read();
        let a = &state.active;
        let life = lifetime(a);
        let mut next = if state.prepared.is_some() {
            a.not_before() + life.mul_f64(5.0 / 6.0)
        } else {
            a.not_before() + life / 2
        };
        for r in &state.retired {
            next = next.min(r.not_after);
        }
        next
    }

    /// Advances the schedule to `now`.
    pub fn tick(&self, now: SystemTime) -> Result<CaChange, CaError> {
        let mut state = self.write();
        let mut change = CaChange::default();
        let before = state.retired.len();
        state.retired.retain(|r| now < r.not_after);
        change.bundle_changed |= state.retired.len() != before;

        let life = lifetime(&state.active);
        let expired = now >= state.active.not_after();
        if state.prepared.is_none() && (expired || now >= state.active.not_before() + life / 2) {
            let next = Arc::new(Ca::generate(
                &self.trust_domain,
                self.ttl,
                self.upstream.as_deref(),
            )?);
            tracing::info!(serial = %next.serial_hex(), "prepared the next CA; published in the bundle");
            state.prepared = Some(next);
            change.bundle_changed = true;
        }
        let due = now >= state.active.not_before() + life.mul_f64(5.0 / 6.0);
        let published_long_enough = state.prepared.as_ref().is_some_and(|p| {
            // notBefore is back-dated by ten seconds at creation.
            now >= p.not_before() + Duration::from_secs(10) + life / 12
        });
        if ((due && published_long_enough) || expired)
            && let Some(next) = state.prepared.take()
        {
            {
                if expired {
                    tracing::error!(
                        "the active CA expired before rotation; activating its successor at once"
                    );
                }
                let old = std::mem::replace(&mut state.active, next);
                state.retired.push(retire(&old));
                tracing::info!(serial = %state.active.serial_hex(), "activated the next CA");
                change.bundle_changed = true;
                change.activated = true;
            }
        }
        if change.bundle_changed {
            self.save(&state)?;
        }
        Ok(change)
    }

    /// Forces a rotation now: a fresh CA becomes active at once (the previous one stays
    /// published until it expires). Use after a suspected key compromise.
    pub fn rotate_now(&self) -> Result<(), CaError> {
        let mut state = self.write();
        let next = Arc::new(Ca::generate(
            &self.trust_domain,
            self.ttl,
            self.upstream.as_deref(),
        )?);
        let old = std::mem::replace(&mut state.active, next);
        state.retired.push(retire(&old));
        // A prepared CA generated before the forced rotation is discarded: it was created
        // by the same (possibly compromised) key custody.
        if let Some(p) = state.prepared.take() {
            state.retired.push(retire(&p));
        }
        tracing::warn!(serial = %state.active.serial_hex(), "CA rotated by operator");
        self.save(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_prepares_activates_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let ttl = Duration::from_secs(600);
        let now = SystemTime::now();
        let set = CaSet::load_or_create(dir.path(), &td, ttl, None, now).unwrap();
        let first = set.active();
        assert_eq!(set.list().len(), 1);
        let life = lifetime(&first);

        // Before half-life nothing happens.
        assert_eq!(
            set.tick(first.not_before() + life / 3).unwrap(),
            CaChange::default()
        );
        // The prepared CA is generated now (real clock), so run the schedule relative to it.
        let c = set.tick(first.not_before() + life / 2).unwrap();
        assert!(c.bundle_changed && !c.activated);
        assert_eq!(
            set.bundle(1).x509_authorities().len(),
            2,
            "prepared CA is published"
        );
        assert_eq!(
            set.active().serial_hex(),
            first.serial_hex(),
            "but does not sign"
        );

        // Reload keeps the prepared CA.
        let reloaded =
            CaSet::load_or_create(dir.path(), &td, ttl, None, first.not_before() + life / 2)
                .unwrap();
        assert_eq!(reloaded.list().len(), 2);

        let at = first.not_before() + life.mul_f64(5.0 / 6.0) + Duration::from_secs(60);
        let c = set.tick(at).unwrap();
        assert!(c.activated, "activated at 5/6");
        assert_ne!(set.active().serial_hex(), first.serial_hex());
        let phases: Vec<CaPhase> = set.list().iter().map(|i| i.phase).collect();
        assert_eq!(phases, vec![CaPhase::Retired, CaPhase::Active]);
        assert_eq!(
            set.bundle(2).x509_authorities().len(),
            2,
            "old CA still published"
        );

        // The old CA leaves the bundle when it expires.
        let c = set.tick(first.not_after()).unwrap();
        assert!(c.bundle_changed);
        assert!(
            set.list().iter().all(|i| i.serial != first.serial_hex()),
            "expired CA unpublished"
        );
        let published = set.bundle(3).x509_authorities().to_vec();
        assert!(!published.contains(first.certificate()));

        // Forced rotation.
        let before = set.active().serial_hex().to_owned();
        set.rotate_now().unwrap();
        assert_ne!(set.active().serial_hex(), before);
        assert!(
            set.bundle(4).x509_authorities().len() >= 2,
            "previous CA still published"
        );
        assert!(set.list().iter().all(|i| i.phase != CaPhase::Prepared));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca_state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
