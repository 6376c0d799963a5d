//! Test helpers (feature `testing`, and this crate's unit tests): an in-process server.
//!
//! [`FakeNode`] implements the agent↔server seam ([`NodeApi`], [`NodeConnector`]) in
//! memory, so the rotation worker can be driven under paused time. It is not an
//! imitation of the datastore: it holds the entries a test gives it, pushes them on sync
//! streams like the server does (a snapshot, then every change), and signs CSRs with a
//! real throwaway CA ([`TestCa`], rcgen P-256), cutting a task entry's SVID to its task's
//! deadline as the server does. A test can make the next N signing calls fail, end the
//! open streams, and read back every call with the (wall-clock) time it was made.
//! JWT-SVIDs and tasks are not served: those calls are recorded and answered
//! `Unimplemented`. Usage reports are recorded and accepted whole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use common::proto::tessera::{
    self, AttestAgentRequest, AttestAgentResponse, CsrForEntry, MintJwtSvidRequest,
    MintJwtSvidResponse, NodeBeginTaskRequest, NodeEndTaskRequest, RenewAgentRequest,
    RenewAgentResponse, SignedX509Svid, SyncSnapshot, SyncUpdate, Task, TaskTokenUse, UsageReport,
    UsageReportAck, sync_update,
};
use common::{Bundle, SpiffeId, TrustDomain, X509Svid};
use futures::StreamExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

use crate::clock::{Clock, from_unix};
use crate::node_api::{NodeApi, NodeConnector, SyncStream};
use crate::server_client::ClientError;

/// A throwaway CA for one trust domain: real keys, real signatures.
pub struct TestCa {
    trust_domain: TrustDomain,
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("trust_domain", &self.trust_domain)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn uri_san(id: &str) -> Result<SanType, String> {
    Ok(SanType::URI(
        id.to_owned()
            .try_into()
            .map_err(|e: rcgen::Error| e.to_string())?,
    ))
}

impl TestCa {
    /// A new CA for `trust_domain`, valid from a day before `now` for ten years.
    pub fn new(trust_domain: &TrustDomain, now: SystemTime) -> Result<Self, String> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Tessera test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri_san(&trust_domain.id_string())?];
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            params,
            key,
            cert: cert.der().clone(),
        })
    }

    /// The bundle holding this CA.
    pub fn bundle(&self) -> Bundle {
        Bundle::new(self.trust_domain.clone(), vec![self.cert.clone()], 1, 0)
    }

    /// Signs `csr_der` (PKCS#10) for `spiffe_id`, valid in `[not_before, not_after]`:
    /// the DER leaf (the chain is the leaf alone; the CA is in the bundle).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<u8>, String> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| e.to_string())?;
        let mut p = CertificateParams::default();
        p.distinguished_name.remove(DnType::CommonName);
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        p.serial_number = Some(random_serial());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.subject_alt_names = vec![uri_san(spiffe_id.as_ref())?];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p
            .signed_by(&csr.public_key, &issuer)
            .map_err(|e| e.to_string())?;
        Ok(cert.der().to_vec())
    }

    /// A fresh key and an SVID for it, valid from `not_before` for `ttl`.
    pub fn issue(
        &self,
        spiffe_id: &SpiffeId,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<X509Svid, String> {
        let key = common::svid::generate_key().map_err(|e| e.to_string())?;
        let csr = common::svid::csr_for(&key).map_err(|e| e.to_string())?;
        let der = self.sign_csr(&csr, spiffe_id, not_before, not_before + ttl)?;
        X509Svid::new(vec![CertificateDer::from(der)], key.serialize_der())
            .map_err(|e| e.to_string())
    }
}

/// A call the agent made to the [`FakeNode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCall {
    /// A session was opened, presenting an agent SVID (with this serial) or none.
    Connect {
        /// Serial of the agent SVID presented, if any.
        agent_serial: Option<String>,
    },
    /// `AttestAgent`.
    Attest,
    /// `RenewAgent`.
    Renew,
    /// `Sync`.
    Sync,
    /// `SignX509Svids` for these entries; `failed` when it was made to fail.
    Sign {
        /// The entries in the batch.
        entry_ids: Vec<String>,
        /// Whether the fake failed the call (see [`FakeNode::fail_next_signs`]).
        failed: bool,
    },
    /// `MintJwtSvid`.
    Mint,
    /// `BeginTask`.
    BeginTask,
    /// `EndTask`.
    EndTask,
    /// `RecordTaskTokenUse`.
    RecordTaskTokenUse,
    /// `ReportUsage` with these items: `(entry id, deliveries, validations, last used)`.
    ReportUsage {
        /// The report's items, in order.
        items: Vec<(String, u64, u64, i64)>,
    },
}

