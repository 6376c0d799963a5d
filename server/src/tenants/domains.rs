//! Tenants' DNS domains: claimed with a challenge, verified through DNS, re-checked.
//!
//! A tenant claims a domain (`tenant domain add`) and receives a fresh random challenge; it
//! publishes it as the TXT record `_tessera-challenge.<domain>`, and `tenant domain verify`
//! looks it up through a real resolver ([`crate::domains`]). Only a verified domain lets
//! the tenant's entries carry DNS names under it. The server re-checks verified domains on
//! a schedule: one whose record disappeared is marked failing (recorded), and from then on
//! no new SVID carries names under it until it verifies again.
//!
//! A domain belongs to at most one tenant. A first verification that fails changes
//! nothing; the claim stays as it was, with its challenge, so the operator can fix the
//! record and try again.

use std::sync::Arc;

use crate::audit::{AuditEvent, AuditKind, SERVER_ACTOR};
use crate::clock::now_unix;
use crate::datastore::{AuditFor, Datastore, DatastoreError, DomainRecord};
use crate::domains::{Challenge, DnsResolver, DomainName, Verification, verify};
use crate::tenants::{Operator, TenantDirectory, TenantError};

/// Why a domain request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DomainRequestError {
    /// Not a domain a tenant may verify (look-alikes, IDNA, trailing dots, case tricks).
    #[error("{0}")]
    Invalid(String),
    /// Another tenant claimed it.
    #[error("{0}")]
    Claimed(String),
    /// The tenant has not claimed it (or the caller may not see the tenant).
    #[error("{0}")]
    NotFound(String),
    /// The challenge was not found: not verified.
    #[error("domain {domain} is not verified: {why}")]
    NotVerified {
        /// The domain.
        domain: String,
        /// What the look-up found.
        why: String,
    },
    /// Tenancy.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

impl From<DomainRequestError> for tonic::Status {
    fn from(e: DomainRequestError) -> Self {
        match e {
            DomainRequestError::Invalid(m) => Self::invalid_argument(m),
            DomainRequestError::Claimed(m) => Self::already_exists(m),
            DomainRequestError::NotFound(m) => Self::not_found(m),
            DomainRequestError::NotVerified { .. } => Self::failed_precondition(e.to_string()),
            DomainRequestError::Tenant(t) => t.into(),
            DomainRequestError::Datastore(d) => d.into(),
        }
    }
}

/// Claims, verification and re-checks of tenants' domains.
#[derive(Debug)]
pub struct TenantDomains {
    ds: Arc<dyn Datastore>,
    tenants: TenantDirectory,
    resolver: DnsResolver,
}

impl TenantDomains {
    /// Domains over `ds`, looked up through `resolver`.
    pub fn new(ds: Arc<dyn Datastore>, tenants: TenantDirectory, resolver: DnsResolver) -> Self {
        Self {
            ds,
            tenants,
            resolver,
        }
    }

    fn parse(domain: &str) -> Result<DomainName, DomainRequestError> {
        DomainName::new(domain)
            .map_err(|e| DomainRequestError::Invalid(format!("invalid domain {domain:?}: {e}")))
    }

    /// The claim of `domain` by `tenant`, which `by` must see.
    async fn claim(
        &self,
        by: &Operator,
        tenant: &str,
        domain: &DomainName,
    ) -> Result<DomainRecord, DomainRequestError> {
        self.tenants.get(by, tenant).await?;
        match self.ds.get_domain(domain.as_str()).await? {
            Some(d) if d.tenant == tenant => Ok(d),
            _ => Err(DomainRequestError::NotFound(format!(
                "tenant {tenant} has not claimed domain {domain}"
            ))),
        }
    }

    /// Claims `domain` for `tenant` and returns the challenge to publish. Claiming a
    /// domain the tenant already claimed returns that claim unchanged.
    pub async fn add(
        &self,
        by: &Operator,
        tenant: &str,
        domain: &str,
    ) -> Result<DomainRecord, DomainRequestError> {
        let name = Self::parse(domain)?;
        self.tenants.get(by, tenant).await?;
        if let Some(existing) = self.ds.get_domain(name.as_str()).await? {
            if existing.tenant == tenant {
                return Ok(existing);
            }
            return Err(DomainRequestError::Claimed(if by.sees(&existing.tenant) {
                format!("domain {name} is claimed by tenant {}", existing.tenant)
            } else {
                format!("domain {name} is claimed by another tenant")
            }));
        }
        let d = DomainRecord {
            domain: name.to_string(),
            tenant: tenant.to_owned(),
            challenge: Challenge::generate().to_string(),
            added_at: now_unix(),
            verified_at: None,
            checked_at: None,
            failing_since: None,
            last_error: None,
        };
        let event = domain_event(AuditKind::DomainAdded, &by.principal(), &d, None);
        self.ds
            .put_domain(&d, &[event])
            .await
            .map_err(|e| match e {
                DatastoreError::Conflict(_) => DomainRequestError::Claimed(format!(
                    "domain {name} is claimed by another tenant"
                )),
                other => other.into(),
            })?;
        tracing::info!(tenant, domain = %name, "domain claimed");
        Ok(d)
    }

