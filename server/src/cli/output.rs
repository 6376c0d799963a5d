//! Text and JSON rendering of admin API answers. Text prints times in RFC 3339 (UTC); JSON
//! keeps them as numbers, as the admin API gives them.

use anyhow::Context as _;
use base64::Engine as _;
use common::duration::{rfc3339, rfc3339_millis};
use common::proto::tessera::{
    Agent, AuditRecord, CaInfo, Entry, ReviewResponse, Template, Tenant, TenantDomain,
};
use serde_json::json;

/// An entry as JSON (times as Unix seconds, lifetimes in seconds).
pub(super) fn entry_json(e: &Entry) -> serde_json::Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "x509_svid_ttl": e.x509_svid_ttl_seconds,
        "jwt_svid_ttl": e.jwt_svid_ttl_seconds,
        "dns_names": e.dns_names,
        "jit": e.jit,
        "node": e.node,
        "hint": e.hint,
        "created_at": e.created_at,
        "revision": e.revision,
        "tenant": e.tenant,
        "owner": e.owner,
        "expires_at": (e.expires_at != 0).then_some(e.expires_at),
        "review_every": (e.review_every_seconds != 0).then_some(e.review_every_seconds),
        "certified_at": (e.certified_at != 0).then_some(e.certified_at),
        "disabled_at": (e.disabled_at != 0).then_some(e.disabled_at),
        "disabled_reason": (e.disabled_at != 0).then_some(&e.disabled_reason),
        "template_id": (!e.template_id.is_empty()).then_some(&e.template_id),
    })
}

/// A template as JSON (times as Unix seconds, lifetimes in seconds).
pub(super) fn template_json(t: &Template) -> serde_json::Value {
    json!({
        "id": t.id,
        "spiffe_id_template": t.spiffe_id_template,
        "parent_id": t.parent_id,
        "selectors": t.selectors,
        "x509_svid_ttl": t.x509_svid_ttl_seconds,
        "jwt_svid_ttl": t.jwt_svid_ttl_seconds,
        "tenant": t.tenant,
        "owner": t.owner,
        "grace": t.grace_seconds,
        "created_at": t.created_at,
    })
}

/// A template as text.
pub(super) fn template_text(t: &Template) -> String {
    let mut s = format!(
        "Template ID      : {}\nSPIFFE ID        : {}\nParent ID        : {}\nX509-SVID TTL    : {}s\nJWT-SVID TTL     : {}s\nGrace            : {}s\nCreated at       : {}\n",
        t.id,
        t.spiffe_id_template,
        t.parent_id,
        t.x509_svid_ttl_seconds,
        t.jwt_svid_ttl_seconds,
        t.grace_seconds,
        rfc3339(t.created_at)
    );
    for sel in &t.selectors {
        s.push_str(&format!("Selector         : {sel}\n"));
    }
    s.push_str(&format!("Tenant           : {}\n", t.tenant));
    if !t.owner.is_empty() {
        s.push_str(&format!("Owner            : {}\n", t.owner));
    }
    s
}

/// An entry as text.
pub(super) fn entry_text(e: &Entry) -> String {
    let mut s = format!(
        "Entry ID         : {}\nSPIFFE ID        : {}\nParent ID        : {}\nX509-SVID TTL    : {}s\nJWT-SVID TTL     : {}s\nCreated at       : {}\n",
        e.id,
        e.spiffe_id,
        e.parent_id,
        e.x509_svid_ttl_seconds,
        e.jwt_svid_ttl_seconds,
        rfc3339(e.created_at)
    );
    if e.node {
        s.push_str("Node entry       : true\n");
    }
    for sel in &e.selectors {
        s.push_str(&format!("Selector         : {sel}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name         : {d}\n"));
    }
    if e.jit {
        s.push_str("JIT              : true\n");
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint             : {}\n", e.hint));
    }
    if !e.template_id.is_empty() {
        s.push_str(&format!("Template ID      : {}\n", e.template_id));
    }
    s.push_str(&format!("Tenant           : {}\n", e.tenant));
    if !e.owner.is_empty() {
        s.push_str(&format!("Owner            : {}\n", e.owner));
    }
    if e.expires_at != 0 {
        s.push_str(&format!("Expires at       : {}\n", rfc3339(e.expires_at)));
    }
    if e.review_every_seconds != 0 {
        s.push_str(&format!("Review every     : {}s\n", e.review_every_seconds));
    }
    if e.certified_at != 0 {
        s.push_str(&format!("Certified at     : {}\n", rfc3339(e.certified_at)));
    }
    if e.disabled_at != 0 {
        s.push_str(&format!(
            "Disabled         : {} ({})\n",
            rfc3339(e.disabled_at),
            e.disabled_reason
        ));
    }
    s
}