/// A [`NodeCall`] and the wall-clock time (by the fake's clock) it was made at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// When.
    pub at: SystemTime,
    /// What.
    pub call: NodeCall,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, tessera::Entry>,
    streams: Vec<mpsc::UnboundedSender<Result<SyncUpdate, Status>>>,
    fail_signs: usize,
    /// How long each signing call takes (none: it answers at once).
    sign_delay: Duration,
    /// Signing calls being answered now, and the most there were at once.
    signs_in_flight: usize,
    most_signs_in_flight: usize,
    unreachable: bool,
    calls: Vec<RecordedCall>,
}

#[derive(Debug)]
struct Inner {
    ca: TestCa,
    clock: Arc<dyn Clock>,
    agent_id: SpiffeId,
    agent_svid_ttl: Duration,
    state: Mutex<State>,
}

/// An in-process server for agent tests; see the module documentation. Clones share
/// one state.
#[derive(Debug, Clone)]
pub struct FakeNode(Arc<Inner>);

impl FakeNode {
    /// A server for `trust_domain` whose certificates are dated by `clock`; agent SVIDs
    /// it issues live `agent_svid_ttl`.
    pub fn new(
        trust_domain: &TrustDomain,
        clock: Arc<dyn Clock>,
        agent_svid_ttl: Duration,
    ) -> Result<Self, String> {
        let ca = TestCa::new(trust_domain, clock.now())?;
        let agent_id =
            SpiffeId::from_parts(trust_domain, "/agent/fake").map_err(|e| e.to_string())?;
        Ok(Self(Arc::new(Inner {
            ca,
            clock,
            agent_id,
            agent_svid_ttl,
            state: Mutex::new(State::default()),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, state: &mut State, call: NodeCall) {
        state.calls.push(RecordedCall {
            at: self.0.clock.now(),
            call,
        });
    }

    /// The trust bundle (the fake's CA).
    pub fn bundle(&self) -> Bundle {
        self.0.ca.bundle()
    }

    /// An agent SVID issued now, as after attestation.
    pub fn agent_svid(&self) -> Result<X509Svid, String> {
        self.0
            .ca
            .issue(&self.0.agent_id, self.0.clock.now(), self.0.agent_svid_ttl)
    }

    /// An entry parented to the fake's agent, for `spiffe://<td><path>`, matching
    /// `unix:uid:0`, with revision 1.
    pub fn entry(&self, id: &str, path: &str, x509_svid_ttl: Duration) -> tessera::Entry {
        tessera::Entry {
            id: id.to_owned(),
            spiffe_id: format!("{}{path}", self.0.ca.trust_domain.id_string()),
            parent_id: self.0.agent_id.to_string(),
            selectors: vec!["unix:uid:0".to_owned()],
            x509_svid_ttl_seconds: i64::try_from(x509_svid_ttl.as_secs()).unwrap_or(i64::MAX),
            jwt_svid_ttl_seconds: 300,
            dns_names: Vec::new(),
            jit: false,
            hint: String::new(),
            created_at: crate::cache::unix(self.0.clock.now()),
            revision: 1,
            ..tessera::Entry::default()
        }
    }

    fn broadcast(state: &mut State, update: &SyncUpdate) {
        state
            .streams
            .retain(|tx| tx.send(Ok(update.clone())).is_ok());
    }

    /// Creates or replaces an entry and pushes the change on every open sync stream.
    pub fn upsert_entry(&self, entry: tessera::Entry) {
        let mut state = self.state();
        state.entries.insert(entry.id.clone(), entry.clone());
        Self::broadcast(
            &mut state,
            &SyncUpdate {
                cursor: String::new(),
                update: Some(sync_update::Update::EntryUpserted(entry)),
            },
        );
    }

    /// Deletes an entry and pushes the change on every open sync stream.
    pub fn delete_entry(&self, id: &str) {
        let mut state = self.state();
        state.entries.remove(id);
        Self::broadcast(
            &mut state,
            &SyncUpdate {
                cursor: String::new(),
                update: Some(sync_update::Update::EntryDeleted(id.to_owned())),
            },
        );
    }

    /// Pushes a full snapshot of the current entries on every open sync stream.
    pub fn push_snapshot(&self) {
        let mut state = self.state();
        let snapshot = self.snapshot(&state);
        Self::broadcast(&mut state, &snapshot);
    }

    fn snapshot(&self, state: &State) -> SyncUpdate {
        SyncUpdate {
            cursor: String::new(),
            update: Some(sync_update::Update::Snapshot(SyncSnapshot {
                entries: state.entries.values().cloned().collect(),
                bundle: Some((&self.bundle()).into()),
                revocations: Some(tessera::Revocations::default()),
                templates: Vec::new(),
                more: false,
            })),
        }
    }

    /// Ends every open sync stream with `status` (e.g. `PermissionDenied` for an evicted
    /// agent).
    pub fn push_error(&self, status: Status) {
        let mut state = self.state();
        for tx in state.streams.drain(..) {
            let _ = tx.send(Err(status.clone()));
        }
    }

    /// Makes every signing call take `delay` (by tokio's clock) before it is answered.
    pub fn delay_signs(&self, delay: Duration) {
        self.state().sign_delay = delay;
    }

    /// The most signing calls that were being answered at once.
    pub fn most_signs_in_flight(&self) -> usize {
        self.state().most_signs_in_flight
    }

    /// Makes the next `n` signing calls fail with `Unavailable`.
    pub fn fail_next_signs(&self, n: usize) {
        self.state().fail_signs = n;
    }

    /// Ends every open sync stream (as a server restart would).
    pub fn end_streams(&self) {
        self.state().streams.clear();
    }

    /// While `true`, every call fails with `Unavailable` and open streams are ended, as
    /// when the server is down.
    pub fn set_unreachable(&self, unreachable: bool) {
        let mut state = self.state();
        state.unreachable = unreachable;
        if unreachable {
            state.streams.clear();
        }
    }

    fn check_reachable(state: &State) -> Result<(), Status> {
        if state.unreachable {
            Err(Status::unavailable("server unreachable (test)"))
        } else {
            Ok(())
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state().calls.clone()
    }

    /// When each signing call was made, and whether it failed.
    pub fn sign_calls(&self) -> Vec<(SystemTime, bool)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c.call {
                NodeCall::Sign { failed, .. } => Some((c.at, failed)),
                _ => None,
            })
            .collect()
    }

    fn sign_one(&self, state: &State, csr: &CsrForEntry, now: SystemTime) -> SignedX509Svid {
        let result = (|| {
            let entry = state
                .entries
                .get(&csr.entry_id)
                .ok_or_else(|| "no such entry".to_owned())?;
            let spiffe_id = SpiffeId::new(&entry.spiffe_id).map_err(|e| e.to_string())?;
            let ttl = Duration::from_secs(u64::try_from(entry.x509_svid_ttl_seconds).unwrap_or(0));
            let mut not_after = now + ttl;
            if entry.jit {
                // As the server: only under a live task, and never past its deadline.
                // The task the CSR names (among several), or the entry's only one.
                let grant = entry
                    .tasks
                    .iter()
                    .chain(entry.task.as_ref())
                    .find(|g| csr.task_id.is_empty() || g.task_id == csr.task_id)
                    .filter(|g| crate::cache::unix(now) < g.deadline)
                    .ok_or_else(|| "no active task".to_owned())?;
                not_after = not_after.min(from_unix(grant.deadline));
            }
            self.0.ca.sign_csr(&csr.csr, &spiffe_id, now, not_after)
        })();
        match result {
            Ok(der) => SignedX509Svid {
                entry_id: csr.entry_id.clone(),
                task_id: csr.task_id.clone(),
                svid_chain: vec![der],
                error: String::new(),
            },
            Err(error) => SignedX509Svid {
                entry_id: csr.entry_id.clone(),
                task_id: csr.task_id.clone(),
                svid_chain: Vec::new(),
                error,
            },
        }
    }
}

impl NodeConnector for FakeNode {
    fn connect(&self, agent_svid: Option<&X509Svid>) -> Result<Arc<dyn NodeApi>, ClientError> {
        let mut state = self.state();
        self.record(
            &mut state,
            NodeCall::Connect {
                agent_serial: agent_svid.map(|s| s.leaf().serial_hex.clone()),
            },
        );
        Ok(Arc::new(self.clone()))
    }
}

impl FakeNode {
    /// Records `call` and signs the agent's own SVID for `csr`, with the bundle.
    fn sign_agent(
        &self,
        call: NodeCall,
        csr: &[u8],
    ) -> Result<(Vec<Vec<u8>>, Option<tessera::Bundle>), Status> {
        let mut state = self.state();
        self.record(&mut state, call);
        Self::check_reachable(&state)?;
        let now = self.0.clock.now();
        let der = self
            .0
            .ca
            .sign_csr(csr, &self.0.agent_id, now, now + self.0.agent_svid_ttl)
            .map_err(Status::invalid_argument)?;
        Ok((vec![der], Some((&self.bundle()).into())))
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("FakeNode does not serve {what}"))
}

#[async_trait::async_trait]
impl NodeApi for FakeNode {
    async fn attest_agent(&self, req: AttestAgentRequest) -> Result<AttestAgentResponse, Status> {
        let (svid_chain, bundle) = self.sign_agent(NodeCall::Attest, &req.csr)?;
        Ok(AttestAgentResponse {
            svid_chain,
            bundle,
            ..Default::default()
        })
    }

    async fn renew_agent(&self, req: RenewAgentRequest) -> Result<RenewAgentResponse, Status> {
        let (svid_chain, bundle) = self.sign_agent(NodeCall::Renew, &req.csr)?;
        Ok(RenewAgentResponse { svid_chain, bundle })
    }

    /// Always answers with a snapshot (as a server without a change feed does).
    async fn sync(&self, _resume_from: String) -> Result<SyncStream, Status> {
        let mut state = self.state();
        self.record(&mut state, NodeCall::Sync);
        Self::check_reachable(&state)?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Snapshot first, then changes: the sender is registered under the same lock.
        let _ = tx.send(Ok(self.snapshot(&state)));
        state.streams.push(tx);
        Ok(UnboundedReceiverStream::new(rx).boxed())
    }

    async fn sign_x509_svids(&self, csrs: Vec<CsrForEntry>) -> Result<Vec<SignedX509Svid>, Status> {
        let delay = {
            let mut state = self.state();
            let entry_ids = csrs.iter().map(|c| c.entry_id.clone()).collect();
            let failed = state.unreachable || state.fail_signs > 0;
            self.record(&mut state, NodeCall::Sign { entry_ids, failed });
            Self::check_reachable(&state)?;
            if failed {
                state.fail_signs -= 1;
                return Err(Status::unavailable("signing made to fail by the test"));
            }
            state.signs_in_flight += 1;
            state.most_signs_in_flight = state.most_signs_in_flight.max(state.signs_in_flight);
            state.sign_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.state();
        state.signs_in_flight -= 1;
        let now = self.0.clock.now();
        Ok(csrs
            .iter()
            .map(|csr| self.sign_one(&state, csr, now))
            .collect())
    }

    async fn mint_jwt_svid(&self, _req: MintJwtSvidRequest) -> Result<MintJwtSvidResponse, Status> {
        self.record(&mut self.state(), NodeCall::Mint);
        Err(unimplemented("JWT-SVIDs"))
    }

    async fn begin_task(&self, _req: NodeBeginTaskRequest) -> Result<Task, Status> {
        self.record(&mut self.state(), NodeCall::BeginTask);
        Err(unimplemented("tasks"))
    }

    async fn end_task(&self, _req: NodeEndTaskRequest) -> Result<Task, Status> {
        self.record(&mut self.state(), NodeCall::EndTask);
        Err(unimplemented("tasks"))
    }

    async fn record_task_token_use(&self, _usage: TaskTokenUse) -> Result<(), Status> {
        self.record(&mut self.state(), NodeCall::RecordTaskTokenUse);
        Ok(())
    }

    async fn report_usage(&self, report: UsageReport) -> Result<UsageReportAck, Status> {
        let mut state = self.state();
        let items = report
            .items
            .iter()
            .map(|i| {
                (
                    i.entry_id.clone(),
                    i.deliveries,
                    i.validations,
                    i.last_used_at,
                )
            })
            .collect();
        self.record(&mut state, NodeCall::ReportUsage { items });
        Self::check_reachable(&state)?;
        Ok(UsageReportAck {
            accepted: u32::try_from(report.items.len()).unwrap_or(u32::MAX),
            ignored: 0,
        })
    }

    async fn provision_entry(
        &self,
        _req: tessera::ProvisionEntryRequest,
    ) -> Result<tessera::Entry, Status> {
        Err(unimplemented("identity templates"))
    }
}
