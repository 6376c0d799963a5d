//! Text and JSON rendering of Workload API answers, and the files `api fetch x509 --write`
//! writes. Text prints times in RFC 3339 (UTC); JSON keeps Unix seconds.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use common::duration::rfc3339;
use common::proto::workload::X509svidResponse;
use rustls_pki_types::CertificateDer;
use serde_json::json;

/// Splits concatenated DER certificates.
pub fn split_der(mut bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = X509Certificate::from_der(bytes).context("malformed certificate")?;
        let len = bytes.len() - rest.len();
        let (cert, tail) = bytes.split_at(len);
        out.push(CertificateDer::from(cert.to_vec()));
        bytes = tail;
    }
    Ok(out)
}

fn pem_of(kind: &str, ders: &[CertificateDer<'static>]) -> String {
    pem::encode_many(
        &ders
            .iter()
            .map(|d| pem::Pem::new(kind, d.to_vec()))
            .collect::<Vec<_>>(),
    )
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

/// The SVIDs of one message: a block of text per SVID, and the JSON `{"svids": [...]}`.
pub(super) fn describe(resp: &X509svidResponse) -> anyhow::Result<(String, serde_json::Value)> {
    let mut text = String::new();
    let mut list = Vec::new();
    for s in &resp.svids {
        let chain = split_der(&s.x509_svid)?;
        let leaf = common::svid::parse_leaf(chain.first().map(|c| c.as_ref()).unwrap_or_default())?;
        let (not_before, not_after) = (unix_seconds(leaf.not_before), unix_seconds(leaf.not_after));
        text.push_str(&format!(
            "\nSPIFFE ID         : {}\nSVID Valid After  : {}\nSVID Valid Until  : {}\nSerial            : {}\n",
            s.spiffe_id,
            rfc3339(not_before),
            rfc3339(not_after),
            leaf.serial_hex
        ));
        if !s.hint.is_empty() {
            text.push_str(&format!("Hint              : {}\n", s.hint));
        }
        list.push(json!({
            "spiffe_id": s.spiffe_id,
            "hint": s.hint,
            "serial": leaf.serial_hex,
            "not_before": not_before,
            "not_after": not_after,
            "dns_names": leaf.dns_names,
        }));
    }
    Ok((text, json!({"svids": list})))
}

/// Writes each SVID's chain, key (mode 0600) and bundle into `dir`: `svid.pem`, `svid.key`,
/// `bundle.pem` for the first SVID, `svid.1.pem`, ... for the next. Returns the files
/// written, in order.
pub(super) fn write_files(dir: &Path, resp: &X509svidResponse) -> anyhow::Result<Vec<PathBuf>> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (i, s) in resp.svids.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!(".{i}")
        };
        let chain = split_der(&s.x509_svid)?;
        let bundle = split_der(&s.bundle)?;
        let cert_path = dir.join(format!("svid{suffix}.pem"));
        std::fs::write(&cert_path, pem_of("CERTIFICATE", &chain))
            .with_context(|| format!("writing {}", cert_path.display()))?;
        written.push(cert_path);
        let key_path = dir.join(format!("svid{suffix}.key"));
        let _ = std::fs::remove_file(&key_path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?;
        f.write_all(pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone())).as_bytes())
            .with_context(|| format!("writing {}", key_path.display()))?;
        written.push(key_path);
        let bundle_path = dir.join(format!("bundle{suffix}.pem"));
        std::fs::write(&bundle_path, pem_of("CERTIFICATE", &bundle))
            .with_context(|| format!("writing {}", bundle_path.display()))?;
        written.push(bundle_path);
    }
    Ok(written)
}

/// The text line naming the files `--write` wrote.
pub(super) fn wrote_text(dir: &Path, written: &[PathBuf]) -> String {
    let names: Vec<String> = written
        .iter()
        .map(|p| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    format!("\nWrote {} to {}\n", names.join(", "), dir.display())
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        // Claims such as exp are integers; print them as such when they are.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// JWT claims as JSON.
pub(super) fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// Says on stderr when policy (or the server) gave a task less time than was asked.
pub(super) fn warn_if_cut(task: &common::proto::tessera::Task) {
    let cap = task.decision.as_ref().map_or(0, |d| d.max_ttl_seconds);
    if task.deadline > 0 && cap > 0 && task.deadline - task.created_at >= cap {
        #[expect(clippy::print_stderr, reason = "CLI diagnostics")]
        {
            eprintln!(
                "note: the task's lifetime is capped at {cap} s by policy ({})",
                task.decision
                    .as_ref()
                    .map(|d| d.policies.join(", "))
                    .unwrap_or_default()
            );
        }
    }
}

/// Says on stderr when the task is bound to this very command, which exits now: the
/// agent then ends it at once (`requester exited`).
pub(super) fn warn_if_bound_to_self(task: &common::proto::tessera::Task) {
    if task
        .binding
        .as_ref()
        .is_some_and(|b| b.pid != 0 && b.pid == std::process::id())
    {
        #[expect(clippy::print_stderr, reason = "CLI diagnostics")]
        {
            eprintln!(
                "note: the task is bound to this command's own process, which exits now, so \
                 the agent ends it at once (requester exited); bind it to the process that \
                 will use it with --bind-pid PID (e.g. --bind-pid $$ from a shell), or to \
                 every matching process with --bind selectors"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_message_names_every_file() {
        let dir = Path::new("/out");
        let files: Vec<PathBuf> = ["svid.pem", "svid.key", "bundle.pem", "svid.1.pem"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
        assert_eq!(
            wrote_text(dir, &files),
            "\nWrote svid.pem, svid.key, bundle.pem, svid.1.pem to /out\n"
        );
    }
}
