//! The append-only, hash-chained audit log.
//!
//! Every security-relevant step — enrollment, agent renewal/eviction/ban, entry changes,
//! each X.509-SVID and JWT-SVID issued, CA rotation — is one record in the datastore,
//! written before the call that caused it returns. Each record's hash covers its content
//! and the previous record's hash, so editing, deleting or reordering any record breaks
//! the chain from that point on; [`verify`] names the first record that does not fit.
//!
//! The hash is SHA-256 over a canonical JSON array
//! `[seq, at_ms, kind, task_id, subject, detail, prev_hash]`, hex-encoded; the first
//! record's `prev_hash` is 64 zeros.
//!
//! A chain proves only that it is consistent with itself: whoever can write the datastore
//! can cut its end off or rewrite a record and recompute every later hash. [`anchor`]
//! closes that gap with signed checkpoints of the chain head kept outside the datastore.

pub mod anchor;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Every kind of audit record this release writes: the one list of their names.
///
/// Stored records keep the kind as text ([`AuditEvent::kind`]): a log may hold kinds
/// written by another release, and verification must still read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// An agent enrolled (join token). (`agent.attested`)
    AgentAttested,
    /// An enrollment was refused. (`agent.attestation_refused`)
    AgentAttestationRefused,
    /// An agent renewed its SVID. (`agent.renewed`)
    AgentRenewed,
    /// An operator evicted an agent. (`agent.evicted`)
    AgentEvicted,
    /// An operator banned an agent. (`agent.banned`)
    AgentBanned,
    /// A join token was generated. (`join_token.created`)
    JoinTokenCreated,
    /// A registration entry was created. (`entry.created`)
    EntryCreated,
    /// A registration entry was changed. (`entry.updated`)
    EntryUpdated,
    /// A registration entry was deleted (by an operator or with its task). (`entry.deleted`)
    EntryDeleted,
    /// An entry was made from an identity template for a workload. (`entry.provisioned`)
    EntryProvisioned,
    /// An entry made from a template was removed: its workload was gone for the grace
    /// period. (`entry.deprovisioned`)
    EntryDeprovisioned,
    /// An identity template was created. (`template.created`)
    TemplateCreated,
    /// An identity template was deleted, with its instances. (`template.deleted`)
    TemplateDeleted,
    /// An X.509-SVID was signed. (`svid.x509.issued`)
    SvidX509Issued,
    /// A JWT-SVID was signed. (`svid.jwt.issued`)
    SvidJwtIssued,
    /// A prepared CA became the signing CA on schedule. (`ca.activated`)
    CaActivated,
    /// An operator forced a CA rotation. (`ca.rotated`)
    CaRotated,
    /// The task policy set was reloaded. (`policy.reloaded`)
    PolicyReloaded,
    /// Somebody asked for a task. (`task.requested`)
    TaskRequested,
    /// The policy decided a task request. (`task.policy`)
    TaskPolicy,
    /// A task waits for an approver. (`task.pending_approval`)
    TaskPendingApproval,
    /// A task was approved. (`task.approved`)
    TaskApproved,
    /// A task became active. (`task.activated`)
    TaskActivated,
    /// A task ended (completed, failed, cancelled, revoked or expired). (`task.ended`)
    TaskEnded,
    /// A break-glass task skipped approval and became active; pushed to SET receivers as
    /// its start. (`task.break_glass`)
    TaskBreakGlass,
    /// Someone other than the requester reviewed a break-glass task after the fact.
    /// (`task.acknowledged`)
    TaskAcknowledged,
    /// An agent validated (or refused) a task's JWT-SVID. (`task.jwt.validated`)
    TaskJwtValidated,
    /// A tenant was created. (`tenant.created`)
    TenantCreated,
    /// A tenant's settings changed. (`tenant.updated`)
    TenantUpdated,
    /// A tenant was deleted. (`tenant.deleted`)
    TenantDeleted,
    /// A tenant's own policies were set or cleared. (`tenant.policy_set`)
    TenantPolicySet,
    /// A tenant claimed a DNS domain (challenge issued). (`domain.added`)
    DomainAdded,
    /// A domain's challenge was found in DNS. (`domain.verified`)
    DomainVerified,
    /// A verified domain's challenge is no longer found. (`domain.failing`)
    DomainFailing,
    /// A tenant gave up a domain. (`domain.removed`)
    DomainRemoved,
    /// An entry stopped being issued: expired, review lapsed, or its owner left. (`entry.disabled`)
    EntryDisabled,
    /// An entry's owner re-certified it (re-enabled if its review had lapsed). (`entry.certified`)
    EntryCertified,
    /// An owner left: their tasks ended and their entries were disabled. (`owner.offboarded`)
    OwnerOffboarded,
    /// A task's end reached a Security Event Token receiver. (`set.delivered`)
    SetDelivered,
    /// A task's end was given up for one SET receiver after retrying too long. (`set.abandoned`)
    SetAbandoned,
    /// A server published (or changed the phase of) a CA certificate or JWT key in the
    /// trust bundle shared through the datastore. (`bundle.published`)
    BundlePublished,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: &'static [Self] = &[
        Self::AgentAttested,
        Self::AgentAttestationRefused,
        Self::AgentRenewed,
        Self::AgentEvicted,
        Self::AgentBanned,
        Self::JoinTokenCreated,
        Self::EntryCreated,
        Self::EntryUpdated,
        Self::EntryDeleted,
        Self::EntryProvisioned,
        Self::EntryDeprovisioned,
        Self::TemplateCreated,
        Self::TemplateDeleted,
        Self::SvidX509Issued,
        Self::SvidJwtIssued,
        Self::CaActivated,
        Self::CaRotated,
        Self::PolicyReloaded,
        Self::TaskRequested,
        Self::TaskPolicy,
        Self::TaskPendingApproval,
        Self::TaskApproved,
        Self::TaskActivated,
        Self::TaskEnded,
        Self::TaskBreakGlass,
        Self::TaskAcknowledged,
        Self::TaskJwtValidated,
        Self::TenantCreated,
        Self::TenantUpdated,
        Self::TenantDeleted,
        Self::TenantPolicySet,
        Self::DomainAdded,
        Self::DomainVerified,
        Self::DomainFailing,
        Self::DomainRemoved,
        Self::EntryDisabled,
        Self::EntryCertified,
        Self::OwnerOffboarded,
        Self::SetDelivered,
        Self::SetAbandoned,
        Self::BundlePublished,
    ];

    /// The stored name, e.g. `svid.x509.issued`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentAttested => "agent.attested",
            Self::AgentAttestationRefused => "agent.attestation_refused",
            Self::AgentRenewed => "agent.renewed",
            Self::AgentEvicted => "agent.evicted",
            Self::AgentBanned => "agent.banned",
            Self::JoinTokenCreated => "join_token.created",
            Self::EntryCreated => "entry.created",
            Self::EntryUpdated => "entry.updated",
            Self::EntryDeleted => "entry.deleted",
            Self::EntryProvisioned => "entry.provisioned",
            Self::EntryDeprovisioned => "entry.deprovisioned",
            Self::TemplateCreated => "template.created",
            Self::TemplateDeleted => "template.deleted",
            Self::SvidX509Issued => "svid.x509.issued",
            Self::SvidJwtIssued => "svid.jwt.issued",
            Self::CaActivated => "ca.activated",
            Self::CaRotated => "ca.rotated",
            Self::PolicyReloaded => "policy.reloaded",
            Self::TaskRequested => "task.requested",
            Self::TaskPolicy => "task.policy",
            Self::TaskPendingApproval => "task.pending_approval",
            Self::TaskApproved => "task.approved",
            Self::TaskActivated => "task.activated",
            Self::TaskEnded => "task.ended",
            Self::TaskBreakGlass => "task.break_glass",
            Self::TaskAcknowledged => "task.acknowledged",
            Self::TaskJwtValidated => "task.jwt.validated",
            Self::TenantCreated => "tenant.created",
            Self::TenantUpdated => "tenant.updated",
            Self::TenantDeleted => "tenant.deleted",
            Self::TenantPolicySet => "tenant.policy_set",
            Self::DomainAdded => "domain.added",
            Self::DomainVerified => "domain.verified",
            Self::DomainFailing => "domain.failing",
            Self::DomainRemoved => "domain.removed",
            Self::EntryDisabled => "entry.disabled",
            Self::EntryCertified => "entry.certified",
            Self::OwnerOffboarded => "owner.offboarded",
            Self::SetDelivered => "set.delivered",
            Self::SetAbandoned => "set.abandoned",
            Self::BundlePublished => "bundle.published",
        }
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AuditKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown audit record kind {s:?}"))
    }
}

