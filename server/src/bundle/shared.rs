//! The trust bundle shared by every server on one datastore (SPIRE's model).
//!
//! Each server signs under its own CA and its own JWT keys (or its own intermediate under
//! a configured upstream authority) and publishes the public half of each of them to the
//! datastore table `bundle_authorities` the moment it holds it: a prepared CA or key is
//! there before it signs anything. Every server serves as its bundle the union of its own
//! material and every other server's that has not expired (`compose`), re-read every
//! [`REFRESH_INTERVAL`] by [`super::BundlePublisher::refresh_shared`] (the function a
//! change feed can call as soon as it hears of a change). Keys never enter the datastore.
//!
//! Why own CAs in one bundle rather than intermediates of one shared root: a shared root
//! needs its key where every server can sign with it, which is either the datastore (key
//! material in the clear, or a key-wrapping scheme of our own) or an operator's PKI; the
//! latter is the upstream authority, which keeps working (every server publishes the same
//! root(s), kept once). Own CAs need nothing shared but public material, a server's
//! compromise is contained to its own CA (remove its rows, rotate), and CA rotation stays
//! per server with the existing prepare → activate schedule.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::jwt::JwtKey;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::ca::rotation::CaSet;
use crate::datastore::{AuthorityKind, PublishedAuthority};
use crate::jwt_keys::JwtKeyManager;
use daemon::state_file;

/// How often every server re-reads the other servers' published material (and
/// re-publishes its own if a write was missed). A prepared CA is published `ca_ttl / 12`
/// or more before it signs (a JWT key `jwt_key_ttl / 2`): with the default terms (24 h)
/// that is two hours against two seconds.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Expired rows are deleted every this many refreshes (about a minute); until then they
/// are only left out of the bundle.
pub(crate) const PRUNE_EVERY: u32 = 30;

/// Warns when a CA or JWT key would sign sooner after being prepared than a few refresh
/// intervals: the other servers' agents might not trust it yet.
pub(crate) fn warn_if_rotation_outpaces_sharing(ca_ttl: Duration, jwt_key_ttl: Duration) {
    let margin = REFRESH_INTERVAL * 10;
    for (key, lead, rule) in [
        ("ca_ttl", ca_ttl / 12, "a twelfth"),
        ("jwt_key_ttl", jwt_key_ttl / 2, "half"),
    ] {
        if lead < margin {
            tracing::warn!(
                key,
                lead_secs = lead.as_secs(),
                refresh_secs = REFRESH_INTERVAL.as_secs(),
                "a prepared authority is published only {rule} of {key} before it signs, less than ten refreshes of the shared bundle: agents of other servers may briefly not trust what it signs"
            );
        }
    }
}

/// The file holding this server's instance id, in its data directory.
const INSTANCE_ID_FILE: &str = "instance_id";

/// This server's instance id, the key of its rows: random, created on first start and kept
/// in `<data_dir>/instance_id`.
pub(crate) fn load_or_create_instance_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} holds no instance id", path.display()),
                ));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = hex::encode(rand::random::<[u8; 16]>());
            state_file::write_atomic(&path, format!("{id}\n").as_bytes(), 0o600)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The JWK text of `key` (`kty`, `kid`, `crv`, `x`, `y`).
fn jwk_text(key: &JwtKey) -> Option<String> {
    key.to_jwk().ok().map(|v| v.to_string())
}

/// The key a published JWK holds; `None` unless it is an EC P-256 key with a `kid`.
fn key_of_jwk(text: &str, not_after: i64) -> Option<JwtKey> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v["kty"] != "EC" || v["crv"] != "P-256" {
        return None;
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let x = b64.decode(v["x"].as_str()?).ok()?;
    let y = b64.decode(v["y"].as_str()?).ok()?;
    let kid = v["kid"].as_str()?;
    if x.len() != 32 || y.len() != 32 || kid.is_empty() {
        return None;
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(JwtKey {
        kid: kid.to_owned(),
        public_key: point,
        expires_at: not_after,
    })
}

/// The certificate a published PEM holds; `None` unless it is one CA certificate.
fn cert_of_pem(text: &str) -> Option<CertificateDer<'static>> {
    let block = pem::parse(text).ok()?;
    if block.tag() != "CERTIFICATE" {
        return None;
    }
    let der = CertificateDer::from(block.into_contents());
    let (_, parsed) = X509Certificate::from_der(&der).ok()?;
    let is_ca = matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    is_ca.then_some(der)
}

