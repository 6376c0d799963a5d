//! Issuance: the one rule for who may receive which SVID.
//!
//! An agent may get credentials only for entries parented to its own SPIFFE ID or to a
//! node group it is a member of (`node_groups.rs`); a
//! just-in-time entry only while a task covers it and the policy allows the issuance,
//! with lifetimes cut to the task's deadline and the policy's cap. The SPIFFE ID, DNS
//! names and lifetime always come from the entry, never from the request: a CSR
//! contributes its public key only. Every credential issued is in the audit log (and, for
//! a task, the X.509 serials are recorded for its CRL) before it leaves the server.
//!
//! JWT-SVID mints are rate-limited per workload and per agent ([`MintLimiter`]), and
//! their audit records have a bounded size: a long audience list is recorded as its
//! count and digest ([`audience_detail`]).
//!
//! The gRPC handler (`api/node.rs`) authenticates the agent and converts wire messages;
//! everything it decides is here, where a test can call it directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::entry::Governance;
use common::{EntryId, RegistrationEntry, SpiffeId, TaskId};
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use crate::audit::{AuditEvent, AuditKind};
use crate::ca::CaError;
use crate::ca::rotation::{CaSet, SvidRequest};
use crate::clock::{now_unix, unix_seconds};
use crate::datastore::{Datastore, DatastoreError, DomainRecord, IssuedSvid, TaskSvid};
use crate::jwt_keys::JwtKeyManager;
use crate::rate_limit::{MintLimiter, Throttled};
use crate::registration::dns_name_under;
use crate::tasks::{IssueGrant, Tasks};

/// Most CSRs accepted in one signing call.
pub const MAX_CSRS_PER_CALL: usize = 1000;
/// Most audiences in one JWT-SVID (as many as a task may declare).
pub const MAX_AUDIENCES: usize = common::task::MAX_AUDIENCES;
/// Longest audience value (as long as a task may declare).
pub const MAX_AUDIENCE_LENGTH: usize = common::task::MAX_AUDIENCE_LEN;
/// Most audiences a JWT-SVID's audit record lists; a longer list is recorded as its count
/// and digest.
pub const AUDIT_MAX_AUDIENCES: usize = 4;
/// Most audience bytes (the values' lengths added up) a JWT-SVID's audit record lists.
pub const AUDIT_MAX_AUDIENCE_BYTES: usize = 1024;