/// What to record (the datastore assigns `seq`, `at_ms` and the hashes).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Dotted kind, e.g. `svid.x509.issued` ([`AuditKind`] names every kind written).
    pub kind: String,
    /// The task this belongs to, if any.
    pub task_id: Option<String>,
    /// Who or what it is about (a SPIFFE ID, an entry id).
    pub subject: String,
    /// Structured details (serials, expiries, reasons). Never secrets.
    pub detail: Value,
    /// Who did it: `user:NAME` (an operator), a workload's or an agent's SPIFFE ID, or
    /// `server` (its own schedule: expiry, rotation). `None` only on records written
    /// before actors were recorded.
    pub actor: Option<String>,
    /// The tenant it concerns; `None` for platform records (agents, CAs, tokens) and
    /// records written before tenants.
    pub tenant: Option<String>,
}

/// The actor of what the server does on its own schedule (expiry, review, rotation).
pub const SERVER_ACTOR: &str = "server";

impl AuditEvent {
    /// An event without a task.
    pub fn new(kind: AuditKind, subject: impl std::fmt::Display, detail: Value) -> Self {
        Self {
            kind: kind.as_str().to_owned(),
            task_id: None,
            subject: subject.to_string(),
            detail,
            actor: None,
            tenant: None,
        }
    }

