//! Node attestation with join tokens, and agent SVID renewal.
//!
//! A join token is 122 random bits (a UUIDv4), shown once to the operator and stored only
//! as its SHA-256. Presenting it consumes it atomically; the agent receives an SVID for
//! exactly the SPIFFE ID the operator bound to the token. Later the agent renews over
//! mutual TLS with that SVID. An agent holding a certificate from one of the
//! organisation's CAs may instead prove possession of its key (x509pop, see
//! [`crate::x509pop`]). An agent is authenticated on every call by its certificate
//! serial against the stored record, so eviction and bans take effect on the next call.

use std::sync::Arc;
use std::time::Duration;

use common::{SpiffeId, TrustDomain};
use sha2::{Digest as _, Sha256};

use crate::audit::{AuditEvent, AuditKind};
use crate::ca::rotation::CaSet;
use crate::ca::{CaError, Issued};
use crate::clock::{now_unix, unix_seconds};
use crate::datastore::{AgentRecord, Datastore, DatastoreError, TokenAttestation};
use crate::events::{ChangeEvent, Events};
use crate::x509pop::{Challenge, X509Pop, X509PopError};

/// Default join token lifetime (as SPIRE's).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Longest join token lifetime accepted.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why node attestation or an agent call was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeAttestationError {
    /// The token is unknown or already used.
    #[error("join token is invalid or has already been used")]
    UnknownToken,
    /// The token expired before use.
    #[error("join token has expired")]
    ExpiredToken,
    /// The token's SPIFFE ID is malformed, foreign or reserved.
    #[error("invalid agent SPIFFE ID: {0}")]
    BadAgentId(String),
    /// The token TTL is out of bounds.
    #[error("token TTL must be between 1 and {0} seconds")]
    BadTtl(u64),
    /// The agent is banned.
    #[error("agent {0} is banned")]
    Banned(String),
    /// The agent has no record (never attested, or evicted) or presented a stale SVID.
    #[error("agent {0} is not attested (unknown, evicted, or presenting a superseded SVID)")]
    NotAttested(String),
    /// The call needs a client SVID and none was presented.
    #[error("this call requires the agent's SVID (mutual TLS)")]
    NoClientCertificate,
    /// Signing failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// x509pop attestation was refused.
    #[error(transparent)]
    X509Pop(#[from] X509PopError),
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Join tokens, agent SVIDs and agent records.
#[derive(Debug, Clone)]
pub struct NodeAttestor {
    ds: Arc<dyn Datastore>,
    ca: Arc<CaSet>,
    events: Events,
    trust_domain: TrustDomain,
    agent_ttl: Duration,
    x509pop: Option<Arc<X509Pop>>,
}

impl NodeAttestor {
    /// A node attestor issuing agent SVIDs valid for `agent_ttl`.
    pub fn new(
        ds: Arc<dyn Datastore>,
        ca: Arc<CaSet>,
        events: Events,
        trust_domain: TrustDomain,
        agent_ttl: Duration,
    ) -> Self {
        Self {
            ds,
            ca,
            events,
            trust_domain,
            agent_ttl,
            x509pop: None,
        }
    }

    /// Also accepts x509pop attestation, verified by `x509pop`.
    #[must_use]
    pub fn with_x509pop(mut self, x509pop: Option<Arc<X509Pop>>) -> Self {
        self.x509pop = x509pop;
        self
    }

    fn x509pop(&self) -> Result<&X509Pop, NodeAttestationError> {
        Ok(self.x509pop.as_deref().ok_or(X509PopError::Disabled)?)
    }

    async fn audit_refusal(
        &self,
        method: &str,
        e: &NodeAttestationError,
    ) -> Result<(), NodeAttestationError> {
        // Nobody known asked: the server refused an unknown caller.
        let event = AuditEvent::new(
            AuditKind::AgentAttestationRefused,
            "unknown",
            serde_json::json!({ "method": method, "reason": e.to_string() }),
        )
        .by(crate::audit::SERVER_ACTOR);
        self.ds.append_audit(&[event]).await?;
        Ok(())
    }

    /// x509pop, first step: verifies `chain` (DER, leaf first) and returns a challenge
    /// bound to its leaf. Refusals are audited.
    pub async fn x509pop_challenge(
        &self,
        chain: &[Vec<u8>],
    ) -> Result<Challenge, NodeAttestationError> {
        let result = self
            .x509pop()
            .and_then(|p| Ok(p.challenge(chain, rustls_pki_types::UnixTime::now())?));
        if let Err(e) = &result {
            self.audit_refusal("x509pop", e).await?;
        }
        result
    }

    /// x509pop, second step: checks the answer to `challenge_id` and signs an agent SVID
    /// for the CSR's key under the agent ID the template gives. Nothing is consumed but
    /// the challenge: an evicted agent attests again with the same certificate. Refusals
    /// are audited.
    pub async fn attest_with_x509pop(
        &self,
        chain: &[Vec<u8>],
        challenge_id: &str,
        signature: &[u8],
        csr: &[u8],
    ) -> Result<(SpiffeId, Issued), NodeAttestationError> {
        let result = self
            .x509pop_inner(chain, challenge_id, signature, csr)
            .await;
        if let Err(e) = &result {
            self.audit_refusal("x509pop", e).await?;
        }
        result
    }

    async fn x509pop_inner(
        &self,
        chain: &[Vec<u8>],
        challenge_id: &str,
        signature: &[u8],
        csr: &[u8],
    ) -> Result<(SpiffeId, Issued), NodeAttestationError> {
        let (node, id) = self.x509pop()?.answer(
            chain,
            challenge_id,
            signature,
            rustls_pki_types::UnixTime::now(),
        )?;
        let id = self.check_agent_id(id.as_str())?;
        let existing = self.ds.get_agent(&id).await?;
        if existing.as_ref().is_some_and(|a| a.banned) {
            return Err(NodeAttestationError::Banned(id.to_string()));
        }
        let issued = self.ca.sign_svid(csr, &id, self.agent_ttl, &[])?;
        let selectors = node.selectors();
        let record = AgentRecord {
            spiffe_id: id.clone(),
            serial: issued.serial_hex.clone(),
            previous_serial: None,
            expires_at: unix_seconds(issued.not_after),
            attested_at: now_unix(),
            banned: false,
            attestation_type: "x509pop".to_owned(),
            // Stored with each attestation (a re-attestation replaces them): they decide
            // which node entries (groups) the agent is a member of.
            selectors: selectors.iter().cloned().collect(),
        };
        // The node selectors are recorded with the attestation (audit) too, for operators
        // to see which certificate enrolled the agent.
        let event = AuditEvent::new(
            AuditKind::AgentAttested,
            &id,
            serde_json::json!({
                "method": "x509pop",
                "serial": issued.serial_hex,
                "not_after": unix_seconds(issued.not_after),
                "certificate_fingerprint": node.fingerprint,
                "selectors": selectors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            }),
        )
        .by(&id);
        if !self.ds.attest_agent(&record, &[event]).await? {
            return Err(NodeAttestationError::Banned(id.to_string()));
        }
        tracing::info!(agent_id = %id, serial = %issued.serial_hex, "agent attested with x509pop");
        Ok((id, issued))
    }

    /// The SPIFFE ID given to agents whose token names none.
    pub fn default_agent_id(&self) -> Result<SpiffeId, NodeAttestationError> {
        let path = format!("/tessera/agent/join_token/{}", uuid::Uuid::new_v4());
        SpiffeId::from_parts(&self.trust_domain, &path)
            .map_err(|e| NodeAttestationError::BadAgentId(e.to_string()))
    }

    fn check_agent_id(&self, raw: &str) -> Result<SpiffeId, NodeAttestationError> {
        let id = SpiffeId::new(raw).map_err(|e| NodeAttestationError::BadAgentId(e.to_string()))?;
        if !id.is_member_of(&self.trust_domain) {
            return Err(NodeAttestationError::BadAgentId(format!(
                "{id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        if id.is_trust_domain_id() || id.path().starts_with("/tessera/server") {
            return Err(NodeAttestationError::BadAgentId(format!(
                "{id} is reserved"
            )));
        }
        Ok(id)
    }

    /// Creates a one-time token for `spiffe_id` (or a generated agent ID when empty).
    /// Returns the token (shown once, never stored in clear), the ID and the expiry.
    pub async fn generate_token(
        &self,
        spiffe_id: &str,
        ttl_secs: i64,
        by: &str,
    ) -> Result<(String, SpiffeId, i64), NodeAttestationError> {
        let id = if spiffe_id.is_empty() {
            self.default_agent_id()?
        } else {
            self.check_agent_id(spiffe_id)?
        };
        let max = MAX_TOKEN_TTL.as_secs();
        let ttl = match u64::try_from(ttl_secs) {
            Ok(0) => DEFAULT_TOKEN_TTL.as_secs(),
            Ok(s) if s <= max => s,
            _ => return Err(NodeAttestationError::BadTtl(max)),
        };
        let token = uuid::Uuid::new_v4().to_string();
        let expires_at = now_unix().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
        let event = AuditEvent::new(
            AuditKind::JoinTokenCreated,
            &id,
            serde_json::json!({ "expires_at": expires_at }),
        )
        .by(by);
        self.ds
            .create_join_token(&hash_token(&token), &id, expires_at, &[event])
            .await?;
        tracing::info!(spiffe_id = %id, expires_at, "join token created");
        Ok((token, id, expires_at))
    }

    /// Consumes `token` and signs an agent SVID for the CSR's key. Refusals are audited.
    pub async fn attest_with_token(
        &self,
        token: &str,
        csr: &[u8],
    ) -> Result<(SpiffeId, Issued), NodeAttestationError> {
        let result = self.attest_inner(token, csr).await;
        // An attestation is recorded with the agent it stores (`attest_inner`).
        if let Err(e) = &result {
            self.audit_refusal("join_token", e).await?;
        }
        result
    }

    async fn attest_inner(
        &self,
        token: &str,
        csr: &[u8],
    ) -> Result<(SpiffeId, Issued), NodeAttestationError> {
        // Read first, to know which SPIFFE ID to sign for; consumed below, in the
        // transaction that stores the agent, so a token is never used up by an attestation
        // that did not happen, and of two servers presented the same token at once exactly
        // one enrolls the agent.
        let hash = hash_token(token);
        let grant = self
            .ds
            .get_join_token(&hash)
            .await?
            .ok_or(NodeAttestationError::UnknownToken)?;
        if grant.expires_at <= now_unix() {
            return Err(NodeAttestationError::ExpiredToken);
        }
        let id = grant.spiffe_id;
        // Cheap early refusal; the write below re-checks atomically.
        let existing = self.ds.get_agent(&id).await?;
        if existing.as_ref().is_some_and(|a| a.banned) {
            return Err(NodeAttestationError::Banned(id.to_string()));
        }
        let issued = self.ca.sign_svid(csr, &id, self.agent_ttl, &[])?;
        let record = AgentRecord {
            spiffe_id: id.clone(),
            serial: issued.serial_hex.clone(),
            previous_serial: None,
            expires_at: unix_seconds(issued.not_after),
            attested_at: now_unix(),
            banned: false,
            attestation_type: "join_token".to_owned(),
            selectors: std::collections::BTreeSet::new(),
        };
        let event = AuditEvent::new(
            AuditKind::AgentAttested,
            &id,
            serde_json::json!({
                "method": "join_token",
                "serial": issued.serial_hex,
                "not_after": unix_seconds(issued.not_after),
            }),
        )
        .by(&id);
        // An SVID signed for a token another server consumed meanwhile is dropped here,
        // never sent.
        match self
            .ds
            .attest_agent_with_token(&hash, now_unix(), &record, &[event])
            .await?
        {
            TokenAttestation::Attested => {}
            TokenAttestation::TokenGone => return Err(NodeAttestationError::UnknownToken),
            TokenAttestation::Banned => {
                return Err(NodeAttestationError::Banned(id.to_string()));
            }
        }
        tracing::info!(agent_id = %id, serial = %issued.serial_hex, "agent attested with join token");
        Ok((id, issued))
    }

    /// Authenticates an agent by the leaf certificate it presented over mutual TLS.
    pub async fn authenticate(
        &self,
        peer_leaf: Option<&[u8]>,
    ) -> Result<AgentRecord, NodeAttestationError> {
        let der = peer_leaf.ok_or(NodeAttestationError::NoClientCertificate)?;
        let leaf = common::svid::parse_leaf(der)
            .map_err(|e| NodeAttestationError::BadAgentId(e.to_string()))?;
        let id = leaf.spiffe_id;
        let record = self
            .ds
            .get_agent(&id)
            .await?
            .ok_or_else(|| NodeAttestationError::NotAttested(id.to_string()))?;
        if record.banned {
            return Err(NodeAttestationError::Banned(id.to_string()));
        }
        let current = record.serial == leaf.serial_hex;
        let previous = record.previous_serial.as_deref() == Some(leaf.serial_hex.as_str());
        if !current && !previous {
            return Err(NodeAttestationError::NotAttested(id.to_string()));
        }
        Ok(record)
    }

    /// Renews an authenticated agent's SVID.
    pub async fn renew(
        &self,
        agent: &AgentRecord,
        csr: &[u8],
    ) -> Result<Issued, NodeAttestationError> {
        let issued = self
            .ca
            .sign_svid(csr, &agent.spiffe_id, self.agent_ttl, &[])?;
        // Compare-and-set on the serial we authenticated against: an eviction, ban or
        // other renewal in between makes this fail instead of being undone.
        let event = AuditEvent::new(
            AuditKind::AgentRenewed,
            &agent.spiffe_id,
            serde_json::json!({
                "serial": issued.serial_hex,
                "not_after": unix_seconds(issued.not_after),
            }),
        )
        .by(&agent.spiffe_id);
        let stored = self
            .ds
            .renew_agent(
                &agent.spiffe_id,
                &agent.serial,
                &issued.serial_hex,
                unix_seconds(issued.not_after),
                &[event],
            )
            .await?;
        if !stored {
            return Err(NodeAttestationError::NotAttested(
                agent.spiffe_id.to_string(),
            ));
        }
        tracing::info!(agent_id = %agent.spiffe_id, serial = %issued.serial_hex, "agent SVID renewed");
        Ok(issued)
    }

    /// Removes an agent's record: it must attest again with a new token.
    pub async fn evict(&self, id: &str, by: &str) -> Result<AgentRecord, NodeAttestationError> {
        let id = SpiffeId::new(id).map_err(|e| NodeAttestationError::BadAgentId(e.to_string()))?;
        let event = AuditEvent::new(AuditKind::AgentEvicted, &id, serde_json::json!({})).by(by);
        let _write = self.events.begin_write();
        let record = self
            .ds
            .delete_agent(&id, &[event])
            .await?
            .ok_or_else(|| NodeAttestationError::NotAttested(id.to_string()))?;
        tracing::info!(agent_id = %id, "agent evicted");
        self.events.publish(ChangeEvent::AgentRemoved(id));
        Ok(record)
    }

    /// Bans an agent: refused at once, and refused attestation until evicted.
    pub async fn ban(&self, id: &str, by: &str) -> Result<AgentRecord, NodeAttestationError> {
        let id = SpiffeId::new(id).map_err(|e| NodeAttestationError::BadAgentId(e.to_string()))?;
        let event = AuditEvent::new(AuditKind::AgentBanned, &id, serde_json::json!({})).by(by);
        let _write = self.events.begin_write();
        let banned = self
            .ds
            .ban_agent(&id, &[event])
            .await?
            .ok_or_else(|| NodeAttestationError::NotAttested(id.to_string()))?;
        tracing::info!(agent_id = %id, "agent banned");
        self.events.publish(ChangeEvent::AgentRemoved(id));
        Ok(banned)
    }

    /// All agents.
    pub async fn list(&self) -> Result<Vec<AgentRecord>, NodeAttestationError> {
        Ok(self.ds.list_agents().await?)
    }
}

#[cfg(test)]
mod tests;
