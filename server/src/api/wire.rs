//! Conversions between the server's domain values and the wire messages of the node and
//! admin APIs, in one place. Incoming messages are parsed here into domain requests
//! (what the caller got wrong becomes a precise `InvalidArgument`); outgoing ones are
//! built from domain records. Conversions shared with the agent (entries, bundles) live
//! in `common::proto`.

use common::SpiffeId;
use common::proto::tessera as wire;
use common::task::{BindKind, TaskBinding};
use tonic::Status;

use crate::audit::AuditRecord;
use crate::ca::rotation::CaInfo;
use crate::clock::unix_seconds;
use crate::datastore::{AgentRecord, DomainRecord, TaskRecord, TenantRecord, UnixUser};
use crate::issuance::X509Outcome;
use crate::policy::Decision;
use crate::registration::{EntryRequest, RegistrationError};
use crate::tasks::{RevocationSet, TaskRequest, TaskTarget};
use crate::tenants::TenantRequest;

/// `secs` as an optional lifetime: 0 is "unset", negative is refused as `field`'s error.
fn ttl(field: &'static str, secs: i64) -> Result<Option<std::time::Duration>, RegistrationError> {
    match u64::try_from(secs) {
        Ok(0) => Ok(None),
        Ok(s) => Ok(Some(std::time::Duration::from_secs(s))),
        Err(_) => Err(RegistrationError::bad_ttl(field)),
    }
}

/// An entry spec as a registration request.
pub(crate) fn entry_request(spec: &wire::EntrySpec) -> Result<EntryRequest, RegistrationError> {
    Ok(EntryRequest {
        spiffe_id: spec.spiffe_id.clone(),
        parent_id: spec.parent_id.clone(),
        selectors: spec.selectors.clone(),
        x509_svid_ttl: ttl("x509_svid_ttl", spec.x509_svid_ttl_seconds)?,
        jwt_svid_ttl: ttl("jwt_svid_ttl", spec.jwt_svid_ttl_seconds)?,
        dns_names: spec.dns_names.clone(),
        jit: spec.jit,
        hint: spec.hint.clone(),
        tenant: spec.tenant.clone(),
        owner: spec.owner.clone(),
        expires_at: (spec.expires_at != 0).then_some(spec.expires_at),
        review_every: ttl("review_every", spec.review_every_seconds)?,
        node: spec.node,
    })
}

/// A template spec as a template request.
pub(crate) fn template_request(
    spec: &wire::TemplateSpec,
) -> Result<crate::templates::TemplateRequest, RegistrationError> {
    Ok(crate::templates::TemplateRequest {
        template: spec.spiffe_id_template.clone(),
        parent_id: spec.parent_id.clone(),
        selectors: spec.selectors.clone(),
        x509_svid_ttl: ttl("x509_svid_ttl", spec.x509_svid_ttl_seconds)?,
        jwt_svid_ttl: ttl("jwt_svid_ttl", spec.jwt_svid_ttl_seconds)?,
        tenant: spec.tenant.clone(),
        owner: spec.owner.clone(),
        grace: ttl("grace", spec.grace_seconds)?,
    })
}

/// A stored template on the wire.
pub(crate) fn template(t: &crate::datastore::TemplateRecord) -> wire::Template {
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    wire::Template {
        id: t.id.to_string(),
        spiffe_id_template: t.template.to_string(),
        parent_id: t.parent_id.to_string(),
        selectors: t.selectors.iter().map(ToString::to_string).collect(),
        x509_svid_ttl_seconds: secs(t.x509_svid_ttl),
        jwt_svid_ttl_seconds: secs(t.jwt_svid_ttl),
        tenant: t.tenant.clone(),
        owner: t.owner.clone(),
        grace_seconds: secs(t.grace),
        created_at: t.created_at,
    }
}