    /// The same event, done by `actor`.
    #[must_use]
    pub fn by(mut self, actor: impl std::fmt::Display) -> Self {
        self.actor = Some(actor.to_string());
        self
    }

    /// The same event, concerning `tenant`.
    #[must_use]
    pub fn in_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// An event of one task.
    pub fn for_task(
        kind: AuditKind,
        task_id: &common::TaskId,
        subject: impl std::fmt::Display,
        detail: Value,
    ) -> Self {
        Self {
            task_id: Some(task_id.to_string()),
            ..Self::new(kind, subject, detail)
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// Unix milliseconds when it was written.
    pub at_ms: i64,
    /// The event.
    pub event: AuditEvent,
    /// Hash of the previous record ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Hash of this record.
    pub hash: String,
}

/// The last record of a chain (or a checkpoint of it): its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the record.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

/// The hash of a record with these fields. A record with an actor or a tenant (schema
/// version 5 on) appends both to the array, so they are covered too; a record with neither
/// hashes exactly as records written before them did.
pub fn record_hash(seq: i64, at_ms: i64, event: &AuditEvent, prev_hash: &str) -> String {
    // The detail written straight into the hash: no intermediate `Value`, no copy of it.
    hash_fields(seq, at_ms, event, prev_hash, |h| {
        serde_json::to_writer(h, &event.detail)
    })
}

/// [`record_hash`] of `event` whose detail, serialised compactly, is `detail_json` (what
/// the datastore stores): the detail is serialised once for both.
fn record_hash_of_text(
    seq: i64,
    at_ms: i64,
    event: &AuditEvent,
    detail_json: &str,
    prev_hash: &str,
) -> String {
    hash_fields(seq, at_ms, event, prev_hash, |h| {
        h.0.update(detail_json.as_bytes());
        Ok(())
    })
}

/// The hash of the canonical form: the compact JSON array of the fields (sequence number,
/// time, kind, task, subject, detail, previous hash, then actor and tenant when either is
/// set), written element by element into the hash; `detail` writes the detail's JSON.
fn hash_fields(
    seq: i64,
    at_ms: i64,
    event: &AuditEvent,
    prev_hash: &str,
    detail: impl FnOnce(&mut HashWriter) -> serde_json::Result<()>,
) -> String {
    let mut h = HashWriter(Sha256::new());
    let written = (|| {
        let h = &mut h;
        h.0.update(b"[");
        serde_json::to_writer(&mut *h, &seq)?;
        h.0.update(b",");
        serde_json::to_writer(&mut *h, &at_ms)?;
        h.0.update(b",");
        serde_json::to_writer(&mut *h, &event.kind)?;
        h.0.update(b",");
        serde_json::to_writer(&mut *h, &event.task_id)?;
        h.0.update(b",");
        serde_json::to_writer(&mut *h, &event.subject)?;
        h.0.update(b",");
        detail(h)?;
        h.0.update(b",");
        serde_json::to_writer(&mut *h, prev_hash)?;
        if event.actor.is_some() || event.tenant.is_some() {
            h.0.update(b",");
            serde_json::to_writer(&mut *h, &event.actor)?;
            h.0.update(b",");
            serde_json::to_writer(&mut *h, &event.tenant)?;
        }
        h.0.update(b"]");
        Ok::<_, serde_json::Error>(())
    })();
    // Writing into a hash cannot fail, nor can serialising strings, integers and a
    // `Value`.
    debug_assert!(written.is_ok());
    hex::encode(h.0.finalize())
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AuditRecord {
    /// One JSON object (a JSON-lines export row).
    pub fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "at_ms": self.at_ms,
            "kind": self.event.kind,
            "task_id": self.event.task_id,
            "subject": self.event.subject,
            "detail": self.event.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "actor": self.event.actor,
            "tenant": self.event.tenant,
        })
    }