/// The access review as JSON (times as Unix seconds, `null` for never).
pub(super) fn review_json(r: &ReviewResponse) -> serde_json::Value {
    let opt = |v: i64| (v != 0).then_some(v);
    json!({
        "generated_at": r.generated_at,
        "identities": r.items.iter().map(|i| {
            let e = i.entry.clone().unwrap_or_default();
            json!({
                "entry_id": e.id,
                "spiffe_id": e.spiffe_id,
                "parent_id": e.parent_id,
                "tenant": e.tenant,
                "owner": (!e.owner.is_empty()).then_some(&e.owner),
                "jit": e.jit,
                "created_at": e.created_at,
                "expires_at": opt(e.expires_at),
                "disabled_reason": (e.disabled_at != 0).then_some(&e.disabled_reason),
                "last_issued_at": opt(i.last_issued_at),
                "last_used_at": opt(i.last_used_at),
                "open_tasks": i.open_tasks,
                "overlaps": i.overlaps,
                "unverified_dns_names": i.unverified_dns_names,
                "break_glass_tasks": i.break_glass_tasks,
                "flags": i.flags,
            })
        }).collect::<Vec<_>>(),
        "break_glass_unreviewed": r.break_glass_unreviewed.iter().map(common::task::task_json).collect::<Vec<_>>(),
    })
}

/// The access review as text: one block per identity, flags first.
pub(super) fn review_text(r: &ReviewResponse) -> String {
    let when = |v: i64| {
        if v == 0 {
            "never".to_owned()
        } else {
            rfc3339(v)
        }
    };
    let flagged = r.items.iter().filter(|i| !i.flags.is_empty()).count();
    let mut s = format!(
        "Access review at {}: {} identities, {flagged} flagged; {} break-glass task(s) await review\n",
        rfc3339(r.generated_at),
        r.items.len(),
        r.break_glass_unreviewed.len()
    );
    for t in &r.break_glass_unreviewed {
        s.push_str(&format!(
            "\nBreak-glass task : {} ({})\nSPIFFE ID        : {}\nRequester        : {}\nReason           : {}\nStarted at       : {}\nAcknowledge with : tessera-server task acknowledge {} --note TEXT\n",
            t.id,
            t.state,
            t.spiffe_id,
            t.requester,
            t.reason,
            rfc3339(t.activated_at),
            t.id,
        ));
    }
    for i in &r.items {
        let e = i.entry.clone().unwrap_or_default();
        s.push_str(&format!(
            "\nSPIFFE ID        : {}\nEntry ID         : {}\nTenant           : {}\nOwner            : {}\nCreated at       : {}\nExpires at       : {}\nLast issued      : {}\nLast used        : {}\n",
            e.spiffe_id,
            e.id,
            e.tenant,
            if e.owner.is_empty() { "(none)" } else { &e.owner },
            rfc3339(e.created_at),
            if e.expires_at == 0 { "never".to_owned() } else { rfc3339(e.expires_at) },
            when(i.last_issued_at),
            when(i.last_used_at),
        ));
        if !i.open_tasks.is_empty() {
            s.push_str(&format!("Open tasks       : {}\n", i.open_tasks.join(", ")));
        }
        if !i.flags.is_empty() {
            s.push_str(&format!("Flags            : {}\n", i.flags.join(", ")));
        }
        if !i.break_glass_tasks.is_empty() {
            s.push_str(&format!(
                "Break-glass      : {} (awaiting review)\n",
                i.break_glass_tasks.join(", ")
            ));
        }
        if !i.overlaps.is_empty() {
            s.push_str(&format!("Overlaps         : {}\n", i.overlaps.join(", ")));
        }
        if !i.unverified_dns_names.is_empty() {
            s.push_str(&format!(
                "Unverified names : {}\n",
                i.unverified_dns_names.join(", ")
            ));
        }
    }
    s
}