/// A tenant spec as a tenant request (0 stands for "no limit" / "none").
pub(crate) fn tenant_request(spec: &wire::TenantSpec) -> Result<TenantRequest, Status> {
    let limit = |what: &str, v: i64| match v {
        0 => Ok(None),
        n if n > 0 => Ok(Some(n)),
        _ => Err(Status::invalid_argument(format!(
            "{what} must not be negative"
        ))),
    };
    Ok(TenantRequest {
        name: spec.name.clone(),
        path_prefixes: spec.path_prefixes.clone(),
        admin_users: spec.admin_users.clone(),
        admin_groups: spec.admin_groups.clone(),
        max_entries: limit("max_entries", spec.max_entries)?,
        max_open_tasks: limit("max_open_tasks", spec.max_open_tasks)?,
        max_parallel_tasks_per_entry: limit(
            "max_parallel_tasks_per_entry",
            spec.max_parallel_tasks_per_entry,
        )?,
        review_every: match u64::try_from(spec.review_every_seconds) {
            Ok(0) => None,
            Ok(s) => Some(std::time::Duration::from_secs(s)),
            Err(_) => {
                return Err(Status::invalid_argument(
                    "review_every must not be negative",
                ));
            }
        },
    })
}

/// The wire form of a tenant, with its domains and what it owns.
pub(crate) fn tenant(
    t: &TenantRecord,
    domains: &[DomainRecord],
    (entries, open_tasks): (i64, i64),
) -> wire::Tenant {
    wire::Tenant {
        name: t.name.clone(),
        path_prefixes: t.path_prefixes.clone(),
        admin_users: t.admin_users.clone(),
        admin_groups: t.admin_groups.clone(),
        max_entries: t.max_entries.unwrap_or(0),
        max_open_tasks: t.max_open_tasks.unwrap_or(0),
        max_parallel_tasks_per_entry: t.max_parallel_tasks_per_entry.unwrap_or(0),
        review_every_seconds: t
            .review_every
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        created_at: t.created_at,
        revision: t.revision,
        domains: domains.iter().map(domain).collect(),
        entries,
        open_tasks,
        policy: t.policy.clone().unwrap_or_default(),
    }
}