    /// Reads back one object of [`Self::to_json`] (an `audit show --output json` line).
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let int = |k: &str| {
            v[k].as_i64()
                .ok_or_else(|| format!("{k} is not an integer"))
        };
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{k} is not a string"))
        };
        Ok(Self {
            seq: int("seq")?,
            at_ms: int("at_ms")?,
            event: AuditEvent {
                kind: text("kind")?,
                task_id: match &v["task_id"] {
                    Value::Null => None,
                    _ => Some(text("task_id")?),
                },
                subject: text("subject")?,
                detail: v["detail"].clone(),
                actor: v["actor"].as_str().map(str::to_owned),
                tenant: v["tenant"].as_str().map(str::to_owned),
            },
            prev_hash: text("prev_hash")?,
            hash: text("hash")?,
        })
    }
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditChainError {
    /// A record's content does not match its hash (edited).
    #[error("record {seq}: content does not match its hash (edited)")]
    Edited {
        /// The record.
        seq: i64,
    },
    /// A record does not follow the one before it (deleted, inserted or reordered).
    #[error(
        "record {seq}: does not follow record {previous} (a record was deleted, inserted or reordered)"
    )]
    Broken {
        /// The record that does not fit.
        seq: i64,
        /// The record before it in storage order (0 for the start).
        previous: i64,
    },
}

impl AuditChainError {
    /// The first record that does not fit.
    pub fn seq(&self) -> i64 {
        match self {
            Self::Edited { seq } | Self::Broken { seq, .. } => *seq,
        }
    }
}

/// The outcome of verifying a whole log: how many records verified before the first one
/// that does not fit, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records that verified (all of them when `error` is `None`).
    pub verified: usize,
    /// The first break in the chain.
    pub error: Option<AuditChainError>,
}

/// [`verify`], reporting how far the chain held when it breaks.
pub fn verify_report(records: &[AuditRecord]) -> VerifyReport {
    match verify(records) {
        Ok(verified) => VerifyReport {
            verified,
            error: None,
        },
        Err(e) => VerifyReport {
            verified: records.iter().take_while(|r| r.seq < e.seq()).count(),
            error: Some(e),
        },
    }
}

/// Checks a full log in storage order. Returns the number of records verified.
pub fn verify(records: &[AuditRecord]) -> Result<usize, AuditChainError> {
    let mut prev_hash = GENESIS.to_owned();
    let mut prev_seq = 0;
    for r in records {
        if r.seq != prev_seq + 1 || r.prev_hash != prev_hash {
            return Err(AuditChainError::Broken {
                seq: r.seq,
                previous: prev_seq,
            });
        }
        if record_hash(r.seq, r.at_ms, &r.event, &r.prev_hash) != r.hash {
            return Err(AuditChainError::Edited { seq: r.seq });
        }
        prev_hash.clone_from(&r.hash);
        prev_seq = r.seq;
    }
    Ok(records.len())
}

