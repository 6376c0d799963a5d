//! Text and JSON rendering of admin API answers. Text prints times in RFC 3339 (UTC); JSON
//! keeps them as numbers, as the admin API gives them.

use anyhow::Context as _;
use base64::Engine as _;
use common::duration::{rfc3339, rfc3339_millis};
use common::proto::tessera::{Agent, AuditRecord, CaInfo, Entry};
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
        "hint": e.hint,
        "created_at": e.created_at,
        "revision": e.revision,
    })
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
    s
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
    })
}

/// An agent as text.
pub(super) fn agent_text(a: &Agent) -> String {
    format!(
        "SPIFFE ID        : {}\nAttestation type : {}\nSerial           : {}\nAttested at      : {}\nExpires at       : {}\nBanned           : {}\n",
        a.spiffe_id,
        a.attestation_type,
        a.serial,
        rfc3339(a.attested_at),
        rfc3339(a.expires_at),
        a.banned
    )
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