/// The wire form of a review item.
pub(crate) fn review_item(i: &crate::review::ReviewItem) -> wire::ReviewItem {
    wire::ReviewItem {
        entry: Some((&i.entry).into()),
        last_issued_at: i.last_issued_at.unwrap_or(0),
        last_used_at: i.last_used_at.unwrap_or(0),
        open_tasks: i.open_tasks.iter().map(ToString::to_string).collect(),
        overlaps: i.overlaps.iter().map(ToString::to_string).collect(),
        unverified_dns_names: i.unverified_dns_names.clone(),
        flags: i.flags.iter().map(|f| f.as_str().to_owned()).collect(),
        break_glass_tasks: i
            .break_glass_tasks
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// The wire form of a claimed domain.
pub(crate) fn domain(d: &DomainRecord) -> wire::TenantDomain {
    wire::TenantDomain {
        tenant: d.tenant.clone(),
        domain: d.domain.clone(),
        challenge: d.challenge.clone(),
        record_name: format!("{}.{}", crate::domains::CHALLENGE_LABEL, d.domain),
        added_at: d.added_at,
        verified_at: d.verified_at.unwrap_or(0),
        checked_at: d.checked_at.unwrap_or(0),
        failing_since: d.failing_since.unwrap_or(0),
        last_error: d.last_error.clone().unwrap_or_default(),
        verified: d.is_verified(),
    }
}

fn spiffe_id(field: &str, raw: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(raw).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A task spec as a task request.
/// An operator's task request: bound by selectors (`bind` empty or `selectors`, no
/// `bind_pid`); only a workload's agent can bind a task to a local process.
pub(crate) fn task_request(spec: &wire::TaskSpec) -> Result<TaskRequest, Status> {
    match spec.bind.as_str() {
        "" | "selectors" if spec.bind_pid == 0 => task_request_bound(spec, TaskBinding::Selectors),
        "" | "selectors" => Err(Status::invalid_argument(
            "bind_pid is for workload-started tasks: an operator's task is bound by selectors",
        )),
        other => Err(Status::invalid_argument(format!(
            "an operator's task is bound by selectors, not {other:?}: only a workload \
             beginning its own task through its agent (tessera-agent task begin) binds it to \
             a process"
        ))),
    }
}

/// A workload's task request, as its agent (`agent`, the authenticated caller) resolved
/// the binding for the calling process. An absent binding is `selectors` (an agent from
/// before bindings existed); it must agree with what the spec asked for.
pub(crate) fn workload_task_request(
    spec: &wire::TaskSpec,
    binding: Option<wire::TaskBinding>,
    agent: &SpiffeId,
) -> Result<TaskRequest, Status> {
    let binding = match binding {
        None => TaskBinding::Selectors,
        Some(mut b) => {
            b.agent_id = agent.to_string();
            TaskBinding::try_from(b)
                .map_err(|e| Status::invalid_argument(format!("binding: {e}")))?
        }
    };
    let asked = match spec.bind.as_str() {
        "" => None,
        s => Some(
            s.parse::<BindKind>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        ),
    };
    if asked.is_some_and(|k| k != binding.kind()) {
        return Err(Status::invalid_argument(format!(
            "the agent bound the task to {} but {} was asked",
            binding.kind(),
            spec.bind
        )));
    }
    task_request_bound(spec, binding)
}

fn task_request_bound(spec: &wire::TaskSpec, binding: TaskBinding) -> Result<TaskRequest, Status> {
    let target = if spec.provision {
        if !spec.entry_id.is_empty() {
            return Err(Status::invalid_argument(
                "a provisioning task creates its entry: give --spiffe-id, --parent-id and --selector, not --entry-id",
            ));
        }
        TaskTarget::Provision {
            spiffe_id: spec.spiffe_id.clone(),
            parent_id: spec.parent_id.clone(),
            selectors: spec.selectors.clone(),
            tenant: spec.tenant.clone(),
        }
    } else if !spec.entry_id.is_empty() {
        TaskTarget::Entry(spec.entry_id.parse()?)
    } else if !spec.spiffe_id.is_empty() {
        TaskTarget::SpiffeId {
            spiffe_id: spiffe_id("spiffe_id", &spec.spiffe_id)?,
            parent_id: if spec.parent_id.is_empty() {
                None
            } else {
                Some(spiffe_id("parent_id", &spec.parent_id)?)
            },
        }
    } else {
        return Err(Status::invalid_argument(
            "name the entry the task activates (entry id or SPIFFE ID), or provision one",
        ));
    };
    let ttl = match u64::try_from(spec.ttl_seconds) {
        Ok(0) => None,
        Ok(s) => Some(std::time::Duration::from_secs(s)),
        Err(_) => return Err(Status::invalid_argument("ttl must not be negative")),
    };
    Ok(TaskRequest {
        target,
        reason: spec.reason.clone(),
        ticket: spec.ticket.clone(),
        scopes: spec.scopes.clone(),
        audiences: spec.audiences.clone(),
        ttl,
        binding,
        break_glass: spec.break_glass,
    })
}

/// The wire form of a policy decision.
pub(crate) fn decision(d: &Decision) -> wire::PolicyDecision {
    wire::PolicyDecision {
        allowed: d.allowed,
        approval_required: d.approval_required,
        max_ttl_seconds: d.max_ttl_seconds.unwrap_or(0),
        policies: d.policies.clone(),
        errors: d.errors.clone(),
        explanation: d.explain(),
        break_glass_allowed: d.break_glass_allowed,
        max_parallel: d.max_parallel.unwrap_or(0),
    }
}

/// The wire form of a task (the wire has no absent values: 0 and "" stand for them).
pub(crate) fn task(t: &TaskRecord) -> wire::Task {
    let ack = t.acknowledgement.as_ref();
    wire::Task {
        id: t.id.to_string(),
        state: t.state.as_str().to_owned(),
        entry_id: t.entry_id.to_string(),
        spiffe_id: t.spiffe_id.to_string(),
        parent_id: t.parent_id.to_string(),
        provisioned: t.provisioned,
        requester: t.requester.clone(),
        approver: t.approver.clone().unwrap_or_default(),
        reason: t.reason.clone(),
        ticket: t.ticket.clone(),
        scopes: t.scopes.clone(),
        audiences: t.audiences.clone(),
        created_at: t.created_at,
        activated_at: t.activated_at.unwrap_or(0),
        deadline: t.deadline,
        ended_at: t.end.as_ref().map_or(0, |e| e.at),
        end_reason: t.end.as_ref().map(|e| e.reason.clone()).unwrap_or_default(),
        decision: Some(decision(&t.decision)),
        requester_uid: t.requester_unix.as_ref().map(|u| u.uid),
        requester_user: t
            .requester_unix
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default(),
        approver_uid: t.approver_uid,
        tenant: t.tenant.clone(),
        binding: Some((&t.binding).into()),
        break_glass: t.break_glass,
        acknowledged_by: ack.map(|a| a.by.clone()).unwrap_or_default(),
        acknowledged_uid: ack.map(|a| a.uid),
        acknowledged_at: ack.map_or(0, |a| a.at),
        acknowledgement_note: ack.map(|a| a.note.clone()).unwrap_or_default(),
    }
}

/// Longest Unix user name an agent may report for a task's requester.
const MAX_USER_NAME: usize = 256;

/// The Unix user an agent reports for the workload that begins a task: a uid and its name
/// on the workload's node (the uid in the `uid:N` form when it has none).
pub(crate) fn requester_unix(uid: Option<u32>, name: &str) -> Result<UnixUser, Status> {
    let uid = uid.ok_or_else(|| {
        Status::invalid_argument(
            "requester_uid is required: the agent must report the Unix user that asked \
             (upgrade the agent)",
        )
    })?;
    if name.is_empty() || name.len() > MAX_USER_NAME || name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "requester_user must be 1 to {MAX_USER_NAME} bytes without control characters"
        )));
    }
    Ok(UnixUser {
        uid,
        name: name.to_owned(),
    })
}