/// Builds the records that follow `last` (seq, hash) for `events` written at `at_ms`
/// (tests: the datastore builds its records with [`chain_owned`]).
#[cfg(test)]
pub(crate) fn chain(
    last: Option<(i64, String)>,
    at_ms: i64,
    events: &[AuditEvent],
) -> Vec<AuditRecord> {
    chain_owned(last, at_ms, events.to_vec())
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// Builds the records that follow `last` (seq, hash) for `events` written at `at_ms`, each
/// record beside its detail serialised compactly (what the datastore stores): each detail
/// is serialised once, for its hash and its row.
pub fn chain_owned(
    last: Option<(i64, String)>,
    at_ms: i64,
    events: Vec<AuditEvent>,
) -> Vec<(AuditRecord, String)> {
    let (mut seq, mut prev) = last.unwrap_or((0, GENESIS.to_owned()));
    events
        .into_iter()
        .map(|event| {
            seq += 1;
            let detail = event.detail.to_string();
            let hash = record_hash_of_text(seq, at_ms, &event, &detail, &prev);
            let record = AuditRecord {
                seq,
                at_ms,
                event,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            };
            (record, detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> Vec<AuditRecord> {
        let events: Vec<AuditEvent> = (0..n)
            .map(|i| AuditEvent::new(AuditKind::EntryCreated, format!("e{i}"), json!({"i": i})))
            .collect();
        chain(None, 1000, &events)
    }

    /// The canonical form written straight into the hash is the compact JSON array of
    /// the fields, exactly as earlier versions built it (so their logs still verify).
    #[test]
    fn record_hash_is_the_hash_of_the_compact_field_array() {
        fn by_value(seq: i64, at_ms: i64, e: &AuditEvent, prev: &str) -> String {
            let mut fields = vec![
                json!(seq),
                json!(at_ms),
                json!(e.kind),
                json!(e.task_id),
                json!(e.subject),
                e.detail.clone(),
                json!(prev),
            ];
            if e.actor.is_some() || e.tenant.is_some() {
                fields.push(json!(e.actor));
                fields.push(json!(e.tenant));
            }
            hex::encode(Sha256::digest(Value::Array(fields).to_string().as_bytes()))
        }
        let detail = json!({"serial": "0a", "n": 3, "nested": {"z": [1, "é\"\n"], "a": null}});
        let plain = AuditEvent::new(AuditKind::SvidX509Issued, "spiffe://t/w", detail);
        let with_task = AuditEvent {
            task_id: Some("task-1".into()),
            ..plain.clone()
        };
        let by_actor = plain.clone().by("spiffe://t/agent");
        let in_tenant = plain.clone().in_tenant("acme");
        let both = by_actor.clone().in_tenant("acme");
        for e in [&plain, &with_task, &by_actor, &in_tenant, &both] {
            assert_eq!(
                record_hash(7, 1_700_000, e, GENESIS),
                by_value(7, 1_700_000, e, GENESIS)
            );
            // From the detail's stored text, as records are written: the same hash.
            let text = e.detail.to_string();
            assert_eq!(
                record_hash_of_text(7, 1_700_000, e, &text, GENESIS),
                by_value(7, 1_700_000, e, GENESIS)
            );
        }
        // Every field is covered.
        let h = record_hash(7, 1_700_000, &both, GENESIS);
        assert_ne!(h, record_hash(8, 1_700_000, &both, GENESIS));
        assert_ne!(h, record_hash(7, 1_700_001, &both, GENESIS));
        assert_ne!(h, record_hash(7, 1_700_000, &both, "00"));
        assert_ne!(h, record_hash(7, 1_700_000, &by_actor, GENESIS));
        assert_ne!(h, record_hash(7, 1_700_000, &in_tenant, GENESIS));
        assert_ne!(
            record_hash(7, 1_700_000, &plain, GENESIS),
            record_hash(7, 1_700_000, &with_task, GENESIS)
        );
    }

    #[test]
    fn every_kind_has_one_distinct_name_that_parses_back() {
        let mut names = std::collections::HashSet::new();
        for k in AuditKind::ALL {
            assert!(names.insert(k.as_str()), "{k} named twice");
            assert_eq!(k.as_str().parse::<AuditKind>(), Ok(*k));
            assert_eq!(AuditEvent::new(*k, "s", json!({})).kind, k.as_str());
        }
        assert!("svid.x509.revoked".parse::<AuditKind>().is_err());
    }

    #[test]
    fn detects_edit_delete_reorder_insert() {
        let good = log(5);
        assert_eq!(verify(&good), Ok(5));
        let more = chain(
            Some((5, good[4].hash.clone())),
            2000,
            &[AuditEvent::new(AuditKind::TaskPolicy, "y", json!({}))],
        );
        assert_eq!(more[0].seq, 6);
        assert_eq!(more[0].prev_hash, good[4].hash);

        let mut edited = good.clone();
        edited[2].event.detail = json!({"i": 99});
        assert_eq!(verify(&edited), Err(AuditChainError::Edited { seq: 3 }));
        assert_eq!(
            verify_report(&edited),
            VerifyReport {
                verified: 2,
                error: Some(AuditChainError::Edited { seq: 3 })
            }
        );
        assert_eq!(
            verify_report(&good),
            VerifyReport {
                verified: 5,
                error: None
            }
        );

        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(
            verify(&deleted),
            Err(AuditChainError::Broken {
                seq: 3,
                previous: 1
            })
        );

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert_eq!(
            verify(&swapped),
            Err(AuditChainError::Broken {
                seq: 3,
                previous: 1
            })
        );

        // Renumbering after a deletion still breaks the hash links.
        let mut renumbered = good.clone();
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert!(verify(&renumbered).is_err());

        // Recomputing one record's hash after editing breaks the next link.
        let mut rehashed = good;
        rehashed[2].event.subject = "forged".into();
        rehashed[2].hash = record_hash(
            3,
            rehashed[2].at_ms,
            &rehashed[2].event,
            &rehashed[2].prev_hash,
        );
        assert_eq!(
            verify(&rehashed),
            Err(AuditChainError::Broken {
                seq: 4,
                previous: 3
            })
        );
    }
}