    /// Looks the challenge up; the domain is verified only when it matches. A first
    /// verification that fails changes nothing and is refused with what DNS answered.
    pub async fn verify(
        &self,
        by: &Operator,
        tenant: &str,
        domain: &str,
    ) -> Result<DomainRecord, DomainRequestError> {
        let name = Self::parse(domain)?;
        let current = self.claim(by, tenant, &name).await?;
        let outcome = verify(&self.resolver, &name, &current.challenge).await;
        if !outcome.is_verified() && current.verified_at.is_none() {
            tracing::info!(tenant, domain = %name, outcome = %outcome.describe(&name), "domain not verified");
            return Err(DomainRequestError::NotVerified {
                domain: name.to_string(),
                why: outcome.describe(&name),
            });
        }
        let d = self.apply(current, &outcome, &by.principal()).await?;
        if d.is_verified() {
            Ok(d)
        } else {
            Err(DomainRequestError::NotVerified {
                domain: name.to_string(),
                why: outcome.describe(&name),
            })
        }
    }

    /// Records one check's outcome on a claim and audits changes of state.
    async fn apply(
        &self,
        current: DomainRecord,
        outcome: &Verification,
        actor: &str,
    ) -> Result<DomainRecord, DomainRequestError> {
        let now = now_unix();
        let name = current.domain.clone();
        let mut d = current.clone();
        d.checked_at = Some(now);
        let (kind, why) = if outcome.is_verified() {
            d.verified_at = d.verified_at.or(Some(now));
            d.failing_since = None;
            d.last_error = None;
            let newly = !current.is_verified();
            (newly.then_some(AuditKind::DomainVerified), None)
        } else {
            let why = outcome.to_string();
            d.last_error = Some(why.clone());
            let newly = current.failing_since.is_none();
            d.failing_since = current.failing_since.or(Some(now));
            (newly.then_some(AuditKind::DomainFailing), Some(why))
        };
        let events: Vec<AuditEvent> = kind
            .map(|kind| domain_event(kind, actor, &d, why.as_deref()))
            .into_iter()
            .collect();
        if !self
            .ds
            .record_domain_check(&d, current.checked_at, &events)
            .await?
        {
            // Another check (another server's schedule) recorded its outcome first: that
            // one stands, recorded once.
            return self
                .ds
                .get_domain(&name)
                .await?
                .filter(|stored| stored.tenant == d.tenant)
                .ok_or_else(|| {
                    DomainRequestError::NotFound(format!(
                        "tenant {} has not claimed domain {name}",
                        d.tenant
                    ))
                });
        }
        if let Some(kind) = kind {
            tracing::info!(tenant = %d.tenant, domain = %name, kind = %kind, "domain verification changed");
        }
        Ok(d)
    }

    /// Gives up a claim (verified or not); names under it are no longer issued.
    pub async fn remove(
        &self,
        by: &Operator,
        tenant: &str,
        domain: &str,
    ) -> Result<DomainRecord, DomainRequestError> {
        let name = Self::parse(domain)?;
        self.claim(by, tenant, &name).await?;
        let actor = by.principal();
        let audit: AuditFor<DomainRecord> =
            Box::new(move |d| vec![domain_event(AuditKind::DomainRemoved, &actor, d, None)]);
        let d = self
            .ds
            .delete_domain(name.as_str(), audit)
            .await?
            .ok_or_else(|| {
                DomainRequestError::NotFound(format!(
                    "tenant {tenant} has not claimed domain {name}"
                ))
            })?;
        Ok(d)
    }

    /// Re-checks every domain verified once (the server's schedule); returns how many are
    /// failing now.
    pub async fn recheck(&self) -> Result<usize, DomainRequestError> {
        let mut failing = 0;
        for d in self.ds.list_domains(None).await? {
            if d.verified_at.is_none() {
                continue;
            }
            let Ok(name) = DomainName::new(&d.domain) else {
                continue;
            };
            let outcome = verify(&self.resolver, &name, &d.challenge).await;
            let d = self.apply(d, &outcome, SERVER_ACTOR).await?;
            if !d.is_verified() {
                failing += 1;
            }
        }
        Ok(failing)
    }
}

/// The audit record of a domain's claim, change of verification state or removal.
fn domain_event(kind: AuditKind, actor: &str, d: &DomainRecord, why: Option<&str>) -> AuditEvent {
    AuditEvent::new(
        kind,
        format!("domain:{}", d.domain),
        serde_json::json!({ "domain": d.domain, "verified_at": d.verified_at, "why": why }),
    )
    .by(actor)
    .in_tenant(&d.tenant)
}