/// The wire form of the revocations every agent receives.
pub(crate) fn revocations(r: &RevocationSet) -> wire::Revocations {
    wire::Revocations {
        crls: r.crls.clone(),
        ended_tasks: r
            .ended_tasks
            .iter()
            .map(|t| wire::EndedTask {
                task_id: t.task_id.to_string(),
                until: t.until,
                state: t.state.as_str().to_owned(),
                ended_at: t.ended_at_ms,
            })
            .collect(),
    }
}

/// The answer for one CSR.
pub(crate) fn signed_svid(o: X509Outcome) -> wire::SignedX509Svid {
    let task = |t: Option<common::TaskId>| t.map(common::TaskId::into_string).unwrap_or_default();
    match o {
        X509Outcome::Signed {
            entry_id,
            task_id,
            chain,
        } => wire::SignedX509Svid {
            entry_id: entry_id.into_string(),
            task_id: task(task_id),
            svid_chain: chain_bytes(&chain),
            error: String::new(),
        },
        X509Outcome::Refused {
            entry_id,
            task_id,
            reason,
        } => wire::SignedX509Svid {
            entry_id: entry_id.into_string(),
            task_id: task(task_id),
            svid_chain: vec![],
            error: reason,
        },
    }
}

/// DER certificates as bytes, leaf first.
pub(crate) fn chain_bytes(chain: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<Vec<u8>> {
    chain.iter().map(|c| c.to_vec()).collect()
}

/// The wire form of an agent record.
pub(crate) fn agent(a: &AgentRecord) -> wire::Agent {
    wire::Agent {
        spiffe_id: a.spiffe_id.to_string(),
        serial: a.serial.clone(),
        expires_at: a.expires_at,
        attested_at: a.attested_at,
        banned: a.banned,
        attestation_type: a.attestation_type.clone(),
        selectors: a.selectors.iter().map(ToString::to_string).collect(),
    }
}

/// The wire form of an audit record.
pub(crate) fn audit_record(r: &AuditRecord) -> wire::AuditRecord {
    wire::AuditRecord {
        seq: r.seq,
        at_ms: r.at_ms,
        kind: r.event.kind.clone(),
        task_id: r.event.task_id.clone().unwrap_or_default(),
        subject: r.event.subject.clone(),
        detail_json: r.event.detail.to_string(),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
        actor: r.event.actor.clone().unwrap_or_default(),
        tenant: r.event.tenant.clone().unwrap_or_default(),
    }
}

/// The wire form of the CA list.
pub(crate) fn cas(list: &[CaInfo]) -> wire::ListCasResponse {
    wire::ListCasResponse {
        cas: list
            .iter()
            .map(|c| wire::CaInfo {
                serial: c.serial.clone(),
                phase: c.phase.as_str().to_owned(),
                not_before: unix_seconds(c.not_before),
                not_after: unix_seconds(c.not_after),
            })
            .collect(),
    }
}

/// A readiness probe's result: ready, or not with the reason.
pub(crate) fn health(result: Result<(), String>) -> wire::HealthResponse {
    match result {
        Ok(()) => wire::HealthResponse {
            ready: true,
            reason: String::new(),
        },
        Err(reason) => wire::HealthResponse {
            ready: false,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_specs_become_targets_or_precise_errors() {
        let spec = |f: fn(&mut wire::TaskSpec)| {
            let mut s = wire::TaskSpec::default();
            f(&mut s);
            task_request(&s)
        };
        let r = spec(|s| s.entry_id = "e1".into()).unwrap();
        assert_eq!(
            r.target,
            TaskTarget::Entry(common::EntryId::parse("e1").unwrap())
        );
        assert_eq!(r.ttl, None);
        let r = spec(|s| {
            s.spiffe_id = "spiffe://example.org/db".into();
            s.ttl_seconds = 60;
        })
        .unwrap();
        assert!(matches!(
            r.target,
            TaskTarget::SpiffeId {
                parent_id: None,
                ..
            }
        ));
        assert_eq!(r.ttl, Some(std::time::Duration::from_secs(60)));
        let r = spec(|s| {
            s.provision = true;
            s.spiffe_id = "spiffe://example.org/tmp".into();
        })
        .unwrap();
        assert!(r.provisions());
        for (bad, want) in [
            (spec(|_| {}), "name the entry"),
            (
                spec(|s| {
                    s.provision = true;
                    s.entry_id = "e1".into();
                }),
                "creates its entry",
            ),
            (spec(|s| s.spiffe_id = "not-an-id".into()), "spiffe_id:"),
            (
                spec(|s| {
                    s.spiffe_id = "spiffe://example.org/db".into();
                    s.parent_id = "x".into();
                }),
                "parent_id:",
            ),
            (
                spec(|s| {
                    s.entry_id = "e1".into();
                    s.ttl_seconds = -1;
                }),
                "negative",
            ),
        ] {
            let e = bad.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{e:?} should say {want:?}");
        }
    }

    #[test]
    fn operators_bind_by_selectors_and_agents_bind_for_themselves() {
        let mut s = wire::TaskSpec {
            entry_id: "e1".into(),
            ..Default::default()
        };
        assert_eq!(task_request(&s).unwrap().binding, TaskBinding::Selectors);
        s.bind = "selectors".into();
        assert_eq!(task_request(&s).unwrap().binding, TaskBinding::Selectors);
        for (bind, pid, want) in [
            ("process", 0, "bound by selectors"),
            ("tree", 0, "bound by selectors"),
            ("selectors", 7, "bind_pid"),
            ("", 7, "bind_pid"),
        ] {
            s.bind = bind.into();
            s.bind_pid = pid;
            let e = task_request(&s).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{e:?} should say {want:?}");
        }
        // A workload's agent: the binding it resolved, under its own name whatever it sent.
        let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
        let spec = wire::TaskSpec {
            entry_id: "e1".into(),
            ..Default::default()
        };
        let sent = wire::TaskBinding {
            kind: "tree".into(),
            pid: 42,
            start_time: 7,
            agent_id: "spiffe://example.org/someone-else".into(),
        };
        let r = workload_task_request(&spec, Some(sent.clone()), &agent).unwrap();
        let Some(h) = r.binding.holder() else {
            panic!("{:?}", r.binding)
        };
        assert_eq!(r.binding.kind(), BindKind::Tree);
        assert_eq!((h.process.pid, h.process.start_time), (42, 7));
        assert_eq!(h.agent, agent);
        assert_eq!(
            workload_task_request(&spec, None, &agent).unwrap().binding,
            TaskBinding::Selectors,
            "an agent from before bindings"
        );
        let asked_process = wire::TaskSpec {
            bind: "process".into(),
            ..spec.clone()
        };
        assert!(workload_task_request(&asked_process, Some(sent.clone()), &agent).is_err());
        let no_pid = wire::TaskBinding { pid: 0, ..sent };
        assert!(workload_task_request(&spec, Some(no_pid), &agent).is_err());
    }

    #[test]
    fn entry_ttls_zero_is_default_and_negative_is_refused() {
        let mut spec = wire::EntrySpec::default();
        assert_eq!(entry_request(&spec).unwrap().x509_svid_ttl, None);
        spec.jwt_svid_ttl_seconds = 30;
        assert_eq!(
            entry_request(&spec).unwrap().jwt_svid_ttl,
            Some(std::time::Duration::from_secs(30))
        );
        spec.x509_svid_ttl_seconds = -5;
        let e = entry_request(&spec).unwrap_err();
        assert!(e.to_string().contains("x509_svid_ttl"), "{e}");
    }
}