/// A tenant as JSON.
pub(super) fn tenant_json(t: &Tenant) -> serde_json::Value {
    let opt = |v: i64| (v != 0).then_some(v);
    json!({
        "name": t.name,
        "path_prefixes": t.path_prefixes,
        "admin_users": t.admin_users,
        "admin_groups": t.admin_groups,
        "max_entries": opt(t.max_entries),
        "max_open_tasks": opt(t.max_open_tasks),
        "max_parallel_tasks_per_entry": opt(t.max_parallel_tasks_per_entry),
        "review_every": opt(t.review_every_seconds),
        "created_at": t.created_at,
        "revision": t.revision,
        "entries": t.entries,
        "open_tasks": t.open_tasks,
        "domains": t.domains.iter().map(domain_json).collect::<Vec<_>>(),
        "has_policy": !t.policy.is_empty(),
    })
}

/// A tenant as text.
pub(super) fn tenant_text(t: &Tenant) -> String {
    let limit = |v: i64| {
        if v == 0 {
            "none".to_owned()
        } else {
            v.to_string()
        }
    };
    let mut s = format!(
        "Tenant           : {}\nPath prefixes    : {}\nAdmin users      : {}\nAdmin groups     : {}\nMax entries      : {}\nMax open tasks   : {}\nMax parallel/entry: {}\nEntries          : {}\nOpen tasks       : {}\n",
        t.name,
        t.path_prefixes.join(", "),
        t.admin_users.join(", "),
        t.admin_groups.join(", "),
        limit(t.max_entries),
        limit(t.max_open_tasks),
        limit(t.max_parallel_tasks_per_entry),
        t.entries,
        t.open_tasks,
    );
    if t.review_every_seconds != 0 {
        s.push_str(&format!("Review every     : {}s\n", t.review_every_seconds));
    }
    if !t.policy.is_empty() {
        s.push_str("Own policies     : yes (tenant policy show)\n");
    }
    for d in &t.domains {
        s.push_str(&format!("Domain           : {}\n", domain_state(d)));
    }
    s
}

fn domain_state(d: &TenantDomain) -> String {
    if d.verified {
        format!("{} (verified {})", d.domain, rfc3339(d.verified_at))
    } else if d.failing_since != 0 {
        format!(
            "{} (FAILING since {}: {})",
            d.domain,
            rfc3339(d.failing_since),
            d.last_error
        )
    } else {
        format!("{} (not verified)", d.domain)
    }
}

/// A domain claim as JSON.
pub(super) fn domain_json(d: &TenantDomain) -> serde_json::Value {
    let opt = |v: i64| (v != 0).then_some(v);
    json!({
        "tenant": d.tenant,
        "domain": d.domain,
        "verified": d.verified,
        "challenge": d.challenge,
        "record_name": d.record_name,
        "added_at": d.added_at,
        "verified_at": opt(d.verified_at),
        "checked_at": opt(d.checked_at),
        "failing_since": opt(d.failing_since),
        "last_error": (!d.last_error.is_empty()).then_some(&d.last_error),
    })
}

/// A domain claim as text: what to publish, and its state.
pub(super) fn domain_text(d: &TenantDomain) -> String {
    format!(
        "Domain           : {}\nTenant           : {}\nTXT record       : {}\nTXT value        : {}\n",
        domain_state(d),
        d.tenant,
        d.record_name,
        d.challenge
    )
}

/// An agent as JSON (times as Unix seconds).
pub(super) fn agent_json(a: &Agent) -> serde_json::Value {
    json!({
        "spiffe_id": a.spiffe_id,
        "serial": a.serial,
        "expires_at": a.expires_at,
        "attested_at": a.attested_at,
        "banned": a.banned,
        "attestation_type": a.attestation_type,
        "selectors": a.selectors,
    })
}

/// An agent as text.
pub(super) fn agent_text(a: &Agent) -> String {
    let mut s = format!(
        "SPIFFE ID        : {}\nAttestation type : {}\nSerial           : {}\nAttested at      : {}\nExpires at       : {}\nBanned           : {}\n",
        a.spiffe_id,
        a.attestation_type,
        a.serial,
        rfc3339(a.attested_at),
        rfc3339(a.expires_at),
        a.banned
    );
    for sel in &a.selectors {
        s.push_str(&format!("Node selector    : {sel}\n"));
    }
    s
}

/// CAs as text, one block each.
pub(super) fn cas_text(list: &[CaInfo]) -> String {
    list.iter()
        .map(|ca| {
            format!(
                "Serial     : {}\nPhase      : {}\nNot before : {}\nNot after  : {}\n\n",
                ca.serial,
                ca.phase,
                rfc3339(ca.not_before),
                rfc3339(ca.not_after)
            )
        })
        .collect()
}