/// What this server publishes now: its CA certificates (or upstream roots) and JWT keys,
/// with their phases.
pub(crate) fn own_rows(
    server_id: &str,
    ca: &CaSet,
    jwt: &JwtKeyManager,
    now: i64,
) -> Vec<PublishedAuthority> {
    let mut rows: Vec<PublishedAuthority> = ca
        .published()
        .into_iter()
        .map(|c| PublishedAuthority {
            server_id: server_id.to_owned(),
            kind: AuthorityKind::X509,
            key_id: c.serial,
            state: c.phase.as_str().to_owned(),
            material: pem::encode(&pem::Pem::new("CERTIFICATE", c.cert.to_vec())),
            not_after: unix(c.not_after),
            published_at: now,
        })
        .collect();
    for (key, phase) in jwt.published_keys() {
        let Some(material) = jwk_text(&key) else {
            tracing::error!(kid = %key.kid, "BUG: a JWT key has no JWK form");
            continue;
        };
        rows.push(PublishedAuthority {
            server_id: server_id.to_owned(),
            kind: AuthorityKind::Jwt,
            key_id: key.kid,
            state: phase.as_str().to_owned(),
            material,
            not_after: key.expires_at,
            published_at: now,
        });
    }
    rows
}

/// The rows of `own` that `stored` does not hold as they are (new, or another state,
/// material or end): what must be written.
pub(crate) fn unpublished(
    own: &[PublishedAuthority],
    stored: &[PublishedAuthority],
) -> Vec<PublishedAuthority> {
    own.iter()
        .filter(|o| {
            !stored.iter().any(|s| {
                s.server_id == o.server_id
                    && s.kind == o.kind
                    && s.key_id == o.key_id
                    && s.state == o.state
                    && s.material == o.material
                    && s.not_after == o.not_after
            })
        })
        .cloned()
        .collect()
}

/// The authorities of a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Authorities {
    /// CA certificates (roots of trust for X.509-SVIDs).
    pub(crate) x509: Vec<CertificateDer<'static>>,
    /// JWT-SVID verification keys.
    pub(crate) jwt: Vec<JwtKey>,
}