/// Why a whole issuance request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    /// More CSRs than one call may carry.
    #[error("at most {MAX_CSRS_PER_CALL} CSRs per call")]
    TooManyCsrs,
    /// A JWT-SVID was asked for without an audience.
    #[error("audience must be specified")]
    NoAudience,
    /// Too many audiences, or an empty or overlong one.
    #[error("at most {MAX_AUDIENCES} non-empty audiences of at most {MAX_AUDIENCE_LENGTH} bytes")]
    BadAudience,
    /// The entry does not exist or belongs to another agent (one answer for both, so an
    /// agent learns nothing about entries it is not entitled to).
    #[error("no such entry for this agent")]
    NotEntitled,
    /// The entry is just-in-time and no active task (or the policy) allows issuance now.
    #[error("{0}")]
    NoGrant(String),
    /// A JWT-SVID mint rate limit is exhausted (try again later).
    #[error(transparent)]
    RateLimited(#[from] Throttled),
    /// Signing failed (our fault; details in the log).
    #[error("BUG or key failure: JWT-SVID signing failed: {0}")]
    Signing(String),
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// One CSR for one entry.
#[derive(Debug, Clone)]
pub struct CsrRequest {
    /// The entry whose identity is asked for.
    pub entry_id: EntryId,
    /// For a just-in-time entry, the active task to issue under (`None`: its only one).
    pub task_id: Option<TaskId>,
    /// The PKCS#10 CSR (DER); only its public key is used.
    pub csr: Vec<u8>,
}

/// The answer for one CSR.
#[derive(Debug, Clone)]
pub enum X509Outcome {
    /// Signed: the chain, leaf first.
    Signed {
        /// The entry.
        entry_id: EntryId,
        /// The task the request named.
        task_id: Option<TaskId>,
        /// Leaf first (the CA itself is in the bundle).
        chain: Vec<CertificateDer<'static>>,
    },
    /// Refused, with a reason the agent may log.
    Refused {
        /// The entry.
        entry_id: EntryId,
        /// The task the request named.
        task_id: Option<TaskId>,
        /// Why.
        reason: String,
    },
}

/// A CSR after the checks, before signing.
enum Checked {
    /// Refused: the answer as it will be sent.
    Refused {
        entry_id: EntryId,
        task_id: Option<TaskId>,
        reason: String,
    },
    /// To be signed.
    Accepted(Box<Accepted>),
}

/// A CSR to be signed for `entry`, under `grant` for a just-in-time entry.
struct Accepted {
    entry: RegistrationEntry,
    /// The task the request named.
    asked_task: Option<TaskId>,
    /// The task issued under.
    task_id: Option<TaskId>,
    grant: Option<IssueGrant>,
}

/// A signed JWT-SVID.
#[derive(Debug, Clone)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Decides and signs workload SVIDs for agents.
#[derive(Debug, Clone)]
pub struct Issuer {
    ds: Arc<dyn Datastore>,
    ca: Arc<CaSet>,
    jwt: Arc<JwtKeyManager>,
    tasks: Arc<Tasks>,
    limiter: Arc<MintLimiter>,
    /// Longest lifetime of a task's X.509-SVID (the agent renews it while the task runs).
    task_x509_ttl: Duration,
}

impl Issuer {
    /// An issuer signing with `ca` and `jwt` under the tasks of `tasks`, minting
    /// JWT-SVIDs as fast as `limiter` allows.
    pub fn new(
        ds: Arc<dyn Datastore>,
        ca: Arc<CaSet>,
        jwt: Arc<JwtKeyManager>,
        tasks: Arc<Tasks>,
        limiter: Arc<MintLimiter>,
    ) -> Self {
        Self {
            ds,
            ca,
            jwt,
            tasks,
            limiter,
            task_x509_ttl: crate::config::DEFAULT_TASK_X509_SVID_TTL,
        }
    }

    /// Caps task X.509-SVIDs at `ttl` (default [`crate::config::DEFAULT_TASK_X509_SVID_TTL`]).
    #[must_use]
    pub fn with_task_x509_svid_ttl(mut self, ttl: Duration) -> Self {
        self.task_x509_ttl = ttl;
        self
    }

    /// The entry `entry_id` if `agent` may receive credentials for it (see
    /// [`Self::entitled_entry`]).
    async fn entitled(
        &self,
        agent: &SpiffeId,
        entry_id: &EntryId,
        groups: &mut HashMap<SpiffeId, bool>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let entry = self.ds.get_entry(entry_id).await?;
        self.entitled_entry(agent, entry, groups).await
    }

    /// `entry` (as stored; `None`: there is none) if `agent` may receive credentials for
    /// it: parented to it or to a node group it is a member of (`node_groups.rs`), not
    /// disabled, not past its expiry. An entry parented to another ID costs the agent
    /// record and that ID's node entries (two queries), once per ID and call (`groups`).
    async fn entitled_entry(
        &self,
        agent: &SpiffeId,
        entry: Option<RegistrationEntry>,
        groups: &mut HashMap<SpiffeId, bool>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let now = now_unix();
        let Some(e) = entry.filter(|e| {
            !e.is_node()
                && e.governance.disabled.is_none()
                && e.governance.expires_at.is_none_or(|at| at > now)
        }) else {
            return Ok(None);
        };
        if &e.parent_id == agent {
            return Ok(Some(e));
        }
        let member = match groups.get(&e.parent_id) {
            Some(m) => *m,
            None => {
                let m = crate::node_groups::is_member_of(&*self.ds, agent, &e.parent_id).await?;
                groups.insert(e.parent_id.clone(), m);
                m
            }
        };
        Ok(member.then_some(e))
    }

    /// The entry's DNS names that may be issued now: all of them for the default tenant
    /// until it claims domains; otherwise those under a domain its tenant has verified and
    /// that still verifies (a domain whose challenge disappeared stops covering names).
    async fn issuable_dns_names(
        &self,
        entry: &RegistrationEntry,
        domains: &mut HashMap<String, Vec<DomainRecord>>,
    ) -> Result<Vec<String>, DatastoreError> {
        if entry.dns_names.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = &entry.governance.tenant;
        if !domains.contains_key(tenant) {
            let list = self.ds.list_domains(Some(tenant)).await?;
            domains.insert(tenant.clone(), list);
        }
        let list = domains.get(tenant).map_or(&[][..], Vec::as_slice);
        if tenant == Governance::DEFAULT_TENANT && list.is_empty() {
            return Ok(entry.dns_names.clone());
        }
        Ok(entry
            .dns_names
            .iter()
            .filter(|n| {
                list.iter()
                    .any(|d| d.is_verified() && dns_name_under(n, &d.domain))
            })
            .cloned()
            .collect())
    }

    /// What a task allows for `entry`: `None` for a standing entry, the grant for a
    /// just-in-time entry with an active task, or why nothing may be issued. A JWT-SVID
    /// names its `jwt_audience` (which the task must have declared); `None`: X.509.
    async fn grant(
        &self,
        entry: &RegistrationEntry,
        task_id: Option<&TaskId>,
        jwt_audience: Option<&[String]>,
    ) -> Result<Option<IssueGrant>, String> {
        if entry.jit {
            self.tasks
                .issue_grant(entry, task_id, jwt_audience)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }

    /// Signs one X.509-SVID per CSR that `agent` is entitled to; refuses the others one
    /// by one. Records task serials and audit records before returning anything.
    ///
    /// The entries are read in one query per [`crate::datastore::ENTRY_IDS_PER_QUERY`]
    /// CSRs, every CSR is checked in request order, then the accepted ones are signed on
    /// all cores ([`CaSet::sign_svids`]); the answers are in request order.
    pub async fn sign_x509(
        &self,
        agent: &SpiffeId,
        requests: Vec<CsrRequest>,
    ) -> Result<Vec<X509Outcome>, IssuanceError> {
        if requests.len() > MAX_CSRS_PER_CALL {
            return Err(IssuanceError::TooManyCsrs);
        }
        let ids: Vec<EntryId> = requests.iter().map(|r| r.entry_id.clone()).collect();
        let stored: HashMap<EntryId, RegistrationEntry> = self
            .ds
            .get_entries(&ids)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let mut domains = HashMap::new();
        let mut groups = HashMap::new();
        // Each CSR's answer, in request order: refused here, or to be signed.
        let mut checked = Vec::with_capacity(requests.len());
        let mut to_sign = Vec::new();
        for CsrRequest {
            entry_id,
            task_id: asked_task,
            csr,
        } in requests
        {
            let entry = stored.get(&entry_id).cloned();
            let Some(entry) = self.entitled_entry(agent, entry, &mut groups).await? else {
                checked.push(Checked::Refused {
                    entry_id,
                    task_id: asked_task,
                    reason: IssuanceError::NotEntitled.to_string(),
                });
                continue;
            };
            let grant = match self.grant(&entry, asked_task.as_ref(), None).await {
                Ok(g) => g,
                Err(reason) => {
                    checked.push(Checked::Refused {
                        entry_id,
                        task_id: asked_task,
                        reason,
                    });
                    continue;
                }
            };
            let ttl = grant.as_ref().map_or(entry.x509_svid_ttl, |g| {
                entry.x509_svid_ttl.min(g.max_ttl).min(self.task_x509_ttl)
            });
            let ttl = until_expiry(&entry, ttl);
            let task_id = grant.as_ref().map(|g| g.task.id.clone());
            let dns_names = self.issuable_dns_names(&entry, &mut domains).await?;
            if dns_names.len() < entry.dns_names.len() {
                tracing::warn!(entry_id = %entry.id, tenant = %entry.governance.tenant, "X.509-SVID issued without DNS names whose domain is not verified");
            }
            to_sign.push(SvidRequest {
                csr,
                spiffe_id: entry.spiffe_id.clone(),
                ttl,
                dns_names,
                task_id: task_id.clone(),
            });
            checked.push(Checked::Accepted(Box::new(Accepted {
                entry,
                asked_task,
                task_id,
                grant,
            })));
        }
        let mut signed = self.ca.sign_svids(to_sign).await.into_iter();

        let mut out = Vec::with_capacity(checked.len());
        let mut audit = Vec::with_capacity(checked.len());
        let mut task_svids = Vec::new();
        let mut issued_svids: Vec<IssuedSvid> = Vec::new();
        for c in checked {
            let (entry, asked_task, task_id, grant) = match c {
                Checked::Refused {
                    entry_id,
                    task_id,
                    reason,
                } => {
                    out.push(X509Outcome::Refused {
                        entry_id,
                        task_id,
                        reason,
                    });
                    continue;
                }
                Checked::Accepted(a) => {
                    let Accepted {
                        entry,
                        asked_task,
                        task_id,
                        grant,
                    } = *a;
                    (entry, asked_task, task_id, grant)
                }
            };
            let issued = match signed.next() {
                Some(Ok(i)) => i,
                Some(Err(e)) => {
                    tracing::warn!(agent_id = %agent, entry_id = %entry.id, error = %e, "X.509-SVID not issued");
                    out.push(X509Outcome::Refused {
                        entry_id: entry.id,
                        task_id: asked_task,
                        reason: e.to_string(),
                    });
                    continue;
                }
                None => {
                    let e = CaError::Signing("no answer for an accepted CSR".into());
                    tracing::error!(agent_id = %agent, entry_id = %entry.id, error = %e, "X.509-SVID not issued");
                    out.push(X509Outcome::Refused {
                        entry_id: entry.id,
                        task_id: asked_task,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let not_after = unix_seconds(issued.not_after);
            // One line per batch at info (below); each SVID is in the audit log.
            tracing::debug!(
                agent_id = %agent,
                entry_id = %entry.id,
                spiffe_id = %entry.spiffe_id,
                serial = %issued.serial_hex,
                task_id = task_id.as_ref().map_or("", TaskId::as_str),
                "X.509-SVID issued"
            );
            let mut detail = serde_json::json!({
                "entry_id": entry.id,
                "agent_id": agent.as_str(),
                "serial": issued.serial_hex,
                "not_after": not_after,
            });
            if let Some(g) = &grant {
                detail["policy"] = g.decision.to_json();
                task_svids.push(TaskSvid {
                    task_id: g.task.id.clone(),
                    serial: issued.serial_hex.clone(),
                    issuer_serial: issued.issuer_serial.clone(),
                    not_after,
                });
            }
            audit.push(
                AuditEvent {
                    task_id: task_id.map(TaskId::into_string),
                    ..AuditEvent::new(AuditKind::SvidX509Issued, &entry.spiffe_id, detail)
                }
                .by(agent)
                .in_tenant(&entry.governance.tenant),
            );
            issued_svids.push((entry.id.clone(), agent.clone(), now_unix()));
            out.push(X509Outcome::Signed {
                entry_id: entry.id,
                task_id: asked_task,
                chain: issued.chain,
            });
        }
        let signed = issued_svids.len();
        // Recorded, in one transaction, before any SVID leaves the server.
        self.ds
            .record_issuance(task_svids, audit, issued_svids)
            .await?;
        tracing::info!(
            agent_id = %agent,
            signed,
            refused = out.len() - signed,
            "X.509-SVIDs issued"
        );
        Ok(out)
    }

    /// Signs a JWT-SVID for `entry_id` with `audience`, if `agent` is entitled to it and
    /// the mint limits allow it now.
    pub async fn mint_jwt(
        &self,
        agent: &SpiffeId,
        entry_id: &EntryId,
        task_id: Option<&TaskId>,
        audience: &[String],
    ) -> Result<MintedJwt, IssuanceError> {
        if audience.is_empty() {
            return Err(IssuanceError::NoAudience);
        }
        if audience.len() > MAX_AUDIENCES
            || audience
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LENGTH)
        {
            return Err(IssuanceError::BadAudience);
        }
        let entry = self
            .entitled(agent, entry_id, &mut HashMap::new())
            .await?
            .ok_or(IssuanceError::NotEntitled)?;
        let grant = self
            .grant(&entry, task_id, Some(audience))
            .await
            .map_err(IssuanceError::NoGrant)?;
        // After the entitlement checks, so buckets exist only for identities the agent
        // holds; before signing and the audit record, which are what a flood would cost.
        self.limiter
            .acquire(agent, &entry.spiffe_id)
            .inspect_err(|t| {
                tracing::warn!(agent_id = %agent, entry_id = %entry.id, spiffe_id = %entry.spiffe_id, limit = ?t.scope, "JWT-SVID mint refused: rate limit");
            })?;
        let mut extra = serde_json::Map::new();
        let mut ttl: Duration = entry.jwt_svid_ttl;
        if let Some(g) = &grant {
            extra.insert(
                common::task::JWT_CLAIM.into(),
                serde_json::Value::from(g.task.id.as_str()),
            );
            if let Some(scope) = common::task::scope_claim(&g.task.scopes) {
                extra.insert(common::task::SCOPE_CLAIM.into(), scope.into());
            }
            if let Some(status) = self.jwt.status_claim(g.task.id.as_str(), g.task.status) {
                extra.insert("status".into(), status);
            }
            ttl = ttl.min(g.max_ttl);
        }
        let ttl = until_expiry(&entry, ttl);
        let (token, expires_at) = self
            .jwt
            .sign(&entry.spiffe_id, audience, ttl, now_unix(), &extra)
            .map_err(|e| IssuanceError::Signing(e.to_string()))?;
        let mut detail = serde_json::json!({
            "entry_id": entry.id,
            "agent_id": agent.as_str(),
            "expires_at": expires_at,
        });
        if let Some(d) = detail.as_object_mut() {
            d.extend(audience_detail(audience));
        }
        let event = AuditEvent {
            task_id: grant.as_ref().map(|g| g.task.id.to_string()),
            ..AuditEvent::new(AuditKind::SvidJwtIssued, &entry.spiffe_id, detail)
        }
        .by(agent)
        .in_tenant(&entry.governance.tenant);
        let issued = (entry.id.clone(), agent.clone(), now_unix());
        self.ds
            .record_issuance(Vec::new(), vec![event], vec![issued])
            .await?;
        tracing::info!(
            agent_id = %agent,
            entry_id = %entry.id,
            spiffe_id = %entry.spiffe_id,
            expires_at,
            "JWT-SVID issued"
        );
        Ok(MintedJwt { token, expires_at })
    }
}

/// `ttl`, cut so that nothing issued for `entry` outlives its expiry (at least a second:
/// an entry past its expiry is not entitled to anything).
fn until_expiry(entry: &RegistrationEntry, ttl: Duration) -> Duration {
    match entry.governance.expires_at {
        Some(at) => {
            let left = u64::try_from(at.saturating_sub(now_unix()))
                .unwrap_or(0)
                .max(1);
            ttl.min(Duration::from_secs(left))
        }
        None => ttl,
    }
}

/// How a JWT-SVID's audit record names its audiences, in bounded size: the list itself
/// (`audience`) when it has at most [`AUDIT_MAX_AUDIENCES`] values of at most
/// [`AUDIT_MAX_AUDIENCE_BYTES`] together, else its length (`audience_count`) and the
/// SHA-256 of its canonical form (`audience_sha256`, lowercase hex).
///
/// The canonical form is the list as the token's `aud` claim carries it: a compact JSON
/// array of the values in order (serde_json's escaping, which is Python's
/// `json.dumps(aud, separators=(",", ":"), ensure_ascii=False)`), UTF-8 encoded. An
/// auditor holding the token recomputes it from the `aud` claim (README, "Audit log").
pub fn audience_detail(audience: &[String]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let bytes: usize = audience.iter().map(String::len).sum();
    if audience.len() <= AUDIT_MAX_AUDIENCES && bytes <= AUDIT_MAX_AUDIENCE_BYTES {
        out.insert("audience".into(), serde_json::json!(audience));
    } else {
        let canonical = serde_json::Value::from(audience.to_vec()).to_string();
        out.insert("audience_count".into(), audience.len().into());
        out.insert(
            "audience_sha256".into(),
            hex::encode(Sha256::digest(canonical.as_bytes())).into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use common::TrustDomain;
    use common::jwt::{JwtBundle, validate};

    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use crate::datastore::UnixUser;
    use crate::datastore::sqlite::SqliteDatastore;
    use crate::events::Events;
    use crate::policy::PolicyEngine;
    use crate::rate_limit::MintLimits;
    use crate::registration::{EntryRequest, Registrar};
    use crate::tasks::{Requester, TaskRequest, TaskTarget};
    use crate::tenants::Operator;

    const HOUR: Duration = Duration::from_secs(3600);
    const AGENT: &str = "spiffe://example.org/agent";

    struct Fixture {
        _dir: tempfile::TempDir,
        issuer: Issuer,
        tasks: Arc<Tasks>,
        registrar: Registrar,
        jwt: Arc<JwtKeyManager>,
        ds: Arc<dyn Datastore>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ds: Arc<dyn Datastore> = Arc::new(
            SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
                .await
                .unwrap(),
        );
        let td = TrustDomain::new("example.org").unwrap();
        let events = Events::default();
        let ca = Arc::new(
            CaSet::load_or_create(dir.path(), &td, 24 * HOUR, None, SystemTime::now()).unwrap(),
        );
        let registrar = Registrar::new(Arc::clone(&ds), events.clone(), td, HOUR, HOUR / 12);
        let tasks = Arc::new(Tasks::new(
            Arc::clone(&ds),
            registrar.clone(),
            Arc::new(PolicyEngine::builtin()),
            events,
            Arc::clone(&ca),
            Arc::new(ManualClock::starting_at(SystemTime::now())),
            24 * HOUR,
        ));
        tasks.load().await.unwrap();
        let jwt = Arc::new(
            JwtKeyManager::load_or_create(dir.path(), HOUR, now_unix())
                .unwrap()
                .with_status_lists(Some("https://rp.example.org".into())),
        );
        let limiter = Arc::new(MintLimiter::new(
            MintLimits::default(),
            Arc::new(SystemClock),
        ));
        let issuer = Issuer::new(
            Arc::clone(&ds),
            ca,
            Arc::clone(&jwt),
            Arc::clone(&tasks),
            limiter,
        );
        Fixture {
            _dir: dir,
            issuer,
            tasks,
            registrar,
            jwt,
            ds,
        }
    }

    fn operator() -> Operator {
        Operator::platform(UnixUser {
            uid: 1000,
            name: "alice".into(),
        })
    }

    async fn entry(f: &Fixture, path: &str, jit: bool) -> RegistrationEntry {
        f.registrar
            .create(
                &EntryRequest {
                    spiffe_id: format!("spiffe://example.org/{path}"),
                    parent_id: AGENT.into(),
                    selectors: vec!["unix:uid:1000".into()],
                    jit,
                    ..Default::default()
                },
                &operator(),
            )
            .await
            .unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The claims of `token`, validated for `audience` against the server's keys.
    fn claims(
        f: &Fixture,
        token: &str,
        audience: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        let bundles = BTreeMap::from([(
            TrustDomain::new("example.org").unwrap(),
            JwtBundle::new(f.jwt.public_keys()),
        )]);
        validate(token, audience, &bundles, now_unix())
            .unwrap()
            .claims
    }

    #[tokio::test]
    async fn task_jwt_svids_carry_task_id_and_scope_and_only_declared_audiences() {
        let f = fixture().await;
        let agent = SpiffeId::new(AGENT).unwrap();
        let jit = entry(&f, "tool", true).await;
        let task = f
            .tasks
            .create(
                &Requester::User(operator()),
                &TaskRequest {
                    target: TaskTarget::Entry(jit.id.clone()),
                    reason: "call the tool".into(),
                    ticket: String::new(),
                    scopes: strings(&["read", "db:write"]),
                    audiences: strings(&["a", "c"]),
                    ttl: Some(HOUR),
                    binding: common::task::TaskBinding::Selectors,
                    break_glass: false,
                },
            )
            .await
            .unwrap();
        let minted = f
            .issuer
            .mint_jwt(&agent, &jit.id, None, &strings(&["a"]))
            .await
            .unwrap();
        let c = claims(&f, &minted.token, "a");
        assert_eq!(c[common::task::JWT_CLAIM], task.id.as_str());
        assert_eq!(c[common::task::SCOPE_CLAIM], "read db:write");
        assert!(minted.expires_at <= task.deadline);
        // Its entry in a shared status list, as the datastore allocated it.
        let status = task.status.expect("a new task has a status list entry");
        assert_eq!(
            c["status"],
            serde_json::json!({"status_list": {
                "idx": status.idx,
                "uri": format!("https://rp.example.org/statuslists/{}", status.list),
            }})
        );

        for outside in [&["b"][..], &["a", "b"]] {
            match f
                .issuer
                .mint_jwt(&agent, &jit.id, None, &strings(outside))
                .await
            {
                Err(IssuanceError::NoGrant(why)) => assert!(
                    why.contains(task.id.as_str()) && why.contains("\"b\""),
                    "{why}"
                ),
                other => panic!("{outside:?}: {other:?}"),
            }
        }

        // Without scopes, no `scope` claim; a standing identity's token names no task.
        let other = entry(&f, "tool2", true).await;
        f.tasks
            .create(
                &Requester::User(operator()),
                &TaskRequest {
                    target: TaskTarget::Entry(other.id.clone()),
                    reason: String::new(),
                    ticket: String::new(),
                    scopes: vec![],
                    audiences: strings(&["a"]),
                    ttl: Some(HOUR),
                    binding: common::task::TaskBinding::Selectors,
                    break_glass: false,
                },
            )
            .await
            .unwrap();
        let t = f
            .issuer
            .mint_jwt(&agent, &other.id, None, &strings(&["a"]))
            .await
            .unwrap();
        let c = claims(&f, &t.token, "a");
        assert!(c.contains_key(common::task::JWT_CLAIM));
        assert!(!c.contains_key(common::task::SCOPE_CLAIM), "{c:?}");
        let standing = entry(&f, "web", false).await;
        let t = f
            .issuer
            .mint_jwt(&agent, &standing.id, None, &strings(&["anything"]))
            .await
            .unwrap();
        let c = claims(&f, &t.token, "anything");
        assert!(
            !c.contains_key(common::task::JWT_CLAIM)
                && !c.contains_key(common::task::SCOPE_CLAIM)
                && !c.contains_key("status")
        );
    }

    /// Seconds from now until the `notAfter` of the one X.509-SVID `f` signs for `entry`.
    async fn x509_lifetime(issuer: &Issuer, entry: &RegistrationEntry) -> i64 {
        let key = rcgen::KeyPair::generate().unwrap();
        let out = issuer
            .sign_x509(
                &SpiffeId::new(AGENT).unwrap(),
                vec![CsrRequest {
                    entry_id: entry.id.clone(),
                    task_id: None,
                    csr: common::svid::csr_for(&key).unwrap(),
                }],
            )
            .await
            .unwrap();
        let [X509Outcome::Signed { chain, .. }] = out.as_slice() else {
            panic!("{out:?}");
        };
        let leaf = common::svid::parse_leaf(&chain[0]).unwrap();
        unix_seconds(leaf.not_after) - now_unix()
    }

    /// Stores an x509pop agent record with `selectors` (none: a join-token agent).
    async fn attested(f: &Fixture, id: &str, selectors: &[&str]) -> SpiffeId {
        let id = SpiffeId::new(id).unwrap();
        let record = crate::datastore::AgentRecord {
            spiffe_id: id.clone(),
            serial: "01".into(),
            previous_serial: None,
            expires_at: now_unix() + 3600,
            attested_at: now_unix(),
            banned: false,
            attestation_type: "x509pop".into(),
            selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
        };
        assert!(f.ds.attest_agent(&record, &[]).await.unwrap());
        id
    }

    async fn sign_one(f: &Fixture, agent: &SpiffeId, entry: &EntryId) -> X509Outcome {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut out = f
            .issuer
            .sign_x509(
                agent,
                vec![CsrRequest {
                    entry_id: entry.clone(),
                    task_id: None,
                    csr: common::svid::csr_for(&key).unwrap(),
                }],
            )
            .await
            .unwrap();
        out.remove(0)
    }

    /// A batch is answered in request order: each CSR signed for its own entry, or
    /// refused in its place with the reason it gets alone; only what was signed is
    /// audited, in request order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_answered_in_request_order_with_each_refusal_in_place() {
        let f = fixture().await;
        let agent = SpiffeId::new(AGENT).unwrap();
        let web = entry(&f, "web", false).await;
        let db = entry(&f, "db", false).await;
        let jit = entry(&f, "tool", true).await;
        let elsewhere = f
            .registrar
            .create(
                &EntryRequest {
                    spiffe_id: "spiffe://example.org/elsewhere".into(),
                    parent_id: "spiffe://example.org/other-agent".into(),
                    selectors: vec!["unix:uid:1000".into()],
                    ..Default::default()
                },
                &operator(),
            )
            .await
            .unwrap();
        let unknown = EntryId::generate();
        // What each refusal says when asked alone.
        let alone = |o: X509Outcome| match o {
            X509Outcome::Refused { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        let no_task = alone(sign_one(&f, &agent, &jit.id).await);
        assert_eq!(
            alone(sign_one(&f, &agent, &unknown).await),
            IssuanceError::NotEntitled.to_string()
        );
        let audited_before = f.ds.list_audit(None, None).await.unwrap().len();

        let key = rcgen::KeyPair::generate().unwrap();
        let csr = common::svid::csr_for(&key).unwrap();
        let asked: Vec<(&EntryId, Vec<u8>)> = vec![
            (&web.id, csr.clone()),
            (&unknown, csr.clone()),
            (&db.id, csr.clone()),
            (&elsewhere.id, csr.clone()),
            (&jit.id, csr.clone()),
            (&web.id, b"junk".to_vec()),
            (&db.id, csr.clone()),
            (&web.id, csr.clone()),
        ];
        let out = f
            .issuer
            .sign_x509(
                &agent,
                asked
                    .iter()
                    .map(|(id, csr)| CsrRequest {
                        entry_id: (*id).clone(),
                        task_id: None,
                        csr: csr.clone(),
                    })
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(out.len(), asked.len());
        let refused = |i: usize| match &out[i] {
            X509Outcome::Refused {
                entry_id, reason, ..
            } => {
                assert_eq!(entry_id, asked[i].0, "{i}");
                reason.clone()
            }
            other => panic!("{i}: {other:?}"),
        };
        let not_entitled = IssuanceError::NotEntitled.to_string();
        assert_eq!(refused(1), not_entitled);
        assert_eq!(refused(3), not_entitled);
        assert_eq!(refused(4), no_task);
        assert!(refused(5).starts_with("invalid CSR"), "{}", refused(5));
        let mut signed_ids = Vec::new();
        for (i, e) in [(0, &web), (2, &db), (6, &db), (7, &web)] {
            let X509Outcome::Signed {
                entry_id, chain, ..
            } = &out[i]
            else {
                panic!("{i}: {:?}", out[i]);
            };
            assert_eq!(entry_id, &e.id, "{i}");
            let leaf = common::svid::parse_leaf(&chain[0]).unwrap();
            assert_eq!(leaf.spiffe_id, e.spiffe_id, "{i}");
            signed_ids.push(e.spiffe_id.to_string());
        }
        let audit = f.ds.list_audit(None, None).await.unwrap();
        let subjects: Vec<&str> = audit[audited_before..]
            .iter()
            .map(|r| {
                assert_eq!(r.event.kind, AuditKind::SvidX509Issued.as_str());
                r.event.subject.as_str()
            })
            .collect();
        assert_eq!(subjects, signed_ids);
    }

    /// An entry parented to a node entry's ID is signed for the agents whose node
    /// selectors include the node entry's, and refused to any other agent; the node entry
    /// itself is never issued.
    #[tokio::test]
    async fn members_of_a_node_group_get_its_entries_signed_and_nobody_else() {
        let f = fixture().await;
        let web = attested(
            &f,
            "spiffe://example.org/tessera/agent/x509pop/web",
            &[
                "x509pop:subject:cn:web1",
                "x509pop:san:dns:web1.example.org",
            ],
        )
        .await;
        let db = attested(
            &f,
            "spiffe://example.org/tessera/agent/x509pop/db",
            &["x509pop:subject:cn:db1"],
        )
        .await;
        let token = attested(&f, "spiffe://example.org/tessera/agent/token", &[]).await;
        let group = f
            .registrar
            .create(
                &EntryRequest {
                    spiffe_id: "spiffe://example.org/group/web".into(),
                    selectors: vec!["x509pop:subject:cn:web1".into()],
                    node: true,
                    ..Default::default()
                },
                &operator(),
            )
            .await
            .unwrap();
        let workload = f
            .registrar
            .create(
                &EntryRequest {
                    spiffe_id: "spiffe://example.org/web".into(),
                    parent_id: group.spiffe_id.to_string(),
                    selectors: vec!["unix:uid:1000".into()],
                    ..Default::default()
                },
                &operator(),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                sign_one(&f, &web, &workload.id).await,
                X509Outcome::Signed { .. }
            ),
            "the member is signed for"
        );
        f.issuer
            .mint_jwt(&web, &workload.id, None, &strings(&["a"]))
            .await
            .unwrap();
        for outsider in [&db, &token] {
            assert!(
                matches!(
                    sign_one(&f, outsider, &workload.id).await,
                    X509Outcome::Refused { .. }
                ),
                "{outsider} is not a member"
            );
            assert!(matches!(
                f.issuer
                    .mint_jwt(outsider, &workload.id, None, &strings(&["a"]))
                    .await,
                Err(IssuanceError::NotEntitled)
            ));
        }
        assert!(matches!(
            sign_one(&f, &web, &group.id).await,
            X509Outcome::Refused { .. }
        ));
    }

    #[tokio::test]
    async fn task_x509_svids_live_at_most_the_configured_short_lifetime() {
        let mut f = fixture().await;
        let jit = entry(&f, "tool", true).await;
        let standing = entry(&f, "web", false).await;
        f.tasks
            .create(
                &Requester::User(operator()),
                &TaskRequest {
                    target: TaskTarget::Entry(jit.id.clone()),
                    reason: "call the tool".into(),
                    ticket: String::new(),
                    scopes: vec![],
                    audiences: vec![],
                    ttl: Some(HOUR),
                    binding: common::task::TaskBinding::Selectors,
                    break_glass: false,
                },
            )
            .await
            .unwrap();
        // The entry and the task allow an hour; the task's certificate gets 5 minutes.
        let t = x509_lifetime(&f.issuer, &jit).await;
        assert!((295..=300).contains(&t), "{t}");
        let s = x509_lifetime(&f.issuer, &standing).await;
        assert!(s > 3000, "a standing SVID keeps its entry's TTL: {s}");
        f.issuer = f.issuer.with_task_x509_svid_ttl(Duration::from_secs(120));
        let t = x509_lifetime(&f.issuer, &jit).await;
        assert!((115..=120).contains(&t), "{t}");
        assert!(x509_lifetime(&f.issuer, &standing).await > 3000);
    }

    fn list(n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{i:04}{}", "a".repeat(len - 4)))
            .collect()
    }

    #[test]
    fn short_audience_lists_are_recorded_whole_long_ones_as_count_and_digest() {
        for (aud, whole) in [
            (list(1, 10), true),
            (list(4, 256), true),
            (list(5, 8), false),
            (list(2, 513), false),
            (list(1, 1024), true),
            (list(32, 1024), false),
        ] {
            let d = audience_detail(&aud);
            assert_eq!(
                d.contains_key("audience"),
                whole,
                "{} × {}",
                aud.len(),
                aud[0].len()
            );
            if whole {
                assert_eq!(d["audience"], serde_json::json!(aud));
            } else {
                assert_eq!(d["audience_count"], aud.len());
                assert_eq!(d.len(), 2);
                assert!(serde_json::Value::Object(d).to_string().len() < 128);
            }
        }
    }

    #[test]
    fn the_digest_is_of_the_compact_json_array_as_in_the_token() {
        let aud: Vec<String> = ["a", "b\"q\"", "é/\u{1}", "d", "e"]
            .map(String::from)
            .to_vec();
        let d = audience_detail(&aud);
        // The bytes an auditor hashes, written out by hand.
        let canonical = "[\"a\",\"b\\\"q\\\"\",\"é/\\u0001\",\"d\",\"e\"]";
        assert_eq!(
            d["audience_sha256"],
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        // Order matters: another list, another digest.
        let mut other = aud;
        other.swap(0, 1);
        assert_ne!(
            audience_detail(&other)["audience_sha256"],
            d["audience_sha256"]
        );
    }
}