/// CAs as JSON (times as Unix seconds).
pub(super) fn cas_json(list: &[CaInfo]) -> serde_json::Value {
    json!({"cas": list.iter().map(|ca| json!({
        "serial": ca.serial,
        "phase": ca.phase,
        "not_before": ca.not_before,
        "not_after": ca.not_after,
    })).collect::<Vec<_>>()})
}

/// One audit record as a text line (time in RFC 3339 with milliseconds) and as JSON
/// (`at_ms`: Unix milliseconds).
pub(super) fn audit_record(r: &AuditRecord) -> (String, serde_json::Value) {
    let detail: serde_json::Value =
        serde_json::from_str(&r.detail_json).unwrap_or_else(|_| json!(r.detail_json));
    let text = format!(
        "{:>6}  {}  {:<26} {}  {}\n",
        r.seq,
        rfc3339_millis(r.at_ms),
        r.kind,
        r.subject,
        detail
    );
    let value = json!({
        "seq": r.seq,
        "at_ms": r.at_ms,
        "kind": r.kind,
        "task_id": (!r.task_id.is_empty()).then_some(&r.task_id),
        "subject": r.subject,
        "detail": detail,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
        "actor": (!r.actor.is_empty()).then_some(&r.actor),
        "tenant": (!r.tenant.is_empty()).then_some(&r.tenant),
    });
    (text, value)
}

/// A record as the server sent it, for checking it here (`detail_json` is the text its
/// hash covers; text that is not JSON was tampered with and stays text, as the server
/// reads it).
pub(super) fn audit_record_from_wire(r: AuditRecord) -> crate::audit::AuditRecord {
    crate::audit::AuditRecord {
        seq: r.seq,
        at_ms: r.at_ms,
        event: crate::audit::AuditEvent {
            kind: r.kind,
            task_id: (!r.task_id.is_empty()).then_some(r.task_id),
            subject: r.subject,
            detail: serde_json::from_str(&r.detail_json)
                .unwrap_or(serde_json::Value::String(r.detail_json)),
            actor: (!r.actor.is_empty()).then_some(r.actor),
            tenant: (!r.tenant.is_empty()).then_some(r.tenant),
        },
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

/// The SPIFFE bundle (JWK set) for a set of X.509 authorities.
pub fn spiffe_bundle_json(b: &common::proto::tessera::Bundle) -> anyhow::Result<serde_json::Value> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std64 = base64::engine::general_purpose::STANDARD;
    let mut keys = Vec::new();
    for der in &b.x509_authorities {
        let (_, cert) = X509Certificate::from_der(der).context("bundle certificate")?;
        let point = cert.public_key().subject_public_key.data.as_ref();
        // Uncompressed P-256 point: 0x04 || X (32) || Y (32).
        let (x, y) = match point {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => anyhow::bail!("bundle certificate key is not an uncompressed P-256 point"),
        };
        keys.push(json!({
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": b64url.encode(x),
            "y": b64url.encode(y),
            "x5c": [std64.encode(der)],
        }));
    }
    for k in &b.jwt_authorities {
        let (x, y) = match k.public_key.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => anyhow::bail!("JWT key {} is not an uncompressed P-256 point", k.kid),
        };
        keys.push(json!({
            "use": "jwt-svid",
            "kty": "EC",
            "kid": k.kid,
            "crv": "P-256",
            "x": b64url.encode(x),
            "y": b64url.encode(y),
        }));
    }
    Ok(json!({
        "keys": keys,
        "spiffe_sequence": b.sequence,
        "spiffe_refresh_hint": b.refresh_hint_seconds,
    }))
}

/// What offboarding `owner` did, for people: the tasks ended and entries disabled, or
/// that there was nothing left to do.
pub(super) fn offboard_text(owner: &str, r: &common::proto::tessera::OffboardResponse) -> String {
    if r.ended_tasks.is_empty() && r.disabled_entries.is_empty() {
        return format!("Nothing left to end or disable for {owner}.\n");
    }
    let mut out = format!(
        "Offboarded {owner}: {} task(s) ended, {} entr{} disabled.\n",
        r.ended_tasks.len(),
        r.disabled_entries.len(),
        if r.disabled_entries.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    for t in &r.ended_tasks {
        out.push_str(&format!("  ended task     {t}\n"));
    }
    for e in &r.disabled_entries {
        out.push_str(&format!("  disabled entry {e}\n"));
    }
    out
}