/// The union of `rows` still valid at `now`, in their order, each certificate and key id
/// once (the first wins: pass this server's own rows first). A row that does not hold a
/// CA certificate or an EC P-256 JWK is left out, logged.
pub(crate) fn compose<'a>(
    rows: impl IntoIterator<Item = &'a PublishedAuthority>,
    now: i64,
) -> Authorities {
    let mut out = Authorities::default();
    for row in rows {
        if row.not_after <= now {
            continue;
        }
        match row.kind {
            AuthorityKind::X509 => match cert_of_pem(&row.material) {
                Some(cert) if !out.x509.contains(&cert) => out.x509.push(cert),
                Some(_) => {}
                None => tracing::warn!(
                    server = %row.server_id,
                    serial = %row.key_id,
                    "ignoring a published CA that is not a CA certificate"
                ),
            },
            AuthorityKind::Jwt => match key_of_jwk(&row.material, row.not_after) {
                Some(key) => match out.jwt.iter().position(|k| k.kid == key.kid) {
                    None => out.jwt.push(key),
                    // The same key published twice: trusted until the later end.
                    Some(i) if out.jwt[i].public_key == key.public_key => {
                        out.jwt[i].expires_at = out.jwt[i].expires_at.max(key.expires_at);
                    }
                    Some(_) => tracing::warn!(
                        server = %row.server_id,
                        kid = %row.key_id,
                        "ignoring a published JWT key whose kid another key already has"
                    ),
                },
                None => tracing::warn!(
                    server = %row.server_id,
                    kid = %row.key_id,
                    "ignoring a published JWT key that is not an EC P-256 JWK"
                ),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use common::TrustDomain;
    use common::jwt::JwtSigner;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn ca_row(server: &str, ca: &Ca, state: &str, not_after: i64) -> PublishedAuthority {
        PublishedAuthority {
            server_id: server.into(),
            kind: AuthorityKind::X509,
            key_id: ca.serial_hex().into(),
            state: state.into(),
            material: ca.cert_pem(),
            not_after,
            published_at: 1,
        }
    }

    fn jwt_key(kid: &str) -> JwtKey {
        let pkcs8 = JwtSigner::generate_pkcs8().unwrap();
        let signer = JwtSigner::from_pkcs8(kid, &pkcs8).unwrap();
        JwtKey {
            kid: kid.into(),
            public_key: signer.public_key(),
            expires_at: 0,
        }
    }

    fn jwt_row(server: &str, key: &JwtKey, not_after: i64) -> PublishedAuthority {
        PublishedAuthority {
            server_id: server.into(),
            kind: AuthorityKind::Jwt,
            key_id: key.kid.clone(),
            state: "active".into(),
            material: jwk_text(key).unwrap(),
            not_after,
            published_at: 1,
        }
    }

    fn kids(a: &Authorities) -> Vec<&str> {
        a.jwt.iter().map(|k| k.kid.as_str()).collect()
    }

    #[test]
    fn the_bundle_is_the_union_of_every_servers_unexpired_material_each_once() {
        let day = Duration::from_secs(86400);
        let (ca_a, ca_b, ca_old) = (
            Ca::generate(&td(), day, None).unwrap(),
            Ca::generate(&td(), day, None).unwrap(),
            Ca::generate(&td(), day, None).unwrap(),
        );
        let (ka, kb) = (jwt_key("ka"), jwt_key("kb"));
        let now = 1_000;
        let rows = [
            ca_row("a", &ca_a, "active", 5_000),
            jwt_row("a", &ka, 5_000),
            ca_row("b", &ca_b, "prepared", 6_000),
            jwt_row("b", &kb, 6_000),
            // Expired: left out.
            ca_row("b", &ca_old, "retired", now),
            // The same root published by two servers (shared upstream): kept once.
            ca_row("c", &ca_a, "active", 5_000),
            // The same key twice: once, until the later end.
            jwt_row("c", &ka, 7_000),
        ];
        let got = compose(&rows, now);
        assert_eq!(
            got.x509,
            [ca_a.certificate().clone(), ca_b.certificate().clone()]
        );
        assert_eq!(kids(&got), ["ka", "kb"]);
        assert_eq!(got.jwt[0].public_key, ka.public_key, "the JWK round-trips");
        assert_eq!(got.jwt[0].expires_at, 7_000);
        assert_eq!(got.jwt[1].expires_at, 6_000);

        // Each leaves the bundle at its end.
        let later = compose(&rows, 5_000);
        assert_eq!(later.x509, [ca_b.certificate().clone()]);
        assert_eq!(
            kids(&later),
            ["kb", "ka"],
            "a's copy of ka ended, c's did not"
        );
        let later = compose(&rows, 6_000);
        assert!(later.x509.is_empty());
        assert_eq!(kids(&later), ["ka"]);
        assert_eq!(compose(&rows, 7_000), Authorities::default());
    }

    #[test]
    fn material_that_is_not_a_ca_or_a_p256_jwk_is_left_out() {
        let ca = Ca::generate(&td(), Duration::from_secs(3600), None).unwrap();
        let key = jwt_key("good");
        let mut not_pem = ca_row("x", &ca, "active", 10);
        not_pem.material = "garbage".into();
        let mut not_jwk = jwt_row("x", &key, 10);
        not_jwk.material = r#"{"kty":"RSA","kid":"r"}"#.into();
        // Another key under a kid already taken is not trusted.
        let mut clash = jwt_row("y", &jwt_key("good"), 10);
        clash.server_id = "y".into();
        let rows = [not_pem, not_jwk, jwt_row("x", &key, 10), clash];
        let got = compose(&rows, 0);
        assert!(got.x509.is_empty());
        assert_eq!(kids(&got), ["good"]);
        assert_eq!(got.jwt[0].public_key, key.public_key);
    }

    #[test]
    fn only_new_or_changed_own_rows_are_written() {
        let ca = Ca::generate(&td(), Duration::from_secs(3600), None).unwrap();
        let key = jwt_key("k");
        let stored = [ca_row("a", &ca, "prepared", 10), jwt_row("a", &key, 10)];
        let mut own = vec![ca_row("a", &ca, "active", 10), jwt_row("a", &key, 10)];
        own[1].published_at = 99;
        let changed = unpublished(&own, &stored);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].state, "active");
        assert!(unpublished(&stored, &stored).is_empty());
    }

    #[test]
    fn the_instance_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create_instance_id(dir.path()).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(load_or_create_instance_id(dir.path()).unwrap(), id);
        std::fs::write(dir.path().join(INSTANCE_ID_FILE), "../x\n").unwrap();
        assert!(load_or_create_instance_id(dir.path()).is_err());
    }
}
